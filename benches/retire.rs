//! Benchmark: revoke 100,000 certificates (recorded with one event each) and issue
//! the 100,000-entry CRL, through the real binary. Reference measured in the same run:
//! `openssl crl` merely reading that CRL.
//!
//! Run: `cargo bench --bench retire` (N can be set with CRADLE_BENCH_N).

use std::process::Command;
use std::time::Instant;

mod common;
use common::{children_cpu, env_or, sqlite, timed as cradle};

fn main() {
    let n: usize = env_or("CRADLE_BENCH_N", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = dir.path().join("ca.pass");
    std::fs::write(&pass, "bench passphrase\n").unwrap();
    let pass = pass.to_str().unwrap();
    cradle(&home, &["init", "--org", "Bench", "--station", "bench"]);
    cradle(
        &home,
        &["ca", "init", "--name", "Bench", "--passphrase-file", pass],
    );
    let bundle = dir.path().join("bundle.jsonl");
    let setup = cradle(
        &home,
        &[
            "identity",
            "batch",
            "--count",
            &n.to_string(),
            "--serial-pattern",
            "B-{seq:06}",
            "--bundle",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass,
        ],
    );
    std::fs::remove_file(&bundle).unwrap();
    println!("setup: {n} identities issued in {setup:.2} s (not part of the measurement)");

    // Cost of starting cradle and unlocking the CA (PBKDF2), for context.
    let empty_crl = cradle(&home, &["ca", "crl", "--passphrase-file", pass]);

    let csv = dir.path().join("all.csv");
    let mut s = String::with_capacity(n * 10);
    s.push_str("serial\n");
    for i in 1..=n {
        s.push_str(&format!("B-{i:06}\n"));
    }
    std::fs::write(&csv, s).unwrap();

    let cpu0 = children_cpu();
    let revoke = cradle(
        &home,
        &[
            "revoke",
            "--from",
            csv.to_str().unwrap(),
            "--reason",
            "cessation-of-operation",
            "--passphrase-file",
            pass,
        ],
    );
    let revoke_cpu = children_cpu() - cpu0;
    let db = home.join("registry.db");
    let events = sqlite(
        &db,
        "SELECT COUNT(*) FROM events WHERE kind = 'cert.revoked'",
    );
    let revoked = sqlite(
        &db,
        "SELECT COUNT(*) FROM certificates WHERE status = 'revoked'",
    );
    assert_eq!(revoked, n.to_string(), "every certificate revoked");
    assert_eq!(events, n.to_string(), "one event per revocation");

    let der = dir.path().join("crl.der");
    let crl = cradle(
        &home,
        &[
            "ca",
            "crl",
            "--out",
            der.to_str().unwrap(),
            "--der",
            "--passphrase-file",
            pass,
        ],
    );
    let size = std::fs::metadata(&der).unwrap().len();

    let t = Instant::now();
    let o = Command::new("openssl")
        .args([
            "crl",
            "-in",
            der.to_str().unwrap(),
            "-inform",
            "DER",
            "-noout",
        ])
        .output()
        .expect("openssl");
    let reference = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    println!("cradle start + CA unlock + empty CRL:            {empty_crl:.3} s");
    println!(
        "revoke {n} certificates (+{n} events) + CRL:  {revoke:.3} s wall, {revoke_cpu:.2} s CPU   (target < 2 s: {})",
        if revoke < 2.0 { "met" } else { "MISSED" }
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average during the run: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "re-issue the {n}-entry CRL ({:.1} MB DER):     {crl:.3} s",
        size as f64 / 1e6
    );
    println!("reference: openssl crl reading that CRL:           {reference:.3} s");
    println!(
        "ratio revoke+CRL / openssl read: {:.2}x; CRL issue / openssl read: {:.2}x",
        revoke / reference,
        crl / reference
    );
}
