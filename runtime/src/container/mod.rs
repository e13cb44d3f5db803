//! Service containers on containerd: create (container record + snapshot + OCI spec), start a
//! task whose output goes to a log file under the data dir, stop (the service's stop signal,
//! SIGTERM by default, then SIGKILL after its grace period), delete (task, container, snapshot),
//! exec for health checks, list with labels.
//!
//! What a container is made from comes from its service spec, its image and this host: the user
//! (names resolved in the image's `/etc/passwd` and `/etc/group`, see `users.rs` and
//! `rootfs.rs`), host devices (`devices.rs`), the hosts file (the app's, or a service's own with
//! its `extra_hosts`), and labels (the service's, under the agent's `cairn.` ones, which include
//! the stop signal and grace period so a container is always stopped the way it was made).
//!
//! Networking: `network_mode: host` shares the host's network namespace; other services join
//! the named namespace given in [`NewContainer::netns`] (prepared and attached by
//! [`crate::network`]), or get a fresh one with only loopback when none is given.

mod devices;
mod exec_output;
mod files;
mod logs;
mod oci;
mod rootfs;
mod seccomp;
mod secret_env;
mod task;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cairn_compose::{LogLimits, ResourceLimits, ServiceSpec};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
    ListContainersRequest, UpdateContainerRequest,
};
use tracing::{debug, info};

use crate::containerd::{call, Containerd, ContainerdError};
use crate::image::ImageInfo;
use crate::network::NetworkConfig;
use crate::userns::{self, AppUserns, IdRange};

pub use files::{remove_service_files, write_service_files, ServiceFiles, WrittenFile};
pub use logs::{
    log_uri, write_log, LogWriterError, RotatingLog, ServiceLog, MAX_LOG_FILES, MIN_LOG_BYTES,
};
pub use secret_env::{SecretEnvProblem, MAX_SECRET_ENV_BYTES};
pub use task::{exec, start_task, task_state, TaskState, TaskStatus};
pub use users::{UserDb, UserError};

/// Where the agent's binary, the log writer on a device, is installed in the OS image.
pub const DEFAULT_LOG_WRITER: &str = "/usr/bin/cairn-agent";

/// Label: the app a container belongs to.
pub const LABEL_APP: &str = "cairn.app";
/// Label: the service of the app.
pub const LABEL_SERVICE: &str = "cairn.service";
/// Label: hash of everything the container was made from; a different hash means "replace".
pub const LABEL_SPEC_HASH: &str = "cairn.spec-hash";

/// Version of the confinement `oci.rs` gives every container (capabilities, seccomp, masked
/// paths, limits). It is part of each container's spec hash, so raising it when the confinement
/// changes makes an updated agent replace the containers an older one made, instead of leaving
/// them running under the old rules. 2: seccomp, pids limit, OOM order, no capabilities for
/// non-root users. 3: default memory and CPU limits, the apps' common cgroup ceiling. 4: each
/// app in a user namespace of its own.
pub const CONFINEMENT_VERSION: u32 = 4;
/// Label: how many times the task was restarted.
pub const LABEL_RESTARTS: &str = "cairn.restarts";
/// Label: consecutive quick crashes (drives the restart back-off).
pub const LABEL_CRASH_STREAK: &str = "cairn.crash-streak";
/// Label: when the current task was started (Unix milliseconds).
pub const LABEL_STARTED_AT: &str = "cairn.started-at";
/// Label: the signal (a number) that stops the task, when the service set `stop_signal`.
pub const LABEL_STOP_SIGNAL: &str = "cairn.stop-signal";
/// Label: milliseconds between the stop signal and SIGKILL, when the service set
/// `stop_grace_period`.
pub const LABEL_STOP_GRACE_MS: &str = "cairn.stop-grace-ms";
/// Prefix of the labels that are the agent's own; a service's `labels` may not use it.
pub const AGENT_LABEL_PREFIX: &str = "cairn.";

/// SIGTERM: what stops a task whose service did not say.
pub const SIGTERM: u32 = 15;
/// Largest signal number (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Errors creating, running or removing containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The OCI spec cannot be built.
    #[error("cannot build the container spec: {reason}")]
    Spec {
        /// Why.
        reason: String,
    },
    /// A file or directory under the data dir could not be prepared.
    #[error("cannot prepare {path}: {source}; check that the data dir is writable and has space")]
    Io {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A secret the service needs has no value.
    #[error("secret {name} of app {app} has no value; central must provide it")]
    MissingSecret {
        /// App.
        app: String,
        /// Secret name.
        name: String,
    },
    /// A secret cannot be put into the environment as `x-cairn-secret-env` asks. Names the
    /// secret and the variable, never the value.
    #[error("secret {secret} of app {app} cannot be variable {variable} of service {service}: its value {problem}; set a text value for it at central (`cairnctl secret update`), or have the service read the secret from its file and drop {variable} from `x-cairn-secret-env`")]
    SecretEnv {
        /// App.
        app: String,
        /// Service.
        service: String,
        /// The variable.
        variable: String,
        /// Secret name.
        secret: String,
        /// What is wrong with the value.
        problem: SecretEnvProblem,
    },
    /// The `x-cairn-secret-env` variables of a service are too large together.
    #[error("the x-cairn-secret-env variables of service {service} of app {app} add up to {bytes} bytes; at most {max} fit beside a process's own environment, so have the service read the larger secrets from their files", max = MAX_SECRET_ENV_BYTES)]
    SecretEnvTooLarge {
        /// App.
        app: String,
        /// Service.
        service: String,
        /// Bytes of `NAME=value` together.
        bytes: usize,
    },
    /// The stored spec of a container is unreadable.
    #[error("container {id} has no readable OCI spec: {reason}; delete and re-create it")]
    BadRecord {
        /// Container id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The image's root file system cannot be looked into (to read its user database).
    #[error("cannot look into image {image}: {reason}; pull the image again, and check that the agent runs as root with CAP_SYS_ADMIN")]
    ImageRootfs {
        /// Image name.
        image: String,
        /// Why.
        reason: String,
    },
    /// A file of the image cannot be used.
    #[error("{path} of image {image} cannot be used: {reason}; fix the image")]
    ImageFile {
        /// Image name.
        image: String,
        /// Path inside the image.
        path: String,
        /// Why.
        reason: String,
    },
    /// The user the service runs as cannot be resolved in its image.
    #[error("cannot run image {image} as user {user:?}: {source}")]
    User {
        /// Image name.
        image: String,
        /// `user:` of the service, or the image's `USER`.
        user: String,
        /// Why.
        source: UserError,
    },
    /// A host device cannot be given to the container.
    #[error("cannot give host device {path} to the container: {reason}")]
    Device {
        /// Host path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An exec did not finish in time.
    #[error("exec in {id} did not finish within {timeout:?}")]
    ExecTimeout {
        /// Container id.
        id: String,
        /// Timeout.
        timeout: Duration,
    },
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the runtime keeps app data and how it runs tasks.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Root of app data (volumes, logs): `<data_dir>/apps/<app>/...`. On a device this is on
    /// the encrypted data partition. Secret and config files are not: they go under the run dir
    /// ([`RuntimeConfig::app_files_dir`]).
    pub data_dir: PathBuf,
    /// runc state root (`None` = the shim's default `/run/containerd/runc`).
    pub runc_root: Option<PathBuf>,
    /// cgroup parent of all containers (cgroupfs path).
    pub cgroup_parent: String,
    /// Where the cgroup file systems are mounted ([`crate::cgroup::CGROUP_ROOT`]).
    pub cgroup_root: PathBuf,
    /// Time between the stop signal and SIGKILL when stopping a container whose service did not
    /// set `stop_grace_period`.
    pub stop_grace: Duration,
    /// Most bytes of a log file (unless the service's `logging` says otherwise); the file is
    /// rotated before it would grow larger.
    pub log_max_bytes: u64,
    /// Rotated log files kept (`<service>.log.1` ... `.N`; unless the service's `logging` says
    /// otherwise).
    pub log_keep: usize,
    /// Most bytes the log files of one service may hold after a rotation (file size times
    /// files): a service's `logging` limits are cut down to fit (see
    /// [`RuntimeConfig::log_rotation`]), so no app can fill the data partition with its logs.
    pub log_max_service_bytes: u64,
    /// Memory and CPU limits of a service whose Compose file sets none
    /// (`deploy.resources.limits`); `None` fields leave it unlimited under the apps' ceiling.
    pub default_limits: ResourceLimits,
    /// Benchmarks only: build containers without the confinement (seccomp, masked paths, pids
    /// limit, OOM order, default limits), as the baseline the confined start is compared with.
    /// No configuration file reaches it; the agent never sets it.
    pub unconfined_for_benchmark: bool,
    /// The program containerd's shim runs as each task's log writer, as
    /// `<log_writer> write-log <spec>` (see `logs.rs`): the agent's own binary on a device.
    pub log_writer: PathBuf,
    /// App networks (subnet pool, CNI plugins, namespace and lease dirs).
    pub network: NetworkConfig,
}

impl RuntimeConfig {
    /// Defaults for `data_dir`: cgroup parent `/cairn`, 10 s stop grace, logs rotated at 10 MiB
    /// keeping 3, at most 100 MiB of logs per service, network defaults of
    /// [`NetworkConfig::new`] with subnet allocations in `<data_dir>/network`.
    pub fn new(data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        let data_dir = data_dir.into();
        RuntimeConfig {
            network: NetworkConfig::new(data_dir.join("network")),
            data_dir,
            runc_root: None,
            cgroup_parent: "/cairn".into(),
            cgroup_root: crate::cgroup::CGROUP_ROOT.into(),
            stop_grace: Duration::from_secs(10),
            log_max_bytes: 10 << 20,
            log_keep: 3,
            log_max_service_bytes: 100 << 20,
            default_limits: ResourceLimits::default(),
            unconfined_for_benchmark: false,
            log_writer: DEFAULT_LOG_WRITER.into(),
        }
    }

    /// How the log of a service with `logging` limits `limits` is rotated: its `max_bytes` and
    /// `max_files` (the current file included) where set, this config's otherwise; a service
    /// gets at least [`MIN_LOG_BYTES`] per file and 1 to [`MAX_LOG_FILES`] files, and the file
    /// size is lowered until all files fit in [`RuntimeConfig::log_max_service_bytes`].
    pub fn log_rotation(&self, limits: &LogLimits) -> LogRotation {
        let files = limits
            .max_files
            .map_or(self.log_keep.saturating_add(1), |n| n as usize)
            .clamp(1, MAX_LOG_FILES);
        let budget = self.log_max_service_bytes / files as u64;
        let max_bytes = limits
            .max_bytes
            .map_or(self.log_max_bytes, |b| b.max(MIN_LOG_BYTES))
            .min(budget)
            .max(1);
        LogRotation {
            max_bytes,
            keep: files - 1,
        }
    }

    /// Directory of app `app`.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.data_dir.join("apps").join(app)
    }

    /// Directory of named volume `volume` of `app`.
    pub fn volume_dir(&self, app: &str, volume: &str) -> PathBuf {
        self.app_dir(app).join("volumes").join(volume)
    }

    /// The log of a service with `logging` limits `limits`: its file and rotation.
    pub fn service_log(&self, app: &str, service: &str, limits: &LogLimits) -> ServiceLog {
        ServiceLog {
            path: self.log_path(app, service),
            rotation: self.log_rotation(limits),
        }
    }

    /// Log file of a service (rotated copies get `.1`, `.2`, ...).
    pub fn log_path(&self, app: &str, service: &str) -> PathBuf {
        self.app_dir(app)
            .join("logs")
            .join(format!("{service}.log"))
    }

    /// Directory of the secret and config files of app `app`'s services: under the run dir
    /// ([`NetworkConfig::run_dir`], a tmpfs on a device), never on the data partition.
    pub fn app_files_dir(&self, app: &str) -> PathBuf {
        self.network.run_dir.join("apps").join(app)
    }

    /// Directory of the secret and config files of service `service` of `app`.
    pub fn service_files_dir(&self, app: &str, service: &str) -> PathBuf {
        self.app_files_dir(app).join(service).join("files")
    }

    /// Where the output of a service's last health check goes.
    pub fn health_output_path(&self, app: &str, service: &str) -> PathBuf {
        self.app_dir(app)
            .join("run")
            .join(service)
            .join("health.out")
    }

    fn hosts_path(&self, app: &str, service: &str) -> PathBuf {
        self.app_dir(app).join("run").join(service).join("hosts")
    }

    /// The file the apps' id ranges are kept in (on the data partition).
    pub fn userns_ranges_path(&self) -> PathBuf {
        self.data_dir.join("userns-ranges.json")
    }

    /// The hosts file shared by the services of an app that has a network.
    pub fn app_hosts_path(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("run").join("hosts")
    }
}

/// How a service's log is rotated (see [`RotatingLog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Most bytes of a file: it is rotated before a write would make it larger.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// How a container's task is stopped: its stop signal, then SIGKILL to every process after the
/// grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopWith {
    /// The stop signal.
    pub signal: u32,
    /// Time between the stop signal and SIGKILL.
    pub grace: Duration,
}

impl StopWith {
    /// What a container's labels say (recorded from its service when it was made); SIGTERM and
    /// `default_grace` for what they do not say, or say unreadably (a container made by an older
    /// agent has neither label).
    pub fn from_labels(labels: &HashMap<String, String>, default_grace: Duration) -> StopWith {
        let signal = labels
            .get(LABEL_STOP_SIGNAL)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|s| (1..=MAX_SIGNAL as u32).contains(s))
            .unwrap_or(SIGTERM);
        let grace = labels
            .get(LABEL_STOP_GRACE_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(default_grace, Duration::from_millis);
        StopWith { signal, grace }
    }
}

/// The labels recording a service's `stop_signal` and `stop_grace_period` (none for what it
/// does not set, so the agent's default applies).
fn stop_labels(spec: &ServiceSpec) -> Result<HashMap<String, String>, ContainerError> {
    let mut labels = HashMap::new();
    if let Some(signal) = spec.stop_signal {
        if !(1..=MAX_SIGNAL).contains(&signal) {
            return Err(ContainerError::Spec {
                reason: format!("stop_signal {signal} is not a signal (1 to {MAX_SIGNAL})"),
            });
        }
        labels.insert(LABEL_STOP_SIGNAL.to_string(), signal.to_string());
    }
    if let Some(grace) = spec.stop_grace_period {
        labels.insert(
            LABEL_STOP_GRACE_MS.to_string(),
            grace.as_millis().to_string(),
        );
    }
    Ok(labels)
}

/// The labels of a new container: the service's `labels`, its stop settings, then `agent`'s
/// (spec hash, ...), the app and the service. A service label in the agent's `cairn.` space is
/// refused (the Compose parser refuses it too), so none can pass for the agent's.
/// Prefix of a service's own `labels` on its containerd container (`cairn.label/com.example.role`).
pub const LABEL_SERVICE_LABEL_PREFIX: &str = "cairn.label/";

fn container_labels(new: &NewContainer<'_>) -> Result<HashMap<String, String>, ContainerError> {
    let mut labels = HashMap::new();
    for (key, value) in &new.spec.labels {
        if key.starts_with(AGENT_LABEL_PREFIX) {
            return Err(ContainerError::Spec {
                reason: format!(
                    "label {key:?}: labels starting {AGENT_LABEL_PREFIX:?} are the agent's own; rename it"
                ),
            });
        }
        // Under the agent's prefix: containerd itself acts on some labels (its restart monitor
        // runs `containerd.io/restart.loguri` as a program), so a service's own never reach it
        // under their own names.
        labels.insert(format!("{LABEL_SERVICE_LABEL_PREFIX}{key}"), value.clone());
    }
    labels.extend(stop_labels(new.spec)?);
    labels.extend(new.labels.clone());
    labels.insert(LABEL_APP.into(), new.app.into());
    labels.insert(LABEL_SERVICE.into(), new.service.into());
    Ok(labels)
}

/// The container id of a service: `<app>_<service>` (app names have no `_`).
pub fn container_id(app: &str, service: &str) -> String {
    format!("{app}_{service}")
}

/// What to create a service container from.
pub struct NewContainer<'a> {
    /// App name.
    pub app: &'a str,
    /// Service name.
    pub service: &'a str,
    /// The service spec.
    pub spec: &'a ServiceSpec,
    /// Its image (present and unpacked).
    pub image: &'a ImageInfo,
    /// Extra labels (spec hash, ...); app and service labels are added.
    pub labels: HashMap<String, String>,
    /// Secret values of the app by name.
    pub secrets: &'a BTreeMap<String, Vec<u8>>,
    /// Config texts of the app by name ([`cairn_compose::AppSpec::configs`]).
    pub configs: &'a BTreeMap<String, String>,
    /// The named network namespace to join (services not in `network_mode: host`); `None`
    /// gives the container a fresh namespace with only loopback.
    pub netns: Option<PathBuf>,
    /// A hosts file (kept up to date by the caller) to mount as `/etc/hosts`; `None` writes one
    /// naming only localhost and the service.
    pub hosts_file: Option<PathBuf>,
    /// The app's user namespace (`None`: the host's ids). Its network namespaces must have been
    /// made inside it.
    pub userns: Option<AppUserns>,
}

/// A container as observed in containerd.
#[derive(Debug, Clone)]
pub struct ObservedContainer {
    /// Container id.
    pub id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Image name.
    pub image: String,
    /// The task, if one exists.
    pub task: Option<TaskState>,
}

impl ObservedContainer {
    /// A label's value, or "".
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Give volume `dir` to the app's id range, walked whole each time a container of the app is
/// made: files a container with the host's ids wrote meanwhile (one not yet replaced after an
/// update, or while the app had devices) move too, and a walk cut short by a power cut is
/// finished. Files already in the range cost a `stat` each.
fn give_volume(dir: &Path, range: IdRange) -> Result<(), ContainerError> {
    let shifted = userns::shift_tree(dir, range).map_err(|e| ContainerError::Spec {
        reason: e.to_string(),
    })?;
    info!(volume = %dir.display(), entries = shifted.entries, changed = shifted.changed, "volume moved into the app's id range");
    Ok(())
}

/// The options of the file system `path` is on that a bind mount of it must keep: in a user
/// namespace the kernel locks them (`/data` is `nodev,nosuid,noatime`), and runc 1.1.5's
/// read-only remount, which leaves out what it is not told, then fails with EPERM. Outside one
/// they keep the bind mount as strict as its source.
fn source_flags(path: &Path) -> Vec<&'static str> {
    use rustix::fs::StatVfsMountFlags as F;
    let Ok(stat) = rustix::fs::statvfs(path) else {
        return Vec::new();
    };
    [
        (F::NOSUID, "nosuid"),
        (F::NODEV, "nodev"),
        (F::NOEXEC, "noexec"),
        (F::NOATIME, "noatime"),
        (F::NODIRATIME, "nodiratime"),
        (F::RELATIME, "relatime"),
    ]
    .into_iter()
    .filter(|(flag, _)| stat.f_flag.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Prepare volume dirs, secret and config files, `/etc/hosts`; return the bind mounts.
#[tracing::instrument(skip_all, fields(app = new.app, service = new.service))]
fn prepare_mounts(
    cfg: &RuntimeConfig,
    new: &NewContainer<'_>,
) -> Result<Vec<oci::BindMount>, ContainerError> {
    let mut mounts = Vec::new();
    for v in &new.spec.volumes {
        let dir = cfg.volume_dir(new.app, &v.volume);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if let Some(userns) = &new.userns {
            give_volume(&dir, userns.range)?;
        }
        mounts.push(oci::BindMount {
            source: dir,
            target: v.target.clone(),
            read_only: v.read_only,
            kept_flags: Vec::new(),
        });
    }
    let files = ServiceFiles {
        app: new.app,
        service: new.service,
        spec: new.spec,
        secrets: new.secrets,
        configs: new.configs,
        range: new.userns.as_ref().map(|u| u.range),
    };
    for file in write_service_files(cfg, &files)? {
        mounts.push(oci::BindMount {
            source: file.path,
            target: file.target,
            read_only: true,
            kept_flags: Vec::new(),
        });
    }
    let hosts = match &new.hosts_file {
        Some(path) if new.spec.extra_hosts.is_empty() => path.clone(),
        app_hosts => {
            write_service_hosts(cfg, new.app, new.service, new.spec, app_hosts.as_deref())?
        }
    };
    mounts.push(oci::BindMount {
        source: hosts,
        target: "/etc/hosts".into(),
        read_only: true,
        kept_flags: Vec::new(),
    });
    if Path::new("/etc/resolv.conf").exists() {
        mounts.push(oci::BindMount {
            source: "/etc/resolv.conf".into(),
            target: "/etc/resolv.conf".into(),
            read_only: true,
            kept_flags: Vec::new(),
        });
    }
    for m in &mut mounts {
        m.kept_flags = source_flags(&m.source);
    }
    let log = cfg.log_path(new.app, new.service);
    let dir = log.parent().unwrap_or(&cfg.data_dir);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    Ok(mounts)
}

/// Write the hosts file of service `service` of `app` that the app's shared one cannot be:
/// `app_hosts` (the app's, kept up to date by the caller, who calls this again after each
/// change), or without one localhost and the service's name; then the service's `extra_hosts`.
/// Rewritten in place (bind mounts pin the inode). Returns its path.
///
/// # Errors
/// When the app's file cannot be read or this one written.
pub fn write_service_hosts(
    cfg: &RuntimeConfig,
    app: &str,
    service: &str,
    spec: &ServiceSpec,
    app_hosts: Option<&Path>,
) -> Result<PathBuf, ContainerError> {
    let base = match app_hosts {
        Some(path) => std::fs::read_to_string(path).map_err(io_err(path))?,
        None => {
            format!("127.0.0.1\tlocalhost {service}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        }
    };
    let text = crate::network::hosts::with_extra_hosts(&base, service, &spec.extra_hosts);
    let path = cfg.hosts_path(app, service);
    crate::network::hosts::write_in_place(&path, &text).map_err(io_err(&path))?;
    Ok(path)
}

/// The user `new`'s process runs as: `user:` of the service, else the image's `USER`, resolved
/// in the image's `/etc/passwd` and `/etc/group` (read only when needed: not for `UID:GID`).
async fn resolve_user(
    ctr: &Containerd,
    cfg: &RuntimeConfig,
    new: &NewContainer<'_>,
) -> Result<users::ResolvedUser, ContainerError> {
    let spec = new
        .spec
        .user
        .as_deref()
        .or(new.image.config.user.as_deref())
        .unwrap_or("")
        .trim();
    let (passwd, group) = if users::needs_user_db(spec) {
        let scratch = cfg.app_dir(new.app).join("run");
        let files = [UserDb::Passwd.path(), UserDb::Group.path()];
        let mut read =
            rootfs::read_image_files(ctr, new.image, &scratch, &files, users::MAX_USER_DB_BYTES)
                .await?
                .into_iter()
                .map(|f| f.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()));
        (read.next().flatten(), read.next().flatten())
    } else {
        (None, None)
    };
    users::resolve(spec, passwd.as_deref(), group.as_deref()).map_err(|source| {
        ContainerError::User {
            image: new.image.name.clone(),
            user: spec.to_string(),
            source,
        }
    })
}

/// Create the container record and its writable snapshot (on the image's top layer). The task is
/// not started; see [`start_task`].
///
/// # Errors
/// Spec, data-dir and containerd errors (`AlreadyExists` when the id is taken).
#[tracing::instrument(skip(ctr, cfg, new), fields(app = new.app, service = new.service))]
pub async fn create_container(
    ctr: &Containerd,
    cfg: &RuntimeConfig,
    new: &NewContainer<'_>,
) -> Result<String, ContainerError> {
    let id = container_id(new.app, new.service);
    // First: a secret that cannot be a variable fails the service before anything is made.
    let secret_env = secret_env::SecretEnv::resolve(new.app, new.service, new.spec, new.secrets)?;
    let labels = container_labels(new)?;
    let devices = devices::host_devices(&new.spec.devices)?;
    let user = resolve_user(ctr, cfg, new).await?;
    let mounts = prepare_mounts(cfg, new)?;
    let mut svc = new.spec.clone();
    if !cfg.unconfined_for_benchmark {
        let limits = &mut svc.limits;
        limits.memory_bytes = limits.memory_bytes.or(cfg.default_limits.memory_bytes);
        limits.cpu_millis = limits.cpu_millis.or(cfg.default_limits.cpu_millis);
    }
    let mut spec = oci::build_spec(&oci::SpecInput {
        id: &id,
        service: new.service,
        svc: &svc,
        image: &new.image.config,
        user: &user,
        mounts,
        devices: &devices,
        cgroup_parent: &cfg.cgroup_parent,
        netns: new.netns.as_deref(),
        userns: new.userns.as_ref(),
        secret_env: &secret_env,
    })?;
    if cfg.unconfined_for_benchmark {
        oci::without_confinement(&mut spec);
    }
    let spec_json = serde_json::to_vec(&spec).map_err(|e| ContainerError::Spec {
        reason: e.to_string(),
    })?;
    let container = Container {
        id: id.clone(),
        labels,
        image: new.image.name.clone(),
        runtime: Some(Runtime {
            name: RUNC_RUNTIME.into(),
            options: task::runc_options(cfg),
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE_URL.into(),
            value: spec_json,
        }),
        snapshotter: crate::containerd::SNAPSHOTTER.into(),
        snapshot_key: id.clone(),
        ..Default::default()
    };
    let req = ctr.request(CreateContainerRequest {
        container: Some(container),
    });
    ctr.containers()
        .create(req)
        .await
        .map_err(call("containers.create"))?;
    // A snapshot left by an interrupted delete is replaced.
    if ctr.stat_snapshot(&id).await?.is_some() {
        ctr.remove_snapshot(&id).await?;
    }
    if let Err(e) = prepare_container_snapshot(ctr, cfg, new, &id).await {
        let _ = delete_container_record(ctr, &id).await;
        return Err(e);
    }
    info!(%id, image = %new.image.name, "container created");
    Ok(id)
}

/// The container's writable snapshot `id`: on the image's top layer, or in a user namespace on
/// the image's copy whose files belong to the app's range (see `rootfs::remapped_snapshot`).
async fn prepare_container_snapshot(
    ctr: &Containerd,
    cfg: &RuntimeConfig,
    new: &NewContainer<'_>,
    id: &str,
) -> Result<(), ContainerError> {
    let Some(userns) = &new.userns else {
        ctr.prepare_snapshot(id, &new.image.chain_id, HashMap::new(), None)
            .await?;
        return Ok(());
    };
    let lease = format!("cairn-create-{:016x}", rand::random::<u64>());
    ctr.create_lease(&lease, rootfs::REMAP_LEASE_TTL, HashMap::new())
        .await?;
    let scratch = cfg.app_dir(new.app).join("run");
    let result = async {
        let parent =
            rootfs::remapped_snapshot(ctr, new.image, userns.range, &scratch, &lease).await?;
        match ctr
            .prepare_snapshot(id, &parent, HashMap::new(), None)
            .await
        {
            // An existing copy no container used any more was collected in between: make it
            // again (under the lease this time).
            Err(e) if e.is_not_found() => {
                let parent =
                    rootfs::remapped_snapshot(ctr, new.image, userns.range, &scratch, &lease)
                        .await?;
                ctr.prepare_snapshot(id, &parent, HashMap::new(), None)
                    .await?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = ctr.delete_lease(&lease).await {
        tracing::warn!(%lease, error = %e, "cannot delete a lease; it expires by itself");
    }
    result
}

async fn delete_container_record(ctr: &Containerd, id: &str) -> Result<(), ContainerdError> {
    match ctr
        .containers()
        .delete(ctr.request(DeleteContainerRequest { id: id.into() }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call("containers.delete")(s)),
    }
}

/// Stop the task of container `id` the way its labels say (see [`StopWith::from_labels`];
/// `grace` when they do not say), then delete the task. Returns the state before stopping
/// (`None` when there was no task).
///
/// # Errors
/// When a containerd call fails.
#[tracing::instrument(skip(ctr))]
pub async fn stop_task(
    ctr: &Containerd,
    id: &str,
    grace: Duration,
) -> Result<Option<TaskState>, ContainerError> {
    let labels = match ctr
        .containers()
        .get(ctr.request(GetContainerRequest { id: id.into() }))
        .await
    {
        Ok(resp) => resp
            .into_inner()
            .container
            .map(|c| c.labels)
            .unwrap_or_default(),
        Err(s) => {
            debug!(%id, status = %s.message(), "no container labels; stopping with the defaults");
            HashMap::new()
        }
    };
    task::stop_task_with(ctr, id, StopWith::from_labels(&labels, grace)).await
}

/// Stop and delete the task (see [`stop_task`]; `grace` unless the container says), delete the
/// container record and its snapshot. Idempotent.
///
/// # Errors
/// When a containerd call fails.
#[tracing::instrument(skip(ctr))]
pub async fn remove_container(
    ctr: &Containerd,
    id: &str,
    grace: Duration,
) -> Result<(), ContainerError> {
    stop_task(ctr, id, grace).await?;
    delete_container_record(ctr, id).await?;
    ctr.remove_snapshot(id).await?;
    info!(%id, "container removed");
    Ok(())
}

/// Set labels on a container (others are kept).
///
/// # Errors
/// When the call fails.
#[tracing::instrument(skip(ctr))]
pub async fn set_container_labels(
    ctr: &Containerd,
    id: &str,
    labels: HashMap<String, String>,
) -> Result<(), ContainerError> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let req = ctr.request(UpdateContainerRequest {
        container: Some(Container {
            id: id.into(),
            labels,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    });
    ctr.containers()
        .update(req)
        .await
        .map_err(call("containers.update"))?;
    Ok(())
}

/// The OCI spec stored in container `id`.
pub(crate) async fn container_spec(
    ctr: &Containerd,
    id: &str,
) -> Result<oci_spec::runtime::Spec, ContainerError> {
    let resp = ctr
        .containers()
        .get(ctr.request(GetContainerRequest { id: id.into() }))
        .await
        .map_err(call("containers.get"))?;
    let spec = resp
        .into_inner()
        .container
        .and_then(|c| c.spec)
        .ok_or_else(|| ContainerError::BadRecord {
            id: id.into(),
            reason: "no spec".into(),
        })?;
    serde_json::from_slice(&spec.value).map_err(|e| ContainerError::BadRecord {
        id: id.into(),
        reason: spec_json_error(&e),
    })
}

/// What is wrong with a stored spec, without serde_json's message: that may quote a string of
/// the spec, and the environment there can hold `x-cairn-secret-env` values.
fn spec_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not valid JSON",
        Category::Data => "JSON that is not an OCI runtime spec",
        Category::Eof => "cut short",
    };
    format!("it is {what} (line {}, column {})", e.line(), e.column())
}

/// Containers carrying label `cairn.app` (all apps), with their tasks.
///
/// # Errors
/// When a containerd call fails.
#[tracing::instrument(skip(ctr))]
pub async fn list_containers(ctr: &Containerd) -> Result<Vec<ObservedContainer>, ContainerError> {
    let filter = format!("labels.\"{LABEL_APP}\"");
    let resp = ctr
        .containers()
        .list(ctr.request(ListContainersRequest {
            filters: vec![filter],
        }))
        .await
        .map_err(call("containers.list"))?;
    let tasks = task::list_tasks(ctr).await?;
    Ok(resp
        .into_inner()
        .containers
        .into_iter()
        .map(|c| ObservedContainer {
            task: tasks.get(&c.id).cloned(),
            id: c.id,
            labels: c.labels,
            image: c.image,
        })
        .collect())
}

/// Longest grace any container gets at shutdown ([`stop_all_tasks`]).
pub const SHUTDOWN_GRACE_CAP: Duration = Duration::from_secs(45);

/// Stop the task of every app container at once (each with its stop signal, SIGKILL after its
/// grace period, `grace` when it does not say, at most [`SHUTDOWN_GRACE_CAP`]), keeping the containers. For a shutdown: the
/// system would otherwise wait for processes that ignore SIGTERM (a container's PID 1 without a
/// handler does), and then kill them without a grace. Returns how many tasks were stopped.
///
/// # Errors
/// When listing fails, or the first stop that failed (after every stop was tried).
#[tracing::instrument(skip(ctr))]
pub async fn stop_all_tasks(ctr: &Containerd, grace: Duration) -> Result<usize, ContainerError> {
    let running: Vec<(String, StopWith)> = list_containers(ctr)
        .await?
        .into_iter()
        .filter(|c| {
            c.task
                .as_ref()
                .is_some_and(|t| t.status != TaskStatus::Stopped)
        })
        .map(|c| {
            let mut how = StopWith::from_labels(&c.labels, grace);
            // Within cairn-apps-stop.service's 60 s, so SIGKILL comes from here, not systemd.
            how.grace = how.grace.min(SHUTDOWN_GRACE_CAP);
            (c.id, how)
        })
        .collect();
    let stops = running
        .iter()
        .map(|(id, how)| task::stop_task_with(ctr, id, *how));
    let results = futures::future::join_all(stops).await;
    let stopped = results.iter().filter(|r| r.is_ok()).count();
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e),
        None => Ok(stopped),
    }
}

/// Milliseconds since the Unix epoch of `t`.
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_compose::AppSpec;

    #[test]
    fn an_unreadable_stored_spec_is_described_without_quoting_it() {
        let stored = br#"{"ociVersion": "1.0.2", "process": {"env": ["TOKEN=hunter2"], "terminal": "hunter2"}}"#;
        let e = serde_json::from_slice::<oci_spec::runtime::Spec>(stored).unwrap_err();
        assert!(e.to_string().contains("hunter2"), "serde_json quotes: {e}");
        let reason = spec_json_error(&e);
        assert!(!reason.contains("hunter2"), "{reason}");
        assert!(
            reason.starts_with("it is JSON that is not an OCI runtime spec (line 1"),
            "{reason}"
        );
        let e = serde_json::from_slice::<oci_spec::runtime::Spec>(b"{\"process\": ").unwrap_err();
        assert!(spec_json_error(&e).starts_with("it is cut short"), "{e}");
    }

    fn service() -> ServiceSpec {
        AppSpec::parse("c.yml", "app", "services: {s: {image: x}}")
            .unwrap()
            .services
            .remove("s")
            .unwrap()
    }

    fn image() -> ImageInfo {
        ImageInfo {
            name: "example.com/x:1".into(),
            digest: String::new(),
            manifest: String::new(),
            chain_id: String::new(),
            config: Default::default(),
        }
    }

    fn labels_of(spec: &ServiceSpec) -> Result<HashMap<String, String>, ContainerError> {
        let secrets = BTreeMap::new();
        let image = image();
        container_labels(&NewContainer {
            app: "app",
            service: "s",
            spec,
            image: &image,
            labels: HashMap::from([(LABEL_SPEC_HASH.to_string(), "h".to_string())]),
            secrets: &secrets,
            configs: &BTreeMap::new(),
            netns: None,
            hosts_file: None,
            userns: None,
        })
    }

    #[test]
    fn service_labels_and_stop_settings_go_under_the_agents() {
        let mut spec = service();
        spec.labels.insert("com.example.team".into(), "edge".into());
        spec.stop_signal = Some(10);
        spec.stop_grace_period = Some(Duration::from_millis(1500));
        let labels = labels_of(&spec).unwrap();
        assert_eq!(labels["cairn.label/com.example.team"], "edge");
        assert!(!labels.contains_key("com.example.team"));
        // containerd's restart monitor would run this as a program; here it is only a label.
        spec.labels.insert(
            "containerd.io/restart.loguri".into(),
            "binary:///bin/sh?-c=id".into(),
        );
        let labels = labels_of(&spec).unwrap();
        assert!(
            !labels.keys().any(|k| k.starts_with("containerd.io/")),
            "{labels:?}"
        );
        assert_eq!(labels[LABEL_STOP_SIGNAL], "10");
        assert_eq!(labels[LABEL_STOP_GRACE_MS], "1500");
        assert_eq!(labels[LABEL_SPEC_HASH], "h");
        assert_eq!(labels[LABEL_APP], "app");
        assert_eq!(
            StopWith::from_labels(&labels, Duration::from_secs(10)),
            StopWith {
                signal: 10,
                grace: Duration::from_millis(1500)
            }
        );

        spec.labels.insert(LABEL_APP.into(), "other".into());
        let err = labels_of(&spec).unwrap_err().to_string();
        assert!(err.contains("are the agent's own"), "{err}");
        spec.labels.remove(LABEL_APP);
        spec.stop_signal = Some(65);
        assert!(labels_of(&spec)
            .unwrap_err()
            .to_string()
            .contains("not a signal"));
    }

    #[test]
    fn stopping_falls_back_to_the_defaults() {
        let default = StopWith {
            signal: SIGTERM,
            grace: Duration::from_secs(7),
        };
        let labels = labels_of(&service()).unwrap();
        assert!(
            !labels.contains_key(LABEL_STOP_SIGNAL) && !labels.contains_key(LABEL_STOP_GRACE_MS)
        );
        assert_eq!(StopWith::from_labels(&labels, default.grace), default);
        let unreadable = HashMap::from([
            (LABEL_STOP_SIGNAL.to_string(), "SIGUSR1".to_string()),
            (LABEL_STOP_GRACE_MS.to_string(), "-1".to_string()),
        ]);
        assert_eq!(StopWith::from_labels(&unreadable, default.grace), default);
        let out_of_range = HashMap::from([(LABEL_STOP_SIGNAL.to_string(), "0".to_string())]);
        assert_eq!(StopWith::from_labels(&out_of_range, default.grace), default);
    }

    #[test]
    fn log_limits_of_a_service_are_bounded_by_the_agents() {
        let cfg = RuntimeConfig::new("/data");
        let rotation = |max_bytes, max_files| {
            cfg.log_rotation(&LogLimits {
                max_bytes,
                max_files,
            })
        };
        assert_eq!(
            rotation(None, None),
            LogRotation {
                max_bytes: 10 << 20,
                keep: 3
            }
        );
        assert_eq!(
            rotation(Some(1 << 20), Some(5)),
            LogRotation {
                max_bytes: 1 << 20,
                keep: 4
            }
        );
        // 1 GiB x 3 does not fit in 100 MiB: the files get smaller.
        let big = rotation(Some(1 << 30), Some(3));
        assert_eq!(big.keep, 2);
        assert!(big.max_bytes * 3 <= cfg.log_max_service_bytes, "{big:?}");
        // At most MAX_LOG_FILES files, at least MIN_LOG_BYTES each, at least one file.
        let many = rotation(Some(1), Some(1000));
        assert_eq!(many.keep, MAX_LOG_FILES - 1);
        assert_eq!(many.max_bytes, MIN_LOG_BYTES);
        assert_eq!(rotation(None, Some(0)).keep, 0);
        // The agent's own setting is trusted (tests use tiny ones).
        let mut tiny = RuntimeConfig::new("/data");
        tiny.log_max_bytes = 16;
        assert_eq!(tiny.log_rotation(&LogLimits::default()).max_bytes, 16);
    }
}
