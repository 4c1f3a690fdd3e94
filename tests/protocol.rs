//! cradle-protocol(7) from both sides: `cradle conformance` against the simulator (every
//! rule passes when strict, the matching rule fails under each fault), and the host held
//! to the rules the page tightened (windowing, a lost KEYGEN reply across a reset).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Env, Sim, SIM_BAUD as BAUD};

const RULES: usize = 43;

/// `cradle --json conformance --port LINK`: (exit code, JSON, stderr).
fn conformance(env: &Env, link: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut a = vec![
        "--json",
        "conformance",
        "--port",
        link,
        "--baud",
        BAUD,
        "--timeout",
        "1",
    ];
    a.extend_from_slice(extra);
    let o = env.run(&a);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), v, stderr)
}

fn failed(v: &serde_json::Value) -> BTreeSet<String> {
    v["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules in {v:#}"))
        .iter()
        .filter(|r| r["pass"] == false)
        .map(|r| r["rule"].as_str().unwrap().to_string())
        .collect()
}

fn sim(env: &Env, args: &[&str], strict: bool) -> (Sim, String) {
    let link = env.path("dev/dut").to_str().unwrap().to_string();
    let mut a = vec!["--link", link.as_str()];
    a.extend_from_slice(args);
    let s = if strict {
        Sim::start(env, &a, 1)
    } else {
        Sim::start_lenient(env, &a, 1)
    };
    (s, link)
}

#[test]
fn conformance_passes_against_the_strict_simulator_with_no_home() {
    // No `cradle init`: conformance touches neither registry nor CA.
    let env = Env::bare();
    let (_sim, link) = sim(&env, &[], true);
    let (code, v, err) = conformance(&env, &link, &[]);
    assert_eq!(code, Some(0), "{err}\n{v:#}");
    assert_eq!(v["passed"], RULES, "{v:#}");
    assert_eq!(v["failed"], 0, "{v:#}");
    assert!(failed(&v).is_empty());
    assert!(!env.home.exists(), "conformance created the home");
    // The page names every rule the command runs.
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/cradle-protocol.7"),
    )
    .unwrap()
    .replace('\n', " ");
    for r in v["rules"].as_array().unwrap() {
        let name = r["rule"].as_str().unwrap();
        assert!(
            page.contains(&format!(" {name}")),
            "cradle-protocol(7) does not name rule {name}"
        );
    }
    // Text: one PASS line per rule, then the summary. The device was left empty, so a
    // second run needs no --force.
    let o = env.run(&[
        "conformance",
        "--port",
        &link,
        "--baud",
        BAUD,
        "--timeout",
        "1",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        RULES,
        "{out}"
    );
    assert!(
        out.contains(&format!("{RULES} of {RULES} rules pass")),
        "{out}"
    );
    assert!(!env.home.exists());
}

#[test]
fn lenient_simulator_fails_exactly_the_form_rules() {
    // Each tightened form is its own rule: a device that takes upper-case CRC digits,
    // SEQ 0, a 10-digit SEQ, two spaces or an extra HELLO argument fails that rule (and
    // its echo of SEQ 0 or 1000000000 breaks the reply form).
    let env = Env::bare();
    let (_sim, link) = sim(&env, &[], false);
    let (code, v, err) = conformance(&env, &link, &[]);
    assert_eq!(code, Some(1), "{err}\n{v:#}");
    let want: BTreeSet<String> = [
        "form-upper-case-crc",
        "form-seq-zero",
        "form-seq-10-digits",
        "form-double-space",
        "form-extra-argument",
        "reply-form",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(failed(&v), want, "{v:#}");
}

/// Conformance against a strict simulator with `fault`: exit 1 and `rule` among the failed.
fn fault_fails(fault: &str, rule: &str) {
    let env = Env::bare();
    let (_sim, link) = sim(&env, &["--fault", fault], true);
    let (code, v, err) = conformance(&env, &link, &[]);
    assert_eq!(code, Some(1), "{fault}: {err}\n{v:#}");
    let f = failed(&v);
    assert!(f.contains(rule), "{fault}: {rule} passed; failed: {f:?}");
}

#[test]
fn fault_forged_attestation_fails_wipe_attestation() {
    fault_fails("forge-attestation", "wipe-attestation");
}

#[test]
fn fault_replayed_nonce_fails_wipe_attestation() {
    fault_fails("replay-nonce", "wipe-attestation");
}

#[test]
fn fault_attestation_without_final_lf_fails_wipe_attestation() {
    fault_fails("bad-attestation", "wipe-attestation");
}

#[test]
fn fault_overlong_reply_fails_hello() {
    fault_fails("long-line", "hello");
}

#[test]
fn fault_bad_base64_and_wrong_csr_key_fail_keygen() {
    fault_fails("bad-base64", "keygen");
    fault_fails("csr-wrong-key", "keygen");
}

#[test]
fn fault_altered_read_fails_read_back() {
    fault_fails("hash-mismatch", "read-back");
}

#[test]
fn fault_refused_lock_fails_lock() {
    fault_fails("reject-lock", "lock");
}

#[test]
fn fault_upper_case_reply_crc_fails_reply_form() {
    fault_fails("upper-crc", "reply-form");
}

#[test]
fn boot_noise_and_a_window_sized_buffer_are_conformant() {
    for fault in ["garbage-on-boot", "window-drop"] {
        let env = Env::bare();
        let (_sim, link) = sim(&env, &["--fault", fault], true);
        let (code, v, err) = conformance(&env, &link, &[]);
        assert_eq!(code, Some(0), "{fault}: {err}\n{v:#}");
    }
}

#[test]
fn conformance_refuses_a_device_holding_an_identity_unless_forced() {
    let env = Env::bare();
    let (_sim, link) = sim(&env, &[], true);
    {
        let mut s = cradle::wire::open(link.as_ref(), 2_000_000, Duration::from_secs(2)).unwrap();
        s.keygen().unwrap();
    }
    let (code, v, err) = conformance(&env, &link, &[]);
    assert_eq!(code, Some(7), "{err}\n{v:#}");
    assert!(err.contains("is keyed") && err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, v, err) = conformance(&env, &link, &["--force"]);
    assert_eq!(code, Some(0), "{err}\n{v:#}");
}

#[test]
fn conformance_stops_when_nothing_speaks_the_protocol() {
    // An nRF91 modem answers AT commands only: two HELLOs time out, then one error line
    // (not 42 rules each waiting out its timeout).
    let env = Env::bare();
    let (_sim, link) = sim(&env, &["--profile", "nrf91"], true);
    let started = Instant::now();
    let (code, _, err) = conformance(&env, &link, &[]);
    assert_eq!(code, Some(6), "{err}");
    assert!(
        err.contains("no device on") && err.contains("answers HELLO"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
}

#[test]
fn conformance_bad_arguments_are_one_clear_line() {
    let env = Env::bare();
    let e = env.fails(&["conformance", "--port", "/nonexistent/tty"], 6);
    assert!(
        e.contains("/nonexistent/tty") && e.contains("cannot open"),
        "{e}"
    );
    let e = env.fails(&["conformance", "--port", "/dev/null", "--timeout", "0"], 3);
    assert!(e.contains("--timeout"), "{e}");
    assert!(!env.home.exists());
}

/// `cradle --json provision --port LINK --timeout T`: (exit code, first result, seconds).
fn provision(env: &Env, link: &str, timeout: &str) -> (Option<i32>, serde_json::Value, f64) {
    let started = Instant::now();
    let o = env.run(&[
        "--json",
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        BAUD,
        "--timeout",
        timeout,
        "--port",
        link,
    ]);
    let took = started.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
    });
    (o.status.code(), v[0].clone(), took)
}

#[test]
fn host_keeps_the_window_with_the_commit_in_it() {
    // A device with a 2-request buffer drops a third request in flight. The chain takes
    // two WRITE frames: a host that put the COMMIT right behind them (W+1 outstanding)
    // lost it and waited the full 5 s timeout before resyncing.
    let env = Env::with_ca();
    let (_sim, link) = sim(&env, &["--window", "2", "--fault", "window-drop"], true);
    let (code, r, took) = provision(&env, &link, "5");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert_eq!(r["resyncs"], 0, "{r:#}");
    assert!(
        took < 4.0,
        "provisioning took {took:.1}s: a request waited out a timeout"
    );
}

#[test]
fn lost_keygen_reply_across_a_reset_makes_one_key() {
    // The device makes its key, then the line drops before the reply. After the reset
    // HELLO reports state=keyed with a new pub: the host fetches that key's CSR and
    // sends no second KEYGEN.
    let env = Env::with_ca();
    let state = env.path("k.json");
    let (_sim, link) = sim(
        &env,
        &[
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:keygen",
        ],
        true,
    );
    let (code, r, _) = provision(&env, &link, "1");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert_eq!(r["reconnects"], 1, "{r:#}");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["keygens"], 1, "KEYGEN was sent again after the reset");
    assert_eq!(st["locked"], true);
}

/// The device a firmware team would write from the page alone (tests/peers/page_device.py,
/// Python, no code shared with the simulator), on its own pty; killed on drop.
struct PageDevice {
    child: std::process::Child,
    path: String,
}

impl PageDevice {
    /// `None` (with a note) when `CRADLE_TEST_PYTHON` is unset on a dev box; in CI a
    /// missing peer fails the test.
    fn start() -> Option<PageDevice> {
        use std::io::BufRead;
        let Some(dir) = std::env::var_os("CRADLE_TEST_PYTHON") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: CRADLE_TEST_PYTHON (a venv bin/ with `cryptography`) must be set"
            );
            eprintln!("skipped: set CRADLE_TEST_PYTHON to a venv bin/ with `cryptography`");
            return None;
        };
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/page_device.py");
        let mut child = std::process::Command::new(std::path::Path::new(&dir).join("python3"))
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 from CRADLE_TEST_PYTHON");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut path = String::new();
        out.read_line(&mut path).unwrap();
        assert!(path.starts_with("/dev/"), "page device printed {path:?}");
        Some(PageDevice {
            child,
            path: path.trim().to_string(),
        })
    }
}

impl Drop for PageDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_device_written_from_the_page_alone_passes_conformance() {
    let Some(dev) = PageDevice::start() else {
        return;
    };
    let env = Env::bare();
    let (code, v, err) = conformance(&env, &dev.path, &[]);
    assert_eq!(code, Some(0), "{err}\n{v:#}");
    assert_eq!(v["passed"], RULES, "{v:#}");
}

#[test]
fn a_device_written_from_the_page_alone_is_provisioned_and_wiped() {
    // maxline 512 and window 4, not the simulator's 1024 and 8.
    let Some(dev) = PageDevice::start() else {
        return;
    };
    let env = Env::with_ca();
    let (code, r, _) = provision(&env, &dev.path, "1");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["result"], "PASS", "{r:#}");
    let o = env.run(&[
        "--json",
        "decommission",
        "PAGE-DEV-1",
        "--passphrase-file",
        env.pass(),
        "--wipe-port",
        &dev.path,
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{j:#}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = &j["devices"][0];
    assert!(d.to_string().contains("decommissioned"), "{j:#}");
    let wipes = env.sql("SELECT kind, attestation_verified FROM wipes;");
    assert_eq!(wipes.trim(), "attested|1", "{wipes}");
    // The wiped device, in another registry, with a key made on the station.
    let env = Env::with_ca();
    let o = env.run(&[
        "--json",
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        BAUD,
        "--timeout",
        "1",
        "--mode",
        "inject",
        "--port",
        &dev.path,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v[0]["result"], "PASS", "{v:#}");
}
