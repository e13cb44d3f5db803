//! The reconcile loop: desired apps vs. containers observed in containerd, level-triggered and
//! idempotent. Each pass observes (containers and their tasks, app networks, image records,
//! health probes), lets the pure planner (`plan.rs`) decide the steps and the status of every
//! desired service, and has the executor (`execute.rs`) carry the steps out against containerd,
//! CNI and the data dir. Per desired service the planner makes sure its image is present
//! (pulled in the background, `images.rs`), creates the container when missing, replaces it when
//! the spec hash differs (`status.rs`), (re)starts its task under the restart policy with
//! exponential back-off (`backoff.rs`), and runs its health check (`health.rs`); containers of
//! services no longer desired are removed, then images nobody uses.
//!
//! `depends_on` is honoured as Docker Compose does when it starts services: a service's task is
//! started (first start and restarts alike) only once each dependency has reached its condition
//! at the start of the pass: `service_started`, its task runs (or ran to completion with status
//! 0 and stays down); `service_healthy`, its health check has passed and still passes;
//! `service_completed_successfully`, its task exited with status 0. Until then the service is
//! [`ServiceState::Pending`] with a message such as `waiting for db to be healthy (...)`; when a
//! dependency cannot get there (it exited and its restart policy keeps it down, its image or its
//! start failed, it is blocked itself, it has no health check, or the services form a cycle) the
//! service is [`ServiceState::Failed`] with `blocked by db: <why>`. Containers are created without
//! waiting, and a running dependent is never stopped because a dependency stopped or became
//! unhealthy; only its next start waits again. A health change wakes the loop at once, and a
//! pass that starts a dependency is followed by another right away, so dependents start within a
//! probe interval or a tick of their dependency being ready.
//!
//! Services outside `network_mode: host` are attached to their app's CNI network (see
//! [`crate::network`]) right before each task start; the app's hosts file is rewritten whenever an
//! address changes, and attachments and networks nobody wants any more are removed at the end of
//! each pass.
//!
//! All persistent state lives in containerd labels (restart count, crash streak, start time) and
//! in the network module's records, so a restarted agent, or a restarted containerd, converges
//! without duplicating containers or attachments. The reconciler's own memory (pulls in flight,
//! probes, failed starts) only paces retries.

mod backoff;
mod execute;
mod health;
mod images;
mod plan;
mod status;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::cgroup;
use crate::container::{self, ContainerError, RuntimeConfig, TaskStatus};
use crate::containerd::Containerd;
use crate::image::{Credentials, ImageError};
use crate::network::{
    published_ports, Firewall, FirewallError, NetworkError, Networks, PublishedPort,
};

pub use backoff::Backoff;
pub use health::Health;
pub use status::{DesiredApp, ServiceState, ServiceStatus};

use plan::{NetworkState, Now, Observed, ProbeView, StartFailures, Timing};

/// Errors that stop a whole reconcile pass (per-service problems are reported in the status).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// containerd could not be listed.
    #[error("cannot observe containers: {0}; the next pass retries (is containerd running?)")]
    Observe(#[from] ContainerError),
    /// Unused images could not be collected.
    #[error("cannot collect unused images: {0}; the next pass retries")]
    Images(#[from] ImageError),
    /// The firewall could not be loaded: nothing is started or changed until it is, so no
    /// port opens without it (running containers keep running).
    #[error(
        "cannot load the device firewall: {0}; the next pass retries and starts nothing before"
    )]
    Firewall(#[from] FirewallError),
}

/// Why one step of a pass failed: reported in its service's status or logged; the next pass
/// tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    /// A container could not be created, started or removed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// An app network could not be attached, detached or written down.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// An image could not be pulled or collected.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The app's user namespace could not be made.
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
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
    /// The device firewall to keep in step with the published ports; `None` leaves the host's
    /// firewall alone (tests, hosts that are not Cairn devices).
    pub firewall: Option<Firewall>,
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
            firewall: None,
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
    start_failures: HashMap<String, StartFailures>,
    wake_at: Option<SystemTime>,
    /// Apps to leave exactly as they are (see [`Reconciler::hold_apps`]).
    held_apps: HashSet<String>,
    /// The ports each app published when last desired (held apps keep theirs open).
    app_ports: HashMap<String, BTreeSet<PublishedPort>>,
    /// The published ports the firewall was last loaded with (`None`: not yet, or it failed).
    firewall_ports: Option<BTreeSet<PublishedPort>>,
    /// Notified by probes when a service's health changes.
    health_changed: Arc<Notify>,
    /// Whether the OOM killer ended each stopped task, by container and exit time: read from
    /// its cgroup once per exit, not on every pass while it stays stopped.
    oom_by_exit: HashMap<String, (Option<SystemTime>, bool)>,
    /// The apps' user namespaces.
    namespaces: crate::userns::AppNamespaces,
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
            firewall_ports: None,
            held_apps: HashSet::new(),
            app_ports: HashMap::new(),
            health_changed: Arc::new(Notify::new()),
            oom_by_exit: HashMap::new(),
            namespaces: crate::userns::AppNamespaces::new(
                cfg.runtime.userns_ranges_path(),
                cfg.runtime.network.run_dir.join("userns"),
            ),
            ctr,
            cfg,
        }
    }

    /// Leave the apps named in `apps` as they are from the next pass on: they are not desired,
    /// yet nothing of theirs is removed (containers, network, volumes and files, images), their
    /// running tasks keep running and the ports they published stay open. For apps whose new
    /// spec the agent refused (an older agent's spec a newer parser reads stricter, say): the
    /// last working version is kept until central sends one that parses. Nothing restarts a
    /// held app's tasks, so after a reboot it stays down until then.
    pub fn hold_apps(&mut self, apps: HashSet<String>) {
        self.held_apps = apps;
    }

    /// Run passes until the `desired` sender is dropped: on every change of the desired apps or of
    /// a service's health, at back-off deadlines, right after a pass that started a service
    /// others wait for, and at least every `tick`; publish each pass's statuses on `status`.
    /// Cancellation safe: abort it at any point, the next pass (by any reconciler) converges.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<Vec<DesiredApp>>>,
        status: watch::Sender<Vec<ServiceStatus>>,
    ) {
        let health_changed = self.health_changed.clone();
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
                _ = health_changed.notified() => {}
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
        let now = Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        };
        let observed = self.observe(desired, now).await?;
        self.update_firewall(desired).await?;
        let timing = Timing {
            backoff: self.cfg.backoff,
            pull_retry: self.cfg.retry,
        };
        let plan = plan::plan(desired, &observed, &timing, now);
        self.wake_at = plan.wake_at;
        Ok(self.execute(desired, plan).await)
    }

    /// Load the firewall when the published ports changed (or were never loaded by this
    /// reconciler): those of `desired`, plus those held apps had when they were last desired.
    ///
    /// # Errors
    /// When nft fails; the kernel keeps the previous table.
    async fn update_firewall(&mut self, desired: &[DesiredApp]) -> Result<(), FirewallError> {
        let Some(firewall) = &self.cfg.firewall else {
            return Ok(());
        };
        let held = &self.held_apps;
        self.app_ports.retain(|app, _| held.contains(app));
        for app in desired {
            let ports = published_ports(std::iter::once(&app.spec));
            self.app_ports.insert(app.spec.name.clone(), ports);
        }
        let ports: BTreeSet<PublishedPort> = self.app_ports.values().flatten().copied().collect();
        if self.firewall_ports.as_ref() == Some(&ports) {
            return Ok(());
        }
        self.firewall_ports = None;
        firewall.apply(&ports).await?;
        info!(ports = ports.len(), "firewall loaded");
        self.firewall_ports = Some(ports);
        Ok(())
    }

    /// Everything the planner needs for a pass over `desired`: containers and tasks, the
    /// network of each app that needs one (allocated on first use), the wanted image records
    /// (after taking in finished pulls), probe results and the memory of failed starts.
    async fn observe(
        &mut self,
        desired: &[DesiredApp],
        now: Now,
    ) -> Result<Observed, ContainerError> {
        let mut containers = container::list_containers(&self.ctr).await?;
        let runtime = &self.cfg.runtime;
        let mut oom_by_exit = HashMap::new();
        for c in &mut containers {
            if let Some(task) = c.task.as_mut().filter(|t| t.status == TaskStatus::Stopped) {
                task.oom_killed = match self.oom_by_exit.get(&c.id) {
                    Some(&(exited_at, killed)) if exited_at == task.exited_at => killed,
                    _ => cgroup::oom_killed(&runtime.cgroup_root, &runtime.cgroup_parent, &c.id),
                };
                oom_by_exit.insert(c.id.clone(), (task.exited_at, task.oom_killed));
            }
        }
        self.oom_by_exit = oom_by_exit;
        let mut networks = HashMap::new();
        for app in desired.iter().filter(|a| plan::needs_network(&a.spec)) {
            let name = &app.spec.name;
            let state = match self.networks.app_network(name) {
                Ok(net) => NetworkState::Ready(net),
                Err(e) => {
                    warn!(app = %name, error = %e, "app network unavailable");
                    NetworkState::Unavailable(e)
                }
            };
            networks.insert(name.clone(), state);
        }
        self.images.take_finished_pulls(now.mono).await;
        let mut images = HashMap::new();
        for svc in desired.iter().flat_map(|a| a.spec.services.values()) {
            let name = plan::image_name(&svc.image);
            if images.contains_key(&name) {
                continue;
            }
            if let Some(lookup) = self.images.look_up(&name).await {
                images.insert(name, lookup);
            }
        }
        let probes = self
            .probes
            .iter()
            .map(|(id, probe)| {
                let view = ProbeView {
                    pid: probe.pid,
                    state: probe.snapshot(),
                };
                (id.clone(), view)
            })
            .collect();
        Ok(Observed {
            containers,
            networks,
            images,
            pulls: self.images.pulls(),
            probes,
            start_failures: self.start_failures.clone(),
            held_apps: self.held_apps.clone(),
        })
    }
}
