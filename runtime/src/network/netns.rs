//! Named network namespaces: an empty file with a new network namespace bind-mounted on it
//! (what `ip netns add` does under /run/netns, here under a directory of our own). The file keeps
//! the namespace alive without any process in it, so a container's task can exit and restart in
//! the same namespace with the same address.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// `NSFS_MAGIC` from linux/magic.h: the file system type of a mounted namespace file.
const NSFS_MAGIC: rustix::fs::FsWord = 0x6e73_6673;

/// Errors creating or removing a named network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace could not be created or mounted.
    #[error("cannot create network namespace {path}: {source}; the agent must run as root with CAP_SYS_ADMIN and {path} must be on a writable file system")]
    Create {
        /// The namespace file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The namespace could not be unmounted or its file removed.
    #[error("cannot remove network namespace {path}: {source}; check what still holds it (`findmnt {path}`)")]
    Remove {
        /// The namespace file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
}

/// Whether `path` is a mounted namespace file.
pub(crate) fn is_netns(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|fs| fs.f_type == NSFS_MAGIC)
}

/// Create a new network namespace and bind-mount it on `path` (creating the file and its
/// directory). Nothing happens when `path` already is a namespace.
///
/// The namespace is made by a short-lived thread of its own (`unshare(CLONE_NEWNET)` only changes
/// the calling thread), so no thread of the async runtime ever ends up in it.
pub(crate) async fn create(path: &Path) -> Result<(), NetnsError> {
    if is_netns(path) {
        return Ok(());
    }
    let err = |source| NetnsError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    let target = path.to_path_buf();
    let joined = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> io::Result<()> {
            // SAFETY: kept unsafe because rustix's unshare is (unsharing the file descriptor
            // table would let this thread see descriptors other threads do not); only the network
            // namespace is unshared, and this thread ends right after, so its changed namespace
            // is never used again.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
            Ok(())
        })
        .join()
    })
    .await;
    let result = match joined {
        Ok(Ok(r)) => r,
        _ => Err(io::Error::other("the namespace thread panicked")),
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Unmount and delete the namespace file `path`. Idempotent: a missing file or one that is not
/// mounted is fine. The namespace itself goes away with its last user.
pub(crate) fn remove(path: &Path) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Remove {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
        Ok(_) => {}
    }
    // A file may carry the namespace mount more than once (e.g. two interrupted creates).
    while is_netns(path) {
        match rustix::mount::unmount(path, UnmountFlags::DETACH) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(err(e.into())),
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[tokio::test]
    async fn create_is_idempotent_and_remove_cleans_up() {
        if !is_root() {
            eprintln!(
                "\n======== SKIP: network namespaces need root; this test did NOT run ========\n"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns").join("app_svc");
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert!(!is_netns(&path));
        create(&path).await.unwrap();
        assert!(is_netns(&path));
        let ino = std::fs::metadata(&path).unwrap();
        create(&path).await.unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
            std::os::unix::fs::MetadataExt::ino(&ino),
            "a second create keeps the namespace"
        );
        // This thread's namespace is untouched.
        assert_eq!(own, std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
