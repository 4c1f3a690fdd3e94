//! Retirement records: revocations, CRLs, decommission steps, nonces and wipes.

use rusqlite::{params, OptionalExtension};

use super::conn::Row;
use serde::Serialize;

use super::certs::{cert_from_row, CertRecord, CERT_COLUMNS};
use super::{Reader, Tx};
use crate::error::Result;
use crate::model::{Revoked, Timestamp};

const CRL_STALE_KEY: &str = "crl_stale";
/// How many issued CRLs keep their DER in `crls`; older rows keep number, dates,
/// entry count and (in their `crl.issued` event) the hash, but not 5 MB of DER each.
pub const CRL_DER_KEPT: i64 = 5;

// ---- revocation ----------------------------------------------------------------

/// The few columns a bulk revocation needs.
#[derive(Debug, Clone)]
/// A certificate that revocation must reach: `active`, or `unused` (issued and possibly
/// on the device already, as after a failed provisioning), never only `active`.
pub struct ActiveCert {
    pub id: i64,
    pub serial_hex: String,
    pub fingerprint: String,
}

pub fn active_certs(db: &Reader, device_id: i64) -> Result<Vec<ActiveCert>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT id, serial_hex, fingerprint FROM certificates
         WHERE device_id = ?1 AND status IN ('active', 'unused') ORDER BY id",
    )?;
    let rows = stmt.query_map([device_id], |r| {
        Ok(ActiveCert {
            id: r.get(0)?,
            serial_hex: r.get(1)?,
            fingerprint: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A device's id and active certificates by serial, in one query; `None` if there
/// is no such device.
pub fn device_active_certs(db: &Reader, serial: &str) -> Result<Option<(i64, Vec<ActiveCert>)>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, c.id, c.serial_hex, c.fingerprint FROM devices d
         LEFT JOIN certificates c ON c.device_id = d.id AND c.status IN ('active', 'unused')
         WHERE d.serial = ?1 ORDER BY c.id",
    )?;
    let mut rows = stmt.query([serial])?;
    let mut out: Option<(i64, Vec<ActiveCert>)> = None;
    while let Some(r) = rows.next()? {
        let entry = out.get_or_insert_with(|| (r.get(0).unwrap_or_default(), Vec::new()));
        if let Some(id) = r.get::<_, Option<i64>>(1)? {
            entry.1.push(ActiveCert {
                id,
                serial_hex: r.get(2)?,
                fingerprint: r.get(3)?,
            });
        }
    }
    Ok(out)
}

pub fn device_count(db: &Reader) -> Result<i64> {
    let conn = db.conn();
    Ok(conn.query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))?)
}

/// Every device's id and active certificates, keyed by serial: one scan, for bulk
/// requests that name a large part of the fleet.
pub fn all_active_certs(
    db: &Reader,
) -> Result<std::collections::HashMap<String, (i64, Vec<ActiveCert>)>> {
    let conn = db.conn();
    let mut map = std::collections::HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT d.serial, d.id, c.id, c.serial_hex, c.fingerprint FROM devices d
         LEFT JOIN certificates c ON c.device_id = d.id AND c.status IN ('active', 'unused')
         ORDER BY d.id, c.id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let serial: String = r.get(0)?;
        let id: i64 = r.get(1)?;
        let entry = map.entry(serial).or_insert_with(|| (id, Vec::new()));
        if let Some(cid) = r.get::<_, Option<i64>>(2)? {
            entry.1.push(ActiveCert {
                id: cid,
                serial_hex: r.get(3)?,
                fingerprint: r.get(4)?,
            });
        }
    }
    Ok(map)
}

/// Revokes one certificate if it is still active; false if it was not.
pub fn revoke_cert(tx: &Tx<'_>, id: i64, reason: &str, now: &str) -> Result<bool> {
    let conn = tx.conn();
    let n = conn
        .prepare_cached(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?1, revocation_reason = ?2
             WHERE id = ?3 AND status IN ('active','unused')",
        )?
        .execute(params![now, reason, id])?;
    Ok(n == 1)
}

/// Revokes many certificates (id, reason) with one set-based UPDATE; returns the
/// ids that were still active (or unused) and are now revoked.
pub fn bulk_revoke(
    tx: &Tx<'_>,
    items: &[(i64, &str)],
    now: &str,
) -> Result<std::collections::HashSet<i64>> {
    let conn = tx.conn();
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS revoke_batch (id INTEGER PRIMARY KEY, reason TEXT NOT NULL);
         DELETE FROM temp.revoke_batch;",
    )?;
    {
        let mut ins = conn.prepare_cached(
            "INSERT OR IGNORE INTO temp.revoke_batch (id, reason) VALUES (?1, ?2)",
        )?;
        for (id, reason) in items {
            ins.execute(params![id, reason])?;
        }
    }
    let mut done = std::collections::HashSet::with_capacity(items.len());
    {
        let mut upd = conn.prepare_cached(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?1, revocation_reason = t.reason
             FROM temp.revoke_batch t
             WHERE certificates.id = t.id AND certificates.status IN ('active','unused')
             RETURNING certificates.id",
        )?;
        let mut rows = upd.query([now])?;
        while let Some(r) = rows.next()? {
            done.insert(r.get::<_, i64>(0)?);
        }
    }
    conn.execute_batch("DELETE FROM temp.revoke_batch")?;
    Ok(done)
}

/// Certificates of a device whose fingerprint starts with `prefix` (lower-case hex).
pub fn certs_by_fingerprint_prefix(
    db: &Reader,
    device_id: i64,
    prefix: &str,
) -> Result<Vec<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates
         WHERE device_id = ?1 AND substr(fingerprint, 1, length(?2)) = ?2 ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![device_id, prefix], cert_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The certificate whose key the device signs with: the newest one that was ever
/// delivered (active, or revoked since; revocation does not change the key).
pub fn newest_key_cert(db: &Reader, device_id: i64) -> Result<Option<CertRecord>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates
         WHERE device_id = ?1 AND status IN ('active','revoked') ORDER BY id DESC LIMIT 1"
    ))?;
    Ok(stmt.query_row([device_id], cert_from_row).optional()?)
}

/// Marks the published CRL as out of date (in the revoking transaction), so that a
/// crash before the CRL is refreshed is repaired by the next run.
pub fn mark_crl_stale(tx: &Tx<'_>) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT(key) DO UPDATE SET value = '1'",
    )?
    .execute([CRL_STALE_KEY])?;
    Ok(())
}

pub fn crl_stale(db: &Reader) -> Result<bool> {
    let conn = db.conn();
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([CRL_STALE_KEY], |r| r.get(0))
        .optional()?;
    Ok(v.as_deref() == Some("1"))
}

pub fn clear_crl_stale(tx: &Tx<'_>) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?
        .execute([CRL_STALE_KEY])?;
    Ok(())
}

// ---- CRLs ----------------------------------------------------------------------

/// Every revoked certificate issued by CA `ca_id`, oldest revocation first.
pub fn revoked_for_ca(db: &Reader, ca_id: i64) -> Result<Vec<Revoked>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT serial_hex, revoked_at, revocation_reason FROM certificates
         WHERE ca_id = ?1 AND status = 'revoked' ORDER BY id",
    )?;
    let mut rows = stmt.query([ca_id])?;
    let mut out = Vec::new();
    // Revocations come in batches sharing one time: parse each distinct string once.
    let mut last: Option<(String, Option<Timestamp>)> = None;
    while let Some(r) = rows.next()? {
        let at: Option<String> = r.get(1)?;
        let revoked_at = match (at, &last) {
            (None, _) => None,
            (Some(s), Some((ls, lt))) if s == *ls => *lt,
            (Some(s), _) => {
                let t = Timestamp::parse(&s);
                last = Some((s, t));
                t
            }
        };
        out.push(Revoked {
            serial_hex: r.get(0)?,
            revoked_at,
            reason: r.get(2)?,
        });
    }
    Ok(out)
}

pub fn next_crl_number(db: &Reader, ca_id: i64) -> Result<i64> {
    let conn = db.conn();
    let n: Option<i64> = conn.query_row(
        "SELECT MAX(crl_number) FROM crls WHERE ca_id = ?1",
        [ca_id],
        |r| r.get(0),
    )?;
    Ok(n.unwrap_or(0) + 1)
}

pub struct NewCrl<'a> {
    pub ca_id: i64,
    pub crl_number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    pub der: &'a [u8],
}

/// Records an issued CRL and drops the DER of all but the newest few.
pub fn insert_crl(tx: &Tx<'_>, c: &NewCrl<'_>, now: &str) -> Result<i64> {
    let conn = tx.conn();
    conn.execute(
        "INSERT INTO crls (ca_id, crl_number, this_update, next_update, entries, der, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            c.ca_id,
            c.crl_number,
            c.this_update,
            c.next_update,
            c.entries,
            c.der,
            now
        ],
    )?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "UPDATE crls SET der = ?3 WHERE ca_id = ?1 AND crl_number <= ?2 AND length(der) > 0",
        params![c.ca_id, c.crl_number - CRL_DER_KEPT, Vec::<u8>::new()],
    )?;
    Ok(id)
}

#[derive(Debug, Clone, Serialize)]
pub struct CrlRecord {
    pub ca_id: i64,
    pub crl_number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    #[serde(skip)]
    pub der: Vec<u8>,
    pub created_at: String,
}

pub fn latest_crl(db: &Reader, ca_id: i64) -> Result<Option<CrlRecord>> {
    let conn = db.conn();
    Ok(conn
        .query_row(
            "SELECT ca_id, crl_number, this_update, next_update, entries, der, created_at
             FROM crls WHERE ca_id = ?1 ORDER BY crl_number DESC LIMIT 1",
            [ca_id],
            |r| {
                Ok(CrlRecord {
                    ca_id: r.get(0)?,
                    crl_number: r.get(1)?,
                    this_update: r.get(2)?,
                    next_update: r.get(3)?,
                    entries: r.get(4)?,
                    der: r.get(5)?,
                    created_at: r.get(6)?,
                })
            },
        )
        .optional()?)
}

// ---- decommission steps -------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub device_id: i64,
    pub step: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub options: Option<serde_json::Value>,
    pub attempts: i64,
}

fn step_from_row(r: &Row<'_>) -> rusqlite::Result<StepRow> {
    let options: Option<String> = r.get(6)?;
    Ok(StepRow {
        device_id: r.get(0)?,
        step: r.get(1)?,
        status: r.get(2)?,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
        error: r.get(5)?,
        options: options.and_then(|o| serde_json::from_str(&o).ok()),
        attempts: r.get(7)?,
    })
}

const STEP_COLUMNS: &str =
    "device_id, step, status, started_at, finished_at, error, options, attempts";

pub fn steps_for_device(db: &Reader, device_id: i64) -> Result<Vec<StepRow>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STEP_COLUMNS} FROM decommissions WHERE device_id = ?1"
    ))?;
    let rows = stmt.query_map([device_id], step_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn step_row(db: &Reader, device_id: i64, step: &str) -> Result<Option<StepRow>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STEP_COLUMNS} FROM decommissions WHERE device_id = ?1 AND step = ?2"
    ))?;
    Ok(stmt
        .query_row(params![device_id, step], step_from_row)
        .optional()?)
}

/// Records that a step starts (or starts again), keeping the first start time.
pub fn start_step(
    tx: &Tx<'_>,
    device_id: i64,
    step: &str,
    options: &serde_json::Value,
    now: &str,
) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO decommissions (device_id, step, status, started_at, options)
         VALUES (?1, ?2, 'running', ?3, ?4)
         ON CONFLICT(device_id, step) DO UPDATE SET status = 'running', error = NULL,
             options = excluded.options, attempts = decommissions.attempts + 1",
    )?
    .execute(params![device_id, step, now, options.to_string()])?;
    Ok(())
}

pub fn finish_step(tx: &Tx<'_>, device_id: i64, step: &str, now: &str) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "UPDATE decommissions SET status = 'done', finished_at = ?3, error = NULL
         WHERE device_id = ?1 AND step = ?2",
    )?
    .execute(params![device_id, step, now])?;
    Ok(())
}

/// Records a failed attempt (the row is created if the step never started).
pub fn fail_step(
    tx: &Tx<'_>,
    device_id: i64,
    step: &str,
    options: &serde_json::Value,
    error: &str,
    now: &str,
) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO decommissions (device_id, step, status, started_at, options, error)
         VALUES (?1, ?2, 'failed', ?3, ?4, ?5)
         ON CONFLICT(device_id, step) DO UPDATE SET status = 'failed', error = excluded.error",
    )?
    .execute(params![device_id, step, now, options.to_string(), error])?;
    Ok(())
}

/// Devices whose decommission started but has not finished, in id order.
pub fn unfinished_jobs(db: &Reader) -> Result<Vec<i64>> {
    let conn = db.conn();
    let mut stmt = conn.prepare(
        "SELECT device_id FROM decommissions GROUP BY device_id
         HAVING count(CASE WHEN step = 'decommission' AND status = 'done' THEN 1 END) = 0 ORDER BY device_id",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

// ---- nonces --------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct NonceRow {
    pub device_id: Option<i64>,
    pub purpose: String,
    pub issued_at: String,
    pub used_at: Option<String>,
}

pub fn insert_nonce(
    tx: &Tx<'_>,
    nonce_hex: &str,
    device_id: i64,
    purpose: &str,
    now: &str,
) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO nonces (nonce_hex, device_id, purpose, issued_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![nonce_hex, device_id, purpose, now])?;
    Ok(())
}

pub fn nonce(db: &Reader, nonce_hex: &str) -> Result<Option<NonceRow>> {
    let conn = db.conn();
    Ok(conn
        .prepare_cached(
            "SELECT device_id, purpose, issued_at, used_at FROM nonces WHERE nonce_hex = ?1",
        )?
        .query_row([nonce_hex], |r| {
            Ok(NonceRow {
                device_id: r.get(0)?,
                purpose: r.get(1)?,
                issued_at: r.get(2)?,
                used_at: r.get(3)?,
            })
        })
        .optional()?)
}

/// Marks a nonce used; false if it was already used (or never issued).
pub fn use_nonce(tx: &Tx<'_>, nonce_hex: &str, now: &str) -> Result<bool> {
    let conn = tx.conn();
    let n = conn
        .prepare_cached("UPDATE nonces SET used_at = ?2 WHERE nonce_hex = ?1 AND used_at IS NULL")?
        .execute(params![nonce_hex, now])?;
    Ok(n == 1)
}

// ---- wipes ---------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize)]
pub struct WipeRecord {
    pub id: i64,
    pub device_id: i64,
    /// "attested" or "manual".
    pub kind: String,
    /// NIST SP 800-88 level: clear, purge, destroy.
    pub level: String,
    pub method: String,
    pub media_type: Option<String>,
    pub tool: Option<String>,
    pub tool_version: Option<String>,
    pub verification: Option<String>,
    pub verified_by: Option<String>,
    pub technician: Option<String>,
    pub location: Option<String>,
    pub destination: Option<String>,
    pub nonce_hex: Option<String>,
    /// The attestation as JSON (attested wipes).
    pub attestation: Option<String>,
    pub attestation_verified: Option<bool>,
    pub recorded_at: String,
}

pub fn insert_wipe(tx: &Tx<'_>, w: &WipeRecord) -> Result<i64> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO wipes (device_id, kind, level, method, media_type, tool, tool_version,
             verification, verified_by, technician, location, destination, nonce_hex,
             attestation, attestation_verified, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        w.device_id,
        w.kind,
        w.level,
        w.method,
        w.media_type,
        w.tool,
        w.tool_version,
        w.verification,
        w.verified_by,
        w.technician,
        w.location,
        w.destination,
        w.nonce_hex,
        w.attestation,
        w.attestation_verified,
        w.recorded_at
    ])?;
    Ok(conn.last_insert_rowid())
}

pub fn latest_wipe(db: &Reader, device_id: i64) -> Result<Option<WipeRecord>> {
    let conn = db.conn();
    Ok(conn
        .prepare_cached(
            "SELECT id, device_id, kind, level, method, media_type, tool, tool_version,
                 verification, verified_by, technician, location, destination, nonce_hex,
                 attestation, attestation_verified, recorded_at
             FROM wipes WHERE device_id = ?1 ORDER BY id DESC LIMIT 1",
        )?
        .query_row([device_id], |r| {
            Ok(WipeRecord {
                id: r.get(0)?,
                device_id: r.get(1)?,
                kind: r.get(2)?,
                level: r.get(3)?,
                method: r.get(4)?,
                media_type: r.get(5)?,
                tool: r.get(6)?,
                tool_version: r.get(7)?,
                verification: r.get(8)?,
                verified_by: r.get(9)?,
                technician: r.get(10)?,
                location: r.get(11)?,
                destination: r.get(12)?,
                nonce_hex: r.get(13)?,
                attestation: r.get(14)?,
                attestation_verified: r.get(15)?,
                recorded_at: r.get(16)?,
            })
        })
        .optional()?)
}
