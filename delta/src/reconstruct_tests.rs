//! Tests of [`crate::reconstruct`]: seeds with edits, resume after failures and drops, fail
//! closed on lies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::test_data::{random_bytes, with_edits};
use crate::{
    plan_stats, reconstruct, DeltaError, Index, Progress, RangeFetcher, ReconstructOptions, SeedMap,
};

#[derive(Debug, thiserror::Error)]
#[error("link cut after {0} bytes")]
struct LinkCut(u64);

/// Serves ranges of `data`; can fail, hang or lie after some bytes.
struct MemFetcher {
    data: Vec<u8>,
    fetched: u64,
    calls: usize,
    fail_after: Option<u64>,
    hang_after: Option<u64>,
    flip_byte: bool,
    short: bool,
}

impl MemFetcher {
    fn new(data: &[u8]) -> Self {
        MemFetcher {
            data: data.to_vec(),
            fetched: 0,
            calls: 0,
            fail_after: None,
            hang_after: None,
            flip_byte: false,
            short: false,
        }
    }
}

impl RangeFetcher for MemFetcher {
    type Error = LinkCut;

    async fn fetch(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, LinkCut> {
        if self.fail_after.is_some_and(|n| self.fetched >= n) {
            return Err(LinkCut(self.fetched));
        }
        if self.hang_after.is_some_and(|n| self.fetched >= n) {
            std::future::pending::<()>().await;
        }
        self.calls += 1;
        let mut out = self.data[offset as usize..(offset + len) as usize].to_vec();
        self.fetched += len;
        if self.flip_byte {
            out[len as usize / 2] ^= 1;
        }
        if self.short {
            out.pop();
        }
        Ok(out)
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    target: Vec<u8>,
    index: Index,
    seeds: SeedMap,
}

impl Fixture {
    /// Target = `with_edits(seed)` when `seeded`, else an unrelated target and no seeds.
    fn new(len: usize, seeded: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let seed = random_bytes(7, len);
        let seed_path = dir.path().join("seed.img");
        std::fs::write(&seed_path, &seed).unwrap();
        let target = if seeded {
            with_edits(&seed)
        } else {
            random_bytes(8, len)
        };
        let index = Index::build(&target[..]).unwrap();
        let seeds = if seeded {
            SeedMap::scan_for(&index, &[seed_path])
        } else {
            SeedMap::empty()
        };
        Fixture {
            dir,
            target,
            index,
            seeds,
        }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("bundle.raucb")
    }

    async fn run(
        &self,
        fetcher: &mut MemFetcher,
        options: ReconstructOptions,
    ) -> Result<Progress, DeltaError> {
        reconstruct(
            &self.index,
            &self.index.sha256,
            &self.seeds,
            fetcher,
            &self.dest(),
            &options,
            |_| {},
        )
        .await
    }

    fn assert_complete(&self) {
        assert_eq!(
            std::fs::read(self.dest()).unwrap(),
            self.target,
            "dest differs from target"
        );
        assert!(!side(&self.dest(), ".partial").exists());
        assert!(!side(&self.dest(), ".journal").exists());
    }
}

fn side(dest: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", dest.display()))
}

fn small_steps() -> ReconstructOptions {
    ReconstructOptions {
        checkpoint_bytes: 1024 * 1024,
        max_fetch_bytes: 1024 * 1024,
    }
}

#[tokio::test]
async fn edited_target_fetches_only_the_edited_chunks() {
    let f = Fixture::new(8 * 1024 * 1024, true);
    let plan = plan_stats(&f.index, &f.seeds);
    let mut fetcher = MemFetcher::new(&f.target);
    let mut updates = Vec::new();
    let done = reconstruct(
        &f.index,
        &f.index.sha256,
        &f.seeds,
        &mut fetcher,
        &f.dest(),
        &Default::default(),
        |p| updates.push(p),
    )
    .await
    .unwrap();
    f.assert_complete();
    assert_eq!(done.fetched, fetcher.fetched);
    assert_eq!(done.fetched, plan.bytes_to_fetch);
    assert_eq!(done.from_seeds, plan.bytes_from_seeds);
    assert_eq!(done.done, f.target.len() as u64);
    // Three edits touch a few chunks each: well under 10% crosses the network, in few requests.
    assert!(
        done.fetched * 10 < f.target.len() as u64,
        "fetched {} of {}",
        done.fetched,
        f.target.len()
    );
    assert!(fetcher.calls <= 6, "{} fetch calls", fetcher.calls);
    assert!(updates.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(updates.last().unwrap().done, f.target.len() as u64);
}

#[tokio::test]
async fn resumes_after_a_cut_link_fetching_only_what_is_missing() {
    let f = Fixture::new(6 * 1024 * 1024, false);
    let mut first = MemFetcher::new(&f.target);
    first.fail_after = Some(3 * 1024 * 1024);
    let err = f.run(&mut first, small_steps()).await.unwrap_err();
    assert!(matches!(err, DeltaError::Fetch { .. }), "{err}");
    assert!(!f.dest().exists());

    let mut second = MemFetcher::new(&f.target);
    let done = f.run(&mut second, small_steps()).await.unwrap();
    f.assert_complete();
    assert!(
        done.resumed_from >= 2 * 1024 * 1024,
        "resumed from {}",
        done.resumed_from
    );
    // The failed run checkpointed before returning: nothing is fetched twice.
    assert_eq!(first.fetched + second.fetched, f.target.len() as u64);
}

#[tokio::test]
async fn resumes_after_the_future_is_dropped_mid_way() {
    let f = Fixture::new(6 * 1024 * 1024, false);
    let mut first = MemFetcher::new(&f.target);
    first.hang_after = Some(3 * 1024 * 1024 + 1);
    let dropped =
        tokio::time::timeout(Duration::from_millis(500), f.run(&mut first, small_steps())).await;
    assert!(dropped.is_err(), "the hanging fetch should have timed out");

    let mut second = MemFetcher::new(&f.target);
    let done = f.run(&mut second, small_steps()).await.unwrap();
    f.assert_complete();
    assert!(
        done.resumed_from >= 2 * 1024 * 1024,
        "resumed from {}",
        done.resumed_from
    );
    // At most one checkpoint interval plus one fetch range is fetched again.
    let opts = small_steps();
    assert!(
        first.fetched + second.fetched
            <= f.target.len() as u64 + opts.checkpoint_bytes + opts.max_fetch_bytes
    );
}

#[tokio::test]
async fn corrupted_partial_file_is_reverified_on_resume() {
    let f = Fixture::new(4 * 1024 * 1024, false);
    let mut first = MemFetcher::new(&f.target);
    first.fail_after = Some(3 * 1024 * 1024);
    f.run(&mut first, small_steps()).await.unwrap_err();
    // Flip a byte early in the partial file, as a bad disk would.
    let partial = side(&f.dest(), ".partial");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&partial, &bytes).unwrap();

    let mut second = MemFetcher::new(&f.target);
    let done = f.run(&mut second, small_steps()).await.unwrap();
    f.assert_complete();
    assert_eq!(done.resumed_from, 0);
}

#[tokio::test]
async fn lying_fetcher_fails_closed_then_an_honest_one_resumes() {
    let f = Fixture::new(2 * 1024 * 1024, false);
    for liar in [
        MemFetcher {
            flip_byte: true,
            ..MemFetcher::new(&f.target)
        },
        MemFetcher {
            short: true,
            ..MemFetcher::new(&f.target)
        },
    ] {
        let mut liar = liar;
        let err = f.run(&mut liar, small_steps()).await.unwrap_err();
        assert!(
            matches!(err, DeltaError::FetchedChunkMismatch { .. }),
            "{err}"
        );
        assert!(!f.dest().exists());
    }
    let mut honest = MemFetcher::new(&f.target);
    f.run(&mut honest, small_steps()).await.unwrap();
    f.assert_complete();
}

#[tokio::test]
async fn lying_index_digest_fails_closed_and_discards_the_partial() {
    let mut f = Fixture::new(1024 * 1024, false);
    f.index.sha256[0] ^= 1;
    let mut fetcher = MemFetcher::new(&f.target);
    let err = f.run(&mut fetcher, small_steps()).await.unwrap_err();
    assert!(
        matches!(err, DeltaError::FinalDigestMismatch { .. }),
        "{err}"
    );
    assert!(!f.dest().exists());
    assert!(!side(&f.dest(), ".partial").exists());
    assert!(!side(&f.dest(), ".journal").exists());
}

#[tokio::test]
async fn index_for_another_target_is_refused_before_touching_disk() {
    let f = Fixture::new(256 * 1024, false);
    let mut fetcher = MemFetcher::new(&f.target);
    let other = [0u8; 32];
    let err = reconstruct(
        &f.index,
        &other,
        &f.seeds,
        &mut fetcher,
        &f.dest(),
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DeltaError::IndexMismatch { .. }), "{err}");
    assert_eq!(fetcher.calls, 0);
    assert!(!side(&f.dest(), ".partial").exists());
}

#[tokio::test]
async fn missing_seed_is_skipped_and_changed_seed_chunks_are_fetched() {
    let mut f = Fixture::new(4 * 1024 * 1024, true);
    let seed_path = f.dir.path().join("seed.img");
    f.seeds = SeedMap::scan_for(
        &f.index,
        &[f.dir.path().join("no-such-seed"), seed_path.clone()],
    );
    assert_eq!(f.seeds.seeds(), std::slice::from_ref(&seed_path));
    let planned = plan_stats(&f.index, &f.seeds);
    assert!(planned.fetch_fraction() < 0.2, "{planned:?}");

    // The seed changes after the scan: its chunks no longer verify and are fetched instead.
    let mut changed = std::fs::read(&seed_path).unwrap();
    changed[100] ^= 0xff;
    std::fs::write(&seed_path, &changed).unwrap();
    let mut fetcher = MemFetcher::new(&f.target);
    let done = f.run(&mut fetcher, Default::default()).await.unwrap();
    f.assert_complete();
    assert!(done.fetched > planned.bytes_to_fetch);
    assert!(done.fetched < planned.bytes_to_fetch + 2 * u64::from(crate::MAX_CHUNK));
}

#[tokio::test]
async fn no_seeds_at_all_fetches_everything_and_empty_target_works() {
    let f = Fixture::new(512 * 1024, false);
    let mut fetcher = MemFetcher::new(&f.target);
    let done = f.run(&mut fetcher, Default::default()).await.unwrap();
    f.assert_complete();
    assert_eq!(done.fetched, f.target.len() as u64);

    let dir = tempfile::tempdir().unwrap();
    let empty = Index::build(&[][..]).unwrap();
    let dest = dir.path().join("empty");
    let mut fetcher = MemFetcher::new(&[]);
    reconstruct(
        &empty,
        &empty.sha256,
        &SeedMap::empty(),
        &mut fetcher,
        &dest,
        &Default::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"");
}
