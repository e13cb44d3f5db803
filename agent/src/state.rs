//! The agent's on-disk state under `state_dir`: device id, certificate, CA, last desired state and
//! `status.json`.
//!
//! The directory is mode 0700 and every file 0600. Every write goes to a temporary file in the same
//! directory, is fsynced, renamed over the target and the directory fsynced, so a power cut leaves
//! either the old or the new file, never half of one. All functions here block: call them from
//! `spawn_blocking` in async code.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};
use cairn_proto::v1::DesiredState;
use prost::Message;
use tracing::{debug, debug_span};

use crate::status::Status;

/// Software device key (PKCS#8 DER).
pub const SOFTWARE_KEY_FILE: &str = "device-key.p8";
/// TPM-wrapped device key blob.
pub const TPM_KEY_FILE: &str = "device-key.tpm";
/// The apps' secrets cache key with a software device key ([`crate::secrets_key`]).
pub const SOFTWARE_CACHE_KEY_FILE: &str = "secrets.key";
/// The apps' secrets cache key sealed by the TPM.
pub const TPM_CACHE_KEY_FILE: &str = "secrets.key.tpm";
/// Device id assigned by central.
pub const DEVICE_ID_FILE: &str = "device-id";
/// Device certificate (DER).
pub const CERT_FILE: &str = "device-cert.der";
/// The CA that signed the device certificate, as central sent it (DER).
pub const CA_FILE: &str = "ca.der";
/// Last desired state received from central (prost-encoded `cairn.v1.DesiredState`).
pub const DESIRED_FILE: &str = "desired-state.pb";
/// Agent status for people and test harnesses (JSON).
pub const STATUS_FILE: &str = "status.json";

/// A failed state-directory operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file or the directory could not be read, written or created.
    #[error(
        "{0}; check the disk is mounted, has free space and the state directory's permissions"
    )]
    File(#[from] FileError),
    /// A state file exists but its content is not what the agent wrote.
    #[error("{path} is corrupt ({reason}); move it away and restart the agent to fetch it again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes `bytes` to `path` atomically with mode 0600 (see [`cairn_io::write_atomic`]).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let _span = debug_span!("state.write", path = %path.display(), len = bytes.len()).entered();
    cairn_io::write_atomic(path, bytes, 0o600)?;
    debug!("written");
    Ok(())
}

/// Reads a file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::new("read", path, source).into()),
    }
}

/// What enrollment produced and the agent keeps: the device's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    /// Device id assigned by central.
    pub device_id: String,
    /// Device certificate, DER.
    pub cert_der: Vec<u8>,
    /// The CA that signed it, DER (empty when central did not send one).
    pub ca_der: Vec<u8>,
}

/// The state directory and the files in it.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// A handle on `path`; nothing is touched until [`StateDir::ensure`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of a file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates the directory (and parents) and sets it to mode 0700.
    pub fn ensure(&self) -> Result<(), StateError> {
        let _span = debug_span!("state.ensure", dir = %self.path.display()).entered();
        std::fs::create_dir_all(&self.path).at("create the state directory", &self.path)?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
            .at("restrict the state directory", &self.path)?;
        Ok(())
    }

    /// The stored identity, `None` when the device has not enrolled yet (no certificate).
    pub fn load_identity(&self) -> Result<Option<StoredIdentity>, StateError> {
        let Some(cert_der) = read_optional(&self.file(CERT_FILE))? else {
            return Ok(None);
        };
        let device_id = match read_optional(&self.file(DEVICE_ID_FILE))? {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| StateError::Corrupt {
                    path: self.file(DEVICE_ID_FILE),
                    reason: "not UTF-8".into(),
                })?
                .trim()
                .to_string(),
            None => String::new(),
        };
        let ca_der = read_optional(&self.file(CA_FILE))?.unwrap_or_default();
        Ok(Some(StoredIdentity {
            device_id,
            cert_der,
            ca_der,
        }))
    }

    /// Stores a new identity; the certificate goes last, so its presence means "enrolled".
    pub fn save_identity(&self, identity: &StoredIdentity) -> Result<(), StateError> {
        let _span = debug_span!("state.save_identity", device_id = %identity.device_id).entered();
        if !identity.ca_der.is_empty() {
            write_private(&self.file(CA_FILE), &identity.ca_der)?;
        }
        write_private(&self.file(DEVICE_ID_FILE), identity.device_id.as_bytes())?;
        write_private(&self.file(CERT_FILE), &identity.cert_der)
    }

    /// Replaces the device certificate (after renewal).
    pub fn save_certificate(&self, cert_der: &[u8]) -> Result<(), StateError> {
        write_private(&self.file(CERT_FILE), cert_der)
    }

    /// Moves the certificate aside (`device-cert.der.old`) so the agent enrolls again.
    pub fn discard_certificate(&self) -> Result<(), StateError> {
        let from = self.file(CERT_FILE);
        let to = self.file(&format!("{CERT_FILE}.old"));
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FileError::new("move aside", from, source).into()),
        }
    }

    /// Removes every file of the device identity and its keys (crypto-erase on central's
    /// order): the device id, certificates, the fleet CA, the key blobs. Returns what was
    /// removed; missing files are fine.
    pub fn forget_identity(&self) -> Result<Vec<PathBuf>, StateError> {
        let mut removed = Vec::new();
        for name in [
            DEVICE_ID_FILE,
            CERT_FILE,
            "device-cert.der.old",
            CA_FILE,
            SOFTWARE_KEY_FILE,
            TPM_KEY_FILE,
            crate::tpm_key::AK_FILE,
            // The secrets' cache key: with it gone, the files it encrypted are noise.
            SOFTWARE_CACHE_KEY_FILE,
            TPM_CACHE_KEY_FILE,
        ] {
            let path = self.file(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(FileError::new("remove", path, source).into()),
            }
        }
        Ok(removed)
    }

    /// The last desired state received, `None` before the first.
    pub fn load_desired(&self) -> Result<Option<DesiredState>, StateError> {
        let path = self.file(DESIRED_FILE);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        DesiredState::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Stores a desired state (before it is applied).
    pub fn save_desired(&self, desired: &DesiredState) -> Result<(), StateError> {
        let _span = debug_span!("state.save_desired", revision = desired.revision).entered();
        write_private(&self.file(DESIRED_FILE), &desired.encode_to_vec())
    }

    /// Writes `status.json`.
    pub fn save_status(&self, status: &Status) -> Result<(), StateError> {
        Ok(status.save(&self.file(STATUS_FILE))?)
    }

    /// Reads `status.json`, `None` when absent.
    pub fn load_status(&self) -> Result<Option<Status>, StateError> {
        let path = self.file(STATUS_FILE);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn state_dir_is_0700_and_identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("agent"));
        state.ensure().unwrap();
        assert_eq!(mode(state.path()), 0o700);
        assert_eq!(state.load_identity().unwrap(), None);
        let id = StoredIdentity {
            device_id: "dev-1".into(),
            cert_der: vec![1, 2, 3],
            ca_der: vec![4, 5],
        };
        state.save_identity(&id).unwrap();
        assert_eq!(state.load_identity().unwrap(), Some(id));
        for f in [CERT_FILE, CA_FILE, DEVICE_ID_FILE] {
            assert_eq!(mode(&state.file(f)), 0o600, "{f}");
        }
        state.discard_certificate().unwrap();
        assert_eq!(state.load_identity().unwrap(), None);
    }

    #[test]
    fn desired_state_round_trips_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(state.load_desired().unwrap(), None);
        let mut desired = DesiredState {
            revision: 7,
            ..Default::default()
        };
        desired.config.insert("k".into(), "v".into());
        state.save_desired(&desired).unwrap();
        assert_eq!(state.load_desired().unwrap(), Some(desired));
        std::fs::write(state.file(DESIRED_FILE), [0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(
            state.load_desired(),
            Err(StateError::Corrupt { .. })
        ));
    }
}
