//! Deployments: an app (Compose file, validated as per-device apps are) plus a placement.
//!
//! Creating, changing or removing one is audited, then a scheduler pass places it (writing
//! deployment-owned per-device apps and pushing the devices' new desired states) before the
//! answer, which shows the placement per site and the state each host reported.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{
    CreateDeployment, DeploymentChanged, DeploymentDryRun, DeploymentList, DeploymentRemoved,
    DeploymentReply, DeploymentSummary, DeploymentView, PlacedHost, SiteHosts, UpdateDeployment,
};

use super::apps::{app_status, validate as validate_app};
use super::{change_and_place, ApiError, Caller, ValidJson};
use crate::placement::scheduler::{self, DeploymentPlan};
use crate::placement::spec::{Placement, PlacementRules};
use crate::placement::{self};
use crate::store::deployments::{self, Deployment};
use crate::store::{apps, audit, devices, sites, Role, StoreError, Timestamp};
use crate::Shared;

type St = State<Arc<Shared>>;

/// Checks that need the registry: named sites and the region exist, no operator app has the
/// deployment's name.
fn check_references(
    tx: &crate::store::db::Connection,
    name: &str,
    placement: &Placement,
) -> Result<Result<(), ApiError>, StoreError> {
    if let Some(names) = &placement.sites.names {
        let mut unknown = Vec::new();
        for name in names {
            if sites::get(tx, name)?.is_none() {
                unknown.push(name.as_str());
            }
        }
        if !unknown.is_empty() {
            return Ok(Err(ApiError::BadRequest(format!(
                "`placement.sites.names`: unknown site {}; see GET /api/v1/sites",
                unknown.join(", ")
            ))));
        }
    }
    if let Some(region) = &placement.sites.region {
        if sites::get_region(tx, region)?.is_none() {
            return Ok(Err(ApiError::BadRequest(format!(
                "`placement.sites.region`: unknown region {region:?}; create it first (POST /api/v1/regions, cairnctl region create)"
            ))));
        }
    }
    let clashing = deployments::devices_with_unowned_app(tx, name)?;
    if !clashing.is_empty() {
        return Ok(Err(ApiError::Conflict(format!(
            "devices {} run an app named {name:?} deployed on them directly; remove it there (cairnctl app rm) or give the deployment another name",
            clashing.join(", ")
        ))));
    }
    Ok(Ok(()))
}

async fn validate(name: &str, compose_yaml: &str, placement: &Placement) -> Result<(), ApiError> {
    validate_app(name, compose_yaml).await?;
    placement.validate()?;
    if let Some(bad) = placement
        .avoid
        .iter()
        .find(|a| a.is_empty() || a.len() > 64 || *a == name)
    {
        return Err(ApiError::BadRequest(format!(
            "`placement.avoid` entry {bad:?} must name another deployment (1-64 characters, not itself)"
        )));
    }
    Ok(())
}

/// What a create or update did.
enum Outcome {
    Planned(DeploymentPlan),
    /// Written; `app_changed`: devices already holding the app get a new Compose file.
    Saved {
        app_changed: bool,
    },
}

/// The answer of a dry run.
fn dry_run_answer(plan: DeploymentPlan) -> Response {
    Json(DeploymentDryRun {
        dry_run: true,
        placement: plan,
    })
    .into_response()
}

/// Create a deployment (operator), or with `dry_run` only show where it would run.
#[utoipa::path(
    post,
    path = "/api/v1/deployments",
    tag = "deployments",
    request_body = CreateDeployment,
    responses(
        (status = 200, description = "Dry run: where it would run; nothing stored", body = DeploymentDryRun),
        (status = 201, description = "Created and placed", body = DeploymentReply),
        (status = 400, description = "The Compose file, the placement, or a named site or region is not valid"),
        (status = 403, description = "Needs the operator role"),
        (status = 409, description = "The name is taken, by a deployment or by an app deployed on devices directly"),
    )
)]
pub(super) async fn create_deployment(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateDeployment>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    validate(&body.name, &body.compose_yaml, &body.placement).await?;
    let actor = caller.actor();
    let name = body.name.clone();
    let inner = shared.clone();
    let outcome = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if deployments::get(&tx, &body.name)?.is_some() {
                return Ok(Err(ApiError::Conflict(format!(
                    "a deployment named {:?} exists; change it with PUT /api/v1/deployments/{}",
                    body.name, body.name
                ))));
            }
            if let Err(e) = check_references(&tx, &body.name, &body.placement)? {
                return Ok(Err(e));
            }
            if body.dry_run {
                let candidate = Deployment {
                    name: body.name,
                    compose_yaml: body.compose_yaml,
                    placement: body.placement,
                    created_by: actor,
                    created_at: Timestamp::from_unix_seconds(0),
                    updated_at: Timestamp::from_unix_seconds(0),
                };
                return Ok(Ok(Outcome::Planned(scheduler::dry_run(
                    &tx, &inner, &candidate,
                )?)));
            }
            let placement_json =
                serde_json::to_string(&body.placement).expect("a placement serialises");
            // Apps of a removed deployment of this name still on devices take this one's
            // Compose file (store::deployments::insert).
            let app_changed = !deployments::placed_devices(&tx, &body.name)?.is_empty();
            deployments::insert(&tx, &body.name, &body.compose_yaml, &body.placement, &actor)?;
            let detail = format!(
                "bytes={} placement={placement_json}",
                body.compose_yaml.len()
            );
            audit::record(&tx, &actor, "deployment.create", &body.name, &detail)?;
            tx.commit()?;
            Ok(Ok(Outcome::Saved { app_changed }))
        })
        .await??;
    match outcome {
        Outcome::Planned(plan) => Ok(dry_run_answer(plan)),
        Outcome::Saved { app_changed } => {
            placement::reconcile_now(&shared).await;
            if app_changed {
                shared.push_deployment(&name).await;
            }
            let deployment = deployment_view(&shared, name).await?;
            Ok((StatusCode::CREATED, Json(DeploymentReply { deployment })).into_response())
        }
    }
}

/// Replace a deployment's app and placement (operator), or with `dry_run` only show where it
/// would run.
#[utoipa::path(
    put,
    path = "/api/v1/deployments/{name}",
    tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    request_body = UpdateDeployment,
    responses(
        (status = 200, description = "Saved and placed (`deployment`), or a dry run's placement (`dry_run`, `placement`)", body = DeploymentChanged),
        (status = 400, description = "The Compose file, the placement, or a named site or region is not valid"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such deployment"),
        (status = 409, description = "An app deployed on devices directly has this name"),
    )
)]
pub(super) async fn update_deployment(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<UpdateDeployment>,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    validate(&name, &body.compose_yaml, &body.placement).await?;
    let actor = caller.actor();
    let inner = shared.clone();
    let key = name.clone();
    let outcome = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(old) = deployments::get(&tx, &key)? else {
                return Ok(Err(ApiError::NotFound(
                    "no deployment with this name; see GET /api/v1/deployments".into(),
                )));
            };
            if let Err(e) = check_references(&tx, &key, &body.placement)? {
                return Ok(Err(e));
            }
            if body.dry_run {
                let candidate = Deployment {
                    compose_yaml: body.compose_yaml,
                    placement: body.placement,
                    ..old
                };
                return Ok(Ok(Outcome::Planned(scheduler::dry_run(
                    &tx, &inner, &candidate,
                )?)));
            }
            let app_changed = old.compose_yaml != body.compose_yaml;
            deployments::update(&tx, &key, &body.compose_yaml, &body.placement)?;
            let placement_json =
                serde_json::to_string(&body.placement).expect("a placement serialises");
            let detail = format!(
                "bytes={} placement={placement_json}",
                body.compose_yaml.len()
            );
            audit::record(&tx, &actor, "deployment.update", &key, &detail)?;
            tx.commit()?;
            Ok(Ok(Outcome::Saved { app_changed }))
        })
        .await??;
    match outcome {
        Outcome::Planned(plan) => Ok(dry_run_answer(plan)),
        Outcome::Saved { app_changed } => {
            placement::reconcile_now(&shared).await;
            if app_changed {
                shared.push_deployment(&name).await;
            }
            let deployment = deployment_view(&shared, name).await?;
            Ok(Json(DeploymentReply { deployment }).into_response())
        }
    }
}

/// Remove a deployment (operator): its app leaves every device.
#[utoipa::path(
    delete,
    path = "/api/v1/deployments/{name}",
    tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses(
        (status = 200, description = "Removed", body = DeploymentRemoved),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such deployment"),
    )
)]
pub(super) async fn delete_deployment(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<DeploymentRemoved>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let key = name.clone();
    let hosts = change_and_place(&shared, move |tx| {
        if !deployments::delete(tx, &key)? {
            return Ok(Err(ApiError::NotFound(
                "no deployment with this name; see GET /api/v1/deployments".into(),
            )));
        }
        let hosts = deployments::placed_devices(tx, &key)?;
        // Its secrets go with it: a new deployment of the same name starts without them.
        crate::store::secrets::delete_of_deployment(tx, &key)?;
        // So do its variables.
        let scope = cairn_api::VariableScope::Deployment;
        crate::store::variables::delete_scope(tx, &scope, &key)?;
        audit::record(
            tx,
            &actor,
            "deployment.delete",
            &key,
            &format!("hosts={}", hosts.len()),
        )?;
        Ok(Ok(hosts))
    })
    .await?;
    Ok(Json(DeploymentRemoved {
        removed: name,
        removed_from: hosts,
    }))
}

/// Every deployment with its host count (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/deployments",
    tag = "deployments",
    responses((status = 200, description = "Every deployment", body = DeploymentList))
)]
pub(super) async fn list_deployments(
    caller: Caller,
    State(shared): St,
) -> Result<Json<DeploymentList>, ApiError> {
    caller.require(Role::Viewer)?;
    let list = shared
        .store
        .read(|conn| {
            let mut out = Vec::new();
            for d in deployments::list(conn)? {
                let hosts = deployments::placed_devices(conn, &d.name)?.len();
                out.push((d, hosts));
            }
            Ok(out)
        })
        .await?;
    let deployments = list
        .into_iter()
        .map(|(d, hosts)| DeploymentSummary {
            name: d.name,
            placement: d.placement,
            hosts: hosts as u64,
            created_by: d.created_by,
            created_at: d.created_at,
            updated_at: d.updated_at,
        })
        .collect();
    Ok(Json(DeploymentList { deployments }))
}

/// A deployment: per selected site, its hosts with the state they reported (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/deployments/{name}",
    tag = "deployments",
    params(("name" = String, Path, description = "Deployment name")),
    responses(
        (status = 200, description = "The deployment", body = DeploymentReply),
        (status = 404, description = "No such deployment"),
    )
)]
pub(super) async fn show_deployment(
    caller: Caller,
    State(shared): St,
    Path(name): Path<String>,
) -> Result<Json<DeploymentReply>, ApiError> {
    caller.require(Role::Viewer)?;
    let deployment = deployment_view(&shared, name).await?;
    Ok(Json(DeploymentReply { deployment }))
}

/// One placed device: id, site, generation of the app there.
struct Placed {
    device_id: String,
    site: Option<String>,
    generation: u64,
}

/// The deployment, its planned sites (what the scheduler wants now, with shortfalls) and the
/// hosts the registry holds, each with its online state and reported app status.
async fn deployment_view(shared: &Arc<Shared>, name: String) -> Result<DeploymentView, ApiError> {
    let inner = shared.clone();
    let found = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(d) = deployments::get(&tx, &name)? else {
                return Ok(None);
            };
            let plan = scheduler::dry_run(&tx, &inner, &d)?;
            let mut placed = Vec::new();
            for device_id in deployments::placed_devices(&tx, &name)? {
                let site = devices::get(&tx, &device_id)?.and_then(|dev| dev.site);
                let generation = apps::get(&tx, &device_id, &name)?.map_or(0, |a| a.generation);
                placed.push(Placed {
                    device_id,
                    site,
                    generation,
                });
            }
            Ok(Some((d, plan, placed)))
        })
        .await?;
    let (d, plan, placed) = found.ok_or_else(|| {
        ApiError::NotFound("no deployment with this name; see GET /api/v1/deployments".into())
    })?;
    let placed_host = |p: &Placed| {
        let status = shared.sessions.apps_report(&p.device_id).and_then(|r| {
            r.apps
                .iter()
                .find(|a| a.name == d.name)
                .map(|a| app_status(a, p.generation))
        });
        PlacedHost {
            device_id: p.device_id.clone(),
            online: shared.sessions.is_online(&p.device_id),
            generation: p.generation,
            status,
        }
    };
    let mut shown = std::collections::BTreeSet::new();
    let sites = plan
        .sites
        .into_iter()
        .map(|s| {
            let hosts = placed
                .iter()
                .filter(|p| p.site.as_deref() == Some(s.site.as_str()))
                .inspect(|p| {
                    shown.insert(p.device_id.clone());
                })
                .map(placed_host)
                .collect();
            SiteHosts {
                site: s.site,
                wanted: s.wanted,
                hosts,
                shortfall: s.shortfall,
            }
        })
        .collect();
    // Hosts outside the selected sites (the next scheduler pass removes them).
    let hosts_elsewhere = placed
        .iter()
        .filter(|p| !shown.contains(&p.device_id))
        .map(placed_host)
        .collect();
    Ok(DeploymentView {
        deployment: d,
        sites,
        hosts_elsewhere,
    })
}
