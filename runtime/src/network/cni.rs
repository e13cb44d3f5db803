//! Calling CNI plugins per the CNI specification 1.0: the plugin binary (found by the network
//! configuration's `type` in the plugin directories) gets `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and one plugin's network
//! configuration on stdin; it answers with a result (ADD) or nothing (DEL, CHECK) on stdout and
//! exit status 0, or an error object `{code, msg, details}` and a non-zero status.
//!
//! Chains (a configuration list) are run by the caller: ADD in order with each plugin's result as
//! the next one's `prevResult`, DEL in reverse order with the cached result.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, Instrument};

use super::command::{self, CommandError};

/// The CNI specification version of every configuration Cairn writes.
pub const CNI_VERSION: &str = "1.0.0";

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach the container to the network.
    Add,
    /// Detach it and release what ADD took (idempotent).
    Del,
    /// Verify an earlier ADD still holds.
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors calling a CNI plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration names no plugin, or its binary is in none of the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}; install containernetworking-plugins (Debian) or point the network config's plugin directories at the plugins")]
    NotFound {
        /// The plugin type.
        plugin: String,
        /// Where it was looked for.
        dirs: Vec<PathBuf>,
    },
    /// The plugin could not be run or timed out.
    #[error("CNI plugin {plugin} {command} for {container_id}: {source}")]
    Run {
        /// The plugin type.
        plugin: String,
        /// The operation.
        command: CniCommand,
        /// The container.
        container_id: String,
        /// What went wrong.
        source: CommandError,
    },
    /// The plugin reported an error.
    #[error("CNI plugin {plugin} {command} for {container_id} failed (code {code}): {msg}{}; check the host's networking (iptables, bridge, ip_forward) and retry", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// The operation.
        command: CniCommand,
        /// The container.
        container_id: String,
        /// The CNI error code.
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details (or its stderr when it printed no error object).
        details: String,
    },
    /// The plugin answered ADD with something that is not a CNI result.
    #[error("CNI plugin {plugin} {command} for {container_id} returned an unreadable result: {reason}; the plugin may not speak CNI {CNI_VERSION}: check the installed plugin version")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// The operation.
        command: CniCommand,
        /// The container.
        container_id: String,
        /// Why.
        reason: String,
    },
}

/// An interface in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniInterface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: String,
    /// Namespace path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniIp {
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Address with prefix length, e.g. `10.88.3.2/24`.
    pub address: String,
    /// Gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

impl CniIp {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

/// The typed part of a CNI 1.0 result Cairn uses (the raw JSON is what is passed on as
/// `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The result's specification version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<CniInterface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<CniIp>,
}

impl CniResult {
    /// The first IPv4 address on an interface inside the container (`eth0`).
    pub fn container_ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.ips
            .iter()
            .filter(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_none_or(|iface| iface.sandbox.is_some())
            })
            .find_map(|ip| match ip.ip() {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            })
    }
}

/// One plugin call.
#[derive(Debug)]
pub(crate) struct PluginCall<'a> {
    /// The operation.
    pub command: CniCommand,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The plugin's network configuration (with `prevResult` when chained).
    pub config: &'a Value,
}

/// Where plugins are and how long they may take.
#[derive(Debug, Clone)]
pub(crate) struct Plugins {
    pub dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Plugins {
    fn find(&self, plugin: &str) -> Option<PathBuf> {
        if plugin.is_empty() || plugin.contains('/') {
            return None;
        }
        self.dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
    }

    /// Run one plugin; the raw result JSON on a successful ADD, `None` for DEL and CHECK.
    pub(crate) async fn call(&self, call: &PluginCall<'_>) -> Result<Option<Value>, CniError> {
        let plugin = call.config["type"].as_str().unwrap_or_default().to_string();
        let span = tracing::info_span!(
            "cni",
            plugin = %plugin,
            command = %call.command,
            container = call.container_id,
            ifname = call.ifname,
        );
        self.call_inner(call, plugin).instrument(span).await
    }

    async fn call_inner(
        &self,
        call: &PluginCall<'_>,
        plugin: String,
    ) -> Result<Option<Value>, CniError> {
        let binary = self.find(&plugin).ok_or_else(|| CniError::NotFound {
            plugin: plugin.clone(),
            dirs: self.dirs.clone(),
        })?;
        let cni_path = std::env::join_paths(&self.dirs).unwrap_or_default();
        let env: [(&str, &OsStr); 5] = [
            ("CNI_COMMAND", OsStr::new(call.command.as_str())),
            ("CNI_CONTAINERID", OsStr::new(call.container_id)),
            ("CNI_NETNS", call.netns.as_os_str()),
            ("CNI_IFNAME", OsStr::new(call.ifname)),
            ("CNI_PATH", cni_path.as_os_str()),
        ];
        let stdin = serde_json::to_vec(call.config).unwrap_or_default();
        let started = Instant::now();
        let out = command::run(&binary, &[], &env, &stdin, self.timeout)
            .await
            .map_err(|source| CniError::Run {
                plugin: plugin.clone(),
                command: call.command,
                container_id: call.container_id.into(),
                source,
            })?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if !out.success {
            #[derive(Deserialize)]
            struct ErrorObject {
                #[serde(default)]
                code: u32,
                #[serde(default)]
                msg: String,
                #[serde(default)]
                details: String,
            }
            let (code, msg, details) = match serde_json::from_slice::<ErrorObject>(&out.stdout) {
                Ok(e) => (e.code, e.msg, e.details),
                Err(_) => (
                    999,
                    format!("exited with {:?}", out.code),
                    format!(
                        "{} {}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        out.stderr
                    )
                    .trim()
                    .to_string(),
                ),
            };
            debug!(elapsed_ms, code, %msg, "plugin failed");
            return Err(CniError::Plugin {
                plugin,
                command: call.command,
                container_id: call.container_id.into(),
                code,
                msg,
                details,
            });
        }
        debug!(elapsed_ms, "plugin succeeded");
        if call.command != CniCommand::Add {
            return Ok(None);
        }
        let result: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| CniError::BadResult {
                plugin: plugin.clone(),
                command: call.command,
                container_id: call.container_id.into(),
                reason: e.to_string(),
            })?;
        serde_json::from_value::<CniResult>(result.clone()).map_err(|e| CniError::BadResult {
            plugin,
            command: call.command,
            container_id: call.container_id.into(),
            reason: e.to_string(),
        })?;
        Ok(Some(result))
    }
}

/// `config` with `prevResult` set (or removed when `prev` is `None`).
pub(crate) fn with_prev_result(config: &Value, prev: Option<&Value>) -> Value {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        match prev {
            Some(prev) => {
                map.insert("prevResult".into(), prev.clone());
            }
            None => {
                map.remove("prevResult");
            }
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_plugin(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn plugins(dir: &Path) -> Plugins {
        Plugins {
            dirs: vec![dir.to_path_buf()],
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn env_stdin_result_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes its environment and stdin into a result.
        fake_plugin(
            dir.path(),
            "echo",
            r#"in=$(cat); echo "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"$CNI_NETNS\"}],\"ips\":[{\"interface\":0,\"address\":\"10.1.2.3/24\"}],\"env\":\"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\",\"len\":${#in}}""#,
        );
        fake_plugin(
            dir.path(),
            "broken",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no bridge"}'; exit 1"#,
        );
        fake_plugin(
            dir.path(),
            "garbage",
            "echo not json; echo oops >&2; exit 2",
        );
        let p = plugins(dir.path());
        let config = serde_json::json!({"cniVersion": CNI_VERSION, "name": "n", "type": "echo"});
        let call = PluginCall {
            command: CniCommand::Add,
            container_id: "app_web",
            netns: Path::new("/run/x"),
            ifname: "eth0",
            config: &config,
        };
        let result = p.call(&call).await.unwrap().unwrap();
        assert_eq!(result["env"], "ADD app_web eth0");
        assert_eq!(result["len"], serde_json::to_vec(&config).unwrap().len());
        let typed: CniResult = serde_json::from_value(result).unwrap();
        assert_eq!(typed.container_ipv4(), Some("10.1.2.3".parse().unwrap()));
        let del = PluginCall {
            command: CniCommand::Del,
            ..call
        };
        assert_eq!(p.call(&del).await.unwrap(), None);

        let broken = serde_json::json!({"type": "broken"});
        let err = p
            .call(&PluginCall {
                config: &broken,
                ..call
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("broken ADD for app_web failed (code 7): bad config (no bridge)"),
            "{text}"
        );
        let garbage = serde_json::json!({"type": "garbage"});
        let err = p
            .call(&PluginCall {
                config: &garbage,
                ..call
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        let missing = serde_json::json!({"type": "nope"});
        let err = p
            .call(&PluginCall {
                config: &missing,
                ..call
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CniError::NotFound { .. }), "{err}");
    }

    #[test]
    fn prev_result_is_set_and_cleared() {
        let c = serde_json::json!({"type": "portmap"});
        let r = serde_json::json!({"ips": []});
        let with = with_prev_result(&c, Some(&r));
        assert_eq!(with["prevResult"], r);
        assert!(with_prev_result(&with, None).get("prevResult").is_none());
    }
}
