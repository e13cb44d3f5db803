//! Validation of the service keys that are lists of entries: `volumes`, `ports` and `secrets`.

use std::collections::BTreeSet;

use super::fields;
use super::parse::{Checker, Site};
use super::yaml::{Node, Value};
use super::{PortMapping, VolumeMount};

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

/// `ports`; `sites` gets where each was written.
pub(super) fn ports<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    sites: &mut Vec<Site<'n>>,
) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for item in items(ck, node, path, usize::MAX) {
        if matches!(item.node.value, Value::Map(_)) {
            ck.problem_at(
                &item,
                "the long port syntax is not supported; write \"HOST:CONTAINER[/tcp|udp]\"",
            );
        } else if let Some(m) = ck.field(
            item.node,
            &item.path,
            "\"HOST:CONTAINER\"",
            fields::parse_port,
        ) {
            out.push(m);
            sites.push(item);
        }
    }
    out
}

/// A service's `secrets`: names declared at top level.
pub(super) fn secrets(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    declared: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for item in items(ck, node, path, usize::MAX) {
        let Some(name) = ck.scalar(item.node, &item.path, "a secret name") else {
            continue;
        };
        if declared.contains(name) {
            out.push(name.to_string());
        } else {
            ck.problem_at(
                &item,
                format!("secret {name:?} is not declared in the top-level `secrets`; add it there"),
            );
        }
    }
    out
}
