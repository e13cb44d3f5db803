//! `[apps]`: running the desired apps on containerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// containerd's socket on a device.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Running the apps of the desired state on containerd (`[apps]`; off unless `enabled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    /// Run apps. Off by default: a library user or a host without containerd only records the
    /// desired state. The device image turns it on.
    pub enabled: bool,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// Root of app volumes, logs and runtime files; default `<state_dir>/apps` (on the encrypted
    /// data partition on a device).
    pub data_dir: Option<PathBuf>,
    /// runc state root; default: the runc shim's own (`/run/containerd/runc`).
    pub runc_root: Option<PathBuf>,
    /// Longest time between two reconcile passes, in milliseconds (a desired-state change starts
    /// one at once; restart back-off deadlines are met to within this).
    pub reconcile_interval_ms: u64,
    /// Registries (`host:port`) spoken to over plain HTTP besides localhost ones, e.g. a site's
    /// local mirror on a closed network. Everything else is pulled over HTTPS.
    pub plain_http_registries: Vec<String>,
    /// Keep the device firewall (nftables table `inet cairn`) in step with the published
    /// ports: inbound only what apps publish, no forwarding into app networks. Off by default
    /// so the agent never changes a host's firewall unasked; the device image turns it on.
    pub firewall: bool,
    /// The program containerd's shim runs as each task's log writer (`<program> write-log
    /// <spec>`); default: this agent's own binary.
    pub log_writer: Option<PathBuf>,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            enabled: false,
            containerd_socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            data_dir: None,
            runc_root: None,
            reconcile_interval_ms: 1_000,
            plain_http_registries: Vec::new(),
            firewall: false,
            log_writer: None,
        }
    }
}

impl AppsConfig {
    /// Checks the section; the error names the field (`apps.<field>`) and what to change.
    pub fn validate(&self) -> Result<(), FieldError> {
        let absolute = |field: &'static str, path: &Path| {
            if path.as_os_str().is_empty() || path.is_relative() {
                Err(FieldError::new(
                    field,
                    format!("must be an absolute path, got {path:?}"),
                ))
            } else {
                Ok(())
            }
        };
        absolute("apps.containerd_socket", &self.containerd_socket)?;
        if let Some(dir) = &self.data_dir {
            absolute("apps.data_dir", dir)?;
        }
        if let Some(dir) = &self.runc_root {
            absolute("apps.runc_root", dir)?;
        }
        if let Some(program) = &self.log_writer {
            absolute("apps.log_writer", program)?;
        }
        if let Some(bad) = self
            .plain_http_registries
            .iter()
            .find(|r| r.is_empty() || r.contains('/') || r.contains(char::is_whitespace))
        {
            return Err(FieldError::new(
                "apps.plain_http_registries",
                format!("{bad:?} is not a registry host[:port]"),
            ));
        }
        if self.reconcile_interval_ms < 10 {
            return Err(FieldError::new(
                "apps.reconcile_interval_ms",
                "must be at least 10",
            ));
        }
        Ok(())
    }

    /// The data dir, defaulting to `<state_dir>/apps`.
    pub fn data_dir(&self, state_dir: &Path) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("apps"))
    }

    /// The log writer: `log_writer`, else the running agent's binary (as it was installed,
    /// should a rebuild have replaced it), else where the image installs it.
    pub fn log_writer(&self) -> PathBuf {
        if let Some(program) = &self.log_writer {
            return program.clone();
        }
        match std::env::current_exe() {
            Ok(exe) => {
                let text = exe.to_string_lossy();
                match text.strip_suffix(" (deleted)") {
                    Some(installed) => PathBuf::from(installed),
                    None => exe,
                }
            }
            Err(_) => PathBuf::from(cairn_runtime::container::DEFAULT_LOG_WRITER),
        }
    }

    /// Longest time between reconcile passes.
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }
}
