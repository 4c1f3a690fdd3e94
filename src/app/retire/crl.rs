//! Publishing a CRL: build it (pure, in `pki::crl`), record it and write the file in
//! one transaction; and the rule every revocation follows (`publish_if_stale`).

use std::path::PathBuf;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::home::{Config, Home};
use crate::model::{Actor, EventKind};
use crate::outfile;
use crate::pki::cert::sha256_hex;
use crate::pki::crl::{build, encode_for, CrlIssued};
use crate::pki::signer::CaSigner;
use crate::store::retire::{self as rr, NewCrl};
use crate::store::{fmt_time, Reader, Store};

/// Where the CRL is published and how long each one is valid (`config.toml`).
#[derive(Debug, Clone)]
pub struct Publication {
    pub path: PathBuf,
    pub next_update_days: u32,
    /// Pre-signed OCSP responses refreshed with every CRL (`ocsp_dir`), if any.
    pub ocsp_dir: Option<PathBuf>,
}

impl Publication {
    /// The configured `crl_path` (relative to the home unless absolute) and validity.
    pub fn configured(home: &Home, config: &Config) -> Publication {
        Publication {
            path: home.root.join(&config.crl_path),
            next_update_days: config.crl_next_update_days,
            ocsp_dir: (!config.ocsp_dir.trim().is_empty())
                .then(|| home.root.join(config.ocsp_dir.trim())),
        }
    }
}

/// Whether the issuing CA has to be unlocked: something is about to be revoked, or
/// recorded revocations are not in the published CRL yet (see `publish_if_stale`).
pub fn signer_needed(conn: &Reader, revoking: bool) -> Result<bool> {
    Ok(revoking || rr::crl_stale(conn)?)
}

/// The rule after every revocation: a revocation marks the CRL stale in its own
/// transaction, and while it is stale a new CRL is issued before anything else
/// happens (a crash in between is repaired by the next run). `None` when the CRL
/// is current; an error when it is stale and no CA was unlocked.
pub fn publish_if_stale(
    reg: &mut Store,
    signer: Option<&CaSigner>,
    to: &Publication,
    actor: &Actor,
) -> Result<Option<CrlIssued>> {
    if !rr::crl_stale(reg.reader())? {
        return Ok(None);
    }
    let signer =
        signer.ok_or_else(|| Error::crypto("the CRL is stale but the CA was not unlocked"))?;
    issue(reg, signer, to, actor).map(Some)
}

/// Issues the next CRL of the active issuing CA over every certificate it revoked,
/// records it (number, dates, DER, a `crl.issued` event), clears the stale mark and
/// writes it to `to.path`, all in one transaction: a failed write records nothing.
pub fn issue(
    reg: &mut Store,
    signer: &CaSigner,
    to: &Publication,
    actor: &Actor,
) -> Result<CrlIssued> {
    let (next_update_days, publish) = (to.next_update_days, to.path.as_path());
    if next_update_days == 0 || next_update_days > 3660 {
        return Err(Error::input(format!(
            "crl_next_update_days = {next_update_days} in config.toml: use 1-3660"
        )));
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    let next = now + time::Duration::days(next_update_days as i64);
    let now_s = fmt_time(now);
    let tx = reg.write()?;
    let ca_id = signer.id;
    let rows = rr::revoked_for_ca(&tx, ca_id)?;
    let number = rr::next_crl_number(&tx, ca_id)?;
    let der = build(signer, &rows, number, now, next)?;
    let sha = sha256_hex(&der);
    rr::insert_crl(
        &tx,
        &NewCrl {
            ca_id,
            crl_number: number,
            this_update: now.unix_timestamp(),
            next_update: next.unix_timestamp(),
            entries: rows.len() as i64,
            der: &der,
        },
        &now_s,
    )?;
    tx.event(
        EventKind::CrlIssued,
        None,
        actor,
        serde_json::json!({
            "issuer": signer.subject,
            "crl_number": number,
            "entries": rows.len(),
            "next_update": fmt_time(next),
            "sha256": sha,
            "published": publish.display().to_string(),
        }),
        &now_s,
    )?;
    rr::clear_crl_stale(&tx)?;
    if let Some(dir) = publish.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    outfile::replace_own_file(publish, &encode_for(publish, &der), 0o644)?;
    tx.commit()?;
    let ocsp_refreshed = match &to.ocsp_dir {
        Some(dir) => Some(
            crate::app::ocsp::refresh(reg.reader(), signer, dir, next_update_days).map_err(
                |e| Error::OcspNotRefreshed {
                    dir: dir.clone(),
                    source: Box::new(e),
                },
            )?,
        ),
        None => None,
    };
    Ok(CrlIssued {
        ocsp_refreshed,
        issuer: signer.subject.clone(),
        crl_number: number,
        this_update: now_s,
        next_update: fmt_time(next),
        entries: rows.len(),
        sha256: sha,
        bytes: der.len(),
        published: publish.to_path_buf(),
        der,
    })
}
