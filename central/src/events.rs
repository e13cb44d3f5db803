//! The event log as central feeds it: events central sees (device enrolled, approved, revoked,
//! stream connected or disconnected, app state changes and OS update phases seen in heartbeats,
//! rollout halts) and events agents send, validated and rate-limited per stream.
//!
//! Events that are not part of a registry change are buffered in memory ([`EventBuffer`]) and
//! written in batches by [`flush`], like heartbeat times: a reconnect storm of many devices costs
//! a few transactions, not one disk sync per event. The buffer is bounded; overflow is counted.
//! Events recorded with a registry change (approve, revoke, enroll, rollout halt) are written in
//! that change's transaction with [`crate::store::events::insert`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::v1::{AppStatus, Event, EventSeverity, ServiceState};
use tokio::sync::watch;

use crate::store::events::{self as event_store, NewEvent, Severity};
use crate::Shared;

/// Kinds of events central itself records.
pub const CENTRAL_EVENT_KINDS: &[&str] = &[
    "device.enrolled",
    "device.approved",
    "device.revoked",
    "device.connected",
    "device.disconnected",
    "app.state",
    "os.update",
    "rollout.halted",
    "device.clock_offset",
    "device.attestation",
    "device.wiped",
];

/// Whether `kind` is one the event log can hold (central's or an agent's).
pub fn is_known_kind(kind: &str) -> bool {
    CENTRAL_EVENT_KINDS.contains(&kind) || cairn_proto::AGENT_EVENT_KINDS.contains(&kind)
}

/// Most events waiting in memory for the next batch write.
pub const EVENT_BUFFER_CAPACITY: usize = 10_000;

/// Events waiting to be written, and what was dropped on the way.
#[derive(Debug, Default)]
pub struct EventBuffer {
    pending: Mutex<Vec<NewEvent>>,
    /// Dropped because the buffer was full (the registry is slower than the event rate).
    pub dropped_overflow: AtomicU64,
    /// Agent events refused as invalid (unknown kind or severity).
    pub rejected_invalid: AtomicU64,
    /// Agent events dropped by the per-stream rate limit.
    pub rejected_rate: AtomicU64,
    /// Events written since start.
    pub written: AtomicU64,
}

impl EventBuffer {
    /// Queue an event for the next batch write (dropped and counted when the buffer is full).
    pub fn push(&self, event: NewEvent) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= EVENT_BUFFER_CAPACITY {
            self.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(event);
    }

    /// Take everything queued.
    pub fn take(&self) -> Vec<NewEvent> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Queue an event about a device (or the fleet) happening now.
pub fn record(
    shared: &Shared,
    device_id: Option<&str>,
    kind: &str,
    severity: Severity,
    message: impl Into<String>,
) {
    debug_assert!(
        CENTRAL_EVENT_KINDS.contains(&kind),
        "unknown central event kind {kind}"
    );
    shared
        .events
        .push(NewEvent::now(device_id, kind, severity, message));
}

/// Write the queued events in one transaction; on failure they are dropped and counted (the
/// failure is logged). Returns how many were written.
pub async fn flush(shared: &Shared) -> usize {
    let batch = shared.events.take();
    if batch.is_empty() {
        return 0;
    }
    let count = batch.len();
    match shared
        .store
        .run(move |conn| event_store::insert_all(conn, &batch))
        .await
    {
        Ok(()) => {
            shared
                .events
                .written
                .fetch_add(count as u64, Ordering::Relaxed);
            count
        }
        Err(e) => {
            shared
                .events
                .dropped_overflow
                .fetch_add(count as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, count, "could not write events; they are dropped");
            0
        }
    }
}

/// Write queued events every `presence_flush_ms` and keep the newest `events_keep` (pruned
/// every minute), until shutdown (events queued by then are written).
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_millis(shared.config.presence_flush_ms);
    let mut last_prune: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = shutdown.changed() => true,
        };
        flush(&shared).await;
        if stopping {
            return;
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let keep = shared.config.events_keep;
            let timeout_ms = shared.config.log_request_timeout_seconds as i64 * 1000;
            let now = event_store::now_unix_ms();
            let result = shared
                .store
                .run(move |conn| {
                    let events = event_store::prune(conn, keep)?;
                    let logs = crate::store::log_requests::prune(
                        conn,
                        now - timeout_ms,
                        now - LOG_REQUEST_KEEP_MS,
                    )?;
                    Ok((events, logs))
                })
                .await;
            match result {
                Ok((events, (expired, deleted))) => {
                    if events + expired + deleted > 0 {
                        tracing::info!(
                            events,
                            expired_log_requests = expired,
                            deleted_log_requests = deleted,
                            "pruned the event log and old log requests"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune the event log; retrying in a minute")
                }
            }
        }
    }
}

/// How often the event log is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Log requests (and their replies) are deleted an hour after they were made.
const LOG_REQUEST_KEEP_MS: i64 = 3600 * 1000;

/// Per-stream rate limit of agent events: a burst of [`AGENT_EVENT_BURST`], then
/// [`AGENT_EVENTS_PER_SECOND`].
pub const AGENT_EVENT_BURST: f64 = 100.0;
/// Sustained agent events per second per stream.
pub const AGENT_EVENTS_PER_SECOND: f64 = 1.0;

/// A device's clock may be off; an event dated further than this from central's clock gets
/// central's time (and says so).
const MAX_CLOCK_SKEW_MS: i64 = 24 * 3600 * 1000;

/// Why an event from an agent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentEventError {
    /// Its kind is not in [`cairn_proto::AGENT_EVENT_KINDS`].
    #[error("event kind {kind:?} is not one agents may send ({})", cairn_proto::AGENT_EVENT_KINDS.join(", "))]
    Kind {
        /// The kind sent, cut to 64 bytes.
        kind: String,
    },
    /// Its severity is not info, warning or error.
    #[error("event severity {0} is not info (1), warning (2) or error (3)")]
    Severity(i32),
}

/// Check an event an agent sent: a known kind, a known severity, a message cut to
/// [`cairn_proto::MAX_EVENT_MESSAGE_BYTES`] with control characters replaced.
pub fn from_agent(device_id: &str, event: Event, now_ms: i64) -> Result<NewEvent, AgentEventError> {
    if !cairn_proto::AGENT_EVENT_KINDS.contains(&event.kind.as_str()) {
        return Err(AgentEventError::Kind {
            kind: cairn_proto::truncate_status_text(&event.kind, 64),
        });
    }
    let severity = match EventSeverity::try_from(event.severity) {
        Ok(EventSeverity::Info) => Severity::Info,
        Ok(EventSeverity::Warning) => Severity::Warning,
        Ok(EventSeverity::Error) => Severity::Error,
        _ => return Err(AgentEventError::Severity(event.severity)),
    };
    let cleaned: String = event
        .message
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    let mut message =
        cairn_proto::truncate_status_text(cleaned.trim(), cairn_proto::MAX_EVENT_MESSAGE_BYTES);
    let mut at_ms = event.at_unix_ms;
    if (at_ms - now_ms).abs() > MAX_CLOCK_SKEW_MS {
        at_ms = now_ms;
        message = cairn_proto::truncate_status_text(
            &format!(
                "(device clock off: it dated this {} ms) {message}",
                event.at_unix_ms
            ),
            cairn_proto::MAX_EVENT_MESSAGE_BYTES,
        );
    }
    Ok(NewEvent {
        at_ms,
        device_id: Some(device_id.to_owned()),
        kind: event.kind,
        severity,
        message,
    })
}

/// Most app events taken from one heartbeat.
const MAX_APP_EVENTS_PER_HEARTBEAT: usize = 16;

/// Events for services whose state changed between two heartbeats (`previous` is `None` for the
/// first heartbeat central has seen since it started: nothing is reported then, so a restart of
/// central does not flood the log). Pending-to-pending churn is ignored; a move into running is
/// info, into unhealthy or restarting a warning, into exited or failed an error. An app-level
/// error appearing is an error.
pub fn app_transitions(
    device_id: &str,
    previous: Option<&[AppStatus]>,
    next: &[AppStatus],
) -> Vec<NewEvent> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for app in next {
        let before = previous.iter().find(|p| p.name == app.name);
        if !app.error.is_empty() && before.is_some_and(|b| b.error != app.error) {
            events.push(NewEvent::now(
                Some(device_id),
                "app.state",
                Severity::Error,
                format!("app {} cannot run: {}", app.name, app.error),
            ));
        }
        for service in &app.services {
            let old = before
                .and_then(|b| b.services.iter().find(|s| s.name == service.name))
                .map(|s| s.state);
            let Some(old) = old else { continue };
            if old == service.state {
                continue;
            }
            let severity =
                match ServiceState::try_from(service.state).unwrap_or(ServiceState::Unspecified) {
                    ServiceState::Running => Severity::Info,
                    ServiceState::Unhealthy | ServiceState::Restarting => Severity::Warning,
                    ServiceState::Exited | ServiceState::Failed => Severity::Error,
                    ServiceState::Pending | ServiceState::Unspecified => continue,
                };
            let mut message = format!(
                "service {}/{} {} -> {}",
                app.name,
                service.name,
                crate::api::service_state_name(old),
                crate::api::service_state_name(service.state)
            );
            if !service.message.is_empty() {
                message.push_str(&format!(": {}", service.message));
            }
            events.push(NewEvent::now(
                Some(device_id),
                "app.state",
                severity,
                message,
            ));
        }
    }
    events.truncate(MAX_APP_EVENTS_PER_HEARTBEAT);
    events
}

/// Records a `device.clock_offset` event when a device's clock offset crosses the configured
/// limit (either way), not on every heartbeat.
pub fn clock_offset(shared: &Shared, device_id: &str, previous_ms: Option<i64>, offset_ms: i64) {
    let limit_ms = i64::try_from(shared.config.clock_offset_warning_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let beyond = |ms: i64| ms.unsigned_abs() > limit_ms.unsigned_abs();
    let was_beyond = previous_ms.is_some_and(beyond);
    if beyond(offset_ms) == was_beyond {
        return;
    }
    let (severity, message) = if beyond(offset_ms) {
        (
            Severity::Warning,
            format!(
                "device clock is {} central's; it corrects itself from central's signed time, check its NTP servers and RTC",
                offset_text(offset_ms)
            ),
        )
    } else {
        (
            Severity::Info,
            format!(
                "device clock is back within {} s of central's ({})",
                shared.config.clock_offset_warning_seconds,
                offset_text(offset_ms)
            ),
        )
    };
    record(
        shared,
        Some(device_id),
        "device.clock_offset",
        severity,
        message,
    );
}

/// "3 d 2 h ahead of" / "12.5 s behind": a clock offset for people.
pub fn offset_text(offset_ms: i64) -> String {
    let direction = if offset_ms < 0 { "behind" } else { "ahead of" };
    let ms = offset_ms.unsigned_abs();
    let amount = match ms {
        0..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        3_600_000..=86_399_999 => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
        _ => format!("{} d {} h", ms / 86_400_000, ms % 86_400_000 / 3_600_000),
    };
    format!("{amount} {direction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    use cairn_proto::v1::ServiceStatus;

    #[test]
    fn offsets_read_well() {
        assert_eq!(offset_text(12_500), "12.5 s ahead of");
        assert_eq!(offset_text(-90_000), "1 min behind");
        assert_eq!(
            offset_text(-(3 * 86_400_000 + 2 * 3_600_000)),
            "3 d 2 h behind"
        );
        assert_eq!(offset_text(7_500_000), "2 h 5 min ahead of");
    }

    fn app(state: ServiceState, message: &str) -> AppStatus {
        AppStatus {
            name: "web".into(),
            services: vec![ServiceStatus {
                name: "nginx".into(),
                state: state as i32,
                message: message.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn service_state_changes_become_events() {
        let running = [app(ServiceState::Running, "")];
        let exited = [app(ServiceState::Exited, "exited with status 3")];
        assert!(
            app_transitions("dev_a", None, &exited).is_empty(),
            "no report before: nothing to compare"
        );
        assert!(app_transitions("dev_a", Some(&running), &running).is_empty());
        let down = app_transitions("dev_a", Some(&running), &exited);
        assert_eq!(down.len(), 1);
        assert_eq!(
            (down[0].severity.clone(), down[0].message.as_str()),
            (
                Severity::Error,
                "service web/nginx running -> exited: exited with status 3"
            )
        );
        let up = app_transitions("dev_a", Some(&exited), &running);
        assert_eq!(
            (
                up[0].severity.clone(),
                up[0].kind.as_str(),
                up[0].device_id.as_deref()
            ),
            (Severity::Info, "app.state", Some("dev_a"))
        );
        let pending = [app(ServiceState::Pending, "")];
        assert!(app_transitions("dev_a", Some(&running), &pending).is_empty());
    }

    #[test]
    fn agent_events_are_validated_and_cleaned() {
        let now = 1_700_000_000_000;
        let good = Event {
            kind: "data.unlock".into(),
            severity: EventSeverity::Warning as i32,
            message: "recovered\u{7}\n".into(),
            at_unix_ms: now - 5,
        };
        let event = from_agent("dev_a", good.clone(), now).unwrap();
        assert_eq!(
            (event.severity, event.message.as_str(), event.at_ms),
            (Severity::Warning, "recovered\u{fffd}", now - 5)
        );
        let long = Event {
            message: "x".repeat(10_000),
            at_unix_ms: 5,
            ..good.clone()
        };
        let event = from_agent("dev_a", long, now).unwrap();
        assert!(
            event.message.len() <= cairn_proto::MAX_EVENT_MESSAGE_BYTES
                && event.message.contains("device clock off")
        );
        assert_eq!(event.at_ms, now);
        let err = from_agent(
            "dev_a",
            Event {
                kind: "device.approved".into(),
                ..good.clone()
            },
            now,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not one agents may send"), "{err}");
        let err = from_agent(
            "dev_a",
            Event {
                severity: 0,
                ..good
            },
            now,
        )
        .unwrap_err();
        assert!(err.to_string().contains("severity 0"), "{err}");
    }
}
