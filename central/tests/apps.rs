//! Apps on devices over REST against a real central: Compose validation with line numbers, roles,
//! audit, size limits, and every change reaching the device's open Sync stream as a new revision
//! (with the apps, also when only the config changes); the status a device reports in heartbeats
//! shows up in `GET .../apps`.

use std::time::Duration;

use cairn_api::{AppDeployed, AppList, AppRemoved, AuditLog};
use cairn_proto::v1::{
    central_message, AgentMessage, AppStatus, CentralMessage, DesiredState, Heartbeat,
    ServiceHealth, ServiceState, ServiceStatus,
};
use cairn_testsupport::central::{error_message, read};
use cairn_testsupport::central::{heartbeat_acked, ConnectedDevice, SimDevice, TestCentral};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Streaming;

const WEB: &str =
    "services:\n  web:\n    image: registry.example:5000/web:1\n    restart: always\n";

fn put(central: &TestCentral, token: &str, device: &str, app: &str, yaml: &str) -> (u16, Value) {
    central.call(
        token,
        "PUT",
        &format!("/api/v1/devices/{device}/apps/{app}"),
        Some(json!({ "compose_yaml": yaml })),
    )
}

/// An enrolled device with an open Sync stream, past its first desired state (revision 1).
struct Device {
    id: String,
    tx: mpsc::Sender<AgentMessage>,
    stream: Streaming<CentralMessage>,
    sim: SimDevice,
    cert: Vec<u8>,
}

impl Device {
    async fn connect(central: &TestCentral, serial: &str) -> Device {
        let ConnectedDevice {
            sim,
            id,
            cert,
            tx,
            stream,
        } = central.connect_device(serial).await;
        let mut device = Device {
            id,
            tx,
            stream,
            sim,
            cert,
        };
        let first = device.desired().await;
        assert_eq!((first.revision, first.apps.len()), (1, 0));
        device
    }

    /// A new Sync stream (the old one is replaced); returns the first desired state on it.
    async fn reconnect(&mut self, central: &TestCentral) -> DesiredState {
        (self.tx, self.stream) = central.open_sync(&self.sim, &self.cert).await;
        self.desired().await
    }

    /// The next desired state pushed on the stream (acks skipped), within 5 s.
    async fn desired(&mut self) -> DesiredState {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.stream.message().await.unwrap().unwrap().kind {
                    Some(central_message::Kind::Desired(d)) => break d,
                    _ => continue,
                }
            }
        })
        .await
        .expect("a desired state is pushed within 5 s")
    }

    async fn heartbeat(&mut self, seq: u64, revision: u64, apps: Vec<AppStatus>) {
        let hb = Heartbeat {
            seq,
            desired_revision: revision,
            apps,
            ..Default::default()
        };
        heartbeat_acked(&self.tx, &mut self.stream, hb).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_update_list_and_remove_reach_the_device_stream() {
    let central = TestCentral::start().await;
    let mut device = Device::connect(&central, "SER-APPS-1").await;
    let id = device.id.clone();
    let operator = central.api_token("ops", "operator");

    // Deploy: 201, revision 2 pushed with the app at generation 2.
    let (status, body) = put(&central, &operator, &id, "web", WEB);
    assert_eq!(status, 201, "{body}");
    let deployed: AppDeployed = read("PUT", "app", body);
    assert_eq!((deployed.desired_revision, deployed.changed), (2, true));
    assert_eq!(deployed.app.generation, 2);
    let pushed = device.desired().await;
    assert_eq!(pushed.revision, 2);
    assert_eq!(pushed.apps.len(), 1);
    assert_eq!(
        (
            pushed.apps[0].name.as_str(),
            pushed.apps[0].compose_yaml.as_str(),
            pushed.apps[0].generation
        ),
        ("web", WEB, 2)
    );

    // The same file again changes nothing (no revision, no push, no audit).
    let (status, body) = put(&central, &operator, &id, "web", WEB);
    assert_eq!(status, 200, "{body}");
    let deployed: AppDeployed = read("PUT", "app", body);
    assert_eq!((deployed.changed, deployed.desired_revision), (false, 2));

    // Listed before any report: status null.
    let listed: AppList = central.get(&format!("/api/v1/devices/{id}/apps"));
    assert_eq!(listed.desired_revision, 2);
    assert!(listed.online);
    assert_eq!(listed.apps[0].app.name, "web");
    assert!(listed.apps[0].status.is_none(), "{listed:?}");

    // A heartbeat reports the app running; GET shows it per service.
    let report = AppStatus {
        name: "web".into(),
        generation: 2,
        desired_revision: 2,
        error: String::new(),
        services: vec![ServiceStatus {
            name: "web".into(),
            state: ServiceState::Running as i32,
            health: ServiceHealth::Healthy as i32,
            restarts: 1,
            message: "x".repeat(10_000),
        }],
    };
    device.heartbeat(1, 2, vec![report]).await;
    let listed: AppList = central.get(&format!("/api/v1/devices/{id}/apps"));
    let status = listed.apps[0].status.as_ref().expect("a reported status");
    assert_eq!((status.generation, status.in_sync), (2, true), "{listed:?}");
    let web = &status.services[0];
    assert_eq!(
        (web.name.as_str(), web.state.as_str(), web.health.as_str()),
        ("web", "running", "healthy")
    );
    assert_eq!(web.restarts, 1);
    assert!(
        web.message.len() <= cairn_proto::MAX_STATUS_MESSAGE_BYTES,
        "central cuts long messages"
    );
    assert_eq!(listed.reported_revision, Some(2));
    assert!(listed.reported_at.is_some());

    // An update: revision 3, generation 3; the old report is no longer in sync.
    let updated = WEB.replace("web:1", "web:2");
    let (status, body) = put(&central, &operator, &id, "web", &updated);
    assert_eq!(status, 200, "{body}");
    assert_eq!(read::<AppDeployed>("PUT", "app", body).desired_revision, 3);
    let pushed = device.desired().await;
    assert_eq!(
        (
            pushed.revision,
            pushed.apps[0].generation,
            pushed.apps[0].compose_yaml.as_str()
        ),
        (3, 3, updated.as_str())
    );
    let listed: AppList = central.get(&format!("/api/v1/devices/{id}/apps"));
    assert!(!listed.apps[0].status.as_ref().unwrap().in_sync);

    // A config change carries the apps too (a state without them would remove them).
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(json!({ "config": { "site": "north" } })),
    );
    let pushed = device.desired().await;
    assert_eq!((pushed.revision, pushed.apps.len()), (4, 1));

    // A second app, then removal of the first.
    let (status, _) = put(
        &central,
        &operator,
        &id,
        "db.main",
        "services:\n  db:\n    image: postgres:16\n",
    );
    assert_eq!(status, 201);
    assert_eq!(device.desired().await.apps.len(), 2);
    let (status, body) = central.call(
        &operator,
        "DELETE",
        &format!("/api/v1/devices/{id}/apps/web"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let removed: AppRemoved = read("DELETE", "app", body);
    assert_eq!(
        (removed.removed.as_str(), removed.desired_revision),
        ("web", 6)
    );
    let pushed = device.desired().await;
    assert_eq!(pushed.revision, 6);
    assert_eq!(
        pushed
            .apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["db.main"]
    );
    let (status, _) = central.call(
        &operator,
        "DELETE",
        &format!("/api/v1/devices/{id}/apps/web"),
        None,
    );
    assert_eq!(status, 404, "removing twice is a 404");

    // A reconnecting device gets its apps in the first desired state of the new stream.
    let first = device.reconnect(&central).await;
    assert_eq!(
        (
            first.revision,
            first.apps.len(),
            first.apps[0].name.as_str()
        ),
        (6, 1, "db.main")
    );
    assert_eq!(first.config.get("site").map(String::as_str), Some("north"));

    // Every change is audited with the operator as actor.
    let audit: AuditLog = central.get("/api/v1/audit?limit=100");
    let mine: Vec<(String, String)> = audit
        .events
        .iter()
        .filter(|e| e.target == id && e.action.starts_with("app."))
        .map(|e| (e.action.clone(), e.detail.clone()))
        .rev()
        .collect();
    let actions: Vec<&str> = mine.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["app.deploy", "app.deploy", "app.deploy", "app.remove"],
        "{mine:?}"
    );
    assert!(
        mine[0].1.contains("app=web")
            && mine[0].1.contains("generation=2")
            && mine[0].1.contains("created"),
        "{mine:?}"
    );
    assert!(mine[1].1.contains("updated"), "{mine:?}");
    assert!(audit
        .events
        .iter()
        .any(|e| e.action == "app.deploy" && e.actor == "api:ops"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_compose_is_refused_with_line_and_field() {
    let central = TestCentral::start().await;
    let device = Device::connect(&central, "SER-APPS-2").await;
    let id = device.id.clone();
    let bad = "services:\n  web:\n    image: busybox\n    ports: [\"eighty:80\"]\n    restart: sometimes\n";
    let (status, body) = put(&central, &central.admin, &id, "web", bad);
    assert_eq!(status, 400, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("compose_yaml:4: services.web.ports[0]"),
        "{message}"
    );
    assert!(
        message.contains("compose_yaml:5: services.web.restart"),
        "{message}"
    );

    let (status, body) = put(&central, &central.admin, &id, "web", "services: [\n");
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("not valid YAML"), "{body}");

    let (status, body) = put(&central, &central.admin, &id, "Bad_Name", WEB);
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("app name"), "{body}");

    let secrets = "services:\n  web:\n    image: busybox\n    secrets: [db]\nsecrets:\n  db:\n    file: ./db.txt\n";
    let (status, body) = put(&central, &central.admin, &id, "web", secrets);
    assert_eq!(status, 400);
    assert!(
        error_message(&body).contains("provided by central"),
        "{body}"
    );

    // A secret put into the environment must be granted to the service.
    let ungranted = "services:\n  web:\n    image: busybox\n    x-cairn-secret-env:\n      DB_PASSWORD: db\nsecrets:\n  db: {}\n";
    let (status, body) = put(&central, &central.admin, &id, "web", ungranted);
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("compose_yaml:5: services.web.x-cairn-secret-env.DB_PASSWORD: secret \"db\" is not granted to this service"),
        "{body}"
    );

    let (status, body) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/devices/{id}/apps/web"),
        Some(json!({ "yaml": WEB })),
    );
    assert_eq!(status, 400, "{body}");

    // Nothing was stored and the revision did not move.
    let listed: AppList = central.get(&format!("/api/v1/devices/{id}/apps"));
    assert_eq!((listed.desired_revision, listed.apps.len()), (1, 0));
    let (status, _) = put(&central, &central.admin, "dev_nope", "web", WEB);
    assert_eq!(status, 404);
    let (status, _) = central.call(&central.admin, "GET", "/api/v1/devices/dev_nope/apps", None);
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_granted_to_a_service_may_be_put_into_its_environment() {
    let central = TestCentral::start().await;
    let device = Device::connect(&central, "SER-APPS-ENV").await;
    let yaml = "services:\n  web:\n    image: busybox\n    secrets: [db]\n    x-cairn-secret-env:\n      DB_PASSWORD: db\nsecrets:\n  db: {}\n";
    let (status, body) = put(&central, &central.admin, &device.id, "web", yaml);
    assert_eq!(status, 201, "{body}");
    let listed: AppList = central.get(&format!("/api/v1/devices/{}/apps", device.id));
    assert_eq!(listed.apps.len(), 1);
    assert!(listed.apps[0]
        .app
        .compose_yaml
        .contains("x-cairn-secret-env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_operators_change() {
    let central = TestCentral::start().await;
    let device = Device::connect(&central, "SER-APPS-3").await;
    let id = device.id.clone();
    let viewer = central.api_token("watcher", "viewer");
    let (status, body) = put(&central, &viewer, &id, "web", WEB);
    assert_eq!(status, 403, "{body}");
    assert!(error_message(&body).contains("operator"), "{body}");
    let (status, _) = central.call(
        &viewer,
        "DELETE",
        &format!("/api/v1/devices/{id}/apps/web"),
        None,
    );
    assert_eq!(status, 403);
    let (status, body) = central.call(&viewer, "GET", &format!("/api/v1/devices/{id}/apps"), None);
    assert_eq!(status, 200, "{body}");
    let (status, _) = central.call(
        "not-a-token",
        "GET",
        &format!("/api/v1/devices/{id}/apps"),
        None,
    );
    assert_eq!(status, 401);
    let audit: AuditLog = central.get("/api/v1/audit?limit=100");
    assert!(!audit.events.iter().any(|e| e.action.starts_with("app.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_devices_and_extra_capabilities_need_a_label_on_the_device_or_its_site() {
    let central = TestCentral::start().await;
    let device = Device::connect(&central, "SER-APPS-DEV").await;
    let id = device.id.clone();
    let token = central.api_token("ops", "operator");
    let serial = "services:\n  s:\n    image: reg:5000/s:1\n    devices: ['/dev/ttyUSB0']\n";
    let (status, body) = put(&central, &token, &id, "serial", serial);
    assert_eq!(status, 409, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("/dev/ttyUSB0") && message.contains("cairn.allow/devices=/dev/ttyUSB0"),
        "the refusal names the device and the label to set: {message}"
    );
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{id}/labels"),
        Some(json!({ "labels": { "cairn.allow/devices": "/dev/ttyUSB*" } })),
    );
    let (status, body) = put(&central, &token, &id, "serial", serial);
    assert_eq!(status, 201, "{body}");

    // A capability the label does not list stays refused; a site's label allows it.
    let admin = "services:\n  s:\n    image: reg:5000/s:1\n    cap_add: [NET_ADMIN]\n";
    let (status, body) = put(&central, &token, &id, "net", admin);
    assert_eq!(status, 409, "{body}");
    assert!(
        error_message(&body).contains("cairn.allow/capabilities=NET_ADMIN"),
        "{body}"
    );
    central.admin_call(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "plant", "latitude": 47.0, "longitude": 8.0,
                     "labels": { "cairn.allow/capabilities": "net_admin" } })),
    );
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{id}/site"),
        Some(json!({ "site": "plant" })),
    );
    let (status, body) = put(&central, &token, &id, "net", admin);
    assert_eq!(status, 201, "{body}");

    // While the apps run, the labels that allow them cannot be taken away.
    let (status, body) = central.call(
        &token,
        "PUT",
        &format!("/api/v1/devices/{id}/labels"),
        Some(json!({ "labels": {} })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("\"serial\""), "{body}");
    let (status, body) = central.call(
        &token,
        "PUT",
        "/api/v1/sites/plant",
        Some(json!({ "latitude": 47.0, "longitude": 8.0, "labels": {} })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("\"net\""), "{body}");
    let (status, body) = central.call(
        &token,
        "PUT",
        &format!("/api/v1/devices/{id}/site"),
        Some(json!({ "site": null })),
    );
    assert_eq!(status, 409, "{body}");
    let labels: Value = central.admin_call("GET", &format!("/api/v1/devices/{id}"), None);
    assert_eq!(
        labels["device"]["labels"]["cairn.allow/devices"], "/dev/ttyUSB*",
        "the refused change was rolled back: {labels}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_and_desired_state_sizes_are_capped() {
    let central = TestCentral::start().await;
    let device = Device::connect(&central, "SER-APPS-4").await;
    let id = device.id.clone();
    // A valid file just under 64 KiB (a long comment) is accepted: the body limit of this route
    // is above the API's default 64 KiB.
    let padded = |n: usize| format!("{WEB}# {}\n", "x".repeat(n - WEB.len() - 3));
    let near_limit = padded(cairn_proto::MAX_COMPOSE_BYTES);
    assert_eq!(near_limit.len(), cairn_proto::MAX_COMPOSE_BYTES);
    let (status, body) = put(&central, &central.admin, &id, "a", &near_limit);
    assert_eq!(status, 201, "{body}");
    let (status, body) = put(
        &central,
        &central.admin,
        &id,
        "b",
        &padded(cairn_proto::MAX_COMPOSE_BYTES + 1),
    );
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("65536"), "{body}");
    // Three near-limit apps fit in the desired state; a fourth would not, and is rolled back.
    for name in ["b", "c"] {
        let (status, body) = put(&central, &central.admin, &id, name, &near_limit);
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = put(&central, &central.admin, &id, "d", &near_limit);
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("limit"), "{body}");
    let listed: AppList = central.get(&format!("/api/v1/devices/{id}/apps"));
    assert_eq!(listed.apps.len(), 3);
    assert_eq!(
        listed.desired_revision, 4,
        "the refused change did not bump the revision"
    );
}
