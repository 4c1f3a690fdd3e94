//! `cradle renew` through the binary: in place on simulated devices over ptys (a pulled
//! cable between write and switch, re-keying), from a list of 1,000 devices with every
//! successor checked by openssl, bad input, and the renewal-pending audit check.

mod common;

use std::path::{Path, PathBuf};

use common::{openssl, q, Env, Sim, SIM_BAUD};

/// Waits until the next whole second has begun and returns it (registry times are whole
/// seconds, so a `--since` of this instant leaves out everything before).
fn next_second() -> String {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let t = time::OffsetDateTime::now_utc();
    let s = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    s[..19].to_string() + "Z"
}

fn ca_file(env: &Env, name: &str) -> String {
    env.home.join("ca").join(name).to_str().unwrap().to_string()
}

/// `openssl verify` of every file against root + issuing CA: one call, one `OK` line
/// per file (each certificate is checked, not only the first of a bundle).
fn openssl_verify_all(env: &Env, files: &[PathBuf]) {
    let mut args = vec![
        "verify".to_string(),
        "-x509_strict".into(),
        "-CAfile".into(),
        ca_file(env, "root.pem"),
        "-untrusted".into(),
        ca_file(env, "issuing.pem"),
    ];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = openssl(&refs);
    assert!(ok, "openssl verify: {out}");
    for f in files {
        assert!(
            out.contains(&format!("{}: OK", f.display())),
            "{} not OK: {out}",
            f.display()
        );
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s + "-----END CERTIFICATE-----\n"
}

/// A slot of a simulator state file (hex data, committed), or empty.
fn slot(state: &Path, name: &str) -> (Vec<u8>, bool) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    match v["slots"].get(name) {
        Some(s) => (
            hex::decode(s["data"].as_str().unwrap()).unwrap(),
            s["committed"].as_bool().unwrap(),
        ),
        None => (Vec::new(), false),
    }
}

fn state_field(state: &Path, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    v[name].clone()
}

fn cert_der(env: &Env, serial_hex: &str) -> Vec<u8> {
    hex::decode(q(
        env,
        &format!("SELECT hex(der) FROM certificates WHERE serial_hex = '{serial_hex}';"),
    ))
    .unwrap()
}

fn renew_port(env: &Env, link: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "--json",
        "renew",
        "--port",
        link.to_str().unwrap(),
        "--baud",
        SIM_BAUD,
        "--timeout",
        "1",
        "--passphrase-file",
        env.pass(),
    ];
    a.extend_from_slice(extra);
    env.run(&a)
}

/// A device provisioned on a simulator with a state file (which is then stopped): its
/// serial, the state file and the link.
fn provisioned(env: &Env, mode: &str) -> (String, PathBuf, PathBuf) {
    let link = env.path("dev/dut");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let state = env.path("dut.json");
    let sim = Sim::start(
        env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let (code, v, err) = common::provision_json(env, &[link.to_str().unwrap()], &["--mode", mode]);
    assert_eq!(code, Some(0), "{v} {err}");
    drop(sim);
    let serial = q(env, "SELECT serial FROM devices;");
    (serial, state, link)
}

fn audit_findings(env: &Env, check: &str) -> (i32, Vec<serde_json::Value>) {
    let o = env.run(&["--json", "audit", "--check", check]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (
        o.status.code().unwrap(),
        v["findings"].as_array().cloned().unwrap_or_default(),
    )
}

#[test]
fn renew_in_place_on_a_simulated_device() {
    let env = Env::with_ca();
    let (serial, state, link) = provisioned(&env, "csr");
    let old_cert = slot(&state, "cert").0;
    let old_serial = q(&env, "SELECT serial_hex FROM certificates;");
    let key_before = state_field(&state, "key");
    // Updated firmware since provisioning: the renewal is a contact and records it.
    let _sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--firmware",
            "2.0.0",
        ],
        1,
    );
    let o = renew_port(&env, &link, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], "renewed");
    assert_eq!(q(&env, "SELECT firmware FROM devices;"), "2.0.0");
    assert_eq!(
        q(
            &env,
            "SELECT json_extract(details, '$.via') FROM events WHERE kind = 'firmware.reported' ORDER BY id DESC LIMIT 1;"
        ),
        "renew"
    );
    assert_eq!(v["serial"], serial.as_str());
    assert_eq!(v["old_cert_serial"], old_serial.as_str());
    let new_serial = v["cert_serial"].as_str().unwrap();
    assert_ne!(new_serial, old_serial);

    // On the device: the successor in the cert slot, the spare slots empty, same key.
    let (held, committed) = slot(&state, "cert");
    assert!(committed);
    assert_eq!(held, cert_der(&env, new_serial));
    assert_ne!(held, old_cert);
    assert_eq!(slot(&state, "next.cert").0, Vec::<u8>::new());
    assert_eq!(state_field(&state, "key"), key_before);
    assert_eq!(state_field(&state, "locked"), true);
    assert_eq!(state_field(&state, "switches"), 1);
    // In the registry: both active (no --revoke-old), same public key, renewal confirmed.
    assert_eq!(
        q(&env, "SELECT status FROM certificates ORDER BY id;"),
        "active\nactive"
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(DISTINCT pubkey_sha256) FROM certificates;"
        ),
        "1"
    );
    assert_eq!(
        q(&env, "SELECT delivery, state, rekey FROM renewals;"),
        "port|confirmed|0"
    );
    assert_eq!(
        q(
            &env,
            "SELECT group_concat(kind, ',') FROM (SELECT kind FROM events WHERE kind LIKE '%renew%' ORDER BY id) AS t;"
        ),
        "cert.renewed,renewal.confirmed"
    );
    let f = env.path("held.pem");
    std::fs::write(&f, pem_of(&held)).unwrap();
    openssl_verify_all(&env, &[f]);
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn cable_pulled_between_write_and_switch_leaves_the_old_identity_and_a_rerun_completes() {
    let env = Env::with_ca();
    let (serial, state, link) = provisioned(&env, "csr");
    let old_cert = slot(&state, "cert").0;
    let old_serial = q(&env, "SELECT serial_hex FROM certificates;");
    // The second COMMIT of the run is next.chain's: the device commits it, then the cable
    // is pulled before it replies (and before SWITCH); it stays away past the host's retries.
    let mut sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:commit:2",
            "--fault",
            "stay-away:20000",
        ],
        1,
    );
    let o = renew_port(&env, &link, &[]);
    sim.stop();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("stays pending"), "{err}");
    assert!(err.contains(&old_serial), "{err}");

    // The device: old identity in use, successor written in the spare slots, no switch.
    let pending = q(
        &env,
        "SELECT c.serial_hex FROM renewals r JOIN certificates c ON c.id = r.new_cert_id WHERE r.state = 'pending';",
    );
    assert_eq!(slot(&state, "cert"), (old_cert.clone(), true));
    assert_eq!(slot(&state, "next.cert"), (cert_der(&env, &pending), true));
    assert!(slot(&state, "next.chain").1);
    assert_eq!(state_field(&state, "switches"), 0);
    // The registry says so: old active, successor unused and pending.
    assert_eq!(
        q(
            &env,
            &format!("SELECT status FROM certificates WHERE serial_hex = '{old_serial}';")
        ),
        "active"
    );
    assert_eq!(
        q(
            &env,
            &format!("SELECT status FROM certificates WHERE serial_hex = '{pending}';")
        ),
        "unused"
    );
    let f = env.path("old.pem");
    std::fs::write(&f, pem_of(&old_cert)).unwrap();
    let o = env.run(&["identity", "verify", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "old identity still valid");
    // `identity show` says which certificate is the pending successor of which.
    let shown = env.json(&["identity", "show", &serial]);
    let c = &shown["certificates"][1];
    assert_eq!(
        (
            c["cert_serial"].as_str(),
            c["supersedes"].as_str(),
            c["renewal"].as_str()
        ),
        (
            Some(pending.as_str()),
            Some(old_serial.as_str()),
            Some("pending")
        )
    );
    // The audit reports it.
    let (code, found) = audit_findings(&env, "renewal-pending");
    assert_eq!(code, 1);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["device"], serial.as_str());
    assert_eq!(found[0]["cert"], pending.as_str());
    // Meanwhile no second successor: a file renewal of the device is refused.
    let before = env.dump();
    let err = env.fails(
        &[
            "renew",
            &serial,
            "--out",
            "x",
            "--passphrase-file",
            env.pass(),
        ],
        7,
    );
    assert!(err.contains("pending successor"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("x").exists());

    // Plugged in again: the re-run finishes the same successor.
    let since = next_second();
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
    let o = renew_port(&env, &link, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], "renewed");
    assert_eq!(v["resumed"], true);
    assert_eq!(v["cert_serial"], pending.as_str());
    assert_eq!(slot(&state, "cert").0, cert_der(&env, &pending));
    assert_eq!(q(&env, "SELECT count(*) FROM certificates;"), "2");
    assert_eq!(q(&env, "SELECT state FROM renewals;"), "confirmed");
    // A delta hand-off since before the confirmation carries the device (its successor
    // was issued before that, in the failed run).
    let csv = env.ok(&["inventory", "export", "--since", &since]);
    assert_eq!(
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect::<Vec<_>>(),
        [serial.as_str()],
        "{csv}"
    );
    let (code, found) = audit_findings(&env, "renewal-pending");
    assert_eq!((code, found.len()), (0, 0), "{found:?}");
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn rekey_in_csr_mode_revokes_the_old_certificate_only_after_the_switch() {
    let env = Env::with_ca();
    let (_serial, state, link) = provisioned(&env, "csr");
    let old_serial = q(&env, "SELECT serial_hex FROM certificates;");
    let key_before = state_field(&state, "key");
    let keygens = state_field(&state, "keygens").as_u64().unwrap();
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
    let o = renew_port(&env, &link, &["--rekey", "--mode", "csr"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["rekey"].clone(), v["old_revoked"].clone()),
        (true.into(), true.into())
    );
    let new_serial = v["cert_serial"].as_str().unwrap();
    // The device made the new key (NEXTKEY) and switched to it.
    assert_ne!(state_field(&state, "key"), key_before);
    assert_eq!(
        state_field(&state, "keygens").as_u64().unwrap(),
        keygens + 1
    );
    assert_eq!(state_field(&state, "next_key"), serde_json::Value::Null);
    let held = slot(&state, "cert").0;
    assert_eq!(held, cert_der(&env, new_serial));
    assert_eq!(
        q(
            &env,
            "SELECT count(DISTINCT pubkey_sha256) FROM certificates;"
        ),
        "2"
    );
    assert_eq!(
        q(
            &env,
            &format!(
                "SELECT status, revocation_reason, key_source FROM certificates WHERE serial_hex = '{old_serial}';"
            )
        ),
        "revoked|superseded|device"
    );
    // The CRL lists the old certificate; the new one verifies.
    let (ok, text) = openssl(&["crl", "-in", &ca_file(&env, "crl.pem"), "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&old_serial.to_ascii_lowercase()),
        "{text}"
    );
    let f = env.path("new.pem");
    std::fs::write(&f, pem_of(&held)).unwrap();
    openssl_verify_all(&env, &[f]);
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn renewing_1000_devices_from_a_list_each_verified_by_openssl() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "batch",
        "--count",
        "1000",
        "--serial-pattern",
        "R-{seq:04}",
        "--bundle",
        "first.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    let mut csv = String::from("serial\n");
    for i in 1..=1000 {
        csv.push_str(&format!("R-{i:04}\n"));
    }
    std::fs::write(env.path("list.csv"), csv).unwrap();
    let v = env.json(&[
        "renew",
        "--from",
        "list.csv",
        "--out",
        "renewed",
        "--bundle",
        "renewed.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    assert_eq!(v["renewed"], 1000);
    // Every successor certifies the key of the certificate it supersedes.
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM renewals r JOIN certificates o ON o.id = r.old_cert_id
             JOIN certificates n ON n.id = r.new_cert_id
             WHERE o.pubkey_sha256 = n.pubkey_sha256 AND n.status = 'active' AND o.status = 'active'
               AND r.state = 'delivered';"
        ),
        "1000"
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM events WHERE kind = 'cert.renewed';"
        ),
        "1000"
    );
    let bundle = env.path("renewed.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1001);
    assert_eq!(lines[0]["renewal"], true);
    assert!(lines[1..].iter().all(|l| l.get("key_pem").is_none()));
    let files: Vec<PathBuf> = (1..=1000)
        .map(|i| env.path(&format!("renewed/R-{i:04}.pem")))
        .collect();
    openssl_verify_all(&env, &files);
    // Nothing left to renew within a day; the audit is clean.
    let v = env.json(&["renew", "--expiring-within", "1", "--dry-run"]);
    assert_eq!(v["would_renew"].as_array().unwrap().len(), 0);
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn expiring_within_selects_by_expiry_and_revoke_old_republishes_the_crl() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "batch",
        "--count",
        "3",
        "--serial-pattern",
        "E-{seq}",
        "--bundle",
        "b.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    // E-1 expires in 10 days (a field the test may set: not_after is what renew reads).
    env.sql(if env.backend() == common::Backend::Postgres {
        "UPDATE certificates SET not_after = extract(epoch FROM now())::bigint + 10*86400 WHERE id = 1;"
    } else {
        "UPDATE certificates SET not_after = strftime('%s','now') + 10*86400 WHERE id = 1;"
    });
    let v = env.json(&["renew", "--expiring-within", "30", "--dry-run"]);
    let names: Vec<&str> = v["would_renew"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["E-1"]);
    let v = env.json(&[
        "renew",
        "--expiring-within",
        "30",
        "--out",
        "o",
        "--revoke-old",
        "--passphrase-file",
        env.pass(),
    ]);
    assert_eq!(
        (v["renewed"].clone(), v["revoked_old"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(
        q(
            &env,
            "SELECT status, revocation_reason FROM certificates WHERE id = 1;"
        ),
        "revoked|superseded"
    );
    let serial1 = q(&env, "SELECT serial_hex FROM certificates WHERE id = 1;");
    let (ok, text) = openssl(&["crl", "-in", &ca_file(&env, "crl.pem"), "-noout", "-text"]);
    assert!(ok && text.to_ascii_lowercase().contains(&serial1), "{text}");
    openssl_verify_all(&env, &[env.path("o/E-1.pem")]);
}

#[test]
fn bad_input_is_one_line_an_exit_code_and_nothing_written() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "batch",
        "--count",
        "2",
        "--serial-pattern",
        "B-{seq}",
        "--bundle",
        "b.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    env.ok(&[
        "decommission",
        "B-2",
        "--wipe-method",
        "destroy",
        "--wipe-tool",
        "shredder",
        "--verified-by",
        "QA",
        "--passphrase-file",
        env.pass(),
    ]);
    std::fs::write(env.path("exists.jsonl"), "keep").unwrap();
    std::fs::create_dir_all(env.path("taken")).unwrap();
    std::fs::write(env.path("taken/B-1.pem"), "keep").unwrap();
    std::fs::write(env.path("bad.csv"), "serial,site\nB-1,a\nB-2\n").unwrap();
    std::fs::write(env.path("hostile.csv"), "serial\n../../etc/passwd\n").unwrap();
    std::fs::write(env.path("unknown.csv"), "serial\nB-1\nNOPE-9\n").unwrap();
    std::fs::write(env.path("retired.csv"), "serial\nB-1\nB-2\n").unwrap();
    let before = env.dump();
    let pass = env.pass().to_string();
    for (args, code, says) in [
        (
            vec!["renew", "NOPE-1", "--out", "new"],
            3,
            "no device with serial 'NOPE-1'",
        ),
        (vec!["renew", "B-2", "--out", "new"], 7, "decommissioned"),
        (
            vec!["renew", "--from", "bad.csv", "--out", "new"],
            3,
            "bad.csv",
        ),
        (
            vec!["renew", "--from", "hostile.csv", "--out", "new"],
            3,
            "hostile.csv:2",
        ),
        (
            vec!["renew", "B-1", "--bundle", "exists.jsonl"],
            7,
            "already exists",
        ),
        (vec!["renew", "B-1", "--out", "taken"], 7, "already exists"),
        (
            vec!["renew", "B-1", "B-1", "--out", "new"],
            7,
            "named twice",
        ),
        (vec!["renew", "B-1"], 2, "somewhere to put"),
        (
            vec![
                "renew",
                "--port",
                "/nonexistent/tty",
                "--device-profile",
                "esp32",
            ],
            2,
            "esp32 family cannot renew in place",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--passphrase-file", &pass]);
        let err = env.fails(&a, code);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(env.dump(), before, "{args:?} changed the registry");
        assert!(!env.path("new").exists(), "{args:?} wrote output");
    }
    assert_eq!(
        std::fs::read_to_string(env.path("exists.jsonl")).unwrap(),
        "keep"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("taken/B-1.pem")).unwrap(),
        "keep"
    );
    // A registry without pending renewals: renewal-pending finds nothing.
    let (code, found) = audit_findings(&env, "renewal-pending");
    assert_eq!((code, found.len()), (0, 0));
}

#[test]
fn a_switch_whose_reply_was_lost_is_confirmed_by_the_rerun() {
    let env = Env::with_ca();
    let (serial, state, link) = provisioned(&env, "csr");
    // The device switches, then the cable is pulled before its reply.
    let mut sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:switch",
            "--fault",
            "stay-away:20000",
        ],
        1,
    );
    let o = renew_port(&env, &link, &["--revoke-old"]);
    sim.stop();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pending = q(
        &env,
        "SELECT c.serial_hex FROM renewals r JOIN certificates c ON c.id = r.new_cert_id WHERE r.state = 'pending';",
    );
    // The device already holds the successor; the registry does not know it yet, so the
    // old certificate is not revoked.
    assert_eq!(slot(&state, "cert").0, cert_der(&env, &pending));
    assert_eq!(
        q(&env, "SELECT status FROM certificates ORDER BY id;"),
        "active\nunused"
    );
    let (code, found) = audit_findings(&env, "renewal-pending");
    assert_eq!((code, found.len()), (1, 1));
    assert_eq!(found[0]["device"], serial.as_str());

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
    let o = renew_port(&env, &link, &["--revoke-old"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], "confirmed");
    assert_eq!(v["cert_serial"], pending.as_str());
    assert_eq!(v["old_revoked"], true);
    assert_eq!(state_field(&state, "switches"), 1, "no second switch");
    assert_eq!(
        q(&env, "SELECT status FROM certificates ORDER BY id;"),
        "revoked\nactive"
    );
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn an_injected_rekey_cut_before_the_key_is_revoked_and_issued_afresh_never_two_pending() {
    let env = Env::with_ca();
    let (_serial, state, link) = provisioned(&env, "csr");
    let old_serial = q(&env, "SELECT serial_hex FROM certificates;");
    let key_before = state_field(&state, "key");
    // The cable is pulled after the STAT of the spare key slot (the second STAT of the
    // run, after the cert slot's), before the key is written: the host's key is gone
    // (never kept), the device never got it, and the successor recorded for it is pending.
    let mut sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:stat:2",
            "--fault",
            "stay-away:20000",
        ],
        1,
    );
    let o = renew_port(&env, &link, &["--rekey", "--mode", "inject"]);
    sim.stop();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let first = q(
        &env,
        "SELECT c.serial_hex FROM renewals r JOIN certificates c ON c.id = r.new_cert_id WHERE r.state = 'pending';",
    );
    assert_eq!(state_field(&state, "key"), key_before);
    assert_eq!(state_field(&state, "next_key"), serde_json::Value::Null);

    // Cut again at the same place: the first successor is abandoned (revoked, and on the
    // CRL at once), a second one is pending, never both.
    let mut sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:stat:2",
            "--fault",
            "stay-away:20000",
        ],
        1,
    );
    let o = renew_port(&env, &link, &["--rekey", "--mode", "inject"]);
    sim.stop();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let second_try = q(
        &env,
        "SELECT c.serial_hex FROM renewals r JOIN certificates c ON c.id = r.new_cert_id WHERE r.state = 'pending';",
    );
    assert_ne!(second_try, first);
    assert_eq!(
        q(
            &env,
            "SELECT group_concat(state, ',') FROM (SELECT state FROM renewals ORDER BY id) AS t;"
        ),
        "abandoned,pending"
    );
    let (ok, text) = openssl(&["crl", "-in", &ca_file(&env, "crl.pem"), "-noout", "-text"]);
    assert!(ok && text.to_ascii_lowercase().contains(&first), "{text}");
    let first = second_try;

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
    let o = renew_port(&env, &link, &["--rekey", "--mode", "inject"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["abandoned"], first.as_str());
    let second = v["cert_serial"].as_str().unwrap();
    assert_ne!(second, first);
    assert_ne!(state_field(&state, "key"), key_before);
    assert_eq!(slot(&state, "cert").0, cert_der(&env, second));
    // The abandoned one and the old one are revoked (superseded); one successor active.
    assert_eq!(
        q(
            &env,
            &format!(
                "SELECT serial_hex, status, revocation_reason FROM certificates WHERE serial_hex IN ('{old_serial}', '{first}') ORDER BY id;"
            )
        ),
        format!("{old_serial}|revoked|superseded\n{first}|revoked|superseded")
    );
    assert_eq!(
        q(
            &env,
            "SELECT group_concat(state, ',') FROM (SELECT state FROM renewals ORDER BY id) AS t;"
        ),
        "abandoned,abandoned,confirmed"
    );
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_pending_successor_revoked_by_hand_is_never_written_or_made_valid() {
    let env = Env::with_ca();
    let (serial, state, link) = provisioned(&env, "csr");
    let mut sim = Sim::start(
        &env,
        &[
            "--link",
            link.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--fault",
            "disconnect-after:commit:2",
            "--fault",
            "stay-away:20000",
        ],
        1,
    );
    let o = renew_port(&env, &link, &[]);
    sim.stop();
    assert_eq!(
        o.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pending = q(
        &env,
        "SELECT c.serial_hex FROM renewals r JOIN certificates c ON c.id = r.new_cert_id WHERE r.state = 'pending';",
    );
    let fingerprint = q(
        &env,
        &format!("SELECT fingerprint FROM certificates WHERE serial_hex = '{pending}';"),
    );
    env.ok(&[
        "revoke",
        &serial,
        "--cert",
        &fingerprint,
        "--reason",
        "superseded",
        "--passphrase-file",
        env.pass(),
    ]);
    // The re-run leaves the revoked one (already in the spare slots) and issues afresh.
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
    let o = renew_port(&env, &link, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["abandoned"], pending.as_str());
    let fresh = v["cert_serial"].as_str().unwrap();
    assert_ne!(fresh, pending);
    assert_eq!(slot(&state, "cert").0, cert_der(&env, fresh));
    assert_eq!(
        q(
            &env,
            &format!("SELECT status FROM certificates WHERE serial_hex = '{pending}';")
        ),
        "revoked"
    );
    let o = env.run(&["audit"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_device_retired_by_another_station_while_renewing_is_not_renewed() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "batch",
        "--count",
        "3",
        "--serial-pattern",
        "C-{seq}",
        "--bundle",
        "b.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    // Another station retires C-2 after this run planned, before it records anything.
    let o = env.race(
        &[
            "renew",
            "--expiring-within",
            "100000",
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ],
        "UPDATE devices SET status = 'retired' WHERE serial = 'C-2';",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(
        err.contains("'C-2'") && err.contains("changed while renewing"),
        "{err}"
    );
    assert_eq!(q(&env, "SELECT count(*) FROM renewals;"), "0");
    assert_eq!(q(&env, "SELECT count(*) FROM certificates;"), "3");
    assert!(std::fs::read_dir(env.path("o")).unwrap().next().is_none());
}
