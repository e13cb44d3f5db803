//! The CNI plugin chain of a service container: `bridge` with `host-local` IPAM on the app's
//! subnet (gateway, masquerading, hairpin), then `portmap` (with `snat`) when it publishes ports.

use std::path::Path;

use cairn_compose::{PortMapping, Protocol};
use serde_json::{json, Value};

use super::{AppNetwork, CNI_VERSION};

/// The plugin chain of a service: bridge with host-local IPAM, then portmap when it
/// publishes ports.
pub(crate) fn plugin_chain(net: &AppNetwork, ports: &[PortMapping], ipam_dir: &Path) -> Vec<Value> {
    let mut chain = vec![json!({
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": net.subnet.to_string(), "gateway": net.gateway().to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })];
    if !ports.is_empty() {
        let mappings: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": match p.protocol { Protocol::Tcp => "tcp", Protocol::Udp => "udp" },
                });
                if let Some(ip) = p.host_ip {
                    m["hostIP"] = json!(ip.to_string());
                }
                m
            })
            .collect();
        chain.push(json!({
            "cniVersion": CNI_VERSION,
            "name": net.name,
            "type": "portmap",
            "snat": true,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
        }));
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::AppNetwork;

    #[test]
    fn chain_has_bridge_and_portmap_only_with_ports() {
        let net = AppNetwork::for_subnet("shop", "10.88.7.0/24".parse().unwrap());
        assert_eq!(net.bridge, "cairn0a580700");
        let chain = plugin_chain(&net, &[], Path::new("/run/x/ipam"));
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0]["type"], "bridge");
        assert_eq!(chain[0]["name"], "cairn-shop");
        assert_eq!(chain[0]["ipam"]["ranges"][0][0]["gateway"], "10.88.7.1");
        assert_eq!(chain[0]["ipam"]["dataDir"], "/run/x/ipam");
        let ports = cairn_compose::AppSpec::parse(
            "c.yml",
            "shop",
            "services: {web: {image: x, ports: [\"8080:80\", \"127.0.0.1:5353:53/udp\"]}}",
        )
        .unwrap()
        .services["web"]
            .ports
            .clone();
        let chain = plugin_chain(&net, &ports, Path::new("/run/x/ipam"));
        assert_eq!(chain[1]["type"], "portmap");
        assert_eq!(chain[1]["snat"], true);
        assert_eq!(
            chain[1]["runtimeConfig"]["portMappings"],
            json!([
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ])
        );
    }
}
