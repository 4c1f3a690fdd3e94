//! The one provisioning flow, over any [`DeviceLink`]: identify, register, key, issue,
//! write, read back, seal, record. The registry discipline is the module's (see
//! `station`): the certificate is `unused` until the device holds it sealed (or, for a
//! family that does not seal, verified), then `active` with the device `provisioned`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use rcgen::PublicKeyData;
use zeroize::Zeroizing;

use super::{dev_err, Mode, PortResult, Progress, Run, Station};
use crate::device::{Burn, DeviceLink, Identity};
use crate::error::{Error, Result};
use crate::pki::{csr, keys};
use crate::store::certs::{self, CertStatus, KeySource};
use crate::store::devices::{Device, DeviceStatus};
use crate::store::Store;

/// The port a run is on: its name, where progress goes, the watch run's done set, and when
/// the run started.
pub(super) struct Port<'a> {
    pub name: &'a str,
    pub progress: &'a dyn Progress,
    pub skip: Option<&'a Mutex<HashSet<String>>>,
    pub t0: Instant,
}

/// Abandons the run at a step boundary once the operator asked to stop (Ctrl-C): what
/// is done so far is consistent (nothing half-written), and the failure is recorded.
/// Past the write, the run finishes instead: a device is never left half-burned.
fn check_stop(before: &str) -> Result<()> {
    if crate::signals::stopped() {
        return Err(Error::Interrupted(format!(
            "interrupted by the operator before {before}; re-run to provision this device"
        )));
    }
    Ok(())
}

/// Provisions the device on `link`. `Ok(false)`: skipped (already done in this watch run).
pub(super) fn provision(
    st: &Station<'_>,
    link: &mut dyn DeviceLink,
    port: Port<'_>,
    res: &mut PortResult,
    run: &mut Run,
) -> Result<bool> {
    let Port {
        name: pname,
        progress,
        skip,
        t0,
    } = port;
    run.step = "identify";
    progress.update(pname, "identify", 0, 1);
    // The registry opens and readies its first write (on this thread, whose cache
    // keeps it) while the device identifies itself: both take milliseconds, and the
    // line would idle meanwhile. Not where the device will make its key while the
    // registry is updated (below): that hides the registry's work better.
    let keygen_hides = st.mode == Mode::Csr && link.seals();
    let (ident, reg) = if keygen_hides {
        (link.identify(), st.reg())
    } else {
        std::thread::scope(|sc| {
            let h = sc.spawn(|| link.identify());
            let reg = st.reg().and_then(|mut r| {
                r.ready_to_write()?;
                Ok(r)
            });
            let ident = h.join().unwrap_or_else(|_| {
                Err(crate::wire::WireError::Unexpected(
                    "identify worker panicked".into(),
                ))
            });
            (ident, reg)
        })
    };
    let ident = ident?;
    res.hardware_id = Some(ident.hardware_id.clone());
    if let Some(set) = skip {
        if set.lock().expect("skip set").contains(&ident.hardware_id) {
            return Ok(false);
        }
    }
    let serial = ident
        .serial
        .clone()
        .unwrap_or_else(|| ident.hardware_id.clone());
    res.serial = Some(serial.clone());
    check_stop("register")?;

    run.step = "register";
    // In CSR mode a sealing device makes its key while the registry is searched (registry
    // work is the largest host-side cost at high line rates). Re-keying before the
    // registry check is harmless there: an unsealed device holds no burned identity.
    // A family that does not seal may hold a working identity, so it waits.
    let early = st.mode == Mode::Csr && link.seals() && !ident.sealed;
    let mut early_key = None;
    // The registry was taken on the port's thread, whose cache keeps it open across
    // runs: a helper thread would open it afresh every time.
    let mut reg = reg?;
    let device = if early {
        progress.update(pname, "keygen", 0, 1);
        let (d, k) = std::thread::scope(|sc| {
            let h = sc.spawn(|| register(st, &mut reg, &ident, &serial, pname));
            let k = link.generate_key();
            (
                h.join()
                    .unwrap_or_else(|_| Err(dev_err("registry worker panicked"))),
                k,
            )
        });
        early_key = Some(k);
        d?
    } else {
        // Line work that changes nothing the device holds (the ESP32 attaches its
        // flash) while the registry is searched and updated.
        let (d, w) = std::thread::scope(|sc| {
            let h = sc.spawn(|| link.warm_up());
            let d = register(st, &mut reg, &ident, &serial, pname);
            let w = h.join().unwrap_or_else(|_| {
                Err(crate::wire::WireError::Unexpected(
                    "warm-up worker panicked".into(),
                ))
            });
            (d, w)
        });
        let d = d?;
        w?;
        d
    };
    drop(reg);
    res.serial = Some(device.serial.clone());
    run.device = Some(device.clone());
    // Rendered before anything is written: a template that does not fit this device
    // fails the run with the device untouched.
    let config = match st.config {
        Some(t) => {
            run.step = "render config";
            Some((t, t.render(&device, st.org, Some(&ident.firmware))?))
        }
        None => None,
    };

    if ident.sealed || (!link.seals() && device.status == DeviceStatus::Provisioned) {
        run.step = "check held identity";
        let r = finish_held(st, link, &device, &ident, pname, res);
        if r.is_ok() {
            if let Some((t, c)) = &config {
                write_config(st, link, &device, t, c, pname, run)?;
            }
        }
        res.link_seconds = t0.elapsed().as_secs_f64();
        return r.map(|_| true);
    }
    if device.status != DeviceStatus::Registered {
        return Err(Error::conflict(if link.seals() {
            format!(
                "device {} is {} in the registry but the device is not locked (wiped or replaced?); provisioning needs a registered device",
                device.serial, device.status
            )
        } else {
            format!(
                "device {} is {}; provisioning needs a registered device",
                device.serial, device.status
            )
        }));
    }

    check_stop("prepare")?;
    run.step = "prepare";
    link.prepare()?;
    // The key: made on the device (CSR) or here (inject).
    let (spki, key, evidence) = match st.mode {
        Mode::Csr => {
            run.step = "keygen";
            progress.update(pname, "keygen", 0, 1);
            let k = match early_key.take() {
                Some(k) => k?,
                None => link.generate_key()?,
            };
            let checked = csr::check_csr(&k.csr_der)
                .map_err(|e| dev_err(format!("device sent an unusable CSR: {e}")))?;
            if checked.spki_der != k.spki_der {
                return Err(dev_err(
                    "the device's CSR is for a different key than the public key it reported; refusing to issue",
                ));
            }
            (k.spki_der, None, k.evidence)
        }
        Mode::Inject => {
            run.step = "keygen";
            let kp = keys::generate()?;
            let der = Zeroizing::new(kp.serialize_der());
            (kp.subject_public_key_info(), Some(der), None)
        }
    };

    check_stop("issue")?;
    run.step = "issue";
    progress.update(pname, "issue", 0, 1);
    let source = match st.mode {
        Mode::Csr => KeySource::Device,
        Mode::Inject => KeySource::Host,
    };
    let issued = st.issue_cert(&device, &spki)?;
    run.cert_serial = Some(issued.info.serial_hex.clone());
    res.cert_serial = Some(issued.info.serial_hex.clone());
    res.fingerprint = Some(issued.info.fingerprint.clone());
    let mut burn = Burn {
        key,
        cert_der: &issued.der,
        chain_der: &st.signer.chain_der,
    };
    let total = burn.len();
    // A family that does not seal: credentials work the moment they are written, so
    // they are recorded first; meanwhile the link readies the write without sending
    // any of them (the ESP32 erases). Its failure is the write's to find again.
    let recorded = if link.seals() {
        None
    } else {
        let (cert_id, _ready) = std::thread::scope(|sc| {
            let h = sc.spawn(|| link.ready_write(&burn));
            let cert_id = st
                .reg()
                .and_then(|mut reg| st.record_pending(&mut reg, &device, &issued, source, pname));
            (cert_id, h.join())
        });
        Some(cert_id?)
    };
    let on_progress = |step: &'static str, done: u64, all: u64| {
        progress.update(pname, step, done, all);
    };
    let mut step: &'static str = "write";
    let mut write = |link: &mut dyn DeviceLink, step: &mut &'static str| -> Result<()> {
        link.write_identity(&mut burn, &mut |s, d, a| {
            *step = s;
            on_progress(s, d, a)
        })?;
        *step = "read back";
        progress.update(pname, "read back", total, total);
        link.verify_identity(&issued.der, &st.signer.chain_der)?;
        Ok(())
    };

    let cert_id = if link.seals() {
        // The pending record is written while the certificate goes over the line; it is
        // committed before the seal, so a device is never sealed with an unrecorded
        // certificate, and an unsealed one holds no burned identity.
        let mut reg = st.reg()?;
        let (cert_id, written) = std::thread::scope(|sc| {
            let recorder =
                sc.spawn(|| st.record_pending(&mut reg, &device, &issued, source, pname));
            let written = write(link, &mut step);
            (
                recorder
                    .join()
                    .unwrap_or_else(|_| Err(dev_err("registry worker panicked"))),
                written,
            )
        });
        // Back to the thread's cache for the final record.
        drop(reg);
        run.step = step;
        written?;
        let cert_id = cert_id?;
        run.step = "lock";
        progress.update(pname, "lock", total, total);
        link.seal()?;
        cert_id
    } else {
        let cert_id = recorded.expect("recorded before the write");
        let written = write(link, &mut step);
        run.step = step;
        written?;
        cert_id
    };
    res.link_seconds = t0.elapsed().as_secs_f64();
    let stats = link.stats();
    run.step = "record";
    progress.update(pname, "record", total, total);
    let mut extra = link.details();
    extra.insert("device_profile".into(), link.profile().as_str().into());
    extra.insert("wire_bytes".into(), stats.wire_bytes.into());
    extra.insert("link_seconds".into(), res.link_seconds.into());
    extra.insert("reconnects".into(), stats.reconnects.into());
    st.finalize(
        device.id,
        cert_id,
        pname,
        serde_json::Value::Object(extra),
        evidence,
    )?;
    if let Some((t, c)) = &config {
        write_config(st, link, &device, t, c, pname, run)?;
        res.link_seconds = t0.elapsed().as_secs_f64();
    }
    Ok(true)
}

/// Writes the rendered configuration into the device's config place, reads it back by
/// hash and records it (after the identity: a failure here leaves the identity
/// recorded, and a re-run writes the configuration).
fn write_config(
    st: &Station<'_>,
    link: &mut dyn DeviceLink,
    device: &Device,
    t: &crate::app::config::ConfigTemplate,
    c: &crate::app::config::Rendered,
    pname: &str,
    run: &mut Run,
) -> Result<()> {
    run.step = "write config";
    let place = link.write_config(&crate::device::ConfigBlob {
        data: &c.bytes,
        micropython_path: &t.micropython_path,
    })?;
    let mut reg = st.reg()?;
    let now = crate::store::now_rfc3339();
    let tx = reg.write()?;
    crate::app::config::record_written(
        &tx,
        device.id,
        c,
        &place,
        "provision",
        pname,
        st.actor,
        &now,
    )?;
    tx.commit()?;
    Ok(())
}

fn register(
    st: &Station<'_>,
    reg: &mut Store,
    ident: &Identity,
    serial: &str,
    pname: &str,
) -> Result<Device> {
    st.lookup_or_register(reg, ident, serial, pname)
}

/// A device that already holds an identity (sealed, or a provisioned modem): PASS if it
/// is its registered certificate, finish the recording if it is our pending one, else
/// refuse.
fn finish_held(
    st: &Station<'_>,
    link: &mut dyn DeviceLink,
    device: &Device,
    ident: &Identity,
    pname: &str,
    res: &mut PortResult,
) -> Result<()> {
    let candidates = {
        let reg = st.reg()?;
        certs::certs_for_device(reg.reader(), device.id)?
    };
    let mut held = None;
    // Newest first: a re-run after a failure holds the latest certificate.
    for c in candidates.into_iter().rev() {
        if link.holds(&c.der)? {
            held = Some(c);
            break;
        }
    }
    let Some(r) = held else {
        return Err(if ident.sealed {
            dev_err(format!(
                "device {} is locked with a certificate this registry did not issue to it (or none); wipe it before provisioning",
                device.serial
            ))
        } else {
            Error::conflict(format!(
                "device {} is {} in the registry but the device does not hold its certificate (replaced or wiped?)",
                device.serial, device.status
            ))
        });
    };
    res.cert_serial = Some(r.serial_hex.clone());
    res.fingerprint = Some(r.fingerprint.clone());
    match (r.status, device.status) {
        (CertStatus::Active, DeviceStatus::Provisioned) => {
            res.already_provisioned = true;
            Ok(())
        }
        (CertStatus::Unused, DeviceStatus::Registered) if ident.sealed => st.finalize(
            device.id,
            r.id,
            pname,
            serde_json::json!({"resumed": true}),
            None,
        ),
        (cs, ds) => Err(Error::conflict(format!(
            "device {} holds certificate {} which is {} in the registry (device is {ds})",
            device.serial,
            r.serial_hex,
            cs.as_str()
        ))),
    }
}
