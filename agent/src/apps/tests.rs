//! Unit tests of the apps sink: desired apps to reconciler specs and service states to reports.

use std::time::Duration;

use cairn_proto::v1::{App, DesiredState, ServiceHealth, ServiceState};
use cairn_runtime::container::RuntimeConfig;
use cairn_runtime::reconcile::{Health, ServiceState as State, ServiceStatus};

use super::*;

/// A secret cache with nothing in it (the secrets' own tests are in `crate::secrets`).
fn no_secrets() -> (tempfile::TempDir, Arc<SecretCache>) {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::secrets_key::CacheKeyStore::software(dir.path().join("secrets.key"));
    let cache = Arc::new(SecretCache::open(&dir.path().join("secrets"), &key).unwrap());
    (dir, cache)
}

fn desired(revision: u64, apps: &[(&str, &str, u64)]) -> DesiredState {
    DesiredState {
        revision,
        config: Default::default(),
        apps: apps
            .iter()
            .map(|(name, yaml, generation)| App {
                name: name.to_string(),
                compose_yaml: yaml.to_string(),
                generation: *generation,
                secrets: Vec::new(),
                variables: Default::default(),
            })
            .collect(),
        os: None,
    }
}

const GOOD: &str = "services:\n  web:\n    image: busybox\n";
const BAD: &str = "services:\n  web:\n    image: busybox\n    ports: [\"x:80\"]\n";

#[test]
fn an_app_runs_with_the_variables_central_sent_and_is_refused_without_them() {
    let (_dir, secrets) = no_secrets();
    let yaml =
        "services:\n  web:\n    image: busybox\n    environment:\n      SITE: ${CAIRN_SITE}\n";
    let mut state = desired(3, &[("shop", yaml, 3)]);
    state.apps[0]
        .variables
        .insert("CAIRN_SITE".into(), "zurich-1".into());
    let applied = AppliedState::from_desired(&state, &secrets);
    assert_eq!(applied.runnable.len(), 1);
    let web = &applied.runnable[0].spec.services["web"];
    assert_eq!(web.environment["SITE"], "zurich-1");

    let applied = AppliedState::from_desired(&desired(4, &[("shop", yaml, 4)]), &secrets);
    assert!(applied.runnable.is_empty());
    let error = applied.entries[0].spec.as_ref().unwrap_err();
    assert!(
        error.contains("compose_yaml:5: services.web.environment.SITE: variable CAIRN_SITE is not set on this device"),
        "{error}"
    );
}

#[test]
fn a_refused_app_is_reported_and_the_others_run() {
    let (_dir, secrets) = no_secrets();
    let applied = AppliedState::from_desired(
        &desired(7, &[("good", GOOD, 5), ("bad", BAD, 7), ("good", GOOD, 6)]),
        &secrets,
    );
    assert_eq!(applied.runnable.len(), 1);
    assert_eq!(applied.runnable[0].spec.name, "good");
    let running = ServiceStatus {
        app: "good".into(),
        service: "web".into(),
        state: State::Running,
        health: Health::Healthy,
        restarts: 2,
        container_id: Some("good_web".into()),
        pid: Some(42),
        exit_code: None,
        message: None,
    };
    let st = report::statuses(
        &applied,
        Ok(vec![running]),
        &RuntimeConfig::new(std::path::PathBuf::from("/nonexistent")),
    );
    assert_eq!(st.len(), 3);
    assert_eq!((st[0].generation, st[0].desired_revision), (5, 7));
    assert_eq!(st[0].error, "");
    assert_eq!(st[0].services.len(), 1);
    let web = &st[0].services[0];
    assert_eq!(web.state(), ServiceState::Running);
    assert_eq!(web.health(), ServiceHealth::Healthy);
    assert_eq!(web.restarts, 2);
    assert!(st[1].error.contains("compose_yaml:4"), "{}", st[1].error);
    assert!(
        st[1].error.contains("services.web.ports[0]"),
        "{}",
        st[1].error
    );
    assert!(st[1].services.is_empty());
    assert!(st[2].error.contains("appears twice"), "{}", st[2].error);
}

#[test]
fn a_failed_pass_is_reported_per_app_and_messages_are_cut() {
    let (_dir, secrets) = no_secrets();
    let applied = AppliedState::from_desired(&desired(3, &[("good", GOOD, 3)]), &secrets);
    let st = report::statuses(
        &applied,
        Err("x".repeat(5000)),
        &RuntimeConfig::new(std::path::PathBuf::from("/nonexistent")),
    );
    assert!(st[0].error.starts_with("cannot run apps: xxx"));
    assert!(st[0].error.len() <= cairn_proto::MAX_STATUS_MESSAGE_BYTES);
    let exited = ServiceStatus {
        app: "good".into(),
        service: "web".into(),
        state: State::Exited,
        health: Health::None,
        restarts: 0,
        container_id: None,
        pid: None,
        exit_code: Some(3),
        message: None,
    };
    let st = report::statuses(
        &applied,
        Ok(vec![exited.clone()]),
        &RuntimeConfig::new(std::path::PathBuf::from("/nonexistent")),
    );
    assert_eq!(st[0].services[0].state(), ServiceState::Exited);
    assert_eq!(st[0].services[0].message, "exited with status 3");
    // With a log, its last line says why.
    let dir = tempfile::tempdir().unwrap();
    let logs = RuntimeConfig::new(dir.path().to_path_buf());
    let log = logs.log_path(&exited.app, &exited.service);
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "starting\nhttpd: bind: Address in use\n\n").unwrap();
    let st = report::statuses(&applied, Ok(vec![exited]), &logs);
    assert_eq!(
        st[0].services[0].message,
        "exited with status 3; last log line: httpd: bind: Address in use"
    );
}

#[tokio::test]
async fn without_containerd_every_app_reports_why_and_nothing_runs_before_a_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = AppsConfig {
        enabled: true,
        containerd_socket: dir.path().join("no-containerd.sock"),
        reconcile_interval_ms: 20,
        ..AppsConfig::default()
    };
    let (_secrets_dir, secrets) = no_secrets();
    let sink = AppsSink::start(&config, dir.path(), secrets);
    let mut observed = sink.observed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        sink.observed_apps().is_empty(),
        "no status before a desired state"
    );
    sink.apply(&desired(2, &[("good", GOOD, 2), ("bad", BAD, 2)]));
    let st = tokio::time::timeout(
        Duration::from_secs(20),
        observed.wait_for(|st| st.len() == 2),
    )
    .await
    .expect("a status within 20 s")
    .unwrap()
    .clone();
    assert!(
        st[0].error.contains("cannot connect to containerd"),
        "{}",
        st[0].error
    );
    assert!(
        st[0].error.contains("no-containerd.sock"),
        "{}",
        st[0].error
    );
    assert!(
        st[1].error.contains("refused by this agent"),
        "{}",
        st[1].error
    );
    assert_eq!(sink.observed_apps(), st);
}

#[test]
fn config_defaults_and_checks() {
    let config = AppsConfig::default();
    assert!(!config.enabled);
    assert_eq!(
        config.containerd_socket,
        std::path::PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(
        config.data_dir(Path::new("/var/lib/cairn/agent")),
        Path::new("/var/lib/cairn/agent/apps")
    );
    assert!(config.validate().is_ok());
    let relative = AppsConfig {
        data_dir: Some("apps".into()),
        ..AppsConfig::default()
    };
    assert_eq!(relative.validate().unwrap_err().field, "apps.data_dir");
}

#[test]
fn a_refused_app_is_held_as_it_runs_unless_its_name_also_runs() {
    let refused = "services: {web: {image: x, command: 'echo $NOT_SET'}}";
    let desired = desired(
        1,
        &[("bad", refused, 1), ("good", GOOD, 1), ("good", refused, 2)],
    );
    let (_dir, secrets) = no_secrets();
    let applied = AppliedState::from_desired(&desired, &secrets);
    assert!(applied.entries[0].spec.is_err());
    assert_eq!(applied.held(), HashSet::from(["bad".to_string()]));
}

#[test]
fn a_yaml_alias_bomb_is_refused_fast_with_bounded_memory_and_other_apps_run() {
    use cairn_testsupport::hostile::{fastest_of_three, peak_rss_bytes, yaml_alias_bomb};
    let bomb = yaml_alias_bomb();
    let desired = desired(1, &[("bomb", &bomb, 1), ("good", GOOD, 1)]);
    let (_dir, secrets) = no_secrets();
    let peak_before = peak_rss_bytes();
    let (took, runs) = fastest_of_three(|| AppliedState::from_desired(&desired, &secrets));
    for applied in runs {
        let why = applied.entries[0].spec.as_ref().unwrap_err();
        assert!(
            why.contains("refused by this agent") && why.contains("nodes"),
            "{why}"
        );
        assert_eq!(applied.runnable.len(), 1, "the good app must still run");
    }
    assert!(took < Duration::from_millis(100), "refused in {took:?}");
    let grown = peak_rss_bytes().saturating_sub(peak_before);
    assert!(grown < 64 << 20, "peak memory grew by {grown} bytes");
}
