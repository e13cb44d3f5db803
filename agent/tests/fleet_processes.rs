//! The whole foundation as separate processes: a real central on loopback and real
//! `cairn-agent` processes (one with its key in a real swtpm), driven through central's REST API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::{Device, DeviceDetail, DeviceList, DeviceStatus, EnrollmentTokenList, KeyStorage};
use cairn_testsupport::central::TestCentral;
use serde_json::{json, Value};

/// A `cairn-agent run` process, killed on drop.
struct AgentProcess {
    child: Child,
    state_dir: PathBuf,
    log: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    fn start(central: &TestCentral, dir: &Path, name: &str, token: &str, extra: &str) -> Self {
        let state_dir = dir.join(name);
        // One CA file per agent: rewriting a shared one would truncate it under an agent that
        // is reading it at start (seen as "no CERTIFICATE block" in CI).
        let ca = dir.join(format!("{name}-central-ca.pem"));
        std::fs::write(&ca, &central.ca_pem).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "central_endpoint = \"https://127.0.0.1:{port}\"\nca_cert = {ca:?}\nenrollment_token = {token:?}\n\
                 state_dir = {state_dir:?}\nheartbeat_interval_ms = 300\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{extra}\n",
                port = central.c().grpc_addr.port(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("CAIRN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cairn-agent starts");
        Self {
            child,
            state_dir,
            log,
        }
    }

    fn status(&self) -> Value {
        std::fs::read_to_string(self.state_dir.join("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    /// Wait until status.json shows `phase`; on timeout, fail with the agent's log.
    async fn wait_phase(&self, phase: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if status["phase"] == phase {
                return status;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "agent {} never reached {phase}; status {status}\nlog:\n{log}",
                    self.state_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn device(central: &TestCentral, id: &str) -> Device {
    central
        .get::<DeviceDetail>(&format!("/api/v1/devices/{id}"))
        .device
        .device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_and_agent_processes_enroll_under_every_policy() {
    let tpm_available = cairn_testsupport::require_tool("swtpm");
    let mut central = TestCentral::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, auto) = central.token("auto", None, None);
    let (_, manual) = central.token("manual", None, None);
    let (_, claim) = central.token("claim", None, None);

    let software = AgentProcess::start(
        &central,
        dir.path(),
        "software",
        &auto,
        "key_storage = \"software\"\nserial = \"SN-SOFT\"",
    );
    let swtpm = tpm_available.then(cairn_testsupport::Swtpm::start);
    let tpm = swtpm.as_ref().map(|tpm| {
        AgentProcess::start(
            &central,
            dir.path(),
            "tpm",
            &auto,
            &format!(
                "key_storage = \"tpm\"\ntpm_tcti = {:?}\nserial = \"SN-TPM\"",
                tpm.tcti()
            ),
        )
    });
    let waiting = AgentProcess::start(
        &central,
        dir.path(),
        "manual",
        &manual,
        "key_storage = \"software\"\nserial = \"SN-WAIT\"",
    );
    let stranger = AgentProcess::start(
        &central,
        dir.path(),
        "stranger",
        &claim,
        "key_storage = \"software\"\nserial = \"SN-UNCLAIMED\"",
    );

    let soft_id = software.wait_phase("connected").await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(device(&central, &soft_id).key_storage, KeyStorage::Software);
    let mut tpm_id = None;
    if let Some(tpm) = &tpm {
        let id = tpm.wait_phase("connected").await["device_id"]
            .as_str()
            .unwrap()
            .to_owned();
        // A TPM without an EK certificate (plain swtpm): a token allowing software keys admits
        // it, as a TPM central could not prove, with no EK recorded.
        let shown = device(&central, &id);
        assert_eq!(shown.key_storage, KeyStorage::TpmUnverified);
        assert_eq!(shown.tpm_ek_sha256, "");
        assert_eq!(shown.serial, "SN-TPM");
        tpm_id = Some(id);
    }

    // Manual: pending until approved, then connected with no one touching the device.
    let pending_id = waiting.wait_phase("pending").await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(device(&central, &pending_id).status, DeviceStatus::Pending);
    central.admin_call(
        "POST",
        &format!("/api/v1/devices/{pending_id}/approve"),
        None,
    );
    waiting.wait_phase("connected").await;

    // Claim: an unknown serial is refused, and the agent says why.
    let refused = stranger.wait_phase("refused").await;
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("not claimed"),
        "{refused}"
    );
    central.admin_call(
        "POST",
        "/api/v1/claims",
        Some(json!({ "serial": "SN-UNCLAIMED" })),
    );
    stranger.wait_phase("connected").await;

    // Revocation: the open stream is cut and the agent knows it.
    central.admin_call("POST", &format!("/api/v1/devices/{soft_id}/revoke"), None);
    software.wait_phase("revoked").await;
    assert!(
        software.state_dir.join("device-key.p8").exists(),
        "a revoked agent keeps its key"
    );

    // Central restart: nothing lost, every live agent comes back by itself, no re-enrollment.
    let before: DeviceList = central.get("/api/v1/devices");
    central.restart().await;
    let after: DeviceList = central.get("/api/v1/devices");
    assert_eq!(before.devices.len(), after.devices.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected_online = 2 + usize::from(tpm_id.is_some());
    loop {
        let listed: DeviceList = central.get("/api/v1/devices");
        let online = listed.devices.iter().filter(|d| d.device.online).count();
        if online == expected_online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not reconnect after restart: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let revoked = device(&central, &soft_id);
    assert_eq!(revoked.status, DeviceStatus::Revoked);
    assert!(!revoked.online);
    let tokens: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    let uses: u64 = tokens.tokens.iter().map(|t| u64::from(t.uses)).sum();
    assert_eq!(
        uses,
        3 + u64::from(tpm_id.is_some()),
        "reconnects must not enroll again: {tokens:?}"
    );
}
