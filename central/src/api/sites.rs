//! Sites, regions, and each device's site and labels.
//!
//! Every change is audited and followed by a scheduler pass (placement may move), so the
//! answer already reflects it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::load_device;
use super::{change_and_place, ApiError, Caller, ValidJson};
use crate::placement::geo::{self, Point};
use crate::placement::spec::{validate_labels, validate_name, Labels};
use crate::placement::PlacementError;
use crate::store::{audit, deployments, sites, Role};
use crate::Shared;

type ApiResult = Result<axum::response::Response, ApiError>;
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

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn created(value: Value) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSite {
    name: String,
    #[serde(default)]
    labels: Labels,
    latitude: f64,
    longitude: f64,
    /// Devices put at the new site in the same call (a site's hosts arrive with it; one call
    /// and one placement pass instead of one per device).
    #[serde(default)]
    devices: Vec<String>,
}

/// Most devices put at a site by its creation call.
const MAX_SITE_DEVICES: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateSite {
    #[serde(default)]
    labels: Labels,
    latitude: f64,
    longitude: f64,
}

/// `GET /api/v1/sites` (viewer): every site with its device count.
pub(super) async fn list_sites(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let (list, counts) = shared
        .store
        .read(|conn| Ok((sites::list(conn)?, sites::device_counts(conn)?)))
        .await?;
    let list: Vec<Value> = list
        .into_iter()
        .map(|site| {
            let count = counts.get(&site.name).copied().unwrap_or(0);
            let mut value = serde_json::to_value(site).expect("a site always serialises");
            value["device_count"] = json!(count);
            value
        })
        .collect();
    ok(json!({ "sites": list }))
}

/// `POST /api/v1/sites` (operator).
pub(super) async fn create_site(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateSite>,
) -> ApiResult {
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
    let site = change_and_place(&shared, move |tx| {
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
        Ok(Ok(site))
    })
    .await?;
    created(json!({ "site": site, "devices": devices }))
}

/// `GET /api/v1/sites/{name}` (viewer): the site and its devices' ids.
pub(super) async fn show_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> ApiResult {
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
    ok(json!({ "site": site, "devices": devices }))
}

/// `PUT /api/v1/sites/{name}` (operator): replace labels and location.
pub(super) async fn update_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<UpdateSite>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    validate_labels("labels", &body.labels)?;
    let at = location(body.latitude, body.longitude)?;
    let actor = caller.actor();
    let site = change_and_place(&shared, move |tx| {
        let Some(site) = sites::update(tx, &name, &body.labels, at)? else {
            return Ok(Err(ApiError::NotFound(
                "no site with this name; create it with POST /api/v1/sites".into(),
            )));
        };
        audit::record(
            tx,
            &actor,
            "site.update",
            &name,
            &site_detail(at, &body.labels),
        )?;
        Ok(Ok(site))
    })
    .await?;
    ok(json!({ "site": site }))
}

/// `DELETE /api/v1/sites/{name}` (operator): only an empty site.
pub(super) async fn delete_site(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> ApiResult {
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
        audit::record(tx, &actor, "site.delete", &name, "")?;
        Ok(Ok(()))
    })
    .await?;
    ok(json!({ "removed": removed }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRegion {
    name: String,
    points: Vec<Point>,
}

/// `GET /api/v1/regions` (viewer).
pub(super) async fn list_regions(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let list = shared.store.read(|conn| sites::list_regions(conn)).await?;
    ok(json!({ "regions": list }))
}

/// `POST /api/v1/regions` (operator): a named polygon.
pub(super) async fn create_region(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateRegion>,
) -> ApiResult {
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
    created(json!({ "region": region }))
}

/// `GET /api/v1/regions/{name}` (viewer).
pub(super) async fn show_region(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    let region = shared
        .store
        .read(move |conn| sites::get_region(conn, &name))
        .await?
        .ok_or_else(|| {
            ApiError::NotFound("no region with this name; see GET /api/v1/regions".into())
        })?;
    ok(json!({ "region": region }))
}

/// `DELETE /api/v1/regions/{name}` (operator): only when no deployment uses it.
pub(super) async fn delete_region(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> ApiResult {
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
    ok(json!({ "removed": removed }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetSite {
    site: Option<String>,
}

/// `PUT /api/v1/devices/{id}/site` (operator): `{"site": "name"}` or `{"site": null}`.
pub(super) async fn set_device_site(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetSite>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let device_id = id.clone();
    change_and_place(&shared, move |tx| {
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
        let detail = format!("site={}", body.site.as_deref().unwrap_or("(none)"));
        audit::record(tx, &actor, "device.site", &id, &detail)?;
        Ok(Ok(()))
    })
    .await?;
    ok(json!({ "device": load_device(&shared, device_id).await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetLabels {
    labels: BTreeMap<String, String>,
}

/// `PUT /api/v1/devices/{id}/labels` (operator): replace the device's labels.
pub(super) async fn set_device_labels(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetLabels>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    validate_labels("labels", &body.labels)?;
    let actor = caller.actor();
    let device_id = id.clone();
    change_and_place(&shared, move |tx| {
        if !sites::set_device_labels(tx, &id, &body.labels)? {
            return Ok(Err(ApiError::NotFound("no device with this id".into())));
        }
        let keys: Vec<&str> = body.labels.keys().map(String::as_str).collect();
        audit::record(
            tx,
            &actor,
            "device.labels",
            &id,
            &format!("keys={}", keys.join(",")),
        )?;
        Ok(Ok(()))
    })
    .await?;
    ok(json!({ "device": load_device(&shared, device_id).await? }))
}
