//! OCSP (RFC 6960, profiled by RFC 5019): parsing requests, matching their CertIDs to
//! the issuing CA, and building signed responses. The ASN.1 is `x509-ocsp`'s; every
//! signature goes through the CA signer seam (`CaKey`, rcgen's `SigningKey`), so a
//! token key signs OCSP as it signs certificates and CRLs.

use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Tagged};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SigningKey,
};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
};

use super::crl::Reason;
use super::signer::CaKey;
use crate::error::{Error, Result};

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const OID_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1).
pub const NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];

/// CertIDs answered in one request; RFC 5019 clients send one.
pub const MAX_CERT_IDS: usize = 16;
/// Longest nonce echoed (RFC 8954 allows 1-32 octets; some clients send more).
pub const MAX_NONCE: usize = 128;

fn sha1(data: &[u8]) -> [u8; 20] {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let mut out = [0u8; 20];
    out.copy_from_slice(d.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// How requests name the issuing CA: hashes of its subject and public key, in SHA-1
/// (RFC 5019) and SHA-256 (accepted too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerHashes {
    pub name_sha1: [u8; 20],
    pub key_sha1: [u8; 20],
    pub name_sha256: [u8; 32],
    pub key_sha256: [u8; 32],
}

impl IssuerHashes {
    /// The hashes of the CA certificate `ca_der`.
    pub fn of(ca_der: &[u8]) -> Result<IssuerHashes> {
        let ca = super::cert::parse_der(ca_der)?;
        let name = ca.subject().as_raw();
        let key = &ca.public_key().subject_public_key.data;
        Ok(IssuerHashes {
            name_sha1: sha1(name),
            key_sha1: sha1(key),
            name_sha256: sha256(name),
            key_sha256: sha256(key),
        })
    }

    /// Whether `id` names this issuer (SHA-1 or SHA-256; parameters absent or NULL).
    pub fn names(&self, id: &CertId) -> bool {
        let params_ok = id
            .hash_algorithm
            .parameters
            .as_ref()
            .is_none_or(|p| p.tag() == der::Tag::Null && p.value().is_empty());
        let (name, key) = (
            id.issuer_name_hash.as_bytes(),
            id.issuer_key_hash.as_bytes(),
        );
        params_ok
            && match id.hash_algorithm.oid {
                OID_SHA1 => name == self.name_sha1 && key == self.key_sha1,
                OID_SHA256 => name == self.name_sha256 && key == self.key_sha256,
                _ => false,
            }
    }

    /// The RFC 5019 (SHA-1) CertID of the certificate with serial `serial_hex`.
    pub fn cert_id(&self, serial_hex: &str) -> Result<CertId> {
        let bad = || {
            Error::input(format!(
                "registry holds a malformed certificate serial '{serial_hex}'"
            ))
        };
        let raw = hex::decode(serial_hex).map_err(|_| bad())?;
        let octets = |b: &[u8]| OctetString::new(b).map_err(|_| bad());
        Ok(CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: OID_SHA1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: octets(&self.name_sha1)?,
            issuer_key_hash: octets(&self.key_sha1)?,
            serial_number: SerialNumber::new(&raw).map_err(|_| bad())?,
        })
    }
}

/// The serial a CertID asks about, as the registry spells it (lower-case hex).
pub fn serial_hex(id: &CertId) -> String {
    hex::encode(id.serial_number.as_bytes())
}

/// A parsed request: the certificates asked about and the nonce, if any.
#[derive(Debug, Clone)]
pub struct Request {
    pub ids: Vec<CertId>,
    pub nonce: Option<Extension>,
}

/// Parses a DER OCSPRequest. Anything that is not one (trailing bytes, no CertID,
/// more than `MAX_CERT_IDS`, an oversized nonce) is `Err(why)`: malformedRequest.
pub fn parse_request(der: &[u8]) -> std::result::Result<Request, String> {
    let req = OcspRequest::from_der(der).map_err(|e| format!("not a DER OCSP request ({e})"))?;
    let tbs = req.tbs_request;
    if tbs.request_list.is_empty() {
        return Err("the request names no certificate".into());
    }
    if tbs.request_list.len() > MAX_CERT_IDS {
        return Err(format!(
            "the request names {} certificates (at most {MAX_CERT_IDS})",
            tbs.request_list.len()
        ));
    }
    let nonce = tbs
        .request_extensions
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.extn_id == OID_NONCE);
    if let Some(n) = &nonce {
        if n.extn_value.as_bytes().is_empty() || n.extn_value.as_bytes().len() > MAX_NONCE + 4 {
            return Err("the nonce is empty or too long".into());
        }
    }
    Ok(Request {
        ids: tbs.request_list.into_iter().map(|r| r.req_cert).collect(),
        nonce,
    })
}

/// What a response says about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked {
        at: OffsetDateTime,
        reason: Option<Reason>,
    },
    Unknown,
}

/// The key that signs responses and the certificate relying parties check it with:
/// the issuing CA itself, or a delegated responder certificate it issued.
pub struct ResponseSigner<'a> {
    key: &'a CaKey,
    /// Sent in `certs` (a delegated responder's certificate); `None` for the CA.
    include: Option<x509_cert::Certificate>,
    key_hash: [u8; 20],
    algorithm: AlgorithmIdentifierOwned,
}

impl<'a> ResponseSigner<'a> {
    /// The issuing CA signs (`key` is its key).
    pub fn ca(key: &'a CaKey) -> Result<ResponseSigner<'a>> {
        ResponseSigner::new(key, None)
    }

    /// A delegated responder signs: `cert_der` (issued by the CA) goes with every response.
    pub fn delegated(key: &'a CaKey, cert_der: &[u8]) -> Result<ResponseSigner<'a>> {
        let cert = x509_cert::Certificate::from_der(cert_der)
            .map_err(|e| Error::crypto(format!("the OCSP signing certificate: {e}")))?;
        ResponseSigner::new(key, Some(cert))
    }

    fn new(key: &'a CaKey, include: Option<x509_cert::Certificate>) -> Result<ResponseSigner<'a>> {
        let alg = key.algorithm();
        let (oid, null) = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            (OID_ECDSA_SHA256, false)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            (OID_ECDSA_SHA384, false)
        } else if alg == &rcgen::PKCS_ED25519 {
            (OID_ED25519, false)
        } else {
            return Err(Error::crypto(
                "OCSP signing supports ECDSA P-256/P-384 and Ed25519 keys only",
            ));
        };
        Ok(ResponseSigner {
            key,
            include,
            // KeyHash: SHA-1 of the subjectPublicKey bits (RFC 6960 §4.2.1).
            key_hash: sha1(key.der_bytes()),
            algorithm: AlgorithmIdentifierOwned {
                oid,
                parameters: null.then(|| Null.into()),
            },
        })
    }
}

fn gtime(t: OffsetDateTime) -> Result<OcspGeneralizedTime> {
    let secs = u64::try_from(t.unix_timestamp())
        .map_err(|_| Error::Internal(format!("time {t} before 1970")))?;
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| Error::Internal(format!("time {t}: {e}")))
}

fn crl_reason(r: Reason) -> CrlReason {
    match r {
        Reason::Unspecified => CrlReason::Unspecified,
        Reason::KeyCompromise => CrlReason::KeyCompromise,
        Reason::CaCompromise => CrlReason::CaCompromise,
        Reason::AffiliationChanged => CrlReason::AffiliationChanged,
        Reason::Superseded => CrlReason::Superseded,
        Reason::CessationOfOperation => CrlReason::CessationOfOperation,
        Reason::CertificateHold => CrlReason::CertificateHold,
        Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        Reason::AaCompromise => CrlReason::AaCompromise,
    }
}

/// When a response was made and how long it holds.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub produced_at: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

/// A successful, signed OCSPResponse (DER) about `answers`, echoing `nonce`.
pub fn sign(
    signer: &ResponseSigner<'_>,
    answers: Vec<(CertId, Status)>,
    when: Validity,
    nonce: Option<Extension>,
) -> Result<Vec<u8>> {
    let (produced, next) = (gtime(when.produced_at)?, gtime(when.next_update)?);
    let mut responses = Vec::with_capacity(answers.len());
    for (cert_id, status) in answers {
        let cert_status = match status {
            Status::Good => CertStatus::good(),
            Status::Unknown => CertStatus::unknown(),
            Status::Revoked { at, reason } => CertStatus::Revoked(RevokedInfo {
                revocation_time: gtime(at)?,
                revocation_reason: reason.map(crl_reason),
            }),
        };
        responses.push(SingleResponse {
            cert_id,
            cert_status,
            this_update: produced,
            next_update: Some(next),
            single_extensions: None,
        });
    }
    let tbs = ResponseData {
        version: x509_ocsp::Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(signer.key_hash.as_slice()).map_err(der_err)?,
        ),
        produced_at: produced,
        responses,
        response_extensions: nonce.map(|n| vec![n]),
    };
    let tbs_der = tbs.to_der().map_err(der_err)?;
    let sig = signer
        .key
        .sign(&tbs_der)
        .map_err(|e| crate::pki::signer::signing_failed("signing the OCSP response", e))?;
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: signer.algorithm.clone(),
        signature: BitString::from_bytes(&sig).map_err(der_err)?,
        certs: signer.include.clone().map(|c| vec![c]),
    };
    let resp = OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: OID_BASIC,
            response: OctetString::new(basic.to_der().map_err(der_err)?).map_err(der_err)?,
        }),
    };
    resp.to_der().map_err(der_err)
}

fn der_err(e: der::Error) -> Error {
    Error::Internal(format!("encoding the OCSP response: {e}"))
}

/// An unsigned error response (malformedRequest, unauthorized, internalError, …).
pub fn error_response(status: OcspResponseStatus) -> Vec<u8> {
    let resp = OcspResponse {
        response_status: status,
        response_bytes: None,
    };
    // Three fixed bytes plus the status: encoding cannot fail.
    resp.to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x02])
}

/// The parts of a response the responder and tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub status: OcspResponseStatus,
    /// (serial hex, status name) of each SingleResponse.
    pub answers: Vec<(String, &'static str)>,
    pub next_update: Option<i64>,
}

/// Reads back a response cradle made (for refreshing and for tests); no signature check.
pub fn summarise(der: &[u8]) -> Result<Summary> {
    let bad = |e: der::Error| Error::input(format!("not an OCSP response ({e})"));
    let resp = OcspResponse::from_der(der).map_err(bad)?;
    let Some(bytes) = resp.response_bytes else {
        return Ok(Summary {
            status: resp.response_status,
            answers: Vec::new(),
            next_update: None,
        });
    };
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(bad)?;
    let mut next_update = None;
    let answers = basic
        .tbs_response_data
        .responses
        .iter()
        .map(|s| {
            next_update = s
                .next_update
                .map(|t| t.0.to_unix_duration().as_secs() as i64);
            let st = match s.cert_status {
                CertStatus::Good(_) => "good",
                CertStatus::Revoked(_) => "revoked",
                CertStatus::Unknown(_) => "unknown",
            };
            (serial_hex(&s.cert_id), st)
        })
        .collect();
    Ok(Summary {
        status: resp.response_status,
        answers,
        next_update,
    })
}

/// Days a delegated OCSP signing certificate is valid by default: short, since
/// ocsp-nocheck means relying parties never check it for revocation.
pub const DELEGATE_DAYS: u32 = 30;

/// Issues a delegated OCSP signing certificate for a fresh P-256 key: EKU
/// id-kp-OCSPSigning, id-pkix-ocsp-nocheck, digitalSignature only, `days` valid,
/// signed by the issuing CA. Returns the certificate (DER) and its key.
pub fn issue_delegate(
    issuer: &rcgen::Issuer<'_, impl SigningKey>,
    ca_name: &str,
    org: &str,
    days: u32,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, KeyPair)> {
    if days == 0 || days > 366 {
        return Err(Error::input(format!(
            "--days {days}: an OCSP signing certificate is valid 1-366 days"
        )));
    }
    let key = super::keys::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{ca_name} OCSP Responder"));
    if !org.trim().is_empty() {
        dn.push(DnType::OrganizationName, org.trim());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    params.use_authority_key_identifier_extension = true;
    // The value of ocsp-nocheck is NULL (RFC 6960 §4.2.2.2.1).
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(NOCHECK, vec![0x05, 0x00]));
    params.serial_number = Some(super::ca::random_serial());
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days as i64);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| super::signer::signing_failed("signing the OCSP signing certificate", e))?;
    Ok((cert.der().to_vec(), key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testing::{ca, device_cert, foreign_ca};

    fn when() -> Validity {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Validity {
            produced_at: now,
            next_update: now + time::Duration::days(7),
        }
    }

    #[test]
    fn cert_ids_match_their_issuer_only() {
        let ours = IssuerHashes::of(&ca().signer.cert_der).unwrap();
        let theirs = IssuerHashes::of(&foreign_ca().signer.cert_der).unwrap();
        // Same subject names, different keys.
        assert_eq!(ours.name_sha1, theirs.name_sha1);
        assert_ne!(ours.key_sha1, theirs.key_sha1);
        let id = ours.cert_id("4a01").unwrap();
        assert!(ours.names(&id));
        assert!(!theirs.names(&id));
        assert_eq!(serial_hex(&id), "4a01");
        let mut sha256 = id.clone();
        sha256.hash_algorithm.oid = OID_SHA256;
        assert!(!ours.names(&sha256), "SHA-1 hashes under a SHA-256 label");
        sha256.issuer_name_hash = OctetString::new(ours.name_sha256.as_slice()).unwrap();
        sha256.issuer_key_hash = OctetString::new(ours.key_sha256.as_slice()).unwrap();
        assert!(ours.names(&sha256));
        assert!(ours.cert_id("zz").is_err());
    }

    #[test]
    fn a_signed_response_verifies_and_reads_back() {
        let s = &ca().signer;
        let leaf = device_cert(s, "OCSP-1", OffsetDateTime::now_utc());
        let issuer = IssuerHashes::of(&s.cert_der).unwrap();
        let id = issuer.cert_id(&leaf.info.serial_hex).unwrap();
        let signer = ResponseSigner::ca(s.issuer().key()).unwrap();
        let w = when();
        let revoked = Status::Revoked {
            at: w.produced_at,
            reason: Some(Reason::KeyCompromise),
        };
        let der = sign(&signer, vec![(id.clone(), revoked)], w, None).unwrap();
        let sum = summarise(&der).unwrap();
        assert_eq!(sum.status, OcspResponseStatus::Successful);
        assert_eq!(sum.answers, [(leaf.info.serial_hex.clone(), "revoked")]);
        assert_eq!(sum.next_update, Some(w.next_update.unix_timestamp()));
        // The signature is the CA's over the DER of tbsResponseData.
        let resp = OcspResponse::from_der(&der).unwrap();
        let basic =
            BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes()).unwrap();
        let tbs = basic.tbs_response_data.to_der().unwrap();
        let ca_cert = crate::pki::cert::parse_der(&s.cert_der).unwrap();
        let spki = ca_cert.public_key().subject_public_key.data.to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, spki)
            .verify(&tbs, basic.signature.raw_bytes())
            .expect("signed by the CA");
        assert!(basic.certs.is_none());
    }

    #[test]
    fn hostile_requests_are_malformed_not_panics() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x00",
            b"garbage",
            &[0x30, 0x84, 0xff, 0xff],
        ] {
            assert!(parse_request(bad).is_err());
        }
        let e = error_response(OcspResponseStatus::MalformedRequest);
        assert_eq!(e, [0x30, 0x03, 0x0a, 0x01, 0x01]);
        assert_eq!(
            summarise(&e).unwrap().status,
            OcspResponseStatus::MalformedRequest
        );
    }

    #[test]
    fn a_delegate_is_an_ocsp_signer_with_nocheck() {
        let s = &ca().signer;
        let now = OffsetDateTime::now_utc();
        let (der, key) = issue_delegate(s.issuer(), "Test", "ACME", 30, now).unwrap();
        let cert = crate::pki::cert::parse_der(&der).unwrap();
        assert_eq!(cert.issuer().to_string(), s.subject);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.ocsp_signing && !eku.server_auth && !eku.client_auth);
        let nocheck = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.48.1.5")
            .expect("ocsp-nocheck");
        assert_eq!(nocheck.value, [0x05, 0x00]);
        assert!(!nocheck.critical);
        let days = (cert.validity().not_after.timestamp() - now.unix_timestamp()) / 86400;
        assert_eq!(days, 30);
        crate::pki::signer::check_key_matches(&der, &key).unwrap();
        assert!(issue_delegate(s.issuer(), "Test", "", 0, now).is_err());
        assert!(issue_delegate(s.issuer(), "Test", "", 367, now).is_err());
    }
}
