//! The agent's externally visible status: `status.json` in the state directory and a
//! [`tokio::sync::watch`] channel for in-process observers (tests, the fleet benchmark).

use std::path::{Path, PathBuf};

use cairn_io::FileError;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the agent stands with central.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// No certificate yet; asking central to enroll.
    Enrolling,
    /// Central holds the enrollment for an operator's decision.
    Pending,
    /// Central refused the enrollment (token, claim or CSR); retrying slowly.
    Refused,
    /// The Sync stream with central is up.
    Connected,
    /// Central is unreachable; running from the stored desired state.
    Offline,
    /// Central revoked this device; retrying only slowly.
    Revoked,
    /// Central ordered a crypto-erase and it was done: no identity, no data key; idle.
    Wiped,
}

impl Phase {
    /// The name written to `status.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Enrolling => "enrolling",
            Phase::Pending => "pending",
            Phase::Refused => "refused",
            Phase::Connected => "connected",
            Phase::Offline => "offline",
            Phase::Revoked => "revoked",
            Phase::Wiped => "wiped",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Content of `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Current phase.
    pub phase: Phase,
    /// Device id once central assigned one.
    pub device_id: Option<String>,
    /// Revision of the desired state held (0 = none).
    pub desired_revision: u64,
    /// The last failure, as central or the network reported it; cleared once connected.
    pub last_error: Option<String>,
    /// The device certificate's notAfter (RFC 3339), once enrolled.
    pub cert_not_after: Option<String>,
    /// When this status was written (RFC 3339, UTC).
    pub updated_at: String,
}

impl Status {
    fn initial() -> Self {
        Status {
            phase: Phase::Enrolling,
            device_id: None,
            desired_revision: 0,
            last_error: None,
            cert_not_after: None,
            updated_at: now_rfc3339(),
        }
    }

    /// Writes it as `path` (pretty JSON, mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        let mut json = serde_json::to_vec_pretty(self).expect("status serializes");
        json.push(b'\n');
        cairn_io::write_atomic(path, &json, 0o600)
    }

    fn same_content(&self, other: &Status) -> bool {
        self.phase == other.phase
            && self.device_id == other.device_id
            && self.desired_revision == other.desired_revision
            && self.last_error == other.last_error
            && self.cert_not_after == other.cert_not_after
    }
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Keeps the status, writes `status.json` on every change and publishes it on a watch channel.
#[derive(Debug)]
pub struct StatusReporter {
    path: PathBuf,
    tx: watch::Sender<Status>,
    writing: tokio::sync::Mutex<()>,
}

impl StatusReporter {
    /// Starts in phase `enrolling`, written to `path` (`status.json`); nothing is written until
    /// the first change.
    pub fn new(path: PathBuf) -> Self {
        let (tx, _rx) = watch::channel(Status::initial());
        StatusReporter {
            path,
            tx,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.tx.subscribe()
    }

    /// The current status.
    pub fn current(&self) -> Status {
        self.tx.borrow().clone()
    }

    /// Applies `change`; when anything changed, stamps `updated_at`, writes `status.json`, then
    /// notifies subscribers (so a subscriber woken by a change finds it on disk). A failed write
    /// is logged, never fatal. Updates are serialized.
    pub async fn update(&self, change: impl FnOnce(&mut Status)) {
        let _serialized = self.writing.lock().await;
        let old = self.current();
        let mut next = old.clone();
        change(&mut next);
        if next.same_content(&old) {
            return;
        }
        next.updated_at = now_rfc3339();
        if next.phase != old.phase {
            info!(
                device_id = next.device_id.as_deref().unwrap_or(""),
                from = %old.phase,
                to = %next.phase,
                last_error = next.last_error.as_deref().unwrap_or(""),
                "agent phase changed"
            );
        }
        self.write(next.clone()).await;
        self.tx.send_replace(next);
    }

    /// Writes the current status to `status.json` even if nothing changed.
    pub async fn write_current(&self) {
        let _serialized = self.writing.lock().await;
        self.write(self.current()).await;
    }

    async fn write(&self, status: Status) {
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || status.save(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "status.json not updated"),
            Err(e) => warn!(error = %e, "status.json writer task failed"),
        }
    }

    /// Sets the phase and the error that led to it (`None` clears it).
    pub async fn set_phase(&self, phase: Phase, last_error: Option<String>) {
        self.update(|s| {
            s.phase = phase;
            s.last_error = last_error;
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_round_trip_and_shape() {
        let status = Status {
            phase: Phase::Connected,
            device_id: Some("d1".into()),
            desired_revision: 3,
            last_error: None,
            cert_not_after: Some("2030-01-01T00:00:00Z".into()),
            updated_at: now_rfc3339(),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "connected");
        assert_eq!(json["device_id"], "d1");
        assert_eq!(json["desired_revision"], 3);
        assert!(json["last_error"].is_null());
        let back: Status = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
        for phase in [
            Phase::Enrolling,
            Phase::Pending,
            Phase::Refused,
            Phase::Connected,
            Phase::Offline,
            Phase::Revoked,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    #[tokio::test]
    async fn reporter_writes_file_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let reporter = StatusReporter::new(path.clone());
        let mut rx = reporter.subscribe();
        reporter
            .set_phase(Phase::Refused, Some("token expired".into()))
            .await;
        assert!(rx.has_changed().unwrap());
        let on_disk: Status = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk.phase, Phase::Refused);
        assert_eq!(on_disk.last_error.as_deref(), Some("token expired"));
        assert_eq!(on_disk, *rx.borrow_and_update());
        // No change, no notification.
        reporter
            .set_phase(Phase::Refused, Some("token expired".into()))
            .await;
        assert!(!rx.has_changed().unwrap());
        OffsetDateTime::parse(&on_disk.updated_at, &Rfc3339).unwrap();
    }
}
