//! The provisioning station: the per-device workflow (identify, register, key, issue,
//! write, read back, lock, record) and the multi-port and watch runners.
//!
//! Registry discipline: the certificate is recorded as `unused` before any byte goes to
//! the device and only becomes `active` (with the device `provisioned`) in the same
//! transaction, after LOCK. A crash or a failure anywhere in between therefore never
//! leaves an active certificate for a device that did not get it, and a re-run either
//! starts over (device not locked) or finishes the recording (device locked with the
//! pending certificate).

mod flow;
#[cfg(test)]
mod flow_tests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rcgen::SubjectPublicKeyInfo;
use serde::Serialize;

use crate::app::identity::{check_serial, vars_for};
use crate::app::lifecycle;
use crate::device::{self, DeviceLink, DeviceProfile, LinkParams};
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::pki::issue::{issue, Issued};
use crate::pki::profile::Profile;
use crate::pki::signer::CaSigner;
use crate::store::certs::{self, CertStatus, KeySource};
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::{now_rfc3339, provision, Store, Tx};
use crate::wire;

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
    pub registry: crate::store::Location,
    pub mode: Mode,
    pub device_profile: DeviceProfile,
    pub baud: u32,
    pub timeout: Duration,
    /// nrf91: modem identity public keys by device UUID (`--nrf-identity-keys`).
    pub nrf_identity_keys: Option<std::sync::Arc<crate::device::nrf91::IdentityKeys>>,
    /// esp32: the `esp_secure_cert` partition (`--esp-partition-offset`, `--partition-table`).
    pub esp_partition: Option<crate::device::esp32::Partition>,
    /// micropython: the identity files on the board.
    pub micropython_paths: crate::device::micropython::Paths,
    /// `--config NAME`: rendered per device and written into its config place after the
    /// identity.
    pub config: Option<&'a crate::app::config::ConfigTemplate>,
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
        // A PostgreSQL client must not be dropped by the thread-local's destructor
        // (its runtime is gone by then): only SQLite connections are kept per thread.
        if let Some(r) = self.0.take().filter(|r| !r.is_pg()) {
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
        let params = LinkParams {
            baud: self.baud,
            timeout: self.timeout,
            nrf_identity_keys: self.nrf_identity_keys.clone(),
            esp_partition: self.esp_partition,
            micropython_paths: self.micropython_paths.clone(),
        };
        self.provision_with(
            &port.display().to_string(),
            || device::open(self.device_profile, port, params),
            progress,
            skip,
        )
    }

    /// One run over the link `open` gives (a port, or a pipe in unit tests).
    fn provision_with(
        &self,
        name: &str,
        open: impl FnOnce() -> std::result::Result<Box<dyn DeviceLink>, wire::WireError>,
        progress: &dyn Progress,
        skip: Option<&Mutex<HashSet<String>>>,
    ) -> PortResult {
        let start = Instant::now();
        let name = name.to_string();
        let mut res = PortResult {
            port: name.clone(),
            ..Default::default()
        };
        let mut run = Run {
            step: "open",
            ..Run::default()
        };
        progress.update(&name, "open", 0, 1);
        let outcome = match open() {
            Ok(mut link) => {
                let port = flow::Port {
                    name: &name,
                    progress,
                    skip,
                    t0: start,
                };
                let r = flow::provision(self, link.as_mut(), port, &mut res, &mut run);
                let stats = link.stats();
                res.wire_bytes = stats.wire_bytes;
                res.retries = stats.retries;
                res.resyncs = stats.resyncs;
                res.reconnects = stats.reconnects;
                r
            }
            Err(e) => Err(e.into()),
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
            Some(r) if r.path() == self.registry.path() => r,
            _ => self.registry.open()?,
        };
        Ok(RegGuard(Some(r)))
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
        ident: &device::Identity,
        serial: &str,
        port: &str,
    ) -> Result<Device> {
        let (hardware_id, model, imei) = (
            ident.hardware_id.as_str(),
            ident.model.as_str(),
            ident.imei.as_deref(),
        );
        let firmware = ident.firmware.as_str();
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
        // Every contact records the firmware the device reports (an event when it changed).
        crate::app::firmware::record_contact(
            &tx,
            id,
            firmware,
            "provision",
            port,
            self.actor,
            &now,
        )?;
        let d =
            devices::device_by_id(&tx, id)?.ok_or_else(|| Error::not_found("device vanished"))?;
        tx.commit()?;
        Ok(d)
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
