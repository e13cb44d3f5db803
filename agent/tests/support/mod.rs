//! A small in-process stand-in for cairn-central that keeps central's documented promises
//! (Enrollment over TLS without a client cert, refusals as gRPC statuses, device certificates
//! with the `urn:cairn:device:<id>` SAN, Agent service only with a client cert, revoked devices get
//! PERMISSION_DENIED and their open Sync stream ends with it). The agent's host tests run against
//! it; the real central is tested against the agent by the lead's integration tests.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_agent::AgentConfig;
use cairn_proto::v1::agent_server::{Agent as AgentService, AgentServer};
use cairn_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, CentralMessage, DesiredState, EnrollRequest,
    EnrollResponse, EnrollStatus, Heartbeat, HeartbeatAck, PingRequest, PingResponse, RenewRequest,
    RenewResponse,
};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, SanType,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// The fleet token the fake central accepts.
pub const TOKEN: &str = "fleet-token";

/// How enrollment requests are decided.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Approve at once.
    Auto,
    /// Answer PENDING this many times per key, then approve.
    PendingFirst(u32),
    /// Refuse with PERMISSION_DENIED and this message.
    Refuse(String),
}

/// Shared state of the fake central; tests change it while agents run.
pub struct Central {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub policy: Mutex<Policy>,
    /// (valid before now, valid after now) of the next certificates issued.
    pub cert_window: Mutex<(Duration, Duration)>,
    pub revoked: Mutex<HashSet<String>>,
    desired: watch::Sender<Option<DesiredState>>,
    devices: Mutex<HashMap<Vec<u8>, (String, u32)>>,
    pub enroll_calls: AtomicU64,
    pub renew_calls: AtomicU64,
    pub heartbeats: Mutex<Vec<(String, Heartbeat)>>,
    pub enroll_keys: Mutex<Vec<Vec<u8>>>,
    kill_streams: watch::Sender<u64>,
}

impl Central {
    /// A central with a fresh CA.
    pub fn new() -> Arc<Central> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake central CA");
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        Arc::new(Central {
            ca,
            policy: Mutex::new(Policy::Auto),
            cert_window: Mutex::new((Duration::from_secs(60), Duration::from_secs(86_400))),
            revoked: Mutex::new(HashSet::new()),
            desired: watch::Sender::new(None),
            devices: Mutex::new(HashMap::new()),
            enroll_calls: AtomicU64::new(0),
            renew_calls: AtomicU64::new(0),
            heartbeats: Mutex::new(Vec::new()),
            enroll_keys: Mutex::new(Vec::new()),
            kill_streams: watch::Sender::new(0),
        })
    }

    /// The CA certificate (PEM), as the fleet image would carry it.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Writes the CA PEM into `dir` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("central-ca.pem");
        std::fs::write(&path, self.ca_pem()).unwrap();
        path
    }

    /// Publishes a desired state to every connected (and later connecting) device.
    pub fn set_desired(&self, desired: DesiredState) {
        self.desired.send_replace(Some(desired));
    }

    /// Revokes a device: refused from now on, open streams end with PERMISSION_DENIED.
    pub fn revoke(&self, device_id: &str) {
        self.revoked.lock().unwrap().insert(device_id.to_string());
        self.kill_streams.send_modify(|n| *n += 1);
    }

    /// Ends all open Sync streams with UNAVAILABLE (before stopping the server).
    pub fn end_streams(&self) {
        self.kill_streams.send_modify(|n| *n += 1);
    }

    fn issue(&self, csr_der: &[u8], device_id: &str) -> Result<Vec<u8>, Status> {
        let mut csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        let (before, after) = *self.cert_window.lock().unwrap();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - before;
        csr.params.not_after = now + after;
        csr.params.subject_alt_names = vec![SanType::URI(
            format!("{}{device_id}", cairn_proto::DEVICE_URI_PREFIX)
                .try_into()
                .unwrap(),
        )];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = csr
            .signed_by(&self.ca)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(cert.der().to_vec())
    }

    fn device_of(
        &self,
        peer: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    ) -> Result<String, Status> {
        let certs = peer.ok_or_else(|| Status::unauthenticated("client certificate required"))?;
        let info = cairn_agent::certificate::CertificateInfo::parse(certs.first().unwrap())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let id = info
            .device_id
            .ok_or_else(|| Status::unauthenticated("no device id in certificate"))?;
        if self.revoked.lock().unwrap().contains(&id) {
            return Err(Status::permission_denied(format!("device {id} is revoked")));
        }
        Ok(id)
    }
}

struct EnrollmentApi(Arc<Central>);
struct AgentApi(Arc<Central>);

#[tonic::async_trait]
impl Enrollment for EnrollmentApi {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let c = &self.0;
        c.enroll_calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        let (_, csr) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<x509_parser::error::X509Error>>::from_der(&req.csr_der)
            .map_err(|_| Status::invalid_argument("CSR does not parse"))?;
        let spki = csr.certification_request_info.subject_pki.raw.to_vec();
        c.enroll_keys.lock().unwrap().push(spki.clone());
        if req.token != TOKEN {
            return Err(Status::permission_denied("enrollment token unknown"));
        }
        let policy = c.policy.lock().unwrap().clone();
        if let Policy::Refuse(message) = policy.clone() {
            return Err(Status::permission_denied(message));
        }
        let (device_id, times_seen) = {
            let mut devices = c.devices.lock().unwrap();
            let n = devices.len();
            let entry = devices
                .entry(spki)
                .or_insert_with(|| (format!("dev-{n}"), 0));
            entry.1 += 1;
            entry.clone()
        };
        if c.revoked.lock().unwrap().contains(&device_id) {
            return Err(Status::permission_denied(format!(
                "device {device_id} is revoked"
            )));
        }
        if let Policy::PendingFirst(n) = policy {
            if times_seen <= n {
                return Ok(Response::new(EnrollResponse {
                    status: EnrollStatus::Pending as i32,
                    device_id,
                    retry_after_seconds: 1,
                    ..Default::default()
                }));
            }
        }
        let cert = c.issue(&req.csr_der, &device_id)?;
        Ok(Response::new(EnrollResponse {
            status: EnrollStatus::Approved as i32,
            device_id,
            certificate_der: cert,
            ca_certificate_der: c.ca.der().to_vec(),
            retry_after_seconds: 0,
        }))
    }
}

type SyncStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<CentralMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let device_id = self.0.device_of(request.peer_certs())?;
        self.0.renew_calls.fetch_add(1, Ordering::SeqCst);
        let cert = self.0.issue(&request.into_inner().csr_der, &device_id)?;
        Ok(Response::new(RenewResponse {
            certificate_der: cert,
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SyncStream>, Status> {
        let device_id = self.0.device_of(request.peer_certs())?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let central = self.0.clone();
        tokio::spawn(async move {
            let mut desired = central.desired.subscribe();
            desired.mark_changed();
            let mut kill = central.kill_streams.subscribe();
            loop {
                tokio::select! {
                    _ = kill.changed() => {
                        let status = if central.revoked.lock().unwrap().contains(&device_id) {
                            Status::permission_denied(format!("device {device_id} is revoked"))
                        } else {
                            Status::unavailable("central is shutting down")
                        };
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    changed = desired.changed() => {
                        if changed.is_err() { return; }
                        let state = desired.borrow_and_update().clone();
                        if let Some(state) = state {
                            let msg = CentralMessage { kind: Some(central_message::Kind::Desired(state)) };
                            if tx.send(Ok(msg)).await.is_err() { return; }
                        }
                    }
                    message = inbound.message() => {
                        let Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })) = message else { return };
                        let seq = hb.seq;
                        central.heartbeats.lock().unwrap().push((device_id.clone(), hb));
                        let ack = CentralMessage { kind: Some(central_message::Kind::Ack(HeartbeatAck { seq })) };
                        if tx.send(Ok(ack)).await.is_err() { return; }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let device_id = self.0.device_of(request.peer_certs())?;
        Ok(Response::new(PingResponse {
            nonce: request.into_inner().nonce,
            device_id,
        }))
    }
}

/// A running fake central; stops (ending streams) on [`Server::stop`] or drop.
pub struct RunningCentral {
    pub central: Arc<Central>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningCentral {
    /// Serves `central` on `addr` (port 0 = any).
    pub async fn start(central: Arc<Central>, addr: SocketAddr) -> RunningCentral {
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let server_cert = params.signed_by(&server_key, &central.ca).unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                server_cert.pem(),
                server_key.serialize_pem(),
            ))
            .client_ca_root(Certificate::from_pem(central.ca_pem()))
            .client_auth_optional(true);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(EnrollmentServer::new(EnrollmentApi(central.clone())))
            .add_service(AgentServer::new(AgentApi(central.clone())));
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        RunningCentral {
            central,
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Ends open streams and stops serving; the port is free afterwards.
    pub async fn stop(mut self) {
        self.central.end_streams();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for RunningCentral {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An agent config against `central` with fast timings, software key, state in `dir/agent`.
pub fn agent_config(central: &RunningCentral, dir: &Path, serial: &str) -> AgentConfig {
    let ca = central.central.write_ca(dir);
    let mut config = AgentConfig::new(&central.endpoint(), &ca, TOKEN, &dir.join("agent"));
    config.key_storage = cairn_agent::config::KeyStorageSetting::Software;
    config.serial = Some(serial.to_string());
    config.hostname = Some(format!("host-{serial}"));
    config.heartbeat_interval_ms = 100;
    config.backoff_initial_ms = 50;
    config.backoff_max_ms = 400;
    config
}

/// Waits up to `secs` for `cond`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
