//! `cairn-sim bench`: run the fleet scale benchmark against a `cairn-central serve` process.

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
        /// Also write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run central on PostgreSQL: admin URL (postgres://user:password@host:port/database,
        /// a role allowed to create databases) of the server on which each size gets a fresh
        /// database. Default: central's embedded SQLite.
        #[arg(long, env = cairn_sim::registry::DATABASE_URL_ENV, hide_env_values = true)]
        database_url: Option<String>,
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
            json,
            database_url,
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
                database,
            };
            let results = runtime
                .block_on(cairn_sim::bench::run(&options))
                .context("fleet benchmark")?;
            print!("{}", cairn_sim::bench::table(&results));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
