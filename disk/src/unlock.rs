//! The data-partition unlock flow at boot: TPM + LUKS2 together.
//!
//! - First boot (the device is not LUKS yet, and blank): make a disk key and a recovery key,
//!   seal the disk key in the TPM to the configured PCRs, write the sealed blob (0600, atomic) to
//!   the given path, format LUKS2 with both keys, open. The caller creates the file system and
//!   escrows the recovery key ([`UnlockOutcome::Formatted`]).
//! - Later boots: unseal, open ([`UnlockOutcome::Opened`]).
//! - Unseal refused (boot chain changed, other TPM, blob missing or damaged, key no longer
//!   matching): [`UnlockOutcome::NeedsRecovery`] saying why, and the disk is not written to.
//! - Recovery ([`DataUnlock::recover`]): with the escrowed recovery key, a new disk key replaces
//!   keyslot 0 and is sealed to the current boot chain.
//!
//! The sealed blob is useless without this TPM and this boot chain, so it may live on the ESP or
//! another unencrypted area. Every step is ordered so that a power cut leaves a state the next
//! boot handles: the blob is written before the disk is formatted (a blob next to a disk that is
//! not LUKS is simply replaced), and during recovery the recovery key keeps working throughout.
//!
//! All calls block on the TPM and cryptsetup: from async code run them in `spawn_blocking`.

use std::path::{Path, PathBuf};

use cairn_tpm::{
    seal_secret, unseal_secret, PcrChange, PcrSelection, SealedSecret, TpmError, UnsealError,
};

use crate::keys::{generate_disk_key, generate_recovery_key, DiskKey, KeyError, RecoveryKey};
use crate::luks::{self, LuksError, RECOVERY_KEY_SLOT};

/// How the LUKS device is opened: device-mapper on a device, something else where it cannot run
/// (host tests check the key with `--test-passphrase` instead).
pub trait OpenLuks {
    /// Open `device` with `key` as `name`; return the path of the opened block device.
    ///
    /// # Errors
    /// [`LuksError::KeyRejected`] when the key does not open it, other [`LuksError`]s.
    fn open(&self, device: &Path, key: &DiskKey, name: &str) -> Result<PathBuf, LuksError>;

    /// When `device` is already open as `name` (the agent restarted after unlocking): the opened
    /// path. The flow then neither unseals again nor opens. The default says "not open".
    ///
    /// # Errors
    /// [`LuksError::MappingInUse`] when `name` maps another device, other [`LuksError`]s.
    fn already_open(&self, device: &Path, name: &str) -> Result<Option<PathBuf>, LuksError> {
        let _ = (device, name);
        Ok(None)
    }
}

/// The real [`OpenLuks`]: `cryptsetup open` to `/dev/mapper/<name>` ([`crate::open_data`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptsetupOpen;

impl OpenLuks for CryptsetupOpen {
    fn open(&self, device: &Path, key: &DiskKey, name: &str) -> Result<PathBuf, LuksError> {
        crate::mapper::open_data(device, key, name)
    }

    fn already_open(&self, device: &Path, name: &str) -> Result<Option<PathBuf>, LuksError> {
        let Some(backing) = crate::mapper::active_mapping(name)? else {
            return Ok(None);
        };
        let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if same(&backing) == same(device) {
            Ok(Some(Path::new("/dev/mapper").join(name)))
        } else {
            Err(LuksError::MappingInUse {
                name: name.to_string(),
                backing,
            })
        }
    }
}

/// Where things are: the TPM, the data partition, the sealed key and the policy PCRs.
#[derive(Debug, Clone)]
pub struct DataUnlock {
    /// TCTI of the TPM, e.g. `device:/dev/tpmrm0`.
    pub tcti: String,
    /// The data partition (GPT partition 4), e.g. `/dev/disk/by-partlabel/cairn-data`.
    pub device: PathBuf,
    /// Where the sealed disk key lives (ESP or another unencrypted area).
    pub sealed_key: PathBuf,
    /// The PCRs the disk key is sealed to (SHA-256 bank), e.g. `7,11`.
    pub pcrs: PcrSelection,
    /// The device-mapper name to open as, e.g. `cairn-data`.
    pub mapper_name: String,
}

/// What the unlock flow did.
#[must_use = "NeedsRecovery must be reported, and a new recovery key escrowed"]
#[derive(Debug)]
pub enum UnlockOutcome {
    /// First boot: formatted, key sealed, opened. Create the file system on `opened`, and escrow
    /// `recovery_key` (keep it on the data partition until central has it).
    Formatted {
        /// The opened block device.
        opened: PathBuf,
        /// The recovery key of keyslot 1, to escrow.
        recovery_key: RecoveryKey,
    },
    /// Unsealed and opened.
    Opened {
        /// The opened block device.
        opened: PathBuf,
        /// Set when keyslot 1 was empty (first boot interrupted before the recovery key was
        /// added) and a new recovery key was added: escrow it.
        new_recovery_key: Option<RecoveryKey>,
    },
    /// The disk key could not be unsealed or does not open the disk: the data stays closed and
    /// nothing was written. Report the reason; the recovery key unlocks and re-seals.
    NeedsRecovery(RecoveryReason),
}

/// Why the data partition needs the recovery key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryReason {
    /// The boot chain changed: these PCRs differ from the sealed values.
    PcrMismatch {
        /// Each changed PCR, sealed and current value.
        changed_pcrs: Vec<PcrChange>,
    },
    /// This TPM cannot load the sealed key: another TPM sealed it (stolen disk) or it was cleared.
    WrongTpm {
        /// The TPM's refusal.
        detail: String,
    },
    /// The device is LUKS but the sealed key file is missing.
    SealedKeyMissing {
        /// Where it should be.
        path: PathBuf,
    },
    /// The sealed key file is damaged.
    SealedKeyDamaged {
        /// What is wrong.
        detail: String,
    },
    /// The TPM released a key, but it does not open the disk (the disk or blob was replaced).
    KeyRejected,
}

impl std::fmt::Display for RecoveryReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryReason::PcrMismatch { changed_pcrs } => {
                let list: Vec<String> = changed_pcrs.iter().map(ToString::to_string).collect();
                write!(f, "boot chain changed: {}", list.join("; "))
            }
            RecoveryReason::WrongTpm { detail } => write!(
                f,
                "the sealed disk key belongs to another TPM (disk moved?) or the TPM was cleared: {detail}"
            ),
            RecoveryReason::SealedKeyMissing { path } => {
                write!(f, "the sealed disk key {} is missing", path.display())
            }
            RecoveryReason::SealedKeyDamaged { detail } => {
                write!(f, "the sealed disk key is damaged: {detail}")
            }
            RecoveryReason::KeyRejected => {
                write!(f, "the unsealed disk key does not open the data partition")
            }
        }
    }
}

/// A failure of the unlock or recovery flow that is not a recovery case (retry, or fix the
/// named cause).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// The TPM failed (unreachable, sealing failed); nothing on the disk was changed by this step.
    #[error("TPM step of the data unlock failed: {0}")]
    Tpm(#[from] TpmError),

    /// A LUKS step failed.
    #[error("disk step of the data unlock failed: {0}")]
    Luks(#[from] LuksError),

    /// Key generation failed.
    #[error("key generation for the data partition failed: {0}")]
    Key(#[from] KeyError),

    /// The recovery key given does not open the data partition.
    #[error("the recovery key does not open {device}; nothing was changed; check it is the key escrowed for this device (cairnctl device recovery-key)")]
    RecoveryKeyRejected {
        /// The data partition.
        device: PathBuf,
    },

    /// Recovery was asked for a device that is not LUKS.
    #[error("{device} is not a LUKS device, there is nothing to recover; on first boot it is formatted by the unlock flow")]
    NothingToRecover {
        /// The data partition.
        device: PathBuf,
    },
}

impl DataUnlock {
    /// Run the boot-time flow: first-boot format, or unseal and open, or report that recovery is
    /// needed (see the module docs).
    ///
    /// # Errors
    /// [`UnlockError::Tpm`] when the TPM is unreachable or fails (retry; not a recovery case),
    /// [`UnlockError::Luks`] (e.g. the device holds another file system: never formatted over),
    /// [`UnlockError::Key`].
    pub fn unlock(&self, opener: &dyn OpenLuks) -> Result<UnlockOutcome, UnlockError> {
        let _span =
            tracing::info_span!("disk.unlock", device = %self.device.display(), pcrs = %self.pcrs)
                .entered();
        if !luks::is_luks(&self.device)? {
            return self.first_boot(opener);
        }
        if let Some(opened) = opener.already_open(&self.device, &self.mapper_name)? {
            tracing::info!(opened = %opened.display(), "data partition already open");
            return Ok(UnlockOutcome::Opened {
                opened,
                new_recovery_key: None,
            });
        }
        let sealed = match SealedSecret::read(&self.sealed_key) {
            Ok(Some(sealed)) => sealed,
            Ok(None) => {
                return Ok(self.needs_recovery(RecoveryReason::SealedKeyMissing {
                    path: self.sealed_key.clone(),
                }))
            }
            Err(e @ TpmError::BadSealedBlob { .. }) => {
                return Ok(self.needs_recovery(RecoveryReason::SealedKeyDamaged {
                    detail: e.to_string(),
                }))
            }
            Err(e) => return Err(e.into()),
        };
        let key = match unseal_secret(&self.tcti, &sealed) {
            Ok(secret) => match DiskKey::from_bytes(&secret) {
                Some(key) => key,
                None => {
                    return Ok(self.needs_recovery(RecoveryReason::SealedKeyDamaged {
                        detail: format!("the sealed secret is {} bytes, not 32", secret.len()),
                    }))
                }
            },
            Err(UnsealError::PcrMismatch { changed }) => {
                return Ok(self.needs_recovery(RecoveryReason::PcrMismatch {
                    changed_pcrs: changed,
                }))
            }
            Err(e @ UnsealError::WrongTpm { .. }) => {
                return Ok(self.needs_recovery(RecoveryReason::WrongTpm {
                    detail: e.to_string(),
                }))
            }
            Err(UnsealError::Tpm(e)) => return Err(e.into()),
            Err(e) => {
                return Err(UnlockError::Tpm(TpmError::UnexpectedTpmOutput {
                    what: "the unseal of the disk key",
                    reason: e.to_string(),
                }))
            }
        };
        let opened = match opener.open(&self.device, &key, &self.mapper_name) {
            Ok(opened) => opened,
            Err(LuksError::KeyRejected { .. }) => {
                return Ok(self.needs_recovery(RecoveryReason::KeyRejected))
            }
            Err(e) => return Err(e.into()),
        };
        let new_recovery_key = self.ensure_recovery_slot(&key)?;
        tracing::info!(opened = %opened.display(), "data partition unlocked");
        Ok(UnlockOutcome::Opened {
            opened,
            new_recovery_key,
        })
    }

    fn needs_recovery(&self, reason: RecoveryReason) -> UnlockOutcome {
        tracing::warn!(%reason, "data partition stays locked: recovery key needed");
        UnlockOutcome::NeedsRecovery(reason)
    }

    fn first_boot(&self, opener: &dyn OpenLuks) -> Result<UnlockOutcome, UnlockError> {
        tracing::info!("data partition is not LUKS yet: first boot");
        // format_data checks again, but refuse before sealing anything when it cannot work.
        luks::ensure_blank(&self.device)?;
        let disk_key = generate_disk_key()?;
        let recovery_key = generate_recovery_key()?;
        if SealedSecret::read(&self.sealed_key).is_ok_and(|s| s.is_some()) {
            tracing::warn!(path = %self.sealed_key.display(), "replacing a sealed key left by an interrupted first boot (the disk was never formatted with it)");
        }
        let sealed = seal_secret(&self.tcti, disk_key.as_bytes(), &self.pcrs)?;
        sealed.write_atomic(&self.sealed_key)?;
        luks::format_data(&self.device, &disk_key, &recovery_key)?;
        let opened = opener.open(&self.device, &disk_key, &self.mapper_name)?;
        tracing::info!(opened = %opened.display(), "data partition formatted, key sealed, opened");
        Ok(UnlockOutcome::Formatted {
            opened,
            recovery_key,
        })
    }

    /// Add a recovery key when keyslot 1 is empty (first boot cut off between luksFormat and
    /// luksAddKey).
    fn ensure_recovery_slot(&self, key: &DiskKey) -> Result<Option<RecoveryKey>, UnlockError> {
        if luks::keyslots(&self.device)?.contains(&RECOVERY_KEY_SLOT) {
            return Ok(None);
        }
        tracing::warn!("keyslot 1 has no recovery key: adding a new one to escrow");
        let recovery_key = generate_recovery_key()?;
        luks::add_recovery_key(&self.device, key, &recovery_key)?;
        Ok(Some(recovery_key))
    }

    /// Recovery with the escrowed key: check it opens keyslot 1, seal a new disk key to the
    /// current boot chain, replace keyslot 0 with it, write the sealed blob, open. The next boots
    /// unlock by TPM again.
    ///
    /// # Errors
    /// [`UnlockError::RecoveryKeyRejected`] (nothing changed), [`UnlockError::NothingToRecover`],
    /// [`UnlockError::Tpm`] (nothing on the disk changed), [`UnlockError::Luks`].
    pub fn recover(
        &self,
        recovery_key: &RecoveryKey,
        opener: &dyn OpenLuks,
    ) -> Result<PathBuf, UnlockError> {
        let _span =
            tracing::info_span!("disk.recover", device = %self.device.display(), pcrs = %self.pcrs)
                .entered();
        if !luks::is_luks(&self.device)? {
            return Err(UnlockError::NothingToRecover {
                device: self.device.clone(),
            });
        }
        if !luks::recovery_key_opens(&self.device, recovery_key)? {
            return Err(UnlockError::RecoveryKeyRejected {
                device: self.device.clone(),
            });
        }
        let new_key = generate_disk_key()?;
        // Seal first: if the TPM fails, the disk has not been touched.
        let sealed = seal_secret(&self.tcti, new_key.as_bytes(), &self.pcrs)?;
        luks::replace_disk_key_with(&self.device, recovery_key, &new_key)?;
        sealed.write_atomic(&self.sealed_key)?;
        let opened = opener.open(&self.device, &new_key, &self.mapper_name)?;
        tracing::info!(opened = %opened.display(), "recovered: new disk key sealed to the current boot chain");
        Ok(opened)
    }
}
