//! App secrets as stored: one row per scope (a deployment, narrowed or not to a site or a
//! device, or an operator's per-device app) holding the current version sealed by
//! [`crate::secrets::SecretVault`]. Which row a device's app gets: the device's own, else its
//! site's, else the deployment's.

use std::collections::{BTreeMap, HashMap};

use crate::secrets::SealedSecret;
use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{now_unix, StoreError, Timestamp};

pub use cairn_api::{AppSecretVersion, SecretInfo, SecretKind};

/// Whose app a secret belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A deployment's app (on every device it places, or narrowed to a site or a device).
    Deployment,
    /// An operator's per-device app.
    DeviceApp,
}

impl Owner {
    fn column(self) -> &'static str {
        match self {
            Owner::Deployment => "deployment",
            Owner::DeviceApp => "device_app",
        }
    }
}

/// Where a secret applies; `site` and `device_id` are empty when not narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretScope {
    /// Deployment or per-device app.
    pub owner: Owner,
    /// The app name (a deployment's app is named after it).
    pub app: String,
    /// Secret name.
    pub name: String,
    /// Narrowed to this site ("" = not).
    pub site: String,
    /// Narrowed to this device ("" = not; always set for a per-device app).
    pub device_id: String,
}

const COLUMNS: &str = "id, owner_kind, app, name, site, device_id, version, created_by, created_at, updated_by, updated_at, kind";

/// The kind stored in a row (the CHECK constraint allows no other).
fn kind_of(text: &str) -> SecretKind {
    SecretKind::parse(text).unwrap_or_default()
}

fn info_from_row(row: &Row) -> crate::store::db::Result<SecretInfo> {
    let owner: String = row.get(1)?;
    let app: String = row.get(2)?;
    let site: String = row.get(4)?;
    let device: String = row.get(5)?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(SecretInfo {
        id: row.get(0)?,
        deployment: (owner == "deployment").then(|| app.clone()),
        app,
        name: row.get(3)?,
        site: non_empty(site),
        device: non_empty(device),
        version: row.get::<_, i64>(6)? as u64,
        created_by: row.get(7)?,
        created_at: row.get(8)?,
        updated_by: row.get(9)?,
        updated_at: row.get(10)?,
        kind: kind_of(&row.get::<_, String>(11)?),
    })
}

/// The next version number: one counter for all secrets, never reused.
fn next_version(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "UPDATE secret_version_counter SET value = value + 1 WHERE id = 1 RETURNING value",
        params![],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// The kind the other scopes of `scope`'s name have, if any row of it exists.
pub fn kind_of_name(
    conn: &Connection,
    scope: &SecretScope,
) -> Result<Option<SecretKind>, StoreError> {
    let kind: Option<String> = conn
        .query_row(
            "SELECT kind FROM secrets WHERE owner_kind = ?1 AND app = ?2 AND name = ?3 LIMIT 1",
            params![scope.owner.column(), scope.app, scope.name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(kind.as_deref().map(kind_of))
}

/// Add a secret of `kind` with its first version, sealed by `seal(id, version)`; `None` when
/// the scope already has one.
pub fn insert<E>(
    conn: &Connection,
    scope: &SecretScope,
    kind: SecretKind,
    actor: &str,
    seal: impl FnOnce(&str, u64) -> Result<SealedSecret, E>,
) -> Result<Result<Option<SecretInfo>, E>, StoreError> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT id FROM secrets WHERE owner_kind = ?1 AND app = ?2 AND name = ?3 AND site = ?4 AND device_id = ?5",
            params![scope.owner.column(), scope.app, scope.name, scope.site, scope.device_id],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_some() {
        return Ok(Ok(None));
    }
    let id = super::new_id("sec");
    let version = next_version(conn)?;
    let sealed = match seal(&id, version) {
        Ok(sealed) => sealed,
        Err(e) => return Ok(Err(e)),
    };
    let now = Timestamp::from_unix_seconds(now_unix());
    conn.execute(
        "INSERT INTO secrets (id, owner_kind, app, name, site, device_id, version, kek_id, wrapped_key, ciphertext, created_by, created_at, updated_by, updated_at, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?11, ?12, ?13)",
        params![
            id,
            scope.owner.column(),
            scope.app,
            scope.name,
            scope.site,
            scope.device_id,
            version as i64,
            sealed.kek_id,
            sealed.wrapped_key,
            sealed.ciphertext,
            actor,
            now,
            kind.as_str()
        ],
    )?;
    Ok(Ok(get(conn, &id)?))
}

/// Give secret `id` a new version sealed by `seal(id, version)`; `None` when there is no such
/// secret.
pub fn update<E>(
    conn: &Connection,
    id: &str,
    actor: &str,
    seal: impl FnOnce(&str, u64) -> Result<SealedSecret, E>,
) -> Result<Result<Option<SecretInfo>, E>, StoreError> {
    if get(conn, id)?.is_none() {
        return Ok(Ok(None));
    }
    let version = next_version(conn)?;
    let sealed = match seal(id, version) {
        Ok(sealed) => sealed,
        Err(e) => return Ok(Err(e)),
    };
    conn.execute(
        "UPDATE secrets SET version = ?2, kek_id = ?3, wrapped_key = ?4, ciphertext = ?5, updated_by = ?6, updated_at = ?7 WHERE id = ?1",
        params![
            id,
            version as i64,
            sealed.kek_id,
            sealed.wrapped_key,
            sealed.ciphertext,
            actor,
            Timestamp::from_unix_seconds(now_unix())
        ],
    )?;
    Ok(Ok(get(conn, id)?))
}

/// One secret, without its value.
pub fn get(conn: &Connection, id: &str) -> Result<Option<SecretInfo>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM secrets WHERE id = ?1"),
            [id],
            info_from_row,
        )
        .optional()?)
}

/// Remove a secret; false when there is none.
pub fn delete(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM secrets WHERE id = ?1", [id])? > 0)
}

/// Remove every secret of a deployment (it was removed); returns how many.
pub fn delete_of_deployment(conn: &Connection, deployment: &str) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM secrets WHERE owner_kind = 'deployment' AND app = ?1",
        [deployment],
    )?)
}

/// Secrets matching the filters (each `None` = any), by app, name and scope.
pub fn list(
    conn: &Connection,
    deployment: Option<&str>,
    device_id: Option<&str>,
    app: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<SecretInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM secrets
         WHERE app = COALESCE(?1, app) AND (COALESCE(?1, '') = '' OR owner_kind = 'deployment')
           AND device_id = COALESCE(?2, device_id)
           AND app = COALESCE(?3, app)
           AND name = COALESCE(?4, name)
         ORDER BY app, name, site, device_id"
    ))?;
    let rows = stmt.query_map(params![deployment, device_id, app, name], info_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How specific a row is for a device: its own value beats its site's beats the deployment's.
fn rank(site: &str, device_id: &str) -> u8 {
    match (site.is_empty(), device_id.is_empty()) {
        (_, false) => 2,
        (false, true) => 1,
        (true, true) => 0,
    }
}

/// The rows that apply to the apps of the devices in the `IN` list that follows (joined over
/// their apps and sites), as (app, name, site, device, id, version, kind, the app's device).
const APPLYING: &str = "SELECT a.name, s.name, s.site, s.device_id, s.id, s.version, s.kind, a.device_id
     FROM device_apps a
     JOIN devices d ON d.id = a.device_id
     JOIN secrets s ON s.app = a.name AND (
         (a.deployment IS NULL AND s.owner_kind = 'device_app' AND s.device_id = a.device_id)
         OR (a.deployment IS NOT NULL AND s.owner_kind = 'deployment'
             AND (s.device_id = a.device_id OR (s.device_id = '' AND (s.site = '' OR s.site = d.site)))))
     WHERE a.device_id IN";

/// The row of a secret name that applies to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its id.
    pub id: String,
    /// Its current version.
    pub version: u64,
    /// What it is for.
    pub kind: SecretKind,
}

/// Per secret name, the row that applies.
pub type Applying = BTreeMap<String, Applied>;

/// Per app of device `device_id`, each secret name with the row that applies to the device.
pub fn applying(
    conn: &Connection,
    device_id: &str,
) -> Result<BTreeMap<String, Applying>, StoreError> {
    Ok(applying_many(conn, &[device_id])?
        .remove(device_id)
        .unwrap_or_default())
}

/// [`applying`] for each of `device_ids` (one query), by device.
pub fn applying_many(
    conn: &Connection,
    device_ids: &[&str],
) -> Result<HashMap<String, BTreeMap<String, Applying>>, StoreError> {
    if device_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let params: Vec<&dyn crate::store::db::ToValue> = device_ids
        .iter()
        .map(|id| id as &dyn crate::store::db::ToValue)
        .collect();
    let mut stmt = conn.prepare_cached(&format!(
        "{APPLYING} ({})",
        crate::store::db::placeholders(device_ids.len(), 1)
    ))?;
    let rows = stmt.query_map(params.as_slice(), |row| {
        let site: String = row.get(2)?;
        let device: String = row.get(3)?;
        Ok((
            row.get::<_, String>(7)?,
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            rank(&site, &device),
            Applied {
                id: row.get(4)?,
                version: row.get::<_, i64>(5)? as u64,
                kind: kind_of(&row.get::<_, String>(6)?),
            },
        ))
    })?;
    type Best = BTreeMap<String, BTreeMap<String, (u8, Applied)>>;
    let mut best: HashMap<String, Best> = HashMap::new();
    for row in rows {
        let (device, app, name, rank, applied) = row?;
        let slot = best
            .entry(device)
            .or_default()
            .entry(app)
            .or_default()
            .entry(name);
        match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((rank, applied));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if rank > o.get().0 {
                    o.insert((rank, applied));
                }
            }
        }
    }
    let ranked_out = |apps: Best| {
        apps.into_iter()
            .map(|(app, names)| {
                let names = names
                    .into_iter()
                    .map(|(name, (_, applied))| (name, applied))
                    .collect();
                (app, names)
            })
            .collect()
    };
    Ok(best
        .into_iter()
        .map(|(device, apps)| (device, ranked_out(apps)))
        .collect())
}

/// The secret versions the apps of device `device_id` get, by app.
pub fn versions_for_device(
    conn: &Connection,
    device_id: &str,
) -> Result<BTreeMap<String, Vec<AppSecretVersion>>, StoreError> {
    Ok(versions_of(applying(conn, device_id)?))
}

/// [`versions_for_device`] for each of `device_ids` (one query), by device.
pub fn versions_for_devices(
    conn: &Connection,
    device_ids: &[&str],
) -> Result<HashMap<String, BTreeMap<String, Vec<AppSecretVersion>>>, StoreError> {
    Ok(applying_many(conn, device_ids)?
        .into_iter()
        .map(|(device, applying)| (device, versions_of(applying)))
        .collect())
}

/// Per app, the version of each secret that applies.
fn versions_of(applying: BTreeMap<String, Applying>) -> BTreeMap<String, Vec<AppSecretVersion>> {
    applying
        .into_iter()
        .map(|(app, names)| {
            let versions = names
                .into_iter()
                .map(|(name, applied)| AppSecretVersion {
                    name,
                    version: applied.version,
                    kind: applied.kind,
                })
                .collect();
            (app, versions)
        })
        .collect()
}

/// A secret's sealed current version.
pub fn sealed(conn: &Connection, id: &str) -> Result<Option<(u64, SealedSecret)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT version, kek_id, wrapped_key, ciphertext FROM secrets WHERE id = ?1",
            [id],
            |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    SealedSecret {
                        kek_id: row.get(1)?,
                        wrapped_key: row.get(2)?,
                        ciphertext: row.get(3)?,
                    },
                ))
            },
        )
        .optional()?)
}

/// The devices whose desired state names secret `info`: those running its app in its scope for
/// which no more specific value of the same name exists (a device's own beats its site's beats
/// the deployment's).
pub fn devices_using(conn: &Connection, info: &SecretInfo) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.device_id FROM device_apps a JOIN devices d ON d.id = a.device_id
         WHERE a.name = ?1
           AND ((?2 = 1 AND a.deployment = ?1) OR (?2 = 0 AND a.deployment IS NULL))
           AND (?3 = '' OR d.site = ?3)
           AND (?4 = '' OR a.device_id = ?4)
           AND NOT EXISTS (
               SELECT 1 FROM secrets s WHERE s.owner_kind = ?5 AND s.app = ?1 AND s.name = ?6
                 AND ((?4 = '' AND s.device_id = a.device_id)
                   OR (?3 = '' AND ?4 = '' AND s.device_id = '' AND s.site <> '' AND s.site = d.site)))
         ORDER BY a.device_id",
    )?;
    let owner = if info.deployment.is_some() {
        Owner::Deployment
    } else {
        Owner::DeviceApp
    };
    let rows = stmt.query_map(
        params![
            info.app,
            i64::from(owner == Owner::Deployment),
            info.site.as_deref().unwrap_or(""),
            info.device.as_deref().unwrap_or(""),
            owner.column(),
            info.name
        ],
        |r| r.get::<_, String>(0),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A row's wrapped data key, as a re-wrap reads it (the value is not read).
#[derive(Debug, Clone)]
pub struct WrappedRow {
    /// Secret id.
    pub id: String,
    /// Its current version (part of the binding).
    pub version: u64,
    /// The key-encryption key that wrapped `wrapped_key`.
    pub kek_id: String,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
}

/// How many rows have a data key not wrapped by key `kek_id`.
pub fn count_not_wrapped_by(conn: &Connection, kek_id: &str) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM secrets WHERE kek_id <> ?1",
        [kek_id],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// Up to `limit` rows, by id after `after`, whose data key is not wrapped by key `kek_id`.
pub fn not_wrapped_by(
    conn: &Connection,
    kek_id: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<WrappedRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, version, kek_id, wrapped_key FROM secrets
         WHERE kek_id <> ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![kek_id, after, limit as i64], |row| {
        Ok(WrappedRow {
            id: row.get(0)?,
            version: row.get::<_, i64>(1)? as u64,
            kek_id: row.get(2)?,
            wrapped_key: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replace the wrapped data key of `row` by `new`, only if the row still has the version and
/// wrapped key that were read (a value set meanwhile has its own fresh seal); false otherwise.
pub fn set_wrapped_key(
    conn: &Connection,
    row: &WrappedRow,
    new: &crate::secrets::WrappedKey,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE secrets SET kek_id = ?5, wrapped_key = ?6
         WHERE id = ?1 AND version = ?2 AND kek_id = ?3 AND wrapped_key = ?4",
        params![
            row.id,
            row.version as i64,
            row.kek_id,
            row.wrapped_key,
            new.kek_id,
            new.wrapped_key
        ],
    )? > 0)
}

/// How many rows each key-encryption key wrapped, counted after writers in flight committed:
/// a no-op write first takes SQLite's write lock (on PostgreSQL `Store::run` holds the cluster
/// lock), so a row a replica is sealing right now is counted too. Call it in a transaction.
pub fn rows_by_kek_after_writers(conn: &Connection) -> Result<BTreeMap<String, u64>, StoreError> {
    conn.execute(
        "UPDATE secret_version_counter SET value = value WHERE id = 1",
        params![],
    )?;
    let mut stmt = conn
        .prepare_cached("SELECT kek_id, COUNT(*) FROM secrets GROUP BY kek_id ORDER BY kek_id")?;
    let rows = stmt.query_map(params![], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
