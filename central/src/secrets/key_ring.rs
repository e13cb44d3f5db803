//! The secrets' key-encryption keys on disk: the current one in `data_dir/secrets.key`, the
//! retired ones in `data_dir/secrets-keys/<id>.key` (0600, directory 0700), and a rotation as a
//! plan of durable steps ([`plan_rotation`], [`apply`]) whose order is the crash-safety argument
//! written in the module doc of [`crate::secrets`].

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{SecretVaultError, SECRETS_KEY_FILE};
use crate::sealing::{random_bytes, KeyFileError, SealingKey, KEY_LEN};

/// Directory in `data_dir` holding the retired key-encryption keys, one `<id>.key` each.
pub const RETIRED_KEYS_DIR: &str = "secrets-keys";

/// Lock file in [`RETIRED_KEYS_DIR`] a rotation holds, so two rotations never interleave.
const ROTATION_LOCK_FILE: &str = ".rotation.lock";

/// Which file `secrets.key` was when read: a rotation renames a new file over it, which
/// changes the inode and the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    len: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            len: metadata.len(),
        }
    }

    /// The stamp of the file at `path` now (one `stat`).
    pub(super) fn read(path: &Path) -> Result<FileStamp, KeyFileError> {
        std::fs::metadata(path)
            .map(|m| FileStamp::of(&m))
            .map_err(|source| KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// The current key and every retired key, as loaded from `data_dir`.
pub(super) struct KeyRing {
    /// The key in `secrets.key`: new data keys are wrapped by it.
    pub current: Arc<SealingKey>,
    /// Which file `secrets.key` was when `current` was read from it.
    pub current_stamp: FileStamp,
    /// Retired keys by id: they only open rows wrapped before a rotation.
    pub retired: BTreeMap<String, Arc<SealingKey>>,
}

impl KeyRing {
    /// Load `secrets.key` and the retired keys, creating `secrets.key` (0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing, SecretVaultError> {
        let path = dir.join(SECRETS_KEY_FILE);
        if !path.exists() {
            let retired = load_retired(dir)?;
            if let Some(id) = retired.keys().next() {
                return Err(SecretVaultError::CurrentKeyMissing {
                    path,
                    retired: id.clone(),
                });
            }
            SealingKey::load_or_create(&path, "secrets key-encryption key")?;
        }
        KeyRing::load(dir)
    }

    /// Load `secrets.key` and the retired keys; never creates a key.
    pub fn load(dir: &Path) -> Result<KeyRing, SecretVaultError> {
        // The stamp comes from the file the key was read from, so a rotation after this read
        // shows as a changed stamp.
        let (current, metadata) = SealingKey::load(&dir.join(SECRETS_KEY_FILE))?;
        Ok(KeyRing {
            current: Arc::new(current),
            current_stamp: FileStamp::of(&metadata),
            retired: load_retired(dir)?,
        })
    }

    /// The key with id `id`, current or retired.
    pub fn key(&self, id: &str) -> Option<&Arc<SealingKey>> {
        if self.current.id() == id {
            return Some(&self.current);
        }
        self.retired.get(id)
    }
}

/// The retired keys in `data_dir/secrets-keys`: each `<id>.key` must hold the key of that id.
/// Names starting with a dot (temp files of an interrupted write, the lock) are not keys.
fn load_retired(dir: &Path) -> Result<BTreeMap<String, Arc<SealingKey>>, SecretVaultError> {
    let ring = dir.join(RETIRED_KEYS_DIR);
    let ring_error = |source| SecretVaultError::Ring {
        path: ring.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&ring) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(ring_error(e)),
    };
    let mut keys = BTreeMap::new();
    for entry in entries {
        let name = entry.map_err(ring_error)?.file_name();
        let name = name.to_string_lossy();
        let Some(id) = name.strip_suffix(".key").filter(|_| !name.starts_with('.')) else {
            continue;
        };
        let path = ring.join(&*name);
        let (key, _) = SealingKey::load(&path)?;
        if key.id() != id {
            return Err(SecretVaultError::MisnamedKey {
                path,
                id: key.id().to_owned(),
            });
        }
        keys.insert(id.to_owned(), Arc::new(key));
    }
    Ok(keys)
}

/// Proof that this process holds the rotation lock of a `data_dir`; released when dropped.
#[derive(Debug)]
pub struct RotationLock {
    _file: File,
}

/// Take the rotation lock of `data_dir` (creating the retired-keys directory, 0700); fails at
/// once when another rotation holds it.
pub fn lock_rotation(dir: &Path) -> Result<RotationLock, SecretVaultError> {
    let ring = dir.join(RETIRED_KEYS_DIR);
    cairn_io::create_private_dir(&ring).map_err(|e| SecretVaultError::Ring {
        path: ring.clone(),
        source: e.source,
    })?;
    let path = ring.join(ROTATION_LOCK_FILE);
    match cairn_io::try_lock_exclusive(&path) {
        Ok(Some(file)) => Ok(RotationLock { _file: file }),
        Ok(None) => Err(SecretVaultError::RotationRunning { path }),
        Err(e) => Err(SecretVaultError::Ring {
            path,
            source: e.source,
        }),
    }
}

/// One durable step of a rotation: done completely before the next begins.
pub enum RingStep {
    /// Create the retired-keys directory (0700) and fsync `data_dir`, so its entry survives.
    CreateDir {
        /// The directory.
        path: PathBuf,
    },
    /// Write a key file (0600) atomically: temp file, fsync, rename into place, fsync the
    /// directory.
    WriteKey {
        /// The key file.
        path: PathBuf,
        /// Its 32 bytes.
        key: Zeroizing<Vec<u8>>,
    },
}

impl std::fmt::Debug for RingStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingStep::CreateDir { path } => write!(f, "CreateDir({})", path.display()),
            RingStep::WriteKey { path, .. } => write!(f, "WriteKey({})", path.display()),
        }
    }
}

/// The ids of the key a rotation retired and of the key it made current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The key that was in `secrets.key`, now in `secrets-keys/<old>.key`.
    pub old: String,
    /// The new key in `secrets.key`.
    pub new: String,
}

/// The steps that retire key `current` (the bytes of `secrets.key`) and make `fresh` current:
/// the old key is kept in the ring before the new one replaces it, so every key that wraps a
/// row is on disk at every instant.
pub fn plan_rotation(
    dir: &Path,
    current: &SealingKeyBytes,
    fresh: &SealingKeyBytes,
) -> Vec<RingStep> {
    let ring = dir.join(RETIRED_KEYS_DIR);
    vec![
        RingStep::CreateDir { path: ring.clone() },
        RingStep::WriteKey {
            path: ring.join(format!("{}.key", current.id)),
            key: current.bytes.clone(),
        },
        RingStep::WriteKey {
            path: dir.join(SECRETS_KEY_FILE),
            key: fresh.bytes.clone(),
        },
    ]
}

/// Carry out `steps` in order; `limit` stops after that many, to model a power cut in tests.
pub fn apply(steps: &[RingStep], limit: Option<usize>) -> Result<(), SecretVaultError> {
    for step in steps.iter().take(limit.unwrap_or(usize::MAX)) {
        match step {
            RingStep::CreateDir { path } => {
                let ring_error = |source| SecretVaultError::Ring {
                    path: path.clone(),
                    source,
                };
                cairn_io::create_private_dir(path).map_err(|e| ring_error(e.source))?;
                let parent = path.parent().unwrap_or(Path::new("."));
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(ring_error)?;
            }
            RingStep::WriteKey { path, key } => {
                cairn_io::write_atomic(path, key, 0o600).map_err(|e| KeyFileError::Io {
                    path: path.clone(),
                    source: e.source,
                })?;
            }
        }
    }
    Ok(())
}

/// A key's bytes with its id (for a rotation, which writes the bytes to a file).
pub struct SealingKeyBytes {
    id: String,
    bytes: Zeroizing<Vec<u8>>,
}

impl SealingKeyBytes {
    /// The key in `path`; the same checks as [`SealingKey::load`].
    pub fn read(path: &Path) -> Result<SealingKeyBytes, KeyFileError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        let len = bytes.len();
        SealingKeyBytes::from_bytes(bytes).ok_or_else(|| KeyFileError::BadKeyFile {
            path: path.to_path_buf(),
            len,
        })
    }

    /// A new random key.
    pub fn fresh() -> Result<SealingKeyBytes, KeyFileError> {
        SealingKeyBytes::from_bytes(random_bytes(KEY_LEN)?).ok_or(KeyFileError::Random)
    }

    fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Option<SealingKeyBytes> {
        let id = SealingKey::from_bytes(&bytes)?.id().to_owned();
        Some(SealingKeyBytes { id, bytes })
    }

    /// The key's id (see [`SealingKey::id`]).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Retire the key in `data_dir/secrets.key` into the ring and write a fresh one in its place,
/// under the rotation lock.
pub fn rotate(dir: &Path, _lock: &RotationLock) -> Result<Rotated, SecretVaultError> {
    let path = dir.join(SECRETS_KEY_FILE);
    if !path.exists() {
        return Err(SecretVaultError::NothingToRotate { path });
    }
    let current = SealingKeyBytes::read(&path)?;
    let fresh = SealingKeyBytes::fresh()?;
    apply(&plan_rotation(dir, &current, &fresh), None)?;
    tracing::info!(old = %current.id, new = %fresh.id, "rotated the secrets key-encryption key");
    Ok(Rotated {
        old: current.id,
        new: fresh.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    }

    /// A power cut after any step of a rotation leaves every key on disk: the old key opens
    /// what it wrapped, and `secrets.key` is the old key or the new one, never missing.
    #[test]
    fn a_power_cut_at_any_step_of_a_rotation_loses_no_key() {
        let steps_count = 3;
        for cut in 0..=steps_count {
            let dir = tempfile::tempdir().unwrap();
            let before = KeyRing::load_or_create(dir.path()).unwrap();
            let old = before.current.id().to_owned();
            let current = SealingKeyBytes::read(&dir.path().join(SECRETS_KEY_FILE)).unwrap();
            let fresh = SealingKeyBytes::fresh().unwrap();
            let plan = plan_rotation(dir.path(), &current, &fresh);
            assert_eq!(plan.len(), steps_count);
            apply(&plan, Some(cut)).unwrap();
            let after = KeyRing::load(dir.path()).unwrap();
            assert!(after.key(&old).is_some(), "cut after {cut}: old key lost");
            let expected = if cut == steps_count { fresh.id() } else { &old };
            assert_eq!(after.current.id(), expected, "cut after {cut}");
        }
    }

    #[test]
    fn a_rotation_keeps_the_old_key_in_a_private_ring_and_makes_a_new_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let before = KeyRing::load_or_create(dir.path()).unwrap();
        let lock = lock_rotation(dir.path()).unwrap();
        assert!(matches!(
            lock_rotation(dir.path()),
            Err(SecretVaultError::RotationRunning { .. })
        ));
        let rotated = rotate(dir.path(), &lock).unwrap();
        assert_eq!(rotated.old, before.current.id());
        assert_ne!(rotated.new, rotated.old);
        let ring = dir.path().join(RETIRED_KEYS_DIR);
        assert_eq!(mode(&ring), 0o700);
        assert_eq!(mode(&ring.join(format!("{}.key", rotated.old))), 0o600);
        assert_eq!(mode(&dir.path().join(SECRETS_KEY_FILE)), 0o600);
        let after = KeyRing::load(dir.path()).unwrap();
        assert_eq!(after.current.id(), rotated.new);
        assert_ne!(after.current_stamp, before.current_stamp);
        assert_eq!(after.retired.keys().collect::<Vec<_>>(), [&rotated.old]);
    }

    #[test]
    fn temp_files_in_the_ring_are_not_keys_but_a_misnamed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::load_or_create(dir.path()).unwrap();
        let ring = dir.path().join(RETIRED_KEYS_DIR);
        std::fs::create_dir(&ring).unwrap();
        std::fs::write(ring.join(".0011223344556677.key.tmp-1-0"), b"torn").unwrap();
        std::fs::write(ring.join(ROTATION_LOCK_FILE), b"").unwrap();
        assert!(KeyRing::load(dir.path()).unwrap().retired.is_empty());
        std::fs::copy(
            dir.path().join(SECRETS_KEY_FILE),
            ring.join("0011223344556677.key"),
        )
        .unwrap();
        let err = KeyRing::load(dir.path()).err().expect("a misnamed key");
        assert!(matches!(err, SecretVaultError::MisnamedKey { .. }), "{err}");
    }

    #[test]
    fn a_missing_current_key_beside_retired_ones_is_not_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::load_or_create(dir.path()).unwrap();
        let lock = lock_rotation(dir.path()).unwrap();
        rotate(dir.path(), &lock).unwrap();
        std::fs::remove_file(dir.path().join(SECRETS_KEY_FILE)).unwrap();
        let err = KeyRing::load_or_create(dir.path()).err().expect("refused");
        assert!(
            matches!(err, SecretVaultError::CurrentKeyMissing { .. }),
            "{err}"
        );
        assert!(!dir.path().join(SECRETS_KEY_FILE).exists());
    }
}
