//! Secrets and configs, the files an app gets without a volume: the top-level declarations
//! (`secrets: {NAME: {}}`, values from central; `configs: {NAME: {content: ...}}`, the text in
//! the file itself) and each service's mounts of them, short (`[NAME]`) or long (`source`,
//! `target`, `uid`, `gid`, `mode`), with no two files or mounts at one path.

use std::collections::{BTreeMap, BTreeSet};

use super::fields::{self, FileMountError};
use super::parse::{join, Checker, Site, Sites};
use super::yaml::{Node, Value};
use super::{FileMount, ServiceSpec, DEFAULT_FILE_MODE, MAX_CONFIG_BYTES};

/// Most `secrets` or `configs` entries of a service.
const MAX_FILE_MOUNTS: usize = 64;

const MOUNT_KEYS: &[&str] = &["source", "target", "uid", "gid", "mode"];
const CONFIG_KEYS: &[&str] = &["content"];

/// Keys of a top-level config that Compose knows and a device cannot honour, with why.
const REFUSED_CONFIG_KEYS: &[(&str, &str)] = &[
    ("file", "a device has no host files to read a config from; write the file's text under `content` (variables such as ${CAIRN_SITE} are put in)"),
    ("environment", "configs are not read from a variable; write the file's text under `content`, with ${VAR} where a variable's value belongs"),
    ("external", "a device has no config store; write the file's text under `content`"),
    ("name", "the key under `configs` is the config's name; leave `name` out"),
];

/// Container paths the runtime mounts files at itself.
const RUNTIME_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];

/// Which of the two kinds of file a mount is.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// Where a file goes when its `target` is not absolute (or not given).
    fn dir(self) -> &'static str {
        match self {
            Kind::Secret => "/run/secrets",
            Kind::Config => "/",
        }
    }

    /// The top-level key it is declared under.
    fn top_key(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Config => "configs",
        }
    }
}

/// Top-level `secrets`: names mapped to nothing (`NAME:` or `NAME: {}`), since every value comes
/// from central.
pub(super) fn declared_secrets(ck: &mut Checker, node: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if node.is_null() {
        return out;
    }
    for (name, value) in ck.map(node, "secrets", None).unwrap_or_default() {
        let path = join("secrets", name);
        if let Err(error) = fields::check_secret_name(name) {
            ck.problem(value, &path, error.to_string());
            continue;
        }
        let entries = match &value.value {
            _ if value.is_null() => Vec::new(),
            Value::Map(_) => ck.map(value, &path, None).unwrap_or_default(),
            _ => {
                let message = format!(
                    "secret values are provided by central; write `{name}: {{}}` or `{name}:`"
                );
                ck.problem(value, &path, message);
                continue;
            }
        };
        let mut refused = false;
        for (key, at) in entries.iter().filter(|(k, _)| !k.starts_with("x-")) {
            let why = match *key {
                "file" => "secret values are provided by central, not read from a file on the device",
                "environment" => "secret values are provided by central, not taken from a variable",
                "external" | "name" => "secret values are provided by central under the secret's name, so `external` and `name` are not needed",
                _ => "secret values are provided by central and a secret takes no options",
            };
            let message = format!("{why}; leave {key:?} out and write `{name}: {{}}` or `{name}:`");
            ck.problem(at, &join(&path, key), message);
            refused = true;
        }
        if !refused {
            out.insert(name.to_string());
        }
    }
    out
}

/// Top-level `configs`: names mapped to `{content: TEXT}`; the text is already interpolated.
pub(super) fn declared_configs(ck: &mut Checker, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if node.is_null() {
        return out;
    }
    for (name, value) in ck.map(node, "configs", None).unwrap_or_default() {
        let path = join("configs", name);
        if let Err(error) = fields::check_config_name(name) {
            ck.problem(value, &path, error.to_string());
            continue;
        }
        if !matches!(value.value, Value::Map(_)) {
            let message = format!(
                "must be a mapping with the file's text, e.g. `{name}: {{content: \"...\"}}`"
            );
            ck.problem(value, &path, message);
            continue;
        }
        let Some(entries) = ck.map_refusing(value, &path, Some(CONFIG_KEYS), REFUSED_CONFIG_KEYS)
        else {
            continue;
        };
        let Some((_, content)) = entries.iter().find(|(k, _)| *k == "content") else {
            let message = "is missing; give the file's text, e.g. `content: \"key=value\"`";
            ck.problem(value, &join(&path, "content"), message);
            continue;
        };
        let content_path = join(&path, "content");
        let what = "the file's text (write \"\" for an empty file)";
        let Some(text) = ck.scalar(content, &content_path, what) else {
            continue;
        };
        if text.len() > MAX_CONFIG_BYTES {
            let message = format!(
                "is {} bytes; a config holds at most {} KiB, put larger files in the image or a volume",
                text.len(),
                MAX_CONFIG_BYTES >> 10
            );
            ck.problem(content, &content_path, message);
            continue;
        }
        out.insert(name.to_string(), text.to_string());
    }
    out
}

/// A service's `secrets` or `configs` (`kind`): names declared at top level (`declared`), or
/// long-syntax mappings; `sites` gets where each mount was written.
pub(super) fn mounts<'n>(
    ck: &mut Checker,
    node: &'n Node,
    path: &str,
    kind: Kind,
    declared: &dyn Fn(&str) -> bool,
    sites: &mut Vec<Site<'n>>,
) -> Vec<FileMount> {
    let items = ck.seq(node, path);
    if items.len() > MAX_FILE_MOUNTS {
        let message = format!(
            "has {} entries; at most {MAX_FILE_MOUNTS} are allowed",
            items.len()
        );
        ck.problem(node, path, message);
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let site = Site {
            node: item,
            path: format!("{path}[{i}]"),
        };
        let mount = if matches!(item.value, Value::Map(_)) {
            long_mount(ck, &site, kind)
        } else {
            let what = format!("a {} name", kind.name());
            let name = ck.scalar(item, &site.path, &what);
            name.and_then(|name| short_mount(ck, &site, kind, name))
        };
        let Some(mount) = mount else {
            continue;
        };
        if declared(&mount.source) {
            out.push(mount);
            sites.push(site);
        } else {
            let message = format!(
                "{} {:?} is not declared in the top-level `{}`; add it there",
                kind.name(),
                mount.source,
                kind.top_key()
            );
            ck.problem_at(&site, message);
        }
    }
    out
}

/// `- NAME`: the file `NAME` in the kind's directory, owned by root, [`DEFAULT_FILE_MODE`].
fn short_mount(ck: &mut Checker, site: &Site, kind: Kind, name: &str) -> Option<FileMount> {
    let target = fields::file_target(name, kind.dir());
    let target = target
        .map_err(|e| ck.problem_at(site, e.to_string()))
        .ok()?;
    Some(FileMount {
        source: name.to_string(),
        target,
        uid: 0,
        gid: 0,
        mode: DEFAULT_FILE_MODE,
    })
}

/// `{source, target, uid, gid, mode}`: `source` required, the rest as [`short_mount`] unless
/// given.
fn long_mount(ck: &mut Checker, site: &Site, kind: Kind) -> Option<FileMount> {
    let entries = ck.map(site.node, &site.path, Some(MOUNT_KEYS))?;
    let before = ck.problems.len();
    let mut texts: [Option<&str>; 5] = [None; 5];
    for (key, value) in &entries {
        let p = join(&site.path, key);
        let i = MOUNT_KEYS.iter().position(|k| k == key)?;
        texts[i] = ck.scalar(value, &p, &mount_key_what(key, kind));
    }
    let [source, target, uid, gid, mode] = texts;
    let Some(source) = source else {
        if ck.problems.len() == before {
            let message = format!(
                "is missing; name a {} declared in the top-level `{}`, e.g. `source: NAME`",
                kind.name(),
                kind.top_key()
            );
            ck.problem(site.node, &join(&site.path, "source"), message);
        }
        return None;
    };
    let node_of = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut check = |key: &str, result: Result<u32, FileMountError>| -> Option<u32> {
        result
            .map_err(|e| {
                let node = node_of(key).unwrap_or(site.node);
                ck.problem(node, &join(&site.path, key), e.to_string())
            })
            .ok()
    };
    let uid = uid.map_or(Some(0), |t| check("uid", fields::parse_file_id(t, "uid")));
    let gid = gid.map_or(Some(0), |t| check("gid", fields::parse_file_id(t, "gid")));
    let mode = mode.map_or(Some(DEFAULT_FILE_MODE), |t| {
        check("mode", fields::parse_file_mode(t))
    });
    let target = match fields::file_target(target.unwrap_or(source), kind.dir()) {
        Ok(target) => Some(target),
        Err(e) => {
            let node = node_of("target").unwrap_or(site.node);
            ck.problem(node, &join(&site.path, "target"), e.to_string());
            None
        }
    };
    if ck.problems.len() > before {
        return None;
    }
    Some(FileMount {
        source: source.to_string(),
        target: target?,
        uid: uid?,
        gid: gid?,
        mode: mode?,
    })
}

/// What a long-syntax key holds, for "is empty; give ...".
fn mount_key_what(key: &str, kind: Kind) -> String {
    match key {
        "source" => format!("the name of a {} declared at top level", kind.name()),
        "target" => "a file name or an absolute path".to_string(),
        "mode" => "an octal mode such as 0440".to_string(),
        _ => "a number such as 1000".to_string(),
    }
}

/// A service's secret and config files may not share a path with each other, with a volume or
/// tmpfs mount, or with the files the runtime mounts: report each later one at its entry.
pub(super) fn check_targets(ck: &mut Checker, svc: &ServiceSpec, sites: &Sites) {
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for v in &svc.volumes {
        let what = format!("volume {:?} is mounted", v.volume);
        taken.insert(fields::normalize_path(&v.target), what);
    }
    for t in &svc.tmpfs {
        taken.insert(t.target.clone(), "a tmpfs is mounted".to_string());
    }
    for file in RUNTIME_FILES {
        taken.insert(
            file.to_string(),
            "the runtime mounts its own file".to_string(),
        );
    }
    let secrets = svc.secrets.iter().zip(&sites.secrets);
    let configs = svc.configs.iter().zip(&sites.configs);
    let kinds = std::iter::repeat(Kind::Secret).zip(secrets);
    let all = kinds.chain(std::iter::repeat(Kind::Config).zip(configs));
    for (kind, (mount, site)) in all {
        if let Some(what) = taken.get(&mount.target) {
            let message = format!(
                "{} is already where {what}; give this {} another `target`",
                mount.target,
                kind.name()
            );
            ck.problem_at(site, message);
            continue;
        }
        let what = format!("{} {:?} is mounted", kind.name(), mount.source);
        taken.insert(mount.target.clone(), what);
    }
}
