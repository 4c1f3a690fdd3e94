//! `cradle export aws-iot | azure-dps | nrf-cloud`: what each cloud ingests, held to
//! the cloud's side where one runs here (moto's AWS IoT server with boto3, Nordic's
//! nrfcloud-utils CSV code) and to the documented rules otherwise; every certificate
//! checked with openssl; the pre-flight refusing what the cloud would refuse.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{openssl, peer_bin, Env};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// DER of the first certificate of a PEM text.
fn der_of(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn jsonl(p: &Path) -> Vec<Value> {
    read(p)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// openssl verify of PEM files against the home's root, the issuing CA untrusted;
/// one process for all of them.
fn openssl_verify_all(env: &Env, files: &[PathBuf]) {
    let ca = env.home.join("ca");
    for chunk in files.chunks(500) {
        let mut args: Vec<String> = vec![
            "verify".into(),
            "-CAfile".into(),
            ca.join("root.pem").display().to_string(),
            "-untrusted".into(),
            ca.join("issuing.pem").display().to_string(),
        ];
        args.extend(chunk.iter().map(|f| f.display().to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = openssl(&a);
        assert!(ok, "openssl verify: {out}");
        assert_eq!(out.matches(": OK").count(), chunk.len(), "{out}");
    }
}

/// Writes each PEM to its own file under `dir` (for openssl).
fn pem_files(env: &Env, dir: &str, pems: &[String]) -> Vec<PathBuf> {
    let d = env.path(dir);
    std::fs::create_dir_all(&d).unwrap();
    pems.iter()
        .enumerate()
        .map(|(i, p)| {
            let f = d.join(format!("{i}.pem"));
            std::fs::write(&f, p).unwrap();
            f
        })
        .collect()
}

fn batch(env: &Env, count: u32, pattern: &str, label: &str, profile: &str) {
    env.ok(&[
        "identity",
        "batch",
        "--count",
        &count.to_string(),
        "--serial-pattern",
        pattern,
        "--batch",
        label,
        "--profile",
        profile,
        "--bundle",
        env.path(&format!("bundle-{}.jsonl", sha256_hex(pattern.as_bytes())))
            .to_str()
            .unwrap(),
        "--passphrase-file",
        env.pass(),
    ]);
}

/// A 15-digit IMEI with a valid Luhn check digit.
fn imei(n: u64) -> String {
    let body = format!("35209900{n:06}");
    let sum: u32 = body
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).unwrap();
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// Waits until the next whole second has begun and returns it (registry times are
/// whole seconds, so a `--since` of this instant leaves out everything before).
fn next_second() -> String {
    std::thread::sleep(Duration::from_millis(1100));
    let t = time::OffsetDateTime::now_utc();
    let s = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    s[..19].to_string() + "Z"
}

/// A moto server on a free port of 127.0.0.1; killed on drop.
struct Moto {
    child: Child,
    url: String,
    python: PathBuf,
}

const MOTO_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/aws_moto.py");

impl Moto {
    fn start(bin: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let python = bin.join("python");
        let child = Command::new(&python)
            .args([MOTO_SCRIPT, "serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let until = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "moto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            python,
        }
    }

    fn call(&self, args: &[&str]) -> Value {
        let o = Command::new(&self.python)
            .arg(MOTO_SCRIPT)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "aws_moto.py {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The documented rules of a bulk-registration input against its template.
fn check_bulk_against_template(dir: &Path) {
    let text = read(&dir.join("provisioning-template.json"));
    assert!(text.chars().count() <= 10_240);
    let t: Value = serde_json::from_str(&text).unwrap();
    let certs: Vec<&Value> = t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == "AWS::IoT::Certificate")
        .collect();
    assert_eq!(certs.len(), 1);
    let named = [
        "CertificateSigningRequest",
        "CertificateId",
        "CertificatePem",
    ]
    .iter()
    .filter(|k| certs[0]["Properties"].get(**k).is_some())
    .count();
    assert_eq!(named, 1, "exactly one way to name the certificate");
    let mut required: Vec<&str> = t["Parameters"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, p)| p.get("Default").is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    required.sort();
    for line in jsonl(&dir.join("bulk-registration.jsonl")) {
        let mut keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, required, "one value per template parameter: {line}");
        assert!(line.as_object().unwrap().values().all(Value::is_string));
    }
}

#[test]
fn aws_iot_registers_with_moto_and_the_status_updates_apply() {
    let Some(bin) = peer_bin("CRADLE_TEST_MOTO_BIN", "moto_server") else {
        return;
    };
    let env = Env::with_ca();
    batch(&env, 4, "thing-{seq:02}", "B1", "aws-iot");
    let code = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let v = env.json(&[
        "export",
        "aws-iot",
        "--batch",
        "B1",
        "-o",
        "aws/",
        "--registration-code",
        code,
        "--passphrase-file",
        env.pass(),
    ]);
    assert_eq!(
        (v["written"].as_bool(), v["devices"].as_u64()),
        (Some(true), Some(4))
    );
    let dir = env.path("aws");
    check_bulk_against_template(&dir);
    let manifest = jsonl(&dir.join("certificates.jsonl"));
    assert_eq!(manifest.len(), 4);
    for m in &manifest {
        let pem = m["certificatePem"].as_str().unwrap();
        assert_eq!(m["certificateId"], sha256_hex(&der_of(pem)));
        assert_eq!(
            m["caCertificatePem"],
            read(&env.home.join("ca/issuing.pem"))
        );
    }
    let pems: Vec<String> = manifest
        .iter()
        .map(|m| m["certificatePem"].as_str().unwrap().to_string())
        .collect();
    openssl_verify_all(&env, &pem_files(&env, "aws-pems", &pems));
    // The verification certificate: CN = the registration code, signed by the CA key.
    let ver = dir.join("verification.pem");
    openssl_verify_all(&env, std::slice::from_ref(&ver));
    let (_, subject) = openssl(&["x509", "-in", ver.to_str().unwrap(), "-noout", "-subject"]);
    assert!(subject.contains(&format!("CN = {code}")), "{subject}");
    // Nothing of the CA key left behind.
    assert!(!env
        .files()
        .iter()
        .any(|f| f.starts_with("aws/") && f.ends_with(".key")));

    // AWS's side: register the CA and the certificates (half with the CA, half
    // without), things attached; AWS's certificate ids are the ones precomputed.
    let moto = Moto::start(&bin);
    let r = moto.call(&["register", &moto.url, dir.to_str().unwrap()]);
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 4);
    for d in devices {
        assert_eq!(d["aws_id"], d["expected_id"], "{d}");
        assert_eq!(d["status"], "ACTIVE");
    }
    let with_ca: Vec<&Value> = devices
        .iter()
        .filter(|d| d["via"] == "with-ca")
        .map(|d| &d["aws_id"])
        .collect();
    let by_ca: Vec<&Value> = r["by_ca"].as_array().unwrap().iter().collect();
    assert_eq!(by_ca.len(), 2);
    assert!(with_ca.iter().all(|id| by_ca.contains(id)), "{r}");

    // Revoke one, retire another (its certificate still active): the delta carries
    // only those two, as REVOKED and INACTIVE.
    let since = next_second();
    env.ok(&[
        "revoke",
        "thing-01",
        "--reason",
        "keyCompromise",
        "--passphrase-file",
        env.pass(),
    ]);
    env.ok(&[
        "device",
        "set",
        "thing-02",
        "status=retired",
        "--force",
        "--reason",
        "returned",
    ]);
    let v = env.json(&["export", "aws-iot", "--since", &since, "-o", "delta/"]);
    assert_eq!(
        (v["devices"].as_u64(), v["withdrawn"].as_u64()),
        (Some(0), Some(2)),
        "{v}"
    );
    let delta = env.path("delta");
    assert!(!delta.join("bulk-registration.jsonl").exists());
    let updates = jsonl(&delta.join("status-updates.jsonl"));
    let id_of = |serial: &str| {
        manifest.iter().find(|m| m["serial"] == serial).unwrap()["certificateId"].clone()
    };
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert!(updates.contains(
        &serde_json::json!({"certificateId": id_of("thing-01"), "newStatus": "REVOKED"})
    ));
    assert!(updates.contains(
        &serde_json::json!({"certificateId": id_of("thing-02"), "newStatus": "INACTIVE"})
    ));
    moto.call(&["apply", &moto.url, delta.to_str().unwrap()]);
    let s = moto.call(&["state", &moto.url]);
    let status = |serial: &str| s["certificates"][id_of(serial).as_str().unwrap()].clone();
    assert_eq!(status("thing-01"), "REVOKED");
    assert_eq!(status("thing-02"), "INACTIVE");
    assert_eq!(status("thing-03"), "ACTIVE");
    assert_eq!(s["things"]["thing-04"].as_array().unwrap().len(), 1);

    // Both exports are in the log, with the hash of every file as written.
    let log = env.ok(&["log", "export"]);
    let exports: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "cloud.exported" && e["device"].is_null())
        .collect();
    assert_eq!(exports.len(), 2);
    for f in exports[1]["details"]["files"].as_array().unwrap() {
        let p = env.dir.path().join(f["path"].as_str().unwrap());
        assert_eq!(f["sha256"], sha256_hex(&std::fs::read(&p).unwrap()), "{f}");
    }
    assert_eq!(exports[0]["details"]["devices"], 4);
    assert!(exports[0]["details"]["verification_cert"]["fingerprint"].is_string());
    let h = env.json(&["device", "history", "thing-01"]);
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "cloud.exported")
        .map(|e| e["details"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["register", "withdraw"]);
    // Each names the certificate it handed over (its SHA-256, AWS's certificate id).
    for e in h["events"].as_array().unwrap() {
        if e["kind"] == "cloud.exported" {
            assert_eq!(
                e["details"]["certs"],
                serde_json::json!([id_of("thing-01")]),
                "{e}"
            );
        }
    }
}

#[test]
fn aws_iot_preflight_names_every_device_and_writes_nothing() {
    let env = Env::with_ca();
    batch(&env, 2, "dev-{seq:02}", "B1", "aws-iot");
    // No serialNumber in the subject (the azure-dps profile), and no certificate at all.
    batch(&env, 1, "dps-{seq:02}", "B1", "azure-dps");
    std::fs::write(env.path("bare.csv"), "serial,batch\nbare-1,B1\n").unwrap();
    env.ok(&["inventory", "import", "bare.csv"]);
    let before = env.dump();
    let err = env.fails(&["export", "aws-iot", "-o", "out/"], 3);
    assert!(err.contains("bare-1: no active certificate"), "{err}");
    assert!(
        err.contains("1 of 4 devices cannot be handed over to aws-iot; nothing written"),
        "{err}"
    );
    assert!(!env.path("out").exists());
    assert_eq!(env.dump(), before, "a refused export records nothing");

    // JITP: every subject field the template uses must be in the certificate.
    let err = env.fails(
        &[
            "export",
            "aws-iot",
            "--batch",
            "B1",
            "-o",
            "out/",
            "--jitp",
            "--jitp-role",
            "arn:aws:iam::123456789012:role/jitp",
        ],
        3,
    );
    assert!(
        err.contains("dps-01: the JITP template uses AWS::IoT::Certificate::SerialNumber, but the certificate subject"),
        "{err}"
    );
    let v = env.json(&[
        "export",
        "aws-iot",
        "--batch",
        "B1",
        "-o",
        "out/",
        "--jitp",
        "--jitp-role",
        "arn:aws:iam::123456789012:role/jitp",
        "--skip-invalid",
    ]);
    assert_eq!(
        (v["devices"].as_u64(), v["skipped"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    let reg: Value = serde_json::from_str(&read(&env.path("out/ca-registration.json"))).unwrap();
    assert_eq!(reg["allowAutoRegistration"], true);
    assert_eq!(
        reg["registrationConfig"]["roleArn"],
        "arn:aws:iam::123456789012:role/jitp"
    );
    assert_eq!(
        reg["registrationConfig"]["templateBody"],
        read(&env.path("out/jitp-template.json")).trim_end()
    );
    assert_eq!(jsonl(&env.path("out/bulk-registration.jsonl")).len(), 2);
    // --policy: both default templates attach the IoT policy.
    env.json(&[
        "export",
        "aws-iot",
        "--batch",
        "B1",
        "-o",
        "pol/",
        "--policy",
        "DevicePolicy",
        "--jitp",
        "--jitp-role",
        "arn:aws:iam::123456789012:role/jitp",
        "--skip-invalid",
    ]);
    for f in ["pol/provisioning-template.json", "pol/jitp-template.json"] {
        let t: Value = serde_json::from_str(&read(&env.path(f))).unwrap();
        assert_eq!(
            t["Resources"]["policy"]["Properties"]["PolicyName"], "DevicePolicy",
            "{f}"
        );
    }

    // Your own JITP template: its fields are checked the same way.
    let country = r#"{"Parameters":{"AWS::IoT::Certificate::Country":{"Type":"String"},"AWS::IoT::Certificate::Id":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"}}},"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"AWS::IoT::Certificate::Country"}}}}}"#;
    std::fs::write(env.path("country.json"), country).unwrap();
    let err = env.fails(
        &[
            "export",
            "aws-iot",
            "--batch",
            "B1",
            "-o",
            "c/",
            "--jitp-template",
            "country.json",
            "--jitp-role",
            "arn:aws:iam::123456789012:role/jitp",
        ],
        3,
    );
    assert!(
        err.contains("dev-01: the JITP template uses AWS::IoT::Certificate::Country"),
        "{err}"
    );
    assert!(err.contains("4 of 4 devices"), "{err}");

    // Templates are checked before anything is read from the registry.
    let two = r#"{"Parameters":{"CertificatePem":{"Type":"String"},"CertificateId":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificatePem":{"Ref":"CertificatePem"},"CertificateId":{"Ref":"CertificateId"}}}}}"#;
    std::fs::write(env.path("two.json"), two).unwrap();
    let err = env.fails(
        &["export", "aws-iot", "-o", "t/", "--template", "two.json"],
        3,
    );
    assert!(err.contains("two.json: certificate resource 'c' names CertificateId and CertificatePem; it must name exactly one of"), "{err}");
    let csr = r#"{"Parameters":{"CSR":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateSigningRequest":{"Ref":"CSR"}}}}}"#;
    std::fs::write(env.path("csr.json"), csr).unwrap();
    let err = env.fails(
        &["export", "aws-iot", "-o", "t/", "--template", "csr.json"],
        3,
    );
    assert!(err.contains("takes a CSR"), "{err}");
    std::fs::write(
        env.path("big.json"),
        format!("{{\"Resources\":{{}},\"pad\":\"{}\"}}", "x".repeat(10_300)),
    )
    .unwrap();
    let err = env.fails(
        &["export", "aws-iot", "-o", "t/", "--template", "big.json"],
        3,
    );
    assert!(
        err.contains("AWS IoT accepts a template of at most 10240"),
        "{err}"
    );
    // A template parameter from the device fields: a device without that field is named.
    let site = r#"{"Parameters":{"site":{"Type":"String"},"CertificateId":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"CertificateId"}}},"t":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"site"}}}}}"#;
    std::fs::write(env.path("site.json"), site).unwrap();
    env.ok(&["device", "set", "dev-01", "site=berlin-1"]);
    let err = env.fails(
        &[
            "export",
            "aws-iot",
            "--batch",
            "B1",
            "-o",
            "t/",
            "--template",
            "site.json",
        ],
        3,
    );
    assert!(
        err.contains("dev-02: the provisioning template needs 'site'"),
        "{err}"
    );
    assert!(!err.contains("dev-01:"), "{err}");
    assert!(!env.path("t").exists());
    // Several kinds of file need a directory.
    let err = env.fails(
        &[
            "export",
            "aws-iot",
            "--batch",
            "B1",
            "-o",
            "aws.json",
            "--skip-invalid",
        ],
        2,
    );
    assert!(err.contains("give a directory"), "{err}");
}

#[test]
fn azure_dps_enrollments_in_batches_of_ten_disabled_when_revoked() {
    let env = Env::with_ca();
    batch(&env, 23, "dps-{seq:03}", "B1", "azure-dps");
    let v = env.json(&["export", "azure-dps", "-o", "dps/"]);
    assert_eq!(v["devices"], 23);
    let issuing = read(&env.home.join("ca/issuing.pem"));
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    let mut ids = Vec::new();
    let mut pems = Vec::new();
    let bodies = jsonl(&env.path("dps/enrollments.jsonl"));
    assert_eq!(bodies.len(), 3, "one bulk body per line");
    for (body, n) in bodies.iter().zip([10, 10, 3]) {
        assert_eq!(body["mode"], "create");
        let e = body["enrollments"].as_array().unwrap();
        assert_eq!(e.len(), n, "at most 10 per bulk operation");
        for en in e {
            let id = en["registrationId"].as_str().unwrap();
            assert!(
                id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || "-._:".contains(c))
            );
            assert_eq!(en["attestation"]["type"], "x509");
            assert_eq!(en["provisioningStatus"], "enabled");
            let pem = String::from_utf8(b64(en["attestation"]["x509"]["clientCertificates"]
                ["primary"]["certificate"]
                .as_str()
                .unwrap()))
            .unwrap();
            let f = env.path(&format!("cn-{id}.pem"));
            std::fs::write(&f, &pem).unwrap();
            let (_, subject) = openssl(&[
                "x509",
                "-in",
                f.to_str().unwrap(),
                "-noout",
                "-subject",
                "-nameopt",
                "multiline",
            ]);
            assert!(
                subject.contains(&format!("commonName                = {id}")),
                "registrationId is the CN: {subject}"
            );
            ids.push(id.to_string());
            pems.push(pem);
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 23);
    openssl_verify_all(&env, &pem_files(&env, "dps-pems", &pems));

    // Revoked: a disabled enrollment (mode update), not a create.
    env.ok(&[
        "revoke",
        "dps-005",
        "--reason",
        "keyCompromise",
        "--passphrase-file",
        env.pass(),
    ]);
    env.json(&["export", "azure-dps", "-o", "dps2/"]);
    let d = &jsonl(&env.path("dps2/disabled.jsonl"))[0];
    assert_eq!(d["mode"], "update");
    assert_eq!(d["enrollments"][0]["registrationId"], "dps-005");
    assert_eq!(d["enrollments"][0]["provisioningStatus"], "disabled");
    assert_eq!(d["enrollments"].as_array().unwrap().len(), 1);
    let all = read(&env.path("dps2/enrollments.jsonl"));
    assert_eq!(all.matches("\"registrationId\"").count(), 22);
    assert!(!all.contains("\"dps-005\""));

    // An enrollment group: the issuing CA is the signing certificate.
    env.json(&[
        "export",
        "azure-dps",
        "--group",
        "acme-fleet",
        "-o",
        "group/",
    ]);
    let g: Value = serde_json::from_str(&read(&env.path("group/enrollment-group.json"))).unwrap();
    assert_eq!(g["enrollmentGroupId"], "acme-fleet");
    assert_eq!(
        String::from_utf8(b64(g["attestation"]["x509"]["signingCertificates"]
            ["primary"]["certificate"]
            .as_str()
            .unwrap()))
        .unwrap(),
        issuing
    );
    // --update: the same bodies in mode update (create or replace), e.g. after re-issuing.
    env.json(&["export", "azure-dps", "--update", "-o", "upd/"]);
    let u = jsonl(&env.path("upd/enrollments.jsonl"));
    assert!(u.iter().all(|b| b["mode"] == "update"), "{u:?}");
    let err = env.fails(&["export", "azure-dps", "--group", "Fleet", "-o", "g2/"], 2);
    assert!(err.contains("--group 'Fleet' contains 'F'"), "{err}");
}

#[test]
fn azure_dps_refuses_cns_it_would_refuse() {
    let env = Env::with_ca();
    batch(&env, 1, "ok-{seq:02}", "B1", "azure-dps");
    batch(&env, 1, "Upper-{seq:02}", "B1", "azure-dps");
    // (A CN over 64 characters, DPS's limit, cannot be issued at all: RFC 5280's bound.)
    batch(&env, 1, "Zed-{seq:02}", "B1", "azure-dps");
    let before = env.dump();
    let err = env.fails(&["export", "azure-dps", "-o", "dps/"], 3);
    assert!(
        err.contains(
            "Upper-01: certificate CN 'Upper-01' contains 'U'; DPS allows only lower-case"
        ),
        "{err}"
    );
    assert!(
        err.contains("Zed-01: certificate CN 'Zed-01' contains 'Z'"),
        "{err}"
    );
    assert!(
        err.contains("2 of 3 devices cannot be handed over to azure-dps"),
        "{err}"
    );
    assert!(!env.path("dps").exists());
    assert_eq!(env.dump(), before);
    // --json: the refusal as data on stdout, the one error line on stderr.
    let o = env.run(&["--json", "export", "azure-dps", "-o", "dps/"]);
    assert_eq!(o.status.code(), Some(3));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["written"].as_bool(), r["files"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
    assert_eq!(r["problems"][0]["serial"], "Upper-01");
    assert!(String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap()
        .starts_with("cradle: error: 2 of 3 devices"));
    let v = env.json(&["export", "azure-dps", "-o", "dps/", "--skip-invalid"]);
    assert_eq!(
        (v["devices"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(v["problems"].as_array().unwrap().len(), 2);
}

/// Reads onboard.csv files with nrfcloud-utils' own CSV code.
fn nordic_read(bin: &Path, files: &[PathBuf]) -> Vec<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/nrf_onboard_read.py"
    );
    let o = Command::new(bin.join("python"))
        .arg(script)
        .args(files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn nrf_cloud_onboard_csv_read_back_by_nordics_code_1000_rows_a_file() {
    let Some(bin) = peer_bin("CRADLE_TEST_NRFCLOUD_BIN", "modem_credentials_parser") else {
        return;
    };
    let env = Env::with_ca();
    batch(&env, 2500, "nrf-{seq:04}", "B1", "device");
    let mut csv = String::from("serial,imei\n");
    for i in 1..=2500u64 {
        csv.push_str(&format!("nrf-{i:04},{}\n", imei(i)));
    }
    std::fs::write(env.path("imei.csv"), csv).unwrap();
    env.ok(&["inventory", "import", "imei.csv", "--mode", "update"]);
    let v = env.json(&[
        "export",
        "nrf-cloud",
        "--tags",
        "berlin|pilot",
        "-o",
        "onboard.csv",
    ]);
    assert_eq!(v["devices"], 2500);
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| env.path(&format!("onboard-00{i}.csv")))
        .collect();
    assert!(!env.path("onboard.csv").exists() && !env.path("onboard-004.csv").exists());
    let got = nordic_read(&bin, &files);
    let counts: Vec<usize> = got
        .iter()
        .map(|f| f["rows"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, [1000, 1000, 500]);
    let mut pems = Vec::new();
    for (k, row) in got
        .iter()
        .flat_map(|f| f["rows"].as_array().unwrap())
        .enumerate()
    {
        let i = k as u64 + 1;
        assert_eq!(row[0], format!("nrf-{}", imei(i)));
        assert_eq!(
            (row[1].as_str(), row[2].as_str(), row[3].as_str()),
            (Some(""), Some("berlin|pilot"), Some("APP|MODEM"))
        );
        pems.push(row[4].as_str().unwrap().to_string());
    }
    openssl_verify_all(&env, &pem_files(&env, "nrf-pems", &pems));
    // No header, LF line ends, the PEM quoted: as Nordic's own writer makes it.
    let text = read(&files[2]);
    assert!(text.starts_with(&format!(
        "nrf-{},,berlin|pilot,APP|MODEM,\"-----BEGIN CERTIFICATE-----\n",
        imei(2001)
    )));
    assert!(!text.contains('\r'));
    // The limit is real: Nordic's reader refuses one file of 2000 rows.
    let joined = env.path("joined.csv");
    std::fs::write(&joined, read(&files[0]) + &read(&files[1])).unwrap();
    assert_eq!(nordic_read(&bin, &[joined])[0]["refused"], true);
    // The inventory alias writes the same rows.
    env.ok(&[
        "inventory",
        "export",
        "--format",
        "nrf-cloud",
        "-o",
        "alias/",
    ]);
    let a = read(&env.path("alias/onboard-003.csv"));
    assert_eq!(
        a.replace("berlin|pilot", ""),
        text.replace("berlin|pilot", "")
    );
}

#[test]
fn nrf_cloud_device_id_is_the_modem_uuid_from_the_attestation() {
    let Some(bin) = peer_bin("CRADLE_TEST_NRFCLOUD_BIN", "modem_credentials_parser") else {
        return;
    };
    let env = Env::with_ca();
    let link = env.path("dev/modem");
    let _sim = common::Sim::start(
        &env,
        &["--profile", "nrf91", "--link", link.to_str().unwrap()],
        1,
    );
    let o = env.run(&[
        "--json",
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        common::SIM_BAUD,
        "--timeout",
        "1",
        "--port",
        link.to_str().unwrap(),
        "--device-profile",
        "nrf91",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let uuid = env
        .sql("SELECT json_extract(device_attestation, '$.device_uuid') FROM certificates")
        .trim()
        .to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    env.ok(&["export", "nrf-cloud", "-o", "onboard.csv"]);
    let got = nordic_read(&bin, &[env.path("onboard.csv")]);
    assert_eq!(got[0]["rows"][0][0], uuid.as_str());
    openssl_verify_all(
        &env,
        &pem_files(
            &env,
            "uuid-pem",
            &[got[0]["rows"][0][4].as_str().unwrap().to_string()],
        ),
    );
}

#[test]
fn nrf_cloud_preflight_and_bad_arguments() {
    let env = Env::with_ca();
    batch(&env, 1, "noimei-{seq:02}", "B1", "device");
    let err = env.fails(&["export", "nrf-cloud", "-o", "o.csv"], 3);
    assert!(
        err.contains("noimei-01: no nRF91 device UUID recorded with its certificate and no IMEI"),
        "{err}"
    );
    assert!(!env.path("o.csv").exists());
    let err = env.fails(
        &[
            "export",
            "nrf-cloud",
            "-o",
            "o.csv",
            "--fw-types",
            "APP|FIRMWARE",
        ],
        2,
    );
    assert!(
        err.contains("'FIRMWARE' is not an nRF Cloud firmware type"),
        "{err}"
    );
    let err = env.fails(&["export", "nrf-cloud", "-o", "o.csv", "--tags", "a,b"], 2);
    assert!(err.contains("onboard.csv cannot carry"), "{err}");
    for args in [
        vec![
            "export",
            "nrf-cloud",
            "-o",
            "o.csv",
            "--since",
            "last tuesday",
        ],
        vec!["inventory", "export", "--since", "2026-13-45"],
    ] {
        let err = env.fails(&args, 3);
        assert!(err.contains("is not a time: use RFC 3339"), "{err}");
    }
    let err = env.fails(&["inventory", "export", "--format", "nrf-cloud"], 2);
    assert!(err.contains("give -o FILE or -o DIR"), "{err}");
    // Retired devices are left out with a note; a fresh --since sees nothing.
    env.ok(&[
        "device",
        "set",
        "noimei-01",
        "status=retired",
        "--force",
        "--reason",
        "rma",
    ]);
    let o = env.run(&["export", "nrf-cloud", "-o", "o.csv"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("note: noimei-01: retired: onboard.csv only adds devices"));
    let since = next_second();
    let err = String::from_utf8(
        env.run(&["export", "nrf-cloud", "-o", "o.csv", "--since", &since])
            .stderr,
    )
    .unwrap();
    assert!(
        err.contains("nothing to export: no device matches"),
        "{err}"
    );
}

#[test]
fn since_selects_devices_changed_at_or_after_it_in_inventory_export_too() {
    let env = Env::with_ca();
    batch(&env, 3, "d-{seq:02}", "B1", "device");
    let since = next_second();
    env.ok(&["device", "set", "d-02", "site=berlin-1"]);
    env.ok(&[
        "revoke",
        "d-03",
        "--reason",
        "superseded",
        "--passphrase-file",
        env.pass(),
    ]);
    let csv = env.ok(&["inventory", "export", "--since", &since]);
    let serials: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    // d-02's row changed; d-03's certificate was revoked; d-01 is untouched.
    assert_eq!(serials, ["d-02", "d-03"], "{csv}");
    let all = env.ok(&["inventory", "export", "--since", "2000-01-01"]);
    assert_eq!(all.lines().count(), 4);
}

/// A renewal is a change a delta hand-off picks up: the renewed device, with its
/// successor certificate, and nothing else.
#[test]
fn a_renewal_is_in_the_next_aws_iot_delta_with_the_successor_certificate() {
    let env = Env::with_ca();
    batch(&env, 3, "r-{seq:02}", "B1", "device");
    let since = next_second();
    env.ok(&[
        "renew",
        "r-02",
        "--out",
        env.path("renewed").to_str().unwrap(),
        "--passphrase-file",
        env.pass(),
    ]);
    let pem = read(&env.path("renewed/r-02.pem"));
    let successor: String = pem
        .split("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let v = env.json(&["export", "aws-iot", "--since", &since, "-o", "delta/"]);
    assert_eq!(v["devices"].as_u64(), Some(1), "{v}");
    let lines = jsonl(&env.path("delta/bulk-registration.jsonl"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let carried: Vec<String> = lines[0]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .map(|s| s.split_whitespace().collect::<String>().replace("\\n", ""))
        .collect();
    assert!(
        carried.iter().any(|s| s.contains(&successor)),
        "the delta carries the successor: {lines:?}"
    );
}
