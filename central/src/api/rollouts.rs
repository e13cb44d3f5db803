//! OS update rollouts over REST: create (or plan with `dry_run`), list, show with per-device
//! state and download progress, and pause, resume, abort, rollback. Every change is audited;
//! the rollout engine (crate::rollout::engine) does the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use cairn_proto::v1::OsUpdatePhase;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, Caller, ValidJson};
use crate::bundles::is_sha256_hex;
use crate::rollout::engine::{self, Action, CreateRequest, Created, Push};
use crate::rollout::plan::{Plan, Selector, WaveSpec};
use crate::rollout::RolloutError;
use crate::store::rollouts::{self, Rollout, RolloutDevice};
use crate::store::{Role, RolloutDeviceState, StoreError};
use crate::Shared;

type ApiResult = Result<axum::response::Response, ApiError>;
type St = State<Arc<Shared>>;

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Store(e) => ApiError::Store(e),
            RolloutError::BundleNotFound(_) | RolloutError::NotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            RolloutError::Busy(_)
            | RolloutError::Illegal { .. }
            | RolloutError::RollbackBundleMissing { .. } => ApiError::Conflict(e.to_string()),
            RolloutError::BundleVersion(_)
            | RolloutError::Selector(_)
            | RolloutError::Waves(_)
            | RolloutError::Field(_)
            | RolloutError::UnknownDevices(_)
            | RolloutError::NoDevices
            | RolloutError::NothingToDo(_)
            | RolloutError::UnparsableVersions(_)
            | RolloutError::Downgrade { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRollout {
    bundle_sha256: String,
    selector: Selector,
    #[serde(default)]
    waves: WaveSpec,
    failure_threshold_percent: Option<u32>,
    health_deadline_seconds: Option<u32>,
    #[serde(default)]
    allow_downgrade: bool,
    #[serde(default)]
    dry_run: bool,
}

/// Run an engine step in one transaction (committed only when it succeeds), then push.
async fn in_transaction<T, F>(shared: &Shared, step: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::db::Connection, &mut Vec<Push>) -> Result<T, RolloutError>
        + Send
        + 'static,
{
    let (value, pushes) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let mut pushes = Vec::new();
            match step(&tx, &mut pushes) {
                Ok(value) => {
                    tx.commit()?;
                    Ok(Ok((value, pushes)))
                }
                Err(RolloutError::Store(e)) => Err(e),
                Err(e) => Ok(Err(e)),
            }
        })
        .await??;
    engine::push_all(shared, pushes).await;
    Ok(value)
}

/// `POST /api/v1/rollouts` (operator; `allow_downgrade` needs admin).
#[tracing::instrument(name = "api.rollout_create", skip_all, fields(actor = %caller.actor()))]
pub(super) async fn create_rollout(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateRollout>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    if body.allow_downgrade && caller.role != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "allow_downgrade needs the admin role (installing an older OS is forced by an admin only); token {:?} has {}",
            caller.name,
            caller.role.as_str()
        )));
    }
    let sha256 = body.bundle_sha256.to_ascii_lowercase();
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::BadRequest(
            "`bundle_sha256` must be the 64 hex characters of a stored bundle's SHA-256; see GET /api/v1/bundles".into(),
        ));
    }
    let request = CreateRequest {
        bundle_sha256: sha256,
        selector: body.selector,
        waves: body.waves,
        failure_threshold_percent: body
            .failure_threshold_percent
            .unwrap_or(engine::DEFAULT_FAILURE_THRESHOLD_PERCENT),
        health_deadline_seconds: body
            .health_deadline_seconds
            .unwrap_or(engine::DEFAULT_HEALTH_DEADLINE_SECONDS),
        allow_downgrade: body.allow_downgrade,
        dry_run: body.dry_run,
    };
    let actor = caller.actor();
    let created = in_transaction(&shared, move |tx, pushes| {
        engine::create(tx, &request, &actor, pushes)
    })
    .await?;
    match created {
        Created::Plan(plan, version) => Ok(Json(
            json!({ "dry_run": true, "plan": plan_json(&plan, &version) }),
        )
        .into_response()),
        Created::Stored(id) => {
            let body = load(&shared, id).await?;
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
    }
}

fn plan_json(plan: &Plan, version: &str) -> Value {
    let waves: Vec<Value> = plan
        .waves
        .iter()
        .map(|w| {
            let devices: Vec<Value> = w
                .devices
                .iter()
                .map(|d| json!({ "device_id": d.device_id, "site": d.site, "from_version": d.from_version, "to_version": version }))
                .collect();
            json!({ "index": w.index, "kind": w.kind, "label": w.label, "devices": devices })
        })
        .collect();
    json!({ "version": version, "device_count": plan.device_count(), "waves": waves, "skipped": plan.skipped })
}

fn counts(devices: &[RolloutDevice]) -> BTreeMap<&'static str, usize> {
    let mut counts: BTreeMap<&'static str, usize> = RolloutDeviceState::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    for device in devices {
        *counts.entry(device.state.as_str()).or_default() += 1;
    }
    counts
}

fn phase_name(phase: i32) -> &'static str {
    match OsUpdatePhase::try_from(phase).unwrap_or(OsUpdatePhase::Unspecified) {
        OsUpdatePhase::Unspecified => "unknown",
        OsUpdatePhase::Idle => "idle",
        OsUpdatePhase::Downloading => "downloading",
        OsUpdatePhase::Installing => "installing",
        OsUpdatePhase::Rebooting => "rebooting",
        OsUpdatePhase::Verifying => "verifying",
        OsUpdatePhase::Succeeded => "succeeded",
        OsUpdatePhase::Failed => "failed",
        OsUpdatePhase::Refused => "refused",
    }
}

/// A rollout with per-wave counts; with `devices`, each device's state and live progress.
fn rollout_json(
    shared: &Shared,
    rollout: &Rollout,
    devices: &[RolloutDevice],
    with_devices: bool,
) -> Value {
    let mut value = serde_json::to_value(rollout).expect("a rollout serialises");
    value["counts"] = json!(counts(devices));
    let waves: Vec<Value> = (0..rollout.wave_count)
        .map(|wave| {
            let in_wave: Vec<RolloutDevice> =
                devices.iter().filter(|d| d.wave == wave).cloned().collect();
            json!({
                "index": wave,
                "released": wave < rollout.released_waves,
                "devices": in_wave.len(),
                "counts": counts(&in_wave),
            })
        })
        .collect();
    value["wave_summary"] = json!(waves);
    if with_devices {
        let list: Vec<Value> = devices
            .iter()
            .map(|d| {
                let mut item = serde_json::to_value(d).expect("a rollout device serialises");
                item["online"] = json!(shared.sessions.is_online(&d.device_id));
                // Live progress of this rollout's bundle, from the latest heartbeat (memory only).
                let report = shared.sessions.os_report(&d.device_id);
                let progress = report
                    .as_ref()
                    .filter(|r| r.status.rollout_id == rollout.id)
                    .map(|r| {
                        json!({
                            "phase": phase_name(r.status.phase),
                            "bundle_sha256": r.status.bundle_sha256,
                            "bytes_done": r.status.bytes_done,
                            "bytes_total": r.status.bytes_total,
                            "bytes_fetched": r.status.bytes_fetched,
                            "reported_at": crate::store::rfc3339::format(r.at),
                        })
                    });
                item["progress"] = progress.unwrap_or(Value::Null);
                item["running_version"] = json!(report.map(|r| r.status.version.clone()));
                item
            })
            .collect();
        value["devices"] = json!(list);
    }
    value
}

async fn load(shared: &Arc<Shared>, id: String) -> Result<Value, ApiError> {
    let wanted = id.clone();
    let (rollout, devices) = shared
        .store
        .run(move |conn| {
            let Some(rollout) = rollouts::get(conn, &wanted)? else {
                return Ok(None);
            };
            let devices = rollouts::devices(conn, &wanted)?;
            Ok::<_, StoreError>(Some((rollout, devices)))
        })
        .await?
        .ok_or(RolloutError::NotFound(id))?;
    Ok(json!({ "rollout": rollout_json(shared, &rollout, &devices, true) }))
}

/// `GET /api/v1/rollouts` (viewer): newest first, with counts.
pub(super) async fn list_rollouts(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let all = shared
        .store
        .read(|conn| {
            let mut all = Vec::new();
            for rollout in rollouts::list(conn)? {
                let devices = rollouts::devices(conn, &rollout.id)?;
                all.push((rollout, devices));
            }
            Ok(all)
        })
        .await?;
    let list: Vec<Value> = all
        .iter()
        .map(|(r, d)| rollout_json(&shared, r, d, false))
        .collect();
    Ok(Json(json!({ "rollouts": list })).into_response())
}

/// `GET /api/v1/rollouts/{id}` (viewer).
pub(super) async fn show_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
    caller.require(Role::Viewer)?;
    Ok(Json(load(&shared, id).await?).into_response())
}

async fn act(caller: Caller, shared: Arc<Shared>, id: String, action: Action) -> ApiResult {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let target = id.clone();
    in_transaction(&shared, move |tx, pushes| {
        engine::act(tx, &target, action, &actor, pushes)
    })
    .await?;
    Ok(Json(load(&shared, id).await?).into_response())
}

/// `POST /api/v1/rollouts/{id}/pause` (operator).
pub(super) async fn pause_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
    act(caller, shared, id, Action::Pause).await
}

/// `POST /api/v1/rollouts/{id}/resume` (operator).
pub(super) async fn resume_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
    act(caller, shared, id, Action::Resume).await
}

/// `POST /api/v1/rollouts/{id}/abort` (operator).
pub(super) async fn abort_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
    act(caller, shared, id, Action::Abort).await
}

/// `POST /api/v1/rollouts/{id}/rollback` (operator).
pub(super) async fn rollback_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> ApiResult {
    act(caller, shared, id, Action::Rollback).await
}
