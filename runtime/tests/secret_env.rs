//! `x-cairn-secret-env` against a real containerd + runc: the process (and its health check)
//! sees the secret in its environment, a rotation replaces only the service that uses it, and a
//! value that cannot be a variable fails the service with a status naming the secret, never
//! showing the value.

mod common;

use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::container;
use cairn_runtime::reconcile::{
    Backoff, DesiredApp, Health, Reconciler, ReconcilerConfig, ServiceState, ServiceStatus,
};

fn config(env: &common::Env) -> ReconcilerConfig {
    let mut runtime = common::runtime_config(env);
    runtime.stop_grace = Duration::from_secs(1);
    runtime.network = common::network_config(&env.containerd);
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.backoff = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(2),
        reset_after: Duration::from_secs(10),
    };
    cfg.retry = Duration::from_millis(500);
    cfg.tick = Duration::from_millis(50);
    cfg
}

fn find<'a>(statuses: &'a [ServiceStatus], service: &str) -> &'a ServiceStatus {
    statuses
        .iter()
        .find(|s| s.service == service)
        .unwrap_or_else(|| panic!("no status for {service}: {statuses:#?}"))
}

/// App `vault`: `app` writes the `TOKEN` it sees to its volume and is healthy only while its
/// health check sees it too; `other` is granted another secret, as a file only.
fn vault(host: &str, token: &[u8]) -> DesiredApp {
    let yaml = format!(
        r#"
services:
  app:
    image: {host}/cairn/app:v1
    command: ["sh", "-c", "echo \"token=$$TOKEN\" >> /data/seen; exec sleep 600"]
    network_mode: host
    volumes: ["seen:/data"]
    restart: always
    secrets: [token]
    x-cairn-secret-env:
      TOKEN: token
    healthcheck:
      test: ["CMD-SHELL", "test -n \"$$TOKEN\""]
      interval: 300ms
      timeout: 2s
      retries: 2
  other:
    image: {host}/cairn/app:v1
    command: ["sh", "-c", "echo \"token=$$TOKEN\" > /data/seen; exec sleep 600"]
    network_mode: host
    volumes: ["other:/data"]
    restart: always
    secrets: [unrelated]
secrets:
  token: {{}}
  unrelated: {{}}
"#
    );
    let mut app = DesiredApp::new(AppSpec::parse("compose.yml", "vault", &yaml).unwrap());
    app.secrets.insert("token".into(), token.to_vec());
    app.secrets
        .insert("unrelated".into(), b"n0t-in-env".to_vec());
    app
}

/// Wait until `path` reads `want`.
async fn wait_for_file(path: &std::path::Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {text:?}, not {want:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_variable_reaches_the_process_and_its_rotation_restarts_only_its_service() {
    let Some(env) = common::env().await else {
        return;
    };
    let host = env.registry.host();
    common::push(
        &env.registry.url(),
        "cairn/app",
        "v1",
        &common::busybox_image(&[]),
        None,
    )
    .await;
    let cfg = config(&env);
    let seen = cfg.runtime.volume_dir("vault", "seen").join("seen");
    let other_seen = cfg.runtime.volume_dir("vault", "other").join("seen");
    let mut rec = Reconciler::new(env.ctr.clone(), cfg.clone());

    // The process and its health check see the value; the other service does not.
    let desired = vec![vault(&host, b"hunter2")];
    let st = common::converge(&mut rec, &desired, "app healthy, other running", |st| {
        find(st, "app").health == Health::Healthy
            && find(st, "other").state == ServiceState::Running
    })
    .await;
    wait_for_file(&seen, "token=hunter2\n").await;
    wait_for_file(&other_seen, "token=\n").await;
    let (app_pid, other_pid) = (find(&st, "app").pid, find(&st, "other").pid);
    // The value is in no label (the spec hash among them) and no status.
    for c in container::list_containers(&env.ctr).await.unwrap() {
        let labels = format!("{:?}", c.labels);
        assert!(!labels.contains("hunter2"), "{labels}");
    }
    assert!(!format!("{st:?} {desired:?}").contains("hunter2"));

    // A rotation replaces app, whose new process sees the new value; other is not touched.
    let desired = vec![vault(&host, b"hunter3")];
    let st = common::converge(&mut rec, &desired, "app replaced", |st| {
        let app = find(st, "app");
        app.state == ServiceState::Running && app.pid != app_pid
    })
    .await;
    wait_for_file(&seen, "token=hunter2\ntoken=hunter3\n").await;
    assert_eq!(
        find(&st, "other").pid,
        other_pid,
        "other must not be touched"
    );
    assert_eq!(find(&st, "other").restarts, 0);

    // A value that is not text fails app with a status naming the secret, not the value.
    let desired = vec![vault(&host, b"hunter\xff4")];
    let st = common::converge(&mut rec, &desired, "app failed", |st| {
        find(st, "app").state == ServiceState::Failed
    })
    .await;
    let message = find(&st, "app").message.clone().unwrap_or_default();
    assert!(
        message.contains("secret token of app vault cannot be variable TOKEN of service app: its value is not valid UTF-8"),
        "{message}"
    );
    assert!(!format!("{st:?}").contains("hunter"), "{st:#?}");
    assert_eq!(
        find(&st, "other").pid,
        other_pid,
        "other must not be touched"
    );

    // A text value again: app runs with it.
    let desired = vec![vault(&host, b"hunter5")];
    common::converge(&mut rec, &desired, "app back", |st| {
        find(st, "app").state == ServiceState::Running
    })
    .await;
    wait_for_file(&seen, "token=hunter2\ntoken=hunter3\ntoken=hunter5\n").await;

    rec.reconcile(&[]).await.unwrap();
    assert!(container::list_containers(&env.ctr)
        .await
        .unwrap()
        .is_empty());
}
