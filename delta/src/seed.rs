//! Local seeds: files or block devices the device already has (running root slot, UKIs), cut
//! into chunks the same way as the target so their chunks can be copied instead of fetched.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::chunking::{for_each_chunk, ChunkParams};
use crate::Index;

/// Where a chunk can be read locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedLocation {
    /// Index into [`SeedMap::seeds`].
    pub seed: usize,
    /// Offset of the chunk in that seed.
    pub offset: u64,
    /// Length of the chunk.
    pub len: u32,
}

/// Chunk hash → a local place holding those bytes.
///
/// Built by streaming each seed once (read-only, never loaded whole). Seeds that cannot be opened
/// are skipped with a warning; a read error part way keeps the chunks seen so far. Nothing here is
/// trusted: [`reconstruct`](crate::reconstruct) re-hashes every chunk it copies from a seed.
#[derive(Debug, Clone, Default)]
pub struct SeedMap {
    seeds: Vec<PathBuf>,
    chunks: HashMap<[u8; 32], SeedLocation>,
    scanned_bytes: u64,
}

impl SeedMap {
    /// A map with no seeds: every chunk will be fetched.
    pub fn empty() -> SeedMap {
        SeedMap::default()
    }

    /// Scans `seeds` with the chunker parameters of `target`, keeping only chunks that `target`
    /// needs (so memory stays proportional to the target, not to the seeds). Blocking: call it
    /// from `spawn_blocking` in async code.
    pub fn scan_for(target: &Index, seeds: &[PathBuf]) -> SeedMap {
        let wanted: std::collections::HashSet<[u8; 32]> =
            target.chunks.iter().map(|c| c.hash).collect();
        Self::scan_filtered(seeds, target.params, |hash| wanted.contains(hash))
    }

    /// Scans `seeds` with `params`, keeping every chunk. Blocking.
    pub fn scan(seeds: &[PathBuf], params: ChunkParams) -> SeedMap {
        Self::scan_filtered(seeds, params, |_| true)
    }

    fn scan_filtered(
        seeds: &[PathBuf],
        params: ChunkParams,
        keep: impl Fn(&[u8; 32]) -> bool,
    ) -> SeedMap {
        let mut map = SeedMap::default();
        for path in seeds {
            let span = tracing::info_span!("scan_seed", seed = %path.display());
            let _enter = span.enter();
            let file = match File::open(path) {
                Ok(file) => file,
                Err(error) => {
                    tracing::warn!(%error, "skipping seed that cannot be opened; its chunks will be downloaded");
                    continue;
                }
            };
            let seed = map.seeds.len();
            map.seeds.push(path.clone());
            let started = std::time::Instant::now();
            let mut bytes = 0u64;
            let mut kept = 0usize;
            let result = for_each_chunk(BufReader::with_capacity(1 << 20, file), params, |cut| {
                let len = cut.data.len() as u32;
                bytes = cut.offset + u64::from(len);
                if keep(&cut.hash) {
                    map.chunks.entry(cut.hash).or_insert_with(|| {
                        kept += 1;
                        SeedLocation {
                            seed,
                            offset: cut.offset,
                            len,
                        }
                    });
                }
            });
            map.scanned_bytes += bytes;
            if let Err(error) = result {
                tracing::warn!(%error, scanned = bytes, "seed read failed part way; using the chunks read so far");
            }
            tracing::debug!(
                bytes,
                kept,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "scanned seed"
            );
        }
        map
    }

    /// Where a chunk with this SHA-256 can be read locally, if anywhere.
    pub fn get(&self, hash: &[u8; 32]) -> Option<SeedLocation> {
        self.chunks.get(hash).copied()
    }

    /// The seeds that could be opened, in the order given; [`SeedLocation::seed`] indexes this.
    pub fn seeds(&self) -> &[PathBuf] {
        &self.seeds
    }

    /// Path of seed number `seed`.
    pub fn seed_path(&self, seed: usize) -> &Path {
        &self.seeds[seed]
    }

    /// Distinct chunks known.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Total bytes read from all seeds while scanning.
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned_bytes
    }
}
