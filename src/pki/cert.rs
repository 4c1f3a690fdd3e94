//! Reading certificates: PEM/DER input, the facts the registry records about them.

use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::error::{Error, Result};

/// What cradle records about a certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    /// SHA-256 of the certificate DER, lower-case hex.
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, lower-case hex.
    pub pubkey_sha256: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub ski: Option<String>,
    pub aki: Option<String>,
    pub self_signed: bool,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::input(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::input("trailing bytes after the certificate"));
    }
    Ok(cert)
}

pub fn info_of(der: &[u8]) -> Result<CertInfo> {
    let cert = parse_der(der)?;
    Ok(info_of_parsed(&cert, der))
}

pub fn info_of_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(hex::encode(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => {}
        }
    }
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: hex::encode(cert.raw_serial()),
        fingerprint: sha256_hex(der),
        pubkey_sha256: sha256_hex(cert.public_key().raw),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(None).is_ok(),
        ski,
        aki,
    }
}

/// Reads every certificate from PEM text or a single DER blob.
pub fn read_certs(bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let mut out = Vec::new();
        for pem in Pem::iter_from_buffer(bytes) {
            let pem = pem.map_err(|e| Error::input(format!("{what}: bad PEM ({e})")))?;
            if pem.label == "CERTIFICATE" {
                out.push(pem.contents);
            }
        }
        if out.is_empty() {
            return Err(Error::input(format!("{what}: no CERTIFICATE block found")));
        }
        Ok(out)
    } else {
        parse_der(bytes).map_err(|e| Error::input(format!("{what}: {e}")))?;
        Ok(vec![bytes.to_vec()])
    }
}

pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    s.push_str("-----BEGIN ");
    s.push_str(label);
    s.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END ");
    s.push_str(label);
    s.push_str("-----\n");
    s
}

/// `sha256:AB:CD:…` style for people; JSON carries the plain hex.
pub fn colon_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap_or("").to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}
