//! Request and response bodies of cairn-central's operator REST API (`/api/v1`).
//!
//! One model serves both output modes: tables are rendered from these types, and `--json` prints
//! the body they were read from. Response types ignore fields they do not know, so a newer central
//! keeps working with an older cairnctl; enums read an unknown value as `Other` instead of failing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a string enum of the API: known values, plus `Other(String)` for values a newer
/// central may send.
macro_rules! api_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version of cairnctl does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => Self::$variant, )+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::from(text.as_str()))
            }
        }
    };
}

api_enum! {
    /// How central treats a device that enrolls with an enrollment token.
    EnrollmentPolicy {
        /// Approve the device at once.
        Auto => "auto",
        /// Approve only devices pre-registered by serial or TPM EK hash (see claims).
        Claim => "claim",
        /// Keep the device pending until an operator approves it.
        Manual => "manual",
    }
}

api_enum! {
    /// Lifecycle state of a device.
    DeviceStatus {
        /// Enrolled, waiting for an operator's approval.
        Pending => "pending",
        /// Approved; holds a device certificate.
        Active => "active",
        /// Revoked; central refuses it.
        Revoked => "revoked",
    }
}

api_enum! {
    /// Where a device keeps its private key.
    KeyStorage {
        /// In the TPM.
        Tpm => "tpm",
        /// In software, on the encrypted data partition.
        Software => "software",
    }
}

api_enum! {
    /// What a claim matches a device by.
    ClaimKind {
        /// The hardware serial number.
        Serial => "serial",
        /// The SHA-256 of the TPM endorsement key.
        TpmEk => "tpm_ek",
    }
}

api_enum! {
    /// Role of an API token, from most to least powerful.
    ApiRole {
        /// Everything, including API tokens and recovery keys.
        Admin => "admin",
        /// Day-to-day fleet operations.
        Operator => "operator",
        /// Read-only access.
        Viewer => "viewer",
    }
}

/// An enrollment token: what a fleet image carries so its devices can enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Token id, `tok_...`.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// How enrolling devices are approved.
    pub policy: EnrollmentPolicy,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry time; `None` if the token never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Maximum number of enrollments; `None` for unlimited.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Enrollments made with the token so far.
    #[serde(default)]
    pub uses: u32,
    /// Whether the token was revoked.
    #[serde(default)]
    pub revoked: bool,
}

/// Body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateEnrollmentToken {
    /// Name of the new token.
    pub name: String,
    /// How enrolling devices are approved.
    pub policy: EnrollmentPolicy,
    /// Lifetime in seconds; central's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// Maximum number of enrollments; unlimited when `None` (sent as `null`).
    pub max_uses: Option<u32>,
}

/// Answer to `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedEnrollmentToken {
    /// The new token.
    pub token: EnrollmentToken,
    /// The token's secret, `cet_...`: returned only this once.
    pub secret: String,
}

/// Answer to `GET /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnrollmentTokenList {
    /// All enrollment tokens.
    pub tokens: Vec<EnrollmentToken>,
}

/// Answer to `POST /api/v1/enrollment-tokens/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnrollmentTokenReply {
    /// The token after the change.
    pub token: EnrollmentToken,
}

/// A device as central knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Device id, `dev_...`.
    pub id: String,
    /// Lifecycle state.
    pub status: DeviceStatus,
    /// Hardware serial number.
    #[serde(default)]
    pub serial: String,
    /// SHA-256 of the TPM endorsement key, hex.
    #[serde(default)]
    pub tpm_ek_sha256: String,
    /// Host name the device reported.
    #[serde(default)]
    pub hostname: String,
    /// Where the device key lives.
    pub key_storage: KeyStorage,
    /// Version of cairn-agent on the device.
    #[serde(default)]
    pub agent_version: String,
    /// OS version running on the device.
    #[serde(default)]
    pub os_version: String,
    /// Enrollment token the device enrolled with.
    #[serde(default)]
    pub token_id: String,
    /// RFC 3339 enrollment time.
    pub created_at: String,
    /// RFC 3339 approval time, if approved.
    #[serde(default)]
    pub approved_at: Option<String>,
    /// RFC 3339 time central last heard from the device.
    #[serde(default)]
    pub last_seen_at: Option<String>,
    /// Whether the device holds a live connection to central.
    #[serde(default)]
    pub online: bool,
    /// Serial number of the device certificate, if issued.
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// RFC 3339 expiry of the device certificate, if issued.
    #[serde(default)]
    pub cert_expires_at: Option<String>,
    /// Revision of the desired state central holds for the device.
    #[serde(default)]
    pub desired_revision: u64,
    /// The site it belongs to, if assigned.
    #[serde(default)]
    pub site: Option<String>,
    /// Operator-set labels deployments select devices by.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Answer to `GET /api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceList {
    /// All devices.
    pub devices: Vec<Device>,
}

/// Answer to `GET /api/v1/devices/{id}` and the device approve and revoke calls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceReply {
    /// The device (after the change, for approve and revoke).
    pub device: Device,
}

/// Answer to `GET /api/v1/devices/{id}/recovery-key`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecoveryKeyReply {
    /// The device.
    pub device_id: String,
    /// LUKS2 UUID of the data partition the key opens.
    pub luks_uuid: String,
    /// The recovery key, `dddddd-dddddd-...` (8 groups).
    pub recovery_key: String,
    /// When central stored it (Unix seconds).
    pub stored_at: i64,
}

/// Body of `POST /api/v1/claims`: pre-registers a device for `claim` enrollment tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CreateClaim {
    /// Match by hardware serial number.
    #[serde(rename = "serial")]
    Serial(String),
    /// Match by SHA-256 of the TPM endorsement key (64 lowercase hex characters).
    #[serde(rename = "tpm_ek_sha256")]
    TpmEkSha256(String),
}

/// A claim: a device pre-registered by serial or TPM EK hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Claim id.
    pub id: String,
    /// What the claim matches by.
    pub kind: ClaimKind,
    /// The serial or EK hash.
    pub value: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The device that enrolled under this claim, once one has.
    #[serde(default)]
    pub device_id: Option<String>,
}

/// Answer to `POST /api/v1/claims`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClaimReply {
    /// The new claim.
    pub claim: Claim,
}

/// Answer to `GET /api/v1/claims`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClaimList {
    /// All claims.
    pub claims: Vec<Claim>,
}

/// An API token for people and tools using the REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Token id.
    pub id: String,
    /// Operator-chosen name.
    pub name: String,
    /// What the token may do.
    pub role: ApiRole,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Whether the token was revoked.
    #[serde(default)]
    pub revoked: bool,
}

/// Body of `POST /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateApiToken {
    /// Name of the new token.
    pub name: String,
    /// What the token may do.
    pub role: ApiRole,
}

/// Answer to `POST /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedApiToken {
    /// The new token.
    pub api_token: ApiToken,
    /// The token's secret, `cat_...`: returned only this once.
    pub secret: String,
}

/// Answer to `GET /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiTokenList {
    /// All API tokens.
    pub api_tokens: Vec<ApiToken>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Sequence number.
    pub id: i64,
    /// RFC 3339 time of the change.
    pub at: String,
    /// Who made the change (API token name or id, or a system component).
    #[serde(default)]
    pub actor: Option<String>,
    /// What was done, e.g. `device.approve`.
    pub action: String,
    /// What it was done to, e.g. a device id.
    #[serde(default)]
    pub target: Option<String>,
    /// Further detail: a string or any JSON value.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Answer to `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditLog {
    /// Events, in the order central returned them.
    pub events: Vec<AuditEvent>,
}

/// Error body central sends with every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The `error` object of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `not_found`.
    #[serde(default)]
    pub code: String,
    /// Message for people.
    pub message: String,
}

api_enum! {
    /// Observed state of an app's service, as the device reported it.
    ServiceState {
        /// Image being pulled or container being created.
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

/// Body of `PUT /api/v1/devices/{id}/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PutApp {
    /// The Compose file.
    pub compose_yaml: String,
}

/// An app as central wants it on a device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DesiredApp {
    /// App name.
    pub name: String,
    /// Device revision that set this Compose file.
    pub generation: u64,
    /// RFC 3339 time it was set.
    #[serde(default)]
    pub updated_at: String,
    /// The Compose file.
    #[serde(default)]
    pub compose_yaml: String,
    /// What the device last reported about it (`None` before a report).
    #[serde(default)]
    pub status: Option<AppStatus>,
}

/// What a device reported about one app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppStatus {
    /// Generation the report reflects.
    pub generation: u64,
    /// Whether it reflects the generation central wants.
    #[serde(default)]
    pub in_sync: bool,
    /// Why the app cannot run at all; empty when it runs.
    #[serde(default)]
    pub error: String,
    /// Each service.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
}

/// What a device reported about one service of an app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// State.
    pub state: ServiceState,
    /// `none`, `starting`, `healthy` or `unhealthy`.
    #[serde(default)]
    pub health: String,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Why it is pending or failed, or the last health-check error.
    #[serde(default)]
    pub message: String,
}

/// Answer to `GET /api/v1/devices/{id}/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppList {
    /// The device.
    pub device_id: String,
    /// Revision of its desired state.
    pub desired_revision: u64,
    /// Whether it is connected to central now.
    #[serde(default)]
    pub online: bool,
    /// RFC 3339 time of its latest report (`None`: none since central started).
    #[serde(default)]
    pub reported_at: Option<String>,
    /// Its apps.
    pub apps: Vec<DesiredApp>,
}

/// Answer to `PUT /api/v1/devices/{id}/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppDeployed {
    /// The app as stored.
    pub app: DesiredApp,
    /// The device's desired revision now.
    pub desired_revision: u64,
    /// False when the same file was already deployed (nothing was sent to the device).
    #[serde(default)]
    pub changed: bool,
}

/// Answer to `DELETE /api/v1/devices/{id}/apps/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppRemoved {
    /// The app removed.
    pub removed: String,
    /// The device's desired revision now.
    pub desired_revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tolerates_unknown_fields_and_values() {
        let body = r#"{"device":{"id":"dev_1","status":"quarantined","serial":"S1",
            "tpm_ek_sha256":"ab","hostname":"h","key_storage":"tpm","agent_version":"0.1",
            "os_version":"1","token_id":"tok_1","created_at":"2025-01-01T00:00:00Z",
            "approved_at":null,"last_seen_at":null,"online":false,"cert_serial":null,
            "cert_expires_at":null,"desired_revision":3,"site":"berlin"}}"#;
        let reply: DeviceReply = serde_json::from_str(body).unwrap();
        assert_eq!(
            reply.device.status,
            DeviceStatus::Other("quarantined".into())
        );
        assert_eq!(reply.device.key_storage, KeyStorage::Tpm);
        assert_eq!(reply.device.desired_revision, 3);
        assert_eq!(reply.device.approved_at, None);
    }

    #[test]
    fn create_enrollment_token_sends_null_max_uses_and_omits_expiry() {
        let body = CreateEnrollmentToken {
            name: "lab".into(),
            policy: EnrollmentPolicy::Claim,
            expires_in_seconds: None,
            max_uses: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"name":"lab","policy":"claim","max_uses":null})
        );
    }

    #[test]
    fn create_claim_uses_one_key() {
        assert_eq!(
            serde_json::to_value(CreateClaim::Serial("S1".into())).unwrap(),
            serde_json::json!({"serial":"S1"})
        );
        assert_eq!(
            serde_json::to_value(CreateClaim::TpmEkSha256("ab".into())).unwrap(),
            serde_json::json!({"tpm_ek_sha256":"ab"})
        );
    }

    #[test]
    fn audit_detail_may_be_any_json() {
        let body = r#"{"events":[{"id":1,"at":"t","actor":"admin","action":"device.approve",
            "target":"dev_1","detail":{"by":"x"}},{"id":2,"at":"t","actor":"a","action":"b"}]}"#;
        let log: AuditLog = serde_json::from_str(body).unwrap();
        assert_eq!(log.events[0].detail["by"], "x");
        assert!(log.events[1].detail.is_null());
        assert_eq!(log.events[1].target, None);
    }
}

/// An OS update bundle (RAUC) stored on central.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Bundle {
    /// SHA-256 of the file: the bundle's id.
    pub sha256: String,
    /// RAUC manifest version.
    pub version: String,
    /// RAUC manifest compatible.
    pub compatible: String,
    /// Size in bytes.
    pub size: u64,
    /// RFC 3339 time of the first upload.
    pub uploaded_at: String,
    /// Who uploaded it first.
    pub uploaded_by: String,
}

/// Answer to `POST /api/v1/bundles`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BundleUploaded {
    /// The bundle as stored.
    pub bundle: Bundle,
    /// False when the same bytes were already stored.
    pub created: bool,
}

/// Answer to `GET /api/v1/bundles`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BundleList {
    /// Bundles, newest first.
    pub bundles: Vec<Bundle>,
}

/// Answer to `DELETE /api/v1/bundles/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BundleRemoved {
    /// SHA-256 of the removed bundle.
    pub removed: String,
}

/// Body of `POST /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateRollout {
    /// The bundle to install.
    pub bundle_sha256: String,
    /// `{"all":true}`, `{"devices":[…]}` or `{"match":{…}}`.
    pub selector: serde_json::Value,
    /// `{"canary":N,"percent":[…],"per_site":bool}` (central's defaults for missing keys).
    pub waves: serde_json::Value,
    /// Halt threshold; central's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold_percent: Option<u32>,
    /// Health gate deadline; central's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_deadline_seconds: Option<u32>,
    /// Admin only: allow older versions.
    pub allow_downgrade: bool,
    /// Only plan.
    pub dry_run: bool,
}

/// Live download progress of a device in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutProgress {
    /// Phase the agent reported.
    pub phase: String,
    /// Bytes of the bundle in place.
    pub bytes_done: u64,
    /// Bundle size.
    pub bytes_total: u64,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutDevice {
    /// Device id.
    pub device_id: String,
    /// Its wave.
    pub wave: u32,
    /// Version it ran at the start.
    pub from_version: String,
    /// Its state in the rollout.
    pub state: String,
    /// Why it failed or refused.
    #[serde(default)]
    pub error: String,
    /// Latest reported progress, if any.
    #[serde(default)]
    pub progress: Option<RolloutProgress>,
}

/// An OS update rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Rollout {
    /// `rol_…`
    pub id: String,
    /// Bundle SHA-256.
    pub bundle_sha256: String,
    /// Target version.
    pub version: String,
    /// running, paused, halted, aborted, completed or rolled_back.
    pub state: String,
    /// Why it halted.
    #[serde(default)]
    pub halt_reason: Option<String>,
    /// Waves released.
    pub released_waves: u32,
    /// Waves planned.
    pub wave_count: u32,
    /// Creation time.
    pub created_at: String,
    /// Devices per state.
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Devices (only when showing one rollout).
    #[serde(default)]
    pub devices: Vec<RolloutDevice>,
}

/// Answer holding one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutReply {
    /// The rollout.
    pub rollout: Rollout,
}

/// Answer to `GET /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutList {
    /// Newest first.
    pub rollouts: Vec<Rollout>,
}

/// One device of a planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlannedDevice {
    /// Device id.
    pub device_id: String,
    /// Its site.
    #[serde(default)]
    pub site: Option<String>,
    /// Version it runs.
    pub from_version: String,
    /// Version it would get.
    pub to_version: String,
}

/// One planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlannedWave {
    /// Index.
    pub index: u32,
    /// e.g. "canary", "25%", "site north".
    pub label: String,
    /// Its devices.
    pub devices: Vec<PlannedDevice>,
}

/// A device a plan leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SkippedDevice {
    /// Device id.
    pub device_id: String,
    /// Version it runs.
    pub version: String,
}

/// A dry run's plan.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RolloutPlan {
    /// Target version.
    pub version: String,
    /// Devices to update.
    pub device_count: u64,
    /// Waves.
    pub waves: Vec<PlannedWave>,
    /// Skipped devices.
    pub skipped: Vec<SkippedDevice>,
}

/// Answer to `POST /api/v1/rollouts`: a plan (dry run) or the created rollout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RolloutCreated {
    /// `dry_run: true`.
    Plan {
        /// The plan.
        plan: RolloutPlan,
    },
    /// Created.
    Created {
        /// The rollout.
        rollout: Rollout,
    },
}

/// One file system of a device's host metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FilesystemUsage {
    /// Mount point.
    pub mount_point: String,
    /// Bytes in use.
    #[serde(default)]
    pub used_bytes: u64,
    /// Size.
    #[serde(default)]
    pub total_bytes: u64,
    /// Share in use, when the size is known.
    #[serde(default)]
    pub used_percent: Option<f64>,
}

/// One temperature sensor reading.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TemperatureReading {
    /// Sensor name (thermal zone or hwmon input, with its type or label).
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// The latest host metrics a device sent (the `host` object of a device).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HostMetrics {
    /// RFC 3339 time central received them.
    pub reported_at: String,
    /// Busy share of the CPUs over the last heartbeat interval.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// 1-minute load average.
    #[serde(default)]
    pub load1: f64,
    /// Memory size.
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Memory available to new work.
    #[serde(default)]
    pub memory_available_bytes: u64,
    /// Share of memory in use.
    #[serde(default)]
    pub memory_used_percent: Option<f64>,
    /// Watched file systems.
    #[serde(default)]
    pub filesystems: Vec<FilesystemUsage>,
    /// The fullest file system's share in use.
    #[serde(default)]
    pub disk_used_percent: Option<f64>,
    /// Temperature sensors.
    #[serde(default)]
    pub temperatures: Vec<TemperatureReading>,
    /// The hottest sensor.
    #[serde(default)]
    pub max_temperature_celsius: Option<f64>,
    /// Seconds since the device booted.
    #[serde(default)]
    pub uptime_seconds: u64,
}

/// A device with its host metrics (the fields `cairnctl device top` and `device show` read).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceHost {
    /// Device id.
    pub id: String,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Lifecycle state.
    pub status: DeviceStatus,
    /// Connected to central now.
    #[serde(default)]
    pub online: bool,
    /// RFC 3339 time central last heard from it.
    #[serde(default)]
    pub last_seen_at: Option<String>,
    /// Latest host metrics (none before its first report to this central).
    #[serde(default)]
    pub host: Option<HostMetrics>,
}

/// `GET /api/v1/devices` read for host metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceHostList {
    /// Every device.
    pub devices: Vec<DeviceHost>,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `evt_...`.
    pub id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// RFC 3339 (seconds).
    pub at: String,
    /// The device it is about (none: fleet-wide).
    #[serde(default)]
    pub device_id: Option<String>,
    /// What happened.
    pub kind: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
    /// For people.
    pub message: String,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventList {
    /// Events, oldest first.
    pub events: Vec<Event>,
}

/// `GET /api/v1/devices/{id}` read for host metrics and events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceObserved {
    /// The device and its host metrics.
    pub device: DeviceHost,
    /// Its newest events.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// `GET /api/v1/devices/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceLogs {
    /// The log request's id.
    pub request_id: String,
    /// Lines asked for.
    pub lines: u32,
    /// Older lines were cut to fit.
    #[serde(default)]
    pub truncated: bool,
    /// The lines, oldest first.
    pub text: String,
}
