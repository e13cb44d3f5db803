//! The app spec: a subset of the Compose file format, parsed from YAML and validated with errors
//! that name the file, the line and the field path (`compose.yml:12: services.web.ports[0]: ...`).
//!
//! Supported: `services.<name>.{image, command, entrypoint, environment, volumes, ports (short
//! and long syntax, port ranges), restart, healthcheck, deploy.resources.limits.{cpus, memory},
//! network_mode: host, secrets, configs, working_dir, hostname, read_only, user, extra_hosts,
//! labels, tmpfs, stop_signal, stop_grace_period, depends_on, cap_add, cap_drop, ulimits,
//! sysctls, logging (json-file or local, with max-size and max-file), devices}` (`secrets` and
//! `configs` in the short and the long syntax: `source`, `target`, `uid`, `gid`, `mode`),
//! top-level `volumes` (named volumes, stored on the data partition), top-level `secrets` (no
//! `file`: values are provided by central and appear by default as `/run/secrets/NAME`),
//! top-level `configs` (inline `content` only, templated by the variables like every value, by
//! default at `/NAME`) and `version` (ignored), plus `x-*` extension fields anywhere (ignored,
//! except Cairn's own: `x-cairn-secret-env` on a service puts secrets it was granted into its
//! environment, see `secret_env`; any other `x-cairn-*` key is refused), YAML `<<` merge keys and variable interpolation (`${VAR}`, `${VAR:-default}`, ... with the
//! variables central provides). Anything
//! else is refused with the list of supported keys, and the Compose keys that would loosen an
//! app's confinement (`privileged`, `pid`, `security_opt`, ...) with the reason.
//!
//! Architecture invariant: this crate parses a string it is given and nothing more. It must not
//! depend on containerd, the network, tokio or the file system, so central and cairnctl check a
//! Compose file exactly as the agent does without pulling in the runtime. Size limits of the text
//! (`cairn_proto::MAX_COMPOSE_BYTES`) are the caller's; what the YAML may expand to (aliases
//! copied, at most 30,000 nodes), how deep it may nest (32 levels) and what variables may add
//! (64 KiB a value, 1 MiB a file) are bounded here, so a hostile file under 1 KiB is refused in
//! milliseconds.
//!
//! - [`AppSpec::parse`], [`AppSpec::parse_with_variables`]: the entry points, from YAML text to
//!   a validated [`AppSpec`].
//! - `yaml`: YAML events to a tree whose nodes know their line, within node and depth budgets.
//! - `interpolate`: variables put into the tree's values.
//! - `parse`, `sections`, `lists`, `files`, `secret_env`, `depends`: that tree to an
//!   [`AppSpec`], collecting every problem (`files` holds secrets and configs, `secret_env` the
//!   secrets put into the environment, `depends` the checks across services).
//! - `fields`: the scalar formats (ports, volumes, durations, sizes, names, commands, users,
//!   signals, capabilities, devices, ...).
//! - [`ImageRef`]: image references, normalized as containerd and Docker name images.
//! - [`RegistryLogin`]: how to reach a private registry (a `registry` secret's value).

mod depends;
mod fields;
mod files;
mod interpolate;
mod lists;
mod parse;
mod reference;
mod registry_login;
mod secret_env;
mod sections;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

pub use fields::{
    check_sysctl, refused_capability, refused_host_device, split_command, ContainerPathError,
    DeviceError, FieldError, FileMountError, NameError, PortError, TmpfsError, UserError,
    ALL_CAPABILITIES,
};
pub use reference::{check_digest, ImageRef, ImageRefError};
pub use registry_login::{
    RegistryLogin, RegistryLoginError, MAX_REGISTRY_CAS, MAX_REGISTRY_PASSWORD,
    MAX_REGISTRY_USERNAME,
};
pub use secret_env::{
    is_env_name, SecretEnvError, MAX_SECRET_ENV, MAX_SECRET_ENV_NAME_LEN, SECRET_ENV_KEY,
};

/// Docker's default capability set, which Compose files are written against: root in a
/// container holds these unless `cap_drop` removes them; a non-root user holds none.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

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

/// A validated app: a named set of services plus the volumes, secrets and configs they use.
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
    /// Configs declared at top level: name to the file's text (`content`, variables put in).
    pub configs: BTreeMap<String, String>,
}

/// One service (one container) of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
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
    /// `secrets`: secrets (declared at top level) mounted as files, by default at
    /// `/run/secrets/NAME`.
    pub secrets: Vec<FileMount>,
    /// `configs`: configs (declared at top level) mounted as files, by default at `/NAME`.
    /// Left out of the serialized form when empty, so that the spec hash of a service without
    /// configs stays what it was before configs existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileMount>,
    /// Replaces the image's working directory (absolute).
    pub working_dir: Option<String>,
    /// The container's host name; the service name when `None`.
    pub hostname: Option<String>,
    /// Mount the container's root file system read-only.
    pub read_only: bool,
    /// `user`: `USER[:GROUP]`, each a name or a number; names are looked up in the image's
    /// `/etc/passwd` and `/etc/group` when the container is made. `None`: the image's `USER`.
    pub user: Option<String>,
    /// `extra_hosts`: lines added to the container's `/etc/hosts`.
    pub extra_hosts: Vec<ExtraHost>,
    /// `labels`: labels of the container (keys starting `cairn.` are the agent's own and refused).
    pub labels: BTreeMap<String, String>,
    /// `tmpfs`: in-memory file systems, counted against the service's memory limit.
    pub tmpfs: Vec<TmpfsMount>,
    /// `stop_signal`: the signal (Linux number) that asks the service to stop; SIGTERM when `None`.
    pub stop_signal: Option<i32>,
    /// `stop_grace_period`: how long the service has between the stop signal and SIGKILL; the
    /// agent's default (10 s) when `None`.
    pub stop_grace_period: Option<Duration>,
    /// `depends_on`: services of the same app started first, and what they must reach.
    pub depends_on: BTreeMap<String, DependsOn>,
    /// `cap_add`: capabilities (`CAP_…` names) beyond Docker's default set; each needs the
    /// device's `cairn.allow/capabilities` label (see [`AppSpec::privileges`]).
    pub cap_add: BTreeSet<String>,
    /// `cap_drop`: capabilities (`CAP_…` names, or `ALL`) removed from the default set.
    pub cap_drop: BTreeSet<String>,
    /// `ulimits`: resource limits by name (`nofile`, `nproc`, ...).
    pub ulimits: BTreeMap<String, Ulimit>,
    /// `sysctls`: namespaced kernel parameters (`net.*` needs the app's own network).
    pub sysctls: BTreeMap<String, String>,
    /// `logging.options`: size limits of the container's log on the device.
    pub logging: LogLimits,
    /// `devices`: host devices given to the container; each needs the device's
    /// `cairn.allow/devices` label (see [`AppSpec::privileges`]).
    pub devices: Vec<DeviceMapping>,
    /// `x-cairn-secret-env`: environment variables whose values are secrets, variable name to
    /// secret name (each secret also in [`ServiceSpec::secrets`]). Names only: the runtime
    /// puts the values in when it makes the container. Opt-in because containerd then keeps
    /// the value in the container's OCI spec in its metadata database on the data partition,
    /// and every process of the container inherits it; see the `secret_env` module. Left out of
    /// the serialized form when empty, so that the spec hash of a service without it stays what
    /// it was before it existed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
}

/// An `extra_hosts` entry: `HOST:IP` (or `HOST=IP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraHost {
    /// Host name.
    pub host: String,
    /// Its address.
    pub ip: std::net::IpAddr,
}

/// A `tmpfs` entry: `/path[:size=64m,mode=1777]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TmpfsMount {
    /// Absolute path inside the container.
    pub target: String,
    /// Largest size in bytes ([`DEFAULT_TMPFS_BYTES`] unless given).
    pub size_bytes: u64,
    /// Permission bits of its root (octal in the file), 1777 unless given.
    pub mode: u32,
}

/// Size of a `tmpfs` mount that does not say (Docker's default, half the RAM, is far too much
/// on a small box).
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// What a `depends_on` service must reach before the dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DependsOn {
    /// Its container is running (the list form's meaning).
    #[default]
    ServiceStarted,
    /// Its health check passes.
    ServiceHealthy,
    /// It ran and exited with status 0.
    ServiceCompletedSuccessfully,
}

/// A `ulimits` entry: a single number sets both limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// Soft limit.
    pub soft: u64,
    /// Hard limit (at least `soft`).
    pub hard: u64,
}

/// `logging.options.max-size` / `max-file` (driver `json-file` or `local`, or none given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct LogLimits {
    /// Rotate the log when it reaches this many bytes; the agent's default when `None`.
    pub max_bytes: Option<u64>,
    /// Keep at most this many files (current one included); the agent's default when `None`.
    pub max_files: Option<u32>,
}

/// A `devices` entry: `HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceMapping {
    /// Device node on the host, under `/dev`.
    pub host: String,
    /// Path inside the container (the host path unless given).
    pub container: String,
    /// cgroup permissions: a non-empty subset of `rwm` (all three unless given).
    pub permissions: String,
}

/// What an app asks for beyond the default confinement; a device runs it only if its labels
/// (or its site's) allow every item.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Privileges {
    /// Host device paths (`devices`).
    pub devices: BTreeSet<String>,
    /// Capabilities outside Docker's default set (`cap_add`).
    pub capabilities: BTreeSet<String>,
}

/// A secret or config mounted read-only as one file (an entry of a service's `secrets` or
/// `configs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMount {
    /// Name of the secret or config, declared at top level.
    pub source: String,
    /// Absolute path of the file inside the container (normalized).
    pub target: String,
    /// Owner of the file inside the container, 0 to [`MAX_FILE_ID`] (0 unless given).
    pub uid: u32,
    /// Group of the file inside the container, 0 to [`MAX_FILE_ID`] (0 unless given).
    pub gid: u32,
    /// Permission bits, at most 0o777 ([`DEFAULT_FILE_MODE`] unless given).
    pub mode: u32,
}

/// Permission bits of a secret or config file that does not say (Docker's: every user of the
/// container may read it, as images running as a non-root user expect).
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// Largest `uid` or `gid` of a secret or config file: an app's ids are 65,536 wide.
pub const MAX_FILE_ID: u32 = 65_535;

/// Largest `content` of a config (before or after variables are put in).
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
    /// Devices and extra capabilities the app's services ask for.
    pub fn privileges(&self) -> Privileges {
        let mut out = Privileges::default();
        for svc in self.services.values() {
            out.devices
                .extend(svc.devices.iter().map(|d| d.host.clone()));
            out.capabilities.extend(
                svc.cap_add
                    .iter()
                    .filter(|c| !DEFAULT_CAPABILITIES.contains(&c.as_str()))
                    .cloned(),
            );
        }
        out
    }

    /// Parse and validate the Compose-format `text` of app `app_name`, with no variables (a
    /// `${VAR}` without a default is a problem). `file` is only used in error messages.
    ///
    /// # Errors
    /// [`SpecError::Syntax`] for invalid YAML, [`SpecError::Invalid`] with every problem found
    /// (file, line, field path, what to change), [`SpecError::AppName`] for a bad `app_name`.
    pub fn parse(file: &str, app_name: &str, text: &str) -> Result<AppSpec, SpecError> {
        AppSpec::parse_with_variables(file, app_name, text, &BTreeMap::new())
    }

    /// [`AppSpec::parse`], interpolating `variables` into the file's values as Compose does
    /// (`${VAR}`, `${VAR:-default}`, `$$` for a literal `$`, ...). A variable that is not set
    /// and has no default is a problem at its line.
    ///
    /// # Errors
    /// As [`AppSpec::parse`]; a value that cannot be interpolated is one of the problems, and
    /// the problems its value as written would cause are left out.
    pub fn parse_with_variables(
        file: &str,
        app_name: &str,
        text: &str,
        variables: &BTreeMap<String, String>,
    ) -> Result<AppSpec, SpecError> {
        let mut root = document(file, app_name, text)?;
        let mut problems = interpolate::document(&mut root, variables);
        let result = parse::app(&root, app_name);
        if problems.is_empty() {
            return result.map_err(|problems| SpecError::Invalid {
                file: file.to_string(),
                problems,
            });
        }
        // A value left as written (`${VAR}`) would only add noise at its line.
        let lines: BTreeSet<usize> = problems.iter().map(|p| p.line).collect();
        let others = result.err().unwrap_or_default();
        problems.extend(others.into_iter().filter(|p| !lines.contains(&p.line)));
        problems.sort_by_key(|p| p.line);
        Err(SpecError::Invalid {
            file: file.to_string(),
            problems,
        })
    }

    /// Check `text` as far as central can before the variables of the devices that will run
    /// app `app_name` are known: as [`AppSpec::parse_with_variables`], except that a variable
    /// neither in `variables` nor given a default is no problem (the agent of a device that
    /// lacks it reports it), and that `cap_add` and `devices` may not use variables at all, so
    /// that what the app asks for is known here. Returns the host devices and capabilities
    /// the app asks for.
    ///
    /// # Errors
    /// As [`AppSpec::parse_with_variables`], without the problems of values that use a
    /// variable that is not set.
    pub fn check_with_unset_variables(
        file: &str,
        app_name: &str,
        text: &str,
        variables: &BTreeMap<String, String>,
    ) -> Result<Privileges, SpecError> {
        let mut root = document(file, app_name, text)?;
        let (mut problems, deferred) = interpolate::document_deferring_unset(&mut root, variables);
        let lines: BTreeSet<usize> = problems.iter().map(|p| p.line).collect();
        let result = parse::app(&root, app_name);
        if let Err(others) = &result {
            problems.extend(
                others
                    .iter()
                    .filter(|p| !lines.contains(&p.line) && !deferred.contains(&p.line))
                    .cloned(),
            );
        }
        let invalid = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| p.line);
            SpecError::Invalid {
                file: file.to_string(),
                problems,
            }
        };
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        match result {
            Ok(spec) => Ok(spec.privileges()),
            // Services with a deferred value were left out; their privileges are read alone.
            Err(_) => parse::app(&privileges_only(&root), app_name)
                .map(|spec| spec.privileges())
                .map_err(invalid),
        }
    }
}

/// The YAML tree of `text`, once `app_name` is known to be a usable app name.
fn document(file: &str, app_name: &str, text: &str) -> Result<yaml::Node, SpecError> {
    if let Err(reason) = check_app_name(app_name) {
        return Err(SpecError::AppName {
            name: app_name.to_string(),
            reason,
        });
    }
    yaml::parse_document(text).map_err(|e| SpecError::Syntax {
        file: file.to_string(),
        line: e.line,
        col: e.col,
        message: e.message,
    })
}

/// `root` cut down to what [`AppSpec::privileges`] reads: each service's `cap_add` and
/// `devices`, with a placeholder image.
fn privileges_only(root: &yaml::Node) -> yaml::Node {
    use yaml::{Node, Value};
    let at = |node: &Node, value: Value| Node {
        line: node.line,
        col: node.col,
        value,
    };
    let scalar = |node: &Node, text: &str| {
        at(
            node,
            Value::Scalar {
                text: text.to_string(),
                quoted: true,
            },
        )
    };
    let entries = |node: &Node| match &node.value {
        Value::Map(entries) => entries.clone(),
        _ => Vec::new(),
    };
    let services = entries(root)
        .into_iter()
        .find(|(key, _)| key.as_scalar() == Some("services"))
        .map(|(_, services)| entries(&services))
        .unwrap_or_default();
    let services = services
        .into_iter()
        .map(|(name, service)| {
            let mut kept = vec![(scalar(&service, "image"), scalar(&service, "busybox"))];
            kept.extend(
                entries(&service)
                    .into_iter()
                    .filter(|(key, _)| matches!(key.as_scalar(), Some("cap_add" | "devices"))),
            );
            let service = at(&service, Value::Map(kept));
            (name, service)
        })
        .collect();
    let services = at(root, Value::Map(services));
    at(root, Value::Map(vec![(scalar(root, "services"), services)]))
}

#[cfg(test)]
mod tests;
