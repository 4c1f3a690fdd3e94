//! The append-only, hash-chained event log.
//!
//! Each event's hash covers its own fields and the previous event's hash; the newest
//! id and hash are also kept in `meta`, so an edit, a deletion or an insertion made
//! behind cradle's back breaks the chain where it happened.

use rusqlite::OptionalExtension;

use super::conn::Row;

use super::Reader;
use hmac::digest::Update;
use hmac::Mac;

use super::logkey::EventMac;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
pub(super) const HEAD_KEY: &str = "event_head";

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub device_id: Option<i64>,
    pub kind: String,
    pub actor: String,
    pub station: String,
    pub at: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

pub const EVENT_COLUMNS: &str = "id, device_id, kind, actor, station, at, details, prev_hash, hash";

pub fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let details: String = r.get(6)?;
    Ok(Event {
        id: r.get(0)?,
        device_id: r.get(1)?,
        kind: r.get(2)?,
        actor: r.get(3)?,
        station: r.get(4)?,
        at: r.get(5)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// The fields of one event that its hash covers, in hashing order.
#[derive(Debug, Clone, Copy)]
pub struct Hashed<'a> {
    pub id: i64,
    /// The previous event's hash, as 64 ASCII hex digits.
    pub prev_hash: &'a [u8],
    pub device_id: Option<i64>,
    pub kind: &'a str,
    pub actor: &'a str,
    pub station: &'a str,
    pub at: &'a str,
    /// The details exactly as stored (compact JSON text).
    pub details: &'a str,
}

/// The hash of one event: SHA-256 over its fields, newline-separated, in a fixed order
/// (HMAC-SHA256 with the log key over the same bytes for keyed events).
pub fn event_hash(key: Option<&EventMac>, e: &Hashed<'_>) -> String {
    String::from_utf8(event_hash_hex(key, e).to_vec()).expect("hex digits")
}

/// `event_hash` as 64 ASCII hex digits, without allocating (bulk writers).
pub fn event_hash_hex(key: Option<&EventMac>, e: &Hashed<'_>) -> [u8; 64] {
    let digest: [u8; 32] = match key {
        Some(k) => {
            let mut m = k.clone();
            feed(&mut m, e);
            m.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            feed(&mut h, e);
            h.finalize().into()
        }
    };
    let mut out = [0u8; 64];
    hex::encode_to_slice(digest, &mut out).expect("64 hex digits");
    out
}

/// The canonical bytes of one event, into a hash or a MAC.
fn feed(h: &mut impl Update, e: &Hashed<'_>) {
    let mut num = [0u8; 20];
    h.update(decimal(e.id, &mut num));
    h.update(b"\n");
    h.update(e.prev_hash);
    h.update(b"\n");
    if let Some(d) = e.device_id {
        h.update(decimal(d, &mut num));
    }
    h.update(b"\n");
    for part in [e.kind, e.actor, e.station, e.at, e.details] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
}

/// `n` in decimal, written into `buf` (20 bytes hold any i64).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    use std::io::Write;
    let mut c = std::io::Cursor::new(&mut buf[..]);
    write!(c, "{n}").expect("an i64 fits in 20 bytes");
    let len = c.position() as usize;
    &buf[..len]
}

/// Recomputes the hash of a stored event from its stored fields (raw details text).
pub fn recompute(key: Option<&EventMac>, e: &Event, raw_details: &str) -> String {
    event_hash(
        key,
        &Hashed {
            id: e.id,
            prev_hash: e.prev_hash.as_bytes(),
            device_id: e.device_id,
            kind: &e.kind,
            actor: &e.actor,
            station: &e.station,
            at: &e.at,
            details: raw_details,
        },
    )
}

/// The head recorded in `meta` (id, hash), if any event was ever written.
pub fn recorded_head(db: &Reader) -> Result<Option<(i64, String)>> {
    let conn = db.conn();
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [HEAD_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    match v {
        None => Ok(None),
        Some(v) => {
            let (id, hash) = v
                .split_once(':')
                .ok_or_else(|| Error::input(format!("malformed event head in meta: {v}")))?;
            let id = id
                .parse()
                .map_err(|_| Error::input(format!("malformed event head in meta: {v}")))?;
            Ok(Some((id, hash.to_string())))
        }
    }
}

pub fn events_for_device(db: &Reader, device_id: i64) -> Result<Vec<Event>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE device_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([device_id], event_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Where the chain first breaks, if it does.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChainBreak {
    /// The first event id at which verification failed.
    pub event_id: i64,
    /// What was found: "altered", "deleted", "inserted", "truncated".
    pub problem: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub events: u64,
    pub head_hash: String,
    pub first_break: Option<ChainBreak>,
    /// Set when the log key is missing and some hash is not plain SHA-256: from this
    /// event on only the chain's structure (ids, links, head) could be checked.
    pub structure_only_from: Option<i64>,
}

/// Walks the whole chain in id order and reports the first break.
pub fn verify_chain(db: &Reader) -> Result<ChainReport> {
    let conn = db.conn();
    let mut stmt = conn.prepare(
        "SELECT id, device_id, kind, actor, station, at, details, prev_hash, hash FROM events ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let key = super::logkey::LogKey::load(conn)?;
    // An in-memory registry never has a key: plain hashes are its whole scheme.
    let key_missing = key.is_none() && conn.key_file().is_some();
    let mut walk = ChainWalk::new(key, key_missing);
    while let Some(r) = rows.next()? {
        walk.step(StoredEvent {
            id: r.get(0)?,
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
    // The head is read only for a chain that walked clean (as before the walk was
    // shared): a malformed head does not hide a break found earlier.
    let recorded = if walk.broken() {
        None
    } else {
        recorded_head(db)?
    };
    Ok(walk.finish(recorded))
}

/// One stored event row, as text exactly as stored (what its hash covers).
pub struct StoredEvent {
    pub id: i64,
    pub device_id: Option<i64>,
    pub kind: String,
    pub actor: String,
    pub station: String,
    pub at: String,
    pub details: String,
    pub prev: String,
    pub hash: String,
}

/// The chain check of `verify_chain`, fed one row at a time in id order by either
/// backend, then given the recorded head.
pub struct ChainWalk {
    key: Option<super::logkey::LogKey>,
    key_missing: bool,
    expected_prev: String,
    expected_id: i64,
    count: u64,
    first_break: Option<ChainBreak>,
    structure_only_from: Option<i64>,
}

impl ChainWalk {
    /// `key_missing`: the registry should have a log key and it is not there.
    pub fn new(key: Option<super::logkey::LogKey>, key_missing: bool) -> ChainWalk {
        ChainWalk {
            key,
            key_missing,
            expected_prev: GENESIS.to_string(),
            expected_id: 1,
            count: 0,
            first_break: None,
            structure_only_from: None,
        }
    }

    pub fn step(&mut self, e: StoredEvent) {
        let StoredEvent {
            id,
            device_id,
            kind,
            actor,
            station,
            at,
            details,
            prev,
            hash,
        } = e;
        let (expected_id, expected_prev) = (self.expected_id, &self.expected_prev);
        self.count += 1;
        if self.first_break.is_none() {
            let recomputed = event_hash(
                self.key.as_ref().and_then(|k| k.for_id(id)),
                &Hashed {
                    id,
                    prev_hash: prev.as_bytes(),
                    device_id,
                    kind: &kind,
                    actor: &actor,
                    station: &station,
                    at: &at,
                    details: &details,
                },
            );
            if self.key_missing && self.structure_only_from.is_none() && recomputed != hash {
                // Without the key a keyed hash and a forged one look alike.
                self.structure_only_from = Some(id);
            }
            let brk = if recomputed != hash && self.structure_only_from.is_none() {
                Some(("altered", format!("event {id} ({kind}) was altered: its stored hash does not match its contents")))
            } else if id != expected_id && prev != *expected_prev {
                if id > expected_id {
                    Some((
                        "deleted",
                        format!(
                            "event(s) {expected_id}..{} were deleted before event {id}",
                            id - 1
                        ),
                    ))
                } else {
                    Some(("inserted", format!("event {id} was inserted out of band")))
                }
            } else if prev != *expected_prev {
                Some(("inserted", format!("event {id} ({kind}) does not follow the previous event's hash: inserted or rewritten out of band")))
            } else if id != expected_id {
                Some((
                    "deleted",
                    format!("event(s) {expected_id}..{} are missing", id - 1),
                ))
            } else {
                None
            };
            if let Some((problem, message)) = brk {
                self.first_break = Some(ChainBreak {
                    event_id: id,
                    problem: problem.into(),
                    message,
                });
            }
        }
        self.expected_prev = hash;
        self.expected_id = id + 1;
    }

    /// A break was found (the recorded head no longer matters).
    pub fn broken(&self) -> bool {
        self.first_break.is_some()
    }

    /// The report, checking the head recorded in `meta` (id, hash) against the walk.
    pub fn finish(self, recorded: Option<(i64, String)>) -> ChainReport {
        let ChainWalk {
            expected_prev,
            expected_id,
            count,
            mut first_break,
            structure_only_from,
            ..
        } = self;
        if first_break.is_none() {
            if let Some((head_id, head_hash)) = recorded {
                if head_id != expected_id - 1 || head_hash != expected_prev {
                    let message = if head_id > expected_id - 1 {
                        format!(
                            "the newest event(s) {}..{head_id} were deleted",
                            expected_id
                        )
                    } else {
                        format!("event(s) after {head_id} were appended out of band")
                    };
                    first_break = Some(ChainBreak {
                        event_id: head_id.min(expected_id - 1).max(1),
                        problem: if head_id > expected_id - 1 {
                            "deleted".into()
                        } else {
                            "inserted".into()
                        },
                        message,
                    });
                }
            } else if count > 0 {
                first_break = Some(ChainBreak {
                    event_id: 1,
                    problem: "altered".into(),
                    message: "the recorded head of the event chain is missing".into(),
                });
            }
        }
        ChainReport {
            events: count,
            head_hash: expected_prev,
            first_break,
            structure_only_from,
        }
    }
}

/// The head recorded in `meta` as the text `ID:HASH` holds it.
pub fn parse_head(v: &str) -> Result<(i64, String)> {
    let bad = || Error::input(format!("malformed event head in meta: {v}"));
    let (id, hash) = v.split_once(':').ok_or_else(bad)?;
    let id = id.parse().map_err(|_| bad())?;
    Ok((id, hash.to_string()))
}

/// The newest event: what `log head` prints for an auditor to record elsewhere.
#[derive(Debug, Clone, Serialize)]
pub struct LogHead {
    pub id: i64,
    pub hash: String,
    pub at: String,
    /// The hash is an HMAC with the log key (only its holder can produce it).
    pub keyed: bool,
}

pub fn log_head(db: &Reader) -> Result<Option<LogHead>> {
    let conn = db.conn();
    let row: Option<(i64, String, String)> = conn
        .query_row(
            "SELECT id, hash, at FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let key = super::logkey::LogKey::load(conn)?;
    Ok(row.map(|(id, hash, at)| LogHead {
        keyed: key.as_ref().is_some_and(|k| k.for_id(id).is_some()),
        id,
        hash,
        at,
    }))
}

/// Whether the log still extends an anchor (a head recorded earlier): None when it does,
/// else why not. `id` may be unknown (a bare hash).
pub fn check_anchor(db: &Reader, id: Option<i64>, hash: &str) -> Result<Option<String>> {
    let conn = db.conn();
    let hash = hash.to_ascii_lowercase();
    let Some(id) = id else {
        let found: Option<i64> = conn
            .query_row("SELECT id FROM events WHERE hash = ?1", [&hash], |r| {
                r.get(0)
            })
            .optional()?;
        return Ok(match found {
            Some(_) => None,
            None => Some(format!(
                "no event has the anchored hash {hash}: the log was rewritten or rolled back past it"
            )),
        });
    };
    let stored: Option<String> = conn
        .query_row("SELECT hash FROM events WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    Ok(match stored {
        None => Some(format!(
            "the anchored event {id} is gone: events at or after it were removed (rolled back or deleted)"
        )),
        Some(h) if h != hash => Some(format!(
            "event {id} no longer has the anchored hash: history at or before it was rewritten"
        )),
        Some(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn ev(tx: &crate::store::Tx<'_>, kind: &str, at: &str) {
        let actor = crate::model::Actor {
            operator: "t".into(),
            station: "s".into(),
        };
        tx.event_json(
            crate::model::EventKind::DeviceUpdated,
            None,
            &actor,
            &serde_json::json!({"k": kind}).to_string(),
            at,
        )
        .unwrap();
    }

    #[test]
    fn chain_detects_edit_delete_insert() {
        let mut reg = Store::in_memory().unwrap();
        {
            let tx = reg.write().unwrap();
            for k in ["a", "b", "c", "d"] {
                ev(&tx, k, "2026-01-01T00:00:00Z");
            }
            tx.commit().unwrap();
        }
        let c = reg.conn();
        assert!(verify_chain(&reg).unwrap().first_break.is_none());
        c.execute("UPDATE events SET actor='x' WHERE id=2", [])
            .unwrap();
        let b = verify_chain(&reg).unwrap().first_break.unwrap();
        assert_eq!((b.event_id, b.problem.as_str()), (2, "altered"));
        c.execute("UPDATE events SET actor='t' WHERE id=2", [])
            .unwrap();
        c.execute("DELETE FROM events WHERE id=3", []).unwrap();
        let b = verify_chain(&reg).unwrap().first_break.unwrap();
        assert_eq!((b.event_id, b.problem.as_str()), (4, "deleted"));
    }

    #[test]
    fn deleting_the_newest_event_is_detected() {
        let mut reg = Store::in_memory().unwrap();
        {
            let tx = reg.write().unwrap();
            ev(&tx, "a", "t");
            ev(&tx, "b", "t");
            tx.commit().unwrap();
        }
        reg.conn()
            .execute("DELETE FROM events WHERE id=2", [])
            .unwrap();
        let b = verify_chain(&reg).unwrap().first_break.unwrap();
        assert_eq!(b.problem, "deleted");
    }
}
