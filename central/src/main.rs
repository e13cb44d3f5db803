//! `cairn-central`: parse arguments, load the config, serve (or rotate the secrets key).

use std::path::PathBuf;

use anyhow::Context;
use cairn_central::secrets::rotation::{self, RotationMode};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn-central", version, about = "Cairn central service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent gRPC API and the operator REST API.
    Serve {
        /// Path to the TOML config (see central.example.toml).
        #[arg(long, short, env = "CAIRN_CENTRAL_CONFIG")]
        config: PathBuf,
    },
    /// Rotate the secrets' key-encryption key: keep the old key in data_dir/secrets-keys/,
    /// write a new data_dir/secrets.key and re-wrap every secret's data key under it (values
    /// are not re-encrypted). Safe while centrals serve; run it on one host of the data_dir.
    RotateSecretsKey {
        /// Path to the TOML config of the central whose registry and data_dir to use.
        #[arg(long, short, env = "CAIRN_CENTRAL_CONFIG")]
        config: PathBuf,
        /// Make no new key; only re-wrap the rows not under the current one (finishes a
        /// rotation that was interrupted).
        #[arg(long)]
        rewrap_only: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { config } => {
            let config = cairn_central::CentralConfig::load(&config)?;
            let central = cairn_central::start(config)
                .await
                .context("starting cairn-central")?;
            eprintln!(
                "cairn-central: grpc={} rest={}",
                central.grpc_addr, central.rest_addr
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down");
            central.stop().await;
        }
        Command::RotateSecretsKey {
            config,
            rewrap_only,
        } => {
            let config = cairn_central::CentralConfig::load(&config)?;
            let mode = if rewrap_only {
                RotationMode::RewrapOnly
            } else {
                RotationMode::NewKey
            };
            let report = tokio::task::spawn_blocking(move || {
                rotation::rotate_secrets_key(&config, mode, |p| {
                    println!("re-wrapped {}/{} data keys", p.rewrapped, p.total)
                })
            })
            .await?
            .context("rotating the secrets key")?;
            print_rotation(&report)?;
        }
    }
    Ok(())
}

/// Say what a rotation did, and which retired keys may go; fails when a row was left behind.
fn print_rotation(report: &rotation::RotationReport) -> anyhow::Result<()> {
    if let Some(rotated) = &report.rotated {
        println!(
            "retired key {} (kept in secrets-keys/{}.key); new key {} in secrets.key",
            rotated.old, rotated.old, rotated.new
        );
    }
    println!(
        "{} data keys re-wrapped under {}; no value was re-encrypted",
        report.rewrapped, report.current
    );
    for (id, rows) in &report.rows_by_key {
        println!("key {id} wraps {rows} secrets");
    }
    for path in &report.unused_retired {
        println!(
            "no secret uses {}: remove it after backing it up, once no database backup you may restore needs it",
            path.display()
        );
    }
    for failure in &report.failed {
        eprintln!("not re-wrapped: {failure}");
    }
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} secrets could not be re-wrapped and still name their old key (see above)",
            report.failed.len()
        );
    }
    Ok(())
}
