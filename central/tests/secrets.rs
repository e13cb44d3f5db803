//! App secrets against a real central: operators set values per deployment, site or device;
//! devices fetch them over mTLS with GetSecrets, which releases only the secrets of apps placed
//! on the caller, only once its boot attestation verified, picks the most specific value, and
//! audits each release; a change bumps the revision of exactly the devices using it. The
//! values are stored sealed: the registry file and central's data dir hold no plaintext.

use base64::Engine;
use cairn_api::{AppList, AuditLog, SecretList, SecretReply};
use cairn_central::store::{attestation, now_unix};
use cairn_proto::v1::{GetSecretsRequest, SecretValue};
use cairn_testsupport::central::{error_message, read, ConnectedDevice, TestCentral};
use serde_json::json;
use tonic::Code;

const COMPOSE: &str = "services:\n  web:\n    image: busybox\n    secrets: [db_password, api_key]\nsecrets:\n  db_password: {}\n  api_key: {}\n";
const DEPLOYMENT_VALUE: &[u8] = b"deployment-wide-password-91c3";
const SITE_VALUE: &[u8] = b"site-two-password-4e8a";
const DEVICE_VALUE: &[u8] = b"device-a-api-key-77d0";
const ROTATED_VALUE: &[u8] = b"rotated-password-2b6f";

fn b64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// Record, as central's judge would, that device `id` verified its boot just now.
async fn verify(central: &TestCentral, id: &str) {
    let id = id.to_owned();
    central
        .c()
        .shared
        .store
        .run(move |conn| {
            attestation::record_verified(conn, &id, now_unix(), "0 80000008 aa\n", "", "1.0")
        })
        .await
        .unwrap();
}

/// GetSecrets as `device` for app `app`: the values by name, or the refusal.
async fn fetch(
    central: &TestCentral,
    device: &ConnectedDevice,
    app: &str,
    names: &[&str],
) -> Result<Vec<SecretValue>, tonic::Status> {
    let mut client = central.agent(&device.sim, &device.cert).await;
    client
        .get_secrets(GetSecretsRequest {
            app: app.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
        })
        .await
        .map(|r| r.into_inner().secrets)
}

fn value_of<'a>(values: &'a [SecretValue], name: &str) -> Option<&'a [u8]> {
    values
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.as_slice())
}

fn create(central: &TestCentral, token: &str, body: serde_json::Value) -> SecretReply {
    let (status, answer) = central.call(token, "POST", "/api/v1/secrets", Some(body));
    assert_eq!(status, 201, "{answer}");
    read("POST", "/api/v1/secrets", answer)
}

/// The secret versions central names for `app` on `device`.
fn versions(central: &TestCentral, device: &str) -> Vec<(String, u64)> {
    let apps: AppList = central.get(&format!("/api/v1/devices/{device}/apps"));
    apps.apps
        .iter()
        .flat_map(|a| a.app.secrets.iter().map(|s| (s.name.clone(), s.version)))
        .collect()
}

fn revision(central: &TestCentral, device: &str) -> u64 {
    let detail: cairn_api::DeviceDetail = central.get(&format!("/api/v1/devices/{device}"));
    detail.device.device.desired_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn secrets_reach_only_attested_devices_that_run_the_app_most_specific_value_first() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let a = central.connect_device("SN-SEC-A").await;
    let b = central.connect_device("SN-SEC-B").await;
    let c = central.connect_device("SN-SEC-C").await;
    for (site, device) in [("one", &a.id), ("two", &b.id)] {
        central.admin_call(
            "POST",
            "/api/v1/sites",
            Some(json!({ "name": site, "latitude": 47.0, "longitude": 8.0, "devices": [device] })),
        );
    }
    central.admin_call(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "shop", "compose_yaml": COMPOSE })),
    );
    assert!(versions(&central, &c.id).is_empty(), "c is at no site");

    // The deployment's value, site two's own, and device A's api_key.
    let wide = create(
        &central,
        &operator,
        json!({ "name": "db_password", "deployment": "shop", "value_base64": b64(DEPLOYMENT_VALUE) }),
    );
    assert_eq!(wide.devices, 2, "both hosts of the deployment");
    let site = create(
        &central,
        &operator,
        json!({ "name": "db_password", "deployment": "shop", "site": "two", "value_base64": b64(SITE_VALUE) }),
    );
    assert_eq!(site.devices, 1);
    let revision_b = revision(&central, &b.id);
    let revision_a = revision(&central, &a.id);
    create(
        &central,
        &operator,
        json!({ "name": "api_key", "deployment": "shop", "device": a.id, "value_base64": b64(DEVICE_VALUE) }),
    );
    assert_eq!(revision(&central, &b.id), revision_b, "b does not use it");
    assert!(
        revision(&central, &a.id) > revision_a,
        "a is sent the new version"
    );
    let mut a_versions = versions(&central, &a.id);
    a_versions.sort();
    assert_eq!(a_versions.len(), 2, "{a_versions:?}");
    assert_eq!(
        versions(&central, &b.id),
        vec![("db_password".into(), site.secret.version)]
    );

    // Software-key devices cannot attest: refused, with why.
    let refused = fetch(&central, &a, "shop", &["db_password"])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("attest"),
        "{}",
        refused.message()
    );

    verify(&central, &a.id).await;
    verify(&central, &b.id).await;
    verify(&central, &c.id).await;
    let got = fetch(
        &central,
        &a,
        "shop",
        &["db_password", "api_key", "db_password"],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(value_of(&got, "db_password"), Some(DEPLOYMENT_VALUE));
    assert_eq!(value_of(&got, "api_key"), Some(DEVICE_VALUE));
    let got = fetch(&central, &b, "shop", &["db_password", "api_key"])
        .await
        .unwrap();
    assert_eq!(
        value_of(&got, "db_password"),
        Some(SITE_VALUE),
        "the site's value wins"
    );
    assert_eq!(
        value_of(&got, "api_key"),
        None,
        "a's own value is a's alone"
    );

    // Not placed there: nothing, whatever it asks.
    let not_placed = fetch(&central, &c, "shop", &["db_password"])
        .await
        .unwrap_err();
    assert_eq!(not_placed.code(), Code::NotFound);
    let bad = fetch(&central, &a, "shop", &["../etc"]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        fetch(&central, &a, "shop", &names)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Rotation: a new version for the devices that use that value, the new value released.
    let before = versions(&central, &a.id);
    let (status, answer) = central.call(
        &operator,
        "PUT",
        &format!("/api/v1/secrets/{}", wide.secret.id),
        Some(json!({ "value_base64": b64(ROTATED_VALUE) })),
    );
    assert_eq!(status, 200, "{answer}");
    let rotated: SecretReply = read("PUT", "/api/v1/secrets/{id}", answer);
    assert_eq!(rotated.devices, 1, "b uses its site's value, not this one");
    assert_ne!(versions(&central, &a.id), before);
    let got = fetch(&central, &a, "shop", &["db_password"]).await.unwrap();
    assert_eq!(value_of(&got, "db_password"), Some(ROTATED_VALUE));
    assert_eq!(got[0].version, rotated.secret.version);

    // Site two's value removed: b falls back to the deployment's, under a new version number.
    let (status, _) = central.call(
        &operator,
        "DELETE",
        &format!("/api/v1/secrets/{}", site.secret.id),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        versions(&central, &b.id),
        vec![("db_password".into(), rotated.secret.version)]
    );
    let got = fetch(&central, &b, "shop", &["db_password"]).await.unwrap();
    assert_eq!(value_of(&got, "db_password"), Some(ROTATED_VALUE));
    // Read in bulk (a deployment change pushed to many), each device gets the same.
    central
        .assert_bulk_desired_states_agree(&[&a.id, &b.id, &c.id])
        .await;

    // A failed attestation stops the release.
    central.record_attestation(&b.id, true).await;
    let failed = fetch(&central, &b, "shop", &["db_password"])
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::FailedPrecondition);
    assert!(failed.message().contains("failed"), "{}", failed.message());

    // Each release is audited, by device, with names and versions only.
    let audit: AuditLog = central.get("/api/v1/audit?limit=200");
    let releases: Vec<_> = audit
        .events
        .iter()
        .filter(|e| e.action == "secret.release")
        .collect();
    assert!(releases.len() >= 4, "{releases:?}");
    assert!(releases
        .iter()
        .any(|e| e.actor == format!("device:{}", a.id)));
    for action in ["secret.create", "secret.update", "secret.delete"] {
        assert!(audit.events.iter().any(|e| e.action == action), "{action}");
    }

    // The list names scopes and versions, never values; the deployment's removal takes its
    // secrets along.
    let list: SecretList = central.get("/api/v1/secrets?deployment=shop");
    assert_eq!(list.secrets.len(), 2, "{list:?}");
    central.admin_call("DELETE", "/api/v1/deployments/shop", None);
    let list: SecretList = central.get("/api/v1/secrets");
    assert!(list.secrets.is_empty(), "{list:?}");

    // At rest: no value in central's data dir, the registry database included.
    for value in [DEPLOYMENT_VALUE, SITE_VALUE, DEVICE_VALUE, ROTATED_VALUE] {
        let found = cairn_testsupport::leaks::files_containing(&central.config.data_dir, value);
        assert!(
            found.is_empty(),
            "a secret value in plain text in {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_request_is_refused_with_what_to_fix() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let viewer = central.api_token("eyes", "viewer");
    let device = central.connect_device("SN-SEC-BAD").await;
    let cases = [
        (
            json!({ "name": "x", "value_base64": b64(b"v") }),
            400,
            "either `deployment`",
        ),
        (
            json!({ "name": "../x", "deployment": "shop", "value_base64": b64(b"v") }),
            400,
            "`name`",
        ),
        (
            json!({ "name": "x", "deployment": "shop", "value_base64": "%%%" }),
            400,
            "not base64",
        ),
        (
            json!({ "name": "x", "deployment": "shop", "value_base64": b64(&[7u8; 32 * 1024 + 1]) }),
            400,
            "at most 32768 bytes",
        ),
        (
            json!({ "name": "x", "deployment": "shop", "value_base64": b64(b"v") }),
            404,
            "no deployment",
        ),
        (
            json!({ "name": "x", "deployment": "shop", "site": "s", "device": device.id, "value_base64": b64(b"v") }),
            400,
            "not both",
        ),
        (
            json!({ "name": "x", "app": "shop", "value_base64": b64(b"v") }),
            400,
            "needs `device`",
        ),
        (
            json!({ "name": "x", "app": "shop", "device": "dev_nope", "value_base64": b64(b"v") }),
            404,
            "no device",
        ),
        (
            json!({ "name": "x", "deployment": "shop", "value_base64": b64(b"v"), "extra": 1 }),
            400,
            "unknown field",
        ),
    ];
    for (body, status, wanted) in cases {
        let (got, answer) = central.call(&operator, "POST", "/api/v1/secrets", Some(body.clone()));
        assert_eq!(got, status, "{body}: {answer}");
        let message = error_message(&answer);
        assert!(message.contains(wanted), "{body}: {message}");
        assert!(
            !message.contains("dgo="),
            "an error repeats no value: {message}"
        );
    }
    let (got, _) = central.call(
        &viewer,
        "POST",
        "/api/v1/secrets",
        Some(json!({ "name": "x", "app": "a", "device": device.id, "value_base64": b64(b"v") })),
    );
    assert_eq!(got, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_login_is_checked_kept_to_its_kind_and_named_with_it() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let device = central.connect_device("SN-SEC-REG").await;
    let login = |password: &str| {
        b64(cairn_compose::RegistryLogin {
            registry: "registry.example.com:5000".into(),
            username: Some("puller".into()),
            password: Some(password.into()),
            ca_pem: None,
        }
        .to_json()
        .as_slice())
    };
    let scope = json!({ "name": "pull", "app": "shop", "device": device.id });
    let with = |extra: serde_json::Value| {
        let mut body = scope.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // Not a login: refused, and the refusal repeats nothing of the value.
    let bad = b64(br#"{"registry":"registry.example.com","password":"leaky-9f1e"}"#);
    let (status, answer) = central.call(
        &operator,
        "POST",
        "/api/v1/secrets",
        Some(with(json!({ "kind": "registry", "value_base64": bad }))),
    );
    assert_eq!(status, 400, "{answer}");
    let message = error_message(&answer);
    assert!(
        message.contains("registry login") && message.contains("together"),
        "{message}"
    );
    assert!(!message.contains("leaky"), "{message}");
    let (status, answer) = central.call(
        &operator,
        "POST",
        "/api/v1/secrets",
        Some(with(json!({ "kind": "vault", "value_base64": bad }))),
    );
    assert_eq!(status, 400, "{answer}");

    // A login is kept, with its kind, and the device's desired state names the kind.
    let created = create(
        &central,
        &operator,
        with(json!({ "kind": "registry", "value_base64": login("first-7a1c") })),
    );
    assert_eq!(created.secret.kind, cairn_api::SecretKind::Registry);
    central.admin_call(
        "PUT",
        &format!("/api/v1/devices/{}/apps/shop", device.id),
        Some(json!({ "compose_yaml": "services:\n  web:\n    image: registry.example.com:5000/shop/web:1\n" })),
    );
    let apps: AppList = central.get(&format!("/api/v1/devices/{}/apps", device.id));
    let secrets = &apps.apps[0].app.secrets;
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(secrets[0].kind, cairn_api::SecretKind::Registry);
    let list: SecretList = central.get("/api/v1/secrets?app=shop");
    assert_eq!(list.secrets[0].kind, cairn_api::SecretKind::Registry);

    // An update must be a login too; one name keeps one kind across scopes.
    let id = &created.secret.id;
    let (status, answer) = central.call(
        &operator,
        "PUT",
        &format!("/api/v1/secrets/{id}"),
        Some(json!({ "value_base64": b64(b"plain-value") })),
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = central.call(
        &operator,
        "PUT",
        &format!("/api/v1/secrets/{id}"),
        Some(json!({ "value_base64": login("second-3b0d") })),
    );
    assert_eq!(status, 200, "{answer}");
    central.admin_call(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "cafe", "compose_yaml": "services:\n  web:\n    image: busybox\n" })),
    );
    create(
        &central,
        &operator,
        json!({ "name": "pull", "deployment": "cafe", "value_base64": b64(b"a file") }),
    );
    let (status, answer) = central.call(
        &operator,
        "POST",
        "/api/v1/secrets",
        Some(
            json!({ "name": "pull", "deployment": "cafe", "device": device.id, "kind": "registry",
                     "value_base64": login("third-44e2") }),
        ),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        error_message(&answer).contains("one name has one kind"),
        "{answer}"
    );
}
