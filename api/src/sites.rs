//! Sites (`/api/v1/sites...`): where devices are installed; and regions (`/api/v1/regions...`):
//! named areas deployments place by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A place on the earth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Point {
    /// Degrees north (-90 to 90).
    pub latitude: f64,
    /// Degrees east (-180 to 180).
    pub longitude: f64,
}

/// A site: a place devices are installed at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Site {
    /// Unique name (lower-case letters, digits, `-`).
    pub name: String,
    /// Labels deployments select sites by (`country=ch`, `tier=edge`).
    pub labels: BTreeMap<String, String>,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl Site {
    /// Its location.
    pub fn location(&self) -> Point {
        Point {
            latitude: self.latitude,
            longitude: self.longitude,
        }
    }
}

/// A site with the number of devices at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteWithCount {
    /// The site.
    #[serde(flatten)]
    pub site: Site,
    /// Devices at it.
    pub device_count: u64,
}

/// Answer to `GET /api/v1/sites`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteList {
    /// Every site, by name.
    pub sites: Vec<SiteWithCount>,
}

/// Body of `POST /api/v1/sites`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSite {
    /// Unique name: lower-case letters, digits and `-`.
    pub name: String,
    /// Labels deployments select sites by.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// Devices put at the new site in the same call (at most 1000; an unknown one creates
    /// nothing).
    #[serde(default)]
    pub devices: Vec<String>,
}

/// Body of `PUT /api/v1/sites/{name}`: replaces labels and location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateSite {
    /// Labels deployments select sites by.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
}

/// Answer to `POST /api/v1/sites` (201) and `GET /api/v1/sites/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteWithDevices {
    /// The site.
    pub site: Site,
    /// Ids of its devices (on creation: the devices put there by the call).
    pub devices: Vec<String>,
}

/// Answer to `PUT /api/v1/sites/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteReply {
    /// The site after the change.
    pub site: Site,
}

/// A named area: a polygon of points in order around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Region {
    /// Unique name.
    pub name: String,
    /// Corners in order.
    pub points: Vec<Point>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// Body of `POST /api/v1/regions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRegion {
    /// Unique name: lower-case letters, digits and `-`.
    pub name: String,
    /// 3 to 1000 corners in order around the region, not crossing the antimeridian.
    pub points: Vec<Point>,
}

/// Answer to `POST /api/v1/regions` (201) and `GET /api/v1/regions/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionReply {
    /// The region.
    pub region: Region,
}

/// Answer to `GET /api/v1/regions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionList {
    /// Every region, by name.
    pub regions: Vec<Region>,
}
