//! `[update]`: OS updates from central's rollouts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[update]` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Take OS updates from central. Off outside the device image.
    pub enabled: bool,
    /// The `rauc` command.
    pub rauc: PathBuf,
    /// os-release of the running OS (its `VERSION_ID` is the running version).
    pub os_release: PathBuf,
    /// The kernel command line (its `rauc.slot=` names the booted slot).
    pub cmdline: PathBuf,
    /// Seconds the new slot has to pass the health gate when the rollout gives no deadline.
    pub health_deadline_s: u32,
    /// Deadline of one `rauc install`, in seconds.
    pub install_timeout_s: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: false,
            rauc: "rauc".into(),
            os_release: "/etc/os-release".into(),
            cmdline: "/proc/cmdline".into(),
            health_deadline_s: 600,
            install_timeout_s: 1800,
        }
    }
}
