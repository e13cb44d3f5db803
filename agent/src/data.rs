//! The encrypted data partition, early in boot (`cairn-agent unlock`, before `data.mount`).
//!
//! - First boot: grow the partition to the end of the disk, LUKS2-format it with a 256-bit key
//!   sealed in the TPM to the boot chain ([`cairn_disk::DataUnlock`]), create ext4, and leave the
//!   recovery key on the new file system for the running agent to escrow to central.
//! - Later boots: unseal and open.
//! - Unseal refused (other TPM, changed boot chain): nothing is formatted over; if a recovery stick
//!   is present (a FAT file system labelled `CAIRN-KEY` holding `cairn-recovery-key.txt`,
//!   the key from `cairnctl device recovery-key`), recover with it and re-seal to this boot chain;
//!   otherwise the data stays locked, the reason (which PCRs changed) goes to the console and to
//!   `lock_status`, and the unit fails so nothing that needs `/data` starts.
//!
//! Why the recovery key is parked on the data partition rather than sent at once: the network and
//! the device identity (also on `/data`) are not up this early. The file is inside the encrypted
//! volume and deleted once central has the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    pub fn validate(&self) -> Result<(), String> {
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
                return Err(format!("`{name}` must be an absolute path, got {path:?}"));
            }
        }
        if self.pending_recovery_key.is_absolute()
            || self
                .pending_recovery_key
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(
                "`disk.pending_recovery_key` must be relative to `disk.mount_point`, without `..`"
                    .into(),
            );
        }
        if self.mapper_name.is_empty()
            || !self
                .mapper_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("`disk.mapper_name` must be letters, digits, '-' or '_'".into());
        }
        if self.recovery_label.is_empty() || self.recovery_label.len() > 11 {
            return Err("`disk.recovery_label` must be 1-11 characters (a FAT label)".into());
        }
        if self.pcrs.trim().is_empty()
            || !self
                .pcrs
                .split(',')
                .all(|p| p.trim().parse::<u8>().is_ok_and(|n| n < 24))
        {
            return Err(format!(
                "`disk.pcrs` must list PCR numbers 0-23 separated by ',', got {:?}",
                self.pcrs
            ));
        }
        Ok(())
    }
}

/// The recovery key waiting on the data partition for escrow (JSON, 0600).
#[derive(Serialize, Deserialize)]
pub struct PendingRecoveryKey {
    /// `dddddd-dddddd-...`.
    pub recovery_key: String,
    /// LUKS2 UUID of the data partition.
    pub luks_uuid: String,
}

impl std::fmt::Debug for PendingRecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRecoveryKey")
            .field("luks_uuid", &self.luks_uuid)
            .finish_non_exhaustive()
    }
}

/// What `cairn-agent unlock` did, as written to `lock_status` (no secret in it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockStatus {
    /// `formatted`, `unlocked`, `recovered` or `locked`.
    pub state: String,
    /// Why it is locked (or how it was recovered).
    pub reason: Option<String>,
    /// For a changed boot chain: each PCR with its sealed and current value.
    pub changed_pcrs: Vec<String>,
}

#[cfg(feature = "tpm")]
pub use unlock::{forget_previous_boot_chain, seal_for_next_uki, unlock_data, DataError};

#[cfg(feature = "tpm")]
mod unlock {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::Duration;

    use cairn_disk::{
        CryptsetupOpen, DataUnlock, RecoveryKey, RecoveryReason, ToolCommand, ToolError,
        UnlockError, UnlockOutcome,
    };
    use cairn_tpm::PcrSelection;

    use super::*;

    /// Name of the key file on a recovery stick.
    pub const RECOVERY_KEY_FILE: &str = "cairn-recovery-key.txt";

    /// Why `cairn-agent unlock` did not leave an opened data volume.
    #[derive(Debug, thiserror::Error)]
    pub enum DataError {
        /// The TPM refused the key and no usable recovery stick was present: the data stays locked.
        /// It carries what was written to `lock_status` (the reason and the changed PCRs).
        #[error("data partition LOCKED: {}; get the key with `cairnctl device recovery-key <id>` (admin), put it in {RECOVERY_KEY_FILE} on a FAT stick labelled CAIRN-KEY and reboot with the stick in", .0.reason.as_deref().unwrap_or("unknown reason"))]
        Locked(LockStatus),
        /// The unlock or recovery flow failed (TPM unreachable, cryptsetup error).
        #[error(transparent)]
        Unlock(#[from] UnlockError),
        /// A tool (mkfs, mount) failed.
        #[error(transparent)]
        Tool(#[from] ToolError),
        /// A file could not be written or read.
        #[error("{what} {path}: {source}")]
        Io {
            /// What was being done.
            what: &'static str,
            /// The file.
            path: PathBuf,
            /// The failure.
            source: std::io::Error,
        },
        /// The configuration is unusable.
        #[error("agent config: {0}")]
        Config(String),
    }

    fn flow(cfg: &DiskConfig, tcti: &str) -> Result<DataUnlock, DataError> {
        cfg.validate().map_err(DataError::Config)?;
        let pcrs: PcrSelection = cfg
            .pcrs
            .parse()
            .map_err(|e| DataError::Config(format!("disk.pcrs: {e}")))?;
        Ok(DataUnlock {
            tcti: tcti.to_string(),
            device: cfg.device.clone(),
            sealed_key: cfg.sealed_key.clone(),
            pcrs,
            mapper_name: cfg.mapper_name.clone(),
        })
    }

    /// Before activating an OS update: seal the disk key to the boot chain of `uki` (the new
    /// slot's UKI, already on the ESP) as `<sealed_key>.next`, PCR 7 unchanged. Without this the
    /// new slot would boot with its data locked.
    pub fn seal_for_next_uki(cfg: &DiskConfig, tcti: &str, uki: &Path) -> Result<(), DataError> {
        let _span = tracing::info_span!("data.seal_for_next_boot", uki = %uki.display()).entered();
        let bytes = std::fs::read(uki).map_err(|source| DataError::Io {
            what: "read",
            path: uki.into(),
            source,
        })?;
        let pcr11 = cairn_pe::predict_uki_pcr11(&bytes).map_err(|e| {
            DataError::Config(format!("cannot predict PCR 11 of {}: {e}", uki.display()))
        })?;
        flow(cfg, tcti)?.seal_for_next_boot(&[(cairn_pe::UKI_PCR, pcr11)])?;
        Ok(())
    }

    /// After the new slot is committed: the old boot chain's copy of the disk key is deleted, so
    /// the old OS can no longer open the data partition. Returns whether a copy was deleted.
    pub fn forget_previous_boot_chain(cfg: &DiskConfig, tcti: &str) -> Result<bool, DataError> {
        let _span = tracing::info_span!("data.forget_previous_boot_chain").entered();
        Ok(flow(cfg, tcti)?.forget_previous_boot_chain()?)
    }

    /// Run the early-boot flow (see the module docs). `Ok` means the volume is open as
    /// `/dev/mapper/<mapper_name>` with a file system on it.
    pub fn unlock_data(cfg: &DiskConfig, tcti: &str) -> Result<LockStatus, DataError> {
        let _span = tracing::info_span!("data.unlock", device = %cfg.device.display()).entered();
        let flow = flow(cfg, tcti)?;
        if let Some(dir) = cfg.sealed_key.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
                what: "create",
                path: dir.into(),
                source,
            })?;
        }
        if cfg.grow && !cairn_disk::is_luks(&cfg.device).map_err(UnlockError::from)? {
            match cairn_disk::grow_data_partition(&cfg.device) {
                Ok(outcome) => {
                    tracing::info!(?outcome, "data partition sized to the disk");
                    // partx made udev re-read the partition: its by-partlabel link goes away
                    // and comes back. Wait for that before using the path again.
                    if matches!(outcome, cairn_disk::GrowOutcome::Grown { .. }) {
                        settle_udev(&cfg.device);
                    }
                }
                // A smaller data partition still works: never block the first boot on it.
                Err(e) => {
                    tracing::warn!(error = %e, "could not grow the data partition; using it as it is")
                }
            }
        }
        let status = match flow.unlock(&CryptsetupOpen)? {
            UnlockOutcome::Formatted {
                opened,
                recovery_key,
            } => {
                make_filesystem(&opened)?;
                park_recovery_key(cfg, &opened, &recovery_key)?;
                status("formatted", None, vec![])
            }
            UnlockOutcome::Opened {
                opened,
                new_recovery_key,
            } => {
                // A power cut between luksFormat and mkfs leaves an empty volume: finish the job.
                if blank(&opened)? {
                    tracing::warn!("the opened data volume has no file system (first boot was cut short): creating it");
                    make_filesystem(&opened)?;
                }
                if let Some(key) = new_recovery_key {
                    park_recovery_key(cfg, &opened, &key)?;
                }
                status("unlocked", None, vec![])
            }
            UnlockOutcome::NeedsRecovery(reason) => {
                let changed = match &reason {
                    RecoveryReason::PcrMismatch { changed_pcrs } => {
                        changed_pcrs.iter().map(ToString::to_string).collect()
                    }
                    _ => vec![],
                };
                match read_recovery_stick(cfg)? {
                    Some(key) => {
                        flow.recover(&key, &CryptsetupOpen)?;
                        status(
                            "recovered",
                            Some(format!(
                                "recovered with the key on the {} stick after: {reason}",
                                cfg.recovery_label
                            )),
                            changed,
                        )
                    }
                    None => {
                        let locked = status("locked", Some(reason.to_string()), changed);
                        write_status(cfg, &locked)?;
                        return Err(DataError::Locked(locked));
                    }
                }
            }
        };
        write_status(cfg, &status)?;
        Ok(status)
    }

    /// Let udev finish the events of a partition change and wait (up to 10 s) for `device`.
    fn settle_udev(device: &Path) {
        if let Err(e) = ToolCommand::new("udevadm", "wait for udev")
            .arg("settle")
            .arg("--timeout=10")
            .timeout(Duration::from_secs(15))
            .run()
        {
            tracing::warn!(error = %e, "udevadm settle failed; waiting for the device link anyway");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !device.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(state: &str, reason: Option<String>, changed_pcrs: Vec<String>) -> LockStatus {
        LockStatus {
            state: state.into(),
            reason,
            changed_pcrs,
        }
    }

    fn write_status(cfg: &DiskConfig, status: &LockStatus) -> Result<(), DataError> {
        let path = &cfg.lock_status;
        let io = |source| DataError::Io {
            what: "write",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        std::fs::write(path, json).map_err(io)
    }

    fn blank(device: &Path) -> Result<bool, DataError> {
        let out = ToolCommand::new("blkid", "probe the data volume")
            .arg("-p")
            .arg(device)
            .accept_codes(&[2])
            .timeout(Duration::from_secs(30))
            .run()?;
        Ok(out.code == 2)
    }

    fn make_filesystem(device: &Path) -> Result<(), DataError> {
        let _span = tracing::info_span!("data.mkfs", device = %device.display()).entered();
        ToolCommand::new("mkfs.ext4", "create the data file system")
            .arg("-q")
            .arg("-L")
            .arg("cairn-data")
            .arg("-E")
            .arg("lazy_itable_init=1,lazy_journal_init=1")
            .arg(device)
            .timeout(Duration::from_secs(300))
            .run()?;
        Ok(())
    }

    /// Mount `device` at a private directory under /run for the length of `f`.
    fn with_mounted<T>(
        device: &Path,
        dir: &Path,
        options: &str,
        f: impl FnOnce(&Path) -> Result<T, DataError>,
    ) -> Result<T, DataError> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            what: "create",
            path: dir.into(),
            source,
        })?;
        ToolCommand::new("mount", "mount")
            .arg("-o")
            .arg(options)
            .arg(device)
            .arg(dir)
            .timeout(Duration::from_secs(60))
            .run()?;
        let result = f(dir);
        let unmounted = ToolCommand::new("umount", "unmount")
            .arg(dir)
            .timeout(Duration::from_secs(60))
            .run();
        let value = result?;
        unmounted?;
        Ok(value)
    }

    /// Write the recovery key (0600, fsynced) onto the new file system for the agent to escrow.
    fn park_recovery_key(
        cfg: &DiskConfig,
        opened: &Path,
        key: &RecoveryKey,
    ) -> Result<(), DataError> {
        let pending = PendingRecoveryKey {
            recovery_key: key.expose().to_string(),
            luks_uuid: cairn_disk::luks_uuid(&cfg.device).map_err(UnlockError::from)?,
        };
        let json = serde_json::to_vec(&pending).expect("pending key serializes");
        with_mounted(
            opened,
            Path::new("/run/cairn/data-setup"),
            "nodev,nosuid,noexec",
            |root| {
                let path = root.join(&cfg.pending_recovery_key);
                let io = |what: &'static str| {
                    let path = path.clone();
                    move |source| DataError::Io { what, path, source }
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
                    std::fs::set_permissions(
                        dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                    .map_err(io("restrict the directory of"))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io("create"))?;
                file.write_all(&json).map_err(io("write"))?;
                file.sync_all().map_err(io("sync"))?;
                tracing::info!("recovery key parked on the data partition until central has it");
                Ok(())
            },
        )
    }

    /// The recovery key on a stick labelled `recovery_label`, if one is plugged in. udev may still
    /// be creating the by-label link this early: wait up to 5 s for it.
    fn read_recovery_stick(cfg: &DiskConfig) -> Result<Option<RecoveryKey>, DataError> {
        let link = Path::new("/dev/disk/by-label").join(&cfg.recovery_label);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !link.exists() {
            if std::time::Instant::now() >= deadline {
                tracing::info!(label = %cfg.recovery_label, "no recovery stick present");
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _span = tracing::info_span!("data.recovery_stick", stick = %link.display()).entered();
        let text = with_mounted(
            &link,
            Path::new("/run/cairn/recovery-stick"),
            "ro,nodev,nosuid,noexec",
            |root| {
                let path = root.join(RECOVERY_KEY_FILE);
                let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                    what: "read",
                    path: path.clone(),
                    source,
                })?;
                if bytes.len() > 4096 {
                    let problem =
                        format!("larger than 4 KiB; {RECOVERY_KEY_FILE} should hold only the key");
                    return Err(DataError::Io {
                        what: "read",
                        path,
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
                    });
                }
                Ok(bytes)
            },
        );
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "the recovery stick could not be read");
                return Ok(None);
            }
        };
        match RecoveryKey::parse(&String::from_utf8_lossy(&text)) {
            Ok(key) => Ok(Some(key)),
            Err(e) => {
                tracing::warn!(error = %e, "the recovery stick does not hold a well-formed recovery key");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
            let problem = bad.validate().unwrap_err();
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
