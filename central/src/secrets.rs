//! App secrets at rest: envelope encryption. Each secret version is encrypted (AES-256-GCM)
//! with a data key of its own, drawn at random; the data key is stored wrapped by the
//! key-encryption key in `data_dir/secrets.key` (0600, created on first start, like the escrow
//! key: a copy of the database alone opens nothing). Both are bound to the secret's id and
//! version, so sealed bytes moved to another row or version do not open.
//!
//! The row keeps the id of the key that wrapped its data key (see [`SealingKey::id`]); a
//! rotation of the key-encryption key re-wraps the data keys only, never the values.

use std::path::Path;

use cairn_api::AttestationState;
use zeroize::Zeroizing;

use crate::sealing::{random_bytes, KeyFileError, SealingKey, KEY_LEN};

/// File name of the secrets' key-encryption key in `data_dir`.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretVaultError {
    /// The key file could not be loaded, created, or used.
    #[error("secrets key: {0}")]
    Key(#[from] KeyFileError),
    /// The row's data key was wrapped by a key central does not hold.
    #[error("secret {secret_id} was sealed under key {kek_id}, which is not {SECRETS_KEY_FILE} ({current}): restore the key file it was sealed with from your backup")]
    UnknownKey {
        /// The secret.
        secret_id: String,
        /// The key id stored with it.
        kek_id: String,
        /// The id of the key central holds.
        current: String,
    },
    /// The stored bytes do not decrypt: the key file was replaced or the row altered.
    #[error("secret {secret_id} version {version} does not decrypt with {SECRETS_KEY_FILE}: the key file was replaced or the row altered; restore the key file from backup, or set the secret again")]
    Undecryptable {
        /// The secret.
        secret_id: String,
        /// Its version.
        version: u64,
    },
}

/// A secret version as stored: the wrapped data key and the encrypted value.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Id of the key-encryption key that wrapped `wrapped_key`.
    pub kek_id: String,
    /// The data key, sealed by the key-encryption key.
    pub wrapped_key: Vec<u8>,
    /// The value, sealed by the data key.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// The key-encryption key, loaded once at start.
#[derive(Debug)]
pub struct SecretVault {
    kek: SealingKey,
}

/// What a secret version's keys are bound to.
fn binding(secret_id: &str, version: u64) -> Vec<u8> {
    format!("cairn-secret\0{secret_id}\0{version}").into_bytes()
}

impl SecretVault {
    /// Load `data_dir/secrets.key`, creating it (0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<SecretVault, SecretVaultError> {
        let kek =
            SealingKey::load_or_create(&dir.join(SECRETS_KEY_FILE), "secrets key-encryption key")?;
        Ok(SecretVault { kek })
    }

    /// Seal `value` as version `version` of secret `secret_id`, under a fresh data key.
    pub fn seal(
        &self,
        secret_id: &str,
        version: u64,
        value: &[u8],
    ) -> Result<SealedSecret, SecretVaultError> {
        let aad = binding(secret_id, version);
        let data_key = random_bytes(KEY_LEN)?;
        let sealer = SealingKey::from_bytes(&data_key).ok_or(KeyFileError::Random)?;
        Ok(SealedSecret {
            kek_id: self.kek.id().to_owned(),
            wrapped_key: self.kek.seal(&aad, &data_key)?,
            ciphertext: sealer.seal(&aad, value)?,
        })
    }

    /// The value of version `version` of secret `secret_id`.
    pub fn open(
        &self,
        secret_id: &str,
        version: u64,
        sealed: &SealedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, SecretVaultError> {
        if sealed.kek_id != self.kek.id() {
            return Err(SecretVaultError::UnknownKey {
                secret_id: secret_id.to_owned(),
                kek_id: sealed.kek_id.clone(),
                current: self.kek.id().to_owned(),
            });
        }
        let undecryptable = || SecretVaultError::Undecryptable {
            secret_id: secret_id.to_owned(),
            version,
        };
        let aad = binding(secret_id, version);
        let data_key = self
            .kek
            .open(&aad, &sealed.wrapped_key)
            .ok_or_else(undecryptable)?;
        let opener = SealingKey::from_bytes(&data_key).ok_or_else(undecryptable)?;
        opener
            .open(&aad, &sealed.ciphertext)
            .ok_or_else(undecryptable)
    }
}

/// Whether a device in attestation state `state` may receive its apps' secrets; the error says
/// why not and what would change it.
pub fn release_allowed(
    state: &AttestationState,
    release_to_unattested: bool,
) -> Result<(), String> {
    match state {
        AttestationState::Verified => Ok(()),
        AttestationState::Unsupported if release_to_unattested => Ok(()),
        AttestationState::Unsupported => Err("this device has no TPM central proved, so it cannot attest its boot; secrets go only to attested devices (central's `release_secrets_to_unattested` allows them for fleets without TPMs)".into()),
        AttestationState::Failed => Err("this device's boot attestation failed; an admin must accept or reset its attestation before it receives secrets".into()),
        AttestationState::Stale => Err("this device's last verified quote is too old; it receives secrets once a fresh quote verifies".into()),
        AttestationState::Pending => Err("this device has not attested its boot yet; it receives secrets once a quote verifies (retry shortly)".into()),
        AttestationState::Other(state) => Err(format!("attestation state {state:?} is not verified")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_has_its_own_data_key_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let vault = SecretVault::load_or_create(dir.path()).unwrap();
        let a = vault.seal("sec_1", 3, b"s3cr3t-value").unwrap();
        let b = vault.seal("sec_1", 3, b"s3cr3t-value").unwrap();
        assert_ne!(a.wrapped_key, b.wrapped_key, "a fresh data key per seal");
        assert_ne!(a.ciphertext, b.ciphertext);
        for bytes in [&a.wrapped_key, &a.ciphertext] {
            assert!(!bytes.windows(6).any(|w| w == b"s3cr3t"));
        }
        assert_eq!(&vault.open("sec_1", 3, &a).unwrap()[..], b"s3cr3t-value");
        assert!(matches!(
            vault.open("sec_1", 4, &a),
            Err(SecretVaultError::Undecryptable { version: 4, .. })
        ));
        assert!(vault.open("sec_2", 3, &a).is_err());
        // Another row's data key does not open this value.
        let swapped = SealedSecret {
            wrapped_key: b.wrapped_key.clone(),
            ..vault.seal("sec_1", 3, b"other").unwrap()
        };
        assert!(vault.open("sec_1", 3, &swapped).is_err());
        // Reloaded from its file: the same key.
        let again = SecretVault::load_or_create(dir.path()).unwrap();
        assert_eq!(&again.open("sec_1", 3, &b).unwrap()[..], b"s3cr3t-value");
    }

    #[test]
    fn only_verified_devices_get_secrets_unless_central_allows_unattested_ones() {
        use AttestationState::*;
        assert!(release_allowed(&Verified, false).is_ok());
        for state in [Failed, Stale, Pending, Unsupported] {
            assert!(release_allowed(&state, false).is_err(), "{state:?}");
        }
        assert!(release_allowed(&Unsupported, true).is_ok());
        for state in [Failed, Stale, Pending] {
            assert!(release_allowed(&state, true).is_err(), "{state:?}");
        }
    }

    #[test]
    fn a_row_sealed_under_another_key_names_it() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let sealed = SecretVault::load_or_create(one.path())
            .unwrap()
            .seal("sec_1", 1, b"v")
            .unwrap();
        let other = SecretVault::load_or_create(two.path()).unwrap();
        let err = other.open("sec_1", 1, &sealed).unwrap_err();
        assert!(matches!(err, SecretVaultError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains(&sealed.kek_id), "{err}");
    }
}
