//! The key of the agent's copy of its apps' secrets ([`crate::secrets::SecretCache`]): 32 random
//! bytes for AES-256-GCM, kept where the device key is kept.
//!
//! - TPM device key: sealed by that TPM in `state_dir/secrets.key.tpm`, bound to the TPM alone and
//!   not to PCRs ([`cairn_tpm::TpmBoundSecret`]): it keeps opening after OS updates and Secure
//!   Boot changes, and never opens on another device or after a TPM clear. A copy of the state
//!   directory is ciphertext without this device's TPM.
//! - Software device key: the key itself in `state_dir/secrets.key` (0600). Ciphertext on disk,
//!   key beside it: this protects copies of the secrets directory alone, not of the state
//!   directory (which the encrypted data partition protects on a device).
//!
//! A stored key that can never open again is [`CacheKeyError::Lost`]: the cache then makes a new
//! key and central sends the values again. The key's bytes are never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_io::FileError;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::info;
use zeroize::Zeroizing;

use crate::key::DeviceKey;
use crate::tpm_key::{TpmKey, TpmKeyError};

pub use crate::state::{SOFTWARE_CACHE_KEY_FILE, TPM_CACHE_KEY_FILE};
/// Length of the cache key.
pub const CACHE_KEY_LEN: usize = 32;
/// A software key file longer than this is not a key (read no further).
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// Why the cache key could not be opened, made or used.
#[derive(Debug, thiserror::Error)]
pub enum CacheKeyError {
    /// The stored key can never be opened again; what it encrypted is lost.
    #[error("the secret cache key {path} cannot be opened: {reason}")]
    Lost {
        /// The key file.
        path: PathBuf,
        /// Why it cannot.
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("secret cache key: {0}; check the state directory is mounted and writable")]
    File(#[from] FileError),
    /// The TPM failed while opening or sealing the key (not a refusal of the blob).
    #[error("secret cache key {path}: {source}; the stored secrets are kept: check the TPM, then restart the agent")]
    Tpm {
        /// The sealed key file.
        path: PathBuf,
        /// The TPM's failure.
        #[source]
        source: TpmKeyError,
    },
    /// The system random generator failed.
    #[error("the system random generator failed while {0}; restart the agent")]
    Random(&'static str),
}

/// The AES-256-GCM key of the secret cache.
pub struct CacheKey {
    key: LessSafeKey,
    /// Derived from the same bytes: keys the digests of values in container labels.
    digest_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKey").finish_non_exhaustive()
    }
}

impl CacheKey {
    fn from_bytes(bytes: &[u8]) -> Option<CacheKey> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        let tag = ring::hmac::sign(&derive, b"cairn secret value digest key v1");
        let mut digest_key = Zeroizing::new([0u8; 32]);
        digest_key.copy_from_slice(tag.as_ref());
        Some(CacheKey {
            key: LessSafeKey::new(key),
            digest_key,
        })
    }

    /// The key of the secret values' digests in the runtime's spec hash
    /// (`DesiredApp::digest_key`): derived from this key, so it is as well kept and changes
    /// when a lost key is replaced.
    pub fn digest_key(&self) -> [u8; 32] {
        *self.digest_key
    }

    /// Encrypts `plain` bound to `aad`: a random nonce, then ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CacheKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CacheKeyError::Random("making a nonce"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| CacheKeyError::Random("encrypting"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypts what [`CacheKey::seal`] made with the same `aad`; `None` when it does not open
    /// (another key, another `aad`, or altered bytes).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(len);
        Some(body)
    }
}

/// Where the cache key is kept: see the module docs.
#[derive(Clone, Debug)]
pub enum CacheKeyStore {
    /// The key in a 0600 file.
    Software {
        /// `state_dir/secrets.key`.
        path: PathBuf,
    },
    /// The key sealed by the device key's TPM.
    Tpm {
        /// The device key, whose TPM connection seals and unseals.
        key: Arc<TpmKey>,
        /// `state_dir/secrets.key.tpm`.
        path: PathBuf,
    },
}

impl CacheKeyStore {
    /// Where `device_key`'s storage keeps the cache key under `state_dir`.
    pub fn for_device_key(device_key: &DeviceKey, state_dir: &Path) -> CacheKeyStore {
        match device_key {
            DeviceKey::Software(_) => {
                CacheKeyStore::software(state_dir.join(SOFTWARE_CACHE_KEY_FILE))
            }
            DeviceKey::Tpm(key) => CacheKeyStore::Tpm {
                key: key.clone(),
                path: state_dir.join(TPM_CACHE_KEY_FILE),
            },
        }
    }

    /// A software key at `path`.
    pub fn software(path: impl Into<PathBuf>) -> CacheKeyStore {
        CacheKeyStore::Software { path: path.into() }
    }

    /// The file holding the key (or its sealed blob).
    pub fn path(&self) -> &Path {
        match self {
            CacheKeyStore::Software { path } | CacheKeyStore::Tpm { path, .. } => path,
        }
    }

    /// The file the other storage would keep, left behind when the device key's storage changed.
    pub fn other_storage_path(&self) -> PathBuf {
        let other = match self {
            CacheKeyStore::Software { .. } => TPM_CACHE_KEY_FILE,
            CacheKeyStore::Tpm { .. } => SOFTWARE_CACHE_KEY_FILE,
        };
        self.path().with_file_name(other)
    }

    /// Opens the stored key; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// [`CacheKeyError::Lost`] when the stored key can never open (a software key of the wrong
    /// length; a blob of another TPM, from before a TPM clear, or damaged); other variants for
    /// failures that may pass (I/O, TPM unreachable).
    pub fn open(&self) -> Result<Option<CacheKey>, CacheKeyError> {
        let path = self.path();
        let Some(stored) = read_key_file(path)? else {
            return Ok(None);
        };
        let lost = |reason: String| CacheKeyError::Lost {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = match self {
            CacheKeyStore::Software { .. } => stored,
            CacheKeyStore::Tpm { key, .. } => match key.unseal_from_tpm(&stored) {
                Ok(bytes) => bytes,
                Err(e @ TpmKeyError::ForeignBlob { .. }) => return Err(lost(e.to_string())),
                Err(source) => {
                    return Err(CacheKeyError::Tpm {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
        };
        CacheKey::from_bytes(&bytes).map(Some).ok_or_else(|| {
            lost(format!(
                "{} bytes, not a {CACHE_KEY_LEN}-byte key",
                bytes.len()
            ))
        })
    }

    /// Makes a new random key and stores it (0600, atomically), replacing any stored one.
    pub fn create(&self) -> Result<CacheKey, CacheKeyError> {
        let mut fresh = Zeroizing::new([0u8; CACHE_KEY_LEN]);
        SystemRandom::new()
            .fill(fresh.as_mut())
            .map_err(|_| CacheKeyError::Random("making the secret cache key"))?;
        let path = self.path();
        match self {
            CacheKeyStore::Software { .. } => cairn_io::write_atomic(path, fresh.as_ref(), 0o600)?,
            CacheKeyStore::Tpm { key, .. } => {
                let blob =
                    key.seal_to_tpm(fresh.as_ref())
                        .map_err(|source| CacheKeyError::Tpm {
                            path: path.to_path_buf(),
                            source,
                        })?;
                cairn_io::write_atomic(path, &blob, 0o600)?;
            }
        }
        info!(path = %path.display(), "made a new secret cache key");
        CacheKey::from_bytes(fresh.as_ref())
            .ok_or(CacheKeyError::Random("making the secret cache key"))
    }
}

/// The bytes of the key file at `path`; `None` when there is none.
fn read_key_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CacheKeyError> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::new("open", path, e).into()),
    };
    let mut bytes = Zeroizing::new(Vec::with_capacity(CACHE_KEY_LEN + 1));
    (&mut file)
        .take(MAX_KEY_FILE_LEN)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::new("read", path, e))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_software_key_is_made_0600_and_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = CacheKeyStore::software(dir.path().join(SOFTWARE_CACHE_KEY_FILE));
        assert!(store.open().unwrap().is_none());
        let key = store.create().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(store.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal(b"aad", b"hunter2-hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let again = store.open().unwrap().unwrap();
        assert_eq!(
            &again.open(b"aad", &sealed).unwrap()[..],
            b"hunter2-hunter2"
        );
        assert!(again.open(b"other", &sealed).is_none());
        assert_eq!(format!("{again:?}"), "CacheKey { .. }");
    }

    #[test]
    fn a_key_file_of_the_wrong_length_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = CacheKeyStore::software(dir.path().join(SOFTWARE_CACHE_KEY_FILE));
        std::fs::write(store.path(), b"short").unwrap();
        let err = store.open().unwrap_err();
        assert!(matches!(err, CacheKeyError::Lost { .. }), "{err}");
        assert!(err.to_string().contains("5 bytes"), "{err}");
        assert_eq!(
            store.other_storage_path(),
            dir.path().join(TPM_CACHE_KEY_FILE)
        );
    }
}
