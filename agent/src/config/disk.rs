//! `[disk]`: the encrypted data partition and where its sealed key is.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// `[disk]` in the agent config: where the data partition and its sealed key are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Manage the data partition (`cairn-agent unlock`, escrow). Off outside the device image.
    pub enabled: bool,
    /// The data partition.
    pub device: PathBuf,
    /// The TPM-sealed disk key (on the ESP: useless without this TPM and boot chain).
    pub sealed_key: PathBuf,
    /// PCRs (SHA-256 bank) the disk key is sealed to: 7 = Secure Boot policy and the certificate
    /// that verified the boot loader, 11 = the UKI's sections as systemd-stub measures them.
    pub pcrs: String,
    /// Device-mapper name of the opened volume.
    pub mapper_name: String,
    /// Where `data.mount` mounts the opened volume (the agent looks for the pending recovery key
    /// under it).
    pub mount_point: PathBuf,
    /// The recovery key waiting for escrow, relative to `mount_point`.
    pub pending_recovery_key: PathBuf,
    /// File-system label of a recovery stick.
    pub recovery_label: String,
    /// Grow the partition to the end of the disk on first boot.
    pub grow: bool,
    /// JSON written at every unlock with the outcome (for people and health checks).
    pub lock_status: PathBuf,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            enabled: false,
            device: "/dev/disk/by-partlabel/data".into(),
            sealed_key: "/efi/cairn/data-key.sealed".into(),
            pcrs: "7,11".into(),
            mapper_name: "cairn-data".into(),
            mount_point: "/data".into(),
            pending_recovery_key: "cairn/recovery-key.pending".into(),
            recovery_label: "CAIRN-KEY".into(),
            grow: true,
            lock_status: "/run/cairn/data-lock.json".into(),
        }
    }
}

impl DiskConfig {
    /// Where the running agent finds a recovery key still to escrow.
    pub fn pending_recovery_key_path(&self) -> PathBuf {
        self.mount_point.join(&self.pending_recovery_key)
    }

    /// Check the fields; the message names the field and what is allowed.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !self.enabled {
            return Ok(());
        }
        for (name, path) in [
            ("disk.device", &self.device),
            ("disk.sealed_key", &self.sealed_key),
            ("disk.mount_point", &self.mount_point),
            ("disk.lock_status", &self.lock_status),
        ] {
            if !path.is_absolute() {
                return Err(FieldError::new(
                    name,
                    format!("must be an absolute path, got {path:?}"),
                ));
            }
        }
        if self.pending_recovery_key.is_absolute()
            || self
                .pending_recovery_key
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(FieldError::new(
                "disk.pending_recovery_key",
                "must be relative to `disk.mount_point`, without `..`",
            ));
        }
        if self.mapper_name.is_empty()
            || !self
                .mapper_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(FieldError::new(
                "disk.mapper_name",
                "must be letters, digits, '-' or '_'",
            ));
        }
        if self.recovery_label.is_empty() || self.recovery_label.len() > 11 {
            return Err(FieldError::new(
                "disk.recovery_label",
                "must be 1-11 characters (a FAT label)",
            ));
        }
        if self.pcrs.trim().is_empty()
            || !self
                .pcrs
                .split(',')
                .all(|p| p.trim().parse::<u8>().is_ok_and(|n| n < 24))
        {
            return Err(FieldError::new(
                "disk.pcrs",
                format!(
                    "must list PCR numbers 0-23 separated by ',', got {:?}",
                    self.pcrs
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        let cfg = DiskConfig {
            enabled: true,
            ..DiskConfig::default()
        };
        cfg.validate().unwrap();
        assert_eq!(
            cfg.pending_recovery_key_path(),
            Path::new("/data/cairn/recovery-key.pending")
        );
        for (edit, field) in [
            (
                Box::new(|c: &mut DiskConfig| c.recovery_label = "CAIRN-RECOVERY".into())
                    as Box<dyn Fn(&mut DiskConfig)>,
                "recovery_label",
            ),
            (
                Box::new(|c: &mut DiskConfig| c.pcrs = "7,99".into()),
                "pcrs",
            ),
            (
                Box::new(|c: &mut DiskConfig| c.pending_recovery_key = "../escape".into()),
                "pending_recovery_key",
            ),
            (
                Box::new(|c: &mut DiskConfig| c.device = "relative".into()),
                "disk.device",
            ),
            (
                Box::new(|c: &mut DiskConfig| c.mapper_name = "a b".into()),
                "mapper_name",
            ),
        ] {
            let mut bad = cfg.clone();
            edit(&mut bad);
            let problem = bad.validate().unwrap_err().to_string();
            assert!(problem.contains(field), "{problem} should name {field}");
        }
        // Disabled: nothing is checked (the fields are unused).
        let off = DiskConfig {
            recovery_label: String::new(),
            ..DiskConfig::default()
        };
        off.validate().unwrap();
    }
}
