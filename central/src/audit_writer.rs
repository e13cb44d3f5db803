//! Audit rows written in groups: each caller waits until its row is committed (so what it
//! guards, such as releasing a secret, happens only once it is on record), and every row queued
//! while a transaction runs goes into the next one. A fleet fetching a rotated secret at once
//! then costs a few transactions, not one per device on the registry's single writer.

use tokio::sync::{mpsc, oneshot};

use crate::store::{audit, Store, StoreError};

/// Most rows in one transaction.
const MAX_BATCH: usize = 512;

/// Rows waiting before callers are made to wait for room.
const QUEUE: usize = 4096;

/// One audit row and the caller waiting for its commit.
struct Pending {
    actor: String,
    action: &'static str,
    target: String,
    detail: String,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle callers record through; see the module docs.
#[derive(Clone)]
pub struct AuditWriter {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditWriter")
    }
}

impl AuditWriter {
    /// Start the writer task on `store` (it ends when every handle is dropped).
    pub fn start(store: Store) -> AuditWriter {
        let (queue, mut rows) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rows.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rows.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                let written: Vec<(String, &'static str, String, String)> = batch
                    .iter()
                    .map(|p| {
                        (
                            p.actor.clone(),
                            p.action,
                            p.target.clone(),
                            p.detail.clone(),
                        )
                    })
                    .collect();
                let outcome = store
                    .run(move |conn| {
                        let tx = conn.transaction()?;
                        for (actor, action, target, detail) in &written {
                            audit::record(&tx, actor, action, target, detail)?;
                        }
                        tx.commit()?;
                        Ok(())
                    })
                    .await
                    .map_err(|e| e.to_string());
                for pending in batch {
                    let _ = pending.done.send(outcome.clone());
                }
            }
        });
        AuditWriter { queue }
    }

    /// Record one row; returns once it is committed.
    ///
    /// # Errors
    /// When the transaction holding it failed (nothing it guards should happen then).
    pub async fn record(
        &self,
        actor: String,
        action: &'static str,
        target: String,
        detail: String,
    ) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            actor,
            action,
            target,
            detail,
            done,
        };
        let stopped = || StoreError::Worker("the audit writer stopped".into());
        self.queue.send(pending).await.map_err(|_| stopped())?;
        committed
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Worker)
    }
}
