//! Helpers the provisioning benchmarks share: a home with a CA, `cradle sim` as a
//! child, one `cradle provision` run, the median.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

pub const PASS: &str = "bench passphrase";

pub fn cradle(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cradle"));
    c.env("CRADLE_HOME", home)
        .env_remove("CRADLE_CA_PASSPHRASE")
        .stdin(Stdio::null());
    c
}

pub struct Sim(Child);

impl Sim {
    pub fn start(home: &Path, args: &[&str], count: usize) -> Sim {
        let mut child = cradle(home)
            .arg("sim")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sim");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        for _ in 0..count {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
        }
        std::thread::spawn(move || for _ in out.lines() {});
        Sim(child)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A temporary home with `cradle init` and a CA; (dir, home, passphrase file).
pub fn home_with_ca() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, PASS).unwrap();
    let ok = |c: &mut Command| assert!(c.output().unwrap().status.success());
    ok(cradle(&home).args(["init", "--org", "Bench", "--station", "bench"]));
    ok(cradle(&home)
        .args(["ca", "init", "--name", "Bench"])
        .arg("--passphrase-file")
        .arg(&pass));
    (dir, home, pass)
}

/// One `cradle provision --ports GLOB` run (plus `extra`); its results and wall time.
pub fn provision(
    home: &Path,
    pass: &Path,
    glob: &str,
    baud: u32,
    extra: &[&str],
) -> (Vec<serde_json::Value>, f64) {
    let t = Instant::now();
    let o = cradle(home)
        .args(["--json", "provision", "--passphrase-file"])
        .arg(pass)
        .args(["--ports", glob, "--baud", &baud.to_string()])
        .args(extra)
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    (v, wall)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The two measurements of a provisioning benchmark for one device family: one
/// device at 115200 and 921600 against the wire limit, then 1/4/8/16 ports at 115200.
/// `sim` and `prov` are the family's extra `cradle sim` / `cradle provision` arguments,
/// `hwid(n, ports)` the `--hardware-id` of run `n`.
pub fn line_rate_and_ports(sim: &[&str], prov: &[&str], hwid: &dyn Fn(usize) -> String) {
    let (dir, home, pass) = home_with_ca();

    println!("== one device: link time vs wire limit (bytes x 10 / baud) ==");
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>8}",
        "baud", "bytes", "wire ms", "link ms", "ratio"
    );
    let mut n = 0;
    for baud in [115_200u32, 921_600] {
        let mut ratios = Vec::new();
        let mut last = (0u64, 0.0, 0.0);
        for _ in 0..5 {
            n += 1;
            let link = dir.path().join(format!("dev/one{n}"));
            let (id, b) = (hwid(n), baud.to_string());
            let mut a = vec![
                "--link",
                link.to_str().unwrap(),
                "--hardware-id",
                &id,
                "--baud",
                &b,
            ];
            a.extend_from_slice(sim);
            let _sim = Sim::start(&home, &a, 1);
            let (v, _) = provision(&home, &pass, link.to_str().unwrap(), baud, prov);
            let bytes = v[0]["wire_bytes"].as_u64().unwrap();
            let link_s = v[0]["link_seconds"].as_f64().unwrap();
            let wire_s = bytes as f64 * 10.0 / baud as f64;
            ratios.push(wire_s / link_s);
            last = (bytes, wire_s, link_s);
        }
        let r = median(ratios);
        println!(
            "{:>8} {:>10} {:>12.1} {:>12.1} {:>7.1}%",
            baud,
            last.0,
            last.1 * 1000.0,
            last.2 * 1000.0,
            r * 100.0
        );
    }

    println!("\n== ports in parallel at 115200: devices per second vs one port ==");
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>12}",
        "ports", "max link s", "dev/s", "speedup", "process s"
    );
    let mut base = None;
    for ports in [1usize, 4, 8, 16] {
        n += 1;
        let link = dir.path().join(format!("dev/par{n}-"));
        let (id, count) = (hwid(n), ports.to_string());
        let mut a = vec![
            "--link",
            link.to_str().unwrap(),
            "--count",
            &count,
            "--hardware-id",
            &id,
            "--baud",
            "115200",
        ];
        a.extend_from_slice(sim);
        let _sim = Sim::start(&home, &a, ports);
        let glob = format!("{}*", link.display());
        let (v, wall) = provision(&home, &pass, &glob, 115_200, prov);
        assert_eq!(v.len(), ports);
        let span = v
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap())
            .fold(0.0, f64::max);
        let rate = ports as f64 / span;
        let b = *base.get_or_insert(rate);
        println!(
            "{:>6} {:>12.3} {:>12.2} {:>9.1}x {:>12.3}",
            ports,
            span,
            rate,
            rate / b,
            wall
        );
    }
}

/// `CRADLE_BENCH_*` settings: the variable parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) used by waited-for children so far, from /proc.
/// The machine is shared: CPU time shows the work done, wall time what it cost here.
pub fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name; cutime and cstime are fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) / 100.0
}

/// Runs `cradle ARGS` in `home` (operator "bench"), asserts success, returns wall seconds.
pub fn timed(home: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let o = cradle(home)
        .args(args)
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

/// The sqlite3 shell's answer to `sql` on `db`, trimmed.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
