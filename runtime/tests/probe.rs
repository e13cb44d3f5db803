//! The confinement probe (testsupport/probe/probe.rs) in a real container next to another app:
//! every escape it tries is refused: a user namespace, mount, the kernel keyring, bpf, ptrace
//! of the other app's process, loading a module, reading /proc/kcore, writing /sys. And root in
//! each app is an unprivileged host id of the app's own range.

mod common;

use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::reconcile::{DesiredApp, Reconciler, ReconcilerConfig, ServiceState};
use cairn_runtime::userns;

/// Errno values the probe prints.
const EPERM: &str = "1";
const ESRCH: &str = "3";
const EROFS: &str = "30";

fn app(name: &str, image: &str, command: &str) -> DesiredApp {
    let yaml = format!(
        "services:\n  main:\n    image: {image}\n    command: [\"sh\", \"-c\", {command:?}]\n"
    );
    DesiredApp::new(AppSpec::parse("compose.yml", name, &yaml).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_escape_the_probe_tries_is_refused() {
    let Some(env) = common::env().await else {
        return;
    };
    // Each app on its own network, as apps run on a device (and so in its user namespace).
    if !common::cni_present() {
        return;
    }
    let host = env.registry.host();
    common::push(
        &env.registry.url(),
        "cairn/probe",
        "1",
        &common::probe_image(),
        None,
    )
    .await;
    let image = format!("{host}/cairn/probe:1");
    let mut runtime = common::runtime_config(&env);
    runtime.stop_grace = Duration::from_secs(1);
    runtime.network = common::network_config(&env.containerd);
    let log = runtime.log_path("escape", "main");
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.tick = Duration::from_millis(50);
    let mut rec = Reconciler::new(env.ctr.clone(), cfg);

    let victim = app("victim", &image, "sleep 1000");
    let statuses = common::converge(
        &mut rec,
        std::slice::from_ref(&victim),
        "the victim runs",
        |st| st.iter().any(|s| s.state == ServiceState::Running),
    )
    .await;
    let victim_pid = statuses[0].pid.unwrap();
    let escape = app("escape", &image, &format!("probe {victim_pid}; sleep 1000"));
    let desired = vec![victim, escape];
    let statuses = common::converge(&mut rec, &desired, "the probe runs", |st| {
        st.iter().all(|s| s.state == ServiceState::Running)
    })
    .await;
    // Root in each app is an unprivileged host id of the app's own range (and so is the probe).
    let host_uids = |app: &str| -> Vec<u32> {
        let pid = statuses
            .iter()
            .find(|s| s.app == app)
            .and_then(|s| s.pid)
            .unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        line.split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (victim_uids, escape_uids) = (host_uids("victim"), host_uids("escape"));
    for uids in [&victim_uids, &escape_uids] {
        assert!(
            uids.iter()
                .all(|u| *u == uids[0] && *u >= userns::FIRST_HOST_ID),
            "container root runs as host ids {uids:?}"
        );
    }
    assert_ne!(
        victim_uids[0], escape_uids[0],
        "two apps share a host id range"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("probe-done") {
            break text;
        }
        assert!(Instant::now() < deadline, "probe output: {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outcome = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
            .to_string()
    };
    for (attempt, errno) in [
        ("unshare-user", EPERM),
        ("mount", EPERM),
        ("add-key", EPERM),
        ("keyctl", EPERM),
        ("bpf", EPERM),
        // The other app's process is not even visible from this pid namespace.
        ("ptrace-other-app", ESRCH),
        ("init-module", EPERM),
        ("finit-module", EPERM),
        ("write-sys", EROFS),
    ] {
        assert_eq!(
            outcome(attempt),
            format!("refused {errno}"),
            "{attempt}: {text}"
        );
    }
    assert_eq!(outcome("kcore-bytes"), "0", "{text}");
    common::converge(&mut rec, &[], "both apps are removed", |st| st.is_empty()).await;
}
