//! Renewals (`cradle renew`): which certificate succeeds which, and whether a successor
//! delivered over a port is confirmed on the device (migration 10).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::certs::{cert_from_row, CertRecord, CERT_COLUMNS};
use super::{Reader, Tx};
use crate::error::{Error, Result};

/// How a successor left cradle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Files,
    Bundle,
    Port,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Files => "files",
            Delivery::Bundle => "bundle",
            Delivery::Port => "port",
        }
    }
}

/// A successor issued for a port and not yet switched to on the device.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub old_cert_id: i64,
    pub rekey: bool,
    pub issued_at: String,
    pub new_cert: CertRecord,
}

pub fn insert(
    tx: &Tx<'_>,
    device_id: i64,
    old_cert_id: i64,
    new_cert_id: i64,
    rekey: bool,
    delivery: Delivery,
    now: &str,
) -> Result<i64> {
    let state = if delivery == Delivery::Port {
        "pending"
    } else {
        "delivered"
    };
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO renewals (device_id, old_cert_id, new_cert_id, rekey, delivery, state, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        device_id,
        old_cert_id,
        new_cert_id,
        rekey,
        delivery.as_str(),
        state,
        now
    ])
    .map_err(|e| match e.sqlite_error_code() {
        // renewals_one_pending: never two pending successors for one device.
        Some(rusqlite::ErrorCode::ConstraintViolation) => Error::conflict(
            "the device already has a pending successor certificate; finish it with `cradle renew --port`",
        ),
        _ => Error::from(e),
    })?;
    Ok(conn.last_insert_rowid())
}

/// The device's pending successor, if any (at most one, by a unique index).
pub fn pending_for_device(db: &Reader, device_id: i64) -> Result<Option<Pending>> {
    let conn = db.conn();
    let row = conn
        .prepare_cached(
            "SELECT id, old_cert_id, rekey, issued_at, new_cert_id FROM renewals
             WHERE device_id = ?1 AND state = 'pending'",
        )?
        .query_row([device_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((id, old_cert_id, rekey, issued_at, new_id)) = row else {
        return Ok(None);
    };
    let new_cert = cert_by_id(db, new_id)?
        .ok_or_else(|| Error::Internal(format!("renewal {id} names a missing certificate")))?;
    Ok(Some(Pending {
        id,
        old_cert_id,
        rekey,
        issued_at,
        new_cert,
    }))
}

/// The pending successor was switched to on the device. The device row changes too
/// (`updated_at`): its identity is new, so delta hand-offs (`export --since`) pick it up
/// even when the successor was issued before the last export.
pub fn confirm(tx: &Tx<'_>, id: i64, now: &str) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "UPDATE renewals SET state = 'confirmed', confirmed_at = ?2 WHERE id = ?1 AND state = 'pending'",
    )?
    .execute(params![id, now])?;
    conn.prepare_cached(
        "UPDATE devices SET updated_at = ?2 WHERE id = (SELECT device_id FROM renewals WHERE id = ?1)",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// A pending successor replaced by a re-run (its certificate is revoked by the caller).
pub fn abandon(tx: &Tx<'_>, id: i64) -> Result<()> {
    tx.conn()
        .prepare_cached("UPDATE renewals SET state = 'abandoned' WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// A certificate of the registry by row id.
pub fn cert_by_id(db: &Reader, id: i64) -> Result<Option<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], cert_from_row).optional()?)
}

/// A successor issued but never confirmed on the device (audit `renewal-pending`).
#[derive(Debug, Clone)]
pub struct Unconfirmed {
    pub device: String,
    pub old_cert: String,
    pub new_cert: String,
    pub issued_at: String,
    pub rekey: bool,
}

/// Whether the registry has the renewals table: an audit reads a registry as it is,
/// and one from before migration 10 (not yet written by this version) has none.
pub fn recorded(db: &Reader) -> Result<bool> {
    // A PostgreSQL registry is migrated whenever it is opened.
    if db.is_pg() {
        return Ok(true);
    }
    Ok(db
        .conn()
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'renewals')")?
        .query_row([], |r| r.get(0))?)
}

pub fn unconfirmed(db: &Reader, f: &mut dyn FnMut(Unconfirmed) -> Result<()>) -> Result<()> {
    if !recorded(db)? {
        return Ok(());
    }
    let conn = db.conn();
    let mut stmt = conn.prepare(
        "SELECT d.serial, o.serial_hex, n.serial_hex, r.issued_at, r.rekey
         FROM renewals r
         JOIN devices d ON d.id = r.device_id
         JOIN certificates o ON o.id = r.old_cert_id
         JOIN certificates n ON n.id = r.new_cert_id
         WHERE r.state = 'pending' AND d.status NOT IN ('retired','decommissioned')
         ORDER BY d.serial",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        f(Unconfirmed {
            device: r.get(0)?,
            old_cert: r.get(1)?,
            new_cert: r.get(2)?,
            issued_at: r.get(3)?,
            rekey: r.get(4)?,
        })?;
    }
    Ok(())
}

/// A device to renew and the certificate its successor supersedes.
#[derive(Debug, Clone)]
pub struct Target {
    pub device: super::devices::Device,
    pub old: CertRecord,
}

fn prefixed(cols: &str, p: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{p}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The newest of `c`'s device's active certificates (latest expiry, then newest row):
/// the one a renewal supersedes.
const CURRENT: &str = "NOT EXISTS (SELECT 1 FROM certificates n
    WHERE n.device_id = c.device_id AND n.status = 'active'
      AND (n.not_after > c.not_after OR (n.not_after = c.not_after AND n.id > c.id)))";

/// The certificate a device's renewal supersedes: its newest active one.
pub fn current_cert(db: &Reader, device_id: i64) -> Result<Option<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM certificates c WHERE c.device_id = ?1 AND c.status = 'active' AND {CURRENT}",
        prefixed(CERT_COLUMNS, "c")
    ))?;
    Ok(stmt.query_row([device_id], cert_from_row).optional()?)
}

/// In-service devices whose current certificate expires before `until` (expired ones
/// included: renewal after expiry), by serial. Devices with a pending successor are
/// returned apart (a port run must finish those).
pub fn expiring(db: &Reader, until: i64) -> Result<(Vec<Target>, Vec<String>)> {
    let conn = db.conn();
    let ncert = CERT_COLUMNS.split(", ").count();
    let mut stmt = conn.prepare(&format!(
        "SELECT {}, {}, EXISTS (SELECT 1 FROM renewals r WHERE r.device_id = d.id AND r.state = 'pending')
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE c.status = 'active' AND c.not_after < ?1
           AND d.status NOT IN ('retired','decommissioned') AND {CURRENT}
         ORDER BY d.serial",
        prefixed(CERT_COLUMNS, "c"),
        prefixed(super::devices::DEVICE_COLUMNS, "d"),
    ))?;
    let ndev = super::devices::DEVICE_COLUMNS.split(", ").count();
    let mut rows = stmt.query([until])?;
    let (mut out, mut pending) = (Vec::new(), Vec::new());
    while let Some(r) = rows.next()? {
        let old = super::certs::cert_from_row_at(&r, 0)?;
        let device = super::devices::from_row_at(&r, ncert)?;
        if r.get::<_, bool>(ncert + ndev)? {
            pending.push(device.serial);
        } else {
            out.push(Target { device, old });
        }
    }
    Ok((out, pending))
}

/// Whether certificate `cert_id` is still active on a device in service.
pub fn still_renewable(db: &Reader, cert_id: i64) -> Result<bool> {
    Ok(db
        .conn()
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM certificates c JOIN devices d ON d.id = c.device_id
             WHERE c.id = ?1 AND c.status = 'active' AND d.status NOT IN ('retired','decommissioned'))",
        )?
        .query_row([cert_id], |r| r.get(0))?)
}

/// How a certificate of a device came to be: the renewal that issued it (state and the
/// serial of the certificate it supersedes), by certificate row id.
pub fn by_new_cert(
    db: &Reader,
    device_id: i64,
) -> Result<std::collections::HashMap<i64, (String, String)>> {
    let mut out = std::collections::HashMap::new();
    if !recorded(db)? {
        return Ok(out);
    }
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT r.new_cert_id, r.state, o.serial_hex FROM renewals r
         JOIN certificates o ON o.id = r.old_cert_id WHERE r.device_id = ?1",
    )?;
    let mut rows = stmt.query([device_id])?;
    while let Some(r) = rows.next()? {
        out.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
    }
    Ok(out)
}

/// SQLite's `data_version` of this connection: it changes when another connection
/// commits, never for this connection's own commits. A bulk renewal compares it with
/// the value it planned under to skip re-checking rows nobody else can have changed.
pub fn data_version(db: &Reader) -> Result<i64> {
    // PostgreSQL has no such counter: a value no later call repeats, so a bulk renewal
    // always re-checks (what it does after any other station's commit on SQLite).
    if db.is_pg() {
        static CALLS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-1);
        return Ok(CALLS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed));
    }
    Ok(db
        .conn()
        .query_row("PRAGMA data_version", [], |r| r.get(0))?)
}
