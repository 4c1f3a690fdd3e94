//! Issued certificates as recorded in the registry (never their private keys).

use rusqlite::{params, OptionalExtension};

use super::conn::Row;
use serde::Serialize;

use super::{Reader, Tx};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// Key generated on the host (cradle), handed to the device.
    Host,
    /// Key generated on the device; cradle only saw a CSR.
    Device,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Host => "host",
            KeySource::Device => "device",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    Active,
    Revoked,
    /// Issued but never delivered to the device (a failed provisioning run).
    Unused,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Active => "active",
            CertStatus::Revoked => "revoked",
            CertStatus::Unused => "unused",
        }
    }
    pub fn parse(s: &str) -> CertStatus {
        match s {
            "revoked" => CertStatus::Revoked,
            "unused" => CertStatus::Unused,
            _ => CertStatus::Active,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewCert<'a> {
    pub device_id: i64,
    pub ca_id: Option<i64>,
    pub serial_hex: &'a str,
    pub fingerprint: &'a str,
    pub pubkey_sha256: &'a str,
    pub subject: &'a str,
    pub profile: &'a str,
    pub key_source: KeySource,
    pub not_before: i64,
    pub not_after: i64,
    pub der: &'a [u8],
    /// Verification mark (HMAC of fingerprint and CA fingerprint, see `pki::mark`);
    /// `None` for certificates cradle did not issue itself.
    pub verified_mac: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertRecord {
    pub id: i64,
    pub device_id: i64,
    pub ca_id: Option<i64>,
    pub serial_hex: String,
    pub fingerprint: String,
    pub pubkey_sha256: String,
    pub subject: String,
    pub profile: String,
    pub key_source: String,
    pub not_before: i64,
    pub not_after: i64,
    #[serde(skip)]
    pub der: Vec<u8>,
    pub status: CertStatus,
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
    pub created_at: String,
    /// The device's attestation of the key (see `set_device_attestation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_attestation: Option<serde_json::Value>,
}

pub const CERT_COLUMNS: &str = "id, device_id, ca_id, serial_hex, fingerprint, pubkey_sha256, subject, profile, key_source, not_before, not_after, der, status, revoked_at, revocation_reason, created_at, device_attestation";

pub fn cert_from_row(r: &Row<'_>) -> rusqlite::Result<CertRecord> {
    cert_from_row_at(r, 0)
}

/// A certificate from `CERT_COLUMNS` starting at column `off` (joins).
pub fn cert_from_row_at(r: &Row<'_>, off: usize) -> rusqlite::Result<CertRecord> {
    let status: String = r.get(off + 12)?;
    Ok(CertRecord {
        id: r.get(off)?,
        device_id: r.get(off + 1)?,
        ca_id: r.get(off + 2)?,
        serial_hex: r.get(off + 3)?,
        fingerprint: r.get(off + 4)?,
        pubkey_sha256: r.get(off + 5)?,
        subject: r.get(off + 6)?,
        profile: r.get(off + 7)?,
        key_source: r.get(off + 8)?,
        not_before: r.get(off + 9)?,
        not_after: r.get(off + 10)?,
        der: r.get(off + 11)?,
        status: CertStatus::parse(&status),
        revoked_at: r.get(off + 13)?,
        revocation_reason: r.get(off + 14)?,
        created_at: r.get(off + 15)?,
        device_attestation: r
            .get::<_, Option<String>>(off + 16)?
            .and_then(|t| serde_json::from_str(&t).ok()),
    })
}

pub fn insert_cert(tx: &Tx<'_>, c: &NewCert<'_>, now: &str) -> Result<i64> {
    let conn = tx.conn();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO certificates (device_id, ca_id, serial_hex, fingerprint, pubkey_sha256, subject, profile, key_source, not_before, not_after, der, status, created_at, verified_mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'active', ?12, ?13) RETURNING id",
    )?;
    let id: i64 = stmt
        .query_row(
            params![
                c.device_id,
                c.ca_id,
                c.serial_hex,
                c.fingerprint,
                c.pubkey_sha256,
                c.subject,
                c.profile,
                c.key_source.as_str(),
                c.not_before,
                c.not_after,
                c.der,
                now,
                c.verified_mac
            ],
            |r| r.get(0),
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Error::conflict(format!("certificate {} is already recorded", c.fingerprint))
            }
            _ => Error::from(e),
        })?;
    Ok(id)
}

/// Records the device's attestation evidence for the key of certificate `id`.
pub fn set_device_attestation(tx: &Tx<'_>, id: i64, evidence: &serde_json::Value) -> Result<()> {
    tx.conn().execute(
        "UPDATE certificates SET device_attestation = ?2 WHERE id = ?1",
        params![id, evidence.to_string()],
    )?;
    Ok(())
}

pub fn certs_for_device(db: &Reader, device_id: i64) -> Result<Vec<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE device_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([device_id], cert_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn cert_by_fingerprint(db: &Reader, fp: &str) -> Result<Option<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE fingerprint = ?1"
    ))?;
    Ok(stmt.query_row([fp], cert_from_row).optional()?)
}

pub fn cert_by_serial_hex(db: &Reader, serial_hex: &str) -> Result<Option<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE serial_hex = ?1"
    ))?;
    Ok(stmt.query_row([serial_hex], cert_from_row).optional()?)
}

pub fn set_cert_status(
    tx: &Tx<'_>,
    id: i64,
    status: CertStatus,
    reason: Option<&str>,
    now: &str,
) -> Result<()> {
    let conn = tx.conn();
    let revoked_at = (status == CertStatus::Revoked).then_some(now);
    conn.prepare_cached(
        "UPDATE certificates SET status = ?1, revoked_at = ?2, revocation_reason = ?3 WHERE id = ?4",
    )?
    .execute(params![status.as_str(), revoked_at, reason, id])?;
    Ok(())
}

/// An `unused` certificate (issued, not yet on the device) becomes `active`; false when
/// it is not unused any more (revoked meanwhile), which is never undone here.
pub fn activate_unused(tx: &Tx<'_>, id: i64) -> Result<bool> {
    let n = tx
        .conn()
        .prepare_cached(
            "UPDATE certificates SET status = 'active' WHERE id = ?1 AND status = 'unused'",
        )?
        .execute([id])?;
    Ok(n == 1)
}
