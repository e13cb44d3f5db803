//! `cairn-sim bench`: run the fleet scale benchmark against a `cairn-central serve` process (or
//! several replicas). `cairn-sim worker` is a part of a sharded fleet the benchmark starts
//! itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn-sim", about = "Cairn fleet simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// For each fleet size: start central, enroll (cached), connect, measure, push a change.
    Bench {
        /// Fleet sizes, comma separated; ratios are against the first.
        #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
        sizes: Vec<usize>,
        /// The cairn-central binary (default: next to this one).
        #[arg(long)]
        central_bin: Option<PathBuf>,
        /// Where per-size data (central registry, identity cache, logs) lives.
        #[arg(long, default_value = "target/cairn-sim")]
        work_dir: PathBuf,
        /// Mean milliseconds between heartbeats of a device (agent default: 15000).
        #[arg(long, default_value_t = 15_000)]
        heartbeat_ms: u64,
        /// Seconds of heartbeat round trips recorded per size.
        #[arg(long, default_value_t = 30)]
        window_s: u64,
        /// TLS handshakes in flight while connecting.
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// Enroll calls in flight.
        #[arg(long, default_value_t = 64)]
        enroll_concurrency: usize,
        /// REST calls in flight during the fan-out.
        #[arg(long, default_value_t = 64)]
        fanout_concurrency: usize,
        /// Also time a config change made with one REST call per device (at 100k devices that
        /// is 100k calls on the registry's one writer, so it is off unless asked for).
        #[arg(long)]
        config_fan_out: bool,
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run central on PostgreSQL: admin URL (postgres://user:password@host:port/database,
        /// a role allowed to create databases) of the server on which each size gets a fresh
        /// database. Default: central's embedded SQLite.
        #[arg(long, env = cairn_sim::registry::DATABASE_URL_ENV, hide_env_values = true)]
        database_url: Option<String>,
        /// Central replicas on the one PostgreSQL database (needs --database-url): device i
        /// enrolls with and streams to replica i % N; the fan-out change goes through replica 0.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        replicas: u64,
        /// Simulator processes holding the devices (default: ceil(devices / 18000) per size;
        /// 1 runs them in this process).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
        shards: Option<u64>,
    },
    /// One simulator process of a sharded fleet (started by `bench`; commands on stdin, JSON
    /// events on stdout).
    #[command(hide = true)]
    Worker {
        /// Identities of its devices, in fleet index order.
        #[arg(long)]
        identities: PathBuf,
        /// Fleet index of its first device.
        #[arg(long)]
        first_index: usize,
        /// gRPC addresses of the central replicas, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<std::net::SocketAddr>,
        /// Fleet CA, PEM file.
        #[arg(long)]
        ca: PathBuf,
        /// Mean milliseconds between heartbeats of a device.
        #[arg(long)]
        heartbeat_ms: u64,
        /// TLS handshakes in flight while connecting.
        #[arg(long)]
        connect_concurrency: usize,
        /// Seconds for every device to connect.
        #[arg(long)]
        connect_timeout_s: u64,
        /// Seconds for every device to get a heartbeat acknowledged after connecting.
        #[arg(long)]
        ack_timeout_s: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Command::Bench {
            sizes,
            central_bin,
            work_dir,
            heartbeat_ms,
            window_s,
            connect_concurrency,
            enroll_concurrency,
            fanout_concurrency,
            config_fan_out,
            json,
            database_url,
            replicas,
            shards,
        } => {
            // Checked here rather than by clap, whose error would echo the value (password).
            let database = database_url
                .as_deref()
                .map(cairn_sim::registry::AdminUrl::new)
                .transpose()?;
            let central_bin = match central_bin {
                Some(bin) => bin,
                None => std::env::current_exe()?.with_file_name("cairn-central"),
            };
            let options = cairn_sim::bench::BenchOptions {
                sizes,
                central_bin,
                work_dir,
                fleet: cairn_sim::FleetOptions {
                    heartbeat_interval: Duration::from_millis(heartbeat_ms),
                    connect_concurrency,
                },
                window: Duration::from_secs(window_s),
                enroll_concurrency,
                fanout_concurrency,
                config_fan_out,
                database,
                replicas: replicas as usize,
                shards: shards.map(|s| s as usize),
                sim_bin: std::env::current_exe().context("locating the cairn-sim binary")?,
            };
            if options.replicas > 1 && options.database.is_none() {
                anyhow::bail!(cairn_sim::bench::BenchError::ReplicasNeedPostgres(
                    options.replicas
                ));
            }
            let results = runtime
                .block_on(until_interrupted(cairn_sim::bench::run(&options)))?
                .context("fleet benchmark")?;
            print!("{}", cairn_sim::bench::table(&results));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Worker {
            identities,
            first_index,
            replicas,
            ca,
            heartbeat_ms,
            connect_concurrency,
            connect_timeout_s,
            ack_timeout_s,
        } => {
            let options = cairn_sim::shards::WorkerOptions {
                identities,
                first_index,
                replicas,
                ca,
                fleet: cairn_sim::FleetOptions {
                    heartbeat_interval: Duration::from_millis(heartbeat_ms),
                    connect_concurrency,
                },
                connect_timeout: Duration::from_secs(connect_timeout_s),
                ack_timeout: Duration::from_secs(ack_timeout_s),
            };
            // One descriptor per device: as many as the hard limit allows.
            cairn_sim::bench::raise_nofile(1_048_576);
            runtime
                .block_on(cairn_sim::shards::run_worker(options))
                .context("simulator worker")?;
        }
    }
    Ok(())
}

/// Run `work` until it ends or SIGINT/SIGTERM arrives; on a signal the work is dropped, which
/// stops the central processes and workers it started.
async fn until_interrupted<T>(work: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = work => Ok(result),
        _ = interrupt.recv() => anyhow::bail!("interrupted (SIGINT); central and simulator workers stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated (SIGTERM); central and simulator workers stopped"),
    }
}
