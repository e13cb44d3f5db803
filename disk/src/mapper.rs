//! Opening and closing the data partition through device-mapper (`cryptsetup open/close`).
//! Device-mapper exists on devices and in the QEMU tests, not on the build hosts.

use std::path::{Path, PathBuf};

use crate::keys::DiskKey;
use crate::luks::{require_device, tool_err, LuksError};
use crate::tool::{ExitKind, ToolCommand};

/// Open (activate) `device` with `key` as `/dev/mapper/<name>` and return that path. Needs
/// device-mapper: only on the device (and in QEMU tests).
///
/// # Errors
/// [`LuksError::BadMapperName`], [`LuksError::KeyRejected`], [`LuksError::Tool`] (e.g. the
/// mapping exists already: exit kind `Busy`).
pub fn open_data(device: &Path, key: &DiskKey, name: &str) -> Result<PathBuf, LuksError> {
    let _span = tracing::info_span!("disk.open", device = %device.display(), name).entered();
    check_mapper_name(name)?;
    require_device(device)?;
    ToolCommand::new("cryptsetup", "open")
        .arg("open")
        .arg("--type")
        .arg("luks2")
        .arg("--key-file=-")
        .arg(device)
        .arg(name)
        .secret_stdin(key.as_bytes())
        .run()
        .map_err(|e| match e.exit_kind() {
            Some(ExitKind::KeyRejected) => LuksError::KeyRejected {
                device: device.to_path_buf(),
                key: "disk key",
                slot: None,
            },
            _ => tool_err(device, "open")(e),
        })?;
    Ok(Path::new("/dev/mapper").join(name))
}

/// When `/dev/mapper/<name>` is active: the block device (or, for a loop device, the file) it
/// maps (`cryptsetup status`). `None` when it is not active.
///
/// # Errors
/// [`LuksError::BadMapperName`], [`LuksError::Tool`].
pub fn active_mapping(name: &str) -> Result<Option<PathBuf>, LuksError> {
    let _span = tracing::info_span!("disk.status", name).entered();
    check_mapper_name(name)?;
    let mapper = Path::new("/dev/mapper").join(name);
    let out = ToolCommand::new("cryptsetup", "status")
        .arg("status")
        .arg(name)
        .accept_codes(&[4])
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .map_err(tool_err(&mapper, "status"))?;
    if out.code != 0 {
        return Ok(None);
    }
    Ok(Some(backing_device(&out.stdout).unwrap_or(mapper)))
}

/// The `loop:` file, else the `device:` of `cryptsetup status` output.
fn backing_device(status: &str) -> Option<PathBuf> {
    let field = |key: &str| {
        status.lines().find_map(|line| {
            line.trim()
                .strip_prefix(key)
                .map(|v| PathBuf::from(v.trim()))
        })
    };
    field("loop:").or_else(|| field("device:"))
}

/// Close (deactivate) `/dev/mapper/<name>`; closing a mapping that is not open succeeds.
///
/// # Errors
/// [`LuksError::BadMapperName`], [`LuksError::Tool`] (e.g. still mounted: exit kind `Busy`).
pub fn close_data(name: &str) -> Result<(), LuksError> {
    let _span = tracing::info_span!("disk.close", name).entered();
    check_mapper_name(name)?;
    let mapper = Path::new("/dev/mapper").join(name);
    match ToolCommand::new("cryptsetup", "close")
        .arg("close")
        .arg(name)
        .run()
    {
        Ok(_) => Ok(()),
        Err(e) if e.exit_kind() == Some(ExitKind::DeviceUnavailable) => {
            tracing::info!("not open; nothing to close");
            Ok(())
        }
        Err(e) => Err(tool_err(&mapper, "close")(e)),
    }
}

fn check_mapper_name(name: &str) -> Result<(), LuksError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LuksError::BadMapperName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_backing_device_from_status() {
        let status = "/dev/mapper/cairn-data is active and is in use.\n  type:    LUKS2\n  \
                      cipher:  aes-xts-plain64\n  device:  /dev/vda4\n  sector size:  4096\n";
        assert_eq!(backing_device(status), Some(PathBuf::from("/dev/vda4")));
        let looped = "  device:  /dev/loop0\n  loop:    /var/lib/data.img\n";
        assert_eq!(
            backing_device(looped),
            Some(PathBuf::from("/var/lib/data.img"))
        );
        assert_eq!(backing_device("/dev/mapper/x is inactive."), None);
    }

    #[test]
    fn mapper_names_are_checked() {
        check_mapper_name("cairn-data").unwrap();
        for bad in ["", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(check_mapper_name(bad).is_err(), "{bad}");
        }
    }
}
