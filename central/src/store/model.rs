//! Registry records: the API types of cairn-api (one definition for the store, the REST answers
//! and cairnctl), how their enums and times are stored, and the enums only central uses.

pub use cairn_api::{
    ApiToken, AuditEvent, Claim, ClaimKind, DesiredOs, Device, DeviceStatus, EnrollmentPolicy,
    EnrollmentToken, KeyStorage, Role, RolloutDeviceState, RolloutState, Severity, Timestamp,
};

use super::StoreError;
use crate::store::db::{Error, FromValue, ToValue, Value};

/// Reads and writes an API enum as TEXT: its wire form. A value this central does not know is a
/// corrupt row (the database was edited by hand, or written by a newer central).
macro_rules! stored_enum {
    ($($name:ident => $field:literal),+ $(,)?) => {$(
        impl FromValue for $name {
            fn from_value(value: &Value, index: usize) -> crate::store::db::Result<Self> {
                let text = String::from_value(value, index)?;
                let parsed = $name::from(text.as_str());
                if parsed.is_known() {
                    Ok(parsed)
                } else {
                    let corrupt = StoreError::Corrupt { field: $field, value: text };
                    Err(Error::conversion(index, corrupt))
                }
            }
        }

        impl ToValue for $name {
            fn to_value(&self) -> Value {
                Value::Text(self.as_str().to_owned())
            }
        }
    )+};
}

stored_enum! {
    Severity => "events.severity",
    EnrollmentPolicy => "enrollment_tokens.policy",
    DeviceStatus => "devices.status",
    Role => "api_tokens.role",
    ClaimKind => "claims.kind",
    RolloutState => "rollouts.state",
    RolloutDeviceState => "rollout_devices.state",
}

/// A reported fact, not a state central decides: any stored text reads (as `Other` when
/// unknown), as it did when it was a plain string.
impl FromValue for KeyStorage {
    fn from_value(value: &Value, index: usize) -> crate::store::db::Result<Self> {
        String::from_value(value, index).map(|text| KeyStorage::from(text.as_str()))
    }
}

impl ToValue for KeyStorage {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_owned())
    }
}

impl ToValue for Timestamp {
    fn to_value(&self) -> Value {
        Value::Int(self.unix_seconds())
    }
}

impl FromValue for Timestamp {
    fn from_value(value: &Value, index: usize) -> crate::store::db::Result<Self> {
        i64::from_value(value, index).map(Timestamp::from_unix_seconds)
    }
}

/// Where a log request stands (central-internal: the REST answer carries the log itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRequestState {
    /// Waiting for the replica that holds the device's stream.
    Pending,
    /// Pushed to the device; waiting for its reply.
    Sent,
    /// The reply is in `reply`.
    Done,
    /// The device could not read the log, or no answer came in time (`error` says which).
    Failed,
}

impl LogRequestState {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Parse a stored value.
    pub fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "pending" => Ok(Self::Pending),
            "sent" => Ok(Self::Sent),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            other => Err(StoreError::Corrupt {
                field: "log_requests.state",
                value: other.to_owned(),
            }),
        }
    }
}

impl FromValue for LogRequestState {
    fn from_value(value: &Value, index: usize) -> crate::store::db::Result<Self> {
        let text = String::from_value(value, index)?;
        Self::parse(&text).map_err(|e| Error::conversion(index, e))
    }
}

impl ToValue for LogRequestState {
    fn to_value(&self) -> Value {
        Value::Text(self.as_str().to_owned())
    }
}
