//! OS update rollouts (`/api/v1/rollouts...`): which devices get a bundle, in which waves, and
//! where each device stands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

/// Canary devices when the request does not say.
pub const DEFAULT_CANARY: u32 = 1;

api_enum! {
    /// Where an OS update rollout stands.
    RolloutState {
        /// Waves are released as the previous ones finish.
        Running => "running",
        /// An operator paused it: released devices go on, no new wave starts.
        Paused => "paused",
        /// Central stopped it: too many released devices failed.
        Halted => "halted",
        /// An operator aborted it.
        Aborted => "aborted",
        /// Every wave finished within the failure threshold.
        Completed => "completed",
        /// An operator sent the updated devices back to their previous version.
        RolledBack => "rolled_back",
    }
}

impl RolloutState {
    /// Whether the rollout holds its devices (a device is in at most one such rollout).
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Halted)
    }
}

api_enum! {
    /// Where one device of a rollout stands (from the OS status its agent reports).
    RolloutDeviceState {
        /// Its wave has not been released yet.
        Pending => "pending",
        /// The update is in its desired state; no report yet.
        Released => "released",
        /// The agent is fetching the bundle.
        Downloading => "downloading",
        /// `rauc install` into the other slot.
        Installing => "installing",
        /// Rebooting into the new slot.
        Rebooting => "rebooting",
        /// Booted the new slot on trial, waiting for the health gate.
        Verifying => "verifying",
        /// Runs the target version, committed.
        Succeeded => "succeeded",
        /// The update failed (the device runs its previous slot).
        Failed => "failed",
        /// The device refused the update.
        Refused => "refused",
    }
}

impl RolloutDeviceState {
    /// Succeeded, failed or refused: nothing more will happen to the device in this rollout.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Refused)
    }

    /// Failed or refused.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed | Self::Refused)
    }
}

api_enum! {
    /// Where a device's OS update stands, as its agent last reported.
    UpdatePhase {
        /// The agent reported no phase central knows.
        Unknown => "unknown",
        /// Nothing to do: it runs the desired OS.
        Idle => "idle",
        /// Fetching the bundle.
        Downloading => "downloading",
        /// Installing into the other slot.
        Installing => "installing",
        /// Rebooting into the new slot.
        Rebooting => "rebooting",
        /// Booted the new slot on trial, waiting for the health gate.
        Verifying => "verifying",
        /// Runs the new version, committed.
        Succeeded => "succeeded",
        /// The update failed.
        Failed => "failed",
        /// The device refused the update.
        Refused => "refused",
    }
}

api_enum! {
    /// How a planned wave was formed.
    WaveKind {
        /// The first devices, spread over sites.
        Canary => "canary",
        /// A cumulative share of the devices.
        Percent => "percent",
        /// The devices of one site (or of none).
        Site => "site",
    }
}

/// Which devices a rollout is for: exactly one of the three forms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Selector {
    /// `{"all": true}`: every active device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// `{"devices": [ids]}`: these active devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// `{"match": {"key": "value"}}`: active devices whose config, labels and site (as key
    /// `site`) have every pair.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<BTreeMap<String, String>>,
}

/// How a rollout's devices are split into waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveSpec {
    /// Devices in wave 0, spread over sites; 0 = no canary wave.
    #[serde(default = "default_canary")]
    #[cfg_attr(feature = "openapi", schema(default = 1))]
    pub canary: u32,
    /// Cumulative percentages of the devices after the canary, rising, ending at 100
    /// (default: one wave of 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Vec<u32>>,
    /// After the canary, one wave per site (sites by name; devices without a site last).
    #[serde(default)]
    pub per_site: bool,
}

fn default_canary() -> u32 {
    DEFAULT_CANARY
}

impl Default for WaveSpec {
    fn default() -> Self {
        Self {
            canary: DEFAULT_CANARY,
            percent: None,
            per_site: false,
        }
    }
}

/// Body of `POST /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRollout {
    /// SHA-256 of a stored bundle.
    pub bundle_sha256: String,
    /// Which devices.
    pub selector: Selector,
    /// How to split them into waves.
    #[serde(default)]
    pub waves: WaveSpec,
    /// Halt when more than this share (0-100) of the released devices failed (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold_percent: Option<u32>,
    /// Seconds a new slot has to pass its health gate (30 to 86400, default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_deadline_seconds: Option<u32>,
    /// Let devices go to an older version (admin only).
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Only plan: answer 200 with the waves; nothing is stored or sent.
    #[serde(default)]
    pub dry_run: bool,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    /// `rol_…`
    pub id: String,
    /// The bundle it installs.
    pub bundle_sha256: String,
    /// That bundle's version.
    pub version: String,
    /// Which devices it was created for.
    pub selector: Selector,
    /// The wave request.
    pub waves: WaveSpec,
    /// Number of (non-empty) waves planned.
    pub wave_count: u32,
    /// Waves released so far (waves `0..released_waves`).
    pub released_waves: u32,
    /// Selected devices left out because they already ran the target version.
    pub skipped: Vec<SkippedDevice>,
    /// Halt when more than this share of the released devices failed or refused.
    pub failure_threshold_percent: u32,
    /// Health gate deadline sent to the devices.
    pub health_deadline_seconds: u32,
    /// Admin-forced: devices may go to an older version.
    pub allow_downgrade: bool,
    /// Where it stands.
    pub state: RolloutState,
    /// Why it halted (or who aborted it).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub halt_reason: Option<String>,
    /// Audit actor that created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last state change.
    pub updated_at: Timestamp,
}

/// One device of a rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutDevice {
    /// The device.
    pub device_id: String,
    /// Its wave (0 = canary when there is one).
    pub wave: u32,
    /// The OS version it ran when the rollout was created.
    pub from_version: String,
    /// Where it stands.
    pub state: RolloutDeviceState,
    /// Why it failed or refused; empty otherwise.
    pub error: String,
    /// The bundle a rollback sent it back to.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub rollback_sha256: Option<String>,
    /// Last state change.
    pub updated_at: Timestamp,
}

/// A selected device a rollout leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedDevice {
    /// Device id.
    pub device_id: String,
    /// The version it runs (the target).
    pub version: String,
    /// Why.
    pub reason: String,
}

/// A rollout with its device counts, as listed and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutView {
    /// The rollout as stored.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Devices per state (every state, 0 included).
    pub counts: BTreeMap<String, u64>,
    /// Each wave: released or not, devices, devices per state.
    pub wave_summary: Vec<WaveSummary>,
    /// Each device with its live progress; only when one rollout is shown (not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<RolloutDeviceView>>,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveSummary {
    /// Index (0 first).
    pub index: u32,
    /// Whether it was released.
    pub released: bool,
    /// Its devices.
    pub devices: u64,
    /// Its devices per state.
    pub counts: BTreeMap<String, u64>,
}

/// One device of a shown rollout, with its live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutDeviceView {
    /// The device's row.
    #[serde(flatten)]
    pub device: RolloutDevice,
    /// Whether it is connected to the answering central now.
    pub online: bool,
    /// Its latest report about this rollout's bundle; `null` when it sent none here.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub progress: Option<DownloadProgress>,
    /// The OS version it last reported running; `null` without a report here.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub running_version: Option<String>,
}

/// A device's live update progress (from its latest heartbeat; memory only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DownloadProgress {
    /// The phase it reported.
    pub phase: UpdatePhase,
    /// The bundle it works on.
    pub bundle_sha256: String,
    /// Bytes of the bundle in place.
    pub bytes_done: u64,
    /// The bundle's size.
    pub bytes_total: u64,
    /// Bytes that crossed the network (the rest came from the running slot).
    pub bytes_fetched: u64,
    /// When central received the report.
    pub reported_at: Timestamp,
}

/// Answer holding one rollout (show, create, pause, resume, abort, rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutReply {
    /// The rollout, with its devices.
    pub rollout: RolloutView,
}

/// Answer to `GET /api/v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutList {
    /// Newest first, without their devices.
    pub rollouts: Vec<RolloutView>,
}

/// The waves a rollout request makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutPlan {
    /// Target version.
    pub version: String,
    /// Devices to update.
    pub device_count: u64,
    /// Non-empty waves in release order.
    pub waves: Vec<PlannedWave>,
    /// Selected devices already on the target version.
    pub skipped: Vec<SkippedDevice>,
}

/// One planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedWave {
    /// Index (0 first).
    pub index: u32,
    /// How it was formed.
    pub kind: WaveKind,
    /// For people: `canary`, `25%`, `site north`, `no site`.
    pub label: String,
    /// Its devices.
    pub devices: Vec<PlannedDevice>,
}

/// One device of a planned wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedDevice {
    /// Device id.
    pub device_id: String,
    /// Its site.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub site: Option<String>,
    /// Version it runs.
    pub from_version: String,
    /// Version it would get.
    pub to_version: String,
}

/// Answer to `POST /api/v1/rollouts` with `dry_run` (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutDryRun {
    /// Always true.
    pub dry_run: bool,
    /// What the rollout would do.
    pub plan: RolloutPlan,
}

/// Answer to `POST /api/v1/rollouts`: the plan of a dry run (200), or the rollout created (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum RolloutCreated {
    /// `dry_run` was set.
    DryRun(RolloutDryRun),
    /// Created, first wave released.
    Created(Box<RolloutReply>),
}
