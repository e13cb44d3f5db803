//! Clean-up of the bridge plugin's masquerade rules when its DEL cannot do it.
//!
//! The bridge plugin of containernetworking-plugins 1.1.1 learns the container's addresses for
//! its `ipMasq` teardown from the interface inside the namespace. When the namespace is already
//! gone, its DEL succeeds (as CNI requires) but leaves the rule
//! `POSTROUTING -s <ip>/32 -j CNI-<hash>` and that chain behind. This removes them the way the
//! plugin names them (`CNI-` + the first 24 hex digits of sha512(network name + container id),
//! comment `name: "<network>" id: "<container>"`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha512};
use tracing::{debug, info};

use super::command;

const IPTABLES_TIMEOUT: Duration = Duration::from_secs(10);

/// The chain the bridge plugin makes for a container's masquerading.
pub(crate) fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    format!("CNI-{}", &hex::encode(digest)[..24])
}

/// Remove the masquerade rules of `container_id` on `network` for `addresses` (a missing rule or
/// chain is fine; failures are only logged, since the plugin's DEL already succeeded).
pub(crate) async fn remove_rules(network: &str, container_id: &str, addresses: &[Ipv4Addr]) {
    let chain = chain_name(network, container_id);
    let comment = format!("name: {network:?} id: {container_id:?}");
    let mut commands: Vec<Vec<String>> = addresses
        .iter()
        .map(|ip| {
            [
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-s",
                &format!("{ip}/32"),
                "-j",
                &chain,
                "-m",
                "comment",
                "--comment",
                &comment,
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    commands.push(["-t", "nat", "-F", &chain].map(String::from).to_vec());
    commands.push(["-t", "nat", "-X", &chain].map(String::from).to_vec());
    let mut removed = false;
    for args in commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match command::run(Path::new("iptables"), &args, &[], b"", IPTABLES_TIMEOUT).await {
            Ok(out) if out.success => removed = true,
            Ok(out) => debug!(?args, stderr = %out.stderr, "nothing to remove"),
            Err(e) => debug!(?args, error = %e, "iptables failed"),
        }
    }
    if removed {
        info!(%chain, "removed masquerade rules the bridge plugin left behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_plugin() {
        // Measured with containernetworking-plugins 1.1.1 (bridge, ipMasq).
        assert_eq!(
            chain_name("cairn-solo", "solo_s"),
            "CNI-b3551585daac8bdee742f58f"
        );
        assert_eq!(
            chain_name("cairn-chat", "chat_web"),
            "CNI-ba1f43adb2e8d327c35b47a8"
        );
    }
}
