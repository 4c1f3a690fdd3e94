//! `cradle identity export-esp-secure-cert`: the `esp_secure_cert` partition image of a
//! device whose key the host still holds (a key file `cradle identity issue` wrote), for
//! lines that flash with their own tools. cradle keeps no device keys, so a device
//! provisioned over its port (key written and forgotten) cannot be exported.

use std::path::Path;

use rcgen::PublicKeyData;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pki::esp_secure_cert as esc;
use crate::pki::{ca::CHAIN, cert::read_certs, keys};
use crate::store::certs::{self, CertStatus};
use crate::store::{devices, Reader};

#[derive(Debug, Serialize)]
pub struct Exported {
    pub serial: String,
    pub cert_serial: String,
    pub fingerprint: String,
    pub file: String,
    /// Partition size (the image's length) and how much of it the entries take.
    pub bytes: usize,
    pub used: usize,
}

/// Builds the image of `serial`'s newest live certificate with the key in `key_file`
/// and the CA chain, and writes it to `out` (mode 0600: it holds a plaintext key).
pub fn export(
    db: &Reader,
    ca_dir: &Path,
    serial: &str,
    key_file: &Path,
    size: u32,
    out: &Path,
) -> Result<Exported> {
    let dev = devices::require_device(db, serial)?;
    let cert = certs::certs_for_device(db, dev.id)?
        .into_iter()
        .rev()
        .find(|c| matches!(c.status, CertStatus::Active | CertStatus::Unused))
        .ok_or_else(|| {
            Error::not_found(format!(
                "device {serial} has no certificate that is not revoked"
            ))
        })?;
    let pem = match std::fs::read_to_string(key_file) {
        Ok(p) => zeroize::Zeroizing::new(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "no private key for {serial} at {}: cradle keeps no device keys (provisioning writes them to the device and forgets them); export right after `cradle identity issue {serial}`, which writes {serial}.key, or give --key FILE",
                key_file.display()
            )))
        }
        Err(e) => return Err(Error::io(key_file, e)),
    };
    let what = key_file.display().to_string();
    let pkcs8 = keys::read_private_key_pem(&pem, None, &what)?;
    let kp = keys::key_pair_from_pkcs8(&pkcs8, &what)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der)
        .map_err(|e| Error::crypto(format!("registered certificate {}: {e}", cert.serial_hex)))?;
    if parsed.public_key().raw != kp.subject_public_key_info().as_slice() {
        return Err(Error::crypto(format!(
            "{what} is not the key of {serial}'s certificate {} (another device's key, or an older one?)",
            cert.serial_hex
        )));
    }
    let issuing = crate::app::ca::active_issuing(db)?;
    if cert.ca_id != Some(issuing.id) {
        return Err(Error::conflict(format!(
            "{serial}'s certificate {} was issued by an earlier CA; its chain is no longer the home's",
            cert.serial_hex
        )));
    }
    let chain_path = ca_dir.join(CHAIN);
    let chain_pem = std::fs::read(&chain_path).map_err(|e| Error::io(&chain_path, e))?;
    let chain = read_certs(&chain_pem, "CA chain")?;
    let img = esc::build(&cert.der, &chain, Some(&pkcs8), size)?;
    crate::outfile::write_secret_file(out, &img.bytes)?;
    Ok(Exported {
        serial: dev.serial,
        cert_serial: cert.serial_hex,
        fingerprint: cert.fingerprint,
        file: out.display().to_string(),
        bytes: img.bytes.len(),
        used: img.used,
    })
}
