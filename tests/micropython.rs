//! MicroPython boards end to end: `cradle sim --profile micropython` on real
//! pseudo-terminals, `cradle provision --device-profile micropython` against it, every
//! issued certificate checked with openssl, and real mpremote 1.29 held to the simulator.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{openssl, q, Env, Sim, SIM_BAUD as BAUD};

const HWID: &str = "e6614103e7a1b2c3";

fn provision(
    env: &Env,
    ports: &[&str],
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let profile = ["--device-profile", "micropython", "--mode", "inject"];
    common::provision_json(env, ports, &[&profile[..], extra].concat())
}

/// A file on the simulated board, from its state file.
fn board_file(state: &Path, path: &str) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    v["micropython"]["files"][path]
        .as_str()
        .map(|h| hex::decode(h).unwrap())
}

fn active_cert_pem(env: &Env, hwid: &str) -> String {
    let hex = q(env, &format!(
        "SELECT hex(c.der) FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{hwid}' AND c.status='active'"
    ));
    assert!(!hex.is_empty(), "no active certificate for {hwid}");
    pem(&hex::decode(hex).unwrap())
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

/// The board holds a verified identity: the certificate file is the registry's active
/// certificate, openssl verifies it against the CA with the chain file the board got,
/// and the key file is the certificate's key.
fn check_board_identity(env: &Env, hwid: &str, state: &Path) {
    let cert = board_file(state, "/certs/device.crt").expect("certificate file");
    assert_eq!(String::from_utf8_lossy(&cert), active_cert_pem(env, hwid));
    let chain = board_file(state, "/certs/chain.pem").expect("chain file");
    let key = board_file(state, "/certs/device.key").expect("key file");
    let dir = env.path(&format!("board-{hwid}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in [
        ("device.crt", &cert),
        ("chain.pem", &chain),
        ("device.key", &key),
    ] {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let root = env.home.join("ca/root.pem");
    let (ok, out) = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        &f("chain.pem"),
        &f("device.crt"),
    ]);
    assert!(ok && out.contains(": OK"), "openssl verify: {out}");
    let (ok1, a) = openssl(&["x509", "-in", &f("device.crt"), "-noout", "-pubkey"]);
    let (ok2, b) = openssl(&["pkey", "-in", &f("device.key"), "-pubout"]);
    assert!(
        ok1 && ok2 && a == b,
        "the key file is not the certificate's key"
    );
}

/// Pass or fail, the registry never calls a board provisioned unless it holds the
/// active certificate.
fn check_invariants(env: &Env, hwid: &str, state: &Path) {
    let status = q(
        env,
        &format!("SELECT status FROM devices WHERE hardware_id='{hwid}'"),
    );
    let active = q(env, &format!(
        "SELECT count(*) FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{hwid}' AND c.status='active'"
    ));
    if status == "provisioned" {
        assert_eq!(active, "1");
        check_board_identity(env, hwid, state);
    } else {
        assert_eq!(
            active, "0",
            "{hwid} is {status:?} with an active certificate"
        );
    }
}

fn start_board(env: &Env, name: &str, hwid: &str, faults: &[&str]) -> (Sim, PathBuf, PathBuf) {
    let state = env.path(&format!("{name}.json"));
    let link = env.path(&format!("dev/{name}"));
    let mut a = vec![
        "--profile",
        "micropython",
        "--model",
        "Pico",
        "--link",
        link.to_str().unwrap(),
        "--hardware-id",
        hwid,
        "--state",
        state.to_str().unwrap(),
    ];
    for f in faults {
        a.push("--fault");
        a.push(f);
    }
    let sim = Sim::start(env, &a, 1);
    (sim, link, state)
}

#[test]
fn one_board_end_to_end_then_rerun_is_already_provisioned() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "b", HWID, &[]);
    let port = link.to_str().unwrap();
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let r = &v[0];
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert_eq!(r["hardware_id"], HWID);
    check_invariants(&env, HWID, &state);
    assert_eq!(
        q(
            &env,
            &format!("SELECT model FROM devices WHERE hardware_id='{HWID}'")
        ),
        "Pico with cradle-sim"
    );
    // What the registry recorded about the link.
    let details = q(
        &env,
        "SELECT details FROM events WHERE kind='provision.passed'",
    );
    let d: serde_json::Value = serde_json::from_str(&details).unwrap();
    assert_eq!(d["device_profile"], "micropython");
    assert_eq!(d["cert_path"], "/certs/device.crt");
    assert_eq!(d["raw_paste"], true);
    // The key is on the board only: not in the registry.
    let key = board_file(&state, "/certs/device.key").unwrap();
    let key_b64: String = String::from_utf8_lossy(&key)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !env.dump().contains(&key_b64[..40]),
        "the private key reached the registry"
    );
    // The board is left at its friendly REPL, and a second run finds it done.
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert_eq!(v[0]["already_provisioned"], true, "{v:#}");
    assert_eq!(q(&env, "SELECT count(*) FROM certificates"), "1");
}

#[test]
fn csr_mode_is_refused_before_touching_the_board() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "c", HWID, &[]);
    let before = env.dump();
    let err = env.fails(
        &[
            "provision",
            "--passphrase-file",
            env.pass(),
            "--device-profile",
            "micropython",
            "--port",
            link.to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("--mode inject"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(env.dump(), before);
    assert!(board_file(&state, "/certs/device.crt").is_none());
}

#[test]
fn eight_boards_in_parallel() {
    let env = Env::with_ca();
    let states = env.path("states");
    let link = env.path("dev/rack");
    let _sim = Sim::start(
        &env,
        &[
            "--profile",
            "micropython",
            "--link",
            link.to_str().unwrap(),
            "--count",
            "8",
            "--hardware-id",
            "e66141030000",
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
    assert!(results.iter().all(|r| r["result"] == "PASS"), "{v:#}");
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices WHERE status='provisioned'"
        ),
        "8"
    );
    for i in 0..8 {
        let hwid = format!("e66141030000{i:02x}");
        check_invariants(&env, &hwid, &states.join(format!("device-{i}.json")));
    }
}

#[test]
fn watch_mode_provisions_a_board_plugged_in_later() {
    let env = Env::with_ca();
    let link = env.path("dev/late");
    let glob = format!("{}*", link.display());
    let watcher = env
        .cmd(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "1",
            "--device-profile",
            "micropython",
            "--mode",
            "inject",
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
    std::thread::sleep(Duration::from_millis(800));
    let state = env.path("late.json");
    let _sim = Sim::start(
        &env,
        &[
            "--profile",
            "micropython",
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            HWID,
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let mut watcher = watcher;
    let until = Instant::now() + Duration::from_secs(60);
    while watcher.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "watcher did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = watcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["result"], "PASS");
    assert_eq!(line["hardware_id"], HWID);
    check_invariants(&env, HWID, &state);
}

/// A board with `fault`: the first run PASSes or FAILs cleanly (never a PASS without
/// verified files), then a re-run PASSes. Returns the first run's result.
fn fault_case(fault: &str) -> serde_json::Value {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "f", HWID, &[fault]);
    let port = link.to_str().unwrap();
    let before = std::fs::read_link(&link).ok();
    let (code, v, err) = provision(&env, &[port], &[]);
    let first = v[0].clone();
    match first["result"].as_str() {
        Some("PASS") => assert_eq!(code, Some(0)),
        Some("FAIL") => {
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("FAIL"), "{err}");
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
    check_invariants(&env, HWID, &state);
    // A board that reset comes back as a new pty behind the same link: wait for the
    // link to name the new pty (a loaded machine may take a while to re-create it).
    let reset = first["result"] == "FAIL" && fault.starts_with("disconnect");
    let until = Instant::now() + Duration::from_secs(10);
    while (!link.exists() || (reset && std::fs::read_link(&link).ok() == before))
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "re-run after {fault}: {v:#}\n{err}");
    check_invariants(&env, HWID, &state);
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
fn fault_traceback_fails_cleanly_then_rerun_passes() {
    let r = fault_case("traceback");
    assert_eq!(r["result"], "FAIL", "{r:#}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("OSError: [Errno 28] ENOSPC"), "{e}");
}

#[test]
fn fault_sha_mismatch_rewrites_until_the_board_reports_the_right_sha() {
    // The first SHA-256 the board reports is wrong: the file is written again and
    // only a matching board-computed digest lets the run pass.
    let r = fault_case("hash-mismatch");
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert!(r["retries"].as_u64().unwrap() >= 1, "{r:#}");
}

#[test]
fn fault_board_reset_mid_write_fails_cleanly_then_rerun_passes() {
    let r = fault_case("disconnect-after:write:2");
    assert_eq!(r["result"], "FAIL", "{r:#}");
}

#[test]
fn fault_reset_entering_the_raw_repl() {
    fault_case("disconnect-after:hello");
}

#[test]
fn fault_garbled_bytes_fail_cleanly_or_pass_verified() {
    fault_case("corrupt:0.0001");
}

#[test]
fn fault_dropped_bytes_fail_cleanly_or_pass_verified() {
    fault_case("drop:0.0001");
}

#[test]
fn heavy_line_noise_never_passes_unverified() {
    // So much noise that a run rarely gets through: whatever happens, a board counts
    // as provisioned only with verified files.
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "n", HWID, &["corrupt:0.003"]);
    let (code, v, _) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert!(matches!(code, Some(0 | 1)), "{v:#}");
    check_invariants(&env, HWID, &state);
}

#[test]
fn fault_boot_noise_is_skipped() {
    let r = fault_case("garbage-on-boot");
    assert_eq!(r["result"], "PASS", "{r:#}");
}

/// mpremote's bin dir (.ci/run installs it; CI fails rather than skips without it).
fn mpremote_bin() -> Option<PathBuf> {
    match std::env::var_os("CRADLE_TEST_MPREMOTE_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CRADLE_TEST_MPREMOTE_BIN is not set (.ci/run installs mpremote)")
        }
        None => {
            eprintln!("skipped: CRADLE_TEST_MPREMOTE_BIN not set");
            None
        }
    }
}

fn mpremote(bin: &Path, port: &Path, args: &[&str]) -> String {
    let mut a = vec!["connect", port.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = Command::new(bin.join("mpremote"))
        .args(&a)
        .output()
        .expect("mpremote");
    assert!(
        o.status.success(),
        "mpremote {a:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn real_mpremote_copies_lists_reads_hashes_and_removes_files() {
    let Some(bin) = mpremote_bin() else { return };
    let env = Env::init();
    let (_sim, link, state) = start_board(&env, "m", HWID, &[]);
    let port = std::fs::read_link(&link).unwrap();
    // Every byte value, more than one raw-paste window and one mpremote chunk.
    let blob: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let local = env.path("blob.bin");
    std::fs::write(&local, &blob).unwrap();
    mpremote(&bin, &port, &["fs", "mkdir", ":/data"]);
    mpremote(
        &bin,
        &port,
        &["fs", "cp", local.to_str().unwrap(), ":/data/blob.bin"],
    );
    assert_eq!(board_file(&state, "/data/blob.bin").unwrap(), blob);
    let ls = mpremote(&bin, &port, &["fs", "ls", ":/data"]);
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3000", "blob.bin"]),
        "{ls}"
    );
    let sum = mpremote(&bin, &port, &["fs", "sha256sum", ":/data/blob.bin"]);
    use sha2::Digest;
    assert!(
        sum.contains(&hex::encode(sha2::Sha256::digest(&blob))),
        "{sum}"
    );
    let back = env.path("back.bin");
    mpremote(
        &bin,
        &port,
        &["fs", "cp", ":/data/blob.bin", back.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(&back).unwrap(),
        blob,
        "byte-identical read-back"
    );
    // cat prints text as the board cooks it (CRLF).
    let text = env.path("t.txt");
    std::fs::write(&text, "line one\nline two\n").unwrap();
    let cat = mpremote(
        &bin,
        &port,
        &[
            "fs",
            "cp",
            text.to_str().unwrap(),
            ":t.txt",
            "+",
            "fs",
            "cat",
            ":t.txt",
        ],
    );
    assert!(cat.ends_with("line one\r\nline two\r\n"), "{cat:?}");
    mpremote(&bin, &port, &["fs", "rm", ":/data/blob.bin"]);
    assert!(board_file(&state, "/data/blob.bin").is_none());
    let ls = mpremote(&bin, &port, &["fs", "ls", ":/"]);
    assert!(
        ls.contains("data/") && ls.contains("t.txt") && !ls.contains("blob"),
        "{ls}"
    );
}

#[test]
fn real_mpremote_reads_back_what_cradle_provisioned() {
    let Some(bin) = mpremote_bin() else { return };
    let env = Env::with_ca();
    let (_sim, link, _state) = start_board(&env, "p", HWID, &[]);
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let port = std::fs::read_link(&link).unwrap();
    let got = env.path("got.crt");
    mpremote(
        &bin,
        &port,
        &["fs", "cp", ":/certs/device.crt", got.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        active_cert_pem(&env, HWID)
    );
    let ls = mpremote(&bin, &port, &["fs", "ls", ":/certs"]);
    for f in ["device.key", "device.crt", "chain.pem"] {
        assert!(ls.contains(f), "{ls}");
    }
}

#[test]
fn decommission_wipes_the_files_and_records_a_read_back_wipe() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "w", HWID, &[]);
    let port = link.to_str().unwrap();
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let serial = v[0]["serial"].as_str().unwrap().to_string();
    let o = env.run(&[
        "--json",
        "decommission",
        &serial,
        "--passphrase-file",
        env.pass(),
        "--wipe-port",
        port,
        "--wipe-device-profile",
        "micropython",
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{j:#}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(j["devices"][0]["result"], "decommissioned", "{j:#}");
    assert_eq!(j["devices"][0]["wipe"], "read-back", "{j:#}");
    for f in ["/certs/device.key", "/certs/device.crt", "/certs/chain.pem"] {
        assert!(board_file(&state, f).is_none(), "{f} is still on the board");
    }
    assert_eq!(
        q(&env, "SELECT kind || ' ' || level || ' ' || coalesce(CAST(attestation_verified AS TEXT), 'none') FROM wipes"),
        "read-back clear none"
    );
    assert!(q(&env, "SELECT verification FROM wipes").contains("ENOENT"));
    // The audit counts a read-back wipe as a wipe; the certificate of sanitization says
    // how it was verified.
    let a = env.run(&["--json", "audit"]);
    let audit: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let checks: Vec<&str> = audit["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert!(
        !checks.contains(&"decommissioned-without-wipe"),
        "{audit:#}"
    );
    let rep = env.json(&["report", "sanitization", &serial]);
    assert_eq!(rep["sanitization"]["record_kind"], "read-back", "{rep:#}");
    assert!(rep["attestation"].is_null(), "{rep:#}");
}

#[test]
fn file_paths_are_settable_and_checked() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "p", HWID, &[]);
    let port = link.to_str().unwrap();
    let paths = [
        "--mp-key-path",
        "/flash/tls/dev key.pem",
        "--mp-cert-path",
        "/flash/tls/dev.crt",
        "--mp-chain-path",
        "/flash/ca.pem",
    ];
    let before = env.dump();
    for bad in [
        &["--mp-key-path", "certs/device.key"][..],
        &["--mp-cert-path", "/certs/../x.crt"],
        &["--mp-chain-path", "/certs/device.crt"],
        &["--mp-cert-path", "/certs/a\tb"],
    ] {
        let mut a = vec![
            "provision",
            "--passphrase-file",
            env.pass(),
            "--device-profile",
            "micropython",
            "--mode",
            "inject",
            "--port",
            port,
        ];
        a.extend_from_slice(bad);
        let err = env.fails(&a, 3);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("--mp-"), "{err}");
    }
    // The paths belong to the micropython profile only.
    let err = env.fails(
        &[
            "provision",
            "--passphrase-file",
            env.pass(),
            "--port",
            port,
            "--mp-cert-path",
            "/x.crt",
        ],
        2,
    );
    assert!(err.contains("micropython device profile only"), "{err}");
    assert_eq!(env.dump(), before, "a refused run changed the registry");
    let (code, v, err) = provision(&env, &[port], &paths);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let cert = board_file(&state, "/flash/tls/dev.crt").expect("certificate at the given path");
    assert_eq!(String::from_utf8_lossy(&cert), active_cert_pem(&env, HWID));
    assert!(board_file(&state, "/flash/tls/dev key.pem").is_some());
    assert!(board_file(&state, "/flash/ca.pem").is_some());
    assert!(board_file(&state, "/certs/device.crt").is_none());
    // The wipe removes the files at the same paths.
    let serial = v[0]["serial"].as_str().unwrap().to_string();
    let mut a = vec![
        "--json",
        "decommission",
        &serial,
        "--passphrase-file",
        env.pass(),
        "--wipe-port",
        port,
        "--wipe-device-profile",
        "micropython",
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ];
    a.extend_from_slice(&paths);
    let o = env.run(&a);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "/flash/tls/dev key.pem",
        "/flash/tls/dev.crt",
        "/flash/ca.pem",
    ] {
        assert!(board_file(&state, f).is_none(), "{f} is still on the board");
    }
}

#[test]
fn wipe_refuses_another_board_on_the_port() {
    let env = Env::with_ca();
    let (_sim, link, _state) = start_board(&env, "a", HWID, &[]);
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let serial = v[0]["serial"].as_str().unwrap().to_string();
    // Another provisioned board (same paths) is on the port the wipe is pointed at.
    let other = Env::with_ca();
    let (_sim2, link2, state2) = start_board(&other, "o", "0011223344556677", &[]);
    let (code, v, err) = provision(&other, &[link2.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let o = env.run(&[
        "--json",
        "decommission",
        &serial,
        "--passphrase-file",
        env.pass(),
        "--wipe-port",
        link2.to_str().unwrap(),
        "--wipe-device-profile",
        "micropython",
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("wrong device on the port"), "{stderr}");
    assert!(
        board_file(&state2, "/certs/device.key").is_some(),
        "the other board was wiped"
    );
    assert_eq!(q(&env, "SELECT count(*) FROM wipes"), "0");
}

#[test]
fn board_without_raw_paste_gets_plain_raw_mode() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "r", HWID, &["no-raw-paste"]);
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    check_invariants(&env, HWID, &state);
    let details = q(
        &env,
        "SELECT details FROM events WHERE kind='provision.passed'",
    );
    let d: serde_json::Value = serde_json::from_str(&details).unwrap();
    assert_eq!(d["raw_paste"], false, "{d:#}");
    // mpremote falls back the same way.
    let Some(bin) = mpremote_bin() else { return };
    let port = std::fs::read_link(&link).unwrap();
    let blob: Vec<u8> = (0..700u32).map(|i| (i * 13 % 256) as u8).collect();
    let local = env.path("blob.bin");
    std::fs::write(&local, &blob).unwrap();
    mpremote(
        &bin,
        &port,
        &["fs", "cp", local.to_str().unwrap(), ":/b.bin"],
    );
    assert_eq!(board_file(&state, "/b.bin").unwrap(), blob);
}

#[test]
fn a_board_that_never_stops_talking_fails_with_one_clear_line() {
    let env = Env::with_ca();
    let (_sim, link, state) = start_board(&env, "l", HWID, &["long-line"]);
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{v:#}\n{err}");
    let e = v[0]["error"].as_str().unwrap();
    assert!(e.contains("more than 65536 bytes"), "{e}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    check_invariants(&env, HWID, &state);
    assert_eq!(q(&env, "SELECT count(*) FROM certificates"), "0");
}
