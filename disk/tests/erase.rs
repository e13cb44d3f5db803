//! Host integration tests of the crypto-erase with the real cryptsetup on a sparse file (no
//! device-mapper needed): the sealed key files and keyslot 0 go, the recovery key still opens.

use std::path::{Path, PathBuf};

use cairn_disk::{
    crypto_erase, disk_key_opens, format_data, generate_disk_key, generate_recovery_key, keyslots,
    recovery_key_opens, DiskKeySlotErase, EraseError, LuksError, SealedKeyFile,
};
use cairn_testsupport::require_tool;

/// A LUKS2 header takes 16 MiB; leave room for data.
const DEVICE_SIZE: u64 = 20 * 1024 * 1024;

fn sparse_device(dir: &Path) -> PathBuf {
    let path = dir.join("data.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(DEVICE_SIZE)
        .unwrap();
    path
}

#[test]
fn erase_removes_the_sealed_keys_and_keyslot_0_and_keeps_the_recovery_key() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = sparse_device(dir.path());
    let disk = generate_disk_key().unwrap();
    let recovery = generate_recovery_key().unwrap();
    format_data(&device, &disk, &recovery).unwrap();
    let esp = dir.path().join("efi/cairn");
    std::fs::create_dir_all(&esp).unwrap();
    let sealed_key = esp.join("data-key.sealed");
    let present = [SealedKeyFile::Current, SealedKeyFile::Next];
    for which in present {
        std::fs::write(which.path(&sealed_key), b"CAIRNSEALED1 stand-in").unwrap();
    }

    let report = crypto_erase(&device, &sealed_key).unwrap();
    assert_eq!(
        report.removed_files,
        present.map(|which| which.path(&sealed_key)).to_vec()
    );
    assert_eq!(report.disk_key_slot, DiskKeySlotErase::Killed);
    assert!(report.recovery_slot_kept);
    assert_eq!(std::fs::read_dir(&esp).unwrap().count(), 0);
    assert_eq!(keyslots(&device).unwrap(), [1].into());
    assert!(!disk_key_opens(&device, &disk).unwrap());
    assert!(recovery_key_opens(&device, &recovery).unwrap());

    // A retried wipe (the report to central was lost) succeeds and changes nothing.
    let again = crypto_erase(&device, &sealed_key).unwrap();
    assert!(again.removed_files.is_empty());
    assert_eq!(again.disk_key_slot, DiskKeySlotErase::AlreadyEmpty);
    assert!(again.recovery_slot_kept);
    assert!(recovery_key_opens(&device, &recovery).unwrap());
}

#[test]
fn a_missing_device_is_named_and_the_sealed_keys_are_still_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("no-such-partition");
    let sealed_key = dir.path().join("data-key.sealed");
    std::fs::write(&sealed_key, b"sealed").unwrap();

    let err = crypto_erase(&device, &sealed_key).unwrap_err();
    assert!(
        matches!(&err, EraseError::Keyslot(LuksError::DeviceMissing { device: d }) if *d == device),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("no-such-partition"), "{text}");
    assert!(text.contains("retry the wipe"), "{text}");
    assert!(!sealed_key.exists());
}

#[test]
fn a_device_that_is_not_luks_is_refused() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = sparse_device(dir.path());
    let err = crypto_erase(&device, &dir.path().join("data-key.sealed")).unwrap_err();
    assert!(
        matches!(err, EraseError::Keyslot(LuksError::NotLuks { .. })),
        "{err:?}"
    );
}
