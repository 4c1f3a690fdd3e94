//! Checking certificate signing requests from devices: signature and key type.
//! The subject in a CSR is never trusted; only its public key is used.

use x509_parser::prelude::*;

use crate::error::{Error, Result};

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// A CSR whose signature verified and whose key is P-256.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// SubjectPublicKeyInfo DER of the requested key.
    pub spki_der: Vec<u8>,
    /// The subject the device asked for (informational only).
    pub requested_subject: String,
}

/// Accepts PEM ("CERTIFICATE REQUEST" / "NEW CERTIFICATE REQUEST") or DER.
pub fn csr_der_from_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    let text_like = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if text_like {
        for pem in Pem::iter_from_buffer(bytes) {
            let pem = pem.map_err(|e| Error::input(format!("CSR: bad PEM ({e})")))?;
            if pem.label.ends_with("CERTIFICATE REQUEST") {
                return Ok(pem.contents);
            }
        }
        Err(Error::input("CSR: no CERTIFICATE REQUEST block found"))
    } else {
        Ok(bytes.to_vec())
    }
}

pub fn check_csr(der: &[u8]) -> Result<CheckedCsr> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::input(format!("CSR is malformed: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::input("CSR is malformed: trailing bytes"));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    if alg != OID_EC_PUBLIC_KEY {
        let name = match alg.as_str() {
            "1.2.840.113549.1.1.1" => "RSA".to_string(),
            "1.3.101.112" => "Ed25519".to_string(),
            other => format!("algorithm {other}"),
        };
        return Err(Error::input(format!(
            "CSR key is {name}; only P-256 (ECDSA) keys are accepted"
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
        .unwrap_or_default();
    if curve != OID_P256 {
        let name = match curve.as_str() {
            "1.3.132.0.34" => "P-384".to_string(),
            "1.3.132.0.35" => "P-521".to_string(),
            "1.3.132.0.10" => "secp256k1".to_string(),
            "" => "an unnamed curve".to_string(),
            other => format!("curve {other}"),
        };
        return Err(Error::input(format!(
            "CSR key is on {name}; only P-256 keys are accepted"
        )));
    }
    // The point must be a valid P-256 point, not just tagged as one.
    p256::PublicKey::from_sec1_bytes(&spki.subject_public_key.data)
        .map_err(|_| Error::input("CSR public key is not a valid P-256 point"))?;
    csr.verify_signature()
        .map_err(|_| Error::input("CSR signature does not verify (forged or corrupted request)"))?;
    Ok(CheckedCsr {
        spki_der: spki.raw.to_vec(),
        requested_subject: info.subject.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;

    fn csr_for(key: &KeyPair) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["dev.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "requested by the device");
        p.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn a_good_csr_yields_its_key_and_not_its_subject() {
        let key = crate::pki::keys::generate().unwrap();
        let der = csr_for(&key);
        let c = check_csr(&der).unwrap();
        assert_eq!(c.spki_der, key.subject_public_key_info());
        assert_eq!(c.requested_subject, "CN=requested by the device");
        // PEM and DER input give the same request.
        let pem = crate::pki::cert::to_pem("CERTIFICATE REQUEST", &der);
        assert_eq!(csr_der_from_bytes(pem.as_bytes()).unwrap(), der);
        assert_eq!(csr_der_from_bytes(&der).unwrap(), der);
        let e =
            csr_der_from_bytes(b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("no CERTIFICATE REQUEST block"), "{e}");
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let key = crate::pki::keys::generate().unwrap();
        let mut der = csr_for(&key);
        // The signature is the last field: flip a bit inside it.
        let n = der.len();
        der[n - 5] ^= 0x01;
        let e = check_csr(&der).unwrap_err().to_string();
        assert!(e.contains("signature does not verify"), "{e}");
        let mut trailing = csr_for(&key);
        trailing.push(0);
        let e = check_csr(&trailing).unwrap_err().to_string();
        assert!(e.contains("trailing bytes"), "{e}");
        let e = check_csr(b"\x30\x03\x02\x01").unwrap_err().to_string();
        assert!(e.contains("CSR is malformed"), "{e}");
    }

    #[test]
    fn keys_other_than_p256_are_refused() {
        for (alg, name) in [
            (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
            (&rcgen::PKCS_ED25519, "Ed25519"),
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let e = check_csr(&csr_for(&key)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("only P-256"), "{e}");
        }
    }
}
