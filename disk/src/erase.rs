//! Crypto-erase of the data partition (`cairnctl device revoke --wipe`): destroy every sealed copy
//! of the disk key and kill its keyslot, so the data stays locked even with this device's TPM.
//!
//! The recovery keyslot is kept: the recovery key escrowed at central still opens the data, and
//! nothing on the device does. Killing keyslot 0 is what makes the erase hold; overwriting the
//! sealed files is defence in depth (flash may keep old blocks), and clearing the TPM's owner
//! hierarchy (`cairn_tpm::clear_owner_hierarchy`) makes any copy of them useless too. An open
//! mapping keeps its volume key in kernel memory until it is closed: close it or reboot after
//! the erase.
//!
//! Every step is idempotent and each is attempted even when another fails, so a retried wipe
//! finishes what an interrupted one left.

use std::path::{Path, PathBuf};

use cairn_io::{destroy_file, FileError};

use crate::luks::{is_luks, keyslots, tool_err, LuksError};
use crate::sealed_keys::SealedKeyFile;
use crate::tool::ToolCommand;
use crate::{DISK_KEY_SLOT, RECOVERY_KEY_SLOT};

/// What happened to the disk keyslot during a [`crypto_erase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKeySlotErase {
    /// Keyslot 0 held the disk key and was killed now.
    Killed,
    /// Keyslot 0 was already empty (an earlier erase, or it never held a key).
    AlreadyEmpty,
}

/// What a [`crypto_erase`] destroyed, for the report to central.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseReport {
    /// The sealed key files overwritten with zeros and removed (those that existed).
    pub removed_files: Vec<PathBuf>,
    /// What happened to keyslot 0.
    pub disk_key_slot: DiskKeySlotErase,
    /// Whether keyslot 1 still holds the escrowed recovery key; `false` means nobody can open the
    /// data any more, not even with the recovery key.
    pub recovery_slot_kept: bool,
}

/// One line for logs and central, e.g. "removed 2 sealed key files (...); killed keyslot 0;
/// recovery keyslot 1 kept".
impl std::fmt::Display for EraseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self
            .removed_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        write!(
            f,
            "removed {} sealed key file(s) ({}); ",
            files.len(),
            files.join(", ")
        )?;
        match self.disk_key_slot {
            DiskKeySlotErase::Killed => write!(f, "killed keyslot {DISK_KEY_SLOT}; ")?,
            DiskKeySlotErase::AlreadyEmpty => {
                write!(f, "keyslot {DISK_KEY_SLOT} was already empty; ")?
            }
        }
        if self.recovery_slot_kept {
            write!(f, "recovery keyslot {RECOVERY_KEY_SLOT} kept")
        } else {
            write!(
                f,
                "recovery keyslot {RECOVERY_KEY_SLOT} is empty: the data can no longer be opened"
            )
        }
    }
}

/// A failed crypto-erase step. The other steps were still attempted; every step is idempotent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EraseError {
    /// A sealed copy of the disk key could not be overwritten or removed.
    #[error("cannot destroy the sealed disk key: {0}; check the ESP is mounted read-write, then retry the wipe (the keyslot step was still attempted)")]
    SealedKey(#[source] FileError),

    /// The disk keyslot could not be read or killed.
    #[error("cannot erase keyslot 0 (the disk key): {0}; the data partition still opens with the disk key: retry the wipe (the sealed key files were still destroyed)")]
    Keyslot(#[source] LuksError),

    /// cryptsetup reported success, yet the disk keyslot is still there.
    #[error("cryptsetup luksKillSlot reported success but keyslot 0 of {device} is still present (cryptsetup luksDump); the data partition still opens with the disk key: retry the wipe, or kill the slot by hand")]
    KeyslotSurvived {
        /// The data device.
        device: PathBuf,
    },
}

/// Crypto-erase the data partition `device`: overwrite with zeros and remove every sealed copy of
/// the disk key (`sealed_key` and its `.next` / `.prev`, see [`SealedKeyFile`]), then kill
/// keyslot 0 (`cryptsetup luksKillSlot --batch-mode`, no key needed) and check it is gone.
/// Keyslot 1 (the escrowed recovery key) is kept. Missing files and an empty keyslot 0 are fine:
/// a retried erase succeeds.
///
/// Each step runs even when an earlier one failed; the error is the keyslot's if it failed,
/// else the first file's.
///
/// # Errors
/// [`EraseError::SealedKey`], [`EraseError::Keyslot`] (device missing, not LUKS, cryptsetup
/// failed), [`EraseError::KeyslotSurvived`].
pub fn crypto_erase(device: &Path, sealed_key: &Path) -> Result<EraseReport, EraseError> {
    let _span = tracing::info_span!("disk.crypto_erase", device = %device.display()).entered();
    let (removed_files, file_error) = destroy_sealed_keys(sealed_key);
    let (disk_key_slot, recovery_slot_kept) = kill_disk_key_slot(device)?;
    if let Some(error) = file_error {
        return Err(EraseError::SealedKey(error));
    }
    let report = EraseReport {
        removed_files,
        disk_key_slot,
        recovery_slot_kept,
    };
    tracing::warn!(%report, "data partition crypto-erased");
    Ok(report)
}

/// Destroy every sealed copy that exists; returns those destroyed and the first failure.
fn destroy_sealed_keys(sealed_key: &Path) -> (Vec<PathBuf>, Option<FileError>) {
    let mut removed = Vec::new();
    let mut first_error = None;
    for which in SealedKeyFile::UNLOCK_ORDER {
        let path = which.path(sealed_key);
        match destroy_file(&path) {
            Ok(true) => removed.push(path),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not destroy a sealed disk key");
                first_error.get_or_insert(e);
            }
        }
    }
    (removed, first_error)
}

/// Kill keyslot 0 unless it is empty, then check it is gone; returns what happened and whether
/// the recovery keyslot is still there.
fn kill_disk_key_slot(device: &Path) -> Result<(DiskKeySlotErase, bool), EraseError> {
    if !is_luks(device).map_err(EraseError::Keyslot)? {
        return Err(EraseError::Keyslot(LuksError::NotLuks {
            device: device.to_path_buf(),
        }));
    }
    let before = keyslots(device).map_err(EraseError::Keyslot)?;
    let outcome = if before.contains(&DISK_KEY_SLOT) {
        kill_slot_command(device)
            .run()
            .map_err(|e| EraseError::Keyslot(tool_err(device, "luksKillSlot")(e)))?;
        DiskKeySlotErase::Killed
    } else {
        DiskKeySlotErase::AlreadyEmpty
    };
    let after = keyslots(device).map_err(EraseError::Keyslot)?;
    if after.contains(&DISK_KEY_SLOT) {
        return Err(EraseError::KeyslotSurvived {
            device: device.to_path_buf(),
        });
    }
    let recovery_slot_kept = after.contains(&RECOVERY_KEY_SLOT);
    if !recovery_slot_kept {
        tracing::error!("the recovery keyslot is empty: nobody can open the data any more");
    }
    Ok((outcome, recovery_slot_kept))
}

/// `cryptsetup luksKillSlot --batch-mode <device> 0`: batch mode asks for no remaining key.
fn kill_slot_command(device: &Path) -> ToolCommand {
    ToolCommand::new("cryptsetup", "luksKillSlot")
        .arg("luksKillSlot")
        .arg("--batch-mode")
        .arg(device)
        .arg(DISK_KEY_SLOT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_slot_0_in_batch_mode_without_a_key() {
        let display = kill_slot_command(Path::new("/dev/vda4")).display();
        assert!(
            display.ends_with("luksKillSlot --batch-mode /dev/vda4 0"),
            "{display}"
        );
        assert!(!display.contains("--key-file"), "{display}");
    }

    #[test]
    fn destroys_present_files_and_skips_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("data-key.sealed");
        std::fs::write(&key, b"sealed").unwrap();
        std::fs::write(SealedKeyFile::Previous.path(&key), b"prev").unwrap();
        let (removed, error) = destroy_sealed_keys(&key);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(
            removed,
            vec![key.clone(), SealedKeyFile::Previous.path(&key)]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(destroy_sealed_keys(&key).0, Vec::<PathBuf>::new());
    }

    #[test]
    fn overwrites_the_bytes_in_place_before_unlinking() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("data-key.sealed");
        let blob = vec![0xa5u8; 10_000];
        std::fs::write(&key, &blob).unwrap();
        // A hard link keeps the inode reachable, to see what was written to it.
        let witness = dir.path().join("witness");
        std::fs::hard_link(&key, &witness).unwrap();
        let inode = std::fs::metadata(&key).unwrap().ino();
        assert!(destroy_file(&key).unwrap());
        assert!(!key.exists());
        assert_eq!(std::fs::metadata(&witness).unwrap().ino(), inode);
        assert_eq!(std::fs::read(&witness).unwrap(), vec![0u8; blob.len()]);
    }

    #[test]
    fn a_file_that_cannot_be_removed_is_reported_and_the_others_are_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("data-key.sealed");
        // A directory where a sealed file should be: opening it for writing fails.
        std::fs::create_dir(&key).unwrap();
        std::fs::write(SealedKeyFile::Next.path(&key), b"next").unwrap();
        let (removed, error) = destroy_sealed_keys(&key);
        assert_eq!(removed, vec![SealedKeyFile::Next.path(&key)]);
        let error = error.unwrap();
        assert_eq!(error.path, key);
        let text = EraseError::SealedKey(error).to_string();
        assert!(text.contains("data-key.sealed"), "{text}");
        assert!(text.contains("retry the wipe"), "{text}");
    }

    #[test]
    fn the_report_names_what_was_destroyed() {
        let report = EraseReport {
            removed_files: vec![PathBuf::from("/efi/cairn/data-key.sealed")],
            disk_key_slot: DiskKeySlotErase::Killed,
            recovery_slot_kept: true,
        };
        assert_eq!(
            report.to_string(),
            "removed 1 sealed key file(s) (/efi/cairn/data-key.sealed); killed keyslot 0; \
             recovery keyslot 1 kept"
        );
    }
}
