//! One agent: its configuration, device key, facts, state directory and the main loop
//! (enroll when needed, then keep a Sync session up, renewing the certificate in time).

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::v1::DesiredState;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::certificate::CertificateInfo;
use crate::channel::{CentralDialer, ChannelError};
use crate::config::{AgentConfig, ConfigError};
use crate::csr::{build_csr, CsrError};
use crate::enroll::EnrollError;
use crate::facts::{FactsError, HardwareFacts};
use crate::key::{DeviceKey, KeyError};
use crate::shutdown::Shutdown;
use crate::state::{StateDir, StateError, StoredIdentity};
use crate::status::{Phase, Status, StatusReporter};
use crate::sync::{DesiredStateSink, RecordOnlySink, SessionEnd};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The device key could not be opened or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Hardware facts could not be gathered.
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// Central's CA or endpoint is unusable.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Enrollment failed for a local reason (key or disk).
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// A CSR could not be built.
    #[error(transparent)]
    Csr(#[from] CsrError),
}

/// Runs a blocking closure (disk, TPM) on the blocking pool. A panic in it is propagated.
pub(crate) async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task cancelled (runtime shutting down): {e}"),
    }
}

/// One device agent. Cheap to share behind an `Arc`; many can run in one process.
pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) state: StateDir,
    pub(crate) key: DeviceKey,
    pub(crate) facts: HardwareFacts,
    pub(crate) dialer: CentralDialer,
    pub(crate) token: String,
    pub(crate) status: StatusReporter,
    pub(crate) desired: watch::Sender<Option<Arc<DesiredState>>>,
    pub(crate) sink: Arc<dyn DesiredStateSink>,
    /// Events waiting for the Sync stream.
    pub(crate) events: Arc<crate::events::EventQueue>,
    /// Host metrics for heartbeats (keeps the previous CPU counters).
    pub(crate) host: std::sync::Mutex<crate::host_metrics::HostSampler>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("state_dir", &self.state.path())
            .field("serial", &self.facts.serial)
            .field("key_storage", &self.key.storage())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares an agent: validates `config`, creates the state directory, opens or creates the
    /// device key, gathers facts, reads central's CA and the stored desired state.
    pub async fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let span = info_span!("agent.init", state_dir = %config.state_dir.display());
        async move {
            config.validate(std::path::Path::new("<config>"))?;
            let prepared = {
                let config = config.clone();
                blocking(move || -> Result<_, AgentError> {
                    let state = StateDir::new(&config.state_dir);
                    state.ensure()?;
                    let token = config.resolve_enrollment_token()?;
                    // Check central's CA before creating a key for a config that cannot work.
                    let dialer = CentralDialer::from_config(&config)?;
                    let key = DeviceKey::open_or_create(&config)?;
                    let facts = HardwareFacts::gather(&config, &key.key_storage())?;
                    let desired = match state.load_desired() {
                        Ok(d) => d,
                        Err(e) => {
                            warn!(error = %e, "ignoring the stored desired state; central will send it again");
                            None
                        }
                    };
                    Ok((state, token, key, facts, dialer, desired))
                })
                .await?
            };
            let (state, token, key, facts, dialer, desired) = prepared;
            info!(serial = %facts.serial, key_storage = key.storage(), "agent prepared");
            Ok(Agent {
                status: StatusReporter::new(state.clone()),
                desired: watch::Sender::new(desired.map(Arc::new)),
                sink: Arc::new(RecordOnlySink),
                events: Arc::new(crate::events::EventQueue::default()),
                host: std::sync::Mutex::new(crate::host_metrics::HostSampler::new(config.metrics_mounts.clone())),
                config,
                state,
                key,
                facts,
                dialer,
                token,
            })
        }
        .instrument(span)
        .await
    }

    /// Replaces the desired-state sink (the runtime's reconcile loop).
    pub fn with_sink(mut self, sink: Arc<dyn DesiredStateSink>) -> Self {
        self.sink = sink;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The device key.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The facts sent to central.
    pub fn facts(&self) -> &HardwareFacts {
        &self.facts
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The queue of events waiting to be sent to central.
    pub fn events(&self) -> &Arc<crate::events::EventQueue> {
        &self.events
    }

    /// Follows the status (the same content as `status.json`).
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Follows the desired state held (stored one at start, then each newer revision).
    pub fn desired_state(&self) -> watch::Receiver<Option<Arc<DesiredState>>> {
        self.desired.subscribe()
    }

    /// Revision of the desired state held (0 = none).
    pub fn held_revision(&self) -> u64 {
        self.desired.borrow().as_ref().map_or(0, |d| d.revision)
    }

    /// A CSR for `CN=<serial>` signed by the device key (on the blocking pool).
    pub async fn build_csr(&self) -> Result<Vec<u8>, CsrError> {
        let key = self.key.clone();
        let serial = self.facts.serial.clone();
        blocking(move || build_csr(&key, &serial)).await
    }

    /// The stored identity if it is usable with the device key: certificate parses and carries
    /// the device key. A certificate for another key is moved aside so the device enrolls again.
    pub async fn load_identity(
        &self,
    ) -> Result<Option<(StoredIdentity, CertificateInfo)>, AgentError> {
        let state = self.state.clone();
        let Some(mut identity) = blocking(move || state.load_identity()).await? else {
            return Ok(None);
        };
        let info = match CertificateInfo::parse(&identity.cert_der).and_then(|info| {
            info.check_key(self.key.public_key_spki_der())
                .map(|()| info)
        }) {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, "stored device certificate unusable; moving it aside and enrolling again");
                let state = self.state.clone();
                blocking(move || state.discard_certificate()).await?;
                return Ok(None);
            }
        };
        if let Some(id) = &info.device_id {
            if identity.device_id.is_empty() {
                identity.device_id = id.clone();
            }
        }
        Ok(Some((identity, info)))
    }

    /// Runs until `shutdown`: enrolls when there is no usable certificate, renews the
    /// certificate when due and keeps the Sync session up, with backoff on failures. Errors
    /// only for local failures (device key, disk).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let span =
            info_span!("agent", device_id = tracing::field::Empty, serial = %self.facts.serial);
        self.run_inner(Shutdown::new(shutdown), span.clone())
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        mut shutdown: Shutdown,
        span: tracing::Span,
    ) -> Result<(), AgentError> {
        if let Some(desired) = self.desired.borrow().clone() {
            info!(
                revision = desired.revision,
                "running from the stored desired state"
            );
            self.sink.apply(&desired);
        }
        self.queue_start_events().await;
        let revision = self.held_revision();
        let mut current = self.load_identity().await?;
        self.status
            .update(|s| {
                s.desired_revision = revision;
                s.phase = if current.is_some() {
                    Phase::Offline
                } else {
                    Phase::Enrolling
                };
            })
            .await;
        self.status.write_current().await;
        let mut backoff = Backoff::new(self.config.backoff_initial(), self.config.backoff_max());
        let mut renew_backoff = backoff.clone();
        let mut renew_allowed_after = Instant::now();
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            let now = time::OffsetDateTime::now_utc();
            let (mut identity, mut cert) = match current.take() {
                Some((identity, cert)) if !cert.expired_at(now) => (identity, cert),
                expired => {
                    if expired.is_some() {
                        warn!("device certificate expired; enrolling again with the same key");
                    }
                    match self.enroll(&mut shutdown).await? {
                        None => return Ok(()),
                        Some(identity) => {
                            let cert = CertificateInfo::parse(&identity.cert_der)
                                .expect("enroll checked the certificate");
                            (identity, cert)
                        }
                    }
                }
            };
            span.record("device_id", identity.device_id.as_str());
            self.status
                .update(|s| {
                    s.device_id = Some(identity.device_id.clone());
                    s.cert_not_after = Some(cert.not_after_rfc3339());
                })
                .await;

            if Instant::now() >= renew_allowed_after
                && cert.renewal_due(now, self.config.renew_when_remaining_fraction)
            {
                match shutdown.run(self.renew(&identity)).await {
                    None => return Ok(()),
                    Some(Ok(renewed)) => {
                        cert = CertificateInfo::parse(&renewed.cert_der)
                            .expect("renew checked the certificate");
                        identity = renewed;
                        if cert.renewal_due(
                            time::OffsetDateTime::now_utc(),
                            self.config.renew_when_remaining_fraction,
                        ) {
                            let wait = renew_backoff.next_delay();
                            warn!(retry_in = ?wait, "central issued a certificate already due for renewal; check central's certificate lifetime");
                            renew_allowed_after = Instant::now() + wait;
                        } else {
                            renew_backoff.reset();
                        }
                    }
                    Some(Err(e)) if e.is_revoked() => {
                        self.revoked(&e.to_string()).await;
                        current = Some((identity, cert));
                        if !shutdown.sleep(backoff.slow_delay()).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        let wait = renew_backoff.next_delay();
                        warn!(error = %e, retry_in = ?wait, "certificate renewal failed; using the current certificate meanwhile");
                        renew_allowed_after = Instant::now() + wait;
                    }
                }
            }

            if let Some(Err(e)) = shutdown
                .run(self.escrow_pending_recovery_key(&identity))
                .await
            {
                warn!(error = %e, "could not escrow the data partition's recovery key; retrying on the next connection");
            }
            let end = self
                .sync_session(&identity, &cert, renew_allowed_after, &mut shutdown)
                .await;
            current = Some((identity, cert));
            let delay = match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::RenewDue => continue,
                SessionEnd::Failed { error, .. } if error.is_revoked() => {
                    self.revoked(&error.to_string()).await;
                    backoff.slow_delay()
                }
                SessionEnd::Failed { error, stable } => {
                    if stable {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    warn!(error = %error, retry_in = ?delay, "not connected to central; running from the stored desired state");
                    self.status
                        .set_phase(Phase::Offline, Some(error.to_string()))
                        .await;
                    delay
                }
            };
            if !shutdown.sleep(delay).await {
                return Ok(());
            }
        }
    }

    /// Queue `agent.started`, and `data.unlock` with the outcome `cairn-agent unlock` wrote at
    /// this boot (when the data partition is managed and the file is there).
    async fn queue_start_events(&self) {
        use cairn_proto::v1::EventSeverity;
        self.events.push(
            "agent.started",
            EventSeverity::Info,
            &format!("cairn-agent {} started", env!("CARGO_PKG_VERSION")),
        );
        if !self.config.disk.enabled {
            return;
        }
        let path = self.config.disk.lock_status.clone();
        let read = blocking(move || std::fs::read(&path)).await;
        let status: crate::data::LockStatus = match read.map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                warn!(path = %self.config.disk.lock_status.display(), error = %e, "the data unlock status does not parse; not reported");
                return;
            }
            Err(_) => return,
        };
        let severity = match status.state.as_str() {
            "locked" => EventSeverity::Error,
            "recovered" => EventSeverity::Warning,
            _ => EventSeverity::Info,
        };
        let mut message = format!("data partition {}", status.state);
        if let Some(reason) = &status.reason {
            message.push_str(&format!(": {reason}"));
        }
        if !status.changed_pcrs.is_empty() {
            message.push_str(&format!(
                " (changed PCRs: {})",
                status.changed_pcrs.join(", ")
            ));
        }
        self.events.push("data.unlock", severity, &message);
    }

    async fn revoked(&self, reason: &str) {
        error!(
            reason,
            "central says this device is REVOKED; keeping the key and retrying slowly"
        );
        self.status
            .set_phase(Phase::Revoked, Some(reason.to_string()))
            .await;
    }
}
