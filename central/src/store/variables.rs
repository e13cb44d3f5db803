//! Variables for Compose files as stored: one row per (scope, scope name, name), the scope
//! being the fleet (scope name empty), a site or a deployment; and the variables each app of a
//! device gets, computed from them and from the device and its site (the built-ins).
//!
//! Precedence on a device, least specific first: fleet, then the app's deployment, then the
//! device's site; the built-ins (`CAIRN_*`) are set last and no operator variable may use
//! their prefix. A per-device app gets no deployment variables.

use std::collections::{BTreeMap, HashMap};

use cairn_api::{VariableInfo, VariableScope};

use crate::store::db::{params, placeholders, Connection, OptionalExtension, Row, ToValue};

use super::sites::{self, Site};
use super::{devices, now_unix, Device, StoreError, Timestamp};

/// Prefix of the built-in variables, which operators may not set.
pub const BUILT_IN_PREFIX: &str = "CAIRN_";

/// The variables of one app on one device, by name.
pub type Variables = BTreeMap<String, String>;

const COLUMNS: &str = "scope_kind, scope_name, name, value, updated_by, updated_at";

fn from_row(row: &Row) -> crate::store::db::Result<VariableInfo> {
    let scope: String = row.get(0)?;
    Ok(VariableInfo {
        scope: VariableScope::from(scope.as_str()),
        scope_name: row.get(1)?,
        name: row.get(2)?,
        value: row.get(3)?,
        updated_by: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

/// Variables matching the filters (each `None` = any), by scope, scope name and name.
pub fn list(
    conn: &Connection,
    scope: Option<&VariableScope>,
    scope_name: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<VariableInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM variables
         WHERE scope_kind = COALESCE(?1, scope_kind) AND scope_name = COALESCE(?2, scope_name)
           AND name = COALESCE(?3, name)
         ORDER BY scope_kind, scope_name, name"
    ))?;
    let rows = stmt.query_map(
        params![scope.map(VariableScope::as_str), scope_name, name],
        from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One variable.
pub fn get(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
    name: &str,
) -> Result<Option<VariableInfo>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM variables WHERE scope_kind = ?1 AND scope_name = ?2 AND name = ?3"
            ),
            params![scope.as_str(), scope_name, name],
            from_row,
        )
        .optional()?)
}

/// How many variables a scope holds.
pub fn count(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM variables WHERE scope_kind = ?1 AND scope_name = ?2",
        params![scope.as_str(), scope_name],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Create or replace a variable; returns it.
pub fn upsert(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
    name: &str,
    value: &str,
    actor: &str,
) -> Result<VariableInfo, StoreError> {
    let now = Timestamp::from_unix_seconds(now_unix());
    conn.execute(
        "INSERT INTO variables (scope_kind, scope_name, name, value, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (scope_kind, scope_name, name) DO UPDATE SET value = ?4, updated_by = ?5, updated_at = ?6",
        params![scope.as_str(), scope_name, name, value, actor, now],
    )?;
    Ok(VariableInfo {
        scope: scope.clone(),
        scope_name: scope_name.to_owned(),
        name: name.to_owned(),
        value: value.to_owned(),
        updated_by: actor.to_owned(),
        updated_at: now,
    })
}

/// Remove a variable; false when there is none.
pub fn delete(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
    name: &str,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "DELETE FROM variables WHERE scope_kind = ?1 AND scope_name = ?2 AND name = ?3",
        params![scope.as_str(), scope_name, name],
    )? > 0)
}

/// Remove every variable of a site or deployment (it was removed); returns how many.
pub fn delete_scope(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM variables WHERE scope_kind = ?1 AND scope_name = ?2",
        params![scope.as_str(), scope_name],
    )?)
}

/// The name of the built-in variable of label `key` under `prefix`: the key upper-cased, every
/// character outside `[A-Z0-9]` replaced by `_`.
pub fn label_variable(prefix: &str, key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| {
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{key}")
}

/// Put the variables of `labels` under `prefix` into `out`; of two keys giving the same name,
/// the one sorting first wins.
fn put_labels(out: &mut Variables, prefix: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        out.entry(label_variable(prefix, key))
            .or_insert_with(|| value.clone());
    }
}

/// A degree value as central prints it in JSON (`8.0`, `47.3769`).
fn degrees(value: f64) -> String {
    serde_json::to_string(&value).unwrap_or_else(|_| value.to_string())
}

/// The built-ins of device `device_id` (without `CAIRN_APP`); `None` when there is no such
/// device. `CAIRN_SITE*` are absent when the device is at no site.
pub fn built_ins(conn: &Connection, device_id: &str) -> Result<Option<Variables>, StoreError> {
    let Some(device) = devices::get(conn, device_id)? else {
        return Ok(None);
    };
    let site = match device.site.as_deref() {
        Some(site) => sites::get(conn, site)?,
        None => None,
    };
    Ok(Some(built_ins_of(&device, site.as_ref())))
}

/// The built-ins of `device` at `site` (its site, if any and still there).
fn built_ins_of(device: &Device, site: Option<&Site>) -> Variables {
    let mut out = Variables::new();
    out.insert("CAIRN_DEVICE_ID".into(), device.id.clone());
    put_labels(&mut out, "CAIRN_DEVICE_LABEL_", &device.labels);
    if let Some(site) = site {
        out.insert("CAIRN_SITE".into(), site.name.clone());
        out.insert("CAIRN_SITE_LATITUDE".into(), degrees(site.latitude));
        out.insert("CAIRN_SITE_LONGITUDE".into(), degrees(site.longitude));
        put_labels(&mut out, "CAIRN_SITE_LABEL_", &site.labels);
    }
    out
}

/// The operator variables that can apply on device `device_id`: the fleet's, its site's and
/// those of the deployments that placed apps on it.
fn applicable(conn: &Connection, device_id: &str) -> Result<Vec<VariableInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM variables v
         WHERE v.scope_kind = 'fleet'
            OR (v.scope_kind = 'site' AND v.scope_name = (SELECT d.site FROM devices d WHERE d.id = ?1))
            OR (v.scope_kind = 'deployment' AND v.scope_name IN
                (SELECT a.deployment FROM device_apps a WHERE a.device_id = ?1 AND a.deployment IS NOT NULL))"
    ))?;
    let rows = stmt.query_map([device_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Merge the variables of app `app` (placed by `deployment`, if any) from the operator's
/// `applicable` ones and the device's `built_ins`, in the order of precedence.
pub fn merge(
    app: &str,
    deployment: Option<&str>,
    applicable: &[VariableInfo],
    built_ins: &Variables,
) -> Variables {
    let mut out = Variables::new();
    let layers = [
        (VariableScope::Fleet, None),
        (VariableScope::Deployment, deployment),
        (VariableScope::Site, None),
    ];
    for (scope, only) in layers {
        if scope == VariableScope::Deployment && only.is_none() {
            continue;
        }
        for v in applicable.iter().filter(|v| v.scope == scope) {
            if only.is_none_or(|name| v.scope_name == name) {
                out.insert(v.name.clone(), v.value.clone());
            }
        }
    }
    out.extend(built_ins.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.insert("CAIRN_APP".into(), app.to_owned());
    out
}

/// What the variables of each app of device `device_id` are computed from: its built-ins and
/// the operator variables that can apply there (empty when there is no such device).
pub fn sources_for_device(
    conn: &Connection,
    device_id: &str,
) -> Result<(Variables, Vec<VariableInfo>), StoreError> {
    let Some(built_ins) = built_ins(conn, device_id)? else {
        return Ok(Default::default());
    };
    Ok((built_ins, applicable(conn, device_id)?))
}

/// [`sources_for_device`] for each of `devices` (three queries whatever their number), by
/// device id. Each gets the fleet's variables, its site's, and those of every deployment with
/// an app on one of them ([`merge`] takes only an app's own deployment's).
pub fn sources_for_devices(
    conn: &Connection,
    devices: &[Device],
) -> Result<HashMap<String, (Variables, Vec<VariableInfo>)>, StoreError> {
    let mut site_names: Vec<&str> = devices.iter().filter_map(|d| d.site.as_deref()).collect();
    site_names.sort_unstable();
    site_names.dedup();
    let sites = sites::get_many(conn, &site_names)?;
    let ids: Vec<&dyn ToValue> = devices.iter().map(|d| &d.id as &dyn ToValue).collect();
    let names: Vec<&dyn ToValue> = site_names.iter().map(|n| n as &dyn ToValue).collect();
    let mut params = ids.clone();
    params.extend(names.iter().copied());
    let site_list = if names.is_empty() {
        "NULL".to_owned()
    } else {
        placeholders(names.len(), ids.len() + 1)
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM variables v
         WHERE v.scope_kind = 'fleet'
            OR (v.scope_kind = 'site' AND v.scope_name IN ({site_list}))
            OR (v.scope_kind = 'deployment' AND v.scope_name IN
                (SELECT a.deployment FROM device_apps a WHERE a.device_id IN ({}) AND a.deployment IS NOT NULL))",
        placeholders(ids.len(), 1)
    ))?;
    let rows = stmt.query_map(params.as_slice(), from_row)?;
    let all: Vec<VariableInfo> = rows.collect::<Result<_, _>>()?;
    Ok(devices
        .iter()
        .map(|device| {
            let site = device.site.as_deref().and_then(|s| sites.get(s));
            let applicable = all
                .iter()
                .filter(|v| {
                    v.scope != VariableScope::Site
                        || device.site.as_deref() == Some(v.scope_name.as_str())
                })
                .cloned()
                .collect();
            (device.id.clone(), (built_ins_of(device, site), applicable))
        })
        .collect())
}

/// The devices whose computed variables change when variable `name` of `scope`/`scope_name`
/// becomes `value` (`None`: removed): those with an app for which no more specific scope sets
/// the name. Read before the change is written.
pub fn devices_affected(
    conn: &Connection,
    scope: &VariableScope,
    scope_name: &str,
    name: &str,
    value: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut current: BTreeMap<(String, String), String> = BTreeMap::new();
    for v in list(conn, None, None, Some(name))? {
        current.insert((v.scope.as_str().to_owned(), v.scope_name), v.value);
    }
    let mut changed = current.clone();
    let key = (scope.as_str().to_owned(), scope_name.to_owned());
    match value {
        Some(value) => changed.insert(key, value.to_owned()),
        None => changed.remove(&key),
    };
    let effective = |values: &BTreeMap<(String, String), String>, site: &str, deployment: &str| {
        let at = |kind: &str, name: &str| values.get(&(kind.to_owned(), name.to_owned())).cloned();
        (!site.is_empty())
            .then(|| at("site", site))
            .flatten()
            .or_else(|| {
                (!deployment.is_empty())
                    .then(|| at("deployment", deployment))
                    .flatten()
            })
            .or_else(|| at("fleet", ""))
    };
    let mut stmt = conn.prepare_cached(
        "SELECT a.device_id, COALESCE(d.site, ''), COALESCE(a.deployment, '')
         FROM device_apps a JOIN devices d ON d.id = a.device_id
         WHERE ?1 = 'fleet' OR (?1 = 'site' AND d.site = ?2) OR (?1 = 'deployment' AND a.deployment = ?2)
         ORDER BY a.device_id",
    )?;
    let rows = stmt.query_map(params![scope.as_str(), scope_name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out: Vec<String> = Vec::new();
    for row in rows {
        let (device, site, deployment) = row?;
        let differs =
            effective(&current, &site, &deployment) != effective(&changed, &site, &deployment);
        if differs && out.last() != Some(&device) {
            out.push(device);
        }
    }
    Ok(out)
}

/// Devices at site `site` that run at least one app (their built-ins follow the site).
pub fn devices_with_apps_at_site(conn: &Connection, site: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT a.device_id FROM device_apps a JOIN devices d ON d.id = a.device_id
         WHERE d.site = ?1 ORDER BY a.device_id",
    )?;
    let rows = stmt.query_map([site], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Those of `device_ids` that run at least one app.
pub fn with_apps(conn: &Connection, device_ids: &[String]) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT COUNT(*) FROM device_apps WHERE device_id = ?1")?;
    let mut out = Vec::new();
    for id in device_ids {
        let n: i64 = stmt.query_row([id], |r| r.get(0))?;
        if n > 0 {
            out.push(id.clone());
        }
    }
    Ok(out)
}
