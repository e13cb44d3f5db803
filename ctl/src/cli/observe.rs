//! Watching the fleet: `cairnctl device top` (host metrics of every device), the host metrics
//! and events in `cairnctl device show`, `cairnctl events` (the event log, optionally followed)
//! and `cairnctl logs` (the last lines of a device's service log or agent journal).

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::{checked, emit, emit_table, CliError};
use crate::client::Client;
use crate::input;
use cairn_api::{DeviceDetail, DeviceWithHost, Event, EventsQuery, HostMetrics, LogsQuery};

use crate::output::{key_values, or_none, printable, time_or_none, Table, NONE};

/// How often `cairnctl events --follow` asks for new events.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Most lines `cairnctl logs -n` may ask for (central's limit).
pub const MAX_LOG_LINES: u32 = 10_000;

/// `cairnctl events ...`
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this device's events.
    #[arg(long, value_name = "DEVICE", value_parser = checked(input::parse_id))]
    pub device: Option<String>,
    /// Only this kind, e.g. app.state, device.connected, data.unlock.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events since then: a duration back from now (30m, 2h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", value_parser = input::parse_since)]
    pub since: Option<String>,
    /// How many of the newest matching events to show (1 to 1000; central's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Keep printing new events as they are recorded (until interrupted).
    #[arg(long, conflicts_with = "json")]
    pub follow: bool,
}

/// `cairnctl logs ...`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["app", "agent"])))]
pub struct LogsArgs {
    /// Device id (dev_...).
    #[arg(value_parser = checked(input::parse_id))]
    pub device: String,
    /// App whose service log to read (with --service).
    #[arg(long, value_name = "APP", requires = "service", value_parser = checked(input::parse_app_name))]
    pub app: Option<String>,
    /// Service of the app.
    #[arg(long, value_name = "SERVICE", requires = "app", value_parser = checked(input::parse_app_name))]
    pub service: Option<String>,
    /// Read the agent's own journal (journalctl -u cairn-agent) instead of an app's log.
    #[arg(long, conflicts_with_all = ["app", "service"])]
    pub agent: bool,
    /// How many of the last lines to show.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_LOG_LINES as i64))]
    pub lines: u32,
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| NONE.to_owned(), |v| format!("{v:.1}"))
}

fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Host metrics as `key: value` lines (after a device's own fields in `device show`).
pub fn host_details(host: Option<&HostMetrics>) -> String {
    let Some(h) = host else {
        return "host: no metrics reported to this central yet\n".to_owned();
    };
    let mut pairs = vec![
        ("host.reported_at", h.reported_at.to_string()),
        ("host.cpu_percent", percent(h.cpu_percent)),
        ("host.load1", format!("{:.2}", h.load1)),
        (
            "host.memory",
            format!(
                "{} of {} used ({}%)",
                bytes(
                    h.memory_total_bytes
                        .saturating_sub(h.memory_available_bytes)
                ),
                bytes(h.memory_total_bytes),
                percent(h.memory_used_percent)
            ),
        ),
    ];
    let filesystems: Vec<(String, String)> = h
        .filesystems
        .iter()
        .map(|fs| {
            (
                format!("host.disk {}", printable(&fs.mount_point)),
                format!(
                    "{} of {} used ({}%)",
                    bytes(fs.used_bytes),
                    bytes(fs.total_bytes),
                    percent(fs.used_percent)
                ),
            )
        })
        .collect();
    let temperatures: Vec<(String, String)> = h
        .temperatures
        .iter()
        .map(|t| {
            (
                format!("host.temp {}", printable(&t.sensor)),
                format!("{:.1} °C", t.celsius),
            )
        })
        .collect();
    let uptime = format!("{}", h.uptime_seconds);
    let mut text = String::new();
    pairs.push(("host.uptime_seconds", uptime));
    if let Some(offset) = h.clock_offset_ms {
        pairs.push(("host.clock_offset_ms", offset.to_string()));
    }
    text.push_str(&key_values(&pairs));
    let extra: Vec<(&str, String)> = filesystems
        .iter()
        .chain(temperatures.iter())
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if !extra.is_empty() {
        text.push_str(&key_values(&extra));
    }
    text
}

/// Table of events.
pub fn event_table(events: &[Event]) -> Table {
    let mut table = Table::new(&["TIME", "SEVERITY", "DEVICE", "KIND", "MESSAGE"]);
    for event in events {
        table.push_row([
            event.at.to_string(),
            printable(event.severity.as_str()),
            printable(or_none(event.device_id.as_deref())),
            printable(&event.kind),
            printable(&event.message),
        ]);
    }
    table
}

/// Table of devices with their host metrics.
pub fn top_table(devices: &[DeviceWithHost]) -> Table {
    let mut table = Table::new(&[
        "DEVICE",
        "HOSTNAME",
        "ONLINE",
        "CPU%",
        "MEM%",
        "DISK%",
        "TEMP°C",
        "LOAD1",
        "LAST-SEEN",
    ]);
    for listed in devices {
        let host = listed.host.as_ref();
        let device = &listed.device;
        table.push_row([
            printable(&device.id),
            printable(if device.hostname.is_empty() {
                NONE
            } else {
                &device.hostname
            }),
            (if device.online { "yes" } else { "no" }).to_owned(),
            percent(host.and_then(|h| h.cpu_percent)),
            percent(host.and_then(|h| h.memory_used_percent)),
            percent(host.and_then(|h| h.disk_used_percent)),
            host.and_then(|h| h.max_temperature_celsius)
                .map_or_else(|| NONE.to_owned(), |t| format!("{t:.1}")),
            host.map_or_else(|| NONE.to_owned(), |h| format!("{:.2}", h.load1)),
            time_or_none(device.last_seen_at.as_ref()),
        ]);
    }
    table
}

/// `cairnctl device top`: every device with its latest host metrics, busiest CPU first.
pub fn run_top(client: &Client, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let mut reply = client.list_devices()?;
    reply.value.devices.sort_by(|a, b| {
        let cpu = |d: &DeviceWithHost| d.host.as_ref().and_then(|h| h.cpu_percent).unwrap_or(-1.0);
        cpu(b)
            .total_cmp(&cpu(a))
            .then_with(|| a.device.id.cmp(&b.device.id))
    });
    emit_table(out, json, &reply, "no devices", |list| {
        top_table(&list.devices)
    })
}

/// The host and events part of `cairnctl device show`.
pub fn device_show_extra(observed: &DeviceDetail) -> String {
    let mut text = host_details(observed.device.host.as_ref());
    if observed.events.is_empty() {
        text.push_str("events: none recorded\n");
    } else {
        text.push_str("\nrecent events:\n");
        text.push_str(&event_table(&observed.events).to_string());
    }
    text
}

fn event_query(args: &EventsArgs, since: Option<&str>) -> EventsQuery {
    EventsQuery {
        device: args.device.clone(),
        kind: args.kind.clone(),
        since: since.or(args.since.as_deref()).map(str::to_owned),
        limit: args.limit,
    }
}

/// `cairnctl events`: the newest matching events, oldest first; with `--follow`, then every new
/// one as it is recorded.
pub fn run_events(
    client: &Client,
    args: EventsArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let reply = client.list_events(&event_query(&args, None))?;
    if !args.follow {
        return emit_table(out, json, &reply, "no events", |list| {
            event_table(&list.events)
        });
    }
    let mut table = event_table(&reply.value.events).to_string();
    if reply.value.events.is_empty() {
        table = event_table(&[]).to_string();
    }
    out.write_all(table.as_bytes())?;
    out.flush()?;
    // Ask again from the newest event seen (inclusive), skipping the ids already printed at
    // that millisecond.
    let mut last_ms = reply
        .value
        .events
        .last()
        .map_or_else(input::now_unix_ms, |e| e.at_ms);
    let mut seen_at_last: HashSet<String> = reply
        .value
        .events
        .iter()
        .filter(|e| e.at_ms == last_ms)
        .map(|e| e.id.clone())
        .collect();
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let since = last_ms.to_string();
        let reply = client.list_events(&event_query(&args, Some(&since)))?;
        let fresh: Vec<Event> = reply
            .value
            .events
            .into_iter()
            .filter(|e| !seen_at_last.contains(&e.id))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        for event in &fresh {
            if event.at_ms > last_ms {
                last_ms = event.at_ms;
                seen_at_last.clear();
            }
            if event.at_ms == last_ms {
                seen_at_last.insert(event.id.clone());
            }
        }
        // Rows only: the header was printed once.
        let rows = event_table(&fresh).to_string();
        let body = rows.split_once('\n').map_or("", |(_, rest)| rest);
        out.write_all(body.as_bytes())?;
        out.flush()?;
    }
}

/// `cairnctl logs`: the last lines of a service's log or of the agent's journal, printed as they
/// are (control characters other than tabs escaped, so a log cannot drive the terminal).
pub fn run_logs(
    client: &Client,
    args: LogsArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let query = LogsQuery {
        app: args.app.clone(),
        service: args.service.clone(),
        lines: Some(args.lines),
    };
    let reply = client.device_logs(&args.device, &query)?;
    if reply.value.truncated && !json {
        eprintln!("cairnctl: older lines were cut to fit the reply size limit (240 KiB); ask for fewer with -n");
    }
    emit(out, json, &reply, |logs| {
        logs.text
            .lines()
            .map(|line| {
                let cleaned: String = line
                    .split('\t')
                    .map(printable)
                    .collect::<Vec<_>>()
                    .join("\t");
                cleaned + "\n"
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_table_shows_dashes_without_metrics() {
        let device: cairn_api::Device = serde_json::from_value(serde_json::json!({
            "id": "dev_1", "status": "active", "serial": "", "tpm_ek_sha256": "",
            "hostname": "", "key_storage": "software", "agent_version": "", "os_version": "",
            "token_id": "tok_1", "created_at": "2025-01-01T00:00:00Z", "approved_at": null,
            "last_seen_at": null, "online": false, "cert_serial": null,
            "cert_expires_at": null, "desired_revision": 0, "config": {},
            "desired_os": null, "site": null, "labels": {}
        }))
        .unwrap();
        let text = top_table(&[DeviceWithHost {
            device,
            host: None,
            attestation: Default::default(),
        }])
        .to_string();
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("dev_1") && row.split_whitespace().filter(|c| *c == "-").count() == 7,
            "{text}"
        );
    }
}
