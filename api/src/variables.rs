//! Variables for Compose files (`/api/v1/variables`): values an operator sets for the whole
//! fleet, a site or a deployment, which central merges with its built-ins (`CAIRN_DEVICE_ID`,
//! `CAIRN_SITE`, ...) into each app's variables on each device; the agent interpolates the
//! app's Compose file with them. Values are not secret (use secrets for those).

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// Where a variable applies. On a device, a site's value beats a deployment's, which beats
    /// the fleet's.
    VariableScope {
        /// Every app on every device.
        Fleet => "fleet",
        /// Every app on the devices at one site.
        Site => "site",
        /// One deployment's app, on every device it places it.
        Deployment => "deployment",
    }
}

/// Body of `PUT /api/v1/variables`: create or replace one variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetVariable {
    /// `fleet`, `site` or `deployment`.
    pub scope: VariableScope,
    /// The site or deployment name; empty (or absent) for `fleet`.
    #[serde(default)]
    pub scope_name: String,
    /// Variable name: a letter or `_`, then up to 63 letters, digits or `_`; not `CAIRN_...`
    /// (central's built-ins).
    pub name: String,
    /// The value, at most 4096 bytes.
    pub value: String,
}

/// Query of `GET /api/v1/variables` (each absent = any) and of `DELETE /api/v1/variables`
/// (`scope` and `name` required, `scope_name` for a site or deployment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct VariableQuery {
    /// `fleet`, `site` or `deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The site or deployment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_name: Option<String>,
    /// The variable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A variable as central holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariableInfo {
    /// Where it applies.
    pub scope: VariableScope,
    /// The site or deployment name; empty for `fleet`.
    pub scope_name: String,
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Who set it last.
    pub updated_by: String,
    /// When.
    pub updated_at: Timestamp,
}

/// Answer to `GET /api/v1/variables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariableList {
    /// By scope, scope name and name.
    pub variables: Vec<VariableInfo>,
}

/// Answer to setting or removing a variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariableReply {
    /// The variable as set (on removal: as it was).
    pub variable: VariableInfo,
    /// How many devices got a new desired state because an app's variables changed there.
    pub devices_updated: u64,
}
