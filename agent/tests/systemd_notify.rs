//! The `cairn-agent run` process speaks systemd's notify protocol to the socket in
//! `$NOTIFY_SOCKET`: `READY=1` with its phase once prepared (before central is reached),
//! `WATCHDOG=1` at half `$WATCHDOG_USEC` while its main loop makes progress, `STOPPING=1` on
//! SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams received within `within`, until `until` matches one.
fn receive_until(
    socket: &UnixDatagram,
    within: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = until(&message);
        got.push(message);
        if done {
            break;
        }
    }
    got
}

#[test]
fn the_agent_process_says_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["central".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let config = dir.path().join("agent.toml");
    // Nothing listens on port 1: the agent stays offline, retrying, and must stay alive.
    std::fs::write(
        &config,
        format!(
            "central_endpoint = \"https://127.0.0.1:1\"\nca_cert = {:?}\nenrollment_token = \"t\"\nstate_dir = {:?}\nkey_storage = \"software\"\nserial = \"SN-NOTIFY\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nmetrics_mounts = []\n",
            ca_path,
            dir.path().join("state")
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_cairn-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let got = receive_until(&systemd, Duration::from_secs(30), |m| {
        m.starts_with("READY=1")
    });
    let ready = got.last().cloned().unwrap_or_default();
    assert!(
        ready.starts_with("READY=1\nSTATUS=enrolling"),
        "no READY=1 with the phase: {got:?}"
    );
    let fed = receive_until(&systemd, Duration::from_secs(2), |_| false);
    let pings = fed.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 4, "watchdog not fed every 200 ms: {fed:?}");
    assert!(
        fed.iter().any(|m| m.starts_with("STATUS=offline")),
        "no STATUS= for the offline phase: {fed:?}"
    );

    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let end = receive_until(&systemd, Duration::from_secs(10), |m| {
        m.starts_with("STOPPING=1")
    });
    assert!(
        end.last().is_some_and(|m| m.starts_with("STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {end:?}"
    );
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status}");
}
