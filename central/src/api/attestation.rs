//! Remote attestation over REST: a device's verdict and the references its boot is compared
//! with (viewer), and the admin's two answers to a failed attestation: accept what the device
//! measured, or forget its pinned references so its next quote pins afresh.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use cairn_api::DeviceAttestation;

use super::{ApiError, Caller};
use crate::attestation::{device_view, ViewInputs};
use crate::store::db::Transaction;
use crate::store::{attestation, audit, devices, now_unix, Role, StoreError};
use crate::Shared;

type St = State<Arc<Shared>>;

/// A device's attestation: its state, the firmware PCRs pinned for it, the UKI values it may
/// boot, and whether a failed boot waits to be accepted (viewer).
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/attestation",
    operation_id = "show_device_attestation",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "The device's attestation", body = DeviceAttestation),
        (status = 404, description = "No such device"),
    )
)]
pub(super) async fn show_attestation(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceAttestation>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(load_view(&shared, id).await?))
}

/// Accept what the device's last failed boot measured (admin): it becomes the pinned firmware
/// reference and a learned UKI value, and the device is asked for a fresh quote.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/attestation/accept",
    operation_id = "accept_device_attestation",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Accepted; a fresh quote is asked for", body = DeviceAttestation),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such device"),
        (status = 409, description = "Its attestation has not failed with measurements to accept"),
    )
)]
pub(super) async fn accept_attestation(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceAttestation>, ApiError> {
    change(
        &shared,
        &caller,
        id,
        "device.attestation_accept",
        |tx, id| {
            let Some(record) = attestation::accept_pending(tx, id)? else {
                return Ok(Err(ApiError::Conflict(format!(
                    "device {id} has nothing to accept: its last attestation did not fail with \
                 new measurements; see `cairnctl device attestation {id}`"
                ))));
            };
            // What was accepted, so the audit log says which values an admin let in.
            let reference = record
                .pending_reference
                .as_deref()
                .map_or_else(String::new, |t| {
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes()))
                });
            let (failure, uki) = (record.detail, record.pending_uki.unwrap_or_default());
            Ok(Ok(format!(
                "failure={failure}; accepted uki={uki}; accepted reference sha256={reference}"
            )))
        },
    )
    .await
}

/// Forget the device's pinned firmware reference and learned UKI values (admin): its next
/// quote pins them afresh; it is asked for one now.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/attestation/reset",
    operation_id = "reset_device_attestation",
    tag = "devices",
    params(("id" = String, Path, description = "Device id (`dev_…`)")),
    responses(
        (status = 200, description = "Reset (nothing to forget for a device never attested); a fresh quote is asked for", body = DeviceAttestation),
        (status = 403, description = "Needs the admin role"),
        (status = 404, description = "No such device"),
    )
)]
pub(super) async fn reset_attestation(
    caller: Caller,
    State(shared): St,
    Path(id): Path<String>,
) -> Result<Json<DeviceAttestation>, ApiError> {
    change(
        &shared,
        &caller,
        id,
        "device.attestation_reset",
        |tx, id| {
            let state = attestation::get(tx, id)?.map_or_else(|| "none".to_owned(), |r| r.state);
            attestation::reset(tx, id)?;
            Ok(Ok(format!("state={state}")))
        },
    )
    .await
}

/// Run an admin's change of a device's attestation record in one transaction with its audit
/// row (`apply` returns the audit detail, or refuses), then ask the device for a fresh quote
/// and answer the new view.
async fn change<F>(
    shared: &Arc<Shared>,
    caller: &Caller,
    id: String,
    action: &'static str,
    apply: F,
) -> Result<Json<DeviceAttestation>, ApiError>
where
    F: FnOnce(&Transaction<'_>, &str) -> Result<Result<String, ApiError>, StoreError>
        + Send
        + 'static,
{
    caller.require(Role::Admin)?;
    let actor = caller.actor();
    let device_id = id.clone();
    shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if devices::get(&tx, &id)?.is_none() {
                return Ok(Err(ApiError::NotFound("no device with this id".into())));
            }
            let detail = match apply(&tx, &id)? {
                Ok(detail) => detail,
                Err(refused) => return Ok(Err(refused)),
            };
            audit::record(&tx, &actor, action, &id, &detail)?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await??;
    shared.request_attestation(&device_id);
    Ok(Json(load_view(shared, device_id).await?))
}

/// The device's attestation view, read in one snapshot.
async fn load_view(shared: &Shared, id: String) -> Result<DeviceAttestation, ApiError> {
    let (inputs, record) = shared
        .store
        .read(move |conn| {
            let Some(device) = devices::get(conn, &id)? else {
                return Ok(None);
            };
            let mut versions = vec![device.os_version.clone()];
            if let Some(desired) = &device.desired_os {
                if !versions.contains(&desired.version) {
                    versions.push(desired.version.clone());
                }
            }
            let mut bundle_uki = Vec::new();
            for version in versions.into_iter().filter(|v| !v.is_empty()) {
                for pcr11 in attestation::bundle_uki_pcr11(conn, &version)? {
                    bundle_uki.push((version.clone(), pcr11));
                }
            }
            let record = attestation::get(conn, &id)?;
            let inputs = ViewInputs {
                device_id: device.id,
                key_storage: device.key_storage,
                bundle_uki,
            };
            Ok(Some((inputs, record)))
        })
        .await?
        .ok_or_else(|| ApiError::NotFound("no device with this id".into()))?;
    Ok(device_view(
        &inputs,
        record.as_ref(),
        now_unix(),
        &shared.config,
    ))
}
