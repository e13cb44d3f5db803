//! `cairnctl app` end to end on this host: a real central, an in-process agent with apps enabled,
//! a real containerd (+ runc) and a registry serving a busybox image. Deploy puts a container in
//! containerd namespace `cairn`; the agent's heartbeats make `app list` show it running; the app
//! survives an agent restart while central is down (no duplicate, same task); `app rm` leaves
//! nothing in containerd. A Compose file with mistakes is refused before upload, with lines.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_agent::config::KeyStorageSetting;
use cairn_agent::AgentConfig;
use cairn_api::{AppList, DeviceList, ServiceState};
use cairn_runtime::container::{list_containers, ObservedContainer, TaskStatus};
use cairn_testsupport::central::TestCentral;
use cairn_testsupport::{images, require_tool, Containerd, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use support::Ctl;

mod support;

const WAIT: Duration = Duration::from_secs(60);

/// An agent running `cairn_agent::run` (the binary's run path) in a task.
struct RunningAgent {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), cairn_agent::AgentError>>,
}

impl RunningAgent {
    fn start(config: AgentConfig) -> RunningAgent {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(cairn_agent::run(config, shutdown));
        RunningAgent { stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10 s")
            .unwrap()
            .expect("agent ends without error");
    }
}

fn agent_config(
    central: &TestCentral,
    token: &str,
    dir: &Path,
    containerd: &Containerd,
) -> AgentConfig {
    let ca = dir.join("central-ca.pem");
    std::fs::write(&ca, &central.ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", central.c().grpc_addr.port());
    let mut config = AgentConfig::new(&endpoint, &ca, token, &dir.join("agent"));
    config.key_storage = KeyStorageSetting::Software;
    config.serial = Some("SN-APPS".into());
    config.heartbeat_interval_ms = 100;
    config.backoff_initial_ms = 50;
    config.backoff_max_ms = 400;
    config.apps.enabled = true;
    config.apps.containerd_socket = containerd.socket();
    config.apps.runc_root = Some(containerd.runc_root());
    config.apps.data_dir = Some(containerd.scratch_dir("apps"));
    config.apps.reconcile_interval_ms = 100;
    config
}

/// Polls `probe` every 100 ms until it returns `Some`; fails after [`WAIT`] naming `what`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn containers(socket: &Path) -> Vec<ObservedContainer> {
    let ctr = cairn_runtime::containerd::Containerd::connect(socket, "cairn")
        .await
        .expect("connect to the test containerd");
    list_containers(&ctr).await.expect("list containers")
}

fn running_pid(containers: &[ObservedContainer], id: &str) -> Option<u32> {
    containers
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| c.task.as_ref())
        .filter(|t| t.status == TaskStatus::Running)
        .map(|t| t.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_runs_in_containerd_reports_running_and_rm_leaves_nothing() {
    if !(Containerd::can_run() && require_tool("docker-registry") && images::busybox_present()) {
        return;
    }
    let containerd = Containerd::start();
    let registry = Registry::start();
    images::push(
        &registry.url(),
        "cairn/box",
        "1",
        &images::busybox_image(&[]),
        None,
    )
    .await;
    let mut central = TestCentral::start().await;
    let ctl = Ctl::new(&central);
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, &token, dir.path(), &containerd);
    let agent = RunningAgent::start(config.clone());
    let device = eventually("the agent to enroll and connect", || async {
        let list: DeviceList = central.get("/api/v1/devices");
        let device = &list.devices.first()?.device;
        device.online.then(|| device.id.clone())
    })
    .await;

    // Mistakes are shown with file, line and field, and nothing reaches central.
    let bad = dir.path().join("hello.yml");
    std::fs::write(
        &bad,
        "services:\n  web:\n    image: busybox\n    restart: sometimes\n",
    )
    .unwrap();
    let support::Outcome { ok, stderr, .. } = ctl.run(&[
        "app",
        "deploy",
        "-f",
        bad.to_str().unwrap(),
        "--device",
        &device,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("hello.yml:4: services.web.restart"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    let support::Outcome { ok, stderr, .. } = ctl.run(&[
        "app",
        "deploy",
        "-f",
        bad.to_str().unwrap(),
        "--site",
        "north",
    ]);
    assert!(
        !ok && stderr.contains("cairnctl deployment create") && stderr.contains("--device"),
        "{stderr}"
    );
    let listed: AppList = ctl.read(&["app", "list", "--device", &device]);
    assert!(listed.apps.is_empty());

    // Deploy (name from the file stem).
    let compose = dir.path().join("hello.yml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  web:\n    image: {}/cairn/box:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n    network_mode: host\n    restart: always\n",
            registry.host()
        ),
    )
    .unwrap();
    let out = ctl.ok(&[
        "app",
        "deploy",
        "-f",
        compose.to_str().unwrap(),
        "--device",
        &device,
    ]);
    assert!(out.contains("deployed app hello to device"), "{out}");

    // The container runs in containerd namespace `cairn`.
    let socket = containerd.socket();
    let pid = eventually("hello_web running in containerd", || async {
        running_pid(&containers(&socket).await, "hello_web")
    })
    .await;

    // Central shows it running, as reported in the agent's heartbeats.
    eventually("app list to show web running", || async {
        let listed: AppList = ctl.read(&["app", "list", "--device", &device]);
        let status = listed.apps.first()?.status.clone()?;
        (status.in_sync && status.services.first()?.state == ServiceState::Running).then_some(())
    })
    .await;
    let table = ctl.ok(&["app", "list", "--device", &device]);
    let row = table
        .lines()
        .find(|l| l.starts_with("hello"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("web") && row.contains("running"), "{table}");

    // The agent restarts while central is down: it runs from the stored desired state, the
    // container is kept (same task, no duplicate).
    agent.stop().await;
    central.stop().await;
    let agent = RunningAgent::start(config.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = containers(&socket).await;
    assert_eq!(now.len(), 1, "no duplicate container");
    assert_eq!(
        running_pid(&now, "hello_web"),
        Some(pid),
        "the same task keeps running"
    );
    central.start_again().await;

    // Removal leaves nothing in containerd.
    let out = ctl.ok(&["app", "rm", "hello", "--device", &device]);
    assert!(out.contains("removed app hello"), "{out}");
    eventually("containerd to hold no container", || async {
        containers(&socket).await.is_empty().then_some(())
    })
    .await;
    let listed: AppList = ctl.read(&["app", "list", "--device", &device]);
    assert!(listed.apps.is_empty());
    let support::Outcome { ok, stderr, .. } = ctl.run(&["app", "rm", "hello", "--device", &device]);
    assert!(!ok && stderr.contains("no app named"), "{stderr}");
    agent.stop().await;
}
