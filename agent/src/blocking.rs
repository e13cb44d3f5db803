//! Blocking work (disk, TPM) run off the async runtime's workers.

/// Runs a blocking closure on the blocking pool. A panic in it is propagated.
pub(crate) async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task cancelled (runtime shutting down): {e}"),
    }
}
