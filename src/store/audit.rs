//! Read-only queries behind `cradle audit`, `cradle log` and `cradle report`.
//!
//! Every query streams its rows through a callback (nothing collects the whole
//! registry), and the duplicate checks aggregate in SQL, so memory stays flat
//! however large the fleet is.

use rusqlite::params;

use super::conn::{Conn, Params, Row};
use serde::Serialize;

use super::Reader;
use crate::error::Result;

/// Device states in which a device is no longer in service.
pub(super) const OUT_OF_SERVICE: &str = "('retired','decommissioned')";

fn each<P: Params, T>(
    conn: &Conn,
    sql: &str,
    params: P,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    mut f: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        f(map(&r)?)?;
    }
    Ok(())
}

/// A certificate with the serial of the device it belongs to.
#[derive(Debug, Clone)]
pub struct DeviceCert {
    pub device: String,
    pub device_status: String,
    pub cert_serial: String,
    pub not_after: i64,
}

fn device_cert(r: &Row<'_>) -> rusqlite::Result<DeviceCert> {
    Ok(DeviceCert {
        device: r.get(0)?,
        device_status: r.get(1)?,
        cert_serial: r.get(2)?,
        not_after: r.get(3)?,
    })
}

/// "Not renewed": no other active certificate of the same device outlives this one.
pub(super) const NOT_RENEWED: &str = "NOT EXISTS (SELECT 1 FROM certificates n
    WHERE n.device_id = c.device_id AND n.status = 'active' AND n.not_after > c.not_after)";

/// Active, not renewed certificates of in-service devices expiring from `from` on,
/// within `window` seconds times the factor of the device's criticality
/// (`factors`: criticality text and factor; any other device gets 1). Returns
/// the certificate with the factor that applied.
pub fn certs_expiring(
    db: &Reader,
    from: i64,
    window: i64,
    factors: &[(&str, i64)],
    mut f: impl FnMut(DeviceCert, i64) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    let mut case = String::from("CASE d.criticality");
    for (name, k) in factors {
        // Names are the fixed criticality words, never user text.
        debug_assert!(name.bytes().all(|b| b.is_ascii_lowercase()));
        case.push_str(&format!(" WHEN '{name}' THEN {k}"));
    }
    case.push_str(" ELSE 1 END");
    let widest = factors.iter().map(|(_, k)| *k).max().unwrap_or(1).max(1);
    // The first bound on not_after (the widest window) keeps the index range scan.
    let sql = format!(
        "SELECT d.serial, d.status, c.serial_hex, c.not_after, {case}
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE c.not_after >= ?1 AND c.not_after < ?1 + ?2 * {widest} AND c.status = 'active'
           AND c.not_after < ?1 + ?2 * ({case})
           AND d.status NOT IN {OUT_OF_SERVICE} AND {NOT_RENEWED}
         ORDER BY c.not_after, d.serial"
    );
    each(
        conn,
        &sql,
        params![from, window],
        |r| Ok((device_cert(r)?, r.get::<_, i64>(4)?)),
        |(c, k)| f(c, k),
    )
}

/// An in-service device with the date of one of its asset columns.
#[derive(Debug, Clone)]
pub struct DeviceDate {
    pub device: String,
    pub device_status: String,
    pub date: String,
}

/// Asset date columns the audit compares (`app::inventory::asset` dates).
#[derive(Debug, Clone, Copy)]
pub enum AssetDate {
    WarrantyUntil,
    EndOfLife,
}

impl AssetDate {
    fn column(self) -> &'static str {
        match self {
            AssetDate::WarrantyUntil => "warranty_until",
            AssetDate::EndOfLife => "end_of_life",
        }
    }
}

/// In-service devices whose `col` date (YYYY-MM-DD text, which sorts in date order) is
/// `from <= date <= until`, earliest first.
pub fn devices_by_date(
    db: &Reader,
    col: AssetDate,
    from: &str,
    until: &str,
    f: impl FnMut(DeviceDate) -> Result<()>,
) -> Result<()> {
    let c = col.column();
    let sql = format!(
        "SELECT serial, status, {c} FROM devices
         WHERE {c} >= ?1 AND {c} <= ?2 AND status NOT IN {OUT_OF_SERVICE}
         ORDER BY {c}, serial"
    );
    each(
        db.conn(),
        &sql,
        params![from, until],
        |r| {
            Ok(DeviceDate {
                device: r.get(0)?,
                device_status: r.get(1)?,
                date: r.get(2)?,
            })
        },
        f,
    )
}

/// Active, not renewed certificates past `not_after` on deployed (or maintenance) devices.
pub fn certs_expired_deployed(
    db: &Reader,
    now: i64,
    f: impl FnMut(DeviceCert) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    let sql = format!(
        "SELECT d.serial, d.status, c.serial_hex, c.not_after
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE c.not_after < ?1 AND c.status = 'active'
           AND d.status IN ('deployed','maintenance') AND {NOT_RENEWED}
         ORDER BY c.not_after, d.serial"
    );
    each(conn, &sql, params![now], device_cert, f)
}

#[derive(Debug, Clone)]
pub struct RevokedInService {
    pub device: String,
    pub device_status: String,
    pub cert_serial: String,
    pub revoked_at: Option<String>,
    pub reason: Option<String>,
}

/// In-service devices whose identity is revoked: they hold a revoked certificate and
/// no active one (a device whose old certificate was revoked after a renewal is fine).
pub fn revoked_not_retired(
    db: &Reader,
    f: impl FnMut(RevokedInService) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    let sql = format!(
        "SELECT d.serial, d.status, c.serial_hex, c.revoked_at, c.revocation_reason
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE c.status = 'revoked' AND d.status NOT IN {OUT_OF_SERVICE}
           AND c.id = (SELECT max(r.id) FROM certificates r
                       WHERE r.device_id = c.device_id AND r.status = 'revoked')
           AND NOT EXISTS (SELECT 1 FROM certificates a
                           WHERE a.device_id = c.device_id AND a.status = 'active')
         ORDER BY d.serial"
    );
    each(
        conn,
        &sql,
        [],
        |r| {
            Ok(RevokedInService {
                device: r.get(0)?,
                device_status: r.get(1)?,
                cert_serial: r.get(2)?,
                revoked_at: r.get(3)?,
                reason: r.get(4)?,
            })
        },
        f,
    )
}

/// Decommissioned devices with neither a verified wipe attestation nor a manual wipe
/// record. Yields (serial, updated_at, number of unverified attestation rows).
pub fn decommissioned_without_wipe(
    db: &Reader,
    f: impl FnMut((String, String, i64)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, d.updated_at,
                (SELECT count(*) FROM wipes u WHERE u.device_id = d.id)
         FROM devices d
         WHERE d.status = 'decommissioned'
           AND NOT EXISTS (SELECT 1 FROM wipes w WHERE w.device_id = d.id
                           AND (w.kind IN ('manual', 'read-back') OR w.attestation_verified = 1))
         ORDER BY d.serial",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        f,
    )
}

/// A device that shares an identifying value with other devices.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub device: String,
    /// The shared value (as stored on this device).
    pub value: String,
    /// How many devices share it.
    pub count: i64,
    /// Up to five serials of the group, for the message.
    pub sample: String,
}

/// Which identifying value a duplicate check groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DupField {
    HardwareId,
    Mac,
    Imei,
}

impl DupField {
    fn column(self) -> &'static str {
        match self {
            DupField::HardwareId => "hardware_id",
            DupField::Mac => "mac",
            DupField::Imei => "imei",
        }
    }
}

/// MACs compare without separators and case, so "AA:BB:…" and "aa-bb-…" are one address.
const MAC_KEY: &str = "lower(replace(replace(replace(trim(mac),':',''),'-',''),'.',''))";

/// Devices sharing a hardware id, MAC or IMEI with another device: GROUP BY/HAVING
/// finds the duplicate groups, then only their members are read.
pub fn duplicate_devices(
    db: &Reader,
    field: DupField,
    f: impl FnMut(Duplicate) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    let sql = if field == DupField::Mac {
        // No index on the normalised MAC: one scan groups, a second probes the groups.
        format!(
            "WITH g AS MATERIALIZED (
                 SELECT {MAC_KEY} AS k, count(*) AS n, group_concat(serial, ', ') AS sample
                 FROM devices WHERE mac IS NOT NULL AND {MAC_KEY} <> ''
                 GROUP BY k HAVING count(*) > 1)
             SELECT d.serial, d.mac, g.n, g.sample
             FROM devices d CROSS JOIN g
             WHERE g.k = {d_key} AND d.mac IS NOT NULL
             ORDER BY g.k, d.serial",
            d_key = MAC_KEY.replace("(mac)", "(d.mac)")
        )
    } else {
        // Exact values: the column's index serves both the grouping and the lookup.
        let col = field.column();
        format!(
            "WITH g AS MATERIALIZED (
                 SELECT {col} AS k, count(*) AS n FROM devices
                 WHERE {col} IS NOT NULL AND {col} <> ''
                 GROUP BY {col} HAVING count(*) > 1)
             SELECT d.serial, d.{col}, g.n,
                    (SELECT group_concat(serial, ', ') FROM
                        (SELECT s.serial FROM devices s WHERE s.{col} = g.k ORDER BY s.serial LIMIT 5) AS t)
             FROM g JOIN devices d ON d.{col} = g.k
             ORDER BY g.k, d.serial"
        )
    };
    each(
        conn,
        &sql,
        [],
        |r| {
            Ok(Duplicate {
                device: r.get(0)?,
                value: r.get(1)?,
                count: r.get(2)?,
                sample: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        },
        f,
    )
}

/// Devices whose certificates share a public key with another device's certificate.
pub fn duplicate_public_keys(db: &Reader, f: impl FnMut(Duplicate) -> Result<()>) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        // A covering scan of the pubkey index finds repeated keys; only those rows are
        // then read to tell a re-issue to the same device from a shared key.
        "WITH r AS MATERIALIZED (
             SELECT pubkey_sha256 AS k FROM certificates
             GROUP BY pubkey_sha256 HAVING count(*) > 1),
         g AS MATERIALIZED (
             SELECT r.k AS k, count(DISTINCT x.device_id) AS n
             FROM r JOIN certificates x ON x.pubkey_sha256 = r.k
             GROUP BY r.k HAVING count(DISTINCT x.device_id) > 1)
         SELECT d.serial, g.k, g.n,
                (SELECT group_concat(serial, ', ') FROM
                    (SELECT DISTINCT s.serial FROM certificates sc JOIN devices s ON s.id = sc.device_id
                     WHERE sc.pubkey_sha256 = g.k ORDER BY s.serial LIMIT 5) AS t)
         FROM g JOIN (SELECT DISTINCT pubkey_sha256, device_id FROM certificates) c
                  ON c.pubkey_sha256 = g.k
                JOIN devices d ON d.id = c.device_id
         ORDER BY g.k, d.serial",
        [],
        |r| {
            Ok(Duplicate {
                device: r.get(0)?,
                value: r.get(1)?,
                count: r.get(2)?,
                sample: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        },
        f,
    )
}

/// One stored certificate with its DER, for signature and fingerprint checks.
#[derive(Debug, Clone)]
pub struct StoredCert {
    pub id: i64,
    pub device: String,
    pub ca_id: Option<i64>,
    pub serial_hex: String,
    pub fingerprint: String,
    pub der: Vec<u8>,
    /// Verification mark recorded by cradle (`pki::mark`), if any.
    pub verified_mac: Option<Vec<u8>>,
}

/// Every certificate in id order, in chunks of `chunk` rows (so a caller can work on a
/// chunk in parallel while memory stays bounded by the chunk size).
pub fn certs_in_chunks(
    db: &Reader,
    chunk: usize,
    mut f: impl FnMut(Vec<StoredCert>) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    let mut buf = Vec::with_capacity(chunk);
    each(
        conn,
        "SELECT c.id, d.serial, c.ca_id, c.serial_hex, c.fingerprint, c.der, c.verified_mac
         FROM certificates c JOIN devices d ON d.id = c.device_id ORDER BY c.id",
        [],
        |r| {
            Ok(StoredCert {
                id: r.get(0)?,
                device: r.get(1)?,
                ca_id: r.get(2)?,
                serial_hex: r.get(3)?,
                fingerprint: r.get(4)?,
                der: r.get(5)?,
                verified_mac: r.get(6)?,
            })
        },
        |c| {
            buf.push(c);
            if buf.len() >= chunk {
                f(std::mem::replace(&mut buf, Vec::with_capacity(chunk)))?;
            }
            Ok(())
        },
    )?;
    if !buf.is_empty() {
        f(buf)?;
    }
    Ok(())
}

/// A device stuck in the middle of provisioning.
#[derive(Debug, Clone)]
pub struct StuckProvisioning {
    pub device: String,
    /// Status of the device's newest certificate: `active` (issued, never burned)
    /// or `unused` (a provisioning run failed and was not retried).
    pub cert_status: String,
    pub cert_serial: String,
    pub issued_at: String,
}

/// Devices still `registered` whose newest certificate was made before `before`
/// (RFC 3339): an identity was issued (or a run failed) but provisioning never completed.
pub fn stuck_provisioning(
    db: &Reader,
    before: &str,
    f: impl FnMut(StuckProvisioning) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, c.status, c.serial_hex, c.created_at
         FROM devices d
         JOIN certificates c ON c.id = (SELECT max(x.id) FROM certificates x
                                        WHERE x.device_id = d.id AND x.status <> 'revoked')
         WHERE d.status = 'registered' AND c.created_at < ?1
         ORDER BY d.serial",
        [before],
        |r| {
            Ok(StuckProvisioning {
                device: r.get(0)?,
                cert_status: r.get(1)?,
                cert_serial: r.get(2)?,
                issued_at: r.get(3)?,
            })
        },
        f,
    )
}

/// Certificates not revoked (active or unused) of decommissioned devices. Yields
/// (device serial, certificate serial, certificate status).
pub fn unrevoked_certs_of_decommissioned(
    db: &Reader,
    f: impl FnMut((String, String, String)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, c.serial_hex, c.status
         FROM devices d JOIN certificates c ON c.device_id = d.id
         WHERE d.status = 'decommissioned' AND c.status IN ('active', 'unused')
         ORDER BY d.serial, c.id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        f,
    )
}

/// Certificates whose status disagrees with the event log: `revoked` without a
/// `cert.revoked` event for it, or not revoked although such an event exists (the
/// row was changed behind cradle's back: the log is keyed, the row is not). Yields
/// (device serial, cert serial, status, whether the log revoked it).
pub fn cert_status_vs_log(
    db: &Reader,
    f: impl FnMut((String, String, String, bool)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, c.serial_hex, c.status, x.logged
         FROM (SELECT c.id, EXISTS (SELECT 1 FROM events e
                                    WHERE e.device_id = c.device_id AND e.kind = 'cert.revoked'
                                      AND json_extract(e.details, '$.fingerprint') = c.fingerprint) AS logged
               FROM certificates c) x
         JOIN certificates c ON c.id = x.id
         JOIN devices d ON d.id = c.device_id
         WHERE (c.status = 'revoked') <> x.logged
         ORDER BY d.serial, c.id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? == 1)),
        f,
    )
}

/// In-service devices (provisioned, deployed, maintenance) without an active
/// certificate. Yields (serial, status).
pub fn in_service_without_cert(
    db: &Reader,
    f: impl FnMut((String, String)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, d.status FROM devices d
         WHERE d.status IN ('provisioned', 'deployed', 'maintenance')
           AND NOT EXISTS (SELECT 1 FROM certificates c
                           WHERE c.device_id = d.id AND c.status = 'active')
         ORDER BY d.serial",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
        f,
    )
}

/// `unused` certificates (left by a failed provisioning run) made before `before`, of
/// devices that moved on from `registered` and are not decommissioned (those two are
/// stuck-provisioning and cert-outlives-device). Yields (serial, cert serial, created).
pub fn stale_unused_certs(
    db: &Reader,
    before: &str,
    f: impl FnMut((String, String, String)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    // A successor pending on its device is renewal-pending's, not a failed run's.
    let not_pending = if super::renewals::recorded(db)? {
        "AND NOT EXISTS (SELECT 1 FROM renewals r WHERE r.new_cert_id = c.id AND r.state = 'pending')"
    } else {
        ""
    };
    each(
        conn,
        &format!(
            "SELECT d.serial, c.serial_hex, c.created_at
             FROM certificates c JOIN devices d ON d.id = c.device_id
             WHERE c.status = 'unused' AND c.created_at < ?1
               AND d.status NOT IN ('registered', 'decommissioned') {not_pending}
             ORDER BY d.serial, c.id"
        ),
        [before],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        f,
    )
}

/// Devices `retired` (decommission started) since before `before`. Yields (serial, since,
/// active certificates left).
pub fn stuck_decommission(
    db: &Reader,
    before: &str,
    f: impl FnMut((String, String, i64)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, d.updated_at,
                (SELECT count(*) FROM certificates c WHERE c.device_id = d.id AND c.status = 'active')
         FROM devices d WHERE d.status = 'retired' AND d.updated_at < ?1
         ORDER BY d.updated_at, d.serial",
        [before],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        f,
    )
}

/// The newest CRL of one CA.
#[derive(Debug, Clone)]
pub struct CrlRow {
    pub ca_id: i64,
    pub ca_name: String,
    pub ca_der: Vec<u8>,
    pub crl_number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    pub der: Vec<u8>,
}

/// The newest CRL (highest CRL number) of each CA that has one.
pub fn newest_crls(db: &Reader) -> Result<Vec<CrlRow>> {
    let conn = db.conn();
    let mut out = Vec::new();
    each(
        conn,
        "SELECT l.ca_id, a.name, a.der, l.crl_number, l.this_update, l.next_update, l.entries, l.der
         FROM crls l JOIN cas a ON a.id = l.ca_id
         WHERE l.crl_number = (SELECT max(m.crl_number) FROM crls m WHERE m.ca_id = l.ca_id)
         ORDER BY l.ca_id",
        [],
        |r| {
            Ok(CrlRow {
                ca_id: r.get(0)?,
                ca_name: r.get(1)?,
                ca_der: r.get(2)?,
                crl_number: r.get(3)?,
                this_update: r.get(4)?,
                next_update: r.get(5)?,
                entries: r.get(6)?,
                der: r.get(7)?,
            })
        },
        |c| {
            out.push(c);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Revoked certificates per issuing CA: (ca_id, CA name, count). A NULL ca_id
/// (certificate recorded without its CA) comes back as `None`.
pub fn revoked_counts_by_ca(db: &Reader) -> Result<Vec<(Option<i64>, String, i64)>> {
    let conn = db.conn();
    let mut out = Vec::new();
    each(
        conn,
        "SELECT c.ca_id, coalesce(a.name, ''), count(*)
         FROM certificates c LEFT JOIN cas a ON a.id = c.ca_id
         WHERE c.status = 'revoked' GROUP BY c.ca_id, a.name ORDER BY c.ca_id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        |x| {
            out.push(x);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Revoked certificates issued by `ca_id` (or by any CA when `None`): (device serial,
/// certificate serial hex, revoked_at).
pub fn revoked_certs(
    db: &Reader,
    ca_id: Option<i64>,
    f: impl FnMut((String, String, Option<String>)) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT d.serial, c.serial_hex, c.revoked_at
         FROM certificates c JOIN devices d ON d.id = c.device_id
         WHERE c.status = 'revoked' AND (?1 IS NULL OR c.ca_id = ?1 OR c.ca_id IS NULL)
         ORDER BY d.serial, c.id",
        [ca_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        f,
    )
}

/// Whether the registry holds any certificate at all.
pub fn has_certificates(db: &Reader) -> Result<bool> {
    let conn = db.conn();
    Ok(
        conn.query_row("SELECT EXISTS (SELECT 1 FROM certificates)", [], |r| {
            r.get(0)
        })?,
    )
}

/// Number of devices in the registry.
pub fn device_count(db: &Reader) -> Result<i64> {
    let conn = db.conn();
    Ok(conn.query_row("SELECT count(*) FROM devices", [], |r| r.get(0))?)
}

/// Whether the registry is a file (an in-memory one has no log key, hence no marks).
pub fn is_file(db: &Reader) -> bool {
    db.conn().key_file().is_some()
}

/// Whether unmarked device rows are findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    /// `meta` records that every row is marked.
    Recorded,
    /// `meta` lost its record, but the keyed event log has it.
    RecordRemoved,
    /// A registry from before device marks that no writer has backfilled yet.
    Legacy,
}

pub fn device_mark_state(db: &Reader) -> Result<MarkState> {
    let conn = db.conn();
    Ok(if super::rowmark::recorded(conn)? {
        MarkState::Recorded
    } else if super::rowmark::logged(conn)? {
        MarkState::RecordRemoved
    } else {
        MarkState::Legacy
    })
}

/// The device-mark key (from the log key beside the registry); None without one.
pub fn device_mark_key(db: &Reader) -> Result<Option<super::rowmark::RowKey>> {
    Ok(super::logkey::LogKey::load(db.conn())?.map(|k| super::rowmark::RowKey::from_log_key(&k)))
}

/// Device rows whose mark does not verify, and when `require` those without one.
pub fn bad_device_marks(
    db: &Reader,
    key: &super::rowmark::RowKey,
    require: bool,
    each: impl FnMut(super::rowmark::BadMark) -> Result<()>,
) -> Result<u64> {
    super::rowmark::bad_marks(db.conn(), key, require, each)
}

/// Triggers stored in the registry file (name, table).
pub fn stored_triggers(db: &Reader) -> Result<Vec<(String, String)>> {
    super::rowmark::stored_triggers(db.conn())
}

/// Serial of a device id (for naming the device of a broken event).
pub fn device_serial(db: &Reader, id: i64) -> Result<Option<String>> {
    let conn = db.conn();
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT serial FROM devices WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Device id of an event, if the event row (still) exists.
pub fn event_device(db: &Reader, event_id: i64) -> Result<Option<i64>> {
    let conn = db.conn();
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT device_id FROM events WHERE id = ?1",
            [event_id],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// One event as exported by `cradle log export`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedEvent {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub device: Option<String>,
    pub actor: String,
    pub station: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Events in id order, optionally only those at or after `since` (RFC 3339) and of one
/// device.
pub fn events_export(
    db: &Reader,
    since: Option<&str>,
    device: Option<&str>,
    f: impl FnMut(ExportedEvent) -> Result<()>,
) -> Result<()> {
    let conn = db.conn();
    each(
        conn,
        "SELECT e.id, e.at, e.kind, d.serial, e.actor, e.station, e.details, e.prev_hash, e.hash
         FROM events e LEFT JOIN devices d ON d.id = e.device_id
         WHERE (?1 IS NULL OR e.at >= ?1) AND (?2 IS NULL OR d.serial = ?2)
         ORDER BY e.id",
        params![since, device],
        |r| {
            let details: String = r.get(6)?;
            Ok(ExportedEvent {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                device: r.get(3)?,
                actor: r.get(4)?,
                station: r.get(5)?,
                details: serde_json::from_str(&details)
                    .unwrap_or(serde_json::Value::String(details)),
                prev_hash: r.get(7)?,
                hash: r.get(8)?,
            })
        },
        f,
    )
}

/// `(label, count)` rows of devices grouped by one column (NULL/empty as "").
pub fn device_counts_by(db: &Reader, column: &str) -> Result<Vec<(String, i64)>> {
    let conn = db.conn();
    let col = match column {
        "status" | "site" | "batch" | "model" => column,
        other => {
            return Err(crate::Error::input(format!(
                "cannot group devices by '{other}'"
            )))
        }
    };
    let mut out = Vec::new();
    each(
        conn,
        &format!(
            "SELECT coalesce({col}, ''), count(*) FROM devices GROUP BY coalesce({col}, '')
             ORDER BY count(*) DESC, 1"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
        |x| {
            out.push(x);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Certificates by status: (status, count).
pub fn cert_counts(db: &Reader) -> Result<Vec<(String, i64)>> {
    let conn = db.conn();
    let mut out = Vec::new();
    each(
        conn,
        "SELECT status, count(*) FROM certificates GROUP BY status ORDER BY status",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
        |x| {
            out.push(x);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Active, not renewed certificates of in-service devices per month of expiry
/// ("YYYY-MM", count), for months with `not_after >= from`; plus the number already
/// expired before `from`.
pub fn expiry_by_month(db: &Reader, from: i64) -> Result<(Vec<(String, i64)>, i64)> {
    let conn = db.conn();
    let mut months = Vec::new();
    let mut expired = 0;
    each(
        conn,
        &format!(
            "SELECT CASE WHEN c.not_after < ?1 THEN 'expired'
                         ELSE strftime('%Y-%m', c.not_after, 'unixepoch') END AS m, count(*)
             FROM certificates c JOIN devices d ON d.id = c.device_id
             WHERE c.status = 'active' AND d.status NOT IN {OUT_OF_SERVICE} AND {NOT_RENEWED}
             GROUP BY m ORDER BY m"
        ),
        [from],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        |(m, n)| {
            if m == "expired" {
                expired = n;
            } else {
                months.push((m, n));
            }
            Ok(())
        },
    )?;
    Ok((months, expired))
}

/// A recently decommissioned device and its best wipe record.
#[derive(Debug, Clone, Serialize)]
pub struct Decommissioned {
    pub serial: String,
    pub model: Option<String>,
    pub site: Option<String>,
    pub at: String,
    /// `attested`, `manual` or none.
    pub wipe_kind: Option<String>,
    pub wipe_level: Option<String>,
    pub attestation_verified: Option<bool>,
}

/// The `limit` most recently decommissioned devices, newest first.
pub fn recent_decommissions(db: &Reader, limit: i64) -> Result<Vec<Decommissioned>> {
    let conn = db.conn();
    let mut out = Vec::new();
    each(
        conn,
        "SELECT d.serial, d.model, d.site, d.updated_at, w.kind, w.level, w.attestation_verified
         FROM devices d
         LEFT JOIN wipes w ON w.id = (SELECT x.id FROM wipes x WHERE x.device_id = d.id
             ORDER BY (x.kind IN ('manual', 'read-back') OR x.attestation_verified = 1) DESC, x.id DESC LIMIT 1)
         WHERE d.status = 'decommissioned'
         ORDER BY d.updated_at DESC, d.serial LIMIT ?1",
        [limit],
        |r| {
            Ok(Decommissioned {
                serial: r.get(0)?,
                model: r.get(1)?,
                site: r.get(2)?,
                at: r.get(3)?,
                wipe_kind: r.get(4)?,
                wipe_level: r.get(5)?,
                attestation_verified: r.get::<_, Option<i64>>(6)?.map(|v| v == 1),
            })
        },
        |x| {
            out.push(x);
            Ok(())
        },
    )?;
    Ok(out)
}
