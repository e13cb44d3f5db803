//! The agent's module graph stays acyclic and layered as `src/lib.rs` documents it: every
//! `crate::<module>` a module names (outside comments) must be in a layer above its own, and no
//! module but `agent` adds methods to `Agent`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`update/download.rs` → `update`); `None` for the
/// crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Code without its `//` comments (doc links name modules without using them).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
}

/// The modules each module names as `crate::<module>`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for line in code_lines(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                let preceded_by_word = line[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                if !name.is_empty() && name != module && !preceded_by_word {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// The layers the crate doc lists: lines `//! N. ...` naming modules in backticks.
fn documented_layers(lib: &str) -> Vec<BTreeSet<String>> {
    lib.lines()
        .filter_map(|line| line.strip_prefix("//! "))
        .filter(|line| {
            line.split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .map(|line| {
            line.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = dependencies(&src());
    assert!(graph.len() > 20, "too few modules found: {graph:?}");
    assert_eq!(
        find_cycle(&graph),
        None,
        "modules use each other in a cycle"
    );
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn every_module_uses_only_the_layers_above_it_as_the_crate_doc_says() {
    let src = src();
    let graph = dependencies(&src);
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let layers = documented_layers(&lib);
    assert!(layers.len() >= 3, "no layer list in lib.rs: {layers:?}");
    let layer_of = |module: &str| layers.iter().position(|l| l.contains(module));
    let mut problems = Vec::new();
    for (module, uses) in &graph {
        let Some(mine) = layer_of(module) else {
            problems.push(format!("`{module}` is in no layer of lib.rs's doc"));
            continue;
        };
        for used in uses {
            match layer_of(used) {
                Some(theirs) if theirs < mine => {}
                Some(theirs) => problems.push(format!(
                    "`{module}` (layer {}) uses `{used}` (layer {})",
                    mine + 1,
                    theirs + 1
                )),
                None => problems.push(format!("`{used}` is in no layer of lib.rs's doc")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn only_the_agent_module_adds_methods_to_agent() {
    let src = src();
    let offenders: Vec<_> = sources(&src)
        .into_iter()
        .filter(|file| !file.ends_with("agent.rs"))
        .filter(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let found = code_lines(&text).any(|line| {
                let line = line.trim_start();
                [
                    "impl Agent {",
                    "impl crate::Agent {",
                    "impl crate::agent::Agent {",
                ]
                .iter()
                .any(|inherent| line.starts_with(inherent))
            });
            found
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "impl Agent outside agent.rs: {offenders:?}"
    );
}
