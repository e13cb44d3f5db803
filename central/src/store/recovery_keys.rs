//! Escrowed recovery keys, one per device, stored sealed by [`crate::escrow::EscrowKey`].

use crate::store::db::{params, Connection, OptionalExtension};

use super::StoreError;

/// A device's escrowed recovery key, still sealed.
#[derive(Debug, Clone)]
pub struct SealedRecoveryKey {
    /// The device.
    pub device_id: String,
    /// LUKS2 UUID of the data partition the key opens.
    pub luks_uuid: String,
    /// Nonce, ciphertext and tag.
    pub sealed: Vec<u8>,
    /// When central stored it (Unix seconds).
    pub stored_at: i64,
}

/// Store (or replace) a device's recovery key. Returns `false` when the device is unknown.
pub fn put(conn: &Connection, key: &SealedRecoveryKey) -> Result<bool, StoreError> {
    let known: Option<String> = conn
        .query_row(
            "SELECT id FROM devices WHERE id = ?1",
            [&key.device_id],
            |row| row.get(0),
        )
        .optional()?;
    if known.is_none() {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO recovery_keys (device_id, luks_uuid, sealed, stored_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id) DO UPDATE SET luks_uuid = excluded.luks_uuid, sealed = excluded.sealed,
         stored_at = excluded.stored_at",
        params![key.device_id, key.luks_uuid, key.sealed, key.stored_at],
    )?;
    Ok(true)
}

/// A device's recovery key, if it escrowed one.
pub fn get(conn: &Connection, device_id: &str) -> Result<Option<SealedRecoveryKey>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT device_id, luks_uuid, sealed, stored_at FROM recovery_keys WHERE device_id = ?1",
            [device_id],
            |row| {
                Ok(SealedRecoveryKey {
                    device_id: row.get(0)?,
                    luks_uuid: row.get(1)?,
                    sealed: row.get(2)?,
                    stored_at: row.get(3)?,
                })
            },
        )
        .optional()?)
}
