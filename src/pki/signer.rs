//! The issuing CA's signer, built from plain data: its certificate, its chain and a key
//! behind rcgen's `SigningKey`. Where the CA is recorded and where the key is kept are
//! the caller's business, so a token key needs only a new `CaKey` variant.

use rcgen::{Issuer, KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use super::cert::{info_of, sha256_hex, to_pem};
use super::mark::AuditKey;
use super::token::TokenKey;
use crate::error::{Error, Result};

/// An rcgen signing failure as the project's error: a token's own cause (wrong PIN,
/// token removed) when a token key failed, else `what: e`.
pub fn signing_failed(what: &str, e: rcgen::Error) -> Error {
    match super::token::take_sign_failure() {
        Some(cause) if matches!(e, rcgen::Error::RemoteKeyError) => cause,
        _ => Error::crypto(format!("{what}: {e}")),
    }
}

/// The private key of a CA. Every variant must stay `Send + Sync`: batches sign on the
/// rayon pool and the station signs from one thread per port.
pub enum CaKey {
    /// A software key, decrypted from the CA directory's encrypted PKCS#8 file.
    File(KeyPair),
    /// A key on a PKCS#11 token: it signs there and never leaves it.
    Pkcs11(TokenKey),
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaKey::File(_) => f.write_str("CaKey::File(..)"),
            CaKey::Pkcs11(k) => write!(f, "CaKey::Pkcs11({})", k.uri()),
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => PublicKeyData::der_bytes(k),
            CaKey::Pkcs11(k) => PublicKeyData::der_bytes(k),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::File(k) => PublicKeyData::algorithm(k),
            CaKey::Pkcs11(k) => PublicKeyData::algorithm(k),
        }
    }

    fn subject_public_key_info(&self) -> Vec<u8> {
        match self {
            CaKey::File(k) => PublicKeyData::subject_public_key_info(k),
            CaKey::Pkcs11(k) => PublicKeyData::subject_public_key_info(k),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Pkcs11(k) => k.sign(msg),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testing::{audit_key, ca, chain_der, device_cert, foreign_ca, issuing_key};

    #[test]
    fn the_signer_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<CaKey>();
        shared::<CaSigner>();
        let signer = &ca().signer;
        let now = time::OffsetDateTime::now_utc();
        let fingerprints: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| s.spawn(move || device_cert(signer, &format!("T-{i}"), now)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().info.fingerprint)
                .collect()
        });
        let distinct: std::collections::HashSet<_> = fingerprints.iter().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn built_from_plain_data() {
        let s = &ca().signer;
        let m = &ca().material;
        assert_eq!((s.id, s.name.as_str()), (7, "Test"));
        assert_eq!(s.subject, "CN=Test Issuing CA, O=ACME");
        assert_eq!(s.ca_fingerprint, sha256_hex(&m.issuing_der));
        assert_eq!(s.chain_pem, m.chain_pem(), "the chain.pem cradle writes");
        let ski = info_of(&m.issuing_der).unwrap().ski.unwrap();
        assert_eq!(s.key_id.as_deref().map(hex::encode), Some(ski));
        assert_eq!(s.mark("aa"), s.mark("aa"));
        assert_ne!(s.mark("aa"), s.mark("bb"));
        assert!(format!("{s:?}").contains("Test Issuing CA"));
        assert!(!format!("{:?}", s.issuer()).contains("BEGIN"));
    }

    #[test]
    fn refuses_a_key_chain_or_certificate_that_do_not_belong_together() {
        let m = &ca().material;
        let new = |cert: &[u8], chain: Vec<Vec<u8>>, key: KeyPair| {
            CaSigner::new(1, "x", cert.to_vec(), chain, CaKey::File(key), audit_key())
                .expect_err("refused")
                .to_string()
        };
        let other_key = issuing_key(&foreign_ca().material);
        let e = new(&m.issuing_der, chain_der(m), other_key);
        assert!(e.contains("does not match"), "{e}");
        let e = new(
            &m.issuing_der,
            chain_der(&foreign_ca().material),
            issuing_key(m),
        );
        assert!(e.contains("does not start with the CA certificate"), "{e}");
        let e = new(&m.issuing_der, Vec::new(), issuing_key(m));
        assert!(e.contains("does not start with the CA certificate"), "{e}");
        let leaf = device_cert(&ca().signer, "LEAF", time::OffsetDateTime::now_utc());
        let e = new(&leaf.der, vec![leaf.der.clone()], issuing_key(m));
        assert!(e.contains("is not a CA"), "{e}");
    }
}
