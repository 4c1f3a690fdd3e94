//! A prepared statement for bulk writers that binds per-row text without copying it.
//!
//! rusqlite binds every text with `SQLITE_TRANSIENT`, so SQLite copies each value into
//! an allocation of its own before the row is written and frees it afterwards: on a
//! million-row import that is some twenty allocations and copies per row for nothing.
//! `BulkStmt` binds the per-row values with `SQLITE_STATIC` instead. That is sound
//! because of how `exec` is built: it binds *every* per-row parameter from borrows
//! that live for the call, steps and resets the statement, and returns; SQLite reads
//! bound values only while stepping, and the next `exec` rebinds them all before the
//! next step. Parameters that stay the same for many rows are bound with `bind_const`
//! (copied once, as rusqlite would).

use std::ffi::{c_int, CStr};
use std::ops::Range;
use std::os::raw::c_char;
use std::ptr::NonNull;

use rusqlite::{ffi, Connection, Result};

/// A parameter value.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Val<'a> {
        v.map_or(Val::Null, Val::Text)
    }
}

pub struct BulkStmt<'c> {
    conn: &'c Connection,
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// 1-based indexes of the parameters `exec` binds on every call.
    per_row: Range<usize>,
    /// Text last bound by `set_const`, by parameter index.
    consts: Vec<Option<String>>,
}

impl<'c> BulkStmt<'c> {
    /// Prepares `sql`, whose parameters `per_row` (1-based, e.g. `1..14` for ?1–?13)
    /// change on every row; any other parameter must be set with `bind_const`.
    pub fn prepare(conn: &'c Connection, sql: &str, per_row: Range<usize>) -> Result<Self> {
        let db = unsafe { conn.handle() };
        let mut stmt = std::ptr::null_mut();
        let len = c_int::try_from(sql.len()).expect("short SQL");
        // SAFETY: `db` is the live handle of `conn`, which outlives the statement;
        // `sql` is valid for `len` bytes (it need not be NUL-terminated).
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(failure(conn, rc));
        }
        let stmt = NonNull::new(stmt).expect("a statement for non-empty SQL");
        // SAFETY: `stmt` was just prepared.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) } as usize;
        assert!(
            per_row.start >= 1 && per_row.end <= count + 1,
            "per-row parameters {per_row:?} out of 1..={count}"
        );
        Ok(BulkStmt {
            conn,
            stmt,
            per_row,
            consts: vec![None; count + 1],
        })
    }

    /// Binds a parameter that is not per-row; SQLite copies the value and keeps it
    /// bound across executions.
    pub fn bind_const(&mut self, idx: usize, v: Val<'_>) -> Result<()> {
        assert!(
            !self.per_row.contains(&idx),
            "?{idx} is a per-row parameter"
        );
        self.consts[idx] = None;
        self.bind(idx, v, ffi::SQLITE_TRANSIENT())
    }

    /// Binds a constant text parameter unless it already holds `v`.
    pub fn set_const(&mut self, idx: usize, v: &str) -> Result<()> {
        if self.consts[idx].as_deref() != Some(v) {
            self.bind_const(idx, Val::Text(v))?;
            self.consts[idx] = Some(v.to_string());
        }
        Ok(())
    }

    /// Binds `vals` to the per-row parameters (all of them), steps once and resets.
    /// Returns SQLite's error (e.g. a constraint violation) as `Err`.
    pub fn exec(&mut self, vals: &[Val<'_>]) -> Result<()> {
        assert_eq!(
            vals.len(),
            self.per_row.len(),
            "one value per per-row parameter"
        );
        for (idx, v) in self.per_row.clone().zip(vals) {
            // SQLITE_STATIC: see the module comment for why the borrow is enough.
            self.bind(idx, *v, ffi::SQLITE_STATIC())?;
        }
        let p = self.stmt.as_ptr();
        // SAFETY: `p` is a live prepared statement of `self.conn`, used from this
        // thread only (the type is neither Send nor Sync); every per-row parameter
        // was bound above from values borrowed for this call.
        let rc = unsafe { ffi::sqlite3_step(p) };
        // The error message must be read before the reset overwrites it.
        let err = (rc != ffi::SQLITE_DONE).then(|| failure(self.conn, rc));
        // SAFETY: as above. The reset's return value repeats the step's error.
        unsafe { ffi::sqlite3_reset(p) };
        match err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn bind(&mut self, idx: usize, v: Val<'_>, dtor: ffi::sqlite3_destructor_type) -> Result<()> {
        let p = self.stmt.as_ptr();
        let i = idx as c_int;
        // SAFETY: `p` is live; text pointers are valid for their length, and with
        // SQLITE_STATIC they are only read during the `exec` that bound them.
        let rc = unsafe {
            match v {
                Val::Null => ffi::sqlite3_bind_null(p, i),
                Val::Int(n) => ffi::sqlite3_bind_int64(p, i, n),
                Val::Text(t) => {
                    // An empty String's pointer dangles; give SQLite a real one.
                    let t = if t.is_empty() { "" } else { t };
                    let len = c_int::try_from(t.len())
                        .map_err(|_| failure(self.conn, ffi::SQLITE_TOOBIG))?;
                    ffi::sqlite3_bind_text(p, i, t.as_ptr().cast::<c_char>(), len, dtor)
                }
                Val::Blob(b) => {
                    let len = c_int::try_from(b.len())
                        .map_err(|_| failure(self.conn, ffi::SQLITE_TOOBIG))?;
                    // An empty slice's pointer dangles; give SQLite a real one.
                    static NONE: [u8; 1] = [0];
                    let ptr = if b.is_empty() {
                        NONE.as_ptr()
                    } else {
                        b.as_ptr()
                    };
                    ffi::sqlite3_bind_blob(p, i, ptr.cast(), len, dtor)
                }
            }
        };
        if rc != ffi::SQLITE_OK {
            return Err(failure(self.conn, rc));
        }
        Ok(())
    }
}

impl Drop for BulkStmt<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized exactly once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// SQLite's error for `rc`, with the connection's message, as rusqlite reports it.
fn failure(conn: &Connection, rc: c_int) -> rusqlite::Error {
    // SAFETY: the handle is live; sqlite3_errmsg returns a NUL-terminated string
    // owned by SQLite, copied out at once.
    let msg = unsafe {
        let m = ffi::sqlite3_errmsg(conn.handle());
        (!m.is_null()).then(|| CStr::from_ptr(m).to_string_lossy().into_owned())
    };
    // The connection reports extended codes; the step's `rc` may be the primary one.
    let code = unsafe { ffi::sqlite3_extended_errcode(conn.handle()) };
    let code = if code & 0xff == rc & 0xff { code } else { rc };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_per_row_and_constant_values_and_reports_constraints() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT NOT NULL UNIQUE, b INTEGER, c TEXT)")
            .unwrap();
        let mut st =
            BulkStmt::prepare(&conn, "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)", 1..3).unwrap();
        st.bind_const(3, Val::Text("same")).unwrap();
        for i in 0..3 {
            // A fresh String per row: the statement must not keep the old pointer.
            let a = format!("row-{i}");
            st.exec(&[Val::Text(&a), Val::Int(i)]).unwrap();
        }
        st.exec(&[Val::Text(""), Val::Null]).unwrap();
        let err = st.exec(&[Val::Text("row-1"), Val::Int(9)]).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{err}"
        );
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        let rows: Vec<(String, Option<i64>, String)> = conn
            .prepare("SELECT a, b, c FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[2], ("row-2".into(), Some(2), "same".into()));
        assert_eq!(rows[3], ("".into(), None, "same".into()));
    }
}
