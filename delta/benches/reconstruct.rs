//! Delta download benchmark on a synthetic 64 MiB file with five edits (insertions, a deletion,
//! changes) against an unedited seed. Prints the share of bytes that would cross the network and
//! the time to reconstruct the file, each against a baseline from the same run: the full size,
//! and a plain `copy + fsync` of the same target file.
//!
//! `cargo bench -p cairn-delta` (`CAIRN_BENCH_MIB=256` for another size).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_delta::{plan_stats, reconstruct, Index, RangeFetcher, ReconstructOptions, SeedMap};

/// In-memory stand-in for central, counting what it serves.
struct MemFetcher {
    data: Vec<u8>,
    fetched: u64,
}

impl RangeFetcher for MemFetcher {
    type Error = std::io::Error;

    async fn fetch(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, std::io::Error> {
        self.fetched += len;
        Ok(self.data[offset as usize..(offset + len) as usize].to_vec())
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Five edits spread through the file: +1000 bytes, -5000 bytes, 4 KiB changed, +100 KiB, 1 byte changed.
fn edited(seed: &[u8]) -> Vec<u8> {
    let mib = 1024 * 1024;
    let n = seed.len();
    let mut out = Vec::with_capacity(n + 200 * 1024);
    let (a, b, c, d, e) = (n / 8, n * 5 / 16, n / 2, n * 11 / 16, n * 15 / 16);
    out.extend_from_slice(&seed[..a]);
    out.extend_from_slice(&random_bytes(11, 1000));
    out.extend_from_slice(&seed[a..b]);
    out.extend_from_slice(&seed[b + 5000..c]);
    out.extend_from_slice(&random_bytes(12, 4096));
    out.extend_from_slice(&seed[c + 4096..d]);
    out.extend_from_slice(&random_bytes(13, 100 * 1024));
    out.extend_from_slice(&seed[d..e]);
    out.push(seed[e] ^ 0x55);
    out.extend_from_slice(&seed[e + 1..]);
    assert!(out.len() > mib);
    out
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn plain_copy(from: &Path, to: &Path) -> Duration {
    let started = Instant::now();
    std::fs::copy(from, to).unwrap();
    std::fs::File::open(to).unwrap().sync_all().unwrap();
    started.elapsed()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let size_mib: usize = std::env::var("CAIRN_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir_in(
        std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .unwrap();
    let seed = random_bytes(1, size_mib * 1024 * 1024);
    let target = edited(&seed);
    let seed_path = dir.path().join("seed.img");
    let target_path = dir.path().join("target.raucb");
    write_synced(&seed_path, &seed);
    write_synced(&target_path, &target);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let started = Instant::now();
    let index = Index::build_file(&target_path).unwrap();
    let index_time = started.elapsed();
    let encoded = index.encode().len();

    let started = Instant::now();
    let seeds = SeedMap::scan_for(&index, std::slice::from_ref(&seed_path));
    let scan_time = started.elapsed();
    let plan = plan_stats(&index, &seeds);

    // Baseline and delta alternately, best of three each, so cache state is comparable.
    let mut copy_best = Duration::MAX;
    let mut delta_best = Duration::MAX;
    let mut fetched = 0;
    for round in 0..3 {
        let copy_path = dir.path().join(format!("copy-{round}"));
        copy_best = copy_best.min(plain_copy(&target_path, &copy_path));
        std::fs::remove_file(&copy_path).unwrap();

        let dest = dir.path().join(format!("out-{round}.raucb"));
        let mut fetcher = MemFetcher {
            data: target.clone(),
            fetched: 0,
        };
        let started = Instant::now();
        let done = runtime
            .block_on(reconstruct(
                &index,
                &index.sha256,
                &seeds,
                &mut fetcher,
                &dest,
                &ReconstructOptions::default(),
                |_| {},
            ))
            .unwrap();
        delta_best = delta_best.min(started.elapsed());
        assert_eq!(done.fetched, fetcher.fetched);
        fetched = done.fetched;
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            target,
            "reconstruction differs"
        );
        std::fs::remove_file(&dest).unwrap();
    }
    assert_eq!(fetched, plan.bytes_to_fetch);

    println!("cairn-delta: {size_mib} MiB seed, target {:.2} MiB with 5 edits, {} chunks (avg {:.0} KiB), index {} bytes", mib(index.size), index.chunks.len(), index.size as f64 / index.chunks.len() as f64 / 1024.0, encoded);
    println!(
        "  fetched over network   {:>8.2} MiB = {:.4} of full size ({} of {} chunks)",
        mib(fetched),
        fetched as f64 / index.size as f64,
        plan.chunks_to_fetch,
        index.chunks.len()
    );
    println!(
        "  copied from seed       {:>8.2} MiB",
        mib(plan.bytes_from_seeds)
    );
    println!(
        "  index build (central)  {:>8.1} ms  ({:.0} MiB/s)",
        index_time.as_secs_f64() * 1e3,
        mib(index.size) / index_time.as_secs_f64()
    );
    println!(
        "  seed scan (device)     {:>8.1} ms  ({:.0} MiB/s)",
        scan_time.as_secs_f64() * 1e3,
        mib(seed.len() as u64) / scan_time.as_secs_f64()
    );
    println!(
        "  plain copy + fsync     {:>8.1} ms  (baseline, best of 3)",
        copy_best.as_secs_f64() * 1e3
    );
    println!(
        "  reconstruct            {:>8.1} ms  = {:.2}x plain copy (best of 3)",
        delta_best.as_secs_f64() * 1e3,
        delta_best.as_secs_f64() / copy_best.as_secs_f64()
    );
    println!(
        "  scan + reconstruct     {:>8.1} ms  = {:.2}x plain copy",
        (scan_time + delta_best).as_secs_f64() * 1e3,
        (scan_time + delta_best).as_secs_f64() / copy_best.as_secs_f64()
    );
}
