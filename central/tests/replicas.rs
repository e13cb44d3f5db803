//! Two central replicas on one PostgreSQL database (issue 7): a device's stream on one replica
//! gets changes made through the other, presence is shared, revocation reaches the stream
//! wherever it is, and when its replica dies the device carries on with the other.
//!
//! Needs PostgreSQL: runs when `CAIRN_TEST_DATABASE_URL` is set (`cargo xtask test` runs the
//! central suite a second time against the test cluster of `dev/test-postgres.sh`); on the
//! SQLite run there is nothing to test (one central owns its file) and it says so.

use std::time::Duration;

use cairn_api::{DeviceDetail, DeviceLogs};
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, CentralMessage, DesiredState, LogReply,
};
use cairn_testsupport::central::{config_in, TestCentral, DATABASE_URL_ENV};
use serde_json::json;

/// The next DesiredState on `stream` within `within`, skipping heartbeat acks.
async fn next_desired(
    stream: &mut tonic::Streaming<CentralMessage>,
    within: Duration,
) -> DesiredState {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("a desired state within the deadline")
            .expect("stream healthy")
            .expect("stream open");
        if let Some(central_message::Kind::Desired(desired)) = message.kind {
            return desired;
        }
    }
}

/// Wait up to 10 s until `central` reports device `id` online (or offline).
async fn until_online_on(central: &TestCentral, id: &str, online: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let device: DeviceDetail = central.get(&format!("/api/v1/devices/{id}"));
        if device.device.device.online == online {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device never showed online={online}: {device:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_stay_consistent() {
    if std::env::var(DATABASE_URL_ENV).map_or(true, |u| u.is_empty()) {
        eprintln!("replicas test: {DATABASE_URL_ENV} is not set; replicas need PostgreSQL (cargo xtask test runs this on it)");
        return;
    }
    // Replica A creates the database, CA and admin token; replica B shares its data_dir (CA,
    // escrow key and bundles are files there) and its database.
    let a = TestCentral::start().await;
    let mut config_b = config_in(tempfile::tempdir().unwrap().path());
    config_b.data_dir = a.config.data_dir.clone();
    config_b.database_url = a.config.database_url.clone();
    config_b.remote_presence_seconds = 5;
    let mut b = TestCentral::start_with(tempfile::tempdir().unwrap(), config_b).await;
    assert_eq!(
        a.admin, b.admin,
        "both replicas use the one bootstrap admin token"
    );

    // Enrolled through A, streaming to B.
    let (_, token) = a.token("auto", None, None);
    let sim = cairn_testsupport::central::SimDevice::new("SER-REPLICA");
    let enrolled = sim.enroll(&a, &token).await.unwrap();
    let id = enrolled.device_id.clone();
    let (tx, mut stream) = b.open_sync(&sim, &enrolled.certificate_der).await;
    let first = next_desired(&mut stream, Duration::from_secs(10)).await;

    // A change made on A reaches the stream held by B.
    let body = json!({ "config": { "greeting": "from-a" } });
    let (status, answer) = a.call(
        &a.admin,
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    let pushed = next_desired(&mut stream, Duration::from_secs(10)).await;
    assert!(
        pushed.revision > first.revision,
        "{pushed:?} after {first:?}"
    );
    assert_eq!(
        pushed.config.get("greeting").map(String::as_str),
        Some("from-a")
    );

    // An app deployed on A arrives too (the whole desired state, read from the database).
    let compose = "services:\n  web:\n    image: registry.local/busybox:1\n    command: [\"sleep\", \"3600\"]\n";
    let (status, answer) = a.call(
        &a.admin,
        "PUT",
        &format!("/api/v1/devices/{id}/apps/web"),
        Some(json!({ "compose_yaml": compose })),
    );
    assert!(status == 200 || status == 201, "{status} {answer}");
    let pushed = next_desired(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        pushed
            .apps
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["web"],
        "{pushed:?}"
    );
    assert_eq!(
        pushed.config.get("greeting").map(String::as_str),
        Some("from-a"),
        "config kept with the app"
    );

    // A deployment made on A is placed on the device on B, and a change of its app made on A
    // reaches it too: one nudge for the whole deployment, B pushes its own devices.
    a.admin_call(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "depot", "latitude": 52.5, "longitude": 13.4 })),
    );
    a.admin_call(
        "PUT",
        &format!("/api/v1/devices/{id}/site"),
        Some(json!({ "site": "depot" })),
    );
    let svc = "services:\n  svc:\n    image: registry.local/busybox:1\n";
    a.admin_call(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "svc", "compose_yaml": svc, "placement": {} })),
    );
    let svc_of = |d: &DesiredState| {
        d.apps
            .iter()
            .find(|app| app.name == "svc")
            .map(|app| app.compose_yaml.clone())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let placed = loop {
        let desired = next_desired(&mut stream, deadline - tokio::time::Instant::now()).await;
        if svc_of(&desired).is_some() {
            break desired;
        }
    };
    let svc2 = svc.replace("busybox:1", "busybox:2");
    a.admin_call(
        "PUT",
        "/api/v1/deployments/svc",
        Some(json!({ "compose_yaml": svc2, "placement": {} })),
    );
    let changed = next_desired(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(svc_of(&changed).as_deref(), Some(svc2.as_str()));
    assert_eq!(changed.revision, placed.revision + 1);

    // A sees the device online although its stream is on B (B writes presence, A reads it).
    until_online_on(&a, &id, true).await;

    // PostgreSQL drops every connection of this database (a restart, a failover): both
    // replicas reconnect by themselves, and a change made on A still reaches the device on B
    // (B's listener re-listens and pushes its devices' stored state again).
    let url = a.config.database_url.clone().unwrap();
    let dbname = cairn_central::store::postgres_tls::parse_url(&url)
        .unwrap()
        .config
        .get_dbname()
        .unwrap()
        .to_owned();
    let killed = std::thread::spawn(move || {
        let admin = std::env::var(DATABASE_URL_ENV).unwrap();
        let conn = cairn_central::store::connect_postgres(&admin).unwrap();
        let rows = conn
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ?1 AND pid <> pg_backend_pid()",
                [dbname.as_str()],
            )
            .unwrap();
        rows.len()
    })
    .join()
    .unwrap();
    assert!(
        killed >= 4,
        "expected the registry, notify and listen connections of both replicas, killed {killed}"
    );
    let body = json!({ "config": { "greeting": "after-outage" } });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The first call on a dropped connection may fail; the next one reconnects.
        let (status, answer) = a.call(
            &a.admin,
            "PUT",
            &format!("/api/v1/devices/{id}/config"),
            Some(body.clone()),
        );
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A did not recover from the dropped connections: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let pushed = loop {
        let desired = next_desired(&mut stream, deadline - tokio::time::Instant::now()).await;
        if desired.config.get("greeting").map(String::as_str) == Some("after-outage") {
            break desired;
        }
    };

    // A's Prometheus metrics: no stream here, one device online in the fleet.
    let metrics = tokio::task::block_in_place(|| {
        a.rest()
            .get(&a.rest_url("/metrics"))
            .set("Authorization", &format!("Bearer {}", a.admin))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    });
    let sample = |name: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    assert_eq!(sample("cairn_devices_online"), Some(0.0), "{metrics}");
    assert_eq!(sample("cairn_fleet_devices_online"), Some(1.0), "{metrics}");

    // Logs on demand asked on A travel to the device's stream on B, and its answer back.
    let ask = {
        let url = a.rest_url(&format!("/api/v1/devices/{id}/logs?lines=3"));
        let agent = a.rest();
        let token = a.admin.clone();
        tokio::task::spawn_blocking(move || {
            agent
                .get(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .call()
                .unwrap()
                .into_json::<DeviceLogs>()
                .unwrap()
        })
    };
    let request = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = stream.message().await.unwrap().unwrap();
            if let Some(central_message::Kind::Logs(request)) = message.kind {
                return request;
            }
        }
    })
    .await
    .expect("the log request reaches the stream on B");
    assert_eq!(request.lines, 3);
    let reply = LogReply {
        request_id: request.id,
        text: "line from B's stream\n".into(),
        truncated: false,
        error: String::new(),
    };
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Reply(reply)),
    })
    .await
    .unwrap();
    let answer = ask.await.unwrap();
    assert_eq!(answer.text, "line from B's stream\n", "{answer:?}");

    // B dies (the device sees its stream end and lets go of it): the device reconnects to A
    // and gets its whole state there.
    drop((tx, stream));
    b.stop().await;
    // B let go of the stream on the way down: A sees the device offline (without waiting for
    // B's liveness to lapse).
    until_online_on(&a, &id, false).await;
    let (_tx_a, mut stream_a) = a.open_sync(&sim, &enrolled.certificate_der).await;
    let on_a = next_desired(&mut stream_a, Duration::from_secs(10)).await;
    assert_eq!(on_a.revision, pushed.revision);
    assert_eq!(on_a.apps.len(), 2, "web and the deployment's svc");

    // B comes back; the device moves to B again; revoking on A ends the stream on B.
    b.start_again().await;
    drop(stream_a);
    let (_tx_b, mut stream_b) = b.open_sync(&sim, &enrolled.certificate_der).await;
    next_desired(&mut stream_b, Duration::from_secs(10)).await;
    let (status, answer) = a.call(
        &a.admin,
        "POST",
        &format!("/api/v1/devices/{id}/revoke"),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream_b.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("B ends the revoked device's stream within 10 s");
    let status = ended.expect("ended with a status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

/// Issue 20: four replicas started at the same instant on an empty data_dir and one empty
/// database agree on one fleet CA, one escrow key and one admin token. A device enrolled
/// through each replica streams to the next (its certificate chains to the CA every replica
/// holds), and a recovery key escrowed through each is read back through another (sealed under
/// the escrow key every replica holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_replicas_started_at_once_share_one_ca_and_escrow_key() {
    if std::env::var(DATABASE_URL_ENV).map_or(true, |u| u.is_empty()) {
        eprintln!("four-replica test: {DATABASE_URL_ENV} is not set; replicas need PostgreSQL (cargo xtask test runs this on it)");
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let first = config_in(shared.path());
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config_in(dir.path());
            config.data_dir = first.data_dir.clone();
            config.database_url = first.database_url.clone();
            tokio::spawn(TestCentral::start_with(dir, config))
        })
        .collect();
    let mut replicas = Vec::new();
    for start in starts {
        replicas.push(start.await.expect("a replica starts"));
    }
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r.ca_pem, replicas[0].ca_pem, "replica {i}'s CA");
        assert_eq!(r.admin, replicas[0].admin, "replica {i}'s admin token");
    }
    let tokens: cairn_api::ApiTokenList = replicas[0].get("/api/v1/api-tokens");
    assert_eq!(
        tokens.api_tokens.len(),
        1,
        "one bootstrap token: {tokens:?}"
    );

    let (_, token) = replicas[0].token("auto", None, None);
    for i in 0..4 {
        let (through, next) = (&replicas[i], &replicas[(i + 1) % 4]);
        let sim = cairn_testsupport::central::SimDevice::new(&format!("SER-FOUR-{i}"));
        let enrolled = sim.enroll(through, &token).await.unwrap();
        let (_tx, mut stream) = next.open_sync(&sim, &enrolled.certificate_der).await;
        next_desired(&mut stream, Duration::from_secs(10)).await;
        // Each group a multiple of 11, as the key format checks.
        let key = format!(
            "{:06}-000011-000099-720885-000044-000055-000066-000077",
            i * 11
        );
        through
            .agent(&sim, &enrolled.certificate_der)
            .await
            .escrow_recovery_key(cairn_proto::v1::EscrowRecoveryKeyRequest {
                recovery_key: key.clone(),
                luks_uuid: "5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f".into(),
            })
            .await
            .unwrap();
        let shown: cairn_api::RecoveryKey = next.get(&format!(
            "/api/v1/devices/{}/recovery-key",
            enrolled.device_id
        ));
        assert_eq!(
            shown.recovery_key,
            key,
            "escrowed through {i}, read through {}",
            (i + 1) % 4
        );
    }
    for mut r in replicas {
        r.stop().await;
    }
}
