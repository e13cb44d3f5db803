//! Per-app CNI networks against a real containerd + runc and the Debian CNI plugins: services of
//! an app reach each other by name, a published port answers on the host's loopback and on its
//! bridge address, addresses survive task restarts and agent restarts, a changed address reaches
//! running containers through the hosts file, and removal leaves no namespace, veth, IPAM lease
//! or port rule behind.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_compose::AppSpec;
use cairn_runtime::container;
use cairn_runtime::network::{Networks, CONTAINER_IFNAME};
use cairn_runtime::reconcile::{
    DesiredApp, Reconciler, ReconcilerConfig, ServiceState, ServiceStatus,
};
use cairn_testsupport::free_port;

const APP: &str = "chat";

fn config(env: &common::Env) -> ReconcilerConfig {
    let mut runtime = common::runtime_config(env);
    runtime.stop_grace = Duration::from_secs(1);
    runtime.network = common::network_config(&env.containerd);
    let mut cfg = ReconcilerConfig::new(runtime);
    cfg.retry = Duration::from_millis(500);
    cfg.tick = Duration::from_millis(50);
    cfg
}

fn app(host: &str, port: u16, web_mode: &str) -> DesiredApp {
    let yaml = format!(
        r#"
services:
  web:
    image: {host}/cairn/box:1
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    environment: {{MODE: "{web_mode}"}}
    ports: ["{port}:8080"]
    restart: always
  client:
    image: {host}/cairn/box:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    restart: always
"#
    );
    DesiredApp::new(AppSpec::parse("compose.yml", APP, &yaml).unwrap())
}

fn running(st: &[ServiceStatus], service: &str) -> Option<u32> {
    st.iter()
        .find(|s| s.service == service && s.state == ServiceState::Running)
        .and_then(|s| s.pid)
}

/// Run `sh -c cmd` in `id` until it exits 0 and prints `want` (10 s at most); its output.
async fn exec_until(env: &common::Env, id: &str, cmd: &str, want: &str) -> String {
    let out = env.containerd.scratch_dir("exec").join(format!("{id}.out"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = std::fs::remove_file(&out);
        let status = container::exec(
            &env.ctr,
            id,
            vec!["sh".into(), "-c".into(), cmd.into()],
            Duration::from_secs(5),
            Some(&out),
        )
        .await;
        // The shim copies output asynchronously: give it a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if matches!(status, Ok(0)) && text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "`{cmd}` in {id} never printed {want:?}: {status:?} {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn addresses(cfg: &ReconcilerConfig) -> BTreeMap<String, Ipv4Addr> {
    Networks::new(cfg.runtime.network.clone())
        .attachments()
        .unwrap()
        .into_iter()
        .map(|a| (a.service, a.address))
        .collect()
}

/// Host-side ports (veths) of a bridge.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let mut ports: Vec<String> =
        std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
    ports.sort();
    ports
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn http_get(url: &str) -> Result<String, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await?
        .text()
        .await
}

fn nat_rules() -> String {
    let out = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_each_other_by_name_and_published_ports_from_the_host() {
    let Some(env) = common::env().await else {
        return;
    };
    if !common::cni_present() {
        return;
    }
    let host = env.registry.host();
    common::push_box(&env).await;
    let port = free_port();
    let cfg = config(&env);
    let mut rec = Reconciler::new(env.ctr.clone(), cfg.clone());
    let desired = vec![app(&host, port, "a")];
    let st = common::converge(&mut rec, &desired, "web and client running", |st| {
        running(st, "web").is_some() && running(st, "client").is_some()
    })
    .await;
    let (web_pid, client_pid) = (
        running(&st, "web").unwrap(),
        running(&st, "client").unwrap(),
    );

    // Each service has its own namespace with its own address from the app's subnet.
    let ips = addresses(&cfg);
    assert_eq!(ips.len(), 2, "{ips:?}");
    let subnets =
        std::fs::read_to_string(cfg.runtime.network.state_dir.join("subnets.json")).unwrap();
    let subnet: cairn_runtime::network::Ipv4Subnet =
        serde_json::from_str::<serde_json::Value>(&subnets).unwrap()["apps"][APP]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    assert!(cfg.runtime.network.pool.overlaps(&subnet));
    for ip in ips.values() {
        assert!(subnet.contains(*ip), "{ip} outside {subnet}");
    }
    let bridge = format!("cairn{:08x}", u32::from(subnet.network()));
    let veths = bridge_ports(&bridge);
    assert_eq!(
        veths.len(),
        2,
        "one veth per service on {bridge}: {veths:?}"
    );
    for id in ["chat_web", "chat_client"] {
        let ns = cfg.runtime.network.netns_path(id);
        assert!(ns.exists(), "{}", ns.display());
    }

    // client reaches web by name; /etc/hosts lists both services.
    let page = exec_until(
        &env,
        "chat_client",
        "wget -q -O - http://web:8080/",
        "hello",
    )
    .await;
    assert_eq!(page, "hello from cairn\n");
    let hosts = exec_until(&env, "chat_client", "cat /etc/hosts", "\tweb\n").await;
    assert!(hosts.contains(&format!("{}\tweb\n", ips["web"])), "{hosts}");
    assert!(
        hosts.contains(&format!("{}\tclient\n", ips["client"])),
        "{hosts}"
    );
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    exec_until(
        &env,
        "chat_client",
        &format!("ip addr show {CONTAINER_IFNAME}"),
        &ips["client"].to_string(),
    )
    .await;

    // The published port answers on the host: loopback (portmap with snat sets route_localnet
    // on the bridge) and the host's address on the bridge.
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap(),
        "hello from cairn\n"
    );
    assert_eq!(
        http_get(&format!("http://{}:{port}/", subnet.gateway()))
            .await
            .unwrap(),
        "hello from cairn\n"
    );

    // A crashed task restarts in the same namespace with the same address.
    let killed = std::process::Command::new("kill")
        .args(["-9", &web_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let st = common::converge(&mut rec, &desired, "web restarted", |st| {
        running(st, "web").is_some_and(|p| p != web_pid)
    })
    .await;
    assert_eq!(addresses(&cfg), ips, "a task restart keeps the addresses");
    assert_eq!(
        bridge_ports(&bridge),
        veths,
        "no new veth for a task restart"
    );
    let web_pid = running(&st, "web").unwrap();

    // Agent restart: nothing is re-attached, duplicated or leaked.
    drop(rec);
    let mut rec = Reconciler::new(env.ctr.clone(), cfg.clone());
    let st = rec.reconcile(&desired).await.unwrap();
    assert_eq!(
        (running(&st, "web"), running(&st, "client")),
        (Some(web_pid), Some(client_pid))
    );
    assert_eq!(addresses(&cfg), ips);
    assert_eq!(bridge_ports(&bridge), veths);
    assert_eq!(container::list_containers(&env.ctr).await.unwrap().len(), 2);

    // A spec change re-creates web with a new address; client (untouched) sees it in its hosts
    // file, which is rewritten in place, and still reaches web by name.
    let desired = vec![app(&host, port, "b")];
    common::converge(&mut rec, &desired, "web re-created", |st| {
        running(st, "web").is_some_and(|p| p != web_pid)
    })
    .await;
    let new_ips = addresses(&cfg);
    assert_ne!(
        new_ips["web"], ips["web"],
        "host-local hands out the next address"
    );
    assert_eq!(new_ips["client"], ips["client"]);
    let st = rec.reconcile(&desired).await.unwrap();
    assert_eq!(
        running(&st, "client"),
        Some(client_pid),
        "client must not be touched"
    );
    exec_until(
        &env,
        "chat_client",
        "cat /etc/hosts",
        &format!("{}\tweb\n", new_ips["web"]),
    )
    .await;
    exec_until(
        &env,
        "chat_client",
        "wget -q -O - http://web:8080/",
        "hello from cairn",
    )
    .await;
    assert_eq!(
        bridge_ports(&bridge).len(),
        2,
        "the old veth of web is gone"
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap(),
        "hello from cairn\n"
    );
    let veths = bridge_ports(&bridge);

    // Removal: no container, namespace, veth, bridge, lease, port rule or subnet is left.
    rec.reconcile(&[]).await.unwrap();
    assert!(container::list_containers(&env.ctr)
        .await
        .unwrap()
        .is_empty());
    assert!(
        files_under(&cfg.runtime.network.netns_dir()).is_empty(),
        "namespaces left: {:?}",
        files_under(&cfg.runtime.network.netns_dir())
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} left"
    );
    for veth in &veths {
        assert!(
            !Path::new("/sys/class/net").join(veth).exists(),
            "veth {veth} left"
        );
    }
    let leases: Vec<PathBuf> = files_under(&cfg.runtime.network.ipam_dir())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(leases.is_empty(), "IPAM leases left: {leases:?}");
    assert!(Networks::new(cfg.runtime.network.clone())
        .attachments()
        .unwrap()
        .is_empty());
    // (Checked by address: chains are named by app and container, so a crashed earlier run of
    // this test may have left rules with the same names.)
    let rules = nat_rules();
    for ip in ips.values().chain(new_ips.values()) {
        assert!(
            !rules.contains(&format!("-s {ip}/32 ")),
            "NAT rule for {ip} left:\n{rules}"
        );
        assert!(
            !rules.contains(&format!("--to-destination {ip}:")),
            "DNAT to {ip} left:\n{rules}"
        );
    }
    assert!(
        !rules.contains(&format!("--dport {port} ")),
        "port rule left:\n{rules}"
    );
    let subnets =
        std::fs::read_to_string(cfg.runtime.network.state_dir.join("subnets.json")).unwrap();
    assert!(!subnets.contains(APP), "subnet not released: {subnets}");
    assert!(http_get(&format!("http://127.0.0.1:{port}/"))
        .await
        .is_err());
    // A second removal pass is a no-op.
    rec.reconcile(&[]).await.unwrap();
}

/// Root and the CNI plugins, without containerd (for tests of the network module alone).
fn can_attach() -> bool {
    common::init_tracing();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("\n======== SKIP: network namespaces and CNI need root; this test did NOT run ========\n");
        return false;
    }
    common::cni_present()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_is_idempotent_even_when_the_namespace_is_gone() {
    if !can_attach() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::network_config_in(dir.path());
    cfg.plugin_timeout = Duration::from_secs(20);
    let mut nets = Networks::new(cfg.clone());
    let net = nets.app_network("solo").unwrap();
    assert_eq!(nets.app_network("solo").unwrap(), net, "stable subnet");
    let ports = AppSpec::parse(
        "c.yml",
        "solo",
        &format!(
            "services: {{s: {{image: x, ports: [\"{}:80/udp\"]}}}}",
            free_port()
        ),
    )
    .unwrap()
    .services["s"]
        .ports
        .clone();
    let first = nets
        .attach(&net, "s", "solo_s", &ports, None)
        .await
        .unwrap();
    assert!(net.subnet.contains(first.address));
    // Attaching again (a task restart) passes CHECK and keeps everything.
    let again = nets
        .attach(&net, "s", "solo_s", &ports, None)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(bridge_ports(&net.bridge).len(), 1);

    // The namespace disappears behind our back: DEL still succeeds and releases the lease.
    let ns = cfg.netns_path("solo_s");
    assert!(std::process::Command::new("umount")
        .arg(&ns)
        .status()
        .unwrap()
        .success());
    std::fs::remove_file(&ns).unwrap();
    nets.detach("solo_s").await.unwrap();
    nets.detach("solo_s").await.unwrap();
    assert!(nets.attachments().unwrap().is_empty());
    assert!(
        bridge_ports(&net.bridge).is_empty(),
        "the veth went with its namespace"
    );
    let leases: Vec<PathBuf> = files_under(&cfg.ipam_dir())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<Ipv4Addr>().is_ok())
        })
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    let rules = nat_rules();
    assert!(
        !rules.contains(&format!("-s {}/32 ", first.address)),
        "masquerade rule left:\n{rules}"
    );
    nets.remove_app("solo").await.unwrap();
    nets.remove_app("solo").await.unwrap();
    assert!(!Path::new("/sys/class/net").join(&net.bridge).exists());
}
