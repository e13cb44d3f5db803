//! Sites and placement (DESIGN.md section 7): deployments are an app plus a placement; the
//! scheduler picks, per selected site, which devices run it and writes the result as
//! deployment-owned per-device apps, pushed on the devices' Sync streams.
//!
//! - [`geo`]: points, haversine distance, region polygons (pure, unit-tested).
//! - [`spec`]: the placement operators write, labels and names (pure, unit-tested).
//! - [`privileges`]: which device and site labels allow host devices and extra capabilities.
//! - [`scheduler`]: the planner (pure) and the pass that applies it to the registry.
//!
//! The scheduler runs after every change that can move a placement (deployments, sites,
//! regions, device site or labels, revocation, a device connecting or disconnecting), and at a
//! [`Scheduler::tick`] when presence changed since the last pass (a stream moved on another
//! replica) or a host's grace period ran out since then, so a host offline for longer than the
//! grace period is replaced. A tick with nothing new does nothing: a pass reads the whole fleet
//! under the registry's write lock, and with N replicas idle passes would hold it N times per
//! tick.

pub mod geo;
pub mod privileges;
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
    /// The last pass that was written: the presence epoch it read, and when it started.
    last_pass: Mutex<Option<(u64, Instant)>>,
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
            last_pass: Mutex::new(None),
        }
    }

    /// Note a written pass that read presence at `epoch` (see [`Sessions::presence_epoch`])
    /// and started at `started`.
    ///
    /// [`Sessions::presence_epoch`]: crate::sessions::Sessions::presence_epoch
    pub fn passed(&self, epoch: u64, started: Instant) {
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = Some((epoch, started));
    }

    /// Note a failed pass: the next tick runs one whatever changed.
    pub fn failed(&self) {
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether a tick at `now` has anything to do: no pass yet, presence changed since
    /// (`epoch` differs), or a device's grace period ended since the last pass started.
    pub fn due(&self, epoch: u64, now: Instant) -> bool {
        let Some((seen, started)) = *self.last_pass.lock().unwrap_or_else(|p| p.into_inner())
        else {
            return true;
        };
        if seen != epoch {
            return true;
        }
        let offline = self.offline_since.lock().unwrap_or_else(|p| p.into_inner());
        offline.values().any(|since| {
            let lost_at = *since + self.grace;
            lost_at >= started && lost_at < now
        })
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
    let (epoch, started) = (shared.sessions.presence_epoch(), Instant::now());
    match shared
        .store
        .run(move |conn| scheduler::reconcile(conn, &inner))
        .await
    {
        Ok(pushes) => {
            shared.placement.passed(epoch, started);
            crate::rollout::engine::push_all(shared, pushes).await
        }
        Err(e) => {
            shared.placement.failed();
            tracing::warn!(error = %e, "placement pass failed; retrying at the next tick")
        }
    }
}

/// Run the scheduler on every wake-up and every tick until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let tick = shared.placement.tick();
    loop {
        let woken = tokio::select! {
            _ = tokio::time::sleep(tick) => false,
            _ = shared.placement.wake.notified() => true,
            _ = shutdown.changed() => return,
        };
        if woken
            || shared
                .placement
                .due(shared.sessions.presence_epoch(), Instant::now())
        {
            reconcile_now(&shared).await;
        }
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

    #[test]
    fn a_tick_runs_a_pass_only_when_presence_changed_or_a_grace_period_ran_out() {
        let s = Scheduler::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(s.due(7, t0), "no pass yet");
        s.presence("d", false, t0);
        s.passed(7, t0);
        assert!(!s.due(7, t0 + Duration::from_secs(30)), "nothing new");
        assert!(s.due(8, t0 + Duration::from_secs(30)), "presence changed");
        assert!(
            s.due(7, t0 + Duration::from_secs(61)),
            "d's grace period ran out since the pass"
        );
        s.passed(7, t0 + Duration::from_secs(61));
        assert!(
            !s.due(7, t0 + Duration::from_secs(120)),
            "d was already lost at that pass"
        );
        s.failed();
        assert!(
            s.due(7, t0 + Duration::from_secs(121)),
            "a failed pass is retried at the next tick"
        );
    }
}
