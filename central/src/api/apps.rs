//! Apps on a device: deploy (PUT), remove (DELETE), list with the status the agent reported.
//!
//! A change bumps the device's desired revision in the same transaction as the change and its
//! audit record, then pushes the new desired state on the device's open Sync stream (if any; an
//! offline device gets it when it reconnects).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use cairn_compose::{AppSpec, SpecError};
use cairn_proto::v1::{AppStatus, ServiceHealth, ServiceState};
use cairn_proto::{MAX_COMPOSE_BYTES, MAX_DESIRED_STATE_BYTES};
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Caller, ValidJson};
use crate::grpc::desired_state;
use crate::store::apps::{self, DesiredApp};
use crate::store::{audit, deployments, devices, rfc3339, DeviceStatus, Role};
use crate::Shared;

type ApiResult = Result<axum::response::Response, ApiError>;
type St = State<Arc<Shared>>;

/// Largest `PUT .../apps/{name}` body: a [`MAX_COMPOSE_BYTES`] file even if JSON escaping
/// doubled it, plus the envelope.
pub(super) const PUT_APP_BODY_BYTES: usize = 2 * MAX_COMPOSE_BYTES + 4096;

/// Label of the compose text in validation errors (`compose_yaml:LINE: FIELD: problem`).
const COMPOSE_LABEL: &str = "compose_yaml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutApp {
    compose_yaml: String,
}

/// Validate an app as the agent will: cairn-runtime's parser, size, no secrets yet.
pub(super) fn validate(name: &str, compose_yaml: &str) -> Result<(), ApiError> {
    if compose_yaml.len() > MAX_COMPOSE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`compose_yaml` is {} bytes; the limit is {MAX_COMPOSE_BYTES} bytes (64 KiB)",
            compose_yaml.len()
        )));
    }
    let spec = AppSpec::parse(COMPOSE_LABEL, name, compose_yaml).map_err(|e| match e {
        SpecError::AppName { .. } => ApiError::BadRequest(e.to_string()),
        other => ApiError::BadRequest(format!("the app spec is not valid:\n{other}")),
    })?;
    if !spec.secrets.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{COMPOSE_LABEL}: secrets ({}) cannot be deployed yet: central has no secret store; remove `secrets` and pass values another way",
            spec.secrets.iter().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
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

/// `PUT /api/v1/devices/{id}/apps/{name}`: create or replace an app (operator).
pub(super) async fn put_app(
    caller: Caller,
    State(shared): St,
    Path((id, name)): Path<(String, String)>,
    ValidJson(body): ValidJson<PutApp>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    validate(&name, &body.compose_yaml)?;
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
        Deployed::Unchanged(app, revision) => Ok(Json(
            json!({ "app": app, "desired_revision": revision, "changed": false }),
        )
        .into_response()),
        Deployed::Changed {
            app,
            desired,
            created,
        } => {
            let revision = desired.revision;
            shared.deliver(&device_id, desired).await;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({ "app": app, "desired_revision": revision, "changed": true });
            Ok((status, Json(body)).into_response())
        }
    }
}

/// `DELETE /api/v1/devices/{id}/apps/{name}`: remove an app (operator).
pub(super) async fn delete_app(
    caller: Caller,
    State(shared): St,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult {
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
    let revision = desired.revision;
    shared.deliver(&device_id, desired).await;
    Ok(Json(json!({ "removed": removed, "desired_revision": revision })).into_response())
}

/// The name of a reported service state, as the API and metrics spell it.
pub(crate) fn state_name(state: i32) -> &'static str {
    match ServiceState::try_from(state).unwrap_or(ServiceState::Unspecified) {
        ServiceState::Unspecified => "unknown",
        ServiceState::Pending => "pending",
        ServiceState::Running => "running",
        ServiceState::Unhealthy => "unhealthy",
        ServiceState::Restarting => "restarting",
        ServiceState::Exited => "exited",
        ServiceState::Failed => "failed",
    }
}

fn health_name(health: i32) -> &'static str {
    match ServiceHealth::try_from(health).unwrap_or(ServiceHealth::None) {
        ServiceHealth::None => "none",
        ServiceHealth::Starting => "starting",
        ServiceHealth::Healthy => "healthy",
        ServiceHealth::Unhealthy => "unhealthy",
    }
}

/// The reported status of one app as JSON (`in_sync`: it reflects the desired generation).
pub(super) fn status_json(status: &AppStatus, desired_generation: u64) -> Value {
    let services: Vec<Value> = status
        .services
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "state": state_name(s.state),
                "health": health_name(s.health),
                "restarts": s.restarts,
                "message": s.message,
            })
        })
        .collect();
    json!({
        "generation": status.generation,
        "in_sync": status.generation == desired_generation,
        "desired_revision": status.desired_revision,
        "error": status.error,
        "services": services,
    })
}

/// `GET /api/v1/devices/{id}/apps`: desired apps with the status the device last reported (viewer).
pub(super) async fn list_apps(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
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
    let apps: Vec<Value> = desired
        .into_iter()
        .map(|app| {
            let status = report
                .as_ref()
                .and_then(|r| r.apps.iter().find(|s| s.name == app.name))
                .map(|s| status_json(s, app.generation));
            let mut value = serde_json::to_value(&app).expect("an app always serialises");
            value["status"] = status.unwrap_or(Value::Null);
            value
        })
        .collect();
    ok_json(json!({
        "device_id": device_id,
        "desired_revision": device.desired_revision,
        "online": shared.sessions.is_online(&device_id),
        "reported_at": report.as_ref().map(|r| rfc3339::format(r.at)),
        "reported_revision": report.as_ref().map(|r| r.desired_revision),
        "apps": apps,
    }))
}

fn ok_json(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}
