//! The agent's configuration: one typed TOML file, validated at load, with a section per
//! subsystem ([`DiskConfig`], [`BootConfig`], [`AppsConfig`], [`UpdateConfig`]).
//!
//! The fleet image carries this file (central's URL, central's CA, the enrollment token); nothing in
//! it is device specific. See `agent/agent.example.toml` for a commented example.
//!
//! Architecture invariant: this module imports no other module of the agent; every other module
//! may read it. Defaults are decided here once (e.g. the TPM's TCTI, [`AgentConfig::tcti`]).

mod apps;
mod boot;
mod disk;
mod time;
mod update;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use apps::{AppsConfig, DEFAULT_CONTAINERD_SOCKET};
pub use boot::BootConfig;
pub use disk::DiskConfig;
pub use time::TimeConfig;
pub use update::UpdateConfig;

/// Where the device key lives, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyStorageSetting {
    /// TPM when `tpm_tcti` is configured or `/dev/tpmrm0` exists, software otherwise.
    #[default]
    Auto,
    /// Always the TPM; fail when there is none.
    Tpm,
    /// Always a software key (ring, PKCS#8 file in `state_dir`).
    Software,
}

/// Where the device key lives, after `auto` has been decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStorage {
    /// In the TPM reached through this TCTI (e.g. `device:/dev/tpmrm0`).
    Tpm {
        /// TCTI configuration string handed to tss-esapi.
        tcti: String,
    },
    /// A software key file.
    Software,
}

/// TCTI used when `tpm_tcti` is not set (read it through [`AgentConfig::tcti`]).
pub const DEFAULT_TPM_TCTI: &str = "device:/dev/tpmrm0";
/// Device node whose presence makes `key_storage = "auto"` choose the TPM.
pub const TPM_DEVICE_NODE: &str = "/dev/tpmrm0";

/// The agent configuration (`/etc/cairn/agent.toml` on a device). Its `Debug` output hides the
/// enrollment token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Central's gRPC endpoint, `https://host:port` (an IP address or a DNS name).
    pub central_endpoint: String,
    /// PEM file holding central's CA certificate: the only trust root for every connection.
    pub ca_cert: PathBuf,
    /// The fleet enrollment token (give this or `enrollment_token_file`).
    #[serde(default)]
    pub enrollment_token: Option<String>,
    /// A file whose trimmed content is the enrollment token.
    #[serde(default)]
    pub enrollment_token_file: Option<PathBuf>,
    /// Directory for the device key, certificate, desired state and `status.json`.
    pub state_dir: PathBuf,
    /// `auto`, `tpm` or `software`.
    #[serde(default)]
    pub key_storage: KeyStorageSetting,
    /// TCTI for the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[serde(default)]
    pub tpm_tcti: Option<String>,
    /// Serial number override; else DMI product serial, else `/etc/machine-id`.
    #[serde(default)]
    pub serial: Option<String>,
    /// Hostname override; else the kernel's hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Milliseconds between heartbeats on the Sync stream.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// First retry delay after a failure, in milliseconds.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Largest retry delay, in milliseconds (also the slow retry of a revoked device).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Renew the certificate once less than this fraction of its lifetime remains (0 < f < 1).
    #[serde(default = "default_renew_fraction")]
    pub renew_when_remaining_fraction: f64,
    /// The encrypted data partition (`[disk]`; off unless `enabled`).
    #[serde(default)]
    pub disk: DiskConfig,
    /// Marking the boot good once connected (`[boot]`; off unless `bless`).
    #[serde(default)]
    pub boot: BootConfig,
    /// Running the desired apps on containerd (`[apps]`; off unless `enabled`).
    #[serde(default)]
    pub apps: AppsConfig,
    /// OS updates from central's rollouts (`[update]`; off unless `enabled`).
    #[serde(default)]
    pub update: UpdateConfig,
    /// Correcting the device's clock from central's signed time.
    #[serde(default)]
    pub time: TimeConfig,
    /// Mount points whose file-system usage heartbeats report (those that do not exist are
    /// skipped).
    #[serde(default = "default_metrics_mounts")]
    pub metrics_mounts: Vec<PathBuf>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("central_endpoint", &self.central_endpoint)
            .field("ca_cert", &self.ca_cert)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("enrollment_token_file", &self.enrollment_token_file)
            .field("state_dir", &self.state_dir)
            .field("key_storage", &self.key_storage)
            .field("tpm_tcti", &self.tpm_tcti)
            .field("serial", &self.serial)
            .field("hostname", &self.hostname)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("backoff_initial_ms", &self.backoff_initial_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field(
                "renew_when_remaining_fraction",
                &self.renew_when_remaining_fraction,
            )
            .field("disk", &self.disk)
            .field("boot", &self.boot)
            .field("apps", &self.apps)
            .field("update", &self.update)
            .field("time", &self.time)
            .field("metrics_mounts", &self.metrics_mounts)
            .finish()
    }
}

fn default_heartbeat_interval_ms() -> u64 {
    15_000
}
fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_renew_fraction() -> f64 {
    0.33
}
fn default_metrics_mounts() -> Vec<PathBuf> {
    vec!["/".into(), "/data".into()]
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read agent config {path}: {source}; check the --config path and its permissions"
    )]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`AgentConfig`] (unknown or mistyped field).
    #[error(
        "agent config {path} is not valid: {message}; see agent/agent.example.toml for the fields"
    )]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (names line and field).
        message: String,
    },
    /// A field has a value the agent cannot use.
    #[error("agent config {path}: field `{field}` {problem}")]
    Invalid {
        /// The config file (or `<memory>` for configs built in code).
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The enrollment token file could not be read.
    #[error(
        "cannot read enrollment_token_file {path}: {source}; fix the path or set enrollment_token"
    )]
    TokenFile {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One field of the configuration has a value the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct FieldError {
    /// The field, with its section (`disk.pcrs`).
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl FieldError {
    /// `field` is wrong: `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> FieldError {
        FieldError {
            field,
            problem: problem.into(),
        }
    }
}

/// Host, port and TLS server name taken from `central_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralAddress {
    /// Host as written (brackets of an IPv6 literal removed).
    pub host: String,
    /// TCP port (443 when the URL has none).
    pub port: u16,
}

impl AgentConfig {
    /// Reads, parses and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// A config with defaults for everything but the required fields (for tests and benchmarks).
    pub fn new(central_endpoint: &str, ca_cert: &Path, token: &str, state_dir: &Path) -> Self {
        AgentConfig {
            central_endpoint: central_endpoint.to_string(),
            ca_cert: ca_cert.to_path_buf(),
            enrollment_token: Some(token.to_string()),
            enrollment_token_file: None,
            state_dir: state_dir.to_path_buf(),
            key_storage: KeyStorageSetting::default(),
            tpm_tcti: None,
            serial: None,
            hostname: None,
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            renew_when_remaining_fraction: default_renew_fraction(),
            disk: DiskConfig::default(),
            boot: BootConfig::default(),
            apps: AppsConfig::default(),
            update: UpdateConfig::default(),
            time: TimeConfig::default(),
            metrics_mounts: default_metrics_mounts(),
        }
    }

    /// The file holding the last known good time (on the data partition on a device).
    pub fn clock_floor_path(&self) -> PathBuf {
        self.state_dir.join("clock-floor")
    }

    /// Checks every field; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            problem,
        };
        let section = |e: FieldError| invalid(e.field, e.problem);
        self.central_address().map_err(section)?;
        if self.ca_cert.as_os_str().is_empty() {
            return Err(invalid(
                "ca_cert",
                "is empty; give the path of central's CA certificate (PEM)".into(),
            ));
        }
        match (&self.enrollment_token, &self.enrollment_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "enrollment_token",
                    "and `enrollment_token_file` are both set; keep one of them".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "enrollment_token",
                    "is missing; set `enrollment_token` or `enrollment_token_file`".into(),
                ))
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err(invalid("enrollment_token", "is empty".into()))
            }
            _ => {}
        }
        self.disk.validate().map_err(section)?;
        self.apps.validate().map_err(section)?;
        if let Some((field, problem)) = self.time.problem() {
            return Err(invalid(field, problem));
        }
        if self.state_dir.as_os_str().is_empty() || self.state_dir.is_relative() {
            return Err(invalid(
                "state_dir",
                format!("must be an absolute path, got {:?}", self.state_dir),
            ));
        }
        if let Some(tcti) = &self.tpm_tcti {
            if tcti.trim().is_empty() {
                return Err(invalid(
                    "tpm_tcti",
                    "is empty; remove it or give e.g. \"device:/dev/tpmrm0\"".into(),
                ));
            }
            if self.key_storage == KeyStorageSetting::Software {
                return Err(invalid(
                    "tpm_tcti",
                    "is set but key_storage = \"software\"; remove one of them".into(),
                ));
            }
        }
        if let Some(serial) = &self.serial {
            if serial.trim().is_empty() || serial.len() > 128 {
                return Err(invalid("serial", "must be 1 to 128 characters".into()));
            }
        }
        if let Some(hostname) = &self.hostname {
            if hostname.trim().is_empty() || hostname.len() > 253 {
                return Err(invalid("hostname", "must be 1 to 253 characters".into()));
            }
        }
        if self.heartbeat_interval_ms < 10 {
            return Err(invalid(
                "heartbeat_interval_ms",
                "must be at least 10".into(),
            ));
        }
        if self.backoff_initial_ms == 0 {
            return Err(invalid("backoff_initial_ms", "must be at least 1".into()));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "backoff_max_ms",
                format!(
                    "({}) must not be below backoff_initial_ms ({})",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            ));
        }
        if self.metrics_mounts.len() > 16 {
            return Err(invalid(
                "metrics_mounts",
                format!(
                    "lists {} mount points; keep it to 16",
                    self.metrics_mounts.len()
                ),
            ));
        }
        if let Some(bad) = self.metrics_mounts.iter().find(|m| m.is_relative()) {
            return Err(invalid(
                "metrics_mounts",
                format!("{bad:?} is not an absolute path"),
            ));
        }
        let f = self.renew_when_remaining_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(invalid(
                "renew_when_remaining_fraction",
                format!("must be between 0 and 1 (exclusive), got {f}"),
            ));
        }
        Ok(())
    }

    /// Host and port of central, parsed from `central_endpoint` (which must be `https://`).
    pub fn central_address(&self) -> Result<CentralAddress, FieldError> {
        let bad = |problem: String| FieldError::new("central_endpoint", problem);
        let url = self.central_endpoint.trim();
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            bad(format!(
                "must start with https:// (got {url:?}); the agent only talks TLS to central"
            ))
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad(format!(
                "must be https://host[:port] without path or user (got {url:?})"
            )));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(format!("has an unclosed IPv6 bracket (got {url:?})")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(format!("has junk after ] (got {url:?})")))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad(format!("has no host (got {url:?})")));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("has an invalid port {p:?}")))?,
        };
        rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
            bad(format!(
                "host {host:?} is neither a DNS name nor an IP address"
            ))
        })?;
        Ok(CentralAddress {
            host: host.to_string(),
            port,
        })
    }

    /// The enrollment token, read from `enrollment_token_file` when that is used.
    pub fn resolve_enrollment_token(&self) -> Result<String, ConfigError> {
        if let Some(token) = &self.enrollment_token {
            return Ok(token.trim().to_string());
        }
        let path = self.enrollment_token_file.clone().unwrap_or_default();
        let token = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::TokenFile {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                path,
                field: "enrollment_token_file",
                problem: "names an empty file".into(),
            });
        }
        Ok(token)
    }

    /// The TCTI of the TPM: `tpm_tcti`, else [`DEFAULT_TPM_TCTI`]. The one place the default is
    /// applied; the device key, the data partition and the updater all read it here.
    pub fn tcti(&self) -> &str {
        self.tpm_tcti.as_deref().unwrap_or(DEFAULT_TPM_TCTI)
    }

    /// Decides `key_storage = "auto"`: TPM when `tpm_tcti` is set or `/dev/tpmrm0` exists.
    pub fn resolve_key_storage(&self) -> KeyStorage {
        let tpm = || KeyStorage::Tpm {
            tcti: self.tcti().to_string(),
        };
        match self.key_storage {
            KeyStorageSetting::Software => KeyStorage::Software,
            KeyStorageSetting::Tpm => tpm(),
            KeyStorageSetting::Auto => {
                if self.tpm_tcti.is_some() || Path::new(TPM_DEVICE_NODE).exists() {
                    tpm()
                } else {
                    KeyStorage::Software
                }
            }
        }
    }

    /// Heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// First retry delay.
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }

    /// Largest retry delay.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
central_endpoint = "https://127.0.0.1:7443"
ca_cert = "/etc/cairn/ca.pem"
enrollment_token = "tok"
state_dir = "/var/lib/cairn"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_toml_str(text, Path::new("/etc/cairn/agent.toml"))
    }

    fn invalid_field(text: &str) -> &'static str {
        match parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.heartbeat_interval_ms, 15_000);
        assert_eq!(c.backoff_initial_ms, 1_000);
        assert_eq!(c.backoff_max_ms, 60_000);
        assert_eq!(c.renew_when_remaining_fraction, 0.33);
        assert_eq!(c.key_storage, KeyStorageSetting::Auto);
        assert_eq!(
            c.central_address().unwrap(),
            CentralAddress {
                host: "127.0.0.1".into(),
                port: 7443
            }
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let text = format!("{:?}", parse(MINIMAL).unwrap());
        assert!(!text.contains("\"tok\""), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../agent.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.key_storage, KeyStorageSetting::Auto);
        assert!(c.enrollment_token.is_some());
        assert_eq!(c.apps, AppsConfig::default());
    }

    #[test]
    fn unknown_field_is_refused_with_the_file_name() {
        let err = parse(&format!("{MINIMAL}\nheartbeat_intervall_ms = 5\n")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(msg.contains("/etc/cairn/agent.toml"), "{msg}");
        assert!(msg.contains("heartbeat_intervall_ms"), "{msg}");
    }

    #[test]
    fn http_endpoint_is_refused() {
        let text = MINIMAL.replace("https://", "http://");
        assert_eq!(invalid_field(&text), "central_endpoint");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("https://") && err.contains("agent.toml"),
            "{err}"
        );
    }

    #[test]
    fn endpoint_forms() {
        let mut c = parse(MINIMAL).unwrap();
        c.central_endpoint = "https://central.example.com".into();
        assert_eq!(c.central_address().unwrap().port, 443);
        c.central_endpoint = "https://[::1]:7443/".into();
        assert_eq!(
            c.central_address().unwrap(),
            CentralAddress {
                host: "::1".into(),
                port: 7443
            }
        );
        for bad in [
            "https://host:0",
            "https://host:x",
            "https://host/path",
            "https://",
            "https://u@h",
        ] {
            c.central_endpoint = bad.into();
            assert!(c.central_address().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_rules() {
        let no_token = MINIMAL.replace("enrollment_token = \"tok\"\n", "");
        assert_eq!(invalid_field(&no_token), "enrollment_token");
        let both = format!("{MINIMAL}enrollment_token_file = \"/t\"\n");
        assert_eq!(invalid_field(&both), "enrollment_token");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  secret\n").unwrap();
        let text = format!("{no_token}enrollment_token_file = {:?}\n", file);
        assert_eq!(
            parse(&text).unwrap().resolve_enrollment_token().unwrap(),
            "secret"
        );
    }

    #[test]
    fn numeric_bounds() {
        assert_eq!(
            invalid_field(&format!("{MINIMAL}renew_when_remaining_fraction = 1.5\n")),
            "renew_when_remaining_fraction"
        );
        assert_eq!(
            invalid_field(&format!("{MINIMAL}renew_when_remaining_fraction = 0.0\n")),
            "renew_when_remaining_fraction"
        );
        assert_eq!(
            invalid_field(&format!("{MINIMAL}backoff_initial_ms = 0\n")),
            "backoff_initial_ms"
        );
        assert_eq!(
            invalid_field(&format!(
                "{MINIMAL}backoff_initial_ms = 5000\nbackoff_max_ms = 100\n"
            )),
            "backoff_max_ms"
        );
        assert_eq!(
            invalid_field(&format!("{MINIMAL}heartbeat_interval_ms = 0\n")),
            "heartbeat_interval_ms"
        );
        assert_eq!(
            invalid_field(&MINIMAL.replace("/var/lib/cairn", "var/lib")),
            "state_dir"
        );
    }

    #[test]
    fn key_storage_resolution() {
        let mut c = parse(MINIMAL).unwrap();
        c.key_storage = KeyStorageSetting::Software;
        assert_eq!(c.resolve_key_storage(), KeyStorage::Software);
        c.key_storage = KeyStorageSetting::Auto;
        c.tpm_tcti = Some("swtpm:port=2321".into());
        assert_eq!(
            c.resolve_key_storage(),
            KeyStorage::Tpm {
                tcti: "swtpm:port=2321".into()
            }
        );
        c.key_storage = KeyStorageSetting::Software;
        assert!(c.validate(Path::new("x")).is_err());
        let text = format!("{MINIMAL}key_storage = \"tpm\"\n");
        assert_eq!(
            parse(&text).unwrap().resolve_key_storage(),
            KeyStorage::Tpm {
                tcti: DEFAULT_TPM_TCTI.into()
            }
        );
        assert!(parse(&format!("{MINIMAL}key_storage = \"hsm\"\n")).is_err());
    }
}
