//! The backend-neutral connection (issue 14): one enum over a SQLite connection and a
//! PostgreSQL client, with `execute`/`query_row`/`query` over a small neutral `Value`
//! and `Row`. Statements are written once with SQLite's `?N` placeholders; for
//! PostgreSQL they are translated to `$N` once per statement text and the prepared
//! statement is cached. Values are converted by the column's real type on the server,
//! so `timestamptz`, `bytea` and `jsonb` columns take and give the same text and bytes
//! the SQLite registry stores (RFC 3339 UTC seconds, raw bytes, compact JSON).
//!
//! Only statements written in the common dialect work on both: no `INSERT OR`, PRAGMA,
//! rowid, `group_concat` or `json_*` (see the store's module docs for what is ported).

use std::collections::HashMap;

use postgres::types::{IsNull, ToSql, Type};

use super::error::StoreError;
use crate::error::{Error, Result};

/// One SQL value, as both backends can hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| Error::Internal(format!("result column {i} does not exist")))
    }
    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(wrong(i, "an integer", other)),
        }
    }
    pub fn i64(&self, i: usize) -> Result<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| wrong(i, "an integer", &Value::Null))
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(wrong(i, "text", other)),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| wrong(i, "text", &Value::Null))
    }
    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Blob(v) => Ok(Some(v.clone())),
            other => Err(wrong(i, "bytes", other)),
        }
    }
}

fn wrong(i: usize, want: &str, got: &Value) -> Error {
    Error::Store(StoreError::Other(super::error::damaged(format!(
        "result column {i} should hold {want}, holds {got:?}"
    ))))
}

/// `?N` (and bare `?`) placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn to_dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1usize;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    next
                } else {
                    digits.parse().unwrap_or(next)
                };
                // As SQLite numbers a bare `?`: one past the largest so far.
                next = next.max(n + 1);
                out.push('$');
                out.push_str(&n.to_string());
            }
            None => out.push(c),
        }
    }
    out
}

/// Read queries in the common dialect, on whichever backend: what a function shared
/// by both registries takes (`Db`, or `Lite` over a SQLite store's connection).
pub trait Query {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
}

impl Query for Db {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Db::query(self, sql, params)
    }
}

/// A borrowed registry connection (a `Store`, `Tx` or `Snapshot`'s) as a `Query`.
pub struct On<'a>(pub &'a super::conn::Conn);

impl Query for On<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        use super::conn::Conn;
        match self.0 {
            Conn::Lite(c) => lite_query(c, sql, params),
            Conn::Pg(p) => Ok(p
                .borrow_mut()
                .db
                .query(&super::conn::dialect(sql), params)?),
        }
    }
}

fn lite_query(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map(rusqlite::params_from_iter(params.iter().map(lite)), |r| {
        (0..n)
            .map(|i| lite_value(r.get_ref(i)?))
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    Ok(rows
        .map(|r| r.map(Row))
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The neutral connection.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Pg {
        client: Box<postgres::Client>,
        /// Prepared statements by their `?N` text.
        cache: HashMap<String, postgres::Statement>,
        /// Inside BEGIN ... COMMIT/ROLLBACK (sent through `batch`): a statement the
        /// server refuses to prepare would abort the transaction, so `prepared` tries
        /// under a savepoint.
        in_tx: bool,
    },
}

impl Db {
    pub fn pg(client: postgres::Client) -> Db {
        Db::Pg {
            client: Box::new(client),
            cache: HashMap::new(),
            in_tx: false,
        }
    }

    pub fn is_pg(&self) -> bool {
        matches!(self, Db::Pg { .. })
    }

    /// Runs statements without parameters or results (DDL, BEGIN/COMMIT).
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(c) => c.execute_batch(sql)?,
            Db::Pg { client, in_tx, .. } => {
                client.batch_execute(sql).map_err(pg_err)?;
                let head: String = sql
                    .trim_start()
                    .chars()
                    .take(8)
                    .collect::<String>()
                    .to_ascii_uppercase();
                if head.starts_with("BEGIN") {
                    *in_tx = true;
                } else if head.starts_with("COMMIT") || head.starts_with("ROLLBACK") {
                    *in_tx = false;
                }
            }
        }
        Ok(())
    }

    /// Runs one statement; returns the number of rows changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(lite)))?;
                Ok(n as u64)
            }
            Db::Pg {
                client,
                cache,
                in_tx,
            } => {
                let stmt = prepared(client, cache, *in_tx, sql, params)?;
                let ps = pg_params(params);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                client
                    .execute(&stmt, &refs)
                    .map_err(|e| debug_err(sql, params, e))
            }
        }
    }

    /// Every row of one query.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Db::Sqlite(c) => lite_query(c, sql, params),
            Db::Pg {
                client,
                cache,
                in_tx,
            } => {
                let stmt = prepared(client, cache, *in_tx, sql, params)?;
                let ps = pg_params(params);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = client
                    .query(&stmt, &refs)
                    .map_err(|e| debug_err(sql, params, e))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// Every row of one query (PostgreSQL), with the result's column names.
    pub fn query_named(&mut self, sql: &str, params: &[Value]) -> Result<(Vec<Row>, Vec<String>)> {
        match self {
            Db::Sqlite(_) => Err(Error::Internal("query_named is for PostgreSQL".into())),
            Db::Pg {
                client,
                cache,
                in_tx,
            } => {
                let stmt = prepared(client, cache, *in_tx, sql, params)?;
                let cols = stmt
                    .columns()
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect();
                let ps = pg_params(params);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                let rows = client
                    .query(&stmt, &refs)
                    .map_err(|e| debug_err(sql, params, e))?;
                Ok((rows.iter().map(pg_row).collect::<Result<_>>()?, cols))
            }
        }
    }

    /// `COPY ... FROM STDIN` of `data` (PostgreSQL's text format); rows copied.
    pub fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64> {
        match self {
            Db::Sqlite(_) => Err(Error::Internal("COPY is for PostgreSQL".into())),
            Db::Pg { client, .. } => {
                use std::io::Write;
                let mut w = client.copy_in(sql).map_err(pg_err)?;
                w.write_all(data)
                    .map_err(|e| Error::Store(StoreError::Other(format!("COPY: {e}"))))?;
                w.finish().map_err(pg_err)
            }
        }
    }

    /// The result column names of a statement (PostgreSQL), without running it.
    pub fn columns_of(&mut self, sql: &str) -> Result<Vec<String>> {
        match self {
            Db::Sqlite(_) => Err(Error::Internal("columns_of is for PostgreSQL".into())),
            Db::Pg {
                client,
                cache,
                in_tx,
            } => Ok(prepared(client, cache, *in_tx, sql, &[])?
                .columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect()),
        }
    }

    /// The first row of one query, if any.
    pub fn query_row(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

fn prepared(
    client: &mut postgres::Client,
    cache: &mut HashMap<String, postgres::Statement>,
    in_tx: bool,
    sql: &str,
    params: &[Value],
) -> Result<postgres::Statement> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let text = to_dollar(sql);
    // The server infers each parameter's type from where it is used; one used only
    // where any type fits (`?1 IS NULL OR status = ?1` is written for SQLite) it cannot
    // infer: declare that one, first by the value bound to it, then by the other types
    // the registry's columns have until the statement is accepted.
    let mut types: Vec<Type> = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    // Only a statement that may need the retries below pays for the savepoint.
    let in_tx = in_tx && may_be_ambiguous(sql);
    if in_tx {
        client
            .batch_execute("SAVEPOINT cradle_prepare")
            .map_err(pg_err)?;
    }
    let stmt = loop {
        let e = match client.prepare_typed(&text, &types) {
            Ok(s) => break s,
            Err(e) => e,
        };
        if in_tx {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT cradle_prepare")
                .map_err(pg_err)?;
        }
        let undetermined = undetermined_param(&e).filter(|n| *n >= 1 && *n <= params.len().max(1));
        let next = match (undetermined, last) {
            (Some(n), _) if types.get(n - 1).is_none_or(|t| *t == Type::UNKNOWN) => Some((n, 0)),
            // The declared type does not fit where the parameter is used: the next one.
            (None, Some((n, c))) if type_mismatch(&e) && c + 1 < CANDIDATES.len() => {
                Some((n, c + 1))
            }
            _ => None,
        };
        let Some((n, c)) = next else {
            // For developers porting a query: which statement the server refused.
            if std::env::var_os("CRADLE_DEBUG_SQL").is_some() {
                eprintln!("cradle: PostgreSQL refused: {text}\n{e:?}");
            }
            if in_tx {
                let _ = client.batch_execute("RELEASE SAVEPOINT cradle_prepare");
            }
            return Err(pg_err(e));
        };
        if types.len() < n {
            types.resize(n, Type::UNKNOWN);
        }
        types[n - 1] = if c == 0 {
            match params.get(n - 1) {
                Some(Value::Int(_)) => Type::INT8,
                Some(Value::Real(_)) => Type::FLOAT8,
                Some(Value::Blob(_)) => Type::BYTEA,
                _ => Type::TEXT,
            }
        } else {
            CANDIDATES[c].clone()
        };
        last = Some((n, c));
    };
    if in_tx {
        client
            .batch_execute("RELEASE SAVEPOINT cradle_prepare")
            .map_err(pg_err)?;
    }
    cache.insert(sql.to_string(), stmt.clone());
    Ok(stmt)
}

/// Whether a parameter of `sql` may be one the server cannot type: one tested for
/// NULL (`?1 IS NULL OR x = ?1`) or compared to another parameter.
fn may_be_ambiguous(sql: &str) -> bool {
    let up = sql.to_ascii_uppercase();
    let b = up.as_bytes();
    let mut i = 0;
    while let Some(off) = up[i..].find('?') {
        let mut j = i + off + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let rest = up[j..].trim_start();
        if rest.starts_with("IS ") || rest.starts_with(")") || rest.starts_with("AS ") {
            return true;
        }
        i = j;
    }
    false
}

/// The types tried for a parameter the server cannot infer (after the bound value's).
const CANDIDATES: [Type; 6] = [
    Type::UNKNOWN,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT8,
    Type::DATE,
    Type::BYTEA,
];

/// An operator or function that does not take the declared parameter type.
fn type_mismatch(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNDEFINED_FUNCTION || *db.code() == SqlState::DATATYPE_MISMATCH
    })
}

/// `pg_err`, telling a developer (CRADLE_DEBUG_SQL) the statement and its parameters.
fn debug_err(sql: &str, params: &[Value], e: postgres::Error) -> Error {
    if std::env::var_os("CRADLE_DEBUG_SQL").is_some() {
        eprintln!("cradle: PostgreSQL failed: {sql}\nparams: {params:?}\n{e:?}");
    }
    pg_err(e)
}

/// The parameter number of "could not determine data type of parameter $N".
fn undetermined_param(e: &postgres::Error) -> Option<usize> {
    let db = e.as_db_error()?;
    use postgres::error::SqlState;
    if *db.code() != SqlState::AMBIGUOUS_PARAMETER && *db.code() != SqlState::INDETERMINATE_DATATYPE
    {
        return None;
    }
    db.message().rsplit('$').next()?.trim().parse().ok()
}

fn lite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as L;
    match v {
        Value::Null => L::Null,
        Value::Int(i) => L::Integer(*i),
        Value::Real(f) => L::Real(*f),
        Value::Text(s) => L::Text(s.clone()),
        Value::Blob(b) => L::Blob(b.clone()),
    }
}

fn lite_value(v: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<Value> {
    use rusqlite::types::ValueRef as R;
    Ok(match v {
        R::Null => Value::Null,
        R::Integer(i) => Value::Int(i),
        R::Real(f) => Value::Real(f),
        R::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        R::Blob(b) => Value::Blob(b.to_vec()),
    })
}

/// A neutral value bound as a PostgreSQL parameter of whatever type the server
/// inferred for its placeholder.
#[derive(Debug)]
struct PgParam(Value);

fn pg_params(params: &[Value]) -> Vec<PgParam> {
    params.iter().cloned().map(PgParam).collect()
}

/// Calendar dates as the registry writes them (asset columns).
const DATE: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

type BoxErr = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for PgParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, BoxErr> {
        match (&self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), t) if *t == Type::INT8 => i.to_sql(ty, out),
            (Value::Int(i), t) if *t == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), t) if *t == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), t) if *t == Type::BOOL => (*i != 0).to_sql(ty, out),
            (Value::Int(i), t) if *t == Type::FLOAT8 => (*i as f64).to_sql(ty, out),
            (Value::Real(f), t) if *t == Type::FLOAT8 => f.to_sql(ty, out),
            (Value::Text(s), t) if *t == Type::TIMESTAMPTZ => {
                let at =
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| format!("timestamp {s:?}: {e}"))?;
                at.to_sql(ty, out)
            }
            (Value::Text(s), t) if *t == Type::DATE => {
                let d = time::Date::parse(s, DATE).map_err(|e| format!("date {s:?}: {e}"))?;
                d.to_sql(ty, out)
            }
            (Value::Text(s), t) if *t == Type::JSONB || *t == Type::JSON => {
                let v: serde_json::Value = serde_json::from_str(s)?;
                v.to_sql(ty, out)
            }
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (Value::Int(i), t) if *t == Type::TEXT => i.to_string().to_sql(ty, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(ty, out),
            (v, t) => Err(format!("cannot bind {v:?} as {t}").into()),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    postgres::types::to_sql_checked!();
}

fn pg_row(r: &postgres::Row) -> Result<Row> {
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *t == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::Real))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Blob))
        } else if *t == Type::TIMESTAMPTZ {
            r.try_get::<_, Option<time::OffsetDateTime>>(i)
                .map(|v| v.map(|t| Value::Text(super::fmt_time(t))))
        } else if *t == Type::DATE {
            r.try_get::<_, Option<time::Date>>(i)
                .map(|v| v.map(|d| Value::Text(d.format(DATE).unwrap_or_else(|_| d.to_string()))))
        } else if *t == Type::JSONB || *t == Type::JSON {
            r.try_get::<_, Option<serde_json::Value>>(i)
                .map(|v| v.map(|j| Value::Text(j.to_string())))
        } else {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        };
        out.push(v.map_err(pg_err)?.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

/// A PostgreSQL error as the store's own: constraint violations apart (exit 7, as on
/// SQLite), lock timeouts as busy, lost connections by what happened.
pub fn pg_err(e: postgres::Error) -> Error {
    Error::Store(pg_store_err(&e))
}

pub fn pg_store_err(e: &postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        let c = db.code();
        if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::FOREIGN_KEY_VIOLATION
            || *c == SqlState::CHECK_VIOLATION
            || *c == SqlState::NOT_NULL_VIOLATION
        {
            return StoreError::Constraint(db.message().to_string());
        }
        if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED {
            return StoreError::Busy;
        }
        // The server going down under a station (pg_ctl stop, a crash, a restart).
        if *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CRASH_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW
        {
            return StoreError::Unreachable(format!(
                "the PostgreSQL registry went away: {}",
                db.message()
            ));
        }
        return StoreError::Other(db.message().to_string());
    }
    // A socket error mid-statement (the server killed or the network gone) is the same
    // as a closed connection to the station: exit 4, re-run when it is back.
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed()
        || io
        || e.to_string()
            .starts_with("error communicating with the server")
    {
        return StoreError::Unreachable(
            "the connection to the PostgreSQL registry was lost".to_string(),
        );
    }
    StoreError::Other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            to_dollar("SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '?3' AND e = ?"),
            "SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '?3' AND e = $3"
        );
        assert_eq!(
            to_dollar("INSERT INTO t VALUES (?, ?)"),
            "INSERT INTO t VALUES ($1, $2)"
        );
        assert_eq!(to_dollar("SELECT \"?x\""), "SELECT \"?x\"");
    }

    #[test]
    fn the_neutral_layer_round_trips_on_sqlite() {
        let mut db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)")
            .unwrap();
        let n = db
            .execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                &[Value::Int(7), "x".into(), Value::Blob(vec![0, 1])],
            )
            .unwrap();
        assert_eq!(n, 1);
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            &[Value::Null, Value::Null, Value::Null],
        )
        .unwrap();
        let rows = db
            .query("SELECT i, s, b FROM t ORDER BY i IS NULL, i", &[])
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].i64(0).unwrap(), 7);
        assert_eq!(rows[0].text(1).unwrap(), "x");
        assert_eq!(rows[0].opt_blob(2).unwrap(), Some(vec![0, 1]));
        assert_eq!(rows[1].opt_i64(0).unwrap(), None);
        // A column of the wrong type is a damaged row, not a panic.
        assert!(rows[0].text(0).is_err());
    }
}
