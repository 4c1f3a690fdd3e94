//! The certificate authority: a root and an issuing CA, keys encrypted at rest.

use std::fs;
use std::path::Path;

use rcgen::{Issuer, KeyPair, PublicKeyData, SerialNumber};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::cert::{info_of, read_certs, to_pem};
use super::keys;
use super::mark::AuditKey;
use super::profile::{Profile, Vars};
use crate::error::{Error, Result};
use crate::model::CaRecord;

pub const ROOT_CERT: &str = "root.pem";
pub const ROOT_KEY: &str = "root.key";
pub const ISSUING_CERT: &str = "issuing.pem";
pub const ISSUING_KEY: &str = "issuing.key";
pub const CHAIN: &str = "chain.pem";

/// A random positive 128-bit certificate serial number.
pub fn random_serial() -> SerialNumber {
    use rand_core::{OsRng, RngCore};
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    // Positive and exactly 16 octets in DER.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// Files and registry rows produced for a new or imported CA, ready to commit.
pub struct CaMaterial {
    pub root_der: Vec<u8>,
    pub issuing_der: Vec<u8>,
    /// Intermediate certificates between issuing and root (usually none).
    pub middle: Vec<Vec<u8>>,
    /// Encrypted PEM of the issuing key.
    pub issuing_key_pem: Zeroizing<String>,
    /// Encrypted PEM of the root key, when we hold it.
    pub root_key_pem: Option<Zeroizing<String>>,
}

impl CaMaterial {
    pub fn chain_pem(&self) -> String {
        let mut s = to_pem("CERTIFICATE", &self.issuing_der);
        for m in &self.middle {
            s.push_str(&to_pem("CERTIFICATE", m));
        }
        if self.root_der != self.issuing_der {
            s.push_str(&to_pem("CERTIFICATE", &self.root_der));
        }
        s
    }
}

/// Makes a new root + issuing CA from the `root-ca` and `issuing-ca` profiles.
pub fn generate(
    name: &str,
    org: &str,
    templates: Option<&Path>,
    passphrase: &[u8],
) -> Result<CaMaterial> {
    let now = OffsetDateTime::now_utc();
    let mut vars = Vars::new();
    vars.insert("ca_name".into(), name.into());
    vars.insert("org".into(), org.into());

    let root_profile = Profile::load("root-ca", templates)?;
    let issuing_profile = Profile::load("issuing-ca", templates)?;
    if !root_profile.is_ca || !issuing_profile.is_ca {
        return Err(Error::input(
            "root-ca and issuing-ca profiles must have kind = \"ca\"",
        ));
    }

    let root_key = keys::generate()?;
    let mut root_params = root_profile.render(&vars, now)?;
    root_params.serial_number = Some(random_serial());
    root_params.use_authority_key_identifier_extension = false;
    let root_cert = root_params
        .self_signed(&root_key)
        .map_err(|e| Error::crypto(format!("signing root CA: {e}")))?;

    let issuing_key = keys::generate()?;
    let mut issuing_params = issuing_profile.render(&vars, now)?;
    issuing_params.serial_number = Some(random_serial());
    let root_issuer = Issuer::new(root_params, &root_key);
    let issuing_cert = issuing_params
        .signed_by(&issuing_key, &root_issuer)
        .map_err(|e| Error::crypto(format!("signing issuing CA: {e}")))?;

    Ok(CaMaterial {
        root_der: root_cert.der().to_vec(),
        issuing_der: issuing_cert.der().to_vec(),
        middle: Vec::new(),
        issuing_key_pem: keys::encrypt_pkcs8_pem(&issuing_key.serialize_der(), passphrase)?,
        root_key_pem: Some(keys::encrypt_pkcs8_pem(
            &root_key.serialize_der(),
            passphrase,
        )?),
    })
}

/// Checks an existing CA certificate + key (+ chain) and re-encrypts the key.
pub fn import(
    cert_bytes: &[u8],
    key_pem: &str,
    key_passphrase: Option<&[u8]>,
    chain_bytes: Option<&[u8]>,
    passphrase: &[u8],
) -> Result<CaMaterial> {
    let certs = read_certs(cert_bytes, "CA certificate")?;
    let issuing_der = certs[0].clone();
    let mut chain: Vec<Vec<u8>> = certs[1..].to_vec();
    if let Some(c) = chain_bytes {
        chain.extend(read_certs(c, "CA chain")?);
    }
    let issuing = info_of(&issuing_der)?;
    if !issuing.is_ca {
        return Err(Error::crypto(format!(
            "certificate '{}' is not a CA (basicConstraints CA:TRUE missing)",
            issuing.subject
        )));
    }
    let pkcs8 = keys::read_private_key_pem(key_pem, key_passphrase, "CA key")?;
    let key = keys::key_pair_from_pkcs8(&pkcs8, "CA key")?;
    check_key_matches(&issuing_der, &key)?;

    // Order the chain from the issuing CA up to a self-signed root.
    let mut ordered = Vec::new();
    let mut current = issuing.clone();
    let mut current_der = issuing_der.clone();
    while !current.self_signed {
        let parent = chain
            .iter()
            .find(|d| {
                info_of(d)
                    .map(|i| i.subject == current.issuer && i.is_ca)
                    .unwrap_or(false)
            })
            .cloned()
            .ok_or_else(|| {
                Error::crypto(format!(
                    "no certificate for issuer '{}' in the chain: pass --chain with the CA chain up to the root",
                    current.issuer
                ))
            })?;
        verify_signed_by(&current_der, &parent)?;
        current = info_of(&parent)?;
        current_der = parent.clone();
        ordered.push(parent);
        if ordered.len() > 8 {
            return Err(Error::crypto("CA chain is longer than 8 certificates"));
        }
    }
    let root_der = ordered.pop().unwrap_or_else(|| issuing_der.clone());
    Ok(CaMaterial {
        root_der,
        issuing_der,
        middle: ordered,
        issuing_key_pem: keys::encrypt_pkcs8_pem(&pkcs8, passphrase)?,
        root_key_pem: None,
    })
}

/// Fails unless `key` is the private key of `cert_der`.
pub fn check_key_matches(cert_der: &[u8], key: &KeyPair) -> Result<()> {
    let cert = super::cert::parse_der(cert_der)?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(Error::crypto(
            "the private key does not match the certificate's public key",
        ));
    }
    Ok(())
}

pub fn verify_signed_by(child_der: &[u8], parent_der: &[u8]) -> Result<()> {
    let child = super::cert::parse_der(child_der)?;
    let parent = super::cert::parse_der(parent_der)?;
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| {
            Error::crypto(format!(
                "'{}' is not signed by '{}'",
                child.subject(),
                parent.subject()
            ))
        })
}

/// Where a CA's private key lives. Everything that signs goes through rcgen's
/// `SigningKey`, so a key on a token is one more variant, not a new code path.
pub enum CaKey {
    /// A PKCS#8 key read from an encrypted file and held in memory.
    File(KeyPair),
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::File(k) => PublicKeyData::algorithm(k),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
        }
    }
}

/// The active issuing CA, unlocked for signing.
pub struct CaSigner {
    pub record: CaRecord,
    pub issuer: Issuer<'static, CaKey>,
    /// Issuing CA (+ intermediates) + root, PEM, for bundles and devices.
    pub chain_pem: String,
    pub chain_der: Vec<Vec<u8>>,
    /// Key of the verification marks stored with every certificate this signer records.
    pub audit_key: AuditKey,
    /// Hex SHA-256 of the issuing CA certificate's DER, as bound into each mark.
    pub ca_fingerprint: String,
}

impl CaSigner {
    /// The verification mark of a certificate (hex SHA-256 fingerprint) this CA issued.
    pub fn mark(&self, cert_fingerprint: &str) -> Vec<u8> {
        self.audit_key.mark(cert_fingerprint, &self.ca_fingerprint)
    }
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("ca", &self.record.subject)
            .finish_non_exhaustive()
    }
}

/// Unlocks the issuing CA `record` from its files under `ca_dir`: the encrypted key
/// (checked against the certificate), the chain and the audit mark key.
pub fn unlock(record: CaRecord, ca_dir: &Path, passphrase: &[u8]) -> Result<CaSigner> {
    let key_file = ca_dir.join(record.key_file.as_deref().unwrap_or(ISSUING_KEY));
    let pem = Zeroizing::new(fs::read_to_string(&key_file).map_err(|e| Error::io(&key_file, e))?);
    let pkcs8 = keys::read_private_key_pem(&pem, Some(passphrase), "the issuing CA key")?;
    let key = keys::key_pair_from_pkcs8(&pkcs8, "the issuing CA key")?;
    check_key_matches(&record.der, &key)?;
    let issuer = Issuer::from_ca_cert_der(&record.der.clone().into(), CaKey::File(key))
        .map_err(|e| Error::crypto(format!("issuing CA certificate: {e}")))?;
    let chain_path = ca_dir.join(CHAIN);
    let chain_pem = fs::read_to_string(&chain_path).map_err(|e| Error::io(&chain_path, e))?;
    let chain_der = read_certs(chain_pem.as_bytes(), "CA chain")?;
    let audit_key = AuditKey::load_or_create(ca_dir)?;
    let ca_fingerprint = super::cert::sha256_hex(&record.der);
    Ok(CaSigner {
        record,
        issuer,
        chain_pem,
        chain_der,
        audit_key,
        ca_fingerprint,
    })
}
