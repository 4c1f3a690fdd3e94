//! `cradle conformance`: the device side of cradle-protocol(7), checked from outside.
//!
//! A probe speaks raw frames (so it can send the malformed ones a host never sends),
//! runs the rules of the page in order and gives one verdict per rule. It needs no
//! registry and no CA: a throwaway issuer in memory signs the certificate it writes.
//! It wipes the device, so it refuses one that holds an identity unless forced.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{
    b64, check_token, code, crc32, open_port, Frame, Line, LineBuffer, Port, WireError, MAX_LINE,
    SLOT_CERT, SLOT_CHAIN, SLOT_CONFIG, SLOT_KEY, SLOT_NEXT_CERT, SLOT_NEXT_CHAIN, SLOT_NEXT_KEY,
};
use crate::attestation::WipeAttestation;

/// One rule's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub rule: &'static str,
    pub pass: bool,
    pub detail: String,
}

pub struct Options {
    pub port: PathBuf,
    pub baud: u32,
    /// How long the device may take to answer one request.
    pub timeout: Duration,
    /// Wipe a device that holds an identity (keyed or locked) to start from empty.
    pub force: bool,
}

/// Why the run could not start (the port, or a device that holds an identity).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    HoldsIdentity(String),
    /// Nothing on the port speaks the protocol: every rule would only time out.
    #[error("{0}")]
    NoDevice(String),
}

type Check = Result<String, String>;
/// Builds a request line for a SEQ (the malformed forms of the `form-*` rules).
type MakeLine = fn(u32) -> String;

struct Probe {
    /// `None` only while reopening (the port is opened exclusively: close, then open).
    port: Option<Port>,
    lines: LineBuffer,
    queue: VecDeque<Vec<u8>>,
    seq: u32,
    timeout: Duration,
    /// Replies that broke the page's exact form (the `reply-form` rule).
    form: Vec<String>,
}

fn show(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let s = s.trim_end();
    if s.len() > 90 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(90).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s.to_string()
    }
}

fn sha_hex(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

impl Probe {
    fn open(o: &Options) -> Result<Probe, WireError> {
        use rand_core::RngCore;
        Ok(Probe {
            port: Some(open_port(&o.port, o.baud)?),
            lines: LineBuffer::new(MAX_LINE),
            queue: VecDeque::new(),
            seq: rand_core::OsRng.next_u32() % 1_000_000 + 1,
            timeout: o.timeout,
            form: Vec::new(),
        })
    }

    /// Closes the port and opens it again: a clean line, the device's state untouched.
    fn reopen(&mut self, o: &Options, pause: Duration) -> Result<(), String> {
        self.port = None;
        std::thread::sleep(pause);
        self.lines.clear();
        self.queue.clear();
        self.port = Some(open_port(&o.port, o.baud).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn port(&mut self) -> Result<&mut Port, String> {
        self.port
            .as_mut()
            .ok_or_else(|| "the port could not be reopened".into())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = if self.seq >= 999_999_999 {
            1
        } else {
            self.seq + 1
        };
        self.seq
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        let port = self.port()?;
        port.write_all(bytes)
            .and_then(|_| port.flush())
            .map_err(|e| format!("writing to the port: {e}"))
    }

    /// A frame with this exact body (and its CRC), whatever the body's form.
    fn body(&mut self, body: &str) -> Result<(), String> {
        self.raw(format!("${body} *{:08x}\n", crc32(body.as_bytes())).as_bytes())
    }

    fn send(&mut self, verb: &str, args: &[&str]) -> Result<u32, String> {
        let seq = self.next_seq();
        let f = Frame::new(verb, seq, args.iter().map(|a| a.to_string()).collect());
        self.raw(&f.encode())?;
        Ok(seq)
    }

    /// The next line within `wait`, or `None`.
    fn line_within(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, String> {
        let until = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(l) = self.queue.pop_front() {
                // No '$' at all: boot messages or noise, which the page says to ignore.
                if !l.contains(&b'$') {
                    continue;
                }
                self.judge_form(&l);
                return Ok(Some(l));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            match self.port()?.read(&mut buf) {
                Ok(0) => return Err("the port closed".into()),
                Ok(n) => {
                    let mut out = Vec::new();
                    self.lines.push(&buf[..n], &mut out);
                    for l in out {
                        match l {
                            Line::Complete(l) => self.queue.push_back(l),
                            Line::TooLong => {
                                self.lines.clear();
                                return Err(format!(
                                    "the device sent {MAX_LINE} bytes without a line end"
                                ));
                            }
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("reading the port: {e}")),
            }
        }
    }

    fn judge_form(&mut self, l: &[u8]) {
        let why = match Frame::parse(l) {
            Err(e) => Some(e.to_string()),
            // ERR 0 is the one reply whose SEQ is 0.
            Ok(f) if f.seq == 0 && f.verb == "ERR" => None,
            Ok(_) => Frame::strict_violation(l).map(str::to_string),
        };
        if let Some(why) = why {
            if self.form.len() < 8 {
                self.form.push(format!("{why}: {}", show(l)));
            }
        }
    }

    fn frame(&mut self, what: &str) -> Result<Frame, String> {
        match self.line_within(self.timeout)? {
            None => Err(format!(
                "no reply to {what} within {:.1}s",
                self.timeout.as_secs_f64()
            )),
            Some(l) => Frame::parse(&l).map_err(|e| format!("reply to {what}: {e}: {}", show(&l))),
        }
    }

    fn ask(&mut self, verb: &str, args: &[&str]) -> Result<(u32, Frame), String> {
        let seq = self.send(verb, args)?;
        let f = self.frame(verb)?;
        Ok((seq, f))
    }

    fn ok(&mut self, verb: &str, args: &[&str]) -> Result<Frame, String> {
        let (seq, f) = self.ask(verb, args)?;
        expect_ok(&f, seq, verb)?;
        Ok(f)
    }

    fn refused(&mut self, verb: &str, args: &[&str], want: u32) -> Result<String, String> {
        let (seq, f) = self.ask(verb, args)?;
        expect_err(&f, seq, want)?;
        Ok(format!("{verb} answered ERR {want} {}", code::name(want)))
    }
}

fn render(f: &Frame) -> String {
    let mut s = format!("{} {}", f.verb, f.seq);
    for a in &f.args {
        s.push(' ');
        s.push_str(a);
    }
    show(s.as_bytes())
}

fn expect_ok(f: &Frame, seq: u32, what: &str) -> Result<(), String> {
    if f.verb == "OK" && f.seq == seq {
        Ok(())
    } else {
        Err(format!("{what} (SEQ {seq}) answered {}", render(f)))
    }
}

fn expect_err(f: &Frame, seq: u32, want: u32) -> Result<(), String> {
    let name = code::name(want);
    if f.verb == "ERR" && f.seq == seq && f.args == [want.to_string(), name.to_string()] {
        Ok(())
    } else {
        Err(format!("wanted ERR {seq} {want} {name}, got {}", render(f)))
    }
}

fn arg<'f>(f: &'f Frame, key: &str) -> Result<&'f str, String> {
    f.get(key)
        .ok_or_else(|| format!("{} lacks {key}=", render(f)))
}

fn b64_arg(f: &Frame, key: &str) -> Result<Vec<u8>, String> {
    super::b64_decode(arg(f, key)?).map_err(|_| format!("{key}= is not standard base64"))
}

/// What the run learns as it goes.
#[derive(Default)]
struct Known {
    hwid: String,
    max_line: usize,
    window: usize,
    chunk: usize,
    public: Option<Vec<u8>>,
    cert: Vec<u8>,
    chain: Vec<u8>,
    wipe_reply: Option<Vec<String>>,
    counter: u64,
}

/// A HELLO reply checked field by field.
fn check_hello(f: &Frame, k: &mut Known) -> Result<String, String> {
    if arg(f, "proto")? != "1" {
        return Err(format!("proto={} (want 1)", arg(f, "proto")?));
    }
    for (key, what) in [("hwid", "hwid"), ("model", "model"), ("fw", "fw")] {
        check_token(what, arg(f, key)?).map_err(|e| e.to_string())?;
    }
    if let Some(s) = f.get("serial") {
        check_token("serial", s).map_err(|e| e.to_string())?;
    }
    let state = arg(f, "state")?;
    if !matches!(state, "empty" | "keyed" | "locked") {
        return Err(format!("state={state}"));
    }
    let num = |key: &str, lo: usize, hi: usize| -> Result<usize, String> {
        arg(f, key)?
            .parse::<usize>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{key}= is not a number in {lo}..{hi}"))
    };
    k.max_line = num("maxline", 128, MAX_LINE)?;
    k.window = num("window", 1, 64)?;
    k.chunk = (k.max_line - 64) / 4 * 3;
    if (state == "empty") == f.get("pub").is_some() {
        return Err(format!(
            "pub= must be present exactly when keyed or locked (state={state})"
        ));
    }
    k.hwid = arg(f, "hwid")?.to_string();
    k.public = match f.get("pub") {
        Some(_) => Some(b64_arg(f, "pub")?),
        None => None,
    };
    Ok(format!(
        "hwid={} state={state} maxline={} window={}",
        k.hwid, k.max_line, k.window
    ))
}

/// A throwaway issuer signs a certificate for `spki`: (certificate, issuer certificate).
fn test_certificate(spki: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let e = |e: rcgen::Error| format!("making the test certificate: {e}");
    let key = crate::pki::keys::generate().map_err(|e| e.to_string())?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "cradle conformance throwaway issuer",
    );
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, key).map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "cradle conformance");
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(e)?;
    let cert = leaf.signed_by(&public, &issuer).map_err(e)?;
    Ok((cert.der().to_vec(), issuer.der().to_vec()))
}

/// Writes `data[from..]` into `slot` and COMMITs it, keeping `window` requests in flight
/// (the COMMIT among them); every reply must come in order and say what the page says.
fn stream_write(p: &mut Probe, k: &Known, slot: &str, data: &[u8], from: usize) -> Check {
    let mut pending: VecDeque<(u32, Option<usize>)> = VecDeque::new();
    let mut next = from;
    let mut committed = false;
    let mut peak = 0;
    loop {
        while pending.len() < k.window && !committed {
            if next < data.len() {
                let end = (next + k.chunk).min(data.len());
                let (off, d) = (next.to_string(), b64(&data[next..end]));
                pending.push_back((p.send("WRITE", &[slot, &off, &d])?, Some(end)));
                next = end;
            } else {
                let (len, sha) = (data.len().to_string(), sha_hex(data));
                pending.push_back((p.send("COMMIT", &[slot, &len, &sha])?, None));
                committed = true;
            }
        }
        peak = peak.max(pending.len());
        let Some((seq, end)) = pending.pop_front() else {
            return Ok(format!(
                "{} bytes in {} frames, up to {peak} in flight",
                data.len() - from,
                (data.len() - from).div_ceil(k.chunk) + 1
            ));
        };
        let f = p.frame(if end.is_some() { "WRITE" } else { "COMMIT" })?;
        expect_ok(&f, seq, "a pipelined request")?;
        match end {
            Some(end) if arg(&f, "len")? != end.to_string() => {
                return Err(format!("WRITE up to {end} answered {}", render(&f)))
            }
            None if arg(&f, "sha256")? != sha_hex(data) => {
                return Err(format!("COMMIT answered {}", render(&f)))
            }
            _ => {}
        }
    }
}

/// Reads `len` bytes of `slot` with `window` READs in flight.
fn stream_read(p: &mut Probe, k: &Known, slot: &str, len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    let mut pending: VecDeque<(u32, usize)> = VecDeque::new();
    let mut next = 0;
    loop {
        while pending.len() < k.window && next < len {
            let n = k.chunk.min(len - next);
            let (off, ns) = (next.to_string(), n.to_string());
            pending.push_back((p.send("READ", &[slot, &off, &ns])?, n));
            next += n;
        }
        let Some((seq, n)) = pending.pop_front() else {
            return Ok(out);
        };
        let f = p.frame("READ")?;
        expect_ok(&f, seq, "READ")?;
        let d = b64_arg(&f, "data")?;
        if d.len() != n {
            return Err(format!("READ of {n} bytes returned {}", d.len()));
        }
        out.extend_from_slice(&d);
    }
}

fn stat(p: &mut Probe, slot: &str) -> Result<(usize, bool, String), String> {
    let f = p.ok("STAT", &[slot])?;
    let len = arg(&f, "len")?
        .parse()
        .map_err(|_| format!("STAT len= is not a number: {}", render(&f)))?;
    let committed = match arg(&f, "committed")? {
        "0" => false,
        "1" => true,
        c => return Err(format!("STAT committed={c}")),
    };
    Ok((len, committed, arg(&f, "sha256")?.to_string()))
}

fn expect_stat(p: &mut Probe, slot: &str, want: (usize, bool, &[u8])) -> Result<(), String> {
    let got = stat(p, slot)?;
    let want = (want.0, want.1, sha_hex(want.2));
    if got != want {
        return Err(format!("STAT {slot} is {got:?}, want {want:?}"));
    }
    Ok(())
}

fn check_attestation(f: &Frame, k: &Known, nonce: &[u8; 32], erased: &[&str]) -> Check {
    let payload = b64_arg(f, "att")?;
    let sig = b64_arg(f, "sig")?;
    let att = WipeAttestation::from_payload(&payload, sig).map_err(|e| e.to_string())?;
    if att.hardware_id != k.hwid {
        return Err(format!("hwid={} (HELLO said {})", att.hardware_id, k.hwid));
    }
    if att.erased != erased {
        return Err(format!(
            "erased={} (the slots held: {})",
            att.erased.join(","),
            erased.join(",")
        ));
    }
    if att.counter <= k.counter {
        return Err(format!("counter={} after {}", att.counter, k.counter));
    }
    let public = k.public.as_deref().ok_or("no public key known")?;
    att.verify(public, nonce).map_err(|e| e.to_string())?;
    Ok(format!(
        "{} payload bytes, erased={}, counter={}, signature verifies",
        payload.len(),
        att.erased.join(","),
        att.counter
    ))
}

fn nonce() -> [u8; 32] {
    use rand_core::RngCore;
    let mut n = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut n);
    n
}

/// Runs every rule; `report` sees each verdict as it is made.
pub fn run(o: &Options, report: &mut dyn FnMut(&Verdict)) -> Result<Vec<Verdict>, StartError> {
    let mut p = Probe::open(o)?;
    let mut k = Known::default();
    // The state decides whether the run may start at all.
    let first = p.ok("HELLO", &["1"]);
    if let Ok(f) = &first {
        let state = f.get("state").unwrap_or("");
        if state != "empty" && !o.force {
            return Err(StartError::HoldsIdentity(format!(
                "the device on {} is {state}: conformance wipes it (KEYGEN, LOCK, WIPE); pass --force to go on",
                o.port.display()
            )));
        }
    }
    let mut verdicts = Vec::new();
    let mut rule = |p: &mut Probe,
                    k: &mut Known,
                    name: &'static str,
                    c: &dyn Fn(&mut Probe, &mut Known) -> Check| {
        let r = c(p, k);
        let v = Verdict {
            rule: name,
            pass: r.is_ok(),
            detail: r.unwrap_or_else(|e| e),
        };
        report(&v);
        let failed = !v.pass;
        verdicts.push(v);
        if failed {
            // Start the next rule on a clean line: whatever is still coming is dropped.
            let _ = p.reopen(o, Duration::from_millis(500));
        }
    };
    let first = first.and_then(|f| check_hello(&f, &mut k));
    rule(&mut p, &mut k, "hello", &|_, _| first.clone());
    if k.max_line == 0 {
        // The first HELLO failed; the rules after it still need the device's limits.
        if let Ok(f) = p.ok("HELLO", &["1"]) {
            let _ = check_hello(&f, &mut k);
        }
        if k.max_line == 0 {
            return Err(StartError::NoDevice(format!(
                "no device on {} answers HELLO 1 as cradle-protocol(7) says; the other rules were not run",
                o.port.display()
            )));
        }
    }
    rule(&mut p, &mut k, "seq-echo", &|p, _| {
        for seq in ["999999999", "1"] {
            p.body(&format!("HELLO {seq} 1"))?;
            let f = p.frame("HELLO")?;
            if f.seq.to_string() != seq || f.verb != "OK" {
                return Err(format!("HELLO {seq} answered {}", render(&f)));
            }
        }
        Ok("SEQ 999999999 and 1 echoed".into())
    });
    rule(&mut p, &mut k, "resync-noise", &|p, _| {
        let seq = p.next_seq();
        p.raw(b"\x00boot noise $$half a frame ")?;
        p.body(&format!("HELLO {seq} 1"))?;
        expect_ok(&p.frame("HELLO")?, seq, "HELLO after noise")?;
        Ok("text before the last '$' ignored".into())
    });
    rule(&mut p, &mut k, "blank-lines", &|p, _| {
        p.raw(b"\n\r\n")?;
        p.ok("HELLO", &["1"])?;
        Ok("blank lines got no reply".into())
    });
    rule(&mut p, &mut k, "bad-crc", &|p, _| {
        let seq = p.next_seq();
        let body = format!("HELLO {seq} 1");
        p.raw(format!("${body} *{:08x}\n", crc32(body.as_bytes()) ^ 1).as_bytes())?;
        expect_err(&p.frame("a bad CRC")?, 0, code::BAD_FRAME)?;
        Ok("ERR 0 1 bad-frame".into())
    });
    rule(&mut p, &mut k, "no-frame", &|p, _| {
        p.raw(b"hello there\n")?;
        expect_err(&p.frame("a line without '$'")?, 0, code::BAD_FRAME)?;
        Ok("ERR 0 1 bad-frame".into())
    });
    let strict: [(&'static str, MakeLine); 4] = [
        ("form-upper-case-crc", |s| {
            let b = format!("HELLO {s} 1");
            format!("${b} *{:08X}\n", crc32(b.as_bytes()))
        }),
        ("form-seq-zero", |_| frame_line("HELLO 0 1")),
        ("form-seq-10-digits", |_| frame_line("HELLO 1000000000 1")),
        ("form-double-space", |s| {
            frame_line(&format!("HELLO {s}  1"))
        }),
    ];
    for (name, line) in strict {
        rule(&mut p, &mut k, name, &|p, _| {
            let mut s = p.next_seq();
            // An upper-case CRC differs from the lower-case one only if it has a hex
            // letter (about 1 in 44 CRCs are all digits): pick a SEQ whose CRC has one.
            while name == "form-upper-case-crc"
                && format!("{:08x}", crc32(format!("HELLO {s} 1").as_bytes()))
                    .bytes()
                    .all(|c| c.is_ascii_digit())
            {
                s = p.next_seq();
            }
            p.raw(line(s).as_bytes())?;
            expect_err(&p.frame(name)?, 0, code::BAD_FRAME)?;
            Ok("ERR 0 1 bad-frame".into())
        });
    }
    rule(&mut p, &mut k, "form-extra-argument", &|p, _| {
        p.refused("HELLO", &["1", "extra"], code::BAD_ARGUMENT)
    });
    rule(&mut p, &mut k, "line-at-maxline", &|p, k| {
        let seq = p.next_seq();
        let frame = frame_line(&format!("HELLO {seq} 1"));
        // Noise before '$' makes the line exactly maxline bytes, LF included.
        let pad = k
            .max_line
            .checked_sub(frame.len())
            .ok_or("maxline unknown")?;
        p.raw(format!("{}{frame}", "#".repeat(pad)).as_bytes())?;
        expect_ok(&p.frame("a maxline-byte line")?, seq, "a maxline-byte line")?;
        Ok(format!("a {}-byte line was taken", k.max_line))
    });
    rule(&mut p, &mut k, "line-too-long", &|p, k| {
        let seq = p.next_seq();
        let frame = frame_line(&format!("HELLO {seq} 1"));
        let pad = (k.max_line + 1).saturating_sub(frame.len());
        p.raw(format!("{}{frame}", "#".repeat(pad)).as_bytes())?;
        expect_err(&p.frame("an overlong line")?, 0, code::LINE_TOO_LONG)?;
        p.ok("HELLO", &["1"])?;
        Ok(format!(
            "a {}-byte line: ERR 0 4, then answers again",
            k.max_line + 1
        ))
    });
    rule(&mut p, &mut k, "unsupported-version", &|p, _| {
        p.refused("HELLO", &["2"], code::UNSUPPORTED_VERSION)
    });
    rule(&mut p, &mut k, "unknown-command", &|p, _| {
        p.refused("FROB", &[], code::UNKNOWN_COMMAND)
    });
    rule(&mut p, &mut k, "unknown-slot", &|p, _| {
        p.refused("STAT", &["firmware"], code::UNKNOWN_SLOT)
    });
    rule(&mut p, &mut k, "bad-argument", &|p, _| {
        p.refused("READ", &[SLOT_CERT, "x", "1"], code::BAD_ARGUMENT)
    });
    rule(&mut p, &mut k, "windowing", &|p, k| {
        let seqs: Vec<u32> = (0..k.window)
            .map(|_| p.send("STAT", &[SLOT_CHAIN]))
            .collect::<Result<_, _>>()?;
        for seq in seqs {
            expect_ok(&p.frame("a pipelined STAT")?, seq, "a pipelined STAT")?;
        }
        Ok(format!(
            "{} requests in flight, answered in order",
            k.window
        ))
    });
    rule(&mut p, &mut k, "start-empty", &|p, k| {
        // --force: a keyed device drops its key, a locked one is wiped.
        let f = p.ok("HELLO", &["1"])?;
        match f.get("state") {
            Some("locked") => {
                p.ok("WIPE", &[&hex::encode(nonce())])?;
            }
            Some("keyed") => {
                p.ok("ERASE", &[SLOT_KEY])?;
            }
            _ => {}
        }
        let f = p.ok("HELLO", &["1"])?;
        check_hello(&f, k)?;
        match f.get("state") {
            Some("empty") => Ok("state=empty".into()),
            s => Err(format!("state={s:?} after ERASE key / WIPE")),
        }
    });
    rule(&mut p, &mut k, "no-key", &|p, _| {
        p.refused("CSR", &[], code::NO_KEY)?;
        p.refused("LOCK", &[], code::NO_KEY)?;
        Ok("CSR and LOCK: ERR 8 no-key".into())
    });
    rule(&mut p, &mut k, "bad-key", &|p, _| {
        let junk = [0x30u8, 3, 2, 1, 0];
        let (n, sha) = (junk.len().to_string(), sha_hex(&junk));
        p.ok("WRITE", &[SLOT_KEY, "0", &b64(&junk)])?;
        p.refused("COMMIT", &[SLOT_KEY, &n, &sha], code::BAD_KEY)?;
        expect_stat(p, SLOT_KEY, (0, false, b""))?;
        Ok("COMMIT of a non-key: ERR 12, slot erased".into())
    });
    rule(&mut p, &mut k, "keygen", &|p, k| {
        let f = p.ok("KEYGEN", &[])?;
        let public = b64_arg(&f, "pub")?;
        // Known before the CSR is judged, so the rules after a bad CSR still run.
        k.public = Some(public.clone());
        let csr = b64_arg(&f, "csr")?;
        let checked = crate::pki::csr::check_csr(&csr).map_err(|e| e.to_string())?;
        if checked.spki_der != public {
            return Err("the CSR is for another key than pub=".into());
        }
        let h = p.ok("HELLO", &["1"])?;
        if h.get("state") != Some("keyed") || h.get("pub") != Some(&b64(&public)) {
            return Err(format!("HELLO after KEYGEN: {}", render(&h)));
        }
        for slot in [SLOT_KEY, SLOT_CERT, SLOT_CHAIN] {
            expect_stat(p, slot, (0, false, b""))?;
        }
        Ok("pub= and a CSR signed by it; state=keyed; slots empty".into())
    });
    rule(&mut p, &mut k, "csr", &|p, k| {
        let csr = b64_arg(&p.ok("CSR", &[])?, "csr")?;
        let checked = crate::pki::csr::check_csr(&csr).map_err(|e| e.to_string())?;
        if Some(&checked.spki_der) != k.public.as_ref() {
            return Err("CSR is for another key than KEYGEN's".into());
        }
        Ok("a CSR for the key held".into())
    });
    rule(&mut p, &mut k, "lock-needs-cert", &|p, _| {
        p.refused("LOCK", &[], code::NOT_COMMITTED)
    });
    rule(&mut p, &mut k, "read-forbidden", &|p, _| {
        p.refused("READ", &[SLOT_KEY, "0", "0"], code::READ_FORBIDDEN)
    });
    rule(&mut p, &mut k, "offset-gap", &|p, _| {
        p.refused("WRITE", &[SLOT_CERT, "5", "AAAA"], code::OFFSET_GAP)
    });
    rule(&mut p, &mut k, "write-chunk-limit", &|p, k| {
        let over = b64(&vec![0u8; k.chunk + 1]);
        p.refused("WRITE", &[SLOT_CERT, "0", &over], code::BAD_ARGUMENT)?;
        Ok(format!("{} bytes: ERR 3 bad-argument", k.chunk + 1))
    });
    rule(&mut p, &mut k, "write-commit", &|p, k| {
        let public = k.public.clone().ok_or("no key from KEYGEN")?;
        let (cert, chain) = test_certificate(&public)?;
        (k.cert, k.chain) = (cert.clone(), chain);
        let d = stream_write(p, k, SLOT_CERT, &cert, 0)?;
        expect_stat(p, SLOT_CERT, (cert.len(), true, &cert))?;
        Ok(format!("cert: {d}"))
    });
    rule(&mut p, &mut k, "data-conflict", &|p, k| {
        let mut other = k
            .cert
            .first()
            .copied()
            .map(|b| vec![b ^ 0xff])
            .ok_or("no cert")?;
        other.push(0);
        p.refused(
            "WRITE",
            &[SLOT_CERT, "0", &b64(&other)],
            code::DATA_CONFLICT,
        )
    });
    rule(&mut p, &mut k, "commit-checks", &|p, k| {
        let (n, sha) = (k.cert.len().to_string(), sha_hex(&k.cert));
        let short = k
            .cert
            .len()
            .checked_sub(1)
            .ok_or("no cert written")?
            .to_string();
        p.refused("COMMIT", &[SLOT_CERT, &short, &sha], code::NOT_COMMITTED)?;
        p.refused(
            "COMMIT",
            &[SLOT_CERT, &n, &sha_hex(b"x")],
            code::HASH_MISMATCH,
        )?;
        p.refused(
            "COMMIT",
            &[SLOT_CERT, &n, &sha.to_uppercase()],
            code::BAD_ARGUMENT,
        )?;
        let f = p.ok("COMMIT", &[SLOT_CERT, &n, &sha])?;
        if arg(&f, "sha256")? != sha {
            return Err(format!("resent COMMIT answered {}", render(&f)));
        }
        Ok("ERR 10 length, ERR 7 hash, ERR 3 upper-case hash; resent COMMIT OK".into())
    });
    rule(&mut p, &mut k, "read-back", &|p, k| {
        let back = stream_read(p, k, SLOT_CERT, k.cert.len())?;
        if back != k.cert {
            return Err("READ returned other bytes than were written".into());
        }
        let len = k.cert.len().to_string();
        p.refused("READ", &[SLOT_CERT, &len, "1"], code::BAD_ARGUMENT)?;
        let over = (k.chunk + 1).to_string();
        p.refused("READ", &[SLOT_CERT, "0", &over], code::BAD_ARGUMENT)?;
        Ok(format!(
            "{} bytes back; past the end and over the chunk limit: ERR 3",
            k.cert.len()
        ))
    });
    rule(&mut p, &mut k, "erase", &|p, k| {
        let part = k.chain.len().min(k.chunk);
        p.ok("WRITE", &[SLOT_CHAIN, "0", &b64(&k.chain[..part])])?;
        let f = p.ok("ERASE", &[SLOT_CHAIN])?;
        if !f.args.is_empty() {
            return Err(format!("ERASE answered {}", render(&f)));
        }
        expect_stat(p, SLOT_CHAIN, (0, false, b""))?;
        Ok("$OK SEQ with no arguments; slot empty".into())
    });
    rule(&mut p, &mut k, "resume-after-reopen", &|p, k| {
        let half = k.chain.len() / 2;
        p.ok(
            "WRITE",
            &[SLOT_CHAIN, "0", &b64(&k.chain[..half.min(k.chunk)])],
        )?;
        let held = half.min(k.chunk);
        p.reopen(o, Duration::from_millis(100))?;
        let f = p.ok("HELLO", &["1"])?;
        if f.get("hwid") != Some(k.hwid.as_str())
            || f.get("pub").map(str::to_string) != k.public.as_deref().map(b64)
        {
            return Err(format!("after reopening: {}", render(&f)));
        }
        expect_stat(p, SLOT_CHAIN, (held, false, &k.chain[..held]))?;
        let d = stream_write(p, k, SLOT_CHAIN, &k.chain, held)?;
        Ok(format!(
            "{held} bytes held across the reopen; chain resumed: {d}"
        ))
    });
    rule(&mut p, &mut k, "lock", &|p, _| {
        for _ in 0..2 {
            let f = p.ok("LOCK", &[])?;
            if f.args != ["state=locked"] {
                return Err(format!("LOCK answered {}", render(&f)));
            }
        }
        let h = p.ok("HELLO", &["1"])?;
        if h.get("state") != Some("locked") {
            return Err(format!("HELLO after LOCK: {}", render(&h)));
        }
        Ok("state=locked, twice; HELLO says locked".into())
    });
    rule(&mut p, &mut k, "locked-refusals", &|p, k| {
        let (n, sha) = (k.cert.len().to_string(), sha_hex(&k.cert));
        p.refused("KEYGEN", &[], code::LOCKED)?;
        p.refused("WRITE", &[SLOT_CERT, "0", "AAAA"], code::LOCKED)?;
        p.refused("ERASE", &[SLOT_CERT], code::LOCKED)?;
        p.refused("COMMIT", &[SLOT_CERT, "1", &sha], code::LOCKED)?;
        p.ok("COMMIT", &[SLOT_CERT, &n, &sha])?;
        Ok("KEYGEN, WRITE, ERASE, another COMMIT: ERR 9; the resent COMMIT: OK".into())
    });
    rule(&mut p, &mut k, "config-after-lock", &|p, _| {
        // The config slot is optional; a device that has it keeps it writable when locked.
        let (seq, f) = p.ask("STAT", &[SLOT_CONFIG])?;
        if expect_err(&f, seq, code::UNKNOWN_SLOT).is_ok() {
            return Ok(
                "no config slot (optional: cradle cannot keep a configuration on this device)"
                    .into(),
            );
        }
        expect_ok(&f, seq, "STAT config")?;
        let data = b"{\"telemetry_interval_s\": 60}\n";
        let n = data.len().to_string();
        p.ok("ERASE", &[SLOT_CONFIG])?;
        p.ok("WRITE", &[SLOT_CONFIG, "0", &b64(data)])?;
        p.ok("COMMIT", &[SLOT_CONFIG, &n, &sha_hex(data)])?;
        expect_stat(p, SLOT_CONFIG, (data.len(), true, data))?;
        let back = b64_arg(&p.ok("READ", &[SLOT_CONFIG, "0", &n])?, "data")?;
        if back != data {
            return Err(format!(
                "READ config gave {} bytes that differ from those written",
                back.len()
            ));
        }
        p.ok("ERASE", &[SLOT_CONFIG])?;
        expect_stat(p, SLOT_CONFIG, (0, false, b""))?;
        Ok("locked: ERASE, WRITE, COMMIT, STAT, READ and ERASE of config answered OK".into())
    });
    rule(&mut p, &mut k, "switch-after-lock", &|p, k| {
        // Spare slots are optional; a device that has them takes a successor while locked
        // and swaps it in with one SWITCH (the test certificate again: it certifies the
        // identity key, so it is a valid successor).
        let (seq, f) = p.ask("STAT", &[SLOT_NEXT_CERT])?;
        if expect_err(&f, seq, code::UNKNOWN_SLOT).is_ok() {
            return Ok(
                "no spare slots (optional: cradle cannot renew this device in place)".into(),
            );
        }
        expect_ok(&f, seq, "STAT next.cert")?;
        let sha = sha_hex(&k.cert);
        // Nothing committed in next.cert for that hash (nor in the cert slot).
        p.refused("SWITCH", &[&sha_hex(b"x")], code::NOT_COMMITTED)?;
        for (slot, data) in [(SLOT_NEXT_CERT, &k.cert), (SLOT_NEXT_CHAIN, &k.chain)] {
            p.ok("ERASE", &[slot])?;
            stream_write(p, k, slot, data, 0)?;
        }
        p.refused("READ", &[SLOT_NEXT_KEY, "0", "1"], code::READ_FORBIDDEN)?;
        for _ in 0..2 {
            let f = p.ok("SWITCH", &[&sha])?;
            if arg(&f, "sha256")? != sha {
                return Err(format!("SWITCH answered {}", render(&f)));
            }
        }
        expect_stat(p, SLOT_CERT, (k.cert.len(), true, &k.cert))?;
        expect_stat(p, SLOT_NEXT_CERT, (0, false, b""))?;
        let h = p.ok("HELLO", &["1"])?;
        if h.get("state") != Some("locked") {
            return Err(format!("HELLO after SWITCH: {}", render(&h)));
        }
        Ok("locked: next.cert and next.chain written, SWITCH (twice) OK, cert slot holds it, still locked".into())
    });
    rule(&mut p, &mut k, "wipe-nonce-form", &|p, _| {
        p.refused(
            "WIPE",
            &[&hex::encode(nonce()).to_uppercase()],
            code::BAD_ARGUMENT,
        )
    });
    rule(&mut p, &mut k, "wipe-attestation", &|p, k| {
        let n = nonce();
        let f = p.ok("WIPE", &[&hex::encode(n)])?;
        k.wipe_reply = Some(f.args.clone());
        let r = check_attestation(&f, k, &n, &[SLOT_KEY, SLOT_CERT, SLOT_CHAIN]);
        if let Some(a) = f
            .get("att")
            .and_then(|a| super::b64_decode(a).ok())
            .and_then(|b| WipeAttestation::from_payload(&b, vec![]).ok())
        {
            k.counter = a.counter;
        }
        r
    });
    rule(&mut p, &mut k, "wipe-erases", &|p, _| {
        let h = p.ok("HELLO", &["1"])?;
        if h.get("state") != Some("empty") || h.get("pub").is_some() {
            return Err(format!("HELLO after WIPE: {}", render(&h)));
        }
        for slot in [SLOT_KEY, SLOT_CERT, SLOT_CHAIN] {
            expect_stat(p, slot, (0, false, b""))?;
        }
        Ok("state=empty, no pub, every slot empty".into())
    });
    rule(&mut p, &mut k, "wipe-stored-reply", &|p, k| {
        let f = p.ok("WIPE", &[&hex::encode(nonce())])?;
        if Some(&f.args) != k.wipe_reply.as_ref() {
            return Err("a WIPE without a key did not resend the stored reply".into());
        }
        Ok("the same att= and sig= again".into())
    });
    rule(&mut p, &mut k, "wipe-counter", &|p, k| {
        let f = p.ok("KEYGEN", &[])?;
        k.public = Some(b64_arg(&f, "pub")?);
        let n = nonce();
        let f = p.ok("WIPE", &[&hex::encode(n)])?;
        let want = k.counter + 1;
        let d = check_attestation(&f, k, &n, &[SLOT_KEY])?;
        if !d.contains(&format!("counter={want},")) {
            return Err(format!("second wipe: {d} (want counter={want})"));
        }
        Ok(format!("after KEYGEN alone: {d}"))
    });
    rule(&mut p, &mut k, "reply-form", &|p, _| {
        if p.form.is_empty() {
            Ok("every reply in the exact form".into())
        } else {
            Err(p.form.join("; "))
        }
    });
    Ok(verdicts)
}

fn frame_line(body: &str) -> String {
    format!("${body} *{:08x}\n", crc32(body.as_bytes()))
}
