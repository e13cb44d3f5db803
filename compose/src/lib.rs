//! The app spec: a subset of the Compose file format, parsed from YAML and validated with errors
//! that name the file, the line and the field path (`compose.yml:12: services.web.ports[0]: ...`).
//!
//! Supported: `services.<name>.{image, command, entrypoint, environment, volumes, ports, restart,
//! healthcheck, deploy.resources.limits.{cpus, memory}, network_mode: host, secrets, working_dir,
//! hostname, read_only}`, top-level
//! `volumes` (named volumes, stored on the data partition), top-level `secrets` (no `file`: values
//! are provided by central and appear in the container as `/run/secrets/NAME`) and `version`
//! (ignored), plus `x-*` extension fields anywhere (ignored) and YAML `<<` merge keys. Anything
//! else is refused with the list of supported keys.
//!
//! Architecture invariant: this crate parses a string it is given and nothing more. It must not
//! depend on containerd, the network, tokio or the file system, so central and cairnctl check a
//! Compose file exactly as the agent does without pulling in the runtime. Size limits of the text
//! (`cairn_proto::MAX_COMPOSE_BYTES`) are the caller's; what the YAML may expand to (aliases
//! copied, at most 30,000 nodes) and how deep it may nest (32 levels) are bounded here, so a
//! hostile file under 1 KiB is refused in milliseconds.
//!
//! - [`AppSpec::parse`]: the entry point, from YAML text to a validated [`AppSpec`].
//! - `yaml`: YAML events to a tree whose nodes know their line, within node and depth budgets.
//! - `parse`, `sections`: that tree to an [`AppSpec`], collecting every problem.
//! - `fields`: the scalar formats (ports, volumes, durations, sizes, names, commands).
//! - [`ImageRef`]: image references, normalized as containerd and Docker name images.

mod fields;
mod parse;
mod reference;
mod sections;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

pub use fields::{split_command, ContainerPathError, FieldError, NameError, PortError};
pub use reference::{check_digest, ImageRef, ImageRefError};

/// Longest app or service name (they become parts of containerd ids).
pub const MAX_NAME_LEN: usize = 32;

/// Check an app or service name as Compose files are checked: lowercase ASCII letters and digits
/// in runs separated by single `-`, `_` or `.`, at most [`MAX_NAME_LEN`] characters. The error
/// says what is wrong.
///
/// # Errors
/// [`NameError`] saying which rule the name breaks.
pub fn check_app_or_service_name(name: &str) -> Result<(), NameError> {
    fields::check_name(name, MAX_NAME_LEN)
}

/// Check an app name: the rules of [`check_app_or_service_name`] without `_` (app names become
/// parts of network and file names where `_` separates them from service names).
///
/// # Errors
/// [`NameError`] saying which rule the name breaks.
pub fn check_app_name(name: &str) -> Result<(), NameError> {
    fields::check_name(name, MAX_NAME_LEN)?;
    if name.contains('_') {
        return Err(NameError::Underscore);
    }
    Ok(())
}

/// A validated app: a named set of services plus the volumes and secrets they use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppSpec {
    /// App name (lowercase letters, digits and single `-` or `.` between them).
    pub name: String,
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes (declared at top level or used by a service).
    pub volumes: BTreeSet<String>,
    /// Secret names declared at top level; values come from central.
    pub secrets: BTreeSet<String>,
}

/// One service (one container) of an app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSpec {
    /// Image reference, e.g. `registry.example.com:5000/team/web:1.2`.
    pub image: String,
    /// Replaces the image's `Cmd`.
    pub command: Option<Vec<String>>,
    /// Replaces the image's `Entrypoint` (and drops its `Cmd` unless `command` is set).
    pub entrypoint: Option<Vec<String>>,
    /// Environment added to (and overriding) the image's.
    pub environment: BTreeMap<String, String>,
    /// Named volumes mounted into the container.
    pub volumes: Vec<VolumeMount>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// What to do when the container exits.
    pub restart: RestartPolicy,
    /// Health check run inside the container, if any.
    pub healthcheck: Option<HealthCheck>,
    /// cgroup limits.
    pub limits: ResourceLimits,
    /// Network namespace of the container.
    pub network_mode: NetworkMode,
    /// Secrets (declared at top level) granted to this service, in `/run/secrets/NAME`.
    pub secrets: Vec<String>,
    /// Replaces the image's working directory (absolute).
    pub working_dir: Option<String>,
    /// The container's host name; the service name when `None`.
    pub hostname: Option<String>,
    /// Mount the container's root file system read-only.
    pub read_only: bool,
}

/// A named volume mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeMount {
    /// Volume name; its directory lives under the runtime's data dir.
    pub volume: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only (`:ro`).
    pub read_only: bool,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// A published port: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// Host address to bind, when given.
    pub host_ip: Option<std::net::IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Compose restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart (the default).
    #[default]
    No,
    /// Always restart, whatever the exit status.
    Always,
    /// Restart when the exit status is not 0, at most `max_retries` times when given.
    OnFailure {
        /// Give up after this many restarts.
        max_retries: Option<u32>,
    },
    /// Like `always` (there is no manual stop on a device).
    UnlessStopped,
}

/// The command a health check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HealthTest {
    /// `["CMD", arg...]`: exec the arguments directly.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "cmd"]` or a string: run with `/bin/sh -c`.
    Shell(String),
}

impl HealthTest {
    /// The argv to exec in the container.
    pub fn argv(&self) -> Vec<String> {
        match self {
            HealthTest::Exec(args) => args.clone(),
            HealthTest::Shell(cmd) => vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
        }
    }
}

/// A health check (Compose defaults: interval 30s, timeout 30s, retries 3, start_period 0s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// What to run.
    pub test: HealthTest,
    /// Time between checks.
    pub interval: Duration,
    /// A check running longer than this fails.
    pub timeout: Duration,
    /// Consecutive failures before the service is unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    pub start_period: Duration,
}

/// cgroup limits from `deploy.resources.limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct ResourceLimits {
    /// CPU limit in thousandths of a CPU (`cpus: 0.5` = 500).
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
}

/// Network namespace of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace on the app's bridge network (CNI), reachable from the app's
    /// other services by its name; `ports` are published through the host.
    #[default]
    Private,
    /// The host's network namespace (`network_mode: host`).
    Host,
}

/// One validation problem: the line and field path of the value and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value.
    pub line: usize,
    /// Field path, e.g. `services.web.ports[0]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Why an app spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The text is not valid YAML.
    #[error("{file}:{line}:{col}: not valid YAML: {message}; fix the syntax at that position")]
    Syntax {
        /// File name as given by the caller.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The YAML parser's message.
        message: String,
    },
    /// The YAML is valid but does not describe a supported app.
    #[error("{}", format_problems(file, problems))]
    Invalid {
        /// File name as given by the caller.
        file: String,
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
    /// The app name given by the caller is not usable.
    #[error("app name {name:?} is invalid: {reason}")]
    AppName {
        /// The name.
        name: String,
        /// Why.
        reason: NameError,
    },
}

fn format_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{file}:{}: {}: {}", p.line, p.path, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AppSpec {
    /// Parse and validate the Compose-format `text` of app `app_name`. `file` is only used in
    /// error messages.
    ///
    /// # Errors
    /// [`SpecError::Syntax`] for invalid YAML, [`SpecError::Invalid`] with every problem found
    /// (file, line, field path, what to change), [`SpecError::AppName`] for a bad `app_name`.
    pub fn parse(file: &str, app_name: &str, text: &str) -> Result<AppSpec, SpecError> {
        if let Err(reason) = check_app_name(app_name) {
            return Err(SpecError::AppName {
                name: app_name.to_string(),
                reason,
            });
        }
        let root = yaml::parse_document(text).map_err(|e| SpecError::Syntax {
            file: file.to_string(),
            line: e.line,
            col: e.col,
            message: e.message,
        })?;
        parse::app(&root, app_name).map_err(|problems| SpecError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests;
