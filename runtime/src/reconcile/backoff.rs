//! The restart decision for an exited task: restart policy plus exponential back-off, computed
//! only from what containerd labels and the task record hold (so it survives agent restarts).

use std::time::{Duration, SystemTime};

use cairn_compose::RestartPolicy;

/// Back-off settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first restart after a quick crash.
    pub base: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// A task that ran at least this long resets the crash streak (the next delay is `base`).
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay after `streak` consecutive quick crashes: `base * 2^streak`, at most `max`.
    pub fn delay(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What to do with an exited task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The policy says it stays down.
    StayExited,
    /// Restart now; store this crash streak.
    RestartNow {
        /// New value of the crash-streak label.
        streak: u32,
    },
    /// Restart at this time.
    WaitUntil(SystemTime),
}

/// Everything known about an exited task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    pub status: u32,
    pub restarts: u32,
    pub streak: u32,
    pub started_at: Option<SystemTime>,
    pub exited_at: Option<SystemTime>,
}

/// Whether `policy` restarts a task that exited with `status` after `restarts` restarts.
pub(crate) fn policy_restarts(policy: RestartPolicy, status: u32, restarts: u32) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_retries } => {
            status != 0 && max_retries.is_none_or(|max| restarts < max)
        }
    }
}

/// When to restart an exited task: never (the policy keeps it down), now, or once the back-off
/// after its crash streak has passed since it exited; a run of at least `reset_after` resets the
/// streak.
pub(crate) fn decide(
    policy: RestartPolicy,
    exit: Exit,
    backoff: &Backoff,
    now: SystemTime,
) -> Decision {
    if !policy_restarts(policy, exit.status, exit.restarts) {
        return Decision::StayExited;
    }
    let exited_at = exit.exited_at.unwrap_or(now);
    let ran = match exit.started_at {
        Some(started) => exited_at.duration_since(started).unwrap_or_default(),
        None => Duration::ZERO,
    };
    let streak = if ran >= backoff.reset_after {
        0
    } else {
        exit.streak
    };
    let due = exited_at + backoff.delay(streak);
    if now >= due {
        Decision::RestartNow {
            streak: streak.saturating_add(1),
        }
    } else {
        Decision::WaitUntil(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(
        status: u32,
        restarts: u32,
        streak: u32,
        ran: u64,
        ago_ms: u64,
        now: SystemTime,
    ) -> Exit {
        let exited = now - Duration::from_millis(ago_ms);
        Exit {
            status,
            restarts,
            streak,
            started_at: Some(exited - Duration::from_millis(ran)),
            exited_at: Some(exited),
        }
    }

    #[test]
    fn delays_double_up_to_the_max() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(10),
        };
        let delays: Vec<u128> = (0..6).map(|s| b.delay(s).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn policies() {
        let b = Backoff {
            base: Duration::from_millis(100),
            ..Default::default()
        };
        let now = SystemTime::now();
        let e = exit(1, 0, 0, 10, 1000, now);
        assert_eq!(decide(RestartPolicy::No, e, &b, now), Decision::StayExited);
        assert_eq!(
            decide(RestartPolicy::Always, e, &b, now),
            Decision::RestartNow { streak: 1 }
        );
        assert_eq!(
            decide(
                RestartPolicy::UnlessStopped,
                exit(0, 0, 0, 10, 1000, now),
                &b,
                now
            ),
            Decision::RestartNow { streak: 1 }
        );
        let on_failure = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        assert_eq!(
            decide(on_failure, exit(0, 0, 0, 10, 1000, now), &b, now),
            Decision::StayExited
        );
        assert_eq!(
            decide(on_failure, exit(1, 1, 1, 10, 1000, now), &b, now),
            Decision::RestartNow { streak: 2 }
        );
        assert_eq!(
            decide(on_failure, exit(1, 2, 2, 10, 1000, now), &b, now),
            Decision::StayExited
        );
    }

    #[test]
    fn waits_out_the_backoff_and_resets_after_a_long_run() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(10),
        };
        let now = SystemTime::now();
        // Streak 3 -> 800 ms; exited 300 ms ago: wait 500 ms more.
        let d = decide(RestartPolicy::Always, exit(1, 3, 3, 10, 300, now), &b, now);
        assert_eq!(d, Decision::WaitUntil(now + Duration::from_millis(500)));
        // Same, but it ran 20 s: the streak resets, 100 ms have passed.
        assert_eq!(
            decide(
                RestartPolicy::Always,
                exit(1, 3, 3, 20_000, 300, now),
                &b,
                now
            ),
            Decision::RestartNow { streak: 1 }
        );
    }
}
