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

use cairn_proto::v1::{AppStatus, CentralMessage, OsStatus};
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

    /// Whether the device has an open stream here.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.lock_open().contains_key(device_id)
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

    /// Keep the app status of a device's latest heartbeat (replacing the previous one).
    pub fn report_apps(&self, device_id: &str, report: AppsReport) {
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).insert(device_id.to_owned(), Arc::new(report));
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
