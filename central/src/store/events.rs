//! The device event log: what happened to devices and the fleet (enrolled, approved, stream
//! connected, app state changes, OS update phases, rollout halts, and events agents send), with
//! bounded retention ([`prune`] keeps the newest N).
//!
//! `at` is Unix milliseconds; events are ordered by `(at, id)`.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use crate::store::{new_id, StoreError, Timestamp};

pub use crate::store::model::Severity;
pub use cairn_api::Event;

/// An event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened (Unix ms).
    pub at_ms: i64,
    /// The device it is about.
    pub device_id: Option<String>,
    /// What happened.
    pub kind: String,
    /// How bad.
    pub severity: Severity,
    /// For people.
    pub message: String,
}

impl NewEvent {
    /// An event happening now.
    pub fn now(
        device_id: Option<&str>,
        kind: &str,
        severity: Severity,
        message: impl Into<String>,
    ) -> NewEvent {
        NewEvent {
            at_ms: now_unix_ms(),
            device_id: device_id.map(str::to_owned),
            kind: kind.to_owned(),
            severity,
            message: message.into(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which events to list; empty strings and 0 mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only this device's events ("" = all).
    pub device_id: String,
    /// Only this kind ("" = all).
    pub kind: String,
    /// Only events at or after this time (Unix ms; 0 = all).
    pub since_ms: i64,
    /// At most this many (the newest ones).
    pub limit: u32,
}

fn from_row(row: &Row) -> crate::store::db::Result<Event> {
    let at_ms: i64 = row.get(1)?;
    Ok(Event {
        id: row.get(0)?,
        at_ms,
        at: Timestamp::from_unix_seconds(at_ms.div_euclid(1000)),
        device_id: row.get(2)?,
        kind: row.get(3)?,
        severity: row.get(4)?,
        message: row.get(5)?,
    })
}

/// A new event id: `evt_` + a 16-hex-digit sequence that grows through this process (started
/// from the clock in nanoseconds, so it keeps growing across restarts) + random hex. Events of
/// the same millisecond therefore list in the order this replica recorded them.
pub fn new_event_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        AtomicU64::new(nanos)
    });
    let random = new_id("");
    format!(
        "evt_{:016x}{}",
        next.fetch_add(1, Ordering::Relaxed),
        &random[1..9]
    )
}

/// Store one event; returns its id.
pub fn insert(conn: &Connection, event: &NewEvent) -> Result<String, StoreError> {
    let id = new_event_id();
    let values = row_values(id.clone(), event);
    conn.execute(
        &insert_sql(1),
        crate::store::db::as_params(&values).as_slice(),
    )?;
    Ok(id)
}

/// `INSERT` of `rows` events (columns as [`row_values`] gives them).
fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO events (id, at, device_id, kind, severity, message) VALUES {}",
        crate::store::db::row_placeholders(rows, 6, 1)
    )
}

/// One event's column values, under `id`.
fn row_values(id: String, e: &NewEvent) -> [crate::store::db::Value; 6] {
    use crate::store::db::{ToValue, Value};
    [
        Value::Text(id),
        Value::Int(e.at_ms),
        e.device_id.to_value(),
        Value::Text(e.kind.clone()),
        e.severity.to_value(),
        Value::Text(e.message.clone()),
    ]
}

/// Events per INSERT statement (6 parameters each).
const ROWS_PER_STATEMENT: usize = 200;

/// Store many events in one transaction, many per statement: a connect storm or a fleet-wide
/// app change brings one event per device, and one round trip each would hold the registry's
/// write lock for all of them.
pub fn insert_all(conn: &mut Connection, events: &[NewEvent]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let values: Vec<_> = chunk
            .iter()
            .flat_map(|e| row_values(new_event_id(), e))
            .collect();
        tx.execute(
            &insert_sql(chunk.len()),
            crate::store::db::as_params(&values).as_slice(),
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The newest `filter.limit` events matching `filter`, oldest first.
pub fn list(conn: &Connection, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, device_id, kind, severity, message FROM events
         WHERE (?1 = '' OR device_id = ?1) AND (?2 = '' OR kind = ?2) AND at >= ?3
         ORDER BY at DESC, id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            filter.device_id,
            filter.kind,
            filter.since_ms,
            filter.limit as i64
        ],
        from_row,
    )?;
    let mut events: Vec<Event> = rows.collect::<Result<_, _>>()?;
    events.reverse();
    Ok(events)
}

/// Number of stored events.
pub fn count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM events", params![], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Delete all but the newest `keep` events; returns how many were deleted.
pub fn prune(conn: &mut Connection, keep: u64) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let cutoff: Option<(i64, String)> = tx
        .query_row(
            "SELECT at, id FROM events ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?1",
            params![keep as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((at, id)) = cutoff else { return Ok(0) };
    let deleted = tx.execute(
        "DELETE FROM events WHERE at < ?1 OR (at = ?1 AND id <= ?2)",
        params![at, id],
    )?;
    tx.commit()?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_db(test: impl FnOnce(&mut Connection) -> Result<(), StoreError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("r.sqlite3")).unwrap();
        store.run_blocking(test).unwrap();
    }

    fn event(at_ms: i64, device: Option<&str>, kind: &str) -> NewEvent {
        NewEvent {
            at_ms,
            device_id: device.map(Into::into),
            kind: kind.into(),
            severity: Severity::Info,
            message: format!("{kind} at {at_ms}"),
        }
    }

    #[test]
    fn a_batch_larger_than_one_statement_is_stored_whole_and_in_order() {
        with_db(|conn| {
            let events: Vec<NewEvent> = (0..450)
                .map(|i| event(5_000 + i, Some("dev_a"), "app.state"))
                .collect();
            insert_all(conn, &events).unwrap();
            let all = list(
                conn,
                &EventFilter {
                    limit: 1000,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(
                all.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
                (5_000..5_450).collect::<Vec<_>>()
            );
            assert_eq!(all[449].device_id.as_deref(), Some("dev_a"));
            Ok(())
        });
    }

    #[test]
    fn lists_filtered_newest_in_time_order_and_prunes_the_oldest() {
        with_db(|conn| {
            let events: Vec<NewEvent> = (0..10)
                .map(|i| {
                    event(
                        1_000 + i,
                        Some(if i % 2 == 0 { "dev_a" } else { "dev_b" }),
                        if i < 5 {
                            "device.connected"
                        } else {
                            "app.state"
                        },
                    )
                })
                .chain([event(1_005, None, "rollout.halted")])
                .collect();
            insert_all(conn, &events).unwrap();
            let all = list(
                conn,
                &EventFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(all.len(), 11);
            assert!(all
                .windows(2)
                .all(|w| (w[0].at_ms, &w[0].id) <= (w[1].at_ms, &w[1].id)));
            let a = list(
                conn,
                &EventFilter {
                    device_id: "dev_a".into(),
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(
                a.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
                vec![1000, 1002, 1004, 1006, 1008]
            );
            let newest = list(
                conn,
                &EventFilter {
                    kind: "app.state".into(),
                    since_ms: 1_007,
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(
                newest.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
                vec![1008, 1009]
            );
            assert_eq!(newest[0].at.to_string(), "1970-01-01T00:00:01Z");
            assert_eq!(count(conn).unwrap(), 11);

            assert_eq!(prune(conn, 4).unwrap(), 7);
            let kept = list(
                conn,
                &EventFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(
                kept.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
                vec![1006, 1007, 1008, 1009]
            );
            assert_eq!(prune(conn, 4).unwrap(), 0);
            Ok(())
        });
    }
}
