//! The device firewall: one nftables table, `inet cairn`, replaced whole and atomically.
//!
//! - Inbound (hook input, policy drop): loopback, replies to the device's own connections,
//!   ICMP and ICMPv6 (IPv6 needs neighbour discovery), DHCP and DHCPv6 replies, and the host
//!   ports apps publish. Nothing else the device runs is reachable from the LAN.
//! - Forwarded (hook forward, policy drop): replies, connections portmap DNAT-ed to a published
//!   port, and app traffic leaving through a non-app interface. So the LAN cannot reach an app
//!   network directly, and one app's containers cannot reach another app's unpublished ports
//!   (traffic inside one app's bridge is switched, not forwarded, and stays allowed).
//! - Sent by the device itself (hook output): new connections into an app network only to a
//!   published port (DNAT-ed), so a `network_mode: host` service cannot reach other apps'
//!   unpublished ports either. Everything else the device sends is allowed.
//!
//! Why nftables rather than more iptables rules next to the CNI plugins' own: the whole policy is
//! one table that `nft -f` swaps in a single transaction, so there is never a half-written
//! policy, and the plugins' chains (which accept their traffic) cannot open a hole in it: a
//! packet must pass every base chain of its hook, and this one drops by default.
//!
//! The table lives in the kernel, so it outlives an agent restart. At boot a base policy (no
//! published port) is loaded before the network comes up (`cairn-agent firewall`); the agent's
//! reconciler replaces it whenever the set of published ports changes.
//!
//! [`ruleset`] is pure; [`Firewall::apply`] runs `nft`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use cairn_compose::{AppSpec, Protocol};

use super::command::{self, CommandError};
use super::subnet::BRIDGE_PREFIX;

/// How long `nft` may take to load the table.
const NFT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the firewall could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` could not be run.
    #[error("cannot run the firewall tool: {0}")]
    Run(#[from] CommandError),
    /// `nft` refused the ruleset.
    #[error("nft refused the firewall ruleset (exit status {code:?}): {stderr}; the previous rules stay in force")]
    Refused {
        /// Its exit code.
        code: Option<i32>,
        /// What it printed.
        stderr: String,
    },
}

/// A host port some app publishes.
pub type PublishedPort = (Protocol, u16);

/// Every host port the services of `apps` publish beyond the device itself: a port published
/// on a loopback address (`127.0.0.1:9100:9100`) stays closed to the LAN. A port published on
/// one of the device's other addresses is opened on all of them.
pub fn published_ports<'a>(apps: impl IntoIterator<Item = &'a AppSpec>) -> BTreeSet<PublishedPort> {
    apps.into_iter()
        .flat_map(|app| app.services.values())
        .flat_map(|svc| svc.ports.iter())
        .filter(|p| !p.host_ip.is_some_and(|ip| ip.is_loopback()))
        .map(|p| (p.protocol, p.host_port))
        .collect()
}

/// The nftables script that replaces table `inet cairn` with the policy for `published`.
pub fn ruleset(published: &BTreeSet<PublishedPort>) -> String {
    let ports = |proto: Protocol| {
        let list: Vec<String> = published
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|(_, port)| port.to_string())
            .collect();
        list.join(", ")
    };
    let mut published_rules = String::new();
    for (proto, name) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
        let list = ports(proto);
        if !list.is_empty() {
            published_rules.push_str(&format!("\t\t{name} dport {{ {list} }} accept\n"));
        }
    }
    format!(
        "table inet cairn\n\
         delete table inet cairn\n\
         table inet cairn {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tiif \"lo\" accept\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tmeta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \t\tudp dport {{ 68, 546 }} accept\n\
         {published_rules}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tct status dnat accept\n\
         \t\tiifname \"{BRIDGE_PREFIX}*\" oifname != \"{BRIDGE_PREFIX}*\" accept\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname \"{BRIDGE_PREFIX}*\" ct state new ct status dnat accept\n\
         \t\toifname \"{BRIDGE_PREFIX}*\" ct state new drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Loads rulesets with `nft`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firewall {
    /// The program and the arguments before `-f -`: `["nft"]` on a device; tests prefix
    /// `ip netns exec NAME`.
    pub command: Vec<String>,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall {
            command: vec!["nft".into()],
        }
    }
}

impl Firewall {
    /// Replace table `inet cairn` with the policy for `published`, in one nft transaction.
    ///
    /// # Errors
    /// [`FirewallError`] when nft cannot run or refuses the script; the kernel keeps the
    /// previous table then.
    pub async fn apply(&self, published: &BTreeSet<PublishedPort>) -> Result<(), FirewallError> {
        let script = ruleset(published);
        let (program, prefix) = self
            .command
            .split_first()
            .map_or(("nft", &[][..]), |(p, a)| (p.as_str(), a));
        let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
        args.extend(["-f", "-"]);
        let done = command::run(
            &PathBuf::from(program),
            &args,
            &[],
            script.as_bytes(),
            NFT_TIMEOUT,
        )
        .await?;
        if done.success {
            Ok(())
        } else {
            Err(FirewallError::Refused {
                code: done.code,
                stderr: done.stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_of_every_service_open_inbound() {
        let app = AppSpec::parse(
            "c.yml",
            "shop",
            "services:\n  web: {image: x, ports: ['8080:80', '5353:53/udp']}\n  mon: {image: y, network_mode: host, ports: ['9100:9100']}\n",
        )
        .unwrap();
        let published = published_ports([&app]);
        assert_eq!(
            published,
            BTreeSet::from([
                (Protocol::Tcp, 8080),
                (Protocol::Tcp, 9100),
                (Protocol::Udp, 5353)
            ])
        );
        let rules = ruleset(&published);
        assert!(rules.contains("tcp dport { 8080, 9100 } accept"), "{rules}");
        let local = AppSpec::parse(
            "c.yml",
            "mon",
            "services:\n  m: {image: y, network_mode: host, ports: ['127.0.0.1:9100:9100']}\n",
        )
        .unwrap();
        assert!(
            published_ports([&local]).is_empty(),
            "loopback stays closed"
        );
        assert!(rules.contains("udp dport { 5353 } accept"), "{rules}");
    }

    #[test]
    fn without_published_ports_only_the_system_gets_in() {
        let rules = ruleset(&BTreeSet::new());
        assert!(!rules.contains("tcp dport"), "{rules}");
        assert!(rules.contains("policy drop"));
        assert!(rules.contains("udp dport { 68, 546 } accept"));
        // The table is replaced in one transaction, whether or not it existed.
        assert!(rules.starts_with("table inet cairn\ndelete table inet cairn\n"));
        assert!(rules.contains("iifname \"cairn*\" oifname != \"cairn*\" accept"));
    }
}
