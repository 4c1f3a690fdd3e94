//! Inventory import/export and the device lifecycle, end to end through the binary.
mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;

/// Copies a fixture into the test's directory; returns its (relative) name.
fn fixture(env: &Env, name: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/inventory")
        .join(name);
    std::fs::copy(&src, env.path(name)).unwrap();
    name.to_string()
}

fn write(env: &Env, name: &str, data: &[u8]) -> String {
    std::fs::write(env.path(name), data).unwrap();
    name.to_string()
}

fn device(env: &Env, serial: &str) -> Value {
    env.json(&["device", "show", serial])
}

fn chain_ok(env: &Env) {
    // Through the binary, so that either backend is checked.
    let v = env.json(&["log", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

fn event_count(env: &Env) -> usize {
    env.sql("SELECT count(*) FROM events")
        .trim()
        .parse()
        .unwrap()
}

/// Runs a failing import, checks the exit code and that the registry is unchanged.
fn fails_unchanged(env: &Env, args: &[&str], code: i32) -> String {
    let before = env.dump();
    let err = env.fails(args, code);
    assert_eq!(env.dump(), before, "registry changed after a failed import");
    err
}

#[test]
fn good_file_imports_with_events_and_second_import_changes_nothing() {
    let env = Env::init();
    let f = fixture(&env, "good.csv");
    let out = env.ok(&["inventory", "import", &f]);
    assert!(out.contains("3 created"), "{out}");
    let d = device(&env, "ACME-0001");
    assert_eq!(d["mac"], "aa:bb:cc:00:00:01");
    assert_eq!(d["imei"], "490154203237518");
    assert_eq!(d["site"], "berlin-1");
    assert_eq!(device(&env, "ACME-0002")["status"], "provisioned");
    assert_eq!(device(&env, "ACME-0003")["status"], "registered");
    assert!(device(&env, "ACME-0003")["site"].is_null());
    // Who, which file, which line.
    let h = env.json(&["device", "history", "ACME-0002"]);
    let ev = &h["events"][0];
    assert_eq!(ev["kind"], "device.created");
    assert_eq!(ev["actor"], "tester");
    assert_eq!(ev["station"], "test-station");
    assert_eq!(ev["details"]["file"], "good.csv");
    assert_eq!(ev["details"]["line"], 3);
    chain_ok(&env);

    let before = env.dump();
    let out = env.ok(&["inventory", "import", &f, "--mode", "upsert"]);
    assert!(out.contains("0 created, 0 updated, 3 unchanged"), "{out}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(env.dump(), before, "a second import must not write");
}

#[test]
fn bom_crlf_quotes_and_newlines() {
    let env = Env::init();
    let f = fixture(&env, "bom_crlf.csv");
    env.ok(&["inventory", "import", &f]);
    let d = device(&env, "ACME-0101");
    assert_eq!(d["model"], "Sensor, \"X\"");
    assert_eq!(device(&env, "ACME-0102")["notes"], "two\r\nlines");
    let d = device(&env, "ACME-0103");
    assert_eq!(d["model"], "Müller ✓");
    assert_eq!(d["site"], "東京");
    assert_eq!(d["notes"], "a,b");
    // Physical lines: the record after a quoted CRLF starts on line 5.
    let h = env.json(&["device", "history", "ACME-0103"]);
    assert_eq!(h["events"][0]["details"]["line"], 5);
    let h = env.json(&["device", "history", "ACME-0101"]);
    assert_eq!(h["events"][0]["details"]["line"], 2);
}

#[test]
fn every_bad_row_is_reported_with_its_physical_line() {
    let env = Env::init();
    let f = fixture(&env, "bad_mac.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("bad_mac.csv:3: column 'mac': \"zz:bb:cc:00:02:02\" is not a MAC address"),
        "{err}"
    );
    assert!(
        err.contains("bad_mac.csv:7: column 'mac': \"aa:bb:cc:00:02\" is not a MAC address"),
        "{err}"
    );
    assert!(
        err.contains("2 of 5 rows are invalid; nothing was written"),
        "{err}"
    );
    assert_eq!(env.sql("SELECT count(*) FROM devices").trim(), "0");
}

#[test]
fn partial_commits_good_rows_and_errors_file_round_trips() {
    let env = Env::init();
    let f = fixture(&env, "bad_mac.csv");
    let o = env.run(&[
        "inventory",
        "import",
        &f,
        "--partial",
        "--errors",
        "bad.csv",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(env.sql("SELECT count(*) FROM devices").trim(), "3");
    let bad = std::fs::read_to_string(env.path("bad.csv")).unwrap();
    let mut r = csv::Reader::from_reader(bad.as_bytes());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["serial", "mac", "notes", "reject_reason"]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][0], "ACME-0202");
    assert!(rows[0][3].contains("is not a MAC address"), "{:?}", rows[0]);
    // Fix the cells and import the errors file as it is (reject_reason is ignored).
    let fixed = bad
        .replace("zz:bb:cc:00:02:02", "aa:bb:cc:00:02:02")
        .replace("aa:bb:cc:00:02,", "aa:bb:cc:00:02:04,");
    write(&env, "fixed.csv", fixed.as_bytes());
    let out = env.ok(&["inventory", "import", "fixed.csv"]);
    assert!(out.contains("2 created"), "{out}");
    chain_ok(&env);
}

#[test]
fn non_utf8_wrong_header_empty_and_field_counts() {
    let env = Env::init();
    let f = fixture(&env, "non_utf8.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("non_utf8.csv:3: column 'site': not valid UTF-8 (byte 0xf6 at offset 1)"),
        "{err}"
    );

    let f = fixture(&env, "wrong_header.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("wrong_header.csv:1: unknown column 'modle' in the header"),
        "{err}"
    );

    let f = fixture(&env, "empty.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(err.contains("empty.csv:1: empty file"), "{err}");

    let f = fixture(&env, "field_count.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("field_count.csv:3: 4 fields but the header has 3 columns"),
        "{err}"
    );
    assert!(
        err.contains("field_count.csv:4: 2 fields but the header has 3 columns"),
        "{err}"
    );

    // Header only: nothing to do, not an error.
    let f = fixture(&env, "header_only.csv");
    let before = env.dump();
    let out = env.ok(&["inventory", "import", &f]);
    assert!(out.contains("0 rows"), "{out}");
    assert_eq!(env.dump(), before);

    // Missing file: exit 8.
    fails_unchanged(&env, &["inventory", "import", "nope.csv"], 8);
}

#[test]
fn duplicates_in_file_and_conflicts_with_registry() {
    let env = Env::init();
    let f = fixture(&env, "duplicate_serials.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("duplicate_serials.csv:4: duplicate serial 'ACME-0501': already at line 2"),
        "{err}"
    );
    // The same in upsert mode (keys tracked in a temporary table) and by MAC.
    let err = fails_unchanged(&env, &["inventory", "import", &f, "--mode", "upsert"], 3);
    assert!(
        err.contains("duplicate_serials.csv:4: duplicate serial 'ACME-0501': already at line 2"),
        "{err}"
    );
    let m = write(
        &env,
        "dup_mac.csv",
        b"serial,mac\nD-1,aa:bb:cc:dd:ee:01\nD-2,zz\nD-3,AA-BB-CC-DD-EE-01\n",
    );
    let err = fails_unchanged(
        &env,
        &[
            "inventory",
            "import",
            &m,
            "--mode",
            "upsert",
            "--match",
            "mac",
        ],
        3,
    );
    assert!(
        err.contains("dup_mac.csv:4: duplicate mac 'aa:bb:cc:dd:ee:01': already at line 2"),
        "{err}"
    );
    assert!(err.contains("dup_mac.csv:3: column 'mac'"), "{err}");
    let g = fixture(&env, "good.csv");
    env.ok(&["inventory", "import", &g]);
    // create again: rows that would change nothing are unchanged, and it says so.
    let before = env.dump();
    let out = env.ok(&["inventory", "import", &g]);
    assert!(
        out.contains("0 created, 0 updated, 3 unchanged, 0 rejected"),
        "{out}"
    );
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(env.dump(), before, "a re-run must not write");
    // create: an existing device that a row would change is a conflict (exit 7).
    let c = write(
        &env,
        "changed.csv",
        b"serial,model,location,notes\nACME-0001,Sensor-X,rack 1,first\nACME-0002,Sensor-X,rack 9,moved\n",
    );
    let err = fails_unchanged(&env, &["inventory", "import", &c], 7);
    assert!(
        err.contains(
            "changed.csv:3: device 'ACME-0002' already exists with other values (location, notes)"
        ),
        "{err}"
    );
    assert!(!err.contains("changed.csv:2:"), "{err}");
    // A row repeated in the file is a duplicate even when the registry has it.
    let d = write(
        &env,
        "again.csv",
        b"serial,model\nACME-0003,Sensor-Y\nACME-0001,Sensor-X\nACME-0003,Sensor-Y\n",
    );
    let err = fails_unchanged(&env, &["inventory", "import", &d], 3);
    assert!(
        err.contains("again.csv:4: duplicate serial 'ACME-0003': already at line 2"),
        "{err}"
    );
    // The same by MAC: unchanged, or a conflict naming the field.
    let out = env.ok(&["inventory", "import", &g, "--match", "mac"]);
    assert!(out.contains("3 unchanged"), "{out}");
    let err = fails_unchanged(&env, &["inventory", "import", &c, "--match", "mac"], 3);
    assert!(
        err.contains("changed.csv:1: the header has no 'mac' column"),
        "{err}"
    );
    let cm = write(
        &env,
        "changed_mac.csv",
        b"serial,mac,site\nACME-0001,aa:bb:cc:00:00:01,berlin-1\nACME-0002,aa:bb:cc:00:00:02,paris\n",
    );
    let err = fails_unchanged(&env, &["inventory", "import", &cm, "--match", "mac"], 7);
    assert!(
        err.contains(
            "changed_mac.csv:3: device 'ACME-0002' already exists with other values (site)"
        ),
        "{err}"
    );
    // update: a missing device is a conflict.
    let m = fixture(&env, "by_mac.csv");
    let err = fails_unchanged(
        &env,
        &[
            "inventory",
            "import",
            &m,
            "--mode",
            "update",
            "--match",
            "mac",
        ],
        7,
    );
    assert!(
        err.contains("by_mac.csv:3: no device with mac 'aa:bb:cc:00:00:99'"),
        "{err}"
    );
    // ... and with --partial the matching row is applied (by MAC, any spelling).
    let o = env.run(&[
        "inventory",
        "import",
        &m,
        "--mode",
        "update",
        "--match",
        "mac",
        "--partial",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(device(&env, "ACME-0001")["site"], "hamburg");
}

#[test]
fn lifecycle_states_in_import() {
    let env = Env::init();
    let f = fixture(&env, "bad_status.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("bad_status.csv:3: column 'status': 'broken' is not a lifecycle state"),
        "{err}"
    );
    let o = env.run(&["inventory", "import", &f, "--partial"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(device(&env, "ACME-0901")["status"], "deployed");
    // An update that breaks the lifecycle is a conflict.
    let back = write(&env, "back.csv", b"serial,status\nACME-0901,provisioned\n");
    let err = fails_unchanged(&env, &["inventory", "import", &back, "--mode", "update"], 7);
    assert!(
        err.contains("back.csv:2: column 'status': device 'ACME-0901' is deployed; it cannot move to provisioned"),
        "{err}"
    );
    // A legal one goes through lifecycle::transition (a device.state event).
    let m = write(&env, "maint.csv", b"serial,status\nACME-0901,maintenance\n");
    env.ok(&["inventory", "import", &m, "--mode", "update"]);
    let h = env.json(&["device", "history", "ACME-0901"]);
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "device.state");
    assert_eq!(last["details"]["to"], "maintenance");
    assert_eq!(last["details"]["file"], "maint.csv");
    chain_ok(&env);
}

#[test]
fn dry_run_shows_the_diff_and_writes_nothing() {
    let env = Env::init();
    let g = fixture(&env, "good.csv");
    let before = env.dump();
    let out = env.ok(&["inventory", "import", &g, "--dry-run"]);
    assert!(out.contains("3 would be created"), "{out}");
    assert_eq!(env.dump(), before);
    env.ok(&["inventory", "import", &g]);

    let u = fixture(&env, "update_sites.csv");
    let before = env.dump();
    let s = env.json(&["inventory", "import", &u, "--mode", "update", "--dry-run"]);
    assert_eq!(env.dump(), before);
    assert_eq!(s["updated"], 2);
    assert_eq!(s["unchanged"], 1);
    assert_eq!(s["committed"], false);
    let text = env.ok(&["inventory", "import", &u, "--mode", "update", "--dry-run"]);
    assert!(
        text.contains("ACME-0001 (line 2): site: \"berlin-1\" -> \"munich-2\""),
        "{text}"
    );
    assert!(
        text.contains("location: \"rack 2\" -> \"rack 9\", owner: \"ops\" -> (empty)"),
        "{text}"
    );
    // Blank keeps by default; --blank clears empties the blank cells.
    env.ok(&["inventory", "import", &u, "--mode", "update"]);
    assert_eq!(device(&env, "ACME-0001")["location"], "rack 1");
    assert!(
        device(&env, "ACME-0002")["owner"].is_null(),
        "<clear> clears"
    );
    let s = env.json(&[
        "inventory",
        "import",
        &u,
        "--mode",
        "update",
        "--blank",
        "clears",
    ]);
    assert_eq!(s["updated"], 1, "{s}");
    let d = device(&env, "ACME-0001");
    assert!(d["location"].is_null() && d["owner"].is_null(), "{d}");
    assert_eq!(d["model"], "Sensor-X", "a column not in the file is kept");
    chain_ok(&env);
}

#[test]
fn extra_columns_are_rejected_or_kept_as_attributes() {
    let env = Env::init();
    let f = fixture(&env, "extra_columns.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains("unknown columns 'color', 'Rack Unit'"),
        "{err}"
    );
    env.ok(&["inventory", "import", &f, "--extra-columns", "keep"]);
    let d = device(&env, "ACME-0801");
    assert_eq!(d["attributes"]["color"], "blue");
    assert_eq!(d["attributes"]["Rack Unit"], "U12");
    assert!(device(&env, "ACME-0802")["attributes"]
        .get("color")
        .is_none());
}

#[test]
fn formula_cells_are_restored_on_import_and_neutralised_on_export() {
    let env = Env::init();
    let f = fixture(&env, "formula.csv");
    env.ok(&["inventory", "import", &f]);
    let d = device(&env, "ACME-0701");
    assert_eq!(d["model"], "=HYPERLINK(\"http://evil\")");
    assert_eq!(d["notes"], "+49 30 1234");
    assert_eq!(d["attributes"]["formula"], "-5");
    let d = device(&env, "ACME-0702");
    assert_eq!(d["model"], "@SUM(A1)");
    assert_eq!(d["notes"], "\tTAB");
    assert_eq!(d["attributes"]["formula"], "''=quoted");
    let d = device(&env, "ACME-0703");
    assert_eq!(
        d["model"], "'plain quote",
        "a quote before a letter is kept"
    );
    assert_eq!(d["notes"], "\rCR");
    assert_eq!(d["attributes"]["formula"], "'@x");

    let csv_out = env.ok(&["inventory", "export"]);
    // No exported cell starts with a character a spreadsheet executes.
    let mut r = csv::Reader::from_reader(csv_out.as_bytes());
    for rec in r.records() {
        for cell in rec.unwrap().iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "unsafe cell {cell:?}"
            );
        }
    }
    assert!(csv_out.contains("'''=quoted"), "{csv_out}");
}

#[test]
fn long_fields() {
    let env = Env::init();
    // long_field.csv: a 10,000-character note (allowed) and site (over its limit).
    let f = fixture(&env, "long_field.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(
        err.contains(
            "long_field.csv:3: column 'site': value is 10000 characters long; the limit is 256"
        ),
        "{err}"
    );
    assert!(!err.contains("long_field.csv:2"), "{err}");
    let o = env.run(&["inventory", "import", &f, "--partial"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        device(&env, "L-0001")["notes"].as_str().unwrap(),
        "x".repeat(10_000)
    );
    // A runaway record (an unclosed quote swallowing the rest of a big file) stops
    // the import with its line instead of growing without bound.
    let mut big = String::from("serial,notes\nR-1,ok\nR-2,\"unclosed\n");
    let row = "R-3,".to_string() + &"y".repeat(1000) + "\n";
    while big.len() < 9 << 20 {
        big.push_str(&row);
    }
    let f = write(&env, "runaway.csv", big.as_bytes());
    let err = fails_unchanged(&env, &["inventory", "import", &f, "--partial"], 3);
    assert!(
        err.contains("runaway.csv:3: a record runs on for more than 8 MiB (an unclosed quote?)"),
        "{err}"
    );
}

#[test]
fn hostile_cells_are_escaped_in_messages_and_outputs_never_replace_inputs() {
    let env = Env::init();
    // Terminal escapes in a header or a cell are shown escaped, never sent raw.
    let f = fixture(&env, "control_chars.csv");
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    assert!(!err.contains('\x1b'), "raw escape on stderr: {err:?}");
    assert!(
        err.contains("control_chars.csv:2: column 'model': \"Sensor\\u{1b}[2J\" contains the control character \\u{1b}"),
        "{err}"
    );
    assert!(
        err.contains("control_chars.csv:3: column 'serial': \"C-\\u{1b}0002\" contains the control character \\u{1b} (U+001B) at character 3"),
        "{err}"
    );
    let h = write(&env, "esc_header.csv", b"serial,mo\x1b[31mdel\nA-1,x\n");
    let err = fails_unchanged(&env, &["inventory", "import", &h], 3);
    assert!(!err.contains('\x1b'), "raw escape on stderr: {err:?}");
    assert!(
        err.contains("esc_header.csv:1: unknown column 'mo\\u{1b}[31mdel'"),
        "{err}"
    );

    // --errors naming the file being imported (or the registry) is refused up front:
    // exit 2, the input and the registry untouched.
    let f = fixture(&env, "bad_mac.csv");
    let input = std::fs::read(env.path(&f)).unwrap();
    let err = fails_unchanged(
        &env,
        &["inventory", "import", &f, "--errors", &format!("./{f}")],
        2,
    );
    assert!(err.contains("refusing to write over bad_mac.csv"), "{err}");
    assert_eq!(std::fs::read(env.path(&f)).unwrap(), input);
    let reg = env.registry();
    let reg = reg.to_str().unwrap();
    let err = fails_unchanged(&env, &["inventory", "import", &f, "--errors", reg], 2);
    assert!(err.contains("refusing to write over"), "{err}");
    // Export and log export refuse the registry files too.
    for args in [
        ["inventory", "export", "-o", reg],
        ["log", "export", "-o", &format!("{reg}-wal")],
    ] {
        let err = fails_unchanged(&env, &args, 2);
        assert!(err.contains("refusing to write over"), "{err}");
    }
    env.ok(&["device", "list"]);
    // A failed import with --errors still writes the errors file, whole.
    let err = env.fails(&["inventory", "import", &f, "--errors", "bad.csv"], 3);
    assert!(err.contains("2 of 5 rows are invalid"), "{err}");
    let bad = std::fs::read_to_string(env.path("bad.csv")).unwrap();
    assert_eq!(bad.lines().count(), 3, "{bad}");
    assert!(
        env.files().iter().all(|f| !f.contains(".cradle-tmp")),
        "{:?}",
        env.files()
    );
}

#[test]
fn export_then_upsert_changes_nothing() {
    let env = Env::init();
    for f in ["good.csv", "bom_crlf.csv", "formula.csv"] {
        let f = fixture(&env, f);
        env.ok(&["inventory", "import", &f]);
    }
    let f = fixture(&env, "extra_columns.csv");
    env.ok(&["inventory", "import", &f, "--extra-columns", "keep"]);
    let long = format!("{}\n\"quoted\", comma", "ü".repeat(10_000));
    env.ok(&[
        "device",
        "set",
        "ACME-0001",
        &format!("notes={long}"),
        "attr.weird==cmd",
        "attr.q='=x",
    ]);
    env.ok(&["device", "set", "ACME-0002", "attr.color=-red"]);

    env.ok(&["inventory", "export", "-o", "all.csv"]);
    let before = env.dump();
    let s = env.json(&["inventory", "import", "all.csv", "--mode", "upsert"]);
    assert_eq!(s["unchanged"], s["rows"], "{s}");
    assert_eq!(s["rows"], 11);
    assert_eq!(env.dump(), before);
    // Also with --blank clears: blank cells are exactly the empty fields.
    let s = env.json(&[
        "inventory",
        "import",
        "all.csv",
        "--mode",
        "upsert",
        "--blank",
        "clears",
    ]);
    assert_eq!(s["unchanged"], 11, "{s}");
    assert_eq!(env.dump(), before);

    // JSON and JSON Lines carry the same devices; filters select.
    let j: Value =
        serde_json::from_str(&env.ok(&["inventory", "export", "--format", "json"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 11);
    assert_eq!(j[0]["notes"], long);
    let jl = env.ok(&[
        "inventory",
        "export",
        "--format",
        "jsonl",
        "--site",
        "berlin-1",
    ]);
    let lines: Vec<Value> = jl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|d| d["site"] == "berlin-1"));
    let c = env.ok(&["inventory", "export", "--status", "provisioned"]);
    assert_eq!(c.lines().count(), 2, "{c}");
    let c = env.ok(&["inventory", "export", "--batch", "B-2026-12"]);
    assert!(c.contains("ACME-0003") && !c.contains("ACME-0001"), "{c}");
    env.fails(&["inventory", "export", "--status", "bogus"], 3);
}

#[test]
fn device_lifecycle_commands() {
    let env = Env::init();
    let g = fixture(&env, "good.csv");
    env.ok(&["inventory", "import", &g]);
    // registered -> deployed is not allowed without --force.
    let before = env.dump();
    let err = env.fails(&["device", "deploy", "ACME-0001", "--site", "s1"], 7);
    assert!(
        err.contains("is registered; it cannot move to deployed"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
    // provisioned -> deployed -> maintenance -> deployed.
    env.ok(&[
        "device",
        "deploy",
        "ACME-0002",
        "--site",
        "paris",
        "--location",
        "roof",
    ]);
    let d = device(&env, "ACME-0002");
    assert_eq!(
        (d["status"].as_str(), d["site"].as_str()),
        (Some("deployed"), Some("paris"))
    );
    env.ok(&["device", "maintenance", "ACME-0002"]);
    assert_eq!(device(&env, "ACME-0002")["status"], "maintenance");
    env.ok(&["device", "return", "ACME-0002"]);
    assert_eq!(device(&env, "ACME-0002")["status"], "deployed");
    env.ok(&["device", "maintenance", "ACME-0002"]);
    env.ok(&["device", "deploy", "ACME-0002"]);
    assert_eq!(device(&env, "ACME-0002")["site"], "paris");
    // Forced override, recorded with its reason.
    let o = env.json(&[
        "device",
        "deploy",
        "ACME-0001",
        "--site",
        "lab",
        "--force",
        "--reason",
        "bench test",
    ]);
    assert_eq!(o["forced"], true);
    let h = env.json(&["device", "history", "ACME-0001"]);
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["details"]["forced"], true);
    assert_eq!(last["details"]["reason"], "bench test");
    env.fails(&["device", "deploy", "ACME-0003", "--force"], 2);
    // device set: fields, attributes, clearing, validation.
    env.ok(&[
        "device",
        "set",
        "ACME-0003",
        "owner=ops",
        "mac=AA-BB-CC-00-00-33",
        "attr.color=red",
    ]);
    let d = device(&env, "ACME-0003");
    assert_eq!(d["mac"], "aa:bb:cc:00:00:33");
    assert_eq!(d["attributes"]["color"], "red");
    env.ok(&["device", "set", "ACME-0003", "owner=", "attr.color=<clear>"]);
    let d = device(&env, "ACME-0003");
    assert!(d["owner"].is_null() && d["attributes"].get("color").is_none());
    let before = env.dump();
    env.fails(&["device", "set", "ACME-0003", "mac=nope"], 3);
    env.fails(&["device", "set", "ACME-0003", "colour=red"], 3);
    env.fails(&["device", "set", "ACME-0003", "serial=X"], 3);
    env.fails(&["device", "set", "NOPE", "owner=x"], 3);
    env.fails(
        &[
            "device",
            "set",
            "ACME-0003",
            "status=retired",
            "status=deployed",
        ],
        7,
    );
    assert_eq!(env.dump(), before);
    let out = env.ok(&["device", "set", "ACME-0003", "owner="]);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(env.dump(), before);
    // list / show / history tables and JSON.
    let l = env.json(&["device", "list", "--status", "deployed"]);
    assert_eq!(l.as_array().unwrap().len(), 2);
    let t = env.ok(&["device", "list"]);
    assert!(t.starts_with("SERIAL") && t.contains("ACME-0003"), "{t}");
    assert!(env
        .ok(&["device", "history", "ACME-0002"])
        .contains("device.state"));
    assert!(env.ok(&["device", "show", "ACME-0002"]).contains("paris"));
    chain_ok(&env);

    // Fleet summary.
    let s = env.json(&["status"]);
    assert_eq!(s["devices"]["total"], 3);
    assert_eq!(s["devices"]["deployed"], 2);
    assert_eq!(s["devices"]["registered"], 1);
    let paris = s["by_site"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "paris")
        .unwrap()
        .clone();
    assert_eq!(paris["deployed"], 1);
    let b = s["by_batch"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "B-2026-11")
        .unwrap()
        .clone();
    assert_eq!(b["total"], 2);
    let t = env.ok(&["status"]);
    assert!(t.contains("3 devices") && t.contains("B-2026-12"), "{t}");
}

/// Devices are written many rows per statement in create mode; conflicts and
/// invalid rows in the middle of such a group are reported in file order, with the
/// right line and kind, and every other row gets its device and its event.
#[test]
fn rows_rejected_mid_group_keep_order_and_the_rest_import() {
    let env = Env::init();
    env.ok(&[
        "inventory",
        "import",
        &write(&env, "first.csv", b"serial,model\nG-00050,old\n"),
    ]);
    let mut csv = String::from("serial,model,mac,attr.slot\n");
    for i in 0..300u32 {
        let serial = match i {
            120 => "G-00010".to_string(), // an earlier row of this file
            _ => format!("G-{i:05}"),     // G-00050 is in the registry
        };
        let mac = if i == 200 {
            "zz:00".to_string()
        } else {
            format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff)
        };
        csv.push_str(&format!("{serial},m-{i},{mac},s{i}\n"));
    }
    let f = write(&env, "groups.csv", csv.as_bytes());

    // All-or-nothing first: rejected rows mean nothing is written.
    let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("groups.csv:"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("groups.csv:52: device 'G-00050' already exists"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("groups.csv:122: duplicate serial 'G-00010': already at line 12"),
        "{err}"
    );
    assert!(
        lines[2].starts_with("groups.csv:202: column 'mac'"),
        "{err}"
    );

    let o = env.run(&["--json", "inventory", "import", &f, "--partial"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--partial with rejected rows exits 1"
    );
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["created"], 297, "{out}");
    assert_eq!(out["rejected"], 3, "{out}");
    let errs: Vec<u64> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(errs, [52, 122, 202]);
    assert_eq!(out["errors"][0]["kind"], "conflict");
    assert_eq!(out["errors"][1]["kind"], "invalid");
    for (serial, line, model) in [
        ("G-00000", 2, "m-0"),
        ("G-00049", 51, "m-49"),
        ("G-00051", 53, "m-51"),
        ("G-00121", 123, "m-121"),
        ("G-00201", 203, "m-201"),
        ("G-00299", 301, "m-299"),
    ] {
        let d = device(&env, serial);
        assert_eq!(d["model"], model, "{serial}");
        assert_eq!(
            d["attributes"]["slot"],
            format!("s{}", line - 2),
            "{serial}"
        );
        let h = env.json(&["device", "history", serial]);
        assert_eq!(h["events"][0]["details"]["line"], line, "{serial}");
    }
    assert_eq!(device(&env, "G-00050")["model"], "old");
    assert_eq!(event_count(&env), 1 + 1 + 297);
    chain_ok(&env);
}

/// Writes `n` valid rows (serial, model, batch, mac, imei).
fn big_csv(path: &Path, n: u64) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "serial,model,batch,mac,imei").unwrap();
    for i in 0..n {
        let body = format!("35{:012}", i);
        let check = cradle::app::inventory::fields::luhn_digit(body.as_bytes());
        writeln!(
            w,
            "BIG-{i:08},Sensor-X,B-{},02:00:{:02x}:{:02x}:{:02x}:{:02x},{body}{check}",
            i / 10_000,
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )
        .unwrap();
    }
}

/// Where the importer's file descriptor on `path` is (read offset), if open.
fn read_offset(pid: u32, path: &Path) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).ok()? == path {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            return info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|p| p.trim().parse().ok());
        }
    }
    None
}

/// Kills a large import mid-way (`extra` picks the journal: WAL by default, a
/// rollback journal with `--exclusive`).
fn sigkill_mid_import(extra: &[&str]) {
    let env = Env::init();
    let g = fixture(&env, "good.csv");
    env.ok(&["inventory", "import", &g]);
    let big = env.path("big.csv");
    big_csv(&big, 200_000);
    let size = std::fs::metadata(&big).unwrap().len();
    let before = env.dump();

    let mut args = vec!["inventory", "import", big.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut child = env
        .cmd(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut killed_at = None;
    while Instant::now() < deadline {
        if let Some(pos) = read_offset(pid, &big) {
            if pos > size / 3 {
                killed_at = Some(pos);
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pos = killed_at.expect("the import finished before it could be killed mid-way");
    assert!(pos < size, "killed at byte {pos} of {size}: not mid-way");

    assert_eq!(env.dump(), before, "a killed import must leave no trace");
    let out = env.ok(&args);
    assert!(out.contains("200000 created"), "{out}");
    assert_eq!(event_count(&env), 1 + 3 + 200_000);
    chain_ok(&env);
    // Whatever journal the import used, the registry is back in WAL mode.
    assert_eq!(env.sql("PRAGMA journal_mode").trim(), "wal");
}

#[test]
fn sigkill_mid_import_leaves_registry_as_before_and_rerun_succeeds() {
    sigkill_mid_import(&[]);
}

#[test]
fn sigkill_mid_exclusive_import_leaves_registry_as_before() {
    sigkill_mid_import(&["--exclusive"]);
}

/// An `--exclusive` import has the registry to itself; other processes that open it
/// meanwhile (readers and writers) wait for it instead of failing, and all of them
/// see a consistent registry in WAL mode afterwards.
#[test]
fn other_processes_wait_for_an_exclusive_import() {
    let env = Env::init();
    let big = env.path("big.csv");
    big_csv(&big, 200_000);
    let small = write(&env, "small.csv", b"serial,model\nSIDE-1,m\nSIDE-2,m\n");
    let mut child = env
        .cmd(&[
            "--json",
            "inventory",
            "import",
            big.to_str().unwrap(),
            "--exclusive",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Start the others once the import is under way (past the journal switch).
    let size = std::fs::metadata(&big).unwrap().len();
    while child.try_wait().unwrap().is_none()
        && read_offset(child.id(), &big).is_none_or(|p| p < size / 4)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut readers = 0;
    let mut side_import = false;
    while child.try_wait().unwrap().is_none() {
        if !side_import {
            let out = env.ok(&["inventory", "import", &small]);
            assert!(out.contains("2 created"), "{out}");
            side_import = true;
        }
        let total = env.json(&["status", "--json"])["devices"]["total"]
            .as_u64()
            .unwrap();
        // All or nothing of the big file, never part of it.
        assert!(
            [0, 2, 200_000, 200_002].contains(&total),
            "a reader saw {total} devices"
        );
        readers += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(readers > 0);
    let total = env.json(&["status", "--json"])["devices"]["total"]
        .as_u64()
        .unwrap();
    assert_eq!(total, 200_002);
    assert_eq!(env.sql("PRAGMA journal_mode").trim(), "wal");
    chain_ok(&env);
}

/// `--exclusive` never waits for, or breaks, a process that has the registry open:
/// the import runs as usual (WAL) and says so.
#[test]
fn exclusive_import_with_the_registry_open_elsewhere_runs_shared() {
    let env = Env::init();
    // --exclusive is SQLite's (leaving WAL mode); nothing to check on PostgreSQL.
    if env.backend() == common::Backend::Postgres {
        return;
    }
    let other = cradle::store::Store::open(&env.registry()).unwrap();
    let n = cradle::store::retire::device_count(&other).unwrap();
    assert_eq!(n, 0);
    let f = fixture(&env, "good.csv");
    let o = env.run(&["--json", "inventory", "import", &f, "--exclusive"]);
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("imported without --exclusive"), "{stderr}");
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["exclusive"], false);
    assert_eq!(summary["created"], 3);
    drop(other);
    assert_eq!(env.sql("PRAGMA journal_mode").trim(), "wal");
}

#[test]
fn line_numbers_count_blank_lines_and_crlf() {
    let env = Env::init();
    for (name, nl) in [("lf.csv", "\n"), ("crlf.csv", "\r\n")] {
        let text = format!("serial,mac{nl}{nl}A-1,zz{nl}{nl}{nl}A-2,\"y{nl}y\"{nl}A-3,qq{nl}");
        let f = write(&env, name, text.as_bytes());
        let err = fails_unchanged(&env, &["inventory", "import", &f], 3);
        for l in [3, 6, 8] {
            assert!(
                err.contains(&format!("{name}:{l}: column 'mac'")),
                "{name} line {l}: {err}"
            );
        }
    }
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::io::Read;
    let env = Env::init();
    let mut csv = String::from("serial,model,notes\n");
    for i in 0..3000 {
        csv.push_str(&format!("P-{i:05},m,{}\n", "n".repeat(200)));
    }
    env.ok(&["inventory", "import", &write(&env, "p.csv", csv.as_bytes())]);
    // `cradle … | head -1`: the pipe closes long before the output ends.
    for args in [
        &["--json", "device", "list"][..],
        &["inventory", "export", "--format", "json"],
        &["inventory", "export"],
        &["device", "list"],
        &["log", "export"],
        &["completions", "bash"],
    ] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 64];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "", "{args:?}");
    }
}

#[test]
fn output_to_a_fifo_or_terminal_is_written_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::init();
    env.ok(&["inventory", "import", &fixture(&env, "good.csv")]);
    let bad = fixture(&env, "bad_mac.csv");
    // `-o /dev/stdout` or a FIFO must be written to, never renamed over.
    for args in [
        vec!["inventory", "export", "-o", "pipe"],
        vec!["log", "export", "-o", "pipe"],
        vec!["inventory", "import", &bad, "--errors", "pipe"],
    ] {
        let fifo = env.path("pipe");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        env.run(&args);
        let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(ft.is_fifo(), "{args:?} replaced the FIFO with a file");
        let got = reader.join().unwrap();
        assert!(got.lines().count() >= 3, "{args:?}: {got}");
        std::fs::remove_file(&fifo).unwrap();
    }
}

#[test]
fn device_return_is_only_from_maintenance_and_deploy_keeps_a_site() {
    let env = Env::init();
    let g = fixture(&env, "good.csv");
    env.ok(&["inventory", "import", &g]);
    let before = env.dump();
    let err = env.fails(&["device", "return", "ACME-0002"], 7);
    assert!(
        err.contains(
            "device 'ACME-0002' is provisioned, not in maintenance (use `cradle device deploy`)"
        ),
        "{err}"
    );
    // Without --site the stored site is kept, so a device without one needs it.
    let err = env.fails(&["device", "deploy", "ACME-0003"], 3);
    assert!(
        err.contains("device 'ACME-0003' has no site; give --site SITE"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
    // The override (provisioned -> deployed is itself legal, so it is not "forced").
    let o = env.json(&[
        "device",
        "return",
        "ACME-0002",
        "--force",
        "--reason",
        "installed by the field team",
    ]);
    assert_eq!(
        (o["status"].as_str(), o["forced"].as_bool()),
        (Some("deployed"), Some(false))
    );
    chain_ok(&env);
}

fn race(env: &Env, args: &[&str], sql: &str) -> (Option<i32>, String) {
    let o = env.race(args, sql);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The rules of `device return` and `device deploy` are checked inside the
/// transaction that moves the device, so a change another station committed while
/// this one waited for the lock is seen. (When the return rule was checked before
/// the transaction, the return below said "nothing to change" and exited 0; the
/// deploy put the device in service with no site.)
#[test]
fn return_and_deploy_rules_see_a_change_committed_while_waiting_for_the_lock() {
    let env = Env::init();
    let g = fixture(&env, "good.csv");
    env.ok(&["inventory", "import", &g]);
    env.ok(&["device", "deploy", "ACME-0002"]);
    env.ok(&["device", "maintenance", "ACME-0002"]);

    // Another station returns the device meanwhile.
    let (code, err) = race(
        &env,
        &["device", "return", "ACME-0002"],
        "UPDATE devices SET status = 'deployed' WHERE serial = 'ACME-0002';",
    );
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("is deployed, not in maintenance"), "{err}");

    // Another station clears its site meanwhile.
    env.ok(&["device", "maintenance", "ACME-0002"]);
    let (code, err) = race(
        &env,
        &["device", "deploy", "ACME-0002"],
        "UPDATE devices SET site = NULL WHERE serial = 'ACME-0002';",
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("has no site; give --site SITE"), "{err}");
    assert_eq!(device(&env, "ACME-0002")["status"], "maintenance");
}
