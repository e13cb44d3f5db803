//! What a service's processes run as and with: `user`, `stop_signal`, `stop_grace_period`,
//! capabilities, `ulimits` and `sysctls`.

use std::time::Duration;

use super::{parse_duration, FieldError};
use crate::Ulimit;

/// Why a `user` is refused; the text follows the value (`"a b" is not a user: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// An empty user or group.
    #[error("the user or the group is empty")]
    Empty,
    /// More than `USER:GROUP`.
    #[error("it has more than one ':'")]
    TooManyParts,
    /// A name longer than [`MAX_USER_NAME`].
    #[error("{part:?} is longer than {} characters", MAX_USER_NAME)]
    TooLong {
        /// The name.
        part: String,
    },
    /// A name with a character outside the POSIX portable set.
    #[error(
        "{part:?} contains {found:?}; names use letters, digits, '.', '_' and '-' (not first)"
    )]
    Character {
        /// The name.
        part: String,
        /// The first such character.
        found: char,
    },
    /// A number above the largest id (2^32 - 1 means "no id" to the kernel).
    #[error("{part} is above the largest id, 4294967294")]
    IdTooLarge {
        /// The number as written.
        part: String,
    },
}

/// Longest user or group name (what `useradd` accepts).
const MAX_USER_NAME: usize = 32;

/// Check one side of `USER:GROUP`: a number up to 2^32 - 2, or a POSIX portable name
/// (`[A-Za-z0-9._-]`, not starting with `-`) of at most [`MAX_USER_NAME`] characters.
fn check_user_part(part: &str) -> Result<(), UserError> {
    if part.is_empty() {
        return Err(UserError::Empty);
    }
    if part.bytes().all(|b| b.is_ascii_digit()) {
        return match part.parse::<u32>() {
            Ok(id) if id < u32::MAX => Ok(()),
            _ => Err(UserError::IdTooLarge {
                part: part.to_string(),
            }),
        };
    }
    let bad = part.char_indices().find(|&(i, c)| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_') || (c == '-' && i > 0))
    });
    if let Some((_, found)) = bad {
        return Err(UserError::Character {
            part: part.to_string(),
            found,
        });
    }
    if part.len() > MAX_USER_NAME {
        return Err(UserError::TooLong {
            part: part.to_string(),
        });
    }
    Ok(())
}

/// Check `NAME_OR_UID[:NAME_OR_GID]`; it is kept as written (names are looked up in the image).
pub(crate) fn parse_user(text: &str) -> Result<String, FieldError> {
    let error = |reason| FieldError::User {
        text: text.to_string(),
        reason,
    };
    let mut parts = text.splitn(3, ':');
    let user = parts.next().unwrap_or_default();
    check_user_part(user).map_err(error)?;
    if let Some(group) = parts.next() {
        check_user_part(group).map_err(error)?;
    }
    if parts.next().is_some() {
        return Err(error(UserError::TooManyParts));
    }
    Ok(text.to_string())
}

/// Linux signal numbers by name (without `SIG`); x86_64 and arm64 share these generic numbers.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The real-time signals as the kernel numbers them (glibc keeps 32 and 33 for itself).
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;
const SIGSTOP: i32 = 19;

/// A signal name (case-insensitive, with or without `SIG`, `RTMIN+N`, `RTMAX-N`) or number.
fn signal_number(text: &str) -> Option<i32> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().filter(|n| (1..=SIGRTMAX).contains(n));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    // `RTMIN`, `RTMIN+N`, `RTMAX`, `RTMAX-N`: the offset after its sign.
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        let digits = rest.strip_prefix(sign)?;
        let ok = (1..=2).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| digits.parse().ok()).flatten()
    };
    let number = if let Some(rest) = name.strip_prefix("RTMIN") {
        SIGRTMIN + offset(rest, '+')?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        SIGRTMAX - offset(rest, '-')?
    } else {
        return SIGNALS.iter().find(|(n, _)| *n == name).map(|&(_, s)| s);
    };
    (SIGRTMIN..=SIGRTMAX).contains(&number).then_some(number)
}

/// Parse a `stop_signal` to its Linux number; SIGSTOP is refused (it never stops anything).
pub(crate) fn parse_stop_signal(text: &str) -> Result<i32, FieldError> {
    match signal_number(text) {
        Some(SIGSTOP) => Err(FieldError::StopSignal {
            text: text.to_string(),
        }),
        Some(number) => Ok(number),
        None => Err(FieldError::Signal {
            text: text.to_string(),
        }),
    }
}

/// Longest `stop_grace_period`: the reconciler stops containers one after another, so a long
/// stop holds up every other app's changes on the device.
const MAX_GRACE: Duration = Duration::from_secs(120);

/// Parse a `stop_grace_period`: a duration of at most two minutes.
pub(crate) fn parse_grace_period(text: &str) -> Result<Duration, FieldError> {
    let grace = parse_duration(text)?;
    if grace > MAX_GRACE {
        return Err(FieldError::DurationTooLong {
            text: text.to_string(),
            max: "2m",
        });
    }
    Ok(grace)
}

/// Every Linux capability, by number (CAP_CHOWN = 0 to CAP_CHECKPOINT_RESTORE = 40), as
/// linux/include/uapi/linux/capability.h defines them.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Capabilities no service is given, whatever the device's labels: each lets a process leave its
/// confinement or reach the TPM, the disks or the agent. The text follows "it ".
pub(crate) const NEVER_GRANTED: &[(&str, &str)] = &[
    ("CAP_SYS_ADMIN", "is the catch-all administration capability (mounts, namespaces, devices), enough to leave the container"),
    ("CAP_SYS_MODULE", "loads kernel modules, which run as the kernel"),
    ("CAP_SYS_RAWIO", "gives raw access to I/O ports and device memory, which reaches the TPM and the disks directly"),
    ("CAP_SYS_PTRACE", "traces and rewrites other processes, and reads kernel addresses"),
    ("CAP_SYS_BOOT", "reboots the device and loads other kernels"),
    ("CAP_MAC_ADMIN", "changes the AppArmor policy that confines every app"),
    ("CAP_MAC_OVERRIDE", "bypasses the AppArmor policy that confines every app"),
    ("CAP_BPF", "loads BPF programs, which run in the kernel and can read its memory"),
    ("CAP_PERFMON", "watches the whole system, kernel and other apps included, through perf events"),
    ("CAP_DAC_READ_SEARCH", "opens files by handle (open_by_handle_at), which reaches files outside the container"),
    ("CAP_LINUX_IMMUTABLE", "clears the immutable and append-only flags that protect files even from root"),
    ("CAP_SYSLOG", "reads and clears the kernel log, which holds kernel addresses and other apps' messages"),
    ("CAP_AUDIT_CONTROL", "changes or turns off the audit rules of the whole device"),
];

/// Why capability `name` (as `CAP_SYS_ADMIN`) is never granted, or `None` when a label may allow
/// it. The runtime asks again before it grants anything.
pub fn refused_capability(name: &str) -> Option<&'static str> {
    NEVER_GRANTED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, reason)| reason)
}

/// Parse a capability name for `cap_add` (`add`) or `cap_drop`: with or without `CAP_`, any case,
/// normalized to `CAP_NET_ADMIN`; `ALL` only in `cap_drop`; [`NEVER_GRANTED`] refused in `cap_add`.
pub(crate) fn parse_capability(text: &str, add: bool) -> Result<String, FieldError> {
    let upper = text.to_ascii_uppercase();
    if upper == "ALL" {
        return if add {
            Err(FieldError::CapabilityAll)
        } else {
            Ok(upper)
        };
    }
    let name = format!("CAP_{}", upper.strip_prefix("CAP_").unwrap_or(&upper));
    if !ALL_CAPABILITIES.contains(&name.as_str()) {
        return Err(FieldError::Capability {
            name: text.to_string(),
        });
    }
    match refused_capability(&name) {
        Some(reason) if add => Err(FieldError::CapabilityRefused { name, reason }),
        _ => Ok(name),
    }
}

/// The ulimits a service may set (`setrlimit(2)` names without `RLIMIT_`).
pub(crate) const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Largest `nofile`: the kernel's default `fs.nr_open`, which `setrlimit` cannot pass.
const MAX_NOFILE: u64 = 1 << 20;

/// Parse a ulimit value: a whole number (`-1`, unlimited, is refused).
pub(crate) fn parse_ulimit_value(text: &str) -> Result<u64, FieldError> {
    text.parse().map_err(|_| FieldError::UlimitValue {
        text: text.to_string(),
    })
}

/// Check ulimit `name` (one of [`ULIMITS`]): soft at most hard, `nofile` at most 2^20; `rtprio`
/// above 0 is refused, since real-time threads escape the cgroup CPU limit and can starve the
/// agent.
pub(crate) fn check_ulimit(name: &str, soft: u64, hard: u64) -> Result<Ulimit, FieldError> {
    if soft > hard {
        return Err(FieldError::UlimitOrder { soft, hard });
    }
    match name {
        "nofile" if hard > MAX_NOFILE => Err(FieldError::UlimitTooHigh {
            name: "nofile",
            value: hard,
            max: MAX_NOFILE,
        }),
        "rtprio" if hard > 0 => Err(FieldError::UlimitRefused {
            name: "rtprio",
            value: hard,
            reason: "would let the service run real-time threads, which the cgroup CPU limit does not hold and which can starve the agent",
        }),
        _ => Ok(Ulimit { soft, hard }),
    }
}

/// Longest sysctl name.
pub(crate) const MAX_SYSCTL_NAME: usize = 128;

/// Longest sysctl value.
pub(crate) const MAX_SYSCTL_VALUE: usize = 256;

/// The sysctls a container may set: those the kernel keeps per namespace (`*` ends a prefix).
pub(crate) const NAMESPACED_SYSCTLS: &[&str] = &[
    "net.*",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "fs.mqueue.*",
];

/// Check a sysctl: a name of lowercase letters, digits and `_` in `.`-separated parts, one of
/// [`NAMESPACED_SYSCTLS`], and a printable value. `host_network`: `net.*` would change the host.
///
/// # Errors
/// [`FieldError`] saying which rule the sysctl breaks.
pub fn check_sysctl(name: &str, value: &str, host_network: bool) -> Result<(), FieldError> {
    let name_ok = name.len() <= MAX_SYSCTL_NAME
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    let error = |make: fn(String) -> FieldError| Err(make(name.to_string()));
    if !name_ok {
        return error(|name| FieldError::SysctlName { name });
    }
    let allowed = NAMESPACED_SYSCTLS
        .iter()
        .any(|s| match s.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *s,
        });
    if !allowed {
        return error(|name| FieldError::SysctlNotNamespaced { name });
    }
    if host_network && name.starts_with("net.") {
        return error(|name| FieldError::SysctlHostNetwork { name });
    }
    if value.is_empty()
        || value.len() > MAX_SYSCTL_VALUE
        || !value.bytes().all(|b| (b' '..=b'~').contains(&b))
    {
        return error(|name| FieldError::SysctlValue { name });
    }
    Ok(())
}
