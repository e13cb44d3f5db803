//! App secrets: values go in (operator), descriptions come out (viewer); no answer carries a
//! value. A change bumps the desired revision of every device that runs the app in the
//! secret's scope and pushes it, so running devices fetch the new version at once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use cairn_api::{
    CreateSecret, Removed, SecretInfo, SecretKind, SecretList, SecretQuery, SecretReply,
    UpdateSecret,
};
use zeroize::Zeroizing;

use super::{push_stored, ApiError, Caller, ValidJson, ValidQuery};
use crate::placement::spec::validate_name;
use crate::secrets::SecretVaultError;
use crate::store::db::Transaction;
use crate::store::secrets::{self as store_secrets, Owner, SecretScope};
use crate::store::{apps, audit, deployments, devices, sites, Role, StoreError};
use crate::Shared;

type St = State<Arc<Shared>>;

fn no_secret() -> ApiError {
    ApiError::NotFound("no secret with this id; see GET /api/v1/secrets".into())
}

impl From<SecretVaultError> for ApiError {
    fn from(e: SecretVaultError) -> Self {
        tracing::error!(error = %e, "a secret could not be sealed");
        ApiError::Internal("central could not seal the secret; it is logged".into())
    }
}

/// The value of a request, decoded and bounded; the error never repeats it.
fn decode_value(value_base64: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let value = base64::engine::general_purpose::STANDARD
        .decode(value_base64.trim())
        .map(Zeroizing::new)
        .map_err(|_| {
            ApiError::BadRequest(
                "`value_base64` is not base64 (standard alphabet, padded); cairnctl secret reads the value from a file or stdin and encodes it"
                    .into(),
            )
        })?;
    if value.len() > cairn_proto::MAX_SECRET_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the value is {} bytes; a secret holds at most {} bytes",
            value.len(),
            cairn_proto::MAX_SECRET_BYTES
        )));
    }
    Ok(value)
}

/// Whether `value` suits a secret of `kind`: a registry login must parse (the device reads it
/// again before it pulls); the refusal never repeats the value.
fn check_value(kind: SecretKind, value: &[u8]) -> Result<(), ApiError> {
    match kind {
        SecretKind::File => Ok(()),
        SecretKind::Registry => cairn_compose::RegistryLogin::parse(value)
            .map(drop)
            .map_err(|e| ApiError::BadRequest(format!("the value is not a registry login: {e}"))),
    }
}

/// The scope a create request names, checked for form (existence is checked in the
/// transaction).
fn scope_of(body: &CreateSecret) -> Result<SecretScope, ApiError> {
    if !cairn_proto::is_secret_name(&body.name) {
        return Err(ApiError::BadRequest(format!(
            "`name` {:?} must be 1-64 letters, digits, '-', '_' or '.', as the Compose file's top-level `secrets` declares it",
            body.name
        )));
    }
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let scope = match (&body.deployment, &body.app) {
        (Some(deployment), None) => {
            validate_name("deployment", deployment)?;
            if body.site.is_some() && body.device.is_some() {
                return Err(ApiError::BadRequest(
                    "give `site` or `device`, not both: a secret is narrowed to one site or one device".into(),
                ));
            }
            SecretScope {
                owner: Owner::Deployment,
                app: deployment.clone(),
                name: body.name.clone(),
                site: text(&body.site),
                device_id: text(&body.device),
            }
        }
        (None, Some(app)) => {
            let Some(device) = &body.device else {
                return Err(ApiError::BadRequest(
                    "a per-device app's secret needs `device` as well as `app`".into(),
                ));
            };
            if body.site.is_some() {
                return Err(ApiError::BadRequest(
                    "`site` narrows a deployment's secret; a per-device app's secret already belongs to one device".into(),
                ));
            }
            if app.is_empty() || app.len() > 64 {
                return Err(ApiError::BadRequest("`app` must be an app name".into()));
            }
            SecretScope {
                owner: Owner::DeviceApp,
                app: app.clone(),
                name: body.name.clone(),
                site: String::new(),
                device_id: device.clone(),
            }
        }
        _ => return Err(ApiError::BadRequest(
            "give either `deployment` (optionally with `site` or `device`) or `device` with `app`"
                .into(),
        )),
    };
    Ok(scope)
}

/// Whether what `scope` names exists; the refusal says what is missing.
fn check_scope_exists(
    tx: &Transaction<'_>,
    scope: &SecretScope,
) -> Result<Option<ApiError>, StoreError> {
    if scope.owner == Owner::Deployment && deployments::get(tx, &scope.app)?.is_none() {
        return Ok(Some(ApiError::NotFound(format!(
            "no deployment named {:?}; create it first (cairnctl deployment create)",
            scope.app
        ))));
    }
    if !scope.site.is_empty() && sites::get(tx, &scope.site)?.is_none() {
        return Ok(Some(ApiError::NotFound(format!(
            "no site named {:?}; see GET /api/v1/sites",
            scope.site
        ))));
    }
    if !scope.device_id.is_empty() && devices::get(tx, &scope.device_id)?.is_none() {
        return Ok(Some(ApiError::NotFound(format!(
            "no device {:?}; see GET /api/v1/devices",
            scope.device_id
        ))));
    }
    if scope.owner == Owner::DeviceApp {
        if let Some(app) = apps::get(tx, &scope.device_id, &scope.app)? {
            if let Some(deployment) = app.deployment {
                return Ok(Some(ApiError::Conflict(format!(
                    "app {:?} on device {} is placed by deployment {deployment:?}; give its secrets with `deployment` (and `device` to narrow them to this device)",
                    scope.app, scope.device_id
                ))));
            }
        }
    }
    Ok(None)
}

/// Bump the revision of each device that runs `secret`'s app in its scope; returns them.
fn bump_users(tx: &Transaction<'_>, secret: &SecretInfo) -> Result<Vec<String>, StoreError> {
    let users = store_secrets::devices_using(tx, secret)?;
    for device in &users {
        apps::bump_revision(tx, device)?;
    }
    Ok(users)
}

/// What the audit log says of a secret (never its value).
fn audit_detail(secret: &SecretInfo, devices: usize) -> String {
    format!(
        "name={} kind={} app={} site={} device={} version={} devices={devices}",
        secret.name,
        secret.kind.as_str(),
        secret.app,
        secret.site.as_deref().unwrap_or("-"),
        secret.device.as_deref().unwrap_or("-"),
        secret.version
    )
}

/// Create a secret (operator): its first value, for a deployment (optionally narrowed to a site
/// or a device) or for a per-device app.
#[utoipa::path(
    post,
    path = "/api/v1/secrets",
    tag = "secrets",
    request_body = CreateSecret,
    responses(
        (status = 201, description = "Created; the devices that run the app were sent the new version", body = SecretReply),
        (status = 400, description = "A bad name, scope or value"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such deployment, site or device"),
        (status = 409, description = "The scope already has this secret (update it instead), the app belongs to a deployment, or the name has another kind in other scopes"),
    )
)]
pub(super) async fn create_secret(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<CreateSecret>,
) -> Result<(StatusCode, Json<SecretReply>), ApiError> {
    caller.require(Role::Operator)?;
    let scope = scope_of(&body)?;
    let value = decode_value(&body.value_base64)?;
    let kind = body.kind;
    check_value(kind, &value)?;
    let actor = caller.actor();
    let sealer = shared.clone();
    let (secret, users) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if let Some(refusal) = check_scope_exists(&tx, &scope)? {
                return Ok(Err(refusal));
            }
            if let Some(other) = store_secrets::kind_of_name(&tx, &scope)? {
                if other != kind {
                    return Ok(Err(ApiError::Conflict(format!(
                        "secret {:?} of this app is a {} secret in its other scopes; one name has one kind",
                        scope.name,
                        other.as_str()
                    ))));
                }
            }
            let inserted = store_secrets::insert(&tx, &scope, kind, &actor, |id, version| {
                sealer.vault.seal(id, version, &value)
            })?;
            let secret = match inserted {
                Err(e) => return Ok(Err(e.into())),
                Ok(None) => {
                    return Ok(Err(ApiError::Conflict(format!(
                        "secret {:?} already exists in this scope; change its value with cairnctl secret update (PUT /api/v1/secrets/{{id}})",
                        scope.name
                    ))))
                }
                Ok(Some(secret)) => secret,
            };
            let users = bump_users(&tx, &secret)?;
            audit::record(&tx, &actor, "secret.create", &secret.id, &audit_detail(&secret, users.len()))?;
            tx.commit()?;
            Ok(Ok((secret, users)))
        })
        .await??;
    // After the answer: the change is committed, and a device that misses its push gets the
    // state when it reconnects.
    tokio::spawn(push_stored(shared.clone(), users.clone()));
    Ok((
        StatusCode::CREATED,
        Json(SecretReply {
            secret,
            devices: users.len() as u64,
        }),
    ))
}

/// Give a secret a new value (operator): a new version, sent to the devices that use it.
#[utoipa::path(
    put,
    path = "/api/v1/secrets/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "Secret id (sec_...)")),
    request_body = UpdateSecret,
    responses(
        (status = 200, description = "Updated; the devices that run the app were sent the new version", body = SecretReply),
        (status = 400, description = "A bad value (or not a registry login, for a registry secret)"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such secret"),
    )
)]
pub(super) async fn update_secret(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<UpdateSecret>,
) -> Result<Json<SecretReply>, ApiError> {
    caller.require(Role::Operator)?;
    let value = decode_value(&body.value_base64)?;
    let actor = caller.actor();
    let sealer = shared.clone();
    let (secret, users) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(current) = store_secrets::get(&tx, &id)? else {
                return Ok(Err(no_secret()));
            };
            if let Err(refusal) = check_value(current.kind, &value) {
                return Ok(Err(refusal));
            }
            let updated = store_secrets::update(&tx, &id, &actor, |id, version| {
                sealer.vault.seal(id, version, &value)
            })?;
            let secret = match updated {
                Err(e) => return Ok(Err(e.into())),
                Ok(None) => return Ok(Err(no_secret())),
                Ok(Some(secret)) => secret,
            };
            let users = bump_users(&tx, &secret)?;
            audit::record(
                &tx,
                &actor,
                "secret.update",
                &secret.id,
                &audit_detail(&secret, users.len()),
            )?;
            tx.commit()?;
            Ok(Ok((secret, users)))
        })
        .await??;
    // After the answer: the change is committed, and a device that misses its push gets the
    // state when it reconnects.
    tokio::spawn(push_stored(shared.clone(), users.clone()));
    Ok(Json(SecretReply {
        secret,
        devices: users.len() as u64,
    }))
}

/// Remove a secret (operator). Devices that used it fall back to a wider scope's value (a
/// site's, then the deployment's), or report the secret missing.
#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{id}",
    tag = "secrets",
    params(("id" = String, Path, description = "Secret id (sec_...)")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such secret"),
    )
)]
pub(super) async fn delete_secret(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Operator)?;
    let actor = caller.actor();
    let key = id.clone();
    let users = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(secret) = store_secrets::get(&tx, &key)? else {
                return Ok(Err(no_secret()));
            };
            let users = bump_users(&tx, &secret)?;
            store_secrets::delete(&tx, &key)?;
            audit::record(
                &tx,
                &actor,
                "secret.delete",
                &key,
                &audit_detail(&secret, users.len()),
            )?;
            tx.commit()?;
            Ok(Ok(users))
        })
        .await??;
    // After the answer: the change is committed, and a device that misses its push gets the
    // state when it reconnects.
    tokio::spawn(push_stored(shared.clone(), users.clone()));
    Ok(Json(Removed { removed: id }))
}

/// The secrets central holds, without values (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    tag = "secrets",
    params(SecretQuery),
    responses((status = 200, description = "Matching secrets, by app, name and scope", body = SecretList))
)]
pub(super) async fn list_secrets(
    caller: Caller,
    State(shared): St,
    ValidQuery(query): ValidQuery<SecretQuery>,
) -> Result<Json<SecretList>, ApiError> {
    caller.require(Role::Viewer)?;
    let secrets = shared
        .store
        .read(move |conn| {
            store_secrets::list(
                conn,
                query.deployment.as_deref(),
                query.device.as_deref(),
                query.app.as_deref(),
                query.name.as_deref(),
            )
        })
        .await?;
    Ok(Json(SecretList { secrets }))
}
