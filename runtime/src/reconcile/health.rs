//! Health probes: a background task per running container with a healthcheck that execs the
//! check command inside the container every `interval` and tracks consecutive failures.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_compose::HealthCheck;
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
#[derive(Debug, Clone)]
pub(crate) struct HealthState {
    pub health: Health,
    pub failures: u32,
    pub last_error: Option<String>,
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
    /// in the error of a failed check.
    pub fn start(
        ctr: Containerd,
        id: String,
        pid: u32,
        check: HealthCheck,
        output: PathBuf,
    ) -> Probe {
        let state = Arc::new(Mutex::new(HealthState {
            health: Health::Starting,
            failures: 0,
            last_error: None,
        }));
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
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
                    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                    match error {
                        None => {
                            if s.health != Health::Healthy {
                                info!("healthy");
                            }
                            *s = HealthState {
                                health: Health::Healthy,
                                failures: 0,
                                last_error: None,
                            };
                        }
                        Some(e) if started.elapsed() < check.start_period => {
                            debug!(error = %e, "check failed inside the start period");
                        }
                        Some(e) => {
                            s.failures += 1;
                            if s.failures >= check.retries && s.health != Health::Unhealthy {
                                info!(failures = s.failures, error = %e, "unhealthy");
                                s.health = Health::Unhealthy;
                            }
                            s.last_error = Some(e);
                        }
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
