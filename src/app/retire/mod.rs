//! Retirement: revocation (single and bulk), the resumable decommission workflow,
//! wipes (device-attested over a link, or manual records) and certificates of
//! sanitization.

pub mod crl;
pub mod decommission;
pub mod report;
pub mod revoke;
pub mod wipe;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Progress of a batch (devices revoked or decommissioned), for a progress bar.
pub trait Progress {
    /// `total` devices are about to be processed. Called once, after the CA was
    /// unlocked, so that a bar does not cover a passphrase prompt.
    fn start(&self, _total: u64) {}
    /// `done` of them are processed.
    fn done(&self, _done: u64) {}
    /// The batch is over (the CRL may follow).
    fn finish(&self) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The decommission steps, in order. Each is one registry transaction per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Retire,
    Revoke,
    Wipe,
    Decommission,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Retire, Step::Revoke, Step::Wipe, Step::Decommission];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Retire => "retire",
            Step::Revoke => "revoke",
            Step::Wipe => "wipe",
            Step::Decommission => "decommission",
        }
    }

    /// 1-based step number (as in `CRADLE_TEST_CRASH_AFTER_STEP`).
    pub fn number(self) -> u8 {
        self as u8 + 1
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// NIST SP 800-88 Rev. 1 sanitization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WipeLevel {
    Clear,
    Purge,
    Destroy,
}

impl WipeLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            WipeLevel::Clear => "clear",
            WipeLevel::Purge => "purge",
            WipeLevel::Destroy => "destroy",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            WipeLevel::Clear => "Clear",
            WipeLevel::Purge => "Purge",
            WipeLevel::Destroy => "Destroy",
        }
    }
}

impl FromStr for WipeLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<WipeLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "clear" => Ok(WipeLevel::Clear),
            "purge" => Ok(WipeLevel::Purge),
            "destroy" => Ok(WipeLevel::Destroy),
            _ => Err(Error::input(format!(
                "'{s}' is not a NIST SP 800-88 sanitization level (clear, purge, destroy)"
            ))),
        }
    }
}

/// Details of a wipe that are not about how it was done: who, where, what medium.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WipeContext {
    pub technician: Option<String>,
    pub location: Option<String>,
    pub destination: Option<String>,
    pub media_type: Option<String>,
}

/// A wipe done by other means (shredder, degausser, vendor tool) and recorded by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualWipe {
    pub level: WipeLevel,
    /// Technique, e.g. "cryptographic erase", "shred to 2 mm" (default: the level).
    pub technique: Option<String>,
    pub tool: String,
    pub tool_version: Option<String>,
    pub verified_by: String,
    pub verification: Option<String>,
}

/// How step 3 wipes the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WipeSpec {
    /// Over the device protocol on a serial port, with a signed attestation.
    Serial { port: String },
    /// A manual record.
    Manual(ManualWipe),
}

/// The options of one device's decommission, stored with each step so that
/// `--resume` (without flags) continues with what the first run was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOptions {
    pub reason: crate::pki::crl::Reason,
    pub wipe: Option<WipeSpec>,
    #[serde(default)]
    pub context: WipeContext,
}

/// Checks free-text wipe fields: bounded, single line (they go into reports and CSV).
pub fn check_text(what: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::input(format!("{what} must not be empty")));
    }
    if v.len() > 256 {
        return Err(Error::input(format!(
            "{what} is longer than 256 characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::input(format!(
            "{what} contains a control character (newline, tab, escape…)"
        )));
    }
    Ok(())
}
