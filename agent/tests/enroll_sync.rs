//! Host tests of the agent against a real cairn-central on loopback (cairn_testsupport's
//! `TestCentral`): enrollment under each token policy (auto, manual, claim), the Sync stream and
//! desired state revisions, central going down and coming back, revocation, certificate renewal,
//! many agents in one process, and the TPM key (swtpm) doing mTLS. Every scenario checks the
//! agent's status and central's registry (REST).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cairn_agent::state::{StateDir, CERT_FILE, DESIRED_FILE, SOFTWARE_KEY_FILE, STATUS_FILE};
use cairn_agent::{spawn_agents, wait_for_phase, Agent, EnrollOutcome, Phase};
use cairn_api::{
    ClaimList, DeviceReply, DeviceStatus, EnrollmentTokenList, KeyStorage, RecoveryKey,
};
use cairn_proto::v1::DesiredState;
use cairn_testsupport::central::{config_in, TestCentral};
use serde_json::json;
use support::{
    agent_cert, agent_config, audit_actions, central_cert_serial, cert_serial, device, device_id,
    devices, eventually, wait_phase, RunningAgent, WAIT,
};
use tokio::sync::watch;

fn desired(revision: u64, config: &[(&str, &str)]) -> DesiredState {
    DesiredState {
        revision,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        apps: Vec::new(),
        os: None,
    }
}

/// `PUT /api/v1/devices/{id}/config`; returns the revision central assigned.
fn set_config(central: &TestCentral, id: &str, config: &[(&str, &str)]) -> u64 {
    let config: serde_json::Map<String, serde_json::Value> = config
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let changed: DeviceReply = central.admin_read(
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(json!({ "config": config })),
    );
    changed.device.desired_revision
}

async fn wait_revision(agent: &Agent, revision: u64) {
    let mut held = agent.desired_state();
    tokio::time::timeout(
        WAIT,
        held.wait_for(|d| d.as_ref().is_some_and(|d| d.revision == revision)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "agent never held revision {revision}; holds {}",
            agent.held_revision()
        )
    })
    .unwrap();
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_syncs_and_keeps_desired_state() {
    let mut central = TestCentral::start().await;
    let (token_id, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, &token, dir.path(), "SN-1");
    let running = RunningAgent::start(config.clone()).await;
    let agent = running.agent.clone();

    wait_phase(&agent, Phase::Connected).await;
    let id = device_id(&agent);
    assert!(id.starts_with("dev_"), "{id}");
    let shown = device(&central, &id);
    assert_eq!(shown.status, DeviceStatus::Active);
    assert_eq!(shown.serial, "SN-1");
    assert_eq!(shown.hostname, "host-SN-1");
    assert_eq!(shown.key_storage, KeyStorage::Software);
    assert_eq!(shown.tpm_ek_sha256, "");
    assert_eq!(shown.token_id, token_id);
    assert!(shown.online);
    let enrolled_serial = central_cert_serial(&central, &id);
    assert_eq!(cert_serial(&agent_cert(&agent)), enrolled_serial);
    // Heartbeats flow on the stream (every 100 ms) and central writes the last-seen time.
    let sessions = &central.c().shared.sessions;
    let at_connect = sessions.heartbeats_received();
    eventually(WAIT, "central to receive heartbeats", || {
        sessions.heartbeats_received() >= at_connect + 3
    })
    .await;
    eventually(WAIT, "central to record a heartbeat time", || {
        device(&central, &id).last_seen_at.is_some()
    })
    .await;

    // A new device starts at revision 1 with an empty config, sent when the stream opens.
    wait_revision(&agent, 1).await;
    let state = StateDir::new(&config.state_dir);
    assert_eq!(state.load_desired().unwrap().unwrap(), desired(1, &[]));

    // The operator sets the device's config: revision 2 arrives on the open stream.
    assert_eq!(set_config(&central, &id, &[("site", "lab")]), 2);
    wait_revision(&agent, 2).await;
    assert_eq!(
        state.load_desired().unwrap().unwrap(),
        desired(2, &[("site", "lab")])
    );
    let status = state.load_status().unwrap().unwrap();
    assert_eq!(status.phase, Phase::Connected);
    assert_eq!(status.device_id.as_deref(), Some(id.as_str()));
    assert_eq!(status.desired_revision, 2);
    assert!(status.cert_not_after.is_some());
    assert_eq!(mode(state.path()), 0o700);
    for f in [SOFTWARE_KEY_FILE, CERT_FILE, DESIRED_FILE, STATUS_FILE] {
        assert_eq!(mode(&state.file(f)), 0o600, "{f}");
    }
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert_eq!(agent.ping(&identity, 99).await.unwrap(), id);

    // A newer revision is pushed on the same stream.
    assert_eq!(
        set_config(&central, &id, &[("site", "lab"), ("ring", "beta")]),
        3
    );
    wait_revision(&agent, 3).await;
    assert_eq!(device(&central, &id).desired_revision, 3);

    // Central goes away: the agent goes offline and keeps its desired state.
    central.stop().await;
    wait_phase(&agent, Phase::Offline).await;
    assert_eq!(agent.held_revision(), 3);
    assert!(agent.status().borrow().last_error.is_some());

    // Central comes back on the same port: the agent reconnects with its certificate, without
    // enrolling again (no new certificate, no second enrollment in the audit log).
    central.start_again().await;
    wait_phase(&agent, Phase::Connected).await;
    eventually(WAIT, "central to see the device online again", || {
        device(&central, &id).online
    })
    .await;
    assert_eq!(central_cert_serial(&central, &id), enrolled_serial);
    assert_eq!(
        audit_actions(&central, &id),
        ["device.enroll", "device.config", "device.config"]
    );
    let tokens: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    assert_eq!(tokens.tokens[0].uses, 1);
    assert_eq!(devices(&central).len(), 1);

    running.stop().await;
    eventually(WAIT, "central to see the device go offline", || {
        !device(&central, &id).online
    })
    .await;

    // Config changed while the agent was down arrives when it connects again; the restarted
    // agent starts from the stored state with the same key and does not enroll again.
    assert_eq!(set_config(&central, &id, &[("site", "field")]), 4);
    let again = RunningAgent::start(config).await;
    assert_eq!(again.agent.held_revision(), 3);
    assert_eq!(
        again.agent.key().public_key_spki_der(),
        agent.key().public_key_spki_der()
    );
    wait_revision(&again.agent, 4).await;
    assert_eq!(
        *again.agent.desired_state().borrow().clone().unwrap(),
        desired(4, &[("site", "field")])
    );
    assert_eq!(again.agent.status().borrow().phase, Phase::Connected);
    assert_eq!(device_id(&again.agent), id);
    assert_eq!(central_cert_serial(&central, &id), enrolled_serial);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_enrollment_waits_for_approval_then_connects_with_the_same_key() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("manual", None, None);
    let dir = tempfile::tempdir().unwrap();
    let running = RunningAgent::start(agent_config(&central, &token, dir.path(), "SN-P")).await;
    let agent = running.agent.clone();

    wait_phase(&agent, Phase::Pending).await;
    let id = device_id(&agent);
    let shown = device(&central, &id);
    assert_eq!(shown.status, DeviceStatus::Pending);
    assert_eq!(shown.serial, "SN-P");
    assert!(shown.cert_serial.is_none());
    assert!(!shown.online);
    assert!(!agent.state().file(CERT_FILE).exists());

    // Central keys devices by public key: approving the pending record lets the agent in on its
    // next poll, under the same id, so it kept its key.
    let approved: DeviceReply =
        central.admin_read("POST", &format!("/api/v1/devices/{id}/approve"), None);
    assert_eq!(approved.device.status, DeviceStatus::Active);
    wait_phase(&agent, Phase::Connected).await;
    assert_eq!(device_id(&agent), id);
    let listed = devices(&central);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert!(listed[0].online);
    assert_eq!(
        cert_serial(&agent_cert(&agent)),
        central_cert_serial(&central, &id)
    );
    let tokens: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    assert_eq!(
        tokens.tokens[0].uses, 1,
        "polling must not use the token again"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollment_reports_centrals_reason_and_gets_in_once_claimed() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("claim", None, None);
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, &token, dir.path(), "SN-R");
    let running = RunningAgent::start(config.clone()).await;
    let agent = running.agent.clone();

    wait_phase(&agent, Phase::Refused).await;
    let on_disk = StateDir::new(&config.state_dir)
        .load_status()
        .unwrap()
        .unwrap();
    assert_eq!(on_disk.phase, Phase::Refused);
    let reason = on_disk.last_error.unwrap();
    assert!(
        reason.contains("\"SN-R\"") && reason.contains("not claimed"),
        "central's reason should reach status.json: {reason}"
    );
    assert!(
        devices(&central).is_empty(),
        "a refused device is not registered"
    );

    // The operator claims the serial: the agent gets in on a later retry.
    central.admin_call("POST", "/api/v1/claims", Some(json!({ "serial": "SN-R" })));
    wait_phase(&agent, Phase::Connected).await;
    let id = device_id(&agent);
    assert_eq!(agent.status().borrow().last_error, None);
    assert_eq!(device(&central, &id).status, DeviceStatus::Active);
    let claims: ClaimList = central.get("/api/v1/claims");
    assert_eq!(claims.claims[0].device_id.as_deref(), Some(id.as_str()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_by_enroll_once() {
    let central = TestCentral::start().await;
    central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(agent_config(&central, "wrong", dir.path(), "SN-T"))
        .await
        .unwrap();
    match agent.enroll_once().await {
        Err(cairn_agent::EnrollError::Refused { code, message }) => {
            assert_eq!(code, tonic::Code::Unauthenticated);
            assert!(message.contains("token not recognised"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(devices(&central).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_reported_and_keeps_its_key() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, &token, dir.path(), "SN-V");
    let running = RunningAgent::start(config.clone()).await;
    let agent = running.agent.clone();
    wait_phase(&agent, Phase::Connected).await;
    let id = device_id(&agent);
    let serial = central_cert_serial(&central, &id);

    // Revocation ends the open stream at once with PERMISSION_DENIED.
    let revoked: DeviceReply =
        central.admin_read("POST", &format!("/api/v1/devices/{id}/revoke"), None);
    assert_eq!(revoked.device.status, DeviceStatus::Revoked);
    assert!(!revoked.device.online);
    tokio::time::timeout(Duration::from_secs(5), wait_phase(&agent, Phase::Revoked))
        .await
        .expect("revocation reaches the connected agent within 5 s");
    let status = agent.status().borrow().clone();
    assert!(status.last_error.unwrap().contains("revoked"));
    assert!(config.state_dir.join(SOFTWARE_KEY_FILE).exists());
    assert!(config.state_dir.join(CERT_FILE).exists());
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert!(agent.ping(&identity, 1).await.unwrap_err().is_revoked());

    // Through at least two slow retries (backoff_max 400 ms) it stays revoked, is not served,
    // and gets no new certificate.
    let mut watch_status = agent.status();
    let left = tokio::time::timeout(
        Duration::from_millis(1000),
        watch_status.wait_for(|s| s.phase != Phase::Revoked),
    )
    .await;
    assert!(
        left.is_err(),
        "agent left revoked: {:?}",
        agent.status().borrow()
    );
    let shown = device(&central, &id);
    assert_eq!((shown.status.as_str(), shown.online), ("revoked", false));
    assert_eq!(central_cert_serial(&central, &id), serial);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_renewed_before_connecting() {
    // Central backdates certificates by a tenth of their lifetime, so a 20 s certificate has at
    // most 20 of 22 s (0.91) left at issue: renewal is due at once for an agent renewing at 0.95.
    let dir = tempfile::tempdir().unwrap();
    let mut central_config = config_in(dir.path());
    central_config.device_cert_lifetime_seconds = 20;
    let mut central = TestCentral::start_with(dir, central_config).await;
    let (_, token) = central.token("auto", None, None);
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, agent_dir.path(), "SN-N");
    config.renew_when_remaining_fraction = 0.95;
    let agent = Agent::new(config.clone()).await.unwrap();
    let EnrollOutcome::Approved(identity) = agent.enroll_once().await.unwrap() else {
        panic!("auto policy must approve");
    };
    agent.state().save_identity(&identity).unwrap();
    let (_, short) = agent.load_identity().await.unwrap().unwrap();
    assert!(short.renewal_due(time::OffsetDateTime::now_utc(), 0.95));
    let first_serial = central_cert_serial(&central, &identity.device_id);
    assert_eq!(cert_serial(&identity.cert_der), first_serial);

    // Central now issues the default 30-day certificates.
    central.config.device_cert_lifetime_seconds = 30 * 24 * 3600;
    central.restart().await;
    drop(agent);
    let running = RunningAgent::start(config).await;
    let agent = running.agent.clone();
    wait_phase(&agent, Phase::Connected).await;
    let (renewed, cert) = agent.load_identity().await.unwrap().unwrap();
    assert_ne!(renewed.cert_der, identity.cert_der);
    assert_eq!(renewed.device_id, identity.device_id);
    assert!(!cert.renewal_due(time::OffsetDateTime::now_utc(), 0.95));
    assert_eq!(
        agent.status().borrow().cert_not_after,
        Some(cert.not_after_rfc3339())
    );
    let renewed_serial = central_cert_serial(&central, &identity.device_id);
    assert_ne!(renewed_serial, first_serial);
    assert_eq!(cert_serial(&renewed.cert_der), renewed_serial);
    assert_eq!(devices(&central).len(), 1);
    assert_eq!(
        audit_actions(&central, &identity.device_id),
        ["device.enroll"]
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_renewed_while_connected_and_the_session_resumes() {
    // 20 s certificates, backdated 2 s by central: 22 s validity, 19-20 s left at issue
    // (fraction > 0.86). Renewing below 0.8 (17.6 s left) makes renewal due 1.4-2.4 s after
    // each issue, while a fresh certificate is never due on arrival.
    let dir = tempfile::tempdir().unwrap();
    let mut central_config = config_in(dir.path());
    central_config.device_cert_lifetime_seconds = 20;
    let central = TestCentral::start_with(dir, central_config).await;
    let (_, token) = central.token("auto", None, None);
    let agent_dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, agent_dir.path(), "SN-W");
    config.renew_when_remaining_fraction = 0.8;
    let running = RunningAgent::start(config).await;
    let agent = running.agent.clone();
    wait_phase(&agent, Phase::Connected).await;
    let id = device_id(&agent);
    let first = central_cert_serial(&central, &id);
    assert_eq!(cert_serial(&agent_cert(&agent)), first);

    // Well before the first certificate expires (20 s), so this is a Renew, not a re-enrollment.
    eventually(
        Duration::from_secs(10),
        "central to issue a renewed certificate",
        || central_cert_serial(&central, &id) != first,
    )
    .await;
    // The agent stored what central issued and is connected again on a new session that takes
    // desired state pushes.
    eventually(
        WAIT,
        "the agent to hold the certificate central recorded",
        || cert_serial(&agent_cert(&agent)) == central_cert_serial(&central, &id),
    )
    .await;
    wait_phase(&agent, Phase::Connected).await;
    eventually(WAIT, "central to see the device online", || {
        device(&central, &id).online
    })
    .await;
    let revision = set_config(&central, &id, &[("renewed", "yes")]);
    wait_revision(&agent, revision).await;
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert_eq!(agent.ping(&identity, 5).await.unwrap(), id);
    assert_eq!(agent.status().borrow().phase, Phase::Connected);
    assert_eq!(audit_actions(&central, &id)[0], "device.enroll");
    assert_eq!(devices(&central).len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_in_one_process() {
    const AGENTS: usize = 8;
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", Some(AGENTS as u32), None);
    let dir = tempfile::tempdir().unwrap();
    let configs = (0..AGENTS)
        .map(|i| {
            let sub = dir.path().join(format!("a{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            agent_config(&central, &token, &sub, &format!("SN-F{i}"))
        })
        .collect();
    let (stop, shutdown) = watch::channel(false);
    let fleet = spawn_agents(configs, shutdown).await.unwrap();
    for mut running in fleet.iter().map(|r| r.status.clone()) {
        tokio::time::timeout(WAIT, wait_for_phase(&mut running, Phase::Connected))
            .await
            .unwrap();
    }
    eventually(WAIT, "central to see every agent online", || {
        devices(&central).iter().filter(|d| d.online).count() == AGENTS
    })
    .await;
    let listed = devices(&central);
    let mut serials: Vec<&str> = listed.iter().map(|d| d.serial.as_str()).collect();
    serials.sort_unstable();
    let expected: Vec<String> = (0..AGENTS).map(|i| format!("SN-F{i}")).collect();
    assert_eq!(serials, expected);
    assert!(listed.iter().all(|d| d.status == DeviceStatus::Active));
    for running in &fleet {
        let id = device_id(&running.agent);
        assert!(listed.iter().any(|d| d.id == id), "{id} not in central");
    }
    let tokens: EnrollmentTokenList = central.get("/api/v1/enrollment-tokens");
    assert_eq!(tokens.tokens[0].uses as usize, AGENTS);

    stop.send(true).unwrap();
    for running in fleet {
        tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    eventually(WAIT, "central to see every agent offline", || {
        devices(&central).iter().all(|d| !d.online)
    })
    .await;
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_key_enrolls_and_does_mtls() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let vendor = cairn_testsupport::VendorCa::temporary();
    let tpm = cairn_testsupport::Swtpm::start_with_ek_cert(&vendor);
    let dir = tempfile::tempdir().unwrap();
    let mut central_config = config_in(dir.path());
    central_config.tpm_vendor_cas = vendor.anchor_pem_paths();
    let central = TestCentral::start_with(tempfile::tempdir().unwrap(), central_config).await;
    let (_, token) = central.tpm_token("auto", None);
    let mut config = agent_config(&central, &token, dir.path(), "SN-TPM");
    config.key_storage = cairn_agent::config::KeyStorageSetting::Tpm;
    config.tpm_tcti = Some(tpm.tcti());
    let running = RunningAgent::start(config.clone()).await;
    let agent = running.agent.clone();
    assert_eq!(agent.key().storage(), "tpm");
    assert_eq!(agent.facts().key_storage, "tpm");
    let ek = agent.facts().tpm_ek_sha256.clone();
    assert!(
        ek.len() == 64 && ek.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ek}"
    );

    wait_phase(&agent, Phase::Connected).await;
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert_eq!(agent.ping(&identity, 7).await.unwrap(), identity.device_id);
    let shown = device(&central, &identity.device_id);
    assert_eq!(shown.key_storage, KeyStorage::Tpm);
    assert_eq!(shown.tpm_ek_sha256, ek.to_ascii_lowercase());
    assert_eq!(shown.status, DeviceStatus::Active);
    assert!(shown.online);
    assert_eq!(
        cert_serial(&identity.cert_der),
        central_cert_serial(&central, &identity.device_id)
    );
    // The Sync stream runs over mTLS with the TPM key: a pushed revision arrives.
    assert_eq!(
        set_config(&central, &identity.device_id, &[("tpm", "yes")]),
        2
    );
    wait_revision(&agent, 2).await;
    assert!(config
        .state_dir
        .join(cairn_agent::state::TPM_KEY_FILE)
        .exists());
    assert!(!config.state_dir.join(SOFTWARE_KEY_FILE).exists());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parked_recovery_key_is_escrowed_then_removed_from_the_device() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, dir.path(), "SER-ESCROW");
    // The unlock step parks the key on the data file system; here a plain directory stands in
    // for the mounted volume (opening LUKS needs device-mapper: QEMU tier).
    config.disk.enabled = true;
    config.disk.mount_point = dir.path().join("data");
    let pending = config.disk.pending_recovery_key_path();
    std::fs::create_dir_all(pending.parent().unwrap()).unwrap();
    let key = "000000-000011-000099-720885-000044-000055-000066-000077";
    let uuid = "5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f";
    std::fs::write(
        &pending,
        serde_json::to_vec(&json!({ "recovery_key": key, "luks_uuid": uuid })).unwrap(),
    )
    .unwrap();
    let running = RunningAgent::start(config).await;
    wait_phase(&running.agent, Phase::Connected).await;
    let id = device_id(&running.agent);
    eventually(WAIT, "the parked key is removed", || !pending.exists()).await;
    let shown: RecoveryKey = central.get(&format!("/api/v1/devices/{id}/recovery-key"));
    assert_eq!(shown.recovery_key, key);
    assert_eq!(shown.luks_uuid, uuid);
    assert!(audit_actions(&central, &id).contains(&"recovery_key.escrow".to_string()));
    running.stop().await;
}
