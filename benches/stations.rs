//! Benchmark (issue 14): many stations, one registry.
//!
//! 1. Devices/s issued by 1, 2 and 4 concurrent stations: each an `identity batch`
//!    process of its own (STATIONS_BENCH_DEVICES devices, 4,000 by default, into its own
//!    bundle), into a PostgreSQL registry — every station its own home (a copy of the
//!    first: config with the URL, log key, CA), as a second station joins today — and,
//!    as the reference measured in the same run, into a SQLite registry, where the
//!    stations share the one home whose file is the registry (a SQLite file is shared
//!    by processes on one host, never over a network share). Printed as PostgreSQL /
//!    SQLite and as N stations / 1 station on the same backend.
//! 2. Import rows/s: `cradle inventory import` of one CSV (STATIONS_BENCH_ROWS rows,
//!    50,000 by default) into a PostgreSQL registry, against `psql \copy` of the same CSV
//!    into the same table (`devices`) of another registry made the same way, in the same
//!    run: the server's floor for loading those rows (no validation, no events). The
//!    SQLite import of the same file is printed beside it.
//!
//! Needs CRADLE_TEST_PG_URL (and PGPASSFILE) as .ci/run or .ci/pg-cluster.sh set them;
//! without it only SQLite is measured. While a command still refuses a PostgreSQL
//! registry (the port of issue 14 is under way), its PostgreSQL part is skipped with the
//! command's own line as the reason. Both chains are verified afterwards.
//! Note: the test cluster runs with fsync=off, SQLite in WAL with synchronous=NORMAL.
//!
//! Run: cargo bench --bench stations

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const PASS: &str = "bench passphrase";

fn cradle(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cradle"));
    c.env("CRADLE_HOME", home)
        .env("CRADLE_OPERATOR", "bench")
        .env_remove("CRADLE_REGISTRY")
        .env_remove("CRADLE_STATION")
        .env_remove("CRADLE_CA_PASSPHRASE")
        .stdin(Stdio::null());
    c
}

/// Why a PostgreSQL part is skipped: the command's one line when it refuses the
/// registry; any other failure is a failure of the benchmark.
fn refused(what: &str, o: &Output) -> Option<String> {
    if o.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(2) && err.contains("does not work on a PostgreSQL registry") {
        return Some(format!("{what}: {}", err.trim()));
    }
    panic!("{what} failed ({:?}): {err}", o.status.code());
}

fn must(what: &str, c: &mut Command) -> String {
    let o = c.output().expect("run");
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn psql(url: &str) -> Command {
    let bin = std::env::var("CRADLE_TEST_PG_BIN")
        .map(|d| format!("{d}/psql"))
        .unwrap_or_else(|_| "psql".into());
    let mut c = Command::new(bin);
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url]);
    c
}

/// A fresh database on the server; dropped with the value.
struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    fn new(admin: &str, tag: &str) -> Db {
        let name = format!("cradle_bench_{}_{tag}", std::process::id());
        must(
            "createdb",
            psql(admin).args(["-c", &format!("CREATE DATABASE {name}")]),
        );
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
        Db {
            admin: admin.to_string(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = psql(&self.admin)
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// `cradle init` (on `registry` when given) and `cradle ca init` in `home`; None, with
/// the reason, when PostgreSQL refuses the CA.
fn station_home(home: &Path, pass: &Path, registry: Option<&str>) -> Option<String> {
    let mut init = cradle(home);
    init.args(["init", "--org", "Bench", "--station", "line-0"]);
    if let Some(url) = registry {
        init.args(["--registry", url]);
    }
    must("init", &mut init);
    let o = cradle(home)
        .args(["ca", "init", "--name", "Bench", "--passphrase-file"])
        .arg(pass)
        .output()
        .unwrap();
    refused("ca init", &o)
}

/// Runs one `identity batch` per home at once (station n: serials Sn-…, its own
/// bundle); the wall time, or the reason PostgreSQL refused it.
fn stations(homes: &[PathBuf], pass: &Path, dir: &Path, per: usize) -> Result<f64, String> {
    let start = Instant::now();
    let kids: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(n, home)| {
            cradle(home)
                .env("CRADLE_STATION", format!("line-{n}"))
                .args(["identity", "batch", "--count", &per.to_string()])
                .args(["--serial-pattern", &format!("S{n}-{{seq:07}}")])
                .arg("--bundle")
                .arg(dir.join(format!("s{n}.jsonl")))
                .arg("--passphrase-file")
                .arg(pass)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = kids
        .into_iter()
        .map(|k| k.wait_with_output().unwrap())
        .collect();
    let wall = start.elapsed().as_secs_f64();
    for o in &outs {
        if let Some(why) = refused("identity batch", o) {
            return Err(why);
        }
    }
    Ok(wall)
}

/// Copies a home (config, log key, CA, templates) for another station of the same
/// PostgreSQL registry.
fn copy_home(from: &Path, to: &Path) {
    must("cp", Command::new("cp").arg("-a").arg(from).arg(to));
}

fn verify(home: &Path, events: usize) {
    let v: serde_json::Value = serde_json::from_str(&must(
        "log verify",
        cradle(home).args(["--json", "log", "verify"]),
    ))
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["events"].as_u64().unwrap() as usize >= events, "{v}");
}

/// The import CSV: device columns only, so `\copy` can load the same file.
const COLUMNS: &str = "serial,model,hw_rev,batch,site,location,owner,mac,imei,status";

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

fn generate(path: &Path, rows: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "{COLUMNS}").unwrap();
    for i in 0..rows {
        let body = format!("35{i:012}");
        writeln!(
            w,
            "IMP-{i:08},Sensor-X2,rev-B,PO-{:03},site-{:02},rack {},ops,02:00:{:02x}:{:02x}:{:02x}:{:02x},{body}{},registered",
            i / 10_000,
            i % 20,
            i % 48,
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            luhn(body.as_bytes())
        )
        .unwrap();
    }
    w.flush().unwrap();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let per = env_usize("STATIONS_BENCH_DEVICES", 4000);
    let rows = env_usize("STATIONS_BENCH_ROWS", 50_000);
    let admin = std::env::var("CRADLE_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if admin.is_none() {
        println!("CRADLE_TEST_PG_URL is not set: measuring SQLite only");
    }
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, PASS).unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // 1. Concurrent issuing stations.
    println!("identity batch, {per} devices per station, each station its own process");
    println!("stations  devices  sqlite dev/s  (xN/x1)  postgresql dev/s  (xN/x1)  pg/sqlite");
    let mut pg_skip: Option<String> = None;
    let (mut lite_1, mut pg_1) = (None::<f64>, None::<f64>);
    for n in [1usize, 2, 4] {
        let run = dir.path().join(format!("run{n}"));
        std::fs::create_dir_all(&run).unwrap();
        let total = n * per;
        // SQLite: the stations share the home, so its file.
        let lite = run.join("lite");
        assert!(station_home(&lite, &pass, None).is_none());
        let lite_homes = vec![lite.clone(); n];
        let bundles = run.join("lite-bundles");
        std::fs::create_dir_all(&bundles).unwrap();
        let t = stations(&lite_homes, &pass, &bundles, per).expect("SQLite never refuses");
        verify(&lite, total);
        let lite_rate = total as f64 / t;
        let lite_scale = lite_rate / *lite_1.get_or_insert(lite_rate);

        // PostgreSQL: a home per station, one registry.
        let pg_rate = match (&admin, &pg_skip) {
            (Some(admin), None) => {
                let db = Db::new(admin, &format!("s{n}"));
                let first = run.join("pg-0");
                match station_home(&first, &pass, Some(&db.url)) {
                    Some(why) => {
                        pg_skip = Some(why);
                        None
                    }
                    None => {
                        let mut homes = vec![first.clone()];
                        for i in 1..n {
                            let h = run.join(format!("pg-{i}"));
                            copy_home(&first, &h);
                            homes.push(h);
                        }
                        let bundles = run.join("pg-bundles");
                        std::fs::create_dir_all(&bundles).unwrap();
                        match stations(&homes, &pass, &bundles, per) {
                            Ok(t) => {
                                verify(&first, total);
                                Some(total as f64 / t)
                            }
                            Err(why) => {
                                pg_skip = Some(why);
                                None
                            }
                        }
                    }
                }
            }
            _ => None,
        };
        match pg_rate {
            Some(pg) => {
                let scale = pg / *pg_1.get_or_insert(pg);
                println!(
                    "{n:>8}  {total:>7}  {lite_rate:>12.0}  {lite_scale:>6.2}x  {pg:>16.0}  {scale:>6.2}x  {:>8.2}x",
                    pg / lite_rate
                );
            }
            None => println!(
                "{n:>8}  {total:>7}  {lite_rate:>12.0}  {lite_scale:>6.2}x  {:>16}  {:>7}  {:>9}",
                "-", "-", "-"
            ),
        }
    }
    if let Some(why) = &pg_skip {
        println!("PostgreSQL skipped: {why}");
    }

    // 2. Import against \copy.
    let csv = dir.path().join("devices.csv");
    generate(&csv, rows);
    println!(
        "\ninventory import, {rows} rows ({:.1} MB CSV)",
        std::fs::metadata(&csv).unwrap().len() as f64 / 1e6
    );
    let lite = dir.path().join("import-lite");
    must("init", cradle(&lite).args(["init", "--station", "bench"]));
    let t = Instant::now();
    must(
        "import",
        cradle(&lite).args(["inventory", "import"]).arg(&csv),
    );
    let lite_rate = rows as f64 / t.elapsed().as_secs_f64();
    verify(&lite, rows);
    println!("  cradle into SQLite       {lite_rate:>10.0} rows/s");
    let Some(admin) = &admin else {
        return;
    };
    // The reference: the same table, made by cradle init, loaded by psql \copy. The
    // timestamps cradle fills get the server's now() (the CSV has none).
    let reference = Db::new(admin, "copy");
    let ref_home = dir.path().join("import-ref");
    must(
        "init",
        cradle(&ref_home).args(["init", "--station", "bench", "--registry", &reference.url]),
    );
    must(
        "defaults",
        psql(&reference.url).args([
            "-c",
            "ALTER TABLE devices ALTER created_at SET DEFAULT now(), ALTER updated_at SET DEFAULT now()",
        ]),
    );
    let t = Instant::now();
    must(
        "psql \\copy",
        psql(&reference.url).args([
            "-c",
            &format!(
                "\\copy devices ({COLUMNS}) FROM '{}' WITH (FORMAT csv, HEADER true)",
                csv.display()
            ),
        ]),
    );
    let copy_rate = rows as f64 / t.elapsed().as_secs_f64();
    let loaded = must(
        "count",
        psql(&reference.url).args(["-c", "SELECT count(*) FROM devices"]),
    );
    assert_eq!(loaded.trim(), rows.to_string());
    println!("  psql \\copy (reference)   {copy_rate:>10.0} rows/s");

    let db = Db::new(admin, "import");
    let home = dir.path().join("import-pg");
    must(
        "init",
        cradle(&home).args(["init", "--station", "bench", "--registry", &db.url]),
    );
    let t = Instant::now();
    let o = cradle(&home)
        .args(["inventory", "import"])
        .arg(&csv)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    if let Some(why) = refused("inventory import", &o) {
        println!("  cradle into PostgreSQL   skipped: {why}");
        return;
    }
    verify(&home, rows);
    let pg_rate = rows as f64 / secs;
    println!(
        "  cradle into PostgreSQL   {pg_rate:>10.0} rows/s   {:.2}x psql \\copy, {:.2}x cradle into SQLite",
        pg_rate / copy_rate,
        pg_rate / lite_rate
    );
}
