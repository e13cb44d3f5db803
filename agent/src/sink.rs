//! Where each new desired state goes after it was stored, and where the heartbeat's observed
//! status comes from: the [`DesiredStateSink`] the apps runtime and the updater implement.

use std::sync::Arc;

use cairn_proto::v1::DesiredState;
use tracing::debug;

/// Receives every new desired state after it was stored, and reports what it observes. The app
/// runtime implements it ([`crate::apps::AppsSink`]); it must not block (hand the state to a
/// reconcile loop, e.g. through a watch channel).
pub trait DesiredStateSink: Send + Sync + 'static {
    /// Called with each newer revision, and at start with the stored one.
    fn apply(&self, desired: &DesiredState);

    /// The latest observed status of the desired apps, sent in every heartbeat (none by default).
    fn observed_apps(&self) -> Vec<cairn_proto::v1::AppStatus> {
        Vec::new()
    }

    /// The OS and update status, sent in every heartbeat (none by default).
    fn observed_os(&self) -> Option<cairn_proto::v1::OsStatus> {
        None
    }

    /// Notified when a status changed that central should hear about before the next regular
    /// heartbeat (an update moving to its next stage, e.g. just before a reboot).
    fn report_now(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// The default sink: the desired state is only recorded (on disk and in [`crate::Agent::desired_state`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordOnlySink;

impl DesiredStateSink for RecordOnlySink {
    fn apply(&self, desired: &DesiredState) {
        debug!(
            revision = desired.revision,
            "desired state recorded (no runtime attached)"
        );
    }
}
