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

/// Devices (revoked ones excluded) by attestation state: `verified`, `stale` (verified last
/// before `fresh_since`, Unix seconds), `failed`, `pending` (a TPM device never attested) and
/// `unsupported`. Mirrors [`crate::attestation::summary`] in one GROUP BY.
pub fn attestation_by_state(
    conn: &Connection,
    fresh_since: i64,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT CASE
                WHEN a.state IS NULL AND d.key_storage = 'tpm' THEN 'pending'
                WHEN a.state IS NULL THEN 'unsupported'
                WHEN a.state = 'verified' AND COALESCE(a.verified_at, a.checked_at) < ?1
                    THEN 'stale'
                ELSE a.state
            END AS verdict, COUNT(*)
         FROM devices d LEFT JOIN device_attestation a ON a.device_id = d.id
         WHERE d.status <> 'revoked'
         GROUP BY 1",
    )?;
    let rows = stmt.query_map(params![fresh_since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
