//! One simulated device: a task holding one mutual-TLS Sync stream, sending heartbeats at a
//! jittered interval and noting what central sends. Its state is a few atomics in a shared slot,
//! so a fleet costs one task, one channel and one connection per device.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::v1::agent_client::AgentClient;
use cairn_proto::v1::{
    agent_message, central_message, AgentMessage, HardwareFacts, Heartbeat, OsStatus, OsUpdatePhase,
};
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};

use crate::connect::{self, ConnectError};
use crate::identity::DeviceIdentity;

/// Config key the fan-out measurement sets; devices note when its value arrives. The
/// deployment measurement carries it in a comment line of the app's compose file instead
/// (`# cairn-sim-marker: N`, see [`deployment_compose`]).
pub const MARKER_KEY: &str = "cairn-sim-marker";

/// The compose file of the benchmark's deployment, carrying `marker`.
pub fn deployment_compose(marker: u64) -> String {
    format!("# {MARKER_KEY}: {marker}\nservices:\n  app:\n    image: registry.local/cairn/box:1\n    command: [\"sleep\", \"3600\"]\n")
}

/// The newest marker a desired state carries, in its config or in any app's compose file
/// (markers are Unix milliseconds, so the latest change has the largest).
fn newest_marker(desired: &cairn_proto::v1::DesiredState) -> Option<u64> {
    let in_config = desired
        .config
        .get(MARKER_KEY)
        .and_then(|v| v.parse::<u64>().ok());
    let prefix = format!("# {MARKER_KEY}: ");
    let in_apps = desired.apps.iter().filter_map(|app| {
        app.compose_yaml
            .lines()
            .next()?
            .strip_prefix(prefix.as_str())?
            .trim()
            .parse::<u64>()
            .ok()
    });
    in_config.into_iter().chain(in_apps).max()
}

/// What one device has seen, readable from outside its task.
#[derive(Default)]
pub struct DeviceSlot {
    /// Sync stream open and first DesiredState received.
    pub connected: AtomicBool,
    /// Latest DesiredState revision received.
    pub revision: AtomicU64,
    /// Newest [`MARKER_KEY`] value received, in config or an app (0: none).
    pub marker: AtomicU64,
    /// When it arrived, µs since the fleet's epoch.
    pub marker_at_us: AtomicU64,
    /// Newest secret version fetched with GetSecrets (0: none).
    pub secret_version: AtomicU64,
    /// Heartbeats acknowledged.
    pub acks: AtomicU64,
    /// Streams that ended and were reopened.
    pub reconnects: AtomicU64,
    /// Streams opened (each counted at its first DesiredState), for timing reconnections.
    pub sessions: AtomicU64,
}

/// State shared by every device of a fleet.
pub struct FleetShared {
    /// Fleet CA, PEM.
    pub ca_pem: String,
    /// Mean time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Bounds TLS handshakes in flight (central drops those not done in 10 s).
    pub connecting: Semaphore,
    /// Time zero for `marker_at_us`.
    pub epoch: Instant,
    /// The same instant on the machine-wide monotonic clock, µs (see
    /// [`crate::fleet::monotonic_us`]), so other processes can compare reception times.
    pub epoch_mono_us: u64,
    /// While set, round-trip times (µs) are appended to `latencies_us`.
    pub recording: AtomicBool,
    /// Heartbeat round trips recorded.
    pub latencies_us: Mutex<Vec<u32>>,
    /// Last connection error seen (for the report).
    pub last_error: Mutex<Option<String>>,
}

impl FleetShared {
    fn note_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// Why a device's Sync session ended (it reconnects with back-off).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The fleet's connect limiter was closed.
    #[error(transparent)]
    Limiter(#[from] tokio::sync::AcquireError),
    /// The TLS channel could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The Sync call got no answer in time.
    #[error("Sync call took over 30 s")]
    SyncTimeout,
    /// Central refused the Sync call.
    #[error("Sync refused: {0}")]
    Refused(Box<tonic::Status>),
    /// The task feeding the outbound stream is gone.
    #[error("outbound stream closed")]
    OutboundClosed,
    /// The inbound stream failed.
    #[error("stream ended: {0}")]
    StreamEnded(Box<tonic::Status>),
    /// Central ended the inbound stream.
    #[error("central closed the stream")]
    CentralClosed,
}

/// The OS status of a simulated device: running "sim" from slot a, nothing to update.
fn os_status() -> OsStatus {
    OsStatus {
        version: "sim".into(),
        booted_slot: "a".into(),
        phase: OsUpdatePhase::Idle as i32,
        ..OsStatus::default()
    }
}

/// First and largest reconnect back-off ceilings: the agent's defaults
/// (`backoff_initial_ms`, `backoff_max_ms`).
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Run one device until its task is aborted: connect to central (or the replica) at `grpc`,
/// sync, reconnect as the agent does: full jitter (a uniform wait up to a ceiling that doubles
/// per failure) and never sooner than a retry-after central sent.
pub async fn run(
    identity: DeviceIdentity,
    grpc: SocketAddr,
    source_ip: IpAddr,
    shared: Arc<FleetShared>,
    slot: Arc<DeviceSlot>,
) {
    let mut ceiling = BACKOFF_INITIAL;
    let mut seq = 0u64;
    loop {
        let opened = slot.sessions.load(Ordering::Relaxed);
        let ended = session(&identity, grpc, source_ip, &shared, &slot, &mut seq).await;
        if slot.sessions.load(Ordering::Relaxed) != opened {
            ceiling = BACKOFF_INITIAL; // it was connected: start over
        }
        let retry_after = match &ended {
            Err(SessionError::Refused(status) | SessionError::StreamEnded(status)) => {
                cairn_proto::retry_after(status)
            }
            _ => None,
        };
        if let Err(e) = ended {
            tracing::debug!(device_id = %identity.device_id, error = %e, "sync session ended");
            shared.note_error(format!("{}: {e}", identity.device_id));
        }
        slot.connected.store(false, Ordering::Relaxed);
        slot.reconnects.fetch_add(1, Ordering::Relaxed);
        let jittered =
            Duration::from_millis(rand::thread_rng().gen_range(10..=ceiling.as_millis() as u64));
        tokio::time::sleep(jittered.max(retry_after.unwrap_or_default())).await;
        ceiling = (ceiling * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    identity: &DeviceIdentity,
    grpc: SocketAddr,
    source_ip: IpAddr,
    shared: &FleetShared,
    slot: &DeviceSlot,
    seq: &mut u64,
) -> Result<(), SessionError> {
    let (tx, rx) = mpsc::channel(2);
    let (mut inbound, mut client) = {
        let _permit = shared.connecting.acquire().await?;
        let channel = connect::channel(
            grpc,
            source_ip,
            &shared.ca_pem,
            Some(identity.tls_identity()),
        )
        .await?;
        let mut client = AgentClient::new(channel);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let inbound = tokio::time::timeout(Duration::from_secs(30), client.sync(outbound))
            .await
            .map_err(|_| SessionError::SyncTimeout)?
            .map_err(|s| SessionError::Refused(Box::new(s)))?
            .into_inner();
        (inbound, client)
    };
    // First heartbeat at a random point of the interval, so a fleet does not beat in step.
    let interval = shared.heartbeat_interval;
    let mut next =
        tokio::time::Instant::now() + interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    let mut pending: Option<(u64, Instant)> = None;
    // What a real agent sends in every heartbeat (its facts and an idle OS status), so central
    // runs the same per-heartbeat path.
    let facts = HardwareFacts {
        serial: identity.device_id.clone(),
        tpm_ek_sha256: String::new(),
        hostname: format!("sim-{}", identity.device_id),
        agent_version: "cairn-sim".into(),
        os_version: "sim".into(),
        key_storage: "software".into(),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                *seq += 1;
                let heartbeat = Heartbeat {
                    seq: *seq,
                    desired_revision: slot.revision.load(Ordering::Relaxed),
                    sent_unix_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                    facts: Some(facts.clone()),
                    apps: Vec::new(),
                    os: Some(os_status()),
                    // What a real agent sends (root and /data, one sensor), so central's memory
                    // per device is measured with host metrics kept.
                    host: Some(cairn_proto::v1::HostMetrics {
                        cpu_percent: Some(5.0),
                        load1: 0.1,
                        memory_total_bytes: 2 << 30,
                        memory_available_bytes: 1 << 30,
                        filesystems: vec![
                            cairn_proto::v1::FilesystemUsage { mount_point: "/".into(), used_bytes: 1 << 30, total_bytes: 4 << 30 },
                            cairn_proto::v1::FilesystemUsage { mount_point: "/data".into(), used_bytes: 1 << 30, total_bytes: 16 << 30 },
                        ],
                        temperatures: vec![cairn_proto::v1::TemperatureReading { sensor: "thermal_zone0 x86_pkg_temp".into(), celsius: 45.0 }],
                        uptime_seconds: 3600,
                    }),
                };
                pending = Some((*seq, Instant::now()));
                if tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(heartbeat)) }).await.is_err() {
                    return Err(SessionError::OutboundClosed);
                }
                next += interval.mul_f64(rand::thread_rng().gen_range(0.9..1.1));
            }
            message = inbound.message() => {
                let message = message
                    .map_err(|s| SessionError::StreamEnded(Box::new(s)))?
                    .ok_or(SessionError::CentralClosed)?;
                match message.kind {
                    Some(central_message::Kind::Ack(ack)) => {
                        slot.acks.fetch_add(1, Ordering::Relaxed);
                        if let Some((sent_seq, at)) = pending {
                            if sent_seq == ack.seq {
                                pending = None;
                                if shared.recording.load(Ordering::Relaxed) {
                                    let us = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                                    shared.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).push(us);
                                }
                            }
                        }
                    }
                    Some(central_message::Kind::Desired(desired)) => {
                        slot.revision.store(desired.revision, Ordering::Relaxed);
                        if let Some(marker) = newest_marker(&desired) {
                            if slot.marker.swap(marker, Ordering::Relaxed) != marker {
                                slot.marker_at_us.store(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                            }
                        }
                        fetch_secrets(&mut client, &desired, shared, slot).await;
                        if !slot.connected.swap(true, Ordering::Relaxed) {
                            slot.sessions.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(central_message::Kind::Logs(request)) => {
                        // A simulated device keeps no logs; say so, as an agent without the
                        // service's log would.
                        let reply = cairn_proto::v1::LogReply {
                            request_id: request.id,
                            error: "a simulated device keeps no logs".into(),
                            ..Default::default()
                        };
                        if tx.send(AgentMessage { kind: Some(agent_message::Kind::Reply(reply)) }).await.is_err() {
                            return Err(SessionError::OutboundClosed);
                        }
                    }
                    Some(central_message::Kind::Attest(request)) => {
                        // Simulated devices enroll with software keys, so central never asks;
                        // answer as an agent without a TPM would.
                        let report = cairn_proto::v1::AttestationReport {
                            nonce: request.nonce,
                            error: "a simulated device has no TPM".into(),
                            ..Default::default()
                        };
                        if tx.send(AgentMessage { kind: Some(agent_message::Kind::Attestation(report)) }).await.is_err() {
                            return Err(SessionError::OutboundClosed);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Fetch the secrets a desired state names at a newer version than this device fetched last, as
/// an agent does; a value that is a marker counts as its arrival (the benchmark's secret
/// rotation). A refusal is noted like a session error.
async fn fetch_secrets(
    client: &mut AgentClient<tonic::transport::Channel>,
    desired: &cairn_proto::v1::DesiredState,
    shared: &FleetShared,
    slot: &DeviceSlot,
) {
    let newest = desired
        .apps
        .iter()
        .flat_map(|a| a.secrets.iter().map(|s| s.version))
        .max()
        .unwrap_or(0);
    if newest <= slot.secret_version.load(Ordering::Relaxed) {
        return;
    }
    for app in desired.apps.iter().filter(|a| !a.secrets.is_empty()) {
        let request = cairn_proto::v1::GetSecretsRequest {
            app: app.name.clone(),
            names: app.secrets.iter().map(|s| s.name.clone()).collect(),
        };
        let answer = match tokio::time::timeout(
            Duration::from_secs(30),
            client.get_secrets(request),
        )
        .await
        {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                shared.note_error(format!("GetSecrets refused: {}", status.message()));
                return;
            }
            Err(_) => {
                shared.note_error("GetSecrets timed out".to_owned());
                return;
            }
        };
        for value in answer.secrets {
            let marker = std::str::from_utf8(&value.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(marker) = marker {
                if slot.marker.fetch_max(marker, Ordering::Relaxed) < marker {
                    slot.marker_at_us
                        .store(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            }
        }
    }
    slot.secret_version.fetch_max(newest, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::v1::{App, DesiredState};

    #[test]
    fn the_newest_marker_of_config_and_apps_counts() {
        let mut desired = DesiredState::default();
        assert_eq!(newest_marker(&desired), None);
        desired.config.insert(MARKER_KEY.into(), "5".into());
        assert_eq!(newest_marker(&desired), Some(5));
        desired.apps.push(App {
            name: "bench".into(),
            compose_yaml: deployment_compose(9),
            generation: 1,
            secrets: Vec::new(),
            variables: Default::default(),
        });
        desired.apps.push(App {
            name: "other".into(),
            compose_yaml: "services: {}\n# cairn-sim-marker: 99".into(),
            generation: 1,
            secrets: Vec::new(),
            variables: Default::default(),
        });
        assert_eq!(
            newest_marker(&desired),
            Some(9),
            "only a first-line marker counts"
        );
        desired.config.insert(MARKER_KEY.into(), "12".into());
        assert_eq!(newest_marker(&desired), Some(12));
    }
}
