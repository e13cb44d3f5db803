//! Apps benchmark: how long the agent takes to run N busybox services, against a real containerd
//! and runc and a local docker-registry serving busybox images built here, compared in the same run
//! with the bare runtime starting the same containers; and the RSS of the real `cairn-agent`
//! process idle and with 20 containers.
//!
//! - Agent path: central (`TestCentral`) `PUT /api/v1/devices/{id}/apps/{name}` → Sync stream →
//!   the agent's `AppsSink` → cairn-runtime's reconciler → containerd, until central's
//!   `GET /api/v1/devices/{id}/apps` reports every service running ("end-to-end"). "Agent" is the
//!   part inside the agent: from its sink receiving the desired state (already stored on disk) to
//!   the reconcile pass reporting every service running.
//! - Baseline: `create_container` + (CNI attach) + `start_task` for the same N services straight
//!   through cairn-runtime, image already pulled, in a namespace of its own, in the app's user
//!   namespace as the agent runs it; and the same start without the confinement
//!   (`RuntimeConfig::unconfined_for_benchmark`, no user namespace), so the cost of seccomp,
//!   masked paths, limits, the user namespace and the rest is a ratio measured in the same run.
//! - Pull: a cold `pull_image` through cairn-runtime, and the agent's first deploy (which pulls)
//!   end-to-end; a `pin` app keeps the image so later deploys reuse it.
//! - RSS: the `cairn-agent` binary cargo built for this bench (`--release` under `cargo bench`),
//!   apps enabled, `VmRSS` idle (enrolled, empty desired state) and with 20 containers.
//!
//! Needs root, containerd, runc, docker-registry and busybox-static (else a loud skip); the CNI
//! rows also need the CNI plugins in /usr/lib/cni, else they are skipped with the reason. The
//! agent's network run dir is its default /run/cairn: when another agent's attachments are there
//! the whole bench skips (its agents would detach them).
//!
//! `cargo bench -p cairn-agent --bench apps` (`CAIRN_BENCH_APP_SIZES=1,5,20` and
//! `CAIRN_BENCH_APP_REPS=5`, the median is shown, by default)

mod agent_path;
mod bare;
mod process_rss;
mod table;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_runtime::containerd::Containerd as Ctr;
use cairn_runtime::image::{self, no_progress, pull_image, PullOptions};
use cairn_runtime::network::{Ipv4Subnet, NetworkConfig, Networks};
use cairn_testsupport::central::TestCentral;
use cairn_testsupport::images as test_images;
use cairn_testsupport::{require_tool, Containerd, Registry};

use agent_path::InProcessAgent;
use bare::{bare_start, push_images};
use process_rss::agent_process_rss;
use table::{Row, Sample};

/// Agent heartbeat during the timed deploys: short, so reporting does not dominate.
const HEARTBEAT_MS: u64 = 50;
/// Longest time between reconcile passes (the agent's default). A desired-state change starts a
/// pass at once, so only the first deploy (a finished background pull is seen at the next pass)
/// depends on it; shorter, the idle passes would compete with the baseline for containerd.
const RECONCILE_MS: u64 = 1000;
/// How often the bench polls central's REST API.
const POLL: Duration = Duration::from_millis(25);
/// Any single wait of the bench.
const WAIT: Duration = Duration::from_secs(90);
/// The agent's default network run dir (not configurable through `[apps]`).
const AGENT_NETWORK_RUN_DIR: &str = "/run/cairn";
/// The bare runtime's namespace (the agent owns `cairn`).
const BARE_NAMESPACE: &str = "bench-bare";
/// The app deployed first (it pulls the image) and kept until the end (so the image stays).
const PIN: &str = "pin";
/// A service that stops at once on SIGTERM (so removals never wait for the grace period).
const SLEEP_LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 1 & wait $$!; done";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Cni,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Cni => "cni",
        }
    }
}

fn sizes() -> Vec<usize> {
    std::env::var("CAIRN_BENCH_APP_SIZES")
        .unwrap_or_else(|_| "1,5,20".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("CAIRN_BENCH_APP_SIZES is a comma-separated list of counts")
        })
        .collect()
}

/// A compose file of `n` sleeping services on `image`.
fn compose(image: &str, n: usize, mode: Mode) -> String {
    let mut yaml = String::from("services:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  s{i:02}:\n    image: {image}\n    command: [\"sh\", \"-c\", {SLEEP_LOOP:?}]\n"
        ));
        if mode == Mode::Host {
            yaml.push_str("    network_mode: host\n");
        }
    }
    yaml
}

/// Runs per row (the median is shown).
fn reps() -> usize {
    std::env::var("CAIRN_BENCH_APP_REPS")
        .map_or(5, |r| r.parse().expect("CAIRN_BENCH_APP_REPS is a count"))
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// Everything the timed part needs, owned outside it so clean-up runs even after a panic.
struct Bench {
    socket: PathBuf,
    runc_root: PathBuf,
    registry_url: String,
    registry_host: String,
    /// Apps data dir of the in-process agent (its network state is under `network/`).
    agent_apps_dir: PathBuf,
    bare_data_dir: PathBuf,
    bare_network: NetworkConfig,
    scratch: PathBuf,
    /// Whether the CNI rows may run (and why not).
    cni: Result<(), String>,
    /// App names whose networks clean-up removes.
    cni_apps: Mutex<Vec<String>>,
}

fn main() {
    let can_run =
        Containerd::can_run() && require_tool("docker-registry") && test_images::busybox_present();
    if !can_run {
        eprintln!("apps bench skipped: see the SKIP line above");
        return;
    }
    // Every reconcile pass of an agent detaches attachments under its run dir that it does not
    // want: another agent's there would be torn down.
    let foreign: Vec<PathBuf> = ["netns", "attachments"]
        .iter()
        .map(|d| Path::new(AGENT_NETWORK_RUN_DIR).join(d))
        .filter(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
        .collect();
    if !foreign.is_empty() {
        eprintln!(
            "\n======== SKIP: {foreign:?} not empty: another agent's app networks are here and this bench's agents would detach them. Stop it (or clear {AGENT_NETWORK_RUN_DIR}) and run again. ========\n"
        );
        return;
    }
    let run_dir_existed = Path::new(AGENT_NETWORK_RUN_DIR).exists();
    let containerd = Containerd::start();
    let registry = Registry::start();
    let scratch = containerd.scratch_dir("bench");
    let mut bare_network = NetworkConfig::new(scratch.join("bare-network-state"));
    bare_network.run_dir = scratch.join("bare-network-run");
    // Not the agent's 10.88/16; the allocator skips subnets already routed on the host.
    bare_network.pool = Ipv4Subnet::new(std::net::Ipv4Addr::new(10, 89, 0, 0), 16).unwrap();
    let bench = Arc::new(Bench {
        socket: containerd.socket(),
        runc_root: containerd.runc_root(),
        registry_url: registry.url(),
        registry_host: registry.host(),
        agent_apps_dir: containerd.scratch_dir("agent-apps"),
        bare_data_dir: containerd.scratch_dir("bare"),
        bare_network,
        scratch,
        cni: cni_usable(),
        cni_apps: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(runtime.spawn(run(bench.clone())));
    // Stops the in-process agent and anything else still running before clean-up.
    runtime.shutdown_timeout(Duration::from_secs(10));
    let cleanup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    cleanup.block_on(remove_networks(&bench, run_dir_existed));
    drop(registry);
    drop(containerd);
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("bench task failed: {e}");
    }
}

/// Whether app networks can be made here.
fn cni_usable() -> Result<(), String> {
    for tool in ["ip", "iptables"] {
        if !require_tool(tool) {
            return Err(format!("`{tool}` is not on PATH"));
        }
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            return Err(format!(
                "/usr/lib/cni/{plugin} is missing (containernetworking-plugins)"
            ));
        }
    }
    Ok(())
}

/// Remove the app networks the bench made (agent's and bare), even after a failure.
async fn remove_networks(bench: &Bench, run_dir_existed: bool) {
    let apps = bench.cni_apps.lock().unwrap().clone();
    if apps.is_empty() {
        return;
    }
    let mut agent = Networks::new(NetworkConfig::new(bench.agent_apps_dir.join("network")));
    let mut bare = Networks::new(bench.bare_network.clone());
    for app in &apps {
        for networks in [&mut agent, &mut bare] {
            if let Err(e) = networks.remove_app(app).await {
                eprintln!("clean-up: cannot remove the network of {app}: {e}");
            }
        }
    }
    let netns = Path::new(AGENT_NETWORK_RUN_DIR).join("netns");
    let empty = std::fs::read_dir(&netns)
        .map(|d| d.count() == 0)
        .unwrap_or(true);
    if !run_dir_existed && empty {
        let _ = std::fs::remove_dir_all(AGENT_NETWORK_RUN_DIR);
    }
}

async fn run(bench: Arc<Bench>) {
    let started = Instant::now();
    let (agent_ref, bare_ref) = push_images(&bench).await;
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);

    let bare = Ctr::connect(&bench.socket, BARE_NAMESPACE)
        .await
        .expect("connect to containerd");
    let pull_started = Instant::now();
    let bare_image = pull_image(&bare, &bare_ref, &PullOptions::default(), &no_progress)
        .await
        .expect("bare pull");
    let bare_pull = pull_started.elapsed();

    let agent = InProcessAgent::start(&central, &token, &bench).await;
    let pin = agent
        .deploy(&central, PIN, &compose(&agent_ref, 1, Mode::Host), 1)
        .await
        .expect("first deploy");

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for mode in [Mode::Host, Mode::Cni] {
        if let (Mode::Cni, Err(why)) = (mode, &bench.cni) {
            skipped.push(format!("cni: {why}"));
            continue;
        }
        for n in sizes() {
            // Different names for the two paths: the bridge plugin names its iptables chains
            // after network and container, and runc its cgroups after the container.
            let app = format!("agent-{}-{n}", mode.label());
            let bare_app = format!("bare-{}-{n}", mode.label());
            if mode == Mode::Cni {
                bench
                    .cni_apps
                    .lock()
                    .unwrap()
                    .extend([app.clone(), bare_app.clone()]);
            }
            let bare_yaml = compose(&bare_ref, n, mode);
            let agent_yaml = compose(&agent_ref, n, mode);
            let mut row = Row {
                scenario: mode.label(),
                n,
                samples: Vec::new(),
            };
            let mut failure = None;
            for rep in 0..reps() {
                // Alternate which path goes first, so neither always follows the other.
                let bare_first = rep % 2 == 0;
                let mut baseline = None;
                if bare_first {
                    baseline = Some(
                        bare_start(&bench, &bare, &bare_image, &bare_app, &bare_yaml, true).await,
                    );
                }
                let deployed = agent.deploy(&central, &app, &agent_yaml, n).await;
                agent.remove(&central, &app).await;
                if !bare_first {
                    baseline = Some(
                        bare_start(&bench, &bare, &bare_image, &bare_app, &bare_yaml, true).await,
                    );
                }
                let unconfined =
                    bare_start(&bench, &bare, &bare_image, &bare_app, &bare_yaml, false).await;
                match (deployed, baseline.expect("ran above"), unconfined) {
                    (Ok(deployed), Ok(baseline), Ok(unconfined)) => row.samples.push(Sample {
                        deployed,
                        baseline,
                        unconfined,
                    }),
                    (Err(e), _, _) => failure = Some(format!("agent path: {e}")),
                    (_, Err(e), _) | (_, _, Err(e)) => failure = Some(format!("bare runtime: {e}")),
                }
                if failure.is_some() {
                    break;
                }
            }
            match failure {
                None => rows.push(row),
                Some(e) if mode == Mode::Cni => skipped.push(format!("cni N={n}: {e}")),
                Some(e) => panic!("{app}: {e}"),
            }
        }
    }
    agent.remove(&central, PIN).await;
    agent.stop().await;
    image::remove_image(&bare, &bare_image.name)
        .await
        .expect("remove the bare image");

    let rss = agent_process_rss(&central, &token, &bench, &agent_ref).await;

    table::print(&table::Report {
        bare_pull,
        first_deploy: pin,
        rows,
        skipped,
        rss,
        took: started.elapsed(),
    });
}
