//! Size-based rotation of container log files.
//!
//! The shim appends task output to `<service>.log` with `O_APPEND`, so rotation is
//! copy-then-truncate: the writer keeps its handle and continues at the new end. Lines written
//! between the copy and the truncate can be lost; the window is one file copy.

use std::path::{Path, PathBuf};

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotate `path` when it is larger than `max_bytes`: `.1` becomes `.2` (up to `keep`, the oldest
/// is dropped), the file is copied to `.1` and truncated. Returns whether it rotated.
///
/// # Errors
/// When a rename, copy or truncate fails (a missing log file is not an error).
#[tracing::instrument]
pub fn rotate_log(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<bool> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            let from = numbered(path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(path, n + 1))?;
            }
        }
        std::fs::copy(path, numbered(path, 1))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("web.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for round in 0..4 {
            writer
                .write_all(format!("round {round} {}\n", "x".repeat(100)).as_bytes())
                .unwrap();
            assert!(rotate_log(&log, 50, 2).unwrap());
        }
        // The appending writer continues at the start of the truncated file.
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
        assert!(std::fs::read_to_string(numbered(&log, 1))
            .unwrap()
            .starts_with("round 3"));
        assert!(std::fs::read_to_string(numbered(&log, 2))
            .unwrap()
            .starts_with("round 2"));
        assert!(!numbered(&log, 3).exists());
        assert!(!rotate_log(&log, 50, 2).unwrap());
        assert!(!rotate_log(&dir.path().join("missing.log"), 1, 1).unwrap());
    }
}
