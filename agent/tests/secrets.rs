//! App secrets end to end on this host: a real central, a real agent with its apps on a real
//! containerd, images from a real registry that requires a login over HTTPS with a private CA
//! (given to the device as a `registry` secret). A service reads its secret as a file and a
//! config templated with `${CAIRN_SITE}`; a rotation changes what it reads and restarts only
//! that service; with central stopped and the containers gone, the agent makes them again with
//! the secret it kept.
//!
//! The agent keeps a software key here, which cannot attest its boot, so central runs with
//! `release_secrets_to_unattested`; the attestation gate itself is tested in
//! `central/tests/secrets.rs`.

mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use cairn_agent::apps::AppsConfig;
use cairn_agent::Agent;
use cairn_runtime::container::{self, RuntimeConfig};
use cairn_runtime::containerd::Containerd as Ctr;
use cairn_testsupport::central::{config_in, TestCentral};
use cairn_testsupport::images as test_images;
use cairn_testsupport::{require_tool, Containerd, Registry};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{agent_config, device_id, eventually, wait_phase, RunningAgent};

const FIRST: &[u8] = b"first-db-password-c41d";
const SECOND: &[u8] = b"second-db-password-9e07";
const REGISTRY_PASSWORD: &str = "registry-pull-password-5d21";

fn compose(image: &str) -> String {
    format!(
        "services:\n  reader:\n    image: {image}\n    restart: always\n    command: [\"sh\", \"-c\", \"sha256sum /run/secrets/db_password > /data/seen; cat /etc/site.conf > /data/site; echo start >> /data/starts; exec sleep 3600\"]\n    secrets: [db_password]\n    configs:\n      - source: site\n        target: /etc/site.conf\n    volumes: [\"reader:/data\"]\n  other:\n    image: {image}\n    restart: always\n    command: [\"sh\", \"-c\", \"echo start >> /data/starts; exec sleep 3600\"]\n    volumes: [\"other:/data\"]\nsecrets:\n  db_password: {{}}\nconfigs:\n  site:\n    content: \"site=${{CAIRN_SITE}}\"\nvolumes:\n  reader: {{}}\n  other: {{}}\n"
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn sha_line(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_reads_its_secret_a_rotation_restarts_only_it_and_it_survives_central_down() {
    if !(Containerd::can_run() && require_tool("docker-registry") && test_images::busybox_present())
    {
        return;
    }
    // Every log line of central and the agent (both run in this process), at debug level, to
    // a file that is searched for the values at the end.
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("test.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(std::sync::Mutex::new(log_file))
        .with_ansi(false)
        .try_init()
        .expect("this test binary has one test, which sets the subscriber");
    let containerd = Containerd::start();
    // HTTPS with a private CA and a login: the device can pull only with its registry secret.
    let registry = Registry::start_tls_with_basic_auth("puller", REGISTRY_PASSWORD);
    let ca_pem = registry.ca_pem().unwrap().to_owned();
    let image = test_images::busybox_image(&[("etc/app", "secrets\n")]);
    test_images::push_trusting(
        &registry.url(),
        Some(&ca_pem),
        "test/box",
        "1",
        &image,
        Some(("puller", REGISTRY_PASSWORD)),
    )
    .await;
    let image_ref = format!("{}/test/box:1", registry.host());

    let central_dir = tempfile::tempdir().unwrap();
    let mut central_config = config_in(central_dir.path());
    central_config.release_secrets_to_unattested = true;
    let mut central = TestCentral::start_with(central_dir, central_config).await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, dir.path(), "SN-SECRETS");
    let apps_dir = containerd.scratch_dir("agent-apps");
    config.apps = AppsConfig {
        enabled: true,
        containerd_socket: containerd.socket(),
        data_dir: Some(apps_dir.clone()),
        runc_root: Some(containerd.runc_root()),
        reconcile_interval_ms: 200,
        plain_http_registries: Vec::new(),
        firewall: false,
        log_writer: Some(env!("CARGO_BIN_EXE_cairn-agent").into()),
    };
    let start = |config: cairn_agent::AgentConfig| async move {
        let agent = Agent::new(config).await.expect("agent prepares");
        RunningAgent::from_agent(std::sync::Arc::new(agent.with_configured_apps()))
    };
    let running = start(config.clone()).await;
    wait_phase(&running.agent, cairn_agent::Phase::Connected).await;
    let id = device_id(&running.agent);
    let runtime = RuntimeConfig::new(apps_dir.clone());
    let seen = runtime.volume_dir("shop", "reader").join("seen");
    let reader_starts = runtime.volume_dir("shop", "reader").join("starts");
    let other_starts = runtime.volume_dir("shop", "other").join("starts");
    let site_seen = runtime.volume_dir("shop", "reader").join("site");
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);

    // The device's site, which the config names; and the app's registry login.
    let (status, answer) = central.call(
        &central.admin,
        "POST",
        "/api/v1/sites",
        Some(json!({ "name": "lucerne-3", "latitude": 47.05, "longitude": 8.31, "devices": [id] })),
    );
    assert_eq!(status, 201, "{answer}");
    let login = cairn_compose::RegistryLogin {
        registry: registry.host(),
        username: Some("puller".into()),
        password: Some(REGISTRY_PASSWORD.into()),
        ca_pem: Some(ca_pem.clone()),
    };
    let (status, answer) = central.call(
        &central.admin,
        "POST",
        "/api/v1/secrets",
        Some(
            json!({ "name": "registry", "device": id, "app": "shop", "kind": "registry",
                     "value_base64": b64(&login.to_json()) }),
        ),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["secret"]["kind"], "registry", "{answer}");

    // The app first: its reader cannot start without the secret, the other service runs.
    let (status, answer) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/devices/{id}/apps/shop"),
        Some(json!({ "compose_yaml": compose(&image_ref) })),
    );
    assert!(status == 201, "{answer}");
    eventually(
        Duration::from_secs(120),
        "the other service to start",
        || read(&other_starts).lines().count() == 1,
    )
    .await;
    assert!(read(&seen).is_empty(), "reader ran without its secret");

    // The secret arrives: the reader starts and reads it, and its config names the site.
    let (status, answer) = central.call(
        &central.admin,
        "POST",
        "/api/v1/secrets",
        Some(json!({ "name": "db_password", "device": id, "app": "shop", "value_base64": b64(FIRST) })),
    );
    assert_eq!(status, 201, "{answer}");
    let secret_id = answer["secret"]["id"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(60),
        "the reader to read the first value",
        || read(&seen).starts_with(&sha_line(FIRST)),
    )
    .await;
    assert_eq!(read(&site_seen), "site=lucerne-3");

    // Rotated: the reader is made again and reads the new value; the other service is left be.
    let (status, answer) = central.call(
        &central.admin,
        "PUT",
        &format!("/api/v1/secrets/{secret_id}"),
        Some(json!({ "value_base64": b64(SECOND) })),
    );
    assert_eq!(status, 200, "{answer}");
    eventually(
        Duration::from_secs(60),
        "the reader to read the second value",
        || read(&seen).starts_with(&sha_line(SECOND)),
    )
    .await;
    assert_eq!(read(&reader_starts).lines().count(), 2);
    assert_eq!(
        read(&other_starts).lines().count(),
        1,
        "the other service kept running"
    );

    // A power cut with central down: the agent stops, its containers are gone, central too.
    running.stop().await;
    let ctr = Ctr::connect(&containerd.socket(), cairn_agent::apps::NAMESPACE)
        .await
        .unwrap();
    for c in container::list_containers(&ctr).await.unwrap() {
        container::remove_container(&ctr, &c.id, Duration::from_secs(2))
            .await
            .unwrap();
    }
    std::fs::remove_file(&seen).unwrap();
    central.stop().await;
    let running = start(config.clone()).await;
    eventually(
        Duration::from_secs(60),
        "the reader to read its kept secret offline",
        || read(&seen).starts_with(&sha_line(SECOND)),
    )
    .await;
    running.stop().await;

    // No value in central's data dir (the registry database included), in containerd's state,
    // or in the apps' data dir (volumes, logs): the runtime writes secret files on the run dir's
    // tmpfs only. The agent's own copy in its state dir is ciphertext.
    for value in [FIRST, SECOND, REGISTRY_PASSWORD.as_bytes()] {
        for dir in [
            central.config.data_dir.clone(),
            containerd.root_dir(),
            apps_dir.clone(),
            dir.path().to_path_buf(),
        ] {
            let found = cairn_testsupport::leaks::files_containing(&dir, value);
            assert!(
                found.is_empty(),
                "a secret value in plain text in {found:?}"
            );
        }
    }
    // Nor in any log: central's and the agent's (which did log the secrets' names), containerd's
    // and the registry's.
    let log = std::fs::read(&log_path).unwrap();
    let log_text = String::from_utf8_lossy(&log);
    assert!(
        log_text.contains("secret stored") && log_text.contains("db_password"),
        "the log was not captured"
    );
    for (what, text) in [
        ("central and agent", log),
        ("containerd", containerd.log().into_bytes()),
        ("registry", registry.log().into_bytes()),
    ] {
        for value in [FIRST, SECOND, REGISTRY_PASSWORD.as_bytes()] {
            assert!(
                !text.windows(value.len()).any(|w| w == value),
                "a secret value in the {what} log"
            );
        }
    }
}
