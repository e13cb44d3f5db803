//! The on-disk key blob: the TPM-wrapped device key, useless without the TPM that made it.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! "CAIRNTPMKEY1"                 12 bytes magic, the trailing "1" is the format version
//! u16 len, len bytes             TPM2B_PUBLIC  (marshalled TPMT_PUBLIC)
//! u16 len, len bytes             TPM2B_PRIVATE (the TPM-encrypted private area)
//! ```
//!
//! Nothing may follow. These are the TPM's own TPM2B encodings, the same bytes `tpm2_create -u -r`
//! writes.

use std::path::Path;

use cairn_io::{FileError, PathContext};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::TpmError;

/// Magic and version at the start of every blob.
pub(crate) const MAGIC: &[u8; 12] = b"CAIRNTPMKEY1";
/// Blobs larger than this are not ours (a P-256 key blob is under 300 bytes).
const MAX_BLOB_LEN: u64 = 16 * 1024;

/// Why bytes are not a valid blob: the framing shared by the key blob and the sealed blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum BlobError {
    /// The magic at the start is not the format's.
    #[error("missing the {0} header")]
    MissingHeader(&'static str),
    /// A length prefix is cut off.
    #[error("truncated before the {0} length")]
    TruncatedLength(&'static str),
    /// An area is shorter than its length prefix announces.
    #[error("truncated {what}: {announced} bytes announced, {present} present")]
    Truncated {
        /// The area.
        what: &'static str,
        /// Its announced length.
        announced: usize,
        /// The bytes left.
        present: usize,
    },
    /// Bytes follow the last area.
    #[error("{0} unexpected bytes after the private area")]
    TrailingBytes(usize),
    /// The public or the private area is empty.
    #[error("empty public or private area")]
    EmptyArea,
    /// The public area is not a TPMT_PUBLIC.
    #[error("public area does not unmarshal: {0}")]
    PublicArea(tss_esapi::Error),
    /// The private area is not a TPM2B_PRIVATE.
    #[error("private area is invalid: {0}")]
    PrivateArea(tss_esapi::Error),
    /// The public area cannot be marshalled (never for one the TPM made or that was parsed).
    #[error("cannot marshal the public area: {0}")]
    Marshal(tss_esapi::Error),
    /// An area is longer than a TPM2B's 16-bit length.
    #[error("{0} bytes do not fit a TPM2B")]
    TooLong(usize),
}

/// The public and TPM-wrapped private parts of a key created under the owner primary.
#[derive(Debug, Clone)]
pub(crate) struct KeyBlob {
    /// Public area (algorithm, attributes, public point).
    pub(crate) public: Public,
    /// Private area, encrypted by the TPM under the parent key.
    pub(crate) private: Private,
}

impl KeyBlob {
    /// Serialize to the blob format.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, BlobError> {
        let public = self.public.marshall().map_err(BlobError::Marshal)?;
        let private = self.private.value();
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + public.len() + private.len());
        out.extend_from_slice(MAGIC);
        push_tpm2b(&mut out, &public)?;
        push_tpm2b(&mut out, private)?;
        Ok(out)
    }

    /// Parse the blob format; the error says what is wrong (for [`TpmError::BadBlob`]).
    pub(crate) fn decode(bytes: &[u8]) -> Result<KeyBlob, BlobError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(BlobError::MissingHeader("CAIRNTPMKEY1"))?;
        let (public, private) = take_object_tail(rest)?;
        Ok(KeyBlob { public, private })
    }

    /// Read and parse the blob at `path`; `Ok(None)` when the file does not exist.
    pub(crate) fn read(path: &Path) -> Result<Option<KeyBlob>, TpmError> {
        read_blob_file(
            path,
            KeyBlob::decode,
            |source| TpmError::ReadBlob {
                path: path.to_path_buf(),
                source,
            },
            |reason| bad_blob(path, reason),
        )
    }

    /// Write the blob to `path` atomically: a 0600 temp file beside it, fsync, rename, fsync dir
    /// and its file system ([`write_durably`]).
    pub(crate) fn write_atomic(&self, path: &Path) -> Result<(), TpmError> {
        let bytes = self
            .encode()
            .map_err(|reason| TpmError::UnexpectedTpmOutput {
                what: "the new key's public area",
                reason: reason.to_string(),
            })?;
        write_durably(path, &bytes).map_err(|source| TpmError::WriteBlob {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn bad_blob(path: &Path, reason: String) -> TpmError {
    TpmError::BadBlob {
        path: path.to_path_buf(),
        reason,
    }
}

pub(crate) fn push_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), BlobError> {
    let len = u16::try_from(bytes.len()).map_err(|_| BlobError::TooLong(bytes.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

pub(crate) fn take_tpm2b<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), BlobError> {
    let (len, rest) = bytes
        .split_first_chunk::<2>()
        .ok_or(BlobError::TruncatedLength(what))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(BlobError::Truncated {
            what,
            announced: len,
            present: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

/// Writes `bytes` to `path` with mode 0600 so that a power cut leaves the old or the new file
/// ([`cairn_io::write_atomic`]), then syncs the file system too ([`sync_parent`]).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    cairn_io::write_atomic(path, bytes, 0o600)?;
    sync_parent(path).at("sync the file system holding", path)
}

/// Make a rename or delete in `path`'s directory survive a power cut: fsync the directory, then
/// `syncfs` its file system. Why both: on the vfat ESP (where sealed blobs live) a directory fsync
/// does not write the directory entry and FAT blocks the rename changed; a QEMU power cut showed a
/// renamed blob lost and the FAT left inconsistent. `syncfs` writes every dirty block of that file
/// system and flushes the disk cache.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::fs::File::open(dir)?;
    dir.sync_all()?;
    rustix::fs::syncfs(&dir)?;
    Ok(())
}

/// Parse the end shared by every blob format: length-prefixed TPM2B_PUBLIC and TPM2B_PRIVATE,
/// both non-empty, with nothing after them.
pub(crate) fn take_object_tail(rest: &[u8]) -> Result<(Public, Private), BlobError> {
    let (public, rest) = take_tpm2b(rest, "public area")?;
    let (private, rest) = take_tpm2b(rest, "private area")?;
    if !rest.is_empty() {
        return Err(BlobError::TrailingBytes(rest.len()));
    }
    if public.is_empty() || private.is_empty() {
        return Err(BlobError::EmptyArea);
    }
    let public = Public::unmarshall(public).map_err(BlobError::PublicArea)?;
    let private = Private::try_from(private).map_err(BlobError::PrivateArea)?;
    Ok((public, private))
}

/// Read and decode the blob file at `path` with `decode`; `Ok(None)` when it does not exist.
/// `unreadable` makes the error for a file that cannot be read, `bad` the one for a file that
/// is too large or does not decode.
pub(crate) fn read_blob_file<T, E: std::fmt::Display>(
    path: &Path,
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
    unreadable: impl FnOnce(std::io::Error) -> TpmError,
    bad: impl Fn(String) -> TpmError,
) -> Result<Option<T>, TpmError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(unreadable(source)),
    };
    if bytes.len() as u64 > MAX_BLOB_LEN {
        return Err(bad(format!("{} bytes is far too large", bytes.len())));
    }
    decode(&bytes)
        .map(Some)
        .map_err(|reason| bad(reason.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::structures::{
        EccParameter, EccPoint, EccScheme, HashScheme, PublicBuilder, PublicEccParametersBuilder,
    };

    fn sample() -> KeyBlob {
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(crate::key::signing_key_attributes().unwrap())
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(vec![7u8; 32]).unwrap(),
                EccParameter::try_from(vec![9u8; 32]).unwrap(),
            ))
            .build()
            .unwrap();
        KeyBlob {
            public,
            private: Private::try_from(vec![0xabu8; 126]).unwrap(),
        }
    }

    #[test]
    fn round_trips() {
        let blob = sample();
        let bytes = blob.encode().unwrap();
        assert!(bytes.starts_with(MAGIC));
        let back = KeyBlob::decode(&bytes).unwrap();
        assert_eq!(back.public, blob.public);
        assert_eq!(back.private, blob.private);
    }

    #[test]
    fn rejects_every_truncation_and_trailing_bytes() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(
                KeyBlob::decode(&bytes[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = KeyBlob::decode(&longer).unwrap_err();
        assert!(matches!(err, BlobError::TrailingBytes(1)), "{err}");
        assert_eq!(err.to_string(), "1 unexpected bytes after the private area");
    }

    #[test]
    fn rejects_garbage_and_wrong_magic() {
        assert!(KeyBlob::decode(b"hello world, not a key")
            .unwrap_err()
            .to_string()
            .contains("CAIRNTPMKEY1"));
        let mut bytes = sample().encode().unwrap();
        bytes[11] = b'2';
        assert!(KeyBlob::decode(&bytes).is_err());
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0x00, 0x04, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x00]);
        assert!(KeyBlob::decode(&garbage)
            .unwrap_err()
            .to_string()
            .contains("public area"));
    }

    #[test]
    fn writes_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        sample().write_atomic(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["device.key"], "no temp file is left");
        assert!(KeyBlob::read(&path).unwrap().is_some());
        assert!(KeyBlob::read(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn write_error_names_the_path() {
        let path = Path::new("/nonexistent-cairn-dir/device.key");
        let err = sample().write_atomic(path).unwrap_err();
        assert!(matches!(err, TpmError::WriteBlob { .. }));
        assert!(err
            .to_string()
            .contains("/nonexistent-cairn-dir/device.key"));
    }
}
