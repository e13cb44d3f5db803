//! Per-source rate limits (token buckets keyed by IP address) for calls anyone on the network
//! may make, such as enrollment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sources tracked at once; beyond it the idlest half is forgotten (a forgotten source
/// starts again with a full bucket, so a flood of addresses cannot grow memory without bound).
const MAX_SOURCES: usize = 65_536;

/// Token buckets per source address: `per_minute` calls a minute on average, bursts of up to
/// `per_minute` calls.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` calls per source and minute (0 = unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one call for `source` at `now`: `Ok` or how long until the next is allowed.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            forget_idlest(&mut buckets);
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

/// Drop the half of the buckets touched longest ago.
fn forget_idlest(buckets: &mut HashMap<IpAddr, Bucket>) {
    let mut times: Vec<Instant> = buckets.values().map(|b| b.at).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    buckets.retain(|_, b| b.at > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_is_allowed_then_refused_then_refilled() {
        let limiter = RateLimiter::new(6);
        let start = Instant::now();
        for _ in 0..6 {
            assert!(limiter.check(ip(1), start).is_ok());
        }
        let wait = limiter.check(ip(1), start).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Another source is not affected.
        assert!(limiter.check(ip(2), start).is_ok());
        // One call per 10 s comes back.
        assert!(limiter
            .check(ip(1), start + Duration::from_secs(10))
            .is_ok());
        assert!(limiter
            .check(ip(1), start + Duration::from_secs(10))
            .is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = RateLimiter::new(0);
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(ip(1), now).is_ok());
        }
    }

    #[test]
    fn many_sources_do_not_grow_without_bound() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let source = IpAddr::from(i.to_be_bytes());
            assert!(limiter
                .check(source, start + Duration::from_millis(u64::from(i)))
                .is_ok());
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_SOURCES);
    }
}
