//! Operators' API tokens and roles (`/api/v1/api-tokens`) and the audit log (`/api/v1/audit`).

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// An API token's role; each includes the rights of the ones below it.
    Role {
        /// Everything, including API tokens, recovery keys and the audit log.
        Admin => "admin",
        /// Day-to-day fleet operations: tokens, devices, claims, apps, rollouts.
        Operator => "operator",
        /// Read only.
        Viewer => "viewer",
    }
}

impl Role {
    /// Whether a token with this role may do what `other` may (admin > operator > viewer). A
    /// role this version does not know includes nothing and is included by nothing.
    pub fn includes(&self, other: &Role) -> bool {
        match (self.rank(), other.rank()) {
            (Some(mine), Some(needed)) => mine >= needed,
            _ => false,
        }
    }

    fn rank(&self) -> Option<u8> {
        match self {
            Role::Viewer => Some(0),
            Role::Operator => Some(1),
            Role::Admin => Some(2),
            Role::Other(_) => None,
        }
    }
}

/// An operator API token (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    /// `api_…`
    pub id: String,
    /// Operator's label, shown as the actor (`api:<name>`) in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
    /// Revoked tokens are refused.
    pub revoked: bool,
    /// When it stops working; `null`: when it is revoked.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub expires_at: Option<Timestamp>,
    /// When it last authenticated a request, to the minute; `null`: never.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_used_at: Option<Timestamp>,
}

/// Body of `POST /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiToken {
    /// Name of the new token: 1 to 64 printable characters.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lifetime in seconds (1 s to 10 years); absent: until it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

/// Answer to `POST /api/v1/api-tokens/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenReply {
    /// The token as it is now.
    pub api_token: ApiToken,
}

/// Answer to `POST /api/v1/api-tokens` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiToken {
    /// The new token.
    pub api_token: ApiToken,
    /// Its secret, `cat_…`: shown only this once.
    pub secret: String,
}

/// Answer to `GET /api/v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenList {
    /// Every API token.
    pub api_tokens: Vec<ApiToken>,
}

/// One audit record: who changed what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: Timestamp,
    /// `api:<token name>` or `device:<id>`.
    pub actor: String,
    /// Dotted verb, e.g. `device.revoke`.
    pub action: String,
    /// The object acted on, e.g. a device id.
    pub target: String,
    /// Free text (never secrets).
    pub detail: String,
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct AuditQuery {
    /// How many of the newest records (default 100, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Answer to `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditLog {
    /// The newest records, newest first.
    pub events: Vec<AuditEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below_them() {
        assert!(Role::Admin.includes(&Role::Viewer));
        assert!(Role::Operator.includes(&Role::Operator));
        assert!(!Role::Viewer.includes(&Role::Operator));
        assert!(!Role::Other("root".into()).includes(&Role::Viewer));
        assert!(!Role::Admin.includes(&Role::Other("root".into())));
    }
}
