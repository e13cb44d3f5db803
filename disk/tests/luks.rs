//! Host integration tests of the LUKS2 operations with the real cryptsetup on sparse files (no
//! device-mapper needed: keys are checked with `cryptsetup open --test-passphrase`).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::{
    add_recovery_key, disk_key_opens, format_data, generate_disk_key, generate_recovery_key,
    is_luks, keyslots, open_data, recovery_key_opens, replace_disk_key_with, DiskKey, LuksError,
    RecoveryKey,
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

fn formatted(dir: &Path) -> (PathBuf, DiskKey, RecoveryKey) {
    let device = sparse_device(dir);
    let disk = generate_disk_key().unwrap();
    let recovery = generate_recovery_key().unwrap();
    format_data(&device, &disk, &recovery).unwrap();
    (device, disk, recovery)
}

#[test]
fn formats_a_sparse_file_with_both_keyslots() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = sparse_device(dir.path());
    assert!(!is_luks(&device).unwrap());
    let disk = generate_disk_key().unwrap();
    let recovery = generate_recovery_key().unwrap();
    format_data(&device, &disk, &recovery).unwrap();

    assert!(is_luks(&device).unwrap());
    assert_eq!(keyslots(&device).unwrap(), [0, 1].into());
    assert!(disk_key_opens(&device, &disk).unwrap());
    assert!(recovery_key_opens(&device, &recovery).unwrap());
    // Each key opens its own slot only; other keys open nothing.
    let other = generate_disk_key().unwrap();
    assert!(!disk_key_opens(&device, &other).unwrap());
    assert!(!recovery_key_opens(&device, &generate_recovery_key().unwrap()).unwrap());

    let dump = Command::new("cryptsetup")
        .args(["luksDump"])
        .arg(&device)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("cairn-data"), "{dump}");
    assert!(dump.contains("pbkdf2"), "{dump}");
}

#[test]
fn the_recovery_key_as_typed_opens_keyslot_1() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (device, _, recovery) = formatted(dir.path());
    // An admin reads it off the console in groups separated by spaces.
    let typed = recovery.expose().replace('-', " ");
    let parsed = RecoveryKey::parse(&typed).unwrap();
    assert!(recovery_key_opens(&device, &parsed).unwrap());
    // It is also a plain LUKS passphrase: cryptsetup itself accepts the canonical text.
    let mut child = Command::new("cryptsetup")
        .args([
            "open",
            "--test-passphrase",
            "--key-slot",
            "1",
            "--key-file=-",
        ])
        .arg(&device)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(recovery.expose().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn never_formats_over_an_existing_luks_device() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (device, disk, _) = formatted(dir.path());
    let before = std::fs::read(&device).unwrap();
    let err = format_data(
        &device,
        &generate_disk_key().unwrap(),
        &generate_recovery_key().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, LuksError::AlreadyLuks { .. }), "{err:?}");
    assert!(err.to_string().contains("never formats over"), "{err}");
    assert_eq!(std::fs::read(&device).unwrap(), before, "device changed");
    assert!(disk_key_opens(&device, &disk).unwrap());
}

#[test]
fn never_formats_over_another_file_system() {
    if !require_tool("cryptsetup") || !require_tool("mkfs.ext4") || !require_tool("blkid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = sparse_device(dir.path());
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&device)
        .status()
        .unwrap();
    assert!(status.success());
    let before = std::fs::read(&device).unwrap();
    let err = format_data(
        &device,
        &generate_disk_key().unwrap(),
        &generate_recovery_key().unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LuksError::NotBlank { found, .. } if found == "ext4"),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&device).unwrap(), before, "device changed");
}

#[test]
fn never_formats_over_data_blkid_does_not_know() {
    if !require_tool("cryptsetup") || !require_tool("blkid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = sparse_device(dir.path());
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&device)
            .unwrap();
        f.seek(SeekFrom::Start(300 * 1024)).unwrap();
        f.write_all(b"someone's unlabelled data").unwrap();
    }
    let before = std::fs::read(&device).unwrap();
    let err = format_data(
        &device,
        &generate_disk_key().unwrap(),
        &generate_recovery_key().unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LuksError::NotBlank { found, .. } if found.contains("unrecognised")),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&device).unwrap(), before, "device changed");
}

#[test]
fn missing_device_is_named() {
    if !require_tool("cryptsetup") {
        return;
    }
    let err = is_luks(Path::new("/nonexistent/cairn-data")).unwrap_err();
    assert!(matches!(err, LuksError::DeviceMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/cairn-data"));
}

#[test]
fn recovery_replaces_the_disk_key_and_keeps_the_recovery_key() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (device, old, recovery) = formatted(dir.path());
    let new = generate_disk_key().unwrap();

    // A wrong recovery key changes nothing.
    let before = std::fs::read(&device).unwrap();
    let err = replace_disk_key_with(&device, &generate_recovery_key().unwrap(), &new).unwrap_err();
    assert!(
        matches!(err, LuksError::KeyRejected { slot: Some(1), .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&device).unwrap(), before, "device changed");

    replace_disk_key_with(&device, &recovery, &new).unwrap();
    assert!(disk_key_opens(&device, &new).unwrap());
    assert!(!disk_key_opens(&device, &old).unwrap());
    assert!(recovery_key_opens(&device, &recovery).unwrap());
    assert_eq!(keyslots(&device).unwrap(), [0, 1].into());

    // Again, e.g. after an interrupted recovery: still works.
    let newer = generate_disk_key().unwrap();
    replace_disk_key_with(&device, &recovery, &newer).unwrap();
    assert!(disk_key_opens(&device, &newer).unwrap());
}

#[test]
fn adds_a_recovery_key_only_into_a_free_slot() {
    if !require_tool("cryptsetup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (device, disk, recovery) = formatted(dir.path());
    let err = add_recovery_key(&device, &disk, &generate_recovery_key().unwrap()).unwrap_err();
    assert!(
        matches!(err, LuksError::RecoverySlotInUse { slot: 1, .. }),
        "{err:?}"
    );

    // Remove keyslot 1 (as if first boot was cut off before adding it), then add a new one.
    let status = Command::new("cryptsetup")
        .args(["luksKillSlot", "--batch-mode"])
        .arg(&device)
        .arg("1")
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!recovery_key_opens(&device, &recovery).unwrap());
    let wrong = add_recovery_key(
        &device,
        &generate_disk_key().unwrap(),
        &generate_recovery_key().unwrap(),
    )
    .unwrap_err();
    assert!(matches!(wrong, LuksError::KeyRejected { .. }), "{wrong:?}");
    let fresh = generate_recovery_key().unwrap();
    add_recovery_key(&device, &disk, &fresh).unwrap();
    assert!(recovery_key_opens(&device, &fresh).unwrap());
}

#[test]
fn open_rejects_bad_mapper_names_before_running_anything() {
    let err = open_data(
        Path::new("/dev/null"),
        &generate_disk_key().unwrap(),
        "../escape",
    )
    .unwrap_err();
    assert!(matches!(err, LuksError::BadMapperName { .. }), "{err:?}");
}
