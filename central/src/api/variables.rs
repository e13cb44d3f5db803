//! Variables for Compose files (operator sets, viewer reads): values for the fleet, a site or a
//! deployment that central merges with its built-ins into each app's variables on each device.
//! A change bumps the desired revision of exactly the devices where an app's variables change,
//! and pushes their new desired state.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cairn_api::{
    SetVariable, VariableInfo, VariableList, VariableQuery, VariableReply, VariableScope,
};
use cairn_proto::MAX_DESIRED_STATE_BYTES;
use prost::Message;

use super::{push_stored, require_known, ApiError, Caller, ValidJson, ValidQuery};
use crate::grpc::desired_state;
use crate::placement::spec::validate_name;
use crate::store::db::Transaction;
use crate::store::variables::{self as store_variables, BUILT_IN_PREFIX};
use crate::store::{apps, audit, deployments, devices, sites, Role, StoreError};
use crate::Shared;

type St = State<Arc<Shared>>;

/// Longest variable name.
pub const MAX_VARIABLE_NAME_LEN: usize = 64;

/// Largest value of a variable.
pub const MAX_VARIABLE_VALUE_BYTES: usize = 4096;

/// Most variables one scope (the fleet, a site, a deployment) holds.
pub const MAX_VARIABLES_PER_SCOPE: usize = 256;

/// A scope named by a request, checked for form: its kind and its name (empty for the fleet).
fn scope_of(scope: &str, scope_name: &str) -> Result<(VariableScope, String), ApiError> {
    let kind = VariableScope::from(scope);
    require_known(
        "scope",
        scope,
        kind.is_known(),
        &VariableScope::known_list(),
    )?;
    match kind {
        VariableScope::Fleet if !scope_name.is_empty() => Err(ApiError::BadRequest(format!(
            "`scope_name` {scope_name:?} is for a site or deployment scope; leave it empty for the fleet"
        ))),
        VariableScope::Fleet => Ok((kind, String::new())),
        _ => {
            validate_name("scope_name", scope_name)?;
            Ok((kind, scope_name.to_owned()))
        }
    }
}

/// Check a variable name: `[A-Za-z_][A-Za-z0-9_]{0,63}` and not a built-in's.
fn check_name(name: &str) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_VARIABLE_NAME_LEN;
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "`name` {:?} must be a letter or '_' followed by letters, digits or '_', at most {MAX_VARIABLE_NAME_LEN} characters (e.g. PRINTER_ADDRESS)",
            name.chars().take(80).collect::<String>()
        )));
    }
    if name.starts_with(BUILT_IN_PREFIX) {
        return Err(ApiError::BadRequest(format!(
            "`name` {name:?} starts with {BUILT_IN_PREFIX}, which central's built-in variables use (CAIRN_SITE, CAIRN_DEVICE_ID, ...); pick another name"
        )));
    }
    Ok(())
}

/// Check a value: bounded, and no NUL (it ends up in environments and files of containers).
fn check_value(value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VARIABLE_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`value` is {} bytes; a variable holds at most {MAX_VARIABLE_VALUE_BYTES} bytes (use a config or a secret for larger texts)",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::BadRequest(
            "`value` holds a NUL character, which no container environment or file can carry; remove it"
                .into(),
        ));
    }
    Ok(())
}

/// Whether the site or deployment a scope names exists; the refusal says what is missing.
fn check_scope_exists(
    tx: &Transaction<'_>,
    scope: &VariableScope,
    scope_name: &str,
) -> Result<Option<ApiError>, StoreError> {
    let missing = match scope {
        VariableScope::Site => sites::get(tx, scope_name)?.is_none(),
        VariableScope::Deployment => deployments::get(tx, scope_name)?.is_none(),
        _ => false,
    };
    Ok(missing.then(|| {
        ApiError::NotFound(format!(
            "no {scope} named {scope_name:?}; see GET /api/v1/{scope}s (cairnctl {scope} list)"
        ))
    }))
}

/// Bump the desired revision of `device_ids` after a change in `tx`; refuses the change when
/// a device's desired state would outgrow [`MAX_DESIRED_STATE_BYTES`].
pub(super) fn bump_devices(
    tx: &Transaction<'_>,
    device_ids: &[String],
) -> Result<Result<(), ApiError>, StoreError> {
    for id in device_ids {
        let Some(revision) = apps::bump_revision(tx, id)? else {
            continue;
        };
        let Some(device) = devices::get(tx, id)? else {
            continue;
        };
        let desired = desired_state(
            revision,
            device.config,
            apps::list(tx, id)?,
            device.desired_os,
        );
        let size = desired.encoded_len();
        if size > MAX_DESIRED_STATE_BYTES {
            return Ok(Err(ApiError::BadRequest(format!(
                "with this change the desired state of device {id} would be {size} bytes, over the {MAX_DESIRED_STATE_BYTES}-byte limit; shorten the variables' values or remove some"
            ))));
        }
    }
    Ok(Ok(()))
}

/// The built-in variables of those of `device_ids` that run apps, before a change of sites or
/// labels; hand them to [`bump_changed_built_ins`] after it.
pub(super) type BuiltInsBefore = Vec<(String, Option<store_variables::Variables>)>;

/// See [`BuiltInsBefore`].
pub(super) fn built_ins_before(
    tx: &Transaction<'_>,
    device_ids: &[String],
) -> Result<BuiltInsBefore, StoreError> {
    store_variables::with_apps(tx, device_ids)?
        .into_iter()
        .map(|id| Ok((id.clone(), store_variables::built_ins(tx, &id)?)))
        .collect()
}

/// After a change of sites or labels in `tx`: bump the devices of `before` whose built-in
/// variables changed (their apps' variables did); returns them.
pub(super) fn bump_changed_built_ins(
    tx: &Transaction<'_>,
    before: BuiltInsBefore,
) -> Result<Result<Vec<String>, ApiError>, StoreError> {
    let mut changed = Vec::new();
    for (id, old) in before {
        if store_variables::built_ins(tx, &id)? != old {
            changed.push(id);
        }
    }
    Ok(bump_devices(tx, &changed)?.map(|()| changed))
}

/// The audit target of a scope: `fleet`, `site/NAME` or `deployment/NAME`.
fn audit_target(scope: &VariableScope, scope_name: &str) -> String {
    match scope {
        VariableScope::Fleet => "fleet".into(),
        _ => format!("{scope}/{scope_name}"),
    }
}

/// Create or replace a variable (operator); the devices whose apps' variables change get a new
/// desired state.
#[utoipa::path(
    put,
    path = "/api/v1/variables",
    tag = "variables",
    request_body = SetVariable,
    responses(
        (status = 200, description = "Replaced (or unchanged)", body = VariableReply),
        (status = 201, description = "Created", body = VariableReply),
        (status = 400, description = "A bad scope, name or value, a CAIRN_ name, or a desired state that would grow too large"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such site or deployment"),
        (status = 409, description = "The scope holds the most variables it may"),
    )
)]
pub(super) async fn set_variable(
    caller: Caller,
    State(shared): St,
    ValidJson(body): ValidJson<SetVariable>,
) -> Result<(StatusCode, Json<VariableReply>), ApiError> {
    caller.require(Role::Operator)?;
    let (scope, scope_name) = scope_of(body.scope.as_str(), &body.scope_name)?;
    check_name(&body.name)?;
    check_value(&body.value)?;
    let actor = caller.actor();
    let (variable, created, devices) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if let Some(refusal) = check_scope_exists(&tx, &scope, &scope_name)? {
                return Ok(Err(refusal));
            }
            let old = store_variables::get(&tx, &scope, &scope_name, &body.name)?;
            if let Some(old) = old.as_ref().filter(|old| old.value == body.value) {
                return Ok(Ok((old.clone(), false, Vec::new())));
            }
            if old.is_none() && store_variables::count(&tx, &scope, &scope_name)? >= MAX_VARIABLES_PER_SCOPE {
                return Ok(Err(ApiError::Conflict(format!(
                    "{} holds {MAX_VARIABLES_PER_SCOPE} variables, the most a scope may; remove one first (cairnctl variable rm)",
                    audit_target(&scope, &scope_name)
                ))));
            }
            let devices = store_variables::devices_affected(&tx, &scope, &scope_name, &body.name, Some(&body.value))?;
            let variable = store_variables::upsert(&tx, &scope, &scope_name, &body.name, &body.value, &actor)?;
            if let Err(refusal) = bump_devices(&tx, &devices)? {
                return Ok(Err(refusal));
            }
            let verb = if old.is_some() { "updated" } else { "created" };
            let detail = format!("name={} bytes={} devices={} {verb}", body.name, body.value.len(), devices.len());
            audit::record(&tx, &actor, "variable.set", &audit_target(&scope, &scope_name), &detail)?;
            tx.commit()?;
            Ok(Ok((variable, old.is_none(), devices)))
        })
        .await??;
    push_stored(shared.clone(), devices.clone()).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let reply = VariableReply {
        variable,
        devices_updated: devices.len() as u64,
    };
    Ok((status, Json(reply)))
}

/// Remove a variable (operator): `scope`, `name` and, for a site or deployment, `scope_name`
/// in the query. Apps fall back to a less specific scope's value, or report it unset.
#[utoipa::path(
    delete,
    path = "/api/v1/variables",
    tag = "variables",
    params(VariableQuery),
    responses(
        (status = 200, description = "Removed; the devices whose apps' variables changed were sent a new desired state", body = VariableReply),
        (status = 400, description = "A bad or missing scope or name"),
        (status = 403, description = "Needs the operator role"),
        (status = 404, description = "No such variable"),
    )
)]
pub(super) async fn delete_variable(
    caller: Caller,
    State(shared): St,
    ValidQuery(query): ValidQuery<VariableQuery>,
) -> Result<Json<VariableReply>, ApiError> {
    caller.require(Role::Operator)?;
    let (Some(scope), Some(name)) = (query.scope.as_deref(), query.name.clone()) else {
        return Err(ApiError::BadRequest(
            "give `scope` (fleet, site or deployment), `name` and, for a site or deployment, `scope_name` in the query".into(),
        ));
    };
    let (scope, scope_name) = scope_of(scope, query.scope_name.as_deref().unwrap_or(""))?;
    let actor = caller.actor();
    let (variable, devices) = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            let Some(variable) = store_variables::get(&tx, &scope, &scope_name, &name)? else {
                return Ok(Err(ApiError::NotFound(format!(
                    "{} has no variable {name:?}; see GET /api/v1/variables (cairnctl variable list)",
                    audit_target(&scope, &scope_name)
                ))));
            };
            let devices = store_variables::devices_affected(&tx, &scope, &scope_name, &name, None)?;
            store_variables::delete(&tx, &scope, &scope_name, &name)?;
            if let Err(refusal) = bump_devices(&tx, &devices)? {
                return Ok(Err(refusal));
            }
            let detail = format!("name={name} devices={}", devices.len());
            audit::record(&tx, &actor, "variable.delete", &audit_target(&scope, &scope_name), &detail)?;
            tx.commit()?;
            Ok(Ok((variable, devices)))
        })
        .await??;
    push_stored(shared.clone(), devices.clone()).await;
    Ok(Json(VariableReply {
        variable,
        devices_updated: devices.len() as u64,
    }))
}

/// The variables operators set, filtered by `scope`, `scope_name` and `name` (viewer). The
/// variables an app gets on a device, built-ins included, are in its
/// `GET /api/v1/devices/{id}/apps`.
#[utoipa::path(
    get,
    path = "/api/v1/variables",
    tag = "variables",
    params(VariableQuery),
    responses(
        (status = 200, description = "Matching variables, by scope, scope name and name", body = VariableList),
        (status = 400, description = "A bad scope"),
    )
)]
pub(super) async fn list_variables(
    caller: Caller,
    State(shared): St,
    ValidQuery(query): ValidQuery<VariableQuery>,
) -> Result<Json<VariableList>, ApiError> {
    caller.require(Role::Viewer)?;
    let scope = match query.scope.as_deref() {
        None => None,
        Some(text) => {
            let scope = VariableScope::from(text);
            require_known(
                "scope",
                text,
                scope.is_known(),
                &VariableScope::known_list(),
            )?;
            Some(scope)
        }
    };
    let variables: Vec<VariableInfo> = shared
        .store
        .read(move |conn| {
            store_variables::list(
                conn,
                scope.as_ref(),
                query.scope_name.as_deref(),
                query.name.as_deref(),
            )
        })
        .await?;
    Ok(Json(VariableList { variables }))
}
