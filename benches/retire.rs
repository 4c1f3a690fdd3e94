//! Benchmark: revoke 100,000 certificates (recorded with one event each) and issue
//! the 100,000-entry CRL, through the real binary. Reference measured in the same run:
//! `openssl crl` merely reading that CRL.
//!
//! Run: `cargo bench --bench retire` (N can be set with CRADLE_BENCH_N).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_cradle");

/// CPU seconds (user + system) used by waited-for children so far, from /proc.
/// The machine is shared: CPU time shows the work done, wall time what it cost here.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name; cutime and cstime are fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

fn cradle(home: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let o = Command::new(BIN)
        .args(args)
        .env("CRADLE_HOME", home)
        .env("CRADLE_OPERATOR", "bench")
        .output()
        .expect("run cradle");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "cradle {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    secs
}

fn sqlite(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn main() {
    let n: usize = std::env::var("CRADLE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
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
