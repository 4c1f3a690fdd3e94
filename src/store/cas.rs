//! CA certificates known to the registry (the keys stay in encrypted files or on a
//! PKCS#11 token; a row records which).

use rusqlite::{params, OptionalExtension};

use super::conn::Row;

use super::{Reader, Tx};
use crate::error::Result;

pub use crate::model::{CaRecord, CaRole, NewCa};

const CA_COLUMNS: &str =
    "id, name, role, subject, fingerprint, ski, der, not_before, not_after, key_file, active";

fn ca_from_row(r: &Row<'_>) -> rusqlite::Result<CaRecord> {
    Ok(CaRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: match r.get_ref(2)?.as_str()? {
            "root" => CaRole::Root,
            _ => CaRole::Issuing,
        },
        subject: r.get(3)?,
        fingerprint: r.get(4)?,
        ski: r.get(5)?,
        der: r.get(6)?,
        not_before: r.get(7)?,
        not_after: r.get(8)?,
        key_file: r.get(9)?,
        active: r.get(10)?,
    })
}

/// Records a CA; an older CA of the same role stays known (for chain checks) but inactive.
pub fn insert_ca(tx: &Tx<'_>, ca: &NewCa<'_>, now: &str) -> Result<i64> {
    let conn = tx.conn();
    conn.execute(
        "UPDATE cas SET active = 0 WHERE role = ?1",
        [ca.role.as_str()],
    )?;
    conn.execute(
        "INSERT INTO cas (name, role, subject, fingerprint, ski, der, not_before, not_after, key_file, active, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10)
         ON CONFLICT(fingerprint) DO UPDATE SET active = 1, key_file = excluded.key_file, name = excluded.name",
        params![ca.name, ca.role.as_str(), ca.subject, ca.fingerprint, ca.ski, ca.der, ca.not_before, ca.not_after, ca.key_file, now],
    )?;
    let id = conn.query_row(
        "SELECT id FROM cas WHERE fingerprint = ?1",
        [ca.fingerprint],
        |r| r.get(0),
    )?;
    Ok(id)
}

pub fn active_ca(db: &Reader, role: CaRole) -> Result<Option<CaRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CA_COLUMNS} FROM cas WHERE role = ?1 AND active = 1 ORDER BY id DESC LIMIT 1"
    ))?;
    Ok(stmt.query_row([role.as_str()], ca_from_row).optional()?)
}

pub fn all_cas(db: &Reader) -> Result<Vec<CaRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!("SELECT {CA_COLUMNS} FROM cas ORDER BY id"))?;
    let rows = stmt.query_map([], ca_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
