//! The audit log: an append-only record of every change and every sensitive read.

use crate::store::db::{params, Connection};

use super::{now_unix, AuditEvent, StoreError};

/// Append one audit record (call inside the transaction of the change it records).
pub fn record(
    conn: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_unix(), actor, action, target, detail],
    )?;
    Ok(())
}

/// The newest `limit` records, newest first.
pub fn recent(conn: &Connection, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |row| {
        Ok(AuditEvent {
            id: row.get(0)?,
            at: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            target: row.get(4)?,
            detail: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
