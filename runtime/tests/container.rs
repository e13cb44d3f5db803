//! Container lifecycle against a real containerd + runc: create, start with file logs, exec,
//! cgroup limits, stop with grace then SIGKILL, remove leaving nothing behind.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::container::{self, ContainerError, NewContainer, TaskStatus};
use cairn_runtime::image::{no_progress, pull_image, PullOptions};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_exec_stop_remove() {
    let Some(env) = common::env().await else {
        return;
    };
    tokio::time::timeout(TIMEOUT, async {
        let img = common::busybox_image(&[]);
        common::push(&env.registry.url(), "cairn/box", "1", &img, None).await;
        let reference = format!("{}/cairn/box:1", env.registry.host());
        let image = pull_image(&env.ctr, &reference, &PullOptions::default(), &no_progress).await.unwrap();

        let yaml = format!(
            r#"
services:
  worker:
    image: {reference}
    command: ["sh", "-c", "trap '' TERM; echo hello $$GREETING; echo oops >&2; cat /run/secrets/token; echo; echo data > /data/file; while true; do sleep 1; done"]
    environment: {{GREETING: world}}
    volumes: ["store:/data"]
    secrets: [token]
    deploy: {{resources: {{limits: {{memory: 32m, cpus: "0.5"}}}}}}
secrets:
  token: {{}}
"#
        );
        let app = AppSpec::parse("compose.yml", "lifecycle", &yaml).unwrap();
        let mut cfg = common::runtime_config(&env);
        cfg.stop_grace = Duration::from_millis(500);
        let secrets = BTreeMap::from([("token".to_string(), b"s3cret".to_vec())]);
        let new = NewContainer {
            app: "lifecycle",
            service: "worker",
            spec: &app.services["worker"],
            image: &image,
            labels: HashMap::from([("cairn.spec-hash".to_string(), "h1".to_string())]),
            secrets: &secrets,
            configs: &app.configs,
            netns: None,
            hosts_file: None,
            userns: None,
        };
        let id = container::create_container(&env.ctr, &cfg, &new).await.unwrap();
        assert_eq!(id, "lifecycle_worker");
        let log = cfg.log_path("lifecycle", "worker");
        let pid = container::start_task(&env.ctr, &cfg, &id, &cfg.service_log("lifecycle", "worker", &Default::default())).await.unwrap();
        assert!(pid > 0);
        assert!(cfg.runc_root.as_ref().unwrap().join("cairn").join(&id).exists(), "runc state under the configured root");

        let deadline = Instant::now() + Duration::from_secs(10);
        let volume_file = cfg.volume_dir("lifecycle", "store").join("file");
        while !(std::fs::read_to_string(&volume_file).unwrap_or_default() == "data\n" && std::fs::read_to_string(&log).unwrap_or_default().contains("s3cret")) {
            assert!(Instant::now() < deadline, "log: {:?}", std::fs::read_to_string(&log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello world") && text.contains("oops"), "{text}");
        assert_eq!(std::fs::read_to_string(&volume_file).unwrap(), "data\n");

        // cgroup v1 (or v2) limits.
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory/cairn").join(&id).join("memory.limit_in_bytes");
        let v2 = std::path::Path::new("/sys/fs/cgroup/cairn").join(&id).join("memory.max");
        let limit = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2)).unwrap();
        assert_eq!(limit.trim(), (32u64 << 20).to_string());

        let sh = |cmd: &str| vec!["sh".to_string(), "-c".to_string(), cmd.to_string()];
        assert_eq!(container::exec(&env.ctr, &id, sh("test \"$GREETING\" = world"), Duration::from_secs(5), None).await.unwrap(), 0);
        assert_eq!(container::exec(&env.ctr, &id, sh("exit 3"), Duration::from_secs(5), None).await.unwrap(), 3);
        let err = container::exec(&env.ctr, &id, sh("sleep 10"), Duration::from_millis(300), None).await.unwrap_err();
        assert!(matches!(err, ContainerError::ExecTimeout { .. }), "{err}");
        assert!(container::exec(&env.ctr, &id, vec!["/no/such/program".into()], Duration::from_secs(5), None).await.is_err());
        let out = env.containerd.scratch_dir("exec").join("out");
        assert_eq!(container::exec(&env.ctr, &id, sh("echo to-stdout; echo to-stderr >&2"), Duration::from_secs(5), Some(&out)).await.unwrap(), 0);
        // The shim copies exec output asynchronously; it lands shortly after the exit.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("to-stdout\n") && text.contains("to-stderr\n") {
                break;
            }
            assert!(Instant::now() < deadline, "exec output: {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Confinement as runc applied it: a pids limit, /proc/kcore masked, /proc/sys and
        // /proc/sysrq-trigger read-only, no new privileges, apps first in line for the OOM killer,
        // and a seccomp filter.
        let pids_v1 = std::path::Path::new("/sys/fs/cgroup/pids/cairn").join(&id).join("pids.max");
        let pids_v2 = std::path::Path::new("/sys/fs/cgroup/cairn").join(&id).join("pids.max");
        let pids = std::fs::read_to_string(&pids_v1).or_else(|_| std::fs::read_to_string(&pids_v2)).unwrap();
        assert_eq!(pids.trim(), "1024");
        let probe = env.containerd.scratch_dir("probe").join("out");
        let script = "head -c 1 /proc/kcore 2>/dev/null | wc -c; cat /proc/self/oom_score_adj; grep NoNewPrivs /proc/self/status; \
            (echo h > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-writable || echo sysrq-refused; \
            (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo sys-writable || echo sys-refused; \
            grep '^Seccomp:' /proc/self/status; \
            unshare -U true 2>/dev/null && echo userns-made || echo userns-refused; \
            (mkdir -p /tmp/m && mount -t tmpfs none /tmp/m) 2>/dev/null && echo mounted || echo mount-refused; \
            echo probe-done";
        assert_eq!(container::exec(&env.ctr, &id, sh(script), Duration::from_secs(5), Some(&probe)).await.unwrap(), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&probe).unwrap_or_default();
            if text.contains("probe-done") {
                break text;
            }
            assert!(Instant::now() < deadline, "probe output: {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines[0], "0", "/proc/kcore readable: {text}");
        assert_eq!(lines[1], "500", "{text}");
        assert!(lines[2].ends_with('1'), "{text}");
        assert_eq!(&lines[3..5], ["sysrq-refused", "sys-refused"], "{text}");
        // Docker's seccomp profile is in force (mode 2: filter): no user namespace, no mount.
        assert!(lines[5].starts_with("Seccomp:") && lines[5].ends_with('2'), "{text}");
        assert_eq!(&lines[6..8], ["userns-refused", "mount-refused"], "{text}");

        let listed = container::list_containers(&env.ctr).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label("cairn.app"), "lifecycle");
        assert_eq!(listed[0].label("cairn.spec-hash"), "h1");
        assert_eq!(listed[0].task.as_ref().unwrap().status, TaskStatus::Running);

        // The shell ignores SIGTERM: stop escalates to SIGKILL after the grace period.
        let started = Instant::now();
        let before = container::stop_task(&env.ctr, &id, cfg.stop_grace).await.unwrap().unwrap();
        assert_eq!(before.pid, pid);
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(container::task_state(&env.ctr, &id).await.unwrap().is_none());

        // Start again on the same container, then remove everything.
        let pid2 = container::start_task(&env.ctr, &cfg, &id, &cfg.service_log("lifecycle", "worker", &Default::default())).await.unwrap();
        assert_ne!(pid2, pid);
        // A shutdown stops every app task (the grace first: this one ignores SIGTERM) and keeps
        // the container for the next boot.
        let started = Instant::now();
        assert_eq!(container::stop_all_tasks(&env.ctr, cfg.stop_grace).await.unwrap(), 1);
        assert!(started.elapsed() >= cfg.stop_grace, "killed before the grace ran out");
        let listed = container::list_containers(&env.ctr).await.unwrap();
        assert_eq!(listed.len(), 1, "the container must stay");
        assert!(listed[0].task.is_none(), "task left: {:?}", listed[0].task);
        assert_eq!(container::stop_all_tasks(&env.ctr, cfg.stop_grace).await.unwrap(), 0);
        container::remove_container(&env.ctr, &id, Duration::from_millis(200)).await.unwrap();
        assert!(container::list_containers(&env.ctr).await.unwrap().is_empty());
        let snapshots = env.ctr.list_snapshots().await.unwrap();
        assert!(snapshots.iter().all(|s| s.name != id), "container snapshot left");
        assert!(!std::path::Path::new("/sys/fs/cgroup/memory/cairn").join(&id).exists(), "cgroup left");
        // Idempotent.
        container::remove_container(&env.ctr, &id, Duration::from_millis(200)).await.unwrap();

        // A record without its snapshot (an interrupted create) is reported as broken.
        let id = container::create_container(&env.ctr, &cfg, &new).await.unwrap();
        env.ctr.remove_snapshot(&id).await.unwrap();
        let err = container::start_task(&env.ctr, &cfg, &id, &cfg.service_log("lifecycle", "worker", &Default::default())).await.unwrap_err();
        assert!(matches!(err, ContainerError::BadRecord { .. }), "{err}");
        container::remove_container(&env.ctr, &id, Duration::from_millis(200)).await.unwrap();
        assert!(container::list_containers(&env.ctr).await.unwrap().is_empty());
    })
    .await
    .expect("test timed out");
}
