//! `cairn-delta`: download a large file (an OS update bundle) by fetching only the chunks a
//! device does not already hold — the cairn equivalent of RAUC adaptive updates / casync.
//!
//! - [`Index`]: central cuts the bundle into content-defined chunks (FastCDC, 16/64/256 KiB) and
//!   serves the index (size, whole-file SHA-256, per-chunk SHA-256).
//! - [`SeedMap`]: the device chunks its local copies of similar data (running root slot, UKIs)
//!   the same way and maps chunk hashes to where it has them.
//! - [`reconstruct`]: writes the target from seed chunks and fetched ranges into
//!   `<dest>.partial`, journalled so it resumes after a cut link or power loss, verifies every
//!   chunk and the whole file, and only then renames it to `<dest>`.

mod chunking;
mod error;
mod index;
mod plan;
mod reconstruct;
#[cfg(test)]
mod reconstruct_tests;
mod seed;
#[cfg(test)]
mod test_data;

pub use chunking::{ChunkParams, AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};
pub use error::DeltaError;
pub use index::{Chunk, Index, MAX_CHUNKS};
pub use plan::{plan_stats, PlanStats};
pub use reconstruct::{
    reconstruct, Progress, RangeFetcher, ReconstructOptions, DEFAULT_CHECKPOINT_BYTES,
    DEFAULT_MAX_FETCH_BYTES,
};
pub use seed::{SeedLocation, SeedMap};
