//! Cancellation: a [`tokio::sync::watch`] flag. `true`, or the sender being dropped, means stop.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// Cloneable view of the shutdown flag that every loop of the agent selects on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A trigger and its [`Shutdown`] (for tests and the fleet benchmark).
pub fn channel() -> (watch::Sender<bool>, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (tx, Shutdown::new(rx))
}

impl Shutdown {
    /// Wraps the receiver handed to [`crate::run`].
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown { rx }
    }

    /// Whether shutdown was requested (or the sender dropped).
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once shutdown is requested. Cancellation safe.
    pub async fn triggered(&mut self) {
        // `wait_for` returns Err when the sender is gone, which also means stop.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration`; returns `false` when shutdown came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.triggered() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }

    /// Runs `fut` unless shutdown comes first (`None` then).
    pub async fn run<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::select! {
            _ = self.triggered() => None,
            out = fut => Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_is_cut_short_and_drop_means_stop() {
        let (tx, mut s) = channel();
        assert!(!s.is_triggered());
        assert!(s.sleep(Duration::from_millis(1)).await);
        tx.send(true).unwrap();
        assert!(s.is_triggered());
        assert!(!s.sleep(Duration::from_secs(60)).await);

        let (tx, mut s) = channel();
        drop(tx);
        assert!(s.is_triggered());
        assert_eq!(s.run(std::future::pending::<()>()).await, None);
    }
}
