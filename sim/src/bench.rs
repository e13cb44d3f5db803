//! The fleet scale benchmark (issue 7): for each fleet size, a fresh `cairn-central serve`
//! process, N enrolled devices (cached on disk), then central's memory, heartbeat round trips in
//! steady state, the time for a config change to reach every device (one REST call per
//! device), the time for a deployment change to reach every device (one REST call: the
//! fleet is put into sites of [`HOSTS_PER_SITE`] devices, a deployment runs on all of them, and
//! its app is changed), and the time for a rotation of the deployment's secret to reach every
//! device (its desired state names the new version and it fetched the value with GetSecrets),
//! shown as a ratio against the deployment change of the same run. Last, two reconnections
//! ([`Reconnection`]): every replica killed at once (the connect storm: each device comes back
//! on its own back-off), then every replica restarted (each ends its streams with a spread
//! retry-after), each timed from the stop until every device holds a stream again.
//!
//! The registry is central's embedded SQLite database (data and identity cache under
//! `fleet-<N>/`, reused by later runs) or, with [`BenchOptions::database`], a fresh PostgreSQL
//! database per size (under `fleet-<N>-postgres/`; every device enrolls anew, as a fresh
//! database knows none of them).
//!
//! Beyond one process's descriptor limit (one connection per device in central and in the
//! simulator), [`BenchOptions::replicas`] runs several central replicas on the one PostgreSQL
//! database (device `i` enrolls with and streams to replica `i % replicas`, as behind DNS
//! round robin or a TCP load balancer; the change of the fan-out is made through replica 0's
//! REST API and reaches the others' devices through PostgreSQL), and
//! [`BenchOptions::shards`] runs the devices in several simulator processes
//! ([`crate::shards`]) whose measurements are merged. With one replica and one shard (the
//! default up to [`shards::DEVICES_PER_SHARD`] devices) the run is exactly the single-process one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::central_process::{self, CentralError, CentralProcess};
use crate::fleet::{self, monotonic_us, FanOut, Fleet, FleetError, FleetOptions, Latency};
use crate::identity::{self, IdentityError};
use crate::registry::{self, AdminUrl, StoreKind};
use crate::rest::{Operator, RestError};
use crate::shards::{self, ShardError, Shards, ShardsOptions};

/// Devices per site in the deployment measurement ("a few hosts per site"); the deployment
/// runs on all of them, so its change reaches the whole fleet.
pub const HOSTS_PER_SITE: usize = 4;

/// The benchmark deployment's secret (its value is a marker).
const SECRET: &str = "bench_token";

/// The benchmark's deployment.
const DEPLOYMENT: &str = "cairn-sim-bench";

/// Devices enrolled per batch (the cache is appended after each, so an interrupted run resumes).
const ENROLL_BATCH: usize = 5000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Fleet sizes, smallest first (ratios are against the first).
    pub sizes: Vec<usize>,
    /// The `cairn-central` binary.
    pub central_bin: PathBuf,
    /// Per-size directories (central data, identity cache, logs).
    pub work_dir: PathBuf,
    /// Device behaviour.
    pub fleet: FleetOptions,
    /// How long heartbeat round trips are recorded.
    pub window: Duration,
    /// Enroll calls in flight.
    pub enroll_concurrency: usize,
    /// REST calls in flight during the fan-out.
    pub fanout_concurrency: usize,
    /// Also measure a config change made with one REST call per device (slow at scale: the
    /// calls queue on the registry's one writer).
    pub config_fan_out: bool,
    /// PostgreSQL server on which each size's central gets a fresh database (dropped after a
    /// successful size, kept for inspection after a failure); `None`: SQLite.
    pub database: Option<AdminUrl>,
    /// Central processes (replicas) on the one PostgreSQL database; more than 1 needs
    /// `database`.
    pub replicas: usize,
    /// Simulator processes the devices run in; `None`: `ceil(devices / DEVICES_PER_SHARD)`
    /// per size. With 1 the devices run in this process.
    pub shards: Option<usize>,
    /// The cairn-sim binary started as `cairn-sim worker` for shards (normally this one).
    pub sim_bin: PathBuf,
}

impl BenchOptions {
    /// Simulator processes for a fleet of `devices`.
    pub fn shards_for(&self, devices: usize) -> usize {
        self.shards
            .unwrap_or_else(|| shards::auto_shards(devices))
            .clamp(1, devices.max(1))
    }
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Central could not be run.
    #[error(transparent)]
    Central(#[from] CentralError),
    /// Enrollment or the cache failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The fleet did not reach a state.
    #[error("with {devices} devices: {source}")]
    Fleet {
        /// Fleet size.
        devices: usize,
        /// What failed.
        source: FleetError,
    },
    /// An operator call failed.
    #[error(transparent)]
    Rest(#[from] RestError),
    /// The simulator worker processes failed.
    #[error("with {devices} devices: {source}")]
    Shards {
        /// Fleet size.
        devices: usize,
        /// What failed.
        source: ShardError,
    },
    /// Several replicas were asked for without PostgreSQL.
    #[error("--replicas {0} needs --database-url: central replicas share one PostgreSQL database (SQLite is one process's)")]
    ReplicasNeedPostgres(usize),
    /// The fresh PostgreSQL database could not be made.
    #[error("with {devices} devices: could not create a fresh PostgreSQL database on {server}: {source}")]
    Database {
        /// Fleet size.
        devices: usize,
        /// The admin URL, without its password.
        server: String,
        /// What failed (boxed: the store's error is large).
        source: Box<cairn_central::store::StoreError>,
    },
    /// Files an earlier run left in the size's directory could not be removed.
    #[error("could not remove {path} (left by an earlier run for another database): {source}")]
    Stale {
        /// The file or directory.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The process may not hold one descriptor per device.
    #[error(
        "{devices} devices over {replicas} central replica(s) and {shards} simulator process(es) need about {needed} \
         open files in one process, but RLIMIT_NOFILE is {limit} and could not be raised (raising the hard limit needs \
         CAP_SYS_RESOURCE); run as a user allowed to raise it (e.g. `prlimit --nofile=1048576`), spread the fleet \
         with --replicas N (needs --database-url) and --shards M so that devices/N and devices/M stay below \
         {largest_possible}, or use sizes up to {largest_possible}"
    )]
    DescriptorLimit {
        /// The size asked for.
        devices: usize,
        /// Central replicas.
        replicas: usize,
        /// Simulator processes.
        shards: usize,
        /// Descriptors it needs per process.
        needed: u64,
        /// The limit in force.
        limit: u64,
        /// The largest size that fits.
        largest_possible: u64,
    },
}

/// Descriptors each process needs besides one per device (database, listeners, REST clients).
const DESCRIPTOR_MARGIN: u64 = 500;

/// Figures of one fleet size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// Fleet size.
    pub devices: usize,
    /// Central's registry store.
    pub store: StoreKind,
    /// Devices enrolled in this run (0 when all came from the cache).
    pub enrolled_now: usize,
    /// Seconds to enroll them.
    pub enroll_s: f64,
    /// Seconds from starting the fleet until every device held its stream.
    pub connect_s: f64,
    /// Every replica stopped at once and started again, until every device is back.
    pub reconnection: Reconnection,
    /// Central's resident memory in steady state, MiB.
    pub central_rss_mib: f64,
    /// Central's peak resident memory over the run, MiB.
    pub central_peak_mib: f64,
    /// Central's CPU use in steady state (100 = one core).
    pub central_cpu_pct: f64,
    /// The simulator's own resident memory, MiB.
    pub sim_rss_mib: f64,
    /// Heartbeats per second the fleet sends.
    pub heartbeats_per_s: f64,
    /// Heartbeat round trips in steady state.
    pub heartbeat: Latency,
    /// The config fan-out, when asked for.
    pub fanout: Option<FanOut>,
    /// The deployment fan-out.
    pub deployment: DeploymentFanOut,
    /// Sync streams that ended and were reopened during the run, the two reconnections'
    /// included (each device at least twice).
    pub reconnects: u64,
    /// Central replicas (processes) on the one database; the `central_*` figures above are
    /// sums over them (for CPU and memory: what the deployment uses).
    pub replicas: usize,
    /// Simulator processes holding the devices; `sim_rss_mib` is their sum.
    pub shards: usize,
    /// Largest resident memory of one replica in steady state, MiB.
    pub central_rss_max_mib: f64,
    /// Largest peak resident memory of one replica, MiB.
    pub central_peak_max_mib: f64,
    /// Largest CPU use of one replica in steady state (100 = one core).
    pub central_cpu_max_pct: f64,
    /// Largest resident memory of one simulator process, MiB.
    pub sim_rss_max_mib: f64,
    /// The coordinating process's own resident memory, MiB, when the devices ran in worker
    /// processes (`null` when they ran in it).
    pub coordinator_rss_mib: Option<f64>,
    /// Each replica's figures.
    pub per_replica: Vec<ReplicaFigures>,
    /// Each simulator worker's figures (empty when the devices ran in this process).
    pub per_shard: Vec<ShardFigures>,
    /// The latest error a device saw (a failed connection, a broken stream), if any.
    pub last_device_error: Option<String>,
}

/// One central replica's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaFigures {
    /// Devices assigned to it.
    pub devices: usize,
    /// Resident memory in steady state, MiB.
    pub rss_mib: f64,
    /// Peak resident memory over the run, MiB.
    pub peak_mib: f64,
    /// CPU use in steady state (100 = one core).
    pub cpu_pct: f64,
}

/// One simulator worker's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ShardFigures {
    /// Devices it ran.
    pub devices: usize,
    /// Resident memory with every device connected, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_mib: f64,
    /// Sync streams that ended and were reopened.
    pub reconnects: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Raise RLIMIT_NOFILE (soft and, as root, hard) to at least `wanted`; returns the soft limit.
pub fn raise_nofile(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // `None` is RLIM_INFINITY.
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: limit.maximum.map(|hard| hard.max(wanted)),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        let fallback = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, fallback);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Run every size in turn.
pub async fn run(options: &BenchOptions) -> Result<Vec<SizeResult>, BenchError> {
    if options.replicas > 1 && options.database.is_none() {
        return Err(BenchError::ReplicasNeedPostgres(options.replicas));
    }
    // The most connections one process holds: central (or a replica) and the simulator (or a
    // worker) hold one descriptor per device each.
    let per_process = |n: usize| {
        let replicas = options.replicas.max(1);
        n.div_ceil(replicas).max(n.div_ceil(options.shards_for(n))) as u64
    };
    let largest = options
        .sizes
        .iter()
        .map(|&n| per_process(n))
        .max()
        .unwrap_or(0);
    // Central and the workers are our children and inherit the limit.
    let nofile = raise_nofile((largest + 20_000).min(1_048_576));
    eprintln!("cairn-sim: RLIMIT_NOFILE = {nofile}");
    if let Some(&devices) = options
        .sizes
        .iter()
        .find(|&&n| per_process(n) + DESCRIPTOR_MARGIN > nofile)
    {
        return Err(BenchError::DescriptorLimit {
            devices,
            replicas: options.replicas.max(1),
            shards: options.shards_for(devices),
            needed: per_process(devices) + DESCRIPTOR_MARGIN,
            limit: nofile,
            largest_possible: nofile.saturating_sub(DESCRIPTOR_MARGIN),
        });
    }
    let mut results = Vec::new();
    for &devices in &options.sizes {
        let result = run_size(options, devices).await?;
        eprintln!(
            "cairn-sim: {}",
            serde_json::to_string(&result).unwrap_or_default()
        );
        results.push(result);
    }
    Ok(results)
}

async fn run_size(options: &BenchOptions, devices: usize) -> Result<SizeResult, BenchError> {
    let store = match options.database {
        Some(_) => StoreKind::Postgres,
        None => StoreKind::Sqlite,
    };
    let dir = match store {
        StoreKind::Sqlite => options.work_dir.join(format!("fleet-{devices}")),
        StoreKind::Postgres => options.work_dir.join(format!("fleet-{devices}-postgres")),
    };
    let cache = dir.join("identities");
    let mut database = None;
    let mut identities = Vec::new();
    match &options.database {
        None => {
            identities = identity::load_cache(&cache)?;
            if !dir.join("central").is_dir() && !identities.is_empty() {
                // A cache without its registry is useless: central would not know these devices.
                let _ = std::fs::remove_file(&cache);
                identities.clear();
            }
            identities.truncate(devices);
        }
        Some(admin) => {
            // A fresh database knows no device and no admin token: central's data directory
            // (its admin.token) and any identities from an earlier run belong to another one.
            remove_stale(&dir.join("central"))?;
            remove_stale(&cache)?;
            let fresh = registry::create_fresh(admin, devices)
                .await
                .map_err(|source| BenchError::Database {
                    devices,
                    server: admin.to_string(),
                    source: Box::new(source),
                })?;
            eprintln!(
                "cairn-sim: {devices} devices: fresh PostgreSQL database {} on {admin}",
                fresh.name
            );
            database = Some(fresh);
        }
    }
    eprintln!(
        "cairn-sim: {devices} devices: starting central on {} ({} identities cached)",
        store.name(),
        identities.len()
    );
    let url = database.as_ref().map(|d| d.url.as_str());
    let result = match start_centrals(options, &dir, url).await {
        Ok(mut centrals) => {
            let result = with_central(
                options,
                devices,
                store,
                &mut centrals,
                &dir,
                &cache,
                identities,
            )
            .await;
            for central in centrals {
                central.stop();
            }
            result
        }
        Err(e) => Err(e.into()),
    };
    if let (Some(admin), Some(database)) = (&options.database, &database) {
        match &result {
            Ok(_) => {
                if let Err(e) = registry::drop_database(admin, database).await {
                    eprintln!(
                        "cairn-sim: warning: could not drop the benchmark database {}: {e}",
                        database.name
                    );
                }
            }
            Err(_) => eprintln!(
                "cairn-sim: kept the PostgreSQL database {} for inspection",
                database.name
            ),
        }
    }
    result
}

/// Start central: one process, or `options.replicas` on the one PostgreSQL database `url`
/// sharing the data directory (the first creates CA and admin token; the others start once it
/// is ready).
async fn start_centrals(
    options: &BenchOptions,
    dir: &std::path::Path,
    url: Option<&str>,
) -> Result<Vec<CentralProcess>, CentralError> {
    match (options.replicas, url) {
        (0 | 1, _) | (_, None) => Ok(vec![
            CentralProcess::start(&options.central_bin, dir, url).await?,
        ]),
        (replicas, Some(url)) => {
            let mut centrals =
                vec![CentralProcess::start_replica(&options.central_bin, dir, 0, url).await?];
            let others = (1..replicas)
                .map(|r| CentralProcess::start_replica(&options.central_bin, dir, r, url));
            // On failure the started ones are dropped, which stops them.
            centrals.extend(futures::future::try_join_all(others).await?);
            eprintln!(
                "cairn-sim: {replicas} central replicas: gRPC {}",
                centrals
                    .iter()
                    .map(|c| c.grpc.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(centrals)
        }
    }
}

/// Remove a file or directory an earlier run left (nothing when it does not exist).
fn remove_stale(path: &std::path::Path) -> Result<(), BenchError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::Stale {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Enroll what the cache lacks, run the fleet and measure, with `centrals` running (the caller
/// stops them whatever the outcome).
async fn with_central(
    options: &BenchOptions,
    devices: usize,
    store: StoreKind,
    centrals: &mut [CentralProcess],
    dir: &std::path::Path,
    cache: &std::path::Path,
    mut identities: Vec<identity::DeviceIdentity>,
) -> Result<SizeResult, BenchError> {
    let (grpc, ca_pem) = (centrals[0].grpc, centrals[0].ca_pem.clone());
    let operator = Operator::new(centrals[0].rest, &ca_pem, &centrals[0].admin_token)?;
    let enrolled_now = devices - identities.len();
    let enroll_started = Instant::now();
    if enrolled_now > 0 {
        let token = operator.auto_token("cairn-sim").await?;
        while identities.len() < devices {
            let range = identities.len()..(identities.len() + ENROLL_BATCH).min(devices);
            let batch = if centrals.len() == 1 {
                identity::enroll_many(
                    grpc,
                    &ca_pem,
                    &token,
                    "sim",
                    range,
                    options.enroll_concurrency,
                )
                .await?
            } else {
                enroll_on_replicas(options, centrals, &token, range).await?
            };
            if store == StoreKind::Sqlite {
                // Only SQLite's registry outlives the run; a PostgreSQL one is fresh each time.
                identity::append_cache(cache, &batch)?;
            }
            identities.extend(batch);
            eprintln!(
                "cairn-sim: enrolled {}/{devices} ({:.0} s)",
                identities.len(),
                enroll_started.elapsed().as_secs_f64()
            );
        }
    }
    let enroll_s = enroll_started.elapsed().as_secs_f64();
    let shards = options.shards_for(devices);
    let measured = if shards == 1 {
        let fleet_err = |source| BenchError::Fleet { devices, source };
        let grpcs: Vec<_> = centrals.iter().map(|c| c.grpc).collect();
        let fleet = Fleet::start_assigned(&grpcs, 0, &ca_pem, identities, &options.fleet);
        let measured = measure(options, centrals, &operator, &fleet).await;
        let reconnects = fleet.reconnects();
        let last_error = Some(fleet.last_error()).filter(|e| e != "none");
        let (sim_rss, _) = central_process::memory_of("/proc/self/status");
        fleet.stop().await;
        let mut measured = measured.map_err(fleet_err)?;
        measured.reconnects = reconnects;
        measured.sim_rss = vec![sim_rss];
        measured.last_error = last_error;
        measured
    } else {
        let shards_err = |source| BenchError::Shards { devices, source };
        let ids: Vec<String> = identities.iter().map(|i| i.device_id.clone()).collect();
        let shard_options = ShardsOptions {
            sim_bin: options.sim_bin.clone(),
            dir: dir.join("workers"),
            shards,
            replicas: centrals.iter().map(|c| c.grpc).collect(),
            fleet: options.fleet.clone(),
            connect_timeout: connect_budget(devices),
            ack_timeout: ack_budget(options),
        };
        eprintln!("cairn-sim: {devices} devices: starting {shards} simulator worker processes");
        let workers = Shards::start(&shard_options, &ca_pem, identities)
            .await
            .map_err(shards_err)?;
        // On failure `workers` is dropped, which kills them.
        measure_shards(options, centrals, &operator, workers, &ids)
            .await
            .map_err(shards_err)?
    };
    let mib_all = |v: &[u64]| {
        (
            mib(v.iter().sum()),
            mib(v.iter().copied().max().unwrap_or(0)),
        )
    };
    let (central_rss_mib, central_rss_max_mib) = mib_all(&measured.rss);
    let (central_peak_mib, central_peak_max_mib) = mib_all(&measured.peak);
    let (sim_rss_mib, sim_rss_max_mib) = mib_all(&measured.sim_rss);
    let replicas = centrals.len();
    let per_replica = (0..replicas)
        .map(|r| ReplicaFigures {
            devices: (r..devices).step_by(replicas).len(),
            rss_mib: mib(measured.rss[r]),
            peak_mib: mib(measured.peak[r]),
            cpu_pct: measured.cpu_pct[r],
        })
        .collect();
    Ok(SizeResult {
        devices,
        store,
        enrolled_now,
        enroll_s: if enrolled_now > 0 { enroll_s } else { 0.0 },
        connect_s: measured.connect_s,
        reconnection: measured.reconnection,
        central_rss_mib,
        central_peak_mib,
        central_cpu_pct: measured.cpu_pct.iter().sum(),
        sim_rss_mib,
        heartbeats_per_s: devices as f64 / options.fleet.heartbeat_interval.as_secs_f64(),
        heartbeat: measured.heartbeat,
        fanout: measured.fanout,
        deployment: measured.deployment,
        reconnects: measured.reconnects,
        replicas,
        shards,
        central_rss_max_mib,
        central_peak_max_mib,
        central_cpu_max_pct: measured.cpu_pct.iter().copied().fold(0.0, f64::max),
        sim_rss_max_mib,
        coordinator_rss_mib: measured.coordinator_rss.map(mib),
        per_replica,
        per_shard: measured.per_shard,
        last_device_error: measured.last_error,
    })
}

/// Enroll fleet indices `range`, device `i` through replica `i % replicas` (all replicas at
/// once, each with `enroll_concurrency` calls in flight); identities in index order.
async fn enroll_on_replicas(
    options: &BenchOptions,
    centrals: &[CentralProcess],
    token: &str,
    range: std::ops::Range<usize>,
) -> Result<Vec<identity::DeviceIdentity>, IdentityError> {
    let n = centrals.len();
    let per_replica = centrals.iter().enumerate().map(|(r, central)| {
        let indices: Vec<usize> = range.clone().filter(|i| i % n == r).collect();
        async move {
            let enrolled = identity::enroll_many(
                central.grpc,
                &central.ca_pem,
                token,
                "sim",
                indices.iter().copied(),
                options.enroll_concurrency,
            )
            .await?;
            Ok::<_, IdentityError>(indices.into_iter().zip(enrolled).collect::<Vec<_>>())
        }
    });
    let mut all: Vec<(usize, identity::DeviceIdentity)> =
        futures::future::try_join_all(per_replica)
            .await?
            .into_iter()
            .flatten()
            .collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, identity)| identity).collect())
}

/// What one size measured (per replica and per simulator process where they differ).
struct Measured {
    connect_s: f64,
    reconnection: Reconnection,
    /// Each replica's RSS in steady state, bytes.
    rss: Vec<u64>,
    /// Each replica's peak RSS, bytes.
    peak: Vec<u64>,
    /// Each replica's CPU use over the window, %.
    cpu_pct: Vec<f64>,
    heartbeat: Latency,
    fanout: Option<FanOut>,
    deployment: DeploymentFanOut,
    /// Each simulator process's RSS, bytes.
    sim_rss: Vec<u64>,
    coordinator_rss: Option<u64>,
    reconnects: u64,
    per_shard: Vec<ShardFigures>,
    last_error: Option<String>,
}

fn connect_budget(devices: usize) -> Duration {
    Duration::from_secs(60 + devices as u64 / 100)
}

fn ack_budget(options: &BenchOptions) -> Duration {
    options.fleet.heartbeat_interval * 3 + Duration::from_secs(30)
}

fn fanout_budget(devices: usize) -> Duration {
    Duration::from_secs(120 + devices as u64 / 50)
}

/// The change marker: Unix ms (unique per run).
fn new_marker() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

async fn measure(
    options: &BenchOptions,
    centrals: &mut [CentralProcess],
    operator: &Operator,
    fleet: &Fleet,
) -> Result<Measured, FleetError> {
    let devices = fleet.len();
    let connect_s = fleet
        .wait_connected(connect_budget(devices))
        .await?
        .as_secs_f64();
    eprintln!("cairn-sim: {devices} devices connected in {connect_s:.1} s; warming up one heartbeat interval");
    fleet.wait_acked(1, ack_budget(options)).await?;
    let cpu_before: Vec<f64> = centrals.iter().map(CentralProcess::cpu_seconds).collect();
    let window_started = Instant::now();
    let heartbeat = fleet.measure_heartbeats(options.window).await;
    let cpu_pct = cpu_since(centrals, &cpu_before, window_started);
    let rss: Vec<u64> = centrals.iter().map(|c| c.memory().0).collect();
    eprintln!(
        "cairn-sim: {devices} devices: heartbeat p50 {} µs p99 {} µs; central RSS {:.0} MiB",
        heartbeat.p50_us,
        heartbeat.p99_us,
        mib(rss.iter().sum())
    );
    let fanout = config_fan_out(options, operator, fleet.ids(), &mut &*fleet).await?;
    let deployment = deployment_fan_out(options, operator, fleet.ids(), &mut &*fleet).await?;
    let peak = centrals.iter().map(|c| c.memory().1).collect();
    let reconnection = reconnection(centrals, &mut &*fleet).await?;
    Ok(Measured {
        connect_s,
        reconnection,
        rss,
        peak,
        cpu_pct,
        heartbeat,
        fanout,
        deployment,
        sim_rss: Vec::new(),
        coordinator_rss: None,
        reconnects: 0,
        per_shard: Vec::new(),
        last_error: None,
    })
}

/// What the deployment measurement took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DeploymentFanOut {
    /// Untimed set-up: creating the sites and putting every device at one (REST calls).
    pub sites_s: f64,
    /// Creating the deployment until every device runs it (the placement pass included).
    pub place: FanOut,
    /// Changing the deployment's app until every device has the new one: the issue's
    /// "deployment change reaching all devices".
    pub change: FanOut,
    /// Rotating the deployment's secret until every device fetched the new value (its desired
    /// state names the new version, then a GetSecrets call), set once untimed before.
    pub secret_rotation: FanOut,
}

/// Every replica stopped at once and started again (after the deployment measurement), until
/// every device holds a stream again; seconds from the stop, central's own start included.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reconnection {
    /// The connect storm: every replica killed (SIGKILL, a power cut: no stream is ended
    /// with a retry-after), so every device comes back on its own back-off, all at once.
    pub storm_s: f64,
    /// A restart of every replica (SIGTERM): each ends its streams with a retry-after spread
    /// over its devices, which come back when told.
    pub restart_s: f64,
}

/// Devices that can be watched for reopened streams: in this process or in worker processes.
trait ReopenWatch {
    type Error: From<FleetError>;
    /// Note the devices' streams now; returns what [`ReopenWatch::reopened`] needs.
    async fn arm_reopen(&mut self, within: Duration) -> Result<Vec<u64>, Self::Error>;
    /// When the last device opened a new stream since `armed` ([`monotonic_us`]).
    async fn reopened(&mut self, armed: &[u64], within: Duration) -> Result<u64, Self::Error>;
}

impl ReopenWatch for &Fleet {
    type Error = FleetError;
    async fn arm_reopen(&mut self, _within: Duration) -> Result<Vec<u64>, FleetError> {
        Ok(self.sessions())
    }
    async fn reopened(&mut self, armed: &[u64], within: Duration) -> Result<u64, FleetError> {
        self.wait_reopened(armed, within).await
    }
}

impl ReopenWatch for Shards {
    type Error = ShardError;
    async fn arm_reopen(&mut self, within: Duration) -> Result<Vec<u64>, ShardError> {
        self.arm_reopen(within).await.map(|()| Vec::new())
    }
    async fn reopened(&mut self, _armed: &[u64], within: Duration) -> Result<u64, ShardError> {
        Ok(Shards::reopened(self, within)
            .await?
            .into_iter()
            .max()
            .unwrap_or(0))
    }
}

/// Measure [`Reconnection`]: a crash of every replica, then a restart of every replica.
async fn reconnection<W: ReopenWatch>(
    centrals: &mut [CentralProcess],
    watch: &mut W,
) -> Result<Reconnection, W::Error> {
    let budget = fanout_budget(0) * 2;
    let mut timed = async |crash: bool| -> Result<f64, W::Error> {
        let armed = watch.arm_reopen(budget).await?;
        let started_us = monotonic_us();
        for central in centrals.iter_mut() {
            central.begin_stop(crash);
        }
        futures::future::try_join_all(centrals.iter_mut().map(CentralProcess::start_again))
            .await
            .map_err(|e| W::Error::from(FleetError::from(e)))?;
        let last = watch.reopened(&armed, budget).await?;
        Ok(last.saturating_sub(started_us) as f64 / 1e6)
    };
    let kind = |crash| if crash { "killed" } else { "restarted" };
    let mut seconds = [0.0; 2];
    for (slot, crash) in [(0, true), (1, false)] {
        seconds[slot] = timed(crash).await?;
        eprintln!(
            "cairn-sim: every replica {}: all devices back in {:.1} s",
            kind(crash),
            seconds[slot]
        );
    }
    Ok(Reconnection {
        storm_s: seconds[0],
        restart_s: seconds[1],
    })
}

/// Devices that can be watched for a marker: in this process or in worker processes.
trait MarkerWatch {
    type Error: From<FleetError>;
    /// Start watching for `marker` (before the change is made, so no arrival is missed).
    async fn arm(&mut self, marker: u64, within: Duration) -> Result<(), Self::Error>;
    /// When the last device received `marker` ([`monotonic_us`]); fails unless all did.
    async fn last_received(&mut self, marker: u64, within: Duration) -> Result<u64, Self::Error>;
}

impl MarkerWatch for &Fleet {
    type Error = FleetError;
    async fn arm(&mut self, _marker: u64, _within: Duration) -> Result<(), FleetError> {
        Ok(())
    }
    async fn last_received(&mut self, marker: u64, within: Duration) -> Result<u64, FleetError> {
        self.wait_marker(marker, within).await
    }
}

impl MarkerWatch for Shards {
    type Error = ShardError;
    async fn arm(&mut self, marker: u64, within: Duration) -> Result<(), ShardError> {
        self.watch_marker(marker, within).await
    }
    async fn last_received(&mut self, _marker: u64, within: Duration) -> Result<u64, ShardError> {
        Ok(self
            .fan_out_received(within)
            .await?
            .into_iter()
            .max()
            .unwrap_or(0))
    }
}

/// When `options` ask for it, set a config marker on every device (one REST call each, as
/// central has no fleet-wide config call) until the last device has it.
async fn config_fan_out<W: MarkerWatch>(
    options: &BenchOptions,
    operator: &Operator,
    ids: &[String],
    watch: &mut W,
) -> Result<Option<FanOut>, W::Error> {
    if !options.config_fan_out {
        return Ok(None);
    }
    eprintln!(
        "cairn-sim: {} devices: pushing a config change to all, one REST call each",
        ids.len()
    );
    let ids = ids.iter().map(String::as_str);
    timed_change(watch, fanout_budget(ids.len()), |marker| {
        fleet::set_marker_all(operator, ids, marker, options.fanout_concurrency)
    })
    .await
    .map(Some)
}

/// Site `index` of the deployment measurement, spread over the globe (valid coordinates).
fn site_name(index: usize) -> String {
    format!("sim-site-{index}")
}

/// Put the fleet into sites of [`HOSTS_PER_SITE`] (untimed), create a deployment running on
/// every device, then change its app; both timed from the one REST call to the last device.
async fn deployment_fan_out<W: MarkerWatch>(
    options: &BenchOptions,
    operator: &Operator,
    ids: &[String],
    watch: &mut W,
) -> Result<DeploymentFanOut, W::Error> {
    let devices = ids.len();
    let rest = |e: RestError| W::Error::from(FleetError::from(e));
    let started = Instant::now();
    let sites = devices.div_ceil(HOSTS_PER_SITE);
    eprintln!("cairn-sim: {devices} devices: creating {sites} sites of {HOSTS_PER_SITE} and putting every device at one");
    let create = ids.chunks(HOSTS_PER_SITE).enumerate().map(|(s, hosts)| {
        let (latitude, longitude) = ((s * 7 % 170) as f64 - 85.0, (s * 13 % 350) as f64 - 175.0);
        async move {
            operator
                .create_site(&site_name(s), latitude, longitude, hosts)
                .await
        }
    });
    fleet::run_all(options.fanout_concurrency, create)
        .await
        .map_err(rest)?;
    let sites_s = started.elapsed().as_secs_f64();
    let budget = fanout_budget(devices);
    let hosts = HOSTS_PER_SITE as u32;
    eprintln!("cairn-sim: {devices} devices: sites set up in {sites_s:.1} s; creating a deployment on all of them");
    let place = timed_change(watch, budget, |marker| async move {
        operator
            .put_deployment(
                DEPLOYMENT,
                &crate::device::deployment_compose(marker),
                hosts,
                true,
            )
            .await
    })
    .await?;
    eprintln!(
        "cairn-sim: {devices} devices: deployment placed on all in {:.1} s; changing its app",
        place.all_received_s
    );
    let change = timed_change(watch, budget, |marker| async move {
        operator
            .put_deployment(
                DEPLOYMENT,
                &crate::device::deployment_compose(marker),
                hosts,
                false,
            )
            .await
    })
    .await?;
    eprintln!(
        "cairn-sim: {devices} devices: deployment change reached all in {:.1} s; setting its secret",
        change.all_received_s
    );
    let set_secret = |marker: u64| async move {
        operator
            .set_deployment_secret(DEPLOYMENT, SECRET, marker.to_string().as_bytes())
            .await
    };
    let first = timed_change(watch, budget, set_secret).await?;
    eprintln!(
        "cairn-sim: {devices} devices: secret set on all in {:.1} s; rotating it",
        first.all_received_s
    );
    let secret_rotation = timed_change(watch, budget, set_secret).await?;
    eprintln!(
        "cairn-sim: {devices} devices: secret rotation reached all in {:.1} s",
        secret_rotation.all_received_s
    );
    Ok(DeploymentFanOut {
        sites_s,
        place,
        change,
        secret_rotation,
    })
}

/// Arm `watch` for a new marker, make `change` with it, and wait for the last device; `budget`
/// runs from the start of the change.
async fn timed_change<W: MarkerWatch, F: std::future::Future<Output = Result<(), RestError>>>(
    watch: &mut W,
    budget: Duration,
    change: impl FnOnce(u64) -> F,
) -> Result<FanOut, W::Error> {
    let marker = new_marker();
    watch.arm(marker, budget).await?;
    let started = Instant::now();
    let started_us = monotonic_us();
    change(marker)
        .await
        .map_err(|e| W::Error::from(FleetError::from(e)))?;
    let calls = started.elapsed();
    let last = watch
        .last_received(marker, budget.saturating_sub(calls))
        .await?;
    let calls_s = calls.as_secs_f64();
    Ok(shards::merge_fanout(started_us, calls_s, &[last]))
}

/// Each replica's CPU use since `before` (its CPU seconds then), % of one core.
fn cpu_since(centrals: &[CentralProcess], before: &[f64], started: Instant) -> Vec<f64> {
    let elapsed = started.elapsed().as_secs_f64();
    centrals
        .iter()
        .zip(before)
        .map(|(c, b)| 100.0 * (c.cpu_seconds() - b) / elapsed)
        .collect()
}

/// [`measure`] with the devices in worker processes: the same steps and definitions, with the
/// workers' samples and reception times merged.
async fn measure_shards(
    options: &BenchOptions,
    centrals: &mut [CentralProcess],
    operator: &Operator,
    mut workers: Shards,
    ids: &[String],
) -> Result<Measured, ShardError> {
    let devices = ids.len();
    let connect_s = workers.wait_connected(connect_budget(devices)).await?;
    eprintln!(
        "cairn-sim: {devices} devices in {} workers connected in {connect_s:.1} s; warming up one heartbeat interval",
        workers.len()
    );
    workers.wait_ready(ack_budget(options)).await?;
    let cpu_before: Vec<f64> = centrals.iter().map(CentralProcess::cpu_seconds).collect();
    let window_started = Instant::now();
    let samples = workers.record_heartbeats(options.window).await?;
    let cpu_pct = cpu_since(centrals, &cpu_before, window_started);
    let heartbeat = shards::merge_latency(samples);
    let rss: Vec<u64> = centrals.iter().map(|c| c.memory().0).collect();
    eprintln!("cairn-sim: {devices} devices: heartbeat p50 {} µs p99 {} µs; central RSS {:.0} MiB (sum over {} replicas)", heartbeat.p50_us, heartbeat.p99_us, mib(rss.iter().sum()), centrals.len());
    let fanout = config_fan_out(options, operator, ids, &mut workers).await?;
    let deployment = deployment_fan_out(options, operator, ids, &mut workers).await?;
    let peak = centrals.iter().map(|c| c.memory().1).collect();
    let reconnection = reconnection(centrals, &mut workers).await?;
    let (coordinator_rss, _) = central_process::memory_of("/proc/self/status");
    let figures = workers.stop().await?;
    let last_error = figures.iter().find_map(|f| f.last_error.clone());
    Ok(Measured {
        connect_s,
        reconnection,
        rss,
        peak,
        cpu_pct,
        heartbeat,
        fanout,
        deployment,
        sim_rss: figures.iter().map(|f| f.rss_bytes).collect(),
        coordinator_rss: Some(coordinator_rss),
        reconnects: figures.iter().map(|f| f.reconnects).sum(),
        per_shard: figures
            .iter()
            .map(|f| ShardFigures {
                devices: f.devices,
                rss_mib: mib(f.rss_bytes),
                peak_mib: mib(f.peak_bytes),
                reconnects: f.reconnects,
            })
            .collect(),
        last_error,
    })
}

/// Seconds with one decimal, `-` for a figure not measured.
fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The results as a table; growth columns are ratios against the first (smallest) size.
pub fn table(results: &[SizeResult]) -> String {
    let Some(base) = results.first() else {
        return String::new();
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    let mut out = String::from(
        "devices | store | central RSS MiB (xN0) | KiB/device | central CPU % | hb/s | hb p50 ms | hb p99 ms (xN0) | fan-out calls s | fan-out all received s (xN0) | deployment placed s | deployment change all received s (xN0) | secret rotation all received s (x change) | storm: all killed, all back s (xN0) | restart: all back s (xN0) | enrolled now | enroll s | connect s | sim RSS MiB | reconnects | replicas x sim processes | max central RSS MiB | max central CPU % | max sim RSS MiB\n",
    );
    for r in results {
        out += &format!(
            "{} | {} | {:.0} ({}) | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} ({}) | {} | {} ({}) | {:.1} | {:.1} ({}) | {:.1} ({}) | {:.1} ({}) | {:.1} ({}) | {} | {:.1} | {:.1} | {:.0} | {} | {}x{} | {:.0} | {:.0} | {:.0}\n",
            r.devices,
            r.store.name(),
            r.central_rss_mib,
            ratio(r.central_rss_mib, base.central_rss_mib),
            r.central_rss_mib * 1024.0 / r.devices as f64,
            r.central_cpu_pct,
            r.heartbeats_per_s,
            r.heartbeat.p50_us as f64 / 1000.0,
            r.heartbeat.p99_us as f64 / 1000.0,
            ratio(r.heartbeat.p99_us as f64, base.heartbeat.p99_us as f64),
            seconds(r.fanout.as_ref().map(|f| f.calls_s)),
            seconds(r.fanout.as_ref().map(|f| f.all_received_s)),
            match (&r.fanout, &base.fanout) {
                (Some(f), Some(b)) => ratio(f.all_received_s, b.all_received_s),
                _ => "-".into(),
            },
            r.deployment.place.all_received_s,
            r.deployment.change.all_received_s,
            ratio(r.deployment.change.all_received_s, base.deployment.change.all_received_s),
            r.deployment.secret_rotation.all_received_s,
            ratio(
                r.deployment.secret_rotation.all_received_s,
                r.deployment.change.all_received_s
            ),
            r.reconnection.storm_s,
            ratio(r.reconnection.storm_s, base.reconnection.storm_s),
            r.reconnection.restart_s,
            ratio(r.reconnection.restart_s, base.reconnection.restart_s),
            r.enrolled_now,
            r.enroll_s,
            r.connect_s,
            r.sim_rss_mib,
            r.reconnects,
            r.replicas,
            r.shards,
            r.central_rss_max_mib,
            r.central_cpu_max_pct,
            r.sim_rss_max_mib,
        );
    }
    out
}
