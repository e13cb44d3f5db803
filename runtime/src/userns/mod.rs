//! User namespaces of apps.
//!
//! Each app's containers run in one user namespace of the app's own, in which container ids 0 to
//! 65535 are a host id range no other app and no host user has ([`ranges`]): root in a
//! container is an unprivileged id on the host, and two apps cannot touch each other's files
//! or processes even through a shared kernel object.
//!
//! The namespace is persistent: a file under the run dir with the namespace bind-mounted on it,
//! like the network namespaces, made once per app ([`create`]). The network namespaces of the
//! app's services are made inside it ([`create_netns_in`]), so container root owns them: runc
//! can mount `/sys` and set `net.*` sysctls there, which it cannot in a network namespace of the
//! host's user namespace. runc joins both by path.
//!
//! Making a namespace takes a short-lived child process: a process that uses threads, like the
//! agent, may neither make a user namespace nor enter one. The child makes (or enters) it just
//! before it runs `sleep`, the agent writes its id maps and bind-mounts its namespace, then
//! kills it.

pub mod ranges;
pub mod shift;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

pub use ranges::{IdRange, IdRanges, RangeError, FIRST_HOST_ID, IDS_PER_APP};
pub use shift::{shift_tree, ShiftError, Shifted};

/// The program the helper child runs once its namespace is made (it is killed right after).
const HOLDER: &str = "/bin/sleep";

/// Errors making or removing a namespace.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// The namespace could not be made, mapped or mounted.
    #[error("cannot make {what} {path}: {source}; the agent must run as root on a kernel with user namespaces")]
    Create {
        /// "user namespace" or "network namespace".
        what: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The app's id range could not be found or kept.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The namespace file could not be unmounted or removed.
    #[error(
        "cannot remove namespace {path}: {source}; check what still holds it (`findmnt {path}`)"
    )]
    Remove {
        /// The namespace file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
}

/// The user namespace an app's containers join: its namespace file and its id range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUserns {
    /// The namespace file (made by [`create`]).
    pub path: PathBuf,
    /// Its host id range.
    pub range: IdRange,
}

/// Whether `app` runs in a user namespace of its own: unless a service is given host `devices`
/// (a device node owned by host root is out of reach from a mapped root) or shares the host's
/// network (in the host's network namespace a mapped root holds no capability, so it could not
/// bind a port below 1024, and it may not mount a `/sys` of it). Docker's user namespaces have
/// the same limits.
pub fn app_wants_userns(app: &cairn_compose::AppSpec) -> bool {
    app.services
        .values()
        .all(|s| s.devices.is_empty() && s.network_mode != cairn_compose::NetworkMode::Host)
}

/// The user namespaces of the apps on this host: their ranges persisted in a file on the data
/// partition, their namespace files (`<app>-<first host id>`) in a directory on tmpfs, made
/// again after a reboot.
#[derive(Debug)]
pub struct AppNamespaces {
    ranges_file: PathBuf,
    dir: PathBuf,
    ranges: Option<IdRanges>,
}

impl AppNamespaces {
    /// Ranges in `ranges_file`, namespace files in `dir` (nothing is read or made yet).
    pub fn new(ranges_file: PathBuf, dir: PathBuf) -> AppNamespaces {
        AppNamespaces {
            ranges_file,
            dir,
            ranges: None,
        }
    }

    /// The user namespace of `app`: its range (allocated on first use) and its namespace file
    /// (made when missing).
    ///
    /// # Errors
    /// When the ranges cannot be read or kept, or the namespace cannot be made.
    pub fn ensure(&mut self, app: &str) -> Result<AppUserns, UsernsError> {
        let ranges = match &mut self.ranges {
            Some(ranges) => ranges,
            None => self.ranges.insert(IdRanges::load(&self.ranges_file)?),
        };
        let range = ranges.allocate(app)?;
        let path = self.dir.join(format!("{app}-{}", range.host_start));
        create(&path, range)?;
        Ok(AppUserns { path, range })
    }

    /// Remove the namespace files of apps not in `keep` (their ranges stay, with their files).
    pub fn remove_except(&self, keep: &std::collections::HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let app = name.rsplit_once('-').map_or(name.as_str(), |(app, _)| app);
            if !keep.contains(app) {
                if let Err(e) = remove(&entry.path()) {
                    tracing::warn!(error = %e, "cannot remove an app's user namespace");
                }
            }
        }
    }
}

/// Whether `path` is a mounted namespace file.
pub fn is_namespace(path: &Path) -> bool {
    crate::network::netns::is_netns(path)
}

/// Kills and reaps the helper child however the caller leaves.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the helper child, which runs `before_exec` (in the child, just before `exec`).
fn helper(
    before_exec: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<Helper> {
    let mut command = Command::new(HOLDER);
    command
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: `before_exec` only makes system calls (unshare, setns), which are
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe { command.pre_exec(before_exec) };
    command.spawn().map(Helper)
}

/// Bind-mount namespace `ns` of process `pid` on `path` (made empty first).
fn mount_namespace(pid: u32, ns: &str, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        // Only root looks in here (joining a namespace takes privileges over it anyway).
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    rustix::mount::mount_bind(format!("/proc/{pid}/ns/{ns}").as_str(), path)?;
    Ok(())
}

/// Make a user namespace whose ids 0 to 65535 are `range` and bind-mount it on `path`. An
/// existing namespace file is kept (the caller names files by range, so it has the same map).
///
/// # Errors
/// When the kernel refuses, or the maps or the mount cannot be written.
pub fn create(path: &Path, range: IdRange) -> Result<(), UsernsError> {
    if is_namespace(path) {
        return Ok(());
    }
    let err = |source: io::Error| UsernsError::Create {
        what: "user namespace",
        path: path.to_path_buf(),
        source,
    };
    let child = helper(|| {
        // SAFETY: the child is single-threaded between fork and exec; only its user
        // namespace changes, before it runs the holder.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER) }?;
        Ok(())
    })
    .map_err(err)?;
    let pid = child.0.id();
    let map = range.map_line();
    std::fs::write(format!("/proc/{pid}/uid_map"), &map).map_err(err)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &map).map_err(err)?;
    if let Err(e) = mount_namespace(pid, "user", path) {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Make a network namespace owned by the user namespace mounted on `userns` and bind-mount it
/// on `path`. An existing namespace file is kept.
///
/// # Errors
/// When `userns` is not a namespace, or the kernel refuses.
pub fn create_netns_in(userns: &Path, path: &Path) -> Result<(), UsernsError> {
    if is_namespace(path) {
        return Ok(());
    }
    let err = |source: io::Error| UsernsError::Create {
        what: "network namespace",
        path: path.to_path_buf(),
        source,
    };
    if !is_namespace(userns) {
        return Err(err(io::Error::other(format!(
            "{} is not a user namespace",
            userns.display()
        ))));
    }
    let owner = std::fs::File::open(userns).map_err(err)?;
    let child = helper(move || {
        rustix::thread::move_into_link_name_space(owner.as_fd(), Some(LinkNameSpaceType::User))?;
        // SAFETY: as in `create`: a single-threaded child, only its network namespace.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
        Ok(())
    })
    .map_err(err)?;
    if let Err(e) = mount_namespace(child.0.id(), "net", path) {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Unmount and delete namespace file `path`. Idempotent. The namespace itself goes with its
/// last user.
///
/// # Errors
/// When the unmount or the removal fails.
pub fn remove(path: &Path) -> Result<(), UsernsError> {
    crate::network::netns::remove(path).map_err(|e| UsernsError::Remove {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Run `args` in the namespace files given, through nsenter.
    fn nsenter(user: Option<&Path>, net: &Path, args: &[&str]) -> String {
        let mut command = Command::new("nsenter");
        if let Some(user) = user {
            command.arg(format!("--user={}", user.display()));
        }
        let out = command
            .arg(format!("--net={}", net.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn an_apps_network_namespace_belongs_to_its_user_namespace() {
        if !is_root() {
            eprintln!("\n======== SKIP: namespaces need root; this test did NOT run ========\n");
            return;
        }
        let sysctl = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
        let host_before = std::fs::read_to_string(sysctl).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange::nth(5).unwrap();
        let userns = dir.path().join("userns").join("shop");
        let netns = dir.path().join("netns").join("shop_web");
        create(&userns, range).unwrap();
        assert!(is_namespace(&userns));
        create(&userns, range).unwrap();
        create_netns_in(&userns, &netns).unwrap();
        assert!(is_namespace(&netns));
        // Root of the user namespace is the range's first id, and owns the network namespace:
        // it may change a sysctl there, which host root's namespaces would refuse it.
        let map = nsenter(
            Some(&userns),
            &netns,
            &["sh", "-c", "cat /proc/self/uid_map; echo 80 > /proc/sys/net/ipv4/ip_unprivileged_port_start && cat /proc/sys/net/ipv4/ip_unprivileged_port_start"],
        );
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(fields[..3], ["0", &range.host_start.to_string(), "65536"]);
        assert_eq!(fields[3], "80");
        assert_eq!(
            std::fs::read_to_string(sysctl).unwrap(),
            host_before,
            "the host's is its own"
        );

        let err = create_netns_in(&dir.path().join("missing"), &dir.path().join("n2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a user namespace"), "{err}");
        remove(&netns).unwrap();
        remove(&userns).unwrap();
        remove(&userns).unwrap();
        assert!(!netns.exists() && !userns.exists());
    }
}
