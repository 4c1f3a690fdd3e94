//! The host side of device links: which device family a port speaks.

use std::fmt;

use serde::Serialize;

/// Which protocol a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceProfile {
    /// The cradle protocol, cradle-protocol(7).
    Cradle,
    /// Nordic nRF91-style AT commands (AT%KEYGEN, AT%CMNG).
    Nrf91,
}

impl DeviceProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceProfile::Cradle => "cradle",
            DeviceProfile::Nrf91 => "nrf91",
        }
    }
}

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
