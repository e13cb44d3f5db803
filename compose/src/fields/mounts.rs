//! What is mounted into a container besides named volumes: `tmpfs` file systems, host
//! `devices`, and the targets, owners and modes of secret and config files.

use super::{check_container_path, normalize_path, parse_size, ContainerPathError, FieldError};
use crate::{DeviceMapping, TmpfsMount, DEFAULT_TMPFS_BYTES, MAX_FILE_ID};

/// Largest `tmpfs`: it lives in the device's memory.
pub(crate) const MAX_TMPFS_BYTES: u64 = 1 << 30;

/// Container paths the runtime mounts itself (proc, sysfs, the device nodes).
const SYSTEM_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a `tmpfs` entry is refused; the text follows the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TmpfsError {
    /// A target that is not an absolute path below `/`.
    #[error("{0}")]
    Target(ContainerPathError),
    /// A target in a directory the runtime mounts.
    #[error("{path:?} is in {dir}, which the runtime mounts itself")]
    SystemPath {
        /// The target.
        path: String,
        /// The directory.
        dir: &'static str,
    },
    /// An option other than `size` and `mode`.
    #[error("option {option:?} is not supported (supported: size, mode)")]
    Option {
        /// The option as written.
        option: String,
    },
    /// An option given twice.
    #[error("option {name} is given twice")]
    OptionTwice {
        /// The option.
        name: String,
    },
    /// A `size` that is not a size.
    #[error("size {size:?} is not a size such as \"64m\"")]
    Size {
        /// The size as written.
        size: String,
    },
    /// A `size` above [`MAX_TMPFS_BYTES`].
    #[error("size {size:?} is above the 1g maximum (a tmpfs lives in memory)")]
    TooLarge {
        /// The size as written.
        size: String,
    },
    /// A `mode` that is not octal permission bits.
    #[error("mode {mode:?} is not an octal mode up to 7777, e.g. \"1777\"")]
    Mode {
        /// The mode as written.
        mode: String,
    },
}

/// The directory of [`SYSTEM_DIRS`] normalized `path` is in (or is), if any.
fn system_dir(path: &str) -> Option<&'static str> {
    let under =
        |dir: &str| path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'));
    SYSTEM_DIRS.iter().copied().find(|dir| under(dir))
}

fn tmpfs_target(path: &str) -> Result<String, TmpfsError> {
    check_container_path(path).map_err(TmpfsError::Target)?;
    let path = normalize_path(path);
    match system_dir(&path) {
        Some(dir) => Err(TmpfsError::SystemPath { path, dir }),
        None => Ok(path),
    }
}

/// Longest `target` of a secret or config file.
const MAX_FILE_TARGET_BYTES: usize = 1024;

/// Why the `target`, `uid`, `gid` or `mode` of a secret or config file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileMountError {
    /// A target that is not a usable path.
    #[error("target {target:?}: {reason}; write a file name or an absolute path such as \"/etc/app/app.conf\"")]
    Target {
        /// The target as written.
        target: String,
        /// What is wrong with it.
        reason: ContainerPathError,
    },
    /// A target longer than [`MAX_FILE_TARGET_BYTES`] or holding a NUL.
    #[error("target is longer than {MAX_FILE_TARGET_BYTES} bytes or holds a NUL character; write a shorter path")]
    TargetTooLong,
    /// A target in a directory the runtime mounts.
    #[error("target {path:?} is in {dir}, which the runtime mounts itself; put the file elsewhere, e.g. under /run/secrets or /etc")]
    SystemPath {
        /// The target.
        path: String,
        /// The directory.
        dir: &'static str,
    },
    /// A `uid` or `gid` that is not an id inside the container.
    #[error("{field} {text:?} is not an id from 0 to {MAX_FILE_ID} (ids inside the container); write a number such as 1000")]
    Id {
        /// `uid` or `gid`.
        field: &'static str,
        /// The value as written.
        text: String,
    },
    /// A `mode` that is not octal permission bits up to 0777.
    #[error("mode {text:?} is not an octal mode from 0 to 0777 with a leading 0; write e.g. 0440 (without the 0, Compose would read the number as decimal)")]
    Mode {
        /// The value as written.
        text: String,
    },
}

/// The container path of a secret or config file whose `target` is `text`: an absolute path as
/// it is, anything else under `dir` (`/run/secrets` for a secret, `/` for a config); without
/// `..`, outside `/proc`, `/sys` and `/dev`, normalized.
pub(crate) fn file_target(text: &str, dir: &str) -> Result<String, FileMountError> {
    if text.len() > MAX_FILE_TARGET_BYTES || text.contains('\0') {
        return Err(FileMountError::TargetTooLong);
    }
    let path = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("{}/{text}", dir.trim_end_matches('/'))
    };
    check_container_path(&path).map_err(|reason| FileMountError::Target {
        target: text.to_string(),
        reason,
    })?;
    let path = normalize_path(&path);
    match system_dir(&path) {
        Some(dir) => Err(FileMountError::SystemPath { path, dir }),
        None => Ok(path),
    }
}

/// A `uid` or `gid` (`field`) of a secret or config file: a decimal id up to [`MAX_FILE_ID`].
pub(crate) fn parse_file_id(text: &str, field: &'static str) -> Result<u32, FileMountError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u32>() {
        Ok(id) if digits && id <= MAX_FILE_ID => Ok(id),
        _ => Err(FileMountError::Id {
            field,
            text: text.to_string(),
        }),
    }
}

/// The `mode` of a secret or config file: octal with a leading `0` or `0o` (`0440`, `0o440`,
/// `"0440"`), at most `0777`. A number without the leading `0` is refused, since Compose reads it
/// as decimal (`440` would be `0670`) and its author rarely meant that.
pub(crate) fn parse_file_mode(text: &str) -> Result<u32, FileMountError> {
    let error = || FileMountError::Mode {
        text: text.to_string(),
    };
    let octal = text
        .strip_prefix("0o")
        .or_else(|| {
            text.strip_prefix('0')
                .map(|rest| if rest.is_empty() { "0" } else { rest })
        })
        .ok_or_else(error)?;
    if octal.is_empty() || octal.len() > 4 || !octal.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(error());
    }
    match u32::from_str_radix(octal, 8) {
        Ok(bits) if bits <= 0o777 => Ok(bits),
        _ => Err(error()),
    }
}

fn tmpfs_size(size: &str) -> Result<u64, TmpfsError> {
    let bytes = parse_size(size).map_err(|_| TmpfsError::Size {
        size: size.to_string(),
    })?;
    if bytes > MAX_TMPFS_BYTES {
        return Err(TmpfsError::TooLarge {
            size: size.to_string(),
        });
    }
    Ok(bytes)
}

fn tmpfs_mode(mode: &str) -> Result<u32, TmpfsError> {
    let octal = !mode.is_empty() && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(mode, 8) {
        Ok(bits) if octal && bits <= 0o7777 => Ok(bits),
        _ => Err(TmpfsError::Mode {
            mode: mode.to_string(),
        }),
    }
}

/// Apply one `NAME=VALUE` option to `mount`; `seen` holds the options already applied.
fn tmpfs_option<'t>(
    mount: &mut TmpfsMount,
    seen: &mut Vec<&'t str>,
    option: &'t str,
) -> Result<(), TmpfsError> {
    let (name, value) = option.split_once('=').unwrap_or((option, ""));
    match name {
        "size" | "mode" if seen.contains(&name) => {
            return Err(TmpfsError::OptionTwice {
                name: name.to_string(),
            })
        }
        "size" => mount.size_bytes = tmpfs_size(value)?,
        "mode" => mount.mode = tmpfs_mode(value)?,
        _ => {
            return Err(TmpfsError::Option {
                option: option.to_string(),
            })
        }
    }
    seen.push(name);
    Ok(())
}

/// Parse `/path[:size=SIZE,mode=MODE]`: an absolute path outside `/proc`, `/sys` and `/dev`
/// (kept without `.`, empty parts or a trailing `/`), [`DEFAULT_TMPFS_BYTES`] and mode 1777
/// unless given, at most [`MAX_TMPFS_BYTES`].
pub(crate) fn parse_tmpfs(text: &str) -> Result<TmpfsMount, FieldError> {
    let error = |reason| FieldError::Tmpfs {
        text: text.to_string(),
        reason,
    };
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    let mut mount = TmpfsMount {
        target: tmpfs_target(target).map_err(error)?,
        size_bytes: DEFAULT_TMPFS_BYTES,
        mode: 0o1777,
    };
    let mut seen = Vec::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        tmpfs_option(&mut mount, &mut seen, option).map_err(error)?;
    }
    Ok(mount)
}

/// Why a `devices` entry is refused; the text follows the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// More than `HOST:CONTAINER:PERMISSIONS`.
    #[error("write \"/dev/HOST[:/dev/CONTAINER][:rwm]\"")]
    Syntax,
    /// A path that is not under `/dev/`.
    #[error("{path:?} is not a path under /dev/")]
    NotUnderDev {
        /// The path.
        path: String,
    },
    /// A path with an empty, `.` or `..` part.
    #[error("{path:?} has an empty, \".\" or \"..\" part; write the path plainly")]
    PathParts {
        /// The path.
        path: String,
    },
    /// Permissions that are not a subset of `rwm`.
    #[error("permissions {permissions:?} are not a non-empty subset of \"rwm\" (each letter at most once)")]
    Permissions {
        /// The permissions as written.
        permissions: String,
    },
    /// A host device no service is given.
    #[error("{path} {reason}")]
    Refused {
        /// The host path.
        path: String,
        /// Why.
        reason: &'static str,
    },
}

const TPM: &str = "reaches the TPM, which holds the device's identity and disk keys";
const DISK: &str = "is a disk, a partition or a view of one, and may be the system disk";
const KERNEL: &str = "reaches kernel memory";
const DMA: &str = "gives a device direct access to all memory";
const CONSOLE: &str = "is the device's console, where keystrokes can be typed into a login";

/// Host devices no service is given, whatever the device's labels, as names under `/dev/`: `#`
/// stands for a digit and a final `*` for any rest. Symbolic links to other devices (e.g. an
/// LVM volume group's directory) are the runtime's to refuse: it sees what they point to.
const REFUSED_DEVICES: &[(&str, &str)] = &[
    ("tpm*", TPM),
    ("sd*", DISK),
    ("vd*", DISK),
    ("hd*", DISK),
    ("xvd*", DISK),
    ("nvme*", DISK),
    ("mmcblk*", DISK),
    ("dm-*", DISK),
    ("md*", DISK),
    ("loop*", DISK),
    ("sg#*", DISK),
    ("bsg/*", DISK),
    ("mtd*", DISK),
    ("ubi*", DISK),
    ("root", DISK),
    ("ng#*", DISK),
    ("nbd*", DISK),
    ("sr#*", DISK),
    ("pmem*", DISK),
    ("dax*", KERNEL),
    ("vfio/*", DMA),
    ("uio*", DMA),
    ("tty#*", CONSOLE),
    ("console", CONSOLE),
    ("fd/*", "is one of the agent's own open files"),
    ("mapper/*", DISK),
    ("disk/*", DISK),
    ("block/*", DISK),
    (
        "zram*",
        "is the device's swap in memory, which holds other processes' memory",
    ),
    ("mem", KERNEL),
    ("kmem", KERNEL),
    ("port", KERNEL),
    ("kmsg", KERNEL),
    (
        "cpu/*",
        "reaches the CPU's model-specific registers, and through them kernel memory",
    ),
    (
        "char/*",
        "names devices by number, so it can reach the TPM or a disk; give the device's own name",
    ),
    (
        "watchdog*",
        "controls the hardware watchdog, which reboots the device",
    ),
];

/// Whether `name` matches a [`REFUSED_DEVICES`] pattern.
fn device_matches(pattern: &str, name: &str) -> bool {
    let (pattern, any_rest) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut rest = name.chars();
    let prefix_ok = pattern.chars().all(|p| {
        rest.next()
            .is_some_and(|c| c == p || (p == '#' && c.is_ascii_digit()))
    });
    prefix_ok && (any_rest || rest.next().is_none())
}

/// Check a path under `/dev/` written plainly; the name under `/dev/`.
fn dev_path(path: &str) -> Result<&str, DeviceError> {
    let name = path
        .strip_prefix("/dev/")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DeviceError::NotUnderDev {
            path: path.to_string(),
        })?;
    if name.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err(DeviceError::PathParts {
            path: path.to_string(),
        });
    }
    Ok(name)
}

/// Why `path` (`/dev/...`, as written or as the runtime resolved it) is never given to a
/// service, or `None` when it may be (given the device's labels).
pub fn refused_host_device(path: &str) -> Option<String> {
    match dev_path(path) {
        Err(e) => Some(e.to_string()),
        Ok(name) => REFUSED_DEVICES
            .iter()
            .find(|(p, _)| device_matches(p, name))
            .map(|(_, reason)| format!("{path} {reason}")),
    }
}

/// Check a device mapping: host and container paths under `/dev/`, the host device not one of
/// [`REFUSED_DEVICES`], permissions a non-empty subset of `rwm`.
pub(crate) fn device_mapping(
    host: &str,
    container: &str,
    permissions: &str,
) -> Result<DeviceMapping, DeviceError> {
    let name = dev_path(host)?;
    if let Some((_, reason)) = REFUSED_DEVICES
        .iter()
        .find(|(p, _)| device_matches(p, name))
    {
        return Err(DeviceError::Refused {
            path: host.to_string(),
            reason,
        });
    }
    dev_path(container)?;
    let subset = permissions
        .char_indices()
        .all(|(i, c)| "rwm".contains(c) && !permissions[..i].contains(c));
    if permissions.is_empty() || !subset {
        return Err(DeviceError::Permissions {
            permissions: permissions.to_string(),
        });
    }
    Ok(DeviceMapping {
        host: host.to_string(),
        container: container.to_string(),
        permissions: permissions.to_string(),
    })
}

/// Parse `HOST[:CONTAINER][:PERMISSIONS]` (the container path is the host path unless given;
/// permissions are `rwm` unless given).
pub(crate) fn parse_device(text: &str) -> Result<DeviceMapping, FieldError> {
    let mut parts = text.splitn(4, ':');
    let host = parts.next().unwrap_or_default();
    let (container, permissions) = match (parts.next(), parts.next(), parts.next()) {
        (None, ..) => (host, "rwm"),
        (Some(perms), None, _) if !perms.starts_with('/') => (host, perms),
        (Some(container), None, _) => (container, "rwm"),
        (Some(container), Some(perms), None) => (container, perms),
        _ => ("", ""),
    };
    let result = if container.is_empty() {
        Err(DeviceError::Syntax)
    } else {
        device_mapping(host, container, permissions)
    };
    result.map_err(|reason| FieldError::Device {
        text: text.to_string(),
        reason,
    })
}
