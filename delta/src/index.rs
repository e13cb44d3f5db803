//! The chunk index of one file: its size, whole-file SHA-256 and content-defined chunks, with a
//! compact binary encoding that is validated on decode (it comes from the network).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use cairn_io::PathContext;
use sha2::{Digest, Sha256};

use crate::chunking::{for_each_chunk, ChunkParams};
use crate::DeltaError;

/// First bytes of every encoded index.
const MAGIC: &[u8; 8] = b"CAIRNIDX";
/// Encoding version written by [`Index::encode`]; [`Index::decode`] accepts only this one.
const VERSION: u32 = 1;
/// Header: magic, version, min/avg/max, size, sha256, chunk count.
const HEADER_LEN: usize = 8 + 4 + 3 * 4 + 8 + 32 + 8;
/// Per chunk: length (u32 LE) and SHA-256.
const CHUNK_RECORD_LEN: usize = 4 + 32;
/// Most chunks an index may hold: 4 Mi chunks of at least 16 KiB is 64 GiB, far above any bundle,
/// and bounds what a hostile index can make the decoder allocate (~200 MiB worst case is refused
/// earlier by the length check: the count must fit in the bytes actually received).
pub const MAX_CHUNKS: u64 = 4 * 1024 * 1024;

/// One content-defined chunk of an indexed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Offset of the chunk's first byte in the file.
    pub offset: u64,
    /// Length in bytes (at most the index's `params.max`).
    pub len: u32,
    /// SHA-256 of the chunk's bytes.
    pub hash: [u8; 32],
}

impl Chunk {
    /// One past the chunk's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The chunk index of one file. Chunks are contiguous, in order, and cover exactly `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// File size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// The chunker parameters the file was cut with (seeds must be cut the same way).
    pub params: ChunkParams,
    /// The chunks, in file order.
    pub chunks: Vec<Chunk>,
}

impl Index {
    /// Indexes everything `reader` yields with the default [`ChunkParams`], streaming (at most one
    /// maximum-size chunk is held in memory).
    pub fn build<R: Read>(reader: R) -> std::io::Result<Index> {
        Self::build_with(reader, ChunkParams::DEFAULT)
    }

    /// Like [`Index::build`] with explicit chunker parameters.
    ///
    /// # Panics
    /// If `params` is not [`ChunkParams::is_valid`].
    pub fn build_with<R: Read>(reader: R, params: ChunkParams) -> std::io::Result<Index> {
        assert!(params.is_valid(), "invalid chunk parameters {params:?}");
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        for_each_chunk(reader, params, |cut| {
            whole.update(&cut.data);
            let len = cut.data.len() as u32;
            size = cut.offset + u64::from(len);
            chunks.push(Chunk {
                offset: cut.offset,
                len,
                hash: cut.hash,
            });
        })?;
        Ok(Index {
            size,
            sha256: whole.finalize().into(),
            params,
            chunks,
        })
    }

    /// Indexes the file (or block device) at `path`, streaming it from disk.
    pub fn build_file(path: &Path) -> Result<Index, DeltaError> {
        let span = tracing::info_span!("index_file", path = %path.display());
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let file = File::open(path).at("open", path)?;
        let index = Self::build(file).at("read", path)?;
        tracing::debug!(
            size = index.size,
            chunks = index.chunks.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "indexed file"
        );
        Ok(index)
    }

    /// The whole-file SHA-256 as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// Compact binary form: `CAIRNIDX`, version, chunker parameters, size, SHA-256, chunk count,
    /// then per chunk its length and SHA-256 (offsets follow from the lengths). All integers are
    /// little-endian. About 36 bytes per 64 KiB of file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.chunks.len() * CHUNK_RECORD_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.params.min.to_le_bytes());
        out.extend_from_slice(&self.params.avg.to_le_bytes());
        out.extend_from_slice(&self.params.max.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(&chunk.len.to_le_bytes());
            out.extend_from_slice(&chunk.hash);
        }
        out
    }

    /// Parses and fully validates an encoded index: magic and version, sane chunker parameters,
    /// a chunk count within [`MAX_CHUNKS`] and matching the bytes present, every chunk length
    /// within `1..=max` (and at least `min` except the last), chunks covering exactly `size`, and
    /// no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Index, DeltaError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(8, "magic")?;
        if magic != MAGIC {
            return Err(DeltaError::invalid("bad magic (not a cairn chunk index)"));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(DeltaError::invalid(format!(
                "unsupported version {version} (this build reads version {VERSION})"
            )));
        }
        let params = ChunkParams {
            min: r.u32("min")?,
            avg: r.u32("avg")?,
            max: r.u32("max")?,
        };
        if !params.is_valid() {
            return Err(DeltaError::invalid(format!(
                "chunker parameters out of range: {params:?}"
            )));
        }
        let size = r.u64("size")?;
        let sha256: [u8; 32] = r.take(32, "sha256")?.try_into().expect("32 bytes");
        let count = r.u64("chunk count")?;
        if count > MAX_CHUNKS {
            return Err(DeltaError::invalid(format!(
                "{count} chunks exceeds the cap of {MAX_CHUNKS}"
            )));
        }
        let remaining = (bytes.len() - r.pos) as u64;
        if count.checked_mul(CHUNK_RECORD_LEN as u64) != Some(remaining) {
            return Err(DeltaError::invalid(format!(
                "{count} chunks need {} bytes of chunk records but {remaining} bytes follow the header",
                count.saturating_mul(CHUNK_RECORD_LEN as u64)
            )));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut offset = 0u64;
        for i in 0..count {
            let len = r.u32("chunk length")?;
            let hash: [u8; 32] = r.take(32, "chunk hash")?.try_into().expect("32 bytes");
            if len == 0 || len > params.max {
                return Err(DeltaError::invalid(format!(
                    "chunk {i} has length {len}, outside 1..={}",
                    params.max
                )));
            }
            if len < params.min && i + 1 != count {
                return Err(DeltaError::invalid(format!(
                    "chunk {i} has length {len}, below the minimum {} and it is not the last chunk",
                    params.min
                )));
            }
            chunks.push(Chunk { offset, len, hash });
            offset += u64::from(len);
        }
        if offset != size {
            return Err(DeltaError::invalid(format!(
                "chunks cover {offset} bytes but the index says the file has {size}"
            )));
        }
        Ok(Index {
            size,
            sha256,
            params,
            chunks,
        })
    }
}

/// Bounds-checked little-endian reader over the encoded bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DeltaError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                DeltaError::invalid(format!(
                    "truncated at byte {} while reading {what}",
                    self.pos
                ))
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{random_bytes, with_edits};

    fn sample() -> (Vec<u8>, Index) {
        let data = random_bytes(1, 3 * 1024 * 1024 + 123);
        let index = Index::build(&data[..]).unwrap();
        (data, index)
    }

    #[test]
    fn build_covers_the_file_with_bounded_contiguous_chunks() {
        let (data, index) = sample();
        assert_eq!(index.size, data.len() as u64);
        assert_eq!(index.sha256[..], Sha256::digest(&data)[..]);
        let mut offset = 0;
        for (i, c) in index.chunks.iter().enumerate() {
            assert_eq!(c.offset, offset);
            assert!(c.len <= crate::MAX_CHUNK);
            assert!(c.len >= crate::MIN_CHUNK || i + 1 == index.chunks.len());
            assert_eq!(
                c.hash[..],
                Sha256::digest(&data[c.offset as usize..c.end() as usize])[..]
            );
            offset = c.end();
        }
        assert_eq!(offset, index.size);
        // ~64 KiB average.
        assert!(
            (20..=150).contains(&index.chunks.len()),
            "{} chunks",
            index.chunks.len()
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let (_, index) = sample();
        let bytes = index.encode();
        assert_eq!(
            bytes.len(),
            HEADER_LEN + index.chunks.len() * CHUNK_RECORD_LEN
        );
        assert_eq!(Index::decode(&bytes).unwrap(), index);
        let empty = Index::build(&[][..]).unwrap();
        assert_eq!(empty.size, 0);
        assert!(empty.chunks.is_empty());
        assert_eq!(Index::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn build_file_matches_build_and_reports_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (data, index) = sample();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(Index::build_file(&path).unwrap(), index);
        let err = Index::build_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, DeltaError::File(_)), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn chunk_boundaries_resynchronise_after_an_insertion() {
        let data = random_bytes(2, 4 * 1024 * 1024);
        let edited = with_edits(&data);
        let a = Index::build(&data[..]).unwrap();
        let b = Index::build(&edited[..]).unwrap();
        let known: std::collections::HashSet<_> = a.chunks.iter().map(|c| c.hash).collect();
        let shared = b.chunks.iter().filter(|c| known.contains(&c.hash)).count();
        assert!(
            shared * 10 >= b.chunks.len() * 8,
            "{shared} of {} shared",
            b.chunks.len()
        );
    }

    fn rejects(bytes: &[u8], needle: &str) {
        match Index::decode(bytes) {
            Err(DeltaError::InvalidIndex { reason }) => {
                assert!(
                    reason.contains(needle),
                    "reason {reason:?} lacks {needle:?}"
                )
            }
            other => panic!("expected InvalidIndex containing {needle:?}, got {other:?}"),
        }
    }

    fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    const SIZE_AT: usize = 24;
    const COUNT_AT: usize = 64;

    #[test]
    fn decode_rejects_corrupt_and_hostile_input() {
        let (_, index) = sample();
        let good = index.encode();
        let first_len_at = HEADER_LEN;

        for cut in [
            0,
            5,
            8,
            12,
            30,
            HEADER_LEN - 1,
            HEADER_LEN + 3,
            good.len() - 1,
        ] {
            assert!(
                Index::decode(&good[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        rejects(b"", "truncated");
        let mut b = good.clone();
        b[0] = b'X';
        rejects(&b, "magic");
        let mut b = good.clone();
        set_u32(&mut b, 8, 2);
        rejects(&b, "version");
        let mut b = good.clone();
        set_u32(&mut b, 12, 0);
        rejects(&b, "parameters");
        let mut b = good.clone();
        set_u32(&mut b, 20, u32::MAX);
        rejects(&b, "parameters");
        let mut b = good.clone();
        b.push(0);
        rejects(&b, "follow the header");
        let mut b = good.clone();
        set_u64(&mut b, COUNT_AT, MAX_CHUNKS + 1);
        rejects(&b, "cap");
        let mut b = good.clone();
        set_u64(&mut b, COUNT_AT, u64::MAX);
        rejects(&b, "cap");
        let mut b = good[..HEADER_LEN].to_vec();
        set_u64(&mut b, COUNT_AT, MAX_CHUNKS); // huge count, no records: no giant allocation
        rejects(&b, "follow the header");
        let mut b = good.clone();
        set_u32(&mut b, first_len_at, 0);
        rejects(&b, "outside");
        let mut b = good.clone();
        set_u32(&mut b, first_len_at, crate::MAX_CHUNK + 1);
        rejects(&b, "outside");
        let mut b = good.clone();
        set_u32(&mut b, first_len_at, 100);
        rejects(&b, "below the minimum");
        let mut b = good.clone();
        set_u64(&mut b, SIZE_AT, index.size + 1);
        rejects(&b, "cover");
        let mut b = good.clone();
        set_u64(&mut b, SIZE_AT, u64::MAX);
        rejects(&b, "cover");
    }
}
