//! Verifying a certificate against known CAs: chain and validity. What the registry
//! says about it (revoked, which device) is added by the identity workflow.

use serde::Serialize;

use super::cert::{info_of, parse_der};
use crate::error::Result;
use crate::model::CaRecord;

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

/// Checks `der` against the CAs in `known` at `now` (Unix seconds). The registry
/// fields of the result are empty: `app::identity::verify` fills them in.
pub fn verify(known: &[CaRecord], der: &[u8], now: i64) -> Result<Verification> {
    let info = info_of(der)?;
    let mut problems = Vec::new();

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
    Ok(Verification {
        ok: chain_ok && time_ok && problems.is_empty(),
        subject: info.subject,
        serial_hex: info.serial_hex,
        fingerprint: info.fingerprint,
        not_before: info.not_before,
        not_after: info.not_after,
        chain,
        chain_ok,
        time_ok,
        revoked: false,
        revocation_reason: None,
        registry_status: None,
        device: None,
        problems,
    })
}
