//! SQL for inventory import/export, device listing and the fleet summary.
//!
//! Import writes devices and events in groups with its own statements (same hash as
//! `events::event_hash`, without per-event allocations), appending through the head
//! of its `Tx`, so events written by other code in the same transaction (a lifecycle
//! transition) and the head recorded at commit always agree.

use std::fmt::Write as _;

use rusqlite::types::ValueRef;
use rusqlite::{params, OptionalExtension};

use super::conn::Row;
use serde::Serialize;

use super::bulk::{BulkStmt, Val};
use super::devices::{self, from_row, Device, DeviceStatus, DEVICE_COLUMNS};
use super::events::{event_hash_hex, Hashed};
use super::rowmark::{self, Cell, RowKey};
use super::{Reader, Tx};
use crate::error::{Error, Result};

/// Page cache for a bulk import, in KiB: big enough that index pages stay cached on
/// a million-row import, small enough to keep peak memory flat.
pub const IMPORT_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of the temporary table of keys seen in an update/upsert import.
pub const SEEN_CACHE_KIB: i64 = 4 * 1024;
/// Page cache for a sequential scan (export, listing): pages are read once.
pub const SCAN_CACHE_KIB: i64 = 2 * 1024;

/// Rows per multi-row INSERT of devices and events.
pub const ROWS_PER_INSERT: usize = 64;
/// Documented inventory fields (`app::inventory::fields::Field`, in its order).
pub const FIELDS: usize = 19;
/// Per-row values of a device INSERT: the `FIELDS` in `Field` order, then attributes.
pub const DEVICE_VALUES: usize = FIELDS + 1;
/// Index of the status among the fields (defaulted on insert).
const STATUS: usize = 10;
/// Per-row values of an event INSERT: device id, details, prev_hash, hash.
const EVENT_VALUES: usize = 4;

/// Per-row parameters of a device INSERT: the `DEVICE_VALUES`, then the row's mark.
const DEVICE_PARAMS: usize = DEVICE_VALUES + 1;

/// The columns `device_values` fills, in order.
pub(super) const VALUE_COLUMNS: [&str; DEVICE_VALUES] = [
    "serial",
    "hardware_id",
    "model",
    "hw_rev",
    "batch",
    "site",
    "location",
    "owner",
    "mac",
    "imei",
    "status",
    "notes",
    "purchase_date",
    "warranty_until",
    "cost",
    "currency",
    "supplier",
    "criticality",
    "end_of_life",
    "attributes",
];

/// `INSERT OR FAIL` of `rows` devices, each with its values and its mark (NULL leaves
/// the mark to the TEMP trigger); the timestamp is the one parameter after the per-row
/// ones.
fn insert_devices_sql(rows: usize) -> String {
    let now = rows * DEVICE_PARAMS + 1;
    let mut q = String::from(
        "INSERT OR FAIL INTO devices (serial, hardware_id, model, hw_rev, batch, site, location, owner, mac, imei, status, notes, purchase_date, warranty_until, cost, currency, supplier, criticality, end_of_life, attributes, mark, created_at, updated_at) VALUES ",
    );
    for r in 0..rows {
        q.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..DEVICE_PARAMS {
            let _ = write!(q, "?{},", r * DEVICE_PARAMS + c + 1);
        }
        let _ = write!(q, "?{now},?{now})");
    }
    q
}

/// Where each marked column of a new row comes from, in table order.
#[derive(Debug, Clone, Copy)]
enum MarkSrc {
    Id,
    Value(usize),
    Now,
    /// A column the import does not fill and whose default is NULL.
    Null,
}

/// How the import marks the rows it inserts: in Rust, with the ids SQLite will give
/// them (the next after the largest), in the same INSERT, instead of a second write of
/// each row by the TEMP trigger.
struct BulkMarks {
    key: RowKey,
    plan: Vec<MarkSrc>,
}

impl BulkMarks {
    /// None (the trigger marks the rows) when the table has a column the import does not
    /// fill, whose default the mark would have to cover.
    fn new(conn: &rusqlite::Connection, key: Option<&RowKey>) -> Result<Option<BulkMarks>> {
        let Some(key) = key else {
            return Ok(None);
        };
        // Columns with a default other than NULL (none yet) would need their
        // default marked: left to the trigger.
        let mut with_default = conn.prepare(
            "SELECT name FROM pragma_table_info('devices') WHERE dflt_value IS NOT NULL AND upper(dflt_value) <> 'NULL'",
        )?;
        let defaulted: Vec<String> = with_default
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut plan = Vec::new();
        for c in rowmark::lite_columns(conn)? {
            let src = match c.as_str() {
                "id" => MarkSrc::Id,
                "created_at" | "updated_at" => MarkSrc::Now,
                other => match VALUE_COLUMNS.iter().position(|v| *v == other) {
                    Some(i) => MarkSrc::Value(i),
                    // Left NULL by the INSERT (firmware, contact, config columns).
                    None if !defaulted.iter().any(|d| d == other) => MarkSrc::Null,
                    None => return Ok(None),
                },
            };
            plan.push(src);
        }
        Ok(Some(BulkMarks {
            key: key.clone(),
            plan,
        }))
    }

    /// The mark of a new row with id `id`; None when a value is not what the column
    /// will store (an integer in a text column), left to the trigger.
    fn mark(&self, id: i64, vals: &[Val<'_>], now: &str) -> Option<[u8; 32]> {
        if vals.iter().any(|v| matches!(v, Val::Int(_) | Val::Blob(_))) {
            return None;
        }
        Some(self.key.mark(self.plan.iter().map(|src| match *src {
            MarkSrc::Id => Cell::Int(id),
            MarkSrc::Now => Cell::Text(now.as_bytes()),
            MarkSrc::Null => Cell::Null,
            MarkSrc::Value(i) => match vals[i] {
                Val::Text(t) => Cell::Text(t.as_bytes()),
                _ => Cell::Null,
            },
        })))
    }
}

/// `INSERT OR FAIL` of `rows` events (ids NULL: SQLite appends); kind, actor, station and
/// time are the four parameters after the per-row ones.
fn insert_events_sql(rows: usize) -> String {
    let k = rows * EVENT_VALUES + 1;
    let mut q = String::from(
        "INSERT OR FAIL INTO events (id, device_id, details, prev_hash, hash, kind, actor, station, at) VALUES ",
    );
    for r in 0..rows {
        let b = r * EVENT_VALUES;
        let _ = write!(
            q,
            "{}(NULL,?{},?{},?{},?{},?{k},?{},?{},?{})",
            if r == 0 { "" } else { "," },
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            k + 1,
            k + 2,
            k + 3
        );
    }
    q
}

/// The `DEVICE_VALUES` values of a new device (status defaults to registered).
pub fn device_values<'a>(
    f: &[Option<&'a str>; FIELDS],
    attributes: Option<&'a str>,
    out: &mut [Val<'a>],
) {
    for (v, f) in out.iter_mut().zip(f) {
        *v = Val::from(*f);
    }
    if f[STATUS].is_none() {
        out[STATUS] = Val::Text(DeviceStatus::Registered.as_str());
    }
    out[FIELDS] = Val::from(attributes);
}

/// Which column identifies the device a row refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKey {
    Serial,
    Mac,
    Imei,
}

impl MatchKey {
    pub fn column(self) -> &'static str {
        match self {
            MatchKey::Serial => "serial",
            MatchKey::Mac => "mac",
            MatchKey::Imei => "imei",
        }
    }
}

/// Result of looking a row's key up in the registry.
pub enum Lookup {
    None,
    One(Box<Device>),
    /// More than one device has this MAC or IMEI.
    Many(u64),
}

/// One import transaction's writer, on either backend.
pub enum ImportDb<'c> {
    // Boxed: its prepared statements make it far larger than the PostgreSQL writer.
    Lite(Box<LiteImport<'c>>),
    Pg(super::pg_import::PgImport<'c>),
}

impl<'c> ImportDb<'c> {
    pub fn new(tx: &'c Tx<'c>) -> Result<ImportDb<'c>> {
        Ok(if tx.is_pg() {
            ImportDb::Pg(super::pg_import::PgImport::new(tx)?)
        } else {
            ImportDb::Lite(Box::new(LiteImport::new(tx)?))
        })
    }

    pub fn events_written(&self) -> u64 {
        match self {
            ImportDb::Lite(d) => d.events_written,
            ImportDb::Pg(d) => d.events_written,
        }
    }

    pub fn first_line_of_key(&mut self, key: &str, line: u64) -> Result<Option<i64>> {
        match self {
            ImportDb::Lite(d) => d.first_line_of_key(key, line),
            ImportDb::Pg(d) => d.first_line_of_key(key, line),
        }
    }

    pub fn max_device_id(&self) -> Result<i64> {
        match self {
            ImportDb::Lite(d) => d.max_device_id(),
            ImportDb::Pg(d) => d.max_device_id(),
        }
    }

    pub fn find(&mut self, key: MatchKey, value: &str) -> Result<Lookup> {
        match self {
            ImportDb::Lite(d) => d.find(key, value),
            ImportDb::Pg(d) => d.find(key, value),
        }
    }

    /// Inserts a device from the documented fields (in `Field` order) and the
    /// attributes JSON. `Ok(None)` means the serial already exists.
    pub fn insert(
        &mut self,
        f: &[Option<&str>; FIELDS],
        attributes: Option<&str>,
        now: &str,
    ) -> Result<Option<i64>> {
        let mut vals = [Val::Null; DEVICE_VALUES];
        device_values(f, attributes, &mut vals);
        let (n, first) = self.insert_devices(&vals, now)?;
        Ok((n == 1).then_some(first))
    }

    /// See `LiteImport::insert_devices`.
    pub fn insert_devices(&mut self, vals: &[Val<'_>], now: &str) -> Result<(usize, i64)> {
        match self {
            ImportDb::Lite(d) => d.insert_devices(vals, now),
            ImportDb::Pg(d) => d.insert_devices(vals, now),
        }
    }

    pub fn update_fields(&mut self, d: &Device, now: &str) -> Result<()> {
        match self {
            ImportDb::Lite(i) => i.update_fields(d, now),
            ImportDb::Pg(i) => update_device_fields(i.tx(), d, now),
        }
    }

    /// Appends one event to the chain; `details` must be compact JSON.
    pub fn append_event(
        &mut self,
        device_id: i64,
        kind: &str,
        actor: &str,
        station: &str,
        at: &str,
        details: &str,
    ) -> Result<()> {
        self.append_events(&[(device_id, details)], kind, actor, station, at)
    }

    /// Appends one event per `(device id, details)`, in order, all of one kind.
    pub fn append_events(
        &mut self,
        items: &[(i64, &str)],
        kind: &str,
        actor: &str,
        station: &str,
        at: &str,
    ) -> Result<()> {
        match self {
            ImportDb::Lite(d) => d.append_events(items, kind, actor, station, at),
            ImportDb::Pg(d) => d.append_events(items, kind, actor, station, at),
        }
    }

    pub fn import_line_of(&self, device_id: i64) -> Result<Option<i64>> {
        match self {
            ImportDb::Lite(d) => d.import_line_of(device_id),
            ImportDb::Pg(d) => d.import_line_of(device_id),
        }
    }
}

/// Prepared statements and the event-chain head for one SQLite import transaction.
pub struct LiteImport<'c> {
    tx: &'c Tx<'c>,
    conn: &'c rusqlite::Connection,
    /// INSERTs of one and of `ROWS_PER_INSERT` devices / events.
    one_device: BulkStmt<'c>,
    many_devices: BulkStmt<'c>,
    one_event: BulkStmt<'c>,
    many_events: BulkStmt<'c>,
    by_serial: rusqlite::Statement<'c>,
    by_mac: rusqlite::Statement<'c>,
    by_imei: rusqlite::Statement<'c>,
    update: rusqlite::Statement<'c>,
    seen_insert: Option<rusqlite::Statement<'c>>,
    seen_line: Option<rusqlite::Statement<'c>>,
    marks: Option<BulkMarks>,
    /// Hex hashes of the events being appended (their `prev_hash` is the one before).
    hashes: Vec<[u8; 64]>,
    pub events_written: u64,
}

impl<'c> LiteImport<'c> {
    pub fn new(tx: &'c Tx<'c>) -> Result<LiteImport<'c>> {
        // The bulk import is SQLite's (multi-row INSERTs, its TEMP tables); a
        // PostgreSQL registry imports through COPY (`pg_import`).
        let conn = tx.conn().sqlite_only("this import path")?;
        conn.pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)?;
        // Marks computed here, so the INSERT trigger is not needed (and costs a
        // statement journal per INSERT); back when this is dropped.
        let marks = BulkMarks::new(conn, tx.row_key.as_ref())?;
        if marks.is_some() {
            rowmark::suspend_insert_trigger(conn)?;
        }
        let sel = |w: &str| format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE {w} LIMIT 2");
        Ok(LiteImport {
            tx,
            conn,
            one_device: BulkStmt::prepare(conn, &insert_devices_sql(1), 1..DEVICE_PARAMS + 1)?,
            many_devices: BulkStmt::prepare(
                conn,
                &insert_devices_sql(ROWS_PER_INSERT),
                1..ROWS_PER_INSERT * DEVICE_PARAMS + 1,
            )?,
            one_event: BulkStmt::prepare(conn, &insert_events_sql(1), 1..EVENT_VALUES + 1)?,
            many_events: BulkStmt::prepare(
                conn,
                &insert_events_sql(ROWS_PER_INSERT),
                1..ROWS_PER_INSERT * EVENT_VALUES + 1,
            )?,
            by_serial: conn.prepare(&sel("serial = ?1"))?,
            by_mac: conn.prepare(&sel("mac = ?1"))?,
            by_imei: conn.prepare(&sel("imei = ?1"))?,
            update: conn.prepare(UPDATE_FIELDS)?,
            seen_insert: None,
            seen_line: None,
            marks,
            hashes: Vec::with_capacity(ROWS_PER_INSERT),
            events_written: 0,
        })
    }

    /// Records that a row of this file used `key`; returns the line of an earlier row
    /// with the same key. The keys live in a temporary on-disk table (its own small
    /// page cache), so memory stays flat however many rows the file has.
    pub fn first_line_of_key(&mut self, key: &str, line: u64) -> Result<Option<i64>> {
        if self.seen_insert.is_none() {
            self.conn.execute_batch(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS import_seen (key TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;
                 DELETE FROM temp.import_seen;
                 PRAGMA temp.cache_size = -{SEEN_CACHE_KIB};"
            ))?;
            self.seen_insert =
                Some(self.conn.prepare(
                    "INSERT OR IGNORE INTO temp.import_seen (key, line) VALUES (?1, ?2)",
                )?);
            self.seen_line = Some(
                self.conn
                    .prepare("SELECT line FROM temp.import_seen WHERE key = ?1")?,
            );
        }
        let ins = self.seen_insert.as_mut().expect("prepared");
        if ins.execute(params![key, line as i64])? == 1 {
            return Ok(None);
        }
        let sel = self.seen_line.as_mut().expect("prepared");
        Ok(sel.query_row([key], |r| r.get(0)).optional()?)
    }

    /// The largest device id now (devices created later in this transaction have larger ids).
    pub fn max_device_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM devices", [], |r| r.get(0))?)
    }

    pub fn find(&mut self, key: MatchKey, value: &str) -> Result<Lookup> {
        let stmt = match key {
            MatchKey::Serial => &mut self.by_serial,
            MatchKey::Mac => &mut self.by_mac,
            MatchKey::Imei => &mut self.by_imei,
        };
        let mut rows = stmt.query([value])?;
        let first = match rows.next()? {
            None => return Ok(Lookup::None),
            Some(r) => from_row(&Row::Lite(r))?,
        };
        if rows.next()?.is_some() {
            drop(rows);
            let n: u64 = self.conn.query_row(
                &format!("SELECT count(*) FROM devices WHERE {} = ?1", key.column()),
                [value],
                |r| r.get(0),
            )?;
            return Ok(Lookup::Many(n));
        }
        Ok(Lookup::One(Box::new(first)))
    }

    /// Inserts a device from the documented fields (in `Field` order) and the
    /// attributes JSON. `Ok(None)` means the serial already exists.
    pub fn insert(
        &mut self,
        f: &[Option<&str>; FIELDS],
        attributes: Option<&str>,
        now: &str,
    ) -> Result<Option<i64>> {
        let mut vals = [Val::Null; DEVICE_VALUES];
        device_values(f, attributes, &mut vals);
        let (n, first) = self.insert_devices(&vals, now)?;
        Ok((n == 1).then_some(first))
    }

    /// Inserts devices in order, `DEVICE_VALUES` values each (see `device_values`),
    /// stopping at the first whose serial exists. Returns how many were inserted and
    /// the id of the first (ids are consecutive). Full groups of `ROWS_PER_INSERT`
    /// go in one statement: it keeps the cursor of every index at the end between
    /// rows instead of descending from the root for each (1M-row import 3.9 -> 2.1 s).
    pub fn insert_devices(&mut self, vals: &[Val<'_>], now: &str) -> Result<(usize, i64)> {
        let rows = vals.len() / DEVICE_VALUES;
        let mut done = 0;
        let mut first = 0;
        // The id SQLite gives the next row: one more than the largest (no AUTOINCREMENT);
        // checked after each INSERT, since the marks cover it.
        let mut next_id = match self.marks {
            Some(_) => self.max_device_id()? + 1,
            None => 0,
        };
        // Ids are consecutive up to the first taken serial, where this call stops.
        // On all cores for a large group (as many HMACs as the events' own).
        let marks: Vec<Option<[u8; 32]>> = match &self.marks {
            Some(m) => {
                use rayon::prelude::*;
                let one = |k: usize| {
                    let row = &vals[k * DEVICE_VALUES..(k + 1) * DEVICE_VALUES];
                    m.mark(next_id + k as i64, row, now)
                };
                if rows >= 512 {
                    (0..rows)
                        .into_par_iter()
                        .with_min_len(256)
                        .map(one)
                        .collect()
                } else {
                    (0..rows).map(one).collect()
                }
            }
            None => vec![None; rows],
        };
        let mut params = [Val::Null; ROWS_PER_INSERT * DEVICE_PARAMS];
        while done < rows {
            let take = if rows - done >= ROWS_PER_INSERT {
                ROWS_PER_INSERT
            } else {
                1
            };
            for k in 0..take {
                let p = &mut params[k * DEVICE_PARAMS..(k + 1) * DEVICE_PARAMS];
                p[..DEVICE_VALUES].copy_from_slice(
                    &vals[(done + k) * DEVICE_VALUES..(done + k + 1) * DEVICE_VALUES],
                );
                p[DEVICE_VALUES] = match &marks[done + k] {
                    Some(m) => Val::Blob(m),
                    None => Val::Null,
                };
            }
            let st = if take == 1 {
                &mut self.one_device
            } else {
                &mut self.many_devices
            };
            st.set_const(take * DEVICE_PARAMS + 1, now)?;
            let r = st.exec(&params[..take * DEVICE_PARAMS]);
            // INSERT OR FAIL keeps the rows before a failing one (and needs no
            // statement journal, unlike the default ABORT).
            let inserted = match r {
                Ok(()) => take,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    self.conn.changes() as usize
                }
                Err(e) => return Err(e.into()),
            };
            if inserted > 0 {
                let last = self.conn.last_insert_rowid();
                if done == 0 {
                    first = last - inserted as i64 + 1;
                }
                if self.marks.is_some() {
                    let want = next_id + inserted as i64 - 1;
                    if last != want {
                        return Err(Error::input(format!(
                            "device rows: expected ids up to {want}, SQLite gave {last}; run the audit"
                        )));
                    }
                    // Rows the plan could not mark (the trigger is suspended).
                    for k in 0..inserted {
                        if marks[done + k].is_none() {
                            rowmark::mark_row(self.conn, next_id + k as i64)?;
                        }
                    }
                    next_id = last + 1;
                }
            }
            done += inserted;
            if inserted < take {
                break;
            }
        }
        Ok((done, first))
    }

    /// Writes every field of `d` except serial and status (those go through lifecycle).
    pub fn update_fields(&mut self, d: &Device, now: &str) -> Result<()> {
        let attrs = devices::attributes_json(&d.attributes);
        self.update.execute(&update_params(d, &attrs, &now)[..])?;
        Ok(())
    }

    /// Appends one event to the chain; `details` must be compact JSON.
    pub fn append_event(
        &mut self,
        device_id: i64,
        kind: &str,
        actor: &str,
        station: &str,
        at: &str,
        details: &str,
    ) -> Result<()> {
        self.append_events(&[(device_id, details)], kind, actor, station, at)
    }

    /// Appends one event per `(device id, details)`, in order, all of one kind.
    pub fn append_events(
        &mut self,
        items: &[(i64, &str)],
        kind: &str,
        actor: &str,
        station: &str,
        at: &str,
    ) -> Result<()> {
        for group in items.chunks(ROWS_PER_INSERT) {
            if group.len() == ROWS_PER_INSERT {
                self.append_group(group, true, kind, actor, station, at)?;
            } else {
                for one in group.chunks(1) {
                    self.append_group(one, false, kind, actor, station, at)?;
                }
            }
        }
        Ok(())
    }

    /// Hashes `group` onto the chain and inserts it with one statement.
    fn append_group(
        &mut self,
        group: &[(i64, &str)],
        many: bool,
        kind: &str,
        actor: &str,
        station: &str,
        at: &str,
    ) -> Result<()> {
        let tx = self.tx;
        tx.with_head(|conn, head| {
            self.hashes.clear();
            let mut prev = head.hash;
            for (k, &(device_id, details)) in group.iter().enumerate() {
                let id = head.id + 1 + k as i64;
                let hash = event_hash_hex(head.key_for(id), &Hashed {
                    id,
                    prev_hash: &prev,
                    device_id: Some(device_id),
                    kind,
                    actor,
                    station,
                    at,
                    details,
                });
                self.hashes.push(hash);
                prev = hash;
            }
            let mut vals = [Val::Null; ROWS_PER_INSERT * EVENT_VALUES];
            for (k, &(device_id, details)) in group.iter().enumerate() {
                let prev = if k == 0 {
                    &head.hash
                } else {
                    &self.hashes[k - 1]
                };
                // Both are ASCII hex digits.
                let v = &mut vals[k * EVENT_VALUES..(k + 1) * EVENT_VALUES];
                v[0] = Val::Int(device_id);
                v[1] = Val::Text(details);
                v[2] = Val::Text(std::str::from_utf8(prev).expect("hex"));
                v[3] = Val::Text(std::str::from_utf8(&self.hashes[k]).expect("hex"));
            }
            let n = group.len();
            let st = if many {
                &mut self.many_events
            } else {
                &mut self.one_event
            };
            for (i, v) in [kind, actor, station, at].into_iter().enumerate() {
                st.set_const(n * EVENT_VALUES + 1 + i, v)?;
            }
            st.exec(&vals[..n * EVENT_VALUES])?;
            // The ids are left to SQLite (max + 1 per row, and the head is the largest),
            // which appends without first searching the table for a given rowid; they
            // must be the ones hashed.
            let want = head.id + n as i64;
            let got = conn.last_insert_rowid();
            if got != want {
                return Err(Error::input(format!(
                    "event log: expected to append up to event {want}, SQLite gave {got}; run the audit"
                )));
            }
            head.id = want;
            head.hash = *self.hashes.last().expect("a non-empty group");
            self.events_written += n as u64;
            Ok(())
        })
    }

    /// The line recorded on the first event this import wrote for a device (to name
    /// the earlier row of an in-file duplicate).
    pub fn import_line_of(&self, device_id: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT CAST(json_extract(details, '$.line') AS INTEGER) FROM events WHERE device_id = ?1 ORDER BY id DESC LIMIT 1",
                [device_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }
}

impl Drop for LiteImport<'_> {
    fn drop(&mut self) {
        if self.marks.is_some() {
            // Cannot fail short of a broken connection; should it, `Store::write`
            // re-installs the trigger before the next transaction.
            let _ = rowmark::resume_insert_trigger(self.conn);
        }
    }
}

/// Filters shared by export and `device list`.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    pub site: Option<String>,
    pub batch: Option<String>,
    /// Only devices changed at or after this registry time (RFC 3339 `Z` text, which
    /// sorts in time order): the device row, or one of its certificates issued or
    /// revoked since. For delta hand-offs.
    pub since: Option<String>,
}

impl DeviceFilter {
    fn params(&self) -> [Option<&str>; 4] {
        [
            self.status.map(|s| s.as_str()),
            self.site.as_deref(),
            self.batch.as_deref(),
            self.since.as_deref(),
        ]
    }
}

const FILTER_SQL: &str =
    "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR site = ?2) AND (?3 IS NULL OR batch = ?3)
     AND (?4 IS NULL OR devices.updated_at >= ?4 OR EXISTS (SELECT 1 FROM certificates c
          WHERE c.device_id = devices.id AND (c.created_at >= ?4 OR c.revoked_at >= ?4)))";

/// Attribute names used by the filtered devices, sorted (the CSV export's extra columns).
pub fn attribute_keys(db: &Reader, f: &DeviceFilter) -> Result<Vec<String>> {
    let conn = db.conn();
    conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
    let mut stmt = conn.prepare(&if conn.is_pg() {
        // jsonb is valid JSON by construction; ordered by bytes, as SQLite orders text.
        format!(
            "SELECT DISTINCT k COLLATE \"C\" FROM devices, jsonb_object_keys(devices.attributes) AS k
             WHERE devices.attributes IS NOT NULL AND jsonb_typeof(devices.attributes) = 'object'
               AND {FILTER_SQL} ORDER BY 1"
        )
    } else {
        format!(
            "SELECT DISTINCT j.key FROM devices, json_each(devices.attributes) AS j
             WHERE devices.attributes IS NOT NULL AND json_valid(devices.attributes) AND {FILTER_SQL} ORDER BY 1"
        )
    })?;
    let rows = stmt.query_map(super::conn::params_from_iter(f.params()), |r| {
        r.get::<_, String>(0)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The largest device id: an instant upper bound on the device count, for progress
/// bars (a `count(*)` would scan a whole index first).
pub fn approx_device_count(db: &Reader) -> Result<u64> {
    let conn = db.conn();
    let n: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM devices", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Calls `each` with the documented fields (in `Field` order) and the attributes
/// JSON of every filtered device, in id order, without building a `Device`.
pub fn for_each_row(
    db: &Reader,
    f: &DeviceFilter,
    mut each: impl FnMut(&[Option<&str>; DEVICE_VALUES]) -> Result<()>,
) -> Result<u64> {
    let conn = db.conn();
    conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM devices WHERE {FILTER_SQL} ORDER BY id",
        VALUE_COLUMNS.join(", ")
    ))?;
    let mut rows = stmt.query(super::conn::params_from_iter(f.params()))?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let mut cols: [Option<&str>; DEVICE_VALUES] = [None; DEVICE_VALUES];
        for (i, c) in cols.iter_mut().enumerate() {
            *c = match r.get_ref(i)? {
                ValueRef::Null => None,
                ValueRef::Text(t) => Some(std::str::from_utf8(t).map_err(|_| {
                    Error::input(format!("device row {} holds invalid UTF-8", n + 1))
                })?),
                other => {
                    return Err(Error::input(format!(
                        "device row {}: column {i} has type {:?}, expected text",
                        n + 1,
                        other.data_type()
                    )))
                }
            };
        }
        each(&cols)?;
        n += 1;
    }
    Ok(n)
}

/// Calls `each` with every filtered device, in id order.
pub fn for_each_device(
    db: &Reader,
    f: &DeviceFilter,
    mut each: impl FnMut(Device) -> Result<()>,
) -> Result<u64> {
    let conn = db.conn();
    conn.pragma_update(None, "cache_size", -SCAN_CACHE_KIB)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE {FILTER_SQL} ORDER BY id"
    ))?;
    let mut rows = stmt.query(super::conn::params_from_iter(f.params()))?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        each(from_row(&r)?)?;
        n += 1;
    }
    Ok(n)
}

/// Counts of devices per lifecycle state, for one group (a site, a batch) or the fleet.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StateCounts {
    pub total: u64,
    pub registered: u64,
    pub provisioned: u64,
    pub deployed: u64,
    pub maintenance: u64,
    pub retired: u64,
    pub decommissioned: u64,
}

impl StateCounts {
    pub fn add(&mut self, s: DeviceStatus, n: u64) {
        self.total += n;
        *match s {
            DeviceStatus::Registered => &mut self.registered,
            DeviceStatus::Provisioned => &mut self.provisioned,
            DeviceStatus::Deployed => &mut self.deployed,
            DeviceStatus::Maintenance => &mut self.maintenance,
            DeviceStatus::Retired => &mut self.retired,
            DeviceStatus::Decommissioned => &mut self.decommissioned,
        } += n;
    }
    pub fn get(&self, s: DeviceStatus) -> u64 {
        match s {
            DeviceStatus::Registered => self.registered,
            DeviceStatus::Provisioned => self.provisioned,
            DeviceStatus::Deployed => self.deployed,
            DeviceStatus::Maintenance => self.maintenance,
            DeviceStatus::Retired => self.retired,
            DeviceStatus::Decommissioned => self.decommissioned,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCounts {
    /// The site or batch; `null` for devices without one.
    pub name: Option<String>,
    #[serde(flatten)]
    pub counts: StateCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    pub devices: StateCounts,
    pub by_site: Vec<GroupCounts>,
    pub by_batch: Vec<GroupCounts>,
}

/// The fleet by state, site and batch.
pub fn fleet_summary(db: &Reader) -> Result<FleetSummary> {
    fleet_summary_on(&mut super::db::On(db.conn()))
}

/// `fleet_summary` on either backend (common SQL; groups ordered here, by bytes with
/// the unnamed group last, so that both backends order them alike whatever the
/// server's collation).
pub fn fleet_summary_on(q: &mut dyn super::db::Query) -> Result<FleetSummary> {
    let mut devices = StateCounts::default();
    for r in q.query("SELECT status, count(*) FROM devices GROUP BY status", &[])? {
        devices.add(
            super::devices::stored_status(&r.text(0)?)?,
            r.i64(1)? as u64,
        );
    }
    let mut group = |col: &str| -> Result<Vec<GroupCounts>> {
        let mut rows = Vec::new();
        for r in q.query(
            &format!("SELECT {col}, status, count(*) FROM devices GROUP BY {col}, status"),
            &[],
        )? {
            rows.push((r.opt_text(0)?, r.text(1)?, r.i64(2)? as u64));
        }
        rows.sort_by(|a, b| (a.0.is_none(), &a.0).cmp(&(b.0.is_none(), &b.0)));
        let mut out: Vec<GroupCounts> = Vec::new();
        for (name, s, n) in rows {
            if out.last().is_none_or(|g| g.name != name) {
                out.push(GroupCounts {
                    name,
                    counts: StateCounts::default(),
                });
            }
            out.last_mut()
                .expect("pushed")
                .counts
                .add(super::devices::stored_status(&s)?, n);
        }
        Ok(out)
    };
    Ok(FleetSummary {
        devices,
        by_site: group("site")?,
        by_batch: group("batch")?,
    })
}

/// Writes every field of a device except serial and status (used by `device set`).
pub fn update_device_fields(tx: &Tx<'_>, d: &Device, now: &str) -> Result<()> {
    let conn = tx.conn();
    let attrs = devices::attributes_json(&d.attributes);
    conn.execute(UPDATE_FIELDS, &update_params(d, &attrs, &now)[..])?;
    Ok(())
}

/// Every field of a device except serial and status (those go through lifecycle).
const UPDATE_FIELDS: &str =
    "UPDATE devices SET hardware_id = ?2, model = ?3, hw_rev = ?4, batch = ?5,
    site = ?6, location = ?7, owner = ?8, mac = ?9, imei = ?10, notes = ?11, attributes = ?12,
    updated_at = ?13, purchase_date = ?14, warranty_until = ?15, cost = ?16, currency = ?17,
    supplier = ?18, criticality = ?19, end_of_life = ?20 WHERE id = ?1";

/// The parameters of `UPDATE_FIELDS` (`attrs`: the attributes as JSON).
fn update_params<'a>(
    d: &'a Device,
    attrs: &'a Option<String>,
    now: &'a &'a str,
) -> [&'a dyn rusqlite::ToSql; 20] {
    [
        &d.id,
        &d.hardware_id,
        &d.model,
        &d.hw_rev,
        &d.batch,
        &d.site,
        &d.location,
        &d.owner,
        &d.mac,
        &d.imei,
        &d.notes,
        attrs,
        now,
        &d.purchase_date,
        &d.warranty_until,
        &d.cost,
        &d.currency,
        &d.supplier,
        &d.criticality,
        &d.end_of_life,
    ]
}

/// Number of certificates per status for one device (for `device show`).
pub fn cert_counts(db: &Reader, device_id: i64) -> Result<Vec<(String, u64)>> {
    let conn = db.conn();
    let mut st = conn.prepare_cached(
        "SELECT status, count(*) FROM certificates WHERE device_id = ?1 GROUP BY status ORDER BY status",
    )?;
    let rows = st.query_map([device_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{event_hash, verify_chain, GENESIS};
    use crate::store::Store;

    #[test]
    fn device_insert_builds_no_temporary_btree() {
        // A CHECK with `IN (more than two constants)` makes every INSERT build a
        // temporary b-tree (measured: ~20% of a bulk import's CPU time).
        let reg = Store::in_memory().unwrap();
        let mut st = reg
            .conn()
            .prepare(
                "EXPLAIN INSERT INTO devices (serial, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            )
            .unwrap();
        let ops: Vec<String> = st
            .query_map(["A", "registered", "t"], |r| r.get::<_, String>(1))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(ops.iter().any(|o| o == "Insert"), "{ops:?}");
        assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{ops:?}");
        // The constraint still holds.
        let err = reg
            .conn()
            .execute(
                "INSERT INTO devices (serial, status, created_at, updated_at) VALUES ('A', 'lost', 't', 't')",
                [],
            )
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
    }

    #[test]
    fn bulk_marks_cover_columns_the_import_leaves_null() {
        // Since migration 8 the table has columns the import never fills (firmware,
        // contact, config): they must not send every row through the trigger.
        let reg = Store::in_memory().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = RowKey::from_log_key(
            &super::super::logkey::LogKey::create_at(&dir.path().join("log.key"), 1).unwrap(),
        );
        let m = BulkMarks::new(reg.conn().lite().unwrap(), Some(&key))
            .unwrap()
            .expect("the import marks its rows itself");
        let mut f: [Option<&str>; FIELDS] = [None; FIELDS];
        f[0] = Some("S-1");
        f[2] = Some("m1");
        f[14] = Some("12.50");
        f[15] = Some("EUR");
        let mut vals = [Val::Null; DEVICE_VALUES];
        device_values(&f, None, &mut vals);
        let now = "2026-01-01T00:00:00Z";
        let mark = m.mark(1, &vals, now).unwrap();
        // The row as SQLite stores it verifies against that mark.
        reg.conn()
            .execute(
                "INSERT INTO devices (id, serial, model, cost, currency, status, created_at, updated_at) VALUES (1, 'S-1', 'm1', '12.50', 'EUR', 'registered', ?1, ?1)",
                [now],
            )
            .unwrap();
        let cols = rowmark::marked_columns(reg.conn()).unwrap();
        let sql = format!("SELECT {} FROM devices WHERE id = 1", cols.join(", "));
        reg.conn()
            .query_row(&sql, [], |r| {
                let cells: Vec<Cell> = (0..cols.len())
                    .map(|i| Cell::from(r.get_ref(i).unwrap()))
                    .collect();
                assert!(key.verify(cells, &mark));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn fast_event_hash_matches_the_chain() {
        let mut reg = Store::in_memory().unwrap();
        let tx = reg.write().unwrap();
        let mut db = ImportDb::new(&tx).unwrap();
        let mut f: [Option<&str>; FIELDS] = [None; FIELDS];
        f[0] = Some("A-1");
        let id = db
            .insert(&f, None, "2026-01-01T00:00:00Z")
            .unwrap()
            .unwrap();
        db.append_event(id, "device.created", "op", "st", "t", r#"{"line":2}"#)
            .unwrap();
        db.append_event(id, "device.updated", "op", "st", "t", "{}")
            .unwrap();
        assert!(
            db.insert(&f, None, "t").unwrap().is_none(),
            "duplicate serial"
        );
        drop(db);
        let h1 = event_hash(
            None,
            &Hashed {
                id: 1,
                prev_hash: GENESIS.as_bytes(),
                device_id: Some(id),
                kind: "device.created",
                actor: "op",
                station: "st",
                at: "t",
                details: r#"{"line":2}"#,
            },
        );
        let stored: String = tx
            .conn()
            .query_row("SELECT hash FROM events WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, h1);
        tx.commit().unwrap();
        assert!(verify_chain(&reg).unwrap().first_break.is_none());
    }

    #[test]
    fn grouped_inserts_stop_at_the_first_taken_serial_wherever_it_is() {
        let mut reg = Store::in_memory().unwrap();
        let tx = reg.write().unwrap();
        let mut db = ImportDb::new(&tx).unwrap();
        let serials: Vec<String> = (0..200).map(|i| format!("S-{i:03}")).collect();
        let vals = |range: std::ops::Range<usize>| -> Vec<Val<'_>> {
            let mut v = vec![Val::Null; range.len() * DEVICE_VALUES];
            for (k, i) in range.enumerate() {
                let mut f: [Option<&str>; FIELDS] = [None; FIELDS];
                f[0] = Some(&serials[i]);
                device_values(&f, None, &mut v[k * DEVICE_VALUES..(k + 1) * DEVICE_VALUES]);
            }
            v
        };
        // A full group, then a full group whose first row is taken (the previous
        // statement's 64 changes must not be mistaken for this one's).
        assert_eq!(db.insert_devices(&vals(0..64), "t").unwrap(), (64, 1));
        assert_eq!(db.insert_devices(&vals(63..127), "t").unwrap().0, 0);
        // Taken in the middle and at the end of a group.
        let mut v = vals(64..128);
        v[10 * DEVICE_VALUES] = Val::Text("S-005");
        assert_eq!(db.insert_devices(&v, "t").unwrap(), (10, 65));
        let mut v = vals(74..138);
        v[63 * DEVICE_VALUES] = Val::Text("S-000");
        assert_eq!(db.insert_devices(&v, "t").unwrap(), (63, 75));
        // Fewer than a group go one by one, with the same answer.
        let mut v = vals(137..140);
        v[2 * DEVICE_VALUES] = Val::Text("S-001");
        assert_eq!(db.insert_devices(&v, "t").unwrap(), (2, 138));
        drop(db);
        let n: i64 = tx
            .conn()
            .query_row("SELECT count(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 64 + 10 + 63 + 2);
        let (id, serial): (i64, String) = tx
            .conn()
            .query_row(
                "SELECT id, serial FROM devices ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((id, serial.as_str()), (139, "S-138"));
    }

    #[test]
    fn grouped_events_chain_like_single_ones() {
        let mut reg = Store::in_memory().unwrap();
        let tx = reg.write().unwrap();
        let mut db = ImportDb::new(&tx).unwrap();
        let details: Vec<String> = (0..150).map(|i| format!(r#"{{"line":{i}}}"#)).collect();
        let mut v = [Val::Null; DEVICE_VALUES];
        let mut f: [Option<&str>; FIELDS] = [None; FIELDS];
        f[0] = Some("S-1");
        device_values(&f, None, &mut v);
        let (_, id) = db.insert_devices(&v, "t").unwrap();
        let items: Vec<(i64, &str)> = details.iter().map(|d| (id, d.as_str())).collect();
        db.append_events(&items, "k", "a", "s", "t").unwrap();
        db.append_event(id, "k2", "a", "s", "t", "{}").unwrap();
        assert_eq!(db.events_written(), 151);
        drop(db);
        tx.commit().unwrap();
        let r = verify_chain(&reg).unwrap();
        assert!(r.first_break.is_none(), "{:?}", r.first_break);
        assert_eq!(r.events, 151);
    }
}
