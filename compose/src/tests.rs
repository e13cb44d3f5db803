//! Unit tests of app spec parsing: one valid file and one test per kind of error; the keys
//! added for confinement and policy, ports, `depends_on`, secrets and configs, and interpolation
//! in their own modules.

mod depends;
mod files;
mod interpolation;
mod ports;
mod secret_env;
mod service_keys;

use std::time::Duration;

use super::*;

const FULL: &str = r#"
version: "3.8"
services:
  web:
    image: 127.0.0.1:5000/cairn/web:1.0
    command: httpd -f -p "8080"
    environment:
      MODE: production
      WORKERS: 4
    volumes:
      - data:/var/lib/web
      - cache:/cache:ro
    ports:
      - "8080:8080"
    restart: unless-stopped
    network_mode: host
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 10s
      timeout: 2s
      retries: 5
      start_period: 1m
    deploy:
      resources:
        limits:
          cpus: "0.5"
          memory: 128M
    secrets: [db_password]
  worker:
    image: busybox
    entrypoint: ["/bin/sh", "-c"]
    command: ["while true; do sleep 1; done"]
    environment:
      - A=1
      - B=x=y
    restart: on-failure:3
    healthcheck:
      test: wget -q http://127.0.0.1/ || exit 1
volumes:
  data: {}
  cache:
secrets:
  db_password: {}
"#;

fn errors(text: &str) -> String {
    match AppSpec::parse("compose.yml", "shop", text) {
        Ok(spec) => panic!("expected an error, got {spec:#?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(text: &str, expected: &str) {
    let got = errors(text);
    assert!(got.contains(expected), "expected {expected:?} in:\n{got}");
}

#[test]
fn parses_a_full_file() {
    let app = AppSpec::parse("compose.yml", "shop", FULL).unwrap();
    assert_eq!(app.name, "shop");
    let web = &app.services["web"];
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["httpd", "-f", "-p", "8080"]
    );
    assert_eq!(web.environment["WORKERS"], "4");
    assert_eq!(web.volumes[1].volume, "cache");
    assert!(web.volumes[1].read_only);
    assert_eq!(web.ports[0].host_port, 8080);
    assert_eq!(web.restart, RestartPolicy::UnlessStopped);
    assert_eq!(web.network_mode, NetworkMode::Host);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.retries, 5);
    assert_eq!(hc.start_period, Duration::from_secs(60));
    assert_eq!(hc.test.argv()[0], "wget");
    assert_eq!(web.limits.cpu_millis, Some(500));
    assert_eq!(web.limits.memory_bytes, Some(128 << 20));
    let secrets: Vec<_> = web
        .secrets
        .iter()
        .map(|s| (&*s.source, &*s.target))
        .collect();
    assert_eq!(secrets, [("db_password", "/run/secrets/db_password")]);
    let worker = &app.services["worker"];
    assert_eq!(worker.environment["B"], "x=y");
    assert_eq!(
        worker.restart,
        RestartPolicy::OnFailure {
            max_retries: Some(3)
        }
    );
    assert_eq!(worker.network_mode, NetworkMode::Private);
    assert_eq!(
        worker.healthcheck.as_ref().unwrap().test,
        HealthTest::Shell("wget -q http://127.0.0.1/ || exit 1".into())
    );
    assert_eq!(
        worker.healthcheck.as_ref().unwrap().interval,
        Duration::from_secs(30)
    );
    assert_eq!(app.volumes.iter().collect::<Vec<_>>(), ["cache", "data"]);
    assert!(app.secrets.contains("db_password"));
}

#[test]
fn bad_port_names_file_line_and_path() {
    let text = "services:\n  web:\n    image: busybox\n    ports:\n      - \"8080:80\"\n      - \"80:abc\"\n";
    assert_error(
        text,
        "compose.yml:6: services.web.ports[1]: \"80:abc\" is not a port mapping",
    );
    assert_error(text, "container port \"abc\" is not a number");
}

#[test]
fn clashing_and_ipv6_published_ports_name_file_line_and_path() {
    let text = "services:\n  api:\n    image: busybox\n    ports: [\"8080:80\"]\n  web:\n    image: busybox\n    ports:\n      - \"8081:80\"\n      - \"127.0.0.1:8080:81\"\n      - \"8080:80/udp\"\n";
    assert_error(
        text,
        "compose.yml:9: services.web.ports[1]: host port 8080/tcp is already published by services.api.ports[0]; pick another host port",
    );
    let got = errors(text);
    assert!(
        !got.contains("ports[2]"),
        "udp does not clash with tcp: {got}"
    );
    assert_error(
        "services:\n  web:\n    image: busybox\n    ports:\n      - \"[::1]:9000:80\"\n",
        "compose.yml:5: services.web.ports[0]: app networks are IPv4-only",
    );
    // Different explicit host addresses do not clash; host-network services may use IPv6.
    let ok = "services:\n  a: {image: x, ports: [\"127.0.0.1:80:80\"]}\n  b: {image: x, ports: [\"127.0.0.2:80:80\"]}\n  c: {image: x, network_mode: host, ports: [\"[::1]:90:90\"]}\n";
    AppSpec::parse("compose.yml", "app", ok).unwrap();
}

#[test]
fn syntax_error_has_line_and_column() {
    let got = errors("services:\n  web: [1, 2\n  db: 3\n");
    assert!(got.starts_with("compose.yml:3:"), "{got}");
    assert!(got.contains("not valid YAML"), "{got}");
    assert_error(
        "services: {}\n---\nservices: {}\n",
        "compose.yml:2:1: not valid YAML: more than one YAML document",
    );
}

#[test]
fn unknown_keys_list_the_supported_ones() {
    assert_error("networks: {}\nservices: {}\n", "compose.yml:1: networks: unknown key \"networks\"; supported keys here: services, volumes, secrets, configs, version");
    assert_error(
        "services:\n  web:\n    image: busybox\n    container_name: w\n",
        "compose.yml:4: services.web.container_name: unknown key \"container_name\"; supported keys here: image, command,",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      every: 5s\n",
        "services.web.healthcheck.every: unknown key \"every\"; supported keys here: test, interval",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    deploy:\n      replicas: 2\n",
        "compose.yml:5: services.web.deploy.replicas: unknown key \"replicas\"; supported keys here: resources",
    );
    assert_error(
        "services:\n  web:\n    image: x\n    deploy:\n      resources:\n        limits:\n          pids: 5\n",
        "services.web.deploy.resources.limits.pids: unknown key \"pids\"; supported keys here: cpus, memory",
    );
}

#[test]
fn missing_and_empty_things() {
    assert_error("", "compose.yml:1: services: the file is empty");
    assert_error("version: '3'\n", "compose.yml:1: services: is missing");
    assert_error("services: {}\n", "services: is empty");
    assert_error(
        "services:\n  web:\n    command: [sh]\n",
        "compose.yml:3: services.web.image: is missing",
    );
    assert_error(
        "services:\n  web:\n    image:\n",
        "compose.yml:3: services.web.image: is empty",
    );
    assert_error(
        "services: [web]\n",
        "compose.yml:1: services: must be a mapping, found a list",
    );
}

#[test]
fn bad_image_references_are_refused() {
    assert_error(
        "services:\n  web:\n    image: Web:latest\n",
        "compose.yml:3: services.web.image: \"Web:latest\" is not an image reference: repository component \"Web\" is invalid",
    );
    assert_error(
        "services:\n  web:\n    image: \"a b\"\n",
        "services.web.image: \"a b\" is not an image reference",
    );
}

#[test]
fn duplicate_keys_are_refused() {
    assert_error(
        "services:\n  web:\n    image: a\n    image: b\n",
        "compose.yml:4: services.web.image: is given twice",
    );
}

#[test]
fn bad_names() {
    assert_error(
        "services:\n  Web:\n    image: a\n",
        "services.Web: service name \"Web\" contains 'W'",
    );
    assert!(matches!(
        AppSpec::parse("c.yml", "My App", "services: {}"),
        Err(SpecError::AppName { .. })
    ));
    assert!(matches!(
        AppSpec::parse("c.yml", "my_app", "services: {}"),
        Err(SpecError::AppName {
            reason: NameError::Underscore,
            ..
        })
    ));
}

#[test]
fn volume_errors() {
    assert_error(
        "services:\n  web:\n    image: a\n    volumes: [\"/etc:/etc\"]\n",
        "compose.yml:4: services.web.volumes[0]: \"/etc:/etc\" mounts a host path",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    volumes:\n      - data:/d\nvolumes:\n  other: {}\n",
        "compose.yml:5: services.web.volumes[0]: volume \"data\" is not declared",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    volumes:\n      - type: bind\n",
        "services.web.volumes[0]: the long volume syntax is not supported",
    );
    assert_error(
        "services:\n  web:\n    image: a\nvolumes:\n  data:\n    driver: local\n",
        "compose.yml:6: volumes.data: volumes are directories",
    );
}

#[test]
fn environment_errors() {
    assert_error(
        "services:\n  web:\n    image: a\n    environment: [\"A\"]\n",
        "services.web.environment[0]: A has no value",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    environment:\n      A:\n",
        "compose.yml:5: services.web.environment.A: A has no value",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    environment: [A=1, A=2]\n",
        "A is set twice",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    environment: A=1\n",
        "services.web.environment: must be a mapping or a list",
    );
}

#[test]
fn restart_and_network_errors() {
    assert_error(
        "services:\n  web:\n    image: a\n    restart: sometimes\n",
        "compose.yml:4: services.web.restart: \"sometimes\" is not a restart policy",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    network_mode: bridge\n",
        "services.web.network_mode: \"bridge\" is not supported",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    network_mode: host\n    ports: [\"8080:80\"]\n",
        "services.web.ports[0]: with network_mode: host",
    );
}

#[test]
fn healthcheck_errors() {
    let base = "services:\n  web:\n    image: a\n    healthcheck:\n";
    assert_error(
        &format!("{base}      test: [\"RUN\", \"x\"]\n"),
        "compose.yml:5: services.web.healthcheck.test: must start with \"CMD\"",
    );
    assert_error(
        &format!("{base}      test: [\"CMD\"]\n"),
        "healthcheck.test: must start with",
    );
    assert_error(
        &format!("{base}      test: [\"CMD\", \"true\"]\n      interval: 10\n"),
        "compose.yml:6: services.web.healthcheck.interval: \"10\" is not a duration",
    );
    assert_error(
        &format!("{base}      test: [\"CMD\", \"true\"]\n      timeout: 0s\n"),
        "healthcheck.timeout: must be longer than 0s",
    );
    assert_error(
        &format!("{base}      test: [\"CMD\", \"true\"]\n      retries: -1\n"),
        "healthcheck.retries: \"-1\" is not a whole number",
    );
    assert_error(
        &format!("{base}      interval: 5s\n"),
        "services.web.healthcheck.test: is missing",
    );
    let off = AppSpec::parse("c.yml", "a", &format!("{base}      test: [\"NONE\"]\n")).unwrap();
    assert!(off.services["web"].healthcheck.is_none());
    let off = AppSpec::parse("c.yml", "a", &format!("{base}      disable: true\n")).unwrap();
    assert!(off.services["web"].healthcheck.is_none());
}

#[test]
fn limit_errors() {
    let base = "services:\n  web:\n    image: a\n    deploy:\n      resources:\n        limits:\n";
    assert_error(
        &format!("{base}          memory: lots\n"),
        "compose.yml:7: services.web.deploy.resources.limits.memory: \"lots\" is not a memory size",
    );
    assert_error(
        &format!("{base}          cpus: -1\n"),
        "services.web.deploy.resources.limits.cpus: \"-1\" is not a CPU count",
    );
}

#[test]
fn command_errors() {
    assert_error(
        "services:\n  web:\n    image: a\n    command: \"sh -c 'oops\"\n",
        "compose.yml:4: services.web.command: \"sh -c 'oops\" has an unclosed single quote",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    entrypoint: {a: b}\n",
        "services.web.entrypoint: must be a string or a list of strings, found a mapping",
    );
    assert_error(
        "services:\n  web:\n    image: a\n    command: [sh, [x]]\n",
        "services.web.command[1]: must be a string, found a list",
    );
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let got = errors("services:\n  web:\n    image: a\n    ports: [\"x\"]\n    restart: maybe\n  db:\n    bogus: 1\n");
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 4, "{got}");
    assert!(
        lines[0].starts_with("compose.yml:4: services.web.ports[0]"),
        "{got}"
    );
    assert!(
        lines[1].starts_with("compose.yml:5: services.web.restart"),
        "{got}"
    );
    assert!(
        lines[2].starts_with("compose.yml:6: services.db.image: is missing")
            || lines[2].starts_with("compose.yml:7"),
        "{got}"
    );
}

#[test]
fn extension_fields_and_merge_keys_share_settings_between_services() {
    let text = "x-defaults: &defaults\n  restart: always\n  environment:\n    MODE: edge\n  x-note: ignored anywhere\nservices:\n  web:\n    <<: *defaults\n    image: busybox\n  worker:\n    <<: *defaults\n    image: busybox\n    restart: on-failure\n";
    let spec = AppSpec::parse("compose.yml", "shop", text).unwrap();
    let web = &spec.services["web"];
    assert_eq!(web.restart, RestartPolicy::Always);
    assert_eq!(web.environment["MODE"], "edge");
    assert!(matches!(
        spec.services["worker"].restart,
        RestartPolicy::OnFailure { .. }
    ));
}

#[test]
fn working_dir_hostname_and_read_only() {
    let text = "services:\n  web:\n    image: busybox\n    working_dir: /srv/app\n    hostname: shop-web.local\n    read_only: true\n";
    let spec = AppSpec::parse("compose.yml", "shop", text).unwrap();
    let web = &spec.services["web"];
    assert_eq!(web.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(web.hostname.as_deref(), Some("shop-web.local"));
    assert!(web.read_only);
    let bad = "services:\n  web:\n    image: busybox\n    working_dir: srv\n    hostname: -bad-\n    read_only: yes\n";
    let err = AppSpec::parse("compose.yml", "shop", bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compose.yml:4: services.web.working_dir: \"srv\" is not an absolute path"),
        "{err}"
    );
    assert!(
        err.contains("compose.yml:5: services.web.hostname: \"-bad-\" is not a host name"),
        "{err}"
    );
    assert!(
        err.contains("compose.yml:6: services.web.read_only: \"yes\" is not true or false"),
        "{err}"
    );
}

/// A file with one service `web` (image busybox, line 3) and `lines` after it, from line 4.
fn web_file(lines: &str) -> String {
    format!("services:\n  web:\n    image: busybox\n{lines}")
}

/// Service `web` with `lines` added, which must be valid.
fn web(lines: &str) -> ServiceSpec {
    let spec = AppSpec::parse("compose.yml", "shop", &web_file(lines));
    match spec {
        Ok(mut app) => app.services.remove("web").unwrap(),
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

/// Service `web` with `lines` added is refused with `expected` among the problems.
fn web_error(lines: &str, expected: &str) {
    assert_error(&web_file(lines), expected);
}
