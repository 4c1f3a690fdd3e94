//! The documented inventory columns and how each is validated and normalised.

use std::borrow::Cow;

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
}

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
    pub const ALL: [Field; 12] = [
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
    ];
    pub const COUNT: usize = 12;

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
            Field::Serial | Field::Status => return,
        };
        *slot = v;
    }

    /// Whether a value of this field may be removed (serial and status may not).
    pub fn clearable(self) -> bool {
        !matches!(self, Field::Serial | Field::Status)
    }

    /// Validates and normalises a non-empty value. The error text names what is wrong
    /// (the caller adds file, line and column).
    pub fn check(self, v: &str) -> Result<Cow<'_, str>, String> {
        match self {
            Field::Serial => crate::app::identity::check_serial(v)
                .map(|_| Cow::Borrowed(v))
                .map_err(|e| e.to_string()),
            Field::Mac => normalise_mac(v),
            Field::Imei => check_imei(v).map(|_| Cow::Borrowed(v)),
            Field::Status => v
                .parse::<DeviceStatus>()
                .map(|s| Cow::Borrowed(s.as_str()))
                .map_err(|e| e.to_string()),
            Field::Notes => check_text(v, MAX_NOTES, true).map(|_| Cow::Borrowed(v)),
            _ => check_text(v, MAX_TEXT, false).map(|_| Cow::Borrowed(v)),
        }
    }
}

/// Shortens a value for an error message.
pub fn excerpt(v: &str) -> String {
    let mut s: String = v.chars().take(40).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn check_text(v: &str, max: usize, multiline: bool) -> Result<(), String> {
    // A length check in bytes first keeps huge cells cheap to reject.
    if v.len() > max && v.chars().count() > max {
        return Err(format!(
            "value is {} characters long; the limit is {max}",
            v.chars().count()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|&c| c == '\0' || (c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t'))))
    {
        return Err(format!(
            "{} contains the control character {}",
            excerpt(v),
            c.escape_default()
        ));
    }
    Ok(())
}

/// Checks an attribute name (from a header) and value.
pub fn check_attr_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ATTR_NAME {
        return Err(format!(
            "attribute name {} must be 1-{MAX_ATTR_NAME} characters",
            excerpt(name)
        ));
    }
    check_text(name, MAX_ATTR_NAME, false)
}

pub fn check_attr_value(v: &str) -> Result<(), String> {
    check_text(v, MAX_ATTR_VALUE, true)
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
    fn imei_luhn() {
        assert!(check_imei("490154203237518").is_ok());
        assert!(check_imei("490154203237519").is_err());
        assert!(check_imei("49015420323751").is_err());
        assert_eq!(luhn_digit(b"49015420323751"), 8);
    }
}
