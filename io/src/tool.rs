//! External programs (cryptsetup, rauc, mksquashfs, CNI plugins, ...) run the one way: the
//! command line logged, stdout and stderr captured on threads so no pipe fills up, a timeout
//! after which the program's whole process group is killed, key material only on stdin (never in
//! argv, which every user can read in `/proc/*/cmdline`), and a failure that carries the command
//! line, the exit status and the end of stderr.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// How much of a failed program's stderr goes into the error.
const STDERR_TAIL_BYTES: usize = 4000;
/// How often a running program is polled for exit.
const POLL: Duration = Duration::from_millis(10);
/// How long output is still read after the program ended: a process it left behind (in another
/// session, out of reach of the group kill) may hold its pipes open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Timeout when the caller sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A program could not be run, or it failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("cannot run `{program}`{purpose}: it is not installed or not on PATH{hint}")]
    NotFound {
        /// The program.
        program: String,
        /// " to <purpose>", or empty.
        purpose: String,
        /// "; install …", or empty.
        hint: String,
    },
    /// The program exists but could not be started, or talking to it failed.
    #[error("cannot run `{program}`{purpose}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// " to <purpose>", or empty.
        purpose: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with a code the caller does not accept, or was killed by a signal.
    #[error("`{command}`{purpose} failed ({status}); its stderr ends with:\n{stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// " to <purpose>", or empty.
        purpose: String,
        /// "exit code N" or "killed by signal N".
        status: String,
        /// The exit code; `None` when a signal ended it.
        code: Option<i32>,
        /// The last few KiB of its stderr (of stdout when stderr was empty).
        stderr: String,
    },
    /// The program ran past its timeout; it and its process group were killed.
    #[error("`{command}`{purpose} did not finish within {timeout:?} and was killed; check the system's load and retry; its stderr ends with:\n{stderr}")]
    TimedOut {
        /// The command line.
        command: String,
        /// " to <purpose>", or empty.
        purpose: String,
        /// The timeout that ran out.
        timeout: Duration,
        /// The last few KiB of its stderr.
        stderr: String,
    },
    /// The arguments contain the secret meant for stdin: nothing was run.
    #[error("refusing to run `{program}`{purpose}: its arguments contain key material (a Cairn bug; nothing was run)")]
    SecretInArguments {
        /// The program.
        program: String,
        /// " to <purpose>", or empty.
        purpose: String,
    },
}

impl ToolError {
    /// The exit code of a program that ran and failed.
    pub fn code(&self) -> Option<i32> {
        match self {
            ToolError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// What a finished program printed, and its exit code.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The exit code (one the caller accepts).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl ToolOutput {
    /// Standard output, lossily decoded.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// What the program reads on stdin.
#[derive(Clone)]
enum Input {
    None,
    Bytes(Vec<u8>),
    Secret(Zeroizing<Vec<u8>>),
    File(PathBuf),
}

/// One external command, built like [`std::process::Command`] and run with [`Tool::run`].
#[derive(Clone)]
pub struct Tool {
    program: OsString,
    purpose: Option<&'static str>,
    hint: Option<&'static str>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    env_cleared: bool,
    cwd: Option<PathBuf>,
    input: Input,
    accepted: Vec<i32>,
    timeout: Duration,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("command", &self.command_line())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Tool {
    /// A command for `program` (a name looked up on PATH, or a path): no stdin, exit code 0
    /// accepted, a 10 minute timeout.
    pub fn new(program: impl AsRef<OsStr>) -> Tool {
        Tool {
            program: program.as_ref().to_os_string(),
            purpose: None,
            hint: None,
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            env_cleared: false,
            cwd: None,
            input: Input::None,
            accepted: vec![0],
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// What the run is for, shown in errors: "`cryptsetup …` to open the data partition failed".
    pub fn purpose(mut self, purpose: &'static str) -> Tool {
        self.purpose = Some(purpose);
        self
    }

    /// How to install the program, added to the not-installed error (e.g. "install the Debian
    /// package cryptsetup-bin").
    pub fn install_hint(mut self, hint: &'static str) -> Tool {
        self.hint = Some(hint);
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tool {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Tool {
        self.env_removed.push(key.as_ref().to_os_string());
        self
    }

    /// Starts from an empty environment except `PATH` (a default one when unset), for programs
    /// whose behaviour the caller's environment must not change (CNI plugins).
    pub fn env_clear(mut self) -> Tool {
        self.env_cleared = true;
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Tool {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Kills the program (and its process group) after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Tool {
        self.timeout = timeout;
        self
    }

    /// Feeds `bytes` on stdin.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Tool {
        self.input = Input::Bytes(bytes.into());
        self
    }

    /// Feeds key material on stdin: wiped from memory after the run, never logged, and the run
    /// is refused when an argument contains it.
    pub fn secret_stdin(mut self, secret: &[u8]) -> Tool {
        self.input = Input::Secret(Zeroizing::new(secret.to_vec()));
        self
    }

    /// Connects stdin to the file at `path`.
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Tool {
        self.input = Input::File(path.as_ref().to_path_buf());
        self
    }

    /// Also accepts these exit codes as success (e.g. `blkid` 2: nothing found).
    pub fn accept_codes(mut self, codes: &[i32]) -> Tool {
        self.accepted.extend_from_slice(codes);
        self
    }

    /// The program and its arguments, quoted for a shell where needed (for logs and errors).
    pub fn command_line(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
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

    fn purpose_text(&self) -> String {
        self.purpose.map(|p| format!(" to {p}")).unwrap_or_default()
    }

    fn program_text(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn leaks_secret(&self) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Input::Secret(secret) = &self.input else {
            return false;
        };
        !secret.is_empty()
            && self.args.iter().any(|arg| {
                arg.as_bytes()
                    .windows(secret.len())
                    .any(|w| w == secret.as_slice())
            })
    }

    /// Runs the program to its end (blocking: call it from `spawn_blocking` in async code).
    ///
    /// # Errors
    /// [`ToolError`]: not installed, not startable, an exit code not accepted, killed at the
    /// timeout, or a secret in the arguments.
    pub fn run(&self) -> Result<ToolOutput, ToolError> {
        if self.leaks_secret() {
            return Err(ToolError::SecretInArguments {
                program: self.program_text(),
                purpose: self.purpose_text(),
            });
        }
        let line = self.command_line();
        tracing::info!(command = %line, purpose = self.purpose.unwrap_or(""), "running");
        let started = Instant::now();
        let mut child = self.spawn()?;
        let feeder = match (child.stdin.take(), &self.input) {
            (Some(pipe), Input::Bytes(bytes)) => Some(feed(pipe, Zeroizing::new(bytes.clone()))),
            (Some(pipe), Input::Secret(secret)) => Some(feed(pipe, secret.clone())),
            _ => None,
        };
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = self.wait(&mut child);
        let grace_ends = Instant::now() + OUTPUT_GRACE;
        let stdout = stdout.collect(grace_ends);
        let stderr = String::from_utf8_lossy(&stderr.collect(grace_ends)).into_owned();
        let fed = feeder.map(|f| f.join().unwrap_or(Ok(())));
        let status = status.map_err(|source| self.spawn_error(source))?;
        let Some(status) = status else {
            return Err(ToolError::TimedOut {
                command: line,
                purpose: self.purpose_text(),
                timeout: self.timeout,
                stderr: tail(&stderr),
            });
        };
        let code = status.code();
        tracing::debug!(command = %line, ?code, elapsed = ?started.elapsed(), "finished");
        match code {
            Some(code) if self.accepted.contains(&code) => {
                // A program that succeeded without reading its stdin did not need it; one that
                // we could not feed and that then succeeded is suspect.
                if let Some(Err(e)) = fed {
                    return Err(self.spawn_error(e));
                }
                Ok(ToolOutput {
                    code,
                    stdout,
                    stderr,
                })
            }
            _ => {
                let text = if stderr.trim().is_empty() {
                    String::from_utf8_lossy(&stdout).into_owned()
                } else {
                    stderr
                };
                Err(ToolError::Failed {
                    command: line,
                    purpose: self.purpose_text(),
                    status: describe(status),
                    code,
                    stderr: tail(&text),
                })
            }
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> ToolError {
        ToolError::Spawn {
            program: self.program_text(),
            purpose: self.purpose_text(),
            source,
        }
    }

    fn spawn(&self) -> Result<Child, ToolError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started too.
            .process_group(0);
        if self.env_cleared {
            let path =
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
            command.env_clear().env("PATH", path);
        }
        for key in &self.env_removed {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command.stdin(match &self.input {
            Input::None => Stdio::null(),
            Input::Bytes(_) | Input::Secret(_) => Stdio::piped(),
            Input::File(path) => Stdio::from(std::fs::File::open(path).map_err(|source| {
                self.spawn_error(std::io::Error::new(
                    source.kind(),
                    format!("cannot open its input {}: {source}", path.display()),
                ))
            })?),
        });
        command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ToolError::NotFound {
                    program: self.program_text(),
                    purpose: self.purpose_text(),
                    hint: self.hint.map(|h| format!("; {h}")).unwrap_or_default(),
                }
            } else {
                self.spawn_error(source)
            }
        })
    }

    /// Waits for the exit; `None` when the timeout ran out and the process group was killed.
    fn wait(&self, child: &mut Child) -> std::io::Result<Option<ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() > self.timeout {
                tracing::warn!(command = %self.command_line(), timeout = ?self.timeout, "timed out; killing its process group");
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }
}

/// Writes `input` to the program's stdin on a thread, then closes it.
fn feed(
    mut pipe: impl Write + Send + 'static,
    input: Zeroizing<Vec<u8>>,
) -> JoinHandle<std::io::Result<()>> {
    thread::spawn(move || {
        let result = pipe.write_all(&input);
        drop(pipe);
        match result {
            // A program that exits before reading all of its input is judged by its exit code.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    })
}

/// Output of one pipe, read on a thread as it comes.
struct Drain {
    read: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// What was read, once the pipe closed or at `grace_ends` (call after the exit).
    fn collect(self, grace_ends: Instant) -> Vec<u8> {
        let wait = grace_ends.saturating_duration_since(Instant::now());
        if self.done.recv_timeout(wait).is_err() {
            tracing::warn!("a process left behind keeps the output pipe open; using what was read");
        }
        std::mem::take(&mut *self.read.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drain {
    let read = Arc::new(Mutex::new(Vec::new()));
    let (sender, done) = mpsc::channel();
    let buffer = read.clone();
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buffer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = sender.send(());
    });
    Drain { read, done }
}

fn kill_group(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".to_string(),
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `text`, cut on a character boundary.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_carries_the_command_purpose_status_and_stderr() {
        let err = Tool::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .purpose("test failures")
            .run()
            .unwrap_err();
        assert_eq!(err.code(), Some(3));
        let text = err.to_string();
        assert!(
            text.contains("`sh -c 'echo boom >&2; exit 3'` to test failures failed (exit code 3)")
                && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn accepted_codes_count_as_success() {
        let out = Tool::new("sh")
            .args(["-c", "exit 2"])
            .accept_codes(&[2])
            .run()
            .unwrap();
        assert_eq!(out.code, 2);
    }

    #[test]
    fn a_missing_program_says_so_with_the_hint() {
        let err = Tool::new("cairn-no-such-tool")
            .install_hint("install the Debian package cairn-tools")
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::NotFound { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("; install the Debian package cairn-tools"),
            "{err}"
        );
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let started = Instant::now();
        let err = Tool::new("sh")
            .args(["-c", "sleep 30 & sleep 30"])
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::TimedOut { .. }), "{err}");
        // The background sleep holds stdout open: the run ends only when the group is gone.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stdin_env_and_directory_reach_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let out = Tool::new("sh")
            .args(["-c", "cat; echo \" $X $(pwd)\"; echo err >&2"])
            .env("X", "y")
            .current_dir(dir.path())
            .stdin_bytes("in")
            .run()
            .unwrap();
        let pwd = dir.path().canonicalize().unwrap();
        assert_eq!(out.stdout_text(), format!("in y {}\n", pwd.display()));
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn a_cleared_environment_keeps_only_path() {
        std::env::set_var("CAIRN_IO_TEST_VAR", "leak");
        let out = Tool::new("sh")
            .args(["-c", "echo \"[$CAIRN_IO_TEST_VAR]\"; test -n \"$PATH\""])
            .env_clear()
            .run()
            .unwrap();
        assert_eq!(out.stdout_text(), "[]\n");
    }

    #[test]
    fn a_secret_reaches_stdin_but_never_the_arguments() {
        let out = Tool::new("cat").secret_stdin(b"s3cret").run().unwrap();
        assert_eq!(out.stdout, b"s3cret");
        let err = Tool::new("echo")
            .arg("--key=s3cret")
            .secret_stdin(b"s3cret")
            .run()
            .unwrap_err();
        assert!(matches!(err, ToolError::SecretInArguments { .. }), "{err}");
    }

    #[test]
    fn stdin_from_a_file_and_a_missing_input_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.txt");
        std::fs::write(&input, "from a file").unwrap();
        let out = Tool::new("cat").stdin_file(&input).run().unwrap();
        assert_eq!(out.stdout_text(), "from a file");
        let missing = dir.path().join("missing");
        let err = Tool::new("cat").stdin_file(&missing).run().unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_process_left_behind_holding_the_output_does_not_hold_the_run() {
        let started = Instant::now();
        let out = Tool::new("sh")
            .args(["-c", "echo started; setsid sleep 30 & exit 0"])
            .run()
            .unwrap();
        assert_eq!(out.stdout_text(), "started\n");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn long_stderr_is_cut_to_its_end() {
        let long = "x".repeat(STDERR_TAIL_BYTES * 2) + "END";
        assert!(tail(&long).ends_with("END"));
        assert!(tail(&long).len() <= STDERR_TAIL_BYTES + 3);
    }
}
