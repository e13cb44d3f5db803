//! `cairn-agent`: thin CLI over the `cairn_agent` library.

use std::path::PathBuf;

use anyhow::Context;
use cairn_agent::{key::choose_storage, AgentConfig, HardwareFacts};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// The Cairn device agent.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with central (if needed) and keep the device in sync until SIGTERM/SIGINT.
    Run {
        /// Agent config file (TOML).
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
    /// Print the hardware facts the agent would send, as JSON.
    Facts {
        /// Agent config file (TOML).
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            runtime.block_on(run(config))
        }
        Command::Facts { config } => {
            let config = AgentConfig::load(&config)?;
            let facts = HardwareFacts::gather(&config, &choose_storage(&config))?;
            println!("{}", serde_json::to_string_pretty(&facts)?);
            Ok(())
        }
    }
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
        // Keep the sender alive: dropping it also means shutdown, which is what we want anyway.
    });
    let result = cairn_agent::run(config, rx).await;
    signals.abort();
    result.context("cairn-agent stopped")
}
