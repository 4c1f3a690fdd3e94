//! The certificate authority: a root and an issuing CA, keys encrypted at rest or kept
//! on a PKCS#11 token.

use std::fs;
use std::path::Path;

use rcgen::{Issuer, PublicKeyData, SerialNumber, SigningKey};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::cert::{info_of, read_certs, to_pem};
use super::keys;
use super::mark::AuditKey;
use super::profile::{Profile, Vars};
use super::signer::{check_key_matches, CaKey, CaSigner};
use super::token::{Pkcs11Uri, TokenKey};
use super::trust::{Anchor, ChainEnd, NoIssuer, TrustStore, MAX_DEPTH};
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
    pub keys: CaKeys,
}

/// Where the CA's private keys are kept.
pub enum CaKeys {
    /// Encrypted PKCS#8 PEM files: the issuing key, and the root key when we hold it.
    Files {
        issuing: Zeroizing<String>,
        root: Option<Zeroizing<String>>,
    },
    /// Keys on a PKCS#11 token, recorded by URI (canonical, no PIN): the issuing
    /// key, and the root key when we hold it.
    Token {
        issuing: String,
        root: Option<String>,
    },
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

    /// The encrypted issuing key PEM of a CA made with key files.
    #[cfg(test)]
    pub fn issuing_key_pem(&self) -> &str {
        match &self.keys {
            CaKeys::Files { issuing, .. } => issuing,
            CaKeys::Token { .. } => panic!("the keys are on a token"),
        }
    }

    /// The encrypted root key PEM of a CA made with key files.
    #[cfg(test)]
    pub fn root_key_pem(&self) -> &str {
        match &self.keys {
            CaKeys::Files { root: Some(r), .. } => r,
            _ => panic!("no root key file"),
        }
    }
}

/// Makes a new root + issuing CA from the `root-ca` and `issuing-ca` profiles, with
/// new keys encrypted with `passphrase`.
pub fn generate(
    name: &str,
    org: &str,
    templates: Option<&Path>,
    passphrase: &[u8],
) -> Result<CaMaterial> {
    let root_key = keys::generate()?;
    let issuing_key = keys::generate()?;
    let (root_der, issuing_der) = certify(name, org, templates, &root_key, &issuing_key)?;
    Ok(CaMaterial {
        root_der,
        issuing_der,
        middle: Vec::new(),
        keys: CaKeys::Files {
            issuing: keys::encrypt_pkcs8_pem(&issuing_key.serialize_der(), passphrase)?,
            root: Some(keys::encrypt_pkcs8_pem(
                &root_key.serialize_der(),
                passphrase,
            )?),
        },
    })
}

/// Makes a new root + issuing CA as `generate` does, for keys made on a token.
pub fn generate_on_token(
    name: &str,
    org: &str,
    templates: Option<&Path>,
    root_key: &TokenKey,
    issuing_key: &TokenKey,
) -> Result<CaMaterial> {
    let (root_der, issuing_der) = certify(name, org, templates, root_key, issuing_key)?;
    Ok(CaMaterial {
        root_der,
        issuing_der,
        middle: Vec::new(),
        keys: CaKeys::Token {
            issuing: issuing_key.uri().to_string(),
            root: Some(root_key.uri().to_string()),
        },
    })
}

/// The root certificate (self-signed by `root_key`) and the issuing CA certificate
/// (for `issuing_key`, signed by the root), DER.
fn certify<K: SigningKey>(
    name: &str,
    org: &str,
    templates: Option<&Path>,
    root_key: &K,
    issuing_key: &K,
) -> Result<(Vec<u8>, Vec<u8>)> {
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

    let mut root_params = root_profile.render(&vars, now)?;
    root_params.serial_number = Some(random_serial());
    root_params.use_authority_key_identifier_extension = false;
    let root_cert = root_params
        .self_signed(root_key)
        .map_err(|e| super::signer::signing_failed("signing root CA", e))?;

    let mut issuing_params = issuing_profile.render(&vars, now)?;
    issuing_params.serial_number = Some(random_serial());
    let root_issuer = Issuer::new(root_params, root_key);
    let issuing_cert = issuing_params
        .signed_by(issuing_key, &root_issuer)
        .map_err(|e| super::signer::signing_failed("signing issuing CA", e))?;
    Ok((root_cert.der().to_vec(), issuing_cert.der().to_vec()))
}

/// Checks an existing CA certificate + key (+ chain) and re-encrypts the key.
pub fn import(
    cert_bytes: &[u8],
    key_pem: &str,
    key_passphrase: Option<&[u8]>,
    chain_bytes: Option<&[u8]>,
    passphrase: &[u8],
) -> Result<CaMaterial> {
    let pkcs8 = keys::read_private_key_pem(key_pem, key_passphrase, "CA key")?;
    let key = keys::key_pair_from_pkcs8(&pkcs8, "CA key")?;
    let mut m = import_certs(cert_bytes, chain_bytes, &key)?;
    m.keys = CaKeys::Files {
        issuing: keys::encrypt_pkcs8_pem(&pkcs8, passphrase)?,
        root: None,
    };
    Ok(m)
}

/// Checks an existing CA certificate (+ chain) against its key on a token.
pub fn import_token(
    cert_bytes: &[u8],
    key: &TokenKey,
    chain_bytes: Option<&[u8]>,
) -> Result<CaMaterial> {
    let mut m = import_certs(cert_bytes, chain_bytes, key)?;
    m.keys = CaKeys::Token {
        issuing: key.uri().to_string(),
        root: None,
    };
    Ok(m)
}

/// The certificates of an imported CA, checked against `key`; no keys yet.
fn import_certs(
    cert_bytes: &[u8],
    chain_bytes: Option<&[u8]>,
    key: &impl PublicKeyData,
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
    check_key_matches(&issuing_der, key)?;

    let mut ordered = if issuing.self_signed {
        Vec::new()
    } else {
        chain_to_root(&issuing_der, chain)?
    };
    let root_der = ordered.pop().unwrap_or_else(|| issuing_der.clone());
    Ok(CaMaterial {
        root_der,
        issuing_der,
        middle: ordered,
        keys: CaKeys::Files {
            issuing: Zeroizing::new(String::new()),
            root: None,
        },
    })
}

/// The CAs above `cert_der`, nearest first up to a self-signed root, taken from the
/// certificates `given` (in any order, extra ones ignored).
fn chain_to_root(cert_der: &[u8], given: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let given = TrustStore::new(given.into_iter().enumerate().map(|(i, der)| Anchor {
        id: i as i64,
        name: String::new(),
        der,
    }));
    let walk = given.chain(&super::cert::parse_der(cert_der)?);
    match walk.end {
        ChainEnd::Root => Ok(walk.cas.iter().map(|c| c.der.clone()).collect()),
        ChainEnd::Broken {
            issuer,
            why: NoIssuer::Unknown,
            ..
        } => Err(Error::crypto(format!(
            "no certificate for issuer '{issuer}' in the chain: pass --chain with the CA chain up to the root"
        ))),
        ChainEnd::Broken {
            subject,
            why: NoIssuer::BadSignature(named),
            ..
        } => Err(Error::crypto(format!(
            "'{subject}' is not signed by '{}'",
            named[0].subject
        ))),
        ChainEnd::TooLong => Err(Error::crypto(format!(
            "CA chain is longer than {MAX_DEPTH} certificates"
        ))),
    }
}

/// Where the key of a recorded CA is: a file under the CA directory, or the token a
/// `pkcs11:` URI names (`key_file` holds either).
pub enum KeyRef {
    File(std::path::PathBuf),
    Token(Pkcs11Uri),
}

impl KeyRef {
    pub fn of(record: &CaRecord, ca_dir: &Path) -> Result<KeyRef> {
        match record.key_file.as_deref() {
            Some(uri) if uri.starts_with("pkcs11:") => {
                Ok(KeyRef::Token(Pkcs11Uri::parse(uri).map_err(|e| {
                    Error::crypto(format!("the recorded key of CA '{}': {e}", record.subject))
                })?))
            }
            other => Ok(KeyRef::File(ca_dir.join(other.unwrap_or(ISSUING_KEY)))),
        }
    }
}

/// Unlocks the issuing CA `record` from its files under `ca_dir`: the encrypted key
/// (checked against the certificate), the chain and the audit mark key.
pub fn unlock(record: CaRecord, ca_dir: &Path, passphrase: &[u8]) -> Result<CaSigner> {
    let key_file = match KeyRef::of(&record, ca_dir)? {
        KeyRef::File(f) => f,
        KeyRef::Token(uri) => {
            return Err(Error::Internal(format!(
                "the CA key is on a token ({uri}), not in a file"
            )))
        }
    };
    let pem = Zeroizing::new(fs::read_to_string(&key_file).map_err(|e| Error::io(&key_file, e))?);
    let pkcs8 = keys::read_private_key_pem(&pem, Some(passphrase), "the issuing CA key")?;
    let key = keys::key_pair_from_pkcs8(&pkcs8, "the issuing CA key")?;
    unlock_with(record, ca_dir, CaKey::File(key))
}

/// Unlocks the issuing CA `record` with its key on a token, logging in with `pin`.
pub fn unlock_token(
    record: CaRecord,
    ca_dir: &Path,
    uri: &Pkcs11Uri,
    pin: &str,
) -> Result<CaSigner> {
    let key = TokenKey::open(uri, pin)?;
    unlock_with(record, ca_dir, CaKey::Pkcs11(key))
}

/// The signer of `record` with `key` (checked against the certificate), the chain
/// and the audit mark key from `ca_dir`.
fn unlock_with(record: CaRecord, ca_dir: &Path, key: CaKey) -> Result<CaSigner> {
    let chain_path = ca_dir.join(CHAIN);
    let chain_pem = fs::read_to_string(&chain_path).map_err(|e| Error::io(&chain_path, e))?;
    let chain_der = read_certs(chain_pem.as_bytes(), "CA chain")?;
    let audit_key = AuditKey::load_or_create(ca_dir)?;
    CaSigner::new(
        record.id,
        &record.name,
        record.der,
        chain_der,
        key,
        audit_key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testing::{ca, ca_ladder, device_cert, foreign_ca, issuing_key, PASS};

    fn pem(der: &[u8]) -> Vec<u8> {
        to_pem("CERTIFICATE", der).into_bytes()
    }

    fn import_err(cert: &[u8], key: &str, chain: Option<&[u8]>) -> String {
        import(cert, key, None, chain, b"new")
            .err()
            .expect("refused")
            .to_string()
    }

    #[test]
    fn import_orders_the_chain_and_re_encrypts_the_key() {
        let m = &ca().material;
        let key = issuing_key(m).serialize_pem();
        // The chain may come in the certificate file or separately, in any order,
        // with extra certificates.
        let mut bundle = pem(&m.issuing_der);
        bundle.extend(pem(&foreign_ca().material.issuing_der));
        bundle.extend(pem(&m.root_der));
        for (cert, chain) in [
            (pem(&m.issuing_der), Some(pem(&m.root_der))),
            (bundle, None),
        ] {
            let got = import(&cert, &key, None, chain.as_deref(), b"new").unwrap();
            assert_eq!(got.issuing_der, m.issuing_der);
            assert_eq!(got.root_der, m.root_der);
            assert!(got.middle.is_empty());
            assert_eq!(got.chain_pem(), m.chain_pem());
            let CaKeys::Files {
                issuing,
                root: None,
            } = &got.keys
            else {
                panic!("an imported CA has an issuing key file and no root key")
            };
            let back = keys::read_private_key_pem(issuing, Some(b"new"), "k").unwrap();
            assert_eq!(back.as_slice(), issuing_key(m).serialize_der().as_slice());
        }
    }

    #[test]
    fn a_self_signed_ca_imports_as_its_own_root() {
        let m = &ca().material;
        let got = import(&m.root_der, m.root_key_pem(), Some(PASS), None, b"new").unwrap();
        assert_eq!(got.root_der, m.root_der);
        assert_eq!(got.issuing_der, m.root_der);
        assert_eq!(got.chain_pem(), to_pem("CERTIFICATE", &m.root_der));
    }

    #[test]
    fn import_refuses_mismatches() {
        let m = &ca().material;
        let key = issuing_key(m).serialize_pem();
        let leaf = device_cert(&ca().signer, "LEAF", OffsetDateTime::now_utc());
        let e = import_err(&leaf.der, &key, None);
        assert!(
            e.contains("'CN=LEAF, O=ACME, serialNumber=LEAF' is not a CA"),
            "{e}"
        );
        let other_key = issuing_key(&foreign_ca().material).serialize_pem();
        let e = import_err(&m.issuing_der, &other_key, Some(&m.root_der));
        assert!(e.contains("does not match"), "{e}");
        let e = import_err(&m.issuing_der, &key, None);
        assert!(
            e.contains("no certificate for issuer 'CN=Test Root CA, O=ACME' in the chain")
                && e.contains("--chain"),
            "{e}"
        );
        // A root of the same name with another key.
        let e = import_err(&m.issuing_der, &key, Some(&foreign_ca().material.root_der));
        assert_eq!(
            e,
            "'CN=Test Issuing CA, O=ACME' is not signed by 'CN=Test Root CA, O=ACME'"
        );
        let e = import(
            &m.issuing_der,
            m.issuing_key_pem(),
            Some(b"wrong"),
            None,
            b"new",
        )
        .err()
        .expect("refused");
        assert!(matches!(e, Error::WrongPassphrase(_)), "{e:?}");
    }

    #[test]
    fn chains_of_up_to_eight_cas_are_followed() {
        let (ladder, _) = ca_ladder(MAX_DEPTH + 1);
        // Eight CAs above ladder[8], given root first: returned nearest first.
        let got = chain_to_root(&ladder[MAX_DEPTH], ladder[..MAX_DEPTH].to_vec()).unwrap();
        let want: Vec<Vec<u8>> = ladder[..MAX_DEPTH].iter().rev().cloned().collect();
        assert_eq!(got, want);
        let e = chain_to_root(&ladder[MAX_DEPTH + 1], ladder[..=MAX_DEPTH].to_vec())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "CA chain is longer than 8 certificates");
    }
}
