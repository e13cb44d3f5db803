//! REST handlers, one per operation in `openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    apps, bundles, deployments, observability, rollouts, sites, ApiError, Caller, ValidJson,
    OPENAPI,
};
use crate::grpc::desired_state;
use crate::store::apps as store_apps;
use crate::store::{
    audit, devices, recovery_keys, tokens, ClaimKind, Device, DeviceStatus, Policy, Role,
    StoreError,
};
use crate::Shared;

type ApiResult = Result<axum::response::Response, ApiError>;
type St = State<Arc<Shared>>;

/// Every route; `openapi.json` documents each (a test checks the two agree).
pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/enrollment-tokens",
            get(list_tokens).post(create_token),
        )
        .route("/api/v1/enrollment-tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(show_device))
        .route("/api/v1/devices/{id}/approve", post(approve_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/config", put(set_device_config))
        .route("/api/v1/devices/{id}/apps", get(apps::list_apps))
        .route(
            "/api/v1/devices/{id}/apps/{name}",
            put(apps::put_app)
                .delete(apps::delete_app)
                .layer(DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES)),
        )
        .route("/api/v1/devices/{id}/site", put(sites::set_device_site))
        .route("/api/v1/devices/{id}/labels", put(sites::set_device_labels))
        .route("/api/v1/devices/{id}/recovery-key", get(show_recovery_key))
        .route("/api/v1/devices/{id}/logs", get(observability::device_logs))
        .route("/api/v1/events", get(observability::list_events))
        .route("/metrics", get(observability::metrics))
        .route("/api/v1/claims", get(list_claims).post(add_claim))
        .route(
            "/api/v1/api-tokens",
            get(list_api_tokens).post(create_api_token),
        )
        .route("/api/v1/audit", get(list_audit))
        .route(
            "/api/v1/bundles",
            get(bundles::list_bundles)
                .post(bundles::upload_bundle)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/bundles/{sha256}",
            get(bundles::show_bundle).delete(bundles::delete_bundle),
        )
        .route(
            "/api/v1/bundles/{sha256}/content",
            get(bundles::bundle_content),
        )
        .route(
            "/api/v1/rollouts",
            get(rollouts::list_rollouts).post(rollouts::create_rollout),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::show_rollout))
        .route("/api/v1/rollouts/{id}/pause", post(rollouts::pause_rollout))
        .route(
            "/api/v1/rollouts/{id}/resume",
            post(rollouts::resume_rollout),
        )
        .route("/api/v1/rollouts/{id}/abort", post(rollouts::abort_rollout))
        .route(
            "/api/v1/rollouts/{id}/rollback",
            post(rollouts::rollback_rollout),
        )
        .route(
            "/api/v1/sites",
            get(sites::list_sites).post(sites::create_site),
        )
        .route(
            "/api/v1/sites/{name}",
            get(sites::show_site)
                .put(sites::update_site)
                .delete(sites::delete_site),
        )
        .route(
            "/api/v1/regions",
            get(sites::list_regions).post(sites::create_region),
        )
        .route(
            "/api/v1/regions/{name}",
            get(sites::show_region).delete(sites::delete_region),
        )
        .route(
            "/api/v1/deployments",
            get(deployments::list_deployments)
                .post(deployments::create_deployment)
                .layer(DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES)),
        )
        .route(
            "/api/v1/deployments/{name}",
            get(deployments::show_deployment)
                .put(deployments::update_deployment)
                .delete(deployments::delete_deployment)
                .layer(DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES)),
        )
        .merge(super::console::router())
        .fallback(|| async {
            ApiError::NotFound("no such API route; see /api/v1/openapi.json".into())
        })
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

fn created(value: Value) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

/// Names are shown in tables and the audit log: short, printable.
fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "`name` must be 1 to 64 printable characters".into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    policy: Policy,
    expires_in_seconds: Option<u64>,
    max_uses: Option<u32>,
}

async fn create_token(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateToken>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    check_name(&body.name)?;
    let lifetime = body
        .expires_in_seconds
        .unwrap_or(shared.config.default_token_lifetime_seconds);
    if lifetime == 0 || lifetime > 10 * 365 * 24 * 3600 {
        return Err(ApiError::BadRequest(
            "`expires_in_seconds` must be between 1 and 10 years".into(),
        ));
    }
    if body.max_uses == Some(0) {
        return Err(ApiError::BadRequest(
            "`max_uses` must be at least 1, or null for unlimited".into(),
        ));
    }
    let actor = caller.actor();
    let (token, secret) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let (token, secret) = tokens::create_enrollment_token(
                &tx,
                &body.name,
                body.policy,
                lifetime,
                body.max_uses,
            )?;
            let max_uses = token
                .max_uses
                .map_or("unlimited".to_owned(), |n| n.to_string());
            let detail = format!("policy={} max_uses={max_uses}", token.policy.as_str());
            audit::record(&tx, &actor, "token.create", &token.id, &detail)?;
            tx.commit()?;
            Ok((token, secret))
        })
        .await?;
    created(json!({ "token": token, "secret": secret }))
}

async fn list_tokens(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let list = shared
        .store
        .read(|conn| tokens::list_enrollment_tokens(conn))
        .await?;
    ok(json!({ "tokens": list }))
}

async fn revoke_token(caller: Caller, State(shared): St, Path(id): Path<String>) -> ApiResult {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let token = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if !tokens::revoke_enrollment_token(&tx, &id)? {
                return Ok(None);
            }
            audit::record(&tx, &actor, "token.revoke", &id, "")?;
            let token = tokens::enrollment_token(&tx, &id)?;
            tx.commit()?;
            Ok(token)
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("no enrollment token with this id".into()))?;
    ok(json!({ "token": token }))
}

fn with_presence(shared: &Shared, mut device: Device) -> Device {
    device.online = shared.sessions.is_online(&device.id);
    if let Some(at) = shared.sessions.last_heard(&device.id) {
        device.last_seen_at = Some(device.last_seen_at.map_or(at, |written| written.max(at)));
    }
    device
}

/// A device as JSON with its latest host metrics (`host`, null when none reported here).
fn with_host(shared: &Shared, device: &Device) -> Value {
    let mut value = serde_json::to_value(device).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "host".into(),
            observability::host_json(shared.sessions.host_report(&device.id).as_deref()),
        );
    }
    value
}

async fn list_devices(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let list = shared.store.read(|conn| devices::list(conn)).await?;
    let list: Vec<Value> = list
        .into_iter()
        .map(|d| with_host(&shared, &with_presence(&shared, d)))
        .collect();
    ok(json!({ "devices": list }))
}

pub(super) async fn load_device(shared: &Shared, id: String) -> Result<Device, ApiError> {
    let device = shared
        .store
        .read(move |conn| devices::get(conn, &id))
        .await?
        .ok_or_else(|| ApiError::NotFound("no device with this id".into()))?;
    Ok(with_presence(shared, device))
}

async fn show_device(caller: Caller, State(shared): St, Path(id): Path<String>) -> ApiResult {
    caller.require(Role::Viewer)?;
    let device = load_device(&shared, id).await?;
    let events = observability::device_events(&shared, device.id.clone()).await?;
    ok(json!({ "device": with_host(&shared, &device), "events": events }))
}

/// The device's escrowed recovery key, in clear: admin only, every read audited (before the key
/// is returned, so a read that fails later is still on record), never cached by a proxy.
async fn show_recovery_key(caller: Caller, State(shared): St, Path(id): Path<String>) -> ApiResult {
    caller.require(Role::Admin)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let row = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if devices::get(&tx, &id)?.is_none() {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            }
            let Some(row) = recovery_keys::get(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound(
                    "this device has not escrowed a recovery key yet (it does so right after its first boot once it reaches central)".into(),
                )));
            };
            audit::record(&tx, &actor, "recovery_key.read", &id, &format!("luks_uuid={}", row.luks_uuid))?;
            tx.commit()?;
            Ok(Ok(row))
        })
        .await??;
    let key = shared.escrow.open(&device_id, &row.sealed).map_err(|e| {
        tracing::error!(error = %e, "escrowed recovery key does not decrypt");
        ApiError::Conflict(e.to_string())
    })?;
    let body = json!({
        "device_id": device_id,
        "luks_uuid": row.luks_uuid,
        "recovery_key": key,
        "stored_at": row.stored_at,
    });
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}

/// Move a device between statuses with an audit record; `from` lists the allowed starting points.
async fn transition(
    shared: &Shared,
    caller: &Caller,
    id: String,
    from: &'static [DeviceStatus],
    to: DeviceStatus,
    action: &'static str,
) -> Result<Device, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let result = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(device) = devices::get(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            if device.status == to {
                return Ok(Ok(()));
            }
            if !from.contains(&device.status) {
                return Ok(Err(ApiError::Conflict(format!(
                    "device {id} is {}; {action} applies only to a {} device",
                    device.status.as_str(),
                    from.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ))));
            }
            devices::set_status(&tx, &id, to)?;
            audit::record(
                &tx,
                &actor,
                action,
                &id,
                &format!("from={}", device.status.as_str()),
            )?;
            let (kind, severity) = match to {
                DeviceStatus::Revoked => {
                    ("device.revoked", crate::store::events::Severity::Warning)
                }
                _ => ("device.approved", crate::store::events::Severity::Info),
            };
            let message = format!(
                "{} by {actor} (was {})",
                to.as_str(),
                device.status.as_str()
            );
            crate::store::events::insert(
                &tx,
                &crate::store::events::NewEvent::now(Some(&id), kind, severity, message),
            )?;
            tx.commit()?;
            Ok::<_, StoreError>(Ok(()))
        })
        .await?;
    result?;
    if to == DeviceStatus::Revoked {
        // Refused at once: end its open stream now, not at the next call.
        shared.cut_off(&device_id);
    }
    // Its deployments move elsewhere; a newly approved device may take some.
    shared.placement.wake();
    load_device(shared, device_id).await
}

async fn approve_device(caller: Caller, State(shared): St, Path(id): Path<String>) -> ApiResult {
    let device = transition(
        &shared,
        &caller,
        id,
        &[DeviceStatus::Pending],
        DeviceStatus::Active,
        "device.approve",
    )
    .await?;
    ok(json!({ "device": device }))
}

async fn revoke_device(caller: Caller, State(shared): St, Path(id): Path<String>) -> ApiResult {
    let from = &[DeviceStatus::Pending, DeviceStatus::Active];
    let device = transition(
        &shared,
        &caller,
        id,
        from,
        DeviceStatus::Revoked,
        "device.revoke",
    )
    .await?;
    ok(json!({ "device": device }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetConfig {
    config: BTreeMap<String, String>,
}

async fn set_device_config(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetConfig>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    if body.config.len() > 256
        || body
            .config
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 4096)
    {
        return Err(ApiError::BadRequest(
            "`config` allows up to 256 keys of 1-128 bytes with values up to 4096 bytes".into(),
        ));
    }
    let actor = caller.actor();
    let config = body.config.clone();
    let device_id = id.clone();
    let desired = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(revision) = devices::set_config(&tx, &id, &config)? else {
                return Ok(None);
            };
            audit::record(
                &tx,
                &actor,
                "device.config",
                &id,
                &format!("revision={revision} keys={}", config.len()),
            )?;
            // The pushed state carries the device's apps too: a state without them removes them.
            let apps = store_apps::list(&tx, &id)?;
            let os = devices::get(&tx, &id)?.and_then(|d| d.desired_os);
            tx.commit()?;
            Ok(Some(desired_state(revision, config, apps, os)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("no device with this id".into()))?;
    shared.deliver(&device_id, desired).await;
    ok(json!({ "device": load_device(&shared, device_id).await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddClaim {
    serial: Option<String>,
    tpm_ek_sha256: Option<String>,
}

async fn add_claim(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<AddClaim>,
) -> ApiResult {
    caller.require(Role::Operator)?;
    let (kind, value) = match (body.serial, body.tpm_ek_sha256) {
        (Some(serial), None) if !serial.is_empty() && serial.len() <= 128 && !serial.chars().any(char::is_control) => {
            (ClaimKind::Serial, serial)
        }
        (None, Some(ek)) if ek.len() == 64 && ek.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (ClaimKind::TpmEk, ek.to_ascii_lowercase())
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `serial` (1-128 printable characters) or `tpm_ek_sha256` (64 hex characters)".into(),
            ))
        }
    };
    let actor = caller.actor();
    let claim = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let claim = tokens::add_claim(&tx, kind, &value)?;
            if let Some(claim) = &claim {
                audit::record(
                    &tx,
                    &actor,
                    "claim.add",
                    &claim.id,
                    &format!("{}={}", kind.as_str(), value),
                )?;
            }
            tx.commit()?;
            Ok(claim)
        })
        .await?
        .ok_or_else(|| ApiError::Conflict("this serial or EK is already claimed".into()))?;
    created(json!({ "claim": claim }))
}

async fn list_claims(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Viewer)?;
    let list = shared.store.read(|conn| tokens::list_claims(conn)).await?;
    ok(json!({ "claims": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApiToken {
    name: String,
    role: Role,
}

async fn create_api_token(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateApiToken>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    check_name(&body.name)?;
    let actor = caller.actor();
    let (token, secret) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let (token, secret) = tokens::create_api_token(&tx, &body.name, body.role)?;
            audit::record(
                &tx,
                &actor,
                "api_token.create",
                &token.id,
                &format!("role={}", token.role.as_str()),
            )?;
            tx.commit()?;
            Ok((token, secret))
        })
        .await?;
    created(json!({ "api_token": token, "secret": secret }))
}

async fn list_api_tokens(caller: Caller, State(shared): St) -> ApiResult {
    caller.require(Role::Admin)?;
    let list = shared
        .store
        .read(|conn| tokens::list_api_tokens(conn))
        .await?;
    ok(json!({ "api_tokens": list }))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn list_audit(
    caller: Caller,
    State(shared): St,
    Query(query): Query<AuditQuery>,
) -> ApiResult {
    caller.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let events = shared
        .store
        .read(move |conn| audit::recent(conn, limit))
        .await?;
    ok(json!({ "events": events }))
}

#[cfg(test)]
mod tests {
    /// Every route in the router is documented in openapi.json and vice versa.
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(super::OPENAPI).expect("openapi.json parses");
        let documented: std::collections::BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        let source = include_str!("routes.rs")
            .split("#[cfg(test)]")
            .next()
            .unwrap();
        // rustfmt may break `.route(` and its path onto two lines.
        let routed: std::collections::BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|l| l.split('"').next())
            .map(str::to_owned)
            .collect();
        assert_eq!(documented, routed);
    }
}
