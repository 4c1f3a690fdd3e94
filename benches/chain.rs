//! Benchmark (issue 14): events/s appended to the hash chain by 1, 2 and 4 concurrent
//! stations, each with its own connection and one transaction per event, into a
//! PostgreSQL registry (advisory chain lock) and, as the reference measured in the same
//! run, into a SQLite registry (write lock). This is where the serialised chain limits a
//! multi-station site: every writer of every station waits for it. Both chains are
//! verified with `cradle log verify` afterwards.
//!
//! Needs CRADLE_TEST_PG_URL (and PGPASSFILE) as .ci/run or .ci/pg-cluster.sh set them;
//! without it only SQLite is measured. CHAIN_BENCH_EVENTS: events per station (400).
//! Note: the test cluster runs with fsync=off, SQLite in WAL with synchronous=NORMAL;
//! neither waits for the disk on each commit.
//!
//! Run: cargo bench --bench chain

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cradle::model::{Actor, EventKind};

fn cradle(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cradle"));
    c.env("CRADLE_HOME", home)
        .env("CRADLE_OPERATOR", "bench")
        .env_remove("CRADLE_REGISTRY")
        .stdin(Stdio::null());
    c
}

fn must(c: &mut Command) -> String {
    let o = c.output().expect("run");
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn psql(url: &str, sql: &str) {
    let bin = std::env::var("CRADLE_TEST_PG_BIN")
        .map(|d| format!("{d}/psql"))
        .unwrap_or_else(|_| "psql".into());
    must(Command::new(bin).args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql]));
}

fn actor(n: usize) -> Actor {
    Actor {
        operator: "bench".into(),
        station: format!("line-{n}"),
    }
}

/// Runs `stations` threads, each appending `per` events through `append`.
fn run(
    stations: usize,
    per: usize,
    append: impl Fn(usize) -> Box<dyn FnMut(usize) + Send> + Sync,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for n in 0..stations {
            let mut f = append(n);
            s.spawn(move || {
                for i in 0..per {
                    f(i);
                }
            });
        }
    });
    start.elapsed()
}

fn main() {
    let per: usize = std::env::var("CHAIN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let pg_url = std::env::var("CRADLE_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if pg_url.is_none() {
        eprintln!("CRADLE_TEST_PG_URL is not set: measuring SQLite only");
    }
    let at = "2026-12-04T00:00:00Z";
    println!("stations  events  sqlite ev/s  postgresql ev/s  pg/sqlite");
    for stations in [1usize, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        // SQLite: the home's registry file, one connection per station.
        let lite = dir.path().join("lite");
        must(cradle(&lite).args(["init", "--station", "bench"]));
        let db = lite.join("registry.db");
        let t_lite = run(stations, per, |n| {
            let mut reg = cradle::store::Store::open(&db).unwrap();
            let a = actor(n);
            Box::new(move |i| {
                let tx = reg.write().unwrap();
                tx.event(
                    EventKind::HomeInitialised,
                    None,
                    &a,
                    serde_json::json!({ "i": i }),
                    at,
                )
                .unwrap();
                tx.commit().unwrap();
            })
        });
        must(cradle(&lite).args(["log", "verify"]));

        let t_pg = pg_url.as_ref().map(|admin| {
            let name = format!("cradle_bench_{}_{}", std::process::id(), stations);
            psql(admin, &format!("CREATE DATABASE {name}"));
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
            let url = format!("{base}/{name}");
            let home = dir.path().join("pg");
            must(cradle(&home).args(["init", "--station", "bench", "--registry", &url]));
            let target = cradle::store::pgurl::PgTarget::parse(&url).unwrap();
            let key = home.join("log.key");
            let t = run(stations, per, |n| {
                let mut s =
                    cradle::store::pg::PgStore::open(&target, Duration::from_secs(10), &key)
                        .unwrap();
                let a = actor(n);
                Box::new(move |i| {
                    s.event(
                        EventKind::HomeInitialised,
                        None,
                        &a,
                        serde_json::json!({ "i": i }),
                        at,
                    )
                    .unwrap();
                })
            });
            let v = must(cradle(&home).args(["--json", "log", "verify"]));
            assert!(v.contains("\"ok\": true"), "{v}");
            psql(admin, &format!("DROP DATABASE {name} WITH (FORCE)"));
            t
        });
        let n = (stations * per) as f64;
        let lite_rate = n / t_lite.as_secs_f64();
        match t_pg {
            Some(t) => {
                let pg_rate = n / t.as_secs_f64();
                println!(
                    "{stations:>8}  {:>6}  {lite_rate:>11.0}  {pg_rate:>15.0}  {:>8.2}x",
                    stations * per,
                    pg_rate / lite_rate
                );
            }
            None => println!(
                "{stations:>8}  {:>6}  {lite_rate:>11.0}  {:>15}  {:>9}",
                stations * per,
                "-",
                "-"
            ),
        }
    }
}
