//! What a service's processes run as and how they stop: `user`, `stop_signal` and
//! `stop_grace_period`.

use std::time::Duration;

use super::{parse_duration, FieldError};

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

/// Longest `stop_grace_period`: a stop that takes longer holds up updates of the whole device.
const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Parse a `stop_grace_period`: a duration of at most one hour.
pub(crate) fn parse_grace_period(text: &str) -> Result<Duration, FieldError> {
    let grace = parse_duration(text)?;
    if grace > MAX_GRACE {
        return Err(FieldError::DurationTooLong {
            text: text.to_string(),
            max: "1h",
        });
    }
    Ok(grace)
}
