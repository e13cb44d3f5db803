//! Recovery-key escrow: devices hand central the recovery key of their encrypted data partition;
//! central keeps it encrypted (AES-256-GCM) with a key that lives beside the database, not in it,
//! and gives it out only to an admin, with an audit record.
//!
//! Why a separate key file: a copy of `registry.sqlite3` (a backup, a support bundle) must not be
//! enough to unlock stolen disks. `escrow.key` is 0600 in `data_dir`; back it up apart from the
//! database. The device id is the AEAD associated data, so a sealed key copied to another device's
//! row does not open.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// File name of the escrow key in `data_dir`.
pub const ESCROW_KEY_FILE: &str = "escrow.key";
const KEY_LEN: usize = 32;

/// Why the escrow key could not be loaded or a recovery key not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// The key file could not be read or written.
    #[error("escrow key {path}: {source}; check data_dir permissions")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The key file exists but is not 32 bytes.
    #[error("escrow key {path} is {len} bytes, not 32: restore it from your backup (without it escrowed recovery keys cannot be read)")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The system random source failed.
    #[error("no randomness for the escrow key or nonce")]
    Random,
    /// A stored recovery key does not decrypt: wrong escrow key file or a tampered row.
    #[error("the escrowed recovery key of device {device_id} does not decrypt with {ESCROW_KEY_FILE}: the key file was replaced or the row altered; restore escrow.key from backup")]
    Undecryptable {
        /// The device.
        device_id: String,
    },
}

/// The escrow key, loaded once at start.
pub struct EscrowKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for EscrowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EscrowKey(..)")
    }
}

impl EscrowKey {
    /// Load `data_dir/escrow.key`, creating it (0600) on first start.
    #[tracing::instrument(name = "escrow.load_or_create", skip_all, fields(dir = %dir.display()))]
    pub fn load_or_create(dir: &Path) -> Result<Self, EscrowError> {
        let path = dir.join(ESCROW_KEY_FILE);
        let io = |source| EscrowError::Io {
            path: path.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut fresh = vec![0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut fresh)
                    .map_err(|_| EscrowError::Random)?;
                cairn_io::write_atomic(&path, &fresh, 0o600).map_err(|e| io(e.source))?;
                tracing::info!(path = %path.display(), "created the recovery-key escrow key");
                fresh
            }
            Err(e) => return Err(io(e)),
        };
        if bytes.len() != KEY_LEN {
            return Err(EscrowError::BadKeyFile {
                path,
                len: bytes.len(),
            });
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| EscrowError::BadKeyFile {
            path,
            len: bytes.len(),
        })?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Encrypt `recovery_key` for `device_id`: random nonce followed by ciphertext and tag.
    pub fn seal(&self, device_id: &str, recovery_key: &str) -> Result<Vec<u8>, EscrowError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| EscrowError::Random)?;
        let mut data = recovery_key.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(device_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| EscrowError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Decrypt what [`EscrowKey::seal`] made for the same `device_id`.
    pub fn open(&self, device_id: &str, sealed: &[u8]) -> Result<String, EscrowError> {
        let undecryptable = || EscrowError::Undecryptable {
            device_id: device_id.to_string(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(undecryptable());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| undecryptable())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(device_id.as_bytes()), &mut body)
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain.to_vec()).map_err(|_| undecryptable())
    }
}

/// Check the printed form of a recovery key: 8 groups of 6 digits joined by '-'. Central does not
/// know the per-group checksum scheme; the device made the key and checks it on use.
pub fn valid_recovery_key_format(key: &str) -> bool {
    let groups: Vec<&str> = key.split('-').collect();
    groups.len() == 8
        && groups
            .iter()
            .all(|g| g.len() == 6 && g.bytes().all(|b| b.is_ascii_digit()))
}

/// Check a LUKS2 UUID as `cryptsetup luksUUID` prints it (36 characters, hex and dashes).
pub fn valid_luks_uuid(uuid: &str) -> bool {
    uuid.len() == 36 && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "123456-234567-345678-456789-567890-678901-789012-890123";

    #[test]
    fn seals_opens_and_binds_to_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let key = EscrowKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal("dev_a", KEY).unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"123456"),
            "plaintext visible in sealed form"
        );
        assert_eq!(key.open("dev_a", &sealed).unwrap(), KEY);
        assert!(matches!(
            key.open("dev_b", &sealed),
            Err(EscrowError::Undecryptable { .. })
        ));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("dev_a", &tampered).is_err());
        // Reloaded from the file: same key.
        let again = EscrowKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("dev_a", &sealed).unwrap(), KEY);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(ESCROW_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_a_short_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ESCROW_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            EscrowKey::load_or_create(dir.path()),
            Err(EscrowError::BadKeyFile { len: 5, .. })
        ));
    }

    #[test]
    fn checks_the_printed_forms() {
        assert!(valid_recovery_key_format(KEY));
        assert!(!valid_recovery_key_format("123456-234567"));
        assert!(!valid_recovery_key_format(&KEY.replace('1', "x")));
        assert!(valid_luks_uuid("5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f"));
        assert!(!valid_luks_uuid("5a9c0d1e"));
    }
}
