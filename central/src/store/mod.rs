//! The registry database with versioned migrations: SQLite in WAL mode (one central), or
//! PostgreSQL (one database shared by several central replicas).
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and every call runs on the
//! blocking pool (`Store::run`) so the async runtime never waits on the disk. On PostgreSQL
//! each call is one transaction holding a cluster-wide advisory lock, so replicas see exactly
//! the one-writer-at-a-time semantics the registry code was written for (read, decide, write
//! in one call) — correctness first; the price is that registry calls of all replicas run one
//! after the other, as they do on SQLite.

pub mod db;
mod schema;

pub mod apps;
pub mod audit;
pub mod bundles;
pub mod deployments;
pub mod devices;
pub mod events;
pub mod fleet_counts;
pub mod log_requests;
pub mod model;
pub mod recovery_keys;
pub mod rollouts;
pub mod sites;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use db::Connection;
pub use model::*;

/// Advisory lock key every replica's registry call takes on PostgreSQL ("cairn" in ASCII).
const CLUSTER_LOCK_KEY: i64 = 0x63_6169_726e;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error("could not open the registry database {path}: {source}; check the data_dir permissions and free disk space")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// PostgreSQL could not be reached or refused the login.
    #[error("could not connect to the PostgreSQL registry {target}: {source}; check `database_url`, that the server runs and that the role may log in")]
    Connect {
        /// Host and database (never the password).
        target: String,
        /// The client's error.
        source: db::Error,
    },
    /// A migration failed; the database is left at the previous version.
    #[error("could not migrate the registry database to version {version}: {source}")]
    Migrate {
        /// Target schema version.
        version: usize,
        /// The database's error.
        source: db::Error,
    },
    /// The database is newer than this binary.
    #[error("the registry database is at schema version {found}, newer than this cairn-central knows ({known}); run the newer cairn-central or restore a backup")]
    TooNew {
        /// Version in the file.
        found: usize,
        /// Latest version this binary knows.
        known: usize,
    },
    /// A query failed.
    #[error("registry query failed: {0}")]
    Query(#[from] db::Error),
    /// A stored value does not parse (the database was edited by hand or is corrupt).
    #[error("registry holds an invalid value in {field}: {value:?}")]
    Corrupt {
        /// Table and column.
        field: &'static str,
        /// The value found.
        value: String,
    },
    /// The blocking task running the query panicked or was cancelled.
    #[error("registry worker failed: {0}")]
    Worker(String),
}

/// Where the registry lives.
#[derive(Clone)]
enum Location {
    Sqlite,
    Postgres(String),
}

/// Handle to the registry database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    location: Arc<Location>,
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite database at `path`.
    #[tracing::instrument(name = "store.open", skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_sqlite(path)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), location: Arc::new(Location::Sqlite) })
    }

    /// Connect to and migrate the PostgreSQL database at `url`
    /// (`postgres://user:password@host:port/database`). Several centrals may share it.
    #[tracing::instrument(name = "store.open", skip_all, fields(database = %redact_url(url)))]
    pub fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let mut conn = connect_postgres(url)?;
        // Two replicas starting at once must not both run a migration.
        let tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(?1)", [CLUSTER_LOCK_KEY])?;
        schema::migrate_postgres(&tx)?;
        tx.commit()?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), location: Arc::new(Location::Postgres(url.to_owned())) })
    }

    /// The PostgreSQL URL (for the replica notification connections); `None` on SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        match &*self.location {
            Location::Postgres(url) => Some(url),
            Location::Sqlite => None,
        }
    }

    /// Run `f` with the connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.run_blocking(f))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Run `f` with the connection on the current thread (start-up, tests, blocking workers).
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Location::Postgres(url) = &*self.location else { return f(&mut guard) };
        if guard.is_broken() {
            // PostgreSQL restarted or the link dropped: reconnect once per call instead of
            // failing every call until central restarts.
            tracing::warn!(database = %redact_url(url), "registry connection lost; reconnecting");
            *guard = connect_postgres(url)?;
        }
        let mut tx = guard.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(?1)", [CLUSTER_LOCK_KEY])?;
        let value = f(&mut tx)?;
        tx.commit()?;
        Ok(value)
    }
}

fn open_sqlite(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open { path: path.to_owned(), source };
    let conn = rusqlite::Connection::open(path).map_err(open_err)?;
    // WAL lets readers run beside the writer; synchronous=FULL because an enrollment or an
    // approval acknowledged to a caller must survive a power cut.
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
    let mut conn = Connection::sqlite(conn);
    schema::migrate_sqlite(&mut conn)?;
    Ok(conn)
}

/// A new PostgreSQL connection to `url` (no TLS: use a loopback or Unix-socket address).
pub fn connect_postgres(url: &str) -> Result<Connection, StoreError> {
    Ok(Connection::postgres(postgres_client(url)?))
}

/// A raw PostgreSQL client for `url` (LISTEN/NOTIFY needs the client itself).
pub fn postgres_client(url: &str) -> Result<postgres::Client, StoreError> {
    let connect_err = |source: postgres::Error| StoreError::Connect { target: redact_url(url), source: source.into() };
    let mut config: postgres::Config = url.parse().map_err(connect_err)?;
    config.application_name("cairn-central");
    config.connect_timeout(std::time::Duration::from_secs(10));
    config.connect(postgres::NoTls).map_err(connect_err)
}

/// Create an empty database named `name` on the server of `admin_url` (a role allowed to
/// create databases) and return its URL. C collation, so text sorts by bytes as in SQLite.
/// For the test suites that run central on PostgreSQL.
#[doc(hidden)]
pub fn create_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let valid = !name.is_empty() && name.len() <= 63 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(StoreError::Worker(format!("{name:?} is not a valid database name (a-z, 0-9, _; up to 63)")));
    }
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| StoreError::Worker("the admin database URL must end in /database".into()))?;
    let admin = admin_url.to_owned();
    let sql = format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'");
    // On a plain thread: the sync client must not run inside a caller's async runtime.
    std::thread::spawn(move || connect_postgres(&admin)?.execute_batch(&sql).map_err(StoreError::from))
        .join()
        .map_err(|_| StoreError::Worker("database creation panicked".into()))??;
    Ok(format!("{base}/{name}"))
}

/// A store for unit tests: a fresh PostgreSQL database when `CAIRN_TEST_DATABASE_URL` is set,
/// else SQLite in a temporary directory (kept alive by the returned guard).
#[cfg(test)]
pub(crate) fn test_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = match std::env::var("CAIRN_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(admin) => {
            let name = format!("cairn_unit_{}_{}", std::process::id(), new_id("db").trim_start_matches("db_"));
            Store::open_postgres(&create_database(&admin, &name).unwrap()).unwrap()
        }
        None => Store::open(&dir.path().join("registry.sqlite3")).unwrap(),
    };
    (store, dir)
}

/// `url` without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            format!(
                "postgres://{}@{}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(an unparsable database_url)".into(),
    }
}

/// Column `index` of `row`, a JSON text, decoded (a conversion failure when it does not parse).
fn json_column<T: serde::de::DeserializeOwned>(row: &db::Row, index: usize) -> db::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| db::Error::conversion(index, e))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new random identifier with a type prefix, e.g. `dev_3f9a…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 10]>()))
}

/// A new random secret with a type prefix; only its SHA-256 is stored.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 24]>()))
}

/// Lower-case hex SHA-256, used to store secrets and to name keys.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
