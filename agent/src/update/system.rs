//! The device's side of an update: RAUC (through its command line) and systemd (over D-Bus).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_io::Tool;
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
    /// Its output goes to the log once it ends; the end of its stderr is in the error when it fails.
    pub async fn install(&self, bundle: &Path) -> Result<(), UpdateError> {
        let span = tracing::info_span!("rauc.install", bundle = %bundle.display());
        self.run(
            &["install".as_ref(), bundle.as_os_str()],
            self.install_timeout,
            "install the update bundle",
        )
        .instrument(span)
        .await
    }

    /// `rauc status mark-active other|booted`, `mark-good booted`, `mark-bad booted`: `which`
    /// is RAUC's slot selector (`booted` or `other`), not an A/B [`crate::slot::Slot`].
    pub async fn mark(&self, how: &str, which: &str) -> Result<(), UpdateError> {
        let span = tracing::info_span!("rauc.mark", how, which);
        let verb = format!("mark-{how}");
        self.run(
            &["status".as_ref(), verb.as_ref(), which.as_ref()],
            MARK_TIMEOUT,
            "change a slot's boot state",
        )
        .instrument(span)
        .await
    }

    async fn run(
        &self,
        args: &[&std::ffi::OsStr],
        timeout: Duration,
        purpose: &'static str,
    ) -> Result<(), UpdateError> {
        let tool = Tool::new(&self.program)
            .purpose(purpose)
            .args(args)
            .timeout(timeout);
        let output = crate::blocking::blocking(move || tool.run()).await?;
        for line in output.stdout_text().lines().chain(output.stderr.lines()) {
            let line = line.trim();
            if !line.is_empty() {
                info!(target: "rauc", "{line}");
            }
        }
        Ok(())
    }
}

/// Reboot through systemd (`StartUnit("reboot.target", "replace-irreversibly")` on the system
/// bus): a clean shutdown, so cairn-apps-stop.service stops the apps and file systems are
/// unmounted.
pub async fn reboot() -> Result<(), UpdateError> {
    let span = tracing::info_span!("systemd.reboot");
    async {
        let dbus = UpdateError::Reboot;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let head = "`rauc install /nonexistent/update.raucb` to install the update bundle failed (exit code 1); its stderr ends with:\n";
        assert!(err.starts_with(head), "{err}");
        assert!(err.len() > head.len() + 5, "{err}");
        let missing = Rauc {
            program: "/nonexistent/rauc".into(),
            install_timeout: Duration::from_secs(1),
        };
        assert!(missing
            .mark("good", "booted")
            .await
            .unwrap_err()
            .to_string()
            .contains("not installed"));
    }
}
