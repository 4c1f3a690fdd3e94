//! Verifying a certificate against a trust store: chain and validity. What a registry
//! says about the certificate (revoked, which device) is the caller's to add.

use serde::Serialize;

use super::cert::{info_of, parse_der};
use super::trust::{ChainEnd, TrustStore};
use crate::error::Result;

/// What the certificate and the trust store alone say about it.
#[derive(Debug, Clone, Serialize)]
pub struct ChainVerdict {
    pub subject: String,
    pub serial_hex: String,
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Subjects from the certificate's issuer up to the root.
    pub chain: Vec<String>,
    pub chain_ok: bool,
    pub time_ok: bool,
    pub problems: Vec<String>,
}

impl ChainVerdict {
    pub fn ok(&self) -> bool {
        self.chain_ok && self.time_ok && self.problems.is_empty()
    }
}

impl TrustStore {
    /// Checks that `der` chains to a self-signed root of the store and that it and
    /// every CA above it are valid at `now` (Unix seconds).
    pub fn verify(&self, der: &[u8], now: i64) -> Result<ChainVerdict> {
        let info = info_of(der)?;
        let cert = parse_der(der)?;
        let mut problems = Vec::new();
        let walk = self.chain(&cert);
        for ca in &walk.cas {
            if !ca.valid_at(now) {
                problems.push(format!("CA '{}' is not valid now", ca.subject));
            }
        }
        let chain_ok = matches!(walk.end, ChainEnd::Root);
        match &walk.end {
            ChainEnd::Root => {}
            ChainEnd::Broken {
                subject, issuer, ..
            } => problems.push(format!(
                "no registered CA signed '{subject}' (issuer '{issuer}')"
            )),
            ChainEnd::TooLong if problems.is_empty() => {
                problems.push("chain does not reach a self-signed root".into())
            }
            ChainEnd::TooLong => {}
        }
        let time_ok = now >= info.not_before && now <= info.not_after;
        if now < info.not_before {
            problems.push("certificate is not yet valid".into());
        } else if now > info.not_after {
            problems.push("certificate has expired".into());
        }
        Ok(ChainVerdict {
            subject: info.subject,
            serial_hex: info.serial_hex,
            fingerprint: info.fingerprint,
            not_before: info.not_before,
            not_after: info.not_after,
            chain: walk.cas.iter().map(|c| c.subject.clone()).collect(),
            chain_ok,
            time_ok,
            problems,
        })
    }
}
