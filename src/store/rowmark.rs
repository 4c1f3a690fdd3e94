//! Keyed marks over device rows: `devices.mark` is an HMAC-SHA256 over every other
//! column of the row, so that a row changed behind cradle's back (the sqlite3 shell, a
//! script, a flipped bit) no longer verifies in `cradle audit`.
//!
//! The key is derived from the event log key (`HOME/log.key`, see `logkey`): every
//! writer of the registry already holds that key (the store loads it for the first
//! event of a transaction), the audit already reads it, and it is never in the
//! registry. The CA's `audit.key` would not do: `device set` and `inventory import`
//! never open the CA folder.
//!
//! How every write gets its mark: each writing connection registers the SQL function
//! `cradle_device_mark` (holding the key) and two TEMP triggers that re-mark a row after
//! any INSERT or UPDATE of it. TEMP triggers live in the connection, not in the file,
//! so the sqlite3 shell (or any other program) writes rows without marks, and the key
//! never leaves this process. The function is direct-only: a trigger stored in the
//! registry file cannot call it. The bulk import computes the marks in Rust and
//! inserts them with the rows (the INSERT trigger skips rows that come with a mark).
//!
//! The encoding is canonical and unambiguous: for every column except `mark`, in table
//! order, whose value is not NULL: the column's position (u16), the value's SQLite type
//! (u8), its length (LEB128) and its bytes (integers and reals as 8 bytes big-endian);
//! the key, derived for this use alone, separates it from every other MAC. The id is a column like any other, so two rows cannot be
//! swapped. NULL columns are left out, so that a later migration appending a column
//! that is NULL for old rows keeps their marks valid (one adding a column with a
//! non-NULL default, or rebuilding the table in another column order, must re-mark
//! every row). Positions rather than names keep the hashed bytes short: the bulk import
//! hashes each row it inserts.

use std::sync::{Arc, OnceLock};

use hmac::Mac;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::conn::Conn;

use super::logkey::{EventMac, LogKey};
use super::Tx;
use crate::error::Result;
use crate::model::EventKind;

/// The column that holds the mark.
pub const MARK_COLUMN: &str = "mark";
/// `meta` key recording that every device row of this registry is marked (set when the
/// registry is created, or by the backfill of an older one): from then on a row
/// without a mark is a finding, not a leftover.
pub const META_KEY: &str = "device_marks";
/// The SQL functions the TEMP triggers call: the mark of a row, and whether a row's
/// mark (the first argument) verifies.
const FUNCTION: &str = "cradle_device_mark";
const HOLDS: &str = "cradle_device_mark_holds";

/// Domain separation: the mark key is derived from the log key for this use only.
const DERIVE_LABEL: &[u8] = b"cradle device row mark key v1";

/// The MAC key of device marks (derived from the log key).
#[derive(Clone)]
pub struct RowKey {
    mac: EventMac,
}

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowKey(..)")
    }
}

/// A column value as the mark covers it.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(v: ValueRef<'a>) -> Cell<'a> {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Int(n),
            ValueRef::Real(x) => Cell::Real(x),
            ValueRef::Text(t) => Cell::Text(t),
            ValueRef::Blob(b) => Cell::Blob(b),
        }
    }
}

impl RowKey {
    pub fn from_log_key(k: &LogKey) -> RowKey {
        let derived = zeroize::Zeroizing::new(k.derive(DERIVE_LABEL));
        RowKey {
            mac: <EventMac as hmac::digest::KeyInit>::new_from_slice(&derived[..])
                .expect("any key length"),
        }
    }

    fn feed<'a>(&self, cols: impl IntoIterator<Item = Cell<'a>>) -> EventMac {
        let mut m = self.mac.clone();
        // Fields are small: gather them and hash in few large updates.
        let mut buf = [0u8; 512];
        let mut n = 0;
        let mut put = |m: &mut EventMac, b: &[u8]| {
            if n + b.len() > buf.len() {
                m.update(&buf[..n]);
                n = 0;
                if b.len() > buf.len() {
                    m.update(b);
                    return;
                }
            }
            buf[n..n + b.len()].copy_from_slice(b);
            n += b.len();
        };
        for (i, v) in cols.into_iter().enumerate() {
            let num: [u8; 8];
            let (tag, bytes): (u8, &[u8]) = match v {
                Cell::Null => continue,
                Cell::Int(x) => {
                    num = x.to_be_bytes();
                    (1, &num)
                }
                Cell::Real(x) => {
                    num = x.to_bits().to_be_bytes();
                    (2, &num)
                }
                Cell::Text(t) => (3, t),
                Cell::Blob(b) => (4, b),
            };
            // Position (u16), type, length (LEB128): a prefix code, so unambiguous.
            let mut head = [0u8; 13];
            head[..2].copy_from_slice(&(i as u16).to_be_bytes());
            head[2] = tag;
            let mut len = bytes.len() as u64;
            let mut h = 3;
            loop {
                let low = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    head[h] = low;
                    h += 1;
                    break;
                }
                head[h] = low | 0x80;
                h += 1;
            }
            put(&mut m, &head[..h]);
            put(&mut m, bytes);
        }
        m.update(&buf[..n]);
        m
    }

    /// The mark of a row: the values of every column but `mark`, in table order.
    pub fn mark<'a>(&self, cols: impl IntoIterator<Item = Cell<'a>>) -> [u8; 32] {
        self.feed(cols).finalize().into_bytes().into()
    }

    /// Whether `mark` is the mark of the row (constant-time compare).
    pub fn verify<'a>(&self, cols: impl IntoIterator<Item = Cell<'a>>, mark: &[u8]) -> bool {
        self.feed(cols).verify_slice(mark).is_ok()
    }
}

/// The columns of `devices` a mark covers, in table order (every one but `mark`).
pub fn marked_columns(conn: &Conn) -> Result<Vec<String>> {
    let mut st = conn.prepare(if conn.is_pg() {
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'devices' ORDER BY ordinal_position"
    } else {
        "SELECT name FROM pragma_table_info('devices') ORDER BY cid"
    })?;
    let names = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for n in names {
        let n = n?;
        if n != MARK_COLUMN {
            out.push(n);
        }
    }
    Ok(out)
}

/// `marked_columns` of a SQLite connection (the TEMP triggers' own).
pub(super) fn lite_columns(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info('devices') ORDER BY cid")?;
    let names = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for n in names {
        let n = n?;
        if n != MARK_COLUMN {
            out.push(n);
        }
    }
    Ok(out)
}

/// PostgreSQL: how a write transaction learns which device rows it changed (the key
/// never reaches the server, so no trigger there can mark a row). Migration 11's
/// trigger notes each row an INSERT or UPDATE touches in this session's TEMP tables,
/// with the row as it was before its first change in the transaction; a session
/// without these tables (psql, any other program) is not noted, so its changes keep
/// marks that no longer verify. `mark_touched` marks at commit: every inserted row, and
/// every updated row whose mark held before (as SQLite's TEMP trigger does: a row
/// changed behind cradle's back is not laundered by cradle's next write).
pub(super) const PG_TOUCHED_TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS cradle_touched (id BIGINT PRIMARY KEY, fresh BOOLEAN NOT NULL)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS cradle_touched_old (LIKE devices) ON COMMIT DELETE ROWS;
";

/// Marks the device rows this PostgreSQL transaction touched (see `PG_TOUCHED_TABLES`).
pub(super) fn mark_touched(conn: &Conn, key: &RowKey) -> Result<u64> {
    let touched: i64 = conn.query_row("SELECT count(*) FROM pg_temp.cradle_touched", [], |r| {
        r.get(0)
    })?;
    if touched == 0 {
        return Ok(0);
    }
    // Updated rows: did the mark hold before the first change?
    let mut held = std::collections::HashSet::new();
    {
        let mut st = conn.prepare_cached("SELECT * FROM pg_temp.cradle_touched_old")?;
        let names = st.column_names();
        let at = |n: &str| names.iter().position(|c| c == n);
        let (Some(mark_at), Some(id_at)) = (at(MARK_COLUMN), at("id")) else {
            return Ok(0);
        };
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(id_at)?;
            if let ValueRef::Blob(m) = r.get_ref(mark_at)? {
                let mut cols = Vec::with_capacity(names.len());
                for i in (0..names.len()).filter(|&i| i != mark_at) {
                    cols.push(Cell::from(r.get_ref(i)?));
                }
                if key.verify(cols, m) {
                    held.insert(id);
                }
            }
        }
    }
    let mut cond = String::from("id IN (SELECT id FROM pg_temp.cradle_touched WHERE fresh)");
    if !held.is_empty() {
        // Ids are integers from the database itself: safe to list in the statement.
        let ids: Vec<String> = held.iter().map(|id| id.to_string()).collect();
        cond.push_str(&format!(" OR id IN ({})", ids.join(",")));
    }
    pg_mark_where(conn, key, &cond)
}

/// Computes and stores the marks of the device rows matching `cond` (PostgreSQL),
/// with the touched-row trigger told to stand aside.
fn pg_mark_where(conn: &Conn, key: &RowKey, cond: &str) -> Result<u64> {
    let mut marks: Vec<(i64, Vec<u8>)> = Vec::new();
    {
        let mut st = conn.prepare(&format!("SELECT * FROM devices WHERE {cond} ORDER BY id"))?;
        let names = st.column_names();
        let at = |n: &str| names.iter().position(|c| c == n);
        let (Some(mark_at), Some(id_at)) = (at(MARK_COLUMN), at("id")) else {
            return Ok(0);
        };
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let mut cols = Vec::with_capacity(names.len());
            for i in (0..names.len()).filter(|&i| i != mark_at) {
                cols.push(Cell::from(r.get_ref(i)?));
            }
            marks.push((r.get(id_at)?, key.mark(cols).to_vec()));
        }
    }
    conn.execute_batch("SELECT set_config('cradle.marking', 'on', true)")?;
    // In chunks, one statement each (a round trip per row made a 20k-row import 17x
    // slower than on SQLite).
    const CHUNK: usize = 500;
    for chunk in marks.chunks(CHUNK) {
        let mut sql = String::from("UPDATE devices SET mark = v.m FROM (VALUES ");
        for k in 0..chunk.len() {
            if k > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(?{}::bigint, ?{}::bytea)", 2 * k + 1, 2 * k + 2));
        }
        // The id range lets the planner walk the primary key even when its statistics
        // predate a bulk insert (it chose a scan of the whole table per chunk: minutes
        // for a 200k-row import).
        let (lo, hi) = (chunk[0].0, chunk[chunk.len() - 1].0);
        sql.push_str(&format!(
            ") AS v(id, m) WHERE devices.id = v.id AND devices.id BETWEEN {lo} AND {hi}"
        ));
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 2);
        for (id, m) in chunk {
            params.push(id);
            params.push(m);
        }
        conn.execute(&sql, &params[..])?;
    }
    conn.execute_batch("SELECT set_config('cradle.marking', 'off', true)")?;
    Ok(marks.len() as u64)
}

fn quoted(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Registers the mark functions (holding whatever key `slot` gets) and the TEMP
/// triggers on this writing connection. Run outside a transaction: TEMP schema
/// changes made inside one are rolled back with it.
///
/// An update re-marks the row only if its mark held before: a row changed behind
/// cradle's back keeps a mark that does not verify (or none) through later cradle
/// writes, so the next write of that device does not launder the change.
pub(super) fn install(conn: &Connection, slot: Arc<OnceLock<RowKey>>) -> Result<()> {
    let cols = lite_columns(conn)?;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_DIRECTONLY;
    let key_of = |slot: &OnceLock<RowKey>| -> rusqlite::Result<RowKey> {
        slot.get().cloned().ok_or_else(|| {
            rusqlite::Error::UserFunctionError(
                "device marks: the key is not loaded (write outside a cradle transaction)".into(),
            )
        })
    };
    let (ncols, key_slot) = (cols.len(), slot.clone());
    conn.create_scalar_function(FUNCTION, cols.len() as i32, flags, move |ctx| {
        let key = key_of(&key_slot)?;
        let row = (0..ncols).map(|i| Cell::from(ctx.get_raw(i)));
        Ok(key.mark(row).to_vec())
    })?;
    conn.create_scalar_function(HOLDS, cols.len() as i32 + 1, flags, move |ctx| {
        let key = key_of(&slot)?;
        let ValueRef::Blob(mark) = ctx.get_raw(0) else {
            return Ok(false);
        };
        let row = (0..ncols).map(|i| Cell::from(ctx.get_raw(i + 1)));
        Ok(key.verify(row, mark))
    })?;
    let list = quoted(&cols);
    let old_list = cols
        .iter()
        .map(|c| format!("OLD.\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS temp.{INSERT_TRIGGER};
         DROP TRIGGER IF EXISTS temp.{UPDATE_TRIGGER};
         {}
         CREATE TEMP TRIGGER {UPDATE_TRIGGER} AFTER UPDATE OF {list} ON main.devices
         WHEN {HOLDS}(OLD.mark, {old_list}) BEGIN
             UPDATE devices SET mark = {FUNCTION}({list}) WHERE id = NEW.id;
         END;",
        insert_trigger_sql(&cols)
    ))?;
    Ok(())
}

const INSERT_TRIGGER: &str = "cradle_device_mark_insert";
const UPDATE_TRIGGER: &str = "cradle_device_mark_update";

fn insert_trigger_sql(cols: &[String]) -> String {
    format!(
        "CREATE TEMP TRIGGER IF NOT EXISTS {INSERT_TRIGGER} AFTER INSERT ON main.devices
         WHEN NEW.mark IS NULL BEGIN
             UPDATE devices SET mark = {FUNCTION}({}) WHERE id = NEW.id;
         END;",
        quoted(cols)
    )
}

/// Whether both TEMP triggers are in place on this connection.
pub(super) fn installed(conn: &Connection) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM temp.sqlite_master WHERE type = 'trigger' AND name IN (?1, ?2)",
        [INSERT_TRIGGER, UPDATE_TRIGGER],
        |r| r.get(0),
    )?;
    Ok(n == 2)
}

/// For a bulk writer that marks the rows it inserts itself: drops the INSERT trigger
/// for the rest of its work in this transaction. Any trigger on the table makes SQLite
/// keep a statement journal for every multi-row INSERT (100k-row import: 35k writes
/// instead of 5k, +40% CPU). `resume_insert_trigger` puts it back; a rollback does
/// too, and `Store::write` re-installs it before the next transaction if it is missing.
pub(super) fn suspend_insert_trigger(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!("DROP TRIGGER IF EXISTS temp.{INSERT_TRIGGER};"))?;
    Ok(())
}

pub(super) fn resume_insert_trigger(conn: &Connection) -> Result<()> {
    conn.execute_batch(&insert_trigger_sql(&lite_columns(conn)?))?;
    Ok(())
}

/// Marks one row now (a bulk writer's row it could not mark itself).
pub(super) fn mark_row(conn: &Connection, id: i64) -> Result<()> {
    let cols = quoted(&lite_columns(conn)?);
    conn.prepare_cached(&format!(
        "UPDATE devices SET mark = {FUNCTION}({cols}) WHERE id = ?1"
    ))?
    .execute([id])?;
    Ok(())
}

/// Whether the registry records that its device rows are marked.
pub fn recorded(conn: &Conn) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM meta WHERE key = ?1", [META_KEY], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether the keyed event log says device rows are marked: the registry was created
/// with marks (`home.initialised` says so) or an older one was backfilled
/// (`devices.marked`). Scans the log; only asked when `meta` has no record.
pub fn logged(conn: &Conn) -> Result<bool> {
    // `events.details` is text on both backends (hashed as stored); PostgreSQL has no
    // json_valid before 16, and a damaged row must not fail the query.
    let sql = if conn.is_pg() {
        "SELECT 1 FROM events WHERE kind = ?1
            OR (kind = ?2 AND details ~ '\"device_marks\"\\s*:\\s*true')
         LIMIT 1"
    } else {
        "SELECT 1 FROM events WHERE kind = ?1
            OR (kind = ?2 AND CASE WHEN json_valid(details)
                THEN json_extract(details, '$.device_marks') IS 1 END)
         LIMIT 1"
    };
    Ok(conn
        .query_row(
            sql,
            [
                EventKind::DevicesMarked.as_str(),
                EventKind::HomeInitialised.as_str(),
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Records, in a new registry, that its device rows are marked from the start.
pub(super) fn record_new(conn: &Conn) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
        [META_KEY, &super::now_rfc3339()],
    )?;
    Ok(())
}

/// The first write transaction of a registry from before device marks marks every row
/// (in this transaction: a rollback undoes it), records that in `meta` and in a keyed
/// `devices.marked` event. When `meta` lost its record but the log has one, nothing is
/// marked: the unmarked rows stay findings for the audit. Returns whether that is
/// settled for good (false: this transaction backfilled, and may still roll back).
pub(super) fn backfill(tx: &Tx<'_>) -> Result<bool> {
    let conn = tx.conn();
    if recorded(conn)? || logged(conn)? {
        return Ok(true);
    }
    let n = match conn.lite() {
        Some(c) => {
            let cols = quoted(&lite_columns(c)?);
            c.execute(
                &format!("UPDATE main.devices SET mark = {FUNCTION}({cols}) WHERE mark IS NULL"),
                [],
            )? as u64
        }
        None => match &tx.row_key {
            Some(key) => pg_mark_where(conn, key, "mark IS NULL")?,
            None => 0,
        },
    };
    let now = super::now_rfc3339();
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        [META_KEY, &now],
    )?;
    tx.append_raw(
        None,
        EventKind::DevicesMarked.as_str(),
        "cradle",
        "",
        &serde_json::json!({ "rows": n }).to_string(),
        &now,
    )?;
    Ok(false)
}

/// A device row whose mark is missing or does not verify.
#[derive(Debug, Clone)]
pub struct BadMark {
    pub id: i64,
    pub serial: String,
    /// The row has no mark at all (else it has one that does not verify).
    pub missing: bool,
}

/// Calls `each` for every device row whose mark does not verify, and, when `require`,
/// for every row without one. Returns how many rows were checked.
pub fn bad_marks(
    conn: &Conn,
    key: &RowKey,
    require: bool,
    mut each: impl FnMut(BadMark) -> Result<()>,
) -> Result<u64> {
    let mut st = conn.prepare("SELECT * FROM main.devices ORDER BY id")?;
    let names: Vec<String> = st.column_names();
    let at = |n: &str| names.iter().position(|c| c == n);
    let (Some(mark_at), Some(id_at), Some(serial_at)) = (at(MARK_COLUMN), at("id"), at("serial"))
    else {
        return Ok(0);
    };
    let mut rows = st.query([])?;
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        n += 1;
        let id = match r.get_ref(id_at)? {
            ValueRef::Integer(i) => i,
            _ => 0,
        };
        let serial = match r.get_ref(serial_at)? {
            ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(x) => x.to_string(),
            ValueRef::Null => format!("#{id}"),
        };
        let problem = match r.get_ref(mark_at)? {
            ValueRef::Null => require.then_some(true),
            ValueRef::Blob(m) => {
                let mut cols = Vec::with_capacity(names.len());
                for i in (0..names.len()).filter(|&i| i != mark_at) {
                    cols.push(Cell::from(r.get_ref(i)?));
                }
                (!key.verify(cols, m)).then_some(false)
            }
            _ => Some(false),
        };
        if let Some(missing) = problem {
            each(BadMark {
                id,
                serial,
                missing,
            })?;
        }
    }
    Ok(n)
}

/// Triggers stored in the registry file: cradle never creates one, and one could
/// rewrite device rows whenever cradle writes them (and they would be marked).
pub fn stored_triggers(conn: &Conn) -> Result<Vec<(String, String)>> {
    // On PostgreSQL cradle's own trigger (it only notes which rows changed) is expected.
    let mut st = conn.prepare(if conn.is_pg() {
        "SELECT t.tgname::text, c.relname::text FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace
           AND t.tgname <> 'cradle_device_touched'
         ORDER BY 1"
    } else {
        "SELECT name, tbl_name FROM main.sqlite_master WHERE type = 'trigger' ORDER BY name"
    })?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RowKey {
        let dir = tempfile::tempdir().unwrap();
        RowKey::from_log_key(&LogKey::create_at(&dir.path().join("log.key"), 1).unwrap())
    }

    #[test]
    fn the_encoding_separates_fields_types_and_positions() {
        let k = key();
        let t = |s: &'static str| Cell::Text(s.as_bytes());
        let base = k.mark([Cell::Int(1), t("ab"), t("c")]);
        // Bytes moved between fields, a type changed, a NULL vs an empty text, a value
        // moved to another column, another id: all different marks.
        for other in [
            k.mark([Cell::Int(1), t("a"), t("bc")]),
            k.mark([Cell::Int(1), Cell::Blob(b"ab"), t("c")]),
            k.mark([Cell::Int(2), t("ab"), t("c")]),
            k.mark([Cell::Int(1), t("ab"), t("c"), t("")]),
            k.mark([Cell::Int(1), t("ab"), Cell::Null, t("c")]),
        ] {
            assert_ne!(base, other);
        }
        // A NULL appended by a later migration keeps the mark.
        assert_eq!(base, k.mark([Cell::Int(1), t("ab"), t("c"), Cell::Null]));
        assert!(k.verify([Cell::Int(1), t("ab"), t("c")], &base));
        assert!(!k.verify([Cell::Int(1), t("ab"), t("c")], &base[..31]));
        // Another registry's key makes other marks; a long value is covered whole.
        assert_ne!(base, key().mark([Cell::Int(1), t("ab"), t("c")]));
        let long = "x".repeat(2000);
        let mut longer = long.clone();
        longer.push('y');
        assert_ne!(
            k.mark([Cell::Text(long.as_bytes())]),
            k.mark([Cell::Text(longer.as_bytes())])
        );
    }
}
