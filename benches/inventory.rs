//! Inventory benchmark (not a test): import and export 1,000,000 devices with the real
//! binary, beside the sqlite3 shell's `.import --csv` of the same file into a table of
//! the same columns and indexes (UNIQUE serial, mac, imei, status; WAL), and its
//! `.mode csv` export, measured in the same run. Prints rows/s, the ratio and peak
//! memory (max RSS). `ROWS=200000 cargo bench --bench inventory` for a shorter run.
//! The default import keeps the registry in WAL mode (readers never wait); the
//! `--exclusive` line is the same import with the registry taken for it (rollback
//! journal, pages written once).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CRADLE: &str = env!("CARGO_BIN_EXE_cradle");

fn luhn(body: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, &c) in body.iter().rev().enumerate() {
        let mut d = (c - b'0') as u32;
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// About 210 bytes a row, every documented column (asset data included) filled like a
/// purchasing export.
fn generate(path: &Path, n: u64) {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(
        w,
        "serial,model,hw_rev,batch,site,location,owner,mac,imei,status,notes,purchase_date,warranty_until,cost,currency,supplier,criticality,end_of_life"
    )
    .unwrap();
    for i in 0..n {
        let body = format!("35{i:012}");
        let check = luhn(body.as_bytes());
        writeln!(
            w,
            "ACME-{i:08},Sensor-X2,rev-B,B-2026-{:02},site-{:03},rack {},ops-team,02:00:{:02x}:{:02x}:{:02x}:{:02x},{body}{check},registered,bulk onboarding,2026-{:02}-{:02},2029-{:02}-{:02},{}.{:02},EUR,Acme Components GmbH,{},2036-12-31",
            i / 100_000 + 1,
            i % 200,
            i % 48,
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            i % 12 + 1,
            i % 28 + 1,
            i % 12 + 1,
            i % 28 + 1,
            100 + i % 50,
            i % 100,
            ["low", "medium", "high", "critical"][(i % 4) as usize]
        )
        .unwrap();
    }
    w.flush().unwrap();
}

struct Run {
    secs: f64,
    /// User + system CPU seconds (from /usr/bin/time), steadier than wall time on a busy machine.
    cpu: Option<f64>,
    max_rss_kib: Option<u64>,
}

/// Runs a command under /usr/bin/time -v (for max RSS) if available, else polls VmHWM.
fn measure(cmd: Command, what: &str) -> Run {
    let time_v = Path::new("/usr/bin/time").exists();
    let mut c = if time_v {
        let mut t = Command::new("/usr/bin/time");
        t.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => t.env(k, v),
                None => t.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            t.current_dir(d);
        }
        t
    } else {
        cmd
    };
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let mut hwm = 0u64;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if !time_v {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(v) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    hwm = hwm.max(v);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{what} failed: {err}");
    let max_rss_kib = if time_v {
        err.lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse().ok())
    } else {
        Some(hwm)
    };
    let field = |name: &str| -> Option<f64> {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let cpu = match (
        field("User time (seconds):"),
        field("System time (seconds):"),
    ) {
        (Some(u), Some(s)) => Some(u + s),
        _ => None,
    };
    Run {
        secs,
        cpu,
        max_rss_kib,
    }
}

fn cpu(r: &Run) -> String {
    r.cpu
        .map(|c| format!("{c:.2} s cpu"))
        .unwrap_or_else(|| "cpu ?".into())
}

fn cpu_ratio(ours: &Run, theirs: &Run) -> String {
    match (ours.cpu, theirs.cpu) {
        (Some(a), Some(b)) if a > 0.0 => format!(", by CPU time {:.2}x", b / a),
        _ => String::new(),
    }
}

fn mib(r: &Run) -> String {
    r.max_rss_kib
        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

fn cradle(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(CRADLE);
    c.args(args)
        .env("CRADLE_HOME", home)
        .env("CRADLE_OPERATOR", "bench")
        .stdin(Stdio::null());
    c
}

fn sqlite(db: &Path, script: &str) -> Command {
    let mut c = Command::new("sqlite3");
    c.arg(db).arg(script).stdin(Stdio::null());
    c
}

fn main() {
    let rows: u64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv = d.join("devices.csv");
    generate(&csv, rows);
    let size = std::fs::metadata(&csv).unwrap().len();
    println!(
        "inventory benchmark: {rows} rows, {:.1} MB CSV",
        size as f64 / 1e6
    );

    // cradle: a fresh home, then import (validation + one event per device) and export.
    let home = d.join("home");
    let st = cradle(&home, &["init", "--org", "Bench", "--station", "bench"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let imp = measure(
        cradle(&home, &["inventory", "import", csv.to_str().unwrap()]),
        "cradle inventory import",
    );
    let again = measure(
        cradle(
            &home,
            &[
                "inventory",
                "import",
                csv.to_str().unwrap(),
                "--mode",
                "upsert",
            ],
        ),
        "cradle inventory import --mode upsert (second time)",
    );
    // The same import with --exclusive, into a fresh home.
    let home2 = d.join("home-exclusive");
    let st = cradle(&home2, &["init", "--org", "Bench", "--station", "bench"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let excl = measure(
        cradle(
            &home2,
            &["inventory", "import", csv.to_str().unwrap(), "--exclusive"],
        ),
        "cradle inventory import --exclusive",
    );
    std::fs::remove_dir_all(&home2).unwrap();
    let out_csv: PathBuf = d.join("export.csv");
    let exp = measure(
        cradle(
            &home,
            &["inventory", "export", "-o", out_csv.to_str().unwrap()],
        ),
        "cradle inventory export",
    );
    let exported = std::fs::metadata(&out_csv).unwrap().len();

    // sqlite3 shell: the same columns, the same indexes, WAL, `.import --csv`.
    let refdb = d.join("ref.db");
    let schema = "PRAGMA journal_mode=WAL;
CREATE TABLE devices (serial TEXT NOT NULL UNIQUE, model TEXT, hw_rev TEXT, batch TEXT, site TEXT,
  location TEXT, owner TEXT, mac TEXT, imei TEXT, status TEXT NOT NULL, notes TEXT,
  purchase_date TEXT, warranty_until TEXT, cost TEXT, currency TEXT, supplier TEXT,
  criticality TEXT, end_of_life TEXT);
CREATE INDEX devices_mac ON devices(mac);
CREATE INDEX devices_imei ON devices(imei);
CREATE INDEX devices_status ON devices(status);";
    let st = sqlite(&refdb, schema)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let ref_imp = measure(
        sqlite(
            &refdb,
            &format!(".import --csv --skip 1 {} devices", csv.display()),
        ),
        "sqlite3 .import",
    );
    let ref_out = d.join("ref_export.csv");
    let mut c = Command::new("sqlite3");
    c.args(["-cmd", ".headers on", "-cmd", ".mode csv", "-cmd"])
        .arg(format!(".once {}", ref_out.display()))
        .arg(&refdb)
        .arg("SELECT * FROM devices;")
        .stdin(Stdio::null());
    let ref_exp = measure(c, "sqlite3 .mode csv export");
    let n: u64 = String::from_utf8(
        sqlite(&refdb, "SELECT count(*) FROM devices")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(n, rows, "sqlite3 shell imported {n} rows");

    let rate = |r: &Run| rows as f64 / r.secs;
    println!(
        "import  cradle  {:>10.0} rows/s  ({:.2} s, {}, peak {})",
        rate(&imp),
        imp.secs,
        cpu(&imp),
        mib(&imp)
    );
    println!(
        "import  sqlite3 {:>10.0} rows/s  ({:.2} s, {}, peak {})",
        rate(&ref_imp),
        ref_imp.secs,
        cpu(&ref_imp),
        mib(&ref_imp)
    );
    println!(
        "import  ratio cradle/sqlite3 = {:.2}x{}  (target >= 1.0x, peak < 64 MiB)",
        rate(&imp) / rate(&ref_imp),
        cpu_ratio(&imp, &ref_imp)
    );
    println!(
        "import  cradle --exclusive {:>10.0} rows/s  ({:.2} s, {}, peak {}), {:.2}x{}",
        rate(&excl),
        excl.secs,
        cpu(&excl),
        mib(&excl),
        rate(&excl) / rate(&ref_imp),
        cpu_ratio(&excl, &ref_imp)
    );
    println!(
        "re-import --mode upsert (all unchanged) {:>10.0} rows/s  ({:.2} s, peak {})",
        rate(&again),
        again.secs,
        mib(&again)
    );
    println!(
        "export  cradle  {:>10.0} rows/s  ({:.2} s, {}, peak {}, {:.1} MB)",
        rate(&exp),
        exp.secs,
        cpu(&exp),
        mib(&exp),
        exported as f64 / 1e6
    );
    println!(
        "export  sqlite3 {:>10.0} rows/s  ({:.2} s, {}, peak {})",
        rate(&ref_exp),
        ref_exp.secs,
        cpu(&ref_exp),
        mib(&ref_exp)
    );
    println!(
        "export  ratio cradle/sqlite3 = {:.2}x{}  (target >= 1.0x)",
        rate(&exp) / rate(&ref_exp),
        cpu_ratio(&exp, &ref_exp)
    );
}
