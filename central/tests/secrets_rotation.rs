//! Rotating the secrets' key-encryption key while a real central serves: the rotation (the
//! library call `cairn-central rotate-secrets-key` makes) re-wraps every row under a new key
//! without touching the values, every value still opens with the keys on disk, and the running
//! central, which loaded its keys before, still releases secrets to devices and seals new
//! versions under the new key.

use base64::Engine;
use cairn_api::SecretReply;
use cairn_central::secrets::rotation::{rotate_secrets_key, RotationMode};
use cairn_central::secrets::{SecretVault, RETIRED_KEYS_DIR};
use cairn_central::store::secrets as store_secrets;
use cairn_central::store::{attestation, now_unix};
use cairn_proto::v1::GetSecretsRequest;
use cairn_testsupport::central::{read, ConnectedDevice, TestCentral};
use serde_json::json;

const COMPOSE: &str = "services:\n  web:\n    image: busybox\n    secrets: [db_password, api_key]\nsecrets:\n  db_password: {}\n  api_key: {}\n";

fn b64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

fn create(central: &TestCentral, token: &str, body: serde_json::Value) -> SecretReply {
    let (status, answer) = central.call(token, "POST", "/api/v1/secrets", Some(body));
    assert_eq!(status, 201, "{answer}");
    read("POST", "/api/v1/secrets", answer)
}

/// GetSecrets as `device` for the app `shop`: (name, value) sorted by name.
async fn fetch(central: &TestCentral, device: &ConnectedDevice) -> Vec<(String, Vec<u8>)> {
    let mut client = central.agent(&device.sim, &device.cert).await;
    let mut values: Vec<(String, Vec<u8>)> = client
        .get_secrets(GetSecretsRequest {
            app: "shop".into(),
            names: vec!["db_password".into(), "api_key".into()],
        })
        .await
        .expect("the device gets its secrets")
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    values.sort();
    values
}

/// The key id a secret's row names now, and its value opened with a vault freshly loaded from
/// `data_dir` (what a restarted central would do).
async fn stored(central: &TestCentral, id: &str) -> (String, Vec<u8>) {
    let shared = central.c().shared.clone();
    let key = id.to_owned();
    let (version, sealed) = shared
        .store
        .read(move |conn| store_secrets::sealed(conn, &key))
        .await
        .unwrap()
        .expect("the row exists");
    let fresh = SecretVault::load_or_create(&shared.config.data_dir).unwrap();
    let value = fresh.open(id, version, &sealed).unwrap().to_vec();
    (sealed.kek_id, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_rotation_while_central_serves_rewraps_every_row_and_every_value_still_opens() {
    let central = TestCentral::start().await;
    let operator = central.api_token("ops", "operator");
    let device = central.connect_device("SN-ROT-A").await;
    central.admin_call(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "one", "latitude": 47.0, "longitude": 8.0, "devices": [device.id] })),
    );
    central.admin_call(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "shop", "compose_yaml": COMPOSE })),
    );
    let values: [(&str, serde_json::Value, &[u8]); 3] = [
        (
            "db_password",
            json!({ "deployment": "shop" }),
            b"deployment-password-1",
        ),
        (
            "db_password",
            json!({ "deployment": "shop", "site": "one" }),
            b"site-password-2",
        ),
        (
            "api_key",
            json!({ "deployment": "shop", "device": device.id }),
            b"device-api-key-3",
        ),
    ];
    let mut ids = Vec::new();
    for (name, scope, value) in &values {
        let mut body = scope.clone();
        body["name"] = json!(name);
        body["value_base64"] = json!(b64(value));
        ids.push((create(&central, &operator, body).secret.id, value.to_vec()));
    }
    let id = device.id.clone();
    central
        .c()
        .shared
        .store
        .run(move |conn| {
            attestation::record_verified(conn, &id, now_unix(), "0 80000008 aa\n", "", "1.0")
        })
        .await
        .unwrap();
    let expected = vec![
        ("api_key".to_owned(), b"device-api-key-3".to_vec()),
        ("db_password".to_owned(), b"site-password-2".to_vec()),
    ];
    assert_eq!(fetch(&central, &device).await, expected);

    let shared = central.c().shared.clone();
    let old = shared.vault.current_id();
    let config = shared.config.clone();
    let mut progress = Vec::new();
    let report = tokio::task::spawn_blocking(move || {
        rotate_secrets_key(&config, RotationMode::NewKey, |p| progress.push(p))
            .map(|r| (r, progress))
    })
    .await
    .unwrap();
    let (report, progress) = report.expect("the rotation succeeds");
    let rotated = report.rotated.clone().expect("a new key");
    assert_eq!(rotated.old, old);
    assert_ne!(rotated.new, old);
    assert_eq!(report.rewrapped, 3);
    assert_eq!(
        progress.last().map(|p| (p.rewrapped, p.total)),
        Some((3, 3))
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.rows_by_key.into_iter().collect::<Vec<_>>(),
        [(rotated.new.clone(), 3)]
    );
    assert_eq!(
        report.unused_retired,
        [shared
            .config
            .data_dir
            .join(RETIRED_KEYS_DIR)
            .join(format!("{old}.key"))]
    );
    for (id, value) in &ids {
        assert_eq!(
            stored(&central, id).await,
            (rotated.new.clone(), value.clone())
        );
    }

    // The running central loaded its keys before the rotation: it still releases the values
    // (re-reading the keys once) and seals a new version under the new key.
    assert_eq!(fetch(&central, &device).await, expected);
    let (site_id, _) = &ids[1];
    let (status, answer) = central.call(
        &operator,
        "PUT",
        &format!("/api/v1/secrets/{site_id}"),
        Some(json!({ "value_base64": b64(b"site-password-after-rotation") })),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        stored(&central, site_id).await,
        (
            rotated.new.clone(),
            b"site-password-after-rotation".to_vec()
        )
    );
    assert_eq!(
        fetch(&central, &device).await,
        vec![
            ("api_key".to_owned(), b"device-api-key-3".to_vec()),
            (
                "db_password".to_owned(),
                b"site-password-after-rotation".to_vec()
            ),
        ]
    );

    // Nothing is left to re-wrap, and a second run says so.
    let config = shared.config.clone();
    let again = tokio::task::spawn_blocking(move || {
        rotate_secrets_key(&config, RotationMode::RewrapOnly, |_| {})
    })
    .await
    .unwrap()
    .unwrap();
    assert!(again.rotated.is_none());
    assert_eq!(again.rewrapped, 0);
    assert_eq!(again.current, rotated.new);
}
