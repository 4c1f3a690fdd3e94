//! P-256 key pairs and encrypted PKCS#8 at rest.

use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use rand_core::{OsRng, RngCore};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// PBKDF2-HMAC-SHA256 iterations for keys encrypted at rest (OWASP 2021 guidance).
pub const PBKDF2_ITERATIONS: u32 = 310_000;

/// A fresh P-256 key pair (ring).
pub fn generate() -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::crypto(format!("key generation failed: {e}")))
}

/// Encrypts a PKCS#8 private key with PBES2 (PBKDF2-SHA256, AES-256-CBC) and returns PEM
/// that `openssl pkey -passin` opens.
pub fn encrypt_pkcs8_pem(pkcs8_der: &[u8], passphrase: &[u8]) -> Result<Zeroizing<String>> {
    let info = PrivateKeyInfo::try_from(pkcs8_der)
        .map_err(|e| Error::crypto(format!("private key is not PKCS#8: {e}")))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut iv);
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| Error::crypto(format!("encryption parameters: {e}")))?;
    let doc = info
        .encrypt_with_params(params, passphrase)
        .map_err(|e| Error::crypto(format!("encrypting private key: {e}")))?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| Error::crypto(format!("encoding private key: {e}")))?;
    Ok(pem)
}

/// Reads a private key from PEM: encrypted PKCS#8 (needs `passphrase`), plain PKCS#8,
/// or SEC1 "EC PRIVATE KEY". Returns plain PKCS#8 DER. `what` names the key in errors.
pub fn read_private_key_pem(
    pem_text: &str,
    passphrase: Option<&[u8]>,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let (label, doc) = pkcs8::der::SecretDocument::from_pem(pem_text)
        .map_err(|e| Error::crypto(format!("{what}: not a PEM private key ({e})")))?;
    match label {
        "ENCRYPTED PRIVATE KEY" => {
            let pass = passphrase.ok_or_else(|| {
                Error::crypto(format!("{what} is encrypted and no passphrase was given"))
            })?;
            let enc = EncryptedPrivateKeyInfo::from_der(doc.as_bytes())
                .map_err(|e| Error::crypto(format!("{what}: malformed encrypted key ({e})")))?;
            let plain = enc
                .decrypt(pass)
                .map_err(|_| Error::WrongPassphrase(what.to_string()))?;
            // A wrong passphrase usually fails the padding check; if it happens to pass,
            // the result is not valid PKCS#8.
            PrivateKeyInfo::try_from(plain.as_bytes())
                .map_err(|_| Error::WrongPassphrase(what.to_string()))?;
            Ok(Zeroizing::new(plain.as_bytes().to_vec()))
        }
        "PRIVATE KEY" => Ok(Zeroizing::new(doc.as_bytes().to_vec())),
        "EC PRIVATE KEY" => {
            use p256::pkcs8::EncodePrivateKey;
            let sk = p256::SecretKey::from_sec1_der(doc.as_bytes())
                .map_err(|_| Error::crypto(format!("{what}: not a P-256 EC private key")))?;
            let der = sk
                .to_pkcs8_der()
                .map_err(|e| Error::crypto(format!("{what}: {e}")))?;
            Ok(Zeroizing::new(der.as_bytes().to_vec()))
        }
        other => Err(Error::crypto(format!(
            "{what}: unsupported PEM block '{other}' (want PRIVATE KEY, ENCRYPTED PRIVATE KEY or EC PRIVATE KEY)"
        ))),
    }
}

/// Builds a signing key pair from PKCS#8 DER; only P-256 is accepted.
pub fn key_pair_from_pkcs8(der: &[u8], what: &str) -> Result<KeyPair> {
    let kp = KeyPair::try_from(der)
        .map_err(|e| Error::crypto(format!("{what}: unusable private key ({e})")))?;
    if kp.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(Error::crypto(format!(
            "{what}: only P-256 (ECDSA) keys are supported"
        )));
    }
    Ok(kp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_opens_only_with_its_passphrase() {
        let key = generate().unwrap();
        let der = key.serialize_der();
        let pem = encrypt_pkcs8_pem(&der, b"right").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
        let back = read_private_key_pem(&pem, Some(b"right"), "the key").unwrap();
        assert_eq!(back.as_slice(), der.as_slice());
        let kp = key_pair_from_pkcs8(&back, "the key").unwrap();
        assert_eq!(kp.public_key_pem(), key.public_key_pem());

        let e = read_private_key_pem(&pem, Some(b"wrong"), "the key").unwrap_err();
        assert!(
            matches!(e, Error::WrongPassphrase(ref w) if w == "the key"),
            "{e:?}"
        );
        let e = read_private_key_pem(&pem, None, "the key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted and no passphrase"), "{e}");
    }

    #[test]
    fn plain_pkcs8_and_sec1_keys_are_read() {
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let key = generate().unwrap();
        let der = key.serialize_der();
        let plain = read_private_key_pem(&key.serialize_pem(), None, "k").unwrap();
        assert_eq!(plain.as_slice(), der.as_slice());
        let sk = p256::SecretKey::from_pkcs8_der(&der).unwrap();
        let sec1 = sk.to_sec1_pem(LineEnding::LF).unwrap();
        let from_sec1 = read_private_key_pem(&sec1, None, "k").unwrap();
        let again = p256::SecretKey::from_pkcs8_der(&from_sec1).unwrap();
        assert_eq!(again.to_bytes(), sk.to_bytes());
        let pkcs8_pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(read_private_key_pem(&pkcs8_pem, None, "k").is_ok());
        let e = read_private_key_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
            None,
            "k",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unsupported PEM block 'RSA PRIVATE KEY'"), "{e}");
    }

    #[test]
    fn only_p256_signing_keys_are_accepted() {
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let e = key_pair_from_pkcs8(&p384.serialize_der(), "the key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only P-256"), "{e}");
        let e = key_pair_from_pkcs8(b"junk", "the key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unusable private key"), "{e}");
    }
}
