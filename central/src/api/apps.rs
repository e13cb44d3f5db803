//! Apps on a device: deploy (PUT), remove (DELETE), list with the status the agent reported.
//!
//! A change bumps the device's desired revision in the same transaction as the change and its
//! audit record, then pushes the new desired state on the device's open Sync stream (if any; an
//! offline device gets it when it reconnects).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_api::{
    AppDeployed, AppList, AppRemoved, AppStatus, AppWithStatus, PutApp, ServiceHealth,
    ServiceState, ServiceStatus,
};
use cairn_compose::{AppSpec, Privileges, SpecError};
use cairn_proto::v1::{ServiceHealth as ReportedHealth, ServiceState as ReportedState};
use cairn_proto::{MAX_COMPOSE_BYTES, MAX_DESIRED_STATE_BYTES};
use prost::Message;

use super::{ApiError, Caller, ValidJson};
use crate::grpc::desired_state;
use crate::placement::privileges;
use crate::store::apps::{self, DesiredApp};
use crate::store::db::Connection;
use crate::store::variables as store_variables;
use crate::store::{audit, deployments, devices, sites, DeviceStatus, Role, StoreError, Timestamp};
use crate::Shared;

type St = State<Arc<Shared>>;

/// Largest `PUT .../apps/{name}` body: a [`MAX_COMPOSE_BYTES`] file even if JSON escaping
/// doubled it, plus the envelope.
pub(super) const PUT_APP_BODY_BYTES: usize = 2 * MAX_COMPOSE_BYTES + 4096;

/// Label of the compose text in validation errors (`compose_yaml:LINE: FIELD: problem`).
const COMPOSE_LABEL: &str = "compose_yaml";

/// Validate an app as the agent will: cairn-compose's parser and size; returns the
/// host devices and extra capabilities it asks for. The parse runs on a blocking thread, off
/// the async workers that serve every other request.
pub(super) async fn validate(name: &str, compose_yaml: &str) -> Result<Privileges, ApiError> {
    if compose_yaml.len() > MAX_COMPOSE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`compose_yaml` is {} bytes; the limit is {MAX_COMPOSE_BYTES} bytes (64 KiB)",
            compose_yaml.len()
        )));
    }
    let (name, compose_yaml) = (name.to_owned(), compose_yaml.to_owned());
    tokio::task::spawn_blocking(move || parse_app(&name, &compose_yaml))
        .await
        .map_err(|e| ApiError::Internal(format!("the Compose parser task failed: {e}")))?
}

/// Check an app before the variables of its devices are known: a `${VAR}` central cannot
/// resolve yet is left for the agent, which reports it per device.
fn parse_app(name: &str, compose_yaml: &str) -> Result<Privileges, ApiError> {
    AppSpec::check_with_unset_variables(COMPOSE_LABEL, name, compose_yaml, &BTreeMap::new())
        .map_err(spec_refusal)
}

/// The answer to a Compose file cairn-compose refuses.
fn spec_refusal(e: SpecError) -> ApiError {
    match e {
        SpecError::AppName { .. } => ApiError::BadRequest(e.to_string()),
        other => ApiError::BadRequest(format!("the app spec is not valid:\n{other}")),
    }
}

/// Check a per-device app with the variables it gets on device `device_id`, as its agent
/// will: the operator deploys to this very device, so an unset variable is refused here.
fn check_on_device(
    tx: &Connection,
    device_id: &str,
    name: &str,
    compose_yaml: &str,
) -> Result<Result<(), ApiError>, StoreError> {
    let (built_ins, applicable) = store_variables::sources_for_device(tx, device_id)?;
    let variables = store_variables::merge(name, None, &applicable, &built_ins);
    Ok(
        AppSpec::parse_with_variables(COMPOSE_LABEL, name, compose_yaml, &variables)
            .map(|_| ())
            .map_err(spec_refusal),
    )
}

/// After a change of labels or sites in `tx`: the first operator app on `device_ids` that asks
/// for a host device or capability its device's labels and its site's no longer allow, as the
/// conflict to answer (the change is then rolled back). Deployments need no check: the
/// scheduler moves their apps off such devices.
pub(super) fn privileges_lost(
    tx: &Connection,
    device_ids: &[String],
) -> Result<Option<ApiError>, StoreError> {
    for id in device_ids {
        let Some(device) = devices::get(tx, id)? else {
            continue;
        };
        let site_labels = match device.site.as_deref() {
            Some(site) => sites::get(tx, site)?.map(|s| s.labels).unwrap_or_default(),
            None => Default::default(),
        };
        for app in apps::list(tx, id)?
            .into_iter()
            .filter(|a| a.deployment.is_none())
        {
            let no_variables = BTreeMap::new();
            let Ok(wanted) = AppSpec::check_with_unset_variables(
                COMPOSE_LABEL,
                &app.name,
                &app.compose_yaml,
                &no_variables,
            ) else {
                continue;
            };
            if let Some(why) = privileges::denied(&wanted, &[&device.labels, &site_labels]) {
                return Ok(Some(ApiError::Conflict(format!(
                    "device {id} runs app {:?}, which would lose what it uses: {why}; remove the app first (cairnctl app rm) or keep the label",
                    app.name
                ))));
            }
        }
    }
    Ok(None)
}

/// What a deploy did.
enum Deployed {
    Unchanged(DesiredApp, u64),
    Changed {
        app: DesiredApp,
        desired: cairn_proto::v1::DesiredState,
        created: bool,
    },
}

/// Create or replace an app on a device (operator); pushed to it at once when connected.
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/apps/{name}",
    tag = "apps",
    params(
        ("id" = String, Path, description = "Device id (`dev_…`)"),
        ("name" = String, Path, description = "App name"),
    ),
    request_body = PutApp,
    responses(
        (status = 200, description = "Replaced, or unchanged (`changed` false)", body = AppDeployed),
        (status = 201, description = "Created", body = AppDeployed),
        (status = 400, description = "The Compose file or the app name is not valid, or too large"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "The device is revoked, a deployment owns this app name, or the app asks for host devices or capabilities its labels (or its site's) do not allow (`cairn.allow/devices`, `cairn.allow/capabilities`)"),
    )
)]
pub(super) async fn put_app(
    caller: Caller,
    State(shared): St,
    Path((id, name)): Path<(String, String)>,
    ValidJson(body): ValidJson<PutApp>,
) -> Result<(StatusCode, Json<AppDeployed>), ApiError> {
    caller.require(Role::Operator)?;
    let privileges = validate(&name, &body.compose_yaml).await?;
    let actor = caller.actor();
    let device_id = id.clone();
    let compose = body.compose_yaml;
    let outcome = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(device) = devices::get(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            if device.status == DeviceStatus::Revoked {
                return Ok(Err(ApiError::Conflict(format!("device {id} is revoked; it runs nothing central sends"))));
            }
            let old = apps::get(&tx, &id, &name)?;
            let site = match device.site.as_deref() {
                Some(site) => sites::get(&tx, site)?,
                None => None,
            };
            let site_labels = site.map(|s| s.labels).unwrap_or_default();
            if let Some(why) = privileges::denied(&privileges, &[&device.labels, &site_labels]) {
                return Ok(Err(ApiError::Conflict(format!("device {id}: {why}"))));
            }
            if let Some(owner) = old.as_ref().and_then(|old| old.deployment.as_deref()) {
                return Ok(Err(ApiError::Conflict(format!(
                    "app {name:?} on device {id} is placed by deployment {owner:?}; change it with PUT /api/v1/deployments/{owner} (cairnctl deployment)"
                ))));
            }
            if deployments::get(&tx, &name)?.is_some() {
                return Ok(Err(ApiError::Conflict(format!(
                    "a deployment named {name:?} exists and its app has that name on every device it places; pick another app name or remove the deployment"
                ))));
            }
            if let Some(old) = old.as_ref().filter(|old| old.compose_yaml == compose) {
                return Ok(Ok(Deployed::Unchanged(old.clone(), device.desired_revision)));
            }
            if let Err(refusal) = check_on_device(&tx, &id, &name, &compose)? {
                return Ok(Err(refusal));
            }
            let Some(revision) = apps::bump_revision(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            let app = apps::upsert(&tx, &id, &name, &compose, revision)?;
            let desired = desired_state(revision, device.config, apps::list(&tx, &id)?, device.desired_os);
            let size = desired.encoded_len();
            if size > MAX_DESIRED_STATE_BYTES {
                // Dropping the transaction rolls the change back.
                return Ok(Err(ApiError::BadRequest(format!(
                    "with this app the desired state of device {id} would be {size} bytes, over the {MAX_DESIRED_STATE_BYTES}-byte limit; remove or shrink other apps first"
                ))));
            }
            let verb = if old.is_some() { "updated" } else { "created" };
            let detail = format!("app={name} generation={revision} bytes={} {verb}", compose.len());
            audit::record(&tx, &actor, "app.deploy", &id, &detail)?;
            tx.commit()?;
            Ok(Ok(Deployed::Changed { app, desired, created: old.is_none() }))
        })
        .await??;
    match outcome {
        Deployed::Unchanged(app, desired_revision) => Ok((
            StatusCode::OK,
            Json(AppDeployed {
                app,
                desired_revision,
                changed: false,
            }),
        )),
        Deployed::Changed {
            app,
            desired,
            created,
        } => {
            let desired_revision = desired.revision;
            shared.deliver(&device_id, desired).await;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = AppDeployed {
                app,
                desired_revision,
                changed: true,
            };
            Ok((status, Json(body)))
        }
    }
}

/// Remove an app from a device (operator).
#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/apps/{name}",
    tag = "apps",
    params(
        ("id" = String, Path, description = "Device id (`dev_…`)"),
        ("name" = String, Path, description = "App name"),
    ),
    responses(
        (status = 200, description = "Removed", body = AppRemoved),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device, or it has no such app"),
        (status = 409, description = "A deployment owns this app: change the deployment"),
    )
)]
pub(super) async fn delete_app(
    caller: Caller,
    State(shared): St,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<AppRemoved>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let removed = name.clone();
    let desired = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(device) = devices::get(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            if let Some(owner) = apps::get(&tx, &id, &name)?.and_then(|app| app.deployment) {
                return Ok(Err(ApiError::Conflict(format!(
                    "app {name:?} on device {id} is placed by deployment {owner:?}; the scheduler owns it: change the deployment's placement or remove it (DELETE /api/v1/deployments/{owner})"
                ))));
            }
            if !apps::delete(&tx, &id, &name)? {
                return Ok(Err(ApiError::NotFound(format!(
                    "device {id} has no app named {name:?}; see GET /api/v1/devices/{id}/apps"
                ))));
            }
            let Some(revision) = apps::bump_revision(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            audit::record(
                &tx,
                &actor,
                "app.remove",
                &id,
                &format!("app={name} revision={revision}"),
            )?;
            let desired = desired_state(revision, device.config, apps::list(&tx, &id)?, device.desired_os);
            tx.commit()?;
            Ok(Ok(desired))
        })
        .await??;
    let desired_revision = desired.revision;
    shared.deliver(&device_id, desired).await;
    Ok(Json(AppRemoved {
        removed,
        desired_revision,
    }))
}

/// The name of a reported service state, as the API and metrics spell it.
pub(crate) fn state_name(state: i32) -> &'static str {
    match ReportedState::try_from(state).unwrap_or(ReportedState::Unspecified) {
        ReportedState::Unspecified => "unknown",
        ReportedState::Pending => "pending",
        ReportedState::Running => "running",
        ReportedState::Unhealthy => "unhealthy",
        ReportedState::Restarting => "restarting",
        ReportedState::Exited => "exited",
        ReportedState::Failed => "failed",
    }
}

fn health(health: i32) -> ServiceHealth {
    match ReportedHealth::try_from(health).unwrap_or(ReportedHealth::None) {
        ReportedHealth::None => ServiceHealth::None,
        ReportedHealth::Starting => ServiceHealth::Starting,
        ReportedHealth::Healthy => ServiceHealth::Healthy,
        ReportedHealth::Unhealthy => ServiceHealth::Unhealthy,
    }
}

/// The reported status of one app (`in_sync`: it reflects the desired generation).
pub(super) fn app_status(
    status: &cairn_proto::v1::AppStatus,
    desired_generation: u64,
) -> AppStatus {
    let services = status
        .services
        .iter()
        .map(|s| ServiceStatus {
            name: s.name.clone(),
            state: ServiceState::from(state_name(s.state)),
            health: health(s.health),
            restarts: s.restarts,
            message: s.message.clone(),
        })
        .collect();
    AppStatus {
        generation: status.generation,
        in_sync: status.generation == desired_generation,
        desired_revision: status.desired_revision,
        error: status.error.clone(),
        services,
    }
}

/// A device's desired apps with the status it last reported (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/apps",
    tag = "apps",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Its apps", body = AppList),
        (status = 404, description = "No such device"),
    )
)]
pub(super) async fn list_apps(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<AppList>, ApiError> {
    caller.require(Role::Viewer)?;
    let device_id = id.clone();
    let (device, desired) = shared
        .store
        .read(move |conn| {
            let tx = conn.transaction()?;
            let Some(device) = devices::get(&tx, &id)? else {
                return Ok(None);
            };
            let list = apps::list(&tx, &id)?;
            Ok(Some((device, list)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("no device with this id".into()))?;
    let report = shared.sessions.apps_report(&device_id);
    let apps = desired
        .into_iter()
        .map(|app| {
            let status = report
                .as_ref()
                .and_then(|r| r.apps.iter().find(|s| s.name == app.name))
                .map(|s| app_status(s, app.generation));
            AppWithStatus { app, status }
        })
        .collect();
    Ok(Json(AppList {
        online: shared.sessions.is_online(&device_id),
        device_id,
        desired_revision: device.desired_revision,
        reported_at: report.as_ref().map(|r| Timestamp::from_unix_seconds(r.at)),
        reported_revision: report.as_ref().map(|r| r.desired_revision),
        apps,
    }))
}
