//! The provisioning flow over the in-memory pipe: both device families, both key modes,
//! a device that fails mid-write and the re-run that finishes, a device already done.
//! Real registry (a temp SQLite file), real CA, the simulator's protocol logic.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::device::cradle::CradleLink;
use crate::device::nrf91::NrfLink;
use crate::device::testing::serve;
use crate::model::{CaRole, NewCa};
use crate::pki::profile::Profile;
use crate::pki::signer::{CaKey, CaSigner};
use crate::pki::testing::{audit_key, ca, chain_der, issuing_key};
use crate::sim::device::DeviceState;
use crate::sim::{CradleResponder, Device as SimDevice, Faults, Responder};
use crate::store::cas;
use crate::wire::nrf91::NrfSession;

struct Fixture {
    _dir: tempfile::TempDir,
    registry: PathBuf,
    signer: CaSigner,
    profile: Profile,
    actor: Actor,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.db");
    let mut store = Store::create(&registry).unwrap();
    let m = &ca().material;
    let info = crate::pki::cert::info_of(&m.issuing_der).unwrap();
    let tx = store.write().unwrap();
    let id = cas::insert_ca(
        &tx,
        &NewCa {
            name: "Test",
            role: CaRole::Issuing,
            subject: &info.subject,
            fingerprint: &info.fingerprint,
            ski: None,
            der: &m.issuing_der,
            not_before: info.not_before,
            not_after: info.not_after,
            key_file: None,
        },
        &now_rfc3339(),
    )
    .unwrap();
    tx.commit().unwrap();
    let signer = CaSigner::new(
        id,
        "Test",
        m.issuing_der.clone(),
        chain_der(m),
        CaKey::File(issuing_key(m)),
        audit_key(),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        registry,
        signer,
        profile: Profile::load("device", None).unwrap(),
        actor: Actor {
            operator: "tester".into(),
            station: "unit".into(),
        },
    }
}

impl Fixture {
    fn station(&self, mode: Mode, family: DeviceProfile) -> Station<'_> {
        Station {
            signer: &self.signer,
            profile: &self.profile,
            org: "ACME",
            actor: &self.actor,
            registry: crate::store::Location::File(self.registry.clone()),
            mode,
            device_profile: family,
            baud: 1_000_000,
            timeout: Duration::from_millis(300),
            nrf_identity_keys: None,
            esp_partition: None,
            micropython_paths: Default::default(),
            config: None,
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.registry).unwrap()
    }

    /// (device status, statuses of its certificates, oldest first)
    fn state_of(&self, serial: &str) -> (DeviceStatus, Vec<CertStatus>) {
        let store = self.store();
        let d = devices::device_by_serial(store.reader(), serial)
            .unwrap()
            .unwrap();
        let certs = certs::certs_for_device(store.reader(), d.id)
            .unwrap()
            .into_iter()
            .map(|c| c.status)
            .collect();
        (d.status, certs)
    }

    /// Events of the device with `serial`, oldest first.
    fn events_of(&self, serial: &str) -> Vec<crate::store::Event> {
        let store = self.store();
        let d = devices::device_by_serial(store.reader(), serial)
            .unwrap()
            .unwrap();
        crate::store::events::events_for_device(store.reader(), d.id).unwrap()
    }

    fn kinds_of(&self, serial: &str) -> Vec<String> {
        self.events_of(serial).into_iter().map(|e| e.kind).collect()
    }
}

fn cradle_device(hwid: &str, faults: Faults) -> Box<dyn Responder> {
    Box::new(CradleResponder::new(SimDevice::new(
        DeviceState::new(hwid, "pipe"),
        None,
        faults,
    )))
}

/// One run of the flow over a pipe to `dev`; returns the result and the device.
fn run(st: &Station<'_>, dev: Box<dyn Responder>) -> (PortResult, Box<dyn Responder>) {
    let (host, h) = serve(dev);
    let family = st.device_profile;
    let res = st.provision_with(
        "pipe",
        || {
            Ok(match family {
                DeviceProfile::Cradle => Box::new(CradleLink::over(
                    Session::new(host, st.baud, st.timeout),
                    None,
                    "pipe".into(),
                )) as Box<dyn DeviceLink>,
                DeviceProfile::Nrf91 => Box::new(NrfLink::over(
                    NrfSession::new(host, st.baud, st.timeout),
                    None,
                )),
                DeviceProfile::Esp32 => Box::new(crate::device::esp32::Esp32Link::over(
                    crate::wire::esp_rom::EspSession::new(host, st.baud, st.timeout),
                    Default::default(),
                )),
                DeviceProfile::Micropython => {
                    Box::new(crate::device::micropython::MicropythonLink::over(
                        crate::wire::raw_repl::RawRepl::new(host, st.baud, st.timeout),
                        Default::default(),
                    ))
                }
            })
        },
        &NoProgress,
        None,
    );
    (res, h.join().unwrap())
}

use crate::wire::Session;

fn held_cert(dev: &mut Box<dyn Responder>) -> Vec<u8> {
    dev.device().state.slots.get("cert").unwrap().data.clone()
}

#[test]
fn csr_and_inject_runs_burn_seal_and_record_one_active_certificate() {
    let f = fixture();
    for (mode, hwid) in [(Mode::Csr, "PIPE-CSR"), (Mode::Inject, "PIPE-INJ")] {
        let st = f.station(mode, DeviceProfile::Cradle);
        let (res, mut dev) = run(&st, cradle_device(hwid, Faults::default()));
        assert_eq!(res.result, Outcome::Pass, "{mode:?}: {:?}", res.error);
        assert!(res.wire_bytes > 1000, "{res:?}");
        assert!(dev.device().state.locked);
        let (status, certs) = f.state_of(hwid);
        assert_eq!(status, DeviceStatus::Provisioned);
        assert_eq!(certs, vec![CertStatus::Active]);
        // The device holds exactly the recorded certificate, and in inject mode the key.
        let store = f.store();
        let rec = certs::cert_by_fingerprint(store.reader(), res.fingerprint.as_deref().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(held_cert(&mut dev), rec.der);
        assert_eq!(
            rec.key_source,
            if mode == Mode::Csr {
                KeySource::Device
            } else {
                KeySource::Host
            }
            .as_str()
        );
        let key_slot = dev.device().state.slots.get("key").map(|s| s.data.len());
        assert_eq!(key_slot.is_some_and(|n| n > 0), mode == Mode::Inject);
    }
    for hwid in ["PIPE-CSR", "PIPE-INJ"] {
        let kinds = f.kinds_of(hwid);
        assert_eq!(
            kinds,
            [
                "device.registered",
                "firmware.reported",
                "provision.started",
                "device.state",
                "provision.passed"
            ],
            "{hwid}"
        );
    }
}

#[test]
fn a_device_that_fails_mid_write_holds_no_active_certificate_and_a_rerun_finishes() {
    let f = fixture();
    let st = f.station(Mode::Csr, DeviceProfile::Cradle);
    let faults = Faults {
        // The line dies on the second WRITE (the certificate is part-written).
        disconnect_after: Some(("write".into(), 2)),
        ..Faults::default()
    };
    let (res, mut dev) = run(&st, cradle_device("PIPE-CUT", faults));
    assert_eq!(res.result, Outcome::Fail);
    let err = res.error.clone().unwrap();
    assert!(err.contains("step: write"), "{err}");
    assert!(res.wire_bytes > 0, "a FAIL still reports its traffic");
    assert!(!dev.device().state.locked);
    let (status, certs) = f.state_of("PIPE-CUT");
    assert_eq!(status, DeviceStatus::Registered);
    assert_eq!(certs, vec![CertStatus::Unused]);
    assert!(f
        .kinds_of("PIPE-CUT")
        .contains(&"provision.failed".to_string()));

    // Same device, line repaired: the re-run finishes (a new key and certificate).
    dev.device().faults = Faults::default();
    let (res, mut dev) = run(&st, dev);
    assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
    assert!(dev.device().state.locked);
    let (status, certs) = f.state_of("PIPE-CUT");
    assert_eq!(status, DeviceStatus::Provisioned);
    assert_eq!(certs, vec![CertStatus::Unused, CertStatus::Active]);
    let _ = held_cert(&mut dev);
}

#[test]
fn a_device_sealed_with_its_pending_certificate_is_recorded_and_then_already_done() {
    let f = fixture();
    let st = f.station(Mode::Csr, DeviceProfile::Cradle);
    // The device locks, then the line dies before the host hears it: the registry still
    // says `unused` while the device is sealed with that certificate.
    let faults = Faults {
        disconnect_after: Some(("lock".into(), 1)),
        ..Faults::default()
    };
    let (res, mut dev) = run(&st, cradle_device("PIPE-LOCK", faults));
    assert_eq!(res.result, Outcome::Fail, "{res:?}");
    assert!(dev.device().state.locked);
    assert_eq!(f.state_of("PIPE-LOCK").1, vec![CertStatus::Unused]);

    let (res, dev) = run(&st, dev);
    assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
    assert!(!res.already_provisioned);
    assert_eq!(
        f.state_of("PIPE-LOCK"),
        (DeviceStatus::Provisioned, vec![CertStatus::Active])
    );

    let (res, _) = run(&st, dev);
    assert_eq!(res.result, Outcome::Pass);
    assert!(res.already_provisioned);
    assert_eq!(f.state_of("PIPE-LOCK").1, vec![CertStatus::Active]);
}

#[test]
fn a_sealed_device_with_a_certificate_we_did_not_issue_is_refused() {
    let f = fixture();
    let st = f.station(Mode::Csr, DeviceProfile::Cradle);
    let mut dev = cradle_device("PIPE-ALIEN", Faults::default());
    {
        let s = &mut dev.device().state;
        s.locked = true;
        s.slots.entry("cert".into()).or_default().data = b"not ours".to_vec();
    }
    let (res, _) = run(&st, dev);
    assert_eq!(res.result, Outcome::Fail);
    assert!(
        res.error.as_deref().unwrap().contains("did not issue"),
        "{res:?}"
    );
    assert_eq!(f.state_of("PIPE-ALIEN"), (DeviceStatus::Registered, vec![]));
}

#[test]
fn an_nrf91_modem_is_burned_verified_and_recorded_without_a_seal() {
    let f = fixture();
    for mode in [Mode::Csr, Mode::Inject] {
        let st = f.station(mode, DeviceProfile::Nrf91);
        let imei = if mode == Mode::Csr {
            "352656100000001"
        } else {
            "352656100000002"
        };
        let dev: Box<dyn Responder> = Box::new(crate::sim::nrf91::NrfResponder::new(
            SimDevice::new(DeviceState::new(imei, "nRF9160"), None, Faults::default()),
        ));
        let (res, dev) = run(&st, dev);
        assert_eq!(res.result, Outcome::Pass, "{mode:?}: {:?}", res.error);
        assert_eq!(
            f.state_of(imei),
            (DeviceStatus::Provisioned, vec![CertStatus::Active])
        );
        // Again: the modem lists the active certificate, so it is already done.
        let (res, _) = run(&st, dev);
        assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
        assert!(res.already_provisioned);
    }
    for imei in ["352656100000001", "352656100000002"] {
        let passed: Vec<_> = f
            .events_of(imei)
            .into_iter()
            .filter(|e| e.kind == "provision.passed")
            .collect();
        assert_eq!(passed.len(), 1);
        let d = &passed[0].details;
        assert_eq!(d["device_profile"], "nrf91", "{d}");
        assert_eq!(d["sec_tag"], crate::device::nrf91::SEC_TAG, "{d}");
        assert!(d["wire_bytes"].as_u64().unwrap() > 0, "{d}");
        // CSR mode keeps Nordic's attestation; without identity keys it is unverified.
        let csr = imei.ends_with('1');
        assert_eq!(d["attestation"] == "unverified", csr, "{d}");
        assert_eq!(d["device_uuid"].is_string(), csr, "{d}");
    }
}

fn esp32(mac: &str, faults: Faults) -> Box<dyn Responder> {
    Box::new(crate::sim::esp32::Esp32Responder::new(SimDevice::new(
        DeviceState::new(mac, "esp32"),
        None,
        faults,
    )))
}

#[test]
fn an_esp32_is_written_checked_by_its_flash_md5_and_recorded() {
    let f = fixture();
    let st = f.station(Mode::Inject, DeviceProfile::Esp32);
    // A bad flash cell: the chip's MD5 disagrees even after a rewrite, so no PASS.
    let faults = Faults {
        stuck_bit: true,
        ..Faults::default()
    };
    let (res, dev) = run(&st, esp32("24:0a:c4:00:00:01", faults));
    assert_eq!(res.result, Outcome::Fail);
    assert!(
        res.error.as_deref().unwrap().contains("flash MD5"),
        "{res:?}"
    );
    assert_eq!(
        f.state_of("24:0a:c4:00:00:01"),
        (DeviceStatus::Registered, vec![CertStatus::Unused])
    );
    // The same board once its flash is sound: the re-run erases, writes and passes.
    let mut dev = dev;
    dev.device().faults.stuck_bit = false;
    let (res, dev) = run(&st, dev);
    assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
    assert_eq!(
        f.state_of("24:0a:c4:00:00:01"),
        (
            DeviceStatus::Provisioned,
            vec![CertStatus::Unused, CertStatus::Active]
        )
    );
    // Again: the chip's MD5 of the certificate entry matches, so it is already done.
    let (res, _) = run(&st, dev);
    assert!(res.already_provisioned, "{res:?}");
    let passed: Vec<_> = f
        .events_of("24:0a:c4:00:00:01")
        .into_iter()
        .filter(|e| e.kind == "provision.passed")
        .collect();
    assert_eq!(passed.len(), 1);
    let d = &passed[0].details;
    assert_eq!(d["device_profile"], "esp32", "{d}");
    assert_eq!(d["esp_secure_cert_offset"], "0xd000", "{d}");
    // Nothing derived from the key is recorded (the image's MD5 covers the key).
    assert!(d.get("flash_md5").is_none(), "{d}");

    // CSR mode: the ROM cannot make keys (the CLI refuses it before; the link too).
    let st = f.station(Mode::Csr, DeviceProfile::Esp32);
    let (res, _) = run(&st, esp32("24:0a:c4:00:00:02", Faults::default()));
    assert_eq!(res.result, Outcome::Fail);
    assert!(
        res.error.as_deref().unwrap().contains("cannot make keys"),
        "{res:?}"
    );
}

fn micropython_board(hwid: &str, model: &str, faults: Faults) -> Box<dyn Responder> {
    Box::new(crate::sim::micropython::MicropythonResponder::new(
        SimDevice::new(DeviceState::new(hwid, model), None, faults),
    ))
}

#[test]
fn a_micropython_board_gets_verified_files_then_counts_as_done() {
    let f = fixture();
    let st = f.station(Mode::Inject, DeviceProfile::Micropython);
    let hwid = "e6614103e7a1b2c3";
    let (res, mut dev) = run(&st, micropython_board(hwid, "Pico", Faults::default()));
    assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
    assert_eq!(
        f.state_of(hwid),
        (DeviceStatus::Provisioned, vec![CertStatus::Active])
    );
    let fs = &dev.device().state.micropython;
    for p in ["/certs/device.key", "/certs/device.crt", "/certs/chain.pem"] {
        assert!(fs.files.contains_key(p), "{p} missing: {fs:?}");
    }
    let (res, _) = run(&st, dev);
    assert_eq!(res.result, Outcome::Pass, "{:?}", res.error);
    assert!(res.already_provisioned);
    // CSR mode cannot work on a board that makes no certifiable key: FAIL, nothing issued.
    let st = f.station(Mode::Csr, DeviceProfile::Micropython);
    let (res, _) = run(
        &st,
        micropython_board("0102030405060708", "Pico", Faults::default()),
    );
    assert_eq!(res.result, Outcome::Fail);
    assert!(
        res.error.as_deref().unwrap().contains("--mode inject"),
        "{res:?}"
    );
    assert_eq!(
        f.state_of("0102030405060708"),
        (DeviceStatus::Registered, vec![])
    );
}

#[test]
fn a_micropython_board_with_unprintable_strings_is_refused() {
    let f = fixture();
    let st = f.station(Mode::Inject, DeviceProfile::Micropython);
    let (res, _) = run(
        &st,
        micropython_board("e6614103e7a1b2c4", "evil\u{1b}[2J", Faults::default()),
    );
    assert_eq!(res.result, Outcome::Fail);
    assert!(
        res.error
            .as_deref()
            .unwrap()
            .contains("not a short printable string"),
        "{res:?}"
    );
    // An OSError while writing is final: FAIL with the board's own words, cert unused.
    let faults = Faults {
        traceback: true,
        ..Faults::default()
    };
    let (res, _) = run(&st, micropython_board("e6614103e7a1b2c5", "Pico", faults));
    assert_eq!(res.result, Outcome::Fail);
    assert!(res.error.as_deref().unwrap().contains("ENOSPC"), "{res:?}");
    assert_eq!(
        f.state_of("e6614103e7a1b2c5"),
        (DeviceStatus::Registered, vec![CertStatus::Unused])
    );
}
