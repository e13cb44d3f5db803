//! OS update rollouts and the devices each one moves. Rows change only on state transitions
//! (release, a new phase reported by the agent, pause/resume/abort/rollback), never per heartbeat.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{json_column, now_unix, RolloutDeviceState, RolloutState, StoreError};

pub use cairn_api::{Rollout, RolloutDevice, Selector, SkippedDevice, WaveSpec};

/// A rollout to insert.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// `rol_…`
    pub id: String,
    /// Bundle SHA-256.
    pub bundle_sha256: String,
    /// Bundle version.
    pub version: String,
    /// Which devices.
    pub selector: Selector,
    /// How they are split into waves.
    pub waves: WaveSpec,
    /// Planned waves.
    pub wave_count: u32,
    /// Selected devices left out.
    pub skipped: Vec<SkippedDevice>,
    /// Threshold in percent.
    pub failure_threshold_percent: u32,
    /// Health gate deadline.
    pub health_deadline_seconds: u32,
    /// Downgrade allowed.
    pub allow_downgrade: bool,
    /// Creator.
    pub created_by: String,
}

const COLUMNS: &str = "id, bundle_sha256, version, selector, waves, wave_count, released_waves, skipped, \
    failure_threshold_percent, health_deadline_seconds, allow_downgrade, state, halt_reason, created_by, \
    created_at, updated_at";

fn from_row(row: &Row) -> crate::store::db::Result<Rollout> {
    Ok(Rollout {
        id: row.get(0)?,
        bundle_sha256: row.get(1)?,
        version: row.get(2)?,
        selector: json_column(row, 3)?,
        waves: json_column(row, 4)?,
        wave_count: row.get(5)?,
        released_waves: row.get(6)?,
        skipped: json_column(row, 7)?,
        failure_threshold_percent: row.get(8)?,
        health_deadline_seconds: row.get(9)?,
        allow_downgrade: row.get(10)?,
        state: row.get(11)?,
        halt_reason: row.get(12)?,
        created_by: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
    })
}

const DEVICE_COLUMNS: &str =
    "device_id, wave, from_version, state, error, rollback_sha256, updated_at";

fn device_from_row(row: &Row) -> crate::store::db::Result<RolloutDevice> {
    Ok(RolloutDevice {
        device_id: row.get(0)?,
        wave: row.get(1)?,
        from_version: row.get(2)?,
        state: row.get(3)?,
        error: row.get(4)?,
        rollback_sha256: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

/// Insert a rollout and its devices (`(device_id, wave, from_version)`, all pending).
pub fn insert(
    conn: &Connection,
    rollout: &NewRollout,
    devices: &[(String, u32, String)],
) -> Result<(), StoreError> {
    let now = now_unix();
    conn.execute(
        &format!("INSERT INTO rollouts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, 'running', NULL, ?11, ?12, ?12)"),
        params![
            rollout.id,
            rollout.bundle_sha256,
            rollout.version,
            serde_json::to_string(&rollout.selector).expect("a selector serialises"),
            serde_json::to_string(&rollout.waves).expect("a wave request serialises"),
            rollout.wave_count,
            serde_json::to_string(&rollout.skipped).expect("skipped devices serialise"),
            rollout.failure_threshold_percent,
            rollout.health_deadline_seconds,
            rollout.allow_downgrade,
            rollout.created_by,
            now
        ],
    )?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO rollout_devices (rollout_id, device_id, wave, from_version, state, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
    )?;
    for (device_id, wave, from_version) in devices {
        stmt.execute(params![rollout.id, device_id, wave, from_version, now])?;
    }
    Ok(())
}

/// One rollout.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Rollout>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM rollouts WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

/// Every rollout, newest first.
pub fn list(conn: &Connection) -> Result<Vec<Rollout>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM rollouts ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(crate::params![], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ids of the rollouts in one of `states`, oldest first.
pub fn ids_in_states(
    conn: &Connection,
    states: &[RolloutState],
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, state FROM rollouts ORDER BY created_at, id")?;
    let rows = stmt.query_map(crate::params![], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, RolloutState>(1)?))
    })?;
    let mut ids = Vec::new();
    for row in rows {
        let (id, state) = row?;
        if states.contains(&state) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The devices of a rollout, by wave then id.
pub fn devices(conn: &Connection, rollout_id: &str) -> Result<Vec<RolloutDevice>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = ?1 ORDER BY wave, device_id"
    ))?;
    let rows = stmt.query_map([rollout_id], device_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One device of one rollout.
pub fn device(
    conn: &Connection,
    rollout_id: &str,
    device_id: &str,
) -> Result<Option<RolloutDevice>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = ?1 AND device_id = ?2"),
            params![rollout_id, device_id],
            device_from_row,
        )
        .optional()?)
}

/// The active (running, paused or halted) rollout holding `device_id`, if any.
pub fn active_rollout_of(conn: &Connection, device_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT r.id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id
             WHERE d.device_id = ?1 AND r.state IN ('running', 'paused', 'halted') ORDER BY r.created_at LIMIT 1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// The OS version the device ran when its latest rollout took it (what its other slot holds),
/// if any rollout ever did.
pub fn latest_from_version(
    conn: &Connection,
    device_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT d.from_version FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id
             WHERE d.device_id = ?1 ORDER BY r.created_at DESC, r.id DESC LIMIT 1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// An active rollout installing this bundle, if any.
pub fn active_using_bundle(conn: &Connection, sha256: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id FROM rollouts WHERE bundle_sha256 = ?1 AND state IN ('running', 'paused', 'halted') LIMIT 1",
            [sha256],
            |r| r.get(0),
        )
        .optional()?)
}

/// Move a rollout to `state` with an optional reason.
pub fn set_state(
    conn: &Connection,
    id: &str,
    state: RolloutState,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET state = ?2, halt_reason = COALESCE(?3, halt_reason), updated_at = ?4 WHERE id = ?1",
        params![id, state, reason, now_unix()],
    )?;
    Ok(())
}

/// Record how many waves are released.
pub fn set_released_waves(conn: &Connection, id: &str, released: u32) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET released_waves = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, released, now_unix()],
    )?;
    Ok(())
}

/// Move one device of a rollout to `state`.
pub fn set_device_state(
    conn: &Connection,
    rollout_id: &str,
    device_id: &str,
    state: RolloutDeviceState,
    error: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollout_devices SET state = ?3, error = ?4, updated_at = ?5 WHERE rollout_id = ?1 AND device_id = ?2",
        params![rollout_id, device_id, state, error, now_unix()],
    )?;
    Ok(())
}

/// Note the bundle a rollback sent a device back to.
pub fn set_device_rollback(
    conn: &Connection,
    rollout_id: &str,
    device_id: &str,
    sha256: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollout_devices SET rollback_sha256 = ?3, updated_at = ?4 WHERE rollout_id = ?1 AND device_id = ?2",
        params![rollout_id, device_id, sha256, now_unix()],
    )?;
    Ok(())
}
