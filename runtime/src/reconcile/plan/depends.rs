//! `depends_on`, as Docker Compose honours it when it starts services: the order the planner
//! goes through an app's services in (dependencies first, `depends_on` cycles found), what each
//! service has reached for its dependents ([`Reached`]) and whether a service's dependencies let
//! its task start now ([`Gate`]). Pure, like the rest of the planner.
//!
//! A dependency is met when it has reached its condition at the start of the pass:
//! `service_started`: its task runs (or ran to completion with status 0 and stays down, so a
//! quick one-shot dependency does not block its dependents depending on when a pass looked);
//! `service_healthy`: its task runs and its health check has passed, and still passes;
//! `service_completed_successfully`: its task exited with status 0. Only starts are gated: a
//! running dependent is never stopped because a dependency stopped or became unhealthy (Compose
//! does not either), but its next (re)start waits again.

use std::collections::{BTreeMap, HashMap};

use cairn_compose::{AppSpec, DependsOn};

use super::super::health::Health;

/// What a service has reached in this pass, as its dependents see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reached {
    /// Its task runs (or is paused), with this health and the last health-check error.
    Running {
        /// Its health.
        health: Health,
        /// The last failed check's error, when unhealthy.
        error: Option<String>,
    },
    /// This pass starts its task.
    Starting,
    /// Its task exited with `status`; `restarts`: its restart policy starts it again.
    Exited {
        /// Exit status.
        status: u32,
        /// Whether the restart policy restarts it.
        restarts: bool,
    },
    /// Its task does not run and will not start in this pass, for this (passing) reason.
    NotYet(String),
    /// It cannot start, for this reason, until something changes (a pull that failed, a start
    /// that failed, a dependency of its own that failed, a cycle).
    Failed(String),
}

/// Whether a service's task may start, as far as its dependencies are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    /// Every dependency has reached its condition (or there are none).
    Open,
    /// Some have not yet; the message says which and what they wait for.
    Wait {
        /// `waiting for db to be healthy (...)`, joined with `; ` for several.
        message: String,
        /// A dependency starts in this pass: plan the next pass right away.
        soon: bool,
    },
    /// A dependency failed so that the condition cannot be reached now (or there is a cycle).
    Blocked(String),
}

/// The services of `app` in an order that puts every dependency before its dependents, and, for
/// each service on a `depends_on` cycle, that cycle as `a -> b -> a` starting from the service.
/// Dependencies that are not services of the app are left out of the order.
pub(super) fn start_order(app: &AppSpec) -> (Vec<&str>, HashMap<&str, String>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let deps: BTreeMap<&str, Vec<&str>> = app
        .services
        .iter()
        .map(|(name, svc)| {
            let known = svc
                .depends_on
                .keys()
                .map(String::as_str)
                .filter(|d| app.services.contains_key(*d));
            (name.as_str(), known.collect())
        })
        .collect();
    let mut mark: HashMap<&str, Mark> = deps.keys().map(|n| (*n, Mark::New)).collect();
    let mut order = Vec::with_capacity(deps.len());
    let mut cycles = HashMap::new();
    // Depth first without recursion (a long chain must not exhaust the stack): each entry is a
    // service and how many of its dependencies were looked at.
    for &root in deps.keys() {
        if mark[root] != Mark::New {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        mark.insert(root, Mark::OnPath);
        while let Some((name, next)) = path.last_mut() {
            let name = *name;
            let Some(&dep) = deps[name].get(*next) else {
                mark.insert(name, Mark::Done);
                order.push(name);
                path.pop();
                continue;
            };
            *next += 1;
            match mark[dep] {
                Mark::New => {
                    mark.insert(dep, Mark::OnPath);
                    path.push((dep, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let members: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                    for (i, member) in members.iter().enumerate() {
                        cycles
                            .entry(*member)
                            .or_insert_with(|| describe_cycle(&members, i));
                    }
                }
                Mark::Done => {}
            }
        }
    }
    (order, cycles)
}

/// Most services of a cycle named in its description.
const CYCLE_SHOWN: usize = 6;

/// Longest text of a dependency quoted in a dependent's message (a chain of dependents would
/// otherwise quote each other ever longer; the wire cuts status messages anyway).
const MAX_QUOTED: usize = 400;

/// The cycle `members` (each depending on the next, the last on the first) as seen from
/// `members[start]`: `b -> c -> a -> b`, shortened for long cycles.
fn describe_cycle(members: &[&str], start: usize) -> String {
    let n = members.len();
    let mut names: Vec<&str> = (0..n.min(CYCLE_SHOWN))
        .map(|k| members[(start + k) % n])
        .collect();
    if n > CYCLE_SHOWN {
        names.push("...");
    }
    names.push(members[start]);
    let text = names.join(" -> ");
    if n > CYCLE_SHOWN {
        format!("{text} ({n} services)")
    } else {
        text
    }
}

/// `text`, cut to [`MAX_QUOTED`] bytes.
fn quote(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_QUOTED {
        return text.into();
    }
    let mut end = MAX_QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end]).into()
}

/// Whether the dependencies of service `name` of `app` let its task start, given what the
/// services planned before it reached (`reached`) and the cycles of [`start_order`].
pub(super) fn gate(
    app: &AppSpec,
    name: &str,
    reached: &HashMap<&str, Reached>,
    cycles: &HashMap<&str, String>,
) -> Gate {
    if let Some(cycle) = cycles.get(name) {
        return Gate::Blocked(format!(
            "blocked by a depends_on cycle: {cycle}; none of its services can start"
        ));
    }
    let Some(spec) = app.services.get(name) else {
        return Gate::Open;
    };
    let mut waits = Vec::new();
    let mut blocks = Vec::new();
    let mut soon = false;
    for (dep, condition) in &spec.depends_on {
        let Some(dep_spec) = app.services.get(dep) else {
            blocks.push(format!("blocked by {dep}: it is not a service of this app"));
            continue;
        };
        let goal = match condition {
            DependsOn::ServiceStarted => "start",
            DependsOn::ServiceHealthy => "be healthy",
            DependsOn::ServiceCompletedSuccessfully => "complete successfully",
        };
        let wait = |detail: &str| format!("waiting for {dep} to {goal} ({})", quote(detail));
        if *condition == DependsOn::ServiceHealthy && dep_spec.healthcheck.is_none() {
            blocks.push(format!(
                "blocked by {dep}: it has no health check, so it never becomes healthy"
            ));
            continue;
        }
        let Some(state) = reached.get(dep.as_str()) else {
            // Only a dependency on a cycle is planned after its dependent; the cycle blocks.
            waits.push(format!("waiting for {dep} to {goal}"));
            continue;
        };
        match (condition, state) {
            (_, Reached::Failed(why)) => blocks.push(format!("blocked by {dep}: {}", quote(why))),
            (_, Reached::NotYet(why)) => waits.push(wait(why)),
            (_, Reached::Starting) => {
                soon = true;
                waits.push(wait("it is starting"));
            }
            (DependsOn::ServiceStarted, Reached::Running { .. }) => {}
            (DependsOn::ServiceHealthy, Reached::Running { health, error }) => match health {
                Health::Healthy => {}
                Health::Unhealthy => waits.push(wait(&match error {
                    Some(e) => format!("it is unhealthy: {e}"),
                    None => "it is unhealthy".into(),
                })),
                Health::Starting | Health::None => {
                    waits.push(wait("its health check has not passed yet"))
                }
            },
            (DependsOn::ServiceCompletedSuccessfully, Reached::Running { .. }) => {
                waits.push(wait("it is running"))
            }
            (DependsOn::ServiceCompletedSuccessfully, Reached::Exited { status: 0, .. }) => {}
            (DependsOn::ServiceStarted, Reached::Exited { status: 0, restarts: false }) => {}
            (_, Reached::Exited { status, restarts: true }) => waits.push(wait(&format!(
                "it exited with status {status} and restarts after its back-off"
            ))),
            (_, Reached::Exited { status, restarts: false }) => blocks.push(format!(
                "blocked by {dep}: it exited with status {status} and its restart policy keeps it down"
            )),
        }
    }
    if !blocks.is_empty() {
        Gate::Blocked(blocks.join("; "))
    } else if !waits.is_empty() {
        Gate::Wait {
            message: waits.join("; "),
            soon,
        }
    } else {
        Gate::Open
    }
}
