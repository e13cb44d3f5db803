//! Fleet-wide counts for central's Prometheus metrics: one cheap GROUP BY per table, no
//! per-device rows.

use std::collections::BTreeMap;

use crate::store::db::{params, Connection};

use crate::store::StoreError;

/// Counts of the registry's tables, grouped by state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetCounts {
    /// Devices per status (`pending`, `active`, `revoked`).
    pub devices_by_status: BTreeMap<String, u64>,
    /// Rollouts per state.
    pub rollouts_by_state: BTreeMap<String, u64>,
    /// Devices of rollouts per state (every rollout, finished ones included).
    pub rollout_devices_by_state: BTreeMap<String, u64>,
    /// Deployments.
    pub deployments: u64,
    /// Stored events.
    pub events: u64,
    /// Log requests per state.
    pub log_requests_by_state: BTreeMap<String, u64>,
}

fn grouped(conn: &Connection, sql: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params![], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Read every count (one read transaction, so they agree with each other).
pub fn read(conn: &mut Connection) -> Result<FleetCounts, StoreError> {
    let tx = conn.transaction()?;
    let counts = FleetCounts {
        devices_by_status: grouped(&tx, "SELECT status, COUNT(*) FROM devices GROUP BY status")?,
        rollouts_by_state: grouped(&tx, "SELECT state, COUNT(*) FROM rollouts GROUP BY state")?,
        rollout_devices_by_state: grouped(
            &tx,
            "SELECT state, COUNT(*) FROM rollout_devices GROUP BY state",
        )?,
        deployments: tx.query_row("SELECT COUNT(*) FROM deployments", params![], |r| {
            r.get::<_, i64>(0)
        })? as u64,
        events: tx.query_row("SELECT COUNT(*) FROM events", params![], |r| {
            r.get::<_, i64>(0)
        })? as u64,
        log_requests_by_state: grouped(
            &tx,
            "SELECT state, COUNT(*) FROM log_requests GROUP BY state",
        )?,
    };
    tx.commit()?;
    Ok(counts)
}
