//! `identity reconcile`: holds a bundle or key directory against the registry. Every
//! certificate our CAs signed must be recorded, or it can never be revoked: such a
//! certificate (left by an older cradle that wrote before it committed, or by a WAL
//! lost after a crash) is imported as `unused` for its serial, so that `cradle revoke`
//! reaches it. Certificates the registry records are reported; foreign ones too.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::pki::cert::{info_of_parsed, read_certs};
use crate::pki::trust::ChainEnd;
use crate::store::certs::{self, CertStatus, KeySource, NewCert};
use crate::store::devices::{self, NewDevice};
use crate::store::{now_rfc3339, Reader, Store, Tx};

/// Where the entries come from.
#[derive(Debug, Clone)]
pub enum Source {
    Bundle(PathBuf),
    Dir(PathBuf),
}

/// One certificate found in the source.
struct Entry {
    serial: String,
    der: Vec<u8>,
    at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub serial: String,
    pub cert_serial: String,
    pub fingerprint: String,
    /// `recorded`, `imported` (or `would-import` on a dry run), `foreign`, `mismatch`.
    pub result: &'static str,
    pub detail: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub entries: usize,
    pub recorded: usize,
    pub imported: usize,
    pub foreign: usize,
    pub mismatched: usize,
    /// Lines or files that hold no readable certificate (a torn last line, say).
    pub unreadable: usize,
    pub dry_run: bool,
    pub findings: Vec<Finding>,
}

#[derive(Deserialize)]
struct Line {
    serial: String,
    cert_pem: String,
}

fn read_source(src: &Source, unreadable: &mut usize) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    match src {
        Source::Bundle(path) => {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = zeroize::Zeroizing::new(line.map_err(|e| Error::io(path, e))?);
                if i == 0 {
                    continue; // the header
                }
                let at = format!("{}:{}", path.display(), i + 1);
                match serde_json::from_str::<Line>(&line)
                    .ok()
                    .and_then(|l| Some((l.serial, read_certs(l.cert_pem.as_bytes(), &at).ok()?)))
                {
                    Some((serial, mut ders)) if !ders.is_empty() => out.push(Entry {
                        serial,
                        der: ders.swap_remove(0),
                        at,
                    }),
                    _ => *unreadable += 1,
                }
            }
        }
        Source::Dir(dir) => {
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            names.sort();
            for p in names {
                let serial = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let at = p.display().to_string();
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                match read_certs(&bytes, &at) {
                    Ok(mut ders) if !ders.is_empty() => out.push(Entry {
                        serial,
                        der: ders.swap_remove(0),
                        at,
                    }),
                    _ => *unreadable += 1,
                }
            }
        }
    }
    Ok(out)
}

/// Reconciles `src` against the registry; with `dry_run` nothing is written.
pub fn reconcile(reg: &mut Store, src: &Source, actor: &Actor, dry_run: bool) -> Result<Summary> {
    let mut s = Summary {
        dry_run,
        ..Default::default()
    };
    let entries = read_source(src, &mut s.unreadable)?;
    s.entries = entries.len();
    let trust = crate::app::ca::trust_store(reg.reader())?;
    if dry_run {
        check_all(reg.reader(), None, &trust, entries, actor, &mut s)?;
    } else {
        let tx = reg.write()?;
        check_all(&tx, Some(&tx), &trust, entries, actor, &mut s)?;
        tx.commit()?;
    }
    Ok(s)
}

fn check_all(
    db: &Reader,
    tx: Option<&Tx<'_>>,
    trust: &crate::pki::trust::TrustStore,
    entries: Vec<Entry>,
    actor: &Actor,
    s: &mut Summary,
) -> Result<()> {
    let now = now_rfc3339();
    let mut seen = HashSet::new();
    for e in entries {
        let (_, cert) = x509_parser::parse_x509_certificate(&e.der)
            .map_err(|err| Error::input(format!("{}: certificate does not parse: {err}", e.at)))?;
        let info = info_of_parsed(&cert, &e.der);
        if !seen.insert(info.fingerprint.clone()) {
            continue;
        }
        let finding = |result: &'static str, detail: String| Finding {
            serial: e.serial.clone(),
            cert_serial: info.serial_hex.clone(),
            fingerprint: info.fingerprint.clone(),
            result,
            detail,
            at: e.at.clone(),
        };
        if let Some(rec) = certs::cert_by_fingerprint(db, &info.fingerprint)? {
            let owner = devices::device_by_id(db, rec.device_id)?.map(|d| d.serial);
            if owner.as_deref() == Some(e.serial.as_str()) {
                s.recorded += 1;
                s.findings
                    .push(finding("recorded", rec.status.as_str().to_string()));
            } else {
                s.mismatched += 1;
                s.findings.push(finding(
                    "mismatch",
                    format!(
                        "recorded for device {}, found under {}",
                        owner.unwrap_or_default(),
                        e.serial
                    ),
                ));
            }
            continue;
        }
        let chain = trust.chain(&cert);
        let issuer = match (&chain.end, chain.cas.first()) {
            (ChainEnd::Root, Some(ca)) => *ca,
            _ => {
                s.foreign += 1;
                s.findings.push(finding(
                    "foreign",
                    format!(
                        "not signed by a CA of this registry (issuer {})",
                        info.issuer
                    ),
                ));
                continue;
            }
        };
        if crate::app::identity::check_serial(&e.serial).is_err() {
            s.mismatched += 1;
            s.findings.push(finding(
                "mismatch",
                "the entry's serial is not a valid device serial; not imported".into(),
            ));
            continue;
        }
        s.imported += 1;
        let Some(tx) = tx else {
            s.findings.push(finding(
                "would-import",
                format!("signed by {}, unknown to the registry", issuer.name),
            ));
            continue;
        };
        let device_id = match devices::device_by_serial(tx, &e.serial)? {
            Some(d) => d.id,
            None => devices::insert_device(
                tx,
                &NewDevice {
                    serial: e.serial.clone(),
                    ..Default::default()
                },
                &now,
            )?,
        };
        let id = certs::insert_cert(
            tx,
            &NewCert {
                device_id,
                ca_id: Some(issuer.id),
                serial_hex: &info.serial_hex,
                fingerprint: &info.fingerprint,
                pubkey_sha256: &info.pubkey_sha256,
                subject: &info.subject,
                profile: "reconciled",
                key_source: KeySource::Host,
                not_before: info.not_before,
                not_after: info.not_after,
                der: &e.der,
                verified_mac: None,
            },
            &now,
        )?;
        certs::set_cert_status(tx, id, CertStatus::Unused, None, &now)?;
        tx.event(
            EventKind::IdentityReconciled,
            Some(device_id),
            actor,
            serde_json::json!({
                "cert_serial": info.serial_hex,
                "fingerprint": info.fingerprint,
                "found_in": e.at,
            }),
            &now,
        )?;
        s.findings.push(finding(
            "imported",
            format!("signed by {}; recorded as unused: revoke it", issuer.name),
        ));
    }
    Ok(())
}

/// The path a source names, for messages.
pub fn source_path(src: &Source) -> &Path {
    match src {
        Source::Bundle(p) | Source::Dir(p) => p,
    }
}
