//! OS update rollouts: which devices get a bundle, in which waves, and when central moves on,
//! halts by itself or sends devices back (DESIGN.md section 8).
//!
//! - [`plan`] turns a selector and a wave request into waves of devices (pure, unit-tested).
//! - [`engine`] keeps rollouts moving: it releases waves (setting each device's desired OS and
//!   pushing the new desired state), follows the agents' `OsStatus` reports, halts, completes,
//!   and carries out pause, resume, abort and rollback. State lives in the registry, so a
//!   restarted central carries on where it stopped.
//! - [`version`] compares OS versions.

pub mod engine;
pub mod plan;
pub mod version;

use crate::store::{RolloutState, StoreError};

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The bundle is not stored.
    #[error("no bundle with SHA-256 {0}; upload it first (cairnctl bundle upload) and see GET /api/v1/bundles")]
    BundleNotFound(String),
    /// The bundle's own version does not parse.
    #[error(
        "the bundle's version cannot be compared: {0}; rebuild it with a dotted numeric version"
    )]
    BundleVersion(version::VersionError),
    /// The selector is malformed.
    #[error("invalid `selector`: {0}")]
    Selector(String),
    /// The wave request is malformed.
    #[error("invalid `waves`: {0}")]
    Waves(String),
    /// Another field is out of range.
    #[error("{0}")]
    Field(String),
    /// Devices named by the selector are not enrolled and active.
    #[error("these devices are not active devices of this central: {}; see GET /api/v1/devices", .0.join(", "))]
    UnknownDevices(Vec<String>),
    /// The selector matches no active device.
    #[error("the selector matches no active device; check it against GET /api/v1/devices (a device's `config` map)")]
    NoDevices,
    /// Every selected device already runs the target version.
    #[error("nothing to do: every selected device already runs version {0}")]
    NothingToDo(String),
    /// Devices report versions that cannot be compared.
    #[error("cannot compare the OS version of these devices with the bundle's: {}; they must report dotted numeric versions (VERSION_ID)", list_pairs(.0))]
    UnparsableVersions(Vec<(String, String)>),
    /// The rollout would downgrade devices.
    #[error("version {target} is older than what these devices run: {}; an admin may force it with allow_downgrade: true", list_pairs(.devices))]
    Downgrade {
        /// Target version.
        target: String,
        /// (device, running version).
        devices: Vec<(String, String)>,
    },
    /// Devices are held by another rollout.
    #[error("these devices are already in an unfinished rollout: {}; abort or roll back that rollout (or wait until it completes), or leave the devices out", list_pairs(.0))]
    Busy(Vec<(String, String)>),
    /// No such rollout.
    #[error("no rollout with id {0}; see GET /api/v1/rollouts")]
    NotFound(String),
    /// The action does not apply in the rollout's state.
    #[error("rollout {id} is {}; {action} {why}", .state.as_str())]
    Illegal {
        /// The rollout.
        id: String,
        /// Its state.
        state: RolloutState,
        /// What was asked.
        action: &'static str,
        /// Why not, and what to do.
        why: &'static str,
    },
    /// A rollback needs bundles that are not stored.
    #[error("cannot roll back: no stored bundle has version {} (needed by {}); upload the previous version's bundle first", .versions.join(", "), .devices.join(", "))]
    RollbackBundleMissing {
        /// Versions missing.
        versions: Vec<String>,
        /// Devices needing them.
        devices: Vec<String>,
    },
    /// Registry failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(a, b)| format!("{a} ({b})"))
        .collect::<Vec<_>>()
        .join(", ")
}
