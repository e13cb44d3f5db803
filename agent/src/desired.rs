//! The desired state the device holds: stored in the state directory, published to in-process
//! observers, handed to the [`DesiredStateSink`].

use std::sync::Arc;

use cairn_proto::v1::DesiredState;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::blocking::blocking;
use crate::sink::{DesiredStateSink, RecordOnlySink};
use crate::state::{StateDir, StateError};

/// The held desired state and where a newer one goes. Clones share it.
#[derive(Clone)]
pub struct DesiredStore {
    state: StateDir,
    held: Arc<watch::Sender<Option<Arc<DesiredState>>>>,
    sink: Arc<dyn DesiredStateSink>,
}

impl std::fmt::Debug for DesiredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredStore")
            .field("revision", &self.held_revision())
            .finish_non_exhaustive()
    }
}

impl DesiredStore {
    /// Holds `stored` (read from `state` at start), recording new states only.
    pub fn new(state: StateDir, stored: Option<DesiredState>) -> DesiredStore {
        DesiredStore {
            state,
            held: Arc::new(watch::Sender::new(stored.map(Arc::new))),
            sink: Arc::new(RecordOnlySink),
        }
    }

    /// Hands every new state to `sink` as well.
    pub fn with_sink(mut self, sink: Arc<dyn DesiredStateSink>) -> DesiredStore {
        self.sink = sink;
        self
    }

    /// The sink (for the heartbeat's observed status).
    pub fn sink(&self) -> &Arc<dyn DesiredStateSink> {
        &self.sink
    }

    /// Follows the held state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<DesiredState>>> {
        self.held.subscribe()
    }

    /// The held state.
    pub fn current(&self) -> Option<Arc<DesiredState>> {
        self.held.borrow().clone()
    }

    /// Revision of the held state (0 = none).
    pub fn held_revision(&self) -> u64 {
        self.held.borrow().as_ref().map_or(0, |d| d.revision)
    }

    /// At start: hands the stored state to the sink.
    pub fn apply_held(&self) {
        if let Some(desired) = self.current() {
            info!(
                revision = desired.revision,
                "running from the stored desired state"
            );
            self.sink.apply(&desired);
        }
    }

    /// Stores `desired` when it is newer than the held one; `false` (nothing done) otherwise.
    /// Call [`DesiredStore::publish`] after it.
    pub async fn store(&self, desired: &DesiredState) -> Result<bool, StateError> {
        let held = self.held_revision();
        if desired.revision <= held {
            debug!(
                revision = desired.revision,
                held, "desired state not newer; ignored"
            );
            return Ok(false);
        }
        let state = self.state.clone();
        let to_store = desired.clone();
        blocking(move || state.save_desired(&to_store)).await?;
        info!(
            revision = desired.revision,
            previous = held,
            "new desired state stored"
        );
        Ok(true)
    }

    /// Hands a stored state to the sink and publishes it.
    pub fn publish(&self, desired: DesiredState) {
        self.sink.apply(&desired);
        self.held.send_replace(Some(Arc::new(desired)));
    }
}
