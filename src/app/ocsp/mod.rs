//! OCSP workflows: the delegated signer (its files beside the CA's), pre-signed
//! responses for every certificate (RFC 5019, cfssl's model), their refresh after
//! revocations, and the answers of a responder (`responder`, served by `http`).
//!
//! A pre-signed directory holds `<serial hex>.der` (one DER OCSPResponse per
//! certificate, the serial as the registry spells it: lower-case hex of the
//! certificate's serial octets) and `index.json` (issuer, hashes, times).

pub mod http;
pub mod responder;

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::outfile;
use crate::pki::cert::{info_of, parse_der, read_certs, to_pem, CertInfo};
use crate::pki::keys;
use crate::pki::ocsp::{self, IssuerHashes, ResponseSigner, Status, Validity};
use crate::pki::signer::{check_key_matches, CaKey, CaSigner};
use crate::store::ocsp::{self as so, CertState};
use crate::store::{fmt_time, Reader, Store};

/// The delegated OCSP signing certificate and its encrypted key, in the CA directory.
pub const SIGNER_CERT: &str = "ocsp-signer.pem";
pub const SIGNER_KEY: &str = "ocsp-signer.key";
/// The index of a pre-signed directory.
pub const INDEX: &str = "index.json";
const INDEX_FORMAT: &str = "cradle-ocsp-1";

/// A delegated OCSP responder, unlocked: its certificate and key.
pub struct Delegate {
    pub key: CaKey,
    pub cert_der: Vec<u8>,
    pub info: CertInfo,
}

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegate")
            .field("subject", &self.info.subject)
            .finish_non_exhaustive()
    }
}

/// Issues a new delegated OCSP signing certificate (replacing an older one): key
/// encrypted with the CA passphrase, both files under `ca_dir`, an
/// `ocsp.signer_issued` event, in one transaction.
pub fn issue_signer(
    reg: &mut Store,
    ca_dir: &Path,
    signer: &CaSigner,
    org: &str,
    days: u32,
    passphrase: &[u8],
    actor: &Actor,
) -> Result<CertInfo> {
    let now = OffsetDateTime::now_utc();
    let (der, key) = ocsp::issue_delegate(signer.issuer(), &signer.name, org, days, now)?;
    let key_pem = keys::encrypt_pkcs8_pem(&Zeroizing::new(key.serialize_der()), passphrase)?;
    let info = info_of(&der)?;
    let now_s = fmt_time(now);
    let tx = reg.write()?;
    tx.event(
        EventKind::OcspSignerIssued,
        None,
        actor,
        serde_json::json!({
            "subject": info.subject,
            "issuer": signer.subject,
            "serial": info.serial_hex,
            "fingerprint": info.fingerprint,
            "not_after": fmt_time(
                OffsetDateTime::from_unix_timestamp(info.not_after).unwrap_or(now)
            ),
        }),
        &now_s,
    )?;
    // Key first: a crash in between leaves a key that does not match the old
    // certificate, which loading refuses with a clear line (issue a new one).
    outfile::replace_own_file(&ca_dir.join(SIGNER_KEY), key_pem.as_bytes(), 0o600)?;
    outfile::replace_own_file(
        &ca_dir.join(SIGNER_CERT),
        to_pem("CERTIFICATE", &der).as_bytes(),
        0o644,
    )?;
    tx.commit()?;
    Ok(info)
}

/// Unlocks the delegated signer under `ca_dir`: issued by `ca`, valid now, and its
/// key (encrypted with the CA passphrase) matching its certificate.
pub fn load_signer(ca_dir: &Path, ca: &CaSigner, passphrase: &[u8]) -> Result<Delegate> {
    let cert_path = ca_dir.join(SIGNER_CERT);
    let pem = match fs::read(&cert_path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "no OCSP signing certificate ({}): run `cradle ca ocsp-signer` first",
                cert_path.display()
            )))
        }
        Err(e) => return Err(Error::io(&cert_path, e)),
    };
    let der = read_certs(&pem, "OCSP signing certificate")?.remove(0);
    let cert = parse_der(&der)?;
    let ca_cert = parse_der(&ca.cert_der)?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err(Error::crypto(format!(
            "{}: not issued by the issuing CA '{}': run `cradle ca ocsp-signer`",
            cert_path.display(),
            ca.subject
        )));
    }
    let info = info_of(&der)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if now >= info.not_after {
        return Err(Error::crypto(format!(
            "the OCSP signing certificate expired on {}: run `cradle ca ocsp-signer`",
            OffsetDateTime::from_unix_timestamp(info.not_after)
                .map(fmt_time)
                .unwrap_or_default()
        )));
    }
    let key_path = ca_dir.join(SIGNER_KEY);
    let key_pem =
        Zeroizing::new(fs::read_to_string(&key_path).map_err(|e| Error::io(&key_path, e))?);
    let pkcs8 = keys::read_private_key_pem(&key_pem, Some(passphrase), "the OCSP signing key")?;
    let key = keys::key_pair_from_pkcs8(&pkcs8, "the OCSP signing key")?;
    check_key_matches(&der, &key).map_err(|_| {
        Error::crypto(format!(
            "{} does not belong to {}: run `cradle ca ocsp-signer`",
            key_path.display(),
            cert_path.display()
        ))
    })?;
    Ok(Delegate {
        key: CaKey::File(key),
        cert_der: der,
        info,
    })
}

/// Who signs: the issuing CA, or its delegate.
pub fn response_signer<'a>(
    ca: &'a CaSigner,
    delegate: Option<&'a Delegate>,
) -> Result<ResponseSigner<'a>> {
    match delegate {
        Some(d) => ResponseSigner::delegated(&d.key, &d.cert_der),
        None => ResponseSigner::ca(ca.issuer().key()),
    }
}

/// What OCSP says about a certificate the registry holds.
pub fn status_of(state: &CertState) -> Status {
    match &state.revoked {
        None => Status::Good,
        Some(r) => Status::Revoked {
            // No readable time: the epoch would claim too much, now too little;
            // the CRL lists such entries at its thisUpdate, so do the same.
            at: r
                .at
                .map_or_else(OffsetDateTime::now_utc, |t| t.as_offset())
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            reason: r.reason.as_deref().and_then(|s| s.parse().ok()),
        },
    }
}

/// Responses hold until the next CRL update: the newest CRL's nextUpdate, or (with no
/// CRL, or one already past) `days` from now, as the next CRL would.
pub fn validity(db: &Reader, ca_id: i64, days: u32) -> Result<Validity> {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    let next = so::crl_next_update(db, ca_id)?
        .filter(|n| *n > now.unix_timestamp() + 60)
        .and_then(|n| OffsetDateTime::from_unix_timestamp(n).ok())
        .unwrap_or(now + time::Duration::days(days.max(1) as i64));
    Ok(Validity {
        produced_at: now,
        next_update: next,
    })
}

/// `index.json` of a pre-signed directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub issuer: String,
    pub issuer_name_sha1: String,
    pub issuer_key_sha1: String,
    /// When the statuses were read; refreshes re-sign what was revoked since.
    pub produced_at: String,
    /// The earliest nextUpdate in the set: run `cradle ca ocsp` again before it.
    pub next_update: String,
    pub responses: usize,
    pub good: usize,
    pub revoked: usize,
    pub signed_by: String,
    pub files: String,
}

impl Index {
    pub fn read(dir: &Path) -> Result<Index> {
        let p = dir.join(INDEX);
        let text = fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let idx: Index = serde_json::from_str(&text)
            .map_err(|e| Error::input(format!("{}: not a cradle OCSP index ({e})", p.display())))?;
        if idx.format != INDEX_FORMAT {
            return Err(Error::input(format!(
                "{}: format '{}' (want {INDEX_FORMAT})",
                p.display(),
                idx.format
            )));
        }
        Ok(idx)
    }

    /// The issuer hashes the set answers for (SHA-1: what RFC 5019 clients send).
    pub fn hashes(&self) -> Result<([u8; 20], [u8; 20])> {
        let h = |s: &str| -> Result<[u8; 20]> {
            hex::decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::input(format!("{INDEX}: malformed issuer hash '{s}'")))
        };
        Ok((h(&self.issuer_name_sha1)?, h(&self.issuer_key_sha1)?))
    }
}

/// The file of the response for `serial_hex` (already lower-case hex: no path tricks).
pub fn response_path(dir: &Path, serial_hex: &str) -> PathBuf {
    dir.join(format!("{serial_hex}.der"))
}

/// Signs and writes one response per certificate in `states`, on all cores. Each
/// file is replaced by rename (never half-written); no fsync: the set is
/// regenerated from the registry at any time.
fn write_responses(
    dir: &Path,
    signer: &ResponseSigner<'_>,
    issuer: &IssuerHashes,
    states: &[CertState],
    when: Validity,
) -> Result<()> {
    states.par_iter().try_for_each(|s| {
        let id = issuer.cert_id(&s.serial_hex)?;
        let der = ocsp::sign(signer, vec![(id, status_of(s))], when, None)?;
        let path = response_path(dir, &s.serial_hex);
        let tmp = dir.join(format!(".{}.tmp", s.serial_hex));
        let _ = fs::remove_file(&tmp);
        outfile::write_new_file(&tmp, &der, 0o644)?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    })
}

/// What `presign` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Presigned {
    pub dir: PathBuf,
    #[serde(flatten)]
    pub index: Index,
}

/// Pre-signs a response for every certificate the issuing CA `ca` issued into `dir`
/// (created if missing), signed by `delegate` or the CA, valid until the next CRL
/// update; `index.json` last, so a set with an index is complete.
pub fn presign(
    db: &Reader,
    ca: &CaSigner,
    delegate: Option<&Delegate>,
    dir: &Path,
    days: u32,
) -> Result<Presigned> {
    let signer = response_signer(ca, delegate)?;
    let issuer = IssuerHashes::of(&ca.cert_der)?;
    // Read the time before the statuses: a refresh re-signs what was revoked since.
    let when = validity(db, ca.id, days)?;
    let states = so::cert_states(db, ca.id)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_responses(dir, &signer, &issuer, &states, when)?;
    let revoked = states.iter().filter(|s| s.revoked.is_some()).count();
    let index = Index {
        format: INDEX_FORMAT.into(),
        issuer: ca.subject.clone(),
        issuer_name_sha1: hex::encode(issuer.name_sha1),
        issuer_key_sha1: hex::encode(issuer.key_sha1),
        produced_at: fmt_time(when.produced_at),
        next_update: fmt_time(when.next_update),
        responses: states.len(),
        good: states.len() - revoked,
        revoked,
        signed_by: match delegate {
            Some(d) => d.info.subject.clone(),
            None => ca.subject.clone(),
        },
        files: "<serial hex>.der".into(),
    };
    write_index(dir, &index)?;
    Ok(Presigned {
        dir: dir.to_path_buf(),
        index,
    })
}

fn write_index(dir: &Path, index: &Index) -> Result<()> {
    let mut text = serde_json::to_string_pretty(index)
        .map_err(|e| Error::Internal(format!("OCSP index as JSON: {e}")))?;
    text.push('\n');
    outfile::replace_own_file(&dir.join(INDEX), text.as_bytes(), 0o644)
}

/// After a CRL issue: signs, with the issuing CA, the responses of certificates
/// issued or revoked since the set in `dir` was produced (a set without an index is made
/// whole). Returns how many responses were signed.
pub fn refresh(db: &Reader, ca: &CaSigner, dir: &Path, days: u32) -> Result<usize> {
    let mut index = match Index::read(dir) {
        Ok(i) => i,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return presign(db, ca, None, dir, days).map(|p| p.index.responses)
        }
        Err(e) => return Err(e),
    };
    let signer = ResponseSigner::ca(ca.issuer().key())?;
    let issuer = IssuerHashes::of(&ca.cert_der)?;
    if index.issuer_key_sha1 != hex::encode(issuer.key_sha1) {
        return Err(Error::conflict(format!(
            "{} holds responses of another CA ('{}')",
            dir.display(),
            index.issuer
        )));
    }
    let when = validity(db, ca.id, days)?;
    let states = so::changed_since(db, ca.id, &index.produced_at)?;
    write_responses(dir, &signer, &issuer, &states, when)?;
    index.produced_at = fmt_time(when.produced_at);
    let (all, revoked) = so::counts(db, ca.id)?;
    (index.responses, index.good, index.revoked) = (all, all - revoked, revoked);
    write_index(dir, &index)?;
    Ok(states.len())
}
