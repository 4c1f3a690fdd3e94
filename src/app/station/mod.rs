//! The provisioning station: the per-device workflow (identify, register, key, issue,
//! write, read back, lock, record) and the multi-port and watch runners.
//!
//! Registry discipline: the certificate is recorded as `unused` before any byte goes to
//! the device and only becomes `active` (with the device `provisioned`) in the same
//! transaction, after LOCK. A crash or a failure anywhere in between therefore never
//! leaves an active certificate for a device that did not get it, and a re-run either
//! starts over (device not locked) or finishes the recording (device locked with the
//! pending certificate).

mod nrf;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcgen::{PublicKeyData, SubjectPublicKeyInfo};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::app::identity::{check_serial, vars_for};
use crate::app::lifecycle;
use crate::device::DeviceProfile;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::pki::cert::sha256_hex;
use crate::pki::issue::{issue, Issued};
use crate::pki::profile::Profile;
use crate::pki::signer::CaSigner;
use crate::pki::{csr, keys};
use crate::store::certs::{self, CertStatus, KeySource};
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::{now_rfc3339, provision, Store, Tx};
use crate::wire::{self, Session, WireError, SLOT_CERT, SLOT_CHAIN, SLOT_KEY};

/// Where the device's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The device makes its key and sends a CSR; the key never leaves it
    Csr,
    /// cradle makes the key, writes it to the device, then forgets it
    Inject,
}

/// Progress reports from the workflow (the CLI draws them; the library never prints).
pub trait Progress: Sync {
    fn update(&self, _port: &str, _step: &str, _done: u64, _total: u64) {}
    fn finished(&self, _result: &PortResult) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Everything a station run needs.
pub struct Station<'a> {
    pub signer: &'a CaSigner,
    pub profile: &'a Profile,
    pub org: &'a str,
    pub actor: &'a Actor,
    pub registry: PathBuf,
    pub mode: Mode,
    pub device_profile: DeviceProfile,
    pub baud: u32,
    pub timeout: Duration,
    /// nrf91: modem identity public keys by device UUID (`--nrf-identity-keys`).
    pub nrf_identity_keys: Option<&'a crate::wire::nrf91::IdentityKeys>,
}

/// How one port's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Outcome {
    #[serde(rename = "PASS")]
    Pass,
    /// Also the state of a run that has not finished.
    #[serde(rename = "FAIL")]
    #[default]
    Fail,
    /// Watch mode: a device already done in this run.
    #[serde(rename = "SKIP")]
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PortResult {
    pub port: String,
    /// PASS, FAIL or SKIP (watch mode: a device already done in this run).
    pub result: Outcome,
    pub hardware_id: Option<String>,
    pub serial: Option<String>,
    pub cert_serial: Option<String>,
    pub fingerprint: Option<String>,
    /// The device was already provisioned and locked with its registered certificate.
    pub already_provisioned: bool,
    pub error: Option<String>,
    pub exit_code: i32,
    /// Whole run for this port, registry included.
    pub seconds: f64,
    /// From opening the port to the device's LOCK acknowledgement.
    pub link_seconds: f64,
    /// Bytes sent plus bytes received on the line.
    pub wire_bytes: u64,
    pub retries: u32,
    pub resyncs: u32,
    pub reconnects: u32,
}

impl PortResult {
    pub fn passed(&self) -> bool {
        self.result == Outcome::Pass
    }
}

/// What the workflow learned, kept for the failure record.
#[derive(Default)]
struct Run {
    device: Option<Device>,
    cert_serial: Option<String>,
    step: &'static str,
}

thread_local! {
    // One registry connection per worker thread, reused across the steps of a run.
    static CACHED: std::cell::RefCell<Option<Store>> = const { std::cell::RefCell::new(None) };
}

/// A registry borrowed from the thread's cache; handed back on drop.
pub(crate) struct RegGuard(Option<Store>);

impl std::ops::Deref for RegGuard {
    type Target = Store;
    fn deref(&self) -> &Store {
        self.0.as_ref().expect("registry present until drop")
    }
}

impl std::ops::DerefMut for RegGuard {
    fn deref_mut(&mut self) -> &mut Store {
        self.0.as_mut().expect("registry present until drop")
    }
}

impl Drop for RegGuard {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            CACHED.with(|c| *c.borrow_mut() = Some(r));
        }
    }
}

fn dev_err(msg: impl Into<String>) -> Error {
    Error::Device(msg.into())
}

impl Station<'_> {
    /// Provisions the device on one port; never panics, always returns a result.
    pub fn provision_port(&self, port: &Path, progress: &dyn Progress) -> PortResult {
        self.provision_port_skipping(port, progress, None)
    }

    /// As `provision_port`; devices whose hardware id is in `skip` are left alone (SKIP)
    /// and a device that PASSes is added to it.
    pub fn provision_port_skipping(
        &self,
        port: &Path,
        progress: &dyn Progress,
        skip: Option<&Mutex<HashSet<String>>>,
    ) -> PortResult {
        let start = Instant::now();
        let name = port.display().to_string();
        let mut res = PortResult {
            port: name.clone(),
            ..Default::default()
        };
        let mut run = Run::default();
        let outcome = match self.device_profile {
            DeviceProfile::Cradle => self.run_cradle(port, progress, &mut res, &mut run, skip),
            DeviceProfile::Nrf91 => nrf::run(self, port, progress, &mut res, &mut run, skip),
        };
        match outcome {
            Ok(true) => {
                res.result = Outcome::Pass;
                if let (Some(s), Some(h)) = (skip, &res.hardware_id) {
                    s.lock().expect("skip set").insert(h.clone());
                }
            }
            Ok(false) => res.result = Outcome::Skip,
            Err(e) => {
                res.result = Outcome::Fail;
                res.exit_code = e.exit_code();
                let msg = format!("{} (step: {})", e, run.step);
                res.error = Some(msg.clone());
                if let Some(d) = &run.device {
                    if let Err(e2) = self.record_failure(d, &name, &msg, run.cert_serial.as_deref())
                    {
                        res.error = Some(format!("{msg}; recording the failure also failed: {e2}"));
                    }
                }
            }
        }
        res.seconds = start.elapsed().as_secs_f64();
        progress.update(&name, res.result.as_str(), 1, 1);
        progress.finished(&res);
        res
    }

    /// The registry, opened once per worker thread.
    pub(crate) fn reg(&self) -> Result<RegGuard> {
        let cached = CACHED.with(|c| c.borrow_mut().take());
        let r = match cached {
            Some(r) if r.path() == self.registry => r,
            _ => Store::open(&self.registry)?,
        };
        Ok(RegGuard(Some(r)))
    }

    fn open(&self, port: &Path) -> Result<Session<wire::Port>> {
        Ok(wire::open(port, self.baud, self.timeout)?)
    }

    /// Reopens a port after a hang-up; the device may take a moment to come back.
    fn reopen(&self, port: &Path) -> Result<Session<wire::Port>> {
        let until = Instant::now() + self.timeout.max(Duration::from_secs(2));
        loop {
            std::thread::sleep(Duration::from_millis(200));
            match self.open(port) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => {}
            }
        }
    }

    fn event(
        &self,
        tx: &Tx<'_>,
        device_id: i64,
        kind: EventKind,
        details: serde_json::Value,
        now: &str,
    ) -> Result<()> {
        tx.event(kind, Some(device_id), self.actor, details, now)?;
        Ok(())
    }

    /// Looks the device up by hardware id / serial, registering it if new.
    fn lookup_or_register(
        &self,
        reg: &mut Store,
        hardware_id: &str,
        serial: &str,
        model: &str,
        imei: Option<&str>,
        port: &str,
    ) -> Result<Device> {
        check_serial(serial).map_err(|e| dev_err(format!("device serial from the device: {e}")))?;

        let now = now_rfc3339();
        let tx = reg.write()?;
        let id = match provision::find_device(&tx, hardware_id, serial)? {
            Some(d) => {
                if d.hardware_id.as_deref().is_some_and(|h| h != hardware_id) {
                    return Err(Error::conflict(format!(
                        "registry device '{}' has hardware id {}, but the device on {port} reports {hardware_id}",
                        d.serial,
                        d.hardware_id.as_deref().unwrap_or("")
                    )));
                }
                provision::fill_identity(&tx, d.id, hardware_id, model, &now)?;
                d.id
            }
            None => {
                let id = provision::register_device(&tx, serial, hardware_id, model, imei, &now)?;
                self.event(&tx, id, EventKind::DeviceRegistered, serde_json::json!({"source": "provision", "hardware_id": hardware_id, "model": model, "port": port}), &now)?;
                id
            }
        };
        let d =
            devices::device_by_id(&tx, id)?.ok_or_else(|| Error::not_found("device vanished"))?;
        tx.commit()?;
        Ok(d)
    }

    /// Issues the certificate for `spki` and records it as `unused` (pending) with a
    /// `provision.started` event.
    fn issue_pending(
        &self,
        device: &Device,
        spki_der: &[u8],
        source: KeySource,
        port: &str,
    ) -> Result<(Issued, i64)> {
        let spki = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| dev_err(format!("device public key: {e}")))?;
        let vars = vars_for(device, self.org, &self.signer.name, &self.profile.name);
        let issued = issue(
            self.signer,
            self.profile,
            &vars,
            &spki,
            time::OffsetDateTime::now_utc(),
        )?;
        let mut reg = self.reg()?;
        let cert_id = self.record_pending(&mut reg, device, &issued, source, port)?;
        Ok((issued, cert_id))
    }

    /// Issues the certificate for `spki` from the profile.
    fn issue_cert(&self, device: &Device, spki_der: &[u8]) -> Result<Issued> {
        let spki = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| dev_err(format!("device public key: {e}")))?;
        let vars = vars_for(device, self.org, &self.signer.name, &self.profile.name);
        issue(
            self.signer,
            self.profile,
            &vars,
            &spki,
            time::OffsetDateTime::now_utc(),
        )
    }

    /// Records an issued certificate as `unused` (pending) with a `provision.started` event.
    fn record_pending(
        &self,
        reg: &mut Store,
        device: &Device,
        issued: &Issued,
        source: KeySource,
        port: &str,
    ) -> Result<i64> {
        let now = now_rfc3339();
        let tx = reg.write()?;
        let cert_id = crate::app::identity::insert_issued(
            &tx,
            self.signer,
            &self.profile.name,
            device.id,
            issued,
            source,
            &now,
        )?;
        // Pending until the device has it and is locked.
        certs::set_cert_status(
            &tx,
            cert_id,
            CertStatus::Unused,
            Some("provisioning in progress"),
            &now,
        )?;
        self.event(
            &tx,
            device.id,
            EventKind::ProvisionStarted,
            serde_json::json!({
                "port": port, "mode": self.mode, "device_profile": self.device_profile,
                "profile": self.profile.name, "cert_serial": issued.info.serial_hex,
                "fingerprint": issued.info.fingerprint, "key_source": source.as_str(),
            }),
            &now,
        )?;
        tx.commit()?;
        Ok(cert_id)
    }

    /// Activates the pending certificate and moves the device to `provisioned`.
    fn finalize(
        &self,
        device_id: i64,
        cert_id: i64,
        port: &str,
        extra: serde_json::Value,
        evidence: Option<serde_json::Value>,
    ) -> Result<()> {
        let mut reg = self.reg()?;
        let now = now_rfc3339();
        let tx = reg.write()?;
        let device = devices::device_by_id(&tx, device_id)?
            .ok_or_else(|| Error::not_found("device vanished"))?;
        certs::set_cert_status(&tx, cert_id, CertStatus::Active, None, &now)?;
        if let Some(ev) = &evidence {
            certs::set_device_attestation(&tx, cert_id, ev)?;
        }
        let cert = certs::certs_for_device(&tx, device_id)?
            .into_iter()
            .find(|c| c.id == cert_id)
            .ok_or_else(|| Error::not_found("certificate vanished"))?;
        lifecycle::transition(
            &tx,
            &device,
            DeviceStatus::Provisioned,
            self.actor,
            None,
            &now,
            serde_json::json!({"cert_serial": cert.serial_hex}),
        )?;
        let mut details = serde_json::json!({"port": port, "cert_serial": cert.serial_hex, "fingerprint": cert.fingerprint, "mode": self.mode});
        if let (Some(d), serde_json::Value::Object(e)) = (details.as_object_mut(), extra) {
            d.extend(e);
        }
        if let (Some(d), Some(ev)) = (details.as_object_mut(), &evidence) {
            // The summary; the COSE itself is kept with the certificate.
            for k in ["device_uuid", "attestation"] {
                d.insert(k.into(), ev[k].clone());
            }
        }
        self.event(&tx, device_id, EventKind::ProvisionPassed, details, &now)?;
        tx.commit()?;
        Ok(())
    }

    fn record_failure(
        &self,
        device: &Device,
        port: &str,
        msg: &str,
        cert_serial: Option<&str>,
    ) -> Result<()> {
        let mut reg = self.reg()?;
        let now = now_rfc3339();
        let tx = reg.write()?;
        self.event(
            &tx,
            device.id,
            EventKind::ProvisionFailed,
            serde_json::json!({
                "port": port, "error": msg, "cert_serial": cert_serial, "mode": self.mode,
            }),
            &now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A device that is already locked: PASS if it holds its registered certificate,
    /// finish the recording if it holds our pending one, else refuse.
    fn finish_locked<T: Read + Write>(
        &self,
        s: &mut Session<T>,
        device: &Device,
        port: &str,
        res: &mut PortResult,
    ) -> Result<()> {
        let st = s.stat(SLOT_CERT)?;
        if st.len == 0 || st.len > 64 * 1024 {
            return Err(dev_err(
                "device is locked but holds no certificate; wipe it before provisioning",
            ));
        }
        let der = s.read_object(SLOT_CERT, st.len as usize)?;
        let fp = sha256_hex(&der);
        let reg = self.reg()?;
        let rec = certs::cert_by_fingerprint(reg.reader(), &fp)?;
        drop(reg);
        match rec {
            Some(r) if r.device_id == device.id => {
                res.cert_serial = Some(r.serial_hex.clone());
                res.fingerprint = Some(r.fingerprint.clone());
                match (r.status, device.status) {
                    (CertStatus::Active, DeviceStatus::Provisioned) => {
                        res.already_provisioned = true;
                        Ok(())
                    }
                    (CertStatus::Unused, DeviceStatus::Registered) => {
                        self.finalize(device.id, r.id, port, serde_json::json!({"resumed": true}), None)
                    }
                    (cs, ds) => Err(Error::conflict(format!(
                        "device {} is locked with certificate {} which is {} in the registry (device is {ds})",
                        device.serial, r.serial_hex, cs.as_str()
                    ))),
                }
            }
            _ => Err(dev_err(format!(
                "device {} is locked with a certificate (sha256 {fp}) this registry did not issue to it; wipe it before provisioning",
                device.serial
            ))),
        }
    }

    fn run_cradle(
        &self,
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
        let mut s = self.open(port)?;
        run.step = "hello";
        progress.update(&pname, "hello", 0, 1);
        let info = s.hello()?;
        res.hardware_id = Some(info.hardware_id.clone());
        if let Some(set) = skip {
            if set.lock().expect("skip set").contains(&info.hardware_id) {
                return Ok(false);
            }
        }
        let serial = info
            .serial
            .clone()
            .unwrap_or_else(|| info.hardware_id.clone());
        res.serial = Some(serial.clone());
        run.step = "register";
        let mut reg = self.reg()?;
        // In CSR mode the device makes its key while the registry is searched (registry
        // work is the largest host-side cost at high line rates). Re-keying before the
        // registry check is harmless: an unlocked device holds no burned identity.
        let mut early_keygen = None;
        let device = if self.mode == Mode::Csr && !info.locked() {
            progress.update(&pname, "keygen", 0, 1);
            let (d, kg) = std::thread::scope(|sc| {
                let h = sc.spawn(|| {
                    self.lookup_or_register(
                        &mut reg,
                        &info.hardware_id,
                        &serial,
                        &info.model,
                        None,
                        &pname,
                    )
                });
                let kg = s.keygen();
                (
                    h.join()
                        .unwrap_or_else(|_| Err(dev_err("registry worker panicked"))),
                    kg,
                )
            });
            early_keygen = Some(kg);
            d?
        } else {
            self.lookup_or_register(
                &mut reg,
                &info.hardware_id,
                &serial,
                &info.model,
                None,
                &pname,
            )?
        };
        drop(reg);
        res.serial = Some(device.serial.clone());
        run.device = Some(device.clone());
        let stats_of = |s: &Session<wire::Port>, res: &mut PortResult| {
            res.wire_bytes += s.stats.tx_bytes + s.stats.rx_bytes;
            res.retries += s.stats.retries;
            res.resyncs += s.stats.resyncs;
        };
        if info.locked() {
            run.step = "check locked device";
            let r = self.finish_locked(&mut s, &device, &pname, res);
            res.link_seconds = t0.elapsed().as_secs_f64();
            stats_of(&s, res);
            return r.map(|_| true);
        }
        if device.status != DeviceStatus::Registered {
            return Err(Error::conflict(format!(
                "device {} is {} in the registry but the device is not locked (wiped or replaced?); provisioning needs a registered device",
                device.serial, device.status
            )));
        }
        let mut reconnects = 0;
        // The key: made on the device (CSR) or here (inject).
        let (spki, mut key) = match self.mode {
            Mode::Csr => {
                run.step = "keygen";
                progress.update(&pname, "keygen", 0, 1);
                let (public, csr_der) = loop {
                    let attempt = match early_keygen.take() {
                        Some(r) => r,
                        None => s.keygen(),
                    };
                    match attempt {
                        Ok(v) => break v,
                        Err(e) if e.is_link_problem() && reconnects < 3 => {
                            reconnects += 1;
                            res.reconnects += 1;
                            stats_of(&s, res);
                            drop(s);
                            progress.update(&pname, "reconnect", 0, 1);
                            s = self.reopen(port)?;
                            if s.hello()?.hardware_id != info.hardware_id {
                                return Err(dev_err(format!(
                                    "after reconnecting, a different device answers on {pname}"
                                )));
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                let checked = csr::check_csr(&csr_der)
                    .map_err(|e| dev_err(format!("device sent an unusable CSR: {e}")))?;
                if checked.spki_der != public {
                    return Err(dev_err(
                        "the device's CSR is for a different key than the public key it reported; refusing to issue",
                    ));
                }
                (public, None)
            }
            Mode::Inject => {
                run.step = "keygen";
                let kp = keys::generate()?;
                let der = Zeroizing::new(kp.serialize_der());
                (kp.subject_public_key_info(), Some(der))
            }
        };
        run.step = "issue";
        progress.update(&pname, "issue", 0, 1);
        let source = if self.mode == Mode::Csr {
            KeySource::Device
        } else {
            KeySource::Host
        };
        let issued = self.issue_cert(&device, &spki)?;
        run.cert_serial = Some(issued.info.serial_hex.clone());
        res.cert_serial = Some(issued.info.serial_hex.clone());
        res.fingerprint = Some(issued.info.fingerprint.clone());
        let chain: Vec<u8> = self.signer.chain_der.concat();
        let total = (key.as_ref().map_or(0, |k| k.len()) + issued.der.len() + chain.len()) as u64;

        // The pending record is written while the certificate goes over the line; it is
        // committed before LOCK, so a device is never locked with an unrecorded certificate.
        let mut reg = self.reg()?;
        let ctx = Reconnect {
            port,
            pname: &pname,
            hardware_id: &info.hardware_id,
            spki: (self.mode == Mode::Csr).then_some(&spki[..]),
            progress,
        };
        let (s_after, cert_id) = std::thread::scope(|sc| -> Result<(Session<wire::Port>, i64)> {
            let recorder =
                sc.spawn(|| self.record_pending(&mut reg, &device, &issued, source, &pname));
            let written = self.with_reconnects(s, &ctx, res, &mut reconnects, |s| {
                write_and_verify(
                    s,
                    &mut key,
                    &issued.der,
                    &chain,
                    total,
                    &pname,
                    progress,
                    run,
                )
            });
            let cert_id = recorder
                .join()
                .unwrap_or_else(|_| Err(dev_err("registry worker panicked")))?;
            let (s, ()) = written?;
            run.step = "lock";
            progress.update(&pname, "lock", total, total);
            let (s, ()) = self.with_reconnects(s, &ctx, res, &mut reconnects, |s| s.lock())?;
            Ok((s, cert_id))
        })?;
        drop(reg);
        let s = s_after;
        res.link_seconds = t0.elapsed().as_secs_f64();
        stats_of(&s, res);
        drop(s);
        run.step = "record";
        progress.update(&pname, "record", total, total);
        self.finalize(device.id, cert_id, &pname, serde_json::json!({
            "wire_bytes": res.wire_bytes, "link_seconds": res.link_seconds, "reconnects": res.reconnects,
        }), None)?;
        Ok(true)
    }

    /// Runs `op`, reopening the port and retrying after a hang-up or a timeout (the
    /// operations are resumable). Returns the session that finally worked.
    fn with_reconnects<T>(
        &self,
        mut s: Session<wire::Port>,
        c: &Reconnect<'_>,
        res: &mut PortResult,
        reconnects: &mut u32,
        mut op: impl FnMut(&mut Session<wire::Port>) -> std::result::Result<T, WireError>,
    ) -> Result<(Session<wire::Port>, T)> {
        loop {
            match op(&mut s) {
                Ok(v) => return Ok((s, v)),
                Err(e) if e.is_link_problem() && *reconnects < 3 => {
                    *reconnects += 1;
                    res.reconnects += 1;
                    res.wire_bytes += s.stats.tx_bytes + s.stats.rx_bytes;
                    res.retries += s.stats.retries;
                    res.resyncs += s.stats.resyncs;
                    // Close first: the port is opened exclusively.
                    drop(s);
                    c.progress.update(c.pname, "reconnect", 0, 1);
                    s = self.reopen(c.port)?;
                    let again = s.hello()?;
                    if again.hardware_id != c.hardware_id {
                        return Err(dev_err(format!(
                            "after reconnecting, a different device ({}) answers on {}",
                            again.hardware_id, c.pname
                        )));
                    }
                    if c.spki.is_some() && again.public_key.as_deref() != c.spki {
                        return Err(dev_err(
                            "after reconnecting, the device no longer holds the key that was certified",
                        ));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Provisions every port in parallel (one thread each).
    pub fn provision_all(&self, ports: &[PathBuf], progress: &dyn Progress) -> Vec<PortResult> {
        std::thread::scope(|sc| {
            let handles: Vec<_> = ports
                .iter()
                .map(|p| sc.spawn(move || self.provision_port(p, progress)))
                .collect();
            handles
                .into_iter()
                .zip(ports)
                .map(|(h, p)| {
                    h.join().unwrap_or_else(|_| PortResult {
                        port: p.display().to_string(),
                        result: Outcome::Fail,
                        error: Some("internal error: worker panicked".into()),
                        exit_code: 2,
                        ..Default::default()
                    })
                })
                .collect()
        })
    }

    /// Station mode: polls `pattern`, provisions each device as its port appears, never
    /// the same device twice, until `stop` is set or `limit` devices have passed.
    pub fn watch(
        &self,
        pattern: &str,
        progress: &dyn Progress,
        stop: &AtomicBool,
        limit: Option<usize>,
    ) -> Vec<PortResult> {
        let done_ids: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let results: Mutex<Vec<PortResult>> = Mutex::new(Vec::new());
        let busy: Mutex<HashSet<PathBuf>> = Mutex::new(HashSet::new());
        std::thread::scope(|sc| {
            // A port is handled once while it stays present; it is forgotten when it
            // disappears, so a new device on the same fixture is picked up.
            let mut seen: HashSet<PathBuf> = HashSet::new();
            loop {
                let passed = results
                    .lock()
                    .expect("results")
                    .iter()
                    .filter(|r| r.passed())
                    .count();
                if stop.load(Ordering::Relaxed) || limit.is_some_and(|l| passed >= l) {
                    break;
                }
                let now: Vec<PathBuf> = glob(pattern);
                let present: HashSet<PathBuf> = now.iter().cloned().collect();
                {
                    let b = busy.lock().expect("busy");
                    seen.retain(|p| present.contains(p) || b.contains(p));
                }
                for p in now {
                    if seen.insert(p.clone()) {
                        busy.lock().expect("busy").insert(p.clone());
                        let (done_ids, results, busy) = (&done_ids, &results, &busy);
                        sc.spawn(move || {
                            let r = self.provision_port_skipping(&p, progress, Some(done_ids));
                            if r.result != Outcome::Skip {
                                results.lock().expect("results").push(r);
                            }
                            busy.lock().expect("busy").remove(&p);
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        results.into_inner().expect("results")
    }
}

#[allow(clippy::too_many_arguments)]
fn write_and_verify<T: Read + Write>(
    s: &mut Session<T>,
    key: &mut Option<Zeroizing<Vec<u8>>>,
    cert: &[u8],
    chain: &[u8],
    total: u64,
    pname: &str,
    progress: &dyn Progress,
    run: &mut Run,
) -> std::result::Result<(), WireError> {
    let mut base = 0u64;
    if let Some(k) = key.as_ref() {
        run.step = "write key";
        s.write_object(SLOT_KEY, k, &mut |d, _| {
            progress.update(pname, "write key", d, total)
        })?;
        base += k.len() as u64;
        // The device has it; the host forgets it.
        *key = None;
    }
    run.step = "write cert";
    s.write_object(SLOT_CERT, cert, &mut |d, _| {
        progress.update(pname, "write cert", base + d, total)
    })?;
    base += cert.len() as u64;
    run.step = "write chain";
    s.write_object(SLOT_CHAIN, chain, &mut |d, _| {
        progress.update(pname, "write chain", base + d, total)
    })?;
    run.step = "read back";
    progress.update(pname, "read back", total, total);
    s.verify_objects(&[(SLOT_CERT, cert), (SLOT_CHAIN, chain)])
}

/// What a reconnect must check: the same device, still holding the certified key.
struct Reconnect<'a> {
    port: &'a Path,
    pname: &'a str,
    hardware_id: &'a str,
    spki: Option<&'a [u8]>,
    progress: &'a dyn Progress,
}

/// Expands a path pattern whose last component may hold `*` and `?` (sorted; hidden
/// entries only when the pattern itself starts with a dot).
pub fn glob(pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (dir, pat) = match (p.parent(), p.file_name()) {
        (Some(d), Some(f)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            f.to_string_lossy().to_string(),
        ),
        _ => return vec![],
    };
    if !pat.contains(['*', '?']) {
        return if p.exists() {
            vec![p.to_path_buf()]
        } else {
            vec![]
        };
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    ((pat.starts_with('.') || !name.starts_with('.')) && wildcard(&pat, &name))
                        .then(|| dir.join(&name))
                })
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn wildcard(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("cradle*", "cradle0"));
        assert!(wildcard("ttyUSB?", "ttyUSB3"));
        assert!(!wildcard("ttyUSB?", "ttyUSB10"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("a*b", "ac"));
    }
}
