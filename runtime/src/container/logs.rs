//! Size-based rotation of container log files.
//!
//! The shim appends task output to `<service>.log` with `O_APPEND`, so rotation is
//! copy-then-truncate: the writer keeps its handle and continues at the new end. Lines written
//! between the copy and the truncate can be lost; the window is one file copy.
//!
//! Rotation runs when the reconciler looks (once per pass), so a service can write a lot in
//! between. A log is therefore rotated once it passes three quarters of `max_bytes` (leaving a
//! quarter for what comes until the next look), and a rotated copy keeps only the newest
//! `max_bytes` of it, saying in a first line how much it dropped. So rotated files never hold
//! more than `max_bytes * keep` of log (plus that line, under 200 bytes), nothing is dropped
//! unless a service writes more than a quarter of `max_bytes` between two looks, and only the
//! current file can be larger than `max_bytes`: by what the service wrote since the last look.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Smallest size a log is rotated at.
pub const MIN_LOG_BYTES: u64 = 4 << 10;
/// Most log files of a service (the current one included).
pub const MAX_LOG_FILES: usize = 20;
/// How far a cut copy looks for the start of a line.
const LINE_SEARCH: usize = 4 << 10;

/// The size past which a log whose files may hold `max_bytes` is rotated.
pub fn rotate_at(max_bytes: u64) -> u64 {
    max_bytes - max_bytes / 4
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Copy the first `size` bytes of `from` to `to`, or, when they are more than `max_bytes`, the
/// newest `max_bytes` of them (from the start of a line when one is near) after a line saying
/// how many bytes were dropped.
fn copy_newest(from: &mut File, size: u64, to: &Path, max_bytes: u64) -> std::io::Result<()> {
    let mut start = 0;
    if size > max_bytes {
        start = size - max_bytes;
        from.seek(SeekFrom::Start(start))?;
        let mut head = vec![0; LINE_SEARCH.min((size - start) as usize)];
        from.read_exact(&mut head)?;
        if let Some(newline) = head.iter().position(|b| *b == b'\n') {
            start += newline as u64 + 1;
        }
    }
    let mut out = File::create(to)?;
    if start > 0 {
        writeln!(
            out,
            "[cairn: {start} older bytes dropped: the service logged more than {max_bytes} bytes between two rotations]"
        )?;
    }
    from.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut from.take(size - start), &mut out)?;
    Ok(())
}

/// Rotate `path` when it is larger than three quarters of `max_bytes`: `.1` becomes `.2` (up to
/// `keep`, the oldest is dropped, as are copies beyond `keep` left from a larger `keep`), the
/// file (its newest `max_bytes` when it is larger) is copied to `.1` and truncated. Returns
/// whether it rotated.
///
/// # Errors
/// When a rename, copy or truncate fails (a missing log file is not an error).
#[tracing::instrument]
pub fn rotate_log(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<bool> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size <= rotate_at(max_bytes) {
        return Ok(false);
    }
    for n in keep + 1..=MAX_LOG_FILES {
        match std::fs::remove_file(numbered(path, n)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            let from = numbered(path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(path, n + 1))?;
            }
        }
        copy_newest(&mut file, size, &numbered(path, 1), max_bytes)?;
    }
    file.set_len(0)?;
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
            assert!(rotate_log(&log, 120, 2).unwrap());
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
        assert!(!rotate_log(&log, 120, 2).unwrap());
        // Rotated past three quarters of the limit, copied whole.
        assert_eq!(rotate_at(150), 113);
        std::fs::write(&log, "x".repeat(113)).unwrap();
        assert!(!rotate_log(&log, 150, 2).unwrap());
        std::fs::write(&log, "x".repeat(150)).unwrap();
        assert!(rotate_log(&log, 150, 2).unwrap());
        assert_eq!(
            std::fs::read_to_string(numbered(&log, 1)).unwrap(),
            "x".repeat(150)
        );
        assert!(!rotate_log(&dir.path().join("missing.log"), 1, 1).unwrap());
    }

    #[test]
    fn a_copy_keeps_the_newest_max_bytes_and_extra_copies_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("flood.log");
        let text: String = (0..2000).map(|n| format!("line {n:05}\n")).collect();
        std::fs::write(&log, &text).unwrap();
        for n in 1..=5 {
            std::fs::write(numbered(&log, n), "old").unwrap();
        }
        assert!(rotate_log(&log, 4096, 2).unwrap());
        let copy = std::fs::read_to_string(numbered(&log, 1)).unwrap();
        let (note, rest) = copy.split_once('\n').unwrap();
        assert!(rest.len() <= 4096 && rest.len() > 4000, "{}", rest.len());
        assert!(note.len() < 200, "{note}");
        assert!(
            note.starts_with("[cairn: ") && note.contains("older bytes dropped"),
            "{note}"
        );
        assert!(
            rest.starts_with("line ") && rest.ends_with("line 01999\n"),
            "{rest}"
        );
        let dropped: usize = note["[cairn: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            dropped + rest.len(),
            text.len(),
            "the note counts what is missing"
        );
        assert_eq!(std::fs::read_to_string(numbered(&log, 2)).unwrap(), "old");
        for n in 3..=5 {
            assert!(!numbered(&log, n).exists(), ".{n} is beyond keep");
        }
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        // keep 0: truncate only.
        std::fs::write(&log, &text).unwrap();
        assert!(rotate_log(&log, 4096, 0).unwrap());
        assert!(!numbered(&log, 1).exists() && !numbered(&log, 2).exists());
    }
}
