//! Published ports: ranges in the short syntax, the long syntax, and the bounds on how many.

use super::super::*;
use super::{assert_error, errors, web, web_error};

fn mappings(svc: &ServiceSpec) -> Vec<(Option<String>, u16, u16, Protocol)> {
    svc.ports
        .iter()
        .map(|p| {
            let ip = p.host_ip.map(|ip| ip.to_string());
            (ip, p.host_port, p.container_port, p.protocol)
        })
        .collect()
}

#[test]
fn port_ranges_expand_to_one_mapping_per_port() {
    let web = web("    ports:\n      - \"8000-8002:9000-9002\"\n      - \"7000-7001:7000-7001/udp\"\n      - \"127.0.0.1:6000-6001:80-81\"\n");
    let tcp = Protocol::Tcp;
    let local = Some("127.0.0.1".to_string());
    assert_eq!(
        mappings(&web),
        [
            (None, 8000, 9000, tcp),
            (None, 8001, 9001, tcp),
            (None, 8002, 9002, tcp),
            (None, 7000, 7000, Protocol::Udp),
            (None, 7001, 7001, Protocol::Udp),
            (local.clone(), 6000, 80, tcp),
            (local, 6001, 81, tcp),
        ]
    );
}

#[test]
fn port_ranges_of_different_lengths_or_backwards_are_refused() {
    web_error(
        "    ports: [\"8000-8010:80\"]\n",
        "compose.yml:4: services.web.ports[0]: \"8000-8010:80\" is not a port mapping: the host range has 11 ports and the container range 1; each container port needs its own host port (none is picked at random)",
    );
    web_error(
        "    ports: [\"9-8:9-8\"]\n",
        "services.web.ports[0]: \"9-8:9-8\" is not a port mapping: range \"9-8\" ends before it starts",
    );
    web_error(
        "    ports: [\"80-81\"]\n",
        "the host port is missing (ports are never picked at random here)",
    );
}

#[test]
fn the_long_port_syntax_publishes_like_the_short_one() {
    let web = web("    ports:\n      - target: 80\n        published: \"8080\"\n      - {target: 53, published: 5353, protocol: udp, host_ip: 127.0.0.1, mode: host}\n      - {target: \"90-91\", published: 9090-9091, mode: ingress}\n      - \"7000:70\"\n");
    let tcp = Protocol::Tcp;
    assert_eq!(
        mappings(&web),
        [
            (None, 8080, 80, tcp),
            (Some("127.0.0.1".into()), 5353, 53, Protocol::Udp),
            (None, 9090, 90, tcp),
            (None, 9091, 91, tcp),
            (None, 7000, 70, tcp),
        ]
    );
}

#[test]
fn the_long_port_syntax_refuses_what_the_short_one_does() {
    let base = "    ports:\n      - target: 80\n";
    web_error(
        base,
        "compose.yml:5: services.web.ports[0].published: is missing: host ports are never picked at random here",
    );
    web_error(
        "    ports: [{published: 8080}]\n",
        "compose.yml:4: services.web.ports[0].target: is missing; give the container port",
    );
    web_error(
        &format!("{base}        published: 70000\n"),
        "compose.yml:6: services.web.ports[0].published: host port \"70000\" is not a number from 1 to 65535",
    );
    web_error(
        &format!("{base}        published: 8080\n        protocol: sctp\n"),
        "compose.yml:7: services.web.ports[0].protocol: protocol \"sctp\" is not tcp or udp",
    );
    web_error(
        &format!("{base}        published: 8080\n        host_ip: localhost\n"),
        "services.web.ports[0].host_ip: host address \"localhost\" is not an IP address",
    );
    web_error(
        &format!("{base}        published: 8080\n        mode: overlay\n"),
        "services.web.ports[0].mode: \"overlay\" is not a port mode",
    );
    web_error(
        &format!("{base}        published: 8080-8081\n"),
        "compose.yml:5: services.web.ports[0]: the host range has 2 ports and the container range 1",
    );
    web_error(
        &format!("{base}        published: 8080\n        name: web\n"),
        "services.web.ports[0].name: unknown key \"name\"; supported keys here: target, published, host_ip, protocol, mode",
    );
}

#[test]
fn a_service_publishes_at_most_1024_ports() {
    web("    ports: [\"1000-2023:1000-2023\"]\n");
    web_error(
        "    ports: [\"1000-2024:1000-2024\"]\n",
        "\"1000-2024:1000-2024\" is not a port mapping: the range has 1025 ports; a service publishes at most 1024",
    );
    web_error(
        "    ports: [\"1000-1999:1000-1999\", \"3000-3024:3000-3024\"]\n",
        "compose.yml:4: services.web.ports[1]: the service would publish more than 1024 ports; publish fewer",
    );
}

#[test]
fn an_app_publishes_at_most_4096_ports() {
    let services: String = (0..5)
        .map(|i| {
            let first = 10000 + i * 1000;
            let last = first + 999;
            format!("  s{i}:\n    image: busybox\n    ports: [\"{first}-{last}:{first}-{last}\"]\n")
        })
        .collect();
    let got = errors(&format!("services:\n{services}"));
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(
        got.contains(
            "compose.yml:16: services.s4.ports[0]: the app would publish more than 4096 ports"
        ),
        "{got}"
    );
}

#[test]
fn a_clash_inside_a_range_names_the_entry() {
    assert_error(
        "services:\n  api:\n    image: x\n    ports: [\"8000-8009:8000-8009\"]\n  web:\n    image: x\n    ports:\n      - \"9000:90\"\n      - \"127.0.0.1:8005-8006:80-81\"\n",
        "compose.yml:9: services.web.ports[1]: host port 8005/tcp is already published by services.api.ports[0]; pick another host port",
    );
    // One problem per entry, however many of its ports clash.
    let got = errors(
        "services:\n  web:\n    image: x\n    network_mode: host\n    ports: [\"80-89:90-99\"]\n",
    );
    assert_eq!(got.lines().count(), 1, "{got}");
}
