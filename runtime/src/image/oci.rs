//! OCI / Docker v2 image documents (index, manifest, config), digests and chain ids.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest v2 schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Label linking a blob to the uncompressed digest (diff id) of a layer.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// GC label on a config blob naming the top snapshot it was unpacked to.
pub const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.overlayfs";
/// GC label on a manifest naming its config.
pub const LABEL_GC_CONFIG: &str = "containerd.io/gc.ref.content.config";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type (may be empty in old documents).
    #[serde(default)]
    pub media_type: String,
    /// `sha256:...`
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (e.g. `org.opencontainers.image.ref.name`).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// As a containerd descriptor.
    pub fn to_containerd(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size as i64,
            annotations: HashMap::new(),
        }
    }
}

/// Platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH, e.g. `amd64`.
    pub architecture: String,
    /// GOOS, e.g. `linux`.
    pub os: String,
    /// Variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ContainerConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env` as `KEY=VALUE`.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `User` (`uid[:gid]` or a name).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// An image config blob.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfigFile {
    /// GOARCH.
    #[serde(default)]
    pub architecture: String,
    /// GOOS.
    #[serde(default)]
    pub os: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// Layer diff ids.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// Uncompressed digests of the layers, base first.
    pub diff_ids: Vec<String>,
}

/// What a top-level document turned out to be.
pub enum Document {
    /// An index: choose a manifest.
    Index(Index),
    /// A manifest.
    Manifest(Manifest),
}

/// Why bytes are not a usable manifest or index.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Without a media type, the bytes had to be JSON to tell index from manifest.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// A media type other than OCI or Docker v2 schema 2.
    #[error("media type {media_type:?} is not supported (only OCI and Docker v2 schema 2 images)")]
    MediaType {
        /// The media type as given.
        media_type: String,
    },
    /// An index that does not parse.
    #[error("bad index: {0}")]
    Index(serde_json::Error),
    /// A manifest that does not parse.
    #[error("bad manifest: {0}")]
    Manifest(serde_json::Error),
}

/// Parse a manifest or index, using the media type when known and the shape otherwise.
///
/// # Errors
/// [`DocumentError`] for unsupported media types or malformed JSON.
pub fn parse_document(media_type: &str, bytes: &[u8]) -> Result<Document, DocumentError> {
    let media_type = media_type.split(';').next().unwrap_or("").trim();
    let is_index = match media_type {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => true,
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => false,
        "" | "application/json" | "text/plain" => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(DocumentError::NotJson)?;
            value.get("manifests").is_some()
        }
        other => {
            return Err(DocumentError::MediaType {
                media_type: other.to_string(),
            })
        }
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(DocumentError::Index)
    } else {
        serde_json::from_slice(bytes)
            .map(Document::Manifest)
            .map_err(DocumentError::Manifest)
    }
}

/// The GOARCH of this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The manifest of an index for linux on this machine's architecture.
pub fn choose_manifest(index: &Index) -> Option<&Descriptor> {
    let arch = host_architecture();
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            // Single-platform indexes (e.g. OCI layouts written by tools) often omit the platform.
            (index.manifests.len() == 1 && index.manifests[0].platform.is_none())
                .then(|| &index.manifests[0])
        })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Chain ids of a layer stack (the snapshot names): `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn documents_by_type_and_shape() {
        let idx = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:1","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        assert!(matches!(parse_document("", idx), Ok(Document::Index(_))));
        assert!(matches!(
            parse_document(MEDIA_OCI_INDEX, idx),
            Ok(Document::Index(_))
        ));
        let man = br#"{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:2","size":2},"layers":[]}"#;
        assert!(matches!(
            parse_document(MEDIA_DOCKER_MANIFEST, man),
            Ok(Document::Manifest(_))
        ));
        let Err(e) = parse_document("application/vnd.docker.distribution.manifest.v1+json", man)
        else {
            panic!("a schema 1 manifest must be refused");
        };
        assert_eq!(
            e.to_string(),
            "media type \"application/vnd.docker.distribution.manifest.v1+json\" is not supported (only OCI and Docker v2 schema 2 images)"
        );
    }

    #[test]
    fn chooses_this_platform() {
        let d = |arch: &str| Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}"),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: HashMap::new(),
        };
        let index = Index {
            manifests: vec![d("s390x"), d(host_architecture())],
        };
        assert_eq!(
            choose_manifest(&index).unwrap().digest,
            format!("sha256:{}", host_architecture())
        );
        let index = Index {
            manifests: vec![d("s390x")],
        };
        assert!(choose_manifest(&index).is_none());
    }
}
