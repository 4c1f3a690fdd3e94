//! The provisioning flow for nRF91-style modems (AT%KEYGEN / AT%CMNG).
//!
//! The modem has no LOCK: the identity counts as burned once `AT%CMNG=1` lists the
//! SHA-256 of every credential written. Writes are whole objects, so a failed run is
//! simply run again (the credentials are overwritten).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use rcgen::PublicKeyData;
use zeroize::Zeroizing;

use super::{dev_err, Mode, PortResult, Progress, Run, Station};
use crate::error::{Error, Result};
use crate::pki::cert::to_pem;
use crate::pki::{csr, keys};
use crate::store::certs::{self, CertStatus, KeySource};
use crate::store::devices::DeviceStatus;
use crate::wire::nrf91::{
    self, cmng_sha, BodyKind, NrfSession, TYPE_CA_CHAIN, TYPE_CLIENT_CERT, TYPE_PRIVATE_KEY,
};
use crate::wire::{self, WireError};

/// The security tag cradle provisions (nRF Cloud's default tag).
pub const SEC_TAG: u32 = 16_842_753;

pub(super) fn run(
    st: &Station<'_>,
    port: &Path,
    progress: &dyn Progress,
    res: &mut PortResult,
    run: &mut Run,
    skip: Option<&Mutex<HashSet<String>>>,
) -> Result<bool> {
    let pname = port.display().to_string();
    let t0 = Instant::now();
    run.step = "open";
    progress.update(&pname, "open", 0, 1);
    let mut s = NrfSession::new(wire::open_port(port, st.baud)?, st.baud, st.timeout);
    let r = flow(st, &mut s, &pname, progress, res, run, skip, t0);
    res.wire_bytes = s.tx_bytes + s.rx_bytes;
    r
}

#[allow(clippy::too_many_arguments)]
fn flow(
    st: &Station<'_>,
    s: &mut NrfSession<wire::Port>,
    pname: &str,
    progress: &dyn Progress,
    res: &mut PortResult,
    run: &mut Run,
    skip: Option<&Mutex<HashSet<String>>>,
    t0: Instant,
) -> Result<bool> {
    run.step = "identify";
    progress.update(pname, "identify", 0, 1);
    let (imei, model, _fw) = s.identify()?;
    res.hardware_id = Some(imei.clone());
    if let Some(set) = skip {
        if set.lock().expect("skip set").contains(&imei) {
            return Ok(false);
        }
    }
    run.step = "register";
    let device = {
        let mut reg = st.reg()?;
        st.lookup_or_register(&mut reg, &imei, &imei, &model, Some(&imei), pname)?
    };
    res.serial = Some(device.serial.clone());
    run.device = Some(device.clone());
    match device.status {
        DeviceStatus::Registered => {}
        DeviceStatus::Provisioned => {
            run.step = "check provisioned modem";
            let reg = st.reg()?;
            let active = certs::certs_for_device(reg.reader(), device.id)?
                .into_iter()
                .find(|c| c.status == CertStatus::Active)
                .ok_or_else(|| {
                    Error::conflict(format!(
                        "device {} is provisioned but has no active certificate",
                        device.serial
                    ))
                })?;
            drop(reg);
            let want = cmng_sha(&to_pem("CERTIFICATE", &active.der));
            let listed = s.list(SEC_TAG)?;
            if listed
                .iter()
                .any(|c| c.kind == TYPE_CLIENT_CERT && c.sha256 == want)
            {
                res.already_provisioned = true;
                res.cert_serial = Some(active.serial_hex);
                res.fingerprint = Some(active.fingerprint);
                res.link_seconds = t0.elapsed().as_secs_f64();
                return Ok(true);
            }
            return Err(Error::conflict(format!(
                "device {} is provisioned in the registry but the modem does not hold its certificate (replaced or wiped?)",
                device.serial
            )));
        }
        other => {
            return Err(Error::conflict(format!(
                "device {} is {other}; provisioning needs a registered device",
                device.serial
            )))
        }
    }
    run.step = "offline";
    s.command("AT+CFUN=4")?;
    let mut key_pem: Option<Zeroizing<String>> = None;
    let mut evidence = None;
    let spki = match st.mode {
        Mode::Csr => {
            run.step = "keygen";
            progress.update(pname, "keygen", 0, 1);
            let reply = s.keygen(SEC_TAG, BodyKind::Csr)?;
            let kg = nrf91::parse_keygen(&reply, SEC_TAG, BodyKind::Csr, st.nrf_identity_keys)
                .map_err(|e| dev_err(format!("the modem's %KEYGEN reply is refused: {e}")))?;
            let checked = csr::check_csr(&kg.body_der)
                .map_err(|e| dev_err(format!("modem sent an unusable CSR: {e}")))?;
            evidence = Some(kg.evidence());
            checked.spki_der
        }
        Mode::Inject => {
            let kp = keys::generate()?;
            key_pem = Some(Zeroizing::new(kp.serialize_pem()));
            kp.subject_public_key_info()
        }
    };
    run.step = "issue";
    progress.update(pname, "issue", 0, 1);
    let source = if st.mode == Mode::Csr {
        KeySource::Device
    } else {
        KeySource::Host
    };
    let (issued, cert_id) = st.issue_pending(&device, &spki, source, pname)?;
    run.cert_serial = Some(issued.info.serial_hex.clone());
    res.cert_serial = Some(issued.info.serial_hex.clone());
    res.fingerprint = Some(issued.info.fingerprint.clone());
    let cert_pem = to_pem("CERTIFICATE", &issued.der);
    let chain_pem = st.signer.chain_pem.clone();
    let mut expect = vec![
        (TYPE_CA_CHAIN, cmng_sha(&chain_pem)),
        (TYPE_CLIENT_CERT, cmng_sha(&cert_pem)),
    ];
    let total = (chain_pem.len() + cert_pem.len() + key_pem.as_ref().map_or(0, |k| k.len())) as u64;
    if let Some(k) = key_pem.take() {
        run.step = "write key";
        progress.update(pname, "write key", 0, total);
        expect.push((TYPE_PRIVATE_KEY, cmng_sha(&k)));
        s.write_credential(SEC_TAG, TYPE_PRIVATE_KEY, &k)?;
        // Written; the host forgets it (Zeroizing clears it here).
        drop(k);
    }
    run.step = "write chain";
    progress.update(pname, "write chain", 0, total);
    s.write_credential(SEC_TAG, TYPE_CA_CHAIN, &chain_pem)?;
    run.step = "write cert";
    progress.update(pname, "write cert", chain_pem.len() as u64, total);
    s.write_credential(SEC_TAG, TYPE_CLIENT_CERT, &cert_pem)?;
    run.step = "verify";
    progress.update(pname, "verify", total, total);
    let listed = s.list(SEC_TAG)?;
    for (kind, sha) in &expect {
        match listed.iter().find(|c| c.kind == *kind) {
            Some(c) if &c.sha256 == sha => {}
            Some(c) => {
                return Err(WireError::Verify(format!(
                "read-back: the modem lists SHA-256 {} for credential type {kind}, expected {sha}",
                c.sha256
            ))
                .into())
            }
            None => {
                return Err(WireError::Verify(format!(
                    "read-back: the modem does not list credential type {kind} under tag {SEC_TAG}"
                ))
                .into())
            }
        }
    }
    res.link_seconds = t0.elapsed().as_secs_f64();
    res.wire_bytes = s.tx_bytes + s.rx_bytes;
    run.step = "record";
    st.finalize(
        device.id,
        cert_id,
        pname,
        serde_json::json!({"device_profile": "nrf91", "sec_tag": SEC_TAG}),
        evidence,
    )?;
    Ok(true)
}
