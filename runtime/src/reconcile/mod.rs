//! The reconcile loop: desired apps vs. containers observed in containerd, level-triggered and
//! idempotent. Each pass lists the containers (labels `cairn.app`, `cairn.service`,
//! `cairn.spec-hash`), then per desired service: makes sure its image is present (pulling in the
//! background), creates the container when missing, replaces it when the spec hash differs,
//! (re)starts its task under the restart policy with exponential back-off, and runs its health
//! check; containers of services no longer desired are removed, then images nobody uses.
//!
//! Services outside `network_mode: host` are attached to their app's CNI network (see
//! [`crate::network`]) right before each task start; the app's hosts file is rewritten whenever an
//! address changes, and attachments and networks nobody wants any more are removed at the end of
//! each pass.
//!
//! All persistent state lives in containerd labels (restart count, crash streak, start time) and
//! in the network module's records, so a restarted agent, or a restarted containerd, converges
//! without duplicating containers or attachments.

mod backoff;
mod health;
mod images;
mod status;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cairn_compose::{AppSpec, ImageRef, NetworkMode, ServiceSpec};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::container::{
    self, ContainerError, NewContainer, ObservedContainer, RuntimeConfig, TaskStatus,
};
use crate::container::{
    LABEL_APP, LABEL_CRASH_STREAK, LABEL_RESTARTS, LABEL_SERVICE, LABEL_SPEC_HASH, LABEL_STARTED_AT,
};
use crate::containerd::Containerd;
use crate::image::{Credentials, ImageError};
use crate::network::{AppNetwork, Networks};

pub use backoff::Backoff;
pub use health::Health;
pub use status::{DesiredApp, ServiceState, ServiceStatus};

/// Errors that stop a whole reconcile pass (per-service problems are reported in the status).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// containerd could not be listed.
    #[error("cannot observe containers: {0}; the next pass retries (is containerd running?)")]
    Observe(#[from] ContainerError),
    /// Unused images could not be collected.
    #[error("cannot collect unused images: {0}; the next pass retries")]
    Images(#[from] ImageError),
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Data dir, runc root, grace period, log rotation.
    pub runtime: RuntimeConfig,
    /// Restart back-off.
    pub backoff: Backoff,
    /// Registry credentials by registry host (`registry.example.com:5000`).
    pub credentials: HashMap<String, Credentials>,
    /// Registries spoken to over plain HTTP (besides localhost ones).
    pub plain_http: HashSet<String>,
    /// Wait before retrying a failed pull or start.
    pub retry: Duration,
    /// Longest time between passes of [`Reconciler::run`].
    pub tick: Duration,
}

impl ReconcilerConfig {
    /// Defaults around `runtime`: default back-off, 10 s retry, 2 s tick.
    pub fn new(runtime: RuntimeConfig) -> ReconcilerConfig {
        ReconcilerConfig {
            runtime,
            backoff: Backoff::default(),
            credentials: HashMap::new(),
            plain_http: HashSet::new(),
            retry: Duration::from_secs(10),
            tick: Duration::from_secs(2),
        }
    }
}

/// The reconciler. Holds only caches (health probes, pulls in flight, start-failure back-off);
/// dropping it and making a new one is safe.
pub struct Reconciler {
    ctr: Containerd,
    cfg: ReconcilerConfig,
    networks: Networks,
    probes: HashMap<String, health::Probe>,
    images: images::Images,
    start_failures: HashMap<String, (u32, Instant)>,
    wake_at: Option<SystemTime>,
}

impl Reconciler {
    /// A reconciler working through `ctr`.
    pub fn new(ctr: Containerd, cfg: ReconcilerConfig) -> Reconciler {
        Reconciler {
            networks: Networks::new(cfg.runtime.network.clone()),
            probes: HashMap::new(),
            images: images::Images::new(ctr.clone(), &cfg),
            start_failures: HashMap::new(),
            wake_at: None,
            ctr,
            cfg,
        }
    }

    /// Run passes until the `desired` sender is dropped: on every change of the desired apps, at
    /// back-off deadlines and at least every `tick`; publish each pass's statuses on `status`.
    /// Cancellation safe: abort it at any point, the next pass (by any reconciler) converges.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<Vec<DesiredApp>>>,
        status: watch::Sender<Vec<ServiceStatus>>,
    ) {
        loop {
            let apps = desired.borrow_and_update().clone();
            match self.reconcile(&apps).await {
                Ok(statuses) => {
                    status.send_replace(statuses);
                }
                Err(e) => warn!(error = %e, "reconcile pass failed"),
            }
            let mut sleep = self.cfg.tick;
            if let Some(at) = self.wake_at {
                sleep = sleep.min(at.duration_since(SystemTime::now()).unwrap_or_default());
            }
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(sleep.max(Duration::from_millis(10))) => {}
            }
        }
    }

    /// One pass: converge containerd to `desired` and report every desired service.
    ///
    /// # Errors
    /// [`ReconcileError::Observe`] when containerd cannot be listed; everything else is reported
    /// per service and retried on the next pass.
    pub async fn reconcile(
        &mut self,
        desired: &[DesiredApp],
    ) -> Result<Vec<ServiceStatus>, ReconcileError> {
        self.wake_at = None;
        let observed = container::list_containers(&self.ctr).await?;
        let mut by_service: HashMap<(String, String), Vec<ObservedContainer>> = HashMap::new();
        for c in observed {
            by_service
                .entry((
                    c.label(LABEL_APP).to_string(),
                    c.label(LABEL_SERVICE).to_string(),
                ))
                .or_default()
                .push(c);
        }
        let mut statuses = Vec::new();
        let mut wanted_images = HashSet::new();
        let mut attached_containers = HashSet::new();
        let mut networked_apps = HashSet::new();
        for app in desired {
            let net = self.app_network(&app.spec);
            if net.is_some() {
                networked_apps.insert(app.spec.name.clone());
                for (name, svc) in &app.spec.services {
                    if svc.network_mode == NetworkMode::Private {
                        attached_containers.insert(container::container_id(&app.spec.name, name));
                    }
                }
            }
            for (name, svc) in &app.spec.services {
                let span = tracing::info_span!("service", app = %app.spec.name, service = %name);
                let existing = by_service
                    .remove(&(app.spec.name.clone(), name.clone()))
                    .unwrap_or_default();
                let image_name = ImageRef::parse(&svc.image)
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| svc.image.clone());
                wanted_images.insert(image_name.clone());
                let status = self
                    .reconcile_service(app, name, svc, &image_name, existing, &net)
                    .instrument(span)
                    .await;
                statuses.push(status);
            }
        }
        let desired_apps: HashSet<&str> = desired.iter().map(|a| a.spec.name.as_str()).collect();
        for ((app, service), containers) in by_service {
            for c in containers {
                info!(%app, %service, id = %c.id, "removing container of a service that is no longer desired");
                self.probes.remove(&c.id);
                self.start_failures.remove(&c.id);
                if let Err(e) = self.remove_container(&c.id).await {
                    warn!(id = %c.id, error = %e, "cannot remove container; retrying next pass");
                }
            }
        }
        for e in self
            .networks
            .collect(&attached_containers, &networked_apps)
            .await
        {
            warn!(error = %e, "cannot remove an unused network attachment; retrying next pass");
        }
        self.clean_app_dirs(&desired_apps);
        if let Err(e) = self.images.collect(&wanted_images).await {
            warn!(error = %e, "cannot remove unused images; retrying next pass");
        }
        Ok(statuses)
    }

    /// The network of an app with services outside `network_mode: host` (`None` for apps with
    /// only host-network services), with its hosts file brought up to date; `Some(Err)` when it
    /// cannot be had.
    fn app_network(&mut self, app: &AppSpec) -> Option<Result<AppNetwork, String>> {
        if !app
            .services
            .values()
            .any(|s| s.network_mode == NetworkMode::Private)
        {
            return None;
        }
        let net = match self.networks.app_network(&app.name) {
            Ok(net) => net,
            Err(e) => {
                warn!(app = %app.name, error = %e, "app network unavailable");
                return Some(Err(e.to_string()));
            }
        };
        self.write_hosts(app, &net);
        Some(Ok(net))
    }

    /// Rewrite the app's hosts file if an address changed (a failure is logged and retried on
    /// the next pass).
    fn write_hosts(&self, app: &AppSpec, net: &AppNetwork) {
        let path = self.cfg.runtime.app_hosts_path(&app.name);
        match self.networks.write_app_hosts(app, net, &path) {
            Ok(true) => info!(app = %app.name, "hosts file updated"),
            Ok(false) => {}
            Err(e) => warn!(app = %app.name, error = %e, "cannot update the hosts file"),
        }
    }

    /// Remove a container (task, record, snapshot) and detach it from its network.
    async fn remove_container(&mut self, id: &str) -> Result<(), String> {
        container::remove_container(&self.ctr, id, self.cfg.runtime.stop_grace)
            .await
            .map_err(|e| e.to_string())?;
        self.networks.detach(id).await.map_err(|e| e.to_string())
    }

    async fn reconcile_service(
        &mut self,
        app: &DesiredApp,
        name: &str,
        svc: &ServiceSpec,
        image_name: &str,
        existing: Vec<ObservedContainer>,
        net: &Option<Result<AppNetwork, String>>,
    ) -> ServiceStatus {
        let app_name = app.spec.name.as_str();
        let id = container::container_id(app_name, name);
        let mut current = None;
        for c in existing {
            if c.id == id && current.is_none() {
                current = Some(c);
            } else {
                warn!(id = %c.id, "removing a duplicate container of this service");
                self.probes.remove(&c.id);
                if let Err(e) = self.remove_container(&c.id).await {
                    warn!(id = %c.id, error = %e, "cannot remove duplicate container");
                }
            }
        }
        let net = match net {
            None => None,
            Some(Ok(net)) => Some(net),
            Some(Err(e)) => {
                // Keep whatever runs now; nothing new starts without the network.
                let mut status = match current {
                    Some(c) => self.observe(app_name, name, svc, &c),
                    None => ServiceStatus::new(app_name, name, ServiceState::Failed),
                };
                if status.state != ServiceState::Running {
                    status.state = ServiceState::Failed;
                }
                return status.with_message(format!("app network unavailable: {e}"));
            }
        };
        let log = self.cfg.runtime.log_path(app_name, name);
        if let Err(e) = container::rotate_log(
            &log,
            self.cfg.runtime.log_max_bytes,
            self.cfg.runtime.log_keep,
        ) {
            warn!(path = %log.display(), error = %e, "cannot rotate log");
        }
        let image = match self.images.resolve(image_name, &svc.image).await {
            images::ImageState::Ready(info) => info,
            other => {
                let message = match other {
                    images::ImageState::Pulling(None) => format!("pulling image {image_name}"),
                    images::ImageState::Pulling(Some(e)) => {
                        format!("pulling image {image_name} again after: {e}")
                    }
                    images::ImageState::Failed(e) => format!("image {image_name} unavailable: {e}"),
                    images::ImageState::Ready(_) => unreachable!(),
                };
                // Keep whatever runs now until the new image is here.
                let mut status = match current {
                    Some(c) => self.observe(app_name, name, svc, &c),
                    None => ServiceStatus::new(app_name, name, ServiceState::Pending),
                };
                if status.state != ServiceState::Running {
                    status.state = ServiceState::Pending;
                }
                return status.with_message(message);
            }
        };
        let hash = status::spec_hash(app, name, svc, &image.digest);
        let current = match current {
            Some(c) if c.label(LABEL_SPEC_HASH) == hash => Some(c),
            Some(c) => {
                info!(id = %c.id, "spec or image changed; replacing the container");
                self.probes.remove(&c.id);
                self.start_failures.remove(&c.id);
                if let Err(e) = self.remove_container(&c.id).await {
                    return ServiceStatus::new(app_name, name, ServiceState::Failed)
                        .with_message(format!("cannot remove the old container: {e}"));
                }
                None
            }
            None => None,
        };
        let c = match current {
            Some(c) => c,
            None => {
                let labels = HashMap::from([
                    (LABEL_SPEC_HASH.to_string(), hash.clone()),
                    (LABEL_RESTARTS.to_string(), "0".to_string()),
                    (LABEL_CRASH_STREAK.to_string(), "0".to_string()),
                ]);
                let new = NewContainer {
                    app: app_name,
                    service: name,
                    spec: svc,
                    image: &image,
                    labels,
                    secrets: &app.secrets,
                    netns: (net.is_some() && svc.network_mode == NetworkMode::Private)
                        .then(|| self.cfg.runtime.network.netns_path(&id)),
                    hosts_file: net.map(|_| self.cfg.runtime.app_hosts_path(app_name)),
                };
                if let Err(e) =
                    container::create_container(&self.ctr, &self.cfg.runtime, &new).await
                {
                    return ServiceStatus::new(app_name, name, ServiceState::Failed)
                        .with_message(e.to_string());
                }
                ObservedContainer {
                    id: id.clone(),
                    labels: HashMap::new(),
                    image: image.name.clone(),
                    task: None,
                }
            }
        };
        self.drive_task(&app.spec, name, svc, c, net).await
    }

    /// Start, restart or leave the task of an up-to-date container; report it.
    async fn drive_task(
        &mut self,
        spec: &AppSpec,
        name: &str,
        svc: &ServiceSpec,
        mut c: ObservedContainer,
        net: Option<&AppNetwork>,
    ) -> ServiceStatus {
        let app = spec.name.as_str();
        let restarts: u32 = c.label(LABEL_RESTARTS).parse().unwrap_or(0);
        let streak: u32 = c.label(LABEL_CRASH_STREAK).parse().unwrap_or(0);
        let task = c.task.clone();
        let start = match task.as_ref().map(|t| t.status) {
            None | Some(TaskStatus::Created) | Some(TaskStatus::Unknown) => {
                Some((restarts, streak))
            }
            Some(TaskStatus::Stopped) => {
                let task = task.as_ref().expect("matched Some");
                let exit = backoff::Exit {
                    status: task.exit_status,
                    restarts,
                    streak,
                    started_at: c
                        .label(LABEL_STARTED_AT)
                        .parse::<u64>()
                        .ok()
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                    exited_at: task.exited_at,
                };
                match backoff::decide(svc.restart, exit, &self.cfg.backoff, SystemTime::now()) {
                    backoff::Decision::StayExited => None,
                    backoff::Decision::RestartNow { streak } => Some((restarts + 1, streak)),
                    backoff::Decision::WaitUntil(at) => {
                        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                        None
                    }
                }
            }
            Some(TaskStatus::Running) | Some(TaskStatus::Paused) => None,
        };
        if let Some((restarts, streak)) = start {
            if let Some(&(_, not_before)) = self.start_failures.get(&c.id) {
                if Instant::now() < not_before {
                    return self.observe(app, name, svc, &c);
                }
            }
            self.probes.remove(&c.id);
            if let (Some(net), NetworkMode::Private) = (net, svc.network_mode) {
                match self.networks.attach(net, name, &c.id, &svc.ports).await {
                    Ok(_) => self.write_hosts(spec, net),
                    Err(e) => {
                        let message = format!("cannot attach to the app network: {e}");
                        return self.start_failed(app, name, svc, &c, message);
                    }
                }
            }
            let log = self.cfg.runtime.log_path(app, name);
            match container::start_task(&self.ctr, &self.cfg.runtime, &c.id, &log).await {
                Ok(pid) => {
                    self.start_failures.remove(&c.id);
                    let labels = HashMap::from([
                        (LABEL_RESTARTS.to_string(), restarts.to_string()),
                        (LABEL_CRASH_STREAK.to_string(), streak.to_string()),
                        (
                            LABEL_STARTED_AT.to_string(),
                            container::unix_millis(SystemTime::now()).to_string(),
                        ),
                    ]);
                    if let Err(e) =
                        container::set_container_labels(&self.ctr, &c.id, labels.clone()).await
                    {
                        warn!(id = %c.id, error = %e, "cannot record the restart in labels");
                    }
                    c.labels.extend(labels);
                    c.task = Some(container::TaskState {
                        pid,
                        status: TaskStatus::Running,
                        exit_status: 0,
                        exited_at: None,
                    });
                }
                Err(e @ ContainerError::BadRecord { .. }) => {
                    warn!(id = %c.id, error = %e, "removing a broken container; the next pass re-creates it");
                    if let Err(e) = self.remove_container(&c.id).await {
                        warn!(id = %c.id, error = %e, "cannot remove the broken container");
                    }
                    return ServiceStatus::new(app, name, ServiceState::Pending)
                        .with_message(e.to_string());
                }
                Err(e) => {
                    return self.start_failed(app, name, svc, &c, format!("cannot start: {e}"));
                }
            }
        }
        self.observe(app, name, svc, &c)
    }

    /// Record a failed start (the next attempt waits for the back-off) and report it.
    fn start_failed(
        &mut self,
        app: &str,
        name: &str,
        svc: &ServiceSpec,
        c: &ObservedContainer,
        message: String,
    ) -> ServiceStatus {
        let failures = self.start_failures.get(&c.id).map_or(0, |f| f.0) + 1;
        let delay = self
            .cfg
            .backoff
            .delay(failures.saturating_sub(1))
            .max(Duration::from_millis(100));
        self.start_failures
            .insert(c.id.clone(), (failures, Instant::now() + delay));
        let mut status = self.observe(app, name, svc, c);
        status.state = ServiceState::Failed;
        status.with_message(message)
    }

    /// Status of a service from its container (and manage its health probe).
    fn observe(
        &mut self,
        app: &str,
        name: &str,
        svc: &ServiceSpec,
        c: &ObservedContainer,
    ) -> ServiceStatus {
        let mut status = ServiceStatus::new(app, name, ServiceState::Pending);
        status.container_id = Some(c.id.clone());
        status.restarts = c.label(LABEL_RESTARTS).parse().unwrap_or(0);
        let Some(task) = &c.task else {
            self.probes.remove(&c.id);
            return status;
        };
        match task.status {
            TaskStatus::Running | TaskStatus::Paused => {
                status.state = ServiceState::Running;
                status.pid = Some(task.pid);
                if let Some(check) = &svc.healthcheck {
                    let probe_ok = self.probes.get(&c.id).is_some_and(|p| p.pid == task.pid);
                    if !probe_ok {
                        let output = self.cfg.runtime.health_output_path(app, name);
                        self.probes.insert(
                            c.id.clone(),
                            health::Probe::start(
                                self.ctr.clone(),
                                c.id.clone(),
                                task.pid,
                                check.clone(),
                                output,
                            ),
                        );
                    }
                    let health = self.probes[&c.id].snapshot();
                    status.health = health.health;
                    if health.health == Health::Unhealthy {
                        status.state = ServiceState::Unhealthy;
                        status.message = health.last_error;
                    }
                } else {
                    self.probes.remove(&c.id);
                }
            }
            TaskStatus::Stopped => {
                self.probes.remove(&c.id);
                status.exit_code = Some(task.exit_status);
                status.state = if restart_pending(svc, task.exit_status, status.restarts) {
                    ServiceState::Restarting
                } else {
                    ServiceState::Exited
                };
            }
            TaskStatus::Created | TaskStatus::Unknown => {}
        }
        status
    }

    /// Remove secrets and runtime files of apps that are no longer desired (volumes and logs are
    /// kept, like `docker compose down` without `-v`).
    #[tracing::instrument(skip_all)]
    fn clean_app_dirs(&self, desired: &HashSet<&str>) {
        let apps_dir = self.cfg.runtime.data_dir.join("apps");
        let Ok(entries) = std::fs::read_dir(&apps_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if desired.contains(name.as_str()) {
                continue;
            }
            for sub in ["secrets", "run"] {
                let dir = entry.path().join(sub);
                if dir.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        warn!(path = %dir.display(), error = %e, "cannot remove");
                    }
                }
            }
        }
    }
}

/// Whether the policy will restart a task that exited with `exit_status`.
fn restart_pending(svc: &ServiceSpec, exit_status: u32, restarts: u32) -> bool {
    use cairn_compose::RestartPolicy;
    match svc.restart {
        RestartPolicy::No => false,
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_retries } => {
            exit_status != 0 && max_retries.is_none_or(|m| restarts < m)
        }
    }
}
