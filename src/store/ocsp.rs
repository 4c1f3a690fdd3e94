//! What OCSP reads: the status of one certificate by serial, every certificate of a
//! CA for pre-signing, those revoked since a time, and the current CRL's nextUpdate.

use rusqlite::OptionalExtension;

use super::conn::Row;

use super::Reader;
use crate::error::Result;
use crate::model::Timestamp;

/// A certificate's revocation state as OCSP reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertState {
    pub serial_hex: String,
    /// `None` while the certificate is not revoked.
    pub revoked: Option<Revocation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// `None` when the registry holds no (or no readable) revocation time.
    pub at: Option<Timestamp>,
    pub reason: Option<String>,
}

fn state_from_row(r: &Row<'_>) -> rusqlite::Result<CertState> {
    let status: String = r.get(1)?;
    let revoked = if status == "revoked" {
        let at: Option<String> = r.get(2)?;
        Some(Revocation {
            at: at.as_deref().and_then(Timestamp::parse),
            reason: r.get(3)?,
        })
    } else {
        None
    };
    Ok(CertState {
        serial_hex: r.get(0)?,
        revoked,
    })
}

const STATE_COLUMNS: &str = "serial_hex, status, revoked_at, revocation_reason";

/// The certificate with `serial_hex` issued by CA `ca_id`, if cradle recorded one.
pub fn cert_state(db: &Reader, ca_id: i64, serial_hex: &str) -> Result<Option<CertState>> {
    let mut stmt = db.conn().prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM certificates WHERE serial_hex = ?1 AND ca_id = ?2"
    ))?;
    Ok(stmt
        .query_row(rusqlite::params![serial_hex, ca_id], state_from_row)
        .optional()?)
}

/// Every certificate CA `ca_id` issued, in issue order.
pub fn cert_states(db: &Reader, ca_id: i64) -> Result<Vec<CertState>> {
    let mut stmt = db.conn().prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM certificates WHERE ca_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([ca_id], state_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Certificates of CA `ca_id` issued or revoked at or after `since` (registry
/// timestamps are RFC 3339 UTC with whole seconds, so they compare as text).
pub fn changed_since(db: &Reader, ca_id: i64, since: &str) -> Result<Vec<CertState>> {
    let mut stmt = db.conn().prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM certificates
         WHERE ca_id = ?1 AND (created_at >= ?2 OR (status = 'revoked' AND revoked_at >= ?2))
         ORDER BY id"
    ))?;
    let rows = stmt.query_map(rusqlite::params![ca_id, since], state_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// How many certificates CA `ca_id` issued, and how many of them are revoked.
pub fn counts(db: &Reader, ca_id: i64) -> Result<(usize, usize)> {
    let (all, revoked): (i64, i64) = db.conn().prepare_cached(
        "SELECT count(*), count(*) FILTER (WHERE status = 'revoked') FROM certificates WHERE ca_id = ?1",
    )?
    .query_row([ca_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((all as usize, revoked as usize))
}

/// nextUpdate (Unix seconds) of the newest CRL of CA `ca_id`, if one was issued.
pub fn crl_next_update(db: &Reader, ca_id: i64) -> Result<Option<i64>> {
    let n = db
        .conn()
        .prepare_cached(
            "SELECT next_update FROM crls WHERE ca_id = ?1 ORDER BY crl_number DESC LIMIT 1",
        )?
        .query_row([ca_id], |r| r.get(0))
        .optional()?;
    Ok(n)
}
