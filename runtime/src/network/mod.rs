//! Per-app networks through CNI plugins (Debian's containernetworking-plugins).
//!
//! Every app with at least one service outside `network_mode: host` gets one bridge network:
//! a subnet from the configured pool (a /24 of 10.88.0.0/16 by default, see [`Ipv4Subnet`]),
//! a bridge `cairn<hex of the subnet>`, addresses from `host-local` IPAM, masquerading for
//! outbound traffic (the plugin also turns on `ip_forward`), and `portmap` for published ports
//! (with `snat`, which also makes a port published on the host reachable on 127.0.0.1: portmap
//! sets `route_localnet` on the bridge).
//!
//! Each service container gets a named network namespace `<run_dir>/netns/<container id>` (a
//! bind-mounted namespace file), attached with CNI ADD before its task starts and detached with
//! CNI DEL when the container is removed. The namespace outlives task restarts, so a service
//! keeps its address.
//! An attachment record per container (`<run_dir>/attachments/<id>.json`: the plugin
//! configurations used and the ADD result) lets a restarted agent CHECK, reuse and later DEL
//! exactly what was set up. Records, namespaces and IPAM leases live in the run dir (tmpfs on a
//! device), so after a reboot they are gone together with the kernel state they describe; subnet
//! allocations live in the state dir on the data partition.
//!
//! Services find each other by name through one hosts file per app (see [`Networks::app_hosts`]).
//!
//! The device firewall (`firewall.rs`, nftables) lets the LAN reach published ports only and keeps
//! apps off each other's unpublished ports.

mod chain;
mod cni;
mod command;
mod firewall;
pub(crate) mod hosts;
mod masquerade;
pub(crate) mod netns;
mod records;
mod subnet;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_compose::{AppSpec, NetworkMode, PortMapping};
use serde_json::{json, Value};
use tracing::{info, warn};

pub use cni::{CniCommand, CniError, CniInterface, CniIp, CniResult, CNI_VERSION};
pub use command::CommandError;
pub use firewall::{published_ports, ruleset, Firewall, FirewallError, PublishedPort};
pub use netns::NetnsError;
pub use subnet::{Ipv4Subnet, ParseSubnetError, SubnetError};

use cni::{with_prev_result, PluginCall, Plugins};
use records::{AttachmentRecord, Records};

/// The interface name of a container's network interface.
pub const CONTAINER_IFNAME: &str = "eth0";

/// Errors setting up or tearing down app networks.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No subnet for the app.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// A network namespace could not be made or removed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A network namespace could not be made in the app's user namespace.
    #[error("{0}")]
    Userns(String),
    /// A CNI plugin failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// An attachment record could not be read or written.
    #[error("cannot {action} the attachment record {path}: {reason}; check that the run dir is writable (a corrupt record can be deleted: the next pass re-attaches)")]
    Record {
        /// `read`, `write` or `remove`.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// CNI ADD succeeded without giving the container an IPv4 address.
    #[error("CNI ADD for {container_id} assigned no IPv4 address; check the IPAM section of the network config")]
    NoAddress {
        /// The container.
        container_id: String,
    },
    /// The bridge of a removed app could not be deleted.
    #[error(
        "cannot delete bridge {bridge}: {reason}; delete it by hand with `ip link del {bridge}`"
    )]
    Bridge {
        /// The bridge device.
        bridge: String,
        /// Why.
        reason: String,
    },
    /// The hosts file of an app could not be written.
    #[error("cannot write the hosts file {path}: {source}; check that the data dir is writable")]
    Hosts {
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Settings of app networks.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Address pool app subnets are carved from.
    pub pool: Ipv4Subnet,
    /// Prefix length of each app's subnet (at least the pool's, at most 30).
    pub subnet_prefix: u8,
    /// Directories searched for CNI plugin binaries (also passed as `CNI_PATH`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Runtime dir for state tied to the running kernel: namespaces, attachment records, IPAM
    /// leases, and the apps' secret and config files. Should be on tmpfs (cleared at boot), so
    /// that secret values never reach a disk.
    pub run_dir: PathBuf,
    /// Persistent dir for the subnet allocations.
    pub state_dir: PathBuf,
    /// Longest time one plugin call may take.
    pub plugin_timeout: Duration,
}

impl NetworkConfig {
    /// Defaults with subnet allocations under `state_dir`: pool 10.88.0.0/16 split into /24s,
    /// plugins in `/usr/lib/cni` (Debian) or `/opt/cni/bin`, run dir `/run/cairn`, 30 s per plugin.
    pub fn new(state_dir: impl Into<PathBuf>) -> NetworkConfig {
        NetworkConfig {
            pool: Ipv4Subnet::new(Ipv4Addr::new(10, 88, 0, 0), 16).expect("valid prefix"),
            subnet_prefix: 24,
            cni_bin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            run_dir: "/run/cairn".into(),
            state_dir: state_dir.into(),
            plugin_timeout: Duration::from_secs(30),
        }
    }

    /// Directory of the named network namespaces.
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }

    /// The network namespace file of container `container_id`.
    pub fn netns_path(&self, container_id: &str) -> PathBuf {
        self.netns_dir().join(container_id)
    }

    /// Directory of the `host-local` IPAM leases (one subdirectory per app network).
    pub fn ipam_dir(&self) -> PathBuf {
        self.run_dir.join("ipam")
    }

    fn attachments_dir(&self) -> PathBuf {
        self.run_dir.join("attachments")
    }

    fn subnets_path(&self) -> PathBuf {
        self.state_dir.join("subnets.json")
    }
}

/// The bridge network of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppNetwork {
    /// The app.
    pub app: String,
    /// CNI network name (`cairn-<app>`), also the IPAM lease directory's name.
    pub name: String,
    /// The app's subnet.
    pub subnet: Ipv4Subnet,
    /// The bridge device.
    pub bridge: String,
}

impl AppNetwork {
    pub(crate) fn for_subnet(app: &str, subnet: Ipv4Subnet) -> AppNetwork {
        AppNetwork {
            app: app.into(),
            name: format!("cairn-{app}"),
            bridge: subnet::bridge_name(&subnet),
            subnet,
        }
    }

    /// The host's address on the bridge (the containers' default gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// A container attached to its app network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The container.
    pub container_id: String,
    /// App.
    pub app: String,
    /// Service.
    pub service: String,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Its address.
    pub address: Ipv4Addr,
}

/// App networks on this host: subnets, attachments, hosts files.
#[derive(Debug)]
pub struct Networks {
    cfg: NetworkConfig,
    plugins: Plugins,
    records: Records,
    subnets: Option<subnet::SubnetAllocations>,
}

impl Networks {
    /// Networks configured by `cfg` (nothing is touched until used).
    pub fn new(cfg: NetworkConfig) -> Networks {
        Networks {
            plugins: Plugins {
                dirs: cfg.cni_bin_dirs.clone(),
                timeout: cfg.plugin_timeout,
            },
            records: Records::new(cfg.attachments_dir()),
            cfg,
            subnets: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    fn subnets(&mut self) -> Result<&mut subnet::SubnetAllocations, SubnetError> {
        if self.subnets.is_none() {
            self.subnets = Some(subnet::SubnetAllocations::load(&self.cfg.subnets_path())?);
        }
        Ok(self.subnets.as_mut().expect("loaded above"))
    }

    /// The network of `app`, allocating its subnet on first use (kept across restarts).
    ///
    /// # Errors
    /// When the pool is exhausted or the allocation file cannot be read or written.
    pub fn app_network(&mut self, app: &str) -> Result<AppNetwork, NetworkError> {
        let (pool, prefix) = (self.cfg.pool, self.cfg.subnet_prefix);
        let subnets = self.subnets()?;
        if let Some(s) = subnets.get(app) {
            if s.prefix() == prefix && pool.overlaps(&s) {
                return Ok(AppNetwork::for_subnet(app, s));
            }
        }
        let ours: Vec<String> = subnets
            .apps()
            .map(|(_, s)| subnet::bridge_name(&s))
            .collect();
        let routes = subnet::host_routes(&ours);
        let s = subnets.allocate(app, pool, prefix, &routes)?;
        info!(%app, subnet = %s, "allocated the app's subnet");
        Ok(AppNetwork::for_subnet(app, s))
    }

    /// Every container attached now (records with an address).
    ///
    /// # Errors
    /// When the records cannot be read.
    pub fn attachments(&self) -> Result<Vec<Attachment>, NetworkError> {
        Ok(self
            .records
            .all()?
            .iter()
            .filter_map(AttachmentRecord::attachment)
            .collect())
    }

    /// Attach service `service` of `net`'s app (container id `container_id`) to the network,
    /// publishing `ports`: make its namespace and run CNI ADD, unless an earlier attachment with
    /// the same configuration still passes CNI CHECK (then it is kept, with its address). Call it
    /// before every task start.
    ///
    /// # Errors
    /// Namespace, plugin and record errors; a half-made attachment is torn down again.
    #[tracing::instrument(skip(self, net, ports), fields(app = %net.app))]
    pub async fn attach(
        &mut self,
        net: &AppNetwork,
        service: &str,
        container_id: &str,
        ports: &[PortMapping],
        userns: Option<&Path>,
    ) -> Result<Attachment, NetworkError> {
        let chain = chain::plugin_chain(net, ports, &self.cfg.ipam_dir());
        let netns = self.cfg.netns_path(container_id);
        if let Some(record) = self.records.read(container_id)? {
            if record.chain == chain
                && record.netns == netns
                && record.userns.as_deref() == userns
                && netns::is_netns(&netns)
            {
                if let (Some(result), Some(attachment)) = (&record.result, record.attachment()) {
                    match self.check(&record, result).await {
                        Ok(()) => return Ok(attachment),
                        Err(e) => warn!(error = %e, "CNI CHECK failed; attaching again"),
                    }
                }
            } else {
                info!("network configuration or namespace changed; attaching again");
            }
            self.detach(container_id).await?;
        }
        match userns {
            None => netns::create(&netns).await?,
            Some(userns) => {
                let (userns, path) = (userns.to_path_buf(), netns.clone());
                tokio::task::spawn_blocking(move || crate::userns::create_netns_in(&userns, &path))
                    .await
                    .map_err(|e| NetworkError::Userns(e.to_string()))?
                    .map_err(|e| NetworkError::Userns(e.to_string()))?;
            }
        }
        let mut record = AttachmentRecord {
            container_id: container_id.into(),
            app: net.app.clone(),
            service: service.into(),
            netns: netns.clone(),
            userns: userns.map(Path::to_path_buf),
            chain,
            result: None,
            address: None,
        };
        self.records.write(&record)?;
        match self.add(&record).await {
            Ok((result, address)) => {
                record.result = Some(result);
                record.address = Some(address);
                self.records.write(&record)?;
                info!(%address, "attached");
                Ok(record.attachment().expect("address set"))
            }
            Err(e) => {
                if let Err(undo) = self.detach(container_id).await {
                    warn!(error = %undo, "cannot undo the failed attach; the next pass retries");
                }
                Err(e)
            }
        }
    }

    /// Loopback up, then the chain's ADD; the final result and the container's address.
    async fn add(&self, record: &AttachmentRecord) -> Result<(Value, Ipv4Addr), NetworkError> {
        let loopback =
            json!({"cniVersion": CNI_VERSION, "name": "cairn-loopback", "type": "loopback"});
        self.plugins
            .call(&PluginCall {
                command: CniCommand::Add,
                container_id: &record.container_id,
                netns: &record.netns,
                ifname: "lo",
                config: &loopback,
            })
            .await?;
        let mut prev: Option<Value> = None;
        for conf in &record.chain {
            let config = with_prev_result(conf, prev.as_ref());
            let result = self
                .plugins
                .call(&PluginCall {
                    command: CniCommand::Add,
                    container_id: &record.container_id,
                    netns: &record.netns,
                    ifname: CONTAINER_IFNAME,
                    config: &config,
                })
                .await?;
            prev = result.or(prev);
        }
        let result = prev.unwrap_or(Value::Null);
        let address = serde_json::from_value::<CniResult>(result.clone())
            .ok()
            .and_then(|r| r.container_ipv4())
            .ok_or_else(|| NetworkError::NoAddress {
                container_id: record.container_id.clone(),
            })?;
        Ok((result, address))
    }

    /// CNI CHECK of every plugin of the chain with the cached result. portmap is left out: its
    /// CHECK in containernetworking-plugins 1.1.1 always fails without IPv6 ("could not check
    /// ipv6 dnat"), and a bridge CHECK covers the namespace, interface and address.
    async fn check(&self, record: &AttachmentRecord, result: &Value) -> Result<(), NetworkError> {
        for conf in record.chain.iter().filter(|c| c["type"] != "portmap") {
            let config = with_prev_result(conf, Some(result));
            self.plugins
                .call(&PluginCall {
                    command: CniCommand::Check,
                    container_id: &record.container_id,
                    netns: &record.netns,
                    ifname: CONTAINER_IFNAME,
                    config: &config,
                })
                .await?;
        }
        Ok(())
    }

    /// Detach container `container_id`: CNI DEL of its chain in reverse order (releasing its
    /// address, veth, masquerade and port rules), then remove its namespace and record.
    /// Idempotent: without a record only the namespace (if any) is removed; DEL on a namespace
    /// that is already gone succeeds (and the masquerade rules the bridge plugin cannot remove
    /// then are removed here).
    ///
    /// # Errors
    /// When a plugin's DEL fails (the record is kept so the next call retries).
    #[tracing::instrument(skip(self))]
    pub async fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        let record = self.records.read(container_id)?;
        if let Some(record) = &record {
            let netns_gone = !netns::is_netns(&record.netns);
            for conf in record.chain.iter().rev() {
                let config = with_prev_result(conf, record.result.as_ref());
                self.plugins
                    .call(&PluginCall {
                        command: CniCommand::Del,
                        container_id,
                        netns: &record.netns,
                        ifname: CONTAINER_IFNAME,
                        config: &config,
                    })
                    .await?;
                if netns_gone && conf["type"] == "bridge" && conf["ipMasq"] == true {
                    let addresses: Vec<Ipv4Addr> = record.address.into_iter().collect();
                    let network = conf["name"].as_str().unwrap_or_default();
                    masquerade::remove_rules(network, container_id, &addresses).await;
                }
            }
            netns::remove(&record.netns)?;
        }
        netns::remove(&self.cfg.netns_path(container_id))?;
        self.records.remove(container_id)?;
        if record.is_some() {
            info!("detached");
        }
        Ok(())
    }

    /// Remove the network of `app`: detach what is still attached, delete its bridge and IPAM
    /// directory, release its subnet. Idempotent.
    ///
    /// # Errors
    /// Detach errors, or when the bridge cannot be deleted.
    #[tracing::instrument(skip(self))]
    pub async fn remove_app(&mut self, app: &str) -> Result<(), NetworkError> {
        for record in self.records.all()?.iter().filter(|r| r.app == app) {
            self.detach(&record.container_id).await?;
        }
        let Some(subnet) = self.subnets()?.get(app) else {
            return Ok(());
        };
        let net = AppNetwork::for_subnet(app, subnet);
        delete_link(&net.bridge).await?;
        let ipam = self.cfg.ipam_dir().join(&net.name);
        if let Err(e) = std::fs::remove_dir_all(&ipam) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %ipam.display(), error = %e, "cannot remove the IPAM directory");
            }
        }
        self.subnets()?.release(app)?;
        info!(bridge = %net.bridge, %subnet, "app network removed");
        Ok(())
    }

    /// The hosts file text of `app`: every service attached to `net` with its address, and
    /// services in `network_mode: host` with the host's address on the bridge (the gateway).
    ///
    /// # Errors
    /// When the attachment records cannot be read.
    pub fn app_hosts(&self, app: &AppSpec, net: &AppNetwork) -> Result<String, NetworkError> {
        let attached: BTreeMap<String, Ipv4Addr> = self
            .attachments()?
            .into_iter()
            .filter(|a| a.app == app.name)
            .map(|a| (a.service, a.address))
            .collect();
        let mut entries = BTreeMap::new();
        for (name, svc) in &app.services {
            let ip = match svc.network_mode {
                NetworkMode::Host => Some(net.gateway()),
                NetworkMode::Private => attached.get(name).copied(),
            };
            if let Some(ip) = ip {
                entries.insert(name.clone(), ip);
            }
        }
        Ok(hosts::render(&entries))
    }

    /// Write [`Networks::app_hosts`] to `path` when it changed (in place: bind mounts pin the inode); returns
    /// whether it wrote.
    ///
    /// # Errors
    /// When the records cannot be read or the file cannot be written.
    pub fn write_app_hosts(
        &self,
        app: &AppSpec,
        net: &AppNetwork,
        path: &Path,
    ) -> Result<bool, NetworkError> {
        let text = self.app_hosts(app, net)?;
        hosts::write_in_place(path, &text).map_err(|source| NetworkError::Hosts {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Remove everything not wanted any more: attachments (and stray namespace files) of
    /// containers not in `keep_containers`, networks of apps not in `keep_apps`. Returns the
    /// errors (each is retried on the next call).
    pub async fn collect(
        &mut self,
        keep_containers: &HashSet<String>,
        keep_apps: &HashSet<String>,
    ) -> Vec<NetworkError> {
        let mut errors = Vec::new();
        match self.records.all() {
            Ok(records) => {
                for r in records
                    .iter()
                    .filter(|r| !keep_containers.contains(&r.container_id))
                {
                    info!(id = %r.container_id, "detaching a container that is no longer desired");
                    if let Err(e) = self.detach(&r.container_id).await {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if let Ok(entries) = std::fs::read_dir(self.cfg.netns_dir()) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                if !keep_containers.contains(&id) && !id.ends_with(".tmp") {
                    if let Err(e) = self.detach(&id).await {
                        errors.push(e);
                    }
                }
            }
        }
        let apps: Vec<String> = match self.subnets() {
            Ok(s) => s
                .apps()
                .map(|(a, _)| a.to_string())
                .filter(|a| !keep_apps.contains(a))
                .collect(),
            Err(e) => {
                errors.push(e.into());
                Vec::new()
            }
        };
        for app in apps {
            if let Err(e) = self.remove_app(&app).await {
                errors.push(e);
            }
        }
        errors
    }
}

/// Delete network device `name` with `ip link del`; a device that does not exist is fine.
async fn delete_link(name: &str) -> Result<(), NetworkError> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let out = command::run(
        Path::new("ip"),
        &["link", "del", name],
        &[],
        b"",
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| NetworkError::Bridge {
        bridge: name.into(),
        reason: e.to_string(),
    })?;
    if !out.success && Path::new("/sys/class/net").join(name).exists() {
        return Err(NetworkError::Bridge {
            bridge: name.into(),
            reason: out.stderr,
        });
    }
    Ok(())
}
