//! Health probes: a background task per running container with a healthcheck that execs the
//! check command inside the container every `interval`; what each result does to the service's
//! health is [`HealthState::record`], a pure transition.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_compose::HealthCheck;
use tokio::sync::Notify;
use tracing::{debug, info, Instrument};

use crate::container;
use crate::containerd::Containerd;

/// Health of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No health check configured (or the service is not running).
    None,
    /// Checks have not passed yet (or failures are inside the start period).
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

/// Probe results shared with the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthState {
    /// The health the results add up to.
    pub health: Health,
    /// Consecutive failed checks (outside the start period).
    pub failures: u32,
    /// The error of the last failed check, until one passes.
    pub last_error: Option<String>,
}

impl HealthState {
    /// The state of a new probe: no check has passed yet.
    pub(crate) fn starting() -> HealthState {
        HealthState {
            health: Health::Starting,
            failures: 0,
            last_error: None,
        }
    }

    /// Take the result of one check made `since_start` after the probe started: `error` is
    /// `None` when it passed. A pass makes the service healthy; a failure inside the start period
    /// does not count; `check.retries` consecutive failures make it unhealthy.
    pub(crate) fn record(
        &mut self,
        check: &HealthCheck,
        since_start: Duration,
        error: Option<String>,
    ) {
        match error {
            None => {
                if self.health != Health::Healthy {
                    info!("healthy");
                }
                *self = HealthState {
                    health: Health::Healthy,
                    failures: 0,
                    last_error: None,
                };
            }
            Some(e) if since_start < check.start_period => {
                debug!(error = %e, "check failed inside the start period");
            }
            Some(e) => {
                self.failures += 1;
                if self.failures >= check.retries && self.health != Health::Unhealthy {
                    info!(failures = self.failures, error = %e, "unhealthy");
                    self.health = Health::Unhealthy;
                }
                self.last_error = Some(e);
            }
        }
    }
}

/// A running probe for one task (container id + pid); aborted on drop.
pub(crate) struct Probe {
    pub pid: u32,
    pub state: Arc<Mutex<HealthState>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Probe {
    /// Start probing task `pid` of container `id`.
    /// The check's output goes to `output` (truncated before each check); its start is quoted
    /// in the error of a failed check. `changed` is notified whenever the health changes (the
    /// reconcile loop then runs a pass, so a service waiting for this one to be healthy starts
    /// at once).
    pub fn start(
        ctr: Containerd,
        id: String,
        pid: u32,
        check: HealthCheck,
        output: PathBuf,
        changed: Arc<Notify>,
    ) -> Probe {
        let state = Arc::new(Mutex::new(HealthState::starting()));
        let shared = state.clone();
        let span = tracing::info_span!("health_probe", container = %id, pid);
        let handle = tokio::spawn(
            async move {
                let started = Instant::now();
                let argv = check.test.argv();
                loop {
                    tokio::time::sleep(check.interval).await;
                    let _ = std::fs::write(&output, b"");
                    let result =
                        container::exec(&ctr, &id, argv.clone(), check.timeout, Some(&output))
                            .await;
                    let error = match result {
                        Ok(0) => None,
                        Ok(code) => {
                            // The shim copies output asynchronously; give it a moment.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let text = std::fs::read_to_string(&output).unwrap_or_default();
                            let text: String = text.trim().chars().take(200).collect();
                            Some(if text.is_empty() {
                                format!("health check exited with {code}")
                            } else {
                                format!("health check exited with {code}: {text}")
                            })
                        }
                        Err(e) => Some(e.to_string()),
                    };
                    let health_changed = {
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let before = s.health;
                        s.record(&check, started.elapsed(), error);
                        s.health != before
                    };
                    if health_changed {
                        changed.notify_one();
                    }
                }
            }
            .instrument(span),
        );
        Probe { pid, state, handle }
    }

    /// The current health.
    pub fn snapshot(&self) -> HealthState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_compose::HealthTest;

    fn check(retries: u32, start_period: Duration) -> HealthCheck {
        HealthCheck {
            test: HealthTest::Shell("true".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period,
        }
    }

    const LATER: Duration = Duration::from_secs(60);

    #[test]
    fn a_new_probe_reports_starting() {
        assert_eq!(HealthState::starting().health, Health::Starting);
    }

    #[test]
    fn a_passing_check_makes_the_service_healthy() {
        let mut s = HealthState::starting();
        s.record(&check(3, Duration::ZERO), LATER, None);
        assert_eq!(s.health, Health::Healthy);
    }

    #[test]
    fn a_service_becomes_unhealthy_after_retries_consecutive_failures() {
        let check = check(3, Duration::ZERO);
        let mut s = HealthState::starting();
        for _ in 0..2 {
            s.record(&check, LATER, Some("health check exited with 1".into()));
        }
        assert_eq!((s.health, s.failures), (Health::Starting, 2));
        s.record(&check, LATER, Some("health check exited with 7".into()));
        assert_eq!(s.health, Health::Unhealthy);
        assert_eq!(s.last_error.as_deref(), Some("health check exited with 7"));
    }

    #[test]
    fn a_healthy_service_stays_healthy_until_retries_failures_in_a_row() {
        let check = check(2, Duration::ZERO);
        let mut s = HealthState::starting();
        s.record(&check, LATER, None);
        s.record(&check, LATER, Some("timeout".into()));
        assert_eq!((s.health, s.failures), (Health::Healthy, 1));
        s.record(&check, LATER, None);
        s.record(&check, LATER, Some("timeout".into()));
        assert_eq!(
            s.health,
            Health::Healthy,
            "the pass in between reset the count"
        );
        s.record(&check, LATER, Some("timeout".into()));
        assert_eq!(s.health, Health::Unhealthy);
    }

    #[test]
    fn failures_inside_the_start_period_do_not_count() {
        let check = check(1, Duration::from_secs(30));
        let mut s = HealthState::starting();
        s.record(&check, Duration::from_secs(10), Some("not up yet".into()));
        assert_eq!(s, HealthState::starting());
        s.record(&check, Duration::from_secs(31), Some("still not up".into()));
        assert_eq!(s.health, Health::Unhealthy);
    }

    #[test]
    fn a_passing_check_makes_an_unhealthy_service_healthy_again() {
        let check = check(1, Duration::ZERO);
        let mut s = HealthState::starting();
        s.record(&check, LATER, Some("down".into()));
        assert_eq!(s.health, Health::Unhealthy);
        s.record(&check, LATER, None);
        assert_eq!(
            s,
            HealthState {
                health: Health::Healthy,
                failures: 0,
                last_error: None
            }
        );
    }
}
