//! One agent, assembled here and nowhere else: its configuration, device key, facts, state
//! directory, and the narrow handle each subsystem gets ([`Enroller`], [`Session`],
//! [`UpdateLink`], the apps' sink); then the main loop (enroll when needed, then keep a Sync
//! session up, renewing the certificate in time).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::v1::DesiredState;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn, Instrument};

use crate::apps::AppsSink;
use crate::backoff::Backoff;
use crate::blocking::blocking;
use crate::certificate::CertificateInfo;
use crate::channel::{CentralDialer, ChannelError};
use crate::clock::Clock;
use crate::config::{AgentConfig, ConfigError};
use crate::csr::{build_csr_async, CsrError};
use crate::data::LockStatus;
use crate::desired::DesiredStore;
use crate::enroll::{EnrollError, EnrollOutcome, Enroller};
use crate::events::EventQueue;
use crate::facts::{FactsError, HardwareFacts};
use crate::host_metrics::HostSampler;
use crate::identity::IdentityStore;
use crate::key::{DeviceKey, KeyError};
use crate::liveness::Liveness;
use crate::log_requests::LogSources;
use crate::secrets::{SecretCache, SecretCacheError};
use crate::secrets_key::CacheKeyStore;
use crate::shutdown::Shutdown;
use crate::sink::DesiredStateSink;
use crate::state::{StateDir, StateError, StoredIdentity, STATUS_FILE};
use crate::status::{Phase, Status, StatusReporter};
use crate::sync::{Session, SessionEnd, SyncError};
use crate::time_sync::TimeKeeper;
use crate::update::{PreparedUpdate, UpdateLink, UpdateStarter};

/// How long a wiped agent sleeps between promises to the watchdog.
const LIVENESS_IDLE: Duration = Duration::from_secs(30);

/// Directory of the apps' secret values under the state directory (see [`SecretCache`]).
const SECRETS_DIR: &str = "secrets-encrypted";

/// Where an earlier agent kept them in plain text ([`SecretCache::adopt_legacy`]).
const PLAIN_SECRETS_DIR: &str = "secrets";

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
    /// The secrets directory or its key is unusable.
    #[error(transparent)]
    Secrets(#[from] SecretCacheError),
}

/// One device agent. Cheap to share behind an `Arc`; many can run in one process.
pub struct Agent {
    config: AgentConfig,
    identity: IdentityStore,
    facts: HardwareFacts,
    dialer: CentralDialer,
    token: String,
    status: Arc<StatusReporter>,
    desired: DesiredStore,
    /// Events waiting for the Sync stream.
    events: Arc<EventQueue>,
    /// Host metrics for heartbeats (keeps the previous CPU counters).
    host: Arc<Mutex<HostSampler>>,
    /// The main loop's promise to the watchdog.
    liveness: Liveness,
    /// The clock and its corrections from central's signed time.
    time: Arc<TimeKeeper>,
    /// The apps' secret values (fetched only with `[apps] enabled`).
    secrets: Arc<SecretCache>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("state_dir", &self.identity.state().path())
            .field("serial", &self.facts.serial)
            .field("key_storage", &self.identity.key().storage())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares an agent: validates `config`, creates the state directory, opens or creates the
    /// device key, gathers facts, reads central's CA and the stored desired state. Its clock is
    /// the system clock with `[time] set_system_clock`, else a process-local one.
    pub async fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let clock = if config.time.set_system_clock {
            Clock::system()
        } else {
            Clock::virtual_offset(Duration::ZERO, false)
        };
        Self::with_clock(config, clock).await
    }

    /// [`Agent::new`] with the given clock (tests and the simulator give agents wrong clocks).
    pub async fn with_clock(config: AgentConfig, clock: Clock) -> Result<Agent, AgentError> {
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
                    let dialer = CentralDialer::from_config(&config, clock)?;
                    let key = DeviceKey::open_or_create(&config)?;
                    let facts = HardwareFacts::gather(&config, &key.key_storage())?;
                    let desired = match state.load_desired() {
                        Ok(d) => d,
                        Err(e) => {
                            warn!(error = %e, "ignoring the stored desired state; central will send it again");
                            None
                        }
                    };
                    let cache_key = CacheKeyStore::for_device_key(&key, &config.state_dir);
                    let secrets =
                        SecretCache::open(&config.state_dir.join(SECRETS_DIR), &cache_key)?;
                    secrets.adopt_legacy(&config.state_dir.join(PLAIN_SECRETS_DIR));
                    Ok((state, token, key, facts, dialer, desired, secrets))
                })
                .await?
            };
            let (state, token, key, facts, dialer, desired, secrets) = prepared;
            info!(serial = %facts.serial, key_storage = key.storage(), "agent prepared");
            let events = Arc::new(EventQueue::default());
            Ok(Agent {
                time: Arc::new(TimeKeeper::new(&config, dialer.clone(), events.clone())),
                status: Arc::new(StatusReporter::new(state.file(STATUS_FILE))),
                desired: DesiredStore::new(state.clone(), desired),
                events,
                host: Arc::new(Mutex::new(HostSampler::new(config.metrics_mounts.clone()))),
                liveness: Liveness::new(),
                secrets: Arc::new(secrets),
                identity: IdentityStore::new(state, key),
                config,
                facts,
                dialer,
                token,
            })
        }
        .instrument(span)
        .await
    }

    /// The apps' secret values, for a sink assembled outside [`Agent::with_configured_apps`].
    pub fn secrets(&self) -> Arc<SecretCache> {
        self.secrets.clone()
    }

    /// Replaces the desired-state sink (the runtime's reconcile loop).
    pub fn with_sink(mut self, sink: Arc<dyn DesiredStateSink>) -> Self {
        self.desired = self.desired.with_sink(sink);
        self
    }

    /// Attaches an [`AppsSink`] (starting its reconcile task) when the config says
    /// `[apps] enabled`; otherwise the agent only records the desired state.
    pub fn with_configured_apps(self) -> Self {
        if !self.config.apps.enabled {
            return self;
        }
        let sink = AppsSink::start_reporting(
            &self.config.apps,
            &self.config.state_dir,
            self.events.clone(),
            self.secrets.clone(),
        );
        self.with_sink(sink)
    }

    /// With `[update] enabled`: wraps the current sink so desired OS updates reach the updater,
    /// and returns the agent and the updater, ready to spawn. When this boot is a new slot on
    /// trial, blessing on connect is turned off: the health gate decides.
    pub fn with_configured_update(mut self) -> (Self, Option<UpdateStarter>) {
        let Some(prepared) = PreparedUpdate::new(
            &self.config.update,
            &self.config.state_dir,
            self.desired.sink().clone(),
        ) else {
            return (self, None);
        };
        if prepared.on_trial() {
            self.config.boot.bless = false;
        }
        self = self.with_sink(prepared.sink());
        let link = UpdateLink {
            identity: self.identity.clone(),
            dialer: self.dialer.clone(),
            status: self.status.subscribe(),
            desired_state: self.desired.subscribe(),
            disk: self.config.disk.enabled.then(|| self.config.disk.clone()),
            tcti: self.config.tcti().to_string(),
            esp: self.config.boot.esp.clone(),
            containerd: self
                .config
                .apps
                .enabled
                .then(|| self.config.apps.containerd_socket.clone()),
        };
        let starter = prepared.starter(link);
        (self, Some(starter))
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The device key.
    pub fn key(&self) -> &DeviceKey {
        self.identity.key()
    }

    /// The facts sent to central.
    pub fn facts(&self) -> &HardwareFacts {
        &self.facts
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        self.identity.state()
    }

    /// The queue of events waiting to be sent to central.
    pub fn events(&self) -> &Arc<EventQueue> {
        &self.events
    }

    /// The main loop's promise to the watchdog (see [`crate::notify::feed_watchdog`]).
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
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
        self.desired.held_revision()
    }

    /// A CSR for `CN=<serial>` signed by the device key (on the blocking pool).
    pub async fn build_csr(&self) -> Result<Vec<u8>, CsrError> {
        build_csr_async(self.identity.key(), &self.facts.serial).await
    }

    /// The stored identity if it is usable with the device key: certificate parses and carries
    /// the device key. A certificate for another key is moved aside so the device enrolls again.
    pub async fn load_identity(
        &self,
    ) -> Result<Option<(StoredIdentity, CertificateInfo)>, AgentError> {
        Ok(self.identity.load().await?)
    }

    /// One Enroll call with a CSR made now; nothing is stored.
    pub async fn enroll_once(&self) -> Result<EnrollOutcome, EnrollError> {
        self.enroller().enroll_once().await
    }

    /// Calls `Ping` over mTLS with the stored identity; returns the device id central saw.
    pub async fn ping(&self, identity: &StoredIdentity, nonce: u64) -> Result<String, SyncError> {
        self.session().ping(identity, nonce).await
    }

    /// Enrollment's handle.
    fn enroller(&self) -> Enroller {
        Enroller {
            identity: self.identity.clone(),
            dialer: self.dialer.clone(),
            facts: self.facts.clone(),
            token: self.token.clone(),
            status: self.status.clone(),
            backoff: (self.config.backoff_initial(), self.config.backoff_max()),
            liveness: self.liveness.clone(),
            time: self.time.clone(),
        }
    }

    /// The Sync session's handle.
    fn session(&self) -> Session {
        let disk = &self.config.disk;
        Session {
            identity: self.identity.clone(),
            dialer: self.dialer.clone(),
            facts: self.facts.clone(),
            status: self.status.clone(),
            desired: self.desired.clone(),
            events: self.events.clone(),
            host: self.host.clone(),
            logs: LogSources::new(&self.config.apps, &self.config.state_dir),
            bless: self.config.boot.bless.then(|| self.config.boot.clone()),
            heartbeat_every: self.config.heartbeat_interval(),
            renew_fraction: self.config.renew_when_remaining_fraction,
            pending_recovery_key: disk.enabled.then(|| disk.pending_recovery_key_path()),
            liveness: self.liveness.clone(),
            secrets: self.config.apps.enabled.then(|| self.secrets.clone()),
        }
    }

    /// Runs until `shutdown`: enrolls when there is no usable certificate, renews the
    /// certificate when due and keeps the Sync session up, with backoff on failures. Errors
    /// only for local failures (device key, disk).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
        let span =
            info_span!("agent", device_id = tracing::field::Empty, serial = %self.facts.serial);
        let keeper = tokio::spawn(
            self.time
                .clone()
                .run(shutdown.clone())
                .instrument(span.clone()),
        );
        let ntp = self.config.time.ntp_dropin.clone().map(|path| {
            tokio::spawn(
                crate::ntp::follow(path, self.desired.subscribe()).instrument(span.clone()),
            )
        });
        let result = self
            .run_inner(Shutdown::new(shutdown), span.clone())
            .instrument(span)
            .await;
        keeper.abort();
        if let Some(ntp) = ntp {
            ntp.abort();
        }
        self.time.save_floor().await;
        result
    }

    /// The clock the agent checks certificates and deadlines against.
    pub fn clock(&self) -> &Clock {
        self.time.clock()
    }

    async fn run_inner(
        &self,
        mut shutdown: Shutdown,
        span: tracing::Span,
    ) -> Result<(), AgentError> {
        let enroller = self.enroller();
        let session = self.session();
        self.liveness.step();
        if shutdown.run(self.time.start()).await.is_none() {
            return Ok(());
        }
        self.liveness.step();
        self.desired.apply_held();
        self.queue_start_events().await;
        let revision = self.held_revision();
        let mut current = self.identity.load().await?;
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
        let mut last_console_error: Option<String> = None;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            self.liveness.step();
            let now = self.clock().now();
            // An unverified clock (central not reached yet) may be years ahead: the certificate
            // is then tried rather than thrown away, and central decides.
            let trust_clock = self.clock().is_verified();
            let (mut identity, mut cert) = match current.take() {
                Some((identity, cert)) if !trust_clock || !cert.expired_at(now) => (identity, cert),
                expired => {
                    if expired.is_some() {
                        warn!("device certificate expired; enrolling again with the same key");
                    }
                    match enroller.enroll(&mut shutdown).await? {
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

            if trust_clock
                && Instant::now() >= renew_allowed_after
                && cert.renewal_due(now, self.config.renew_when_remaining_fraction)
            {
                self.liveness.step();
                match shutdown.run(session.renew(&identity)).await {
                    None => return Ok(()),
                    Some(Ok(renewed)) => {
                        cert = CertificateInfo::parse(&renewed.cert_der)
                            .expect("renew checked the certificate");
                        identity = renewed;
                        if cert.renewal_due(
                            self.clock().now(),
                            self.config.renew_when_remaining_fraction,
                        ) {
                            let wait = renew_backoff.next_delay();
                            warn!(retry_in = ?wait, "central issued a certificate already due for renewal; check central's certificate lifetime");
                            renew_allowed_after = Instant::now() + wait;
                        } else {
                            renew_backoff.reset();
                        }
                    }
                    Some(Err(e)) if e.is_wipe_order() => {
                        self.crypto_erase(&session, &identity, &mut shutdown).await;
                        return self.idle_wiped(shutdown).await;
                    }
                    Some(Err(e)) if e.is_revoked() => {
                        self.revoked(&e.to_string()).await;
                        current = Some((identity, cert));
                        let delay = backoff.slow_delay();
                        self.liveness.wait(delay);
                        if !shutdown.sleep(delay).await {
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

            self.liveness.step();
            if let Some(Err(e)) = shutdown
                .run(session.escrow_pending_recovery_key(&identity))
                .await
            {
                warn!(error = %e, "could not escrow the data partition's recovery key; retrying on the next connection");
            }
            let end = session
                .sync_session(&identity, &cert, renew_allowed_after, &mut shutdown)
                .await;
            if matches!(&end, SessionEnd::Failed { error, .. } if error.is_wipe_order()) {
                self.crypto_erase(&session, &identity, &mut shutdown).await;
                return self.idle_wiped(shutdown).await;
            }
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
                    // A wrong clock makes central's certificate (or ours) look invalid.
                    if shutdown
                        .run(self.time.check_after_failure())
                        .await
                        .is_none()
                    {
                        return Ok(());
                    }
                    // Central may ask for a later retry (a restart spreads a fleet's reconnects).
                    let delay = backoff
                        .next_delay()
                        .max(error.retry_after().unwrap_or_default());
                    warn!(error = %error, retry_in = ?delay, "not connected to central; running from the stored desired state");
                    // On the console too (once per distinct error): a box with a screen and no
                    // network to central says why.
                    let said = error.to_string();
                    if last_console_error.as_deref() != Some(said.as_str()) {
                        info!(target: crate::console::TARGET, "CAIRN-AGENT offline: {said}");
                        last_console_error = Some(said);
                    }
                    self.status
                        .set_phase(Phase::Offline, Some(error.to_string()))
                        .await;
                    delay
                }
            };
            self.liveness.wait(delay);
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
        let status: LockStatus = match read.map(|b| serde_json::from_slice(&b)) {
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

    /// Crypto-erase on central's order, in the order that keeps the device able to say so:
    /// 1. destroy the data key (sealed copies and its LUKS keyslot) and the enrollment token,
    ///    so the box neither unlocks its data nor enrolls again;
    /// 2. report that to central with the identity still in hand;
    /// 3. clear the TPM's owner hierarchy (device key, attestation key, any sealed copy) and
    ///    remove the identity files;
    /// 4. reboot when this device has a managed data partition, so the volume key leaves memory.
    ///
    /// Each step goes on when an earlier one fails: a partial wipe beats none, and what failed is
    /// reported and logged.
    async fn crypto_erase(
        &self,
        session: &Session,
        identity: &StoredIdentity,
        shutdown: &mut Shutdown,
    ) {
        error!("central ordered a CRYPTO-ERASE of this revoked device; destroying its data key and identity");
        info!(target: crate::console::TARGET, "CAIRN-WIPE state=ordered");
        let mut destroyed = Vec::new();
        let mut failed = Vec::new();
        if self.config.disk.enabled {
            let disk = self.config.disk.clone();
            match blocking(move || crate::data::crypto_erase(&disk)).await {
                Ok(done) => destroyed.extend(done),
                Err(e) => failed.push(format!("data key: {e}")),
            }
        }
        info!(target: crate::console::TARGET, "CAIRN-WIPE step=data-key destroyed={} failed={}", destroyed.len(), failed.len());
        if let Some(token) = self.config.enrollment_token_file.clone() {
            match blocking(move || cairn_io::destroy_file(&token)).await {
                Ok(true) => destroyed.push("enrollment token".to_owned()),
                Ok(false) => {}
                Err(e) => failed.push(format!("enrollment token: {e}")),
            }
        }
        // The identity goes only after central heard: retry until it has (the data key is
        // already gone, so waiting costs nothing). PERMISSION_DENIED now means central has the
        // report already (an answer lost on the way) or no longer wants it.
        let error = failed.join("; ");
        let mut retry = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
        let mut attempt = 0u32;
        let reported = loop {
            attempt += 1;
            match session
                .report_wipe(identity, destroyed.clone(), error.clone())
                .await
            {
                Ok(()) => break true,
                Err(e) if e.is_revoked() => {
                    warn!(error = %e, "central refuses the crypto-erase report: it has it already or no longer waits for it");
                    break false;
                }
                Err(e) => {
                    let wait = retry.next_delay();
                    warn!(attempt, error = %e, retry_in = ?wait, "could not report the crypto-erase to central; retrying before the identity is destroyed");
                    self.liveness.wait(wait);
                    if !shutdown.sleep(wait).await {
                        warn!("stopping before central heard of the crypto-erase: the identity stays until the agent runs again");
                        return;
                    }
                }
            }
        };
        info!(target: crate::console::TARGET, "CAIRN-WIPE step=report reported={reported}");
        let key = self.identity.key().clone();
        match blocking(move || key.destroy_tpm_objects()).await {
            Ok(Some(what)) => destroyed.push(what.to_owned()),
            Ok(None) => {}
            Err(e) => failed.push(format!("TPM: {e}")),
        }
        let state = self.identity.state().clone();
        match blocking(move || state.forget_identity()).await {
            Ok(removed) => destroyed.push(format!("identity ({} files)", removed.len())),
            Err(e) => failed.push(format!("identity: {e}")),
        }
        info!(
            target: crate::console::TARGET,
            "CAIRN-WIPE state=done reported={reported} destroyed={} failed={}",
            destroyed.len(),
            failed.len()
        );
        error!(?destroyed, ?failed, reported, "crypto-erase finished");
        self.status
            .set_phase(
                Phase::Wiped,
                Some(format!("crypto-erased: {}", destroyed.join(", "))),
            )
            .await;
        if self.config.disk.enabled {
            if let Err(e) = crate::update::system::reboot().await {
                warn!(error = %e, "could not reboot after the crypto-erase; the data volume stays open until the next power cycle");
            }
        }
    }

    /// After a crypto-erase: nothing left to do but keep the watchdog fed until shutdown.
    /// (Nothing else wakes the loop, so it promises the watchdog one tick at a time.)
    async fn idle_wiped(&self, mut shutdown: Shutdown) -> Result<(), AgentError> {
        loop {
            self.liveness.step();
            self.liveness.wait(LIVENESS_IDLE);
            if !shutdown.sleep(LIVENESS_IDLE).await {
                return Ok(());
            }
        }
    }

    async fn revoked(&self, reason: &str) {
        info!(target: crate::console::TARGET, "CAIRN-AGENT revoked by central");
        error!(
            reason,
            "central says this device is REVOKED; keeping the key and retrying slowly"
        );
        self.status
            .set_phase(Phase::Revoked, Some(reason.to_string()))
            .await;
    }
}
