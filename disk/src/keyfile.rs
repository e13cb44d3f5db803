//! Temporary key files for cryptsetup commands that need two keys at once (one goes on stdin, the
//! other in a file): a 0600 file in a fresh 0700 directory on tmpfs (RAM, never a persistent
//! disk), overwritten with zeros and removed on drop.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_io::PathContext;

use crate::tool::ToolError;

/// Directories tried, in order, for key files; each must be on tmpfs or ramfs.
const CANDIDATE_DIRS: &[&str] = &["/run", "/dev/shm"];

/// A key written to a private tmpfs file, removed on drop.
pub(crate) struct KeyFile {
    /// The 0700 directory holding the file; removed on drop.
    dir: tempfile::TempDir,
    path: PathBuf,
    len: usize,
}

impl KeyFile {
    /// Write `key` to a new 0600 file in a private directory on the first tmpfs of
    /// [`CANDIDATE_DIRS`] that is writable.
    pub(crate) fn write(key: &[u8]) -> Result<KeyFile, ToolError> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut tried = Vec::new();
        for base in CANDIDATE_DIRS {
            let base = Path::new(base);
            let fs = fs_type_of(&mounts, base).unwrap_or("unknown");
            if !matches!(fs, "tmpfs" | "ramfs") {
                tried.push(format!("{} ({fs})", base.display()));
                continue;
            }
            match Self::write_in(base, key) {
                Ok(file) => return Ok(file),
                Err(e) => tried.push(format!("{} ({e})", base.display())),
            }
        }
        Err(ToolError::NoTmpfs {
            tried: tried.join(", "),
        })
    }

    /// Write `key` to a new 0600 file in a private directory under `base` (no tmpfs check).
    pub(crate) fn write_in(base: &Path, key: &[u8]) -> Result<KeyFile, ToolError> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-key-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)
            .at("create a private directory in", base)
            .map_err(ToolError::KeyFile)?;
        let path = dir.path().join("key");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at("create", &path)
            .map_err(ToolError::KeyFile)?;
        file.write_all(key)
            .at("write", &path)
            .map_err(ToolError::KeyFile)?;
        Ok(KeyFile {
            dir,
            path,
            len: key.len(),
        })
    }

    /// The file's path, for `--key-file=<path>` (the path is not secret; the content is).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        // Overwrite before unlinking so the pages hold no key when tmpfs frees them.
        if let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = file.write_all(&vec![0u8; self.len]);
            let _ = file.sync_all();
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(self.dir.path());
    }
}

/// The file system type of the mount holding `path` (longest mount point prefix) in
/// `/proc/self/mountinfo` text.
fn fs_type_of<'a>(mountinfo: &'a str, path: &Path) -> Option<&'a str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let fs_type = right.split(' ').next()?;
            path.starts_with(&mount_point)
                .then_some((mount_point.components().count(), fs_type))
        })
        // The last mount wins among equal depths (mounted over).
        .max_by_key(|&(depth, _)| depth)
        .map(|(_, fs)| fs)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - overlay overlay rw
23 22 0:22 / /run rw,nosuid - tmpfs tmpfs rw,size=100k
24 22 0:23 / /dev/shm rw - tmpfs shm rw
25 23 0:24 / /run/my\\040dir rw - ext4 /dev/sda1 rw
26 22 0:25 / /run rw - ext4 /dev/sda2 rw
";

    #[test]
    fn finds_the_file_system_of_a_path() {
        assert_eq!(fs_type_of(MOUNTINFO, Path::new("/dev/shm")), Some("tmpfs"));
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/dev/shm/x")),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/var/tmp")),
            Some("overlay")
        );
        assert_eq!(
            fs_type_of(MOUNTINFO, Path::new("/run/my dir/k")),
            Some("ext4")
        );
        // /run was mounted over: the later mount wins.
        assert_eq!(fs_type_of(MOUNTINFO, Path::new("/run/x")), Some("ext4"));
        assert_eq!(fs_type_of("", Path::new("/run")), None);
    }

    #[test]
    fn writes_a_private_file_and_wipes_it() {
        let base = tempfile::tempdir().unwrap();
        let file = KeyFile::write_in(base.path(), b"secret key").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(file);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }

    #[test]
    fn uses_tmpfs_only() {
        // /dev/shm is tmpfs on these machines; elsewhere the error names what was tried.
        match KeyFile::write(b"k") {
            Ok(file) => {
                let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                let fs = fs_type_of(&mounts, file.path()).unwrap();
                assert!(matches!(fs, "tmpfs" | "ramfs"), "{fs}");
            }
            Err(e) => assert!(e.to_string().contains("/dev/shm"), "{e}"),
        }
    }
}
