//! Storing an image graph in containerd: blobs under a lease with GC labels, layers unpacked into
//! snapshots named by chain id, and the image record created or updated in place.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::Image;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{debug, info, Instrument};

use super::oci::{
    self, Descriptor, Document, ImageConfigFile, LABEL_GC_CONFIG, LABEL_GC_SNAPSHOT,
    LABEL_UNCOMPRESSED,
};
use super::{fetch_small, BlobSource, ImageError, Progress, ProgressFn};
use crate::containerd::{Containerd, ContainerdError};

/// Label Cairn puts on the image records it creates (value `true`).
pub const MANAGED_LABEL: &str = "cairn.managed";
/// Label on a pull lease naming the image being pulled.
const PULL_LEASE_IMAGE_LABEL: &str = "cairn.image";
/// How long a pull lease lives when the pull is abandoned (its partial data then goes away).
const PULL_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest chunk sent to containerd in one write message.
const CHUNK: usize = 1 << 20;

/// An image present and unpacked in containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Image record name, e.g. `127.0.0.1:5000/cairn/web:v1`.
    pub name: String,
    /// Digest of the record's target (index or manifest).
    pub digest: String,
    /// Digest of the platform manifest.
    pub manifest: String,
    /// Top snapshot (chain id of the last layer) to prepare container snapshots on.
    pub chain_id: String,
    /// Runtime defaults from the image config.
    pub config: oci::ContainerConfig,
}

/// The lease a pull of `name` works under; stable so an interrupted pull resumes its ingests.
fn lease_id(name: &str) -> String {
    format!(
        "cairn-pull-{}",
        &hex::encode(Sha256::digest(name.as_bytes()))[..16]
    )
}

/// Store the image whose top document is `top` (bytes already fetched and verified) from
/// `source` as image record `name`.
pub(crate) async fn store_image<S: BlobSource>(
    ctr: &Containerd,
    source: &S,
    name: &str,
    top: Descriptor,
    top_bytes: Vec<u8>,
    progress: ProgressFn<'_>,
) -> Result<ImageInfo, ImageError> {
    let lease = lease_id(name);
    let labels = HashMap::from([(PULL_LEASE_IMAGE_LABEL.to_string(), name.to_string())]);
    ctr.create_lease(&lease, PULL_LEASE_TTL, labels).await?;
    let result = store_under_lease(ctr, source, name, &lease, top, top_bytes, progress).await;
    if result.is_ok() {
        // Everything is referenced from the image record now; partial data of a failed pull stays
        // under the lease so the next attempt resumes.
        ctr.delete_lease(&lease).await?;
    }
    result
}

async fn store_under_lease<S: BlobSource>(
    ctr: &Containerd,
    source: &S,
    name: &str,
    lease: &str,
    top: Descriptor,
    top_bytes: Vec<u8>,
    progress: ProgressFn<'_>,
) -> Result<ImageInfo, ImageError> {
    let document =
        oci::parse_document(&top.media_type, &top_bytes).map_err(|e| ImageError::Document {
            digest: top.digest.clone(),
            reason: e.to_string(),
        })?;
    // An index: fetch the manifest for this platform.
    let (index, manifest_desc, manifest_bytes, manifest) = match document {
        Document::Manifest(m) => (None, top.clone(), top_bytes.clone(), m),
        Document::Index(idx) => {
            let chosen =
                oci::choose_manifest(&idx)
                    .cloned()
                    .ok_or_else(|| ImageError::Document {
                        digest: top.digest.clone(),
                        reason: format!(
                            "no manifest for linux/{} in the index",
                            oci::host_architecture()
                        ),
                    })?;
            let bytes = fetch_small(source, &chosen, "manifest").await?;
            let manifest = match oci::parse_document(&chosen.media_type, &bytes) {
                Ok(Document::Manifest(m)) => m,
                Ok(Document::Index(_)) => {
                    return Err(ImageError::Document {
                        digest: chosen.digest,
                        reason: "nested indexes are not supported".into(),
                    })
                }
                Err(e) => {
                    return Err(ImageError::Document {
                        digest: chosen.digest,
                        reason: e.to_string(),
                    })
                }
            };
            (Some((top.clone(), top_bytes)), chosen, bytes, manifest)
        }
    };
    let config_bytes = fetch_small(source, &manifest.config, "config").await?;
    let config: ImageConfigFile =
        serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Document {
            digest: manifest.config.digest.clone(),
            reason: format!("bad config: {e}"),
        })?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
        return Err(ImageError::Document {
            digest: manifest_desc.digest.clone(),
            reason: format!(
                "{} layers but {} diff ids in the config",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let chain = oci::chain_ids(diff_ids);
    let total_bytes = manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size;
    progress(Progress::Resolved {
        image: name.to_string(),
        manifest: manifest_desc.digest.clone(),
        layers: manifest.layers.len(),
        total_bytes,
    });

    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.clone())]);
        ensure_blob(ctr, source, lease, layer, labels, progress).await?;
    }
    let top_chain = chain.last().cloned().unwrap_or_default();
    let config_labels = HashMap::from([(LABEL_GC_SNAPSHOT.to_string(), top_chain.clone())]);
    put_small(ctr, lease, &manifest.config, config_bytes, config_labels).await?;
    let mut manifest_labels =
        HashMap::from([(LABEL_GC_CONFIG.to_string(), manifest.config.digest.clone())]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    put_small(ctr, lease, &manifest_desc, manifest_bytes, manifest_labels).await?;
    if let Some((index_desc, index_bytes)) = index {
        let labels = HashMap::from([(
            "containerd.io/gc.ref.content.m.0".to_string(),
            manifest_desc.digest.clone(),
        )]);
        put_small(ctr, lease, &index_desc, index_bytes, labels).await?;
    }

    unpack(ctr, lease, &manifest.layers, diff_ids, &chain, progress).await?;

    let image = Image {
        name: name.to_string(),
        labels: HashMap::from([(MANAGED_LABEL.to_string(), "true".to_string())]),
        target: Some(top.to_containerd()),
        created_at: None,
        updated_at: None,
    };
    ctr.put_image(image, Some(lease)).await?;
    info!(image = name, digest = %top.digest, "image stored");
    progress(Progress::Done {
        image: name.to_string(),
        digest: top.digest.clone(),
    });
    Ok(ImageInfo {
        name: name.to_string(),
        digest: top.digest,
        manifest: manifest_desc.digest,
        chain_id: top_chain,
        config: config.config.unwrap_or_default(),
    })
}

/// When blob `desc` is already stored, keep it (add it to the lease, then set `labels`) and
/// return true. The lease is joined before looking, so a blob that is unreferenced (e.g. the
/// previous target of an updated image) cannot be collected between the check and the use; one
/// collected just before is written again.
async fn keep_existing(
    ctr: &Containerd,
    lease: &str,
    desc: &Descriptor,
    labels: &HashMap<String, String>,
) -> Result<bool, ImageError> {
    ctr.add_lease_resource(lease, "content", &desc.digest)
        .await?;
    if ctr.content_info(&desc.digest).await?.is_none() {
        return Ok(false);
    }
    match ctr
        .set_content_labels(&desc.digest, labels, Some(lease))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Write a small, already verified document with labels (or label the existing one).
async fn put_small(
    ctr: &Containerd,
    lease: &str,
    desc: &Descriptor,
    bytes: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<(), ImageError> {
    if keep_existing(ctr, lease, desc, &labels).await? {
        return Ok(());
    }
    let Some((_, mut writer)) = open_ingest(ctr, lease, desc).await? else {
        return Ok(());
    };
    if writer.offset() > 0 {
        writer.truncate().await?;
    }
    writer.write(bytes).await?;
    writer.commit(labels).await?;
    Ok(())
}

/// Open (or resume) the content-store ingest of `desc` under `lease`; `None` when the blob was
/// committed meanwhile (another pull finished it), which is success.
async fn open_ingest(
    ctr: &Containerd,
    lease: &str,
    desc: &Descriptor,
) -> Result<Option<(String, crate::containerd::ContentWriter)>, ImageError> {
    let reference = format!("cairn-ingest-{}", desc.digest);
    match ctr
        .open_writer(&reference, &desc.digest, desc.size, lease)
        .await
    {
        Ok(writer) => Ok(Some((reference, writer))),
        Err(e) if e.is_already_exists() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make sure blob `desc` is in the content store with `labels`: skip it when present, resume a
/// partial write, verify the digest.
#[tracing::instrument(skip_all, fields(digest = %desc.digest, size = desc.size))]
async fn ensure_blob<S: BlobSource>(
    ctr: &Containerd,
    source: &S,
    lease: &str,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    progress: ProgressFn<'_>,
) -> Result<(), ImageError> {
    if keep_existing(ctr, lease, desc, &labels).await? {
        progress(Progress::BlobPresent {
            digest: desc.digest.clone(),
            size: desc.size,
        });
        return Ok(());
    }
    let Some((reference, mut writer)) = open_ingest(ctr, lease, desc).await? else {
        return Ok(());
    };
    let resumed_from = writer.offset().min(desc.size);
    if resumed_from == desc.size && desc.size > 0 {
        // An earlier attempt stored every byte but did not commit: containerd verifies now.
        return commit_blob(ctr, writer, &reference, desc, labels, progress).await;
    }
    let (start, mut stream) = source.open_blob(desc, resumed_from).await?;
    if start != writer.offset() {
        debug!(
            start,
            offset = writer.offset(),
            "source cannot resume here; restarting the blob"
        );
        writer.truncate().await?;
    }
    // Our own hash when we see every byte; containerd verifies on commit in any case.
    let mut hasher = (start == 0).then(Sha256::new);
    progress(Progress::BlobProgress {
        digest: desc.digest.clone(),
        done: start,
        size: desc.size,
        resumed_from: start,
    });
    let mut last_report = start;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for piece in chunk.chunks(CHUNK) {
            if let Some(h) = hasher.as_mut() {
                h.update(piece);
            }
            writer.write(piece.to_vec()).await?;
        }
        if writer.offset() - last_report >= 4 << 20 || writer.offset() == desc.size {
            last_report = writer.offset();
            progress(Progress::BlobProgress {
                digest: desc.digest.clone(),
                done: last_report,
                size: desc.size,
                resumed_from: start,
            });
        }
    }
    if writer.offset() != desc.size {
        return Err(ImageError::Truncated {
            digest: desc.digest.clone(),
            got: writer.offset(),
            size: desc.size,
        });
    }
    if let Some(h) = hasher {
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != desc.digest {
            ctr.abort_write(&reference).await?;
            return Err(ImageError::DigestMismatch {
                what: format!("layer {}", desc.digest),
                expected: desc.digest.clone(),
                actual,
            });
        }
    }
    commit_blob(ctr, writer, &reference, desc, labels, progress).await
}

async fn commit_blob(
    ctr: &Containerd,
    writer: crate::containerd::ContentWriter,
    reference: &str,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    progress: ProgressFn<'_>,
) -> Result<(), ImageError> {
    if let Err(e) = writer.commit(labels).await {
        // A failed commit of complete data means the digest did not match: start over next time.
        ctr.abort_write(reference).await?;
        return Err(match e {
            ContainerdError::Call { status, .. } if status.code() != tonic::Code::Unavailable => {
                ImageError::DigestMismatch {
                    what: format!("layer {}", desc.digest),
                    expected: desc.digest.clone(),
                    actual: format!("(containerd refused the commit: {})", status.message()),
                }
            }
            other => other.into(),
        });
    }
    progress(Progress::BlobDone {
        digest: desc.digest.clone(),
        size: desc.size,
    });
    Ok(())
}

/// Unpack layers into snapshots named by chain id, skipping ones that exist.
async fn unpack(
    ctr: &Containerd,
    lease: &str,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
    progress: ProgressFn<'_>,
) -> Result<(), ImageError> {
    for (i, layer) in layers.iter().enumerate() {
        let span = tracing::info_span!("unpack_layer", index = i, chain_id = %chain[i]);
        async {
            // Lease first, then look: a snapshot seen after joining the lease cannot be
            // collected by a concurrent GC any more.
            ctr.add_lease_resource(lease, "snapshots/overlayfs", &chain[i])
                .await?;
            if ctr.stat_snapshot(&chain[i]).await?.is_some() {
                return Ok(());
            }
            let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
            let key = format!("cairn-extract-{}-{}", rand::random::<u32>(), chain[i]);
            let mounts = ctr
                .prepare_snapshot(&key, parent, HashMap::new(), Some(lease))
                .await?;
            let applied = match ctr
                .apply_layer(layer.to_containerd(), mounts, Some(lease))
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    let _ = ctr.remove_snapshot(&key).await;
                    return Err(e.into());
                }
            };
            if applied.digest != diff_ids[i] {
                let _ = ctr.remove_snapshot(&key).await;
                return Err(ImageError::DiffId {
                    layer: layer.digest.clone(),
                    expected: diff_ids[i].clone(),
                    actual: applied.digest,
                });
            }
            match ctr.commit_snapshot(&chain[i], &key, Some(lease)).await {
                Ok(()) => Ok(()),
                Err(e) if e.is_already_exists() => {
                    ctr.remove_snapshot(&key).await?;
                    Ok(())
                }
                Err(e) => {
                    let _ = ctr.remove_snapshot(&key).await;
                    Err(e.into())
                }
            }
        }
        .instrument(span)
        .await?;
        progress(Progress::LayerUnpacked {
            index: i,
            chain_id: chain[i].clone(),
        });
    }
    Ok(())
}

/// The image record `name` resolved to what a container needs: platform manifest, config and
/// the top snapshot (which must exist).
///
/// # Errors
/// [`ImageError::NotFound`] when the record or its snapshot is missing; document errors when
/// the stored content is unusable.
#[tracing::instrument(skip(ctr))]
pub async fn image_info(ctr: &Containerd, name: &str) -> Result<ImageInfo, ImageError> {
    let image = ctr
        .get_image(name)
        .await?
        .ok_or_else(|| ImageError::NotFound {
            name: name.to_string(),
        })?;
    let target = image.target.ok_or_else(|| ImageError::NotFound {
        name: name.to_string(),
    })?;
    let bytes = ctr.read_content(&target.digest).await?;
    let doc = |media: &str, digest: &str, bytes: &[u8]| {
        oci::parse_document(media, bytes).map_err(|e| ImageError::Document {
            digest: digest.to_string(),
            reason: e.to_string(),
        })
    };
    let (manifest_digest, manifest) = match doc(&target.media_type, &target.digest, &bytes)? {
        Document::Manifest(m) => (target.digest.clone(), m),
        Document::Index(idx) => {
            let chosen = oci::choose_manifest(&idx).ok_or_else(|| ImageError::Document {
                digest: target.digest.clone(),
                reason: format!("no manifest for linux/{}", oci::host_architecture()),
            })?;
            let bytes = ctr.read_content(&chosen.digest).await?;
            match doc(&chosen.media_type, &chosen.digest, &bytes)? {
                Document::Manifest(m) => (chosen.digest.clone(), m),
                Document::Index(_) => {
                    return Err(ImageError::Document {
                        digest: chosen.digest.clone(),
                        reason: "nested index".into(),
                    })
                }
            }
        }
    };
    let config_bytes = ctr.read_content(&manifest.config.digest).await?;
    let config: ImageConfigFile =
        serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Document {
            digest: manifest.config.digest.clone(),
            reason: format!("bad config: {e}"),
        })?;
    let chain_id = oci::chain_ids(&config.rootfs.diff_ids)
        .pop()
        .unwrap_or_default();
    if ctr.stat_snapshot(&chain_id).await?.is_none() {
        return Err(ImageError::NotFound {
            name: format!("{name} (its layers are not unpacked)"),
        });
    }
    Ok(ImageInfo {
        name: name.to_string(),
        digest: target.digest,
        manifest: manifest_digest,
        chain_id,
        config: config.config.unwrap_or_default(),
    })
}

/// Delete image record `name`; containerd then collects its content and snapshots unless another
/// image or a container still uses them.
///
/// # Errors
/// When the call fails.
#[tracing::instrument(skip(ctr))]
pub async fn remove_image(ctr: &Containerd, name: &str) -> Result<(), ImageError> {
    ctr.delete_image(name).await?;
    Ok(())
}

/// Drop what unfinished pulls of images other than `keep` left behind (their leases; containerd
/// then collects the partial data). Returns the images whose leases were deleted.
///
/// # Errors
/// When containerd cannot be listed or a lease not deleted.
#[tracing::instrument(skip_all)]
pub async fn discard_partial_pulls(
    ctr: &Containerd,
    keep: &std::collections::HashSet<String>,
) -> Result<Vec<String>, ImageError> {
    let mut dropped = Vec::new();
    for lease in ctr.list_leases().await? {
        let Some(image) = lease.labels.get(PULL_LEASE_IMAGE_LABEL) else {
            continue;
        };
        if lease.id.starts_with("cairn-pull-") && !keep.contains(image) {
            ctr.delete_lease(&lease.id).await?;
            dropped.push(image.clone());
        }
    }
    Ok(dropped)
}
