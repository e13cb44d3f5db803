//! Validation of the service keys that are lists of entries: `volumes`, `ports`, `tmpfs`,
//! `devices`, `cap_add` and `cap_drop` (`secrets` and `configs` are in `files.rs`).

use std::collections::BTreeSet;

use super::fields::{self, FieldError, PortError, MAX_PORTS_PER_APP, MAX_PORTS_PER_SERVICE};
use super::parse::{join, Checker, Site};
use super::yaml::{Node, Value};
use super::{DeviceMapping, PortMapping, Protocol, TmpfsMount, VolumeMount};

/// Most `tmpfs` mounts of a service.
const MAX_TMPFS: usize = 16;

/// Most `devices` of a service.
const MAX_DEVICES: usize = 64;

const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const DEVICE_KEYS: &[&str] = &["source", "target", "permissions"];

/// The items of a list with their paths; a problem (and none) when `node` is not a list or has
/// more than `max` items.
fn items<'n>(ck: &mut Checker, node: &'n Node, path: &str, max: usize) -> Vec<Site<'n>> {
    let items = ck.seq(node, path);
    if items.len() > max {
        ck.problem(
            node,
            path,
            format!("has {} entries; at most {max} are allowed", items.len()),
        );
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .map(|(i, node)| Site {
            node,
            path: format!("{path}[{i}]"),
        })
        .collect()
}

/// `volumes`: named volumes only; `sites` gets where each was written.
pub(super) fn volumes<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    sites: &mut Vec<Site<'n>>,
) -> Vec<VolumeMount> {
    let mut out = Vec::new();
    for item in items(ck, node, path, usize::MAX) {
        if matches!(item.node.value, Value::Map(_)) {
            ck.problem_at(
                &item,
                "the long volume syntax is not supported; write \"NAME:/path[:ro]\"",
            );
        } else if let Some(v) = ck.field(
            item.node,
            &item.path,
            "\"NAME:/path[:ro]\"",
            fields::parse_volume,
        ) {
            out.push(v);
            sites.push(item);
        }
    }
    out
}

/// `ports`, short or long syntax, one mapping per port; `sites` gets where each was written and
/// `ports_left` (how many more the app may publish) shrinks.
pub(super) fn ports<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    sites: &mut Vec<Site<'n>>,
    ports_left: &mut usize,
) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for item in items(ck, node, path, usize::MAX) {
        let mappings = if matches!(item.node.value, Value::Map(_)) {
            long_port(ck, item.node, &item.path)
        } else {
            ck.field(
                item.node,
                &item.path,
                "\"HOST:CONTAINER\"",
                fields::parse_port,
            )
        };
        let Some(mappings) = mappings else {
            continue;
        };
        let count = mappings.len();
        if out.len() + count > MAX_PORTS_PER_SERVICE {
            ck.problem_at(&item, format!("the service would publish more than {MAX_PORTS_PER_SERVICE} ports; publish fewer"));
            break;
        }
        if count > *ports_left {
            ck.problem_at(
                &item,
                format!("the app would publish more than {MAX_PORTS_PER_APP} ports; publish fewer"),
            );
            break;
        }
        *ports_left -= count;
        sites.extend(std::iter::repeat_n(item, count));
        out.extend(mappings);
    }
    out
}

fn port_part(reason: PortError) -> FieldError {
    FieldError::PortPart { reason }
}

/// A long-syntax port: `{target, published, host_ip, protocol, mode}`.
fn long_port(ck: &mut Checker, node: &Node, path: &str) -> Option<Vec<PortMapping>> {
    let entries = ck.map(node, path, Some(PORT_KEYS))?;
    let before = ck.problems.len();
    let (mut target, mut published, mut host_ip, mut protocol) = (None, None, None, Protocol::Tcp);
    for (key, value) in &entries {
        let p = join(path, key);
        match *key {
            "target" => {
                target = ck.field(value, &p, "a container port such as 80", |t| {
                    fields::parse_port_range(t, |text| PortError::ContainerPort { text })
                        .map_err(port_part)
                });
            }
            "published" => {
                published = ck.field(value, &p, "a host port such as \"8080\"", |t| {
                    fields::parse_port_range(t, |text| PortError::HostPort { text })
                        .map_err(port_part)
                });
            }
            "host_ip" => {
                host_ip = ck.field(value, &p, "an IP address", |t| {
                    fields::parse_host_ip(t).map_err(port_part)
                });
            }
            "protocol" => {
                let parsed = ck.field(value, &p, "tcp or udp", |t| {
                    fields::parse_protocol(t).map_err(port_part)
                });
                protocol = parsed.unwrap_or(protocol);
            }
            _ => {
                ck.field(value, &p, "host or ingress", fields::parse_port_mode);
            }
        }
    }
    let has = |key: &str| entries.iter().any(|(k, _)| *k == key);
    if !has("target") {
        ck.problem(
            node,
            &join(path, "target"),
            "is missing; give the container port, e.g. 80",
        );
    }
    if !has("published") {
        ck.problem(
            node,
            &join(path, "published"),
            "is missing: host ports are never picked at random here; give one, e.g. \"8080\"",
        );
    }
    let (Some(target), Some(published)) = (target, published) else {
        return None;
    };
    if ck.problems.len() > before {
        return None;
    }
    let mappings = fields::expand_ports(host_ip, published, target, protocol);
    mappings
        .map_err(|reason| ck.problem(node, path, port_part(reason).to_string()))
        .ok()
}

/// `tmpfs`: a path or a list of them, none on a volume's mount point or given twice.
pub(super) fn tmpfs(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    volumes: &[VolumeMount],
) -> Vec<TmpfsMount> {
    let entries = match &node.value {
        Value::Scalar { .. } if !node.is_null() => vec![Site {
            node,
            path: path.to_string(),
        }],
        _ => items(ck, node, path, MAX_TMPFS),
    };
    let mut out: Vec<TmpfsMount> = Vec::new();
    for item in entries {
        let Some(mount) = ck.field(
            item.node,
            &item.path,
            "\"/path[:size=64m,mode=1777]\"",
            fields::parse_tmpfs,
        ) else {
            continue;
        };
        let target = &mount.target;
        let volume = volumes
            .iter()
            .find(|v| fields::normalize_path(&v.target) == *target);
        if let Some(volume) = volume {
            let message = format!(
                "{target} is already where volume {:?} is mounted; use another path",
                volume.volume
            );
            ck.problem_at(&item, message);
        } else if out.iter().any(|m| m.target == *target) {
            ck.problem_at(&item, format!("{target} is mounted twice; keep one"));
        } else {
            out.push(mount);
        }
    }
    out
}

/// `devices`, short or long syntax, each container path once.
pub(super) fn devices(ck: &mut Checker, node: &Node, path: &str) -> Vec<DeviceMapping> {
    let mut out: Vec<DeviceMapping> = Vec::new();
    for item in items(ck, node, path, MAX_DEVICES) {
        let device = if matches!(item.node.value, Value::Map(_)) {
            long_device(ck, item.node, &item.path)
        } else {
            let what = "\"/dev/HOST[:/dev/CONTAINER[:rwm]]\"";
            ck.field(item.node, &item.path, what, fields::parse_device)
        };
        let Some(device) = device else {
            continue;
        };
        if out.iter().any(|d| d.container == device.container) {
            let message = format!(
                "{} is given twice in the container; keep one",
                device.container
            );
            ck.problem_at(&item, message);
        } else {
            out.push(device);
        }
    }
    out
}

/// A long-syntax device: `{source, target, permissions}`.
fn long_device(ck: &mut Checker, node: &Node, path: &str) -> Option<DeviceMapping> {
    let entries = ck.map(node, path, Some(DEVICE_KEYS))?;
    let mut parts = [None; 3];
    for (key, value) in &entries {
        let i = DEVICE_KEYS.iter().position(|k| k == key)?;
        parts[i] = Some(ck.scalar(value, &join(path, key), "a path or permissions")?);
    }
    let [Some(source), target, permissions] = parts else {
        ck.problem(
            node,
            &join(path, "source"),
            "is missing; give the device on the host, e.g. /dev/ttyUSB0",
        );
        return None;
    };
    let mapping = fields::device_mapping(
        source,
        target.unwrap_or(source),
        permissions.unwrap_or("rwm"),
    );
    mapping
        .map_err(|reason| ck.problem(node, path, reason.to_string()))
        .ok()
}

/// `cap_add` (`add`) or `cap_drop`: capability names, each once and none in `other` (the
/// capabilities added, when these are dropped).
pub(super) fn capabilities(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    add: bool,
    other: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for item in items(ck, node, path, usize::MAX) {
        let what = "a capability such as \"NET_ADMIN\"";
        let Some(cap) = ck.field(item.node, &item.path, what, |t| {
            fields::parse_capability(t, add)
        }) else {
            continue;
        };
        if other.contains(&cap) {
            ck.problem_at(&item, format!("{cap} is both added and dropped; keep one"));
        } else if !out.insert(cap.clone()) {
            ck.problem_at(&item, format!("{cap} is listed twice; keep one"));
        }
    }
    out
}
