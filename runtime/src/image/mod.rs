//! Images: client-side pull from an OCI/Docker v2 registry and import of OCI archives into
//! containerd's content store, unpacked into overlayfs snapshots (containerd 1.6 has no Transfer
//! service). Every blob's digest is verified; interrupted downloads resume; progress is reported.
//!
//! The recipe (see FINDINGS): all writes happen under a lease; blobs carry the GC labels that keep
//! them alive afterwards (`containerd.io/gc.ref.content.*`, `containerd.io/uncompressed`,
//! `containerd.io/gc.ref.snapshot.overlayfs` on the config); each layer is applied with the diff
//! service onto a snapshot prepared on its parent and committed under its chain id; the image
//! record is created, or updated in place when the name exists.

mod archive;
pub mod oci;
mod registry;
mod store;

use std::path::PathBuf;

use futures::stream::BoxStream;

use crate::containerd::ContainerdError;

pub use archive::import_oci_archive;
pub use oci::ContainerConfig;
pub use registry::{pull_image, Credentials, PullOptions};
pub use store::{discard_partial_pulls, image_info, remove_image, ImageInfo, MANAGED_LABEL};

/// Errors pulling, importing or reading images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference does not parse.
    #[error("image reference {reference:?} is invalid: {reason}; write e.g. \"registry:5000/team/app:1.0\"")]
    Reference {
        /// The reference.
        reference: String,
        /// Why.
        reason: cairn_compose::ImageRefError,
    },
    /// The registry could not be reached or the connection broke.
    #[error("request to {url} failed: {source}; check the registry address and the network (an interrupted pull resumes on retry)")]
    Http {
        /// URL.
        url: String,
        /// Transport error.
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("registry answered {status} for {url}: {body}")]
    Registry {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The extra certificate authorities given for a registry are unusable.
    #[error("the certificate authorities given for registry {registry} are unusable: {reason}; fix `ca_pem` of its registry secret")]
    TrustedCas {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// Authentication failed.
    #[error("registry {registry} refused the credentials: {reason}; check the username/password or token for this registry")]
    Auth {
        /// Registry host.
        registry: String,
        /// Why.
        reason: String,
    },
    /// Content did not match its digest.
    #[error("{what} has digest {actual}, expected {expected}; the source served corrupt or changed data, retry the pull")]
    DigestMismatch {
        /// Which blob or document.
        what: String,
        /// Expected digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A blob download ended early.
    #[error(
        "blob {digest} ended after {got} of {size} bytes; retry the pull to resume the download"
    )]
    Truncated {
        /// Digest.
        digest: String,
        /// Bytes received in total.
        got: u64,
        /// Expected size.
        size: u64,
    },
    /// A manifest, index or config is unusable.
    #[error("image document {digest} is unusable: {reason}")]
    Document {
        /// Its digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// An OCI archive is unusable.
    #[error("OCI archive {path} is unusable: {reason}")]
    Archive {
        /// Archive path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading a local file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A layer unpacked to something other than its diff id.
    #[error("layer {layer} unpacked to {actual} but the config says {expected}; the image is inconsistent, rebuild or re-push it")]
    DiffId {
        /// Layer digest.
        layer: String,
        /// diff id in the config.
        expected: String,
        /// What containerd computed.
        actual: String,
    },
    /// The image is not in containerd.
    #[error("image {name} is not in containerd; pull or import it first")]
    NotFound {
        /// Image name.
        name: String,
    },
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

/// Progress of a pull or import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is known: how many layers and bytes to fetch at most.
    Resolved {
        /// Image name.
        image: String,
        /// Manifest digest.
        manifest: String,
        /// Number of layers.
        layers: usize,
        /// Sum of layer and config sizes.
        total_bytes: u64,
    },
    /// A blob was already in the content store.
    BlobPresent {
        /// Digest.
        digest: String,
        /// Size.
        size: u64,
    },
    /// Bytes of a blob were written (`resumed_from` > 0 when an earlier attempt left data).
    BlobProgress {
        /// Digest.
        digest: String,
        /// Bytes stored so far.
        done: u64,
        /// Size.
        size: u64,
        /// Where this attempt started.
        resumed_from: u64,
    },
    /// A blob was committed (digest verified).
    BlobDone {
        /// Digest.
        digest: String,
        /// Size.
        size: u64,
    },
    /// A layer was unpacked (or already was).
    LayerUnpacked {
        /// Position, base first.
        index: usize,
        /// Snapshot name (chain id).
        chain_id: String,
    },
    /// The image record points at the new content.
    Done {
        /// Image name.
        image: String,
        /// Digest of the top document.
        digest: String,
    },
}

/// Receives [`Progress`] events; wrap a channel sender in a closure to get them elsewhere.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A progress sink that drops everything.
pub fn no_progress(_: Progress) {}

/// A stream of blob bytes.
pub(crate) type BlobStream = BoxStream<'static, Result<Vec<u8>, ImageError>>;

/// Where blobs come from (a registry or an archive).
pub(crate) trait BlobSource: Send + Sync {
    /// Open blob `desc` at `offset`. Returns where the stream actually starts (0 when the
    /// source cannot seek) and the bytes.
    fn open_blob(
        &self,
        desc: &oci::Descriptor,
        offset: u64,
    ) -> impl std::future::Future<Output = Result<(u64, BlobStream), ImageError>> + Send;
}

/// Read a whole small blob from `source`, checking size and digest.
pub(crate) async fn fetch_small<S: BlobSource>(
    source: &S,
    desc: &oci::Descriptor,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    use futures::StreamExt;
    const MAX: u64 = 8 << 20;
    if desc.size > MAX {
        return Err(ImageError::Document {
            digest: desc.digest.clone(),
            reason: format!("{what} is {} bytes, more than the 8 MiB allowed", desc.size),
        });
    }
    let (_, mut stream) = source.open_blob(desc, 0).await?;
    let mut data = Vec::with_capacity(desc.size as usize);
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?);
        if data.len() as u64 > desc.size {
            break;
        }
    }
    let actual = oci::sha256_digest(&data);
    if actual != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: format!("{what} {}", desc.digest),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(data)
}
