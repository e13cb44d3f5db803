//! The one wrapper through which the network code runs external programs (CNI plugins, `ip`):
//! logs the command, feeds stdin, captures stdout and stderr, and applies a timeout (the child is
//! killed when it passes).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::debug;

/// Errors running an external program (a non-zero exit is not an error here: callers read the
/// output, since CNI plugins report failures as JSON on stdout).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}; check that it is installed and executable")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed; check the system's load and the program's own logs")]
    Timeout {
        /// The program.
        program: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
}

/// What a finished program left.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit code (`None` when killed by a signal).
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
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    debug!(program = %program.display(), ?args, "running");
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take();
    let feed = async move {
        if let Some(pipe) = pipe.as_mut() {
            // A program that exits without reading its input is not an error here.
            let _ = pipe.write_all(&input).await;
            let _ = pipe.shutdown().await;
        }
        drop(pipe);
    };
    let run = async {
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        out
    };
    let output = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => {
            return Err(CommandError::Spawn {
                program: program.to_path_buf(),
                source,
            })
        }
        Err(_) => {
            return Err(CommandError::Timeout {
                program: program.to_path_buf(),
                timeout,
            })
        }
    };
    let finished = Finished {
        success: output.status.success(),
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    };
    debug!(
        program = %program.display(),
        code = ?finished.code,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "finished"
    );
    Ok(finished)
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
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
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
