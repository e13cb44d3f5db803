//! OS updates (A/B slots with RAUC), driven by `DesiredState.os` from a rollout.
//!
//! One task per agent walks an update through stages stored on the data partition
//! ([`record`]), so a power cut anywhere resumes or falls back safely:
//!
//! 1. refuse a downgrade unless an admin forced it;
//! 2. download the bundle ([`download`]: only the chunks the running slot lacks, resumable,
//!    digest-checked);
//! 3. `rauc install` it into the other slot (`activate-installed=false`: not made primary yet);
//! 4. seal the data partition's key to the new slot's UKI (predicted PCR 11), so the new slot
//!    unlocks; only then `rauc status mark-active other` (our boot backend gives its entry a fresh
//!    try counter) — a cut before this point boots the old slot, which resumes;
//! 5. reboot through systemd. On the new slot the boot is on trial: the agent does not bless it
//!    on connect but waits for the health gate (connected to central, containerd up, every
//!    desired app healthy) within the deadline, then `rauc status mark-good booted` and forgets
//!    the old chain's disk key. If the gate fails it records why, marks the slot bad and reboots:
//!    systemd-boot goes back to the old slot, whose agent reports the failure. If the new agent
//!    cannot even run, the image's trial watchdog reboots and the try counter runs out.

pub mod download;
pub mod record;
pub mod system;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_io::FileError;
use cairn_proto::v1::{
    AppStatus, DesiredState, OsStatus, OsUpdatePhase, ServiceHealth, ServiceState,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::channel::{CentralDialer, ChannelError};
use crate::config::DiskConfig;
use crate::console;
use crate::identity::IdentityStore;
use crate::os_release::os_release_value;
use crate::sink::DesiredStateSink;
use crate::slot::Slot;
use crate::status::{Phase, Status};
use record::{Record, RecordFile, Stage, Target};
use system::Rauc;

pub use crate::config::UpdateConfig;

/// Why an update step failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A file of the update could not be written or read.
    #[error("{0}; check that the data partition is mounted and has space")]
    File(#[from] FileError),
    /// RAUC refused or failed.
    #[error(transparent)]
    Rauc(#[from] cairn_io::ToolError),
    /// systemd did not take the reboot request.
    #[error("cannot ask systemd to reboot over D-Bus: {0}; reboot the device by hand to finish the update")]
    Reboot(#[source] zbus::Error),
    /// The download failed.
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    /// The data partition's key could not be sealed to the new slot.
    #[cfg(feature = "tpm")]
    #[error("cannot seal the data partition's key to the new slot's boot chain: {0}; the new slot is not activated (it would boot with its data locked)")]
    Seal(#[source] crate::data::DataError),
    /// The data partition is managed but this agent cannot seal its key.
    #[cfg(not(feature = "tpm"))]
    #[error("cannot seal the data partition's key to the new slot: this agent was built without the `tpm` feature; the new slot is not activated")]
    SealNotBuilt,
    /// The device is not enrolled yet.
    #[error("no device certificate yet: the update waits for enrollment")]
    NotEnrolled,
    /// Central could not be reached for the download.
    #[error("cannot connect to central to download the bundle: {0}")]
    Connect(#[from] ChannelError),
}

/// Why the new slot does not pass the health gate yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// The agent has no Sync session with central.
    #[error("agent not connected to central ({0:?})")]
    NotConnected(Phase),
    /// containerd does not answer.
    #[error("containerd not reachable: {0}")]
    Containerd(String),
    /// Central has not sent a desired state on this boot yet.
    #[error("no desired state from central yet")]
    NoDesiredState,
    /// An app has not been reported.
    #[error("app {0} not reported yet")]
    NotReported(String),
    /// An app's status is for an older revision or generation.
    #[error("app {0} not reconciled to the desired revision yet")]
    NotReconciled(String),
    /// An app failed.
    #[error("app {app}: {error}")]
    Failed {
        /// The app.
        app: String,
        /// Its error.
        error: String,
    },
    /// An app runs no service.
    #[error("app {0} has no service running")]
    NoService(String),
    /// A service is not running, or not healthy.
    #[error("app {app} service {service} is {state:?}/{health:?} {message}")]
    Service {
        /// The app.
        app: String,
        /// The service.
        service: String,
        /// Its state.
        state: ServiceState,
        /// Its health.
        health: ServiceHealth,
        /// Its status message.
        message: String,
    },
}

impl UpdateError {
    /// Retrying cannot help (central does not have the bundle, or says something else than
    /// asked for): the update is reported failed instead of retried.
    fn is_permanent(&self) -> bool {
        use cairn_delta::DeltaError;
        use download::DownloadError as D;
        match self {
            UpdateError::Download(
                D::BadTargetDigest(_) | D::IndexMismatch { .. } | D::BadIndex { .. },
            ) => true,
            UpdateError::Download(D::Status { code, .. }) => matches!(
                code,
                tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::OutOfRange
            ),
            UpdateError::Download(D::Assemble {
                source: DeltaError::FinalDigestMismatch { .. },
                ..
            }) => true,
            _ => false,
        }
    }
}

/// Delete an unfinished download of `sha256` in `dir` (the update was withdrawn or replaced).
fn remove_partial(dir: &Path, sha256: &str) {
    let dest = download::bundle_path(dir, sha256);
    for ext in ["raucb.partial", "raucb.journal", "raucb"] {
        let _ = std::fs::remove_file(dest.with_extension(ext));
    }
}

/// The sink that adds OS updates to another sink (the apps): desired states go to both, and
/// heartbeats carry both statuses.
pub struct UpdateSink {
    inner: Arc<dyn DesiredStateSink>,
    /// `None` until the first desired state (stored or from central) is applied.
    desired: watch::Sender<Option<Option<cairn_proto::v1::OsUpdate>>>,
    status: Arc<Mutex<OsStatus>>,
    report: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for UpdateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateSink").finish_non_exhaustive()
    }
}

impl DesiredStateSink for UpdateSink {
    fn apply(&self, desired: &DesiredState) {
        self.inner.apply(desired);
        self.desired.send_if_modified(|current| {
            let next = Some(desired.os.clone());
            let changed = *current != next;
            *current = next;
            changed
        });
    }

    fn observed_apps(&self) -> Vec<AppStatus> {
        self.inner.observed_apps()
    }

    fn observed_os(&self) -> Option<OsStatus> {
        Some(self.status.lock().expect("status lock").clone())
    }

    fn report_now(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.report.clone())
    }
}

/// What the updater needs from the rest of the agent, and nothing else of it.
pub struct UpdateLink {
    /// The device identity, for the download from central.
    pub(crate) identity: IdentityStore,
    /// How to reach central.
    pub(crate) dialer: CentralDialer,
    /// The agent's status (the health gate wants it connected).
    pub(crate) status: watch::Receiver<Status>,
    /// The desired state held (the health gate compares the apps with it).
    pub(crate) desired_state: watch::Receiver<Option<Arc<DesiredState>>>,
    /// `[disk]` when the data partition is managed: its key is sealed to the new slot.
    pub(crate) disk: Option<DiskConfig>,
    /// The TPM's TCTI.
    pub(crate) tcti: String,
    /// Where the ESP is mounted (the slots' UKIs, seeds of the download).
    pub(crate) esp: PathBuf,
    /// containerd's socket when apps run (the health gate wants it up).
    pub(crate) containerd: Option<PathBuf>,
}

impl std::fmt::Debug for UpdateLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateLink")
            .field("esp", &self.esp)
            .finish_non_exhaustive()
    }
}

/// What the updater works with.
struct Updater {
    link: UpdateLink,
    cfg: UpdateConfig,
    dir: PathBuf,
    records: RecordFile,
    rauc: Rauc,
    desired: watch::Receiver<Option<Option<cairn_proto::v1::OsUpdate>>>,
    status: Arc<Mutex<OsStatus>>,
    /// Wakes the sync session to send a heartbeat now (stage changes).
    report: Arc<tokio::sync::Notify>,
    apps: Arc<dyn DesiredStateSink>,
    running_version: String,
    booted_slot: Option<Slot>,
    started: Instant,
}

/// What the running system is: (version, booted slot).
fn running_system(cfg: &UpdateConfig) -> (String, Option<Slot>) {
    let version = std::fs::read_to_string(&cfg.os_release)
        .ok()
        .and_then(|t| os_release_value(&t, "VERSION_ID"))
        .unwrap_or_default();
    let slot = std::fs::read_to_string(&cfg.cmdline)
        .ok()
        .and_then(|t| Slot::from_cmdline(&t, "rauc.slot"));
    (version, slot)
}

/// A slot as `OsStatus.booted_slot` carries it: its name, empty when unknown.
fn slot_name(slot: Option<Slot>) -> String {
    slot.map(|s| s.name().to_string()).unwrap_or_default()
}

/// The updater, prepared before the agent runs: its sink and whether this boot is on trial.
pub struct PreparedUpdate {
    sink: Arc<UpdateSink>,
    on_trial: bool,
    build: Box<dyn FnOnce(UpdateLink) -> Updater + Send>,
}

impl std::fmt::Debug for PreparedUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedUpdate")
            .field("on_trial", &self.on_trial)
            .finish_non_exhaustive()
    }
}

impl PreparedUpdate {
    /// With `[update] enabled`: reads the running system and the update record under
    /// `state_dir`, and wraps `apps` (the current sink) so desired OS updates reach the updater.
    /// `None` when updates are off.
    pub fn new(
        cfg: &UpdateConfig,
        state_dir: &Path,
        apps: Arc<dyn DesiredStateSink>,
    ) -> Option<PreparedUpdate> {
        if !cfg.enabled {
            return None;
        }
        let cfg = cfg.clone();
        let dir = state_dir.join("update");
        let (version, slot) = running_system(&cfg);
        let on_trial = match RecordFile::new(&dir).load() {
            Some(Record {
                stage: Stage::Rebooting { to_slot, .. },
                ..
            }) => Some(to_slot) == slot,
            _ => false,
        };
        if on_trial {
            info!(
                slot = %slot_name(slot),
                "this boot is an update on trial: the health gate decides whether it is kept"
            );
        }
        let status = Arc::new(Mutex::new(OsStatus {
            version: version.clone(),
            booted_slot: slot_name(slot),
            phase: OsUpdatePhase::Idle as i32,
            ..Default::default()
        }));
        let (desired_tx, desired_rx) = watch::channel(None);
        let report = Arc::new(tokio::sync::Notify::new());
        let sink = Arc::new(UpdateSink {
            inner: apps.clone(),
            desired: desired_tx,
            status: status.clone(),
            report: report.clone(),
        });
        let build = move |link: UpdateLink| Updater {
            rauc: Rauc {
                program: cfg.rauc.clone(),
                install_timeout: Duration::from_secs(cfg.install_timeout_s),
            },
            records: RecordFile::new(&dir),
            link,
            cfg,
            dir,
            desired: desired_rx,
            status,
            report,
            apps,
            running_version: version,
            booted_slot: slot,
            started: Instant::now(),
        };
        Some(PreparedUpdate {
            sink,
            on_trial,
            build: Box::new(build),
        })
    }

    /// The sink to use instead of the one given to [`PreparedUpdate::new`].
    pub fn sink(&self) -> Arc<UpdateSink> {
        self.sink.clone()
    }

    /// This boot is a new slot on trial: the health gate, not a connection, decides whether it
    /// is kept, so the boot must not be blessed on connect.
    pub fn on_trial(&self) -> bool {
        self.on_trial
    }

    /// The updater, ready to start, with what it needs from the agent.
    pub fn starter(self, link: UpdateLink) -> UpdateStarter {
        UpdateStarter {
            updater: (self.build)(link),
        }
    }
}

/// Starts the updater (see [`crate::Agent::with_configured_update`]).
pub struct UpdateStarter {
    updater: Updater,
}

impl std::fmt::Debug for UpdateStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateStarter").finish_non_exhaustive()
    }
}

impl UpdateStarter {
    /// Spawns the updater task; it ends with `shutdown`.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let updater = self.updater;
        let span = info_span!("update", slot = %slot_name(updater.booted_slot), version = %updater.running_version);
        tokio::spawn(
            async move {
                let mut shutdown = shutdown;
                tokio::select! {
                    _ = updater.run() => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            .instrument(span),
        )
    }
}

/// Seconds between two looks at the health of a new slot.
const HEALTH_POLL: Duration = Duration::from_secs(2);
/// Pause after reporting "rebooting" before the reboot, so the report reaches central.
const REPORT_GRACE: Duration = Duration::from_secs(3);

impl Updater {
    async fn run(mut self) {
        let mut record = self.records.load();
        if let Some(r) = record.as_mut() {
            self.resume(r).await;
        }
        loop {
            let desired = self.desired.borrow_and_update().clone();
            match desired {
                // Nothing is decided before the first desired state: the stored one is applied
                // at start, so an update in progress is not mistaken for a withdrawn one.
                None => {}
                Some(None) => self.idle(&mut record),
                Some(Some(os)) => {
                    let target = Target::from_proto(&os, self.cfg.health_deadline_s);
                    self.work(target, &mut record).await;
                }
            }
            if self.desired.changed().await.is_err() {
                return;
            }
        }
    }

    /// After a start: finish what a reboot interrupted.
    async fn resume(&mut self, record: &mut Record) {
        if let Stage::Rebooting { from_slot, to_slot } = record.stage.clone() {
            if self.booted_slot == Some(to_slot) && self.running_version == record.target.version {
                self.verify_new_slot(record).await;
            } else if self.booted_slot == Some(from_slot) {
                let error = format!(
                    "slot {to_slot} did not pass its trial boots; systemd-boot went back to slot {from_slot} (version {})",
                    self.running_version
                );
                warn!(error, "update rolled back");
                self.set_stage(record, Stage::Failed { error });
            } else {
                let error = format!(
                    "booted slot {} runs version {:?}, not the update's {}",
                    slot_name(self.booted_slot),
                    self.running_version,
                    record.target.version
                );
                error!(error, "update did not take");
                self.set_stage(record, Stage::Failed { error });
            }
        }
        self.publish(Some(record));
    }

    /// Nothing desired: forget an update that has not reached the other slot yet.
    fn idle(&mut self, record: &mut Option<Record>) {
        if let Some(r) = record.as_ref() {
            if matches!(r.stage, Stage::Downloading) {
                info!(version = %r.target.version, "the update was withdrawn; removing its download");
                remove_partial(&self.dir, &r.target.sha256);
            }
        }
        *record = None;
        let _ = std::fs::remove_file(self.dir.join("state.json"));
        self.publish(None);
    }

    /// Bring the device to `target`, from wherever `record` says it is.
    async fn work(&mut self, target: Target, record: &mut Option<Record>) {
        let same = record
            .as_ref()
            .is_some_and(|r| r.target.sha256 == target.sha256);
        if same && record.as_ref().is_some_and(|r| r.stage.is_final()) {
            self.publish(record.as_ref());
            return;
        }
        if !same {
            if let Some(old) = record.as_ref() {
                if matches!(old.stage, Stage::Downloading) {
                    remove_partial(&self.dir, &old.target.sha256);
                }
            }
            let stage = self.first_stage(&target);
            *record = Some(Record {
                target,
                stage,
                fetched_bytes: 0,
            });
        }
        let r = record.as_mut().expect("set above");
        let stage = r.stage.clone();
        self.set_stage(r, stage);
        loop {
            let next = match r.stage.clone() {
                Stage::Downloading => self.download(r).await,
                Stage::Installing => self.install(r).await,
                _ => return,
            };
            match next {
                Some(stage @ Stage::Rebooting { .. }) => {
                    self.set_stage(r, stage);
                    self.reboot_into_new_slot(&r.target).await;
                }
                Some(stage) => self.set_stage(r, stage),
                // The desired update changed meanwhile.
                None => return,
            }
        }
    }

    /// The new slot is active: drop the bundle, let the heartbeat report, reboot. Never returns
    /// (systemd stops the agent).
    async fn reboot_into_new_slot(&self, target: &Target) {
        if let Err(e) = std::fs::remove_file(self.bundle_path(target)) {
            warn!(error = %e, "could not remove the installed bundle");
        }
        tokio::time::sleep(REPORT_GRACE).await;
        if let Err(e) = system::reboot().await {
            error!(error = %e, "reboot failed");
        }
        std::future::pending::<()>().await;
    }

    fn first_stage(&self, target: &Target) -> Stage {
        first_stage(target, &self.running_version)
    }

    /// Download until done (→ Installing), failed for good (→ Failed) or withdrawn (`None`).
    /// Transient failures retry with backoff, resuming where the download stopped.
    async fn download(&self, r: &mut Record) -> Option<Stage> {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
        let mut desired = self.desired.clone();
        self.status.lock().expect("status lock").bytes_fetched = r.fetched_bytes;
        loop {
            let attempt = self.download_once(r);
            let result = tokio::select! {
                result = attempt => result,
                _ = desired.changed() => return None,
            };
            r.fetched_bytes = self.status.lock().expect("status lock").bytes_fetched;
            match result {
                Ok(_) => return Some(Stage::Installing),
                Err(e) if e.is_permanent() => {
                    error!(error = %e, "download failed");
                    return Some(Stage::Failed {
                        error: e.to_string(),
                    });
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in = ?wait, "download interrupted; resuming later");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = desired.changed() => return None,
                    }
                }
            }
        }
    }

    async fn download_once(&self, record: &Record) -> Result<PathBuf, UpdateError> {
        let target = &record.target;
        let (identity, _cert) = self
            .link
            .identity
            .load()
            .await
            .ok()
            .flatten()
            .ok_or(UpdateError::NotEnrolled)?;
        let channel = self
            .link
            .dialer
            .device_channel(identity.cert_der.clone(), self.link.identity.key().clone())
            .await?;
        let seeds = download::seeds_for_running_slot(self.booted_slot, &self.link.esp);
        let status = self.status.clone();
        let bundle_target = download::BundleTarget {
            sha256: target.sha256.clone(),
            size: target.size,
        };
        let mut logged_step = u64::MAX;
        let (records, mut stored) = (self.records.clone(), record.clone());
        let base = record.fetched_bytes;
        let progress = Mutex::new(move |p: download::Progress| {
            let mut s = status.lock().expect("status lock");
            s.bytes_done = p.done;
            s.bytes_total = p.total;
            s.bytes_fetched = p.fetched;
            // One console line per 5 % (the unit logs to the console too).
            let step = p.done.saturating_mul(20) / p.total.max(1);
            s.bytes_fetched = base + p.fetched;
            if step != logged_step {
                logged_step = step;
                info!(
                    target: console::TARGET,
                    "CAIRN-UPDATE progress done={} total={} fetched={}",
                    p.done,
                    p.total,
                    base + p.fetched
                );
                // The fetched count survives a cut (for the report after the reboot).
                stored.fetched_bytes = base + p.fetched;
                if let Err(e) = records.save(&stored) {
                    warn!(error = %e, "cannot store download progress");
                }
            }
        });
        let path = download::fetch_bundle(channel, &bundle_target, &seeds, &self.dir, move |p| {
            (progress.lock().expect("progress lock"))(p)
        })
        .await?;
        Ok(path)
    }

    fn bundle_path(&self, target: &Target) -> PathBuf {
        download::bundle_path(&self.dir, &target.sha256)
    }

    /// Install into the other slot, seal the disk key to it, activate it.
    async fn install(&self, r: &Record) -> Option<Stage> {
        let Some(from_slot) = self.booted_slot else {
            return Some(Stage::Failed {
                error: "the booted slot is unknown (no rauc.slot=a or rauc.slot=b on the kernel command line)".into(),
            });
        };
        let to_slot = from_slot.other();
        let bundle = self.bundle_path(&r.target);
        if !bundle.exists() {
            // Power cut after the bundle was removed but before the stage moved on: fetch again.
            return Some(Stage::Downloading);
        }
        info!(version = %r.target.version, %to_slot, "installing");
        if let Err(e) = self.rauc.install(&bundle).await {
            error!(error = %e, "install failed");
            let _ = std::fs::remove_file(&bundle);
            return Some(Stage::Failed {
                error: e.to_string(),
            });
        }
        if let Err(e) = self.seal_for(to_slot).await {
            error!(error = %e, "not activating the new slot");
            return Some(Stage::Failed {
                error: e.to_string(),
            });
        }
        if let Err(e) = self.rauc.mark("active", "other").await {
            return Some(Stage::Failed {
                error: e.to_string(),
            });
        }
        Some(Stage::Rebooting { from_slot, to_slot })
    }

    /// Seal the data partition's key to `slot`'s UKI on the ESP (written by the bundle's hook).
    async fn seal_for(&self, slot: Slot) -> Result<(), UpdateError> {
        let Some(disk) = self.link.disk.clone() else {
            return Ok(());
        };
        let uki = self.link.esp.join(slot.uki_path());
        seal(disk, self.link.tcti.clone(), uki).await
    }

    /// On the new slot: wait for the health gate, then commit or give the slot up.
    async fn verify_new_slot(&mut self, record: &mut Record) {
        let deadline =
            self.started + Duration::from_secs(u64::from(record.target.health_deadline_s));
        // Rebooting into the booted slot reads as Verifying.
        self.publish(Some(record));
        info!(
            deadline_s = record.target.health_deadline_s,
            "new slot on trial: checking health"
        );
        let mut last = String::new();
        loop {
            match self.health().await {
                Ok(()) => break,
                Err(why) => {
                    let why = why.to_string();
                    if why != last {
                        info!(why, "new slot not healthy yet");
                        last = why;
                    }
                }
            }
            if Instant::now() >= deadline {
                let error = format!(
                    "slot {} (version {}) failed its health gate within {} s: {last}; rolled back",
                    slot_name(self.booted_slot),
                    record.target.version,
                    record.target.health_deadline_s
                );
                error!(error, "giving up the new slot");
                self.set_stage(record, Stage::Failed { error });
                if let Err(e) = self.rauc.mark("bad", "booted").await {
                    error!(error = %e, "could not mark the slot bad; the trial watchdog and boot counter still fall back");
                }
                if let Err(e) = system::reboot().await {
                    error!(error = %e, "reboot failed");
                }
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
        if let Err(e) = self.rauc.mark("good", "booted").await {
            // Not committed: the try counter keeps running; report and let the gate run again
            // on the next boot.
            error!(error = %e, "could not mark the new slot good");
            return;
        }
        if let Some(disk) = self.link.disk.clone() {
            if let Err(e) = forget_old_chain(disk, self.link.tcti.clone()).await {
                warn!(error = %e, "could not delete the old boot chain's disk key copy");
            }
        }
        info!(version = %record.target.version, "update committed");
        self.set_stage(record, Stage::Succeeded);
    }

    /// One look at the health gate: `Err` says what is not healthy yet.
    async fn health(&self) -> Result<(), Unhealthy> {
        let phase = self.link.status.borrow().phase;
        if phase != Phase::Connected {
            return Err(Unhealthy::NotConnected(phase));
        }
        if let Some(socket) = &self.link.containerd {
            cairn_runtime::containerd::Containerd::connect(socket, crate::apps::NAMESPACE)
                .await
                .map_err(|e| Unhealthy::Containerd(e.to_string()))?;
        }
        let desired = self.link.desired_state.borrow().clone();
        let Some(desired) = desired else {
            return Err(Unhealthy::NoDesiredState);
        };
        apps_healthy(&desired, &self.apps.observed_apps())
    }

    fn save(&self, record: &Record) {
        if let Err(e) = self.records.save(record) {
            error!(error = %e, "cannot store the update's progress");
        }
    }

    fn set_stage(&self, record: &mut Record, stage: Stage) {
        info!(
            target: console::TARGET,
            "CAIRN-UPDATE stage={} version={}",
            stage.name(),
            record.target.version
        );
        record.stage = stage;
        self.save(record);
        self.publish(Some(record));
    }

    /// The heartbeat's view of `record`.
    fn publish(&self, record: Option<&Record>) {
        self.write_status(record);
        self.report.notify_one();
    }

    fn write_status(&self, record: Option<&Record>) {
        let mut s = self.status.lock().expect("status lock");
        s.version = self.running_version.clone();
        s.booted_slot = slot_name(self.booted_slot);
        let Some(r) = record else {
            *s = OsStatus {
                version: s.version.clone(),
                booted_slot: s.booted_slot.clone(),
                phase: OsUpdatePhase::Idle as i32,
                ..Default::default()
            };
            return;
        };
        let (phase, error) = match &r.stage {
            Stage::Downloading => (OsUpdatePhase::Downloading, String::new()),
            Stage::Installing => (OsUpdatePhase::Installing, String::new()),
            Stage::Rebooting { to_slot, .. } if Some(*to_slot) == self.booted_slot => {
                (OsUpdatePhase::Verifying, String::new())
            }
            Stage::Rebooting { .. } => (OsUpdatePhase::Rebooting, String::new()),
            Stage::Succeeded => (OsUpdatePhase::Succeeded, String::new()),
            Stage::Failed { error } => (OsUpdatePhase::Failed, error.clone()),
            Stage::Refused { error } => (OsUpdatePhase::Refused, error.clone()),
        };
        s.phase = phase as i32;
        s.error = cairn_proto::truncate_status_text(&error, cairn_proto::MAX_STATUS_MESSAGE_BYTES);
        s.target_version = r.target.version.clone();
        s.bundle_sha256 = r.target.sha256.clone();
        s.rollout_id = r.target.rollout_id.clone();
        s.bytes_total = r.target.size;
        if !matches!(r.stage, Stage::Downloading) {
            s.bytes_fetched = r.fetched_bytes;
        }
    }
}

/// Where a new target starts on a device running `running`: refused (a downgrade without an
/// admin's force, or a version that does not parse), already there, or a download.
pub fn first_stage(target: &Target, running: &str) -> Stage {
    use std::cmp::Ordering;
    match cairn_proto::version::compare(&target.version, running) {
        Err(e) => Stage::Refused { error: e.to_string() },
        Ok(Ordering::Equal) => Stage::Succeeded,
        Ok(Ordering::Less) if !target.allow_downgrade => Stage::Refused {
            error: format!(
                "version {} is older than the running {running}; a downgrade needs an admin's allow_downgrade",
                target.version
            ),
        },
        Ok(_) => Stage::Downloading,
    }
}

/// Every app of `desired` reported for this revision and generation, every service running and
/// not unhealthy (a service without a health check counts when running).
pub fn apps_healthy(desired: &DesiredState, observed: &[AppStatus]) -> Result<(), Unhealthy> {
    for app in &desired.apps {
        let Some(seen) = observed.iter().find(|a| a.name == app.name) else {
            return Err(Unhealthy::NotReported(app.name.clone()));
        };
        if seen.generation != app.generation || seen.desired_revision != desired.revision {
            return Err(Unhealthy::NotReconciled(app.name.clone()));
        }
        if !seen.error.is_empty() {
            return Err(Unhealthy::Failed {
                app: app.name.clone(),
                error: seen.error.clone(),
            });
        }
        if seen.services.is_empty() {
            return Err(Unhealthy::NoService(app.name.clone()));
        }
        for svc in &seen.services {
            let running = svc.state == ServiceState::Running as i32;
            let health_ok = svc.health == ServiceHealth::None as i32
                || svc.health == ServiceHealth::Healthy as i32;
            if !running || !health_ok {
                return Err(Unhealthy::Service {
                    app: app.name.clone(),
                    service: svc.name.clone(),
                    state: ServiceState::try_from(svc.state).unwrap_or_default(),
                    health: ServiceHealth::try_from(svc.health).unwrap_or_default(),
                    message: svc.message.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(feature = "tpm")]
async fn seal(disk: DiskConfig, tcti: String, uki: PathBuf) -> Result<(), UpdateError> {
    crate::blocking::blocking(move || crate::data::seal_for_next_uki(&disk, &tcti, &uki))
        .await
        .map_err(UpdateError::Seal)
}

#[cfg(not(feature = "tpm"))]
async fn seal(_disk: DiskConfig, _tcti: String, _uki: PathBuf) -> Result<(), UpdateError> {
    Err(UpdateError::SealNotBuilt)
}

#[cfg(feature = "tpm")]
async fn forget_old_chain(disk: DiskConfig, tcti: String) -> Result<bool, crate::data::DataError> {
    crate::blocking::blocking(move || crate::data::forget_previous_boot_chain(&disk, &tcti)).await
}

#[cfg(not(feature = "tpm"))]
async fn forget_old_chain(
    _disk: DiskConfig,
    _tcti: String,
) -> Result<bool, std::convert::Infallible> {
    Ok(false)
}

#[cfg(test)]
mod tests;
