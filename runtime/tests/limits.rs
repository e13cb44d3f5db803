//! Hostile services against a real containerd + runc and the kernel's cgroups: a fork bomb stops
//! at the pids limit, a memory hog without a limit of its own is OOM-killed by the apps' common
//! ceiling while a calm service beside it keeps running, and the reconciler reports why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_compose::{AppSpec, ResourceLimits};
use cairn_runtime::cgroup::{self, AppsCeiling};
use cairn_runtime::reconcile::{DesiredApp, Reconciler, ReconcilerConfig, ServiceState};

/// Memory all apps of this test may use together.
const CEILING_BYTES: u64 = 256 << 20;
/// Memory of a service without a limit of its own.
const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// The memory limit and CPU quota (per 100 ms) of container `id`'s cgroup.
fn limits(root: &Path, parent: &str, id: &str) -> (String, String) {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(parent).join(id);
        (read(dir.join("memory.max")), read(dir.join("cpu.max")))
    } else {
        (
            read(
                root.join("memory")
                    .join(parent)
                    .join(id)
                    .join("memory.limit_in_bytes"),
            ),
            read(
                root.join("cpu")
                    .join(parent)
                    .join(id)
                    .join("cpu.cfs_quota_us"),
            ),
        )
    }
}

/// The pids counters of container `id` under `parent`: (current, times the limit refused a fork).
fn pids(root: &Path, parent: &str, id: &str) -> (u64, u64) {
    let unified = root.join("cgroup.controllers").exists();
    let dir = if unified {
        root.join(parent).join(id)
    } else {
        root.join("pids").join(parent).join(id)
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let current = read("pids.current").trim().parse().unwrap_or(0);
    let refused = read("pids.events")
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (current, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_memory_hog_are_contained_and_reported() {
    let Some(env) = common::env().await else {
        return;
    };
    let host = env.registry.host();
    common::push_box(&env).await;
    let parent = format!("cairn-limits-{}", std::process::id());
    let mut runtime = common::runtime_config(&env);
    runtime.stop_grace = Duration::from_secs(1);
    runtime.cgroup_parent = format!("/{parent}");
    // Above the ceiling, so the ceiling is what stops the hog; the calm service shows them.
    runtime.default_limits = ResourceLimits {
        memory_bytes: Some(DEFAULT_MEMORY_BYTES),
        cpu_millis: Some(500),
    };
    let ceiling = AppsCeiling {
        memory_bytes: CEILING_BYTES,
        ..AppsCeiling::for_machine(1 << 30)
    };
    cgroup::limit_apps(&runtime.cgroup_root, &parent, &ceiling).unwrap();
    let root = runtime.cgroup_root.clone();
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.tick = Duration::from_millis(50);
    // Host networking: no CNI needed, and the bomb's processes stay in its own pid namespace.
    let yaml = format!(
        r#"
services:
  bomb:
    image: {host}/cairn/box:1
    network_mode: host
    command: ["sh", "-c", "f() {{ f | f & }}; f; sleep 1000"]
  hog:
    image: {host}/cairn/box:1
    network_mode: host
    command: ["sh", "-c", "head -c 2000000000 /dev/zero | tail"]
  calm:
    image: {host}/cairn/box:1
    network_mode: host
    command: ["sleep", "1000"]
"#
    );
    let app = DesiredApp::new(AppSpec::parse("compose.yml", "hostile", &yaml).unwrap());
    let mut rec = Reconciler::new(env.ctr.clone(), cfg);
    let desired = vec![app];

    let statuses = common::converge(&mut rec, &desired, "the hog is OOM-killed", |st| {
        st.iter()
            .any(|s| s.service == "hog" && s.state == ServiceState::Exited)
    })
    .await;
    let hog = statuses.iter().find(|s| s.service == "hog").unwrap();
    assert_eq!(hog.exit_code, Some(137), "{hog:#?}");
    assert!(
        hog.message
            .as_deref()
            .unwrap_or("")
            .contains("out of memory"),
        "the status says why: {hog:#?}"
    );

    // The bomb hits its pids limit again and again, and never goes past it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (current, refused) = loop {
        let (current, refused) = pids(&root, &parent, "hostile_bomb");
        assert!(current <= 1024, "{current} tasks in the bomb's cgroup");
        if refused > 0 || Instant::now() > deadline {
            break (current, refused);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused > 0,
        "the pids limit never refused a fork ({current} tasks)"
    );

    // The calm service beside both still runs, and the reconciler still works.
    let statuses = rec.reconcile(&desired).await.unwrap();
    let calm = statuses.iter().find(|s| s.service == "calm").unwrap();
    assert_eq!(calm.state, ServiceState::Running, "{calm:#?}");
    // A service without limits of its own got the runtime's defaults.
    let (memory, cpu) = limits(&root, &parent, "hostile_calm");
    assert_eq!(memory, DEFAULT_MEMORY_BYTES.to_string());
    assert!(cpu == "50000" || cpu == "50000 100000", "cpu quota {cpu}");
    common::converge(&mut rec, &[], "the hostile app is removed", |st| {
        st.is_empty()
    })
    .await;
    let unified = root.join("cgroup.controllers").exists();
    let dirs = if unified {
        vec![root.join(&parent)]
    } else {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|c| root.join(c).join(&parent))
            .collect()
    };
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}
