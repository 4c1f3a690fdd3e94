//! Firmware on every contact, the firmware and contact audit checks, and configuration
//! written at provisioning: `cradle sim` on real ptys, the real binary as the host.

mod common;

use std::path::PathBuf;

use common::{audit, provision_json, q, Env, Sim, SIM_BAUD as BAUD};

/// A simulated cradle-protocol device on a stable link, restartable on its state file
/// with another firmware version ("an update in the field").
struct Dev {
    sim: Option<Sim>,
    hwid: String,
    link: PathBuf,
    state: PathBuf,
}

impl Dev {
    fn new(env: &Env, hwid: &str) -> Dev {
        std::fs::create_dir_all(env.path("dev")).unwrap();
        Dev {
            sim: None,
            hwid: hwid.into(),
            link: env.path(&format!("dev/{hwid}")),
            state: env.path(&format!("{hwid}.json")),
        }
    }

    fn start(&mut self, env: &Env, extra: &[&str]) {
        if let Some(mut s) = self.sim.take() {
            s.stop();
        }
        let mut a = vec![
            "--link",
            self.link.to_str().unwrap(),
            "--hardware-id",
            &self.hwid,
            "--state",
            self.state.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        self.sim = Some(Sim::start(env, &a, 1));
    }

    fn port(&self) -> &str {
        self.link.to_str().unwrap()
    }

    fn serial(&self, env: &Env) -> String {
        q(
            env,
            &format!(
                "SELECT serial FROM devices WHERE hardware_id = '{}'",
                self.hwid
            ),
        )
    }
}

fn provision_ok(env: &Env, port: &str, extra: &[&str]) -> serde_json::Value {
    let (code, v, err) = provision_json(env, &[port], extra);
    assert_eq!(code, Some(0), "provision: {v} {err}");
    v
}

fn show(env: &Env, serial: &str) -> serde_json::Value {
    env.json(&["device", "show", serial])
}

fn trail(env: &Env, serial: &str) -> Vec<serde_json::Value> {
    let h = env.json(&["device", "history", serial, "--firmware"]);
    h["events"].as_array().unwrap().clone()
}

#[test]
fn firmware_is_recorded_on_every_contact_with_a_trail_of_changes() {
    let env = Env::with_ca();
    let mut d = Dev::new(&env, "FW-0001");
    d.start(&env, &["--firmware", "1.0.0"]);
    provision_ok(&env, d.port(), &[]);
    let serial = d.serial(&env);
    let s = show(&env, &serial);
    assert_eq!(s["firmware"], "1.0.0");
    let first_contact = s["last_contact_at"].as_str().unwrap().to_string();
    let t = trail(&env, &serial);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["details"]["firmware"], "1.0.0");
    assert_eq!(t[0]["details"]["first_contact"], true);
    assert_eq!(t[0]["details"]["via"], "provision");

    // The same firmware on a re-contact: the contact time moves, the log does not grow.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    d.start(&env, &["--firmware", "1.0.0"]);
    let v = provision_ok(&env, d.port(), &[]);
    assert_eq!(v[0]["already_provisioned"], true);
    assert_eq!(trail(&env, &serial).len(), 1);
    let again = show(&env, &serial)["last_contact_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(again > first_contact, "{again} after {first_contact}");

    // Updated in the field: the next contact records the change.
    d.start(&env, &["--firmware", "1.1.0"]);
    provision_ok(&env, d.port(), &[]);
    let t = trail(&env, &serial);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(t[1]["details"]["firmware"], "1.1.0");
    assert_eq!(t[1]["details"]["previous"], "1.0.0");
    assert_eq!(show(&env, &serial)["firmware"], "1.1.0");

    // An update done elsewhere, recorded by the operator.
    let out = env.ok(&["device", "set", &serial, "firmware=1.2.0"]);
    assert!(out.contains("firmware"), "{out}");
    let t = trail(&env, &serial);
    assert_eq!(t.len(), 3);
    assert_eq!(t[2]["details"]["source"], "operator");
    assert_eq!(t[2]["details"]["previous"], "1.1.0");
    // Setting the same version again records nothing.
    env.ok(&["device", "set", &serial, "firmware=1.2.0"]);
    assert_eq!(trail(&env, &serial).len(), 3);
    let table = env.ok(&["device", "history", &serial, "--firmware"]);
    assert!(table.contains("FIRMWARE") && table.contains("1.2.0") && table.contains("operator"));
    let shown = env.ok(&["device", "show", &serial]);
    assert!(
        shown.contains("last_contact_at") && shown.contains("1.2.0"),
        "{shown}"
    );

    // Bad values: one line, exit 3, nothing written.
    let err = env.fails(&["device", "set", &serial, "firmware="], 3);
    assert!(err.contains("firmware cannot be cleared"), "{err}");
    let long = format!("firmware={}", "9".repeat(200));
    let err = env.fails(&["device", "set", &serial, &long], 3);
    assert!(err.contains("at most 128"), "{err}");
    assert_eq!(trail(&env, &serial).len(), 3);

    // The wipe at decommission is a contact too: the device still runs 1.1.0.
    d.start(&env, &["--firmware", "1.1.0"]);
    let o = env.run(&[
        "--json",
        "decommission",
        &serial,
        "--passphrase-file",
        env.pass(),
        "--wipe-port",
        d.port(),
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "decommission: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t = trail(&env, &serial);
    assert_eq!(t.len(), 4, "{t:?}");
    assert_eq!(t[3]["details"]["via"], "decommission");
    assert_eq!(t[3]["details"]["firmware"], "1.1.0");
    assert_eq!(t[3]["details"]["port"], d.port());
    assert_eq!(t[3]["details"]["previous"], "1.2.0");
}

#[test]
fn micropython_and_nrf91_report_their_firmware_strings() {
    let env = Env::with_ca();
    std::fs::create_dir_all(env.path("dev")).unwrap();
    let link = env.path("dev/mp");
    let _s = Sim::start(
        &env,
        &[
            "--profile",
            "micropython",
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "e6614103e7a1b2c3",
        ],
        1,
    );
    provision_ok(
        &env,
        link.to_str().unwrap(),
        &["--device-profile", "micropython", "--mode", "inject"],
    );
    let serial = q(
        &env,
        "SELECT serial FROM devices WHERE hardware_id = 'e6614103e7a1b2c3'",
    );
    assert_eq!(show(&env, &serial)["firmware"], "MicroPython 1.24.1");

    let nlink = env.path("dev/nrf");
    let _n = Sim::start(
        &env,
        &["--profile", "nrf91", "--link", nlink.to_str().unwrap()],
        1,
    );
    provision_ok(
        &env,
        nlink.to_str().unwrap(),
        &["--device-profile", "nrf91"],
    );
    let fw = q(
        &env,
        "SELECT firmware FROM devices WHERE firmware LIKE 'mfw%'",
    );
    assert_eq!(fw, "mfw_nrf9160_1.3.5");
}

/// (check, device) of each finding of the three firmware and contact checks.
fn fw_findings(v: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            ["firmware-below", "firmware-listed", "no-contact-since"]
                .contains(&f["check"].as_str().unwrap())
        })
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["device"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(c: &str, d: &str) -> (String, String) {
    (c.to_string(), d.to_string())
}

#[test]
fn firmware_and_contact_audit_checks_trigger_only_when_they_should() {
    let env = Env::with_ca();
    let mut a = Dev::new(&env, "AUD-A");
    a.start(&env, &["--firmware", "v1.3.2-rc1"]);
    provision_ok(&env, a.port(), &[]);
    let mut b = Dev::new(&env, "AUD-B");
    b.start(&env, &["--firmware", "app-1.4.0"]);
    provision_ok(&env, b.port(), &[]);
    let (sa, sb) = (a.serial(&env), b.serial(&env));

    // Without their options the checks do not run, and the summary says so.
    let (code, v) = audit(&env, &[]);
    assert_eq!(code, 0, "{v}");
    let not_run = v["summary"]["not_run"].as_object().unwrap();
    assert_eq!(not_run.len(), 4, "{not_run:?}");
    assert_eq!(not_run["firmware-below"], "--min-firmware MODEL=VERSION");
    let table = env.ok(&["audit"]);
    assert!(
        table.contains("not run: firmware-below (needs --min-firmware"),
        "{table}"
    );
    let err = env.fails(&["audit", "--check", "firmware-below"], 2);
    assert!(
        err.contains("--check firmware-below needs --min-firmware"),
        "{err}"
    );

    // firmware-below: a release candidate is below its release; other models untouched.
    let (code, v) = audit(&env, &["--min-firmware", "sim-1=1.3.2"]);
    assert_eq!(code, 1);
    assert_eq!(fw_findings(&v), [pair("firmware-below", &sa)]);
    let (code, v) = audit(&env, &["--min-firmware", "sim-1=1.3.2-rc1"]);
    assert_eq!((code, fw_findings(&v)), (0, vec![]));
    let (code, v) = audit(&env, &["--min-firmware", "other-model=9.0"]);
    assert_eq!((code, fw_findings(&v)), (0, vec![]));
    let (_, v) = audit(&env, &["--min-firmware", "sim-1=1.10"]);
    assert_eq!(
        fw_findings(&v),
        [pair("firmware-below", &sa), pair("firmware-below", &sb)]
    );

    // firmware-listed: by model and version, or version alone.
    let list = env.path("bad.txt");
    std::fs::write(&list, "# known bad\n\nsim-1 1.4.0   # CVE-2026-0001\n").unwrap();
    let (code, v) = audit(&env, &["--vulnerable", list.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(fw_findings(&v), [pair("firmware-listed", &sb)]);
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(msg.contains("line 3"), "{msg}");
    std::fs::write(&list, "1.3.1\nother 1.4.0\n").unwrap();
    let (code, v) = audit(&env, &["--vulnerable", list.to_str().unwrap()]);
    assert_eq!((code, fw_findings(&v)), (0, vec![]));
    // A malformed line: one error naming file and line, exit 3.
    std::fs::write(&list, "1.3.1\nsim-1 latest\n").unwrap();
    let err = env.fails(&["audit", "--vulnerable", list.to_str().unwrap()], 3);
    assert!(
        err.contains("bad.txt") && err.contains('2') && err.contains("'latest' is not a version"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // no-contact-since: both were just reached; one whose last contact is old is reported.
    let (code, v) = audit(&env, &["--no-contact-days", "30"]);
    assert_eq!((code, fw_findings(&v)), (0, vec![]));
    env.sql(&format!(
        "UPDATE devices SET last_contact_at = '2020-01-01T00:00:00Z' WHERE serial = '{sa}'"
    ));
    let (code, v) = audit(&env, &["--no-contact-days", "30"]);
    assert_eq!(code, 1);
    assert_eq!(fw_findings(&v), [pair("no-contact-since", &sa)]);
    assert_eq!(v["summary"]["no_contact_days"], 30);
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The simulated device's `config` slot, from its state file.
fn config_slot(state: &std::path::Path) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    v["slots"]["config"]["data"]
        .as_str()
        .map(|h| hex::decode(h).unwrap())
}

fn config_events(env: &Env, serial: &str) -> Vec<serde_json::Value> {
    let h = env.json(&["device", "history", serial]);
    h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "config.written")
        .cloned()
        .collect()
}

#[test]
fn config_is_written_read_back_recorded_and_rewritten_after_lock() {
    let env = Env::with_ca();
    // `cradle init` installed the editable default; provisioning uses that copy.
    let installed = env.home.join("templates/config/default.toml");
    assert!(installed.exists());
    let mut d = Dev::new(&env, "CFG-0001");
    d.start(&env, &["--firmware", "2.0.1"]);
    let csv = env.path("inv.csv");
    std::fs::write(
        &csv,
        "serial,hardware_id,site\nCFG-0001,CFG-0001,lab\nOTHER,SOMEONE-ELSE,lab\n",
    )
    .unwrap();
    env.ok(&["inventory", "import", csv.to_str().unwrap()]);
    let v = provision_ok(&env, d.port(), &["--config", "default"]);
    assert_eq!(v[0]["result"], "PASS", "{v}");
    let serial = "CFG-0001";
    let held = config_slot(&d.state).expect("config slot written");
    let doc: serde_json::Value = serde_json::from_slice(&held).unwrap();
    assert_eq!(doc["device_id"], serial);
    assert_eq!(doc["site"], "lab");
    assert_eq!(doc["mqtt"]["topic"], "fleet/lab/CFG-0001");
    assert_eq!(doc["telemetry"]["interval_s"], 60);
    let s = show(&env, serial);
    assert_eq!(s["config_name"], "default");
    assert_eq!(s["config_sha256"], sha256_hex(&held));
    let shown = env.ok(&["device", "show", serial]);
    assert!(
        shown.contains(&format!("default sha256:{}", sha256_hex(&held))),
        "{shown}"
    );
    let ev = config_events(&env, serial);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["details"]["via"], "provision");
    assert_eq!(ev[0]["details"]["place"], "slot config");

    // The site changes; the configuration is re-written on the locked device.
    env.ok(&["device", "set", serial, "site=berlin-1"]);
    let o = env.json(&[
        "device",
        "config",
        serial,
        "--port",
        d.port(),
        "--baud",
        BAUD,
        "--timeout",
        "1",
    ]);
    assert_eq!(o["template"], "default");
    assert_eq!(o["unchanged"], false);
    assert_eq!(o["firmware"], "2.0.1");
    let held2 = config_slot(&d.state).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&held2).unwrap();
    assert_eq!(doc["site"], "berlin-1");
    assert_eq!(o["sha256"], sha256_hex(&held2));
    assert_eq!(show(&env, serial)["config_sha256"], sha256_hex(&held2));
    let ev = config_events(&env, serial);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1]["details"]["via"], "device config");
    assert_eq!(ev[1]["details"]["previous_sha256"], sha256_hex(&held));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&d.state).unwrap()).unwrap();
    assert_eq!(state["locked"], true);

    // Another device on the port is refused, nothing recorded.
    let err = env.fails(
        &[
            "device",
            "config",
            "OTHER",
            "--port",
            d.port(),
            "--config",
            "default",
            "--baud",
            BAUD,
            "--timeout",
            "1",
        ],
        6,
    );
    assert!(err.contains("wrong device"), "{err}");
    assert_eq!(config_events(&env, "OTHER").len(), 0);
}

#[test]
fn bad_config_templates_and_families_without_a_config_place_are_refused() {
    let env = Env::with_ca();
    let dir = env.home.join("templates/config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "[values]\nendpoint = \"x\"\n\n[document]\nurl = \"{endpoint}/{tenant}\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("open.json"), r#"{"document": {"id": "{serial"}}"#).unwrap();
    let big = format!(
        "[values]\nblob = \"{}\"\n[document]\na = \"{{blob}}\"\nb = \"{{blob}}\"\n",
        "x".repeat(9000)
    );
    std::fs::write(dir.join("big.toml"), big).unwrap();
    let mut d = Dev::new(&env, "CFG-BAD");
    d.start(&env, &[]);
    for (name, want) in [
        ("bad", "unknown placeholder '{tenant}'"),
        ("open", "unclosed or unbalanced brace"),
        ("nosuch", "no config template named 'nosuch'"),
    ] {
        let err = env.fails(
            &[
                "provision",
                "--passphrase-file",
                env.pass(),
                "--port",
                d.port(),
                "--config",
                name,
            ],
            3,
        );
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Too big for a device: the run fails before the device is touched.
    let (code, v, _) = provision_json(&env, &[d.port()], &["--config", "big"]);
    assert_eq!(code, Some(1), "{v}");
    let e = v[0]["error"].as_str().unwrap();
    assert!(
        e.contains("at most 16384") && e.contains("render config"),
        "{e}"
    );
    assert_eq!(q(&env, "SELECT count(*) FROM certificates"), "0");
    assert!(config_slot(&d.state).is_none());

    // Nothing recorded to re-write, and no --config: one line, exit 3.
    let serial = q(&env, "SELECT serial FROM devices");
    let err = env.fails(&["device", "config", &serial, "--port", d.port()], 3);
    assert!(
        err.contains("has no configuration recorded; give --config NAME"),
        "{err}"
    );
    let before = env.dump();
    for family in ["esp32", "nrf91"] {
        let err = env.fails(
            &[
                "provision",
                "--passphrase-file",
                env.pass(),
                "--port",
                "/nonexistent/port",
                "--device-profile",
                family,
                "--mode",
                "inject",
                "--config",
                "default",
            ],
            3,
        );
        assert!(
            err.contains(&format!("the {family} family has no config place")),
            "{err}"
        );
    }
    assert_eq!(env.dump(), before, "a refused --config writes nothing");
}

#[test]
fn micropython_config_goes_to_a_file_verified_by_the_boards_hash() {
    let env = Env::with_ca();
    std::fs::create_dir_all(env.path("dev")).unwrap();
    let link = env.path("dev/mp");
    let state = env.path("mp.json");
    let _s = Sim::start(
        &env,
        &[
            "--profile",
            "micropython",
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "e6614103e7a1b2c4",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    provision_ok(
        &env,
        link.to_str().unwrap(),
        &[
            "--device-profile",
            "micropython",
            "--mode",
            "inject",
            "--config",
            "default",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let file = hex::decode(v["micropython"]["files"]["/config.json"].as_str().unwrap()).unwrap();
    let serial = q(&env, "SELECT serial FROM devices");
    let doc: serde_json::Value = serde_json::from_slice(&file).unwrap();
    assert_eq!(doc["device_id"], serial.as_str());
    assert_eq!(show(&env, &serial)["config_sha256"], sha256_hex(&file));
    assert_eq!(
        config_events(&env, &serial)[0]["details"]["place"],
        "/config.json"
    );
}

#[test]
fn esp32_rom_is_recorded_once_and_never_over_a_version_an_operator_set() {
    let env = Env::with_ca();
    std::fs::create_dir_all(env.path("dev")).unwrap();
    let link = env.path("dev/esp");
    let state = env.path("esp.json");
    let args = [
        "--profile",
        "esp32",
        "--link",
        link.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--hardware-id",
        "24:0a:c4:12:34:57",
    ];
    let esp = ["--device-profile", "esp32", "--mode", "inject"];
    let mut sim = Sim::start(&env, &args, 1);
    provision_ok(&env, link.to_str().unwrap(), &esp);
    let serial = q(&env, "SELECT serial FROM devices");
    assert_eq!(show(&env, &serial)["firmware"], "rom");
    assert_eq!(trail(&env, &serial).len(), 1);
    // The ROM cannot see the application: firmware-below says so rather than guessing.
    let model = q(&env, "SELECT model FROM devices");
    let (code, v) = audit(&env, &["--min-firmware", &format!("{model}=2.0")]);
    assert_eq!(code, 1);
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(msg.contains("holds no version number"), "{msg}");

    env.ok(&["device", "set", &serial, "firmware=app-2.1.0"]);
    sim.stop();
    env.sql("UPDATE devices SET last_contact_at = '2000-01-01T00:00:00Z'");
    let _sim = Sim::start(&env, &args, 1);
    let v = provision_ok(&env, link.to_str().unwrap(), &esp);
    assert_eq!(v[0]["already_provisioned"], true);
    let s = show(&env, &serial);
    assert_eq!(
        s["firmware"], "app-2.1.0",
        "the ROM contact kept the set version"
    );
    assert!(s["last_contact_at"].as_str().unwrap() > "2000-01-01T00:00:00Z");
    assert_eq!(trail(&env, &serial).len(), 2);
    // Only this check: the shell edit of last_contact_at above is a device-mark finding.
    let min = format!("{model}=2.0");
    let (code, v) = audit(&env, &["--check", "firmware-below", "--min-firmware", &min]);
    assert_eq!(code, 0, "{v}");
}
