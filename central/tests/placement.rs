//! Sites, regions, device labels and deployments against a real central (real SQLite, fake
//! devices over real mutual-TLS gRPC): geography (region polygon, radius), labels,
//! hosts_per_site, anti-affinity, re-placement when a host is lost, no clobbering between
//! deployments and operators' per-device apps, and validation errors.

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_api::{
    AppList, AuditLog, DeploymentChanged, DeploymentDryRun, DeploymentList, DeploymentRemoved,
    DeploymentReply, DeploymentView, DeviceDetail, SitePlan, SiteWithDevices,
};
use cairn_proto::v1::{central_message, AgentMessage, CentralMessage, DesiredState};
use cairn_testsupport::central::{
    config_in, error_message, read, ConnectedDevice, SimDevice, TestCentral,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Streaming;

const WEB: &str = "services:\n  web:\n    image: registry.example:5000/web:1\n";

/// A central whose scheduler replaces hosts offline for more than 1 s.
async fn start() -> TestCentral {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.placement_offline_grace_seconds = 1;
    TestCentral::start_with(dir, config).await
}

/// An enrolled device with an open Sync stream.
struct Device {
    id: String,
    tx: Option<mpsc::Sender<AgentMessage>>,
    stream: Option<Streaming<CentralMessage>>,
    sim: SimDevice,
    cert: Vec<u8>,
    /// The latest desired state received.
    last: DesiredState,
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
            tx: Some(tx),
            stream: Some(stream),
            sim,
            cert,
            last: DesiredState::default(),
        };
        device.next_desired().await;
        device
    }

    /// Enroll, connect, and put the device at `site` with `labels`.
    async fn at(central: &TestCentral, serial: &str, site: &str, labels: Value) -> Device {
        let device = Device::connect(central, serial).await;
        central.admin_call(
            "PUT",
            &format!("/api/v1/devices/{}/site", device.id),
            Some(json!({ "site": site })),
        );
        central.admin_call(
            "PUT",
            &format!("/api/v1/devices/{}/labels", device.id),
            Some(json!({ "labels": labels })),
        );
        device
    }

    async fn next_desired(&mut self) -> DesiredState {
        let stream = self.stream.as_mut().expect("connected");
        let desired = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await.unwrap().unwrap().kind {
                    Some(central_message::Kind::Desired(d)) => break d,
                    _ => continue,
                }
            }
        })
        .await
        .expect("a desired state is pushed within 10 s");
        self.last = desired.clone();
        desired
    }

    /// Read desired states until the app names are `names` (the latest one may already match).
    async fn until_apps(&mut self, names: &[&str]) -> DesiredState {
        let want: BTreeSet<&str> = names.iter().copied().collect();
        let matches = |d: &DesiredState| {
            d.apps
                .iter()
                .map(|a| a.name.as_str())
                .collect::<BTreeSet<_>>()
                == want
        };
        if matches(&self.last) {
            return self.last.clone();
        }
        loop {
            let d = self.next_desired().await;
            if matches(&d) {
                return d;
            }
        }
    }

    fn hang_up(&mut self) {
        (self.tx, self.stream) = (None, None);
    }

    async fn reconnect(&mut self, central: &TestCentral) -> DesiredState {
        let (tx, stream) = central.open_sync(&self.sim, &self.cert).await;
        (self.tx, self.stream) = (Some(tx), Some(stream));
        self.next_desired().await
    }
}

fn site(central: &TestCentral, name: &str, latitude: f64, longitude: f64, labels: Value) {
    let body =
        json!({ "name": name, "latitude": latitude, "longitude": longitude, "labels": labels });
    central.admin_call("POST", "/api/v1/sites", Some(body));
}

fn deploy(central: &TestCentral, name: &str, placement: Value) -> DeploymentView {
    let body = json!({ "name": name, "compose_yaml": WEB, "placement": placement });
    let (status, body) = central.call(&central.admin, "POST", "/api/v1/deployments", Some(body));
    assert_eq!(status, 201, "{body}");
    read::<DeploymentReply>("POST", "/api/v1/deployments", body).deployment
}

fn deployment(central: &TestCentral, name: &str) -> DeploymentView {
    central
        .get::<DeploymentReply>(&format!("/api/v1/deployments/{name}"))
        .deployment
}

/// Host ids per site of a deployment view.
fn hosts(view: &DeploymentView) -> Vec<(String, Vec<String>)> {
    view.sites
        .iter()
        .map(|s| {
            let ids = s.hosts.iter().map(|h| h.device_id.clone()).collect();
            (s.site.clone(), ids)
        })
        .collect()
}

/// Wait until `site`'s only host of `name` is `device`.
async fn wait_hosts(central: &TestCentral, name: &str, site: &str, device: &str, what: &str) {
    let want = [(site.to_owned(), vec![device.to_owned()])];
    tokio::time::timeout(Duration::from_secs(10), async {
        while hosts(&deployment(central, name)) != want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect(what);
}

/// The audited reason a deployment left `device`.
fn unplaced(central: &TestCentral, device: &str) -> String {
    let audit: AuditLog = central.get("/api/v1/audit?limit=50");
    let unplaced = audit
        .events
        .iter()
        .find(|e| e.action == "deployment.unplace" && e.target == device)
        .expect("the move is audited");
    unplaced.detail.clone()
}

fn first<'a>(a: &'a Device, b: &'a Device) -> (&'a str, &'a str) {
    if a.id < b.id {
        (&a.id, &b.id)
    } else {
        (&b.id, &a.id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geography_labels_and_hosts_per_site_pick_the_right_devices() {
    let central = start().await;
    site(
        &central,
        "zurich",
        47.3769,
        8.5417,
        json!({ "country": "ch" }),
    );
    site(
        &central,
        "geneva",
        46.2044,
        6.1432,
        json!({ "country": "ch" }),
    );
    site(
        &central,
        "paris",
        48.8566,
        2.3522,
        json!({ "country": "fr" }),
    );
    // A box around Switzerland: Zurich and Geneva inside, Paris outside.
    let points = json!([
        { "latitude": 45.8, "longitude": 5.9 }, { "latitude": 45.8, "longitude": 10.5 },
        { "latitude": 47.8, "longitude": 10.5 }, { "latitude": 47.8, "longitude": 5.9 }
    ]);
    central.admin_call(
        "POST",
        "/api/v1/regions",
        Some(json!({ "name": "swiss-box", "points": points })),
    );
    let mut z1 = Device::at(&central, "SER-Z1", "zurich", json!({})).await;
    let mut z2 = Device::at(&central, "SER-Z2", "zurich", json!({ "gpu": "yes" })).await;
    let mut g1 = Device::at(&central, "SER-G1", "geneva", json!({})).await;
    let mut p1 = Device::at(&central, "SER-P1", "paris", json!({})).await;
    let shown: DeviceDetail = central.get(&format!("/api/v1/devices/{}", z2.id));
    assert_eq!(
        (
            shown.device.device.site.as_deref(),
            shown.device.device.labels.get("gpu").map(String::as_str)
        ),
        (Some("zurich"), Some("yes"))
    );
    let (z_first, _) = first(&z1, &z2);
    let z_first = z_first.to_owned();

    // Inside the region: one host in Zurich (lowest id among equals) and Geneva, none in Paris.
    let view = deploy(
        &central,
        "web",
        json!({ "sites": { "region": "swiss-box" } }),
    );
    assert_eq!(
        hosts(&view),
        [
            ("geneva".to_owned(), vec![g1.id.clone()]),
            ("zurich".to_owned(), vec![z_first.clone()])
        ]
    );
    g1.until_apps(&["web"]).await;
    p1.until_apps(&[]).await;

    // Within 50 km of Paris: only Paris (dry run: nothing changes).
    let plan: DeploymentDryRun = central.admin_read(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "near-paris", "compose_yaml": WEB, "dry_run": true,
                     "placement": { "sites": { "within": { "latitude": 48.85, "longitude": 2.35, "km": 50 } } } })),
    );
    assert!(plan.dry_run);
    assert_eq!(
        plan.placement.sites,
        [SitePlan {
            site: "paris".into(),
            wanted: 1,
            hosts: vec![p1.id.clone()],
            shortfall: None
        }]
    );
    let (status, _) = central.call(
        &central.admin,
        "GET",
        "/api/v1/deployments/near-paris",
        None,
    );
    assert_eq!(status, 404, "a dry run stores nothing");

    // Site labels and device labels: the GPU device of the Swiss sites; Geneva has none.
    let view = deploy(
        &central,
        "ml",
        json!({ "sites": { "labels": { "country": "ch" } }, "devices": { "labels": { "gpu": "yes" } } }),
    );
    let placed = hosts(&view);
    assert_eq!(
        placed,
        [
            ("geneva".to_owned(), vec![]),
            ("zurich".to_owned(), vec![z2.id.clone()])
        ]
    );
    let geneva = &view.sites[0];
    assert!(
        geneva
            .shortfall
            .as_deref()
            .unwrap()
            .starts_with("0 of 1 hosts"),
        "{view:?}"
    );

    // Two hosts per site within 300 km of Zurich: both Zurich devices, Geneva's only one.
    let view = deploy(
        &central,
        "web2",
        json!({ "hosts_per_site": 2, "sites": { "within": { "latitude": 47.3769, "longitude": 8.5417, "km": 300 } } }),
    );
    let mut both = vec![z1.id.clone(), z2.id.clone()];
    both.sort();
    assert_eq!(
        hosts(&view),
        [
            ("geneva".to_owned(), vec![g1.id.clone()]),
            ("zurich".to_owned(), both)
        ]
    );
    let z1_apps: Vec<&str> = if z1.id == z_first {
        vec!["web", "web2"]
    } else {
        vec!["web2"]
    };
    let z2_apps: Vec<&str> = if z2.id == z_first {
        vec!["ml", "web", "web2"]
    } else {
        vec!["ml", "web2"]
    };
    let d = z1.until_apps(&z1_apps).await;
    assert!(d.apps.iter().all(|a| a.compose_yaml == WEB));
    z2.until_apps(&z2_apps).await;
    g1.until_apps(&["web", "web2"]).await;

    // Listing and the per-device app view say who placed each app.
    let list: DeploymentList = central.get("/api/v1/deployments");
    let names: Vec<&str> = list.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["ml", "web", "web2"]);
    let apps: AppList = central.get(&format!("/api/v1/devices/{}/apps", g1.id));
    assert_eq!(apps.apps[0].app.deployment.as_deref(), Some("web"));

    // Moving a device to another site moves its deployments with the placement rules.
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", p1.id),
        Some(json!({ "site": "geneva" })),
    );
    let view = deployment(&central, "web2");
    let mut geneva_hosts = vec![g1.id.clone(), p1.id.clone()];
    geneva_hosts.sort();
    assert_eq!(hosts(&view)[0], ("geneva".to_owned(), geneva_hosts));
    p1.until_apps(&["web2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_is_replaced_within_its_site_and_comes_back_without_the_app() {
    let central = start().await;
    site(&central, "depot", 52.52, 13.40, json!({}));
    let mut a = Device::at(&central, "SER-LOSS-A", "depot", json!({})).await;
    let mut b = Device::at(&central, "SER-LOSS-B", "depot", json!({})).await;
    if b.id < a.id {
        std::mem::swap(&mut a, &mut b);
    }
    deploy(&central, "web", json!({}));
    let placed = a.until_apps(&["web"]).await;
    let revision_before = placed.revision;

    // `a` drops its stream; within the grace period nothing moves.
    a.hang_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = deployment(&central, "web");
    assert_eq!(hosts(&view), [("depot".to_owned(), vec![a.id.clone()])]);
    assert!(!view.sites[0].hosts[0].online);

    // After the grace period the app moves to `b`, which receives it on its stream.
    let started = std::time::Instant::now();
    let moved = tokio::time::timeout(Duration::from_secs(10), b.until_apps(&["web"]))
        .await
        .expect("re-placed within 10 s");
    assert_eq!(moved.apps[0].compose_yaml, WEB);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "moved only after the grace period"
    );
    let view = deployment(&central, "web");
    assert_eq!(hosts(&view), [("depot".to_owned(), vec![b.id.clone()])]);

    // `a` comes back: its desired state no longer has the app, at a newer revision; the app
    // stays on `b` (existing placements are kept).
    let back = a.reconnect(&central).await;
    assert!(back.apps.is_empty(), "{back:?}");
    assert!(back.revision > revision_before);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let view = deployment(&central, "web");
    assert_eq!(hosts(&view), [("depot".to_owned(), vec![b.id.clone()])]);

    // Audited, with the reason.
    assert!(unplaced(&central, &a.id).contains("offline for longer than"));

    // A revoked host loses its placement at once.
    central.admin_call("POST", &format!("/api/v1/devices/{}/revoke", b.id), None);
    wait_hosts(
        &central,
        "web",
        "depot",
        &a.id,
        "the revoked host is replaced",
    )
    .await;
    a.until_apps(&["web"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_host_gives_its_deployment_to_one_that_attests() {
    let central = start().await;
    site(&central, "yard", 48.14, 11.58, json!({}));
    let mut a = Device::at(&central, "SER-QUAR-A", "yard", json!({})).await;
    let mut b = Device::at(&central, "SER-QUAR-B", "yard", json!({})).await;
    if b.id < a.id {
        std::mem::swap(&mut a, &mut b);
    }
    deploy(&central, "web", json!({}));
    a.until_apps(&["web"]).await;

    // `a`'s boot attestation fails (as central's judge records it): the app moves to `b`, and
    // the scheduler says why. `a` stays online; its stream simply gets nothing new.
    central.record_attestation(&a.id, true).await;
    tokio::time::timeout(Duration::from_secs(10), b.until_apps(&["web"]))
        .await
        .expect("re-placed within 10 s");
    let view = deployment(&central, "web");
    assert_eq!(hosts(&view), [("yard".to_owned(), vec![b.id.clone()])]);
    assert!(unplaced(&central, &a.id).contains("quarantined"));

    // Nobody else can take `web` at a site whose only device is quarantined: it stays there.
    central.record_attestation(&b.id, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = deployment(&central, "web");
    assert_eq!(hosts(&view), [("yard".to_owned(), vec![b.id.clone()])]);

    // Once `a` verifies again it is a host like any other.
    central.record_attestation(&a.id, false).await;
    let taken_back = "the verified device takes the app back from the quarantined one";
    wait_hosts(&central, "web", "yard", &a.id, taken_back).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_and_no_clobbering_between_deployments_and_per_device_apps() {
    let central = start().await;
    site(&central, "shop", 40.4168, -3.7038, json!({}));
    let mut a = Device::at(&central, "SER-AA-A", "shop", json!({})).await;
    let mut b = Device::at(&central, "SER-AA-B", "shop", json!({})).await;
    if b.id < a.id {
        std::mem::swap(&mut a, &mut b);
    }
    // An operator's own app on `a`.
    let (status, body) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/devices/{}/apps/cache", a.id),
        Some(json!({ "compose_yaml": WEB })),
    );
    assert_eq!(status, 201, "{body}");
    a.until_apps(&["cache"]).await;

    // A deployment may not take the name of an operator's app.
    let (status, body) = central.call(
        &central.admin,
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "cache", "compose_yaml": WEB })),
    );
    assert_eq!(status, 409, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains(&a.id) && message.contains("cache"),
        "{message}"
    );

    // db lands on `a` (lowest id); web avoids db, so it lands on `b`.
    deploy(&central, "db", json!({}));
    let view = deploy(&central, "web", json!({ "avoid": ["db"] }));
    assert_eq!(hosts(&view), [("shop".to_owned(), vec![b.id.clone()])]);
    a.until_apps(&["cache", "db"]).await;
    b.until_apps(&["web"]).await;

    // With two hosts per site web still cannot join db.
    let (status, body) = central.call(
        &central.admin,
        "PUT",
        "/api/v1/deployments/web",
        Some(json!({ "compose_yaml": WEB, "placement": { "avoid": ["db"], "hosts_per_site": 2 }, "dry_run": true })),
    );
    assert_eq!(status, 200, "{body}");
    let DeploymentChanged::DryRun(plan) = read("PUT", "/api/v1/deployments/web", body) else {
        panic!("a dry run answers with the placement");
    };
    let shop = &plan.placement.sites[0];
    assert_eq!(shop.hosts, [b.id.clone()]);
    assert!(shop.shortfall.as_deref().unwrap().starts_with("1 of 2"));

    // Operators cannot change or remove a deployment's app, nor use its name on another device.
    let path = format!("/api/v1/devices/{}/apps/web", b.id);
    let (status, body) = central.call(
        &central.admin,
        "PUT",
        &path,
        Some(json!({ "compose_yaml": WEB })),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        error_message(&body).contains("placed by deployment"),
        "{body}"
    );
    let (status, _) = central.call(&central.admin, "DELETE", &path, None);
    assert_eq!(status, 409);
    let path = format!("/api/v1/devices/{}/apps/web", a.id);
    let (status, _) = central.call(
        &central.admin,
        "PUT",
        &path,
        Some(json!({ "compose_yaml": WEB })),
    );
    assert_eq!(status, 409, "the deployment's name is reserved");

    // Changing the deployment's Compose file reaches its host; removing db leaves `cache`.
    let web2 = WEB.replace("web:1", "web:2");
    let (status, body) = central.call(
        &central.admin,
        "PUT",
        "/api/v1/deployments/web",
        Some(json!({ "compose_yaml": web2, "placement": { "avoid": ["db"] } })),
    );
    assert_eq!(status, 200, "{body}");
    let d = b.next_desired().await;
    assert_eq!(d.apps[0].compose_yaml, web2);
    let removed: DeploymentRemoved = central.admin_read("DELETE", "/api/v1/deployments/db", None);
    assert_eq!(removed.removed_from, [a.id.clone()]);
    let d = a.until_apps(&["cache"]).await;
    assert_eq!(
        d.apps[0].compose_yaml, WEB,
        "the operator's app is untouched"
    );
    let apps: AppList = central.get(&format!("/api/v1/devices/{}/apps", a.id));
    assert!(apps.apps[0].app.deployment.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_what_to_fix() {
    let central = start().await;
    let device = Device::connect(&central, "SER-VAL").await;
    let call = |method: &str, path: &str, body: Value| {
        let (status, body) = central.call(&central.admin, method, path, Some(body));
        let message = if status >= 400 {
            error_message(&body)
        } else {
            String::new()
        };
        (status, message)
    };
    let (status, message) = call(
        "POST",
        "/api/v1/sites",
        json!({ "name": "north", "latitude": 91.0, "longitude": 0.0 }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("latitude 91"), "{message}");
    let (status, message) = call(
        "POST",
        "/api/v1/sites",
        json!({ "name": "North Site", "latitude": 1.0, "longitude": 0.0 }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("lower-case"), "{message}");
    site(&central, "north", 60.0, 10.0, json!({}));
    let (status, _) = call(
        "POST",
        "/api/v1/sites",
        json!({ "name": "north", "latitude": 1.0, "longitude": 0.0 }),
    );
    assert_eq!(status, 409);
    // A site created with its hosts: an unknown one fails the whole call, nothing is left.
    let (status, message) = call(
        "POST",
        "/api/v1/sites",
        json!({ "name": "south", "latitude": -40.0, "longitude": 0.0, "devices": [device.id, "dev_nope"] }),
    );
    assert_eq!(status, 400);
    assert!(
        message.contains("dev_nope") && message.contains("nothing was created"),
        "{message}"
    );
    assert_eq!(
        central
            .call(&central.admin, "GET", "/api/v1/sites/south", None)
            .0,
        404
    );
    let shown: DeviceDetail = central.get(&format!("/api/v1/devices/{}", device.id));
    assert_eq!(shown.device.device.site, None, "{shown:?}");
    let (status, created) = central.call(
        &central.admin,
        "POST",
        "/api/v1/sites",
        Some(
            json!({ "name": "south", "latitude": -40.0, "longitude": 0.0, "devices": [device.id] }),
        ),
    );
    assert_eq!(status, 201, "{created}");
    let created: SiteWithDevices = read("POST", "/api/v1/sites", created);
    assert_eq!(created.devices, std::slice::from_ref(&device.id));
    let shown: DeviceDetail = central.get(&format!("/api/v1/devices/{}", device.id));
    assert_eq!(shown.device.device.site.as_deref(), Some("south"));
    let (status, message) = call(
        "PUT",
        "/api/v1/sites/north",
        json!({ "latitude": 1.0, "longitude": 200.0 }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("longitude 200"), "{message}");

    // Polygons: crossing edges, too few points.
    let bow_tie = json!([
        { "latitude": 0, "longitude": 0 }, { "latitude": 1, "longitude": 1 },
        { "latitude": 0, "longitude": 1 }, { "latitude": 1, "longitude": 0 }
    ]);
    let (status, message) = call(
        "POST",
        "/api/v1/regions",
        json!({ "name": "knot", "points": bow_tie }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("crosses"), "{message}");
    let (status, message) = call(
        "POST",
        "/api/v1/regions",
        json!({ "name": "line", "points": [{ "latitude": 0, "longitude": 0 }, { "latitude": 1, "longitude": 1 }] }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("at least 3"), "{message}");

    // Device site: unknown site, unknown device; labels checked.
    let (status, message) = call(
        "PUT",
        &format!("/api/v1/devices/{}/site", device.id),
        json!({ "site": "mars" }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("unknown site \"mars\""), "{message}");
    let (status, _) = call(
        "PUT",
        "/api/v1/devices/dev_missing/site",
        json!({ "site": "north" }),
    );
    assert_eq!(status, 404);
    let (status, _) = call(
        "PUT",
        &format!("/api/v1/devices/{}/labels", device.id),
        json!({ "labels": { "bad key": "x" } }),
    );
    assert_eq!(status, 400);

    // Deployments: unknown site or region, bad Compose, bad counts, bad circle.
    let deployment =
        |placement: Value| json!({ "name": "web", "compose_yaml": WEB, "placement": placement });
    let (status, message) = call(
        "POST",
        "/api/v1/deployments",
        deployment(json!({ "sites": { "names": ["mars"] } })),
    );
    assert_eq!(status, 400);
    assert!(message.contains("unknown site mars"), "{message}");
    let (status, message) = call(
        "POST",
        "/api/v1/deployments",
        deployment(json!({ "sites": { "region": "nowhere" } })),
    );
    assert_eq!(status, 400);
    assert!(message.contains("unknown region"), "{message}");
    let (status, _) = call(
        "POST",
        "/api/v1/deployments",
        deployment(json!({ "hosts_per_site": 0 })),
    );
    assert_eq!(status, 400);
    let (status, message) = call(
        "POST",
        "/api/v1/deployments",
        deployment(json!({ "sites": { "within": { "latitude": 0, "longitude": 0, "km": 0 } } })),
    );
    assert_eq!(status, 400);
    assert!(message.contains("km"), "{message}");
    let (status, message) = call(
        "POST",
        "/api/v1/deployments",
        json!({ "name": "web", "compose_yaml": "services: [" }),
    );
    assert_eq!(status, 400);
    assert!(message.contains("compose_yaml"), "{message}");
    let viewer = central.api_token("watcher", "viewer");
    let (status, _) = central.call(
        &viewer,
        "POST",
        "/api/v1/deployments",
        Some(deployment(json!({}))),
    );
    assert_eq!(status, 403);
    let (status, _) = central.call(&viewer, "GET", "/api/v1/sites", None);
    assert_eq!(status, 200);

    // A site with devices cannot be removed; an empty one can.
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", device.id),
        Some(json!({ "site": "north" })),
    );
    let (status, message) = call("DELETE", "/api/v1/sites/north", json!(null));
    assert_eq!(status, 409);
    assert!(message.contains(&device.id), "{message}");
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", device.id),
        Some(json!({ "site": null })),
    );
    central.admin_call("DELETE", "/api/v1/sites/north", None);
    let audit: AuditLog = central.get("/api/v1/audit?limit=20");
    let actions: Vec<&str> = audit.events.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"site.delete") && actions.contains(&"device.site"),
        "{actions:?}"
    );
}

/// Issue 20: a deployment's app is derived, not copied. Changing its Compose file moves each
/// of its devices exactly one revision on (online ones get it pushed, an offline one on
/// reconnect), a change that leaves the Compose file alone moves none, and per-device changes,
/// removal and a new deployment of the same name keep counting up from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_change_moves_each_device_one_revision_without_per_device_writes() {
    let dir = tempfile::tempdir().unwrap();
    let central =
        TestCentral::start_with(dir, config_in(tempfile::tempdir().unwrap().path())).await;
    site(&central, "depot", 52.52, 13.40, json!({}));
    let mut a = Device::at(&central, "SER-DERIVED-A", "depot", json!({})).await;
    let mut b = Device::at(&central, "SER-DERIVED-B", "depot", json!({})).await;
    deploy(&central, "web", json!({ "hosts_per_site": 2 }));
    let placed = a.until_apps(&["web"]).await;
    b.until_apps(&["web"]).await;
    let revision_of = |d: &Device| {
        central
            .get::<DeviceDetail>(&format!("/api/v1/devices/{}", d.id))
            .device
            .device
            .desired_revision
    };
    let r_b = revision_of(&b);
    assert_eq!(revision_of(&a), placed.revision);

    // b goes offline; the app changes once.
    b.hang_up();
    let web2 = WEB.replace("web:1", "web:2");
    let body = json!({ "compose_yaml": web2, "placement": { "hosts_per_site": 2 } });
    central.admin_call("PUT", "/api/v1/deployments/web", Some(body.clone()));
    let changed = a.next_desired().await;
    assert_eq!(changed.revision, placed.revision + 1, "{changed:?}");
    assert_eq!(changed.apps[0].compose_yaml, web2);
    assert!(changed.apps[0].generation > placed.apps[0].generation);
    assert_eq!(revision_of(&a), placed.revision + 1);
    // No per-device audit record: the change is the deployment's one.
    let audit: AuditLog = central.get("/api/v1/audit?limit=50");
    let updates: Vec<&str> = audit
        .events
        .iter()
        .filter(|e| e.action.starts_with("deployment.") && e.action != "deployment.place")
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        updates,
        ["deployment.update", "deployment.create"],
        "{audit:?}"
    );
    // The offline device gets it on reconnect, one step on too.
    let back = b.reconnect(&central).await;
    assert_eq!(
        (back.revision, back.apps[0].compose_yaml.as_str()),
        (r_b + 1, web2.as_str())
    );

    // The same Compose file again (placement only): nobody moves.
    central.admin_call("PUT", "/api/v1/deployments/web", Some(body));
    assert_eq!(revision_of(&a), placed.revision + 1);
    assert_eq!(revision_of(&b), r_b + 1);

    // A per-device change counts on from the derived revision.
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/config", a.id),
        Some(json!({ "config": { "k": "v" } })),
    );
    let configured = a.next_desired().await;
    assert_eq!(configured.revision, placed.revision + 2);

    // Removal: one step on, the app gone; never back to an older revision.
    central.admin_call("DELETE", "/api/v1/deployments/web", None);
    let removed = a.until_apps(&[]).await;
    assert_eq!(removed.revision, placed.revision + 3, "{removed:?}");
    assert_eq!(revision_of(&a), placed.revision + 3);
    // A new deployment of the name starts from its own first Compose file, one step on again.
    deploy(&central, "web", json!({ "hosts_per_site": 2 }));
    let again = a.until_apps(&["web"]).await;
    assert_eq!(again.revision, placed.revision + 4);
    assert_eq!(again.apps[0].compose_yaml, WEB);
}
