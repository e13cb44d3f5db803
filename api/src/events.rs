//! The event log (`/api/v1/events`) and logs read from a device on demand
//! (`/api/v1/devices/{id}/logs`).

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// How bad an event is.
    Severity {
        /// Normal operation.
        Info => "info",
        /// Worth a look (an app unhealthy, a device recovered its data partition).
        Warning => "warning",
        /// Something failed.
        Error => "error",
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// `evt_…`; ids of one millisecond sort in the order central recorded them.
    pub id: String,
    /// When it happened, in Unix milliseconds.
    pub at_ms: i64,
    /// The same time to the second.
    pub at: Timestamp,
    /// The device it is about; `null`: fleet-wide (e.g. a rollout halt).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub device_id: Option<String>,
    /// What happened: `device.enrolled`, `app.state`, `os.phase`, …
    pub kind: String,
    /// How bad.
    pub severity: Severity,
    /// For people.
    pub message: String,
}

/// Query of `GET /api/v1/events`; other parameters are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct EventsQuery {
    /// Only this device's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only this kind (e.g. `app.state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only events at or after this time: RFC 3339 or Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How many of the newest matching events (1 to 1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Answer to `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    /// The newest matching events, oldest first.
    pub events: Vec<Event>,
}

/// Query of `GET /api/v1/devices/{id}/logs`: `app` and `service` for a service's log, neither
/// for the agent's journal; other parameters are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct LogsQuery {
    /// The app whose service log to read (with `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The service of that app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How many of the last lines (1 to 10000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
}

/// Answer to `GET /api/v1/devices/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceLogs {
    /// The device.
    pub device_id: String,
    /// The log request's id (also in the audit log).
    pub request_id: String,
    /// The app, or `null` for the agent's journal.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub app: Option<String>,
    /// The service, or `null` for the agent's journal.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub service: Option<String>,
    /// Lines asked for.
    pub lines: u32,
    /// Older lines were cut to fit the reply size limit.
    pub truncated: bool,
    /// The lines, oldest first.
    pub text: String,
}
