//! The package lock beside each recipe (`recipes/<name>.lock`): every Debian package in the root
//! filesystem with its exact version and the SHA256 of its .deb, one `name=version sha256:HEX`
//! line per package. The build pins apt to these versions and fails when the installed set
//! differs (the mirror moved on: run `cairn-image lock`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The lock could not be read, parsed, or does not match what was installed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file is missing or unreadable.
    #[error("cannot read the package lock {path}: {source} (generate it with `cairn-image lock <recipe>`)")]
    Read {
        /// The lock path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {problem}")]
    Parse {
        /// The lock path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The root filesystem does not hold exactly the locked packages.
    #[error("the installed packages differ from the lock {path}:\n{differences}\nThe Debian mirror has moved on from the locked versions; regenerate the lock with `cairn-image lock <recipe>` and review the diff")]
    Mismatch {
        /// The lock path.
        path: PathBuf,
        /// One line per difference.
        differences: String,
    },
}

/// One locked package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedPackage {
    /// Exact Debian version.
    pub version: String,
    /// SHA256 of the .deb, when known.
    pub sha256: Option<String>,
}

/// The parsed lock: package name to version and digest, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// The packages.
    pub packages: BTreeMap<String, LockedPackage>,
}

impl Lock {
    /// Read a lock file.
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Lock::parse(&text, path)
    }

    /// Parse lock text (`#` comments and blank lines ignored).
    pub fn parse(text: &str, path: &Path) -> Result<Lock, LockError> {
        let mut packages = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |problem: String| LockError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                problem,
            };
            let mut fields = line.split_whitespace();
            let pin = fields.next().unwrap_or_default();
            let (name, version) = pin
                .split_once('=')
                .ok_or_else(|| err(format!("expected name=version, got {pin:?}")))?;
            if name.is_empty() || version.is_empty() {
                return Err(err(format!("expected name=version, got {pin:?}")));
            }
            let sha256 = match fields.next() {
                None => None,
                Some(field) => {
                    let hex = field
                        .strip_prefix("sha256:")
                        .ok_or_else(|| err(format!("expected sha256:HEX, got {field:?}")))?;
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(err(format!("bad sha256 {hex:?}")));
                    }
                    Some(hex.to_ascii_lowercase())
                }
            };
            if let Some(extra) = fields.next() {
                return Err(err(format!("unexpected {extra:?}")));
            }
            let entry = LockedPackage {
                version: version.to_string(),
                sha256,
            };
            if packages.insert(name.to_string(), entry).is_some() {
                return Err(err(format!("{name} is listed twice")));
            }
        }
        Ok(Lock { packages })
    }

    /// Render the lock file text, with a header naming the recipe.
    pub fn render(&self, header: &str) -> String {
        let mut out = String::new();
        for line in header.lines() {
            let _ = writeln!(out, "# {line}");
        }
        for (name, pkg) in &self.packages {
            match &pkg.sha256 {
                Some(sha) => {
                    let _ = writeln!(out, "{name}={} sha256:{sha}", pkg.version);
                }
                None => {
                    let _ = writeln!(out, "{name}={}", pkg.version);
                }
            }
        }
        out
    }

    /// apt preferences pinning every locked package to its version (priority 1001 wins over
    /// any candidate, so the essential set and dependencies follow the lock too).
    pub fn apt_preferences(&self) -> String {
        let mut out = String::new();
        for (name, pkg) in &self.packages {
            let _ = write!(
                out,
                "Package: {name}\nPin: version {}\nPin-Priority: 1001\n\n",
                pkg.version
            );
        }
        out
    }

    /// A digest of the lock's content, for cache keys.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.render("").as_bytes()))
    }

    /// Check that `installed` (name to version) is exactly the locked set.
    pub fn check_installed(
        &self,
        installed: &BTreeMap<String, String>,
        path: &Path,
    ) -> Result<(), LockError> {
        let mut differences = String::new();
        for (name, pkg) in &self.packages {
            match installed.get(name) {
                None => {
                    let _ = writeln!(
                        differences,
                        "  locked but not installed: {name}={}",
                        pkg.version
                    );
                }
                Some(v) if *v != pkg.version => {
                    let _ = writeln!(
                        differences,
                        "  {name}: locked {} but installed {v}",
                        pkg.version
                    );
                }
                Some(_) => {}
            }
        }
        for (name, version) in installed {
            if !self.packages.contains_key(name) {
                let _ = writeln!(differences, "  installed but not locked: {name}={version}");
            }
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(LockError::Mismatch {
                path: path.to_path_buf(),
                differences,
            })
        }
    }
}

/// Parse a lock line list as printed by the lock-generation hook: `name version sha256` per line
/// (sha256 may be empty when apt did not know it).
pub fn from_listing(listing: &str, path: &Path) -> Result<Lock, LockError> {
    let mut lock = Lock::default();
    for (index, line) in listing.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            [name, version] => {
                lock.packages.insert(
                    name.to_string(),
                    LockedPackage {
                        version: version.to_string(),
                        sha256: None,
                    },
                );
            }
            [name, version, sha] => {
                lock.packages.insert(
                    name.to_string(),
                    LockedPackage {
                        version: version.to_string(),
                        sha256: Some(sha.to_ascii_lowercase()),
                    },
                );
            }
            _ => {
                return Err(LockError::Parse {
                    path: path.to_path_buf(),
                    line: index + 1,
                    problem: format!("unexpected package listing line {line:?}"),
                })
            }
        }
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trips_and_pins() {
        let text = format!("# header\nbash=5.2.15-2+b7 sha256:{SHA}\nzlib1g=1:1.2.13.dfsg-1\n");
        let lock = Lock::parse(&text, Path::new("x.lock")).unwrap();
        assert_eq!(lock.packages["zlib1g"].version, "1:1.2.13.dfsg-1");
        assert_eq!(
            Lock::parse(&lock.render("h"), Path::new("x")).unwrap(),
            lock
        );
        assert!(lock
            .apt_preferences()
            .contains("Package: bash\nPin: version 5.2.15-2+b7\nPin-Priority: 1001\n"));
    }

    #[test]
    fn refuses_malformed_lines() {
        assert!(Lock::parse("bash\n", Path::new("x")).is_err());
        assert!(Lock::parse("bash=1 md5:00\n", Path::new("x")).is_err());
        assert!(Lock::parse("bash=1\nbash=2\n", Path::new("x")).is_err());
    }

    #[test]
    fn reports_every_difference() {
        let lock = Lock::parse("a=1\nb=2\n", Path::new("x.lock")).unwrap();
        let installed: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("c".to_string(), "3".to_string()),
        ]
        .into();
        let err = lock
            .check_installed(&installed, Path::new("x.lock"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("locked but not installed: b=2")
                && err.contains("installed but not locked: c=3"),
            "{err}"
        );
        let same: BTreeMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        lock.check_installed(&same, Path::new("x")).unwrap();
    }
}
