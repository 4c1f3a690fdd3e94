//! The host side of device links: which family a port speaks, and the one trait
//! ([`DeviceLink`]) that the provisioning flow drives whatever the family, plus the
//! wipe seam ([`WipeLink`]) that decommissioning drives. Protocol codecs live in
//! `wire`; this module adapts them to what a workflow needs.

pub mod cradle;
pub mod esp32;
pub mod micropython;
pub mod nrf91;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::attestation::WipeAttestation;
use crate::error::Result;
use crate::wire::WireError;

/// Which protocol a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceProfile {
    /// The cradle protocol, cradle-protocol(7).
    Cradle,
    /// Nordic nRF91-style AT commands (AT%KEYGEN, AT%CMNG).
    Nrf91,
    /// Espressif ESP32 in its ROM bootloader (download mode), `esp_secure_cert` partition.
    Esp32,
    /// MicroPython boards over the raw REPL: identity files on the board's filesystem.
    Micropython,
}

impl DeviceProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceProfile::Cradle => "cradle",
            DeviceProfile::Nrf91 => "nrf91",
            DeviceProfile::Esp32 => "esp32",
            DeviceProfile::Micropython => "micropython",
        }
    }
}

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hardware_id: String,
    /// A factory serial number, if the device has one (else the hardware id serves).
    pub serial: Option<String>,
    pub model: String,
    pub firmware: String,
    /// The IMEI, for modems.
    pub imei: Option<String>,
    /// The identity is sealed (cradle LOCK): it can no longer change.
    pub sealed: bool,
}

/// A key the device made: its public key, a CSR for it, and the device's attestation
/// of that CSR when the family gives one (nRF91 `%KEYGEN` COSE_Sign1), as the evidence
/// kept with the certificate.
#[derive(Debug, Clone)]
pub struct DeviceKey {
    pub spki_der: Vec<u8>,
    pub csr_der: Vec<u8>,
    pub evidence: Option<serde_json::Value>,
}

/// What goes onto the device. The key (PKCS#8 DER) is only present when the host made
/// it; the link drops it as soon as the device has it.
pub struct Burn<'a> {
    pub key: Option<Zeroizing<Vec<u8>>>,
    pub cert_der: &'a [u8],
    /// The CA chain, issuing CA first.
    pub chain_der: &'a [Vec<u8>],
}

impl Burn<'_> {
    /// Bytes of identity to transfer (progress totals).
    pub fn len(&self) -> u64 {
        (self.key.as_ref().map_or(0, |k| k.len())
            + self.cert_der.len()
            + self.chain_der.iter().map(Vec::len).sum::<usize>()) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A rendered configuration on its way to a device.
pub struct ConfigBlob<'a> {
    pub data: &'a [u8],
    /// MicroPython: the file on the board.
    pub micropython_path: &'a str,
}

/// Whether `profile` has an honest place for a configuration; `Err` names why not.
pub fn config_place(profile: DeviceProfile) -> std::result::Result<(), String> {
    match profile {
        DeviceProfile::Cradle | DeviceProfile::Micropython => Ok(()),
        DeviceProfile::Esp32 => Err("the esp32 family has no config place cradle can write: the ROM bootloader sees flash, not the application's settings (write them with your firmware's NVS tooling)".into()),
        DeviceProfile::Nrf91 => Err("the nrf91 family has no config place cradle can write: the modem's AT interface stores credentials, not application settings".into()),
    }
}

/// Traffic seen on a link, for reports and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Bytes sent plus bytes received.
    pub wire_bytes: u64,
    pub retries: u32,
    pub resyncs: u32,
    /// Times the port was reopened after a hang-up.
    pub reconnects: u32,
}

/// Progress of a transfer: (step, bytes done, bytes in all).
pub type OnProgress<'a> = dyn FnMut(&'static str, u64, u64) + 'a;

/// One device on one port, whatever protocol it speaks. Errors are wire errors: the
/// flow maps them to exit codes and records them.
pub trait DeviceLink: Send {
    fn profile(&self) -> DeviceProfile;
    /// Identifies the device (the first request of every run).
    fn identify(&mut self) -> std::result::Result<Identity, WireError>;
    /// Whether this family seals an identity (LOCK). Families that do not hold an
    /// identity as burned once its credentials are written and verified.
    fn seals(&self) -> bool;
    /// Line work that changes nothing the device holds or does, done while the host
    /// looks the device up in the registry (the ESP32 attaches its flash).
    fn warm_up(&mut self) -> std::result::Result<(), WireError> {
        Ok(())
    }
    /// Readies the device for key generation and writes (the nRF91 goes offline).
    fn prepare(&mut self) -> std::result::Result<(), WireError> {
        Ok(())
    }
    /// The device makes a key pair and returns its public key and a CSR.
    fn generate_key(&mut self) -> std::result::Result<DeviceKey, WireError>;
    /// Readies the write of `burn` while the host records the certificate, sending
    /// none of the credentials (the ESP32 builds its partition image and erases the
    /// partition). Called only for a family that does not seal, on a device the
    /// registry holds as registered, not provisioned. A failure here is not the
    /// run's: `write_identity` does whatever is not ready.
    fn ready_write(&mut self, burn: &Burn<'_>) -> std::result::Result<(), WireError> {
        let _ = burn;
        Ok(())
    }
    /// Writes key (if the host made one), certificate and chain. `progress` is told each
    /// step; the step names are what a failure record reports.
    fn write_identity(
        &mut self,
        burn: &mut Burn<'_>,
        progress: &mut OnProgress<'_>,
    ) -> std::result::Result<(), WireError>;
    /// Reads the certificate and chain back (by hash) and fails unless they match.
    fn verify_identity(
        &mut self,
        cert_der: &[u8],
        chain_der: &[Vec<u8>],
    ) -> std::result::Result<(), WireError>;
    /// Seals the identity (no-op for families that do not seal).
    fn seal(&mut self) -> std::result::Result<(), WireError>;
    /// Whether the device holds `cert_der` as its identity certificate.
    fn holds(&mut self, cert_der: &[u8]) -> std::result::Result<bool, WireError>;
    fn stats(&self) -> LinkStats;
    /// Writes a rendered configuration into the device's config place and reads it back
    /// by SHA-256; returns where it went (a slot, a file). Families without an honest
    /// place for one refuse (the CLI refuses `--config` for them before opening the port).
    fn write_config(&mut self, cfg: &ConfigBlob<'_>) -> std::result::Result<String, WireError> {
        let _ = cfg;
        Err(WireError::Unexpected(format!(
            "the {} family has no place for a configuration",
            self.profile()
        )))
    }
    /// Family facts worth keeping with a `provision.passed` event.
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// What a device holds when a renewal starts: who it is, its identity key and any spare
/// key waiting in its spare slot (cradle-protocol(7) RENEWAL).
#[derive(Debug, Clone)]
pub struct RenewState {
    pub identity: Identity,
    /// SubjectPublicKeyInfo (DER) of the identity key.
    pub public_key: Option<Vec<u8>>,
    /// SubjectPublicKeyInfo (DER) of a spare key (NEXTKEY or injected), if one waits.
    pub spare_key: Option<Vec<u8>>,
}

/// A device that takes a successor identity in place: written into spare slots while the
/// old identity keeps working, verified by hash, then switched to in one step, so a
/// pulled cable before the switch leaves the old identity in use.
pub trait RenewLink: Send {
    fn state(&mut self) -> std::result::Result<RenewState, WireError>;
    /// The certificate in the identity's cert slot (empty if none).
    fn active_cert(&mut self) -> std::result::Result<Vec<u8>, WireError>;
    /// The device makes a spare key (its identity key stays in use until the switch).
    fn make_spare_key(&mut self) -> std::result::Result<DeviceKey, WireError>;
    /// Writes the spare key (if the host made one), certificate and chain into the spare slots.
    fn write_spare(&mut self, burn: &mut Burn<'_>) -> std::result::Result<(), WireError>;
    /// Reads the spare certificate and chain back and fails unless they match by SHA-256.
    fn verify_spare(
        &mut self,
        cert_der: &[u8],
        chain_der: &[Vec<u8>],
    ) -> std::result::Result<(), WireError>;
    /// Empties the spare slots (a spare key left by an abandoned re-key).
    fn discard_spare(&mut self) -> std::result::Result<(), WireError>;
    /// Makes the spare identity the identity; then the cert slot is read back.
    fn switch(&mut self, cert_der: &[u8]) -> std::result::Result<(), WireError>;
    fn stats(&self) -> LinkStats;
}

/// Why a family cannot renew in place (`renew --port`), or `Ok` when it can.
pub fn renew_place(profile: DeviceProfile) -> std::result::Result<(), String> {
    match profile {
        DeviceProfile::Cradle => Ok(()),
        DeviceProfile::Nrf91 => Err("the nrf91 family cannot renew in place yet: a successor needs a spare sec_tag and firmware that switches tags, which cradle does not drive; renew with --out or --bundle and write the certificate with your modem tooling".into()),
        DeviceProfile::Esp32 => Err("the esp32 family cannot renew in place: its esp_secure_cert partition has one identity and the ROM bootloader cannot switch to a new one atomically; renew with --out or --bundle and re-flash with `identity export-esp-secure-cert`".into()),
        DeviceProfile::Micropython => Err("the micropython family cannot renew in place yet (write a new file, verify its SHA-256, rename is not implemented); renew with --out or --bundle".into()),
    }
}

/// Opens a device that can renew in place (the cradle protocol); other families are
/// refused with one line saying why (`renew_place`).
pub fn open_renew_link(
    profile: DeviceProfile,
    port: &Path,
    params: LinkParams,
) -> Result<Box<dyn RenewLink>> {
    renew_place(profile).map_err(crate::Error::usage)?;
    Ok(Box::new(cradle::CradleLink::open(port, params)?))
}

/// Line settings of a link, and what a family needs to check its device.
#[derive(Debug, Clone)]
pub struct LinkParams {
    pub baud: u32,
    /// How long the device may take to start answering a request.
    pub timeout: Duration,
    /// nRF91: modem identity public keys by device UUID (`--nrf-identity-keys`).
    pub nrf_identity_keys: Option<std::sync::Arc<nrf91::IdentityKeys>>,
    /// MicroPython: where the identity files go on the board.
    pub micropython_paths: micropython::Paths,
    /// esp32: where the `esp_secure_cert` partition is (default 0xD000, 8 KiB).
    pub esp_partition: Option<esp32::Partition>,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            baud: 115_200,
            timeout: Duration::from_secs(5),
            nrf_identity_keys: None,
            micropython_paths: micropython::Paths::default(),
            esp_partition: None,
        }
    }
}

/// Opens the device on `port` as a link of its family.
pub fn open(
    profile: DeviceProfile,
    port: &Path,
    params: LinkParams,
) -> std::result::Result<Box<dyn DeviceLink>, WireError> {
    Ok(match profile {
        DeviceProfile::Cradle => Box::new(cradle::CradleLink::open(port, params)?),
        DeviceProfile::Nrf91 => Box::new(nrf91::NrfLink::open(port, params)?),
        DeviceProfile::Esp32 => Box::new(esp32::Esp32Link::open(port, params)?),
        DeviceProfile::Micropython => Box::new(micropython::MicropythonLink::open(port, params)?),
    })
}

/// What a family reports as its firmware when no application firmware can be seen on
/// the port (the ESP32 ROM bootloader): recorded on a first contact only, never over a
/// version an operator set (cradle-esp32(7)).
pub const NO_APP_FIRMWARE: &str = "rom";

/// A connection to one device that can identify itself and wipe on request.
pub trait WipeLink {
    /// The device's hardware id.
    fn hardware_id(&mut self) -> Result<String>;
    /// The device's hardware id and the firmware it reports, when the family reports
    /// one (recorded as a contact).
    fn contact(&mut self) -> Result<(String, Option<String>)> {
        Ok((self.hardware_id()?, None))
    }
    /// Sends WIPE with `nonce`; returns the device's signed attestation.
    fn wipe(&mut self, nonce: [u8; 32]) -> Result<WipeAttestation>;
    /// Whether this family proves a wipe by read-back (`wipe_read_back`) instead of a
    /// signed attestation (`wipe`).
    fn reads_back(&self) -> bool {
        false
    }
    /// Families that cannot sign (a ROM bootloader, a MicroPython board): erases the
    /// identity and reads back that it is gone.
    fn wipe_read_back(&mut self) -> Result<ReadBackWipe> {
        Err(crate::Error::Device(
            "this device signs its wipes; it has no read-back wipe".into(),
        ))
    }
}

/// A wipe the host verified by reading the device back (no signature to check), in the
/// words of the wipe record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadBackWipe {
    /// The hardware id the device reported while wiping, when the family reads it again
    /// (a device swapped on the port mid-wipe is refused).
    pub hardware_id: Option<String>,
    /// What was erased, how, over what.
    pub method: String,
    /// How the read-back showed it gone.
    pub verification: String,
    pub tool: String,
    /// What the identity lived on, unless the operator says otherwise.
    pub media_type: String,
    /// The family's own evidence (e.g. the chip's digest of the erased region), kept
    /// with the record.
    pub evidence: Option<serde_json::Value>,
}

/// Opens a wipe link of `profile` on a serial port (or pty): the cradle protocol wipes
/// with a signed attestation, an ESP32 by erase and read-back, a MicroPython board by
/// removing its files and reading back that they are gone.
pub fn open_wipe_link(
    profile: DeviceProfile,
    port: &str,
    params: LinkParams,
) -> Result<Box<dyn WipeLink>> {
    Ok(match profile {
        DeviceProfile::Esp32 => Box::new(esp32::Esp32Link::open(Path::new(port), params)?),
        DeviceProfile::Micropython => {
            Box::new(micropython::MicropythonLink::open(Path::new(port), params)?)
        }
        DeviceProfile::Cradle => Box::new(cradle::CradleLink::open(Path::new(port), params)?),
        other => {
            return Err(crate::Error::usage(format!(
                "--wipe-port: the {other} profile has no serial wipe; record a manual wipe"
            )))
        }
    })
}
