//! Attachment records: one JSON file per attached container (`<dir>/<container id>.json`) with
//! the plugin configurations its ADD used and the result, so CHECK and DEL later get exactly
//! what ADD got, also after an agent restart.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Attachment, NetworkError};

/// What is on disk for one attachment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AttachmentRecord {
    pub container_id: String,
    pub app: String,
    pub service: String,
    pub netns: PathBuf,
    /// The user namespace the network namespace was made in (`None`: the host's; records of
    /// agents before user namespaces have none).
    #[serde(default)]
    pub userns: Option<PathBuf>,
    /// Plugin configurations in ADD order, without `prevResult`.
    pub chain: Vec<Value>,
    /// The result of the whole chain; `None` while ADD has not finished.
    pub result: Option<Value>,
    pub address: Option<Ipv4Addr>,
}

impl AttachmentRecord {
    /// The public view, once ADD has given an address.
    pub(crate) fn attachment(&self) -> Option<Attachment> {
        Some(Attachment {
            container_id: self.container_id.clone(),
            app: self.app.clone(),
            service: self.service.clone(),
            netns: self.netns.clone(),
            address: self.address?,
        })
    }
}

/// The directory of records.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    dir: PathBuf,
}

impl Records {
    pub(crate) fn new(dir: PathBuf) -> Records {
        Records { dir }
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.json"))
    }

    fn error(action: &'static str, path: &std::path::Path, reason: impl ToString) -> NetworkError {
        NetworkError::Record {
            action,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// The record of `container_id`, if any.
    pub(crate) fn read(
        &self,
        container_id: &str,
    ) -> Result<Option<AttachmentRecord>, NetworkError> {
        let path = self.path(container_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Self::error("read", &path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::error("read", &path, e)),
        }
    }

    /// Write `record` (atomically replacing the old one).
    pub(crate) fn write(&self, record: &AttachmentRecord) -> Result<(), NetworkError> {
        let path = self.path(&record.container_id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Self::error("write", &path, e))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::error("write", &path, e))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(|e| Self::error("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Self::error("write", &path, e))
    }

    /// Delete the record of `container_id` (a missing one is fine).
    pub(crate) fn remove(&self, container_id: &str) -> Result<(), NetworkError> {
        let path = self.path(container_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Self::error("remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Every record, by container id.
    pub(crate) fn all(&self) -> Result<Vec<AttachmentRecord>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::error("read", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = name.strip_suffix(".json") {
                if let Some(r) = self.read(id)? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(out)
    }
}
