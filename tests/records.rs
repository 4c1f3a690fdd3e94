//! Records you can trust (issue 12, part A): no false alarms while stations write,
//! read-only registries, no forgotten certificates, lifecycle-safe `device set`,
//! output files that cannot replace the CA, a closed pipe is success.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Env;

/// A home with a CA and `n` registered devices DEV-001.. from `identity batch`.
fn fleet(n: usize) -> Env {
    let e = Env::with_ca();
    e.ok(&[
        "identity",
        "batch",
        "--count",
        &n.to_string(),
        "--serial-pattern",
        "DEV-{seq:03}",
        "--bundle",
        e.path("bundle.jsonl").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    e
}

#[test]
fn log_verify_and_audit_raise_no_false_alarm_while_a_station_writes() {
    let e = Arc::new(fleet(2));
    let stop = Arc::new(AtomicBool::new(false));
    // Two writers, as two stations would: every write appends an event and moves the
    // chain head. Before the readers used one snapshot, the head and the events were
    // read apart and most runs reported "the newest event(s) N..M were deleted".
    let writers: Vec<_> = ["DEV-001", "DEV-002"]
        .into_iter()
        .map(|dev| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    e.ok(&["device", "set", dev, &format!("notes=n{i}")]);
                }
                i
            })
        })
        .collect();
    let mut false_alarms = Vec::new();
    let mut runs = 0;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        for args in [&["log", "verify"][..], &["audit"][..]] {
            let o = e.run(args);
            runs += 1;
            if o.status.code() != Some(0) {
                false_alarms.push(format!(
                    "{args:?} exit {:?}: {}{}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 10, "the writers barely ran ({writes} writes)");
    assert!(
        false_alarms.is_empty(),
        "{} false alarm(s) in {runs} runs during {writes} writes:\n{}",
        false_alarms.len(),
        false_alarms.join("\n")
    );
}

/// Runs cradle on `e`'s home as an unprivileged user (nobody), who may read the
/// registry but not write it or its directory: what an auditor with a read-only copy
/// has. Works as root (CI and this machine); `None` where setpriv cannot switch users.
fn as_reader(e: &Env, args: &[&str]) -> Option<std::process::Output> {
    use std::os::unix::fs::PermissionsExt;
    if unsafe_geteuid() != 0 {
        return None;
    }
    // Let nobody traverse and read the home (a test home; nothing here is secret).
    for p in walk(e.dir.path()) {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_cradle"))
        .arg("--home")
        .arg(&e.home)
        .args(args)
        .env_remove("CRADLE_HOME")
        .output()
        .unwrap();
    Some(o)
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_reader_who_may_not_write_reads_and_a_writer_is_refused_naming_the_file() {
    let e = fleet(3);
    let reg = e.registry();
    for args in [
        &["device", "list", "--json"][..],
        &["device", "show", "DEV-001"],
        &["status"],
        &["log", "verify"],
    ] {
        let Some(o) = as_reader(&e, args) else {
            eprintln!("skipping: not root, cannot run as another user");
            return;
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "{args:?} exit {:?}: {err}",
            o.status.code()
        );
        // Said once when it had to fall back, naming nothing secret.
        assert!(err.lines().count() <= 1, "{args:?}: {err}");
    }
    let o = as_reader(&e, &["device", "set", "DEV-001", "notes=x"]).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains(reg.to_str().unwrap()), "names the file: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Nothing was written: the registry as root still has no such note.
    assert!(!e
        .ok(&["device", "show", "DEV-001", "--json"])
        .contains("\"x\""));
}

#[test]
fn no_output_replaces_a_file_of_the_home_or_a_private_key_by_any_name() {
    use std::os::unix::fs::PermissionsExt;
    let e = fleet(2);
    let root_key = e.home.join("ca/root.key");
    let before = std::fs::read(&root_key).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root_key), 0o600);
    // Other spellings of the same file: a symlink, a hard link, a `..` path.
    let sym = e.path("looks-harmless.csv");
    std::os::unix::fs::symlink(&root_key, &sym).unwrap();
    let hard = e.path("hard.csv");
    std::fs::hard_link(&root_key, &hard).unwrap();
    let dotted = e.home.join("templates/../ca/root.key");
    let bad_csv = e.path("bad.csv");
    std::fs::write(&bad_csv, "serial,mac\nX-1,zz\n").unwrap();
    let issuing_key = e.home.join("ca/issuing.key");
    for target in [&root_key, &sym, &hard, &dotted, &issuing_key] {
        let t = target.to_str().unwrap();
        for args in [
            vec!["inventory", "export", "-o", t],
            vec!["report", "fleet", "-o", t],
            vec![
                "inventory",
                "import",
                bad_csv.to_str().unwrap(),
                "--errors",
                t,
            ],
        ] {
            let o = e.run(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_ne!(o.status.code(), Some(0), "{args:?}");
            assert!(err.contains("refusing to write over"), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read(&root_key).unwrap(), before);
    assert_eq!(mode(&root_key), 0o600);
    // A device key written by `identity issue` is a private key file wherever it lives.
    let out = e.path("out");
    e.ok(&[
        "identity",
        "issue",
        "DEV-001",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let dev_key = out.join("DEV-001.key");
    let key_before = std::fs::read(&dev_key).unwrap();
    let o = e.run(&["inventory", "export", "-o", dev_key.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(&dev_key).unwrap(), key_before);
    // An ordinary existing output file is still replaced.
    let csv = e.path("devices.csv");
    std::fs::write(&csv, "old").unwrap();
    e.ok(&["inventory", "export", "-o", csv.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("serial"));
}

/// The certificate a simulated device holds (its saved state).
fn held_cert(state: &std::path::Path) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    hex::decode(v["slots"]["cert"]["data"].as_str().expect("cert slot")).unwrap()
}

#[test]
fn a_certificate_left_on_a_device_by_a_failed_provisioning_is_revoked_with_it() {
    let e = Env::with_ca();
    let state = e.path("dev.json");
    let link = e.path("dev/x");
    let mut sim = common::Sim::start(
        &e,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-LEFT",
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "reject-lock",
        ],
        1,
    );
    let o = e.run(&[
        "provision",
        "--port",
        link.to_str().unwrap(),
        "--baud",
        common::SIM_BAUD,
        "--timeout",
        "1",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    sim.stop();
    // The device holds a CA-signed certificate the registry records as `unused`.
    let der = held_cert(&state);
    let cert = e.path("left.pem");
    std::fs::write(state.with_extension("der"), &der).unwrap();
    let (ok, msg) = common::openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        state.with_extension("der").to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");
    assert_eq!(
        e.sql("SELECT status FROM certificates").trim(),
        "unused",
        "precondition: the failed run left an unused certificate"
    );

    // Retried on a healthy device, it is provisioned; the first run's certificate stays
    // unused and valid, and once older than --stuck-after the audit asks for its
    // revocation.
    let mut sim = common::Sim::start(
        &e,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-LEFT",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    e.ok(&[
        "provision",
        "--port",
        link.to_str().unwrap(),
        "--baud",
        common::SIM_BAUD,
        "--passphrase-file",
        e.pass(),
    ]);
    sim.stop();
    assert_eq!(
        e.sql("SELECT status FROM certificates ORDER BY id").trim(),
        "unused\nactive"
    );
    let stale = |days: &str| {
        let o = e.run(&[
            "audit",
            "--json",
            "--check",
            "unused-cert-stale",
            "--stuck-after",
            days,
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["findings"].as_array().unwrap().clone()
    };
    assert!(
        stale("7").is_empty(),
        "a fresh unused certificate is not yet a finding"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let f = stale("0");
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains("still unused and valid"),
        "{f:?}"
    );

    e.ok(&[
        "revoke",
        "HW-LEFT",
        "--reason",
        "cessationOfOperation",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(
        e.sql("SELECT status FROM certificates").trim(),
        "revoked\nrevoked"
    );
    // Relying parties see it: the CRL lists it and openssl refuses it.
    let crl = e.home.join("ca/crl.pem");
    let root = e.home.join("ca/root.pem");
    let chain = e.home.join("ca/chain.pem");
    let (ok, out) = common::openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        crl.to_str().unwrap(),
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("revoked"), "{out}");
    let o = e.run(&["identity", "verify", cert.to_str().unwrap()]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "identity verify accepted a revoked certificate"
    );
}

#[test]
fn device_set_status_keeps_the_lifecycle_promises_of_the_dedicated_commands() {
    let e = fleet(1); // DEV-001 with an active certificate
    let csv = e.path("bare.csv");
    std::fs::write(&csv, "serial\nBARE-1\n").unwrap();
    e.ok(&["inventory", "import", csv.to_str().unwrap()]);
    // No certificate: not provisioned by hand (deployed needs provisioned first).
    let err = e.fails(&["device", "set", "BARE-1", "status=provisioned"], 7);
    assert!(err.contains("no active certificate"), "{err}");
    // An active certificate: retiring by hand would leave it off the CRL.
    let err = e.fails(&["device", "set", "DEV-001", "status=retired"], 7);
    assert!(
        err.contains("not revoked") && err.contains("cradle revoke"),
        "{err}"
    );
    // Only decommission decommissions, even from retired.
    e.ok(&["revoke", "DEV-001", "--passphrase-file", e.pass()]);
    e.ok(&["device", "set", "DEV-001", "status=retired"]);
    let err = e.fails(&["device", "set", "DEV-001", "status=decommissioned"], 7);
    assert!(err.contains("only `cradle decommission`"), "{err}");
    assert!(e.ok(&["device", "show", "DEV-001"]).contains("retired"));
    // An override is possible and recorded as one.
    e.ok(&[
        "device",
        "set",
        "BARE-1",
        "status=provisioned",
        "--force",
        "--reason",
        "bench unit, no identity",
    ]);
    let hist = e.ok(&["device", "history", "BARE-1", "--json"]);
    assert!(
        hist.contains("\"forced\": true") && hist.contains("bench unit"),
        "{hist}"
    );
    // ...and the audit keeps flagging a device in service that cannot authenticate.
    let o = e.run(&["audit", "--json", "--check", "in-service-without-cert"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = v["findings"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{v}");
    assert_eq!(f[0]["device"], "BARE-1", "{v}");
    assert!(
        f[0]["message"]
            .as_str()
            .unwrap()
            .contains("provisioned, but has no active certificate"),
        "{v}"
    );
    // Forced all the way to decommissioned with a live certificate: the audit says so.
    let e = fleet(1);
    for to in ["retired", "decommissioned"] {
        e.ok(&[
            "device",
            "set",
            "DEV-001",
            &format!("status={to}"),
            "--force",
            "--reason",
            "test",
        ]);
    }
    let o = e.run(&["audit", "--json", "--check", "cert-outlives-device"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &v["findings"].as_array().unwrap()[0];
    assert_eq!(f["check"], "cert-outlives-device", "{v}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("active, not revoked"),
        "{v}"
    );
    assert_ne!(o.status.code(), Some(0));
}

/// Bundle lines after the header: (serial, fingerprint).
fn bundle_lines(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(head["cradle_bundle"], 1);
    lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["serial"].as_str().unwrap().to_string(),
                v["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every device of the registry has its one active certificate in the bundle, and the
/// bundle holds nothing else: no certificate outside the registry, none missing.
fn assert_bundle_matches_registry(e: &Env, bundle: &std::path::Path, n: usize) {
    let mut lines = bundle_lines(bundle);
    lines.sort();
    let active = e.sql(
        "SELECT d.serial || '|' || c.fingerprint FROM devices d JOIN certificates c ON c.device_id = d.id WHERE c.status = 'active' ORDER BY d.serial",
    );
    let active: Vec<(String, String)> = active
        .lines()
        .map(|l| {
            let (s, f) = l.split_once('|').unwrap();
            (s.to_string(), f.to_string())
        })
        .collect();
    assert_eq!(lines.len(), n, "bundle lines");
    assert_eq!(lines, active, "bundle and registry agree");
}

const BATCH: &[&str] = &[
    "identity",
    "batch",
    "--count",
    "1500",
    "--serial-pattern",
    "K-{seq:05}",
    "--bundle",
    "b.jsonl",
    "--batch",
    "B1",
];

fn batch_args<'a>(e: &'a Env, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = BATCH.to_vec();
    a.extend_from_slice(extra);
    a.extend_from_slice(&["--passphrase-file", e.pass()]);
    a
}

#[test]
fn a_batch_killed_after_a_commit_is_finished_by_the_same_command() {
    // The state a SIGKILL between a chunk's commit and its bundle write leaves: the
    // registry holds 1500 devices, the bundle only the first 1024 and a torn line.
    let e = Env::with_ca();
    e.ok(&batch_args(&e, &[]));
    let bundle = e.path("b.jsonl");
    let text = std::fs::read(&bundle).unwrap();
    let mut cut = 0;
    for (i, _) in text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .take(1 + 1024)
    {
        cut = i + 1;
    }
    std::fs::write(&bundle, &text[..cut + 300]).unwrap(); // + a torn line
    let v = e.json(&batch_args(&e, &["--json"]));
    assert_eq!(v["resumed"]["already_delivered"], 1024, "{v:#}");
    assert_eq!(
        v["resumed"]["reissued"].as_array().unwrap().len(),
        476,
        "{v:#}"
    );
    assert_eq!(v["issued"], 476, "{v:#}");
    assert_bundle_matches_registry(&e, &bundle, 1500);
    // The certificates whose keys died with the first run are revoked, on the CRL.
    assert_eq!(
        e.sql("SELECT count(*), revocation_reason FROM certificates WHERE status = 'revoked' GROUP BY revocation_reason")
            .trim(),
        "476|superseded"
    );
    let crl = e.home.join("ca/crl.pem");
    let (ok, text) = common::openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("Serial Number:").count(), 476, "CRL entries");
    // Once finished, the same command is a no-op that still succeeds.
    let v = e.json(&batch_args(&e, &["--json"]));
    assert_eq!(v["issued"], 0, "{v:#}");
    assert_eq!(v["resumed"]["already_delivered"], 1500, "{v:#}");
    assert_bundle_matches_registry(&e, &bundle, 1500);
    let o = e.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_batch_killed_at_random_leaves_no_certificate_outside_the_registry() {
    let e = Env::with_ca();
    let bundle = e.path("b.jsonl");
    for wait_ms in [0u64, 150, 400] {
        let mut child = e.cmd(&batch_args(&e, &[])).spawn().unwrap();
        // Right after the bundle grows past its header (a chunk delivered), or at once.
        let t = std::time::Instant::now();
        while wait_ms > 0 && t.elapsed() < std::time::Duration::from_secs(20) {
            let len = std::fs::metadata(&bundle).map(|m| m.len()).unwrap_or(0);
            if len > 5000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the moment: every certificate that left the process is recorded.
        if bundle.exists() {
            let lines = bundle_lines_lenient(&bundle);
            for (s, fp) in &lines {
                assert_eq!(
                    e.sql(&format!(
                        "SELECT count(*) FROM certificates c JOIN devices d ON d.id = c.device_id WHERE d.serial = '{s}' AND c.fingerprint = '{fp}'"
                    ))
                    .trim(),
                    "1",
                    "{s} is in the bundle but not in the registry"
                );
            }
        }
    }
    // The same command finishes the job.
    e.ok(&batch_args(&e, &[]));
    assert_bundle_matches_registry(&e, &bundle, 1500);
}

/// As `bundle_lines`, skipping a torn header or last line.
fn bundle_lines_lenient(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["serial"].as_str().unwrap().to_string(),
                v["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_rerun_with_other_outputs_is_refused_naming_the_fix() {
    let e = Env::with_ca();
    e.ok(&batch_args(&e, &[]));
    let before = e.dump();
    // Another bundle: the recorded devices are not its leftovers; nothing is revoked.
    let mut a = batch_args(&e, &[]);
    let i = a.iter().position(|x| *x == "b.jsonl").unwrap();
    a[i] = "other.jsonl";
    let err = e.fails(&a, 7);
    assert!(
        err.contains("the --bundle/--out of the first run") || err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains("reconcile"), "{err}");
    // Another batch label: not this batch's devices.
    let mut a = batch_args(&e, &[]);
    let i = a.iter().position(|x| *x == "B1").unwrap();
    a[i] = "B2";
    let err = e.fails(&a, 7);
    assert!(err.contains("belongs to batch B1"), "{err}");
    assert_eq!(e.dump(), before, "nothing written");
}

#[test]
fn a_batch_into_a_directory_resumes_from_what_is_on_disk() {
    let e = Env::with_ca();
    let args = |e: &Env| {
        let mut v: Vec<String> = [
            "identity",
            "batch",
            "--count",
            "20",
            "--serial-pattern",
            "D-{seq:03}",
            "--out",
            "keys",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["--json".into(), "--passphrase-file".into(), e.pass().into()]);
        v
    };
    let a = args(&e);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    e.ok(&a);
    // As if killed while writing: the last three devices' files never made it, one
    // certificate file without its key.
    for s in ["D-017", "D-018"] {
        std::fs::remove_file(e.path(&format!("keys/{s}.key"))).unwrap();
        std::fs::remove_file(e.path(&format!("keys/{s}.pem"))).unwrap();
    }
    std::fs::remove_file(e.path("keys/D-019.key")).unwrap();
    let v = e.json(&a);
    assert_eq!(v["resumed"]["already_delivered"], 17, "{v:#}");
    assert_eq!(v["issued"], 3, "{v:#}");
    for s in ["D-017", "D-018", "D-019"] {
        let key = e.path(&format!("keys/{s}.key"));
        let pem = e.path(&format!("keys/{s}.pem"));
        // The new key matches the new certificate.
        let (ok, k) = common::openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        assert!(ok, "{k}");
        let (ok, c) = common::openssl(&["x509", "-in", pem.to_str().unwrap(), "-noout", "-pubkey"]);
        assert!(ok, "{c}");
        assert_eq!(k, c, "{s}: key and certificate belong together");
    }
    assert_eq!(
        e.sql("SELECT count(*) FROM certificates WHERE status = 'revoked'")
            .trim(),
        "3"
    );
}

#[test]
fn reconcile_records_certificates_our_ca_signed_that_the_registry_lost() {
    // A registry rolled back (a -wal deleted after a crash, a restored backup) no longer
    // knows certificates that left in a bundle: reconcile brings them back as unused so
    // that revoke reaches them.
    let e = Env::with_ca();
    // The roll-back is done by copying the SQLite files back; a PostgreSQL registry is
    // rolled back by its own backups, not from here.
    if e.backend() == common::Backend::Postgres {
        return;
    }
    let reg = e.registry();
    let files = |p: &std::path::Path| {
        ["", "-wal", "-shm"].map(|s| std::path::PathBuf::from(format!("{}{s}", p.display())))
    };
    let backup = e.path("backup.db");
    for (from, to) in files(&reg).iter().zip(files(&backup).iter()) {
        if from.exists() {
            std::fs::copy(from, to).unwrap();
        }
    }
    e.ok(&[
        "identity",
        "batch",
        "--count",
        "30",
        "--serial-pattern",
        "R-{seq:03}",
        "--bundle",
        "lost.jsonl",
        "--passphrase-file",
        e.pass(),
    ]);
    for (from, to) in files(&backup).iter().zip(files(&reg).iter()) {
        let _ = std::fs::remove_file(to);
        if from.exists() {
            std::fs::copy(from, to).unwrap();
        }
    }
    assert_eq!(e.sql("SELECT count(*) FROM certificates").trim(), "0");

    let before = e.dump();
    let o = e.run(&[
        "identity",
        "reconcile",
        "--bundle",
        "lost.jsonl",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["imported"], 30, "{v:#}");
    assert_eq!(v["findings"][0]["result"], "would-import", "{v:#}");
    assert_eq!(e.dump(), before, "a dry run writes nothing");

    let o = e.run(&["identity", "reconcile", "--bundle", "lost.jsonl"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("30 imported as unused"), "{text}");
    assert_eq!(
        e.sql("SELECT count(*), status FROM certificates GROUP BY status")
            .trim(),
        "30|unused"
    );
    assert_eq!(
        e.sql("SELECT count(*) FROM events WHERE kind = 'identity.reconciled'")
            .trim(),
        "30"
    );
    // Now revocable, and on the CRL.
    e.ok(&[
        "revoke",
        "R-007",
        "--reason",
        "superseded",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(
        e.sql("SELECT c.status FROM certificates c JOIN devices d ON d.id = c.device_id WHERE d.serial = 'R-007'").trim(),
        "revoked"
    );
    // A second run finds everything recorded: exit 0, nothing written.
    let before = e.dump();
    let v = e.json(&["identity", "reconcile", "--bundle", "lost.jsonl"]);
    assert_eq!(v["recorded"], 30, "{v:#}");
    assert_eq!(e.dump(), before);
    // Certificates of another CA are reported, never recorded.
    std::fs::create_dir(e.path("foreign")).unwrap();
    let (ok, err) = common::openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        e.path("foreign/X-1.key").to_str().unwrap(),
        "-subj",
        "/CN=X-1",
        "-days",
        "2",
        "-out",
        e.path("foreign/X-1.pem").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let o = e.run(&["identity", "reconcile", "--dir", "foreign", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["foreign"], 1, "{v:#}");
    assert_eq!(e.dump(), before, "a foreign certificate is not recorded");
}

/// Checkpoints the WAL into the file and returns the byte range of page `page`.
fn page_range(e: &Env, page: usize) -> std::ops::Range<usize> {
    e.sql("PRAGMA wal_checkpoint(TRUNCATE);");
    let size: usize = e.sql("PRAGMA page_size;").trim().parse().unwrap();
    (page - 1) * size..page * size
}

fn serial_index_page(e: &Env) -> usize {
    e.sql("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_devices_1';")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_damaged_registry_is_found_by_the_audit_and_refused_by_writers() {
    // A flipped byte inside the serial index: the row is there, its index entry is
    // not (device show would say "no device", an import would create a duplicate).
    let e = fleet(3);
    let range = page_range(&e, serial_index_page(&e));
    let mut bytes = std::fs::read(e.registry()).unwrap();
    let page = &mut bytes[range.clone()];
    let at = page
        .windows(7)
        .position(|w| w == b"DEV-002")
        .expect("the serial is in its index page");
    page[at + 6] = b'X';
    std::fs::write(e.registry(), &bytes).unwrap();
    let o = e.run(&["audit", "--json", "--check", "registry-integrity"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let msgs: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("sqlite_autoindex_devices_1")),
        "{v:#}"
    );

    // Damage to a page's structure: writers refuse to write into it (exit 4, naming
    // the file), before changing anything.
    let e = fleet(3);
    let range = page_range(&e, serial_index_page(&e));
    let mut bytes = std::fs::read(e.registry()).unwrap();
    bytes[range.start] = 0x00; // not a b-tree page type
    std::fs::write(e.registry(), &bytes).unwrap();
    let err = e.fails(&["device", "set", "DEV-001", "notes=x"], 4);
    assert!(
        err.contains("fails SQLite's quick check") && err.contains("registry.db"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(e.registry()).unwrap(),
        bytes,
        "nothing written"
    );
    let o = e.run(&["audit", "--json", "--check", "registry-integrity"]);
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn a_damaged_row_is_a_registry_error_not_bad_input() {
    let e = fleet(2);
    e.sql("PRAGMA ignore_check_constraints = 1; UPDATE devices SET status = 'zzz' WHERE serial = 'DEV-001';");
    for args in [
        &["status"][..],
        &["device", "show", "DEV-001"],
        &["device", "list"],
    ] {
        let err = e.fails(args, 4);
        assert!(
            err.contains("registry row is damaged")
                && err.contains("'zzz'")
                && err.contains("cradle audit"),
            "{args:?}: {err}"
        );
    }
    let o = e.run(&["audit", "--json", "--check", "registry-integrity"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_certificate_unrevoked_behind_cradles_back_is_found_from_the_log() {
    let e = fleet(2);
    e.ok(&[
        "revoke",
        "DEV-001",
        "--reason",
        "keyCompromise",
        "--passphrase-file",
        e.pass(),
    ]);
    let check = |e: &Env| {
        let o = e.run(&["audit", "--json", "--check", "cert-status-vs-log"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v["findings"].as_array().unwrap().clone())
    };
    assert_eq!(check(&e).0, Some(0), "a clean registry agrees with its log");
    // A script makes the compromised certificate valid again, and revokes another
    // one without a trace in the log.
    e.sql("UPDATE certificates SET status = 'active', revoked_at = NULL, revocation_reason = NULL WHERE device_id = (SELECT id FROM devices WHERE serial = 'DEV-001');
           UPDATE certificates SET status = 'revoked', revoked_at = '2026-01-01T00:00:00Z' WHERE device_id = (SELECT id FROM devices WHERE serial = 'DEV-002');");
    let (code, f) = check(&e);
    assert_eq!(code, Some(1));
    let msgs: Vec<String> = f
        .iter()
        .map(|x| {
            format!(
                "{} {}",
                x["device"].as_str().unwrap(),
                x["message"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with("DEV-001")
            && msgs[0].contains("is active, but the event log revoked it"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("DEV-002") && msgs[1].contains("has no revocation of it"),
        "{msgs:?}"
    );
}
