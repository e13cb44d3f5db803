//! Validation of the positioned YAML tree into an [`AppSpec`], collecting every problem with its
//! line and field path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::fields::{self, FieldError};
use super::files::{self, Kind};
use super::lists::{capabilities, devices, ports, tmpfs, volumes};
use super::secret_env;
use super::sections::{
    depends_on, deploy, environment, extra_hosts, healthcheck, labels, logging, sysctls, ulimits,
};
use super::yaml::{Node, Value};
use super::{AppSpec, NetworkMode, Problem, Protocol, ServiceSpec};

const TOP_KEYS: &[&str] = &["services", "volumes", "secrets", "configs", "version"];

/// The keys of a service, in the order they are read: a key comes after those its checks need
/// (`tmpfs` after `volumes`, `sysctls` after `network_mode`, `cap_drop` after `cap_add`,
/// `x-cairn-secret-env` after `environment` and `secrets`).
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "volumes",
    "ports",
    "restart",
    "healthcheck",
    "deploy",
    "network_mode",
    "secrets",
    "configs",
    "working_dir",
    "hostname",
    "read_only",
    "user",
    "extra_hosts",
    "labels",
    "tmpfs",
    "stop_signal",
    "stop_grace_period",
    "depends_on",
    "cap_add",
    "cap_drop",
    "ulimits",
    "sysctls",
    "logging",
    "devices",
    super::SECRET_ENV_KEY,
];

/// Compose service keys that stay refused, with why: each would loosen the confinement every app
/// runs in, or needs something a device does not have.
const REFUSED_SERVICE_KEYS: &[(&str, &str)] = &[
    ("privileged", "a privileged container holds every capability and every host device, enough to take over the device; ask for what the service needs with `cap_add` and `devices`"),
    ("pid", "sharing the host's or another container's process namespace would let the service see and signal processes outside it; leave it out (each service has its own)"),
    ("ipc", "sharing the host's or another container's IPC namespace would let the service reach memory outside it; leave it out (each service has its own)"),
    ("cgroup_parent", "the agent places every service in the app's own cgroup, where its limits and accounting hold; leave it out"),
    ("security_opt", "the agent gives every service its seccomp filter, AppArmor profile and no-new-privileges, which an app cannot relax or replace; leave it out"),
    ("userns_mode", "the agent sets the user namespace of every service (\"host\" would make the container's root the device's root); leave it out"),
    ("volumes_from", "mounting another service's volumes is not supported; mount the same named volume in both services"),
    ("env_file", "a device has no source for the file; write the variables under `environment`, or use the variables central provides (`${VAR}`)"),
    ("build", "devices pull images, they do not build them; build the image, push it to a registry and give it as `image`"),
];

/// Prefix of the extension keys that are Cairn's: only those it knows are accepted.
const CAIRN_EXTENSION_PREFIX: &str = "x-cairn-";

/// The problem of an `x-cairn-` key that `allowed` does not list.
fn unknown_cairn_extension(key: &str, allowed: &[&str]) -> String {
    let known: Vec<&str> = allowed
        .iter()
        .copied()
        .filter(|k| k.starts_with(CAIRN_EXTENSION_PREFIX))
        .collect();
    let here = if known.is_empty() {
        "none are supported here".to_string()
    } else {
        format!("supported here: {}", known.join(", "))
    };
    format!("unknown Cairn extension {key:?} (keys starting \"{CAIRN_EXTENSION_PREFIX}\" are Cairn's own); {here}")
}

/// Collects problems while walking the tree.
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn problem(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: node.line,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// A problem at a value whose site was kept.
    pub(super) fn problem_at(&mut self, site: &Site, message: impl Into<String>) {
        self.problem(site.node, &site.path, message);
    }

    /// The entries of a mapping with scalar keys, refusing duplicate keys and (when `allowed` is
    /// given) keys outside it. `None` (with a problem) when `node` is not a mapping.
    pub(super) fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: Option<&[&str]>,
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        self.map_refusing(node, path, allowed, &[])
    }

    /// [`Checker::map`], refusing the keys of `refused` with their reasons.
    pub(super) fn map_refusing<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: Option<&[&str]>,
        refused: &[(&str, &str)],
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let Value::Map(entries) = &node.value else {
            self.problem(
                node,
                path,
                format!("must be a mapping, found {}", node.kind()),
            );
            return None;
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (key, value) in entries {
            let Some(k) = key.as_scalar() else {
                self.problem(key, path, "mapping keys must be plain strings");
                continue;
            };
            let child = join(path, k);
            if !seen.insert(k) {
                self.problem(key, &child, "is given twice; keep one");
                continue;
            }
            if let Some(allowed) = allowed {
                // Compose extension fields may stand in any structure; they mean nothing here,
                // except the Cairn extensions a structure supports. `x-cairn-` is Cairn's own
                // prefix: an unknown one is a typo that must not be ignored silently.
                if k.starts_with("x-") && !allowed.contains(&k) {
                    if k.starts_with(CAIRN_EXTENSION_PREFIX) {
                        self.problem(key, &child, unknown_cairn_extension(k, allowed));
                    }
                    continue;
                }
                if let Some((_, reason)) = refused.iter().find(|(r, _)| *r == k) {
                    self.problem(key, &child, format!("is not supported: {reason}"));
                    continue;
                }
                if !allowed.contains(&k) {
                    self.problem(
                        key,
                        &child,
                        format!(
                            "unknown key {k:?}; supported keys here: {}",
                            allowed.join(", ")
                        ),
                    );
                    continue;
                }
            }
            out.push((k, value));
        }
        Some(out)
    }

    /// A scalar's text; numbers and booleans come back as written.
    pub(super) fn scalar<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        match node.as_scalar() {
            Some(_) if node.is_null() => {
                self.problem(node, path, format!("is empty; give {what}"));
                None
            }
            Some(text) => Some(text),
            None => {
                self.problem(node, path, format!("must be {what}, found {}", node.kind()));
                None
            }
        }
    }

    /// `true` or `false`.
    pub(super) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match self.scalar(node, path, "true or false")? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.problem(node, path, format!("{other:?} is not true or false"));
                None
            }
        }
    }

    /// Check a scalar with a field parser, reporting its message.
    pub(super) fn field<T>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Option<T> {
        let text = self.scalar(node, path, what)?;
        match parse(text) {
            Ok(v) => Some(v),
            Err(error) => {
                self.problem(node, path, error.to_string());
                None
            }
        }
    }

    /// A list of scalars, or (when `split` is set) a string split like a shell command.
    pub(super) fn string_list(
        &mut self,
        node: &Node,
        path: &str,
        split: bool,
    ) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    match item.as_scalar() {
                        Some(text) if !item.is_null() || text.is_empty() => {
                            out.push(text.to_string())
                        }
                        _ => self.problem(
                            item,
                            &p,
                            format!("must be a string, found {}", item.kind()),
                        ),
                    }
                }
                Some(out)
            }
            Value::Scalar { text, .. } if split && !node.is_null() => {
                match fields::split_command(text) {
                    Ok(words) => Some(words),
                    Err(error) => {
                        self.problem(node, path, error.to_string());
                        None
                    }
                }
            }
            _ => {
                let want = if split {
                    "a string or a list of strings"
                } else {
                    "a list of strings"
                };
                self.problem(node, path, format!("must be {want}, found {}", node.kind()));
                None
            }
        }
    }

    pub(super) fn seq<'n>(&mut self, node: &'n Node, path: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => {
                self.problem(node, path, format!("must be a list, found {}", node.kind()));
                &[]
            }
        }
    }
}

/// Where a value was written: its node (for the line) and its field path.
#[derive(Debug, Clone)]
pub(super) struct Site<'n> {
    pub(super) node: &'n Node,
    pub(super) path: String,
}

/// Where a service's entries were written, for the problems found once the service (or the
/// whole app) is read: one site per volume, published port, secret and config mount, in the
/// spec's order, and one per `depends_on` entry.
#[derive(Default)]
pub(super) struct Sites<'n> {
    volumes: Vec<Site<'n>>,
    ports: Vec<Site<'n>>,
    pub(super) secrets: Vec<Site<'n>>,
    pub(super) configs: Vec<Site<'n>>,
    pub(super) depends_on: BTreeMap<String, Site<'n>>,
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// What each service is read against: the app's secrets and configs and how many more ports it
/// may publish.
struct AppContext<'a> {
    secrets: &'a BTreeSet<String>,
    configs: &'a BTreeMap<String, String>,
    ports_left: usize,
}

/// Validate a whole document as app `name`.
pub(crate) fn app(root: &Node, name: &str) -> Result<AppSpec, Vec<Problem>> {
    let mut ck = Checker {
        problems: Vec::new(),
    };
    let mut app = AppSpec {
        name: name.to_string(),
        services: BTreeMap::new(),
        volumes: BTreeSet::new(),
        secrets: BTreeSet::new(),
        configs: BTreeMap::new(),
    };
    if root.is_null() {
        ck.problem(
            root,
            "services",
            "the file is empty; an app needs a `services` mapping",
        );
        return Err(ck.problems);
    }
    let top = ck.map(root, "", Some(TOP_KEYS)).unwrap_or_default();
    let mut declared_volumes = None;
    for (key, node) in &top {
        match *key {
            "volumes" => declared_volumes = Some(declared_volume_names(&mut ck, node)),
            "secrets" => app.secrets = files::declared_secrets(&mut ck, node),
            "configs" => app.configs = files::declared_configs(&mut ck, node),
            _ => {}
        }
    }
    match top.iter().find(|(k, _)| *k == "services") {
        None if ck.problems.is_empty() => ck.problem(
            root,
            "services",
            "is missing; an app needs at least one service",
        ),
        None => {}
        Some((_, node)) => {
            let (names, sites) = services(&mut ck, node, &mut app);
            named_volumes(&mut ck, &mut app, declared_volumes, &sites);
            duplicate_host_ports(&mut ck, &app, &sites);
            super::depends::check(&mut ck, &app, &names, &sites);
        }
    }
    if ck.problems.is_empty() {
        Ok(app)
    } else {
        ck.problems.sort_by_key(|p| p.line);
        Err(ck.problems)
    }
}

/// Read every service into `app`: the names written (valid or not) and where the entries of
/// the services read were written.
fn services<'n>(
    ck: &mut Checker,
    node: &'n Node,
    app: &mut AppSpec,
) -> (BTreeSet<&'n str>, BTreeMap<String, Sites<'n>>) {
    let services = ck.map(node, "services", None).unwrap_or_default();
    if services.is_empty() && matches!(node.value, Value::Map(_)) {
        ck.problem(
            node,
            "services",
            "is empty; an app needs at least one service",
        );
    }
    let mut context = AppContext {
        secrets: &app.secrets,
        configs: &app.configs,
        ports_left: fields::MAX_PORTS_PER_APP,
    };
    let mut names = BTreeSet::new();
    let mut read = BTreeMap::new();
    let mut sites = BTreeMap::new();
    for (svc_name, svc_node) in services {
        names.insert(svc_name);
        let path = join("services", svc_name);
        if let Err(why) = fields::check_name(svc_name, super::MAX_NAME_LEN) {
            ck.problem(svc_node, &path, format!("service name {svc_name:?} {why}"));
            continue;
        }
        if let Some((svc, svc_sites)) = service(ck, svc_node, &path, &mut context) {
            read.insert(svc_name.to_string(), svc);
            sites.insert(svc_name.to_string(), svc_sites);
        }
    }
    app.services = read;
    (names, sites)
}

/// Named volumes: when a top-level `volumes` exists, services may only use declared ones.
fn named_volumes(
    ck: &mut Checker,
    app: &mut AppSpec,
    declared: Option<BTreeSet<String>>,
    sites: &BTreeMap<String, Sites>,
) {
    for (svc_name, svc) in &app.services {
        for (v, site) in svc.volumes.iter().zip(&sites[svc_name].volumes) {
            if declared.as_ref().is_some_and(|d| !d.contains(&v.volume)) {
                ck.problem_at(
                    site,
                    format!(
                        "volume {:?} is not declared in the top-level `volumes`; add it there",
                        v.volume
                    ),
                );
            }
            app.volumes.insert(v.volume.clone());
        }
    }
    app.volumes.extend(declared.unwrap_or_default());
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The ports published on one host port and protocol so far: the first of all, the first on
/// every address, and the first on each address.
#[derive(Default)]
struct Bound<'s> {
    first: Option<&'s str>,
    any_address: Option<&'s str>,
    by_address: HashMap<IpAddr, &'s str>,
}

/// Two published ports of the app (in any services) on the same host port and protocol and
/// overlapping host addresses cannot both be bound: report the later one.
fn duplicate_host_ports(ck: &mut Checker, app: &AppSpec, sites: &BTreeMap<String, Sites>) {
    let mut bound: HashMap<(u16, Protocol), Bound> = HashMap::new();
    for (svc_name, svc) in &app.services {
        for (port, site) in svc.ports.iter().zip(&sites[svc_name].ports) {
            let b = bound.entry((port.host_port, port.protocol)).or_default();
            let clash = match port.host_ip {
                None => b.first,
                Some(ip) => b.any_address.or_else(|| b.by_address.get(&ip).copied()),
            };
            if let Some(other) = clash {
                ck.problem_at(
                    site,
                    format!(
                        "host port {}/{} is already published by {other}; pick another host port",
                        port.host_port,
                        protocol_name(port.protocol)
                    ),
                );
                continue;
            }
            b.first.get_or_insert(&site.path);
            match port.host_ip {
                None => b.any_address = Some(&site.path),
                Some(ip) => {
                    b.by_address.insert(ip, &site.path);
                }
            }
        }
    }
}

/// Top-level `volumes`: names mapped to nothing (`NAME:` or `NAME: {}`).
fn declared_volume_names(ck: &mut Checker, node: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return out;
    }
    for (name, value) in ck.map(node, "volumes", None).unwrap_or_default() {
        let p = join("volumes", name);
        if let Err(error) = fields::check_volume_name(name) {
            ck.problem(value, &p, error.to_string());
            continue;
        }
        let empty_map = matches!(&value.value, Value::Map(m) if m.is_empty());
        if !value.is_null() && !empty_map {
            let what = "volumes are directories on the data partition and take no options; write `NAME: {}` or `NAME:`";
            ck.problem(value, &p, what);
            continue;
        }
        out.insert(name.to_string());
    }
    out
}

/// One service, with where its entries were written; `None` after any problem in it.
fn service<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    context: &mut AppContext,
) -> Option<(ServiceSpec, Sites<'n>)> {
    let before = ck.problems.len();
    let mut entries = ck.map_refusing(node, path, Some(SERVICE_KEYS), REFUSED_SERVICE_KEYS)?;
    entries.sort_by_key(|(key, _)| SERVICE_KEYS.iter().position(|k| k == key));
    let mut svc = ServiceSpec::default();
    let mut sites = Sites::default();
    for (key, value) in &entries {
        let at = Site {
            node: value,
            path: join(path, key),
        };
        service_key(ck, &mut svc, &mut sites, key, at, context);
    }
    if !entries.iter().any(|(k, _)| *k == "image") {
        ck.problem(
            node,
            &join(path, "image"),
            "is missing; every service needs an image",
        );
    }
    published_ports(ck, &svc, &sites);
    files::check_targets(ck, &svc, &sites);
    (ck.problems.len() == before).then_some((svc, sites))
}

/// Read the value of service key `key`, written at `at`, into `svc`.
fn service_key<'n>(
    ck: &mut Checker,
    svc: &mut ServiceSpec,
    sites: &mut Sites<'n>,
    key: &str,
    at: Site<'n>,
    context: &mut AppContext,
) {
    let (value, p) = (at.node, at.path.as_str());
    match key {
        "image" => svc.image = image(ck, value, p).unwrap_or_default(),
        "command" => svc.command = ck.string_list(value, p, true),
        "entrypoint" => svc.entrypoint = ck.string_list(value, p, true),
        "environment" => svc.environment = environment(ck, value, p),
        "volumes" => svc.volumes = volumes(ck, value, p, &mut sites.volumes),
        "ports" => {
            svc.ports = ports(ck, value, p, &mut sites.ports, &mut context.ports_left);
        }
        "restart" => {
            let restart = ck.field(value, p, "a restart policy", fields::parse_restart);
            svc.restart = restart.unwrap_or_default();
        }
        "healthcheck" => svc.healthcheck = healthcheck(ck, value, p),
        "deploy" => svc.limits = deploy(ck, value, p),
        "network_mode" => svc.network_mode = network_mode(ck, value, p),
        "secrets" => {
            let declared = |name: &str| context.secrets.contains(name);
            let sites = &mut sites.secrets;
            svc.secrets = files::mounts(ck, value, p, Kind::Secret, &declared, sites);
        }
        "configs" => {
            let declared = |name: &str| context.configs.contains_key(name);
            let sites = &mut sites.configs;
            svc.configs = files::mounts(ck, value, p, Kind::Config, &declared, sites);
        }
        "working_dir" => svc.working_dir = working_dir(ck, value, p),
        "hostname" => {
            let check = |name: &str| fields::check_hostname(name).map(|()| name.to_string());
            svc.hostname = ck.field(value, p, "a host name such as \"web\"", check);
        }
        "read_only" => svc.read_only = ck.boolean(value, p).unwrap_or_default(),
        "user" => svc.user = ck.field(value, p, "a user such as \"1000:1000\"", fields::parse_user),
        "extra_hosts" => svc.extra_hosts = extra_hosts(ck, value, p),
        "labels" => svc.labels = labels(ck, value, p),
        "tmpfs" => svc.tmpfs = tmpfs(ck, value, p, &svc.volumes),
        "stop_signal" => {
            let what = "a signal such as \"SIGTERM\"";
            svc.stop_signal = ck.field(value, p, what, fields::parse_stop_signal);
        }
        "stop_grace_period" => {
            let what = "a duration such as \"30s\"";
            svc.stop_grace_period = ck.field(value, p, what, fields::parse_grace_period);
        }
        "depends_on" => svc.depends_on = depends_on(ck, value, p, &mut sites.depends_on),
        "cap_add" => svc.cap_add = capabilities(ck, value, p, true, &BTreeSet::new()),
        "cap_drop" => svc.cap_drop = capabilities(ck, value, p, false, &svc.cap_add),
        "ulimits" => svc.ulimits = ulimits(ck, value, p),
        "sysctls" => {
            let host_network = svc.network_mode == NetworkMode::Host;
            svc.sysctls = sysctls(ck, value, p, host_network);
        }
        "logging" => svc.logging = logging(ck, value, p),
        "devices" => svc.devices = devices(ck, value, p),
        super::SECRET_ENV_KEY => {
            svc.secret_env = secret_env::secret_env(ck, value, p, svc, context.secrets);
        }
        _ => unreachable!("keys are checked against SERVICE_KEYS"),
    }
}

fn image(ck: &mut Checker, node: &Node, path: &str) -> Option<String> {
    let image = ck.scalar(
        node,
        path,
        "an image reference such as \"registry:5000/web:1.0\"",
    )?;
    if let Err(why) = crate::ImageRef::parse(image) {
        ck.problem(
            node,
            path,
            format!("{image:?} is not an image reference: {why}; write e.g. \"registry:5000/team/web:1.0\""),
        );
    }
    Some(image.to_string())
}

fn network_mode(ck: &mut Checker, node: &Node, path: &str) -> NetworkMode {
    let Some(mode) = ck.scalar(node, path, "\"host\"") else {
        return NetworkMode::Private;
    };
    if mode == "host" {
        return NetworkMode::Host;
    }
    let message = if mode.starts_with("service:") || mode.starts_with("container:") {
        format!("{mode:?} is not supported: services do not share network namespaces; they reach each other by service name on the app's own network, so leave network_mode out")
    } else {
        format!("{mode:?} is not supported; only \"host\" is (leave it out for the app's own network, where services reach each other by name)")
    };
    ck.problem(node, path, message);
    NetworkMode::Private
}

fn working_dir(ck: &mut Checker, node: &Node, path: &str) -> Option<String> {
    let dir = ck.scalar(node, path, "an absolute path such as \"/app\"")?;
    if !dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0') {
        ck.problem(
            node,
            path,
            format!("{dir:?} is not an absolute path; write e.g. \"/app\""),
        );
        return None;
    }
    Some(dir.to_string())
}

/// Published ports that cannot work with the service's network: an IPv6 host address on the
/// app's IPv4-only network, or a host port other than the container port on the host's network.
/// One problem per `ports` entry.
fn published_ports(ck: &mut Checker, svc: &ServiceSpec, sites: &Sites) {
    let mut reported = BTreeSet::new();
    for (port, site) in svc.ports.iter().zip(&sites.ports) {
        let message = match svc.network_mode {
            NetworkMode::Private if port.host_ip.is_some_and(|ip| ip.is_ipv6()) => format!(
                "app networks are IPv4-only, so host address {} cannot reach the service; publish on an IPv4 address or leave the address out (\"{}:{}\")",
                port.host_ip.map(|ip| ip.to_string()).unwrap_or_default(), port.host_port, port.container_port
            ),
            NetworkMode::Host if port.host_port != port.container_port => format!(
                "with network_mode: host the service listens on the host directly, so host port {} cannot map to {}; write \"{}:{}\"",
                port.host_port, port.container_port, port.container_port, port.container_port
            ),
            _ => continue,
        };
        if reported.insert(&site.path) {
            ck.problem_at(site, message);
        }
    }
}
