//! Sites (name, labels, coordinates), named regions (polygons), and the site and labels of
//! each device.

use std::collections::BTreeMap;

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{json_column, now_unix, StoreError};
use crate::placement::geo::Point;

pub use cairn_api::{Region, Site};

fn site_from_row(row: &Row) -> crate::store::db::Result<Site> {
    Ok(Site {
        name: row.get(0)?,
        labels: json_column(row, 1)?,
        latitude: row.get(2)?,
        longitude: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

const SITE_COLUMNS: &str = "name, labels, latitude, longitude, created_at, updated_at";

/// Every site, by name.
pub fn list(conn: &Connection) -> Result<Vec<Site>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY name"))?;
    let rows = stmt.query_map(crate::params![], site_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One site.
pub fn get(conn: &Connection, name: &str) -> Result<Option<Site>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SITE_COLUMNS} FROM sites WHERE name = ?1"),
            [name],
            site_from_row,
        )
        .optional()?)
}

/// The sites of `names` that exist, by name (one query).
pub fn get_many(
    conn: &Connection,
    names: &[&str],
) -> Result<std::collections::HashMap<String, Site>, StoreError> {
    if names.is_empty() {
        return Ok(Default::default());
    }
    let params: Vec<&dyn crate::store::db::ToValue> = names
        .iter()
        .map(|n| n as &dyn crate::store::db::ToValue)
        .collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SITE_COLUMNS} FROM sites WHERE name IN ({})",
        crate::store::db::placeholders(names.len(), 1)
    ))?;
    let rows = stmt.query_map(params.as_slice(), site_from_row)?;
    rows.map(|r| Ok(r.map(|site| (site.name.clone(), site))?))
        .collect()
}

/// Add a site; `None` when the name is taken.
pub fn insert(
    conn: &Connection,
    name: &str,
    labels: &BTreeMap<String, String>,
    at: Point,
) -> Result<Option<Site>, StoreError> {
    let now = now_unix();
    let labels_text = serde_json::to_string(labels).expect("a string map always serialises");
    let inserted = conn.execute(
        "INSERT INTO sites (name, labels, latitude, longitude, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (name) DO NOTHING",
        params![name, labels_text, at.latitude, at.longitude, now],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    get(conn, name)
}

/// Replace a site's labels and location; `None`: no such site.
pub fn update(
    conn: &Connection,
    name: &str,
    labels: &BTreeMap<String, String>,
    at: Point,
) -> Result<Option<Site>, StoreError> {
    let labels_text = serde_json::to_string(labels).expect("a string map always serialises");
    let changed = conn.execute(
        "UPDATE sites SET labels = ?2, latitude = ?3, longitude = ?4, updated_at = ?5 WHERE name = ?1",
        params![name, labels_text, at.latitude, at.longitude, now_unix()],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    get(conn, name)
}

/// Remove a site; false when there is none.
pub fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM sites WHERE name = ?1", [name])? > 0)
}

/// Ids of the devices at a site.
pub fn device_ids(conn: &Connection, site: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id FROM devices WHERE site = ?1 ORDER BY id")?;
    let rows = stmt.query_map([site], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Number of devices per site.
pub fn device_counts(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT site, COUNT(*) FROM devices WHERE site IS NOT NULL GROUP BY site",
    )?;
    let rows = stmt.query_map(crate::params![], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Put a device at a site (or at none); false when there is no such device.
pub fn set_device_site(
    conn: &Connection,
    device_id: &str,
    site: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE devices SET site = ?2 WHERE id = ?1",
        params![device_id, site],
    )? > 0)
}

/// Replace a device's labels; false when there is no such device.
pub fn set_device_labels(
    conn: &Connection,
    device_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(labels).expect("a string map always serialises");
    Ok(conn.execute(
        "UPDATE devices SET labels = ?2 WHERE id = ?1",
        params![device_id, text],
    )? > 0)
}

fn region_from_row(row: &Row) -> crate::store::db::Result<Region> {
    Ok(Region {
        name: row.get(0)?,
        points: json_column(row, 1)?,
        created_at: row.get(2)?,
    })
}

/// Every region, by name.
pub fn list_regions(conn: &Connection) -> Result<Vec<Region>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT name, points, created_at FROM regions ORDER BY name")?;
    let rows = stmt.query_map(crate::params![], region_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One region.
pub fn get_region(conn: &Connection, name: &str) -> Result<Option<Region>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name, points, created_at FROM regions WHERE name = ?1",
            [name],
            region_from_row,
        )
        .optional()?)
}

/// Add a region (points already validated); `None` when the name is taken.
pub fn insert_region(
    conn: &Connection,
    name: &str,
    points: &[Point],
) -> Result<Option<Region>, StoreError> {
    let text = serde_json::to_string(points).expect("points always serialise");
    let inserted = conn.execute(
        "INSERT INTO regions (name, points, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
        params![name, text, now_unix()],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    get_region(conn, name)
}

/// Remove a region; false when there is none.
pub fn delete_region(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM regions WHERE name = ?1", [name])? > 0)
}
