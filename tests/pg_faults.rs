//! A PostgreSQL registry that goes away under a station (issue 14): the server
//! stopped mid-batch and mid-provision leaves nothing half-recorded (every device row
//! with its certificate and its events, the chain intact), the station says so in one
//! line with exit 4, and the same command finishes the job once the server is back.
//! Each test stops a private throw-away cluster of its own (`common::pg::Cluster`),
//! never the shared one other tests run on. Skips (printing why) without initdb,
//! except under CI=true.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::pg::{Cluster, PgDb};
use common::{audit, q, Env, Running, Sim};

/// Polls `done` while `station` runs, until it holds (120 s at most: a guard against
/// a hang, not a timed assertion); gives the station back. A station that ends first
/// fails the test with its output: the server was to stop under it.
fn wait_for(mut station: Running, what: &str, mut done: impl FnMut() -> bool) -> Running {
    let until = Instant::now() + Duration::from_secs(120);
    while !done() {
        if station.ended() {
            let name = station.what.clone();
            let o = station.wait(LIMIT);
            panic!(
                "{name} ended before {what} ({:?}):\nstdout: {}\nstderr: {}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(Instant::now() < until, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    station
}

/// How long a station may take before the test stops it and fails (a hang guard).
const LIMIT: Duration = Duration::from_secs(300);

/// The rows of `cradle --json provision` (one JSON array).
fn provision_rows(stdout: &[u8]) -> Vec<serde_json::Value> {
    serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)))
}

/// A home with a CA on a fresh database of `cluster`.
fn home_on(cluster: &Cluster) -> Env {
    Env::init_on_db(PgDb::on(cluster)).and_ca()
}

/// The one line a station prints when its registry went away: exit 4, naming it.
fn assert_one_registry_line(what: &str, o: &std::process::Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{what}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line: {err}");
    assert!(lines[0].contains("registry"), "{what}: {err}");
}

/// Today's commands (`init`, `log head|verify`) on a cluster that stops and comes back:
/// one line, exit 4, while it is down; the same chain once it is up. Also proves the
/// private cluster stops and restarts on its port and that the shared one is untouched.
#[test]
fn a_stopped_server_is_one_line_exit_4_and_the_registry_is_whole_when_it_is_back() {
    let Some(cluster) = Cluster::start("a_stopped_server") else {
        return;
    };
    let env = Env::init_on_db(PgDb::on(&cluster));
    let head = env.json(&["log", "head"]);
    cluster.stop();
    let o = env.run(&["log", "head"]);
    assert_one_registry_line("log head", &o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach registry"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    cluster.resume();
    assert_eq!(env.json(&["log", "head"]), head);
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    // The shared server never stopped.
    if let Some(shared) = PgDb::new("a_stopped_server (shared)") {
        assert_eq!(shared.sql("SELECT 1"), "1");
    }
}

/// Devices of the interrupted batch: enough chunks (1024) that the server stops mid-way.
const DEVICES: usize = 12000;

fn batch_args(env: &Env) -> Vec<String> {
    [
        "identity",
        "batch",
        "--count",
        &DEVICES.to_string(),
        "--serial-pattern",
        "F-{seq:05}",
        "--bundle",
        "f.jsonl",
        "--passphrase-file",
        env.pass(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// (serial, fingerprint) of every whole line of a bundle after its header.
fn bundle(env: &Env) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(env.path("f.jsonl")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["serial"].as_str().unwrap().to_string(),
                v["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (serial, fingerprint) of every active certificate, sorted.
fn active(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = q(
        env,
        "SELECT d.serial, c.fingerprint FROM devices d JOIN certificates c ON c.device_id = d.id \
         WHERE c.status = 'active' ORDER BY d.serial",
    )
    .lines()
    .map(|l| {
        let (s, f) = l.split_once('|').unwrap();
        (s.to_string(), f.to_string())
    })
    .collect();
    v.sort();
    v
}

/// Nothing half-recorded: every device has exactly one active certificate and its
/// `identity.issued` event, and the chain verifies.
fn assert_batch_devices_whole(env: &Env) {
    assert_eq!(
        q(
            env,
            "SELECT count(*) FROM devices d WHERE \
             (SELECT count(*) FROM certificates c WHERE c.device_id = d.id AND c.status = 'active') <> 1 \
             OR NOT EXISTS (SELECT 1 FROM events e WHERE e.device_id = d.id AND e.kind = 'identity.issued')"
        ),
        "0"
    );
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn the_server_stopped_mid_batch_leaves_nothing_half_recorded_and_a_rerun_finishes() {
    let Some(cluster) = Cluster::start("the_server_stopped_mid_batch") else {
        return;
    };
    let env = home_on(&cluster);
    let args = batch_args(&env);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let batch = Running::new(
        "identity batch",
        env.cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Once the first chunk is committed, the server goes away under the batch.
    let batch = wait_for(batch, "a first chunk recorded", || {
        q(&env, "SELECT count(*) FROM devices") != "0"
    });
    cluster.stop();
    let o = batch.wait(LIMIT);
    assert_one_registry_line("identity batch", &o);

    cluster.resume();
    let recorded: usize = q(&env, "SELECT count(*) FROM devices").parse().unwrap();
    assert!(
        recorded > 0 && recorded < DEVICES,
        "stopped mid-batch: {recorded} of {DEVICES} recorded"
    );
    assert_batch_devices_whole(&env);
    // No key left the process for a certificate the registry does not hold.
    let recorded_certs = active(&env);
    for line in bundle(&env) {
        assert!(
            recorded_certs.binary_search(&line).is_ok(),
            "{line:?} is in the bundle, not in the registry"
        );
    }

    // The same command finishes the job: every device, its one certificate in the bundle.
    env.ok(&args);
    assert_eq!(
        q(&env, "SELECT count(*), count(DISTINCT serial) FROM devices"),
        format!("{DEVICES}|{DEVICES}")
    );
    assert_batch_devices_whole(&env);
    let mut delivered = bundle(&env);
    delivered.sort();
    assert_eq!(delivered, active(&env), "bundle and registry agree");
    let (code, a) = audit(&env, &[]);
    assert_eq!(code, 0, "{a:#}");
}

#[test]
fn the_server_stopped_mid_provision_leaves_nothing_half_recorded_and_a_rerun_finishes() {
    const PORTS: usize = 8;
    let Some(cluster) = Cluster::start("the_server_stopped_mid_provision") else {
        return;
    };
    let env = home_on(&cluster);
    let link = env.path("dev/p");
    std::fs::create_dir_all(env.path("dev")).unwrap();
    // A slow line (about 5 s a device) so the server stops while identities are
    // being written.
    let baud = "9600";
    let _sim = Sim::start_at(
        &env,
        baud,
        &[
            "--strict",
            "--count",
            &PORTS.to_string(),
            "--link",
            link.to_str().unwrap(),
            "--hardware-id",
            "FP",
        ],
        PORTS,
    );
    let glob = format!("{}*", link.display());
    let provision = [
        "--json",
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        baud,
        "--timeout",
        "10",
        "--ports",
        &glob,
    ];
    let station = Running::new(
        "provision",
        env.cmd(&provision)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let station = wait_for(station, "a device being provisioned", || {
        q(
            &env,
            "SELECT count(*) FROM events WHERE kind = 'provision.started'",
        ) != "0"
    });
    cluster.stop();
    let o = station.wait(LIMIT);
    // A station reports per port (README: a clear PASS/FAIL per port): exit 1 as for
    // any failed device, and every port that did not PASS says, in its one FAIL line
    // and its row's exit code 4, that the registry went away.
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let rows = provision_rows(&o.stdout);
    let failed: Vec<&serde_json::Value> = rows.iter().filter(|r| r["result"] != "PASS").collect();
    assert!(
        !failed.is_empty(),
        "stopped mid-provision, yet all passed: {rows:?}"
    );
    for r in &failed {
        assert_eq!(r["exit_code"], 4, "{r}");
        assert!(r["error"].as_str().unwrap().contains("registry"), "{r}");
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), failed.len(), "one line per failed port: {err}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("FAIL") && l.contains("registry")),
        "{err}"
    );

    cluster.resume();
    // Nothing half-recorded: a device is provisioned exactly when it has its active
    // certificate and its provision.passed event; the chain verifies.
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices d WHERE \
             (d.status = 'provisioned') <> EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id AND c.status = 'active') \
             OR (d.status = 'provisioned') <> EXISTS (SELECT 1 FROM events e WHERE e.device_id = d.id AND e.kind = 'provision.passed')"
        ),
        "0"
    );
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");

    // The same command, the server back: every device PASSes.
    let o = env.run(&provision);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = provision_rows(&o.stdout);
    assert_eq!(rows.len(), PORTS, "{out}");
    assert!(rows.iter().all(|r| r["result"] == "PASS"), "{out}");
    assert_eq!(
        q(&env, "SELECT status, count(*) FROM devices GROUP BY status"),
        format!("provisioned|{PORTS}")
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices d WHERE \
             (SELECT count(*) FROM certificates c WHERE c.device_id = d.id AND c.status = 'active') <> 1"
        ),
        "0"
    );
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let (code, a) = audit(&env, &[]);
    assert_eq!(code, 0, "{a:#}");
}

/// The station commands say the same one line as `init` and `log head` do
/// (tests/postgres.rs) for a wrong password, an unreachable host and a newer schema,
/// and record nothing.
#[test]
fn station_commands_on_a_wrong_password_an_unreachable_host_or_a_newer_schema_say_one_line() {
    let Some(env) = Env::with_ca_on(common::Backend::Postgres) else {
        return;
    };
    std::fs::write(env.path("in.csv"), "serial,model\nW-1,m\n").unwrap();
    let commands: [&[&str]; 2] = [
        &[
            "identity",
            "batch",
            "--count",
            "3",
            "--serial-pattern",
            "W-{seq}",
            "--bundle",
            "w.jsonl",
            "--passphrase-file",
            env.pass(),
        ],
        &["inventory", "import", "in.csv"],
    ];
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("postgresql://cradle@127.0.0.1:{free_port}/reg");
    for args in commands {
        let o = env
            .cmd(args)
            .env("PGPASSWORD", "not-the-password")
            .output()
            .unwrap();
        assert_one_registry_line(&format!("{args:?}, wrong password"), &o);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");

        let mut a = vec!["--registry", nowhere.as_str()];
        a.extend_from_slice(args);
        let o = env.run(&a);
        assert_one_registry_line(&format!("{args:?}, unreachable"), &o);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("cannot reach registry"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let version = q(&env, "SELECT version FROM cradle_schema");
    env.sql("UPDATE cradle_schema SET version = 999;");
    for args in commands {
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("schema version 999 is newer than this cradle"),
            "{err}"
        );
    }
    env.sql(&format!("UPDATE cradle_schema SET version = {version};"));
    assert_eq!(q(&env, "SELECT count(*) FROM devices"), "0");
    assert!(!env.path("w.jsonl").exists());
}
