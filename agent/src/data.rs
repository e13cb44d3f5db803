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

use serde::{Deserialize, Serialize};

pub use crate::config::DiskConfig;

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
pub use unlock::{
    crypto_erase, forget_previous_boot_chain, seal_for_next_uki, unlock_data, DataError,
};

/// Without TPM support there is no managed data partition to erase.
#[cfg(not(feature = "tpm"))]
pub fn crypto_erase(_cfg: &DiskConfig) -> Result<Vec<String>, std::io::Error> {
    Err(std::io::Error::other(
        "this cairn-agent was built without the `tpm` feature; it manages no data partition",
    ))
}

#[cfg(feature = "tpm")]
mod unlock {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use cairn_io::{FileError, PathContext};

    use cairn_disk::{
        CryptsetupOpen, DataUnlock, RecoveryKey, RecoveryReason, UnlockError, UnlockOutcome,
    };
    use cairn_io::{Tool, ToolError};
    use cairn_tpm::PcrSelection;

    use super::*;
    use crate::config::FieldError;

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
        #[error(transparent)]
        File(#[from] FileError),
        /// The `[disk]` section is unusable.
        #[error("agent config: {0}")]
        Config(#[from] FieldError),
        /// The crypto-erase could not destroy the data key.
        #[error(transparent)]
        Erase(#[from] cairn_disk::EraseError),
        /// The new slot's UKI is not one whose PCR 11 can be predicted.
        #[error("cannot predict PCR 11 of {path}: {source}; the new slot is not activated")]
        UkiPcr {
            /// The UKI.
            path: PathBuf,
            /// Why its sections do not parse.
            #[source]
            source: cairn_pe::PeError,
        },
    }

    fn flow(cfg: &DiskConfig, tcti: &str) -> Result<DataUnlock, DataError> {
        cfg.validate()?;
        let pcrs: PcrSelection = cfg
            .pcrs
            .parse()
            .map_err(|e| FieldError::new("disk.pcrs", format!("{e}")))?;
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
        let bytes = std::fs::read(uki).at("read", uki)?;
        let pcr11 = cairn_pe::predict_uki_pcr11(&bytes).map_err(|source| DataError::UkiPcr {
            path: uki.into(),
            source,
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

    /// Crypto-erase on central's order: the sealed copies of the disk key are overwritten and
    /// removed, and the disk key's LUKS keyslot is killed, so the data partition never unlocks
    /// by TPM again (only the escrowed recovery key opens it). Returns what was destroyed.
    pub fn crypto_erase(cfg: &DiskConfig) -> Result<Vec<String>, DataError> {
        let _span =
            tracing::info_span!("data.crypto_erase", device = %cfg.device.display()).entered();
        let report = cairn_disk::crypto_erase(&cfg.device, &cfg.sealed_key)?;
        Ok(vec![format!("data key: {report}")])
    }

    /// Run the early-boot flow (see the module docs). `Ok` means the volume is open as
    /// `/dev/mapper/<mapper_name>` with a file system on it.
    pub fn unlock_data(cfg: &DiskConfig, tcti: &str) -> Result<LockStatus, DataError> {
        let _span = tracing::info_span!("data.unlock", device = %cfg.device.display()).entered();
        let flow = flow(cfg, tcti)?;
        if let Some(dir) = cfg.sealed_key.parent() {
            std::fs::create_dir_all(dir).at("create the directory", dir)?;
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
        if let Err(e) = Tool::new("udevadm")
            .purpose("wait for udev")
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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at("create the directory", dir)?;
        }
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        Ok(std::fs::write(path, json).at("write", path)?)
    }

    fn blank(device: &Path) -> Result<bool, DataError> {
        let out = Tool::new("blkid")
            .purpose("probe the data volume")
            .arg("-p")
            .arg(device)
            .accept_codes(&[2])
            .timeout(Duration::from_secs(30))
            .run()?;
        Ok(out.code == 2)
    }

    fn make_filesystem(device: &Path) -> Result<(), DataError> {
        let _span = tracing::info_span!("data.mkfs", device = %device.display()).entered();
        Tool::new("mkfs.ext4")
            .purpose("create the data file system")
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
        std::fs::create_dir_all(dir).at("create the directory", dir)?;
        Tool::new("mount")
            .purpose("mount")
            .arg("-o")
            .arg(options)
            .arg(device)
            .arg(dir)
            .timeout(Duration::from_secs(60))
            .run()?;
        let result = f(dir);
        let unmounted = Tool::new("umount")
            .purpose("unmount")
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
                if let Some(dir) = path.parent() {
                    cairn_io::create_private_dir(dir)?;
                    std::fs::set_permissions(
                        dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                    .at("restrict the directory", dir)?;
                }
                cairn_io::write_atomic(&path, &json, 0o600)?;
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
                let bytes = std::fs::read(&path).at("read", &path)?;
                if bytes.len() > 4096 {
                    let problem =
                        format!("larger than 4 KiB; {RECOVERY_KEY_FILE} should hold only the key");
                    return Err(FileError::new(
                        "read",
                        path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
                    )
                    .into());
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
