//! OS update bundles central holds: one row per verified file in `data_dir/bundles`, keyed by
//! the SHA-256 of its bytes.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::StoreError;

pub use cairn_api::Bundle;

const COLUMNS: &str = "sha256, version, compatible, size, uploaded_at, uploaded_by";

fn from_row(row: &Row) -> crate::store::db::Result<Bundle> {
    Ok(Bundle {
        sha256: row.get(0)?,
        version: row.get(1)?,
        compatible: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        uploaded_at: row.get(4)?,
        uploaded_by: row.get(5)?,
    })
}

/// Every bundle, newest upload first.
pub fn list(conn: &Connection) -> Result<Vec<Bundle>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM bundles ORDER BY uploaded_at DESC, sha256"
    ))?;
    let rows = stmt.query_map(crate::params![], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One bundle by its SHA-256.
pub fn get(conn: &Connection, sha256: &str) -> Result<Option<Bundle>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM bundles WHERE sha256 = ?1"),
            [sha256],
            from_row,
        )
        .optional()?)
}

/// Record a bundle unless one with the same SHA-256 is there; returns the stored row and
/// whether it is new.
pub fn insert(conn: &Connection, bundle: &Bundle) -> Result<(Bundle, bool), StoreError> {
    let inserted = conn.execute(
        &format!("INSERT INTO bundles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"),
        params![
            bundle.sha256,
            bundle.version,
            bundle.compatible,
            bundle.size as i64,
            bundle.uploaded_at,
            bundle.uploaded_by
        ],
    )? > 0;
    let stored = get(conn, &bundle.sha256)?.ok_or(StoreError::Corrupt {
        field: "bundles.sha256",
        value: bundle.sha256.clone(),
    })?;
    Ok((stored, inserted))
}

/// Record the PCR 11 values (hex, space-separated) predicted from a bundle's UKIs.
pub fn set_uki_pcr11(conn: &Connection, sha256: &str, values: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE bundles SET uki_pcr11 = ?2 WHERE sha256 = ?1",
        params![sha256, values],
    )?;
    Ok(())
}

/// Remove a bundle's row; false when there was none.
pub fn delete(conn: &Connection, sha256: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM bundles WHERE sha256 = ?1", [sha256])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_is_idempotent_and_keeps_the_first_upload() {
        let (store, _dir) = super::super::test_store();
        store
            .run_blocking(|conn| {
                let first = Bundle {
                    sha256: "ab".repeat(32),
                    version: "1.0".into(),
                    compatible: "cairn-test".into(),
                    size: 4096,
                    uploaded_at: crate::store::Timestamp::from_unix_seconds(100),
                    uploaded_by: "api:ops".into(),
                };
                assert!(insert(conn, &first).unwrap().1);
                let again = Bundle {
                    uploaded_at: crate::store::Timestamp::from_unix_seconds(200),
                    uploaded_by: "api:other".into(),
                    ..first.clone()
                };
                let (stored, new) = insert(conn, &again).unwrap();
                assert!(!new);
                assert_eq!(stored, first);
                assert_eq!(list(conn).unwrap(), vec![first.clone()]);
                assert!(delete(conn, &first.sha256).unwrap());
                assert!(!delete(conn, &first.sha256).unwrap());
                assert!(get(conn, &first.sha256).unwrap().is_none());
                Ok(())
            })
            .unwrap();
    }
}
