//! The device's side of an update: RAUC (through its command line) and systemd (over D-Bus).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{info, Instrument};

use super::UpdateError;

/// The `rauc` command line (it talks to the RAUC service, which runs our boot backend).
#[derive(Debug, Clone)]
pub struct Rauc {
    /// The `rauc` executable.
    pub program: PathBuf,
    /// Deadline of one `rauc install`.
    pub install_timeout: Duration,
}

/// Deadline of `rauc status mark-*` (a few ESP renames).
const MARK_TIMEOUT: Duration = Duration::from_secs(60);

impl Rauc {
    /// `rauc install BUNDLE`: verifies the signature and writes the inactive slot (and, by the
    /// bundle's hook, its UKI). With `activate-installed=false` the slot is not made primary.
    /// Progress lines go to the log; the last line is the error when it fails.
    pub async fn install(&self, bundle: &Path) -> Result<(), UpdateError> {
        let span = tracing::info_span!("rauc.install", bundle = %bundle.display());
        self.run(
            &["install".as_ref(), bundle.as_os_str()],
            self.install_timeout,
        )
        .instrument(span)
        .await
    }

    /// `rauc status mark-active other|booted`, `mark-good booted`, `mark-bad booted`.
    pub async fn mark(&self, how: &str, slot: &str) -> Result<(), UpdateError> {
        let span = tracing::info_span!("rauc.mark", how, slot);
        let verb = format!("mark-{how}");
        self.run(
            &["status".as_ref(), verb.as_ref(), slot.as_ref()],
            MARK_TIMEOUT,
        )
        .instrument(span)
        .await
    }

    async fn run(&self, args: &[&std::ffi::OsStr], timeout: Duration) -> Result<(), UpdateError> {
        let what = format!(
            "{} {}",
            self.program.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| UpdateError::Rauc {
                what: what.clone(),
                detail: format!("cannot start: {e}"),
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let work = async {
            let (out, err, status) =
                tokio::join!(log_lines(stdout), log_lines(stderr), child.wait());
            (out, err, status)
        };
        let (out, err, status) =
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| UpdateError::Rauc {
                    what: what.clone(),
                    detail: format!("no result after {timeout:?}"),
                })?;
        let status = status.map_err(|e| UpdateError::Rauc {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        if status.success() {
            return Ok(());
        }
        let last = if err.is_empty() { out } else { err };
        Err(UpdateError::Rauc {
            what,
            detail: format!("{status}: {last}"),
        })
    }
}

/// Log each non-empty line of `reader` (RAUC's progress); returns the last one.
async fn log_lines(reader: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut lines = BufReader::new(reader).lines();
    let mut last = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim().to_string();
        if !line.is_empty() {
            info!(target: "rauc", "{line}");
            last = line;
        }
    }
    last
}

/// Reboot through systemd (`StartUnit("reboot.target", "replace-irreversibly")` on the system
/// bus): a clean shutdown, so cairn-apps-stop.service stops the apps and file systems are
/// unmounted.
pub async fn reboot() -> Result<(), UpdateError> {
    let span = tracing::info_span!("systemd.reboot");
    async {
        let dbus = |e: zbus::Error| UpdateError::Reboot(e.to_string());
        let conn = zbus::Connection::system().await.map_err(dbus)?;
        conn.call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "StartUnit",
            &("reboot.target", "replace-irreversibly"),
        )
        .await
        .map_err(dbus)?;
        info!("reboot requested from systemd");
        Ok(())
    }
    .instrument(span)
    .await
}

/// `key=value` from a kernel command line (`rauc.slot=a`).
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// `KEY=value` from os-release text, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.replace("\\\"", "\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cmdline_and_os_release() {
        let cmdline = "cairn.slot=b cairn.roothash=ab rauc.slot=b root=/dev/mapper/root quiet";
        assert_eq!(cmdline_value(cmdline, "rauc.slot").as_deref(), Some("b"));
        assert_eq!(cmdline_value(cmdline, "rauc"), None);
        assert_eq!(cmdline_value(cmdline, "missing"), None);
        let os = "NAME=\"Cairn\"\nVERSION_ID=\"0.2.0\"\nID=cairn\n";
        assert_eq!(os_release_value(os, "VERSION_ID").as_deref(), Some("0.2.0"));
        assert_eq!(os_release_value(os, "ID").as_deref(), Some("cairn"));
        assert_eq!(os_release_value(os, "VERSION"), None);
    }

    #[tokio::test]
    async fn a_failing_rauc_reports_its_last_line() {
        // The real rauc: on this host there is no RAUC service and no such bundle, so it fails.
        let rauc = Rauc {
            program: "rauc".into(),
            install_timeout: Duration::from_secs(60),
        };
        let err = rauc
            .install(Path::new("/nonexistent/update.raucb"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`rauc install /nonexistent/update.raucb` failed: exit status: 1: "),
            "{err}"
        );
        assert!(
            err.len()
                > "`rauc install /nonexistent/update.raucb` failed: exit status: 1: ".len() + 5,
            "{err}"
        );
        let missing = Rauc {
            program: "/nonexistent/rauc".into(),
            install_timeout: Duration::from_secs(1),
        };
        assert!(missing
            .mark("good", "booted")
            .await
            .unwrap_err()
            .to_string()
            .contains("cannot start"));
    }
}
