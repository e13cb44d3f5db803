//! Variables for Compose files against a real central: operators set them for the fleet, a
//! site or a deployment; each app on each device gets them merged with central's built-ins
//! (fleet < deployment < site, built-ins last), shown by `GET /api/v1/devices/{id}/apps` and
//! sent in its desired state; a change bumps the revision of exactly the devices where an app's
//! variables change; bad names, values and scopes are refused with what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_api::{AppList, AuditLog, VariableList, VariableReply};
use cairn_proto::v1::{central_message, DesiredState};
use cairn_testsupport::central::{error_message, read, ConnectedDevice, TestCentral};
use serde_json::json;

/// A deployment's app that uses the site's name and an operator variable with a default.
const SHOP: &str = "services:\n  web:\n    image: busybox\n    environment:\n      SITE: ${CAIRN_SITE}\n      LEVEL: ${LEVEL:-none}\n";
/// A per-device app without variables that need setting.
const TOOL: &str =
    "services:\n  tool:\n    image: busybox\n    environment:\n      LEVEL: ${LEVEL:-none}\n";

/// The variables central gives app `app` on `device`.
fn variables(central: &TestCentral, device: &str, app: &str) -> BTreeMap<String, String> {
    let apps: AppList = central.get(&format!("/api/v1/devices/{device}/apps"));
    apps.apps
        .into_iter()
        .find(|a| a.app.name == app)
        .unwrap_or_else(|| panic!("device {device} has no app {app}"))
        .app
        .variables
}

fn revision(central: &TestCentral, device: &str) -> u64 {
    let detail: cairn_api::DeviceDetail = central.get(&format!("/api/v1/devices/{device}"));
    detail.device.device.desired_revision
}

/// The revisions of `devices`, in order.
fn revisions(central: &TestCentral, devices: &[&str]) -> Vec<u64> {
    devices.iter().map(|d| revision(central, d)).collect()
}

/// Which of `devices` got a new revision since `before`.
fn bumped(central: &TestCentral, devices: &[&str], before: &[u64]) -> Vec<bool> {
    revisions(central, devices)
        .iter()
        .zip(before)
        .map(|(now, then)| now > then)
        .collect()
}

fn set(central: &TestCentral, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    central.call(token, "PUT", "/api/v1/variables", Some(body))
}

fn set_ok(central: &TestCentral, token: &str, body: serde_json::Value) -> VariableReply {
    let (status, answer) = set(central, token, body);
    assert!(status == 200 || status == 201, "{status}: {answer}");
    read("PUT", "/api/v1/variables", answer)
}

/// The first desired state on a new Sync stream of `device`.
async fn desired_on_reconnect(central: &TestCentral, device: &mut ConnectedDevice) -> DesiredState {
    (device.tx, device.stream) = central.open_sync(&device.sim, &device.cert).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(central_message::Kind::Desired(d)) =
                device.stream.message().await.unwrap().unwrap().kind
            {
                break d;
            }
        }
    })
    .await
    .expect("a desired state within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn apps_get_built_ins_and_the_most_specific_operator_value() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let mut a = central.connect_device("SN-VAR-A").await;
    let b = central.connect_device("SN-VAR-B").await;
    let c = central.connect_device("SN-VAR-C").await;
    central.admin_call(
        "POST",
        "/api/v1/sites",
        Some(
            json!({ "name": "zurich-1", "latitude": 47.3769, "longitude": 8.0,
            "labels": { "country": "ch", "power.source": "solar" }, "devices": [a.id] }),
        ),
    );
    central.admin_call(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "bern", "latitude": 46.948, "longitude": 7.4474, "devices": [b.id] })),
    );
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/labels", a.id),
        Some(json!({ "labels": { "role": "gateway" } })),
    );
    // A deployment using ${CAIRN_SITE} is accepted: each device resolves it.
    central.admin_call(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "shop", "compose_yaml": SHOP })),
    );
    for device in [&a.id, &c.id] {
        central.admin_call(
            "PUT",
            &format!("/api/v1/devices/{device}/apps/tool"),
            Some(json!({ "compose_yaml": TOOL })),
        );
    }

    // Built-ins: the device, its labels, its site with location and labels, the app.
    let shop_a = variables(&central, &a.id, "shop");
    let expected: BTreeMap<String, String> = [
        ("CAIRN_APP", "shop"),
        ("CAIRN_DEVICE_ID", a.id.as_str()),
        ("CAIRN_DEVICE_LABEL_ROLE", "gateway"),
        ("CAIRN_SITE", "zurich-1"),
        ("CAIRN_SITE_LABEL_COUNTRY", "ch"),
        ("CAIRN_SITE_LABEL_POWER_SOURCE", "solar"),
        ("CAIRN_SITE_LATITUDE", "47.3769"),
        ("CAIRN_SITE_LONGITUDE", "8.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(shop_a, expected);
    let tool_c = variables(&central, &c.id, "tool");
    assert_eq!(tool_c.get("CAIRN_APP").map(String::as_str), Some("tool"));
    assert!(
        !tool_c.contains_key("CAIRN_SITE"),
        "c is at no site: {tool_c:?}"
    );

    // Fleet < deployment < site; a per-device app gets no deployment variables.
    let devices = [a.id.as_str(), b.id.as_str(), c.id.as_str()];
    let before = revisions(&central, &devices);
    let fleet = set_ok(
        &central,
        &operator,
        json!({ "scope": "fleet", "name": "LEVEL", "value": "fleet" }),
    );
    assert_eq!(fleet.devices_updated, 3);
    assert_eq!(bumped(&central, &devices, &before), [true, true, true]);
    let before = revisions(&central, &devices);
    let deployment = set_ok(
        &central,
        &operator,
        json!({ "scope": "deployment", "scope_name": "shop", "name": "LEVEL", "value": "deployment" }),
    );
    assert_eq!(deployment.devices_updated, 2, "the hosts of shop");
    assert_eq!(bumped(&central, &devices, &before), [true, true, false]);
    let before = revisions(&central, &devices);
    set_ok(
        &central,
        &operator,
        json!({ "scope": "site", "scope_name": "zurich-1", "name": "LEVEL", "value": "site" }),
    );
    assert_eq!(bumped(&central, &devices, &before), [true, false, false]);
    assert_eq!(variables(&central, &a.id, "shop")["LEVEL"], "site");
    assert_eq!(variables(&central, &a.id, "tool")["LEVEL"], "site");
    assert_eq!(variables(&central, &b.id, "shop")["LEVEL"], "deployment");
    assert_eq!(variables(&central, &c.id, "tool")["LEVEL"], "fleet");
    set_ok(
        &central,
        &operator,
        json!({ "scope": "deployment", "scope_name": "shop", "name": "ONLY_SHOP", "value": "x" }),
    );
    assert!(variables(&central, &a.id, "shop").contains_key("ONLY_SHOP"));
    assert!(!variables(&central, &a.id, "tool").contains_key("ONLY_SHOP"));

    // A deployment value hidden by a site's everywhere it runs bumps nobody there.
    let before = revisions(&central, &devices);
    set_ok(
        &central,
        &operator,
        json!({ "scope": "site", "scope_name": "bern", "name": "LEVEL", "value": "bern" }),
    );
    assert_eq!(bumped(&central, &devices, &before), [false, true, false]);
    let before = revisions(&central, &devices);
    let hidden = set_ok(
        &central,
        &operator,
        json!({ "scope": "deployment", "scope_name": "shop", "name": "LEVEL", "value": "hidden" }),
    );
    assert_eq!(hidden.devices_updated, 0);
    assert_eq!(bumped(&central, &devices, &before), [false, false, false]);
    // Setting the same value again changes nothing.
    let (status, answer) = set(
        &central,
        &operator,
        json!({ "scope": "fleet", "name": "LEVEL", "value": "fleet" }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(revisions(&central, &devices), before);

    // Removing the site's value falls back to the deployment's (and to the fleet's for the
    // per-device app).
    let (status, answer) = central.call(
        &operator,
        "DELETE",
        "/api/v1/variables?scope=site&scope_name=zurich-1&name=LEVEL",
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(bumped(&central, &devices, &before), [true, false, false]);
    assert_eq!(variables(&central, &a.id, "shop")["LEVEL"], "hidden");
    assert_eq!(variables(&central, &a.id, "tool")["LEVEL"], "fleet");

    // Changing what built-ins come from bumps the devices concerned.
    let before = revisions(&central, &devices);
    central.admin_call(
        "PUT",
        "/api/v1/sites/bern",
        Some(json!({ "labels": { "tier": "edge" }, "latitude": 46.948, "longitude": 7.4474 })),
    );
    assert_eq!(bumped(&central, &devices, &before), [false, true, false]);
    assert_eq!(
        variables(&central, &b.id, "shop")["CAIRN_SITE_LABEL_TIER"],
        "edge"
    );
    let before = revisions(&central, &devices);
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", c.id),
        Some(json!({ "site": "bern" })),
    );
    assert_eq!(bumped(&central, &devices, &before), [false, false, true]);
    assert_eq!(variables(&central, &c.id, "tool")["CAIRN_SITE"], "bern");

    // The list, by scope.
    let list: VariableList = central.get("/api/v1/variables?scope=deployment&scope_name=shop");
    let names: Vec<&str> = list.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["LEVEL", "ONLY_SHOP"]);
    let all: VariableList = central.get("/api/v1/variables");
    assert_eq!(all.variables.len(), 4);

    // The desired state a device receives carries the variables.
    let desired = desired_on_reconnect(&central, &mut a).await;
    let shop = desired.apps.iter().find(|app| app.name == "shop").unwrap();
    assert_eq!(shop.variables["CAIRN_SITE"], "zurich-1");
    assert_eq!(shop.variables["LEVEL"], "hidden");
    // Read in bulk (a deployment change pushed to many), each device gets the same.
    central
        .assert_bulk_desired_states_agree(&[&a.id, &b.id, &c.id])
        .await;

    // Audited with names and scopes, never values.
    let audit: AuditLog = central.get("/api/v1/audit?limit=200");
    let set_events: Vec<_> = audit
        .events
        .iter()
        .filter(|e| e.action.starts_with("variable."))
        .collect();
    assert!(set_events
        .iter()
        .any(|e| e.target == "site/zurich-1" && e.detail.contains("name=LEVEL")));
    assert!(set_events.iter().any(|e| e.action == "variable.delete"));
    assert!(set_events.iter().all(|e| !e.detail.contains("hidden")));

    // Removing a deployment or a site removes its variables.
    central.admin_call("DELETE", "/api/v1/deployments/shop", None);
    let list: VariableList = central.get("/api/v1/variables?scope=deployment");
    assert!(list.variables.is_empty(), "{list:?}");
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", b.id),
        Some(json!({ "site": null })),
    );
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/site", c.id),
        Some(json!({ "site": null })),
    );
    central.admin_call("DELETE", "/api/v1/sites/bern", None);
    let list: VariableList = central.get("/api/v1/variables?scope=site");
    assert!(list.variables.is_empty(), "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_variables_and_unresolved_per_device_apps_are_refused_with_what_to_do() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let viewer = central.api_token("look", "viewer");
    let device = central.connect_device("SN-VAR-BAD").await;
    let refused = |body: serde_json::Value, status: u16, expected: &str| {
        let (got, answer) = set(&central, &operator, body.clone());
        assert_eq!(got, status, "{body}: {answer}");
        let message = error_message(&answer);
        assert!(message.contains(expected), "{body}: {message}");
    };
    refused(
        json!({ "scope": "fleet", "name": "1BAD", "value": "x" }),
        400,
        "must be a letter or '_'",
    );
    refused(
        json!({ "scope": "fleet", "name": "A".repeat(65), "value": "x" }),
        400,
        "at most 64 characters",
    );
    refused(
        json!({ "scope": "fleet", "name": "CAIRN_SITE", "value": "x" }),
        400,
        "built-in variables",
    );
    refused(
        json!({ "scope": "fleet", "name": "BIG", "value": "x".repeat(4097) }),
        400,
        "at most 4096 bytes",
    );
    refused(
        json!({ "scope": "region", "name": "A", "value": "x" }),
        400,
        "`scope` must be fleet, site or deployment",
    );
    refused(
        json!({ "scope": "fleet", "scope_name": "x", "name": "A", "value": "x" }),
        400,
        "leave it empty for the fleet",
    );
    refused(
        json!({ "scope": "site", "scope_name": "nowhere", "name": "A", "value": "x" }),
        404,
        "no site named \"nowhere\"",
    );
    refused(
        json!({ "scope": "deployment", "scope_name": "ghost", "name": "A", "value": "x" }),
        404,
        "no deployment named \"ghost\"",
    );
    let (status, _) = set(
        &central,
        &viewer,
        json!({ "scope": "fleet", "name": "A", "value": "x" }),
    );
    assert_eq!(status, 403);
    let (status, _) = central.call(
        &viewer,
        "DELETE",
        "/api/v1/variables?scope=fleet&name=A",
        None,
    );
    assert_eq!(status, 403);
    let (status, answer) = central.call(
        &operator,
        "DELETE",
        "/api/v1/variables?scope=fleet&name=A",
        None,
    );
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = central.call(&viewer, "GET", "/api/v1/variables", None);
    assert_eq!(status, 200, "{answer}");

    // A per-device app is checked with that device's variables: no site, no CAIRN_SITE.
    let (status, answer) = central.call(
        &operator,
        "PUT",
        &format!("/api/v1/devices/{}/apps/shop", device.id),
        Some(json!({ "compose_yaml": SHOP })),
    );
    assert_eq!(status, 400, "{answer}");
    let message = error_message(&answer);
    assert!(
        message.contains("variable CAIRN_SITE is not set on this device"),
        "{message}"
    );
    // Host devices and capabilities may not come from variables.
    let (status, answer) = central.call(
        &operator,
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "probe", "compose_yaml":
            "services:\n  web:\n    image: busybox\n    cap_add: [\"${CAP}\"]\n" })),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        error_message(&answer).contains("uses a variable"),
        "{answer}"
    );
}
