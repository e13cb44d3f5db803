//! The user a service runs as: `user:` of the service, or the image's `USER`, resolved against the
//! image's `/etc/passwd` and `/etc/group` the way runc's `GetExecUser` does it (which Docker
//! uses), with containerd's rule that the primary group is also a supplementary one.
//!
//! - `NAME` or `UID`: the passwd entry (by name, or the first with that uid) gives the uid and
//!   the primary gid; every group of `/etc/group` listing the user's name is a supplementary
//!   group. A name without an entry is an error; a uid without one runs with gid = uid (Cairn's
//!   rule before names were supported; Docker would use gid 0).
//! - `NAME:GROUP`, `UID:GID` and mixes: the group (by name or number) is the primary group and
//!   there are no supplementary groups from `/etc/group` (as runc: an explicit group means "this
//!   group only").
//! - Empty: root (`0`). `root` without a passwd entry is uid 0, gid 0, so images without a user
//!   database still run as root.

use std::fmt;

/// Longest `/etc/passwd` or `/etc/group` read from an image.
pub(crate) const MAX_USER_DB_BYTES: u64 = 1 << 20;

/// Largest uid or gid (runc refuses larger ones).
const MAX_ID: u32 = i32::MAX as u32;

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one first.
    pub additional_gids: Vec<u32>,
}

impl ResolvedUser {
    /// Root with its group only (used by unit tests and as the value of an empty user).
    #[cfg(test)]
    pub(crate) fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![0],
        }
    }
}

/// Which user database file a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDb {
    /// `/etc/passwd`.
    Passwd,
    /// `/etc/group`.
    Group,
}

impl UserDb {
    /// The file's path inside the image.
    pub fn path(self) -> &'static str {
        match self {
            UserDb::Passwd => "/etc/passwd",
            UserDb::Group => "/etc/group",
        }
    }
}

impl fmt::Display for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Why a `user:` value cannot be resolved in an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user or group name is not in the image's database.
    #[error("{kind} {name:?} is not in the image's {file}{}; add it to the image or give a number", if *.file_missing { " (the image has no such file)" } else { "" })]
    NotFound {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// Where it was looked for.
        file: UserDb,
        /// The file does not exist in the image.
        file_missing: bool,
    },
    /// A number is out of range.
    #[error("{kind} id {value} is out of range (0 to {MAX_ID})")]
    OutOfRange {
        /// `user` or `group`.
        kind: &'static str,
        /// The text given.
        value: String,
    },
}

/// A `passwd` entry (the fields Cairn uses).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// A `group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// A uid or gid field within runc's range (4294967295 means "no change" to the kernel).
fn id(field: &str) -> Option<u32> {
    field.trim().parse().ok().filter(|n| *n <= MAX_ID)
}

/// The name and the fields after the password of each record of `/etc/passwd` or `/etc/group`
/// text; empty lines, comments and lines without a password field are skipped.
fn records(text: &str) -> impl Iterator<Item = (&str, std::str::Split<'_, char>)> + '_ {
    text.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?.trim();
        let _password = fields.next()?;
        Some((name, fields))
    })
}

/// Entries of `/etc/passwd` text (`name:password:uid:gid:gecos:home:shell`); comments and lines
/// that do not parse are skipped, as C libraries and runc do.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry> + '_ {
    records(text).filter_map(|(name, mut fields)| {
        let uid = id(fields.next()?)?;
        let gid = id(fields.next()?)?;
        (!name.is_empty()).then(|| PasswdEntry {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

/// Entries of `/etc/group` text (`name:password:gid:member,member`).
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry> + '_ {
    records(text).filter_map(|(name, mut fields)| {
        let gid = id(fields.next()?)?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        (!name.is_empty()).then(|| GroupEntry {
            name: name.to_string(),
            gid,
            members,
        })
    })
}

/// Most groups a container process gets (the primary one included); a hostile `/etc/group`
/// could otherwise list the user in thousands.
const MAX_GROUPS: usize = 64;

/// `Some(n)` when `text` is a number, checked against runc's range.
fn number(text: &str, kind: &'static str) -> Result<Option<u32>, UserError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(n) if n <= MAX_ID => Ok(Some(n)),
        _ => Err(UserError::OutOfRange {
            kind,
            value: text.to_string(),
        }),
    }
}

/// `(user, group)` of a `USER[:GROUP]` value (empty user = root).
fn split(spec: &str) -> (&str, Option<&str>) {
    let spec = spec.trim();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (spec, None),
    };
    (if user.is_empty() { "0" } else { user }, group)
}

/// Whether resolving `spec` needs the image's user database: everything but `UID:GID`.
pub(crate) fn needs_user_db(spec: &str) -> bool {
    let (user, group) = split(spec);
    let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    !(numeric(user) && group.is_some_and(numeric))
}

/// Resolve `spec` (`USER[:GROUP]`) against the image's `/etc/passwd` and `/etc/group` (`None`:
/// the image has no such file).
pub(crate) fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = split(spec);
    let numeric_uid = number(user_part, "user")?;
    let entry = passwd.and_then(|p| {
        passwd_entries(p).find(|e| match numeric_uid {
            Some(uid) => e.uid == uid,
            None => e.name == user_part,
        })
    });
    let uid = match (&entry, numeric_uid) {
        (Some(e), _) => e.uid,
        (None, Some(uid)) => uid,
        (None, None) if user_part == "root" => 0,
        (None, None) => {
            return Err(UserError::NotFound {
                kind: "user",
                name: user_part.to_string(),
                file: UserDb::Passwd,
                file_missing: passwd.is_none(),
            })
        }
    };
    let mut additional = Vec::new();
    let gid = match group_part.filter(|g| !g.is_empty()) {
        Some(g) => match number(g, "group")? {
            Some(gid) => gid,
            None => group
                .and_then(|text| group_entries(text).find(|e| e.name == g))
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NotFound {
                    kind: "group",
                    name: g.to_string(),
                    file: UserDb::Group,
                    file_missing: group.is_none(),
                })?,
        },
        None => {
            if let (Some(e), Some(text)) = (&entry, group) {
                additional.extend(
                    group_entries(text)
                        .filter(|g| g.members.contains(&e.name))
                        .map(|g| g.gid),
                );
            }
            entry.as_ref().map_or(uid, |e| e.gid)
        }
    };
    let mut seen = std::collections::HashSet::from([gid]);
    let mut additional_gids = vec![gid];
    for g in additional {
        if additional_gids.len() >= MAX_GROUPS {
            break;
        }
        if seen.insert(g) {
            additional_gids.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "# users\nroot:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n\
        web:x:33:33::/var/www:/sbin/nologin\r\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nvideo:x:44:app\naudio:x:29:web, app\n\
        www-data:x:33:\nwheel:x:10:root\n";

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    fn resolve_in_image(spec: &str) -> Result<ResolvedUser, UserError> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn out_of_range_ids_are_skipped_and_groups_are_capped() {
        let passwd = "bad:x:4294967295:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n";
        let err = resolve("bad", Some(passwd), None).unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
        let group: String = (0..5000)
            .map(|g| format!("g{g}:x:{}:app\n", 2000 + g))
            .collect();
        let user = resolve("app", Some(passwd), Some(&group)).unwrap();
        assert_eq!(user.additional_gids.len(), MAX_GROUPS);
        assert_eq!(user.additional_gids[0], 1000);
    }

    #[test]
    fn names_give_ids_and_supplementary_groups() {
        assert_eq!(
            resolve_in_image("app").unwrap(),
            user(1000, 1000, &[1000, 44, 29])
        );
        assert_eq!(resolve_in_image("web").unwrap(), user(33, 33, &[33, 29]));
        // A uid with an entry is that entry (gid and groups from the database).
        assert_eq!(
            resolve_in_image("1000").unwrap(),
            user(1000, 1000, &[1000, 44, 29])
        );
        assert_eq!(resolve_in_image("").unwrap(), user(0, 0, &[0, 10]));
        assert_eq!(resolve_in_image("root").unwrap(), user(0, 0, &[0, 10]));
    }

    #[test]
    fn an_explicit_group_is_the_only_group() {
        assert_eq!(
            resolve_in_image("app:video").unwrap(),
            user(1000, 44, &[44])
        );
        assert_eq!(resolve_in_image("app:7").unwrap(), user(1000, 7, &[7]));
        assert_eq!(
            resolve_in_image("1000:www-data").unwrap(),
            user(1000, 33, &[33])
        );
        assert_eq!(
            resolve_in_image("5000:5001").unwrap(),
            user(5000, 5001, &[5001])
        );
        assert_eq!(resolve_in_image(":video").unwrap(), user(0, 44, &[44]));
    }

    #[test]
    fn numbers_without_entries_work_as_before() {
        assert_eq!(resolve_in_image("4242").unwrap(), user(4242, 4242, &[4242]));
        assert_eq!(
            resolve("4242", None, None).unwrap(),
            user(4242, 4242, &[4242])
        );
        assert_eq!(resolve("root", None, None).unwrap(), user(0, 0, &[0]));
        assert_eq!(resolve("", None, None).unwrap(), user(0, 0, &[0]));
    }

    #[test]
    fn unknown_names_and_bad_numbers_are_errors() {
        let err = resolve_in_image("nobody").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"nobody\" is not in the image's /etc/passwd; add it to the image or give a number"
        );
        let err = resolve("app", None, Some(GROUP)).unwrap_err();
        assert!(
            err.to_string().contains("(the image has no such file)"),
            "{err}"
        );
        let err = resolve_in_image("app:plugdev").unwrap_err();
        assert!(
            matches!(
                &err,
                UserError::NotFound {
                    kind: "group",
                    file: UserDb::Group,
                    ..
                }
            ),
            "{err}"
        );
        let err = resolve_in_image("4294967295").unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(resolve_in_image("app:2147483648").is_err());
    }

    #[test]
    fn only_uid_and_gid_skip_the_database() {
        assert!(!needs_user_db("1000:1000"));
        assert!(!needs_user_db(" 0:0 "));
        for spec in ["", "0", "1000", "app", "app:1", "1:video", "root"] {
            assert!(needs_user_db(spec), "{spec}");
        }
    }
}
