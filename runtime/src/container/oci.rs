//! OCI runtime specs for service containers and their health-check execs (oci-spec).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use cairn_compose::{NetworkMode, ServiceSpec};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, MountBuilder, Process, Spec,
    UserBuilder,
};

use super::ContainerError;
use crate::image::ContainerConfig;

/// A host file or directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Everything the OCI spec of one service container is made from.
pub(crate) struct SpecInput<'a> {
    pub id: &'a str,
    pub service: &'a str,
    pub svc: &'a ServiceSpec,
    pub image: &'a ContainerConfig,
    pub mounts: Vec<BindMount>,
    pub cgroup_parent: &'a str,
    /// Named network namespace to join (ignored in `network_mode: host`).
    pub netns: Option<&'a Path>,
}

/// Docker's default capability set, which Compose files are written against.
pub(crate) const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

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

/// Image env, then the service's environment on top (same keys replaced), `PATH` defaulted.
pub(crate) fn process_env(
    svc: &ServiceSpec,
    image: &ContainerConfig,
    hostname: &str,
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
    order.iter().map(|k| format!("{k}={}", env[k])).collect()
}

/// `uid[:gid]` from the image config (`root` and empty mean 0).
fn image_user(user: Option<&str>) -> Result<(u32, u32), ContainerError> {
    let user = user.unwrap_or("").trim();
    if user.is_empty() || user == "root" || user == "0" {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse::<u32>().map_err(|_| ContainerError::Spec {
        reason: format!(
            "image user {user:?} is a name; only numeric users (uid[:gid]) are supported"
        ),
    })?;
    let gid = if g.is_empty() {
        uid
    } else {
        g.parse::<u32>().map_err(|_| ContainerError::Spec {
            reason: format!("image group in {user:?} is a name; use a numeric gid"),
        })?
    };
    Ok((uid, gid))
}

fn oci(e: oci_spec::OciSpecError) -> ContainerError {
    ContainerError::Spec {
        reason: e.to_string(),
    }
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
    let (uid, gid) = image_user(input.image.user.as_deref())?;
    let mut spec = Spec::default();
    let hostname = input.svc.hostname.as_deref().unwrap_or(input.service);
    spec.set_hostname(Some(hostname.to_string()));
    // oci-spec's default root is read-only; Compose's is writable (the snapshot is per
    // container) unless the service says `read_only`.
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(input.svc.read_only));
    }

    let caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    // A non-root user gets no capability at all (the bounding set only limits what a setuid
    // program could gain, and no_new_privileges stops that too).
    let held = if uid == 0 {
        caps.clone()
    } else {
        HashSet::new()
    };
    let seccomp = super::seccomp::default_profile(&caps)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(held.clone())
        .permitted(held)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(oci)?;
    let process = spec.process_mut().get_or_insert_with(Process::default);
    process.set_args(Some(args));
    process.set_env(Some(process_env(input.svc, input.image, hostname)));
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
            .uid(uid)
            .gid(gid)
            .build()
            .map_err(oci)?,
    );
    process.set_capabilities(Some(capabilities));
    // Said here, not left to oci-spec's default: no setuid program or file capability may
    // raise a service's privileges.
    process.set_no_new_privileges(Some(true));
    process.set_oom_score_adj(Some(APP_OOM_SCORE_ADJ));
    // Inherit the shim's limits (as Docker does) instead of oci-spec's fixed 1024 open files.
    process.set_rlimits(None);

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &input.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(&m.target))
                .typ("bind")
                .source(m.source.clone())
                .options(vec!["rbind".to_string(), mode.to_string()])
                .build()
                .map_err(oci)?,
        );
    }
    spec.set_mounts(Some(mounts));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{}/{}",
        input.cgroup_parent.trim_end_matches('/'),
        input.id
    ))));
    linux.set_seccomp(Some(seccomp));
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
    let resources = linux.resources_mut().get_or_insert_with(Default::default);
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(oci)?;
    resources.set_devices(Some(vec![deny_all]));
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
    Ok(spec)
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
    use cairn_compose::AppSpec;

    fn service(yaml: &str) -> ServiceSpec {
        AppSpec::parse("c.yml", "app", yaml)
            .unwrap()
            .services
            .remove("s")
            .unwrap()
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
        let env = process_env(&svc, &image(), "s");
        assert_eq!(env, ["PATH=/img/bin", "HOSTNAME=s", "A=svc", "B=b"]);
    }

    #[test]
    fn spec_has_limits_mounts_and_host_network() {
        let svc = service("services: {s: {image: x, network_mode: host, deploy: {resources: {limits: {cpus: '0.5', memory: 64m}}}}}");
        let img = image();
        let input = SpecInput {
            id: "app_s",
            service: "s",
            svc: &svc,
            image: &img,
            mounts: vec![BindMount {
                source: "/data/v".into(),
                target: "/v".into(),
                read_only: true,
            }],
            cgroup_parent: "/cairn",
            netns: None,
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
        assert!(caps["bounding"].as_array().unwrap().len() == CAPABILITIES.len());
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

    /// The OCI spec of service `s` (container `app_s`) without mounts, as JSON.
    fn spec_json(svc: &ServiceSpec, img: &ContainerConfig) -> serde_json::Value {
        let input = SpecInput {
            id: "app_s",
            service: "s",
            svc,
            image: img,
            mounts: Vec::new(),
            cgroup_parent: "/cairn",
            netns: None,
        };
        serde_json::to_value(build_spec(&input).unwrap()).unwrap()
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
        let mut img = image();
        img.user = None;
        let json = spec_json(&svc, &img);
        assert_eq!(json["process"]["user"]["uid"], 0);
        let effective = json["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert_eq!(effective.len(), CAPABILITIES.len());
        assert!(effective.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
        assert!(!effective.iter().any(|c| c == "CAP_SYS_ADMIN"));
    }

    #[test]
    fn private_network_keeps_its_namespace_and_names_are_refused() {
        let svc = service("services: {s: {image: x}}");
        let mut img = image();
        let input = SpecInput {
            id: "a_s",
            service: "s",
            svc: &svc,
            image: &img,
            mounts: vec![],
            cgroup_parent: "/cairn",
            netns: None,
        };
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        assert!(json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network" && n.get("path").is_none()));
        let input = SpecInput {
            netns: Some(Path::new("/run/cairn/netns/a_s")),
            ..input
        };
        let json = serde_json::to_value(build_spec(&input).unwrap()).unwrap();
        assert!(json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/cairn/netns/a_s"));
        img.user = Some("www-data".into());
        let input = SpecInput {
            id: "a_s",
            service: "s",
            svc: &svc,
            image: &img,
            mounts: vec![],
            cgroup_parent: "/cairn",
            netns: None,
        };
        assert!(build_spec(&input)
            .unwrap_err()
            .to_string()
            .contains("numeric"));
        img.user = None;
        img.entrypoint = None;
        img.cmd = None;
        let input = SpecInput {
            id: "a_s",
            service: "s",
            svc: &svc,
            image: &img,
            mounts: vec![],
            cgroup_parent: "/cairn",
            netns: None,
        };
        assert!(build_spec(&input)
            .unwrap_err()
            .to_string()
            .contains("no command"));
    }
}
