//! How much of a target the seeds cover, without reading or writing anything.

use crate::{Index, SeedMap};

/// Split of a target between seed copies and network fetches, as [`reconstruct`](crate::reconstruct)
/// would do it if every seed chunk verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanStats {
    /// Target size.
    pub total_bytes: u64,
    /// Bytes that would be copied from seeds.
    pub bytes_from_seeds: u64,
    /// Bytes that would cross the network.
    pub bytes_to_fetch: u64,
    /// Chunks copied from seeds.
    pub chunks_from_seeds: usize,
    /// Chunks fetched.
    pub chunks_to_fetch: usize,
}

impl PlanStats {
    /// `bytes_to_fetch / total_bytes` (0 for an empty target).
    pub fn fetch_fraction(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.bytes_to_fetch as f64 / self.total_bytes as f64
        }
    }
}

/// Counts what reconstructing `index` from `seeds` would copy locally and what it would fetch.
/// For measuring real bundles: `plan_stats(&Index::build_file(new)?, &SeedMap::scan_for(&index, &[old]))`.
pub fn plan_stats(index: &Index, seeds: &SeedMap) -> PlanStats {
    let mut stats = PlanStats {
        total_bytes: index.size,
        ..PlanStats::default()
    };
    for chunk in &index.chunks {
        if seeds.get(&chunk.hash).is_some() {
            stats.bytes_from_seeds += u64::from(chunk.len);
            stats.chunks_from_seeds += 1;
        } else {
            stats.bytes_to_fetch += u64::from(chunk.len);
            stats.chunks_to_fetch += 1;
        }
    }
    stats
}
