//! A 32-byte AES-256-GCM key kept in a file beside the database (0600, created on first start),
//! and sealing with it: a random nonce, then ciphertext and tag, bound to associated data that
//! names what the plaintext belongs to (a device id, a secret version), so sealed bytes copied
//! to another row do not open.
//!
//! The recovery-key escrow key and the secrets' key-encryption key are such files: a copy of the
//! database alone (a backup, a support bundle) opens neither.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Length of a key file.
pub const KEY_LEN: usize = 32;

/// Why a key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}; check data_dir permissions")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The key file exists but is not 32 bytes.
    #[error("key file {path} is {len} bytes, not 32: restore it from your backup (without it what it sealed cannot be read)")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The system random source failed.
    #[error("no randomness for a key or nonce")]
    Random,
}

/// An AES-256-GCM key loaded from its file.
pub struct SealingKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyFileError> {
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; len]);
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyFileError::Random)?;
    Ok(bytes)
}

impl SealingKey {
    /// Load the key in `path`, creating it (0600) when there is none; `what` names it in the
    /// log line of its creation.
    pub fn load_or_create(path: &Path, what: &str) -> Result<SealingKey, KeyFileError> {
        match SealingKey::load(path) {
            Ok((key, _)) => Ok(key),
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let fresh = random_bytes(KEY_LEN)?;
                cairn_io::write_atomic(path, &fresh, 0o600).map_err(|e| KeyFileError::Io {
                    path: path.to_path_buf(),
                    source: e.source,
                })?;
                tracing::info!(path = %path.display(), "created the {what}");
                SealingKey::from_bytes(&fresh).ok_or(KeyFileError::Random)
            }
            Err(e) => Err(e),
        }
    }

    /// Load the key in `path` (never creating it), with the metadata of the file it was read
    /// from, so a caller can tell later whether the file was replaced.
    pub fn load(path: &Path) -> Result<(SealingKey, std::fs::Metadata), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        // Room for one byte more than a key, so a good file is read without a reallocation
        // leaving a copy behind.
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
        let key = SealingKey::from_bytes(&bytes).ok_or_else(|| KeyFileError::BadKeyFile {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
        Ok((key, metadata))
    }

    /// A key from its 32 bytes (`None` for any other length).
    pub fn from_bytes(bytes: &[u8]) -> Option<SealingKey> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(SealingKey {
            key: LessSafeKey::new(key),
            id: hex::encode(&Sha256::digest(bytes)[..8]),
        })
    }

    /// A short public name of the key (hex of the first 8 bytes of its SHA-256), stored with
    /// what it sealed so a rotation knows which key opens a row.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypt `plain` bound to `aad`: random nonce followed by ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyFileError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyFileError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| KeyFileError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypt what [`SealingKey::seal`] made with the same `aad`; `None` when it does not open
    /// (another key, another `aad`, or altered bytes).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = zeroize::Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_the_associated_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SealingKey::load_or_create(&path, "test key").unwrap();
        let sealed = key.seal(b"row-a", b"hunter2-hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            &key.open(b"row-a", &sealed).unwrap()[..],
            b"hunter2-hunter2"
        );
        assert!(key.open(b"row-b", &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(b"row-a", &tampered).is_none());
        assert!(key.open(b"row-a", &sealed[..5]).is_none());
        let again = SealingKey::load_or_create(&path, "test key").unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(
            &again.open(b"row-a", &sealed).unwrap()[..],
            b"hunter2-hunter2"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_a_short_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SealingKey::load_or_create(&path, "test key"),
            Err(KeyFileError::BadKeyFile { len: 5, .. })
        ));
    }
}
