//! The route list (every route with its OpenAPI operation, see [`super::openapi`]) and the
//! handlers of health, enrollment tokens, devices, claims, API tokens and the audit log.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use cairn_api::{
    ApiToken, ApiTokenList, ApiTokenReply, AuditLog, AuditQuery, ClaimList, ClaimReply,
    CreateApiToken, CreateClaim, CreateEnrollmentToken, CreatedApiToken, CreatedEnrollmentToken,
    DeviceDetail, DeviceList, DeviceReply, DeviceWithHost, EnrollmentTokenList,
    EnrollmentTokenReply, Health, RecoveryKey, SetDeviceConfig,
};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::{
    apps, attestation, bundles, console, deployments, observability, require_known, rollouts,
    secrets, sites, variables, ApiError, Caller, ValidJson, ValidQuery,
};
use crate::grpc::desired_state;
use crate::store::apps as store_apps;
use crate::store::attestation::AttestationRecord;
use crate::store::{
    attestation as store_attestation, audit, devices, now_unix, recovery_keys, tokens, ClaimKind,
    Device, DeviceStatus, EnrollmentPolicy, Role, StoreError, Timestamp,
};
use crate::Shared;

type St = State<Arc<Shared>>;

/// Every route, each added with its documented operation (`routes!` reads the path and method
/// from the handler's `#[utoipa::path]`), so the document lists exactly what is routed.
pub(super) fn router() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::with_openapi(super::openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(openapi_document))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_devices))
        .routes(routes!(show_device))
        .routes(routes!(approve_device))
        .routes(routes!(revoke_device))
        .routes(routes!(wipe_device))
        .routes(routes!(set_device_config))
        .routes(routes!(apps::list_apps))
        .routes(body_limit(
            routes!(apps::put_app, apps::delete_app),
            DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES),
        ))
        .routes(routes!(sites::set_device_site))
        .routes(routes!(sites::set_device_labels))
        .routes(routes!(show_recovery_key))
        .routes(routes!(attestation::show_attestation))
        .routes(routes!(attestation::accept_attestation))
        .routes(routes!(attestation::reset_attestation))
        .routes(routes!(observability::device_logs))
        .routes(routes!(observability::list_events))
        .routes(routes!(observability::metrics))
        .routes(routes!(list_claims, add_claim))
        .routes(routes!(list_api_tokens, create_api_token))
        .routes(routes!(revoke_api_token))
        .routes(routes!(list_audit))
        .routes(body_limit(
            routes!(bundles::list_bundles, bundles::upload_bundle),
            DefaultBodyLimit::disable(),
        ))
        .routes(routes!(bundles::show_bundle, bundles::delete_bundle))
        .routes(routes!(bundles::bundle_content))
        .routes(routes!(rollouts::list_rollouts, rollouts::create_rollout))
        .routes(routes!(rollouts::show_rollout))
        .routes(routes!(rollouts::pause_rollout))
        .routes(routes!(rollouts::resume_rollout))
        .routes(routes!(rollouts::abort_rollout))
        .routes(routes!(rollouts::rollback_rollout))
        .routes(routes!(secrets::list_secrets, secrets::create_secret))
        .routes(routes!(secrets::update_secret, secrets::delete_secret))
        .routes(routes!(
            variables::list_variables,
            variables::set_variable,
            variables::delete_variable
        ))
        .routes(routes!(sites::list_sites, sites::create_site))
        .routes(routes!(
            sites::show_site,
            sites::update_site,
            sites::delete_site
        ))
        .routes(routes!(sites::list_regions, sites::create_region))
        .routes(routes!(sites::show_region, sites::delete_region))
        .routes(body_limit(
            routes!(
                deployments::list_deployments,
                deployments::create_deployment
            ),
            DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES),
        ))
        .routes(body_limit(
            routes!(
                deployments::show_deployment,
                deployments::update_deployment,
                deployments::delete_deployment
            ),
            DefaultBodyLimit::max(apps::PUT_APP_BODY_BYTES),
        ))
        .routes(routes!(console::index))
        .routes(routes!(console::index_console))
        .routes(routes!(console::index_console_slash))
        .routes(routes!(console::asset))
}

/// The routes of one path with another body limit than [`super::MAX_BODY_BYTES`].
fn body_limit(
    (schemas, paths, methods): UtoipaMethodRouter<Arc<Shared>>,
    limit: DefaultBodyLimit,
) -> UtoipaMethodRouter<Arc<Shared>> {
    (schemas, paths, methods.layer(limit))
}

/// Central serves (no token needed).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    security(()),
    responses((status = 200, description = "Central serves", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This document (no token needed).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "service",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
async fn openapi_document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::document_json(),
    )
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

/// Create an enrollment token (operator); its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-tokens",
    operation_id = "create_enrollment_token",
    tag = "enrollment",
    request_body = CreateEnrollmentToken,
    responses(
        (status = 201, description = "Created", body = CreatedEnrollmentToken),
        (status = 400, description = "A field is out of range"),
        (status = 403, description = "Needs the operator role"),
    )
)]
async fn create_token(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    caller.require(Role::Operator)?;
    check_name(&body.name)?;
    require_known(
        "policy",
        body.policy.as_str(),
        body.policy.is_known(),
        &EnrollmentPolicy::known_list(),
    )?;
    let lifetime = body
        .expires_in_seconds
        .unwrap_or(shared.config.default_token_lifetime_seconds);
    if !valid_lifetime(lifetime) {
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
    let require_tpm = body.require_tpm.unwrap_or(true);
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
                require_tpm,
            )?;
            let max_uses = token
                .max_uses
                .map_or("unlimited".to_owned(), |n| n.to_string());
            let detail = format!(
                "policy={} max_uses={max_uses} require_tpm={}",
                token.policy.as_str(),
                token.require_tpm
            );
            audit::record(&tx, &actor, "token.create", &token.id, &detail)?;
            tx.commit()?;
            Ok((token, secret))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken { token, secret }),
    ))
}

/// Every enrollment token, newest first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/enrollment-tokens",
    operation_id = "list_enrollment_tokens",
    tag = "enrollment",
    responses((status = 200, description = "Every enrollment token", body = EnrollmentTokenList))
)]
async fn list_tokens(
    caller: Caller,
    State(shared): St,
) -> Result<Json<EnrollmentTokenList>, ApiError> {
    caller.require(Role::Viewer)?;
    let tokens = shared
        .store
        .read(|conn| tokens::list_enrollment_tokens(conn))
        .await?;
    Ok(Json(EnrollmentTokenList { tokens }))
}

/// Revoke an enrollment token (operator): no more devices enroll with it.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-tokens/{id}/revoke",
    operation_id = "revoke_enrollment_token",
    tag = "enrollment",
    params(("id" = String, Path, description = "Token id (`tok_…`)")),
    responses(
        (status = 200, description = "Revoked (or it was already)", body = EnrollmentTokenReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such token"),
    )
)]
async fn revoke_token(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<EnrollmentTokenReply>, ApiError> {
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
    Ok(Json(EnrollmentTokenReply { token }))
}

/// Longest lifetime of an enrollment or API token: 10 years.
const MAX_TOKEN_LIFETIME_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Whether `seconds` is a token lifetime central accepts (1 s to 10 years).
fn valid_lifetime(seconds: u64) -> bool {
    (1..=MAX_TOKEN_LIFETIME_SECONDS).contains(&seconds)
}

fn with_presence(shared: &Shared, mut device: Device) -> Device {
    device.online = shared.sessions.is_online(&device.id);
    if let Some(at) = shared.sessions.last_heard(&device.id) {
        let at = Timestamp::from_unix_seconds(at);
        device.last_seen_at = Some(device.last_seen_at.map_or(at, |written| written.max(at)));
    }
    device
}

/// A device with its latest host metrics (`host`, null when none reported here) and its
/// attestation state (from `record`, its attestation record if it has one).
fn with_host(
    shared: &Shared,
    device: Device,
    record: Option<&AttestationRecord>,
    now: i64,
) -> DeviceWithHost {
    let host = observability::host_metrics(shared.sessions.host_report(&device.id).as_deref());
    let attestation = crate::attestation::summary(
        record,
        &device.key_storage,
        now,
        shared.config.attestation_interval_secs,
    );
    DeviceWithHost {
        device,
        host,
        attestation,
    }
}

/// Every device's attestation record as far as a summary needs it (state, detail, last
/// verification), by device id: one query for a whole list.
fn attestation_summaries(
    states: Vec<store_attestation::StateRow>,
) -> std::collections::HashMap<String, AttestationRecord> {
    states
        .into_iter()
        .map(|(device_id, state, detail, verified_at)| {
            let record = AttestationRecord {
                device_id: device_id.clone(),
                state,
                detail,
                // A verified record always has `verified_at`; a summary reads nothing else.
                checked_at: verified_at.unwrap_or_default(),
                verified_at,
                ..Default::default()
            };
            (device_id, record)
        })
        .collect()
}

/// Every device with its host metrics, oldest first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    responses((status = 200, description = "Every device", body = DeviceList))
)]
async fn list_devices(caller: Caller, State(shared): St) -> Result<Json<DeviceList>, ApiError> {
    caller.require(Role::Viewer)?;
    let (list, states) = shared
        .store
        .read(|conn| Ok((devices::list(conn)?, store_attestation::states(conn)?)))
        .await?;
    let records = attestation_summaries(states);
    let now = now_unix();
    let devices = list
        .into_iter()
        .map(|d| {
            let record = records.get(&d.id);
            with_host(&shared, with_presence(&shared, d), record, now)
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

pub(super) async fn load_device(shared: &Shared, id: String) -> Result<Device, ApiError> {
    let device = shared
        .store
        .read(move |conn| devices::get(conn, &id))
        .await?
        .ok_or_else(|| ApiError::NotFound("no device with this id".into()))?;
    Ok(with_presence(shared, device))
}

/// One device with its host metrics and newest events (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "The device", body = DeviceDetail),
        (status = 404, description = "No such device"),
    )
)]
async fn show_device(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let device = load_device(&shared, id).await?;
    let events = observability::device_events(&shared, device.id.clone()).await?;
    let device_id = device.id.clone();
    let record = shared
        .store
        .read(move |conn| store_attestation::get(conn, &device_id))
        .await?;
    Ok(Json(DeviceDetail {
        device: with_host(&shared, device, record.as_ref(), now_unix()),
        events,
    }))
}

/// The device's escrowed recovery key, in clear: admin only, every read audited (before the key
/// is returned, so a read that fails later is still on record), never cached by a proxy.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/recovery-key",
    operation_id = "show_recovery_key",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "The recovery key (`Cache-Control: no-store`)", body = RecoveryKey),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such device, or it has not escrowed a key yet"),
        (status = 409, description = "The escrowed key does not decrypt with central's escrow key"),
    )
)]
async fn show_recovery_key(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
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
    let body = RecoveryKey {
        device_id,
        luks_uuid: row.luks_uuid,
        recovery_key: key,
        stored_at: row.stored_at,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Move a device between statuses with an audit record; `from` lists the allowed starting points.
async fn transition(
    shared: &Shared,
    caller: &Caller,
    id: String,
    from: &'static [DeviceStatus],
    to: DeviceStatus,
    action: &'static str,
) -> Result<Json<DeviceReply>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let device_id = id.clone();
    let revoked = to == DeviceStatus::Revoked;
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
            devices::set_status(&tx, &id, to.clone())?;
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
    if revoked {
        // Refused at once: end its open stream now, not at the next call.
        shared.cut_off(&device_id);
    }
    // Its deployments move elsewhere; a newly approved device may take some.
    shared.placement.wake();
    Ok(Json(DeviceReply {
        device: load_device(shared, device_id).await?,
    }))
}

/// Approve a pending device (operator).
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/approve",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Active now (or it already was)", body = DeviceReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "The device is revoked"),
    )
)]
async fn approve_device(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceReply>, ApiError> {
    const FROM: &[DeviceStatus] = &[DeviceStatus::Pending];
    transition(
        &shared,
        &caller,
        id,
        FROM,
        DeviceStatus::Active,
        "device.approve",
    )
    .await
}

/// Revoke a device (operator): refused from now on, its open stream closed.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/revoke",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Revoked (or it already was)", body = DeviceReply),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
    )
)]
async fn revoke_device(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceReply>, ApiError> {
    const FROM: &[DeviceStatus] = &[DeviceStatus::Pending, DeviceStatus::Active];
    transition(
        &shared,
        &caller,
        id,
        FROM,
        DeviceStatus::Revoked,
        "device.revoke",
    )
    .await
}

/// Revoke a device and order its crypto-erase (admin): on its next contact it destroys its
/// sealed data key, the data key's LUKS keyslot and its TPM objects, reports that, and forgets
/// its identity. Its data partition then stays locked even with its own TPM; only the escrowed
/// recovery key still opens it.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/wipe",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Revoked, wipe ordered (or it already was)", body = DeviceReply),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such device"),
    )
)]
async fn wipe_device(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceReply>, ApiError> {
    caller.require(Role::Admin)?;
    let actor = caller.actor();
    let device_id = id.clone();
    shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(device) = devices::get(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            };
            if device.status != DeviceStatus::Revoked {
                devices::set_status(&tx, &id, DeviceStatus::Revoked)?;
                audit::record(
                    &tx,
                    &actor,
                    "device.revoke",
                    &id,
                    &format!("from={}", device.status.as_str()),
                )?;
            }
            if devices::order_wipe(&tx, &id, now_unix())? {
                audit::record(&tx, &actor, "device.wipe_order", &id, "")?;
                crate::store::events::insert(
                    &tx,
                    &crate::store::events::NewEvent::now(
                        Some(&id),
                        "device.revoked",
                        crate::store::events::Severity::Warning,
                        format!(
                            "revoked by {actor} with a crypto-erase ordered for its next contact"
                        ),
                    ),
                )?;
            }
            tx.commit()?;
            Ok::<_, StoreError>(Ok(()))
        })
        .await??;
    shared.cut_off(&device_id);
    shared.placement.wake();
    Ok(Json(DeviceReply {
        device: load_device(&shared, device_id).await?,
    }))
}

/// Replace a device's configuration (operator); pushed to it at once when it is connected.
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/config",
    operation_id = "set_device_config",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    request_body = SetDeviceConfig,
    responses(
        (status = 200, description = "Stored and pushed", body = DeviceReply),
        (status = 400, description = "Too many or too long keys or values, or a bad `cairn.ntp_servers`"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such device"),
    )
)]
async fn set_device_config(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SetDeviceConfig>,
) -> Result<Json<DeviceReply>, ApiError> {
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
    if let Some(servers) = body.config.get(cairn_proto::NTP_SERVERS_CONFIG_KEY) {
        cairn_proto::parse_ntp_servers(servers).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let actor = caller.actor();
    let config = body.config;
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
    Ok(Json(DeviceReply {
        device: load_device(&shared, device_id).await?,
    }))
}

/// Pre-register a device by serial or TPM EK hash for `claim` tokens (operator).
#[utoipa::path(
    post,
    path = "/api/v1/claims",
    operation_id = "add_claim",
    tag = "enrollment",
    request_body = CreateClaim,
    responses(
        (status = 201, description = "Claimed", body = ClaimReply),
        (status = 400, description = "Not exactly one of `serial` and `tpm_ek_sha256`, or a bad value"),
        (status = 403, description = "Needs the operator role"),
        (status = 409, description = "This serial or EK is already claimed"),
    )
)]
async fn add_claim(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateClaim>,
) -> Result<(StatusCode, Json<ClaimReply>), ApiError> {
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
            let detail = format!("{}={}", kind.as_str(), value);
            let claim = tokens::add_claim(&tx, kind, &value)?;
            if let Some(claim) = &claim {
                audit::record(&tx, &actor, "claim.add", &claim.id, &detail)?;
            }
            tx.commit()?;
            Ok(claim)
        })
        .await?
        .ok_or_else(|| ApiError::Conflict("this serial or EK is already claimed".into()))?;
    Ok((StatusCode::CREATED, Json(ClaimReply { claim })))
}

/// Every claim, newest first (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/claims",
    tag = "enrollment",
    responses((status = 200, description = "Every claim", body = ClaimList))
)]
async fn list_claims(caller: Caller, State(shared): St) -> Result<Json<ClaimList>, ApiError> {
    caller.require(Role::Viewer)?;
    let claims = shared.store.read(|conn| tokens::list_claims(conn)).await?;
    Ok(Json(ClaimList { claims }))
}

/// Create an API token (admin); its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/api-tokens",
    tag = "access",
    request_body = CreateApiToken,
    responses(
        (status = 201, description = "Created", body = CreatedApiToken),
        (status = 400, description = "A bad name or role"),
        (status = 403, description = "Needs the admin role"),
    )
)]
async fn create_api_token(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateApiToken>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    caller.require(Role::Admin)?;
    check_name(&body.name)?;
    require_known(
        "role",
        body.role.as_str(),
        body.role.is_known(),
        &Role::known_list(),
    )?;
    if body.expires_in_seconds.is_some_and(|s| !valid_lifetime(s)) {
        return Err(ApiError::BadRequest(
            "`expires_in_seconds` must be between 1 and 10 years, or absent for a token that lasts until revoked".into(),
        ));
    }
    let actor = caller.actor();
    let (api_token, secret) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let (token, secret) =
                tokens::create_api_token(&tx, &body.name, body.role, body.expires_in_seconds)?;
            let expires = token
                .expires_at
                .map_or_else(|| "never".to_owned(), |at| at.to_string());
            audit::record(
                &tx,
                &actor,
                "api_token.create",
                &token.id,
                &format!("role={} expires={expires}", token.role.as_str()),
            )?;
            tx.commit()?;
            Ok((token, secret))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiToken { api_token, secret }),
    ))
}

/// Every API token, newest first (admin).
#[utoipa::path(
    get,
    path = "/api/v1/api-tokens",
    tag = "access",
    responses(
        (status = 200, description = "Every API token", body = ApiTokenList),
        (status = 403, description = "Needs the admin role"),
    )
)]
async fn list_api_tokens(
    caller: Caller,
    State(shared): St,
) -> Result<Json<ApiTokenList>, ApiError> {
    caller.require(Role::Admin)?;
    let api_tokens = shared
        .store
        .read(|conn| tokens::list_api_tokens(conn))
        .await?;
    Ok(Json(ApiTokenList { api_tokens }))
}

/// Revoke an API token (admin): it is refused from the next request on. The last live admin
/// token cannot be revoked (create another first); revoking the bootstrap token deletes
/// `admin.token` from this replica's data directory.
#[utoipa::path(
    post,
    path = "/api/v1/api-tokens/{id}/revoke",
    operation_id = "revoke_api_token",
    tag = "access",
    params(("id" = String, Path, description = "Token id (`api_…`)")),
    responses(
        (status = 200, description = "Revoked (or it was already)", body = ApiTokenReply),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such token"),
        (status = 409, description = "It is the last live admin token"),
    )
)]
async fn revoke_api_token(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenReply>, ApiError> {
    caller.require(Role::Admin)?;
    let actor = caller.actor();
    let revoked = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(token) = tokens::api_token(&tx, &id)? else {
                return Ok(Err(ApiError::NotFound("no API token with this id".into())));
            };
            if token.revoked {
                return Ok(Ok(token));
            }
            if token.role == Role::Admin && !tokens::has_admin_token_besides(&tx, &id, now_unix())? {
                return Ok(Err(ApiError::Conflict(format!(
                    "{id} is the last live admin token: create another admin token first, so central is not left without one"
                ))));
            }
            tokens::revoke_api_token(&tx, &id)?;
            audit::record(&tx, &actor, "api_token.revoke", &id, &format!("name={}", token.name))?;
            tx.commit()?;
            Ok(Ok(ApiToken {
                revoked: true,
                ..token
            }))
        })
        .await??;
    if revoked.name == crate::BOOTSTRAP_TOKEN_NAME {
        crate::remove_bootstrap_token_file(&shared.config);
    }
    Ok(Json(ApiTokenReply { api_token: revoked }))
}

/// The newest audit records, newest first (admin).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "access",
    params(AuditQuery),
    responses(
        (status = 200, description = "The newest records", body = AuditLog),
        (status = 400, description = "`limit` is not a number"),
        (status = 403, description = "Needs the admin role"),
    )
)]
async fn list_audit(
    caller: Caller,
    State(shared): St,
    ValidQuery(query): ValidQuery<AuditQuery>,
) -> Result<Json<AuditLog>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let events = shared
        .store
        .read(move |conn| audit::recent(conn, limit))
        .await?;
    Ok(Json(AuditLog { events }))
}
