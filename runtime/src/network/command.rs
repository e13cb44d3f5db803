//! How the network code runs external programs (CNI plugins, `ip`, `iptables`):
//! [`cairn_io::Tool`] on the blocking pool, with only `PATH` and the caller's variables in the
//! environment, stdin fed, stdout and stderr captured, and a timeout after which the program's
//! process group is killed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::Tool;

/// Errors running an external program (a non-zero exit is not an error here: callers read the
/// output, since CNI plugins report failures as JSON on stdout).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started, did not finish in time and was killed, or was ended by
    /// a signal (boxed: it carries the command line and stderr).
    #[error(transparent)]
    Run(Box<cairn_io::ToolError>),
    /// The blocking task running it ended without an answer (the runtime is shutting down).
    #[error("{program} stopped before it finished ({reason}); retry")]
    Stopped {
        /// The program.
        program: PathBuf,
        /// Why the task ended.
        reason: String,
    },
}

/// What a finished program left.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit code.
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (lossy UTF-8, trimmed).
    pub stderr: String,
}

/// Run `program` with `args`, only the environment `env` (plus `PATH`), `stdin` as input, within
/// `timeout`.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, &OsStr)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Finished, CommandError> {
    // Every exit code is an answer here: the caller reads what the program printed.
    let every_exit_code: Vec<i32> = (1..=255).collect();
    let tool = env
        .iter()
        .fold(Tool::new(program).env_clear(), |tool, (key, value)| {
            tool.env(key, value)
        })
        .args(args)
        .stdin_bytes(stdin)
        .accept_codes(&every_exit_code)
        .timeout(timeout);
    let output = tokio::task::spawn_blocking(move || tool.run())
        .await
        .map_err(|e| CommandError::Stopped {
            program: program.to_path_buf(),
            reason: e.to_string(),
        })?
        .map_err(|e| CommandError::Run(Box::new(e)))?;
    Ok(Finished {
        success: output.code == 0,
        code: Some(output.code),
        stdout: output.stdout,
        stderr: output.stderr.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_env_stdin_and_timeout() {
        let sh = Path::new("/bin/sh");
        let out = run(
            sh,
            &["-c", "cat; echo \" $X\"; echo err >&2; exit 3"],
            &[("X", OsStr::new("y"))],
            b"in",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(
            (
                out.success,
                out.code,
                out.stdout.as_slice(),
                out.stderr.as_str()
            ),
            (false, Some(3), b"in y\n".as_slice(), "err")
        );
        let err = run(sh, &["-c", "sleep 5"], &[], b"", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommandError::Run(e) if matches!(**e, cairn_io::ToolError::TimedOut { .. })),
            "{err}"
        );
        let err = run(
            Path::new("/nonexistent/x"),
            &[],
            &[],
            b"",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cannot run"), "{err}");
    }
}
