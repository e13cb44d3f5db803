//! OS update bundles on central's disk: `data_dir/bundles/sha256-<hex>.raucb`, content-addressed.
//!
//! An upload streams into a temp file in the same directory while it is hashed, is checked with
//! `rauc info` against the configured update keyring and compatible, and is then renamed to its
//! content address (the same bytes twice end in the same file). A temp file is removed when its
//! upload fails or is dropped (client gone), and stale ones (of uploads, and the dot files of
//! atomic writes) are swept at start.

pub mod rauc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::{FileError, PathContext};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::CentralConfig;

/// Name of the bundles directory inside `data_dir`.
pub const DIR_NAME: &str = "bundles";
/// Temp files of uploads in progress start with this.
const UPLOAD_PREFIX: &str = "upload-";
/// The rauc verification config written at start.
const VERIFY_CONF: &str = "rauc-verify.conf";
/// Deadline of one `rauc info` run (it reads the signature and manifest, not the payload).
const RAUC_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a bundle could not be taken in, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Uploads need a setting that is missing.
    #[error("central has no `{field}` configured, so it refuses bundle uploads; set `{field}` in central's config ({hint}) and restart central")]
    NotConfigured {
        /// The missing setting.
        field: &'static str,
        /// What to put there.
        hint: &'static str,
    },
    /// The body is larger than `max_bundle_bytes`.
    #[error(
        "the bundle is larger than the {limit}-byte limit (`max_bundle_bytes` in central's config)"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The request body could not be read to its end.
    #[error("the upload was cut off after {received} bytes: {reason}; upload the bundle again")]
    Body {
        /// Bytes received.
        received: u64,
        /// What failed.
        reason: String,
    },
    /// `rauc info` refused the bundle.
    #[error("the bundle was refused: rauc says: {reason}; upload a RAUC bundle signed with the key whose certificate is central's `update_keyring`")]
    Refused {
        /// What rauc said.
        reason: String,
    },
    /// The bundle is for other hardware.
    #[error("the bundle's compatible is {found:?} but this fleet takes {expected:?} (`update_compatible`); build it for {expected:?}")]
    WrongCompatible {
        /// In the bundle.
        found: String,
        /// Configured.
        expected: String,
    },
    /// The manifest carries no version.
    #[error("the bundle's manifest has no `version`; set `[update] version=` when building it")]
    NoVersion,
    /// rauc could not run.
    #[error("could not verify the bundle: {0}")]
    Rauc(rauc::RaucError),
    /// The chunk index of a stored bundle could not be built.
    #[error("could not index the bundle {}: {source}", .path.display())]
    Index {
        /// The bundle file.
        path: PathBuf,
        /// cairn-delta's failure.
        source: cairn_delta::DeltaError,
    },
    /// A disk operation failed.
    #[error("could not {what} {}: {source}; check free space and permissions of central's data_dir", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

impl From<rauc::RaucError> for BundleError {
    fn from(e: rauc::RaucError) -> Self {
        match e {
            rauc::RaucError::Refused { reason } => BundleError::Refused { reason },
            other => BundleError::Rauc(other),
        }
    }
}

impl From<FileError> for BundleError {
    fn from(e: FileError) -> Self {
        BundleError::Io {
            what: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// True for a lower-case 64-character hex SHA-256.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What uploads are checked against (both settings present).
#[derive(Debug, Clone)]
struct Verification {
    conf: PathBuf,
    compatible: String,
}

/// The bundles directory and how uploads into it are verified.
#[derive(Debug)]
pub struct BundleFiles {
    dir: PathBuf,
    max_bytes: u64,
    verification: Result<Verification, (&'static str, &'static str)>,
    /// Held while a file is published with its row, or removed with it, so the two agree.
    publish: tokio::sync::Mutex<()>,
}

/// A verified bundle ready to be published.
#[derive(Debug)]
pub struct VerifiedBundle {
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Manifest version.
    pub version: String,
    /// Manifest compatible.
    pub compatible: String,
    /// Hex PCR 11 values predicted from its UKIs (see [`rauc::predict_uki_pcr11`]).
    pub uki_pcr11: Vec<String>,
    temp: TempFile,
}

/// A temp file removed when dropped unless it was renamed away.
#[derive(Debug)]
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// The file was renamed away: nothing to remove.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an upload's temp file");
            }
        }
    }
}

/// An upload being received: bytes go to the temp file and the hash.
#[derive(Debug)]
pub struct Upload {
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    max_bytes: u64,
    temp: TempFile,
}

impl Upload {
    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.size
    }

    /// Append a chunk of the body.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BundleError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_bytes {
            return Err(BundleError::TooLarge {
                limit: self.max_bytes,
            });
        }
        self.hasher.update(chunk);
        let path = self.temp.0.as_deref().unwrap_or(Path::new("?"));
        Ok(self.file.write_all(chunk).await.at("write", path)?)
    }
}

impl BundleFiles {
    /// Create `data_dir/bundles`, sweep temp files a crash left, and write the rauc
    /// verification config when `update_keyring` and `update_compatible` are set.
    #[tracing::instrument(name = "bundles.open", skip_all, fields(data_dir = %config.data_dir.display()))]
    pub fn open(config: &CentralConfig) -> Result<Self, BundleError> {
        let dir = config.data_dir.join(DIR_NAME);
        cairn_io::create_private_dir(&dir)?;
        for entry in std::fs::read_dir(&dir).at("list", &dir)? {
            let entry = entry.at("list", &dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Only temp files start with a dot here: cairn_io::write_atomic names them so.
            if name.starts_with(UPLOAD_PREFIX) || name.starts_with('.') {
                tracing::info!(path = %entry.path().display(), "removing the temp file of an interrupted upload or write");
                std::fs::remove_file(entry.path()).at("remove", &entry.path())?;
            }
        }
        let verification = match (&config.update_keyring, &config.update_compatible) {
            (None, _) => Err((
                "update_keyring",
                "the path of the PEM certificate update bundles are signed with",
            )),
            (_, None) => Err((
                "update_compatible",
                "the RAUC compatible of this fleet's images, e.g. \"cairn-qemu-x86_64\"",
            )),
            (Some(keyring), Some(compatible)) => {
                // rauc resolves a relative keyring path against the config file's directory.
                let keyring = std::fs::canonicalize(keyring).at("find update_keyring", keyring)?;
                let conf = dir.join(VERIFY_CONF);
                cairn_io::write_atomic(
                    &conf,
                    rauc::verify_config(&keyring, compatible).as_bytes(),
                    0o644,
                )?;
                Ok(Verification {
                    conf,
                    compatible: compatible.clone(),
                })
            }
        };
        Ok(Self {
            dir,
            max_bytes: config.max_bundle_bytes,
            verification,
            publish: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the bundle with this SHA-256 is stored.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("sha256-{sha256}.raucb"))
    }

    /// Where the cached cairn-delta index of the bundle with this SHA-256 is kept.
    pub fn index_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("sha256-{sha256}.cdcidx"))
    }

    /// Largest upload accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Refuse early when uploads cannot be verified.
    pub fn check_configured(&self) -> Result<(), BundleError> {
        self.verification
            .as_ref()
            .map(|_| ())
            .map_err(|&(field, hint)| BundleError::NotConfigured { field, hint })
    }

    /// The encoded cairn-delta index of a stored bundle: read from its cache file next to the
    /// bundle, or built off the async runtime and cached (written atomically: temp file, fsync,
    /// rename) under the publish lock, so a bundle removed meanwhile leaves no index behind.
    #[tracing::instrument(name = "bundles.delta_index", skip(self))]
    pub async fn delta_index(&self, sha256: &str) -> Result<Vec<u8>, BundleError> {
        let cached = self.index_path(sha256);
        match tokio::fs::read(&cached).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::new("read", &cached, e).into()),
        }
        let path = self.path(sha256);
        let source = path.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            cairn_delta::Index::build_file(&source).map(|i| i.encode())
        })
        .await
        .map_err(|e| FileError::new("index", &path, std::io::Error::other(e)))?
        .map_err(|source| BundleError::Index {
            path: path.clone(),
            source,
        })?;
        let _guard = self.publish.lock().await;
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(FileError::new(
                "index",
                &path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
            .into());
        }
        let (bytes, target) = (encoded.clone(), cached.clone());
        // 0o666 before the umask, as File::create made it.
        tokio::task::spawn_blocking(move || cairn_io::write_atomic(&target, &bytes, 0o666))
            .await
            .map_err(|e| FileError::new("write the index", &cached, std::io::Error::other(e)))??;
        tracing::info!(bytes = encoded.len(), "bundle indexed");
        Ok(encoded)
    }

    /// Start receiving an upload into a new temp file.
    pub async fn begin_upload(&self) -> Result<Upload, BundleError> {
        self.check_configured()?;
        let path = self.dir.join(format!(
            "{UPLOAD_PREFIX}{}.tmp",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .at("create", &path)?;
        Ok(Upload {
            file,
            hasher: Sha256::new(),
            size: 0,
            max_bytes: self.max_bytes,
            temp: TempFile(Some(path)),
        })
    }

    /// Flush a fully received upload and check it with `rauc info`; the temp file is removed
    /// when this fails.
    #[tracing::instrument(name = "bundles.verify", skip_all, fields(size = upload.size))]
    pub async fn verify(&self, upload: Upload) -> Result<VerifiedBundle, BundleError> {
        let verification = self
            .verification
            .as_ref()
            .map_err(|&(field, hint)| BundleError::NotConfigured { field, hint })?;
        let path = upload.temp.0.clone().unwrap_or_default();
        upload.file.sync_all().await.at("sync", &path)?;
        drop(upload.file);
        let info = rauc::info(&verification.conf, &path, RAUC_TIMEOUT).await?;
        if info.compatible != verification.compatible {
            return Err(BundleError::WrongCompatible {
                found: info.compatible,
                expected: verification.compatible.clone(),
            });
        }
        let version = info
            .version
            .filter(|v| !v.trim().is_empty())
            .ok_or(BundleError::NoVersion)?;
        let uki_path = path.clone();
        let uki_pcr11 =
            tokio::task::spawn_blocking(move || rauc::predict_uki_pcr11(&uki_path, RAUC_TIMEOUT))
                .await
                .map_err(|e| rauc::RaucError::Stopped(e.to_string()))??;
        Ok(VerifiedBundle {
            uki_pcr11,
            sha256: hex::encode(upload.hasher.finalize()),
            size: upload.size,
            version,
            compatible: info.compatible,
            temp: upload.temp,
        })
    }

    /// Move a verified bundle to its content address and run `record` (which stores its row)
    /// while no removal can interleave. Renaming over an existing file is harmless: it holds
    /// the same bytes.
    #[tracing::instrument(name = "bundles.publish", skip_all, fields(sha256 = %bundle.sha256))]
    pub async fn publish<T, E, F>(
        &self,
        mut bundle: VerifiedBundle,
        record: F,
    ) -> Result<T, PublishError<E>>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let _guard = self.publish.lock().await;
        let from = bundle.temp.0.clone().unwrap_or_default();
        let to = self.path(&bundle.sha256);
        let dir = self.dir.clone();
        let moved = to.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&from, &moved).at("move the upload to", &moved)?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .at("sync", &dir)
        })
        .await
        .map_err(|e| {
            PublishError::Bundle(BundleError::Io {
                what: "move the upload to",
                path: to.clone(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(|e| PublishError::Bundle(e.into()))?;
        bundle.temp.keep();
        // On failure the file stays: it is complete and verified, and an earlier upload's row
        // may point at it; a retry of the upload records it.
        record.await.map_err(PublishError::Record)
    }

    /// Remove a bundle's file while `remove_row` runs under the publish lock; the file goes
    /// only when `remove_row` succeeds with `true`.
    #[tracing::instrument(name = "bundles.remove", skip_all, fields(sha256 = %sha256))]
    pub async fn remove<E, F>(&self, sha256: &str, remove_row: F) -> Result<bool, PublishError<E>>
    where
        F: std::future::Future<Output = Result<bool, E>>,
    {
        let _guard = self.publish.lock().await;
        if !remove_row.await.map_err(PublishError::Record)? {
            return Ok(false);
        }
        let index = self.index_path(sha256);
        match tokio::fs::remove_file(&index).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PublishError::Bundle(
                    FileError::new("remove", &index, e).into(),
                ))
            }
        }
        let path = self.path(sha256);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "bundle file was already gone");
                Ok(true)
            }
            Err(e) => Err(PublishError::Bundle(
                FileError::new("remove", &path, e).into(),
            )),
        }
    }
}

/// A publish or removal failed on disk or in recording.
#[derive(Debug)]
pub enum PublishError<E> {
    /// The file could not be moved or removed.
    Bundle(BundleError),
    /// The record step failed.
    Record(E),
}
