//! Registry records as the REST API shows them (timestamps as RFC 3339).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Declares a string enum stored as TEXT and sent as a lower-case JSON string.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $field:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            /// Parse a stored value.
            pub fn parse(value: &str) -> Result<Self, StoreError> {
                match value {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::Corrupt { field: $field, value: other.to_owned() }),
                }
            }
        }

        impl crate::store::db::FromValue for $name {
            fn from_value(value: &crate::store::db::Value, index: usize) -> crate::store::db::Result<Self> {
                let text = String::from_value(value, index)?;
                Self::parse(&text).map_err(|e| crate::store::db::Error::conversion(index, e))
            }
        }

        impl crate::store::db::ToValue for $name {
            fn to_value(&self) -> crate::store::db::Value {
                crate::store::db::Value::Text(self.as_str().to_owned())
            }
        }
    };
}

text_enum!(
    /// How bad an event is (ordered: info < warning < error).
    #[derive(PartialOrd, Ord, Hash)]
    Severity, "events.severity" {
        /// Normal operation.
        Info => "info",
        /// Worth a look (an app unhealthy, a device recovered its data partition).
        Warning => "warning",
        /// Something failed.
        Error => "error",
    }
);

text_enum!(
    /// Where a log request stands.
    LogRequestState, "log_requests.state" {
        /// Waiting for the replica that holds the device's stream.
        Pending => "pending",
        /// Pushed to the device; waiting for its reply.
        Sent => "sent",
        /// The reply is in `reply`.
        Done => "done",
        /// The device could not read the log, or no answer came in time (`error` says which).
        Failed => "failed",
    }
);

text_enum!(
    /// How an enrollment token admits devices.
    Policy, "enrollment_tokens.policy" {
        /// Any device holding the token is approved at once.
        Auto => "auto",
        /// Only devices pre-registered by serial or TPM EK hash.
        Claim => "claim",
        /// Devices wait, pending, until an operator approves them.
        Manual => "manual",
    }
);

text_enum!(
    /// Where a device stands in the registry.
    DeviceStatus, "devices.status" {
        /// Waiting for an operator.
        Pending => "pending",
        /// Holds a certificate and may call central.
        Active => "active",
        /// Refused on every call.
        Revoked => "revoked",
    }
);

text_enum!(
    /// An operator's API role; each includes the rights of the ones below it.
    Role, "api_tokens.role" {
        /// Everything, including API tokens and the audit log.
        Admin => "admin",
        /// Tokens, devices, claims.
        Operator => "operator",
        /// Read only.
        Viewer => "viewer",
    }
);

text_enum!(
    /// What a claim matches on.
    ClaimKind, "claims.kind" {
        /// The device's DMI serial.
        Serial => "serial",
        /// SHA-256 of the device's TPM endorsement key.
        TpmEk => "tpm_ek",
    }
);

text_enum!(
    /// Where an OS update rollout stands.
    RolloutState, "rollouts.state" {
        /// Waves are released as the previous ones finish.
        Running => "running",
        /// An operator paused it: released devices go on, no new wave starts.
        Paused => "paused",
        /// Central stopped it: too many released devices failed.
        Halted => "halted",
        /// An operator aborted it.
        Aborted => "aborted",
        /// Every wave finished within the failure threshold.
        Completed => "completed",
        /// An operator sent the updated devices back to their previous version.
        RolledBack => "rolled_back",
    }
);

text_enum!(
    /// Where one device of a rollout stands (from the agent's OsStatus reports).
    RolloutDeviceState, "rollout_devices.state" {
        /// Its wave has not been released yet.
        Pending => "pending",
        /// The update is in its desired state; no report yet.
        Released => "released",
        /// The agent is fetching the bundle.
        Downloading => "downloading",
        /// `rauc install` into the other slot.
        Installing => "installing",
        /// Rebooting into the new slot.
        Rebooting => "rebooting",
        /// Booted the new slot on trial, waiting for the health gate.
        Verifying => "verifying",
        /// Runs the target version, committed.
        Succeeded => "succeeded",
        /// The update failed (the device runs its previous slot).
        Failed => "failed",
        /// The device refused the update.
        Refused => "refused",
    }
);

impl RolloutState {
    /// Whether the rollout holds its devices (a device is in at most one such rollout).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Halted)
    }
}

impl RolloutDeviceState {
    /// Every state, in order.
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Released,
        Self::Downloading,
        Self::Installing,
        Self::Rebooting,
        Self::Verifying,
        Self::Succeeded,
        Self::Failed,
        Self::Refused,
    ];

    /// Succeeded, failed or refused: nothing more will happen to the device in this rollout.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Refused)
    }

    /// Failed or refused.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Refused)
    }
}

impl Role {
    /// Rank for "at least this role" checks.
    pub fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Operator => 1,
            Role::Admin => 2,
        }
    }
}

/// Serialises Unix seconds as RFC 3339.
pub mod rfc3339 {
    use serde::Serializer;

    /// Format Unix seconds as RFC 3339 (UTC).
    pub fn format(at: i64) -> String {
        time::OffsetDateTime::from_unix_timestamp(at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| at.to_string())
    }

    /// serde `serialize_with` for `i64`.
    pub fn serialize<S: Serializer>(at: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*at))
    }

    /// serde `serialize_with` for `Option<i64>`.
    pub mod option {
        use serde::Serializer;

        /// Serialise `None` as null.
        pub fn serialize<S: Serializer>(at: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_str(&super::format(*at)),
                None => s.serialize_none(),
            }
        }
    }
}

/// An enrollment token (the secret itself is never stored).
#[derive(Debug, Clone, Serialize)]
pub struct EnrollmentToken {
    /// `tok_…`
    pub id: String,
    /// Operator's label.
    pub name: String,
    /// Admission policy.
    pub policy: Policy,
    /// Creation time.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created_at: i64,
    /// After this the token is refused.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub expires_at: i64,
    /// Admissions allowed; `None` = unlimited.
    pub max_uses: Option<u32>,
    /// Admissions so far.
    pub uses: u32,
    /// Revoked by an operator.
    pub revoked: bool,
}

/// A device in the registry.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// `dev_…`, also in the device certificate.
    pub id: String,
    /// Pending, active or revoked.
    pub status: DeviceStatus,
    /// DMI serial reported at enrollment.
    pub serial: String,
    /// TPM EK hash reported at enrollment ("" without TPM).
    pub tpm_ek_sha256: String,
    /// Host name reported by the agent.
    pub hostname: String,
    /// "tpm" or "software".
    pub key_storage: String,
    /// Agent version last reported.
    pub agent_version: String,
    /// OS version last reported.
    pub os_version: String,
    /// The enrollment token it used.
    pub token_id: String,
    /// First enrollment.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created_at: i64,
    /// When it became active.
    #[serde(serialize_with = "rfc3339::option::serialize")]
    pub approved_at: Option<i64>,
    /// Last heartbeat: live when the stream is on the answering central, else as written
    /// (when the stream opened, every 5 minutes while open, and when it ended).
    #[serde(serialize_with = "rfc3339::option::serialize")]
    pub last_seen_at: Option<i64>,
    /// Whether a sync stream is open to this central now.
    pub online: bool,
    /// Serial (hex) of the latest certificate issued.
    pub cert_serial: Option<String>,
    /// Expiry of the latest certificate issued.
    #[serde(serialize_with = "rfc3339::option::serialize")]
    pub cert_expires_at: Option<i64>,
    /// Revision of its desired state.
    pub desired_revision: u64,
    /// Operator-set configuration pushed to the device.
    pub config: BTreeMap<String, String>,
    /// The OS update a rollout set for it (sent as `DesiredState.os`); `None`: keep what runs.
    pub desired_os: Option<DesiredOs>,
    /// The site it belongs to (see `/api/v1/sites`), if assigned.
    pub site: Option<String>,
    /// Operator-set labels (e.g. `gpu=yes`) deployments select devices by.
    pub labels: BTreeMap<String, String>,
}

/// The OS a rollout wants a device to run: `DesiredState.os` as stored in `devices.desired_os`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredOs {
    /// Manifest version of the bundle.
    pub version: String,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: String,
    /// Its size in bytes.
    pub bundle_size: u64,
    /// Install even when older than what runs (admin-forced or a rollback).
    pub allow_downgrade: bool,
    /// The rollout that set it.
    pub rollout_id: String,
    /// Seconds the new slot has to pass the health gate after boot.
    pub health_deadline_seconds: u32,
}

/// A pre-registration that lets one device in under a `claim` token.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    /// `clm_…`
    pub id: String,
    /// Serial or TPM EK hash.
    pub kind: ClaimKind,
    /// The serial or the hash.
    pub value: String,
    /// Creation time.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created_at: i64,
    /// The device that used it, once used.
    pub device_id: Option<String>,
}

/// An operator API token (the secret itself is never stored).
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    /// `api_…`
    pub id: String,
    /// Operator's label, shown as the actor in the audit log.
    pub name: String,
    /// Rights.
    pub role: Role,
    /// Creation time.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub created_at: i64,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// One audit record: who changed what.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Sequence number.
    pub id: i64,
    /// When.
    #[serde(serialize_with = "rfc3339::serialize")]
    pub at: i64,
    /// `api:<token name>` or `device:<id>`.
    pub actor: String,
    /// Dotted verb, e.g. `device.revoke`.
    pub action: String,
    /// The object acted on.
    pub target: String,
    /// Free text (never secrets).
    pub detail: String,
}
