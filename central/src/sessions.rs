//! Agents connected to this central: their open sync streams and when they were last heard from.
//!
//! Heartbeat times are kept in memory. The registry's `last_seen_at` is written in batches
//! when a stream opens, every [`LAST_SEEN_REFRESH_SECONDS`] while it is open, and when it ends:
//! whether a device is online is known from its stream, so writing every heartbeat would cost
//! a row update per device per heartbeat (thousands per second in a large fleet) for nothing.
//!
//! With replicas, what crosses to the others is which replica holds each stream
//! ([`StreamChanges`], written by `flush_presence`) and, read back, which streams the other
//! replicas hold ([`Sessions::apply_remote`]).
//!
//! The latest app status each agent reported is kept in memory only: every heartbeat carries it
//! whole, so after a restart of central the next heartbeat (seconds later) refills it, and writing
//! it would cost a disk sync per heartbeat for data that is stale within one heartbeat anyway.
//! The same holds for the OS update status (phase and download progress): only the phase
//! changes it implies are written, by the rollout engine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::v1::{AppStatus, CentralMessage, HostMetrics, OsStatus};
use tokio::sync::mpsc;
use tonic::Status;

use crate::store::streams::{StreamChanges, StreamHolder};

/// Longest time a connected device's `last_seen_at` in the registry lags its last heartbeat.
pub const LAST_SEEN_REFRESH_SECONDS: i64 = 300;

/// One message (or the final error) on an agent's sync stream. Boxed: tokio's channel
/// allocates its slots 32 at a time, and unboxed that block was 5 KiB for every connected
/// device (measured with heaptrack); boxed it is 256 bytes.
pub type StreamItem = Box<Result<CentralMessage, Status>>;

/// Outbound half of one agent's sync stream.
pub type SessionSender = mpsc::Sender<StreamItem>;

struct Session {
    id: u64,
    tx: SessionSender,
    gate: Arc<AttestationGate>,
    outbox: Arc<Outbox>,
}

/// How long a stream's task waits for room on a stream whose device does not read it before it
/// ends the stream (the HTTP/2 window and the channel are full by then: the device is stuck or
/// hostile, not slow).
pub const STALLED_STREAM: std::time::Duration = std::time::Duration::from_secs(20);

/// Reconnects a fleet is spread over when central stops: this many a second.
pub const RECONNECTS_PER_SECOND: usize = 1000;
/// The longest a stopping central spreads its streams' reconnects over.
pub const MAX_RECONNECT_SPREAD: std::time::Duration = std::time::Duration::from_secs(120);

/// The time `streams` reconnects are spread over: [`RECONNECTS_PER_SECOND`], at most
/// [`MAX_RECONNECT_SPREAD`] (100k devices: 100 s; 1k: 1 s).
pub fn reconnect_spread(streams: usize) -> std::time::Duration {
    std::time::Duration::from_millis(
        (streams as u64).saturating_mul(1000) / RECONNECTS_PER_SECOND as u64,
    )
    .min(MAX_RECONNECT_SPREAD)
}

/// What other tasks leave for a stream's task: the newest desired state (a newer one replaces
/// one not sent yet, so a burst of changes costs the device one message) and an order to end
/// the stream. Nothing here waits for the device: only the stream's task does, up to
/// [`STALLED_STREAM`].
#[derive(Debug, Default)]
pub struct Outbox {
    desired: Mutex<Option<CentralMessage>>,
    end: Mutex<Option<Status>>,
    wake: tokio::sync::Notify,
}

/// What a stream's task takes from its [`Outbox`].
#[derive(Debug)]
pub enum Outgoing {
    /// End the stream, telling the device why.
    End(Status),
    /// Send this desired state.
    Desired(CentralMessage),
}

impl Outbox {
    fn put_desired(&self, message: CentralMessage) {
        *self.desired.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        self.wake.notify_one();
    }

    fn order_end(&self, status: Status) {
        self.end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(status);
        self.wake.notify_one();
    }

    /// The next thing to do, an end first; waits while there is nothing.
    pub async fn next(&self) -> Outgoing {
        loop {
            if let Some(status) = self.end.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Outgoing::End(status);
            }
            if let Some(message) = self
                .desired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Outgoing::Desired(message);
            }
            self.wake.notified().await;
        }
    }
}

/// A stream just registered: its number (for [`Sessions::unregister`]) and its [`Outbox`].
#[derive(Debug)]
pub struct Registered {
    /// The stream's number.
    pub id: u64,
    /// Where desired states and an order to end arrive for the stream's task.
    pub outbox: Arc<Outbox>,
}

/// Whether a stream may receive desired states (its device's boot is verified, or it cannot
/// attest), and the way to ask its task for a fresh quote.
#[derive(Debug, Default)]
pub struct AttestationGate {
    open: std::sync::atomic::AtomicBool,
    /// Wakes the stream's task to send a new attestation request.
    pub quote_now: tokio::sync::Notify,
}

impl AttestationGate {
    /// A gate, open (desired states flow) or closed (held until a quote verifies).
    pub fn new(open: bool) -> Arc<Self> {
        Arc::new(AttestationGate {
            open: open.into(),
            quote_now: tokio::sync::Notify::new(),
        })
    }

    /// Whether desired states may go out.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Open or close it; returns whether it was open.
    pub fn set(&self, open: bool) -> bool {
        self.open.swap(open, Ordering::AcqRel)
    }
}

/// Registry of open sync streams.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    heard: Mutex<HashMap<String, Heard>>,
    next_id: AtomicU64,
    heartbeats: AtomicU64,
    apps: Mutex<HashMap<String, Arc<AppsReport>>>,
    os: Mutex<HashMap<String, Arc<OsReport>>>,
    /// Streams held by other replicas (PostgreSQL only; see `replicas`).
    remote: Mutex<RemoteStreams>,
    /// Streams opened (true) or ended (false) here since the last flush.
    changed: Mutex<HashMap<String, bool>>,
    host: Mutex<HashMap<String, Arc<HostReport>>>,
    streams_opened: AtomicU64,
    /// Bumped whenever a device may have come online or gone offline (here or elsewhere).
    presence_epoch: AtomicU64,
}

/// When a device was last heard from here, and what of it the registry holds.
#[derive(Debug, Clone, Copy)]
struct Heard {
    at: i64,
    written: i64,
}

/// Which other replica holds each device's stream, as read from the registry.
#[derive(Debug, Default)]
struct RemoteStreams {
    /// Device id to the replica holding its stream.
    holder: HashMap<String, String>,
    /// Replicas that wrote their liveness recently.
    alive: HashSet<String>,
    /// Newest stream-change number applied.
    seq: i64,
}

impl RemoteStreams {
    fn online(&self, device_id: &str) -> bool {
        self.holder
            .get(device_id)
            .is_some_and(|r| self.alive.contains(r))
    }
}

/// The host metrics a device reported in its latest heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReport {
    /// When central received it (Unix seconds).
    pub at: i64,
    /// What the agent sent (bounded by central).
    pub metrics: HostMetrics,
    /// The device's clock minus central's when the heartbeat arrived, in milliseconds (the
    /// network's one-way delay included); `None` when the agent did not send its time.
    pub clock_offset_ms: Option<i64>,
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
    /// Register a device's new stream behind `gate`; an older stream of the same device is
    /// closed (at most one live stream per device).
    pub fn register(
        &self,
        device_id: &str,
        tx: SessionSender,
        gate: Arc<AttestationGate>,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        let old = self.lock_open().insert(
            device_id.to_owned(),
            Session {
                id,
                tx,
                gate,
                outbox: outbox.clone(),
            },
        );
        self.note_change(device_id, true);
        if let Some(old) = old {
            old.outbox.order_end(Status::aborted(
                "a newer sync stream of this device replaced this one",
            ));
        }
        Registered { id, outbox }
    }

    /// Forget a stream when it ends (only if it is still the current one).
    pub fn unregister(&self, device_id: &str, session_id: u64) {
        let mut open = self.lock_open();
        if open.get(device_id).is_some_and(|s| s.id == session_id) {
            open.remove(device_id);
            drop(open);
            self.note_change(device_id, false);
        }
    }

    /// End a device's stream with `status` (revocation).
    pub fn close(&self, device_id: &str, status: Status) {
        if let Some(session) = self.lock_open().remove(device_id) {
            self.note_change(device_id, false);
            session.outbox.order_end(status);
        }
    }

    /// End every open stream with `status` (central stopping): agents reconnect elsewhere or
    /// later. Each status asks its agent to wait a different time (see [`reconnect_spread`]), so
    /// a fleet does not come back at one instant.
    pub fn close_all(&self, status: Status) {
        let mut open = self.lock_open();
        let spread = reconnect_spread(open.len());
        let count = open.len().max(1) as u32;
        for (i, (device_id, session)) in open.drain().enumerate() {
            self.note_change(&device_id, false);
            let after = spread * (i as u32) / count;
            session
                .outbox
                .order_end(cairn_proto::with_retry_after(status.clone(), after));
        }
    }

    /// Queue a message on a device's stream if it is connected here; false if not, or if the
    /// stream is full (its device does not read it: the stream is then ended).
    pub fn push(&self, device_id: &str, message: CentralMessage) -> bool {
        let Some((tx, outbox)) = self
            .lock_open()
            .get(device_id)
            .map(|s| (s.tx.clone(), s.outbox.clone()))
        else {
            return false;
        };
        match tx.try_send(Box::new(Ok(message))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                outbox.order_end(Status::resource_exhausted(
                    "this stream is full: the device does not read it; reconnect",
                ));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Hand a desired state to a device's stream if it is connected here (it replaces one not
    /// sent yet); false if not. While the stream's attestation gate is closed the state is held
    /// back (true: nothing to relay elsewhere); the stream's task sends the stored state once a
    /// quote verifies. Never waits for the device.
    pub fn push_desired(&self, device_id: &str, message: CentralMessage) -> bool {
        match self.lock_open().get(device_id) {
            Some(session) if !session.gate.is_open() => true,
            Some(session) => {
                session.outbox.put_desired(message);
                true
            }
            None => false,
        }
    }

    /// Ask the device's stream here for a fresh quote; false when it is not connected here.
    pub fn request_attestation(&self, device_id: &str) -> bool {
        match self.lock_open().get(device_id) {
            Some(session) => {
                session.gate.quote_now.notify_one();
                true
            }
            None => false,
        }
    }

    /// Whether the device has an open stream here or, with replicas, on another replica that
    /// is alive.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.is_connected_here(device_id) || self.lock_remote().online(device_id)
    }

    /// Whether the device's stream is open on this central.
    pub fn is_connected_here(&self, device_id: &str) -> bool {
        self.lock_open().contains_key(device_id)
    }

    /// Devices whose streams are open on this central.
    pub fn connected_here(&self) -> Vec<String> {
        self.lock_open().keys().cloned().collect()
    }

    /// The newest stream-change number applied by [`Sessions::apply_remote`] (0 at start).
    pub fn remote_seq(&self) -> i64 {
        self.lock_remote().seq
    }

    /// Apply stream changes read from the registry (up to number `seq`) and the replicas
    /// alive now. Rows naming `me` are dropped: this replica's own streams are in memory.
    pub fn apply_remote(
        &self,
        seq: i64,
        changed: Vec<StreamHolder>,
        alive: HashSet<String>,
        me: &str,
    ) {
        let mut remote = self.lock_remote();
        if !changed.is_empty() || remote.alive != alive {
            self.presence_epoch.fetch_add(1, Ordering::AcqRel);
        }
        for (device_id, holder) in changed {
            match holder {
                Some(replica) if replica != me => remote.holder.insert(device_id, replica),
                _ => remote.holder.remove(&device_id),
            };
        }
        remote.alive = alive;
        remote.seq = seq;
    }

    /// Streams opened and ended here since the last call (for the registry).
    pub fn take_stream_changes(&self) -> StreamChanges {
        let changed = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out = StreamChanges::default();
        for (device_id, connected) in changed {
            if connected {
                out.connected.push(device_id)
            } else {
                out.left.push(device_id)
            }
        }
        out
    }

    /// Put back stream changes whose write failed, unless a newer change replaced them.
    pub fn restore_stream_changes(&self, changes: StreamChanges) {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        for (device_id, connected) in changes
            .connected
            .into_iter()
            .map(|d| (d, true))
            .chain(changes.left.into_iter().map(|d| (d, false)))
        {
            changed.entry(device_id).or_insert(connected);
        }
    }

    /// A number that changes whenever a device may have come online or gone offline, here or
    /// on another replica (the scheduler skips idle passes by it).
    pub fn presence_epoch(&self) -> u64 {
        self.presence_epoch.load(Ordering::Acquire)
    }

    fn note_change(&self, device_id: &str, connected: bool) {
        self.presence_epoch.fetch_add(1, Ordering::AcqRel);
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_owned(), connected);
    }

    /// Devices online anywhere: with streams here or on another live replica.
    pub fn online_anywhere_count(&self) -> usize {
        let here = self.lock_open();
        let remote = self.lock_remote();
        here.len()
            + remote
                .holder
                .iter()
                .filter(|(id, r)| remote.alive.contains(*r) && !here.contains_key(*id))
                .count()
    }

    /// Number of open streams.
    pub fn online_count(&self) -> usize {
        self.lock_open().len()
    }

    /// Note a heartbeat (or a new stream, which counts as one).
    pub fn saw(&self, device_id: &str, at: i64) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard
            .entry(device_id.to_owned())
            .or_insert(Heard { at, written: 0 })
            .at = at;
    }

    /// When the device was last heard from here, if its stream is open here.
    pub fn last_heard(&self, device_id: &str) -> Option<i64> {
        if !self.is_connected_here(device_id) {
            return None;
        }
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .map(|h| h.at)
    }

    /// Keep the app status of a device's latest heartbeat; returns the one it replaces.
    pub fn report_apps(&self, device_id: &str, report: AppsReport) -> Option<Arc<AppsReport>> {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_owned(), Arc::new(report))
    }

    /// The latest app status a device reported since central started.
    pub fn apps_report(&self, device_id: &str) -> Option<Arc<AppsReport>> {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }

    /// Keep the OS status of a device's latest heartbeat; returns the one it replaces.
    pub fn report_os(&self, device_id: &str, report: OsReport) -> Option<Arc<OsReport>> {
        self.os
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_owned(), Arc::new(report))
    }

    /// Drop a device's OS status (its processing failed: the next heartbeat is taken as new).
    pub fn forget_os(&self, device_id: &str) {
        self.os
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
    }

    /// The latest OS status a device reported since central started.
    pub fn os_report(&self, device_id: &str) -> Option<Arc<OsReport>> {
        self.os
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }

    /// Keep the host metrics of a device's latest heartbeat, returning the previous ones.
    pub fn report_host(&self, device_id: &str, report: HostReport) -> Option<Arc<HostReport>> {
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_owned(), Arc::new(report))
    }

    /// The latest host metrics a device reported since central started.
    pub fn host_report(&self, device_id: &str) -> Option<Arc<HostReport>> {
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }

    /// Every device's latest host metrics (for fleet aggregates; the map lock is held only
    /// while the `Arc`s are cloned).
    pub fn host_reports(&self) -> Vec<Arc<HostReport>> {
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every device's latest app status (for fleet aggregates).
    pub fn apps_reports(&self) -> Vec<Arc<AppsReport>> {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Sync streams opened since start.
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::Relaxed)
    }

    /// Heartbeats received since start (for metrics and benchmarks).
    pub fn heartbeats_received(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// The heartbeat times the registry should get now (for the batched write): a new
    /// stream's first, a connected device's when the written one is
    /// [`LAST_SEEN_REFRESH_SECONDS`] old, and the last one of a stream that ended.
    pub fn take_seen(&self) -> Vec<(String, i64)> {
        let open = self.lock_open();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        heard.retain(|device_id, h| {
            let connected = open.contains_key(device_id);
            if h.at > h.written
                && (h.written == 0 || !connected || h.at - h.written >= LAST_SEEN_REFRESH_SECONDS)
            {
                due.push((device_id.clone(), h.at));
                h.written = h.at;
            }
            connected
        });
        due
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_remote(&self) -> std::sync::MutexGuard<'_, RemoteStreams> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> SessionSender {
        mpsc::channel(1).0
    }

    #[tokio::test]
    async fn a_stopping_central_spreads_its_streams_reconnects() {
        assert_eq!(reconnect_spread(1), std::time::Duration::from_millis(1));
        assert_eq!(
            reconnect_spread(100_000),
            std::time::Duration::from_secs(100)
        );
        assert_eq!(reconnect_spread(10_000_000), MAX_RECONNECT_SPREAD);
        let sessions = Sessions::default();
        let outboxes: Vec<Arc<Outbox>> = (0..4000)
            .map(|i| {
                sessions
                    .register(&format!("dev_{i}"), stream(), AttestationGate::new(true))
                    .outbox
            })
            .collect();
        sessions.close_all(Status::unavailable("stopping"));
        let mut waits = Vec::new();
        for outbox in outboxes {
            match outbox.next().await {
                Outgoing::End(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable);
                    waits.push(cairn_proto::retry_after(&status).expect("a retry-after"));
                }
                Outgoing::Desired(_) => panic!("an end was expected"),
            }
        }
        waits.sort();
        assert_eq!(waits[0], std::time::Duration::ZERO);
        assert!(waits[3999] < std::time::Duration::from_secs(4));
        assert!(
            waits[3999] > std::time::Duration::from_millis(3900),
            "{:?}",
            waits[3999]
        );
        // Evenly: each second of the spread gets about a thousand.
        let first_second = waits.iter().filter(|w| w.as_secs() == 0).count();
        assert_eq!(first_second, 1000);
        assert_eq!(sessions.online_count(), 0);
    }

    #[test]
    fn heartbeat_times_are_written_on_connect_when_stale_and_on_leaving() {
        let sessions = Sessions::default();
        let id = sessions
            .register("dev_1", stream(), AttestationGate::new(true))
            .id;
        sessions.saw("dev_1", 1000);
        assert_eq!(
            sessions.take_seen(),
            vec![("dev_1".to_owned(), 1000)],
            "a new stream's first heartbeat"
        );
        sessions.saw("dev_1", 1015);
        assert_eq!(
            sessions.take_seen(),
            vec![],
            "a fresh written time is not rewritten"
        );
        assert_eq!(
            sessions.last_heard("dev_1"),
            Some(1015),
            "the API reads the latest from memory"
        );
        sessions.saw("dev_1", 1000 + LAST_SEEN_REFRESH_SECONDS);
        assert_eq!(
            sessions.take_seen(),
            vec![("dev_1".to_owned(), 1000 + LAST_SEEN_REFRESH_SECONDS)]
        );
        sessions.saw("dev_1", 1400);
        sessions.unregister("dev_1", id);
        assert_eq!(
            sessions.take_seen(),
            vec![("dev_1".to_owned(), 1400)],
            "the last heartbeat of an ended stream"
        );
        assert_eq!(
            sessions.take_seen(),
            vec![],
            "and then the device is forgotten"
        );
        assert_eq!(sessions.last_heard("dev_1"), None);
    }

    #[test]
    fn stream_changes_are_netted_and_remote_streams_count_while_their_replica_lives() {
        let sessions = Sessions::default();
        let a = sessions
            .register("dev_a", stream(), AttestationGate::new(true))
            .id;
        sessions.register("dev_b", stream(), AttestationGate::new(true));
        sessions.unregister("dev_a", a);
        let mut changes = sessions.take_stream_changes();
        changes.connected.sort();
        assert_eq!(
            changes,
            StreamChanges {
                connected: vec!["dev_b".into()],
                left: vec!["dev_a".into()]
            }
        );
        assert_eq!(sessions.take_stream_changes(), StreamChanges::default());
        // A failed write is put back, but never over a newer change.
        sessions.register("dev_a", stream(), AttestationGate::new(true));
        sessions.restore_stream_changes(changes);
        let back = sessions.take_stream_changes();
        assert_eq!((back.connected.len(), back.left.len()), (2, 0), "{back:?}");

        let alive: HashSet<String> = ["rep_other".to_owned()].into();
        let changed = vec![
            ("dev_x".to_owned(), Some("rep_other".to_owned())),
            ("dev_y".to_owned(), Some("rep_dead".to_owned())),
            ("dev_a".to_owned(), Some("rep_me".to_owned())),
        ];
        sessions.apply_remote(7, changed, alive.clone(), "rep_me");
        assert_eq!(sessions.remote_seq(), 7);
        assert!(sessions.is_online("dev_x"));
        assert!(
            !sessions.is_online("dev_y"),
            "a silent replica's streams count as offline"
        );
        assert_eq!(
            sessions.online_anywhere_count(),
            3,
            "dev_a, dev_b here and dev_x there"
        );
        sessions.apply_remote(8, vec![("dev_x".to_owned(), None)], alive, "rep_me");
        assert!(!sessions.is_online("dev_x"));
    }
}
