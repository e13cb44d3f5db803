//! Host tests of the agent against an in-process central stand-in over real TLS on loopback:
//! enrollment (approved, pending, refused), the Sync stream, desired state, renewal, revocation,
//! running offline, and the TPM key (swtpm) doing mTLS.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::state::{StateDir, CERT_FILE, DESIRED_FILE, SOFTWARE_KEY_FILE, STATUS_FILE};
use cairn_agent::{spawn_agents, wait_for_phase, Agent, EnrollOutcome, Phase};
use cairn_proto::v1::DesiredState;
use support::{agent_config, eventually, Central, Policy, RunningCentral};
use tokio::sync::watch;

const LOOPBACK_ANY: &str = "127.0.0.1:0";

fn desired(revision: u64) -> DesiredState {
    let mut d = DesiredState {
        revision,
        ..Default::default()
    };
    d.config.insert("site".into(), "lab".into());
    d
}

async fn wait_phase(agent: &Agent, phase: Phase) {
    let mut status = agent.status();
    tokio::time::timeout(Duration::from_secs(20), wait_for_phase(&mut status, phase))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "agent never reached {phase}; status {:?}",
                agent.status().borrow()
            )
        });
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_syncs_and_keeps_desired_state() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    central.central.set_desired(desired(3));
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, dir.path(), "SN-1");
    let agent = Arc::new(Agent::new(config.clone()).await.unwrap());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });

    wait_phase(&agent, Phase::Connected).await;
    let mut held = agent.desired_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        held.wait_for(|d| d.as_ref().is_some_and(|d| d.revision == 3)),
    )
    .await
    .unwrap()
    .unwrap();
    let c = central.central.clone();
    eventually(10, "a heartbeat reporting revision 3", || {
        c.heartbeats.lock().unwrap().iter().any(|(id, hb)| {
            id == "dev-0"
                && hb.desired_revision == 3
                && hb.facts.as_ref().is_some_and(|f| f.serial == "SN-1")
        })
    })
    .await;

    let state = StateDir::new(&config.state_dir);
    let status = state.load_status().unwrap().unwrap();
    assert_eq!(status.phase, Phase::Connected);
    assert_eq!(status.device_id.as_deref(), Some("dev-0"));
    assert_eq!(status.desired_revision, 3);
    assert!(status.cert_not_after.is_some());
    assert_eq!(state.load_desired().unwrap().unwrap(), desired(3));
    assert_eq!(mode(state.path()), 0o700);
    for f in [SOFTWARE_KEY_FILE, CERT_FILE, DESIRED_FILE, STATUS_FILE] {
        assert_eq!(mode(&state.file(f)), 0o600, "{f}");
    }
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert_eq!(agent.ping(&identity, 99).await.unwrap(), "dev-0");

    // A newer revision is pushed on the open stream.
    central.central.set_desired(desired(4));
    tokio::time::timeout(
        Duration::from_secs(10),
        held.wait_for(|d| d.as_ref().is_some_and(|d| d.revision == 4)),
    )
    .await
    .unwrap()
    .unwrap();

    // Central goes away: the agent goes offline and keeps its desired state.
    let addr = central.addr;
    let c = central.central.clone();
    central.stop().await;
    wait_phase(&agent, Phase::Offline).await;
    assert_eq!(agent.held_revision(), 4);
    assert!(agent.status().borrow().last_error.is_some());

    // Central comes back on the same port: the agent reconnects without enrolling again.
    let central = RunningCentral::start(c, addr).await;
    wait_phase(&agent, Phase::Connected).await;
    assert_eq!(central.central.enroll_calls.load(Ordering::SeqCst), 1);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A restarted agent starts from the stored state and does not enroll again.
    let again = Agent::new(config).await.unwrap();
    assert_eq!(again.held_revision(), 4);
    assert_eq!(
        again.key().public_key_spki_der(),
        agent.key().public_key_spki_der()
    );
    assert!(again.load_identity().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_enrollment_waits_then_connects_with_the_same_key() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    *central.central.policy.lock().unwrap() = Policy::PendingFirst(2);
    let dir = tempfile::tempdir().unwrap();
    let agent = Arc::new(
        Agent::new(agent_config(&central, dir.path(), "SN-P"))
            .await
            .unwrap(),
    );
    let (_stop, shutdown) = watch::channel(false);
    let mut status = agent.status();
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    tokio::time::timeout(
        Duration::from_secs(10),
        wait_for_phase(&mut status, Phase::Pending),
    )
    .await
    .unwrap();
    assert_eq!(agent.status().borrow().device_id.as_deref(), Some("dev-0"));
    wait_phase(&agent, Phase::Connected).await;
    assert_eq!(central.central.enroll_calls.load(Ordering::SeqCst), 3);
    let keys = central.central.enroll_keys.lock().unwrap().clone();
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "the agent changed its key between attempts"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollment_reports_centrals_reason_and_retries() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    *central.central.policy.lock().unwrap() = Policy::Refuse("serial SN-R is not claimed".into());
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, dir.path(), "SN-R");
    let agent = Arc::new(Agent::new(config.clone()).await.unwrap());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    wait_phase(&agent, Phase::Refused).await;
    let on_disk = StateDir::new(&config.state_dir)
        .load_status()
        .unwrap()
        .unwrap();
    assert_eq!(on_disk.phase, Phase::Refused);
    assert_eq!(
        on_disk.last_error.as_deref(),
        Some("serial SN-R is not claimed")
    );
    // The operator claims the device: the agent gets in on a later retry.
    *central.central.policy.lock().unwrap() = Policy::Auto;
    wait_phase(&agent, Phase::Connected).await;
    assert!(central.central.enroll_calls.load(Ordering::SeqCst) >= 2);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_by_enroll_once() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, dir.path(), "SN-T");
    config.enrollment_token = Some("wrong".into());
    let agent = Agent::new(config).await.unwrap();
    match agent.enroll_once().await {
        Err(cairn_agent::EnrollError::Refused { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied);
            assert_eq!(message, "enrollment token unknown");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_reported_and_keeps_its_key() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&central, dir.path(), "SN-V");
    let agent = Arc::new(Agent::new(config.clone()).await.unwrap());
    let (_stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    wait_phase(&agent, Phase::Connected).await;
    central.central.revoke("dev-0");
    wait_phase(&agent, Phase::Revoked).await;
    let status = agent.status().borrow().clone();
    assert!(status.last_error.unwrap().contains("revoked"));
    assert!(config.state_dir.join(SOFTWARE_KEY_FILE).exists());
    assert!(config.state_dir.join(CERT_FILE).exists());
    // Still revoked after the slow retry, and no re-enrollment attempt.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(agent.status().borrow().phase, Phase::Revoked);
    assert_eq!(central.central.enroll_calls.load(Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_renewed_before_connecting() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    // Issued 60 s ago, valid 30 s more: 1/3 of its life left, below the 0.5 threshold.
    *central.central.cert_window.lock().unwrap() =
        (Duration::from_secs(60), Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, dir.path(), "SN-N");
    config.renew_when_remaining_fraction = 0.5;
    let agent = Arc::new(Agent::new(config.clone()).await.unwrap());
    let EnrollOutcome::Approved(identity) = agent.enroll_once().await.unwrap() else {
        panic!("auto policy must approve");
    };
    agent.state().save_identity(&identity).unwrap();
    let (_, short) = agent.load_identity().await.unwrap().unwrap();
    assert!(short.renewal_due(time::OffsetDateTime::now_utc(), 0.5));
    *central.central.cert_window.lock().unwrap() =
        (Duration::from_secs(60), Duration::from_secs(86_400));
    let (_stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    wait_phase(&agent, Phase::Connected).await;
    assert_eq!(central.central.renew_calls.load(Ordering::SeqCst), 1);
    assert_eq!(central.central.enroll_calls.load(Ordering::SeqCst), 1);
    let (renewed_identity, cert) = agent.load_identity().await.unwrap().unwrap();
    assert_ne!(renewed_identity.cert_der, identity.cert_der);
    assert_eq!(renewed_identity.device_id, identity.device_id);
    assert!(!cert.renewal_due(time::OffsetDateTime::now_utc(), 0.5));
    assert_eq!(
        agent.status().borrow().cert_not_after,
        Some(cert.not_after_rfc3339())
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_renewed_while_connected_and_the_session_resumes() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    // Fresh certificates valid 4 s: renewal becomes due 2 s after issue (fraction 0.5).
    *central.central.cert_window.lock().unwrap() = (Duration::ZERO, Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, dir.path(), "SN-W");
    config.renew_when_remaining_fraction = 0.5;
    let agent = Arc::new(Agent::new(config).await.unwrap());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    wait_phase(&agent, Phase::Connected).await;
    let first = agent.load_identity().await.unwrap().unwrap().0;
    let c = central.central.clone();
    eventually(15, "a renewal while connected", || {
        c.renew_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let heartbeats_before = c.heartbeats.lock().unwrap().len();
    eventually(15, "heartbeats on a new session", || {
        c.heartbeats.lock().unwrap().len() > heartbeats_before + 2
    })
    .await;
    assert_eq!(agent.status().borrow().phase, Phase::Connected);
    let renewed = agent.load_identity().await.unwrap().unwrap().0;
    assert_ne!(renewed.cert_der, first.cert_der);
    assert_eq!(c.enroll_calls.load(Ordering::SeqCst), 1);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_in_one_process() {
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let configs = (0..8)
        .map(|i| {
            let sub = dir.path().join(format!("a{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            agent_config(&central, &sub, &format!("SN-F{i}"))
        })
        .collect();
    let (stop, shutdown) = watch::channel(false);
    let fleet = spawn_agents(configs, shutdown).await.unwrap();
    for mut running in fleet.iter().map(|r| r.status.clone()) {
        tokio::time::timeout(
            Duration::from_secs(20),
            wait_for_phase(&mut running, Phase::Connected),
        )
        .await
        .unwrap();
    }
    stop.send(true).unwrap();
    for running in fleet {
        tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert_eq!(central.central.enroll_calls.load(Ordering::SeqCst), 8);
}

#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_key_enrolls_and_does_mtls() {
    if !cairn_testsupport::require_tool("swtpm") {
        return;
    }
    let tpm = cairn_testsupport::Swtpm::start();
    let central = RunningCentral::start(Central::new(), LOOPBACK_ANY.parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, dir.path(), "SN-TPM");
    config.key_storage = cairn_agent::config::KeyStorageSetting::Tpm;
    config.tpm_tcti = Some(tpm.tcti());
    let agent = Arc::new(Agent::new(config.clone()).await.unwrap());
    assert_eq!(agent.key().storage(), "tpm");
    assert_eq!(agent.facts().key_storage, "tpm");
    assert_eq!(agent.facts().tpm_ek_sha256.len(), 64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    wait_phase(&agent, Phase::Connected).await;
    let identity = agent.load_identity().await.unwrap().unwrap().0;
    assert_eq!(agent.ping(&identity, 7).await.unwrap(), identity.device_id);
    assert!(config
        .state_dir
        .join(cairn_agent::state::TPM_KEY_FILE)
        .exists());
    assert!(!config.state_dir.join(SOFTWARE_KEY_FILE).exists());
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
