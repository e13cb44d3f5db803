//! Devices (`/api/v1/devices...`): the registry record, its host metrics, and the calls that
//! change a device (approve, revoke, config, site, labels) or read its recovery key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::wire_enum::api_enum;
use crate::Timestamp;

api_enum! {
    /// Where a device stands in the registry.
    DeviceStatus {
        /// Enrolled, waiting for an operator's approval.
        Pending => "pending",
        /// Approved: holds a certificate and may call central.
        Active => "active",
        /// Revoked: refused on every call.
        Revoked => "revoked",
    }
}

api_enum! {
    /// Where a device keeps its private key.
    KeyStorage {
        /// In a TPM central verified at enrollment: EK certificate from a trusted vendor CA,
        /// attestation key, the key certified by it, ActivateCredential answered.
        Tpm => "tpm",
        /// The agent says the key is in a TPM, but central could not prove it (no EK
        /// certificate, or its vendor CA is not trusted); admitted only by tokens that allow
        /// software keys.
        TpmUnverified => "tpm-unverified",
        /// In software, on the encrypted data partition.
        Software => "software",
    }
}

/// A device in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    /// `dev_…`, also in the device certificate.
    pub id: String,
    /// Pending, active or revoked.
    pub status: DeviceStatus,
    /// DMI serial reported at enrollment.
    pub serial: String,
    /// SHA-256 (hex) of the TPM endorsement key central verified at enrollment (from its EK
    /// certificate); empty when no TPM was proven.
    pub tpm_ek_sha256: String,
    /// Host name reported by the agent.
    pub hostname: String,
    /// Where the device key lives.
    pub key_storage: KeyStorage,
    /// Agent version last reported.
    pub agent_version: String,
    /// OS version last reported.
    pub os_version: String,
    /// The enrollment token it used.
    pub token_id: String,
    /// First enrollment.
    pub created_at: Timestamp,
    /// When it became active.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub approved_at: Option<Timestamp>,
    /// Last heartbeat: live when its stream is on the answering central, else as written (when
    /// the stream opened, every 5 minutes while open, and when it ended).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_seen_at: Option<Timestamp>,
    /// Whether a sync stream is open to the answering central now.
    pub online: bool,
    /// Serial (hex) of the latest certificate issued.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cert_serial: Option<String>,
    /// Expiry of the latest certificate issued.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cert_expires_at: Option<Timestamp>,
    /// Revision of its desired state.
    pub desired_revision: u64,
    /// Operator-set configuration pushed to the device (`PUT /api/v1/devices/{id}/config`).
    pub config: BTreeMap<String, String>,
    /// The OS update a rollout set for it; `null`: keep what runs.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub desired_os: Option<DesiredOs>,
    /// The site it belongs to (see `/api/v1/sites`), if assigned.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub site: Option<String>,
    /// Operator-set labels (e.g. `gpu=yes`) deployments select devices by.
    pub labels: BTreeMap<String, String>,
    /// When an admin ordered its crypto-erase (`POST /api/v1/devices/{id}/wipe`); the device
    /// destroys its data key on its next contact.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub wipe_requested_at: Option<Timestamp>,
    /// When the device reported its data key destroyed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub wiped_at: Option<Timestamp>,
}

/// The OS a rollout wants a device to run (sent to it as `DesiredState.os`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredOs {
    /// Manifest version of the bundle.
    pub version: String,
    /// SHA-256 of the bundle file.
    pub bundle_sha256: String,
    /// Its size in bytes.
    pub bundle_size: u64,
    /// Install even when older than what runs (admin-forced, or a rollback).
    pub allow_downgrade: bool,
    /// The rollout that set it.
    pub rollout_id: String,
    /// Seconds the new slot has to pass the health gate after boot.
    pub health_deadline_seconds: u32,
}

/// A device with the latest host metrics it reported to the answering central.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceWithHost {
    /// The registry record.
    #[serde(flatten)]
    pub device: Device,
    /// Its latest host metrics; `null` before its first report to this central.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub host: Option<HostMetrics>,
    /// Whether its boot chain is proven by its TPM (absent from older centrals).
    #[serde(default)]
    pub attestation: crate::AttestationSummary,
}

/// A device's latest host metrics (from its heartbeats; memory only, not stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    /// When central received them.
    pub reported_at: Timestamp,
    /// Busy share of all CPUs since the previous sample (0-100, one decimal); `null` on the
    /// first sample.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cpu_percent: Option<f64>,
    /// 1-minute load average.
    pub load1: f64,
    /// Memory size.
    pub memory_total_bytes: u64,
    /// Memory available to new work.
    pub memory_available_bytes: u64,
    /// Share of memory in use (one decimal); `null` when the size is unknown.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub memory_used_percent: Option<f64>,
    /// Watched file systems.
    pub filesystems: Vec<FilesystemUsage>,
    /// The fullest file system's share in use; `null` without file systems.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub disk_used_percent: Option<f64>,
    /// Every readable temperature sensor.
    pub temperatures: Vec<TemperatureReading>,
    /// The hottest sensor; `null` without sensors.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub max_temperature_celsius: Option<f64>,
    /// Seconds since the device booted.
    pub uptime_seconds: u64,
    /// The device's clock minus central's when the heartbeat arrived, in milliseconds (the
    /// network delay included; negative: behind); `null` when the agent did not send its time.
    /// Devices correct offsets beyond a few seconds from central's signed time.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub clock_offset_ms: Option<i64>,
}

/// One file system of a device's host metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FilesystemUsage {
    /// Mount point.
    pub mount_point: String,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Size.
    pub total_bytes: u64,
    /// Share in use (one decimal); `null` when the size is 0.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub used_percent: Option<f64>,
}

/// One temperature sensor reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemperatureReading {
    /// Sensor name (thermal zone or hwmon input, with its type or label).
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f64,
}

/// Answer to `GET /api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    /// Every device.
    pub devices: Vec<DeviceWithHost>,
}

/// Answer to `GET /api/v1/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceDetail {
    /// The device and its host metrics.
    pub device: DeviceWithHost,
    /// Its newest events (up to 20), oldest first.
    pub events: Vec<Event>,
}

/// Answer to the calls that change a device (approve, revoke, config, site, labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceReply {
    /// The device after the change.
    pub device: Device,
}

/// Answer to `GET /api/v1/devices/{id}/recovery-key` (admin; every read is audited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryKey {
    /// The device.
    pub device_id: String,
    /// LUKS2 UUID of the data partition the key opens.
    pub luks_uuid: String,
    /// The recovery key, `dddddd-dddddd-…` (8 groups).
    pub recovery_key: String,
    /// When central stored it, in Unix seconds (unlike the other times of the API).
    pub stored_at: i64,
}

/// Body of `PUT /api/v1/devices/{id}/config`: replaces the whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetDeviceConfig {
    /// Up to 256 keys of 1-128 bytes with values up to 4096 bytes. `cairn.ntp_servers` (e.g.
    /// a site's own NTP servers, separated by spaces or commas) is given to the device's
    /// systemd-timesyncd.
    pub config: BTreeMap<String, String>,
}

/// Body of `PUT /api/v1/devices/{id}/site`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetDeviceSite {
    /// The site (it must exist), or `null` for none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub site: Option<String>,
}

/// Body of `PUT /api/v1/devices/{id}/labels`: replaces every label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetDeviceLabels {
    /// The labels, e.g. `{"gpu": "yes"}`.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_reads_unknown_fields_and_values() {
        let body = r#"{"device":{"id":"dev_1","status":"quarantined","serial":"S1",
            "tpm_ek_sha256":"ab","hostname":"h","key_storage":"tpm","agent_version":"0.1",
            "os_version":"1","token_id":"tok_1","created_at":"2025-01-01T00:00:00Z",
            "approved_at":null,"last_seen_at":null,"online":false,"cert_serial":null,
            "cert_expires_at":null,"desired_revision":3,"config":{},"desired_os":null,
            "site":"berlin","labels":{},"paint":"red"}}"#;
        let reply: DeviceReply = serde_json::from_str(body).unwrap();
        assert_eq!(
            reply.device.status,
            DeviceStatus::Other("quarantined".into())
        );
        assert_eq!(reply.device.key_storage, KeyStorage::Tpm);
        assert_eq!(reply.device.desired_revision, 3);
        assert_eq!(reply.device.site.as_deref(), Some("berlin"));
    }

    #[test]
    fn host_sits_beside_the_device_fields() {
        let device: DeviceReply = serde_json::from_str(
            r#"{"device":{"id":"dev_1","status":"active","serial":"","tpm_ek_sha256":"",
            "hostname":"","key_storage":"software","agent_version":"","os_version":"",
            "token_id":"","created_at":"2025-01-01T00:00:00Z","approved_at":null,
            "last_seen_at":null,"online":true,"cert_serial":null,"cert_expires_at":null,
            "desired_revision":0,"config":{},"desired_os":null,"site":null,"labels":{}}}"#,
        )
        .unwrap();
        let with_host = DeviceWithHost {
            attestation: Default::default(),
            device: device.device,
            host: None,
        };
        let value = serde_json::to_value(&with_host).unwrap();
        assert_eq!(value["id"], "dev_1");
        assert!(value["host"].is_null());
        assert!(value.get("device").is_none());
    }
}
