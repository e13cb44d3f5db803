//! The device registry.

use std::collections::BTreeMap;

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{now_unix, DesiredOs, Device, DeviceStatus, StoreError};

/// What an agent reports about itself at enrollment (already validated).
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    /// DMI serial.
    pub serial: String,
    /// TPM EK hash or "".
    pub tpm_ek_sha256: String,
    /// Host name.
    pub hostname: String,
    /// "tpm" or "software".
    pub key_storage: String,
    /// Agent version.
    pub agent_version: String,
    /// OS version.
    pub os_version: String,
    /// The proven TPM's attestation key (TPMT_PUBLIC) and EK certificate issuer.
    pub tpm: Option<ProvenTpmFacts>,
}

/// What enrollment proved about a device's TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenTpmFacts {
    /// The AK's TPMT_PUBLIC, to check its quotes.
    pub ak_public: Vec<u8>,
    /// The EK certificate's issuer DN.
    pub ek_issuer: String,
}

/// The columns [`from_row`] reads (the revision derived: [`super::apps::REVISION`]).
fn columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| {
        format!(
            "id, status, serial, tpm_ek_sha256, hostname, key_storage, agent_version, \
             os_version, token_id, created_at, approved_at, last_seen_at, cert_serial, cert_expires_at, \
             {}, config, desired_os, site, labels, wipe_requested_at, wiped_at",
            super::apps::REVISION
        )
    })
}

fn from_row(row: &Row) -> crate::store::db::Result<Device> {
    let config: String = row.get(15)?;
    let config: BTreeMap<String, String> =
        serde_json::from_str(&config).map_err(|e| crate::store::db::Error::conversion(15, e))?;
    Ok(Device {
        id: row.get(0)?,
        status: row.get(1)?,
        serial: row.get(2)?,
        tpm_ek_sha256: row.get(3)?,
        hostname: row.get(4)?,
        key_storage: row.get(5)?,
        agent_version: row.get(6)?,
        os_version: row.get(7)?,
        token_id: row.get(8)?,
        created_at: row.get(9)?,
        approved_at: row.get(10)?,
        last_seen_at: row.get(11)?,
        online: false,
        cert_serial: row.get(12)?,
        cert_expires_at: row.get(13)?,
        desired_revision: row.get::<_, i64>(14)? as u64,
        config,
        desired_os: desired_os_from_column(row, 16)?,
        site: row.get(17)?,
        labels: string_map_from_column(row, 18)?,
        wipe_requested_at: row.get(19)?,
        wiped_at: row.get(20)?,
    })
}

fn string_map_from_column(
    row: &Row,
    index: usize,
) -> crate::store::db::Result<BTreeMap<String, String>> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| crate::store::db::Error::conversion(index, e))
}

fn desired_os_from_column(row: &Row, index: usize) -> crate::store::db::Result<Option<DesiredOs>> {
    let text: Option<String> = row.get(index)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| crate::store::db::Error::conversion(index, e))
    })
    .transpose()
}

/// The devices of `ids` that exist, in no particular order (one query).
pub fn get_many(conn: &Connection, ids: &[String]) -> Result<Vec<Device>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let params: Vec<&dyn crate::store::db::ToValue> = ids
        .iter()
        .map(|id| id as &dyn crate::store::db::ToValue)
        .collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM devices WHERE id IN ({})",
        columns(),
        crate::store::db::placeholders(ids.len(), 1)
    ))?;
    let rows = stmt.query_map(params.as_slice(), from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Insert a new device.
pub fn insert(
    conn: &Connection,
    id: &str,
    status: DeviceStatus,
    key_sha256: &str,
    facts: &DeviceFacts,
    token_id: &str,
) -> Result<(), StoreError> {
    let now = now_unix();
    let approved_at = (status == DeviceStatus::Active).then_some(now);
    conn.execute(
        "INSERT INTO devices (id, status, key_sha256, serial, tpm_ek_sha256, hostname, key_storage,
            agent_version, os_version, token_id, created_at, approved_at, ak_public, ek_issuer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            id,
            status,
            key_sha256,
            facts.serial,
            facts.tpm_ek_sha256,
            facts.hostname,
            facts.key_storage,
            facts.agent_version,
            facts.os_version,
            token_id,
            now,
            approved_at,
            facts.tpm.as_ref().map(|t| hex::encode(&t.ak_public)),
            facts.tpm.as_ref().map(|t| t.ek_issuer.clone())
        ],
    )?;
    Ok(())
}
/// What a call by device `id` needs to know about it, in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Registry status.
    pub status: DeviceStatus,
    /// The proven TPM's attestation key (TPMT_PUBLIC), if it has one.
    pub ak_public: Option<Vec<u8>>,
    /// A revoked device has a crypto-erase ordered that it has not reported done.
    pub wipe_pending: bool,
}

/// [`Access`] for device `id` (None: not in the registry).
pub fn access(conn: &Connection, id: &str) -> Result<Option<Access>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT status, ak_public,
                    CASE WHEN status = 'revoked' AND wipe_requested_at IS NOT NULL
                         AND wiped_at IS NULL THEN 1 ELSE 0 END
             FROM devices WHERE id = ?1",
            [id],
            |row| {
                let ak: Option<String> = row.get(1)?;
                Ok(Access {
                    status: row.get(0)?,
                    ak_public: ak
                        .filter(|t| !t.is_empty())
                        .and_then(|t| hex::decode(t).ok()),
                    wipe_pending: row.get::<_, i64>(2)? == 1,
                })
            },
        )
        .optional()?)
}

/// Order a device's crypto-erase (it must be revoked); false when it was ordered before.
pub fn order_wipe(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE devices SET wipe_requested_at = ?2 WHERE id = ?1 AND wipe_requested_at IS NULL",
        params![id, now],
    )? > 0)
}

/// Record that the device destroyed its data key; false when no wipe was pending.
pub fn wipe_done(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE devices SET wiped_at = ?2 WHERE id = ?1 AND status = 'revoked'
            AND wipe_requested_at IS NOT NULL AND wiped_at IS NULL",
        params![id, now],
    )? > 0)
}

/// One device by id.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Device>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {} FROM devices WHERE id = ?1", columns()),
            [id],
            from_row,
        )
        .optional()?)
}

/// The device whose key has this SHA-256 (of its SubjectPublicKeyInfo).
pub fn by_key(conn: &Connection, key_sha256: &str) -> Result<Option<Device>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {} FROM devices WHERE key_sha256 = ?1", columns()),
            [key_sha256],
            from_row,
        )
        .optional()?)
}

/// A revoked device whose proven TPM has this EK, if any.
pub fn revoked_with_ek(conn: &Connection, ek_sha256: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id FROM devices WHERE tpm_ek_sha256 = ?1 AND status = 'revoked' LIMIT 1",
            [ek_sha256],
            |r| r.get(0),
        )
        .optional()?)
}

/// Only the status of a device (the hot path of every agent call).
pub fn status(conn: &Connection, id: &str) -> Result<Option<DeviceStatus>, StoreError> {
    Ok(conn
        .query_row("SELECT status FROM devices WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// All devices, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<Device>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM devices ORDER BY created_at, id",
        columns()
    ))?;
    let rows = stmt.query_map(crate::params![], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Move a device to `status`, stamping approval or revocation time.
pub fn set_status(conn: &Connection, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
    let now = now_unix();
    match status {
        DeviceStatus::Active => conn.execute(
            "UPDATE devices SET status = 'active', approved_at = ?2 WHERE id = ?1",
            params![id, now],
        )?,
        DeviceStatus::Revoked => conn.execute(
            "UPDATE devices SET status = 'revoked', revoked_at = ?2 WHERE id = ?1",
            params![id, now],
        )?,
        DeviceStatus::Pending => {
            conn.execute("UPDATE devices SET status = 'pending' WHERE id = ?1", [id])?
        }
        DeviceStatus::Other(value) => {
            // Only the statuses above can be stored.
            return Err(StoreError::Corrupt {
                field: "devices.status",
                value,
            });
        }
    };
    Ok(())
}

/// Record the latest certificate issued to a device.
pub fn set_certificate(
    conn: &Connection,
    id: &str,
    serial_hex: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE devices SET cert_serial = ?2, cert_expires_at = ?3 WHERE id = ?1",
        params![id, serial_hex, expires_at],
    )?;
    Ok(())
}

/// Refresh the self-reported facts (not serial or EK: those are identity, fixed at enrollment).
pub fn update_reported(conn: &Connection, id: &str, facts: &DeviceFacts) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE devices SET hostname = ?2, agent_version = ?3, os_version = ?4 WHERE id = ?1",
        params![id, facts.hostname, facts.agent_version, facts.os_version],
    )?;
    Ok(())
}

/// Write many last-seen times in one transaction.
pub fn set_last_seen(conn: &mut Connection, seen: &[(String, i64)]) -> Result<(), StoreError> {
    // Many rows per statement: on PostgreSQL each statement is a round trip (and the batch
    // holds the replicas' registry lock), so 10k heartbeats must not cost 10k of them.
    const ROWS_PER_STATEMENT: usize = 500;
    let tx = conn.transaction()?;
    for chunk in seen.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "SELECT ?{} AS id, CAST(?{} AS BIGINT) AS at",
                    2 * i + 1,
                    2 * i + 2
                )
            })
            .collect();
        let sql = format!(
            "UPDATE devices SET last_seen_at = seen.at FROM ({}) AS seen WHERE devices.id = seen.id",
            rows.join(" UNION ALL ")
        );
        let values: Vec<crate::store::db::Value> = chunk
            .iter()
            .flat_map(|(id, at)| {
                [
                    crate::store::db::Value::Text(id.clone()),
                    crate::store::db::Value::Int(*at),
                ]
            })
            .collect();
        tx.execute(&sql, crate::store::db::as_params(&values).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Replace a device's config and bump its desired revision; returns the new revision.
pub fn set_config(
    conn: &Connection,
    id: &str,
    config: &BTreeMap<String, String>,
) -> Result<Option<u64>, StoreError> {
    let text = serde_json::to_string(config).expect("a string map always serialises");
    Ok(conn
        .query_row(
            &format!(
                "UPDATE devices SET config = ?2, desired_revision = desired_revision + 1 WHERE id = ?1 RETURNING {}",
                super::apps::REVISION
            ),
            params![id, text],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|r| r as u64))
}

/// Set (or clear) the OS update a device should install and bump its desired revision; returns
/// the new revision (`None`: no such device).
pub fn set_desired_os(
    conn: &Connection,
    id: &str,
    os: Option<&DesiredOs>,
) -> Result<Option<u64>, StoreError> {
    let text = os.map(|os| serde_json::to_string(os).expect("an OS update always serialises"));
    Ok(conn
        .query_row(
            &format!(
                "UPDATE devices SET desired_os = ?2, desired_revision = desired_revision + 1 WHERE id = ?1 RETURNING {}",
                super::apps::REVISION
            ),
            params![id, text],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|r| r as u64))
}

/// Whether the registry already holds `version` as the device's OS version (a reconnecting
/// device's first heartbeat then needs no write).
pub fn has_os_version(conn: &Connection, id: &str, version: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM devices WHERE id = ?1 AND os_version = ?2",
            params![id, version],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Record the OS version a device reported, when it changed; true when a row changed.
pub fn set_os_version(conn: &Connection, id: &str, version: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE devices SET os_version = ?2 WHERE id = ?1 AND os_version <> ?2",
        params![id, version],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::params;
    use crate::store::Timestamp;

    #[test]
    fn heartbeat_times_are_written_in_batches() {
        let (store, _dir) = crate::store::test_store();
        store
            .run_blocking(|conn| {
                conn.execute(
                    "INSERT INTO enrollment_tokens (id, name, secret_sha256, policy, created_at, expires_at)
                     VALUES ('tok_1', 't', 's', 'auto', 0, 99)",
                    params![],
                )?;
                // More devices than one statement carries, so the batching is exercised.
                let ids: Vec<String> = (0..1203).map(|i| format!("dev_{i:05}")).collect();
                for id in &ids {
                    insert(conn, id, DeviceStatus::Active, &format!("key-{id}"), &DeviceFacts::default(), "tok_1")?;
                }
                let seen: Vec<(String, i64)> = ids.iter().enumerate().map(|(i, id)| (id.clone(), 1000 + i as i64)).collect();
                set_last_seen(conn, &seen)?;
                assert_eq!(get(conn, "dev_01202")?.unwrap().last_seen_at, Some(Timestamp::from_unix_seconds(2202)));
                assert_eq!(get(conn, "dev_00007")?.unwrap().last_seen_at, Some(Timestamp::from_unix_seconds(1007)));
                Ok(())
            })
            .unwrap();
    }
}
