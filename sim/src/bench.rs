//! The fleet scale benchmark (issue 7): for each fleet size, a fresh `cairn-central serve`
//! process, N enrolled devices (cached on disk), then central's memory, heartbeat round trips in
//! steady state, and the time for a config change to reach every device.
//!
//! The registry is central's embedded SQLite database (data and identity cache under
//! `fleet-<N>/`, reused by later runs) or, with [`BenchOptions::database`], a fresh PostgreSQL
//! database per size (under `fleet-<N>-postgres/`; every device enrolls anew, as a fresh
//! database knows none of them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::central_process::{self, CentralError, CentralProcess};
use crate::fleet::{FanOut, Fleet, FleetError, FleetOptions, Latency};
use crate::identity::{self, IdentityError};
use crate::registry::{self, AdminUrl, StoreKind};
use crate::rest::{Operator, RestError};

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
    /// PostgreSQL server on which each size's central gets a fresh database (dropped after a
    /// successful size, kept for inspection after a failure); `None`: SQLite.
    pub database: Option<AdminUrl>,
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
        "{devices} devices need about {needed} open files in central and in the simulator, but RLIMIT_NOFILE is {limit} \
         and could not be raised (raising the hard limit needs CAP_SYS_RESOURCE); run as a user allowed to raise it \
         (e.g. `prlimit --nofile=1048576`) or use sizes up to {largest_possible}"
    )]
    DescriptorLimit {
        /// The size asked for.
        devices: usize,
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
    /// The config fan-out.
    pub fanout: FanOut,
    /// Sync streams that ended and were reopened during the run.
    pub reconnects: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Raise RLIMIT_NOFILE (soft and, as root, hard) to at least `wanted`; returns the soft limit.
pub fn raise_nofile(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let hard = limit.rlim_max.max(wanted as libc::rlim_t);
        let raised = libc::rlimit {
            rlim_cur: wanted as libc::rlim_t,
            rlim_max: hard,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let fallback = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &fallback);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Run every size in turn.
pub async fn run(options: &BenchOptions) -> Result<Vec<SizeResult>, BenchError> {
    let largest = options.sizes.iter().copied().max().unwrap_or(0) as u64;
    // Central is our child and inherits the limit: one descriptor per device on each side.
    let nofile = raise_nofile((largest + 20_000).min(1_048_576));
    eprintln!("cairn-sim: RLIMIT_NOFILE = {nofile}");
    if let Some(&devices) = options.sizes.iter().find(|&&n| n as u64 + DESCRIPTOR_MARGIN > nofile) {
        return Err(BenchError::DescriptorLimit {
            devices,
            needed: devices as u64 + DESCRIPTOR_MARGIN,
            limit: nofile,
            largest_possible: nofile.saturating_sub(DESCRIPTOR_MARGIN),
        });
    }
    let mut results = Vec::new();
    for &devices in &options.sizes {
        let result = run_size(options, devices).await?;
        eprintln!("cairn-sim: {}", serde_json::to_string(&result).unwrap_or_default());
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
            let fresh = registry::create_fresh(admin, devices).await.map_err(|source| BenchError::Database {
                devices,
                server: admin.to_string(),
                source: Box::new(source),
            })?;
            eprintln!("cairn-sim: {devices} devices: fresh PostgreSQL database {} on {admin}", fresh.name);
            database = Some(fresh);
        }
    }
    eprintln!(
        "cairn-sim: {devices} devices: starting central on {} ({} identities cached)",
        store.name(),
        identities.len()
    );
    let url = database.as_ref().map(|d| d.url.as_str());
    let result = match CentralProcess::start(&options.central_bin, &dir, url).await {
        Ok(central) => {
            let result = with_central(options, devices, store, &central, &cache, identities).await;
            central.stop();
            result
        }
        Err(e) => Err(e.into()),
    };
    if let (Some(admin), Some(database)) = (&options.database, &database) {
        match &result {
            Ok(_) => {
                if let Err(e) = registry::drop_database(admin, database).await {
                    eprintln!("cairn-sim: warning: could not drop the benchmark database {}: {e}", database.name);
                }
            }
            Err(_) => eprintln!("cairn-sim: kept the PostgreSQL database {} for inspection", database.name),
        }
    }
    result
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

/// Enroll what the cache lacks, run the fleet and measure, with `central` running (the caller
/// stops it whatever the outcome).
async fn with_central(
    options: &BenchOptions,
    devices: usize,
    store: StoreKind,
    central: &CentralProcess,
    cache: &std::path::Path,
    mut identities: Vec<identity::DeviceIdentity>,
) -> Result<SizeResult, BenchError> {
    let operator = Operator::new(central.rest, &central.ca_pem, &central.admin_token)?;
    let enrolled_now = devices - identities.len();
    let enroll_started = Instant::now();
    if enrolled_now > 0 {
        let token = operator.auto_token("cairn-sim").await?;
        while identities.len() < devices {
            let range = identities.len()..(identities.len() + ENROLL_BATCH).min(devices);
            let batch = identity::enroll_many(
                central.grpc,
                &central.ca_pem,
                &token,
                "sim",
                range,
                options.enroll_concurrency,
            )
            .await?;
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
    let fleet_err = |source| BenchError::Fleet { devices, source };
    let fleet = Fleet::start(central.grpc, &central.ca_pem, identities, &options.fleet);
    let measured = measure(options, central, &operator, &fleet).await;
    let reconnects = fleet.reconnects();
    let (sim_rss, _) = central_process::memory_of("/proc/self/status");
    fleet.stop().await;
    let (connect_s, central_rss, central_cpu_pct, heartbeat, fanout, central_peak) = measured.map_err(fleet_err)?;
    Ok(SizeResult {
        devices,
        store,
        enrolled_now,
        enroll_s: if enrolled_now > 0 { enroll_s } else { 0.0 },
        connect_s,
        central_rss_mib: mib(central_rss),
        central_peak_mib: mib(central_peak),
        central_cpu_pct,
        sim_rss_mib: mib(sim_rss),
        heartbeats_per_s: devices as f64 / options.fleet.heartbeat_interval.as_secs_f64(),
        heartbeat,
        fanout,
        reconnects,
    })
}

type Measured = (f64, u64, f64, Latency, FanOut, u64);

async fn measure(
    options: &BenchOptions,
    central: &CentralProcess,
    operator: &Operator,
    fleet: &Fleet,
) -> Result<Measured, FleetError> {
    let devices = fleet.len();
    let connect_budget = Duration::from_secs(60 + devices as u64 / 100);
    let connect_s = fleet.wait_connected(connect_budget).await?.as_secs_f64();
    eprintln!("cairn-sim: {devices} devices connected in {connect_s:.1} s; warming up one heartbeat interval");
    fleet
        .wait_acked(1, options.fleet.heartbeat_interval * 3 + Duration::from_secs(30))
        .await?;
    let cpu_before = central.cpu_seconds();
    let window_started = Instant::now();
    let heartbeat = fleet.measure_heartbeats(options.window).await;
    let cpu_pct = 100.0 * (central.cpu_seconds() - cpu_before) / window_started.elapsed().as_secs_f64();
    let (rss, _) = central.memory();
    eprintln!("cairn-sim: {devices} devices: heartbeat p50 {} µs p99 {} µs; central RSS {:.0} MiB; pushing a config change to all", heartbeat.p50_us, heartbeat.p99_us, mib(rss));
    let marker = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let fanout_budget = Duration::from_secs(120 + devices as u64 / 50);
    let fanout = fleet
        .fan_out_config(operator, marker, options.fanout_concurrency, fanout_budget)
        .await?;
    let (_, peak) = central.memory();
    Ok((connect_s, rss, cpu_pct, heartbeat, fanout, peak))
}

/// The results as a table; growth columns are ratios against the first (smallest) size.
pub fn table(results: &[SizeResult]) -> String {
    let Some(base) = results.first() else {
        return String::new();
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() };
    let mut out = String::from(
        "devices | store | central RSS MiB (xN0) | KiB/device | central CPU % | hb/s | hb p50 ms | hb p99 ms (xN0) | fan-out calls s | fan-out all received s (xN0) | enrolled now | enroll s | connect s | sim RSS MiB | reconnects\n",
    );
    for r in results {
        out += &format!(
            "{} | {} | {:.0} ({}) | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} ({}) | {:.1} | {:.1} ({}) | {} | {:.1} | {:.1} | {:.0} | {}\n",
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
            r.fanout.calls_s,
            r.fanout.all_received_s,
            ratio(r.fanout.all_received_s, base.fanout.all_received_s),
            r.enrolled_now,
            r.enroll_s,
            r.connect_s,
            r.sim_rss_mib,
            r.reconnects,
        );
    }
    out
}
