//! OCI runtime specs for service containers and their health-check execs (oci-spec).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cairn_compose::{NetworkMode, ServiceSpec, DEFAULT_CAPABILITIES};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, Process, Spec, UserBuilder,
};

use super::secret_env::SecretEnv;
use super::users::ResolvedUser;
use super::ContainerError;
use crate::image::ContainerConfig;
use crate::userns::{AppUserns, IDS_PER_APP};

/// A host file or directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// The source file system's `nosuid`, `nodev`, `noexec` and atime options (see
    /// `source_flags` in `mod.rs`), kept on the bind mount.
    pub kept_flags: Vec<&'static str>,
}

/// A host character device given to the container (see `devices.rs`; block devices never are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostDevice {
    /// Path of the node inside the container.
    pub container_path: String,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the node.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup access: a subset of `rwm`.
    pub permissions: String,
}

/// Everything the OCI spec of one service container is made from.
pub(crate) struct SpecInput<'a> {
    pub id: &'a str,
    pub service: &'a str,
    pub svc: &'a ServiceSpec,
    pub image: &'a ContainerConfig,
    /// The user the process runs as (`svc.user` or the image's, resolved in the image).
    pub user: &'a ResolvedUser,
    pub mounts: Vec<BindMount>,
    /// The host devices of `svc.devices`, as found on the host.
    pub devices: &'a [HostDevice],
    pub cgroup_parent: &'a str,
    /// Named network namespace to join (ignored in `network_mode: host`).
    pub netns: Option<&'a Path>,
    /// The app's user namespace to join (`None`: the host's ids, for an app given devices).
    pub userns: Option<&'a AppUserns>,
    /// The values of the service's `x-cairn-secret-env` variables.
    pub secret_env: &'a SecretEnv,
}

/// The capability named `name` (`CAP_NET_ADMIN`; `NET_ADMIN` and lower case are accepted too).
fn capability(name: &str, field: &str) -> Result<Capability, ContainerError> {
    let upper = name.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(short).map_err(|_| ContainerError::Spec {
        reason: format!("{field}: unknown capability {name:?}; use names like CAP_NET_ADMIN (see capabilities(7))"),
    })
}

fn capabilities<'n>(
    names: impl IntoIterator<Item = &'n str>,
    field: &str,
) -> Result<HashSet<Capability>, ContainerError> {
    names.into_iter().map(|n| capability(n, field)).collect()
}

/// Docker's default capability set ([`cairn_compose::DEFAULT_CAPABILITIES`]).
pub(crate) fn default_capabilities() -> Result<HashSet<Capability>, ContainerError> {
    capabilities(DEFAULT_CAPABILITIES.iter().copied(), "the default set")
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capability sets of a container process.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CapabilitySets {
    /// The most the process (and anything it runs) can ever hold; the seccomp profile follows it.
    pub bounding: HashSet<Capability>,
    /// Effective and permitted.
    pub held: HashSet<Capability>,
    /// Inheritable and ambient: kept across `execve` by a non-root process.
    pub ambient: HashSet<Capability>,
}

/// The capabilities of a service running as `uid`.
///
/// The bounding set is Docker's (`TweakCapabilities`): the default set without `cap_drop`, plus
/// `cap_add` (an added capability wins over a dropped one); `cap_drop: [ALL]` leaves only
/// `cap_add`. The parser's refusals are asked again here, so a spec that did not come through
/// it still cannot get `cap_add: [ALL]` or a capability that is never granted.
///
/// Root holds its whole bounding set. A non-root user holds none of the default set (as with
/// Docker, where execve gives a non-root process nothing), but does hold what `cap_add` names:
/// those go into its permitted, effective, inheritable and ambient sets. Docker puts them in
/// the bounding set only, which lets a binary with file capabilities use them; Cairn sets
/// `no_new_privileges`, under which file capabilities do nothing, so without ambient
/// capabilities `cap_add` would be useless to a non-root service (e.g. `CAP_NET_BIND_SERVICE`
/// for a web server on port 80 running as `www-data`).
pub(crate) fn capability_sets(
    svc: &ServiceSpec,
    uid: u32,
) -> Result<CapabilitySets, ContainerError> {
    if svc.cap_add.iter().any(|c| is_all(c)) {
        return Err(ContainerError::Spec {
            reason: "cap_add: ALL is never granted; add the capabilities the service needs by name"
                .into(),
        });
    }
    let drop_all = svc.cap_drop.iter().any(|c| is_all(c));
    let named = |set: &BTreeSet<String>, field| {
        capabilities(set.iter().map(String::as_str).filter(|c| !is_all(c)), field)
    };
    let dropped = named(&svc.cap_drop, "cap_drop")?;
    let added = named(&svc.cap_add, "cap_add")?;
    if let Some((cap, reason)) = added.iter().find_map(|c| {
        let name = format!("CAP_{c}");
        cairn_compose::refused_capability(&name).map(|r| (name, r))
    }) {
        return Err(ContainerError::Spec {
            reason: format!("cap_add: {cap} is never granted on Cairn: it {reason}"),
        });
    }
    let bounding: HashSet<Capability> = if drop_all {
        added.clone()
    } else {
        default_capabilities()?
            .difference(&dropped)
            .chain(added.iter())
            .copied()
            .collect()
    };
    let (held, ambient) = if uid == 0 {
        (bounding.clone(), HashSet::new())
    } else {
        let held: HashSet<Capability> = added.intersection(&bounding).copied().collect();
        (held.clone(), held)
    };
    Ok(CapabilitySets {
        bounding,
        held,
        ambient,
    })
}

/// Join the app's user namespace: container ids 0 to 65535 are its host range. In the app's own
/// network namespaces (made inside the user namespace) runc mounts `/sys` as usual; a service on
/// the host's network may not mount a `/sys` of the host's network namespace from inside a user
/// namespace, so it gets the host's `/sys` read-only instead (it sees the host's network
/// anyway).
fn join_user_namespace(
    spec: &mut Spec,
    userns: &AppUserns,
    network: NetworkMode,
) -> Result<(), ContainerError> {
    let oci = |e: oci_spec::OciSpecError| ContainerError::Spec {
        reason: e.to_string(),
    };
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(userns.range.host_start)
        .size(IDS_PER_APP)
        .build()
        .map_err(oci)?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::User);
    namespaces.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .path(userns.path.clone())
            .build()
            .map_err(oci)?,
    );
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(vec![mapping]));
    linux.set_gid_mappings(Some(vec![mapping]));
    if network == NetworkMode::Host {
        let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
        for m in mounts.iter_mut() {
            if m.destination() == Path::new("/sys") && m.typ().as_deref() == Some("sysfs") {
                *m = MountBuilder::default()
                    .destination(PathBuf::from("/sys"))
                    .typ("bind")
                    .source(PathBuf::from("/sys"))
                    .options(
                        ["rbind", "nosuid", "noexec", "nodev", "ro"]
                            .map(String::from)
                            .to_vec(),
                    )
                    .build()
                    .map_err(oci)?;
            }
        }
    }
    Ok(())
}

/// Most processes (and threads) one service container may have: a fork bomb stops here.
pub(crate) const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// `oom_score_adj` of every app process: under memory pressure the kernel kills apps before
/// containerd, the agent and the rest of the system (which run at 0 or below).
pub(crate) const APP_OOM_SCORE_ADJ: i32 = 500;

/// Paths masked (an empty file or directory over them) in every container: Docker's list.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths mounted read-only in every container: Docker's list.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The argv Compose semantics give: `entrypoint` replaces the image's Entrypoint (and drops its
/// Cmd unless `command` is set); `command` replaces Cmd.
pub(crate) fn process_args(svc: &ServiceSpec, image: &ContainerConfig) -> Vec<String> {
    let entrypoint = svc
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&svc.command, &svc.entrypoint) {
        (Some(cmd), _) => cmd.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Image env, then the service's environment on top (same keys replaced), `PATH` defaulted,
/// then the `x-cairn-secret-env` variables with their secrets' values (`secret_env`). The
/// result holds secret values: it goes into the OCI spec and nowhere else (no log, no error).
pub(crate) fn process_env(
    svc: &ServiceSpec,
    image: &ContainerConfig,
    hostname: &str,
    secret_env: &SecretEnv,
) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if env.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    };
    set("PATH", DEFAULT_PATH.trim_start_matches("PATH="));
    set("HOSTNAME", hostname);
    for kv in image.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    for (k, v) in &svc.environment {
        set(k, v);
    }
    for (k, v) in secret_env.iter() {
        set(k, v);
    }
    order.iter().map(|k| format!("{k}={}", env[k])).collect()
}

fn oci(e: oci_spec::OciSpecError) -> ContainerError {
    ContainerError::Spec {
        reason: e.to_string(),
    }
}

/// The `RLIMIT_*` of a Compose `ulimits` name.
fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "as" => PosixRlimitType::RlimitAs,
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

/// `process.rlimits` of `ulimits`; `None` (the shim's limits, as Docker) when there are none.
fn rlimits(
    svc: &ServiceSpec,
) -> Result<Option<Vec<oci_spec::runtime::PosixRlimit>>, ContainerError> {
    if svc.ulimits.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (name, limit) in &svc.ulimits {
        let typ = rlimit_type(name).ok_or_else(|| ContainerError::Spec {
            reason: format!(
                "ulimits: unknown limit {name:?}; use one of as, core, cpu, data, fsize, locks, \
                 memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack"
            ),
        })?;
        if limit.soft > limit.hard {
            return Err(ContainerError::Spec {
                reason: format!(
                    "ulimits: {name} soft limit {} is above its hard limit {}",
                    limit.soft, limit.hard
                ),
            });
        }
        out.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(limit.soft)
                .hard(limit.hard)
                .build()
                .map_err(oci)?,
        );
    }
    Ok(Some(out))
}

/// `linux.sysctl`: only parameters of the container's own namespaces (IPC, and network outside
/// `network_mode: host`), checked again with the parser's rules since runc would otherwise
/// refuse them at start with a vaguer message.
fn sysctls(svc: &ServiceSpec) -> Result<Option<HashMap<String, String>>, ContainerError> {
    if svc.sysctls.is_empty() {
        return Ok(None);
    }
    let host_network = svc.network_mode == NetworkMode::Host;
    for (key, value) in &svc.sysctls {
        cairn_compose::check_sysctl(key, value, host_network).map_err(|e| {
            ContainerError::Spec {
                reason: format!("sysctls: {e}"),
            }
        })?;
    }
    Ok(Some(
        svc.sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ))
}

/// The `tmpfs` mounts: Docker's options for `--tmpfs` (nosuid, nodev, noexec) with the size and
/// the mode of the root.
fn tmpfs_mounts(svc: &ServiceSpec) -> Result<Vec<Mount>, ContainerError> {
    svc.tmpfs
        .iter()
        .map(|t| {
            if !t.target.starts_with('/') || t.target == "/" {
                return Err(ContainerError::Spec {
                    reason: format!("tmpfs: {:?} is not an absolute path below /", t.target),
                });
            }
            if t.mode > 0o7777 || t.size_bytes == 0 {
                return Err(ContainerError::Spec {
                    reason: format!(
                        "tmpfs {}: size {} and mode {:o} must be positive and at most 7777",
                        t.target, t.size_bytes, t.mode
                    ),
                });
            }
            MountBuilder::default()
                .destination(PathBuf::from(&t.target))
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "noexec".to_string(),
                    format!("size={}", t.size_bytes),
                    format!("mode={:o}", t.mode),
                ])
                .build()
                .map_err(oci)
        })
        .collect()
}

/// The default mounts (`/proc`, `/dev`, ...) except those a service mount replaces, then the
/// service's mounts with parents before children (a tmpfs on `/run` before the secrets in it).
fn all_mounts(defaults: Vec<Mount>, mut own: Vec<Mount>) -> Vec<Mount> {
    let own_targets: HashSet<PathBuf> = own.iter().map(|m| m.destination().clone()).collect();
    own.sort_by_key(|m| m.destination().components().count());
    defaults
        .into_iter()
        .filter(|m| !own_targets.contains(m.destination()))
        .chain(own)
        .collect()
}

/// Build the OCI runtime spec of a service container.
pub(crate) fn build_spec(input: &SpecInput<'_>) -> Result<Spec, ContainerError> {
    let args = process_args(input.svc, input.image);
    if args.is_empty() {
        return Err(ContainerError::Spec {
            reason: format!(
                "service {} has no command: the image has no Entrypoint/Cmd; set `command`",
                input.service
            ),
        });
    }
    let user = input.user;
    let mut spec = Spec::default();
    let hostname = input.svc.hostname.as_deref().unwrap_or(input.service);
    spec.set_hostname(Some(hostname.to_string()));
    // oci-spec's default root is read-only; Compose's is writable (the snapshot is per
    // container) unless the service says `read_only`.
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(input.svc.read_only));
    }

    let caps = capability_sets(input.svc, user.uid)?;
    let seccomp = super::seccomp::default_profile(&caps.bounding)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.bounding)
        .effective(caps.held.clone())
        .permitted(caps.held)
        .inheritable(caps.ambient.clone())
        .ambient(caps.ambient)
        .build()
        .map_err(oci)?;
    let process = spec.process_mut().get_or_insert_with(Process::default);
    process.set_args(Some(args));
    process.set_env(Some(process_env(
        input.svc,
        input.image,
        hostname,
        input.secret_env,
    )));
    process.set_cwd(
        input
            .svc
            .working_dir
            .clone()
            .or_else(|| input.image.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
            .into(),
    );
    process.set_user(
        UserBuilder::default()
            .uid(user.uid)
            .gid(user.gid)
            .additional_gids(user.additional_gids.clone())
            .build()
            .map_err(oci)?,
    );
    process.set_capabilities(Some(capabilities));
    // Said here, not left to oci-spec's default: no setuid program or file capability may
    // raise a service's privileges.
    process.set_no_new_privileges(Some(true));
    process.set_oom_score_adj(Some(APP_OOM_SCORE_ADJ));
    // Without `ulimits`, inherit the shim's limits (as Docker does) instead of oci-spec's fixed
    // 1024 open files.
    process.set_rlimits(rlimits(input.svc)?);

    let mut own = Vec::new();
    for m in &input.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        let mut options = vec!["rbind".to_string(), mode.to_string()];
        options.extend(m.kept_flags.iter().map(|f| f.to_string()));
        own.push(
            MountBuilder::default()
                .destination(PathBuf::from(&m.target))
                .typ("bind")
                .source(m.source.clone())
                .options(options)
                .build()
                .map_err(oci)?,
        );
    }
    own.extend(tmpfs_mounts(input.svc)?);
    let defaults = spec.mounts().clone().unwrap_or_default();
    spec.set_mounts(Some(all_mounts(defaults, own)));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{}/{}",
        input.cgroup_parent.trim_end_matches('/'),
        input.id
    ))));
    linux.set_seccomp(Some(seccomp));
    linux.set_sysctl(sysctls(input.svc)?);
    linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    linux.set_namespaces(Some(match (input.svc.network_mode, input.netns) {
        (NetworkMode::Host, _) => namespaces
            .into_iter()
            .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
            .collect(),
        (NetworkMode::Private, Some(path)) => namespaces
            .into_iter()
            .map(|mut ns| {
                if ns.typ() == LinuxNamespaceType::Network {
                    ns.set_path(Some(path.to_path_buf()));
                }
                ns
            })
            .collect(),
        (NetworkMode::Private, None) => namespaces,
    }));
    let mut devices = Vec::new();
    let mut device_rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(oci)?];
    for d in input.devices {
        devices.push(
            LinuxDeviceBuilder::default()
                .path(PathBuf::from(&d.container_path))
                .typ(LinuxDeviceType::C)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .file_mode(d.file_mode)
                .uid(d.uid)
                .gid(d.gid)
                .build()
                .map_err(oci)?,
        );
        // After the deny-all rule: the device, with the permissions the service asked for.
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(i64::from(d.major))
                .minor(i64::from(d.minor))
                .access(d.permissions.clone())
                .build()
                .map_err(oci)?,
        );
    }
    if !devices.is_empty() {
        linux.set_devices(Some(devices));
    }
    let resources = linux.resources_mut().get_or_insert_with(Default::default);
    resources.set_devices(Some(device_rules));
    resources.set_pids(Some(
        LinuxPidsBuilder::default()
            .limit(DEFAULT_PIDS_LIMIT)
            .build()
            .map_err(oci)?,
    ));
    if let Some(bytes) = input.svc.limits.memory_bytes {
        resources.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .map_err(oci)?,
        ));
    }
    if let Some(millis) = input.svc.limits.cpu_millis {
        let period = 100_000u64;
        let quota = (millis * period / 1000) as i64;
        resources.set_cpu(Some(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .map_err(oci)?,
        ));
    }
    if let Some(userns) = input.userns {
        join_user_namespace(&mut spec, userns, input.svc.network_mode)?;
    }
    Ok(spec)
}

/// Take out what the confinement of issue 16 added to `spec` (seccomp, masked and read-only
/// paths, the pids limit, the OOM order, `no_new_privileges`), leaving runc's defaults: only for
/// the confinement benchmark's baseline ([`super::RuntimeConfig::unconfined_for_benchmark`]).
pub(crate) fn without_confinement(spec: &mut Spec) {
    if let Some(process) = spec.process_mut() {
        process.set_no_new_privileges(None);
        process.set_oom_score_adj(None);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(None);
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        if let Some(resources) = linux.resources_mut() {
            resources.set_pids(None);
        }
    }
}

/// The process spec of a health-check exec: the container's process with other args.
pub(crate) fn exec_process(container: &Spec, argv: Vec<String>) -> Process {
    let mut process = container.process().clone().unwrap_or_default();
    process.set_args(Some(argv));
    process.set_terminal(Some(false));
    process
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_compose::{AppSpec, ALL_CAPABILITIES};

    fn service(yaml: &str) -> ServiceSpec {
        AppSpec::parse("c.yml", "app", yaml)
            .unwrap()
            .services
            .remove("s")
            .unwrap()
    }

    /// The image's user 1000:100, resolved.
    fn user_1000() -> ResolvedUser {
        ResolvedUser {
            uid: 1000,
            gid: 100,
            additional_gids: vec![100],
        }
    }

    fn image() -> ContainerConfig {
        ContainerConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: Some(vec!["PATH=/img/bin".into(), "A=image".into()]),
            working_dir: Some("/srv".into()),
            user: Some("1000:100".into()),
        }
    }

    #[test]
    fn compose_argv_rules() {
        let img = image();
        assert_eq!(
            process_args(&service("services: {s: {image: x}}"), &img),
            ["/entry", "serve"]
        );
        assert_eq!(
            process_args(&service("services: {s: {image: x, command: run}}"), &img),
            ["/entry", "run"]
        );
        assert_eq!(
            process_args(&service("services: {s: {image: x, entrypoint: sh}}"), &img),
            ["sh"]
        );
        assert_eq!(
            process_args(
                &service("services: {s: {image: x, entrypoint: sh, command: [-c, x]}}"),
                &img
            ),
            ["sh", "-c", "x"]
        );
    }

    #[test]
    fn env_merges_image_and_service() {
        let svc = service("services: {s: {image: x, environment: {A: svc, B: b}}}");
        let env = process_env(&svc, &image(), "s", &super::super::secret_env::NONE);
        assert_eq!(env, ["PATH=/img/bin", "HOSTNAME=s", "A=svc", "B=b"]);
    }

    #[test]
    fn secret_variables_come_last_and_replace_the_images() {
        let yaml = "services: {s: {image: x, environment: {B: b}, secrets: [t], x-cairn-secret-env: {A: t, TOKEN: t}}}\nsecrets: {t: {}}\n";
        let svc = service(yaml);
        let values = BTreeMap::from([("t".to_string(), b"hunter2".to_vec())]);
        let secret_env = SecretEnv::resolve("app", "s", &svc, &values).unwrap();
        let env = process_env(&svc, &image(), "s", &secret_env);
        assert_eq!(
            env,
            [
                "PATH=/img/bin",
                "HOSTNAME=s",
                "A=hunter2",
                "B=b",
                "TOKEN=hunter2"
            ]
        );
        let img = image();
        let user = user_1000();
        let input = SpecInput {
            secret_env: &secret_env,
            ..input(&svc, &img, &user)
        };
        let spec = build_spec(&input).unwrap();
        let process = spec.process().as_ref().unwrap();
        let env = process.env().as_ref().unwrap();
        assert!(env.iter().any(|v| v == "TOKEN=hunter2"), "{env:?}");
        // A health check's exec runs with the container's environment.
        let exec = exec_process(&spec, vec!["true".into()]);
        assert_eq!(exec.env(), process.env());
    }

    #[test]
    fn spec_has_limits_mounts_and_host_network() {
        let svc = service("services: {s: {image: x, network_mode: host, deploy: {resources: {limits: {cpus: '0.5', memory: 64m}}}}}");
        let img = image();
        let user = user_1000();
        let input = SpecInput {
            id: "app_s",
            service: "s",
            svc: &svc,
            image: &img,
            user: &user,
            mounts: vec![BindMount {
                kept_flags: Vec::new(),
                source: "/data/v".into(),
                target: "/v".into(),
                read_only: true,
            }],
            devices: &[],
            cgroup_parent: "/cairn",
            netns: None,
            userns: None,
            secret_env: &super::super::secret_env::NONE,
        };
        let spec = build_spec(&input).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["hostname"], "s");
        assert_eq!(
            json["root"]["readonly"], false,
            "Compose roots are writable"
        );
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["cwd"], "/srv");
        assert_eq!(json["linux"]["cgroupsPath"], "/cairn/app_s");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        let namespaces: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!namespaces.contains(&"network"), "{namespaces:?}");
        assert!(namespaces.contains(&"pid"));
        let mount = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/v")
            .unwrap();
        assert_eq!(mount["options"], serde_json::json!(["rbind", "ro"]));
        // Confinement: the image's user 1000 holds no capability; Docker's masked and
        // read-only paths; no new privileges; a pids limit; apps die first under OOM.
        let caps = &json["process"]["capabilities"];
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(caps[set], serde_json::json!([]), "{set}: {caps}");
        }
        assert_eq!(
            caps["bounding"].as_array().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert_eq!(
            json["process"]["user"]["additionalGids"],
            serde_json::json!([100])
        );
        assert!(
            json["process"].get("rlimits").is_none(),
            "the shim's limits are inherited"
        );
        assert!(json["linux"].get("sysctl").is_none());
        assert!(json["linux"].get("devices").is_none());
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["oomScoreAdj"], APP_OOM_SCORE_ADJ);
        assert_eq!(
            json["linux"]["resources"]["pids"]["limit"],
            DEFAULT_PIDS_LIMIT
        );
        let masked = json["linux"]["maskedPaths"].as_array().unwrap();
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ] {
            assert!(
                masked.iter().any(|m| m == path),
                "{path} not masked: {masked:?}"
            );
        }
        let readonly = json["linux"]["readonlyPaths"].as_array().unwrap();
        assert!(readonly.iter().any(|m| m == "/proc/sys"), "{readonly:?}");
    }

    /// The input of service `s` (container `app_s`) without mounts or devices.
    fn input<'a>(
        svc: &'a ServiceSpec,
        img: &'a ContainerConfig,
        user: &'a ResolvedUser,
    ) -> SpecInput<'a> {
        SpecInput {
            id: "app_s",
            service: "s",
            svc,
            image: img,
            user,
            mounts: Vec::new(),
            devices: &[],
            cgroup_parent: "/cairn",
            netns: None,
            userns: None,
            secret_env: &super::super::secret_env::NONE,
        }
    }

    /// The OCI spec of service `s` (container `app_s`) as user 1000 without mounts, as JSON.
    fn spec_json(svc: &ServiceSpec, img: &ContainerConfig) -> serde_json::Value {
        spec_json_as(svc, img, &user_1000())
    }

    fn spec_json_as(
        svc: &ServiceSpec,
        img: &ContainerConfig,
        user: &ResolvedUser,
    ) -> serde_json::Value {
        serde_json::to_value(build_spec(&input(svc, img, user)).unwrap()).unwrap()
    }

    fn spec_error(svc: &ServiceSpec) -> String {
        build_spec(&input(svc, &image(), &ResolvedUser::root()))
            .unwrap_err()
            .to_string()
    }

    /// The names in capability set `set` of `json`, sorted.
    fn cap_set(json: &serde_json::Value, set: &str) -> Vec<String> {
        let mut names: Vec<String> = json["process"]["capabilities"][set]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn working_dir_hostname_and_read_only_come_from_the_service() {
        let svc = service(
            "services: {s: {image: x, working_dir: /app, hostname: shop, read_only: true}}",
        );
        let img = image();
        let json = spec_json(&svc, &img);
        assert_eq!(
            json["process"]["cwd"], "/app",
            "the image's /srv is replaced"
        );
        assert_eq!(json["hostname"], "shop");
        assert!(json["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "HOSTNAME=shop"));
        assert_eq!(json["root"]["readonly"], true);
    }

    #[test]
    fn root_keeps_dockers_default_capabilities() {
        let svc = service("services: {s: {image: x}}");
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        assert_eq!(json["process"]["user"]["uid"], 0);
        assert_eq!(cap_set(&json, "effective"), sorted(DEFAULT_CAPABILITIES));
        assert_eq!(cap_set(&json, "permitted"), sorted(DEFAULT_CAPABILITIES));
        assert_eq!(cap_set(&json, "bounding"), sorted(DEFAULT_CAPABILITIES));
        assert!(cap_set(&json, "inheritable").is_empty());
        assert!(cap_set(&json, "ambient").is_empty());
        assert!(ALL_CAPABILITIES
            .iter()
            .all(|c| capability(c, "test").is_ok()));
    }

    #[test]
    fn cap_drop_and_cap_add_change_roots_sets() {
        let mut svc = service("services: {s: {image: x}}");
        svc.cap_drop = ["CAP_NET_RAW".to_string(), "CAP_MKNOD".to_string()].into();
        svc.cap_add = ["CAP_NET_ADMIN".to_string()].into();
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        let effective = cap_set(&json, "effective");
        assert_eq!(effective.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert!(effective.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!effective.contains(&"CAP_NET_RAW".to_string()));
        assert!(!effective.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(cap_set(&json, "bounding"), effective);

        // ALL in cap_drop clears the default set; cap_add still adds.
        svc.cap_drop = ["ALL".to_string()].into();
        svc.cap_add = ["CAP_CHOWN".to_string(), "NET_BIND_SERVICE".to_string()].into();
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        let expected = sorted(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
        assert_eq!(cap_set(&json, "bounding"), expected);
        assert_eq!(cap_set(&json, "effective"), expected);

        // An added capability wins over a dropped one (as Docker's TweakCapabilities).
        svc.cap_drop = ["CAP_KILL".to_string()].into();
        svc.cap_add = ["CAP_KILL".to_string()].into();
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        assert_eq!(cap_set(&json, "bounding"), sorted(DEFAULT_CAPABILITIES));

        // What the parser refuses is refused here too, for a spec that did not come through it.
        svc.cap_add = ["ALL".to_string()].into();
        svc.cap_drop = ["CAP_SYS_MODULE".to_string()].into();
        let err = spec_error(&svc);
        assert!(err.contains("cap_add: ALL is never granted"), "{err}");
        svc.cap_add = ["sys_admin".to_string()].into();
        let err = spec_error(&svc);
        assert!(
            err.contains("cap_add: CAP_SYS_ADMIN is never granted on Cairn: it is the catch-all"),
            "{err}"
        );

        svc.cap_add = ["CAP_TELEPORT".to_string()].into();
        svc.cap_drop.clear();
        let err = spec_error(&svc);
        assert!(
            err.contains("cap_add: unknown capability \"CAP_TELEPORT\""),
            "{err}"
        );
    }

    #[test]
    fn a_non_root_user_holds_only_what_cap_add_names_as_ambient() {
        let mut svc = service("services: {s: {image: x}}");
        let json = spec_json(&svc, &image());
        assert!(cap_set(&json, "effective").is_empty());
        svc.cap_add = ["CAP_NET_BIND_SERVICE".to_string()].into();
        svc.cap_drop = ["CAP_CHOWN".to_string()].into();
        let json = spec_json(&svc, &image());
        let added = sorted(&["CAP_NET_BIND_SERVICE"]);
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(cap_set(&json, set), added, "{set}");
        }
        let bounding = cap_set(&json, "bounding");
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert!(!bounding.contains(&"CAP_CHOWN".to_string()));
    }

    #[test]
    fn added_capabilities_open_their_syscalls() {
        let allowed = |json: &serde_json::Value, name: &str| {
            json["linux"]["seccomp"]["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| {
                    s["action"] == "SCMP_ACT_ALLOW"
                        && s["names"].as_array().unwrap().iter().any(|n| n == name)
                })
        };
        let mut svc = service("services: {s: {image: x}}");
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        assert!(!allowed(&json, "settimeofday"));
        svc.cap_add = ["CAP_SYS_TIME".to_string()].into();
        let json = spec_json_as(&svc, &image(), &ResolvedUser::root());
        assert!(allowed(&json, "settimeofday"));
    }

    #[test]
    fn resolved_user_and_groups_are_the_process_user() {
        let svc = service("services: {s: {image: x}}");
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![1000, 44, 29],
        };
        let json = spec_json_as(&svc, &image(), &user);
        assert_eq!(
            json["process"]["user"],
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 44, 29]})
        );
    }

    #[test]
    fn ulimits_become_rlimits() {
        let mut svc = service("services: {s: {image: x}}");
        svc.ulimits.insert(
            "nofile".into(),
            cairn_compose::Ulimit {
                soft: 1234,
                hard: 2345,
            },
        );
        svc.ulimits
            .insert("core".into(), cairn_compose::Ulimit { soft: 0, hard: 0 });
        let json = spec_json(&svc, &image());
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
                {"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345},
            ])
        );
        svc.ulimits
            .insert("nofile".into(), cairn_compose::Ulimit { soft: 3, hard: 2 });
        assert!(spec_error(&svc).contains("soft limit 3 is above its hard limit 2"));
        svc.ulimits.clear();
        svc.ulimits
            .insert("files".into(), cairn_compose::Ulimit { soft: 1, hard: 1 });
        assert!(spec_error(&svc).contains("unknown limit \"files\""));
    }

    #[test]
    fn namespaced_sysctls_only() {
        let mut svc = service("services: {s: {image: x}}");
        svc.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
        svc.sysctls.insert("kernel.shmmax".into(), "65536".into());
        svc.sysctls.insert("fs.mqueue.msg_max".into(), "20".into());
        let json = spec_json(&svc, &image());
        assert_eq!(
            json["linux"]["sysctl"],
            serde_json::json!({
                "net.ipv4.ip_unprivileged_port_start": "80",
                "kernel.shmmax": "65536",
                "fs.mqueue.msg_max": "20",
            })
        );
        svc.network_mode = NetworkMode::Host;
        assert!(spec_error(&svc).contains("would change the device's own network"));
        svc.network_mode = NetworkMode::Private;
        svc.sysctls.insert("vm.swappiness".into(), "10".into());
        assert!(spec_error(&svc).contains("vm.swappiness is not a namespaced sysctl"));
    }

    #[test]
    fn tmpfs_mounts_have_dockers_options_and_come_before_what_is_inside() {
        let mut svc = service("services: {s: {image: x}}");
        svc.tmpfs = vec![
            cairn_compose::TmpfsMount {
                target: "/run".into(),
                size_bytes: 1 << 20,
                mode: 0o1777,
            },
            cairn_compose::TmpfsMount {
                target: "/dev/shm".into(),
                size_bytes: 128 << 20,
                mode: 0o1777,
            },
        ];
        let img = image();
        let user = user_1000();
        let input = SpecInput {
            mounts: vec![BindMount {
                kept_flags: Vec::new(),
                source: "/data/secrets/token".into(),
                target: "/run/secrets/token".into(),
                read_only: true,
            }],
            ..input(&svc, &img, &user)
        };
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        let mounts = json["mounts"].as_array().unwrap();
        let position = |dest: &str| {
            mounts
                .iter()
                .position(|m| m["destination"] == dest)
                .unwrap_or_else(|| panic!("no {dest}: {mounts:?}"))
        };
        let run = &mounts[position("/run")];
        assert_eq!(run["type"], "tmpfs");
        assert_eq!(
            run["options"],
            serde_json::json!(["nosuid", "nodev", "noexec", "size=1048576", "mode=1777"])
        );
        assert!(position("/run") < position("/run/secrets/token"));
        // The service's /dev/shm replaces the default one.
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1, "{shm:?}");
        assert!(shm[0]["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "size=134217728"));
        svc.tmpfs[0].target = "run".into();
        assert!(spec_error(&svc).contains("not an absolute path"));
    }

    #[test]
    fn devices_are_created_and_allowed_after_the_deny_all_rule() {
        let svc = service("services: {s: {image: x}}");
        let img = image();
        let user = user_1000();
        let devices = [HostDevice {
            container_path: "/dev/ttyUSB0".into(),
            major: 188,
            minor: 0,
            file_mode: 0o660,
            uid: 0,
            gid: 20,
            permissions: "rw".into(),
        }];
        let input = SpecInput {
            devices: &devices,
            ..input(&svc, &img, &user)
        };
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        assert_eq!(
            json["linux"]["devices"],
            serde_json::json!([{
                "path": "/dev/ttyUSB0", "type": "c", "major": 188, "minor": 0,
                "fileMode": 0o660, "uid": 0, "gid": 20
            }])
        );
        assert_eq!(
            json["linux"]["resources"]["devices"],
            serde_json::json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 188, "minor": 0, "access": "rw"},
            ])
        );
    }

    #[test]
    fn private_network_keeps_its_namespace() {
        let svc = service("services: {s: {image: x}}");
        let mut img = image();
        let user = user_1000();
        let json = serde_json::to_value(build_spec(&input(&svc, &img, &user)).unwrap()).unwrap();
        assert!(json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network" && n.get("path").is_none()));
        let with_netns = SpecInput {
            netns: Some(Path::new("/run/cairn/netns/a_s")),
            ..input(&svc, &img, &user)
        };
        let json = serde_json::to_value(build_spec(&with_netns).unwrap()).unwrap();
        assert!(json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/cairn/netns/a_s"));
        img.entrypoint = None;
        img.cmd = None;
        assert!(build_spec(&input(&svc, &img, &user))
            .unwrap_err()
            .to_string()
            .contains("no command"));
    }
}
