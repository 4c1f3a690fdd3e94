//! The foundation end to end: home, registry, CA, identities — every artefact checked
//! by OpenSSL, every bad input rejected with a clear error and nothing written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{openssl, Env};

fn export(env: &Env, which: &str) -> std::path::PathBuf {
    let p = env.path(&format!("{which}.pem"));
    env.ok(&[
        "ca",
        "export",
        &format!("--{which}"),
        "-o",
        p.to_str().unwrap(),
    ]);
    p
}

fn verify_with_openssl(env: &Env, certs: &[&str]) {
    let root = export(env, "root");
    let issuing = export(env, "issuing");
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        issuing.to_str().unwrap(),
    ];
    args.extend_from_slice(certs);
    let (ok, out) = openssl(&args);
    assert!(ok, "openssl verify failed: {out}");
    assert_eq!(out.matches(": OK").count(), certs.len(), "{out}");
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_a_home_and_refuses_to_overwrite_it() {
    let env = Env::init();
    assert_eq!(
        env.registry().exists(),
        env.backend() == common::Backend::Sqlite
    );
    assert_eq!(mode(&env.home), 0o700);
    if env.backend() == common::Backend::Sqlite {
        assert_eq!(env.sql("PRAGMA journal_mode;").trim(), "wal");
        assert_eq!(
            env.sql("PRAGMA user_version;").trim(),
            cradle::store::schema::MIGRATIONS.len().to_string()
        );
    } else {
        assert_eq!(
            env.sql("SELECT version FROM cradle_schema").trim(),
            cradle::store::schema_pg::MIGRATIONS.len().to_string()
        );
    }
    let before = env.dump();
    let err = env.fails(&["init"], 7);
    assert!(err.contains("already a cradle home"), "{err}");
    assert_eq!(env.dump(), before);
}

#[test]
fn commands_on_a_missing_home_say_run_init() {
    let env = Env::bare();
    let err = env.fails(&["ca", "show"], 4);
    assert!(err.contains("cradle init"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn ca_keys_are_encrypted_0600_and_open_in_openssl_only_with_the_passphrase() {
    let env = Env::with_ca();
    let ca = env.home.join("ca");
    for key in ["root.key", "issuing.key"] {
        let p = ca.join(key);
        assert_eq!(mode(&p), 0o600, "{key}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let pass = format!("file:{}", env.pass());
        let (ok, out) = openssl(&[
            "pkey",
            "-in",
            p.to_str().unwrap(),
            "-passin",
            &pass,
            "-noout",
        ]);
        assert!(ok, "{out}");
        let (ok, _) = openssl(&[
            "pkey",
            "-in",
            p.to_str().unwrap(),
            "-passin",
            "pass:wrong",
            "-noout",
        ]);
        assert!(!ok, "openssl opened {key} with a wrong passphrase");
    }
    // Root and issuing CA chain in OpenSSL's eyes, with CA extensions.
    let root = export(&env, "root");
    let issuing = export(&env, "issuing");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        issuing.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", issuing.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    // The registry holds no private key material.
    let dump = env.dump();
    assert!(!dump.contains("PRIVATE KEY"));
    // ca show --json
    let v = env.json(&["ca", "show"]);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["role"], "issuing");
    assert_eq!(v[1]["fingerprint_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn ca_init_twice_is_refused() {
    let env = Env::with_ca();
    let before = env.dump();
    let err = env.fails(
        &[
            "ca",
            "init",
            "--name",
            "Again",
            "--passphrase-file",
            env.pass(),
        ],
        7,
    );
    assert!(err.contains("already has a CA"), "{err}");
    assert_eq!(env.dump(), before);
}

#[test]
fn no_passphrase_and_no_terminal_is_a_clear_error_not_a_prompt() {
    let env = Env::init();
    let err = env.fails(&["ca", "init", "--name", "X"], 3);
    assert!(err.contains("CRADLE_CA_PASSPHRASE"), "{err}");
    // A new CA key takes no short passphrase, from any source; nothing is written.
    let before = env.files();
    let o = env
        .cmd(&["ca", "init", "--name", "X"])
        .env("CRADLE_CA_PASSPHRASE", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("is 1 characters; a new CA key needs at least 12"),
        "{err}"
    );
    assert_eq!(env.files(), before);
    // A passphrase file others may read is named on stderr (and still used).
    let shared = env.path("shared.pass");
    std::fs::write(&shared, "a long enough passphrase\n").unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = env
        .cmd(&[
            "ca",
            "init",
            "--name",
            "X",
            "--passphrase-file",
            shared.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is readable by others (mode 0644); chmod 600 it"),
        "{err}"
    );
}

#[test]
fn the_passphrase_can_come_from_the_environment() {
    let env = Env::init();
    let o = env
        .cmd(&["ca", "init", "--name", "X"])
        .env("CRADLE_CA_PASSPHRASE", "from-env-passphrase")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty() || !String::from_utf8_lossy(&o.stderr).contains("warning"));
}

#[test]
fn issued_identity_verifies_in_openssl_with_the_profile_extensions() {
    let env = Env::with_ca();
    let v = env.json(&[
        "identity",
        "issue",
        "DEV-0001",
        "--out",
        "out",
        "--passphrase-file",
        env.pass(),
    ]);
    assert_eq!(v["serial"], "DEV-0001");
    assert_eq!(v["device_created"], true);
    let cert = env.path("out/DEV-0001.pem");
    let key = env.path("out/DEV-0001.key");
    assert_eq!(mode(&key), 0o600);
    verify_with_openssl(&env, &[cert.to_str().unwrap()]);
    let (_, text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    for needle in [
        "Subject: CN = DEV-0001, O = ACME, serialNumber = DEV-0001",
        "ASN1 OID: prime256v1",
        "Digital Signature, Key Agreement",
        "TLS Web Client Authentication",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "CA:FALSE",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // No URN of ours; the RFC 9039 MAC URN only when the device has a MAC.
    assert!(!text.contains("urn:"), "{text}");
    // The key matches the certificate.
    let (_, k) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    let (_, c) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    assert_eq!(k, c);
    // Recorded: device, certificate (DER, fingerprint), event; no key.
    assert_eq!(
        env.sql("SELECT count(*) FROM devices WHERE serial='DEV-0001';")
            .trim(),
        "1"
    );
    let fp = env.sql("SELECT fingerprint FROM certificates;");
    assert_eq!(fp.trim(), v["fingerprint"].as_str().unwrap());
    assert_eq!(
        env.sql("SELECT count(*) FROM events WHERE kind='identity.issued';")
            .trim(),
        "1"
    );
    assert!(!env.dump().contains("PRIVATE KEY"));
    // identity show / verify
    let s = env.json(&["identity", "show", "DEV-0001"]);
    assert_eq!(s["certificates"][0]["status"], "active");
    let vv = env.json(&["identity", "verify", cert.to_str().unwrap()]);
    assert_eq!(vv["ok"], true);
    assert_eq!(vv["device"], "DEV-0001");
}

#[test]
fn devid_profile_has_no_well_defined_expiration() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "issue",
        "HW-1",
        "--profile",
        "devid",
        "--out",
        "o",
        "--passphrase-file",
        env.pass(),
    ]);
    let cert = env.path("o/HW-1.pem");
    verify_with_openssl(&env, &[cert.to_str().unwrap()]);
    let (_, enddate) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-enddate"]);
    assert!(enddate.contains("Dec 31 23:59:59 9999 GMT"), "{enddate}");
    // Encoded as GeneralizedTime 99991231235959Z, as RFC 5280 requires.
    let (_, asn1) = openssl(&["asn1parse", "-in", cert.to_str().unwrap()]);
    assert!(
        asn1.contains("GENERALIZEDTIME   :99991231235959Z"),
        "{asn1}"
    );
}

#[test]
fn cloud_profiles_issue_valid_certificates() {
    let env = Env::with_ca();
    for (serial, profile) in [("thing-1", "aws-iot"), ("reg-1", "azure-dps")] {
        env.ok(&[
            "identity",
            "issue",
            serial,
            "--profile",
            profile,
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ]);
        let p = env.path(&format!("o/{serial}.pem"));
        verify_with_openssl(&env, &[p.to_str().unwrap()]);
        let (_, text) = openssl(&["x509", "-in", p.to_str().unwrap(), "-noout", "-subject"]);
        assert!(text.contains(&format!("CN = {serial}")), "{text}");
    }
}

#[test]
fn batch_issues_into_the_registry_a_bundle_and_files() {
    let env = Env::with_ca();
    let v = env.json(&[
        "identity",
        "batch",
        "--count",
        "40",
        "--serial-pattern",
        "ACME-{seq:04}",
        "--bundle",
        "b.jsonl",
        "--out",
        "files",
        "--batch",
        "B1",
        "--passphrase-file",
        env.pass(),
    ]);
    assert_eq!(v["issued"], 40);
    assert_eq!(v["first"], "ACME-0001");
    assert_eq!(v["last"], "ACME-0040");
    assert_eq!(
        env.sql("SELECT count(*) FROM devices WHERE batch='B1';")
            .trim(),
        "40"
    );
    assert_eq!(
        env.sql("SELECT count(DISTINCT serial_hex) FROM certificates;")
            .trim(),
        "40"
    );
    assert_eq!(mode(&env.path("b.jsonl")), 0o600);
    let bundle = std::fs::read_to_string(env.path("b.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = bundle
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let header = lines.remove(0);
    assert_eq!(header["cradle_bundle"], 1);
    assert!(header["chain_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(lines.len(), 40);
    // Every bundle certificate verifies and matches its key.
    let mut paths = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let p = env.path(&format!("c{i}.pem"));
        std::fs::write(&p, l["cert_pem"].as_str().unwrap()).unwrap();
        paths.push(p.to_str().unwrap().to_string());
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    verify_with_openssl(&env, &refs);
    let kp = env.path("k0.pem");
    std::fs::write(&kp, lines[0]["key_pem"].as_str().unwrap()).unwrap();
    let (_, k) = openssl(&["pkey", "-in", kp.to_str().unwrap(), "-pubout"]);
    let (_, c) = openssl(&["x509", "-in", &paths[0], "-noout", "-pubkey"]);
    assert_eq!(k, c);
    // Per-device files too.
    assert_eq!(mode(&env.path("files/ACME-0040.key")), 0o600);
    verify_with_openssl(&env, &[env.path("files/ACME-0040.pem").to_str().unwrap()]);
    // The event log verifies as a chain.
    assert_eq!(
        env.sql("SELECT count(*) FROM events WHERE kind='identity.issued';")
            .trim(),
        "40"
    );
}

#[test]
fn batch_from_csv_and_duplicate_serials() {
    let env = Env::with_ca();
    std::fs::write(env.path("dups.csv"), "serial,model\nA-1,x\nA-2,y\nA-1,z\n").unwrap();
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "batch",
            "--from",
            "dups.csv",
            "--bundle",
            "b.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        7,
    );
    assert!(err.contains("'A-1' appears twice"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("b.jsonl").exists());

    std::fs::write(env.path("ok.csv"), "\u{feff}serial\r\nA-1\r\nA-2\r\n").unwrap();
    env.ok(&[
        "identity",
        "batch",
        "--from",
        "ok.csv",
        "--bundle",
        "b.jsonl",
        "--passphrase-file",
        env.pass(),
    ]);
    // The same serials again: refused, nothing written.
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "batch",
            "--from",
            "ok.csv",
            "--bundle",
            "b2.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        7,
    );
    assert!(err.contains("already recorded"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("b2.jsonl").exists());

    std::fs::write(env.path("bad.csv"), "serial\nok-1\nbad/serial\n").unwrap();
    let err = env.fails(
        &[
            "identity",
            "batch",
            "--from",
            "bad.csv",
            "--bundle",
            "b3.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        3,
    );
    assert!(err.contains("bad.csv:3:"), "{err}");
}

fn make_csr(env: &Env, name: &str, keyopt: &[&str]) -> std::path::PathBuf {
    let key = env.path(&format!("{name}.key"));
    let csr = env.path(&format!("{name}.csr"));
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/CN=evil.example/O=Mallory",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ];
    args.extend_from_slice(keyopt);
    let (ok, out) = openssl(&args);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["req", "-verify", "-noout", "-in", csr.to_str().unwrap()]);
    assert!(ok, "openssl rejects our test CSR: {out}");
    csr
}

#[test]
fn sign_csr_takes_only_the_key_and_openssl_verifies_the_result() {
    let env = Env::with_ca();
    let csr = make_csr(
        &env,
        "dev",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    env.ok(&[
        "identity",
        "sign-csr",
        "CSR-1",
        "--csr",
        csr.to_str().unwrap(),
        "-o",
        "CSR-1.pem",
        "--passphrase-file",
        env.pass(),
    ]);
    let cert = env.path("CSR-1.pem");
    verify_with_openssl(&env, &[cert.to_str().unwrap()]);
    let (_, subj) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-subject"]);
    assert!(
        subj.contains("CN = CSR-1") && !subj.contains("evil"),
        "{subj}"
    );
    let (_, k) = openssl(&[
        "pkey",
        "-in",
        env.path("dev.key").to_str().unwrap(),
        "-pubout",
    ]);
    let (_, c) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    assert_eq!(k, c);
    assert_eq!(
        env.sql("SELECT key_source FROM certificates;").trim(),
        "device"
    );
}

#[test]
fn bad_csrs_are_rejected_and_nothing_is_written() {
    let env = Env::with_ca();
    let good = make_csr(
        &env,
        "good",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    // Forged: flip a byte inside the signature (the last bytes of the DER).
    let der = env.path("forged.der");
    openssl(&[
        "req",
        "-in",
        good.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&der).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&der, &bytes).unwrap();
    let rsa = make_csr(&env, "rsa", &["-newkey", "rsa:2048"]);
    let p384 = make_csr(
        &env,
        "p384",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    std::fs::write(env.path("garbage.csr"), b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all!!\n-----END CERTIFICATE REQUEST-----\n").unwrap();
    std::fs::write(env.path("huge.csr"), vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let before = env.dump();
    for (file, msg) in [
        (
            der.to_str().unwrap().to_string(),
            "signature does not verify",
        ),
        (rsa.to_str().unwrap().to_string(), "CSR key is RSA"),
        (p384.to_str().unwrap().to_string(), "P-384"),
        ("garbage.csr".to_string(), "CSR"),
        ("huge.csr".to_string(), "limit"),
    ] {
        let err = env.fails(
            &[
                "identity",
                "sign-csr",
                "X-1",
                "--csr",
                &file,
                "-o",
                "x.pem",
                "--passphrase-file",
                env.pass(),
            ],
            3,
        );
        assert!(err.contains(msg), "{file}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!env.path("x.pem").exists());
    }
    assert_eq!(env.dump(), before);
}

#[test]
fn wrong_passphrase_is_exit_5_and_changes_nothing() {
    let env = Env::with_ca();
    std::fs::write(env.path("wrong.pass"), "nope\n").unwrap();
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "issue",
            "D-1",
            "--out",
            "o",
            "--passphrase-file",
            env.path("wrong.pass").to_str().unwrap(),
        ],
        5,
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("o/D-1.key").exists());
}

#[test]
fn corrupt_foreign_and_newer_registries_are_refused() {
    let env = Env::with_ca();
    // Newer schema than this binary.
    if env.backend() == common::Backend::Postgres {
        // A foreign or corrupt file has no PostgreSQL twin; the newer schema does.
        env.sql("UPDATE cradle_schema SET version = 99");
        let err = env.fails(&["ca", "show"], 4);
        assert!(err.contains("newer than this cradle understands"), "{err}");
        return;
    }
    env.sql("PRAGMA user_version = 99;");
    let err = env.fails(&["ca", "show"], 4);
    assert!(err.contains("newer than this cradle understands"), "{err}");

    // A foreign SQLite database.
    let foreign = Env::init();
    std::fs::remove_file(foreign.registry()).unwrap();
    let _ = std::fs::remove_file(foreign.home.join("registry.db-wal"));
    let _ = std::fs::remove_file(foreign.home.join("registry.db-shm"));
    Command::new("sqlite3")
        .arg(foreign.registry())
        .arg("CREATE TABLE t(x);")
        .status()
        .unwrap();
    let err = foreign.fails(&["ca", "show"], 4);
    assert!(err.contains("not a cradle registry"), "{err}");

    // Random bytes.
    let corrupt = Env::init();
    std::fs::write(corrupt.registry(), vec![0x42u8; 8192]).unwrap();
    let _ = std::fs::remove_file(corrupt.home.join("registry.db-wal"));
    let _ = std::fs::remove_file(corrupt.home.join("registry.db-shm"));
    let err = corrupt.fails(&["ca", "show"], 4);
    assert!(err.contains("not a SQLite database"), "{err}");
    assert_eq!(
        std::fs::read(corrupt.registry()).unwrap(),
        vec![0x42u8; 8192]
    );
}

#[test]
fn profiles_with_unknown_variables_or_bad_syntax_name_file_and_line() {
    let env = Env::with_ca();
    let root = env!("CARGO_MANIFEST_DIR");
    let unknown = format!("{root}/fixtures/profiles/unknown-variable.toml");
    let malformed = format!("{root}/fixtures/profiles/malformed.toml");
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "issue",
            "P-1",
            "--profile",
            &unknown,
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ],
        3,
    );
    assert!(
        err.contains("unknown-variable.toml:6: unknown variable '{modle}'"),
        "{err}"
    );
    let err = env.fails(&["profile", "check", &malformed], 3);
    assert!(err.contains("malformed.toml:2:"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("o/P-1.key").exists());
    // A required variable with no value for this device.
    std::fs::write(
        env.path("needs-mac.toml"),
        "[subject]\nCN = \"{serial}\"\nOU = \"{mac}\"\n[validity]\ndays = 1\n",
    )
    .unwrap();
    let err = env.fails(
        &[
            "identity",
            "issue",
            "P-1",
            "--profile",
            "needs-mac.toml",
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ],
        3,
    );
    assert!(
        err.contains("needs-mac.toml:3:") && err.contains("'mac'"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
}

#[test]
fn unwritable_output_is_exit_8_and_leaves_no_rows() {
    let env = Env::with_ca();
    std::fs::write(env.path("not-a-dir"), "x").unwrap();
    let before = env.dump();
    env.fails(
        &[
            "identity",
            "issue",
            "U-1",
            "--out",
            "not-a-dir/sub",
            "--passphrase-file",
            env.pass(),
        ],
        8,
    );
    env.fails(
        &[
            "identity",
            "batch",
            "--count",
            "3",
            "--serial-pattern",
            "U-{seq}",
            "--out",
            "not-a-dir/sub",
            "--passphrase-file",
            env.pass(),
        ],
        8,
    );
    env.fails(
        &[
            "identity",
            "batch",
            "--count",
            "3",
            "--serial-pattern",
            "U-{seq}",
            "--bundle",
            "not-a-dir/b.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        8,
    );
    assert_eq!(env.dump(), before);
}

#[test]
fn ca_import_checks_key_match_ca_flag_and_chain() {
    let src = Env::with_ca();
    src.ok(&[
        "identity",
        "issue",
        "LEAF",
        "--out",
        "o",
        "--passphrase-file",
        src.pass(),
    ]);
    let root = export(&src, "root");
    let issuing = export(&src, "issuing");
    // Decrypt the source issuing key to re-encrypt it with openssl's own PBES2.
    let enc = src.path("issuing-openssl.key");
    let pass = format!("file:{}", src.pass());
    let (ok, out) = openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        src.home.join("ca/issuing.key").to_str().unwrap(),
        "-passin",
        &pass,
        "-passout",
        "pass:oldpass",
        "-out",
        enc.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    std::fs::write(src.path("old.pass"), "oldpass\n").unwrap();

    let dst = Env::init();
    let before = dst.dump();
    // Not a CA.
    let err = dst.fails(
        &[
            "ca",
            "import",
            "--cert",
            src.path("o/LEAF.pem").to_str().unwrap(),
            "--key",
            src.path("o/LEAF.key").to_str().unwrap(),
            "--passphrase-file",
            dst.pass(),
        ],
        5,
    );
    assert!(err.contains("is not a CA"), "{err}");
    // Key does not match.
    let err = dst.fails(
        &[
            "ca",
            "import",
            "--cert",
            issuing.to_str().unwrap(),
            "--key",
            src.path("o/LEAF.key").to_str().unwrap(),
            "--chain",
            root.to_str().unwrap(),
            "--passphrase-file",
            dst.pass(),
        ],
        5,
    );
    assert!(err.contains("does not match"), "{err}");
    // Wrong passphrase for the imported key.
    std::fs::write(dst.path("bad.pass"), "bad\n").unwrap();
    let err = dst.fails(
        &[
            "ca",
            "import",
            "--cert",
            issuing.to_str().unwrap(),
            "--key",
            enc.to_str().unwrap(),
            "--key-passphrase-file",
            dst.path("bad.pass").to_str().unwrap(),
            "--chain",
            root.to_str().unwrap(),
            "--passphrase-file",
            dst.pass(),
        ],
        5,
    );
    assert!(err.contains("wrong passphrase"), "{err}");
    // Missing chain.
    let err = dst.fails(
        &[
            "ca",
            "import",
            "--cert",
            issuing.to_str().unwrap(),
            "--key",
            enc.to_str().unwrap(),
            "--key-passphrase-file",
            src.path("old.pass").to_str().unwrap(),
            "--passphrase-file",
            dst.pass(),
        ],
        5,
    );
    assert!(err.contains("--chain"), "{err}");
    assert_eq!(dst.dump(), before);
    assert!(!dst.home.join("ca/issuing.key").exists());

    // Correct import: re-encrypted under the new passphrase, issuing works, old leaf verifies.
    dst.ok(&[
        "ca",
        "import",
        "--cert",
        issuing.to_str().unwrap(),
        "--key",
        enc.to_str().unwrap(),
        "--key-passphrase-file",
        src.path("old.pass").to_str().unwrap(),
        "--chain",
        root.to_str().unwrap(),
        "--passphrase-file",
        dst.pass(),
    ]);
    assert_eq!(mode(&dst.home.join("ca/issuing.key")), 0o600);
    dst.ok(&[
        "identity",
        "issue",
        "NEW-1",
        "--out",
        "o",
        "--passphrase-file",
        dst.pass(),
    ]);
    verify_with_openssl(&dst, &[dst.path("o/NEW-1.pem").to_str().unwrap()]);
    let v = dst.json(&[
        "identity",
        "verify",
        src.path("o/LEAF.pem").to_str().unwrap(),
    ]);
    assert_eq!(v["chain_ok"], true);
}

#[test]
fn verify_rejects_a_certificate_from_another_ca() {
    let a = Env::with_ca();
    let b = Env::with_ca();
    b.ok(&[
        "identity",
        "issue",
        "B-1",
        "--out",
        "o",
        "--passphrase-file",
        b.pass(),
    ]);
    let v = a.run(&[
        "--json",
        "identity",
        "verify",
        b.path("o/B-1.pem").to_str().unwrap(),
    ]);
    assert_eq!(v.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(j["chain_ok"], false);
}

#[test]
fn two_stations_writing_at_once_both_succeed() {
    let env = Env::with_ca();
    let spawn = |pat: &str, bundle: &str| {
        env.cmd(&[
            "identity",
            "batch",
            "--count",
            "300",
            "--serial-pattern",
            pat,
            "--bundle",
            bundle,
            "--passphrase-file",
            env.pass(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let a = spawn("S1-{seq:04}", "a.jsonl");
    let b = spawn("S2-{seq:04}", "b.jsonl");
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(env.sql("SELECT count(*) FROM certificates;").trim(), "600");
    // Chain intact: ids consecutive, each prev_hash is the previous hash.
    let broken = env.sql("SELECT count(*) FROM events e JOIN events p ON p.id = e.id - 1 WHERE e.prev_hash <> p.hash;");
    assert_eq!(broken.trim(), "0");
}

#[test]
fn man_pages_are_up_to_date() {
    let env = Env::bare();
    let out = env.path("man");
    env.ok(&["man", "--out", out.to_str().unwrap()]);
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut generated: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    generated.sort();
    assert!(generated.len() > 10);
    for g in generated {
        let name = g.file_name().unwrap();
        let want = std::fs::read_to_string(committed.join(name)).unwrap_or_default();
        assert!(
            want == std::fs::read_to_string(&g).unwrap(),
            "man/{} is stale: run `cargo run -- man --out man` and commit",
            name.to_string_lossy()
        );
    }
}

#[test]
fn completions_are_generated() {
    let env = Env::bare();
    let out = env.ok(&["completions", "bash"]);
    assert!(out.contains("cradle") && out.contains("identity"));
}

#[test]
fn a_retired_device_gets_no_new_identity() {
    let env = Env::with_ca();
    env.ok(&[
        "identity",
        "issue",
        "R-1",
        "--out",
        "o",
        "--passphrase-file",
        env.pass(),
    ]);
    env.sql("UPDATE devices SET status='retired' WHERE serial='R-1';");
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "issue",
            "R-1",
            "--out",
            "o2",
            "--passphrase-file",
            env.pass(),
        ],
        7,
    );
    assert!(err.contains("is retired"), "{err}");
    assert_eq!(env.dump(), before);
}

/// `{attr.NAME}` renders the device's attribute NAME, even when a column of the same
/// name exists: the column value must not shadow the attribute, and an empty column
/// must not hide it.
#[test]
fn attr_variables_render_the_attribute_not_the_same_named_column() {
    let env = Env::with_ca();
    std::fs::write(
        env.path("devices.csv"),
        "serial,model,attr.model\nAT-1,column-model,attr-model\nAT-2,,attr-only\n",
    )
    .unwrap();
    env.ok(&["inventory", "import", "devices.csv"]);
    std::fs::write(
        env.path("attr.toml"),
        "kind = \"end-entity\"\n[subject]\nCN = \"{serial}\"\nO = \"{model?}\"\nOU = \"{attr.model}\"\n[validity]\ndays = 1\n",
    )
    .unwrap();
    for (serial, o, ou) in [
        ("AT-1", Some("column-model"), "attr-model"),
        ("AT-2", None, "attr-only"),
    ] {
        env.ok(&[
            "identity",
            "issue",
            serial,
            "--profile",
            "attr.toml",
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ]);
        let cert = env.path(&format!("o/{serial}.pem"));
        let (ok, subject) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-subject"]);
        assert!(ok, "{subject}");
        let want = match o {
            Some(o) => format!("CN = {serial}, O = {o}, OU = {ou}"),
            None => format!("CN = {serial}, OU = {ou}"),
        };
        assert!(subject.contains(&want), "want {want:?} in {subject}");
    }
}

/// An output file that already exists is found before anything is recorded or written
/// (a batch checks every name up front, since its chunks commit before their files).
#[test]
fn a_failed_output_file_takes_the_others_back() {
    let env = Env::with_ca();
    std::fs::create_dir_all(env.path("o")).unwrap();
    std::fs::write(env.path("o/S-2.pem"), "someone else's").unwrap();
    let before = env.dump();
    let single = [
        "identity",
        "issue",
        "S-2",
        "--out",
        "o",
        "--passphrase-file",
        env.pass(),
    ];
    let batch = [
        "identity",
        "batch",
        "--count",
        "3",
        "--serial-pattern",
        "S-{seq}",
        "--out",
        "o",
        "--passphrase-file",
        env.pass(),
    ];
    // Both check every output name before recording anything.
    for (args, code, says) in [
        (&single[..], 7, "already exists"),
        (&batch[..], 7, "already exists"),
    ] {
        let err = env.fails(args, code);
        assert!(err.contains(says), "{err}");
        assert_eq!(env.dump(), before);
        let mut left: Vec<_> = std::fs::read_dir(env.path("o"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["S-2.pem"], "{args:?}");
        assert_eq!(
            std::fs::read_to_string(env.path("o/S-2.pem")).unwrap(),
            "someone else's"
        );
    }
}

/// A batch killed at any moment leaves no certificate in the bundle that the registry
/// lacks: the bundle is written only after the chunk it belongs to committed.
#[test]
fn batch_killed_leaves_no_unrecorded_certificate_in_the_bundle() {
    use std::collections::HashSet;
    for trial in 0..3 {
        let env = Env::with_ca();
        let bundle = env.path("b.jsonl");
        let mut child = env
            .cmd(&[
                "identity",
                "batch",
                "--count",
                "3000",
                "--serial-pattern",
                "K-{seq:05}",
                "--bundle",
                "b.jsonl",
                "--passphrase-file",
                env.pass(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill right after the bundle grows past its header line (later trials wait a
        // little longer, so the kill lands at different points).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let lines = std::fs::read(&bundle)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0);
            if lines > 1 + trial * 200 || std::time::Instant::now() > deadline {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        let recorded: HashSet<String> = env
            .sql("SELECT serial_hex FROM certificates;")
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        let text = std::fs::read_to_string(&bundle).unwrap_or_default();
        for line in text.lines().skip(1) {
            // A line cut by the kill is incomplete, not a delivered certificate.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let s = v["cert_serial"].as_str().unwrap();
            assert!(
                recorded.contains(s),
                "trial {trial}: bundle holds certificate {s} the registry lacks"
            );
        }
    }
}

/// The WAL stays bounded during a large batch (checkpoints every 32 MiB, not 512 MiB).
#[test]
fn batch_keeps_the_wal_bounded() {
    let env = Env::with_ca();
    let wal = {
        let mut p = env.registry().into_os_string();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let mut child = env
        .cmd(&[
            "identity",
            "batch",
            "--count",
            "20000",
            "--serial-pattern",
            "W-{seq:06}",
            "--bundle",
            "b.jsonl",
            "--passphrase-file",
            env.pass(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0u64;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    // 32 MiB plus one chunk's commit; before the bound it peaked near 90 MB here.
    assert!(peak < 48 << 20, "WAL peaked at {peak} bytes");
}

#[test]
fn a_serial_too_long_for_the_cn_is_refused_before_anything_is_written() {
    // RFC 5280 ub-common-name is 64: a 70-character serial in CN makes certificates
    // strict verifiers refuse; cradle refuses it instead, for one device and for a batch.
    let env = Env::with_ca();
    let long = format!("DEV-{}", "9".repeat(66));
    let before = env.dump();
    let err = env.fails(
        &[
            "identity",
            "issue",
            &long,
            "--out",
            "o",
            "--passphrase-file",
            env.pass(),
        ],
        3,
    );
    assert!(
        err.contains("subject CN") && err.contains("at most 64"),
        "{err}"
    );
    std::fs::write(env.path("s.csv"), format!("serial\nDEV-1\n{long}\n")).unwrap();
    let err = env.fails(
        &[
            "identity",
            "batch",
            "--from",
            "s.csv",
            "--bundle",
            "b.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        3,
    );
    assert!(err.contains("is 70 characters"), "{err}");
    assert_eq!(env.dump(), before, "nothing recorded");
    assert!(!env.path("b.jsonl").exists());
    let written = std::fs::read_dir(env.path("o"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(written, 0, "no key or certificate file");
    // 64 is fine.
    let ok = format!("DEV-{}", "9".repeat(60));
    env.ok(&[
        "identity",
        "issue",
        &ok,
        "--out",
        "o",
        "--passphrase-file",
        env.pass(),
    ]);
}
