//! Rate limits: the token bucket (also each agent stream's event limit), and per-source buckets
//! keyed by IP address for calls anyone on the network may make, such as enrollment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `per_second`.
    pub fn new(capacity: f64, per_second: f64) -> Self {
        Self::new_at(capacity, per_second, Instant::now())
    }

    /// A full bucket as of `now`.
    pub fn new_at(capacity: f64, per_second: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            last: now,
        }
    }

    /// Take a token at `now`; false when the bucket is empty.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Take a token now.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// How long after the last take until a token is back.
    pub fn wait(&self) -> Duration {
        Duration::from_secs_f64((1.0 - self.tokens).max(0.0) / self.per_second)
    }
}

/// Most sources tracked at once; beyond it the idlest half is forgotten (a forgotten source
/// starts again with a full bucket, so a flood of addresses cannot grow memory without bound).
const MAX_SOURCES: usize = 65_536;

/// Token buckets per source address: `per_minute` calls a minute on average, bursts of up to
/// `per_minute` calls.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` calls per source and minute (0 = unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one call for `source` at `now`: `Ok` or how long until the next is allowed. IPv6
    /// sources count per /64 (one site or host gets a whole /64 to pick addresses from).
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let source = source_key(source);
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            forget_idlest(&mut buckets);
        }
        let bucket = buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new_at(capacity, per_second, now));
        if bucket.try_take_at(now) {
            Ok(())
        } else {
            Err(bucket.wait())
        }
    }
}

/// The bucket a source counts in: an IPv4 address, or an IPv6 address's /64 (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// Drop the half of the buckets touched longest ago.
fn forget_idlest(buckets: &mut HashMap<IpAddr, TokenBucket>) {
    let mut times: Vec<Instant> = buckets.values().map(|b| b.last).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    buckets.retain(|_, b| b.last > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new_at(3.0, 2.0, start);
        assert!((0..3).all(|_| bucket.try_take_at(start)));
        assert!(!bucket.try_take_at(start));
        assert!(bucket.try_take_at(start + Duration::from_millis(500)));
        assert!(!bucket.try_take_at(start + Duration::from_millis(600)));
        assert!(
            (0..3).all(|_| bucket.try_take_at(start + Duration::from_secs(60))),
            "refills up to the burst"
        );
        assert!(!bucket.try_take_at(start + Duration::from_secs(60)));
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
    fn an_ipv6_slash_64_is_one_source() {
        let limiter = RateLimiter::new(2);
        let now = Instant::now();
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert!(limiter.check(host(1), now).is_ok());
        assert!(limiter.check(host(2), now).is_ok());
        assert!(limiter.check(host(3), now).is_err(), "same /64");
        let other = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(limiter.check(other, now).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert!(limiter.check(mapped, now).is_ok());
        assert!(limiter.check(ip(9), now).is_ok());
        assert!(limiter.check(ip(9), now).is_err(), "mapped counts as IPv4");
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
