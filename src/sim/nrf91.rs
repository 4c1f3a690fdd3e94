//! A simulated nRF91-style modem: the AT commands of the nrf91 device profile.

use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

use super::device::{Device, Reply};
use super::faults::Rng;
use super::Responder;
use crate::wire::nrf91::{
    cmng_sha, format_uuid, keygen_cose, keygen_reply_text, BodyKind, IdentityKeys, KeygenClaims,
    AT_MAX_LINE, TYPE_PRIVATE_KEY,
};

/// Modem firmware the simulator reports: Nordic's installer needs mfw >= 1.3.2 to
/// verify credential hashes.
pub const SIM_MFW: &str = "mfw_nrf9160_1.3.5";

/// The simulated modem's identity: a P-256 key (PKCS#8 DER) and device UUID, both
/// derived from its hardware id, so a simulator started with the same `--hardware-id`
/// (or `--state`) is the same modem and tests can know its identity key.
pub fn identity(hardware_id: &str) -> (Vec<u8>, [u8; 16]) {
    use p256::pkcs8::EncodePrivateKey;
    let mut uuid: [u8; 16] = Sha256::digest(format!("cradle-sim nrf91 uuid\0{hardware_id}"))[..16]
        .try_into()
        .expect("16 bytes");
    // A version 4 / RFC 4122 variant UUID, as real modems carry.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let mut i = 0u32;
    loop {
        let seed = Sha256::digest(format!("cradle-sim nrf91 identity\0{hardware_id}\0{i}"));
        if let Ok(k) = p256::SecretKey::from_slice(&seed) {
            let der = k.to_pkcs8_der().expect("PKCS#8 encoding");
            return (der.as_bytes().to_vec(), uuid);
        }
        i += 1;
    }
}

/// The `--nrf-identity-keys` entry (UUID and identity public key) of a simulated modem.
pub fn identity_entry(hardware_id: &str) -> String {
    use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let (der, uuid) = identity(hardware_id);
    let spki = p256::SecretKey::from_pkcs8_der(&der)
        .expect("own key")
        .public_key()
        .to_public_key_der()
        .expect("SPKI");
    IdentityKeys::entry(&uuid, spki.as_bytes())
}

/// A plausible IMEI for simulated modem `i` (TAC 35265610, random serial part).
pub fn fake_imei(i: usize) -> String {
    let mut r = Rng::new();
    format!("35265610{:05}{:02}", r.next_u64() % 100_000, i % 100)
}

pub struct NrfResponder {
    pub dev: Device,
    buf: Vec<u8>,
    in_quotes: bool,
    overflow: bool,
    /// Functional mode: the modem boots active (1); credentials need offline (4).
    cfun: u8,
}

impl NrfResponder {
    pub fn new(dev: Device) -> NrfResponder {
        NrfResponder {
            dev,
            buf: Vec::new(),
            in_quotes: false,
            overflow: false,
            cfun: 1,
        }
    }

    fn reply(lines: &[String]) -> Reply {
        let mut s = String::new();
        for l in lines {
            s.push_str("\r\n");
            s.push_str(l);
        }
        s.push_str("\r\nOK\r\n");
        Reply {
            bytes: s.into_bytes(),
            ..Default::default()
        }
    }

    fn cme(code: u32) -> Reply {
        Reply {
            bytes: format!("\r\n+CME ERROR: {code}\r\n").into_bytes(),
            ..Default::default()
        }
    }

    fn error() -> Reply {
        Reply {
            bytes: b"\r\nERROR\r\n".to_vec(),
            ..Default::default()
        }
    }

    fn handle(&mut self, cmd: &str) -> Reply {
        let st = &mut self.dev.state;
        let upper = cmd
            .get(..cmd.find(['=', '?']).unwrap_or(cmd.len()))
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = cmd.split_once('=').map(|(_, a)| a).unwrap_or("");
        match upper.as_str() {
            "AT" => Self::reply(&[]),
            // `AT+CGSN` (= `AT+CGSN=0`) answers the bare IMEI, `AT+CGSN=1` `+CGSN: "<IMEI>"`.
            "AT+CGSN" if arg.trim() == "1" => {
                Self::reply(&[format!("+CGSN: \"{}\"", st.hardware_id)])
            }
            "AT+CGSN" => Self::reply(std::slice::from_ref(&st.hardware_id)),
            "AT+CGMM" => Self::reply(std::slice::from_ref(&st.model)),
            "AT+CGMR" => Self::reply(std::slice::from_ref(&st.firmware)),
            "AT+CFUN" if cmd.ends_with('?') => Self::reply(&[format!("+CFUN: {}", self.cfun)]),
            "AT+CFUN" => match arg.parse::<u8>() {
                Ok(n @ (0 | 1 | 4)) => {
                    self.cfun = n;
                    Self::reply(&[])
                }
                _ => Self::error(),
            },
            "AT%KEYGEN" => {
                let p: Vec<&str> = arg.splitn(4, ',').collect();
                let Ok(tag) = p[0].trim().parse::<u32>() else {
                    return Self::error();
                };
                let kind = match p.get(2).map(|c| c.trim()) {
                    None | Some("0") => BodyKind::Csr,
                    Some("1") => BodyKind::PublicKey,
                    _ => return Self::error(),
                };
                if p.get(1).map(|t| t.trim()) != Some("2") {
                    return Self::error();
                }
                if self.cfun != 4 && self.cfun != 0 {
                    return Self::cme(518);
                }
                let (id_key, uuid) = identity(&st.hardware_id);
                // Attributes (4th parameter, e.g. "CN=name"); the default CN is the UUID.
                let cn = p
                    .get(3)
                    .map(|a| a.trim().trim_matches('"'))
                    .and_then(|a| a.strip_prefix("CN="))
                    .map(str::to_string)
                    .unwrap_or_else(|| format_uuid(&uuid));
                let Ok(kp) = crate::pki::keys::generate() else {
                    return Self::cme(520);
                };
                let body = match kind {
                    BodyKind::PublicKey => kp.subject_public_key_info(),
                    BodyKind::Csr => {
                        let Ok(mut params) = rcgen::CertificateParams::new(Vec::<String>::new())
                        else {
                            return Self::cme(520);
                        };
                        params.distinguished_name = rcgen::DistinguishedName::new();
                        params
                            .distinguished_name
                            .push(rcgen::DnType::CommonName, cn);
                        let Ok(csr) = params.serialize_request(&kp) else {
                            return Self::cme(520);
                        };
                        csr.der().to_vec()
                    }
                };
                let mut claims = KeygenClaims {
                    kind,
                    device_uuid: uuid,
                    sec_tag: tag,
                    digest: Sha256::digest(&body).into(),
                    nonce: {
                        let mut n = [0u8; 16];
                        n[..8].copy_from_slice(&self.dev.rng.next_u64().to_be_bytes());
                        n[8..].copy_from_slice(&self.dev.rng.next_u64().to_be_bytes());
                        n
                    },
                };
                let f = &mut self.dev.faults;
                if std::mem::take(&mut f.keygen_bad_digest) {
                    claims.digest[0] ^= 1;
                }
                if std::mem::take(&mut f.keygen_wrong_sec_tag) {
                    claims.sec_tag = tag.wrapping_add(1);
                }
                // csr-wrong-key: signed by a key that is not this modem's identity key.
                let signer = if std::mem::take(&mut f.csr_wrong_key) {
                    identity(&format!("{}-impostor", st.hardware_id)).0
                } else {
                    id_key
                };
                let Ok(cose) = keygen_cose(&signer, &claims) else {
                    return Self::cme(520);
                };
                // The modem keeps the new private key under the tag (listed as type 2).
                st.key = Some(kp.serialize_der());
                st.cmng.insert(
                    format!("{tag},{TYPE_PRIVATE_KEY}"),
                    kp.serialize_pem().replace('\n', "\r\n"),
                );
                self.dev.save();
                let text = if std::mem::take(&mut self.dev.faults.bad_base64) {
                    "!!not base64!!.!!".to_string()
                } else {
                    keygen_reply_text(&body, &cose)
                };
                Self::reply(&[format!("%KEYGEN: \"{text}\"")])
            }
            "AT%CMNG" => {
                let mut p = arg.splitn(4, ',');
                let op = p.next().unwrap_or("");
                let tag = p.next().and_then(|t| t.trim().parse::<u32>().ok());
                let kind = p.next().and_then(|t| t.trim().parse::<u8>().ok());
                match op {
                    "0" => {
                        let (Some(tag), Some(kind)) = (tag, kind) else {
                            return Self::error();
                        };
                        let Some(content) = p
                            .next()
                            .and_then(|c| c.strip_prefix('"'))
                            .and_then(|c| c.strip_suffix('"'))
                        else {
                            return Self::error();
                        };
                        if self.cfun != 4 && self.cfun != 0 {
                            return Self::cme(518);
                        }
                        if kind > 2 {
                            return Self::cme(513);
                        }
                        if kind == TYPE_PRIVATE_KEY {
                            let Ok(der) =
                                crate::pki::keys::read_private_key_pem(content, None, "key")
                            else {
                                return Self::cme(514);
                            };
                            st.key = Some(der.to_vec());
                        }
                        st.cmng.insert(format!("{tag},{kind}"), content.to_string());
                        self.dev.save();
                        Self::reply(&[])
                    }
                    "1" => {
                        let lines: Vec<String> = self
                            .dev
                            .state
                            .cmng
                            .iter()
                            .filter_map(|(k, v)| {
                                let (t, ty) = k.split_once(',')?;
                                let t: u32 = t.parse().ok()?;
                                if tag.is_some_and(|want| want != t)
                                    || kind.is_some_and(|want| ty != want.to_string())
                                {
                                    return None;
                                }
                                let mut sha = cmng_sha(v);
                                if self.dev.faults.hash_mismatch && ty == "1" {
                                    self.dev.faults.hash_mismatch = false;
                                    sha.replace_range(
                                        0..1,
                                        if sha.starts_with('0') { "1" } else { "0" },
                                    );
                                }
                                Some(format!("%CMNG: {t},{ty},\"{sha}\""))
                            })
                            .collect();
                        Self::reply(&lines)
                    }
                    "3" => {
                        let (Some(tag), Some(kind)) = (tag, kind) else {
                            return Self::error();
                        };
                        if self.cfun != 4 && self.cfun != 0 {
                            return Self::cme(518);
                        }
                        if st.cmng.remove(&format!("{tag},{kind}")).is_none() {
                            return Self::cme(513);
                        }
                        self.dev.save();
                        Self::reply(&[])
                    }
                    _ => Self::error(),
                }
            }
            _ => Self::error(),
        }
    }

    fn step_name(cmd: &str) -> &'static str {
        let u = cmd.to_ascii_uppercase();
        if u.starts_with("AT%KEYGEN") {
            "keygen"
        } else if u.starts_with("AT%CMNG=0") {
            "cmng-write"
        } else if u.starts_with("AT%CMNG=1") {
            "cmng-list"
        } else if u.starts_with("AT+CGSN") {
            "hello"
        } else {
            "other"
        }
    }
}

impl Responder for NrfResponder {
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)> {
        let mut out = Vec::new();
        for &b in data {
            let end = (b == b'\r' || b == b'\n') && !self.in_quotes;
            if !end {
                if b == b'"' {
                    self.in_quotes = !self.in_quotes;
                }
                if self.buf.len() >= AT_MAX_LINE {
                    self.overflow = true;
                } else {
                    self.buf.push(b);
                }
                continue;
            }
            if self.overflow {
                self.overflow = false;
                self.in_quotes = false;
                let n = self.buf.len();
                self.buf.clear();
                out.push((n, Self::error()));
                continue;
            }
            if self.buf.is_empty() {
                continue;
            }
            let line = std::mem::take(&mut self.buf);
            let cost = line.len() + 2;
            let cmd = String::from_utf8_lossy(&line).trim().to_string();
            if self.dev.faults.long_line && Self::step_name(&cmd) == "hello" {
                self.dev.faults.long_line = false;
                out.push((
                    cost,
                    Reply {
                        bytes: vec![b'A'; 1 << 20],
                        ..Default::default()
                    },
                ));
                continue;
            }
            let mut reply = self.handle(&cmd);
            if self.dev.step(Self::step_name(&cmd)) {
                reply.hangup = true;
            }
            out.push((cost, reply));
        }
        out
    }

    fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
}
