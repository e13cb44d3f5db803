//! Central's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4), written by hand.
//!
//! Fleet-level series only: no label carries a device id, so a fleet of 100 000 devices is a few
//! dozen series. Registry counts come from one read transaction per scrape
//! ([`crate::store::fleet_counts`]); stream, heartbeat, app and host figures are this replica's
//! in-memory view (devices whose stream is open here).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::{now_unix, RolloutDeviceState, StoreError};
use crate::Shared;

/// Upper bounds (seconds) of the REST request duration histogram.
pub const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0];

/// A host report older than this is not counted in the fleet host aggregates.
pub const HOST_REPORT_MAX_AGE_SECONDS: i64 = 300;

/// A file system or memory fuller than this share counts as full.
pub const FULL_PERCENT: f64 = 90.0;

/// Counters of the REST listener.
#[derive(Debug, Default)]
pub struct RestMetrics {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RestMetrics {
    /// Count one answered request.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Write one metric family: HELP, TYPE and its samples (`labels` already formatted, e.g.
/// `status="active"`, or empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn one(value: impl Into<f64>) -> Vec<(String, f64)> {
    vec![(String::new(), value.into())]
}

fn by_label<'a>(
    label: &str,
    keys: impl IntoIterator<Item = &'a str>,
    counts: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, f64)> {
    keys.into_iter()
        .map(|k| {
            (
                format!("{label}=\"{k}\""),
                counts.get(k).copied().unwrap_or(0) as f64,
            )
        })
        .collect()
}

const SERVICE_STATES: [&str; 7] = [
    "pending",
    "running",
    "unhealthy",
    "restarting",
    "exited",
    "failed",
    "unknown",
];
const ROLLOUT_STATES: [&str; 6] = [
    "running",
    "paused",
    "halted",
    "aborted",
    "completed",
    "rolled_back",
];
const LOG_REQUEST_STATES: [&str; 4] = ["pending", "sent", "done", "failed"];
const ATTESTATION_STATES: [&str; 4] = ["verified", "failed", "stale", "pending"];

/// Render every metric.
pub async fn render(shared: &Shared) -> Result<String, StoreError> {
    let counts = shared.store.read(crate::store::fleet_counts::read).await?;
    let fresh_since =
        crate::attestation::fresh_since(now_unix(), shared.config.attestation_interval_secs);
    let attestation = shared
        .store
        .read(move |conn| crate::store::fleet_counts::attestation_by_state(conn, fresh_since))
        .await?;
    let mut out = String::with_capacity(8 * 1024);
    family(
        &mut out,
        "cairn_devices",
        "gauge",
        "Devices in the registry by status.",
        &by_label(
            "status",
            ["pending", "active", "revoked"],
            &counts.devices_by_status,
        ),
    );
    family(
        &mut out,
        "cairn_devices_attestation",
        "gauge",
        "Devices (revoked ones excluded) by attestation state; devices without a proven TPM are not counted.",
        &by_label("state", ATTESTATION_STATES, &attestation),
    );
    family(
        &mut out,
        "cairn_devices_online",
        "gauge",
        "Devices with a Sync stream open on this central replica.",
        &one(shared.sessions.online_count() as f64),
    );
    family(
        &mut out,
        "cairn_fleet_devices_online",
        "gauge",
        "Devices online on any replica (streams here, or heard from by another replica recently).",
        &one(shared.sessions.online_anywhere_count() as f64),
    );
    family(
        &mut out,
        "cairn_sync_streams_opened_total",
        "counter",
        "Sync streams opened on this replica since it started.",
        &one(shared.sessions.streams_opened() as f64),
    );
    family(
        &mut out,
        "cairn_heartbeats_received_total",
        "counter",
        "Heartbeats received by this replica since it started.",
        &one(shared.sessions.heartbeats_received() as f64),
    );
    family(
        &mut out,
        "cairn_events_stored",
        "gauge",
        "Events in the event log.",
        &one(counts.events as f64),
    );
    family(
        &mut out,
        "cairn_events_written_total",
        "counter",
        "Events written by this replica's batch writer since it started.",
        &one(shared.events.written.load(Ordering::Relaxed) as f64),
    );
    family(&mut out, "cairn_events_dropped_total", "counter", "Events not stored: buffer overflow or write failure, invalid agent events, agent events over the per-stream rate limit.",
        &[
            ("reason=\"overflow\"".into(), shared.events.dropped_overflow.load(Ordering::Relaxed) as f64),
            ("reason=\"invalid\"".into(), shared.events.rejected_invalid.load(Ordering::Relaxed) as f64),
            ("reason=\"rate_limited\"".into(), shared.events.rejected_rate.load(Ordering::Relaxed) as f64),
        ]);
    family(
        &mut out,
        "cairn_rollouts",
        "gauge",
        "OS update rollouts by state.",
        &by_label("state", ROLLOUT_STATES, &counts.rollouts_by_state),
    );
    family(
        &mut out,
        "cairn_rollout_devices",
        "gauge",
        "Devices of rollouts (all of them, finished included) by state.",
        &by_label(
            "state",
            RolloutDeviceState::KNOWN.iter().map(|s| s.as_str()),
            &counts.rollout_devices_by_state,
        ),
    );
    family(
        &mut out,
        "cairn_deployments",
        "gauge",
        "Deployments.",
        &one(counts.deployments as f64),
    );
    family(
        &mut out,
        "cairn_log_requests",
        "gauge",
        "Log requests kept (an hour) by state.",
        &by_label("state", LOG_REQUEST_STATES, &counts.log_requests_by_state),
    );

    // Apps and hosts: this replica's latest reports.
    let mut services = std::collections::BTreeMap::<String, u64>::new();
    let mut apps_failing = 0u64;
    for report in shared.sessions.apps_reports() {
        for app in &report.apps {
            if !app.error.is_empty() {
                apps_failing += 1;
            }
            for service in &app.services {
                *services
                    .entry(crate::api::service_state_name(service.state).to_owned())
                    .or_default() += 1;
            }
        }
    }
    family(
        &mut out,
        "cairn_app_services",
        "gauge",
        "App services by the state devices connected to this replica last reported.",
        &by_label("state", SERVICE_STATES, &services),
    );
    family(
        &mut out,
        "cairn_apps_failing",
        "gauge",
        "Apps a device reported it cannot run at all (connected to this replica).",
        &one(apps_failing as f64),
    );

    let now = now_unix();
    let (mut reporting, mut disk_full, mut memory_full, mut cpu_busy) = (0u64, 0u64, 0u64, 0u64);
    let mut hottest: Option<f64> = None;
    for report in shared.sessions.host_reports() {
        if now - report.at > HOST_REPORT_MAX_AGE_SECONDS {
            continue;
        }
        reporting += 1;
        let m = &report.metrics;
        if m.filesystems.iter().any(|fs| {
            fs.total_bytes > 0
                && fs.used_bytes as f64 * 100.0 / fs.total_bytes as f64 > FULL_PERCENT
        }) {
            disk_full += 1;
        }
        if m.memory_total_bytes > 0
            && (m.memory_total_bytes - m.memory_available_bytes.min(m.memory_total_bytes)) as f64
                * 100.0
                / m.memory_total_bytes as f64
                > FULL_PERCENT
        {
            memory_full += 1;
        }
        if m.cpu_percent.is_some_and(|p| p > FULL_PERCENT) {
            cpu_busy += 1;
        }
        for t in &m.temperatures {
            if t.celsius.is_finite() {
                hottest = Some(hottest.map_or(t.celsius, |h: f64| h.max(t.celsius)));
            }
        }
    }
    family(
        &mut out,
        "cairn_host_reporting_devices",
        "gauge",
        "Devices that reported host metrics to this replica in the last 5 minutes.",
        &one(reporting as f64),
    );
    family(
        &mut out,
        "cairn_host_disk_full_devices",
        "gauge",
        "Reporting devices with a watched file system over 90 % full.",
        &one(disk_full as f64),
    );
    family(
        &mut out,
        "cairn_host_memory_full_devices",
        "gauge",
        "Reporting devices with over 90 % of memory in use.",
        &one(memory_full as f64),
    );
    family(
        &mut out,
        "cairn_host_cpu_busy_devices",
        "gauge",
        "Reporting devices with CPUs over 90 % busy.",
        &one(cpu_busy as f64),
    );
    if let Some(hottest) = hottest {
        family(
            &mut out,
            "cairn_host_temperature_max_celsius",
            "gauge",
            "Hottest temperature sensor reading among reporting devices.",
            &one(hottest),
        );
    }

    let rest = &shared.rest_metrics;
    family(
        &mut out,
        "cairn_rest_requests_total",
        "counter",
        "REST requests answered by this replica, by status class.",
        &["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
            .map(|(i, class)| {
                (
                    format!("class=\"{class}\""),
                    rest.by_class[i].load(Ordering::Relaxed) as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "# HELP cairn_rest_request_duration_seconds Time to answer a REST request."
    );
    let _ = writeln!(out, "# TYPE cairn_rest_request_duration_seconds histogram");
    for (bucket, bound) in rest.buckets.iter().zip(DURATION_BUCKETS) {
        let _ = writeln!(
            out,
            "cairn_rest_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Ordering::Relaxed)
        );
    }
    let count = rest.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "cairn_rest_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "cairn_rest_request_duration_seconds_sum {}",
        rest.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "cairn_rest_request_duration_seconds_count {count}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = RestMetrics::default();
        m.observe(200, Duration::from_millis(3));
        m.observe(404, Duration::from_millis(30));
        m.observe(500, Duration::from_secs(20));
        assert_eq!(m.by_class[1].load(Ordering::Relaxed), 1);
        assert_eq!(m.by_class[3].load(Ordering::Relaxed), 1);
        assert_eq!(m.by_class[4].load(Ordering::Relaxed), 1);
        assert_eq!(m.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(m.buckets[3].load(Ordering::Relaxed), 2);
        assert_eq!(m.buckets[9].load(Ordering::Relaxed), 2);
        assert_eq!(m.count.load(Ordering::Relaxed), 3);
    }
}
