//! Crypto-erase on revoke against a real swtpm and a real central: `POST .../wipe` revokes the
//! device; on its next contact the agent destroys its enrollment token, reports the wipe with
//! its identity still in hand, clears the TPM's owner hierarchy (its key blobs never load
//! again), forgets its identity and idles. (The data partition's keyslot and sealed keys are
//! erased in the QEMU tier, `data_protection`; cairn-disk's tests cover `crypto_erase` on a LUKS
//! file; central/tests/wipe.rs the hostile reports.)
#![cfg(feature = "tpm")]

mod support;

use std::time::Duration;

use cairn_agent::tpm_key::TpmKey;
use cairn_agent::Phase;
use cairn_api::DeviceStatus;
use support::{audit_actions, device, eventually, wait_phase, RunningAgent, TpmFleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_device_reports_then_loses_its_tpm_keys_and_identity() {
    if !cairn_testsupport::require_tool("swtpm_setup") {
        return;
    }
    let TpmFleet {
        tpm,
        central,
        mut config,
        token,
        dir,
        vendor: _vendor,
    } = TpmFleet::start("SN-WIPE", |_| {}).await;
    let token_file = dir.path().join("enrollment-token");
    std::fs::write(&token_file, &token).unwrap();
    config.enrollment_token = None;
    config.enrollment_token_file = Some(token_file.clone());
    let running = RunningAgent::start(config.clone()).await;
    wait_phase(&running.agent, Phase::Connected).await;
    let id = support::device_id(&running.agent);

    // A viewer or operator may not order a wipe.
    let viewer = central.api_token("watcher", "viewer");
    let operator = central.api_token("ops", "operator");
    for token in [&viewer, &operator] {
        let (status, _) = central.call(token, "POST", &format!("/api/v1/devices/{id}/wipe"), None);
        assert_eq!(status, 403);
    }
    // A thief's copy of the key blob, taken before the wipe.
    let copies = tempfile::tempdir().unwrap();
    let copy = copies.path().join("device-key.tpm");
    std::fs::copy(config.state_dir.join("device-key.tpm"), &copy).unwrap();
    let (status, body) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/devices/{id}/wipe"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"]["status"], "revoked", "{body}");

    // The agent is cut off, reconnects, hears the order and wipes.
    wait_phase(&running.agent, Phase::Wiped).await;
    eventually(Duration::from_secs(20), "central records the wipe", || {
        device(&central, &id).wiped_at.is_some()
    })
    .await;
    let shown = device(&central, &id);
    assert_eq!(shown.status, DeviceStatus::Revoked);
    assert!(shown.wipe_requested_at.is_some());
    let actions = audit_actions(&central, &id);
    for action in ["device.revoke", "device.wipe_order", "device.wipe_done"] {
        assert!(
            actions.iter().any(|a| a == action),
            "no {action} in {actions:?}"
        );
    }
    let state = &config.state_dir;
    for name in [
        "device-id",
        "device-cert.der",
        "device-key.tpm",
        cairn_agent::tpm_key::AK_FILE,
    ] {
        assert!(!state.join(name).exists(), "{name} survived the wipe");
    }
    assert!(
        !token_file.exists(),
        "the enrollment token survived the wipe"
    );
    let status = running.agent.status().borrow().clone();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("enrollment token") && e.contains("TPM owner hierarchy")),
        "{status:?}"
    );
    running.stop().await;

    // The TPM's owner hierarchy was cleared: the copy of the agent's key blob no longer loads
    // into this TPM (and is not replaced by a new key).
    let before = std::fs::read(&copy).unwrap();
    let reloaded = TpmKey::open_or_create(&tpm.tcti(), &copy);
    assert!(
        reloaded.is_err(),
        "the agent's key blob loaded after the wipe"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}
