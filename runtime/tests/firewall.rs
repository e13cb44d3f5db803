//! The device firewall's real nftables table in network namespaces that stand in for a device:
//! a LAN host, the device with two app bridges, and one container namespace per app. The same
//! connections are tried before and after the table is loaded, so each refusal is the
//! firewall's doing: only published ports answer from the LAN, the LAN cannot route into an app
//! network, and one app cannot reach another app's unpublished port.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};

use cairn_compose::Protocol;
use cairn_runtime::network::Firewall;

const LAN_IP: &str = "192.168.77.1";
const DEVICE_IP: &str = "192.168.77.2";
const APP_A_IP: &str = "10.231.1.2";
const APP_B_IP: &str = "10.231.2.2";
/// A port app B listens on without publishing it.
const APP_B_PORT: u16 = 7000;
/// A port a host-network service listens on without publishing it.
const HOST_UNPUBLISHED: u16 = 7001;
/// A port a host-network service publishes.
const HOST_PUBLISHED: u16 = 7002;
/// A port the LAN host listens on (app egress).
const LAN_PORT: u16 = 7003;
/// App B's published port, DNAT-ed to APP_B_IP:APP_B_PORT as portmap would.
const B_PUBLISHED: u16 = 8080;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces and listeners, removed on drop.
struct Lab {
    prefix: String,
    listeners: Vec<Child>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) {
        let ns = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    fn listen(&mut self, ns: &str, port: u16) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "busybox", "nc", "-ll", "-p"])
            .arg(port.to_string())
            .args(["-e", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
    }

    /// Whether a TCP connection from namespace `from` to `ip:port` is accepted within 2 s.
    fn connects(&self, from: &str, ip: &str, port: u16) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "timeout",
                "2",
                "bash",
                "-c",
            ])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn build() -> Lab {
        let lab = Lab {
            prefix: format!("cfw{}", std::process::id() % 100_000),
            listeners: Vec::new(),
        };
        for ns in ["lan", "dev", "a", "b"] {
            run(&["ip", "netns", "add", &lab.ns(ns)]);
            lab.exec(ns, &["ip", "link", "set", "lo", "up"]);
        }
        let (lan, dev) = (lab.ns("lan"), lab.ns("dev"));
        run(&[
            "ip", "link", "add", "cfwlan0", "netns", &lan, "type", "veth", "peer", "name",
            "cfwwan0", "netns", &dev,
        ]);
        lab.exec(
            "lan",
            &[
                "ip",
                "addr",
                "add",
                &format!("{LAN_IP}/24"),
                "dev",
                "cfwlan0",
            ],
        );
        lab.exec("lan", &["ip", "link", "set", "cfwlan0", "up"]);
        // The LAN host even routes app subnets to the device: the firewall must still refuse.
        lab.exec(
            "lan",
            &["ip", "route", "add", "10.231.0.0/16", "via", DEVICE_IP],
        );
        lab.exec(
            "dev",
            &[
                "ip",
                "addr",
                "add",
                &format!("{DEVICE_IP}/24"),
                "dev",
                "cfwwan0",
            ],
        );
        lab.exec("dev", &["ip", "link", "set", "cfwwan0", "up"]);
        lab.exec("dev", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (app, bridge, gateway, ip) in [
            ("a", "cairn0ae70100", "10.231.1.1", APP_A_IP),
            ("b", "cairn0ae70200", "10.231.2.1", APP_B_IP),
        ] {
            let peer = format!("cfwv{app}");
            lab.exec("dev", &["ip", "link", "add", bridge, "type", "bridge"]);
            lab.exec(
                "dev",
                &["ip", "addr", "add", &format!("{gateway}/24"), "dev", bridge],
            );
            lab.exec("dev", &["ip", "link", "set", bridge, "up"]);
            lab.exec(
                "dev",
                &[
                    "ip",
                    "link",
                    "add",
                    &peer,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &lab.ns(app),
                ],
            );
            lab.exec("dev", &["ip", "link", "set", &peer, "master", bridge, "up"]);
            lab.exec(
                app,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            lab.exec(app, &["ip", "link", "set", "eth0", "up"]);
            lab.exec(app, &["ip", "route", "add", "default", "via", gateway]);
        }
        // portmap's part, in a table of its own: B's published port DNAT-ed to its container.
        let nat = std::env::temp_dir().join(format!("{}-portmap.nft", lab.prefix));
        std::fs::write(
            &nat,
            format!("table ip portmap {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat;\n\t\ttcp dport {B_PUBLISHED} dnat to {APP_B_IP}:{APP_B_PORT}\n\t}}\n\tchain out {{\n\t\ttype nat hook output priority -100;\n\t\tip daddr {DEVICE_IP} tcp dport {B_PUBLISHED} dnat to {APP_B_IP}:{APP_B_PORT}\n\t}}\n}}\n"),
        )
        .unwrap();
        lab.exec("dev", &["nft", "-f", nat.to_str().unwrap()]);
        let _ = std::fs::remove_file(nat);
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in ["lan", "dev", "a", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .status();
        }
    }
}

/// Which of the connections that matter are accepted, by name.
fn reachable(lab: &Lab) -> Vec<(&'static str, bool)> {
    vec![
        (
            "lan -> published host port",
            lab.connects("lan", DEVICE_IP, HOST_PUBLISHED),
        ),
        (
            "lan -> published app port",
            lab.connects("lan", DEVICE_IP, B_PUBLISHED),
        ),
        (
            "app a -> published app port of b",
            lab.connects("a", DEVICE_IP, B_PUBLISHED),
        ),
        ("app a -> lan (egress)", lab.connects("a", LAN_IP, LAN_PORT)),
        (
            "host network -> published app port",
            lab.connects("dev", DEVICE_IP, B_PUBLISHED),
        ),
        (
            "lan -> unpublished host port",
            lab.connects("lan", DEVICE_IP, HOST_UNPUBLISHED),
        ),
        (
            "lan -> app network directly",
            lab.connects("lan", APP_B_IP, APP_B_PORT),
        ),
        (
            "app a -> unpublished port of app b",
            lab.connects("a", APP_B_IP, APP_B_PORT),
        ),
        (
            "host network -> unpublished app port",
            lab.connects("dev", APP_B_IP, APP_B_PORT),
        ),
    ]
}

fn tools_present() -> bool {
    let present = ["ip", "nft", "busybox", "timeout"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !(present && root) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the firewall test needs root, ip, nft, busybox and timeout (dev/setup.sh installs them)"
        );
        eprintln!("SKIPPED: the firewall test needs root, ip, nft, busybox and timeout");
    }
    present && root
}

#[test]
fn only_published_ports_answer_and_apps_stay_apart() {
    if !tools_present() {
        return;
    }
    let mut lab = Lab::build();
    lab.listen("b", APP_B_PORT);
    lab.listen("dev", HOST_UNPUBLISHED);
    lab.listen("dev", HOST_PUBLISHED);
    lab.listen("lan", LAN_PORT);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let before = reachable(&lab);
    assert!(
        before.iter().all(|(_, ok)| *ok),
        "without the firewall everything answers, or the test proves nothing: {before:?}"
    );

    let firewall = Firewall {
        command: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            lab.ns("dev"),
            "nft".into(),
        ],
    };
    let published = BTreeSet::from([
        (Protocol::Tcp, HOST_PUBLISHED),
        (Protocol::Tcp, B_PUBLISHED),
    ]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(firewall.apply(&published)).unwrap();
    // Loading it again replaces the table in one transaction (what every agent start does).
    runtime.block_on(firewall.apply(&published)).unwrap();
    let after = reachable(&lab);
    let expected = [true, true, true, true, true, false, false, false, false];
    let got: Vec<bool> = after.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(got, expected, "{after:?}");

    // With nothing published, the published host port closes too.
    runtime.block_on(firewall.apply(&BTreeSet::new())).unwrap();
    assert!(!lab.connects("lan", DEVICE_IP, HOST_PUBLISHED));
}
