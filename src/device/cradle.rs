//! The cradle protocol (cradle-protocol(7)) as a device link: HELLO, KEYGEN/CSR,
//! resumable WRITE/COMMIT per slot, read-back by hash, LOCK, WIPE.
//!
//! A hang-up or a timeout mid-run is absorbed here: the port is reopened (up to three
//! times a run) and the run goes on if the same device answers, still holding the key
//! that was certified; every operation the flow calls is resumable on the device.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    Burn, DeviceKey, DeviceLink, DeviceProfile, Identity, LinkParams, LinkStats, OnProgress,
    RenewLink, RenewState, WipeLink,
};
use crate::attestation::WipeAttestation;
use crate::wire::{
    self, Session, WireError, SLOT_CERT, SLOT_CHAIN, SLOT_CONFIG, SLOT_KEY, SLOT_NEXT_CERT,
    SLOT_NEXT_CHAIN, SLOT_NEXT_KEY,
};

/// Reconnects allowed per run.
const MAX_RECONNECTS: u32 = 3;

/// How a link gets a fresh session after a hang-up.
type Reopen<T> = Box<dyn FnMut() -> Result<Session<T>, WireError> + Send>;

pub struct CradleLink<T: Read + Write = wire::Port> {
    s: Option<Session<T>>,
    reopen: Option<Reopen<T>>,
    /// Where the device is, for messages.
    name: String,
    hardware_id: Option<String>,
    /// The public key that was certified (CSR mode): a reconnect must find it again.
    certified: Option<Vec<u8>>,
    /// Traffic of sessions closed by reconnects.
    closed: LinkStats,
    reconnects: u32,
    /// The certificate slot as read once per run (`holds`).
    held_cert: Option<Vec<u8>>,
}

impl CradleLink<wire::Port> {
    /// Opens the serial port (or pty) at `port`.
    pub fn open(port: &Path, params: LinkParams) -> Result<Self, WireError> {
        let path: PathBuf = port.to_path_buf();
        let s = wire::open(&path, params.baud, params.timeout)?;
        let (baud, timeout) = (params.baud, params.timeout);
        let wait = timeout.max(Duration::from_secs(2));
        let reopen: Reopen<wire::Port> = Box::new(move || {
            // The device may take a moment to come back.
            let until = Instant::now() + wait;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                match wire::open(&path, baud, timeout) {
                    Ok(s) => return Ok(s),
                    Err(e) if Instant::now() >= until => return Err(e),
                    Err(_) => {}
                }
            }
        });
        Ok(CradleLink::over(
            s,
            Some(reopen),
            port.display().to_string(),
        ))
    }
}

impl<T: Read + Write> CradleLink<T> {
    /// A link over an open session; `reopen` (if any) replaces it after a hang-up.
    pub fn over(s: Session<T>, reopen: Option<Reopen<T>>, name: String) -> Self {
        CradleLink {
            s: Some(s),
            reopen,
            name,
            hardware_id: None,
            certified: None,
            closed: LinkStats::default(),
            reconnects: 0,
            held_cert: None,
        }
    }

    fn session(&mut self) -> &mut Session<T> {
        self.s
            .as_mut()
            .expect("a session until the link is dropped")
    }

    /// Runs `op`, reopening the port and retrying after a hang-up or a timeout.
    fn resumable<R>(
        &mut self,
        mut op: impl FnMut(&mut Session<T>) -> Result<R, WireError>,
    ) -> Result<R, WireError> {
        loop {
            let e = match op(self.session()) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !e.is_link_problem() || self.reconnects >= MAX_RECONNECTS || self.reopen.is_none() {
                return Err(e);
            }
            self.reconnect()?;
        }
    }

    fn reconnect(&mut self) -> Result<(), WireError> {
        self.reconnects += 1;
        // Close first: the port is opened exclusively.
        if let Some(old) = self.s.take() {
            add(&mut self.closed, &old.stats);
        }
        let reopen = self.reopen.as_mut().expect("checked by the caller");
        let mut s = reopen()?;
        let again = s.hello()?;
        self.s = Some(s);
        if self
            .hardware_id
            .as_deref()
            .is_some_and(|h| h != again.hardware_id)
        {
            return Err(WireError::Unexpected(format!(
                "after reconnecting, a different device ({}) answers on {}",
                again.hardware_id, self.name
            )));
        }
        if self.certified.is_some() && again.public_key != self.certified {
            return Err(WireError::Unexpected(
                "after reconnecting, the device no longer holds the key that was certified".into(),
            ));
        }
        Ok(())
    }
}

fn add(to: &mut LinkStats, s: &wire::Stats) {
    to.wire_bytes += s.tx_bytes + s.rx_bytes;
    to.retries += s.retries;
    to.resyncs += s.resyncs;
}

impl<T: Read + Write + Send> DeviceLink for CradleLink<T> {
    fn profile(&self) -> DeviceProfile {
        DeviceProfile::Cradle
    }

    fn identify(&mut self) -> Result<Identity, WireError> {
        let info = self.session().hello()?;
        self.hardware_id = Some(info.hardware_id.clone());
        Ok(Identity {
            sealed: info.locked(),
            hardware_id: info.hardware_id,
            serial: info.serial,
            model: info.model,
            firmware: info.firmware,
            imei: None,
        })
    }

    fn seals(&self) -> bool {
        true
    }

    fn generate_key(&mut self) -> Result<DeviceKey, WireError> {
        // KEYGEN is not blindly resent across a reconnect either: the key the device had
        // before the first KEYGEN is kept, so a session that finds another one (its HELLO
        // after the reset) fetches that key's CSR instead of making a second key.
        let s = self.session();
        let before = match s.info() {
            Some(i) => i.public_key.clone(),
            None => s.hello()?.public_key,
        };
        let (spki_der, csr_der) = self.resumable(|s| s.keygen_since(before.clone()))?;
        self.certified = Some(spki_der.clone());
        Ok(DeviceKey {
            spki_der,
            csr_der,
            evidence: None,
        })
    }

    fn write_identity(
        &mut self,
        burn: &mut Burn<'_>,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        let total = burn.len();
        let chain = burn.chain_der.concat();
        let cert = burn.cert_der;
        self.resumable(|s| {
            let mut base = 0u64;
            if let Some(k) = burn.key.as_ref() {
                progress("write key", 0, total);
                s.write_object(SLOT_KEY, k, &mut |d, _| progress("write key", d, total))?;
                base += k.len() as u64;
                // The device has it; the host forgets it.
                burn.key = None;
            }
            progress("write cert", base, total);
            s.write_object(SLOT_CERT, cert, &mut |d, _| {
                progress("write cert", base + d, total)
            })?;
            let base = base + cert.len() as u64;
            progress("write chain", base, total);
            s.write_object(SLOT_CHAIN, &chain, &mut |d, _| {
                progress("write chain", base + d, total)
            })
        })
    }

    fn verify_identity(&mut self, cert_der: &[u8], chain_der: &[Vec<u8>]) -> Result<(), WireError> {
        let chain = chain_der.concat();
        self.resumable(|s| s.verify_objects(&[(SLOT_CERT, cert_der), (SLOT_CHAIN, &chain)]))
    }

    fn seal(&mut self) -> Result<(), WireError> {
        self.resumable(|s| s.lock())
    }

    fn holds(&mut self, cert_der: &[u8]) -> Result<bool, WireError> {
        if self.held_cert.is_none() {
            let s = self.session();
            let st = s.stat(SLOT_CERT)?;
            // A certificate is a few hundred bytes; anything huge is not one of ours.
            let der = if st.len == 0 || st.len > 64 * 1024 {
                Vec::new()
            } else {
                s.read_object(SLOT_CERT, st.len as usize)?
            };
            self.held_cert = Some(der);
        }
        Ok(self.held_cert.as_deref() == Some(cert_der))
    }

    fn write_config(&mut self, cfg: &super::ConfigBlob<'_>) -> Result<String, WireError> {
        // Writable also after LOCK (cradle-protocol(7)): configuration changes in service.
        self.resumable(|s| {
            s.write_object(SLOT_CONFIG, cfg.data, &mut |_, _| {})?;
            s.verify_objects(&[(SLOT_CONFIG, cfg.data)])
        })?;
        Ok(format!("slot {SLOT_CONFIG}"))
    }

    fn stats(&self) -> LinkStats {
        let mut st = self.closed;
        if let Some(s) = &self.s {
            add(&mut st, &s.stats);
        }
        st.reconnects = self.reconnects;
        st
    }
}

/// A device without spare slots (older firmware) answers unknown-slot or
/// unknown-command: say what it lacks instead of the bare code.
fn no_spare(e: WireError) -> WireError {
    match e {
        WireError::Refused { code, .. }
            if code == wire::code::UNKNOWN_SLOT || code == wire::code::UNKNOWN_COMMAND =>
        {
            WireError::Unexpected(
                "the device firmware has no spare slots (cradle-protocol(7) RENEWAL: next.cert, SWITCH); it cannot renew in place".into(),
            )
        }
        e => e,
    }
}

impl<T: Read + Write + Send> RenewLink for CradleLink<T> {
    fn state(&mut self) -> Result<RenewState, WireError> {
        let info = self.session().hello()?;
        self.hardware_id = Some(info.hardware_id.clone());
        Ok(RenewState {
            identity: Identity {
                sealed: info.locked(),
                hardware_id: info.hardware_id,
                serial: info.serial,
                model: info.model,
                firmware: info.firmware,
                imei: None,
            },
            public_key: info.public_key,
            spare_key: info.next_key,
        })
    }

    fn active_cert(&mut self) -> Result<Vec<u8>, WireError> {
        self.resumable(|s| {
            let st = s.stat(SLOT_CERT)?;
            if st.len == 0 || st.len > 64 * 1024 || !st.committed {
                return Ok(Vec::new());
            }
            s.read_object(SLOT_CERT, st.len as usize)
        })
    }

    fn make_spare_key(&mut self) -> Result<DeviceKey, WireError> {
        let (spki_der, csr_der) = self.resumable(|s| s.nextkey()).map_err(no_spare)?;
        // The reply of the last NEXTKEY the device ran is the key it keeps: HELLO says so.
        let now = self.session().hello()?.next_key;
        if now.as_deref() != Some(spki_der.as_slice()) {
            return Err(WireError::Unexpected(
                "the device reports another spare key than the one NEXTKEY returned".into(),
            ));
        }
        Ok(DeviceKey {
            spki_der,
            csr_der,
            evidence: None,
        })
    }

    fn write_spare(&mut self, burn: &mut Burn<'_>) -> Result<(), WireError> {
        let chain = burn.chain_der.concat();
        let cert = burn.cert_der;
        self.resumable(|s| {
            if let Some(k) = burn.key.as_ref() {
                s.write_object(SLOT_NEXT_KEY, k, &mut |_, _| {})?;
                // The device has it; the host forgets it.
                burn.key = None;
            }
            s.write_object(SLOT_NEXT_CERT, cert, &mut |_, _| {})?;
            s.write_object(SLOT_NEXT_CHAIN, &chain, &mut |_, _| {})
        })
        .map_err(no_spare)
    }

    fn verify_spare(&mut self, cert_der: &[u8], chain_der: &[Vec<u8>]) -> Result<(), WireError> {
        let chain = chain_der.concat();
        self.resumable(|s| {
            s.verify_objects(&[(SLOT_NEXT_CERT, cert_der), (SLOT_NEXT_CHAIN, &chain)])
        })
        .map_err(no_spare)
    }

    fn discard_spare(&mut self) -> Result<(), WireError> {
        self.resumable(|s| {
            for slot in [SLOT_NEXT_KEY, SLOT_NEXT_CERT, SLOT_NEXT_CHAIN] {
                s.erase(slot)?;
            }
            Ok(())
        })
        .map_err(no_spare)
    }

    fn switch(&mut self, cert_der: &[u8]) -> Result<(), WireError> {
        use sha2::{Digest, Sha256};
        let sha: [u8; 32] = Sha256::digest(cert_der).into();
        self.resumable(|s| s.switch(sha)).map_err(no_spare)?;
        self.held_cert = None;
        let held = self.active_cert()?;
        if held != cert_der {
            return Err(WireError::Verify(
                "after SWITCH the cert slot does not read back as the successor".into(),
            ));
        }
        Ok(())
    }

    fn stats(&self) -> LinkStats {
        DeviceLink::stats(self)
    }
}

impl<T: Read + Write> WipeLink for CradleLink<T> {
    fn hardware_id(&mut self) -> crate::Result<String> {
        Ok(self.session().hello()?.hardware_id)
    }

    fn contact(&mut self) -> crate::Result<(String, Option<String>)> {
        let i = self.session().hello()?;
        Ok((i.hardware_id, Some(i.firmware)))
    }

    fn wipe(&mut self, nonce: [u8; 32]) -> crate::Result<WipeAttestation> {
        // Never retried: the nonce is single-use.
        self.session().wipe(nonce).map_err(|e| match e {
            // Received but refused: the device has wiped and will resend these same bytes,
            // so "re-run to collect it" would loop. A crypto refusal, like a bad signature.
            WireError::Attestation(_) => crate::Error::Crypto(format!(
                "{e}; every re-run gets the same stored reply: record this wipe by hand \
                 (--wipe-method, --wipe-tool, --verified-by) and report the firmware"
            )),
            e => e.into(),
        })
    }
}
