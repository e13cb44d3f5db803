//! Apps: runs the apps of the desired state on containerd (namespace `cairn`) through
//! cairn-runtime's [`Reconciler`], and reports what it observes in every heartbeat.
//!
//! [`AppsSink`] is the agent's [`DesiredStateSink`]: each desired state (the stored one at start,
//! then every newer revision) is parsed app by app with [`AppSpec::parse_with_variables`],
//! interpolating the variables central sent for the app (`App.variables`: its built-ins such as
//! `CAIRN_SITE` and the operator's), and handed to a reconcile task. An app whose Compose file this agent refuses is not run and is reported with
//! the parser's error; it never stops the agent or the other apps. Each pass's result is kept
//! with the revision and generations it was computed for, so a status never claims to reflect a
//! desired state it has not seen.

mod report;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_compose::{AppSpec, RegistryLogin};
use cairn_proto::v1::{AppStatus, DesiredState, SecretKind};
use cairn_runtime::cgroup::{self, AppsCeiling};
use cairn_runtime::container::RuntimeConfig;
use cairn_runtime::containerd::Containerd;
use cairn_runtime::network::Firewall;
use cairn_runtime::reconcile::{DesiredApp, Reconciler, ReconcilerConfig};
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::events::EventQueue;
use crate::secrets::SecretCache;
use crate::sink::DesiredStateSink;
use cairn_proto::v1::EventSeverity;

pub use crate::config::{AppsConfig, DEFAULT_CONTAINERD_SOCKET};

/// The containerd namespace of Cairn's apps.
pub const NAMESPACE: &str = "cairn";

/// Label of the compose text in parse errors (`compose_yaml:LINE: FIELD: problem`), as central
/// labels it.
const COMPOSE_LABEL: &str = "compose_yaml";

/// One app of a desired state, parsed (or refused).
#[derive(Debug, Clone)]
struct AppEntry {
    name: String,
    generation: u64,
    /// The app to run, or why it is not run.
    spec: Result<DesiredApp, String>,
}

/// The held secret values of `app` for the runtime: its file secrets by name, and the logins
/// of its registry secrets (used to pull its images, never written anywhere).
fn runtime_secrets(
    app: &cairn_proto::v1::App,
    secrets: &SecretCache,
) -> (BTreeMap<String, Vec<u8>>, Vec<RegistryLogin>) {
    let mut files = secrets.values(app);
    let mut logins = Vec::new();
    for secret in &app.secrets {
        if secret.kind() != SecretKind::Registry {
            continue;
        }
        let Some(value) = files.remove(&secret.name) else {
            continue;
        };
        match RegistryLogin::parse(&value) {
            Ok(login) => logins.push(login),
            // Central checks logins when they are stored; this is a second line.
            Err(e) => warn!(
                app = %app.name,
                secret = %secret.name,
                error = %e,
                "a registry secret is unusable; its registry is reached without it"
            ),
        }
    }
    (files, logins)
}

/// The apps of one desired-state revision, as handed to the reconcile task.
#[derive(Debug, Clone)]
struct AppliedState {
    revision: u64,
    entries: Vec<AppEntry>,
    /// The entries that parsed, in order.
    runnable: Vec<DesiredApp>,
}

impl AppliedState {
    fn from_desired(desired: &DesiredState, secrets: &SecretCache) -> AppliedState {
        let mut seen = HashSet::new();
        let entries: Vec<AppEntry> = desired
            .apps
            .iter()
            .map(|app| {
                let spec = if !seen.insert(app.name.as_str()) {
                    Err(format!(
                        "app {:?} appears twice in desired revision {}; only the first runs",
                        app.name, desired.revision
                    ))
                } else if app.compose_yaml.len() > cairn_proto::MAX_COMPOSE_BYTES {
                    Err(format!(
                        "compose_yaml is {} bytes, over the {}-byte limit",
                        app.compose_yaml.len(),
                        cairn_proto::MAX_COMPOSE_BYTES
                    ))
                } else {
                    let variables: BTreeMap<String, String> = app
                        .variables
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    AppSpec::parse_with_variables(
                        COMPOSE_LABEL,
                        &app.name,
                        &app.compose_yaml,
                        &variables,
                    )
                    .map(|spec| {
                        let digest_key = secrets.digest_key();
                        let (secrets, registry_logins) = runtime_secrets(app, secrets);
                        DesiredApp {
                            spec,
                            secrets,
                            registry_logins,
                            digest_key,
                        }
                    })
                    .map_err(|e| format!("refused by this agent: {e}"))
                };
                if let Err(e) = &spec {
                    warn!(app = %app.name, generation = app.generation, error = %e, "app not run");
                }
                AppEntry {
                    name: app.name.clone(),
                    generation: app.generation,
                    spec,
                }
            })
            .collect();
        let runnable = entries
            .iter()
            .filter_map(|e| e.spec.as_ref().ok().cloned())
            .collect();
        AppliedState {
            revision: desired.revision,
            entries,
            runnable,
        }
    }

    /// Apps this agent refused that run nowhere else in the state: whatever of them runs is
    /// left as it is, so a spec an updated parser reads stricter does not take a working app
    /// down (its refusal is reported, and central can send a spec that parses).
    fn held(&self) -> HashSet<String> {
        self.entries
            .iter()
            .filter(|e| e.spec.is_err())
            .filter(|e| !self.runnable.iter().any(|r| r.spec.name == e.name))
            .map(|e| e.name.clone())
            .collect()
    }
}

/// The agent's desired-state sink when apps are enabled; see the module docs.
pub struct AppsSink {
    desired: watch::Sender<Option<Arc<AppliedState>>>,
    observed: watch::Receiver<Vec<AppStatus>>,
    events: Arc<EventQueue>,
    /// The values of the apps' secrets.
    secrets: Arc<SecretCache>,
    /// (app, generation) already reported as refused, so a refusal is one event, not one per
    /// revision.
    refused_reported: std::sync::Mutex<HashSet<(String, u64)>>,
}

impl std::fmt::Debug for AppsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppsSink").finish_non_exhaustive()
    }
}

impl AppsSink {
    /// Starts the reconcile task on the current tokio runtime (it connects to containerd, and
    /// reconnects, by itself) and returns the sink feeding it. The task ends when the sink is
    /// dropped; containers keep running (the next agent takes them over).
    pub fn start(
        config: &AppsConfig,
        state_dir: &Path,
        secrets: Arc<SecretCache>,
    ) -> Arc<AppsSink> {
        Self::start_reporting(config, state_dir, Arc::new(EventQueue::default()), secrets)
    }

    /// Like [`AppsSink::start`], queuing `app.refused` and `app.reconcile_failed` events on
    /// `events` for central.
    pub fn start_reporting(
        config: &AppsConfig,
        state_dir: &Path,
        events: Arc<EventQueue>,
        secrets: Arc<SecretCache>,
    ) -> Arc<AppsSink> {
        let mut runtime = RuntimeConfig::new(config.data_dir(state_dir));
        runtime.runc_root = config.runc_root.clone();
        runtime.log_writer = config.log_writer();
        let ceiling = machine_ceiling();
        if let Ok(ceiling) = &ceiling {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            runtime.default_limits = ceiling.service_defaults(cpus);
        }
        let mut reconciler = ReconcilerConfig::new(runtime);
        reconciler.tick = config.reconcile_interval();
        reconciler.plain_http = config.plain_http_registries.iter().cloned().collect();
        reconciler.firewall = config.firewall.then(Firewall::default);
        let (desired, desired_rx) = watch::channel(None);
        let (observed_tx, observed) = watch::channel(Vec::new());
        let socket = config.containerd_socket.clone();
        tokio::spawn(
            reconcile_loop(
                socket,
                reconciler,
                ceiling,
                desired_rx,
                observed_tx,
                events.clone(),
            )
            .instrument(info_span!("apps")),
        );
        Arc::new(AppsSink {
            desired,
            observed,
            events,
            secrets,
            refused_reported: Default::default(),
        })
    }

    /// Follows the observed status (the same content as [`DesiredStateSink::observed_apps`]).
    pub fn observed(&self) -> watch::Receiver<Vec<AppStatus>> {
        self.observed.clone()
    }
}

impl DesiredStateSink for AppsSink {
    fn apply(&self, desired: &DesiredState) {
        // An app that left the device (or a secret it no longer has) takes its values along.
        self.secrets.retain(desired);
        let applied = AppliedState::from_desired(desired, &self.secrets);
        info!(
            revision = applied.revision,
            apps = applied.entries.len(),
            runnable = applied.runnable.len(),
            "desired apps handed to the reconciler"
        );
        {
            let mut reported = self
                .refused_reported
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for entry in &applied.entries {
                if let Err(why) = &entry.spec {
                    if reported.insert((entry.name.clone(), entry.generation)) {
                        self.events.push(
                            "app.refused",
                            EventSeverity::Error,
                            &format!(
                                "app {} (generation {}) is not run: {why}",
                                entry.name, entry.generation
                            ),
                        );
                    }
                }
            }
        }
        self.desired.send_replace(Some(Arc::new(applied)));
    }

    fn observed_apps(&self) -> Vec<AppStatus> {
        self.observed.borrow().clone()
    }
}

/// Stop the task of every app (SIGTERM, SIGKILL after the runtime's stop grace), keeping the
/// containers: what cairn-apps-stop.service runs at shutdown, so the system neither waits 90 s for
/// a container's PID 1 that ignores SIGTERM nor kills apps without a grace. Returns how many tasks
/// were stopped; 0 when `[apps]` is off.
///
/// # Errors
/// When containerd cannot be reached or a stop fails.
pub async fn stop_apps(
    config: &AppsConfig,
    state_dir: &Path,
) -> Result<usize, cairn_runtime::container::ContainerError> {
    if !config.enabled {
        return Ok(0);
    }
    let grace = RuntimeConfig::new(config.data_dir(state_dir)).stop_grace;
    let ctr = Containerd::connect(&config.containerd_socket, NAMESPACE).await?;
    cairn_runtime::container::stop_all_tasks(&ctr, grace).await
}

/// The apps' cgroup ceilings for this machine's memory.
fn machine_ceiling() -> Result<AppsCeiling, String> {
    let meminfo = Path::new("/proc/meminfo");
    let text =
        std::fs::read_to_string(meminfo).map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    let (total, _) =
        crate::host_metrics::parse_meminfo(meminfo, &text).map_err(|e| e.to_string())?;
    Ok(AppsCeiling::for_machine(total))
}

/// Set the ceilings of the cgroup all apps run under, so apps together leave memory for
/// containerd and the agent. A failure is reported and apps still run, with their own limits.
fn limit_apps(runtime: &RuntimeConfig, ceiling: &Result<AppsCeiling, String>, events: &EventQueue) {
    let result = ceiling.clone().and_then(|ceiling| {
        cgroup::limit_apps(&runtime.cgroup_root, &runtime.cgroup_parent, &ceiling)
            .map(|()| ceiling)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(ceiling) => info!(
            memory_bytes = ceiling.memory_bytes,
            pids = ceiling.pids,
            "apps' cgroup ceilings set"
        ),
        Err(error) => {
            warn!(%error, "apps run without a common memory ceiling");
            events.push(
                "app.reconcile_failed",
                EventSeverity::Warning,
                &format!("apps run without a common memory ceiling: {error}"),
            );
        }
    }
}

/// Load the device firewall with no published port: what cairn-firewall.service runs early in
/// boot, so nothing is reachable from the LAN until the agent opens what apps publish. Does
/// nothing when `[apps]` or its `firewall` is off.
///
/// # Errors
/// When nft cannot run or refuses the ruleset.
pub async fn load_base_firewall(
    config: &AppsConfig,
) -> Result<bool, cairn_runtime::network::FirewallError> {
    if !(config.enabled && config.firewall) {
        return Ok(false);
    }
    Firewall::default()
        .apply(&Default::default())
        .await
        .map(|()| true)
}

/// Longest wait between two attempts to reach containerd.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Reconcile on every desired change and at least every `cfg.tick`, publishing each pass's
/// status, until the sink is dropped. While containerd cannot be reached, attempts back off up to
/// [`CONNECT_RETRY_MAX`]. A repeated failure is logged once, not every pass. Cancellation safe
/// (each pass is idempotent).
async fn reconcile_loop(
    socket: std::path::PathBuf,
    cfg: ReconcilerConfig,
    ceiling: Result<AppsCeiling, String>,
    mut desired: watch::Receiver<Option<Arc<AppliedState>>>,
    observed: watch::Sender<Vec<AppStatus>>,
    events: Arc<EventQueue>,
) {
    let tick = cfg.tick;
    limit_apps(&cfg.runtime, &ceiling, &events);
    let mut reconciler: Option<Reconciler> = None;
    let mut connect_failures: u32 = 0;
    let mut last_error: Option<String> = None;
    loop {
        let mut wait = tick;
        // Nothing is reconciled before the first desired state: an empty list would remove
        // every app container of a restarting agent.
        let applied = desired.borrow_and_update().clone();
        if let Some(applied) = applied {
            if reconciler.is_none() {
                match Containerd::connect(&socket, NAMESPACE).await {
                    Ok(ctr) => {
                        info!(socket = %socket.display(), "connected to containerd");
                        reconciler = Some(Reconciler::new(ctr, cfg.clone()));
                        connect_failures = 0;
                    }
                    Err(e) => {
                        connect_failures = connect_failures.saturating_add(1);
                        wait = tick
                            .saturating_mul(1 << connect_failures.min(16))
                            .min(CONNECT_RETRY_MAX)
                            .max(tick);
                        let error = e.to_string();
                        if log_once(&mut last_error, &error, "cannot reach containerd; retrying") {
                            events.push(
                                "app.reconcile_failed",
                                EventSeverity::Error,
                                &format!("cannot reach containerd: {error}"),
                            );
                        }
                        observed.send_replace(report::statuses(&applied, Err(error), &cfg.runtime));
                    }
                }
            }
            if let Some(rec) = reconciler.as_mut() {
                rec.hold_apps(applied.held());
                let result = rec
                    .reconcile(&applied.runnable)
                    .await
                    .map_err(|e| e.to_string());
                match &result {
                    Err(e) => {
                        if log_once(&mut last_error, e, "reconcile pass failed") {
                            events.push(
                                "app.reconcile_failed",
                                EventSeverity::Warning,
                                &format!("reconcile pass failed: {e}"),
                            );
                        }
                    }
                    Ok(_) => last_error = None,
                }
                observed.send_replace(report::statuses(&applied, result, &cfg.runtime));
            }
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Warn about `error` unless it is the one warned about last; true when it warned.
fn log_once(last: &mut Option<String>, error: &str, what: &str) -> bool {
    if last.as_deref() == Some(error) {
        debug!(error, "{what} (again)");
        false
    } else {
        warn!(error, "{what}");
        *last = Some(error.to_owned());
        true
    }
}

#[cfg(test)]
mod tests;
