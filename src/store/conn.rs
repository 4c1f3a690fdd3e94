//! The registry connection on either backend (issue 14): `Conn` is a SQLite connection
//! or a PostgreSQL client behind the same small API the store's modules are written
//! against (`execute`, `query_row`, `prepare_cached` and its statements, rows read with
//! `get`), shaped after rusqlite's so that every query is written once.
//!
//! The SQL layer speaks rusqlite's types on both backends: parameters are
//! `rusqlite::ToSql`, columns are read through `rusqlite::types::FromSql`, and errors
//! are `rusqlite::Error`. A PostgreSQL error is translated to its SQLite equivalent
//! where the store acts on one (a constraint violation, a lock it could not get), and is
//! otherwise carried boxed (`PgFailure`) so that it leaves the store as the right
//! `StoreError` (a lost connection is exit 4). On PostgreSQL, statements are translated
//! once per text (`?N` placeholders, the few SQLite-only spellings: `dialect`) and kept
//! prepared.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;

use rusqlite::types::{FromSql, ToSql, ToSqlOutput, ValueRef};

use super::db::{self, Db, Value};
use super::error::StoreError;

/// A PostgreSQL failure carried through `rusqlite::Error` (see the module docs).
#[derive(Debug)]
pub struct PgFailure(pub StoreError);

impl std::fmt::Display for PgFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for PgFailure {}

/// A PostgreSQL registry's connection state.
pub struct PgConn {
    pub db: Db,
    /// The station's log key file (HOME/log.key): the key never reaches the server.
    pub key_file: PathBuf,
    /// Inside BEGIN ... COMMIT/ROLLBACK (what `is_autocommit` answers).
    in_tx: bool,
    /// Rows the last `execute` changed (`changes`).
    changes: u64,
}

pub enum Conn {
    Lite(rusqlite::Connection),
    Pg(RefCell<PgConn>),
}

fn pg_fail(e: crate::error::Error) -> rusqlite::Error {
    use rusqlite::ffi;
    match e {
        crate::error::Error::Store(StoreError::Constraint(msg)) => {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CONSTRAINT), Some(msg))
        }
        crate::error::Error::Store(StoreError::Busy) => {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), None)
        }
        crate::error::Error::Store(s) => {
            rusqlite::Error::ToSqlConversionFailure(Box::new(PgFailure(s)))
        }
        other => rusqlite::Error::ToSqlConversionFailure(Box::new(PgFailure(StoreError::Other(
            other.to_string(),
        )))),
    }
}

/// Parameters of one statement: arrays of values (`[a, b]`), `rusqlite::params!`
/// slices, and `params_from_iter`.
pub trait Params {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a dyn ToSql));
}

impl Params for [&(dyn ToSql + Send + Sync); 0] {
    fn each<'a>(&'a self, _: &mut dyn FnMut(&'a dyn ToSql)) {}
}

impl Params for &[&dyn ToSql] {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a dyn ToSql)) {
        for p in self.iter() {
            f(*p)
        }
    }
}

macro_rules! array_params {
    ($($n:literal)+) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn each<'a>(&'a self, f: &mut dyn FnMut(&'a dyn ToSql)) {
                for p in self.iter() {
                    f(p)
                }
            }
        }
    )+};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20);

/// Parameters from an iterator (a filter's list).
pub struct ParamsFromIter<T>(Vec<T>);

pub fn params_from_iter<I: IntoIterator>(it: I) -> ParamsFromIter<I::Item>
where
    I::Item: ToSql,
{
    ParamsFromIter(it.into_iter().collect())
}

impl<T: ToSql> Params for ParamsFromIter<T> {
    fn each<'a>(&'a self, f: &mut dyn FnMut(&'a dyn ToSql)) {
        for p in &self.0 {
            f(p)
        }
    }
}

fn lite_params<P: Params + ?Sized>(p: &P) -> Vec<&dyn ToSql> {
    let mut v: Vec<&dyn ToSql> = Vec::new();
    p.each(&mut |x| v.push(x));
    v
}

fn pg_params<P: Params + ?Sized>(p: &P) -> rusqlite::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut err = None;
    p.each(&mut |x| match x.to_sql() {
        Ok(o) => out.push(output_value(o)),
        Err(e) => err = Some(e),
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn output_value(o: ToSqlOutput<'_>) -> Value {
    use rusqlite::types::Value as V;
    let r = match o {
        ToSqlOutput::Borrowed(r) => r,
        ToSqlOutput::Owned(v) => {
            return match v {
                V::Null => Value::Null,
                V::Integer(i) => Value::Int(i),
                V::Real(f) => Value::Real(f),
                V::Text(s) => Value::Text(s),
                V::Blob(b) => Value::Blob(b),
            }
        }
        // ZeroBlob and friends are not used by the store.
        _ => return Value::Null,
    };
    match r {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn value_ref(v: &Value) -> ValueRef<'_> {
    match v {
        Value::Null => ValueRef::Null,
        Value::Int(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    }
}

/// The spellings only SQLite knows, as PostgreSQL writes them (applied once per
/// statement text, before it is prepared).
pub fn dialect(sql: &str) -> String {
    let mut s = sql.to_string();
    // `INSERT OR IGNORE INTO t ...` is `INSERT INTO t ... ON CONFLICT DO NOTHING`.
    if let Some(at) = find_ci(&s, "INSERT OR IGNORE INTO") {
        s.replace_range(at..at + "INSERT OR IGNORE INTO".len(), "INSERT INTO");
        let end = s.trim_end().trim_end_matches(';').len();
        s.truncate(end);
        s.push_str(" ON CONFLICT DO NOTHING");
    }
    // Schema-qualified names of SQLite's main and temp databases.
    s = s.replace("main.devices", "devices");
    s = replace_word(&s, "temp.", "pg_temp.");
    s = s.replace(" WITHOUT ROWID", "");
    s
}

/// `from` replaced by `to` where it starts a word.
fn replace_word(s: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let word_start = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        out.push_str(&rest[..i]);
        out.push_str(if word_start { to } else { from });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.to_ascii_uppercase().find(needle)
}

impl Conn {
    pub fn pg(db: Db, key_file: PathBuf) -> Conn {
        Conn::Pg(RefCell::new(PgConn {
            db,
            key_file,
            in_tx: false,
            changes: 0,
        }))
    }

    pub fn is_pg(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }

    /// The SQLite connection, for what only SQLite has (pragmas, its own functions).
    pub fn lite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Lite(c) => Some(c),
            Conn::Pg(_) => None,
        }
    }

    /// The SQLite connection, or the error a SQLite-only operation gives on PostgreSQL.
    pub fn sqlite_only(&self, what: &str) -> rusqlite::Result<&rusqlite::Connection> {
        self.lite().ok_or_else(|| {
            rusqlite::Error::ToSqlConversionFailure(Box::new(PgFailure(StoreError::Unsupported(
                format!("{what} is not available on a PostgreSQL registry"),
            ))))
        })
    }

    /// Where this registry's log key file is (None: an in-memory registry).
    pub fn key_file(&self) -> Option<PathBuf> {
        match self {
            Conn::Lite(c) => super::logkey::db_path(c).map(|p| super::logkey::key_path(&p)),
            Conn::Pg(p) => Some(p.borrow().key_file.clone()),
        }
    }

    fn with_pg<R>(
        &self,
        f: impl FnOnce(&mut PgConn) -> crate::error::Result<R>,
    ) -> rusqlite::Result<R> {
        let Conn::Pg(p) = self else {
            unreachable!("with_pg on SQLite")
        };
        let mut p = p.borrow_mut();
        f(&mut p).map_err(pg_fail)
    }

    pub fn execute_batch(&self, sql: &str) -> rusqlite::Result<()> {
        match self {
            Conn::Lite(c) => c.execute_batch(sql),
            Conn::Pg(_) => self.with_pg(|p| p.db.batch(&dialect(sql))),
        }
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        match self {
            Conn::Lite(c) => c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(lite_params(&params))),
            Conn::Pg(_) => {
                let vals = pg_params(&params)?;
                self.with_pg(|p| {
                    let n = p.db.execute(&dialect(sql), &vals)?;
                    p.changes = n;
                    Ok(n as usize)
                })
            }
        }
    }

    pub fn query_row<T, P: Params, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    pub fn prepare_cached(&self, sql: &str) -> rusqlite::Result<Stmt<'_>> {
        match self {
            Conn::Lite(c) => Ok(Stmt::Lite(LiteStmt::Cached(c.prepare_cached(sql)?))),
            Conn::Pg(_) => Ok(Stmt::Pg {
                conn: self,
                sql: dialect(sql),
                columns: RefCell::new(None),
            }),
        }
    }

    pub fn prepare(&self, sql: &str) -> rusqlite::Result<Stmt<'_>> {
        match self {
            Conn::Lite(c) => Ok(Stmt::Lite(LiteStmt::Plain(c.prepare(sql)?))),
            Conn::Pg(_) => self.prepare_cached(sql),
        }
    }

    /// `COPY ... FROM STDIN` (PostgreSQL, text format); rows copied.
    pub fn copy_in(&self, sql: &str, data: &[u8]) -> rusqlite::Result<u64> {
        match self {
            Conn::Lite(_) => Err(rusqlite::Error::InvalidQuery),
            Conn::Pg(_) => self.with_pg(|p| p.db.copy_in(sql, data)),
        }
    }

    /// The id the last INSERT made (PostgreSQL: the session's `lastval()`, which the
    /// identity column's sequence set).
    pub fn last_insert_rowid(&self) -> i64 {
        match self {
            Conn::Lite(c) => c.last_insert_rowid(),
            Conn::Pg(_) => self
                .with_pg(|p| {
                    p.db.query_row("SELECT lastval()", &[])?
                        .map(|r| r.i64(0))
                        .transpose()
                        .map(|v| v.unwrap_or(0))
                })
                .unwrap_or(0),
        }
    }

    /// A SQLite tuning pragma (cache sizes); nothing on PostgreSQL, whose server
    /// tunes itself.
    pub fn pragma_update<V: ToSql>(
        &self,
        schema: Option<&str>,
        name: &str,
        value: V,
    ) -> rusqlite::Result<()> {
        match self {
            Conn::Lite(c) => {
                debug_assert!(schema.is_none());
                c.pragma_update(None, name, value)
            }
            Conn::Pg(_) => Ok(()),
        }
    }

    pub fn changes(&self) -> u64 {
        match self {
            Conn::Lite(c) => c.changes(),
            Conn::Pg(p) => p.borrow().changes,
        }
    }

    pub fn is_autocommit(&self) -> bool {
        match self {
            Conn::Lite(c) => c.is_autocommit(),
            Conn::Pg(p) => !p.borrow().in_tx,
        }
    }

    /// Begins a transaction: `Write` takes the write lock up front (SQLite `BEGIN
    /// IMMEDIATE`; PostgreSQL the chain lock, which every writer takes, so writers
    /// serialise as on SQLite), `Exclusive` also keeps readers out on SQLite, `Read`
    /// is one consistent snapshot.
    pub fn begin(&self, kind: Begin) -> rusqlite::Result<()> {
        match self {
            Conn::Lite(c) => c.execute_batch(match kind {
                Begin::Write => "BEGIN IMMEDIATE",
                Begin::Exclusive => "BEGIN EXCLUSIVE",
                Begin::Read => "BEGIN DEFERRED",
            }),
            Conn::Pg(_) => self.with_pg(|p| {
                match kind {
                    Begin::Write | Begin::Exclusive => {
                        p.db.batch(&format!(
                            "BEGIN; SELECT pg_advisory_xact_lock({});",
                            super::schema_pg::CHAIN_LOCK
                        ))?;
                    }
                    Begin::Read => {
                        p.db.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?
                    }
                }
                p.in_tx = true;
                Ok(())
            }),
        }
    }

    pub fn commit(&self) -> rusqlite::Result<()> {
        self.end("COMMIT")
    }

    pub fn rollback(&self) -> rusqlite::Result<()> {
        self.end("ROLLBACK")
    }

    fn end(&self, sql: &str) -> rusqlite::Result<()> {
        match self {
            Conn::Lite(c) => c.execute_batch(sql),
            Conn::Pg(_) => self.with_pg(|p| {
                p.in_tx = false;
                p.db.batch(sql)
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    Write,
    Exclusive,
    Read,
}

/// A prepared statement.
pub enum Stmt<'c> {
    Lite(LiteStmt<'c>),
    Pg {
        conn: &'c Conn,
        sql: String,
        columns: RefCell<Option<Vec<String>>>,
    },
}

/// A SQLite statement, cached or not.
pub enum LiteStmt<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Plain(rusqlite::Statement<'c>),
}

impl<'c> std::ops::Deref for LiteStmt<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &rusqlite::Statement<'c> {
        match self {
            LiteStmt::Cached(s) => s,
            LiteStmt::Plain(s) => s,
        }
    }
}

impl std::ops::DerefMut for LiteStmt<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            LiteStmt::Cached(s) => s,
            LiteStmt::Plain(s) => s,
        }
    }
}

fn pg_rows<P: Params>(
    conn: &Conn,
    sql: &str,
    columns: &RefCell<Option<Vec<String>>>,
    params: &P,
) -> rusqlite::Result<(Vec<db::Row>, Vec<String>)> {
    let vals = pg_params(params)?;
    let (rows, cols) = conn.with_pg(|p| p.db.query_named(sql, &vals))?;
    *columns.borrow_mut() = Some(cols.clone());
    Ok((rows, cols))
}

impl<'c> Stmt<'c> {
    pub fn execute<P: Params>(&mut self, params: P) -> rusqlite::Result<usize> {
        match self {
            Stmt::Lite(s) => s.execute(rusqlite::params_from_iter(lite_params(&params))),
            Stmt::Pg { conn, sql, .. } => conn.execute(sql, params),
        }
    }

    pub fn query_row<T, P: Params, F>(&mut self, params: P, f: F) -> rusqlite::Result<T>
    where
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        match self {
            Stmt::Lite(s) => s.query_row(rusqlite::params_from_iter(lite_params(&params)), |r| {
                f(&Row::Lite(r))
            }),
            Stmt::Pg { conn, sql, columns } => {
                let (rows, cols) = pg_rows(conn, sql, columns, &params)?;
                match rows.first() {
                    Some(r) => f(&Row::Pg(r, &cols)),
                    None => Err(rusqlite::Error::QueryReturnedNoRows),
                }
            }
        }
    }

    pub fn exists<P: Params>(&mut self, params: P) -> rusqlite::Result<bool> {
        match self {
            Stmt::Lite(s) => s.exists(rusqlite::params_from_iter(lite_params(&params))),
            Stmt::Pg { conn, sql, columns } => {
                Ok(!pg_rows(conn, sql, columns, &params)?.0.is_empty())
            }
        }
    }

    /// Every row mapped by `f` (SQLite: streamed; PostgreSQL: read whole).
    pub fn query_map<'s, T: 's, P: Params, F>(
        &'s mut self,
        params: P,
        mut f: F,
    ) -> rusqlite::Result<Mapped<'s, T>>
    where
        F: FnMut(&Row<'_>) -> rusqlite::Result<T> + 's,
    {
        match self {
            Stmt::Lite(s) => {
                let it = s
                    .query_map(rusqlite::params_from_iter(lite_params(&params)), move |r| {
                        f(&Row::Lite(r))
                    })?;
                Ok(Mapped(Box::new(it)))
            }
            Stmt::Pg { conn, sql, columns } => {
                let (rows, cols) = pg_rows(conn, sql, columns, &params)?;
                let out: Vec<rusqlite::Result<T>> =
                    rows.iter().map(|r| f(&Row::Pg(r, &cols))).collect();
                Ok(Mapped(Box::new(out.into_iter())))
            }
        }
    }

    /// The rows, to step through with `next`.
    pub fn query<P: Params>(&mut self, params: P) -> rusqlite::Result<Rows<'_>> {
        match self {
            Stmt::Lite(s) => Ok(Rows::Lite(
                s.query(rusqlite::params_from_iter(lite_params(&params)))?,
            )),
            Stmt::Pg { conn, sql, columns } => {
                let (rows, cols) = pg_rows(conn, sql, columns, &params)?;
                Ok(Rows::Pg {
                    rows,
                    cols,
                    at: Cell::new(0),
                })
            }
        }
    }

    pub fn column_names(&self) -> Vec<String> {
        match self {
            Stmt::Lite(s) => s.column_names().into_iter().map(String::from).collect(),
            Stmt::Pg { conn, sql, columns } => {
                if let Some(c) = columns.borrow().as_ref() {
                    return c.clone();
                }
                conn.with_pg(|p| p.db.columns_of(sql)).unwrap_or_default()
            }
        }
    }

    pub fn column_count(&self) -> usize {
        self.column_names().len()
    }
}

/// Mapped rows (`Stmt::query_map`).
pub struct Mapped<'s, T>(Box<dyn Iterator<Item = rusqlite::Result<T>> + 's>);

impl<T> Iterator for Mapped<'_, T> {
    type Item = rusqlite::Result<T>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

/// Rows to step through (`Stmt::query`).
pub enum Rows<'s> {
    Lite(rusqlite::Rows<'s>),
    Pg {
        rows: Vec<db::Row>,
        cols: Vec<String>,
        at: Cell<usize>,
    },
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> rusqlite::Result<Option<Row<'_>>> {
        match self {
            Rows::Lite(r) => Ok(r.next()?.map(Row::Lite)),
            Rows::Pg { rows, cols, at } => {
                let i = at.get();
                at.set(i + 1);
                Ok(rows.get(i).map(|r| Row::Pg(r, cols)))
            }
        }
    }
}

/// One result row.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a db::Row, &'a [String]),
}

/// A column index (by position, as rusqlite's `get::<_, T>(i)` is written).
pub trait Idx {
    fn at(self) -> usize;
}
impl Idx for usize {
    fn at(self) -> usize {
        self
    }
}

impl Row<'_> {
    pub fn get<I: Idx, T: FromSql>(&self, i: I) -> rusqlite::Result<T> {
        let i = i.at();
        match self {
            Row::Lite(r) => r.get(i),
            Row::Pg(r, cols) => {
                let v = r.0.get(i).ok_or(rusqlite::Error::InvalidColumnIndex(i))?;
                T::column_result(value_ref(v)).map_err(|e| match e {
                    rusqlite::types::FromSqlError::InvalidType => {
                        rusqlite::Error::InvalidColumnType(
                            i,
                            cols.get(i).cloned().unwrap_or_default(),
                            value_ref(v).data_type(),
                        )
                    }
                    other => rusqlite::Error::FromSqlConversionFailure(
                        i,
                        value_ref(v).data_type(),
                        Box::new(other),
                    ),
                })
            }
        }
    }

    pub fn get_ref<I: Idx>(&self, i: I) -> rusqlite::Result<ValueRef<'_>> {
        let i = i.at();
        match self {
            Row::Lite(r) => r.get_ref(i),
            Row::Pg(r, _) => {
                r.0.get(i)
                    .map(value_ref)
                    .ok_or(rusqlite::Error::InvalidColumnIndex(i))
            }
        }
    }
}
