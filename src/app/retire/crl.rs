//! Publishing a CRL: build it (pure, in `pki::crl`), record it and write the file in
//! one transaction.

use std::path::Path;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::outfile;
use crate::pki::cert::sha256_hex;
use crate::pki::crl::{build, encode_for, CrlIssued};
use crate::pki::signer::CaSigner;
use crate::store::retire::{self as rr, NewCrl};
use crate::store::{fmt_time, Store};

/// Issues the next CRL of the active issuing CA over every certificate it revoked,
/// records it (number, dates, DER, a `crl.issued` event), clears the stale mark and
/// writes it to `publish`, all in one transaction: a failed write records nothing.
pub fn issue(
    reg: &mut Store,
    signer: &CaSigner,
    next_update_days: u32,
    publish: &Path,
    actor: &Actor,
) -> Result<CrlIssued> {
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
    outfile::write_file_atomic(publish, &encode_for(publish, &der), 0o644, true)?;
    tx.commit()?;
    Ok(CrlIssued {
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
