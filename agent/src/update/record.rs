//! The update's progress on the data partition (`<state_dir>/update/state.json`), so that it
//! survives reboots, power cuts and the switch between slots (both slots' agents read it).

use std::path::{Path, PathBuf};

use cairn_io::PathContext;
use serde::{Deserialize, Serialize};

use super::UpdateError;
use crate::slot::Slot;

/// The update a rollout asked for (from `DesiredState.os`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Manifest version of the bundle.
    pub version: String,
    /// Content address and digest of the bundle (lower-case hex SHA-256).
    pub sha256: String,
    /// Bundle size in bytes.
    pub size: u64,
    /// The rollout that asked for it.
    pub rollout_id: String,
    /// An admin allowed a downgrade.
    pub allow_downgrade: bool,
    /// Seconds the new slot has to pass the health gate.
    pub health_deadline_s: u32,
}

impl Target {
    /// From the wire message; `default_deadline_s` when the rollout gave none.
    pub fn from_proto(os: &cairn_proto::v1::OsUpdate, default_deadline_s: u32) -> Target {
        Target {
            version: os.version.clone(),
            sha256: os.bundle_sha256.clone(),
            size: os.bundle_size,
            rollout_id: os.rollout_id.clone(),
            allow_downgrade: os.allow_downgrade,
            health_deadline_s: if os.health_deadline_seconds == 0 {
                default_deadline_s
            } else {
                os.health_deadline_seconds
            },
        }
    }
}

/// How far the update got. Only stages that must survive a reboot are stored; checking health
/// on the new slot is "rebooting into it" until it is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Fetching the bundle (resumable: the partial file and its journal are next to this file).
    Downloading,
    /// `rauc install` into the other slot (restarted from the downloaded bundle after a cut).
    Installing,
    /// The other slot is installed, its UKI sealed to, and made primary; the device reboots into
    /// `to_slot` (or already has, and is checking health there).
    Rebooting {
        /// The slot the update was installed from.
        from_slot: Slot,
        /// The slot the update was installed into.
        to_slot: Slot,
    },
    /// Committed: the new slot passed the health gate.
    Succeeded,
    /// Failed; not retried for this bundle.
    Failed {
        /// Why.
        error: String,
    },
    /// Refused (downgrade without force, bad version); not retried for this bundle.
    Refused {
        /// Why.
        error: String,
    },
}

impl Stage {
    /// The stage's name in logs and console markers.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Downloading => "downloading",
            Stage::Installing => "installing",
            Stage::Rebooting { .. } => "rebooting",
            Stage::Succeeded => "succeeded",
            Stage::Failed { .. } => "failed",
            Stage::Refused { .. } => "refused",
        }
    }

    /// Succeeded, failed or refused: nothing more happens for this target.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Stage::Succeeded | Stage::Failed { .. } | Stage::Refused { .. }
        )
    }
}

/// The stored record: one target and its stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What is being installed.
    pub target: Target,
    /// How far it got.
    pub stage: Stage,
    /// Bundle bytes fetched from central over all download attempts (the rest came from the
    /// running slot), kept for the report after the reboot.
    #[serde(default)]
    pub fetched_bytes: u64,
}

/// `state.json` in the update work directory.
#[derive(Debug, Clone)]
pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    /// The record file in `dir`.
    pub fn new(dir: &Path) -> RecordFile {
        RecordFile {
            path: dir.join("state.json"),
        }
    }

    /// The stored record; `None` when there is none. A damaged file is reported and treated as
    /// none: central sends the desired update again and the stages are idempotent.
    pub fn load(&self) -> Option<Record> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the update record; starting over");
                return None;
            }
        };
        match serde_json::from_slice(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "damaged update record ignored; starting over");
                None
            }
        }
    }

    /// Store `record` durably (temp file, fsync, rename, directory fsync): a power cut leaves
    /// the old or the new record, never a torn one.
    pub fn save(&self, record: &Record) -> Result<(), UpdateError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).at("create the directory", dir)?;
        let bytes = serde_json::to_vec_pretty(record).expect("record serializes");
        cairn_io::write_atomic(&self.path, &bytes, 0o644)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            version: "0.2.0".into(),
            sha256: "ab".repeat(32),
            size: 10,
            rollout_id: "r1".into(),
            allow_downgrade: false,
            health_deadline_s: 600,
        }
    }

    #[test]
    fn round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::new(dir.path());
        assert_eq!(file.load(), None);
        let record = Record {
            target: target(),
            stage: Stage::Rebooting {
                from_slot: Slot::A,
                to_slot: Slot::B,
            },
            fetched_bytes: 42,
        };
        file.save(&record).unwrap();
        assert_eq!(file.load(), Some(record));
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert_eq!(file.load(), None, "a damaged record is treated as none");
    }

    #[test]
    fn final_stages() {
        assert!(Stage::Succeeded.is_final());
        assert!(Stage::Failed { error: "x".into() }.is_final());
        assert!(!Stage::Installing.is_final());
        assert!(!Stage::Rebooting {
            from_slot: Slot::A,
            to_slot: Slot::B
        }
        .is_final());
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_stored_record_keeps_its_slots_as_bootnames() {
        let text = r#"{"target":{"version":"0.2.0","sha256":"ab","size":1,"rollout_id":"r","allow_downgrade":false,"health_deadline_s":600},"stage":{"stage":"rebooting","from_slot":"a","to_slot":"b"},"fetched_bytes":3}"#;
        let record: Record = serde_json::from_str(text).unwrap();
        assert_eq!(
            record.stage,
            Stage::Rebooting {
                from_slot: Slot::A,
                to_slot: Slot::B
            }
        );
        let back = serde_json::to_value(&record).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }
}
