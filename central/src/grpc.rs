//! The agent-facing gRPC services: Enrollment (TLS) and Agent (mutual TLS).

use std::sync::Arc;

use cairn_proto::v1::agent_server::Agent;
use cairn_proto::v1::enrollment_server::Enrollment;
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, App, AppStatus, BundleData, BundleIndexRequest,
    BundleIndexResponse, CentralMessage, DesiredState, EnrollRequest, EnrollResponse, EnrollStatus,
    EscrowRecoveryKeyRequest, EscrowRecoveryKeyResponse, GetSecretsRequest, GetSecretsResponse,
    HeartbeatAck, OsUpdate, PingRequest, PingResponse, ReadBundleRequest, RenewRequest,
    RenewResponse, ReportWipeRequest, ReportWipeResponse, SecretKind, SecretRef, SecretValue,
    TimeRequest, TimeResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::bundles::is_sha256_hex;
use crate::ca::verify_csr;
use crate::enroll::{self, EnrollError, EnrollOutcome};
use crate::escrow::{valid_luks_uuid, valid_recovery_key_format};
use crate::events::{AGENT_EVENTS_PER_SECOND, AGENT_EVENT_BURST};
use crate::rate_limit::TokenBucket;
use crate::sessions::{AppsReport, HostReport};
use crate::sessions::{AttestationGate, Outgoing, STALLED_STREAM};
use crate::store::apps as store_apps;
use crate::store::attestation as store_attestation;
use crate::store::bundles::{self as store_bundles, Bundle};
use crate::store::events::Severity;
use crate::store::recovery_keys::{self, SealedRecoveryKey};
use crate::store::secrets as store_secrets;
use crate::store::{audit, devices, now_unix, DesiredOs, DeviceStatus, StoreError};
use crate::tpm_proof;
use crate::Shared;

fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "registry failure while serving an agent");
    Status::internal("central could not read its registry; it is logged, retry later")
}

/// Serves `Enrollment`.
pub struct EnrollmentService(pub Arc<Shared>);

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let span = tracing::info_span!("grpc.enroll", ?peer, device_id = tracing::field::Empty);
        async {
            let refused = |e: EnrollError| {
                tracing::warn!(error = %e, "enrollment refused");
                e.to_status()
            };
            if let Some(source) = peer.map(|p| p.ip()) {
                if let Err(wait) = self
                    .0
                    .enroll_limiter
                    .check(source, std::time::Instant::now())
                {
                    return Err(refused(EnrollError::RateLimited {
                        source_addr: source,
                        retry_after_seconds: wait.as_secs().max(1),
                    }));
                }
            }
            let csr = verify_csr(&request.csr_der).map_err(|e| refused(e.into()))?;
            let mut facts = enroll::validate_facts(request.facts.as_ref()).map_err(refused)?;
            let now = now_unix();
            let (token, shared) = (request.token, self.0.clone());
            // A key enrolled already (a pending poll, a lost certificate) is answered from its
            // record; everything else a stranger can get wrong is refused on a read connection,
            // before the registry's write lock is taken.
            let known = {
                let csr = csr.clone();
                shared
                    .store
                    .read(move |conn| Ok(enroll::is_known_key(conn, &csr)))
                    .await
                    .map_err(internal)?
                    .map_err(refused)?
            };
            let mut proof = enroll::TpmProof::None;
            if !known {
                if let Some(evidence) = &request.tpm {
                    proof = enroll::TpmProof::from_check(tpm_proof::check_evidence(
                        evidence,
                        &csr.spki_der,
                        &self.0.tpm_anchors,
                        now,
                    ))
                    .map_err(refused)?;
                }
                enroll::settle_tpm_facts(&mut facts, &proof).map_err(refused)?;
                let (token, settled, missing) = (token.clone(), facts.clone(), proof.missing());
                shared
                    .store
                    .read(move |conn| {
                        Ok(enroll::check_admission(
                            conn,
                            &token,
                            &settled,
                            missing.clone(),
                        ))
                    })
                    .await
                    .map_err(internal)?
                    .map_err(refused)?;
                if let enroll::TpmProof::Checked(proven) = proof {
                    let Some(activation) = &request.activation else {
                        let challenge = self
                            .0
                            .challenger
                            .challenge(&proven, &csr.spki_der, now)
                            .map_err(|e| refused(e.into()))?;
                        tracing::info!("TPM evidence checked; credential challenge sent");
                        return Ok(Response::new(EnrollResponse {
                            status: EnrollStatus::Challenge as i32,
                            challenge: Some(challenge),
                            ..Default::default()
                        }));
                    };
                    self.0
                        .challenger
                        .redeem(&proven, &csr.spki_der, activation, now)
                        .map_err(|e| refused(e.into()))?;
                    proof = enroll::TpmProof::Activated(proven);
                }
            }
            let lifetime = shared.config.device_cert_lifetime_seconds;
            let store = shared.store.clone();
            let outcome = store
                .run(move |conn| {
                    Ok(enroll::enroll(
                        conn, &shared.ca, lifetime, &token, &csr, &facts, &proof,
                    ))
                })
                .await
                .map_err(internal)?
                .map_err(refused)?;
            let ca_der = self.0.ca.cert_der().to_vec();
            let response = match outcome {
                EnrollOutcome::Approved { device_id, cert } => {
                    tracing::Span::current().record("device_id", device_id.as_str());
                    tracing::info!("device enrolled");
                    EnrollResponse {
                        status: EnrollStatus::Approved as i32,
                        device_id,
                        certificate_der: cert.der,
                        ca_certificate_der: ca_der,
                        ..Default::default()
                    }
                }
                EnrollOutcome::Pending { device_id } => {
                    tracing::Span::current().record("device_id", device_id.as_str());
                    tracing::info!("device pending approval");
                    EnrollResponse {
                        status: EnrollStatus::Pending as i32,
                        device_id,
                        ca_certificate_der: ca_der,
                        retry_after_seconds: self.0.config.pending_retry_seconds,
                        ..Default::default()
                    }
                }
            };
            Ok(Response::new(response))
        }
        .instrument(span)
        .await
    }

    async fn time(&self, request: Request<TimeRequest>) -> Result<Response<TimeResponse>, Status> {
        let now = crate::store::events::now_unix_ms();
        self.0
            .time
            .answer(request.get_ref(), now)
            .map(Response::new)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// Serves `Agent`: every call is authenticated by the device certificate.
pub struct AgentService(pub Arc<Shared>);

impl AgentService {
    /// The device id from the verified client certificate, checked active in the registry.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        Ok(self.authorize_with_ak(request).await?.0)
    }

    /// [`AgentService::authorize`], with the device's proven attestation key (one read).
    async fn authorize_with_ak<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(String, Option<Vec<u8>>), Status> {
        let device_id = device_id_from_peer(request)?;
        let id = device_id.clone();
        let access = self
            .0
            .store
            .read(move |conn| devices::access(conn, &id))
            .await
            .map_err(internal)?;
        let Some(access) = access else {
            return Err(Status::unauthenticated(format!(
                "device {device_id} is not in the registry"
            )));
        };
        match access.status {
            DeviceStatus::Active => Ok((device_id, access.ak_public)),
            DeviceStatus::Revoked => {
                let mut status = EnrollError::DeviceRevoked(device_id).to_status();
                if access.wipe_pending {
                    status.metadata_mut().insert(
                        cairn_proto::WIPE_METADATA_KEY,
                        tonic::metadata::MetadataValue::from_static(cairn_proto::WIPE_ORDERED),
                    );
                }
                Err(status)
            }
            DeviceStatus::Pending | DeviceStatus::Other(_) => {
                Err(EnrollError::DeviceNotActive(device_id).to_status())
            }
        }
    }
}

/// Read `urn:cairn:device:<id>` from the client certificate that TLS already verified.
fn device_id_from_peer<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("this call needs the device certificate (mutual TLS); enroll first")
    })?;
    let der = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate presented; enroll first"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|_| Status::unauthenticated("client certificate does not parse"))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| Status::unauthenticated("client certificate has no device URI"))?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri
                .strip_prefix(cairn_proto::DEVICE_URI_PREFIX)
                .map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| Status::unauthenticated("client certificate has no device URI"))
}

/// The names a GetSecrets request asks for, checked and without repeats.
fn secret_names(request: &GetSecretsRequest) -> Result<Vec<String>, Status> {
    if request.app.is_empty() || request.app.len() > 128 {
        return Err(Status::invalid_argument(
            "app must be the name of one of the device's apps",
        ));
    }
    if request.names.len() > cairn_proto::MAX_SECRETS_PER_APP {
        return Err(Status::invalid_argument(format!(
            "at most {} secret names per request",
            cairn_proto::MAX_SECRETS_PER_APP
        )));
    }
    let mut names: Vec<String> = Vec::with_capacity(request.names.len());
    for name in &request.names {
        if !cairn_proto::is_secret_name(name) {
            return Err(Status::invalid_argument(
                "a secret name is 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(names)
}

/// A device's desired state: its revision, config, apps and the OS a rollout wants it to run.
pub fn desired_state(
    revision: u64,
    config: std::collections::BTreeMap<String, String>,
    apps: Vec<store_apps::DesiredApp>,
    os: Option<DesiredOs>,
) -> DesiredState {
    DesiredState {
        revision,
        config: config.into_iter().collect(),
        apps: apps
            .into_iter()
            .map(|a| App {
                name: a.name,
                compose_yaml: a.compose_yaml,
                generation: a.generation,
                secrets: a
                    .secrets
                    .into_iter()
                    .map(|s| SecretRef {
                        name: s.name,
                        version: s.version,
                        kind: match s.kind {
                            cairn_api::SecretKind::File => SecretKind::File,
                            cairn_api::SecretKind::Registry => SecretKind::Registry,
                        }
                        .into(),
                    })
                    .collect(),
                variables: a.variables.into_iter().collect(),
            })
            .collect(),
        os: os.map(|os| OsUpdate {
            version: os.version,
            bundle_sha256: os.bundle_sha256,
            bundle_size: os.bundle_size,
            allow_downgrade: os.allow_downgrade,
            rollout_id: os.rollout_id,
            health_deadline_seconds: os.health_deadline_seconds,
        }),
    }
}

/// A device's whole desired state as stored (None: no such device).
pub async fn load_desired(
    shared: &Shared,
    device_id: &str,
) -> Result<Option<DesiredState>, StoreError> {
    let ids = [device_id.to_owned()];
    let mut states = shared
        .store
        .read(move |conn| desired_states(conn, &ids))
        .await?;
    Ok(states.pop().map(|(_, desired)| desired))
}

/// Devices whose desired states [`load_desired_many`] reads in one snapshot: large enough that
/// a fleet-wide change is a few hundred reads, small enough that the first devices get theirs
/// at once and a read connection is not held for long.
pub const DESIRED_BATCH: usize = 256;

/// The desired states of `device_ids` (those still in the registry), in one read snapshot.
pub async fn load_desired_many(
    shared: &Shared,
    device_ids: Vec<String>,
) -> Result<Vec<(String, DesiredState)>, StoreError> {
    shared
        .store
        .read(move |conn| desired_states(conn, &device_ids))
        .await
}

/// The desired states of `device_ids` (those in the registry) as `conn` sees them, read with
/// a fixed number of queries ([`store_apps::list_many`]); at most a few hundred at a time.
pub fn desired_states(
    conn: &crate::store::Connection,
    device_ids: &[String],
) -> Result<Vec<(String, DesiredState)>, StoreError> {
    let devices = devices::get_many(conn, device_ids)?;
    let mut apps = store_apps::list_many(conn, &devices)?;
    Ok(devices
        .into_iter()
        .map(|device| {
            let apps = apps.remove(&device.id).unwrap_or_default();
            let desired = desired_state(
                device.desired_revision,
                device.config,
                apps,
                device.desired_os,
            );
            (device.id, desired)
        })
        .collect())
}

/// The message carrying a desired state on a device's stream.
pub fn desired_message(desired: DesiredState) -> CentralMessage {
    CentralMessage {
        kind: Some(central_message::Kind::Desired(desired)),
    }
}

/// Most apps and services per app central keeps from one heartbeat; names and messages are cut,
/// so a misbehaving agent cannot make central hold more than a few KiB per device.
const MAX_REPORTED_APPS: usize = 64;
const MAX_REPORTED_SERVICES: usize = 32;
const MAX_REPORTED_NAME_BYTES: usize = 64;

/// The app status of a heartbeat, bounded (see [`MAX_REPORTED_APPS`]).
fn bounded_app_status(mut apps: Vec<AppStatus>) -> Vec<AppStatus> {
    use cairn_proto::{truncate_status_text as cut, MAX_STATUS_MESSAGE_BYTES as MSG};
    apps.truncate(MAX_REPORTED_APPS);
    for app in &mut apps {
        app.name = cut(&app.name, MAX_REPORTED_NAME_BYTES);
        app.error = cut(&app.error, MSG);
        app.services.truncate(MAX_REPORTED_SERVICES);
        for service in &mut app.services {
            service.name = cut(&service.name, MAX_REPORTED_NAME_BYTES);
            service.message = cut(&service.message, MSG);
        }
    }
    apps
}

/// Most file systems and temperature sensors central keeps from one heartbeat.
const MAX_REPORTED_FILESYSTEMS: usize = 16;
const MAX_REPORTED_SENSORS: usize = 32;

/// The host metrics of a heartbeat, bounded like the app status; non-finite numbers dropped.
fn bounded_host_metrics(mut host: cairn_proto::v1::HostMetrics) -> cairn_proto::v1::HostMetrics {
    use cairn_proto::truncate_status_text as cut;
    host.cpu_percent = host
        .cpu_percent
        .filter(|p| p.is_finite())
        .map(|p| p.clamp(0.0, 100.0));
    if !host.load1.is_finite() || host.load1 < 0.0 {
        host.load1 = 0.0;
    }
    host.memory_available_bytes = host.memory_available_bytes.min(host.memory_total_bytes);
    host.filesystems.truncate(MAX_REPORTED_FILESYSTEMS);
    for fs in &mut host.filesystems {
        fs.mount_point = cut(&fs.mount_point, MAX_REPORTED_NAME_BYTES);
        fs.used_bytes = fs.used_bytes.min(fs.total_bytes);
    }
    host.temperatures.retain(|t| t.celsius.is_finite());
    host.temperatures.truncate(MAX_REPORTED_SENSORS);
    for t in &mut host.temperatures {
        t.sensor = cut(&t.sensor, MAX_REPORTED_NAME_BYTES);
    }
    host
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let device_id = self.authorize(&request).await?;
        let span = tracing::info_span!("grpc.renew", device_id = %device_id);
        let shared = self.0.clone();
        let lifetime = shared.config.device_cert_lifetime_seconds;
        let csr_der = request.into_inner().csr_der;
        let id = device_id.clone();
        let store = shared.store.clone();
        let cert = store
            .run(move |conn| Ok(enroll::renew(conn, &shared.ca, lifetime, &id, &csr_der)))
            .instrument(span.clone())
            .await
            .map_err(internal)?
            .map_err(|e| e.to_status())?;
        span.in_scope(|| tracing::info!(serial = %cert.serial_hex, "device certificate renewed"));
        Ok(Response::new(RenewResponse {
            certificate_der: cert.der,
        }))
    }

    type SyncStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<CentralMessage, Status>> + Send>>;

    async fn sync(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let (device_id, ak_public) = self.authorize_with_ak(&request).await?;
        let span = tracing::info_span!("grpc.sync", device_id = %device_id);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        // A device with a proven TPM gets no desired state until this boot's quote verified.
        let gate = AttestationGate::new(ak_public.is_none());
        // Register before reading the desired state: a change committed in between is then
        // pushed on this stream too (the agent ignores a revision it already holds).
        let crate::sessions::Registered {
            id: session_id,
            outbox,
        } = shared
            .sessions
            .register(&device_id, tx.clone(), gate.clone());
        // Ends the answer stream at once when the device stops reading it (what is queued for
        // it is dropped with it).
        let stalled = tokio_util::sync::CancellationToken::new();
        let answers_end = stalled.clone();
        // Whether log requests wait for the device, read with its desired state (None: not
        // read yet).
        let mut logs_waiting = None;
        if gate.is_open() {
            let ids = [device_id.clone()];
            let since = crate::logs::pending_since(&shared.config);
            let loaded = shared
                .store
                .read(move |conn| {
                    let desired = desired_states(conn, &ids)?.pop();
                    Ok((desired, crate::logs::any_pending(conn, &ids[0], since)?))
                })
                .await;
            let desired = match loaded {
                Ok((Some((_, desired)), waiting)) => {
                    logs_waiting = Some(waiting);
                    desired
                }
                Ok((None, _)) => {
                    shared.sessions.unregister(&device_id, session_id);
                    return Err(Status::unauthenticated("device vanished from the registry"));
                }
                Err(e) => {
                    shared.sessions.unregister(&device_id, session_id);
                    return Err(internal(e));
                }
            };
            tx.send(Box::new(Ok(desired_message(desired))))
                .await
                .map_err(|_| Status::cancelled("stream closed"))?;
        }
        shared.sessions.saw(&device_id, now_unix());
        span.in_scope(|| tracing::info!("agent connected"));
        crate::events::record(
            &shared,
            Some(&device_id),
            "device.connected",
            Severity::Info,
            "sync stream opened",
        );
        // No placement pass of its own: the scheduler's tick runs one when presence changed
        // (Scheduler::due). A pass reads the whole fleet under the cluster lock; one per
        // stream open made a reconnecting fleet run them back to back.
        tokio::spawn(
            async move {
                // Requests made while the device was away (or on another replica) go out now.
                match logs_waiting {
                    Some(false) => {}
                    Some(true) => crate::logs::send_pending(&shared, &device_id).await,
                    None => crate::logs::deliver_pending(&shared, &device_id).await,
                }
                let mut event_bucket = TokenBucket::new(AGENT_EVENT_BURST, AGENT_EVENTS_PER_SECOND);
                let mut warned_invalid = false;
                let mut warned_rate = false;
                let mut end_reason = "the agent closed the stream".to_owned();
                let mut attestation = ak_public.map(|ak| crate::attestation::StreamAttestation::new(ak, &shared.config));
                // Waits for room on the stream, up to STALLED_STREAM; false when there is none.
                let send = |message: Result<CentralMessage, Status>| {
                    let tx = tx.clone();
                    async move {
                        matches!(tokio::time::timeout(STALLED_STREAM, tx.send(Box::new(message))).await, Ok(Ok(())))
                    }
                };
                let stalled_reason = format!("the device did not read its stream for {}s", STALLED_STREAM.as_secs());
                loop {
                    let received = tokio::select! {
                        message = inbound.message() => message,
                        outgoing = outbox.next() => {
                            match outgoing {
                                Outgoing::Desired(message) => {
                                    if !send(Ok(message)).await {
                                        end_reason = stalled_reason;
                                        stalled.cancel();
                                        break;
                                    }
                                }
                                Outgoing::End(status) => {
                                    end_reason = format!("ended by central: {}", status.message());
                                    // Unsent because the answer stream is gone already (the
                                    // connection closed, as when central stops): not a stall.
                                    if !send(Err(status)).await && !tx.is_closed() {
                                        stalled.cancel();
                                    }
                                    break;
                                }
                            }
                            continue;
                        }
                        _ = async {
                            match attestation.as_mut() {
                                Some(a) => a.due(&gate).await,
                                None => std::future::pending().await,
                            }
                        } => {
                            let Some(a) = attestation.as_mut() else { continue };
                            if !send(Ok(a.request(&gate))).await {
                                end_reason = stalled_reason;
                                stalled.cancel();
                                break;
                            }
                            continue;
                        }
                    };
                    match received {
                        Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) })) => {
                            shared.sessions.saw(&device_id, now_unix());
                            let apps = bounded_app_status(hb.apps);
                            let previous = shared.sessions.report_apps(
                                &device_id,
                                AppsReport {
                                    at: now_unix(),
                                    desired_revision: hb.desired_revision,
                                    apps: apps.clone(),
                                },
                            );
                            for event in crate::events::app_transitions(&device_id, previous.as_deref().map(|p| p.apps.as_slice()), &apps) {
                                shared.events.push(event);
                            }
                            if let Some(host) = hb.host {
                                let clock_offset_ms = (hb.sent_unix_ms > 0).then(|| hb.sent_unix_ms.saturating_sub(crate::store::events::now_unix_ms()));
                                let previous = shared.sessions.report_host(&device_id, HostReport { at: now_unix(), metrics: bounded_host_metrics(host), clock_offset_ms });
                                if let Some(offset) = clock_offset_ms {
                                    crate::events::clock_offset(&shared, &device_id, previous.and_then(|p| p.clock_offset_ms), offset);
                                }
                            }
                            if let Some(os) = hb.os {
                                crate::rollout::engine::on_heartbeat(&shared, &device_id, os).await;
                            }
                            let ack = CentralMessage { kind: Some(central_message::Kind::Ack(HeartbeatAck { seq: hb.seq })) };
                            if !send(Ok(ack)).await {
                                end_reason = stalled_reason;
                                stalled.cancel();
                                break;
                            }
                        }
                        Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Event(event)) })) => {
                            if !event_bucket.try_take() {
                                shared.events.rejected_rate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if !std::mem::replace(&mut warned_rate, true) {
                                    tracing::warn!("agent sends events faster than the per-stream limit; dropping the excess (counted in cairn_events_dropped_total)");
                                }
                                continue;
                            }
                            match crate::events::from_agent(&device_id, event, crate::store::events::now_unix_ms()) {
                                Ok(event) => shared.events.push(event),
                                Err(problem) => {
                                    shared.events.rejected_invalid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    if !std::mem::replace(&mut warned_invalid, true) {
                                        tracing::warn!(%problem, "refused an agent event (further ones on this stream are only counted)");
                                    }
                                }
                            }
                        }
                        Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Reply(reply)) })) => {
                            crate::logs::on_reply(&shared, &device_id, reply).await;
                        }
                        Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Attestation(report)) })) => {
                            let Some(a) = attestation.as_mut() else {
                                tracing::debug!("ignoring an attestation report from a device without a proven TPM");
                                continue;
                            };
                            if !a.on_report(&shared, &device_id, &gate, report).await {
                                break;
                            }
                        }
                        Ok(Some(_)) => tracing::debug!("ignoring an empty agent message"),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(error = %status.message(), "agent stream ended with an error");
                            end_reason = format!("stream ended: {}", cairn_proto::truncate_status_text(status.message(), 256));
                            break;
                        }
                    }
                }
                shared.sessions.unregister(&device_id, session_id);
                if stalled.is_cancelled() {
                    tracing::warn!(reason = %end_reason, "ended the stream of a device that stopped reading it");
                }
                tracing::info!("agent disconnected");
                crate::events::record(&shared, Some(&device_id), "device.disconnected", Severity::Info, end_reason);
            }
            .instrument(span),
        );
        let answers = futures::StreamExt::take_until(
            futures::StreamExt::map(ReceiverStream::new(rx), |item| *item),
            answers_end.cancelled_owned(),
        );
        Ok(Response::new(Box::pin(answers)))
    }

    async fn report_wipe(
        &self,
        request: Request<ReportWipeRequest>,
    ) -> Result<Response<ReportWipeResponse>, Status> {
        let device_id = device_id_from_peer(&request)?;
        let report = request.into_inner();
        if report.destroyed.len() > cairn_proto::MAX_WIPE_REPORT_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a wipe report lists at most {} items",
                cairn_proto::MAX_WIPE_REPORT_ITEMS
            )));
        }
        let cut = |text: &str| -> String {
            text.chars()
                .filter(|c| !c.is_control())
                .take(cairn_proto::MAX_WIPE_REPORT_ITEM_BYTES)
                .collect()
        };
        let mut detail = format!(
            "destroyed: {}",
            report
                .destroyed
                .iter()
                .map(|d| cut(d))
                .collect::<Vec<_>>()
                .join("; ")
        );
        if !report.error.is_empty() {
            detail.push_str(&format!("; not destroyed: {}", cut(&report.error)));
        }
        let id = device_id.clone();
        let message = detail.clone();
        let recorded = self
            .0
            .store
            .run(move |conn| {
                let tx = conn.transaction()?;
                if !devices::wipe_done(&tx, &id, now_unix())? {
                    return Ok(false);
                }
                audit::record(
                    &tx,
                    &format!("device:{id}"),
                    "device.wipe_done",
                    &id,
                    &message,
                )?;
                crate::store::events::insert(
                    &tx,
                    &crate::store::events::NewEvent::now(
                        Some(&id),
                        "device.wiped",
                        Severity::Warning,
                        format!("crypto-erase done: {message}"),
                    ),
                )?;
                tx.commit()?;
                Ok(true)
            })
            .await
            .map_err(internal)?;
        if !recorded {
            return Err(Status::permission_denied(format!(
                "device {device_id} has no crypto-erase pending; only a revoked device central ordered to wipe may report one"
            )));
        }
        tracing::warn!(device_id = %device_id, %detail, "device reported its crypto-erase");
        Ok(Response::new(ReportWipeResponse {}))
    }

    async fn get_secrets(
        &self,
        request: Request<GetSecretsRequest>,
    ) -> Result<Response<GetSecretsResponse>, Status> {
        let device_id = self.authorize(&request).await?;
        let span = tracing::info_span!("grpc.get_secrets", device_id = %device_id);
        let request = request.into_inner();
        let names = secret_names(&request)?;
        let shared = self.0.clone();
        let id = device_id.clone();
        let app = request.app.clone();
        // A read snapshot: a fleet fetching a rotated secret at once does not queue on the
        // registry's writer; only the audit rows are written, in groups.
        let found = self
            .0
            .store
            .read(move |conn| {
                let Some(device) = devices::get(conn, &id)? else {
                    return Ok(Err(Status::not_found("this device is not in the registry")));
                };
                let record = store_attestation::get(conn, &id)?;
                let state = crate::attestation::summary(
                    record.as_ref(),
                    &device.key_storage,
                    now_unix(),
                    shared.config.attestation_interval_secs,
                )
                .state;
                if let Err(why) = crate::secrets::release_allowed(
                    &state,
                    shared.config.release_secrets_to_unattested,
                ) {
                    return Ok(Err(Status::failed_precondition(why)));
                }
                // Only whether it is placed: its secret versions are read just below.
                if !store_apps::exists(conn, &id, &app)? {
                    return Ok(Err(Status::not_found(format!(
                        "app {app:?} is not placed on this device; its secrets go only to devices that run it"
                    ))));
                }
                let applying = store_secrets::applying(conn, &id)?
                    .remove(&app)
                    .unwrap_or_default();
                let mut found = Vec::new();
                let mut bytes = 0;
                for name in &names {
                    let Some(applied) = applying.get(name) else {
                        continue;
                    };
                    let secret_id = &applied.id;
                    if let Some((version, sealed)) = store_secrets::sealed(conn, secret_id)? {
                        // What does not fit goes in the agent's next call.
                        bytes += sealed.ciphertext.len();
                        if bytes > cairn_proto::MAX_SECRETS_REPLY_BYTES {
                            break;
                        }
                        found.push((name.clone(), secret_id.clone(), version, sealed));
                    }
                }
                Ok(Ok(found))
            })
            .instrument(span.clone())
            .await
            .map_err(internal)??;
        let released: Vec<String> = found
            .iter()
            .map(|(name, secret_id, version, _)| format!("{name}={secret_id}@{version}"))
            .collect();
        // On record before anything leaves central.
        self.0
            .audit_writer
            .record(
                format!("device:{device_id}"),
                "secret.release",
                device_id.clone(),
                format!("app={} released=[{}]", request.app, released.join(" ")),
            )
            .instrument(span.clone())
            .await
            .map_err(internal)?;
        // Off the runtime: opening may re-read the key files after a rotation elsewhere.
        let opener = self.0.clone();
        let opened = tokio::task::spawn_blocking(move || {
            found
                .into_iter()
                .map(|(name, secret_id, version, sealed)| {
                    let value = opener.vault.open(&secret_id, version, &sealed);
                    (name, version, value)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| internal(StoreError::Worker(e.to_string())))?;
        let mut secrets = Vec::with_capacity(opened.len());
        for (name, version, value) in opened {
            let value = value.map_err(|e| {
                    span.in_scope(|| tracing::error!(error = %e, "a secret could not be opened"));
                    Status::internal(format!(
                        "central could not open secret {name:?}; it is logged, an operator must set it again"
                    ))
                })?;
            secrets.push(SecretValue {
                name,
                version,
                value: value.to_vec(),
            });
        }
        span.in_scope(
            || tracing::info!(app = %request.app, released = secrets.len(), "secrets released"),
        );
        Ok(Response::new(GetSecretsResponse { secrets }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let device_id = self.authorize(&request).await?;
        Ok(Response::new(PingResponse {
            nonce: request.into_inner().nonce,
            device_id,
        }))
    }

    async fn escrow_recovery_key(
        &self,
        request: Request<EscrowRecoveryKeyRequest>,
    ) -> Result<Response<EscrowRecoveryKeyResponse>, Status> {
        let device_id = self.authorize(&request).await?;
        let span = tracing::info_span!("grpc.escrow_recovery_key", device_id = %device_id);
        let request = request.into_inner();
        if !valid_recovery_key_format(&request.recovery_key) {
            return Err(Status::invalid_argument(
                "recovery_key must be 8 groups of 6 digits joined by '-'",
            ));
        }
        if !valid_luks_uuid(&request.luks_uuid) {
            return Err(Status::invalid_argument(
                "luks_uuid must be the 36-character LUKS2 UUID of the data partition",
            ));
        }
        let shared = self.0.clone();
        let sealed = shared
            .escrow
            .seal(&device_id, &request.recovery_key)
            .map_err(|e| {
                tracing::error!(error = %e, "sealing a recovery key failed");
                Status::internal("central could not seal the recovery key; retry later")
            })?;
        let stored_at = now_unix();
        let row = SealedRecoveryKey {
            device_id: device_id.clone(),
            luks_uuid: request.luks_uuid,
            sealed,
            stored_at,
        };
        let store = shared.store.clone();
        let stored = store
            .run(move |conn| {
                let tx = conn.transaction()?;
                let same = recovery_keys::get(&tx, &row.device_id)?
                    .and_then(|old| {
                        shared
                            .escrow
                            .open(&old.device_id, &old.sealed)
                            .ok()
                            .map(|k| (k, old))
                    })
                    .is_some_and(|(k, old)| {
                        k == request.recovery_key && old.luks_uuid == row.luks_uuid
                    });
                if same {
                    return Ok(true);
                }
                if !recovery_keys::put(&tx, &row)? {
                    return Ok(false);
                }
                let actor = format!("device:{}", row.device_id);
                audit::record(
                    &tx,
                    &actor,
                    "recovery_key.escrow",
                    &row.device_id,
                    &format!("luks_uuid={}", row.luks_uuid),
                )?;
                tx.commit()?;
                Ok(true)
            })
            .instrument(span.clone())
            .await
            .map_err(internal)?;
        if !stored {
            return Err(Status::unauthenticated(format!(
                "device {device_id} is not in the registry"
            )));
        }
        span.in_scope(|| tracing::info!("recovery key escrowed"));
        Ok(Response::new(EscrowRecoveryKeyResponse {
            stored_unix: stored_at,
        }))
    }

    type ReadBundleStream = ReceiverStream<Result<BundleData, Status>>;

    async fn bundle_index(
        &self,
        request: Request<BundleIndexRequest>,
    ) -> Result<Response<BundleIndexResponse>, Status> {
        let device_id = self.authorize(&request).await?;
        let sha256 = request.into_inner().bundle_sha256;
        let span =
            tracing::info_span!("grpc.bundle_index", device_id = %device_id, sha256 = %sha256);
        async {
            let bundle = self.assigned_bundle(&device_id, &sha256).await?;
            let index = self.0.bundles.delta_index(&bundle.sha256).await.map_err(|e| {
                tracing::error!(error = %e, "indexing a bundle failed");
                Status::internal("central could not index the bundle; it is logged; download it whole with ReadBundle")
            })?;
            Ok(Response::new(BundleIndexResponse { bundle_size: bundle.size, index }))
        }
        .instrument(span)
        .await
    }

    async fn read_bundle(
        &self,
        request: Request<ReadBundleRequest>,
    ) -> Result<Response<Self::ReadBundleStream>, Status> {
        let device_id = self.authorize(&request).await?;
        let request = request.into_inner();
        let span = tracing::info_span!("grpc.read_bundle", device_id = %device_id, sha256 = %request.bundle_sha256, offset = request.offset, length = request.length);
        let bundle = self
            .assigned_bundle(&device_id, &request.bundle_sha256)
            .instrument(span.clone())
            .await?;
        let path = self.0.bundles.path(&bundle.sha256);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            span.in_scope(|| tracing::error!(path = %path.display(), error = %e, "a stored bundle's file cannot be opened"));
            Status::not_found(format!("bundle {} is registered but its file cannot be read; upload it again", bundle.sha256))
        })?;
        let size = bundle.size;
        if request.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of the {size}-byte bundle; ask from an offset below {size}",
                request.offset
            )));
        }
        let end = match request.length {
            0 => size,
            length => request.offset.saturating_add(length).min(size),
        };
        let (tx, rx) = mpsc::channel(READ_QUEUE_PIECES);
        let start = request.offset;
        tokio::spawn(
            async move {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut position = start;
                if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
                    tracing::error!(error = %e, "seeking in a bundle failed");
                    let _ = tx.send(Err(Status::internal("central could not read the bundle; retry later"))).await;
                    return;
                }
                while position < end {
                    let want = (end - position).min(READ_PIECE_BYTES as u64) as usize;
                    let mut data = vec![0u8; want];
                    let read = tokio::time::timeout(DISK_READ_TIMEOUT, file.read_exact(&mut data)).await;
                    let status = match read {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(format!("reading failed: {e}")),
                        Err(_) => Some(format!("reading took over {} s", DISK_READ_TIMEOUT.as_secs())),
                    };
                    if let Some(reason) = status {
                        tracing::error!(%reason, position, "serving a bundle range failed");
                        let _ = tx.send(Err(Status::internal("central could not read the bundle; retry from the last offset received"))).await;
                        return;
                    }
                    if tx.send(Ok(BundleData { offset: position, data })).await.is_err() {
                        tracing::debug!(position, "the device stopped reading");
                        return;
                    }
                    position += want as u64;
                }
                tracing::debug!(bytes = end - start, "bundle range served");
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Largest `BundleData` piece (the protocol's limit).
const READ_PIECE_BYTES: usize = 1024 * 1024;
/// Pieces queued per ReadBundle stream (bounds memory per download).
const READ_QUEUE_PIECES: usize = 4;
/// Deadline of one disk read while serving a bundle.
const DISK_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl AgentService {
    /// A stored bundle by its SHA-256: InvalidArgument when malformed, NotFound when unknown.
    /// The bundle `sha256`, only when it is the OS central assigned to `device_id`: a device
    /// reads the update it was sent, not every image central holds.
    async fn assigned_bundle(&self, device_id: &str, sha256: &str) -> Result<Bundle, Status> {
        if !is_sha256_hex(sha256) {
            return Err(Status::invalid_argument(
                "bundle_sha256 must be the 64 lower-case hex characters of the bundle's SHA-256 (DesiredState.os.bundle_sha256)",
            ));
        }
        let (wanted, id) = (sha256.to_owned(), device_id.to_owned());
        let (bundle, device) = self
            .0
            .store
            .read(move |conn| Ok((store_bundles::get(conn, &wanted)?, devices::get(conn, &id)?)))
            .await
            .map_err(internal)?;
        let assigned = device
            .and_then(|d| d.desired_os)
            .is_some_and(|os| os.bundle_sha256 == sha256);
        if !assigned {
            return Err(Status::permission_denied(format!(
                "bundle {sha256} is not the OS update central assigned to this device; devices download only their own update"
            )));
        }
        bundle.ok_or_else(|| {
            Status::not_found(format!(
                "central holds no bundle {sha256}; it may have been removed"
            ))
        })
    }
}
