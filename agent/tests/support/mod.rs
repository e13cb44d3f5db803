//! Harness for the agent's host tests against a real cairn-central ([`TestCentral`]): agent
//! configs pointing at it, a running agent with a stop switch, polling with a deadline, and
//! readers of central's registry over its REST API.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::{wait_for_phase, Agent, AgentConfig, AgentError, Phase};
use cairn_api::{AuditLog, Device, DeviceDetail, DeviceList};
use cairn_central::CentralConfig;
use cairn_testsupport::central::{config_in, TestCentral};
use cairn_testsupport::{Swtpm, VendorCa};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any single wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// An agent config for `central` with fast timings, a software key and state in `dir/agent`.
pub fn agent_config(central: &TestCentral, token: &str, dir: &Path, serial: &str) -> AgentConfig {
    // Written aside and renamed: agents sharing `dir` may be reading it right now.
    let ca = dir.join("central-ca.pem");
    let tmp = dir.join(format!(".central-ca.pem.{serial}"));
    std::fs::write(&tmp, &central.ca_pem).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", central.c().grpc_addr.port());
    let mut config = AgentConfig::new(&endpoint, &ca, token, &dir.join("agent"));
    config.key_storage = cairn_agent::config::KeyStorageSetting::Software;
    config.serial = Some(serial.to_string());
    config.hostname = Some(format!("host-{serial}"));
    config.heartbeat_interval_ms = 100;
    config.backoff_initial_ms = 50;
    config.backoff_max_ms = 400;
    config
}

/// A central trusting a temporary TPM vendor, a swtpm with that vendor's EK certificate, a
/// TPM-only token and an agent config using the TPM: what the TPM tests start from. Keep
/// `dir` (and `vendor`) bound while the agent runs: dropping them deletes its files.
pub struct TpmFleet {
    /// The vendor CA (its files must outlive central's start).
    pub vendor: VendorCa,
    pub tpm: Swtpm,
    pub central: TestCentral,
    /// The enrollment token's secret.
    pub token: String,
    /// Holds the agent's state directory.
    pub dir: tempfile::TempDir,
    pub config: AgentConfig,
}

impl TpmFleet {
    /// Start it; `tweak` adjusts central's config before central starts.
    pub async fn start(serial: &str, tweak: impl FnOnce(&mut CentralConfig)) -> TpmFleet {
        let vendor = VendorCa::temporary();
        let tpm = Swtpm::start_with_ek_cert(&vendor);
        let central_dir = tempfile::tempdir().unwrap();
        let mut central_config = config_in(central_dir.path());
        central_config.tpm_vendor_cas = vendor.anchor_pem_paths();
        tweak(&mut central_config);
        let central = TestCentral::start_with(central_dir, central_config).await;
        let (_, token) = central.tpm_token("auto", None);
        let dir = tempfile::tempdir().unwrap();
        let mut config = agent_config(&central, &token, dir.path(), serial);
        config.key_storage = cairn_agent::config::KeyStorageSetting::Tpm;
        config.tpm_tcti = Some(tpm.tcti());
        TpmFleet {
            vendor,
            tpm,
            central,
            token,
            dir,
            config,
        }
    }
}

/// An agent running in a task until [`RunningAgent::stop`].
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    /// Prepares an agent from `config` and runs it.
    pub async fn start(config: AgentConfig) -> RunningAgent {
        let agent = Arc::new(Agent::new(config).await.expect("agent prepares"));
        Self::from_agent(agent)
    }

    /// Runs a prepared agent.
    pub fn from_agent(agent: Arc<Agent>) -> RunningAgent {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn({
            let agent = agent.clone();
            async move { agent.run(shutdown).await }
        });
        RunningAgent { agent, stop, task }
    }

    /// Asks the agent to stop and requires a clean exit within 10 s.
    pub async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10 s")
            .expect("agent task does not panic")
            .expect("agent run ends without error");
    }
}

/// Waits up to [`WAIT`] for `agent` to reach `phase`.
pub async fn wait_phase(agent: &Agent, phase: Phase) {
    let mut status = agent.status();
    tokio::time::timeout(WAIT, wait_for_phase(&mut status, phase))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "agent never reached {phase} within {WAIT:?}; status {:?}",
                agent.status().borrow()
            )
        });
}

/// The device id the agent reports (set once central assigned one).
pub fn device_id(agent: &Agent) -> String {
    agent
        .status()
        .borrow()
        .device_id
        .clone()
        .expect("agent has a device id")
}

/// Polls `cond` every 50 ms until it holds; fails after `limit` naming `what`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/v1/devices/{id}` as admin: the device record.
pub fn device(central: &TestCentral, id: &str) -> Device {
    central
        .get::<DeviceDetail>(&format!("/api/v1/devices/{id}"))
        .device
        .device
}

/// `GET /api/v1/devices` as admin: every device record.
pub fn devices(central: &TestCentral) -> Vec<Device> {
    central
        .get::<DeviceList>("/api/v1/devices")
        .devices
        .into_iter()
        .map(|d| d.device)
        .collect()
}

/// The audit actions recorded about `target`, oldest first.
pub fn audit_actions(central: &TestCentral, target: &str) -> Vec<String> {
    let audit: AuditLog = central.get("/api/v1/audit?limit=10000");
    let mut actions: Vec<String> = audit
        .events
        .into_iter()
        .filter(|e| e.target == target)
        .map(|e| e.action)
        .collect();
    actions.reverse();
    actions
}

/// The audit details recorded about `target`, oldest first.
pub fn audit_details(central: &TestCentral, target: &str) -> Vec<String> {
    let audit: AuditLog = central.get("/api/v1/audit?limit=10000");
    let mut details: Vec<String> = audit
        .events
        .into_iter()
        .filter(|e| e.target == target)
        .map(|e| e.detail)
        .collect();
    details.reverse();
    details
}

/// A certificate serial as a number in lower-case hex without leading zeros, so central's
/// `cert_serial` and the serial inside a certificate compare equal whatever their padding.
pub fn serial_number(hex: &str) -> String {
    let trimmed = hex.trim_start_matches('0').to_ascii_lowercase();
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed
    }
}

/// The serial of a DER certificate (see [`serial_number`]).
pub fn cert_serial(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("certificate parses");
    serial_number(&hex::encode(cert.raw_serial()))
}

/// Central's `cert_serial` of device `id` (see [`serial_number`]).
pub fn central_cert_serial(central: &TestCentral, id: &str) -> String {
    serial_number(
        device(central, id)
            .cert_serial
            .as_deref()
            .expect("central recorded a certificate"),
    )
}

/// The certificate the agent holds now, read from its state directory.
pub fn agent_cert(agent: &Agent) -> Vec<u8> {
    agent
        .state()
        .load_identity()
        .unwrap()
        .expect("agent holds a certificate")
        .cert_der
}
