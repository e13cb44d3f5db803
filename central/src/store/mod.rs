//! The registry database with versioned migrations: SQLite in WAL mode (one central), or
//! PostgreSQL (one database shared by several central replicas).
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and every call runs on the
//! blocking pool (`Store::run`) so the async runtime never waits on the disk. On PostgreSQL
//! each `run` is one transaction holding a cluster-wide advisory lock, so replicas see exactly
//! the one-writer-at-a-time semantics the registry code was written for (read, decide, write
//! in one call). Calls that only read (`Store::read`: stream opens, device authorisation, API
//! GETs, presence) take no lock: each is a READ ONLY snapshot transaction on one of a few
//! separate connections, so reads of every replica run beside each other and beside the one
//! writer instead of queueing behind it. A read that tried to write fails (the server refuses
//! it), so a misplaced write cannot slip past the lock.

pub mod db;
mod schema;

pub mod apps;
pub mod attestation;
pub mod audit;
pub mod bundles;
pub mod deployments;
pub mod devices;
pub mod events;
pub mod fleet_counts;
pub mod log_requests;
pub mod model;
pub mod postgres_tls;
pub mod recovery_keys;
pub mod rollouts;
pub mod secrets;
pub mod sites;
pub mod streams;
pub mod tokens;
pub mod variables;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use db::Connection;
pub use model::*;

/// Advisory lock key every replica's registry call takes on PostgreSQL ("cairn" in ASCII).
const CLUSTER_LOCK_KEY: i64 = 0x63_6169_726e;

/// Read connections per replica on PostgreSQL (opened on first use). A few are enough: a read
/// is one or two round trips, and the blocking pool would otherwise open one per waiting call.
const READ_CONNECTIONS: usize = 4;

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
    /// `database_url` is not usable (its TLS options, its CA file).
    #[error("the PostgreSQL registry URL {target} is not usable: {problem}")]
    DatabaseUrl {
        /// Host and database (never the password).
        target: String,
        /// What is wrong and what to do.
        problem: String,
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
    readers: Arc<Readers>,
}

/// The lock-free read connections (PostgreSQL only; empty slots until first used).
#[derive(Default)]
struct Readers {
    slots: Vec<Mutex<Option<Connection>>>,
    next: AtomicUsize,
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite database at `path`.
    #[tracing::instrument(name = "store.open", skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_sqlite(path)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            location: Arc::new(Location::Sqlite),
            readers: Arc::default(),
        })
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
        let readers = Readers {
            slots: (0..READ_CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            location: Arc::new(Location::Postgres(url.to_owned())),
            readers: Arc::new(readers),
        })
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
        on_blocking_pool(move || store.run_blocking(f)).await
    }

    /// Run `f` with the connection on the current thread (start-up, tests, blocking workers).
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Location::Postgres(url) = &*self.location else {
            return f(&mut guard);
        };
        let mut f = Some(f);
        with_reconnect(url, &mut guard, |conn| locked_call(conn, &mut f))
    }

    /// Run `f`, which only reads, on the blocking thread pool: on PostgreSQL as a READ ONLY
    /// snapshot transaction without the cluster lock (see the module doc); on SQLite as [`Store::run`].
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        on_blocking_pool(move || store.read_blocking(f)).await
    }

    /// [`Store::read`] on the current thread. `f` is `Fn`: a read that failed because its
    /// connection broke (PostgreSQL restarted, failover) is run once more on a new one, which
    /// is safe as it changed nothing. Idle read connections only learn of a break when used.
    pub fn read_blocking<T>(
        &self,
        f: impl Fn(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Location::Postgres(url) = &*self.location else {
            return self.run_blocking(f);
        };
        let slots = &self.readers.slots;
        // A free slot if there is one, else wait for the next in turn.
        let start = self.readers.next.fetch_add(1, Ordering::Relaxed);
        let mut slot = (0..slots.len())
            .find_map(|i| slots[(start + i) % slots.len()].try_lock().ok())
            .unwrap_or_else(|| {
                slots[start % slots.len()]
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            });
        if slot.is_none() {
            *slot = Some(connect_postgres(url)?);
        }
        let conn = slot.as_mut().expect("just connected");
        // A read changed nothing, so it may always run again.
        with_reconnect(url, conn, |conn| {
            read_snapshot(conn, &f).map_err(|e| (e, true))
        })
    }
}

/// Run `attempt` on `conn`, reconnecting to `url` first when the connection is known broken.
/// An idle connection learns that it broke only when used: when `attempt` fails on a connection
/// found broken and says it may run again (it changed nothing), it runs once more on a new one.
fn with_reconnect<T>(
    url: &str,
    conn: &mut Connection,
    mut attempt: impl FnMut(&mut Connection) -> Result<T, (StoreError, bool)>,
) -> Result<T, StoreError> {
    let mut retried = false;
    loop {
        if conn.is_broken() {
            // PostgreSQL restarted or the link dropped: reconnect instead of failing every
            // call until central restarts.
            tracing::warn!(database = %redact_url(url), "registry connection lost; reconnecting");
            *conn = connect_postgres(url)?;
        }
        match attempt(conn) {
            Ok(value) => return Ok(value),
            Err((e, may_retry)) if may_retry && !retried && conn.is_broken() => {
                tracing::warn!(database = %redact_url(url), error = %e, "registry connection found broken; reconnecting");
                retried = true;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// `f` (taken out of its option once the transaction holds the cluster lock) in one
/// transaction. A failure before that (BEGIN or the lock) says it may run again.
fn locked_call<T>(
    conn: &mut Connection,
    f: &mut Option<impl FnOnce(&mut Connection) -> Result<T, StoreError>>,
) -> Result<T, (StoreError, bool)> {
    let untouched = |e: db::Error| (StoreError::from(e), true);
    let mut tx = conn.transaction().map_err(untouched)?;
    tx.execute("SELECT pg_advisory_xact_lock(?1)", [CLUSTER_LOCK_KEY])
        .map_err(untouched)?;
    let f = f.take().expect("a registry call runs its closure once");
    let value = f(&mut tx).map_err(|e| (e, false))?;
    tx.commit().map_err(|e| (e.into(), false))?;
    Ok(value)
}

/// Run `call` on tokio's blocking pool: the database clients block.
async fn on_blocking_pool<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
}

/// `f` in one READ ONLY snapshot transaction: one view of the registry for the whole call, as
/// the lock gives a writer; the server refuses writes.
fn read_snapshot<T>(
    conn: &mut Connection,
    f: impl Fn(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tx = conn.snapshot()?;
    let value = f(&mut tx)?;
    tx.commit()?;
    Ok(value)
}

fn open_sqlite(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = rusqlite::Connection::open(path).map_err(open_err)?;
    // WAL lets readers run beside the writer; synchronous=FULL because an enrollment or an
    // approval acknowledged to a caller must survive a power cut.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    let mut conn = Connection::sqlite(conn);
    schema::migrate_sqlite(&mut conn)?;
    Ok(conn)
}

/// A new PostgreSQL connection to `url` (TLS as its `sslmode` says: see [`postgres_tls`]).
pub fn connect_postgres(url: &str) -> Result<Connection, StoreError> {
    Ok(Connection::postgres(postgres_client(url)?))
}

/// A raw PostgreSQL client for `url` (LISTEN/NOTIFY needs the client itself).
pub fn postgres_client(url: &str) -> Result<postgres::Client, StoreError> {
    let target = redact_url(url);
    let postgres_tls::Target {
        mut config, tls, ..
    } = postgres_tls::parse_url(url).map_err(|problem| StoreError::DatabaseUrl {
        target: target.clone(),
        problem,
    })?;
    config.application_name("cairn-central");
    config.connect_timeout(std::time::Duration::from_secs(10));
    let client = match tls {
        Some(tls) => config.connect(tls),
        None => config.connect(postgres::NoTls),
    };
    client.map_err(|source| StoreError::Connect {
        target,
        source: source.into(),
    })
}

/// Create an empty database named `name` on the server of `admin_url` (a role allowed to
/// create databases) and return its URL. C collation, so text sorts by bytes as in SQLite.
/// For the test suites that run central on PostgreSQL.
#[doc(hidden)]
pub fn create_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(StoreError::Worker(format!(
            "{name:?} is not a valid database name (a-z, 0-9, _; up to 63)"
        )));
    }
    let (admin_base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let (base, _) = admin_base
        .rsplit_once('/')
        .ok_or_else(|| StoreError::Worker("the admin database URL must end in /database".into()))?;
    let admin = admin_url.to_owned();
    let sql = format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    );
    // On a plain thread: the sync client must not run inside a caller's async runtime.
    std::thread::spawn(move || {
        connect_postgres(&admin)?
            .execute_batch(&sql)
            .map_err(StoreError::from)
    })
    .join()
    .map_err(|_| StoreError::Worker("database creation panicked".into()))??;
    Ok(format!("{base}/{name}{query}"))
}

/// A store for unit tests: a fresh PostgreSQL database when `CAIRN_TEST_DATABASE_URL` is set,
/// else SQLite in a temporary directory (kept alive by the returned guard).
#[cfg(test)]
pub(crate) fn test_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = match std::env::var("CAIRN_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(admin) => {
            let name = format!(
                "cairn_unit_{}_{}",
                std::process::id(),
                new_id("db").trim_start_matches("db_")
            );
            Store::open_postgres(&create_database(&admin, &name).unwrap()).unwrap()
        }
        None => Store::open(&dir.path().join("registry.sqlite3")).unwrap(),
    };
    (store, dir)
}

/// `url` without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    // The query (TLS options the client library does not know) names no secret shown here.
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    match base.parse::<postgres::Config>() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A read runs while a writer holds the registry (on PostgreSQL: the cluster lock, which
    /// every other replica's writes queue on), sees only committed rows, and cannot write.
    #[test]
    fn reads_run_beside_a_writer_and_cannot_write() {
        let (store, _dir) = test_store();
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .run_blocking(|conn| {
                        conn.execute("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (1, 'test', 'held', 't', '')", crate::params![])?;
                        held_tx.send(()).unwrap();
                        release_rx.recv_timeout(Duration::from_secs(30)).ok();
                        Ok(())
                    })
                    .unwrap()
            })
        };
        held_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer started");
        let count = |conn: &mut Connection| -> Result<i64, StoreError> {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM audit_log WHERE action = 'held'",
                crate::params![],
                |r| r.get(0),
            )?)
        };
        if store.postgres_url().is_some() {
            // The writer still holds the lock (it waits for `release`): the read must not.
            let (done_tx, done_rx) = mpsc::channel();
            let reader = {
                let store = store.clone();
                std::thread::spawn(move || done_tx.send(store.read_blocking(count)).unwrap())
            };
            let seen = done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a read waited for the writer's lock");
            assert_eq!(seen.unwrap(), 0, "a read saw an uncommitted write");
            reader.join().unwrap();
            let write = store.read_blocking(|conn| {
                Ok(conn.execute("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (2, 'test', 'read', 't', '')", crate::params![])?)
            });
            assert!(write.is_err(), "a write inside a read call was accepted");
        }
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(
            store.read_blocking(count).unwrap(),
            1,
            "the committed write is visible to reads"
        );
    }

    /// A statement is prepared once per PostgreSQL connection and reused; when another
    /// connection changes the table under it (another replica's migration), the one failed
    /// run drops it and the next prepares it afresh. A schema change on the same connection
    /// drops every prepared statement first.
    #[test]
    fn prepared_statements_follow_schema_changes() {
        let (store, _dir) = test_store();
        let Some(url) = store.postgres_url().map(str::to_owned) else {
            return; // SQLite compiles statements itself
        };
        let conn = connect_postgres(&url).unwrap();
        let other = connect_postgres(&url).unwrap();
        conn.execute_batch("CREATE TABLE probe (a BIGINT); INSERT INTO probe VALUES (1)")
            .unwrap();
        let columns = |conn: &Connection| -> Result<usize, db::Error> {
            Ok(conn.query("SELECT * FROM probe", crate::params![])?[0].len())
        };
        assert_eq!(columns(&conn).unwrap(), 1);
        assert_eq!(conn.prepared_count(), 1, "the query was kept prepared");
        other
            .execute_batch("ALTER TABLE probe ADD COLUMN b BIGINT")
            .unwrap();
        // The server refuses the old plan at most once; the statement is then prepared again.
        let after = columns(&conn).or_else(|_| columns(&conn)).unwrap();
        assert_eq!(after, 2, "the new column is seen");
        conn.execute_batch("ALTER TABLE probe ADD COLUMN c BIGINT")
            .unwrap();
        assert_eq!(
            conn.prepared_count(),
            0,
            "DDL dropped the prepared statements"
        );
        assert_eq!(columns(&conn).unwrap(), 3);
    }
}
