//! The nRF91 device profile: Nordic-style AT commands over the same line.
//!
//! Commands used (CRLF line endings, replies end with `OK`, `ERROR` or `+CME ERROR: n`):
//! `AT+CGSN=1` (IMEI = hardware id), `AT+CGMM` (model), `AT+CGMR` (firmware),
//! `AT+CFUN=4` (modem offline: required before key generation and credential writes),
//! `AT%KEYGEN=<tag>,2,0` → `%KEYGEN: "<base64url CSR DER>.<base64url COSE_Sign1>"`,
//! `AT%CMNG=0,<tag>,<type>,"<PEM>"` (write; type 0 CA chain, 1 client cert, 2 private key),
//! `AT%CMNG=1,<tag>` → `%CMNG: <tag>,<type>,"<SHA-256 hex>"` per stored credential.
//! The COSE_Sign1 is Nordic's (AT Commands reference, `%KEYGEN`; nrfcloud-utils'
//! `modem_credentials_parser`): protected `{1: -7}` (ES256), unprotected `{4: h'21'}`
//! (kid -2: the modem's identity key), payload the CBOR array `[payload id (9 CSR,
//! 8 public key), device UUID (16 bytes), bstr(CBOR sec_tag), SHA-256 of the body DER,
//! nonce (16 bytes)]`, signature raw r||s by the identity key (public half held by
//! Nordic's identity service, or supplied by the operator).

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

fn b64url_decode(s: &str, what: &str) -> Result<Vec<u8>, WireError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| {
            WireError::Protocol(format!("%KEYGEN reply: the {what} is not valid base64url"))
        })
}

fn b64url(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

// --- a minimal CBOR subset (definite lengths only) ---------------------------------

fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n < 65536 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn bstr(out: &mut Vec<u8>, d: &[u8]) {
    cbor_head(out, 2, d.len() as u64);
    out.extend_from_slice(d);
}

fn tstr(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// One decoded CBOR item.
#[derive(Debug, Clone, PartialEq)]
enum Item<'a> {
    Uint(u64),
    /// Negative integer -1 - n.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Item<'a>>),
    Map(Vec<(Item<'a>, Item<'a>)>),
    Tag(u64, Box<Item<'a>>),
    Simple(u8),
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn err() -> WireError {
        WireError::Protocol("%KEYGEN attestation is not well-formed CBOR".into())
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(Self::err());
        }
        let (d, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(d)
    }
    fn item(&mut self, depth: u8) -> Result<Item<'a>, WireError> {
        if depth > 8 {
            return Err(Self::err());
        }
        let b = self.take(1)?[0];
        let (major, ai) = (b >> 5, b & 0x1f);
        let n = match ai {
            0..=23 => ai as u64,
            24..=27 => self
                .take(1 << (ai - 24))?
                .iter()
                .fold(0u64, |a, &x| (a << 8) | x as u64),
            _ => return Err(Self::err()),
        };
        let len = |n: u64| usize::try_from(n).map_err(|_| Self::err());
        Ok(match major {
            0 => Item::Uint(n),
            1 => Item::Nint(n),
            2 => Item::Bytes(self.take(len(n)?)?),
            3 => Item::Text(std::str::from_utf8(self.take(len(n)?)?).map_err(|_| Self::err())?),
            4 => {
                let n = len(n)?;
                if n > self.0.len() {
                    return Err(Self::err());
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.item(depth + 1)?);
                }
                Item::Array(v)
            }
            5 => {
                let n = len(n)?;
                if n > self.0.len() {
                    return Err(Self::err());
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.item(depth + 1)?;
                    v.push((k, self.item(depth + 1)?));
                }
                Item::Map(v)
            }
            6 => Item::Tag(n, Box::new(self.item(depth + 1)?)),
            _ => Item::Simple(n as u8),
        })
    }
}

/// Decodes exactly one CBOR item (no trailing bytes).
fn decode_one(d: &[u8]) -> Result<Item<'_>, WireError> {
    let mut dec = Dec(d);
    let item = dec.item(0)?;
    if !dec.0.is_empty() {
        return Err(Dec::err());
    }
    Ok(item)
}

/// Whether `d` is exactly one well-formed item of the CBOR subset (for the fuzzer).
pub(crate) fn cbor_check(d: &[u8]) -> Result<(), WireError> {
    decode_one(d).map(|_| ())
}

// --- Nordic's %KEYGEN attestation ----------------------------------------------------

/// What `<response_content>` asked the modem to return as the reply body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyKind {
    /// `<response_content>` 0: a PKCS#10 CSR (DER); payload id 9 (CSR_msg_v1).
    Csr,
    /// `<response_content>` 1: the public key (SubjectPublicKeyInfo DER); payload id 8
    /// (pubkey_msg_v2).
    PublicKey,
}

impl BodyKind {
    /// The COSE payload id Nordic's modem uses for this body.
    pub fn payload_id(self) -> u64 {
        match self {
            BodyKind::Csr => 9,
            BodyKind::PublicKey => 8,
        }
    }
    /// `<response_content>` of `AT%KEYGEN`.
    pub fn response_content(self) -> u8 {
        match self {
            BodyKind::Csr => 0,
            BodyKind::PublicKey => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            BodyKind::Csr => "CSR",
            BodyKind::PublicKey => "public key",
        }
    }
}

/// Whether the COSE signature was checked against the modem's identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attestation {
    /// Signed by the identity key the operator supplied for this device UUID.
    Verified,
    /// No identity key for this device UUID was supplied; digest and sec_tag were checked.
    Unverified,
}

/// The protected header `{1: -7}` (alg ES256).
const PROTECTED: [u8; 3] = [0xa1, 0x01, 0x26];
/// The unprotected header `{4: h'21'}`: kid = CBOR -2, Nordic's "identity_key".
const UNPROTECTED_IDENTITY: [u8; 4] = [0xa1, 0x04, 0x41, 0x21];

/// The claims inside the COSE payload of a `%KEYGEN` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenClaims {
    pub kind: BodyKind,
    pub device_uuid: [u8; 16],
    pub sec_tag: u32,
    pub digest: [u8; 32],
    pub nonce: [u8; 16],
}

impl KeygenClaims {
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        cbor_head(&mut p, 4, 5);
        cbor_head(&mut p, 0, self.kind.payload_id());
        bstr(&mut p, &self.device_uuid);
        let mut tag = Vec::new();
        cbor_head(&mut tag, 0, self.sec_tag as u64);
        bstr(&mut p, &tag);
        bstr(&mut p, &self.digest);
        bstr(&mut p, &self.nonce);
        p
    }
}

/// A device UUID as Nordic prints it: lower-case hex in 8-4-4-4-12 groups.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    if s.len() != 36 || h.len() != 32 {
        return None;
    }
    hex::decode(h).ok()?.try_into().ok()
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

/// The COSE_Sign1 a modem attaches to its `%KEYGEN` body, signed (ES256) by its
/// identity key (PKCS#8 DER). Used by the simulator.
pub fn keygen_cose(identity_pkcs8: &[u8], claims: &KeygenClaims) -> crate::Result<Vec<u8>> {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(identity_pkcs8)
        .map_err(|_| crate::Error::crypto("COSE: identity key is not P-256"))?;
    let payload = claims.payload();
    let sig: p256::ecdsa::Signature = key.sign(&sig_structure(&PROTECTED, &payload));
    let mut out = vec![0xd2]; // tag 18: COSE_Sign1
    cbor_head(&mut out, 4, 4);
    bstr(&mut out, &PROTECTED);
    out.extend_from_slice(&UNPROTECTED_IDENTITY);
    bstr(&mut out, &payload);
    bstr(&mut out, &sig.to_bytes());
    Ok(out)
}

/// The `%KEYGEN` reply text (inside the quotes) for a body and its COSE_Sign1.
pub fn keygen_reply_text(body_der: &[u8], cose: &[u8]) -> String {
    format!("{}.{}", b64url(body_der), b64url(cose))
}

/// A checked `%KEYGEN` reply.
#[derive(Debug, Clone)]
pub struct KeygenReply {
    /// The CSR or SubjectPublicKeyInfo, DER.
    pub body_der: Vec<u8>,
    pub kind: BodyKind,
    /// The COSE_Sign1 exactly as the modem sent it (the attestation evidence).
    pub cose: Vec<u8>,
    /// The modem's device UUID (nRF Cloud's device id), formatted as Nordic prints it.
    pub device_uuid: String,
    pub nonce: [u8; 16],
    pub attestation: Attestation,
}

impl KeygenReply {
    /// The evidence recorded with the certificate.
    pub fn evidence(&self) -> serde_json::Value {
        serde_json::json!({
            "format": "nrf91-keygen-cose",
            "device_uuid": self.device_uuid,
            "body": self.kind,
            "attestation": self.attestation,
            "nonce": hex::encode(self.nonce),
            "cose": b64url(&self.cose),
        })
    }
}

fn shape(what: &str) -> WireError {
    WireError::Protocol(format!(
        "%KEYGEN attestation is not Nordic's COSE_Sign1: {what}"
    ))
}

/// Parses and checks the value of a `%KEYGEN: "<body>.<cose>"` reply: the COSE_Sign1
/// (protected `{1: -7}`, payload `[id, uuid, sec_tag, sha256(body), nonce]`) must be
/// for the requested body kind and sec_tag, and its digest must be the SHA-256 of the
/// body. With the modem's identity key for its UUID in `keys`, the signature must
/// verify (`Verified`); without one it is recorded `Unverified`.
pub fn parse_keygen(
    value: &str,
    sec_tag: u32,
    want: BodyKind,
    keys: Option<&IdentityKeys>,
) -> Result<KeygenReply, WireError> {
    let (body, cose) = value.split_once('.').ok_or_else(|| {
        WireError::Protocol("%KEYGEN reply lacks the '.' between body and COSE_Sign1".into())
    })?;
    let body_der = b64url_decode(body, want.name())?;
    let cose = b64url_decode(cose, "COSE_Sign1")?;
    let msg = match decode_one(&cose)? {
        Item::Tag(18, m) => *m,
        m @ Item::Array(_) => m,
        _ => return Err(shape("not a COSE_Sign1 (tag 18) array")),
    };
    let Item::Array(parts) = msg else {
        return Err(shape("not an array"));
    };
    let [Item::Bytes(protected), Item::Map(_), Item::Bytes(payload), Item::Bytes(sig)] =
        parts.as_slice()
    else {
        return Err(shape(
            "want [protected bstr, unprotected map, payload bstr, signature bstr]",
        ));
    };
    match decode_one(protected)? {
        Item::Map(m) if m.contains(&(Item::Uint(1), Item::Nint(6))) => {}
        _ => return Err(shape("protected header does not say alg ES256 ({1: -7})")),
    }
    let Item::Array(claims) = decode_one(payload)? else {
        return Err(shape("payload is not an array"));
    };
    let [Item::Uint(id), Item::Bytes(uuid), Item::Bytes(tag), Item::Bytes(digest), Item::Bytes(nonce)] =
        claims.as_slice()
    else {
        return Err(shape(
            "payload is not [payload id, device UUID, sec_tag, digest, nonce]",
        ));
    };
    if *id != want.payload_id() {
        return Err(WireError::Verify(format!(
            "%KEYGEN attestation has payload id {id}, expected {} for a {}",
            want.payload_id(),
            want.name()
        )));
    }
    let uuid: [u8; 16] = (*uuid)
        .try_into()
        .map_err(|_| shape("device UUID is not 16 bytes"))?;
    let nonce: [u8; 16] = (*nonce)
        .try_into()
        .map_err(|_| shape("nonce is not 16 bytes"))?;
    // The sec_tag is itself CBOR inside the byte string; Nordic encodes tags above
    // i32::MAX as negative integers (two's complement of the 32-bit value).
    let got_tag = match decode_one(tag)? {
        Item::Uint(n) => u32::try_from(n).ok(),
        Item::Nint(n) => i32::try_from(-1 - n as i128).ok().map(|v| v as u32),
        _ => None,
    }
    .ok_or_else(|| shape("sec_tag is not a 32-bit integer"))?;
    if got_tag != sec_tag {
        return Err(WireError::Verify(format!(
            "%KEYGEN attestation is for sec_tag {got_tag}, but sec_tag {sec_tag} was requested"
        )));
    }
    let want_digest = Sha256::digest(&body_der);
    if *digest != want_digest.as_slice() {
        return Err(WireError::Verify(format!(
            "%KEYGEN attestation digest {} is not the SHA-256 of the {} ({})",
            hex::encode(digest),
            want.name(),
            hex::encode(want_digest)
        )));
    }
    let device_uuid = format_uuid(&uuid);
    let attestation = match keys.and_then(|k| k.get(&device_uuid)) {
        None => Attestation::Unverified,
        Some(spki) => {
            use p256::ecdsa::signature::Verifier;
            use p256::pkcs8::DecodePublicKey;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                .map_err(|_| WireError::Protocol("identity key is not P-256".into()))?;
            let sig = p256::ecdsa::Signature::from_slice(sig)
                .map_err(|_| shape("signature is not 64 bytes r||s"))?;
            key.verify(&sig_structure(protected, payload), &sig)
                .map_err(|_| {
                    WireError::Verify(format!(
                        "%KEYGEN attestation signature does not verify with the identity key given for device {device_uuid}"
                    ))
                })?;
            Attestation::Verified
        }
    };
    Ok(KeygenReply {
        body_der,
        kind: want,
        cose,
        device_uuid,
        nonce,
        attestation,
    })
}

/// Modem identity public keys by device UUID (`--nrf-identity-keys FILE`).
///
/// The file is a PEM bundle: each `PUBLIC KEY` block is preceded by a line
/// `Device-UUID: <uuid>` naming the modem it belongs to (text outside PEM blocks is
/// allowed by RFC 7468, so `openssl pkey -pubin` still reads the first key). Blank
/// lines and lines starting with `#` are ignored.
#[derive(Debug, Clone, Default)]
pub struct IdentityKeys {
    keys: std::collections::BTreeMap<String, Vec<u8>>,
}

impl IdentityKeys {
    /// Parses the bundle; the error names the line.
    pub fn parse(text: &str) -> Result<IdentityKeys, String> {
        let mut out = IdentityKeys::default();
        let mut label: Option<(usize, String)> = None;
        let mut block: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if let Some((start, b64)) = &mut block {
                if line == "-----END PUBLIC KEY-----" {
                    use base64::Engine;
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(&*b64)
                        .map_err(|_| format!("line {start}: the PEM block is not valid base64"))?;
                    {
                        use p256::pkcs8::DecodePublicKey;
                        p256::ecdsa::VerifyingKey::from_public_key_der(&der).map_err(|_| {
                            format!("line {start}: the key is not a P-256 public key")
                        })?;
                    }
                    let (_, uuid) = label.take().ok_or_else(|| {
                        format!("line {start}: PUBLIC KEY block without a 'Device-UUID:' line before it")
                    })?;
                    if out.keys.insert(uuid.clone(), der).is_some() {
                        return Err(format!("line {start}: device {uuid} is listed twice"));
                    }
                    block = None;
                } else {
                    b64.push_str(line);
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(u) = line.strip_prefix("Device-UUID:") {
                let u = u.trim();
                let uuid = parse_uuid(u)
                    .ok_or_else(|| format!("line {n}: '{u}' is not a UUID (8-4-4-4-12 hex)"))?;
                if let Some((l, _)) = &label {
                    return Err(format!("line {n}: the Device-UUID of line {l} has no key"));
                }
                label = Some((n, format_uuid(&uuid)));
            } else if line == "-----BEGIN PUBLIC KEY-----" {
                block = Some((n, String::new()));
            } else {
                return Err(format!(
                    "line {n}: expected 'Device-UUID: <uuid>' or a PUBLIC KEY block"
                ));
            }
        }
        if let Some((n, _)) = block {
            return Err(format!("line {n}: PEM block is not closed"));
        }
        if let Some((l, _)) = label {
            return Err(format!("line {l}: this Device-UUID has no key"));
        }
        Ok(out)
    }

    /// The SubjectPublicKeyInfo DER for a device UUID (formatted as `format_uuid`).
    pub fn get(&self, uuid: &str) -> Option<&[u8]> {
        self.keys
            .get(&uuid.to_ascii_lowercase())
            .map(|v| v.as_slice())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// One entry of the bundle format.
    pub fn entry(uuid: &[u8; 16], spki_der: &[u8]) -> String {
        format!(
            "Device-UUID: {}\n{}",
            format_uuid(uuid),
            crate::pki::cert::to_pem("PUBLIC KEY", spki_der)
        )
    }
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
                match reply_line(cmd, &what, &l) {
                    ReplyLine::Skip => {}
                    ReplyLine::Data(text) => out.push(text),
                    ReplyLine::Ok => return Ok(out),
                    ReplyLine::Refused(e) => return Err(e),
                }
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
        prefixed_value(cmd, &lines, prefix)
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

    /// `AT%KEYGEN=<tag>,2,<response_content>`: the reply value `<body>.<cose>` (check it
    /// with `parse_keygen`).
    pub fn keygen(&mut self, tag: u32, kind: BodyKind) -> Result<String, WireError> {
        self.one(
            &format!("AT%KEYGEN={tag},2,{}", kind.response_content()),
            "%KEYGEN:",
        )
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
        parse_cmng_list(&lines)
    }
}

/// What one received line means to the AT command in flight.
#[derive(Debug)]
pub enum ReplyLine {
    /// Blank, or the modem echoing the command.
    Skip,
    /// A line of the reply.
    Data(String),
    /// The final `OK`.
    Ok,
    /// The final `ERROR` or `+CME ERROR: n`.
    Refused(WireError),
}

/// Classifies one line (without its LF) received after sending `cmd`; `what` is the
/// command name errors carry. Pure, so the fuzzer reaches it without a port.
pub fn reply_line(cmd: &str, what: &str, raw: &[u8]) -> ReplyLine {
    let text = String::from_utf8_lossy(raw)
        .trim_end_matches('\r')
        .to_string();
    if text.is_empty() || text == cmd {
        return ReplyLine::Skip;
    }
    if text == "OK" {
        return ReplyLine::Ok;
    }
    if text == "ERROR" {
        return ReplyLine::Refused(WireError::Refused {
            what: what.to_string(),
            code: 0,
            name: "ERROR".into(),
        });
    }
    if let Some(c) = text.strip_prefix("+CME ERROR:") {
        let code: u32 = c.trim().parse().unwrap_or(0);
        return ReplyLine::Refused(WireError::Refused {
            what: what.to_string(),
            code,
            name: cme_name(code).into(),
        });
    }
    ReplyLine::Data(text)
}

/// The value of the first reply line starting with `prefix` (e.g. `+CGSN:`), unquoted.
pub fn prefixed_value(cmd: &str, lines: &[String], prefix: &str) -> Result<String, WireError> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| WireError::Protocol(format!("{cmd}: no '{prefix}' line in the reply")))
}

/// The credentials an `AT%CMNG=1` reply lists (`%CMNG: <tag>,<type>,"<sha>"` lines).
pub fn parse_cmng_list(lines: &[String]) -> Result<Vec<Credential>, WireError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (Vec<u8>, Vec<u8>) {
        use rcgen::PublicKeyData;
        let kp = crate::pki::keys::generate().unwrap();
        (kp.serialize_der(), kp.subject_public_key_info())
    }

    fn reply(id_key: &[u8], body: &[u8], kind: BodyKind, tag: u32) -> String {
        let claims = KeygenClaims {
            kind,
            device_uuid: [
                0x50, 0x4d, 0x11, 0x22, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1,
            ],
            sec_tag: tag,
            digest: Sha256::digest(body).into(),
            nonce: [7; 16],
        };
        keygen_reply_text(body, &keygen_cose(id_key, &claims).unwrap())
    }

    #[test]
    fn nordic_keygen_reply_checked() {
        let (id_key, id_pub) = identity();
        let (_, other_pub) = identity();
        let body = b"pretend this is a CSR".to_vec();
        let r = reply(&id_key, &body, BodyKind::Csr, 16842753);
        let kg = parse_keygen(&r, 16842753, BodyKind::Csr, None).unwrap();
        assert_eq!(kg.body_der, body);
        assert_eq!(kg.device_uuid, "504d1122-0000-4000-8000-000000000001");
        assert_eq!(kg.attestation, Attestation::Unverified);
        let bundle = IdentityKeys::entry(
            &[
                0x50, 0x4d, 0x11, 0x22, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1,
            ],
            &id_pub,
        );
        let keys = IdentityKeys::parse(&bundle).unwrap();
        let kg = parse_keygen(&r, 16842753, BodyKind::Csr, Some(&keys)).unwrap();
        assert_eq!(kg.attestation, Attestation::Verified);
        // Another modem's identity key: refused.
        let wrong = IdentityKeys::parse(&bundle.replace(
            &crate::pki::cert::to_pem("PUBLIC KEY", &id_pub),
            &crate::pki::cert::to_pem("PUBLIC KEY", &other_pub),
        ))
        .unwrap();
        let e = parse_keygen(&r, 16842753, BodyKind::Csr, Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // Wrong sec_tag, wrong kind, wrong body.
        let e = parse_keygen(&r, 42, BodyKind::Csr, None).unwrap_err();
        assert!(e.to_string().contains("sec_tag 16842753"), "{e}");
        let e = parse_keygen(&r, 16842753, BodyKind::PublicKey, None).unwrap_err();
        assert!(e.to_string().contains("payload id 9"), "{e}");
        let (_, cose) = r.split_once('.').unwrap();
        let e = parse_keygen(
            &format!("{}.{cose}", b64url(b"another CSR")),
            16842753,
            BodyKind::Csr,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("digest"), "{e}");
        // Response content 1: a public key body, payload id 8.
        let r = reply(&id_key, &id_pub, BodyKind::PublicKey, 7);
        let kg = parse_keygen(&r, 7, BodyKind::PublicKey, Some(&keys)).unwrap();
        assert_eq!(
            (kg.kind, kg.attestation),
            (BodyKind::PublicKey, Attestation::Verified)
        );
        // The old (misread) shape is refused.
        let mut old = Vec::new();
        cbor_head(&mut old, 4, 2);
        tstr(&mut old, "CSR-SHA256");
        bstr(&mut old, &Sha256::digest(&body));
        assert!(parse_keygen(
            &keygen_reply_text(&body, &old),
            16842753,
            BodyKind::Csr,
            None
        )
        .is_err());
        assert!(parse_keygen(
            &keygen_reply_text(&body, &[0xd2, 0x84]),
            1,
            BodyKind::Csr,
            None
        )
        .is_err());
    }

    #[test]
    fn negative_sec_tag_is_twos_complement() {
        let (id_key, _) = identity();
        let body = b"x".to_vec();
        let claims = KeygenClaims {
            kind: BodyKind::Csr,
            device_uuid: [1; 16],
            sec_tag: 0,
            digest: Sha256::digest(&body).into(),
            nonce: [0; 16],
        };
        let mut cose = keygen_cose(&id_key, &claims).unwrap();
        // Rewrite bstr(CBOR 0) = 41 00 as bstr(CBOR -1) = 41 20 (0xFFFFFFFF as i32).
        let at = cose.windows(2).position(|w| w == [0x41, 0x00]).unwrap();
        cose[at + 1] = 0x20;
        let e = parse_keygen(&keygen_reply_text(&body, &cose), 0, BodyKind::Csr, None).unwrap_err();
        assert!(
            e.to_string().contains(&format!("sec_tag {}", u32::MAX)),
            "{e}"
        );
    }

    #[test]
    fn identity_bundle_errors_name_the_line() {
        let (_, p) = identity();
        let one = IdentityKeys::entry(&[2; 16], &p);
        assert_eq!(
            IdentityKeys::parse(&format!("# keys\n\n{one}"))
                .unwrap()
                .len(),
            1
        );
        let e = IdentityKeys::parse(&format!("{one}{one}")).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = IdentityKeys::parse(&crate::pki::cert::to_pem("PUBLIC KEY", &p)).unwrap_err();
        assert!(e.starts_with("line 1:") && e.contains("Device-UUID"), "{e}");
        let e = IdentityKeys::parse("Device-UUID: nope\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }
}
