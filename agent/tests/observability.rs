//! A real agent against a real central: its heartbeats carry this host's metrics (shown on the
//! device page), its events reach central's event log, and central's log requests are answered
//! from the service log files the runtime writes.

mod support;

use std::time::Duration;

use cairn_api::{DeviceDetail, DeviceLogs, EventList, HostMetrics};
use cairn_testsupport::central::{error_message, read, TestCentral};
use support::{agent_config, device_id, eventually, wait_phase, RunningAgent, WAIT};

/// The host metrics central shows for device `id` (none before its first report).
fn host(central: &TestCentral, id: &str) -> Option<HostMetrics> {
    central
        .get::<DeviceDetail>(&format!("/api/v1/devices/{id}"))
        .device
        .host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_metrics_events_and_logs_reach_central() {
    let central = TestCentral::start().await;
    let (_, token) = central.token("auto", None, None);
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(&central, &token, dir.path(), "SN-OBS-1");
    config.metrics_mounts = vec!["/".into(), dir.path().join("no-such-mount")];
    // A service log as the containerd shim writes it (apps need not run for it to be read).
    let log = cairn_runtime::container::RuntimeConfig::new(config.apps.data_dir(&config.state_dir))
        .log_path("web", "nginx");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "GET / 200\nGET /missing 404\nGET /health 200\n").unwrap();
    let running = RunningAgent::start(config).await;
    let agent = running.agent.clone();
    wait_phase(&agent, cairn_agent::Phase::Connected).await;
    let id = device_id(&agent);

    // Heartbeats every 100 ms: the second sample has a CPU share.
    eventually(
        WAIT,
        "central to show host metrics with a CPU share",
        || host(&central, &id).is_some_and(|h| h.cpu_percent.is_some()),
    )
    .await;
    let host = host(&central, &id).unwrap();
    assert!(host.memory_total_bytes > 0, "{host:?}");
    assert!(host.uptime_seconds > 0, "{host:?}");
    let filesystems = &host.filesystems;
    assert_eq!(
        filesystems.len(),
        1,
        "a missing mount point is skipped: {host:?}"
    );
    assert_eq!(filesystems[0].mount_point, "/");
    assert!(filesystems[0].total_bytes > 0);

    // The agent's start is in the event log, from the agent itself.
    let mut started = Vec::new();
    for _ in 0..200 {
        started = central
            .get::<EventList>(&format!("/api/v1/events?device={id}&kind=agent.started"))
            .events;
        if !started.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].message.starts_with("cairn-agent "),
        "{started:?}"
    );

    // Logs on demand: the last lines of the service's log file, read by the agent.
    let operator = central.api_token("ops", "operator");
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs?app=web&service=nginx&lines=2"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let logs: DeviceLogs = read("GET", "logs", body);
    assert_eq!(logs.text, "GET /missing 404\nGET /health 200\n");
    assert!(!logs.truncated);
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs?app=web&service=db"),
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        error_message(&body).contains("has not started on this device"),
        "{body}"
    );

    running.stop().await;
}
