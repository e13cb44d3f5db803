//! Requests for a device's log lines (`GET /api/v1/devices/{id}/logs`), shared by every central
//! replica through the database: the replica that takes the REST request inserts a `pending`
//! row, the replica holding the device's stream claims it (`sent`) and pushes it, the replica
//! receiving the agent's reply completes it (`done` or `failed`), and the REST handler polls it.
//!
//! `created_at` is Unix milliseconds.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use crate::store::StoreError;

pub use crate::store::model::LogRequestState;

/// One log request.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRequestRow {
    /// `log_...`.
    pub id: String,
    /// The device asked.
    pub device_id: String,
    /// App (empty with `service` for the agent's own journal).
    pub app: String,
    /// Service of the app.
    pub service: String,
    /// Lines asked for.
    pub lines: u32,
    /// When it was asked (Unix ms).
    pub created_at_ms: i64,
    /// Where it stands.
    pub state: LogRequestState,
    /// The lines, once done.
    pub reply: Option<String>,
    /// The reply was cut to fit the message size limit.
    pub truncated: bool,
    /// Why it failed.
    pub error: Option<String>,
}

const COLUMNS: &str =
    "id, device_id, app, service, lines, created_at, state, reply, truncated, error";

fn from_row(row: &Row) -> crate::store::db::Result<LogRequestRow> {
    Ok(LogRequestRow {
        id: row.get(0)?,
        device_id: row.get(1)?,
        app: row.get(2)?,
        service: row.get(3)?,
        lines: row.get::<_, i64>(4)? as u32,
        created_at_ms: row.get(5)?,
        state: row.get(6)?,
        reply: row.get(7)?,
        truncated: row.get::<_, i64>(8)? != 0,
        error: row.get(9)?,
    })
}

/// Store a new pending request.
pub fn insert(conn: &Connection, request: &LogRequestRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO log_requests (id, device_id, app, service, lines, created_at, state, reply, truncated, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, 0, NULL)",
        params![
            request.id,
            request.device_id,
            request.app,
            request.service,
            request.lines as i64,
            request.created_at_ms,
            request.state.as_str()
        ],
    )?;
    Ok(())
}

/// One request.
pub fn get(conn: &Connection, id: &str) -> Result<Option<LogRequestRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM log_requests WHERE id = ?1"),
            params![id],
            from_row,
        )
        .optional()?)
}

/// A device's pending requests made at or after `since_ms`, oldest first.
pub fn pending_for_device(
    conn: &Connection,
    device_id: &str,
    since_ms: i64,
) -> Result<Vec<LogRequestRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM log_requests WHERE device_id = ?1 AND state = 'pending' AND created_at >= ?2
         ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map(params![device_id, since_ms], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Claim a pending request for sending (pending -> sent); false when another replica took it
/// or it is no longer pending.
pub fn claim(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE log_requests SET state = 'sent' WHERE id = ?1 AND state = 'pending'",
        params![id],
    )? > 0)
}

/// Give a claimed request back (sent -> pending) when pushing it failed.
pub fn unclaim(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE log_requests SET state = 'pending' WHERE id = ?1 AND state = 'sent'",
        params![id],
    )? > 0)
}

/// Record the device's answer (done with the lines, or failed with its error); only for a request
/// to this device that is still open. False when there is none.
pub fn complete(
    conn: &Connection,
    id: &str,
    device_id: &str,
    reply: Result<(&str, bool), &str>,
) -> Result<bool, StoreError> {
    let changed = match reply {
        Ok((text, truncated)) => conn.execute(
            "UPDATE log_requests SET state = 'done', reply = ?3, truncated = ?4
             WHERE id = ?1 AND device_id = ?2 AND state IN ('pending', 'sent')",
            params![id, device_id, text, truncated as i64],
        )?,
        Err(error) => conn.execute(
            "UPDATE log_requests SET state = 'failed', error = ?3
             WHERE id = ?1 AND device_id = ?2 AND state IN ('pending', 'sent')",
            params![id, device_id, error],
        )?,
    };
    Ok(changed > 0)
}

/// Fail a request still open (no answer in time); false when it was answered meanwhile.
pub fn expire(conn: &Connection, id: &str, error: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE log_requests SET state = 'failed', error = ?2 WHERE id = ?1 AND state IN ('pending', 'sent')",
        params![id, error],
    )? > 0)
}

/// Fail open requests made before `before_ms` and delete every request made before
/// `delete_before_ms` (replies hold up to 240 KiB each); returns (expired, deleted).
pub fn prune(
    conn: &mut Connection,
    before_ms: i64,
    delete_before_ms: i64,
) -> Result<(usize, usize), StoreError> {
    let tx = conn.transaction()?;
    let expired = tx.execute(
        "UPDATE log_requests SET state = 'failed', error = 'the device did not answer in time'
         WHERE created_at < ?1 AND state IN ('pending', 'sent')",
        params![before_ms],
    )?;
    let deleted = tx.execute(
        "DELETE FROM log_requests WHERE created_at < ?1",
        params![delete_before_ms],
    )?;
    tx.commit()?;
    Ok((expired, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_db(test: impl FnOnce(&mut Connection) -> Result<(), StoreError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("r.sqlite3")).unwrap();
        store.run_blocking(test).unwrap();
    }

    fn request(id: &str, device: &str, at: i64) -> LogRequestRow {
        LogRequestRow {
            id: id.into(),
            device_id: device.into(),
            app: "web".into(),
            service: "nginx".into(),
            lines: 10,
            created_at_ms: at,
            state: LogRequestState::Pending,
            reply: None,
            truncated: false,
            error: None,
        }
    }

    #[test]
    fn request_lifecycle_is_claimed_once_and_answered_only_by_its_device() {
        with_db(|conn| {
            insert(conn, &request("log_1", "dev_a", 1_000)).unwrap();
            insert(conn, &request("log_2", "dev_a", 5_000)).unwrap();
            insert(conn, &request("log_3", "dev_b", 5_000)).unwrap();
            let pending: Vec<String> = pending_for_device(conn, "dev_a", 2_000)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(pending, vec!["log_2"]);
            assert!(claim(conn, "log_2").unwrap());
            assert!(
                !claim(conn, "log_2").unwrap(),
                "a second replica cannot claim it too"
            );
            assert!(unclaim(conn, "log_2").unwrap());
            assert!(claim(conn, "log_2").unwrap());
            assert!(
                !complete(conn, "log_2", "dev_b", Ok(("stolen", false))).unwrap(),
                "another device cannot answer"
            );
            assert!(complete(conn, "log_2", "dev_a", Ok(("a\nb\n", true))).unwrap());
            assert!(
                !complete(conn, "log_2", "dev_a", Err("late")).unwrap(),
                "answered once"
            );
            let done = get(conn, "log_2").unwrap().unwrap();
            assert_eq!(
                (done.state, done.reply.as_deref(), done.truncated),
                (LogRequestState::Done, Some("a\nb\n"), true)
            );
            assert!(complete(conn, "log_3", "dev_b", Err("no log")).unwrap());
            assert_eq!(
                get(conn, "log_3").unwrap().unwrap().error.as_deref(),
                Some("no log")
            );

            assert_eq!(prune(conn, 2_000, 0).unwrap(), (1, 0));
            assert_eq!(
                get(conn, "log_1").unwrap().unwrap().state,
                LogRequestState::Failed
            );
            assert!(!expire(conn, "log_1", "x").unwrap());
            assert_eq!(prune(conn, 0, 6_000).unwrap(), (0, 3));
            assert!(get(conn, "log_2").unwrap().is_none());
            Ok(())
        });
    }
}
