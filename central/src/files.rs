//! Crash-safe file writes: temp file, fsync, rename, fsync the directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write a secret file with mode 0600, atomically.
pub fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically(path, data, 0o600)
}

/// Write a public file with mode 0644, atomically.
pub fn write_public_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically(path, data, 0o644)
}

fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        // The mode is set at creation so a secret is never readable by others, even briefly.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

use std::os::unix::fs::DirBuilderExt;
