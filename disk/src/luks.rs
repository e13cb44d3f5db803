//! LUKS2 operations on the data partition through cryptsetup: format (never over existing data),
//! test keys, add the recovery key, replace the disk key during recovery. Opening and closing
//! (device-mapper) are in `mapper.rs`.
//!
//! Keyslot layout: slot 0 = the TPM-sealed disk key ([`DISK_KEY_SLOT`]), slot 1 = the escrowed
//! recovery key ([`RECOVERY_KEY_SLOT`]). Both keys carry at least 128 bits of entropy, so both
//! slots use PBKDF2-SHA512 with the minimum 1000 iterations (as systemd-cryptenroll does for TPM2
//! and recovery keys): a memory-hard PBKDF protects guessable passphrases and only costs RAM and
//! boot time on an edge device.
//!
//! Everything here works on a plain file as well as a block device (no device-mapper needed).
//! All calls block: from async code run them in `spawn_blocking`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cairn_io::{FileError, PathContext};

use crate::keyfile::KeyFile;
use crate::keys::{DiskKey, RecoveryKey};
use crate::tool::{ExitKind, ToolCommand, ToolError};

/// Keyslot of the TPM-sealed disk key.
pub const DISK_KEY_SLOT: u8 = 0;
/// Keyslot of the escrowed recovery key.
pub const RECOVERY_KEY_SLOT: u8 = 1;
/// LUKS2 label of Cairn's data partition.
pub const DATA_LABEL: &str = "cairn-data";
/// PBKDF for both keyslots (high-entropy keys, see the module docs).
const PBKDF_ARGS: [&str; 6] = [
    "--pbkdf",
    "pbkdf2",
    "--pbkdf-force-iterations",
    "1000",
    "--hash",
    "sha512",
];

/// A failed LUKS operation on the data partition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LuksError {
    /// The device path does not exist.
    #[error("data device {device} does not exist; check the partition table (partition 4 = data) and the device path in the configuration")]
    DeviceMissing {
        /// The device.
        device: PathBuf,
    },

    /// Formatting was refused: the device already is LUKS.
    #[error("refusing to format {device}: it already holds a LUKS header and Cairn never formats over existing data; unlock it with its sealed key or the recovery key, or wipe it deliberately (cryptsetup erase + wipefs) to start over")]
    AlreadyLuks {
        /// The device.
        device: PathBuf,
    },

    /// Formatting was refused: the device holds some other signature.
    #[error("refusing to format {device}: it holds a {found} signature and Cairn never formats over existing data; check this is the data partition, then wipe it deliberately (wipefs -a) to start over")]
    NotBlank {
        /// The device.
        device: PathBuf,
        /// What blkid found (e.g. `ext4`).
        found: String,
    },

    /// The device is not LUKS where LUKS was expected.
    #[error("{device} is not a LUKS device; the data partition has not been formatted yet (first boot) or the path is wrong")]
    NotLuks {
        /// The device.
        device: PathBuf,
    },

    /// No keyslot (or not the expected one) accepts the key.
    #[error("the {key} does not open {device}{}; check it is the right key for this device", slot_text(*slot))]
    KeyRejected {
        /// The device.
        device: PathBuf,
        /// Which key (`disk key`, `recovery key`).
        key: &'static str,
        /// The slot tried, if one was named.
        slot: Option<u8>,
    },

    /// The recovery keyslot is taken.
    #[error("keyslot {slot} of {device} already holds a recovery key; remove it first (cryptsetup luksKillSlot) to add a new one")]
    RecoverySlotInUse {
        /// The device.
        device: PathBuf,
        /// The slot.
        slot: u8,
    },

    /// A key was added but does not open its slot afterwards.
    #[error("cryptsetup reported success but the {key} does not open keyslot {slot} of {device}; do not rely on this key: check the device with cryptsetup luksDump")]
    Unverified {
        /// The device.
        device: PathBuf,
        /// Which key.
        key: &'static str,
        /// The slot.
        slot: u8,
    },

    /// The mapping name is not usable.
    #[error("invalid device-mapper name {name:?}: use 1..=64 characters of A-Z a-z 0-9 _ -")]
    BadMapperName {
        /// The name.
        name: String,
    },

    /// The device-mapper name is taken by another device.
    #[error("/dev/mapper/{name} is already open for {backing}, not for the data partition; close it (cryptsetup close {name}) or configure another mapper name")]
    MappingInUse {
        /// The mapper name.
        name: String,
        /// What it maps.
        backing: PathBuf,
    },

    /// The LUKS2 metadata could not be understood.
    #[error(
        "cannot read the LUKS2 metadata of {device}: {reason}; check cryptsetup is 2.4 or newer"
    )]
    BadMetadata {
        /// The device.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The device could not be read.
    #[error("{0}; check the device exists and the agent runs as root")]
    File(#[from] FileError),

    /// cryptsetup or blkid failed otherwise.
    #[error("{action} on {device} failed: {source}")]
    Tool {
        /// The device or mapping.
        device: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The tool failure.
        #[source]
        source: ToolError,
    },
}

fn slot_text(slot: Option<u8>) -> String {
    slot.map(|s| format!(" (keyslot {s})")).unwrap_or_default()
}

pub(crate) fn tool_err<'a>(
    device: &'a Path,
    action: &'static str,
) -> impl Fn(ToolError) -> LuksError + 'a {
    move |source| LuksError::Tool {
        device: device.to_path_buf(),
        action,
        source,
    }
}

pub(crate) fn require_device(device: &Path) -> Result<(), LuksError> {
    if device.exists() {
        Ok(())
    } else {
        Err(LuksError::DeviceMissing {
            device: device.to_path_buf(),
        })
    }
}

/// Whether `device` holds a LUKS header (`cryptsetup isLuks`).
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::Tool`].
pub fn is_luks(device: &Path) -> Result<bool, LuksError> {
    let _span = tracing::info_span!("disk.is_luks", device = %device.display()).entered();
    require_device(device)?;
    let out = ToolCommand::new("cryptsetup", "isLuks")
        .arg("isLuks")
        .arg(device)
        .accept_codes(&[1])
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map_err(tool_err(device, "isLuks"))?;
    Ok(out.code == 0)
}

/// The LUKS2 header UUID of `device` (`cryptsetup luksUUID`), to name the partition a recovery key
/// belongs to.
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::Tool`] (e.g. not LUKS).
pub fn luks_uuid(device: &Path) -> Result<String, LuksError> {
    let _span = tracing::info_span!("disk.luks_uuid", device = %device.display()).entered();
    require_device(device)?;
    let out = ToolCommand::new("cryptsetup", "luksUUID")
        .arg("luksUUID")
        .arg(device)
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map_err(tool_err(device, "luksUUID"))?;
    Ok(out.stdout.trim().to_string())
}

/// The signature blkid finds on `device` (`ext4`, `crypto_LUKS`, ...), `None` when blank.
///
/// On a partition `blkid -p` also reports the GPT entry (`PART_ENTRY_*`) and exits 0 even when
/// the partition holds nothing: only `TYPE`/`PTTYPE` count. Data blkid does not recognise is not
/// blank either: the first 1 MiB must be zeros (as the image leaves it).
fn probe_signature(device: &Path) -> Result<Option<String>, LuksError> {
    let out = ToolCommand::new("blkid", "probe signatures")
        .arg("-p")
        .arg("-o")
        .arg("export")
        .arg(device)
        .accept_codes(&[2])
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map_err(tool_err(device, "blkid"))?;
    let known = out.stdout.lines().find_map(|l| {
        l.strip_prefix("TYPE=")
            .or_else(|| l.strip_prefix("PTTYPE="))
    });
    if let Some(kind) = known {
        return Ok(Some(kind.to_string()));
    }
    if starts_with_data(device)? {
        return Ok(Some("unrecognised data in its first MiB".to_string()));
    }
    Ok(None)
}

/// Whether the first 1 MiB of `device` holds any non-zero byte.
fn starts_with_data(device: &Path) -> Result<bool, LuksError> {
    use std::io::Read;
    let file = std::fs::File::open(device).at("open", device)?;
    let mut head = Vec::with_capacity(1 << 20);
    file.take(1 << 20)
        .read_to_end(&mut head)
        .at("read", device)?;
    Ok(head.iter().any(|&b| b != 0))
}

/// Check `device` may be formatted: it exists, is not LUKS and blkid finds no signature on it.
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::AlreadyLuks`], [`LuksError::NotBlank`],
/// [`LuksError::Tool`].
pub fn ensure_blank(device: &Path) -> Result<(), LuksError> {
    if is_luks(device)? {
        return Err(LuksError::AlreadyLuks {
            device: device.to_path_buf(),
        });
    }
    if let Some(found) = probe_signature(device)? {
        return Err(LuksError::NotBlank {
            device: device.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Format `device` as LUKS2 (label `cairn-data`) with `disk_key` in keyslot 0 and `recovery_key`
/// in keyslot 1, and check the recovery key opens it.
///
/// Refuses, without writing anything, when the device already is LUKS or holds any other
/// signature blkid knows: nothing is ever formatted over.
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::AlreadyLuks`], [`LuksError::NotBlank`],
/// [`LuksError::Unverified`], [`LuksError::Tool`].
pub fn format_data(
    device: &Path,
    disk_key: &DiskKey,
    recovery_key: &RecoveryKey,
) -> Result<(), LuksError> {
    let _span = tracing::info_span!("disk.format", device = %device.display()).entered();
    ensure_blank(device)?;
    tracing::info!("formatting the data partition as LUKS2");
    format_command(device, disk_key)
        .run()
        .map_err(tool_err(device, "luksFormat"))?;
    add_key(
        device,
        disk_key.as_bytes(),
        recovery_key.as_bytes(),
        RECOVERY_KEY_SLOT,
    )?;
    verify(
        device,
        recovery_key.as_bytes(),
        "recovery key",
        RECOVERY_KEY_SLOT,
    )
}

/// `cryptsetup luksFormat` with the disk key on stdin.
pub(crate) fn format_command(device: &Path, disk_key: &DiskKey) -> ToolCommand {
    let mut cmd = ToolCommand::new("cryptsetup", "luksFormat")
        .arg("luksFormat")
        .arg("--batch-mode")
        .arg("--type")
        .arg("luks2")
        .arg("--label")
        .arg(DATA_LABEL)
        .arg("--key-slot")
        .arg(DISK_KEY_SLOT.to_string());
    for arg in PBKDF_ARGS {
        cmd = cmd.arg(arg);
    }
    cmd.arg("--key-file=-")
        .arg(device)
        .secret_stdin(disk_key.as_bytes())
}

/// `cryptsetup luksAddKey`: the existing key in a tmpfs key file, the new one on stdin.
pub(crate) fn add_key_command(
    device: &Path,
    existing: &KeyFile,
    new_key: &[u8],
    slot: u8,
) -> ToolCommand {
    let mut existing_arg = std::ffi::OsString::from("--key-file=");
    existing_arg.push(existing.path());
    let mut cmd = ToolCommand::new("cryptsetup", "luksAddKey")
        .arg("luksAddKey")
        .arg("--batch-mode")
        .arg("--key-slot")
        .arg(slot.to_string());
    for arg in PBKDF_ARGS {
        cmd = cmd.arg(arg);
    }
    cmd.arg(existing_arg)
        .arg(device)
        .arg("-")
        .secret_stdin(new_key)
}

fn add_key(device: &Path, existing: &[u8], new_key: &[u8], slot: u8) -> Result<(), LuksError> {
    let file = KeyFile::write(existing).map_err(tool_err(device, "luksAddKey"))?;
    add_key_command(device, &file, new_key, slot)
        .run()
        .map_err(|e| match e.exit_kind() {
            Some(ExitKind::KeyRejected) => LuksError::KeyRejected {
                device: device.to_path_buf(),
                key: "existing key",
                slot: None,
            },
            _ => tool_err(device, "luksAddKey")(e),
        })?;
    Ok(())
}

/// `cryptsetup open --test-passphrase`: does `key` open `slot` (any slot when `None`)?
/// Works without device-mapper.
pub(crate) fn test_key_command(device: &Path, key: &[u8], slot: Option<u8>) -> ToolCommand {
    let mut cmd = ToolCommand::new("cryptsetup", "test key")
        .arg("open")
        .arg("--test-passphrase")
        .arg("--type")
        .arg("luks2");
    if let Some(slot) = slot {
        cmd = cmd.arg("--key-slot").arg(slot.to_string());
    }
    cmd.arg("--key-file=-")
        .arg(device)
        .secret_stdin(key)
        .accept_codes(&[2])
}

fn test_key(device: &Path, key: &[u8], slot: Option<u8>) -> Result<bool, LuksError> {
    require_device(device)?;
    match test_key_command(device, key, slot).run() {
        Ok(out) => Ok(out.code == 0),
        // cryptsetup says "No usable keyslot" (exit 1) for an empty slot: no key opens it.
        Err(e)
            if e.exit_kind() == Some(ExitKind::BadParameters)
                && slot.is_some_and(|s| keyslots(device).is_ok_and(|k| !k.contains(&s))) =>
        {
            Ok(false)
        }
        Err(e) => Err(tool_err(device, "test key")(e)),
    }
}

fn verify(device: &Path, key: &[u8], what: &'static str, slot: u8) -> Result<(), LuksError> {
    if test_key(device, key, Some(slot))? {
        Ok(())
    } else {
        Err(LuksError::Unverified {
            device: device.to_path_buf(),
            key: what,
            slot,
        })
    }
}

/// Whether `key` opens the disk-key slot (0) of `device`, checked without device-mapper.
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::Tool`] (e.g. not a LUKS device).
pub fn disk_key_opens(device: &Path, key: &DiskKey) -> Result<bool, LuksError> {
    let _span =
        tracing::info_span!("disk.test_key", device = %device.display(), slot = DISK_KEY_SLOT)
            .entered();
    test_key(device, key.as_bytes(), Some(DISK_KEY_SLOT))
}

/// Whether `key` opens the recovery slot (1) of `device`, checked without device-mapper.
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::Tool`] (e.g. not a LUKS device).
pub fn recovery_key_opens(device: &Path, key: &RecoveryKey) -> Result<bool, LuksError> {
    let _span =
        tracing::info_span!("disk.test_key", device = %device.display(), slot = RECOVERY_KEY_SLOT)
            .entered();
    test_key(device, key.as_bytes(), Some(RECOVERY_KEY_SLOT))
}

/// The occupied keyslots of `device` (`luksDump --dump-json-metadata`).
///
/// # Errors
/// [`LuksError::DeviceMissing`], [`LuksError::BadMetadata`], [`LuksError::Tool`].
pub fn keyslots(device: &Path) -> Result<BTreeSet<u8>, LuksError> {
    let _span = tracing::info_span!("disk.keyslots", device = %device.display()).entered();
    require_device(device)?;
    let out = ToolCommand::new("cryptsetup", "luksDump")
        .arg("luksDump")
        .arg("--dump-json-metadata")
        .arg(device)
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map_err(tool_err(device, "luksDump"))?;
    parse_keyslots(&out.stdout).map_err(|reason| LuksError::BadMetadata {
        device: device.to_path_buf(),
        reason: reason.to_string(),
    })
}

/// Why `luksDump --dump-json-metadata` output could not be read.
#[derive(Debug, thiserror::Error)]
enum MetadataError {
    /// The output is not JSON.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The JSON has no keyslots.
    #[error("no \"keyslots\" object")]
    NoKeyslots,
    /// A keyslot id is not a number.
    #[error("keyslot id {0:?}")]
    BadSlotId(String),
}

fn parse_keyslots(json: &str) -> Result<BTreeSet<u8>, MetadataError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(MetadataError::NotJson)?;
    let slots = value
        .get("keyslots")
        .and_then(|k| k.as_object())
        .ok_or(MetadataError::NoKeyslots)?;
    slots
        .keys()
        .map(|k| {
            k.parse::<u8>()
                .map_err(|_| MetadataError::BadSlotId(k.clone()))
        })
        .collect()
}

/// Add `recovery_key` in keyslot 1, authorized by `disk_key`, and check it opens it.
///
/// # Errors
/// [`LuksError::RecoverySlotInUse`], [`LuksError::KeyRejected`] (wrong disk key),
/// [`LuksError::Unverified`], [`LuksError::Tool`].
pub fn add_recovery_key(
    device: &Path,
    disk_key: &DiskKey,
    recovery_key: &RecoveryKey,
) -> Result<(), LuksError> {
    let _span = tracing::info_span!("disk.add_recovery_key", device = %device.display()).entered();
    if keyslots(device)?.contains(&RECOVERY_KEY_SLOT) {
        return Err(LuksError::RecoverySlotInUse {
            device: device.to_path_buf(),
            slot: RECOVERY_KEY_SLOT,
        });
    }
    add_key(
        device,
        disk_key.as_bytes(),
        recovery_key.as_bytes(),
        RECOVERY_KEY_SLOT,
    )
    .map_err(|e| match e {
        LuksError::KeyRejected { device, .. } => LuksError::KeyRejected {
            device,
            key: "disk key",
            slot: None,
        },
        other => other,
    })?;
    verify(
        device,
        recovery_key.as_bytes(),
        "recovery key",
        RECOVERY_KEY_SLOT,
    )
}

/// Recovery: replace the disk key in keyslot 0 with `new_key`, authorized by the recovery key
/// (which stays in keyslot 1). The old slot 0 is wiped first, then the new key added; at every
/// step the recovery key still opens the device, so an interrupted replacement is retried with it.
///
/// # Errors
/// [`LuksError::KeyRejected`] (the recovery key does not open keyslot 1; nothing changed),
/// [`LuksError::NotLuks`], [`LuksError::Unverified`], [`LuksError::Tool`].
pub fn replace_disk_key_with(
    device: &Path,
    recovery_key: &RecoveryKey,
    new_key: &DiskKey,
) -> Result<(), LuksError> {
    let _span = tracing::info_span!("disk.replace_disk_key", device = %device.display()).entered();
    if !is_luks(device)? {
        return Err(LuksError::NotLuks {
            device: device.to_path_buf(),
        });
    }
    if !recovery_key_opens(device, recovery_key)? {
        return Err(LuksError::KeyRejected {
            device: device.to_path_buf(),
            key: "recovery key",
            slot: Some(RECOVERY_KEY_SLOT),
        });
    }
    if keyslots(device)?.contains(&DISK_KEY_SLOT) {
        ToolCommand::new("cryptsetup", "luksKillSlot")
            .arg("luksKillSlot")
            .arg("--batch-mode")
            .arg("--key-file=-")
            .arg(device)
            .arg(DISK_KEY_SLOT.to_string())
            .secret_stdin(recovery_key.as_bytes())
            .run()
            .map_err(tool_err(device, "luksKillSlot"))?;
    }
    add_key(
        device,
        recovery_key.as_bytes(),
        new_key.as_bytes(),
        DISK_KEY_SLOT,
    )?;
    verify(device, new_key.as_bytes(), "new disk key", DISK_KEY_SLOT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_disk_key, generate_recovery_key};
    use std::os::unix::ffi::OsStrExt;

    fn contains(argv: &[std::ffi::OsString], secret: &[u8]) -> bool {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        argv.iter().any(|a| {
            let a = a.as_bytes();
            a.windows(secret.len()).any(|w| w == secret)
                || a.windows(hex.len()).any(|w| w == hex.as_bytes())
        })
    }

    #[test]
    fn no_key_material_in_any_argv() {
        let device = Path::new("/dev/vda4");
        let disk = generate_disk_key().unwrap();
        let recovery = generate_recovery_key().unwrap();
        let base = tempfile::tempdir().unwrap();
        let file = KeyFile::write_in(base.path(), disk.as_bytes()).unwrap();
        let commands = [
            format_command(device, &disk),
            add_key_command(device, &file, recovery.as_bytes(), RECOVERY_KEY_SLOT),
            test_key_command(device, disk.as_bytes(), Some(0)),
            test_key_command(device, recovery.as_bytes(), None),
        ];
        for cmd in &commands {
            let argv = cmd.argv();
            assert!(!contains(&argv, disk.as_bytes()), "{argv:?}");
            assert!(!contains(&argv, recovery.as_bytes()), "{argv:?}");
            assert!(argv
                .iter()
                .any(|a| a.as_bytes().starts_with(b"--key-file=")));
            assert!(!format!("{cmd:?}").contains(recovery.expose()));
        }
        let format = commands[0].display();
        assert!(format.contains("--type luks2"), "{format}");
        assert!(format.contains("--key-slot 0"), "{format}");
        assert!(format.ends_with("--key-file=- /dev/vda4"), "{format}");
    }

    #[test]
    fn parses_keyslots_from_luks2_json() {
        let json = r#"{"keyslots":{"0":{"type":"luks2"},"1":{"type":"luks2"}},"tokens":{}}"#;
        assert_eq!(parse_keyslots(json).unwrap(), BTreeSet::from([0, 1]));
        assert_eq!(
            parse_keyslots(r#"{"keyslots":{}}"#).unwrap(),
            BTreeSet::new()
        );
        assert!(matches!(
            parse_keyslots("{}"),
            Err(MetadataError::NoKeyslots)
        ));
        let err = parse_keyslots(r#"{"keyslots":{"x":{}}}"#).unwrap_err();
        assert_eq!(err.to_string(), "keyslot id \"x\"");
    }
}
