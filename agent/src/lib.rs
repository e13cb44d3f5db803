//! `cairn-agent`: the on-device daemon. It creates the device key (TPM or software), enrolls the
//! device with central (zero-touch, CSR + fleet token + hardware facts), then keeps a mutual-TLS
//! Sync stream with central: heartbeats out, revisioned desired state in, stored on disk so the
//! device keeps running from it while central is unreachable. The certificate is renewed before
//! it expires; a revoked device stops being served but keeps its key.
//!
//! Everything is driven by an [`AgentConfig`] and stops on a [`tokio::sync::watch`] flag, with no
//! process globals, so a benchmark can run many agents in one process ([`spawn_agents`]).
//!
//! # Assembly
//!
//! [`Agent::new`] (in [`agent`]) is the one place the daemon is put together. Each subsystem
//! gets the narrow handle it needs, never the `Agent`:
//!
//! - enrollment: [`enroll::Enroller`] (identity, dialer, facts, token, status);
//! - the Sync session, renewal, escrow, log requests, heartbeat metrics:
//!   [`sync::Session`] (identity, dialer, status, [`desired::DesiredStore`], event queue, host
//!   sampler, [`log_requests::LogSources`], the secret cache, the `[boot]` section when it
//!   blesses);
//! - apps: [`apps::AppsSink`] (its `[apps]` section, the event queue and the
//!   [`secrets::SecretCache`]), seen by the rest as a [`DesiredStateSink`];
//! - app secrets: [`secrets::SecretCache`], filled by the Sync session, read by the apps sink,
//!   encrypted under a key kept where the device key is ([`secrets_key::CacheKeyStore`]);
//! - OS updates: [`update::UpdateLink`] (identity, dialer, status and desired-state
//!   receivers, `[disk]`, the TCTI, the ESP, containerd's socket);
//! - boot slots and the data partition: plain functions over their config section
//!   ([`boot`], [`boot::slots`], [`data`]) and the one [`Slot`] type;
//! - the clock: [`time_sync::TimeKeeper`] (the dialer and its [`clock::Clock`], the `[time]`
//!   section, the event queue), shared by enrollment and the main loop;
//! - status: [`status::StatusReporter`], shared; events: [`events::EventQueue`], shared;
//! - systemd: [`run_notifying`] tells it `READY=1`, the phase and feeds the watchdog from the
//!   main loop's [`liveness::Liveness`].
//!
//! # Module layers
//!
//! Each module uses only modules of the layers above it; `tests/module_layers.rs` fails on a
//! module that does otherwise (and so on any cycle):
//!
//! 1. Leaves: `config` (every section, defaults and validation), `slot`, `status`, `sink`, `events`, `certificate`, `backoff`, `shutdown`, `liveness`, `blocking`, `console`, `os_release`, `host_metrics`, `tpm_key`, `clock`.
//! 2. State on disk and the device's parts: `state`, `boot`, `data`, `log_requests`, `logging`, `notify`, `ntp`.
//! 3. The device key and the held desired state: `key`, `desired`.
//! 4. What the key signs and proves, and the key the apps' secrets are kept under: `csr`, `tls_key`, `facts`, `identity`, `secrets_key`.
//! 5. The apps' secrets as held: `secrets`.
//! 6. The apps on containerd: `apps`.
//! 7. Reaching central: `channel`.
//! 8. Central's signed time, before anything else trusts a certificate: `time_sync`.
//! 9. Subsystems: `enroll`, `sync`, `update`.
//! 10. Assembly and the main loop: `agent`.

pub mod agent;
pub mod apps;
pub mod backoff;
mod blocking;
pub mod boot;
pub mod certificate;
pub mod channel;
pub mod clock;
pub mod config;
pub mod console;
pub mod csr;
pub mod data;
pub mod desired;
pub mod enroll;
pub mod events;
pub mod facts;
pub mod host_metrics;
pub mod identity;
pub mod key;
pub mod liveness;
pub mod log_requests;
pub mod logging;
pub mod notify;
pub mod ntp;
pub mod os_release;
pub mod secrets;
pub mod secrets_key;
pub mod shutdown;
pub mod sink;
pub mod slot;
pub mod state;
pub mod status;
pub mod sync;
pub mod time_sync;
pub mod tls_key;
pub mod tpm_key;
pub mod update;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use notify::Notifier;

pub use agent::{Agent, AgentError};
pub use config::AgentConfig;
pub use enroll::{EnrollError, EnrollOutcome};
pub use facts::HardwareFacts;
pub use key::DeviceKey;
pub use sink::{DesiredStateSink, RecordOnlySink};
pub use slot::Slot;
pub use status::{Phase, Status};

/// Runs one agent until `shutdown` becomes `true` (or its sender is dropped), running the desired
/// apps on containerd when `[apps] enabled`.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    run_notifying(config, shutdown, Notifier::disabled()).await
}

/// [`run`], telling systemd through `notifier`: `READY=1` once the agent is prepared (state
/// directory, device key, configuration) and before its main loop, `STATUS=` with each phase,
/// `WATCHDOG=1` while the main loop keeps its promise ([`liveness`]) when systemd asks for a
/// watchdog, and `STOPPING=1` at the end.
pub async fn run_notifying(
    config: AgentConfig,
    shutdown: watch::Receiver<bool>,
    notifier: Notifier,
) -> Result<(), AgentError> {
    let notifier = Arc::new(notifier);
    notifier.status("preparing: state directory, device key, facts");
    let (agent, updater) = Agent::new(config)
        .await?
        .with_configured_apps()
        .with_configured_update();
    let agent = Arc::new(agent);
    let mut side_tasks = Vec::new();
    if notifier.is_enabled() {
        let mut status = agent.status();
        let phase = status.borrow_and_update().phase;
        notifier.ready(&phase_status(phase));
        let to_systemd = notifier.clone();
        side_tasks.push(tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let phase = status.borrow_and_update().phase;
                to_systemd.status(&phase_status(phase));
            }
        }));
        if let Some(period) = notify::watchdog_period() {
            info!(
                ?period,
                "feeding systemd's watchdog while the main loop makes progress"
            );
            side_tasks.push(tokio::spawn(notify::feed_watchdog(
                notifier.clone(),
                agent.liveness().clone(),
                period,
            )));
        }
    }
    side_tasks.extend(updater.map(|u| u.spawn(shutdown.clone())));
    let result = agent.run(shutdown).await;
    notifier.stopping();
    for task in side_tasks {
        task.abort();
    }
    result
}

/// The `STATUS=` line of a phase.
fn phase_status(phase: Phase) -> String {
    let what = match phase {
        Phase::Enrolling => "enrolling with central",
        Phase::Pending => "enrollment pending an operator's approval",
        Phase::Refused => "enrollment refused by central; retrying slowly",
        Phase::Connected => "connected to central",
        Phase::Offline => "offline: running from the stored desired state",
        Phase::Revoked => "revoked by central; retrying slowly",
        Phase::Wiped => "crypto-erased on central's order; idle",
    };
    format!("{phase}: {what}")
}

/// A running agent in a fleet: its status feed and task.
#[derive(Debug)]
pub struct RunningAgent {
    /// The agent (for facts, the key, `ping`, `desired_state`).
    pub agent: Arc<Agent>,
    /// Its status, as in `status.json`.
    pub status: watch::Receiver<Status>,
    /// The task running [`Agent::run`].
    pub task: JoinHandle<Result<(), AgentError>>,
}

/// Prepares and starts one agent per config on the current runtime (for the fleet benchmark and
/// integration tests). Fails on the first config that cannot be prepared; agents already started
/// stop with `shutdown`.
pub async fn spawn_agents(
    configs: Vec<AgentConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<RunningAgent>, AgentError> {
    let mut running = Vec::with_capacity(configs.len());
    for config in configs {
        let agent = Arc::new(Agent::new(config).await?.with_configured_apps());
        let status = agent.status();
        let task = {
            let agent = agent.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { agent.run(shutdown).await })
        };
        running.push(RunningAgent {
            agent,
            status,
            task,
        });
    }
    Ok(running)
}

/// Waits until `status` reaches `phase` (for tests and benchmarks); `false` if the agent is gone.
pub async fn wait_for_phase(status: &mut watch::Receiver<Status>, phase: Phase) -> bool {
    status.wait_for(|s| s.phase == phase).await.is_ok()
}
