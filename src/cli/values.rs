//! clap's view of library enums: the library knows nothing of clap, so the values
//! (and their help text) users type live here and convert into the library's types.

use crate::app::station::Mode;
use crate::device::DeviceProfile;

/// Which protocol a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceProfileArg {
    /// The cradle protocol, cradle-protocol(7)
    Cradle,
    /// Nordic nRF91-style AT commands (AT%KEYGEN, AT%CMNG)
    Nrf91,
    /// Espressif ESP32 over its ROM bootloader; --mode inject (esp_secure_cert partition)
    Esp32,
    /// MicroPython boards over the raw REPL (files under /certs/; --mode inject)
    Micropython,
}

impl From<DeviceProfileArg> for DeviceProfile {
    fn from(a: DeviceProfileArg) -> DeviceProfile {
        match a {
            DeviceProfileArg::Cradle => DeviceProfile::Cradle,
            DeviceProfileArg::Nrf91 => DeviceProfile::Nrf91,
            DeviceProfileArg::Esp32 => DeviceProfile::Esp32,
            DeviceProfileArg::Micropython => DeviceProfile::Micropython,
        }
    }
}

/// Where the device's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// The device makes its key and sends a CSR; the key never leaves it
    Csr,
    /// cradle makes the key, writes it to the device, then forgets it
    Inject,
}

impl From<ModeArg> for Mode {
    fn from(a: ModeArg) -> Mode {
        match a {
            ModeArg::Csr => Mode::Csr,
            ModeArg::Inject => Mode::Inject,
        }
    }
}

/// A timeout flag (`--wipe-timeout`, `--printer-timeout`): positive seconds, at most an hour.
pub fn parse_timeout(s: &str) -> std::result::Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a number of seconds in (0, 3600]")),
    }
}
