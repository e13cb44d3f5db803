//! Deployments (an app plus where it runs) and the per-device app rows they own.
//!
//! The scheduler ([`crate::placement::scheduler`]) turns a deployment into `device_apps` rows
//! marked with its name; operators' own per-device apps have no owner, and neither side may
//! change the other's rows.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{json_column, now_unix, StoreError};
use crate::placement::spec::Placement;

pub use cairn_api::Deployment;

fn from_row(row: &Row) -> crate::store::db::Result<Deployment> {
    Ok(Deployment {
        name: row.get(0)?,
        compose_yaml: row.get(1)?,
        placement: json_column(row, 2)?,
        created_by: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

const COLUMNS: &str = "name, compose_yaml, placement, created_by, created_at, updated_at";

/// Every deployment, by name.
pub fn list(conn: &Connection) -> Result<Vec<Deployment>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM deployments ORDER BY name"))?;
    let rows = stmt.query_map(crate::params![], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One deployment.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Deployment>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM deployments WHERE name = ?1"),
            [name],
            from_row,
        )
        .optional()?)
}

/// Add a deployment; `None` when the name is taken.
pub fn insert(
    conn: &Connection,
    name: &str,
    compose_yaml: &str,
    placement: &Placement,
    created_by: &str,
) -> Result<Option<Deployment>, StoreError> {
    let text = serde_json::to_string(placement).expect("a placement always serialises");
    let inserted = conn.execute(
        "INSERT INTO deployments (name, compose_yaml, placement, created_by, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (name) DO NOTHING",
        params![name, compose_yaml, text, created_by, now_unix()],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    get(conn, name)
}

/// Replace a deployment's app and placement; `None`: no such deployment.
pub fn update(
    conn: &Connection,
    name: &str,
    compose_yaml: &str,
    placement: &Placement,
) -> Result<Option<Deployment>, StoreError> {
    let text = serde_json::to_string(placement).expect("a placement always serialises");
    let changed = conn.execute(
        "UPDATE deployments SET compose_yaml = ?2, placement = ?3, updated_at = ?4 WHERE name = ?1",
        params![name, compose_yaml, text, now_unix()],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    get(conn, name)
}

/// Remove a deployment row (its device apps are removed by the caller); false when none.
pub fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM deployments WHERE name = ?1", [name])? > 0)
}

/// One app row of a device, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    /// The device.
    pub device_id: String,
    /// App name.
    pub name: String,
    /// Owning deployment (`None`: an operator's per-device app).
    pub deployment: Option<String>,
    /// Its Compose file.
    pub compose_yaml: String,
}

/// Every app of every device (the scheduler's view).
pub fn all_app_rows(conn: &Connection) -> Result<Vec<AppRow>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT device_id, name, deployment, compose_yaml FROM device_apps ORDER BY device_id, name")?;
    let rows = stmt.query_map(crate::params![], |r| {
        Ok(AppRow {
            device_id: r.get(0)?,
            name: r.get(1)?,
            deployment: r.get(2)?,
            compose_yaml: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Devices holding an operator's own app (no deployment) with this name.
pub fn devices_with_unowned_app(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT device_id FROM device_apps WHERE name = ?1 AND deployment IS NULL ORDER BY device_id")?;
    let rows = stmt.query_map([name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any deployment-owned app row exists.
pub fn any_placed(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM device_apps WHERE deployment IS NOT NULL)",
        crate::params![],
        |r| r.get(0),
    )?)
}

/// Devices a deployment placed its app on.
pub fn placed_devices(conn: &Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_id FROM device_apps WHERE deployment = ?1 ORDER BY device_id",
    )?;
    let rows = stmt.query_map([name], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Insert or replace a deployment's app on a device at `generation` (the device revision).
pub fn upsert_owned_app(
    conn: &Connection,
    device_id: &str,
    deployment: &str,
    compose_yaml: &str,
    generation: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO device_apps (device_id, name, compose_yaml, generation, updated_at, deployment) VALUES (?1, ?2, ?3, ?4, ?5, ?2)
         ON CONFLICT (device_id, name) DO UPDATE SET compose_yaml = ?3, generation = ?4, updated_at = ?5, deployment = ?2",
        params![device_id, deployment, compose_yaml, generation as i64, now_unix()],
    )?;
    Ok(())
}

/// Remove a deployment's app from a device (an operator's app of that name stays).
pub fn delete_owned_app(
    conn: &Connection,
    device_id: &str,
    deployment: &str,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM device_apps WHERE device_id = ?1 AND name = ?2 AND deployment = ?2",
        params![device_id, deployment],
    )? > 0)
}
