//! The reconcile loop against a real containerd + runc and docker-registry: a two-service app
//! reachable from the host, a volume surviving recreate, an image update replacing only its
//! service, agent and containerd restarts without duplicates, crash back-off, health checks,
//! `depends_on` start order and a removal that leaves nothing behind.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cairn_compose::{AppSpec, DependsOn};
use cairn_runtime::container::{self, LABEL_STARTED_AT};
use cairn_runtime::reconcile::{
    Backoff, DesiredApp, Health, Reconciler, ReconcilerConfig, ServiceState, ServiceStatus,
};
use cairn_testsupport::free_port;

fn config(env: &common::Env) -> ReconcilerConfig {
    let mut runtime = common::runtime_config(env);
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
    secrets: [token]
    configs: [{{source: worker.conf, target: /etc/worker.conf}}]
secrets:
  token: {{}}
configs:
  worker.conf: {{content: "tag={worker_tag}"}}
"#
    );
    let mut app = DesiredApp::new(AppSpec::parse("compose.yml", "shop", &yaml).unwrap());
    app.secrets.insert("token".into(), b"s3cret".to_vec());
    app
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
    assert!(cfg.runtime.service_files_dir("shop", "worker").exists());
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
        !cfg.runtime.app_files_dir("shop").exists(),
        "secret and config files are removed with the app"
    );
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
    common::push_box(&env).await;
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

/// When `path` was last written, waiting up to 10 s for it: a service reported running may
/// not have written its file yet.
fn mtime(path: &Path) -> SystemTime {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_starts_dependents_once_dependencies_are_healthy_or_done() {
    let Some(env) = common::env().await else {
        return;
    };
    let host = env.registry.host();
    common::push_box(&env).await;
    // db becomes healthy only once /state/ready appears, 2 s after it started; migrate runs
    // once db is healthy and exits 0; web needs db healthy, api needs migrate done. `broken`
    // fails for good, so `report`, which needs it done, is blocked. web and api note when they
    // started in the shared volume. Long-running ones stop at once on SIGTERM.
    let (idle, idle_loop) = ("trap 'exit 0' TERM", "while true; do sleep 0.1; done");
    let yaml = format!(
        r#"
services:
  db:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "{idle}; sleep 2; touch /state/ready; {idle_loop}"]
    network_mode: host
    volumes: ["state:/state"]
    healthcheck: {{test: "test -f /state/ready", interval: 100ms, retries: 100}}
  migrate:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "test -f /state/ready && sleep 0.5 && touch /state/migrated"]
    network_mode: host
    volumes: ["state:/state"]
    depends_on: {{db: {{condition: service_healthy}}}}
  web:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "touch /state/web-started; {idle}; {idle_loop}"]
    network_mode: host
    volumes: ["state:/state"]
    restart: always
    depends_on: {{db: {{condition: service_healthy}}}}
  api:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "touch /state/api-started; {idle}; {idle_loop}"]
    network_mode: host
    volumes: ["state:/state"]
    restart: always
    depends_on: {{migrate: {{condition: service_completed_successfully}}}}
  broken:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "exit 3"]
    network_mode: host
  report:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "{idle}; {idle_loop}"]
    network_mode: host
    depends_on: {{broken: {{condition: service_completed_successfully}}}}
"#
    );
    let spec = AppSpec::parse("compose.yml", "deps", &yaml).unwrap();
    assert_eq!(
        spec.services["api"].depends_on["migrate"],
        DependsOn::ServiceCompletedSuccessfully
    );
    let cfg = config(&env);
    let state = cfg.runtime.volume_dir("deps", "state");
    let rec = Reconciler::new(env.ctr.clone(), cfg.clone());
    let (desired_tx, desired_rx) =
        tokio::sync::watch::channel(Arc::new(vec![DesiredApp::new(spec)]));
    let (status_tx, mut status_rx) = tokio::sync::watch::channel(Vec::new());
    let loop_task = tokio::spawn(rec.run(desired_rx, status_tx));

    let started = Instant::now();
    let mut web_waited = None;
    let deadline = started + Duration::from_secs(30);
    let statuses = loop {
        tokio::time::timeout(Duration::from_secs(10), status_rx.changed())
            .await
            .expect("status updates")
            .unwrap();
        let st = status_rx.borrow_and_update().clone();
        if st.is_empty() {
            continue;
        }
        let web = find(&st, "web");
        if web.state == ServiceState::Pending && find(&st, "db").health != Health::Healthy {
            web_waited = web.message.clone();
        }
        let done = running(&st, "web")
            && running(&st, "api")
            && find(&st, "migrate").state == ServiceState::Exited
            && find(&st, "report").state == ServiceState::Failed;
        if done {
            break st;
        }
        assert!(Instant::now() < deadline, "did not converge: {st:#?}");
    };
    let took = started.elapsed();

    assert_eq!(
        web_waited.as_deref(),
        Some("waiting for db to be healthy (its health check has not passed yet)"),
        "web is reported waiting while db is not healthy"
    );
    let migrate = find(&statuses, "migrate");
    assert_eq!(
        (migrate.exit_code, migrate.restarts),
        (Some(0), 0),
        "migrate ran once and completed"
    );
    assert_eq!(
        find(&statuses, "report").message.as_deref(),
        Some("blocked by broken: it exited with status 3 and its restart policy keeps it down")
    );

    // The order, by the clocks of the files the services wrote and of containerd.
    let ready = mtime(&state.join("ready"));
    let containers = container::list_containers(&env.ctr).await.unwrap();
    let get = |id: &str| containers.iter().find(|c| c.id == id).unwrap();
    let started_at = |id: &str| {
        let ms: u64 = get(id).label(LABEL_STARTED_AT).parse().unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    };
    let db_started = started_at("deps_db");
    assert!(
        ready.duration_since(db_started).unwrap() >= Duration::from_millis(1500),
        "db became healthy ~2 s after it started"
    );
    let web_started = mtime(&state.join("web-started"));
    assert!(
        web_started > ready && started_at("deps_web") > ready,
        "web's task started before db could be healthy"
    );
    assert!(
        state.join("migrated").exists(),
        "migrate saw db's file and completed"
    );
    let migrate_exited = get("deps_migrate")
        .task
        .as_ref()
        .and_then(|t| t.exited_at)
        .expect("migrate exited");
    let api_started = mtime(&state.join("api-started"));
    assert!(
        api_started > migrate_exited && started_at("deps_api") > migrate_exited,
        "api's task started before migrate completed"
    );
    // Promptly: a health change or an exit is acted on within a few probe intervals or ticks.
    let lag = |later: SystemTime, earlier: SystemTime| later.duration_since(earlier).unwrap();
    assert!(
        lag(web_started, ready) < Duration::from_secs(5),
        "web started {:?} after db's file",
        lag(web_started, ready)
    );
    assert!(
        lag(api_started, migrate_exited) < Duration::from_secs(5),
        "api started {:?} after migrate exited",
        lag(api_started, migrate_exited)
    );
    assert!(
        get("deps_report").task.is_none() && get("deps_report").label(LABEL_STARTED_AT).is_empty(),
        "report never started"
    );
    eprintln!("depends_on app converged in {took:?}");

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
}
