//! Validation of the service keys that are mappings (or `KEY=VALUE` lists): `environment`,
//! `labels`, `sysctls`, `extra_hosts`, `healthcheck`, `deploy`, `depends_on`, `ulimits` and
//! `logging`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::fields::{self, FieldError};
use super::parse::{join, Checker, Site};
use super::yaml::{Node, Value, MAX_NODES};
use super::{DependsOn, ExtraHost, HealthCheck, HealthTest, LogLimits, ResourceLimits, Ulimit};

const HEALTH_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];

/// One entry of a `KEY=VALUE` list or of a mapping, with where it was written.
struct KeyValue<'n> {
    node: &'n Node,
    path: String,
    key: &'n str,
    /// `None` for a list item without the separator or an empty mapping value.
    value: Option<&'n str>,
}

/// How a key's `KEY=VALUE` list is written: an item (for messages), how an item splits into key
/// and value, and the most entries it may have.
struct KeyValueSyntax {
    item: &'static str,
    split: fn(&str) -> Option<(&str, &str)>,
    max: usize,
}

fn split_at_equals(text: &str) -> Option<(&str, &str)> {
    text.split_once('=')
}

/// `HOST=IP`, or `HOST:IP` as older files write it (`HOST:::1` too: the host has no ':').
fn split_host(text: &str) -> Option<(&str, &str)> {
    text.split_once('=').or_else(|| text.split_once(':'))
}

/// Environment variables are bounded by the document's node budget alone.
const ENVIRONMENT: KeyValueSyntax = KeyValueSyntax {
    item: "\"NAME=VALUE\"",
    split: split_at_equals,
    max: MAX_NODES,
};
const LABELS: KeyValueSyntax = KeyValueSyntax {
    item: "\"KEY=VALUE\"",
    split: split_at_equals,
    max: 128,
};
const SYSCTLS: KeyValueSyntax = KeyValueSyntax {
    item: "\"NAME=VALUE\"",
    split: split_at_equals,
    max: 64,
};
const EXTRA_HOSTS: KeyValueSyntax = KeyValueSyntax {
    item: "\"HOST=IP\"",
    split: split_host,
    max: 256,
};

/// The entries of a list of `KEY=VALUE` strings or of a mapping of scalars; none (with a
/// problem) past `syntax.max`.
fn key_values<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    syntax: &KeyValueSyntax,
) -> Vec<KeyValue<'n>> {
    let mut out = Vec::new();
    match &node.value {
        Value::Map(_) => {
            for (key, value) in ck.map(node, path, None).unwrap_or_default() {
                let path = join(path, key);
                match value.as_scalar() {
                    Some(text) => out.push(KeyValue {
                        node: value,
                        path,
                        key,
                        value: (!value.is_null()).then_some(text),
                    }),
                    None => ck.problem(
                        value,
                        &path,
                        format!("must be a string, found {}", value.kind()),
                    ),
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                if let Some(text) = ck.scalar(item, &path, syntax.item) {
                    let (key, value) = match (syntax.split)(text) {
                        Some((key, value)) => (key, Some(value)),
                        None => (text, None),
                    };
                    out.push(KeyValue {
                        node: item,
                        path,
                        key,
                        value,
                    });
                }
            }
        }
        Value::Scalar { .. } => ck.problem(
            node,
            path,
            format!(
                "must be a mapping or a list of {}, found {}",
                syntax.item,
                node.kind()
            ),
        ),
    }
    if out.len() > syntax.max {
        ck.problem(
            node,
            path,
            format!(
                "has {} entries; at most {} are allowed",
                out.len(),
                syntax.max
            ),
        );
        out.clear();
    }
    out
}

/// Check each entry with `check` (which gives the value to keep or what is wrong) and collect
/// them, refusing a key set twice.
fn checked_map(
    ck: &mut Checker,
    entries: Vec<KeyValue>,
    check: impl Fn(&str, Option<&str>) -> Result<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in entries {
        match check(entry.key, entry.value) {
            Ok(value) => {
                if out.insert(entry.key.to_string(), value).is_some() {
                    let message = format!("{} is set twice; keep one", entry.key);
                    ck.problem(entry.node, &entry.path, message);
                }
            }
            Err(message) => ck.problem(entry.node, &entry.path, message),
        }
    }
    out
}

pub(super) fn environment(ck: &mut Checker, node: &Node, path: &str) -> BTreeMap<String, String> {
    let entries = key_values(ck, node, path, &ENVIRONMENT);
    checked_map(ck, entries, |key, value| {
        if key.is_empty() || key.contains('=') || key.chars().any(char::is_whitespace) {
            return Err(format!("{key:?} is not a variable name"));
        }
        value.map(str::to_string).ok_or_else(|| {
            format!("{key} has no value; write {key}=VALUE (values are not taken from the device's environment)")
        })
    })
}

/// `labels`: a label written without a value has an empty one, as in Compose.
pub(super) fn labels(ck: &mut Checker, node: &Node, path: &str) -> BTreeMap<String, String> {
    let entries = key_values(ck, node, path, &LABELS);
    checked_map(ck, entries, |key, value| {
        let value = value.unwrap_or_default();
        fields::check_label(key, value).map_err(|e| e.to_string())?;
        Ok(value.to_string())
    })
}

/// `sysctls`; `host_network`: the service uses the host's network, which `net.*` would change.
pub(super) fn sysctls(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    host_network: bool,
) -> BTreeMap<String, String> {
    let entries = key_values(ck, node, path, &SYSCTLS);
    checked_map(ck, entries, |key, value| {
        let value = value.ok_or_else(|| format!("{key} has no value; write {key}=VALUE"))?;
        fields::check_sysctl(key, value, host_network).map_err(|e| e.to_string())?;
        Ok(value.to_string())
    })
}

/// `extra_hosts`: a host may be listed with several addresses, each pair once.
pub(super) fn extra_hosts(ck: &mut Checker, node: &Node, path: &str) -> Vec<ExtraHost> {
    let mut out: Vec<ExtraHost> = Vec::new();
    for entry in key_values(ck, node, path, &EXTRA_HOSTS) {
        let key = entry.key;
        let parsed = match entry.value {
            None => Err(format!("{key:?} has no address; write \"{key}=IP\"")),
            Some(address) => fields::parse_extra_host(key, address).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(host) if out.contains(&host) => ck.problem(
                entry.node,
                &entry.path,
                format!("{} {} is listed twice; keep one", host.host, host.ip),
            ),
            Ok(host) => out.push(host),
            Err(message) => ck.problem(entry.node, &entry.path, message),
        }
    }
    out
}

pub(super) fn healthcheck(ck: &mut Checker, node: &Node, path: &str) -> Option<HealthCheck> {
    let entries = ck.map(node, path, Some(HEALTH_KEYS))?;
    let mut check = HealthCheck {
        test: HealthTest::Exec(Vec::new()),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        retries: 3,
        start_period: Duration::ZERO,
    };
    let mut disabled = false;
    let mut has_test = false;
    for (key, value) in entries {
        let p = join(path, key);
        match key {
            "test" => match health_test(ck, value, &p) {
                Some(Some(test)) => {
                    check.test = test;
                    has_test = true;
                }
                Some(None) => disabled = true,
                None => has_test = true,
            },
            "interval" | "timeout" | "start_period" => {
                if let Some(d) = ck.field(value, &p, "a duration", fields::parse_duration) {
                    if key != "start_period" && d.is_zero() {
                        ck.problem(value, &p, "must be longer than 0s");
                    }
                    match key {
                        "interval" => check.interval = d,
                        "timeout" => check.timeout = d,
                        _ => check.start_period = d,
                    }
                }
            }
            "retries" => {
                let parse = |t: &str| {
                    t.parse::<u32>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| FieldError::Retries {
                            text: t.to_string(),
                        })
                };
                if let Some(n) = ck.field(value, &p, "a number", parse) {
                    check.retries = n;
                }
            }
            "disable" => match value.as_scalar() {
                Some("true") => disabled = true,
                Some("false") => {}
                _ => ck.problem(value, &p, "must be true or false"),
            },
            _ => unreachable!("keys are checked against HEALTH_KEYS"),
        }
    }
    if disabled {
        return None;
    }
    if !has_test {
        ck.problem(
            node,
            &join(path, "test"),
            "is missing; give the command, e.g. [\"CMD\", \"wget\", \"-q\", \"http://127.0.0.1/\"]",
        );
        return None;
    }
    Some(check)
}

/// `Some(None)` for `["NONE"]`, `None` after a problem.
fn health_test(ck: &mut Checker, node: &Node, path: &str) -> Option<Option<HealthTest>> {
    if let Value::Scalar { text, .. } = &node.value {
        if node.is_null() || text.trim().is_empty() {
            ck.problem(node, path, "is empty; give a command");
            return None;
        }
        return Some(Some(HealthTest::Shell(text.clone())));
    }
    let words = ck.string_list(node, path, false)?;
    let usage = "must start with \"CMD\" (then the program and its arguments), \"CMD-SHELL\" (then one shell command) or be [\"NONE\"]";
    match words.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => {
            Some(Some(HealthTest::Exec(rest.to_vec())))
        }
        Some((kind, [cmd])) if kind == "CMD-SHELL" => Some(Some(HealthTest::Shell(cmd.clone()))),
        Some((kind, [])) if kind == "NONE" => Some(None),
        _ => {
            ck.problem(node, path, usage);
            None
        }
    }
}

pub(super) fn deploy(ck: &mut Checker, node: &Node, path: &str) -> ResourceLimits {
    let mut limits = ResourceLimits::default();
    let Some(deploy) = ck.map(node, path, Some(&["resources"])) else {
        return limits;
    };
    for (_, resources) in deploy {
        let p = join(path, "resources");
        for (_, lims) in ck.map(resources, &p, Some(&["limits"])).unwrap_or_default() {
            let p = join(&p, "limits");
            for (key, value) in ck
                .map(lims, &p, Some(&["cpus", "memory"]))
                .unwrap_or_default()
            {
                let kp = join(&p, key);
                if key == "cpus" {
                    limits.cpu_millis = ck.field(value, &kp, "a CPU count", fields::parse_cpus);
                } else {
                    limits.memory_bytes =
                        ck.field(value, &kp, "a memory size", fields::parse_memory);
                }
            }
        }
    }
    limits
}

/// `depends_on`: a list of service names (each started first) or a mapping of names to
/// `{condition, restart, required}`; `sites` gets where each was written, for the app-wide
/// checks.
pub(super) fn depends_on<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    sites: &mut BTreeMap<String, Site<'n>>,
) -> BTreeMap<String, DependsOn> {
    let mut out = BTreeMap::new();
    let mut add = |ck: &mut Checker, name: &str, condition, site: Site<'n>| {
        if out.insert(name.to_string(), condition).is_some() {
            ck.problem_at(&site, format!("{name} is listed twice; keep one"));
        } else {
            sites.insert(name.to_string(), site);
        }
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                if let Some(name) = ck.scalar(item, &path, "a service name") {
                    let site = Site { node: item, path };
                    add(ck, name, DependsOn::ServiceStarted, site);
                }
            }
        }
        Value::Map(_) => {
            for (name, value) in ck.map(node, path, None).unwrap_or_default() {
                let path = join(path, name);
                if let Some(condition) = dependency(ck, value, &path) {
                    add(ck, name, condition, Site { node: value, path });
                }
            }
        }
        Value::Scalar { .. } => ck.problem(
            node,
            path,
            format!(
                "must be a list of service names or a mapping of service names to {{condition: ...}}, found {}",
                node.kind()
            ),
        ),
    }
    out
}

/// One long-syntax `depends_on` entry (empty: the service is started first).
fn dependency(ck: &mut Checker, node: &Node, path: &str) -> Option<DependsOn> {
    if node.is_null() {
        return Some(DependsOn::ServiceStarted);
    }
    let entries = ck.map(node, path, Some(&["condition", "restart", "required"]))?;
    let mut condition = Some(DependsOn::ServiceStarted);
    for (key, value) in entries {
        let p = join(path, key);
        match key {
            "condition" => {
                condition = ck.field(value, &p, "a condition", fields::parse_condition);
            }
            // Whether to restart the dependent when the dependency is updated: the agent
            // decides that from the spec, so the value is checked and not kept.
            "restart" => {
                ck.boolean(value, &p);
            }
            _ => {
                if ck.boolean(value, &p) == Some(false) {
                    ck.problem(value, &p, "required: false (start even without the dependency) is not supported: every dependency is a service of this app, which the agent starts first; remove `required`");
                }
            }
        }
    }
    condition
}

/// `ulimits`: names mapped to a number (soft and hard) or to `{soft, hard}`.
pub(super) fn ulimits(ck: &mut Checker, node: &Node, path: &str) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (name, value) in ck
        .map(node, path, Some(fields::ULIMITS))
        .unwrap_or_default()
    {
        let p = join(path, name);
        let limit = match &value.value {
            Value::Map(_) => soft_and_hard(ck, value, &p, name),
            _ => ck
                .field(value, &p, "a number", fields::parse_ulimit_value)
                .and_then(|n| checked(ck, value, &p, fields::check_ulimit(name, n, n))),
        };
        if let Some(limit) = limit {
            out.insert(name.to_string(), limit);
        }
    }
    out
}

fn soft_and_hard(ck: &mut Checker, node: &Node, path: &str, name: &str) -> Option<Ulimit> {
    let entries = ck.map(node, path, Some(&["soft", "hard"]))?;
    let mut value = |key: &str| {
        let (_, v) = entries.iter().find(|(k, _)| *k == key)?;
        ck.field(v, &join(path, key), "a number", fields::parse_ulimit_value)
    };
    let (soft, hard) = (value("soft"), value("hard"));
    if entries.len() < 2 {
        ck.problem(
            node,
            path,
            "needs both soft and hard, e.g. {soft: 1024, hard: 4096}",
        );
        return None;
    }
    let limit = fields::check_ulimit(name, soft?, hard?);
    checked(ck, node, path, limit)
}

/// The value of a check, or `None` after reporting its problem.
fn checked<T>(
    ck: &mut Checker,
    node: &Node,
    path: &str,
    result: Result<T, FieldError>,
) -> Option<T> {
    result
        .map_err(|e| ck.problem(node, path, e.to_string()))
        .ok()
}

/// `logging`: a driver that keeps logs on the device, and the limits of its files.
pub(super) fn logging(ck: &mut Checker, node: &Node, path: &str) -> LogLimits {
    let mut limits = LogLimits::default();
    let entries = ck.map(node, path, Some(&["driver", "options"]));
    for (key, value) in entries.unwrap_or_default() {
        let p = join(path, key);
        if key == "driver" {
            ck.field(
                value,
                &p,
                "\"json-file\" or \"local\"",
                fields::check_log_driver,
            );
            continue;
        }
        if value.is_null() {
            continue;
        }
        let options = ck.map(value, &p, Some(&["max-size", "max-file"]));
        for (option, value) in options.unwrap_or_default() {
            let p = join(&p, option);
            if option == "max-size" {
                limits.max_bytes =
                    ck.field(value, &p, "a size such as \"10m\"", fields::parse_log_size);
            } else {
                limits.max_files =
                    ck.field(value, &p, "a number from 1 to 20", fields::parse_log_files);
            }
        }
    }
    limits
}
