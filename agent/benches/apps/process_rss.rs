//! RSS of the real `cairn-agent` process with apps enabled: idle, then with 20 containers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_runtime::container;
use cairn_runtime::containerd::Containerd as Ctr;
use cairn_testsupport::central::TestCentral;
use serde_json::{json, Value};

use crate::{compose, Bench, Mode, POLL, WAIT};

/// Agent heartbeat for the RSS run.
const HEARTBEAT_MS: u64 = 500;
/// Reconcile interval for the RSS run (the agent's default).
const RECONCILE_MS: u64 = 1000;

/// RSS of the agent process.
pub struct Rss {
    /// The binary run.
    pub binary: PathBuf,
    /// `release` or `debug (unoptimised)`.
    pub profile: &'static str,
    pub heartbeat_ms: u64,
    pub reconcile_ms: u64,
    /// Median VmRSS (KiB) over 2 s, enrolled with an empty desired state.
    pub idle_kib: u64,
    /// Median VmRSS (KiB) over 2 s with 20 containers running.
    pub busy_kib: u64,
    /// VmHWM (KiB) at the end: the peak of the whole run, including the deploy.
    pub peak_kib: u64,
}

/// A `cairn-agent run` process, killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fail_with_log(log: &Path, what: &str) -> ! {
    panic!(
        "agent process: {what}\nlog:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// A `Vm*` field of `/proc/<pid>/status` in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Median VmRSS over 2 s.
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(vm_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Run the real binary with apps enabled; VmRSS idle and with 20 containers.
pub async fn agent_process_rss(
    central: &TestCentral,
    token: &str,
    bench: &Bench,
    image: &str,
) -> Rss {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_cairn-agent"));
    let profile = if binary.components().any(|c| c.as_os_str() == "debug") {
        "debug (unoptimised)"
    } else {
        "release"
    };
    let dir = bench.scratch.join("process");
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("central-ca.pem");
    std::fs::write(&ca, &central.ca_pem).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "central_endpoint = \"https://127.0.0.1:{port}\"\nca_cert = {ca:?}\nenrollment_token = {token:?}\nstate_dir = {state_dir:?}\n\
             key_storage = \"software\"\nserial = \"BENCH-RSS\"\nheartbeat_interval_ms = {HEARTBEAT_MS}\n\n\
             [apps]\nenabled = true\ncontainerd_socket = {socket:?}\ndata_dir = {data:?}\nrunc_root = {runc:?}\nreconcile_interval_ms = {RECONCILE_MS}\n",
            port = central.c().grpc_addr.port(),
            socket = bench.socket,
            data = dir.join("apps"),
            runc = bench.runc_root,
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let child = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("CAIRN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("cairn-agent starts");
    let process = AgentProcess(child);
    let pid = process.0.id();
    let fail = |what: &str| fail_with_log(&log, what);

    // Enrolled and connected, with its (empty) first desired state reconciled.
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let status: Value = std::fs::read_to_string(state_dir.join("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        if status["phase"] == "connected" && status["desired_revision"].as_u64() >= Some(1) {
            break status["device_id"].as_str().unwrap().to_owned();
        }
        if Instant::now() > deadline {
            fail("never connected");
        }
        tokio::time::sleep(POLL).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = settled_rss_kib(pid).await;

    let app = "rss";
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{id}/apps/{app}"),
        Some(json!({ "compose_yaml": compose(image, 20, Mode::Host) })),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let list = central.admin_call("GET", &format!("/api/v1/devices/{id}/apps"), None);
        let services = list["apps"][0]["status"]["services"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if list["apps"][0]["status"]["in_sync"] == true
            && services.len() == 20
            && services.iter().all(|s| s["state"] == "running")
        {
            break;
        }
        if Instant::now() > deadline {
            fail(&format!("20 services not running: {list}"));
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_kib = settled_rss_kib(pid).await;
    let peak_kib = vm_kib(pid, "VmHWM:");

    central.admin_call("DELETE", &format!("/api/v1/devices/{id}/apps/{app}"), None);
    let ctr = Ctr::connect(&bench.socket, cairn_agent::apps::NAMESPACE)
        .await
        .expect("connect to containerd");
    let deadline = Instant::now() + WAIT;
    while !container::list_containers(&ctr)
        .await
        .expect("list containers")
        .is_empty()
    {
        if Instant::now() > deadline {
            fail("containers not removed");
        }
        tokio::time::sleep(POLL).await;
    }
    drop(process);
    Rss {
        binary,
        profile,
        heartbeat_ms: HEARTBEAT_MS,
        reconcile_ms: RECONCILE_MS,
        idle_kib,
        busy_kib,
        peak_kib,
    }
}

/// KiB in MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
