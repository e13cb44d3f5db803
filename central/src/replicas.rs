//! Several central replicas on one PostgreSQL database.
//!
//! An agent's stream lands on any replica, and an operator's change on any other. Everything
//! durable is in the shared database already; what does not cross replicas by itself is the
//! nudge "this device's state changed, push it now". A replica that changes a device whose
//! stream it does not hold announces the device on PostgreSQL's `LISTEN/NOTIFY` channel; every
//! replica listens, and the one holding the stream reloads the device's desired state from the
//! database and pushes it. Notifications carry only a kind and a device id, never state, so a
//! lost or repeated one costs a reload at most (and the agent gets everything on reconnect).
//!
//! Presence crosses replicas through the database (`store::streams`): every
//! `presence_flush_ms` each replica writes which streams opened and ended on it and that it is
//! alive, and reads back what changed since its last read. A device whose stream is on a
//! replica that wrote its liveness within `remote_presence_seconds` is online, so placement
//! and the API see it. The read is incremental: at rest it returns nothing, where reading every
//! device's heartbeat time cost each replica a scan of the fleet every few seconds.
//!
//! On SQLite (one central) the bus is inert.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::{mpsc, watch};

use crate::store::{self, now_unix, streams, Connection, StoreError};
use crate::Shared;

/// The PostgreSQL channel replicas talk on.
const CHANNEL: &str = "cairn_devices";
/// Longest wait before a broken listen/notify connection is tried again.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// What a notification asks of the replica holding the device's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Reload and push the device's desired state.
    Desired,
    /// The device was revoked: end its stream.
    Revoked,
    /// Deliver the device's pending requests (logs on demand).
    Requests,
    /// Ask the device for a fresh quote (its attestation reference changed).
    Attest,
    /// A deployment's app changed (the id is `replica/deployment`, the replica that sent it):
    /// push every device of it connected here. One nudge for the whole deployment, each
    /// replica its own share; the sender pushed its own already.
    Deployment,
}

impl Nudge {
    fn as_str(self) -> &'static str {
        match self {
            Nudge::Desired => "desired",
            Nudge::Revoked => "revoked",
            Nudge::Requests => "requests",
            Nudge::Attest => "attest",
            Nudge::Deployment => "deployment",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "desired" => Some(Nudge::Desired),
            "attest" => Some(Nudge::Attest),
            "revoked" => Some(Nudge::Revoked),
            "requests" => Some(Nudge::Requests),
            "deployment" => Some(Nudge::Deployment),
            _ => None,
        }
    }
}

/// Replicas silent this long are forgotten at start (their streams count as offline anyway).
const FORGET_REPLICAS_AFTER_S: i64 = 24 * 3600;

/// Sends nudges to the other replicas (no-op on SQLite).
pub struct Bus {
    outbox: Option<std::sync::mpsc::Sender<String>>,
    replica: String,
}

impl Bus {
    /// A bus for `store`: a notifier thread with its own connection on PostgreSQL, inert on
    /// SQLite.
    pub fn new(store: &store::Store) -> Self {
        // New at every start: a restarted replica's old rows then simply stop counting.
        let replica = store::new_id("rep");
        let Some(url) = store.postgres_url().map(str::to_owned) else {
            return Self {
                outbox: None,
                replica,
            };
        };
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("cairn-notify".into())
            .spawn(move || notifier(&url, rx))
            .expect("spawn the replica notifier thread");
        Self {
            outbox: Some(tx),
            replica,
        }
    }

    /// This replica's id in the registry's stream table (new at every start).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Tell the other replicas about `device_id` (returns at once; sent in order, in the
    /// background).
    pub fn announce(&self, nudge: Nudge, device_id: &str) {
        if let Some(outbox) = &self.outbox {
            let _ = outbox.send(format!("{}:{device_id}", nudge.as_str()));
        }
    }

    /// Tell the other replicas that deployment `name`'s app changed.
    pub fn announce_deployment(&self, name: &str) {
        self.announce(Nudge::Deployment, &format!("{}/{name}", self.replica));
    }
}

/// Most notifications sent in one statement (two parameters each, well under PostgreSQL's limit).
const NOTIFY_BATCH: usize = 256;

/// Send queued notifications on a dedicated connection, reconnecting after failures. Whatever
/// is queued goes out together, up to [`NOTIFY_BATCH`] per statement: a placement pass or a
/// rollout wave nudges thousands of devices at once, and one round trip each would make the
/// last device wait for all the others.
fn notifier(url: &str, rx: std::sync::mpsc::Receiver<String>) {
    let mut conn: Option<Connection> = None;
    let mut backoff = Duration::from_millis(200);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < NOTIFY_BATCH {
            match rx.try_recv() {
                Ok(payload) => batch.push(payload),
                Err(_) => break,
            }
        }
        let sql = notify_sql(batch.len());
        let mut params: Vec<&dyn store::db::ToValue> = vec![&CHANNEL];
        params.extend(batch.iter().map(|p| p as &dyn store::db::ToValue));
        loop {
            if conn.as_ref().is_none_or(Connection::is_broken) {
                match store::connect_postgres(url) {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "replica notifier cannot connect; retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            let sent = conn
                .as_ref()
                .expect("connected above")
                .execute(&sql, params.as_slice());
            match sent {
                Ok(_) => {
                    backoff = Duration::from_millis(200);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replica notification failed; reconnecting");
                    conn = None;
                }
            }
        }
    }
}

/// `SELECT pg_notify(?1, ?2), pg_notify(?1, ?3), …` for `count` payloads.
fn notify_sql(count: usize) -> String {
    let calls: Vec<String> = (0..count)
        .map(|i| format!("pg_notify(?1, ?{})", i + 2))
        .collect();
    format!("SELECT {}", calls.join(", "))
}

/// The listening connection, opened before central serves: a nudge sent while a replica
/// starts must not fall between its first stream and its first LISTEN. `None` on SQLite.
pub fn listen(store: &store::Store) -> Result<Option<postgres::Client>, StoreError> {
    let Some(url) = store.postgres_url() else {
        return Ok(None);
    };
    let mut client = store::postgres_client(url)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| StoreError::Query(e.into()))?;
    Ok(Some(client))
}

/// Act on nudges from other replicas for devices connected here, and on PostgreSQL keep the
/// presence of devices on other replicas fresh. Returns at once on SQLite.
pub async fn run(
    shared: Arc<Shared>,
    listening: Option<postgres::Client>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Some(url), Some(client)) = (shared.store.postgres_url().map(str::to_owned), listening)
    else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Heard>();
    std::thread::Builder::new()
        .name("cairn-listen".into())
        .spawn(move || listener(&url, client, tx))
        .expect("spawn the replica listener thread");
    let before = now_unix() - FORGET_REPLICAS_AFTER_S;
    match shared
        .store
        .run(move |conn| streams::forget_dead(conn, before))
        .await
    {
        Ok(0) => {}
        Ok(gone) => tracing::info!(gone, "forgot replicas silent for a day"),
        Err(e) => {
            tracing::warn!(error = %e, "could not forget long-silent replicas; trying at the next start")
        }
    }
    let mut presence = tokio::time::interval(Duration::from_millis(
        shared.config.presence_flush_ms.max(500),
    ));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = presence.tick() => refresh_presence(&shared).await,
            heard = rx.recv() => match heard {
                None => return,
                Some(Heard::Nudge(Nudge::Deployment, from_and_name)) => {
                    if let Some((from, name)) = from_and_name.split_once('/') {
                        if from != shared.bus.replica() {
                            // Off this loop: a large deployment's share takes a while.
                            let (shared, name) = (shared.clone(), name.to_owned());
                            tokio::spawn(async move { shared.push_deployment_here(&name).await });
                        }
                    }
                }
                Some(Heard::Nudge(nudge, device_id)) => {
                    if shared.sessions.is_connected_here(&device_id) {
                        act(&shared, nudge, &device_id).await;
                    }
                }
                Some(Heard::Reconnected) => {
                    // Nudges sent while we were not listening are lost: push every device
                    // connected here its stored state again (the agent ignores what it holds).
                    let here = shared.sessions.connected_here();
                    for device_id in &here {
                        act(&shared, Nudge::Requests, device_id).await;
                    }
                    shared.push_stored_many(here).await;
                }
            },
        }
    }
}

/// What the listener thread heard.
enum Heard {
    Nudge(Nudge, String),
    /// The listening connection broke and was re-established.
    Reconnected,
}

async fn act(shared: &Arc<Shared>, nudge: Nudge, device_id: &str) {
    match nudge {
        Nudge::Desired => {
            shared.push_stored(device_id).await;
        }
        Nudge::Revoked => {
            shared.sessions.close(
                device_id,
                tonic::Status::permission_denied("this device was revoked"),
            );
        }
        Nudge::Requests => crate::logs::deliver_pending(shared, device_id).await,
        Nudge::Attest => {
            shared.sessions.request_attestation(device_id);
        }
        Nudge::Deployment => {} // handled in run: it names no device
    }
}

/// Read which streams moved between replicas since the last read, and which replicas live.
async fn refresh_presence(shared: &Arc<Shared>) {
    let since = now_unix() - shared.config.remote_presence_seconds as i64;
    let after = shared.sessions.remote_seq();
    let read = shared
        .store
        .read(move |conn| {
            let (seq, changed) = streams::changed_since(conn, after)?;
            let alive: HashSet<String> = streams::alive_since(conn, since)?.into_keys().collect();
            Ok((seq, changed, alive))
        })
        .await;
    match read {
        Ok((seq, changed, alive)) => {
            shared
                .sessions
                .apply_remote(seq, changed, alive, shared.bus.replica())
        }
        Err(e) => tracing::warn!(error = %e, "could not read device presence from the registry"),
    }
}

/// Receive notifications (reconnecting after failures), forwarding them.
fn listener(url: &str, mut client: postgres::Client, tx: mpsc::UnboundedSender<Heard>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match forward(&mut client, &tx) {
            Ok(()) => return, // the receiver is gone: central stopped
            Err(e) => {
                tracing::warn!(error = %e, "replica listener connection failed; reconnecting")
            }
        }
        loop {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(RECONNECT_MAX);
            if tx.is_closed() {
                return;
            }
            let reconnected = store::postgres_client(url).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))
                    .map_err(|e| StoreError::Query(e.into()))?;
                Ok(c)
            });
            match reconnected {
                Ok(c) => {
                    client = c;
                    backoff = Duration::from_millis(200);
                    let _ = tx.send(Heard::Reconnected);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "replica listener cannot reconnect; retrying"),
            }
        }
    }
}

fn forward(
    client: &mut postgres::Client,
    tx: &mpsc::UnboundedSender<Heard>,
) -> Result<(), StoreError> {
    loop {
        // Wake up now and then to notice that central stopped.
        let mut notifications = client.notifications();
        let mut batch = notifications.timeout_iter(Duration::from_secs(1));
        while let Some(n) = batch.next().map_err(|e| StoreError::Query(e.into()))? {
            let parsed = n
                .payload()
                .split_once(':')
                .and_then(|(kind, device)| Some((Nudge::parse(kind)?, device.to_owned())));
            let Some((nudge, device_id)) = parsed else {
                tracing::warn!(
                    payload = n.payload(),
                    "ignoring an unknown replica notification"
                );
                continue;
            };
            if tx.send(Heard::Nudge(nudge, device_id)).is_err() {
                return Ok(());
            }
        }
        if tx.is_closed() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_of_notifications_is_one_statement_on_one_channel() {
        assert_eq!(super::notify_sql(1), "SELECT pg_notify(?1, ?2)");
        assert_eq!(
            super::notify_sql(3),
            "SELECT pg_notify(?1, ?2), pg_notify(?1, ?3), pg_notify(?1, ?4)"
        );
    }
}
