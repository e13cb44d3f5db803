//! Remote attestation of devices (`/api/v1/devices/{id}/attestation...`): whether a device's
//! last TPM2_Quote proved the boot chain central expects, why not, and the references it is
//! compared with (firmware values pinned on first use, UKI values per OS version).

use serde::{Deserialize, Serialize};

use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// What central knows of a device's boot chain.
    AttestationState {
        /// Its latest quote (within two attestation intervals) matched what central expects.
        Verified => "verified",
        /// Its latest quote did not match: the device is quarantined (no new desired state)
        /// until an admin accepts the new values or it boots the expected chain again.
        Failed => "failed",
        /// It was verified, but no quote came within two attestation intervals.
        Stale => "stale",
        /// It has a proven TPM but has not answered a quote yet.
        Pending => "pending",
        /// It has no TPM central proved at enrollment, so it cannot attest.
        Unsupported => "unsupported",
    }
}

/// A device's attestation state, as shown in device lists and details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestationSummary {
    /// Verified, failed, stale, pending or unsupported.
    pub state: AttestationState,
    /// For `failed`: which PCR and which event ("PCR 7: Secure Boot is off (...)").
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub detail: Option<String>,
    /// When a quote last verified.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub verified_at: Option<Timestamp>,
}

impl Default for AttestationSummary {
    fn default() -> Self {
        AttestationSummary {
            state: AttestationState::Unsupported,
            detail: None,
            verified_at: None,
        }
    }
}

/// A firmware PCR central pinned for a device at its first attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PinnedPcr {
    /// PCR index (0, 2 or 7).
    pub pcr: u8,
    /// How many measurements make its value.
    pub events: u32,
}

/// A UKI PCR 11 value central accepts for one OS version of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UkiValue {
    /// The OS version.
    pub os_version: String,
    /// Hex SHA-256 PCR 11 value systemd-stub measures for that UKI (before boot phases).
    pub pcr11: String,
    /// `bundle` (predicted from an uploaded bundle), `learned` (first use, or accepted) or
    /// `pending` (measured by a failed boot, not accepted).
    pub source: String,
}

/// Answer to `GET /api/v1/devices/{id}/attestation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceAttestation {
    /// The device.
    pub device_id: String,
    /// Its state.
    pub summary: AttestationSummary,
    /// When its last quote was appraised.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub checked_at: Option<Timestamp>,
    /// Seconds between quotes (central's `attestation_interval_secs`).
    pub interval_seconds: u64,
    /// Whether central requires Secure Boot on (PCR 7).
    pub require_secure_boot: bool,
    /// The firmware PCRs pinned for it; empty until its first verified quote or after a reset.
    pub pinned: Vec<PinnedPcr>,
    /// UKI values accepted for the OS versions it ran or may run.
    pub uki: Vec<UkiValue>,
    /// Whether a failed boot's measurements wait to be accepted
    /// (`POST /api/v1/devices/{id}/attestation/accept`).
    pub acceptable: bool,
    /// The OS version of its last verified quote: a later quote must name it, or the target
    /// or starting version of its latest rollout. `null` until then, or after a reset.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub os_version: Option<String>,
    /// What its failed boot measured, which an accept would pin; `null` when nothing waits.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub pending: Option<PendingValues>,
}

/// What a device's failed boot measured, for an admin to review before accepting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingValues {
    /// Firmware PCRs (of 0, 2, 7) whose measurements differ from the pinned ones (every
    /// measured one when none is pinned).
    pub changed_pcrs: Vec<u8>,
    /// The UKI value it measured (source `pending`), with the OS version it named.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub uki: Option<UkiValue>,
}
