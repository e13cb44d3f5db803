//! `cairnctl device top|show`, `events` and `logs` against a real central with a real in-process
//! agent (software key, apps off) sending heartbeats with this host's metrics, its events, and
//! answering log requests from a service log file.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::config::KeyStorageSetting;
use cairn_agent::{AgentConfig, Phase};
use cairn_api::{DeviceList, DeviceLogs, EventList};
use cairn_testsupport::central::TestCentral;
use tokio::sync::watch;

use support::Ctl;

mod support;

const WAIT: Duration = Duration::from_secs(20);

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_show_events_and_logs_through_cairnctl() {
    let central = TestCentral::start().await;
    let ctl = Ctl::new(&central);
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("central-ca.pem");
    std::fs::write(&ca, &central.ca_pem).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", central.c().grpc_addr.port());
    let mut config = AgentConfig::new(&endpoint, &ca, &token, &dir.path().join("agent"));
    config.key_storage = KeyStorageSetting::Software;
    config.serial = Some("SN-TOP".into());
    config.hostname = Some("edge-top".into());
    config.heartbeat_interval_ms = 100;
    config.metrics_mounts = vec!["/".into()];
    let log = cairn_runtime::container::RuntimeConfig::new(config.apps.data_dir(&config.state_dir))
        .log_path("web", "nginx");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "one\ntwo\nthree \u{1b}[31mred\n").unwrap();

    let agent = std::sync::Arc::new(cairn_agent::Agent::new(config).await.unwrap());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(shutdown).await }
    });
    let mut status = agent.status();
    tokio::time::timeout(
        WAIT,
        cairn_agent::wait_for_phase(&mut status, Phase::Connected),
    )
    .await
    .unwrap();
    let id = agent.status().borrow().device_id.clone().unwrap();

    // top: one row per device, with the CPU share once two samples were taken.
    until("a CPU share in device top", || {
        let top: DeviceList = ctl.read(&["device", "top"]);
        top.devices[0]
            .host
            .as_ref()
            .is_some_and(|h| h.cpu_percent.is_some())
    })
    .await;
    let top = ctl.ok(&["device", "top"]);
    let mut lines = top.lines();
    assert!(lines.next().unwrap().starts_with("DEVICE"), "{top}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[2]),
        (id.as_str(), "edge-top", "yes"),
        "{top}"
    );
    for cell in &row[3..6] {
        let value: f64 = cell
            .parse()
            .unwrap_or_else(|_| panic!("CPU, MEM and DISK are numbers: {top}"));
        assert!((0.0..=100.0).contains(&value), "{top}");
    }

    // show: the device's fields, then its host metrics and recent events.
    until("the agent's start event", || {
        ctl.ok(&["events", "--device", &id, "--kind", "agent.started"])
            .contains("agent.started")
    })
    .await;
    let shown = ctl.ok(&["device", "show", &id]);
    assert!(
        shown.contains("host.cpu_percent")
            && shown.contains("host.disk /")
            && shown.contains("host.memory"),
        "{shown}"
    );
    assert!(
        shown.contains("recent events:")
            && shown.contains("device.connected")
            && shown.contains("agent.started"),
        "{shown}"
    );

    // events: a table, filters, and --since/--limit checked by cairnctl or central.
    let events = ctl.ok(&["events", "--device", &id, "--since", "1h"]);
    assert!(
        events.starts_with("TIME")
            && events.contains("device.enrolled")
            && events.contains("device.connected"),
        "{events}"
    );
    let one: EventList = ctl.read(&["events", "--limit", "1"]);
    assert_eq!(one.events.len(), 1);
    let bad = ctl.run(&["events", "--kind", "nope"]);
    assert!(
        !bad.ok && bad.stderr.contains("not an event kind"),
        "{}",
        bad.stderr
    );
    let bad = ctl.run(&["events", "--since", "soon"]);
    assert!(!bad.ok && bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
    let bad = ctl.run(&["events", "--limit", "0"]);
    assert!(!bad.ok && bad.stderr.contains("--limit"), "{}", bad.stderr);

    // logs: the last lines, terminal escapes made inert.
    let logs = ctl.ok(&["logs", &id, "--app", "web", "--service", "nginx", "-n", "2"]);
    assert_eq!(logs, "two\nthree \\u{1b}[31mred\n");
    let logs: DeviceLogs = ctl.read(&["logs", &id, "--app", "web", "--service", "nginx"]);
    assert_eq!(logs.lines, 100);
    let missing = ctl.run(&["logs", &id, "--app", "web", "--service", "db"]);
    assert!(
        !missing.ok && missing.stderr.contains("has not started on this device"),
        "{}",
        missing.stderr
    );
    for args in [
        vec!["logs", id.as_str()],
        vec!["logs", id.as_str(), "--app", "web"],
        vec![
            "logs",
            id.as_str(),
            "--agent",
            "--app",
            "web",
            "--service",
            "x",
        ],
        vec!["logs", id.as_str(), "--agent", "-n", "0"],
    ] {
        let usage = ctl.run(&args);
        assert!(
            !usage.ok && usage.stderr.starts_with("error:"),
            "{args:?}: {}",
            usage.stderr
        );
    }

    // --follow prints the table, then new events as they come (here: the revocation).
    let mut follow = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .args(["events", "--follow", "--device", &id])
            .env("CAIRN_CENTRAL", &ctl.url)
            .env("CAIRN_CA", &ctl.ca)
            .env("CAIRN_TOKEN_FILE", &ctl.token_file)
            .env_remove("CAIRN_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &str| {
        let start = Instant::now();
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("cairnctl events --follow never printed {needle}"),
            }
        }
    };
    tokio::task::block_in_place(|| wait_for("agent.started"));
    ctl.ok(&["device", "revoke", &id]);
    let line = tokio::task::block_in_place(|| wait_for("device.revoked"));
    assert!(line.contains("warning") && line.contains(&id), "{line}");
    follow.kill().unwrap();
    let _ = follow.wait();

    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
