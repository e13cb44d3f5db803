//! Observability against a real central with simulated devices on the real protocol (mTLS Sync
//! streams): host metrics on the device page, Prometheus metrics scraped and parsed line by line,
//! the event log (central's and agents' events, validation, rate limit, query checks), and logs on
//! demand through a device's stream (answered, device error, timeout, offline, late delivery on
//! reconnect, roles, audit).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_api::{AuditLog, DeviceDetail, DeviceList, DeviceLogs, EventList, Severity};
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, AppStatus, CentralMessage, Event, EventSeverity,
    FilesystemUsage, Heartbeat, HostMetrics, LogReply, LogRequest, ServiceState, ServiceStatus,
    TemperatureReading,
};
use cairn_testsupport::central::{config_in, heartbeat_acked, ConnectedDevice, TestCentral};
use cairn_testsupport::central::{error_message, read};
use tokio::sync::mpsc;
use tonic::Streaming;

/// One sample line of the exposition format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse a whole scrape strictly: every line is a HELP, a TYPE or a sample; every sample's family
/// has a TYPE line before it.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("HELP without text: {line}"));
            assert!(!help.is_empty() && name.starts_with("cairn_"), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family typed twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label in {line}"));
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label in {line}"));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name in {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&name);
        assert!(
            typed.contains_key(family),
            "sample before its TYPE line: {line}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == wanted)
        .unwrap_or_else(|| panic!("no sample {name}{wanted:?}"))
        .value
}

/// GET /metrics with `token`; (status, content type, body).
fn scrape_raw(central: &TestCentral, token: Option<&str>) -> (u16, String, String) {
    tokio::task::block_in_place(|| {
        let mut request = central.rest().get(&central.rest_url("/metrics"));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("scrape failed: {e}"),
        };
        let status = response.status();
        let content_type = response
            .header("content-type")
            .unwrap_or_default()
            .to_owned();
        (status, content_type, response.into_string().unwrap())
    })
}

fn scrape(central: &TestCentral, token: &str) -> Vec<Sample> {
    let (status, content_type, body) = scrape_raw(central, Some(token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse_exposition(&body)
}

struct Device {
    id: String,
    tx: mpsc::Sender<AgentMessage>,
    stream: Streaming<CentralMessage>,
    seq: u64,
}

impl Device {
    async fn connect(central: &TestCentral, serial: &str) -> Device {
        let ConnectedDevice { id, tx, stream, .. } = central.connect_device(serial).await;
        Device {
            id,
            tx,
            stream,
            seq: 0,
        }
    }

    async fn send(&self, kind: agent_message::Kind) {
        self.tx
            .send(AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// Send a heartbeat and wait for its ack (central has taken it in).
    async fn heartbeat(&mut self, apps: Vec<AppStatus>, host: Option<HostMetrics>) {
        self.heartbeat_sent_at(0, apps, host).await;
    }

    /// A heartbeat saying it was sent at `sent_unix_ms` by the device's clock (0: not said).
    async fn heartbeat_sent_at(
        &mut self,
        sent_unix_ms: i64,
        apps: Vec<AppStatus>,
        host: Option<HostMetrics>,
    ) {
        self.seq += 1;
        let seq = self.seq;
        let heartbeat = Heartbeat {
            seq,
            apps,
            host,
            sent_unix_ms,
            ..Default::default()
        };
        heartbeat_acked(&self.tx, &mut self.stream, heartbeat).await;
    }
}

fn host(disk_used: u64, celsius: f64) -> HostMetrics {
    HostMetrics {
        cpu_percent: Some(12.34),
        load1: 0.5,
        memory_total_bytes: 1000,
        memory_available_bytes: 250,
        filesystems: vec![
            FilesystemUsage {
                mount_point: "/".into(),
                used_bytes: 50,
                total_bytes: 100,
            },
            FilesystemUsage {
                mount_point: "/data".into(),
                used_bytes: disk_used,
                total_bytes: 100,
            },
        ],
        temperatures: vec![
            TemperatureReading {
                sensor: "thermal_zone0 x86_pkg_temp".into(),
                celsius,
            },
            TemperatureReading {
                sensor: "hwmon1/temp1 nvme".into(),
                celsius: f64::NAN,
            },
        ],
        uptime_seconds: 3600,
    }
}

fn app(state: ServiceState) -> Vec<AppStatus> {
    vec![AppStatus {
        name: "web".into(),
        generation: 1,
        desired_revision: 1,
        error: String::new(),
        services: vec![ServiceStatus {
            name: "nginx".into(),
            state: state as i32,
            message: String::new(),
            ..Default::default()
        }],
    }]
}

/// Events matching `query` once at least `min` are there (the batch writer runs every 50 ms).
async fn events_eventually(
    central: &TestCentral,
    query: &str,
    min: usize,
) -> Vec<cairn_api::Event> {
    for _ in 0..100 {
        let events = central
            .get::<EventList>(&format!("/api/v1/events?{query}"))
            .events;
        if events.len() >= min {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {min} events for {query}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_metrics_show_on_the_device_page_and_in_fleet_metrics() {
    let central = TestCentral::start().await;
    let viewer = central.api_token("grafana", "viewer");
    let before = scrape(&central, &viewer);
    assert_eq!(
        value(&before, "cairn_devices", &[("status", "active")]),
        0.0
    );
    assert_eq!(value(&before, "cairn_devices_online", &[]), 0.0);
    let rest_2xx_before = value(&before, "cairn_rest_requests_total", &[("class", "2xx")]);

    let mut hot = Device::connect(&central, "SER-OBS-1").await;
    let mut cool = Device::connect(&central, "SER-OBS-2").await;
    hot.heartbeat(app(ServiceState::Running), Some(host(95, 71.5)))
        .await;
    cool.heartbeat(app(ServiceState::Exited), Some(host(10, 40.0)))
        .await;
    cool.heartbeat(vec![], None).await;

    // The device page shows the latest host metrics, bounded and with derived percentages.
    let page: DeviceDetail = central.get(&format!("/api/v1/devices/{}", hot.id));
    let h = page.device.host.as_ref().expect("host metrics on the page");
    assert!(h.reported_at.to_string().ends_with('Z'), "{page:?}");
    assert_eq!(h.cpu_percent, Some(12.3));
    assert_eq!(h.memory_used_percent, Some(75.0));
    assert_eq!(h.disk_used_percent, Some(95.0));
    assert_eq!(h.filesystems[1].mount_point, "/data");
    assert_eq!(h.temperatures.len(), 1, "a NaN reading is dropped: {h:?}");
    assert_eq!(h.max_temperature_celsius, Some(71.5));
    assert_eq!(h.uptime_seconds, 3600);
    assert_eq!(h.clock_offset_ms, None, "no time sent, no offset");
    // A heartbeat without host metrics keeps the previous ones; the list shows them too.
    let list: DeviceList = central.get("/api/v1/devices");
    let listed = list
        .devices
        .iter()
        .find(|d| d.device.id == cool.id)
        .unwrap();
    assert_eq!(
        listed.host.as_ref().and_then(|h| h.disk_used_percent),
        Some(50.0),
        "{listed:?}"
    );

    let after = scrape(&central, &viewer);
    assert_eq!(value(&after, "cairn_devices", &[("status", "active")]), 2.0);
    assert_eq!(
        value(&after, "cairn_devices", &[("status", "pending")]),
        0.0
    );
    assert_eq!(value(&after, "cairn_devices_online", &[]), 2.0);
    assert_eq!(value(&after, "cairn_fleet_devices_online", &[]), 2.0);
    assert_eq!(value(&after, "cairn_sync_streams_opened_total", &[]), 2.0);
    // A new stream counts as a heartbeat, plus the three sent.
    assert_eq!(value(&after, "cairn_heartbeats_received_total", &[]), 5.0);
    assert_eq!(
        value(&after, "cairn_app_services", &[("state", "running")]),
        1.0
    );
    assert_eq!(
        value(&after, "cairn_app_services", &[("state", "exited")]),
        0.0,
        "cool's latest report has no apps"
    );
    assert_eq!(value(&after, "cairn_host_reporting_devices", &[]), 2.0);
    assert_eq!(value(&after, "cairn_host_disk_full_devices", &[]), 1.0);
    assert_eq!(value(&after, "cairn_host_memory_full_devices", &[]), 0.0);
    assert_eq!(
        value(&after, "cairn_host_temperature_max_celsius", &[]),
        71.5
    );
    assert_eq!(
        value(&after, "cairn_rollouts", &[("state", "running")]),
        0.0
    );
    assert_eq!(
        value(&after, "cairn_rollout_devices", &[("state", "succeeded")]),
        0.0
    );
    assert_eq!(value(&after, "cairn_deployments", &[]), 0.0);
    assert!(
        value(&after, "cairn_rest_requests_total", &[("class", "2xx")]) >= rest_2xx_before + 4.0
    );
    let count = value(&after, "cairn_rest_request_duration_seconds_count", &[]);
    assert_eq!(
        value(
            &after,
            "cairn_rest_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        count
    );
    assert!(
        value(&after, "cairn_events_stored", &[]) >= 2.0,
        "two enrollments at least"
    );
    // No per-device label anywhere.
    assert!(after.iter().all(|s| s
        .labels
        .keys()
        .all(|k| ["status", "state", "reason", "class", "le"].contains(&k.as_str()))));

    // Disconnecting shows at once.
    drop(hot);
    for _ in 0..100 {
        if value(&scrape(&central, &viewer), "cairn_devices_online", &[]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        value(&scrape(&central, &viewer), "cairn_devices_online", &[]),
        1.0
    );

    // Any API token may scrape; none may not.
    let (status, _, body) = scrape_raw(&central, None);
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = scrape_raw(&central, Some("not-a-token"));
    assert_eq!(status, 401);
    let after_4xx = value(
        &scrape(&central, &viewer),
        "cairn_rest_requests_total",
        &[("class", "4xx")],
    );
    assert!(after_4xx >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_log_records_central_and_agent_events_and_refuses_bad_ones() {
    let central = TestCentral::start().await;
    let mut device = Device::connect(&central, "SER-EVT-1").await;
    let id = device.id.clone();
    device.heartbeat(app(ServiceState::Running), None).await;
    device.heartbeat(app(ServiceState::Exited), None).await;
    device.heartbeat(app(ServiceState::Running), None).await;

    let enrolled =
        events_eventually(&central, &format!("device={id}&kind=device.enrolled"), 1).await;
    assert_eq!(enrolled[0].severity, Severity::Info);
    assert!(enrolled[0].message.contains("auto policy"), "{enrolled:?}");
    events_eventually(&central, &format!("device={id}&kind=device.connected"), 1).await;
    let changes = events_eventually(&central, &format!("device={id}&kind=app.state"), 2).await;
    let messages: Vec<(&str, &str)> = changes
        .iter()
        .map(|e| (e.severity.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        vec![
            ("error", "service web/nginx running -> exited"),
            ("info", "service web/nginx exited -> running")
        ]
    );

    // A clock two days behind: the page shows the offset, and one warning is recorded when it
    // crosses the limit (not one per heartbeat), one info when it is back in step.
    let host_now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    const DAY_MS: i64 = 86_400_000;
    for _ in 0..3 {
        device
            .heartbeat_sent_at(host_now_ms() - 2 * DAY_MS, vec![], Some(host(10, 40.0)))
            .await;
    }
    let page: DeviceDetail = central.get(&format!("/api/v1/devices/{id}"));
    let offset = page.device.host.unwrap().clock_offset_ms.unwrap();
    assert!((offset + 2 * DAY_MS).abs() < 10_000, "{offset}");
    device
        .heartbeat_sent_at(host_now_ms(), vec![], Some(host(10, 40.0)))
        .await;
    let clock = events_eventually(
        &central,
        &format!("device={id}&kind=device.clock_offset"),
        2,
    )
    .await;
    let clock: Vec<(&str, &str)> = clock
        .iter()
        .map(|e| (e.severity.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(clock.len(), 2, "{clock:?}");
    assert_eq!(clock[0].0, "warning");
    assert!(
        clock[0]
            .1
            .starts_with("device clock is 2 d 0 h behind central's"),
        "{clock:?}"
    );
    assert_eq!(clock[1].0, "info");
    assert!(
        clock[1].1.starts_with("device clock is back within 60 s"),
        "{clock:?}"
    );

    // Agent events: a valid one is stored, an unknown kind and a bad severity are refused.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let event = |kind: &str, severity: EventSeverity, message: &str| {
        agent_message::Kind::Event(Event {
            kind: kind.into(),
            severity: severity as i32,
            message: message.into(),
            at_unix_ms: now_ms,
        })
    };
    device
        .send(event(
            "data.unlock",
            EventSeverity::Warning,
            "data partition recovered",
        ))
        .await;
    device
        .send(event("device.approved", EventSeverity::Info, "forged"))
        .await;
    device
        .send(event(
            "data.unlock",
            EventSeverity::Unspecified,
            "no severity",
        ))
        .await;
    device.heartbeat(vec![], None).await;
    let unlock = events_eventually(&central, &format!("device={id}&kind=data.unlock"), 1).await;
    assert_eq!(unlock.len(), 1, "{unlock:?}");
    assert_eq!(
        (unlock[0].severity.as_str(), unlock[0].message.as_str()),
        ("warning", "data partition recovered")
    );
    assert!(central
        .get::<EventList>(&format!("/api/v1/events?device={id}&kind=device.approved"))
        .events
        .is_empty());
    let admin = central.admin.clone();
    let metrics = scrape(&central, &admin);
    assert_eq!(
        value(
            &metrics,
            "cairn_events_dropped_total",
            &[("reason", "invalid")]
        ),
        2.0
    );

    // A flood is cut by the per-stream rate limit (burst 100, 1/s) and counted; the stream lives.
    let flood_started = std::time::Instant::now();
    for i in 0..150 {
        device
            .send(event(
                "app.refused",
                EventSeverity::Error,
                &format!("flood {i}"),
            ))
            .await;
    }
    device.heartbeat(vec![], None).await;
    let mut accounted = (0, 0);
    for _ in 0..100 {
        let stored = events_eventually(
            &central,
            &format!("device={id}&kind=app.refused&limit=1000"),
            0,
        )
        .await
        .len();
        let dropped = value(
            &scrape(&central, &admin),
            "cairn_events_dropped_total",
            &[("reason", "rate_limited")],
        ) as usize;
        accounted = (stored, dropped);
        if stored + dropped == 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accounted.0 + accounted.1,
        150,
        "every flood event is stored or counted: {accounted:?}"
    );
    // Burst of 100 (3 tokens went to the events before, refilled at 1/s), plus 1 per second of flooding.
    let refilled = flood_started.elapsed().as_secs() as usize + 2;
    assert!(
        (97..=100 + refilled).contains(&accounted.0),
        "stored, rate-limited: {accounted:?}"
    );

    // The device page carries its newest events; revoking adds one.
    central.admin_call("POST", &format!("/api/v1/devices/{id}/revoke"), None);
    // Central ended the stream; the device, told it is revoked, hangs up.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = device.stream.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "central ends a revoked device's stream");
    drop(device);
    let page: DeviceDetail = central.get(&format!("/api/v1/devices/{id}"));
    assert_eq!(page.events.len(), 20);
    let revoked = page
        .events
        .iter()
        .find(|e| e.kind == "device.revoked")
        .unwrap_or_else(|| panic!("{page:?}"));
    assert_eq!(revoked.severity, Severity::Warning);
    assert!(
        revoked.message.contains("api:bootstrap-admin"),
        "{revoked:?}"
    );
    events_eventually(
        &central,
        &format!("device={id}&kind=device.disconnected"),
        1,
    )
    .await;

    // since: events at or after it, RFC 3339 or Unix ms; limit takes the newest.
    let all = events_eventually(&central, "limit=1000", 1).await;
    let last_ms = all.last().unwrap().at_ms;
    let since: EventList = central.get(&format!("/api/v1/events?since={last_ms}"));
    assert!(since.events.iter().all(|e| e.at_ms >= last_ms));
    let newest: EventList = central.get("/api/v1/events?limit=2");
    assert_eq!(newest.events[1].id, all.last().unwrap().id);

    // Every query parameter is checked; viewers may read.
    let viewer = central.api_token("watcher", "viewer");
    for (query, needle) in [
        ("kind=nope", "not an event kind"),
        ("since=yesterday", "RFC 3339"),
        ("limit=0", "`limit`"),
        ("limit=1001", "`limit`"),
        ("device=../x", "`device`"),
        ("devcie=dev_1", "unknown query parameter(s) devcie"),
    ] {
        let (status, body) = central.call(&viewer, "GET", &format!("/api/v1/events?{query}"), None);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(error_message(&body).contains(needle), "{query}: {body}");
    }
    let (status, _) = central.call(&viewer, "GET", "/api/v1/events?kind=device.enrolled", None);
    assert_eq!(status, 200);
}

/// Answer log requests on `device`'s stream as `answer` says, forever (until the stream ends).
fn answer_logs(
    mut device: Device,
    answer: fn(&LogRequest) -> LogReply,
) -> tokio::task::JoinHandle<Device> {
    tokio::spawn(async move {
        loop {
            let message = match tokio::time::timeout(
                Duration::from_secs(30),
                device.stream.message(),
            )
            .await
            {
                Ok(Ok(Some(m))) => m,
                _ => return device,
            };
            if let Some(central_message::Kind::Logs(request)) = message.kind {
                let reply = answer(&request);
                device.send(agent_message::Kind::Reply(reply)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_on_demand_go_through_the_device_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.log_request_timeout_seconds = 2;
    let central = TestCentral::start_with(dir, config).await;
    let operator = central.api_token("ops", "operator");
    let viewer = central.api_token("watcher", "viewer");

    let device = Device::connect(&central, "SER-LOG-1").await;
    let id = device.id.clone();
    let responder = answer_logs(device, |request| {
        let text = if request.app.is_empty() {
            format!("journal of the agent, {} lines\n", request.lines)
        } else if request.service == "db" {
            return LogReply {
                request_id: request.id.clone(),
                error: "no log for service \"db\"".into(),
                ..Default::default()
            };
        } else if request.service == "mute" {
            return LogReply {
                request_id: "log_someone_else".into(),
                text: "stolen".into(),
                ..Default::default()
            };
        } else {
            format!("{}/{}: line 1\nline 2\n", request.app, request.service)
        };
        LogReply {
            request_id: request.id.clone(),
            text,
            truncated: true,
            error: String::new(),
        }
    });

    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs?app=web&service=nginx&lines=2"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let logs: DeviceLogs = read("GET", "logs", body);
    assert_eq!(
        (logs.text.as_str(), logs.truncated, logs.lines),
        ("web/nginx: line 1\nline 2\n", true, 2)
    );
    assert!(logs.request_id.starts_with("log_"));
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let logs: DeviceLogs = read("GET", "logs", body);
    assert_eq!(logs.text, "journal of the agent, 100 lines\n");
    assert!(logs.app.is_none());

    // The device's error is a 502 with its message; a reply to another request is ignored (504).
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs?app=web&service=db"),
        None,
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        error_message(&body).contains("could not read the log: no log for service \"db\""),
        "{body}"
    );
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{id}/logs?app=web&service=mute"),
        None,
    );
    assert_eq!(status, 504, "{body}");
    assert!(
        error_message(&body).contains("did not send the log within 2 s"),
        "{body}"
    );

    // Validation, roles.
    for (query, needle) in [
        ("app=web", "both `app` and `service`"),
        ("app=Web&service=x", "`app` \"Web\""),
        ("app=web&service=a..b", "`service`"),
        ("lines=0", "`lines` must be 1 to 10000"),
        ("lines=10001", "`lines` must be 1 to 10000"),
        ("lines=many", "`lines`"),
        ("n=5", "unknown query parameter(s) n"),
    ] {
        let (status, body) = central.call(
            &operator,
            "GET",
            &format!("/api/v1/devices/{id}/logs?{query}"),
            None,
        );
        assert_eq!(status, 400, "{query}: {body}");
        assert!(error_message(&body).contains(needle), "{query}: {body}");
    }
    let (status, body) = central.call(&viewer, "GET", &format!("/api/v1/devices/{id}/logs"), None);
    assert_eq!(status, 403, "{body}");
    let (status, _) = central.call(&operator, "GET", "/api/v1/devices/dev_nope/logs", None);
    assert_eq!(status, 404);

    // Every request is audited, with who asked for what.
    let audit: AuditLog = central.get("/api/v1/audit?limit=50");
    let reads: Vec<&cairn_api::AuditEvent> = audit
        .events
        .iter()
        .filter(|e| e.action == "device.logs")
        .collect();
    assert_eq!(reads.len(), 4, "{audit:?}");
    assert!(reads.iter().any(|e| e.actor == "api:ops"
        && e.target == id
        && e.detail.starts_with("app=web service=nginx lines=2")));

    // A device never seen is offline: 409 at once.
    let (_, token) = central.token("auto", None, None);
    let silent = cairn_testsupport::central::SimDevice::new("SER-LOG-SILENT");
    let silent_id = silent.enroll(&central, &token).await.unwrap().device_id;
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{silent_id}/logs"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("is offline"), "{body}");

    // A device whose stream just ended is offline too (its own replica saw it go; with
    // replicas, another one would count it online only while it heartbeats there): 409, not a
    // wait for the timeout. Delivery across replicas is tested in tests/replicas.rs.
    responder.abort();
    let ConnectedDevice {
        id: away_id,
        tx,
        stream,
        ..
    } = central.connect_device("SER-LOG-2").await;
    let mut away = Device {
        id: away_id.clone(),
        tx,
        stream,
        seq: 0,
    };
    away.heartbeat(vec![], None).await;
    drop(away);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while central
        .get::<DeviceDetail>(&format!("/api/v1/devices/{away_id}"))
        .device
        .device
        .online
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "central never saw the stream end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its heartbeat times reach the registry (presence flush, 50 ms here) and are read back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = central.call(
        &operator,
        "GET",
        &format!("/api/v1/devices/{away_id}/logs?app=web&service=nginx&lines=3"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("is offline"), "{body}");
}
