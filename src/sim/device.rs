//! The simulated device: its persistent state and the cradle protocol, device side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::PublicKeyData;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::faults::{Faults, Rng};
use crate::attestation::{self, WipeAttestation};
use crate::error::{Error, Result};
use crate::wire::{
    b64, b64_decode, code, Frame, PROTO_VERSION, SLOT_CERT, SLOT_CHAIN, SLOT_CONFIG, SLOT_KEY,
    SLOT_NEXT_CERT, SLOT_NEXT_CHAIN, SLOT_NEXT_KEY,
};

pub const SIM_MAX_LINE: usize = 1024;
pub const SIM_WINDOW: usize = 8;
const SLOTS: [&str; 7] = [
    SLOT_KEY,
    SLOT_CERT,
    SLOT_CHAIN,
    SLOT_CONFIG,
    SLOT_NEXT_KEY,
    SLOT_NEXT_CERT,
    SLOT_NEXT_CHAIN,
];
/// Slots a locked device still writes: the configuration, and the spare slots a
/// renewal fills while the sealed identity keeps working (SWITCH swaps them in).
fn writable_when_locked(slot: &str) -> bool {
    matches!(
        slot,
        SLOT_CONFIG | SLOT_NEXT_KEY | SLOT_NEXT_CERT | SLOT_NEXT_CHAIN
    )
}
/// Most data bytes one WRITE or READ frame may carry for a maxline (cradle-protocol(7)).
pub const fn chunk_limit(max_line: usize) -> usize {
    (max_line - 64) / 4 * 3
}

/// Arguments each request takes (strict mode refuses any other count with bad-argument).
fn arity(verb: &str) -> Option<usize> {
    Some(match verb {
        "KEYGEN" | "CSR" | "LOCK" | "NEXTKEY" => 0,
        "HELLO" | "STAT" | "ERASE" | "WIPE" | "SWITCH" => 1,
        "WRITE" | "COMMIT" | "READ" => 3,
        _ => return None,
    })
}

fn is_lower_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slot {
    #[serde(with = "hexbytes")]
    pub data: Vec<u8>,
    pub committed: bool,
}

/// Everything a device keeps across reboots (the simulator's "flash").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub hardware_id: String,
    pub model: String,
    pub firmware: String,
    /// The identity key (PKCS#8 DER), as a secure element would hold it.
    #[serde(with = "hexopt", default)]
    pub key: Option<Vec<u8>>,
    /// A spare key (NEXTKEY, or an injected next.key): SWITCH makes it the identity key.
    #[serde(with = "hexopt", default)]
    pub next_key: Option<Vec<u8>>,
    /// SWITCH requests executed.
    #[serde(default)]
    pub switches: u64,
    #[serde(default)]
    pub slots: BTreeMap<String, Slot>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub wipe_counter: u64,
    /// KEYGEN requests executed (so tests can tell a resent KEYGEN from a recovered one).
    #[serde(default)]
    pub keygens: u64,
    #[serde(default)]
    pub last_nonce: Option<String>,
    /// The reply to the last WIPE (`att=… sig=…`), resent when asked to wipe again
    /// after the key is gone (a reply lost to a pulled cable can still be collected).
    #[serde(default)]
    pub last_attestation: Option<Vec<String>>,
    /// nRF91 profile: credentials by (tag, type) as PEM text.
    #[serde(default)]
    pub cmng: BTreeMap<String, String>,
    /// MicroPython profile: the board's filesystem.
    #[serde(default)]
    pub micropython: super::micropython::Fs,
}

impl DeviceState {
    pub fn new(hardware_id: &str, model: &str) -> DeviceState {
        DeviceState {
            hardware_id: hardware_id.to_string(),
            model: model.to_string(),
            firmware: format!("sim-{}", env!("CARGO_PKG_VERSION")),
            key: None,
            next_key: None,
            switches: 0,
            slots: BTreeMap::new(),
            locked: false,
            wipe_counter: 0,
            keygens: 0,
            last_nonce: None,
            last_attestation: None,
            cmng: BTreeMap::new(),
            micropython: Default::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Option<DeviceState>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::input(format!(
                    "{}: not a simulator state file ({e})",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::input(e.to_string()))?;
        // Its own state file, which holds keys (PEM for nRF91 credentials).
        crate::outfile::replace_own_file(path, &text, 0o600)
    }

    pub fn state_name(&self) -> &'static str {
        if self.locked {
            "locked"
        } else if self.key.is_some() {
            "keyed"
        } else {
            "empty"
        }
    }

    pub fn spki(&self) -> Option<Vec<u8>> {
        let kp = rcgen::KeyPair::try_from(self.key.as_deref()?).ok()?;
        Some(kp.subject_public_key_info())
    }

    pub fn next_spki(&self) -> Option<Vec<u8>> {
        let kp = rcgen::KeyPair::try_from(self.next_key.as_deref()?).ok()?;
        Some(kp.subject_public_key_info())
    }

    /// Empties the spare slots and drops the spare key.
    fn clear_next(&mut self) {
        for s in [SLOT_NEXT_KEY, SLOT_NEXT_CERT, SLOT_NEXT_CHAIN] {
            self.slots.remove(s);
        }
        self.next_key = None;
    }
}

/// What the I/O loop must do with a request's outcome.
#[derive(Debug, Default)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// Hang up after the state change, without replying (disconnect fault).
    pub hangup: bool,
    pub stall: Option<Duration>,
}

impl Reply {
    fn frame(f: Frame) -> Reply {
        Reply {
            bytes: f.encode(),
            ..Default::default()
        }
    }
}

/// A device: state, where it is saved, faults, and counters for one-shot faults.
pub struct Device {
    pub state: DeviceState,
    pub state_path: Option<PathBuf>,
    pub faults: Faults,
    pub rng: Rng,
    /// Hold the host to the exact forms of cradle-protocol(7) (`cradle sim --strict`).
    pub strict: bool,
    /// The window HELLO advertises (`cradle sim --window`).
    pub window: usize,
    counts: BTreeMap<String, u32>,
    disconnect_fired: bool,
    stall_fired: bool,
    reject_lock_left: u32,
}

pub(crate) fn err(seq: u32, c: u32) -> Frame {
    Frame::new("ERR", seq, vec![c.to_string(), code::name(c).to_string()])
}

fn ok(seq: u32, args: Vec<String>) -> Frame {
    Frame::new("OK", seq, args)
}

fn sha256(d: &[u8]) -> [u8; 32] {
    Sha256::digest(d).into()
}

impl Device {
    pub fn new(state: DeviceState, state_path: Option<PathBuf>, faults: Faults) -> Device {
        let reject_lock_left = faults.reject_lock;
        Device {
            state,
            state_path,
            faults,
            rng: Rng::new(),
            strict: false,
            window: SIM_WINDOW,
            counts: BTreeMap::new(),
            disconnect_fired: false,
            stall_fired: false,
            reject_lock_left,
        }
    }

    pub fn save(&self) {
        if let Some(p) = &self.state_path {
            // A failed save is like a flash write error; the simulator reports it on stderr.
            if let Err(e) = self.state.save(p) {
                eprintln!("cradle sim: cannot save state: {e}");
            }
        }
    }

    /// Counts a handled step; true when the disconnect fault fires now.
    pub fn step(&mut self, step: &str) -> bool {
        let n = self.counts.entry(step.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        match &self.faults.disconnect_after {
            Some((s, at)) if !self.disconnect_fired && s == step && *at == n => {
                self.disconnect_fired = true;
                true
            }
            _ => false,
        }
    }

    /// Handles one received line (without its LF).
    pub fn handle_line(&mut self, line: &[u8]) -> Reply {
        let f = match Frame::parse(line) {
            Ok(f) if !(self.strict && Frame::strict_violation(line).is_some()) => f,
            // A garbled frame: say so with sequence 0 so the host resends at once.
            _ => return Reply::frame(err(0, code::BAD_FRAME)),
        };
        let seq = f.seq;
        let verb = f.verb.to_ascii_lowercase();
        let wrong_arity = self.strict && arity(&f.verb).is_some_and(|n| n != f.args.len());
        let handled = if wrong_arity {
            Err(code::BAD_ARGUMENT)
        } else {
            self.handle(&f)
        };
        let mut reply = match handled {
            Ok(r) => r,
            Err(c) => Reply::frame(err(seq, c)),
        };
        if self.step(&verb) {
            reply.hangup = true;
        }
        if self.faults.upper_crc && reply.bytes.len() > 9 && reply.bytes.ends_with(b"\n") {
            let n = reply.bytes.len();
            reply.bytes[n - 9..n - 1].make_ascii_uppercase();
        }
        if verb == "write" && !self.stall_fired {
            if let Some(d) = self.faults.stall {
                self.stall_fired = true;
                reply.stall = Some(d);
            }
        }
        reply
    }

    fn slot_arg<'a>(&self, f: &'a Frame, i: usize) -> std::result::Result<&'a str, u32> {
        let s = f
            .args
            .get(i)
            .map(String::as_str)
            .ok_or(code::BAD_ARGUMENT)?;
        if SLOTS.contains(&s) {
            Ok(s)
        } else {
            Err(code::UNKNOWN_SLOT)
        }
    }

    fn num_arg(f: &Frame, i: usize) -> std::result::Result<usize, u32> {
        f.args
            .get(i)
            .and_then(|a| a.parse().ok())
            .ok_or(code::BAD_ARGUMENT)
    }

    fn handle(&mut self, f: &Frame) -> std::result::Result<Reply, u32> {
        let seq = f.seq;
        match f.verb.as_str() {
            "HELLO" => {
                let v: u32 = f
                    .args
                    .first()
                    .and_then(|v| v.parse().ok())
                    .ok_or(code::BAD_ARGUMENT)?;
                if v != PROTO_VERSION {
                    return Err(code::UNSUPPORTED_VERSION);
                }
                if self.faults.long_line {
                    self.faults.long_line = false;
                    return Ok(Reply {
                        bytes: vec![b'A'; 1 << 20],
                        ..Default::default()
                    });
                }
                let s = &self.state;
                let mut args = vec![
                    format!("proto={PROTO_VERSION}"),
                    format!("hwid={}", s.hardware_id),
                    format!("model={}", s.model),
                    format!("fw={}", s.firmware),
                    format!("state={}", s.state_name()),
                    format!("maxline={SIM_MAX_LINE}"),
                    format!("window={}", self.window),
                ];
                if let Some(spki) = s.spki() {
                    args.push(format!("pub={}", b64(&spki)));
                }
                if let Some(spki) = s.next_spki() {
                    args.push(format!("next={}", b64(&spki)));
                }
                Ok(Reply::frame(ok(seq, args)))
            }
            "KEYGEN" => {
                if self.state.locked {
                    return Err(code::LOCKED);
                }
                let kp = crate::pki::keys::generate().map_err(|_| code::INTERNAL)?;
                self.state.keygens += 1;
                let spki = kp.subject_public_key_info();
                let csr_key = if self.faults.csr_wrong_key {
                    self.faults.csr_wrong_key = false;
                    crate::pki::keys::generate().map_err(|_| code::INTERNAL)?
                } else {
                    rcgen::KeyPair::try_from(kp.serialize_der().as_slice())
                        .map_err(|_| code::INTERNAL)?
                };
                let csr = make_csr(&csr_key, &self.state.hardware_id)?;
                self.state.key = Some(kp.serialize_der());
                // A new key makes any stored certificate meaningless.
                self.state.slots.clear();
                self.state.next_key = None;
                self.save();
                let csr_b64 = if self.faults.bad_base64 {
                    self.faults.bad_base64 = false;
                    "!!not*base64!!".to_string()
                } else {
                    b64(&csr)
                };
                Ok(Reply::frame(ok(
                    seq,
                    vec![format!("pub={}", b64(&spki)), format!("csr={csr_b64}")],
                )))
            }
            "CSR" => {
                // A CSR for the key the device already holds: idempotent, so a host that
                // lost the KEYGEN reply can fetch it without making another key.
                let key = self.state.key.clone().ok_or(code::NO_KEY)?;
                let kp = rcgen::KeyPair::try_from(key.as_slice()).map_err(|_| code::INTERNAL)?;
                let csr = make_csr(&kp, &self.state.hardware_id)?;
                Ok(Reply::frame(ok(seq, vec![format!("csr={}", b64(&csr))])))
            }
            "STAT" => {
                let slot = self.slot_arg(f, 0)?;
                let s = self.state.slots.get(slot).cloned().unwrap_or_default();
                Ok(Reply::frame(ok(
                    seq,
                    vec![
                        format!("len={}", s.data.len()),
                        format!("committed={}", u8::from(s.committed)),
                        format!("sha256={}", hex::encode(sha256(&s.data))),
                    ],
                )))
            }
            "ERASE" => {
                let slot = self.slot_arg(f, 0)?;
                // The config slot changes in service: LOCK seals the identity only.
                if self.state.locked && !writable_when_locked(slot) {
                    return Err(code::LOCKED);
                }
                self.state.slots.remove(slot);
                if slot == SLOT_KEY {
                    self.state.key = None;
                }
                if slot == SLOT_NEXT_KEY {
                    self.state.next_key = None;
                }
                self.save();
                Ok(Reply::frame(ok(seq, vec![])))
            }
            "WRITE" => {
                let slot = self.slot_arg(f, 0)?;
                let off = Self::num_arg(f, 1)?;
                let data = f
                    .args
                    .get(2)
                    .and_then(|d| b64_decode(d).ok())
                    .ok_or(code::BAD_ARGUMENT)?;
                if self.state.locked && !writable_when_locked(slot) {
                    return Err(code::LOCKED);
                }
                if data.len() > chunk_limit(SIM_MAX_LINE) || off > 1 << 20 {
                    return Err(code::BAD_ARGUMENT);
                }
                let s = self.state.slots.entry(slot.to_string()).or_default();
                let held = s.data.len();
                if off > held {
                    return Err(code::OFFSET_GAP);
                }
                // Offset-addressed, so a resent WRITE is harmless: the overlap must match.
                let overlap = (held - off).min(data.len());
                if s.data[off..off + overlap] != data[..overlap] {
                    return Err(code::DATA_CONFLICT);
                }
                if overlap < data.len() {
                    s.data.extend_from_slice(&data[overlap..]);
                    s.committed = false;
                    if slot == SLOT_KEY {
                        self.state.key = None;
                    }
                    if slot == SLOT_NEXT_KEY {
                        self.state.next_key = None;
                    }
                }
                let len = self.state.slots[slot].data.len();
                self.save();
                Ok(Reply::frame(ok(seq, vec![format!("len={len}")])))
            }
            "COMMIT" => {
                let slot = self.slot_arg(f, 0)?;
                let len = Self::num_arg(f, 1)?;
                let want = f
                    .args
                    .get(2)
                    .filter(|h| is_lower_hex64(h))
                    .ok_or(code::BAD_ARGUMENT)?;
                let s = self.state.slots.get(slot).cloned().unwrap_or_default();
                let got = hex::encode(sha256(&s.data));
                // Locked: only a resent COMMIT of what is already committed is answered.
                if self.state.locked
                    && !writable_when_locked(slot)
                    && !(s.committed && s.data.len() == len && &got == want)
                {
                    return Err(code::LOCKED);
                }
                if s.data.len() != len {
                    return Err(code::NOT_COMMITTED);
                }
                if &got != want {
                    return Err(code::HASH_MISMATCH);
                }
                if !s.committed {
                    if slot == SLOT_KEY {
                        match crate::pki::keys::key_pair_from_pkcs8(&s.data, "injected key") {
                            Ok(_) => {
                                self.state.key = Some(s.data.clone());
                                // As after KEYGEN: a cert for another key is meaningless.
                                self.state.slots.remove(SLOT_CERT);
                                self.state.slots.remove(SLOT_CHAIN);
                            }
                            Err(_) => {
                                self.state.slots.remove(slot);
                                self.save();
                                return Err(code::BAD_KEY);
                            }
                        }
                    }
                    if slot == SLOT_NEXT_KEY {
                        match crate::pki::keys::key_pair_from_pkcs8(&s.data, "injected key") {
                            // A spare key: the identity key stays until SWITCH.
                            Ok(_) => self.state.next_key = Some(s.data.clone()),
                            Err(_) => {
                                self.state.slots.remove(slot);
                                self.save();
                                return Err(code::BAD_KEY);
                            }
                        }
                    }
                    if let Some(s) = self.state.slots.get_mut(slot) {
                        s.committed = true;
                    }
                    self.save();
                }
                Ok(Reply::frame(ok(seq, vec![format!("sha256={got}")])))
            }
            "READ" => {
                let slot = self.slot_arg(f, 0)?;
                let off = Self::num_arg(f, 1)?;
                let n = Self::num_arg(f, 2)?;
                if slot == SLOT_KEY || slot == SLOT_NEXT_KEY {
                    return Err(code::READ_FORBIDDEN);
                }
                let s = self.state.slots.get(slot).cloned().unwrap_or_default();
                if n > chunk_limit(SIM_MAX_LINE)
                    || off.checked_add(n).is_none_or(|end| end > s.data.len())
                {
                    return Err(code::BAD_ARGUMENT);
                }
                let mut data = s.data[off..off + n].to_vec();
                if self.faults.hash_mismatch && !data.is_empty() {
                    self.faults.hash_mismatch = false;
                    data[0] ^= 0x01;
                }
                Ok(Reply::frame(ok(seq, vec![format!("data={}", b64(&data))])))
            }
            "LOCK" => {
                if self.state.locked {
                    return Ok(Reply::frame(ok(seq, vec!["state=locked".into()])));
                }
                let spki = self.state.spki().ok_or(code::NO_KEY)?;
                let cert = self
                    .state
                    .slots
                    .get(SLOT_CERT)
                    .filter(|s| s.committed)
                    .ok_or(code::NOT_COMMITTED)?;
                let info = crate::pki::cert::info_of(&cert.data).map_err(|_| code::BAD_KEY)?;
                if info.pubkey_sha256 != hex::encode(sha256(&spki)) {
                    return Err(code::BAD_KEY);
                }
                if self.reject_lock_left > 0 {
                    self.reject_lock_left -= 1;
                    return Err(code::LOCK_REFUSED);
                }
                self.state.locked = true;
                self.save();
                Ok(Reply::frame(ok(seq, vec!["state=locked".into()])))
            }
            "NEXTKEY" => {
                // A spare key for a renewal with a new key: the identity key (and the
                // sealed identity) stay in use until SWITCH.
                let kp = crate::pki::keys::generate().map_err(|_| code::INTERNAL)?;
                self.state.keygens += 1;
                let spki = kp.subject_public_key_info();
                let csr = make_csr(&kp, &self.state.hardware_id)?;
                self.state.clear_next();
                self.state.next_key = Some(kp.serialize_der());
                self.save();
                Ok(Reply::frame(ok(
                    seq,
                    vec![format!("pub={}", b64(&spki)), format!("csr={}", b64(&csr))],
                )))
            }
            "SWITCH" => {
                let want = f
                    .args
                    .first()
                    .filter(|h| is_lower_hex64(h))
                    .ok_or(code::BAD_ARGUMENT)?
                    .clone();
                let next = self.state.slots.get(SLOT_NEXT_CERT).cloned();
                let next = match next {
                    Some(n) if n.committed && hex::encode(sha256(&n.data)) == want => n,
                    // A resent SWITCH whose reply was lost: already done.
                    _ => {
                        let held = self
                            .state
                            .slots
                            .get(SLOT_CERT)
                            .filter(|c| c.committed && hex::encode(sha256(&c.data)) == want);
                        return match held {
                            Some(_) if next.is_none() => {
                                Ok(Reply::frame(ok(seq, vec![format!("sha256={want}")])))
                            }
                            _ => Err(code::NOT_COMMITTED),
                        };
                    }
                };
                let chain = self
                    .state
                    .slots
                    .get(SLOT_NEXT_CHAIN)
                    .filter(|c| c.committed)
                    .cloned()
                    .ok_or(code::NOT_COMMITTED)?;
                // The successor must certify the key the device will hold after the switch.
                let spki = match &self.state.next_key {
                    Some(_) => self.state.next_spki(),
                    None => self.state.spki(),
                }
                .ok_or(code::NO_KEY)?;
                let info = crate::pki::cert::info_of(&next.data).map_err(|_| code::BAD_KEY)?;
                if info.pubkey_sha256 != hex::encode(sha256(&spki)) {
                    return Err(code::BAD_KEY);
                }
                // One step, as one flash transaction would be: identity and spare swap.
                if let Some(k) = self.state.next_key.take() {
                    self.state.key = Some(k);
                }
                self.state.slots.insert(SLOT_CERT.into(), next);
                self.state.slots.insert(SLOT_CHAIN.into(), chain);
                self.state.clear_next();
                self.state.switches += 1;
                self.save();
                Ok(Reply::frame(ok(seq, vec![format!("sha256={want}")])))
            }
            "WIPE" => {
                let nonce_hex = f
                    .args
                    .first()
                    .filter(|h| is_lower_hex64(h))
                    .ok_or(code::BAD_ARGUMENT)?;
                let nonce: [u8; 32] = hex::decode(nonce_hex)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or(code::BAD_ARGUMENT)?;
                let key = match (&self.state.key, &self.state.last_attestation) {
                    (Some(k), _) => k.clone(),
                    // Already wiped: resend the attestation made then (it answers the
                    // earlier nonce; the host accepts it once if that was never used).
                    (None, Some(args)) => return Ok(Reply::frame(ok(seq, args.clone()))),
                    (None, None) => return Err(code::NO_KEY),
                };
                let mut erased: Vec<String> = self
                    .state
                    .slots
                    .iter()
                    .filter(|(n, s)| !s.data.is_empty() && n.as_str() != SLOT_KEY)
                    .map(|(n, _)| n.clone())
                    .collect();
                erased.insert(0, SLOT_KEY.to_string());
                let answered = if self.faults.replay_nonce {
                    self.state
                        .last_nonce
                        .as_ref()
                        .and_then(|h| hex::decode(h).ok())
                        .and_then(|v| <[u8; 32]>::try_from(v).ok())
                        .unwrap_or_else(|| {
                            let mut n = [0u8; 32];
                            for b in n.iter_mut() {
                                *b = self.rng.next_u64() as u8;
                            }
                            n
                        })
                } else {
                    nonce
                };
                let mut att = WipeAttestation {
                    hardware_id: self.state.hardware_id.clone(),
                    nonce: answered,
                    erased,
                    counter: self.state.wipe_counter + 1,
                    signature: vec![],
                };
                let signing_key = if self.faults.forge_attestation {
                    crate::pki::keys::generate()
                        .map_err(|_| code::INTERNAL)?
                        .serialize_der()
                } else {
                    key
                };
                attestation::sign(&signing_key, &mut att).map_err(|_| code::INTERNAL)?;
                // Signed first, then erased: the key is gone once the reply is out.
                self.state.key = None;
                self.state.next_key = None;
                self.state.slots.clear();
                self.state.cmng.clear();
                self.state.locked = false;
                self.state.wipe_counter += 1;
                self.state.last_nonce = Some(nonce_hex.clone());
                let mut payload = att.payload();
                if self.faults.bad_attestation {
                    // What a firmware reading the page loosely might send: no final LF.
                    payload.pop();
                    att.signature = sign_bytes(&signing_key, &payload)?;
                }
                let args = vec![
                    format!("att={}", b64(&payload)),
                    format!("sig={}", b64(&att.signature)),
                ];
                self.state.last_attestation = Some(args.clone());
                self.save();
                Ok(Reply::frame(ok(seq, args)))
            }
            _ => Err(code::UNKNOWN_COMMAND),
        }
    }
}

fn sign_bytes(pkcs8: &[u8], data: &[u8]) -> std::result::Result<Vec<u8>, u32> {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8).map_err(|_| code::INTERNAL)?;
    let sig: p256::ecdsa::Signature = key.sign(data);
    Ok(sig.to_der().as_bytes().to_vec())
}

fn make_csr(key: &rcgen::KeyPair, hwid: &str) -> std::result::Result<Vec<u8>, u32> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|_| code::INTERNAL)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hwid.to_string());
    let csr = params.serialize_request(key).map_err(|_| code::INTERNAL)?;
    Ok(csr.der().to_vec())
}

mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hexopt {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(h) => hex::decode(h).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wipe(dev: &mut Device, seq: u32, nonce: [u8; 32]) -> Frame {
        let line = Frame::new("WIPE", seq, vec![hex::encode(nonce)]).encode();
        let reply = dev.handle_line(line.strip_suffix(b"\n").unwrap_or(&line));
        Frame::parse(reply.bytes.strip_suffix(b"\n").unwrap_or(&reply.bytes)).unwrap()
    }

    fn answer(dev: &mut Device, line: &str) -> Frame {
        let reply = dev.handle_line(line.as_bytes());
        Frame::parse(reply.bytes.strip_suffix(b"\n").unwrap_or(&reply.bytes)).unwrap()
    }

    fn line(body: &str) -> String {
        format!("${body} *{:08x}", crate::wire::crc32(body.as_bytes()))
    }

    /// (what the page forbids, the line, the strict reply's SEQ and code)
    fn forbidden() -> Vec<(&'static str, String, u32, u32)> {
        let crc = format!("{:08X}", crate::wire::crc32(b"HELLO 5 1"));
        vec![
            (
                "upper-case CRC",
                format!("$HELLO 5 1 *{crc}"),
                0,
                code::BAD_FRAME,
            ),
            ("SEQ 0", line("HELLO 0 1"), 0, code::BAD_FRAME),
            (
                "10-digit SEQ",
                line("HELLO 1000000000 1"),
                0,
                code::BAD_FRAME,
            ),
            ("leading zero", line("HELLO 05 1"), 0, code::BAD_FRAME),
            ("double space", line("HELLO 5  1"), 0, code::BAD_FRAME),
            (
                "extra HELLO argument",
                line("HELLO 5 1 x"),
                5,
                code::BAD_ARGUMENT,
            ),
            (
                "missing STAT argument",
                line("STAT 5"),
                5,
                code::BAD_ARGUMENT,
            ),
        ]
    }

    #[test]
    fn strict_mode_refuses_each_form_the_page_forbids() {
        for (what, l, seq, c) in forbidden() {
            let mut dev = Device::new(DeviceState::new("HW-S", "sim"), None, Faults::default());
            // Lenient: taken (STAT without a slot is refused either way).
            let lenient = answer(&mut dev, &l);
            assert!(
                lenient.verb == "OK" || what.contains("STAT"),
                "{what}: {lenient:?}"
            );
            dev.strict = true;
            let strict = answer(&mut dev, &l);
            assert_eq!(
                (strict.verb.as_str(), strict.seq, strict.args[0].as_str()),
                ("ERR", seq, c.to_string().as_str()),
                "{what}"
            );
        }
        // The host's own frames are in the exact form.
        let mut dev = Device::new(DeviceState::new("HW-S", "sim"), None, Faults::default());
        dev.strict = true;
        let hello = Frame::new("HELLO", 5, vec!["1".into()]).encode();
        assert_eq!(
            answer(
                &mut dev,
                std::str::from_utf8(&hello[..hello.len() - 1]).unwrap()
            )
            .verb,
            "OK"
        );
    }

    #[test]
    fn wipe_without_key_resends_the_stored_reply_or_says_no_key() {
        let mut state = DeviceState::new("HW-T", "sim");
        let mut dev = Device::new(state.clone(), None, Faults::default());
        let r = wipe(&mut dev, 7, [1; 32]);
        assert_eq!((r.verb.as_str(), r.args[0].as_str()), ("ERR", "8"));

        state.key = Some(crate::pki::keys::generate().unwrap().serialize_der());
        let mut dev = Device::new(state, None, Faults::default());
        let first = wipe(&mut dev, 8, [1; 32]);
        assert_eq!(first.verb, "OK");
        assert!(dev.state.key.is_none());
        // Asked again (the first reply was lost): the same attestation, for nonce 1.
        let again = wipe(&mut dev, 9, [2; 32]);
        assert_eq!((again.verb.as_str(), &again.args), ("OK", &first.args));
        assert_eq!(again.seq, 9);
        assert_eq!(dev.state.wipe_counter, 1);
    }
    /// Writes `data` into `slot` and commits it, asserting OK.
    fn put(dev: &mut Device, seq: &mut u32, slot: &str, data: &[u8]) {
        *seq += 1;
        let w = Frame::new("WRITE", *seq, vec![slot.into(), "0".into(), b64(data)]).encode();
        let r = answer(dev, std::str::from_utf8(&w[..w.len() - 1]).unwrap());
        assert_eq!(r.verb, "OK", "WRITE {slot}: {r:?}");
        *seq += 1;
        let c = Frame::new(
            "COMMIT",
            *seq,
            vec![
                slot.into(),
                data.len().to_string(),
                hex::encode(sha256(data)),
            ],
        )
        .encode();
        let r = answer(dev, std::str::from_utf8(&c[..c.len() - 1]).unwrap());
        assert_eq!(r.verb, "OK", "COMMIT {slot}: {r:?}");
    }

    fn request(dev: &mut Device, seq: u32, verb: &str, args: Vec<String>) -> Frame {
        let l = Frame::new(verb, seq, args).encode();
        answer(dev, std::str::from_utf8(&l[..l.len() - 1]).unwrap())
    }

    /// A certificate for `key` (PKCS#8) from a throwaway issuer.
    fn cert_for(key: &[u8]) -> Vec<u8> {
        let kp = rcgen::KeyPair::try_from(key).unwrap();
        let issuer = crate::pki::keys::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["dev".to_string()]).unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_string()])
            .unwrap()
            .self_signed(&issuer)
            .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), issuer).unwrap();
        params.signed_by(&kp, &issuer).unwrap().der().to_vec()
    }

    #[test]
    fn a_locked_device_takes_a_successor_in_its_spare_slots_and_switches_once() {
        let key = crate::pki::keys::generate().unwrap().serialize_der();
        let mut state = DeviceState::new("HW-R", "sim");
        state.key = Some(key.clone());
        let old = cert_for(&key);
        for (slot, data) in [(SLOT_CERT, old.clone()), (SLOT_CHAIN, b"chain".to_vec())] {
            state.slots.insert(
                slot.into(),
                Slot {
                    data,
                    committed: true,
                },
            );
        }
        state.locked = true;
        let mut dev = Device::new(state, None, Faults::default());
        dev.strict = true;
        let mut seq = 1;
        // The sealed identity is refused, the spare slots are not.
        let r = request(&mut dev, 2, "ERASE", vec![SLOT_CERT.into()]);
        assert_eq!(r.args[0], code::LOCKED.to_string());
        let new = cert_for(&key);
        // SWITCH before the spare slots are committed: not-committed, nothing changes.
        let sha = hex::encode(sha256(&new));
        let r = request(&mut dev, 3, "SWITCH", vec![sha.clone()]);
        assert_eq!(r.args[0], code::NOT_COMMITTED.to_string());
        seq += 2;
        put(&mut dev, &mut seq, SLOT_NEXT_CERT, &new);
        put(&mut dev, &mut seq, SLOT_NEXT_CHAIN, b"chain2");
        assert_eq!(dev.state.slots[SLOT_CERT].data, old);
        // A wrong hash is refused; the right one switches, keeping the lock.
        let r = request(&mut dev, 20, "SWITCH", vec!["0".repeat(64)]);
        assert_eq!(r.args[0], code::NOT_COMMITTED.to_string());
        let r = request(&mut dev, 21, "SWITCH", vec![sha.clone()]);
        assert_eq!(
            (r.verb.as_str(), r.args[0].as_str()),
            ("OK", format!("sha256={sha}").as_str())
        );
        assert_eq!(dev.state.slots[SLOT_CERT].data, new);
        assert_eq!(dev.state.slots[SLOT_CHAIN].data, b"chain2");
        assert!(dev.state.locked && !dev.state.slots.contains_key(SLOT_NEXT_CERT));
        // Resent (the reply was lost): OK again, no second switch.
        let r = request(&mut dev, 22, "SWITCH", vec![sha]);
        assert_eq!(r.verb, "OK");
        assert_eq!(dev.state.switches, 1);
    }

    #[test]
    fn switch_refuses_a_successor_for_another_key_and_installs_a_spare_key() {
        let key = crate::pki::keys::generate().unwrap().serialize_der();
        let mut state = DeviceState::new("HW-K", "sim");
        state.key = Some(key.clone());
        let mut dev = Device::new(state, None, Faults::default());
        let mut seq = 1;
        // A successor for a key the device does not hold: bad-key.
        let other = crate::pki::keys::generate().unwrap().serialize_der();
        let wrong = cert_for(&other);
        put(&mut dev, &mut seq, SLOT_NEXT_CERT, &wrong);
        put(&mut dev, &mut seq, SLOT_NEXT_CHAIN, b"c");
        let r = request(&mut dev, 30, "SWITCH", vec![hex::encode(sha256(&wrong))]);
        assert_eq!(r.args[0], code::BAD_KEY.to_string());
        assert_eq!(dev.state.key.as_deref(), Some(key.as_slice()));
        // NEXTKEY: a spare key, reported by HELLO; the spare key slot is never readable.
        let r = request(&mut dev, 31, "NEXTKEY", vec![]);
        assert_eq!(r.verb, "OK");
        let spare = dev.state.next_key.clone().unwrap();
        let hello = request(&mut dev, 32, "HELLO", vec!["1".into()]);
        assert!(hello.args.iter().any(|a| a.starts_with("next=")));
        let r = request(
            &mut dev,
            33,
            "READ",
            vec![SLOT_NEXT_KEY.into(), "0".into(), "1".into()],
        );
        assert_eq!(r.args[0], code::READ_FORBIDDEN.to_string());
        let new = cert_for(&spare);
        let mut seq = 40;
        put(&mut dev, &mut seq, SLOT_NEXT_CERT, &new);
        put(&mut dev, &mut seq, SLOT_NEXT_CHAIN, b"c");
        let r = request(&mut dev, 50, "SWITCH", vec![hex::encode(sha256(&new))]);
        assert_eq!(r.verb, "OK", "{r:?}");
        assert_eq!(dev.state.key.as_deref(), Some(spare.as_slice()));
        assert!(dev.state.next_key.is_none());
    }
}
