//! `cradle renew`: successor certificates for devices already in service.
//!
//! A successor certifies the same public key as the certificate it supersedes (the
//! registry holds every device's certificate, so its key; the CA never needs the
//! device's private key), with the subject and validity its profile gives today. It is
//! recorded in `renewals` beside the old one, which stays valid until its own expiry
//! unless `--revoke-old` revokes it (superseded, CRL republished). Delivered as files or
//! a bundle here; onto a device over its port in [`port`].

pub mod port;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rcgen::SubjectPublicKeyInfo;
use serde::Serialize;
use time::OffsetDateTime;

use crate::app::identity::{check_serial, insert_issued, vars_for};
use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::outfile::StagedFiles;
use crate::pki::cert::{parse_der, to_pem};
use crate::pki::crl::Reason;
use crate::pki::issue::{issue, Issued};
use crate::pki::profile::Profile;
use crate::pki::signer::CaSigner;
use crate::store::certs::{CertRecord, KeySource};
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::renewals::{self, Delivery, Target};
use crate::store::retire::ActiveCert;
use crate::store::{now_rfc3339, Reader, Store, Tx};

/// What renewal signs with and records as.
pub struct RenewContext<'a> {
    pub signer: &'a CaSigner,
    pub org: &'a str,
    pub actor: &'a Actor,
    /// `--profile`: every successor gets this profile; otherwise each gets the profile
    /// of the certificate it supersedes.
    pub profile: Option<&'a Profile>,
    /// HOME/templates, where the old certificates' profiles are looked up.
    pub templates: Option<PathBuf>,
}

/// Which devices to renew.
#[derive(Debug, Clone)]
pub enum Selection {
    Serials(Vec<String>),
    /// `--from FILE.csv`: serials with the line each is on, so a refusal names it.
    FromCsv(PathBuf, Vec<(String, usize)>),
    /// Devices whose current certificate expires within DAYS (or has expired).
    ExpiringWithin(u32),
}

/// The devices a run renews, and those it leaves for a port run to finish.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// `--expiring-within`: devices with a pending successor (issued for a port, not
    /// confirmed on the device), left alone: `renew --port` finishes them.
    pub skipped_pending: Vec<String>,
    /// The registry's `data_version` the plan was read at (see `commit_chunk`).
    pub data_version: i64,
}

const DAY: i64 = 86_400;

/// A device may get a successor unless it left service.
pub(crate) fn check_renewable(d: &Device) -> Result<()> {
    if matches!(
        d.status,
        DeviceStatus::Retired | DeviceStatus::Decommissioned
    ) {
        return Err(Error::conflict(format!(
            "device '{}' is {}; a device out of service gets no successor certificate",
            d.serial, d.status
        )));
    }
    Ok(())
}

/// Resolves the selection against the registry; every refusal comes before anything
/// is written (unknown serial exit 3, retired device / nothing to renew / pending exit 7).
pub fn plan(db: &Reader, sel: &Selection, now: i64) -> Result<Plan> {
    match sel {
        Selection::ExpiringWithin(days) => {
            let data_version = renewals::data_version(db)?;
            let (targets, skipped_pending) = renewals::expiring(db, now + i64::from(*days) * DAY)?;
            Ok(Plan {
                targets,
                skipped_pending,
                data_version,
            })
        }
        Selection::Serials(serials) => {
            let named: Vec<(String, usize)> = serials.iter().map(|s| (s.clone(), 0)).collect();
            plan_named(db, None, &named)
        }
        Selection::FromCsv(path, named) => plan_named(db, Some(path), named),
    }
}

/// Where a named serial came from, for its error line (`FILE:LINE: `).
fn at(from: Option<&PathBuf>, line: usize, e: Error) -> Error {
    let Some(path) = from else { return e };
    let msg = format!("{}:{line}: {e}", path.display());
    match e.exit_code() {
        crate::error::exit::CONFLICT => Error::conflict(msg),
        crate::error::exit::INPUT => Error::input(msg),
        _ => e,
    }
}

fn plan_named(db: &Reader, from: Option<&PathBuf>, named: &[(String, usize)]) -> Result<Plan> {
    let data_version = renewals::data_version(db)?;
    let mut seen = HashSet::with_capacity(named.len());
    let mut targets = Vec::with_capacity(named.len());
    for (s, line) in named {
        let mut one = || -> Result<Target> {
            check_serial(s)?;
            if !seen.insert(s.as_str()) {
                return Err(Error::conflict(format!(
                    "serial '{s}' is named twice; a device gets one successor per run"
                )));
            }
            let device = devices::require_device(db, s)?;
            check_renewable(&device)?;
            let old = renewals::current_cert(db, device.id)?.ok_or_else(|| {
                    Error::conflict(format!(
                        "device '{s}' has no active certificate to renew; give it an identity with `cradle provision` or `cradle identity issue`"
                    ))
                })?;
            if let Some(p) = renewals::pending_for_device(db, device.id)? {
                return Err(Error::conflict(format!(
                        "device '{s}' has a pending successor {} (issued {} for its port, not confirmed on the device); finish it with `cradle renew {s} --port PORT`",
                        p.new_cert.serial_hex, p.issued_at
                    )));
            }
            Ok(Target { device, old })
        };
        targets.push(one().map_err(|e| at(from, *line, e))?);
    }
    Ok(Plan {
        targets,
        skipped_pending: Vec::new(),
        data_version,
    })
}

/// Where successors go when not onto a device.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// One `SERIAL.pem` (certificate + chain) per device.
    pub dir: Option<PathBuf>,
    /// One JSON Lines file (mode 0600, refused if it exists).
    pub bundle: Option<PathBuf>,
}

/// One renewed device.
#[derive(Debug, Clone, Serialize)]
pub struct Renewed {
    pub serial: String,
    /// The superseded certificate.
    pub old_cert_serial: String,
    pub cert_serial: String,
    pub fingerprint: String,
    pub profile: String,
    pub not_after: i64,
    pub old_revoked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub renewed: usize,
    pub revoked_old: usize,
    pub skipped_pending: Vec<String>,
    pub dir: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    /// The CRL published for `--revoke-old`.
    pub crl: Option<PathBuf>,
    pub seconds: f64,
    pub per_second: f64,
    pub renewals: Vec<Renewed>,
}

/// Devices per registry transaction.
const CHUNK: usize = 1024;

/// The profiles the successors are issued with, by name, loaded once (a profile that
/// is gone since is an error before anything is written).
pub(crate) fn profiles_for<'a>(
    ctx: &RenewContext<'_>,
    olds: impl Iterator<Item = &'a CertRecord>,
) -> Result<HashMap<String, Profile>> {
    let mut out = HashMap::new();
    if let Some(p) = ctx.profile {
        out.insert(p.name.clone(), p.clone());
        return Ok(out);
    }
    for c in olds {
        if !out.contains_key(&c.profile) {
            let p = Profile::load(&c.profile, ctx.templates.as_deref()).map_err(|e| {
                Error::input(format!(
                    "certificate {} was issued with profile '{}', which cannot be loaded now ({e}); give --profile",
                    c.serial_hex, c.profile
                ))
            })?;
            out.insert(c.profile.clone(), p);
        }
    }
    Ok(out)
}

pub(crate) fn profile_of<'p>(
    ctx: &RenewContext<'_>,
    profiles: &'p HashMap<String, Profile>,
    old: &CertRecord,
) -> &'p Profile {
    let name = ctx.profile.map(|p| p.name.as_str()).unwrap_or(&old.profile);
    &profiles[name]
}

/// The SubjectPublicKeyInfo (DER) a stored certificate certifies.
pub fn spki_of(der: &[u8]) -> Result<Vec<u8>> {
    Ok(parse_der(der)?.public_key().raw.to_vec())
}

pub(crate) fn key_source(old: &CertRecord) -> KeySource {
    if old.key_source == KeySource::Device.as_str() {
        KeySource::Device
    } else {
        KeySource::Host
    }
}

/// Issues the successor for `old` (same key unless `spki` names another).
pub(crate) fn issue_successor(
    ctx: &RenewContext<'_>,
    profile: &Profile,
    device: &Device,
    spki_der: &[u8],
) -> Result<Issued> {
    let spki = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| Error::input(format!("public key of device '{}': {e}", device.serial)))?;
    let vars = vars_for(device, ctx.org, &ctx.signer.name, &profile.name);
    issue(ctx.signer, profile, &vars, &spki, OffsetDateTime::now_utc())
}

/// Records a successor: the certificate (`status` active, or unused while pending on a
/// port), its renewal row and a `cert.renewed` event. Returns the certificate row id.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_successor(
    tx: &Tx<'_>,
    ctx: &RenewContext<'_>,
    profile: &str,
    device: &Device,
    old: &CertRecord,
    issued: &Issued,
    source: KeySource,
    delivery: Delivery,
    rekey: bool,
    now: &str,
) -> Result<i64> {
    let id = insert_issued(tx, ctx.signer, profile, device.id, issued, source, now)?;
    if delivery == Delivery::Port {
        crate::store::certs::set_cert_status(
            tx,
            id,
            crate::store::certs::CertStatus::Unused,
            None,
            now,
        )?;
    }
    renewals::insert(tx, device.id, old.id, id, rekey, delivery, now)?;
    #[derive(Serialize)]
    struct Details<'a> {
        cert_serial: &'a str,
        fingerprint: &'a str,
        supersedes: &'a str,
        profile: &'a str,
        delivery: &'a str,
        rekey: bool,
        not_after: i64,
    }
    let details = serde_json::to_string(&Details {
        cert_serial: &issued.info.serial_hex,
        fingerprint: &issued.info.fingerprint,
        supersedes: &old.serial_hex,
        profile,
        delivery: delivery.as_str(),
        rekey,
        not_after: issued.info.not_after,
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    tx.event_json(
        EventKind::CertRenewed,
        Some(device.id),
        ctx.actor,
        &details,
        now,
    )?;
    Ok(id)
}

/// Revokes the superseded certificate (reason superseded) and marks the CRL stale.
pub(crate) fn revoke_superseded(
    tx: &Tx<'_>,
    ctx: &RenewContext<'_>,
    device: &Device,
    old: &CertRecord,
    successor: &str,
    now: &str,
) -> Result<bool> {
    let r = crate::app::retire::revoke::revoke_in_tx(
        tx,
        device,
        &[ActiveCert {
            id: old.id,
            serial_hex: old.serial_hex.clone(),
            fingerprint: old.fingerprint.clone(),
        }],
        Reason::Superseded,
        ctx.actor,
        now,
        &serde_json::json!({ "superseded_by": successor }),
    )?;
    let done = r.iter().any(|x| x.revoked_at.is_some());
    if done {
        crate::store::retire::mark_crl_stale(tx)?;
    }
    Ok(done)
}

/// One successor made off the registry thread.
struct Made {
    idx: usize,
    issued: Issued,
    cert_pem: String,
    bundle_line: Option<Vec<u8>>,
}

#[derive(Serialize)]
struct BundleHeader<'a> {
    cradle_bundle: u32,
    /// Successor certificates for keys the devices already hold: no key_pem lines.
    renewal: bool,
    ca: &'a str,
    chain_pem: &'a str,
}

#[derive(Serialize)]
struct BundleLine<'a> {
    serial: &'a str,
    fingerprint: &'a str,
    cert_serial: &'a str,
    supersedes: &'a str,
    profile: &'a str,
    cert_pem: &'a str,
}

fn file_name(dir: &Path, serial: &str) -> PathBuf {
    dir.join(format!("{serial}.pem"))
}

/// Renews every planned device into files and/or a bundle: successors signed on all
/// cores, recorded one transaction per chunk before their certificates are written.
pub fn batch(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    plan: &Plan,
    out: &Output,
    revoke_old: bool,
    crl: &crate::app::retire::crl::Publication,
    progress: &dyn Fn(u64),
) -> Result<Summary> {
    let started = std::time::Instant::now();
    if out.dir.is_none() && out.bundle.is_none() {
        return Err(Error::usage(
            "renewal needs somewhere to put the certificates: --out DIR, --bundle FILE or --port PORT",
        ));
    }
    let targets = &plan.targets;
    let profiles = profiles_for(ctx, targets.iter().map(|t| &t.old))?;
    // A subject the profile cannot carry fails here, before a chunk is committed.
    for t in targets.iter().take(1) {
        let p = profile_of(ctx, &profiles, &t.old);
        p.render(
            &vars_for(&t.device, ctx.org, &ctx.signer.name, &p.name),
            OffsetDateTime::now_utc(),
        )?;
    }
    if let Some(b) = &out.bundle {
        if b.exists() {
            return Err(Error::conflict(format!(
                "{} already exists; not overwriting",
                b.display()
            )));
        }
    }
    if let Some(dir) = &out.dir {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for t in targets {
            let p = file_name(dir, &t.device.serial);
            if p.exists() {
                return Err(Error::conflict(format!(
                    "{} already exists; not overwriting",
                    p.display()
                )));
            }
        }
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        drop(probe);
    }
    let mut bundle = match &out.bundle {
        Some(p) => Some(open_bundle(p, ctx)?),
        None => None,
    };
    let want_bundle = bundle.is_some();
    let mut renewed = Vec::with_capacity(targets.len());
    let mut revoked = 0usize;
    reg.set_autocheckpoint((32 << 20) / crate::store::PAGE_SIZE as u32)?;
    // Successors for chunk N+1 are signed on the pool while chunk N is committed here.
    let result = std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Made>>>(1);
        let profiles = &profiles;
        scope.spawn(move || {
            for (c, chunk) in targets.chunks(CHUNK).enumerate() {
                let made = chunk
                    .par_iter()
                    .enumerate()
                    .map(|(i, t)| make_one(ctx, profiles, c * CHUNK + i, t, want_bundle))
                    .collect::<Result<Vec<Made>>>();
                let failed = made.is_err();
                if tx.send(made).is_err() || failed {
                    break;
                }
            }
        });
        for made in rx {
            let made = made?;
            revoked += commit_chunk(
                reg,
                ctx,
                profiles,
                plan.data_version,
                targets,
                &made,
                out,
                bundle.as_mut(),
                revoke_old,
                &mut renewed,
            )?;
            progress(renewed.len() as u64);
        }
        Ok(())
    });
    if let Some(f) = bundle.as_mut() {
        f.sync_all().ok();
    }
    let _ = reg.set_autocheckpoint(1000);
    let _ = reg.restore_checks();
    if result.is_err() && renewed.is_empty() {
        if let Some(p) = &out.bundle {
            let _ = fs::remove_file(p);
        }
    }
    result?;
    let crl_path = if revoked > 0 {
        crate::app::retire::crl::publish_if_stale(reg, Some(ctx.signer), crl, ctx.actor)
            .map_err(|e| Error::CrlNotPublished(Box::new(e)))?
            .map(|c| c.published.clone())
    } else {
        None
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(Summary {
        renewed: renewed.len(),
        revoked_old: revoked,
        skipped_pending: plan.skipped_pending.clone(),
        dir: out.dir.clone(),
        bundle: out.bundle.clone(),
        crl: crl_path,
        seconds: secs,
        per_second: if secs > 0.0 {
            renewed.len() as f64 / secs
        } else {
            0.0
        },
        renewals: renewed,
    })
}

fn open_bundle(path: &Path, ctx: &RenewContext<'_>) -> Result<File> {
    let mut f = crate::outfile::create_new(path, 0o600)?;
    let mut head = serde_json::to_vec(&BundleHeader {
        cradle_bundle: 1,
        renewal: true,
        ca: &ctx.signer.subject,
        chain_pem: &ctx.signer.chain_pem,
    })
    .map_err(|e| Error::Internal(e.to_string()))?;
    head.push(b'\n');
    f.write_all(&head).map_err(|e| Error::io(path, e))?;
    Ok(f)
}

fn make_one(
    ctx: &RenewContext<'_>,
    profiles: &HashMap<String, Profile>,
    idx: usize,
    t: &Target,
    want_bundle: bool,
) -> Result<Made> {
    let profile = profile_of(ctx, profiles, &t.old);
    let spki = spki_of(&t.old.der).map_err(|e| {
        Error::input(format!(
            "stored certificate {} of device '{}': {e}",
            t.old.serial_hex, t.device.serial
        ))
    })?;
    let issued = issue_successor(ctx, profile, &t.device, &spki)?;
    let cert_pem = to_pem("CERTIFICATE", &issued.der);
    let bundle_line = if want_bundle {
        let mut buf = serde_json::to_vec(&BundleLine {
            serial: &t.device.serial,
            fingerprint: &issued.info.fingerprint,
            cert_serial: &issued.info.serial_hex,
            supersedes: &t.old.serial_hex,
            profile: &profile.name,
            cert_pem: &cert_pem,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        buf.push(b'\n');
        Some(buf)
    } else {
        None
    };
    Ok(Made {
        idx,
        issued,
        cert_pem,
        bundle_line,
    })
}

/// Records one chunk, commits, then writes its files and bundle lines (a kill between
/// the two leaves successors recorded but not handed out, never the opposite).
#[allow(clippy::too_many_arguments)]
fn commit_chunk(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    profiles: &HashMap<String, Profile>,
    planned_at: i64,
    targets: &[Target],
    made: &[Made],
    out: &Output,
    bundle: Option<&mut File>,
    revoke_old: bool,
    renewed: &mut Vec<Renewed>,
) -> Result<usize> {
    let now = now_rfc3339();
    let delivery = if out.bundle.is_some() {
        Delivery::Bundle
    } else {
        Delivery::Files
    };
    let tx = reg.write_trusted()?;
    // Under the write lock: unless another station committed since the plan was read,
    // nothing planned can have changed (this run's own commits do not count).
    let recheck = renewals::data_version(&tx)? != planned_at;
    let mut revoked = 0;
    let mut rows = Vec::with_capacity(made.len());
    for m in made {
        let t = &targets[m.idx];
        // Re-checked under the write lock when another station may have retired the
        // device or revoked the certificate since the plan was made.
        if recheck {
            still_current(&tx, t)?;
        }
        let profile = &profile_of(ctx, profiles, &t.old).name;
        record_successor(
            &tx,
            ctx,
            profile,
            &t.device,
            &t.old,
            &m.issued,
            key_source(&t.old),
            delivery,
            false,
            &now,
        )?;
        let old_revoked = revoke_old
            && revoke_superseded(&tx, ctx, &t.device, &t.old, &m.issued.info.serial_hex, &now)?;
        revoked += usize::from(old_revoked);
        rows.push(Renewed {
            serial: t.device.serial.clone(),
            old_cert_serial: t.old.serial_hex.clone(),
            cert_serial: m.issued.info.serial_hex.clone(),
            fingerprint: m.issued.info.fingerprint.clone(),
            profile: profile.clone(),
            not_after: m.issued.info.not_after,
            old_revoked,
        });
    }
    tx.commit()?;
    let mut staged = StagedFiles::new();
    let mut bundle = bundle;
    let start = bundle.as_mut().and_then(|f| f.stream_position().ok());
    let written = write_outputs(
        targets,
        made,
        out,
        bundle.as_deref_mut(),
        &ctx.signer.chain_pem,
        &mut staged,
    );
    match written {
        Ok(()) => staged.keep(),
        Err(e) => {
            staged.discard();
            // No torn line left behind: the bundle ends at the last whole chunk.
            if let (Some(f), Some(at)) = (bundle, start) {
                let _ = f.set_len(at);
                let _ = f.seek(SeekFrom::Start(at));
            }
            return Err(match (e, rows.first(), rows.last()) {
                (Error::Io { path, source }, Some(a), Some(b)) => Error::Io {
                    path,
                    source: std::io::Error::new(
                        source.kind(),
                        format!(
                            "{source} (successors of {}..{} are recorded but were not written: renew those devices again)",
                            a.serial, b.serial
                        ),
                    ),
                },
                (e, _, _) => e,
            });
        }
    }
    renewed.extend(rows);
    Ok(revoked)
}

fn still_current(tx: &Tx<'_>, t: &Target) -> Result<()> {
    if renewals::still_renewable(tx, t.old.id)? {
        Ok(())
    } else {
        Err(Error::conflict(format!(
            "device '{}' or its certificate {} changed while renewing (retired or revoked meanwhile); nothing recorded for it",
            t.device.serial, t.old.serial_hex
        )))
    }
}

fn write_outputs(
    targets: &[Target],
    made: &[Made],
    out: &Output,
    bundle: Option<&mut File>,
    chain_pem: &str,
    staged: &mut StagedFiles,
) -> Result<()> {
    if let (Some(f), Some(path)) = (bundle, &out.bundle) {
        let mut buf = Vec::new();
        for l in made.iter().filter_map(|m| m.bundle_line.as_ref()) {
            buf.extend_from_slice(l);
        }
        f.write_all(&buf)
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(path, e))?;
    }
    if let Some(dir) = &out.dir {
        for m in made {
            let p = file_name(dir, &targets[m.idx].device.serial);
            let pem = format!("{}{}", m.cert_pem, chain_pem);
            staged.write_new_unsynced(&p, pem.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}
