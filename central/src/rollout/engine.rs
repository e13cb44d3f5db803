//! Keeps rollouts moving. Every change happens in one registry transaction (state, audit
//! record, devices' desired OS and revision); the new desired states are pushed on the devices'
//! open Sync streams after the commit, as app and config changes are.
//!
//! Evaluation runs when a device reports a new phase for a rollout (heartbeat `os`), after an
//! operator action, and every [`TICK`] for every running or paused rollout, so a central
//! restarted mid-rollout carries on from the registry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::store::db::Connection;
use cairn_proto::v1::{DesiredState, OsStatus, OsUpdatePhase};
use tokio::sync::watch;

use super::plan::{self, Candidate, Plan, Selector, WaveSpec, SITE_KEY};
use super::version::{compare, OsVersion};
use super::RolloutError;
use crate::grpc::desired_state;
use crate::sessions::OsReport;
use crate::store::bundles as store_bundles;
use crate::store::rollouts::{self, NewRollout, Rollout};
use crate::store::{apps as store_apps, audit, devices, new_id, now_unix, DesiredOs, DeviceStatus};
use crate::store::{RolloutDeviceState as DevState, RolloutState, StoreError};
use crate::Shared;

/// How often running rollouts are evaluated without a report.
pub const TICK: Duration = Duration::from_secs(2);
/// Failure threshold when the request does not say: one failed canary out of a few halts.
pub const DEFAULT_FAILURE_THRESHOLD_PERCENT: u32 = 10;
/// Health gate deadline when the request does not say.
pub const DEFAULT_HEALTH_DEADLINE_SECONDS: u32 = 600;
/// Audit actor of the engine's own transitions.
const ENGINE_ACTOR: &str = "central";
/// Longest error text kept per device.
const MAX_ERROR_BYTES: usize = 512;

/// A desired state to push after the transaction that made it commits.
#[derive(Debug)]
pub struct Push {
    /// The device.
    pub device_id: String,
    /// Its new desired state; `None` when it was not built because the device's stream was
    /// not on this replica (reading it would cost two queries per device in a fleet-wide
    /// change, for the one replica in N that holds the stream; it reads it itself).
    pub desired: Option<DesiredState>,
}

/// Push desired states on the devices' open streams (offline devices get them on reconnect).
pub async fn push_all(shared: &Shared, pushes: Vec<Push>) {
    for push in pushes {
        match push.desired {
            Some(desired) => shared.deliver(&push.device_id, desired).await,
            None => shared.deliver_stored(&push.device_id).await,
        }
    }
}

/// Evaluate running and paused rollouts every [`TICK`] until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        match shared.store.run(evaluate_active).await {
            Ok(pushes) => push_all(&shared, pushes).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not evaluate rollouts; retrying at the next tick")
            }
        }
    }
}

/// Evaluate every running or paused rollout in one transaction.
pub fn evaluate_active(conn: &mut Connection) -> Result<Vec<Push>, StoreError> {
    let tx = conn.transaction()?;
    let mut pushes = Vec::new();
    for id in rollouts::ids_in_states(&tx, &[RolloutState::Running, RolloutState::Paused])? {
        evaluate(&tx, &id, &mut pushes)?;
    }
    tx.commit()?;
    Ok(pushes)
}

/// Halt, complete or release the next wave of one rollout, as its devices' states call for.
#[tracing::instrument(name = "rollout.evaluate", skip(tx, pushes))]
pub fn evaluate(tx: &Connection, id: &str, pushes: &mut Vec<Push>) -> Result<(), StoreError> {
    let Some(rollout) = rollouts::get(tx, id)? else {
        return Ok(());
    };
    if !matches!(rollout.state, RolloutState::Running | RolloutState::Paused) {
        return Ok(());
    }
    let mut released = Vec::new();
    for mut device in rollouts::devices(tx, id)?
        .into_iter()
        .filter(|d| d.wave < rollout.released_waves)
    {
        if !device.state.is_finished()
            && devices::status(tx, &device.device_id)? != Some(DeviceStatus::Active)
        {
            let error = "the device was revoked before its update finished";
            rollouts::set_device_state(tx, id, &device.device_id, DevState::Failed, error)?;
            device.state = DevState::Failed;
            device.error = error.into();
        }
        released.push(device);
    }
    let failures: Vec<_> = released.iter().filter(|d| d.state.is_failure()).collect();
    let threshold = rollout.failure_threshold_percent as usize;
    if !released.is_empty() && failures.len() * 100 > threshold * released.len() {
        let examples: Vec<String> = failures
            .iter()
            .take(5)
            .map(|d| format!("{} {}: {}", d.device_id, d.state.as_str(), d.error))
            .collect();
        let reason = format!(
            "{} of {} released devices failed or refused, over the {threshold}% threshold ({}); no further waves: look at the errors, then roll back or abort",
            failures.len(),
            released.len(),
            examples.join("; ")
        );
        rollouts::set_state(tx, id, RolloutState::Halted, Some(&reason))?;
        audit::record(tx, ENGINE_ACTOR, "rollout.halt", id, &reason)?;
        crate::store::events::insert(
            tx,
            &crate::store::events::NewEvent::now(
                None,
                "rollout.halted",
                crate::store::events::Severity::Error,
                format!("rollout {id} halted: {reason}"),
            ),
        )?;
        tracing::warn!(%reason, "rollout halted");
        return Ok(());
    }
    if !released.iter().all(|d| d.state.is_finished()) {
        return Ok(());
    }
    if rollout.released_waves >= rollout.wave_count {
        let detail = format!(
            "succeeded={} failed_or_refused={}",
            released.len() - failures.len(),
            failures.len()
        );
        rollouts::set_state(tx, id, RolloutState::Completed, None)?;
        audit::record(tx, ENGINE_ACTOR, "rollout.complete", id, &detail)?;
        tracing::info!(%detail, "rollout completed");
        return Ok(());
    }
    if rollout.state == RolloutState::Running {
        release_wave(tx, &rollout, rollout.released_waves, pushes)?;
    }
    Ok(())
}

/// Give every pending device of `wave` the rollout's bundle as its desired OS.
fn release_wave(
    tx: &Connection,
    rollout: &Rollout,
    wave: u32,
    pushes: &mut Vec<Push>,
) -> Result<(), StoreError> {
    let Some(bundle) = store_bundles::get(tx, &rollout.bundle_sha256)? else {
        let reason =
            "its bundle was removed from central; upload it again and create a new rollout";
        rollouts::set_state(tx, &rollout.id, RolloutState::Halted, Some(reason))?;
        audit::record(tx, ENGINE_ACTOR, "rollout.halt", &rollout.id, reason)?;
        crate::store::events::insert(
            tx,
            &crate::store::events::NewEvent::now(
                None,
                "rollout.halted",
                crate::store::events::Severity::Error,
                format!("rollout {} halted: {reason}", rollout.id),
            ),
        )?;
        return Ok(());
    };
    let os = DesiredOs {
        version: bundle.version,
        bundle_sha256: bundle.sha256,
        bundle_size: bundle.size,
        allow_downgrade: rollout.allow_downgrade,
        rollout_id: rollout.id.clone(),
        health_deadline_seconds: rollout.health_deadline_seconds,
    };
    let mut count = 0;
    for device in rollouts::devices(tx, &rollout.id)? {
        if device.wave != wave || device.state != DevState::Pending {
            continue;
        }
        set_device_os(tx, &device.device_id, Some(os.clone()), pushes)?;
        rollouts::set_device_state(tx, &rollout.id, &device.device_id, DevState::Released, "")?;
        count += 1;
    }
    rollouts::set_released_waves(tx, &rollout.id, wave + 1)?;
    audit::record(
        tx,
        ENGINE_ACTOR,
        "rollout.wave",
        &rollout.id,
        &format!("wave={wave} devices={count}"),
    )?;
    tracing::info!(rollout_id = %rollout.id, wave, devices = count, "rollout wave released");
    Ok(())
}

/// Set a device's desired OS (bumping its revision) and queue the new desired state.
fn set_device_os(
    tx: &Connection,
    device_id: &str,
    os: Option<DesiredOs>,
    pushes: &mut Vec<Push>,
) -> Result<(), StoreError> {
    if devices::set_desired_os(tx, device_id, os.as_ref())?.is_none() {
        return Ok(());
    }
    let Some(device) = devices::get(tx, device_id)? else {
        return Ok(());
    };
    let apps = store_apps::list(tx, device_id)?;
    pushes.retain(|p| p.device_id != device_id);
    pushes.push(Push {
        device_id: device_id.to_owned(),
        desired: Some(desired_state(
            device.desired_revision,
            device.config,
            apps,
            device.desired_os,
        )),
    });
    Ok(())
}

/// Clear a device's desired OS if this rollout set it.
fn clear_device_os(
    tx: &Connection,
    device_id: &str,
    rollout_id: &str,
    pushes: &mut Vec<Push>,
) -> Result<(), StoreError> {
    let ours = devices::get(tx, device_id)?
        .and_then(|d| d.desired_os)
        .is_some_and(|os| os.rollout_id == rollout_id);
    if ours {
        set_device_os(tx, device_id, None, pushes)?;
    }
    Ok(())
}

fn same_version(a: &str, b: &str) -> bool {
    a == b || compare(a, b).is_ok_and(|o| o.is_eq())
}

/// The parts of an OS status whose change may move a rollout.
fn transition_key(status: &OsStatus) -> (i32, &str, &str, &str, &str) {
    (
        status.phase,
        &status.rollout_id,
        &status.bundle_sha256,
        &status.version,
        &status.error,
    )
}

/// Cut the strings of a reported OS status (a misbehaving agent cannot make central hold more).
fn bounded(mut status: OsStatus) -> OsStatus {
    use cairn_proto::truncate_status_text as cut;
    status.version = cut(&status.version, 64);
    status.booted_slot = cut(&status.booted_slot, 16);
    status.target_version = cut(&status.target_version, 64);
    status.bundle_sha256 = cut(&status.bundle_sha256, 64);
    status.rollout_id = cut(&status.rollout_id, 64);
    status.error = cut(&status.error, MAX_ERROR_BYTES);
    status
}

/// How bad an OS update phase is for the event log.
fn os_phase_severity(phase: i32) -> crate::store::events::Severity {
    use crate::store::events::Severity;
    match OsUpdatePhase::try_from(phase).unwrap_or(OsUpdatePhase::Unspecified) {
        OsUpdatePhase::Failed => Severity::Error,
        OsUpdatePhase::Refused => Severity::Warning,
        _ => Severity::Info,
    }
}

/// "OS update to 1.2: downloading -> installing" (with the error of a failure).
fn os_phase_message(previous: &OsStatus, status: &OsStatus) -> String {
    let name = |phase: i32| {
        OsUpdatePhase::try_from(phase)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("OS_UPDATE_PHASE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| format!("phase {phase}"))
    };
    let mut message = String::from("OS update");
    if !status.target_version.is_empty() {
        message.push_str(&format!(" to {}", status.target_version));
    }
    message.push_str(&format!(
        ": {} -> {}",
        name(previous.phase),
        name(status.phase)
    ));
    if !status.rollout_id.is_empty() {
        message.push_str(&format!(" (rollout {})", status.rollout_id));
    }
    if !status.error.is_empty() {
        message.push_str(&format!(": {}", status.error));
    }
    message
}

/// Takes in the OS status of a heartbeat: kept in memory, phase changes recorded as events; the
/// registry is written only when the running version changed or the report moves the device in
/// its rollout.
pub async fn on_heartbeat(shared: &Shared, device_id: &str, status: OsStatus) {
    let status = bounded(status);
    let previous = shared.sessions.report_os(
        device_id,
        OsReport {
            at: now_unix(),
            status: status.clone(),
        },
    );
    if let Some(previous) = previous.as_ref().filter(|p| p.status.phase != status.phase) {
        crate::events::record(
            shared,
            Some(device_id),
            "os.update",
            os_phase_severity(status.phase),
            os_phase_message(&previous.status, &status),
        );
    }
    let version_changed = !status.version.is_empty()
        && previous
            .as_ref()
            .is_none_or(|p| p.status.version != status.version);
    let phase_changed = !status.rollout_id.is_empty()
        && previous
            .as_ref()
            .is_none_or(|p| transition_key(&p.status) != transition_key(&status));
    if !version_changed && !phase_changed {
        return;
    }
    let id = device_id.to_owned();
    if !phase_changed {
        // The first heartbeat of every stream: after a restart the whole fleet reconnects, and
        // a write under the registry lock per device would queue behind each other; most
        // versions are already stored.
        let (check, version) = (id.clone(), status.version.clone());
        match shared
            .store
            .read(move |conn| devices::has_os_version(conn, &check, &version))
            .await
        {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(device_id, error = %e, "could not read the stored OS version; writing it")
            }
        }
    }
    let result = shared
        .store
        .run(move |conn| {
            let tx = conn.transaction()?;
            if version_changed {
                devices::set_os_version(&tx, &id, &status.version)?;
            }
            let mut pushes = Vec::new();
            if phase_changed {
                apply_report(&tx, &id, &status, &mut pushes)?;
            }
            tx.commit()?;
            Ok(pushes)
        })
        .await;
    match result {
        Ok(pushes) => push_all(shared, pushes).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not record an OS status report; the next heartbeat retries");
            shared.sessions.forget_os(device_id);
        }
    }
}

/// Move a device in its rollout as its report says, then evaluate the rollout.
fn apply_report(
    tx: &Connection,
    device_id: &str,
    status: &OsStatus,
    pushes: &mut Vec<Push>,
) -> Result<(), StoreError> {
    let Some(rollout) = rollouts::get(tx, &status.rollout_id)? else {
        return Ok(());
    };
    // A report about another bundle (a rollback's, a stale one) does not move this rollout.
    if rollout.bundle_sha256 != status.bundle_sha256 || rollout.state == RolloutState::RolledBack {
        return Ok(());
    }
    let Some(row) = rollouts::device(tx, &rollout.id, device_id)? else {
        return Ok(());
    };
    if row.state == DevState::Pending || row.state.is_finished() {
        return Ok(());
    }
    let on_target = same_version(&status.version, &rollout.version);
    let next = match OsUpdatePhase::try_from(status.phase).unwrap_or(OsUpdatePhase::Unspecified) {
        OsUpdatePhase::Downloading => DevState::Downloading,
        OsUpdatePhase::Installing => DevState::Installing,
        OsUpdatePhase::Rebooting => DevState::Rebooting,
        OsUpdatePhase::Verifying => DevState::Verifying,
        OsUpdatePhase::Succeeded | OsUpdatePhase::Idle if on_target => DevState::Succeeded,
        OsUpdatePhase::Failed => DevState::Failed,
        OsUpdatePhase::Refused => DevState::Refused,
        _ => return Ok(()),
    };
    let error = match (next.is_failure(), status.error.is_empty()) {
        (false, _) => String::new(),
        (true, false) => status.error.clone(),
        (true, true) => format!("the device reported {} without a reason", next.as_str()),
    };
    if next == row.state && error == row.error {
        return Ok(());
    }
    rollouts::set_device_state(tx, &rollout.id, device_id, next.clone(), &error)?;
    if next == DevState::Succeeded {
        devices::set_os_version(tx, device_id, &status.version)?;
    }
    tracing::info!(rollout_id = %rollout.id, device_id, from = row.state.as_str(), to = next.as_str(), "rollout device moved");
    evaluate(tx, &rollout.id, pushes)
}

/// A rollout request (validated here).
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The bundle.
    pub bundle_sha256: String,
    /// Which devices.
    pub selector: Selector,
    /// How to split them.
    pub waves: WaveSpec,
    /// Halt threshold.
    pub failure_threshold_percent: u32,
    /// Health gate deadline.
    pub health_deadline_seconds: u32,
    /// Allow going to an older version (the caller checked the admin role).
    pub allow_downgrade: bool,
    /// Plan only.
    pub dry_run: bool,
}

/// What a create did.
#[derive(Debug)]
pub enum Created {
    /// Dry run: the plan and the bundle version, nothing stored.
    Plan(Plan, String),
    /// Stored with this id, first wave released.
    Stored(String),
}

/// Plan a rollout and (unless a dry run) store it and release its first wave.
pub fn create(
    tx: &Connection,
    request: &CreateRequest,
    actor: &str,
    pushes: &mut Vec<Push>,
) -> Result<Created, RolloutError> {
    plan::validate_selector(&request.selector)?;
    plan::validate_waves(&request.waves)?;
    if request.failure_threshold_percent > 100 {
        return Err(RolloutError::Field(
            "`failure_threshold_percent` must be between 0 and 100".into(),
        ));
    }
    if !(30..=86_400).contains(&request.health_deadline_seconds) {
        return Err(RolloutError::Field(
            "`health_deadline_seconds` must be between 30 and 86400 (one day)".into(),
        ));
    }
    let bundle = store_bundles::get(tx, &request.bundle_sha256)?
        .ok_or_else(|| RolloutError::BundleNotFound(request.bundle_sha256.clone()))?;
    OsVersion::parse(&bundle.version).map_err(RolloutError::BundleVersion)?;
    let active: Vec<_> = devices::list(tx)?
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Active)
        .collect();
    if let Some(ids) = &request.selector.devices {
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !active.iter().any(|d| &d.id == *id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(RolloutError::UnknownDevices(unknown));
        }
    }
    let candidates: Vec<Candidate> = active
        .iter()
        .map(|d| {
            (
                d,
                plan::device_view(&d.config, &d.labels, d.site.as_deref()),
            )
        })
        .filter(|(d, view)| plan::selects(&request.selector, &d.id, view))
        .map(|(d, view)| Candidate {
            id: d.id.clone(),
            site: view.get(SITE_KEY).cloned(),
            version: d.os_version.clone(),
        })
        .collect();
    if candidates.is_empty() {
        return Err(RolloutError::NoDevices);
    }
    let plan = plan::plan(
        &bundle.version,
        request.allow_downgrade,
        candidates,
        &request.waves,
    )?;
    let mut busy = Vec::new();
    for device in plan.waves.iter().flat_map(|w| &w.devices) {
        if let Some(other) = rollouts::active_rollout_of(tx, &device.device_id)? {
            busy.push((device.device_id.clone(), other));
        }
    }
    if !busy.is_empty() {
        return Err(RolloutError::Busy(busy));
    }
    if request.dry_run {
        return Ok(Created::Plan(plan, bundle.version));
    }
    if plan.device_count() == 0 {
        return Err(RolloutError::NothingToDo(bundle.version));
    }
    let id = new_id("rol");
    let assigned: Vec<(String, u32, String)> = plan
        .waves
        .iter()
        .flat_map(|w| {
            w.devices
                .iter()
                .map(move |d| (d.device_id.clone(), w.index, d.from_version.clone()))
        })
        .collect();
    let new = NewRollout {
        id: id.clone(),
        bundle_sha256: bundle.sha256.clone(),
        version: bundle.version.clone(),
        selector: request.selector.clone(),
        waves: request.waves.clone(),
        wave_count: plan.waves.len() as u32,
        skipped: plan.skipped.clone(),
        failure_threshold_percent: request.failure_threshold_percent,
        health_deadline_seconds: request.health_deadline_seconds,
        allow_downgrade: request.allow_downgrade,
        created_by: actor.to_owned(),
    };
    rollouts::insert(tx, &new, &assigned)?;
    let detail = format!(
        "bundle={} version={} devices={} waves={} skipped={} threshold={}% allow_downgrade={}",
        bundle.sha256,
        bundle.version,
        assigned.len(),
        plan.waves.len(),
        plan.skipped.len(),
        request.failure_threshold_percent,
        request.allow_downgrade
    );
    audit::record(tx, actor, "rollout.create", &id, &detail)?;
    evaluate(tx, &id, pushes)?;
    Ok(Created::Stored(id))
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No new waves.
    Pause,
    /// New waves again.
    Resume,
    /// Stop: devices not yet installing are called off.
    Abort,
    /// Send updated devices back to the version they ran.
    Rollback,
}

impl Action {
    /// Its name in URLs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }
}

/// Carry out `action` on rollout `id` (audited as `rollout.<action>`).
pub fn act(
    tx: &Connection,
    id: &str,
    action: Action,
    actor: &str,
    pushes: &mut Vec<Push>,
) -> Result<(), RolloutError> {
    let rollout = rollouts::get(tx, id)?.ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
    let illegal = |why: &'static str| RolloutError::Illegal {
        id: id.to_owned(),
        state: rollout.state.clone(),
        action: action.as_str(),
        why,
    };
    let detail = match action {
        Action::Pause => {
            match rollout.state {
                RolloutState::Running => {}
                RolloutState::Paused => return Err(illegal("does nothing: it is already paused")),
                _ => return Err(illegal("applies only to a running rollout")),
            }
            rollouts::set_state(tx, id, RolloutState::Paused, None)?;
            format!("released_waves={}", rollout.released_waves)
        }
        Action::Resume => {
            match rollout.state {
                RolloutState::Paused => {}
                RolloutState::Running => return Err(illegal("does nothing: it is already running")),
                RolloutState::Halted => return Err(illegal(
                    "is not possible: it halted because too many devices failed; roll it back or abort it, fix the cause and create a new rollout",
                )),
                _ => return Err(illegal("applies only to a paused rollout")),
            }
            rollouts::set_state(tx, id, RolloutState::Running, None)?;
            evaluate(tx, id, pushes)?;
            format!("released_waves={}", rollout.released_waves)
        }
        Action::Abort => {
            if !rollout.state.is_active() {
                return Err(illegal(
                    "applies only to a running, paused or halted rollout",
                ));
            }
            let mut called_off = 0;
            for device in rollouts::devices(tx, id)? {
                if matches!(device.state, DevState::Released | DevState::Downloading) {
                    clear_device_os(tx, &device.device_id, id, pushes)?;
                    rollouts::set_device_state(
                        tx,
                        id,
                        &device.device_id,
                        DevState::Pending,
                        "aborted before it was installed",
                    )?;
                    called_off += 1;
                }
            }
            rollouts::set_state(tx, id, RolloutState::Aborted, None)?;
            format!("called_off={called_off}")
        }
        Action::Rollback => rollback(tx, &rollout, pushes)?,
    };
    audit::record(
        tx,
        actor,
        &format!("rollout.{}", action.as_str()),
        id,
        &detail,
    )?;
    tracing::info!(rollout_id = id, action = action.as_str(), %detail, "rollout changed by an operator");
    Ok(())
}

/// Devices that installed (or are installing) the update get the bundle of the version they
/// ran, with downgrade allowed; the others are called off.
fn rollback(
    tx: &Connection,
    rollout: &Rollout,
    pushes: &mut Vec<Push>,
) -> Result<String, RolloutError> {
    if rollout.state == RolloutState::RolledBack {
        return Err(RolloutError::Illegal {
            id: rollout.id.clone(),
            state: rollout.state.clone(),
            action: "rollback",
            why: "does nothing: it is already rolled back",
        });
    }
    let bundles = store_bundles::list(tx)?;
    let devices = rollouts::devices(tx, &rollout.id)?;
    let mut missing_versions = BTreeSet::new();
    let mut missing_devices = Vec::new();
    let mut busy = Vec::new();
    let mut targets = Vec::new();
    for device in &devices {
        if !matches!(
            device.state,
            DevState::Installing | DevState::Rebooting | DevState::Verifying | DevState::Succeeded
        ) {
            continue;
        }
        if let Some(other) =
            rollouts::active_rollout_of(tx, &device.device_id)?.filter(|o| o != &rollout.id)
        {
            busy.push((device.device_id.clone(), other));
        }
        match bundles
            .iter()
            .find(|b| same_version(&b.version, &device.from_version))
        {
            Some(bundle) => targets.push((device, bundle)),
            None => {
                missing_versions.insert(device.from_version.clone());
                missing_devices.push(device.device_id.clone());
            }
        }
    }
    if !busy.is_empty() {
        return Err(RolloutError::Busy(busy));
    }
    if !missing_versions.is_empty() {
        return Err(RolloutError::RollbackBundleMissing {
            versions: missing_versions.into_iter().collect(),
            devices: missing_devices,
        });
    }
    for (device, bundle) in &targets {
        let os = DesiredOs {
            version: bundle.version.clone(),
            bundle_sha256: bundle.sha256.clone(),
            bundle_size: bundle.size,
            allow_downgrade: true,
            rollout_id: rollout.id.clone(),
            health_deadline_seconds: rollout.health_deadline_seconds,
        };
        set_device_os(tx, &device.device_id, Some(os), pushes)?;
        rollouts::set_device_rollback(tx, &rollout.id, &device.device_id, &bundle.sha256)?;
    }
    let mut called_off = 0;
    for device in &devices {
        match device.state {
            DevState::Released | DevState::Downloading => {
                clear_device_os(tx, &device.device_id, &rollout.id, pushes)?;
                rollouts::set_device_state(
                    tx,
                    &rollout.id,
                    &device.device_id,
                    DevState::Pending,
                    "rolled back before it was installed",
                )?;
                called_off += 1;
            }
            DevState::Failed | DevState::Refused => {
                clear_device_os(tx, &device.device_id, &rollout.id, pushes)?
            }
            _ => {}
        }
    }
    rollouts::set_state(tx, &rollout.id, RolloutState::RolledBack, None)?;
    Ok(format!(
        "sent_back={} called_off={called_off}",
        targets.len()
    ))
}
