//! The one wrapper every external tool (mmdebstrap, mksquashfs, veritysetup, objcopy, sbsign,
//! mtools, sfdisk, zstd, bmaptool, openssl, qemu-img, ...) runs through: it logs the command line,
//! captures stdout and stderr, applies a timeout, optionally freezes the clock (libfaketime) for
//! tools that stamp the current time into their output, and maps failures to [`ToolError`].

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a failed tool's stderr goes into the error message.
const STDERR_TAIL_BYTES: usize = 4000;
/// libfaketime's preload library (Debian package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A tool could not be run, or it failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("`{program}` is not installed (or not on PATH): install the packages in dev/image-packages.txt")]
    NotFound {
        /// The program name.
        program: String,
    },
    /// The program exists but could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program name.
        program: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}); its stderr ends with:\n{stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit code or signal.
        status: String,
        /// The last few KiB of its stderr (or stdout when stderr was empty).
        stderr: String,
    },
    /// The program ran longer than its timeout and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed; its stderr ends with:\n{stderr}")]
    TimedOut {
        /// The command line.
        command: String,
        /// The timeout that ran out.
        timeout: Duration,
        /// The last few KiB of its stderr.
        stderr: String,
    },
    /// Clock freezing was asked for but libfaketime is missing.
    #[error("libfaketime is missing ({LIBFAKETIME}): install the `faketime` package")]
    NoFaketime,
}

/// What a finished tool printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// One external command, built like [`std::process::Command`] and run with [`Tool::run`].
#[derive(Debug, Clone)]
pub struct Tool {
    program: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    frozen_clock: Option<i64>,
    stdin_file: Option<PathBuf>,
}

impl Tool {
    /// A command for `program` with a 10 minute timeout.
    pub fn new(program: &str) -> Tool {
        Tool {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(600),
            frozen_clock: None,
            stdin_file: None,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Add several arguments.
    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Set an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tool {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Remove an environment variable the caller may have set.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Tool {
        self.env_removed.push(key.as_ref().to_os_string());
        self
    }

    /// Run in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Tool {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Kill the command (and its process group) after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Tool {
        self.timeout = timeout;
        self
    }

    /// Feed `path` to the command's standard input.
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Tool {
        self.stdin_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Run with the wall clock frozen at `epoch` (UTC seconds) through libfaketime, for tools that
    /// write the current time into their output (signing time in PKCS#7/CMS, FAT timestamps).
    pub fn frozen_clock(mut self, epoch: i64) -> Tool {
        self.frozen_clock = Some(epoch);
        self
    }

    /// The command line as a shell-like string, for logs and errors.
    pub fn command_line(&self) -> String {
        let mut line = self.program.clone();
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            {
                line.push_str(&format!(" '{}'", arg.replace('\'', "'\\''")));
            } else {
                line.push(' ');
                line.push_str(&arg);
            }
        }
        line
    }

    /// Run the command to completion; an unsuccessful exit, a timeout or a missing program is an
    /// error carrying the command line and the tail of its stderr.
    pub fn run(&self) -> Result<ToolOutput, ToolError> {
        let line = self.command_line();
        tracing::info!(command = %line, "run");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.stdin(match &self.stdin_file {
            Some(path) => {
                Stdio::from(
                    std::fs::File::open(path).map_err(|source| ToolError::Spawn {
                        program: self.program.clone(),
                        source,
                    })?,
                )
            }
            None => Stdio::null(),
        });
        for key in &self.env_removed {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        if let Some(epoch) = self.frozen_clock {
            if !Path::new(LIBFAKETIME).exists() {
                return Err(ToolError::NoFaketime);
            }
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", format_utc(epoch))
                .env("FAKETIME_DONT_RESET", "1")
                .env("TZ", "UTC");
        }
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ToolError::NotFound {
                    program: self.program.clone(),
                }
            } else {
                ToolError::Spawn {
                    program: self.program.clone(),
                    source,
                }
            }
        })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() > self.timeout => {
                    kill_group(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(ToolError::Spawn {
                        program: self.program.clone(),
                        source,
                    })
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let output = ToolOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        match status {
            None => Err(ToolError::TimedOut {
                command: line,
                timeout: self.timeout,
                stderr: tail(&output.stderr),
            }),
            Some(status) if status.success() => {
                tracing::debug!(command = %line, elapsed = ?started.elapsed(), "done");
                Ok(output)
            }
            Some(status) => {
                let text = if output.stderr.trim().is_empty() {
                    &output.stdout
                } else {
                    &output.stderr
                };
                Err(ToolError::Failed {
                    command: line,
                    status: describe(status),
                    stderr: tail(text),
                })
            }
        }
    }
}

/// Whether `program` can be found on PATH.
pub fn is_installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn kill_group(pid: u32) {
    // The child leads its own process group (process_group(0)): end it and everything it started.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".to_string(),
    }
}

fn tail(text: &str) -> String {
    let text = text.trim_end();
    if text.len() <= STDERR_TAIL_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - STDERR_TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// `epoch` as `YYYY-MM-DD hh:mm:ss` (UTC), the absolute time format libfaketime reads.
pub fn format_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epochs_as_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_735_689_600), "2025-01-01 00:00:00");
        assert_eq!(format_utc(951_827_696), "2000-02-29 12:34:56");
    }

    #[test]
    fn failure_carries_stderr_and_status() {
        let err = Tool::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn missing_program_is_not_found() {
        let err = Tool::new("cairn-no-such-tool").run().unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let started = Instant::now();
        let err = Tool::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn captures_stdout() {
        let out = Tool::new("sh").args(["-c", "echo hello"]).run().unwrap();
        assert_eq!(out.stdout.trim(), "hello");
    }
}
