//! Cell rules shared by import and export: spreadsheet-formula neutralisation and the
//! literal that clears a field.
//!
//! **Formula rule.** A spreadsheet executes a cell that starts with `=`, `+`, `-`, `@`,
//! TAB or CR. On export, a value is prefixed with one `'` when it starts with one of
//! those characters *after any run of leading `'`* (so `=1+1` → `'=1+1`, and a value
//! that genuinely is `'=x` → `''=x`). On import, a cell that starts with `'` followed by
//! zero or more `'` and then one of those characters loses exactly one leading `'`.
//! Every other cell is taken as is (`'hello` stays `'hello`). Export then import gives
//! back every value exactly.
//!
//! **Clearing.** A cell holding exactly [`CLEAR`] clears the field on update (it is
//! never stored as a value). A blank cell leaves the stored value unchanged, unless
//! `--blank clears` is given.

use std::borrow::Cow;

/// The literal that clears a field on import (and `device set FIELD=` does the same).
pub const CLEAR: &str = "<clear>";

fn is_trigger(b: u8) -> bool {
    matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
}

/// True if a spreadsheet would execute (or the restore rule would alter) `s`.
pub fn needs_neutralising(s: &str) -> bool {
    let rest = s.trim_start_matches('\'');
    rest.as_bytes().first().is_some_and(|&b| is_trigger(b))
}

/// The export form of a cell value.
pub fn neutralise(s: &str) -> Cow<'_, str> {
    if needs_neutralising(s) {
        let mut o = String::with_capacity(s.len() + 1);
        o.push('\'');
        o.push_str(s);
        Cow::Owned(o)
    } else {
        Cow::Borrowed(s)
    }
}

/// A cell written back as it was read (the `--errors` file): the export's rule applied
/// to the value import reads from it, `neutralise(restore(raw))`, so a spreadsheet
/// executes nothing and importing it again gives what the original cell gave (`=x` →
/// `'=x`; `'=x` stays). A cell that is not UTF-8 has no value: it gets one `'` when it
/// starts with a trigger byte, which is the same rule on bytes.
pub fn neutralise_raw(raw: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(raw) {
        Ok(t) => match neutralise(restore(t)) {
            Cow::Owned(o) => Cow::Owned(o.into_bytes()),
            Cow::Borrowed(b) if b.len() == raw.len() => Cow::Borrowed(raw),
            Cow::Borrowed(b) => Cow::Owned(b.as_bytes().to_vec()),
        },
        Err(_) if raw.first().is_some_and(|&b| is_trigger(b)) => {
            let mut o = Vec::with_capacity(raw.len() + 1);
            o.push(b'\'');
            o.extend_from_slice(raw);
            Cow::Owned(o)
        }
        Err(_) => Cow::Borrowed(raw),
    }
}

/// The stored value of an imported cell (inverse of [`neutralise`]).
pub fn restore(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if needs_neutralising(rest) => rest,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_interesting_value() {
        for v in [
            "",
            "plain",
            "=1+1",
            "+49 30 1234",
            "-5",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "'",
            "''",
            "'=x",
            "''=x",
            "'hello",
            "'",
            "a=b",
            "=",
            "'-",
            "'''+",
            "müller",
            "\"q\"",
        ] {
            let out = neutralise(v);
            assert_eq!(restore(&out), v, "value {v:?} exported as {out:?}");
            // The exported cell never starts with a trigger character.
            assert!(
                !out.as_bytes().first().is_some_and(|&b| is_trigger(b)),
                "{v:?}"
            );
        }
        assert_eq!(neutralise("=1"), "'=1");
        assert_eq!(neutralise("'=1"), "''=1");
        assert_eq!(neutralise("'x"), "'x");
        assert_eq!(restore("'=1"), "=1");
        assert_eq!(restore("'x"), "'x");
    }

    #[test]
    fn a_raw_cell_written_back_imports_as_the_original() {
        for raw in [
            "=1+1", "'=1+1", "''=x", "-5", "'x", "plain", "@A1", "\tx", "",
        ] {
            let out = neutralise_raw(raw.as_bytes());
            let out = std::str::from_utf8(&out).unwrap();
            assert_eq!(restore(out), restore(raw), "{raw:?} written as {out:?}");
            assert!(!out.as_bytes().first().is_some_and(|&b| is_trigger(b)));
            assert_eq!(out.as_bytes().first(), {
                let b = raw.as_bytes().first();
                if b.is_some_and(|&b| is_trigger(b)) {
                    Some(&b'\'')
                } else {
                    b
                }
            });
        }
        assert_eq!(&*neutralise_raw(b"=\xff"), b"'=\xff");
        assert_eq!(&*neutralise_raw(b"x\xff"), b"x\xff");
    }
}
