//! Which registry store the benchmarked central uses: its embedded SQLite database (the
//! default) or a fresh PostgreSQL database per fleet size, created on a server the caller names
//! by an admin URL.

use cairn_central::store::{self, StoreError};

/// Environment variable `cairn-sim bench` also reads the admin URL from (`cargo xtask
/// bench-fleet` passes it this way, so the password is never echoed with the command line).
pub const DATABASE_URL_ENV: &str = "CAIRN_SIM_DATABASE_URL";

/// A validated PostgreSQL admin URL, `postgres://user:password@host:port/database`, of a role
/// allowed to create databases. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUrl(String);

/// Why a `--database-url` value was refused. The messages never contain the password.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminUrlError {
    /// Not a PostgreSQL URL.
    #[error(
        "--database-url must be a PostgreSQL admin URL starting with postgres:// \
         (e.g. postgres://user:password@127.0.0.1:5432/postgres); it starts with {scheme:?}"
    )]
    Scheme {
        /// Its scheme instead, e.g. `mysql://`.
        scheme: String,
    },
    /// No `scheme://` at all.
    #[error(
        "--database-url must be a PostgreSQL admin URL starting with postgres:// \
         (e.g. postgres://user:password@127.0.0.1:5432/postgres)"
    )]
    NoScheme,
    /// Whitespace or control characters (they would also break central's TOML config).
    #[error("--database-url contains whitespace or a control character; give the URL alone")]
    Unprintable,
    /// No `/database` at the end (the database the admin connection logs in to).
    #[error(
        "--database-url {0} names no database; end it with the admin database, e.g. /postgres"
    )]
    NoDatabase(String),
    /// The PostgreSQL client cannot parse it.
    #[error("--database-url {0} is not a valid PostgreSQL URL: {1}")]
    Invalid(String, String),
}

impl AdminUrl {
    /// Validate `url`.
    pub fn new(url: &str) -> Result<Self, AdminUrlError> {
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            // Only a real scheme is echoed: anything else might hold the password.
            return Err(match url.split_once("://") {
                Some((scheme, _))
                    if !scheme.is_empty()
                        && scheme.len() <= 16
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
                {
                    AdminUrlError::Scheme {
                        scheme: format!("{scheme}://"),
                    }
                }
                _ => AdminUrlError::NoScheme,
            });
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AdminUrlError::Unprintable);
        }
        // The query (sslmode, sslrootcert, ...) is kept for every fresh database's URL.
        let rest = rest.split_once('?').map_or(rest, |(path, _)| path);
        match rest.split_once('/') {
            Some((_, database)) if !database.is_empty() && !database.contains('/') => {}
            _ => return Err(AdminUrlError::NoDatabase(store::redact_url(url))),
        }
        if let Err(problem) = store::postgres_tls::parse_url(url) {
            return Err(AdminUrlError::Invalid(store::redact_url(url), problem));
        }
        Ok(Self(url.to_owned()))
    }

    /// The URL itself, password included (for the connection only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&store::redact_url(&self.0))
    }
}

impl std::fmt::Debug for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminUrl({self})")
    }
}

/// Where one fleet size's central keeps its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `registry.sqlite3` in central's data directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

impl StoreKind {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A database made for one fleet size.
pub struct FreshDatabase {
    /// Its name on the server.
    pub name: String,
    /// Its URL (with the admin URL's credentials), for central's `database_url`.
    pub url: String,
}

impl std::fmt::Debug for FreshDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FreshDatabase({})", store::redact_url(&self.url))
    }
}

/// Create an empty database for a fleet of `devices` (named `cairn_sim_<devices>_<unix
/// time>_<pid>`, so repeated runs never meet an old registry).
pub async fn create_fresh(admin: &AdminUrl, devices: usize) -> Result<FreshDatabase, StoreError> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("cairn_sim_{devices}_{unix}_{}", std::process::id());
    let admin = admin.clone();
    let for_task = name.clone();
    let url =
        tokio::task::spawn_blocking(move || store::create_database(admin.expose(), &for_task))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))??;
    Ok(FreshDatabase { name, url })
}

/// Drop a database [`create_fresh`] made (central must have stopped; remaining sessions are
/// terminated).
pub async fn drop_database(admin: &AdminUrl, database: &FreshDatabase) -> Result<(), StoreError> {
    let admin = admin.clone();
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", database.name);
    // On a plain thread: the sync client runs its own runtime.
    std::thread::spawn(move || {
        store::connect_postgres(admin.expose())?
            .execute_batch(&sql)
            .map_err(StoreError::from)
    })
    .join()
    .map_err(|_| StoreError::Worker("dropping the benchmark database panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_checked_and_never_echo_the_password() {
        assert!(AdminUrl::new("postgres://cairn:hunter2@127.0.0.1:5439/postgres").is_ok());
        assert!(AdminUrl::new("postgresql://cairn:hunter2@127.0.0.1/postgres").is_ok());
        assert!(
            AdminUrl::new("postgres://cairn:hunter2@127.0.0.1/postgres?sslmode=require").is_ok()
        );
        let refused = [
            "mysql://root:hunter2@db/cairn",
            "cairn:hunter2@db/cairn",
            "postgres://cairn:hunter2@127.0.0.1:5439",
            "postgres://cairn:hunter2@127.0.0.1:5439/",
            "postgres://cairn:hunter2@127.0.0.1:5439/postgres?sslmode=verify-full",
            "postgres://cairn:hunter2@127.0.0.1:5439/post gres",
            "postgres://cairn:hunter2@127.0.0.1:notaport/postgres",
        ];
        for url in refused {
            let err = AdminUrl::new(url).unwrap_err().to_string();
            assert!(
                err.contains("--database-url") && !err.contains("hunter2"),
                "{url}: {err}"
            );
        }
        let url = AdminUrl::new("postgres://cairn:hunter2@127.0.0.1:5439/postgres").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }
}
