//! cryptsetup, blkid and partx run through [`cairn_io::Tool`] (logged command line, timeout,
//! stderr in the error, key material refused in the arguments); this layer adds what the data
//! partition needs on top: `LC_ALL=C`, a 120 s default timeout, and cryptsetup's exit codes
//! mapped to an [`ExitKind`].
//!
//! Key material never appears in argv (visible to every user in `/proc/*/cmdline`) or in logs:
//! it goes through stdin (`--key-file=-`) or, when a command needs two keys, a 0600 file in a
//! private directory on tmpfs ([`crate::keyfile::KeyFile`]). A command whose arguments contain
//! its stdin secret is refused without running
//! ([`cairn_io::ToolError::SecretInArguments`]).

use std::ffi::OsString;
use std::time::Duration;

use cairn_io::{FileError, Tool};
use zeroize::Zeroizing;

/// Where the tools come from, for the not-installed error.
const INSTALL_HINT: &str =
    "install it (cryptsetup: Debian package cryptsetup-bin; blkid, partx: util-linux)";

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
    /// Any other code, or killed by a signal.
    Other,
}

/// A failed external tool run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The program exited with a failure code (or was killed by a signal); `kind` says what the
    /// code means.
    #[error("{source}")]
    Exit {
        /// What the code means.
        kind: ExitKind,
        /// The failure: command line, exit status and the end of stderr (boxed: it is large
        /// and every LUKS error carries it).
        #[source]
        source: Box<cairn_io::ToolError>,
    },

    /// The program could not be run (not installed), did not finish in time and was killed, or
    /// was refused because its arguments contain key material.
    #[error(transparent)]
    Run(Box<cairn_io::ToolError>),

    /// No private tmpfs directory for a key file.
    #[error("no tmpfs directory to hold a temporary key file (tried {tried}); key files are never written to persistent storage: mount a tmpfs on /run or /dev/shm")]
    NoTmpfs {
        /// The directories tried.
        tried: String,
    },

    /// The temporary key file could not be written.
    #[error("cannot write a temporary key file: {0}; check the tmpfs is writable and not full")]
    KeyFile(#[source] FileError),
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
            accepted: Vec::new(),
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
        self.tool().command_line()
    }

    /// The command without its stdin secret.
    fn tool(&self) -> Tool {
        Tool::new(self.program)
            .purpose(self.action)
            .install_hint(INSTALL_HINT)
            .args(&self.args)
            .env("LC_ALL", "C")
            .accept_codes(&self.accepted)
            .timeout(self.timeout)
    }

    /// Run the tool to completion (or until the timeout kills it and its process group).
    ///
    /// # Errors
    /// [`ToolError::Exit`] for an exit code not accepted, classified by [`ExitKind`];
    /// [`ToolError::Run`] when it is not installed, timed out, or its arguments contain its stdin
    /// secret (then nothing was run).
    pub fn run(self) -> Result<ToolOutput, ToolError> {
        let _span =
            tracing::info_span!("tool", program = self.program, action = self.action).entered();
        let tool = match &self.stdin {
            Some(secret) => self.tool().secret_stdin(secret),
            None => self.tool(),
        };
        match tool.run() {
            Ok(out) => Ok(ToolOutput {
                code: out.code,
                stdout: out.stdout_text(),
                stderr: out.stderr,
            }),
            Err(source @ cairn_io::ToolError::Failed { .. }) => Err(ToolError::Exit {
                kind: classify(self.program, source.code()),
                source: Box::new(source),
            }),
            Err(source) => Err(ToolError::Run(Box::new(source))),
        }
    }
}

/// cryptsetup(8) "RETURN CODES"; other tools' codes are [`ExitKind::Other`].
fn classify(program: &str, code: Option<i32>) -> ExitKind {
    match (program, code) {
        ("cryptsetup", Some(1)) => ExitKind::BadParameters,
        ("cryptsetup", Some(2)) => ExitKind::KeyRejected,
        ("cryptsetup", Some(3)) => ExitKind::OutOfMemory,
        ("cryptsetup", Some(4)) => ExitKind::DeviceUnavailable,
        ("cryptsetup", Some(5)) => ExitKind::Busy,
        _ => ExitKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn runs_and_captures_output_and_stdin() {
        let out = ToolCommand::new("sh", "test")
            .arg("-c")
            .arg("cat; echo \" $LC_ALL\"; echo oops >&2")
            .secret_stdin(b"from stdin")
            .run()
            .unwrap();
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, "from stdin C\n");
        assert_eq!(out.stderr.trim(), "oops");
    }

    #[test]
    fn maps_exit_codes_and_keeps_stderr() {
        let err = ToolCommand::new("sh", "test")
            .arg("-c")
            .arg("echo 'No key available' >&2; exit 2")
            .run()
            .unwrap_err();
        assert_eq!(err.exit_kind(), Some(ExitKind::Other), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("exit code 2") && text.contains("No key available"),
            "{text}"
        );
        assert_eq!(classify("cryptsetup", Some(2)), ExitKind::KeyRejected);
        assert_eq!(classify("cryptsetup", Some(4)), ExitKind::DeviceUnavailable);
        assert_eq!(classify("cryptsetup", None), ExitKind::Other);
        assert_eq!(classify("blkid", Some(2)), ExitKind::Other);
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
        assert!(
            matches!(&err, ToolError::Run(e) if matches!(**e, cairn_io::ToolError::TimedOut { .. })),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let err = ToolCommand::new("cairn-no-such-tool", "test")
            .run()
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Run(e) if matches!(**e, cairn_io::ToolError::NotFound { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("cryptsetup-bin"), "{err}");
    }

    #[test]
    fn refuses_a_secret_in_the_arguments() {
        let err = ToolCommand::new("echo", "test")
            .arg("--key=hunter2hunter2")
            .secret_stdin(b"hunter2hunter2")
            .run()
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Run(e) if matches!(**e, cairn_io::ToolError::SecretInArguments { .. })),
            "{err:?}"
        );
        let debug = format!(
            "{:?}",
            ToolCommand::new("x", "y").secret_stdin(b"topsecret")
        );
        assert!(!debug.contains("topsecret"), "{debug}");
    }
}
