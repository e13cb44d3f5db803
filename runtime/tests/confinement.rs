//! What a service asks of its container, applied by a real containerd + runc: users by name from
//! the image's user database (with their groups), capabilities for a non-root user, host
//! devices, tmpfs, ulimits, sysctls, labels, extra hosts, its own stop signal and grace period,
//! and log limits under a log flood.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_compose::{
    AppSpec, DeviceMapping, ExtraHost, LogLimits, ServiceSpec, TmpfsMount, Ulimit,
};
use cairn_runtime::container::{self, ContainerError, NewContainer, RuntimeConfig};
use cairn_runtime::image::{no_progress, pull_image, ImageInfo, PullOptions};
use cairn_runtime::reconcile::{DesiredApp, Reconciler, ReconcilerConfig, ServiceState};
use common::LayerEntry;

const TIMEOUT: Duration = Duration::from_secs(90);

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:App:/home/app:/bin/sh\n\
    web:x:33:33::/www:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nvideo:x:44:app\naudio:x:29:web,app\nwww-data:x:33:\n";

/// Push `image` as `cairn/<repo>:1` and pull it into containerd.
async fn pull(env: &common::Env, repo: &str, image: &common::TestImage) -> ImageInfo {
    common::push(
        &env.registry.url(),
        &format!("cairn/{repo}"),
        "1",
        image,
        None,
    )
    .await;
    let reference = format!("{}/cairn/{repo}:1", env.registry.host());
    pull_image(&env.ctr, &reference, &PullOptions::default(), &no_progress)
        .await
        .unwrap()
}

fn runtime_config(env: &common::Env) -> RuntimeConfig {
    let mut cfg = common::runtime_config(env);
    cfg.stop_grace = Duration::from_millis(500);
    cfg
}

/// Service `s` of a minimal app running `script` (the fields under test are set on it after);
/// its `$` are escaped, since Compose interpolates `$VAR` itself.
fn service(image: &ImageInfo, script: &str) -> ServiceSpec {
    let script = script.replace('$', "$$");
    let yaml = format!(
        "services:\n  s:\n    image: {}\n    command: [\"sh\", \"-c\", {script:?}]\n",
        image.name
    );
    AppSpec::parse("compose.yml", "conf", &yaml)
        .unwrap()
        .services
        .remove("s")
        .unwrap()
}

static NO_CONFIGS: BTreeMap<String, String> = BTreeMap::new();

fn new_container<'a>(
    service: &'a str,
    spec: &'a ServiceSpec,
    image: &'a ImageInfo,
    secrets: &'a BTreeMap<String, Vec<u8>>,
) -> NewContainer<'a> {
    NewContainer {
        app: "conf",
        service,
        spec,
        image,
        labels: HashMap::new(),
        secrets,
        configs: &NO_CONFIGS,
        netns: None,
        hosts_file: None,
        userns: None,
    }
}

/// Wait until `path` contains `marker`; its text.
async fn wait_for(path: &Path, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(marker) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{marker:?} not in {}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Create service `name` from `spec`, start it, wait for `done` in its log, remove it; the log.
async fn run_to_end(
    env: &common::Env,
    cfg: &RuntimeConfig,
    name: &str,
    spec: &ServiceSpec,
    image: &ImageInfo,
) -> String {
    let secrets = BTreeMap::new();
    let new = new_container(name, spec, image, &secrets);
    let id = container::create_container(&env.ctr, cfg, &new)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let log = cfg.log_path("conf", name);
    container::start_task(
        &env.ctr,
        cfg,
        &id,
        &cfg.service_log("conf", name, &Default::default()),
    )
    .await
    .unwrap();
    let text = wait_for(&log, "done\n").await;
    container::remove_container(&env.ctr, &id, cfg.stop_grace)
        .await
        .unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_by_name_come_from_the_images_user_database() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        // /etc/passwd is an absolute symbolic link: it must resolve inside the image (the host
        // has no /etc/passwd.real), in a layer above the base one, whose /etc/passwd it replaces.
        let img = common::with_layer(
            &common::busybox_image(&[]),
            &[
                LayerEntry::Symlink("etc/passwd", "/etc/passwd.real"),
                LayerEntry::File("etc/passwd.real", PASSWD),
                LayerEntry::File("etc/group", GROUP),
            ],
            Some("app"),
        );
        let image = pull(&env, "users", &img).await;
        let cfg = runtime_config(&env);
        let probe = "id; grep -E '^Cap(Eff|Amb):' /proc/self/status; \
            (httpd -p 80 -h /www 2>/dev/null && echo bound-80) || echo bind-refused; echo done";

        // The image's own USER, a name: its uid, primary group and supplementary groups.
        let spec = service(&image, probe);
        let started = Instant::now();
        let text = run_to_end(&env, &cfg, "image-user", &spec, &image).await;
        eprintln!("image user run took {:?}", started.elapsed());
        let id_line = text.lines().next().unwrap();
        assert!(
            id_line.starts_with("uid=1000(app) gid=1000(app) groups="),
            "{text}"
        );
        for group in ["29(audio)", "44(video)", "1000(app)"] {
            assert!(id_line.contains(group), "{group} missing: {text}");
        }
        // Non-root without cap_add: no capability, no port below 1024 (as Docker).
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert!(text.contains("bind-refused"), "{text}");

        // `user: NAME:GROUP`: that group only. With cap_add, the non-root user holds the added
        // capability (ambient), so it may bind port 80.
        let mut spec = service(&image, probe);
        spec.user = Some("web:video".into());
        spec.cap_add = ["CAP_NET_BIND_SERVICE".to_string()].into();
        let text = run_to_end(&env, &cfg, "named", &spec, &image).await;
        assert!(
            text.contains("uid=33(web) gid=44(video) groups=44(video)\n"),
            "{text}"
        );
        assert!(text.contains("CapEff:\t0000000000000400"), "{text}");
        assert!(text.contains("CapAmb:\t0000000000000400"), "{text}");
        assert!(text.contains("bound-80"), "{text}");

        // A numeric uid without an entry works as before (gid = uid).
        let mut spec = service(&image, "id; echo done");
        spec.user = Some("4242".into());
        let text = run_to_end(&env, &cfg, "numeric", &spec, &image).await;
        assert!(text.starts_with("uid=4242 gid=4242"), "{text}");

        // A whiteout in an upper layer deletes the image's /etc/group: a group name cannot be
        // found, a numeric group still works.
        let without_group =
            common::with_layer(&img, &[LayerEntry::File("etc/.wh.group", "")], None);
        let image2 = pull(&env, "users-nogroup", &without_group).await;
        let mut spec = service(&image2, "id; echo done");
        spec.user = Some("app:video".into());
        let secrets = BTreeMap::new();
        let err = container::create_container(
            &env.ctr,
            &cfg,
            &new_container("nogroup", &spec, &image2, &secrets),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "group \"video\" is not in the image's /etc/group (the image has no such file)"
            ),
            "{err}"
        );
        spec.user = Some("app:44".into());
        let text = run_to_end(&env, &cfg, "nogroup", &spec, &image2).await;
        assert!(text.starts_with("uid=1000(app) gid=44 groups=44"), "{text}");

        // An unknown name is refused before anything is created, naming image and file.
        let mut spec = service(&image, "echo done");
        spec.user = Some("nobody".into());
        let err = container::create_container(
            &env.ctr,
            &cfg,
            &new_container("unknown", &spec, &image, &secrets),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ContainerError::User { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&image.name)
                && message.contains("\"nobody\" is not in the image's /etc/passwd"),
            "{message}"
        );
        assert!(container::list_containers(&env.ctr)
            .await
            .unwrap()
            .is_empty());
        // The views made to read the user database are gone.
        let snapshots = env.ctr.list_snapshots().await.unwrap();
        assert!(
            snapshots.iter().all(|s| !s.name.starts_with("cairn-read-")),
            "{:?}",
            snapshots.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        assert!(
            std::fs::read_dir(cfg.app_dir("conf").join("run"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("cairn-read-")),
            "mount points left"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_tmpfs_ulimits_sysctls_labels_and_extra_hosts() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let image = pull(&env, "box", &common::busybox_image(&[])).await;
        let cfg = runtime_config(&env);
        let script = "echo hi > /dev/cairn-test && echo dev-written; \
            grep ' /scratch ' /proc/mounts; stat -c 'mode %a' /scratch; \
            echo nofile $(ulimit -n) $(ulimit -Hn); \
            echo port-start $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
            grep db.example /etc/hosts; echo done; sleep 30";
        let mut spec = service(&image, script);
        spec.devices = vec![DeviceMapping {
            host: "/dev/null".into(),
            container: "/dev/cairn-test".into(),
            permissions: "rw".into(),
        }];
        spec.tmpfs = vec![TmpfsMount {
            target: "/scratch".into(),
            size_bytes: 2 << 20,
            mode: 0o1770,
        }];
        spec.ulimits.insert(
            "nofile".into(),
            Ulimit {
                soft: 1234,
                hard: 2345,
            },
        );
        spec.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "1000".into());
        spec.labels.insert("com.example.team".into(), "edge".into());
        spec.extra_hosts = vec![ExtraHost {
            host: "db.example".into(),
            ip: "10.1.2.3".parse().unwrap(),
        }];
        let secrets = BTreeMap::new();
        let new = new_container("all", &spec, &image, &secrets);
        let id = container::create_container(&env.ctr, &cfg, &new)
            .await
            .unwrap();
        let log = cfg.log_path("conf", "all");
        container::start_task(
            &env.ctr,
            &cfg,
            &id,
            &cfg.service_log("conf", "all", &Default::default()),
        )
        .await
        .unwrap();
        let text = wait_for(&log, "done\n").await;
        assert!(text.contains("dev-written"), "{text}");
        assert!(
            text.contains(
                "tmpfs /scratch tmpfs rw,nosuid,nodev,noexec,relatime,size=2048k,mode=1770"
            ),
            "{text}"
        );
        assert!(text.contains("mode 1770"), "{text}");
        assert!(text.contains("nofile 1234 2345"), "{text}");
        assert!(text.contains("port-start 1000"), "{text}");
        assert!(text.contains("10.1.2.3\tdb.example"), "{text}");
        let listed = container::list_containers(&env.ctr).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label("cairn.label/com.example.team"), "edge");
        // Never under its own name: containerd acts on some labels itself.
        assert!(!listed[0].labels.contains_key("com.example.team"));
        assert_eq!(listed[0].label("cairn.app"), "conf");
        container::remove_container(&env.ctr, &id, Duration::from_millis(200))
            .await
            .unwrap();

        // A host path that is not a device is refused before anything is made.
        let not_a_device = env.containerd.scratch_dir("files").join("plain");
        std::fs::write(&not_a_device, "x").unwrap();
        spec.devices[0].host = not_a_device.display().to_string();
        let err = container::create_container(
            &env.ctr,
            &cfg,
            &new_container("bad", &spec, &image, &secrets),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ContainerError::Device { .. }), "{err}");
        assert!(
            err.to_string().contains("is not a path under /dev/"),
            "{err}"
        );
        assert!(container::list_containers(&env.ctr)
            .await
            .unwrap()
            .is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_stop_with_their_own_signal_and_grace() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let image = pull(&env, "stop", &common::busybox_image(&[])).await;
        let mut cfg = runtime_config(&env);
        // Far longer than any test waits: only the containers' own values may apply.
        cfg.stop_grace = Duration::from_secs(30);
        let traps = "trap 'echo got-usr1; exit 0' USR1; trap 'echo got-term' TERM; echo ready; \
            while true; do sleep 0.1; done";
        // Stops on SIGUSR1, ignores SIGTERM.
        let mut usr1 = service(&image, traps);
        usr1.stop_signal = Some(10);
        usr1.stop_grace_period = Some(Duration::from_secs(20));
        // PID 1 ignores a signal it has no handler for: SIGUSR1 does nothing, so SIGKILL must
        // follow after its 1 s grace.
        let mut stubborn = service(
            &image,
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        );
        stubborn.stop_signal = Some(10);
        stubborn.stop_grace_period = Some(Duration::from_secs(1));
        // A container of an older agent: no labels, stopped with the defaults (SIGTERM, which it
        // ignores, and the grace passed in).
        let older = service(&image, traps);
        let secrets = BTreeMap::new();
        let mut ids = HashMap::new();
        for (name, spec) in [("usr1", &usr1), ("stubborn", &stubborn), ("older", &older)] {
            let new = new_container(name, spec, &image, &secrets);
            ids.insert(
                name,
                container::create_container(&env.ctr, &cfg, &new)
                    .await
                    .unwrap(),
            );
        }
        let listed = container::list_containers(&env.ctr).await.unwrap();
        let labels = |id: &str| listed.iter().find(|c| c.id == id).unwrap().labels.clone();
        assert_eq!(labels(&ids["usr1"])["cairn.stop-signal"], "10");
        assert_eq!(labels(&ids["usr1"])["cairn.stop-grace-ms"], "20000");
        assert!(!labels(&ids["older"]).contains_key("cairn.stop-signal"));
        let start = |name: &'static str| {
            let (ctr, cfg, id) = (env.ctr.clone(), cfg.clone(), ids[name].clone());
            async move {
                let log = cfg.log_path("conf", name);
                let from = std::fs::read_to_string(&log).unwrap_or_default().len();
                container::start_task(
                    &ctr,
                    &cfg,
                    &id,
                    &cfg.service_log("conf", name, &Default::default()),
                )
                .await
                .unwrap();
                loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text[from..].contains("ready") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let log_of = |name: &str| std::fs::read_to_string(cfg.log_path("conf", name)).unwrap();

        // A shutdown: each task with its own signal and grace, at once.
        start("usr1").await;
        start("stubborn").await;
        let started = Instant::now();
        assert_eq!(
            container::stop_all_tasks(&env.ctr, cfg.stop_grace)
                .await
                .unwrap(),
            2
        );
        let took = started.elapsed();
        eprintln!("stop_all_tasks took {took:?}");
        assert!(
            took >= Duration::from_secs(1),
            "stubborn killed before its grace: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "the 30 s default applied: {took:?}"
        );
        assert!(log_of("usr1").contains("got-usr1"), "{}", log_of("usr1"));
        assert!(!log_of("usr1").contains("got-term"));

        // Removing: SIGUSR1 stops it at once (well within its 20 s grace).
        start("usr1").await;
        let started = Instant::now();
        container::remove_container(&env.ctr, &ids["usr1"], cfg.stop_grace)
            .await
            .unwrap();
        let took = started.elapsed();
        eprintln!("remove with SIGUSR1 took {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(log_of("usr1").matches("got-usr1").count(), 2);

        // Without labels: SIGTERM (ignored), SIGKILL after the grace passed in.
        start("older").await;
        let started = Instant::now();
        container::remove_container(&env.ctr, &ids["older"], Duration::from_millis(800))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
        let text = log_of("older");
        assert!(
            text.contains("got-term") && !text.contains("got-usr1"),
            "{text}"
        );
        container::remove_container(&env.ctr, &ids["stubborn"], cfg.stop_grace)
            .await
            .unwrap();
        assert!(container::list_containers(&env.ctr)
            .await
            .unwrap()
            .is_empty());
    })
    .await
    .expect("test timed out");
}

fn reconciler_config(env: &common::Env) -> ReconcilerConfig {
    let mut runtime = runtime_config(env);
    runtime.network = common::network_config(&env.containerd);
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.retry = Duration::from_millis(500);
    cfg.tick = Duration::from_millis(50);
    cfg
}

/// Sizes of a log and its rotated copies `.1` ... (up to `.MAX_LOG_FILES`).
fn log_sizes(log: &Path) -> (u64, Vec<(usize, u64)>) {
    let current = std::fs::metadata(log).map_or(0, |m| m.len());
    let rotated = (1..=container::MAX_LOG_FILES)
        .filter_map(|n| {
            let path = format!("{}.{n}", log.display());
            std::fs::metadata(path).ok().map(|m| (n, m.len()))
        })
        .collect();
    (current, rotated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_stays_within_the_services_log_limits() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let image = pull(&env, "flood", &common::busybox_image(&[])).await;
        let yaml = format!(
            r#"
services:
  flood:
    image: {}
    command: ["sh", "-c", "yes 'a log line of a service that writes as fast as it can'"]
    network_mode: host
    deploy: {{resources: {{limits: {{cpus: "0.5"}}}}}}
"#,
            image.name
        );
        let mut spec = AppSpec::parse("compose.yml", "flood", &yaml).unwrap();
        const MAX_BYTES: u64 = 256 << 10;
        const MAX_FILES: u32 = 3;
        spec.services.get_mut("flood").unwrap().logging = LogLimits {
            max_bytes: Some(MAX_BYTES),
            max_files: Some(MAX_FILES),
        };
        let desired = vec![DesiredApp::new(spec)];
        let cfg = reconciler_config(&env);
        let log = cfg.runtime.log_path("flood", "flood");
        // Copies of a larger limit set before are dropped at the first rotation.
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        for n in 1..=6 {
            std::fs::write(format!("{}.{n}", log.display()), "old").unwrap();
        }
        let mut rec = Reconciler::new(env.ctr.clone(), cfg);
        common::converge(&mut rec, &desired, "flood running", |st| {
            st.iter().all(|s| s.state == ServiceState::Running)
        })
        .await;

        // No reconcile pass runs now: the writer alone keeps the budget, at every moment.
        let bound = MAX_BYTES * u64::from(MAX_FILES);
        let (mut worst_total, mut rotations, mut last_first) = (0u64, 0, String::new());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let (current, rotated) = log_sizes(&log);
            let total = current + rotated.iter().map(|(_, s)| s).sum::<u64>();
            worst_total = worst_total.max(total);
            assert!(total <= bound, "{total} bytes on disk > the budget {bound}: {rotated:?}");
            assert!(current <= MAX_BYTES, "current file {current} > {MAX_BYTES}");
            // (`.1` may be missing for a moment: it is renamed to `.2` before the file to `.1`.)
            assert!(
                rotated.iter().all(|(n, _)| *n < MAX_FILES as usize),
                "copies beyond keep: {rotated:?}"
            );
            for (n, size) in &rotated {
                assert!(*size <= MAX_BYTES, ".{n} holds {size} > {MAX_BYTES}");
            }
            // A new `.1` (its first line differs) is a rotation seen.
            let first = std::fs::read_to_string(format!("{}.1", log.display()))
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            if first != last_first {
                rotations += 1;
                last_first = first;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("log flood: {rotations} rotations seen in 3 s, at most {worst_total} of {bound} bytes on disk");
        assert!(rotations >= 3, "the flood must rotate the log again and again to test anything");

        // Down again: the container goes, its logs stay (like `docker compose down`).
        common::converge(&mut rec, &[], "flood removed", |_| true).await;
        assert!(container::list_containers(&env.ctr).await.unwrap().is_empty());
        for n in 1..MAX_FILES {
            let copy = std::fs::read_to_string(format!("{}.{n}", log.display())).unwrap();
            assert!(
                copy.contains("a log line of a service"),
                ".{n} holds the service's output: {}",
                &copy[..80.min(copy.len())]
            );
        }
        // The old copies beyond the limit are gone.
        assert!(!Path::new(&format!("{}.{MAX_FILES}", log.display())).exists());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_hosts_of_one_service_in_an_app_network() {
    let Some(env) = common::env().await else {
        return;
    };
    if !common::cni_present() {
        return;
    }
    tokio::time::timeout(TIMEOUT, async {
        let image = pull(&env, "hosts", &common::busybox_image(&[])).await;
        let yaml = format!(
            r#"
services:
  a:
    image: {0}
    command: ["sh", "-c", "sleep 60"]
  b:
    image: {0}
    command: ["sh", "-c", "sleep 60"]
"#,
            image.name
        );
        let mut spec = AppSpec::parse("compose.yml", "hosts", &yaml).unwrap();
        spec.services.get_mut("a").unwrap().extra_hosts = vec![ExtraHost {
            host: "db.example".into(),
            ip: "10.1.2.3".parse().unwrap(),
        }];
        let desired = vec![DesiredApp::new(spec)];
        let cfg = reconciler_config(&env);
        let out_dir = env.containerd.scratch_dir("hosts-out");
        let mut rec = Reconciler::new(env.ctr.clone(), cfg);
        common::converge(&mut rec, &desired, "both running", |st| {
            st.len() == 2 && st.iter().all(|s| s.state == ServiceState::Running)
        })
        .await;
        let hosts_of = |service: &'static str| {
            let ctr = env.ctr.clone();
            let out = out_dir.join(service);
            async move {
                let _ = std::fs::remove_file(&out);
                let id = container::container_id("hosts", service);
                let argv = vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    "cat /etc/hosts; echo end-of-hosts".to_string(),
                ];
                let status = container::exec(&ctr, &id, argv, Duration::from_secs(5), Some(&out))
                    .await
                    .unwrap();
                assert_eq!(status, 0);
                wait_for(&out, "end-of-hosts").await
            }
        };
        // Both see each other (the app's file); only a has its extra line.
        let a = hosts_of("a").await;
        let b = hosts_of("b").await;
        for text in [&a, &b] {
            assert!(text.contains("\ta\n") && text.contains("\tb\n"), "{text}");
        }
        assert!(a.contains("10.1.2.3\tdb.example\n"), "{a}");
        assert!(!b.contains("db.example"), "{b}");
        let statuses = rec.reconcile(&[]).await.unwrap();
        assert!(statuses.is_empty());
        assert!(container::list_containers(&env.ctr)
            .await
            .unwrap()
            .is_empty());
    })
    .await
    .expect("test timed out");
}
