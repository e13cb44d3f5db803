//! Unit tests of the planner, without containerd: one test per transition of a service (create,
//! keep, replace, start, restart under each policy and back-off, health, removal, pulls, failed
//! starts, networks, `depends_on` conditions, blocked dependents and cycles) and the wake-up
//! time.

use std::sync::OnceLock;

use super::*;
use crate::image::ContainerConfig;
use crate::network::{Ipv4Subnet, SubnetError};
use cairn_compose::DependsOn;

/// Wall-clock time of the pass the tests plan, unless they move it.
const T0: Duration = Duration::from_secs(1_700_000_000);

fn timing() -> Timing {
    Timing {
        backoff: Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(10),
        },
        pull_retry: Duration::from_secs(10),
    }
}

/// The pass's time, `after` the start of the tests' clock on both clocks.
fn at(after: Duration) -> Now {
    static MONO: OnceLock<Instant> = OnceLock::new();
    Now {
        wall: SystemTime::UNIX_EPOCH + T0 + after,
        mono: *MONO.get_or_init(Instant::now) + after,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A worker on the host network and a web service on the app network, restarted always.
const SHOP: &str = r#"
services:
  web:
    image: registry.example:5000/shop/web:1
    restart: always
    ports: ["8080:80"]
  worker:
    image: registry.example:5000/shop/worker:1
    network_mode: host
"#;

fn app(name: &str, yaml: &str) -> DesiredApp {
    DesiredApp::new(AppSpec::parse("compose.yml", name, yaml).unwrap())
}

fn digest(image: &str) -> String {
    format!("sha256:{}", hex::encode(image))
}

fn image_info(reference: &str) -> ImageInfo {
    ImageInfo {
        name: image_name(reference),
        digest: digest(reference),
        manifest: "sha256:m".into(),
        chain_id: "sha256:c".into(),
        config: ContainerConfig::default(),
    }
}

fn running(pid: u32) -> TaskState {
    TaskState {
        pid,
        status: TaskStatus::Running,
        exit_status: 0,
        exited_at: None,
        oom_killed: false,
    }
}

fn exited(status: u32, at: Now) -> TaskState {
    TaskState {
        pid: 0,
        status: TaskStatus::Stopped,
        exit_status: status,
        exited_at: Some(at.wall),
        oom_killed: false,
    }
}

fn created() -> TaskState {
    TaskState {
        pid: 0,
        status: TaskStatus::Created,
        exit_status: 0,
        exited_at: None,
        oom_killed: false,
    }
}

/// Desired apps, what was observed and the time of a pass.
struct Case {
    desired: Vec<DesiredApp>,
    observed: Observed,
    now: Now,
}

impl Case {
    /// App `shop` from `yaml` with every image present and its network ready, nothing running.
    fn new(yaml: &str) -> Case {
        Case::apps(vec![app("shop", yaml)])
    }

    fn apps(desired: Vec<DesiredApp>) -> Case {
        let mut observed = Observed::default();
        for app in &desired {
            for svc in app.spec.services.values() {
                let info = image_info(&svc.image);
                observed
                    .images
                    .insert(info.name.clone(), ImageLookup::Present(info));
            }
            if needs_network(&app.spec) {
                let subnet = Ipv4Subnet::new(std::net::Ipv4Addr::new(10, 88, 7, 0), 24).unwrap();
                let network = AppNetwork::for_subnet(&app.spec.name, subnet);
                observed
                    .networks
                    .insert(app.spec.name.clone(), NetworkState::Ready(network));
            }
        }
        Case {
            desired,
            observed,
            now: at(Duration::ZERO),
        }
    }

    fn spec(&self, service: &str) -> &ServiceSpec {
        &self.desired[0].spec.services[service]
    }

    /// The spec hash of `service` of the first app with its image as observed.
    fn current_hash(&self, service: &str) -> String {
        let svc = self.spec(service);
        spec_hash(&self.desired[0], service, svc, &digest(&svc.image))
    }

    /// Add a container of `service` (of the first app) with `hash`, `task` and `labels`.
    fn container(
        mut self,
        service: &str,
        hash: &str,
        task: Option<TaskState>,
        labels: &[(&str, String)],
    ) -> Case {
        let app = self.desired[0].spec.name.clone();
        let mut c = ObservedContainer {
            id: container_id(&app, service),
            labels: HashMap::from([
                (LABEL_APP.to_string(), app),
                (LABEL_SERVICE.to_string(), service.to_string()),
                (LABEL_SPEC_HASH.to_string(), hash.to_string()),
            ]),
            image: image_name(&self.spec(service).image),
            task,
        };
        for (k, v) in labels {
            c.labels.insert(k.to_string(), v.clone());
        }
        self.observed.containers.push(c);
        self
    }

    /// Add an up-to-date container of `service` with `task`.
    fn in_sync(self, service: &str, task: Option<TaskState>) -> Case {
        self.in_sync_labelled(service, task, &[])
    }

    /// Add an up-to-date container of `service` with `task` and `labels`.
    fn in_sync_labelled(
        self,
        service: &str,
        task: Option<TaskState>,
        labels: &[(&str, String)],
    ) -> Case {
        let hash = self.current_hash(service);
        self.container(service, &hash, task, labels)
    }

    /// Add an up-to-date container of `service` that exited, with its restart labels.
    fn crashed(
        self,
        service: &str,
        status: u32,
        ran: Duration,
        ago: Duration,
        labels: Counts,
    ) -> Case {
        let exited_at = self.now.wall - ago;
        let task = TaskState {
            exited_at: Some(exited_at),
            ..exited(status, self.now)
        };
        let hash = self.current_hash(service);
        let labels = [
            (LABEL_RESTARTS, labels.restarts.to_string()),
            (LABEL_CRASH_STREAK, labels.streak.to_string()),
            (
                LABEL_STARTED_AT,
                crate::container::unix_millis(exited_at - ran).to_string(),
            ),
        ];
        self.container(service, &hash, Some(task), &labels)
    }

    fn plan(&self) -> Plan<'_> {
        plan(&self.desired, &self.observed, &timing(), self.now)
    }
}

/// Restart count and crash streak labels.
#[derive(Clone, Copy)]
struct Counts {
    restarts: u32,
    streak: u32,
}

fn service<'p, 'a>(plan: &'p Plan<'a>, name: &str) -> &'p ServicePlan<'a> {
    plan.services
        .iter()
        .find(|s| s.status.service == name)
        .unwrap_or_else(|| panic!("no plan for {name}: {plan:#?}"))
}

/// The steps in words, for assertions that read like the plan.
fn steps(steps: &[Action<'_>]) -> Vec<String> {
    steps
        .iter()
        .map(|a| match a {
            Action::WriteHosts { app, .. } => format!("write hosts of {}", app.name),
            Action::PullImage { name, .. } => format!("pull {name}"),
            Action::RemoveContainer { id, why } => format!("remove {id} ({why:?})"),
            Action::CreateContainer {
                service,
                join_netns,
                app_hosts,
                ..
            } => format!("create {service} (netns {join_netns}, app hosts {app_hosts})"),
            Action::AttachNetwork { container_id, .. } => format!("attach {container_id}"),
            Action::StartTask {
                container_id,
                restarts,
                crash_streak,
                ..
            } => format!("start {container_id} (restarts {restarts}, streak {crash_streak})"),
            Action::StartProbe {
                container_id, pid, ..
            } => format!("probe {container_id} pid {pid:?}"),
            Action::StopProbe { container_id } => format!("stop probe of {container_id}"),
            Action::CollectNetworks { .. } => "collect networks".into(),
            Action::CleanAppDirs { .. } => "clean app dirs".into(),
            Action::CollectImages { .. } => "collect images".into(),
        })
        .collect()
}

fn worker_only() -> Case {
    Case::new(
        r#"
services:
  worker:
    image: registry.example:5000/shop/worker:1
    network_mode: host
    restart: always
"#,
    )
}

// --- Create, keep, replace ---

#[test]
fn a_missing_container_is_created_and_started() {
    let case = worker_only();
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps),
        [
            "create worker (netns false, app hosts false)",
            "start shop_worker (restarts 0, streak 0)"
        ]
    );
    assert_eq!(worker.status.state, ServiceState::Running);
    assert_eq!(worker.status.container_id.as_deref(), Some("shop_worker"));
    assert_eq!(
        (worker.status.restarts, worker.status.health),
        (0, Health::None)
    );
    let Action::CreateContainer { spec_hash, .. } = &worker.steps[0] else {
        panic!("{:?}", worker.steps[0]);
    };
    assert_eq!(*spec_hash, case.current_hash("worker"));
}

#[test]
fn a_service_in_sync_needs_nothing() {
    let case = worker_only().in_sync("worker", Some(running(42)));
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(steps(&worker.steps), [] as [&str; 0]);
    assert_eq!(worker.status.state, ServiceState::Running);
    assert_eq!(worker.status.pid, Some(42));
    assert_eq!(worker.status.message, None);
    assert!(steps(&plan.cleanup)
        .iter()
        .all(|s| !s.starts_with("remove")));
    assert_eq!(plan.wake_at, None);
}

#[test]
fn a_restarted_agent_adopts_running_containers_and_probes_them() {
    let case = Case::new(
        r#"
services:
  web:
    image: registry.example:5000/shop/web:1
    network_mode: host
    healthcheck: {test: "true", interval: 1s}
"#,
    )
    .in_sync("web", Some(running(42)));
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(steps(&web.steps), ["probe shop_web pid Some(42)"]);
    assert_eq!(
        (web.status.state, web.status.health),
        (ServiceState::Running, Health::Starting)
    );
}

#[test]
fn a_service_whose_image_changed_is_replaced() {
    let case = worker_only();
    let old_hash = spec_hash(
        &case.desired[0],
        "worker",
        case.spec("worker"),
        "sha256:the-image-before",
    );
    let case = case.container("worker", &old_hash, Some(running(42)), &[]);
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps),
        [
            "remove shop_worker (Replaced)",
            "create worker (netns false, app hosts false)",
            "start shop_worker (restarts 0, streak 0)"
        ]
    );
}

#[test]
fn a_service_whose_config_changed_is_replaced() {
    let before = app(
        "shop",
        r#"
services:
  worker:
    image: registry.example:5000/shop/worker:1
    network_mode: host
    restart: always
    environment: {MODE: old}
"#,
    );
    let case = worker_only();
    let svc = &before.spec.services["worker"];
    let old_hash = spec_hash(&before, "worker", svc, &digest(&svc.image));
    let case = case.container(
        "worker",
        &old_hash,
        Some(running(42)),
        &[(LABEL_RESTARTS, "3".into())],
    );
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps)[..],
        [
            "remove shop_worker (Replaced)",
            "create worker (netns false, app hosts false)",
            "start shop_worker (restarts 0, streak 0)"
        ]
    );
    assert_eq!(
        worker.status.restarts, 0,
        "the new container starts counting anew"
    );
}

#[test]
fn a_duplicate_container_of_a_service_is_removed() {
    let mut case = worker_only().in_sync("worker", Some(running(42)));
    let mut duplicate = case.observed.containers[0].clone();
    duplicate.id = "shop_worker-copy".into();
    case.observed.containers.push(duplicate);
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps),
        ["remove shop_worker-copy (Duplicate)",]
    );
}

// --- Starts and restarts ---

#[test]
fn a_created_task_that_is_not_running_is_started_without_counting_a_restart() {
    let case = worker_only().in_sync_labelled(
        "worker",
        Some(created()),
        &[
            (LABEL_RESTARTS, "2".into()),
            (LABEL_CRASH_STREAK, "1".into()),
        ],
    );
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps),
        ["start shop_worker (restarts 2, streak 1)"]
    );
    assert_eq!(worker.status.restarts, 2);
}

#[test]
fn an_exited_task_under_restart_no_stays_exited() {
    let case = Case::new(
        r#"
services:
  once:
    image: registry.example:5000/shop/once:1
    network_mode: host
"#,
    )
    .crashed(
        "once",
        0,
        secs(1),
        secs(600),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    let once = service(&plan, "once");
    assert_eq!(steps(&once.steps), [] as [&str; 0]);
    assert_eq!(
        (once.status.state, once.status.exit_code),
        (ServiceState::Exited, Some(0))
    );
    assert_eq!(plan.wake_at, None);
}

#[test]
fn an_exited_task_under_restart_always_is_restarted_whatever_its_exit_status() {
    for status in [0, 1] {
        let case = worker_only().crashed(
            "worker",
            status,
            secs(1),
            secs(600),
            Counts {
                restarts: 4,
                streak: 2,
            },
        );
        let plan = case.plan();
        let worker = service(&plan, "worker");
        assert_eq!(
            steps(&worker.steps),
            ["start shop_worker (restarts 5, streak 3)"],
            "exit status {status}"
        );
        assert_eq!(
            (worker.status.state, worker.status.restarts),
            (ServiceState::Running, 5)
        );
    }
}

#[test]
fn unless_stopped_restarts_like_always() {
    let case = Case::new(
        r#"
services:
  worker:
    image: registry.example:5000/shop/worker:1
    network_mode: host
    restart: unless-stopped
"#,
    )
    .crashed(
        "worker",
        0,
        secs(1),
        secs(600),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[0],
        "start shop_worker (restarts 1, streak 1)"
    );
}

const ON_FAILURE: &str = r#"
services:
  job:
    image: registry.example:5000/shop/job:1
    network_mode: host
    restart: on-failure:2
"#;

#[test]
fn on_failure_restarts_a_failed_task_but_not_a_successful_one() {
    let failed = Case::new(ON_FAILURE).crashed(
        "job",
        3,
        secs(1),
        secs(600),
        Counts {
            restarts: 1,
            streak: 1,
        },
    );
    let plan = failed.plan();
    assert_eq!(
        steps(&service(&plan, "job").steps)[0],
        "start shop_job (restarts 2, streak 2)"
    );
    let succeeded = Case::new(ON_FAILURE).crashed(
        "job",
        0,
        secs(1),
        secs(600),
        Counts {
            restarts: 1,
            streak: 1,
        },
    );
    let plan = succeeded.plan();
    let job = service(&plan, "job");
    assert_eq!(steps(&job.steps), [] as [&str; 0]);
    assert_eq!(job.status.state, ServiceState::Exited);
}

#[test]
fn on_failure_gives_up_after_its_max_retries() {
    let case = Case::new(ON_FAILURE).crashed(
        "job",
        3,
        secs(1),
        secs(600),
        Counts {
            restarts: 2,
            streak: 2,
        },
    );
    let plan = case.plan();
    let job = service(&plan, "job");
    assert_eq!(steps(&job.steps), [] as [&str; 0]);
    assert_eq!(
        (job.status.state, job.status.restarts, job.status.exit_code),
        (ServiceState::Exited, 2, Some(3))
    );
}

#[test]
fn a_crashed_task_is_not_restarted_before_its_back_off_ends() {
    let case = worker_only().crashed(
        "worker",
        1,
        millis(100),
        millis(500),
        Counts {
            restarts: 1,
            streak: 0,
        },
    );
    let exited_at = case.now.wall - millis(500);
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(steps(&worker.steps), [] as [&str; 0]);
    assert_eq!(
        (worker.status.state, worker.status.exit_code),
        (ServiceState::Restarting, Some(1))
    );
    assert_eq!(plan.wake_at, Some(exited_at + secs(1)));
}

#[test]
fn the_back_off_doubles_with_each_quick_crash_up_to_its_max() {
    // Streak 3 waits base * 2^3 = 8 s after the exit.
    let wait = |streak: u32, ago: Duration| {
        let case = worker_only().crashed(
            "worker",
            1,
            millis(100),
            ago,
            Counts {
                restarts: streak,
                streak,
            },
        );
        let exited_at = case.now.wall - ago;
        let plan = case.plan();
        let started = steps(&service(&plan, "worker").steps).len() == 1;
        (
            plan.wake_at.map(|w| w.duration_since(exited_at).unwrap()),
            started,
        )
    };
    assert_eq!(wait(3, secs(7)), (Some(secs(8)), false));
    assert_eq!(wait(3, secs(8)), (None, true));
    assert_eq!(wait(4, secs(8)), (Some(secs(16)), false));
    assert_eq!(wait(20, secs(59)), (Some(secs(60)), false), "at most max");
    let case = worker_only().crashed(
        "worker",
        1,
        millis(100),
        secs(8),
        Counts {
            restarts: 3,
            streak: 3,
        },
    );
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[0],
        "start shop_worker (restarts 4, streak 4)"
    );
}

#[test]
fn a_task_that_ran_long_enough_resets_its_crash_streak() {
    let case = worker_only().crashed(
        "worker",
        1,
        secs(20),
        secs(1),
        Counts {
            restarts: 7,
            streak: 5,
        },
    );
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[0],
        "start shop_worker (restarts 8, streak 1)",
        "the base delay of 1 s has passed and the streak starts over"
    );
}

#[test]
fn the_wake_up_time_is_the_earliest_back_off_deadline() {
    let case = Case::new(
        r#"
services:
  a:
    image: registry.example:5000/shop/a:1
    network_mode: host
    restart: always
  b:
    image: registry.example:5000/shop/b:1
    network_mode: host
    restart: always
"#,
    )
    .crashed(
        "a",
        1,
        millis(10),
        millis(100),
        Counts {
            restarts: 5,
            streak: 5,
        },
    )
    .crashed(
        "b",
        1,
        millis(10),
        millis(100),
        Counts {
            restarts: 1,
            streak: 1,
        },
    );
    let exited_at = case.now.wall - millis(100);
    let plan = case.plan();
    assert_eq!(
        plan.wake_at,
        Some(exited_at + secs(2)),
        "b's 2 s before a's 32 s"
    );
}

// --- Health ---

const CHECKED: &str = r#"
services:
  web:
    image: registry.example:5000/shop/web:1
    network_mode: host
    healthcheck: {test: "true", interval: 1s, retries: 2}
"#;

fn probed(case: &mut Case, pid: u32, health: Health, last_error: Option<&str>) {
    let state = HealthState {
        health,
        failures: 0,
        last_error: last_error.map(str::to_string),
    };
    case.observed
        .probes
        .insert("shop_web".into(), ProbeView { pid, state });
}

#[test]
fn a_started_task_with_a_health_check_is_probed_and_starting() {
    let case = Case::new(CHECKED);
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(
        steps(&web.steps)[1..],
        [
            "start shop_web (restarts 0, streak 0)",
            "probe shop_web pid None"
        ]
    );
    assert_eq!(web.status.health, Health::Starting);
}

#[test]
fn a_healthy_probe_result_is_reported() {
    let mut case = Case::new(CHECKED).in_sync("web", Some(running(42)));
    probed(&mut case, 42, Health::Healthy, None);
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(steps(&web.steps), [] as [&str; 0]);
    assert_eq!(
        (web.status.state, web.status.health),
        (ServiceState::Running, Health::Healthy)
    );
}

#[test]
fn an_unhealthy_service_is_reported_with_the_check_error_and_left_running() {
    let mut case = Case::new(CHECKED).in_sync("web", Some(running(42)));
    probed(
        &mut case,
        42,
        Health::Unhealthy,
        Some("health check exited with 1"),
    );
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(
        steps(&web.steps),
        [] as [&str; 0],
        "unhealthy restarts nothing"
    );
    assert_eq!(
        (web.status.state, web.status.health, web.status.pid),
        (ServiceState::Unhealthy, Health::Unhealthy, Some(42))
    );
    assert_eq!(
        web.status.message.as_deref(),
        Some("health check exited with 1")
    );
}

#[test]
fn the_probe_of_an_earlier_task_is_replaced() {
    let mut case = Case::new(CHECKED).in_sync("web", Some(running(42)));
    probed(&mut case, 41, Health::Unhealthy, Some("old"));
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(steps(&web.steps), ["probe shop_web pid Some(42)"]);
    assert_eq!(
        (web.status.state, web.status.health),
        (ServiceState::Running, Health::Starting)
    );
}

#[test]
fn the_probe_of_a_task_that_exited_is_stopped() {
    let mut case = Case::new(CHECKED).crashed(
        "web",
        0,
        secs(1),
        secs(600),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    probed(&mut case, 42, Health::Healthy, None);
    let plan = case.plan();
    let web = service(&plan, "web");
    assert_eq!(steps(&web.steps), ["stop probe of shop_web"]);
    assert_eq!(
        (web.status.state, web.status.health),
        (ServiceState::Exited, Health::None)
    );
}

#[test]
fn a_restart_stops_the_old_probe_and_probes_the_new_task() {
    let mut case = Case::new(
        r#"
services:
  web:
    image: registry.example:5000/shop/web:1
    network_mode: host
    restart: always
    healthcheck: {test: "true", interval: 1s}
"#,
    )
    .crashed(
        "web",
        1,
        secs(1),
        secs(600),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    probed(&mut case, 42, Health::Healthy, None);
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "web").steps),
        [
            "stop probe of shop_web",
            "start shop_web (restarts 1, streak 1)",
            "probe shop_web pid None"
        ]
    );
}

// --- Removal ---

#[test]
fn containers_of_a_service_no_longer_desired_are_removed() {
    let mut case = worker_only();
    let mut gone = ObservedContainer {
        id: "shop_old".into(),
        labels: HashMap::from([
            (LABEL_APP.to_string(), "shop".to_string()),
            (LABEL_SERVICE.to_string(), "old".to_string()),
        ]),
        image: "registry.example:5000/shop/old:1".into(),
        task: Some(running(7)),
    };
    case.observed.containers.push(gone.clone());
    gone.id = "attic_db".into();
    gone.labels.insert(LABEL_APP.into(), "attic".into());
    gone.labels.insert(LABEL_SERVICE.into(), "db".into());
    case.observed.containers.push(gone);
    let plan = case.plan();
    assert_eq!(
        steps(&plan.cleanup),
        [
            "remove attic_db (Undesired)",
            "remove shop_old (Undesired)",
            "collect networks",
            "clean app dirs",
            "collect images"
        ]
    );
    assert_eq!(plan.services.len(), 1, "only desired services are reported");
}

#[test]
fn an_app_no_longer_desired_loses_its_containers_network_files_and_images() {
    let mut case = Case::new(SHOP).in_sync("web", Some(running(42)));
    case.desired.clear();
    let plan = case.plan();
    assert!(plan.services.is_empty());
    assert!(plan.prepare.is_empty());
    assert_eq!(steps(&plan.cleanup)[0], "remove shop_web (Undesired)");
    let [_, Action::CollectNetworks {
        keep_containers,
        keep_apps,
    }, Action::CleanAppDirs { keep_apps: dirs }, Action::CollectImages { wanted }] =
        &plan.cleanup[..]
    else {
        panic!("{:#?}", plan.cleanup);
    };
    assert!(keep_containers.is_empty() && keep_apps.is_empty());
    assert!(dirs.is_empty() && wanted.is_empty());
}

#[test]
fn a_held_app_keeps_its_containers_network_files_and_images() {
    let mut case = Case::new(SHOP).in_sync("web", Some(running(42)));
    case.desired.clear();
    case.observed.held_apps.insert("shop".into());
    let plan = case.plan();
    assert!(plan.services.is_empty(), "a held app is not reported here");
    let [Action::CollectNetworks {
        keep_containers,
        keep_apps,
    }, Action::CleanAppDirs { keep_apps: dirs }, Action::CollectImages { wanted }] =
        &plan.cleanup[..]
    else {
        panic!("nothing of the held app is removed: {:#?}", plan.cleanup);
    };
    assert!(keep_containers.contains("shop_web") && keep_apps.contains("shop"));
    assert!(
        dirs.contains("shop") && wanted.len() == 1,
        "{dirs:?} {wanted:?}"
    );
}

#[test]
fn networks_files_and_images_of_desired_apps_are_kept() {
    let plan_case = Case::new(SHOP);
    let plan = plan_case.plan();
    let [Action::CollectNetworks {
        keep_containers,
        keep_apps,
    }, Action::CleanAppDirs { keep_apps: dirs }, Action::CollectImages { wanted }] =
        &plan.cleanup[..]
    else {
        panic!("{:#?}", plan.cleanup);
    };
    assert_eq!(
        keep_containers,
        &HashSet::from(["shop_web".to_string()]),
        "only services on the app network are attached"
    );
    assert_eq!(keep_apps, &HashSet::from(["shop".to_string()]));
    assert_eq!(dirs, &HashSet::from(["shop".to_string()]));
    assert_eq!(
        wanted,
        &HashSet::from([
            "registry.example:5000/shop/web:1".to_string(),
            "registry.example:5000/shop/worker:1".to_string()
        ])
    );
}

// --- Images ---

fn no_images(mut case: Case) -> Case {
    case.observed.images.clear();
    case
}

#[test]
fn a_missing_image_is_pulled_while_the_service_waits() {
    let case = no_images(worker_only());
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps),
        ["pull registry.example:5000/shop/worker:1"]
    );
    assert_eq!(worker.status.state, ServiceState::Pending);
    assert_eq!(
        worker.status.message.as_deref(),
        Some("pulling image registry.example:5000/shop/worker:1")
    );
}

#[test]
fn a_pull_carries_the_apps_login_for_the_images_registry_only() {
    let mut case = no_images(worker_only());
    let login = |registry: &str| RegistryLogin {
        registry: registry.into(),
        username: Some("puller".into()),
        password: Some("pw".into()),
        ca_pem: None,
    };
    case.desired[0].registry_logins = vec![login("other.example"), login("registry.example:5000")];
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let logins: Vec<_> = worker
        .steps
        .iter()
        .filter_map(|s| match s {
            Action::PullImage { login, .. } => Some(login.map(|l| l.registry.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(logins, [Some("registry.example:5000")]);

    case.desired[0].registry_logins = vec![login("other.example")];
    let plan = case.plan();
    assert!(matches!(
        service(&plan, "worker").steps[..],
        [Action::PullImage { login: None, .. }]
    ));
}

#[test]
fn a_pull_in_flight_is_not_started_again() {
    let mut case = no_images(worker_only());
    case.observed.pulls.insert(
        "registry.example:5000/shop/worker:1".into(),
        PullState::Running { last_error: None },
    );
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(steps(&worker.steps), [] as [&str; 0]);
    assert_eq!(worker.status.state, ServiceState::Pending);
}

#[test]
fn an_image_shared_by_two_services_is_pulled_once() {
    let case = no_images(Case::new(
        r#"
services:
  a:
    image: registry.example:5000/shop/base:1
    network_mode: host
  b:
    image: registry.example:5000/shop/base:1
    network_mode: host
"#,
    ));
    let plan = case.plan();
    let pulls: Vec<String> = plan
        .services
        .iter()
        .flat_map(|s| steps(&s.steps))
        .filter(|s| s.starts_with("pull"))
        .collect();
    assert_eq!(pulls, ["pull registry.example:5000/shop/base:1"]);
    assert!(plan
        .services
        .iter()
        .all(|s| s.status.state == ServiceState::Pending));
}

#[test]
fn a_failed_pull_is_reported_until_its_retry_delay_has_passed() {
    let mut case = no_images(worker_only());
    let error = PullError::Image(ImageError::Registry {
        url: "https://registry.example:5000/v2/shop/worker/manifests/1".into(),
        status: 404,
        body: "manifest unknown".into(),
    });
    case.observed.pulls.insert(
        "registry.example:5000/shop/worker:1".into(),
        PullState::Failed {
            error: Arc::new(error),
            at: case.now.mono,
        },
    );
    case.now = at(secs(9));
    {
        let plan = case.plan();
        let worker = service(&plan, "worker");
        assert_eq!(steps(&worker.steps), [] as [&str; 0]);
        assert_eq!(worker.status.state, ServiceState::Pending);
        assert!(worker.status.message.as_deref().unwrap().starts_with(
            "image registry.example:5000/shop/worker:1 unavailable: registry answered 404"
        ));
    }
    case.now = at(secs(10));
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps)[0],
        "pull registry.example:5000/shop/worker:1"
    );
    assert!(worker.status.message.as_deref().unwrap().starts_with(
        "pulling image registry.example:5000/shop/worker:1 again after: registry answered 404"
    ));
}

#[test]
fn an_unreadable_image_record_makes_the_service_wait() {
    let mut case = worker_only();
    case.observed.images.insert(
        "registry.example:5000/shop/worker:1".into(),
        ImageLookup::Failed(ImageError::Document {
            digest: "sha256:x".into(),
            reason: "bad manifest".into(),
        }),
    );
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(steps(&worker.steps), [] as [&str; 0]);
    assert_eq!(worker.status.state, ServiceState::Pending);
    assert_eq!(
        worker.status.message.as_deref(),
        Some("image registry.example:5000/shop/worker:1 unavailable: image document sha256:x is unusable: bad manifest")
    );
}

#[test]
fn a_running_container_keeps_running_while_its_new_image_is_pulled() {
    let case = no_images(worker_only()).container("worker", "the-old-hash", Some(running(42)), &[]);
    let plan = case.plan();
    let worker = service(&plan, "worker");
    assert_eq!(
        steps(&worker.steps),
        ["pull registry.example:5000/shop/worker:1"],
        "the old container is not removed yet"
    );
    assert_eq!(
        (worker.status.state, worker.status.pid),
        (ServiceState::Running, Some(42))
    );
    assert_eq!(
        worker.status.message.as_deref(),
        Some("pulling image registry.example:5000/shop/worker:1")
    );
}

// --- Failed steps ---

fn start_step(plan: &ServicePlan<'_>) -> usize {
    plan.steps
        .iter()
        .position(|s| matches!(s, Action::StartTask { .. }))
        .expect("a start step")
}

#[test]
fn a_failed_start_is_reported_and_counted_for_the_back_off() {
    let case = worker_only().crashed(
        "worker",
        1,
        secs(1),
        secs(600),
        Counts {
            restarts: 2,
            streak: 0,
        },
    );
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let error = ActionError::Container(ContainerError::Spec {
        reason: "runc: exec format error".into(),
    });
    let AfterFailure::StartFailed {
        container_id,
        status,
    } = worker.after_failure(&worker.steps[start_step(worker)], &error)
    else {
        panic!("a start failure");
    };
    assert_eq!(container_id, "shop_worker");
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(
        status.message.as_deref(),
        Some("cannot start: cannot build the container spec: runc: exec format error")
    );
    assert_eq!(
        (status.restarts, status.exit_code, status.pid),
        (2, Some(1), None),
        "the container as it was"
    );
}

#[test]
fn a_failed_create_is_retried_only_after_its_back_off() {
    let mut case = worker_only();
    case.observed.start_failures.insert(
        "shop_worker".into(),
        StartFailures {
            count: 1,
            last_at: case.now.mono,
            last_error: "user \"app\" is not in the image".into(),
        },
    );
    case.now = at(millis(999));
    {
        let plan = case.plan();
        let worker = service(&plan, "worker");
        assert_eq!(steps(&worker.steps), [] as [&str; 0]);
        assert_eq!(worker.status.state, ServiceState::Failed);
        assert!(worker
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("is not in the image")));
        assert_eq!(plan.wake_at, Some(at(secs(1)).wall));
    }
    case.now = at(secs(1));
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[0],
        "create worker (netns false, app hosts false)"
    );
}

#[test]
fn a_failed_start_is_retried_only_after_its_back_off() {
    let mut case = worker_only().in_sync("worker", None);
    // Two failures in a row: the next try waits base * 2 = 2 s.
    case.observed.start_failures.insert(
        "shop_worker".into(),
        StartFailures {
            count: 2,
            last_at: case.now.mono,
            last_error: "cannot start: boom".into(),
        },
    );
    case.now = at(millis(1999));
    {
        let plan = case.plan();
        let worker = service(&plan, "worker");
        assert_eq!(steps(&worker.steps), [] as [&str; 0]);
        assert_eq!(
            (worker.status.state, worker.status.message.as_deref()),
            (ServiceState::Pending, None)
        );
    }
    case.now = at(secs(2));
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[0],
        "start shop_worker (restarts 0, streak 0)"
    );
}

#[test]
fn a_first_failed_start_waits_the_base_delay() {
    let mut case = worker_only().in_sync("worker", Some(created()));
    case.observed.start_failures.insert(
        "shop_worker".into(),
        StartFailures {
            count: 1,
            last_at: case.now.mono,
            last_error: "cannot start: boom".into(),
        },
    );
    let starts = |case: &Case| {
        let plan = case.plan();
        let worker = service(&plan, "worker");
        worker
            .steps
            .iter()
            .any(|s| matches!(s, Action::StartTask { .. }))
    };
    case.now = at(millis(999));
    assert!(!starts(&case));
    case.now = at(secs(1));
    assert!(starts(&case));
}

#[test]
fn a_replacement_starts_at_once_whatever_the_old_container_failed() {
    let mut case = worker_only().container("worker", "the-old-hash", Some(created()), &[]);
    case.observed.start_failures.insert(
        "shop_worker".into(),
        StartFailures {
            count: 5,
            last_at: case.now.mono,
            last_error: "cannot start: boom".into(),
        },
    );
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "worker").steps)[..],
        [
            "remove shop_worker (Replaced)",
            "create worker (netns false, app hosts false)",
            "start shop_worker (restarts 0, streak 0)"
        ]
    );
}

#[test]
fn a_container_whose_record_is_broken_is_removed_to_be_created_again() {
    let case = worker_only();
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let error = ActionError::Container(ContainerError::BadRecord {
        id: "shop_worker".into(),
        reason: "its snapshot is missing".into(),
    });
    assert_eq!(
        worker.after_failure(&worker.steps[start_step(worker)], &error),
        AfterFailure::RemoveBroken {
            container_id: "shop_worker".into(),
            status: ServiceStatus::new("shop", "worker", ServiceState::Pending).with_message(
                "container shop_worker has no readable OCI spec: its snapshot is missing; delete and re-create it"
            ),
        }
    );
}

#[test]
fn a_failed_create_or_replacement_is_reported_as_failed() {
    let case = worker_only().container("worker", "the-old-hash", Some(running(42)), &[]);
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let error = ActionError::Container(ContainerError::MissingSecret {
        app: "shop".into(),
        name: "token".into(),
    });
    // A failed create counts like a failed start, so it is retried after the back-off.
    let status = |step: usize| match worker.after_failure(&worker.steps[step], &error) {
        AfterFailure::Report(status) => (status.state, status.message.unwrap()),
        AfterFailure::StartFailed {
            container_id,
            status,
        } if container_id == "shop_worker" => (status.state, status.message.unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        status(0),
        (
            ServiceState::Failed,
            "cannot remove the old container: secret token of app shop has no value; central must provide it".into()
        )
    );
    assert_eq!(
        status(1),
        (
            ServiceState::Failed,
            "secret token of app shop has no value; central must provide it".into()
        )
    );
}

#[test]
fn a_secret_that_cannot_be_a_variable_fails_its_service_naming_the_secret() {
    let case = worker_only().container("worker", "the-old-hash", Some(running(42)), &[]);
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let error = ActionError::Container(ContainerError::SecretEnv {
        app: "shop".into(),
        service: "worker".into(),
        variable: "TOKEN".into(),
        secret: "token".into(),
        problem: crate::container::SecretEnvProblem::NotUtf8,
    });
    let AfterFailure::StartFailed { status, .. } = worker.after_failure(&worker.steps[1], &error)
    else {
        panic!("a failed create is retried after the back-off");
    };
    assert_eq!(status.state, ServiceState::Failed);
    let message = status.message.unwrap();
    assert!(
        message.starts_with("secret token of app shop cannot be variable TOKEN of service worker: its value is not valid UTF-8; "),
        "{message}"
    );
}

#[test]
fn failures_of_housekeeping_steps_are_only_logged() {
    let mut case = no_images(worker_only()).in_sync("worker", Some(running(42)));
    let mut duplicate = case.observed.containers[0].clone();
    duplicate.id = "shop_worker-copy".into();
    case.observed.containers.push(duplicate);
    let plan = case.plan();
    let worker = service(&plan, "worker");
    let error = ActionError::Image(ImageError::NotFound { name: "x".into() });
    assert_eq!(worker.steps.len(), 2, "{:?}", steps(&worker.steps));
    for step in &worker.steps {
        assert_eq!(worker.after_failure(step, &error), AfterFailure::Continue);
    }
}

// --- Networks ---

#[test]
fn a_private_service_is_attached_to_its_app_network_before_its_task_starts() {
    let case = Case::new(SHOP);
    let plan = case.plan();
    assert_eq!(steps(&plan.prepare), ["write hosts of shop"]);
    assert_eq!(
        steps(&service(&plan, "web").steps),
        [
            "create web (netns true, app hosts true)",
            "attach shop_web",
            "write hosts of shop",
            "start shop_web (restarts 0, streak 0)"
        ]
    );
    assert_eq!(
        steps(&service(&plan, "worker").steps),
        [
            "create worker (netns false, app hosts true)",
            "start shop_worker (restarts 0, streak 0)"
        ],
        "a host-network service is not attached but sees the app's hosts file"
    );
    let web = service(&plan, "web");
    let Action::AttachNetwork { ports, network, .. } = &web.steps[1] else {
        panic!("{:?}", web.steps[1]);
    };
    assert_eq!((ports.len(), network.app.as_str()), (1, "shop"));
}

#[test]
fn a_failed_attach_counts_as_a_failed_start() {
    let case = Case::new(SHOP);
    let plan = case.plan();
    let web = service(&plan, "web");
    let error = ActionError::Network(NetworkError::NoAddress {
        container_id: "shop_web".into(),
    });
    let AfterFailure::StartFailed { status, .. } = web.after_failure(&web.steps[1], &error) else {
        panic!("a start failure");
    };
    assert_eq!(status.state, ServiceState::Failed);
    assert!(status.message.unwrap().starts_with(
        "cannot attach to the app network: CNI ADD for shop_web assigned no IPv4 address"
    ));
}

#[test]
fn services_wait_while_their_app_network_is_unavailable() {
    let mut case = Case::new(SHOP).in_sync("worker", Some(running(42)));
    let error = NetworkError::Subnet(SubnetError::PoolExhausted {
        pool: Ipv4Subnet::new(std::net::Ipv4Addr::new(10, 88, 0, 0), 16).unwrap(),
        prefix: 24,
        apps: 256,
    });
    case.observed
        .networks
        .insert("shop".into(), NetworkState::Unavailable(error));
    let plan = case.plan();
    assert!(plan.prepare.is_empty());
    let web = service(&plan, "web");
    assert!(web.steps.is_empty(), "{:?}", steps(&web.steps));
    assert_eq!(web.status.state, ServiceState::Failed);
    assert!(web
        .status
        .message
        .as_deref()
        .unwrap()
        .starts_with("app network unavailable: no free /24 left"));
    let worker = service(&plan, "worker");
    assert!(worker.steps.is_empty());
    assert_eq!(
        (worker.status.state, worker.status.pid),
        (ServiceState::Running, Some(42)),
        "what runs keeps running"
    );
    let Action::CollectNetworks { keep_apps, .. } = &plan.cleanup[0] else {
        panic!("{:?}", plan.cleanup);
    };
    assert!(keep_apps.contains("shop"), "the network is not collected");
}

// --- depends_on ---

/// A database with a health check, a one-shot migration and a web service, all on the host
/// network (the parser does not read `depends_on` yet: [`depends`] sets it).
const STACK: &str = r#"
services:
  db:
    image: registry.example:5000/shop/db:1
    network_mode: host
    restart: always
    healthcheck: {test: "true", interval: 1s, retries: 2}
  migrate:
    image: registry.example:5000/shop/migrate:1
    network_mode: host
  web:
    image: registry.example:5000/shop/web:1
    network_mode: host
    restart: always
"#;

/// App `shop` from `yaml` where each `(service, dependency, condition)` is in `depends_on`.
fn depends(yaml: &str, deps: &[(&str, &str, DependsOn)]) -> Case {
    let mut case = Case::new(yaml);
    for (service, dep, condition) in deps {
        let spec = case.desired[0].spec.services.get_mut(*service).unwrap();
        spec.depends_on.insert(dep.to_string(), *condition);
    }
    case
}

/// Web depends on db with `condition`.
fn web_on_db(condition: DependsOn) -> Case {
    depends(STACK, &[("web", "db", condition)])
}

/// A probe of `service`'s container on task `pid`.
fn probe(case: &mut Case, service: &str, pid: u32, health: Health, last_error: Option<&str>) {
    let state = HealthState {
        health,
        failures: 0,
        last_error: last_error.map(str::to_string),
    };
    case.observed
        .probes
        .insert(container_id("shop", service), ProbeView { pid, state });
}

/// Whether `service`'s steps start its task.
fn starts(plan: &Plan<'_>, name: &str) -> bool {
    service(plan, name)
        .steps
        .iter()
        .any(|s| matches!(s, Action::StartTask { .. }))
}

/// State and message of `service`.
fn reported(plan: &Plan<'_>, name: &str) -> (ServiceState, String) {
    let status = &service(plan, name).status;
    (status.state, status.message.clone().unwrap_or_default())
}

fn waiting(message: &str) -> (ServiceState, String) {
    (ServiceState::Pending, message.to_string())
}

fn blocked(message: &str) -> (ServiceState, String) {
    (ServiceState::Failed, message.to_string())
}

#[test]
fn a_dependent_is_created_but_not_started_before_its_dependency_runs() {
    let case = web_on_db(DependsOn::ServiceStarted);
    let plan = case.plan();
    assert!(starts(&plan, "db"));
    assert_eq!(
        steps(&service(&plan, "web").steps),
        ["create web (netns false, app hosts false)"]
    );
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for db to start (it is starting)")
    );
    assert_eq!(
        plan.wake_at,
        Some(case.now.wall),
        "the next pass comes right away, when db runs"
    );
}

#[test]
fn service_started_is_met_once_the_dependency_runs() {
    let case = web_on_db(DependsOn::ServiceStarted)
        .in_sync("db", Some(running(42)))
        .in_sync("web", None);
    let plan = case.plan();
    assert!(starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        (ServiceState::Running, String::new())
    );
    assert_eq!(plan.wake_at, None);
}

#[test]
fn service_started_is_met_by_a_one_shot_dependency_that_completed() {
    let case = depends(STACK, &[("web", "migrate", DependsOn::ServiceStarted)]).crashed(
        "migrate",
        0,
        secs(1),
        secs(5),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    assert!(starts(&plan, "web"), "{:?}", reported(&plan, "web"));
    assert!(!starts(&plan, "migrate"), "restart: no is not restarted");
}

#[test]
fn service_healthy_waits_while_the_health_check_has_not_passed() {
    let mut case = web_on_db(DependsOn::ServiceHealthy).in_sync("db", Some(running(42)));
    probe(&mut case, "db", 42, Health::Starting, None);
    let plan = case.plan();
    assert!(!starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for db to be healthy (its health check has not passed yet)")
    );
    assert_eq!(
        plan.wake_at, None,
        "the probe wakes the loop when db's health changes"
    );
}

#[test]
fn service_healthy_ignores_the_probe_of_an_earlier_task() {
    let mut case = web_on_db(DependsOn::ServiceHealthy).in_sync("db", Some(running(42)));
    probe(&mut case, "db", 41, Health::Healthy, None);
    let plan = case.plan();
    assert!(!starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for db to be healthy (its health check has not passed yet)")
    );
}

#[test]
fn service_healthy_is_met_once_the_health_check_passes() {
    let mut case = web_on_db(DependsOn::ServiceHealthy)
        .in_sync("db", Some(running(42)))
        .in_sync("web", Some(created()));
    probe(&mut case, "db", 42, Health::Healthy, None);
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "web").steps),
        ["start shop_web (restarts 0, streak 0)"]
    );
    assert_eq!(service(&plan, "web").status.state, ServiceState::Running);
}

#[test]
fn a_running_dependent_keeps_running_when_its_dependency_becomes_unhealthy() {
    let mut case = web_on_db(DependsOn::ServiceHealthy)
        .in_sync("db", Some(running(42)))
        .in_sync("web", Some(running(43)));
    probe(
        &mut case,
        "db",
        42,
        Health::Unhealthy,
        Some("health check exited with 1"),
    );
    let plan = case.plan();
    assert_eq!(steps(&service(&plan, "web").steps), [] as [&str; 0]);
    assert_eq!(
        (
            service(&plan, "web").status.state,
            service(&plan, "web").status.pid
        ),
        (ServiceState::Running, Some(43))
    );
    assert!(steps(&plan.cleanup)
        .iter()
        .all(|s| !s.starts_with("remove")));
}

#[test]
fn a_dependent_that_must_restart_waits_again_while_its_dependency_is_unhealthy() {
    let mut case = web_on_db(DependsOn::ServiceHealthy)
        .in_sync("db", Some(running(42)))
        .crashed(
            "web",
            1,
            secs(1),
            secs(600),
            Counts {
                restarts: 3,
                streak: 1,
            },
        );
    probe(
        &mut case,
        "db",
        42,
        Health::Unhealthy,
        Some("health check exited with 1"),
    );
    {
        let plan = case.plan();
        let web = service(&plan, "web");
        assert_eq!(steps(&web.steps), [] as [&str; 0]);
        assert_eq!(
            reported(&plan, "web"),
            waiting("waiting for db to be healthy (it is unhealthy: health check exited with 1)")
        );
        assert_eq!(
            (web.status.restarts, web.status.exit_code),
            (3, Some(1)),
            "no restart is counted while it waits"
        );
    }
    probe(&mut case, "db", 42, Health::Healthy, None);
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "web").steps),
        ["start shop_web (restarts 4, streak 2)"],
        "the restart happens once db is healthy again"
    );
}

#[test]
fn a_dependent_waits_for_a_dependency_that_restarts_after_its_back_off() {
    let case = web_on_db(DependsOn::ServiceStarted)
        .crashed(
            "db",
            1,
            millis(100),
            millis(100),
            Counts {
                restarts: 1,
                streak: 1,
            },
        )
        .in_sync("web", None);
    let plan = case.plan();
    assert!(!starts(&plan, "db") && !starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        waiting(
            "waiting for db to start (it exited with status 1 and restarts after its back-off)"
        )
    );
    assert!(plan.wake_at.is_some(), "db's back-off deadline");
}

#[test]
fn service_healthy_on_a_dependency_without_health_check_is_blocked() {
    let case = depends(STACK, &[("db", "web", DependsOn::ServiceHealthy)])
        .in_sync("web", Some(running(42)));
    let plan = case.plan();
    assert!(!starts(&plan, "db"));
    assert_eq!(
        reported(&plan, "db"),
        blocked("blocked by web: it has no health check, so it never becomes healthy")
    );
}

#[test]
fn service_completed_successfully_waits_while_the_dependency_runs() {
    let case = depends(
        STACK,
        &[("web", "migrate", DependsOn::ServiceCompletedSuccessfully)],
    )
    .in_sync("migrate", Some(running(42)));
    let plan = case.plan();
    assert!(!starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for migrate to complete successfully (it is running)")
    );
}

#[test]
fn service_completed_successfully_is_met_by_an_exit_with_status_0() {
    let case = depends(
        STACK,
        &[("web", "migrate", DependsOn::ServiceCompletedSuccessfully)],
    )
    .crashed(
        "migrate",
        0,
        secs(2),
        secs(1),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    assert_eq!(
        steps(&service(&plan, "migrate").steps),
        [] as [&str; 0],
        "the migration is not run again"
    );
    assert_eq!(service(&plan, "migrate").status.state, ServiceState::Exited);
    assert!(starts(&plan, "web"));
}

#[test]
fn a_dependency_that_failed_for_good_blocks_its_dependent_with_the_reason() {
    for condition in [
        DependsOn::ServiceCompletedSuccessfully,
        DependsOn::ServiceStarted,
    ] {
        let case = depends(STACK, &[("web", "migrate", condition)]).crashed(
            "migrate",
            3,
            secs(2),
            secs(1),
            Counts {
                restarts: 0,
                streak: 0,
            },
        );
        let plan = case.plan();
        assert!(!starts(&plan, "web"));
        assert_eq!(
            reported(&plan, "web"),
            blocked(
                "blocked by migrate: it exited with status 3 and its restart policy keeps it down"
            ),
            "{condition:?}"
        );
    }
}

#[test]
fn a_dependency_retried_under_on_failure_keeps_its_dependent_waiting() {
    let yaml = STACK.replace(
        "    image: registry.example:5000/shop/migrate:1\n",
        "    image: registry.example:5000/shop/migrate:1\n    restart: on-failure:3\n",
    );
    let case = depends(
        &yaml,
        &[("web", "migrate", DependsOn::ServiceCompletedSuccessfully)],
    )
    .crashed(
        "migrate",
        3,
        millis(100),
        millis(100),
        Counts {
            restarts: 1,
            streak: 1,
        },
    );
    let plan = case.plan();
    assert_eq!(
        reported(&plan, "web"),
        waiting(
            "waiting for migrate to complete successfully (it exited with status 3 and restarts after its back-off)"
        )
    );
}

#[test]
fn a_replaced_dependency_must_complete_again() {
    let case = depends(
        STACK,
        &[("web", "migrate", DependsOn::ServiceCompletedSuccessfully)],
    )
    .container(
        "migrate",
        "the-old-hash",
        Some(exited(0, at(Duration::ZERO))),
        &[],
    )
    .in_sync("web", None);
    let plan = case.plan();
    assert!(starts(&plan, "migrate"), "the new migration runs");
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for migrate to complete successfully (it is starting)"),
        "the old container's completion does not count"
    );
}

#[test]
fn a_dependency_whose_image_is_pulled_keeps_its_dependent_waiting() {
    let mut case = web_on_db(DependsOn::ServiceStarted);
    case.observed
        .images
        .remove("registry.example:5000/shop/db:1");
    let plan = case.plan();
    assert_eq!(
        reported(&plan, "web"),
        waiting("waiting for db to start (it is pulling image registry.example:5000/shop/db:1)")
    );
}

#[test]
fn a_dependency_whose_pull_failed_blocks_its_dependent() {
    let mut case = web_on_db(DependsOn::ServiceHealthy);
    case.observed
        .images
        .remove("registry.example:5000/shop/db:1");
    let error = PullError::Image(ImageError::Registry {
        url: "https://registry.example:5000/v2/shop/db/manifests/1".into(),
        status: 404,
        body: "manifest unknown".into(),
    });
    case.observed.pulls.insert(
        "registry.example:5000/shop/db:1".into(),
        PullState::Failed {
            error: Arc::new(error),
            at: case.now.mono,
        },
    );
    let plan = case.plan();
    let (state, message) = reported(&plan, "web");
    assert_eq!(state, ServiceState::Failed);
    assert!(
        message.starts_with(
            "blocked by db: it cannot start: image registry.example:5000/shop/db:1 unavailable: registry answered 404"
        ),
        "{message}"
    );
    assert_eq!(
        service(&plan, "db").status.state,
        ServiceState::Pending,
        "db itself reports its pull as before"
    );
}

#[test]
fn a_dependency_whose_start_failed_blocks_its_dependent_also_while_it_is_retried() {
    let mut case = web_on_db(DependsOn::ServiceStarted)
        .in_sync("db", Some(created()))
        .in_sync("web", None);
    case.observed.start_failures.insert(
        "shop_db".into(),
        StartFailures {
            count: 1,
            last_at: case.now.mono,
            last_error: "cannot start: runc: exec format error".into(),
        },
    );
    let expected = blocked("blocked by db: cannot start: runc: exec format error");
    {
        let plan = case.plan();
        assert!(!starts(&plan, "db"), "inside its back-off");
        assert_eq!(reported(&plan, "web"), expected);
    }
    case.now = at(secs(1));
    let plan = case.plan();
    assert!(starts(&plan, "db"), "the retry");
    assert_eq!(
        reported(&plan, "web"),
        expected,
        "no flapping while db retries"
    );
}

#[test]
fn a_blocked_dependency_blocks_its_dependents_in_turn() {
    let case = depends(
        STACK,
        &[
            ("db", "migrate", DependsOn::ServiceCompletedSuccessfully),
            ("web", "db", DependsOn::ServiceHealthy),
        ],
    )
    .crashed(
        "migrate",
        2,
        secs(1),
        secs(1),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    assert!(!starts(&plan, "db") && !starts(&plan, "web"));
    let migrate_failed =
        "blocked by migrate: it exited with status 2 and its restart policy keeps it down";
    assert_eq!(reported(&plan, "db"), blocked(migrate_failed));
    assert_eq!(
        reported(&plan, "web"),
        blocked(&format!("blocked by db: {migrate_failed}"))
    );
}

#[test]
fn a_waiting_dependency_keeps_its_dependents_waiting() {
    let mut case = depends(
        STACK,
        &[
            ("migrate", "db", DependsOn::ServiceHealthy),
            ("web", "migrate", DependsOn::ServiceCompletedSuccessfully),
        ],
    )
    .in_sync("db", Some(running(42)));
    probe(&mut case, "db", 42, Health::Starting, None);
    let plan = case.plan();
    assert!(!starts(&plan, "migrate") && !starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        waiting(
            "waiting for migrate to complete successfully (it is waiting for db to be healthy (its health check has not passed yet))"
        )
    );
}

#[test]
fn every_unmet_dependency_is_named_and_a_blocked_one_wins() {
    let mut case = depends(
        STACK,
        &[
            ("web", "db", DependsOn::ServiceHealthy),
            ("web", "migrate", DependsOn::ServiceCompletedSuccessfully),
        ],
    )
    .in_sync("db", Some(running(42)))
    .in_sync("migrate", Some(running(43)));
    probe(&mut case, "db", 42, Health::Starting, None);
    {
        let plan = case.plan();
        assert_eq!(
            reported(&plan, "web"),
            waiting(
                "waiting for db to be healthy (its health check has not passed yet); waiting for migrate to complete successfully (it is running)"
            )
        );
    }
    case.observed.containers.retain(|c| c.id != "shop_migrate");
    let case = case.crashed(
        "migrate",
        1,
        secs(1),
        secs(1),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    assert_eq!(
        reported(&plan, "web"),
        blocked("blocked by migrate: it exited with status 1 and its restart policy keeps it down")
    );
}

#[test]
fn dependencies_are_planned_first_whatever_their_names_and_reported_in_spec_order() {
    // `a` sorts before its dependency `zz`.
    let yaml = r#"
services:
  a:
    image: registry.example:5000/shop/a:1
    network_mode: host
  zz:
    image: registry.example:5000/shop/zz:1
    network_mode: host
"#;
    let case =
        depends(yaml, &[("a", "zz", DependsOn::ServiceStarted)]).in_sync("zz", Some(running(42)));
    let plan = case.plan();
    assert!(starts(&plan, "a"), "{:?}", reported(&plan, "a"));
    let names: Vec<&str> = plan
        .services
        .iter()
        .map(|s| s.status.service.as_str())
        .collect();
    assert_eq!(names, ["a", "zz"]);
}

#[test]
fn a_dependency_cycle_blocks_its_services_without_hanging() {
    let case = depends(
        STACK,
        &[
            ("db", "migrate", DependsOn::ServiceStarted),
            ("migrate", "db", DependsOn::ServiceHealthy),
            ("web", "db", DependsOn::ServiceStarted),
        ],
    );
    let plan = case.plan();
    assert!(plan.services.iter().all(|s| s
        .steps
        .iter()
        .all(|s| !matches!(s, Action::StartTask { .. }))));
    assert_eq!(
        reported(&plan, "db"),
        blocked(
            "blocked by a depends_on cycle: db -> migrate -> db; none of its services can start"
        )
    );
    assert_eq!(
        reported(&plan, "migrate"),
        blocked(
            "blocked by a depends_on cycle: migrate -> db -> migrate; none of its services can start"
        )
    );
    assert_eq!(
        reported(&plan, "web"),
        blocked(
            "blocked by db: blocked by a depends_on cycle: db -> migrate -> db; none of its services can start"
        )
    );
}

#[test]
fn a_service_that_depends_on_itself_is_blocked_but_a_running_one_keeps_running() {
    let case = depends(
        STACK,
        &[
            ("web", "web", DependsOn::ServiceStarted),
            ("db", "db", DependsOn::ServiceStarted),
        ],
    )
    .in_sync("db", Some(running(42)));
    let plan = case.plan();
    assert_eq!(
        reported(&plan, "web"),
        blocked("blocked by a depends_on cycle: web -> web; none of its services can start")
    );
    assert!(!starts(&plan, "db"));
    assert_eq!(service(&plan, "db").status.state, ServiceState::Running);
}

#[test]
fn a_dependency_that_is_not_a_service_of_the_app_blocks() {
    let case = depends(STACK, &[("web", "cache", DependsOn::ServiceStarted)]);
    let plan = case.plan();
    assert!(!starts(&plan, "web"));
    assert_eq!(
        reported(&plan, "web"),
        blocked("blocked by cache: it is not a service of this app")
    );
}

#[test]
fn the_start_order_of_a_long_chain_needs_no_deep_recursion() {
    let mut spec = app("shop", STACK).spec;
    let template = spec.services["web"].clone();
    spec.services.clear();
    let n = 20_000;
    for i in 0..n {
        let mut svc = template.clone();
        if i + 1 < n {
            svc.depends_on
                .insert(format!("s{:05}", i + 1), DependsOn::ServiceStarted);
        }
        spec.services.insert(format!("s{i:05}"), svc);
    }
    let last = format!("s{:05}", n - 1);
    let (order, cycles) = depends::start_order(&spec);
    assert_eq!(order.len(), n);
    assert_eq!(order[0], last, "the last of the chain first");
    assert!(cycles.is_empty());
    // Closed into one big cycle: every service is on it, named briefly.
    spec.services
        .get_mut(&last)
        .unwrap()
        .depends_on
        .insert("s00000".into(), DependsOn::ServiceStarted);
    let (order, cycles) = depends::start_order(&spec);
    assert_eq!((order.len(), cycles.len()), (n, n));
    assert_eq!(
        cycles["s00007"],
        "s00007 -> s00008 -> s00009 -> s00010 -> s00011 -> s00012 -> ... -> s00007 (20000 services)"
    );
}

#[test]
fn a_long_chain_behind_a_failed_dependency_is_blocked_with_bounded_messages() {
    let mut case = Case::new(STACK);
    let spec = &mut case.desired[0].spec;
    let template = spec.services["migrate"].clone();
    spec.services.clear();
    let n = 2_000;
    for i in 0..n {
        let mut svc = template.clone();
        if i + 1 < n {
            svc.depends_on
                .insert(format!("s{:04}", i + 1), DependsOn::ServiceStarted);
        }
        spec.services.insert(format!("s{i:04}"), svc);
    }
    let case = case.crashed(
        &format!("s{:04}", n - 1),
        1,
        secs(1),
        secs(1),
        Counts {
            restarts: 0,
            streak: 0,
        },
    );
    let plan = case.plan();
    let (state, message) = reported(&plan, "s0000");
    assert_eq!(state, ServiceState::Failed);
    assert!(
        message.starts_with("blocked by s0001: blocked by s0002: "),
        "{message}"
    );
    assert!(message.len() < 1_000, "{}", message.len());
}
