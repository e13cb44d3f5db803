//! Validation of the positioned YAML tree into an [`AppSpec`], collecting every problem with its
//! line and field path.

use std::collections::{BTreeMap, BTreeSet};

use super::fields::{self, FieldError};
use super::sections::{deploy, environment, healthcheck};
use super::yaml::{Node, Value};
use super::{AppSpec, LogLimits, NetworkMode, Problem, ResourceLimits, RestartPolicy, ServiceSpec};

const TOP_KEYS: &[&str] = &["services", "volumes", "secrets", "version"];
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
    "working_dir",
    "hostname",
    "read_only",
];

/// Whether `name` is an RFC 1123 host name (what `sethostname` and DNS accept).
fn valid_hostname(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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

    /// The entries of a mapping with scalar keys, refusing duplicate keys and (when `allowed` is
    /// given) keys outside it. `None` (with a problem) when `node` is not a mapping.
    pub(super) fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: Option<&[&str]>,
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
                // Compose extension fields may stand in any structure; they mean nothing here.
                if k.starts_with("x-") {
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

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
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
            "volumes" => declared_volumes = Some(named_set(&mut ck, node, "volumes", true)),
            "secrets" => app.secrets = named_set(&mut ck, node, "secrets", false),
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
            let services = ck.map(node, "services", None).unwrap_or_default();
            if services.is_empty() && matches!(node.value, Value::Map(_)) {
                ck.problem(
                    node,
                    "services",
                    "is empty; an app needs at least one service",
                );
            }
            for (svc_name, svc_node) in services {
                let path = join("services", svc_name);
                if let Err(why) = fields::check_name(svc_name, 32) {
                    ck.problem(svc_node, &path, format!("service name {svc_name:?} {why}"));
                    continue;
                }
                if let Some(svc) = service(&mut ck, svc_node, &path, &app.secrets) {
                    app.services.insert(svc_name.to_string(), svc);
                }
            }
        }
    }
    // Named volumes: when a top-level `volumes` exists, services may only use declared ones.
    for (svc_name, svc) in &app.services {
        for (i, v) in svc.volumes.iter().enumerate() {
            if let Some(declared) = &declared_volumes {
                if !declared.contains(&v.volume) {
                    let node = volume_node(&top, svc_name, i).unwrap_or(root);
                    ck.problem(
                        node,
                        &format!("services.{svc_name}.volumes[{i}]"),
                        format!(
                            "volume {:?} is not declared in the top-level `volumes`; add it there",
                            v.volume
                        ),
                    );
                }
            }
            app.volumes.insert(v.volume.clone());
        }
    }
    if let Some(declared) = declared_volumes {
        app.volumes.extend(declared);
    }
    duplicate_host_ports(&mut ck, &top, &app, root);
    if ck.problems.is_empty() {
        Ok(app)
    } else {
        ck.problems.sort_by_key(|p| p.line);
        Err(ck.problems)
    }
}

/// Find the node of `services.<svc>.volumes[i]` again, for the line of a late problem.
fn volume_node<'n>(top: &[(&str, &'n Node)], svc: &str, i: usize) -> Option<&'n Node> {
    service_list_node(top, svc, "volumes", i)
}

/// Find the node of `services.<svc>.<key>[i]` again, for the line of a late problem.
fn service_list_node<'n>(
    top: &[(&str, &'n Node)],
    svc: &str,
    key: &str,
    i: usize,
) -> Option<&'n Node> {
    let (_, services) = top.iter().find(|(k, _)| *k == "services")?;
    let Value::Map(entries) = &services.value else {
        return None;
    };
    let (_, svc_node) = entries.iter().find(|(k, _)| k.as_scalar() == Some(svc))?;
    let Value::Map(fields) = &svc_node.value else {
        return None;
    };
    let (_, list) = fields.iter().find(|(k, _)| k.as_scalar() == Some(key))?;
    match &list.value {
        Value::Seq(items) => items.get(i),
        _ => None,
    }
}

/// Item `i` of list `key` among a service's checked entries.
fn list_item<'n>(entries: &[(&str, &'n Node)], key: &str, i: usize) -> Option<&'n Node> {
    let (_, list) = entries.iter().find(|(k, _)| *k == key)?;
    match &list.value {
        Value::Seq(items) => items.get(i),
        _ => None,
    }
}

/// Two published ports of the app (in any services) on the same host port and protocol and
/// overlapping host addresses cannot both be bound: report the later one.
fn duplicate_host_ports(ck: &mut Checker, top: &[(&str, &Node)], app: &AppSpec, root: &Node) {
    let mut seen: Vec<(String, &super::PortMapping)> = Vec::new();
    for (svc_name, svc) in &app.services {
        for (i, port) in svc.ports.iter().enumerate() {
            let path = format!("services.{svc_name}.ports[{i}]");
            let clash = seen.iter().find(|(_, p)| {
                p.host_port == port.host_port
                    && p.protocol == port.protocol
                    && (p.host_ip.is_none() || port.host_ip.is_none() || p.host_ip == port.host_ip)
            });
            if let Some((other, _)) = clash {
                let node = service_list_node(top, svc_name, "ports", i).unwrap_or(root);
                ck.problem(
                    node,
                    &path,
                    format!(
                        "host port {}/{} is already published by {other}; pick another host port",
                        port.host_port,
                        match port.protocol {
                            super::Protocol::Tcp => "tcp",
                            super::Protocol::Udp => "udp",
                        }
                    ),
                );
            } else {
                seen.push((path, port));
            }
        }
    }
}

/// Top-level `volumes` or `secrets`: names mapped to nothing (or, for secrets, `{}`/`external`).
fn named_set(ck: &mut Checker, node: &Node, path: &str, volume: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return out;
    }
    for (name, value) in ck.map(node, path, None).unwrap_or_default() {
        let p = join(path, name);
        let check = if volume {
            fields::check_volume_name(name)
        } else {
            fields::check_secret_name(name)
        };
        if let Err(error) = check {
            ck.problem(value, &p, error.to_string());
            continue;
        }
        let empty_map = matches!(&value.value, Value::Map(m) if m.is_empty());
        if !value.is_null() && !empty_map {
            let what = if volume {
                "volumes are directories on the data partition and take no options; write `NAME: {}` or `NAME:`"
            } else {
                "secret values are provided by central, not by a file; write `NAME: {}` or `NAME:`"
            };
            ck.problem(value, &p, what);
            continue;
        }
        out.insert(name.to_string());
    }
    out
}

fn service(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    secrets: &BTreeSet<String>,
) -> Option<ServiceSpec> {
    let before = ck.problems.len();
    let entries = ck.map(node, path, Some(SERVICE_KEYS))?;
    let mut svc = ServiceSpec {
        image: String::new(),
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        volumes: Vec::new(),
        ports: Vec::new(),
        restart: RestartPolicy::No,
        healthcheck: None,
        limits: ResourceLimits::default(),
        network_mode: NetworkMode::Private,
        secrets: Vec::new(),
        working_dir: None,
        hostname: None,
        read_only: false,
        user: None,
        extra_hosts: Vec::new(),
        labels: BTreeMap::new(),
        tmpfs: Vec::new(),
        stop_signal: None,
        stop_grace_period: None,
        depends_on: BTreeMap::new(),
        cap_add: BTreeSet::new(),
        cap_drop: BTreeSet::new(),
        ulimits: BTreeMap::new(),
        sysctls: BTreeMap::new(),
        logging: LogLimits::default(),
        devices: Vec::new(),
    };
    let mut has_image = false;
    for (key, value) in &entries {
        let p = join(path, key);
        match *key {
            "image" => {
                if let Some(image) = ck.scalar(
                    value,
                    &p,
                    "an image reference such as \"registry:5000/web:1.0\"",
                ) {
                    if let Err(why) = crate::ImageRef::parse(image) {
                        ck.problem(
                            value,
                            &p,
                            format!("{image:?} is not an image reference: {why}; write e.g. \"registry:5000/team/web:1.0\""),
                        );
                    }
                    svc.image = image.to_string();
                    has_image = true;
                }
            }
            "command" => svc.command = ck.string_list(value, &p, true),
            "entrypoint" => svc.entrypoint = ck.string_list(value, &p, true),
            "environment" => svc.environment = environment(ck, value, &p),
            "volumes" => {
                for (i, item) in ck.seq(value, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if matches!(item.value, Value::Map(_)) {
                        ck.problem(
                            item,
                            &ip,
                            "the long volume syntax is not supported; write \"NAME:/path[:ro]\"",
                        );
                    } else if let Some(v) =
                        ck.field(item, &ip, "\"NAME:/path[:ro]\"", fields::parse_volume)
                    {
                        svc.volumes.push(v);
                    }
                }
            }
            "ports" => {
                for (i, item) in ck.seq(value, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if matches!(item.value, Value::Map(_)) {
                        ck.problem(item, &ip, "the long port syntax is not supported; write \"HOST:CONTAINER[/tcp|udp]\"");
                    } else if let Some(m) =
                        ck.field(item, &ip, "\"HOST:CONTAINER\"", fields::parse_port)
                    {
                        svc.ports.push(m);
                    }
                }
            }
            "restart" => {
                if let Some(r) = ck.field(value, &p, "a restart policy", fields::parse_restart) {
                    svc.restart = r;
                }
            }
            "healthcheck" => svc.healthcheck = healthcheck(ck, value, &p),
            "deploy" => svc.limits = deploy(ck, value, &p),
            "network_mode" => {
                if let Some(mode) = ck.scalar(value, &p, "\"host\"") {
                    if mode == "host" {
                        svc.network_mode = NetworkMode::Host;
                    } else {
                        ck.problem(value, &p, format!("{mode:?} is not supported; only \"host\" is (leave it out for the app's own network)"));
                    }
                }
            }
            "secrets" => {
                for (i, item) in ck.seq(value, &p).iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(name) = ck.scalar(item, &ip, "a secret name") {
                        if secrets.contains(name) {
                            svc.secrets.push(name.to_string());
                        } else {
                            ck.problem(item, &ip, format!("secret {name:?} is not declared in the top-level `secrets`; add it there"));
                        }
                    }
                }
            }
            "working_dir" => {
                if let Some(dir) = ck.scalar(value, &p, "an absolute path such as \"/app\"") {
                    if !dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0') {
                        ck.problem(
                            value,
                            &p,
                            format!("{dir:?} is not an absolute path; write e.g. \"/app\""),
                        );
                    } else {
                        svc.working_dir = Some(dir.to_string());
                    }
                }
            }
            "hostname" => {
                if let Some(name) = ck.scalar(value, &p, "a host name such as \"web\"") {
                    if valid_hostname(name) {
                        svc.hostname = Some(name.to_string());
                    } else {
                        ck.problem(value, &p, format!("{name:?} is not a host name: use labels of 1-63 letters, digits and '-' (not first or last) separated by '.', at most 253 characters"));
                    }
                }
            }
            "read_only" => match ck.scalar(value, &p, "true or false") {
                Some("true") => svc.read_only = true,
                Some("false") => svc.read_only = false,
                Some(other) => ck.problem(value, &p, format!("{other:?} is not true or false")),
                None => {}
            },
            _ => unreachable!("keys are checked against SERVICE_KEYS"),
        }
    }
    if !has_image && !entries.iter().any(|(k, _)| *k == "image") {
        ck.problem(
            node,
            &join(path, "image"),
            "is missing; every service needs an image",
        );
    }
    if svc.network_mode == NetworkMode::Private {
        for (i, port) in svc.ports.iter().enumerate() {
            if port.host_ip.is_some_and(|ip| ip.is_ipv6()) {
                let node = list_item(&entries, "ports", i).unwrap_or(node);
                ck.problem(node, &format!("{path}.ports[{i}]"), format!(
                    "app networks are IPv4-only, so host address {} cannot reach the service; publish on an IPv4 address or leave the address out (\"{}:{}\")",
                    port.host_ip.map(|ip| ip.to_string()).unwrap_or_default(), port.host_port, port.container_port
                ));
            }
        }
    }
    if svc.network_mode == NetworkMode::Host {
        for (i, port) in svc.ports.iter().enumerate() {
            if port.host_port != port.container_port {
                let node = entries
                    .iter()
                    .find(|(k, _)| *k == "ports")
                    .map(|(_, n)| *n)
                    .unwrap_or(node);
                ck.problem(node, &format!("{path}.ports[{i}]"), format!(
                    "with network_mode: host the service listens on the host directly, so host port {} cannot map to {}; write \"{}:{}\"",
                    port.host_port, port.container_port, port.container_port, port.container_port
                ));
            }
        }
    }
    (ck.problems.len() == before).then_some(svc)
}
