//! The inventory import on a PostgreSQL registry (issue 14): what `ImportDb` does on
//! SQLite with multi-row INSERTs, done with `COPY`. New devices are copied into a
//! TEMP staging table and inserted from it in one statement per batch (ids assigned
//! here: every writer holds the chain lock, so nobody else takes ids meanwhile);
//! events are hashed onto the chain here and copied straight into `events`. Lookups of
//! existing devices stay one query per row (an import that updates reads each device).

use std::collections::HashMap;
use std::fmt::Write as _;

use rusqlite::OptionalExtension;

use super::bulk::Val;
use super::conn::Conn;
use super::devices::{from_row, Device, DEVICE_COLUMNS};
use super::events::{event_hash_hex, Hashed};
use super::inventory::{Lookup, MatchKey, DEVICE_VALUES, VALUE_COLUMNS};
use super::Tx;
use crate::error::{Error, Result};

/// Made once per session; emptied before each batch.
const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS cradle_import_devices (
    ord BIGINT NOT NULL, serial TEXT, hardware_id TEXT, model TEXT, hw_rev TEXT, batch TEXT,
    site TEXT, location TEXT, owner TEXT, mac TEXT, imei TEXT, status TEXT, notes TEXT,
    purchase_date TEXT, warranty_until TEXT, cost TEXT, currency TEXT, supplier TEXT,
    criticality TEXT, end_of_life TEXT, attributes TEXT) ON COMMIT DELETE ROWS";

pub struct PgImport<'c> {
    tx: &'c Tx<'c>,
    conn: &'c Conn,
    /// Keys seen in this file (update/upsert imports), with their line.
    seen: HashMap<String, i64>,
    /// The id the next new device gets (known after the first insert: every other
    /// writer waits for the chain lock this transaction holds).
    next_id: Option<i64>,
    /// Devices inserted so far, and how many there were at the last ANALYZE.
    inserted: u64,
    analyzed_at: u64,
    pub events_written: u64,
}

/// `v` as a field of PostgreSQL's COPY text format.
fn copy_field(out: &mut String, v: Option<&str>) {
    let Some(v) = v else {
        out.push_str("\\N");
        return;
    };
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

impl<'c> PgImport<'c> {
    pub fn new(tx: &'c Tx<'c>) -> Result<PgImport<'c>> {
        let conn = tx.conn();
        conn.execute_batch(STAGING)?;
        Ok(PgImport {
            tx,
            conn,
            seen: HashMap::new(),
            next_id: None,
            inserted: 0,
            analyzed_at: 0,
            events_written: 0,
        })
    }

    pub fn tx(&self) -> &'c Tx<'c> {
        self.tx
    }

    pub fn first_line_of_key(&mut self, key: &str, line: u64) -> Result<Option<i64>> {
        match self.seen.get(key) {
            Some(l) => Ok(Some(*l)),
            None => {
                self.seen.insert(key.to_string(), line as i64);
                Ok(None)
            }
        }
    }

    pub fn max_device_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM devices", [], |r| r.get(0))?)
    }

    pub fn find(&mut self, key: MatchKey, value: &str) -> Result<Lookup> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE {} = ?1 ORDER BY id LIMIT 2",
            key.column()
        ))?;
        let found: Vec<Device> = st
            .query_map([value], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        match found.len() {
            0 => Ok(Lookup::None),
            1 => Ok(Lookup::One(Box::new(
                found.into_iter().next().expect("one"),
            ))),
            _ => {
                let n: i64 = self.conn.query_row(
                    &format!("SELECT count(*) FROM devices WHERE {} = ?1", key.column()),
                    [value],
                    |r| r.get(0),
                )?;
                Ok(Lookup::Many(n as u64))
            }
        }
    }

    /// As `ImportDb::insert_devices`: in order, stopping at the first row whose serial
    /// exists (in the registry or earlier in this batch); (how many, id of the first).
    pub fn insert_devices(&mut self, vals: &[Val<'_>], now: &str) -> Result<(usize, i64)> {
        let rows = vals.len() / DEVICE_VALUES;
        if rows == 0 {
            return Ok((0, 0));
        }
        let mut buf = String::with_capacity(rows * 128);
        for (k, row) in vals.chunks(DEVICE_VALUES).enumerate() {
            let _ = write!(buf, "{k}");
            for v in row {
                buf.push('\t');
                let int;
                copy_field(
                    &mut buf,
                    match v {
                        Val::Null => None,
                        Val::Text(t) => Some(t),
                        Val::Int(i) => {
                            int = i.to_string();
                            Some(int.as_str())
                        }
                        Val::Blob(_) => {
                            return Err(Error::Internal("a device value is bytes".into()))
                        }
                    },
                );
            }
            buf.push('\n');
        }
        let conn = self.conn;
        // A serial repeated inside the batch stops it there (as SQLite's INSERT OR
        // FAIL would at the second row).
        let mut take = rows;
        {
            let mut seen = std::collections::HashSet::with_capacity(rows);
            for (k, row) in vals.chunks(DEVICE_VALUES).enumerate() {
                if let Val::Text(serial) = row[0] {
                    if !seen.insert(serial) {
                        take = k;
                        break;
                    }
                }
            }
        }
        if take == 0 {
            return Ok((0, 0));
        }
        // TRUNCATE, not DELETE: in one long transaction deleted rows are never vacuumed,
        // so every later batch would scan all of them (quadratic).
        conn.execute_batch("TRUNCATE pg_temp.cradle_import_devices")?;
        conn.copy_in(
            &format!(
                "COPY pg_temp.cradle_import_devices (ord, {}) FROM STDIN",
                VALUE_COLUMNS.join(", ")
            ),
            buf.as_bytes(),
        )?;
        let first = match self.next_id {
            Some(id) => id,
            None => self.max_device_id()? + 1,
        };
        let cols = VALUE_COLUMNS.join(", ");
        let select = VALUE_COLUMNS
            .iter()
            .map(|c| match *c {
                "purchase_date" | "warranty_until" | "end_of_life" => format!("{c}::date"),
                "attributes" => format!("{c}::jsonb"),
                c => c.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        // One statement: the rows before the first serial the registry holds, inserted
        // with ids from `first` on, and the identity sequence moved past them (explicit
        // ids leave it behind).
        conn.execute_batch("SELECT set_config('cradle.marking', 'on', true)")?;
        let n: i64 = conn.query_row(
            &format!(
                "WITH ins AS (
                     INSERT INTO devices (id, {cols}, created_at, updated_at)
                     SELECT ?1 + ord, {select}, ?2::timestamptz, ?2::timestamptz
                     FROM pg_temp.cradle_import_devices
                     WHERE ord < ?3 AND ord < (
                         -- LIMIT keeps this a probe of the serial index per staged row
                         -- (as a join the planner may scan the whole table per batch).
                         SELECT coalesce(min(s.ord), ?3) FROM pg_temp.cradle_import_devices s,
                         LATERAL (SELECT 1 FROM devices d WHERE d.serial = s.serial LIMIT 1) AS hit)
                     ORDER BY ord RETURNING id),
                 -- Noted for the marks at commit here, in bulk (the row trigger stands
                 -- aside for this statement).
                 touched AS (INSERT INTO pg_temp.cradle_touched (id, fresh)
                             SELECT id, true FROM ins ON CONFLICT (id) DO NOTHING)
                 SELECT count(*), setval(pg_get_serial_sequence('devices', 'id'),
                                         greatest(max(id), (SELECT coalesce(max(id), 1) FROM devices)))
                 FROM ins"
            ),
            rusqlite::params![first, now, take as i64],
            |r| r.get(0),
        )?;
        conn.execute_batch("SELECT set_config('cradle.marking', 'off', true)")?;
        let n = n as usize;
        self.next_id = Some(first + n as i64);
        // The planner's idea of the table's size dates from before the import: once it
        // has doubled, tell it, or the serial lookup above becomes a scan of the whole
        // table per batch (quadratic: 200k rows took 3 minutes).
        self.inserted += n as u64;
        if self.inserted >= 2 * self.analyzed_at + 4096 {
            conn.execute_batch("ANALYZE devices")?;
            self.analyzed_at = self.inserted;
        }
        Ok((n, first))
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
        if items.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(items.len() * 256);
        self.tx.with_head(|conn, head| {
            let mut prev = head.hash;
            let mut id = head.id;
            for &(device_id, details) in items {
                id += 1;
                let hash = event_hash_hex(
                    head.key_for(id),
                    &Hashed {
                        id,
                        prev_hash: &prev,
                        device_id: Some(device_id),
                        kind,
                        actor,
                        station,
                        at,
                        details,
                    },
                );
                let hex = |h: &[u8; 64]| std::str::from_utf8(h).expect("hex").to_owned();
                let _ = write!(buf, "{id}\t{device_id}\t");
                for f in [kind, actor, station, at, details] {
                    copy_field(&mut buf, Some(f));
                    buf.push('\t');
                }
                let _ = writeln!(buf, "{}\t{}", hex(&prev), hex(&hash));
                prev = hash;
            }
            conn.copy_in(
                "COPY events (id, device_id, kind, actor, station, at, details, prev_hash, hash) FROM STDIN",
                buf.as_bytes(),
            )?;
            head.id = id;
            head.hash = prev;
            Ok(())
        })?;
        self.events_written += items.len() as u64;
        Ok(())
    }

    pub fn import_line_of(&self, device_id: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT CAST(json_extract(details, '$.line') AS BIGINT) FROM events
                 WHERE device_id = ?1 ORDER BY id DESC LIMIT 1",
                [device_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }
}
