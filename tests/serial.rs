//! Serial provisioning end to end: `cradle sim` on real pseudo-terminals, `cradle provision`
//! against it, every issued certificate checked with openssl, the registry checked row by row.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{openssl, q, Env, Sim, SIM_BAUD as BAUD};

fn provision(
    env: &Env,
    ports: &[&str],
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    common::provision_json(env, ports, extra)
}

/// The certificate a simulated device holds, from its state file.
fn device_cert(state: &Path) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    hex::decode(v["slots"]["cert"]["data"].as_str().expect("cert slot")).unwrap()
}

/// A contact time no run writes.
const CONTACT_MARK: &str = "2000-01-01T00:00:00Z";

/// The registry dump with every recorded contact time set to [`CONTACT_MARK`]: a re-run
/// records its contact (same firmware: no event), and must write nothing else.
fn dump_but_contact_times(env: &Env) -> String {
    env.sql(&format!(
        "UPDATE devices SET last_contact_at = '{CONTACT_MARK}' WHERE last_contact_at IS NOT NULL"
    ));
    env.dump()
}

fn device_json(state: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap()
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for c in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(c).unwrap());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// openssl verify -CAfile root -untrusted issuing.
fn openssl_verify(env: &Env, der: &[u8], name: &str) {
    let f = env.path(&format!("{name}.pem"));
    std::fs::write(&f, pem(der)).unwrap();
    let ca = env.home.join("ca");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        ca.join("root.pem").to_str().unwrap(),
        "-untrusted",
        ca.join("issuing.pem").to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "openssl verify: {out}");
}

/// The public key (PEM) of a certificate, and of the device's own key, via openssl.
fn same_public_key(env: &Env, cert_der: &[u8], key_pkcs8_der: &[u8]) -> bool {
    let c = env.path("pk-cert.pem");
    let k = env.path("pk-key.der");
    std::fs::write(&c, pem(cert_der)).unwrap();
    std::fs::write(&k, key_pkcs8_der).unwrap();
    let (ok1, a) = openssl(&["x509", "-in", c.to_str().unwrap(), "-noout", "-pubkey"]);
    let (ok2, b) = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        k.to_str().unwrap(),
        "-pubout",
    ]);
    ok1 && ok2 && a == b
}

/// The invariants every run must keep, pass or fail: a device is `provisioned` exactly
/// when it has one active certificate, and that certificate is the one the device holds
/// (if the device is locked).
fn check_invariants(env: &Env, hwid: &str, state: Option<&Path>) {
    let status = q(
        env,
        &format!("SELECT status FROM devices WHERE hardware_id='{hwid}'"),
    );
    let active = q(env, &format!(
        "SELECT count(*) FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{hwid}' AND c.status='active'"
    ));
    if status == "provisioned" {
        assert_eq!(
            active, "1",
            "provisioned device {hwid} must have exactly one active cert"
        );
        if let Some(s) = state {
            let dev = device_json(s);
            assert_eq!(dev["locked"], true, "provisioned device must be locked");
            let fp = sha256_hex(&device_cert(s));
            let db_fp = q(env, &format!(
                "SELECT c.fingerprint FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{hwid}' AND c.status='active'"
            ));
            assert_eq!(fp, db_fp, "active cert must be the one on the device");
        }
    } else {
        assert_eq!(
            active, "0",
            "device {hwid} is {status:?} but has an active certificate"
        );
    }
    // Every certificate the station recorded carries its verification mark.
    let unmarked = q(env, &format!(
        "SELECT count(*) FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{hwid}' AND (c.verified_mac IS NULL OR length(c.verified_mac) <> 32)"
    ));
    assert_eq!(unmarked, "0", "certificates of {hwid} without a mark");
    // The device stays readable through the CLI whatever happened.
    let serial = q(
        env,
        &format!("SELECT serial FROM devices WHERE hardware_id='{hwid}'"),
    );
    if !serial.is_empty() {
        let v = env.json(&["identity", "show", &serial]);
        assert!(!v.is_null());
    }
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

fn events(env: &Env, hwid: &str) -> Vec<String> {
    q(env, &format!(
        "SELECT e.kind FROM events e JOIN devices d ON d.id=e.device_id WHERE d.hardware_id='{hwid}' ORDER BY e.id"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn csr_mode_single_device_end_to_end() {
    let env = Env::with_ca();
    let state = env.path("dut.json");
    let link = env.path("dev/dut");
    let sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-CSR-1",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        sim.paths[0],
        "the link points at the printed pty"
    );
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let r = &v[0];
    assert_eq!(r["result"], "PASS");
    assert_eq!(r["hardware_id"], "HW-CSR-1");
    assert_eq!(r["serial"], "HW-CSR-1");
    assert_eq!(r["already_provisioned"], false);

    // Registry: device provisioned, one active device-key certificate, events with station and operator.
    assert_eq!(
        q(&env, "SELECT serial, status, model FROM devices"),
        "HW-CSR-1|provisioned|sim-1"
    );
    assert_eq!(
        q(
            &env,
            "SELECT status, key_source, serial_hex FROM certificates"
        ),
        format!("active|device|{}", r["cert_serial"].as_str().unwrap())
    );
    let ev = events(&env, "HW-CSR-1");
    for k in [
        "device.registered",
        "provision.started",
        "device.state",
        "provision.passed",
    ] {
        assert!(ev.contains(&k.to_string()), "missing {k} in {ev:?}");
    }
    assert_eq!(
        q(
            &env,
            "SELECT DISTINCT station || '/' || actor FROM events WHERE kind LIKE 'provision.%'"
        ),
        "test-station/tester"
    );

    // The device holds the certificate; it chains to our CA; its key is the device's own.
    let cert = device_cert(&state);
    assert_eq!(sha256_hex(&cert), r["fingerprint"].as_str().unwrap());
    openssl_verify(&env, &cert, "csr");
    let dev = device_json(&state);
    assert_eq!(dev["locked"], true);
    let key = hex::decode(dev["key"].as_str().unwrap()).unwrap();
    assert!(same_public_key(&env, &cert, &key));
    check_invariants(&env, "HW-CSR-1", Some(&state));
    // The audit accepts the provisioned certificate on its mark.
    let v = env.json(&["audit", "--check", "cert-not-chained"]);
    assert_eq!(v["summary"]["marks_accepted"], 1, "{v}");
    assert_eq!(v["summary"]["signatures_verified"], 0, "{v}");

    // Idempotent: a re-run is a PASS without issuing anything new; it only records the
    // contact (same firmware: no event).
    let before = dump_but_contact_times(&env);
    let (code, v, _) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v[0]["already_provisioned"], true);
    assert_eq!(v[0]["cert_serial"], r["cert_serial"]);
    assert!(q(&env, "SELECT last_contact_at FROM devices").as_str() > CONTACT_MARK);
    assert_eq!(
        dump_but_contact_times(&env),
        before,
        "re-run on a provisioned device must write nothing but the contact time"
    );

    // A restarted simulator keeps its identity (state file): still already provisioned.
    drop(sim);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "sim must remove its symlink on SIGTERM"
    );
    let _sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let (code, v, _) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v[0]["hardware_id"], "HW-CSR-1");
    assert_eq!(v[0]["already_provisioned"], true);
}

#[test]
fn inject_mode_single_device() {
    let env = Env::with_ca();
    let state = env.path("inj.json");
    let link = env.path("dev/inj");
    let _sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-INJ-1",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &["--mode", "inject"]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert_eq!(
        q(&env, "SELECT status, key_source FROM certificates"),
        "active|host"
    );
    let dev = device_json(&state);
    let key = hex::decode(dev["key"].as_str().unwrap()).unwrap();
    let cert = device_cert(&state);
    openssl_verify(&env, &cert, "inj");
    assert!(
        same_public_key(&env, &cert, &key),
        "the injected key must match the certificate"
    );
    // The host keeps no key file anywhere in the test directory.
    assert!(
        !env.files()
            .iter()
            .any(|f| f.ends_with(".key") && !f.contains("/ca/") && f != "home/log.key"),
        "{:?}",
        env.files()
    );
    check_invariants(&env, "HW-INJ-1", Some(&state));
}

#[test]
fn eight_devices_in_parallel() {
    let env = Env::with_ca();
    let states = env.path("states");
    let link = env.path("dev/rack");
    let _sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--count",
            "8",
            "--hardware-id",
            "RACK",
            "--state",
            states.to_str().unwrap(),
        ],
        8,
    );
    let glob = format!("{}*", link.display());
    let (code, v, err) = provision(&env, &[], &["--ports", &glob]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(|r| r["result"] == "PASS"));
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices WHERE status='provisioned'"
        ),
        "8"
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM certificates WHERE status='active'"
        ),
        "8"
    );
    for i in 0..8 {
        let hwid = format!("RACK-{i:02}");
        let st = states.join(format!("device-{i}.json"));
        openssl_verify(&env, &device_cert(&st), &hwid);
        check_invariants(&env, &hwid, Some(&st));
    }
    // The human table form: one PASS row per port, exit 0.
    let out = env.ok(&[
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        BAUD,
        "--ports",
        &glob,
    ]);
    assert_eq!(
        out.lines().filter(|l| l.contains("PASS")).count(),
        8,
        "{out}"
    );
}

#[test]
fn watch_mode_picks_up_a_device_that_appears_later() {
    let env = Env::with_ca();
    let link = env.path("dev/late");
    let glob = format!("{}*", link.display());
    let mut watcher = env
        .cmd(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "1",
            "--ports",
            &glob,
            "--watch",
            "--limit",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let first = Sim::start(
        &env,
        &["--link", link.to_str().unwrap(), "--hardware-id", "LATE-1"],
        1,
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The first device stays on its port: it must not be provisioned twice.
    let second_link = env.path("dev/late-b");
    let _second = Sim::start(
        &env,
        &[
            "--link",
            second_link.to_str().unwrap(),
            "--hardware-id",
            "LATE-2",
        ],
        1,
    );
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = watcher.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "watcher did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = watcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["hardware_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["LATE-1", "LATE-2"]);
    assert!(lines.iter().all(|l| l["result"] == "PASS"));
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM events WHERE kind='provision.passed'"
        ),
        "2"
    );
    drop(first);
}

/// Runs a device with `fault`, provisions it once (pass or clean fail), checks the
/// invariants, then re-runs and expects a PASS. Returns the first run's result.
fn fault_case(fault: &str, extra: &[&str]) -> serde_json::Value {
    let env = Env::with_ca();
    let state = env.path("f.json");
    let link = env.path("dev/f");
    let hwid = "HW-FAULT";
    let _sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            hwid,
            "--state",
            state.to_str().unwrap(),
            "--fault",
            fault,
        ],
        1,
    );
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], extra);
    let first = v[0].clone();
    match first["result"].as_str() {
        Some("PASS") => assert_eq!(code, Some(0)),
        Some("FAIL") => {
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("FAIL"), "{err}");
            let status = q(
                &env,
                &format!("SELECT status FROM devices WHERE hardware_id='{hwid}'"),
            );
            if !status.is_empty() {
                assert_eq!(status, "registered");
                assert!(events(&env, hwid).contains(&"provision.failed".to_string()));
            }
            assert_eq!(
                q(
                    &env,
                    "SELECT count(*) FROM certificates WHERE status='active'"
                ),
                "0"
            );
        }
        other => panic!("unexpected result {other:?}: {v:#}"),
    }
    check_invariants(&env, hwid, Some(&state));
    if fault == "long-line" {
        // The device is still babbling its megabyte; it gives up once nobody reads.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], extra);
    assert_eq!(code, Some(0), "re-run after {fault}: {v:#}\n{err}");
    check_invariants(&env, hwid, Some(&state));
    openssl_verify(&env, &device_cert(&state), "fault");
    // Failed attempts left their certificates unused, never active.
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM certificates WHERE status='active'"
        ),
        "1"
    );
    first
}

#[test]
fn fault_corrupt_bytes_recovers() {
    let r = fault_case("corrupt:0.002", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn fault_drop_bytes_recovers() {
    let r = fault_case("drop:0.002", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn fault_stall_recovers_by_retrying_idempotent_writes() {
    let r = fault_case("stall:1500", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert!(r["resyncs"].as_u64().unwrap() >= 1, "{r:#}");
}

#[test]
fn fault_disconnect_during_write_resumes() {
    let r = fault_case("disconnect-after:write:2", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert_eq!(r["reconnects"], 1, "{r:#}");
}

#[test]
fn fault_disconnect_after_lock_is_finished_by_rerun_or_reconnect() {
    fault_case("disconnect-after:lock", &[]);
}

#[test]
fn fault_disconnect_after_keygen_recovers() {
    let r = fault_case("disconnect-after:keygen", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert_eq!(r["reconnects"], 1, "{r:#}");
}

#[test]
fn fault_slow_baud_fails_cleanly_or_recovers() {
    fault_case("slow-baud:19200", &[]);
}

#[test]
fn fault_reject_lock_fails_cleanly() {
    let r = fault_case("reject-lock", &[]);
    assert_eq!(r["result"], "FAIL");
    assert!(
        r["error"].as_str().unwrap().contains("lock-refused"),
        "{r:#}"
    );
}

#[test]
fn fault_garbage_on_boot_is_skipped() {
    let r = fault_case("garbage-on-boot", &[]);
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn fault_in_inject_mode_disconnect_during_key_write() {
    let r = fault_case("disconnect-after:write:1", &["--mode", "inject"]);
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn hostile_megabyte_without_newline_is_rejected() {
    let r = fault_case("long-line", &[]);
    assert_eq!(r["result"], "FAIL");
    assert!(
        r["error"].as_str().unwrap().contains("without a line end"),
        "{r:#}"
    );
}

#[test]
fn hostile_invalid_base64_is_rejected() {
    let r = fault_case("bad-base64", &[]);
    assert_eq!(r["result"], "FAIL");
    assert!(
        r["error"].as_str().unwrap().contains("invalid base64"),
        "{r:#}"
    );
}

#[test]
fn hostile_csr_for_another_key_is_rejected() {
    let r = fault_case("csr-wrong-key", &[]);
    assert_eq!(r["result"], "FAIL");
    assert!(
        r["error"].as_str().unwrap().contains("different key"),
        "{r:#}"
    );
}

#[test]
fn hostile_read_back_mismatch_is_rejected() {
    let r = fault_case("hash-mismatch", &[]);
    assert_eq!(r["result"], "FAIL");
    assert!(r["error"].as_str().unwrap().contains("read-back"), "{r:#}");
}

#[test]
fn bad_arguments_write_nothing() {
    let env = Env::with_ca();
    let before = env.dump();
    let e = env.fails(&["provision", "--passphrase-file", env.pass()], 3);
    assert!(e.contains("--port"), "{e}");
    let e = env.fails(
        &[
            "provision",
            "--passphrase-file",
            env.pass(),
            "--port",
            "/nonexistent/tty",
        ],
        6,
    );
    assert!(e.contains("no such port"), "{e}");
    let e = env.fails(
        &[
            "provision",
            "--passphrase-file",
            env.pass(),
            "--ports",
            "/nonexistent/tty*",
        ],
        6,
    );
    assert!(e.contains("no port matches"), "{e}");
    let e = env.fails(&["sim", "--fault", "explode"], 3);
    assert!(e.contains("unknown fault"), "{e}");
    assert_eq!(env.dump(), before);
}

/// The session API the decommission workflow uses: hello + wipe with attestation.
mod wipe {
    use super::*;
    use cradle::wire;

    fn provisioned(env: &Env, faults: &[&str]) -> (Sim, PathBuf, PathBuf) {
        let state = env.path("w.json");
        let link = env.path("dev/w");
        let mut args = vec![
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-WIPE",
            "--state",
            state.to_str().unwrap(),
        ];
        for f in faults {
            args.push("--fault");
            args.push(f);
        }
        let sim = Sim::start(env, &args, 1);
        let (code, _, err) = provision(env, &[link.to_str().unwrap()], &[]);
        assert_eq!(code, Some(0), "{err}");
        (sim, link, state)
    }

    fn spki_of(cert: &[u8]) -> Vec<u8> {
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(cert).unwrap();
        c.public_key().raw.to_vec()
    }

    #[test]
    fn wipe_attestation_verifies_and_faults_are_caught() {
        let env = Env::with_ca();
        let (_sim, link, state) = provisioned(&env, &[]);
        let spki = spki_of(&device_cert(&state));
        let mut s = wire::open(&link, 2_000_000, Duration::from_secs(2)).unwrap();
        let info = s.hello().unwrap();
        assert_eq!(info.hardware_id, "HW-WIPE");
        assert!(info.locked());
        let nonce = [0x5a; 32];
        let att = s.wipe(nonce).unwrap();
        assert_eq!(att.hardware_id, "HW-WIPE");
        assert_eq!(att.erased, ["key", "cert", "chain"]);
        att.verify(&spki, &nonce).unwrap();
        assert_eq!(s.hello().unwrap().state, "empty");
        assert!(device_json(&state)["key"].is_null());
    }

    #[test]
    fn forged_attestation_fails_verification() {
        let env = Env::with_ca();
        let (_sim, link, state) = provisioned(&env, &["forge-attestation"]);
        let spki = spki_of(&device_cert(&state));
        let mut s = wire::open(&link, 2_000_000, Duration::from_secs(2)).unwrap();
        let att = s.wipe([1; 32]).unwrap();
        let e = att.verify(&spki, &[1; 32]).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
    }

    #[test]
    fn replayed_nonce_is_detected() {
        let env = Env::with_ca();
        let (_sim, link, state) = provisioned(&env, &["replay-nonce"]);
        let spki = spki_of(&device_cert(&state));
        let mut s = wire::open(&link, 2_000_000, Duration::from_secs(2)).unwrap();
        let att = s.wipe([2; 32]).unwrap();
        let e = att.verify(&spki, &[2; 32]).unwrap_err().to_string();
        assert!(e.contains("different nonce"), "{e}");
    }

    #[test]
    fn disconnect_after_wipe_before_reply_is_an_error() {
        let env = Env::with_ca();
        let (_sim, link, _state) = provisioned(&env, &["disconnect-after:wipe"]);
        let mut s = wire::open(&link, 2_000_000, Duration::from_millis(500)).unwrap();
        let e = s.wipe([3; 32]).unwrap_err();
        assert!(e.is_link_problem(), "{e}");
        let err: cradle::Error = e.into();
        assert_eq!(err.exit_code(), 6);
    }
}

/// The client certificate an nRF91 simulator holds (PEM text from AT%CMNG).
fn modem_cert(state: &Path) -> Vec<u8> {
    let v = device_json(state);
    let pem = v["cmng"]["16842753,1"]
        .as_str()
        .expect("client cert credential")
        .to_string();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn nrf91_profile_csr_and_inject() {
    let env = Env::with_ca();
    let state = env.path("modem.json");
    let link = env.path("dev/modem");
    let ids = env.path("identity.pem");
    let _sim = Sim::start(
        &env,
        &[
            "--profile",
            "nrf91",
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--identity-keys-out",
            ids.to_str().unwrap(),
        ],
        1,
    );
    let (code, v, err) = provision(
        &env,
        &[link.to_str().unwrap()],
        &[
            "--device-profile",
            "nrf91",
            "--nrf-identity-keys",
            ids.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    // Nordic's attestation, verified with the modem's identity key, kept with the cert.
    let uuid = std::fs::read_to_string(&ids).unwrap()[13..49].to_string();
    assert_eq!(
        q(
            &env,
            "SELECT json_extract(device_attestation, '$.device_uuid'), json_extract(device_attestation, '$.attestation') FROM certificates"
        ),
        format!("{uuid}|verified")
    );
    // The show command exposes the evidence: in JSON whole, in text as one line.
    let serial = v[0]["serial"].as_str().unwrap().to_string();
    let shown = env.json(&["identity", "show", &serial]);
    let ev = &shown["certificates"][0]["device_attestation"];
    assert_eq!(ev["device_uuid"], uuid.as_str(), "{shown:#}");
    assert_eq!(ev["format"], "nrf91-keygen-cose", "{shown:#}");
    assert!(
        ev["cose"].as_str().is_some_and(|c| c.len() > 100),
        "{shown:#}"
    );
    let text = env.ok(&["identity", "show", &serial]);
    assert!(
        text.contains(&format!(
            "attested by the device (nrf91-keygen-cose, verified)  device uuid {uuid}"
        )),
        "{text}"
    );
    let dev = env.json(&["device", "show", &serial]);
    assert_eq!(
        dev["key_attestation"]["device_uuid"],
        uuid.as_str(),
        "{dev:#}"
    );
    let text = env.ok(&["device", "show", &serial]);
    assert!(
        text.contains("key_attestation") && text.contains(&uuid),
        "{text}"
    );
    let imei = v[0]["hardware_id"].as_str().unwrap().to_string();
    assert_eq!(imei.len(), 15, "an IMEI: {imei}");
    assert_eq!(
        q(&env, "SELECT status, imei FROM devices"),
        format!("provisioned|{imei}")
    );
    assert_eq!(
        q(&env, "SELECT status, key_source FROM certificates"),
        "active|device"
    );
    let cert = modem_cert(&state);
    assert_eq!(sha256_hex(&cert), v[0]["fingerprint"].as_str().unwrap());
    openssl_verify(&env, &cert, "modem");
    let key = hex::decode(device_json(&state)["key"].as_str().unwrap()).unwrap();
    assert!(
        same_public_key(&env, &cert, &key),
        "the certificate is for the modem's own key"
    );
    check_invariants(&env, &imei, None);
    // Re-run: already provisioned, nothing written but the contact time.
    let before = dump_but_contact_times(&env);
    let (code, v, _) = provision(
        &env,
        &[link.to_str().unwrap()],
        &["--device-profile", "nrf91"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(v[0]["already_provisioned"], true);
    assert!(q(&env, "SELECT last_contact_at FROM devices").as_str() > CONTACT_MARK);
    assert_eq!(dump_but_contact_times(&env), before);

    // Inject mode on a second modem: the private key goes in as credential type 2.
    let state2 = env.path("modem2.json");
    let link2 = env.path("dev/modem2");
    let _sim2 = Sim::start(
        &env,
        &[
            "--profile",
            "nrf91",
            "--link",
            link2.to_str().unwrap(),
            "--state",
            state2.to_str().unwrap(),
            "--hardware-id",
            "352656100000002",
        ],
        1,
    );
    let (code, v, err) = provision(
        &env,
        &[link2.to_str().unwrap()],
        &["--device-profile", "nrf91", "--mode", "inject"],
    );
    // No key from the modem in inject mode: no attestation recorded.
    assert_eq!(
        q(&env, "SELECT count(device_attestation) FROM certificates"),
        "1"
    );
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let dev2 = device_json(&state2);
    assert!(dev2["cmng"]["16842753,2"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    let cert2 = modem_cert(&state2);
    openssl_verify(&env, &cert2, "modem2");
    assert!(same_public_key(
        &env,
        &cert2,
        &hex::decode(dev2["key"].as_str().unwrap()).unwrap()
    ));
}

#[test]
fn nrf91_hostile_replies_fail_cleanly_then_rerun_passes() {
    for (fault, needle) in [
        ("bad-digest", "is not the SHA-256 of the CSR"),
        ("wrong-sec-tag", "but sec_tag 16842753 was requested"),
        ("hash-mismatch", "read-back"),
        ("bad-base64", "base64"),
    ] {
        let env = Env::with_ca();
        let link = env.path("dev/m");
        let _sim = Sim::start(
            &env,
            &[
                "--profile",
                "nrf91",
                "--link",
                link.to_str().unwrap(),
                "--hardware-id",
                "352656100000009",
                "--fault",
                fault,
            ],
            1,
        );
        let (code, v, _) = provision(
            &env,
            &[link.to_str().unwrap()],
            &["--device-profile", "nrf91"],
        );
        assert_eq!(code, Some(1), "{fault}: {v:#}");
        assert!(
            v[0]["error"].as_str().unwrap().contains(needle),
            "{fault}: {v:#}"
        );
        check_invariants(&env, "352656100000009", None);
        let (code, v, _) = provision(
            &env,
            &[link.to_str().unwrap()],
            &["--device-profile", "nrf91"],
        );
        assert_eq!(code, Some(0), "{fault} re-run: {v:#}");
        check_invariants(&env, "352656100000009", None);
    }
}

#[test]
fn nrf91_identity_signature_checked_when_the_key_is_given() {
    // csr-wrong-key (nrf91): the COSE is signed by another key than the modem's identity.
    let env = Env::with_ca();
    let link = env.path("dev/m");
    let ids = env.path("ids.pem");
    let _sim = Sim::start(
        &env,
        &[
            "--profile",
            "nrf91",
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "352656100000011",
            "--identity-keys-out",
            ids.to_str().unwrap(),
            "--fault",
            "csr-wrong-key",
        ],
        1,
    );
    let with_keys = [
        "--device-profile",
        "nrf91",
        "--nrf-identity-keys",
        ids.to_str().unwrap(),
    ];
    let (code, v, _) = provision(&env, &[link.to_str().unwrap()], &with_keys);
    assert_eq!(code, Some(1), "{v:#}");
    assert!(
        v[0]["error"].as_str().unwrap().contains("does not verify"),
        "{v:#}"
    );
    check_invariants(&env, "352656100000011", None);
    // Without identity keys the (now genuine) attestation is recorded unverified.
    let (code, v, _) = provision(
        &env,
        &[link.to_str().unwrap()],
        &["--device-profile", "nrf91"],
    );
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(
        q(
            &env,
            "SELECT json_extract(device_attestation, '$.attestation') FROM certificates WHERE status = 'active'"
        ),
        "unverified"
    );
}

/// nrfcloud-utils' bin dir (.ci/run installs it; CI fails rather than skips without it).
fn nrfcloud_bin() -> Option<PathBuf> {
    match std::env::var_os("CRADLE_TEST_NRFCLOUD_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CRADLE_TEST_NRFCLOUD_BIN is not set (.ci/run installs nrfcloud-utils)")
        }
        None => {
            eprintln!("skipped: CRADLE_TEST_NRFCLOUD_BIN not set");
            None
        }
    }
}

#[test]
fn nrf91_sim_keygen_reply_passes_nordics_parser() {
    let Some(bin) = nrfcloud_bin() else { return };
    let env = Env::with_ca();
    let link = env.path("dev/m");
    let _sim = Sim::start(
        &env,
        &["--profile", "nrf91", "--link", link.to_str().unwrap()],
        1,
    );
    // Nordic's own pyserial drives the AT dialogue; its parser checks the reply.
    let script = format!(
        "import serial,time\ns=serial.Serial({:?},115200,timeout=1)\ns.write(b'AT+CFUN=4\\r\\n');time.sleep(0.3);s.read(100)\ns.write(b'AT%KEYGEN=16842753,2,0\\r\\n');time.sleep(0.8)\nprint(s.read(8000).decode().split('\"')[1])\n",
        link.to_str().unwrap()
    );
    let out = Command::new(bin.join("python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8(out.stdout).unwrap();
    let out = Command::new(bin.join("modem_credentials_parser"))
        .args(["-P", "-k", reply.trim()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("COSE digest matches payload"), "{text}");
    assert!(text.contains("Payload ID: CSR_msg_v1"), "{text}");
    assert!(text.contains("sec_tag:    16842753"), "{text}");
}

#[test]
fn nrf91_sim_is_provisioned_by_nordics_installer() {
    // Nordic's device_credentials_installer drives the simulated modem end to end
    // (AT+CFUN=4, AT+CGSN, AT+CGMR, %KEYGEN, %CMNG writes, %CMNG=1 hash checks):
    // the simulator is held to Nordic's host, not only to ours.
    let Some(bin) = nrfcloud_bin() else { return };
    let env = Env::with_ca();
    let link = env.path("dev/m");
    let _sim = Sim::start(
        &env,
        &["--profile", "nrf91", "--link", link.to_str().unwrap()],
        1,
    );
    // A throwaway CA of Nordic's own making signs the CSR (the installer wants a
    // plain PEM key), so nothing of ours takes part in the signing.
    let key = env.path("nordic-ca.key");
    let ca = env.path("nordic-ca.pem");
    let (ok, err) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        "/CN=Nordic test CA",
        "-days",
        "2",
        "-out",
        ca.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let csv = env.path("onboard.csv");
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/nordic_installer.py");
    let out = Command::new(bin.join("python"))
        .arg(&wrapper)
        .args([
            "--port",
            link.to_str().unwrap(),
            "--cmd-type",
            "at",
            "--verify",
            "-P",
        ])
        .args([
            "--ca",
            ca.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ])
        .args(["-S", "16842753", "--csv", csv.to_str().unwrap()])
        .current_dir(env.path(""))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("COSE digest matches payload"), "{text}");
    assert!(text.contains("Verifying Client Cert"), "{text}");
    assert!(text.contains("Credential verification: PASS"), "{text}");
    assert!(!text.contains("SHA mismatch"), "{text}");
    // The onboarding row names the modem by the UUID its COSE attestation carries.
    let uuid = text
        .lines()
        .find_map(|l| l.split("Dev UUID:").nth(1))
        .map(str::trim)
        .expect("the installer prints the device UUID");
    let row = std::fs::read_to_string(&csv).unwrap();
    assert!(row.starts_with(&format!("{uuid},")), "{row}");
    assert!(row.contains("BEGIN CERTIFICATE"), "{row}");
}

#[test]
fn ctrl_c_during_provision_finishes_or_abandons_each_port_then_prints_the_table() {
    let env = Env::with_ca();
    // A: a slow line (identify takes seconds); B: stalls on its first WRITE.
    let a = env.path("dev/a");
    let b = env.path("dev/b");
    let _sa = Sim::start(
        &env,
        &[
            "--link",
            a.to_str().unwrap(),
            "--hardware-id",
            "INT-A",
            "--fault",
            "slow-baud:300",
        ],
        1,
    );
    let _sb = Sim::start(
        &env,
        &[
            "--link",
            b.to_str().unwrap(),
            "--hardware-id",
            "INT-B",
            "--fault",
            "stall:1500",
        ],
        1,
    );
    let child = env
        .cmd(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "8",
            "--port",
            a.to_str().unwrap(),
            "--port",
            b.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // B is in its stalled WRITE, A still identifying.
    std::thread::sleep(Duration::from_millis(900));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_hw = |hw: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["hardware_id"] == hw)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {hw}: {rows:#}"))
    };
    // The write in progress was finished, not torn...
    assert_eq!(by_hw("INT-B")["result"], "PASS", "{rows:#}");
    // ...the port that had not started writing was abandoned at a step boundary.
    let ra = by_hw("INT-A");
    assert_eq!(ra["result"], "FAIL", "{rows:#}");
    assert!(
        ra["error"]
            .as_str()
            .unwrap()
            .contains("interrupted by the operator"),
        "{rows:#}"
    );
    // The registry agrees: B provisioned with an active certificate, A holds nothing.
    assert_eq!(
        q(&env, "SELECT d.hardware_id, d.status, c.status FROM devices d JOIN certificates c ON c.device_id = d.id ORDER BY d.hardware_id"),
        "INT-B|provisioned|active"
    );
    // A re-run (A's line healthy again) finishes the job.
    drop(_sa);
    let _sa = Sim::start(
        &env,
        &["--link", a.to_str().unwrap(), "--hardware-id", "INT-A"],
        1,
    );
    let (code, v, err) = provision(&env, &[a.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
}

#[test]
fn watch_mode_retries_a_failed_device_when_it_is_replugged_and_says_so() {
    let env = Env::with_ca();
    let link = env.path("dev/w");
    let state = env.path("w.json");
    let glob = format!("{}*", link.display());
    let mut watcher = env
        .cmd(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "1",
            "--ports",
            &glob,
            "--watch",
            "--limit",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = watcher.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut faulty = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "W-1",
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "reject-lock",
        ],
        1,
    );
    // The station's log says FAIL, why, and what to do, as it happens.
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a FAIL line on stderr");
    assert!(
        line.contains("FAIL") && line.contains("unplug and re-plug"),
        "{line}"
    );
    // Re-plugged (the port goes away and comes back), healthy now: provisioned.
    faulty.stop();
    std::thread::sleep(Duration::from_millis(500));
    let _healthy = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "W-1",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let until = Instant::now() + Duration::from_secs(60);
    while watcher.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "watcher did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = watcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seq: Vec<&str> = results
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(seq, ["FAIL", "PASS"], "{stdout}");
    assert_eq!(
        q(&env, "SELECT status FROM devices WHERE hardware_id = 'W-1'"),
        "provisioned"
    );
}

/// An unplugged simulator takes its link away until it is back, as a USB serial port's
/// device node goes: a link left at the freed /dev/pts/N led a host's retry into the
/// pseudo-terminal the kernel handed out next (another simulator's, here another test's),
/// which it then held locked.
#[test]
fn an_unplugged_simulator_takes_its_link_away_until_it_is_back() {
    let env = Env::with_ca();
    let link = env.path("dev/dut");
    let sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-AWAY-1",
            "--fault",
            "disconnect-after:hello",
            "--fault",
            "stay-away:4000",
        ],
        1,
    );
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0), "{v:#}\n{err}");
    // Unplugged (the host's retries gave up well inside the 4 s away): no link at all.
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link still there while unplugged: {:?}",
        std::fs::read_link(&link)
    );
    // Back: a link again, to the new pseudo-terminal, and the device provisions.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::symlink_metadata(&link).is_err() {
        assert!(
            std::time::Instant::now() < until,
            "the link never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    drop(sim);
}
