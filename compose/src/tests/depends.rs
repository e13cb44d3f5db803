//! `depends_on`: its two forms, and the checks across services once all are read.

use super::super::*;
use super::{assert_error, errors};

#[test]
fn depends_on_takes_a_list_or_conditions() {
    let text = "services:\n  web:\n    image: x\n    depends_on: [db, cache]\n  api:\n    image: x\n    depends_on:\n      db:\n        condition: service_healthy\n        restart: true\n        required: true\n      migrate:\n        condition: service_completed_successfully\n      cache:\n  db:\n    image: x\n    healthcheck: {test: [CMD, \"true\"]}\n  cache: {image: x}\n  migrate: {image: x}\n";
    let app = AppSpec::parse("compose.yml", "shop", text).unwrap();
    let web: Vec<(&str, DependsOn)> = app.services["web"]
        .depends_on
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        web,
        [
            ("cache", DependsOn::ServiceStarted),
            ("db", DependsOn::ServiceStarted)
        ]
    );
    let api = &app.services["api"].depends_on;
    assert_eq!(api["db"], DependsOn::ServiceHealthy);
    assert_eq!(api["migrate"], DependsOn::ServiceCompletedSuccessfully);
    assert_eq!(api["cache"], DependsOn::ServiceStarted);
}

#[test]
fn depends_on_names_must_be_services_of_the_app() {
    assert_error(
        "services:\n  web:\n    image: x\n    depends_on:\n      - db\n  cache: {image: x}\n",
        "compose.yml:5: services.web.depends_on[0]: \"db\" is not a service of this app; its services: cache, web",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    depends_on: [db, db]\n  db: {image: x}\n",
        "services.web.depends_on[1]: db is listed twice",
    );
    // A service refused for its own problems is still a service: only its problem is reported.
    let got = errors("services:\n  web:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n    restart: sometimes\n");
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(got.contains("services.db.restart"), "{got}");
}

#[test]
fn depends_on_conditions_are_checked() {
    let base = "services:\n  db: {image: x}\n  web:\n    image: x\n    depends_on:\n      db:\n";
    assert_error(
        &format!("{base}        condition: service_ready\n"),
        "compose.yml:7: services.web.depends_on.db.condition: \"service_ready\" is not a depends_on condition; use \"service_started\", \"service_healthy\" or \"service_completed_successfully\"",
    );
    assert_error(
        &format!("{base}        condition: service_healthy\n"),
        "compose.yml:7: services.web.depends_on.db: condition service_healthy needs a health check, and db has none; give db a healthcheck or wait for service_started",
    );
    assert_error(
        &format!("{base}        required: false\n"),
        "compose.yml:7: services.web.depends_on.db.required: required: false (start even without the dependency) is not supported",
    );
    assert_error(
        &format!("{base}        restart: sometimes\n"),
        "services.web.depends_on.db.restart: \"sometimes\" is not true or false",
    );
    assert_error(
        &format!("{base}        wait: true\n"),
        "services.web.depends_on.db.wait: unknown key \"wait\"; supported keys here: condition, restart, required",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    depends_on: db\n",
        "services.web.depends_on: must be a list of service names or a mapping",
    );
}

#[test]
fn dependency_cycles_are_reported_with_their_path() {
    assert_error(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        "compose.yml:7: services.b.depends_on[0]: a -> b -> a is a cycle: these services would each wait for the next forever",
    );
    assert_error(
        "services:\n  a:\n    image: x\n    depends_on: [a]\n",
        "compose.yml:4: services.a.depends_on[0]: a -> a is a cycle",
    );
    let got = errors("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: {a: {condition: service_started}}}\n  d: {image: x, depends_on: [a]}\n");
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(
        got.contains("compose.yml:4: services.c.depends_on.a: a -> b -> c -> a is a cycle"),
        "{got}"
    );
}

#[test]
fn a_long_chain_of_dependencies_is_checked_without_recursion() {
    // s0 -> s1 -> ... -> s2999 -> s0: a walk that recursed per service would need a deep stack.
    let n = 3000;
    let services: String = (0..n)
        .map(|i| format!("  s{i}: {{image: x, depends_on: [s{}]}}\n", (i + 1) % n))
        .collect();
    let got = errors(&format!("services:\n{services}"));
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(
        got.contains("s0 -> s1 -> s2 -> s3 -> s4 -> s5 -> ... -> s2995 -> s2996 -> s2997 -> s2998 -> s2999 -> s0 is a cycle"),
        "{got}"
    );
}
