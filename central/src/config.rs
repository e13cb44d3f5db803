//! Central's configuration: one typed struct, loaded once from TOML and validated at load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read central config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("central config {path} is invalid: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the parser said (field and line).
        message: String,
    },
    /// A value is out of range.
    #[error("central config: `{field}` {problem}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
}

/// Settings of one `cairn-central` process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Where the database, the CA key and the bootstrap admin token live (created 0700).
    pub data_dir: PathBuf,
    /// gRPC (agents, TLS/mTLS) listen address.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// REST (operators, TLS) listen address.
    #[serde(default = "default_rest_listen")]
    pub rest_listen: SocketAddr,
    /// DNS names and IP addresses put in central's server certificate; agents and cairnctl
    /// connect to one of these.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Lifetime of a device certificate; agents renew when a third of it is left.
    #[serde(default = "default_device_cert_lifetime")]
    pub device_cert_lifetime_seconds: u64,
    /// How long a pending (manual policy) device waits between polls.
    #[serde(default = "default_pending_retry")]
    pub pending_retry_seconds: u32,
    /// How often presence is written to the database in one batch: new and ended streams,
    /// stale heartbeat times, and with replicas each replica's liveness.
    #[serde(default = "default_presence_flush")]
    pub presence_flush_ms: u64,
    /// Default lifetime of an enrollment token when the request gives none.
    #[serde(default = "default_token_lifetime")]
    pub default_token_lifetime_seconds: u64,
    /// Largest OS update bundle (`POST /api/v1/bundles`) accepted, in bytes.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: u64,
    /// PEM certificate(s) uploaded update bundles must be signed with (the devices' RAUC
    /// keyring). Unset: bundle uploads are refused.
    #[serde(default)]
    pub update_keyring: Option<PathBuf>,
    /// RAUC `compatible` string every uploaded bundle must carry (e.g. `cairn-qemu-x86_64`).
    /// Unset: bundle uploads are refused.
    #[serde(default)]
    pub update_compatible: Option<String>,
    /// How long a device running a deployment may stay offline before the scheduler moves the
    /// deployment to another device of its site.
    #[serde(default = "default_placement_grace")]
    pub placement_offline_grace_seconds: u64,
    /// PostgreSQL registry shared by several central replicas
    /// (`postgres://user:password@host:port/database`; keep this file 0600, it holds the
    /// password). Unset: the embedded SQLite database in `data_dir`. Replicas also share one
    /// `data_dir` (the CA key, escrow key and bundles live there), e.g. on a shared volume.
    #[serde(default)]
    pub database_url: Option<String>,
    /// How many events the registry keeps (the oldest are pruned beyond this).
    #[serde(default = "default_events_keep")]
    pub events_keep: u64,
    /// How long a logs-on-demand request waits for the device's answer.
    #[serde(default = "default_log_request_timeout")]
    pub log_request_timeout_seconds: u64,
    /// With `database_url`: a device whose stream is on another replica counts as online while
    /// that replica's liveness (written every `presence_flush_ms`) is this recent.
    #[serde(default = "default_remote_presence")]
    pub remote_presence_seconds: u64,
    /// A device whose clock is further than this from central's (by its heartbeats) gets a
    /// `device.clock_offset` warning event (once, when it crosses; again after it recovered).
    #[serde(default = "default_clock_offset_warning")]
    pub clock_offset_warning_seconds: u64,
    /// PEM files of the TPM vendor CA certificates (roots or intermediates) whose endorsement
    /// key certificates central trusts. Empty: no TPM can be proven, so only tokens created
    /// with `--allow-software-keys` admit devices.
    #[serde(default)]
    pub tpm_vendor_cas: Vec<PathBuf>,
    /// Enroll calls one source address may make per minute (bursts of as many); 0 = no limit.
    #[serde(default = "default_enroll_rate")]
    pub enroll_attempts_per_source_per_minute: u32,
    /// Connections one source address may hold open on the gRPC listener; 0 = no cap. Devices
    /// behind one NAT share an address: allow for the largest such group.
    #[serde(default = "default_grpc_per_source")]
    pub grpc_connections_per_source: u32,
    /// Connections one source address may hold open on the REST listener; 0 = no cap.
    #[serde(default = "default_rest_per_source")]
    pub rest_connections_per_source: u32,
    /// A REST connection with no byte either way for this long is closed (at least 1).
    #[serde(default = "default_rest_idle")]
    pub rest_idle_timeout_seconds: u64,
    /// Seconds between TPM quotes central asks of each device with a proven TPM (one is also
    /// asked on every stream open). A verified device with no quote for two intervals is
    /// `stale`.
    #[serde(default = "default_attestation_interval")]
    pub attestation_interval_secs: u64,
    /// Whether a device's quote must show Secure Boot on (PCR 7); off fails its attestation.
    #[serde(default = "default_true")]
    pub require_secure_boot: bool,
    /// Whether devices that cannot attest (no TPM central proved: software keys) receive their
    /// apps' secrets. Off: secrets go only to devices whose latest quote verified; turn it on
    /// only for fleets without TPMs, where a copied device key is enough to read them.
    #[serde(default)]
    pub release_secrets_to_unattested: bool,
}

fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_rest_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7444))
}
fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}
fn default_device_cert_lifetime() -> u64 {
    30 * 24 * 3600
}
fn default_pending_retry() -> u32 {
    10
}
fn default_presence_flush() -> u64 {
    5000
}
fn default_token_lifetime() -> u64 {
    7 * 24 * 3600
}
fn default_max_bundle_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}

fn default_placement_grace() -> u64 {
    60
}

fn default_events_keep() -> u64 {
    100_000
}

fn default_log_request_timeout() -> u64 {
    15
}
fn default_remote_presence() -> u64 {
    45
}
fn default_clock_offset_warning() -> u64 {
    60
}
fn default_enroll_rate() -> u32 {
    600
}
fn default_grpc_per_source() -> u32 {
    1024
}
fn default_rest_per_source() -> u32 {
    64
}
fn default_rest_idle() -> u64 {
    60
}
fn default_attestation_interval() -> u64 {
    3600
}
fn default_true() -> bool {
    true
}

/// Smallest `max_bundle_bytes` allowed: a signed bundle is never smaller.
pub const MIN_BUNDLE_BYTES: u64 = 4096;

impl CentralConfig {
    /// A config with defaults for everything but the data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            grpc_listen: default_grpc_listen(),
            rest_listen: default_rest_listen(),
            server_names: default_server_names(),
            device_cert_lifetime_seconds: default_device_cert_lifetime(),
            pending_retry_seconds: default_pending_retry(),
            presence_flush_ms: default_presence_flush(),
            default_token_lifetime_seconds: default_token_lifetime(),
            max_bundle_bytes: default_max_bundle_bytes(),
            update_keyring: None,
            update_compatible: None,
            placement_offline_grace_seconds: default_placement_grace(),
            database_url: None,
            events_keep: default_events_keep(),
            log_request_timeout_seconds: default_log_request_timeout(),
            remote_presence_seconds: default_remote_presence(),
            clock_offset_warning_seconds: default_clock_offset_warning(),
            tpm_vendor_cas: Vec::new(),
            enroll_attempts_per_source_per_minute: default_enroll_rate(),
            grpc_connections_per_source: default_grpc_per_source(),
            rest_connections_per_source: default_rest_per_source(),
            rest_idle_timeout_seconds: default_rest_idle(),
            attestation_interval_secs: default_attestation_interval(),
            require_secure_boot: true,
            release_secrets_to_unattested: false,
        }
    }

    /// Read, parse and validate a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server_names.is_empty() {
            return Err(ConfigError::Invalid {
                field: "server_names",
                problem: "is empty; list the host names or IPs agents use to reach central".into(),
            });
        }
        if self.device_cert_lifetime_seconds < 10 {
            return Err(ConfigError::Invalid {
                field: "device_cert_lifetime_seconds",
                problem: format!("is {}; use at least 10", self.device_cert_lifetime_seconds),
            });
        }
        if !(5..=7 * 24 * 3600).contains(&self.attestation_interval_secs) {
            return Err(ConfigError::Invalid {
                field: "attestation_interval_secs",
                problem: format!(
                    "is {}; use 5 to 604800 (a week); the default is 3600",
                    self.attestation_interval_secs
                ),
            });
        }
        if self.rest_idle_timeout_seconds == 0 {
            return Err(ConfigError::Invalid {
                field: "rest_idle_timeout_seconds",
                problem: "is 0; use at least 1 (the default is 60)".into(),
            });
        }
        if self.pending_retry_seconds == 0 {
            return Err(ConfigError::Invalid {
                field: "pending_retry_seconds",
                problem: "is 0; use at least 1".into(),
            });
        }
        if self.presence_flush_ms < 10 {
            return Err(ConfigError::Invalid {
                field: "presence_flush_ms",
                problem: "is below 10".into(),
            });
        }
        if self.max_bundle_bytes < MIN_BUNDLE_BYTES {
            return Err(ConfigError::Invalid {
                field: "max_bundle_bytes",
                problem: format!(
                    "is {}; use at least {MIN_BUNDLE_BYTES} (the default is 2 GiB)",
                    self.max_bundle_bytes
                ),
            });
        }
        if !(1..=7 * 24 * 3600).contains(&self.placement_offline_grace_seconds) {
            return Err(ConfigError::Invalid {
                field: "placement_offline_grace_seconds",
                problem: format!(
                    "is {}; use 1 to 604800 (a week); the default is 60",
                    self.placement_offline_grace_seconds
                ),
            });
        }
        if let Some(url) = &self.database_url {
            let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !scheme_ok {
                return Err(ConfigError::Invalid {
                    field: "database_url",
                    problem:
                        "is not a PostgreSQL URL; use postgres://user:password@host:port/database"
                            .into(),
                });
            }
            if let Err(problem) = crate::store::postgres_tls::parse_url(url) {
                return Err(ConfigError::Invalid {
                    field: "database_url",
                    problem: format!(
                        "is not usable: {problem}; the form is postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=/path/ca.pem"
                    ),
                });
            }
        }
        if !(5..=3600).contains(&self.remote_presence_seconds) {
            return Err(ConfigError::Invalid {
                field: "remote_presence_seconds",
                problem: format!(
                    "is {}; use 5 to 3600 (the default is 45)",
                    self.remote_presence_seconds
                ),
            });
        }
        if !(1..=86_400).contains(&self.clock_offset_warning_seconds) {
            return Err(ConfigError::Invalid {
                field: "clock_offset_warning_seconds",
                problem: format!(
                    "is {}; use 1 to 86400 (the default is 60)",
                    self.clock_offset_warning_seconds
                ),
            });
        }
        if !(100..=100_000_000).contains(&self.events_keep) {
            return Err(ConfigError::Invalid {
                field: "events_keep",
                problem: format!(
                    "is {}; use 100 to 100000000 (the default is 100000)",
                    self.events_keep
                ),
            });
        }
        if !(1..=300).contains(&self.log_request_timeout_seconds) {
            return Err(ConfigError::Invalid {
                field: "log_request_timeout_seconds",
                problem: format!(
                    "is {}; use 1 to 300 (the default is 15)",
                    self.log_request_timeout_seconds
                ),
            });
        }
        if let Some(keyring) = &self.update_keyring {
            if !keyring.is_file() {
                return Err(ConfigError::Invalid {
                    field: "update_keyring",
                    problem: format!(
                        "{} is not a readable file; give the PEM certificate update bundles are signed with",
                        keyring.display()
                    ),
                });
            }
        }
        if let Some(compatible) = &self.update_compatible {
            if compatible.is_empty()
                || compatible.len() > 128
                || !compatible.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(ConfigError::Invalid {
                    field: "update_compatible",
                    problem: format!("{compatible:?} must be 1-128 printable ASCII characters without spaces, like `cairn-qemu-x86_64`"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../central.example.toml");
        let config: CentralConfig = toml::from_str(text).expect("example parses");
        config.validate().expect("example is valid");
    }

    #[test]
    fn unknown_field_is_named() {
        let err =
            toml::from_str::<CentralConfig>("data_dir = \"/x\"\ngrpc_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("grpc_port"), "{err}");
    }

    #[test]
    fn database_url_is_checked_and_never_echoed() {
        let mut c = CentralConfig::with_data_dir("/x");
        c.database_url = Some("mysql://root:hunter2@db/cairn".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("database_url") && !err.contains("hunter2"),
            "{err}"
        );
        c.database_url = Some("postgres://cairn:hunter2@127.0.0.1:5432/cairn".into());
        c.validate().unwrap();
        assert_eq!(
            crate::store::redact_url(c.database_url.as_deref().unwrap()),
            "postgres://cairn@127.0.0.1/cairn"
        );
        // TLS options are checked at start, the CA file read: a missing one is named.
        c.database_url = Some(
            "postgres://cairn:hunter2@db:5432/cairn?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
                .into(),
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && !err.contains("hunter2"),
            "{err}"
        );
        assert_eq!(
            crate::store::redact_url(c.database_url.as_deref().unwrap()),
            "postgres://cairn@db/cairn"
        );
    }

    #[test]
    fn zero_retry_is_refused() {
        let mut c = CentralConfig::with_data_dir("/x");
        c.pending_retry_seconds = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pending_retry_seconds"));
    }

    #[test]
    fn bundle_settings_are_checked() {
        let mut c = CentralConfig::with_data_dir("/x");
        assert_eq!(c.max_bundle_bytes, 2 << 30);
        c.max_bundle_bytes = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_bundle_bytes"));
        let mut c = CentralConfig::with_data_dir("/x");
        c.update_keyring = Some("/nonexistent/update.cert.pem".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("update_keyring"));
        let mut c = CentralConfig::with_data_dir("/x");
        c.update_compatible = Some("has space".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("update_compatible"));
    }
}
