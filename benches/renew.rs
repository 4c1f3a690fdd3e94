//! Benchmark: `cradle renew --expiring-within` over 100,000 devices (registry + one
//! bundle), devices/s beside `cradle identity batch` making the same devices in the same
//! run (the reference: the same registry work plus a key per device, where renewal parses
//! the stored certificate for its key instead). Run with `cargo bench --bench renew`.
//! Env: BENCH_COUNT (default 100000).

mod common;

use std::time::Instant;

use common::{cradle, home_with_ca};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Runs cradle (with `--json` when `json`): its stdout, wall and CPU seconds.
fn run(
    home: &std::path::Path,
    pass: &std::path::Path,
    json: bool,
    args: &[&str],
) -> (String, f64, f64) {
    let cpu = cpu_seconds();
    let t = Instant::now();
    let mut c = cradle(home);
    if json {
        c.arg("--json");
    }
    let o = c
        .args(args)
        .arg("--passphrase-file")
        .arg(pass)
        .output()
        .expect("run cradle");
    let wall = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        wall,
        cpu_seconds() - cpu,
    )
}

fn main() {
    let n: usize = std::env::var("BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (dir, home, pass) = home_with_ca();
    let first = dir.path().join("first.jsonl");
    let renewed = dir.path().join("renewed.jsonl");

    println!("== {n} devices: identity batch (reference) vs renew --expiring-within, registry + bundle ==");
    let (out, batch_wall, batch_cpu) = run(
        &home,
        &pass,
        true,
        &[
            "identity",
            "batch",
            "--count",
            &n.to_string(),
            "--serial-pattern",
            "BR-{seq:07}",
            "--bundle",
            first.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(v["issued"], n);
    // Every certificate expires within the default profile's validity: all are due.
    // Text output: --json would list all 100,000 renewals, work identity batch's summary
    // does not do.
    let (out, renew_wall, renew_cpu) = run(
        &home,
        &pass,
        false,
        &[
            "renew",
            "--expiring-within",
            "100000",
            "--bundle",
            renewed.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains(&format!("renewed {n} device(s)")),
        "renew printed: {out}"
    );
    let lines = std::fs::read_to_string(&renewed).unwrap().lines().count();
    assert_eq!(lines, n + 1, "bundle: header + one line per device");

    let batch_rate = n as f64 / batch_wall;
    let renew_rate = n as f64 / renew_wall;
    println!(
        "{:<34} {:>10} {:>10} {:>12}",
        "", "wall s", "CPU s", "devices/s"
    );
    println!(
        "{:<34} {:>10.2} {:>10.2} {:>12.0}",
        "identity batch (reference)", batch_wall, batch_cpu, batch_rate
    );
    println!(
        "{:<34} {:>10.2} {:>10.2} {:>12.0}",
        "renew --expiring-within", renew_wall, renew_cpu, renew_rate
    );
    println!(
        "ratio renew / identity batch: {:.2}x by wall time, {:.2}x by CPU time",
        renew_rate / batch_rate,
        batch_cpu / renew_cpu
    );
}
