//! Audit: checks over the whole registry that answer "is anything wrong with the fleet?".
//!
//! Each check has a stable id (`cradle audit --list-checks`) and a fixed severity.
//! Findings are streamed to a sink as they are found, so a registry of millions of
//! devices is audited with flat memory; the SQL lives in `registry::audit`.

pub mod charts;
pub mod report;

use std::collections::{BTreeMap, HashSet};

use crate::store::Reader;
use rayon::prelude::*;
use serde::Serialize;
use x509_parser::prelude::*;

use crate::error::Result;
use crate::pki::cert::sha256_hex;
use crate::pki::mark::AuditKey;
use crate::pki::trust::{NoIssuer, TrustStore};
use crate::store::audit::{self as q, DupField, StoredCert};
use crate::store::events;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One problem found by a check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    /// Serial of the device concerned; `None` for registry-wide findings (CRL, log).
    pub device: Option<String>,
    pub message: String,
    /// Serial (hex) of the certificate concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

/// A check: stable id, severity of its findings, what it looks for.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub severity: Severity,
    pub description: &'static str,
}

const fn check(id: &'static str, severity: Severity, description: &'static str) -> Check {
    Check {
        id,
        severity,
        description,
    }
}

pub const CERT_EXPIRING: &str = "cert-expiring";
pub const CERT_EXPIRED_DEPLOYED: &str = "cert-expired-deployed";
pub const REVOKED_NOT_RETIRED: &str = "revoked-not-retired";
pub const DECOMMISSIONED_WITHOUT_WIPE: &str = "decommissioned-without-wipe";
pub const CERT_OUTLIVES_DEVICE: &str = "cert-outlives-device";
pub const DUPLICATE_PUBLIC_KEY: &str = "duplicate-public-key";
pub const DUPLICATE_HARDWARE_ID: &str = "duplicate-hardware-id";
pub const DUPLICATE_MAC: &str = "duplicate-mac";
pub const DUPLICATE_IMEI: &str = "duplicate-imei";
pub const CERT_NOT_CHAINED: &str = "cert-not-chained";
pub const CERT_FINGERPRINT_MISMATCH: &str = "cert-fingerprint-mismatch";
pub const STUCK_PROVISIONING: &str = "stuck-provisioning";
pub const IN_SERVICE_WITHOUT_CERT: &str = "in-service-without-cert";
pub const UNUSED_CERT_STALE: &str = "unused-cert-stale";
pub const STUCK_DECOMMISSION: &str = "stuck-decommission";
pub const CRL_STALE: &str = "crl-stale";
pub const CRL_MISSING_SERIALS: &str = "crl-missing-serials";
pub const EVENT_CHAIN: &str = "event-chain";
pub const REGISTRY_INTEGRITY: &str = "registry-integrity";
pub const CERT_STATUS_VS_LOG: &str = "cert-status-vs-log";
pub const DEVICE_MARK: &str = "device-mark";
pub const FIRMWARE_BELOW: &str = "firmware-below";
pub const FIRMWARE_LISTED: &str = "firmware-listed";
pub const NO_CONTACT_SINCE: &str = "no-contact-since";
pub const WARRANTY_EXPIRING: &str = "warranty-expiring";
pub const END_OF_LIFE_REACHED: &str = "end-of-life-reached";
pub const RENEWAL_PENDING: &str = "renewal-pending";

use Severity::{Error as E, Warning as W};

/// Every check, in the order they run and report.
pub const CHECKS: &[Check] = &[
    check(REGISTRY_INTEGRITY, E, "the registry file fails SQLite's integrity check (damaged pages, records or an index that no longer matches its table)"),
    check(CERT_EXPIRING, W, "active certificate of an in-service device expires within --expiring-within days, times 2 for high and 4 for critical devices (not yet renewed)"),
    check(CERT_EXPIRED_DEPLOYED, E, "active certificate of a deployed or maintenance device has expired (not renewed)"),
    check(REVOKED_NOT_RETIRED, E, "device not retired or decommissioned whose certificates are revoked and none is active"),
    check(DECOMMISSIONED_WITHOUT_WIPE, E, "decommissioned device with neither a verified wipe attestation nor a manual wipe record"),
    check(CERT_OUTLIVES_DEVICE, E, "decommissioned device with a certificate that is not revoked (active, or unused after a failed provisioning): not on the CRL"),
    check(DUPLICATE_PUBLIC_KEY, E, "certificates of different devices share a public key"),
    check(DUPLICATE_HARDWARE_ID, E, "devices share a hardware id"),
    check(DUPLICATE_MAC, E, "devices share a MAC address (compared without separators or case)"),
    check(DUPLICATE_IMEI, E, "devices share an IMEI"),
    check(CERT_NOT_CHAINED, E, "stored certificate does not parse, or its signature does not verify against any registered CA"),
    check(CERT_FINGERPRINT_MISMATCH, E, "SHA-256 of the stored certificate DER differs from its recorded fingerprint"),
    check(STUCK_PROVISIONING, W, "device still 'registered' whose newest certificate (issued, or unused after a failed run) is older than --stuck-after days"),
    check(UNUSED_CERT_STALE, W, "certificate left 'unused' by a failed provisioning run, older than --stuck-after days, on a device that has moved on (revoke it)"),
    check(RENEWAL_PENDING, W, "a successor certificate issued for a device's port (`renew --port`) was never confirmed on the device: the device still uses the old one (re-run the renewal)"),
    check(IN_SERVICE_WITHOUT_CERT, W, "provisioned, deployed or maintenance device without an active certificate (it cannot authenticate)"),
    check(STUCK_DECOMMISSION, W, "device 'retired' (decommission started) for longer than --stuck-after days"),
    check(CRL_STALE, E, "newest CRL of a CA is past its next update, or a CA has revoked certificates but no CRL"),
    check(CRL_MISSING_SERIALS, E, "newest CRL does not list a revoked certificate, does not parse, or is not signed by its CA"),
    check(CERT_STATUS_VS_LOG, E, "a certificate's status disagrees with the event log: revoked without a cert.revoked event, or valid again although the log revoked it"),
    check(DEVICE_MARK, E, "a device row's keyed mark is missing or does not verify: the row was written or changed outside cradle (an edit, a bit flip)"),
    check(EVENT_CHAIN, E, "the hash-chained event log does not verify (an event altered, deleted or inserted out of band)"),
    check(FIRMWARE_BELOW, W, "in-service device of a model given with --min-firmware MODEL=VERSION whose recorded firmware is older, or has no version (runs only with --min-firmware)"),
    check(FIRMWARE_LISTED, E, "in-service device whose recorded firmware is a version listed in --vulnerable FILE (runs only with --vulnerable)"),
    check(NO_CONTACT_SINCE, W, "in-service device whose last contact over a port is older than --no-contact-days DAYS, or never recorded (runs only with --no-contact-days)"),
    check(WARRANTY_EXPIRING, W, "in-service device whose warranty_until is today or within --within DAYS (runs only with --within)"),
    check(END_OF_LIFE_REACHED, W, "device not retired or decommissioned whose end_of_life date is today or past"),
];

/// The option a check needs before it can run, if it needs one.
pub fn needs_option(id: &str) -> Option<&'static str> {
    match id {
        FIRMWARE_BELOW => Some("--min-firmware MODEL=VERSION"),
        FIRMWARE_LISTED => Some("--vulnerable FILE"),
        NO_CONTACT_SINCE => Some("--no-contact-days DAYS"),
        WARRANTY_EXPIRING => Some("--within DAYS"),
        _ => None,
    }
}

pub fn check_ids() -> Vec<&'static str> {
    CHECKS.iter().map(|c| c.id).collect()
}

fn severity_of(id: &str) -> Severity {
    CHECKS
        .iter()
        .find(|c| c.id == id)
        .map(|c| c.severity)
        .unwrap_or(Severity::Error)
}

/// What to check and the thresholds.
#[derive(Debug, Clone)]
pub struct Options {
    /// "Now" as Unix seconds.
    pub now: i64,
    pub expiring_within_days: u32,
    pub stuck_after_days: u32,
    /// Check ids to run; empty runs all.
    pub checks: Vec<String>,
    /// Key of the verification marks (`ca/audit.key`). With it, cert-not-chained accepts
    /// a certificate whose mark verifies and whose DER still hashes to its recorded
    /// fingerprint without verifying its signature; `None` verifies every signature.
    pub mark_key: Option<AuditKey>,
    /// firmware-below: the lowest acceptable firmware per model (`--min-firmware`).
    pub min_firmware: Vec<crate::app::firmware::MinFirmware>,
    /// firmware-listed: versions known bad (`--vulnerable FILE`), with the file's name.
    pub vulnerable: Option<(String, Vec<crate::app::firmware::Vulnerable>)>,
    /// no-contact-since: days without a contact (`--no-contact-days`).
    pub no_contact_days: Option<u32>,
    /// warranty-expiring: days ahead (`--within`).
    pub warranty_within_days: Option<u32>,
}

impl Options {
    pub fn new(now: i64) -> Options {
        Options {
            now,
            expiring_within_days: 30,
            stuck_after_days: 7,
            checks: Vec::new(),
            mark_key: None,
            min_firmware: Vec::new(),
            vulnerable: None,
            no_contact_days: None,
            warranty_within_days: None,
        }
    }
    fn selected(&self, id: &str) -> bool {
        self.checks.is_empty() || self.checks.iter().any(|c| c == id)
    }
    /// Whether the option check `id` needs is given.
    fn has_option(&self, id: &str) -> bool {
        match id {
            FIRMWARE_BELOW => !self.min_firmware.is_empty(),
            FIRMWARE_LISTED => self.vulnerable.is_some(),
            NO_CONTACT_SINCE => self.no_contact_days.is_some(),
            WARRANTY_EXPIRING => self.warranty_within_days.is_some(),
            _ => true,
        }
    }
    fn wants(&self, id: &str) -> bool {
        self.selected(id) && self.has_option(id)
    }
    /// Checks selected that cannot run because their option is missing, with it.
    pub fn not_run(&self) -> BTreeMap<&'static str, &'static str> {
        CHECKS
            .iter()
            .filter(|c| self.selected(c.id) && !self.has_option(c.id))
            .filter_map(|c| needs_option(c.id).map(|o| (c.id, o)))
            .collect()
    }
    /// Whether check `id` will run.
    pub fn checks_wanted(&self, id: &str) -> bool {
        self.wants(id)
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub devices: i64,
    pub checks: Vec<&'static str>,
    pub findings: u64,
    pub errors: u64,
    pub warnings: u64,
    /// Findings per check id (every check run appears, with 0 when clean).
    pub by_check: BTreeMap<&'static str, u64>,
    /// Checks selected but not run, with the option each needs.
    pub not_run: BTreeMap<&'static str, &'static str>,
    /// cert-not-chained: certificates whose signature was verified against the CAs.
    pub signatures_verified: u64,
    /// cert-not-chained: certificates accepted on their verification mark instead.
    pub marks_accepted: u64,
    pub seconds: f64,
}

/// Runs the selected checks; each finding goes to `sink` as soon as it is found.
pub fn run(
    conn: &Reader,
    opts: &Options,
    sink: &mut dyn FnMut(Finding) -> Result<()>,
) -> Result<Summary> {
    let started = std::time::Instant::now();
    // Every check reads one snapshot: a station committing meanwhile would otherwise
    // make the chain head and the events disagree (a false tamper alarm).
    let _snapshot = conn.read_snapshot()?;
    let mut summary = Summary {
        devices: q::device_count(conn)?,
        not_run: opts.not_run(),
        ..Default::default()
    };
    for c in CHECKS {
        if opts.wants(c.id) {
            summary.checks.push(c.id);
            summary.by_check.insert(c.id, 0);
        }
    }
    {
        let mut emit = |f: Finding| -> Result<()> {
            summary.findings += 1;
            match f.severity {
                Severity::Error => summary.errors += 1,
                Severity::Warning => summary.warnings += 1,
            }
            *summary.by_check.entry(f.check).or_default() += 1;
            sink(f)
        };
        let stats = run_checks(conn, opts, &mut emit)?;
        summary.signatures_verified = stats.verified;
        summary.marks_accepted = stats.marked;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn finding(check: &'static str, device: Option<String>, message: String) -> Finding {
    Finding {
        severity: severity_of(check),
        check,
        device,
        message,
        cert: None,
    }
}

fn with_cert(mut f: Finding, cert: &str) -> Finding {
    f.cert = Some(cert.to_string());
    f
}

/// `YYYY-MM-DD` of a Unix time.
pub fn date(secs: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_else(|_| secs.to_string())
}

fn rfc3339(secs: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(secs)
        .map(crate::store::fmt_time)
        .unwrap_or_else(|_| "0000-01-01T00:00:00Z".into())
}

const DAY: i64 = 86_400;

/// Midnight UTC of the day `secs` falls on.
fn day_start(secs: i64) -> i64 {
    secs.div_euclid(DAY) * DAY
}

/// Certificates verified per parallel chunk (bounds memory; big enough to keep all cores busy).
const CERT_CHUNK: usize = 4096;

/// How cert-not-chained settled each certificate.
#[derive(Debug, Default, Clone, Copy)]
struct CertStats {
    verified: u64,
    marked: u64,
}

fn run_checks(
    conn: &Reader,
    o: &Options,
    emit: &mut dyn FnMut(Finding) -> Result<()>,
) -> Result<CertStats> {
    let now = o.now;
    // First: every other check reads through the indexes this one vouches for.
    if o.wants(REGISTRY_INTEGRITY) {
        for p in conn.integrity_problems(true, 20)? {
            emit(finding(
                REGISTRY_INTEGRITY,
                None,
                format!("SQLite integrity check: {p}"),
            ))?;
        }
    }
    if o.wants(CERT_EXPIRING) {
        use crate::app::inventory::asset::Criticality;
        let factors: Vec<(&str, i64)> = Criticality::ALL
            .iter()
            .map(|c| (c.as_str(), Criticality::expiry_factor(Some(*c))))
            .collect();
        let window = i64::from(o.expiring_within_days) * DAY;
        q::certs_expiring(conn, now, window, &factors, |c, k| {
            let days = (c.not_after - now) / DAY;
            let weighted = if k > 1 {
                format!(
                    "; flagged {k}x earlier ({} days) for a {} device",
                    i64::from(o.expiring_within_days) * k,
                    factors
                        .iter()
                        .find(|(_, f)| *f == k)
                        .map_or("critical", |(n, _)| n)
                )
            } else {
                String::new()
            };
            emit(with_cert(
                finding(
                    CERT_EXPIRING,
                    Some(c.device),
                    format!(
                        "certificate {} expires on {} (in {days} day{}; device is {}{weighted})",
                        c.cert_serial,
                        date(c.not_after),
                        if days == 1 { "" } else { "s" },
                        c.device_status
                    ),
                ),
                &c.cert_serial,
            ))
        })?;
    }
    if o.wants(CERT_EXPIRED_DEPLOYED) {
        q::certs_expired_deployed(conn, now, |c| {
            emit(with_cert(
                finding(
                    CERT_EXPIRED_DEPLOYED,
                    Some(c.device),
                    format!(
                        "certificate {} expired on {} but the device is {}",
                        c.cert_serial,
                        date(c.not_after),
                        c.device_status
                    ),
                ),
                &c.cert_serial,
            ))
        })?;
    }
    if o.wants(REVOKED_NOT_RETIRED) {
        q::revoked_not_retired(conn, |r| {
            emit(with_cert(
                finding(
                    REVOKED_NOT_RETIRED,
                    Some(r.device),
                    format!(
                        "certificate {} was revoked{}{} but the device is {} with no active certificate",
                        r.cert_serial,
                        r.revoked_at.map(|t| format!(" on {t}")).unwrap_or_default(),
                        r.reason.map(|t| format!(" ({t})")).unwrap_or_default(),
                        r.device_status
                    ),
                ),
                &r.cert_serial,
            ))
        })?;
    }
    if o.wants(DECOMMISSIONED_WITHOUT_WIPE) {
        q::decommissioned_without_wipe(conn, |(serial, at, unverified)| {
            let why = if unverified > 0 {
                format!("{unverified} wipe attestation(s) recorded but none verified")
            } else {
                "no wipe record".to_string()
            };
            emit(finding(
                DECOMMISSIONED_WITHOUT_WIPE,
                Some(serial),
                format!("decommissioned (last change {at}) with {why}"),
            ))
        })?;
    }
    if o.wants(CERT_OUTLIVES_DEVICE) {
        q::unrevoked_certs_of_decommissioned(conn, |(serial, cert_serial, status)| {
            emit(with_cert(
                finding(
                    CERT_OUTLIVES_DEVICE,
                    Some(serial),
                    format!("decommissioned, but certificate {cert_serial} is {status}, not revoked: relying parties still accept it"),
                ),
                &cert_serial,
            ))
        })?;
    }
    if o.wants(DUPLICATE_PUBLIC_KEY) {
        q::duplicate_public_keys(conn, |d| {
            emit(finding(
                DUPLICATE_PUBLIC_KEY,
                Some(d.device),
                format!(
                    "public key sha256:{}… is used by {} devices ({})",
                    &d.value[..d.value.len().min(16)],
                    d.count,
                    sample(&d.sample, d.count)
                ),
            ))
        })?;
    }
    for (id, field, what) in [
        (DUPLICATE_HARDWARE_ID, DupField::HardwareId, "hardware id"),
        (DUPLICATE_MAC, DupField::Mac, "MAC"),
        (DUPLICATE_IMEI, DupField::Imei, "IMEI"),
    ] {
        if o.wants(id) {
            q::duplicate_devices(conn, field, |d| {
                emit(finding(
                    id,
                    Some(d.device),
                    format!(
                        "{what} '{}' is shared by {} devices ({})",
                        d.value,
                        d.count,
                        sample(&d.sample, d.count)
                    ),
                ))
            })?;
        }
    }
    let chain = o.wants(CERT_NOT_CHAINED);
    let fp = o.wants(CERT_FINGERPRINT_MISMATCH);
    let mut stats = CertStats::default();
    if chain || fp {
        stats = check_stored_certs(conn, chain, fp, o.mark_key.as_ref(), emit)?;
    }
    let before = rfc3339(now - i64::from(o.stuck_after_days) * DAY);
    if o.wants(STUCK_PROVISIONING) {
        q::stuck_provisioning(conn, &before, |s| {
            let msg = if s.cert_status == "unused" {
                format!(
                    "provisioning failed on {} (certificate {} unused) and was not retried; device is still registered",
                    s.issued_at, s.cert_serial
                )
            } else {
                format!(
                    "identity {} issued on {} but the device never reached 'provisioned' (over {} days)",
                    s.cert_serial, s.issued_at, o.stuck_after_days
                )
            };
            emit(with_cert(
                finding(STUCK_PROVISIONING, Some(s.device), msg),
                &s.cert_serial,
            ))
        })?;
    }
    if o.wants(UNUSED_CERT_STALE) {
        q::stale_unused_certs(conn, &before, |(serial, cert_serial, created)| {
            emit(with_cert(
                finding(
                    UNUSED_CERT_STALE,
                    Some(serial),
                    format!("certificate {cert_serial} from a failed provisioning run on {created} is still unused and valid: `cradle revoke` it (reason superseded)"),
                ),
                &cert_serial,
            ))
        })?;
    }
    if o.wants(RENEWAL_PENDING) {
        crate::store::renewals::unconfirmed(conn, &mut |u| {
            emit(with_cert(
                finding(
                    RENEWAL_PENDING,
                    Some(u.device),
                    format!(
                        "successor {} ({}) issued on {} was never confirmed on the device, which still uses certificate {}: re-run `cradle renew --port` on it",
                        u.new_cert,
                        if u.rekey { "new key" } else { "same key" },
                        u.issued_at,
                        u.old_cert
                    ),
                ),
                &u.new_cert,
            ))
        })?;
    }
    if o.wants(IN_SERVICE_WITHOUT_CERT) {
        q::in_service_without_cert(conn, |(serial, status)| {
            emit(finding(
                IN_SERVICE_WITHOUT_CERT,
                Some(serial),
                format!("{status}, but has no active certificate: provision it or take it out of service"),
            ))
        })?;
    }
    if o.wants(STUCK_DECOMMISSION) {
        q::stuck_decommission(conn, &before, |(serial, since, active)| {
            emit(finding(
                STUCK_DECOMMISSION,
                Some(serial),
                format!(
                    "retired since {since} (over {} days) but not decommissioned; {active} active certificate(s) left",
                    o.stuck_after_days
                ),
            ))
        })?;
    }
    let stale = o.wants(CRL_STALE);
    let missing = o.wants(CRL_MISSING_SERIALS);
    if stale || missing {
        check_crls(conn, now, stale, missing, emit)?;
    }
    if o.wants(CERT_STATUS_VS_LOG) {
        q::cert_status_vs_log(conn, |(serial, cert_serial, status, logged)| {
            let msg = if logged {
                format!("certificate {cert_serial} is {status}, but the event log revoked it: the row was changed outside cradle")
            } else {
                format!("certificate {cert_serial} is revoked, but the event log has no revocation of it: the row was changed outside cradle")
            };
            emit(with_cert(
                finding(CERT_STATUS_VS_LOG, Some(serial), msg),
                &cert_serial,
            ))
        })?;
    }
    if o.wants(DEVICE_MARK) {
        check_device_marks(conn, emit)?;
    }
    if o.wants(EVENT_CHAIN) {
        let report = events::verify_chain(conn)?;
        if let Some(b) = report.first_break {
            // The event named is the culprit when it was altered or inserted; after a
            // deletion it is only the first survivor, so no device is blamed.
            let device = match q::event_device(conn, b.event_id)? {
                Some(id) if b.problem != "deleted" => q::device_serial(conn, id)?,
                _ => None,
            };
            emit(finding(
                EVENT_CHAIN,
                device,
                format!("event {} {}: {}", b.event_id, b.problem, b.message),
            ))?;
        } else if let Some(from) = report.structure_only_from {
            // Without the log key a forged rechain looks like a keyed one.
            emit(finding(
                EVENT_CHAIN,
                None,
                format!(
                    "event {from} unverified: the log key (log.key in the home) is missing, so from here only the chain's structure could be checked"
                ),
            ))?;
        }
    }
    if o.wants(FIRMWARE_BELOW) || o.wants(FIRMWARE_LISTED) || o.wants(NO_CONTACT_SINCE) {
        check_firmware_and_contact(conn, o, emit)?;
    }
    let today = date(now);
    if let Some(days) = o
        .warranty_within_days
        .filter(|_| o.wants(WARRANTY_EXPIRING))
    {
        let until = date(now + i64::from(days) * DAY);
        q::devices_by_date(conn, q::AssetDate::WarrantyUntil, &today, &until, |d| {
            let left = crate::app::inventory::asset::date_unix(&d.date)
                .map_or(0, |t| (t - day_start(now)) / DAY);
            let when = match left {
                0 => "today".to_string(),
                1 => "tomorrow".to_string(),
                n => format!("in {n} days"),
            };
            emit(finding(
                WARRANTY_EXPIRING,
                Some(d.device),
                format!(
                    "warranty ends on {} ({when}; device is {})",
                    d.date, d.device_status
                ),
            ))
        })?;
    }
    if o.wants(END_OF_LIFE_REACHED) {
        q::devices_by_date(conn, q::AssetDate::EndOfLife, "0001-01-01", &today, |d| {
            emit(finding(
                END_OF_LIFE_REACHED,
                Some(d.device),
                format!(
                    "end of life was {} but the device is {} (retire it, or record a new end_of_life)",
                    d.date, d.device_status
                ),
            ))
        })?;
    }
    Ok(stats)
}

/// device-mark: every device row's mark against the key derived from the log key.
fn check_device_marks(conn: &Reader, emit: &mut dyn FnMut(Finding) -> Result<()>) -> Result<()> {
    use crate::store::rowmark;
    // An in-memory registry has no log key and no marks.
    if !q::is_file(conn) {
        return Ok(());
    }
    for (name, table) in q::stored_triggers(conn)? {
        emit(finding(
            DEVICE_MARK,
            None,
            format!("the registry file holds trigger '{name}' on table '{table}', which cradle never creates: it could change rows whenever cradle writes them"),
        ))?;
    }
    let state = q::device_mark_state(conn)?;
    if state == q::MarkState::RecordRemoved {
        emit(finding(
            DEVICE_MARK,
            None,
            format!("the registry's record that its device rows are marked (meta '{}') was removed, but the event log has it: rows without a mark are reported", rowmark::META_KEY),
        ))?;
    }
    let Some(key) = q::device_mark_key(conn)? else {
        // A registry from before marks (and its log key) has nothing to verify yet.
        if state != q::MarkState::Legacy && q::device_count(conn)? > 0 {
            emit(finding(
                DEVICE_MARK,
                None,
                "device rows unverified: the log key (log.key in the home) is missing, and device marks are keyed by it".into(),
            ))?;
        }
        return Ok(());
    };
    q::bad_device_marks(conn, &key, state != q::MarkState::Legacy, |b| {
        let msg = if b.missing {
            "device row written or changed outside cradle (it has no mark)"
        } else {
            "device row changed outside cradle (mark does not verify)"
        };
        emit(finding(DEVICE_MARK, Some(b.serial), msg.into()))
    })?;
    Ok(())
}

/// firmware-below, firmware-listed and no-contact-since in one pass over the in-service
/// devices.
fn check_firmware_and_contact(
    conn: &Reader,
    o: &Options,
    emit: &mut dyn FnMut(Finding) -> Result<()>,
) -> Result<()> {
    use crate::app::firmware::Version;
    let below = o.wants(FIRMWARE_BELOW);
    let listed = o
        .wants(FIRMWARE_LISTED)
        .then_some(())
        .and(o.vulnerable.as_ref());
    let cutoff = o
        .no_contact_days
        .filter(|_| o.wants(NO_CONTACT_SINCE))
        .map(|d| (d, rfc3339(o.now - i64::from(d) * DAY)));
    crate::store::contact::for_each_in_service(conn, |d| {
        let version = d.firmware.as_deref().and_then(Version::parse);
        let model = d.model.as_deref().unwrap_or("");
        if below {
            for m in o.min_firmware.iter().filter(|m| m.model == model) {
                let msg = match (&d.firmware, &version) {
                    (None, _) => Some(format!(
                        "{model} device with no firmware recorded (never contacted, never set); minimum is {}",
                        m.text
                    )),
                    (Some(fw), None) => Some(format!(
                        "firmware '{fw}' holds no version number to compare with the minimum {} for {model} (set the version with `device set firmware=`)",
                        m.text
                    )),
                    (Some(fw), Some(v)) if *v < m.min => Some(format!(
                        "firmware '{fw}' (version {v}) is below the minimum {} for {model}",
                        m.text
                    )),
                    _ => None,
                };
                if let Some(msg) = msg {
                    emit(finding(FIRMWARE_BELOW, Some(d.serial.clone()), msg))?;
                }
            }
        }
        if let (Some((file, list)), Some(v), Some(fw)) = (listed, &version, &d.firmware) {
            let hit = list
                .iter()
                .find(|l| l.model.as_deref().is_none_or(|lm| lm == model) && l.version == *v);
            if let Some(l) = hit {
                emit(finding(
                    FIRMWARE_LISTED,
                    Some(d.serial.clone()),
                    format!(
                        "firmware '{fw}' is listed as vulnerable ({file} line {}: {}{})",
                        l.line,
                        l.model
                            .as_deref()
                            .map(|m| format!("{m} "))
                            .unwrap_or_default(),
                        l.text
                    ),
                ))?;
            }
        }
        if let Some((days, before)) = &cutoff {
            let msg = match &d.last_contact_at {
                None => Some(format!(
                    "{}, but no contact over a port is recorded",
                    d.status
                )),
                Some(at) if at.as_str() < before.as_str() => Some(format!(
                    "{}, last contact {at} (over {days} days ago)",
                    d.status
                )),
                _ => None,
            };
            if let Some(msg) = msg {
                emit(finding(NO_CONTACT_SINCE, Some(d.serial.clone()), msg))?;
            }
        }
        Ok(())
    })
}

/// "A, B, C, D, E and 7 more".
fn sample(list: &str, count: i64) -> String {
    let names: Vec<&str> = list.split(", ").filter(|s| !s.is_empty()).take(5).collect();
    let more = count - names.len() as i64;
    if more > 0 {
        format!("{} and {more} more", names.join(", "))
    } else {
        names.join(", ")
    }
}

/// cert-not-chained and cert-fingerprint-mismatch in one pass over the stored DER:
/// chunks of certificates are streamed from SQLite and verified on all cores.
fn check_stored_certs(
    conn: &Reader,
    chain: bool,
    fp: bool,
    key: Option<&AuditKey>,
    emit: &mut dyn FnMut(Finding) -> Result<()>,
) -> Result<CertStats> {
    let trust = crate::app::ca::trust_store(conn)?;
    let mut stats = CertStats::default();
    q::certs_in_chunks(conn, CERT_CHUNK, |chunk| {
        let results: Vec<(Vec<Finding>, Settled)> = chunk
            .par_iter()
            .map(|c| check_one_cert(c, &trust, chain, fp, key))
            .collect();
        for (findings, settled) in results {
            match settled {
                Settled::Verified => stats.verified += 1,
                Settled::Marked => stats.marked += 1,
                Settled::NotChecked => {}
            }
            for f in findings {
                emit(f)?;
            }
        }
        Ok(())
    })?;
    Ok(stats)
}

/// How cert-not-chained settled one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Parsed and its signature verified (or found bad) against the registered CAs.
    Verified,
    /// Accepted on its verification mark: cradle recorded exactly this DER, issued by a
    /// CA whose stored DER is unchanged.
    Marked,
    /// cert-not-chained was not run.
    NotChecked,
}

/// Whether a certificate may skip signature verification: it carries a mark that
/// verifies for its *actual* DER hash (which must equal the recorded fingerprint) and
/// the actual DER hash of the registered CA it names.
fn mark_holds(c: &StoredCert, actual: &str, trust: &TrustStore, key: &AuditKey) -> bool {
    let (Some(mark), Some(ca_id)) = (c.verified_mac.as_deref(), c.ca_id) else {
        return false;
    };
    if actual != c.fingerprint {
        return false;
    }
    trust
        .get(ca_id)
        .is_some_and(|k| key.verify(actual, &k.fingerprint, mark))
}

fn check_one_cert(
    c: &StoredCert,
    trust: &TrustStore,
    chain: bool,
    fp: bool,
    key: Option<&AuditKey>,
) -> (Vec<Finding>, Settled) {
    let mut out = Vec::new();
    let dev = || Some(c.device.clone());
    // Hashed at most once: both the fingerprint check and the mark need it.
    let actual = (fp || (chain && key.is_some())).then(|| sha256_hex(&c.der));
    if let (true, Some(actual)) = (fp, actual.as_deref()) {
        if actual != c.fingerprint {
            out.push(with_cert(
                finding(
                    CERT_FINGERPRINT_MISMATCH,
                    dev(),
                    format!(
                        "stored DER of certificate {} hashes to {}… but the recorded fingerprint is {}…",
                        c.serial_hex,
                        &actual[..16],
                        &c.fingerprint[..c.fingerprint.len().min(16)]
                    ),
                ),
                &c.serial_hex,
            ));
        }
    }
    let mut settled = Settled::NotChecked;
    if chain {
        if let (Some(key), Some(actual)) = (key, actual.as_deref()) {
            if mark_holds(c, actual, trust, key) {
                return (out, Settled::Marked);
            }
        }
        settled = Settled::Verified;
        let msg = match X509Certificate::from_der(&c.der) {
            Err(e) => Some(format!(
                "stored certificate {} does not parse: {e}",
                c.serial_hex
            )),
            Ok((_, cert)) => match trust.issuer_of(&cert) {
                Ok(_) => None,
                Err(NoIssuer::Unknown) => Some(format!(
                    "certificate {} names issuer '{}', which is not a registered CA",
                    c.serial_hex,
                    cert.issuer()
                )),
                Err(NoIssuer::BadSignature(named)) => Some(format!(
                    "signature of certificate {} does not verify against registered CA '{}'",
                    c.serial_hex,
                    named
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join("', '")
                )),
            },
        };
        if let Some(m) = msg {
            out.push(with_cert(
                finding(CERT_NOT_CHAINED, dev(), m),
                &c.serial_hex,
            ));
        }
    }
    (out, settled)
}

/// Certificate serials compare as hex without leading zero octets.
fn norm_serial(hex: &str) -> String {
    let h = hex.to_ascii_lowercase();
    let mut s = h.as_str();
    while s.len() > 2 && s.starts_with("00") {
        s = &s[2..];
    }
    s.to_string()
}

fn check_crls(
    conn: &Reader,
    now: i64,
    stale: bool,
    missing: bool,
    emit: &mut dyn FnMut(Finding) -> Result<()>,
) -> Result<()> {
    let crls = q::newest_crls(conn)?;
    if stale {
        for c in &crls {
            if c.next_update < now {
                emit(finding(
                    CRL_STALE,
                    None,
                    format!(
                        "CRL #{} of CA '{}' is stale: its next update was due {} (issued {})",
                        c.crl_number,
                        c.ca_name,
                        rfc3339(c.next_update),
                        rfc3339(c.this_update)
                    ),
                ))?;
            }
        }
        for (ca_id, name, n) in q::revoked_counts_by_ca(conn)? {
            let covered = match ca_id {
                Some(id) => crls.iter().any(|c| c.ca_id == id),
                None => !crls.is_empty(),
            };
            if !covered {
                let who = if name.is_empty() {
                    "an unrecorded CA".to_string()
                } else {
                    format!("CA '{name}'")
                };
                emit(finding(
                    CRL_STALE,
                    None,
                    format!(
                        "{n} certificate(s) of {who} are revoked but no CRL has been published"
                    ),
                ))?;
            }
        }
    }
    if missing {
        for c in &crls {
            let listed = match parse_crl(c) {
                Ok(set) => set,
                Err(msg) => {
                    emit(finding(CRL_MISSING_SERIALS, None, msg))?;
                    continue;
                }
            };
            q::revoked_certs(conn, Some(c.ca_id), |(device, serial, at)| {
                if listed.contains(&norm_serial(&serial)) {
                    return Ok(());
                }
                emit(with_cert(
                    finding(
                        CRL_MISSING_SERIALS,
                        Some(device),
                        format!(
                            "certificate {serial} was revoked{} but CRL #{} of CA '{}' does not list it",
                            at.map(|t| format!(" on {t}")).unwrap_or_default(),
                            c.crl_number,
                            c.ca_name
                        ),
                    ),
                    &serial,
                ))
            })?;
        }
    }
    Ok(())
}

/// The serials a CRL lists, after checking it parses and is signed by its CA.
fn parse_crl(c: &q::CrlRow) -> std::result::Result<HashSet<String>, String> {
    let what = format!("CRL #{} of CA '{}'", c.crl_number, c.ca_name);
    let (_, crl) = CertificateRevocationList::from_der(&c.der)
        .map_err(|e| format!("{what} does not parse: {e}"))?;
    if let Ok((_, ca)) = X509Certificate::from_der(&c.ca_der) {
        if crl.issuer().as_raw() != ca.subject().as_raw()
            || crl.verify_signature(ca.public_key()).is_err()
        {
            return Err(format!("{what} is not signed by that CA"));
        }
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| norm_serial(&hex::encode(r.raw_serial())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_ids_are_unique_and_kebab_case() {
        let ids = check_ids();
        let set: HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert_eq!(ids.len(), 27);
        for id in ids {
            assert!(id.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        }
    }

    #[test]
    fn serials_compare_without_leading_zero_octets() {
        assert_eq!(norm_serial("00AB12"), "ab12");
        assert_eq!(norm_serial("00"), "00");
        assert_eq!(norm_serial("7f01"), "7f01");
    }

    #[test]
    fn sample_lists_five_then_counts() {
        assert_eq!(sample("a, b", 2), "a, b");
        assert_eq!(sample("a, b, c, d, e, f, g", 7), "a, b, c, d, e and 2 more");
    }

    #[test]
    fn clean_in_memory_registry_has_no_findings() {
        let reg = crate::store::Store::in_memory().unwrap();
        let mut n = 0;
        let s = run(reg.reader(), &Options::new(1_800_000_000), &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        // The checks that need an option do not run without it, and say so.
        assert_eq!((n, s.findings, s.checks.len()), (0, 0, CHECKS.len() - 4));
        assert_eq!(s.not_run.len(), 4);
    }
}
