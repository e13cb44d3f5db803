//! The secret values of the device's apps, as central released them: one file per secret,
//! `<state_dir>/secrets-encrypted/<app>/<name>` (0600), so that apps restart with their secrets while
//! central is unreachable. Each file is ciphertext: a header (magic `CAIRNSC1`, the version as a
//! little-endian u64), then the value encrypted with AES-256-GCM under the cache key (a random
//! nonce per write) and bound to (app, name, version), so a file moved to another name or given
//! another version does not open. The cache key lives where the device key does
//! ([`crate::secrets_key`]): sealed by the TPM, or in a file beside the secrets directory for a
//! software key. Nothing here is ever logged but names and versions.
//!
//! What cannot be read is destroyed and fetched again ([`SecretCache::missing`] lists it): files
//! that do not decrypt, and every file when the cache key is lost (another TPM's blob, a cleared
//! TPM, a missing key file), after which a new key is made. The plain files of an earlier agent
//! are taken in encrypted ([`SecretCache::adopt_legacy`]), so an update does not need central
//! to release them again.
//!
//! The desired state names each app's secrets with the version central wants it to use
//! ([`cairn_proto::v1::SecretRef`]); [`SecretCache::missing`] says which to fetch, and
//! [`SecretCache::values`] what the runtime gets: the wanted version, or the last one held
//! while the new one has not arrived (a rotation never takes a running app's secret away).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_io::FileError;
use cairn_proto::v1::{App, DesiredState, SecretValue};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::secrets_key::{CacheKey, CacheKeyError, CacheKeyStore};

/// Start of every cache file; the trailing "1" is the format version.
const MAGIC: &[u8; 8] = b"CAIRNSC1";
/// Magic and version.
const HEADER_LEN: usize = MAGIC.len() + 8;

/// A held value at its version.
struct Held {
    version: u64,
    value: Zeroizing<Vec<u8>>,
}

/// Why the cache could not keep a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretCacheError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The cache key could not be opened or made for a reason that may pass (TPM, I/O).
    #[error(transparent)]
    Key(#[from] CacheKeyError),
    /// A name that cannot be a file name (central checks names; this is a second line).
    #[error("secret {name:?} of app {app:?} has a name that cannot be stored")]
    BadName {
        /// The app.
        app: String,
        /// The secret.
        name: String,
    },
}

/// The held values, by app and name. See the module docs.
pub struct SecretCache {
    dir: PathBuf,
    key: CacheKey,
    held: Mutex<BTreeMap<String, BTreeMap<String, Held>>>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is safe as one path component.
fn safe_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a stored file yields no value.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    /// No `CAIRNSC1` header: not a cache file.
    #[error("it is not a secret cache file")]
    Plain,
    /// The ciphertext does not open: altered, moved from another name, or another key's.
    #[error("it does not decrypt (altered, moved from another name, or under another key)")]
    DoesNotOpen,
}

/// The associated data binding a file's ciphertext to its app, name and version.
fn associated_data(app: &str, name: &str, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + app.len() + name.len());
    aad.extend_from_slice(b"cairn secret cache v1\0");
    for part in [app, name] {
        // Both are checked file names (well under 4 GiB).
        aad.extend_from_slice(&(part.len() as u32).to_le_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&version.to_le_bytes());
    aad
}

/// A file's bytes for `value` of `app`.
fn encrypt(key: &CacheKey, app: &str, value: &SecretValue) -> Result<Vec<u8>, CacheKeyError> {
    let sealed = key.seal(
        &associated_data(app, &value.name, value.version),
        &value.value,
    )?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + sealed.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&value.version.to_le_bytes());
    bytes.extend_from_slice(&sealed);
    Ok(bytes)
}

/// The value a file of secret `name` of `app` holds.
fn decrypt(key: &CacheKey, app: &str, name: &str, bytes: &[u8]) -> Result<Held, Unreadable> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(Unreadable::Plain)?;
    let (version, sealed) = rest
        .split_first_chunk::<8>()
        .ok_or(Unreadable::DoesNotOpen)?;
    let version = u64::from_le_bytes(*version);
    let value = key
        .open(&associated_data(app, name, version), sealed)
        .ok_or(Unreadable::DoesNotOpen)?;
    Ok(Held { version, value })
}

/// Whether `dir` holds any file a cache left (the values a lost key encrypted).
fn holds_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|apps| {
        apps.flatten()
            .any(|app| std::fs::read_dir(app.path()).is_ok_and(|mut files| files.next().is_some()))
    })
}

/// Opens the stored cache key, or makes a new one when there is none or it is lost (the files
/// it encrypted are then destroyed while reading them). Errors that may pass are returned.
fn open_or_make_key(dir: &Path, store: &CacheKeyStore) -> Result<CacheKey, SecretCacheError> {
    match store.open() {
        Ok(Some(key)) => return Ok(key),
        Ok(None) if holds_files(dir) => {
            warn!(key = %store.path().display(), "the secret cache key is missing, so the stored secrets cannot be read; destroying them and making a new key: central sends the values again");
        }
        Ok(None) => {}
        Err(e @ CacheKeyError::Lost { .. }) => {
            warn!(error = %e, "destroying the stored secrets and making a new key: central sends the values again");
        }
        Err(e) => return Err(e.into()),
    }
    let key = store.create()?;
    // A key of the device key's former storage opens nothing any more.
    let stale = store.other_storage_path();
    if let Err(e) = cairn_io::destroy_file(&stale) {
        warn!(error = %e, "could not remove the secret cache key of the former key storage");
    }
    Ok(key)
}

impl SecretCache {
    /// Opens `dir` (created 0700) with the cache key from `key_store` (made when there is none),
    /// reading every value held there. A file that cannot be decrypted is destroyed with a
    /// warning, and every file when the key is lost: central sends their values again.
    ///
    /// # Errors
    /// [`SecretCacheError::File`] when `dir` cannot be made or listed,
    /// [`SecretCacheError::Key`] when the key cannot be opened or made for a reason that may
    /// pass (the TPM failed, the key file is unreadable); the stored files are then kept.
    pub fn open(dir: &Path, key_store: &CacheKeyStore) -> Result<SecretCache, SecretCacheError> {
        cairn_io::create_private_dir(dir)?;
        let key = open_or_make_key(dir, key_store)?;
        let mut held: BTreeMap<String, BTreeMap<String, Held>> = BTreeMap::new();
        let apps = std::fs::read_dir(dir).map_err(|e| FileError::new("list", dir, e))?;
        for app in apps.flatten() {
            let app_name = app.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(app.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") {
                    // The temporary file of a write a power cut interrupted.
                    let _ = cairn_io::destroy_file(&file.path());
                    continue;
                }
                if !cairn_proto::is_secret_name(&name) {
                    continue;
                }
                let bytes = match std::fs::read(file.path()) {
                    Ok(bytes) => Zeroizing::new(bytes),
                    Err(e) => {
                        warn!(app = %app_name, secret = %name, error = %e, "a stored secret is unreadable; central sends it again");
                        continue;
                    }
                };
                match decrypt(&key, &app_name, &name, &bytes) {
                    Ok(value) => {
                        held.entry(app_name.clone())
                            .or_default()
                            .insert(name, value);
                    }
                    Err(why) => {
                        warn!(app = %app_name, secret = %name, reason = %why, "destroying a stored secret that cannot be read; central sends it again");
                        if let Err(e) = cairn_io::destroy_file(&file.path()) {
                            warn!(error = %e, "could not destroy an unreadable stored secret");
                        }
                    }
                }
            }
        }
        Ok(SecretCache {
            dir: dir.to_path_buf(),
            key,
            held: Mutex::new(held),
        })
    }

    /// The key of the values' digests in container labels (see [`CacheKey::digest_key`]).
    pub fn digest_key(&self) -> [u8; 32] {
        self.key.digest_key()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per app of `desired`, the names whose wanted version is not held.
    pub fn missing(&self, desired: &DesiredState) -> Vec<(String, Vec<String>)> {
        let held = self.held();
        desired
            .apps
            .iter()
            .filter_map(|app| {
                let names: Vec<String> = app
                    .secrets
                    .iter()
                    .filter(|r| {
                        held.get(&app.name)
                            .and_then(|names| names.get(&r.name))
                            .is_none_or(|h| h.version != r.version)
                    })
                    .map(|r| r.name.clone())
                    .take(cairn_proto::MAX_SECRETS_PER_APP)
                    .collect();
                (!names.is_empty()).then(|| (app.name.clone(), names))
            })
            .collect()
    }

    /// Keep what central released for `app`: each value replaces the one held, durably.
    pub fn store(&self, app: &str, values: Vec<SecretValue>) -> Result<usize, SecretCacheError> {
        let mut stored = 0;
        for value in values {
            if !safe_component(app) || !cairn_proto::is_secret_name(&value.name) {
                return Err(SecretCacheError::BadName {
                    app: app.to_owned(),
                    name: value.name,
                });
            }
            let dir = self.dir.join(app);
            cairn_io::create_private_dir(&dir)?;
            let bytes = encrypt(&self.key, app, &value)?;
            cairn_io::write_atomic(&dir.join(&value.name), &bytes, 0o600)?;
            info!(app, secret = %value.name, version = value.version, "secret stored");
            self.held().entry(app.to_owned()).or_default().insert(
                value.name,
                Held {
                    version: value.version,
                    value: Zeroizing::new(value.value),
                },
            );
            stored += 1;
        }
        Ok(stored)
    }

    /// Take in the plain files an earlier agent kept in `legacy` (`<app>/<name>`: the version
    /// as a little-endian u64, then the value): each is stored encrypted here, then the plain
    /// copy is overwritten and removed, and so is `legacy`. A device updated while offline or
    /// while its attestation fails keeps its apps' secrets; and an older agent started again
    /// after an A/B rollback finds no file in its directory (its apps wait for central) instead
    /// of ciphertext it would take for a value.
    pub fn adopt_legacy(&self, legacy: &Path) {
        let Ok(apps) = std::fs::read_dir(legacy) else {
            return;
        };
        for app in apps.flatten() {
            let app_name = app.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(app.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = file.file_name().to_string_lossy().into_owned();
                let path = file.path();
                let bytes = std::fs::read(&path).map(Zeroizing::new);
                match bytes.as_deref().map(|b| b.split_first_chunk::<8>()) {
                    Ok(Some((version, value))) if cairn_proto::is_secret_name(&name) => {
                        let value = SecretValue {
                            name: name.clone(),
                            version: u64::from_le_bytes(*version),
                            value: value.to_vec(),
                        };
                        match self.store(&app_name, vec![value]) {
                            Ok(_) => {
                                info!(app = %app_name, secret = %name, "a secret an earlier agent kept is now stored encrypted")
                            }
                            Err(e) => {
                                warn!(app = %app_name, secret = %name, error = %e, "could not take in a secret an earlier agent kept; central sends it again")
                            }
                        }
                    }
                    _ => {
                        warn!(app = %app_name, file = %name, "an earlier agent's secret file is unreadable; central sends it again")
                    }
                }
                if let Err(e) = cairn_io::destroy_file(&path) {
                    warn!(error = %e, "could not remove an earlier agent's plain secret file");
                }
            }
            let _ = std::fs::remove_dir(app.path());
        }
        let _ = std::fs::remove_dir(legacy);
    }

    /// The values `app` gets: for each secret it names, the wanted version or the last one
    /// held. Names with no value held at all are left out (the runtime reports them).
    pub fn values(&self, app: &App) -> BTreeMap<String, Vec<u8>> {
        let held = self.held();
        let Some(names) = held.get(&app.name) else {
            return BTreeMap::new();
        };
        app.secrets
            .iter()
            .filter_map(|r| {
                let h = names.get(&r.name)?;
                Some((r.name.clone(), h.value.to_vec()))
            })
            .collect()
    }

    /// Forget (and delete) what no app of `desired` names any more: an app that left the device
    /// takes its secrets with it.
    pub fn retain(&self, desired: &DesiredState) {
        let mut held = self.held();
        let wanted: BTreeMap<&str, Vec<&str>> = desired
            .apps
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.secrets.iter().map(|r| r.name.as_str()).collect(),
                )
            })
            .collect();
        let mut gone = Vec::new();
        for (app, names) in held.iter_mut() {
            let keep = wanted.get(app.as_str());
            names.retain(|name, _| {
                let kept = keep.is_some_and(|k| k.contains(&name.as_str()));
                if !kept {
                    gone.push(self.dir.join(app).join(name));
                }
                kept
            });
        }
        held.retain(|_, names| !names.is_empty());
        drop(held);
        for path in gone {
            match cairn_io::destroy_file(&path) {
                Ok(true) => {
                    info!(path = %path.display(), "secret removed: its app no longer uses it here")
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "could not remove a secret no app uses"),
            }
        }
        // The directories of apps that left go too (a failure leaves only an empty directory).
        // Not those of apps still here: a fetch may be storing into one that is still empty.
        if let Ok(apps) = std::fs::read_dir(&self.dir) {
            for app in apps.flatten() {
                if !wanted.contains_key(app.file_name().to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_dir(app.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::v1::SecretRef;

    fn desired(secrets: &[(&str, u64)]) -> DesiredState {
        DesiredState {
            revision: 1,
            apps: vec![App {
                name: "shop".into(),
                compose_yaml: String::new(),
                generation: 1,
                secrets: secrets
                    .iter()
                    .map(|(name, version)| SecretRef {
                        name: (*name).into(),
                        version: *version,
                        ..Default::default()
                    })
                    .collect(),
                variables: Default::default(),
            }],
            ..Default::default()
        }
    }

    fn value(name: &str, version: u64, value: &[u8]) -> SecretValue {
        SecretValue {
            name: name.into(),
            version,
            value: value.to_vec(),
        }
    }

    /// A cache in `state/secrets` with its software key in `state/secrets.key`.
    fn open(state: &Path) -> SecretCache {
        SecretCache::open(&state.join("secrets"), &software_key(state)).unwrap()
    }

    fn software_key(state: &Path) -> CacheKeyStore {
        CacheKeyStore::software(state.join(crate::secrets_key::SOFTWARE_CACHE_KEY_FILE))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn keeps_values_across_restarts_and_serves_the_last_until_the_new_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let v1 = desired(&[("db", 1), ("api", 2)]);
        assert_eq!(
            cache.missing(&v1),
            vec![("shop".to_owned(), vec!["db".to_owned(), "api".to_owned()])]
        );
        cache
            .store(
                "shop",
                vec![value("db", 1, b"pw-one"), value("api", 2, b"key")],
            )
            .unwrap();
        assert!(cache.missing(&v1).is_empty());
        for path in ["secrets/shop/db", "secrets.key"] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(dir.path().join(path))
                    .unwrap()
                    .permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{path}");
        }

        // A restart reads them back.
        let cache = open(dir.path());
        let values = cache.values(&v1.apps[0]);
        assert_eq!(values["db"], b"pw-one");
        assert_eq!(values["api"], b"key");

        // Rotated: db is missing at version 3, and the old value serves meanwhile.
        let v2 = desired(&[("db", 3), ("api", 2)]);
        assert_eq!(
            cache.missing(&v2),
            vec![("shop".to_owned(), vec!["db".to_owned()])]
        );
        assert_eq!(cache.values(&v2.apps[0])["db"], b"pw-one");
        cache
            .store("shop", vec![value("db", 3, b"pw-two")])
            .unwrap();
        assert_eq!(cache.values(&v2.apps[0])["db"], b"pw-two");
        assert_eq!(open(dir.path()).values(&v2.apps[0])["db"], b"pw-two");
    }

    #[test]
    fn a_stored_file_holds_the_value_only_as_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let secret = b"correct-horse-battery-staple";
        cache.store("shop", vec![value("db", 7, secret)]).unwrap();
        let bytes = std::fs::read(dir.path().join("secrets/shop/db")).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(bytes[MAGIC.len()..HEADER_LEN], 7u64.to_le_bytes());
        assert!(
            !contains(&bytes, secret),
            "the value is in the file in clear"
        );
        assert!(
            !contains(&bytes, b"correct"),
            "part of the value is in clear"
        );
        // Each write has its own nonce: the same value twice gives other bytes.
        cache.store("shop", vec![value("db", 7, secret)]).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("secrets/shop/db")).unwrap(),
            bytes
        );
    }

    #[test]
    fn a_tampered_or_moved_file_is_destroyed_and_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache
            .store(
                "shop",
                vec![value("db", 1, b"pw-one"), value("api", 1, b"key")],
            )
            .unwrap();
        drop(cache);
        let db = dir.path().join("secrets/shop/db");
        let api = dir.path().join("secrets/shop/api");
        let mut bytes = std::fs::read(&db).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&db, &bytes).unwrap();
        // The api file under the name of another secret, and another app's.
        std::fs::create_dir(dir.path().join("secrets/till")).unwrap();
        std::fs::copy(&api, dir.path().join("secrets/till/api")).unwrap();
        std::fs::copy(&api, dir.path().join("secrets/shop/token")).unwrap();
        // A version edited in the header.
        let mut bumped = std::fs::read(&api).unwrap();
        bumped[MAGIC.len()] = 2;
        std::fs::write(dir.path().join("secrets/shop/cert"), &bumped).unwrap();

        let cache = open(dir.path());
        let wanted = desired(&[("db", 1), ("api", 1), ("token", 1), ("cert", 2)]);
        assert_eq!(
            cache.missing(&wanted),
            vec![(
                "shop".to_owned(),
                vec!["db".to_owned(), "token".to_owned(), "cert".to_owned()]
            )]
        );
        assert_eq!(cache.values(&wanted.apps[0])["api"], b"key");
        for gone in ["shop/db", "shop/token", "shop/cert", "till/api"] {
            assert!(!dir.path().join("secrets").join(gone).exists(), "{gone}");
        }
        cache
            .store("shop", vec![value("db", 1, b"pw-one")])
            .unwrap();
        assert_eq!(open(dir.path()).values(&wanted.apps[0])["db"], b"pw-one");
    }

    #[test]
    fn an_earlier_agents_plain_files_are_taken_in_encrypted_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("plain");
        let app = legacy.join("shop");
        std::fs::create_dir_all(&app).unwrap();
        let mut plain = 4u64.to_le_bytes().to_vec();
        plain.extend_from_slice(b"plain-old-value");
        std::fs::write(app.join("db"), &plain).unwrap();
        std::fs::write(app.join("short"), b"1234").unwrap();
        let cache = open(dir.path());
        cache.adopt_legacy(&legacy);
        assert!(!legacy.exists(), "the plain directory is gone");
        let wanted = desired(&[("db", 4)]);
        assert!(cache.missing(&wanted).is_empty());
        assert_eq!(cache.values(&wanted.apps[0])["db"], b"plain-old-value");
        // Stored encrypted, and read back after a restart.
        let bytes = std::fs::read(dir.path().join("secrets/shop/db")).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert!(!contains(&bytes, b"plain-old-value"));
        assert_eq!(
            open(dir.path()).values(&wanted.apps[0])["db"],
            b"plain-old-value"
        );
        // A file without the header in the encrypted directory is not a value.
        std::fs::write(dir.path().join("secrets/shop/db"), &plain).unwrap();
        assert!(open(dir.path()).values(&wanted.apps[0]).is_empty());
    }

    #[test]
    fn a_lost_key_destroys_the_files_and_a_new_key_is_made() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .store("shop", vec![value("db", 1, b"pw-one")])
            .unwrap();
        let key_file = dir.path().join("secrets.key");
        let wanted = desired(&[("db", 1)]);

        // The key file gone while its files are there.
        std::fs::remove_file(&key_file).unwrap();
        let cache = open(dir.path());
        assert_eq!(cache.missing(&wanted).len(), 1);
        assert!(!dir.path().join("secrets/shop/db").exists());
        assert!(key_file.exists());
        cache
            .store("shop", vec![value("db", 1, b"pw-one")])
            .unwrap();

        // A damaged key file.
        std::fs::write(&key_file, b"not a key").unwrap();
        let cache = open(dir.path());
        assert_eq!(cache.missing(&wanted).len(), 1);
        assert!(!dir.path().join("secrets/shop/db").exists());
        assert_eq!(std::fs::read(&key_file).unwrap().len(), 32);
        cache
            .store("shop", vec![value("db", 1, b"pw-two")])
            .unwrap();
        assert_eq!(open(dir.path()).values(&wanted.apps[0])["db"], b"pw-two");
    }

    #[test]
    fn an_unreadable_key_file_keeps_the_files() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .store("shop", vec![value("db", 1, b"pw-one")])
            .unwrap();
        // A directory where the key file is: reading it fails, which may pass.
        let key_file = dir.path().join("secrets.key");
        std::fs::remove_file(&key_file).unwrap();
        std::fs::create_dir(&key_file).unwrap();
        let err =
            SecretCache::open(&dir.path().join("secrets"), &software_key(dir.path())).unwrap_err();
        assert!(matches!(err, SecretCacheError::Key(_)), "{err}");
        assert!(dir.path().join("secrets/shop/db").exists());
    }

    #[test]
    fn the_digest_key_is_kept_with_the_cache_key_and_differs_per_device() {
        let one = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let key = open(one.path()).digest_key();
        assert_eq!(open(one.path()).digest_key(), key, "a restart keeps it");
        assert_ne!(open(other.path()).digest_key(), key);
        assert_ne!(key, [0; 32]);
    }

    #[test]
    fn an_app_that_leaves_takes_its_secrets_along() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        cache
            .store("shop", vec![value("db", 1, b"x"), value("api", 1, b"y")])
            .unwrap();
        cache.retain(&desired(&[("db", 1)]));
        let secrets = dir.path().join("secrets");
        assert!(secrets.join("shop/db").exists());
        assert!(!secrets.join("shop/api").exists());
        cache.retain(&DesiredState::default());
        assert!(!secrets.join("shop").exists());
        assert!(open(dir.path())
            .values(&desired(&[("db", 1)]).apps[0])
            .is_empty());
    }

    #[test]
    fn a_fetch_stores_into_the_directory_of_an_app_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let secrets = dir.path().join("secrets");
        // A fetch has made the app's directory and not written yet when the sink retains.
        cairn_io::create_private_dir(&secrets.join("shop")).unwrap();
        cairn_io::create_private_dir(&secrets.join("gone")).unwrap();
        cache.retain(&desired(&[("db", 1)]));
        assert!(
            secrets.join("shop").is_dir(),
            "a staying app's directory went"
        );
        assert!(
            !secrets.join("gone").exists(),
            "a leaving app's directory stayed"
        );
    }

    #[test]
    fn refuses_names_that_are_not_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        assert!(cache.store("shop", vec![value("../x", 1, b"x")]).is_err());
        assert!(cache.store("..", vec![value("db", 1, b"x")]).is_err());
        assert!(std::fs::read_dir(dir.path().join("secrets"))
            .unwrap()
            .next()
            .is_none());
    }

    /// The TPM path against swtpm: the key sealed to the TPM opens across restarts of the
    /// cache, and another TPM's blob is a lost key.
    #[cfg(feature = "tpm")]
    #[test]
    fn a_tpm_sealed_key_opens_on_its_tpm_only() {
        use crate::secrets_key::{SOFTWARE_CACHE_KEY_FILE, TPM_CACHE_KEY_FILE};
        use crate::tpm_key::TpmKey;
        use std::sync::Arc;
        if !cairn_testsupport::require_tool("swtpm") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let tpm = cairn_testsupport::Swtpm::start();
        let device_key = |tpm: &cairn_testsupport::Swtpm, blob: &Path| {
            Arc::new(TpmKey::open_or_create(&tpm.tcti(), blob).unwrap())
        };
        let key = device_key(&tpm, &state.join("device-key.tpm"));
        let store = CacheKeyStore::Tpm {
            key,
            path: state.join(TPM_CACHE_KEY_FILE),
        };
        // A software key of an earlier storage is destroyed when the TPM key is made.
        std::fs::write(state.join(SOFTWARE_CACHE_KEY_FILE), [7u8; 32]).unwrap();
        let secrets = state.join("secrets");
        let cache = SecretCache::open(&secrets, &store).unwrap();
        cache
            .store("shop", vec![value("db", 1, b"tpm-kept-value")])
            .unwrap();
        assert!(!state.join(SOFTWARE_CACHE_KEY_FILE).exists());
        let blob = std::fs::read(state.join(TPM_CACHE_KEY_FILE)).unwrap();
        assert!(blob.starts_with(b"CAIRNTPMBND1"));
        let wanted = desired(&[("db", 1)]);
        let again = SecretCache::open(&secrets, &store).unwrap();
        assert_eq!(again.values(&wanted.apps[0])["db"], b"tpm-kept-value");
        drop((cache, again, store));
        drop(tpm);

        // The state directory in another device: its TPM cannot open the key.
        let other = cairn_testsupport::Swtpm::start();
        let other_dir = tempfile::tempdir().unwrap();
        let store = CacheKeyStore::Tpm {
            key: device_key(&other, &other_dir.path().join("device-key.tpm")),
            path: state.join(TPM_CACHE_KEY_FILE),
        };
        let cache = SecretCache::open(&secrets, &store).unwrap();
        assert_eq!(cache.missing(&wanted).len(), 1);
        assert!(!secrets.join("shop/db").exists());
        assert_ne!(std::fs::read(state.join(TPM_CACHE_KEY_FILE)).unwrap(), blob);
        cache
            .store("shop", vec![value("db", 1, b"tpm-kept-value")])
            .unwrap();
        let again = SecretCache::open(&secrets, &store).unwrap();
        assert_eq!(again.values(&wanted.apps[0])["db"], b"tpm-kept-value");
    }
}
