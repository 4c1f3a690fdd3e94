//! The cradle device protocol, host side: frames, typed errors, and a session that runs
//! over anything `Read + Write` (a serial port, a pseudo-terminal, an in-memory pipe).
//! The protocol is specified in `man/cradle-protocol.7`.

pub mod conformance;
pub mod esp_rom;
pub mod frame;
pub mod nrf91;
pub mod raw_repl;
pub mod slip;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::attestation::WipeAttestation;
pub use frame::{b64, b64_decode, crc32, Frame, Line, LineBuffer, MAX_LINE};

/// Protocol version spoken by this host.
pub const PROTO_VERSION: u32 = 1;
/// Attempts for an idempotent request that end in a timeout (first try included); also
/// the KEYGEN sends allowed, and the timed-out rounds without progress a WRITE or READ
/// stream of one object may have. Each timeout costs the session timeout plus line time,
/// so a request kind fails after about `ATTEMPTS` × timeout (cradle-protocol(7), RETRIES).
pub const ATTEMPTS: u32 = 4;
/// Attempts of one idempotent request that end in a garbled frame (known at once).
pub const GARBLED_ATTEMPTS: u32 = 4 * ATTEMPTS;
/// Resynchronisations (STAT and continue) without progress allowed while writing or
/// reading one object, whatever ended them.
pub const MAX_RESYNC: u32 = 12;

/// Slots a device holds (named storage for identity objects).
pub const SLOT_KEY: &str = "key";
pub const SLOT_CERT: &str = "cert";
pub const SLOT_CHAIN: &str = "chain";
/// Spare slots for renewal (cradle-protocol(7) RENEWAL): a successor identity is written
/// here while the active one keeps working, then SWITCH makes it the identity.
pub const SLOT_NEXT_KEY: &str = "next.key";
pub const SLOT_NEXT_CERT: &str = "next.cert";
pub const SLOT_NEXT_CHAIN: &str = "next.chain";
/// The device's configuration (cradle-protocol(7) "Config slot"): readable, and
/// writable also after LOCK.
pub const SLOT_CONFIG: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{path}: cannot open serial port: {msg}")]
    Open { path: String, msg: String },
    #[error("serial I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("device disconnected (port closed or hung up)")]
    Disconnected,
    #[error("no reply from the device to {what} within {secs:.1}s")]
    Timeout { what: String, secs: f64 },
    #[error("device sent more than {limit} bytes without a line end; reply rejected")]
    LineTooLong { limit: usize },
    #[error("bad frame from the device: {0}")]
    BadFrame(String),
    #[error("frame CRC mismatch (computed {got:08x}, frame says {want:08x})")]
    Crc { got: u32, want: u32 },
    #[error("device refused {what}: error {code} ({name})")]
    Refused {
        what: String,
        code: u32,
        name: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// WIPE was answered (the device has wiped) but the attestation breaks the page's
    /// rules: a re-run gets the same stored reply, so it cannot be collected again.
    #[error("the device answered WIPE, so it has wiped, but its attestation is rejected: {0}")]
    Attestation(String),
    #[error("verification failed: {0}")]
    Verify(String),
    /// The device answered correctly but is not what the run expects (another device
    /// after a reconnect, a CSR for another key): the message says it all.
    #[error("{0}")]
    Unexpected(String),
}

impl WireError {
    /// Errors after which reopening the port and resuming can help.
    pub fn is_link_problem(&self) -> bool {
        matches!(
            self,
            WireError::Io(_) | WireError::Disconnected | WireError::Timeout { .. }
        )
    }
}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> Self {
        crate::Error::Device(e.to_string())
    }
}

/// Device error codes (the `ERR` reply), see cradle-protocol(7).
pub mod code {
    pub const BAD_FRAME: u32 = 1;
    pub const UNKNOWN_COMMAND: u32 = 2;
    pub const BAD_ARGUMENT: u32 = 3;
    pub const LINE_TOO_LONG: u32 = 4;
    pub const OFFSET_GAP: u32 = 5;
    pub const DATA_CONFLICT: u32 = 6;
    pub const HASH_MISMATCH: u32 = 7;
    pub const NO_KEY: u32 = 8;
    pub const LOCKED: u32 = 9;
    pub const NOT_COMMITTED: u32 = 10;
    pub const UNKNOWN_SLOT: u32 = 11;
    pub const BAD_KEY: u32 = 12;
    pub const LOCK_REFUSED: u32 = 13;
    pub const READ_FORBIDDEN: u32 = 14;
    pub const INTERNAL: u32 = 15;
    pub const UNSUPPORTED_VERSION: u32 = 16;

    pub fn name(code: u32) -> &'static str {
        match code {
            BAD_FRAME => "bad-frame",
            UNKNOWN_COMMAND => "unknown-command",
            BAD_ARGUMENT => "bad-argument",
            LINE_TOO_LONG => "line-too-long",
            OFFSET_GAP => "offset-gap",
            DATA_CONFLICT => "data-conflict",
            HASH_MISMATCH => "hash-mismatch",
            NO_KEY => "no-key",
            LOCKED => "locked",
            NOT_COMMITTED => "not-committed",
            UNKNOWN_SLOT => "unknown-slot",
            BAD_KEY => "bad-key",
            LOCK_REFUSED => "lock-refused",
            READ_FORBIDDEN => "read-forbidden",
            UNSUPPORTED_VERSION => "unsupported-version",
            _ => "internal",
        }
    }
}

/// What a device says about itself in reply to HELLO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    pub proto: u32,
    pub hardware_id: String,
    pub model: String,
    pub firmware: String,
    /// `empty` (no key), `keyed` (key present, not locked) or `locked`.
    pub state: String,
    /// Longest line the device accepts, LF included.
    pub max_line: usize,
    /// Requests the device can buffer (frames the host may keep in flight).
    pub window: usize,
    /// A factory serial number, if the device has one.
    pub serial: Option<String>,
    /// SubjectPublicKeyInfo (DER) of the device's identity key, if it has one.
    #[serde(skip)]
    pub public_key: Option<Vec<u8>>,
    /// SubjectPublicKeyInfo (DER) of a spare key waiting in the next.key slot (NEXTKEY
    /// or an injected one), if the device has one.
    #[serde(skip)]
    pub next_key: Option<Vec<u8>>,
}

impl DeviceInfo {
    pub fn locked(&self) -> bool {
        self.state == "locked"
    }
}

/// One slot as reported by STAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    pub len: u64,
    pub committed: bool,
    /// SHA-256 of the bytes held (the prefix written so far).
    pub sha256: [u8; 32],
}

/// Bytes and retries seen by a session (for reports and the benchmark).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub retries: u32,
    pub resyncs: u32,
    pub garbage_lines: u32,
    /// Waits that ended at their deadline with no reply.
    pub timeouts: u32,
}

/// A checked identifier from a device (hardware id, model…): printable, no spaces.
pub fn check_token(what: &str, v: &str) -> Result<(), WireError> {
    if v.is_empty() || v.len() > 64 {
        return Err(WireError::Protocol(format!(
            "{what} must be 1-64 characters"
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+')))
    {
        return Err(WireError::Protocol(format!(
            "{what} '{}' contains '{}'",
            v.escape_default(),
            c.escape_default()
        )));
    }
    Ok(())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// One line from the device, and the request it answers.
struct Incoming {
    /// The frame, or `None` for a line that failed to parse (damaged on the way).
    frame: Option<Frame>,
    /// The outstanding request this line answers: a reply's own SEQ; for a damaged line
    /// or an ERR with sequence 0, the oldest unanswered request (the device answers in
    /// order). `None` when it answers nothing outstanding (a stale reply, noise).
    answers: Option<u32>,
}

/// Requests remembered as unanswered, at most (more are forgotten, oldest first).
const MAX_UNANSWERED: usize = 256;

/// A host session with one device over a byte stream.
pub struct Session<T: Read + Write> {
    port: T,
    lines: LineBuffer,
    queue: VecDeque<Option<Frame>>,
    /// Requests sent and not answered yet, oldest first. The device answers each request
    /// once and in order, so a reply to one answers every request sent before it (those
    /// answers were lost), and a damaged line answers the oldest one.
    unanswered: VecDeque<u32>,
    seq: u32,
    timeout: Duration,
    byte_time: Duration,
    max_line: usize,
    window: usize,
    pub stats: Stats,
    info: Option<DeviceInfo>,
    /// Slots known to be empty (KEYGEN erases cert and chain): no STAT needed first.
    known_empty: Vec<&'static str>,
}

/// The port type `open` returns.
pub type Port = serialport::TTYPort;

/// Opens a serial port (or pty) at `baud` and starts a session on it. `timeout` is the
/// time a device may take to start answering a request (the line time is added).
pub fn open(path: &Path, baud: u32, timeout: Duration) -> Result<Session<Port>, WireError> {
    Ok(Session::new(open_port(path, baud)?, baud, timeout))
}

/// Opens a serial port raw, 8N1, with a short read timeout, discarding stale input.
pub fn open_port(path: &Path, baud: u32) -> Result<Port, WireError> {
    let name = path.to_string_lossy().to_string();
    let err = |e: serialport::Error| WireError::Open {
        path: name.clone(),
        msg: e.to_string(),
    };
    let port = serialport::new(name.clone(), baud)
        .timeout(Duration::from_millis(20))
        .open_native()
        .map_err(err)?;
    // Bytes queued before we opened belong to nobody's request (boot noise, a previous host).
    serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input).map_err(err)?;
    Ok(port)
}

impl<T: Read + Write> Session<T> {
    /// A session over `port`. The port's own read timeout should be short (tens of ms):
    /// the session keeps its deadlines itself and treats `TimedOut`/`WouldBlock` as "no data yet".
    pub fn new(port: T, baud: u32, timeout: Duration) -> Session<T> {
        use rand_core::RngCore;
        // A random start keeps replies from an earlier session from matching ours.
        let seq = (rand_core::OsRng.next_u32() % 1_000_000) + 1;
        Session {
            port,
            lines: LineBuffer::new(MAX_LINE),
            queue: VecDeque::new(),
            unanswered: VecDeque::new(),
            seq,
            timeout,
            byte_time: Duration::from_secs_f64(10.0 / baud.max(1) as f64),
            max_line: 256,
            window: 1,
            stats: Stats::default(),
            info: None,
            known_empty: Vec::new(),
        }
    }

    pub fn info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }

    pub fn port_mut(&mut self) -> &mut T {
        &mut self.port
    }

    fn line_time(&self, bytes: usize) -> Duration {
        self.byte_time * bytes as u32
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = if self.seq >= 999_999_999 {
            1
        } else {
            self.seq + 1
        };
        self.seq
    }

    /// Sends one request frame; returns its sequence number.
    pub fn send(&mut self, verb: &str, args: Vec<String>) -> Result<u32, WireError> {
        let seq = self.next_seq();
        let bytes = Frame::new(verb, seq, args).encode();
        self.port.write_all(&bytes)?;
        self.port.flush()?;
        self.stats.tx_bytes += bytes.len() as u64;
        if self.unanswered.len() >= MAX_UNANSWERED {
            self.unanswered.pop_front();
        }
        self.unanswered.push_back(seq);
        Ok(seq)
    }

    /// Whether `seq` was sent and its answer has not arrived (intact or damaged) yet.
    fn is_unanswered(&self, seq: u32) -> bool {
        self.unanswered.contains(&seq)
    }

    /// Next line: a well-formed frame or a damaged line (`frame: None`), with the request
    /// it answers; `Timeout` at `deadline` (everything outstanding is then taken as lost).
    /// An overlong line is an error.
    fn recv_line(&mut self, deadline: Instant, what: &str) -> Result<Incoming, WireError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.queue.pop_front() {
                let answers = match &frame {
                    Some(f) if f.seq != 0 => {
                        // Replies come in order: every request sent before this one has
                        // been answered too (its answer was lost if it did not come).
                        let i = self.unanswered.iter().position(|s| *s == f.seq);
                        i.map(|i| {
                            self.unanswered.drain(..=i);
                            f.seq
                        })
                    }
                    // ERR 0 (a request arrived garbled) or a damaged reply: the oldest.
                    _ => self.unanswered.pop_front(),
                };
                return Ok(Incoming { frame, answers });
            }
            let now = Instant::now();
            if now >= deadline {
                self.unanswered.clear();
                self.stats.timeouts += 1;
                return Err(WireError::Timeout {
                    what: what.to_string(),
                    secs: self.timeout.as_secs_f64(),
                });
            }
            match self.port.read(&mut buf) {
                Ok(0) => return Err(WireError::Disconnected),
                Ok(n) => {
                    self.stats.rx_bytes += n as u64;
                    let mut lines = Vec::new();
                    self.lines.push(&buf[..n], &mut lines);
                    for l in lines {
                        match l {
                            Line::TooLong => {
                                self.lines.clear();
                                return Err(WireError::LineTooLong { limit: MAX_LINE });
                            }
                            Line::Complete(l) => match Frame::parse(&l) {
                                Ok(f) => self.queue.push_back(Some(f)),
                                Err(_) => {
                                    self.stats.garbage_lines += 1;
                                    self.queue.push_back(None);
                                }
                            },
                        }
                    }
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

    /// Waits for the reply to `seq`. `Ok(None)` means the device reported a garbled
    /// frame (ERR with sequence 0), or, if `lost_reply_ends` is set, that the reply to
    /// `seq` itself arrived damaged: the request should be sent again.
    fn wait(
        &mut self,
        seq: u32,
        deadline: Instant,
        what: &str,
        lost_reply_ends: bool,
    ) -> Result<Option<Frame>, WireError> {
        loop {
            let rx = self.recv_line(deadline, what)?;
            let Some(f) = rx.frame else {
                // A damaged line: if it stands for our reply, that reply will never come.
                // Otherwise it answered an earlier request (or was noise): keep waiting.
                if lost_reply_ends && rx.answers == Some(seq) {
                    return Ok(None);
                }
                continue;
            };
            if f.seq == seq {
                if f.verb == "ERR" {
                    return Err(refused(what, &f));
                }
                if f.verb != "OK" {
                    return Err(WireError::Protocol(format!(
                        "unexpected reply '{}' to {what}",
                        f.verb
                    )));
                }
                return Ok(Some(f));
            }
            if f.seq == 0 && f.verb == "ERR" {
                return Ok(None);
            }
            // A stale reply to an earlier (retried) request: skip it.
        }
    }

    /// Sends a request and waits for its reply. Only idempotent requests are retried.
    pub fn request(
        &mut self,
        verb: &str,
        args: Vec<String>,
        idempotent: bool,
    ) -> Result<Frame, WireError> {
        let what = verb.to_string();
        let attempts = if idempotent { ATTEMPTS } else { 1 };
        // A garbled frame in either direction (the device's ERR with sequence 0, or our
        // reply arriving with a bad CRC) is known at once, so an idempotent request is sent
        // again without waiting for the timeout. On a noisy line that happens often (0.2%
        // bad bytes lose 40% of 250-byte replies), so it has its own, larger budget; the
        // timeout attempts are for a silent line. A non-idempotent request still waits
        // out a damaged reply: it is never resent, and the caller recovers by inspection.
        let garbled_budget = if idempotent { GARBLED_ATTEMPTS } else { 1 };
        let (mut attempt, mut garbled) = (0, 0);
        let mut last = None;
        while attempt < attempts && garbled < garbled_budget {
            if attempt + garbled > 0 {
                self.stats.retries += 1;
            }
            let req_len: usize = args.iter().map(|a| a.len() + 1).sum::<usize>() + 24;
            let seq = self.send(verb, args.clone())?;
            let deadline =
                Instant::now() + self.timeout + self.line_time(req_len + self.max_line.max(256));
            match self.wait(seq, deadline, &what, idempotent) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {
                    garbled += 1;
                    last = Some(WireError::Protocol(format!(
                        "too many garbled frames on the line for {what}"
                    )))
                }
                Err(e @ WireError::Timeout { .. }) => {
                    attempt += 1;
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(WireError::Protocol(format!("{what} failed"))))
    }

    /// HELLO: protocol version and the device's identity and state.
    pub fn hello(&mut self) -> Result<DeviceInfo, WireError> {
        let f = self.request("HELLO", vec![PROTO_VERSION.to_string()], true)?;
        let proto = f.need_u64("proto")? as u32;
        if proto != PROTO_VERSION {
            return Err(WireError::Protocol(format!(
                "device speaks protocol version {proto}; this cradle speaks {PROTO_VERSION}"
            )));
        }
        let hardware_id = f.need("hwid")?.to_string();
        check_token("hardware id", &hardware_id)?;
        let model = f.need("model")?.to_string();
        check_token("model", &model)?;
        let firmware = f.need("fw")?.to_string();
        check_token("firmware version", &firmware)?;
        let state = f.need("state")?.to_string();
        if !matches!(state.as_str(), "empty" | "keyed" | "locked") {
            return Err(WireError::Protocol(format!(
                "unknown device state '{state}'"
            )));
        }
        let max_line = f.need_u64("maxline")? as usize;
        if !(128..=MAX_LINE as u64 as usize).contains(&max_line) {
            return Err(WireError::Protocol(format!(
                "device line size {max_line} is outside 128..{MAX_LINE}"
            )));
        }
        let window = f.need_u64("window")? as usize;
        if !(1..=64).contains(&window) {
            return Err(WireError::Protocol(format!(
                "device window {window} is outside 1..64"
            )));
        }
        let serial = f.get("serial").map(str::to_string);
        if let Some(s) = &serial {
            check_token("device serial", s)?;
        }
        let public_key = match f.get("pub") {
            Some(_) => Some(f.need_b64("pub")?),
            None => None,
        };
        let next_key = match f.get("next") {
            Some(_) => Some(f.need_b64("next")?),
            None => None,
        };
        self.max_line = max_line;
        self.window = window;
        let info = DeviceInfo {
            next_key,
            proto,
            hardware_id,
            model,
            firmware,
            state,
            max_line,
            window,
            serial,
            public_key,
        };
        self.info = Some(info.clone());
        Ok(info)
    }

    /// KEYGEN: the device makes a P-256 key; returns (SPKI DER, CSR DER). KEYGEN is not
    /// idempotent, so it is never blindly resent: if its reply is lost, HELLO tells whether
    /// the device made a new key (its public key changed), and the CSR for that key is
    /// fetched with the idempotent CSR request; otherwise KEYGEN is sent again.
    pub fn keygen(&mut self) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let before = match &self.info {
            Some(i) => i.public_key.clone(),
            None => self.hello()?.public_key,
        };
        self.keygen_since(before)
    }

    /// KEYGEN for a device whose public key was `before` when the run decided to send it
    /// (`None`: it had none). If this session's HELLO already reports another key, a
    /// KEYGEN sent earlier (its reply lost with the previous session, e.g. to a reset)
    /// made it: its CSR is fetched and no second key is made.
    pub fn keygen_since(
        &mut self,
        before: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        if self.info.is_none() {
            self.hello()?;
        }
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let now = if attempt > 0 {
                self.stats.retries += 1;
                self.hello()?.public_key
            } else {
                self.info.as_ref().and_then(|i| i.public_key.clone())
            };
            if let Some(p) = now.filter(|p| Some(p) != before.as_ref()) {
                let csr = self.csr()?;
                self.known_empty = vec![SLOT_CERT, SLOT_CHAIN];
                return Ok((p, csr));
            }
            match self.request("KEYGEN", vec![], false) {
                Ok(f) => {
                    let r = (f.need_b64("pub")?, f.need_b64("csr")?);
                    self.known_empty = vec![SLOT_CERT, SLOT_CHAIN];
                    return Ok(r);
                }
                Err(e @ WireError::Timeout { .. }) => last = Some(e),
                Err(WireError::Protocol(m)) if m.contains("garbled") => {
                    last = Some(WireError::Protocol(m))
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(WireError::Protocol("KEYGEN failed".into())))
    }

    /// CSR: a certificate request for the key the device holds (idempotent).
    pub fn csr(&mut self) -> Result<Vec<u8>, WireError> {
        self.request("CSR", vec![], true)?.need_b64("csr")
    }

    pub fn stat(&mut self, slot: &str) -> Result<SlotStatus, WireError> {
        let f = self.request("STAT", vec![slot.to_string()], true)?;
        let sha = hex::decode(f.need("sha256")?)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| WireError::Protocol("STAT sha256 is not 64 hex digits".into()))?;
        Ok(SlotStatus {
            len: f.need_u64("len")?,
            committed: f.need("committed")? == "1",
            sha256: sha,
        })
    }

    pub fn erase(&mut self, slot: &str) -> Result<(), WireError> {
        self.request("ERASE", vec![slot.to_string()], true)?;
        Ok(())
    }

    /// Payload bytes per WRITE/READ frame for the device's line size.
    pub fn chunk_size(&self) -> usize {
        // "$WRITE 999999999 chain 4294967295 " + " *xxxxxxxx\n" is under 64 bytes.
        (((self.max_line.saturating_sub(64)) / 4) * 3).max(48)
    }

    /// Writes `data` into `slot`, keeping up to `window` WRITE frames in flight, resuming
    /// from what the device already holds, then COMMITs with its SHA-256 (the device
    /// recomputes it). `progress(done, total)` is called as acknowledgements arrive.
    pub fn write_object(
        &mut self,
        slot: &str,
        data: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), WireError> {
        let total = data.len();
        let mut chunk = self.chunk_size();
        let mut window = self.window;
        let mut resyncs = 0;
        let mut timed_out = 0;
        let mut best = 0usize;
        let mut fresh = match self.known_empty.iter().position(|s| *s == slot) {
            Some(i) => {
                self.known_empty.remove(i);
                true
            }
            None => false,
        };
        'resume: loop {
            let st = if std::mem::take(&mut fresh) {
                SlotStatus {
                    len: 0,
                    committed: false,
                    sha256: sha256(&[]),
                }
            } else {
                self.stat(slot)?
            };
            let mut held = st.len as usize;
            if held > total || sha256(&data[..held]) != st.sha256 {
                self.erase(slot)?;
                held = 0;
            } else if held == total && st.committed {
                progress(total as u64, total as u64);
                return Ok(());
            }
            progress(held as u64, total as u64);
            if held > best {
                // Progress since the last resync: the budget is for a stuck line only.
                best = held;
                resyncs = 0;
                timed_out = 0;
            }
            let mut next = held;
            let mut in_flight: VecDeque<u32> = VecDeque::new();
            let mut last_progress = Instant::now();
            // COMMIT follows the last WRITE without waiting: the device answers in order,
            // so an OK to it means every WRITE before it landed.
            let mut commit_seq = None;
            let want = sha256(data);
            loop {
                // One rule: at most `window` requests outstanding, the COMMIT included (and
                // any earlier request the device has yet to answer).
                while self.unanswered.len() < window && next < total {
                    let end = (next + chunk).min(total);
                    let seq = self.send(
                        "WRITE",
                        vec![slot.to_string(), next.to_string(), b64(&data[next..end])],
                    )?;
                    in_flight.push_back(seq);
                    next = end;
                }
                if next >= total && commit_seq.is_none() && self.unanswered.len() < window {
                    commit_seq = Some(self.send(
                        "COMMIT",
                        vec![slot.to_string(), total.to_string(), hex::encode(want)],
                    )?);
                }
                let deadline = last_progress
                    + self.timeout
                    + self.line_time((self.window + 1) * self.max_line);
                let lost = match self.recv_line(deadline, "WRITE").map(|rx| rx.frame) {
                    // A damaged reply. Acknowledgements are cumulative, so a lost one costs
                    // nothing while a later one can still come; once none of ours is
                    // unanswered (the last ones, or the COMMIT's, were damaged), nothing
                    // will: resume now rather than at the deadline.
                    Ok(None) => !in_flight
                        .iter()
                        .chain(commit_seq.iter())
                        .any(|s| self.is_unanswered(*s)),
                    Ok(Some(f)) if Some(f.seq) == commit_seq => {
                        if f.verb == "OK" {
                            if f.need("sha256")? != hex::encode(want) {
                                return Err(WireError::Verify(format!(
                                    "device computed a different SHA-256 for slot {slot}"
                                )));
                            }
                            progress(total as u64, total as u64);
                            return Ok(());
                        }
                        let code: u32 = f.args.first().and_then(|c| c.parse().ok()).unwrap_or(0);
                        if code == code::NOT_COMMITTED || code == code::BAD_FRAME {
                            true
                        } else {
                            return Err(refused("COMMIT", &f));
                        }
                    }
                    Ok(Some(f)) => match in_flight.iter().position(|s| *s == f.seq) {
                        Some(i) if f.verb == "OK" => {
                            // Acknowledgements are cumulative: `len` is all the device holds.
                            let len = f.need_u64("len")? as usize;
                            if len > total {
                                return Err(WireError::Protocol(format!(
                                    "device claims {len} bytes in slot {slot} of a {total}-byte object"
                                )));
                            }
                            held = held.max(len);
                            in_flight.drain(..=i);
                            last_progress = Instant::now();
                            progress(held as u64, total as u64);
                            false
                        }
                        Some(_) => {
                            let code: u32 =
                                f.args.first().and_then(|c| c.parse().ok()).unwrap_or(0);
                            if code == code::OFFSET_GAP || code == code::BAD_FRAME {
                                true
                            } else {
                                return Err(refused("WRITE", &f));
                            }
                        }
                        None => f.seq == 0 && f.verb == "ERR",
                    },
                    Err(WireError::Timeout { .. }) => {
                        timed_out += 1;
                        if timed_out >= ATTEMPTS {
                            return Err(self.stream_silent("WRITE", slot));
                        }
                        true
                    }
                    Err(e) => return Err(e),
                };
                if lost {
                    resyncs += 1;
                    self.stats.resyncs += 1;
                    // A noisy line: smaller frames are likelier to arrive intact.
                    chunk = ((chunk / 2) / 3 * 3).max(48);
                    window = (window / 2).max(1);
                    if resyncs > MAX_RESYNC {
                        return Err(WireError::Protocol(format!(
                            "writing slot {slot}: too many lost or garbled frames"
                        )));
                    }
                    continue 'resume;
                }
            }
        }
    }

    /// The error when a WRITE or READ stream used up its timed-out rounds without progress.
    /// Not a link problem: the device answers other requests (STAT), just not these.
    fn stream_silent(&self, verb: &str, slot: &str) -> WireError {
        WireError::Protocol(format!(
            "{verb} {slot}: no progress in {ATTEMPTS} rounds that waited {:.1}s each for a reply",
            self.timeout.as_secs_f64()
        ))
    }

    /// Reads `len` bytes of `slot` with READ frames kept in flight (READ is idempotent).
    pub fn read_object(&mut self, slot: &str, len: usize) -> Result<Vec<u8>, WireError> {
        Ok(self.read_objects(&[(slot, len)])?.pop().unwrap_or_default())
    }

    /// Reads several slots in one pipelined pass. Lost replies are asked for again, in
    /// smaller frames if the line is noisy.
    pub fn read_objects(&mut self, wanted: &[(&str, usize)]) -> Result<Vec<Vec<u8>>, WireError> {
        let mut data: Vec<Vec<u8>> = wanted.iter().map(|(_, l)| Vec::with_capacity(*l)).collect();
        let mut chunk = self.chunk_size();
        let mut window = self.window;
        let mut stuck = 0;
        let mut timed_out = 0;
        loop {
            let before: usize = data.iter().map(Vec::len).sum();
            let todo: Vec<(usize, usize)> = wanted
                .iter()
                .enumerate()
                .flat_map(|(i, (_, len))| (data[i].len()..*len).step_by(chunk).map(move |o| (i, o)))
                .collect();
            if todo.is_empty() {
                return Ok(data);
            }
            let mut got: BTreeMap<(usize, usize), Vec<u8>> = BTreeMap::new();
            let mut todo = todo.into_iter();
            let mut pending: VecDeque<(u32, usize, usize)> = VecDeque::new();
            let mut last_progress = Instant::now();
            let mut round_timed_out = false;
            loop {
                // At most `window` outstanding, counting READs of an earlier round the
                // device has yet to answer.
                while pending.len() < window && self.unanswered.len() < window {
                    match todo.next() {
                        Some((i, off)) => {
                            let (slot, len) = wanted[i];
                            let n = chunk.min(len - off);
                            let seq = self.send(
                                "READ",
                                vec![slot.to_string(), off.to_string(), n.to_string()],
                            )?;
                            pending.push_back((seq, i, off));
                        }
                        None => break,
                    }
                }
                if pending.is_empty() && self.unanswered.is_empty() {
                    break;
                }
                let deadline =
                    last_progress + self.timeout + self.line_time((window + 1) * self.max_line);
                let rx = match self.recv_line(deadline, "READ") {
                    Ok(rx) => rx,
                    Err(WireError::Timeout { .. }) => {
                        round_timed_out = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                // A damaged reply (no frame) is asked for again in the next round.
                if let Some(f) = rx.frame {
                    if let Some(k) = pending.iter().position(|(s, _, _)| *s == f.seq) {
                        if f.verb != "OK" {
                            return Err(refused("READ", &f));
                        }
                        let (_, i, off) = pending.remove(k).expect("index from position");
                        let (slot, len) = wanted[i];
                        let d = f.need_b64("data")?;
                        if d.len() != chunk.min(len - off) {
                            return Err(WireError::Protocol(format!(
                                "READ {slot} at {off} returned {} bytes",
                                d.len()
                            )));
                        }
                        got.insert((i, off), d);
                        last_progress = Instant::now();
                    } else if f.seq == 0 && f.verb == "ERR" {
                        // One of our READs arrived garbled; the round ends early.
                        break;
                    }
                }
                // Replies come in order: a READ answered by a damaged line, or sent before
                // the one just answered and not answered itself, will get no reply. Stop
                // waiting for it (the next round asks again) instead of timing out.
                pending.retain(|(s, _, _)| self.is_unanswered(*s));
            }
            for (i, d) in data.iter_mut().enumerate() {
                let mut off = d.len();
                while let Some(c) = got.remove(&(i, off)) {
                    off += c.len();
                    d.extend_from_slice(&c);
                }
            }
            let after: usize = data.iter().map(Vec::len).sum();
            if after == wanted.iter().map(|(_, l)| l).sum::<usize>() {
                return Ok(data);
            }
            self.stats.resyncs += 1;
            stuck = if after > before { 0 } else { stuck + 1 };
            timed_out = match (after > before, round_timed_out) {
                (true, _) => 0,
                (false, true) => timed_out + 1,
                (false, false) => timed_out,
            };
            if timed_out >= ATTEMPTS {
                return Err(self.stream_silent("READ", wanted.first().map_or("", |w| w.0)));
            }
            if stuck > MAX_RESYNC {
                return Err(WireError::Protocol(
                    "reading back: too many lost or garbled frames".into(),
                ));
            }
            chunk = ((chunk / 2) / 3 * 3).max(48);
            window = (window / 2).max(1);
        }
    }

    /// Reads a slot back and checks it against `expected` by SHA-256.
    pub fn verify_object(&mut self, slot: &str, expected: &[u8]) -> Result<(), WireError> {
        self.verify_objects(&[(slot, expected)])
    }

    /// Reads slots back in one pipelined pass and checks each by SHA-256.
    pub fn verify_objects(&mut self, objects: &[(&str, &[u8])]) -> Result<(), WireError> {
        let wanted: Vec<(&str, usize)> = objects.iter().map(|(s, d)| (*s, d.len())).collect();
        let back = self.read_objects(&wanted)?;
        for ((slot, expected), back) in objects.iter().zip(back) {
            if sha256(&back) != sha256(expected) {
                return Err(WireError::Verify(format!(
                    "read-back of slot {slot} does not match what was written (SHA-256 {} != {})",
                    hex::encode(sha256(&back)),
                    hex::encode(sha256(expected))
                )));
            }
        }
        Ok(())
    }

    /// NEXTKEY: the device makes a spare P-256 key in the next.key slot (its identity key
    /// stays in use); returns (SPKI DER, CSR DER). Resending it makes another spare key,
    /// which is harmless: nothing is certified for a spare key until the host has its
    /// reply, and the host checks HELLO `next=` before it certifies one.
    pub fn nextkey(&mut self) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let f = self.request("NEXTKEY", vec![], true)?;
        Ok((f.need_b64("pub")?, f.need_b64("csr")?))
    }

    /// SWITCH: the committed next.cert (with next.chain, and next.key if one waits)
    /// becomes the identity, in one step on the device. Idempotent: a SWITCH whose reply
    /// was lost is answered OK again while the cert slot holds that certificate.
    pub fn switch(&mut self, cert_sha256: [u8; 32]) -> Result<(), WireError> {
        let f = self.request("SWITCH", vec![hex::encode(cert_sha256)], true)?;
        if f.need("sha256")? != hex::encode(cert_sha256) {
            return Err(WireError::Verify(
                "after SWITCH the device reports another certificate in its cert slot".into(),
            ));
        }
        Ok(())
    }

    /// LOCK: the identity becomes immutable. Idempotent on the device.
    pub fn lock(&mut self) -> Result<(), WireError> {
        self.request("LOCK", vec![], true)?;
        Ok(())
    }

    /// WIPE: the device signs `nonce` + the slots it erases with its identity key, then
    /// erases them. Never retried (the nonce is single-use). The caller verifies the
    /// attestation against the registered certificate (`WipeAttestation::verify`).
    pub fn wipe(&mut self, nonce: [u8; 32]) -> Result<WipeAttestation, WireError> {
        let f = self.request("WIPE", vec![hex::encode(nonce)], false)?;
        let bad = |e: String| WireError::Attestation(e);
        let payload = f.need_b64("att").map_err(|e| bad(e.to_string()))?;
        let sig = f.need_b64("sig").map_err(|e| bad(e.to_string()))?;
        WipeAttestation::from_payload(&payload, sig).map_err(|e| bad(e.to_string()))
    }
}

fn refused(what: &str, f: &Frame) -> WireError {
    let code = f
        .args
        .first()
        .and_then(|c| c.parse().ok())
        .unwrap_or(code::INTERNAL);
    WireError::Refused {
        what: what.to_string(),
        code,
        name: f
            .args
            .get(1)
            .cloned()
            .unwrap_or_else(|| code::name(code).into()),
    }
}

#[cfg(test)]
pub(crate) mod pipe {
    //! An in-memory full-duplex pipe with read timeouts, for unit tests.
    use std::io::{self, Read, Write};
    use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
    use std::time::Duration;

    pub struct End {
        tx: Sender<Vec<u8>>,
        rx: Receiver<Vec<u8>>,
        pending: Vec<u8>,
    }

    pub fn pair() -> (End, End) {
        let (a_tx, b_rx) = channel();
        let (b_tx, a_rx) = channel();
        (
            End {
                tx: a_tx,
                rx: a_rx,
                pending: Vec::new(),
            },
            End {
                tx: b_tx,
                rx: b_rx,
                pending: Vec::new(),
            },
        )
    }

    impl Read for End {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(v) => self.pending = v,
                    Err(RecvTimeoutError::Timeout) => return Err(io::ErrorKind::TimedOut.into()),
                    Err(RecvTimeoutError::Disconnected) => return Ok(0),
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    impl Write for End {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tx
                .send(buf.to_vec())
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{device::DeviceState, Device, Faults, Responder};

    /// Runs a simulated device on one end of an in-memory pipe. Like `cradle sim`, its
    /// byte faults hit both directions; `damage(n, reply)` may then alter the n-th reply
    /// (0-based) on its way to the host.
    fn device_on_pipe_with(
        faults: Faults,
        timeout: Duration,
        mut damage: impl FnMut(usize, &mut Vec<u8>) + Send + 'static,
    ) -> (Session<pipe::End>, std::thread::JoinHandle<()>) {
        let (host, mut dev_end) = pipe::pair();
        let h = std::thread::spawn(move || {
            let dev = Device::new(DeviceState::new("PIPE-1", "pipe"), None, faults);
            let mut r = crate::sim::CradleResponder::new(dev);
            let mut buf = [0u8; 4096];
            let mut replies = 0;
            loop {
                match dev_end.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let data = {
                            let d = r.device();
                            crate::sim::faults::mangle(&buf[..n], &d.faults.clone(), &mut d.rng)
                        };
                        for (_, reply) in r.feed(&data) {
                            if reply.hangup {
                                return;
                            }
                            let mut out = {
                                let d = r.device();
                                crate::sim::faults::mangle(
                                    &reply.bytes,
                                    &d.faults.clone(),
                                    &mut d.rng,
                                )
                            };
                            damage(replies, &mut out);
                            replies += 1;
                            if dev_end.write_all(&out).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        (Session::new(host, 1_000_000, timeout), h)
    }

    fn device_on_pipe(faults: Faults) -> (Session<pipe::End>, std::thread::JoinHandle<()>) {
        device_on_pipe_with(faults, Duration::from_millis(300), |_, _| {})
    }

    /// Flips one bit in the frame body: the line arrives, its CRC does not match.
    fn garble(reply: &mut [u8]) {
        reply[1] ^= 0x01;
    }

    #[test]
    fn full_flow_over_an_in_memory_pipe() {
        let (mut s, h) = device_on_pipe(Faults::default());
        let info = s.hello().unwrap();
        assert_eq!(info.hardware_id, "PIPE-1");
        assert_eq!(info.state, "empty");
        let (public, csr_der) = s.keygen().unwrap();
        let checked = crate::pki::csr::check_csr(&csr_der).unwrap();
        assert_eq!(checked.spki_der, public);
        // Resumable: a partial object is continued from what the device holds.
        let obj: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        s.send("WRITE", vec!["chain".into(), "0".into(), b64(&obj[..700])])
            .unwrap();
        let mut seen = Vec::new();
        s.write_object(SLOT_CHAIN, &obj, &mut |d, _| seen.push(d))
            .unwrap();
        assert_eq!(*seen.last().unwrap(), 5000);
        assert_eq!(s.stat(SLOT_CHAIN).unwrap().len, 5000);
        assert!(s.stat(SLOT_CHAIN).unwrap().committed);
        assert_eq!(s.read_object(SLOT_CHAIN, 5000).unwrap(), obj);
        s.verify_object(SLOT_CHAIN, &obj).unwrap();
        // LOCK without a committed certificate is refused with its error code.
        match s.lock() {
            Err(WireError::Refused { code: c, .. }) => assert_eq!(c, code::NOT_COMMITTED),
            other => panic!("{other:?}"),
        }
        let att = s.wipe([9; 32]).unwrap();
        att.verify(&public, &[9; 32]).unwrap();
        assert_eq!(s.hello().unwrap().state, "empty");
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn noisy_pipe_still_delivers_objects() {
        let faults = Faults::parse(&["corrupt:0.001".into()]).unwrap();
        let (mut s, h) = device_on_pipe(faults);
        let info = (0..5)
            .find_map(|_| s.hello().ok())
            .expect("hello through noise");
        assert_eq!(info.hardware_id, "PIPE-1");
        let obj: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        s.write_object(SLOT_CERT, &obj, &mut |_, _| {}).unwrap();
        assert_eq!(s.read_object(SLOT_CERT, obj.len()).unwrap(), obj);
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn overlong_reply_is_rejected() {
        let faults = Faults::parse(&["long-line".into()]).unwrap();
        let (mut s, h) = device_on_pipe(faults);
        match s.hello() {
            Err(e @ WireError::LineTooLong { .. }) => {
                assert!(e.to_string().contains("without a line end"))
            }
            other => panic!("{other:?}"),
        }
        let e: crate::Error = WireError::Disconnected.into();
        assert_eq!(e.exit_code(), crate::error::exit::DEVICE);
        drop(s);
        h.join().unwrap();
    }

    /// Long enough that a wait for a reply that cannot come would be noticed (and counted
    /// in `stats.timeouts`); no test here should ever reach it.
    const PATIENT: Duration = Duration::from_secs(5);

    #[test]
    fn damaged_replies_are_asked_again_at_once() {
        // More damaged replies in a row than there are timeout attempts (ATTEMPTS).
        let (mut s, h) = device_on_pipe_with(Faults::default(), PATIENT, |n, r| {
            if n < 6 {
                garble(r)
            }
        });
        assert_eq!(s.hello().unwrap().hardware_id, "PIPE-1");
        assert_eq!(
            s.stats.timeouts, 0,
            "waited for a reply that could not come"
        );
        assert_eq!((s.stats.garbage_lines, s.stats.retries), (6, 6));
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn damaged_stale_reply_is_not_taken_for_the_current_one() {
        // The reply to an earlier request is damaged; it answers that request (replies
        // come in order), so HELLO is not resent and gets its own reply.
        let (mut s, h) = device_on_pipe_with(Faults::default(), PATIENT, |n, r| {
            if n == 0 {
                garble(r)
            }
        });
        s.send("STAT", vec![SLOT_CERT.into()]).unwrap();
        assert_eq!(s.hello().unwrap().hardware_id, "PIPE-1");
        assert_eq!((s.stats.garbage_lines, s.stats.retries), (1, 0));
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn damaged_commit_and_read_replies_cost_no_timeout() {
        let (mut s, h) = device_on_pipe_with(Faults::default(), PATIENT, {
            let (mut commits, mut reads) = (0, 0);
            move |_, r: &mut Vec<u8>| {
                let text = String::from_utf8_lossy(r).to_string();
                if text.contains(" sha256=") && !text.contains(" len=") {
                    commits += 1;
                    if commits == 1 {
                        garble(r)
                    }
                } else if text.contains(" data=") {
                    reads += 1;
                    // The first two READ replies, and the last of the first round.
                    if reads <= 2 || reads == 5 {
                        garble(r)
                    }
                }
            }
        });
        s.hello().unwrap();
        let obj: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        s.write_object(SLOT_CHAIN, &obj, &mut |_, _| {}).unwrap();
        assert!(s.stat(SLOT_CHAIN).unwrap().committed);
        assert_eq!(s.read_object(SLOT_CHAIN, obj.len()).unwrap(), obj);
        assert_eq!(
            s.stats.timeouts, 0,
            "waited for a reply that could not come"
        );
        assert_eq!(s.stats.garbage_lines, 4);
        drop(s);
        h.join().unwrap();
    }

    /// A device that answers everything but one kind of request.
    fn mute(kind: &'static str) -> impl FnMut(usize, &mut Vec<u8>) + Send + 'static {
        move |_, r: &mut Vec<u8>| {
            if String::from_utf8_lossy(r).contains(kind) {
                r.clear()
            }
        }
    }

    #[test]
    fn the_longest_frames_fit_maxline_lf_included() {
        for max_line in [128usize, 129, 512, 1023, 1024, 4096] {
            let (h, _d) = pipe::pair();
            let mut s = Session::new(h, 115_200, Duration::from_millis(10));
            s.max_line = max_line;
            let n = s.chunk_size();
            let data = vec![0xffu8; n];
            let write = Frame::new(
                "WRITE",
                999_999_999,
                vec![SLOT_CHAIN.into(), u32::MAX.to_string(), b64(&data)],
            );
            assert!(
                write.encode().len() <= max_line,
                "WRITE at maxline {max_line}"
            );
            let reply = Frame::new("OK", 999_999_999, vec![format!("data={}", b64(&data))]);
            assert!(
                reply.encode().len() <= max_line,
                "READ reply at maxline {max_line}"
            );
            // The page's C = floor((maxline - 64) / 4) * 3.
            assert_eq!(n, (max_line - 64) / 4 * 3);
        }
    }

    #[test]
    fn silent_read_fails_within_its_budget() {
        let t = Duration::from_millis(300);
        let (mut s, h) = device_on_pipe_with(Faults::default(), t, mute(" data="));
        s.hello().unwrap();
        let obj: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
        s.write_object(SLOT_CHAIN, &obj, &mut |_, _| {}).unwrap();
        let started = Instant::now();
        let e = s.read_object(SLOT_CHAIN, obj.len()).unwrap_err();
        let took = started.elapsed();
        assert!(e.to_string().contains("no progress in 4 rounds"), "{e}");
        // ATTEMPTS timed-out rounds, each the timeout plus a little line time; it was
        // MAX_RESYNC + 1 = 13 rounds before the budget.
        assert_eq!(s.stats.timeouts, ATTEMPTS, "{e}");
        assert!(took < t * 6, "{took:?}");
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn silent_write_fails_within_its_budget() {
        // WRITE and COMMIT replies never come, and STAT keeps saying the slot is empty:
        // every round ends in a timeout with no progress.
        let t = Duration::from_millis(300);
        let (mut s, h) = device_on_pipe_with(Faults::default(), t, |_, r: &mut Vec<u8>| {
            let Ok(f) = Frame::parse(r.strip_suffix(b"\n").unwrap_or(r)) else {
                return;
            };
            if f.get("committed").is_some() {
                let empty = hex::encode(sha256(&[]));
                let args = vec![
                    "len=0".into(),
                    "committed=0".into(),
                    format!("sha256={empty}"),
                ];
                *r = Frame::new("OK", f.seq, args).encode();
            } else if f.get("len").is_some() || f.get("sha256").is_some() {
                r.clear();
            }
        });
        s.hello().unwrap();
        let obj: Vec<u8> = (0..3000u32).map(|i| (i % 13) as u8).collect();
        let started = Instant::now();
        let e = s
            .write_object(SLOT_CHAIN, &obj, &mut |_, _| {})
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            e.to_string()
                .contains("WRITE chain: no progress in 4 rounds"),
            "{e}"
        );
        assert_eq!(s.stats.timeouts, ATTEMPTS, "{e}");
        // MAX_RESYNC + 1 = 13 timed-out rounds before the budget.
        assert!(took < t * 6, "{took:?}");
        drop(s);
        h.join().unwrap();
    }

    #[test]
    fn noisy_line_both_ways_still_provisions() {
        // The rate of the `fault_corrupt_bytes_recovers` integration test, replies too.
        let faults = Faults::parse(&["corrupt:0.002".into()]).unwrap();
        let (mut s, h) = device_on_pipe_with(faults, Duration::from_millis(300), |_, _| {});
        for _ in 0..10 {
            assert_eq!(s.hello().unwrap().hardware_id, "PIPE-1");
        }
        let obj: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 256) as u8).collect();
        s.write_object(SLOT_CHAIN, &obj, &mut |_, _| {}).unwrap();
        s.verify_object(SLOT_CHAIN, &obj).unwrap();
        drop(s);
        h.join().unwrap();
    }
}
