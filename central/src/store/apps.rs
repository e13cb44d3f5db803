//! Apps each device should run: one Compose file per (device, app name). Changing them bumps the
//! device's desired revision in the same transaction (see [`bump_revision`]).
//!
//! A deployment's app is not copied onto its devices: their rows name the deployment and the
//! generation it was placed at, and its Compose file and changes since are read from the
//! deployment's row ([`REVISION`], [`APP_COLUMNS`]).

use std::collections::{BTreeMap, HashMap};

use cairn_api::{AppSecretVersion, VariableInfo};

use crate::store::db::{params, placeholders, Connection, OptionalExtension, Row, ToValue};

use super::variables::Variables;
use super::{now_unix, Device, StoreError, Timestamp};

pub use cairn_api::DesiredApp;

/// A device's desired revision, as an SQL expression over a row of `devices`: its own counter
/// (bumped by every change of the device itself) plus, for each app a deployment placed on it,
/// the deployment's changes since it was placed. A deployment change (one write) thus moves
/// each of its devices exactly one revision on, as a per-device write would have. Removing a
/// placed app folds its changes into the counter first ([`super::deployments::delete_owned_app`],
/// [`super::deployments::delete`]), so a revision never goes back.
pub const REVISION: &str = "(devices.desired_revision + COALESCE((SELECT CAST(SUM(p.generation - a.placed_generation) AS BIGINT) \
    FROM device_apps a JOIN deployments p ON p.name = a.deployment WHERE a.device_id = devices.id), 0))";

/// The columns [`from_row`] reads, over `device_apps a LEFT JOIN deployments p ON p.name =
/// a.deployment`: a deployment's app takes its Compose file from the deployment, and its
/// generation moves on with each change of the deployment since placement.
const APP_COLUMNS: &str = "a.name, COALESCE(p.compose_yaml, a.compose_yaml), \
    a.generation + COALESCE(p.generation - a.placed_generation, 0), \
    CASE WHEN p.generation > a.placed_generation THEN p.updated_at ELSE a.updated_at END, a.deployment";

/// `device_apps a` joined with the deployment of each row (if any).
const APPS_JOINED: &str = "device_apps a LEFT JOIN deployments p ON p.name = a.deployment";

fn from_row(row: &Row) -> crate::store::db::Result<DesiredApp> {
    Ok(DesiredApp {
        name: row.get(0)?,
        compose_yaml: row.get(1)?,
        generation: row.get::<_, i64>(2)? as u64,
        updated_at: row.get(3)?,
        deployment: row.get(4)?,
        secrets: Vec::new(),
        variables: Default::default(),
    })
}

/// Fill in what each of `apps` (of device `device_id`) gets there: secret versions and
/// variables.
fn add_secrets_and_variables(
    conn: &Connection,
    device_id: &str,
    apps: &mut [DesiredApp],
) -> Result<(), StoreError> {
    let versions = super::secrets::versions_for_device(conn, device_id)?;
    let sources = super::variables::sources_for_device(conn, device_id)?;
    fill_in(apps, versions, &sources);
    Ok(())
}

/// Give each of `apps` its secret `versions` and the variables computed from `sources`.
fn fill_in(
    apps: &mut [DesiredApp],
    mut versions: BTreeMap<String, Vec<AppSecretVersion>>,
    (built_ins, applicable): &(Variables, Vec<VariableInfo>),
) {
    for app in apps {
        app.secrets = versions.remove(&app.name).unwrap_or_default();
        app.variables =
            super::variables::merge(&app.name, app.deployment.as_deref(), applicable, built_ins);
    }
}

/// The apps of a device, by name, each with the secret versions and variables it gets there.
pub fn list(conn: &Connection, device_id: &str) -> Result<Vec<DesiredApp>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {APP_COLUMNS} FROM {APPS_JOINED} WHERE a.device_id = ?1 ORDER BY a.name"
    ))?;
    let rows = stmt.query_map([device_id], from_row)?;
    let mut apps: Vec<DesiredApp> = rows.collect::<Result<_, _>>()?;
    add_secrets_and_variables(conn, device_id, &mut apps)?;
    Ok(apps)
}

/// [`list`] for each of `devices`, by device id, in five queries whatever their number: what
/// a change pushed to many devices reads.
pub fn list_many(
    conn: &Connection,
    devices: &[Device],
) -> Result<HashMap<String, Vec<DesiredApp>>, StoreError> {
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let mut all: HashMap<String, Vec<DesiredApp>> = HashMap::new();
    if ids.is_empty() {
        return Ok(all);
    }
    let params: Vec<&dyn ToValue> = ids.iter().map(|id| id as &dyn ToValue).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {APP_COLUMNS}, a.device_id FROM {APPS_JOINED} WHERE a.device_id IN ({}) ORDER BY a.device_id, a.name",
        placeholders(ids.len(), 1)
    ))?;
    let rows = stmt.query_map(params.as_slice(), |r| {
        Ok((r.get::<_, String>(5)?, from_row(r)?))
    })?;
    for row in rows {
        let (device, app) = row?;
        all.entry(device).or_default().push(app);
    }
    let mut versions = super::secrets::versions_for_devices(conn, &ids)?;
    let sources = super::variables::sources_for_devices(conn, devices)?;
    for device in devices {
        let apps = all.entry(device.id.clone()).or_default();
        if let Some(sources) = sources.get(&device.id) {
            fill_in(
                apps,
                versions.remove(&device.id).unwrap_or_default(),
                sources,
            );
        }
    }
    Ok(all)
}

/// One app of a device, with the secret versions and variables it gets there.
pub fn get(
    conn: &Connection,
    device_id: &str,
    name: &str,
) -> Result<Option<DesiredApp>, StoreError> {
    let app = conn
        .query_row(
            &format!(
                "SELECT {APP_COLUMNS} FROM {APPS_JOINED} WHERE a.device_id = ?1 AND a.name = ?2"
            ),
            params![device_id, name],
            from_row,
        )
        .optional()?;
    let Some(mut app) = app else {
        return Ok(None);
    };
    add_secrets_and_variables(conn, device_id, std::slice::from_mut(&mut app))?;
    Ok(Some(app))
}

/// Whether device `device_id` has app `name` (nothing else read).
pub fn exists(conn: &Connection, device_id: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM device_apps WHERE device_id = ?1 AND name = ?2",
            params![device_id, name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Insert or replace an app of a device at `generation`; returns it.
pub fn upsert(
    conn: &Connection,
    device_id: &str,
    name: &str,
    compose_yaml: &str,
    generation: u64,
) -> Result<DesiredApp, StoreError> {
    let now = Timestamp::from_unix_seconds(now_unix());
    conn.execute(
        "INSERT INTO device_apps (device_id, name, compose_yaml, generation, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_id, name) DO UPDATE SET compose_yaml = ?3, generation = ?4, updated_at = ?5",
        params![device_id, name, compose_yaml, generation as i64, now],
    )?;
    let mut app = DesiredApp {
        name: name.to_owned(),
        compose_yaml: compose_yaml.to_owned(),
        generation,
        updated_at: now,
        deployment: None,
        secrets: Vec::new(),
        variables: Default::default(),
    };
    add_secrets_and_variables(conn, device_id, std::slice::from_mut(&mut app))?;
    Ok(app)
}

/// Remove an app of a device; false when it had no such app.
pub fn delete(conn: &Connection, device_id: &str, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM device_apps WHERE device_id = ?1 AND name = ?2",
        params![device_id, name],
    )? > 0)
}

/// Bump a device's desired revision; returns the new one (`None`: no such device).
pub fn bump_revision(conn: &Connection, device_id: &str) -> Result<Option<u64>, StoreError> {
    Ok(conn
        .query_row(
            &format!("UPDATE devices SET desired_revision = desired_revision + 1 WHERE id = ?1 RETURNING {REVISION}"),
            [device_id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|r| r as u64))
}
