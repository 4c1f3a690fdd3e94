//! Wipe attestations: what a device signs when it wipes, and how the host checks it.
//!
//! The device signs, with its identity key (the key of its registered certificate) and
//! before erasing that key, the payload below. The host sends a fresh random 32-byte
//! nonce and accepts the attestation only if the signature verifies against the
//! registered certificate, the nonce is the one it sent, and the nonce was never used.
//!
//! Payload (UTF-8, LF line endings, fields in this order):
//! ```text
//! CRADLE-WIPE-ATTESTATION-V1
//! hwid=<hardware id>
//! nonce=<64 lower-case hex digits>
//! erased=<the slots that held data, in the order key,cert,chain; key always first>
//! counter=<wipes this device has done, this one included: 1 for the first>
//! ```
//! Every line ends with LF, the last one too; no CR, nothing after it.
//! Signature: ECDSA P-256 over SHA-256 of the payload, DER-encoded.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MAGIC: &str = "CRADLE-WIPE-ATTESTATION-V1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WipeAttestation {
    pub hardware_id: String,
    pub nonce: [u8; 32],
    pub erased: Vec<String>,
    pub counter: u64,
    /// DER-encoded ECDSA signature over `payload()`.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl WipeAttestation {
    /// The exact bytes the device signs.
    pub fn payload(&self) -> Vec<u8> {
        format!(
            "{MAGIC}\nhwid={}\nnonce={}\nerased={}\ncounter={}\n",
            self.hardware_id,
            hex::encode(self.nonce),
            self.erased.join(","),
            self.counter
        )
        .into_bytes()
    }

    /// Parses a payload as produced by `payload()` (plus a separately sent signature).
    pub fn from_payload(payload: &[u8], signature: Vec<u8>) -> Result<WipeAttestation> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| Error::Device("attestation payload is not UTF-8".into()))?;
        let mut lines = text.split('\n');
        if lines.next() != Some(MAGIC) {
            return Err(Error::Device(
                "attestation payload has the wrong header".into(),
            ));
        }
        let mut field = |name: &str| -> Result<String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| Error::Device(format!("attestation payload lacks '{name}='")))
        };
        let hardware_id = field("hwid")?;
        let nonce_hex = field("nonce")?;
        let erased = field("erased")?;
        let counter = field("counter")?;
        let nonce_vec = hex::decode(&nonce_hex)
            .map_err(|_| Error::Device("attestation nonce is not hex".into()))?;
        let nonce: [u8; 32] = nonce_vec
            .try_into()
            .map_err(|_| Error::Device("attestation nonce is not 32 bytes".into()))?;
        let att = WipeAttestation {
            hardware_id,
            nonce,
            erased: erased
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            counter: counter
                .parse()
                .map_err(|_| Error::Device("attestation counter is not a number".into()))?,
            signature,
        };
        if att.payload() != payload {
            let why = if !payload.ends_with(b"\n") {
                "its last line does not end with LF"
            } else if payload.contains(&b'\r') {
                "it has CR characters (LF line endings only)"
            } else {
                "it has extra lines, spaces or leading zeros"
            };
            return Err(Error::Device(format!(
                "attestation payload is not in the exact form of cradle-protocol(7): {why}"
            )));
        }
        att.check_fields()?;
        Ok(att)
    }

    /// `erased` and `counter` as cradle-protocol(7) defines them.
    fn check_fields(&self) -> Result<()> {
        const ORDER: [&str; 3] = ["key", "cert", "chain"];
        let mut at = 0;
        for name in &self.erased {
            match ORDER[at.min(ORDER.len())..].iter().position(|s| s == name) {
                Some(i) => at += i + 1,
                None => {
                    return Err(Error::Device(format!(
                        "attestation erased={} must list slots among key,cert,chain in that order, each once",
                        self.erased.join(",")
                    )))
                }
            }
        }
        if self.erased.first().map(String::as_str) != Some("key") {
            return Err(Error::Device(format!(
                "attestation erased={} does not start with key (a wipe erases the identity key)",
                self.erased.join(",")
            )));
        }
        if self.counter == 0 {
            return Err(Error::Device(
                "attestation counter=0: the counter includes this wipe, so it is at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Verifies the signature against the SubjectPublicKeyInfo (DER) of the device's
    /// registered certificate, and that the nonce is the one the host sent.
    pub fn verify(&self, spki_der: &[u8], expected_nonce: &[u8; 32]) -> Result<()> {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePublicKey;
        if &self.nonce != expected_nonce {
            return Err(Error::Crypto(
                "attestation answers a different nonce than the one sent (replay?)".into(),
            ));
        }
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
            .map_err(|_| Error::crypto("registered certificate key is not P-256"))?;
        let sig = p256::ecdsa::Signature::from_der(&self.signature)
            .map_err(|_| Error::crypto("attestation signature is malformed"))?;
        key.verify(&self.payload(), &sig).map_err(|_| {
            Error::crypto(
                "attestation signature does not verify against the device's registered certificate",
            )
        })
    }
}

/// Signs an attestation payload with a PKCS#8 P-256 key (used by the device simulator).
pub fn sign(pkcs8_der: &[u8], att: &mut WipeAttestation) -> Result<()> {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8_der)
        .map_err(|_| Error::crypto("attestation key is not a P-256 PKCS#8 key"))?;
    let sig: p256::ecdsa::Signature = key.sign(&att.payload());
    att.signature = sig.to_der().as_bytes().to_vec();
    Ok(())
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let kp = crate::pki::keys::generate().unwrap();
        use rcgen::PublicKeyData;
        let spki = kp.subject_public_key_info();
        let mut a = WipeAttestation {
            hardware_id: "HW1".into(),
            nonce: [7; 32],
            erased: vec!["key".into(), "cert".into()],
            counter: 1,
            signature: vec![],
        };
        sign(&kp.serialize_der(), &mut a).unwrap();
        a.verify(&spki, &[7; 32]).unwrap();
        let parsed = WipeAttestation::from_payload(&a.payload(), a.signature.clone()).unwrap();
        assert_eq!(parsed, a);
        assert!(a.verify(&spki, &[8; 32]).is_err());
        let mut forged = a.clone();
        forged.erased.push("extra".into());
        assert!(forged.verify(&spki, &[7; 32]).is_err());
    }

    #[test]
    fn the_pages_hex_example_is_the_payload() {
        // The dump in cradle-protocol(7), "Wipe attestation payload".
        let page = include_str!("../man/cradle-protocol.7");
        let bytes: Vec<u8> = page
            .lines()
            .filter(|l| {
                l.len() > 6
                    && l.as_bytes()[4] == b':'
                    && l[..4].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .flat_map(|l| {
                l[6..53]
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).unwrap())
            })
            .collect();
        let mut nonce = [0u8; 32];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        let att = WipeAttestation {
            hardware_id: "SIM-1".into(),
            nonce,
            erased: vec!["key".into(), "cert".into(), "chain".into()],
            counter: 1,
            signature: vec![],
        };
        assert_eq!(bytes.len(), 141);
        assert_eq!(bytes, att.payload());
        assert_eq!(WipeAttestation::from_payload(&bytes, vec![]).unwrap(), att);
    }

    #[test]
    fn payload_rules_of_the_page_are_enforced() {
        let att = |erased: &str, counter: &str| {
            format!(
                "{MAGIC}\nhwid=HW1\nnonce={}\nerased={erased}\ncounter={counter}\n",
                "ab".repeat(32)
            )
        };
        assert!(
            WipeAttestation::from_payload(att("key,cert,chain", "1").as_bytes(), vec![]).is_ok()
        );
        assert!(WipeAttestation::from_payload(att("key,chain", "7").as_bytes(), vec![]).is_ok());
        for (erased, counter, why) in [
            ("cert,key", "1", "in that order"),
            ("cert", "1", "start with key"),
            ("key,key", "1", "each once"),
            ("key,cert,extra", "1", "among key,cert,chain"),
            ("", "1", "start with key"),
            ("key", "0", "at least 1"),
            ("key", "01", "leading zeros"),
        ] {
            let e = WipeAttestation::from_payload(att(erased, counter).as_bytes(), vec![])
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{erased} {counter}: {e}");
        }
        let full = att("key", "1");
        let e = WipeAttestation::from_payload(&full.as_bytes()[..full.len() - 1], vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not end with LF"), "{e}");
        let crlf = full.replace('\n', "\r\n");
        assert!(WipeAttestation::from_payload(crlf.as_bytes(), vec![]).is_err());
    }
}
