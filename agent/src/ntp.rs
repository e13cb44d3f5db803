//! NTP servers from central: the device-config key [`NTP_SERVERS_CONFIG_KEY`] (e.g. a site's
//! own servers, set with `PUT /api/v1/devices/{id}/config`) becomes a systemd-timesyncd drop-in,
//! and timesyncd is restarted to read it. The recipe's servers (in `/etc`) and DHCP's keep
//! working beside them; removing the key removes the drop-in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_io::{FileError, Tool, ToolError};
use cairn_proto::v1::DesiredState;
use cairn_proto::{parse_ntp_servers, NtpServersError, NTP_SERVERS_CONFIG_KEY};
use tokio::sync::watch;
use tracing::{info, warn};

/// Central's NTP servers could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum NtpError {
    /// The value is not a list of servers (central checks it too; this is an old central or
    /// a hostile one).
    #[error("ignoring central's NTP servers: {0}")]
    Bad(#[from] NtpServersError),
    /// The drop-in could not be written or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// timesyncd could not be restarted.
    #[error("cannot restart systemd-timesyncd to read central's NTP servers: {0}")]
    Restart(#[from] ToolError),
}

/// What applying a desired state's config did to the drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtpChange {
    /// Already as wanted.
    Unchanged,
    /// Written with these servers.
    Written(Vec<String>),
    /// Removed (the key is gone).
    Removed,
}

/// The drop-in for `servers`.
pub fn dropin_text(servers: &[String]) -> String {
    format!(
        "# Written by cairn-agent from central's device config `{NTP_SERVERS_CONFIG_KEY}`.\n\
         [Time]\nNTP={}\n",
        servers.join(" ")
    )
}

/// Writes, keeps or removes the drop-in at `path` for `config`'s NTP servers (blocking).
pub fn apply_config(
    path: &Path,
    config: &std::collections::HashMap<String, String>,
) -> Result<NtpChange, NtpError> {
    let wanted = config
        .get(NTP_SERVERS_CONFIG_KEY)
        .map(|value| parse_ntp_servers(value))
        .transpose()?;
    let present = std::fs::read_to_string(path).ok();
    match wanted {
        Some(servers) => {
            let text = dropin_text(&servers);
            if present.as_deref() == Some(text.as_str()) {
                return Ok(NtpChange::Unchanged);
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| FileError::new("create the directory", dir, e))?;
            }
            cairn_io::write_atomic(path, text.as_bytes(), 0o644)?;
            Ok(NtpChange::Written(servers))
        }
        None if present.is_some() => {
            std::fs::remove_file(path).map_err(|e| FileError::new("remove", path, e))?;
            Ok(NtpChange::Removed)
        }
        None => Ok(NtpChange::Unchanged),
    }
}

/// Until the desired state's sender is dropped: applies each desired state's NTP servers to
/// the drop-in at `path` and restarts timesyncd when it changed.
pub async fn follow(path: PathBuf, mut desired: watch::Receiver<Option<Arc<DesiredState>>>) {
    loop {
        let config = desired
            .borrow_and_update()
            .as_ref()
            .map(|d| d.config.clone())
            .unwrap_or_default();
        let target = path.clone();
        let applied = tokio::task::spawn_blocking(move || -> Result<NtpChange, NtpError> {
            let change = apply_config(&target, &config)?;
            if change != NtpChange::Unchanged {
                Tool::new("systemctl")
                    .args(["try-restart", "systemd-timesyncd.service"])
                    .timeout(Duration::from_secs(30))
                    .run()?;
            }
            Ok(change)
        })
        .await;
        match applied {
            Ok(Ok(NtpChange::Unchanged)) => {}
            Ok(Ok(NtpChange::Written(servers))) => {
                info!(?servers, "NTP servers from central in place");
            }
            Ok(Ok(NtpChange::Removed)) => info!("central's NTP servers removed"),
            Ok(Err(e)) => warn!(error = %e, "NTP servers from central not applied"),
            Err(e) => warn!(error = %e, "applying NTP servers panicked"),
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_dropin_follows_the_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timesyncd.conf.d/50-cairn-central.conf");
        let mut config = HashMap::new();
        assert_eq!(apply_config(&path, &config).unwrap(), NtpChange::Unchanged);
        config.insert(
            NTP_SERVERS_CONFIG_KEY.to_string(),
            "ntp.site.example,10.1.2.3".to_string(),
        );
        assert_eq!(
            apply_config(&path, &config).unwrap(),
            NtpChange::Written(vec!["ntp.site.example".into(), "10.1.2.3".into()])
        );
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("[Time]\nNTP=ntp.site.example 10.1.2.3\n"));
        assert_eq!(apply_config(&path, &config).unwrap(), NtpChange::Unchanged);
        // A value that would smuggle options into the file is refused; the file stays.
        config.insert(
            NTP_SERVERS_CONFIG_KEY.to_string(),
            "x\nFallbackNTP=evil".to_string(),
        );
        assert!(matches!(
            apply_config(&path, &config),
            Err(NtpError::Bad(_))
        ));
        assert!(std::fs::read_to_string(&path).unwrap().contains("10.1.2.3"));
        config.clear();
        assert_eq!(apply_config(&path, &config).unwrap(), NtpChange::Removed);
        assert!(!path.exists());
    }
}
