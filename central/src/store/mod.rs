//! The registry database: SQLite in WAL mode with versioned migrations.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and every call runs on the
//! blocking pool (`Store::run`) so the async runtime never waits on the disk.

mod schema;

pub mod apps;
pub mod audit;
pub mod bundles;
pub mod deployments;
pub mod devices;
pub mod model;
pub mod recovery_keys;
pub mod rollouts;
pub mod sites;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use model::*;

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
    /// A migration failed; the database is left at the previous version.
    #[error("could not migrate the registry database to version {version}: {source}")]
    Migrate {
        /// Target schema version.
        version: usize,
        /// SQLite's error.
        source: rusqlite::Error,
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
    Query(#[from] rusqlite::Error),
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

/// Handle to the registry database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    #[tracing::instrument(name = "store.open", skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // WAL lets readers run beside the writer; synchronous=FULL because an enrollment or an
        // approval acknowledged to a caller must survive a power cut.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        schema::migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` with the connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Run `f` with the connection on the current thread (for start-up and tests).
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// Column `index` of `row`, a JSON text, decoded (a conversion failure when it does not parse).
fn json_column<T: serde::de::DeserializeOwned>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
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
