//! Downloading an OS update bundle from central by chunks: only the parts the device does not
//! already hold (in its running root slot and its UKIs) cross the network, and an interrupted
//! download resumes where it stopped (see `cairn-delta`).
//!
//! Flow: `BundleIndex` gives the bundle's chunk index, checked against the expected size and
//! SHA-256; local seeds are scanned for matching chunks; missing ranges are streamed with
//! `ReadBundle`, retried with backoff on transient failures from the last good byte; the result
//! is verified chunk by chunk and as a whole before it appears at `<dest_dir>/<sha256>.raucb`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_delta::{DeltaError, Index, RangeFetcher, ReconstructOptions, SeedMap};
use cairn_proto::v1::agent_client::AgentClient;
use cairn_proto::v1::{BundleIndexRequest, ReadBundleRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::channel::agent_client;
use crate::slot::Slot;

pub use cairn_delta::Progress;

/// Bound on one `BundleIndex` call and on opening one `ReadBundle` stream.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the next piece of a `ReadBundle` stream (a 1 MiB piece at 256 kbit/s).
pub const PIECE_TIMEOUT: Duration = Duration::from_secs(60);
/// Transient failures in a row (without a byte of progress) before giving up; the download then
/// stays resumable for the next attempt.
pub const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 8;
/// First retry delay; doubles up to [`RETRY_MAX_DELAY`] (with full jitter).
pub const RETRY_INITIAL_DELAY: Duration = Duration::from_millis(500);
/// Largest retry delay.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// The bundle to download, as named by the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleTarget {
    /// SHA-256 of the whole bundle, lowercase hex (64 characters).
    pub sha256: String,
    /// Bundle size in bytes.
    pub size: u64,
}

/// Why a bundle download failed. All but `BadTargetDigest` and `IndexMismatch` leave a resumable
/// `<dest>.partial`; calling [`fetch_bundle`] again continues.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The desired state names a bundle digest that is not 64 hex characters.
    #[error("bundle digest {0:?} is not a SHA-256 in hex; fix the release record on central")]
    BadTargetDigest(String),

    /// A call to central failed for good (not found, permission denied, ...) or kept failing.
    #[error("{call} for bundle {sha256} failed with {code:?}: {message}; check that central still serves this bundle and the device certificate is valid")]
    Status {
        /// The RPC.
        call: &'static str,
        /// The bundle digest.
        sha256: String,
        /// The final gRPC status code.
        code: Code,
        /// The final status message.
        message: String,
    },

    /// A call to central did not answer in time, even after retries.
    #[error("{call} for bundle {sha256} timed out after {after:?} (retried {attempts} times); check the link to central, the download resumes on the next attempt")]
    Timeout {
        /// The RPC.
        call: &'static str,
        /// The bundle digest.
        sha256: String,
        /// The timeout of the last attempt.
        after: Duration,
        /// Attempts made.
        attempts: u32,
    },

    /// Central sent an index that does not parse or validate.
    #[error("central sent an invalid chunk index for bundle {sha256}: {source}")]
    BadIndex {
        /// The bundle digest.
        sha256: String,
        /// Why it was rejected.
        #[source]
        source: DeltaError,
    },

    /// Central's index describes another bundle than the one asked for.
    #[error("central's index for bundle {sha256} describes {index_size} bytes with sha256 {index_sha256} (response says {response_size} bytes) but {expected_size} bytes were expected; refusing to download — check the release record on central")]
    IndexMismatch {
        /// The bundle digest asked for.
        sha256: String,
        /// The expected size.
        expected_size: u64,
        /// `bundle_size` in the response.
        response_size: u64,
        /// Size inside the index.
        index_size: u64,
        /// Digest inside the index.
        index_sha256: String,
    },

    /// Reconstructing the bundle on disk failed (disk error, corrupt data, fetch given up).
    #[error("assembling bundle {sha256}: {source}")]
    Assemble {
        /// The bundle digest.
        sha256: String,
        /// What failed.
        #[source]
        source: DeltaError,
    },

    /// Checking an already downloaded bundle failed.
    #[error("reading already downloaded bundle {path}: {source}; delete it to download again")]
    Existing {
        /// The bundle file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A blocking disk task stopped unexpectedly.
    #[error("disk worker for bundle {sha256} stopped unexpectedly: {reason}; retry the download")]
    Worker {
        /// The bundle digest.
        sha256: String,
        /// The join error.
        reason: String,
    },
}

/// The seeds a device on `booted_slot` has for a new bundle: the running root slot partition
/// (root.img and its hash tree, as installed from the current bundle; none when the slot is
/// unknown) and both UKIs on the ESP at `esp`. Missing ones are skipped when scanned.
pub fn seeds_for_running_slot(booted_slot: Option<Slot>, esp: &Path) -> Vec<PathBuf> {
    booted_slot
        .map(|slot| PathBuf::from(slot.root_partition()))
        .into_iter()
        .chain([Slot::A, Slot::B].map(|slot| esp.join(slot.uki_path())))
        .collect()
}

/// Where [`fetch_bundle`] puts the bundle with digest `sha256` in `dest_dir`.
pub fn bundle_path(dest_dir: &Path, sha256: &str) -> PathBuf {
    dest_dir.join(format!("{sha256}.raucb"))
}

/// Downloads bundle `target` into `<dest_dir>/<sha256>.raucb` over `channel` (a device mTLS
/// channel to central), copying every chunk it can from `seeds` and fetching the rest, resuming
/// a previous interrupted download of the same bundle. Returns the bundle path; it exists only
/// once its SHA-256 has been verified. A bundle already at that path is verified and reused.
///
/// `progress` is called after every step (for status reports). Cancellation safe: dropping the
/// future leaves a resumable state.
pub async fn fetch_bundle(
    channel: Channel,
    target: &BundleTarget,
    seeds: &[PathBuf],
    dest_dir: &Path,
    progress: impl Fn(Progress) + Send,
) -> Result<PathBuf, DownloadError> {
    let span = tracing::info_span!("bundle.download", bundle = %target.sha256, size = target.size);
    // Index and bundle pieces are larger than any other message central sends.
    let client =
        agent_client(channel).max_decoding_message_size(cairn_proto::MAX_BUNDLE_MESSAGE_BYTES);
    download(client, target, seeds, dest_dir, progress)
        .instrument(span)
        .await
}

async fn download(
    client: AgentClient<Channel>,
    target: &BundleTarget,
    seeds: &[PathBuf],
    dest_dir: &Path,
    progress: impl Fn(Progress) + Send,
) -> Result<PathBuf, DownloadError> {
    let digest = parse_digest(&target.sha256)?;
    let dest = bundle_path(dest_dir, &target.sha256);
    if existing_matches(&dest, &digest, &target.sha256).await? {
        tracing::info!(path = %dest.display(), "bundle already downloaded and verified");
        return Ok(dest);
    }

    let index = fetch_index(&client, target, &digest).await?;
    let seed_map = {
        let index = index.clone();
        let seeds = seeds.to_vec();
        tokio::task::spawn_blocking(move || SeedMap::scan_for(&index, &seeds))
            .await
            .map_err(|e| DownloadError::Worker {
                sha256: target.sha256.clone(),
                reason: e.to_string(),
            })?
    };
    let plan = cairn_delta::plan_stats(&index, &seed_map);
    tracing::info!(
        from_seeds = plan.bytes_from_seeds,
        to_fetch = plan.bytes_to_fetch,
        seeds = seed_map.seeds().len(),
        "download plan"
    );

    let mut fetcher = GrpcRangeFetcher {
        client,
        sha256: target.sha256.clone(),
    };
    let done = cairn_delta::reconstruct(
        &index,
        &digest,
        &seed_map,
        &mut fetcher,
        &dest,
        &ReconstructOptions::default(),
        progress,
    )
    .await
    .map_err(|source| DownloadError::Assemble {
        sha256: target.sha256.clone(),
        source,
    })?;
    tracing::info!(
        fetched = done.fetched,
        from_seeds = done.from_seeds,
        resumed_from = done.resumed_from,
        "bundle downloaded"
    );
    Ok(dest)
}

fn parse_digest(sha256: &str) -> Result<[u8; 32], DownloadError> {
    let bad = || DownloadError::BadTargetDigest(sha256.to_string());
    if sha256.len() != 64 || sha256.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    hex::decode(sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(bad)
}

/// Whether `dest` already holds the bundle; a file there with other content is removed.
async fn existing_matches(
    dest: &Path,
    digest: &[u8; 32],
    sha256: &str,
) -> Result<bool, DownloadError> {
    let path = dest.to_path_buf();
    let digest = *digest;
    let check = move || -> std::io::Result<bool> {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        if hasher.finalize()[..] == digest {
            return Ok(true);
        }
        tracing::warn!(path = %path.display(), "existing bundle file does not match its digest; downloading again");
        std::fs::remove_file(&path)?;
        Ok(false)
    };
    tokio::task::spawn_blocking(check)
        .await
        .map_err(|e| DownloadError::Worker {
            sha256: sha256.to_string(),
            reason: e.to_string(),
        })?
        .map_err(|source| DownloadError::Existing {
            path: dest.to_path_buf(),
            source,
        })
}

/// Gets and checks the bundle's chunk index, retrying transient failures.
async fn fetch_index(
    client: &AgentClient<Channel>,
    target: &BundleTarget,
    digest: &[u8; 32],
) -> Result<Index, DownloadError> {
    let mut backoff = Backoff::new(RETRY_INITIAL_DELAY, RETRY_MAX_DELAY);
    let response = loop {
        let mut client = client.clone();
        let request = BundleIndexRequest {
            bundle_sha256: target.sha256.clone(),
        };
        let failure = match tokio::time::timeout(CALL_TIMEOUT, client.bundle_index(request)).await {
            Ok(Ok(response)) => break response.into_inner(),
            Ok(Err(status)) if !is_transient(status.code()) => {
                return Err(status_error("BundleIndex", &target.sha256, status))
            }
            Ok(Err(status)) => status_error("BundleIndex", &target.sha256, status),
            Err(_) => DownloadError::Timeout {
                call: "BundleIndex",
                sha256: target.sha256.clone(),
                after: CALL_TIMEOUT,
                attempts: backoff.attempts() + 1,
            },
        };
        if backoff.attempts() + 1 >= MAX_ATTEMPTS_WITHOUT_PROGRESS {
            return Err(failure);
        }
        let delay = backoff.next_delay();
        tracing::warn!(error = %failure, ?delay, "BundleIndex failed; retrying");
        tokio::time::sleep(delay).await;
    };
    let index = Index::decode(&response.index).map_err(|source| DownloadError::BadIndex {
        sha256: target.sha256.clone(),
        source,
    })?;
    if index.size != target.size || response.bundle_size != target.size || &index.sha256 != digest {
        return Err(DownloadError::IndexMismatch {
            sha256: target.sha256.clone(),
            expected_size: target.size,
            response_size: response.bundle_size,
            index_size: index.size,
            index_sha256: index.sha256_hex(),
        });
    }
    Ok(index)
}

/// Codes worth retrying: the link or central is briefly unavailable, or the stream was cut.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
    )
}

fn status_error(call: &'static str, sha256: &str, status: tonic::Status) -> DownloadError {
    DownloadError::Status {
        call,
        sha256: sha256.to_string(),
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// Serves [`cairn_delta::reconstruct`] byte ranges from `ReadBundle`, resuming a cut stream from
/// the last byte received.
struct GrpcRangeFetcher {
    client: AgentClient<Channel>,
    sha256: String,
}

/// Why a `ReadBundle` range could not be delivered (after retries).
#[derive(Debug, thiserror::Error)]
enum RangeError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("central sent bytes at offset {got} while {expected} was expected (range {offset}+{len}); this is a central bug — report it")]
    Protocol {
        offset: u64,
        len: u64,
        expected: u64,
        got: u64,
    },
}

/// One attempt's outcome.
enum Attempt {
    /// The stream broke transiently (error text for the log).
    Transient(String),
    /// Permanent failure.
    Fatal(RangeError),
}

impl RangeFetcher for GrpcRangeFetcher {
    type Error = RangeError;

    async fn fetch(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, RangeError> {
        let mut out = Vec::with_capacity(len as usize);
        let mut backoff = Backoff::new(RETRY_INITIAL_DELAY, RETRY_MAX_DELAY);
        loop {
            let before = out.len();
            let failure = match self.attempt(offset, len, &mut out).await {
                Ok(()) => return Ok(out),
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Transient(reason)) => reason,
            };
            if out.len() > before {
                backoff.reset();
            }
            if backoff.attempts() + 1 >= MAX_ATTEMPTS_WITHOUT_PROGRESS {
                return Err(RangeError::Download(DownloadError::Status {
                    call: "ReadBundle",
                    sha256: self.sha256.clone(),
                    code: Code::Unavailable,
                    message: format!("gave up after {MAX_ATTEMPTS_WITHOUT_PROGRESS} attempts without progress: {failure}"),
                }));
            }
            let delay = backoff.next_delay();
            tracing::warn!(offset = offset + out.len() as u64, %failure, ?delay, "ReadBundle interrupted; resuming");
            tokio::time::sleep(delay).await;
        }
    }
}

impl GrpcRangeFetcher {
    /// Streams the rest of `offset..offset+len` after what `out` already holds, appending to it.
    async fn attempt(&mut self, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<(), Attempt> {
        let from = offset + out.len() as u64;
        let request = ReadBundleRequest {
            bundle_sha256: self.sha256.clone(),
            offset: from,
            length: len - out.len() as u64,
        };
        let mut stream =
            match tokio::time::timeout(CALL_TIMEOUT, self.client.read_bundle(request)).await {
                Err(_) => {
                    return Err(Attempt::Transient(format!(
                        "no answer within {CALL_TIMEOUT:?}"
                    )))
                }
                Ok(Err(status)) => return Err(self.classify(status)),
                Ok(Ok(response)) => response.into_inner(),
            };
        while (out.len() as u64) < len {
            let expected = offset + out.len() as u64;
            let piece = match tokio::time::timeout(PIECE_TIMEOUT, stream.message()).await {
                Err(_) => {
                    return Err(Attempt::Transient(format!(
                        "no data within {PIECE_TIMEOUT:?}"
                    )))
                }
                Ok(Err(status)) => return Err(self.classify(status)),
                Ok(Ok(None)) => {
                    return Err(Attempt::Transient(format!(
                        "stream ended at offset {expected}"
                    )))
                }
                Ok(Ok(Some(piece))) => piece,
            };
            let remaining = len - out.len() as u64;
            if piece.offset != expected || piece.data.len() as u64 > remaining {
                return Err(Attempt::Fatal(RangeError::Protocol {
                    offset,
                    len,
                    expected,
                    got: piece.offset
                        + if piece.offset == expected {
                            piece.data.len() as u64
                        } else {
                            0
                        },
                }));
            }
            out.extend_from_slice(&piece.data);
        }
        Ok(())
    }

    fn classify(&self, status: tonic::Status) -> Attempt {
        if is_transient(status.code()) {
            Attempt::Transient(format!("{:?}: {}", status.code(), status.message()))
        } else {
            Attempt::Fatal(RangeError::Download(status_error(
                "ReadBundle",
                &self.sha256,
                status,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    use cairn_proto::v1::agent_server::{Agent, AgentServer};
    use cairn_proto::v1::*;
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    const PIECE: usize = 64 * 1024;

    /// Central's bundle endpoints over plain HTTP/2, cutting every `ReadBundle` stream after
    /// `pieces_per_stream` pieces.
    struct FakeCentral {
        bundle: Vec<u8>,
        index: Vec<u8>,
        size: u64,
        pieces_per_stream: usize,
        streams: AtomicUsize,
        served: AtomicU64,
    }

    type DataStream = Pin<Box<dyn Stream<Item = Result<BundleData, Status>> + Send>>;
    type SyncStream = Pin<Box<dyn Stream<Item = Result<CentralMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl Agent for FakeCentral {
        type SyncStream = SyncStream;
        type ReadBundleStream = DataStream;

        async fn renew(&self, _: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn sync(
            &self,
            _: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<SyncStream>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn escrow_recovery_key(
            &self,
            _: Request<EscrowRecoveryKeyRequest>,
        ) -> Result<Response<EscrowRecoveryKeyResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn report_wipe(
            &self,
            _: Request<ReportWipeRequest>,
        ) -> Result<Response<ReportWipeResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_secrets(
            &self,
            _: Request<GetSecretsRequest>,
        ) -> Result<Response<GetSecretsResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn bundle_index(
            &self,
            request: Request<BundleIndexRequest>,
        ) -> Result<Response<BundleIndexResponse>, Status> {
            if request.get_ref().bundle_sha256 == "0".repeat(64) {
                return Err(Status::not_found("no such bundle"));
            }
            Ok(Response::new(BundleIndexResponse {
                bundle_size: self.size,
                index: self.index.clone(),
            }))
        }
        async fn read_bundle(
            &self,
            request: Request<ReadBundleRequest>,
        ) -> Result<Response<DataStream>, Status> {
            let r = request.into_inner();
            self.streams.fetch_add(1, Ordering::SeqCst);
            let end = if r.length == 0 {
                self.bundle.len()
            } else {
                (r.offset + r.length) as usize
            };
            let mut items: Vec<Result<BundleData, Status>> = Vec::new();
            let mut at = r.offset as usize;
            while at < end && items.len() < self.pieces_per_stream {
                let next = (at + PIECE).min(end);
                items.push(Ok(BundleData {
                    offset: at as u64,
                    data: self.bundle[at..next].to_vec(),
                }));
                self.served.fetch_add((next - at) as u64, Ordering::SeqCst);
                at = next;
            }
            if at < end {
                items.push(Err(Status::unavailable("link cut")));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        }
    }

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    async fn serve(
        bundle: Vec<u8>,
        pieces_per_stream: usize,
    ) -> (Arc<FakeCentral>, Channel, BundleTarget) {
        let index = Index::build(&bundle[..]).unwrap();
        let target = BundleTarget {
            sha256: index.sha256_hex(),
            size: index.size,
        };
        let central = Arc::new(FakeCentral {
            size: bundle.len() as u64,
            bundle,
            index: index.encode(),
            pieces_per_stream,
            streams: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AgentServer::from_arc(central.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (central, channel, target)
    }

    #[tokio::test]
    async fn downloads_through_cut_streams_without_fetching_twice() {
        let bundle = random_bytes(1536 * 1024);
        let (central, channel, target) = serve(bundle.clone(), 6).await;
        let dir = tempfile::tempdir().unwrap();
        let last = std::sync::Mutex::new(Progress::default());
        let path = fetch_bundle(channel.clone(), &target, &[], dir.path(), |p| {
            *last.lock().unwrap() = p
        })
        .await
        .unwrap();
        assert_eq!(path, bundle_path(dir.path(), &target.sha256));
        assert_eq!(std::fs::read(&path).unwrap(), bundle);
        assert!(
            central.streams.load(Ordering::SeqCst) >= 4,
            "streams were cut and resumed"
        );
        assert_eq!(central.served.load(Ordering::SeqCst), bundle.len() as u64);
        let last = *last.lock().unwrap();
        assert_eq!(
            (last.done, last.total, last.fetched),
            (
                bundle.len() as u64,
                bundle.len() as u64,
                bundle.len() as u64
            )
        );

        // Asking again reuses the verified file without any ReadBundle.
        let streams = central.streams.load(Ordering::SeqCst);
        fetch_bundle(channel, &target, &[], dir.path(), |_| {})
            .await
            .unwrap();
        assert_eq!(central.streams.load(Ordering::SeqCst), streams);
    }

    #[tokio::test]
    async fn seed_covers_most_of_the_bundle() {
        let old = random_bytes(1536 * 1024);
        let mut bundle = old.clone();
        bundle.splice(700_000..700_000, [7u8; 3000]);
        let (central, channel, target) = serve(bundle.clone(), 1000).await;
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("root-a");
        std::fs::write(&seed, &old).unwrap();
        let path = fetch_bundle(
            channel,
            &target,
            &[dir.path().join("missing"), seed],
            dir.path(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), bundle);
        assert!(central.served.load(Ordering::SeqCst) * 4 < bundle.len() as u64);
    }

    #[tokio::test]
    async fn wrong_size_or_unknown_bundle_is_refused() {
        let (_central, channel, target) = serve(random_bytes(100_000), 1000).await;
        let dir = tempfile::tempdir().unwrap();
        let wrong = BundleTarget {
            size: target.size + 1,
            ..target.clone()
        };
        let err = fetch_bundle(channel.clone(), &wrong, &[], dir.path(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::IndexMismatch { .. }), "{err}");
        let unknown = BundleTarget {
            sha256: "0".repeat(64),
            size: target.size,
        };
        let err = fetch_bundle(channel.clone(), &unknown, &[], dir.path(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DownloadError::Status {
                    code: Code::NotFound,
                    ..
                }
            ),
            "{err}"
        );
        let bad = BundleTarget {
            sha256: "xyz".into(),
            size: 1,
        };
        let err = fetch_bundle(channel, &bad, &[], dir.path(), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::BadTargetDigest(_)), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn seeds_are_the_running_root_slot_and_both_ukis() {
        assert_eq!(
            seeds_for_running_slot(Some(Slot::B), Path::new("/boot")),
            vec![
                PathBuf::from("/dev/disk/by-partlabel/root-b"),
                PathBuf::from("/boot/EFI/cairn/cairn-a.efi"),
                PathBuf::from("/boot/EFI/cairn/cairn-b.efi"),
            ]
        );
    }
}
