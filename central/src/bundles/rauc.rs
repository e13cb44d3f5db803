//! How central runs `rauc`: `rauc --conf=<verify conf> info --output-format=json BUNDLE`, which
//! checks the bundle's CMS signature against the update keyring and prints its manifest. It runs
//! through [`cairn_io::Tool`] on the blocking pool (command line logged, stderr captured, killed
//! with its process group at the timeout), and failures map to [`RaucError`].

use std::path::Path;
use std::time::Duration;

use cairn_io::{Tool, ToolError};
use serde::Deserialize;

/// Longest part of rauc's stderr quoted in an error.
const REASON_CHARS: usize = 1000;

/// `rauc info` could not run, or it refused the bundle.
#[derive(Debug, thiserror::Error)]
pub enum RaucError {
    /// It is not installed, could not be started, or did not finish in time and was killed.
    #[error(transparent)]
    Run(ToolError),
    /// It ran and refused the bundle (bad signature, not a bundle, unreadable manifest...).
    #[error("{reason}")]
    Refused {
        /// What rauc said, without its informational lines.
        reason: String,
    },
    /// The blocking task running it ended without an answer (central is shutting down).
    #[error("`rauc info` stopped before it answered ({0}); upload the bundle again")]
    Stopped(String),
    /// It succeeded but printed something other than its JSON manifest summary.
    #[error("`rauc info` printed output central cannot read ({0}); check that rauc is version 1.8 or newer")]
    Output(String),
}

/// What `rauc info` reports about a bundle whose signature verified.
#[derive(Debug, Clone, Deserialize)]
pub struct RaucInfo {
    /// Manifest `compatible`.
    pub compatible: String,
    /// Manifest `version` (absent or null when the manifest has none).
    #[serde(default)]
    pub version: Option<String>,
}

/// The text of a rauc verification config: the keyring and the codeSigning purpose check our
/// update certificates need; no slots, since central only inspects bundles.
pub fn verify_config(keyring: &Path, compatible: &str) -> String {
    format!(
        "[system]\ncompatible={compatible}\nbootloader=noop\n\n[keyring]\npath={}\ncheck-purpose=codesign\n",
        keyring.display()
    )
}

/// Run `rauc info` on `bundle` with the verification config `conf`.
#[tracing::instrument(name = "rauc.info", skip_all, fields(bundle = %bundle.display()))]
pub async fn info(conf: &Path, bundle: &Path, timeout: Duration) -> Result<RaucInfo, RaucError> {
    let rauc = Tool::new("rauc")
        .purpose("verify an uploaded bundle")
        .install_hint(
            "install rauc 1.8 or newer on the central host so uploaded bundles can be verified",
        )
        .arg(format!("--conf={}", conf.display()))
        .args(["info", "--output-format=json"])
        .arg(bundle)
        .timeout(timeout);
    let output = tokio::task::spawn_blocking(move || rauc.run())
        .await
        .map_err(|e| RaucError::Stopped(e.to_string()))?
        .map_err(|e| match e {
            ToolError::Failed { stderr, status, .. } => {
                let reason = refusal_reason(&stderr);
                tracing::info!(%status, %reason, "rauc refused the bundle");
                RaucError::Refused { reason }
            }
            other => RaucError::Run(other),
        })?;
    serde_json::from_slice(&output.stdout).map_err(|e| RaucError::Output(e.to_string()))
}

/// The UKIs a Cairn bundle carries for each slot (see the image builder's bundle layout).
pub const BUNDLE_UKIS: [&str; 2] = ["uki-a.efi", "uki-b.efi"];

/// The PCR 11 values (hex) systemd-stub will measure for the bundle's UKIs, predicted from the
/// UKIs read out of the bundle's squashfs with `unsquashfs -cat`. A bundle without UKIs (not
/// built by cairn-image) gives none: devices running its version cannot be verified on PCR 11
/// until an admin accepts their values. Blocking.
///
/// The squashfs is read before RAUC's verity check of the payload, which only the device does;
/// that is safe here: a value predicted from altered UKIs names a boot chain no device can reach
/// without a UKI signed by the fleet's Secure Boot key, which PCR 7 proves.
pub fn predict_uki_pcr11(bundle: &Path, timeout: Duration) -> Result<Vec<String>, RaucError> {
    let mut values = Vec::new();
    for name in BUNDLE_UKIS {
        let output = Tool::new("unsquashfs")
            .purpose("read a bundle's UKI to predict its PCR 11")
            .install_hint("install squashfs-tools on the central host")
            .args(["-no-progress", "-cat"])
            .arg(bundle)
            .arg(name)
            .accept_codes(&[2])
            .timeout(timeout)
            .run()
            .map_err(RaucError::Run)?;
        if output.code != 0 || output.stdout.is_empty() {
            tracing::info!(
                uki = name,
                "the bundle has no such UKI; no PCR 11 predicted for it"
            );
            continue;
        }
        match cairn_pe::predict_uki_pcr11(&output.stdout) {
            Ok(value) => values.push(hex::encode(value)),
            Err(e) => {
                tracing::warn!(uki = name, error = %e, "the bundle's UKI cannot be parsed; no PCR 11 predicted for it")
            }
        }
    }
    Ok(values)
}

/// rauc's error lines without its `rauc-Message:` progress lines, shortened.
fn refusal_reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("rauc-Message:"))
        .collect();
    let text = if lines.is_empty() {
        stderr.trim().to_owned()
    } else {
        lines.join("; ")
    };
    let mut reason: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(REASON_CHARS)
        .collect();
    if reason.is_empty() {
        reason = "rauc failed without a message".into();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_drops_progress_lines() {
        let stderr = "rauc-Message: 16:33:43.653: Reading bundle: /x\nrauc-Message: 16:33:43.654: Verifying bundle signature... \nsignature verification failed: Verify error: self-signed certificate\n";
        assert_eq!(
            refusal_reason(stderr),
            "signature verification failed: Verify error: self-signed certificate"
        );
        assert_eq!(refusal_reason(""), "rauc failed without a message");
    }

    #[test]
    fn info_json_parses() {
        let info: RaucInfo = serde_json::from_str(
            r#"{"compatible":"cairn-test","version":"1.2.3","description":null,"build":null,"hooks":[],"images":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (info.compatible.as_str(), info.version.as_deref()),
            ("cairn-test", Some("1.2.3"))
        );
        let info: RaucInfo = serde_json::from_str(r#"{"compatible":"c","version":null}"#).unwrap();
        assert!(info.version.is_none());
    }
}
