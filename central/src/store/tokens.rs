//! Enrollment tokens, operator API tokens and claims.

use crate::store::db::{params, Connection, OptionalExtension, Row};

use super::{
    new_id, new_secret, now_unix, sha256_hex, ApiToken, Claim, ClaimKind, EnrollmentPolicy,
    EnrollmentToken, Role, StoreError, Timestamp,
};

const TOKEN_COLUMNS: &str =
    "id, name, policy, created_at, expires_at, max_uses, uses, revoked, require_tpm";

fn token_from_row(row: &Row) -> crate::store::db::Result<EnrollmentToken> {
    Ok(EnrollmentToken {
        id: row.get(0)?,
        name: row.get(1)?,
        policy: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        max_uses: row.get(5)?,
        uses: row.get(6)?,
        revoked: row.get(7)?,
        require_tpm: row.get(8)?,
    })
}

/// Create an enrollment token; returns it and its secret (shown once, stored only hashed).
pub fn create_enrollment_token(
    conn: &Connection,
    name: &str,
    policy: EnrollmentPolicy,
    lifetime_seconds: u64,
    max_uses: Option<u32>,
    require_tpm: bool,
) -> Result<(EnrollmentToken, String), StoreError> {
    let secret = new_secret("cet");
    let now = now_unix();
    let token = EnrollmentToken {
        id: new_id("tok"),
        name: name.to_owned(),
        policy,
        created_at: Timestamp::from_unix_seconds(now),
        expires_at: Timestamp::from_unix_seconds(
            now.saturating_add(lifetime_seconds.min(i64::MAX as u64) as i64),
        ),
        max_uses,
        uses: 0,
        revoked: false,
        require_tpm,
    };
    conn.execute(
        "INSERT INTO enrollment_tokens (id, name, secret_sha256, policy, created_at, expires_at, max_uses, require_tpm)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            token.id,
            token.name,
            sha256_hex(secret.as_bytes()),
            token.policy,
            token.created_at,
            token.expires_at,
            token.max_uses,
            token.require_tpm
        ],
    )?;
    Ok((token, secret))
}

/// All enrollment tokens, newest first.
pub fn list_enrollment_tokens(conn: &Connection) -> Result<Vec<EnrollmentToken>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(crate::params![], token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One enrollment token by id.
pub fn enrollment_token(
    conn: &Connection,
    id: &str,
) -> Result<Option<EnrollmentToken>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?1"),
            [id],
            token_from_row,
        )
        .optional()?)
}

/// The enrollment token whose secret is `secret`, if any.
pub fn enrollment_token_by_secret(
    conn: &Connection,
    secret: &str,
) -> Result<Option<EnrollmentToken>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE secret_sha256 = ?1"),
            [sha256_hex(secret.as_bytes())],
            token_from_row,
        )
        .optional()?)
}

/// Count one admission against a token.
pub fn use_enrollment_token(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Revoke an enrollment token; returns false when no such token exists.
pub fn revoke_enrollment_token(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE enrollment_tokens SET revoked = 1 WHERE id = ?1",
        [id],
    )? == 1)
}

const API_TOKEN_COLUMNS: &str = "id, name, role, created_at, revoked, expires_at, last_used_at";

fn api_token_from_row(row: &Row) -> crate::store::db::Result<ApiToken> {
    Ok(ApiToken {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        created_at: row.get(3)?,
        revoked: row.get(4)?,
        expires_at: row.get(5)?,
        last_used_at: row.get(6)?,
    })
}

/// Create an operator API token, valid for `lifetime_seconds` (`None`: until revoked); returns
/// it and its secret (shown once).
pub fn create_api_token(
    conn: &Connection,
    name: &str,
    role: Role,
    lifetime_seconds: Option<u64>,
) -> Result<(ApiToken, String), StoreError> {
    let secret = new_secret("cat");
    let now = now_unix();
    let token = ApiToken {
        id: new_id("api"),
        name: name.to_owned(),
        role,
        created_at: Timestamp::from_unix_seconds(now),
        revoked: false,
        expires_at: lifetime_seconds.map(|s| {
            Timestamp::from_unix_seconds(now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)))
        }),
        last_used_at: None,
    };
    conn.execute(
        "INSERT INTO api_tokens (id, name, role, secret_sha256, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![token.id, token.name, token.role, sha256_hex(secret.as_bytes()), token.created_at, token.expires_at],
    )?;
    Ok((token, secret))
}

/// The API token whose secret is `secret`, revoked and expired ones included (the caller says
/// which it is).
pub fn api_token_by_secret(
    conn: &Connection,
    secret: &str,
) -> Result<Option<ApiToken>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE secret_sha256 = ?1"),
            [sha256_hex(secret.as_bytes())],
            api_token_from_row,
        )
        .optional()?)
}

/// The API token `id`.
pub fn api_token(conn: &Connection, id: &str) -> Result<Option<ApiToken>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"),
            [id],
            api_token_from_row,
        )
        .optional()?)
}

/// All API tokens, newest first.
pub fn list_api_tokens(conn: &Connection) -> Result<Vec<ApiToken>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(crate::params![], api_token_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any live admin token exists at `now` (else central writes a bootstrap one).
pub fn has_admin_token(conn: &Connection, now: i64) -> Result<bool, StoreError> {
    // No token has an empty id.
    has_admin_token_besides(conn, "", now)
}

/// Whether a live admin token other than `id` exists at `now` (revoking the last one is
/// refused).
pub fn has_admin_token_besides(conn: &Connection, id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked = 0 AND id <> ?1 AND (expires_at IS NULL OR expires_at > ?2))",
        params![id, now],
        |r| r.get(0),
    )?)
}

/// Revoke API token `id`; false when there is none.
pub fn revoke_api_token(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?1", [id])? == 1)
}

/// Note that token `id` authenticated a request at `at`, unless a time at most `slack` seconds
/// older is written already (so a busy token costs one write a minute, not one per request).
pub fn touch_api_token(conn: &Connection, id: &str, at: i64, slack: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
        params![id, at, at - slack],
    )?;
    Ok(())
}

const CLAIM_COLUMNS: &str = "id, kind, value, created_at, device_id";

fn claim_from_row(row: &Row) -> crate::store::db::Result<Claim> {
    Ok(Claim {
        id: row.get(0)?,
        kind: row.get(1)?,
        value: row.get(2)?,
        created_at: row.get(3)?,
        device_id: row.get(4)?,
    })
}

/// Add a claim; `Ok(None)` when the same claim already exists.
pub fn add_claim(
    conn: &Connection,
    kind: ClaimKind,
    value: &str,
) -> Result<Option<Claim>, StoreError> {
    let claim = Claim {
        id: new_id("clm"),
        kind,
        value: value.to_owned(),
        created_at: Timestamp::from_unix_seconds(now_unix()),
        device_id: None,
    };
    let inserted = conn.execute(
        "INSERT INTO claims (id, kind, value, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        params![claim.id, claim.kind, claim.value, claim.created_at],
    )?;
    Ok((inserted == 1).then_some(claim))
}

/// All claims, newest first.
pub fn list_claims(conn: &Connection) -> Result<Vec<Claim>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CLAIM_COLUMNS} FROM claims ORDER BY created_at DESC, id"
    ))?;
    let rows = stmt.query_map(crate::params![], claim_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The claim matching a serial or an EK hash (serial first).
pub fn matching_claim(
    conn: &Connection,
    serial: &str,
    ek_sha256: &str,
) -> Result<Option<Claim>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {CLAIM_COLUMNS} FROM claims
                 WHERE (kind = 'serial' AND value = ?1) OR (kind = 'tpm_ek' AND value = ?2 AND ?2 != '')
                 ORDER BY kind = 'serial' DESC LIMIT 1"
            ),
            params![serial, ek_sha256],
            claim_from_row,
        )
        .optional()?)
}

/// Record that `device_id` used the claim.
pub fn use_claim(conn: &Connection, claim_id: &str, device_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE claims SET device_id = ?2 WHERE id = ?1",
        [claim_id, device_id],
    )?;
    Ok(())
}
