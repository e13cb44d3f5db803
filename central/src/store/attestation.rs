//! Each device's remote-attestation record: the last verdict on its boot, the firmware reference
//! pinned at its first attestation (trust on first use), the UKI PCR 11 values learned per OS
//! version, and what its last failed boot measured, which an admin may accept.
//!
//! Encodings are `cairn_attest::appraise::Reference::encode` for references and "version hex"
//! lines for UKI values; this module stores them and does not interpret them.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::StoreError;

/// A device's boot was verified by its last quote.
pub const VERIFIED: &str = "verified";
/// A device's last quote failed appraisal: it is quarantined.
pub const FAILED: &str = "failed";

/// One device's attestation record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationRecord {
    /// The device.
    pub device_id: String,
    /// [`VERIFIED`] or [`FAILED`].
    pub state: String,
    /// Why it failed ("PCR 7: ..."); empty when verified.
    pub detail: String,
    /// When the last quote was appraised (Unix seconds).
    pub checked_at: i64,
    /// When a quote last verified (Unix seconds).
    pub verified_at: Option<i64>,
    /// The pinned firmware reference; `None` until the first verified quote or after a reset.
    pub reference: Option<String>,
    /// Learned UKI PCR 11 values, "version hex" per line.
    pub uki: String,
    /// The firmware reference the last failed boot measured (what "accept" pins).
    pub pending_reference: Option<String>,
    /// The "version hex" UKI value the last failed boot measured.
    pub pending_uki: Option<String>,
    /// The OS version of the last verified quote (or of the accepted UKI value); `None` until
    /// the first one or after a reset.
    pub os_version: Option<String>,
}

const COLUMNS: &str = "device_id, state, detail, checked_at, verified_at, reference, uki, \
    pending_reference, pending_uki, os_version";

fn from_row(row: &Row) -> crate::store::db::Result<AttestationRecord> {
    Ok(AttestationRecord {
        device_id: row.get(0)?,
        state: row.get(1)?,
        detail: row.get(2)?,
        checked_at: row.get(3)?,
        verified_at: row.get(4)?,
        reference: row.get(5)?,
        uki: row.get(6)?,
        pending_reference: row.get(7)?,
        pending_uki: row.get(8)?,
        os_version: row.get(9)?,
    })
}

/// A device's record, if it ever answered a quote.
pub fn get(conn: &Connection, device_id: &str) -> Result<Option<AttestationRecord>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM device_attestation WHERE device_id = ?1"),
            [device_id],
            from_row,
        )
        .optional()?)
}

/// One device's (device id, state, detail, verified_at), as [`states`] lists them.
pub type StateRow = (String, String, String, Option<i64>);

/// Every device's state, detail and last verification time (for lists and counts).
pub fn states(conn: &Connection) -> Result<Vec<StateRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, state, detail, verified_at FROM device_attestation ORDER BY device_id",
    )?;
    let rows = stmt.query_map(crate::params![], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The devices whose last quote failed (quarantined), for the scheduler.
pub fn failed_device_ids(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT device_id FROM device_attestation WHERE state = ?1")?;
    let rows = stmt.query_map([FAILED], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Record a verified quote of OS `os_version`; `reference` and `uki` are the (possibly newly
/// learned) values to keep. Clears any pending values.
pub fn record_verified(
    conn: &Connection,
    device_id: &str,
    now: i64,
    reference: &str,
    uki: &str,
    os_version: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO device_attestation (device_id, state, detail, checked_at, verified_at,
            reference, uki, pending_reference, pending_uki, os_version)
         VALUES (?1, ?2, '', ?3, ?3, ?4, ?5, NULL, NULL, ?6)
         ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, detail = '',
            checked_at = excluded.checked_at, verified_at = excluded.verified_at,
            reference = excluded.reference, uki = excluded.uki,
            pending_reference = NULL, pending_uki = NULL, os_version = excluded.os_version",
        params![device_id, VERIFIED, now, reference, uki, os_version],
    )?;
    Ok(())
}

/// Record a failed quote with what the boot measured (when the log was consistent enough to
/// say). Returns the previous state (`None` for a device never attested).
pub fn record_failed(
    conn: &Connection,
    device_id: &str,
    now: i64,
    detail: &str,
    pending_reference: Option<&str>,
    pending_uki: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let previous: Option<String> = conn
        .query_row(
            "SELECT state FROM device_attestation WHERE device_id = ?1",
            [device_id],
            |row| row.get(0),
        )
        .optional()?;
    conn.execute(
        "INSERT INTO device_attestation (device_id, state, detail, checked_at, pending_reference,
            pending_uki)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, detail = excluded.detail,
            checked_at = excluded.checked_at, pending_reference = excluded.pending_reference,
            pending_uki = excluded.pending_uki",
        params![
            device_id,
            FAILED,
            detail,
            now,
            pending_reference,
            pending_uki
        ],
    )?;
    Ok(previous)
}

/// An admin accepts what the last failed boot measured: it becomes the reference (and its UKI
/// value a learned one). Returns the record as it was before, with what was accepted; `None`
/// when there is nothing to accept.
pub fn accept_pending(
    conn: &Connection,
    device_id: &str,
) -> Result<Option<AttestationRecord>, StoreError> {
    let Some(record) = get(conn, device_id)? else {
        return Ok(None);
    };
    if record.state != FAILED
        || (record.pending_reference.is_none() && record.pending_uki.is_none())
    {
        return Ok(None);
    }
    let mut uki = record.uki.clone();
    if let Some(line) = &record.pending_uki {
        if !uki.lines().any(|l| l == line) {
            if !uki.is_empty() && !uki.ends_with('\n') {
                uki.push('\n');
            }
            uki.push_str(line);
            uki.push('\n');
        }
    }
    let reference = record
        .pending_reference
        .as_ref()
        .or(record.reference.as_ref());
    // The accepted UKI value's version becomes the one the device is expected to run.
    let os_version = record
        .pending_uki
        .as_deref()
        .and_then(|line| line.split_once(' '))
        .map(|(version, _)| version)
        .or(record.os_version.as_deref());
    conn.execute(
        "UPDATE device_attestation SET reference = ?2, uki = ?3, pending_reference = NULL,
            pending_uki = NULL, os_version = ?4 WHERE device_id = ?1",
        params![device_id, reference, uki, os_version],
    )?;
    Ok(Some(record))
}

/// Forget the pinned firmware reference, learned UKI values and expected OS version: the next
/// quote pins afresh.
/// Returns false for a device never attested.
pub fn reset(conn: &Connection, device_id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE device_attestation SET reference = NULL, uki = '', pending_reference = NULL,
            pending_uki = NULL, os_version = NULL WHERE device_id = ?1",
        [device_id],
    )? > 0)
}

/// The stub PCR 11 values of every uploaded bundle of OS `version` (hex, both slots' UKIs).
pub fn bundle_uki_pcr11(conn: &Connection, version: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT uki_pcr11 FROM bundles WHERE version = ?1 ORDER BY sha256")?;
    let rows = stmt.query_map([version], |row| row.get::<_, String>(0))?;
    let mut values = Vec::new();
    for row in rows {
        for value in row?.split_whitespace() {
            if !values.iter().any(|v| v == value) {
                values.push(value.to_owned());
            }
        }
    }
    Ok(values)
}
