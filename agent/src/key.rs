//! The device key: an ECDSA P-256 key that never leaves the device, in the TPM when there is one,
//! otherwise a ring software key in `state_dir/device-key.p8` (mode 0600, on the encrypted data
//! partition). It signs the CSRs and the TLS handshakes; its bytes are never logged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use tracing::{info, info_span, warn};

use cairn_io::FileError;

use crate::config::{AgentConfig, KeyStorage, KeyStorageSetting};
use crate::state::{SOFTWARE_KEY_FILE, TPM_KEY_FILE};
use crate::tpm_key::{TpmKey, TpmKeyError};

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes);
/// the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A failed device-key operation.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The software key file exists but could not be read.
    #[error("{0}; check the data partition is mounted")]
    Read(#[source] FileError),
    /// The software key file is not a P-256 PKCS#8 key.
    #[error("device key {path} is not a valid ECDSA P-256 PKCS#8 key ({reason}); move it away to make a new key (the device then enrolls again)")]
    Rejected {
        /// The key file.
        path: PathBuf,
        /// ring's reason.
        reason: String,
    },
    /// Generating or storing a new software key failed.
    #[error("cannot create a software device key: {0}")]
    Create(#[source] FileError),
    /// The random generator failed.
    #[error("the system random generator failed while {0}")]
    Random(&'static str),
    /// Signing with the device key failed.
    #[error("signing with the {storage} device key failed: {reason}")]
    Sign {
        /// `tpm` or `software`.
        storage: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A TPM operation failed, or TPM support was not built.
    #[error(transparent)]
    Tpm(#[from] TpmKeyError),
    /// The public key is not an uncompressed P-256 point in a SubjectPublicKeyInfo.
    #[error("the device public key is not an ECDSA P-256 key: {0}")]
    BadPublicKey(String),
    /// The blocking worker running a key operation panicked or was cancelled.
    #[error("device key worker task failed: {0}")]
    Task(String),
}

/// A ring ECDSA P-256 key loaded from its PKCS#8 file.
pub struct SoftwareKey {
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareKey").finish_non_exhaustive()
    }
}

impl SoftwareKey {
    /// Loads the key at `path`, or creates it (mode 0600, atomically) when the file is absent.
    pub fn open_or_create(path: &Path) -> Result<Self, KeyError> {
        let _span = info_span!("key.software.open", path = %path.display()).entered();
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => {
                tighten_mode(path);
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .map_err(|_| KeyError::Random("generating the device key"))?;
                cairn_io::write_atomic(path, doc.as_ref(), 0o600).map_err(KeyError::Create)?;
                info!("created a new software device key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(KeyError::Read(FileError::new("read device key", path, e))),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(|e| KeyError::Rejected {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let spki = spki_from_point(pair.public_key().as_ref())?;
        Ok(SoftwareKey { pair, spki, rng })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(&self.rng, message)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| KeyError::Sign {
                storage: "software",
                reason: "ring could not sign (random generator failure)".into(),
            })
    }
}

/// Removes group/other bits from an existing key file (best effort, logged).
fn tighten_mode(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            warn!(path = %path.display(), "device key file was readable by others; setting mode 0600");
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Wraps an uncompressed P-256 point into a SubjectPublicKeyInfo.
pub fn spki_from_point(point: &[u8]) -> Result<Vec<u8>, KeyError> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(KeyError::BadPublicKey(format!(
            "expected a 65-byte uncompressed point, got {} bytes",
            point.len()
        )));
    }
    Ok([P256_SPKI_PREFIX.as_slice(), point].concat())
}

/// The uncompressed point inside a P-256 SubjectPublicKeyInfo.
pub fn point_from_spki(spki: &[u8]) -> Result<Vec<u8>, KeyError> {
    use x509_parser::prelude::FromDer;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| KeyError::BadPublicKey(format!("SubjectPublicKeyInfo does not parse: {e}")))?;
    let alg = info.algorithm.algorithm.to_id_string();
    let curve = info
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if alg != "1.2.840.10045.2.1" || curve.as_deref() != Some("1.2.840.10045.3.1.7") {
        return Err(KeyError::BadPublicKey(format!(
            "algorithm {alg} curve {curve:?}, expected id-ecPublicKey on prime256v1"
        )));
    }
    let point = info.subject_public_key.data.to_vec();
    if point.len() != 65 || point[0] != 0x04 {
        return Err(KeyError::BadPublicKey(
            "expected an uncompressed 65-byte point".into(),
        ));
    }
    Ok(point)
}

/// Where the device key is (or will be) kept. With `key_storage = "auto"` an existing key decides:
/// a TPM blob, else a software key file, else detection (see [`AgentConfig::resolve_key_storage`]).
pub fn choose_storage(config: &AgentConfig) -> KeyStorage {
    let software_path = config.state_dir.join(SOFTWARE_KEY_FILE);
    let tpm_path = config.state_dir.join(TPM_KEY_FILE);
    let tcti = || config.tcti().to_string();
    match config.key_storage {
        KeyStorageSetting::Auto if tpm_path.exists() => KeyStorage::Tpm { tcti: tcti() },
        KeyStorageSetting::Auto if software_path.exists() => KeyStorage::Software,
        KeyStorageSetting::Software if tpm_path.exists() && !software_path.exists() => {
            warn!("key_storage = \"software\" but only a TPM key exists; making a software key, the device will enroll again");
            KeyStorage::Software
        }
        KeyStorageSetting::Tpm if software_path.exists() && !tpm_path.exists() => {
            warn!("key_storage = \"tpm\" but only a software key exists; making a TPM key, the device will enroll again");
            config.resolve_key_storage()
        }
        _ => config.resolve_key_storage(),
    }
}

/// The device key, cheap to clone; the signing half never leaves this process (or the TPM).
#[derive(Clone, Debug)]
pub enum DeviceKey {
    /// A ring key from `device-key.p8`.
    Software(Arc<SoftwareKey>),
    /// A TPM-resident key whose wrapped blob is `device-key.tpm`.
    Tpm(Arc<TpmKey>),
}

impl DeviceKey {
    /// Opens the device key `config` asks for (see [`choose_storage`]), creating it on first
    /// start. Blocking: run it in `spawn_blocking`.
    pub fn open_or_create(config: &AgentConfig) -> Result<DeviceKey, KeyError> {
        match choose_storage(config) {
            KeyStorage::Software => Ok(DeviceKey::Software(Arc::new(SoftwareKey::open_or_create(
                &config.state_dir.join(SOFTWARE_KEY_FILE),
            )?))),
            KeyStorage::Tpm { tcti } => {
                let key = TpmKey::open_or_create(&tcti, &config.state_dir.join(TPM_KEY_FILE))?;
                point_from_spki(key.public_key_spki_der())?;
                Ok(DeviceKey::Tpm(Arc::new(key)))
            }
        }
    }

    /// A software key at `path` (created when absent). For tests and the fleet benchmark.
    pub fn software(path: &Path) -> Result<DeviceKey, KeyError> {
        Ok(DeviceKey::Software(Arc::new(SoftwareKey::open_or_create(
            path,
        )?)))
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki_der(&self) -> &[u8] {
        match self {
            DeviceKey::Software(k) => &k.spki,
            DeviceKey::Tpm(k) => k.public_key_spki_der(),
        }
    }

    /// The uncompressed EC point of the public key.
    pub fn public_key_point(&self) -> &[u8] {
        let spki = self.public_key_spki_der();
        &spki[spki.len() - 65..]
    }

    /// Signs SHA-256(`message`) with ECDSA P-256; DER signature. May block on the TPM.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            DeviceKey::Software(k) => k.sign(message),
            DeviceKey::Tpm(k) => Ok(k.sign(message)?),
        }
    }

    /// Crypto-erase of what the key's TPM holds: TPM2_Clear of the owner hierarchy for a TPM key
    /// (this key, the attestation key and every sealed disk key become unloadable); nothing for
    /// a software key (its file is removed with the identity). Returns what was destroyed.
    /// Blocking; the key is unusable afterwards.
    pub fn destroy_tpm_objects(&self) -> Result<Option<&'static str>, KeyError> {
        match self {
            DeviceKey::Software(_) => Ok(None),
            DeviceKey::Tpm(k) => {
                k.clear_owner_hierarchy()?;
                Ok(Some(
                    "TPM owner hierarchy (device key, attestation key, sealed keys)",
                ))
            }
        }
    }

    /// `"tpm"` or `"software"`.
    pub fn storage(&self) -> &'static str {
        match self {
            DeviceKey::Software(_) => "software",
            DeviceKey::Tpm(_) => "tpm",
        }
    }

    /// Where the key lives.
    pub fn key_storage(&self) -> KeyStorage {
        match self {
            DeviceKey::Software(_) => KeyStorage::Software,
            DeviceKey::Tpm(k) => KeyStorage::Tpm {
                tcti: k.tcti().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn software_key_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOFTWARE_KEY_FILE);
        let key = DeviceKey::software(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(key.storage(), "software");
        let again = DeviceKey::software(&path).unwrap();
        assert_eq!(key.public_key_spki_der(), again.public_key_spki_der());
        assert_eq!(
            point_from_spki(key.public_key_spki_der()).unwrap(),
            key.public_key_point()
        );
    }

    #[test]
    fn software_signature_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::software(&dir.path().join("k.p8")).unwrap();
        let sig = key.sign(b"hello").unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            key.public_key_point(),
        )
        .verify(b"hello", &sig)
        .unwrap();
    }

    #[test]
    fn corrupt_key_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.p8");
        std::fs::write(&path, b"junk").unwrap();
        let err = DeviceKey::software(&path).unwrap_err();
        assert!(matches!(err, KeyError::Rejected { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"junk");
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let key = DeviceKey::software(&dir.path().join("k.p8")).unwrap();
        assert_eq!(format!("{key:?}"), "Software(SoftwareKey { .. })");
    }
}
