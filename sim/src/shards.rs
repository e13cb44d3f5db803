//! A fleet split over several simulator processes ("shards"), for fleets beyond one process's
//! descriptor limit (one connection, so one descriptor, per device).
//!
//! The benchmark (the coordinator) starts itself as `cairn-sim worker` children, each with a
//! contiguous slice of device indices (identities in a file), and drives them over a line
//! protocol: JSON [`Command`]s on the worker's stdin, JSON [`Event`]s on its stdout (its log goes
//! to stderr, a file). Workers send back raw measurements (heartbeat round trips, when their
//! last device received the config change) and the coordinator merges them ([`merge_latency`],
//! [`merge_fanout`]). Times crossing processes are on the machine-wide monotonic clock
//! ([`monotonic_us`]).
//!
//! A worker exits when its stdin closes (the coordinator is gone) and is killed with the
//! coordinator (`PR_SET_PDEATHSIG`, and `kill_on_drop` of its handle), so none is left behind.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::fleet::{monotonic_us, FanOut, Fleet, FleetError, FleetOptions, Latency};
use crate::identity::{self, DeviceIdentity, IdentityError};

/// Devices per simulator process when the shard count is automatic (leaves room below a
/// 20000-descriptor limit for the runtime, REST clients and logs).
pub const DEVICES_PER_SHARD: usize = 18_000;

/// Extra time the coordinator allows a worker beyond the worker's own deadline for a step.
const REPLY_MARGIN: Duration = Duration::from_secs(60);

/// The automatic shard count: `ceil(devices / DEVICES_PER_SHARD)`, at least 1.
pub fn auto_shards(devices: usize) -> usize {
    devices.div_ceil(DEVICES_PER_SHARD).max(1)
}

/// Device indices of shard `shard` of `shards` over a fleet of `devices`: contiguous slices
/// whose sizes differ by at most one, together covering `0..devices` once.
pub fn shard_range(devices: usize, shards: usize, shard: usize) -> Range<usize> {
    let shards = shards.max(1);
    (devices * shard / shards)..(devices * (shard + 1) / shards)
}

/// What the coordinator asks of a worker (one JSON object a line on its stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Record heartbeat round trips for `window_ms`, then send them ([`Event::Heartbeats`]).
    Heartbeats {
        /// Recording window, ms.
        window_ms: u64,
    },
    /// Wait until every device holds config marker `marker` (set by the coordinator), at most
    /// `timeout_ms`, then say when the last one got it ([`Event::FanOut`]).
    FanOut {
        /// The marker value.
        marker: u64,
        /// Deadline, ms from receiving the command.
        timeout_ms: u64,
    },
    /// Note how many streams each device has opened, say so ([`Event::Armed`]), then wait
    /// until every device opened a new one, at most `timeout_ms` ([`Event::Reopened`]): the
    /// coordinator restarts central in between.
    Reopen {
        /// Deadline, ms from receiving the command.
        timeout_ms: u64,
    },
    /// Stop the devices, report ([`Event::Done`]) and exit.
    Stop,
}

/// What a worker reports (one JSON object a line on its stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every device holds its stream.
    Connected {
        /// Devices of this worker.
        devices: usize,
        /// When the last one connected, [`monotonic_us`].
        at_us: u64,
    },
    /// Every device has had a heartbeat acknowledged; commands may come.
    Ready,
    /// Heartbeat round trips of the window, µs.
    Heartbeats {
        /// The samples, unsorted.
        samples_us: Vec<u32>,
    },
    /// Every device received the marker.
    FanOut {
        /// Devices that received it.
        devices: usize,
        /// When the last one did, [`monotonic_us`].
        last_received_us: u64,
    },
    /// The worker noted its devices' streams (after [`Command::Reopen`]).
    Armed,
    /// Every device opened a new stream.
    Reopened {
        /// Devices of this worker.
        devices: usize,
        /// When the last one did, [`monotonic_us`].
        at_us: u64,
    },
    /// Final figures; the worker exits after this.
    Done(WorkerFigures),
    /// A step failed; the worker exits after this.
    Failed {
        /// What failed.
        message: String,
    },
}

/// A worker's own figures at the end of its run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerFigures {
    /// Devices it ran.
    pub devices: usize,
    /// Resident memory with every device connected (before stopping them), bytes.
    pub rss_bytes: u64,
    /// Peak resident memory, bytes.
    pub peak_bytes: u64,
    /// Sync streams that ended and were reopened.
    pub reconnects: u64,
    /// The latest error a device saw, if any.
    pub last_error: Option<String>,
}

/// Why the sharded fleet failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Identities could not be written or read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A worker process did not start.
    #[error("could not start simulator worker {bin}: {source}")]
    Spawn {
        /// The cairn-sim binary.
        bin: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A worker reported a failure.
    #[error("simulator worker {worker} failed: {message}; see {log}")]
    Failed {
        /// Worker index.
        worker: usize,
        /// Its report.
        message: String,
        /// Its log.
        log: PathBuf,
    },
    /// A worker went away or broke the protocol.
    #[error("simulator worker {worker} {what}; see {log}")]
    Broken {
        /// Worker index.
        worker: usize,
        /// What happened.
        what: String,
        /// Its log.
        log: PathBuf,
    },
    /// A worker did not answer in time.
    #[error("simulator worker {worker} sent no {awaited} within {waited:?}; see {log}")]
    Timeout {
        /// Worker index.
        worker: usize,
        /// The awaited event.
        awaited: &'static str,
        /// How long the coordinator waited.
        waited: Duration,
        /// Its log.
        log: PathBuf,
    },
    /// Workers ran another number of devices than the fleet has.
    #[error("the workers report {reported} devices in all, but the fleet has {expected}")]
    Count {
        /// Devices reported.
        reported: usize,
        /// Fleet size.
        expected: usize,
    },
    /// The worker's own fleet failed (in the worker process).
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Percentiles over the heartbeat samples of all workers together (not an average of their
/// percentiles).
pub fn merge_latency(per_worker: Vec<Vec<u32>>) -> Latency {
    Latency::from_samples(per_worker.into_iter().flatten().collect())
}

/// The fan-out of the whole fleet: from the first REST call (`started_us`, [`monotonic_us`])
/// until the last device of all workers received the change (the latest of
/// `last_received_us`).
pub fn merge_fanout(started_us: u64, calls_s: f64, last_received_us: &[u64]) -> FanOut {
    let last = last_received_us.iter().copied().max().unwrap_or(started_us);
    FanOut {
        calls_s,
        all_received_s: last.saturating_sub(started_us) as f64 / 1e6,
    }
}

/// What a worker runs (from `cairn-sim worker`'s arguments).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Identities of its devices, in index order (the identity cache format).
    pub identities: PathBuf,
    /// Fleet index of its first device.
    pub first_index: usize,
    /// gRPC addresses of the central replicas (device `i` uses `replicas[i % len]`).
    pub replicas: Vec<SocketAddr>,
    /// Fleet CA, PEM file.
    pub ca: PathBuf,
    /// Device behaviour.
    pub fleet: FleetOptions,
    /// Deadline for every device to connect.
    pub connect_timeout: Duration,
    /// Deadline for every device to have a heartbeat acknowledged after connecting.
    pub ack_timeout: Duration,
}

fn emit(event: &Event) {
    use std::io::Write;
    let line = serde_json::to_string(event).expect("events serialise");
    let mut out = std::io::stdout().lock();
    // A closed stdout means the coordinator is gone; the stdin watcher ends the process.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Run a worker: start its devices, report on stdout, obey commands on stdin until
/// [`Command::Stop`]. Exits the process when stdin closes before that (the coordinator is
/// gone). A failure is also reported as [`Event::Failed`].
pub async fn run_worker(options: WorkerOptions) -> Result<(), ShardError> {
    // Ended with the coordinator even when it is killed without closing stdin.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let result = worker_steps(options).await;
    if let Err(e) = &result {
        emit(&Event::Failed {
            message: e.to_string(),
        });
    }
    result
}

async fn worker_steps(options: WorkerOptions) -> Result<(), ShardError> {
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    // A plain thread: blocking reads of stdin, forwarded to the runtime.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    let stop = command == Command::Stop;
                    let _ = tx.send(command);
                    if stop {
                        return;
                    }
                }
                Err(e) => {
                    emit(&Event::Failed {
                        message: format!("unreadable command {line:?}: {e}"),
                    });
                    std::process::exit(2);
                }
            }
        }
        eprintln!(
            "cairn-sim worker: stdin closed before `stop` (the coordinator is gone); exiting"
        );
        std::process::exit(3);
    });
    let ca_pem = std::fs::read_to_string(&options.ca).map_err(|source| ShardError::Io {
        path: options.ca.clone(),
        source,
    })?;
    let identities = identity::load_cache(&options.identities)?;
    let devices = identities.len();
    let fleet = Fleet::start_assigned(
        &options.replicas,
        options.first_index,
        &ca_pem,
        identities,
        &options.fleet,
    );
    let result = worker_commands(&options, &fleet, &mut commands).await;
    let (rss_bytes, peak_bytes) = crate::central_process::memory_of("/proc/self/status");
    let figures = WorkerFigures {
        devices,
        rss_bytes,
        peak_bytes,
        reconnects: fleet.reconnects(),
        last_error: Some(fleet.last_error()).filter(|e| e != "none"),
    };
    fleet.stop().await;
    result?;
    emit(&Event::Done(figures));
    Ok(())
}

async fn worker_commands(
    options: &WorkerOptions,
    fleet: &Fleet,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
) -> Result<(), ShardError> {
    fleet.wait_connected(options.connect_timeout).await?;
    emit(&Event::Connected {
        devices: fleet.len(),
        at_us: monotonic_us(),
    });
    fleet.wait_acked(1, options.ack_timeout).await?;
    emit(&Event::Ready);
    while let Some(command) = commands.recv().await {
        match command {
            Command::Heartbeats { window_ms } => {
                let samples_us = fleet
                    .record_heartbeats(Duration::from_millis(window_ms))
                    .await;
                emit(&Event::Heartbeats { samples_us });
            }
            Command::FanOut { marker, timeout_ms } => {
                let last_received_us = fleet
                    .wait_marker(marker, Duration::from_millis(timeout_ms))
                    .await?;
                emit(&Event::FanOut {
                    devices: fleet.len(),
                    last_received_us,
                });
            }
            Command::Reopen { timeout_ms } => {
                let before = fleet.sessions();
                emit(&Event::Armed);
                let at_us = fleet
                    .wait_reopened(&before, Duration::from_millis(timeout_ms))
                    .await?;
                emit(&Event::Reopened {
                    devices: fleet.len(),
                    at_us,
                });
            }
            Command::Stop => break,
        }
    }
    Ok(())
}

/// How the coordinator starts its workers.
#[derive(Debug, Clone)]
pub struct ShardsOptions {
    /// The cairn-sim binary (normally the running one).
    pub sim_bin: PathBuf,
    /// Directory for the workers' identity files and logs.
    pub dir: PathBuf,
    /// Number of workers.
    pub shards: usize,
    /// gRPC addresses of the central replicas.
    pub replicas: Vec<SocketAddr>,
    /// Device behaviour; `connect_concurrency` is the fleet's total, split over the workers.
    pub fleet: FleetOptions,
    /// Deadline for every device to connect.
    pub connect_timeout: Duration,
    /// Deadline for every device to have a heartbeat acknowledged after connecting.
    pub ack_timeout: Duration,
}

struct Worker {
    index: usize,
    devices: usize,
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Worker {
    fn broken(&self, what: impl Into<String>) -> ShardError {
        ShardError::Broken {
            worker: self.index,
            what: what.into(),
            log: self.log.clone(),
        }
    }

    async fn send(&mut self, command: &Command) -> Result<(), ShardError> {
        let line = serde_json::to_string(command).expect("commands serialise") + "\n";
        let sent = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        }
        .await;
        sent.map_err(|e| self.broken(format!("did not take a command: {e}")))
    }

    async fn next(&mut self, awaited: &'static str, within: Duration) -> Result<Event, ShardError> {
        let line = match tokio::time::timeout(within, self.events.next_line()).await {
            Err(_) => {
                return Err(ShardError::Timeout {
                    worker: self.index,
                    awaited,
                    waited: within,
                    log: self.log.clone(),
                })
            }
            Ok(Err(e)) => return Err(self.broken(format!("output unreadable: {e}"))),
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                let how = match status {
                    Ok(Ok(status)) => status.to_string(),
                    _ => "closed its output".to_owned(),
                };
                return Err(self.broken(format!(
                    "ended ({how}) while the coordinator awaited {awaited}"
                )));
            }
            Ok(Ok(Some(line))) => line,
        };
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Failed { message }) => Err(ShardError::Failed {
                worker: self.index,
                message,
                log: self.log.clone(),
            }),
            Ok(event) => Ok(event),
            Err(e) => Err(self.broken(format!("sent {line:?} ({e}) while {awaited} was awaited"))),
        }
    }

    fn unexpected(&self, awaited: &'static str, got: &Event) -> ShardError {
        self.broken(format!("sent {got:?} while {awaited} was awaited"))
    }
}

/// Running simulator workers (killed when dropped).
pub struct Shards {
    workers: Vec<Worker>,
    started_us: u64,
    devices: usize,
}

impl Shards {
    /// Write each worker's identities and start the workers: worker `w` runs devices
    /// [`shard_range`]`(identities.len(), shards, w)`.
    pub async fn start(
        options: &ShardsOptions,
        ca_pem: &str,
        identities: Vec<DeviceIdentity>,
    ) -> Result<Self, ShardError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ShardError::Io { path, source }
        };
        std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
        let ca = options.dir.join("ca.crt");
        std::fs::write(&ca, ca_pem).map_err(io(&ca))?;
        let devices = identities.len();
        let shards = options.shards.clamp(1, devices.max(1));
        let replicas = options
            .replicas
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let concurrency = (options.fleet.connect_concurrency / shards).max(1);
        let mut files = Vec::with_capacity(shards);
        for w in 0..shards {
            let range = shard_range(devices, shards, w);
            let path = options.dir.join(format!("worker-{w}.identities"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
            identity::append_cache(&path, &identities[range.clone()])?;
            files.push((range, path));
        }
        drop(identities);
        let started_us = monotonic_us();
        let mut workers = Vec::with_capacity(shards);
        for (w, (range, path)) in files.into_iter().enumerate() {
            let log = options.dir.join(format!("worker-{w}.log"));
            let log_file = std::fs::File::create(&log).map_err(io(&log))?;
            let mut command = tokio::process::Command::new(&options.sim_bin);
            command
                .arg("worker")
                .arg("--identities")
                .arg(&path)
                .args(["--first-index", &range.start.to_string()])
                .args(["--replicas", &replicas])
                .arg("--ca")
                .arg(&ca)
                .args([
                    "--heartbeat-ms",
                    &options.fleet.heartbeat_interval.as_millis().to_string(),
                ])
                .args(["--connect-concurrency", &concurrency.to_string()])
                .args([
                    "--connect-timeout-s",
                    &options.connect_timeout.as_secs().to_string(),
                ])
                .args([
                    "--ack-timeout-s",
                    &options.ack_timeout.as_secs().to_string(),
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(log_file)
                .kill_on_drop(true);
            cairn_io::die_with_parent(command.as_std_mut());
            let mut child = command.spawn().map_err(|source| ShardError::Spawn {
                bin: options.sim_bin.clone(),
                source,
            })?;
            let stdin = child.stdin.take().expect("stdin is piped");
            let stdout = child.stdout.take().expect("stdout is piped");
            workers.push(Worker {
                index: w,
                devices: range.len(),
                child,
                stdin,
                events: BufReader::new(stdout).lines(),
                log,
            });
        }
        Ok(Self {
            workers,
            started_us,
            devices,
        })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Wait until every device of every worker holds its stream (`within`: the workers'
    /// connect deadline); returns seconds from starting the workers until the last device
    /// connected.
    pub async fn wait_connected(&mut self, within: Duration) -> Result<f64, ShardError> {
        let at = self
            .all_devices_at("connected", within, |e| match e {
                Event::Connected { devices, at_us } => Some((*devices, *at_us)),
                _ => None,
            })
            .await?;
        let last = at.into_iter().max().unwrap_or(self.started_us);
        Ok(last.saturating_sub(self.started_us) as f64 / 1e6)
    }

    /// Each worker's next event, which must be the `awaited` one `pick` reads (devices, time)
    /// from and cover all its devices; the times, once every device of the fleet is counted.
    async fn all_devices_at(
        &mut self,
        awaited: &'static str,
        within: Duration,
        pick: fn(&Event) -> Option<(usize, u64)>,
    ) -> Result<Vec<u64>, ShardError> {
        let got = futures::future::try_join_all(self.workers.iter_mut().map(|w| async move {
            let event = w.next(awaited, within + REPLY_MARGIN).await?;
            match pick(&event) {
                Some((devices, at)) if devices == w.devices => Ok((devices, at)),
                _ => Err(w.unexpected(awaited, &event)),
            }
        }))
        .await?;
        let reported = got.iter().map(|(d, _)| d).sum::<usize>();
        if reported != self.devices {
            return Err(ShardError::Count {
                reported,
                expected: self.devices,
            });
        }
        Ok(got.into_iter().map(|(_, t)| t).collect())
    }

    /// Wait until every device has had a heartbeat acknowledged (`within`: the workers'
    /// deadline after connecting).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), ShardError> {
        const AWAITED: &str = "ready";
        futures::future::try_join_all(self.workers.iter_mut().map(|w| async move {
            match w.next(AWAITED, within + REPLY_MARGIN).await? {
                Event::Ready => Ok(()),
                other => Err(w.unexpected(AWAITED, &other)),
            }
        }))
        .await?;
        Ok(())
    }

    /// Have every worker record heartbeat round trips for `window`; returns their samples.
    pub async fn record_heartbeats(
        &mut self,
        window: Duration,
    ) -> Result<Vec<Vec<u32>>, ShardError> {
        const AWAITED: &str = "heartbeats";
        let command = Command::Heartbeats {
            window_ms: window.as_millis() as u64,
        };
        for w in &mut self.workers {
            w.send(&command).await?;
        }
        futures::future::try_join_all(self.workers.iter_mut().map(|w| async move {
            match w.next(AWAITED, window + REPLY_MARGIN).await? {
                Event::Heartbeats { samples_us } => Ok(samples_us),
                other => Err(w.unexpected(AWAITED, &other)),
            }
        }))
        .await
    }

    /// Tell every worker to watch for config marker `marker` (for at most `within`); call
    /// before making the change, then [`Shards::fan_out_received`].
    pub async fn watch_marker(&mut self, marker: u64, within: Duration) -> Result<(), ShardError> {
        let command = Command::FanOut {
            marker,
            timeout_ms: within.as_millis() as u64,
        };
        for w in &mut self.workers {
            w.send(&command).await?;
        }
        Ok(())
    }

    /// When each worker's last device received the marker ([`monotonic_us`]); fails unless
    /// every device of the fleet got it.
    pub async fn fan_out_received(&mut self, within: Duration) -> Result<Vec<u64>, ShardError> {
        self.all_devices_at("fan_out", within, |e| match e {
            Event::FanOut {
                devices,
                last_received_us,
            } => Some((*devices, *last_received_us)),
            _ => None,
        })
        .await
    }

    /// Have every worker note its devices' streams (for at most `within` afterwards); returns
    /// once all did. Then restart central and call [`Shards::reopened`].
    pub async fn arm_reopen(&mut self, within: Duration) -> Result<(), ShardError> {
        const AWAITED: &str = "armed";
        let command = Command::Reopen {
            timeout_ms: within.as_millis() as u64,
        };
        for w in &mut self.workers {
            w.send(&command).await?;
        }
        futures::future::try_join_all(self.workers.iter_mut().map(|w| async move {
            match w.next(AWAITED, REPLY_MARGIN).await? {
                Event::Armed => Ok(()),
                other => Err(w.unexpected(AWAITED, &other)),
            }
        }))
        .await?;
        Ok(())
    }

    /// When each worker's last device opened its new stream ([`monotonic_us`]); fails unless
    /// every device of the fleet did.
    pub async fn reopened(&mut self, within: Duration) -> Result<Vec<u64>, ShardError> {
        self.all_devices_at("reopened", within, |e| match e {
            Event::Reopened { devices, at_us } => Some((*devices, *at_us)),
            _ => None,
        })
        .await
    }

    /// Stop every worker and collect its final figures.
    pub async fn stop(mut self) -> Result<Vec<WorkerFigures>, ShardError> {
        const AWAITED: &str = "done";
        for w in &mut self.workers {
            w.send(&Command::Stop).await?;
        }
        let figures = futures::future::try_join_all(self.workers.iter_mut().map(|w| async move {
            match w.next(AWAITED, REPLY_MARGIN).await? {
                Event::Done(figures) => Ok(figures),
                other => Err(w.unexpected(AWAITED, &other)),
            }
        }))
        .await?;
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(30), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
        Ok(figures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_fleet_once() {
        for (devices, shards) in [
            (600, 2),
            (100_000, 6),
            (50_000, 3),
            (7, 3),
            (1, 1),
            (18_000, 1),
        ] {
            let mut next = 0;
            for w in 0..shards {
                let range = shard_range(devices, shards, w);
                assert_eq!(range.start, next, "{devices}/{shards}");
                assert!(
                    range.len() <= devices.div_ceil(shards),
                    "{devices}/{shards}: {range:?}"
                );
                next = range.end;
            }
            assert_eq!(next, devices);
        }
        assert_eq!(auto_shards(10_000), 1);
        assert_eq!(auto_shards(18_000), 1);
        assert_eq!(auto_shards(18_001), 2);
        assert_eq!(auto_shards(50_000), 3);
        assert_eq!(auto_shards(100_000), 6);
        assert_eq!(auto_shards(0), 1);
    }

    #[test]
    fn latency_percentiles_are_over_all_samples_together() {
        // Worker 0 is fast, worker 1 slow: averaging per-worker p50s would give 50.5 ms.
        let fast: Vec<u32> = (1..=100).collect();
        let slow: Vec<u32> = (1..=300).map(|v| 100_000 + v).collect();
        let merged = merge_latency(vec![slow.clone(), fast.clone()]);
        let mut all = [fast, slow].concat();
        all.reverse();
        assert_eq!(merged.count, 400);
        // Index 200 of the 400 sorted samples: the 101st slow one.
        assert_eq!(merged.p50_us, 100_101);
        // Index 396: the 297th slow one.
        assert_eq!(merged.p99_us, 100_297);
        assert_eq!(merged.max_us, 100_300);
        // Same as one process holding all samples.
        let single = Latency::from_samples(all);
        assert_eq!(
            (merged.p50_us, merged.p99_us, merged.max_us),
            (single.p50_us, single.p99_us, single.max_us)
        );
        // No samples: zeros, no panic.
        let empty = merge_latency(vec![Vec::new(), Vec::new()]);
        assert_eq!((empty.count, empty.p50_us, empty.p99_us), (0, 0, 0));
    }

    #[test]
    fn fan_out_ends_when_the_last_device_of_all_workers_has_the_change() {
        let started = 5_000_000;
        let fanout = merge_fanout(started, 1.25, &[5_400_000, 7_500_000, 6_000_000]);
        assert_eq!(fanout.all_received_s, 2.5);
        assert_eq!(fanout.calls_s, 1.25);
        assert_eq!(merge_fanout(started, 0.0, &[]).all_received_s, 0.0);
    }

    #[test]
    fn protocol_lines_round_trip() {
        let commands = [
            Command::Heartbeats { window_ms: 30_000 },
            Command::FanOut {
                marker: 7,
                timeout_ms: 1000,
            },
            Command::Reopen { timeout_ms: 2000 },
            Command::Stop,
        ];
        for command in commands {
            let line = serde_json::to_string(&command).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Command>(&line).unwrap(), command);
        }
        let events = [
            Event::Armed,
            Event::Reopened {
                devices: 3,
                at_us: 9,
            },
            Event::Done(WorkerFigures {
                devices: 3,
                rss_bytes: 1,
                peak_bytes: 2,
                reconnects: 0,
                last_error: None,
            }),
        ];
        for event in events {
            let line = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        }
    }
}
