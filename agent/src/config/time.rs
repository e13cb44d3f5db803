//! `[time]`: keeping the device's clock right without trusting it (see `clock` and `time_sync`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[time]` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    /// Step the system clock to central's signed time and restore the saved last known good time
    /// at boot (a device: the agent runs as root). Off (the default, for agents run by hand or in
    /// tests): only the agent's own view of the time is corrected.
    pub set_system_clock: bool,
    /// Ask central for its signed time when the agent starts, before anything checks a
    /// certificate. Off: only after a connection to central failed.
    pub check_at_start: bool,
    /// Ask again at this interval while running (seconds), which also refreshes the saved last
    /// known good time.
    pub check_interval_seconds: u64,
    /// Offsets up to this (milliseconds) are left to NTP; beyond it the clock is stepped.
    pub tolerance_ms: u64,
    /// Where the NTP servers central gives in the device config (`cairn.ntp_servers`) are
    /// written for systemd-timesyncd, which is then restarted (the image uses
    /// `/run/systemd/timesyncd.conf.d/50-cairn-central.conf`). Unset: they are ignored.
    pub ntp_dropin: Option<PathBuf>,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            set_system_clock: false,
            check_at_start: true,
            check_interval_seconds: 6 * 3600,
            tolerance_ms: 10_000,
            ntp_dropin: None,
        }
    }
}

impl TimeConfig {
    /// How often central's time is asked for while running.
    pub fn check_interval(&self) -> Duration {
        Duration::from_secs(self.check_interval_seconds)
    }

    /// How far off the clock may be before it is stepped.
    pub fn tolerance(&self) -> Duration {
        Duration::from_millis(self.tolerance_ms)
    }

    /// The field that is out of range, and why.
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        if self.ntp_dropin.as_ref().is_some_and(|p| p.is_relative()) {
            return Some((
                "time.ntp_dropin",
                "must be an absolute path (e.g. /run/systemd/timesyncd.conf.d/50-cairn-central.conf)"
                    .into(),
            ));
        }
        if !(60..=7 * 24 * 3600).contains(&self.check_interval_seconds) {
            return Some((
                "time.check_interval_seconds",
                format!(
                    "is {}; use 60 to 604800 (one minute to one week)",
                    self.check_interval_seconds
                ),
            ));
        }
        if !(100..=3_600_000).contains(&self.tolerance_ms) {
            return Some((
                "time.tolerance_ms",
                format!(
                    "is {}; use 100 to 3600000 (0.1 s to one hour)",
                    self.tolerance_ms
                ),
            ));
        }
        None
    }
}
