//! What an interrupted `identity batch` left behind, found when the same command runs
//! again. Chunks commit before their keys are written, so a kill leaves at most one
//! chunk recorded but undelivered: those certificates' keys died with the process.
//! The re-run skips what was recorded *and* delivered, revokes and re-issues what was
//! recorded but not delivered, and keeps the bundle consistent (torn or stale lines
//! dropped). Anything it cannot explain it refuses, naming the command that will.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::identity::BatchOutput;
use crate::error::{Error, Result};
use crate::store::{certs, devices, CertRecord, CertStatus, DeviceStatus, KeySource, Reader};

/// One recorded device whose key never reached the outputs.
#[derive(Debug)]
pub struct Undelivered {
    pub device: crate::store::Device,
    /// The certificate to revoke; `None` when an earlier resume revoked it already.
    pub cert: Option<CertRecord>,
}

/// What to do with an existing bundle file.
pub enum BundlePlan {
    /// No bundle asked for, or none there yet: create it as a fresh batch does.
    Fresh,
    /// The bundle is consistent: append to it.
    Append,
    /// Rewrite it with these lines (header first; empty: header only), dropping a torn
    /// last line and lines whose certificates are being replaced.
    Rewrite(Vec<Zeroizing<Vec<u8>>>),
}

pub struct Leftover {
    /// Recorded and present in every requested output: nothing to do.
    pub delivered: HashSet<String>,
    /// Recorded, key lost: revoke (superseded) and issue again.
    pub undelivered: Vec<Undelivered>,
    pub bundle: BundlePlan,
    /// Stale files of undelivered devices in `--out` to remove before re-issuing.
    pub stale_files: Vec<std::path::PathBuf>,
}

impl Leftover {
    pub fn is_resume(&self) -> bool {
        !self.delivered.is_empty() || !self.undelivered.is_empty()
    }
}

/// The batch being run, as far as recognising its own leftovers needs.
pub struct BatchId<'a> {
    pub profile: &'a str,
    pub ca_id: i64,
    pub ca_subject: &'a str,
    pub label: Option<&'a str>,
}

#[derive(Deserialize)]
struct Header {
    cradle_bundle: u32,
    profile: String,
    ca: String,
}

#[derive(Deserialize)]
struct Line {
    serial: String,
    fingerprint: String,
}

/// A bundle's lines: header, then (serial, fingerprint, raw line) per device; `torn`
/// when the last line was cut short by a kill.
struct Bundle {
    header: Option<Zeroizing<Vec<u8>>>,
    lines: Vec<(String, String, Zeroizing<Vec<u8>>)>,
    torn: bool,
}

fn read_bundle(path: &Path, id: &BatchId<'_>) -> Result<Bundle> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = std::io::BufReader::new(f);
    let mut out = Bundle {
        header: None,
        lines: Vec::new(),
        torn: false,
    };
    let mut n = 0usize;
    loop {
        let mut buf = Zeroizing::new(Vec::new());
        let got = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if got == 0 {
            break;
        }
        n += 1;
        let complete = buf.last() == Some(&b'\n');
        if n == 1 {
            match serde_json::from_slice::<Header>(&buf) {
                Ok(h) if complete && h.cradle_bundle == 1 => {
                    if h.profile != id.profile || h.ca != id.ca_subject {
                        return Err(Error::conflict(format!(
                            "{} is the bundle of another batch (profile {}, CA {}); not overwriting",
                            path.display(),
                            h.profile,
                            h.ca
                        )));
                    }
                    out.header = Some(buf);
                }
                // A header cut short: the batch died before its first chunk.
                _ if !complete => out.torn = true,
                _ => {
                    return Err(Error::conflict(format!(
                        "{} exists and is not a cradle bundle; not overwriting",
                        path.display()
                    )))
                }
            }
            continue;
        }
        match serde_json::from_slice::<Line>(&buf) {
            Ok(l) if complete => out.lines.push((l.serial, l.fingerprint, buf)),
            _ if !complete => out.torn = true,
            _ => {
                return Err(Error::input_at(
                    path.display().to_string(),
                    n,
                    "not a bundle line; the bundle was changed by something other than cradle",
                ))
            }
        }
    }
    Ok(out)
}

/// Whether `pem_path` holds (first) the certificate with `fingerprint`.
fn pem_has(pem_path: &Path, fingerprint: &str) -> bool {
    let Ok(text) = std::fs::read(pem_path) else {
        return false;
    };
    crate::pki::cert::read_certs(&text, "certificate file")
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .is_some_and(|der| crate::pki::cert::sha256_hex(&der) == fingerprint)
}

fn belongs_to_batch(
    db: &Reader,
    d: &crate::store::Device,
    id: &BatchId<'_>,
) -> Result<std::result::Result<Option<CertRecord>, String>> {
    if d.batch.as_deref() != id.label {
        return Ok(Err(format!(
            "it belongs to batch {}",
            d.batch.as_deref().unwrap_or("(none)")
        )));
    }
    if d.status != DeviceStatus::Registered {
        return Ok(Err(format!("it is {}", d.status)));
    }
    let all = certs::certs_for_device(db, d.id)?;
    let ours = |c: &CertRecord| {
        c.key_source == KeySource::Host.as_str()
            && c.profile == id.profile
            && c.ca_id == Some(id.ca_id)
    };
    if !all.is_empty()
        && all
            .iter()
            .all(|c| c.status == CertStatus::Revoked && ours(c))
    {
        // An earlier resume revoked the undelivered certificate and died before
        // issuing the new one.
        return Ok(Ok(None));
    }
    let live: Vec<CertRecord> = all
        .into_iter()
        .filter(|c| c.status != CertStatus::Revoked)
        .collect();
    match live.as_slice() {
        [c] if c.status == CertStatus::Active && ours(c) => Ok(Ok(Some(c.clone()))),
        [] => Ok(Err("it has no certificate".into())),
        _ => Ok(Err(
            "its certificates were not made by this batch's profile and CA".into(),
        )),
    }
}

/// Finds what an earlier run of this batch left, or `None` when there is nothing
/// (the common case: no serial recorded, no bundle file).
pub fn assess(
    db: &Reader,
    id: &BatchId<'_>,
    serials: &[String],
    out: &BatchOutput,
) -> Result<Option<Leftover>> {
    let bundle_path = out.bundle.as_deref().filter(|p| p.exists());
    let any_recorded = devices::first_existing_serial(db, serials)?.is_some();
    if !any_recorded && bundle_path.is_none() {
        return Ok(None);
    }
    let bundle = match bundle_path {
        Some(p) => Some(read_bundle(p, id)?),
        None => None,
    };
    let in_bundle: HashMap<&str, &str> = bundle
        .iter()
        .flat_map(|b| b.lines.iter())
        .map(|(s, fp, _)| (s.as_str(), fp.as_str()))
        .collect();

    let mut delivered = HashSet::new();
    let mut undelivered = Vec::new();
    let mut stale_files = Vec::new();
    let mut recorded_fp: HashMap<String, String> = HashMap::new();
    if any_recorded {
        for s in serials {
            let Some(d) = devices::device_by_serial(db, s)? else {
                continue;
            };
            let cert = match belongs_to_batch(db, &d, id)? {
                Ok(c) => c,
                Err(why) => {
                    return Err(Error::conflict(format!(
                        "device '{s}' already exists in the registry and is not a leftover of this batch ({why}); a batch only creates new devices: use `identity issue` to re-issue"
                    )))
                }
            };
            let Some(cert) = cert else {
                undelivered.push(Undelivered {
                    device: d,
                    cert: None,
                });
                continue;
            };
            let bundle_ok = match (&out.bundle, &bundle) {
                (None, _) => true,
                (Some(_), Some(_)) => in_bundle.get(s.as_str()) == Some(&cert.fingerprint.as_str()),
                (Some(_), None) => false,
            };
            let dir_ok = match &out.dir {
                None => true,
                Some(dir) => {
                    let (k, c) = super::identity::file_names(dir, s);
                    let has_pem = pem_has(&c, &cert.fingerprint);
                    if k.exists() && has_pem {
                        true
                    } else {
                        if has_pem {
                            stale_files.push(c);
                        } else if k.exists() || c.exists() {
                            return Err(Error::conflict(format!(
                                "{} exists but does not hold the certificate the registry records for '{s}'; move it away and re-run",
                                if c.exists() { c.display() } else { k.display() }
                            )));
                        }
                        false
                    }
                }
            };
            recorded_fp.insert(s.clone(), cert.fingerprint.clone());
            if bundle_ok && dir_ok {
                delivered.insert(s.clone());
            } else {
                undelivered.push(Undelivered {
                    device: d,
                    cert: Some(cert),
                });
            }
        }
        // A kill leaves at most one chunk recorded but undelivered; more than that is
        // not this batch's leftover (another --out or --bundle than the first run's).
        if undelivered.len() > super::identity::CHUNK {
            return Err(Error::conflict(format!(
                "{} devices of this batch (first '{}') are recorded but not in the given outputs; a killed batch leaves at most {}: re-run with the --bundle/--out of the first run, or `cradle identity reconcile` those outputs",
                undelivered.len(),
                undelivered[0].device.serial,
                super::identity::CHUNK
            )));
        }
        if out.bundle.is_some() && bundle.is_none() && out.dir.is_none() && !undelivered.is_empty()
        {
            let n = undelivered.len();
            return Err(Error::conflict(format!(
                "{n} device(s) of this batch (first '{}') are already recorded, but the bundle {} does not exist: re-run with the --bundle of the interrupted run, or `cradle identity reconcile` it first",
                undelivered[0].device.serial,
                out.bundle.as_deref().unwrap_or(Path::new("")).display()
            )));
        }
    }

    let bundle_plan = match bundle {
        None => BundlePlan::Fresh,
        Some(b) => {
            let replaced: HashSet<&str> = undelivered
                .iter()
                .map(|u| u.device.serial.as_str())
                .collect();
            let mut keep = Vec::with_capacity(b.lines.len() + 1);
            let mut dropped = b.torn || b.header.is_none();
            for (s, fp, raw) in b.lines {
                match recorded_fp.get(&s) {
                    Some(rec) if *rec == fp && !replaced.contains(s.as_str()) => keep.push(raw),
                    // A line for a certificate about to be revoked and replaced.
                    Some(_) if replaced.contains(s.as_str()) => dropped = true,
                    _ => {
                        let recorded = certs::cert_by_fingerprint(db, &fp)?;
                        match recorded {
                            // Recorded (e.g. a serial outside this run's list): keep.
                            Some(_) => keep.push(raw),
                            None => {
                                return Err(Error::conflict(format!(
                                    "the bundle holds a certificate for '{s}' that the registry does not record: run `cradle identity reconcile --bundle FILE` first"
                                )))
                            }
                        }
                    }
                }
            }
            if dropped {
                let mut lines = Vec::with_capacity(keep.len() + 1);
                if let Some(h) = b.header {
                    lines.push(h);
                }
                lines.extend(keep);
                BundlePlan::Rewrite(lines)
            } else {
                BundlePlan::Append
            }
        }
    };
    Ok(Some(Leftover {
        delivered,
        undelivered,
        bundle: bundle_plan,
        stale_files,
    }))
}
