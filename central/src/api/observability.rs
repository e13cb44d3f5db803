//! Observability over REST: the event log, host metrics on device pages, logs on demand, and
//! Prometheus metrics.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use cairn_api::{
    DeviceLogs, EventList, EventsQuery, FilesystemUsage, HostMetrics, LogsQuery, TemperatureReading,
};

use super::{ApiError, Caller};
use crate::logs::{self, LogSource, LogsError};
use crate::sessions::HostReport;
use crate::store::events::{self as event_store, EventFilter};
use crate::store::{Role, Timestamp};
use crate::Shared;

type St = State<Arc<Shared>>;

/// Most events one `GET /api/v1/events` returns.
pub const MAX_EVENTS_LIMIT: u32 = 1000;
/// Events shown on a device's page.
pub const DEVICE_PAGE_EVENTS: u32 = 20;

/// Refuse query parameters the operation does not know (a typo must not silently widen a query).
fn only_known(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::BadRequest(format!(
        "unknown query parameter(s) {}; this operation takes {}",
        unknown.join(", "),
        known.join(", ")
    )))
}

/// `since`: an RFC 3339 time (`2026-01-31T12:00:00Z`) or Unix milliseconds.
pub fn parse_since(text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        if ms >= 0 {
            return Ok(ms);
        }
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "`since` {:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor Unix milliseconds",
                cairn_proto::truncate_status_text(text, 64)
            ))
        })
}

fn parse_limit(text: Option<&String>, max: u32) -> Result<Option<u32>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::BadRequest(format!(
            "`limit` must be a whole number from 1 to {max}, got {:?}",
            cairn_proto::truncate_status_text(text, 32)
        ))),
    }
}

/// The query of `GET /api/v1/events`, read with messages that name the parameter at fault.
fn events_query(query: &HashMap<String, String>) -> Result<EventsQuery, ApiError> {
    only_known(query, &["device", "kind", "since", "limit"])?;
    Ok(EventsQuery {
        device: query.get("device").cloned(),
        kind: query.get("kind").cloned(),
        since: query.get("since").cloned(),
        limit: parse_limit(query.get("limit"), MAX_EVENTS_LIMIT)?,
    })
}

/// The query of `GET /api/v1/devices/{id}/logs`, read with messages that name the parameter at
/// fault.
fn logs_query(query: &HashMap<String, String>) -> Result<LogsQuery, ApiError> {
    only_known(query, &["app", "service", "lines"])?;
    let lines = match query.get("lines") {
        None => None,
        Some(text) => Some(text.parse::<u32>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`lines` must be a whole number from 1 to {}",
                cairn_proto::MAX_LOG_LINES
            ))
        })?),
    };
    Ok(LogsQuery {
        app: query.get("app").cloned(),
        service: query.get("service").cloned(),
        lines,
    })
}

fn check_device_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::BadRequest(
            "`device` must be a device id like dev_3f9a… (letters, digits, '_' and '-')".into(),
        ));
    }
    Ok(())
}

/// The newest matching events, oldest first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "observability",
    params(EventsQuery),
    responses(
        (status = 200, description = "The events", body = EventList),
        (status = 400, description = "A bad or unknown query parameter"),
    )
)]
pub async fn list_events(
    caller: Caller,
    State(shared): St,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EventList>, ApiError> {
    caller.require(Role::Viewer)?;
    let query = events_query(&query)?;
    let mut filter = EventFilter {
        limit: query.limit.unwrap_or(100),
        ..Default::default()
    };
    if let Some(device) = query.device {
        check_device_id(&device)?;
        filter.device_id = device;
    }
    if let Some(kind) = query.kind {
        if !crate::events::is_known_kind(&kind) {
            let mut kinds: Vec<&str> = crate::events::CENTRAL_EVENT_KINDS
                .iter()
                .chain(cairn_proto::AGENT_EVENT_KINDS)
                .copied()
                .collect();
            kinds.sort_unstable();
            return Err(ApiError::BadRequest(format!(
                "`kind` {:?} is not an event kind; use one of {}",
                cairn_proto::truncate_status_text(&kind, 64),
                kinds.join(", ")
            )));
        }
        filter.kind = kind;
    }
    if let Some(since) = query.since {
        filter.since_ms = parse_since(&since)?;
    }
    let events = shared
        .store
        .read(move |conn| event_store::list(conn, &filter))
        .await?;
    Ok(Json(EventList { events }))
}

/// The newest events of one device, for its page.
pub async fn device_events(
    shared: &Shared,
    device_id: String,
) -> Result<Vec<event_store::Event>, ApiError> {
    let filter = EventFilter {
        device_id,
        limit: DEVICE_PAGE_EVENTS,
        ..Default::default()
    };
    Ok(shared
        .store
        .read(move |conn| event_store::list(conn, &filter))
        .await?)
}

fn percent(used: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (used as f64 * 1000.0 / total as f64).round() / 10.0)
}

/// A device's latest host metrics (`None` when it has not reported any since this central
/// started).
pub fn host_metrics(report: Option<&HostReport>) -> Option<HostMetrics> {
    let report = report?;
    let m = &report.metrics;
    let used_memory = m.memory_total_bytes - m.memory_available_bytes.min(m.memory_total_bytes);
    let max_temperature = m
        .temperatures
        .iter()
        .map(|t| t.celsius)
        .fold(None, |max: Option<f64>, c| {
            Some(max.map_or(c, |m| m.max(c)))
        });
    Some(HostMetrics {
        reported_at: Timestamp::from_unix_seconds(report.at),
        clock_offset_ms: report.clock_offset_ms,
        cpu_percent: m.cpu_percent.map(|p| (p * 10.0).round() / 10.0),
        load1: m.load1,
        memory_total_bytes: m.memory_total_bytes,
        memory_available_bytes: m.memory_available_bytes,
        memory_used_percent: percent(used_memory, m.memory_total_bytes),
        filesystems: m
            .filesystems
            .iter()
            .map(|fs| FilesystemUsage {
                mount_point: fs.mount_point.clone(),
                used_bytes: fs.used_bytes,
                total_bytes: fs.total_bytes,
                used_percent: percent(fs.used_bytes, fs.total_bytes),
            })
            .collect(),
        disk_used_percent: m
            .filesystems
            .iter()
            .filter_map(|fs| percent(fs.used_bytes, fs.total_bytes))
            .fold(None, |max: Option<f64>, p| {
                Some(max.map_or(p, |m| m.max(p)))
            }),
        temperatures: m
            .temperatures
            .iter()
            .map(|t| TemperatureReading {
                sensor: t.sensor.clone(),
                celsius: t.celsius,
            })
            .collect(),
        max_temperature_celsius: max_temperature,
        uptime_seconds: m.uptime_seconds,
    })
}

/// The last lines of a service's log, or of the agent's journal without `app` and `service`,
/// read from the device now (operator: logs can hold secrets; every request is audited).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/logs",
    operation_id = "device_logs",
    tag = "observability",
    params(("id" = String, Path, description = "Device id (`dev_…`)"), LogsQuery),
    responses(
        (status = 200, description = "The lines (`Cache-Control: no-store`)", body = DeviceLogs),
        (status = 400, description = "A bad or unknown query parameter"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "The device is not connected"),
        (status = 502, description = "The device could not read the log"),
        (status = 504, description = "The device did not answer in time"),
    )
)]
pub async fn device_logs(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Operator)?;
    let query = logs_query(&query)?;
    let source = LogSource::parse(query.app.as_deref(), query.service.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let lines = match query.lines {
        None => 100,
        Some(n) => logs::check_lines(n).map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    let outcome = logs::request(&shared, caller.actor(), &id, source.clone(), lines).await;
    let (app, service) = match &source {
        LogSource::Service { app, service } => (Some(app.clone()), Some(service.clone())),
        LogSource::Agent => (None, None),
    };
    match outcome {
        Ok(lines_read) => {
            let body = DeviceLogs {
                device_id: id,
                request_id: lines_read.request_id,
                app,
                service,
                lines,
                truncated: lines_read.truncated,
                text: lines_read.text,
            };
            Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)))
        }
        Err(LogsError::NoDevice) => Err(ApiError::NotFound("no device with this id".into())),
        Err(e @ LogsError::Offline(_)) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ LogsError::Timeout { .. }) => Err(ApiError::GatewayTimeout(e.to_string())),
        Err(e @ LogsError::Device { .. }) => Err(ApiError::DeviceFailed(e.to_string())),
        Err(LogsError::Store(e)) => Err(ApiError::Store(e)),
    }
}

/// Central's metrics in Prometheus text format 0.0.4 (any API token as a bearer).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((
        status = 200,
        description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8",
        body = String
    ))
)]
pub async fn metrics(caller: Caller, State(shared): St) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let text = crate::metrics::render(&shared).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_unix_ms() {
        assert_eq!(parse_since("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z").unwrap(),
            1_700_000_000_500
        );
        let err = parse_since("yesterday").unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
        assert!(parse_since("-5").is_err());
    }
}
