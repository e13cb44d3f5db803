//! OS update rollouts over REST: create (or plan with `dry_run`), list, show with per-device
//! state and download progress, and pause, resume, abort, rollback. Every change is audited;
//! the rollout engine (crate::rollout::engine) does the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_api::{
    CreateRollout, DownloadProgress, RolloutDeviceView, RolloutDryRun, RolloutList, RolloutPlan,
    RolloutReply, RolloutView, UpdatePhase, WaveSummary,
};
use cairn_proto::v1::OsUpdatePhase;

use super::{ApiError, Caller, ValidJson};
use crate::bundles::is_sha256_hex;
use crate::rollout::engine::{self, Action, CreateRequest, Created, Push};
use crate::rollout::plan::Plan;
use crate::rollout::RolloutError;
use crate::store::rollouts::{self, Rollout, RolloutDevice};
use crate::store::{Role, RolloutDeviceState, StoreError, Timestamp};
use crate::Shared;

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

/// Start rolling a bundle out (operator; `allow_downgrade` needs admin), or with `dry_run` only
/// show the waves.
#[utoipa::path(
    post,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    request_body = CreateRollout,
    responses(
        (status = 200, description = "Dry run: the waves; nothing stored or sent", body = RolloutDryRun),
        (status = 201, description = "Created, first wave released", body = RolloutReply),
        (status = 400, description = "A bad selector, wave request, threshold or deadline; no device selected; a downgrade without `allow_downgrade`"),
        (status = 403, description = "Needs the operator role (admin for `allow_downgrade`)"),
        (status = 404, description = "No such bundle"),
        (status = 409, description = "A selected device is in another active rollout"),
    )
)]
#[tracing::instrument(name = "api.rollout_create", skip_all, fields(actor = %caller.actor()))]
pub(super) async fn create_rollout(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateRollout>,
) -> Result<Response, ApiError> {
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
        Created::Plan(plan, version) => Ok(Json(RolloutDryRun {
            dry_run: true,
            plan: rollout_plan(plan, version),
        })
        .into_response()),
        Created::Stored(id) => {
            let body = load(&shared, id).await?;
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
    }
}

fn rollout_plan(plan: Plan, version: String) -> RolloutPlan {
    RolloutPlan {
        version,
        device_count: plan.device_count() as u64,
        waves: plan.waves,
        skipped: plan.skipped,
    }
}

/// Devices per state, every state present.
fn counts<'a>(devices: impl Iterator<Item = &'a RolloutDevice>) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = RolloutDeviceState::KNOWN
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for device in devices {
        *counts.entry(device.state.as_str().to_owned()).or_default() += 1;
    }
    counts
}

fn phase(phase: i32) -> UpdatePhase {
    match OsUpdatePhase::try_from(phase).unwrap_or(OsUpdatePhase::Unspecified) {
        OsUpdatePhase::Unspecified => UpdatePhase::Unknown,
        OsUpdatePhase::Idle => UpdatePhase::Idle,
        OsUpdatePhase::Downloading => UpdatePhase::Downloading,
        OsUpdatePhase::Installing => UpdatePhase::Installing,
        OsUpdatePhase::Rebooting => UpdatePhase::Rebooting,
        OsUpdatePhase::Verifying => UpdatePhase::Verifying,
        OsUpdatePhase::Succeeded => UpdatePhase::Succeeded,
        OsUpdatePhase::Failed => UpdatePhase::Failed,
        OsUpdatePhase::Refused => UpdatePhase::Refused,
    }
}

/// A rollout with per-wave counts; with `with_devices`, each device's state and live progress.
fn rollout_view(
    shared: &Shared,
    rollout: Rollout,
    devices: Vec<RolloutDevice>,
    with_devices: bool,
) -> RolloutView {
    let wave_summary = (0..rollout.wave_count)
        .map(|wave| {
            let in_wave = || devices.iter().filter(move |d| d.wave == wave);
            WaveSummary {
                index: wave,
                released: wave < rollout.released_waves,
                devices: in_wave().count() as u64,
                counts: counts(in_wave()),
            }
        })
        .collect();
    let counts = counts(devices.iter());
    let devices = with_devices.then(|| {
        devices
            .into_iter()
            .map(|device| {
                let online = shared.sessions.is_online(&device.device_id);
                // Live progress of this rollout's bundle, from the latest heartbeat (memory only).
                let report = shared.sessions.os_report(&device.device_id);
                let progress = report
                    .as_ref()
                    .filter(|r| r.status.rollout_id == rollout.id)
                    .map(|r| DownloadProgress {
                        phase: phase(r.status.phase),
                        bundle_sha256: r.status.bundle_sha256.clone(),
                        bytes_done: r.status.bytes_done,
                        bytes_total: r.status.bytes_total,
                        bytes_fetched: r.status.bytes_fetched,
                        reported_at: Timestamp::from_unix_seconds(r.at),
                    });
                RolloutDeviceView {
                    device,
                    online,
                    progress,
                    running_version: report.map(|r| r.status.version.clone()),
                }
            })
            .collect()
    });
    RolloutView {
        rollout,
        counts,
        wave_summary,
        devices,
    }
}

async fn load(shared: &Arc<Shared>, id: String) -> Result<RolloutReply, ApiError> {
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
    Ok(RolloutReply {
        rollout: rollout_view(shared, rollout, devices, true),
    })
}

/// Every rollout with its counts, newest first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/rollouts",
    tag = "rollouts",
    responses((status = 200, description = "Every rollout, without its devices", body = RolloutList))
)]
pub(super) async fn list_rollouts(
    caller: Caller,
    State(shared): St,
) -> Result<Json<RolloutList>, ApiError> {
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
    let rollouts = all
        .into_iter()
        .map(|(r, d)| rollout_view(&shared, r, d, false))
        .collect();
    Ok(Json(RolloutList { rollouts }))
}

/// A rollout with each device's state and download progress (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/rollouts/{id}",
    tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id (`rol_…`)")),
    responses(
        (status = 200, description = "The rollout", body = RolloutReply),
        (status = 404, description = "No such rollout"),
    )
)]
pub(super) async fn show_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<RolloutReply>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(load(&shared, id).await?))
}

async fn act(
    caller: Caller,
    shared: Arc<Shared>,
    id: String,
    action: Action,
) -> Result<Json<RolloutReply>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let target = id.clone();
    in_transaction(&shared, move |tx, pushes| {
        engine::act(tx, &target, action, &actor, pushes)
    })
    .await?;
    Ok(Json(load(&shared, id).await?))
}

/// Release no new wave (operator); devices already updating go on.
#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/pause",
    tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id (`rol_…`)")),
    responses(
        (status = 200, description = "Done: the rollout now", body = RolloutReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such rollout"),
        (status = 409, description = "Not possible in the rollout's state (or, for a rollback, a previous version's bundle is not stored)"),
    )
)]
pub(super) async fn pause_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<RolloutReply>, ApiError> {
    act(caller, shared, id, Action::Pause).await
}

/// Release waves again after a pause (operator).
#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/resume",
    tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id (`rol_…`)")),
    responses(
        (status = 200, description = "Done: the rollout now", body = RolloutReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such rollout"),
        (status = 409, description = "Not possible in the rollout's state (or, for a rollback, a previous version's bundle is not stored)"),
    )
)]
pub(super) async fn resume_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<RolloutReply>, ApiError> {
    act(caller, shared, id, Action::Resume).await
}

/// Stop (operator): devices not yet installing are called off; devices installing finish.
#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/abort",
    tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id (`rol_…`)")),
    responses(
        (status = 200, description = "Done: the rollout now", body = RolloutReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such rollout"),
        (status = 409, description = "Not possible in the rollout's state (or, for a rollback, a previous version's bundle is not stored)"),
    )
)]
pub(super) async fn abort_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<RolloutReply>, ApiError> {
    act(caller, shared, id, Action::Abort).await
}

/// Send the updated devices back to the version they ran (operator); its bundle must be stored.
#[utoipa::path(
    post,
    path = "/api/v1/rollouts/{id}/rollback",
    tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id (`rol_…`)")),
    responses(
        (status = 200, description = "Done: the rollout now", body = RolloutReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such rollout"),
        (status = 409, description = "Not possible in the rollout's state (or, for a rollback, a previous version's bundle is not stored)"),
    )
)]
pub(super) async fn rollback_rollout(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<RolloutReply>, ApiError> {
    act(caller, shared, id, Action::Rollback).await
}
