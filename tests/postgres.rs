//! The registry on a real PostgreSQL server (issue 14, first slice): init by URL,
//! schema and versions as on SQLite, the chain serialised across stations, and one
//! line with exit 4 for every way of not reaching the server. Skips (printing why)
//! without CRADLE_TEST_PG_URL, except under CI=true.

mod common;

use common::pg::PgDb;
use common::Env;

/// A home initialised on its own PostgreSQL database.
fn pg_home(test: &str) -> Option<(Env, PgDb)> {
    let db = PgDb::new(test)?;
    let e = Env::bare();
    e.ok(&[
        "init",
        "--registry",
        &db.url,
        "--org",
        "ACME",
        "--station",
        "line-1",
    ]);
    Some((e, db))
}

#[test]
fn init_on_postgresql_records_the_url_and_starts_a_verifiable_keyed_chain() {
    let Some((e, db)) = pg_home("init_on_postgresql") else {
        return;
    };
    let config = std::fs::read_to_string(e.home.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("registry = \"{}\"", db.url)),
        "{config}"
    );
    // No SQLite file beside it: the registry is on the server.
    assert!(!e.registry().exists());
    let key = e.home.join("log.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let head = e.json(&["log", "head"]);
    assert_eq!(head["id"], 1);
    assert_eq!(head["keyed"], true);
    assert_eq!(
        db.sql("SELECT kind || '|' || station || '|' || hash FROM events"),
        format!("home.initialised|line-1|{}", head["hash"].as_str().unwrap())
    );
    let v = e.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], 1);

    // The same schema version as a SQLite registry made by this binary.
    let lite = Env::bare();
    lite.ok(&["init", "--org", "ACME", "--station", "test-station"]);
    let lite_version = lite.sql("PRAGMA user_version");
    assert_eq!(
        db.sql("SELECT version FROM cradle_schema"),
        lite_version.trim()
    );
    // Typed for the server: timestamps, bytes, JSON.
    let types = db.sql(
        "SELECT table_name || '.' || column_name || '=' || data_type FROM information_schema.columns
         WHERE (table_name, column_name) IN (('devices','created_at'),('devices','attributes'),('cas','der'),('devices','mark'))
         ORDER BY 1",
    );
    assert_eq!(
        types,
        "cas.der=bytea\ndevices.attributes=jsonb\ndevices.created_at=timestamp with time zone\ndevices.mark=bytea"
    );
}

#[test]
fn an_edit_on_the_server_breaks_the_chain_and_log_verify_names_it() {
    let Some((e, db)) = pg_home("an_edit_on_the_server") else {
        return;
    };
    db.sql("UPDATE events SET details = '{\"org\":\"EVIL\",\"device_marks\":true}' WHERE id = 1");
    let o = e.run(&["log", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("BROKEN at event 1 (altered"), "{out}");
}

#[test]
fn a_url_with_a_password_is_refused_without_echoing_it_and_nothing_is_made() {
    let e = Env::bare();
    for url in [
        "postgresql://cradle:hunter2@127.0.0.1:5432/reg",
        "postgres://cradle@127.0.0.1/reg?password=hunter2",
    ] {
        let err = e.fails(&["init", "--registry", url], 2);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("holds a password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!e.home.exists());
    }
    // Through the environment too.
    let err = e
        .cmd(&["log", "head"])
        .env(
            "CRADLE_REGISTRY",
            "postgresql://cradle:hunter2@127.0.0.1/reg",
        )
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&err.stderr).contains("hunter2"));
}

#[test]
fn unreachable_silent_and_wrong_password_servers_are_one_line_exit_4() {
    let e = Env::bare();
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = e.fails(
        &[
            "init",
            "--registry",
            &format!("postgresql://cradle@127.0.0.1:{port}/reg"),
        ],
        4,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach registry"), "{err}");
    assert!(!e.home.exists(), "a failed init leaves no home");

    // A server that accepts and never answers: bounded by --registry-timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgresql://cradle@127.0.0.1:{}/reg",
        silent.local_addr().unwrap().port()
    );
    let t = std::time::Instant::now();
    let err = e.fails(&["init", "--registry", &url, "--registry-timeout", "1"], 4);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        t.elapsed()
    );
    assert!(
        err.contains("no answer from the server within 1 s"),
        "{err}"
    );
    drop(silent);

    let Some(db) = PgDb::new("unreachable_silent_and_wrong_password") else {
        return;
    };
    let o = e
        .cmd(&["init", "--registry", &db.url])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(!e.home.exists());
    // Nothing was written on the server either.
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
}

#[test]
fn a_newer_schema_and_a_foreign_database_are_refused() {
    let Some((e, db)) = pg_home("a_newer_schema") else {
        return;
    };
    db.sql("UPDATE cradle_schema SET version = 999");
    let err = e.fails(&["log", "head"], 4);
    assert!(
        err.contains("schema version 999 is newer than this cradle"),
        "{err}"
    );

    let Some(other) = PgDb::new("a_foreign_database") else {
        return;
    };
    other.sql("CREATE TABLE customers (id int)");
    let e2 = Env::bare();
    let err = e2.fails(&["init", "--registry", &other.url], 7);
    assert!(err.contains("holds other tables"), "{err}");
    assert!(!e2.home.exists());
    // And a second init of a cradle database is refused too.
    db.sql("UPDATE cradle_schema SET version = 10");
    let e3 = Env::bare();
    let err = e3.fails(&["init", "--registry", &db.url], 7);
    assert!(err.contains("already holds a cradle registry"), "{err}");
}

#[test]
fn a_registry_flag_that_is_not_a_url_is_a_usage_error() {
    let Some((e, _db)) = pg_home("registry_flag_not_url") else {
        return;
    };
    let err = e.fails(&["--registry", "/tmp/other.db", "log", "head"], 2);
    assert!(err.contains("takes a postgresql:// URL"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!e.registry().exists());
}

/// Two stations opening a registry one migration behind at once: one migrates, the
/// other waits on the advisory lock and finds nothing left to do.
#[test]
fn two_stations_migrating_at_once_migrate_once() {
    let Some((e, db)) = pg_home("two_stations_migrating") else {
        return;
    };
    let version: i64 = db.sql("SELECT version FROM cradle_schema").parse().unwrap();
    // Back to the schema before the newest migration (11: the device-mark trigger and
    // the SQLite functions).
    assert_eq!(
        version, 11,
        "update this test's rollback for the newest migration"
    );
    db.sql(
        "DROP TRIGGER cradle_device_touched ON devices; DROP FUNCTION cradle_device_touched();
         DROP AGGREGATE group_concat(text, text); DROP FUNCTION cradle_concat_step(text, text, text);
         DROP FUNCTION json_valid(text); DROP FUNCTION json_extract(text, text);
         DROP FUNCTION json_extract(jsonb, text); DROP FUNCTION strftime(text, bigint, text);
         DROP FUNCTION substr(timestamptz, integer, integer); DROP FUNCTION hex(bytea); UPDATE cradle_schema SET version = 10",
    );
    let kids: Vec<_> = (0..6)
        .map(|_| {
            e.cmd(&["log", "head"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(db.sql("SELECT version FROM cradle_schema"), "11");
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'cradle_device_touched'"),
        "1"
    );
}

/// N stations appending at once: the advisory chain lock keeps one line.
#[test]
fn concurrent_appends_from_four_stations_keep_one_verifiable_chain() {
    use cradle::model::{Actor, EventKind};
    use cradle::store::pg::PgStore;
    use cradle::store::pgurl::PgTarget;
    let Some((e, db)) = pg_home("concurrent_appends") else {
        return;
    };
    let target = PgTarget::parse(&db.url).unwrap();
    let key = e.home.join("log.key");
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let (target, key) = (target.clone(), key.clone());
            std::thread::spawn(move || {
                let mut s =
                    PgStore::open(&target, std::time::Duration::from_secs(10), &key).unwrap();
                let actor = Actor {
                    operator: "tester".into(),
                    station: format!("line-{n}"),
                };
                for i in 0..25 {
                    s.event(
                        EventKind::HomeInitialised,
                        None,
                        &actor,
                        serde_json::json!({ "n": i }),
                        "2026-12-04T00:00:00Z",
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        db.sql("SELECT count(*), count(DISTINCT id), max(id) FROM events"),
        "101|101|101"
    );
    let v = e.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], 101);
}

/// `status` runs the same queries on both backends: the same rows give the same
/// summary (rows inserted behind cradle's back, as nothing writes devices on
/// PostgreSQL yet).
#[test]
fn status_on_postgresql_matches_status_on_sqlite_for_the_same_rows() {
    let Some((e, db)) = pg_home("status_on_postgresql") else {
        return;
    };
    let lite = Env::bare();
    lite.ok(&["init", "--org", "ACME", "--station", "test-station"]);
    let rows = [
        ("A-1", "registered", Some("berlin"), Some("b1")),
        ("A-2", "provisioned", Some("berlin"), None),
        ("A-3", "deployed", Some("Zagreb"), Some("b1")),
        ("A-4", "retired", None, Some("b2")),
        ("A-5", "deployed", Some("berlin"), Some("b2")),
    ];
    let lit = |v: Option<&str>| v.map(|s| format!("'{s}'")).unwrap_or("NULL".into());
    for (serial, status, site, batch) in rows {
        let values = format!(
            "('{serial}', '{status}', {}, {}, '2026-12-01T10:00:00Z', '2026-12-01T10:00:00Z')",
            lit(site),
            lit(batch)
        );
        let insert =
            format!("INSERT INTO devices (serial, status, site, batch, created_at, updated_at) VALUES {values}");
        db.sql(&insert);
        lite.sql(&insert);
    }
    let on_pg = e.json(&["status"]);
    assert_eq!(on_pg, lite.json(&["status"]));
    assert_eq!(on_pg["devices"]["total"], 5);
    assert_eq!(on_pg["devices"]["deployed"], 2);
    // Byte order, the unnamed group last: "Zagreb" before "berlin", then (none).
    let sites: Vec<_> = on_pg["by_site"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].clone())
        .collect();
    assert_eq!(
        sites,
        vec![
            serde_json::json!("Zagreb"),
            serde_json::json!("berlin"),
            serde_json::Value::Null
        ]
    );
    assert_eq!(e.ok(&["status"]), lite.ok(&["status"]));
}

#[test]
fn log_export_on_postgresql_streams_the_chain_with_the_same_filters_and_errors() {
    let Some((e, db)) = pg_home("log_export_on_postgresql") else {
        return;
    };
    let head = e.json(&["log", "head"]);
    let out = e.ok(&["log", "export"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "home.initialised");
    assert_eq!(lines[0]["hash"], head["hash"]);
    assert_eq!(lines[0]["details"]["org"], "ACME");
    // Filters as on SQLite: nothing after a future date; a device that does not exist
    // is the same one line and exit code on both backends.
    assert_eq!(e.ok(&["log", "export", "--since", "2100-01-01"]), "");
    let err = e.fails(&["log", "export", "--device", "NOPE"], 3);
    let lite = Env::bare();
    lite.ok(&["init", "--org", "ACME", "--station", "test-station"]);
    assert_eq!(err, lite.fails(&["log", "export", "--device", "NOPE"], 3));
    // A row of a device, inserted behind cradle's back, is exported under its serial.
    db.sql(
        "INSERT INTO devices (id, serial, created_at, updated_at) VALUES (7, 'D-7', now(), now())",
    );
    db.sql(
        "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
         VALUES (2, 7, 'device.registered', 'x', 'y', '2026-12-04T00:00:00Z', '{}', 'p', 'h')",
    );
    let csv = e.ok(&[
        "log", "export", "--device", "D-7", "--format", "csv", "-o", "ev.csv",
    ]);
    assert_eq!(csv, "");
    let text = std::fs::read_to_string(e.path("ev.csv")).unwrap();
    assert_eq!(
        text,
        "id,at,kind,device,actor,station,details,prev_hash,hash\n2,2026-12-04T00:00:00Z,device.registered,D-7,x,y,{},p,h\n"
    );
}

/// `?host=DIR` reaches the server over its Unix socket; `CRADLE_REGISTRY` points a
/// command of a SQLite home at a PostgreSQL registry without touching the file.
#[test]
fn a_socket_url_and_the_environment_override_reach_the_same_registry() {
    let Some((e, db)) = pg_home("a_socket_url") else {
        return;
    };
    // .ci/pg-cluster.sh puts the socket beside the password file.
    let Ok(passfile) = std::env::var("PGPASSFILE") else {
        eprintln!("skipped a_socket_url: no PGPASSFILE");
        return;
    };
    let dir = std::path::Path::new(&passfile)
        .parent()
        .unwrap()
        .to_path_buf();
    let line = std::fs::read_to_string(&passfile).unwrap();
    let fields: Vec<&str> = line.trim().splitn(5, ':').collect();
    let (port, password) = (fields[1], fields[4]);
    let url = format!(
        "postgresql://cradle@/{}?host={}&port={port}",
        db.name,
        dir.display()
    );
    let lite = Env::bare();
    lite.ok(&["init", "--org", "ACME", "--station", "test-station"]);
    let before = lite.dump();
    let o = lite
        .cmd(&["--json", "log", "head"])
        .env("CRADLE_REGISTRY", &url)
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let head: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The PostgreSQL registry's head, not the SQLite file's.
    assert_eq!(head["hash"], e.json(&["log", "head"])["hash"]);
    assert_ne!(head["hash"], lite.json(&["log", "head"])["hash"]);
    assert_eq!(lite.dump(), before);
}

/// Readers during appends: `log verify` reads the events and the recorded head in one
/// snapshot, so stations appending meanwhile never make it report a break.
#[test]
fn log_verify_during_concurrent_appends_never_raises_a_false_alarm() {
    use cradle::model::{Actor, EventKind};
    use cradle::store::pg::PgStore;
    use cradle::store::pgurl::PgTarget;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some((e, db)) = pg_home("log_verify_during_concurrent_appends") else {
        return;
    };
    let target = PgTarget::parse(&db.url).unwrap();
    let key = e.home.join("log.key");
    let timeout = std::time::Duration::from_secs(10);
    let done = AtomicBool::new(false);
    let checks = std::thread::scope(|s| {
        for n in 0..2 {
            let (target, key, done) = (&target, &key, &done);
            s.spawn(move || {
                let mut st = PgStore::open(target, timeout, key).unwrap();
                let actor = Actor {
                    operator: "tester".into(),
                    station: format!("line-{n}"),
                };
                for i in 0..300 {
                    st.event(
                        EventKind::HomeInitialised,
                        None,
                        &actor,
                        serde_json::json!({ "i": i }),
                        "2026-12-04T00:00:00Z",
                    )
                    .unwrap();
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        let mut reader = PgStore::open(&target, timeout, &key).unwrap();
        let mut checks = 0;
        while !done.load(Ordering::SeqCst) || checks < 5 {
            let r = reader.verify_chain().unwrap();
            assert!(
                r.first_break.is_none(),
                "false alarm after {checks} checks: {:?}",
                r.first_break
            );
            checks += 1;
        }
        checks
    });
    assert!(checks >= 5);
    let v = e.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], 601);
}

#[test]
fn help_never_prints_the_registry_url_from_the_environment() {
    let e = Env::bare();
    let o = e
        .cmd(&["--help"])
        .env("CRADLE_REGISTRY", "postgresql://u:hunter2@db/reg")
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--registry <URL>"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
