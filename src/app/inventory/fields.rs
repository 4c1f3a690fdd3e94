//! The documented inventory columns and how each is validated and normalised.

use std::borrow::Cow;

use super::asset;
use crate::store::devices::{Device, DeviceStatus};

/// A documented device column. The order is the CSV export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Serial,
    HardwareId,
    Model,
    HwRev,
    Batch,
    Site,
    Location,
    Owner,
    Mac,
    Imei,
    Status,
    Notes,
    PurchaseDate,
    WarrantyUntil,
    Cost,
    Currency,
    Supplier,
    Criticality,
    EndOfLife,
}

// The store's row arrays are sized by this count.
const _: () = assert!(Field::COUNT == crate::store::inventory::FIELDS);

/// Longest value of a short text column (model, site, ...), in characters.
pub const MAX_TEXT: usize = 256;
/// Longest notes value, in characters.
pub const MAX_NOTES: usize = 65_536;
/// Longest attribute value, in characters.
pub const MAX_ATTR_VALUE: usize = 16_384;
/// Longest attribute name.
pub const MAX_ATTR_NAME: usize = 64;
/// Header prefix of attribute columns (`attr.color`); always accepted on import.
pub const ATTR_PREFIX: &str = "attr.";

impl Field {
    pub const ALL: [Field; 19] = [
        Field::Serial,
        Field::HardwareId,
        Field::Model,
        Field::HwRev,
        Field::Batch,
        Field::Site,
        Field::Location,
        Field::Owner,
        Field::Mac,
        Field::Imei,
        Field::Status,
        Field::Notes,
        Field::PurchaseDate,
        Field::WarrantyUntil,
        Field::Cost,
        Field::Currency,
        Field::Supplier,
        Field::Criticality,
        Field::EndOfLife,
    ];
    pub const COUNT: usize = 19;

    pub fn name(self) -> &'static str {
        match self {
            Field::Serial => "serial",
            Field::HardwareId => "hardware_id",
            Field::Model => "model",
            Field::HwRev => "hw_rev",
            Field::Batch => "batch",
            Field::Site => "site",
            Field::Location => "location",
            Field::Owner => "owner",
            Field::Mac => "mac",
            Field::Imei => "imei",
            Field::Status => "status",
            Field::Notes => "notes",
            Field::PurchaseDate => "purchase_date",
            Field::WarrantyUntil => "warranty_until",
            Field::Cost => "cost",
            Field::Currency => "currency",
            Field::Supplier => "supplier",
            Field::Criticality => "criticality",
            Field::EndOfLife => "end_of_life",
        }
    }

    pub fn idx(self) -> usize {
        self as usize
    }

    /// A header name (case-insensitive, surrounding blanks ignored) to a field.
    pub fn parse(name: &str) -> Option<Field> {
        let n = name.trim();
        Field::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(n))
    }

    /// The stored value of this field on a device.
    pub fn get(self, d: &Device) -> Option<&str> {
        match self {
            Field::Serial => Some(&d.serial),
            Field::HardwareId => d.hardware_id.as_deref(),
            Field::Model => d.model.as_deref(),
            Field::HwRev => d.hw_rev.as_deref(),
            Field::Batch => d.batch.as_deref(),
            Field::Site => d.site.as_deref(),
            Field::Location => d.location.as_deref(),
            Field::Owner => d.owner.as_deref(),
            Field::Mac => d.mac.as_deref(),
            Field::Imei => d.imei.as_deref(),
            Field::Status => Some(d.status.as_str()),
            Field::Notes => d.notes.as_deref(),
            Field::PurchaseDate => d.purchase_date.as_deref(),
            Field::WarrantyUntil => d.warranty_until.as_deref(),
            Field::Cost => d.cost.as_deref(),
            Field::Currency => d.currency.as_deref(),
            Field::Supplier => d.supplier.as_deref(),
            Field::Criticality => d.criticality.as_deref(),
            Field::EndOfLife => d.end_of_life.as_deref(),
        }
    }

    /// Sets an optional text field (not serial or status).
    pub fn set(self, d: &mut Device, v: Option<String>) {
        let slot = match self {
            Field::HardwareId => &mut d.hardware_id,
            Field::Model => &mut d.model,
            Field::HwRev => &mut d.hw_rev,
            Field::Batch => &mut d.batch,
            Field::Site => &mut d.site,
            Field::Location => &mut d.location,
            Field::Owner => &mut d.owner,
            Field::Mac => &mut d.mac,
            Field::Imei => &mut d.imei,
            Field::Notes => &mut d.notes,
            Field::PurchaseDate => &mut d.purchase_date,
            Field::WarrantyUntil => &mut d.warranty_until,
            Field::Cost => &mut d.cost,
            Field::Currency => &mut d.currency,
            Field::Supplier => &mut d.supplier,
            Field::Criticality => &mut d.criticality,
            Field::EndOfLife => &mut d.end_of_life,
            Field::Serial | Field::Status => return,
        };
        *slot = v;
    }

    /// Whether a value of this field may be removed (serial and status may not).
    pub fn clearable(self) -> bool {
        !matches!(self, Field::Serial | Field::Status)
    }

    /// Identifiers: what devices are told apart, looked up and filtered by. A character
    /// that cannot be seen is refused in them, never removed (see [`invisible`]).
    pub fn is_identifier(self) -> bool {
        matches!(
            self,
            Field::Serial
                | Field::HardwareId
                | Field::Site
                | Field::Batch
                | Field::Mac
                | Field::Imei
        )
    }

    /// Validates and normalises a non-empty value: surrounding white space is trimmed
    /// (except in notes, which are kept exactly), then each field's notation rules
    /// apply. The error text names what is wrong (the caller adds file, line and column).
    pub fn check(self, v: &str) -> Result<Cow<'_, str>, String> {
        let v = if self == Field::Notes { v } else { v.trim() };
        let id = self.is_identifier();
        if matches!(
            self,
            Field::Serial
                | Field::Mac
                | Field::Imei
                | Field::Status
                | Field::PurchaseDate
                | Field::WarrantyUntil
                | Field::EndOfLife
                | Field::Cost
                | Field::Currency
                | Field::Criticality
        ) {
            // Before the notation check, whose message could not name the character.
            if let Some(m) = invisible(v, id, false) {
                return Err(m);
            }
        }
        match self {
            Field::Serial => crate::app::identity::check_serial(v)
                .map(|_| Cow::Borrowed(v))
                .map_err(|e| e.to_string()),
            Field::Mac => normalise_mac(v),
            Field::Imei => normalise_imei(v),
            Field::Status => v
                .parse::<DeviceStatus>()
                .map(|s| Cow::Borrowed(s.as_str()))
                .map_err(|e| e.to_string()),
            Field::Notes => check_text(v, MAX_NOTES, true, false).map(|_| Cow::Borrowed(v)),
            Field::PurchaseDate | Field::WarrantyUntil | Field::EndOfLife => asset::check_date(v),
            Field::Cost => asset::normalise_cost(v),
            Field::Currency => asset::normalise_currency(v),
            Field::Criticality => asset::normalise_criticality(v),
            _ => check_text(v, MAX_TEXT, false, id).map(|_| Cow::Borrowed(v)),
        }
    }
}

/// Unicode format characters (general category Cf, Unicode 15.1): invisible, and some
/// (the bidi controls) reorder the text around them on screen.
const FORMAT_CHARS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

fn is_format(c: char) -> bool {
    let c = c as u32;
    FORMAT_CHARS.iter().any(|&(a, b)| (a..=b).contains(&c))
}

/// The name of a character an operator cannot see, for the error line.
fn invisible_name(c: char) -> &'static str {
    match c as u32 {
        0x00A0 => "NO-BREAK SPACE",
        0x00AD => "SOFT HYPHEN",
        0x200B => "ZERO WIDTH SPACE",
        0x200C => "ZERO WIDTH NON-JOINER",
        0x200D => "ZERO WIDTH JOINER",
        0x200E => "LEFT-TO-RIGHT MARK",
        0x200F => "RIGHT-TO-LEFT MARK",
        0x202A => "LEFT-TO-RIGHT EMBEDDING",
        0x202B => "RIGHT-TO-LEFT EMBEDDING",
        0x202C => "POP DIRECTIONAL FORMATTING",
        0x202D => "LEFT-TO-RIGHT OVERRIDE",
        0x202E => "RIGHT-TO-LEFT OVERRIDE",
        0x2060 => "WORD JOINER",
        0x2066 => "LEFT-TO-RIGHT ISOLATE",
        0x2067 => "RIGHT-TO-LEFT ISOLATE",
        0x2068 => "FIRST STRONG ISOLATE",
        0x2069 => "POP DIRECTIONAL ISOLATE",
        0xFEFF => "ZERO WIDTH NO-BREAK SPACE (byte order mark)",
        _ if c.is_control() => "control character",
        _ if c.is_whitespace() => "white space other than a plain space",
        _ => "invisible format character",
    }
}

/// Refuses, with one line naming the code point and where it is, a character that is
/// not seen as itself: control characters (line breaks and TAB allowed in `multiline`
/// text) and Unicode format characters (zero-width, bidi controls, U+FEFF) everywhere,
/// and in identifiers also white space other than the ASCII space (two sites that look
/// the same must be the same). Refused rather than removed: silently dropping them
/// would store something other than what the cell holds.
pub fn invisible(v: &str, identifier: bool, multiline: bool) -> Option<String> {
    // Most cells are ASCII, where only control characters can be invisible.
    if v.is_ascii()
        && !v
            .bytes()
            .any(|b| (b < 0x20 || b == 0x7f) && !(multiline && matches!(b, b'\n' | b'\r' | b'\t')))
    {
        return None;
    }
    let (at, c) = v.chars().enumerate().find(|&(_, c)| {
        (c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
            || is_format(c)
            || (identifier && c.is_whitespace() && c != ' ')
    })?;
    if c.is_control() {
        // Keeps the wording operators and scripts already match on.
        return Some(format!(
            "{} contains the control character {} (U+{:04X}) at character {}",
            excerpt(v),
            c.escape_default(),
            c as u32,
            at + 1
        ));
    }
    Some(format!(
        "{} contains U+{:04X} {} at character {}; invisible and bidi control characters are refused{} (retype the cell)",
        excerpt(v),
        c as u32,
        invisible_name(c),
        at + 1,
        if identifier { " in identifiers" } else { "" }
    ))
}

/// Shortens a value for an error message.
pub fn excerpt(v: &str) -> String {
    let mut s: String = v.chars().take(40).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn check_text(v: &str, max: usize, multiline: bool, identifier: bool) -> Result<(), String> {
    // A length check in bytes first keeps huge cells cheap to reject.
    if v.len() > max && v.chars().count() > max {
        return Err(format!(
            "value is {} characters long; the limit is {max}",
            v.chars().count()
        ));
    }
    match invisible(v, identifier, multiline) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// Checks an attribute name (from a header) and value.
pub fn check_attr_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ATTR_NAME {
        return Err(format!(
            "attribute name {} must be 1-{MAX_ATTR_NAME} characters",
            excerpt(name)
        ));
    }
    check_text(name, MAX_ATTR_NAME, false, false)
}

pub fn check_attr_value(v: &str) -> Result<(), String> {
    check_text(v, MAX_ATTR_VALUE, true, false)
}

/// A MAC address as six hex octets separated by `:` or `-`, dotted `aabb.ccdd.eeff`, or
/// bare 12 hex digits; stored as lowercase `aa:bb:cc:dd:ee:ff`.
pub fn normalise_mac(v: &str) -> Result<Cow<'_, str>, String> {
    let b = v.as_bytes();
    let canonical = b.len() == 17
        && b.iter().enumerate().all(|(i, &c)| {
            if i % 3 == 2 {
                c == b':'
            } else {
                c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
            }
        });
    if canonical {
        return Ok(Cow::Borrowed(v));
    }
    let bad = || format!("{} is not a MAC address", excerpt(v));
    let digits: Vec<u8> = match b.len() {
        17 => {
            let sep = b[2];
            if sep != b':' && sep != b'-' {
                return Err(bad());
            }
            let mut d = Vec::with_capacity(12);
            for (i, &c) in b.iter().enumerate() {
                if i % 3 == 2 {
                    if c != sep {
                        return Err(bad());
                    }
                } else {
                    d.push(c);
                }
            }
            d
        }
        14 if b[4] == b'.' && b[9] == b'.' => b.iter().copied().filter(|&c| c != b'.').collect(),
        12 => b.to_vec(),
        _ => return Err(bad()),
    };
    if digits.len() != 12 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let mut out = String::with_capacity(17);
    for (i, pair) in digits.chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(pair[0].to_ascii_lowercase() as char);
        out.push(pair[1].to_ascii_lowercase() as char);
    }
    Ok(Cow::Owned(out))
}

/// An IMEI as 15 digits, also written with `-`, space or `.` between digit groups
/// (`35-209900-176148-1`); stored as the digits, Luhn-checked.
pub fn normalise_imei(v: &str) -> Result<Cow<'_, str>, String> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return check_imei(v).map(|_| Cow::Borrowed(v));
    }
    let b = v.as_bytes();
    let sep = |c: u8| matches!(c, b'-' | b' ' | b'.');
    let grouped = b.first().is_some_and(u8::is_ascii_digit)
        && b.last().is_some_and(u8::is_ascii_digit)
        && b.iter().all(|&c| c.is_ascii_digit() || sep(c))
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]));
    if !grouped {
        if b.iter().any(|&c| c == b'E' || c == b'e')
            && b.iter()
                .all(|&c| c.is_ascii_digit() || b".,Ee+".contains(&c))
        {
            return Err(format!(
                "{} is not an IMEI: a spreadsheet turned it into a rounded number; format the column as text and enter the 15 digits again",
                excerpt(v)
            ));
        }
        return Err(format!("{} is not an IMEI (15 digits)", excerpt(v)));
    }
    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
    check_imei(&digits).map_err(|e| format!("{} (from {})", e, excerpt(v)))?;
    Ok(Cow::Owned(digits))
}

/// An IMEI: 15 digits whose last digit is the Luhn check digit.
pub fn check_imei(v: &str) -> Result<(), String> {
    let b = v.as_bytes();
    if b.len() != 15 || !b.iter().all(u8::is_ascii_digit) {
        return Err(format!("{} is not an IMEI (15 digits)", excerpt(v)));
    }
    if luhn_digit(&b[..14]) != b[14] - b'0' {
        return Err(format!(
            "{} is not an IMEI (check digit should be {})",
            excerpt(v),
            luhn_digit(&b[..14])
        ));
    }
    Ok(())
}

/// The Luhn check digit for ASCII digits `body`.
pub fn luhn_digit(body: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, &c) in body.iter().rev().enumerate() {
        let mut d = (c - b'0') as u32;
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        assert_eq!(
            normalise_mac("AA:BB:CC:00:11:22").unwrap(),
            "aa:bb:cc:00:11:22"
        );
        assert_eq!(
            normalise_mac("aa-bb-cc-00-11-22").unwrap(),
            "aa:bb:cc:00:11:22"
        );
        assert_eq!(
            normalise_mac("aabb.cc00.1122").unwrap(),
            "aa:bb:cc:00:11:22"
        );
        assert_eq!(normalise_mac("AABBCC001122").unwrap(), "aa:bb:cc:00:11:22");
        for bad in [
            "zz:bb:cc:00:11:22",
            "aa:bb:cc:00:11",
            "aa:bb-cc:00:11:22",
            "",
            "aabbcc00112",
        ] {
            assert!(normalise_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn imei_notations() {
        assert_eq!(
            normalise_imei("35-209900-176148-1").unwrap(),
            "352099001761481"
        );
        assert_eq!(
            normalise_imei("35 209900 176148 1").unwrap(),
            "352099001761481"
        );
        assert_eq!(
            normalise_imei("35.209900.176148.1").unwrap(),
            "352099001761481"
        );
        for bad in [
            "35-209900-176148-2",
            "35--209900-176148-1",
            "-352099001761481",
            "35-209900-176148",
            "35_209900_176148_1",
        ] {
            assert!(normalise_imei(bad).is_err(), "{bad}");
        }
        assert!(normalise_imei("3.52099E+14")
            .unwrap_err()
            .contains("format the column as text"));
    }

    #[test]
    fn invisible_characters() {
        assert!(invisible("berlin-1", true, false).is_none());
        assert!(invisible("Zürich 2", true, false).is_none());
        let m = invisible("lyon\u{200b}-2", true, false).unwrap();
        assert!(m.contains("U+200B ZERO WIDTH SPACE at character 5"), "{m}");
        let m = invisible("a\u{202e}b", false, false).unwrap();
        assert!(m.contains("U+202E RIGHT-TO-LEFT OVERRIDE"), "{m}");
        assert!(invisible("a\u{a0}b", true, false).is_some());
        assert!(invisible("a\u{a0}b", false, false).is_none());
        assert!(invisible("a\nb", false, true).is_none());
        assert!(invisible("a\nb", false, false).is_some());
        assert!(invisible("x\u{feff}", false, true).is_some());
        assert!(invisible("a\tb", false, true).is_none());
        assert!(invisible("a\x7fb", false, true).is_some());
        assert!(Field::Site.check("b\u{a0}1").is_err());
        assert!(Field::Model.check("b\u{a0}1").is_ok());
        assert!(Field::Model.check("b\u{200b}1").is_err());
        assert_eq!(
            Field::Site.check(" berlin-1 ").unwrap(),
            "berlin-1",
            "cells are trimmed"
        );
        assert_eq!(Field::Notes.check(" a ").unwrap(), " a ");
    }

    #[test]
    fn imei_luhn() {
        assert!(check_imei("490154203237518").is_ok());
        assert!(check_imei("490154203237519").is_err());
        assert!(check_imei("49015420323751").is_err());
        assert_eq!(luhn_digit(b"49015420323751"), 8);
    }
}
