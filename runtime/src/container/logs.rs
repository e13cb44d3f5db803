//! Container logs, written with a hard size limit.
//!
//! containerd's shim starts a log writer for every task it creates (a `binary://` log URI, see
//! [`log_uri`]): `cairn-agent write-log <spec>` on a device. The shim hands it the task's stdout
//! and stderr pipes as fds 3 and 4, and fd 5, which it closes once it is ready. The writer
//! appends both streams to `<service>.log`; before a write would take that file past
//! `max_bytes` it renames it to `.1` (`.1` to `.2` and so on, dropping what goes beyond `keep`)
//! and starts a new one. So the files of a service never hold more than
//! `max_bytes * (keep + 1)` bytes, however fast it writes: the writer is the only reader of its
//! pipes, so a service that logs faster than the writer writes is slowed down by its full pipe,
//! not let past its budget. A write that fails (the data partition full) drops the output
//! rather than blocking the service.
//!
//! Why not containerd's `file://` URIs, as before: the shim then appends to the file itself and
//! the agent could only rotate it when it looked, so a flood grew the file without bound between
//! two looks, and rotation by copy-then-truncate lost what was written in between.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::LogRotation;

/// Smallest size a log file may have.
pub const MIN_LOG_BYTES: u64 = 4 << 10;
/// Most log files of a service (the current one included).
pub const MAX_LOG_FILES: usize = 20;
/// Bytes read from a stream at a time.
const CHUNK: usize = 64 << 10;

/// The log of one service: its file and how it is rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLog {
    /// The current file; rotated copies are `<path>.1`, `<path>.2`, ...
    pub path: PathBuf,
    /// Its size limit and how many rotated copies are kept.
    pub rotation: LogRotation,
}

/// Why a log writer cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LogWriterError {
    /// The argument is not `<max_bytes>,<keep>,<absolute path>`.
    #[error("log writer spec {spec:?} is not <max_bytes>,<keep>,<absolute path>: {reason}")]
    BadSpec {
        /// The argument given (a path the agent made, never operator input).
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// fd 3, 4 or 5 is not the pipe the shim passes.
    #[error("fd {fd} is not a pipe: the log writer is meant to be started by containerd's shim for a `binary://` log URI")]
    NotStartedByShim {
        /// The fd.
        fd: i32,
    },
}

impl ServiceLog {
    /// The writer's argument: `<max_bytes>,<keep>,<path>` (the path last, so it may hold
    /// commas).
    pub fn spec(&self) -> String {
        format!(
            "{},{},{}",
            self.rotation.max_bytes,
            self.rotation.keep,
            self.path.display()
        )
    }

    /// Read back what [`ServiceLog::spec`] wrote.
    ///
    /// # Errors
    /// When a field is missing or out of range, or the path is not absolute.
    pub fn from_spec(spec: &str) -> Result<ServiceLog, LogWriterError> {
        let bad = |reason: &str| LogWriterError::BadSpec {
            spec: spec.chars().take(300).collect(),
            reason: reason.into(),
        };
        let mut parts = spec.splitn(3, ',');
        let (Some(max), Some(keep), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("it has fewer than three fields"));
        };
        let max_bytes: u64 = max.parse().map_err(|_| bad("max_bytes is not a number"))?;
        let keep: usize = keep.parse().map_err(|_| bad("keep is not a number"))?;
        if max_bytes == 0 {
            return Err(bad("max_bytes is 0"));
        }
        if keep >= MAX_LOG_FILES {
            return Err(bad(&format!("keep is {MAX_LOG_FILES} or more")));
        }
        let path = PathBuf::from(path);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(bad("the path is not an absolute file path"));
        }
        Ok(ServiceLog {
            path,
            rotation: LogRotation { max_bytes, keep },
        })
    }
}

/// The `binary://` log URI that has containerd's shim run `writer write-log <spec of log>`.
/// One query key, because the shim passes the keys in no fixed order.
pub fn log_uri(writer: &Path, log: &ServiceLog) -> String {
    format!(
        "binary://{}?write-log={}",
        percent_encode(&writer.to_string_lossy(), true),
        percent_encode(&log.spec(), false)
    )
}

/// `text` with every byte but unreserved ones (and `/` in a path) as `%XX`.
fn percent_encode(text: &str, path: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (path && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A log file that rotates before it would grow past its limit (see the module docs).
#[derive(Debug)]
pub struct RotatingLog {
    log: ServiceLog,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Open (or create, mode 0640) the current file and drop rotated copies beyond `keep`
    /// (left from a larger limit before). A file that cannot be opened is tried again at each
    /// write.
    pub fn open(log: ServiceLog) -> RotatingLog {
        for n in log.rotation.keep + 1..=MAX_LOG_FILES {
            let _ = std::fs::remove_file(numbered(&log.path, n));
        }
        let mut this = RotatingLog {
            log,
            file: None,
            size: 0,
        };
        let _ = this.reopen(false);
        this
    }

    fn reopen(&mut self, truncate: bool) -> std::io::Result<&mut File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .mode(0o640)
            .open(&self.log.path)?;
        if truncate {
            file.set_len(0)?;
        }
        self.size = file.metadata()?.len();
        Ok(self.file.insert(file))
    }

    /// Rename the current file to `.1` (after `.1` to `.2`, ...; the oldest beyond `keep` is
    /// overwritten) and start an empty one; with `keep` 0, empty the current file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.log.rotation.keep;
        if keep > 0 {
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(&self.log.path, n), numbered(&self.log.path, n + 1))
                {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.log.path, numbered(&self.log.path, 1))?;
        }
        self.file = None;
        self.reopen(keep == 0)?;
        Ok(())
    }

    /// Append `data`, rotating first when it would take the file past `max_bytes` (a chunk
    /// larger than that is split over files).
    ///
    /// # Errors
    /// When the file cannot be opened, rotated or written; what was not written is dropped and
    /// the next write tries again.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let max = self.log.rotation.max_bytes;
        while !data.is_empty() {
            if self.file.is_none() {
                self.reopen(false)?;
            }
            if self.size > 0 && self.size.saturating_add(data.len() as u64) > max {
                if let Err(e) = self.rotate() {
                    self.file = None;
                    return Err(e);
                }
            }
            let room = usize::try_from(max.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let n = data.len().min(room.max(1));
            let Some(file) = self.file.as_mut() else {
                continue;
            };
            if let Err(e) = file.write_all(&data[..n]) {
                self.file = None;
                return Err(e);
            }
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Copy `from` into `log` until end of file.
fn pump(mut from: File, log: &Mutex<RotatingLog>) {
    let mut buf = vec![0; CHUNK];
    let mut failing = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match log.write(&buf[..n]) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                // Once per failing stretch; under the shim stderr is /dev/null, by hand a terminal.
                failing = true;
                eprintln!("cairn log writer: {}: {e}", log.log.path.display());
            }
            Err(_) => {}
        }
    }
}

/// Take ownership of inherited fd `fd` after checking it is a pipe.
fn inherited_pipe(fd: i32) -> Result<OwnedFd, LogWriterError> {
    let is_pipe =
        std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        return Err(LogWriterError::NotStartedByShim { fd });
    }
    // SAFETY: fd is open (just checked through /proc) and nothing else in this process owns
    // it: the shim passed it as an extra file, and the writer opens none before this.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The log writer's whole run (`cairn-agent write-log <spec>`): read the shim's stdout and
/// stderr pipes (fds 3 and 4) into the rotating log of `spec` until both end. Closing fd 5
/// tells the shim the writer is ready.
///
/// # Errors
/// When `spec` is unreadable or the fds are not the shim's pipes; then nothing is read.
pub fn write_log(spec: &str) -> Result<(), LogWriterError> {
    let log = ServiceLog::from_spec(spec)?;
    let stdout = File::from(inherited_pipe(3)?);
    let stderr = File::from(inherited_pipe(4)?);
    let ready = inherited_pipe(5)?;
    let log = Mutex::new(RotatingLog::open(log));
    drop(ready);
    std::thread::scope(|s| {
        s.spawn(|| pump(stderr, &log));
        pump(stdout, &log);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path, max_bytes: u64, keep: usize) -> ServiceLog {
        ServiceLog {
            path: dir.join("web.log"),
            rotation: LogRotation { max_bytes, keep },
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_before_a_write_would_pass_the_limit_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let spec = log(dir.path(), 100, 2);
        // Copies of an earlier, larger `keep` go.
        for n in 1..=5 {
            std::fs::write(numbered(&spec.path, n), "old").unwrap();
        }
        let mut writer = RotatingLog::open(spec.clone());
        assert!(numbered(&spec.path, 2).exists() && !numbered(&spec.path, 3).exists());
        for round in 0..5 {
            writer
                .write(format!("round {round} {}\n", "x".repeat(60)).as_bytes())
                .unwrap();
        }
        // Each 70-byte line does not fit beside another in 100 bytes.
        assert!(read(&spec.path).starts_with("round 4"));
        assert!(read(&numbered(&spec.path, 1)).starts_with("round 3"));
        assert!(read(&numbered(&spec.path, 2)).starts_with("round 2"));
        assert!(!numbered(&spec.path, 3).exists());
        writer.write(b"tail\n").unwrap();
        assert!(read(&spec.path).ends_with("x\ntail\n"));
    }

    #[test]
    fn a_large_write_is_split_and_never_exceeds_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let spec = log(dir.path(), 4096, 2);
        std::fs::write(&spec.path, "x".repeat(5000)).unwrap();
        let mut writer = RotatingLog::open(spec.clone());
        let text: String = (0..2000).map(|n| format!("line {n:05}\n")).collect();
        writer.write(text.as_bytes()).unwrap();
        let sizes: Vec<u64> = [
            spec.path.clone(),
            numbered(&spec.path, 1),
            numbered(&spec.path, 2),
        ]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
        assert!(sizes.iter().all(|s| *s <= 4096), "{sizes:?}");
        // The newest bytes are all there, in order, across the files.
        let kept =
            read(&numbered(&spec.path, 2)) + &read(&numbered(&spec.path, 1)) + &read(&spec.path);
        assert!(text.ends_with(&kept), "kept bytes are the newest");
        assert!(kept.len() as u64 > 2 * 4096);

        // keep 0: one file, emptied when full.
        let single = ServiceLog {
            path: dir.path().join("one.log"),
            rotation: LogRotation {
                max_bytes: 50,
                keep: 0,
            },
        };
        let mut writer = RotatingLog::open(single.clone());
        writer.write(&[b'a'; 40]).unwrap();
        writer.write(&[b'b'; 40]).unwrap();
        assert_eq!(read(&single.path), "b".repeat(40));
        assert!(!numbered(&single.path, 1).exists());
    }

    #[test]
    fn a_write_that_fails_is_dropped_and_the_next_one_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ServiceLog {
            path: dir.path().join("logs/web.log"),
            rotation: LogRotation {
                max_bytes: 100,
                keep: 1,
            },
        };
        let mut writer = RotatingLog::open(spec.clone());
        assert!(writer.write(b"lost\n").is_err());
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        writer.write(b"kept\n").unwrap();
        assert_eq!(read(&spec.path), "kept\n");
    }

    #[test]
    fn the_spec_and_uri_round_trip_and_bad_specs_are_refused() {
        let spec = ServiceLog {
            path: "/data/apps/a b,c/logs/web.log".into(),
            rotation: LogRotation {
                max_bytes: 1 << 20,
                keep: 3,
            },
        };
        assert_eq!(ServiceLog::from_spec(&spec.spec()).unwrap(), spec);
        assert_eq!(
            log_uri(Path::new("/usr/bin/cairn-agent"), &spec),
            "binary:///usr/bin/cairn-agent?write-log=1048576%2C3%2C%2Fdata%2Fapps%2Fa%20b%2Cc%2Flogs%2Fweb.log"
        );
        for bad in [
            "", "1,2", "x,1,/a", "1,x,/a", "0,1,/a", "1,20,/a", "1,1,rel", "1,1,/",
        ] {
            let err = ServiceLog::from_spec(bad).unwrap_err().to_string();
            assert!(err.contains("is not <max_bytes>"), "{bad}: {err}");
        }
        // An fd that is no pipe of the shim's is refused, not taken.
        let err = inherited_pipe(999_999).unwrap_err().to_string();
        assert!(err.contains("started by containerd's shim"), "{err}");
    }
}
