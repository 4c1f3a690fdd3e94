//! ZPL II for Zebra printers: one `^XA … ^XZ` format per label.
//!
//! Every field carries `^FH_`, and every byte of its data that ZPL could read as a
//! command prefix (`^`, `~`), the escape character itself (`_`), a control character
//! or anything beyond ASCII is written as `_XX` hex: registry text can never end a
//! field and start a command of its own.

use std::fmt::Write;

use super::template::Label;

/// The ZPL format of one label.
pub fn render(label: &Label) -> String {
    let mut z = String::with_capacity(512);
    // ^CI28: field data is UTF-8 (the hex escapes below are UTF-8 bytes).
    let _ = write!(
        z,
        "^XA\n^CI28\n^PW{}\n^LL{}\n^LH0,0\n",
        label.width, label.height
    );
    let q = &label.qr;
    // ^BQN,2,m: normal orientation, model 2, m dots per module; data is
    // "<ecc>A,<payload>" (A: automatic input mode).
    let _ = writeln!(
        z,
        "^FO{},{}^BQN,2,{}^FH_^FD{}A,{}^FS",
        q.x,
        q.y,
        q.module,
        q.ecc.letter(),
        escape(&q.payload)
    );
    for t in &label.texts {
        let _ = writeln!(
            z,
            "^FO{},{}^A0N,{},{}^FH_^FD{}^FS",
            t.x,
            t.y,
            t.height,
            t.width,
            escape(&t.value)
        );
    }
    z.push_str("^XZ\n");
    z
}

/// Field data with `^FH_` hex escapes (see the module comment).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_graphic() && !matches!(c, '^' | '~' | '_') || c == ' ' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "_{b:02X}");
            }
        }
    }
    out
}

/// The inverse of `escape`, as a printer applies `^FH_` (for tests).
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_characters_are_hex_escaped() {
        let hostile = "A^XZ^XA~JR_x\n\u{e9}";
        let e = escape(hostile);
        assert_eq!(e, "A_5EXZ_5EXA_7EJR_5Fx_0A_C3_A9");
        assert!(!e.contains(['^', '~']));
        assert_eq!(unescape(&e).unwrap(), hostile);
        assert_eq!(escape("ACME-0001 x.y:z"), "ACME-0001 x.y:z");
    }
}
