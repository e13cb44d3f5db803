//! The agent path: the agent library in this process with its real apps sink, deploys through
//! central's REST API, and when each desired state reached the sink and was all running.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_agent::apps::{AppsConfig, AppsSink};
use cairn_agent::{wait_for_phase, Agent, AgentConfig, DesiredStateSink, Phase};
use cairn_proto::v1::{AppStatus, DesiredState, ServiceState};
use cairn_runtime::container;
use cairn_runtime::containerd::Containerd as Ctr;
use cairn_testsupport::central::TestCentral;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{Bench, HEARTBEAT_MS, PIN, POLL, RECONCILE_MS, WAIT};

/// When the sink got each revision, and when each (app, revision) was first all running.
#[derive(Default)]
struct Timeline {
    applied: HashMap<u64, Instant>,
    running: HashMap<(String, u64), Instant>,
    /// The newest revision a finished reconcile pass reported on (through any app's status).
    passed: u64,
}

/// The agent's apps sink, noting when each desired state reaches it.
struct TimedSink {
    inner: Arc<AppsSink>,
    timeline: Arc<Mutex<Timeline>>,
}

impl DesiredStateSink for TimedSink {
    fn apply(&self, desired: &DesiredState) {
        self.timeline
            .lock()
            .unwrap()
            .applied
            .insert(desired.revision, Instant::now());
        self.inner.apply(desired);
    }

    fn observed_apps(&self) -> Vec<AppStatus> {
        self.inner.observed_apps()
    }
}

fn all_running(status: &AppStatus, n: usize) -> bool {
    status.error.is_empty()
        && status.services.len() == n
        && status
            .services
            .iter()
            .all(|s| s.state() == ServiceState::Running)
}

/// Timings of one deploy.
#[derive(Clone, Copy)]
pub struct Deployed {
    /// PUT sent until central's GET reports every service running.
    pub end_to_end: Duration,
    /// The sink got the desired state until a reconcile pass reported every service running.
    pub agent: Duration,
    /// PUT sent until the sink got the desired state.
    pub delivery: Duration,
}

/// The agent library in this process, apps on the test containerd.
pub struct InProcessAgent {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), cairn_agent::AgentError>>,
    id: String,
    timeline: Arc<Mutex<Timeline>>,
    ctr: Ctr,
}

impl InProcessAgent {
    pub async fn start(central: &TestCentral, token: &str, bench: &Bench) -> InProcessAgent {
        let mut config = agent_config(central, token, &bench.scratch.join("agent"), "BENCH-APPS");
        config.heartbeat_interval_ms = HEARTBEAT_MS;
        config.apps = AppsConfig {
            enabled: true,
            containerd_socket: bench.socket.clone(),
            data_dir: Some(bench.agent_apps_dir.clone()),
            runc_root: Some(bench.runc_root.clone()),
            reconcile_interval_ms: RECONCILE_MS,
            plain_http_registries: Vec::new(),
            // Never on a build host: the table would drop the host's own inbound traffic.
            firewall: false,
            log_writer: Some(env!("CARGO_BIN_EXE_cairn-agent").into()),
        };
        let agent = Agent::new(config.clone()).await.expect("agent prepares");
        let sink = AppsSink::start(&config.apps, &config.state_dir, agent.secrets());
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let mut observed = sink.observed();
        let watcher_timeline = timeline.clone();
        tokio::spawn(async move {
            while observed.changed().await.is_ok() {
                let now = Instant::now();
                let statuses = observed.borrow_and_update().clone();
                let mut t = watcher_timeline.lock().unwrap();
                let newest = statuses.iter().map(|s| s.desired_revision).max();
                t.passed = t.passed.max(newest.unwrap_or(0));
                for s in statuses
                    .iter()
                    .filter(|s| !s.services.is_empty() && all_running(s, s.services.len()))
                {
                    t.running
                        .entry((s.name.clone(), s.desired_revision))
                        .or_insert(now);
                }
            }
        });
        let agent = Arc::new(agent.with_sink(Arc::new(TimedSink {
            inner: sink,
            timeline: timeline.clone(),
        })));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn({
            let agent = agent.clone();
            async move { agent.run(shutdown).await }
        });
        let mut status = agent.status();
        tokio::time::timeout(WAIT, wait_for_phase(&mut status, Phase::Connected))
            .await
            .expect("agent connects");
        let id = status.borrow().device_id.clone().expect("device id");
        let ctr = Ctr::connect(&bench.socket, cairn_agent::apps::NAMESPACE)
            .await
            .expect("connect to containerd");
        InProcessAgent {
            stop,
            task,
            id,
            timeline,
            ctr,
        }
    }

    /// PUT app `name` and wait until central reports its `n` services running.
    pub async fn deploy(
        &self,
        central: &TestCentral,
        name: &str,
        yaml: &str,
        n: usize,
    ) -> Result<Deployed, String> {
        let started = Instant::now();
        let body = central.admin_call(
            "PUT",
            &format!("/api/v1/devices/{}/apps/{name}", self.id),
            Some(json!({ "compose_yaml": yaml })),
        );
        let revision = body["desired_revision"].as_u64().expect("desired_revision");
        let deadline = Instant::now() + WAIT;
        let end_to_end = loop {
            let list =
                central.admin_call("GET", &format!("/api/v1/devices/{}/apps", self.id), None);
            let app = list["apps"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["name"] == name))
                .cloned()
                .unwrap_or(Value::Null);
            let status = &app["status"];
            let services = status["services"].as_array().cloned().unwrap_or_default();
            if status["desired_revision"].as_u64() >= Some(revision) && status["in_sync"] == true {
                if services.len() == n && services.iter().all(|s| s["state"] == "running") {
                    break started.elapsed();
                }
                if let Some(bad) = services.iter().find(|s| s["state"] == "failed") {
                    return Err(format!("service failed: {bad}"));
                }
                if status["error"].as_str().is_some_and(|e| !e.is_empty()) {
                    return Err(format!("app error: {}", status["error"]));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not all running within {WAIT:?}: {app}"));
            }
            tokio::time::sleep(POLL).await;
        };
        // The watcher task notes the pass's result; give it a moment if it was not scheduled yet.
        let key = (name.to_string(), revision);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            {
                let t = self.timeline.lock().unwrap();
                if let (Some(applied), Some(running)) =
                    (t.applied.get(&revision), t.running.get(&key))
                {
                    return Ok(Deployed {
                        end_to_end,
                        agent: *running - *applied,
                        delivery: *applied - started,
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "central reports revision {revision} running but the sink never did"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// DELETE app `name` and wait until its containers are gone and, while another app is
    /// deployed to report through, until the pass that removed them has finished (it tears the
    /// app's network down after the containers; the next measurement must not overlap it).
    pub async fn remove(&self, central: &TestCentral, name: &str) {
        let body = central.admin_call(
            "DELETE",
            &format!("/api/v1/devices/{}/apps/{name}", self.id),
            None,
        );
        let revision = body["desired_revision"].as_u64().expect("desired_revision");
        let others = name != PIN;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = container::list_containers(&self.ctr)
                .await
                .expect("list containers");
            let gone = !left.iter().any(|c| c.label(container::LABEL_APP) == name);
            if gone && (!others || self.timeline.lock().unwrap().passed >= revision) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containers of {name} not removed within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10 s")
            .expect("agent task does not panic")
            .expect("agent ends cleanly");
    }
}

pub fn agent_config(central: &TestCentral, token: &str, dir: &Path, serial: &str) -> AgentConfig {
    std::fs::create_dir_all(dir).unwrap();
    let ca = dir.join("central-ca.pem");
    std::fs::write(&ca, &central.ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", central.c().grpc_addr.port());
    let mut config = AgentConfig::new(&endpoint, &ca, token, &dir.join("state"));
    config.key_storage = cairn_agent::config::KeyStorageSetting::Software;
    config.serial = Some(serial.into());
    config.backoff_initial_ms = 50;
    config.backoff_max_ms = 400;
    config
}
