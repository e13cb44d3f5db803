//! What a service asks of its container, applied by a real containerd + runc: labels, and its own
//! stop signal and grace period.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cairn_compose::{AppSpec, ServiceSpec};
use cairn_runtime::container::{self, NewContainer, RuntimeConfig};
use cairn_runtime::image::{no_progress, pull_image, ImageInfo, PullOptions};

const TIMEOUT: Duration = Duration::from_secs(90);

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
    let mut cfg = RuntimeConfig::new(env.containerd.scratch_dir("data"));
    cfg.runc_root = Some(env.containerd.runc_root());
    cfg.stop_grace = Duration::from_millis(500);
    cfg
}

/// Service `s` of a minimal app running `script` (the fields under test are set on it after).
fn service(image: &ImageInfo, script: &str) -> ServiceSpec {
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
        netns: None,
        hosts_file: None,
    }
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
                container::start_task(&ctr, &cfg, &id, &log).await.unwrap();
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
