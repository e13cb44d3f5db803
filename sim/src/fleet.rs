//! A fleet of simulated devices sharing one runtime, and what it measures: connection, heartbeat
//! round trips, and how long a desired-state change takes to reach every device.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::connect;
use crate::device::{self, DeviceSlot, FleetShared, MARKER_KEY};
use crate::identity::DeviceIdentity;
use crate::rest::{Operator, RestError};

/// How a fleet behaves.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Mean time between heartbeats of one device (each tick is jittered ±10%).
    pub heartbeat_interval: Duration,
    /// TLS handshakes in flight at once while connecting.
    pub connect_concurrency: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            connect_concurrency: 256,
        }
    }
}

/// Why a fleet step failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Not every device reached a state in time.
    #[error("{what}: {done} of {total} devices after {waited:?}; last device error: {last_error}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Devices that got there.
        done: usize,
        /// Fleet size.
        total: usize,
        /// How long it waited.
        waited: Duration,
        /// The latest error a device saw.
        last_error: String,
    },
    /// An operator call of a fan-out (config, sites, deployment) failed.
    #[error("an operator call of the fan-out failed: {0}")]
    Rest(#[from] RestError),
    /// Central could not be restarted (the reconnection measurement).
    #[error("restarting central failed: {0}")]
    Central(#[from] crate::central_process::CentralError),
}

/// Heartbeat round-trip statistics, µs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Round trips measured.
    pub count: usize,
    /// Median, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// Largest, µs.
    pub max_us: u32,
}

impl Latency {
    /// Summarise round trips (µs, any order): the sample at rank `len * q` of the sorted
    /// samples for quantile `q`.
    pub fn from_samples(mut all: Vec<u32>) -> Self {
        all.sort_unstable();
        let at = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Latency {
            count: all.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: all.last().copied().unwrap_or(0),
        }
    }
}

/// Microseconds on the machine-wide monotonic clock (`CLOCK_MONOTONIC`): comparable between
/// processes of one machine (unlike `Instant`, which cannot be sent to another process), and
/// unaffected by wall-clock steps.
pub fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}

/// What one fan-out took.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FanOut {
    /// First REST call to the last REST answer.
    pub calls_s: f64,
    /// First REST call to the last device receiving the change.
    pub all_received_s: f64,
}

/// Set config `{MARKER_KEY: marker}` on each device of `ids` through REST, `concurrency` calls
/// in flight (central has no fleet-wide config call); all calls are made, then the first
/// failure, if any, is returned.
pub async fn set_marker_all<'a>(
    operator: &Operator,
    ids: impl Iterator<Item = &'a str>,
    marker: u64,
    concurrency: usize,
) -> Result<(), RestError> {
    let value = json!({ MARKER_KEY: marker.to_string() });
    run_all(
        concurrency,
        ids.map(|id| operator.set_config(id, value.clone())),
    )
    .await
}

/// Run REST `calls`, `concurrency` in flight; all are made, then the first failure, if any, is
/// returned.
pub async fn run_all<F: std::future::Future<Output = Result<(), RestError>>>(
    concurrency: usize,
    calls: impl Iterator<Item = F>,
) -> Result<(), RestError> {
    let results: Vec<Result<(), RestError>> = futures::stream::iter(calls)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Running simulated devices.
pub struct Fleet {
    ids: Vec<String>,
    slots: Vec<Arc<DeviceSlot>>,
    shared: Arc<FleetShared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Start one task per identity; each connects (bounded concurrency) and syncs until stopped.
    pub fn start(
        grpc: SocketAddr,
        ca_pem: &str,
        identities: Vec<DeviceIdentity>,
        options: &FleetOptions,
    ) -> Self {
        Self::start_assigned(&[grpc], 0, ca_pem, identities, options)
    }

    /// Start devices `first_index..` of a larger fleet spread over several central replicas:
    /// the `k`-th identity is device `first_index + k`, connects to
    /// `replicas[(first_index + k) % replicas.len()]` (round robin, as DNS or a TCP load
    /// balancer would spread them) and from that index's loopback source address
    /// ([`connect::source_ip`]), so fleets in several processes never share one.
    ///
    /// # Panics
    /// When `replicas` is empty.
    pub fn start_assigned(
        replicas: &[SocketAddr],
        first_index: usize,
        ca_pem: &str,
        identities: Vec<DeviceIdentity>,
        options: &FleetOptions,
    ) -> Self {
        assert!(
            !replicas.is_empty(),
            "a fleet needs at least one central address"
        );
        let epoch = Instant::now();
        let shared = Arc::new(FleetShared {
            ca_pem: ca_pem.to_owned(),
            heartbeat_interval: options.heartbeat_interval,
            connecting: Semaphore::new(options.connect_concurrency.max(1)),
            epoch,
            epoch_mono_us: monotonic_us().saturating_sub(epoch.elapsed().as_micros() as u64),
            recording: AtomicBool::new(false),
            latencies_us: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
        });
        let mut ids = Vec::with_capacity(identities.len());
        let mut slots = Vec::with_capacity(identities.len());
        let mut tasks = Vec::with_capacity(identities.len());
        for (k, identity) in identities.into_iter().enumerate() {
            let index = first_index + k;
            let slot = Arc::new(DeviceSlot::default());
            ids.push(identity.device_id.clone());
            slots.push(slot.clone());
            tasks.push(tokio::spawn(device::run(
                identity,
                replicas[index % replicas.len()],
                connect::source_ip(index),
                shared.clone(),
                slot,
            )));
        }
        Self {
            ids,
            slots,
            shared,
            tasks,
        }
    }

    /// The devices' ids, in fleet order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the fleet has no devices.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The latest error a device saw ("none" when none did).
    pub fn last_error(&self) -> String {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "none".into())
    }

    async fn wait_until(
        &self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(usize, &DeviceSlot) -> bool,
    ) -> Result<Duration, FleetError> {
        let started = Instant::now();
        loop {
            let count = (self.slots.iter().enumerate())
                .filter(|(i, s)| done(*i, s))
                .count();
            if count == self.slots.len() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(FleetError::Timeout {
                    what,
                    done: count,
                    total: self.slots.len(),
                    waited: started.elapsed(),
                    last_error: self.last_error(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every device holds an open Sync stream with its first DesiredState.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<Duration, FleetError> {
        self.wait_until("devices connected", timeout, |_, s| {
            s.connected.load(Ordering::Relaxed)
        })
        .await
    }

    /// Wait until every device has at least `acks` heartbeats acknowledged.
    pub async fn wait_acked(&self, acks: u64, timeout: Duration) -> Result<Duration, FleetError> {
        self.wait_until("devices with acknowledged heartbeats", timeout, |_, s| {
            s.acks.load(Ordering::Relaxed) >= acks
        })
        .await
    }

    /// Record heartbeat round trips for `window`, then summarise them.
    pub async fn measure_heartbeats(&self, window: Duration) -> Latency {
        Latency::from_samples(self.record_heartbeats(window).await)
    }

    /// Record heartbeat round trips for `window`; returns them, µs, in no particular order.
    pub async fn record_heartbeats(&self, window: Duration) -> Vec<u32> {
        self.shared
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(window).await;
        self.shared.recording.store(false, Ordering::Relaxed);
        std::mem::take(
            &mut *self
                .shared
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Wait until every device has received config marker `marker` (set by someone else, e.g.
    /// another process); returns when the last one received it, on the [`monotonic_us`] clock.
    pub async fn wait_marker(&self, marker: u64, timeout: Duration) -> Result<u64, FleetError> {
        self.wait_until("devices with the config change", timeout, |_, s| {
            s.marker.load(Ordering::Relaxed) == marker
        })
        .await?;
        let last_us = self
            .slots
            .iter()
            .map(|s| s.marker_at_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Ok(self.shared.epoch_mono_us + last_us)
    }

    /// How many streams each device has opened so far, for [`Fleet::wait_reopened`].
    pub fn sessions(&self) -> Vec<u64> {
        (self.slots.iter())
            .map(|s| s.sessions.load(Ordering::Relaxed))
            .collect()
    }

    /// Wait until every device has opened a stream since `before` ([`Fleet::sessions`]) and
    /// holds it; returns when the last one did, on the [`monotonic_us`] clock (to 20 ms).
    pub async fn wait_reopened(
        &self,
        before: &[u64],
        timeout: Duration,
    ) -> Result<u64, FleetError> {
        self.wait_until("devices connected again", timeout, |i, s| {
            s.connected.load(Ordering::Relaxed) && s.sessions.load(Ordering::Relaxed) > before[i]
        })
        .await?;
        Ok(monotonic_us())
    }

    /// Sync streams reopened since start, summed over the fleet.
    pub fn reconnects(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.reconnects.load(Ordering::Relaxed))
            .sum()
    }

    /// Stop every device (their connections close).
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
