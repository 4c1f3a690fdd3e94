//! Step 3 over a device link: a fresh single-use nonce, the device's signed wipe
//! attestation, checked against the device's registered certificate.
//!
//! The host logic is written against [`WipeLink`], so it runs the same over the
//! serial device protocol, the simulator on a pty, or an in-process device in tests.
//!
//! Order of work (each registry write is one transaction):
//! 1. ask the device for its hardware id; a different one than registered stops here;
//! 2. record a fresh random nonce in `nonces` (and the step as running) — before
//!    sending it, so a nonce the device answers is always one cradle issued;
//! 3. send WIPE with the nonce and read the attestation;
//! 4. accept it only if it names the registered hardware id, answers a nonce cradle
//!    issued *to this device* and never marked used, and its signature verifies
//!    against the newest delivered certificate's key (revocation keeps the key);
//! 5. mark the nonce used and store the attestation (`attestation_verified = 1`)
//!    together with the step record.
//!
//! A family that cannot sign (`WipeLink::reads_back`, a MicroPython board) stops after
//! 1: it erases its identity, the host reads back that it is gone, and the record is
//! kind `read-back` (no nonce, no attestation).
//!
//! **A reply lost after the device wiped** (cable pulled, host killed between 3 and
//! 5) leaves the step failed/running and the nonce issued but unused. A re-run sends
//! a new nonce. A device that has already wiped either
//! * re-signs the new nonce with the attestation key it retains, or
//! * resends the attestation it made before, which answers the earlier nonce: that
//!   nonce was issued to this device and never used, so it is accepted (once) and
//!   both nonces are retired;
//!
//! and the step completes. A device that can do neither (its key is gone and it kept
//! no attestation) cannot prove the wipe any more: record it by hand with
//! `--wipe-method … --wipe-tool … --verified-by …`, which the report shows as a
//! manual, unattested record.

use crate::store::Reader;
use x509_parser::prelude::FromDer;

use super::WipeContext;
use crate::attestation::WipeAttestation;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::store::devices::Device;
use crate::store::retire::{self as rr, WipeRecord};
use crate::store::{now_rfc3339, Store, Tx};

/// Purpose recorded on wipe nonces.
pub const NONCE_PURPOSE: &str = "wipe";

// The wipe goes through the device seam: `device::open_wipe_link` opens one.
pub use crate::device::WipeLink;

/// Opens wipe links of `profile` on serial ports with `params` (`--wipe-baud`,
/// `--wipe-timeout`, the MicroPython file paths), for `decommission::run`.
pub fn serial_opener(
    profile: crate::device::DeviceProfile,
    params: crate::device::LinkParams,
) -> impl FnMut(&str) -> Result<Box<dyn WipeLink>> {
    move |port: &str| crate::device::open_wipe_link(profile, port, params.clone())
}

/// Step 3 for a family that cannot sign (`WipeLink::reads_back`), once `attested_wipe`
/// has checked that the right device is on the port: it erases its identity and the host
/// reads back that it is gone. Recorded as kind `read-back` (no attestation, no nonce),
/// level Clear.
#[allow(clippy::too_many_arguments)]
fn read_back_wipe(
    reg: &mut Store,
    device: &Device,
    link: &mut dyn WipeLink,
    hwid: &str,
    ctx: &WipeContext,
    step_options: &serde_json::Value,
    actor: &Actor,
    finish: &dyn Fn(&Tx<'_>, &WipeRecord, &str) -> Result<()>,
) -> Result<WipeRecord> {
    {
        let now = now_rfc3339();
        let tx = reg.write()?;
        rr::start_step(
            &tx,
            device.id,
            super::Step::Wipe.as_str(),
            step_options,
            &now,
        )?;
        tx.commit()?;
    }
    let rb = link.wipe_read_back()?;
    if let Some(seen) = rb.hardware_id.as_deref().filter(|h| *h != hwid) {
        return Err(Error::Device(format!(
            "the device on the port changed during the wipe: {hwid}, then {seen}"
        )));
    }
    let now = now_rfc3339();
    let tx = reg.write()?;
    let record = WipeRecord {
        id: 0,
        device_id: device.id,
        kind: READ_BACK.into(),
        level: super::WipeLevel::Clear.as_str().into(),
        method: rb.method,
        media_type: ctx.media_type.clone().or(Some(rb.media_type)),
        tool: Some(rb.tool),
        tool_version: Some(env!("CARGO_PKG_VERSION").into()),
        verification: Some(rb.verification),
        verified_by: Some(format!("cradle (automatic), operator {}", actor.operator)),
        technician: ctx
            .technician
            .clone()
            .or_else(|| Some(actor.operator.clone())),
        location: ctx.location.clone().or_else(|| device.location.clone()),
        destination: ctx.destination.clone(),
        nonce_hex: None,
        attestation: rb.evidence.map(|e| e.to_string()),
        attestation_verified: None,
        recorded_at: now.clone(),
    };
    let id = rr::insert_wipe(&tx, &record)?;
    let record = WipeRecord { id, ..record };
    finish(&tx, &record, &now)?;
    tx.commit()?;
    Ok(record)
}

/// Wipe record kind of a wipe verified by reading the device back.
pub const READ_BACK: &str = "read-back";

/// 32 random bytes from the OS.
pub fn fresh_nonce() -> [u8; 32] {
    use rand_core::{OsRng, RngCore};
    let mut n = [0u8; 32];
    OsRng.fill_bytes(&mut n);
    n
}

/// Fails unless the device on the link is `device` (by registered hardware id); returns
/// the hardware id and the firmware the device reported, if its family reports one.
pub fn check_identity(
    device: &Device,
    link: &mut dyn WipeLink,
) -> Result<(String, Option<String>)> {
    let expected = device.hardware_id.as_deref().ok_or_else(|| {
        Error::Device(format!(
            "device '{}' has no registered hardware id, so cradle cannot tell whether the right device is on the port; record a manual wipe instead",
            device.serial
        ))
    })?;
    let (found, firmware) = link.contact()?;
    if found != expected {
        return Err(Error::Device(format!(
            "wrong device on the port: expected '{}' (hardware id {expected}), found hardware id {found}",
            device.serial
        )));
    }
    Ok((found, firmware))
}

/// The SubjectPublicKeyInfo (DER) and fingerprint of the certificate whose key the
/// device signs attestations with.
pub fn device_key(conn: &Reader, device: &Device) -> Result<(Vec<u8>, String)> {
    let cert = rr::newest_key_cert(conn, device.id)?.ok_or_else(|| {
        Error::crypto(format!(
            "device '{}' has no delivered certificate to verify an attestation against",
            device.serial
        ))
    })?;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert.der)
        .map_err(|e| Error::input(format!("registered certificate {}: {e}", cert.fingerprint)))?;
    Ok((parsed.public_key().raw.to_vec(), cert.fingerprint))
}

/// Decides which issued nonce an attestation answers, or why it is refused.
fn accepted_nonce(
    conn: &Reader,
    device: &Device,
    att: &WipeAttestation,
    sent: &[u8; 32],
) -> Result<bool> {
    let hex_n = hex::encode(att.nonce);
    let row = rr::nonce(conn, &hex_n)?;
    match row {
        None => Err(Error::crypto(format!(
            "attestation from '{}' answers nonce {hex_n}, which cradle never issued",
            device.serial
        ))),
        Some(r) if r.used_at.is_some() => Err(Error::crypto(format!(
            "replayed attestation from '{}': nonce {hex_n} was already used at {}",
            device.serial,
            r.used_at.unwrap_or_default()
        ))),
        Some(r) if r.device_id != Some(device.id) || r.purpose != NONCE_PURPOSE => {
            Err(Error::crypto(format!(
                "attestation from '{}' answers nonce {hex_n}, which was issued to another device or purpose",
                device.serial
            )))
        }
        // The nonce just sent, or an earlier one whose answer was lost.
        Some(_) => Ok(&att.nonce != sent),
    }
}

/// Runs step 3 over `link`. `finish` records the step and its event in the same
/// transaction that stores the attestation.
#[allow(clippy::too_many_arguments)]
pub fn attested_wipe(
    reg: &mut Store,
    device: &Device,
    link: &mut dyn WipeLink,
    port: &str,
    ctx: &WipeContext,
    step_options: &serde_json::Value,
    actor: &Actor,
    finish: &dyn Fn(&Tx<'_>, &WipeRecord, &str) -> Result<()>,
) -> Result<WipeRecord> {
    let (hwid, firmware) = check_identity(device, link)?;
    if let Some(fw) = firmware {
        // A contact like any other: the firmware trail records what the device reported.
        let now = now_rfc3339();
        let tx = reg.write()?;
        crate::app::firmware::record_contact(
            &tx,
            device.id,
            &fw,
            "decommission",
            port,
            actor,
            &now,
        )?;
        tx.commit()?;
    }
    // ESP32 ROM (erased, the chip's digest of the region), MicroPython (files removed,
    // stat shows them gone): verified by read-back, not signed.
    if link.reads_back() {
        return read_back_wipe(reg, device, link, &hwid, ctx, step_options, actor, finish);
    }
    let (spki, cert_fp) = device_key(reg.reader(), device)?;

    let nonce = fresh_nonce();
    let nonce_hex = hex::encode(nonce);
    {
        let now = now_rfc3339();
        let tx = reg.write()?;
        rr::insert_nonce(&tx, &nonce_hex, device.id, NONCE_PURPOSE, &now)?;
        rr::start_step(
            &tx,
            device.id,
            super::Step::Wipe.as_str(),
            step_options,
            &now,
        )?;
        tx.commit()?;
    }

    let att = link.wipe(nonce).map_err(|e| match e {
        // No reply came (or the line failed): the device may have wiped and kept its reply.
        Error::Device(e) => Error::Device(format!(
            "{e}; the device may have wiped without the host receiving its attestation: re-run to collect it, or record a manual wipe"
        )),
        // A reply came and was refused: its own message says what to do.
        e => e,
    })?;
    if att.hardware_id != hwid {
        return Err(Error::crypto(format!(
            "attestation names hardware id {}, but the device on the port is {hwid}",
            att.hardware_id
        )));
    }
    let resent = accepted_nonce(reg.reader(), device, &att, &nonce)?;
    att.verify(&spki, &att.nonce)?;

    let now = now_rfc3339();
    let tx = reg.write()?;
    let answered = hex::encode(att.nonce);
    if !rr::use_nonce(&tx, &answered, &now)? {
        return Err(Error::crypto(format!(
            "replayed attestation: nonce {answered} was used meanwhile"
        )));
    }
    if resent {
        // Retire the unanswered fresh nonce too: nothing may answer it later.
        rr::use_nonce(&tx, &nonce_hex, &now)?;
    }
    let mut json = serde_json::to_value(&att)
        .map_err(|e| Error::Internal(format!("wipe attestation as JSON: {e}")))?;
    if let Some(o) = json.as_object_mut() {
        o.insert(
            "payload".into(),
            String::from_utf8_lossy(&att.payload()).into(),
        );
        o.insert("certificate_fingerprint".into(), cert_fp.clone().into());
        o.insert("resent_for_earlier_nonce".into(), resent.into());
    }
    let record = WipeRecord {
        id: 0,
        device_id: device.id,
        kind: "attested".into(),
        level: super::WipeLevel::Clear.as_str().into(),
        method: format!(
            "device-executed erase of {} (signed attestation, counter {})",
            if att.erased.is_empty() { "-".to_string() } else { att.erased.join(", ") },
            att.counter
        ),
        media_type: ctx
            .media_type
            .clone()
            .or_else(|| Some("device non-volatile key and certificate storage".into())),
        tool: Some("cradle WIPE request over the device protocol".into()),
        tool_version: Some(env!("CARGO_PKG_VERSION").into()),
        verification: Some(format!(
            "ECDSA P-256 attestation signature verified against registered certificate sha256:{cert_fp}; single-use nonce {answered}"
        )),
        verified_by: Some(format!("cradle (automatic), operator {}", actor.operator)),
        technician: ctx.technician.clone().or_else(|| Some(actor.operator.clone())),
        location: ctx.location.clone().or_else(|| device.location.clone()),
        destination: ctx.destination.clone(),
        nonce_hex: Some(answered),
        attestation: Some(json.to_string()),
        attestation_verified: Some(true),
        recorded_at: now.clone(),
    };
    let id = rr::insert_wipe(&tx, &record)?;
    let record = WipeRecord { id, ..record };
    finish(&tx, &record, &now)?;
    tx.commit()?;
    Ok(record)
}

/// Re-checks a stored attestation (for reports): signature against the certificate
/// it was verified with, and that its nonce is the one recorded.
pub fn reverify(conn: &Reader, device: &Device, w: &WipeRecord) -> Result<()> {
    let json = w
        .attestation
        .as_deref()
        .ok_or_else(|| Error::input("the wipe record holds no attestation"))?;
    let att: WipeAttestation =
        serde_json::from_str(json).map_err(|e| Error::input(format!("stored attestation: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let spki = match v.get("certificate_fingerprint").and_then(|f| f.as_str()) {
        Some(fp) => {
            let c = crate::store::certs::cert_by_fingerprint(conn, fp)?.ok_or_else(|| {
                Error::not_found(format!("certificate {fp} is no longer recorded"))
            })?;
            let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&c.der)
                .map_err(|e| Error::input(format!("registered certificate {fp}: {e}")))?;
            parsed.public_key().raw.to_vec()
        }
        None => device_key(conn, device)?.0,
    };
    let recorded = w.nonce_hex.as_deref().unwrap_or("");
    let mut expected = [0u8; 32];
    hex::decode_to_slice(recorded, &mut expected)
        .map_err(|_| Error::input("the wipe record's nonce is not 32 bytes of hex"))?;
    att.verify(&spki, &expected)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::app::retire::Step;
    use crate::store::certs::{self, KeySource, NewCert};
    use crate::store::devices::{self, NewDevice};
    use std::cell::Cell;

    /// An in-process device: real P-256 key, really signs (`attestation::sign`).
    pub(crate) struct SimDevice {
        pub hwid: String,
        /// The identity key (PKCS#8); `None` once erased.
        pub key: Option<Vec<u8>>,
        /// Keeps the key after wiping (models a separate attestation key).
        pub retain_key: bool,
        /// The last attestation made, resent when asked to wipe again.
        pub last: Option<WipeAttestation>,
        pub counter: u64,
        /// Sign with this key instead (a forger).
        pub forge_with: Option<Vec<u8>>,
        /// Answer this nonce instead of the one sent (a replaying device).
        pub answer_nonce: Option<[u8; 32]>,
        /// Wipe, then fail to deliver the reply (pulled cable).
        pub drop_reply: bool,
        pub wipes_done: Cell<u32>,
    }

    impl SimDevice {
        pub(crate) fn new(hwid: &str, key: &rcgen::KeyPair) -> SimDevice {
            SimDevice {
                hwid: hwid.into(),
                key: Some(key.serialize_der()),
                retain_key: false,
                last: None,
                counter: 0,
                forge_with: None,
                answer_nonce: None,
                drop_reply: false,
                wipes_done: Cell::new(0),
            }
        }
    }

    impl WipeLink for SimDevice {
        fn hardware_id(&mut self) -> Result<String> {
            Ok(self.hwid.clone())
        }
        fn wipe(&mut self, nonce: [u8; 32]) -> Result<WipeAttestation> {
            let key = match (&self.key, &self.last) {
                (Some(k), _) => k.clone(),
                // Already wiped, key gone: resend the retained attestation.
                (None, Some(last)) => return Ok(last.clone()),
                (None, None) => return Err(Error::Device("device has no key".into())),
            };
            self.counter += 1;
            let mut att = WipeAttestation {
                hardware_id: self.hwid.clone(),
                nonce: self.answer_nonce.unwrap_or(nonce),
                erased: vec!["key".into(), "cert".into()],
                counter: self.counter,
                signature: vec![],
            };
            crate::attestation::sign(self.forge_with.as_deref().unwrap_or(&key), &mut att)?;
            if !self.retain_key {
                self.key = None;
            }
            self.last = Some(att.clone());
            self.wipes_done.set(self.wipes_done.get() + 1);
            if self.drop_reply {
                self.drop_reply = false;
                return Err(Error::Device(
                    "serial link closed (EIO) while reading the reply".into(),
                ));
            }
            Ok(att)
        }
    }

    fn actor() -> Actor {
        Actor {
            operator: "op".into(),
            station: "st".into(),
        }
    }

    /// A registry with device `serial` (hardware id `hwid`) holding a real certificate
    /// for `key`.
    pub(crate) fn setup(reg: &mut Store, serial: &str, hwid: &str, key: &rcgen::KeyPair) -> Device {
        let cert = rcgen::CertificateParams::new(vec![format!("{serial}.test")])
            .unwrap()
            .self_signed(key)
            .unwrap();
        let der = cert.der().to_vec();
        let info = crate::pki::cert::info_of(&der).unwrap();
        let now = now_rfc3339();
        let tx = reg.write().unwrap();
        let id = devices::insert_device(
            &tx,
            &NewDevice {
                serial: serial.into(),
                hardware_id: Some(hwid.into()),
                ..Default::default()
            },
            &now,
        )
        .unwrap();
        certs::insert_cert(
            &tx,
            &NewCert {
                device_id: id,
                ca_id: None,
                serial_hex: &info.serial_hex,
                fingerprint: &info.fingerprint,
                pubkey_sha256: &info.pubkey_sha256,
                subject: &info.subject,
                profile: "device",
                key_source: KeySource::Device,
                not_before: info.not_before,
                not_after: info.not_after,
                der: &der,
                verified_mac: None,
            },
            &now,
        )
        .unwrap();
        // Revoked before the wipe, as in a decommission: the key still counts.
        tx.test_exec(&format!(
            "UPDATE certificates SET status='revoked' WHERE device_id={id}"
        ));
        tx.commit().unwrap();
        devices::device_by_id(reg.reader(), id).unwrap().unwrap()
    }

    fn run(reg: &mut Store, dev: &Device, link: &mut dyn WipeLink) -> Result<WipeRecord> {
        attested_wipe(
            reg,
            dev,
            link,
            "test link",
            &WipeContext::default(),
            &serde_json::json!({}),
            &actor(),
            &|tx, w, now| {
                rr::finish_step(tx, dev.id, Step::Wipe.as_str(), now)?;
                let _ = w;
                Ok(())
            },
        )
    }

    fn count(reg: &Store, sql: &str) -> i64 {
        reg.test_i64(sql)
    }

    #[test]
    fn honest_device_wipe_is_verified_and_stored() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut sim = SimDevice::new("HW-1", &key);
        let w = run(&mut reg, &dev, &mut sim).unwrap();
        assert_eq!(w.kind, "attested");
        assert_eq!(w.attestation_verified, Some(true));
        let stored = rr::latest_wipe(reg.reader(), dev.id).unwrap().unwrap();
        assert_eq!(stored.nonce_hex, w.nonce_hex);
        reverify(reg.reader(), &dev, &stored).unwrap();
        assert_eq!(
            count(&reg, "SELECT COUNT(*) FROM nonces WHERE used_at IS NULL"),
            0
        );
        let st = rr::step_row(reg.reader(), dev.id, "wipe").unwrap().unwrap();
        assert_eq!(st.status, "done");
    }

    #[test]
    fn forged_signature_is_refused_and_nothing_stored() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut sim = SimDevice::new("HW-1", &key);
        sim.forge_with = Some(crate::pki::keys::generate().unwrap().serialize_der());
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        assert_eq!(count(&reg, "SELECT COUNT(*) FROM wipes"), 0);
        assert_eq!(
            count(
                &reg,
                "SELECT COUNT(*) FROM nonces WHERE used_at IS NOT NULL"
            ),
            0
        );
    }

    #[test]
    fn replayed_nonce_is_refused() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        // A nonce issued and used for this device before.
        let old = [9u8; 32];
        reg.test_exec(&format!(
            "INSERT INTO nonces (nonce_hex, device_id, purpose, issued_at, used_at) VALUES ('{}', {}, 'wipe', 't', 't')",
            hex::encode(old),
            dev.id
        ));
        let mut sim = SimDevice::new("HW-1", &key);
        sim.answer_nonce = Some(old);
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("replayed attestation"), "{e}");
        // A nonce cradle never issued is refused as well, although correctly signed.
        let mut sim = SimDevice::new("HW-1", &key);
        sim.answer_nonce = Some([3u8; 32]);
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("never issued"), "{e}");
        assert_eq!(count(&reg, "SELECT COUNT(*) FROM wipes"), 0);
    }

    #[test]
    fn wrong_device_on_the_port_stops_before_any_nonce() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut other = SimDevice::new("HW-2", &key);
        let e = run(&mut reg, &dev, &mut other).unwrap_err().to_string();
        assert!(e.contains("wrong device on the port"), "{e}");
        assert_eq!(
            other.wipes_done.get(),
            0,
            "the wrong device must not be wiped"
        );
        assert_eq!(count(&reg, "SELECT COUNT(*) FROM nonces"), 0);
    }

    #[test]
    fn reply_lost_after_wipe_then_rerun_collects_resent_attestation() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut sim = SimDevice::new("HW-1", &key);
        sim.drop_reply = true;
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("re-run"), "{e}");
        assert_eq!(sim.wipes_done.get(), 1);
        assert!(sim.key.is_none(), "the device did wipe");
        assert_eq!(count(&reg, "SELECT COUNT(*) FROM wipes"), 0);
        let st = rr::step_row(reg.reader(), dev.id, "wipe").unwrap().unwrap();
        assert_ne!(st.status, "done");
        // Second attempt: the device resends its attestation for the first nonce.
        let w = run(&mut reg, &dev, &mut sim).unwrap();
        assert_eq!(sim.wipes_done.get(), 1, "no second wipe");
        let v: serde_json::Value = serde_json::from_str(w.attestation.as_deref().unwrap()).unwrap();
        assert_eq!(v["resent_for_earlier_nonce"], true);
        assert_eq!(count(&reg, "SELECT COUNT(*) FROM nonces"), 2);
        assert_eq!(
            count(&reg, "SELECT COUNT(*) FROM nonces WHERE used_at IS NULL"),
            0
        );
        // And the stale attestation cannot be accepted a second time.
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("replayed attestation"), "{e}");
    }

    #[test]
    fn reply_lost_then_device_resigns_new_nonce_with_retained_key() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut sim = SimDevice::new("HW-1", &key);
        sim.retain_key = true;
        sim.drop_reply = true;
        assert!(run(&mut reg, &dev, &mut sim).is_err());
        let w = run(&mut reg, &dev, &mut sim).unwrap();
        let v: serde_json::Value = serde_json::from_str(w.attestation.as_deref().unwrap()).unwrap();
        assert_eq!(v["resent_for_earlier_nonce"], false);
        assert_eq!(v["counter"], 2);
        // The first, unanswered nonce stays unused: it can only ever be answered by a
        // signature of this device's key, and the step is done, so nothing asks again.
        assert_eq!(
            count(&reg, "SELECT COUNT(*) FROM nonces WHERE used_at IS NULL"),
            1
        );
    }

    #[test]
    fn device_without_key_or_attestation_cannot_prove_the_wipe() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let mut sim = SimDevice::new("HW-1", &key);
        sim.key = None;
        let e = run(&mut reg, &dev, &mut sim).unwrap_err().to_string();
        assert!(e.contains("manual wipe"), "{e}");
    }
}
