//! A real central on loopback plus raw clients (tonic TLS for the agent API, ureq for REST).
//! Clients here use software keys made by rcgen: they test central, not the agent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::{CreatedApiToken, CreatedEnrollmentToken};
use cairn_central::{Central, CentralConfig};
use cairn_proto::v1::agent_client::AgentClient;
use cairn_proto::v1::enrollment_client::EnrollmentClient;
use cairn_proto::v1::{EnrollRequest, EnrollResponse, HardwareFacts};
use rcgen::{CertificateParams, KeyPair};
use serde_json::{json, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A REST call that got no HTTP response (connection refused, reset mid-upload, timed out).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(Box<ureq::Transport>);

/// A real central serving on loopback ports from a temporary data directory.
pub struct TestCentral {
    /// The running central (None only during a restart).
    pub central: Option<Central>,
    /// Temporary directory holding its data_dir.
    pub dir: tempfile::TempDir,
    /// The fleet CA certificate, PEM.
    pub ca_pem: String,
    /// The bootstrap admin API token.
    pub admin: String,
    /// Its configuration.
    pub config: CentralConfig,
}

/// Environment variable naming a PostgreSQL admin URL (a role allowed to create databases);
/// when set, every test central gets a fresh database there instead of SQLite, so the whole
/// central suite runs on either store (`cargo xtask test` runs it on both).
pub const DATABASE_URL_ENV: &str = "CAIRN_TEST_DATABASE_URL";

/// A loopback config with port 0 listeners and fast timings, data under `dir/central`, and a
/// fresh PostgreSQL database when [`DATABASE_URL_ENV`] is set.
pub fn config_in(dir: &std::path::Path) -> CentralConfig {
    let mut config = CentralConfig::with_data_dir(dir.join("central"));
    config.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.rest_listen = "127.0.0.1:0".parse().unwrap();
    config.pending_retry_seconds = 1;
    config.presence_flush_ms = 50;
    // Every test device enrolls from 127.0.0.1; the limit has its own test.
    config.enroll_attempts_per_source_per_minute = 0;
    // swtpm on a host has no firmware: no event log, no Secure Boot to measure. Tests that boot
    // real firmware (the QEMU tier) turn the requirement back on.
    config.require_secure_boot = false;
    config.database_url = std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
        .map(|u| fresh_database(&u));
    config
}

/// A fresh, empty database on the server of `admin_url`; returns its URL.
pub fn fresh_database(admin_url: &str) -> String {
    cairn_central::store::create_database(admin_url, &format!("cairn_test_{}", hex_id()))
        .expect("create a test database")
}

fn hex_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestCentral {
    /// Start a central in a fresh temporary directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        Self::start_with(dir, config).await
    }

    /// Start a central with this directory and config.
    pub async fn start_with(dir: tempfile::TempDir, config: CentralConfig) -> Self {
        let central = cairn_central::start(config.clone())
            .await
            .expect("central starts");
        let ca_pem = std::fs::read_to_string(cairn_central::ca_cert_path(&config)).unwrap();
        let admin = std::fs::read_to_string(cairn_central::admin_token_path(&config))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            central: Some(central),
            dir,
            ca_pem,
            admin,
            config,
        }
    }

    /// Stop and start again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stop central for a while (an outage seen by agents): its listeners close and open agent
    /// Sync streams end with UNAVAILABLE; data directory and ports are kept for
    /// [`TestCentral::start_again`]. REST calls and [`TestCentral::c`] panic until then.
    pub async fn stop(&mut self) {
        let central = self.central.take().expect("central is running");
        self.config.grpc_listen = central.grpc_addr;
        self.config.rest_listen = central.rest_addr;
        let started = std::time::Instant::now();
        central.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "central took {:?} to stop",
            started.elapsed()
        );
    }

    /// Start again after [`TestCentral::stop`], on the same data directory and ports (same CA,
    /// registry and admin token).
    pub async fn start_again(&mut self) {
        assert!(
            self.central.is_none(),
            "start_again needs a stopped central; see TestCentral::stop"
        );
        self.central = Some(
            cairn_central::start(self.config.clone())
                .await
                .expect("central starts again"),
        );
    }

    /// The running central.
    pub fn c(&self) -> &Central {
        self.central.as_ref().unwrap()
    }

    /// Full REST URL of `path`.
    pub fn rest_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.c().rest_addr.port())
    }

    /// A ureq agent trusting only the fleet CA.
    pub fn rest(&self) -> ureq::Agent {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .timeout(Duration::from_secs(10))
            .build()
    }

    /// Call REST with a token; returns (status, body).
    pub fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        // ureq blocks; let the runtime move other tasks (central itself) off this worker.
        tokio::task::block_in_place(|| self.call_blocking(token, method, path, body))
    }

    fn call_blocking(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call_blocking(token, method, path, body)
            .unwrap_or_else(|e| panic!("REST {method} {path} failed: {e}"))
    }

    /// Like [`TestCentral::call`], but a transport failure is returned instead of panicking (a
    /// server that refuses an oversized body early may reset the connection mid-upload).
    pub fn try_call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), TransportError> {
        tokio::task::block_in_place(|| self.try_call_blocking(token, method, path, body))
    }

    fn try_call_blocking(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), TransportError> {
        let request = self
            .rest()
            .request(method, &self.rest_url(path))
            .set("Authorization", &format!("Bearer {token}"));
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(e)) => return Err(TransportError(Box::new(e))),
        };
        let status = response.status();
        Ok((status, response.into_json().unwrap_or(Value::Null)))
    }

    /// Upload an OS update bundle file to `POST /api/v1/bundles` as admin; returns (status, body).
    pub fn upload_bundle(&self, path: &std::path::Path) -> (u16, Value) {
        tokio::task::block_in_place(|| {
            let file = std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let result = self
                .rest()
                .post(&self.rest_url("/api/v1/bundles"))
                .timeout(Duration::from_secs(600))
                .set("Authorization", &format!("Bearer {}", self.admin))
                .set("Content-Type", "application/octet-stream")
                .send(file);
            let response = match result {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("bundle upload of {} failed: {e}", path.display()),
            };
            (
                response.status(),
                response.into_json().unwrap_or(Value::Null),
            )
        })
    }

    /// Call REST as admin and require success; returns the body.
    pub fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(&self.admin, method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {body}"
        );
        body
    }

    /// Call REST as admin, require success, and read the answer as `T` (a cairn-api type).
    pub fn admin_read<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> T {
        let answer = self.admin_call(method, path, body);
        read(method, path, answer)
    }

    /// `GET path` as admin, read as `T` (a cairn-api type).
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.admin_read("GET", path, None)
    }

    /// Create an API token with `role` (admin, operator, viewer); returns its secret.
    pub fn api_token(&self, name: &str, role: &str) -> String {
        let created: CreatedApiToken = self.admin_read(
            "POST",
            "/api/v1/api-tokens",
            Some(json!({ "name": name, "role": role })),
        );
        created.secret
    }

    /// Create an enrollment token that also admits software keys (most test devices have
    /// one); returns (id, secret).
    pub fn token(
        &self,
        policy: &str,
        max_uses: Option<u32>,
        expires_in: Option<u64>,
    ) -> (String, String) {
        self.token_with(policy, max_uses, expires_in, false)
    }

    /// Create an enrollment token that admits only devices with a proven TPM (the API's
    /// default); returns (id, secret).
    pub fn tpm_token(&self, policy: &str, max_uses: Option<u32>) -> (String, String) {
        self.token_with(policy, max_uses, None, true)
    }

    fn token_with(
        &self,
        policy: &str,
        max_uses: Option<u32>,
        expires_in: Option<u64>,
        require_tpm: bool,
    ) -> (String, String) {
        let created: CreatedEnrollmentToken = self.admin_read(
            "POST",
            "/api/v1/enrollment-tokens",
            Some(json!({ "name": format!("t-{policy}"), "policy": policy, "max_uses": max_uses, "expires_in_seconds": expires_in, "require_tpm": require_tpm })),
        );
        (created.token.id, created.secret)
    }

    async fn channel(&self, identity: Option<Identity>) -> Channel {
        self.channel_from(identity, None).await
    }

    /// A channel whose connection comes from `source` (any 127.0.0.0/8 address is this host:
    /// a second "client address" for per-source limits).
    async fn channel_from(&self, identity: Option<Identity>, source: Option<IpAddr>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", self.c().grpc_addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .local_address(source)
            .connect()
            .await
            .expect("connect to central gRPC")
    }

    /// Assert that the desired states of `ids` read in bulk (as a change pushed to many
    /// devices reads them) are exactly those read one device at a time.
    pub async fn assert_bulk_desired_states_agree(&self, ids: &[&str]) {
        let shared = &self.c().shared;
        let owned: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let many = cairn_central::grpc::load_desired_many(shared, owned)
            .await
            .expect("desired states read in bulk");
        assert_eq!(many.len(), ids.len(), "one state per device");
        for (id, desired) in many {
            let one = cairn_central::grpc::load_desired(shared, &id)
                .await
                .expect("a desired state read alone");
            assert_eq!(Some(desired), one, "device {id}");
        }
    }

    /// Record in the registry, as central's judge would, that device `id` verified OS "1.0"
    /// (PCR 0 pinned, UKI value `ab` learned) and, when `failed`, that its last quote then
    /// failed on PCR 7 with its measurements (PCR 7 changed, UKI `1.0 cd`) waiting for an
    /// accept. Wakes the scheduler, as a change of attestation state does.
    pub async fn record_attestation(&self, id: &str, failed: bool) {
        let id = id.to_owned();
        self.c()
            .shared
            .store
            .run(move |conn| {
                use cairn_central::store::attestation;
                attestation::record_verified(
                    conn,
                    &id,
                    1_000,
                    "0 80000008 aa\n",
                    "1.0 ab\n",
                    "1.0",
                )?;
                if failed {
                    attestation::record_failed(
                        conn,
                        &id,
                        2_000,
                        "PCR 7: Secure Boot is off",
                        Some("0 80000008 aa\n7 80000001 bb\n"),
                        Some("1.0 cd"),
                    )?;
                }
                Ok(())
            })
            .await
            .expect("record an attestation");
        self.c().shared.placement.wake();
    }

    /// An Enrollment client over TLS (no client certificate).
    pub async fn enrollment(&self) -> EnrollmentClient<Channel> {
        EnrollmentClient::new(self.channel(None).await)
    }

    /// An Enrollment client whose connection comes from `source` (e.g. 127.0.0.2).
    pub async fn enrollment_from(&self, source: IpAddr) -> EnrollmentClient<Channel> {
        EnrollmentClient::new(self.channel_from(None, Some(source)).await)
    }

    /// An Agent client over mutual TLS with this device's certificate.
    pub async fn agent(&self, device: &SimDevice, cert_der: &[u8]) -> AgentClient<Channel> {
        let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert_der.to_vec()));
        AgentClient::new(
            self.channel(Some(Identity::from_pem(
                cert_pem,
                device.key.serialize_pem(),
            )))
            .await,
        )
    }

    /// Open a Sync stream as `device`: the sender of its messages and central's answers.
    pub async fn open_sync(
        &self,
        device: &SimDevice,
        cert_der: &[u8],
    ) -> (
        tokio::sync::mpsc::Sender<cairn_proto::v1::AgentMessage>,
        tonic::Streaming<cairn_proto::v1::CentralMessage>,
    ) {
        let mut agent = self.agent(device, cert_der).await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream = agent
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, stream)
    }

    /// Enroll a new [`SimDevice`] with its own auto-approve token over the real Enrollment RPC,
    /// then open its Sync stream (nothing read from it yet).
    pub async fn connect_device(&self, serial: &str) -> ConnectedDevice {
        let (_, token) = self.token("auto", None, None);
        let sim = SimDevice::new(serial);
        let enrolled = sim.enroll(self, &token).await.unwrap();
        let (tx, stream) = self.open_sync(&sim, &enrolled.certificate_der).await;
        ConnectedDevice {
            sim,
            id: enrolled.device_id,
            cert: enrolled.certificate_der,
            tx,
            stream,
        }
    }
}

/// An answer read as a cairn-api type; a body that does not read is a test failure naming it.
pub fn read<T: serde::de::DeserializeOwned>(method: &str, path: &str, answer: Value) -> T {
    serde_json::from_value(answer.clone()).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: the answer does not read as {}: {e}\n{answer:#}",
            std::any::type_name::<T>()
        )
    })
}

/// The message of an error answer (read as cairn-api's error body).
pub fn error_message(answer: &Value) -> String {
    read::<cairn_api::ErrorBody>("an error answer", "", answer.clone())
        .error
        .message
}

/// Send `heartbeat` on a Sync stream and wait (up to 10 s) for its ack, i.e. until central has
/// taken it in; returns the last desired state pushed meanwhile.
pub async fn heartbeat_acked(
    tx: &tokio::sync::mpsc::Sender<cairn_proto::v1::AgentMessage>,
    stream: &mut tonic::Streaming<cairn_proto::v1::CentralMessage>,
    heartbeat: cairn_proto::v1::Heartbeat,
) -> Option<cairn_proto::v1::DesiredState> {
    use cairn_proto::v1::{agent_message, central_message, AgentMessage};
    let seq = heartbeat.seq;
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Heartbeat(heartbeat)),
    })
    .await
    .expect("stream open");
    let mut pushed = None;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream
                .message()
                .await
                .expect("stream healthy")
                .expect("stream open")
                .kind
            {
                Some(central_message::Kind::Ack(ack)) if ack.seq == seq => break,
                Some(central_message::Kind::Desired(d)) => pushed = Some(d),
                _ => {}
            }
        }
    })
    .await
    .expect("heartbeat acknowledged within 10 s");
    pushed
}

/// An enrolled device with an open Sync stream, from [`TestCentral::connect_device`].
pub struct ConnectedDevice {
    /// The device's key and serial.
    pub sim: SimDevice,
    /// Its id at central.
    pub id: String,
    /// Its certificate, DER.
    pub cert: Vec<u8>,
    /// The sender of its Sync messages.
    pub tx: tokio::sync::mpsc::Sender<cairn_proto::v1::AgentMessage>,
    /// Central's answers on the Sync stream.
    pub stream: tonic::Streaming<cairn_proto::v1::CentralMessage>,
}

/// A software-keyed device as a raw protocol client (not the agent: this tests central alone).
pub struct SimDevice {
    /// Its software key.
    pub key: KeyPair,
    /// Its serial.
    pub serial: String,
}

impl SimDevice {
    /// A device with a fresh P-256 key.
    pub fn new(serial: &str) -> Self {
        Self {
            key: KeyPair::generate().unwrap(),
            serial: serial.into(),
        }
    }

    /// A CSR signed by its key.
    pub fn csr(&self) -> Vec<u8> {
        CertificateParams::new(vec![self.serial.clone()])
            .unwrap()
            .serialize_request(&self.key)
            .unwrap()
            .der()
            .to_vec()
    }

    /// An Enroll request with this token.
    pub fn request(&self, token: &str) -> EnrollRequest {
        EnrollRequest {
            token: token.into(),
            csr_der: self.csr(),
            facts: Some(HardwareFacts {
                serial: self.serial.clone(),
                tpm_ek_sha256: String::new(),
                hostname: format!("host-{}", self.serial),
                agent_version: "test".into(),
                os_version: "test".into(),
                key_storage: "software".into(),
            }),
            ..Default::default()
        }
    }

    /// Call Enroll.
    pub async fn enroll(
        &self,
        central: &TestCentral,
        token: &str,
    ) -> Result<EnrollResponse, tonic::Status> {
        central
            .enrollment()
            .await
            .enroll(self.request(token))
            .await
            .map(|r| r.into_inner())
    }
}
