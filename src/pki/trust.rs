//! A trust store: CA certificates parsed once, answering "which of them signed this
//! certificate?" and "does it chain up to a self-signed root?". `identity verify`, the
//! audit's chain check and CA import all ask through it.

use x509_parser::prelude::*;

use super::cert::sha256_hex;

/// The longest chain walked above a certificate; a longer one (or a loop) is refused.
pub const MAX_DEPTH: usize = 8;

/// A CA certificate as handed to the trust store.
#[derive(Debug, Clone)]
pub struct Anchor {
    /// The caller's handle for this CA (the id it is recorded under, or an index).
    pub id: i64,
    /// The caller's name for this CA, for messages.
    pub name: String,
    pub der: Vec<u8>,
}

/// A CA of the store, parsed once.
#[derive(Debug, Clone)]
pub struct TrustedCa {
    pub id: i64,
    pub name: String,
    pub der: Vec<u8>,
    /// Hex SHA-256 of `der` as given (not as recorded anywhere), so that a CA altered
    /// behind cradle's back no longer matches what was bound to the original.
    pub fingerprint: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub self_signed: bool,
    subject_raw: Vec<u8>,
    spki_raw: Vec<u8>,
}

impl TrustedCa {
    fn parse(a: Anchor) -> Option<TrustedCa> {
        let (_, cert) = X509Certificate::from_der(&a.der).ok()?;
        // A certificate that is not a CA cannot issue; it is no anchor.
        if !cert.is_ca() {
            return None;
        }
        let subject_raw = cert.subject().as_raw().to_vec();
        Some(TrustedCa {
            id: a.id,
            name: a.name,
            fingerprint: sha256_hex(&a.der),
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            self_signed: subject_raw == cert.issuer().as_raw()
                && cert.verify_signature(None).is_ok(),
            spki_raw: cert.public_key().raw.to_vec(),
            subject_raw,
            der: a.der,
        })
    }

    /// Whether this CA's name is `cert`'s issuer name.
    pub fn names(&self, cert: &X509Certificate<'_>) -> bool {
        self.subject_raw == cert.issuer().as_raw()
    }

    /// Whether `cert`'s signature verifies with this CA's public key.
    pub fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        // Re-parsing the ~90-byte key costs far less than the signature check it serves.
        match SubjectPublicKeyInfo::from_der(&self.spki_raw) {
            Ok((_, spki)) => cert.verify_signature(Some(&spki)).is_ok(),
            Err(_) => false,
        }
    }

    /// Whether `now` (Unix seconds) is inside the CA certificate's validity.
    pub fn valid_at(&self, now: i64) -> bool {
        now >= self.not_before && now <= self.not_after
    }
}

/// Why no CA of the store is the issuer of a certificate.
#[derive(Debug)]
pub enum NoIssuer<'a> {
    /// No CA of the store has the certificate's issuer name.
    Unknown,
    /// These CAs have the issuer name, but the signature verifies with none of them.
    BadSignature(Vec<&'a TrustedCa>),
}

/// How a walk up from a certificate ended.
#[derive(Debug)]
pub enum ChainEnd<'a> {
    /// At a self-signed root of the store.
    Root,
    /// At a certificate whose issuer is not in the store.
    Broken {
        subject: String,
        issuer: String,
        why: NoIssuer<'a>,
    },
    /// After `MAX_DEPTH` CAs without reaching a root.
    TooLong,
}

/// The CAs above a certificate, nearest first, and how the walk ended.
#[derive(Debug)]
pub struct Chain<'a> {
    pub cas: Vec<&'a TrustedCa>,
    pub end: ChainEnd<'a>,
}

/// CA certificates, parsed once; shared across threads as it is.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    cas: Vec<TrustedCa>,
}

impl TrustStore {
    /// A store of the anchors that parse as CA certificates; the others are left out
    /// (they can sign nothing a relying party should accept).
    pub fn new(anchors: impl IntoIterator<Item = Anchor>) -> TrustStore {
        TrustStore {
            cas: anchors.into_iter().filter_map(TrustedCa::parse).collect(),
        }
    }

    pub fn cas(&self) -> &[TrustedCa] {
        &self.cas
    }

    /// The CA given under `id`.
    pub fn get(&self, id: i64) -> Option<&TrustedCa> {
        self.cas.iter().find(|c| c.id == id)
    }

    /// The CA that signed `cert`: one with its issuer name whose key verifies it.
    pub fn issuer_of(
        &self,
        cert: &X509Certificate<'_>,
    ) -> std::result::Result<&TrustedCa, NoIssuer<'_>> {
        let named: Vec<&TrustedCa> = self.cas.iter().filter(|c| c.names(cert)).collect();
        if named.is_empty() {
            return Err(NoIssuer::Unknown);
        }
        match named.iter().find(|c| c.signed(cert)) {
            Some(c) => Ok(c),
            None => Err(NoIssuer::BadSignature(named)),
        }
    }

    /// Walks up from `cert` through the store's CAs until a self-signed root.
    pub fn chain(&self, cert: &X509Certificate<'_>) -> Chain<'_> {
        let mut cas: Vec<&TrustedCa> = Vec::new();
        let mut next = match self.issuer_of(cert) {
            Ok(ca) => ca,
            Err(why) => return broken(cas, cert, why),
        };
        loop {
            cas.push(next);
            if next.self_signed {
                return Chain {
                    cas,
                    end: ChainEnd::Root,
                };
            }
            if cas.len() >= MAX_DEPTH {
                return Chain {
                    cas,
                    end: ChainEnd::TooLong,
                };
            }
            let (_, parsed) =
                X509Certificate::from_der(&next.der).expect("parsed when the store was built");
            next = match self.issuer_of(&parsed) {
                Ok(ca) => ca,
                Err(why) => return broken(cas, &parsed, why),
            };
        }
    }
}

fn broken<'a>(cas: Vec<&'a TrustedCa>, cert: &X509Certificate<'_>, why: NoIssuer<'a>) -> Chain<'a> {
    Chain {
        cas,
        end: ChainEnd::Broken {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            why,
        },
    }
}

#[cfg(test)]
mod tests {
    use ::time::{Duration, OffsetDateTime};

    use super::*;
    use crate::pki::cert::parse_der;
    use crate::pki::testing::{self, ca, ca_ladder, device_cert, foreign_ca, leaf};

    #[test]
    fn a_device_certificate_verifies_up_to_the_root() {
        let now = OffsetDateTime::now_utc();
        let issued = device_cert(&ca().signer, "DEV-1", now);
        let trust = testing::trust(&[ca()]);
        let v = trust.verify(&issued.der, now.unix_timestamp()).unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!(
            v.chain,
            ["CN=Test Issuing CA, O=ACME", "CN=Test Root CA, O=ACME"]
        );
        assert_eq!(v.fingerprint, issued.info.fingerprint);
        let cert = parse_der(&issued.der).unwrap();
        let walk = trust.chain(&cert);
        assert!(matches!(walk.end, ChainEnd::Root));
        assert_eq!(walk.cas[0].id, 1, "the issuing CA is the second anchor");
        assert_eq!(trust.issuer_of(&cert).unwrap().name, "ca0-1");
    }

    #[test]
    fn a_certificate_of_a_foreign_ca_is_refused() {
        let now = OffsetDateTime::now_utc();
        let issued = device_cert(&foreign_ca().signer, "ROGUE-1", now);
        let trust = testing::trust(&[ca()]);
        let v = trust.verify(&issued.der, now.unix_timestamp()).unwrap();
        assert!(!v.ok() && !v.chain_ok && v.time_ok, "{v:?}");
        assert!(v.chain.is_empty());
        assert_eq!(
            v.problems,
            ["no registered CA signed 'CN=ROGUE-1, O=ACME, serialNumber=ROGUE-1' (issuer 'CN=Test Issuing CA, O=ACME')"]
        );
        // Same issuer name, other key: named, but the signature does not verify.
        let cert = parse_der(&issued.der).unwrap();
        match trust.issuer_of(&cert) {
            Err(NoIssuer::BadSignature(named)) => {
                assert_eq!(named.len(), 1);
                assert_eq!(named[0].subject, "CN=Test Issuing CA, O=ACME");
            }
            other => panic!("{other:?}"),
        }
        // With both CAs known it chains to its own root, never across.
        let both = testing::trust(&[ca(), foreign_ca()]);
        let walk = both.chain(&cert);
        assert!(matches!(walk.end, ChainEnd::Root));
        assert_eq!(walk.cas.iter().map(|c| c.id).collect::<Vec<_>>(), [11, 10]);
    }

    #[test]
    fn an_unknown_issuer_is_named_as_such() {
        let (ladder, issuer) = ca_ladder(0);
        let stranger = leaf(&issuer, "stranger");
        let trust = testing::trust(&[ca()]);
        let cert = parse_der(&stranger).unwrap();
        assert!(matches!(trust.issuer_of(&cert), Err(NoIssuer::Unknown)));
        match trust.chain(&cert).end {
            ChainEnd::Broken {
                subject, issuer, ..
            } => {
                assert_eq!(
                    (subject.as_str(), issuer.as_str()),
                    ("CN=stranger", "CN=Ladder 0")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ladder.len(), 1);
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused() {
        // Issued later than the CA, so that just before it is valid the CA already is.
        let now = OffsetDateTime::now_utc() + Duration::hours(1);
        let issued = device_cert(&ca().signer, "DEV-2", now);
        let trust = testing::trust(&[ca()]);
        let v = trust
            .verify(&issued.der, issued.info.not_after + 1)
            .unwrap();
        assert!(v.chain_ok && !v.time_ok && !v.ok(), "{v:?}");
        assert_eq!(v.problems, ["certificate has expired"]);
        let v = trust
            .verify(&issued.der, issued.info.not_before - 1)
            .unwrap();
        assert!(v.chain_ok && !v.time_ok && !v.ok(), "{v:?}");
        assert_eq!(v.problems, ["certificate is not yet valid"]);
        // Past the issuing CA's own validity (10 years) but inside the root's (20).
        let later = (now + Duration::days(3653 + 365)).unix_timestamp();
        let v = trust.verify(&issued.der, later).unwrap();
        assert_eq!(
            v.problems,
            [
                "CA 'CN=Test Issuing CA, O=ACME' is not valid now",
                "certificate has expired"
            ]
        );
    }

    #[test]
    fn a_chain_longer_than_the_limit_is_refused_and_non_cas_are_no_anchors() {
        let (ladder, issuer) = ca_ladder(MAX_DEPTH);
        let below = leaf(&issuer, "deep");
        let anchors = |ders: &[Vec<u8>]| {
            ders.iter()
                .enumerate()
                .map(|(i, d)| Anchor {
                    id: i as i64,
                    name: format!("l{i}"),
                    der: d.clone(),
                })
                .collect::<Vec<_>>()
        };
        let cert = parse_der(&below).unwrap();
        let all = TrustStore::new(anchors(&ladder));
        let walk = all.chain(&cert);
        assert!(matches!(walk.end, ChainEnd::TooLong), "{:?}", walk.end);
        assert_eq!(walk.cas.len(), MAX_DEPTH);
        let v = all
            .verify(&below, OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
        assert_eq!(v.problems, ["chain does not reach a self-signed root"]);
        // One CA fewer above the leaf reaches the root.
        let short = TrustStore::new(anchors(&ladder[..MAX_DEPTH]));
        let mid = parse_der(&ladder[MAX_DEPTH]).unwrap();
        assert!(matches!(short.chain(&mid).end, ChainEnd::Root));

        let not_a_ca = TrustStore::new(anchors(&[below.clone(), vec![1, 2, 3]]));
        assert!(not_a_ca.cas().is_empty());
        assert!(not_a_ca.get(0).is_none());
    }
}
