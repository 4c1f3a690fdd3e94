//! Firmware versions: recording what a device reports on every contact (with a trail
//! in the event log that grows only when the version changes), comparing versions for
//! the audit, and the list of versions known bad (`audit --vulnerable FILE`).
//!
//! Version rule (cradle-audit(7)): the version of a firmware string is its first run of
//! dot-separated decimal numbers with at least one dot (`mfw_nrf9160_1.3.5` → 1.3.5,
//! `MicroPython 1.24.1` → 1.24.1, `v1.3.2-rc1` → 1.3.2), else its last run of digits
//! (`build 42` → 42). Components compare as numbers, missing ones count as 0 (1.3 =
//! 1.3.0). A suffix right after the numbers that starts with `-` or a letter (`-rc1`,
//! `b2`) is a pre-release and sorts before the same numbers without one (1.3.2-rc1 <
//! 1.3.2); two pre-release suffixes compare piecewise, digit runs as numbers. A suffix
//! after `+` is build metadata and ignored. A string with no digit has no version.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::store::{contact, Tx};

/// Longest firmware string cradle records.
pub const MAX_FIRMWARE_LEN: usize = 128;

/// Checks a firmware string an operator gives (`device set firmware=`).
pub fn check_firmware(v: &str) -> std::result::Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("firmware version is empty".into());
    }
    if v.len() > MAX_FIRMWARE_LEN {
        return Err(format!(
            "firmware version is {} bytes; at most {MAX_FIRMWARE_LEN}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err("firmware version contains a control character".into());
    }
    Ok(v.to_string())
}

/// Records that the device `device_id` reported `firmware` on a contact `via` a port
/// command (provision, decommission, device config). The `firmware.reported` event is
/// appended on the first contact and whenever the version changed, never otherwise.
/// Returns whether an event was appended.
pub fn record_contact(
    tx: &Tx<'_>,
    device_id: i64,
    firmware: &str,
    via: &str,
    port: &str,
    actor: &Actor,
    now: &str,
) -> Result<bool> {
    // What a device says is outside input: keep it within what an operator may set.
    let fw = check_firmware(firmware)
        .map_err(|e| Error::Device(format!("the device on {port} reported a bad {e}")))?;
    let before = contact::contact(tx, device_id)?;
    if fw == crate::device::NO_APP_FIRMWARE && before.firmware.is_some() {
        // The ROM says nothing about the application: keep what is known, note the contact.
        contact::touch(tx, device_id, now)?;
        return Ok(false);
    }
    contact::set_firmware(tx, device_id, &fw, Some(now))?;
    let changed = before.firmware.as_deref() != Some(fw.as_str());
    if !changed && before.last_contact_at.is_some() {
        return Ok(false);
    }
    tx.event(
        EventKind::FirmwareReported,
        Some(device_id),
        actor,
        serde_json::json!({
            "firmware": fw, "previous": before.firmware, "source": "device",
            "via": via, "port": port, "first_contact": before.last_contact_at.is_none(),
        }),
        now,
    )?;
    Ok(true)
}

/// Records a firmware version an operator set (an update done elsewhere). Returns the
/// version before, `None` when it was already `firmware` (nothing recorded).
pub fn record_set(
    tx: &Tx<'_>,
    device_id: i64,
    firmware: &str,
    command: &str,
    actor: &Actor,
    now: &str,
) -> Result<Option<Option<String>>> {
    let before = contact::set_firmware(tx, device_id, firmware, None)?;
    if before.firmware.as_deref() == Some(firmware) {
        return Ok(None);
    }
    tx.event(
        EventKind::FirmwareReported,
        Some(device_id),
        actor,
        serde_json::json!({
            "firmware": firmware, "previous": before.firmware, "source": "operator",
            "via": command,
        }),
        now,
    )?;
    Ok(Some(before.firmware))
}

/// A version as the rule in this module's documentation reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub numbers: Vec<u64>,
    /// Pre-release suffix (without a leading `-`), empty for a release.
    pub pre: String,
}

impl Version {
    /// The version in `s`, or `None` when it holds no digit.
    pub fn parse(s: &str) -> Option<Version> {
        let b = s.as_bytes();
        // Runs of digits and dots that start and end with a digit.
        let mut runs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let start = i;
                let mut end = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    if b[i].is_ascii_digit() {
                        end = i + 1;
                    }
                    i += 1;
                }
                runs.push((start, end));
            } else {
                i += 1;
            }
        }
        let (start, end) = runs
            .iter()
            .find(|(s0, e0)| b[*s0..*e0].contains(&b'.'))
            .or(runs.last())
            .copied()?;
        let numbers = s[start..end]
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u64>().unwrap_or(u64::MAX))
            .collect();
        let rest = &s[end..];
        let pre = match rest.chars().next() {
            Some('-') => rest[1..].to_string(),
            Some(c) if c.is_ascii_alphabetic() => rest.to_string(),
            _ => String::new(),
        };
        let pre = pre
            .split(['+', ' ', '_', '/'])
            .next()
            .unwrap_or("")
            .to_string();
        Some(Version { numbers, pre })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: Vec<String> = self.numbers.iter().map(u64::to_string).collect();
        f.write_str(&n.join("."))?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.numbers.len().max(other.numbers.len());
        for i in 0..n {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => natural(&self.pre, &other.pre),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two strings piecewise, digit runs as numbers (`rc2` < `rc10`).
fn natural(a: &str, b: &str) -> Ordering {
    fn pieces(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let d = c.is_ascii_digit();
            match out.last_mut() {
                Some((ld, p)) if *ld == d => p.push(c),
                _ => out.push((d, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (pieces(a), pieces(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (u, v) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                u.len().cmp(&v.len()).then_with(|| u.cmp(v))
            }
            _ => x.1.cmp(&y.1),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// One `--min-firmware MODEL=VERSION`.
#[derive(Debug, Clone)]
pub struct MinFirmware {
    pub model: String,
    pub min: Version,
    /// As given, for messages.
    pub text: String,
}

impl std::str::FromStr for MinFirmware {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (m, v) = s.split_once('=').ok_or_else(|| {
            Error::input(format!(
                "--min-firmware '{s}': want MODEL=VERSION, e.g. nrf9160=1.3.5"
            ))
        })?;
        let (m, v) = (m.trim(), v.trim());
        if m.is_empty() {
            return Err(Error::input(format!(
                "--min-firmware '{s}': the model is empty"
            )));
        }
        let min = Version::parse(v).ok_or_else(|| {
            Error::input(format!(
                "--min-firmware '{s}': '{v}' holds no version number"
            ))
        })?;
        Ok(MinFirmware {
            model: m.to_string(),
            min,
            text: v.to_string(),
        })
    }
}

/// One line of a `--vulnerable` file: a version known bad, for one model or any.
#[derive(Debug, Clone)]
pub struct Vulnerable {
    pub model: Option<String>,
    pub version: Version,
    pub text: String,
    pub line: usize,
}

/// Largest `--vulnerable` file read.
pub const MAX_VULNERABLE_FILE: u64 = 1 << 20;

/// Parses a `--vulnerable` file: one `VERSION` or `MODEL VERSION` per line (the last
/// word is the version, the words before it the model), `#` starts a comment, blank
/// lines are skipped. A malformed line is one error naming `path` and the line.
pub fn parse_vulnerable(path: &str, text: &str) -> Result<Vec<Vulnerable>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.len() > 256 {
            return Err(Error::input_at(path, n, "line longer than 256 bytes"));
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(Error::input_at(path, n, "control character in the line"));
        }
        let (model, version) = match line.rsplit_once(char::is_whitespace) {
            Some((m, v)) => (Some(m.trim().to_string()), v.trim()),
            None => (None, line),
        };
        let v = Version::parse(version).ok_or_else(|| {
            Error::input_at(
                path,
                n,
                format!("'{version}' is not a version (no number); want VERSION or MODEL VERSION"),
            )
        })?;
        out.push(Vulnerable {
            model,
            version: v,
            text: version.to_string(),
            line: n,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} has no version"))
    }

    #[test]
    fn versions_read_by_the_documented_rule() {
        assert_eq!(v("mfw_nrf9160_1.3.5").numbers, [1, 3, 5]);
        assert_eq!(v("MicroPython 1.24.1").numbers, [1, 24, 1]);
        assert_eq!(
            v("v1.3.2-rc1"),
            Version {
                numbers: vec![1, 3, 2],
                pre: "rc1".into()
            }
        );
        assert_eq!(v("build 42").numbers, [42]);
        assert_eq!(v("sim-0.1.0").numbers, [0, 1, 0]);
        assert_eq!(v("1.2.3+abc").pre, "");
        assert!(Version::parse("rom").is_none());
    }

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        assert!(v("1.10") > v("1.9"));
        assert_eq!(v("1.3").cmp(&v("1.3.0")), Ordering::Equal);
        assert!(v("v1.3.2-rc1") < v("1.3.2"));
        assert!(v("1.3.2-rc2") < v("1.3.2-rc10"));
        assert!(v("1.3.2-rc1") > v("1.3.1"));
        assert!(v("mfw_nrf9160_1.3.4") < v("1.3.5"));
    }

    #[test]
    fn vulnerable_lines_and_errors() {
        let l = parse_vulnerable("f", "# bad ones\n1.2.0\nPico W 1.19.1  # RCE\n\n").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].model.as_deref(), Some("Pico W"));
        let e = parse_vulnerable("f", "1.0\nnrf9160 latest\n").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(
            e.to_string().contains("f") && e.to_string().contains('2'),
            "{e}"
        );
    }
}
