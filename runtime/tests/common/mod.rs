//! Shared pieces of the runtime's host integration tests: a real containerd and registry
//! (through cairn-testsupport), busybox images built from the host's static busybox, pushing
//! them over the registry HTTP API and writing OCI archives.

#![allow(dead_code)]

pub mod proxy;

use std::path::Path;
use std::sync::OnceLock;

use cairn_runtime::containerd::Containerd as Ctr;
use cairn_runtime::network::{Ipv4Subnet, NetworkConfig};
use cairn_testsupport::{require_tool, Containerd, Registry};

/// Everything a test needs: containerd, a client in namespace `cairn`, a registry.
pub struct Env {
    pub registry: Registry,
    pub ctr: Ctr,
    // Dropped last: stops containerd after the client is gone.
    pub containerd: Containerd,
}

/// Tracing to the test output (once per process).
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,cairn_runtime=info".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// True when every component these tests need is here (else a loud skip, or a failure in CI).
pub fn components_present() -> bool {
    let all = Containerd::can_run() && require_tool("docker-registry");
    if all && !Path::new(BUSYBOX).exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{BUSYBOX} is required in CI (package busybox-static)");
        }
        eprintln!("\n======== SKIP: {BUSYBOX} missing (apt-get install busybox-static) ========\n");
        return false;
    }
    all
}

/// Where the Debian package containernetworking-plugins puts the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// True when app networks can be made here: `ip` and `iptables` on PATH and the CNI plugins
/// (bridge, host-local, portmap, loopback) in [`CNI_BIN_DIR`]; else a loud skip (a failure in CI).
pub fn cni_present() -> bool {
    if !(require_tool("ip") && require_tool("iptables")) {
        return false;
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        let path = Path::new(CNI_BIN_DIR).join(plugin);
        if !path.exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{} is required in CI (package containernetworking-plugins)",
                    path.display()
                );
            }
            eprintln!(
                "\n======== SKIP: {} missing (apt-get install containernetworking-plugins); this test did NOT run ========\n",
                path.display()
            );
            return false;
        }
    }
    true
}

/// A network config private to this test: namespaces, records and leases under the containerd
/// instance's scratch dir, subnets from a random /16 of 10.100.0.0-10.250.0.0 (a subnet already
/// routed on the host, e.g. by a test running in parallel, is skipped by the allocator).
pub fn network_config(containerd: &Containerd) -> NetworkConfig {
    let mut cfg = network_config_in(&containerd.scratch_dir("network"));
    cfg.state_dir = containerd.scratch_dir("network-state");
    cfg
}

/// Like [`network_config`], with everything under `dir`.
pub fn network_config_in(dir: &Path) -> NetworkConfig {
    let mut cfg = NetworkConfig::new(dir.join("state"));
    cfg.run_dir = dir.join("run");
    cfg.cni_bin_dirs = vec![CNI_BIN_DIR.into()];
    let second: u8 = 100 + rand::random::<u8>() % 151;
    cfg.pool = Ipv4Subnet::new(std::net::Ipv4Addr::new(10, second, 0, 0), 16).unwrap();
    cfg
}

/// A runtime config for `env`: data and run dir in its scratch dir, its runc root, this crate's
/// log writer (a device uses the agent's binary).
pub fn runtime_config(env: &Env) -> cairn_runtime::container::RuntimeConfig {
    let mut cfg = cairn_runtime::container::RuntimeConfig::new(env.containerd.scratch_dir("data"));
    cfg.runc_root = Some(env.containerd.runc_root());
    // Secret and config files go under the run dir: the test's own, not the host's /run/cairn.
    cfg.network.run_dir = env.containerd.scratch_dir("run");
    cfg.log_writer = env!("CARGO_BIN_EXE_cairn-log-writer").into();
    cfg
}

/// Start containerd and a registry and connect; `None` (after a loud skip) when they cannot run.
pub async fn env() -> Option<Env> {
    init_tracing();
    if !components_present() {
        return None;
    }
    let containerd = Containerd::start();
    let registry = Registry::start();
    let ctr = Ctr::connect(containerd.socket(), "cairn")
        .await
        .expect("connect to the test containerd");
    Some(Env {
        registry,
        ctr,
        containerd,
    })
}

// Busybox test images live in cairn-testsupport so every crate builds the same ones.
pub use cairn_testsupport::images::*;

/// Push the plain busybox image as `cairn/box:1` (services name it `{registry host}/cairn/box:1`).
pub async fn push_box(env: &Env) {
    push(
        &env.registry.url(),
        "cairn/box",
        "1",
        &busybox_image(&[]),
        None,
    )
    .await;
}

/// Reconcile until `pred` holds (30 s at most).
pub async fn converge(
    rec: &mut cairn_runtime::reconcile::Reconciler,
    desired: &[cairn_runtime::reconcile::DesiredApp],
    what: &str,
    pred: impl Fn(&[cairn_runtime::reconcile::ServiceStatus]) -> bool,
) -> Vec<cairn_runtime::reconcile::ServiceStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let last = match rec.reconcile(desired).await {
            Ok(st) if pred(&st) => return st,
            Ok(st) => format!("{st:#?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen; last pass: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An entry of an extra image layer (see [`with_layer`]).
pub enum LayerEntry<'a> {
    /// A regular file (path, content).
    File(&'a str, &'a str),
    /// A symbolic link (path, target).
    Symlink(&'a str, &'a str),
}

/// `image` with one more (uncompressed) layer holding `entries` on top, and its config's `User`
/// set to `user` when given.
pub fn with_layer(image: &TestImage, entries: &[LayerEntry<'_>], user: Option<&str>) -> TestImage {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            LayerEntry::File(path, text) => {
                h.set_path(path).unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(text.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, text.as_bytes()).unwrap();
            }
            LayerEntry::Symlink(path, target) => {
                h.set_path(path).unwrap();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name(target).unwrap();
                h.set_size(0);
                h.set_mode(0o777);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    let raw = b.into_inner().unwrap();
    let diff = digest(&raw);
    let mut out = image.clone();
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(diff.clone().into());
    if let Some(user) = user {
        config["config"]["User"] = user.into();
    }
    out.config = serde_json::to_vec(&config).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = digest(&out.config).into();
    manifest["config"]["size"] = out.config.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest(&raw),
            "size": raw.len(),
        }));
    out.manifest = serde_json::to_vec(&manifest).unwrap();
    out.layers
        .push((raw, "application/vnd.oci.image.layer.v1.tar", diff));
    out
}
