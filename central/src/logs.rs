//! Logs on demand: the last lines of a device's app service log or of its agent's journal,
//! fetched over the device's Sync stream.
//!
//! Works across central replicas sharing one database: the REST handler stores a `pending` row
//! in `log_requests` ([`request`]), [`deliver_pending`] on the replica holding the device's stream
//! claims it and pushes a `LogRequest`, the replica receiving the agent's `LogReply` writes it to
//! the row ([`on_reply`]), and the handler polls the row until it is answered or the timeout
//! (`log_request_timeout_seconds`) passes.

use std::time::Duration;

use cairn_proto::v1::{central_message, CentralMessage, LogReply, LogRequest};
use tracing::Instrument;

use crate::store::events::now_unix_ms;
use crate::store::log_requests::{self as store, LogRequestRow, LogRequestState};
use crate::store::{audit, devices, DeviceStatus, StoreError};
use crate::Shared;

/// How often the REST handler looks at the request's row.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why a log request's query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogQueryError {
    /// An app or service name the runtime would refuse.
    #[error("`{what}` {name:?} {reason}")]
    Name {
        /// `app` or `service`.
        what: &'static str,
        /// The name, cut to 64 bytes.
        name: String,
        /// Which rule it breaks.
        reason: cairn_compose::NameError,
    },
    /// Only one of app and service was given.
    #[error(
        "give both `app` and `service` for a service's log, or neither for the agent's journal"
    )]
    HalfSource,
    /// A line count out of range.
    #[error("`lines` must be 1 to {max}, got {lines}", max = cairn_proto::MAX_LOG_LINES)]
    Lines {
        /// The count asked for.
        lines: u32,
    },
}

/// Which log to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// The log of one service of an app.
    Service {
        /// App name.
        app: String,
        /// Service name.
        service: String,
    },
    /// The agent's own journal unit.
    Agent,
}

impl LogSource {
    /// Check the names the way the runtime does (`None` for both: the agent's journal).
    pub fn parse(app: Option<&str>, service: Option<&str>) -> Result<LogSource, LogQueryError> {
        match (app, service) {
            (None, None) => Ok(LogSource::Agent),
            (Some(app), Some(service)) => {
                for (what, name) in [("app", app), ("service", service)] {
                    cairn_compose::check_app_or_service_name(name).map_err(|reason| {
                        LogQueryError::Name {
                            what,
                            name: cairn_proto::truncate_status_text(name, 64),
                            reason,
                        }
                    })?;
                }
                Ok(LogSource::Service {
                    app: app.to_owned(),
                    service: service.to_owned(),
                })
            }
            _ => Err(LogQueryError::HalfSource),
        }
    }

    fn describe(&self) -> String {
        match self {
            LogSource::Service { app, service } => format!("app={app} service={service}"),
            LogSource::Agent => "agent journal".into(),
        }
    }
}

/// Check a requested line count.
pub fn check_lines(lines: u32) -> Result<u32, LogQueryError> {
    if (1..=cairn_proto::MAX_LOG_LINES).contains(&lines) {
        Ok(lines)
    } else {
        Err(LogQueryError::Lines { lines })
    }
}

/// Why a log request did not return lines.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No such device.
    #[error("no device with this id")]
    NoDevice,
    /// The device is not connected to any replica (or not active).
    #[error(
        "device {0} is offline: it has no open stream to central; try again once it is connected"
    )]
    Offline(String),
    /// The device did not answer in time.
    #[error("device {device_id} did not send the log within {seconds} s; it may be busy or its connection slow, try again")]
    Timeout {
        /// The device.
        device_id: String,
        /// The timeout.
        seconds: u64,
    },
    /// The device answered with an error.
    #[error("device {device_id} could not read the log: {error}")]
    Device {
        /// The device.
        device_id: String,
        /// Its error.
        error: String,
    },
    /// Registry failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The lines a device sent.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLines {
    /// Request id (`log_...`).
    pub request_id: String,
    /// The lines, oldest first.
    pub text: String,
    /// Older lines were cut to fit the message size.
    pub truncated: bool,
}

/// Ask `device_id` for `lines` lines of `source` on behalf of `actor` (audited), and wait for
/// the answer up to the configured timeout.
pub async fn request(
    shared: &Shared,
    actor: String,
    device_id: &str,
    source: LogSource,
    lines: u32,
) -> Result<LogLines, LogsError> {
    let span = tracing::info_span!("logs.request", device_id = %device_id, source = %source.describe(), lines);
    async {
        // Here or, with replicas, on another replica (shared presence).
        let online = shared.sessions.is_online(device_id);
        let (app, service) = match &source {
            LogSource::Service { app, service } => (app.clone(), service.clone()),
            LogSource::Agent => (String::new(), String::new()),
        };
        let row = LogRequestRow {
            id: crate::store::new_id("log"),
            device_id: device_id.to_owned(),
            app,
            service,
            lines,
            created_at_ms: now_unix_ms(),
            state: LogRequestState::Pending,
            reply: None,
            truncated: false,
            error: None,
        };
        let id = row.id.clone();
        let detail = format!("{} lines={lines} request={id}", source.describe());
        let inserted = shared
            .store
            .run(move |conn| {
                let tx = conn.transaction()?;
                let Some(device) = devices::get(&tx, &row.device_id)? else {
                    return Ok(Err(LogsError::NoDevice));
                };
                if device.status != DeviceStatus::Active || !online {
                    return Ok(Err(LogsError::Offline(row.device_id.clone())));
                }
                store::insert(&tx, &row)?;
                audit::record(&tx, &actor, "device.logs", &row.device_id, &detail)?;
                tx.commit()?;
                Ok(Ok(()))
            })
            .await?;
        inserted?;
        if shared.sessions.is_connected_here(device_id) {
            deliver_pending(shared, device_id).await;
        } else {
            // Its stream is on another replica: that one delivers it.
            shared
                .bus
                .announce(crate::replicas::Nudge::Requests, device_id);
        }
        let timeout = Duration::from_secs(shared.config.log_request_timeout_seconds);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let wanted = id.clone();
            let row = shared
                .store
                .read(move |conn| store::get(conn, &wanted))
                .await?;
            match row {
                Some(LogRequestRow {
                    state: LogRequestState::Done,
                    reply,
                    truncated,
                    ..
                }) => {
                    let text = reply.unwrap_or_default();
                    tracing::info!(bytes = text.len(), truncated, "log lines received");
                    return Ok(LogLines {
                        request_id: id,
                        text,
                        truncated,
                    });
                }
                Some(LogRequestRow {
                    state: LogRequestState::Failed,
                    error,
                    ..
                }) => {
                    return Err(LogsError::Device {
                        device_id: device_id.to_owned(),
                        error: error.unwrap_or_else(|| "no reason given".into()),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(StoreError::Worker(format!(
                        "log request {id} vanished from the registry"
                    ))
                    .into())
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let wanted = id.clone();
                let seconds = timeout.as_secs();
                let error = format!("no answer from the device within {seconds} s");
                let expired = shared
                    .store
                    .run(move |conn| store::expire(conn, &wanted, &error))
                    .await?;
                if expired {
                    tracing::warn!(seconds, "the device did not answer a log request in time");
                    return Err(LogsError::Timeout {
                        device_id: device_id.to_owned(),
                        seconds,
                    });
                }
                // Answered between the last look and the expiry: read it once more.
                continue;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    .instrument(span)
    .await
}

/// Whether device `device_id` has log requests waiting (made since `since`: see
/// [`pending_since`]), read in the caller's snapshot: a stream open asks with its desired
/// state, in one read.
pub fn any_pending(
    conn: &crate::store::Connection,
    device_id: &str,
    since: i64,
) -> Result<bool, StoreError> {
    Ok(!store::pending_for_device(conn, device_id, since)?.is_empty())
}

/// Oldest creation time (ms) of a request still worth sending.
pub fn pending_since(config: &crate::config::CentralConfig) -> i64 {
    now_unix_ms() - config.log_request_timeout_seconds as i64 * 1000
}

/// Push the device's pending log requests (made within the timeout) on its stream, if the
/// stream is open on this replica. Each request is claimed in the registry first, so when several
/// replicas try only one sends it; a push that fails gives the claim back.
pub async fn deliver_pending(shared: &Shared, device_id: &str) {
    if !shared.sessions.is_connected_here(device_id) {
        return;
    }
    let id = device_id.to_owned();
    let since = pending_since(&shared.config);
    // Almost always there is none: look without the registry lock, which every stream open
    // would otherwise take (a fleet reconnecting at once queues on it).
    let any = shared
        .store
        .read(move |conn| any_pending(conn, &id, since))
        .await;
    if matches!(any, Ok(false)) {
        return;
    }
    send_pending(shared, device_id).await;
}

/// Claim and push the device's pending log requests ([`deliver_pending`] once it is known
/// that there are some).
pub async fn send_pending(shared: &Shared, device_id: &str) {
    let since = pending_since(&shared.config);
    let id = device_id.to_owned();
    let claimed = shared
        .store
        .run(move |conn| {
            let mut claimed = Vec::new();
            for row in store::pending_for_device(conn, &id, since)? {
                if store::claim(conn, &row.id)? {
                    claimed.push(row);
                }
            }
            Ok(claimed)
        })
        .await;
    let claimed = match claimed {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(device_id, error = %e, "could not read pending log requests; they are retried when the device reconnects");
            return;
        }
    };
    for row in claimed {
        let message = CentralMessage {
            kind: Some(central_message::Kind::Logs(LogRequest {
                id: row.id.clone(),
                app: row.app,
                service: row.service,
                lines: row.lines,
            })),
        };
        if shared.sessions.push(device_id, message) {
            tracing::debug!(device_id, request = %row.id, "log request sent to the device");
        } else {
            let id = row.id.clone();
            if let Err(e) = shared
                .store
                .run(move |conn| store::unclaim(conn, &id))
                .await
            {
                tracing::warn!(device_id, request = %row.id, error = %e, "could not give back a log request the stream did not take");
            }
        }
    }
}

/// Longest error text kept from a device.
const MAX_REPLY_ERROR_BYTES: usize = 1024;

/// Store a device's answer to one of its log requests (an answer to another device's request, or
/// to one no longer open, is ignored with a log line).
pub async fn on_reply(shared: &Shared, device_id: &str, reply: LogReply) {
    if reply.request_id.is_empty() || reply.request_id.len() > 64 {
        tracing::warn!(device_id, "ignoring a log reply without a valid request id");
        return;
    }
    let mut text = reply.text;
    let mut truncated = reply.truncated;
    if text.len() > cairn_proto::MAX_LOG_REPLY_BYTES {
        let mut cut = text.len() - cairn_proto::MAX_LOG_REPLY_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = text.split_off(cut);
        truncated = true;
    }
    let error = cairn_proto::truncate_status_text(&reply.error, MAX_REPLY_ERROR_BYTES);
    let id = reply.request_id.clone();
    let device = device_id.to_owned();
    let result = shared
        .store
        .run(move |conn| {
            let outcome = if error.is_empty() {
                Ok((text.as_str(), truncated))
            } else {
                Err(error.as_str())
            };
            store::complete(conn, &id, &device, outcome)
        })
        .await;
    match result {
        Ok(true) => tracing::debug!(device_id, request = %reply.request_id, "log reply stored"),
        Ok(false) => {
            tracing::info!(device_id, request = %reply.request_id, "ignoring a log reply to no open request of this device (late or unknown)")
        }
        Err(e) => {
            tracing::warn!(device_id, request = %reply.request_id, error = %e, "could not store a log reply")
        }
    }
}
