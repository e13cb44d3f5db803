//! The OpenAPI document is the contract of what central sends: every operation it lists is
//! called here against a real central with real data (devices enrolled and reporting over gRPC,
//! signed bundles, a rollout and a dry run, sites, regions, deployments, apps, logs read from a
//! device, escrowed recovery keys, error answers), and every answer body is validated strictly
//! against the schema of its operation and status (see `openapi/validator.rs`): a field the
//! schema lacks, a missing required field or a wrong type fails. Answers that are not JSON must
//! carry the documented content type. Finally the operations called must be exactly those of
//! the document, so a new route fails here until this test calls it.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use cairn_api::{
    AppList, BundleUploaded, CreatedApiToken, CreatedEnrollmentToken, DeploymentReply,
    DeviceDetail, RolloutReply, SecretReply,
};
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, AppStatus, CentralMessage, DesiredState,
    EscrowRecoveryKeyRequest, FilesystemUsage, Heartbeat, HostMetrics, LogReply, OsStatus,
    OsUpdatePhase, ServiceHealth, ServiceState, ServiceStatus, TemperatureReading,
};
use cairn_testsupport::central::{heartbeat_acked, ConnectedDevice, SimDevice, TestCentral};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::Streaming;

#[path = "openapi/validator.rs"]
mod validator;

// Each test binary uses part of the shared fixture.
#[allow(dead_code)]
#[path = "fixtures/signed_bundles.rs"]
mod signed_bundles;

/// Operations this test cannot call in a host test, with the reason; empty: it calls them all.
const NOT_EXERCISED: &[(&str, &str, &str)] = &[];

/// One answer, already checked against the document.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    /// The body read as an API type (it was validated already, so this cannot fail quietly).
    fn read<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer does not read as {}: {e}: {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn json(&self) -> Value {
        self.read()
    }

    /// Panics unless the status is `wanted`.
    fn expect(self, wanted: u16) -> Self {
        assert_eq!(
            self.status,
            wanted,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// Calls central and checks each answer against the document, noting which operations ran.
struct Contract<'a> {
    central: &'a TestCentral,
    document: Value,
    called: BTreeSet<(String, String)>,
    /// Every answer body, to search for secret values.
    answers: Vec<(String, Vec<u8>)>,
    /// The concrete paths GET was called on.
    read_paths: BTreeSet<String>,
}

impl<'a> Contract<'a> {
    fn new(central: &'a TestCentral) -> Self {
        let document: Value = serde_json::from_str(cairn_central::api::document_json()).unwrap();
        Contract {
            central,
            document,
            called: BTreeSet::new(),
            answers: Vec::new(),
            read_paths: BTreeSet::new(),
        }
    }

    /// A call with an optional JSON body.
    fn call(
        &mut self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let content_type = body.as_ref().map(|_| "application/json");
        self.send(token, method, path, content_type, body.as_deref(), &[])
    }

    /// A call as the bootstrap admin.
    fn admin(&mut self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let admin = self.central.admin.clone();
        self.call(Some(&admin), method, path, body)
    }

    fn send(
        &mut self,
        token: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let (status, got_type, bytes) = tokio::task::block_in_place(|| {
            let mut request = self
                .central
                .rest()
                .request(method, &self.central.rest_url(path))
                .timeout(Duration::from_secs(60));
            if let Some(token) = token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(content_type) = content_type {
                request = request.set("Content-Type", content_type);
            }
            for (name, value) in headers {
                request = request.set(name, value);
            }
            let result = match body {
                Some(body) => request.send_bytes(body),
                None => request.call(),
            };
            let response = match result {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            let status = response.status();
            let got_type = response
                .header("content-type")
                .unwrap_or_default()
                .to_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).unwrap();
            (status, got_type, bytes)
        });
        self.check(method, path, status, &got_type, &bytes);
        if method == "GET" {
            self.read_paths.insert(path.to_owned());
        }
        self.answers
            .push((format!("{method} {path} {status}"), bytes.clone()));
        Answer {
            status,
            body: bytes,
        }
    }

    /// The document's path template `path` falls under (most literal segments win).
    fn template(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap();
        let segments: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
            })
            .max_by_key(|template| template.split('/').filter(|p| !p.starts_with('{')).count())
            .unwrap_or_else(|| panic!("{path} is under no path of the document"))
            .clone()
    }

    fn check(&mut self, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) {
        let template = self.template(path);
        let method = method.to_ascii_lowercase();
        let operation = &self.document["paths"][&template][&method];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        self.called.insert((method.clone(), template.clone()));
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} answered {status}, which the document does not list for it: {}",
                    String::from_utf8_lossy(body)
                )
            });
        let content = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {template} {status} documents no body"));
        let Some(media) = content.get(content_type) else {
            panic!(
                "{method} {path} {status} answered {content_type:?}; documented: {:?}",
                content.keys().collect::<Vec<_>>()
            );
        };
        if content_type != "application/json" {
            return;
        }
        let value: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: body is not JSON ({e})"));
        let errors = validator::validate(
            &value,
            &media["schema"],
            &self.document["components"]["schemas"],
        );
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match its schema:\n  {}\nbody: {value:#}",
            errors.join("\n  ")
        );
    }

    /// No answer so far, and no answer to any GET path called, as each of `tokens`, holds any of
    /// `values`: secrets go in and never come back out, whatever the role.
    fn assert_no_answer_holds(&mut self, tokens: &[&str], values: &[&[u8]]) {
        for token in tokens {
            for path in self.read_paths.clone() {
                let (status, body) = tokio::task::block_in_place(|| {
                    let response = self
                        .central
                        .rest()
                        .get(&self.central.rest_url(&path))
                        .set("Authorization", &format!("Bearer {token}"))
                        .call();
                    let response = match response {
                        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                        Err(e) => panic!("GET {path}: {e}"),
                    };
                    let status = response.status();
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).unwrap();
                    (status, bytes)
                });
                self.answers
                    .push((format!("GET {path} {status} (again)"), body));
            }
        }
        for (call, body) in &self.answers {
            for value in values {
                assert!(
                    !body.windows(value.len()).any(|w| w == *value),
                    "{call} answered a secret value"
                );
            }
        }
    }

    /// Every operation of the document was called (or is listed as not callable, with why).
    fn assert_every_operation_called(&self) {
        let mut documented = BTreeSet::new();
        for (path, item) in self.document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let excused: BTreeSet<(String, String)> = NOT_EXERCISED
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        let missing: Vec<_> = documented
            .difference(&self.called)
            .filter(|op| !excused.contains(op))
            .collect();
        assert!(
            missing.is_empty(),
            "operations of the document this test does not call: {missing:?}; call them in \
             every_documented_operation_answers_as_documented (or list them in NOT_EXERCISED with the reason)"
        );
        let unknown: Vec<_> = self.called.difference(&documented).collect();
        assert!(unknown.is_empty(), "called but not documented: {unknown:?}");
    }
}

/// A device speaking the agent protocol over its Sync stream.
struct Device {
    id: String,
    sim: SimDevice,
    cert: Vec<u8>,
    tx: mpsc::Sender<AgentMessage>,
    stream: Streaming<CentralMessage>,
    seq: u64,
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
        Device {
            id,
            sim,
            cert,
            tx,
            stream,
            seq: 0,
        }
    }

    /// Send a heartbeat and wait for its ack; returns a desired state pushed meanwhile.
    async fn heartbeat(&mut self, heartbeat: Heartbeat) -> Option<DesiredState> {
        self.seq += 1;
        let heartbeat = Heartbeat {
            seq: self.seq,
            ..heartbeat
        };
        heartbeat_acked(&self.tx, &mut self.stream, heartbeat).await
    }

    /// The next desired state that asks for an OS update, within 10 s.
    async fn desired_os(&mut self) -> DesiredState {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let message = self.stream.message().await.unwrap().unwrap();
                if let Some(central_message::Kind::Desired(d)) = message.kind {
                    if d.os.is_some() {
                        break d;
                    }
                }
            }
        })
        .await
        .expect("an OS update is pushed within 10 s")
    }

    async fn report_os(&mut self, desired: &DesiredState, phase: OsUpdatePhase) {
        let os = desired.os.clone().unwrap();
        self.heartbeat(Heartbeat {
            os: Some(OsStatus {
                version: "1.0".into(),
                booted_slot: "a".into(),
                phase: phase as i32,
                target_version: os.version,
                bundle_sha256: os.bundle_sha256,
                rollout_id: os.rollout_id,
                bytes_done: os.bundle_size / 2,
                bytes_total: os.bundle_size,
                bytes_fetched: os.bundle_size / 4,
                error: String::new(),
            }),
            ..Default::default()
        })
        .await;
    }
}

/// Host metrics with every optional part present, and a sensor that gave no number.
fn host_metrics() -> HostMetrics {
    HostMetrics {
        cpu_percent: Some(12.34),
        load1: 0.5,
        memory_total_bytes: 1000,
        memory_available_bytes: 250,
        filesystems: vec![FilesystemUsage {
            mount_point: "/data".into(),
            used_bytes: 50,
            total_bytes: 100,
        }],
        temperatures: vec![
            TemperatureReading {
                sensor: "thermal_zone0".into(),
                celsius: 48.5,
            },
            TemperatureReading {
                sensor: "hwmon1/temp1".into(),
                celsius: f64::NAN,
            },
        ],
        uptime_seconds: 3600,
    }
}

fn app_report(name: &str, generation: u64) -> AppStatus {
    AppStatus {
        name: name.into(),
        generation,
        desired_revision: generation,
        error: String::new(),
        services: vec![ServiceStatus {
            name: "web".into(),
            state: ServiceState::Running as i32,
            health: ServiceHealth::Healthy as i32,
            restarts: 1,
            message: String::new(),
        }],
    }
}

const COMPOSE: &str = "services:\n  web:\n    image: busybox\n";

/// Secret values set in the test; no answer may hold them.
const SECRET_ONE: &[u8] = b"first-secret-value-5be1c9";
const SECRET_TWO: &[u8] = b"second-secret-value-0d7f42";

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn every_documented_operation_answers_as_documented() {
    let Some(fixture) = signed_bundles::bundles() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = signed_bundles::config_for(dir.path(), fixture);
    config.log_request_timeout_seconds = 2;
    let central = TestCentral::start_with(dir, config).await;
    let mut api = Contract::new(&central);

    // Service: health, the document (the one generated from the code), console, metrics.
    api.call(None, "GET", "/healthz", None).expect(200);
    let served = api
        .call(None, "GET", "/api/v1/openapi.json", None)
        .expect(200);
    assert_eq!(
        served.json(),
        api.document,
        "central serves the generated document"
    );
    for page in ["/", "/console", "/console/", "/console/console.js"] {
        api.call(None, "GET", page, None).expect(200);
    }
    api.call(None, "GET", "/console/nothing.js", None)
        .expect(404);
    api.admin("GET", "/metrics", None).expect(200);
    api.call(None, "GET", "/api/v1/devices", None).expect(401);

    // API tokens and roles.
    let created: CreatedApiToken = api
        .admin(
            "POST",
            "/api/v1/api-tokens",
            Some(json!({ "name": "ops", "role": "operator" })),
        )
        .expect(201)
        .read();
    let operator = created.secret;
    let viewer: CreatedApiToken = api
        .admin(
            "POST",
            "/api/v1/api-tokens",
            Some(json!({ "name": "eyes", "role": "viewer" })),
        )
        .expect(201)
        .read();
    let viewer = viewer.secret;
    api.admin(
        "POST",
        "/api/v1/api-tokens",
        Some(json!({ "name": "x", "role": "root" })),
    )
    .expect(400);
    api.call(
        Some(&operator),
        "POST",
        "/api/v1/api-tokens",
        Some(json!({ "name": "x", "role": "viewer" })),
    )
    .expect(403);
    api.admin("GET", "/api/v1/api-tokens", None).expect(200);
    let brief: CreatedApiToken = api
        .admin(
            "POST",
            "/api/v1/api-tokens",
            Some(json!({ "name": "brief", "role": "viewer", "expires_in_seconds": 3600 })),
        )
        .expect(201)
        .read();
    let revoke_brief = format!("/api/v1/api-tokens/{}/revoke", brief.api_token.id);
    api.call(Some(&operator), "POST", &revoke_brief, None)
        .expect(403);
    api.admin("POST", &revoke_brief, None).expect(200);
    api.admin("POST", "/api/v1/api-tokens/api_nothing/revoke", None)
        .expect(404);
    api.call(Some(&brief.secret), "GET", "/api/v1/devices", None)
        .expect(401);

    // Enrollment tokens and claims.
    let token: CreatedEnrollmentToken = api
        .admin(
            "POST",
            "/api/v1/enrollment-tokens",
            Some(
                json!({ "name": "fleet", "policy": "manual", "max_uses": 5, "require_tpm": false }),
            ),
        )
        .expect(201)
        .read();
    api.admin(
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "x", "policy": "auto", "colour": "red" })),
    )
    .expect(400);
    api.call(
        Some(&viewer),
        "POST",
        "/api/v1/enrollment-tokens",
        Some(json!({ "name": "x", "policy": "auto" })),
    )
    .expect(403);
    api.admin("GET", "/api/v1/enrollment-tokens", None)
        .expect(200);
    api.admin(
        "POST",
        "/api/v1/claims",
        Some(json!({ "serial": "SER-CLAIMED" })),
    )
    .expect(201);
    api.admin(
        "POST",
        "/api/v1/claims",
        Some(json!({ "serial": "SER-CLAIMED" })),
    )
    .expect(409);
    api.admin(
        "POST",
        "/api/v1/claims",
        Some(json!({ "tpm_ek_sha256": "abc" })),
    )
    .expect(400);
    api.admin("GET", "/api/v1/claims", None).expect(200);

    // A pending device (manual token), approved; the token then revoked.
    let pending = SimDevice::new("SER-PENDING");
    let enrolled = pending.enroll(&central, &token.secret).await.unwrap();
    let pending_id = enrolled.device_id;
    api.admin(
        "POST",
        &format!("/api/v1/devices/{pending_id}/approve"),
        None,
    )
    .expect(200);
    api.admin(
        "POST",
        &format!("/api/v1/enrollment-tokens/{}/revoke", token.token.id),
        None,
    )
    .expect(200);
    api.admin("POST", "/api/v1/enrollment-tokens/tok_nope/revoke", None)
        .expect(404);

    // A connected device reporting host metrics, so every optional part of a device shows.
    let mut device = Device::connect(&central, "SER-CONTRACT").await;
    let id = device.id.clone();
    device
        .heartbeat(Heartbeat {
            host: Some(host_metrics()),
            ..Default::default()
        })
        .await;
    api.admin("GET", "/api/v1/devices", None).expect(200);
    let detail: DeviceDetail = api
        .admin("GET", &format!("/api/v1/devices/{id}"), None)
        .expect(200)
        .read();
    assert!(detail.device.host.is_some() && !detail.events.is_empty());
    api.admin("GET", "/api/v1/devices/dev_nope", None)
        .expect(404);
    api.admin(
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(json!({ "config": { "tier": "edge" } })),
    )
    .expect(200);
    api.admin(
        "PUT",
        &format!("/api/v1/devices/{id}/config"),
        Some(json!({ "config": { "": "x" } })),
    )
    .expect(400);
    api.admin(
        "PUT",
        &format!("/api/v1/devices/{id}/labels"),
        Some(json!({ "labels": { "gpu": "yes" } })),
    )
    .expect(200);

    // Attestation: a failed quote whose measurements wait, accepted, refused once nothing
    // waits, then reset.
    central.record_attestation(&id, true).await;
    let attestation_path = format!("/api/v1/devices/{id}/attestation");
    api.admin("GET", &attestation_path, None).expect(200);
    api.admin("GET", "/api/v1/devices/dev_nope/attestation", None)
        .expect(404);
    api.call(
        Some(&operator),
        "POST",
        &format!("{attestation_path}/accept"),
        None,
    )
    .expect(403);
    api.admin("POST", &format!("{attestation_path}/accept"), None)
        .expect(200);
    api.admin("POST", &format!("{attestation_path}/accept"), None)
        .expect(409);
    api.admin("POST", &format!("{attestation_path}/reset"), None)
        .expect(200);
    // Verified again: a quarantined device would take no deployment below.
    central.record_attestation(&id, false).await;

    // Recovery key: none yet, then escrowed over mTLS and read back.
    let key_path = format!("/api/v1/devices/{id}/recovery-key");
    api.admin("GET", &key_path, None).expect(404);
    central
        .agent(&device.sim, &device.cert)
        .await
        .escrow_recovery_key(EscrowRecoveryKeyRequest {
            recovery_key: "000000-000011-000099-720885-000044-000055-000066-000077".into(),
            luks_uuid: "5a9c0d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f".into(),
        })
        .await
        .unwrap();
    api.admin("GET", &key_path, None).expect(200);
    api.call(Some(&operator), "GET", &key_path, None)
        .expect(403);

    // Apps on the device, with the status it reports.
    let app_path = format!("/api/v1/devices/{id}/apps/shop");
    api.admin("PUT", &app_path, Some(json!({ "compose_yaml": COMPOSE })))
        .expect(201);
    api.admin("PUT", &app_path, Some(json!({ "compose_yaml": COMPOSE })))
        .expect(200);
    api.admin(
        "PUT",
        &app_path,
        Some(json!({ "compose_yaml": "services: [" })),
    )
    .expect(400);
    let apps: AppList = api
        .admin("GET", &format!("/api/v1/devices/{id}/apps"), None)
        .expect(200)
        .read();
    let generation = apps.apps[0].app.generation;
    device
        .heartbeat(Heartbeat {
            apps: vec![app_report("shop", generation)],
            ..Default::default()
        })
        .await;
    let apps: AppList = api
        .admin("GET", &format!("/api/v1/devices/{id}/apps"), None)
        .expect(200)
        .read();
    assert!(apps.apps[0].status.is_some() && apps.reported_at.is_some());

    // A secret of the app: its value goes in, and no answer ever carries it (checked at the end
    // over every answer, for every role).
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let secret_body =
        json!({ "name": "api_key", "device": id, "app": "shop", "value_base64": b64(SECRET_ONE) });
    let created: SecretReply = api
        .call(
            Some(&operator),
            "POST",
            "/api/v1/secrets",
            Some(secret_body.clone()),
        )
        .expect(201)
        .read();
    assert_eq!(created.devices, 1, "the device running the app is sent it");
    api.call(
        Some(&operator),
        "POST",
        "/api/v1/secrets",
        Some(secret_body.clone()),
    )
    .expect(409);
    api.call(Some(&viewer), "POST", "/api/v1/secrets", Some(secret_body))
        .expect(403);
    api.admin(
        "POST",
        "/api/v1/secrets",
        Some(json!({ "name": "api_key", "value_base64": b64(b"x") })),
    )
    .expect(400);
    api.admin(
        "POST",
        "/api/v1/secrets",
        Some(json!({ "name": "x", "deployment": "nothing", "value_base64": b64(b"x") })),
    )
    .expect(404);
    let apps: AppList = api
        .call(
            Some(&viewer),
            "GET",
            &format!("/api/v1/devices/{id}/apps"),
            None,
        )
        .expect(200)
        .read();
    assert_eq!(apps.apps[0].app.secrets.len(), 1, "{:?}", apps.apps[0].app);
    assert_eq!(apps.apps[0].app.secrets[0].version, created.secret.version);
    api.call(Some(&viewer), "GET", "/api/v1/secrets", None)
        .expect(200);
    api.call(
        Some(&viewer),
        "GET",
        &format!("/api/v1/secrets?device={id}&app=shop"),
        None,
    )
    .expect(200);
    let secret_path = format!("/api/v1/secrets/{}", created.secret.id);
    let updated: SecretReply = api
        .call(
            Some(&operator),
            "PUT",
            &secret_path,
            Some(json!({ "value_base64": b64(SECRET_TWO) })),
        )
        .expect(200)
        .read();
    assert!(updated.secret.version > created.secret.version);
    api.call(
        Some(&viewer),
        "PUT",
        &secret_path,
        Some(json!({ "value_base64": b64(b"x") })),
    )
    .expect(403);
    api.admin(
        "PUT",
        "/api/v1/secrets/sec_nope",
        Some(json!({ "value_base64": b64(b"x") })),
    )
    .expect(404);
    let doomed: SecretReply = api
        .admin(
            "POST",
            "/api/v1/secrets",
            Some(json!({ "name": "doomed", "device": id, "app": "shop", "value_base64": b64(b"gone") })),
        )
        .expect(201)
        .read();
    api.admin(
        "DELETE",
        &format!("/api/v1/secrets/{}", doomed.secret.id),
        None,
    )
    .expect(200);
    api.admin("DELETE", "/api/v1/secrets/sec_nope", None)
        .expect(404);

    // Variables for Compose files: the fleet's reach the device running the app.
    let variable = json!({ "scope": "fleet", "name": "GREETING", "value": "hello" });
    let set: cairn_api::VariableReply = api
        .call(
            Some(&operator),
            "PUT",
            "/api/v1/variables",
            Some(variable.clone()),
        )
        .expect(201)
        .read();
    assert_eq!(set.devices_updated, 1, "the device running the app");
    api.call(
        Some(&operator),
        "PUT",
        "/api/v1/variables",
        Some(variable.clone()),
    )
    .expect(200);
    api.call(Some(&viewer), "PUT", "/api/v1/variables", Some(variable))
        .expect(403);
    api.admin(
        "PUT",
        "/api/v1/variables",
        Some(json!({ "scope": "fleet", "name": "CAIRN_SITE", "value": "x" })),
    )
    .expect(400);
    api.admin(
        "PUT",
        "/api/v1/variables",
        Some(json!({ "scope": "site", "scope_name": "nowhere", "name": "A", "value": "x" })),
    )
    .expect(404);
    let variables: cairn_api::VariableList = api
        .call(Some(&viewer), "GET", "/api/v1/variables?scope=fleet", None)
        .expect(200)
        .read();
    assert_eq!(variables.variables.len(), 1);
    api.call(Some(&viewer), "GET", "/api/v1/variables?scope=moon", None)
        .expect(400);
    let apps: AppList = api
        .call(
            Some(&viewer),
            "GET",
            &format!("/api/v1/devices/{id}/apps"),
            None,
        )
        .expect(200)
        .read();
    assert_eq!(apps.apps[0].app.variables["GREETING"], "hello");
    api.call(
        Some(&viewer),
        "DELETE",
        "/api/v1/variables?scope=fleet&name=GREETING",
        None,
    )
    .expect(403);
    api.admin("DELETE", "/api/v1/variables?scope=fleet", None)
        .expect(400);
    api.call(
        Some(&operator),
        "DELETE",
        "/api/v1/variables?scope=fleet&name=GREETING",
        None,
    )
    .expect(200);
    api.admin(
        "DELETE",
        "/api/v1/variables?scope=fleet&name=GREETING",
        None,
    )
    .expect(404);

    api.admin("DELETE", &app_path, None).expect(200);
    api.admin("DELETE", &app_path, None).expect(404);

    // Sites and regions; the device at a site.
    api.admin(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "zurich-1", "latitude": 47.37, "longitude": 8.54, "labels": { "country": "ch" }, "devices": [id] })),
    )
    .expect(201);
    api.admin(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "zurich-1", "latitude": 0, "longitude": 0 })),
    )
    .expect(409);
    api.admin(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "north", "latitude": 95, "longitude": 0 })),
    )
    .expect(400);
    api.admin(
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "geneva", "latitude": 46.2, "longitude": 6.14 })),
    )
    .expect(201);
    api.admin("GET", "/api/v1/sites", None).expect(200);
    api.admin("GET", "/api/v1/sites/zurich-1", None).expect(200);
    api.admin("GET", "/api/v1/sites/nowhere", None).expect(404);
    api.admin(
        "PUT",
        "/api/v1/sites/geneva",
        Some(json!({ "latitude": 46.2, "longitude": 6.15, "labels": { "country": "ch" } })),
    )
    .expect(200);
    api.admin(
        "PUT",
        &format!("/api/v1/devices/{pending_id}/site"),
        Some(json!({ "site": "geneva" })),
    )
    .expect(200);
    api.admin("DELETE", "/api/v1/sites/geneva", None)
        .expect(409);
    api.admin(
        "PUT",
        &format!("/api/v1/devices/{pending_id}/site"),
        Some(json!({ "site": null })),
    )
    .expect(200);
    api.admin("DELETE", "/api/v1/sites/geneva", None)
        .expect(200);
    let alps = json!({ "name": "alps", "points": [
        { "latitude": 46.0, "longitude": 6.0 },
        { "latitude": 48.0, "longitude": 6.0 },
        { "latitude": 48.0, "longitude": 11.0 },
        { "latitude": 46.0, "longitude": 11.0 }
    ]});
    api.admin("POST", "/api/v1/regions", Some(alps.clone()))
        .expect(201);
    api.admin("POST", "/api/v1/regions", Some(alps)).expect(409);
    api.admin("GET", "/api/v1/regions", None).expect(200);
    api.admin("GET", "/api/v1/regions/alps", None).expect(200);
    api.admin("GET", "/api/v1/regions/atlantis", None)
        .expect(404);

    // A deployment placed by region on the device, which then reports its app.
    let placement =
        json!({ "sites": { "region": "alps" }, "devices": { "labels": { "gpu": "yes" } } });
    api.admin(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "web", "compose_yaml": COMPOSE, "placement": placement, "dry_run": true })),
    )
    .expect(200);
    let deployed: DeploymentReply = api
        .admin(
            "POST",
            "/api/v1/deployments",
            Some(json!({ "name": "web", "compose_yaml": COMPOSE, "placement": placement })),
        )
        .expect(201)
        .read();
    let host = &deployed.deployment.sites[0].hosts[0];
    device
        .heartbeat(Heartbeat {
            apps: vec![app_report("web", host.generation)],
            ..Default::default()
        })
        .await;
    let shown: DeploymentReply = api
        .admin("GET", "/api/v1/deployments/web", None)
        .expect(200)
        .read();
    assert!(shown.deployment.sites[0].hosts[0].status.is_some());
    api.admin(
        "POST",
        "/api/v1/deployments",
        Some(json!({ "name": "web", "compose_yaml": COMPOSE })),
    )
    .expect(409);
    api.admin("GET", "/api/v1/deployments", None).expect(200);
    api.admin("GET", "/api/v1/deployments/nothing", None)
        .expect(404);
    api.admin(
        "PUT",
        "/api/v1/deployments/web",
        Some(json!({ "compose_yaml": COMPOSE, "placement": { "hosts_per_site": 2 }, "dry_run": true })),
    )
    .expect(200);
    api.admin(
        "PUT",
        "/api/v1/deployments/web",
        Some(json!({ "compose_yaml": COMPOSE, "placement": placement })),
    )
    .expect(200);
    api.admin(
        "PUT",
        "/api/v1/deployments/web",
        Some(json!({ "compose_yaml": COMPOSE, "placement": { "hosts": 1 } })),
    )
    .expect(400);
    api.admin("DELETE", "/api/v1/regions/alps", None)
        .expect(409);
    api.admin("DELETE", "/api/v1/deployments/web", None)
        .expect(200);
    api.admin("DELETE", "/api/v1/regions/alps", None)
        .expect(200);

    // Bundles: upload (new, then the same again), list, show, content whole and ranged.
    let upload = |api: &mut Contract, bytes: &[u8]| {
        api.send(
            Some(&central.admin),
            "POST",
            "/api/v1/bundles",
            Some("application/octet-stream"),
            Some(bytes),
            &[],
        )
    };
    let v2: BundleUploaded = upload(&mut api, &fixture.v2).expect(201).read();
    upload(&mut api, &fixture.v2).expect(200);
    upload(&mut api, b"not a bundle").expect(400);
    let sha = v2.bundle.sha256;
    api.admin("GET", "/api/v1/bundles", None).expect(200);
    api.admin("GET", &format!("/api/v1/bundles/{sha}"), None)
        .expect(200);
    api.admin("GET", "/api/v1/bundles/not-a-sha", None)
        .expect(400);
    api.admin("GET", &format!("/api/v1/bundles/{}", "0".repeat(64)), None)
        .expect(404);
    let content = format!("/api/v1/bundles/{sha}/content");
    let admin = central.admin.clone();
    api.send(Some(&admin), "GET", &content, None, None, &[])
        .expect(200);
    let part = api
        .send(
            Some(&admin),
            "GET",
            &content,
            None,
            None,
            &[("Range", "bytes=0-9")],
        )
        .expect(206);
    assert_eq!(part.body, fixture.v2[..10]);
    api.send(
        Some(&admin),
        "GET",
        &content,
        None,
        None,
        &[("Range", "bytes=0-1,5-6")],
    )
    .expect(416);

    // Rollouts: the device runs 1.0; a dry run, then one paused, resumed and aborted while the
    // device downloads, then one rolled back while it installs.
    device
        .heartbeat(Heartbeat {
            os: Some(OsStatus {
                version: "1.0".into(),
                phase: OsUpdatePhase::Idle as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let request =
        json!({ "bundle_sha256": sha, "selector": { "devices": [id] }, "waves": { "canary": 0 } });
    let mut dry_run = request.clone();
    dry_run["dry_run"] = json!(true);
    api.admin("POST", "/api/v1/rollouts", Some(dry_run))
        .expect(200);
    api.admin(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": "0".repeat(64), "selector": { "all": true } })),
    )
    .expect(404);
    api.admin(
        "POST",
        "/api/v1/rollouts",
        Some(json!({ "bundle_sha256": sha, "selector": {} })),
    )
    .expect(400);
    let first: RolloutReply = api
        .admin("POST", "/api/v1/rollouts", Some(request.clone()))
        .expect(201)
        .read();
    let first = first.rollout.rollout.id;
    let desired = device.desired_os().await;
    device.report_os(&desired, OsUpdatePhase::Downloading).await;
    let shown: RolloutReply = api
        .admin("GET", &format!("/api/v1/rollouts/{first}"), None)
        .expect(200)
        .read();
    let devices = shown.rollout.devices.unwrap();
    assert!(devices[0].progress.is_some() && devices[0].running_version.is_some());
    api.admin("POST", "/api/v1/rollouts", Some(request.clone()))
        .expect(409);
    api.admin("DELETE", &format!("/api/v1/bundles/{sha}"), None)
        .expect(409);
    api.admin("GET", "/api/v1/rollouts", None).expect(200);
    api.admin("GET", "/api/v1/rollouts/rol_nope", None)
        .expect(404);
    api.admin("POST", &format!("/api/v1/rollouts/{first}/pause"), None)
        .expect(200);
    api.admin("POST", &format!("/api/v1/rollouts/{first}/pause"), None)
        .expect(409);
    api.admin("POST", &format!("/api/v1/rollouts/{first}/resume"), None)
        .expect(200);
    api.call(
        Some(&viewer),
        "POST",
        &format!("/api/v1/rollouts/{first}/abort"),
        None,
    )
    .expect(403);
    api.admin("POST", &format!("/api/v1/rollouts/{first}/abort"), None)
        .expect(200);
    upload(&mut api, &fixture.v1).expect(201);
    let second: RolloutReply = api
        .admin("POST", "/api/v1/rollouts", Some(request))
        .expect(201)
        .read();
    let second = second.rollout.rollout.id;
    let desired = device.desired_os().await;
    device.report_os(&desired, OsUpdatePhase::Installing).await;
    api.admin("POST", &format!("/api/v1/rollouts/{second}/rollback"), None)
        .expect(200);
    api.admin("POST", &format!("/api/v1/rollouts/{second}/rollback"), None)
        .expect(409);
    api.call(
        Some(&viewer),
        "DELETE",
        &format!("/api/v1/bundles/{sha}"),
        None,
    )
    .expect(403);
    api.admin("DELETE", &format!("/api/v1/bundles/{sha}"), None)
        .expect(200);
    api.admin("DELETE", &format!("/api/v1/bundles/{sha}"), None)
        .expect(404);

    // Logs read from a device: answered, failed on the device, not answered in time, offline.
    let mut reader = Device::connect(&central, "SER-LOGS").await;
    let reader_id = reader.id.clone();
    let responder = tokio::spawn(async move {
        while let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(30), reader.stream.message()).await
        {
            let Some(central_message::Kind::Logs(request)) = message.kind else {
                continue;
            };
            let reply = match request.service.as_str() {
                "slow" => continue,
                "db" => LogReply {
                    request_id: request.id.clone(),
                    error: "no log for service \"db\"".into(),
                    ..Default::default()
                },
                _ => LogReply {
                    request_id: request.id.clone(),
                    text: "line 1\nline 2\n".into(),
                    truncated: false,
                    error: String::new(),
                },
            };
            let kind = agent_message::Kind::Reply(reply);
            if reader
                .tx
                .send(AgentMessage { kind: Some(kind) })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let logs = format!("/api/v1/devices/{reader_id}/logs");
    api.call(
        Some(&operator),
        "GET",
        &format!("{logs}?app=shop&service=web&lines=2"),
        None,
    )
    .expect(200);
    api.call(Some(&operator), "GET", &logs, None).expect(200);
    api.call(
        Some(&operator),
        "GET",
        &format!("{logs}?app=shop&service=db"),
        None,
    )
    .expect(502);
    api.call(
        Some(&operator),
        "GET",
        &format!("{logs}?app=shop&service=slow"),
        None,
    )
    .expect(504);
    api.call(Some(&operator), "GET", &format!("{logs}?lines=many"), None)
        .expect(400);
    api.call(Some(&viewer), "GET", &logs, None).expect(403);
    api.call(
        Some(&operator),
        "GET",
        "/api/v1/devices/dev_nope/logs",
        None,
    )
    .expect(404);
    api.call(
        Some(&operator),
        "GET",
        &format!("/api/v1/devices/{pending_id}/logs"),
        None,
    )
    .expect(409);
    responder.abort();

    // Events and the audit log.
    api.call(
        Some(&viewer),
        "GET",
        &format!("/api/v1/events?device={id}&limit=50"),
        None,
    )
    .expect(200);
    api.call(Some(&viewer), "GET", "/api/v1/events?kind=nope", None)
        .expect(400);
    api.admin("GET", "/api/v1/audit?limit=20", None).expect(200);
    api.admin("GET", "/api/v1/audit?limit=many", None)
        .expect(400);

    // Revocation last: the device is refused from now on.
    api.admin("POST", &format!("/api/v1/devices/{id}/revoke"), None)
        .expect(200);
    api.admin("POST", &format!("/api/v1/devices/{id}/approve"), None)
        .expect(409);
    api.admin("PUT", &app_path, Some(json!({ "compose_yaml": COMPOSE })))
        .expect(409);
    api.call(
        Some(&viewer),
        "POST",
        &format!("/api/v1/devices/{id}/wipe"),
        None,
    )
    .expect(403);
    api.admin("POST", &format!("/api/v1/devices/{id}/wipe"), None)
        .expect(200);
    api.admin("POST", "/api/v1/devices/dev_nope/wipe", None)
        .expect(404);

    api.assert_every_operation_called();
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let (one, two) = (b64(SECRET_ONE), b64(SECRET_TWO));
    let admin = central.admin.clone();
    api.assert_no_answer_holds(
        &[&viewer, &operator, &admin],
        &[SECRET_ONE, SECRET_TWO, one.as_bytes(), two.as_bytes()],
    );
}
