//! Parsers for the scalar formats of a Compose file: volumes, durations, sizes, CPUs, restart
//! policies, names, labels and shell-style commands here; ports and host entries in `network`,
//! users, signals, capabilities, ulimits and sysctls in `process`, tmpfs mounts and devices in
//! `mounts`. Each error says what is wrong and what to write instead.

mod mounts;
mod network;
mod process;

use std::time::Duration;

use super::{DependsOn, RestartPolicy, VolumeMount};

pub(crate) use mounts::{
    device_mapping, file_target, parse_device, parse_file_id, parse_file_mode, parse_tmpfs,
};
pub use mounts::{refused_host_device, DeviceError, FileMountError, TmpfsError};
pub(crate) use network::{
    check_hostname, expand_ports, parse_extra_host, parse_host_ip, parse_port, parse_port_mode,
    parse_port_range, parse_protocol, MAX_PORTS_PER_APP, MAX_PORTS_PER_SERVICE,
};
#[cfg(test)]
pub(crate) use process::NEVER_GRANTED;
pub use process::{check_sysctl, refused_capability, UserError, ALL_CAPABILITIES};
pub(crate) use process::{
    check_ulimit, parse_capability, parse_grace_period, parse_stop_signal, parse_ulimit_value,
    parse_user, ULIMITS,
};

/// Why an app or service name is refused; the text follows the name (`service name "Web" contains
/// 'W'; ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a name must not be empty")]
    Empty,
    /// The name is longer than containerd ids allow.
    #[error("is longer than {max} characters; use a shorter name")]
    TooLong {
        /// The longest name allowed.
        max: usize,
    },
    /// A character other than lowercase ASCII letters, digits, `-`, `_` and `.`.
    #[error("contains {found:?}; use lowercase letters, digits and single '-', '_' or '.'")]
    Character {
        /// The first such character.
        found: char,
    },
    /// The name starts with a separator or has two in a row.
    #[error("must start with a letter or digit and not have two separators in a row")]
    Separators,
    /// The name ends with a separator.
    #[error("must end with a letter or digit")]
    TrailingSeparator,
    /// An app name contains `_`.
    #[error("must not contain '_' (it separates app and service in container ids)")]
    Underscore,
}

/// Why a scalar value of a Compose file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A secret name that cannot be a file name in `/run/secrets`.
    #[error("{name:?} is not a usable secret name; use up to 64 letters, digits, '-', '_' or '.'")]
    SecretName {
        /// The name.
        name: String,
    },
    /// A config name that cannot be a file name in `/`.
    #[error("{name:?} is not a usable config name; use up to 64 letters, digits, '-', '_' or '.'")]
    ConfigName {
        /// The name.
        name: String,
    },
    /// A volume name Compose would refuse.
    #[error("volume name {name:?} is invalid: use up to 64 letters, digits, '_', '.' or '-', starting with a letter or digit")]
    VolumeName {
        /// The name.
        name: String,
    },
    /// A `ports` entry that is not `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]`.
    #[error("{text:?} is not a port mapping: {reason}; write \"HOST:CONTAINER[/tcp|udp]\", e.g. \"8080:80\"")]
    Port {
        /// The entry as written.
        text: String,
        /// Which part is wrong.
        reason: PortError,
    },
    /// A `volumes` entry that is not `NAME:PATH[:MODE]`.
    #[error("{text:?} is not a volume: write \"NAME:/path/in/container[:ro]\"")]
    VolumeSyntax {
        /// The entry as written.
        text: String,
    },
    /// A `volumes` entry that mounts a host path instead of a named volume.
    #[error("{text:?} mounts a host path; only named volumes (kept on the data partition) are allowed: write \"NAME:{target}\"")]
    HostPath {
        /// The entry as written.
        text: String,
        /// Its container path.
        target: String,
    },
    /// A `volumes` entry whose container path is not usable.
    #[error("{text:?}: {reason}")]
    VolumeTarget {
        /// The entry as written.
        text: String,
        /// What is wrong with the path.
        reason: ContainerPathError,
    },
    /// A `volumes` entry with a mode other than `ro` or `rw`.
    #[error("{text:?}: mode {mode:?} is not supported; use \"ro\" or \"rw\"")]
    VolumeMode {
        /// The entry as written.
        text: String,
        /// The mode.
        mode: String,
    },
    /// Not a Compose duration.
    #[error("{text:?} is not a duration; write e.g. \"30s\", \"1m30s\" or \"500ms\"")]
    Duration {
        /// The value as written.
        text: String,
    },
    /// Not a memory size.
    #[error("{text:?} is not a memory size; write e.g. \"512m\", \"1g\" or a number of bytes")]
    MemorySize {
        /// The value as written.
        text: String,
    },
    /// A memory limit too small for any container.
    #[error("{text:?} is below the 6 MiB minimum a container needs; give at least \"6m\"")]
    MemoryTooSmall {
        /// The value as written.
        text: String,
    },
    /// Not a CPU count in range.
    #[error("{text:?} is not a CPU count; write a number from 0.01 to 1024, e.g. \"0.5\"")]
    Cpus {
        /// The value as written.
        text: String,
    },
    /// Not a restart policy.
    #[error("{text:?} is not a restart policy; use \"no\", \"always\", \"on-failure[:MAX]\" or \"unless-stopped\"")]
    Restart {
        /// The value as written.
        text: String,
    },
    /// A health check's `retries` that is not a whole number of at least 1.
    #[error("{text:?} is not a whole number of at least 1")]
    Retries {
        /// The value as written.
        text: String,
    },
    /// A command string with a `'` that is not closed.
    #[error("{text:?} has an unclosed single quote")]
    UnclosedSingleQuote {
        /// The command as written.
        text: String,
    },
    /// A command string with a `"` that is not closed.
    #[error("{text:?} has an unclosed double quote")]
    UnclosedDoubleQuote {
        /// The command as written.
        text: String,
    },
    /// A command string ending in a `\` that escapes nothing.
    #[error("{text:?} ends with a lone backslash")]
    LoneBackslash {
        /// The command as written.
        text: String,
    },
    /// A long-syntax `ports` value (`target`, `published`, `host_ip`, `protocol`) that is wrong.
    #[error("{reason}")]
    PortPart {
        /// What is wrong.
        reason: PortError,
    },
    /// A long-syntax `ports` `mode` other than `host` or `ingress`.
    #[error("{mode:?} is not a port mode; use \"host\" or \"ingress\" (both publish the port on this device)")]
    PortMode {
        /// The mode as written.
        mode: String,
    },
    /// A host name that is not an RFC 1123 name.
    #[error("{name:?} is not a host name: use labels of 1-63 letters, digits and '-' (not first or last) separated by '.', at most 253 characters")]
    HostName {
        /// The name as written.
        name: String,
    },
    /// An `extra_hosts` address that is not an IP address.
    #[error("{address:?} is not an IP address; write e.g. \"{host}=10.0.0.5\" or \"{host}=::1\"")]
    HostAddress {
        /// The host it is given for.
        host: String,
        /// The address as written.
        address: String,
    },
    /// A `user` that is not `NAME_OR_UID[:NAME_OR_GID]`.
    #[error("{text:?} is not a user: {reason}; write NAME_OR_UID[:NAME_OR_GID], e.g. \"1000:1000\" or \"app\"")]
    User {
        /// The value as written.
        text: String,
        /// Which part is wrong.
        reason: UserError,
    },
    /// A label key that is empty, too long or holds spaces or control characters.
    #[error("{key:?} is not a label key: use 1 to {} bytes without spaces or control characters, e.g. \"com.example.role\"", MAX_LABEL_KEY_BYTES)]
    LabelKey {
        /// The key as written.
        key: String,
    },
    /// A label key in the agent's own `cairn.` namespace.
    #[error("label {key:?} starts with \"cairn.\": those labels are reserved for the agent; use your own prefix, e.g. \"com.example.\"")]
    LabelReserved {
        /// The key as written.
        key: String,
    },
    /// A label whose key and value are longer than containerd keeps.
    #[error("label {key:?} and its value are {bytes} bytes; containerd keeps at most 4096 bytes per label, and the agent prefixes the key: keep key and value within {} bytes", MAX_LABEL_BYTES)]
    LabelTooLong {
        /// The key.
        key: String,
        /// Bytes of key and value together.
        bytes: usize,
    },
    /// A `tmpfs` entry that is not `/path[:size=SIZE,mode=MODE]`.
    #[error("{text:?} is not a tmpfs mount: {reason}; write \"/path[:size=64m,mode=1777]\"")]
    Tmpfs {
        /// The entry as written.
        text: String,
        /// What is wrong.
        reason: TmpfsError,
    },
    /// Not a signal name or number.
    #[error("{text:?} is not a signal; write a name such as \"SIGTERM\", \"SIGINT\" or \"SIGRTMIN+3\", or a number from 1 to 64")]
    Signal {
        /// The value as written.
        text: String,
    },
    /// SIGSTOP as the stop signal.
    #[error("{text:?} is SIGSTOP, which pauses the service instead of stopping it, so every stop would wait out stop_grace_period and end in SIGKILL; use SIGTERM (the default) or the signal the program handles")]
    StopSignal {
        /// The value as written.
        text: String,
    },
    /// A duration above the field's maximum.
    #[error("{text:?} is longer than the {max} maximum")]
    DurationTooLong {
        /// The value as written.
        text: String,
        /// The maximum, as a duration would be written.
        max: &'static str,
    },
    /// Not a Linux capability.
    #[error("{name:?} is not a Linux capability; write a name such as \"NET_ADMIN\" or \"CAP_NET_ADMIN\" (see capabilities(7))")]
    Capability {
        /// The name as written.
        name: String,
    },
    /// `cap_add: [ALL]`.
    #[error("ALL would give the service every capability, which makes it a privileged container; add the capabilities it needs by name")]
    CapabilityAll,
    /// A capability that lets a service leave its confinement or reach the TPM or the agent.
    #[error("{name} is never granted on Cairn: it {reason}")]
    CapabilityRefused {
        /// The capability (`CAP_…`).
        name: String,
        /// What it would allow.
        reason: &'static str,
    },
    /// A ulimit value that is not a whole number.
    #[error("{text:?} is not a limit; write a whole number (-1, unlimited, is not accepted)")]
    UlimitValue {
        /// The value as written.
        text: String,
    },
    /// A soft limit above its hard limit.
    #[error("soft limit {soft} is above the hard limit {hard}; the soft limit must be at most the hard one")]
    UlimitOrder {
        /// The soft limit.
        soft: u64,
        /// The hard limit.
        hard: u64,
    },
    /// A ulimit above what the device allows.
    #[error("{name} limit {value} is above the {max} maximum")]
    UlimitTooHigh {
        /// The ulimit.
        name: &'static str,
        /// The limit as given.
        value: u64,
        /// The maximum.
        max: u64,
    },
    /// A ulimit that is never raised on Cairn.
    #[error("{name} {value} {reason}; leave {name} out (or 0)")]
    UlimitRefused {
        /// The ulimit.
        name: &'static str,
        /// The limit as given.
        value: u64,
        /// What it would allow.
        reason: &'static str,
    },
    /// Not a sysctl name.
    #[error("{name:?} is not a sysctl name: use lowercase letters, digits and '_' in parts separated by '.', at most {} characters", process::MAX_SYSCTL_NAME)]
    SysctlName {
        /// The name as written.
        name: String,
    },
    /// A sysctl that is not namespaced, so it would change the whole device.
    #[error("{name} is not a namespaced sysctl, so it would change the whole device; allowed: {}", process::NAMESPACED_SYSCTLS.join(", "))]
    SysctlNotNamespaced {
        /// The name.
        name: String,
    },
    /// A sysctl value that is empty, too long or not printable.
    #[error(
        "the value of {name} must be 1 to {} printable characters",
        process::MAX_SYSCTL_VALUE
    )]
    SysctlValue {
        /// The sysctl.
        name: String,
    },
    /// A `net.*` sysctl of a service on the host's network.
    #[error("{name} would change the device's own network, since the service uses network_mode: host; remove the sysctl or network_mode: host")]
    SysctlHostNetwork {
        /// The sysctl.
        name: String,
    },
    /// A log driver that sends logs off the device.
    #[error("{driver:?} is not supported: logs stay on the device, where the agent rotates them and `cairnctl logs` reads them; use \"json-file\" or \"local\", or leave the driver out")]
    LogDriver {
        /// The driver as written.
        driver: String,
    },
    /// A log `max-size` outside 64 KiB to 1 GiB.
    #[error("{text:?} is not a log size from 64k to 1g; write e.g. \"10m\"")]
    LogSize {
        /// The value as written.
        text: String,
    },
    /// A log `max-file` outside 1 to 20.
    #[error("{text:?} is not a number of log files from 1 to 20")]
    LogFiles {
        /// The value as written.
        text: String,
    },
    /// A `devices` entry that cannot be given to a service.
    #[error("{text:?} is not a usable device: {reason}")]
    Device {
        /// The entry as written.
        text: String,
        /// What is wrong.
        reason: DeviceError,
    },
    /// Not a `depends_on` condition.
    #[error("{text:?} is not a depends_on condition; use \"service_started\", \"service_healthy\" or \"service_completed_successfully\"")]
    Condition {
        /// The value as written.
        text: String,
    },
}

/// Which part of a port mapping is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A protocol other than `tcp` or `udp`.
    #[error("protocol {protocol:?} is not tcp or udp")]
    Protocol {
        /// The protocol as written.
        protocol: String,
    },
    /// A range whose last port is below its first (`8010-8000`).
    #[error("range {range:?} ends before it starts; write FIRST-LAST, e.g. \"8000-8010\"")]
    RangeOrder {
        /// The range as written.
        range: String,
    },
    /// Host and container ranges of different lengths (Docker would pick one host port of the
    /// range at random, which never happens here).
    #[error("the host range has {host} ports and the container range {container}; each container port needs its own host port (none is picked at random): give ranges of the same length, e.g. \"8000-8001:80-81\"")]
    RangeLengths {
        /// Ports in the host range.
        host: usize,
        /// Ports in the container range.
        container: usize,
    },
    /// A range longer than a service may publish.
    #[error("the range has {count} ports; a service publishes at most {max}")]
    RangeTooLong {
        /// Ports in the range.
        count: usize,
        /// The most a service may publish.
        max: usize,
    },
    /// An IPv6 host address without `[addr]:` around it.
    #[error("an IPv6 address must be written as [addr]:HOST:CONTAINER")]
    Ipv6Syntax,
    /// `[addr]:HOST` with no container port.
    #[error("missing the container port")]
    MissingContainerPort,
    /// A single port, which would leave the host port to chance.
    #[error("the host port is missing (ports are never picked at random here)")]
    MissingHostPort,
    /// More parts than `HOST_IP:HOST:CONTAINER`.
    #[error("too many ':'")]
    TooManyParts,
    /// A host address that is not an IP address.
    #[error("host address {address:?} is not an IP address")]
    HostAddress {
        /// The address as written.
        address: String,
    },
    /// A host port that is not from 1 to 65535.
    #[error("host port {text:?} is not a number from 1 to 65535")]
    HostPort {
        /// The port as written.
        text: String,
    },
    /// A container port that is not from 1 to 65535.
    #[error("container port {text:?} is not a number from 1 to 65535")]
    ContainerPort {
        /// The port as written.
        text: String,
    },
}

/// Why a container path cannot be a mount target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerPathError {
    /// A relative path.
    #[error("container path {path:?} must be absolute")]
    NotAbsolute {
        /// The path.
        path: String,
    },
    /// The container's root itself.
    #[error("cannot mount over the container's root \"/\"")]
    Root,
    /// A path with a `..` component.
    #[error("container path {path:?} must not contain \"..\"")]
    ParentDir {
        /// The path.
        path: String,
    },
}

/// Check an app, service or volume name: lowercase ASCII letters and digits in runs separated by
/// single `-`, `_` or `.`, at most `max` characters (these names become containerd ids).
pub(crate) fn check_name(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong { max });
    }
    let mut prev_sep = true;
    for c in name.chars() {
        let sep = matches!(c, '-' | '_' | '.');
        if !(sep || c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(NameError::Character { found: c });
        }
        if sep && prev_sep {
            return Err(NameError::Separators);
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(NameError::TrailingSeparator);
    }
    Ok(())
}

/// Check a secret name: it becomes the file name `/run/secrets/NAME`.
pub(crate) fn check_secret_name(name: &str) -> Result<(), FieldError> {
    if is_file_name(name) {
        Ok(())
    } else {
        Err(FieldError::SecretName {
            name: name.to_string(),
        })
    }
}

/// Check a config name: it becomes the file name `/NAME`.
pub(crate) fn check_config_name(name: &str) -> Result<(), FieldError> {
    if is_file_name(name) {
        Ok(())
    } else {
        Err(FieldError::ConfigName {
            name: name.to_string(),
        })
    }
}

/// Up to 64 ASCII letters, digits, `-`, `_` and `.`, and neither `.` nor `..`.
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parse `VOLUME:/container/path[:ro|:rw]` (named volumes only).
pub(crate) fn parse_volume(text: &str) -> Result<VolumeMount, FieldError> {
    let parts: Vec<&str> = text.split(':').collect();
    let (name, target, mode) = match parts.as_slice() {
        [n, t] => (*n, *t, "rw"),
        [n, t, m] => (*n, *t, *m),
        _ => {
            return Err(FieldError::VolumeSyntax {
                text: text.to_string(),
            })
        }
    };
    if name.starts_with('/') || name.starts_with('.') || name.starts_with('~') {
        return Err(FieldError::HostPath {
            text: text.to_string(),
            target: target.to_string(),
        });
    }
    check_volume_name(name)?;
    check_container_path(target).map_err(|reason| FieldError::VolumeTarget {
        text: text.to_string(),
        reason,
    })?;
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(FieldError::VolumeMode {
                text: text.to_string(),
                mode: other.to_string(),
            })
        }
    };
    Ok(VolumeMount {
        volume: name.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// Volume names follow Compose (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 64 characters.
pub(crate) fn check_volume_name(name: &str) -> Result<(), FieldError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(FieldError::VolumeName {
            name: name.to_string(),
        })
    }
}

/// An absolute path inside a container, without `..` and not `/` itself.
pub(crate) fn check_container_path(path: &str) -> Result<(), ContainerPathError> {
    if !path.starts_with('/') {
        return Err(ContainerPathError::NotAbsolute {
            path: path.to_string(),
        });
    }
    if path.trim_end_matches('/').is_empty() {
        return Err(ContainerPathError::Root);
    }
    if path.split('/').any(|c| c == "..") {
        return Err(ContainerPathError::ParentDir {
            path: path.to_string(),
        });
    }
    Ok(())
}

/// A container path without empty or `.` parts or a trailing `/` (`//a/./b/` is `/a/b`), so that
/// two ways of writing one target compare equal.
pub(crate) fn normalize_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Parse a Compose duration: a sequence of NUMBER UNIT with units `h`, `m`, `s`, `ms`, `us`
/// (e.g. `1m30s`, `500ms`, `1.5s`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, FieldError> {
    let fail = || {
        Err(FieldError::Duration {
            text: text.to_string(),
        })
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return fail();
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let Ok(n) = rest[..num_len].parse::<f64>() else {
            return fail();
        };
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            _ => return fail(),
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    if !total.is_finite() || total > 366.0 * 86400.0 {
        return fail();
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parse a memory limit: a size ([`parse_size`]) of at least the 6 MiB a container needs.
pub(crate) fn parse_memory(text: &str) -> Result<u64, FieldError> {
    let bytes = parse_size(text)?;
    if bytes < 6 << 20 {
        return Err(FieldError::MemoryTooSmall {
            text: text.to_string(),
        });
    }
    Ok(bytes)
}

/// Parse a size: bytes, or a number with `b`, `k`, `m`, `g` (optionally followed by `b`), in
/// binary multiples as Compose does (`512m` = 512 MiB); at least 1 byte.
pub(crate) fn parse_size(text: &str) -> Result<u64, FieldError> {
    let fail = || {
        Err(FieldError::MemorySize {
            text: text.to_string(),
        })
    };
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let Ok(n) = lower[..digits].parse::<f64>() else {
        return fail();
    };
    let mult: u64 = match &lower[digits..] {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return fail(),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && (1.0..1e18).contains(&bytes)) {
        return fail();
    }
    Ok(bytes as u64)
}

/// Longest label key in bytes.
pub(crate) const MAX_LABEL_KEY_BYTES: usize = 256;

/// Most bytes of a label's key and value together: containerd refuses longer labels.
pub(crate) const MAX_LABEL_BYTES: usize = 4096 - 16;

/// Check a label: a key of 1 to [`MAX_LABEL_KEY_BYTES`] bytes without spaces or control
/// characters, outside the agent's `cairn.` namespace, and at most [`MAX_LABEL_BYTES`] with its
/// value.
pub(crate) fn check_label(key: &str, value: &str) -> Result<(), FieldError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_BYTES
        && !key.chars().any(|c| c.is_whitespace() || c.is_control());
    if !key_ok {
        return Err(FieldError::LabelKey {
            key: key.to_string(),
        });
    }
    if key
        .get(..6)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("cairn."))
    {
        return Err(FieldError::LabelReserved {
            key: key.to_string(),
        });
    }
    let bytes = key.len() + value.len();
    if bytes > MAX_LABEL_BYTES {
        return Err(FieldError::LabelTooLong {
            key: key.to_string(),
            bytes,
        });
    }
    Ok(())
}

/// Check a `logging.driver`: one that keeps logs in files on the device.
pub(crate) fn check_log_driver(text: &str) -> Result<(), FieldError> {
    match text {
        "json-file" | "local" => Ok(()),
        _ => Err(FieldError::LogDriver {
            driver: text.to_string(),
        }),
    }
}

/// Parse a `logging.options.max-size`: a size from 64 KiB to 1 GiB.
pub(crate) fn parse_log_size(text: &str) -> Result<u64, FieldError> {
    match parse_size(text) {
        Ok(bytes) if (64 << 10..=1 << 30).contains(&bytes) => Ok(bytes),
        _ => Err(FieldError::LogSize {
            text: text.to_string(),
        }),
    }
}

/// Parse a `logging.options.max-file`: 1 to 20 files.
pub(crate) fn parse_log_files(text: &str) -> Result<u32, FieldError> {
    match text.parse() {
        Ok(files) if (1..=20).contains(&files) => Ok(files),
        _ => Err(FieldError::LogFiles {
            text: text.to_string(),
        }),
    }
}

/// Parse a `depends_on` condition.
pub(crate) fn parse_condition(text: &str) -> Result<DependsOn, FieldError> {
    match text {
        "service_started" => Ok(DependsOn::ServiceStarted),
        "service_healthy" => Ok(DependsOn::ServiceHealthy),
        "service_completed_successfully" => Ok(DependsOn::ServiceCompletedSuccessfully),
        _ => Err(FieldError::Condition {
            text: text.to_string(),
        }),
    }
}

/// Parse a CPU count such as `0.5` or `2` into thousandths of a CPU.
pub(crate) fn parse_cpus(text: &str) -> Result<u64, FieldError> {
    match text.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && (0.01..=1024.0).contains(&c) => Ok((c * 1000.0).round() as u64),
        _ => Err(FieldError::Cpus {
            text: text.to_string(),
        }),
    }
}

/// Parse a restart policy: `no`, `always`, `on-failure[:MAX]`, `unless-stopped`.
pub(crate) fn parse_restart(text: &str) -> Result<RestartPolicy, FieldError> {
    let fail = || {
        Err(FieldError::Restart {
            text: text.to_string(),
        })
    };
    match text {
        "no" | "false" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
        _ => match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(RestartPolicy::OnFailure {
                max_retries: Some(n),
            }),
            _ => fail(),
        },
    }
}

/// Split a command string the way a POSIX shell splits words (quotes and backslashes; no
/// expansion), as Compose does for `command: "..."`.
///
/// # Errors
/// When a quote is not closed or the string ends in a lone backslash.
pub fn split_command(text: &str) -> Result<Vec<String>, FieldError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err(FieldError::UnclosedSingleQuote {
                                text: text.to_string(),
                            })
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => {
                                return Err(FieldError::UnclosedDoubleQuote {
                                    text: text.to_string(),
                                })
                            }
                        },
                        Some(c) => word.push(c),
                        None => {
                            return Err(FieldError::UnclosedDoubleQuote {
                                text: text.to_string(),
                            })
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => {
                        return Err(FieldError::LoneBackslash {
                            text: text.to_string(),
                        })
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = &parse_port("8080:80").unwrap()[0];
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (8080, 80, crate::Protocol::Tcp)
        );
        let p = &parse_port("127.0.0.1:53:5353/udp").unwrap()[0];
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, crate::Protocol::Udp);
        assert!(parse_port("[::1]:80:80").unwrap()[0]
            .host_ip
            .unwrap()
            .is_ipv6());
        for bad in [
            "80",
            "80:abc",
            "0:80",
            "80:80/sctp",
            "5-1:5-1",
            "1-5:1-4",
            "a:b:c:d",
            "x:1:2",
        ] {
            let err = parse_port(bad).unwrap_err();
            assert!(matches!(err, FieldError::Port { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume("data:/var/lib/data:ro").unwrap();
        assert_eq!(
            (v.volume.as_str(), v.target.as_str(), v.read_only),
            ("data", "/var/lib/data", true)
        );
        let target = |text: &str| match parse_volume(text) {
            Err(FieldError::VolumeTarget { reason, .. }) => reason,
            other => panic!("{text}: {other:?}"),
        };
        assert!(matches!(
            parse_volume("/etc:/etc"),
            Err(FieldError::HostPath { .. })
        ));
        assert!(matches!(
            parse_volume("./x:/x"),
            Err(FieldError::HostPath { .. })
        ));
        assert!(matches!(
            target("data:rel"),
            ContainerPathError::NotAbsolute { .. }
        ));
        assert_eq!(target("data:/"), ContainerPathError::Root);
        assert!(matches!(
            target("data:/a/../b"),
            ContainerPathError::ParentDir { .. }
        ));
        assert!(matches!(
            parse_volume("data:/x:rx"),
            Err(FieldError::VolumeMode { .. })
        ));
        assert!(matches!(
            parse_volume("da ta:/x"),
            Err(FieldError::VolumeName { .. })
        ));
        assert!(matches!(
            parse_volume("data"),
            Err(FieldError::VolumeSyntax { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "10", "10x", "s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_and_cpus() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5gb").unwrap(), 3 << 29);
        assert_eq!(parse_memory("104857600").unwrap(), 100 << 20);
        assert!(matches!(
            parse_memory("1k"),
            Err(FieldError::MemoryTooSmall { .. })
        ));
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn restart_policies() {
        assert_eq!(parse_restart("always").unwrap(), RestartPolicy::Always);
        assert_eq!(
            parse_restart("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("web-1", 32).is_ok());
        assert!(check_name("a.b_c", 32).is_ok());
        for (bad, error) in [
            ("", NameError::Empty),
            ("Web", NameError::Character { found: 'W' }),
            ("-a", NameError::Separators),
            ("a-", NameError::TrailingSeparator),
            ("a--b", NameError::Separators),
            ("a b", NameError::Character { found: ' ' }),
            (&"x".repeat(33), NameError::TooLong { max: 32 }),
        ] {
            assert_eq!(check_name(bad, 32), Err(error), "{bad}");
        }
        assert!(check_secret_name("db_password").is_ok());
        assert!(check_secret_name("..").is_err());
        assert!(check_secret_name("a/b").is_err());
    }

    #[test]
    fn command_splitting() {
        assert_eq!(
            split_command(r#"sh -c 'echo "hi there"' x\ y "a\"b""#).unwrap(),
            vec!["sh", "-c", "echo \"hi there\"", "x y", "a\"b"]
        );
        assert_eq!(split_command("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_command("''").unwrap(), vec![""]);
        assert!(matches!(
            split_command("'open"),
            Err(FieldError::UnclosedSingleQuote { .. })
        ));
        assert!(matches!(
            split_command("\"open"),
            Err(FieldError::UnclosedDoubleQuote { .. })
        ));
        assert!(matches!(
            split_command("end\\"),
            Err(FieldError::LoneBackslash { .. })
        ));
    }
}
