//! Which central replica holds each device's sync stream, and which replicas are alive.
//!
//! Presence across replicas is read incrementally: a row changes only when a device connects
//! to or leaves a replica, and carries a sequence number, so a replica reads what changed
//! since the last number it saw instead of scanning the fleet. Sequence numbers are taken
//! under the registry's write lock (one writer at a time across replicas), so they commit in
//! order and a snapshot never holds number n+1 without n. A row whose replica stopped
//! writing its liveness counts as offline; no one has to clean up after a crashed replica.

use std::collections::HashMap;

use super::db::{as_params, params, row_placeholders, Connection, Value};
use super::StoreError;

/// Rows per statement: each statement is a round trip on PostgreSQL, and a connect storm
/// brings thousands of changes per flush.
const ROWS_PER_STATEMENT: usize = 500;

/// What changed on one replica since its last flush.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamChanges {
    /// Devices whose stream is now open on this replica.
    pub connected: Vec<String>,
    /// Devices whose stream on this replica ended.
    pub left: Vec<String>,
}

/// Record `replica`'s stream changes and that it is alive at `now`, in one transaction.
pub fn record(
    conn: &mut Connection,
    replica: &str,
    now: i64,
    changes: &StreamChanges,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let seq = next_seq(&tx)?;
    for chunk in changes.connected.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO replica_streams (device_id, replica, seq) VALUES {}
             ON CONFLICT (device_id) DO UPDATE SET replica = excluded.replica, seq = excluded.seq",
            row_placeholders(chunk.len(), 3, 1)
        );
        let values: Vec<Value> = chunk
            .iter()
            .flat_map(|id| {
                [
                    Value::Text(id.clone()),
                    Value::Text(replica.to_owned()),
                    Value::Int(seq),
                ]
            })
            .collect();
        tx.execute(&sql, as_params(&values).as_slice())?;
    }
    for chunk in changes.left.chunks(ROWS_PER_STATEMENT) {
        let ids: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 3)).collect();
        // Only rows still naming this replica: the device may already be on another one.
        let sql = format!(
            "UPDATE replica_streams SET replica = NULL, seq = ?2 WHERE replica = ?1 AND device_id IN ({})",
            ids.join(", ")
        );
        let mut values = vec![Value::Text(replica.to_owned()), Value::Int(seq)];
        values.extend(chunk.iter().map(|id| Value::Text(id.clone())));
        tx.execute(&sql, as_params(&values).as_slice())?;
    }
    tx.execute(
        "INSERT INTO replicas (id, alive_at) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET alive_at = excluded.alive_at",
        params![replica, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// The number the next change gets; in order only because every writer holds the registry's
/// write lock (see the module doc).
fn next_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM replica_streams",
        params![],
        |r| r.get(0),
    )?)
}

/// A device and the replica now holding its stream (`None`: no replica).
pub type StreamHolder = (String, Option<String>);

/// Stream changes after sequence number `after`: the newest number read (or `after` when
/// nothing changed) and each changed device with its holder.
pub fn changed_since(
    conn: &Connection,
    after: i64,
) -> Result<(i64, Vec<StreamHolder>), StoreError> {
    let rows = conn.query(
        "SELECT device_id, replica, seq FROM replica_streams WHERE seq > ?1",
        [after],
    )?;
    let mut newest = after;
    let mut changed = Vec::with_capacity(rows.len());
    for row in &rows {
        newest = newest.max(row.get::<_, i64>(2)?);
        changed.push((row.get(0)?, row.get(1)?));
    }
    Ok((newest, changed))
}

/// Replicas that wrote their liveness at or after `since`, with that time.
pub fn alive_since(conn: &Connection, since: i64) -> Result<HashMap<String, i64>, StoreError> {
    let rows = conn.query(
        "SELECT id, alive_at FROM replicas WHERE alive_at >= ?1",
        [since],
    )?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<super::db::Result<_>>()?)
}

/// Forget replicas silent since before `before` and release their streams (housekeeping at
/// start: their rows already count as offline, this only keeps the tables small).
pub fn forget_dead(conn: &mut Connection, before: i64) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let seq = next_seq(&tx)?;
    tx.execute(
        "UPDATE replica_streams SET replica = NULL, seq = ?2
         WHERE replica IN (SELECT id FROM replicas WHERE alive_at < ?1)",
        params![before, seq],
    )?;
    let gone = tx.execute("DELETE FROM replicas WHERE alive_at < ?1", [before])?;
    tx.commit()?;
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(connected: &[&str], left: &[&str]) -> StreamChanges {
        StreamChanges {
            connected: connected.iter().map(|s| s.to_string()).collect(),
            left: left.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn stream_changes_are_read_incrementally_and_a_late_leave_does_not_undo_a_move() {
        let (store, _dir) = crate::store::test_store();
        store
            .run_blocking(|conn| {
                // More than one statement's worth, so the chunking is exercised.
                let many: Vec<String> = (0..1203).map(|i| format!("dev_{i:05}")).collect();
                record(
                    conn,
                    "rep_a",
                    100,
                    &StreamChanges {
                        connected: many,
                        left: vec![],
                    },
                )?;
                let (first, all) = changed_since(conn, 0)?;
                assert_eq!(all.len(), 1203);
                assert!(all.iter().all(|(_, r)| r.as_deref() == Some("rep_a")));
                assert_eq!(
                    changed_since(conn, first)?,
                    (first, vec![]),
                    "nothing new after the newest number"
                );

                // dev_00001 moves to B; A's leave, flushed later, must not clear B's row.
                record(conn, "rep_b", 101, &changes(&["dev_00001"], &[]))?;
                record(
                    conn,
                    "rep_a",
                    102,
                    &changes(&[], &["dev_00001", "dev_00002"]),
                )?;
                let (second, moved) = changed_since(conn, first)?;
                let moved: HashMap<_, _> = moved.into_iter().collect();
                assert_eq!(moved.len(), 2, "{moved:?}");
                assert_eq!(moved["dev_00001"].as_deref(), Some("rep_b"));
                assert_eq!(moved["dev_00002"], None);
                assert!(second > first);

                let alive = alive_since(conn, 101)?;
                assert_eq!(alive.len(), 2);
                assert_eq!(alive["rep_a"], 102);

                // B goes silent; housekeeping releases its stream and forgets it.
                assert_eq!(forget_dead(conn, 102)?, 1);
                let (_, released) = changed_since(conn, second)?;
                assert_eq!(released, vec![("dev_00001".to_owned(), None)]);
                assert!(!alive_since(conn, 0)?.contains_key("rep_b"));
                Ok(())
            })
            .unwrap();
    }
}
