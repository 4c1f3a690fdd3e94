//! Identity workflows: issue a host-generated identity (single or batch), sign a
//! device CSR. Each records the device, the certificate and an event; private keys
//! go only to the output files (mode 0600), never to the registry or logs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rcgen::SubjectPublicKeyInfo;
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::batch_resume;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::outfile::StagedFiles;
use crate::pki::cert::to_pem;
use crate::pki::issue::{issue, Issued};
use crate::pki::profile::{Profile, Vars, VARIABLES};
use crate::pki::signer::CaSigner;
use crate::pki::{csr, keys};
use crate::store::certs::{self, KeySource, NewCert};
use crate::store::devices::{self, Device, NewDevice};
use crate::store::{now_rfc3339, Reader, Store, Tx};

/// Everything needed to issue: the unlocked CA, the profile, org name.
pub struct IssueContext<'a> {
    pub signer: &'a CaSigner,
    pub profile: &'a Profile,
    pub org: &'a str,
    pub actor: &'a Actor,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssuedIdentity {
    pub serial: String,
    pub device_created: bool,
    pub profile: String,
    pub cert_serial: String,
    pub fingerprint: String,
    pub subject: String,
    pub not_after: i64,
    pub key_source: KeySource,
    pub files: Vec<PathBuf>,
}

fn device_template(serial: &str) -> Device {
    let now = now_rfc3339();
    Device {
        id: 0,
        serial: serial.to_string(),
        hardware_id: None,
        model: None,
        hw_rev: None,
        batch: None,
        site: None,
        location: None,
        owner: None,
        mac: None,
        imei: None,
        status: devices::DeviceStatus::Registered,
        notes: None,
        purchase_date: None,
        warranty_until: None,
        cost: None,
        currency: None,
        supplier: None,
        criticality: None,
        end_of_life: None,
        attributes: Default::default(),
        created_at: now.clone(),
        updated_at: now,
    }
}

/// Profile variables for a device: its registry fields, `attr.*`, org and CA name.
pub fn vars_for(device: &Device, org: &str, ca_name: &str, profile: &str) -> Vars {
    let mut v = Vars::new();
    for f in VARIABLES {
        if let Some(val) = device.field(f) {
            v.insert((*f).to_string(), val);
        }
    }
    // From the attribute map itself: `Device::field` answers a column first, so
    // `{attr.model}` would otherwise render the `model` column.
    for (k, val) in &device.attributes {
        let text = match val {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !text.is_empty() {
            v.insert(format!("attr.{k}"), text);
        }
    }
    // RFC 9039 `urn:dev:mac:` wants the bare lower-case hex digits.
    if let Some(mac) = v.get("mac") {
        let hex: String = mac
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !hex.is_empty() {
            v.insert("mac_hex".into(), hex);
        }
    }
    if !org.is_empty() {
        v.insert("org".into(), org.into());
    }
    v.insert("ca_name".into(), ca_name.into());
    v.insert("profile".into(), profile.into());
    v
}

/// `identity verify`: the certificate's chain and validity against the registered
/// CAs, and what the registry records about it.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub subject: String,
    pub serial_hex: String,
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Subjects from the certificate's issuer up to the root.
    pub chain: Vec<String>,
    pub chain_ok: bool,
    pub time_ok: bool,
    pub revoked: bool,
    pub revocation_reason: Option<String>,
    /// The registry's status for this certificate (active/revoked/unused), if recorded.
    pub registry_status: Option<String>,
    pub device: Option<String>,
    pub problems: Vec<String>,
}

/// Verifies `der` at `now` (Unix seconds) against the registry's CAs and records.
pub fn verify(db: &Reader, der: &[u8], now: i64) -> Result<Verification> {
    let v = crate::app::ca::trust_store(db)?.verify(der, now)?;
    let mut problems = v.problems;
    let rec = certs::cert_by_fingerprint(db, &v.fingerprint)?;
    let (revoked, reason, status, device) = match &rec {
        Some(r) => {
            let dev = devices::device_by_id(db, r.device_id)?.map(|d| d.serial);
            (
                r.status == certs::CertStatus::Revoked,
                r.revocation_reason.clone(),
                Some(r.status.as_str().to_string()),
                dev,
            )
        }
        None => (false, None, None, None),
    };
    if revoked {
        problems.push(format!(
            "certificate is revoked ({})",
            reason.as_deref().unwrap_or("unspecified")
        ));
    }
    Ok(Verification {
        ok: v.chain_ok && v.time_ok && !revoked && problems.is_empty(),
        subject: v.subject,
        serial_hex: v.serial_hex,
        fingerprint: v.fingerprint,
        not_before: v.not_before,
        not_after: v.not_after,
        chain: v.chain,
        chain_ok: v.chain_ok,
        time_ok: v.time_ok,
        revoked,
        revocation_reason: reason,
        registry_status: status,
        device,
        problems,
    })
}

/// Checks a device serial: printable, no path separators (it names files), bounded.
pub fn check_serial(serial: &str) -> Result<()> {
    if serial.is_empty() || serial.len() > 128 {
        return Err(Error::input(format!(
            "serial '{}' must be 1-128 characters",
            serial.chars().take(40).collect::<String>()
        )));
    }
    if let Some(c) = serial
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(Error::input(format!(
            "serial '{serial}' contains '{}'; use letters, digits, '-', '_', '.', ':'",
            c.escape_default()
        )));
    }
    if serial.starts_with('.') {
        return Err(Error::input(format!(
            "serial '{serial}' must not start with '.'"
        )));
    }
    Ok(())
}

/// Records a certificate cradle issued for `device_id`, with its audit verification
/// mark; returns the certificate row id.
pub fn insert_issued(
    tx: &Tx<'_>,
    signer: &CaSigner,
    profile: &str,
    device_id: i64,
    issued: &Issued,
    source: KeySource,
    now: &str,
) -> Result<i64> {
    let mark = signer.mark(&issued.info.fingerprint);
    certs::insert_cert(
        tx,
        &NewCert {
            device_id,
            ca_id: Some(signer.id),
            serial_hex: &issued.info.serial_hex,
            fingerprint: &issued.info.fingerprint,
            pubkey_sha256: &issued.info.pubkey_sha256,
            subject: &issued.info.subject,
            profile,
            key_source: source,
            not_before: issued.info.not_before,
            not_after: issued.info.not_after,
            der: &issued.der,
            verified_mac: Some(&mark),
        },
        now,
    )
}

/// A retired or decommissioned device must not get a new identity.
fn check_issuable(device: Option<&Device>) -> Result<()> {
    match device {
        Some(d)
            if matches!(
                d.status,
                devices::DeviceStatus::Retired | devices::DeviceStatus::Decommissioned
            ) =>
        {
            Err(Error::conflict(format!(
                "device '{}' is {}; it cannot get a new identity",
                d.serial, d.status
            )))
        }
        _ => Ok(()),
    }
}

/// Output files for one device under `dir`.
pub(crate) fn file_names(dir: &Path, serial: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{serial}.key")),
        dir.join(format!("{serial}.pem")),
    )
}

/// A certificate to record: what was issued, where its key came from, and details
/// for its `identity.issued` event.
struct Recorded<'a> {
    issued: &'a Issued,
    source: KeySource,
    extra: serde_json::Value,
}

fn record(
    tx: &Tx<'_>,
    ctx: &IssueContext<'_>,
    existing: Option<&Device>,
    serial: &str,
    r: Recorded<'_>,
    now: &str,
) -> Result<(i64, bool)> {
    let Recorded {
        issued,
        source,
        extra,
    } = r;
    let (device_id, created) = match existing {
        Some(d) => (d.id, false),
        None => (
            devices::insert_device(
                tx,
                &NewDevice {
                    serial: serial.to_string(),
                    ..Default::default()
                },
                now,
            )?,
            true,
        ),
    };
    insert_issued(
        tx,
        ctx.signer,
        &ctx.profile.name,
        device_id,
        issued,
        source,
        now,
    )?;
    let mut details = serde_json::json!({
        "profile": ctx.profile.name,
        "cert_serial": issued.info.serial_hex,
        "fingerprint": issued.info.fingerprint,
        "key_source": source.as_str(),
        "device_created": created,
    });
    if let (Some(d), serde_json::Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    tx.event(
        EventKind::IdentityIssued,
        Some(device_id),
        ctx.actor,
        details,
        now,
    )?;
    Ok((device_id, created))
}

/// A file written before the registry commit and removed if the commit fails.
struct OutFile {
    path: PathBuf,
    contents: Zeroizing<Vec<u8>>,
    mode: u32,
}

/// The common path of `issue_one` and `sign_csr`: check the device may get an identity,
/// issue for `public_key`, record device + certificate + event, write the files (never
/// overwriting), then commit; a failed commit removes the files again.
fn issue_recorded(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    serial: &str,
    public_key: &impl rcgen::PublicKeyData,
    source: KeySource,
    extra: serde_json::Value,
    files: impl FnOnce(&str) -> Vec<OutFile>,
) -> Result<(IssuedIdentity, String)> {
    let existing = devices::device_by_serial(reg.reader(), serial)?;
    check_issuable(existing.as_ref())?;
    let device = existing.unwrap_or_else(|| device_template(serial));
    let vars = vars_for(&device, ctx.org, &ctx.signer.name, &ctx.profile.name);
    let issued = issue(
        ctx.signer,
        ctx.profile,
        &vars,
        public_key,
        OffsetDateTime::now_utc(),
    )?;
    let cert_pem = format!(
        "{}{}",
        to_pem("CERTIFICATE", &issued.der),
        ctx.signer.chain_pem
    );
    let files = files(&cert_pem);

    let now = now_rfc3339();
    let tx = reg.write()?;
    // Re-read inside the write lock: another station may have changed it meanwhile.
    let existing = devices::device_by_serial(&tx, serial)?;
    check_issuable(existing.as_ref())?;
    let (_, created) = record(
        &tx,
        ctx,
        existing.as_ref(),
        serial,
        Recorded {
            issued: &issued,
            source,
            extra,
        },
        &now,
    )?;
    let mut staged = StagedFiles::new();
    for f in &files {
        staged.write_new(&f.path, &f.contents, f.mode)?;
    }
    tx.commit()?;
    staged.keep();
    Ok((
        IssuedIdentity {
            serial: serial.to_string(),
            device_created: created,
            profile: ctx.profile.name.clone(),
            cert_serial: issued.info.serial_hex,
            fingerprint: issued.info.fingerprint,
            subject: issued.info.subject,
            not_after: issued.info.not_after,
            key_source: source,
            files: files.into_iter().map(|f| f.path).collect(),
        },
        cert_pem,
    ))
}

/// Issues one host-generated identity for `serial`, writing `SERIAL.key` (0600) and
/// `SERIAL.pem` (certificate + chain) into `out_dir`.
pub fn issue_one(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    serial: &str,
    out_dir: &Path,
) -> Result<IssuedIdentity> {
    check_serial(serial)?;
    let (key_path, cert_path) = file_names(out_dir, serial);
    for p in [&key_path, &cert_path] {
        if p.exists() {
            return Err(Error::conflict(format!(
                "{} already exists; not overwriting",
                p.display()
            )));
        }
    }
    let key = keys::generate()?;
    let key_pem = Zeroizing::new(key.serialize_pem().into_bytes());
    let (id, _) = issue_recorded(
        reg,
        ctx,
        serial,
        &key,
        KeySource::Host,
        serde_json::json!({}),
        |cert_pem| {
            vec![
                OutFile {
                    path: key_path,
                    contents: key_pem,
                    mode: 0o600,
                },
                OutFile {
                    path: cert_path,
                    contents: Zeroizing::new(cert_pem.as_bytes().to_vec()),
                    mode: 0o644,
                },
            ]
        },
    )?;
    Ok(id)
}

/// Signs a device's CSR: checks signature and key type, takes only the public key,
/// fills the subject from the profile and registry. Writes `SERIAL.pem` if `out` is set.
pub fn sign_csr(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    serial: &str,
    csr_bytes: &[u8],
    out: Option<&Path>,
) -> Result<(IssuedIdentity, String)> {
    check_serial(serial)?;
    let der = csr::csr_der_from_bytes(csr_bytes)?;
    let checked = csr::check_csr(&der)?;
    let spki = SubjectPublicKeyInfo::from_der(&checked.spki_der)
        .map_err(|e| Error::input(format!("CSR public key: {e}")))?;
    issue_recorded(
        reg,
        ctx,
        serial,
        &spki,
        KeySource::Device,
        serde_json::json!({"csr_subject": checked.requested_subject}),
        |cert_pem| {
            out.map(|p| OutFile {
                path: p.to_path_buf(),
                contents: Zeroizing::new(cert_pem.as_bytes().to_vec()),
                mode: 0o644,
            })
            .into_iter()
            .collect()
        },
    )
}

/// Expands a pattern like `ACME-{seq:06}` for `count` devices starting at `start`.
pub fn expand_pattern(pattern: &str, start: u64, count: u64) -> Result<Vec<String>> {
    let open = pattern.find("{seq").ok_or_else(|| {
        Error::input(format!(
            "serial pattern '{pattern}' has no {{seq}} or {{seq:0N}} placeholder"
        ))
    })?;
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| Error::input(format!("serial pattern '{pattern}': unclosed '{{'")))?;
    let spec = &pattern[open + 4..close];
    let width = match spec.strip_prefix(':') {
        None if spec.is_empty() => 0,
        Some(w) => w
            .trim_start_matches('0')
            .parse::<usize>()
            .ok()
            .filter(|w| *w <= 20)
            .ok_or_else(|| {
                Error::input(format!(
                    "serial pattern '{pattern}': bad width '{w}' (use {{seq:06}})"
                ))
            })?,
        None => {
            return Err(Error::input(format!(
                "serial pattern '{pattern}': use {{seq}} or {{seq:06}}"
            )))
        }
    };
    let (pre, post) = (&pattern[..open], &pattern[close + 1..]);
    if post.contains("{seq") {
        return Err(Error::input("serial pattern has more than one {seq}"));
    }
    let out: Vec<String> = (start..start.saturating_add(count))
        .map(|n| format!("{pre}{n:0width$}{post}"))
        .collect();
    if let Some(first) = out.first() {
        check_serial(first)?;
    }
    Ok(out)
}

/// Reads serials from a CSV with a `serial` column (header required).
pub fn serials_from_csv(path: &Path) -> Result<Vec<String>> {
    Ok(serial_lines_from_csv(path)?
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

/// `serials_from_csv` with the line each serial is on (for errors that name it).
pub fn serial_lines_from_csv(path: &Path) -> Result<Vec<(String, usize)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let headers = rdr
        .headers()
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?
        .clone();
    let col = headers
        .iter()
        .position(|h| {
            h.trim_start_matches('\u{feff}')
                .trim()
                .eq_ignore_ascii_case("serial")
        })
        .ok_or_else(|| Error::input_at(path.display(), 1, "no 'serial' column in the header"))?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            Error::input_at(path.display(), line, e.to_string())
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let s = rec.get(col).unwrap_or("").trim().to_string();
        check_serial(&s).map_err(|e| Error::input_at(path.display(), line, e.to_string()))?;
        out.push((s, line));
    }
    Ok(out)
}

/// Where a batch writes its keys and certificates.
#[derive(Debug, Clone, Default)]
pub struct BatchOutput {
    /// One `SERIAL.key` + `SERIAL.pem` per device.
    pub dir: Option<PathBuf>,
    /// One JSON Lines file (0600) with every device's key and certificate.
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    /// Set when this run finished an interrupted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumed>,
    pub issued: usize,
    pub profile: String,
    pub first: Option<String>,
    pub last: Option<String>,
    pub bundle: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub seconds: f64,
    pub per_second: f64,
}

/// How a re-run finished an interrupted batch.
#[derive(Debug, Clone, Serialize)]
pub struct Resumed {
    /// Devices recorded and delivered by the earlier run: skipped.
    pub already_delivered: usize,
    /// Devices recorded by the earlier run whose keys never reached the outputs: their
    /// certificates were revoked (superseded) and new identities issued.
    pub reissued: Vec<String>,
    /// The CRL published for those revocations.
    pub crl: Option<PathBuf>,
}

/// Devices per registry transaction.
pub const CHUNK: usize = 1024;

/// One device's identity, fully serialised off the registry thread.
struct Made {
    serial: String,
    issued: Issued,
    key_pem: Zeroizing<String>,
    /// Leaf certificate PEM (without the chain).
    cert_pem: String,
    /// The bundle's JSON line (with newline), when a bundle is written.
    bundle_line: Option<Zeroizing<Vec<u8>>>,
    /// The `identity.issued` event details, as JSON text.
    details: String,
}

/// Issues identities for every serial: keys and certificates made in parallel on all
/// cores, recorded one transaction per chunk. Fails before writing anything if a
/// serial repeats or already has a device row.
pub fn batch(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    serials: &[String],
    out: &BatchOutput,
    crl: &crate::app::retire::crl::Publication,
    batch_label: Option<&str>,
    progress: &dyn Fn(u64),
) -> Result<BatchSummary> {
    let started = std::time::Instant::now();
    if out.dir.is_none() && out.bundle.is_none() {
        return Err(Error::input(
            "a batch needs somewhere to put the keys: --out DIR and/or --bundle FILE",
        ));
    }
    let mut seen = HashSet::with_capacity(serials.len());
    for s in serials {
        check_serial(s)?;
        if !seen.insert(s.as_str()) {
            return Err(Error::conflict(format!(
                "serial '{s}' appears twice in the batch"
            )));
        }
    }
    // A subject the profile cannot carry (e.g. a CN over RFC 5280's 64 characters)
    // fails here, before a chunk is committed, rather than halfway through.
    if let Some(longest) = serials.iter().max_by_key(|s| s.chars().count()) {
        let mut d = device_template(longest);
        d.batch = batch_label.map(str::to_string);
        let vars = vars_for(&d, ctx.org, &ctx.signer.name, &ctx.profile.name);
        ctx.profile.render(&vars, OffsetDateTime::now_utc())?;
    }
    // A re-run of a killed batch finishes it: what is recorded and delivered is
    // skipped, what is recorded but was never delivered is revoked and issued again.
    let leftover = batch_resume::assess(
        reg.reader(),
        &batch_resume::BatchId {
            profile: &ctx.profile.name,
            ca_id: ctx.signer.id,
            ca_subject: &ctx.signer.subject,
            label: batch_label,
        },
        serials,
        out,
    )?;
    let all_serials = serials;
    let todo: Vec<String>;
    let mut reissue: HashMap<String, i64> = HashMap::new();
    let mut resumed = None;
    let serials: &[String] = match &leftover {
        Some(l) if l.is_resume() => {
            todo = all_serials
                .iter()
                .filter(|s| !l.delivered.contains(s.as_str()))
                .cloned()
                .collect();
            reissue = l
                .undelivered
                .iter()
                .map(|u| (u.device.serial.clone(), u.device.id))
                .collect();
            resumed = Some(Resumed {
                already_delivered: l.delivered.len(),
                reissued: l
                    .undelivered
                    .iter()
                    .map(|u| u.device.serial.clone())
                    .collect(),
                crl: None,
            });
            &todo
        }
        _ => all_serials,
    };
    if let Some(dir) = &out.dir {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // Every name up front: chunks commit before their files are written, so a clash
        // found mid-batch would leave recorded devices without keys.
        let stale: HashSet<&Path> = leftover
            .iter()
            .flat_map(|l| l.stale_files.iter().map(|p| p.as_path()))
            .collect();
        for s in serials {
            let (k, c) = file_names(dir, s);
            if k.exists() || (c.exists() && !stale.contains(c.as_path())) {
                return Err(Error::conflict(format!("{} already exists", k.display())));
            }
        }
        // Probe writability now rather than after the first chunk is made.
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        drop(probe);
    }
    if let Some(l) = &leftover {
        if !l.undelivered.is_empty() {
            retire_undelivered(reg, ctx, &l.undelivered)?;
        }
        for f in &l.stale_files {
            fs::remove_file(f).map_err(|e| Error::io(f, e))?;
        }
    }
    let plan = leftover.map(|l| l.bundle);
    let fresh_bundle = match (&out.bundle, plan) {
        (Some(p), Some(batch_resume::BundlePlan::Append)) => {
            bundle_for_append(p)?;
            false
        }
        (Some(p), Some(batch_resume::BundlePlan::Rewrite(lines))) => {
            rewrite_bundle(p, &lines)?;
            lines.is_empty()
        }
        (Some(_), _) => true,
        (None, _) => false,
    };
    let mut bundle = match &out.bundle {
        Some(p) if fresh_bundle && !p.exists() => Some(open_bundle(p)?),
        Some(p) => Some(bundle_for_append(p)?),
        None => None,
    };
    let bundle_path = out.bundle.clone();
    if let (Some((f, len)), Some(p), true) = (bundle.as_mut(), &out.bundle, fresh_bundle) {
        let mut head = serde_json::to_vec(&BundleHeader {
            cradle_bundle: 1,
            profile: &ctx.profile.name,
            ca: &ctx.signer.subject,
            chain_pem: &ctx.signer.chain_pem,
        })
        .map_err(|e| Error::input(e.to_string()))?;
        head.push(b'\n');
        f.write_all(&head).map_err(|e| Error::io(p, e))?;
        *len = head.len() as u64;
    }
    let mut done = 0usize;
    let want_bundle = out.bundle.is_some();
    // Checkpoint the WAL less often while bulk-inserting, but bounded: 32 MiB (1024
    // pages of 32 KiB) keeps a lost or damaged -wal from taking more than ~20k devices'
    // worth of commits with it, and readers from walking a huge WAL; the cost is small
    // next to key generation. Restored below.
    reg.set_autocheckpoint((32 << 20) / crate::store::PAGE_SIZE as u32)?;
    // Keys and certificates for chunk N+1 are made on the worker pool while chunk N
    // is committed here: the registry thread is the bottleneck, so keep it busy.
    let result = std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Made>>>(1);
        scope.spawn(move || {
            for chunk in serials.chunks(CHUNK) {
                let made = chunk
                    .par_iter()
                    .map(|serial| make_one(ctx, serial, batch_label, want_bundle))
                    .collect::<Result<Vec<Made>>>();
                let failed = made.is_err();
                if tx.send(made).is_err() || failed {
                    break;
                }
            }
        });
        for made in rx {
            let made = made?;
            commit_chunk(reg, ctx, &made, out, bundle.as_mut(), batch_label, &reissue)?;
            done += made.len();
            progress(done as u64);
        }
        Ok(())
    });
    if let Some((f, _)) = bundle.as_mut() {
        f.sync_all().ok();
    }
    let _ = reg.set_autocheckpoint(1000);
    let _ = reg.restore_checks();
    // A bundle holding no committed device is not left behind.
    if result.is_err() && done == 0 && resumed.is_none() {
        if let Some(p) = &out.bundle {
            let _ = fs::remove_file(p);
        }
    }
    result?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(r) = resumed.as_mut() {
        r.crl = crate::app::retire::crl::publish_if_stale(reg, Some(ctx.signer), crl, ctx.actor)
            .map_err(|e| Error::CrlNotPublished(Box::new(e)))?
            .map(|c| c.published.clone());
    }
    Ok(BatchSummary {
        resumed,
        issued: done,
        profile: ctx.profile.name.clone(),
        first: serials.first().cloned(),
        last: serials.last().cloned(),
        bundle: bundle_path,
        dir: out.dir.clone(),
        seconds: secs,
        per_second: if secs > 0.0 { done as f64 / secs } else { 0.0 },
    })
}

/// Revokes the certificates an interrupted run recorded but never delivered (their
/// keys died with it), so that new ones can be issued to the same devices.
fn retire_undelivered(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    undelivered: &[batch_resume::Undelivered],
) -> Result<()> {
    let now = now_rfc3339();
    let tx = reg.write()?;
    let why = serde_json::json!({
        "why": "identity batch resumed: the key never left cradle"
    });
    let mut revoked = false;
    for u in undelivered {
        let Some(cert) = &u.cert else { continue };
        revoked = true;
        let c = crate::store::retire::ActiveCert {
            id: cert.id,
            serial_hex: cert.serial_hex.clone(),
            fingerprint: cert.fingerprint.clone(),
        };
        crate::app::retire::revoke::revoke_in_tx(
            &tx,
            &u.device,
            &[c],
            crate::pki::crl::Reason::Superseded,
            ctx.actor,
            &now,
            &why,
        )?;
    }
    if revoked {
        crate::store::retire::mark_crl_stale(&tx)?;
    }
    tx.commit()
}

/// Opens an existing bundle for appending (after checking it is private).
fn bundle_for_append(path: &Path) -> Result<(File, u64)> {
    use std::os::unix::fs::PermissionsExt;
    let f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::conflict(format!(
            "{} holds private keys but others may read it (mode {:04o}); chmod 600 it and re-run",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok((f, meta.len()))
}

/// Replaces the bundle with `lines` (atomically: a kill leaves the old or the new).
fn rewrite_bundle(path: &Path, lines: &[Zeroizing<Vec<u8>>]) -> Result<()> {
    let mut all = Zeroizing::new(Vec::new());
    for l in lines {
        all.extend_from_slice(l);
    }
    // Past the private-key guard: the bundle holds keys by design, and it was checked
    // to be this batch's own (its header names this profile and CA).
    crate::outfile::replace_own_file(path, &all, 0o600)
}

fn open_bundle(path: &Path) -> Result<(File, u64)> {
    Ok((crate::outfile::create_new(path, 0o600)?, 0))
}

#[derive(Serialize)]
struct BundleLine<'a> {
    serial: &'a str,
    fingerprint: &'a str,
    cert_serial: &'a str,
    key_pem: &'a str,
    cert_pem: &'a str,
}

/// The bundle's first line: what every device line shares.
#[derive(Serialize)]
struct BundleHeader<'a> {
    cradle_bundle: u32,
    profile: &'a str,
    ca: &'a str,
    chain_pem: &'a str,
}

/// Makes one device's key and certificate and serialises everything the registry
/// thread will need, so that it only inserts and writes.
fn make_one(
    ctx: &IssueContext<'_>,
    serial: &str,
    batch_label: Option<&str>,
    want_bundle: bool,
) -> Result<Made> {
    let mut d = device_template(serial);
    d.batch = batch_label.map(str::to_string);
    let vars = vars_for(&d, ctx.org, &ctx.signer.name, &ctx.profile.name);
    let key = keys::generate()?;
    let issued = issue(
        ctx.signer,
        ctx.profile,
        &vars,
        &key,
        OffsetDateTime::now_utc(),
    )?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    drop(key);
    let cert_pem = to_pem("CERTIFICATE", &issued.der);
    let bundle_line = if want_bundle {
        let mut buf = Zeroizing::new(Vec::with_capacity(2600));
        serde_json::to_writer(
            &mut *buf,
            &BundleLine {
                serial,
                fingerprint: &issued.info.fingerprint,
                cert_serial: &issued.info.serial_hex,
                key_pem: &key_pem,
                cert_pem: &cert_pem,
            },
        )
        .map_err(|e| Error::input(e.to_string()))?;
        buf.push(b'\n');
        Some(buf)
    } else {
        None
    };
    let details = serde_json::json!({
        "profile": ctx.profile.name,
        "cert_serial": issued.info.serial_hex,
        "fingerprint": issued.info.fingerprint,
        "key_source": KeySource::Host.as_str(),
        "device_created": true,
        "batch": batch_label,
    })
    .to_string();
    Ok(Made {
        serial: serial.to_string(),
        issued,
        key_pem,
        cert_pem,
        bundle_line,
        details,
    })
}

/// Writes one chunk's files and bundle lines, then commits its registry rows; if the
/// commit fails, the chunk's files are removed and the bundle truncated back.
fn commit_chunk(
    reg: &mut Store,
    ctx: &IssueContext<'_>,
    made: &[Made],
    out: &BatchOutput,
    bundle: Option<&mut (File, u64)>,
    batch_label: Option<&str>,
    reissue: &HashMap<String, i64>,
) -> Result<()> {
    let now = now_rfc3339();
    // Rows reference only the device inserted just before (or re-issued to) and the
    // signing CA.
    let tx = reg.write_trusted()?;
    for m in made {
        let device_id = match reissue.get(&m.serial) {
            Some(id) => *id,
            None => devices::insert_device(
                &tx,
                &NewDevice {
                    serial: m.serial.clone(),
                    batch: batch_label.map(str::to_string),
                    ..Default::default()
                },
                &now,
            )?,
        };
        insert_issued(
            &tx,
            ctx.signer,
            &ctx.profile.name,
            device_id,
            &m.issued,
            KeySource::Host,
            &now,
        )?;
        tx.event_json(
            EventKind::IdentityIssued,
            Some(device_id),
            ctx.actor,
            &m.details,
            &now,
        )?;
    }

    // Commit before any certificate leaves the process: a kill between the two must
    // never leave a bundle line or key file for a certificate the registry lacks.
    // The opposite loss (recorded, output not written) is visible in the registry
    // and revocable.
    tx.commit()?;
    let mut staged = StagedFiles::new();
    let mut bundle = bundle;
    let bundle_start = bundle.as_ref().map(|(_, len)| *len);
    let files = write_chunk_files(
        made,
        out,
        bundle.as_deref_mut(),
        &ctx.signer.chain_pem,
        &mut staged,
    );
    if files.is_ok() {
        staged.keep();
    } else {
        staged.discard();
        if let (Some((f, len)), Some(start)) = (bundle, bundle_start) {
            let _ = f.set_len(start);
            let _ = f.seek(SeekFrom::Start(start));
            *len = start;
        }
    }
    // Name what is recorded but undelivered, keeping the error's kind (and exit code).
    files.map_err(|e| match (e, made.first(), made.last()) {
        (Error::Io { path, source }, Some(a), Some(b)) => Error::Io {
            path,
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source} (devices {}..{} are recorded but their keys were not written: revoke and re-issue them)",
                    a.serial, b.serial
                ),
            ),
        },
        (e, _, _) => e,
    })
}

fn write_chunk_files(
    made: &[Made],
    out: &BatchOutput,
    bundle: Option<&mut (File, u64)>,
    chain_pem: &str,
    staged: &mut StagedFiles,
) -> Result<()> {
    if let Some((f, len)) = bundle {
        let total: usize = made
            .iter()
            .filter_map(|m| m.bundle_line.as_ref())
            .map(|l| l.len())
            .sum();
        let mut buf = Zeroizing::new(Vec::with_capacity(total));
        for line in made.iter().filter_map(|m| m.bundle_line.as_ref()) {
            buf.extend_from_slice(line);
        }
        let path = out.bundle.clone().unwrap_or_default();
        f.write_all(&buf)
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(path, e))?;
        *len += buf.len() as u64;
    }
    if let Some(dir) = &out.dir {
        for m in made {
            let (kp, cp) = file_names(dir, &m.serial);
            staged.write_new_unsynced(&kp, m.key_pem.as_bytes(), 0o600)?;
            let pem = format!("{}{}", m.cert_pem, chain_pem);
            staged.write_new_unsynced(&cp, pem.as_bytes(), 0o644)?;
        }
    }
    Ok(())
}
