//! One SQL connection over either SQLite (embedded, the default) or PostgreSQL (several central
//! replicas on one database), with the small rusqlite-shaped API the registry modules use.
//!
//! Why our own layer instead of an ORM: the registry's SQL is portable already, so the only
//! differences are placeholders (`?1` here, `$1` in PostgreSQL), column types in the DDL, and
//! how values are bound and read. Every value crosses this layer as a [`Value`], so a store
//! module is written once and runs unchanged on both databases; the whole central test suite
//! runs on each.

use std::cell::RefCell;
use std::fmt;

/// A query result or failure of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused or failed the statement.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed the statement (or the connection broke).
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    /// `query_row` found no row (see [`OptionalExtension::optional`]).
    #[error("the query returned no rows")]
    QueryReturnedNoRows,
    /// A column holds a value of another type than the code reads.
    #[error("column {index} holds {found}, not {wanted}")]
    InvalidType {
        /// Column index.
        index: usize,
        /// What the code asked for.
        wanted: &'static str,
        /// What the database holds.
        found: &'static str,
    },
    /// A column's value does not convert (e.g. JSON that does not parse).
    #[error("column {index} does not convert: {source}")]
    Conversion {
        /// Column index.
        index: usize,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A PostgreSQL column type this layer does not read.
    #[error("column {index} has PostgreSQL type {name}, which the registry never uses")]
    UnsupportedType {
        /// Column index.
        index: usize,
        /// The type's name.
        name: String,
    },
    /// The connection was closed (only while central shuts down).
    #[error("the registry connection is closed")]
    Closed,
    /// No column of that name.
    #[error("no column named {0}")]
    NoSuchColumn(String),
}

fn pg_message(e: &postgres::Error) -> String {
    // The Display of a server error is only "db error"; the detail is in as_db_error.
    // Other errors keep their cause apart (e.g. the TLS handshake's "invalid peer certificate:
    // UnknownIssuer" under "error performing TLS handshake"): name the whole chain.
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            text
        }
    }
}

impl Error {
    /// A conversion failure of column `index` (for hand-written column decoders).
    pub fn conversion(
        index: usize,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Conversion {
            index,
            source: Box::new(source),
        }
    }
}

/// One SQL value: the common ground of SQLite's storage classes and the PostgreSQL types the
/// registry uses (BIGINT, DOUBLE PRECISION, TEXT, BYTEA).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer (booleans are 0/1).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a float",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// A Rust value that binds as a statement parameter.
pub trait ToValue {
    /// The value to bind.
    fn to_value(&self) -> Value;
}

/// `(?first, ?first+1, …), (…)`: placeholders for `rows` rows of `columns` values each, for a
/// multi-row INSERT (one statement is one round trip on PostgreSQL).
pub fn row_placeholders(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (0..columns)
                .map(|c| format!("?{}", first + r * columns + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `?first, ?first+1, …` for `count` values: an `IN (…)` list.
pub fn placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `values` as statement parameters.
pub fn as_params(values: &[Value]) -> Vec<&dyn ToValue> {
    values.iter().map(|v| v as &dyn ToValue).collect()
}

/// A Rust value that reads from a column.
pub trait FromValue: Sized {
    /// Convert column `index`'s value.
    fn from_value(value: &Value, index: usize) -> Result<Self>;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
        impl FromValue for $t {
            fn from_value(value: &Value, index: usize) -> Result<Self> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|e| Error::conversion(index, e)),
                    other => Err(Error::InvalidType { index, wanted: "an integer", found: other.kind() }),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u16, u8, usize);

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        // Registry values (revisions, sizes) stay far below 2^63; saturate rather than wrap.
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl FromValue for u64 {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        let i = i64::from_value(value, index)?;
        u64::try_from(i).map_err(|e| Error::conversion(index, e))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl FromValue for bool {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        Ok(i64::from_value(value, index)? != 0)
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl FromValue for f64 {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        match value {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(Error::InvalidType {
                index,
                wanted: "a float",
                found: other.kind(),
            }),
        }
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(Error::InvalidType {
                index,
                wanted: "text",
                found: other.kind(),
            }),
        }
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(Error::InvalidType {
                index,
                wanted: "bytes",
                found: other.kind(),
            }),
        }
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value, index: usize) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other, index).map(Some),
        }
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl FromValue for Value {
    fn from_value(value: &Value, _: usize) -> Result<Self> {
        Ok(value.clone())
    }
}

/// Statement parameters: `params![a, b]`, or an array of one type (`[id]`).
pub trait Params {
    /// The values, in placeholder order.
    fn into_values(self) -> Vec<Value>;
}
impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue, const N: usize> Params for &[T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// Statement parameters of mixed types: `params![id, 3, None::<String>]`; `params![]` for none.
#[macro_export]
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::db::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::ToValue),+] as &[&dyn $crate::store::db::ToValue] };
}
pub use crate::params;

/// A column reference: its index or its name.
pub trait ColumnIndex {
    /// The index in `row`.
    fn index(&self, row: &Row) -> Result<usize>;
}
impl ColumnIndex for usize {
    fn index(&self, _: &Row) -> Result<usize> {
        Ok(*self)
    }
}
impl ColumnIndex for &str {
    fn index(&self, row: &Row) -> Result<usize> {
        row.names
            .iter()
            .position(|n| n == self)
            .ok_or_else(|| Error::NoSuchColumn((*self).to_owned()))
    }
}

/// One result row, read into memory.
#[derive(Debug)]
pub struct Row {
    values: Vec<Value>,
    names: std::sync::Arc<[String]>,
}

impl Row {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Column `index` converted to `T`.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, index: I) -> Result<T> {
        let i = index.index(self)?;
        let value = self
            .values
            .get(i)
            .ok_or_else(|| Error::NoSuchColumn(i.to_string()))?;
        T::from_value(value, i)
    }
}

/// `query_row`'s "no rows" as `None`.
pub trait OptionalExtension<T> {
    /// `Ok(None)` when the query returned no rows.
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

enum Backend {
    Sqlite(rusqlite::Connection),
    // The sync client needs `&mut` for every call; store functions take `&Connection` (as with
    // rusqlite), and a connection is only ever used by one thread at a time (behind the Store's
    // mutex), so a RefCell is enough.
    // Option: taken out on drop and closed on a plain thread — the sync client runs its own
    // runtime, which must not be entered from an async worker (where the last Arc may drop).
    Postgres(RefCell<Option<postgres::Client>>),
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Backend::Postgres(client) = &self.backend {
            if let Some(client) = client.borrow_mut().take() {
                std::thread::spawn(move || drop(client));
            }
        }
    }
}

/// A database connection.
pub struct Connection {
    backend: Backend,
    /// Open transactions (the outer one is BEGIN, inner ones are savepoints).
    depth: std::cell::Cell<u32>,
    /// PostgreSQL statements prepared on this connection, by their text: a query then costs
    /// one round trip instead of two (parse, then bind and run) and the server plans it once.
    prepared: RefCell<std::collections::HashMap<String, postgres::Statement>>,
}

/// Most statements one PostgreSQL connection keeps prepared. Past it the cache starts over:
/// `IN (…)` lists of many lengths would otherwise grow it (and the server's memory) without end.
const MAX_PREPARED: usize = 256;

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("dialect", &self.dialect())
            .finish()
    }
}

impl Connection {
    /// Wrap an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            backend: Backend::Sqlite(conn),
            depth: 0.into(),
            prepared: RefCell::default(),
        }
    }

    /// Wrap an open PostgreSQL client.
    pub fn postgres(client: postgres::Client) -> Self {
        Self {
            backend: Backend::Postgres(RefCell::new(Some(client))),
            depth: 0.into(),
            prepared: RefCell::default(),
        }
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Whether the connection is known to be broken (PostgreSQL restarted or the link dropped).
    pub fn is_broken(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(c) => c.borrow().as_ref().is_none_or(postgres::Client::is_closed),
        }
    }

    /// Run one statement; returns the number of rows changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.into_values();
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute(
                sql,
                rusqlite::params_from_iter(values.iter().map(SqliteValue)),
            )?),
            Backend::Postgres(c) => {
                let refs = pg_params(&values);
                let mut client = pg(c)?;
                let statement = self.pg_statement(&mut client, sql)?;
                let changed = client.execute(&statement, &refs);
                Ok(self.forget_on_error(sql, changed)? as usize)
            }
        }
    }

    /// Run several statements without parameters (DDL). Statements prepared before are
    /// dropped: a plan made before a schema change may no longer fit it.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        self.prepared.borrow_mut().clear();
        self.control(sql)
    }

    /// Run transaction control (BEGIN, COMMIT, savepoints), keeping prepared statements.
    fn control(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Postgres(c) => Ok(pg(c)?.batch_execute(sql)?),
        }
    }

    /// Run a query and read every row.
    pub fn query<P: Params>(&self, sql: &str, params: P) -> Result<Vec<Row>> {
        let values = params.into_values();
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let names: std::sync::Arc<[String]> = stmt
                    .column_names()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .into();
                let count = names.len();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(values.iter().map(SqliteValue)))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let values = (0..count)
                        .map(|i| row.get_ref(i).map(from_sqlite))
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.push(Row {
                        values,
                        names: names.clone(),
                    });
                }
                Ok(out)
            }
            Backend::Postgres(c) => {
                let refs = pg_params(&values);
                let mut client = pg(c)?;
                let statement = self.pg_statement(&mut client, sql)?;
                let rows = client.query(&statement, &refs);
                let rows = self.forget_on_error(sql, rows)?;
                let Some(first) = rows.first() else {
                    return Ok(Vec::new());
                };
                let names: std::sync::Arc<[String]> = first
                    .columns()
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect::<Vec<_>>()
                    .into();
                rows.iter()
                    .map(|row| {
                        let values = (0..row.len())
                            .map(|i| from_postgres(row, i))
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Row {
                            values,
                            names: names.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// Run a query expecting at least one row and map the first.
    pub fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> Result<T> {
        let rows = self.query(sql, params)?;
        let row = rows.first().ok_or(Error::QueryReturnedNoRows)?;
        f(row)
    }

    /// A statement to run later (the text only; kept for the rusqlite-shaped call sites).
    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// Same as [`Connection::prepare`] (SQLite caches the compiled statement underneath).
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    /// How many statements this connection holds prepared (tests).
    #[cfg(test)]
    pub(crate) fn prepared_count(&self) -> usize {
        self.prepared.borrow().len()
    }

    /// `sql` prepared on PostgreSQL `client`: from the cache, else prepared now and kept.
    fn pg_statement(
        &self,
        client: &mut postgres::Client,
        sql: &str,
    ) -> Result<postgres::Statement> {
        if let Some(statement) = self.prepared.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(pg_sql(sql).as_str())?;
        let mut prepared = self.prepared.borrow_mut();
        if prepared.len() >= MAX_PREPARED {
            prepared.clear();
        }
        prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// `outcome` of running prepared `sql`; a failure drops the statement from the cache, so a
    /// plan the server can no longer use (a column changed under it by another replica's
    /// migration) is prepared afresh next time.
    fn forget_on_error<T>(
        &self,
        sql: &str,
        outcome: std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        outcome.map_err(|e| {
            self.prepared.borrow_mut().remove(sql);
            e.into()
        })
    }

    /// Begin a transaction (a savepoint when one is already open); rolled back unless committed.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.transaction_from("BEGIN")
    }

    /// Begin a read-only snapshot: one REPEATABLE READ transaction on PostgreSQL (in the same
    /// round trip as BEGIN), a plain transaction on SQLite (whose readers see a snapshot anyway).
    pub fn snapshot(&mut self) -> Result<Transaction<'_>> {
        match self.dialect() {
            Dialect::Postgres => {
                self.transaction_from("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            }
            Dialect::Sqlite => self.transaction_from("BEGIN"),
        }
    }

    fn transaction_from(&mut self, begin: &str) -> Result<Transaction<'_>> {
        let depth = self.depth.get();
        if depth == 0 {
            self.control(begin)?;
        } else {
            self.control(&format!("SAVEPOINT sp{depth}"))?;
        }
        self.depth.set(depth + 1);
        Ok(Transaction {
            conn: self,
            level: depth,
            done: false,
        })
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.depth.get() > 0
    }

    /// The SQLite connection underneath (pragmas, migrations); `None` on PostgreSQL.
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(c) => Some(c),
            Backend::Postgres(_) => None,
        }
    }
}

/// A statement: its text, run by `query_map` / `query_row` / `execute` / `exists`.
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    /// Run the query and map every row (the rows are read eagerly).
    pub fn query_map<T, P: Params, F: FnMut(&Row) -> Result<T>>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.query(&self.sql, params)?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }

    /// Run the query and map the first row.
    pub fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Run the statement; rows changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    /// Whether the query returns a row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        Ok(!self.conn.query(&self.sql, params)?.is_empty())
    }
}

/// An open transaction (or savepoint); derefs to the connection. Dropped without
/// [`Transaction::commit`], it rolls back.
pub struct Transaction<'c> {
    conn: &'c mut Connection,
    level: u32,
    done: bool,
}

impl Transaction<'_> {
    /// Make the changes durable (release the savepoint when nested).
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.depth.set(self.level);
        if self.level == 0 {
            self.conn.control("COMMIT")
        } else {
            self.conn
                .control(&format!("RELEASE SAVEPOINT sp{}", self.level))
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.conn.depth.set(self.level);
        let sql = if self.level == 0 {
            "ROLLBACK".to_owned()
        } else {
            format!(
                "ROLLBACK TO SAVEPOINT sp{0}; RELEASE SAVEPOINT sp{0}",
                self.level
            )
        };
        if let Err(e) = self.conn.control(&sql) {
            tracing::warn!(error = %e, "could not roll back a registry transaction");
        }
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl std::ops::DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
    }
}

fn pg(cell: &RefCell<Option<postgres::Client>>) -> Result<std::cell::RefMut<'_, postgres::Client>> {
    std::cell::RefMut::filter_map(cell.borrow_mut(), Option::as_mut).map_err(|_| Error::Closed)
}

struct SqliteValue<'a>(&'a Value);

impl rusqlite::ToSql for SqliteValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn pg_params(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// Binds a [`Value`] as whatever type PostgreSQL inferred for the placeholder, so `?1` compared
/// with an INTEGER column and one compared with a BIGINT both work.
impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            format!("cannot bind {} as PostgreSQL {}", self.kind(), ty.name()).into()
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::UNKNOWN => i.to_string().to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.to_sql(ty, out)
                }
                _ => Err(mismatch()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn from_postgres(row: &postgres::Row, index: usize) -> Result<Value> {
    use postgres::types::Type;
    let ty = row.columns()[index].type_().clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|i| Value::Int(i.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|i| Value::Int(i.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|b| Value::Int(b.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)?
            .map(|f| Value::Real(f.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
        other => {
            return Err(Error::UnsupportedType {
                index,
                name: other.name().to_owned(),
            })
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// SQLite's `?1` placeholders as PostgreSQL's `$1` (a bare `?` takes the next number), leaving
/// quoted text alone.
pub fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next = 1;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                out.push('$');
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// The registry's SQLite DDL in PostgreSQL's types: INTEGER → BIGINT (SQLite integers are 64
/// bits), REAL → DOUBLE PRECISION, BLOB → BYTEA, AUTOINCREMENT keys → identity columns. One
/// migration list serves both databases.
pub fn pg_ddl(sql: &str) -> String {
    let mut out = sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    );
    for (from, to) in [
        (" INTEGER", " BIGINT"),
        (" REAL", " DOUBLE PRECISION"),
        (" BLOB", " BYTEA"),
    ] {
        out = out.replace(from, to);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_dollars_outside_quotes() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(
            pg_sql("UPDATE t SET a = ? WHERE b = ?"),
            "UPDATE t SET a = $1 WHERE b = $2"
        );
        assert_eq!(
            pg_sql("SELECT '?1', \"?\" FROM t WHERE x = ?2"),
            "SELECT '?1', \"?\" FROM t WHERE x = $2"
        );
    }

    #[test]
    fn ddl_types_map_to_postgres() {
        let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, x REAL, b BLOB)";
        assert_eq!(
            pg_ddl(ddl),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, \
             x DOUBLE PRECISION, b BYTEA)"
        );
    }

    #[test]
    fn sqlite_round_trip_and_nested_transactions() {
        let mut conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        conn.execute_batch("CREATE TABLE t (id INTEGER, name TEXT, data BLOB, f REAL)")
            .unwrap();
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7u64, "a", vec![1u8, 2], 1.5],
        )
        .unwrap();
        {
            let tx = conn.transaction().unwrap();
            tx.execute("INSERT INTO t VALUES (?1, ?2, NULL, NULL)", params![8, "b"])
                .unwrap();
            // dropped: rolled back
        }
        let mut tx = conn.transaction().unwrap();
        {
            let inner = tx.transaction().unwrap();
            inner
                .execute("INSERT INTO t VALUES (9, 'c', NULL, NULL)", params![])
                .unwrap();
        }
        tx.execute("INSERT INTO t VALUES (10, 'd', NULL, NULL)", params![])
            .unwrap();
        tx.commit().unwrap();
        assert!(!conn.in_transaction());
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM t ORDER BY id")
            .unwrap()
            .query_map(params![], |r| r.get(0))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(ids, vec![7, 10]);
        let (name, data, f): (String, Vec<u8>, Option<f64>) = conn
            .query_row("SELECT name, data, f FROM t WHERE id = ?1", [7], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get("f")?))
            })
            .unwrap();
        assert_eq!((name.as_str(), data, f), ("a", vec![1, 2], Some(1.5)));
        let none = conn
            .query_row("SELECT id FROM t WHERE id = 99", params![], |r| {
                r.get::<_, i64>(0)
            })
            .optional();
        assert!(matches!(none, Ok(None)));
        let wrong = conn.query_row("SELECT name FROM t WHERE id = 7", params![], |r| {
            r.get::<_, i64>(0)
        });
        assert!(
            matches!(wrong, Err(Error::InvalidType { index: 0, .. })),
            "{wrong:?}"
        );
    }
}
