//! Revocation, CRLs, decommissioning and certificates of sanitization, through the
//! real binary, a real SQLite registry and OpenSSL.

mod common;

use common::{openssl, Env};
use std::path::Path;

/// A home with a CA and `n` devices D-0001.. with host-made identities; returns the
/// bundle lines (serial -> certificate PEM).
fn fleet(n: usize) -> (Env, Vec<(String, String)>) {
    let e = Env::with_ca();
    let bundle = e.path("bundle.jsonl");
    e.ok(&[
        "identity",
        "batch",
        "--count",
        &n.to_string(),
        "--serial-pattern",
        "D-{seq:04}",
        "--bundle",
        bundle.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let lines = std::fs::read_to_string(&bundle)
        .unwrap()
        .lines()
        .skip(1) // the bundle's header line (chain, profile)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["serial"].as_str().unwrap().to_string(),
                v["cert_pem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    std::fs::remove_file(&bundle).unwrap();
    (e, lines)
}

fn count(e: &Env, sql: &str) -> i64 {
    e.sql(sql).trim().parse().unwrap()
}

fn dev_count(e: &Env, serial: &str, sql_where: &str) -> i64 {
    count(
        e,
        &format!(
            "SELECT COUNT(*) FROM events WHERE device_id = (SELECT id FROM devices WHERE serial = '{serial}') AND {sql_where}"
        ),
    )
}

fn cert_serial(e: &Env, serial: &str) -> String {
    e.sql(&format!(
        "SELECT upper(serial_hex) FROM certificates WHERE device_id = (SELECT id FROM devices WHERE serial = '{serial}') ORDER BY id DESC LIMIT 1"
    ))
    .trim()
    .to_string()
}

fn crl_number(text: &str) -> u64 {
    let i = text.find("X509v3 CRL Number:").expect("CRL number present");
    text[i..].lines().nth(1).unwrap().trim().parse().unwrap()
}

fn manual<'a>(e: &'a Env, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "decommission",
        "--wipe-method",
        "purge",
        "--wipe-tool",
        "nwipe",
        "--wipe-tool-version",
        "0.34",
        "--verified-by",
        "QA Lead",
        "--verification",
        "full read-back",
        "--technician",
        "T. Tech",
        "--location",
        "Lab 2",
        "--destination",
        "recycling",
        "--media-type",
        "MCU flash",
        "--passphrase-file",
        e.pass(),
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn crl_verifies_with_openssl_lists_every_revocation_and_rejects_revoked_certs() {
    let (e, certs) = fleet(4);
    let crl = e.home.join("ca/crl.pem");
    e.ok(&[
        "revoke",
        "D-0001",
        "--reason",
        "key-compromise",
        "--passphrase-file",
        e.pass(),
    ]);
    let first = openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]);
    assert!(first.0, "{}", first.1);
    e.ok(&[
        "revoke",
        "D-0002",
        "--reason",
        "SUPERSEDED",
        "--passphrase-file",
        e.pass(),
    ]);
    e.ok(&[
        "revoke",
        "D-0004",
        "--reason",
        "aACompromise",
        "--passphrase-file",
        e.pass(),
    ]);
    let out = e.path("crl-out.pem");
    let j = e.json(&[
        "ca",
        "crl",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(j["crl"]["entries"], 3);

    let issuing = e.home.join("ca/issuing.pem");
    let root = e.home.join("ca/root.pem");
    for f in [&crl, &out] {
        let (ok, msg) = openssl(&[
            "crl",
            "-in",
            f.to_str().unwrap(),
            "-noout",
            "-verify",
            "-CAfile",
            issuing.to_str().unwrap(),
        ]);
        assert!(ok && msg.contains("verify OK"), "{msg}");
    }
    let (ok, text) = openssl(&["crl", "-in", out.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok, "{text}");
    for (serial, reason) in [
        ("D-0001", "Key Compromise"),
        ("D-0002", "Superseded"),
        ("D-0004", "AA Compromise"),
    ] {
        let s = cert_serial(&e, serial);
        let at = text
            .find(&format!("Serial Number: {s}"))
            .unwrap_or_else(|| panic!("{s} missing:\n{text}"));
        let entry: String = text[at..].lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(entry.contains(reason), "{serial}: {entry}");
    }
    assert!(!text.contains(&format!("Serial Number: {}", cert_serial(&e, "D-0003"))));
    // CRL numbers increase: 1 (first revoke), 2, 3, then 4 from `ca crl`.
    assert_eq!(crl_number(&first.1), 1);
    assert_eq!(crl_number(&text), 4);
    // The authority key identifier is the issuing CA's subject key identifier.
    let (_, ca_text) = openssl(&["x509", "-in", issuing.to_str().unwrap(), "-noout", "-text"]);
    let ski = ca_text
        .lines()
        .skip_while(|l| !l.contains("Subject Key Identifier"))
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert!(text.contains("Authority Key Identifier"), "{text}");
    assert!(text.contains(&ski), "AKI {ski} not in:\n{text}");

    // DER output reads back with OpenSSL too.
    let der = e.path("crl.der");
    e.ok(&[
        "ca",
        "crl",
        "--out",
        der.to_str().unwrap(),
        "--der",
        "--passphrase-file",
        e.pass(),
    ]);
    let (ok, msg) = openssl(&[
        "crl",
        "-in",
        der.to_str().unwrap(),
        "-inform",
        "DER",
        "-noout",
        "-verify",
        "-CAfile",
        issuing.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");

    // openssl verify -crl_check: revoked is rejected, unrevoked accepted.
    for (serial, pem) in &certs {
        let p = e.path(&format!("{serial}.pem"));
        std::fs::write(&p, pem).unwrap();
        let (ok, msg) = openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl.to_str().unwrap(),
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            issuing.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        if serial == "D-0003" {
            assert!(ok, "{serial} should verify: {msg}");
        } else {
            assert!(
                !ok && msg.contains("certificate revoked"),
                "{serial}: {msg}"
            );
        }
    }
    // Every CRL is on record with an event.
    assert_eq!(count(&e, "SELECT COUNT(*) FROM crls"), 5);
    assert_eq!(
        count(&e, "SELECT COUNT(*) FROM events WHERE kind = 'crl.issued'"),
        5
    );
}

#[test]
fn revoke_twice_is_a_noop_and_bad_input_changes_nothing() {
    let (e, _) = fleet(3);
    let out = e.ok(&[
        "revoke",
        "D-0001",
        "--reason",
        "keyCompromise",
        "--passphrase-file",
        e.pass(),
    ]);
    assert!(out.contains("revoked certificate"), "{out}");
    let before = e.dump();
    // No passphrase needed for a no-op, and nothing is written.
    let out = e.ok(&["revoke", "D-0001", "--reason", "keyCompromise"]);
    assert!(out.contains("already revoked"), "{out}");
    let fp = e.sql("SELECT fingerprint FROM certificates WHERE device_id = (SELECT id FROM devices WHERE serial='D-0001')");
    let j = e.json(&["revoke", "D-0001", "--cert", &fp.trim()[..12]]);
    assert_eq!(j["revoked"], 0);
    assert_eq!(j["revocations"][0]["result"], "already revoked");
    assert_eq!(e.dump(), before);

    let err = e.fails(
        &[
            "revoke",
            "D-0002",
            "--reason",
            "lost-it",
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(err.contains("not an RFC 5280 revocation reason"), "{err}");
    let err = e.fails(&["revoke", "NOPE", "--passphrase-file", e.pass()], 3);
    assert!(err.contains("no device with serial 'NOPE'"), "{err}");
    let err = e.fails(
        &[
            "revoke",
            "D-0002",
            "--cert",
            "zz",
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(err.contains("fingerprint"), "{err}");
    let bad = e.path("bad.pass");
    std::fs::write(&bad, "wrong\n").unwrap();
    e.fails(
        &[
            "revoke",
            "D-0002",
            "--passphrase-file",
            bad.to_str().unwrap(),
        ],
        5,
    );
    let csv = e.path("revoke.csv");
    std::fs::write(&csv, "serial,reason\nD-0002,superseded\nD-0003,bogus\n").unwrap();
    let err = e.fails(
        &[
            "revoke",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(err.contains("revoke.csv:3:"), "{err}");
    std::fs::write(&csv, "serial,colour\nD-0002,red\n").unwrap();
    let err = e.fails(
        &[
            "revoke",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("revoke.csv:1:") && err.contains("colour"),
        "{err}"
    );
    std::fs::write(&csv, "serial\nD-0002\nD-0404\n").unwrap();
    let err = e.fails(
        &[
            "revoke",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("revoke.csv:3:") && err.contains("D-0404"),
        "{err}"
    );
    assert_eq!(e.dump(), before);

    // Bulk from a file: the rest, with per-row reasons.
    std::fs::write(&csv, "serial,reason\nD-0002,superseded\nD-0003,\n").unwrap();
    let j = e.json(&[
        "revoke",
        "--from",
        csv.to_str().unwrap(),
        "--reason",
        "privilege-withdrawn",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(j["revoked"], 2);
    assert_eq!(
        e.sql("SELECT revocation_reason FROM certificates ORDER BY id")
            .trim(),
        "keyCompromise\nsuperseded\nprivilegeWithdrawn"
    );
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM events WHERE kind = 'cert.revoked'"
        ),
        3
    );
}

#[test]
fn decommission_with_manual_wipe_records_everything_and_certifies_it() {
    let (e, _) = fleet(2);
    e.sql("UPDATE devices SET model = 'Sensor <X>', hardware_id = 'HW-1' WHERE serial = 'D-0001'");
    let reports = e.path("reports");
    let mut args = manual(&e, &["D-0001", "--report-dir", reports.to_str().unwrap()]);
    args.insert(0, "--json");
    let o = e.run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["devices"][0]["result"], "decommissioned");
    assert_eq!(j["crl"]["entries"], 1);
    assert_eq!(
        e.sql("SELECT status FROM devices WHERE serial='D-0001'")
            .trim(),
        "decommissioned"
    );
    assert_eq!(
        e.sql("SELECT status FROM devices WHERE serial='D-0002'")
            .trim(),
        "registered"
    );
    assert_eq!(
        e.sql("SELECT status, revocation_reason FROM certificates WHERE device_id = (SELECT id FROM devices WHERE serial='D-0001')").trim(),
        "revoked|cessationOfOperation"
    );
    assert_eq!(
        e.sql("SELECT kind, level, tool, tool_version, verified_by, technician, destination FROM wipes").trim(),
        "manual|purge|nwipe|0.34|QA Lead|T. Tech|recycling"
    );
    assert_eq!(dev_count(&e, "D-0001", "kind = 'decommission.step'"), 4);
    assert_eq!(dev_count(&e, "D-0001", "kind = 'device.state'"), 2);
    assert_eq!(
        e.sql("SELECT step || ':' || status FROM decommissions ORDER BY CASE step WHEN 'retire' THEN 1 WHEN 'revoke' THEN 2 WHEN 'wipe' THEN 3 ELSE 4 END")
            .trim()
            .lines()
            .count(),
        4
    );

    // The certificate of sanitization: parseable, readable, escaped.
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join("D-0001.sanitization.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rep["media"]["serial_number"], "D-0001");
    assert_eq!(rep["media"]["model"], "Sensor <X>");
    assert_eq!(rep["media"]["media_type"], "MCU flash");
    assert_eq!(rep["sanitization"]["level"], "Purge");
    assert_eq!(rep["sanitization"]["tool"], "nwipe");
    assert_eq!(rep["sanitization"]["verification_method"], "full read-back");
    assert_eq!(rep["person"]["name"], "T. Tech");
    assert_eq!(rep["person"]["location"], "Lab 2");
    assert!(rep["attestation"].is_null());
    let html = std::fs::read_to_string(reports.join("D-0001.sanitization.html")).unwrap();
    assert!(html.contains("Sensor &lt;X&gt;") && !html.contains("Sensor <X>"));
    assert!(html.contains("Certificate of Sanitization"));
    let text = e.ok(&["report", "sanitization", "D-0001"]);
    for field in [
        "Manufacturer",
        "Model",
        "Serial number",
        "Media type",
        "Method type (level)",
        "Tool used",
        "Verification method",
        "Verified by",
        "Date",
        "Media destination",
        "Attestation",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
    let j = e.json(&["report", "sanitization", "D-0001"]);
    assert_eq!(j["sanitization"]["record_kind"], "manual");
    let f = e.path("cert.html");
    e.ok(&[
        "report",
        "sanitization",
        "D-0001",
        "--format",
        "html",
        "-o",
        f.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&f)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
    let err = e.fails(&["report", "sanitization", "D-0002"], 3);
    assert!(err.contains("no wipe record"), "{err}");

    // A re-run is a no-op that says so.
    let before = e.dump();
    let out = e.ok(&["decommission", "D-0001"]);
    assert!(out.contains("already decommissioned"), "{out}");
    assert_eq!(e.dump(), before);
}

#[test]
fn dry_run_changes_nothing_and_bad_options_are_refused() {
    let (e, _) = fleet(2);
    let before = e.dump();
    let out = e.ok(&manual(&e, &["D-0001", "D-0002", "--dry-run"]));
    assert!(
        out.contains("dry run") && out.contains("will run") && out.contains("revoke 1 active"),
        "{out}"
    );
    let j = e.json(&manual(&e, &["D-0001", "--dry-run"]));
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["devices"][0]["steps"].as_array().unwrap().len(), 4);
    assert_eq!(e.dump(), before);

    let err = e.fails(
        &["decommission", "D-0001", "--passphrase-file", e.pass()],
        3,
    );
    assert!(err.contains("no wipe given"), "{err}");
    let err = e.fails(
        &[
            "decommission",
            "D-0001",
            "--wipe-method",
            "purge",
            "--wipe-tool",
            "x",
        ],
        3,
    );
    assert!(err.contains("--verified-by"), "{err}");
    e.fails(
        &[
            "decommission",
            "D-0001",
            "--wipe-method",
            "scrub",
            "--wipe-tool",
            "x",
            "--verified-by",
            "y",
        ],
        2,
    );
    let err = e.fails(&manual(&e, &["D-0001", "--reason", "bored"]), 3);
    assert!(err.contains("RFC 5280"), "{err}");
    let err = e.fails(&manual(&e, &["D-0001", "--wipe-technique", "a\nb"]), 3);
    assert!(err.contains("control character"), "{err}");
    // Without a serial link in this build, --wipe-port refuses before changing anything.
    e.sql("UPDATE devices SET hardware_id = 'HW-1'");
    let before = e.dump();
    let err = e.fails(
        &[
            "decommission",
            "D-0001",
            "--wipe-port",
            "/dev/ttyNOPE",
            "--passphrase-file",
            e.pass(),
        ],
        6,
    );
    assert!(err.contains("serial"), "{err}");
    assert_eq!(e.dump(), before);
}

#[test]
fn a_device_that_cannot_be_retired_fails_alone_and_the_batch_goes_on() {
    let (e, _) = fleet(3);
    e.sql("UPDATE devices SET status = 'decommissioned' WHERE serial = 'D-0002'");
    let mut args = manual(&e, &["D-0001", "D-0002", "D-0003"]);
    args.insert(0, "--json");
    let o = e.run(&args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let res: Vec<&str> = j["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["result"].as_str().unwrap())
        .collect();
    assert_eq!(res, ["decommissioned", "failed", "decommissioned"]);
    assert!(j["devices"][1]["error"]
        .as_str()
        .unwrap()
        .contains("cannot be retired"));
    assert_eq!(j["failed"], 1);
    // Its certificate was not touched.
    assert_eq!(
        e.sql("SELECT status FROM certificates WHERE device_id = (SELECT id FROM devices WHERE serial='D-0002')").trim(),
        "active"
    );
    // The table names the failure too.
    let o = e.run(&manual(&e, &["D-0002"]));
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("D-0002") && out.contains("failed") && out.contains("1:FAIL"),
        "{out}"
    );
}

/// Runs a decommission that aborts right after committing `step`.
fn crash_after(e: &Env, step: u8, args: &[&str]) {
    let o = e
        .cmd(args)
        .env("CRADLE_TEST_CRASH_AFTER_STEP", step.to_string())
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "should have been killed after step {step}"
    );
    assert_eq!(o.status.code(), None, "killed by a signal, not an exit");
}

#[test]
fn a_killed_run_resumes_where_it_stopped_with_no_step_done_twice() {
    let (e, _) = fleet(4);
    let crl = e.home.join("ca/crl.pem");
    for (i, step) in (1u8..=4).enumerate() {
        let serial = format!("D-{:04}", i + 1);
        crash_after(&e, step, &manual(&e, &[&serial]));
        let done = count(
            &e,
            &format!("SELECT COUNT(*) FROM decommissions WHERE status = 'done' AND device_id = (SELECT id FROM devices WHERE serial = '{serial}')"),
        );
        assert_eq!(
            done, step as i64,
            "{serial}: steps done after a crash at step {step}"
        );
        assert_eq!(
            dev_count(&e, &serial, "kind = 'decommission.step'"),
            step as i64
        );
        if step == 2 {
            // Killed after revoking but before the CRL: the revocation is marked stale
            // (the next run, D-0003's, signs the CRL before its wipe).
            assert_eq!(
                e.sql("SELECT value FROM meta WHERE key = 'crl_stale'")
                    .trim(),
                "1"
            );
        }
    }
    // Resume everything, without repeating the options.
    let j = e.json(&["decommission", "--resume", "--passphrase-file", e.pass()]);
    assert_eq!(j["failed"], 0, "{j}");
    // D-0004 was killed after its last step: nothing left to resume for it.
    assert_eq!(j["devices"].as_array().unwrap().len(), 3);
    for i in 1..=4 {
        let serial = format!("D-{i:04}");
        assert_eq!(
            e.sql(&format!(
                "SELECT status FROM devices WHERE serial = '{serial}'"
            ))
            .trim(),
            "decommissioned"
        );
        assert_eq!(
            dev_count(&e, &serial, "kind = 'decommission.step'"),
            4,
            "{serial}"
        );
        assert_eq!(
            dev_count(&e, &serial, "kind = 'device.state'"),
            2,
            "{serial}"
        );
        assert_eq!(
            dev_count(&e, &serial, "kind = 'cert.revoked'"),
            1,
            "{serial}"
        );
        assert_eq!(
            count(&e, &format!("SELECT COUNT(*) FROM wipes WHERE device_id = (SELECT id FROM devices WHERE serial = '{serial}')")),
            1,
            "{serial}"
        );
        // The stored options were used: the manual record's fields survived the crash.
        assert_eq!(
            e.sql(&format!("SELECT tool || '|' || verified_by FROM wipes WHERE device_id = (SELECT id FROM devices WHERE serial = '{serial}')")).trim(),
            "nwipe|QA Lead"
        );
    }
    assert!(e
        .sql("SELECT value FROM meta WHERE key = 'crl_stale'")
        .trim()
        .is_empty());
    let (_, text) = openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]);
    for i in 1..=4 {
        let s = cert_serial(&e, &format!("D-{i:04}"));
        assert!(text.contains(&s), "{s} not in the CRL");
    }
    // The event chain is intact.
    let v = e.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    // Nothing left to resume.
    let out = e.ok(&["decommission", "--resume"]);
    assert!(out.contains("nothing to do"), "{out}");
}

#[test]
fn a_batch_killed_at_a_random_moment_resumes_consistently() {
    let (e, _) = fleet(200);
    let csv = e.path("batch.csv");
    let mut s = String::from("serial\n");
    for i in 1..=200 {
        s.push_str(&format!("D-{i:04}\n"));
    }
    std::fs::write(&csv, s).unwrap();
    let args = manual(&e, &["--from", csv.to_str().unwrap()]);
    let mut child = e
        .cmd(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL it in the middle: once some steps are on record, before all are.
    let started = std::time::Instant::now();
    loop {
        let done = e
            .sql("SELECT COUNT(*) FROM decommissions")
            .trim()
            .parse::<i64>()
            .unwrap_or(0);
        if done >= 100 || started.elapsed().as_secs() > 60 {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run should have been killed mid-way");
    let done_before = count(
        &e,
        "SELECT COUNT(*) FROM decommissions WHERE status = 'done'",
    );
    assert!(
        done_before > 0 && done_before < 800,
        "killed mid-way: {done_before} steps done"
    );
    e.ok(&args);
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM devices WHERE status = 'decommissioned'"
        ),
        200
    );
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM events WHERE kind = 'decommission.step'"
        ),
        800
    );
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM events WHERE kind = 'cert.revoked'"
        ),
        200
    );
    assert_eq!(count(&e, "SELECT COUNT(*) FROM wipes"), 200);
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM decommissions WHERE status = 'done'"
        ),
        800
    );
}

#[test]
fn a_batch_of_1000_devices_from_csv_with_manual_wipe_records() {
    let (e, _) = fleet(1000);
    let csv = e.path("retire.csv");
    // Bad rows are reported with FILE:LINE and nothing is written.
    let before = e.dump();
    std::fs::write(
        &csv,
        "serial,wipe_method,wipe_tool,verified_by\nD-0001,purge,nwipe,QA\nD-0002,shred,x,QA\n",
    )
    .unwrap();
    let err = e.fails(
        &[
            "decommission",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("retire.csv:3:") && err.contains("shred"),
        "{err}"
    );
    std::fs::write(
        &csv,
        "serial,wipe_method,wipe_tool,verified_by\nD-0001,purge,nwipe,QA\nD-0001,purge,nwipe,QA\n",
    )
    .unwrap();
    let err = e.fails(
        &[
            "decommission",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("retire.csv:3:") && err.contains("twice"),
        "{err}"
    );
    std::fs::write(&csv, "serial,wipe_method,wipe_tool\nD-0001,purge,nwipe\n").unwrap();
    let err = e.fails(
        &[
            "decommission",
            "--from",
            csv.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("retire.csv:2:") && err.contains("--verified-by"),
        "{err}"
    );
    assert_eq!(e.dump(), before);

    let mut s = String::from("serial,wipe_method,wipe_tool,verified_by,technician,destination\n");
    for i in 1..=1000 {
        let (m, t) = match i % 3 {
            0 => ("destroy", "shredder SSL-1"),
            1 => ("purge", "vendor crypto-erase"),
            _ => ("clear", "nwipe"),
        };
        s.push_str(&format!(
            "D-{i:04},{m},{t},QA-{},Tech {},recycling\n",
            i % 7,
            i % 5
        ));
    }
    std::fs::write(&csv, s).unwrap();
    let j = e.json(&[
        "decommission",
        "--from",
        csv.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(j["decommissioned"], 1000);
    assert_eq!(j["failed"], 0);
    assert_eq!(j["crl"]["entries"], 1000);
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM devices WHERE status = 'decommissioned'"
        ),
        1000
    );
    assert_eq!(
        count(&e, "SELECT COUNT(*) FROM wipes WHERE kind = 'manual'"),
        1000
    );
    assert_eq!(
        count(&e, "SELECT COUNT(*) FROM wipes WHERE level = 'destroy'"),
        333
    );
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM events WHERE kind = 'decommission.step'"
        ),
        4000
    );
    // One CRL for the whole batch.
    assert_eq!(
        count(&e, "SELECT COUNT(*) FROM events WHERE kind = 'crl.issued'"),
        1
    );
    let crl = e.home.join("ca/crl.pem");
    let issuing = e.home.join("ca/issuing.pem");
    let (ok, msg) = openssl(&[
        "crl",
        "-in",
        crl.to_str().unwrap(),
        "-noout",
        "-verify",
        "-CAfile",
        issuing.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");
    let (_, text) = openssl(&["crl", "-in", crl.to_str().unwrap(), "-noout", "-text"]);
    assert_eq!(text.matches("Cessation Of Operation").count(), 1000);
    assert!(Path::new(&crl).exists());
}

#[test]
fn a_certificate_named_twice_in_one_run_is_revoked_once() {
    let (e, _) = fleet(1);
    let j = e.json(&["revoke", "D-0001", "D-0001", "--passphrase-file", e.pass()]);
    assert_eq!(j["revoked"], 1);
    assert_eq!(j["already_revoked"], 1);
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM events WHERE kind = 'cert.revoked'"
        ),
        1
    );
    assert_eq!(j["crl"]["entries"], 1);
}

#[test]
fn a_crl_that_cannot_be_written_keeps_the_revocation_and_the_next_revoke_publishes_it() {
    let (e, _) = fleet(1);
    let config = e.home.join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    assert!(good.contains("crl_path = \"ca/crl.pem\""), "{good}");
    // A regular file where the CRL's directory should be: publishing fails.
    std::fs::write(
        &config,
        good.replace(
            "crl_path = \"ca/crl.pem\"",
            "crl_path = \"config.toml/crl.pem\"",
        ),
    )
    .unwrap();
    let err = e.fails(&["revoke", "D-0001", "--passphrase-file", e.pass()], 8);
    assert!(
        err.contains("the revocations are recorded, but the CRL could not be published (run `cradle ca crl` to retry): "),
        "{err}"
    );
    assert_eq!(
        count(
            &e,
            "SELECT COUNT(*) FROM certificates WHERE status = 'revoked'"
        ),
        1
    );
    assert_eq!(count(&e, "SELECT COUNT(*) FROM crls"), 0);
    assert_eq!(
        e.sql("SELECT value FROM meta WHERE key = 'crl_stale'")
            .trim(),
        "1"
    );

    // Nothing left to revoke, but the CRL is stale: the CA is unlocked and it is published.
    std::fs::write(&config, good).unwrap();
    let out = e.ok(&["revoke", "D-0001", "--passphrase-file", e.pass()]);
    assert!(out.contains("is already revoked"), "{out}");
    assert!(out.contains("CRL #1 with 1 entry written to"), "{out}");
    assert_eq!(
        e.sql("SELECT COUNT(*) FROM meta WHERE key = 'crl_stale'")
            .trim(),
        "0"
    );
    let (ok, text) = openssl(&[
        "crl",
        "-in",
        e.home.join("ca/crl.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ok && text.contains(&cert_serial(&e, "D-0001")), "{text}");
}

#[test]
fn a_wipe_port_takes_one_device_and_is_checked_before_anything_changes() {
    let (e, _) = fleet(2);
    let before = e.dump();
    let err = e.fails(
        &[
            "decommission",
            "D-0001",
            "D-0002",
            "--wipe-port",
            "/nonexistent/tty",
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(
        err.contains("--wipe-port wipes one device at a time: give one SERIAL"),
        "{err}"
    );
    // One device: the port is opened before anything is written, and it is not there.
    e.fails(
        &[
            "decommission",
            "D-0001",
            "--wipe-port",
            "/nonexistent/tty",
            "--passphrase-file",
            e.pass(),
        ],
        6,
    );
    assert_eq!(e.dump(), before);
}

/// Revocation and the CRL follow one rule: a new CRL is issued while revocations are
/// not in the published one. If another station revokes the same certificate and
/// publishes its CRL while this revoke waits for the write lock (the SQL below
/// stands for that station's transactions: the certificate revoked, the CRL not
/// stale), nothing is left to publish. (Before, `revoke` issued a CRL after every run that had planned a
/// revocation, here a redundant CRL #2.)
#[test]
fn a_revoke_that_another_station_finished_meanwhile_publishes_no_redundant_crl() {
    let (e, _) = fleet(1);
    e.ok(&["ca", "crl", "--passphrase-file", e.pass()]);
    let o = e.race(
        &["--json", "revoke", "D-0001", "--passphrase-file", e.pass()],
        "UPDATE certificates SET status = 'revoked', revoked_at = '2026-01-01T00:00:00Z', \
         revocation_reason = 'unspecified';",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["revoked"], 0, "{j}");
    assert_eq!(j["revocations"][0]["result"], "already revoked", "{j}");
    assert!(j["crl"].is_null(), "{j}");
    assert_eq!(count(&e, "SELECT COUNT(*) FROM crls"), 1);
}
