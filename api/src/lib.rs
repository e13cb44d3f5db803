//! The operator REST API of cairn-central as Rust types: every request body, query and answer
//! of `/api/v1/...`, `/healthz` and the error body. Central's handlers return these types,
//! cairnctl and the tests read them, and central generates its OpenAPI document from them
//! (feature `openapi`, which central enables; cairnctl does not build it).
//!
//! Compatibility rules, so an older cairnctl keeps working with a newer central:
//! - answers ignore fields they do not know (no type here denies unknown fields; central
//!   refuses unknown fields in the request bodies it reads on its own);
//! - string enums (declared with `api_enum!`) keep a value they do not know as `Other(String)`;
//! - times are [`Timestamp`]s: RFC 3339 on the wire, as central always sent them.
//!
//! Module map, one per part of the API:
//! - [`enrollment`]: enrollment tokens and claims;
//! - [`access`]: API tokens, roles, the audit log;
//! - [`devices`]: devices, their host metrics, recovery keys;
//! - [`apps`]: apps on a device and their reported status;
//! - [`bundles`]: OS update bundles;
//! - [`rollouts`]: OS update rollouts, plans and per-device progress;
//! - [`secrets`]: app secrets (values in, never out);
//! - [`sites`]: sites and regions;
//! - [`variables`]: variables for Compose files (fleet, site, deployment);
//! - [`deployments`]: deployments, placements and placement plans;
//! - [`events`]: the event log and logs read from devices;
//! - [`error`]: the error body.
//!
//! Architecture invariant: this crate knows the wire only; it holds no central logic and talks
//! to nothing.

use serde::{Deserialize, Serialize};

pub mod access;
pub mod apps;
pub mod attestation;
pub mod bundles;
pub mod deployments;
pub mod devices;
pub mod enrollment;
pub mod error;
pub mod events;
pub mod rollouts;
pub mod secrets;
pub mod sites;
mod timestamp;
pub mod variables;
mod wire_enum;

pub use access::*;
pub use apps::*;
pub use attestation::*;
pub use bundles::*;
pub use deployments::*;
pub use devices::*;
pub use enrollment::*;
pub use error::*;
pub use events::*;
pub use rollouts::*;
pub use secrets::*;
pub use sites::*;
pub use timestamp::Timestamp;
pub use variables::*;

/// Answer to `GET /healthz` (no token needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` while central serves.
    pub status: String,
}

/// Answer to the calls that remove an object by name (a bundle, a site, a region).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Removed {
    /// The name (or SHA-256) of what was removed.
    pub removed: String,
}
