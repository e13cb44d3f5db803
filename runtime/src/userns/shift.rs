//! Moving the owners of a directory tree into an app's id range (see [`IdRange::shifted`]): an
//! image's files (in a copy of its snapshot), a volume made before the app had a range, the
//! files the agent writes for an app.
//!
//! The walk never follows a symbolic link, not even in the middle of a path: every entry is
//! pinned with an `O_PATH | O_NOFOLLOW` descriptor relative to its directory's descriptor and
//! changed through it (`AT_EMPTY_PATH`), so nothing is ever opened for reading or writing but
//! directories, and a container that swaps an entry of its volume for a link, a FIFO or another
//! directory while the walk runs changes nothing outside the tree. A directory is walked only if
//! the one opened for reading is the inode pinned. The set-user-ID and set-group-ID bits the
//! kernel clears when a regular file changes owner are put back. The walk stays on the tree's
//! file system.
//!
//! Not shifted: ids in POSIX ACLs and in file capabilities (`security.capability`). Images
//! rarely carry them, and file capabilities do nothing under `no_new_privileges` anyway.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use super::IdRange;

/// Most entries one shift changes: a bound on the work a hostile volume can ask for.
pub const MAX_ENTRIES: u64 = 5_000_000;
/// Deepest directory nesting walked (one open descriptor per level).
pub const MAX_DEPTH: usize = 256;

/// Why a tree could not be shifted.
#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    /// A file system call failed.
    #[error("cannot give {path} to the app's id range: {source}")]
    Io {
        /// The path (relative names joined to the tree's root, for the message only).
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The tree is larger or deeper than the walk's bounds.
    #[error("{root} has more than {MAX_ENTRIES} entries or is nested deeper than {MAX_DEPTH}; Cairn does not shift trees that large")]
    TooLarge {
        /// The tree.
        root: PathBuf,
    },
}

/// What a shift did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shifted {
    /// Entries looked at (the root included).
    pub entries: u64,
    /// Entries whose owner or group changed.
    pub changed: u64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const PATH_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Shift the owner and group of `root` and of everything below it into `range`; `root` itself
/// last. Depth first, with one open directory per level.
///
/// # Errors
/// When `root` is not a directory (or is a link), a call fails, or the tree passes the bounds.
pub fn shift_tree(root: &Path, range: IdRange) -> Result<Shifted, ShiftError> {
    let io = |path: &Path, e: Errno| ShiftError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let top = rustix::fs::open(root, DIR_FLAGS, Mode::empty()).map_err(|e| io(root, e))?;
    let device = rustix::fs::fstat(&top).map_err(|e| io(root, e))?.st_dev;
    let top_last = rustix::io::dup(&top).map_err(|e| io(root, e))?;
    let mut done = Shifted {
        entries: 1,
        changed: 0,
    };
    let mut stack: Vec<(rustix::fs::Dir, PathBuf)> = vec![(
        rustix::fs::Dir::new(top).map_err(|e| io(root, e))?,
        root.to_path_buf(),
    )];
    while let Some((dir, path)) = stack.last_mut() {
        let Some(entry) = dir.read() else {
            stack.pop();
            continue;
        };
        let entry = entry.map_err(|e| io(path, e))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let child = path.join(name.to_string_lossy().as_ref());
        done.entries += 1;
        if done.entries > MAX_ENTRIES {
            return Err(ShiftError::TooLarge {
                root: root.to_path_buf(),
            });
        }
        let parent = dir.fd().map_err(|e| io(&child, e))?;
        if let Some(subdir) = shift_entry(parent, name, &child, device, range, &mut done)? {
            if stack.len() >= MAX_DEPTH {
                return Err(ShiftError::TooLarge {
                    root: root.to_path_buf(),
                });
            }
            let subdir = rustix::fs::Dir::new(subdir).map_err(|e| io(&child, e))?;
            stack.push((subdir, child));
        }
    }
    shift_fd(&top_last, root, range, &mut done)?;
    Ok(done)
}

/// Shift one entry of directory `dir`, pinned first with an `O_PATH` descriptor (never
/// following a link) and checked to be what was listed; returns it opened as a directory when
/// it is one on the tree's file system, to walk next.
fn shift_entry(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    device: u64,
    range: IdRange,
    done: &mut Shifted,
) -> Result<Option<OwnedFd>, ShiftError> {
    let io = |e: Errno| ShiftError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let pinned = match rustix::fs::openat(dir, name, PATH_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        // Gone since it was listed: nothing to do.
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    shift_fd(&pinned, path, range, done)?;
    let stat = rustix::fs::fstat(&pinned).map_err(io)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory || stat.st_dev != device {
        return Ok(None);
    }
    // Open it for reading its entries, and make sure it is still the directory pinned.
    let opened = match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let again = rustix::fs::fstat(&opened).map_err(io)?;
    if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
        return Ok(None);
    }
    Ok(Some(opened))
}

/// Shift the inode behind `fd` (an `O_PATH` or ordinary descriptor), putting back the
/// set-user-ID and set-group-ID bits the kernel clears when a regular file changes owner.
fn shift_fd(
    fd: &OwnedFd,
    path: &Path,
    range: IdRange,
    done: &mut Shifted,
) -> Result<(), ShiftError> {
    let io = |e: Errno| ShiftError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let stat = rustix::fs::fstat(fd).map_err(io)?;
    let (uid, gid) = (range.shifted(stat.st_uid), range.shifted(stat.st_gid));
    if (uid, gid) == (stat.st_uid, stat.st_gid) {
        return Ok(());
    }
    rustix::fs::chownat(
        fd,
        c"",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io)?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    let mode = Mode::from_raw_mode(stat.st_mode) & Mode::from_raw_mode(0o7777);
    if kind == FileType::RegularFile && mode.intersects(Mode::SUID | Mode::SGID) {
        // chmod through the descriptor's /proc link: it names this inode, never a path.
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::chmod(link.as_str(), mode).map_err(io)?;
    }
    done.changed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn owner(path: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn a_tree_moves_into_the_range_once_keeping_setuid_and_never_following_links() {
        if !is_root() {
            eprintln!("\n======== SKIP: chown needs root; this test did NOT run ========\n");
            return;
        }
        let range = IdRange::nth(3).unwrap();
        let base = range.host_start;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "host file").unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("etc/deep")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        let suid = root.join("su");
        std::fs::write(&suid, "#!").unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::chown(root.join("etc/deep"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("hostetc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::os::unix::fs::chown(root.join("etc/passwd"), Some(70_000), None).unwrap();
        // Wide is not deep: 600 sibling directories hold no descriptor each.
        for n in 0..600 {
            std::fs::create_dir_all(root.join(format!("wide/d{n}"))).unwrap();
        }

        let done = shift_tree(&root, range).unwrap();
        assert_eq!(done.entries, 609, "{done:?}");
        assert_eq!(owner(&root.join("wide/d599")), (base, base));
        assert_eq!(owner(&root), (base, base));
        assert_eq!(owner(&root.join("etc/deep")), (base + 1000, base + 1000));
        assert_eq!(
            owner(&root.join("etc/link")),
            (base, base),
            "the link itself"
        );
        assert_eq!(owner(&root.join("fifo")), (base, base));
        assert_eq!(
            owner(&root.join("etc/passwd")),
            (70_000, base),
            "a foreign uid stays"
        );
        assert_eq!(owner(&outside), (0, 0), "nothing through a link");
        assert_eq!(owner(Path::new("/etc")).0, 0);
        let mode = std::fs::metadata(&suid).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o4755, "set-user-ID kept");

        // Twice is once.
        let again = shift_tree(&root, range).unwrap();
        assert_eq!((again.entries, again.changed), (609, 0));
        assert_eq!(owner(&root.join("etc/deep")), (base + 1000, base + 1000));

        // Deeper than MAX_DEPTH is refused.
        let mut deep = dir.path().join("deep");
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let err = shift_tree(&dir.path().join("deep"), range).unwrap_err();
        assert!(matches!(err, ShiftError::TooLarge { .. }), "{err}");

        // A link as the root is refused, not followed.
        let err = shift_tree(&root.join("hostetc"), range)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot give"), "{err}");
    }
}
