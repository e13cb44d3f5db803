//! Sites and placement (DESIGN.md section 7): deployments are an app plus a placement; the
//! scheduler picks, per selected site, which devices run it and writes the result as
//! deployment-owned per-device apps, pushed on the devices' Sync streams.
//!
//! - [`geo`]: points, haversine distance, region polygons (pure, unit-tested).
//! - [`spec`]: the placement operators write, labels and names (pure, unit-tested).
//! - [`scheduler`]: the planner (pure) and the pass that applies it to the registry.
//!
//! The scheduler runs after every change that can move a placement (deployments, sites,
//! regions, device site or labels, revocation, a device connecting or disconnecting) and every
//! [`Scheduler::tick`], so a host offline for longer than the grace period is replaced.

pub mod geo;
pub mod scheduler;
pub mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::store::StoreError;
use crate::Shared;

/// Why a placement request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// A field is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// A point, distance or polygon is off.
    #[error(transparent)]
    Geo(#[from] geo::GeoError),
    /// Registry failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The scheduler's in-memory state: when each device was first seen offline, and the wake-up
/// signal for changes.
pub struct Scheduler {
    grace: Duration,
    wake: Notify,
    offline_since: Mutex<HashMap<String, Instant>>,
}

/// Whether a device can hold placements now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// A Sync stream is open.
    pub online: bool,
    /// Offline for longer than the grace period (as far as this central has seen).
    pub lost: bool,
}

impl Scheduler {
    /// A scheduler replacing hosts offline for longer than `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            wake: Notify::new(),
            offline_since: Mutex::new(HashMap::new()),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// How often the scheduler runs without a change: a quarter of the grace period, between
    /// 200 ms and 5 s.
    pub fn tick(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// Ask for a pass soon (something placement depends on changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Note whether a device is online now and tell whether it counts as lost. A device is
    /// timed from the first pass that sees it offline (after a restart of central every device
    /// gets a full grace period to reconnect).
    pub fn presence(&self, device_id: &str, online: bool, now: Instant) -> Presence {
        let mut offline = self.offline_since.lock().unwrap_or_else(|p| p.into_inner());
        if online {
            offline.remove(device_id);
            return Presence {
                online,
                lost: false,
            };
        }
        let since = *offline.entry(device_id.to_owned()).or_insert(now);
        Presence {
            online,
            lost: now.saturating_duration_since(since) > self.grace,
        }
    }

    /// Forget devices no longer in the registry's active set.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.offline_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep(id));
    }
}

/// Run one scheduler pass now and push the changed desired states.
pub async fn reconcile_now(shared: &Arc<Shared>) {
    let inner = shared.clone();
    match shared
        .store
        .run(move |conn| scheduler::reconcile(conn, &inner))
        .await
    {
        Ok(pushes) => crate::rollout::engine::push_all(shared, pushes).await,
        Err(e) => tracing::warn!(error = %e, "placement pass failed; retrying at the next tick"),
    }
}

/// Run the scheduler on every wake-up and every tick until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let tick = shared.placement.tick();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shared.placement.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        reconcile_now(&shared).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_devices_are_lost_after_the_grace_period() {
        let s = Scheduler::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            s.presence("d", false, t0),
            Presence {
                online: false,
                lost: false
            }
        );
        assert!(!s.presence("d", false, t0 + Duration::from_secs(60)).lost);
        assert!(s.presence("d", false, t0 + Duration::from_secs(61)).lost);
        // Coming back resets the clock.
        assert!(!s.presence("d", true, t0 + Duration::from_secs(62)).lost);
        assert!(!s.presence("d", false, t0 + Duration::from_secs(100)).lost);
        assert_eq!(s.tick(), Duration::from_secs(5));
        assert_eq!(
            Scheduler::new(Duration::from_secs(1)).tick(),
            Duration::from_millis(250)
        );
    }
}
