//! Recovery-key escrow: devices hand central the recovery key of their encrypted data partition;
//! central keeps it encrypted (AES-256-GCM) with a key that lives beside the database, not in it,
//! and gives it out only to an admin, with an audit record.
//!
//! Why a separate key file: a copy of `registry.sqlite3` (a backup, a support bundle) must not be
//! enough to unlock stolen disks. `escrow.key` is 0600 in `data_dir`; back it up apart from the
//! database. The device id is the AEAD associated data, so a sealed key copied to another device's
//! row does not open.

use std::path::Path;

use crate::sealing::{KeyFileError, SealingKey};

/// File name of the escrow key in `data_dir`.
pub const ESCROW_KEY_FILE: &str = "escrow.key";

/// Why the escrow key could not be loaded or a recovery key not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// The key file could not be loaded, created, or used.
    #[error("escrow key: {0}")]
    Key(#[from] KeyFileError),
    /// A stored recovery key does not decrypt: wrong escrow key file or a tampered row.
    #[error("the escrowed recovery key of device {device_id} does not decrypt with {ESCROW_KEY_FILE}: the key file was replaced or the row altered; restore escrow.key from backup")]
    Undecryptable {
        /// The device.
        device_id: String,
    },
}

/// The escrow key, loaded once at start.
#[derive(Debug)]
pub struct EscrowKey {
    key: SealingKey,
}

impl EscrowKey {
    /// Load `data_dir/escrow.key`, creating it (0600) on first start.
    #[tracing::instrument(name = "escrow.load_or_create", skip_all, fields(dir = %dir.display()))]
    pub fn load_or_create(dir: &Path) -> Result<Self, EscrowError> {
        let key =
            SealingKey::load_or_create(&dir.join(ESCROW_KEY_FILE), "recovery-key escrow key")?;
        Ok(Self { key })
    }

    /// Encrypt `recovery_key` for `device_id`: random nonce followed by ciphertext and tag.
    pub fn seal(&self, device_id: &str, recovery_key: &str) -> Result<Vec<u8>, EscrowError> {
        Ok(self
            .key
            .seal(device_id.as_bytes(), recovery_key.as_bytes())?)
    }

    /// Decrypt what [`EscrowKey::seal`] made for the same `device_id`.
    pub fn open(&self, device_id: &str, sealed: &[u8]) -> Result<String, EscrowError> {
        let undecryptable = || EscrowError::Undecryptable {
            device_id: device_id.to_string(),
        };
        let plain = self
            .key
            .open(device_id.as_bytes(), sealed)
            .ok_or_else(undecryptable)?;
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
    fn checks_the_printed_forms() {
        assert!(valid_recovery_key_format(KEY));
        assert!(!valid_recovery_key_format("123456-234567"));
        assert!(!valid_recovery_key_format(&KEY.replace('1', "x")));
        assert!(valid_luks_uuid("5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f"));
        assert!(!valid_luks_uuid("5a9c0d1e"));
    }
}
