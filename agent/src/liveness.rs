//! Whether the agent's main loop is making progress: before each step the loop says how long the
//! step may take ([`Liveness::expect_within`]); it is alive while that promise holds. systemd's
//! watchdog is fed only while it does (see [`crate::notify::feed_watchdog`]), so a loop stuck
//! past its promise lets the watchdog restart the agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest one bounded step of the main loop takes: a connect (10 s) plus a call (30 s) to
/// central, a TLS handshake signed by the TPM, a certificate stored; with room for a slow TPM
/// and a loaded machine.
pub const STEP: Duration = Duration::from_secs(120);

/// The main loop's current promise. Clones share it.
#[derive(Debug, Clone)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds after `origin` until which the loop is alive.
    deadline_ms: Arc<AtomicU64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    /// Alive for one [`STEP`] from now.
    pub fn new() -> Liveness {
        let liveness = Liveness {
            origin: Instant::now(),
            deadline_ms: Arc::new(AtomicU64::new(0)),
        };
        liveness.expect_within(STEP);
        liveness
    }

    /// The loop's next step ends within `within` from now.
    pub fn expect_within(&self, within: Duration) {
        let deadline = self.origin.elapsed().saturating_add(within);
        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms.store(ms, Ordering::Relaxed);
    }

    /// The loop's next step is an ordinary one ([`STEP`]).
    pub fn step(&self) {
        self.expect_within(STEP);
    }

    /// The loop's next step is a wait of `wait` (a backoff), then an ordinary step.
    pub fn wait(&self, wait: Duration) {
        self.expect_within(wait.saturating_add(STEP));
    }

    /// How long the loop is past its promise; `None` while it keeps it.
    pub fn overdue(&self) -> Option<Duration> {
        let deadline = Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed));
        let now = self.origin.elapsed();
        (now > deadline).then(|| now - deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_alive_until_its_promise_runs_out() {
        let liveness = Liveness::new();
        assert_eq!(liveness.overdue(), None);
        liveness.expect_within(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(liveness.overdue().is_some());
        liveness.clone().wait(Duration::from_secs(1));
        assert_eq!(liveness.overdue(), None, "clones share the promise");
    }
}
