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
        // Apps of a removed deployment of this name the scheduler has not taken away yet
        // would read this one's Compose file: generation 1 moves their devices on for it.
        "INSERT INTO deployments (name, compose_yaml, placement, created_by, created_at, updated_at, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, CASE WHEN EXISTS (SELECT 1 FROM device_apps WHERE deployment = ?1) THEN 1 ELSE 0 END)
         ON CONFLICT (name) DO NOTHING",
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
        // A new Compose file is a new generation: every device of the deployment moves one
        // revision on (store::apps::REVISION) without a write of its own.
        "UPDATE deployments SET generation = generation + CASE WHEN compose_yaml = ?2 THEN 0 ELSE 1 END,
             compose_yaml = ?2, placement = ?3, updated_at = ?4 WHERE name = ?1",
        params![name, compose_yaml, text, now_unix()],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    get(conn, name)
}

/// Remove a deployment row; false when none. Its apps stay on its devices until the scheduler
/// removes them (one revision step each), frozen as they are now: their Compose file and
/// their changes since placement move from the deployment into the rows and the devices' own
/// counters, so no device's revision or app changes when the row goes.
pub fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.execute(
        "UPDATE devices SET desired_revision = desired_revision + (
             SELECT p.generation - a.placed_generation FROM device_apps a JOIN deployments p ON p.name = a.deployment
             WHERE a.device_id = devices.id AND a.deployment = ?1)
         WHERE id IN (SELECT device_id FROM device_apps WHERE deployment = ?1)",
        [name],
    )?;
    conn.execute(
        "UPDATE device_apps SET
             compose_yaml = (SELECT p.compose_yaml FROM deployments p WHERE p.name = ?1),
             generation = generation + (SELECT p.generation FROM deployments p WHERE p.name = ?1) - placed_generation,
             placed_generation = 0
         WHERE deployment = ?1",
        [name],
    )?;
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
    let mut stmt = conn.prepare_cached(
        "SELECT a.device_id, a.name, a.deployment, COALESCE(p.compose_yaml, a.compose_yaml)
         FROM device_apps a LEFT JOIN deployments p ON p.name = a.deployment ORDER BY a.device_id, a.name",
    )?;
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

/// Place a deployment's app on a device at `generation` (the device revision). The row keeps
/// the deployment's current generation; its Compose file is read from the deployment
/// (store::apps), the copy here is only what the row held when the deployment is removed.
pub fn upsert_owned_app(
    conn: &Connection,
    device_id: &str,
    deployment: &str,
    compose_yaml: &str,
    generation: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO device_apps (device_id, name, compose_yaml, generation, updated_at, deployment, placed_generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?2, (SELECT generation FROM deployments WHERE name = ?2))
         ON CONFLICT (device_id, name) DO UPDATE SET compose_yaml = ?3, generation = ?4, updated_at = ?5, deployment = ?2,
             placed_generation = (SELECT generation FROM deployments WHERE name = ?2)",
        params![device_id, deployment, compose_yaml, generation as i64, now_unix()],
    )?;
    Ok(())
}

/// Remove a deployment's app from a device (an operator's app of that name stays). The
/// deployment's changes since placement move into the device's own counter first, so its
/// revision does not go back (store::apps::REVISION).
pub fn delete_owned_app(
    conn: &Connection,
    device_id: &str,
    deployment: &str,
) -> Result<bool, StoreError> {
    conn.execute(
        "UPDATE devices SET desired_revision = desired_revision + COALESCE((
             SELECT p.generation - a.placed_generation FROM device_apps a JOIN deployments p ON p.name = a.deployment
             WHERE a.device_id = ?1 AND a.name = ?2 AND a.deployment = ?2), 0)
         WHERE id = ?1",
        params![device_id, deployment],
    )?;
    Ok(conn.execute(
        "DELETE FROM device_apps WHERE device_id = ?1 AND name = ?2 AND deployment = ?2",
        params![device_id, deployment],
    )? > 0)
}
