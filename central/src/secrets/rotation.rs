//! Rotating the secrets' key-encryption key, as `cairn-central rotate-secrets-key` does: a new
//! `secrets.key` with the old key kept in the ring ([`super::rotate`]), then every row's data
//! key re-wrapped under it in batches; values and ciphertexts are never touched. The module doc
//! of [`crate::secrets`] gives the order of the steps and why a crash at any point loses nothing.
//!
//! Blocking: call it from a plain thread or tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    lock_rotation, rotate, Rotated, SecretVault, SecretVaultError, RETIRED_KEYS_DIR,
    SECRETS_KEY_FILE,
};
use crate::store::secrets as store_secrets;
use crate::store::{Store, StoreError};
use crate::CentralConfig;

/// Rows re-wrapped per registry transaction.
pub const BATCH_ROWS: usize = 500;

/// Passes over the rows at most: a second one only re-wraps rows a replica sealed under the
/// old key while the first ran (it read `secrets.key` just before the rename).
const MAX_PASSES: usize = 3;

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The keys could not be loaded, locked or written.
    #[error(transparent)]
    Vault(#[from] SecretVaultError),
    /// The registry could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a run makes a new key before re-wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMode {
    /// Retire the current key, make a new one, re-wrap every row under it.
    NewKey,
    /// Only re-wrap the rows not under the current key (finish an interrupted rotation).
    RewrapOnly,
}

/// How far the re-wrap of one pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rows re-wrapped so far in this pass.
    pub rewrapped: u64,
    /// Rows not under the current key when the pass began.
    pub total: u64,
}

/// What a rotation did and what is left.
#[derive(Debug)]
pub struct RotationReport {
    /// The old and new key ids (`None` with [`RotationMode::RewrapOnly`]).
    pub rotated: Option<Rotated>,
    /// The id of the key in `secrets.key`.
    pub current: String,
    /// Rows whose data key was re-wrapped under `current`.
    pub rewrapped: u64,
    /// Rows that could not be re-wrapped (their key is lost or the row was altered); they
    /// still name their old key.
    pub failed: Vec<SecretVaultError>,
    /// How many rows each key id wraps now.
    pub rows_by_key: BTreeMap<String, u64>,
    /// Retired key files no row names: removable once backed up, and once no database backup
    /// you may restore needs them.
    pub unused_retired: Vec<PathBuf>,
}

/// Rotate (or with [`RotationMode::RewrapOnly`] only re-wrap) against the registry and
/// `data_dir` of `config`, reporting each batch to `progress`. Safe while centrals serve.
pub fn rotate_secrets_key(
    config: &CentralConfig,
    mode: RotationMode,
    progress: impl FnMut(Progress),
) -> Result<RotationReport, RotationError> {
    // Checked before the registry is opened, which on SQLite would create one in a wrong dir.
    let key = config.data_dir.join(SECRETS_KEY_FILE);
    if !key.exists() {
        return Err(SecretVaultError::NothingToRotate { path: key }.into());
    }
    let store = crate::open_store(config)?;
    rotate_and_rewrap(&store, &config.data_dir, mode, progress)
}

/// [`rotate_secrets_key`] with an open registry and the `data_dir` holding `secrets.key`.
pub fn rotate_and_rewrap(
    store: &Store,
    dir: &Path,
    mode: RotationMode,
    mut progress: impl FnMut(Progress),
) -> Result<RotationReport, RotationError> {
    let lock = lock_rotation(dir)?;
    let rotated = match mode {
        RotationMode::NewKey => Some(rotate(dir, &lock)?),
        RotationMode::RewrapOnly => None,
    };
    let vault = SecretVault::load(dir)?;
    let current = vault.current_id();
    let mut rewrapped = 0;
    let mut pass = 0;
    loop {
        pass += 1;
        let mut failed = Vec::new();
        rewrapped += rewrap_pass(store, &vault, &current, &mut failed, &mut progress)?;
        let rows_by_key = store.run_blocking(|conn| {
            let tx = conn.transaction()?;
            let counts = store_secrets::rows_by_kek_after_writers(&tx)?;
            tx.commit()?;
            Ok(counts)
        })?;
        let left: u64 = rows_by_key
            .iter()
            .filter(|(id, _)| **id != current)
            .map(|(_, rows)| rows)
            .sum();
        if left > failed.len() as u64 && pass < MAX_PASSES {
            continue;
        }
        let unused_retired = vault
            .retired_ids()
            .into_iter()
            .filter(|id| *id != current && !rows_by_key.contains_key(id))
            .map(|id| dir.join(RETIRED_KEYS_DIR).join(format!("{id}.key")))
            .collect();
        return Ok(RotationReport {
            rotated,
            current,
            rewrapped,
            failed,
            rows_by_key,
            unused_retired,
        });
    }
}

/// Re-wrap, [`BATCH_ROWS`] per transaction, the rows not under key `current`; returns how many
/// were re-wrapped and adds the rows that could not be to `failed`.
fn rewrap_pass(
    store: &Store,
    vault: &SecretVault,
    current: &str,
    failed: &mut Vec<SecretVaultError>,
    progress: &mut impl FnMut(Progress),
) -> Result<u64, RotationError> {
    let total = store.read_blocking(|conn| store_secrets::count_not_wrapped_by(conn, current))?;
    let mut rewrapped = 0;
    let mut after = String::new();
    progress(Progress { rewrapped, total });
    loop {
        let rows = store.read_blocking(|conn| {
            store_secrets::not_wrapped_by(conn, current, &after, BATCH_ROWS)
        })?;
        let Some(last) = rows.last() else {
            return Ok(rewrapped);
        };
        after = last.id.clone();
        let mut updates = Vec::with_capacity(rows.len());
        for row in rows {
            match vault.rewrap(&row.id, row.version, &row.kek_id, &row.wrapped_key) {
                Ok(Some(new)) => updates.push((row, new)),
                Ok(None) => {}
                Err(
                    e @ (SecretVaultError::UnknownKey { .. }
                    | SecretVaultError::Undecryptable { .. }),
                ) => failed.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        rewrapped += store.run_blocking(|conn| {
            let tx = conn.transaction()?;
            let mut changed = 0;
            for (row, new) in &updates {
                changed += u64::from(store_secrets::set_wrapped_key(&tx, row, new)?);
            }
            tx.commit()?;
            Ok(changed)
        })?;
        progress(Progress { rewrapped, total });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::secrets::{Owner, SecretScope};

    /// Add secrets `(name, value)` in one transaction; returns their ids.
    fn add(store: &Store, vault: &SecretVault, secrets: &[(String, Vec<u8>)]) -> Vec<String> {
        store
            .run_blocking(|conn| {
                let tx = conn.transaction()?;
                let mut ids = Vec::new();
                for (name, value) in secrets {
                    let scope = SecretScope {
                        owner: Owner::DeviceApp,
                        app: "web".into(),
                        name: name.clone(),
                        site: String::new(),
                        device_id: "dev_1".into(),
                    };
                    let info = store_secrets::insert(
                        &tx,
                        &scope,
                        Default::default(),
                        "test",
                        |id, version| vault.seal(id, version, value),
                    )?
                    .unwrap()
                    .unwrap();
                    ids.push(info.id);
                }
                tx.commit()?;
                Ok(ids)
            })
            .unwrap()
    }

    fn open(store: &Store, vault: &SecretVault, id: &str) -> (String, Vec<u8>) {
        let (version, sealed) = store
            .read_blocking(|conn| store_secrets::sealed(conn, id))
            .unwrap()
            .unwrap();
        let value = vault.open(id, version, &sealed).unwrap().to_vec();
        (sealed.kek_id, value)
    }

    /// More rows than a batch, a crash between the key files and the re-wrap modelled by a
    /// second rotation before any re-wrap: every row ends under the newest key, opens to its
    /// value, and the retired keys no row names are listed.
    #[test]
    fn a_rotation_rewraps_every_row_in_batches_and_lists_the_unused_retired_keys() {
        let (store, dir) = crate::store::test_store();
        let vault = SecretVault::load_or_create(dir.path()).unwrap();
        let first = vault.current_id();
        let secrets: Vec<(String, Vec<u8>)> = (0..BATCH_ROWS + 7)
            .map(|i| (format!("s{i}"), format!("value-{i}").into_bytes()))
            .collect();
        let ids = add(&store, &vault, &secrets);
        let lock = lock_rotation(dir.path()).unwrap();
        rotate(dir.path(), &lock).unwrap();
        drop(lock);
        let mut seen = Vec::new();
        let report =
            rotate_and_rewrap(&store, dir.path(), RotationMode::NewKey, |p| seen.push(p)).unwrap();
        let rotated = report.rotated.clone().unwrap();
        assert_ne!(rotated.old, first);
        assert_eq!(report.current, rotated.new);
        assert_eq!(report.rewrapped, ids.len() as u64);
        assert!(report.failed.is_empty());
        assert_eq!(seen.first().unwrap().rewrapped, 0);
        assert_eq!(
            seen.len(),
            3,
            "progress at start and after each of two batches"
        );
        assert_eq!(
            report.rows_by_key,
            BTreeMap::from([(rotated.new.clone(), ids.len() as u64)])
        );
        let mut unused = report.unused_retired.clone();
        unused.sort();
        let ring = dir.path().join(RETIRED_KEYS_DIR);
        let mut expected = vec![
            ring.join(format!("{first}.key")),
            ring.join(format!("{}.key", rotated.old)),
        ];
        expected.sort();
        assert_eq!(unused, expected);
        let fresh = SecretVault::load_or_create(dir.path()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let (kek_id, value) = open(&store, &fresh, id);
            assert_eq!(kek_id, rotated.new);
            assert_eq!(value, format!("value-{i}").as_bytes());
        }
        // Nothing left: running again re-wraps nothing.
        let again =
            rotate_and_rewrap(&store, dir.path(), RotationMode::RewrapOnly, |_| {}).unwrap();
        assert_eq!(again.rewrapped, 0);
        assert!(again.rotated.is_none());
    }

    #[test]
    fn a_row_whose_key_is_lost_is_reported_and_the_others_are_rewrapped() {
        let (store, dir) = crate::store::test_store();
        let other = tempfile::tempdir().unwrap();
        let vault = SecretVault::load_or_create(dir.path()).unwrap();
        let stranger = SecretVault::load_or_create(other.path()).unwrap();
        let good = add(&store, &vault, &[("good".into(), b"kept".to_vec())]).remove(0);
        let lost = add(&store, &stranger, &[("lost".into(), b"gone".to_vec())]).remove(0);
        let report = rotate_and_rewrap(&store, dir.path(), RotationMode::NewKey, |_| {}).unwrap();
        assert_eq!(report.rewrapped, 1);
        assert_eq!(report.failed.len(), 1);
        let message = report.failed[0].to_string();
        assert!(
            message.contains(&lost) && message.contains(&stranger.current_id()),
            "{message}"
        );
        assert_eq!(open(&store, &vault, &good).1, b"kept");
        assert!(
            report.unused_retired.len() == 1,
            "{:?}",
            report.unused_retired
        );
    }
}
