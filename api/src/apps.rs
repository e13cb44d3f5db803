//! Apps on one device (`/api/v1/devices/{id}/apps...`): what central wants there and what the
//! device last reported about it.

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// Observed state of an app's service, as the device reported it.
    ServiceState {
        /// Image being pulled, container being created, or waiting for its `depends_on`
        /// dependencies (the message says which).
        Pending => "pending",
        /// Running (and healthy, or without a health check).
        Running => "running",
        /// Running, but its health check fails.
        Unhealthy => "unhealthy",
        /// Exited; restarts after the back-off.
        Restarting => "restarting",
        /// Exited; the restart policy keeps it down.
        Exited => "exited",
        /// Cannot be started; see the message.
        Failed => "failed",
        /// The device sent a state central does not know.
        Unknown => "unknown",
    }
}

api_enum! {
    /// Result of a service's health check.
    ServiceHealth {
        /// The service has no health check.
        None => "none",
        /// Within its start period.
        Starting => "starting",
        /// The check passes.
        Healthy => "healthy",
        /// The check fails.
        Unhealthy => "unhealthy",
    }
}

/// An app central wants on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredApp {
    /// App name (lower-case letters, digits, `-`, `.`).
    pub name: String,
    /// The Compose file.
    pub compose_yaml: String,
    /// Device revision that set this Compose file.
    pub generation: u64,
    /// When it was set.
    pub updated_at: Timestamp,
    /// The deployment that placed it here; `null`: deployed on this device by an operator.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub deployment: Option<String>,
    /// The secrets central holds for it on this device, with the version the device gets
    /// (never the value).
    #[serde(default)]
    pub secrets: Vec<crate::AppSecretVersion>,
    /// The variables its Compose file is interpolated with on this device: central's
    /// built-ins and the operator's fleet, deployment and site variables, merged.
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
}

/// What a device reported about one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppStatus {
    /// Generation of the app the report reflects.
    pub generation: u64,
    /// Whether that is the generation central wants.
    pub in_sync: bool,
    /// Revision of the desired state the report reflects.
    pub desired_revision: u64,
    /// Why the app cannot run at all; empty when it runs.
    pub error: String,
    /// Each service.
    pub services: Vec<ServiceStatus>,
}

/// What a device reported about one service of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Its state.
    pub state: ServiceState,
    /// Its health check.
    pub health: ServiceHealth,
    /// Restarts so far.
    pub restarts: u32,
    /// Why it is pending or failed, or the last health-check error.
    pub message: String,
}

/// A desired app with what the device last reported about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppWithStatus {
    /// The app as central wants it.
    #[serde(flatten)]
    pub app: DesiredApp,
    /// The device's latest report about it; `null` before one reached this central.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub status: Option<AppStatus>,
}

/// Answer to `GET /api/v1/devices/{id}/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppList {
    /// The device.
    pub device_id: String,
    /// Revision of its desired state.
    pub desired_revision: u64,
    /// Whether it is connected to this central now.
    pub online: bool,
    /// Time of its latest app report; `null`: none since this central started.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reported_at: Option<Timestamp>,
    /// Desired revision that report reflects.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reported_revision: Option<u64>,
    /// Its apps, by name.
    pub apps: Vec<AppWithStatus>,
}

/// Body of `PUT /api/v1/devices/{id}/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutApp {
    /// The Compose file (at most 64 KiB; the Compose subset cairn-runtime reads).
    pub compose_yaml: String,
}

/// Answer to `PUT /api/v1/devices/{id}/apps/{name}` (201 new, 200 replaced or unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppDeployed {
    /// The app as stored.
    pub app: DesiredApp,
    /// The device's desired revision now.
    pub desired_revision: u64,
    /// False when the same file was already deployed (nothing was sent to the device).
    pub changed: bool,
}

/// Answer to `DELETE /api/v1/devices/{id}/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppRemoved {
    /// The app removed.
    pub removed: String,
    /// The device's desired revision now.
    pub desired_revision: u64,
}
