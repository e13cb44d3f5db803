//! The secret values of the device's apps, as central released them: one file per secret,
//! `<state_dir>/secrets/<app>/<name>` (0600, the version in its first 8 bytes), so that apps
//! restart with their secrets while central is unreachable. On a device the state directory is
//! on the TPM-sealed data partition; nothing here is ever logged but names and versions.
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

impl SecretCache {
    /// Opens `dir` (created 0700), reading every value held there. A file that cannot be read
    /// is skipped with a warning: central sends its value again.
    pub fn open(dir: &Path) -> Result<SecretCache, SecretCacheError> {
        cairn_io::create_private_dir(dir)?;
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
                match std::fs::read(file.path()) {
                    Ok(bytes) if bytes.len() >= 8 => {
                        let bytes = Zeroizing::new(bytes);
                        let mut version = [0u8; 8];
                        version.copy_from_slice(&bytes[..8]);
                        held.entry(app_name.clone()).or_default().insert(
                            name,
                            Held {
                                version: u64::from_le_bytes(version),
                                value: Zeroizing::new(bytes[8..].to_vec()),
                            },
                        );
                    }
                    _ => {
                        warn!(app = %app_name, secret = %name, "a stored secret is unreadable; central sends it again")
                    }
                }
            }
        }
        Ok(SecretCache {
            dir: dir.to_path_buf(),
            held: Mutex::new(held),
        })
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
            let mut bytes = Zeroizing::new(Vec::with_capacity(8 + value.value.len()));
            bytes.extend_from_slice(&value.version.to_le_bytes());
            bytes.extend_from_slice(&value.value);
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
        // Empty app directories go too (a failure leaves only an empty directory).
        if let Ok(apps) = std::fs::read_dir(&self.dir) {
            for app in apps.flatten() {
                let _ = std::fs::remove_dir(app.path());
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

    #[test]
    fn keeps_values_across_restarts_and_serves_the_last_until_the_new_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SecretCache::open(&dir.path().join("secrets")).unwrap();
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
        let path = dir.path().join("secrets/shop/db");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // A restart reads them back.
        let cache = SecretCache::open(&dir.path().join("secrets")).unwrap();
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
    }

    #[test]
    fn an_app_that_leaves_takes_its_secrets_along() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SecretCache::open(dir.path()).unwrap();
        cache
            .store("shop", vec![value("db", 1, b"x"), value("api", 1, b"y")])
            .unwrap();
        cache.retain(&desired(&[("db", 1)]));
        assert!(dir.path().join("shop/db").exists());
        assert!(!dir.path().join("shop/api").exists());
        cache.retain(&DesiredState::default());
        assert!(!dir.path().join("shop").exists());
        assert!(SecretCache::open(dir.path())
            .unwrap()
            .values(&desired(&[("db", 1)]).apps[0])
            .is_empty());
    }

    #[test]
    fn refuses_names_that_are_not_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SecretCache::open(dir.path()).unwrap();
        assert!(cache.store("shop", vec![value("../x", 1, b"x")]).is_err());
        assert!(cache.store("..", vec![value("db", 1, b"x")]).is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
