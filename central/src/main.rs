//! `cairn-central`: parse arguments, load the config, serve.

use std::path::PathBuf;

use anyhow::Context;
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
    }
    Ok(())
}
