//! Sites, regions, and each device's site and labels.
//!
//! Every change is audited and followed by a scheduler pass (placement may move), so the
//! answer already reflects it. A change of a device's site or labels, or of a site's labels or
//! location, changes the built-in variables (`CAIRN_SITE`, ...) of the apps there: the devices
//! concerned get a new desired revision, pushed to them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::{
    CreateRegion, CreateSite, DeviceReply, RegionList, RegionReply, Removed, SetDeviceLabels,
    SetDeviceSite, SiteList, SiteReply, SiteWithCount, SiteWithDevices, UpdateSite,
};

use super::apps::privileges_lost;
use super::routes::load_device;
use super::variables::{built_ins_before, bump_changed_built_ins};
use super::{change_and_place, push_stored, ApiError, Caller, ValidJson};
use crate::placement::geo::{self, Point, PointGeo};
use crate::placement::spec::{validate_labels, validate_name, Labels};
use crate::placement::PlacementError;
use crate::store::{audit, deployments, sites, variables, Role};
use crate::Shared;

type St = State<Arc<Shared>>;

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        match e {
            PlacementError::Store(e) => ApiError::Store(e),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<geo::GeoError> for ApiError {
    fn from(e: geo::GeoError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// A site's location from a request body, validated.
fn location(latitude: f64, longitude: f64) -> Result<Point, ApiError> {
    let at = Point {
        latitude,
        longitude,
    };
    at.validate("site")?;
    Ok(at)
}

/// The audit detail of a site's creation or change.
fn site_detail(at: Point, labels: &Labels) -> String {
    format!(
        "latitude={} longitude={} labels={}",
        at.latitude,
        at.longitude,
        labels.len()
    )
}

fn no_site() -> ApiError {
    ApiError::NotFound("no site with this name; see GET /api/v1/sites".into())
}

/// Most devices put at a site by its creation call (a site's hosts arrive with it: one call and
/// one placement pass instead of one per device).
const MAX_SITE_DEVICES: usize = 1000;

/// Every site with its device count (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/sites",
    tag = "sites",
    responses((status = 200, description = "Every site, by name", body = SiteList))
)]
pub(super) async fn list_sites(
    caller: Caller,
    State(shared): St,
) -> Result<Json<SiteList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (list, counts) = shared
        .store
        .read(|conn| Ok((sites::list(conn)?, sites::device_counts(conn)?)))
        .await?;
    let sites = list
        .into_iter()
        .map(|site| {
            let device_count = counts.get(&site.name).copied().unwrap_or(0);
            SiteWithCount { site, device_count }
        })
        .collect();
    Ok(Json(SiteList { sites }))
}

/// Create a site (operator), optionally with the devices at it.
#[utoipa::path(
    post,
    path = "/api/v1/sites",
    tag = "sites",
    request_body = CreateSite,
    responses(
        (status = 201, description = "Created", body = SiteWithDevices),
        (status = 400, description = "A bad name, label or location, or an unknown device (nothing is created)"),
        (status = 403, description = "Needs the operator role"),
        (status = 409, description = "A site with this name exists"),
    )
)]
pub(super) async fn create_site(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateSite>,
) -> Result<(StatusCode, Json<SiteWithDevices>), ApiError> {
    caller.require(Role::Operator)?;
    validate_name("name", &body.name)?;
    validate_labels("labels", &body.labels)?;
    let at = location(body.latitude, body.longitude)?;
    if body.devices.len() > MAX_SITE_DEVICES {
        return Err(ApiError::BadRequest(format!(
            "devices lists {} devices; at most {MAX_SITE_DEVICES} per call (add more with PUT /api/v1/devices/{{id}}/site)",
            body.devices.len()
        )));
    }
    let actor = caller.actor();
    let devices = body.devices.clone();
    let (site, changed) = change_and_place(&shared, move |tx| {
        let before = built_ins_before(tx, &body.devices)?;
        let Some(site) = sites::insert(tx, &body.name, &body.labels, at)? else {
            return Ok(Err(ApiError::Conflict(format!(
                "a site named {:?} exists; change it with PUT /api/v1/sites/{}",
                body.name, body.name
            ))));
        };
        audit::record(
            tx,
            &actor,
            "site.create",
            &site.name,
            &site_detail(at, &body.labels),
        )?;
        for id in &body.devices {
            // Unknown ids roll the whole call back: no site half set up.
            if !sites::set_device_site(tx, id, Some(&site.name))? {
                return Ok(Err(ApiError::BadRequest(format!(
                    "devices: no device {id:?}; nothing was created (see GET /api/v1/devices)"
                ))));
            }
            audit::record(
                tx,
                &actor,
                "device.site",
                id,
                &format!("site={}", site.name),
            )?;
        }
        if let Some(conflict) = privileges_lost(tx, &body.devices)? {
            return Ok(Err(conflict));
        }
        Ok(bump_changed_built_ins(tx, before)?.map(|changed| (site, changed)))
    })
    .await?;
    push_stored(shared.clone(), changed.clone()).await;
    Ok((StatusCode::CREATED, Json(SiteWithDevices { site, devices })))
}

/// A site and its devices' ids (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/sites/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "Site name")),
    responses(
        (status = 200, description = "The site", body = SiteWithDevices),
        (status = 404, description = "No such site"),
    )
)]
pub(super) async fn show_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<SiteWithDevices>, ApiError> {
    caller.require(Role::Viewer)?;
    let found = shared
        .store
        .read(move |conn| {
            let Some(site) = sites::get(conn, &name)? else {
                return Ok(None);
            };
            Ok(Some((site, sites::device_ids(conn, &name)?)))
        })
        .await?;
    let (site, devices) = found.ok_or_else(no_site)?;
    Ok(Json(SiteWithDevices { site, devices }))
}

/// Replace a site's labels and location (operator).
#[utoipa::path(
    put,
    path = "/api/v1/sites/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "Site name")),
    request_body = UpdateSite,
    responses(
        (status = 200, description = "Changed", body = SiteReply),
        (status = 400, description = "A bad label or location"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such site"),
        (status = 409, description = "An operator app at the site uses a host device or capability the new labels no longer allow"),
    )
)]
pub(super) async fn update_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<UpdateSite>,
) -> Result<Json<SiteReply>, ApiError> {
    caller.require(Role::Operator)?;
    validate_labels("labels", &body.labels)?;
    let at = location(body.latitude, body.longitude)?;
    let actor = caller.actor();
    let (site, changed) = change_and_place(&shared, move |tx| {
        let before = built_ins_before(tx, &sites::device_ids(tx, &name)?)?;
        let Some(site) = sites::update(tx, &name, &body.labels, at)? else {
            return Ok(Err(ApiError::NotFound(
                "no site with this name; create it with POST /api/v1/sites".into(),
            )));
        };
        if let Some(conflict) = privileges_lost(tx, &sites::device_ids(tx, &name)?)? {
            return Ok(Err(conflict));
        }
        audit::record(
            tx,
            &actor,
            "site.update",
            &name,
            &site_detail(at, &body.labels),
        )?;
        Ok(bump_changed_built_ins(tx, before)?.map(|changed| (site, changed)))
    })
    .await?;
    push_stored(shared.clone(), changed.clone()).await;
    Ok(Json(SiteReply { site }))
}

/// Remove a site (operator): only one no device is at.
#[utoipa::path(
    delete,
    path = "/api/v1/sites/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "Site name")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such site"),
        (status = 409, description = "Devices are still at the site"),
    )
)]
pub(super) async fn delete_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let removed = name.clone();
    change_and_place(&shared, move |tx| {
        if sites::get(tx, &name)?.is_none() {
            return Ok(Err(no_site()));
        }
        let devices = sites::device_ids(tx, &name)?;
        if !devices.is_empty() {
            return Ok(Err(ApiError::Conflict(format!(
                "site {name} still has devices ({}); move them first with PUT /api/v1/devices/{{id}}/site",
                devices.join(", ")
            ))));
        }
        sites::delete(tx, &name)?;
        let scope = cairn_api::VariableScope::Site;
        variables::delete_scope(tx, &scope, &name)?;
        audit::record(tx, &actor, "site.delete", &name, "")?;
        Ok(Ok(()))
    })
    .await?;
    Ok(Json(Removed { removed }))
}

/// Every region (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/regions",
    tag = "sites",
    responses((status = 200, description = "Every region, by name", body = RegionList))
)]
pub(super) async fn list_regions(
    caller: Caller,
    State(shared): St,
) -> Result<Json<RegionList>, ApiError> {
    caller.require(Role::Viewer)?;
    let regions = shared.store.read(|conn| sites::list_regions(conn)).await?;
    Ok(Json(RegionList { regions }))
}

/// Create a region, a named polygon deployments place by (operator).
#[utoipa::path(
    post,
    path = "/api/v1/regions",
    tag = "sites",
    request_body = CreateRegion,
    responses(
        (status = 201, description = "Created", body = RegionReply),
        (status = 400, description = "A bad name or polygon"),
        (status = 403, description = "Needs the operator role"),
        (status = 409, description = "A region with this name exists"),
    )
)]
pub(super) async fn create_region(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateRegion>,
) -> Result<(StatusCode, Json<RegionReply>), ApiError> {
    caller.require(Role::Operator)?;
    validate_name("name", &body.name)?;
    geo::validate_polygon(&body.points)?;
    let actor = caller.actor();
    let region = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(region) = sites::insert_region(&tx, &body.name, &body.points)? else {
                return Ok(Err(ApiError::Conflict(format!(
                    "a region named {:?} exists; regions do not change under deployments: create one with a new name",
                    body.name
                ))));
            };
            audit::record(&tx, &actor, "region.create", &region.name, &format!("points={}", region.points.len()))?;
            tx.commit()?;
            Ok(Ok(region))
        })
        .await??;
    Ok((StatusCode::CREATED, Json(RegionReply { region })))
}

/// One region (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/regions/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "Region name")),
    responses(
        (status = 200, description = "The region", body = RegionReply),
        (status = 404, description = "No such region"),
    )
)]
pub(super) async fn show_region(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<RegionReply>, ApiError> {
    caller.require(Role::Viewer)?;
    let region = shared
        .store
        .read(move |conn| sites::get_region(conn, &name))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound("no region with this name; see GET /api/v1/regions".into())
        })?;
    Ok(Json(RegionReply { region }))
}

/// Remove a region (operator): only one no deployment places by.
#[utoipa::path(
    delete,
    path = "/api/v1/regions/{name}",
    tag = "sites",
    params(("name" = String, Path, description = "Region name")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such region"),
        (status = 409, description = "Deployments place by this region"),
    )
)]
pub(super) async fn delete_region(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let removed = name.clone();
    shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let users: Vec<String> = deployments::list(&tx)?
                .into_iter()
                .filter(|d| d.placement.sites.region.as_deref() == Some(name.as_str()))
                .map(|d| d.name)
                .collect();
            if !users.is_empty() {
                return Ok(Err(ApiError::Conflict(format!(
                    "deployments {} place by region {name}; change or remove them first",
                    users.join(", ")
                ))));
            }
            if !sites::delete_region(&tx, &name)? {
                return Ok(Err(ApiError::NotFound(
                    "no region with this name; see GET /api/v1/regions".into(),
                )));
            }
            audit::record(&tx, &actor, "region.delete", &name, "")?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await??;
    Ok(Json(Removed { removed }))
}

/// Put a device at a site, `{"site": "name"}`, or at none, `{"site": null}` (operator).
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/site",
    operation_id = "set_device_site",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    request_body = SetDeviceSite,
    responses(
        (status = 200, description = "Changed; deployments follow", body = DeviceReply),
        (status = 400, description = "No such site"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "An operator app on the device uses a host device or capability the new site's labels no longer allow"),
    )
)]
pub(super) async fn set_device_site(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetDeviceSite>,
) -> Result<Json<DeviceReply>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let changed = change_and_place(&shared, move |tx| {
        let before = built_ins_before(tx, std::slice::from_ref(&id))?;
        if let Some(site) = &body.site {
            if sites::get(tx, site)?.is_none() {
                return Ok(Err(ApiError::BadRequest(format!(
                    "unknown site {site:?}; create it first (POST /api/v1/sites, cairnctl site create)"
                ))));
            }
        }
        if !sites::set_device_site(tx, &id, body.site.as_deref())? {
            return Ok(Err(ApiError::NotFound("no device with this id".into())));
        }
        if let Some(conflict) = privileges_lost(tx, std::slice::from_ref(&id))? {
            return Ok(Err(conflict));
        }
        let detail = format!("site={}", body.site.as_deref().unwrap_or("(none)"));
        audit::record(tx, &actor, "device.site", &id, &detail)?;
        bump_changed_built_ins(tx, before)
    })
    .await?;
    push_stored(shared.clone(), changed.clone()).await;
    Ok(Json(DeviceReply {
        device: load_device(&shared, device_id).await?,
    }))
}

/// Replace a device's labels (operator).
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/labels",
    operation_id = "set_device_labels",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    request_body = SetDeviceLabels,
    responses(
        (status = 200, description = "Changed; deployments follow", body = DeviceReply),
        (status = 400, description = "A bad label"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "An operator app on the device uses a host device or capability the new labels no longer allow"),
    )
)]
pub(super) async fn set_device_labels(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetDeviceLabels>,
) -> Result<Json<DeviceReply>, ApiError> {
    caller.require(Role::Operator)?;
    validate_labels("labels", &body.labels)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let changed = change_and_place(&shared, move |tx| {
        let before = built_ins_before(tx, std::slice::from_ref(&id))?;
        if !sites::set_device_labels(tx, &id, &body.labels)? {
            return Ok(Err(ApiError::NotFound("no device with this id".into())));
        }
        if let Some(conflict) = privileges_lost(tx, std::slice::from_ref(&id))? {
            return Ok(Err(conflict));
        }
        let keys: Vec<&str> = body.labels.keys().map(String::as_str).collect();
        audit::record(
            tx,
            &actor,
            "device.labels",
            &id,
            &format!("keys={}", keys.join(",")),
        )?;
        bump_changed_built_ins(tx, before)
    })
    .await?;
    push_stored(shared.clone(), changed.clone()).await;
    Ok(Json(DeviceReply {
        device: load_device(&shared, device_id).await?,
    }))
}
