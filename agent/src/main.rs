//! `cairn-agent`: thin CLI over the `cairn_agent` library.

use std::path::PathBuf;

use anyhow::Context;
use cairn_agent::Slot;
use cairn_agent::{key::choose_storage, AgentConfig, HardwareFacts};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

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
    /// Early in boot: open the encrypted data partition (first boot: create it), or report that
    /// it needs the recovery key. Exits non-zero when the data stays locked.
    Unlock {
        /// Agent config file (TOML); its `[disk]` section says what to open.
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
    /// A/B boot slots on the ESP: the UKI step of an OS update, and RAUC's bootloader backend.
    Boot {
        /// Agent config file (TOML); only its `[boot]` section is read (`esp`, `tries`).
        #[arg(
            long,
            global = true,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: BootCommand,
    },
    /// At shutdown (cairn-apps-stop.service): stop every app's containers, SIGKILL after the
    /// grace period, while containerd and /data are still up. Restarting the agent alone leaves
    /// the apps running.
    StopApps {
        /// Agent config file (TOML); its `[apps]` section says where containerd is.
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
    /// Early in boot, before anything checks a certificate: move the system clock forward to the
    /// last known good time the agent saved (boxes without an RTC boot in the past). Prints a
    /// `CAIRN-CLOCK` line for the console.
    ClockRestore {
        /// Agent config file (TOML); its `state_dir` holds the saved time.
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
    /// Early in boot (cairn-firewall.service): load the device firewall without any published
    /// port; the agent opens the ports apps publish once it runs them.
    Firewall {
        /// Agent config file (TOML); its `[apps]` section says whether the firewall is on.
        #[arg(
            long,
            env = "CAIRN_AGENT_CONFIG",
            default_value = "/etc/cairn/agent.toml"
        )]
        config: PathBuf,
    },
    /// Run by containerd's shim for each app task, not by hand: copy the task's output (fds 3
    /// and 4) into its service's log, rotated before it passes its size limit.
    WriteLog {
        /// `<max_bytes>,<keep>,<log file>`, written by the agent into the task's log URI.
        spec: String,
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

#[derive(Debug, Subcommand)]
enum BootCommand {
    /// Copy a slot's UKI to `<esp>/EFI/cairn/cairn-<slot>.efi` durably, after marking the slot
    /// bad (RAUC's slot hook runs this after writing the root slot).
    InstallUki {
        /// The signed UKI (from the bundle).
        uki: PathBuf,
        /// Slot: a or b.
        slot: Slot,
    },
    /// RAUC's custom bootloader backend (system.conf `bootloader=custom`).
    RaucBackend {
        #[command(subcommand)]
        request: RaucBackendCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RaucBackendCommand {
    /// Print the slot systemd-boot boots next (a or b).
    GetPrimary,
    /// Make a slot boot next, with a fresh try counter.
    SetPrimary {
        /// a or b.
        slot: Slot,
    },
    /// Print good or bad.
    GetState {
        /// a or b.
        slot: Slot,
    },
    /// Mark a slot good (drop its counter) or bad (no tries left).
    SetState {
        /// a or b.
        slot: Slot,
        /// good or bad.
        state: String,
    },
}

fn boot(config: &std::path::Path, command: BootCommand) -> anyhow::Result<()> {
    use cairn_agent::boot::slots::{self, RaucRequest, SlotState};
    let cfg = cairn_agent::boot::BootConfig::load(config)?;
    match command {
        BootCommand::InstallUki { uki, slot } => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            slots::install_uki(&cfg.esp, &uki, slot, slots::booted_slot(&cmdline))?;
        }
        BootCommand::RaucBackend { request } => {
            let request = match request {
                RaucBackendCommand::GetPrimary => RaucRequest::GetPrimary,
                RaucBackendCommand::SetPrimary { slot } => RaucRequest::SetPrimary(slot),
                RaucBackendCommand::GetState { slot } => RaucRequest::GetState(slot),
                RaucBackendCommand::SetState { slot, state } => {
                    RaucRequest::SetState(slot, SlotState::parse(&state)?)
                }
            };
            if let Some(out) = slots::rauc_backend(&cfg.esp, cfg.tries, &request)? {
                println!("{out}");
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        // One per running container: no logging set-up and no tokio runtime.
        Command::WriteLog { spec } => {
            return cairn_runtime::container::write_log(&spec).context("cannot write a task's log");
        }
        command => command,
    };
    let output = cairn_agent::logging::init();
    tracing::debug!(?output, "logging set up");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match command {
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            runtime.block_on(run(config))
        }
        Command::Unlock { config } => unlock(&AgentConfig::load(&config)?),
        Command::Boot { config, command } => boot(&config, command),
        Command::Firewall { config } => {
            let config = AgentConfig::load(&config)?;
            let loaded = runtime
                .block_on(cairn_agent::apps::load_base_firewall(&config.apps))
                .context(
                    "cannot load the device firewall; the LAN may reach the device's services",
                )?;
            let what = if loaded {
                "loaded (no published port yet)"
            } else {
                "off in [apps]"
            };
            println!("cairn-firewall: {what}");
            Ok(())
        }
        Command::StopApps { config } => {
            let config = AgentConfig::load(&config)?;
            let stopped = runtime
                .block_on(cairn_agent::apps::stop_apps(
                    &config.apps,
                    &config.state_dir,
                ))
                .context(
                    "cannot stop the apps; systemd kills what is left at the end of the shutdown",
                )?;
            println!("cairn-apps: stopped {stopped} app task(s)");
            Ok(())
        }
        Command::ClockRestore { config } => {
            let config = AgentConfig::load(&config)?;
            anyhow::ensure!(
                config.time.set_system_clock,
                "[time] set_system_clock = false in the agent config: this agent does not manage the system clock"
            );
            let clock = cairn_agent::clock::Clock::system();
            match cairn_agent::time_sync::restore_floor(&clock, &config.clock_floor_path())
                .context("cannot restore the last known good time")?
            {
                Some(to) => println!("CAIRN-CLOCK restored={}", cairn_agent::clock::rfc3339(to)),
                None => println!(
                    "CAIRN-CLOCK kept={}",
                    cairn_agent::clock::rfc3339(clock.now_unix_ms())
                ),
            }
            Ok(())
        }
        Command::WriteLog { .. } => unreachable!("handled above"),
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
    let notifier = cairn_agent::notify::Notifier::from_env();
    let result = cairn_agent::run_notifying(config, rx, notifier).await;
    signals.abort();
    result.context("cairn-agent stopped")
}

/// Prints one `CAIRN-DATA ...` line for the console (the unit sends stdout there): the outcome, and
/// for a locked disk the reason and each changed PCR.
#[cfg(feature = "tpm")]
fn unlock(config: &AgentConfig) -> anyhow::Result<()> {
    use cairn_agent::data::{unlock_data, DataError};
    anyhow::ensure!(
        config.disk.enabled,
        "[disk] enabled = false in the agent config: this device has no managed data partition"
    );
    let tcti = config.tcti();
    // The TPM driver may still be probing this early in boot.
    if let Some(node) = tcti.strip_prefix("device:") {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !std::path::Path::new(node).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    match unlock_data(&config.disk, tcti) {
        Ok(status) => {
            println!(
                "CAIRN-DATA state={} reason={:?}",
                status.state,
                status.reason.unwrap_or_default()
            );
            Ok(())
        }
        Err(e @ DataError::Locked(_)) => {
            if let DataError::Locked(status) = &e {
                for pcr in &status.changed_pcrs {
                    println!("CAIRN-DATA changed-pcr {pcr}");
                }
            }
            println!("CAIRN-DATA state=locked reason={:?}", e.to_string());
            Err(e.into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("data partition unlock failed")),
    }
}

#[cfg(not(feature = "tpm"))]
fn unlock(_config: &AgentConfig) -> anyhow::Result<()> {
    anyhow::bail!(
        "this cairn-agent was built without the `tpm` feature: it cannot unlock the data partition"
    )
}
