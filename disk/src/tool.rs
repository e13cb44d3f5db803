//! The one wrapper through which external tools (cryptsetup, blkid) run: it logs the command,
//! feeds key material on stdin only, captures stdout and stderr, applies a timeout and maps exit
//! codes to typed errors.
//!
//! Key material never appears in argv (visible to every user in `/proc/*/cmdline`) or in logs:
//! it goes through stdin (`--key-file=-`) or, when a command needs two keys, a 0600 file in a
//! private directory on tmpfs ([`crate::keyfile::KeyFile`]). [`ToolCommand::run`] refuses to run a
//! command whose arguments contain its stdin secret.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// How often a running tool is polled for exit.
const POLL: Duration = Duration::from_millis(10);
/// Stderr kept in errors and logs (cryptsetup's messages are short).
const STDERR_KEEP: usize = 2000;

/// What a failing exit code of a tool means, as far as Cairn cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// cryptsetup 2: no key slot accepts the key (wrong key, or wrong slot).
    KeyRejected,
    /// cryptsetup 4: the device does not exist or cannot be accessed.
    DeviceUnavailable,
    /// cryptsetup 5: the device or mapping already exists or is busy.
    Busy,
    /// cryptsetup 1: wrong parameters (a Cairn bug or an unsupported cryptsetup).
    BadParameters,
    /// cryptsetup 3: out of memory (PBKDF memory cost).
    OutOfMemory,
    /// Any other code.
    Other,
}

/// A failed external tool run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The program could not be started.
    #[error("cannot run `{program}` for {action}: {source}; is it installed (cryptsetup: package cryptsetup-bin, blkid: util-linux) and on PATH?")]
    Spawn {
        /// The program.
        program: String,
        /// What it was run for.
        action: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The program did not finish in time and was killed.
    #[error("`{program}` for {action} did not finish within {after:?} and was killed; check the device is responsive (dmesg) and retry")]
    Timeout {
        /// The program.
        program: String,
        /// What it was run for.
        action: &'static str,
        /// The timeout.
        after: Duration,
    },

    /// The program exited with a failure code.
    #[error("`{program}` for {action} failed with exit code {code} ({kind:?}): {stderr}")]
    Exit {
        /// The program.
        program: String,
        /// What it was run for.
        action: &'static str,
        /// The exit code (-1 when killed by a signal).
        code: i32,
        /// What the code means.
        kind: ExitKind,
        /// The end of its stderr.
        stderr: String,
    },

    /// Talking to the running program failed.
    #[error("I/O with `{program}` for {action} failed: {source}")]
    Io {
        /// The program.
        program: String,
        /// What it was run for.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The command would have put key material on its command line; it was not run.
    #[error("refusing to run `{program}` for {action}: its arguments contain key material (a Cairn bug; nothing was run)")]
    SecretInArguments {
        /// The program.
        program: String,
        /// What it was run for.
        action: &'static str,
    },

    /// No private tmpfs directory for a key file.
    #[error("no tmpfs directory to hold a temporary key file (tried {tried}); key files are never written to persistent storage: mount a tmpfs on /run or /dev/shm")]
    NoTmpfs {
        /// The directories tried.
        tried: String,
    },

    /// The temporary key file could not be written.
    #[error("cannot write a temporary key file in {dir}: {source}; check the tmpfs is writable and not full")]
    KeyFile {
        /// The directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ToolError {
    /// The exit kind when the tool ran and failed.
    pub fn exit_kind(&self) -> Option<ExitKind> {
        match self {
            ToolError::Exit { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// The result of a finished run (exit code accepted by the command).
#[derive(Debug)]
pub struct ToolOutput {
    /// The exit code (one of the accepted ones).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// One external tool invocation, built before it runs so tests can inspect the argv.
pub struct ToolCommand {
    program: &'static str,
    action: &'static str,
    args: Vec<OsString>,
    stdin: Option<Zeroizing<Vec<u8>>>,
    accepted: Vec<i32>,
    timeout: Duration,
}

impl std::fmt::Debug for ToolCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolCommand")
            .field("command", &self.display())
            .field("stdin_len", &self.stdin.as_ref().map(|s| s.len()))
            .finish_non_exhaustive()
    }
}

impl ToolCommand {
    /// `program` run for `action` (a short name for logs and errors, e.g. `"luksFormat"`),
    /// accepting exit code 0, with a 120 s timeout.
    pub fn new(program: &'static str, action: &'static str) -> Self {
        ToolCommand {
            program,
            action,
            args: Vec::new(),
            stdin: None,
            accepted: vec![0],
            timeout: Duration::from_secs(120),
        }
    }

    /// Append an argument. Never key material: that goes through [`ToolCommand::secret_stdin`].
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Feed `secret` on stdin (then close it); the tool reads it with `--key-file=-`.
    pub fn secret_stdin(mut self, secret: &[u8]) -> Self {
        self.stdin = Some(Zeroizing::new(secret.to_vec()));
        self
    }

    /// Also treat these exit codes as success (e.g. `isLuks` answers "no" with 1).
    pub fn accept_codes(mut self, codes: &[i32]) -> Self {
        self.accepted.extend_from_slice(codes);
        self
    }

    /// Kill the tool after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The full argv, program first (what `/proc/<pid>/cmdline` shows).
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(OsString::from(self.program))
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The command line for logs (no key material can be in it).
    pub fn display(&self) -> String {
        self.argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// True when an argument contains the stdin secret (refused by [`ToolCommand::run`]).
    fn leaks_secret(&self) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Some(secret) = self.stdin.as_deref().filter(|s| !s.is_empty()) else {
            return false;
        };
        self.args.iter().any(|arg| {
            arg.as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_slice())
        })
    }

    /// Run the tool to completion (or until the timeout kills it).
    ///
    /// # Errors
    /// [`ToolError::SecretInArguments`] (nothing run), [`ToolError::Spawn`],
    /// [`ToolError::Timeout`], [`ToolError::Io`], [`ToolError::Exit`] for an exit code not
    /// accepted, classified by [`ExitKind`].
    pub fn run(self) -> Result<ToolOutput, ToolError> {
        let _span =
            tracing::info_span!("tool", program = self.program, action = self.action).entered();
        if self.leaks_secret() {
            return Err(ToolError::SecretInArguments {
                program: self.program.to_string(),
                action: self.action,
            });
        }
        tracing::info!(command = %self.display(), "running");
        let started = Instant::now();
        let mut child = Command::new(self.program)
            .args(&self.args)
            .env("LC_ALL", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                program: self.program.to_string(),
                action: self.action,
                source,
            })?;
        let io_err = |source| ToolError::Io {
            program: self.program.to_string(),
            action: self.action,
            source,
        };

        // Feed stdin and drain stdout/stderr on threads so no pipe can fill up and block.
        let feeder = match (child.stdin.take(), self.stdin) {
            (Some(mut pipe), Some(secret)) => Some(std::thread::spawn(move || {
                let result = pipe.write_all(&secret);
                drop(pipe);
                // A tool that exits before reading all of stdin is not an error here.
                match result {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                }
            })),
            _ => None,
        };
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());

        let status = wait_with_timeout(&mut child, self.timeout).map_err(io_err)?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if let Some(feeder) = feeder {
            if let Ok(Err(e)) = feeder.join() {
                if status.is_some_and(|s| s.success()) {
                    return Err(io_err(e));
                }
            }
        }
        let Some(status) = status else {
            tracing::warn!(after = ?self.timeout, "timed out, killed");
            return Err(ToolError::Timeout {
                program: self.program.to_string(),
                action: self.action,
                after: self.timeout,
            });
        };
        let code = status.code().unwrap_or(-1);
        let stderr_tail = tail(&stderr);
        tracing::info!(code, elapsed = ?started.elapsed(), stderr = %stderr_tail, "finished");
        if !self.accepted.contains(&code) {
            return Err(ToolError::Exit {
                program: self.program.to_string(),
                action: self.action,
                code,
                kind: classify(self.program, code),
                stderr: stderr_tail,
            });
        }
        Ok(ToolOutput {
            code,
            stdout,
            stderr,
        })
    }
}

/// cryptsetup(8) "RETURN CODES"; other tools' codes are [`ExitKind::Other`].
fn classify(program: &str, code: i32) -> ExitKind {
    match (program, code) {
        ("cryptsetup", 1) => ExitKind::BadParameters,
        ("cryptsetup", 2) => ExitKind::KeyRejected,
        ("cryptsetup", 3) => ExitKind::OutOfMemory,
        ("cryptsetup", 4) => ExitKind::DeviceUnavailable,
        ("cryptsetup", 5) => ExitKind::Busy,
        _ => ExitKind::Other,
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `Some(status)` when the child exited in time, `None` when it was killed after `timeout`.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// The last [`STDERR_KEEP`] bytes of `text`, trimmed, on one line.
fn tail(text: &str) -> String {
    let text = text.trim();
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= STDERR_KEEP)
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures_output_and_stdin() {
        let out = ToolCommand::new("sh", "test")
            .arg("-c")
            .arg("cat; echo oops >&2")
            .secret_stdin(b"from stdin")
            .run()
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, "from stdin");
        assert_eq!(out.stderr.trim(), "oops");
    }

    #[test]
    fn maps_exit_codes_and_keeps_stderr() {
        let err = ToolCommand::new("sh", "test")
            .arg("-c")
            .arg("echo 'No key available' >&2; exit 2")
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::Exit { code: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("No key available"), "{err}");
        assert_eq!(classify("cryptsetup", 2), ExitKind::KeyRejected);
        assert_eq!(classify("cryptsetup", 4), ExitKind::DeviceUnavailable);
        assert_eq!(classify("blkid", 2), ExitKind::Other);
        let ok = ToolCommand::new("sh", "test")
            .arg("-c")
            .arg("exit 1")
            .accept_codes(&[1])
            .run()
            .unwrap();
        assert_eq!(ok.code, 1);
    }

    #[test]
    fn kills_on_timeout() {
        let started = Instant::now();
        let err = ToolCommand::new("sleep", "test")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = ToolCommand::new("cairn-no-such-tool", "test")
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("installed"), "{err}");
    }

    #[test]
    fn refuses_a_secret_in_the_arguments() {
        let err = ToolCommand::new("echo", "test")
            .arg("--key=hunter2hunter2")
            .secret_stdin(b"hunter2hunter2")
            .run()
            .unwrap_err();
        assert!(
            matches!(err, ToolError::SecretInArguments { .. }),
            "{err:?}"
        );
        let debug = format!(
            "{:?}",
            ToolCommand::new("x", "y").secret_stdin(b"topsecret")
        );
        assert!(!debug.contains("topsecret"), "{debug}");
    }

    #[test]
    fn tail_keeps_the_end_on_one_line() {
        assert_eq!(tail("  a\nb \n"), "a | b");
        let long = "x".repeat(5000) + "END";
        assert!(tail(&long).ends_with("END"));
        assert_eq!(tail(&long).len(), STDERR_KEEP);
    }
}
