//! Read handles and the unit of work.
//!
//! A `Tx` is one write transaction that owns the event chain: workflows append events
//! through it, `commit` records the new chain head in the same transaction, and a
//! dropped `Tx` rolls everything back. Nothing outside the store can reach the
//! connection, so no caller can write an event without moving the head.

use std::cell::RefCell;
use std::ops::Deref;

use rusqlite::{params, OptionalExtension};

use super::conn::{Begin, Conn};

use super::events::{event_hash_hex, Hashed, GENESIS, HEAD_KEY};
use super::logkey::LogKey;
use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};

/// Read-only access to the registry. Every query function of the store takes one;
/// `&Store`, `&Snapshot` and `&Tx` dereference to it.
#[repr(transparent)]
pub struct Reader {
    conn: Conn,
}

impl Reader {
    pub(super) fn of(conn: &Conn) -> &Reader {
        // SAFETY: `Reader` is `repr(transparent)` over `Conn`, so the two references
        // have the same layout and lifetime.
        unsafe { &*(conn as *const Conn as *const Reader) }
    }

    pub(super) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Whether the registry is on a PostgreSQL server.
    pub fn is_pg(&self) -> bool {
        self.conn.is_pg()
    }

    /// SQLite's own consistency check, up to `max` problems: `full` is
    /// `integrity_check` (also that every index matches its table: a flipped bit in
    /// the serial index), else `quick_check` (pages and records, O(file size), about
    /// 0.2 s per 80 MB here). Empty when the file is sound.
    pub fn integrity_problems(&self, full: bool, max: u32) -> Result<Vec<String>> {
        // A PostgreSQL server checks its own pages (data checksums); there is no
        // equivalent of SQLite's check to run from here.
        let Some(conn) = self.conn.lite() else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "PRAGMA {}({max})",
            if full {
                "integrity_check"
            } else {
                "quick_check"
            }
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let out: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(if out.len() == 1 && out[0] == "ok" {
            Vec::new()
        } else {
            out
        })
    }

    /// A read transaction around many lookups, unless one is already open: one
    /// snapshot, and no per-statement lock round trips. Ends when dropped.
    pub fn read_snapshot(&self) -> Result<Option<Snapshot<'_>>> {
        if self.conn.is_autocommit() {
            Ok(Some(Snapshot::new(&self.conn)?))
        } else {
            Ok(None)
        }
    }
}

/// Raw SQL for unit tests elsewhere in the crate (tampering, counting): tests only.
#[cfg(test)]
impl Reader {
    pub(crate) fn test_exec(&self, sql: &str) -> usize {
        self.conn.execute(sql, []).expect("test SQL")
    }

    pub(crate) fn test_i64(&self, sql: &str) -> i64 {
        self.conn
            .query_row(sql, [], |r| r.get(0))
            .expect("test SQL")
    }
}

/// One consistent read of the whole registry (a deferred read transaction): a writer
/// committing meanwhile is not seen, so head and events always agree.
pub struct Snapshot<'s> {
    conn: &'s Conn,
}

impl<'s> Snapshot<'s> {
    pub(super) fn new(conn: &'s Conn) -> Result<Snapshot<'s>> {
        conn.begin(Begin::Read)?;
        Ok(Snapshot { conn })
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let _ = self.conn.rollback();
    }
}

impl Deref for Snapshot<'_> {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        Reader::of(self.conn)
    }
}

/// The head of the chain while a transaction appends: id and hex hash of the newest event.
pub(super) struct Head {
    pub id: i64,
    pub hash: [u8; 64],
    /// The log key (None for an in-memory registry).
    pub key: Option<LogKey>,
}

impl Head {
    /// The key for event `id`, if it is keyed.
    pub fn key_for(&self, id: i64) -> Option<&super::logkey::EventMac> {
        self.key.as_ref().and_then(|k| k.for_id(id))
    }
}

/// A write transaction (the write lock is taken when it begins).
pub struct Tx<'s> {
    tx: &'s Conn,
    /// Committed or rolled back: nothing left for `drop` to undo.
    done: std::cell::Cell<bool>,
    /// Loaded at the first append; `commit` stores it when events were appended.
    head: RefCell<Option<Head>>,
    appended: std::cell::Cell<bool>,
    /// The device-mark key (None for an in-memory registry), for bulk writers that
    /// compute marks themselves; every other write is marked by the TEMP triggers.
    pub(super) row_key: Option<super::rowmark::RowKey>,
}

impl<'s> Tx<'s> {
    pub(super) fn new(conn: &'s Conn, kind: Begin) -> Result<Tx<'s>> {
        conn.begin(kind)?;
        Ok(Tx {
            tx: conn,
            done: std::cell::Cell::new(false),
            head: RefCell::new(None),
            appended: std::cell::Cell::new(false),
            row_key: None,
        })
    }

    pub(super) fn conn(&self) -> &Conn {
        self.tx
    }

    /// Appends one event to the chain; returns its id.
    pub fn event(
        &self,
        kind: EventKind,
        device_id: Option<i64>,
        actor: &Actor,
        details: serde_json::Value,
        at: &str,
    ) -> Result<i64> {
        let details = details.to_string();
        self.append_raw(
            device_id,
            kind.as_str(),
            &actor.operator,
            &actor.station,
            &details,
            at,
        )
    }

    /// `event` with the details already serialised as compact JSON (bulk paths).
    pub fn event_json(
        &self,
        kind: EventKind,
        device_id: Option<i64>,
        actor: &Actor,
        details: &str,
        at: &str,
    ) -> Result<i64> {
        self.append_raw(
            device_id,
            kind.as_str(),
            &actor.operator,
            &actor.station,
            details,
            at,
        )
    }

    /// `event` with the fields as stored text (details already compact JSON).
    pub(super) fn append_raw(
        &self,
        device_id: Option<i64>,
        kind: &str,
        actor: &str,
        station: &str,
        details: &str,
        at: &str,
    ) -> Result<i64> {
        self.with_head(|conn, head| {
            insert_event(conn, head, device_id, kind, (actor, station), details, at)
        })
    }

    /// Runs `f` with the chain head (loaded from the newest event on first use); bulk
    /// writers append through it and move it forward.
    pub(super) fn with_head<R>(&self, f: impl FnOnce(&Conn, &mut Head) -> Result<R>) -> Result<R> {
        let mut slot = self.head.borrow_mut();
        if slot.is_none() {
            *slot = Some(load_head(self.tx)?);
        }
        let head = slot.as_mut().expect("loaded");
        let r = f(self.tx, head)?;
        self.appended.set(true);
        Ok(r)
    }

    /// Commits, recording the chain head first if this transaction appended events.
    pub fn commit(self) -> Result<()> {
        if self.appended.get() {
            if let Some(head) = self.head.borrow().as_ref() {
                store_head(self.tx, head)?;
            }
        }
        if self.tx.is_pg() {
            if let Some(key) = &self.row_key {
                super::rowmark::mark_touched(self.tx, key)?;
            }
        }
        self.tx.commit()?;
        self.done.set(true);
        Ok(())
    }

    /// Rolls back explicitly (dropping a `Tx` does the same).
    pub fn rollback(self) -> Result<()> {
        self.done.set(true);
        self.tx.rollback()?;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done.get() {
            let _ = self.tx.rollback();
        }
    }
}

impl Deref for Tx<'_> {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        Reader::of(self.tx)
    }
}

fn load_head(conn: &Conn) -> Result<Head> {
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (id, hash) = last.unwrap_or((0, GENESIS.to_string()));
    let mut h = [0u8; 64];
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::input(format!(
            "event {id} has a malformed hash; run the audit"
        )));
    }
    h.copy_from_slice(hash.as_bytes());
    let mut head = Head {
        id,
        hash: h,
        key: None,
    };
    // A new registry is keyed from its first event. An older one gets its key on its
    // first write, marked by a keyed `log.keyed` event; the plain prefix stays
    // verifiable, and the boundary lives in the key file, out of reach of whoever
    // rewrites the registry.
    head.key = LogKey::load_or_create(conn)?;
    if id > 0 && head.key.as_ref().is_some_and(|k| k.from == id + 1) {
        append_marker(conn, &mut head)?;
    }
    Ok(head)
}

/// Appends the `log.keyed` event that opens the keyed part of an older chain.
fn append_marker(conn: &Conn, head: &mut Head) -> Result<()> {
    let at = super::now_rfc3339();
    let kind = EventKind::LogKeyed.as_str();
    insert_event(conn, head, None, kind, ("cradle", ""), "{}", &at)?;
    Ok(())
}

/// Inserts the next event after `head`, hashed (keyed where the chain is) onto it, and
/// moves `head` forward: the one place an event row is written.
fn insert_event(
    conn: &Conn,
    head: &mut Head,
    device_id: Option<i64>,
    kind: &str,
    (actor, station): (&str, &str),
    details: &str,
    at: &str,
) -> Result<i64> {
    let id = head.id + 1;
    let hash = event_hash_hex(
        head.key_for(id),
        &Hashed {
            id,
            prev_hash: &head.hash,
            device_id,
            kind,
            actor,
            station,
            at,
            details,
        },
    );
    let hex = |h: &[u8; 64]| std::str::from_utf8(h).expect("hex digits").to_owned();
    conn.prepare_cached(
        "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id,
        device_id,
        kind,
        actor,
        station,
        at,
        details,
        hex(&head.hash),
        hex(&hash)
    ])?;
    head.id = id;
    head.hash = hash;
    Ok(id)
}

fn store_head(conn: &Conn, head: &Head) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![
        HEAD_KEY,
        format!(
            "{}:{}",
            head.id,
            std::str::from_utf8(&head.hash).expect("hex digits")
        )
    ])?;
    Ok(())
}
