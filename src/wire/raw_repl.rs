//! MicroPython's raw REPL, host side, and the Python literals both ends exchange.
//!
//! The bytes are MicroPython's (`shared/runtime/pyexec.c`, and what mpremote 1.29's
//! `transport_serial.py` sends): Ctrl-C (0x03) interrupts, Ctrl-A (0x01) enters the raw
//! REPL (`raw REPL; CTRL-B to exit\r\n>`), Ctrl-B (0x02) leaves it, Ctrl-D (0x04) ends
//! a program (on an empty one: soft reset). A program is sent either
//! * in raw-paste mode: `\x05A\x01`, the board answers `R\x01` and a 16-bit LE window
//!   size, then takes at most a window of bytes before it grants the next with 0x01;
//!   0x04 ends the data and the board acknowledges with 0x04; or, when the board
//!   answers `R\x00` (or nothing it knows),
//! * in plain raw mode: 256-byte chunks with small pauses, then 0x04; the board
//!   answers `OK`.
//!
//! Either way the board then runs the program and sends its stdout, 0x04, its stderr
//! (a Traceback when it raised), 0x04, and the next prompt `>`.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use super::WireError;

pub const CTRL_A: u8 = 0x01;
pub const CTRL_B: u8 = 0x02;
pub const CTRL_C: u8 = 0x03;
pub const CTRL_D: u8 = 0x04;
pub const CTRL_E: u8 = 0x05;
/// What the board prints on entering (or re-entering) the raw REPL; `>` follows.
pub const BANNER: &[u8] = b"raw REPL; CTRL-B to exit\r\n";
/// Raw-paste request: Ctrl-E, 'A', Ctrl-A.
pub const PASTE_REQUEST: &[u8] = b"\x05A\x01";
/// Plain raw mode: bytes per write, then a pause (mpremote's 256 bytes every 10 ms).
pub const RAW_CHUNK: usize = 256;
const RAW_PAUSE: Duration = Duration::from_millis(10);
/// Output a program may print before the host gives up on it (a runaway board).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// A Python `bytes` literal for `data` (binary-safe; printable ASCII stays as is, so
/// PEM text costs about one byte per byte).
pub fn py_bytes(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() + 3);
    s.push_str("b'");
    for &b in data {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('\'');
    s
}

/// A Python `str` literal for a path (what `repr(path)` gives for plain paths).
pub fn py_str(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('\'');
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\'' => s.push_str("\\'"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                s.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => s.push(c),
        }
    }
    s.push('\'');
    s
}

/// Parses a Python string or bytes literal at the start of `src` (`'…'`, `"…"`,
/// `b'…'`, `b"…"`, the usual backslash escapes). Returns the value (str literals as
/// UTF-8), whether it was bytes, and the rest of `src`.
pub fn parse_literal(src: &str) -> Option<(Vec<u8>, bool, &str)> {
    let (is_bytes, body) = match src.strip_prefix('b') {
        Some(r) => (true, r),
        None => (false, src),
    };
    let quote = body.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let bytes = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 1;
    while i < bytes.len() {
        let c = bytes[i];
        if c == quote as u8 {
            return Some((out, is_bytes, &body[i + 1..]));
        }
        if c == b'\n' {
            return None;
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *bytes.get(i + 1)?;
        i += 2;
        match e {
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'x' => {
                let h = body.get(i..i + 2)?;
                let v = u8::from_str_radix(h, 16).ok()?;
                if is_bytes {
                    out.push(v);
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(char::from(v).encode_utf8(&mut buf).as_bytes());
                }
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match bytes.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v).ok()?);
            }
            _ => {
                out.push(b'\\');
                out.push(e);
            }
        }
    }
    None
}

/// What one program printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// A Traceback when the program raised.
    pub stderr: Vec<u8>,
}

impl Output {
    /// The last line of the Traceback, e.g. `OSError: [Errno 2] ENOENT`.
    pub fn exception(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr);
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }

    /// Whether the program raised `OSError` with this errno name (e.g. "ENOENT").
    pub fn os_error(&self, name: &str) -> bool {
        self.exception()
            .is_some_and(|e| e.starts_with("OSError") && e.contains(name))
    }

    /// Stdout as text, or the exception the board raised during `what`: an `OSError`
    /// (the board's own trouble: full, read-only, missing) is `Refused`; anything else
    /// (NameError, SyntaxError: a program garbled on the line) is `Unexpected`.
    pub fn ok(self, what: &str) -> Result<String, WireError> {
        if let Some(e) = self.exception() {
            if e.starts_with("OSError") {
                let errno = e
                    .split("[Errno ")
                    .nth(1)
                    .and_then(|r| r.split(']').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                return Err(WireError::Refused {
                    what: what.to_string(),
                    code: errno,
                    name: format!("Traceback: {e}"),
                });
            }
            return Err(WireError::Unexpected(format!(
                "the board answered {what} with a Python exception: {e}"
            )));
        }
        String::from_utf8(self.stdout)
            .map_err(|_| WireError::Protocol(format!("the board's answer to {what} is not UTF-8")))
    }
}

/// A raw REPL session on a port whose own read timeout is short (tens of ms).
pub struct RawRepl<T: Read + Write> {
    port: T,
    /// How long the board may stay silent while an answer is due.
    timeout: Duration,
    /// Raw-paste: unknown until first asked, then whether the board offers it.
    paste: Option<bool>,
    /// Received and not yet consumed.
    rx: Vec<u8>,
    pub in_raw: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl<T: Read + Write> RawRepl<T> {
    pub fn new(port: T, baud: u32, timeout: Duration) -> RawRepl<T> {
        // A reply of a few KiB must fit in the timeout at the line rate, too.
        let line = Duration::from_secs_f64(10.0 * 4096.0 / baud.max(1) as f64);
        RawRepl {
            port,
            timeout: timeout + line,
            paste: None,
            rx: Vec::new(),
            in_raw: false,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }

    /// Whether raw-paste mode is in use (None before the first program).
    pub fn paste_mode(&self) -> Option<bool> {
        self.paste
    }

    fn send(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.port.write_all(data).map_err(link_error)?;
        self.port.flush().map_err(link_error)?;
        self.tx_bytes += data.len() as u64;
        Ok(())
    }

    /// Reads what is there (false: nothing arrived within the port's short timeout).
    fn fill(&mut self) -> Result<bool, WireError> {
        let mut buf = [0u8; 4096];
        match self.port.read(&mut buf) {
            Ok(0) => Err(WireError::Disconnected),
            Ok(n) => {
                self.rx_bytes += n as u64;
                self.rx.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(link_error(e)),
        }
    }

    /// Consumes input up to and including `ending`; the board may pause at most
    /// `timeout` between bytes.
    fn read_until(&mut self, ending: &[u8], what: &str) -> Result<Vec<u8>, WireError> {
        let mut quiet_since = Instant::now();
        loop {
            if let Some(at) = find(&self.rx, ending) {
                let rest = self.rx.split_off(at + ending.len());
                let mut got = std::mem::replace(&mut self.rx, rest);
                got.truncate(at);
                return Ok(got);
            }
            if self.rx.len() > MAX_OUTPUT {
                return Err(WireError::Protocol(format!(
                    "the board sent more than {MAX_OUTPUT} bytes while cradle waited for {what}"
                )));
            }
            if self.fill()? {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= self.timeout {
                return Err(WireError::Timeout {
                    what: what.to_string(),
                    secs: self.timeout.as_secs_f64(),
                });
            }
        }
    }

    fn read_n(&mut self, n: usize, what: &str) -> Result<Vec<u8>, WireError> {
        let mut quiet_since = Instant::now();
        while self.rx.len() < n {
            if self.fill()? {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= self.timeout {
                return Err(WireError::Timeout {
                    what: what.to_string(),
                    secs: self.timeout.as_secs_f64(),
                });
            }
        }
        let rest = self.rx.split_off(n);
        Ok(std::mem::replace(&mut self.rx, rest))
    }

    /// Interrupts whatever runs and enters the raw REPL, up to the first prompt.
    pub fn enter(&mut self) -> Result<(), WireError> {
        let mut last = None;
        for _ in 0..3 {
            // Ctrl-C twice: a running program, then a half-typed line.
            // No wait for the board to go quiet: whatever it prints before the banner
            // (a KeyboardInterrupt, boot noise, an old program's output) is skipped.
            self.rx.clear();
            self.send(&[b'\r', CTRL_C, CTRL_C, b'\r', CTRL_A])?;
            let mut want = BANNER.to_vec();
            want.push(b'>');
            match self.read_until(&want, "the raw REPL banner") {
                Ok(_) => {
                    self.in_raw = true;
                    return Ok(());
                }
                Err(e @ WireError::Timeout { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(WireError::Disconnected))
    }

    /// Runs one program (the prompt must have been read) and returns what it printed.
    pub fn exec(&mut self, code: &[u8]) -> Result<Output, WireError> {
        if !self.in_raw {
            return Err(WireError::Protocol("not in the raw REPL".into()));
        }
        if self.paste != Some(false) {
            self.send(PASTE_REQUEST)?;
            let r = self.read_n(2, "the raw-paste answer")?;
            match r.as_slice() {
                b"R\x01" => {
                    self.paste = Some(true);
                    self.paste_write(code)?;
                    return self.follow();
                }
                b"R\x00" => {}
                _ => {
                    // A board without raw-paste takes the request as text and resets
                    // the raw REPL on the Ctrl-A: wait for that banner.
                    self.read_until(b"w REPL; CTRL-B to exit\r\n>", "the raw REPL banner")?;
                }
            }
            self.paste = Some(false);
        }
        for chunk in code.chunks(RAW_CHUNK) {
            self.send(chunk)?;
            std::thread::sleep(RAW_PAUSE);
        }
        self.send(&[CTRL_D])?;
        let ok = self.read_n(2, "the raw REPL's OK")?;
        if ok != b"OK" {
            return Err(WireError::Protocol(format!(
                "the board did not accept the program (answered {:?})",
                String::from_utf8_lossy(&ok)
            )));
        }
        self.follow()
    }

    fn paste_write(&mut self, code: &[u8]) -> Result<(), WireError> {
        let w = self.read_n(2, "the raw-paste window size")?;
        let window = usize::from(u16::from_le_bytes([w[0], w[1]]));
        if window == 0 {
            return Err(WireError::Protocol(
                "the board offered raw-paste with a window of 0 bytes".into(),
            ));
        }
        let mut remain = window;
        let mut i = 0;
        while i < code.len() {
            // Take every grant already there; wait for one only when the window is used up.
            loop {
                if let Some(pos) = self.rx.iter().position(|&b| b != CTRL_A) {
                    let b = self.rx[pos];
                    self.rx.drain(..=pos);
                    if b == CTRL_D {
                        // The board ended the paste early (it could not take more).
                        self.send(&[CTRL_D])?;
                        return Err(WireError::Protocol(
                            "the board ended the raw-paste transfer early".into(),
                        ));
                    }
                    return Err(WireError::Protocol(format!(
                        "unexpected byte 0x{b:02x} from the board during raw-paste"
                    )));
                }
                remain += window * self.rx.len();
                self.rx.clear();
                if remain > 0 {
                    break;
                }
                let got = self.read_n(1, "a raw-paste window grant")?;
                self.rx = got;
            }
            let n = remain.min(code.len() - i);
            self.send(&code[i..i + n])?;
            remain -= n;
            i += n;
        }
        self.send(&[CTRL_D])?;
        let before = self.read_until(&[CTRL_D], "the end of the raw-paste transfer")?;
        if before.iter().any(|&b| b != CTRL_A) {
            return Err(WireError::Protocol(
                "unexpected bytes from the board before the raw-paste acknowledgement".into(),
            ));
        }
        Ok(())
    }

    fn follow(&mut self) -> Result<Output, WireError> {
        let stdout = self.read_until(&[CTRL_D], "the program's output")?;
        let stderr = self.read_until(&[CTRL_D], "the program's error output")?;
        self.read_until(b">", "the raw REPL prompt")?;
        Ok(Output { stdout, stderr })
    }

    /// Leaves the raw REPL for the friendly one (best effort: the board says nothing
    /// that matters).
    pub fn exit(&mut self) -> Result<(), WireError> {
        if self.in_raw {
            self.in_raw = false;
            self.send(&[b'\r', CTRL_B])?;
        }
        Ok(())
    }
}

fn link_error(e: io::Error) -> WireError {
    if e.raw_os_error() == Some(libc::EIO) || e.kind() == io::ErrorKind::BrokenPipe {
        WireError::Disconnected
    } else {
        WireError::Io(e)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain(b"'\"\\abc".iter().copied()).collect();
        let lit = py_bytes(&all);
        let (back, is_bytes, rest) = parse_literal(&lit).unwrap();
        assert!(is_bytes);
        assert_eq!(back, all);
        assert_eq!(rest, "");
        // PEM text stays compact.
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert_eq!(py_bytes(pem).len(), pem.len() + 3 + 2);
        let src = format!("{})", py_str("/certs/it's"));
        let (p, is_bytes, rest) = parse_literal(&src).unwrap();
        assert!(!is_bytes);
        assert_eq!(p, b"/certs/it's");
        assert_eq!(rest, ")");
        // Python's own repr forms.
        assert_eq!(parse_literal(r#"b"it's\x00""#).unwrap().0, b"it's\0");
        assert_eq!(parse_literal("'\\101'").unwrap().0, b"A");
        for bad in ["'open", "b'\\x4'", "x'a'", "'a\nb'"] {
            assert!(parse_literal(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn exception_is_the_last_traceback_line() {
        let o = Output {
            stdout: vec![],
            stderr: b"Traceback (most recent call last):\r\n  File \"<stdin>\", line 1, in <module>\r\nOSError: [Errno 2] ENOENT\r\n".to_vec(),
        };
        assert_eq!(o.exception().as_deref(), Some("OSError: [Errno 2] ENOENT"));
        assert!(o.os_error("ENOENT"));
        assert!(!o.os_error("EEXIST"));
        let e = o.ok("a read").unwrap_err();
        assert!(matches!(e, WireError::Refused { code: 2, .. }), "{e}");
        assert!(e.to_string().contains("OSError: [Errno 2] ENOENT"), "{e}");
    }
}
