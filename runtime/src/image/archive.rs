//! Import of an OCI image layout packed as a tar (an "OCI archive", e.g. from `skopeo copy
//! ... oci-archive:x.tar` or `docker buildx --output type=oci`) for sites without a registry.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use cairn_compose::ImageRef;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::oci::{Descriptor, Index};
use super::store::{store_image, ImageInfo};
use super::{fetch_small, BlobSource, BlobStream, ImageError, ProgressFn};
use crate::containerd::Containerd;

/// Annotation naming a manifest in an OCI layout's `index.json` (a tag or a full name).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and nerdctl write with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Import the image in the OCI archive at `path` as image record `name` (normalized like a
/// reference: `cairn/web:v1` becomes `docker.io/cairn/web:v1`). When `index.json` lists several
/// images, the one annotated with `name` (or its tag) is taken. Blobs already present are skipped.
///
/// # Errors
/// [`ImageError::Archive`] for an unusable archive, digest, document and containerd errors.
#[tracing::instrument(skip(ctr, progress), fields(path = %path.display(), namespace = ctr.namespace()))]
pub async fn import_oci_archive(
    ctr: &Containerd,
    path: &Path,
    name: &str,
    progress: ProgressFn<'_>,
) -> Result<ImageInfo, ImageError> {
    let image = ImageRef::parse(name).map_err(|reason| ImageError::Reference {
        reference: name.to_string(),
        reason,
    })?;
    let archive = OciArchive::open(path).await?;
    let top = archive.choose(&image).await?;
    let bytes = fetch_small(&archive, &top, "manifest").await?;
    store_image(ctr, &archive, &image.to_string(), top, bytes, progress).await
}

/// An OCI archive with the position of every file in it.
struct OciArchive {
    path: PathBuf,
    files: HashMap<String, (u64, u64)>,
}

impl OciArchive {
    async fn open(path: &Path) -> Result<OciArchive, ImageError> {
        let owned = path.to_path_buf();
        let files = tokio::task::spawn_blocking(move || scan_tar(&owned))
            .await
            .map_err(|e| ImageError::Archive {
                path: path.to_path_buf(),
                reason: format!("scan task failed: {e}"),
            })??;
        if !files.contains_key("oci-layout") || !files.contains_key("index.json") {
            return Err(ImageError::Archive {
                path: path.to_path_buf(),
                reason: "no oci-layout and index.json at the top; it is not an OCI archive (docker save archives are not supported)".into(),
            });
        }
        Ok(OciArchive {
            path: path.to_path_buf(),
            files,
        })
    }

    fn error(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Archive {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The `index.json` entry to import for `image`.
    async fn choose(&self, image: &ImageRef) -> Result<Descriptor, ImageError> {
        let (pos, size) = self.files["index.json"];
        if size > 8 << 20 {
            return Err(self.error("index.json is larger than 8 MiB"));
        }
        let mut file =
            tokio::fs::File::open(&self.path)
                .await
                .map_err(|source| ImageError::Io {
                    path: self.path.clone(),
                    source,
                })?;
        file.seek(SeekFrom::Start(pos))
            .await
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })?;
        let mut bytes = vec![0; size as usize];
        file.read_exact(&mut bytes)
            .await
            .map_err(|source| ImageError::Io {
                path: self.path.clone(),
                source,
            })?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("bad index.json: {e}")))?;
        let full = image.to_string();
        let named = index.manifests.iter().find(|d| {
            let ann = |k: &str| d.annotations.get(k).map(String::as_str);
            ann(CONTAINERD_NAME) == Some(full.as_str())
                || ann(REF_NAME) == Some(full.as_str())
                || (ann(REF_NAME).is_some() && ann(REF_NAME) == image.tag.as_deref())
        });
        match (named, index.manifests.as_slice()) {
            (Some(d), _) => Ok(d.clone()),
            (None, [only]) => Ok(only.clone()),
            (None, []) => Err(self.error("index.json lists no images")),
            (None, many) => {
                let names: Vec<String> = many
                    .iter()
                    .filter_map(|d| d.annotations.get(REF_NAME).cloned())
                    .collect();
                Err(self.error(format!("index.json lists {} images and none is named {full:?} (names: {names:?}); pass one of them", many.len())))
            }
        }
    }
}

/// Map each regular file in the tar to (data offset, size).
fn scan_tar(path: &Path) -> Result<HashMap<String, (u64, u64)>, ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in archive.entries_with_seek().map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(io)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        files.insert(name, (entry.raw_file_position(), entry.size()));
    }
    Ok(files)
}

impl BlobSource for OciArchive {
    async fn open_blob(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<(u64, BlobStream), ImageError> {
        let Some((algorithm, hex)) = desc.digest.split_once(':') else {
            return Err(self.error(format!("bad digest {:?}", desc.digest)));
        };
        let member = format!("blobs/{algorithm}/{hex}");
        let &(pos, size) = self
            .files
            .get(&member)
            .ok_or_else(|| self.error(format!("{member} is missing")))?;
        if size != desc.size {
            return Err(self.error(format!(
                "{member} has {size} bytes, the descriptor says {}",
                desc.size
            )));
        }
        let path = self.path.clone();
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
        let offset = offset.min(size);
        file.seek(SeekFrom::Start(pos + offset))
            .await
            .map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
        let remaining = size - offset;
        let stream = futures::stream::try_unfold(
            (file, remaining, path),
            |(mut file, remaining, path)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                let mut buf = vec![0; remaining.min(1 << 20) as usize];
                file.read_exact(&mut buf)
                    .await
                    .map_err(|source| ImageError::Io {
                        path: path.clone(),
                        source,
                    })?;
                let left = remaining - buf.len() as u64;
                Ok(Some((buf, (file, left, path))))
            },
        );
        Ok((offset, stream.boxed()))
    }
}
