//! The agent's OS-update path on the host, against a real central: a rollout reaches the agent
//! on its Sync stream, the agent downloads the signed bundle over mTLS (digest-checked), hands it
//! to the real `rauc`, and reports the outcome; central halts the rollout. This host has no
//! RAUC service or A/B slots, so `rauc install` fails here for real — the QEMU tier
//! (`tests/tests/os_update.rs`) covers installs that succeed.

mod support;

use std::time::Duration;

use cairn_api::{
    BundleUploaded, DeviceList, RolloutDeviceState, RolloutReply, RolloutState, UpdatePhase,
};
use cairn_image::bundle::{make_bundle, BundleSpec};
use cairn_testsupport::central::{config_in, read, TestCentral};
use cairn_testsupport::require_tool;
use serde_json::{json, Value};
use support::agent_config;
use tokio::sync::watch;

const COMPATIBLE: &str = "cairn-test-x86_64";

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_reaches_the_agent_which_downloads_verifies_and_reports_the_install_failure() {
    if !["rauc", "mksquashfs", "veritysetup", "openssl", "faketime"]
        .iter()
        .all(|t| require_tool(t))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = cairn_image::keys::generate(&dir.path().join("keys"), "test update key").unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(
        &root,
        (0..300_000u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let bundle = dir.path().join("update.raucb");
    let spec = BundleSpec {
        compatible: COMPATIBLE,
        version: "2.0",
        build: "1",
        root_image: &root,
        ukis: &[],
        epoch: 1_735_689_600,
    };
    make_bundle(&spec, &keys, &bundle, &dir.path().join("work")).unwrap();
    let bundle_size = std::fs::metadata(&bundle).unwrap().len();

    let central_dir = tempfile::tempdir().unwrap();
    let mut config = config_in(central_dir.path());
    config.update_keyring = Some(keys.cert.clone());
    config.update_compatible = Some(COMPATIBLE.into());
    let mut central = TestCentral::start_with(central_dir, config).await;
    let (status, body) = central.upload_bundle(&bundle);
    assert_eq!(status, 201, "{body}");
    let sha = read::<BundleUploaded>("POST", "/api/v1/bundles", body)
        .bundle
        .sha256;

    let (_, token) = central.token("auto", Some(1), None);
    let mut agent = agent_config(&central, &token, dir.path(), "upd-0001");
    let os_release = dir.path().join("os-release");
    std::fs::write(&os_release, "NAME=Cairn\nVERSION_ID=\"1.0\"\n").unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "cairn.slot=a rauc.slot=a quiet\n").unwrap();
    agent.update.enabled = true;
    agent.update.os_release = os_release;
    agent.update.cmdline = cmdline;
    agent.boot.esp = dir.path().join("esp");
    let state_dir = agent.state_dir.clone();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(cairn_agent::run(agent, shutdown));

    // Central learns the running version from the heartbeat before it can plan.
    let id = eventually("the device with its OS version", || {
        let list: DeviceList = central.get("/api/v1/devices");
        list.devices
            .into_iter()
            .find(|d| d.device.os_version == "1.0")
            .map(|d| d.device.id)
    })
    .await;
    let rollout: RolloutReply = central.admin_read(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": sha, "selector": { "devices": [id] }, "waves": { "canary": 1, "percent": [100] },
                     "failure_threshold_percent": 0 })),
    );
    let rollout_id = rollout.rollout.rollout.id;

    let halted = eventually("the rollout to halt", || {
        let r = central
            .get::<RolloutReply>(&format!("/api/v1/rollouts/{rollout_id}"))
            .rollout;
        (r.rollout.state == RolloutState::Halted).then_some(r)
    })
    .await;
    let device = &halted.devices.as_ref().unwrap()[0];
    assert_eq!(
        device.device.state,
        RolloutDeviceState::Failed,
        "{halted:?}"
    );
    let error = &device.device.error;
    assert!(
        error.contains("rauc install") && error.contains(&sha),
        "the failure does not name the install: {error}"
    );
    // The whole bundle came over the network (no seeds on this host) and passed its digest check
    // (only then is it handed to rauc).
    let progress = device
        .progress
        .as_ref()
        .expect("the device reported progress");
    assert_eq!(progress.phase, UpdatePhase::Failed, "{halted:?}");
    assert_eq!(progress.bytes_total, bundle_size, "{halted:?}");
    assert_eq!(progress.bytes_fetched, bundle_size, "{halted:?}");

    // The outcome is stored on the device (and not retried); the failed bundle is not kept.
    let record: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("update/state.json")).unwrap())
            .unwrap();
    assert_eq!(record["stage"]["stage"], "failed", "{record}");
    assert!(!state_dir.join(format!("update/{sha}.raucb")).exists());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    central.stop().await;
}
