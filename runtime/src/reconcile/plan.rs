//! The planner: from the desired apps, what was observed at the start of a pass and the
//! reconciler's memory (pulls, probes, failed starts) to the steps of the pass and the status of
//! every desired service. Pure: it reads no clock (the pass's [`Now`] comes in), touches neither
//! containerd, the network nor the file system, and is unit-tested on its own.
//!
//! The services of an app are planned dependencies first (`depends_on`, see `plan/depends.rs`),
//! so each sees what its dependencies reached; they are reported in the spec's order.
//!
//! Per service, in order: duplicates are removed; without its app network nothing else happens;
//! the log is rotated; a missing image is pulled (the service waits, whatever runs keeps running);
//! a container whose spec hash differs is replaced; a missing one is created; a task that is not
//! running is started, after its app network is attached and within the restart policy and
//! back-off, once every `depends_on` dependency has reached its condition (until then the service
//! is pending with `waiting for db to be healthy (...)`, or failed with `blocked by db: ...` when
//! a dependency failed so that it cannot get there); a running task with a health check gets a
//! probe. Then containers of undesired services are removed and networks, app dirs and images
//! nobody wants are collected.
//!
//! The executor (see `execute.rs`) carries the steps out; when one fails,
//! [`ServicePlan::after_failure`] says what that means for the service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::backoff::{self, Backoff, Decision, Exit};
use super::health::{Health, HealthState};
use super::images::PullError;
use super::status::{spec_hash, DesiredApp, ServiceState, ServiceStatus};
use super::ActionError;
use crate::container::{
    container_id, ContainerError, ObservedContainer, TaskState, TaskStatus, LABEL_APP,
    LABEL_CRASH_STREAK, LABEL_RESTARTS, LABEL_SERVICE, LABEL_SPEC_HASH, LABEL_STARTED_AT,
};
use crate::image::{ImageError, ImageInfo};
use crate::network::{AppNetwork, NetworkError};
use cairn_compose::{
    AppSpec, HealthCheck, ImageRef, NetworkMode, PortMapping, RegistryLogin, ServiceSpec,
};
use depends::{Gate, Reached};

/// The message of a service whose task the kernel killed for memory.
const OOM_KILLED: &str = "killed by the kernel: out of memory; raise `deploy.resources.limits.memory` or make the service use less";

/// The shortest wait before a failed start is tried again.
const MIN_START_RETRY: Duration = Duration::from_millis(100);

/// The time of a pass on both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// Wall-clock time, which containerd's exit times and the started-at label use.
    pub wall: SystemTime,
    /// Monotonic time, which the reconciler's own retry deadlines use.
    pub mono: Instant,
}

/// The settings the planner decides with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Restart back-off of exited tasks, also the wait after failed starts.
    pub backoff: Backoff,
    /// Wait before a failed pull is tried again.
    pub pull_retry: Duration,
}

/// Everything the planner knows of the world at the start of a pass.
#[derive(Default)]
pub(crate) struct Observed {
    /// Containers labelled `cairn.app`, with their tasks.
    pub containers: Vec<ObservedContainer>,
    /// The network of every desired app that [`needs_network`], by app name.
    pub networks: HashMap<String, NetworkState>,
    /// Image records by [`image_name`]; an image that is not here is absent.
    pub images: HashMap<String, ImageLookup>,
    /// The pulls the reconciler started, by image name.
    pub pulls: HashMap<String, PullState>,
    /// Health probes by container id.
    pub probes: HashMap<String, ProbeView>,
    /// Failed starts by container id (forgotten at the next successful start).
    pub start_failures: HashMap<String, StartFailures>,
    /// Apps left exactly as they are: not desired, yet neither their containers, network,
    /// directory nor images are removed (the agent could not read their new spec).
    pub held_apps: HashSet<String>,
}

/// Whether an app's network can be had.
pub(crate) enum NetworkState {
    /// Its subnet is allocated.
    Ready(AppNetwork),
    /// It cannot be had now; the next pass tries again.
    Unavailable(NetworkError),
}

/// An image record as looked up at the start of the pass.
pub(crate) enum ImageLookup {
    /// Present and unpacked.
    Present(ImageInfo),
    /// It could not be read.
    Failed(ImageError),
}

/// A pull the reconciler started.
#[derive(Clone)]
pub(crate) enum PullState {
    /// Still running, after `last_error` when it is a retry.
    Running {
        /// Why the attempt before failed.
        last_error: Option<Arc<PullError>>,
    },
    /// The last attempt failed at `at`.
    Failed {
        /// Why.
        error: Arc<PullError>,
        /// When it ended.
        at: Instant,
    },
}

/// A health probe as it stands.
#[derive(Debug, Clone)]
pub(crate) struct ProbeView {
    /// The task it probes.
    pub pid: u32,
    /// Its results so far.
    pub state: HealthState,
}

/// Consecutive failed starts of a container's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartFailures {
    /// How many in a row.
    pub count: u32,
    /// When the last one failed.
    pub last_at: Instant,
    /// Why it failed (what the service reported), for the services that depend on it.
    pub last_error: String,
}

/// Why a container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Its service is not desired any more.
    Undesired,
    /// Another container of the same service has the service's container id.
    Duplicate,
    /// Its spec hash differs from the desired one (spec, image or secrets changed).
    Replaced,
}

/// One thing to do in a pass.
#[derive(Debug, PartialEq)]
pub(crate) enum Action<'a> {
    /// Rewrite the app's hosts file when an address in it changed.
    WriteHosts {
        /// The app.
        app: &'a AppSpec,
        /// Its network.
        network: &'a AppNetwork,
    },
    /// Pull an image in the background.
    PullImage {
        /// The image record name.
        name: String,
        /// The reference as written in the spec.
        reference: &'a str,
        /// The app's login for the image's registry, if it has one.
        login: Option<&'a RegistryLogin>,
    },
    /// Stop and delete a container (task, record, snapshot, network attachment) and forget its
    /// probe and failed starts.
    RemoveContainer {
        /// Container id.
        id: String,
        /// Why.
        why: Removal,
    },
    /// Create a service's container, not started, labelled with `spec_hash` and zero restarts
    /// and crash streak.
    CreateContainer {
        /// The app.
        app: &'a DesiredApp,
        /// Service name.
        service: &'a str,
        /// The service's spec.
        spec: &'a ServiceSpec,
        /// Its image, present.
        image: &'a ImageInfo,
        /// The hash of everything the container is made from.
        spec_hash: String,
        /// Join the service's network namespace (attached to the app network before starts).
        join_netns: bool,
        /// Mount the app's shared hosts file instead of one naming only the service.
        app_hosts: bool,
    },
    /// Attach the container to its app network; done right before its task starts.
    AttachNetwork {
        /// The network.
        network: &'a AppNetwork,
        /// Service name.
        service: &'a str,
        /// Container id.
        container_id: String,
        /// Ports to publish.
        ports: &'a [PortMapping],
    },
    /// Start the container's task, then label the container with these counts and the time.
    StartTask {
        /// App name.
        app: &'a str,
        /// Service name.
        service: &'a str,
        /// Container id.
        container_id: String,
        /// Restarts so far, this one included.
        restarts: u32,
        /// Quick crashes in a row, for the next back-off.
        crash_streak: u32,
    },
    /// Probe the health of the container's task.
    StartProbe {
        /// App name.
        app: &'a str,
        /// Service name.
        service: &'a str,
        /// Container id.
        container_id: String,
        /// The task's pid; `None`: the task a `StartTask` step before this one started.
        pid: Option<u32>,
        /// The check.
        check: &'a HealthCheck,
    },
    /// Stop the container's health probe.
    StopProbe {
        /// Container id.
        container_id: String,
    },
    /// Detach containers and remove app networks that are not kept.
    CollectNetworks {
        /// Containers whose attachments stay.
        keep_containers: HashSet<String>,
        /// Apps whose networks stay.
        keep_apps: HashSet<String>,
    },
    /// Remove secrets and runtime files of apps that are not kept (volumes and logs stay).
    CleanAppDirs {
        /// Apps whose files stay.
        keep_apps: HashSet<String>,
    },
    /// Forget pulls of, drop partial pulls of and delete managed images that are neither
    /// wanted nor used by a container.
    CollectImages {
        /// Images of desired services.
        wanted: HashSet<String>,
    },
}

/// The steps of a pass.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// Done first, failures only logged: the hosts files of apps with a network.
    pub prepare: Vec<Action<'a>>,
    /// One per desired service, in the order of the apps and their services (by name).
    pub services: Vec<ServicePlan<'a>>,
    /// Done last, failures only logged: removals of containers nobody wants, then collection of
    /// networks, app dirs and images.
    pub cleanup: Vec<Action<'a>>,
    /// The earliest time an exited task's back-off ends, to wake up for its restart; the pass's
    /// time when a service waits for a dependency this pass starts.
    pub wake_at: Option<SystemTime>,
}

/// The steps for one desired service and what to report.
#[derive(Debug)]
pub(crate) struct ServicePlan<'a> {
    /// Done in order; a failure means what [`ServicePlan::after_failure`] says.
    pub steps: Vec<Action<'a>>,
    /// Reported when every step succeeds; the executor adds the pid of a task the steps started.
    pub status: ServiceStatus,
    /// Reported, with the error as message, when the task cannot be started.
    start_failed: ServiceStatus,
}

/// What a failed step means for its service.
#[derive(Debug, PartialEq)]
pub(crate) enum AfterFailure {
    /// Log it and go on with the next step.
    Continue,
    /// Stop the service's steps and report this.
    Report(ServiceStatus),
    /// Stop the service's steps, count a failed start of the container (the next attempt waits
    /// for the back-off) and report this.
    StartFailed {
        /// Container id.
        container_id: String,
        /// What to report.
        status: ServiceStatus,
    },
    /// Stop the service's steps, remove the container, whose record is broken (the next pass
    /// creates it again), and report this.
    RemoveBroken {
        /// Container id.
        container_id: String,
        /// What to report.
        status: ServiceStatus,
    },
}

impl ServicePlan<'_> {
    fn new(steps: Vec<Action<'_>>, status: ServiceStatus) -> ServicePlan<'_> {
        let mut start_failed = status.clone();
        start_failed.state = ServiceState::Failed;
        ServicePlan {
            steps,
            status,
            start_failed,
        }
    }

    /// What it means for the service that `step`, one of its steps, failed with `error`.
    pub(crate) fn after_failure(&self, step: &Action<'_>, error: &ActionError) -> AfterFailure {
        let fresh = |state, message: String| {
            ServiceStatus::new(&self.status.app, &self.status.service, state).with_message(message)
        };
        let start_failed = |container_id: &str, message: String| AfterFailure::StartFailed {
            container_id: container_id.to_string(),
            status: self.start_failed.clone().with_message(message),
        };
        match step {
            Action::RemoveContainer {
                why: Removal::Replaced,
                ..
            } => AfterFailure::Report(fresh(
                ServiceState::Failed,
                format!("cannot remove the old container: {error}"),
            )),
            // Counted like a failed start, so the next attempt waits for the back-off instead of
            // mounting the image for its user database at every pass.
            Action::CreateContainer { app, service, .. } => AfterFailure::StartFailed {
                container_id: container_id(&app.spec.name, service),
                status: fresh(ServiceState::Failed, error.to_string()),
            },
            Action::AttachNetwork { container_id, .. } => start_failed(
                container_id,
                format!("cannot attach to the app network: {error}"),
            ),
            Action::StartTask { container_id, .. } => match error {
                ActionError::Container(ContainerError::BadRecord { .. }) => {
                    AfterFailure::RemoveBroken {
                        container_id: container_id.clone(),
                        status: fresh(ServiceState::Pending, error.to_string()),
                    }
                }
                _ => start_failed(container_id, format!("cannot start: {error}")),
            },
            _ => AfterFailure::Continue,
        }
    }
}

/// Whether an app gets a network: it has a service outside `network_mode: host`.
pub(crate) fn needs_network(app: &AppSpec) -> bool {
    app.services
        .values()
        .any(|s| s.network_mode == NetworkMode::Private)
}

/// The image record name of an image reference: the normalized reference, or the text as
/// written when it does not parse.
pub(crate) fn image_name(reference: &str) -> String {
    ImageRef::parse(reference)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| reference.to_string())
}

/// The steps of a pass over `desired` given `observed`, at `now`.
pub(crate) fn plan<'a>(
    desired: &'a [DesiredApp],
    observed: &'a Observed,
    timing: &Timing,
    now: Now,
) -> Plan<'a> {
    let mut planner = Planner {
        observed,
        timing: *timing,
        now,
        wake_at: None,
        pulls: HashSet::new(),
    };
    let mut by_service: BTreeMap<(&str, &str), Vec<&ObservedContainer>> = BTreeMap::new();
    let mut plan = Plan::default();
    let mut wanted_images = HashSet::new();
    let mut keep_containers = HashSet::new();
    let mut networked_apps = HashSet::new();
    let mut keep_dirs: HashSet<String> = desired.iter().map(|a| a.spec.name.clone()).collect();
    for c in &observed.containers {
        let app = c.label(LABEL_APP);
        if observed.held_apps.contains(app) {
            keep_containers.insert(c.id.clone());
            networked_apps.insert(app.to_string());
            keep_dirs.insert(app.to_string());
            wanted_images.insert(c.image.clone());
            continue;
        }
        by_service
            .entry((app, c.label(LABEL_SERVICE)))
            .or_default()
            .push(c);
    }
    for app in desired {
        let name = app.spec.name.as_str();
        let network = if needs_network(&app.spec) {
            networked_apps.insert(name.to_string());
            for (service, svc) in &app.spec.services {
                if svc.network_mode == NetworkMode::Private {
                    keep_containers.insert(container_id(name, service));
                }
            }
            match observed.networks.get(name) {
                Some(NetworkState::Ready(network)) => {
                    plan.prepare.push(Action::WriteHosts {
                        app: &app.spec,
                        network,
                    });
                    AppNet::Ready(network)
                }
                Some(NetworkState::Unavailable(e)) => AppNet::Unavailable(e.to_string()),
                None => AppNet::Unavailable("the reconciler did not look it up".into()),
            }
        } else {
            AppNet::None
        };
        // Dependencies first, so each service sees what its dependencies reached; reported in
        // the order of the spec.
        let (order, cycles) = depends::start_order(&app.spec);
        let mut reached = HashMap::new();
        let mut planned = BTreeMap::new();
        for (service, svc) in order
            .into_iter()
            .filter_map(|n| app.spec.services.get_key_value(n))
        {
            let existing = by_service.remove(&(name, service)).unwrap_or_default();
            wanted_images.insert(image_name(&svc.image));
            let s = Service {
                app,
                name: service,
                spec: svc,
            };
            let gate = depends::gate(&app.spec, service, &reached, &cycles);
            let (service_plan, what) = planner.service(s, &network, existing, &gate);
            reached.insert(service.as_str(), what);
            planned.insert(service.as_str(), service_plan);
        }
        plan.services.extend(planned.into_values());
    }
    for containers in by_service.into_values() {
        for c in containers {
            plan.cleanup.push(Action::RemoveContainer {
                id: c.id.clone(),
                why: Removal::Undesired,
            });
        }
    }
    plan.cleanup.push(Action::CollectNetworks {
        keep_containers,
        keep_apps: networked_apps,
    });
    plan.cleanup.push(Action::CleanAppDirs {
        keep_apps: keep_dirs,
    });
    plan.cleanup.push(Action::CollectImages {
        wanted: wanted_images,
    });
    plan.wake_at = planner.wake_at;
    plan
}

/// An app's network as far as its services are concerned.
enum AppNet<'a> {
    /// The app has only host-network services.
    None,
    /// Ready.
    Ready(&'a AppNetwork),
    /// Unavailable, for this reason.
    Unavailable(String),
}

/// Whether a service's image is there.
enum ImageReadiness<'a> {
    /// Present.
    Ready(&'a ImageInfo),
    /// Not (yet): the service waits, for this reason.
    Waiting {
        /// Why.
        message: String,
        /// The last attempt to get it failed (its dependents are blocked, not waiting).
        failed: bool,
    },
}

/// A desired service.
#[derive(Clone, Copy)]
struct Service<'a> {
    app: &'a DesiredApp,
    name: &'a str,
    spec: &'a ServiceSpec,
}

impl<'a> Service<'a> {
    fn app_name(&self) -> &'a str {
        &self.app.spec.name
    }

    fn status(&self, state: ServiceState) -> ServiceStatus {
        ServiceStatus::new(self.app_name(), self.name, state)
    }
}

/// A service's container as the planner sees it: observed, or created by the plan.
struct Container<'a> {
    id: String,
    restarts: u32,
    crash_streak: u32,
    started_at: Option<SystemTime>,
    task: Option<&'a TaskState>,
    /// It replaces a container this plan removes, whose failed starts are forgotten with it.
    replaces: bool,
}

impl<'a> Container<'a> {
    fn observed(c: &'a ObservedContainer) -> Container<'a> {
        Container {
            id: c.id.clone(),
            restarts: c.label(LABEL_RESTARTS).parse().unwrap_or(0),
            crash_streak: c.label(LABEL_CRASH_STREAK).parse().unwrap_or(0),
            started_at: c
                .label(LABEL_STARTED_AT)
                .parse::<u64>()
                .ok()
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            task: c.task.as_ref(),
            replaces: false,
        }
    }

    fn created(id: String, replaces: bool) -> Container<'a> {
        Container {
            id,
            restarts: 0,
            crash_streak: 0,
            started_at: None,
            task: None,
            replaces,
        }
    }
}

struct Planner<'a> {
    observed: &'a Observed,
    timing: Timing,
    now: Now,
    wake_at: Option<SystemTime>,
    /// Images a step of this plan pulls already.
    pulls: HashSet<String>,
}

impl<'a> Planner<'a> {
    /// The plan of one service, whose task starts only when `gate` is open, and what it reached
    /// for the services that depend on it.
    fn service(
        &mut self,
        s: Service<'a>,
        network: &AppNet<'a>,
        existing: Vec<&'a ObservedContainer>,
        gate: &Gate,
    ) -> (ServicePlan<'a>, Reached) {
        let id = container_id(s.app_name(), s.name);
        let mut steps = Vec::new();
        let mut current = None;
        for c in existing {
            if c.id == id && current.is_none() {
                current = Some(c);
            } else {
                steps.push(Action::RemoveContainer {
                    id: c.id.clone(),
                    why: Removal::Duplicate,
                });
            }
        }
        let network = match network {
            AppNet::None => None,
            AppNet::Ready(network) => Some(*network),
            AppNet::Unavailable(reason) => {
                // Whatever runs keeps running; nothing new starts without the network.
                let message = format!("app network unavailable: {reason}");
                let status = self.keep_running(s, current, ServiceState::Failed, &mut steps);
                let reached = still_running(current, &status)
                    .unwrap_or_else(|| Reached::Failed(format!("it cannot start: {message}")));
                return (
                    ServicePlan::new(steps, status.with_message(message)),
                    reached,
                );
            }
        };
        let image = match self.image(&s.spec.image, s.app, &mut steps) {
            ImageReadiness::Ready(image) => image,
            ImageReadiness::Waiting { message, failed } => {
                // Whatever runs keeps running until the new image is here.
                let status = self.keep_running(s, current, ServiceState::Pending, &mut steps);
                let reached = still_running(current, &status).unwrap_or_else(|| {
                    if failed {
                        Reached::Failed(format!("it cannot start: {message}"))
                    } else {
                        Reached::NotYet(format!("it is {message}"))
                    }
                });
                return (
                    ServicePlan::new(steps, status.with_message(message)),
                    reached,
                );
            }
        };
        let hash = spec_hash(s.app, s.name, s.spec, &image.digest);
        let container = match current {
            Some(c) if c.label(LABEL_SPEC_HASH) == hash => Container::observed(c),
            stale => {
                if let Some(c) = stale {
                    steps.push(Action::RemoveContainer {
                        id: c.id.clone(),
                        why: Removal::Replaced,
                    });
                } else if let Some(failures) = self.create_waits(&id) {
                    let message = format!("cannot create the container: {}", failures.last_error);
                    let status = s.status(ServiceState::Failed).with_message(message.clone());
                    return (ServicePlan::new(steps, status), Reached::Failed(message));
                }
                steps.push(Action::CreateContainer {
                    app: s.app,
                    service: s.name,
                    spec: s.spec,
                    image,
                    spec_hash: hash,
                    join_netns: network.is_some() && s.spec.network_mode == NetworkMode::Private,
                    app_hosts: network.is_some(),
                });
                Container::created(id, stale.is_some())
            }
        };
        self.drive_task(s, network, container, steps, gate)
    }

    /// The status of a service that cannot go on now: its container's when that runs,
    /// otherwise `state`.
    fn keep_running(
        &self,
        s: Service<'a>,
        current: Option<&'a ObservedContainer>,
        state: ServiceState,
        steps: &mut Vec<Action<'a>>,
    ) -> ServiceStatus {
        let mut status = match current {
            Some(c) => self.observe(s, &Container::observed(c), steps),
            None => s.status(state),
        };
        if status.state != ServiceState::Running {
            status.state = state;
        }
        status
    }

    /// The image of a service when it is present; otherwise why the service waits, after
    /// planning a pull when none runs and the last one failed long enough ago.
    fn image(
        &mut self,
        reference: &'a str,
        app: &'a DesiredApp,
        steps: &mut Vec<Action<'a>>,
    ) -> ImageReadiness<'a> {
        let name = image_name(reference);
        let unavailable = |why: &dyn std::fmt::Display| ImageReadiness::Waiting {
            message: format!("image {name} unavailable: {why}"),
            failed: true,
        };
        match self.observed.images.get(&name) {
            Some(ImageLookup::Present(info)) => return ImageReadiness::Ready(info),
            Some(ImageLookup::Failed(e)) => return unavailable(e),
            None => {}
        }
        let last_error = match self.observed.pulls.get(&name) {
            Some(PullState::Running { last_error }) => {
                return ImageReadiness::Waiting {
                    message: pulling(&name, last_error),
                    failed: last_error.is_some(),
                }
            }
            Some(PullState::Failed { error, at }) => {
                if self.now.mono < *at + self.timing.pull_retry {
                    return unavailable(error);
                }
                Some(error.clone())
            }
            None => None,
        };
        let Ok(parsed) = ImageRef::parse(reference) else {
            return unavailable(&format!("image reference {reference:?} is invalid"));
        };
        if self.pulls.insert(name.clone()) {
            steps.push(Action::PullImage {
                name: name.clone(),
                reference,
                login: app
                    .registry_logins
                    .iter()
                    .find(|l| l.registry == parsed.registry),
            });
        }
        ImageReadiness::Waiting {
            message: pulling(&name, &last_error),
            failed: last_error.is_some(),
        }
    }

    /// Start the task of an up-to-date container when it is not running and the restart policy,
    /// the back-off, failed starts and its dependencies (`gate`) allow it; report it and what it
    /// reached.
    fn drive_task(
        &mut self,
        s: Service<'a>,
        network: Option<&'a AppNetwork>,
        c: Container<'a>,
        mut steps: Vec<Action<'a>>,
        gate: &Gate,
    ) -> (ServicePlan<'a>, Reached) {
        let start = match c.task {
            None => Some((c.restarts, c.crash_streak)),
            Some(task) => match task.status {
                TaskStatus::Created | TaskStatus::Unknown => Some((c.restarts, c.crash_streak)),
                TaskStatus::Running | TaskStatus::Paused => None,
                TaskStatus::Stopped => self.restart(s, &c, task),
            },
        };
        let Some((restarts, crash_streak)) = start.filter(|_| !self.start_waits(&c)) else {
            let status = self.observe(s, &c, &mut steps);
            let reached = self.reached(&c, &status);
            return (ServicePlan::new(steps, status), reached);
        };
        let held = match gate {
            Gate::Open => None,
            Gate::Wait { message, soon } => {
                if *soon {
                    self.wake(self.now.wall);
                }
                let reached = Reached::NotYet(format!("it is {message}"));
                Some((ServiceState::Pending, message, reached))
            }
            Gate::Blocked(message) => {
                let reached = Reached::Failed(message.clone());
                Some((ServiceState::Failed, message, reached))
            }
        };
        if let Some((state, message, reached)) = held {
            // Not started: however its task is, it is reported waiting for (or blocked by) its
            // dependencies.
            let mut status = self.observe(s, &c, &mut steps);
            status.state = state;
            status.message = Some(message.clone());
            return (ServicePlan::new(steps, status), reached);
        }
        let reached = match self.failed_starts(&c) {
            // A retry: its dependents stay blocked until it runs.
            Some(failures) => Reached::Failed(failures.last_error.clone()),
            None => Reached::Starting,
        };
        self.stop_probe(&c.id, &mut steps);
        let mut start_failed = self.status_of(s, &c);
        start_failed.state = ServiceState::Failed;
        if let (Some(network), NetworkMode::Private) = (network, s.spec.network_mode) {
            steps.push(Action::AttachNetwork {
                network,
                service: s.name,
                container_id: c.id.clone(),
                ports: &s.spec.ports,
            });
            steps.push(Action::WriteHosts {
                app: &s.app.spec,
                network,
            });
        }
        steps.push(Action::StartTask {
            app: s.app_name(),
            service: s.name,
            container_id: c.id.clone(),
            restarts,
            crash_streak,
        });
        let mut status = s.status(ServiceState::Running);
        status.container_id = Some(c.id.clone());
        status.restarts = restarts;
        if let Some(check) = &s.spec.healthcheck {
            steps.push(Action::StartProbe {
                app: s.app_name(),
                service: s.name,
                container_id: c.id.clone(),
                pid: None,
                check,
            });
            status.health = HealthState::starting().health;
        }
        let plan = ServicePlan {
            steps,
            status,
            start_failed,
        };
        (plan, reached)
    }

    /// What a container whose task this pass does not start reached, given its `status`.
    fn reached(&self, c: &Container<'_>, status: &ServiceStatus) -> Reached {
        let task = c.task.map(|t| t.status);
        if let Some(TaskStatus::Running | TaskStatus::Paused) = task {
            return running(status);
        }
        if let Some(failures) = self.failed_starts(c) {
            return Reached::Failed(failures.last_error.clone());
        }
        match (task, status.exit_code) {
            (Some(TaskStatus::Stopped), Some(exit)) => Reached::Exited {
                status: exit,
                restarts: status.state == ServiceState::Restarting,
            },
            _ => Reached::NotYet("it has not started yet".into()),
        }
    }

    /// The failed starts of a container that count (those of a container this plan replaces do
    /// not).
    fn failed_starts(&self, c: &Container<'_>) -> Option<&'a StartFailures> {
        if c.replaces {
            return None;
        }
        self.observed.start_failures.get(&c.id)
    }

    /// Plan the next pass at `at` at the latest.
    fn wake(&mut self, at: SystemTime) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// The restart counts to start an exited task with, when its policy and back-off say now;
    /// a back-off deadline becomes a wake-up time.
    fn restart(
        &mut self,
        s: Service<'a>,
        c: &Container<'a>,
        task: &TaskState,
    ) -> Option<(u32, u32)> {
        let exit = Exit {
            status: task.exit_status,
            restarts: c.restarts,
            streak: c.crash_streak,
            started_at: c.started_at,
            exited_at: task.exited_at,
        };
        match backoff::decide(s.spec.restart, exit, &self.timing.backoff, self.now.wall) {
            Decision::StayExited => None,
            Decision::RestartNow { streak } => Some((c.restarts + 1, streak)),
            Decision::WaitUntil(at) => {
                self.wake(at);
                None
            }
        }
    }

    /// The failed creates of container `id` when the last was too recent to try again (the
    /// wake-up is set for when it is not).
    fn create_waits(&mut self, id: &str) -> Option<&'a StartFailures> {
        let failures = self.observed.start_failures.get(id)?;
        let at = self.retry_at(failures);
        if self.now.mono >= at {
            return None;
        }
        self.wake(self.now.wall + (at - self.now.mono));
        Some(failures)
    }

    /// Whether the container's last start failed too recently to try again.
    fn start_waits(&self, c: &Container<'_>) -> bool {
        self.failed_starts(c)
            .is_some_and(|failures| self.now.mono < self.retry_at(failures))
    }

    /// When a container that failed to be created or started may be tried again.
    fn retry_at(&self, failures: &StartFailures) -> Instant {
        let delay = self
            .timing
            .backoff
            .delay(failures.count.saturating_sub(1))
            .max(MIN_START_RETRY);
        failures.last_at + delay
    }

    /// The status of a container's service with its health, starting a probe for a running
    /// task with a health check that has none and stopping probes that are not wanted.
    fn observe(
        &self,
        s: Service<'a>,
        c: &Container<'_>,
        steps: &mut Vec<Action<'a>>,
    ) -> ServiceStatus {
        let mut status = self.status_of(s, c);
        let Some(task) = c.task else {
            self.stop_probe(&c.id, steps);
            return status;
        };
        match task.status {
            TaskStatus::Running | TaskStatus::Paused => {
                let Some(check) = &s.spec.healthcheck else {
                    self.stop_probe(&c.id, steps);
                    return status;
                };
                let health = match self.observed.probes.get(&c.id) {
                    Some(probe) if probe.pid == task.pid => probe.state.clone(),
                    _ => {
                        steps.push(Action::StartProbe {
                            app: s.app_name(),
                            service: s.name,
                            container_id: c.id.clone(),
                            pid: Some(task.pid),
                            check,
                        });
                        HealthState::starting()
                    }
                };
                status.health = health.health;
                if health.health == Health::Unhealthy {
                    status.state = ServiceState::Unhealthy;
                    status.message = health.last_error;
                }
            }
            TaskStatus::Stopped => self.stop_probe(&c.id, steps),
            TaskStatus::Created | TaskStatus::Unknown => {}
        }
        status
    }

    /// The status of a container's service from its task alone (no health).
    fn status_of(&self, s: Service<'a>, c: &Container<'_>) -> ServiceStatus {
        let mut status = s.status(ServiceState::Pending);
        status.container_id = Some(c.id.clone());
        status.restarts = c.restarts;
        let Some(task) = c.task else {
            return status;
        };
        match task.status {
            TaskStatus::Running | TaskStatus::Paused => {
                status.state = ServiceState::Running;
                status.pid = Some(task.pid);
            }
            TaskStatus::Stopped => {
                status.exit_code = Some(task.exit_status);
                if task.oom_killed {
                    status.message = Some(OOM_KILLED.into());
                }
                status.state =
                    if backoff::policy_restarts(s.spec.restart, task.exit_status, c.restarts) {
                        ServiceState::Restarting
                    } else {
                        ServiceState::Exited
                    };
            }
            TaskStatus::Created | TaskStatus::Unknown => {}
        }
        status
    }

    fn stop_probe(&self, id: &str, steps: &mut Vec<Action<'a>>) {
        if self.observed.probes.contains_key(id) {
            steps.push(Action::StopProbe {
                container_id: id.to_string(),
            });
        }
    }
}

/// What a service whose task runs reached, from its `status`.
fn running(status: &ServiceStatus) -> Reached {
    let error = match status.health {
        Health::Unhealthy => status.message.clone(),
        _ => None,
    };
    Reached::Running {
        health: status.health,
        error,
    }
}

/// What a service that cannot go on reached when its `current` container's task still runs
/// (`status` is that of [`Planner::keep_running`]).
fn still_running(current: Option<&ObservedContainer>, status: &ServiceStatus) -> Option<Reached> {
    let task = current?.task.as_ref()?;
    matches!(task.status, TaskStatus::Running | TaskStatus::Paused).then(|| running(status))
}

/// The message of a service waiting for its image's pull.
fn pulling(name: &str, last_error: &Option<Arc<PullError>>) -> String {
    match last_error {
        None => format!("pulling image {name}"),
        Some(e) => format!("pulling image {name} again after: {e}"),
    }
}

mod depends;
#[cfg(test)]
mod tests;
