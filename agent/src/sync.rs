//! The long-lived Sync session with central over mTLS (heartbeats out, desired state in),
//! certificate renewal, `Ping` and the recovery key's escrow: everything the device does with
//! central under its own certificate. [`Session`] is the narrow handle the agent builds for it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_io::PathContext;

use cairn_proto::v1::agent_client::AgentClient;
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, AttestationReport, AttestationRequest,
    DesiredState, EscrowRecoveryKeyRequest, GetSecretsRequest, Heartbeat, RenewRequest,
    ReportWipeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::blocking::blocking;
use crate::boot::bless_current_boot;
use crate::certificate::{check_issued_certificate, CertificateError, CertificateInfo};
use crate::channel::{agent_client, CentralDialer, ChannelError, REQUEST_TIMEOUT};
use crate::config::BootConfig;
use crate::csr::{build_csr_async, CsrError};
use crate::data::PendingRecoveryKey;
use crate::desired::DesiredStore;
use crate::events::EventQueue;
use crate::facts::HardwareFacts;
use crate::host_metrics::HostSampler;
use crate::identity::IdentityStore;
use crate::key::DeviceKey;
use crate::liveness::Liveness;
use crate::log_requests::LogSources;
use crate::secrets::SecretCache;
use crate::shutdown::Shutdown;
use crate::state::{read_optional, StateError, StoredIdentity};
use crate::status::{Phase, StatusReporter};

/// A failed call on the Agent service (Sync, Renew, Ping).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The mTLS channel could not be opened.
    #[error(transparent)]
    Connect(#[from] ChannelError),
    /// Central answered with a gRPC error.
    #[error("central returned {code:?}: {message}")]
    Status {
        /// gRPC status code (`PermissionDenied` = device revoked).
        code: Code,
        /// Central's message.
        message: String,
        /// Central ordered this revoked device's crypto-erase (the `cairn-wipe` trailer).
        wipe_ordered: bool,
        /// How long central asked the device to wait before calling again.
        retry_after: Option<Duration>,
    },
    /// No answer in time.
    #[error("central did not answer {what} within {after:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The stream ended or went silent.
    #[error("sync stream ended: {0}")]
    StreamEnded(String),
    /// Central issued an unusable certificate.
    #[error("central issued an unusable certificate: {0}")]
    BadCertificate(#[source] CertificateError),
    /// The CSR could not be built.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The state could not be stored.
    #[error(transparent)]
    State(#[from] StateError),
}

impl SyncError {
    /// Central says this device is revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(
            self,
            SyncError::Status {
                code: Code::PermissionDenied,
                ..
            }
        )
    }

    /// Central revoked this device and ordered its crypto-erase.
    pub fn is_wipe_order(&self) -> bool {
        matches!(
            self,
            SyncError::Status {
                code: Code::PermissionDenied,
                wipe_ordered: true,
                ..
            }
        )
    }

    fn from_status(status: tonic::Status) -> Self {
        let wipe_ordered = status.code() == Code::PermissionDenied
            && status
                .metadata()
                .get(cairn_proto::WIPE_METADATA_KEY)
                .is_some_and(|v| v.as_bytes() == cairn_proto::WIPE_ORDERED.as_bytes());
        SyncError::Status {
            code: status.code(),
            message: status.message().to_string(),
            wipe_ordered,
            retry_after: cairn_proto::retry_after(&status),
        }
    }

    /// How long central asked the device to wait before it calls again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a Sync session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The certificate is due for renewal; renew and reconnect with the new one.
    RenewDue,
    /// The session failed; `stable` when it had been up long enough to reset the backoff.
    Failed {
        /// What went wrong.
        error: SyncError,
        /// The connection had been healthy for a while.
        stable: bool,
    },
}

/// How often an idle session loop wakes to renew its promise to the watchdog.
const LIVENESS_TICK: Duration = Duration::from_secs(10);

/// What the device's calls to central under its certificate need, and nothing else of the agent.
pub struct Session {
    pub(crate) identity: IdentityStore,
    pub(crate) dialer: CentralDialer,
    pub(crate) facts: HardwareFacts,
    pub(crate) status: Arc<StatusReporter>,
    pub(crate) desired: DesiredStore,
    pub(crate) events: Arc<EventQueue>,
    pub(crate) host: Arc<Mutex<HostSampler>>,
    pub(crate) logs: LogSources,
    /// Mark the boot good once connected (`None`: not this boot's job).
    pub(crate) bless: Option<BootConfig>,
    pub(crate) heartbeat_every: Duration,
    pub(crate) renew_fraction: f64,
    /// The data partition's recovery key waiting for escrow (`None`: no managed partition).
    pub(crate) pending_recovery_key: Option<PathBuf>,
    pub(crate) liveness: Liveness,
    /// Where the apps' secret values go (`None`: apps are off, nothing to fetch).
    pub(crate) secrets: Option<Arc<SecretCache>>,
}

/// How long a session waits before asking central again for secrets it withheld or could not
/// send (a device whose attestation is pending, a secret not set yet).
const SECRETS_RETRY: Duration = Duration::from_secs(30);

/// Most GetSecrets rounds one fetch makes: central sends what fits in one answer, and the rest in
/// the next rounds.
const SECRETS_ROUNDS: usize = 8;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("endpoint", &self.dialer.endpoint())
            .field("serial", &self.facts.serial)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// One unary call on the Agent service over a fresh mTLS channel with `identity`, bounded by
    /// [`REQUEST_TIMEOUT`]; `what` names the call in errors.
    async fn unary<T, F, Fut>(
        &self,
        identity: &StoredIdentity,
        what: &'static str,
        call: F,
    ) -> Result<T, SyncError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self
            .dialer
            .device_channel(identity.cert_der.clone(), self.identity.key().clone())
            .await?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, call(agent_client(channel)))
            .await
            .map_err(|_| SyncError::Timeout {
                what,
                after: REQUEST_TIMEOUT,
            })?
            .map_err(SyncError::from_status)?;
        Ok(response.into_inner())
    }

    /// Calls `Renew` with a fresh CSR (same key), checks and stores the new certificate.
    pub async fn renew(&self, identity: &StoredIdentity) -> Result<StoredIdentity, SyncError> {
        let span = info_span!("central.renew", device_id = %identity.device_id);
        async {
            let csr_der = build_csr_async(self.identity.key(), &self.facts.serial).await?;
            let response = self
                .unary(identity, "Renew", |mut client| async move {
                    client.renew(RenewRequest { csr_der }).await
                })
                .await?;
            let info = check_issued_certificate(
                &response.certificate_der,
                self.identity.key().public_key_spki_der(),
                &identity.device_id,
            )
            .map_err(SyncError::BadCertificate)?;
            self.identity
                .save_certificate(&response.certificate_der)
                .await?;
            info!(not_after = %info.not_after_rfc3339(), "device certificate renewed and stored");
            self.status
                .update(|s| s.cert_not_after = Some(info.not_after_rfc3339()))
                .await;
            Ok(StoredIdentity {
                cert_der: response.certificate_der,
                ..identity.clone()
            })
        }
        .instrument(span)
        .await
    }

    /// Calls `Ping` over mTLS with the stored identity; returns the device id central saw.
    pub async fn ping(&self, identity: &StoredIdentity, nonce: u64) -> Result<String, SyncError> {
        let response = self
            .unary(identity, "Ping", |mut client| async move {
                client.ping(cairn_proto::v1::PingRequest { nonce }).await
            })
            .await?;
        if response.nonce != nonce {
            return Err(SyncError::StreamEnded(format!(
                "Ping answered nonce {} for {nonce}",
                response.nonce
            )));
        }
        Ok(response.device_id)
    }

    /// Tell central the crypto-erase it ordered is done (before the identity goes).
    pub async fn report_wipe(
        &self,
        identity: &StoredIdentity,
        destroyed: Vec<String>,
        error: String,
    ) -> Result<(), SyncError> {
        let span = info_span!("central.report_wipe", device_id = %identity.device_id);
        self.unary(identity, "ReportWipe", |mut client| async move {
            client
                .report_wipe(ReportWipeRequest { destroyed, error })
                .await
        })
        .instrument(span)
        .await?;
        Ok(())
    }

    /// Hands central the recovery key the unlock step parked on the data partition, then deletes
    /// the file. Nothing to do when there is none. A failure keeps the file for the next
    /// connection.
    pub async fn escrow_pending_recovery_key(
        &self,
        identity: &StoredIdentity,
    ) -> Result<(), SyncError> {
        let Some(path) = self.pending_recovery_key.clone() else {
            return Ok(());
        };
        let span = info_span!("central.escrow_recovery_key", device_id = %identity.device_id);
        async {
            let read_path = path.clone();
            let Some(bytes) = blocking(move || read_optional(&read_path)).await? else {
                return Ok(());
            };
            let pending: PendingRecoveryKey = serde_json::from_slice(&bytes).map_err(|e| {
                SyncError::State(StateError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            })?;
            let request = EscrowRecoveryKeyRequest {
                recovery_key: pending.recovery_key,
                luks_uuid: pending.luks_uuid,
            };
            self.unary(identity, "EscrowRecoveryKey", |mut client| async move {
                client.escrow_recovery_key(request).await
            })
            .await?;
            let remove_path = path.clone();
            blocking(move || std::fs::remove_file(&remove_path).at("remove", &remove_path))
                .await
                .map_err(StateError::from)?;
            info!("recovery key escrowed to central and removed from the device");
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn heartbeat(&self, seq: u64) -> AgentMessage {
        AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(Heartbeat {
                seq,
                desired_revision: self.desired.held_revision(),
                sent_unix_ms: self.dialer.clock().now_unix_ms(),
                facts: Some(self.facts.to_proto()),
                apps: self.desired.sink().observed_apps(),
                os: self.desired.sink().observed_os(),
                host: Some(self.host.lock().unwrap_or_else(|p| p.into_inner()).sample()),
            })),
        }
    }

    /// Move queued events onto the stream while it has room; the rest wait for the next call.
    fn send_queued_events(&self, tx: &mpsc::Sender<AgentMessage>) {
        while let Ok(permit) = tx.try_reserve() {
            let Some(event) = self.events.pop() else {
                return;
            };
            debug!(kind = %event.kind, "event sent");
            permit.send(AgentMessage {
                kind: Some(agent_message::Kind::Event(event)),
            });
        }
    }

    /// Read the requested log lines off the session's loop and send the reply on the stream.
    fn spawn_log_reply(
        &self,
        request: cairn_proto::v1::LogRequest,
        tx: mpsc::Sender<AgentMessage>,
    ) {
        let logs = self.logs.clone();
        tokio::spawn(
            async move {
                let reply = logs.answer(request).await;
                let message = AgentMessage {
                    kind: Some(agent_message::Kind::Reply(reply)),
                };
                if tokio::time::timeout(REQUEST_TIMEOUT, tx.send(message))
                    .await
                    .is_err()
                {
                    warn!("a log reply could not be sent: the stream to central is backed up");
                }
            }
            .in_current_span(),
        );
    }

    /// Quote the boot PCRs central asked for off the session's loop (the TPM is slow) and send
    /// the report on the stream; a device without a TPM key, or a TPM that fails, reports why.
    fn spawn_attestation(&self, request: AttestationRequest, tx: mpsc::Sender<AgentMessage>) {
        let key = self.identity.key().clone();
        let os_version = self
            .desired
            .sink()
            .observed_os()
            .map(|os| os.version)
            .filter(|v| !v.is_empty())
            .or_else(|| {
                let text = std::fs::read_to_string("/etc/os-release").ok()?;
                crate::os_release::os_release_value(&text, "VERSION_ID")
            })
            .unwrap_or_default();
        tokio::spawn(
            async move {
                let nonce = request.nonce.clone();
                let answer = match key {
                    DeviceKey::Tpm(key) => {
                        let pcrs: Vec<u8> = request
                            .pcrs
                            .iter()
                            .filter_map(|p| u8::try_from(*p).ok())
                            .collect();
                        blocking(move || key.quote(&request.nonce, &pcrs))
                            .await
                            .map_err(|e| e.to_string())
                    }
                    DeviceKey::Software(_) => {
                        Err("this device's key is not in a TPM; it cannot quote".to_owned())
                    }
                };
                let report = match answer {
                    Ok(attestation) => {
                        info!(pcrs = attestation.pcrs.len(), log_bytes = attestation.event_log.len(), "boot PCRs quoted for central");
                        AttestationReport {
                            nonce,
                            quote: attestation.quote,
                            signature: attestation.signature,
                            pcrs: attestation
                                .pcrs
                                .into_iter()
                                .map(|(index, value)| (u32::from(index), value.to_vec()))
                                .collect(),
                            event_log: attestation.event_log,
                            os_version,
                            error: String::new(),
                        }
                    }
                    Err(error) => {
                        warn!(%error, "could not quote the boot PCRs for central");
                        AttestationReport {
                            nonce,
                            os_version,
                            error,
                            ..Default::default()
                        }
                    }
                };
                let message = AgentMessage {
                    kind: Some(agent_message::Kind::Attestation(report)),
                };
                if tokio::time::timeout(REQUEST_TIMEOUT, tx.send(message))
                    .await
                    .is_err()
                {
                    warn!("an attestation report could not be sent: the stream to central is backed up");
                }
            }
            .in_current_span(),
        );
    }

    /// Fetch the secret values the held desired state names and the cache lacks, in a task (at
    /// most one at a time: `fetching`); once some arrived, the sink gets the state again so the
    /// services that use them are (re)made.
    fn spawn_secret_fetch(
        &self,
        client: &AgentClient<Channel>,
        fetching: &Arc<std::sync::atomic::AtomicBool>,
    ) {
        use std::sync::atomic::Ordering;
        let Some(cache) = self.secrets.clone() else {
            return;
        };
        let Some(desired) = self.desired.current() else {
            return;
        };
        if cache.missing(&desired).is_empty() || fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut client = client.clone();
        let fetching = fetching.clone();
        let store = self.desired.clone();
        tokio::spawn(
            async move {
                let mut stored = 0;
                for _ in 0..SECRETS_ROUNDS {
                    let mut progress = 0;
                    let Some(desired) = store.current() else { break };
                    for (app, names) in cache.missing(&desired) {
                        let request = GetSecretsRequest { app: app.clone(), names };
                        let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.get_secrets(request)).await;
                        let values = match answer {
                            Ok(Ok(reply)) => reply.into_inner().secrets,
                            Ok(Err(status)) => {
                                warn!(app, code = ?status.code(), reason = status.message(), "central did not release the app's secrets; asking again later");
                                continue;
                            }
                            Err(_) => {
                                warn!(app, "central did not answer for the app's secrets in time; asking again later");
                                continue;
                            }
                        };
                        let cache = cache.clone();
                        let app_name = app.clone();
                        match blocking(move || cache.store(&app_name, values)).await {
                            Ok(n) => progress += n,
                            Err(e) => error!(app, error = %e, "could not store the app's secrets"),
                        }
                    }
                    stored += progress;
                    if progress == 0 {
                        break;
                    }
                }
                fetching.store(false, Ordering::Release);
                if stored > 0 {
                    if let Some(current) = store.current() {
                        store.sink().apply(&current);
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Stores a newer desired state, publishes it and hands it to the sink; older or equal
    /// revisions are ignored.
    pub async fn accept_desired(&self, desired: DesiredState) -> Result<bool, StateError> {
        if !self.desired.store(&desired).await? {
            return Ok(false);
        }
        self.status
            .update(|s| s.desired_revision = desired.revision)
            .await;
        self.desired.publish(desired);
        Ok(true)
    }

    /// One Sync session: connect with `identity`, heartbeat immediately and then every
    /// `heartbeat_interval`, take desired states, until shutdown, renewal time or failure.
    pub async fn sync_session(
        &self,
        identity: &StoredIdentity,
        cert: &CertificateInfo,
        renew_allowed_after: Instant,
        shutdown: &mut Shutdown,
    ) -> SessionEnd {
        let span = info_span!("central.sync", device_id = %identity.device_id);
        self.sync_session_inner(identity, cert, renew_allowed_after, shutdown)
            .instrument(span)
            .await
    }

    async fn sync_session_inner(
        &self,
        identity: &StoredIdentity,
        cert: &CertificateInfo,
        renew_allowed_after: Instant,
        shutdown: &mut Shutdown,
    ) -> SessionEnd {
        let failed = |error: SyncError, stable: bool| SessionEnd::Failed { error, stable };
        let connect = self
            .dialer
            .device_channel(identity.cert_der.clone(), self.identity.key().clone());
        let channel = match shutdown.run(connect).await {
            None => return SessionEnd::Shutdown,
            Some(Ok(c)) => c,
            Some(Err(e)) => return failed(e.into(), false),
        };
        let (tx, rx) = mpsc::channel::<AgentMessage>(8);
        let mut seq = 1;
        let _ = tx.try_send(self.heartbeat(seq));
        let mut client = agent_client(channel);
        let secrets_client = client.clone();
        let fetching = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = tokio::time::timeout(REQUEST_TIMEOUT, client.sync(ReceiverStream::new(rx)));
        let mut inbound = match shutdown.run(open).await {
            None => return SessionEnd::Shutdown,
            Some(Err(_)) => {
                return failed(
                    SyncError::Timeout {
                        what: "Sync",
                        after: REQUEST_TIMEOUT,
                    },
                    false,
                )
            }
            Some(Ok(Err(status))) => return failed(SyncError::from_status(status), false),
            Some(Ok(Ok(response))) => response.into_inner(),
        };
        self.status
            .update(|s| {
                s.phase = Phase::Connected;
                s.last_error = None;
            })
            .await;
        if let Some(cfg) = self.bless.clone() {
            // Connected: this boot is good enough to keep (see crate::boot).
            if let Err(e) = blocking(move || bless_current_boot(&cfg)).await {
                warn!(error = %e, "could not mark the boot good; systemd-boot may fall back to the other slot");
            }
        }
        let heartbeat_every = self.heartbeat_every;
        let silence_limit = heartbeat_every * 3 + Duration::from_secs(10);
        let started = Instant::now();
        let mut heard_from_central = false;
        let mut last_heard = Instant::now();
        let stable = |heard: bool| heard && started.elapsed() >= heartbeat_every * 2;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let report_now = self.desired.sink().report_now().unwrap_or_default();
        // Wakes the loop so it renews its promise to the watchdog even when nothing happens.
        let mut alive = tokio::time::interval(LIVENESS_TICK);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.send_queued_events(&tx);
        self.spawn_secret_fetch(&secrets_client, &fetching);
        let mut secrets_asked = Instant::now();
        loop {
            self.liveness.step();
            tokio::select! {
                _ = shutdown.triggered() => return SessionEnd::Shutdown,
                _ = alive.tick() => {}
                _ = report_now.notified() => ticker.reset_immediately(),
                _ = self.events.added() => self.send_queued_events(&tx),
                _ = ticker.tick() => {
                    let now = self.dialer.clock().now();
                    if self.dialer.clock().is_verified()
                        && Instant::now() >= renew_allowed_after
                        && cert.renewal_due(now, self.renew_fraction)
                    {
                        info!("device certificate due for renewal; ending the session to renew");
                        return SessionEnd::RenewDue;
                    }
                    if last_heard.elapsed() > silence_limit {
                        return failed(SyncError::StreamEnded(format!(
                            "no message from central for {:?}", last_heard.elapsed()
                        )), stable(heard_from_central));
                    }
                    seq += 1;
                    if secrets_asked.elapsed() >= SECRETS_RETRY {
                        secrets_asked = Instant::now();
                        self.spawn_secret_fetch(&secrets_client, &fetching);
                    }
                    // Events left over because the stream was backed up go out with the tick.
                    self.send_queued_events(&tx);
                    match tx.try_send(self.heartbeat(seq)) {
                        Ok(()) => debug!(seq, "heartbeat queued"),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            warn!(seq, "heartbeat skipped: stream to central is backed up");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return failed(SyncError::StreamEnded("request stream closed".into()),
                                stable(heard_from_central));
                        }
                    }
                }
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => return failed(
                            SyncError::StreamEnded("central closed the stream".into()),
                            stable(heard_from_central)),
                        Err(status) => return failed(SyncError::from_status(status),
                            stable(heard_from_central)),
                    };
                    heard_from_central = true;
                    last_heard = Instant::now();
                    match message.kind {
                        Some(central_message::Kind::Desired(desired)) => {
                            if let Err(e) = self.accept_desired(desired).await {
                                error!(error = %e, "cannot store the desired state; reconnecting to get it again");
                                return failed(e.into(), false);
                            }
                            secrets_asked = Instant::now();
                            self.spawn_secret_fetch(&secrets_client, &fetching);
                        }
                        Some(central_message::Kind::Ack(ack)) => debug!(seq = ack.seq, "heartbeat acknowledged"),
                        Some(central_message::Kind::Logs(request)) => self.spawn_log_reply(request, tx.clone()),
                        Some(central_message::Kind::Attest(request)) => self.spawn_attestation(request, tx.clone()),
                        None => debug!("empty message from central ignored"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_asking_for_a_later_retry_says_how_much_later() {
        let status = cairn_proto::with_retry_after(
            tonic::Status::unavailable("central is shutting down"),
            Duration::from_millis(42_000),
        );
        let error = SyncError::from_status(status);
        assert_eq!(error.retry_after(), Some(Duration::from_millis(42_000)));
        assert!(!error.is_revoked());
        let plain = SyncError::from_status(tonic::Status::unavailable("gone"));
        assert_eq!(plain.retry_after(), None);
        assert_eq!(SyncError::StreamEnded("x".into()).retry_after(), None);
    }
}
