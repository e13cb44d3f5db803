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
