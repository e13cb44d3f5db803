//! App secrets at rest: envelope encryption. Each secret version is encrypted (AES-256-GCM)
//! with a data key of its own, drawn at random; the data key is stored wrapped by the
//! key-encryption key in `data_dir/secrets.key` (0600, created on first start, like the escrow
//! key: a copy of the database alone opens nothing). Both are bound to the secret's id and
//! version, so sealed bytes moved to another row or version do not open.
//!
//! The row keeps the id of the key that wrapped its data key (see [`SealingKey::id`]), so
//! [`SecretVault::open`] finds the key among the current one and the retired ones kept in
//! `data_dir/secrets-keys/<id>.key` (0600, directory 0700; see [`key_ring`]). A key it does not
//! hold makes it re-read `secrets.key` and the ring once, as another replica may have rotated
//! meanwhile, before it fails with [`SecretVaultError::UnknownKey`].
//!
//! # Rotation
//!
//! `cairn-central rotate-secrets-key` ([`rotation::rotate_secrets_key`]) replaces the
//! key-encryption key without downtime and without re-encrypting a value, holding
//! `secrets-keys/.rotation.lock` so two rotations never interleave:
//!
//! 1. create `secrets-keys/` (0700) and fsync `data_dir`;
//! 2. write the current key to `secrets-keys/<old id>.key`: temp file, fsync, rename, fsync the
//!    directory;
//! 3. write the new key to a temp file beside `secrets.key`, fsync, rename it over
//!    `secrets.key`, fsync `data_dir`;
//! 4. re-wrap the data key of every row not wrapped by the new key (open with its old key,
//!    seal with the new one, same binding), 500 rows per transaction; each update holds only
//!    if the row still has the version and wrapped key that were read, so a value set
//!    meanwhile keeps its own fresh seal.
//!
//! A power cut during 1 or 2 leaves `secrets.key` as it was (and at most a temp file in the
//! ring, whose dot-name is skipped); after 2 the old key is in the ring and in `secrets.key`;
//! during 3 `secrets.key` is the old key or the new one, and the old key is already durable in
//! the ring; no row names the new key before 3 is durable, as 4 starts after it. During 4 each
//! row names the old key or the new one, both on disk, and running the command again (with
//! `--rewrap-only`, or without it to rotate once more) finishes the re-wrap. So at no instant
//! is a key that wraps a row missing from disk. The lock is a `flock`, which the kernel drops
//! when the process dies, so a crash leaves no stale lock.
//!
//! A replica that loaded its keys before a rotation must not keep sealing under the old key:
//! [`SecretVault::seal`] compares `secrets.key`'s inode, modification time and size with the
//! file it read (one `stat`; seals are operator writes, so rare) and reloads the keys when it
//! was replaced. This was chosen over letting the next rotation re-wrap such rows because
//! otherwise a retired key could gain rows after the re-wrap finished, and the rotation could
//! never say truthfully that the old key is unused. A seal that read the old file just before
//! the rename runs inside a registry write, and the rotation's final count of keys in use is a
//! write too (it waits for that one), re-wrapping such a late row before it reports.

mod key_ring;
pub mod rotation;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cairn_api::AttestationState;
use zeroize::Zeroizing;

pub use key_ring::{
    apply, lock_rotation, plan_rotation, rotate, RingStep, Rotated, RotationLock, SealingKeyBytes,
    RETIRED_KEYS_DIR,
};

use crate::sealing::{random_bytes, KeyFileError, SealingKey, KEY_LEN};
use key_ring::{FileStamp, KeyRing};

/// File name of the secrets' key-encryption key in `data_dir`.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Why a secret could not be sealed or opened, or a key not loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum SecretVaultError {
    /// The key file could not be loaded, created, or used.
    #[error("secrets key: {0}")]
    Key(#[from] KeyFileError),
    /// The retired-keys directory could not be read or written.
    #[error("secrets key ring {path}: {source}; check data_dir permissions")]
    Ring {
        /// The directory or file in it.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A retired key file holds another key than its name says.
    #[error("retired secrets key {path} holds key {id}, not the one its name says: restore it from your backup (or rename it to {id}.key if it was renamed by hand)")]
    MisnamedKey {
        /// The key file.
        path: PathBuf,
        /// The id of the key it holds.
        id: String,
    },
    /// `secrets.key` is gone while retired keys exist: making a new one would hide the loss.
    #[error("{path} is missing but {RETIRED_KEYS_DIR}/ holds retired keys (e.g. {retired}): restore secrets.key from your backup; without it the secrets it wrapped cannot be opened")]
    CurrentKeyMissing {
        /// Where `secrets.key` should be.
        path: PathBuf,
        /// One retired key's id.
        retired: String,
    },
    /// A rotation found no key to rotate.
    #[error("{path} does not exist: nothing to rotate; check that --config names the central's config (its data_dir)")]
    NothingToRotate {
        /// Where `secrets.key` should be.
        path: PathBuf,
    },
    /// Another rotation holds the lock.
    #[error("another secrets key rotation is running (it holds {path}); wait for it to finish, then run again if needed")]
    RotationRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// The row's data key was wrapped by a key central does not hold.
    #[error("secret {secret_id} was sealed under key {kek_id}, which is neither {SECRETS_KEY_FILE} ({current}) nor in {RETIRED_KEYS_DIR}/: restore the key file it was sealed with from your backup as {RETIRED_KEYS_DIR}/{kek_id}.key")]
    UnknownKey {
        /// The secret.
        secret_id: String,
        /// The key id stored with it.
        kek_id: String,
        /// The id of the key central holds.
        current: String,
    },
    /// The stored bytes do not decrypt: the key file was replaced or the row altered.
    #[error("secret {secret_id} version {version} does not decrypt with key {kek_id}: the key file was replaced or the row altered; restore the key file from backup, or set the secret again")]
    Undecryptable {
        /// The secret.
        secret_id: String,
        /// Its version.
        version: u64,
        /// The id of the key that should open it.
        kek_id: String,
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

/// A data key wrapped by a key-encryption key, as a re-wrap writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Id of the key-encryption key that wrapped it.
    pub kek_id: String,
    /// The data key, sealed by that key.
    pub wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// The key-encryption keys: the current one and the retired ones, loaded at start and again
/// when `secrets.key` was replaced or a row names a key not loaded.
pub struct SecretVault {
    dir: PathBuf,
    ring: RwLock<KeyRing>,
}

impl std::fmt::Debug for SecretVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("SecretVault")
            .field("current", &ring.current.id())
            .field("retired", &ring.retired.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a secret version's keys are bound to.
fn binding(secret_id: &str, version: u64) -> Vec<u8> {
    format!("cairn-secret\0{secret_id}\0{version}").into_bytes()
}

impl SecretVault {
    /// Load `data_dir/secrets.key` (creating it, 0600, on first start) and every retired key
    /// in `data_dir/secrets-keys/`.
    pub fn load_or_create(dir: &Path) -> Result<SecretVault, SecretVaultError> {
        Ok(SecretVault {
            dir: dir.to_path_buf(),
            ring: RwLock::new(KeyRing::load_or_create(dir)?),
        })
    }

    /// Load the keys of `data_dir`, which must hold `secrets.key` already.
    pub fn load(dir: &Path) -> Result<SecretVault, SecretVaultError> {
        Ok(SecretVault {
            dir: dir.to_path_buf(),
            ring: RwLock::new(KeyRing::load(dir)?),
        })
    }

    /// The id of the current key, as loaded (see [`SecretVault::current_key`] for a fresh look).
    pub fn current_id(&self) -> String {
        self.ring().current.id().to_owned()
    }

    /// The ids of the retired keys loaded.
    pub fn retired_ids(&self) -> Vec<String> {
        self.ring().retired.keys().cloned().collect()
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Read `secrets.key` and the ring again.
    pub fn reload(&self) -> Result<(), SecretVaultError> {
        let fresh = KeyRing::load(&self.dir)?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The key in `secrets.key` now: the one loaded unless the file was replaced since.
    fn current_key(&self) -> Result<Arc<SealingKey>, SecretVaultError> {
        let stamp = FileStamp::read(&self.dir.join(SECRETS_KEY_FILE))?;
        {
            let ring = self.ring();
            if ring.current_stamp == stamp {
                return Ok(ring.current.clone());
            }
        }
        self.reload()?;
        Ok(self.ring().current.clone())
    }

    /// The key with id `kek_id`, reloading the keys once when it is not loaded.
    fn key(&self, kek_id: &str) -> Result<Option<Arc<SealingKey>>, SecretVaultError> {
        if let Some(key) = self.ring().key(kek_id) {
            return Ok(Some(key.clone()));
        }
        self.reload()?;
        Ok(self.ring().key(kek_id).cloned())
    }

    /// Seal `value` as version `version` of secret `secret_id`, under a fresh data key wrapped
    /// by the current key.
    pub fn seal(
        &self,
        secret_id: &str,
        version: u64,
        value: &[u8],
    ) -> Result<SealedSecret, SecretVaultError> {
        let kek = self.current_key()?;
        let aad = binding(secret_id, version);
        let data_key = random_bytes(KEY_LEN)?;
        let sealer = SealingKey::from_bytes(&data_key).ok_or(KeyFileError::Random)?;
        Ok(SealedSecret {
            kek_id: kek.id().to_owned(),
            wrapped_key: kek.seal(&aad, &data_key)?,
            ciphertext: sealer.seal(&aad, value)?,
        })
    }

    /// The data key of version `version` of secret `secret_id`, unwrapped by the key the row
    /// names.
    fn data_key(
        &self,
        secret_id: &str,
        version: u64,
        kek_id: &str,
        wrapped_key: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretVaultError> {
        let Some(kek) = self.key(kek_id)? else {
            return Err(SecretVaultError::UnknownKey {
                secret_id: secret_id.to_owned(),
                kek_id: kek_id.to_owned(),
                current: self.current_id(),
            });
        };
        kek.open(&binding(secret_id, version), wrapped_key)
            .ok_or_else(|| SecretVaultError::Undecryptable {
                secret_id: secret_id.to_owned(),
                version,
                kek_id: kek_id.to_owned(),
            })
    }

    /// The value of version `version` of secret `secret_id`.
    pub fn open(
        &self,
        secret_id: &str,
        version: u64,
        sealed: &SealedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, SecretVaultError> {
        let data_key = self.data_key(secret_id, version, &sealed.kek_id, &sealed.wrapped_key)?;
        let undecryptable = || SecretVaultError::Undecryptable {
            secret_id: secret_id.to_owned(),
            version,
            kek_id: sealed.kek_id.clone(),
        };
        let aad = binding(secret_id, version);
        let opener = SealingKey::from_bytes(&data_key).ok_or_else(undecryptable)?;
        opener
            .open(&aad, &sealed.ciphertext)
            .ok_or_else(undecryptable)
    }

    /// The data key of version `version` of secret `secret_id`, wrapped by `kek_id` as
    /// `wrapped_key`, wrapped again by the current key with the same binding; `None` when the
    /// current key wrapped it already. The value itself is not touched.
    pub fn rewrap(
        &self,
        secret_id: &str,
        version: u64,
        kek_id: &str,
        wrapped_key: &[u8],
    ) -> Result<Option<WrappedKey>, SecretVaultError> {
        let current = self.current_key()?;
        if current.id() == kek_id {
            return Ok(None);
        }
        let data_key = self.data_key(secret_id, version, kek_id, wrapped_key)?;
        Ok(Some(WrappedKey {
            kek_id: current.id().to_owned(),
            wrapped_key: current.seal(&binding(secret_id, version), &data_key)?,
        }))
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

    /// Rotate the key of `dir` as `cairn-central rotate-secrets-key` does (key files only).
    fn rotate_key(dir: &Path) -> Rotated {
        let lock = lock_rotation(dir).unwrap();
        rotate(dir, &lock).unwrap()
    }

    #[test]
    fn after_a_rotation_rows_of_the_old_key_open_and_new_seals_use_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let vault = SecretVault::load_or_create(dir.path()).unwrap();
        let old_row = vault.seal("sec_1", 1, b"before").unwrap();
        let rotated = rotate_key(dir.path());
        assert_eq!(old_row.kek_id, rotated.old);
        let reloaded = SecretVault::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.current_id(), rotated.new);
        assert_eq!(reloaded.retired_ids(), std::slice::from_ref(&rotated.old));
        assert_eq!(&reloaded.open("sec_1", 1, &old_row).unwrap()[..], b"before");
        let new_row = reloaded.seal("sec_2", 2, b"after").unwrap();
        assert_eq!(new_row.kek_id, rotated.new);
        assert_eq!(&reloaded.open("sec_2", 2, &new_row).unwrap()[..], b"after");
        // The re-wrap of the old row: same value, new key, old key no longer needed.
        let wrapped = reloaded
            .rewrap("sec_1", 1, &old_row.kek_id, &old_row.wrapped_key)
            .unwrap()
            .expect("wrapped by the old key");
        assert_eq!(wrapped.kek_id, rotated.new);
        let moved = SealedSecret {
            kek_id: wrapped.kek_id,
            wrapped_key: wrapped.wrapped_key,
            ..old_row.clone()
        };
        std::fs::remove_dir_all(dir.path().join(RETIRED_KEYS_DIR)).unwrap();
        let without_old = SecretVault::load(dir.path()).unwrap();
        assert_eq!(
            &without_old.open("sec_1", 1, &moved).unwrap()[..],
            b"before"
        );
        assert!(without_old
            .rewrap("sec_1", 1, &moved.kek_id, &moved.wrapped_key)
            .unwrap()
            .is_none());
        // The re-wrapped key keeps its binding.
        assert!(matches!(
            without_old.open("sec_1", 2, &moved),
            Err(SecretVaultError::Undecryptable { .. })
        ));
    }

    #[test]
    fn a_replica_loaded_before_a_rotation_opens_rows_of_the_new_key_and_seals_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let replica = SecretVault::load_or_create(dir.path()).unwrap();
        let old_row = replica.seal("sec_1", 1, b"before").unwrap();
        let rotated = rotate_key(dir.path());
        let rotator = SecretVault::load(dir.path()).unwrap();
        let new_row = rotator.seal("sec_2", 2, b"after").unwrap();
        assert_eq!(replica.current_id(), rotated.old, "not reloaded yet");
        assert_eq!(&replica.open("sec_2", 2, &new_row).unwrap()[..], b"after");
        assert_eq!(replica.current_id(), rotated.new, "re-read the keys once");
        assert_eq!(&replica.open("sec_1", 1, &old_row).unwrap()[..], b"before");

        // Another replica that only seals notices the new secrets.key by itself.
        let rotated_again = rotate_key(dir.path());
        let sealed = replica.seal("sec_3", 3, b"later").unwrap();
        assert_eq!(sealed.kek_id, rotated_again.new);
        assert_eq!(&rotator.open("sec_3", 3, &sealed).unwrap()[..], b"later");
    }

    #[test]
    fn a_short_retired_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        SecretVault::load_or_create(dir.path()).unwrap();
        let rotated = rotate_key(dir.path());
        let path = dir
            .path()
            .join(RETIRED_KEYS_DIR)
            .join(format!("{}.key", rotated.old));
        std::fs::write(&path, b"truncated").unwrap();
        let err = SecretVault::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                SecretVaultError::Key(KeyFileError::BadKeyFile { len: 9, .. })
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("backup"),
            "{message}"
        );
        // Bytes of the right length but another key: its name does not match.
        std::fs::write(&path, [7u8; KEY_LEN]).unwrap();
        let err = SecretVault::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, SecretVaultError::MisnamedKey { .. }), "{err}");
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
