//! The heartbeat form of what the reconciler observed.

use cairn_proto::v1::{AppStatus, ServiceHealth, ServiceState, ServiceStatus as WireService};
use cairn_proto::{truncate_status_text, MAX_STATUS_MESSAGE_BYTES};
use cairn_runtime::reconcile::{Health, ServiceState as State, ServiceStatus};

use cairn_runtime::container::RuntimeConfig;

use super::AppliedState;

/// The last non-empty line of a service log (only its last 4 KiB are read).
fn last_log_line(path: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Status of every app of `applied` after a pass that gave `result` (the per-service statuses,
/// or why the pass could not run). A service that exited carries the last line of its log
/// (`logs` finds it), so an operator sees why without fetching logs.
pub(super) fn statuses(
    applied: &AppliedState,
    result: Result<Vec<ServiceStatus>, String>,
    logs: &RuntimeConfig,
) -> Vec<AppStatus> {
    applied
        .entries
        .iter()
        .map(|entry| {
            let (error, services) = match (&entry.spec, &result) {
                (Err(refused), _) => (refused.clone(), Vec::new()),
                (Ok(_), Err(pass)) => (format!("cannot run apps: {pass}"), Vec::new()),
                (Ok(_), Ok(all)) => (
                    String::new(),
                    all.iter()
                        .filter(|s| s.app == entry.name)
                        .map(|s| service(s, logs))
                        .collect(),
                ),
            };
            AppStatus {
                name: entry.name.clone(),
                generation: entry.generation,
                desired_revision: applied.revision,
                error: truncate_status_text(&error, MAX_STATUS_MESSAGE_BYTES),
                services,
            }
        })
        .collect()
}

fn service(status: &ServiceStatus, logs: &RuntimeConfig) -> WireService {
    let state = match status.state {
        State::Pending => ServiceState::Pending,
        State::Running => ServiceState::Running,
        State::Unhealthy => ServiceState::Unhealthy,
        State::Restarting => ServiceState::Restarting,
        State::Exited => ServiceState::Exited,
        State::Failed => ServiceState::Failed,
    };
    let health = match status.health {
        Health::None => ServiceHealth::None,
        Health::Starting => ServiceHealth::Starting,
        Health::Healthy => ServiceHealth::Healthy,
        Health::Unhealthy => ServiceHealth::Unhealthy,
    };
    let mut message = status.message.clone().unwrap_or_default();
    if let (Some(code), true) = (status.exit_code, message.is_empty()) {
        message = format!("exited with status {code}");
        if let Some(line) = last_log_line(&logs.log_path(&status.app, &status.service)) {
            message.push_str(&format!("; last log line: {line}"));
        }
    }
    WireService {
        name: status.service.clone(),
        state: state as i32,
        health: health as i32,
        restarts: status.restarts,
        message: truncate_status_text(&message, MAX_STATUS_MESSAGE_BYTES),
    }
}
