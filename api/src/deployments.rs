//! Deployments (`/api/v1/deployments...`): an app plus a placement, which central's scheduler
//! turns into apps on devices of the selected sites.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::apps::AppStatus;
use crate::Timestamp;

/// Where a deployment runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Placement {
    /// Which sites (every condition given must hold; none: every site).
    #[serde(default)]
    pub sites: SiteSelector,
    /// Devices of each selected site that run it (1 to 1000).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(default = 1))]
    pub hosts_per_site: u32,
    /// Which devices of a site may run it.
    #[serde(default)]
    pub devices: DeviceSelector,
    /// Deployments (app names) it never shares a device with, either way round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Default for Placement {
    /// Every site, one host each.
    fn default() -> Self {
        Self {
            sites: SiteSelector::default(),
            hosts_per_site: one(),
            devices: DeviceSelector::default(),
            avoid: Vec::new(),
        }
    }
}

/// Selects sites; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteSelector {
    /// Site labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Only these sites, by name (1 to 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Only sites inside this region (see `/api/v1/regions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only sites within `km` of a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Within>,
}

/// A circle on the earth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Within {
    /// Centre, degrees north.
    pub latitude: f64,
    /// Centre, degrees east.
    pub longitude: f64,
    /// Great-circle distance from the centre, km.
    pub km: f64,
}

/// Selects devices within a site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSelector {
    /// Device labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Body of `POST /api/v1/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeployment {
    /// Its name, also the app name on the devices.
    pub name: String,
    /// The Compose file (checked as per-device apps are).
    pub compose_yaml: String,
    /// Where it runs (default: every site, one host each).
    #[serde(default)]
    pub placement: Placement,
    /// Only plan: answer 200 with the placement; nothing is stored or sent.
    #[serde(default)]
    pub dry_run: bool,
}

/// Body of `PUT /api/v1/deployments/{name}`: replaces the app and the placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateDeployment {
    /// The Compose file.
    pub compose_yaml: String,
    /// Where it runs (default: every site, one host each).
    #[serde(default)]
    pub placement: Placement,
    /// Only plan: answer with the placement; nothing is stored or sent.
    #[serde(default)]
    pub dry_run: bool,
}

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// Its name, also the app name on the devices.
    pub name: String,
    /// The Compose file.
    pub compose_yaml: String,
    /// Where it runs.
    pub placement: Placement,
    /// Who created it (audit actor).
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// A deployment as listed: without its Compose file, with its host count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSummary {
    /// Its name.
    pub name: String,
    /// Where it runs.
    pub placement: Placement,
    /// Devices it is placed on now.
    pub hosts: u64,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Answer to `GET /api/v1/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentList {
    /// Every deployment, by name.
    pub deployments: Vec<DeploymentSummary>,
}

/// A deployment with where it runs: per selected site its hosts and the state they reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    /// The deployment as stored.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Per selected site (what the scheduler wants now).
    pub sites: Vec<SiteHosts>,
    /// Hosts outside the selected sites (the next scheduler pass removes them).
    pub hosts_elsewhere: Vec<PlacedHost>,
}

/// One selected site of a deployment and its hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteHosts {
    /// The site.
    pub site: String,
    /// Hosts wanted (`hosts_per_site`).
    pub wanted: u32,
    /// Devices of the site the deployment is placed on.
    pub hosts: Vec<PlacedHost>,
    /// Why fewer than `wanted` devices can run it; `null` when enough can.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub shortfall: Option<String>,
}

/// A device a deployment is placed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacedHost {
    /// The device.
    pub device_id: String,
    /// Whether it is connected to the answering central now.
    pub online: bool,
    /// Generation of the app there.
    pub generation: u64,
    /// What it last reported about the app; `null` before a report reached this central.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub status: Option<AppStatus>,
}

/// Answer holding one deployment (show, create 201, update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentReply {
    /// The deployment.
    pub deployment: DeploymentView,
}

/// Where the scheduler places a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentPlan {
    /// The deployment.
    pub deployment: String,
    /// Per selected site, by site name.
    pub sites: Vec<SitePlan>,
}

impl DeploymentPlan {
    /// Every device it runs on.
    pub fn hosts(&self) -> BTreeSet<&str> {
        self.sites
            .iter()
            .flat_map(|s| s.hosts.iter().map(String::as_str))
            .collect()
    }
}

/// The placement of a deployment at one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SitePlan {
    /// The site.
    pub site: String,
    /// Hosts wanted (`hosts_per_site`).
    pub wanted: u32,
    /// Devices that run it, by id.
    pub hosts: Vec<String>,
    /// Why fewer than `wanted` devices run it; absent when enough do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<String>,
}

/// Answer to a create or update with `dry_run` (200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentDryRun {
    /// Always true.
    pub dry_run: bool,
    /// Where it would run.
    pub placement: DeploymentPlan,
}

/// Answer to `POST /api/v1/deployments` and `PUT /api/v1/deployments/{name}`: the plan of a
/// dry run, or the deployment saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum DeploymentChanged {
    /// `dry_run` was set.
    DryRun(DeploymentDryRun),
    /// Saved and placed.
    Saved(Box<DeploymentReply>),
}

/// Answer to `DELETE /api/v1/deployments/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentRemoved {
    /// The deployment removed.
    pub removed: String,
    /// Devices its app leaves.
    pub removed_from: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_placement_is_every_site_one_host() {
        let placement: Placement = serde_json::from_str("{}").unwrap();
        assert_eq!(placement, Placement::default());
        assert_eq!(
            serde_json::to_value(&placement).unwrap(),
            serde_json::json!({"sites": {}, "hosts_per_site": 1, "devices": {}})
        );
    }
}
