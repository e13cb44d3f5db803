//! Retry delays: exponential growth with full jitter, bounded by the configured maximum.

use std::time::Duration;

use rand::Rng;

/// Smallest delay ever returned, so that jitter never turns a retry loop into a busy loop.
pub const MIN_DELAY: Duration = Duration::from_millis(10);

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[MIN_DELAY, min(max, initial * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max` (`max` is raised to `initial` if lower).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The cap for the next delay: `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay (random up to the ceiling), then doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().max(MIN_DELAY);
        self.attempt = self.attempt.saturating_add(1);
        let millis = rand::thread_rng().gen_range(MIN_DELAY.as_millis()..=ceiling.as_millis());
        Duration::from_millis(millis as u64)
    }

    /// The slow retry of a device that central refuses for good (revoked): the maximum, with a
    /// little jitter (75-100 %) so a revoked fleet does not retry in lockstep.
    pub fn slow_delay(&self) -> Duration {
        let max = self.max.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(max * 3 / 4..=max.max(1)))
    }

    /// Starts again from `initial` (after a stable connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut ceilings = vec![];
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_millis(1000),
            "no overflow after many attempts"
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_stay_in_bounds_and_are_jittered() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= MIN_DELAY && d <= ceiling,
                "{d:?} outside [{MIN_DELAY:?}, {ceiling:?}]"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 20, "delays are not jittered: {seen:?}");
    }

    #[test]
    fn slow_delay_is_near_max() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(1000));
        for _ in 0..100 {
            let d = b.slow_delay();
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
    }

    #[test]
    fn max_below_initial_is_raised() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_millis(100));
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
