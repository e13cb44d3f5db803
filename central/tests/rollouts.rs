//! OS update rollouts against a real central (real SQLite, real mTLS gRPC, real signed bundles
//! verified by `rauc info`): raw protocol clients play the agents, reporting `Heartbeat.os` as
//! an agent would. Covers planning (dry run, canary, percentages, per-site waves, skipped
//! devices), wave release on success, auto-halt, pause/resume, abort, rollback, the
//! one-rollout-per-device rule, downgrade rules, a central restart mid-rollout, and the
//! ReadBundle / BundleIndex RPCs.

use std::path::PathBuf;
use std::time::Duration;

use cairn_api::{
    AuditLog, BundleUploaded, DeviceDetail, EventList, RolloutDryRun, RolloutList, RolloutReply,
    RolloutView,
};
use cairn_proto::v1::{
    central_message, AgentMessage, BundleIndexRequest, CentralMessage, DesiredState, Heartbeat,
    OsStatus, OsUpdatePhase, ReadBundleRequest,
};
use cairn_testsupport::central::{
    error_message, heartbeat_acked, read, ConnectedDevice, SimDevice, TestCentral,
};
use serde_json::json;
use sha2::Digest;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

// Each test binary uses part of the shared fixture.
#[allow(dead_code)]
#[path = "fixtures/signed_bundles.rs"]
mod signed_bundles;
use signed_bundles::{bundles, central_for};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn upload(central: &TestCentral, bytes: &[u8]) -> String {
    tokio::task::block_in_place(|| {
        let response = central
            .rest()
            .post(&central.rest_url("/api/v1/bundles"))
            .set("Authorization", &format!("Bearer {}", central.admin))
            .send_bytes(bytes)
            .expect("bundle upload succeeds");
        let uploaded: BundleUploaded = response.into_json().unwrap();
        uploaded.bundle.sha256
    })
}

/// A device speaking the agent protocol, with an open Sync stream.
struct Device {
    id: String,
    tx: Option<mpsc::Sender<AgentMessage>>,
    stream: Option<Streaming<CentralMessage>>,
    sim: SimDevice,
    cert: Vec<u8>,
    seq: u64,
    version: String,
}

impl Device {
    /// Enroll, connect, set `site` (if any) and report running `version`.
    async fn connect(
        central: &TestCentral,
        serial: &str,
        site: Option<&str>,
        version: &str,
    ) -> Device {
        let ConnectedDevice {
            sim,
            id,
            cert,
            tx,
            stream,
        } = central.connect_device(serial).await;
        let mut device = Device {
            id,
            tx: Some(tx),
            stream: Some(stream),
            sim,
            cert,
            seq: 0,
            version: version.into(),
        };
        device.desired().await;
        if let Some(site) = site {
            central.admin_call(
                "PUT",
                &format!("/api/v1/devices/{}/config", device.id),
                Some(json!({ "config": { "site": site } })),
            );
            device.desired().await;
        }
        device
            .report(OsStatus {
                version: version.into(),
                phase: OsUpdatePhase::Idle as i32,
                ..Default::default()
            })
            .await;
        device
    }

    async fn reconnect(&mut self, central: &TestCentral) -> DesiredState {
        let (tx, stream) = central.open_sync(&self.sim, &self.cert).await;
        (self.tx, self.stream) = (Some(tx), Some(stream));
        self.desired().await
    }

    /// Drop the Sync stream, as an agent does when central goes away (central's graceful stop
    /// waits for streams the client keeps open).
    fn hang_up(&mut self) {
        (self.tx, self.stream) = (None, None);
    }

    /// The next desired state pushed (acks skipped), within 5 s.
    async fn desired(&mut self) -> DesiredState {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(central_message::Kind::Desired(d)) = self
                    .stream
                    .as_mut()
                    .unwrap()
                    .message()
                    .await
                    .unwrap()
                    .unwrap()
                    .kind
                {
                    break d;
                }
            }
        })
        .await
        .expect("a desired state is pushed within 5 s")
    }

    /// Send a heartbeat carrying `os` and wait for its ack (central has taken it in). A desired
    /// state pushed meanwhile is returned.
    async fn report(&mut self, os: OsStatus) -> Option<DesiredState> {
        self.seq += 1;
        let seq = self.seq;
        let hb = Heartbeat {
            seq,
            os: Some(os),
            ..Default::default()
        };
        heartbeat_acked(self.tx.as_ref().unwrap(), self.stream.as_mut().unwrap(), hb).await
    }

    /// Report a phase of the update `desired` asked for.
    async fn phase(
        &mut self,
        desired: &DesiredState,
        phase: OsUpdatePhase,
        error: &str,
    ) -> Option<DesiredState> {
        let os = desired.os.as_ref().expect("an OS update is desired");
        if phase == OsUpdatePhase::Succeeded {
            self.version = os.version.clone();
        }
        self.report(OsStatus {
            version: self.version.clone(),
            booted_slot: "a".into(),
            phase: phase as i32,
            target_version: os.version.clone(),
            bundle_sha256: os.bundle_sha256.clone(),
            rollout_id: os.rollout_id.clone(),
            bytes_done: os.bundle_size / 2,
            bytes_total: os.bundle_size,
            bytes_fetched: os.bundle_size / 4,
            error: error.into(),
        })
        .await
    }
}

fn rollout(central: &TestCentral, id: &str) -> RolloutView {
    central
        .get::<RolloutReply>(&format!("/api/v1/rollouts/{id}"))
        .rollout
}

/// One device of a shown rollout.
fn device_of<'a>(rollout: &'a RolloutView, device: &str) -> &'a cairn_api::RolloutDeviceView {
    rollout
        .devices
        .iter()
        .flatten()
        .find(|d| d.device.device_id == device)
        .unwrap_or_else(|| panic!("{device} is not in rollout {}", rollout.rollout.id))
}

fn device_state(rollout: &RolloutView, device: &str) -> String {
    device_of(rollout, device).device.state.to_string()
}

/// Poll GET until `check` holds (the periodic evaluation runs every 2 s).
async fn until(
    central: &TestCentral,
    id: &str,
    what: &str,
    check: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    for _ in 0..60 {
        let r = rollout(central, id);
        if check(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {:?}", rollout(central, id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_canary_waves_restart_and_completion() {
    let Some(fixture) = bundles() else { return };
    let mut central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(Device::connect(&central, &format!("SER-W{i}"), None, "1.0").await);
    }
    let mut current = Device::connect(&central, "SER-W-NEW", None, "2.0").await;
    let operator = central.api_token("ops", "operator");
    let request = json!({ "bundle_sha256": v2, "selector": { "all": true }, "waves": { "canary": 1, "percent": [50, 100] } });

    // Dry run: the plan, nothing stored.
    let mut dry = request.clone();
    dry["dry_run"] = json!(true);
    let (status, body) = central.call(&operator, "POST", "/api/v1/rollouts", Some(dry));
    assert_eq!(status, 200, "{body}");
    let plan = read::<RolloutDryRun>("POST", "/api/v1/rollouts", body).plan;
    let waves = &plan.waves;
    let sizes: Vec<usize> = waves.iter().map(|w| w.devices.len()).collect();
    assert_eq!(sizes, [1, 1, 2], "{plan:?}");
    assert_eq!(waves[0].kind, cairn_api::WaveKind::Canary);
    assert_eq!(
        (
            waves[1].devices[0].from_version.as_str(),
            waves[1].devices[0].to_version.as_str()
        ),
        ("1.0", "2.0")
    );
    assert_eq!(plan.skipped[0].device_id, current.id);
    assert!(central
        .get::<RolloutList>("/api/v1/rollouts")
        .rollouts
        .is_empty());

    // Create: the canary gets the update at once.
    let (status, body) = central.call(&operator, "POST", "/api/v1/rollouts", Some(request.clone()));
    assert_eq!(status, 201, "{body}");
    let created = read::<RolloutReply>("POST", "/api/v1/rollouts", body).rollout;
    let id = created.rollout.id.clone();
    assert_eq!(created.rollout.state, cairn_api::RolloutState::Running);
    assert_eq!(created.rollout.released_waves, 1);
    let wave_of = |r: &RolloutView, d: &Device| device_of(r, &d.id).device.wave;
    let r = rollout(&central, &id);
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by_key(|&i| wave_of(&r, &devices[i]));
    let canary = order[0];
    let desired = devices[canary].desired().await;
    let os = desired
        .os
        .clone()
        .expect("the canary's desired state carries the OS update");
    assert_eq!(
        (
            os.version.as_str(),
            os.bundle_sha256.as_str(),
            os.rollout_id.as_str()
        ),
        ("2.0", v2.as_str(), id.as_str())
    );
    assert_eq!(os.bundle_size, fixture.v2.len() as u64);
    assert!(!os.allow_downgrade);
    assert_eq!(os.health_deadline_seconds, 600);
    assert_eq!(device_state(&r, &devices[order[1]].id), "pending");

    // A second rollout for the same devices is refused, naming this one; the bundle stays.
    let (status, body) = central.call(&operator, "POST", "/api/v1/rollouts", Some(request.clone()));
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains(&id), "{body}");
    let (status, body) = central.call(
        &central.admin,
        "DELETE",
        &format!("/api/v1/bundles/{v2}"),
        None,
    );
    assert_eq!(status, 409, "{body}");

    // Progress shows while downloading; success releases the next wave.
    devices[canary]
        .phase(&desired, OsUpdatePhase::Downloading, "")
        .await;
    let r = rollout(&central, &id);
    assert_eq!(device_state(&r, &devices[canary].id), "downloading");
    let me = device_of(&r, &devices[canary].id);
    assert_eq!(
        me.progress.as_ref().map(|p| p.bytes_total),
        Some(fixture.v2.len() as u64),
        "{me:?}"
    );
    // SUCCEEDED while still reporting the old version does not count.
    devices[canary]
        .report(OsStatus {
            version: "1.0".into(),
            phase: OsUpdatePhase::Succeeded as i32,
            bundle_sha256: v2.clone(),
            rollout_id: id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        device_state(&rollout(&central, &id), &devices[canary].id),
        "downloading"
    );
    devices[canary]
        .phase(&desired, OsUpdatePhase::Succeeded, "")
        .await;
    let second = devices[order[1]].desired().await;
    assert_eq!(second.os.as_ref().unwrap().rollout_id, id);
    let r = rollout(&central, &id);
    assert_eq!(
        (
            r.rollout.released_waves,
            device_state(&r, &devices[canary].id).as_str()
        ),
        (2, "succeeded")
    );
    let listed: DeviceDetail = central.get(&format!("/api/v1/devices/{}", devices[canary].id));
    assert_eq!(listed.device.device.os_version, "2.0");

    // Central restarts mid-rollout: state survives, the device gets its update on reconnect.
    for d in devices.iter_mut().chain(std::iter::once(&mut current)) {
        d.hang_up();
    }
    central.restart().await;
    let r = rollout(&central, &id);
    assert_eq!(
        (r.rollout.state.as_str(), r.rollout.released_waves),
        ("running", 2)
    );
    let again = devices[order[1]].reconnect(&central).await;
    assert_eq!(again.os.as_ref().unwrap().bundle_sha256, v2);
    devices[order[1]]
        .phase(&again, OsUpdatePhase::Installing, "")
        .await;
    devices[order[1]]
        .phase(&again, OsUpdatePhase::Succeeded, "")
        .await;

    // Last wave, then completed.
    for &i in &order[2..] {
        let d = devices[i].reconnect(&central).await;
        devices[i].phase(&d, OsUpdatePhase::Succeeded, "").await;
    }
    let r = until(&central, &id, "rollout completes", |r| {
        r.rollout.state == cairn_api::RolloutState::Completed
    })
    .await;
    assert_eq!(r.counts["succeeded"], 4);
    let audit: AuditLog = central.get("/api/v1/audit?limit=200");
    let actions: Vec<&str> = audit
        .events
        .iter()
        .filter(|e| e.target == id)
        .map(|e| e.action.as_str())
        .collect();
    assert!(
        actions.contains(&"rollout.create") && actions.contains(&"rollout.complete"),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "rollout.wave").count(),
        3,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_site_waves_and_match_selector() {
    let Some(fixture) = bundles() else { return };
    let central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let mut ids = Vec::new();
    for (serial, site) in [
        ("S-N1", Some("north")),
        ("S-N2", Some("north")),
        ("S-S1", Some("south")),
        ("S-S2", Some("south")),
        ("S-X", None),
    ] {
        ids.push(Device::connect(&central, serial, site, "1.0").await.id);
    }
    let request = json!({ "bundle_sha256": v2, "selector": { "all": true }, "waves": { "canary": 2, "per_site": true }, "dry_run": true });
    let plan = central
        .admin_read::<RolloutDryRun>("POST", "/api/v1/rollouts", Some(request))
        .plan;
    let labels: Vec<&str> = plan.waves.iter().map(|w| w.label.as_str()).collect();
    assert_eq!(
        labels,
        ["canary", "site north", "site south", "no site"],
        "{plan:?}"
    );
    let canary: Vec<&str> = plan.waves[0]
        .devices
        .iter()
        .map(|d| d.site.as_deref().unwrap())
        .collect();
    assert_eq!(canary, ["north", "south"], "the canary spreads over sites");

    let request = json!({ "bundle_sha256": v2, "selector": { "match": { "site": "north" } }, "dry_run": true });
    let plan = central
        .admin_read::<RolloutDryRun>("POST", "/api/v1/rollouts", Some(request))
        .plan;
    assert_eq!(plan.device_count, 2, "{plan:?}");
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "match": { "site": "mars" } } })),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": "0".repeat(64), "selector": { "all": true } })),
    );
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("upload"), "{body}");
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "devices": ["dev_nope"] } })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("dev_nope"), "{body}");
    let viewer = central.api_token("eyes", "viewer");
    let (status, _) = central.call(
        &viewer,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "all": true } })),
    );
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_failure_halts_and_abort_calls_off() {
    let Some(fixture) = bundles() else { return };
    let central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(Device::connect(&central, &format!("SER-H{i}"), None, "1.0").await);
    }
    let created: RolloutReply = central.admin_read(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "all": true } })),
    );
    let id = created.rollout.rollout.id.clone();
    let canary_id = first_wave_device(&created);
    let canary = devices.iter_mut().find(|d| d.id == canary_id).unwrap();
    let desired = canary.desired().await;
    canary
        .phase(
            &desired,
            OsUpdatePhase::Failed,
            "health gate: containerd did not start",
        )
        .await;
    let r = rollout(&central, &id);
    assert_eq!(r.rollout.state.as_str(), "halted", "{r:?}");
    let reason = r.rollout.halt_reason.as_deref().unwrap();
    assert!(
        reason.contains("containerd did not start") && reason.contains("10%"),
        "{reason}"
    );
    assert_eq!(r.rollout.released_waves, 1, "no further wave");
    assert_eq!(device_state(&r, &canary_id), "failed");
    // The event log has the halt (fleet-wide) and the canary's phase change.
    let halted = central
        .get::<EventList>("/api/v1/events?kind=rollout.halted")
        .events;
    assert_eq!(halted.len(), 1, "{halted:?}");
    assert_eq!(halted[0].severity, cairn_api::Severity::Error);
    assert!(halted[0].device_id.is_none());
    assert!(
        halted[0].message.contains(&format!("rollout {id} halted")),
        "{halted:?}"
    );
    let mut phases = Vec::new();
    for _ in 0..100 {
        phases = central
            .get::<EventList>(&format!("/api/v1/events?kind=os.update&device={canary_id}"))
            .events;
        if !phases.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = phases
        .first()
        .map(|e| e.message.as_str())
        .unwrap_or_default();
    assert!(
        message.contains("idle -> failed") && message.contains("containerd did not start"),
        "{phases:?}"
    );
    assert_eq!(phases[0].severity, cairn_api::Severity::Error);

    let (status, body) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/rollouts/{id}/resume"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("halted"), "{body}");
    let aborted: RolloutReply =
        central.admin_read("POST", &format!("/api/v1/rollouts/{id}/abort"), None);
    assert_eq!(aborted.rollout.rollout.state.as_str(), "aborted");
    let (status, _) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/rollouts/{id}/abort"),
        None,
    );
    assert_eq!(status, 409, "aborting twice");
    // The devices are free for a new rollout.
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "all": true }, "dry_run": true })),
    );
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort_during_a_wave() {
    let Some(fixture) = bundles() else { return };
    let central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(Device::connect(&central, &format!("SER-P{i}"), None, "1.0").await);
    }
    let operator = central.api_token("ops", "operator");
    let (_, body) = central.call(
        &operator,
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "all": true } })),
    );
    let created = read::<RolloutReply>("POST", "/api/v1/rollouts", body);
    let id = created.rollout.rollout.id.clone();
    let wave0 = first_wave_device(&created);
    let (status, body) = central.call(
        &operator,
        "POST",
        &format!("/api/v1/rollouts/{id}/pause"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let paused = read::<RolloutReply>("POST", "pause", body).rollout;
    assert_eq!(paused.rollout.state.as_str(), "paused");
    let (status, _) = central.call(
        &operator,
        "POST",
        &format!("/api/v1/rollouts/{id}/pause"),
        None,
    );
    assert_eq!(status, 409);

    // Paused: the canary finishes, no new wave.
    let canary = devices.iter_mut().find(|d| d.id == wave0).unwrap();
    let desired = canary.desired().await;
    canary.phase(&desired, OsUpdatePhase::Succeeded, "").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = rollout(&central, &id);
    assert_eq!(
        (r.rollout.state.as_str(), r.rollout.released_waves),
        ("paused", 1),
        "{r:?}"
    );

    // Resume: wave 1 goes out.
    central.admin_call("POST", &format!("/api/v1/rollouts/{id}/resume"), None);
    let mut rest: Vec<&mut Device> = devices.iter_mut().filter(|d| d.id != wave0).collect();
    let first = rest[0].desired().await;
    let second = rest[1].desired().await;
    rest[0].phase(&first, OsUpdatePhase::Downloading, "").await;
    rest[1].phase(&second, OsUpdatePhase::Installing, "").await;

    // Abort: the downloading device is called off (its desired OS cleared), the installing one finishes.
    let aborted: RolloutReply =
        central.admin_read("POST", &format!("/api/v1/rollouts/{id}/abort"), None);
    assert_eq!(aborted.rollout.rollout.state.as_str(), "aborted");
    let cleared = rest[0].desired().await;
    assert!(cleared.os.is_none(), "{cleared:?}");
    assert!(cleared.revision > first.revision);
    let r = rollout(&central, &id);
    assert_eq!(device_state(&r, &rest[0].id), "pending");
    assert_eq!(device_state(&r, &rest[1].id), "installing");
    rest[1].phase(&second, OsUpdatePhase::Succeeded, "").await;
    assert_eq!(
        device_state(&rollout(&central, &id), &rest[1].id),
        "succeeded"
    );
    let audit: AuditLog = central.get("/api/v1/audit?limit=200");
    assert!(audit
        .events
        .iter()
        .any(|e| e.action == "rollout.pause" && e.actor == "api:ops"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_needs_the_old_bundle_and_downgrades_need_an_admin() {
    let Some(fixture) = bundles() else { return };
    let central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let mut devices = Vec::new();
    for i in 0..2 {
        devices.push(Device::connect(&central, &format!("SER-R{i}"), None, "1.0").await);
    }
    let created: RolloutReply = central.admin_read(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "all": true }, "waves": { "canary": 0 } })),
    );
    let id = created.rollout.rollout.id;
    for d in devices.iter_mut() {
        let desired = d.desired().await;
        d.phase(&desired, OsUpdatePhase::Succeeded, "").await;
    }
    until(&central, &id, "rollout completes", |r| {
        r.rollout.state.as_str() == "completed"
    })
    .await;

    // Without the 1.0 bundle a rollback is refused and changes nothing.
    let (status, body) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/rollouts/{id}/rollback"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("1.0") && message.contains("upload"),
        "{message}"
    );
    assert_eq!(rollout(&central, &id).rollout.state.as_str(), "completed");

    let v1 = upload(&central, &fixture.v1);
    let rolled_back: RolloutReply =
        central.admin_read("POST", &format!("/api/v1/rollouts/{id}/rollback"), None);
    assert_eq!(rolled_back.rollout.rollout.state.as_str(), "rolled_back");
    for d in devices.iter_mut() {
        let desired = d.desired().await;
        let os = desired.os.unwrap();
        assert_eq!(
            (
                os.version.as_str(),
                os.bundle_sha256.as_str(),
                os.allow_downgrade
            ),
            ("1.0", v1.as_str(), true)
        );
    }
    let r = rollout(&central, &id);
    assert_eq!(
        r.devices.as_ref().unwrap()[0]
            .device
            .rollback_sha256
            .as_deref(),
        Some(v1.as_str())
    );
    let (status, _) = central.call(
        &central.admin,
        "POST",
        &format!("/api/v1/rollouts/{id}/rollback"),
        None,
    );
    assert_eq!(status, 409, "rolling back twice");

    // The devices run 2.0: going to 1.0 is a downgrade.
    let operator = central.api_token("ops", "operator");
    let request = json!({ "bundle_sha256": v1, "selector": { "devices": [devices[0].id] } });
    let (status, body) = central.call(&operator, "POST", "/api/v1/rollouts", Some(request.clone()));
    assert_eq!(status, 400, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains(&devices[0].id) && message.contains("allow_downgrade"),
        "{message}"
    );
    let mut forced = request.clone();
    forced["allow_downgrade"] = json!(true);
    let (status, body) = central.call(&operator, "POST", "/api/v1/rollouts", Some(forced.clone()));
    assert_eq!(status, 403, "{body}");
    assert!(error_message(&body).contains("admin"), "{body}");
    let (status, body) = central.call(&central.admin, "POST", "/api/v1/rollouts", Some(forced));
    assert_eq!(status, 201, "{body}");
    let forced = read::<RolloutReply>("POST", "/api/v1/rollouts", body).rollout;
    assert!(forced.rollout.allow_downgrade);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_bundle_ranges_and_bundle_index() {
    let Some(fixture) = bundles() else { return };
    let central = central_for(fixture).await;
    let v2 = upload(&central, &fixture.v2);
    let device = Device::connect(&central, "SER-READ", None, "1.0").await;
    let mut agent = central.agent(&device.sim, &device.cert).await;
    let size = fixture.v2.len() as u64;

    async fn read(
        agent: &mut cairn_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
        sha: &str,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, usize), tonic::Status> {
        let mut stream = agent
            .read_bundle(ReadBundleRequest {
                bundle_sha256: sha.into(),
                offset,
                length,
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        let mut pieces = 0;
        while let Some(piece) = stream.message().await? {
            assert_eq!(
                piece.offset,
                offset + data.len() as u64,
                "pieces arrive in order with their offset"
            );
            assert!(piece.data.len() <= 1024 * 1024);
            data.extend_from_slice(&piece.data);
            pieces += 1;
        }
        Ok((data, pieces))
    }

    // A device reads only the update central assigned to it.
    let e = read(&mut agent, &v2, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("not the OS update central assigned"),
        "{e:?}"
    );
    let e = agent
        .bundle_index(BundleIndexRequest {
            bundle_sha256: v2.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    central.admin_call(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": v2, "selector": { "devices": [device.id] } })),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while central
        .get::<DeviceDetail>(&format!("/api/v1/devices/{}", device.id))
        .device
        .device
        .desired_os
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout never assigned the bundle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (whole, pieces) = read(&mut agent, &v2, 0, 0).await.unwrap();
    assert_eq!(whole, fixture.v2);
    assert!(pieces >= 2, "a bundle over 1 MiB comes in several pieces");
    // Resuming from an offset gives the same bytes.
    let (tail, _) = read(&mut agent, &v2, 700_000, 0).await.unwrap();
    assert_eq!(tail, fixture.v2[700_000..]);
    let (middle, _) = read(&mut agent, &v2, 10, 100).await.unwrap();
    assert_eq!(middle, fixture.v2[10..110]);
    let (clipped, _) = read(&mut agent, &v2, size - 5, 100).await.unwrap();
    assert_eq!(clipped, fixture.v2[size as usize - 5..]);
    let e = read(&mut agent, &v2, size + 1, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let e = read(&mut agent, "../../registry.sqlite3", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = read(&mut agent, &v2.to_uppercase(), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = read(&mut agent, &"0".repeat(64), 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // BundleIndex: cairn-delta's index of the stored file, cached next to it.
    let stored: PathBuf = central
        .config
        .data_dir
        .join("bundles")
        .join(format!("sha256-{v2}.raucb"));
    let expected = cairn_delta::Index::build_file(&stored).unwrap().encode();
    let index = agent
        .bundle_index(BundleIndexRequest {
            bundle_sha256: v2.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (index.bundle_size, index.index.len()),
        (size, expected.len())
    );
    assert_eq!(index.index, expected);
    let cached = central
        .config
        .data_dir
        .join("bundles")
        .join(format!("sha256-{v2}.cdcidx"));
    assert_eq!(std::fs::read(&cached).unwrap(), expected);
    let again = agent
        .bundle_index(BundleIndexRequest {
            bundle_sha256: v2.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.index, expected);
    let e = agent
        .bundle_index(BundleIndexRequest {
            bundle_sha256: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = agent
        .bundle_index(BundleIndexRequest {
            bundle_sha256: "1".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Removing the bundle removes its index too (once its rollout is aborted).
    let rollouts: RolloutList = central.get("/api/v1/rollouts");
    for rollout in rollouts.rollouts {
        central.admin_call(
            "POST",
            &format!("/api/v1/rollouts/{}/abort", rollout.rollout.id),
            None,
        );
    }
    central.admin_call("DELETE", &format!("/api/v1/bundles/{v2}"), None);
    assert!(!cached.exists() && !stored.exists());
    assert_eq!(sha256_hex(&whole), v2);
}

/// The device id of wave 0 in a rollout answer.
fn first_wave_device(created: &RolloutReply) -> String {
    let devices = created.rollout.devices.as_ref().unwrap();
    let canary = devices.iter().find(|d| d.device.wave == 0).unwrap();
    canary.device.device_id.clone()
}
