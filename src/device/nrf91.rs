//! nRF91-style modems (Nordic AT commands) as a device link: `AT+CGSN`/`CGMM`/`CGMR`
//! identify, `AT+CFUN=4` takes the modem offline, `AT%KEYGEN` makes a key with a COSE
//! attestation, `AT%CMNG` writes credentials and lists their SHA-256 for read-back.
//!
//! The modem has no LOCK: the identity counts as burned once `AT%CMNG=1` lists the
//! SHA-256 of every credential written. Writes are whole objects, so a failed run is
//! simply run again (the credentials are overwritten).

use std::io::{Read, Write};
use std::path::Path;

use super::{
    Burn, DeviceKey, DeviceLink, DeviceProfile, Identity, LinkParams, LinkStats, OnProgress,
};
use crate::pki::cert::to_pem;
use crate::pki::csr;
pub use crate::wire::nrf91::IdentityKeys;
use crate::wire::nrf91::{
    self, cmng_sha, BodyKind, NrfSession, TYPE_CA_CHAIN, TYPE_CLIENT_CERT, TYPE_PRIVATE_KEY,
};
use crate::wire::{self, WireError};

/// The security tag cradle provisions (nRF Cloud's default tag).
pub const SEC_TAG: u32 = 16_842_753;

pub struct NrfLink<T: Read + Write = wire::Port> {
    s: NrfSession<T>,
    /// Identity public keys to verify `%KEYGEN` attestations with.
    keys: Option<std::sync::Arc<IdentityKeys>>,
    /// (credential type, SHA-256 as listed) of what this run wrote.
    written: Vec<(u8, String)>,
    /// SHA-256 of the client certificate the modem lists, read once per run (`holds`).
    held_cert: Option<Option<String>>,
}

impl NrfLink<wire::Port> {
    pub fn open(port: &Path, params: LinkParams) -> Result<Self, WireError> {
        let s = NrfSession::new(
            wire::open_port(port, params.baud)?,
            params.baud,
            params.timeout,
        );
        Ok(NrfLink::over(s, params.nrf_identity_keys))
    }
}

impl<T: Read + Write> NrfLink<T> {
    pub fn over(s: NrfSession<T>, keys: Option<std::sync::Arc<IdentityKeys>>) -> Self {
        NrfLink {
            s,
            keys,
            written: Vec::new(),
            held_cert: None,
        }
    }
}

impl<T: Read + Write + Send> DeviceLink for NrfLink<T> {
    fn profile(&self) -> DeviceProfile {
        DeviceProfile::Nrf91
    }

    fn identify(&mut self) -> Result<Identity, WireError> {
        let (imei, model, firmware) = self.s.identify()?;
        Ok(Identity {
            hardware_id: imei.clone(),
            serial: Some(imei.clone()),
            model,
            firmware,
            imei: Some(imei),
            sealed: false,
        })
    }

    fn seals(&self) -> bool {
        false
    }

    fn prepare(&mut self) -> Result<(), WireError> {
        self.s.command("AT+CFUN=4")?;
        Ok(())
    }

    fn generate_key(&mut self) -> Result<DeviceKey, WireError> {
        let reply = self.s.keygen(SEC_TAG, BodyKind::Csr)?;
        let kg = nrf91::parse_keygen(&reply, SEC_TAG, BodyKind::Csr, self.keys.as_deref())
            .map_err(|e| {
                WireError::Unexpected(format!("the modem's %KEYGEN reply is refused: {e}"))
            })?;
        let checked = csr::check_csr(&kg.body_der)
            .map_err(|e| WireError::Unexpected(format!("modem sent an unusable CSR: {e}")))?;
        Ok(DeviceKey {
            spki_der: checked.spki_der,
            evidence: Some(kg.evidence()),
            csr_der: kg.body_der,
        })
    }

    fn write_identity(
        &mut self,
        burn: &mut Burn<'_>,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        let cert_pem = to_pem("CERTIFICATE", burn.cert_der);
        let chain_pem: String = burn
            .chain_der
            .iter()
            .map(|d| to_pem("CERTIFICATE", d))
            .collect();
        let total = burn.len();
        self.written.clear();
        if let Some(k) = burn.key.take() {
            progress("write key", 0, total);
            let pem = zeroize::Zeroizing::new(to_pem("PRIVATE KEY", &k));
            self.written.push((TYPE_PRIVATE_KEY, cmng_sha(&pem)));
            self.s.write_credential(SEC_TAG, TYPE_PRIVATE_KEY, &pem)?;
            // Written; the host forgets it (both copies are zeroised on drop here).
        }
        progress("write chain", 0, total);
        self.written.push((TYPE_CA_CHAIN, cmng_sha(&chain_pem)));
        self.s
            .write_credential(SEC_TAG, TYPE_CA_CHAIN, &chain_pem)?;
        progress("write cert", chain_pem.len() as u64, total);
        self.written.push((TYPE_CLIENT_CERT, cmng_sha(&cert_pem)));
        self.s
            .write_credential(SEC_TAG, TYPE_CLIENT_CERT, &cert_pem)?;
        Ok(())
    }

    fn verify_identity(&mut self, _cert: &[u8], _chain: &[Vec<u8>]) -> Result<(), WireError> {
        let listed = self.s.list(SEC_TAG)?;
        for (kind, sha) in &self.written {
            match listed.iter().find(|c| c.kind == *kind) {
                Some(c) if &c.sha256 == sha => {}
                Some(c) => {
                    return Err(WireError::Verify(format!(
                        "read-back: the modem lists SHA-256 {} for credential type {kind}, expected {sha}",
                        c.sha256
                    )))
                }
                None => {
                    return Err(WireError::Verify(format!(
                        "read-back: the modem does not list credential type {kind} under tag {SEC_TAG}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(), WireError> {
        Ok(())
    }

    fn holds(&mut self, cert_der: &[u8]) -> Result<bool, WireError> {
        if self.held_cert.is_none() {
            let listed = self.s.list(SEC_TAG)?;
            self.held_cert = Some(
                listed
                    .into_iter()
                    .find(|c| c.kind == TYPE_CLIENT_CERT)
                    .map(|c| c.sha256),
            );
        }
        let want = cmng_sha(&to_pem("CERTIFICATE", cert_der));
        Ok(self.held_cert.as_ref().and_then(Option::as_ref) == Some(&want))
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("sec_tag".into(), SEC_TAG.into());
        m
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            wire_bytes: self.s.tx_bytes + self.s.rx_bytes,
            ..LinkStats::default()
        }
    }
}
