//! Agents connected to this central: their open sync streams and when they were last heard from.
//!
//! Heartbeat times are kept in memory and written to the database in batches, so a heartbeat
//! costs a map insert, not a disk sync.
//!
//! The latest app status each agent reported is kept in memory only: every heartbeat carries it
//! whole, so after a restart of central the next heartbeat (seconds later) refills it, and writing
//! it would cost a disk sync per heartbeat for data that is stale within one heartbeat anyway.
//! The same holds for the OS update status (phase and download progress): only the phase
//! changes it implies are written, by the rollout engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::v1::{AppStatus, CentralMessage, HostMetrics, OsStatus};
use tokio::sync::mpsc;
use tonic::Status;

/// Outbound half of one agent's sync stream.
pub type SessionSender = mpsc::Sender<Result<CentralMessage, Status>>;

struct Session {
    id: u64,
    tx: SessionSender,
}

/// Registry of open sync streams.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    seen: Mutex<HashMap<String, i64>>,
    next_id: AtomicU64,
    heartbeats: AtomicU64,
    apps: Mutex<HashMap<String, Arc<AppsReport>>>,
    os: Mutex<HashMap<String, Arc<OsReport>>>,
    /// Devices other replicas heard from recently (PostgreSQL only; see `replicas`).
    remote_seen: Mutex<HashMap<String, i64>>,
    /// When each device's stream last ended here (Unix seconds): heartbeat times in the
    /// registry up to then are this replica's own, not a sign the device is on another one.
    left_here: Mutex<HashMap<String, i64>>,
    host: Mutex<HashMap<String, Arc<HostReport>>>,
    streams_opened: AtomicU64,
}

/// The host metrics a device reported in its latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReport {
    /// When central received it (Unix seconds).
    pub at: i64,
    /// What the agent sent (bounded by central).
    pub metrics: HostMetrics,
}

/// The OS status a device reported in its latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct OsReport {
    /// When central received it (Unix seconds).
    pub at: i64,
    /// What the agent sent (strings cut).
    pub status: OsStatus,
}

/// The app status a device reported in its latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct AppsReport {
    /// When central received it (Unix seconds).
    pub at: i64,
    /// Revision of the desired state the agent held.
    pub desired_revision: u64,
    /// Status of each app it runs.
    pub apps: Vec<AppStatus>,
}

impl Sessions {
    /// Register a device's new stream; an older stream of the same device is closed.
    pub fn register(&self, device_id: &str, tx: SessionSender) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        let old = self.lock_open().insert(device_id.to_owned(), Session { id, tx });
        if let Some(old) = old {
            let _ = old.tx.try_send(Err(Status::aborted("a newer sync stream of this device replaced this one")));
        }
        id
    }

    /// Forget a stream when it ends (only if it is still the current one).
    pub fn unregister(&self, device_id: &str, session_id: u64) {
        let mut open = self.lock_open();
        if open.get(device_id).is_some_and(|s| s.id == session_id) {
            open.remove(device_id);
            drop(open);
            let now = crate::store::now_unix();
            self.left_here.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), now);
            self.remote_seen.lock().unwrap_or_else(|p| p.into_inner()).remove(device_id);
        }
    }

    /// End a device's stream with `status` (revocation).
    pub fn close(&self, device_id: &str, status: Status) {
        if let Some(session) = self.lock_open().remove(device_id) {
            let _ = session.tx.try_send(Err(status));
        }
    }

    /// End every open stream with `status` (central stopping): agents reconnect elsewhere or later.
    pub fn close_all(&self, status: Status) {
        for (_, session) in self.lock_open().drain() {
            let _ = session.tx.try_send(Err(status.clone()));
        }
    }

    /// Send a message on a device's stream if it is connected here; false if not.
    pub async fn push(&self, device_id: &str, message: CentralMessage) -> bool {
        let tx = self.lock_open().get(device_id).map(|s| s.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }

    /// Whether the device has an open stream here or, with replicas, another replica heard
    /// from it recently.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.is_connected_here(device_id)
            || self.remote_seen.lock().unwrap_or_else(|p| p.into_inner()).contains_key(device_id)
    }

    /// Whether the device's stream is open on this central.
    pub fn is_connected_here(&self, device_id: &str) -> bool {
        self.lock_open().contains_key(device_id)
    }

    /// Devices whose streams are open on this central.
    pub fn connected_here(&self) -> Vec<String> {
        self.lock_open().keys().cloned().collect()
    }

    /// Replace the set of devices heard from recently by any replica (`since` is the oldest
    /// time that counts). A device whose stream ended here counts only if it was heard from
    /// after that, i.e. by another replica.
    pub fn set_remote_seen(&self, mut seen: HashMap<String, i64>, since: i64) {
        let mut left = self.left_here.lock().unwrap_or_else(|p| p.into_inner());
        left.retain(|_, at| *at >= since);
        seen.retain(|id, at| left.get(id).is_none_or(|gone| *at > *gone));
        drop(left);
        *self.remote_seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
    }

    /// Devices online anywhere: with streams here or heard from by another replica.
    pub fn online_anywhere_count(&self) -> usize {
        let here = self.lock_open();
        let remote = self.remote_seen.lock().unwrap_or_else(|p| p.into_inner());
        here.len() + remote.keys().filter(|id| !here.contains_key(*id)).count()
    }

    /// Number of open streams.
    pub fn online_count(&self) -> usize {
        self.lock_open().len()
    }

    /// Note a heartbeat (or a new stream, which counts as one).
    pub fn saw(&self, device_id: &str, at: i64) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), at);
    }

    /// Keep the app status of a device's latest heartbeat; returns the one it replaces.
    pub fn report_apps(&self, device_id: &str, report: AppsReport) -> Option<Arc<AppsReport>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), Arc::new(report))
    }

    /// The latest app status a device reported since central started.
    pub fn apps_report(&self, device_id: &str) -> Option<Arc<AppsReport>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).get(device_id).cloned()
    }

    /// Keep the OS status of a device's latest heartbeat; returns the one it replaces.
    pub fn report_os(&self, device_id: &str, report: OsReport) -> Option<Arc<OsReport>> {
        self.os.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), Arc::new(report))
    }

    /// Drop a device's OS status (its processing failed: the next heartbeat is taken as new).
    pub fn forget_os(&self, device_id: &str) {
        self.os.lock().unwrap_or_else(|p| p.into_inner()).remove(device_id);
    }

    /// The latest OS status a device reported since central started.
    pub fn os_report(&self, device_id: &str) -> Option<Arc<OsReport>> {
        self.os.lock().unwrap_or_else(|p| p.into_inner()).get(device_id).cloned()
    }

    /// Keep the host metrics of a device's latest heartbeat (replacing the previous ones).
    pub fn report_host(&self, device_id: &str, report: HostReport) {
        self.host.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), Arc::new(report));
    }

    /// The latest host metrics a device reported since central started.
    pub fn host_report(&self, device_id: &str) -> Option<Arc<HostReport>> {
        self.host.lock().unwrap_or_else(|p| p.into_inner()).get(device_id).cloned()
    }

    /// Every device's latest host metrics (for fleet aggregates; the map lock is held only
    /// while the `Arc`s are cloned).
    pub fn host_reports(&self) -> Vec<Arc<HostReport>> {
        self.host.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Every device's latest app status (for fleet aggregates).
    pub fn apps_reports(&self) -> Vec<Arc<AppsReport>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Sync streams opened since start.
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::Relaxed)
    }

    /// Heartbeats received since start (for metrics and benchmarks).
    pub fn heartbeats_received(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Take the heartbeats noted since the last call (for the batched write).
    pub fn take_seen(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
