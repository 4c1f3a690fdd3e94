//! Revocation: one device, one certificate, or a whole file of devices in bulk.
//!
//! Requests are resolved and checked first (every error names its file and line,
//! nothing is written); the revocations are then recorded in transactions of
//! `CHUNK` devices, each certificate with its own `cert.revoked` event, and the
//! CRL is marked stale in the same transaction so a crash before the CRL is
//! refreshed is repaired by the next run.

use std::collections::HashSet;
use std::path::Path;

use crate::store::Reader;
use serde::Serialize;

use super::crl::{self, Publication};
use super::Progress;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::pki::crl::{CrlIssued, Reason};
use crate::pki::signer::CaSigner;
use crate::store::certs::CertStatus;
use crate::store::devices;
use crate::store::retire::{self as rr, ActiveCert};
use crate::store::{now_rfc3339, Store, Tx};

/// Devices per registry transaction in a bulk revocation. One transaction writes
/// each touched page to the WAL once; 100,000 devices fit in one.
pub const CHUNK: usize = 100_000;

#[derive(Debug, Clone)]
pub struct RevokeRequest {
    pub serial: String,
    /// A fingerprint (or a unique prefix of at least 8 hex digits, colons allowed).
    pub cert: Option<String>,
    pub reason: Reason,
    /// Where the request came from (file, line) for error messages.
    pub at: Option<(String, usize)>,
}

/// A resolved request: what will be revoked and what already was.
#[derive(Debug, Clone)]
pub struct Planned {
    pub device_id: i64,
    pub serial: String,
    pub reason: Reason,
    pub certs: Vec<ActiveCert>,
    pub already: Vec<Revocation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Revocation {
    pub serial: String,
    pub cert_serial: String,
    pub fingerprint: String,
    pub reason: String,
    pub result: RevocationResult,
    pub revoked_at: Option<String>,
}

/// What a revocation request did to one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RevocationResult {
    /// Revoked now.
    #[serde(rename = "revoked")]
    Revoked,
    /// Revoked before (by an earlier run or another station): a no-op.
    #[serde(rename = "already revoked")]
    AlreadyRevoked,
}

impl RevocationResult {
    fn of(revoked_now: bool) -> RevocationResult {
        if revoked_now {
            RevocationResult::Revoked
        } else {
            RevocationResult::AlreadyRevoked
        }
    }
}

fn at_err(at: &Option<(String, usize)>, e: Error) -> Error {
    match at {
        Some((f, l)) => Error::input_at(f, *l, e.to_string()),
        None => e,
    }
}

/// Normalises a fingerprint argument: lower-case hex without colons or a `sha256:` prefix.
pub fn normalise_fingerprint(s: &str) -> Result<String> {
    let t = s.trim();
    let t = t.strip_prefix("sha256:").unwrap_or(t);
    let hex: String = t
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() < 8 || hex.len() > 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::input(format!(
            "'{s}' is not a certificate fingerprint (SHA-256 hex, at least 8 digits)"
        )));
    }
    Ok(hex)
}

/// Resolves requests against the registry; the first problem fails them all.
pub fn plan(conn: &Reader, reqs: &[RevokeRequest]) -> Result<Vec<Planned>> {
    // One read transaction for all lookups: one snapshot, and no lock/unlock
    // round trip per statement (200,000 of them for a 100,000-device file).
    let _snapshot = conn.read_snapshot()?;
    // A file naming a large part of the fleet: one scan beats a query per device.
    let mut scanned = if reqs.len() >= 1000 && (reqs.len() as i64) * 4 >= rr::device_count(conn)? {
        Some(rr::all_active_certs(conn)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(reqs.len());
    for req in reqs {
        if req.cert.is_none() {
            // The common bulk case: no per-device row parsing.
            let found = match scanned.as_mut() {
                Some(m) => m.remove(&req.serial),
                None => rr::device_active_certs(conn, &req.serial)?,
            };
            if let Some((device_id, certs)) = found {
                if !certs.is_empty() {
                    out.push(Planned {
                        device_id,
                        serial: req.serial.clone(),
                        reason: req.reason,
                        certs,
                        already: Vec::new(),
                    });
                    continue;
                }
            }
        }
        let dev = devices::require_device(conn, &req.serial).map_err(|e| at_err(&req.at, e))?;
        let mut p = Planned {
            device_id: dev.id,
            serial: dev.serial.clone(),
            reason: req.reason,
            certs: Vec::new(),
            already: Vec::new(),
        };
        match &req.cert {
            None => {}
            Some(fp) => {
                let fp = normalise_fingerprint(fp).map_err(|e| at_err(&req.at, e))?;
                let found = rr::certs_by_fingerprint_prefix(conn, dev.id, &fp)?;
                let c = match found.len() {
                    0 => {
                        return Err(at_err(
                            &req.at,
                            Error::not_found(format!(
                                "device '{}' has no certificate with fingerprint {fp}",
                                dev.serial
                            )),
                        ))
                    }
                    1 => &found[0],
                    n => {
                        return Err(at_err(
                            &req.at,
                            Error::input(format!(
                                "fingerprint prefix {fp} matches {n} certificates of '{}'; give more digits",
                                dev.serial
                            )),
                        ))
                    }
                };
                if c.status == CertStatus::Revoked {
                    p.already.push(Revocation {
                        serial: dev.serial.clone(),
                        cert_serial: c.serial_hex.clone(),
                        fingerprint: c.fingerprint.clone(),
                        reason: c
                            .revocation_reason
                            .clone()
                            .unwrap_or_else(|| "unspecified".into()),
                        result: RevocationResult::AlreadyRevoked,
                        revoked_at: c.revoked_at.clone(),
                    });
                } else {
                    p.certs.push(ActiveCert {
                        id: c.id,
                        serial_hex: c.serial_hex.clone(),
                        fingerprint: c.fingerprint.clone(),
                    });
                }
            }
        }
        if p.certs.is_empty() && p.already.is_empty() {
            // Nothing active: report what was revoked before, so "twice" says so.
            for c in crate::store::certs::certs_for_device(conn, dev.id)? {
                if c.status == CertStatus::Revoked {
                    p.already.push(Revocation {
                        serial: dev.serial.clone(),
                        cert_serial: c.serial_hex,
                        fingerprint: c.fingerprint,
                        reason: c.revocation_reason.unwrap_or_else(|| "unspecified".into()),
                        result: RevocationResult::AlreadyRevoked,
                        revoked_at: c.revoked_at,
                    });
                }
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// Revokes `certs` of one device inside the caller's transaction, one `cert.revoked`
/// event each. A certificate revoked meanwhile by someone else is reported as
/// `AlreadyRevoked`. The caller marks the CRL stale (`rr::mark_crl_stale`) in the
/// same transaction if anything was revoked.
pub fn revoke_in_tx(
    tx: &Tx<'_>,
    device: &crate::store::Device,
    certs: &[ActiveCert],
    reason: Reason,
    actor: &Actor,
    now: &str,
    extra: &serde_json::Value,
) -> Result<Vec<Revocation>> {
    let mut out = Vec::with_capacity(certs.len());
    for c in certs {
        let done = rr::revoke_cert(tx, c.id, reason.as_str(), now)?;
        if done {
            revoked_event(tx, device.id, c, reason, actor, now, extra)?;
        }
        out.push(Revocation {
            serial: device.serial.clone(),
            cert_serial: c.serial_hex.clone(),
            fingerprint: c.fingerprint.clone(),
            reason: reason.as_str().to_string(),
            result: RevocationResult::of(done),
            revoked_at: done.then(|| now.to_string()),
        });
    }
    Ok(out)
}

fn revoked_event(
    tx: &Tx<'_>,
    device_id: i64,
    c: &ActiveCert,
    reason: Reason,
    actor: &Actor,
    now: &str,
    extra: &serde_json::Value,
) -> Result<()> {
    // Serialised straight from a struct: bulk revocations write 100,000s of these.
    #[derive(serde::Serialize)]
    struct Details<'a> {
        cert_serial: &'a str,
        fingerprint: &'a str,
        reason: &'a str,
        reason_code: u8,
        #[serde(flatten)]
        extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
    }
    let details = serde_json::to_string(&Details {
        cert_serial: &c.serial_hex,
        fingerprint: &c.fingerprint,
        reason: reason.as_str(),
        reason_code: reason.code(),
        extra: extra.as_object(),
    })
    .map_err(|e| Error::Internal(format!("cert.revoked event details as JSON: {e}")))?;
    tx.event_json(
        EventKind::CertRevoked,
        Some(device_id),
        actor,
        &details,
        now,
    )?;
    Ok(())
}

/// Records the planned revocations, `CHUNK` devices per transaction.
pub fn apply(
    reg: &mut Store,
    plans: &[Planned],
    actor: &Actor,
    progress: &dyn Fn(u64),
) -> Result<Vec<Revocation>> {
    reg.tune_for_bulk()?;
    let mut out = Vec::with_capacity(plans.len());
    let mut done = 0u64;
    for chunk in plans.chunks(CHUNK) {
        let now = now_rfc3339();
        let tx = reg.write()?;
        let first = out.len();
        // One set-based UPDATE for the chunk, then one event per revoked certificate.
        let items: Vec<(i64, &str)> = chunk
            .iter()
            .flat_map(|p| p.certs.iter().map(move |c| (c.id, p.reason.as_str())))
            .collect();
        let mut revoked = rr::bulk_revoke(&tx, &items, &now)?;
        for p in chunk {
            out.extend(p.already.iter().cloned());
            for c in &p.certs {
                // remove(): a certificate named twice gets one event, then "already".
                let done = revoked.remove(&c.id);
                if done {
                    revoked_event(
                        &tx,
                        p.device_id,
                        c,
                        p.reason,
                        actor,
                        &now,
                        &serde_json::Value::Null,
                    )?;
                }
                out.push(Revocation {
                    serial: p.serial.clone(),
                    cert_serial: c.serial_hex.clone(),
                    fingerprint: c.fingerprint.clone(),
                    reason: p.reason.as_str().to_string(),
                    result: RevocationResult::of(done),
                    revoked_at: done.then(|| now.clone()),
                });
            }
        }
        if out[first..]
            .iter()
            .any(|r| r.result == RevocationResult::Revoked)
        {
            rr::mark_crl_stale(&tx)?;
        }
        tx.commit()?;
        done += chunk.len() as u64;
        progress(done);
    }
    Ok(out)
}

/// What `revoke` did.
#[derive(Debug, Clone)]
pub enum RevokeOutcome {
    /// Nothing to revoke and the CRL is current: nothing was written and the CA was
    /// not unlocked. One entry per device named, in request order.
    NothingToDo(Vec<Untouched>),
    /// The revocations are recorded and the CRL republished.
    Revoked {
        /// Devices named by the requests.
        devices: usize,
        /// Every certificate named, revoked now or before.
        revocations: Vec<Revocation>,
        /// `None` only if another station published a current CRL meanwhile.
        crl: Option<CrlIssued>,
    },
}

/// A device with nothing to revoke, and what was revoked before (if anything).
#[derive(Debug, Clone)]
pub struct Untouched {
    pub serial: String,
    pub already: Vec<Revocation>,
}

/// Revokes what `reqs` name and republishes the CRL: resolve every request first
/// (nothing is written if one fails), unlock the CA only when something is to be
/// revoked or the CRL is stale (a wrong passphrase changes nothing), record the
/// revocations (`apply`), then publish (`crl::publish_if_stale`).
///
/// `unlock` comes from the caller, which knows where the passphrase comes from; its
/// error type is the caller's, so that its context reaches the user unchanged.
pub fn revoke<E: From<Error>>(
    reg: &mut Store,
    reqs: &[RevokeRequest],
    to: &Publication,
    actor: &Actor,
    unlock: impl FnOnce(&Store) -> std::result::Result<CaSigner, E>,
    progress: &dyn Progress,
) -> std::result::Result<RevokeOutcome, E> {
    let plans = plan(reg.reader(), reqs)?;
    let revoking = plans.iter().any(|p| !p.certs.is_empty());
    if !crl::signer_needed(reg.reader(), revoking)? {
        return Ok(RevokeOutcome::NothingToDo(
            plans
                .into_iter()
                .map(|p| Untouched {
                    serial: p.serial,
                    already: p.already,
                })
                .collect(),
        ));
    }
    let signer = unlock(reg)?;
    progress.start(plans.len() as u64);
    let revocations = apply(reg, &plans, actor, &|n| progress.done(n))?;
    progress.finish();
    let crl = crl::publish_if_stale(reg, Some(&signer), to, actor).map_err(|e| match e {
        e @ Error::OcspNotRefreshed { .. } => e,
        e => Error::CrlNotPublished(Box::new(e)),
    })?;
    Ok(RevokeOutcome::Revoked {
        devices: plans.len(),
        revocations,
        crl,
    })
}

/// Reads revocation requests from a CSV: `serial` (required), optional `cert`
/// (fingerprint) and `reason` columns; other columns are refused.
pub fn requests_from_csv(path: &Path, default_reason: Reason) -> Result<Vec<RevokeRequest>> {
    let name = path.display().to_string();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| match e.kind() {
            csv::ErrorKind::Io(_) => Error::io(path, std::io::Error::other(e.to_string())),
            _ => Error::input(format!("{name}: {e}")),
        })?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::input_at(&name, 1, e.to_string()))?
        .clone();
    let mut cols = (None, None, None);
    for (i, h) in headers.iter().enumerate() {
        let h = h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase();
        let slot = match h.as_str() {
            "serial" => &mut cols.0,
            "cert" | "fingerprint" => &mut cols.1,
            "reason" => &mut cols.2,
            other => {
                return Err(Error::input_at(
                    &name,
                    1,
                    format!("unknown column '{other}' (expected serial, cert, reason)"),
                ))
            }
        };
        if slot.is_some() {
            return Err(Error::input_at(
                &name,
                1,
                format!("column '{h}' appears twice"),
            ));
        }
        *slot = Some(i);
    }
    let serial_col = cols
        .0
        .ok_or_else(|| Error::input_at(&name, 1, "no 'serial' column in the header"))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            Error::input_at(&name, line, e.to_string())
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let serial = rec.get(serial_col).unwrap_or("").trim().to_string();
        crate::app::identity::check_serial(&serial)
            .map_err(|e| Error::input_at(&name, line, e.to_string()))?;
        let cert = cols
            .1
            .and_then(|c| rec.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let reason = match cols
            .2
            .and_then(|c| rec.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(r) => r
                .parse()
                .map_err(|e: Error| Error::input_at(&name, line, e.to_string()))?,
            None => default_reason,
        };
        if !seen.insert((serial.clone(), cert.clone())) {
            return Err(Error::input_at(
                &name,
                line,
                format!("serial '{serial}' appears twice"),
            ));
        }
        out.push(RevokeRequest {
            serial,
            cert,
            reason,
            at: Some((name.clone(), line)),
        });
    }
    if out.is_empty() {
        return Err(Error::input_at(&name, 1, "no rows after the header"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::retire::wipe::tests::setup;
    use crate::app::retire::NoProgress;

    /// The caller's own error type, to show that `unlock`'s error comes back as is.
    #[derive(Debug, PartialEq)]
    struct CallerError(String);
    impl From<Error> for CallerError {
        fn from(e: Error) -> Self {
            CallerError(e.to_string())
        }
    }

    fn request(serial: &str) -> RevokeRequest {
        RevokeRequest {
            serial: serial.into(),
            cert: None,
            reason: Reason::Superseded,
            at: None,
        }
    }

    fn to() -> Publication {
        Publication {
            path: "/nonexistent/crl.pem".into(),
            next_update_days: 7,
            ocsp_dir: None,
        }
    }

    fn actor() -> Actor {
        Actor {
            operator: "op".into(),
            station: "st".into(),
        }
    }

    #[test]
    fn nothing_to_revoke_and_a_current_crl_need_no_ca() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        setup(&mut reg, "D1", "HW-1", &key);
        let out = revoke(
            &mut reg,
            &[request("D1")],
            &to(),
            &actor(),
            |_: &Store| -> std::result::Result<CaSigner, CallerError> {
                panic!("the CA must not be unlocked")
            },
            &NoProgress,
        )
        .unwrap();
        let RevokeOutcome::NothingToDo(untouched) = out else {
            panic!("{out:?}")
        };
        assert_eq!(untouched.len(), 1);
        assert_eq!(untouched[0].serial, "D1");
        assert_eq!(
            untouched[0].already[0].result,
            RevocationResult::AlreadyRevoked
        );
    }

    #[test]
    fn a_stale_crl_needs_the_ca_and_a_refused_unlock_changes_nothing() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        setup(&mut reg, "D1", "HW-1", &key);
        let tx = reg.write().unwrap();
        rr::mark_crl_stale(&tx).unwrap();
        tx.commit().unwrap();
        let events = reg.test_i64("SELECT COUNT(*) FROM events");
        let err = revoke(
            &mut reg,
            &[request("D1")],
            &to(),
            &actor(),
            |_: &Store| Err(CallerError("no passphrase".into())),
            &NoProgress,
        )
        .unwrap_err();
        assert_eq!(err, CallerError("no passphrase".into()));
        assert!(rr::crl_stale(reg.reader()).unwrap());
        assert_eq!(reg.test_i64("SELECT COUNT(*) FROM events"), events);
    }
}
