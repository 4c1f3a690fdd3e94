//! Certificate revocation lists: RFC 5280 reason codes and building a CRL signed by
//! the issuing CA. Persisting and publishing one is a workflow (`app::retire::crl`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::cert::to_pem;
use super::signer::CaSigner;
use crate::error::{Error, Result};
use crate::model::Revoked;

/// RFC 5280 §5.3.1 CRLReason (removeFromCRL is not offered: cradle never un-revokes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    #[serde(rename = "unspecified")]
    Unspecified,
    #[serde(rename = "keyCompromise")]
    KeyCompromise,
    #[serde(rename = "cACompromise")]
    CaCompromise,
    #[serde(rename = "affiliationChanged")]
    AffiliationChanged,
    #[serde(rename = "superseded")]
    Superseded,
    #[serde(rename = "cessationOfOperation")]
    CessationOfOperation,
    #[serde(rename = "certificateHold")]
    CertificateHold,
    #[serde(rename = "privilegeWithdrawn")]
    PrivilegeWithdrawn,
    #[serde(rename = "aACompromise")]
    AaCompromise,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::CertificateHold,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    /// The RFC 5280 name, as stored in the registry and shown by `openssl crl -text`
    /// (modulo OpenSSL's own capitalisation).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::CertificateHold => "certificateHold",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    pub fn code(self) -> u8 {
        self.rcgen() as u8
    }

    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::CertificateHold => RevocationReason::CertificateHold,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
            Reason::AaCompromise => RevocationReason::AaCompromise,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = Error;
    /// Accepts the RFC name in any case, kebab-case or snake_case
    /// (`keyCompromise`, `key-compromise`, `KEY_COMPROMISE`).
    fn from_str(s: &str) -> Result<Reason> {
        // Exact stored spelling first (the common case when building a large CRL).
        if let Some(r) = Reason::ALL.into_iter().find(|r| r.as_str() == s) {
            return Ok(r);
        }
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(&norm))
            .ok_or_else(|| {
                Error::input(format!(
                    "'{s}' is not an RFC 5280 revocation reason ({})",
                    Reason::ALL.map(Reason::as_str).join(", ")
                ))
            })
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A CRL as issued and published.
#[derive(Debug, Clone, Serialize)]
pub struct CrlIssued {
    pub issuer: String,
    pub crl_number: i64,
    pub this_update: String,
    pub next_update: String,
    pub entries: usize,
    pub sha256: String,
    pub bytes: usize,
    pub published: PathBuf,
    /// Pre-signed OCSP responses signed afterwards (configured `ocsp_dir` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_refreshed: Option<usize>,
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// Builds and signs a CRL over `rows` (DER).
pub fn build(
    signer: &CaSigner,
    rows: &[Revoked],
    crl_number: i64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<Vec<u8>> {
    let mut revoked = Vec::with_capacity(rows.len());
    for row in rows {
        let at = row.revoked_at.map_or(this_update, |t| t.as_offset());
        let serial = hex::decode(&row.serial_hex).map_err(|_| {
            Error::input(format!(
                "registry holds a malformed certificate serial '{}'",
                row.serial_hex
            ))
        })?;
        let reason = match row.reason.as_deref() {
            Some(r) => Some(r.parse::<Reason>()?.rcgen()),
            None => None,
        };
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: at,
            reason_code: reason,
            invalidity_date: None,
        });
    }
    // The authority key identifier must equal the issuing CA's subject key identifier,
    // whichever way that CA computed it (ours or an imported one).
    let key_identifier_method = match &signer.key_id {
        Some(ski) => KeyIdMethod::PreSpecified(ski.clone()),
        None => KeyIdMethod::Sha256,
    };
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(crl_number as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method,
    };
    let crl = params
        .signed_by(signer.issuer())
        .map_err(|e| super::signer::signing_failed("signing the CRL", e))?;
    Ok(crl.der().to_vec())
}

/// PEM unless the path ends in `.der`.
pub fn encode_for(path: &Path, der: &[u8]) -> Vec<u8> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("der"))
    {
        der.to_vec()
    } else {
        to_pem("X509 CRL", der).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use x509_parser::prelude::*;

    use crate::pki::cert::{info_of, parse_der};
    use crate::pki::testing::ca;

    fn row(serial_hex: &str, at: Option<&str>, reason: Option<&str>) -> Revoked {
        Revoked {
            serial_hex: serial_hex.into(),
            revoked_at: at.and_then(crate::model::Timestamp::parse),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn a_built_crl_parses_back_with_number_reasons_dates_and_key_id() {
        let signer = &ca().signer;
        let this = OffsetDateTime::parse(
            "2026-11-20T10:00:00Z",
            &::time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let next = this + ::time::Duration::days(7);
        let rows = [
            row("7f01", Some("2026-11-01T08:00:00Z"), Some("keyCompromise")),
            row(
                "00ff02",
                Some("2026-11-01T08:00:00Z"),
                Some("cessationOfOperation"),
            ),
            row("0a03", None, None),
            row("0a04", Some("not a time"), Some("superseded")),
        ];
        let der = build(signer, &rows, 42, this, next).unwrap();
        let (rest, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("42".into()));
        assert_eq!(crl.last_update().timestamp(), this.unix_timestamp());
        assert_eq!(
            crl.next_update().map(|t| t.timestamp()),
            Some(next.unix_timestamp())
        );
        assert_eq!(crl.issuer().to_string(), signer.subject);
        let ca_cert = parse_der(&signer.cert_der).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
        let listed: Vec<(String, i64, Option<u8>)> = crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    hex::encode(r.raw_serial()),
                    r.revocation_date.timestamp(),
                    r.reason_code().map(|(_, c)| c.0),
                )
            })
            .collect();
        let nov1 = this.unix_timestamp() - 19 * 86400 - 2 * 3600;
        assert_eq!(
            listed,
            [
                ("7f01".to_string(), nov1, Some(1)),
                ("00ff02".to_string(), nov1, Some(5)),
                // No or an unreadable revocation time: listed at thisUpdate.
                ("0a03".to_string(), this.unix_timestamp(), None),
                ("0a04".to_string(), this.unix_timestamp(), Some(4)),
            ]
        );
        let aki = crl
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| hex::encode(k.0))
                }
                _ => None,
            });
        assert_eq!(aki, info_of(&signer.cert_der).unwrap().ski);
        assert!(aki.is_some());
    }

    #[test]
    fn a_malformed_row_builds_no_crl() {
        let signer = &ca().signer;
        let now = OffsetDateTime::now_utc();
        let e = build(signer, &[row("zz", None, None)], 1, now, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed certificate serial 'zz'"), "{e}");
        let e = build(
            signer,
            &[row("01", None, Some("removeFromCRL"))],
            1,
            now,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an RFC 5280 revocation reason"), "{e}");
    }

    #[test]
    fn pem_unless_the_path_ends_in_der() {
        assert_eq!(encode_for(Path::new("crl.DER"), b"x"), b"x");
        let pem = String::from_utf8(encode_for(Path::new("crl.pem"), b"x")).unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----\n"), "{pem}");
    }

    #[test]
    fn reasons_parse_in_any_spelling() {
        for (s, r) in [
            ("keyCompromise", Reason::KeyCompromise),
            ("key-compromise", Reason::KeyCompromise),
            ("KEY_COMPROMISE", Reason::KeyCompromise),
            ("cessation-of-operation", Reason::CessationOfOperation),
            ("aACompromise", Reason::AaCompromise),
            ("aa-compromise", Reason::AaCompromise),
            ("ca-compromise", Reason::CaCompromise),
            ("Superseded", Reason::Superseded),
        ] {
            assert_eq!(s.parse::<Reason>().unwrap(), r, "{s}");
        }
        let e = "removeFromCRL".parse::<Reason>().unwrap_err().to_string();
        assert!(e.contains("cessationOfOperation"), "{e}");
        assert_eq!(Reason::CessationOfOperation.code(), 5);
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>().unwrap(), r);
        }
    }
}
