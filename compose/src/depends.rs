//! The app-wide checks of `depends_on`, once every service is read: each dependency is another
//! service of the app, one waited on with `service_healthy` has a health check, and no services
//! wait on each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};

use super::parse::{Checker, Sites};
use super::{AppSpec, DependsOn};

/// Most service names listed in a message about an unknown one.
const MAX_NAMES_LISTED: usize = 20;

/// Most services written out in a cycle; a longer one is shortened in the middle.
const MAX_CYCLE_SHOWN: usize = 12;

/// Check the `depends_on` of every service read. `names`: every service name written, so that a
/// service refused for its own problems is not also reported as unknown.
pub(super) fn check(
    ck: &mut Checker,
    app: &AppSpec,
    names: &BTreeSet<&str>,
    sites: &BTreeMap<String, Sites>,
) {
    for (name, svc) in &app.services {
        for (dep, condition) in &svc.depends_on {
            let site = &sites[name].depends_on[dep];
            if !names.contains(dep.as_str()) {
                ck.problem_at(site, unknown(dep, names));
            } else if *condition == DependsOn::ServiceHealthy
                && app
                    .services
                    .get(dep)
                    .is_some_and(|d| d.healthcheck.is_none())
            {
                ck.problem_at(site, format!("condition service_healthy needs a health check, and {dep} has none; give {dep} a healthcheck or wait for service_started"));
            }
        }
    }
    for (from, to, cycle) in cycles(app) {
        let site = &sites[from].depends_on[to];
        ck.problem_at(site, format!("{} is a cycle: these services would each wait for the next forever; remove one of these dependencies", show(&cycle)));
    }
}

fn unknown(dep: &str, names: &BTreeSet<&str>) -> String {
    let mut message = format!("{dep:?} is not a service of this app");
    if names.len() <= MAX_NAMES_LISTED {
        let listed: Vec<&str> = names.iter().copied().collect();
        message.push_str(&format!("; its services: {}", listed.join(", ")));
    }
    message
}

/// `a -> b -> a`, with the middle of a long cycle left out.
fn show(cycle: &[&str]) -> String {
    if cycle.len() <= MAX_CYCLE_SHOWN {
        return cycle.join(" -> ");
    }
    let half = MAX_CYCLE_SHOWN / 2;
    let head = cycle[..half].join(" -> ");
    let tail = cycle[cycle.len() - half..].join(" -> ");
    format!("{head} -> ... -> {tail}")
}

/// Every dependency that closes a cycle, as (dependent, dependency, the cycle from the
/// dependency back to itself). A depth-first walk with an explicit stack, so a long chain of
/// services cannot exhaust the thread's stack.
fn cycles(app: &AppSpec) -> Vec<(&str, &str, Vec<&str>)> {
    #[derive(PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    /// A service's dependencies, last first (they are popped).
    fn deps<'a>(app: &'a AppSpec, name: &str) -> Vec<&'a str> {
        let svc = &app.services[name];
        svc.depends_on.keys().rev().map(String::as_str).collect()
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut found = Vec::new();
    for start in app.services.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        marks.insert(start, Mark::OnPath);
        let mut path: Vec<(&str, Vec<&str>)> = vec![(start, deps(app, start))];
        while let Some((name, pending)) = path.last_mut() {
            let name = *name;
            let Some(dep) = pending.pop() else {
                marks.insert(name, Mark::Done);
                path.pop();
                continue;
            };
            let Some((dep, _)) = app.services.get_key_value(dep) else {
                continue;
            };
            match marks.get(dep.as_str()) {
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                    cycle.push(dep);
                    found.push((name, dep.as_str(), cycle));
                }
                Some(Mark::Done) => {}
                None => {
                    marks.insert(dep, Mark::OnPath);
                    path.push((dep, deps(app, dep)));
                }
            }
        }
    }
    found
}
