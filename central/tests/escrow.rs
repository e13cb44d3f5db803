//! Recovery-key escrow against a real central: devices escrow over mTLS, only an admin reads the
//! key back, every read is audited, and the database alone does not hold the key in clear.

use cairn_api::{AuditLog, RecoveryKey};
use cairn_proto::v1::EscrowRecoveryKeyRequest;
use cairn_testsupport::central::{error_message, SimDevice, TestCentral};
use tonic::Code;

const KEY_1: &str = "000000-000011-000099-720885-000044-000055-000066-000077";
const KEY_2: &str = "111111-222222-333333-444444-555555-666666-777777-888888";
const UUID: &str = "5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f";

fn escrow(key: &str, uuid: &str) -> EscrowRecoveryKeyRequest {
    EscrowRecoveryKeyRequest {
        recovery_key: key.into(),
        luks_uuid: uuid.into(),
    }
}

fn audit_count(central: &TestCentral, action: &str) -> usize {
    let audit: AuditLog = central.get("/api/v1/audit");
    audit.events.iter().filter(|e| e.action == action).count()
}

/// Every byte central keeps on disk: the database, its WAL and the other files in data_dir
/// except the escrow key itself.
fn stored_bytes(central: &TestCentral) -> Vec<u8> {
    let mut all = Vec::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&central.config.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "escrow.key" {
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    match &central.config.database_url {
        None => assert!(
            names.iter().any(|n| n == "registry.sqlite3"),
            "no database among {names:?}"
        ),
        Some(url) => all.extend(postgres_bytes(url)),
    }
    all
}

/// Every value of every table of the PostgreSQL registry, raw (text as UTF-8, bytes as is).
fn postgres_bytes(url: &str) -> Vec<u8> {
    use cairn_central::store::db::{params, Value};
    let url = url.to_owned();
    // On a plain thread: the sync client must not run inside the test's runtime.
    std::thread::spawn(move || {
        let conn = cairn_central::store::connect_postgres(&url).unwrap();
        let tables: Vec<String> = conn
            .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'", params![])
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        assert!(tables.iter().any(|t| t == "recovery_keys"), "no registry tables among {tables:?}");
        let mut all = Vec::new();
        for table in tables {
            for row in conn.query(&format!("SELECT * FROM {table}"), params![]).unwrap() {
                for i in 0..row.len() {
                    match row.get::<_, Value>(i).unwrap() {
                        Value::Text(t) => all.extend(t.into_bytes()),
                        Value::Blob(b) => all.extend(b),
                        _ => {}
                    }
                }
            }
        }
        all
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_escrows_and_only_an_admin_reads_it_back_audited() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-ESCROW");
    let enrolled = device.enroll(&central, &token).await.unwrap();
    let id = enrolled.device_id.clone();
    let path = format!("/api/v1/devices/{id}/recovery-key");

    // Nothing escrowed yet: a 404 that says so.
    let (status, body) = central.call(&central.admin, "GET", &path, None);
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("not escrowed"), "{body}");

    let mut agent = central.agent(&device, &enrolled.certificate_der).await;
    agent
        .escrow_recovery_key(escrow(KEY_1, UUID))
        .await
        .unwrap();
    assert_eq!(audit_count(&central, "recovery_key.escrow"), 1);
    // The same key again is a no-op; malformed input is refused with what is expected.
    agent
        .escrow_recovery_key(escrow(KEY_1, UUID))
        .await
        .unwrap();
    assert_eq!(audit_count(&central, "recovery_key.escrow"), 1);
    let bad = agent
        .escrow_recovery_key(escrow("12345", UUID))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("8 groups of 6 digits"), "{bad:?}");
    let bad = agent
        .escrow_recovery_key(escrow(KEY_1, "not-a-uuid"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Only admins read it.
    let viewer = central.api_token("v", "viewer");
    let operator = central.api_token("o", "operator");
    assert_eq!(central.call(&viewer, "GET", &path, None).0, 403);
    assert_eq!(central.call(&operator, "GET", &path, None).0, 403);
    assert_eq!(audit_count(&central, "recovery_key.read"), 0);
    let shown: RecoveryKey = central.get(&path);
    assert_eq!(shown.recovery_key, KEY_1);
    assert_eq!(shown.luks_uuid, UUID);
    assert_eq!(shown.device_id, id);
    assert_eq!(audit_count(&central, "recovery_key.read"), 1);
    // Never cacheable.
    let response = tokio::task::block_in_place(|| {
        central
            .rest()
            .get(&central.rest_url(&path))
            .set("Authorization", &format!("Bearer {}", central.admin))
            .call()
            .unwrap()
    });
    assert_eq!(response.header("cache-control"), Some("no-store"));

    // A new key (after a recovery) replaces the old one.
    agent
        .escrow_recovery_key(escrow(KEY_2, UUID))
        .await
        .unwrap();
    assert_eq!(central.get::<RecoveryKey>(&path).recovery_key, KEY_2);

    // At rest: neither key is anywhere in central's files but the escrow key's ciphertext.
    let stored = stored_bytes(&central);
    // Control: the scan sees what is stored in clear (the LUKS UUID next to the sealed key).
    assert!(
        stored.windows(UUID.len()).any(|w| w == UUID.as_bytes()),
        "the scan does not see the database"
    );
    for key in [KEY_1, KEY_2] {
        assert!(
            !stored.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} stored in clear"
        );
        let digits = &key.as_bytes()[..13];
        assert!(
            !stored.windows(digits.len()).any(|w| w == digits),
            "part of {key} stored in clear"
        );
    }

    // Unknown devices: 404.
    assert_eq!(
        central
            .call(
                &central.admin,
                "GET",
                "/api/v1/devices/dev_nope/recovery-key",
                None
            )
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrowed_keys_survive_a_restart_and_a_replaced_escrow_key_fails_closed() {
    let mut central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let device = SimDevice::new("SER-ESCROW-2");
    let enrolled = device.enroll(&central, &token).await.unwrap();
    let path = format!("/api/v1/devices/{}/recovery-key", enrolled.device_id);
    central
        .agent(&device, &enrolled.certificate_der)
        .await
        .escrow_recovery_key(escrow(KEY_1, UUID))
        .await
        .unwrap();

    central.restart().await;
    assert_eq!(central.get::<RecoveryKey>(&path).recovery_key, KEY_1);

    // Someone replaces escrow.key: the stored key must not decrypt to garbage or leak.
    central.stop().await;
    std::fs::write(central.config.data_dir.join("escrow.key"), [7u8; 32]).unwrap();
    central.start_again().await;
    let (status, body) = central.call(&central.admin, "GET", &path, None);
    assert_eq!(status, 409, "{body}");
    assert!(
        error_message(&body).contains("restore escrow.key"),
        "{body}"
    );
    assert!(!body.to_string().contains(KEY_1));
}
