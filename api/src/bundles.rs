//! OS update bundles (`/api/v1/bundles...`): signed RAUC bundles central holds, by SHA-256.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One stored update bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bundle {
    /// Lower-case hex SHA-256 of the file: its id and its download ETag.
    pub sha256: String,
    /// RAUC manifest `version`.
    pub version: String,
    /// RAUC manifest `compatible`.
    pub compatible: String,
    /// File size in bytes.
    pub size: u64,
    /// When it was first uploaded.
    pub uploaded_at: Timestamp,
    /// Audit actor of the first upload.
    pub uploaded_by: String,
}

/// Answer to `POST /api/v1/bundles` (201 new, 200 when the same bytes were stored already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleUploaded {
    /// The bundle as stored.
    pub bundle: Bundle,
    /// False when the same bytes were already stored.
    pub created: bool,
}

/// Answer to `GET /api/v1/bundles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleList {
    /// Every bundle, newest upload first.
    pub bundles: Vec<Bundle>,
}

/// Answer to `GET /api/v1/bundles/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BundleReply {
    /// The bundle.
    pub bundle: Bundle,
}
