//! Frames of the cradle device protocol (see cradle-protocol(7)).
//!
//! One frame is one line of printable ASCII:
//! `$VERB SEQ ARG… *CRC32\n`, where CRC32 (IEEE 802.3, the zlib one) covers the bytes
//! between `$` and ` *`, written as 8 lower-case hex digits. A receiver takes the text
//! after the LAST `$` of a line, so noise in front of a frame (boot messages, line
//! glitches) never hides the frame itself. Binary arguments are standard base64.

use super::WireError;

/// Longest line the host accepts, LF included (and the upper bound of a device's maxline).
pub const MAX_LINE: usize = 4096;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as zlib's `crc32`.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub verb: String,
    pub seq: u32,
    pub args: Vec<String>,
}

impl Frame {
    pub fn new(verb: &str, seq: u32, args: Vec<String>) -> Frame {
        Frame {
            verb: verb.to_string(),
            seq,
            args,
        }
    }

    /// Encodes the frame as one line, LF-terminated.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = format!("{} {}", self.verb, self.seq);
        for a in &self.args {
            body.push(' ');
            body.push_str(a);
        }
        let crc = crc32(body.as_bytes());
        format!("${body} *{crc:08x}\n").into_bytes()
    }

    /// Parses one line (without its LF). Noise before the last `$` is ignored.
    pub fn parse(line: &[u8]) -> Result<Frame, WireError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let start = line
            .iter()
            .rposition(|&b| b == b'$')
            .ok_or_else(|| WireError::BadFrame("no '$' frame start".into()))?;
        let text = &line[start + 1..];
        if text.len() < 11 || &text[text.len() - 10..text.len() - 8] != b" *" {
            return Err(WireError::BadFrame("no ' *CRC' trailer".into()));
        }
        let (body, crc_hex) = (&text[..text.len() - 10], &text[text.len() - 8..]);
        let crc_text = std::str::from_utf8(crc_hex)
            .map_err(|_| WireError::BadFrame("CRC is not ASCII".into()))?;
        let want = u32::from_str_radix(crc_text, 16)
            .map_err(|_| WireError::BadFrame(format!("CRC '{crc_text}' is not hex")))?;
        let got = crc32(body);
        if got != want {
            return Err(WireError::Crc { got, want });
        }
        let body = std::str::from_utf8(body)
            .map_err(|_| WireError::BadFrame("frame is not ASCII".into()))?;
        if !body.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(WireError::BadFrame("frame has control characters".into()));
        }
        let mut parts = body.split(' ');
        let verb = parts.next().unwrap_or("");
        if verb.is_empty() || !verb.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(WireError::BadFrame(format!("bad verb '{verb}'")));
        }
        let seq = parts
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| WireError::BadFrame("missing or bad sequence number".into()))?;
        Ok(Frame {
            verb: verb.to_string(),
            seq,
            args: parts
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// Why a line that `parse` accepts is still not in the exact form cradle-protocol(7)
    /// prescribes for a sender (what `cradle sim --strict` rejects): upper-case CRC digits,
    /// a SEQ outside 1..999999999 or with a leading zero, empty fields (two spaces in a row,
    /// a space at either end).
    pub fn strict_violation(line: &[u8]) -> Option<&'static str> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let start = line.iter().rposition(|&b| b == b'$')?;
        let text = &line[start + 1..];
        if text.len() < 11 {
            return None;
        }
        let (body, crc) = (&text[..text.len() - 10], &text[text.len() - 8..]);
        if !crc.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Some("CRC not in lower-case hex");
        }
        if body.split(|&b| b == b' ').any(|f| f.is_empty()) {
            return Some("empty field (two spaces in a row, or a space at an end)");
        }
        let seq = body.split(|&b| b == b' ').nth(1).unwrap_or(b"");
        if seq.len() > 9 || seq.first() == Some(&b'0') {
            return Some("SEQ not in 1..999999999 without leading zeros");
        }
        None
    }

    /// The value of a `key=value` argument.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find_map(|a| a.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// A required `key=value` argument.
    pub fn need(&self, key: &str) -> Result<&str, WireError> {
        self.get(key)
            .ok_or_else(|| WireError::Protocol(format!("{} reply lacks '{key}='", self.verb)))
    }

    /// A required base64 `key=value` argument, decoded.
    pub fn need_b64(&self, key: &str) -> Result<Vec<u8>, WireError> {
        b64_decode(self.need(key)?)
            .map_err(|_| WireError::Protocol(format!("device sent invalid base64 in '{key}='")))
    }

    /// A required decimal `key=value` argument.
    pub fn need_u64(&self, key: &str) -> Result<u64, WireError> {
        let v = self.need(key)?;
        v.parse()
            .map_err(|_| WireError::Protocol(format!("'{key}={v}' is not a number")))
    }
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// Splits a byte stream into bounded lines of at most `max` bytes, LF included (the
/// page's maxline). A line that reaches `max` bytes without its LF makes `push` report an
/// overlong line once; the rest of that line is discarded. Blank lines (nothing, or only
/// a CR, before the LF) are not lines: both sides ignore them.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    overflow: bool,
}

pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

impl LineBuffer {
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::with_capacity(max.min(8192)),
            max,
            overflow: false,
        }
    }

    /// Feeds bytes; appends complete lines (or overflow markers) to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Line>) {
        for &b in data {
            if b == b'\n' {
                if self.overflow {
                    self.overflow = false;
                } else if !self.buf.is_empty() && self.buf != b"\r" {
                    out.push(Line::Complete(std::mem::take(&mut self.buf)));
                }
                self.buf.clear();
            } else if self.overflow {
                continue;
            } else if self.buf.len() + 1 >= self.max {
                // This byte would make the line `max` bytes before its LF.
                self.overflow = true;
                self.buf.clear();
                out.push(Line::TooLong);
            } else {
                self.buf.push(b);
            }
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn roundtrip_and_noise_before_dollar() {
        let f = Frame::new("WRITE", 7, vec!["cert".into(), "0".into(), b64(b"hello")]);
        let line = f.encode();
        assert!(line.ends_with(b"\n"));
        let mut noisy = b"\x00\xffboot: rom v1 $$garbage".to_vec();
        noisy.extend_from_slice(&line[..line.len() - 1]);
        assert_eq!(Frame::parse(&noisy).unwrap(), f);
        assert_eq!(Frame::parse(&line[..line.len() - 1]).unwrap(), f);
    }

    #[test]
    fn man_page_example_frames_parse() {
        // From the example session in man/cradle-protocol.7.
        let f = Frame::parse(b"$HELLO 41 1 *a60ef2b1").unwrap();
        assert_eq!((f.verb.as_str(), f.seq, f.args.len()), ("HELLO", 41, 1));
        assert_eq!(
            Frame::new("LOCK", 52, vec![]).encode(),
            b"$LOCK 52 *e12450b9\n"
        );
    }

    #[test]
    fn rejects_bad_crc_and_shapes() {
        let mut line = Frame::new("OK", 1, vec!["len=5".into()]).encode();
        line.pop();
        let n = line.len();
        line[n - 12] ^= 1; // flip a bit in the body
        assert!(matches!(Frame::parse(&line), Err(WireError::Crc { .. })));
        assert!(Frame::parse(b"$OK 1 len=5").is_err());
        assert!(Frame::parse(b"no frame here").is_err());
        assert!(Frame::parse(b"$ok 1 *00000000").is_err());
    }

    #[test]
    fn line_buffer_bounds_lines() {
        let mut lb = LineBuffer::new(8);
        let mut out = Vec::new();
        lb.push(b"abc\n0123456789xyz\nok\n\n\r\n", &mut out);
        assert_eq!(out.len(), 3, "blank lines are not lines");
        assert!(matches!(&out[0], Line::Complete(l) if l == b"abc"));
        assert!(matches!(&out[1], Line::TooLong));
        assert!(matches!(&out[2], Line::Complete(l) if l == b"ok"));
        // maxline counts the LF: 7 bytes + LF fit in 8, 8 bytes + LF do not.
        out.clear();
        lb.push(b"1234567\n12345678\n", &mut out);
        assert!(matches!(&out[0], Line::Complete(l) if l == b"1234567"));
        assert!(matches!(&out[1], Line::TooLong));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn strict_form_is_the_encoded_form() {
        let good = Frame::new("STAT", 7, vec!["cert".into()]).encode();
        let good = &good[..good.len() - 1];
        assert_eq!(Frame::strict_violation(good), None);
        let crc = format!("{:08x}", crc32(b"STAT 7 cert"));
        let upper = format!("$STAT 7 cert *{}", crc.to_uppercase());
        // Lenient parse takes every one of these; the strict form refuses each.
        for (line, why) in [
            (upper, "lower-case"),
            (
                format!("$STAT 0 cert *{:08x}", crc32(b"STAT 0 cert")),
                "SEQ",
            ),
            (
                format!(
                    "$STAT 1234567890 cert *{:08x}",
                    crc32(b"STAT 1234567890 cert")
                ),
                "SEQ",
            ),
            (
                format!("$STAT 07 cert *{:08x}", crc32(b"STAT 07 cert")),
                "SEQ",
            ),
            (
                format!("$STAT 7  cert *{:08x}", crc32(b"STAT 7  cert")),
                "empty field",
            ),
        ] {
            assert!(
                Frame::parse(line.as_bytes()).is_ok() || why == "SEQ",
                "{line}"
            );
            let v = Frame::strict_violation(line.as_bytes()).unwrap_or("");
            assert!(v.contains(why), "{line}: {v}");
        }
    }
}
