//! `cradle registry copy` and `init --join` (issue 14), through the real binary, a real
//! SQLite file and a real PostgreSQL server (CRADLE_TEST_PG_URL; the PostgreSQL tests
//! skip without it, except under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pg::PgDb;
use common::Env;

/// A SQLite home (whatever CRADLE_TEST_BACKEND says: the copy's source is the file)
/// with a CA, devices, certificates, a revocation and a decommission (CRLs, a wipe),
/// a file renewal and asset/attribute columns.
fn lite_fleet() -> Env {
    let e = Env::bare();
    e.ok(&["init", "--org", "ACME", "--station", "line-1"]);
    e.ok(&[
        "ca",
        "init",
        "--name",
        "Test",
        "--passphrase-file",
        e.pass(),
    ]);
    let bundle = e.path("bundle.jsonl");
    e.ok(&[
        "identity",
        "batch",
        "--count",
        "5",
        "--serial-pattern",
        "D-{seq:04}",
        "--bundle",
        bundle.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    e.ok(&[
        "revoke",
        "D-0001",
        "--reason",
        "key-compromise",
        "--passphrase-file",
        e.pass(),
    ]);
    for serial in ["D-0001", "D-0002"] {
        e.ok(&[
            "decommission",
            serial,
            "--wipe-method",
            "purge",
            "--wipe-tool",
            "nwipe",
            "--verified-by",
            "QA Lead",
            "--passphrase-file",
            e.pass(),
        ]);
    }
    e.ok(&[
        "renew",
        "D-0003",
        "--out",
        e.path("renewed").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    let csv = e.path("assets.csv");
    std::fs::write(
        &csv,
        "serial,model,site,purchase_date,cost,currency,attr.zeta,attr.alpha\n\
         A-1,m1,berlin,2024-01-15,0129.90,EUR,1,b\n",
    )
    .unwrap();
    e.ok(&["inventory", "import", csv.to_str().unwrap()]);
    e
}

fn sqlite(db: &Path, sql: &str) -> String {
    let o = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Every row of every table of a SQLite registry, as text (blobs as hex), in id order.
fn rows_of(db: &Path) -> String {
    let tables = sqlite(
        db,
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
    );
    let mut out = String::new();
    for t in tables.lines() {
        let cols = sqlite(db, &format!("SELECT name FROM pragma_table_info('{t}')"));
        let list: Vec<String> = cols.lines().map(|c| format!("quote(\"{c}\")")).collect();
        out.push_str(&format!("== {t}\n"));
        out.push_str(&sqlite(
            db,
            &format!("SELECT {} FROM \"{t}\" ORDER BY 1, 2", list.join(", ")),
        ));
    }
    out
}

/// A second home over the registry file at `dir/registry.db`: the source home's
/// config, CA folder and templates (a copied registry is used with the same CA).
fn home_for_copy(src: &Env, dir: &Path) {
    std::fs::copy(src.home.join("config.toml"), dir.join("config.toml")).unwrap();
    for d in ["ca", "templates"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(src.home.join(d))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn audit_json(e: &Env, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut a: Vec<&str> = extra.to_vec();
    a.extend(["--json", "audit"]);
    let o = e.run(&a);
    (
        o.status.code().unwrap(),
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

fn tables_of(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["rows"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn sqlite_to_postgresql_to_sqlite_keeps_every_row_and_verifies_on_each_copy() {
    let Some(db) = PgDb::new("registry_copy_round_trip") else {
        return;
    };
    let e = lite_fleet();
    let (code, source_audit) = audit_json(&e, &[]);
    assert_eq!(code, 0, "the source audits clean: {source_audit}");
    let source_head = e.json(&["log", "head"]);

    // SQLite -> PostgreSQL.
    let to_pg = e.json(&["registry", "copy", "--to", &db.url]);
    let tables = tables_of(&to_pg);
    let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
    // Every table of the source, parents before children.
    for t in [
        "cas",
        "certificates",
        "crls",
        "decommissions",
        "devices",
        "events",
        "meta",
        "nonces",
        "renewals",
        "wipes",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
    let at = |t: &str| names.iter().position(|n| *n == t).unwrap();
    assert!(at("devices") < at("certificates") && at("certificates") < at("renewals"));
    assert!(at("cas") < at("crls") && at("devices") < at("events"));
    let count = |t: &str| tables.iter().find(|(n, _)| n == t).unwrap().1;
    assert_eq!(count("devices"), 6);
    assert!(count("renewals") == 1 && count("wipes") == 2 && count("crls") >= 2);
    assert_eq!(to_pg["head_hash"], source_head["hash"]);
    assert_eq!(to_pg["events"], source_head["id"]);
    assert_eq!(to_pg["remarked"], 0);
    assert_eq!(to_pg["devices_checked"], 6);
    for (t, n) in &tables {
        assert_eq!(
            db.sql(&format!("SELECT count(*) FROM {t}")),
            n.to_string(),
            "{t}"
        );
    }

    // The PostgreSQL copy verifies and audits as the source did.
    let pg = ["--registry", db.url.as_str()];
    let v = e.json(&["--registry", &db.url, "log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["head_hash"], source_head["hash"]);
    let (code, pg_audit) = audit_json(&e, &pg);
    assert_eq!(code, 0, "{pg_audit}");
    assert_eq!(pg_audit["findings"], source_audit["findings"]);

    // PostgreSQL -> SQLite, into a second home.
    let back_dir = e.dir.path().join("back");
    std::fs::create_dir(&back_dir).unwrap();
    let back = back_dir.join("registry.db");
    let o = e.run(&[
        "--json",
        "--registry",
        &db.url,
        "registry",
        "copy",
        "--to",
        back.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No terminal: no progress bar, nothing on stderr.
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tables_of(&r), tables);
    let key = back_dir.join("log.key");
    assert_eq!(r["log_key_written"], key.to_str().unwrap());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Row for row, byte for byte the source's (timestamps, JSON, DER, marks).
    assert_eq!(rows_of(&back), rows_of(&e.registry()));

    home_for_copy(&e, &back_dir);
    let b = Env {
        home: back_dir.clone(),
        ..Env::bare()
    };
    let v = b.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let (code, back_audit) = audit_json(&b, &[]);
    assert_eq!(code, 0, "{back_audit}");
    assert_eq!(back_audit["findings"], source_audit["findings"]);

    // The identity sequences were moved past the copied ids: a new device and
    // certificate on the PostgreSQL copy take fresh ids.
    let out = e.path("new");
    std::fs::create_dir(&out).unwrap();
    e.ok(&[
        "--registry",
        &db.url,
        "identity",
        "issue",
        "N-1",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(
        db.sql("SELECT id > 6 FROM devices WHERE serial = 'N-1'"),
        "t"
    );
    let v = e.json(&["--registry", &db.url, "log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_non_empty_target_is_refused_with_one_line_and_nothing_written() {
    let e = lite_fleet();
    // An existing file, and a log key of another registry beside the target.
    let taken = e.path("taken.db");
    std::fs::write(&taken, b"not mine").unwrap();
    let err = e.fails(&["registry", "copy", "--to", taken.to_str().unwrap()], 7);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"not mine");
    let other = e.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("log.key"), "cradle-log-key 1\nfrom 1\nkey 00\n").unwrap();
    let err = e.fails(
        &[
            "registry",
            "copy",
            "--to",
            other.join("registry.db").to_str().unwrap(),
        ],
        7,
    );
    assert!(err.contains("another registry's log key"), "{err}");
    assert!(!other.join("registry.db").exists());

    let Some(db) = PgDb::new("registry_copy_non_empty") else {
        return;
    };
    db.sql("CREATE TABLE theirs (x int); INSERT INTO theirs VALUES (1)");
    let err = e.fails(&["registry", "copy", "--to", &db.url], 7);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is not empty (1 table(s))"), "{err}");
    assert_eq!(
        db.sql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'"),
        "theirs"
    );
    // A cradle registry is not empty either: a second copy into the same database.
    db.sql("DROP TABLE theirs");
    e.ok(&["registry", "copy", "--to", &db.url]);
    let before = db.sql("SELECT count(*) FROM events");
    let err = e.fails(&["registry", "copy", "--to", &db.url], 7);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM events"), before);
}

#[test]
fn a_damaged_source_chain_or_device_row_is_refused_and_nothing_is_made() {
    let e = lite_fleet();
    let to = e.path("copy.db");
    let to_s = to.to_str().unwrap().to_string();

    // A device row edited behind cradle's back: its mark no longer verifies.
    let site = e.sql("SELECT site FROM devices WHERE serial = 'A-1'");
    e.sql("UPDATE devices SET site = 'paris' WHERE serial = 'A-1'");
    let err = e.fails(&["registry", "copy", "--to", &to_s], 4);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("mark does not verify (first: A-1)"), "{err}");
    assert!(!to.exists() && !e.path("log.key").exists());
    e.sql(&format!(
        "UPDATE devices SET site = '{}' WHERE serial = 'A-1'",
        site.trim()
    ));
    // Restored byte for byte, the mark verifies again.
    e.ok(&["registry", "copy", "--to", &to_s]);
    std::fs::remove_file(&to).unwrap();
    std::fs::remove_file(e.path("log.key")).unwrap();

    // An event rewritten: the chain breaks there.
    e.sql("UPDATE events SET details = '{}' WHERE id = 3");
    let err = e.fails(&["registry", "copy", "--to", &to_s], 4);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("event chain broken at event 3"), "{err}");
    assert!(!to.exists() && !e.path("log.key").exists());

    let Some(db) = PgDb::new("registry_copy_damaged") else {
        return;
    };
    e.fails(&["registry", "copy", "--to", &db.url], 4);
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
}

/// A device row holding JSON another tool wrote (keys unsorted, spaced), marked
/// validly: jsonb gives it back re-serialised, so the copy re-marks it with the same key
/// and records that in the target's chain.
#[test]
fn rows_postgresql_spells_differently_are_re_marked_and_the_copy_says_so() {
    let Some(db) = PgDb::new("registry_copy_remark") else {
        return;
    };
    let e = lite_fleet();
    {
        use cradle::store::logkey::LogKey;
        use cradle::store::rowmark::{Cell, RowKey};
        let c = rusqlite::Connection::open(e.registry()).unwrap();
        c.execute(
            "UPDATE devices SET attributes = '{\"zeta\": \"1\", \"alpha\": \"b\"}' WHERE serial = 'A-1'",
            [],
        )
        .unwrap();
        let key = LogKey::read(&e.home.join("log.key")).unwrap().unwrap();
        let rk = RowKey::from_log_key(&key);
        let mut st = c
            .prepare("SELECT * FROM devices WHERE serial = 'A-1'")
            .unwrap();
        let names: Vec<String> = st.column_names().iter().map(|s| s.to_string()).collect();
        let mark_at = names.iter().position(|n| n == "mark").unwrap();
        let mark = st
            .query_row([], |r| {
                let cells: Vec<Cell> = (0..names.len())
                    .filter(|&i| i != mark_at)
                    .map(|i| Cell::from(r.get_ref(i).unwrap()))
                    .collect();
                Ok(rk.mark(cells).to_vec())
            })
            .unwrap();
        c.execute("UPDATE devices SET mark = ?1 WHERE serial = 'A-1'", [mark])
            .unwrap();
    }
    let (code, a) = audit_json(&e, &[]);
    assert_eq!(code, 0, "the hand-marked row verifies in the source: {a}");
    let r = e.json(&["registry", "copy", "--to", &db.url]);
    assert_eq!(r["remarked"], 1, "{r}");
    assert_eq!(r["events"], r["source_head_id"].as_i64().unwrap() + 1);
    assert_eq!(
        db.sql(
            "SELECT kind || ' ' || (details::jsonb->>'rows') FROM events ORDER BY id DESC LIMIT 1"
        ),
        "devices.marked 1"
    );
    let v = e.json(&["--registry", &db.url, "log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let (code, a) = audit_json(&e, &["--registry", &db.url]);
    assert_eq!(code, 0, "{a}");
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn key_copy(e: &Env) -> PathBuf {
    let k = e.path("line-1.key");
    std::fs::copy(e.home.join("log.key"), &k).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    k
}

#[test]
fn a_second_station_joins_a_postgresql_registry_with_the_first_stations_log_key() {
    let Some(db) = PgDb::new("registry_join") else {
        return;
    };
    let one = Env::bare();
    one.ok(&[
        "init",
        "--org",
        "ACME",
        "--station",
        "line-1",
        "--registry",
        &db.url,
    ]);
    one.ok(&[
        "ca",
        "init",
        "--name",
        "Test",
        "--passphrase-file",
        one.pass(),
    ]);
    let key = key_copy(&one);

    // Refusals first, each one line, no home made.
    let two = Env::bare();
    let wrong = two.path("wrong.key");
    std::fs::write(
        &wrong,
        format!("cradle-log-key 1\nfrom 1\nkey {}\n", "ab".repeat(32)),
    )
    .unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let join = |k: &Path, url: &str| {
        vec![
            "init".to_string(),
            "--org".into(),
            "ACME".into(),
            "--station".into(),
            "line-2".into(),
            "--registry".into(),
            url.to_string(),
            "--join".into(),
            "--log-key".into(),
            k.to_str().unwrap().to_string(),
        ]
    };
    let w = join(&wrong, &db.url);
    let err = two.fails(&args(&w), 5);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("does not verify the registry's chain"),
        "{err}"
    );
    assert!(!two.home.exists());
    let empty = PgDb::new("registry_join_empty").unwrap();
    let w = join(&key, &empty.url);
    let err = two.fails(&args(&w), 4);
    assert!(err.contains("holds no cradle registry to join"), "{err}");
    assert!(!two.home.exists());
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let w = join(&key, &db.url);
    let err = two.fails(&args(&w), 3);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // The join: a home on the shared registry, its own key file, a keyed event.
    let w = join(&key, &db.url);
    two.ok(&args(&w));
    assert_eq!(
        std::fs::read(two.home.join("log.key")).unwrap(),
        std::fs::read(one.home.join("log.key")).unwrap()
    );
    let config = std::fs::read_to_string(two.home.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("registry = \"{}\"", db.url)),
        "{config}"
    );
    assert_eq!(
        db.sql("SELECT station || ' ' || (details::jsonb->>'joined') FROM events ORDER BY id DESC LIMIT 1"),
        "line-2 true"
    );

    // Station 2 issues an identity into the shared registry with the CA it was given.
    for f in std::fs::read_dir(one.home.join("ca")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, two.home.join("ca").join(f.file_name().unwrap())).unwrap();
    }
    let out = two.path("out");
    std::fs::create_dir(&out).unwrap();
    two.ok(&[
        "identity",
        "issue",
        "L2-0001",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        two.pass(),
    ]);
    assert_eq!(
        db.sql("SELECT e.station FROM events e JOIN devices d ON d.id = e.device_id WHERE d.serial = 'L2-0001' AND e.kind = 'identity.issued'"),
        "line-2"
    );
    // Station 1 sees one verifiable chain with both stations' events.
    let v = one.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let (code, a) = audit_json(&one, &[]);
    assert_eq!(code, 0, "{a}");
    let d = one.json(&["device", "show", "L2-0001"]);
    assert_eq!(d["serial"], "L2-0001");

    // A chain edited on the server is not joined, whatever the key.
    db.sql("UPDATE events SET details = '{}' WHERE id = 3");
    let four = Env::bare();
    let w = join(&key, &db.url);
    let err = four.fails(&args(&w), 4);
    assert!(err.contains("broken at event 3"), "{err}");
    assert!(!four.home.exists());

    // --join without a PostgreSQL URL is a usage error.
    let three = Env::bare();
    three.fails(&["init", "--join", "--log-key", key.to_str().unwrap()], 2);
}

#[test]
fn two_copies_into_one_empty_database_at_once_leave_one_verified_registry() {
    let Some(db) = PgDb::new("registry_copy_race") else {
        return;
    };
    let (a, b) = (lite_fleet(), lite_fleet());
    let mut ca = a
        .cmd(&["registry", "copy", "--to", &db.url])
        .spawn()
        .unwrap();
    let mut cb = b
        .cmd(&["registry", "copy", "--to", &db.url])
        .spawn()
        .unwrap();
    let (ra, rb) = (ca.wait().unwrap(), cb.wait().unwrap());
    let mut codes = [ra.code().unwrap(), rb.code().unwrap()];
    codes.sort();
    assert_eq!(
        codes,
        [0, 7],
        "one copy wins, the other finds the database taken"
    );
    let winner = if ra.success() { &a } else { &b };
    let v = winner.json(&["--registry", &db.url, "log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["head_hash"],
        winner.json(&["log", "head"])["hash"],
        "the database holds the winner's registry whole"
    );
}
