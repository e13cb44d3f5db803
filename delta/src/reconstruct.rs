//! Resumable reconstruction of a target file from seed chunks and fetched byte ranges.
//!
//! On disk, next to `dest`:
//! - `<dest>.partial`: the target's first `done` bytes, every chunk verified before it is written;
//! - `<dest>.journal`: target SHA-256 and a `done` offset whose bytes were fsync'd before the
//!   journal was (atomically, via rename) replaced, every [`ReconstructOptions::checkpoint_bytes`].
//!
//! After a crash, a cut link or a dropped future, the next call re-verifies the partial file's
//! chunks up to the journal offset, truncates there and carries on. `dest` only ever appears as
//! a complete file whose SHA-256 matched both the index and the caller's expected digest.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::index::Chunk;
use crate::{DeltaError, Index, SeedLocation, SeedMap};

/// Default for [`ReconstructOptions::checkpoint_bytes`]: fsync and journal every 4 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// Default for [`ReconstructOptions::max_fetch_bytes`]: coalesce missing chunks into ranges of up
/// to 4 MiB.
pub const DEFAULT_MAX_FETCH_BYTES: u64 = 4 * 1024 * 1024;
/// Seed chunks copied per blocking disk task.
const SEED_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Journal record: magic, target sha256, done, sha256 of the preceding 48 bytes.
const JOURNAL_MAGIC: &[u8; 8] = b"CDJRNL01";
const JOURNAL_LEN: usize = 8 + 32 + 8 + 32;

/// Source of target bytes that the seeds do not have (central, over gRPC, in the agent).
pub trait RangeFetcher {
    /// What a failed fetch reports; wrapped into [`DeltaError::Fetch`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Returns exactly bytes `offset..offset + len` of the target. Retrying transient failures
    /// is up to the implementation; an error stops the reconstruction in a resumable state.
    fn fetch(
        &mut self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, Self::Error>> + Send;
}

/// Tuning for [`reconstruct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconstructOptions {
    /// Bytes written between fsync + journal updates: the most a power cut can cost.
    pub checkpoint_bytes: u64,
    /// Largest range asked of the fetcher at once (adjacent missing chunks are coalesced up to
    /// this; a single chunk larger than it is still fetched whole).
    pub max_fetch_bytes: u64,
}

impl Default for ReconstructOptions {
    fn default() -> Self {
        ReconstructOptions {
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            max_fetch_bytes: DEFAULT_MAX_FETCH_BYTES,
        }
    }
}

/// Where a reconstruction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of the target verified and written so far (including those resumed).
    pub done: u64,
    /// Target size.
    pub total: u64,
    /// Bytes received from the fetcher in this call.
    pub fetched: u64,
    /// Bytes copied from seeds in this call.
    pub from_seeds: u64,
    /// Offset this call resumed from (0 for a fresh start).
    pub resumed_from: u64,
}

/// Writes the file described by `index` to `dest`, copying chunks found in `seeds` and fetching
/// the rest through `fetcher`, resuming any earlier interrupted attempt for the same target.
///
/// Every seed chunk is re-hashed before use (a mismatch is fetched instead); every fetched chunk
/// is hashed (a mismatch is an error). At the end the whole file must hash to both
/// `index.sha256` and `expected_sha256`; only then is it renamed to `dest` and the directory
/// fsync'd. Any error leaves `dest` untouched and, unless the whole-file check failed (which
/// discards everything), a resumable `<dest>.partial` + `<dest>.journal`. Dropping the returned
/// future is also resumable. Do not run two reconstructions of the same `dest` at once.
///
/// `progress` is called after each step. Returns the final progress.
pub async fn reconstruct<F: RangeFetcher>(
    index: &Index,
    expected_sha256: &[u8; 32],
    seeds: &SeedMap,
    fetcher: &mut F,
    dest: &Path,
    options: &ReconstructOptions,
    progress: impl FnMut(Progress),
) -> Result<Progress, DeltaError> {
    let span =
        tracing::info_span!("reconstruct", dest = %dest.display(), target = %index.sha256_hex());
    run(
        index,
        expected_sha256,
        seeds,
        fetcher,
        dest,
        options,
        progress,
    )
    .instrument(span)
    .await
}

async fn run<F: RangeFetcher>(
    index: &Index,
    expected_sha256: &[u8; 32],
    seeds: &SeedMap,
    fetcher: &mut F,
    dest: &Path,
    options: &ReconstructOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Progress, DeltaError> {
    if &index.sha256 != expected_sha256 {
        return Err(DeltaError::IndexMismatch {
            index_sha256: index.sha256_hex(),
            index_size: index.size,
            expected_sha256: hex::encode(expected_sha256),
            expected_size: index.size,
        });
    }
    let checkpoint_bytes = options.checkpoint_bytes.max(1);
    let max_fetch = options.max_fetch_bytes.max(1);

    let open = {
        let index = index.clone();
        let dest = dest.to_path_buf();
        let seeds = seeds.seeds().to_vec();
        move || Assembler::open(&index, &dest, seeds, checkpoint_bytes)
    };
    let mut asm = blocking(dest, open).await??;
    let chunks = &index.chunks;
    let mut next = chunks.partition_point(|c| c.offset < asm.done);
    let mut state = Progress {
        done: asm.done,
        total: index.size,
        resumed_from: asm.done,
        ..Progress::default()
    };
    if state.resumed_from > 0 {
        tracing::info!(
            resumed_from = state.resumed_from,
            "resuming interrupted reconstruction"
        );
    }
    progress(state);
    // A seed chunk that failed verification: fetch it even though the seed map lists it.
    let mut forced_fetch: Option<usize> = None;

    while next < chunks.len() {
        let seeded = |i: usize| forced_fetch != Some(i) && seeds.get(&chunks[i].hash).is_some();
        if seeded(next) {
            let mut batch: Vec<(Chunk, SeedLocation)> = Vec::new();
            let mut bytes = 0u64;
            let mut i = next;
            while i < chunks.len() && bytes < SEED_BATCH_BYTES && seeded(i) {
                batch.push((chunks[i], seeds.get(&chunks[i].hash).expect("seeded")));
                bytes += u64::from(chunks[i].len);
                i += 1;
            }
            let wanted = batch.len();
            let (returned, copied) = blocking(dest, move || {
                let copied = asm.copy_from_seeds(&batch);
                (asm, copied)
            })
            .await?;
            asm = returned;
            let copied = copied?;
            state.from_seeds += chunks[next..next + copied]
                .iter()
                .map(|c| u64::from(c.len))
                .sum::<u64>();
            next += copied;
            if copied < wanted {
                forced_fetch = Some(next);
            }
        } else {
            let first = next;
            let mut end = next + 1;
            let mut bytes = u64::from(chunks[first].len);
            while end < chunks.len()
                && !seeded(end)
                && bytes + u64::from(chunks[end].len) <= max_fetch
            {
                bytes += u64::from(chunks[end].len);
                end += 1;
            }
            let offset = chunks[first].offset;
            let fetched = match fetcher.fetch(offset, bytes).await {
                Ok(data) => data,
                Err(source) => {
                    let (_asm, _) = blocking(dest, move || {
                        let result = asm.checkpoint();
                        (asm, result)
                    })
                    .await?;
                    return Err(DeltaError::Fetch {
                        offset,
                        end: offset + bytes,
                        source: Box::new(source),
                    });
                }
            };
            state.fetched += fetched.len() as u64;
            let run: Vec<Chunk> = chunks[first..end].to_vec();
            let (returned, written) = blocking(dest, move || {
                let result = asm.write_fetched(&run, &fetched);
                (asm, result)
            })
            .await?;
            asm = returned;
            if let Err(error) = written {
                let _ = blocking(dest, move || asm.checkpoint()).await;
                return Err(error);
            }
            next = end;
            forced_fetch = None;
        }
        state.done = asm.done;
        progress(state);
    }

    let finish = {
        let expected = *expected_sha256;
        let index_sha = index.sha256;
        move || asm.finish(&index_sha, &expected)
    };
    blocking(dest, finish).await??;
    tracing::info!(
        total = state.total,
        fetched = state.fetched,
        from_seeds = state.from_seeds,
        resumed_from = state.resumed_from,
        "reconstructed target"
    );
    Ok(state)
}

/// Runs blocking disk work off the async runtime.
async fn blocking<T: Send + 'static>(
    dest: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DeltaError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DeltaError::Worker {
            path: dest.to_path_buf(),
            reason: e.to_string(),
        })
}

/// `<dest><suffix>` in the same directory.
fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dest.with_file_name(name)
}

/// The partial file and everything needed to extend it; moved into each blocking step.
struct Assembler {
    partial: File,
    partial_path: PathBuf,
    journal_path: PathBuf,
    dest: PathBuf,
    target: [u8; 32],
    hasher: Sha256,
    done: u64,
    unsynced: u64,
    checkpoint_bytes: u64,
    seed_paths: Vec<PathBuf>,
    seed_files: Vec<Option<File>>,
}

impl Assembler {
    /// Opens (or creates) `<dest>.partial`, keeps the verified prefix the journal vouches for and
    /// truncates the rest.
    fn open(
        index: &Index,
        dest: &Path,
        seed_paths: Vec<PathBuf>,
        checkpoint_bytes: u64,
    ) -> Result<Assembler, DeltaError> {
        let partial_path = sibling(dest, ".partial");
        let journal_path = sibling(dest, ".journal");
        let partial = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)
            .at("open", &partial_path)?;
        let journalled = read_journal(&journal_path, &index.sha256);
        let on_disk = partial.metadata().at("inspect", &partial_path)?.len();
        let claimed = journalled.min(on_disk).min(index.size);

        // Re-verify the claimed prefix chunk by chunk; keep up to the first bad or partial chunk.
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut buf = Vec::new();
        for chunk in index.chunks.iter().take_while(|c| c.end() <= claimed) {
            buf.resize(chunk.len as usize, 0);
            if partial.read_exact_at(&mut buf, chunk.offset).is_err()
                || Sha256::digest(&buf)[..] != chunk.hash
            {
                tracing::warn!(
                    offset = chunk.offset,
                    "partial file chunk does not verify; resuming before it"
                );
                break;
            }
            hasher.update(&buf);
            done = chunk.end();
        }
        if done < journalled {
            tracing::warn!(
                journalled,
                kept = done,
                "journal claimed more than the partial file holds"
            );
        }
        partial.set_len(done).at("truncate", &partial_path)?;
        Ok(Assembler {
            partial,
            partial_path,
            journal_path,
            dest: dest.to_path_buf(),
            target: index.sha256,
            hasher,
            done,
            unsynced: 0,
            checkpoint_bytes,
            seed_files: seed_paths.iter().map(|_| None).collect(),
            seed_paths,
        })
    }

    /// Appends one verified chunk.
    fn append(&mut self, data: &[u8]) -> Result<(), DeltaError> {
        self.partial
            .write_all_at(data, self.done)
            .at("write", &self.partial_path)?;
        self.hasher.update(data);
        self.done += data.len() as u64;
        self.unsynced += data.len() as u64;
        if self.unsynced >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable, then records it in the journal.
    fn checkpoint(&mut self) -> Result<(), DeltaError> {
        self.partial.sync_data().at("sync", &self.partial_path)?;
        write_journal(&self.journal_path, &self.target, self.done)?;
        self.unsynced = 0;
        Ok(())
    }

    /// Copies `batch` (consecutive chunks starting at `done`) from seeds, verifying each.
    /// Returns how many were copied; fewer than asked means the next one did not verify.
    fn copy_from_seeds(&mut self, batch: &[(Chunk, SeedLocation)]) -> Result<usize, DeltaError> {
        let mut buf = Vec::new();
        for (copied, (chunk, at)) in batch.iter().enumerate() {
            debug_assert_eq!(chunk.offset, self.done);
            buf.resize(chunk.len as usize, 0);
            let read = self.read_seed(at, &mut buf);
            if let Err(error) = read {
                tracing::warn!(seed = %self.seed_paths[at.seed].display(), offset = at.offset, %error, "seed read failed; fetching the chunk instead");
                return Ok(copied);
            }
            if Sha256::digest(&buf)[..] != chunk.hash {
                tracing::warn!(seed = %self.seed_paths[at.seed].display(), offset = at.offset, "seed chunk changed since it was scanned; fetching it instead");
                return Ok(copied);
            }
            self.append(&buf)?;
        }
        Ok(batch.len())
    }

    fn read_seed(&mut self, at: &SeedLocation, buf: &mut [u8]) -> std::io::Result<()> {
        if self.seed_files[at.seed].is_none() {
            self.seed_files[at.seed] = Some(File::open(&self.seed_paths[at.seed])?);
        }
        self.seed_files[at.seed]
            .as_ref()
            .expect("opened")
            .read_exact_at(buf, at.offset)
    }

    /// Verifies and appends fetched bytes covering the consecutive chunks `run`.
    fn write_fetched(&mut self, run: &[Chunk], data: &[u8]) -> Result<(), DeltaError> {
        let start = run[0].offset;
        let expected_len = run.last().expect("non-empty run").end() - start;
        if data.len() as u64 != expected_len {
            return Err(DeltaError::FetchedChunkMismatch {
                offset: start,
                len: expected_len,
                reason: format!("asked for {expected_len} bytes, got {}", data.len()),
            });
        }
        for chunk in run {
            let piece = &data[(chunk.offset - start) as usize..(chunk.end() - start) as usize];
            if Sha256::digest(piece)[..] != chunk.hash {
                return Err(DeltaError::FetchedChunkMismatch {
                    offset: chunk.offset,
                    len: u64::from(chunk.len),
                    reason: "SHA-256 differs".into(),
                });
            }
            self.append(piece)?;
        }
        Ok(())
    }

    /// Checks the whole-file digest, then publishes `<dest>` atomically and durably.
    fn finish(self, index_sha: &[u8; 32], expected: &[u8; 32]) -> Result<(), DeltaError> {
        let actual: [u8; 32] = self.hasher.clone().finalize().into();
        if &actual != index_sha || &actual != expected {
            // Every chunk verified yet the whole does not: the index itself lies. Start over.
            let _ = std::fs::remove_file(&self.partial_path);
            let _ = std::fs::remove_file(&self.journal_path);
            return Err(DeltaError::FinalDigestMismatch {
                path: self.partial_path.clone(),
                actual: hex::encode(actual),
                expected: hex::encode(expected),
            });
        }
        self.partial.sync_all().at("sync", &self.partial_path)?;
        std::fs::rename(&self.partial_path, &self.dest).at("rename into place", &self.dest)?;
        sync_dir(&self.dest)?;
        match std::fs::remove_file(&self.journal_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::new("remove", &self.journal_path, e).into()),
        }
        Ok(())
    }
}

/// fsyncs the directory holding `path` so a rename in it survives a power cut.
fn sync_dir(path: &Path) -> Result<(), DeltaError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("sync the directory", dir)?;
    Ok(())
}

/// The durable offset recorded for `target`, or 0 when there is no valid journal for it.
fn read_journal(path: &Path, target: &[u8; 32]) -> u64 {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return 0,
        Err(error) => {
            tracing::warn!(journal = %path.display(), %error, "cannot read journal; starting over");
            return 0;
        }
    }
    if bytes.len() != JOURNAL_LEN
        || &bytes[..8] != JOURNAL_MAGIC
        || Sha256::digest(&bytes[..48])[..] != bytes[48..]
    {
        tracing::warn!(journal = %path.display(), "journal is corrupt; starting over");
        return 0;
    }
    if &bytes[8..40] != target {
        tracing::info!(journal = %path.display(), "journal belongs to another target; starting over");
        return 0;
    }
    u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"))
}

/// Replaces the journal atomically (write temp, fsync, rename). The rename itself need not be
/// durable: losing it only means resuming from an earlier, still valid, offset.
fn write_journal(path: &Path, target: &[u8; 32], done: u64) -> Result<(), DeltaError> {
    let mut record = Vec::with_capacity(JOURNAL_LEN);
    record.extend_from_slice(JOURNAL_MAGIC);
    record.extend_from_slice(target);
    record.extend_from_slice(&done.to_le_bytes());
    let check = Sha256::digest(&record);
    record.extend_from_slice(&check);
    let tmp = sibling(path, ".tmp");
    let mut file = File::create(&tmp).at("create", &tmp)?;
    file.write_all(&record)
        .and_then(|()| file.sync_data())
        .at("write", &tmp)?;
    std::fs::rename(&tmp, path).at("rename into place", path)?;
    Ok(())
}
