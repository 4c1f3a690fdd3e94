//! `cradle registry copy` (issue 14): the whole registry of one backend copied into a new,
//! empty one (a SQLite file or a PostgreSQL database), verified before it is kept.
//!
//! What is copied is found, not listed: every table of the source (SQLite's own
//! `sqlite_*` and PostgreSQL's `cradle_schema` apart, each target makes its own), every
//! column by name, parents before children (the source's foreign keys), ids as they
//! are. The target is made by this binary at its schema version; a source table or
//! column the target lacks is refused before anything is written.
//!
//! One target transaction: the schema (PostgreSQL), the rows, the identity sequences
//! moved past the largest id, then the checks, then COMMIT. The checks run on the
//! target's own connection inside that transaction, on the values as the target gives
//! them back: the event chain (keyed by this home's log key) must verify with the
//! source's head, and every device row's mark must verify. Any failure rolls the whole
//! copy back (a SQLite target file is removed), so a target is either a verified copy
//! or untouched.
//!
//! Marks cover column values as the backend returns them (`rowmark`). The backends
//! agree on what cradle writes (RFC 3339 whole-second UTC timestamps, compact JSON with
//! sorted keys, bytes as bytes), so marks normally arrive valid. A row whose value comes
//! back in another spelling (JSON written by another tool with its keys unsorted or
//! spaced, which `jsonb` re-serialises) is re-marked in the target with the same key,
//! and only because its mark verified in the source; the target's chain then records
//! that in a `devices.marked` event naming how many rows and why. The source is refused
//! if its chain is broken or any device mark does not verify there: a copy never
//! launders a change made behind cradle's back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};
use serde::Serialize;

use super::conn::{params_from_iter, Begin, Conn};
use super::db::Db;
use super::error::StoreError;
use super::events::{self, ChainReport};
use super::logkey::{self, LogKey};
use super::pgurl::PgTarget;
use super::rowmark::{self, Cell, RowKey, MARK_COLUMN};
use super::{Reader, Store, Tx};
use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};

/// Where a copy goes.
pub enum Target {
    /// A SQLite file that must not exist yet; the log key is written beside it.
    File(PathBuf),
    /// An existing, empty PostgreSQL database.
    Pg {
        target: Box<PgTarget>,
        timeout: Duration,
    },
}

impl Target {
    /// The file or URL, as messages and reports name it.
    pub fn name(&self) -> String {
        match self {
            Target::File(p) => p.display().to_string(),
            Target::Pg { target, .. } => target.url.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
}

/// What a finished copy did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub source: String,
    pub target: String,
    /// Tables in the order they were copied (parents first), with their row counts.
    pub tables: Vec<TableCount>,
    pub rows: u64,
    /// Events in the target's chain, and its head (the source's head, or the
    /// `devices.marked` event after it when rows were re-marked).
    pub events: u64,
    pub head_id: i64,
    pub head_hash: String,
    /// The source's head, which the target's chain holds unchanged.
    pub source_head_id: i64,
    pub source_head_hash: String,
    /// Device rows whose mark was checked on arrival, and how many were re-marked.
    pub devices_checked: u64,
    pub remarked: u64,
    /// The log key file written beside a SQLite target (None: already there, or PG).
    pub log_key_written: Option<String>,
}

/// Copies the whole registry `source` to `to`. `progress(table, rows_done, rows_total)`
/// is called as rows go in (for a progress bar); `actor` signs the `devices.marked`
/// event if rows had to be re-marked.
pub fn copy(
    source: &Store,
    to: &Target,
    actor: &Actor,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Report> {
    let key_file = source
        .conn
        .key_file()
        .ok_or_else(|| Error::usage("an in-memory registry cannot be copied"))?;
    let key = LogKey::read(&key_file)?.ok_or_else(|| {
        Error::input(format!(
            "no log key at {}: without it the copy cannot be verified",
            key_file.display()
        ))
    })?;
    let row_key = RowKey::from_log_key(&key);
    let source_name = source.path().display().to_string();

    // Everything that can refuse without reading the source, first.
    let pg_db = match to {
        Target::File(p) => {
            refuse_existing_file(p, &key_file)?;
            None
        }
        Target::Pg { target, timeout } => {
            let mut db = Db::pg(target.connect(*timeout)?);
            refuse_non_empty(&mut db, &target.url)?;
            Some(db)
        }
    };

    // One consistent view of the source for the checks and every table.
    let snap = source.snapshot()?;
    let src = snap.conn();
    let chain = verify_chain_paged(src, &key)?;
    refuse_broken(&source_name, &chain)?;
    let require_marks = rowmark::recorded(src)? || rowmark::logged(src)?;
    let (_, bad) = bad_marks_paged(src, &row_key, require_marks)?;
    if !bad.is_empty() {
        return Err(Error::Store(StoreError::corrupt(
            &source_name,
            format!(
                "{} device row(s) whose mark does not verify (first: {}): refusing to copy rows changed behind cradle's back (cradle audit lists them)",
                bad.len(),
                bad[0].1
            ),
        )));
    }
    let tables = ordered_tables(src)?;
    let mut counts = Vec::with_capacity(tables.len());
    let mut total = 0u64;
    for (t, _) in &tables {
        let n: i64 = src.query_row(&format!("SELECT count(*) FROM {}", q(t)), [], |r| r.get(0))?;
        counts.push(n as u64);
        total += n as u64;
    }

    // The target: made now, filled and checked in one transaction.
    let (lite_store, written_key) = match to {
        Target::File(p) => {
            let beside = logkey::key_path(p);
            let written = if beside.exists() {
                None
            } else {
                copy_key(&key_file, &beside)?;
                Some(beside)
            };
            match Store::create(p) {
                Ok(s) => (Some(s), written),
                Err(e) => {
                    remove_file_target(p, written.as_deref());
                    return Err(e);
                }
            }
        }
        Target::Pg { .. } => (None, None),
    };
    let pg_conn = pg_db.map(|db| Conn::pg(db, key_file.clone()));
    let conn = match (&lite_store, &pg_conn) {
        (Some(s), _) => &s.conn,
        (None, Some(c)) => c,
        (None, None) => unreachable!("a copy has a target"),
    };
    let mut ctx = Fill {
        src,
        dst: conn,
        tables: &tables,
        counts: &counts,
        total,
        row_key: &row_key,
        key: &key,
        require_marks,
        chain: &chain,
        actor,
        source_name: &source_name,
        target_name: to.name(),
        progress,
    };
    let filled = ctx.run();
    drop(snap);
    let report = match filled {
        Ok(mut r) => {
            r.log_key_written = written_key.as_ref().map(|p| p.display().to_string());
            r
        }
        Err(e) => {
            drop(lite_store);
            if let Target::File(p) = to {
                remove_file_target(p, written_key.as_deref());
            }
            return Err(e);
        }
    };
    // Open it as any command will: identity and schema version checked.
    drop(lite_store);
    drop(pg_conn);
    let reopened = match to {
        Target::File(p) => Store::open(p),
        Target::Pg { target, timeout } => Store::open_pg(target, *timeout, &key_file),
    }?;
    let version = reopened.schema_version()?;
    if version != super::schema::MIGRATIONS.len() {
        return Err(Error::Internal(format!(
            "the copy at {} has schema version {version}",
            to.name()
        )));
    }
    Ok(report)
}

/// The target file must not exist, and a log key already beside it must be this one.
fn refuse_existing_file(p: &Path, key_file: &Path) -> Result<()> {
    if p.exists() {
        return Err(Error::conflict(format!(
            "{} already exists; registry copy writes a new file (nothing was written)",
            p.display()
        )));
    }
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir.filter(|d| !d.is_dir()) {
        return Err(Error::io(
            d,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such directory for the copy (nothing was written)",
            ),
        ));
    }
    let beside = logkey::key_path(p);
    if beside.exists() {
        let same = std::fs::read(&beside).map_err(|e| Error::io(&beside, e))?
            == std::fs::read(key_file).map_err(|e| Error::io(key_file, e))?;
        if !same {
            return Err(Error::conflict(format!(
                "{} already exists and is another registry's log key; copy to a file in another directory (nothing was written)",
                beside.display()
            )));
        }
    }
    Ok(())
}

fn refuse_non_empty(db: &mut Db, url: &str) -> Result<()> {
    let n = super::pg::user_tables(db)?;
    if n > 0 {
        return Err(Error::conflict(format!(
            "registry copy: {url} is not empty ({n} table(s)); refusing to copy into it (give the copy an empty database; nothing was written)"
        )));
    }
    Ok(())
}

fn refuse_broken(name: &str, chain: &ChainReport) -> Result<()> {
    if let Some(b) = &chain.first_break {
        return Err(Error::Store(StoreError::corrupt(
            name,
            format!(
                "event chain broken at event {} ({}): refusing to copy it (cradle log verify says more)",
                b.event_id, b.problem
            ),
        )));
    }
    if let Some(from) = chain.structure_only_from {
        return Err(Error::Store(StoreError::corrupt(
            name,
            format!("events from {from} on are keyed with a key this home does not have: refusing to copy a chain it cannot verify"),
        )));
    }
    Ok(())
}

/// Copies a log key file to `to` (0600, never replacing a file): beside a SQLite copy,
/// or into a joining station's home.
pub fn copy_key(from: &Path, to: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = zeroize::Zeroizing::new(std::fs::read(from).map_err(|e| Error::io(from, e))?);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io(to, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(to, e))
}

/// Removes a SQLite target this copy made (file, WAL, shared memory, and the key it wrote).
fn remove_file_target(p: &Path, key: Option<&Path>) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut f = p.as_os_str().to_owned();
        f.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(f));
    }
    if let Some(k) = key {
        let _ = std::fs::remove_file(k);
    }
}

/// A SQL identifier, quoted.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The registry's tables on `conn` (each backend's bookkeeping table apart).
fn table_names(conn: &Conn) -> Result<Vec<String>> {
    let sql = if conn.is_pg() {
        "SELECT tablename::text FROM pg_catalog.pg_tables
         WHERE schemaname = current_schema() AND tablename <> 'cradle_schema' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY 1"
    };
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A table's columns in table order.
fn columns(conn: &Conn, table: &str) -> Result<Vec<String>> {
    let sql = if conn.is_pg() {
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name::text = ?1 ORDER BY ordinal_position"
    } else {
        "SELECT name FROM pragma_table_info(?1) ORDER BY cid"
    };
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([table], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The tables a table's foreign keys reference.
fn parents(conn: &Conn, table: &str) -> Result<BTreeSet<String>> {
    let sql = if conn.is_pg() {
        "SELECT DISTINCT p.relname::text FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class p ON p.oid = c.confrelid
         WHERE c.contype = 'f' AND t.relnamespace = current_schema()::regnamespace
           AND t.relname::text = ?1"
    } else {
        "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)"
    };
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([table], |r| r.get::<_, String>(0))?;
    let mut out: BTreeSet<String> = rows.collect::<rusqlite::Result<_>>()?;
    out.remove(table);
    Ok(out)
}

/// Every table of `conn` with its columns, parents before children (by name among equals).
fn ordered_tables(conn: &Conn) -> Result<Vec<(String, Vec<String>)>> {
    let names = table_names(conn)?;
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &names {
        let p: BTreeSet<String> = parents(conn, t)?
            .into_iter()
            .filter(|p| names.contains(p))
            .collect();
        deps.insert(t.clone(), p);
    }
    let mut out = Vec::with_capacity(names.len());
    let mut done = BTreeSet::new();
    while done.len() < names.len() {
        let next = deps
            .iter()
            .find(|(t, p)| !done.contains(*t) && p.iter().all(|x| done.contains(x)))
            .map(|(t, _)| t.clone());
        let Some(t) = next else {
            let left: Vec<&String> = names.iter().filter(|t| !done.contains(*t)).collect();
            return Err(Error::Internal(format!(
                "registry copy: the foreign keys of {left:?} form a cycle"
            )));
        };
        out.push((t.clone(), columns(conn, &t)?));
        done.insert(t);
    }
    Ok(out)
}

/// Rows per page when the checks read a table (both backends).
const CHECK_PAGE: i64 = 10_000;

/// The chain on `conn` checked as `events::verify_chain` does, read in pages of ids
/// (a PostgreSQL result is held whole: a long log must not be one result).
fn verify_chain_paged(conn: &Conn, key: &LogKey) -> Result<ChainReport> {
    let mut walk = events::ChainWalk::new(Some(key.clone()), false);
    let mut after = 0i64;
    loop {
        let mut st = conn.prepare_cached(
            "SELECT id, device_id, kind, actor, station, at, details, prev_hash, hash
             FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = st.query([after, CHECK_PAGE])?;
        let mut got = 0;
        while let Some(r) = rows.next()? {
            after = r.get(0)?;
            got += 1;
            walk.step(events::StoredEvent {
                id: after,
                device_id: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                station: r.get(4)?,
                at: r.get(5)?,
                details: r.get(6)?,
                prev: r.get(7)?,
                hash: r.get(8)?,
            });
        }
        if got < CHECK_PAGE {
            break;
        }
    }
    let recorded = if walk.broken() {
        None
    } else {
        events::recorded_head(Reader::of(conn))?
    };
    Ok(walk.finish(recorded))
}

/// A device row whose mark does not verify: (id, serial, has no mark at all).
type Unmarked = (i64, String, bool);

/// Every device row's mark checked as `rowmark::bad_marks` does, in pages of ids;
/// returns the rows checked and those whose mark does not verify (or is missing,
/// when `require`).
fn bad_marks_paged(conn: &Conn, key: &RowKey, require: bool) -> Result<(u64, Vec<Unmarked>)> {
    let mut bad = Vec::new();
    let mut n = 0u64;
    let mut after = i64::MIN;
    loop {
        let mut st =
            conn.prepare_cached("SELECT * FROM devices WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let mut rows = st.query([after, CHECK_PAGE])?;
        let names = st_names(conn)?;
        let at = |c: &str| names.iter().position(|x| x == c);
        let (Some(mark_at), Some(id_at), Some(serial_at)) =
            (at(MARK_COLUMN), at("id"), at("serial"))
        else {
            return Err(Error::Internal(
                "devices has no id, serial or mark column".into(),
            ));
        };
        let mut got = 0;
        while let Some(r) = rows.next()? {
            got += 1;
            n += 1;
            after = r.get(id_at)?;
            let serial = match r.get_ref(serial_at)? {
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                _ => format!("#{after}"),
            };
            match r.get_ref(mark_at)? {
                ValueRef::Null if require => bad.push((after, serial, true)),
                ValueRef::Null => {}
                ValueRef::Blob(m) => {
                    let mut cells = Vec::with_capacity(names.len());
                    for i in (0..names.len()).filter(|&i| i != mark_at) {
                        cells.push(Cell::from(r.get_ref(i)?));
                    }
                    if !key.verify(cells, m) {
                        bad.push((after, serial, false));
                    }
                }
                _ => bad.push((after, serial, false)),
            }
        }
        if got < CHECK_PAGE {
            break;
        }
    }
    Ok((n, bad))
}

/// The columns of `devices` in table order (what `SELECT *` returns).
fn st_names(conn: &Conn) -> Result<Vec<String>> {
    columns(conn, "devices")
}

/// The state of one copy into its target transaction.
struct Fill<'a> {
    src: &'a Conn,
    dst: &'a Conn,
    tables: &'a [(String, Vec<String>)],
    counts: &'a [u64],
    total: u64,
    row_key: &'a RowKey,
    key: &'a LogKey,
    require_marks: bool,
    chain: &'a ChainReport,
    actor: &'a Actor,
    source_name: &'a str,
    target_name: String,
    progress: &'a mut dyn FnMut(&str, u64, u64),
}

/// Parameters per multi-row INSERT on PostgreSQL (the protocol allows 65,535).
const PG_PARAMS_PER_INSERT: usize = 30_000;
const PG_ROWS_PER_INSERT: usize = 1_000;
/// Rows per read from a PostgreSQL source (by id).
const PG_READ_PAGE: usize = 10_000;

impl Fill<'_> {
    fn run(&mut self) -> Result<Report> {
        if self.dst.is_pg() {
            // The migration lock before the chain lock (`Tx::new` takes that), in the
            // order `init` takes them, so a copy and an `init` racing for one database
            // queue instead of deadlocking. Session-level: held until this connection
            // closes, after COMMIT or ROLLBACK.
            self.dst.execute(
                "SELECT pg_advisory_lock(?1)",
                [super::schema_pg::MIGRATION_LOCK],
            )?;
        }
        let tx = Tx::new(self.dst, Begin::Write)?;
        if let Conn::Pg(p) = self.dst {
            let mut p = p.borrow_mut();
            // Looked at again under the lock: another `init` or copy may have filled
            // this database since the first look.
            refuse_non_empty(&mut p.db, &self.target_name)?;
            super::pg::make_schema(&mut p.db)?;
        }
        self.check_target_tables()?;
        // The target's own bookkeeping rows (its mark record) give way to the source's.
        self.dst.execute("DELETE FROM meta", [])?;
        let mut done = 0u64;
        let (all, counts) = (self.tables, self.counts);
        let mut tables = Vec::with_capacity(all.len());
        for (i, (t, cols)) in all.iter().enumerate() {
            let n = self.copy_table(t, cols, &mut done)?;
            if n != counts[i] {
                return Err(Error::Internal(format!(
                    "registry copy: {t} had {} rows when counted and {n} when copied",
                    counts[i]
                )));
            }
            tables.push(TableCount {
                table: t.clone(),
                rows: n,
            });
        }
        if self.dst.is_pg() {
            self.move_sequences()?;
        }
        let (checked, remarked) = self.check_marks(&tx)?;
        // The chain as the target gives it back, keyed by the home's log key.
        let report = verify_chain_paged(self.dst, self.key)?;
        let extra = u64::from(remarked > 0);
        let head_ok = self.dst.query_row(
            "SELECT hash FROM events WHERE id = ?1",
            [self.chain.events as i64],
            |r| r.get::<_, String>(0),
        );
        let source_head_kept = self.chain.events == 0
            || head_ok.as_deref().ok() == Some(self.chain.head_hash.as_str());
        if report.first_break.is_some()
            || report.structure_only_from.is_some()
            || report.events != self.chain.events + extra
            || !source_head_kept
        {
            let why = match &report.first_break {
                Some(b) => format!(
                    "breaks at event {} ({}: {})",
                    b.event_id, b.problem, b.message
                ),
                None => format!(
                    "holds {} events, the source {} (+{extra})",
                    report.events, self.chain.events
                ),
            };
            return Err(Error::Store(StoreError::corrupt(
                &self.target_name,
                format!("the copied event chain does not verify ({why}); the copy was rolled back"),
            )));
        }
        tx.commit()?;
        (self.progress)("", self.total, self.total);
        let head_id = report.events as i64;
        Ok(Report {
            source: self.source_name.to_string(),
            target: self.target_name.clone(),
            rows: tables.iter().map(|t| t.rows).sum(),
            tables,
            events: report.events,
            head_id,
            head_hash: report.head_hash.clone(),
            source_head_id: self.chain.events as i64,
            source_head_hash: self.chain.head_hash.clone(),
            devices_checked: checked,
            remarked,
            log_key_written: None,
        })
    }

    /// Every source table and column must exist in the target (made by this binary).
    fn check_target_tables(&self) -> Result<()> {
        let have: BTreeSet<String> = table_names(self.dst)?.into_iter().collect();
        for (t, cols) in self.tables {
            if !have.contains(t) {
                return Err(Error::Store(StoreError::Unsupported(format!(
                    "registry copy: the target {} has no table {t} (the source holds tables this cradle does not know; nothing was written)",
                    self.target_name
                ))));
            }
            let tcols: BTreeSet<String> = columns(self.dst, t)?.into_iter().collect();
            if let Some(c) = cols.iter().find(|c| !tcols.contains(*c)) {
                return Err(Error::Store(StoreError::Unsupported(format!(
                    "registry copy: the target {} has no column {t}.{c} (nothing was written)",
                    self.target_name
                ))));
            }
        }
        Ok(())
    }

    /// Copies one table's rows; returns how many.
    fn copy_table(&mut self, table: &str, cols: &[String], done: &mut u64) -> Result<u64> {
        let list = cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        let src = self.src;
        let ncol = cols.len();
        let per = if self.dst.is_pg() {
            (PG_PARAMS_PER_INSERT / ncol.max(1)).clamp(1, PG_ROWS_PER_INSERT)
        } else {
            1
        };
        let mut buf: Vec<SqlValue> = Vec::with_capacity(per * ncol);
        let mut n = 0u64;
        // A PostgreSQL source hands over a whole result at once: tables with ids are read
        // in pages of ids, so a large fleet is never one result in memory (SQLite streams).
        let id_at = cols.iter().position(|c| c == "id").filter(|_| src.is_pg());
        let mut after = i64::MIN;
        loop {
            let (sql, paged) = match id_at {
                Some(_) => (
                    format!(
                        "SELECT {list} FROM {} WHERE id > ?1 ORDER BY id LIMIT {PG_READ_PAGE}",
                        q(table)
                    ),
                    true,
                ),
                None => (format!("SELECT {list} FROM {}", q(table)), false),
            };
            let mut st = src.prepare(&sql)?;
            let mut rows = if paged {
                st.query([after])?
            } else {
                st.query([])?
            };
            let mut got = 0usize;
            while let Some(r) = rows.next()? {
                for i in 0..ncol {
                    buf.push(SqlValue::from(r.get_ref(i)?));
                }
                if let Some(at) = id_at {
                    after = r.get(at)?;
                }
                got += 1;
                n += 1;
                if buf.len() == per * ncol {
                    self.insert(table, &list, ncol, &mut buf)?;
                    *done += per as u64;
                    (self.progress)(table, *done, self.total);
                }
            }
            if !paged || got < PG_READ_PAGE {
                break;
            }
        }
        if !buf.is_empty() {
            *done += (buf.len() / ncol) as u64;
            self.insert(table, &list, ncol, &mut buf)?;
            (self.progress)(table, *done, self.total);
        }
        Ok(n)
    }

    /// One INSERT of the rows in `buf` (emptied).
    fn insert(&self, table: &str, list: &str, ncol: usize, buf: &mut Vec<SqlValue>) -> Result<()> {
        let nrows = buf.len() / ncol;
        let mut sql = format!("INSERT INTO {} ({list}) VALUES ", q(table));
        let mut p = 1;
        for r in 0..nrows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..ncol {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("?{p}"));
                p += 1;
            }
            sql.push(')');
        }
        self.dst.execute(&sql, params_from_iter(buf.drain(..)))?;
        Ok(())
    }

    /// PostgreSQL: each identity sequence past the largest id copied, so the next row
    /// a station inserts does not collide with a copied one.
    fn move_sequences(&self) -> Result<()> {
        let idents: Vec<(String, String)> = {
            let mut st = self.dst.prepare(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY 1",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (t, c) in idents {
            // The sequence's name comes from the server; the identifiers are quoted for
            // pg_get_serial_sequence as it expects them.
            self.dst.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence(?1, ?2), m) FROM (SELECT max({}) AS m FROM {}) x WHERE m IS NOT NULL",
                    q(&c),
                    q(&t)
                ),
                [q(&t), c.clone()],
            )?;
        }
        Ok(())
    }

    /// Checks every device mark as the target returns the row; re-marks the rows whose
    /// value came back in another spelling (their marks verified in the source) and
    /// records that in the chain. Returns (rows checked, rows re-marked).
    fn check_marks(&self, tx: &Tx<'_>) -> Result<(u64, u64)> {
        let (_, found) = bad_marks_paged(self.dst, self.row_key, self.require_marks)?;
        // A missing mark was missing in the source too (refused there): only marks that
        // came back wrong are re-marked.
        let bad: Vec<i64> = found
            .into_iter()
            .filter(|(_, _, missing)| !missing)
            .map(|(id, _, _)| id)
            .collect();
        if bad.is_empty() {
            let checked = self.recheck_marks()?;
            return Ok((checked, 0));
        }
        let mut marks: Vec<(i64, Vec<u8>)> = Vec::with_capacity(bad.len());
        for chunk in bad.chunks(1_000) {
            let ids = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // Ids are integers read from the target itself: safe to list in the text.
            let mut st = self.dst.prepare(&format!(
                "SELECT * FROM devices WHERE id IN ({ids}) ORDER BY id"
            ))?;
            let names = st_names(self.dst)?;
            let at = |n: &str| names.iter().position(|c| c == n);
            let (Some(mark_at), Some(id_at)) = (at(MARK_COLUMN), at("id")) else {
                return Err(Error::Internal("devices has no id or mark column".into()));
            };
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let mut cells = Vec::with_capacity(names.len());
                for i in (0..names.len()).filter(|&i| i != mark_at) {
                    cells.push(Cell::from(r.get_ref(i)?));
                }
                let id = match r.get_ref(id_at)? {
                    ValueRef::Integer(i) => i,
                    _ => return Err(Error::Internal("a device id that is not an integer".into())),
                };
                marks.push((id, self.row_key.mark(cells).to_vec()));
            }
        }
        // One UPDATE per re-marked row: the rare path (values another tool wrote).
        for (id, m) in &marks {
            self.dst.execute(
                "UPDATE devices SET mark = ?1 WHERE id = ?2",
                rusqlite::params![m, id],
            )?;
        }
        tx.event(
            EventKind::DevicesMarked,
            None,
            self.actor,
            serde_json::json!({
                "rows": marks.len(),
                "reason": "registry copy: marks recomputed over the values as this backend returns them",
                "copied_from": self.source_name,
            }),
            &super::now_rfc3339(),
        )?;
        // The head as the commit will record it, so the check below sees the chain
        // exactly as it will be kept.
        let (id, hash): (i64, String) = self.dst.query_row(
            "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.dst.execute(
            "UPDATE meta SET value = ?1 WHERE key = ?2",
            rusqlite::params![format!("{id}:{hash}"), events::HEAD_KEY],
        )?;
        let checked = self.recheck_marks()?;
        Ok((checked, marks.len() as u64))
    }

    /// Every mark must verify now; returns the rows checked.
    fn recheck_marks(&self) -> Result<u64> {
        let (n, bad) = bad_marks_paged(self.dst, self.row_key, self.require_marks)?;
        if let Some((_, first, _)) = bad.first() {
            return Err(Error::Store(StoreError::corrupt(
                &self.target_name,
                format!(
                    "{} device mark(s) do not verify in the copy (first: {first}); the copy was rolled back",
                    bad.len()
                ),
            )));
        }
        Ok(n)
    }
}
