//! Content-defined chunking parameters and the one place that runs the chunker.

use std::io::Read;

use fastcdc::v2020::StreamCDC;
use sha2::{Digest, Sha256};

/// Smallest chunk the chunker cuts (except the last chunk of a file), in bytes.
pub const MIN_CHUNK: u32 = 16 * 1024;
/// Average chunk size the chunker aims for, in bytes.
pub const AVG_CHUNK: u32 = 64 * 1024;
/// Largest chunk the chunker cuts, in bytes.
pub const MAX_CHUNK: u32 = 256 * 1024;

/// FastCDC 2020 size parameters. Seeds must be chunked with the same parameters as the target
/// for their chunks to match, so they travel inside every [`Index`](crate::Index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkParams {
    /// Minimum chunk length (the last chunk of a file may be shorter).
    pub min: u32,
    /// Target average chunk length.
    pub avg: u32,
    /// Maximum chunk length.
    pub max: u32,
}

impl ChunkParams {
    /// The parameters cairn uses for OS update bundles: [`MIN_CHUNK`], [`AVG_CHUNK`],
    /// [`MAX_CHUNK`].
    pub const DEFAULT: ChunkParams = ChunkParams {
        min: MIN_CHUNK,
        avg: AVG_CHUNK,
        max: MAX_CHUNK,
    };

    /// Whether the chunker accepts these parameters (it panics on others): within the FastCDC
    /// 2020 limits and `min <= avg <= max`.
    pub fn is_valid(&self) -> bool {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
    }
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One chunk as the chunker saw it, with its data.
pub(crate) struct CutChunk {
    pub offset: u64,
    pub hash: [u8; 32],
    pub data: Vec<u8>,
}

/// Streams `reader` through the chunker, calling `visit` for each chunk in order. Reads at most
/// `params.max` bytes ahead; never holds the whole input.
pub(crate) fn for_each_chunk<R: Read>(
    reader: R,
    params: ChunkParams,
    mut visit: impl FnMut(CutChunk),
) -> std::io::Result<()> {
    debug_assert!(params.is_valid());
    for chunk in StreamCDC::new(reader, params.min, params.avg, params.max) {
        let chunk = chunk.map_err(std::io::Error::from)?;
        let hash: [u8; 32] = Sha256::digest(&chunk.data).into();
        visit(CutChunk {
            offset: chunk.offset,
            hash,
            data: chunk.data,
        });
    }
    Ok(())
}
