//! The nRF91 device profile: Nordic-style AT commands over the same line.
//!
//! Commands used (CRLF line endings, replies end with `OK`, `ERROR` or `+CME ERROR: n`):
//! `AT+CGSN=1` (IMEI = hardware id), `AT+CGMM` (model), `AT+CGMR` (firmware),
//! `AT+CFUN=4` (modem offline: required before key generation and credential writes),
//! `AT%KEYGEN=<tag>,2,0` → `%KEYGEN: "<base64url CSR>.<base64url COSE_Sign1>"`,
//! `AT%CMNG=0,<tag>,<type>,"<PEM>"` (write; type 0 CA chain, 1 client cert, 2 private key),
//! `AT%CMNG=1,<tag>` → `%CMNG: <tag>,<type>,"<SHA-256 hex>"` per stored credential.
//! The COSE_Sign1 is ES256 by the new key over the CBOR array `["CSR-SHA256", h'<sha256 of CSR>']`.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Line, LineBuffer, WireError};

/// Longest AT line either side accepts (a PEM chain fits with room to spare).
pub const AT_MAX_LINE: usize = 8192;

/// Credential types of `AT%CMNG`.
pub const TYPE_CA_CHAIN: u8 = 0;
pub const TYPE_CLIENT_CERT: u8 = 1;
pub const TYPE_PRIVATE_KEY: u8 = 2;

/// CME error codes used by the profile.
pub fn cme_name(code: u32) -> &'static str {
    match code {
        513 => "not found",
        514 => "no access",
        515 => "memory full",
        518 => "not allowed in active state (send AT+CFUN=4 first)",
        519 => "already exists",
        520 => "key generation failed",
        _ => "error",
    }
}

fn b64url_decode(s: &str) -> Result<Vec<u8>, WireError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| WireError::Protocol("%KEYGEN reply is not valid base64url".into()))
}

// --- a minimal CBOR subset: byte/text strings, arrays, maps, tag 18 -----------------

fn cbor_head(out: &mut Vec<u8>, major: u8, len: usize) {
    let m = major << 5;
    if len < 24 {
        out.push(m | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[m | 24, len as u8]);
    } else if len < 65536 {
        out.push(m | 25);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 26);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn bstr(out: &mut Vec<u8>, d: &[u8]) {
    cbor_head(out, 2, d.len());
    out.extend_from_slice(d);
}

fn tstr(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The protected header `{1: -7}` (alg ES256).
const PROTECTED: [u8; 3] = [0xa1, 0x01, 0x26];

fn keygen_payload(csr: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    cbor_head(&mut p, 4, 2);
    tstr(&mut p, "CSR-SHA256");
    bstr(&mut p, &Sha256::digest(csr));
    p
}

fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    cbor_head(&mut s, 4, 4);
    tstr(&mut s, "Signature1");
    bstr(&mut s, protected);
    bstr(&mut s, &[]);
    bstr(&mut s, payload);
    s
}

/// The COSE_Sign1 a simulated modem attaches to its CSR (signed by the new key).
pub fn cose_for_csr(pkcs8_der: &[u8], csr: &[u8]) -> crate::Result<Vec<u8>> {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8_der)
        .map_err(|_| crate::Error::crypto("COSE: key is not P-256"))?;
    let payload = keygen_payload(csr);
    let sig: p256::ecdsa::Signature = key.sign(&sig_structure(&PROTECTED, &payload));
    let mut out = vec![0xd2]; // tag 18: COSE_Sign1
    cbor_head(&mut out, 4, 4);
    bstr(&mut out, &PROTECTED);
    out.push(0xa0);
    bstr(&mut out, &payload);
    bstr(&mut out, &sig.to_bytes());
    Ok(out)
}

struct Cbor<'a>(&'a [u8]);

impl<'a> Cbor<'a> {
    fn head(&mut self) -> Result<(u8, usize), WireError> {
        let bad = || WireError::Protocol("COSE attestation is not well-formed CBOR".into());
        let (&b, rest) = self.0.split_first().ok_or_else(bad)?;
        self.0 = rest;
        let (major, ai) = (b >> 5, b & 0x1f);
        let n = match ai {
            0..=23 => ai as usize,
            24..=26 => {
                let k = 1 << (ai - 24);
                if self.0.len() < k {
                    return Err(bad());
                }
                let v = self.0[..k]
                    .iter()
                    .fold(0usize, |a, &x| (a << 8) | x as usize);
                self.0 = &self.0[k..];
                v
            }
            _ => return Err(bad()),
        };
        Ok((major, n))
    }
    fn bytes(&mut self, major: u8) -> Result<&'a [u8], WireError> {
        let (m, n) = self.head()?;
        if m != major || self.0.len() < n {
            return Err(WireError::Protocol(
                "COSE attestation has an unexpected shape".into(),
            ));
        }
        let (d, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(d)
    }
}

/// Checks the COSE_Sign1 of a `%KEYGEN` reply: ES256 by the CSR's key, over the CSR's hash.
pub fn verify_keygen_cose(cose: &[u8], csr: &[u8], spki_der: &[u8]) -> Result<(), WireError> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let shape = || WireError::Protocol("COSE attestation has an unexpected shape".into());
    let mut c = Cbor(cose.strip_prefix(&[0xd2]).unwrap_or(cose));
    if c.head()? != (4, 4) {
        return Err(shape());
    }
    let protected = c.bytes(2)?;
    let (m, n) = c.head()?;
    if m != 5 || n != 0 {
        return Err(shape());
    }
    let payload = c.bytes(2)?;
    let sig = c.bytes(2)?;
    if !c.0.is_empty() || protected != PROTECTED {
        return Err(shape());
    }
    if payload != keygen_payload(csr) {
        return Err(WireError::Verify(
            "COSE attestation is for another CSR".into(),
        ));
    }
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der)
        .map_err(|_| WireError::Protocol("CSR key is not P-256".into()))?;
    let sig = p256::ecdsa::Signature::from_slice(sig).map_err(|_| shape())?;
    key.verify(&sig_structure(protected, payload), &sig)
        .map_err(|_| WireError::Verify("COSE attestation signature does not verify".into()))
}

/// A credential as listed by `AT%CMNG=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub tag: u32,
    pub kind: u8,
    pub sha256: String,
}

/// SHA-256 as the modem lists it (upper-case hex over the stored PEM text).
pub fn cmng_sha(content: &str) -> String {
    hex::encode_upper(Sha256::digest(content.as_bytes()))
}

/// A host session with an nRF91-style modem.
pub struct NrfSession<T: Read + Write> {
    port: T,
    lines: LineBuffer,
    timeout: Duration,
    byte_time: Duration,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl<T: Read + Write> NrfSession<T> {
    pub fn new(port: T, baud: u32, timeout: Duration) -> NrfSession<T> {
        NrfSession {
            port,
            lines: LineBuffer::new(AT_MAX_LINE),
            timeout,
            byte_time: Duration::from_secs_f64(10.0 / baud.max(1) as f64),
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    /// Sends one AT command and collects the reply lines up to the final result code.
    pub fn command(&mut self, cmd: &str) -> Result<Vec<String>, WireError> {
        let what = cmd.split(['=', '?']).next().unwrap_or(cmd).to_string();
        let bytes = format!("{cmd}\r\n");
        self.port.write_all(bytes.as_bytes())?;
        self.port.flush()?;
        self.tx_bytes += bytes.len() as u64;
        let deadline =
            Instant::now() + self.timeout + self.byte_time * (bytes.len() + AT_MAX_LINE) as u32;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut pending: Vec<Line> = Vec::new();
        loop {
            for l in pending.drain(..) {
                let l = match l {
                    Line::TooLong => return Err(WireError::LineTooLong { limit: AT_MAX_LINE }),
                    Line::Complete(l) => l,
                };
                let text = String::from_utf8_lossy(&l)
                    .trim_end_matches('\r')
                    .to_string();
                if text.is_empty() || text == cmd {
                    continue;
                }
                if text == "OK" {
                    return Ok(out);
                }
                if text == "ERROR" {
                    return Err(WireError::Refused {
                        what,
                        code: 0,
                        name: "ERROR".into(),
                    });
                }
                if let Some(c) = text.strip_prefix("+CME ERROR:") {
                    let code: u32 = c.trim().parse().unwrap_or(0);
                    return Err(WireError::Refused {
                        what,
                        code,
                        name: cme_name(code).into(),
                    });
                }
                out.push(text);
            }
            if Instant::now() >= deadline {
                return Err(WireError::Timeout {
                    what,
                    secs: self.timeout.as_secs_f64(),
                });
            }
            match self.port.read(&mut buf) {
                Ok(0) => return Err(WireError::Disconnected),
                Ok(n) => {
                    self.rx_bytes += n as u64;
                    self.lines.push(&buf[..n], &mut pending);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    return Err(WireError::Disconnected)
                }
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    /// A reply line starting with `prefix`, e.g. `+CGSN:`.
    fn one(&mut self, cmd: &str, prefix: &str) -> Result<String, WireError> {
        let lines = self.command(cmd)?;
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| WireError::Protocol(format!("{cmd}: no '{prefix}' line in the reply")))
    }

    /// `AT` until the modem answers (discarding boot noise), then IMEI, model, firmware.
    pub fn identify(&mut self) -> Result<(String, String, String), WireError> {
        let mut last = None;
        for _ in 0..3 {
            match self.command("AT") {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e @ (WireError::Timeout { .. } | WireError::Refused { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let imei = self.one("AT+CGSN=1", "+CGSN:")?;
        super::check_token("IMEI", &imei)?;
        let model = self
            .command("AT+CGMM")?
            .first()
            .cloned()
            .unwrap_or_default();
        super::check_token("model", &model)?;
        let fw = self
            .command("AT+CGMR")?
            .first()
            .cloned()
            .unwrap_or_default();
        super::check_token("firmware version", &fw)?;
        Ok((imei, model, fw))
    }

    /// `AT%KEYGEN=<tag>,2,0`: returns (CSR DER, COSE_Sign1 bytes).
    pub fn keygen(&mut self, tag: u32) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let v = self.one(&format!("AT%KEYGEN={tag},2,0"), "%KEYGEN:")?;
        let (csr, cose) = v.split_once('.').ok_or_else(|| {
            WireError::Protocol("%KEYGEN reply lacks the '.' between CSR and COSE".into())
        })?;
        Ok((b64url_decode(csr)?, b64url_decode(cose)?))
    }

    /// `AT%CMNG=0,<tag>,<type>,"<PEM>"`.
    pub fn write_credential(&mut self, tag: u32, kind: u8, pem: &str) -> Result<(), WireError> {
        if pem.contains('"') {
            return Err(WireError::Protocol(
                "credential text must not contain '\"'".into(),
            ));
        }
        self.command(&format!("AT%CMNG=0,{tag},{kind},\"{pem}\""))?;
        Ok(())
    }

    /// `AT%CMNG=1,<tag>`: what the modem holds under `tag`, with SHA-256 hashes.
    pub fn list(&mut self, tag: u32) -> Result<Vec<Credential>, WireError> {
        let lines = self.command(&format!("AT%CMNG=1,{tag}"))?;
        let mut out = Vec::new();
        for l in lines {
            let Some(rest) = l.strip_prefix("%CMNG:") else {
                continue;
            };
            let parts: Vec<&str> = rest.trim().splitn(3, ',').collect();
            let bad = || WireError::Protocol(format!("bad %CMNG line '{}'", l.escape_default()));
            if parts.len() != 3 {
                return Err(bad());
            }
            out.push(Credential {
                tag: parts[0].trim().parse().map_err(|_| bad())?,
                kind: parts[1].trim().parse().map_err(|_| bad())?,
                sha256: parts[2].trim().trim_matches('"').to_ascii_uppercase(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cose_roundtrip_and_tamper() {
        use rcgen::PublicKeyData;
        let kp = crate::pki::keys::generate().unwrap();
        let csr = b"pretend this is a CSR".to_vec();
        let cose = cose_for_csr(&kp.serialize_der(), &csr).unwrap();
        let spki = kp.subject_public_key_info();
        verify_keygen_cose(&cose, &csr, &spki).unwrap();
        assert!(verify_keygen_cose(&cose, b"another CSR", &spki).is_err());
        let mut bad = cose.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(verify_keygen_cose(&bad, &csr, &spki).is_err());
        assert!(verify_keygen_cose(&[0xd2, 0x84], &csr, &spki).is_err());
    }
}
