//! The device's clock as the agent sees and corrects it.
//!
//! Boxes without a real-time clock (most small arm64 boards) or with a flat RTC battery boot with
//! a clock years off, and then no TLS certificate looks valid. The agent fixes that with three
//! things, all here except the network call (in `time_sync`):
//!
//! - [`Clock`]: the one source of "now" for everything time-dependent in the agent (TLS checks,
//!   certificate renewal, heartbeats, events). On a device it reads and steps the system clock;
//!   in tests and the simulator it is a process-local offset over the host's clock, so many
//!   agents with different wrong clocks can run in one process without touching the host.
//! - [`decide`]: pure: given the local time, central's signed time and the last known good time,
//!   whether and where to step.
//! - the floor file: the last known good time, saved on the encrypted data partition (it is
//!   unlocked by the TPM before the network is up) and restored early in boot by
//!   `cairn-agent clock restore`, so a reboot without central does not fall back to the build
//!   epoch. Only time verified by central is ever saved: an unauthenticated source (the RTC,
//!   NTP from the LAN) can never raise the floor.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_io::FileError;
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

/// A clock step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The system refused to set the clock.
    #[error("cannot set the system clock to {to}: {source}; the agent needs CAP_SYS_TIME (it runs as root on a device)")]
    Set {
        /// The time asked for (RFC 3339).
        to: String,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The floor file could not be read or written.
    #[error("{0}")]
    Floor(#[from] FileError),
    /// The floor file does not hold a time.
    #[error("the last-known-good time file {path} does not hold a time ({reason}); it is rewritten at the next verified time")]
    BadFloor {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where "now" comes from and what a correction changes.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

struct Inner {
    /// Steps move the system clock (a device) or only this offset (tests, the simulator).
    system: bool,
    /// Added to the host's clock (virtual clocks only).
    offset_ms: AtomicI64,
    /// The last time central vouched for, and when (monotonic) that was.
    verified: Mutex<Option<(i64, Instant)>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("system", &self.inner.system)
            .field("offset_ms", &self.inner.offset_ms.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn host_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// `unix_ms` as RFC 3339 (for logs and errors).
pub fn rfc3339(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms after the Unix epoch"))
}

impl Clock {
    /// The system clock; corrections step it (needs `CAP_SYS_TIME`).
    pub fn system() -> Clock {
        Self::with(true, 0)
    }

    /// A process-local clock `offset` away from the host's (negative: behind); corrections move
    /// only the offset. For tests, the simulator and agents run by hand on a workstation.
    pub fn virtual_offset(offset: Duration, behind: bool) -> Clock {
        let ms = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX);
        Self::with(false, if behind { -ms } else { ms })
    }

    fn with(system: bool, offset_ms: i64) -> Clock {
        Clock {
            inner: Arc::new(Inner {
                system,
                offset_ms: AtomicI64::new(offset_ms),
                verified: Mutex::new(None),
            }),
        }
    }

    /// Whether steps move the system clock.
    pub fn is_system(&self) -> bool {
        self.inner.system
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_unix_ms(&self) -> i64 {
        host_unix_ms().saturating_add(self.inner.offset_ms.load(Ordering::Relaxed))
    }

    /// Now.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.now_unix_ms()) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Sets the clock to `unix_ms`.
    pub fn step_to(&self, unix_ms: i64) -> Result<(), ClockError> {
        if self.inner.system {
            let timespec = rustix::time::Timespec {
                tv_sec: unix_ms.div_euclid(1000),
                tv_nsec: unix_ms.rem_euclid(1000) * 1_000_000,
            };
            rustix::time::clock_settime(rustix::time::ClockId::Realtime, timespec).map_err(|e| {
                ClockError::Set {
                    to: rfc3339(unix_ms),
                    source: e.into(),
                }
            })
        } else {
            let by = unix_ms - self.now_unix_ms();
            self.inner.offset_ms.fetch_add(by, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Records that central vouched for `unix_ms` just now.
    pub fn mark_verified(&self, unix_ms: i64) {
        *self.inner.verified.lock().expect("clock lock") = Some((unix_ms, Instant::now()));
    }

    /// Whether central vouched for the time since this process started.
    pub fn is_verified(&self) -> bool {
        self.inner.verified.lock().expect("clock lock").is_some()
    }

    /// The last verified time carried forward by the monotonic clock: a time the device is
    /// certainly not before. `None` until central vouched for a time.
    pub fn known_good_unix_ms(&self) -> Option<i64> {
        let verified = *self.inner.verified.lock().expect("clock lock");
        verified.map(|(at_ms, at)| {
            at_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
        })
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        let ms = u64::try_from(self.now_unix_ms()).ok()?;
        Some(UnixTime::since_unix_epoch(Duration::from_millis(ms)))
    }
}

/// What to do with the clock after hearing central's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// The clock is within the tolerance of the target.
    Keep {
        /// Local minus target, in milliseconds.
        offset_ms: i64,
    },
    /// Step the clock to `to_unix_ms` (it was `offset_ms` off: negative = behind).
    Step {
        /// The new time.
        to_unix_ms: i64,
        /// Local minus target, in milliseconds.
        offset_ms: i64,
    },
}

/// Where the clock should be, given the local time, central's time (already verified), the
/// last known good time (`floor`) and how far off is tolerated. Central's time wins in both
/// directions, except that the clock never goes below the floor: a central whose clock is behind
/// the device's last verified time is not followed there.
pub fn decide(
    local_ms: i64,
    central_ms: i64,
    floor_ms: Option<i64>,
    tolerance: Duration,
) -> Correction {
    let target = floor_ms.map_or(central_ms, |floor| central_ms.max(floor));
    let offset_ms = local_ms - target;
    let tolerance_ms = i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX);
    if offset_ms.abs() <= tolerance_ms {
        Correction::Keep { offset_ms }
    } else {
        Correction::Step {
            to_unix_ms: target,
            offset_ms,
        }
    }
}

/// The floor a boot starts from: the saved last known good time, if the clock is behind it.
pub fn restore_target(local_ms: i64, floor_ms: Option<i64>) -> Option<i64> {
    floor_ms.filter(|floor| *floor > local_ms)
}

/// Reads the last known good time saved in `path` (`None` when there is none yet).
pub fn load_floor(path: &Path) -> Result<Option<i64>, ClockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::new("read the last known good time", path, e).into()),
    };
    let bad = |reason: String| ClockError::BadFloor {
        path: path.to_path_buf(),
        reason,
    };
    if text.len() > 64 {
        return Err(bad(format!("{} bytes, at most 64 expected", text.len())));
    }
    let ms: i64 = text
        .trim()
        .parse()
        .map_err(|e| bad(format!("not milliseconds since the epoch: {e}")))?;
    if ms <= 0 {
        return Err(bad("not after the Unix epoch".into()));
    }
    Ok(Some(ms))
}

/// Saves `unix_ms` as the last known good time (atomically; a power cut keeps the old one).
/// Never lowers a floor already saved.
pub fn save_floor(path: &Path, unix_ms: i64) -> Result<(), ClockError> {
    if let Ok(Some(saved)) = load_floor(path) {
        if saved >= unix_ms {
            return Ok(());
        }
    }
    cairn_io::write_atomic(path, format!("{unix_ms}\n").as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    const NOW: i64 = 1_796_000_000_000;
    const TOLERANCE: Duration = Duration::from_secs(10);

    #[test]
    fn a_clock_years_behind_or_ahead_steps_to_central() {
        assert_eq!(
            decide(NOW - 2 * YEAR_MS, NOW, None, TOLERANCE),
            Correction::Step {
                to_unix_ms: NOW,
                offset_ms: -2 * YEAR_MS
            }
        );
        assert_eq!(
            decide(NOW + 9 * YEAR_MS, NOW, None, TOLERANCE),
            Correction::Step {
                to_unix_ms: NOW,
                offset_ms: 9 * YEAR_MS
            }
        );
    }

    #[test]
    fn small_offsets_are_left_to_ntp() {
        assert_eq!(
            decide(NOW + 9_000, NOW, None, TOLERANCE),
            Correction::Keep { offset_ms: 9_000 }
        );
        assert_eq!(
            decide(NOW - 10_000, NOW, Some(NOW - YEAR_MS), TOLERANCE),
            Correction::Keep { offset_ms: -10_000 }
        );
        assert!(matches!(
            decide(NOW - 10_001, NOW, None, TOLERANCE),
            Correction::Step { .. }
        ));
    }

    #[test]
    fn never_below_the_floor_even_when_central_says_so() {
        // Central is a year behind the device's last verified time: the clock stays at the floor.
        let floor = NOW;
        assert_eq!(
            decide(NOW + 1000, NOW - YEAR_MS, Some(floor), TOLERANCE),
            Correction::Keep { offset_ms: 1000 }
        );
        assert_eq!(
            decide(NOW - YEAR_MS, NOW - YEAR_MS, Some(floor), TOLERANCE),
            Correction::Step {
                to_unix_ms: floor,
                offset_ms: -YEAR_MS
            }
        );
    }

    #[test]
    fn a_boot_restores_the_floor_only_forward() {
        assert_eq!(restore_target(NOW - YEAR_MS, Some(NOW)), Some(NOW));
        assert_eq!(restore_target(NOW + 1, Some(NOW)), None);
        assert_eq!(restore_target(NOW, None), None);
    }

    #[test]
    fn the_floor_file_round_trips_never_drops_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock-floor");
        assert_eq!(load_floor(&path).unwrap(), None);
        save_floor(&path, NOW).unwrap();
        assert_eq!(load_floor(&path).unwrap(), Some(NOW));
        save_floor(&path, NOW - 5).unwrap();
        assert_eq!(
            load_floor(&path).unwrap(),
            Some(NOW),
            "a lower time never replaces the floor"
        );
        save_floor(&path, NOW + 5).unwrap();
        assert_eq!(load_floor(&path).unwrap(), Some(NOW + 5));
        for garbage in ["", "yesterday", "-5", &"9".repeat(100)] {
            std::fs::write(&path, garbage).unwrap();
            let err = load_floor(&path).unwrap_err().to_string();
            assert!(err.contains("clock-floor"), "{err}");
        }
    }

    #[test]
    fn a_virtual_clock_moves_only_itself() {
        let host = host_unix_ms();
        let clock = Clock::virtual_offset(Duration::from_secs(3 * 365 * 24 * 3600), true);
        assert!(clock.now_unix_ms() < host - 2 * YEAR_MS);
        assert!(!clock.is_verified());
        assert_eq!(clock.known_good_unix_ms(), None);
        clock.step_to(host + 60_000).unwrap();
        let now = clock.now_unix_ms();
        assert!((now - (host + 60_000)).abs() < 5_000, "{now} vs {host}");
        assert!(
            (host_unix_ms() - host).abs() < 5_000,
            "the host clock is untouched"
        );
        clock.mark_verified(now);
        assert!(clock.known_good_unix_ms().unwrap() >= now);
        assert!(!clock.is_system());
    }
}
