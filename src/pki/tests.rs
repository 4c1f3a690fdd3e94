//! The PKI end to end with no registry: generate a CA, issue, verify through a trust
//! store, build a CRL and read it back.

use time::{Duration, OffsetDateTime};

use super::ca::{self, CaMaterial};
use super::crl::{self, Reason};
use super::issue::issue;
use super::keys;
use super::mark::AuditKey;
use super::profile::{Profile, Vars};
use super::signer::{CaKey, CaSigner};
use super::trust::{Anchor, TrustStore};
use crate::model::Revoked;

const PASS: &[u8] = b"unit-test passphrase";

fn material(name: &str) -> CaMaterial {
    ca::generate(name, "Unit Org", None, PASS).unwrap()
}

fn signer(m: &CaMaterial, dir: &std::path::Path) -> CaSigner {
    let pkcs8 = keys::read_private_key_pem(m.issuing_key_pem(), Some(PASS), "issuing key").unwrap();
    let key = keys::key_pair_from_pkcs8(&pkcs8, "issuing key").unwrap();
    CaSigner::new(
        7,
        "Unit",
        m.issuing_der.clone(),
        vec![m.issuing_der.clone(), m.root_der.clone()],
        CaKey::File(key),
        AuditKey::load_or_create(dir).unwrap(),
    )
    .unwrap()
}

fn store(m: &CaMaterial) -> TrustStore {
    TrustStore::new([
        Anchor {
            id: 1,
            name: "root".into(),
            der: m.root_der.clone(),
        },
        Anchor {
            id: 7,
            name: "issuing".into(),
            der: m.issuing_der.clone(),
        },
    ])
}

fn device_cert(s: &CaSigner, serial: &str) -> super::issue::Issued {
    let profile = Profile::load("device", None).unwrap();
    let mut vars = Vars::new();
    vars.insert("serial".into(), serial.into());
    vars.insert("org".into(), "Unit Org".into());
    vars.insert("ca_name".into(), "Unit".into());
    vars.insert("profile".into(), "device".into());
    let key = keys::generate().unwrap();
    issue(s, &profile, &vars, &key, OffsetDateTime::now_utc()).unwrap()
}

#[test]
fn generate_issue_verify_and_revoke_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let m = material("Unit");
    let s = signer(&m, dir.path());
    let cert = device_cert(&s, "UNIT-0001");
    assert!(
        cert.info.subject.contains("UNIT-0001"),
        "{}",
        cert.info.subject
    );

    // Chains to our root, now; not in 20 years; not for another CA's store.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let v = store(&m).verify(&cert.der, now).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.chain.len(), 2, "{:?}", v.chain);
    let later = store(&m)
        .verify(&cert.der, now + 20 * 366 * 86_400)
        .unwrap();
    assert!(!later.time_ok && !later.ok());
    let other = material("Other");
    let foreign = store(&other).verify(&cert.der, now).unwrap();
    assert!(!foreign.chain_ok && !foreign.ok(), "{foreign:?}");

    // A CRL over it: number, entry with its reason, authority key id = CA's SKI.
    let this = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let rows = [Revoked {
        serial_hex: cert.info.serial_hex.clone(),
        revoked_at: crate::model::Timestamp::parse("2026-11-30T12:00:00Z"),
        reason: Some(Reason::KeyCompromise.as_str().into()),
    }];
    let der = crl::build(&s, &rows, 42, this, this + Duration::days(7)).unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
    assert_eq!(
        parsed.crl_number().map(|n| n.to_string()),
        Some("42".to_string())
    );
    let entries: Vec<_> = parsed.iter_revoked_certificates().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(hex::encode(entries[0].raw_serial()), cert.info.serial_hex);
    let reason = entries[0].reason_code().map(|(_, r)| r.0);
    assert_eq!(reason, Some(Reason::KeyCompromise.code()));
    let issuing = x509_parser::parse_x509_certificate(&m.issuing_der)
        .unwrap()
        .1;
    assert!(parsed.verify_signature(issuing.public_key()).is_ok());

    // A CRL row the registry could never have written is refused, not skipped.
    let bad = [Revoked {
        serial_hex: "zz".into(),
        revoked_at: None,
        reason: None,
    }];
    assert!(crl::build(&s, &bad, 43, this, this + Duration::days(7)).is_err());
}

#[test]
fn a_signer_refuses_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let m = material("Unit");
    let wrong = keys::generate().unwrap();
    let e = CaSigner::new(
        7,
        "Unit",
        m.issuing_der.clone(),
        vec![m.issuing_der.clone(), m.root_der.clone()],
        CaKey::File(wrong),
        AuditKey::load_or_create(dir.path()).unwrap(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(e, crate::Error::Crypto(_)), "{e}");
}

#[test]
fn a_wrong_passphrase_is_its_own_error() {
    let m = material("Unit");
    let e = keys::read_private_key_pem(m.issuing_key_pem(), Some(b"not it"), "issuing key")
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, crate::Error::WrongPassphrase(_)), "{e}");
}
