//! `cradle audit`, `cradle log`, `cradle report fleet` against real registries: each bad
//! situation is made with cradle commands or behind cradle's back with the sqlite3
//! shell, and the exact finding (check id + device) is asserted.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{audit, found, set, Env, PASS};
use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

const DEVICES: usize = 8;

/// A clean fleet, built once per test run: a CA and 8 devices from `identity batch`,
/// given inventory data (site, model, hardware id, MAC, IMEI) and states.
fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("audit-template");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let e = Env::with_ca();
        e.ok(&[
            "identity",
            "batch",
            "--count",
            &DEVICES.to_string(),
            "--serial-pattern",
            "DEV-{seq:03}",
            "--bundle",
            e.path("bundle.jsonl").to_str().unwrap(),
            "--batch",
            "B-2026-11",
            "--passphrase-file",
            e.pass(),
        ]);
        // Inventory data and states through cradle itself (two imports: registered ->
        // provisioned -> deployed), so that every device row carries a valid mark.
        let inventory = |path: &str, deployed: bool| {
            let mut csv = String::from("serial,hardware_id,mac,imei,model,site,status\n");
            for id in 1..=DEVICES {
                let status = if deployed && id != DEVICES {
                    "deployed"
                } else {
                    "provisioned"
                };
                csv.push_str(&format!(
                    "DEV-{id:03},HW{id},02:00:00:00:00:{id:02x},{},{},{},{status}\n",
                    imei(id),
                    if id % 2 == 0 { "sensor-s" } else { "gateway-g" },
                    if id <= 3 { "Berlin" } else { "Lyon" },
                ));
            }
            std::fs::write(e.path(path), csv).unwrap();
            e.ok(&["inventory", "import", path, "--mode", "update"]);
        };
        inventory("provisioned.csv", false);
        inventory("deployed.csv", true);
        copy_dir(&e.home, &root.join("home"));
        root.join("home")
    })
}

/// The fleet's IMEI of device `id`: "3566000000000" + id + its Luhn check digit.
fn imei(id: usize) -> String {
    let body = format!("3566000000000{id}");
    let mut sum = 0;
    for (i, c) in body.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let p = entry.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&p, to.join(entry.file_name())).unwrap();
        }
    }
}

/// A private copy of the clean fleet.
fn fleet() -> Env {
    let e = Env::bare();
    copy_dir(template(), &e.home);
    e
}

fn one_check(e: &Env, id: &str) -> (i32, BTreeSet<(String, String)>, Value) {
    let (code, v) = audit(e, &["--check", id]);
    (code, found(&v), v)
}

fn scalar(e: &Env, sql: &str) -> String {
    e.sql(sql).trim().to_string()
}

#[test]
fn clean_registry_has_zero_findings_and_exits_0() {
    let e = fleet();
    let before = e.dump();
    let (code, v) = audit(&e, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["summary"]["findings"], 0);
    assert_eq!(v["summary"]["devices"], DEVICES as i64);
    let by_check = v["summary"]["by_check"].as_object().unwrap();
    assert_eq!(by_check.len(), 23);
    assert!(by_check.values().all(|n| n == 0));
    // Table and CSV say the same; the audit writes nothing.
    let table = e.ok(&["audit"]);
    assert!(
        table.starts_with("no findings: 23 check(s) over 8 device(s) passed"),
        "{table}"
    );
    let csv = e.ok(&["audit", "--format", "csv"]);
    assert_eq!(csv, "severity,check,device,cert,message\n");
    assert_eq!(e.dump(), before, "audit must not change the registry");
    // The event log of a clean registry verifies.
    let out = e.ok(&["log", "verify"]);
    assert!(out.starts_with("event log OK: 33 event(s)"), "{out}");
}

#[test]
fn list_checks_names_every_check_with_severity() {
    let e = fleet();
    let v = e.json(&["audit", "--list-checks"]);
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 27);
    for id in [
        "firmware-below",
        "firmware-listed",
        "no-contact-since",
        "renewal-pending",
        "cert-expiring",
        "cert-expired-deployed",
        "revoked-not-retired",
        "decommissioned-without-wipe",
        "duplicate-public-key",
        "duplicate-hardware-id",
        "duplicate-mac",
        "duplicate-imei",
        "cert-not-chained",
        "cert-fingerprint-mismatch",
        "stuck-provisioning",
        "stuck-decommission",
        "crl-stale",
        "crl-missing-serials",
        "device-mark",
        "event-chain",
    ] {
        assert!(ids.contains(&id), "{id} missing");
    }
}

#[test]
fn skip_leaves_out_checks() {
    let e = fleet();
    e.sql(&format!(
        "UPDATE devices SET imei = '{}' WHERE serial = 'DEV-002'",
        imei(1)
    ));
    // The edit behind cradle's back is also a device-mark finding (not skipped).
    let (code, v) = audit(
        &e,
        &["--skip", "duplicate-imei", "--skip", "cert-not-chained"],
    );
    assert_eq!((code, found(&v)), (1, set(&[("device-mark", "DEV-002")])));
    let checks = v["summary"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 21);
    assert!(!checks
        .iter()
        .any(|c| c == "duplicate-imei" || c == "cert-not-chained"));
    let (code, v) = audit(&e, &["--skip", "cert-not-chained"]);
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[
            ("duplicate-imei", "DEV-001"),
            ("duplicate-imei", "DEV-002"),
            ("device-mark", "DEV-002")
        ])
    );
    // Skipping the only selected check leaves nothing: a usage error, exit 2.
    let err = e.fails(
        &["audit", "--check", "event-chain", "--skip", "event-chain"],
        2,
    );
    assert!(err.contains("no check to run"), "{err}");
}

#[test]
fn usage_and_runtime_errors_exit_2() {
    let e = fleet();
    let err = e.fails(&["audit", "--check", "no-such-check"], 2);
    assert!(err.contains("no-such-check"), "{err}");
    e.fails(&["audit", "--fail-on", "info"], 2);
    e.fails(&["audit", "--format", "xml"], 2);
    // No registry at all: a runtime error, still 2 for audit (documented exception).
    let bare = Env::bare();
    let err = bare.fails(&["audit"], 2);
    assert!(err.contains("cradle init"), "{err}");
    // A registry that is not a database.
    let junk = Env::init();
    std::fs::write(junk.registry(), b"this is not sqlite at all, just text....").unwrap();
    let err = junk.fails(&["audit"], 2);
    assert!(err.starts_with("cradle: error:"), "{err}");
}

#[test]
fn cert_expiring_uses_the_window_and_a_short_lived_profile() {
    let e = fleet();
    // A real short-lived certificate from a custom profile.
    let prof = e.path("short.toml");
    std::fs::write(
        &prof,
        "description = \"short\"\nkind = \"end-entity\"\n[subject]\nCN = \"{serial}\"\n[validity]\ndays = 10\n[extensions]\nkey_usage = [\"digitalSignature\"]\nextended_key_usage = [\"clientAuth\"]\n",
    )
    .unwrap();
    e.ok(&[
        "identity",
        "issue",
        "SHORT-1",
        "--profile",
        prof.to_str().unwrap(),
        "--out",
        e.path("out").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let (code, f, v) = one_check(&e, "cert-expiring");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("cert-expiring", "SHORT-1")]));
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("in 9 days") || msg.contains("in 10 days"),
        "{msg}"
    );
    // Outside a 5-day window it is not reported.
    let (code, v) = audit(&e, &["--check", "cert-expiring", "--expiring-within", "5"]);
    assert_eq!((code, found(&v)), (0, BTreeSet::new()));
    // A 3700-day window catches the 10-year device certificates too.
    let (_, v) = audit(
        &e,
        &["--check", "cert-expiring", "--expiring-within", "3700"],
    );
    assert_eq!(found(&v).len(), DEVICES + 1);
    // Warnings only: --fail-on error exits 0, the default (warning) exits 1.
    let o = e.run(&["audit", "--fail-on", "error"]);
    assert_eq!(o.status.code(), Some(0));
    let o = e.run(&["audit"]);
    assert_eq!(o.status.code(), Some(1));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.contains("warning  cert-expiring"), "{table}");
    assert!(table.contains("SHORT-1"), "{table}");
}

#[test]
fn renewed_certificate_is_not_reported_as_expiring() {
    let e = fleet();
    // DEV-001's certificate expires in 5 days per the registry, but a newer one is active.
    e.sql("UPDATE certificates SET not_after = strftime('%s','now') + 5*86400 WHERE id = 1");
    let (_, f, _) = one_check(&e, "cert-expiring");
    assert_eq!(f, set(&[("cert-expiring", "DEV-001")]));
    e.ok(&[
        "identity",
        "issue",
        "DEV-001",
        "--out",
        e.path("out").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let (code, f, _) = one_check(&e, "cert-expiring");
    assert_eq!((code, f), (0, BTreeSet::new()));
}

#[test]
fn cert_expired_on_deployed_device() {
    let e = fleet();
    e.sql(
        "UPDATE certificates SET not_after = strftime('%s','now') - 86400
         WHERE device_id IN (SELECT id FROM devices WHERE serial IN ('DEV-002','DEV-008'))",
    );
    // DEV-002 is deployed (error); DEV-008 is only provisioned (not deployed).
    let (code, f, _) = one_check(&e, "cert-expired-deployed");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("cert-expired-deployed", "DEV-002")]));
    // Maintenance counts as deployed; retired does not.
    e.sql("UPDATE devices SET status = 'maintenance' WHERE serial = 'DEV-008'");
    e.sql("UPDATE devices SET status = 'retired' WHERE serial = 'DEV-002'");
    let (_, f, _) = one_check(&e, "cert-expired-deployed");
    assert_eq!(f, set(&[("cert-expired-deployed", "DEV-008")]));
}

#[test]
fn revoked_certificate_on_device_not_retired() {
    let e = fleet();
    e.sql(
        "UPDATE certificates SET status = 'revoked', revoked_at = '2026-11-01T00:00:00Z', revocation_reason = 'keyCompromise'
         WHERE device_id IN (SELECT id FROM devices WHERE serial IN ('DEV-003','DEV-004','DEV-005'))",
    );
    e.sql("UPDATE devices SET status = 'retired' WHERE serial = 'DEV-004'");
    e.sql("UPDATE devices SET status = 'decommissioned' WHERE serial = 'DEV-005'");
    let (code, f, v) = one_check(&e, "revoked-not-retired");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("revoked-not-retired", "DEV-003")]));
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("keyCompromise") && msg.contains("deployed"),
        "{msg}"
    );
    // A replacement certificate makes the revoked one history, not a finding.
    e.ok(&[
        "identity",
        "issue",
        "DEV-003",
        "--out",
        e.path("out").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let (code, f, _) = one_check(&e, "revoked-not-retired");
    assert_eq!((code, f), (0, BTreeSet::new()));
}

#[test]
fn decommissioned_without_verified_or_manual_wipe() {
    let e = fleet();
    e.sql(
        "UPDATE devices SET status = 'decommissioned' WHERE serial IN ('DEV-001','DEV-002','DEV-003','DEV-004');
         INSERT INTO wipes (device_id, kind, level, method, attestation_verified, recorded_at)
           SELECT id, 'attested', 'purge', 'crypto-erase', 0, '2026-11-20T10:00:00Z' FROM devices WHERE serial = 'DEV-002';
         INSERT INTO wipes (device_id, kind, level, method, attestation_verified, recorded_at)
           SELECT id, 'attested', 'purge', 'crypto-erase', 1, '2026-11-20T10:00:00Z' FROM devices WHERE serial = 'DEV-003';
         INSERT INTO wipes (device_id, kind, level, method, technician, recorded_at)
           SELECT id, 'manual', 'destroy', 'shred', 'J. Doe', '2026-11-20T10:00:00Z' FROM devices WHERE serial = 'DEV-004';",
    );
    let (code, f, v) = one_check(&e, "decommissioned-without-wipe");
    assert_eq!(code, 1);
    assert_eq!(
        f,
        set(&[
            ("decommissioned-without-wipe", "DEV-001"),
            ("decommissioned-without-wipe", "DEV-002"),
        ])
    );
    let msgs: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(msgs[0].contains("no wipe record"), "{msgs:?}");
    assert!(msgs[1].contains("none verified"), "{msgs:?}");
}

#[test]
fn duplicate_hardware_id_mac_and_imei() {
    let e = fleet();
    e.sql(
        "UPDATE devices SET hardware_id = 'HW1' WHERE serial = 'DEV-004';
         UPDATE devices SET mac = 'AA-BB-CC-00-11-22' WHERE serial = 'DEV-002';
         UPDATE devices SET mac = 'aa:bb:cc:00:11:22' WHERE serial = 'DEV-006';
         UPDATE devices SET imei = '356600000000007' WHERE serial IN ('DEV-003','DEV-005','DEV-007');",
    );
    let (code, v) = audit(&e, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[
            ("duplicate-hardware-id", "DEV-001"),
            ("duplicate-hardware-id", "DEV-004"),
            ("duplicate-mac", "DEV-002"),
            ("duplicate-mac", "DEV-006"),
            ("duplicate-imei", "DEV-003"),
            ("duplicate-imei", "DEV-005"),
            ("duplicate-imei", "DEV-007"),
            // Every row edited with the sqlite3 shell.
            ("device-mark", "DEV-002"),
            ("device-mark", "DEV-003"),
            ("device-mark", "DEV-004"),
            ("device-mark", "DEV-005"),
            ("device-mark", "DEV-006"),
            ("device-mark", "DEV-007"),
        ])
    );
    // CSV for spreadsheets: the same findings, one per row.
    let o = e.run(&["audit", "--format", "csv"]);
    assert_eq!(o.status.code(), Some(1));
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let rows: BTreeSet<(String, String)> = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            assert_eq!(&rec[0], "error");
            (rec[1].to_string(), rec[2].to_string())
        })
        .collect();
    assert_eq!(rows, found(&v));
    let imei = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "duplicate-imei")
        .unwrap();
    assert_eq!(
        imei["message"],
        "IMEI '356600000000007' is shared by 3 devices (DEV-003, DEV-005, DEV-007)"
    );
}

#[test]
fn duplicate_public_key_from_one_csr_signed_for_two_devices() {
    let e = fleet();
    let csr = e.path("dev.csr");
    let (ok, out) = common::openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        e.path("dev.key").to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        "/CN=cloned",
    ]);
    assert!(ok, "{out}");
    // DEV-002 twice: re-signing the same key for the same device is not a duplicate.
    for serial in ["DEV-002", "DEV-002", "DEV-005"] {
        e.ok(&[
            "identity",
            "sign-csr",
            serial,
            "--csr",
            csr.to_str().unwrap(),
            "-o",
            e.path(&format!("{serial}-{}.pem", e.files().len()))
                .to_str()
                .unwrap(),
            "--passphrase-file",
            e.pass(),
        ]);
    }
    let (code, f, _) = one_check(&e, "duplicate-public-key");
    assert_eq!(code, 1);
    assert_eq!(
        f,
        set(&[
            ("duplicate-public-key", "DEV-002"),
            ("duplicate-public-key", "DEV-005"),
        ])
    );
    // Everything else about those certificates is fine.
    let (code, v) = audit(
        &e,
        &[
            "--check",
            "cert-not-chained",
            "--check",
            "cert-fingerprint-mismatch",
        ],
    );
    assert_eq!((code, found(&v)), (0, BTreeSet::new()));
}

#[test]
fn certificate_from_a_foreign_ca_does_not_chain() {
    let e = fleet();
    // Another home with its own CA (same name, different key) issues a certificate;
    // its row is copied into our registry behind cradle's back.
    let other = Env::with_ca();
    other.ok(&[
        "identity",
        "issue",
        "ROGUE-1",
        "--out",
        other.path("out").to_str().unwrap(),
        "--passphrase-file",
        other.pass(),
    ]);
    e.sql(&format!(
        "ATTACH '{}' AS o;
         INSERT INTO devices (serial, status, created_at, updated_at) VALUES ('ROGUE-1', 'deployed', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z');
         INSERT INTO certificates (device_id, ca_id, serial_hex, fingerprint, pubkey_sha256, subject, profile, key_source, not_before, not_after, der, status, created_at)
           SELECT (SELECT id FROM main.devices WHERE serial = 'ROGUE-1'), NULL, serial_hex, fingerprint, pubkey_sha256, subject, profile, key_source, not_before, not_after, der, status, created_at
           FROM o.certificates;",
        other.registry().display()
    ));
    let (code, f, v) = one_check(&e, "cert-not-chained");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("cert-not-chained", "ROGUE-1")]));
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not verify against registered CA"),
        "{msg}"
    );
    // Its recorded fingerprint is honest, so only the chain check fires.
    let (code, f, _) = one_check(&e, "cert-fingerprint-mismatch");
    assert_eq!((code, f), (0, BTreeSet::new()));
}

#[test]
fn tampered_signature_and_unknown_issuer_do_not_chain() {
    let e = fleet();
    // Flip one byte of DEV-003's signature and record the new DER's own fingerprint,
    // so that only the signature can tell.
    let hex = scalar(&e, "SELECT hex(der) FROM certificates WHERE id = 3");
    let mut der = hex::decode(hex).unwrap();
    let n = der.len();
    der[n - 3] ^= 0x01;
    let fp = cradle::pki::cert::sha256_hex(&der);
    e.sql(&format!(
        "UPDATE certificates SET der = X'{}', fingerprint = '{fp}' WHERE id = 3",
        hex::encode(&der)
    ));
    // A DER that does not parse at all.
    e.sql("UPDATE certificates SET der = X'3003020101', fingerprint = lower(hex(randomblob(32))) WHERE id = 5");
    let (code, f, _) = one_check(&e, "cert-not-chained");
    assert_eq!(code, 1);
    assert_eq!(
        f,
        set(&[
            ("cert-not-chained", "DEV-003"),
            ("cert-not-chained", "DEV-005")
        ])
    );
    let (_, f, _) = one_check(&e, "cert-fingerprint-mismatch");
    assert_eq!(f, set(&[("cert-fingerprint-mismatch", "DEV-005")]));
}

#[test]
fn stored_der_not_matching_its_fingerprint() {
    let e = fleet();
    e.sql("UPDATE certificates SET der = (SELECT der FROM certificates WHERE id = 1) WHERE id = 6");
    let (code, f, v) = one_check(&e, "cert-fingerprint-mismatch");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("cert-fingerprint-mismatch", "DEV-006")]));
    assert_eq!(
        v["findings"][0]["cert"].as_str().unwrap(),
        scalar(&e, "SELECT serial_hex FROM certificates WHERE id = 6")
    );
    // Swapped DER is still a valid certificate of our CA.
    let (code, _, _) = one_check(&e, "cert-not-chained");
    assert_eq!(code, 0);
}

#[test]
fn stuck_provisioning_and_decommission() {
    let e = fleet();
    e.sql(
        "UPDATE devices SET status = 'registered' WHERE serial IN ('DEV-001','DEV-002','DEV-003');
         UPDATE certificates SET created_at = '2026-01-01T00:00:00Z' WHERE device_id IN
           (SELECT id FROM devices WHERE serial IN ('DEV-001','DEV-002'));
         UPDATE certificates SET status = 'unused' WHERE device_id = (SELECT id FROM devices WHERE serial = 'DEV-002');
         UPDATE devices SET status = 'retired', updated_at = '2026-01-01T00:00:00Z' WHERE serial = 'DEV-004';
         UPDATE devices SET status = 'retired', updated_at = strftime('%Y-%m-%dT%H:%M:%SZ','now') WHERE serial = 'DEV-005';",
    );
    // DEV-003 was issued just now: registered but not stuck yet. DEV-005 retired today.
    let (code, v) = audit(
        &e,
        &[
            "--check",
            "stuck-provisioning",
            "--check",
            "stuck-decommission",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[
            ("stuck-provisioning", "DEV-001"),
            ("stuck-provisioning", "DEV-002"),
            ("stuck-decommission", "DEV-004"),
        ])
    );
    let msgs: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("never reached 'provisioned'")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("provisioning failed")),
        "{msgs:?}"
    );
    // Warnings: --fail-on error lets a cron job pass.
    let (code, _) = audit(&e, &["--check", "stuck-decommission", "--fail-on", "error"]);
    assert_eq!(code, 0);
    // A longer threshold clears them.
    let (code, _) = audit(
        &e,
        &[
            "--check",
            "stuck-provisioning",
            "--check",
            "stuck-decommission",
            "--stuck-after",
            "100000",
        ],
    );
    assert_eq!(code, 0);
}

/// Signs a CRL with the home's issuing CA and stores it behind cradle's back.
fn publish_crl(e: &Env, number: u64, revoked_hex: &[String], next_update: Duration) {
    let reg = cradle::store::Store::open(&e.registry()).unwrap();
    let signer = cradle::app::ca::unlock(&reg, &e.home.join("ca"), PASS.as_bytes()).unwrap();
    let now = OffsetDateTime::now_utc();
    let this_update = now - Duration::days(10);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: now + next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked_hex
            .iter()
            .map(|h| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex::decode(h).unwrap()),
                revocation_time: now - Duration::days(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let der = params.signed_by(signer.issuer()).unwrap().der().to_vec();
    drop(reg);
    e.sql(&format!(
        "INSERT INTO crls (ca_id, crl_number, this_update, next_update, entries, der, created_at)
         VALUES ({}, {number}, {}, {}, {}, X'{}', '2026-11-01T00:00:00Z')",
        signer.id,
        this_update.unix_timestamp(),
        (now + next_update).unix_timestamp(),
        revoked_hex.len(),
        hex::encode(der)
    ));
}

fn revoke_sql(e: &Env, serials: &[&str]) -> Vec<String> {
    let list = serials
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    e.sql(&format!(
        "UPDATE certificates SET status = 'revoked', revoked_at = '2026-11-20T00:00:00Z', revocation_reason = 'keyCompromise'
         WHERE device_id IN (SELECT id FROM devices WHERE serial IN ({list}));
         UPDATE devices SET status = 'decommissioned' WHERE serial IN ({list});
         INSERT INTO wipes (device_id, kind, level, method, recorded_at)
           SELECT id, 'manual', 'destroy', 'shred', '2026-11-20T00:00:00Z' FROM devices WHERE serial IN ({list});"
    ));
    e.sql(&format!(
        "SELECT c.serial_hex FROM certificates c JOIN devices d ON d.id = c.device_id WHERE d.serial IN ({list}) ORDER BY d.serial"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn crl_missing_or_stale() {
    let e = fleet();
    let serials = revoke_sql(&e, &["DEV-001", "DEV-002"]);
    // Revoked certificates and no CRL at all.
    let (code, f, v) = one_check(&e, "crl-stale");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("crl-stale", "-")]));
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("2 certificate(s) of CA 'Test' are revoked but no CRL"));
    // A CRL whose next update passed yesterday.
    publish_crl(&e, 1, &serials, Duration::days(-1));
    let (code, f, v) = one_check(&e, "crl-stale");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("crl-stale", "-")]));
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("CRL #1 of CA 'Test' is stale"));
    // A fresh CRL (a higher number) clears it; the whole audit is clean again.
    publish_crl(&e, 2, &serials, Duration::days(7));
    // (The fixture revoked by SQL, which cert-status-vs-log exists to catch, and set the
    // devices' status with it, which device-mark does.)
    let (code, v) = audit(&e, &["--skip", "cert-status-vs-log"]);
    assert_eq!(
        (code, found(&v)),
        (
            1,
            set(&[("device-mark", "DEV-001"), ("device-mark", "DEV-002")])
        ),
        "{v}"
    );
}

#[test]
fn crl_missing_a_revoked_serial() {
    let e = fleet();
    let serials = revoke_sql(&e, &["DEV-003", "DEV-004", "DEV-007"]);
    // The newest CRL forgets DEV-004 (an older CRL that listed it does not count).
    publish_crl(&e, 1, &serials, Duration::days(7));
    publish_crl(
        &e,
        2,
        &[serials[0].clone(), serials[2].clone()],
        Duration::days(7),
    );
    let (code, f, v) = one_check(&e, "crl-missing-serials");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("crl-missing-serials", "DEV-004")]));
    assert_eq!(v["findings"][0]["cert"].as_str().unwrap(), serials[1]);
    // Cross-check with OpenSSL: the stored CRL really lacks that serial.
    let der = hex::decode(scalar(&e, "SELECT hex(der) FROM crls WHERE crl_number = 2")).unwrap();
    let p = e.path("crl.der");
    std::fs::write(&p, der).unwrap();
    let (ok, text) = common::openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        p.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ok, "{text}");
    assert!(!text.to_lowercase().contains(&serials[1].to_lowercase()));
    assert!(text.to_lowercase().contains(&serials[0].to_lowercase()));
}

#[test]
fn crl_not_signed_by_its_ca() {
    let e = fleet();
    let serials = revoke_sql(&e, &["DEV-006"]);
    publish_crl(&e, 1, &serials, Duration::days(7));
    // Corrupt the CRL signature behind cradle's back.
    let hex = scalar(&e, "SELECT hex(der) FROM crls WHERE crl_number = 1");
    let mut der = hex::decode(hex).unwrap();
    let n = der.len();
    der[n - 2] ^= 0x40;
    e.sql(&format!("UPDATE crls SET der = X'{}'", hex::encode(der)));
    let (code, f, v) = one_check(&e, "crl-missing-serials");
    assert_eq!(code, 1);
    assert_eq!(f, set(&[("crl-missing-serials", "-")]));
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("is not signed by that CA"));
}

fn event_break(e: &Env) -> (BTreeSet<(String, String)>, String) {
    let (code, f, v) = one_check(e, "event-chain");
    assert_eq!(code, 1, "{v}");
    (f, v["findings"][0]["message"].as_str().unwrap().to_string())
}

#[test]
fn edited_event_is_named() {
    let e = fleet();
    // Event 5 is DEV-003's identity.issued (1 init, 2 CA, then one per device).
    assert_eq!(
        scalar(
            &e,
            "SELECT d.serial FROM events e JOIN devices d ON d.id = e.device_id WHERE e.id = 5"
        ),
        "DEV-003"
    );
    e.sql("UPDATE events SET actor = 'mallory' WHERE id = 5");
    let (f, msg) = event_break(&e);
    assert_eq!(f, set(&[("event-chain", "DEV-003")]));
    assert!(msg.starts_with("event 5 altered"), "{msg}");
    // `log verify` names it too, and exits 1.
    let o = e.run(&["log", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("BROKEN at event 5 (altered, device DEV-003)"),
        "{out}"
    );
    let o = e.run(&["--json", "log", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_break"]["event_id"], 5);
    assert_eq!(v["first_break"]["problem"], "altered");
    assert_eq!(v["first_break"]["device"], "DEV-003");
}

#[test]
fn deleted_event_is_named() {
    let e = fleet();
    e.sql("DELETE FROM events WHERE id = 6");
    let (f, msg) = event_break(&e);
    assert_eq!(f, set(&[("event-chain", "-")]));
    assert!(
        msg.contains("event(s) 6..6 were deleted before event 7"),
        "{msg}"
    );
    // Deleting the newest event is caught by the recorded head.
    let e = fleet();
    e.sql("DELETE FROM events WHERE id = (SELECT max(id) FROM events)");
    let (_, msg) = event_break(&e);
    assert!(msg.contains("deleted"), "{msg}");
    let o = e.run(&["log", "verify"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn inserted_events_are_named() {
    use cradle::store::events::{event_hash, Hashed};
    // An event forged with a self-consistent hash at the end of the chain but linked
    // to a made-up previous hash.
    let e = fleet();
    let max: i64 = scalar(&e, "SELECT max(id) FROM events").parse().unwrap();
    let id = max + 1;
    let prev = "ab".repeat(32);
    let details = "{\"note\":\"forged\"}";
    // These forgers hold the log key: what is left to catch is the broken link/head.
    let key = |e: &Env| {
        cradle::store::logkey::LogKey::read(&e.home.join("log.key"))
            .unwrap()
            .expect("the home has a log key")
    };
    let k = key(&e);
    let h = event_hash(
        k.for_id(id),
        &Hashed {
            id,
            prev_hash: prev.as_bytes(),
            device_id: Some(2),
            kind: "device.state",
            actor: "mallory",
            station: "x",
            at: "2026-11-01T00:00:00Z",
            details,
        },
    );
    e.sql(&format!(
        "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
         VALUES ({id}, 2, 'device.state', 'mallory', 'x', '2026-11-01T00:00:00Z', '{details}', '{prev}', '{h}')"
    ));
    let (f, msg) = event_break(&e);
    assert_eq!(f, set(&[("event-chain", "DEV-002")]));
    assert!(msg.starts_with(&format!("event {id} inserted")), "{msg}");

    // Properly chained to the head, but appended without cradle (meta head not moved).
    let e = fleet();
    let head = scalar(&e, "SELECT hash FROM events ORDER BY id DESC LIMIT 1");
    let k = key(&e);
    let h = event_hash(
        k.for_id(id),
        &Hashed {
            id,
            prev_hash: head.as_bytes(),
            device_id: Some(2),
            kind: "device.state",
            actor: "mallory",
            station: "x",
            at: "2026-11-01T00:00:00Z",
            details,
        },
    );
    e.sql(&format!(
        "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
         VALUES ({id}, 2, 'device.state', 'mallory', 'x', '2026-11-01T00:00:00Z', '{details}', '{head}', '{h}')"
    ));
    let (_, msg) = event_break(&e);
    assert!(
        msg.contains(&format!("after {max} were appended out of band")),
        "{msg}"
    );
}

#[test]
fn log_export_formats_and_filters() {
    let e = fleet();
    let total: usize = scalar(&e, "SELECT count(*) FROM events").parse().unwrap();
    let jsonl = e.ok(&["log", "export"]);
    assert_eq!(jsonl.lines().count(), total);
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(first["kind"], "home.initialised");
    let arr = e.json(&["log", "export"]);
    assert_eq!(arr.as_array().unwrap().len(), total);
    // The export carries the chain: each prev_hash is the previous hash.
    let a = arr.as_array().unwrap();
    for w in a.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let dev = e.json(&["log", "export", "--device", "DEV-004"]);
    let kinds: Vec<&str> = dev
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    // Issued, then the fleet's two inventory imports (fields + provisioned, deployed).
    assert_eq!(
        kinds,
        [
            "identity.issued",
            "device.updated",
            "device.state",
            "device.state"
        ]
    );
    assert!(dev
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["device"] == "DEV-004"));
    // --since: future → nothing; past → everything.
    assert_eq!(e.ok(&["log", "export", "--since", "2999-01-01"]), "");
    assert_eq!(
        e.ok(&["log", "export", "--since", "2000-01-01T00:00:00Z"])
            .lines()
            .count(),
        total
    );
    let csv = e.ok(&["log", "export", "--format", "csv"]);
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "id",
            "at",
            "kind",
            "device",
            "actor",
            "station",
            "details",
            "prev_hash",
            "hash"
        ]
    );
    assert_eq!(r.records().count(), total);
    // Written to a file.
    let out = e.path("events.jsonl");
    e.ok(&["log", "export", "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), jsonl);
    // An unwritable destination: exit 8, nothing left behind.
    let files = e.files();
    let err = e.fails(
        &[
            "log",
            "export",
            "-o",
            e.path("no/such/dir/x.jsonl").to_str().unwrap(),
        ],
        8,
    );
    assert!(err.contains("no/such/dir"), "{err}");
    assert_eq!(e.files(), files);
    // Bad input: one clear line, exit 3.
    let err = e.fails(&["log", "export", "--since", "last tuesday"], 3);
    assert!(
        err.contains("--since 'last tuesday' is not a time"),
        "{err}"
    );
    let err = e.fails(&["log", "export", "--device", "NOPE"], 3);
    assert!(err.contains("NOPE"), "{err}");
}

/// `data-*` attribute values of the elements whose tag text contains `marker`.
fn attr_of(html: &str, marker: &str, attr: &str) -> Option<String> {
    let pos = html.find(marker)?;
    let tag_start = html[..pos].rfind('<')?;
    let tag_end = pos + html[pos..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(tag[i..j].to_string())
}

fn count_of(html: &str, marker: &str) -> i64 {
    attr_of(html, marker, "data-count")
        .unwrap_or_else(|| panic!("no data-count on {marker}"))
        .parse()
        .unwrap()
}

#[test]
fn fleet_report_html_matches_the_registry() {
    let e = fleet();
    // Some variety: a decommissioned device with a wipe, one without, an expiring cert.
    revoke_sql(&e, &["DEV-007"]);
    e.sql(
        "UPDATE devices SET status = 'decommissioned', updated_at = '2026-11-22T09:00:00Z' WHERE serial = 'DEV-006';
         UPDATE devices SET updated_at = '2026-11-21T09:00:00Z' WHERE serial = 'DEV-007';
         UPDATE certificates SET not_after = strftime('%s','now') + 3*86400 WHERE id = 1;
         UPDATE devices SET site = '<script>alert(1)</script>' WHERE serial = 'DEV-005';",
    );
    let out = e.path("fleet.html");
    let before = e.dump();
    e.ok(&["report", "fleet", "-o", out.to_str().unwrap()]);
    assert_eq!(e.dump(), before, "a report must not change the registry");
    let html = std::fs::read_to_string(&out).unwrap();

    // Self-contained: no scripts, no external resources, user data escaped.
    assert!(html.starts_with("<!DOCTYPE html>"));
    for bad in [
        "<script", "<link", " src=", "url(", "@import", "http://", "https://",
    ] {
        let hits: Vec<_> = html.match_indices(bad).collect();
        // The only URL allowed is the SVG namespace name (never fetched).
        let allowed = hits
            .iter()
            .all(|(i, _)| html[*i..].starts_with("http://www.w3.org/2000/svg"));
        assert!(allowed, "report contains {bad}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // Numbers against the registry.
    let n = |sql: &str| -> i64 { scalar(&e, sql).parse().unwrap() };
    assert_eq!(
        count_of(&html, "id=\"kpi-devices\""),
        n("SELECT count(*) FROM devices")
    );
    assert_eq!(
        count_of(&html, "id=\"kpi-active-certificates\""),
        n("SELECT count(*) FROM certificates WHERE status = 'active'")
    );
    for st in [
        "registered",
        "provisioned",
        "deployed",
        "maintenance",
        "retired",
        "decommissioned",
    ] {
        assert_eq!(
            count_of(&html, &format!("data-group=\"state\" data-label=\"{st}\"")),
            n(&format!(
                "SELECT count(*) FROM devices WHERE status = '{st}'"
            )),
            "{st}"
        );
    }
    assert_eq!(
        count_of(&html, "data-group=\"site\" data-label=\"Lyon\""),
        n("SELECT count(*) FROM devices WHERE site = 'Lyon'")
    );
    assert_eq!(
        count_of(&html, "data-group=\"site\" data-label=\"Berlin\""),
        3
    );
    assert_eq!(
        count_of(&html, "data-group=\"batch\" data-label=\"B-2026-11\""),
        8
    );
    assert_eq!(
        count_of(&html, "data-group=\"model\" data-label=\"sensor-s\""),
        4
    );
    assert_eq!(
        count_of(&html, "data-group=\"model\" data-label=\"gateway-g\""),
        4
    );
    assert_eq!(
        count_of(&html, "data-group=\"certificate\" data-label=\"revoked\""),
        1
    );

    // The chart: one bar per month plus "expired" and "later"; bars sum to the active
    // certificates of in-service devices.
    let bars: Vec<(String, i64)> = html
        .match_indices("<g class=\"bar\" data-month=\"")
        .map(|(i, m)| {
            let s = &html[i + m.len()..];
            let month = s[..s.find('"').unwrap()].to_string();
            (
                month.clone(),
                count_of(&html[i..], &format!("data-month=\"{month}\"")),
            )
        })
        .collect();
    assert_eq!(bars.len(), 14, "{bars:?}");
    assert_eq!(bars[0].0, "expired");
    assert_eq!(bars[13].0, "later");
    let in_service = n(
        "SELECT count(*) FROM certificates c JOIN devices d ON d.id = c.device_id
                        WHERE c.status = 'active' AND d.status NOT IN ('retired','decommissioned')",
    );
    assert_eq!(bars.iter().map(|b| b.1).sum::<i64>(), in_service);
    // DEV-001's certificate expires in 3 days: this month or next.
    assert_eq!(bars[1].1 + bars[2].1, 1, "{bars:?}");
    assert_eq!(bars[13].1, in_service - 1);

    // Findings: the same as `cradle audit`.
    let (_, v) = audit(&e, &[]);
    let total = v["summary"]["findings"].as_i64().unwrap();
    assert_eq!(count_of(&html, "id=\"findings\""), total);
    assert_eq!(html.matches("<tr class=\"finding\"").count() as i64, total);
    assert!(html.contains("data-check=\"decommissioned-without-wipe\" data-severity=\"error\" data-device=\"DEV-006\""));
    assert!(html.contains(
        "data-check=\"cert-expiring\" data-severity=\"warning\" data-device=\"DEV-001\""
    ));
    assert_eq!(
        count_of(&html, "<tr data-check=\"decommissioned-without-wipe\""),
        1
    );
    assert_eq!(count_of(&html, "<tr data-check=\"event-chain\""), 0);

    // Recent decommissions, newest first.
    assert_eq!(count_of(&html, "id=\"decommissions\""), 2);
    let i6 = html
        .find("class=\"decommission\" data-serial=\"DEV-006\"")
        .unwrap();
    let i7 = html
        .find("class=\"decommission\" data-serial=\"DEV-007\"")
        .unwrap();
    assert!(i6 < i7, "newest decommission first");

    // --skip leaves a check out of the report's findings.
    let j = e.json(&["report", "fleet", "--skip", "cert-expiring"]);
    assert_eq!(j["audit"]["checks"].as_array().unwrap().len(), 22);
    assert_eq!(j["audit"]["findings"], total - 1);

    // --json gives the same numbers.
    let j = e.json(&["report", "fleet"]);
    assert_eq!(j["devices"], 8);
    assert_eq!(j["audit"]["findings"], total);
    assert_eq!(j["expiry"]["months"].as_array().unwrap().len(), 12);
}

#[test]
fn fleet_report_on_an_empty_registry() {
    let e = Env::with_ca();
    let html = e.ok(&["report", "fleet"]);
    assert_eq!(count_of(&html, "id=\"kpi-devices\""), 0);
    assert!(html.contains("No findings: every check passed."));
    assert!(html.contains("No device has been decommissioned yet."));
    let e = Env::bare();
    e.fails(&["report", "fleet"], 4);
}

// --- verification marks: cert-not-chained skips ECDSA only for rows cradle recorded ---

/// (signatures verified, certificates accepted on their mark) from the summary.
fn sig_counts(v: &Value) -> (u64, u64) {
    (
        v["summary"]["signatures_verified"].as_u64().unwrap(),
        v["summary"]["marks_accepted"].as_u64().unwrap(),
    )
}

/// Inserts device `serial` with a certificate row of `der` behind cradle's back, naming
/// our issuing CA, recording the DER's own hash as fingerprint and carrying a mark
/// copied from certificate row 1. `serial_hex` overrides the certificate serial (for a
/// copy of an existing certificate, which the UNIQUE constraint would refuse).
fn insert_with_copied_mark(e: &Env, serial: &str, der: &[u8], serial_hex: Option<&str>) {
    let info = cradle::pki::cert::info_of(der).unwrap();
    let fingerprint = cradle::pki::cert::sha256_hex(der);
    e.sql(&format!(
        "INSERT INTO devices (serial, status, created_at, updated_at) VALUES ('{serial}', 'deployed', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z');
         INSERT INTO certificates (device_id, ca_id, serial_hex, fingerprint, pubkey_sha256, subject, profile, key_source, not_before, not_after, der, status, created_at, verified_mac)
           VALUES ((SELECT id FROM devices WHERE serial = '{serial}'),
                   (SELECT ca_id FROM certificates WHERE id = 1), '{}', '{fingerprint}', '{}', 'CN={serial}', 'device', 'host',
                   {}, {}, X'{}', 'active', '2026-11-01T00:00:00Z',
                   (SELECT verified_mac FROM certificates WHERE id = 1));",
        serial_hex.unwrap_or(&info.serial_hex),
        info.pubkey_sha256,
        info.not_before,
        info.not_after,
        hex::encode(der)
    ));
}

/// A certificate from another home's CA (same CA name, different key).
fn foreign_cert(serial: &str) -> Vec<u8> {
    let other = Env::with_ca();
    other.ok(&[
        "identity",
        "issue",
        serial,
        "--out",
        other.path("out").to_str().unwrap(),
        "--passphrase-file",
        other.pass(),
    ]);
    let hex = other
        .sql("SELECT hex(der) FROM certificates")
        .trim()
        .to_string();
    hex::decode(hex).unwrap()
}

/// A self-signed certificate: its issuer is no registered CA.
fn self_signed(cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![format!("{cn}.test")]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn cradle_recorded_certificates_carry_marks_that_the_audit_accepts() {
    let e = fleet();
    assert_eq!(
        scalar(
            &e,
            "SELECT count(*) FROM certificates WHERE length(verified_mac) = 32"
        ),
        DEVICES.to_string()
    );
    let (code, v) = audit(&e, &["--check", "cert-not-chained"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sig_counts(&v), (0, DEVICES as u64));
    // identity issue (single) records a mark too.
    e.ok(&[
        "identity",
        "issue",
        "ONE-1",
        "--out",
        e.path("one").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let (code, v) = audit(&e, &["--check", "cert-not-chained"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sig_counts(&v), (0, DEVICES as u64 + 1));
}

#[test]
fn copied_marks_do_not_skip_verification() {
    let e = fleet();
    // A foreign CA's certificate (bad signature for our CA), a certificate of ours with
    // one signature byte flipped, and a self-signed one (unknown issuer): each inserted
    // behind cradle's back with a mark copied from a genuine row.
    insert_with_copied_mark(&e, "ROGUE-1", &foreign_cert("ROGUE-1"), None);
    let mut der =
        hex::decode(scalar(&e, "SELECT hex(der) FROM certificates WHERE id = 2")).unwrap();
    let n = der.len();
    der[n - 3] ^= 0x01;
    insert_with_copied_mark(&e, "ROGUE-2", &der, Some("7e57"));
    insert_with_copied_mark(&e, "ROGUE-3", &self_signed("Rogue Root"), None);
    let before = e.dump();
    let (code, f, v) = one_check(&e, "cert-not-chained");
    assert_eq!(code, 1);
    assert_eq!(
        f,
        set(&[
            ("cert-not-chained", "ROGUE-1"),
            ("cert-not-chained", "ROGUE-2"),
            ("cert-not-chained", "ROGUE-3"),
        ])
    );
    let msgs: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs[0].contains("does not verify against registered CA"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("does not verify against registered CA"),
        "{msgs:?}"
    );
    assert!(msgs[2].contains("which is not a registered CA"), "{msgs:?}");
    // The genuine rows keep their shortcut; the three rogues are verified in full.
    assert_eq!(sig_counts(&v), (3, DEVICES as u64));
    assert_eq!(e.dump(), before, "audit must not change the registry");
}

#[test]
fn altered_der_is_not_shortcut_even_with_its_own_mark() {
    let e = fleet();
    // Row 4 keeps its fingerprint and its genuine mark, but its DER is replaced by a
    // foreign CA's certificate: the fingerprint no longer matches, so no shortcut.
    let der = foreign_cert("DEV-004");
    e.sql(&format!(
        "UPDATE certificates SET der = X'{}' WHERE id = 4",
        hex::encode(&der)
    ));
    let (code, v) = audit(
        &e,
        &[
            "--check",
            "cert-not-chained",
            "--check",
            "cert-fingerprint-mismatch",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[
            ("cert-fingerprint-mismatch", "DEV-004"),
            ("cert-not-chained", "DEV-004")
        ])
    );
    assert_eq!(sig_counts(&v), (1, DEVICES as u64 - 1));
    // The same with cert-not-chained alone (the fingerprint is still compared).
    let (code, f, v) = one_check(&e, "cert-not-chained");
    assert_eq!((code, f), (1, set(&[("cert-not-chained", "DEV-004")])));
    assert_eq!(sig_counts(&v), (1, DEVICES as u64 - 1));
    // A CA row altered behind cradle's back invalidates every mark made under it.
    e.sql("UPDATE cas SET der = CAST(der || X'00' AS BLOB) WHERE role = 'issuing'");
    // (One trailing byte: the CA still parses and its key still verifies the genuine rows.)
    let (code, f, v) = one_check(&e, "cert-not-chained");
    assert_eq!((code, f), (1, set(&[("cert-not-chained", "DEV-004")])));
    assert_eq!(sig_counts(&v), (DEVICES as u64, 0));
}

#[test]
fn full_verifies_every_signature_with_the_same_findings() {
    let e = fleet();
    insert_with_copied_mark(&e, "ROGUE-1", &foreign_cert("ROGUE-1"), None);
    let (code, marked) = audit(&e, &[]);
    assert_eq!(code, 1);
    assert_eq!(sig_counts(&marked), (1, DEVICES as u64));
    for flag in ["--full", "--verify-signatures"] {
        let (code, full) = audit(&e, &[flag]);
        assert_eq!(code, 1);
        assert_eq!(found(&full), found(&marked));
        assert_eq!(full["findings"], marked["findings"]);
        assert_eq!(sig_counts(&full), (DEVICES as u64 + 1, 0), "{flag}");
    }
    // --full with only other checks verifies nothing.
    let (_, v) = audit(&e, &["--full", "--check", "cert-expiring"]);
    assert_eq!(sig_counts(&v), (0, 0));
}

#[test]
fn without_the_key_file_every_signature_is_verified_with_a_note() {
    let e = fleet();
    insert_with_copied_mark(&e, "ROGUE-3", &self_signed("Rogue Root"), None);
    let (code, with_key) = audit(&e, &[]);
    assert_eq!(code, 1);
    assert_eq!(sig_counts(&with_key), (1, DEVICES as u64));
    let o = e.run(&["--json", "audit"]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let key = e.home.join("ca/audit.key");
    let before = e.dump();
    for (what, setup) in [("missing", None), ("short", Some(&b"not 32 bytes"[..]))] {
        let _ = std::fs::remove_file(&key);
        if let Some(bytes) = setup {
            std::fs::write(&key, bytes).unwrap();
        }
        let o = e.run(&["--json", "audit"]);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["findings"], with_key["findings"], "{what}");
        assert_eq!(sig_counts(&v), (DEVICES as u64 + 1, 0), "{what}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("cradle: note: ")
                && err.contains("audit.key")
                && err.contains("verifying the signature of every certificate in full")
                && err.lines().count() == 1,
            "{what}: {err}"
        );
        // A note, not a finding; and the audit neither writes the registry nor the key.
        assert_eq!(v["summary"]["findings"], with_key["summary"]["findings"]);
        assert_eq!(e.dump(), before);
        assert_eq!(key.exists(), setup.is_some(), "{what}");
    }
    // --full needs no key and says nothing about it.
    let o = e.run(&["--json", "audit", "--full"]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn audit_key_is_0600_and_never_in_the_registry() {
    use std::os::unix::fs::PermissionsExt;
    let e = fleet();
    let key_path = e.home.join("ca/audit.key");
    let meta = std::fs::metadata(&key_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32);
    let dump = e.dump();
    assert!(!dump.contains(&hex::encode(&key)));
    assert!(!dump.contains(&hex::encode_upper(&key)));
    // Nor its raw bytes anywhere in the database files.
    for f in std::fs::read_dir(&e.home).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("registry.db")
        {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(32).any(|w| w == key.as_slice()),
                "{}",
                p.display()
            );
        }
    }
    // The mark is not the key, and not a plain hash of the fingerprint.
    let mark = scalar(
        &e,
        "SELECT lower(hex(verified_mac)) FROM certificates WHERE id = 1",
    );
    let fp = scalar(&e, "SELECT fingerprint FROM certificates WHERE id = 1");
    assert_eq!(mark.len(), 64);
    assert_ne!(mark, hex::encode(&key));
    assert_ne!(mark, cradle::pki::cert::sha256_hex(fp.as_bytes()));
}

/// The issue's forged history: rewrite an event with the sqlite3 shell, then recompute
/// every plain SHA-256 hash and the recorded head with a small script. Without the log
/// key the forger cannot produce the keyed hashes, so `log verify` names the event.
#[test]
fn forged_history_with_recomputed_plain_hashes_is_detected() {
    let e = fleet();
    let o = std::process::Command::new("sqlite3")
        .arg(e.registry())
        .arg("UPDATE events SET actor = 'mallory' WHERE id = 5;")
        .output()
        .expect("sqlite3 shell");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Keep the untouched prefix; rechain from the rewritten event on.
    rechain_plain(&e, 5);
    let o = e.run(&["--json", "log", "verify"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_break"]["event_id"], 5, "{v}");
    assert_eq!(v["first_break"]["problem"], "altered");
    assert_eq!(v["first_break"]["device"], "DEV-003");
    // Without the key the same registry can only be checked for structure: exit 1.
    std::fs::remove_file(e.home.join("log.key")).unwrap();
    let o = e.run(&["log", "verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("UNVERIFIED") && out.contains("log.key"),
        "{out}"
    );
    // The audit says so too.
    let (f, msg) = event_break(&e);
    assert_eq!(f, set(&[("event-chain", "-")]), "{msg}");
    assert!(
        msg.contains("unverified") && msg.contains("log key"),
        "{msg}"
    );
}

/// Recomputes plain SHA-256 hashes (the pre-key scheme) from event `from` on, and the
/// recorded head, with python3's hashlib and sqlite3: what a forger's script does.
fn rechain_plain(e: &Env, from: i64) {
    let script = r#"
import hashlib, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n = int(sys.argv[2])
prev = db.execute("SELECT hash FROM events WHERE id = ?", (n - 1,)).fetchone()[0] if n > 1 else "0" * 64
last = n - 1
for (i, dev, kind, actor, station, at, details) in db.execute(
        "SELECT id, device_id, kind, actor, station, at, details FROM events WHERE id >= ? ORDER BY id", (n,)).fetchall():
    parts = [str(i), prev, "" if dev is None else str(dev), kind, actor, station, at, details]
    h = hashlib.sha256(("\n".join(parts) + "\n").encode()).hexdigest()
    db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, i))
    prev, last = h, i
db.execute("UPDATE meta SET value = ? WHERE key = 'event_head'", ("%d:%s" % (last, prev),))
db.commit()
"#;
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(e.registry())
        .arg(from.to_string())
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A registry from before the log key (plain hashes, no key file) still verifies; its
/// first write creates the key and a keyed `log.keyed` event, and from then on a
/// rewrite on either side of that boundary is caught.
#[test]
fn older_registry_gets_a_log_key_on_its_first_write() {
    let e = fleet();
    rechain_plain(&e, 1);
    std::fs::remove_file(e.home.join("log.key")).unwrap();
    let o = e.run(&["log", "verify"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let before: i64 = scalar(&e, "SELECT max(id) FROM events").parse().unwrap();
    let csv = e.home.join("more.csv");
    std::fs::write(&csv, "serial,hardware_id\nNEW-1,hw-new-1\n").unwrap();
    let o = e.run(&["inventory", "import", csv.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let key = e.home.join("log.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        scalar(
            &e,
            &format!("SELECT kind FROM events WHERE id = {}", before + 1)
        ),
        "log.keyed"
    );
    let o = e.run(&["log", "verify"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A script that rechains the keyed part with plain hashes is caught at the marker.
    rechain_plain(&e, before + 1);
    let o = e.run(&["--json", "log", "verify"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["first_break"]["event_id"], before + 1, "{v}");
    assert_eq!(o.status.code(), Some(1));
}

/// `log head` gives an auditor a head to record; `log verify --anchor` proves the log
/// still extends it, and fails once the events up to it were rolled back consistently
/// (what a deleted -wal does), which the chain alone cannot see.
#[test]
fn log_head_and_verify_anchor_catch_a_consistent_rollback() {
    let e = fleet();
    let o = e.run(&["--json", "log", "head"]);
    assert_eq!(o.status.code(), Some(0));
    let head: Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = head["id"].as_i64().unwrap();
    let hash = head["hash"].as_str().unwrap().to_string();
    assert_eq!(head["keyed"], true, "{head}");
    assert_eq!(
        scalar(&e, &format!("SELECT hash FROM events WHERE id = {id}")),
        hash
    );
    let anchor = e.home.join("anchor.json");
    std::fs::write(&anchor, &o.stdout).unwrap();
    let o = e.run(&["log", "head"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with(&format!("{id}:{hash}")), "{text}");
    // The log grows: it still extends the anchor, in every spelling of it.
    let csv = e.home.join("more.csv");
    std::fs::write(&csv, "serial,hardware_id\nNEW-1,hw-new-1\n").unwrap();
    assert_eq!(
        e.run(&["inventory", "import", csv.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    for a in [
        anchor.to_str().unwrap().to_string(),
        format!("{id}:{hash}"),
        hash.clone(),
    ] {
        let o = e.run(&["log", "verify", "--anchor", &a]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{a}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // Roll back to before the anchor, head and all: the chain alone is consistent...
    e.sql(&format!("DELETE FROM events WHERE id >= {id}"));
    let prev = scalar(
        &e,
        &format!("SELECT hash FROM events WHERE id = {}", id - 1),
    );
    e.sql(&format!(
        "UPDATE meta SET value = '{}:{prev}' WHERE key = 'event_head'",
        id - 1
    ));
    assert_eq!(e.run(&["log", "verify"]).status.code(), Some(0));
    // ...but it no longer extends the anchor.
    let o = e.run(&[
        "--json",
        "log",
        "verify",
        "--anchor",
        anchor.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["first_break"]["problem"], "anchor", "{v}");
    assert!(
        v["first_break"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("event {id} is gone")),
        "{v}"
    );
    let o = e.run(&["log", "verify", "--anchor", "nonsense"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--anchor nonsense"), "{err}");
}

// ---- device-mark: keyed marks over device rows -------------------------------------

/// Findings of the device-mark check alone: (exit code, (check, device) set, output).
fn mark_findings(e: &Env) -> (i32, BTreeSet<(String, String)>, Value) {
    one_check(e, "device-mark")
}

/// Every device row carries a 32-byte mark.
fn all_rows_marked(e: &Env) -> bool {
    scalar(
        e,
        "SELECT count(*) = sum(typeof(mark) = 'blob' AND length(mark) = 32) FROM devices",
    ) == "1"
}

#[test]
fn every_cradle_write_of_a_device_row_leaves_a_mark_that_verifies() {
    let e = Env::with_ca();
    // Bulk import (marks computed in the INSERT), then an update of the same rows.
    std::fs::write(
        e.path("inv.csv"),
        "serial,hardware_id,mac,site\nM-1,HW-M-1,02:00:00:00:01:01,Lyon\nM-2,HW-M-2,02:00:00:00:01:02,Lyon\n",
    )
    .unwrap();
    e.ok(&["inventory", "import", "inv.csv"]);
    assert!(all_rows_marked(&e));
    std::fs::write(
        e.path("upd.csv"),
        "serial,model,notes\nM-1,sensor-s,first\nM-2,sensor-s,second\n",
    )
    .unwrap();
    e.ok(&["inventory", "import", "upd.csv", "--mode", "update"]);
    // Identities for M-1 and M-2, a device registered by a provisioning station.
    e.ok(&["identity", "issue", "M-1", "--passphrase-file", e.pass()]);
    e.ok(&["identity", "issue", "M-2", "--passphrase-file", e.pass()]);
    let link = e.path("dev/dut");
    let state = e.path("dut.json");
    let _sim = common::Sim::start(
        &e,
        &[
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "HW-SIM-1",
            "--state",
            state.to_str().unwrap(),
        ],
        1,
    );
    let (code, v, err) = common::provision_json(&e, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    // Field and lifecycle changes: set, status, deploy, maintenance, retire/decommission.
    e.ok(&["device", "set", "M-1", "site=Berlin", "owner=ops"]);
    e.ok(&["device", "set", "M-1", "status=provisioned"]);
    e.ok(&["device", "deploy", "M-1", "--site", "Berlin"]);
    e.ok(&["device", "maintenance", "M-1"]);
    e.ok(&["device", "deploy", "HW-SIM-1", "--site", "Lyon"]);
    e.ok(&[
        "decommission",
        "M-2",
        "--wipe-method",
        "purge",
        "--wipe-tool",
        "nwipe",
        "--wipe-tool-version",
        "0.34",
        "--verified-by",
        "QA Lead",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(
        scalar(&e, "SELECT group_concat(serial || ':' || status, ' ') FROM (SELECT * FROM devices ORDER BY id)"),
        "M-1:maintenance M-2:decommissioned HW-SIM-1:deployed"
    );
    assert!(all_rows_marked(&e));
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (0, BTreeSet::new()), "{v}");
    let (_, v) = audit(&e, &[]);
    assert_eq!(v["summary"]["by_check"]["device-mark"], 0, "{v}");
    // The key is the log key's: not in the registry, and no mark is one the audit
    // could make without it.
    let key = std::fs::read_to_string(e.home.join("log.key")).unwrap();
    let hex_key = key.lines().nth(2).unwrap().strip_prefix("key ").unwrap();
    assert!(!e.dump().to_lowercase().contains(hex_key));
    // Without the key the rows cannot be verified: one registry-wide finding says so.
    std::fs::remove_file(e.home.join("log.key")).unwrap();
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "-")])), "{v}");
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("log key (log.key in the home) is missing"));
}

#[test]
fn a_shell_edit_of_a_device_row_is_named_and_survives_the_next_cradle_write() {
    let e = fleet();
    assert!(all_rows_marked(&e));
    e.sql("UPDATE devices SET mac = '02:00:00:00:00:99' WHERE serial = 'DEV-003'");
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "DEV-003")])), "{v}");
    assert_eq!(v["findings"][0]["severity"], "error");
    assert_eq!(
        v["findings"][0]["message"],
        "device row changed outside cradle (mark does not verify)"
    );
    let table = String::from_utf8(e.run(&["audit", "--check", "device-mark"]).stdout).unwrap();
    assert!(
        table.contains("device-mark") && table.contains("DEV-003"),
        "{table}"
    );
    // A later cradle write of that device does not launder the edit; other rows it
    // writes stay clean.
    e.ok(&["device", "set", "DEV-003", "notes=after the edit"]);
    e.ok(&["device", "set", "DEV-004", "notes=untouched row"]);
    let (code, f, _) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "DEV-003")])));
    // Swapping two rows' marks is caught too (the id is covered).
    e.sql(
        "UPDATE devices SET mark = (SELECT mark FROM devices WHERE serial = 'DEV-006') WHERE serial = 'DEV-005'",
    );
    let (_, f, _) = mark_findings(&e);
    assert_eq!(
        f,
        set(&[("device-mark", "DEV-003"), ("device-mark", "DEV-005")])
    );
}

#[test]
fn a_flipped_bit_in_a_hardware_id_is_a_device_mark_finding() {
    let e = fleet();
    // Everything in the main file, then flip one bit of HW7 wherever it is stored
    // (table and index alike, so SQLite's own checks see a consistent file).
    e.sql("PRAGMA wal_checkpoint(TRUNCATE);");
    let path = e.registry();
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"HW7";
    let mut flipped = 0;
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + 2] ^= 0x01; // '7' -> '6'
            flipped += 1;
        }
        i += 1;
    }
    assert!(flipped >= 1);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM devices WHERE hardware_id = 'HW6'"),
        "2"
    );
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "DEV-007")])), "{v}");
    let (code, v) = audit(&e, &[]);
    assert_eq!(code, 1);
    assert!(found(&v).contains(&("device-mark".into(), "DEV-007".into())));
}

/// Turns the fleet into a registry from before device marks (and the log key): schema
/// version 6, no mark, firmware or asset columns, no record, a plain-hashed log whose first event does not
/// say the rows are marked.
fn make_legacy(e: &Env) {
    e.sql(
        "UPDATE events SET details = '{\"org\":\"ACME\"}' WHERE kind = 'home.initialised';
         DELETE FROM meta WHERE key = 'device_marks';
         ALTER TABLE devices DROP COLUMN mark;
         ALTER TABLE devices DROP COLUMN firmware;
         ALTER TABLE devices DROP COLUMN last_contact_at;
         ALTER TABLE devices DROP COLUMN config_name;
         ALTER TABLE devices DROP COLUMN config_sha256;
         ALTER TABLE devices DROP COLUMN purchase_date;
         ALTER TABLE devices DROP COLUMN warranty_until;
         ALTER TABLE devices DROP COLUMN cost;
         ALTER TABLE devices DROP COLUMN currency;
         ALTER TABLE devices DROP COLUMN supplier;
         ALTER TABLE devices DROP COLUMN criticality;
         ALTER TABLE devices DROP COLUMN end_of_life;
         DROP TABLE renewals;
         PRAGMA user_version = 6;",
    );
    rechain_plain(e, 1);
    std::fs::remove_file(e.home.join("log.key")).unwrap();
}

#[test]
fn an_older_registry_is_backfilled_by_its_first_write_and_then_clean() {
    let e = fleet();
    make_legacy(&e);
    // Not yet migrated or backfilled: nothing to report, nothing unverifiable.
    let o = e.run(&["--json", "audit", "--check", "device-mark"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The first write migrates, creates the log key, marks every row, and records it.
    e.ok(&["device", "set", "DEV-002", "notes=first write"]);
    assert!(all_rows_marked(&e));
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM meta WHERE key = 'device_marks'"),
        "1"
    );
    let marked = scalar(
        &e,
        "SELECT details FROM events WHERE kind = 'devices.marked'",
    );
    assert_eq!(marked, format!("{{\"rows\":{DEVICES}}}"));
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (0, BTreeSet::new()), "{v}");
    let out = e.ok(&["log", "verify"]);
    assert!(out.starts_with("event log OK"), "{out}");
    // Only once: the next write backfills nothing more.
    e.ok(&["device", "set", "DEV-003", "notes=second write"]);
    assert_eq!(
        scalar(
            &e,
            "SELECT count(*) FROM events WHERE kind = 'devices.marked'"
        ),
        "1"
    );
    // A legacy-looking state made by hand after that (record removed, marks NULL) is no
    // way to launder an edit: the keyed log still has the record.
    e.sql(
        "UPDATE devices SET mac = 'evil', mark = NULL WHERE serial = 'DEV-004';
         DELETE FROM meta WHERE key = 'device_marks';",
    );
    e.ok(&["device", "set", "DEV-005", "notes=third write"]);
    let (code, f, v) = mark_findings(&e);
    assert_eq!(
        (code, f),
        (1, set(&[("device-mark", "-"), ("device-mark", "DEV-004")])),
        "{v}"
    );
    assert!(
        scalar(
            &e,
            "SELECT mark IS NULL FROM devices WHERE serial = 'DEV-004'"
        ) == "1"
    );
}

#[test]
fn a_missing_mark_after_the_backfill_is_a_finding() {
    let e = fleet();
    e.sql("UPDATE devices SET mark = NULL WHERE serial = 'DEV-006'");
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "DEV-006")])), "{v}");
    assert_eq!(
        v["findings"][0]["message"],
        "device row written or changed outside cradle (it has no mark)"
    );
    // A row inserted behind cradle's back has none either.
    e.sql(
        "INSERT INTO devices (serial, status, created_at, updated_at)
         VALUES ('ROGUE-9', 'registered', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z')",
    );
    let (_, f, _) = mark_findings(&e);
    assert_eq!(
        f,
        set(&[("device-mark", "DEV-006"), ("device-mark", "ROGUE-9")])
    );
    // Removing the record as well changes nothing: the log says the rows are marked.
    e.sql("DELETE FROM meta WHERE key = 'device_marks'");
    let (_, f, v) = mark_findings(&e);
    assert_eq!(
        f,
        set(&[
            ("device-mark", "-"),
            ("device-mark", "DEV-006"),
            ("device-mark", "ROGUE-9")
        ]),
        "{v}"
    );
}

#[test]
fn a_trigger_stored_in_the_registry_is_reported_and_cannot_make_marks() {
    let e = fleet();
    // A trigger that would re-mark a row it rewrites whenever cradle writes it.
    e.sql(
        "CREATE TRIGGER sneaky AFTER UPDATE OF notes ON devices BEGIN
             UPDATE devices SET mac = 'evil', mark = cradle_device_mark(id, serial, hardware_id, model, hw_rev, batch, site, location, owner, 'evil', imei, status, notes, attributes, created_at, updated_at) WHERE id = NEW.id;
         END;",
    );
    let before = e.dump();
    let o = e.run(&["device", "set", "DEV-001", "notes=x"]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cradle_device_mark"), "{err}");
    assert_eq!(e.dump(), before, "nothing written");
    let (code, f, v) = mark_findings(&e);
    assert_eq!((code, f), (1, set(&[("device-mark", "-")])), "{v}");
    assert!(v["findings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("trigger 'sneaky'"));
}
