//! The one error type of `cairn-delta`.

use std::path::PathBuf;

use cairn_io::FileError;

/// What failed while indexing, decoding an index, scanning seeds or reconstructing a file.
///
/// Every variant names the file or offset involved; the message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// A file to index or write could not be opened, read or written.
    #[error("{0}; check that the path exists, is readable and the disk is healthy")]
    File(#[from] FileError),

    /// Bytes claiming to be an encoded [`Index`](crate::Index) are not a valid index.
    #[error("invalid chunk index: {reason}; the index came from an untrusted source or a different cairn-delta version — rebuild it on central")]
    InvalidIndex {
        /// What exactly is wrong with it.
        reason: String,
    },

    /// The index describes another file than the one the caller expects.
    #[error("chunk index describes a file with sha256 {index_sha256} ({index_size} bytes) but sha256 {expected_sha256} ({expected_size} bytes) was expected; central served the wrong index — retry, and report it if it persists")]
    IndexMismatch {
        /// Whole-file digest recorded in the index (hex).
        index_sha256: String,
        /// File size recorded in the index.
        index_size: u64,
        /// The digest the caller expects (hex).
        expected_sha256: String,
        /// The size the caller expects, or the index size when the caller gave none.
        expected_size: u64,
    },

    /// The fetcher could not deliver a byte range of the target.
    #[error("fetching bytes {offset}..{end} of the target failed: {source}; the download is resumable — retry later")]
    Fetch {
        /// First byte of the range.
        offset: u64,
        /// One past the last byte of the range.
        end: u64,
        /// The fetcher's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The fetcher delivered bytes that do not match the index (wrong length or hash).
    #[error("fetched chunk at offset {offset} ({len} bytes) does not match the index: {reason}; the source is corrupt or lying — nothing was written past the last verified chunk")]
    FetchedChunkMismatch {
        /// Offset of the chunk in the target.
        offset: u64,
        /// Length of the chunk according to the index.
        len: u64,
        /// Length or hash mismatch details.
        reason: String,
    },

    /// The reconstructed file does not hash to what the index and the caller expect.
    #[error("reconstructed {path} has sha256 {actual} but {expected} was expected; the partial file was deleted — retry the download from scratch")]
    FinalDigestMismatch {
        /// The partial file that was discarded.
        path: PathBuf,
        /// The digest of what was assembled (hex).
        actual: String,
        /// The expected digest (hex).
        expected: String,
    },

    /// A blocking disk task panicked or was cancelled by the runtime shutting down.
    #[error("disk worker for {path} stopped unexpectedly: {reason}; retry — the download resumes from its journal")]
    Worker {
        /// The file the worker was writing.
        path: PathBuf,
        /// The join error.
        reason: String,
    },
}

impl DeltaError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        DeltaError::InvalidIndex {
            reason: reason.into(),
        }
    }
}
