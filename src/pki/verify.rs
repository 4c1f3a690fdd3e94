//! Verifying a certificate against the registry's CAs: chain, validity, revocation.

use crate::store::Reader;
use serde::Serialize;

use super::cert::{info_of, parse_der};
use crate::error::Result;
use crate::store::{cas, certs, devices};

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

pub fn verify(conn: &Reader, der: &[u8], now: i64) -> Result<Verification> {
    let info = info_of(der)?;
    let mut problems = Vec::new();
    let known = cas::all_cas(conn)?;

    // Walk up: find a registered CA that signed the current certificate.
    let mut chain = Vec::new();
    let mut chain_ok = false;
    let mut current = der.to_vec();
    for _ in 0..8 {
        let cur = parse_der(&current)?;
        let parent = known.iter().find(|ca| {
            parse_der(&ca.der)
                .map(|p| {
                    p.subject().as_raw() == cur.issuer().as_raw()
                        && cur.verify_signature(Some(p.public_key())).is_ok()
                })
                .unwrap_or(false)
        });
        let Some(parent) = parent else {
            problems.push(format!(
                "no registered CA signed '{}' (issuer '{}')",
                cur.subject(),
                cur.issuer()
            ));
            break;
        };
        chain.push(parent.subject.clone());
        if now < parent.not_before || now > parent.not_after {
            problems.push(format!("CA '{}' is not valid now", parent.subject));
        }
        let pinfo = info_of(&parent.der)?;
        if pinfo.self_signed {
            chain_ok = true;
            break;
        }
        current = parent.der.clone();
    }
    if !chain_ok && problems.is_empty() {
        problems.push("chain does not reach a self-signed root".into());
    }
    let time_ok = now >= info.not_before && now <= info.not_after;
    if now < info.not_before {
        problems.push("certificate is not yet valid".into());
    } else if now > info.not_after {
        problems.push("certificate has expired".into());
    }
    let rec = certs::cert_by_fingerprint(conn, &info.fingerprint)?;
    let (revoked, reason, status, device) = match &rec {
        Some(r) => {
            let dev = devices::device_by_id(conn, r.device_id)?.map(|d| d.serial);
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
        ok: chain_ok && time_ok && !revoked && problems.is_empty(),
        subject: info.subject,
        serial_hex: info.serial_hex,
        fingerprint: info.fingerprint,
        not_before: info.not_before,
        not_after: info.not_after,
        chain,
        chain_ok,
        time_ok,
        revoked,
        revocation_reason: reason,
        registry_status: status,
        device,
        problems,
    })
}
