//! The data-partition unlock flow at boot: TPM + LUKS2 together.
//!
//! - First boot (the device is not LUKS yet, and blank): make a disk key and a recovery key,
//!   seal the disk key in the TPM to the configured PCRs, write the sealed blob (0600, atomic) to
//!   the given path, format LUKS2 with both keys, open. The caller creates the file system and
//!   escrows the recovery key ([`UnlockOutcome::Formatted`]).
//! - Later boots: unseal, open ([`UnlockOutcome::Opened`]). Besides the sealed key itself, an OS
//!   update's copy sealed to its predicted boot chain (`<sealed_key>.next`,
//!   [`DataUnlock::seal_for_next_boot`]) and the rollback copy (`<sealed_key>.prev`) are tried;
//!   the one that worked becomes the current one ([`crate::SealedKeyFile`] has the rule).
//! - Unseal refused (boot chain changed, other TPM, blob missing or damaged, key no longer
//!   matching) for every copy: [`UnlockOutcome::NeedsRecovery`] saying why (the reason of the
//!   first copy present, normally the current one), and the disk is not written to.
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
use crate::sealed_keys::{self, SealedKeyFile};

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

    /// Sealing for the next boot was asked before the data partition was ever formatted.
    #[error("{device} is not a LUKS device yet, so there is no disk key to seal for the next boot; the first boot formats it: let the device boot and unlock once before staging an OS update")]
    NotFormatted {
        /// The data partition.
        device: PathBuf,
    },

    /// The current sealed key does not unlock the data partition now, so its disk key cannot be
    /// sealed to the next boot chain. Nothing was written.
    #[error(
        "cannot seal the disk key for the next boot: the current sealed key {path} does not \
         unlock the data partition now ({reason}); nothing was written; {}",
        current_key_advice(boot_phases.as_deref())
    )]
    CurrentKeyUnusable {
        /// The current sealed key.
        path: PathBuf,
        /// Why it does not unlock.
        reason: RecoveryReason,
        /// When PCR 11 is exactly the sealed value extended by these `systemd-pcrphase` boot
        /// phases: the key was closed for the rest of this boot after the unlock.
        boot_phases: Option<Vec<String>>,
    },

    /// The predicted PCR values do not fit the sealing policy.
    #[error("invalid predicted PCR values for the next boot: {reason}; give at most one value per PCR of the sealing policy ({pcrs}), e.g. PCR 11 from cairn_pe::predict_uki_pcr11 of the new slot's UKI; PCRs not given keep the value the current key is sealed to")]
    BadPrediction {
        /// What is wrong.
        reason: String,
        /// The configured policy PCRs.
        pcrs: String,
    },

    /// A sealed-key file could not be removed or renamed.
    #[error("cannot {action} {path}: {source}; check the partition holding the sealed key (the ESP) is mounted read-write and not full")]
    SealedKeyFileIo {
        /// What was being done, e.g. `remove`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn current_key_advice(boot_phases: Option<&[String]>) -> String {
    match boot_phases {
        Some(phases) => format!(
            "PCR 11 is the sealed value extended by the boot phase(s) {} that systemd-pcrphase \
             measured after the unlock, which closes the sealed key for the rest of this boot by \
             design, so the running system cannot seal it again; mask systemd-pcrphase.service \
             and systemd-pcrphase-sysinit.service in the image, or seal for the next boot before \
             sysinit.target",
            phases.join(", ")
        ),
        None => "fix the named cause, or unlock with the recovery key (which seals a new disk key \
                 to this boot chain), then stage the update again"
            .to_string(),
    }
}

impl DataUnlock {
    /// Run the boot-time flow: first-boot format, or unseal and open, or report that recovery is
    /// needed (see the module docs). Tries `<sealed_key>`, `.next`, `.prev` in turn and logs which
    /// one worked; a copy other than the current one is then promoted (never writes to the LUKS
    /// device for that, only renames sealed-key files).
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
        // Every present sealed copy is tried (see `sealed_keys` for the rule across updates).
        let mut first_refusal = None;
        for which in SealedKeyFile::UNLOCK_ORDER {
            let path = which.path(&self.sealed_key);
            let refusal = match self.unseal_disk_key(&path)? {
                Ok(key) => match opener.open(&self.device, &key, &self.mapper_name) {
                    Ok(opened) => return self.opened_with(which, &key, opened),
                    Err(LuksError::KeyRejected { .. }) => RecoveryReason::KeyRejected,
                    Err(e) => return Err(e.into()),
                },
                Err(RecoveryReason::SealedKeyMissing { .. }) => continue,
                Err(reason) => reason,
            };
            tracing::warn!(sealed_key = %which, path = %path.display(), %refusal, "this sealed copy of the disk key does not unlock");
            first_refusal.get_or_insert(refusal);
        }
        let reason = first_refusal.unwrap_or_else(|| RecoveryReason::SealedKeyMissing {
            path: self.sealed_key.clone(),
        });
        Ok(self.needs_recovery(reason))
    }

    /// The disk was opened with the `which` sealed copy: make it the current one, complete the
    /// recovery keyslot if needed.
    fn opened_with(
        &self,
        which: SealedKeyFile,
        key: &DiskKey,
        opened: PathBuf,
    ) -> Result<UnlockOutcome, UnlockError> {
        tracing::info!(sealed_key = %which, opened = %opened.display(), "data partition unlocked with the {which} sealed copy of the disk key");
        if let Err(e) = sealed_keys::promote(&self.sealed_key, which) {
            tracing::warn!(error = %e, sealed_key = %which, "could not make the {which} sealed key the current one; the data partition is open and the next boot tries again; check the ESP is writable");
        }
        let new_recovery_key = self.ensure_recovery_slot(key)?;
        Ok(UnlockOutcome::Opened {
            opened,
            new_recovery_key,
        })
    }

    /// Read the sealed blob at `path` and unseal the disk key with the current PCRs. `Ok(Err)`
    /// says why this copy cannot unlock (missing, damaged, PCRs changed, other TPM); `Err` is a
    /// failure that is not a recovery case (TPM unreachable).
    pub(crate) fn unseal_disk_key(
        &self,
        path: &Path,
    ) -> Result<Result<DiskKey, RecoveryReason>, UnlockError> {
        let sealed = match SealedSecret::read(path) {
            Ok(Some(sealed)) => sealed,
            Ok(None) => {
                return Ok(Err(RecoveryReason::SealedKeyMissing {
                    path: path.to_path_buf(),
                }))
            }
            Err(e @ TpmError::BadSealedBlob { .. }) => {
                return Ok(Err(RecoveryReason::SealedKeyDamaged {
                    detail: e.to_string(),
                }))
            }
            Err(e) => return Err(e.into()),
        };
        match unseal_secret(&self.tcti, &sealed) {
            Ok(secret) => {
                Ok(
                    DiskKey::from_bytes(&secret).ok_or_else(|| RecoveryReason::SealedKeyDamaged {
                        detail: format!("the sealed secret is {} bytes, not 32", secret.len()),
                    }),
                )
            }
            Err(UnsealError::PcrMismatch { changed }) => Ok(Err(RecoveryReason::PcrMismatch {
                changed_pcrs: changed,
            })),
            Err(e @ UnsealError::WrongTpm { .. }) => Ok(Err(RecoveryReason::WrongTpm {
                detail: e.to_string(),
            })),
            Err(UnsealError::Tpm(e)) => Err(e.into()),
            Err(e) => Err(UnlockError::Tpm(TpmError::UnexpectedTpmOutput {
                what: "the unseal of the disk key",
                reason: e.to_string(),
            })),
        }
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
        self.remove_stale_copies();
        luks::format_data(&self.device, &disk_key, &recovery_key)?;
        let opened = opener.open(&self.device, &disk_key, &self.mapper_name)?;
        tracing::info!(opened = %opened.display(), "data partition formatted, key sealed, opened");
        Ok(UnlockOutcome::Formatted {
            opened,
            recovery_key,
        })
    }

    /// Remove `.next` and `.prev`: after a new disk key was made they hold one that no longer
    /// opens the disk. Best effort: a leftover copy only fails to unlock.
    fn remove_stale_copies(&self) {
        let stale = [SealedKeyFile::Next, SealedKeyFile::Previous];
        match sealed_keys::remove(&self.sealed_key, &stale) {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed a sealed copy of the replaced disk key");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not remove sealed copies of the replaced disk key; they no longer unlock anything")
            }
        }
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
        self.remove_stale_copies();
        let opened = opener.open(&self.device, &new_key, &self.mapper_name)?;
        tracing::info!(opened = %opened.display(), "recovered: new disk key sealed to the current boot chain");
        Ok(opened)
    }
}
