//! Fixtures for the PKI's unit tests: CAs made in memory, no registry. Keys are
//! encrypted with the real PBKDF2 cost, so each CA is made once per test binary.

use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use time::OffsetDateTime;

use super::ca::{self, CaMaterial};
use super::issue::{issue, Issued};
use super::keys;
use super::mark::AuditKey;
use super::profile::{Profile, Vars};
use super::signer::{CaKey, CaSigner};
use super::trust::{Anchor, TrustStore};

pub const PASS: &[u8] = b"correct horse battery staple";

pub struct TestCa {
    pub material: CaMaterial,
    pub signer: CaSigner,
}

/// The CA "Test" of org "ACME".
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| make("Test"))
}

/// Another CA with the same names (so the same subjects) and other keys.
pub fn foreign_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| make("Test"))
}

fn make(name: &str) -> TestCa {
    let material = ca::generate(name, "ACME", None, PASS).unwrap();
    let signer = signer_for(&material, issuing_key(&material));
    TestCa { material, signer }
}

pub fn issuing_key(m: &CaMaterial) -> KeyPair {
    let pkcs8 = keys::read_private_key_pem(m.issuing_key_pem(), Some(PASS), "issuing key").unwrap();
    keys::key_pair_from_pkcs8(&pkcs8, "issuing key").unwrap()
}

/// Issuing CA first, then the root: the order of `chain.pem`.
pub fn chain_der(m: &CaMaterial) -> Vec<Vec<u8>> {
    let mut chain = vec![m.issuing_der.clone()];
    chain.extend(m.middle.iter().cloned());
    chain.push(m.root_der.clone());
    chain
}

pub fn audit_key() -> AuditKey {
    let dir = tempfile::tempdir().unwrap();
    AuditKey::load_or_create(dir.path()).unwrap()
}

pub fn signer_for(m: &CaMaterial, key: KeyPair) -> CaSigner {
    CaSigner::new(
        7,
        "Test",
        m.issuing_der.clone(),
        chain_der(m),
        CaKey::File(key),
        audit_key(),
    )
    .unwrap()
}

/// A trust store of the root and issuing CA of each of `cas`.
pub fn trust(cas: &[&TestCa]) -> TrustStore {
    let mut anchors = Vec::new();
    for (i, c) in cas.iter().enumerate() {
        for (j, der) in [&c.material.root_der, &c.material.issuing_der]
            .into_iter()
            .enumerate()
        {
            anchors.push(Anchor {
                id: (10 * i + j) as i64,
                name: format!("ca{i}-{j}"),
                der: der.clone(),
            });
        }
    }
    TrustStore::new(anchors)
}

/// A device certificate from the built-in `device` profile, issued at `now`.
pub fn device_cert(signer: &CaSigner, serial: &str, now: OffsetDateTime) -> Issued {
    let profile = Profile::load("device", None).unwrap();
    let mut vars = Vars::new();
    for (k, v) in [
        ("serial", serial),
        ("org", "ACME"),
        ("ca_name", "Test"),
        ("profile", "device"),
    ] {
        vars.insert(k.into(), v.into());
    }
    let key = keys::generate().unwrap();
    issue(signer, &profile, &vars, &key, now).unwrap()
}

/// A chain of plain rcgen CAs: a self-signed root, then `below` CAs each signed by
/// the one before. Returns the DERs, root first, and the last CA as an issuer.
pub fn ca_ladder(below: usize) -> (Vec<Vec<u8>>, rcgen::Issuer<'static, KeyPair>) {
    let params = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    };
    let key = keys::generate().unwrap();
    let root = params("Ladder 0");
    let mut ders = vec![root.self_signed(&key).unwrap().der().to_vec()];
    let mut issuer = rcgen::Issuer::new(root, key);
    for i in 1..=below {
        let key = keys::generate().unwrap();
        let p = params(&format!("Ladder {i}"));
        ders.push(p.signed_by(&key, &issuer).unwrap().der().to_vec());
        issuer = rcgen::Issuer::new(p, key);
    }
    (ders, issuer)
}

/// An end-entity certificate named `cn`, signed by `issuer`.
pub fn leaf(issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>, cn: &str) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = keys::generate().unwrap();
    p.signed_by(&key, issuer).unwrap().der().to_vec()
}
