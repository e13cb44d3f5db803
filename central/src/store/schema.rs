//! Versioned schema migrations: tracked in SQLite's `user_version`, or in PostgreSQL's
//! `schema_version` table. One list serves both: the PostgreSQL twin of each entry is derived
//! by [`db::pg_ddl`] (types only; the registry's SQL is otherwise portable).

use super::db::{self, params, Connection, OptionalExtension};
use super::StoreError;

/// Each entry moves the schema one version up. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: enrollment and the device registry.
    r#"
    CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE,
        policy TEXT NOT NULL CHECK (policy IN ('auto', 'claim', 'manual')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        max_uses INTEGER,
        uses INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
        key_sha256 TEXT NOT NULL UNIQUE,
        serial TEXT NOT NULL,
        tpm_ek_sha256 TEXT NOT NULL,
        hostname TEXT NOT NULL,
        key_storage TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        os_version TEXT NOT NULL,
        token_id TEXT NOT NULL REFERENCES enrollment_tokens(id),
        created_at INTEGER NOT NULL,
        approved_at INTEGER,
        revoked_at INTEGER,
        last_seen_at INTEGER,
        cert_serial TEXT,
        cert_expires_at INTEGER,
        desired_revision INTEGER NOT NULL DEFAULT 1,
        config TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX devices_serial ON devices(serial);
    CREATE TABLE claims (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('serial', 'tpm_ek')),
        value TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        device_id TEXT REFERENCES devices(id),
        UNIQUE (kind, value)
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        secret_sha256 TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
    // Recovery keys of the devices' encrypted data partitions, sealed with data_dir/escrow.key.
    r#"
    CREATE TABLE recovery_keys (
        device_id TEXT PRIMARY KEY REFERENCES devices(id),
        luks_uuid TEXT NOT NULL,
        sealed BLOB NOT NULL,
        stored_at INTEGER NOT NULL
    );
    "#,
    // Apps each device should run (Compose YAML, validated by cairn-compose before it is stored).
    // `generation` is the device revision that set this compose_yaml.
    r#"
    CREATE TABLE device_apps (
        device_id TEXT NOT NULL REFERENCES devices(id),
        name TEXT NOT NULL,
        compose_yaml TEXT NOT NULL,
        generation INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, name)
    );
    "#,
    // OS update bundles (RAUC), verified and stored as data_dir/bundles/sha256-<sha256>.raucb.
    r#"
    CREATE TABLE bundles (
        sha256 TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        compatible TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded_at INTEGER NOT NULL,
        uploaded_by TEXT NOT NULL
    );
    "#,
    // OS update rollouts. `devices.desired_os` is the OsUpdate (JSON) a rollout set for the
    // device, sent as DesiredState.os. Rows change only on state transitions, never per
    // heartbeat; download progress stays in memory.
    r#"
    ALTER TABLE devices ADD COLUMN desired_os TEXT;
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        bundle_sha256 TEXT NOT NULL,
        version TEXT NOT NULL,
        selector TEXT NOT NULL,
        waves TEXT NOT NULL,
        wave_count INTEGER NOT NULL,
        released_waves INTEGER NOT NULL DEFAULT 0,
        skipped TEXT NOT NULL DEFAULT '[]',
        failure_threshold_percent INTEGER NOT NULL,
        health_deadline_seconds INTEGER NOT NULL,
        allow_downgrade INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'halted', 'aborted', 'completed', 'rolled_back')),
        halt_reason TEXT,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX rollouts_state ON rollouts(state);
    CREATE TABLE rollout_devices (
        rollout_id TEXT NOT NULL REFERENCES rollouts(id),
        device_id TEXT NOT NULL REFERENCES devices(id),
        wave INTEGER NOT NULL,
        from_version TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'released', 'downloading', 'installing', 'rebooting', 'verifying', 'succeeded', 'failed', 'refused')),
        error TEXT NOT NULL DEFAULT '',
        rollback_sha256 TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, device_id)
    );
    CREATE INDEX rollout_devices_device ON rollout_devices(device_id);
    "#,
    // Sites, regions, device labels and deployments (issue 7). `device_apps.deployment` names
    // the deployment that placed an app on the device (NULL: an operator's per-device app).
    r#"
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        latitude REAL NOT NULL,
        longitude REAL NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE regions (
        name TEXT PRIMARY KEY,
        points TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    ALTER TABLE devices ADD COLUMN site TEXT REFERENCES sites(name);
    ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    CREATE INDEX devices_site ON devices(site);
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        compose_yaml TEXT NOT NULL,
        placement TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    ALTER TABLE device_apps ADD COLUMN deployment TEXT;
    CREATE INDEX device_apps_deployment ON device_apps(deployment);
    "#,
    r#"
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        at INTEGER NOT NULL,
        device_id TEXT,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_at ON events(at, id);
    CREATE INDEX events_device_at ON events(device_id, at);
    CREATE TABLE log_requests (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        app TEXT NOT NULL,
        service TEXT NOT NULL,
        lines INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        reply TEXT,
        truncated INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX log_requests_device_state ON log_requests(device_id, state, created_at);
    "#,
    // 8: which replica holds each device's stream (incremental presence across replicas).
    r#"
    CREATE TABLE replica_streams (
        device_id TEXT PRIMARY KEY,
        replica TEXT,
        seq INTEGER NOT NULL
    );
    CREATE INDEX replica_streams_seq ON replica_streams(seq);
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        alive_at INTEGER NOT NULL
    );
    "#,
    // 9: TPM-proven enrollment. Tokens made before it keep admitting software keys (they were
    // created with that meaning); new ones require a TPM unless the operator says otherwise.
    // A device's AK public area (hex TPMT_PUBLIC) and its EK certificate's issuer. Devices
    // enrolled before said "tpm" and an EK hash nobody verified: they become "tpm-unverified".
    r#"
    ALTER TABLE enrollment_tokens ADD COLUMN require_tpm INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN ak_public TEXT;
    ALTER TABLE devices ADD COLUMN ek_issuer TEXT;
    CREATE INDEX devices_tpm_ek ON devices(tpm_ek_sha256);
    UPDATE devices SET key_storage = 'tpm-unverified', tpm_ek_sha256 = ''
        WHERE key_storage = 'tpm';
    "#,
    // 10: remote attestation. One row per device that ever answered a quote: the last verdict,
    // the pinned firmware reference (cairn_attest::appraise::Reference, encoded), the UKI PCR 11
    // values learned per OS version ("version hex" lines), and what the last failed boot
    // measured (for an admin to accept). Bundles keep the stub PCR 11 of their UKIs.
    r#"
    CREATE TABLE device_attestation (
        device_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        checked_at INTEGER NOT NULL,
        verified_at INTEGER,
        reference TEXT,
        uki TEXT NOT NULL DEFAULT '',
        pending_reference TEXT,
        pending_uki TEXT
    );
    ALTER TABLE bundles ADD COLUMN uki_pcr11 TEXT NOT NULL DEFAULT '';
    "#,
    // 11: crypto-erase on revoke. When an admin ordered a device's wipe, and when the device
    // reported its data key destroyed.
    r#"
    ALTER TABLE devices ADD COLUMN wipe_requested_at INTEGER;
    ALTER TABLE devices ADD COLUMN wiped_at INTEGER;
    "#,
    // 12: the OS version of a device's last verified quote. A later quote must name it, the
    // version a rollout sends the device to, or the one the rollout started from (its other
    // slot): an older bundle that also verifies is a downgrade, not the OS it should run.
    r#"
    ALTER TABLE device_attestation ADD COLUMN os_version TEXT;
    "#,
    // 13: app secrets (central/src/secrets.rs): one row per (owner, app, name, site, device)
    // scope, holding the current version sealed under its own data key. `owner_kind` says whether
    // `app` names a deployment (optionally narrowed to a site or a device) or an operator's
    // per-device app (`device_id` set). Versions come from one counter that never goes back, so a
    // device falling back from a removed site value to the deployment's sees a new number.
    r#"
    CREATE TABLE secrets (
        id TEXT PRIMARY KEY,
        owner_kind TEXT NOT NULL CHECK (owner_kind IN ('deployment', 'device_app')),
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        site TEXT NOT NULL DEFAULT '',
        device_id TEXT NOT NULL DEFAULT '',
        version INTEGER NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (owner_kind, app, name, site, device_id)
    );
    CREATE INDEX secrets_app ON secrets(app);
    CREATE TABLE secret_version_counter (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO secret_version_counter (id, value) VALUES (1, 0);
    "#,
    // 14: variables for Compose files (central/src/store/variables.rs), set for the fleet
    // (`scope_name` empty), a site or a deployment; removed with their site or deployment.
    r#"
    CREATE TABLE variables (
        scope_kind TEXT NOT NULL CHECK (scope_kind IN ('fleet', 'site', 'deployment')),
        scope_name TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (scope_kind, scope_name, name)
    );
    "#,
    // 15: what a secret's value is for: a file for the app's services, or a login for a private
    // registry its images come from (cairn_compose::RegistryLogin). One name has one kind.
    r#"
    ALTER TABLE secrets ADD COLUMN kind TEXT NOT NULL DEFAULT 'file' CHECK (kind IN ('file', 'registry'));
    "#,
    // 16: API tokens that expire, and when each last authenticated a request (written at most
    // once a minute per token: central/src/api/auth.rs).
    r#"
    ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
    "#,
    // 17: a deployment's app is derived, not copied (issue 20). Its Compose file is read from
    // the deployment's row, whose generation counts its changes; a device's row of it records
    // the generation it was placed at. A device's revision is its own counter plus, per
    // deployment app, the changes since placement (store::apps::REVISION): a deployment change
    // is one write and still exactly one revision step on each of its devices.
    r#"
    ALTER TABLE deployments ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE device_apps ADD COLUMN placed_generation INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// Bring an SQLite database to the latest schema, one transaction per version.
pub(super) fn migrate_sqlite(conn: &mut Connection) -> Result<(), StoreError> {
    let sqlite = conn
        .as_sqlite()
        .expect("migrate_sqlite on an SQLite connection");
    let found: i64 = sqlite
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(|e| StoreError::Query(e.into()))?;
    let found = check_version(found)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        let version = index + 1;
        let err = |source: db::Error| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version, "registry schema migrated");
    }
    Ok(())
}

/// Bring a PostgreSQL database to the latest schema inside the caller's transaction (which
/// holds the cluster lock, so two replicas starting together migrate once).
pub(super) fn migrate_postgres(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let found: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_version", params![], |r| {
            r.get(0)
        })
        .optional()?
        .flatten();
    let found = check_version(found.unwrap_or(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found) {
        let version = index + 1;
        let err = |source: db::Error| StoreError::Migrate { version, source };
        conn.execute_batch(&db::pg_ddl(sql)).map_err(err)?;
        conn.execute("DELETE FROM schema_version", params![])
            .map_err(err)?;
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )
        .map_err(err)?;
        tracing::info!(version, "registry schema migrated (PostgreSQL)");
    }
    Ok(())
}

fn check_version(found: i64) -> Result<usize, StoreError> {
    let found = usize::try_from(found).unwrap_or(usize::MAX);
    if found > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_is_idempotent() {
        let mut conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        migrate_sqlite(&mut conn).unwrap();
        migrate_sqlite(&mut conn).unwrap();
        let v: i64 = conn
            .as_sqlite()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }

    #[test]
    fn refuses_newer_database() {
        let mut conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        assert!(matches!(
            migrate_sqlite(&mut conn),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }
}
