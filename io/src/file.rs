//! File system calls whose errors say which path and what for, and writes that survive a power
//! cut: a reader sees the old content or the new, never a torn file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O error with the path it happened on and what was being done, e.g.
/// "cannot read /var/lib/cairn/state.json: No such file or directory (os error 2)".
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done, as a verb phrase: "read", "create the directory", "rename into".
    pub action: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// An error of `action` on `path`.
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FileError {
            action,
            path: path.into(),
            source,
        }
    }

    /// The OS error's kind (e.g. to treat `NotFound` as "absent").
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// Adds the path and the action to an [`std::io::Result`].
pub trait PathContext<T> {
    /// `fs::read(&p).at("read", &p)?`: on error, a [`FileError`] naming `action` and `path`.
    fn at(self, action: &'static str, path: &Path) -> Result<T, FileError>;
}

impl<T> PathContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T, FileError> {
        self.map_err(|source| FileError::new(action, path, source))
    }
}

/// Distinguishes temp files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that a crash or power cut at any point leaves either the old file
/// or the new one: a temp file beside it created with `mode` (so a secret is never readable by
/// others, even briefly), fsync, rename over `path`, fsync the directory. The temp file is removed
/// when any step fails.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(FileError::new(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        ));
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .at("create", &tmp)?;
        file.write_all(bytes).at("write", &tmp)?;
        file.sync_all().at("fsync", &tmp)?;
        drop(file);
        std::fs::rename(&tmp, path).at("rename a temp file onto", path)?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .at("fsync the directory", dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Destroys a secret file: overwrites its bytes with zeros in place, fsyncs, removes it and
/// fsyncs its directory. Returns false when there was no file. On flash or a copy-on-write file
/// system the old blocks may survive the overwrite; what makes a Cairn secret unrecoverable is
/// that what it opens is destroyed too (a LUKS keyslot, a TPM hierarchy).
pub fn destroy_file(path: &Path) -> Result<bool, FileError> {
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(FileError::new("open for overwriting", path, e)),
    };
    let len = file.metadata().at("stat", path)?.len();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).at("overwrite", path)?;
        left -= n as u64;
    }
    file.sync_all().at("fsync", path)?;
    drop(file);
    std::fs::remove_file(path).at("remove", path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync the directory", dir)?;
    Ok(true)
}

/// Opens (creating it 0600 if needed, never truncating) the file a lock is taken on.
fn open_lock_file(path: &Path) -> Result<File, FileError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .at("open the lock file", path)
}

/// Takes an exclusive advisory lock (`flock`) on `path`, creating it (0600) if needed; the lock
/// is held until the returned file is dropped, and the kernel drops it when the process dies,
/// so a crash leaves no stale lock. `None` when another process holds it.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<File>, FileError> {
    let file = open_lock_file(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(FileError::new("lock", path, e.into())),
    }
}

/// Takes an exclusive advisory lock (`flock`) on `path` like [`try_lock_exclusive`], waiting
/// while another process (or another open file in this one) holds it.
pub fn lock_exclusive(path: &Path) -> Result<File, FileError> {
    let file = open_lock_file(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| FileError::new("lock", path, e.into()))?;
    Ok(file)
}

/// Creates `path` and its missing parents with mode 0700 (directories that hold keys or state).
pub fn create_private_dir(path: &Path) -> Result<(), FileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .at("create the directory", path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_with_the_mode_asked_for_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key"]);
    }

    #[test]
    fn a_write_into_a_missing_directory_names_the_temp_file_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/state.json");
        let err = write_atomic(&path, b"x", 0o644).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(
            text.starts_with("cannot create ") && text.contains("missing/.state.json.tmp-"),
            "{text}"
        );
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write_atomic(Path::new("/"), b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn path_context_says_what_failed_where() {
        let err = std::fs::read("/nonexistent/cairn-io")
            .at("read", Path::new("/nonexistent/cairn-io"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/cairn-io: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn an_exclusive_lock_is_refused_while_held_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = try_lock_exclusive(&path).unwrap().expect("a free lock");
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        create_private_dir(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
