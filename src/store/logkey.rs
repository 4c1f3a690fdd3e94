//! The event log key: a secret outside the registry (HOME/log.key, 0600) that keys the
//! event chain's hashes (HMAC-SHA256), so whoever can only write the registry file
//! cannot forge a consistent history. The file also records the first keyed event id:
//! a registry older than the key keeps its plain-hashed prefix verifiable, and the
//! boundary cannot be moved from inside the registry.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::conn::Conn;

use crate::error::{Error, Result};

/// HMAC-SHA256 keyed with the log key.
pub type EventMac = hmac::Hmac<sha2::Sha256>;

fn keyed(key: &[u8; 32]) -> EventMac {
    <EventMac as hmac::digest::KeyInit>::new_from_slice(key).expect("any key length")
}

pub const LOG_KEY_FILE: &str = "log.key";
const MAGIC: &str = "cradle-log-key 1";

#[derive(Clone)]
pub struct LogKey {
    /// The MAC keyed once; each event hash clones it (saves re-padding the key).
    mac: EventMac,
    /// The first event id hashed with the key; older events are plain SHA-256.
    pub from: i64,
    pub path: PathBuf,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "LogKey {{ from: {}, path: {:?} }}", self.from, self.path)
    }
}

/// Where the log key of the registry at `db` lives (beside it, in the home).
pub fn key_path(db: &Path) -> PathBuf {
    db.with_file_name(LOG_KEY_FILE)
}

/// The registry file of `conn`, unless it is in memory.
pub fn db_path(conn: &Connection) -> Option<PathBuf> {
    match conn.path() {
        Some(p) if !p.is_empty() && p != ":memory:" => Some(PathBuf::from(p)),
        _ => None,
    }
}

impl LogKey {
    /// The key to hash event `id` with, or None for a plain-hashed event.
    pub fn for_id(&self, id: i64) -> Option<&EventMac> {
        (id >= self.from).then_some(&self.mac)
    }

    /// Loads the key beside the registry of `conn`; None when there is none (or the
    /// registry is in memory).
    pub fn load(conn: &Conn) -> Result<Option<LogKey>> {
        let Some(path) = conn.key_file() else {
            return Ok(None);
        };
        Self::read(&path)
    }

    /// Reads a log key file; None when it does not exist.
    pub fn read(path: &Path) -> Result<Option<LogKey>> {
        let path = path.to_path_buf();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = || Error::input(format!("{}: not a cradle log key file", path.display()));
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad());
        }
        let from = lines
            .next()
            .and_then(|l| l.strip_prefix("from "))
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(bad)?;
        let hexkey = lines
            .next()
            .and_then(|l| l.strip_prefix("key "))
            .ok_or_else(bad)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hexkey, &mut key).map_err(|_| bad())?;
        Ok(Some(LogKey {
            mac: keyed(&key),
            from,
            path,
        }))
    }

    /// The key beside the registry of `conn`, created (keyed from the event after the
    /// newest) when there is none yet; None for an in-memory registry. Call it with the
    /// write lock held, so that no other station appends between reading the newest id
    /// and creating the key.
    pub fn load_or_create(conn: &Conn) -> Result<Option<LogKey>> {
        if let Some(k) = Self::load(conn)? {
            return Ok(Some(k));
        }
        let last: i64 =
            conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        Self::create(conn, last + 1)
    }

    /// A 32-byte key derived from the log key for another use (`label` names it), so
    /// that no MAC made for that use can ever pass for an event hash or the reverse.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = self.mac.clone();
        m.update(label);
        m.finalize().into_bytes().into()
    }

    /// Creates a new random key for the registry of `conn`, keyed from event `from`.
    /// Refuses to replace an existing key file. None for an in-memory registry.
    pub fn create(conn: &Conn, from: i64) -> Result<Option<LogKey>> {
        let Some(path) = conn.key_file() else {
            return Ok(None);
        };
        Self::create_at(&path, from).map(Some)
    }

    /// Creates a new random key file at `path`, keyed from event `from`; refuses to
    /// replace an existing one. (A PostgreSQL registry keeps its key in the home, out
    /// of the database.)
    pub fn create_at(path: &Path, from: i64) -> Result<LogKey> {
        use rand_core::{OsRng, RngCore};
        let path = path.to_path_buf();
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let text = format!("{MAGIC}\nfrom {from}\nkey {}\n", hex::encode(key));
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        Ok(LogKey {
            mac: keyed(&key),
            from,
            path,
        })
    }
}
