//! Many stations, one registry (issue 14): four processes writing one registry at
//! once — two `identity batch` runs, one `provision --watch` of eight simulated
//! devices and one `inventory import`, on PostgreSQL each in a home of its own — and
//! then every row accounted for: devices per source, one certificate per issued
//! device, unique serials, each source's events, one intact chain, a clean audit. The same run on SQLite (always) and on PostgreSQL
//! (needs CRADLE_TEST_PG_URL; under CI=true a missing server is a failure).
//!
//! Also the harness itself on both backends: `Env::sql`, `dump` and `hold_write_lock`
//! behave alike on the sqlite3 shell and psql, so one suite runs on both.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{audit, q, Backend, Env, Running, Sim, SIM_BAUD};

/// Devices per `identity batch` (more than one 1024-device chunk, so each batch
/// commits several times while the others write).
const BATCH: usize = 2500;
/// Rows of the imported CSV.
const IMPORT: usize = 3000;
/// Simulated devices provisioned in station mode.
const PORTS: usize = 8;

/// A purchasing CSV of `n` devices IMP-00001.., each with a unique MAC.
fn inventory_csv(env: &Env, n: usize) -> String {
    let path = env.path("inventory.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(w, "serial,model,batch,site,mac").unwrap();
    for i in 1..=n {
        writeln!(
            w,
            "IMP-{i:05},Sensor-X2,PO-{},site-{},02:00:00:00:{:02x}:{:02x}",
            i / 1000,
            i % 7,
            i >> 8,
            i & 0xff
        )
        .unwrap();
    }
    w.flush().unwrap();
    "inventory.csv".to_string()
}

/// `cradle ARGS` as station `station` in its own home (`Env::station_home`), output
/// piped.
fn spawn(env: &Env, station: &str, args: &[&str]) -> Running {
    let child = env
        .cmd(args)
        .env("CRADLE_HOME", env.station_home(station))
        .env("CRADLE_STATION", station)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running::new(station, child)
}

/// Waits for a station's process; asserts it succeeded; its stdout.
fn finished(what: &str, station: Running) -> String {
    let o = station.wait(Duration::from_secs(300));
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn four_stations_at_once_on_one_registry(backend: Backend) {
    let Some(env) = Env::with_ca_on(backend) else {
        return;
    };
    let csv = inventory_csv(&env, IMPORT);
    let link = env.path("dev/line");
    std::fs::create_dir_all(env.path("dev")).unwrap();
    let mut sim = Sim::start(
        &env,
        &[
            "--count",
            &PORTS.to_string(),
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "ST",
        ],
        PORTS,
    );
    let glob = format!("{}*", link.display());
    let (count, limit) = (BATCH.to_string(), PORTS.to_string());
    // The four start while another connection holds the write lock, so they are all
    // running, queued on it, when it is let go, and then write side by side.
    let lock = env.hold_write_lock();
    let stations = vec![
        (
            "batch A",
            spawn(
                &env,
                "line-1",
                &[
                    "identity",
                    "batch",
                    "--count",
                    &count,
                    "--serial-pattern",
                    "A-{seq:05}",
                    "--bundle",
                    "a.jsonl",
                    "--passphrase-file",
                    env.pass(),
                ],
            ),
        ),
        (
            "batch B",
            spawn(
                &env,
                "line-2",
                &[
                    "identity",
                    "batch",
                    "--count",
                    &count,
                    "--serial-pattern",
                    "B-{seq:05}",
                    "--bundle",
                    "b.jsonl",
                    "--passphrase-file",
                    env.pass(),
                ],
            ),
        ),
        (
            "provision",
            spawn(
                &env,
                "line-3",
                &[
                    "--json",
                    "provision",
                    "--passphrase-file",
                    env.pass(),
                    "--baud",
                    SIM_BAUD,
                    "--timeout",
                    "5",
                    "--ports",
                    &glob,
                    "--watch",
                    "--limit",
                    &limit,
                ],
            ),
        ),
        (
            "import",
            spawn(&env, "line-4", &["inventory", "import", &csv]),
        ),
    ];
    // Time for all four to reach the lock (not an assertion: a slower one only
    // starts later).
    std::thread::sleep(Duration::from_millis(1500));
    lock.commit_with("SELECT 1;");
    let mut outputs = Vec::new();
    for (what, child) in stations {
        outputs.push((what, finished(what, child)));
    }
    sim.stop();

    // The station's table: eight PASS, each a device of the simulator.
    let prov: Vec<serde_json::Value> = outputs[2]
        .1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(prov.len(), PORTS, "{prov:?}");
    assert!(prov.iter().all(|r| r["result"] == "PASS"), "{prov:?}");

    // Devices per source: none lost, none doubled.
    assert_eq!(
        q(
            &env,
            "SELECT substr(serial, 1, 2), count(*), count(DISTINCT serial) \
             FROM devices GROUP BY 1 ORDER BY 1"
        ),
        format!("A-|{BATCH}|{BATCH}\nB-|{BATCH}|{BATCH}\nIM|{IMPORT}|{IMPORT}\nST|{PORTS}|{PORTS}")
    );
    assert_eq!(
        q(&env, "SELECT count(*), count(DISTINCT serial) FROM devices"),
        format!("{n}|{n}", n = 2 * BATCH + IMPORT + PORTS)
    );
    // One certificate per issued or provisioned device, none for the imported ones;
    // every certificate serial unique.
    let issued = 2 * BATCH + PORTS;
    assert_eq!(
        q(
            &env,
            "SELECT count(*), count(DISTINCT serial_hex), count(DISTINCT device_id) FROM certificates"
        ),
        format!("{issued}|{issued}|{issued}")
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices d WHERE \
             (SELECT count(*) FROM certificates c WHERE c.device_id = d.id) \
             <> CASE WHEN d.serial LIKE 'IMP-%' THEN 0 ELSE 1 END"
        ),
        "0"
    );
    assert_eq!(
        q(
            &env,
            "SELECT status, count(*) FROM devices WHERE serial LIKE 'ST-%' GROUP BY status"
        ),
        format!("provisioned|{PORTS}")
    );
    // Each source's events, recorded under its station, no more and no fewer.
    assert_eq!(
        q(
            &env,
            "SELECT station, kind, count(*) FROM events GROUP BY station, kind ORDER BY station, kind"
        ),
        [
            format!("line-1|identity.issued|{BATCH}"),
            format!("line-2|identity.issued|{BATCH}"),
            format!("line-3|device.registered|{PORTS}"),
            format!("line-3|device.state|{PORTS}"),
            format!("line-3|firmware.reported|{PORTS}"),
            format!("line-3|provision.passed|{PORTS}"),
            format!("line-3|provision.started|{PORTS}"),
            format!("line-4|device.created|{IMPORT}"),
            "test-station|ca.created|1".to_string(),
            "test-station|home.initialised|1".to_string(),
        ]
        .join("\n")
    );
    // Every key reached its bundle: a header line and one line per device.
    for (bundle, prefix) in [("a.jsonl", "A-"), ("b.jsonl", "B-")] {
        let text = std::fs::read_to_string(env.path(bundle)).unwrap();
        let serials: std::collections::BTreeSet<String> = text
            .lines()
            .skip(1)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["serial"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(text.lines().count(), BATCH + 1, "{bundle}");
        assert_eq!(serials.len(), BATCH, "{bundle}");
        assert!(serials.iter().all(|s| s.starts_with(prefix)), "{bundle}");
    }

    // How much the stations interleaved (printed, not asserted: it depends on timing).
    eprintln!(
        "{backend:?}: the chain changes station {} times",
        q(
            &env,
            "SELECT count(*) FROM events e JOIN events p ON p.id = e.id - 1 WHERE p.station <> e.station"
        )
    );
    // One chain, every event on it, intact; the audit finds nothing.
    let events: u64 = q(&env, "SELECT count(*) FROM events").parse().unwrap();
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], events);
    let (code, a) = audit(&env, &[]);
    assert_eq!(code, 0, "{a:#}");
    assert_eq!(a["findings"], serde_json::json!([]), "{a:#}");
}

#[test]
fn four_stations_at_once_on_one_sqlite_registry() {
    four_stations_at_once_on_one_registry(Backend::Sqlite);
}

#[test]
fn four_stations_at_once_on_one_postgresql_registry() {
    four_stations_at_once_on_one_registry(Backend::Postgres);
}

/// The harness the suite runs on both backends: `sql` prints the rows of every
/// statement alike, `dump` changes only when the data does, `hold_write_lock` holds
/// what cradle's writers take and `commit_with` lets it go with its change.
fn the_harness_reads_dumps_and_locks_alike(backend: Backend) {
    let Some(env) = Env::init_on(backend) else {
        return;
    };
    assert_eq!(env.backend(), backend);
    assert_eq!(
        env.sql("SELECT kind, station FROM events; SELECT count(*) FROM events;"),
        "home.initialised|test-station\n1\n"
    );
    // NULL prints as nothing; a write prints nothing (psql's command tags are off).
    let insert = |serial: &str| {
        format!(
            "INSERT INTO devices (serial, status, created_at, updated_at) \
             VALUES ('{serial}', 'registered', '2026-12-01T10:00:00Z', '2026-12-01T10:00:00Z');"
        )
    };
    assert_eq!(env.sql(&format!("{}{}", insert("H-1"), insert("H-2"))), "");
    assert_eq!(
        q(
            &env,
            "SELECT serial, site, status FROM devices ORDER BY serial"
        ),
        "H-1||registered\nH-2||registered"
    );

    let before = env.dump();
    assert!(before.contains("H-2"), "{before}");
    // Rewriting a row with its own values and rolling an insert back are no change
    // (on PostgreSQL the first moves the row behind H-2 in the heap and the second
    // advances the id sequence; the dump follows neither).
    env.sql(&format!(
        "UPDATE devices SET serial = serial WHERE serial = 'H-1'; BEGIN; {} ROLLBACK;",
        insert("H-3")
    ));
    assert_eq!(env.dump(), before);
    env.sql("UPDATE devices SET site = 'berlin' WHERE serial = 'H-1';");
    let after = env.dump();
    assert_ne!(after, before);
    assert!(after.contains("berlin"), "{after}");

    // While the lock is held, no other writer gets it; its change lands with COMMIT.
    let try_lock = |env: &Env| match env.backend() {
        Backend::Postgres => {
            q(
                env,
                &format!(
                    "SELECT pg_try_advisory_xact_lock({})",
                    cradle::store::schema_pg::CHAIN_LOCK
                ),
            ) == "t"
        }
        Backend::Sqlite => std::process::Command::new("sqlite3")
            .arg(env.registry())
            .arg("BEGIN IMMEDIATE; ROLLBACK;")
            .output()
            .unwrap()
            .status
            .success(),
    };
    assert!(try_lock(&env));
    let lock = env.hold_write_lock();
    assert!(!try_lock(&env), "the write lock is not held");
    let sites = "SELECT serial, site FROM devices ORDER BY serial";
    assert_eq!(q(&env, sites), "H-1|berlin\nH-2|");
    lock.commit_with("UPDATE devices SET site = 'Zagreb' WHERE serial = 'H-2';");
    assert!(try_lock(&env));
    assert_eq!(q(&env, sites), "H-1|berlin\nH-2|Zagreb");
}

#[test]
fn the_harness_reads_dumps_and_locks_a_sqlite_registry() {
    the_harness_reads_dumps_and_locks_alike(Backend::Sqlite);
}

#[test]
fn the_harness_reads_dumps_and_locks_a_postgresql_registry() {
    the_harness_reads_dumps_and_locks_alike(Backend::Postgres);
}
