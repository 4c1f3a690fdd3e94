//! Decommission with an attested wipe over a real pseudo-terminal: `cradle sim` as the
//! device (provisioned first by `cradle provision`, so it holds an identity key whose
//! certificate is registered), `cradle decommission --wipe-port` as the host.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{openssl, q, Env, Sim, SIM_BAUD as BAUD};

/// One simulated device: its pty link, its state file ("flash") and its registry serial.
struct Device {
    sim: Option<Sim>,
    hwid: String,
    link: PathBuf,
    state: PathBuf,
    serial: String,
}

impl Device {
    /// Starts a simulator for `hwid` and provisions it (CSR mode).
    fn provisioned(env: &Env, hwid: &str, faults: &[&str]) -> Device {
        let mut d = Device {
            sim: None,
            hwid: hwid.into(),
            link: env.path(&format!("dev/{hwid}")),
            state: env.path(&format!("{hwid}.json")),
            serial: String::new(),
        };
        d.restart(env, faults);
        let o = env.run(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "1",
            "--port",
            d.port(),
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "provision: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        d.serial = q(
            env,
            &format!("SELECT serial FROM devices WHERE hardware_id = '{hwid}'"),
        );
        assert!(!d.serial.is_empty());
        assert_eq!(d.device_state()["locked"], true);
        d
    }

    /// (Re)starts the simulator on the same state file ("a reboot"), with `faults`.
    fn restart(&mut self, env: &Env, faults: &[&str]) {
        if let Some(mut s) = self.sim.take() {
            s.stop();
        }
        let mut args = vec![
            "--link",
            self.link.to_str().unwrap(),
            "--hardware-id",
            &self.hwid,
            "--state",
            self.state.to_str().unwrap(),
        ];
        for f in faults {
            args.push("--fault");
            args.push(f);
        }
        self.sim = Some(Sim::start(env, &args, 1));
    }

    fn port(&self) -> &str {
        self.link.to_str().unwrap()
    }

    fn device_state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.state).unwrap()).unwrap()
    }

    fn id_sql(&self) -> String {
        format!("(SELECT id FROM devices WHERE serial = '{}')", self.serial)
    }

    fn count(&self, env: &Env, table: &str, cond: &str) -> i64 {
        q(
            env,
            &format!(
                "SELECT COUNT(*) FROM {table} WHERE device_id = {} AND {cond}",
                self.id_sql()
            ),
        )
        .parse()
        .unwrap()
    }

    fn status(&self, env: &Env) -> String {
        q(
            env,
            &format!("SELECT status FROM devices WHERE id = {}", self.id_sql()),
        )
    }

    fn step_status(&self, env: &Env, step: &str) -> String {
        q(
            env,
            &format!(
                "SELECT status FROM decommissions WHERE device_id = {} AND step = '{step}'",
                self.id_sql()
            ),
        )
    }
}

/// `cradle --json decommission SERIAL --wipe-port PORT …`: (exit code, JSON, stderr).
fn decommission(env: &Env, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let o = env.run(&decommission_args(env, args));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), v, stderr)
}

fn decommission_args<'a>(env: &'a Env, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--json",
        "decommission",
        "--passphrase-file",
        env.pass(),
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ];
    a.extend_from_slice(args);
    a
}

/// The single device result of a decommission summary.
fn only(j: &serde_json::Value) -> &serde_json::Value {
    let d = j["devices"].as_array().expect("devices array");
    assert_eq!(d.len(), 1, "{j}");
    &d[0]
}

/// Checks a completed, verified attested wipe of `d` end to end.
fn assert_verified(env: &Env, d: &Device) {
    assert_eq!(d.status(env), "decommissioned");
    assert_eq!(
        q(
            env,
            &format!(
                "SELECT kind || '|' || attestation_verified FROM wipes WHERE device_id = {}",
                d.id_sql()
            )
        ),
        "attested|1"
    );
    // The stored attestation answers a nonce cradle issued to this device, now used.
    let nonce = q(
        env,
        &format!(
            "SELECT nonce_hex FROM wipes WHERE device_id = {}",
            d.id_sql()
        ),
    );
    assert_eq!(nonce.len(), 64);
    assert_eq!(
        d.count(
            env,
            "nonces",
            &format!("nonce_hex = '{nonce}' AND used_at IS NOT NULL AND purpose = 'wipe'")
        ),
        1
    );
    for step in ["retire", "revoke", "wipe", "decommission"] {
        assert_eq!(d.step_status(env, step), "done", "{step}");
    }
    // Every certificate revoked, and the device's in the CRL (parsed by openssl).
    assert_eq!(d.count(env, "certificates", "status <> 'revoked'"), 0);
    let cert_serial = q(
        env,
        &format!(
            "SELECT serial_hex FROM certificates WHERE device_id = {}",
            d.id_sql()
        ),
    );
    let crl = env.home.join("ca/crl.pem");
    let (ok, text) = openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok, "{text}");
    let text_up = text.to_ascii_uppercase().replace(':', "");
    assert!(
        text_up.contains(&cert_serial.to_ascii_uppercase().replace(':', "")),
        "serial {cert_serial} not in CRL:\n{text}"
    );
    assert!(text.contains("Cessation Of Operation"), "{text}");
    // The certificate of sanitization shows the attestation, verified then and now.
    let rep = env.json(&["report", "sanitization", &d.serial]);
    let att = &rep["attestation"];
    assert_eq!(att["hardware_id"], d.hwid.as_str(), "{rep}");
    assert_eq!(att["verified_when_recorded"], true, "{rep}");
    assert_eq!(att["verified_now"], true, "{rep}");
    assert_eq!(att["nonce"], nonce.as_str(), "{rep}");
    // The device really erased its key and identity objects.
    let st = d.device_state();
    assert!(st["key"].is_null(), "{st}");
    assert_eq!(st["locked"], false);
}

#[test]
fn device_signed_wipe_passes_and_leaves_proof() {
    let env = Env::with_ca();
    let d = Device::provisioned(&env, "HW-OK", &[]);
    let (code, j, err) = decommission(&env, &[&d.serial, "--wipe-port", d.port()]);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_eq!(only(&j)["result"], "decommissioned", "{j}");
    assert_eq!(j["failed"], 0);
    assert_verified(&env, &d);
    assert_eq!(d.device_state()["wipe_counter"], 1);
    assert_eq!(d.count(&env, "nonces", "TRUE"), 1);
    // The text report says the same for a person.
    let text = env.ok(&["report", "sanitization", &d.serial]);
    assert!(text.contains(&d.hwid), "{text}");
    // A re-run is a no-op: nothing is sent to the device again.
    let (code, j, err) = decommission(&env, &[&d.serial, "--wipe-port", d.port()]);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_eq!(d.device_state()["wipe_counter"], 1);
    assert_eq!(d.count(&env, "wipes", "TRUE"), 1);
}

#[test]
fn forged_attestation_stops_the_device_resumably() {
    let env = Env::with_ca();
    let d = Device::provisioned(&env, "HW-FORGE", &["forge-attestation"]);
    let (code, j, err) = decommission(&env, &[&d.serial, "--wipe-port", d.port()]);
    assert_eq!(code, Some(1), "{err}\n{j}");
    let r = only(&j);
    assert_eq!(r["result"], "failed", "{j}");
    assert_eq!(r["failed_step"], "wipe", "{j}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("does not verify"), "{e}");
    // Retired and revoked, resumable at the wipe; nothing verified stored.
    assert_eq!(d.status(&env), "retired");
    assert_eq!(d.step_status(&env, "revoke"), "done");
    assert_eq!(d.step_status(&env, "wipe"), "failed");
    assert_eq!(d.count(&env, "wipes", "TRUE"), 0);
    assert_eq!(d.count(&env, "nonces", "used_at IS NOT NULL"), 0);
    assert_eq!(d.count(&env, "certificates", "status = 'active'"), 0);
    // The failure is recorded for --resume to find.
    assert!(q(
        &env,
        &format!(
            "SELECT error FROM decommissions WHERE device_id = {} AND step = 'wipe'",
            d.id_sql()
        )
    )
    .contains("does not verify"));
}

#[test]
fn a_received_but_malformed_attestation_says_so_and_not_re_run() {
    // The device wipes and answers, but its payload lacks the final LF the page requires:
    // every re-run gets the same stored reply, so "re-run to collect it" would loop.
    let env = Env::with_ca();
    let d = Device::provisioned(&env, "HW-NOLF", &["bad-attestation"]);
    for run in 0..2 {
        let (code, j, err) = decommission(&env, &[&d.serial, "--wipe-port", d.port()]);
        assert_eq!(code, Some(1), "{err}\n{j}");
        let e = only(&j)["error"].as_str().unwrap().to_string();
        assert!(
            e.contains("has wiped, but its attestation is rejected"),
            "run {run}: {e}"
        );
        assert!(e.contains("does not end with LF"), "run {run}: {e}");
        assert!(
            e.contains("every re-run gets the same stored reply"),
            "run {run}: {e}"
        );
        assert!(!e.contains("re-run to collect it"), "run {run}: {e}");
    }
    assert!(d.device_state()["key"].is_null(), "the device did wipe");
    assert_eq!(d.step_status(&env, "wipe"), "failed");
    assert_eq!(d.count(&env, "wipes", "TRUE"), 0);
}

#[test]
fn replayed_nonce_is_rejected_and_nothing_verified_is_stored() {
    let env = Env::with_ca();
    let mut d = Device::provisioned(&env, "HW-REPLAY", &[]);
    // An earlier wipe round for this device: nonce N issued and used. The device still
    // remembers N and, with the fault, answers it instead of the fresh nonce.
    let old = "ab".repeat(32);
    env.sql(&format!(
        "INSERT INTO nonces (nonce_hex, device_id, purpose, issued_at, used_at) VALUES ('{old}', {}, 'wipe', '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z')",
        d.id_sql()
    ));
    d.sim.take().unwrap().stop();
    let mut st = d.device_state();
    st["last_nonce"] = old.clone().into();
    std::fs::write(&d.state, serde_json::to_vec(&st).unwrap()).unwrap();
    d.restart(&env, &["replay-nonce"]);

    let (code, j, err) = decommission(&env, &[&d.serial, "--wipe-port", d.port()]);
    assert_eq!(code, Some(1), "{err}\n{j}");
    let e = only(&j)["error"].as_str().unwrap().to_string();
    assert!(e.contains("replayed attestation"), "{e}");
    assert!(e.contains(&old), "{e}");
    assert_eq!(d.status(&env), "retired");
    assert_eq!(d.step_status(&env, "wipe"), "failed");
    assert_eq!(d.count(&env, "wipes", "TRUE"), 0);
    // The fresh nonce was issued but not used; the old one is still the only used one.
    assert_eq!(d.count(&env, "nonces", "used_at IS NULL"), 1);
    assert_eq!(d.count(&env, "nonces", "used_at IS NOT NULL"), 1);
}

#[test]
fn a_different_device_on_the_port_stops_before_any_nonce() {
    let env = Env::with_ca();
    let a = Device::provisioned(&env, "HW-A", &[]);
    let b = Device::provisioned(&env, "HW-B", &[]);
    let before = env.dump();
    // A's decommission, but B is on the port.
    let (code, j, err) = decommission(&env, &[&a.serial, "--wipe-port", b.port()]);
    assert_eq!(code, Some(6), "{err}\n{j}");
    assert!(err.contains("wrong device on the port"), "{err}");
    assert!(err.contains("HW-B") && err.contains("HW-A"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");
    // Nothing written, no nonce sent, and B was not wiped.
    assert_eq!(env.dump(), before);
    assert_eq!(q(&env, "SELECT COUNT(*) FROM nonces"), "0");
    assert!(!b.device_state()["key"].is_null());
    assert_eq!(b.device_state()["wipe_counter"], 0);
    assert_eq!(a.status(&env), b.status(&env));
    // The right port then works.
    let (code, j, err) = decommission(&env, &[&a.serial, "--wipe-port", a.port()]);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_verified(&env, &a);
}

#[test]
fn no_device_on_the_port_changes_nothing() {
    let env = Env::with_ca();
    let mut d = Device::provisioned(&env, "HW-GONE", &[]);
    d.sim.take().unwrap().stop();
    let before = env.dump();
    let missing = env.path("dev/nothing-here");
    let (code, _, err) = decommission(&env, &[&d.serial, "--wipe-port", missing.to_str().unwrap()]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("nothing-here"), "{err}");
    let e = env.fails(
        &decommission_args(
            &env,
            &[&d.serial, "--wipe-port", d.port(), "--wipe-timeout", "0"],
        ),
        2,
    );
    assert!(e.contains("--wipe-timeout"), "{e}");
    assert_eq!(env.dump(), before);
}

#[test]
fn disconnect_after_the_wipe_then_rerun_collects_the_attestation() {
    let env = Env::with_ca();
    let mut d = Device::provisioned(&env, "HW-CABLE", &["disconnect-after:wipe"]);
    let (serial, port) = (d.serial.clone(), d.port().to_string());
    let args = [serial.as_str(), "--wipe-port", port.as_str()];
    let (code, j, err) = decommission(&env, &args);
    assert_eq!(code, Some(1), "{err}\n{j}");
    let e = only(&j)["error"].as_str().unwrap().to_string();
    assert!(e.contains("re-run"), "{e}");
    assert_eq!(only(&j)["failed_step"], "wipe", "{j}");
    // The device wiped, the host never got the reply: resumable, nothing verified.
    let st = d.device_state();
    assert!(st["key"].is_null(), "{st}");
    assert_eq!(st["wipe_counter"], 1);
    assert_eq!(d.status(&env), "retired");
    assert_ne!(d.step_status(&env, "wipe"), "done");
    assert_eq!(d.count(&env, "wipes", "TRUE"), 0);
    assert_eq!(d.count(&env, "nonces", "used_at IS NULL"), 1);
    let first_nonce = q(
        &env,
        &format!(
            "SELECT nonce_hex FROM nonces WHERE device_id = {}",
            d.id_sql()
        ),
    );

    // Reboot the device (same flash, fault gone) and re-run the same command.
    d.restart(&env, &[]);
    let (code, j, err) = decommission(&env, &args);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_verified(&env, &d);
    // The device resent the attestation for the first nonce; both nonces retired.
    assert_eq!(d.device_state()["wipe_counter"], 1, "no second wipe");
    let att: serde_json::Value = serde_json::from_str(&q(
        &env,
        &format!(
            "SELECT attestation FROM wipes WHERE device_id = {}",
            d.id_sql()
        ),
    ))
    .unwrap();
    assert_eq!(att["resent_for_earlier_nonce"], true, "{att}");
    assert_eq!(
        q(
            &env,
            &format!(
                "SELECT nonce_hex FROM wipes WHERE device_id = {}",
                d.id_sql()
            )
        ),
        first_nonce
    );
    assert_eq!(d.count(&env, "nonces", "TRUE"), 2);
    assert_eq!(d.count(&env, "nonces", "used_at IS NULL"), 0);
    // Each step recorded once, the certificate revoked once.
    assert_eq!(d.count(&env, "events", "kind = 'decommission.step'"), 4);
    assert_eq!(d.count(&env, "events", "kind = 'cert.revoked'"), 1);
}

/// Runs a decommission that aborts (like SIGKILL) right after committing `step`.
fn crash_after(env: &Env, step: u8, args: &[&str]) {
    let o = env
        .cmd(&decommission_args(env, args))
        .env("CRADLE_TEST_CRASH_AFTER_STEP", step.to_string())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        None,
        "should have been killed after step {step}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn killed_runs_with_a_serial_wipe_resume_with_no_step_done_twice() {
    let env = Env::with_ca();
    let d = Device::provisioned(&env, "HW-KILL", &[]);
    let done = |env: &Env| d.count(env, "decommissions", "status = 'done'");

    // Killed after revoking: the device is untouched.
    crash_after(&env, 2, &[&d.serial, "--wipe-port", d.port()]);
    assert_eq!(done(&env), 2);
    assert!(!d.device_state()["key"].is_null());
    assert_eq!(d.device_state()["wipe_counter"], 0);

    // Resumed (port from the stored options), killed right after the wipe is recorded.
    crash_after(&env, 3, &["--resume"]);
    assert_eq!(done(&env), 3);
    assert_eq!(d.device_state()["wipe_counter"], 1);
    assert_eq!(d.count(&env, "wipes", "attestation_verified = 1"), 1);

    // Resumed to completion: no second wipe, no second revocation, every step once.
    let (code, j, err) = decommission(&env, &["--resume"]);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_eq!(only(&j)["result"], "decommissioned", "{j}");
    assert_verified(&env, &d);
    assert_eq!(d.device_state()["wipe_counter"], 1);
    assert_eq!(d.count(&env, "wipes", "TRUE"), 1);
    assert_eq!(d.count(&env, "nonces", "TRUE"), 1);
    assert_eq!(d.count(&env, "events", "kind = 'decommission.step'"), 4);
    assert_eq!(d.count(&env, "events", "kind = 'cert.revoked'"), 1);
    for step in ["retire", "revoke", "wipe", "decommission"] {
        assert_eq!(
            q(
                &env,
                &format!(
                    "SELECT attempts FROM decommissions WHERE device_id = {} AND step = '{step}'",
                    d.id_sql()
                )
            ),
            "1",
            "{step}"
        );
    }
    // Nothing left to resume.
    let (code, j, _) = decommission(&env, &["--resume"]);
    assert_eq!(code, Some(0));
    assert_eq!(j["devices"].as_array().unwrap().len(), 0, "{j}");
}

#[test]
fn sigkill_after_the_device_wiped_but_before_the_record_resumes() {
    let env = Env::with_ca();
    // A slow line gives the host's SIGKILL a window between the device's wipe (saved
    // before its reply goes out) and the reply reaching cradle.
    let mut d = Device::provisioned(&env, "HW-SIGKILL", &[]);
    d.restart(&env, &["slow-baud:2400"]);
    let mut child = env
        .cmd(&[
            "decommission",
            "--passphrase-file",
            env.pass(),
            &d.serial,
            "--wipe-port",
            d.port(),
            "--wipe-baud",
            BAUD,
            "--wipe-timeout",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while d.device_state()["wipe_counter"] != 1 {
        assert!(Instant::now() < until, "the device never wiped");
        assert!(child.try_wait().unwrap().is_none(), "cradle ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed, not exited");
    // Killed mid-step: wipe started (nonce issued), nothing verified stored.
    assert_eq!(d.step_status(&env, "wipe"), "running");
    assert_eq!(d.count(&env, "nonces", "used_at IS NULL"), 1);
    assert_eq!(d.count(&env, "wipes", "TRUE"), 0);
    assert_eq!(d.status(&env), "retired");

    d.restart(&env, &[]);
    let (code, j, err) = decommission(&env, &["--resume"]);
    assert_eq!(code, Some(0), "{err}\n{j}");
    assert_verified(&env, &d);
    assert_eq!(d.device_state()["wipe_counter"], 1, "no second wipe");
    assert_eq!(d.count(&env, "nonces", "used_at IS NULL"), 0);
    assert_eq!(d.count(&env, "events", "kind = 'decommission.step'"), 4);
    assert_eq!(d.count(&env, "events", "kind = 'cert.revoked'"), 1);
}
