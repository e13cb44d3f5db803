//! The reconcile loop against a real containerd + runc and docker-registry: a two-service app
//! reachable from the host, a volume surviving recreate, an image update replacing only its
//! service, agent and containerd restarts without duplicates, crash back-off, health checks and
//! a removal that leaves nothing behind.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::container::{self, RuntimeConfig};
use cairn_runtime::reconcile::{
    Backoff, DesiredApp, Health, Reconciler, ReconcilerConfig, ServiceState, ServiceStatus,
};
use cairn_testsupport::free_port;

fn config(env: &common::Env) -> ReconcilerConfig {
    let mut runtime = RuntimeConfig::new(env.containerd.scratch_dir("data"));
    runtime.runc_root = Some(env.containerd.runc_root());
    runtime.stop_grace = Duration::from_secs(1);
    runtime.network = common::network_config(&env.containerd);
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.backoff = Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(10),
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

fn running(statuses: &[ServiceStatus], service: &str) -> bool {
    statuses
        .iter()
        .any(|s| s.service == service && s.state == ServiceState::Running)
}

fn shop(host: &str, port: u16, worker_tag: &str, web_env: &str) -> DesiredApp {
    let yaml = format!(
        r#"
services:
  web:
    image: {host}/cairn/web:v1
    command: ["sh", "-c", "echo started >> /data/starts; exec httpd -f -p 127.0.0.1:{port} -h /www"]
    environment: {{MODE: "{web_env}"}}
    network_mode: host
    ports: ["{port}:{port}"]
    volumes: ["webdata:/data"]
    restart: always
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{port}/"]
      interval: 300ms
      timeout: 2s
      retries: 2
  worker:
    image: {host}/cairn/worker:{worker_tag}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    network_mode: host
    restart: always
"#
    );
    DesiredApp::new(AppSpec::parse("compose.yml", "shop", &yaml).unwrap())
}

async fn http_get(port: u16) -> String {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .expect("web must answer on the host loopback");
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_service_app_update_restart_and_removal() {
    let Some(mut env) = common::env().await else {
        return;
    };
    let registry = env.registry.url();
    let host = env.registry.host();
    common::push(
        &registry,
        "cairn/web",
        "v1",
        &common::busybox_image(&[("etc/role", "web\n")]),
        None,
    )
    .await;
    common::push(
        &registry,
        "cairn/worker",
        "v1",
        &common::busybox_image(&[("etc/role", "worker v1\n")]),
        None,
    )
    .await;
    common::push(
        &registry,
        "cairn/worker",
        "v2",
        &common::busybox_image(&[("etc/role", "worker v2\n")]),
        None,
    )
    .await;
    let port = free_port();
    let cfg = config(&env);
    let volume = cfg.runtime.volume_dir("shop", "webdata");
    let mut rec = Reconciler::new(env.ctr.clone(), cfg.clone());

    // Deploy: both run, web answers on the host and becomes healthy.
    let desired = vec![shop(&host, port, "v1", "a")];
    let st = common::converge(
        &mut rec,
        &desired,
        "both services running and web healthy",
        |st| {
            running(st, "worker") && running(st, "web") && find(st, "web").health == Health::Healthy
        },
    )
    .await;
    assert_eq!(http_get(port).await, "hello from cairn\n");
    let web_pid = find(&st, "web").pid.unwrap();
    let worker_pid = find(&st, "worker").pid.unwrap();

    // A spec change recreates web only; its volume survives.
    let desired = vec![shop(&host, port, "v1", "b")];
    let st = common::converge(&mut rec, &desired, "web recreated", |st| {
        running(st, "web") && find(st, "web").pid != Some(web_pid)
    })
    .await;
    // The new container appends a second line to the file the first one wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(volume.join("starts")).unwrap_or_default() != "started\nstarted\n"
    {
        let text = std::fs::read_to_string(volume.join("starts"));
        assert!(
            Instant::now() < deadline,
            "the volume must survive the recreate: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        find(&st, "worker").pid,
        Some(worker_pid),
        "worker must not be touched"
    );
    let web_pid = find(&st, "web").pid.unwrap();

    // An image update of worker replaces only worker.
    let desired = vec![shop(&host, port, "v2", "b")];
    let st = common::converge(&mut rec, &desired, "worker on v2", |st| {
        running(st, "worker") && find(st, "worker").pid != Some(worker_pid)
    })
    .await;
    assert_eq!(
        find(&st, "web").pid,
        Some(web_pid),
        "web must not be touched by worker's update"
    );
    let worker_pid = find(&st, "worker").pid.unwrap();
    let containers = container::list_containers(&env.ctr).await.unwrap();
    let worker = containers.iter().find(|c| c.id == "shop_worker").unwrap();
    assert_eq!(worker.image, format!("{host}/cairn/worker:v2"));
    let out = env.containerd.scratch_dir("exec").join("role.out");
    let status = container::exec(
        &env.ctr,
        "shop_worker",
        vec!["cat".into(), "/etc/role".into()],
        Duration::from_secs(5),
        Some(&out),
    )
    .await;
    assert_eq!(status.unwrap(), 0, "cat /etc/role succeeds in the v2 image");
    // The shim copies exec output asynchronously; it lands shortly after the exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&out).unwrap_or_default() != "worker v2\n" {
        let text = std::fs::read_to_string(&out);
        assert!(
            Instant::now() < deadline,
            "worker must run the v2 image: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A new reconciler (agent restart) changes nothing.
    drop(rec);
    let mut rec = Reconciler::new(env.ctr.clone(), cfg.clone());
    let st = rec.reconcile(&desired).await.unwrap();
    assert_eq!(
        (find(&st, "web").pid, find(&st, "worker").pid),
        (Some(web_pid), Some(worker_pid))
    );
    assert_eq!(container::list_containers(&env.ctr).await.unwrap().len(), 2);

    // containerd restarts: same containers, same tasks.
    env.containerd.restart();
    let st = common::converge(
        &mut rec,
        &desired,
        "reconcile after containerd restart",
        |st| running(st, "web") && running(st, "worker"),
    )
    .await;
    assert_eq!(
        (find(&st, "web").pid, find(&st, "worker").pid),
        (Some(web_pid), Some(worker_pid))
    );
    assert_eq!(
        container::list_containers(&env.ctr).await.unwrap().len(),
        2,
        "no duplicates"
    );
    assert_eq!(http_get(port).await, "hello from cairn\n");
    assert_eq!(find(&st, "web").restarts, 0);

    // Removal leaves nothing in containerd.
    rec.reconcile(&[]).await.unwrap();
    assert!(container::list_containers(&env.ctr)
        .await
        .unwrap()
        .is_empty());
    assert!(
        env.ctr.list_images(&[]).await.unwrap().is_empty(),
        "images of the app must be gone"
    );
    assert!(
        env.ctr.list_snapshots().await.unwrap().is_empty(),
        "snapshots left: {:?}",
        env.ctr.list_snapshots().await.unwrap()
    );
    assert!(env.ctr.list_leases().await.unwrap().is_empty());
    assert!(
        env.ctr.list_content().await.unwrap().is_empty(),
        "content left: {:?}",
        env.ctr.list_content().await.unwrap()
    );
    assert!(!cfg.runtime.app_dir("shop").join("run").exists());
    assert!(
        volume.join("starts").exists(),
        "volumes are kept on removal"
    );
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .is_err(),
        "web must be stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_backoff_health_and_exit_policies() {
    let Some(env) = common::env().await else {
        return;
    };
    // These services are on their app's network.
    if !common::cni_present() {
        return;
    }
    let host = env.registry.host();
    common::push(
        &env.registry.url(),
        "cairn/box",
        "1",
        &common::busybox_image(&[]),
        None,
    )
    .await;
    let yaml = format!(
        r#"
services:
  crash:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "echo crashing; exit 1"]
    restart: always
  sick:
    image: {host}/cairn/box:1
    command: ["sleep", "1000"]
    healthcheck: {{test: ["CMD", "false"], interval: 200ms, retries: 2}}
  fine:
    image: {host}/cairn/box:1
    command: ["sleep", "1000"]
    healthcheck: {{test: "test -d /www", interval: 200ms}}
  once:
    image: {host}/cairn/box:1
    command: ["true"]
  limited:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "exit 3"]
    restart: on-failure:2
  ghost:
    image: {host}/cairn/missing:1
"#
    );
    let desired = vec![DesiredApp::new(
        AppSpec::parse("compose.yml", "flaky", &yaml).unwrap(),
    )];
    let mut cfg = config(&env);
    // Rotated past 12 bytes (three quarters), so every second "crashing" line; the newest 16
    // bytes are kept.
    cfg.runtime.log_max_bytes = 16;
    cfg.runtime.log_keep = 2;
    let rec = Reconciler::new(env.ctr.clone(), cfg.clone());
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(Arc::new(desired));
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(Vec::new());
    let loop_task = tokio::spawn(rec.run(desired_rx, status_tx));

    // Record when the crash counter moves.
    let mut restarts_at: Vec<(u32, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let statuses = loop {
        tokio::time::timeout(Duration::from_secs(10), status_rx.changed())
            .await
            .expect("status updates")
            .unwrap();
        let st = status_rx.borrow_and_update().clone();
        if let Some(c) = st.iter().find(|s| s.service == "crash") {
            if restarts_at.last().is_none_or(|(n, _)| *n != c.restarts) {
                restarts_at.push((c.restarts, Instant::now()));
            }
        }
        let done = restarts_at.last().is_some_and(|(n, _)| *n >= 4)
            && find(&st, "sick").state == ServiceState::Unhealthy
            && find(&st, "fine").health == Health::Healthy
            && find(&st, "limited").state == ServiceState::Exited
            && find(&st, "once").state == ServiceState::Exited;
        if done {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "did not converge: restarts {restarts_at:?}\n{st:#?}"
        );
    };

    // Gaps between restarts grow (200 ms, 400 ms, 800 ms ... plus start time).
    let times: Vec<Instant> = restarts_at
        .iter()
        .filter(|(n, _)| *n >= 1)
        .map(|(_, t)| *t)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 3, "{restarts_at:?}");
    assert!(
        gaps[2] > gaps[0] + Duration::from_millis(300),
        "back-off must grow: {gaps:?}"
    );
    assert!(
        gaps[2] >= Duration::from_millis(700),
        "third gap at least ~800 ms: {gaps:?}"
    );

    let sick = find(&statuses, "sick");
    assert_eq!(sick.health, Health::Unhealthy);
    assert!(
        sick.message
            .as_deref()
            .unwrap_or("")
            .contains("exited with 1"),
        "{sick:?}"
    );
    let once = find(&statuses, "once");
    assert_eq!((once.exit_code, once.restarts), (Some(0), 0));
    let limited = find(&statuses, "limited");
    assert_eq!((limited.exit_code, limited.restarts), (Some(3), 2));
    let ghost = find(&statuses, "ghost");
    assert_eq!(ghost.state, ServiceState::Pending);
    assert!(
        ghost
            .message
            .as_deref()
            .unwrap_or("")
            .contains("cairn/missing:1"),
        "{ghost:?}"
    );
    // Every start wrote a line; the log was rotated by size, keeping two old files.
    let log = cfg.runtime.log_path("flaky", "crash");
    let rotated =
        std::fs::read_to_string(log.with_extension("log.1")).expect("crash.log.1 after rotation");
    assert!(rotated.contains("crashing"), "{rotated}");
    assert!(log.with_extension("log.2").exists());
    assert!(!log.with_extension("log.3").exists());

    // Stop the loop, then remove the app.
    drop(desired_tx);
    tokio::time::timeout(Duration::from_secs(30), loop_task)
        .await
        .expect("loop ends when desired is dropped")
        .unwrap();
    let mut rec = Reconciler::new(env.ctr.clone(), cfg);
    rec.reconcile(&[]).await.unwrap();
    assert!(container::list_containers(&env.ctr)
        .await
        .unwrap()
        .is_empty());
    assert!(env.ctr.list_snapshots().await.unwrap().is_empty());
    assert!(env.ctr.list_images(&[]).await.unwrap().is_empty());
}
