//! The issuing CA's signer, built from plain data: its certificate, its chain and a key
//! behind rcgen's `SigningKey`. Where the CA is recorded and where the key is kept are
//! the caller's business, so a token key needs only a new `CaKey` variant.

use rcgen::{Issuer, KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use super::cert::{info_of, sha256_hex, to_pem};
use super::mark::AuditKey;
use crate::error::{Error, Result};

/// The private key of a CA. Every variant must stay `Send + Sync`: batches sign on the
/// rayon pool and the station signs from one thread per port.
pub enum CaKey {
    /// A software key, decrypted from the CA directory's encrypted PKCS#8 file.
    File(KeyPair),
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaKey::File(_) => f.write_str("CaKey::File(..)"),
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => PublicKeyData::der_bytes(k),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::File(k) => PublicKeyData::algorithm(k),
        }
    }

    fn subject_public_key_info(&self) -> Vec<u8> {
        match self {
            CaKey::File(k) => PublicKeyData::subject_public_key_info(k),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
        }
    }
}

/// Fails unless `key` is the private key of the certificate `cert_der`.
pub fn check_key_matches(cert_der: &[u8], key: &impl PublicKeyData) -> Result<()> {
    let cert = super::cert::parse_der(cert_der)?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(Error::crypto(
            "the private key does not match the certificate's public key",
        ));
    }
    Ok(())
}

/// The issuing CA, unlocked for signing.
pub struct CaSigner {
    /// The caller's handle for this CA (the id it is recorded under), so that what it
    /// signs can be attributed to it.
    pub id: i64,
    /// The CA's name (the `ca_name` profile variable).
    pub name: String,
    /// Subject of the CA certificate.
    pub subject: String,
    /// DER of the CA certificate.
    pub cert_der: Vec<u8>,
    /// Subject key identifier of the CA certificate, if it has one.
    pub key_id: Option<Vec<u8>>,
    /// Issuing CA (+ intermediates) + root, DER, for bundles and devices.
    pub chain_der: Vec<Vec<u8>>,
    /// The same chain as PEM.
    pub chain_pem: String,
    /// Hex SHA-256 of the CA certificate's DER, as bound into each mark.
    pub ca_fingerprint: String,
    issuer: Issuer<'static, CaKey>,
    /// Key of the verification marks stored with every certificate this signer records.
    audit_key: AuditKey,
}

impl CaSigner {
    /// A signer for the CA certificate `cert_der` with its `key`. `chain_der` runs from
    /// that certificate up to the root.
    pub fn new(
        id: i64,
        name: &str,
        cert_der: Vec<u8>,
        chain_der: Vec<Vec<u8>>,
        key: CaKey,
        audit_key: AuditKey,
    ) -> Result<CaSigner> {
        let info = info_of(&cert_der)?;
        if !info.is_ca {
            return Err(Error::crypto(format!(
                "certificate '{}' is not a CA (basicConstraints CA:TRUE missing)",
                info.subject
            )));
        }
        check_key_matches(&cert_der, &key)?;
        // A chain that starts elsewhere would go out in every bundle and device.
        if chain_der.first() != Some(&cert_der) {
            return Err(Error::crypto(format!(
                "the CA chain does not start with the CA certificate '{}'",
                info.subject
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| Error::crypto(format!("issuing CA certificate: {e}")))?;
        let chain_pem = chain_der.iter().map(|d| to_pem("CERTIFICATE", d)).collect();
        let key_id = match info.ski.as_deref().map(hex::decode) {
            Some(Ok(ski)) if !ski.is_empty() => Some(ski),
            _ => None,
        };
        Ok(CaSigner {
            id,
            name: name.to_string(),
            subject: info.subject,
            ca_fingerprint: sha256_hex(&cert_der),
            cert_der,
            key_id,
            chain_der,
            chain_pem,
            issuer,
            audit_key,
        })
    }

    /// What rcgen signs certificates and CRLs with.
    pub fn issuer(&self) -> &Issuer<'static, CaKey> {
        &self.issuer
    }

    /// The verification mark of a certificate (hex SHA-256 fingerprint) this CA issued.
    pub fn mark(&self, cert_fingerprint: &str) -> Vec<u8> {
        self.audit_key.mark(cert_fingerprint, &self.ca_fingerprint)
    }
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("ca", &self.subject)
            .finish_non_exhaustive()
    }
}
