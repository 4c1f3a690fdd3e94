//! Asset data (issue 17) through the binary: the typed inventory columns on import,
//! export, `device set` and `device show`; the maintenance log; and the audit checks
//! that read them (warranty-expiring, end-of-life-reached, cert-expiring weighted by
//! criticality), each with a registry that triggers it and one that does not.
mod common;

use std::collections::BTreeSet;

use common::{audit, found, set, Env};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

const HEADER: &str =
    "serial,model,site,batch,purchase_date,warranty_until,cost,currency,supplier,criticality,end_of_life\n";

fn write(env: &Env, name: &str, body: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

/// `YYYY-MM-DD`, `days` from today (UTC).
fn day(days: i64) -> String {
    let d = (OffsetDateTime::now_utc() + Duration::days(days)).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn device(env: &Env, serial: &str) -> Value {
    env.json(&["device", "show", serial])
}

#[test]
fn asset_columns_import_normalised_and_export_exactly() {
    let env = Env::init();
    let f = write(
        &env,
        "assets.csv",
        &format!(
            "{HEADER}A-1,m1,berlin,B1,2024-01-15,2027-01-15,0129.90,eur,Acme GmbH,HIGH,2034-01-01\n\
             A-2,m1,lyon,B1,2023-06-30,,.5,JPY,,low,\n\
             A-3,m2,lyon,B2,,,,,,,\n"
        ),
    );
    let out = env.ok(&["inventory", "import", &f]);
    assert!(out.contains("3 created"), "{out}");
    let d = device(&env, "A-1");
    assert_eq!(d["purchase_date"], "2024-01-15");
    assert_eq!(d["warranty_until"], "2027-01-15");
    // Stored exactly as a decimal text (leading zeros dropped, decimals kept).
    assert_eq!(d["cost"], "129.90");
    assert_eq!(d["currency"], "EUR");
    assert_eq!(d["supplier"], "Acme GmbH");
    assert_eq!(d["criticality"], "high");
    assert_eq!(d["end_of_life"], "2034-01-01");
    assert_eq!(device(&env, "A-2")["cost"], "0.5");
    assert_eq!(device(&env, "A-3")["cost"], Value::Null);
    assert_eq!(
        env.sql(if env.backend() == common::Backend::Postgres {
            "SELECT pg_typeof(cost), cost FROM devices WHERE serial = 'A-1'"
        } else {
            "SELECT typeof(cost), cost FROM devices WHERE serial = 'A-1'"
        })
        .trim(),
        "text|129.90"
    );
    // Export lists the columns after notes, and an export imports back unchanged.
    let csv = env.ok(&["inventory", "export"]);
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(
            "notes,purchase_date,warranty_until,cost,currency,supplier,criticality,end_of_life"
        ),
        "{header}"
    );
    assert!(
        csv.contains("2024-01-15,2027-01-15,129.90,EUR,Acme GmbH,high,2034-01-01"),
        "{csv}"
    );
    let back = write(&env, "back.csv", &csv);
    let before = env.dump();
    let out = env.ok(&["inventory", "import", &back, "--mode", "upsert"]);
    assert!(out.contains("0 updated, 3 unchanged"), "{out}");
    assert_eq!(env.dump(), before);
    // JSON Lines carries them too.
    let jl = env.ok(&["inventory", "export", "--format", "jsonl"]);
    let first: Value = serde_json::from_str(jl.lines().next().unwrap()).unwrap();
    assert_eq!(first["cost"], "129.90");
    assert_eq!(first["criticality"], "high");
    // The text table of device show lists them.
    let show = env.ok(&["device", "show", "A-1"]);
    assert!(show.contains("warranty_until   2027-01-15"), "{show}");
    // Device marks cover the new columns: clean now, a shell edit of a cost is found.
    let (code, v) = audit(&env, &["--check", "device-mark"]);
    assert_eq!((code, found(&v)), (0, BTreeSet::new()), "{v}");
    env.sql("UPDATE devices SET cost = '12.90' WHERE serial = 'A-1'");
    let (code, v) = audit(&env, &["--check", "device-mark"]);
    assert_eq!((code, found(&v)), (1, set(&[("device-mark", "A-1")])));
}

#[test]
fn bad_asset_cells_are_one_line_each_and_nothing_is_written() {
    let env = Env::init();
    let ok = write(
        &env,
        "ok.csv",
        &format!("{HEADER}A-1,m1,berlin,B1,,,,,,,\n"),
    );
    env.ok(&["inventory", "import", &ok]);
    let cases: &[(&str, &str)] = &[
        ("A-9,m,s,b,2023-02-29,,,,,,", "column 'purchase_date': \"2023-02-29\" is not a date (no day 29 in that month)"),
        ("A-9,m,s,b,04/03/2023,,,,,,", "column 'purchase_date': \"04/03/2023\" is not a date; write YYYY-MM-DD (day and month order is ambiguous"),
        ("A-9,m,s,b,,2027-13-01,,,,,", "column 'warranty_until': \"2027-13-01\" is not a date (month 13)"),
        ("A-9,m,s,b,,,-5,EUR,,,", "column 'cost': \"-5\" is negative; a cost is 0 or more"),
        ("A-9,m,s,b,,,\"1,50\",EUR,,,", "column 'cost': \"1,50\" is not a cost; write a plain number with a point"),
        ("A-9,m,s,b,,,1.2E+3,EUR,,,", "column 'cost': \"1.2E+3\" is not a cost; a spreadsheet wrote it as an exponent"),
        ("A-9,m,s,b,,,1.23456,EUR,,,", "column 'cost': \"1.23456\" has 5 decimals"),
        ("A-9,m,s,b,,,12,,,,", "column 'cost': \"12\" has no currency"),
        ("A-9,m,s,b,,,12,EURO,,,", "column 'currency': \"EURO\" is not a currency; give its ISO 4217 code"),
        ("A-9,m,s,b,,,12,XYZ,,,", "column 'currency': \"XYZ\" is not an ISO 4217 currency code"),
        ("A-9,m,s,b,,,,,,urgent,", "column 'criticality': \"urgent\" is not a criticality (low, medium, high, critical)"),
        ("A-9,m,s,b,,,,,,,2034-1-1", "column 'end_of_life': \"2034-1-1\" is not a date"),
        ("A-9,m,s,b,,,,,Acme\u{202e}Ltd,,", "column 'supplier': \"Acme\\u{202e}Ltd\" contains U+202E RIGHT-TO-LEFT OVERRIDE"),
    ];
    let before = env.dump();
    for (row, want) in cases {
        let f = write(
            &env,
            "bad.csv",
            &format!("{HEADER}A-5,m1,berlin,B1,,,,,,,\n{row}\n"),
        );
        let err = env.fails(&["inventory", "import", &f], 3);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("bad.csv:3:")).collect();
        assert_eq!(lines.len(), 1, "{row}: {err}");
        assert!(lines[0].contains(want), "{row}: {err}");
        assert!(err.contains("nothing was written"), "{err}");
        assert_eq!(env.dump(), before, "{row}: the registry changed");
    }
    // On update, a cost needs a currency stored or given; clearing it is refused too.
    let f = write(&env, "u.csv", "serial,cost\nA-1,10\n");
    let err = env.fails(&["inventory", "import", &f, "--mode", "update"], 7);
    assert!(
        err.contains("u.csv:2: column 'cost': \"10\" has no currency")
            && err.contains("device 'A-1' has none stored"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
    let f = write(&env, "u.csv", "serial,cost,currency\nA-1,10,usd\n");
    env.ok(&["inventory", "import", &f, "--mode", "update"]);
    assert_eq!(device(&env, "A-1")["currency"], "USD");
    let f = write(&env, "u.csv", "serial,currency\nA-1,<clear>\n");
    let err = env.fails(&["inventory", "import", &f, "--mode", "update"], 7);
    assert!(err.contains("has no currency"), "{err}");
}

#[test]
fn device_set_validates_asset_fields() {
    let env = Env::init();
    let ok = write(
        &env,
        "ok.csv",
        &format!("{HEADER}A-1,m1,berlin,B1,,,,,,,\n"),
    );
    env.ok(&["inventory", "import", &ok]);
    let before = env.dump();
    let err = env.fails(&["device", "set", "A-1", "cost=12.50"], 3);
    assert!(
        err.contains("A-1: cost \"12.50\" needs a currency (e.g. cost=12.50 currency=EUR)"),
        "{err}"
    );
    let err = env.fails(&["device", "set", "A-1", "warranty_until=2027-02-30"], 3);
    assert!(
        err.contains("warranty_until: \"2027-02-30\" is not a date"),
        "{err}"
    );
    let err = env.fails(&["device", "set", "A-1", "criticality=vital"], 3);
    assert!(err.contains("is not a criticality"), "{err}");
    assert_eq!(env.dump(), before);
    let o = env.json(&[
        "device",
        "set",
        "A-1",
        "cost=0012.50",
        "currency=chf",
        "criticality=Critical",
        "supplier=Acme",
        "end_of_life=2035-12-31",
    ]);
    assert_eq!(o["changes"].as_array().unwrap().len(), 5, "{o}");
    let d = device(&env, "A-1");
    assert_eq!(
        (
            d["cost"].as_str(),
            d["currency"].as_str(),
            d["criticality"].as_str()
        ),
        (Some("12.50"), Some("CHF"), Some("critical"))
    );
    // The change is a device.updated event with the stored values.
    let h = env.json(&["device", "history", "A-1"]);
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "device.updated");
    assert_eq!(last["details"]["changes"]["cost"][1], "12.50");
    // Clearing the currency while a cost is stored is refused.
    let err = env.fails(&["device", "set", "A-1", "currency="], 3);
    assert!(err.contains("needs a currency"), "{err}");
    let (code, v) = audit(&env, &["--check", "device-mark"]);
    assert_eq!((code, found(&v)), (0, BTreeSet::new()), "{v}");
}

#[test]
fn maintenance_log_records_notes_costs_and_returns_as_chained_events() {
    let env = Env::init();
    let ok = write(
        &env,
        "ok.csv",
        "serial,site,status\nM-1,berlin,registered\n",
    );
    env.ok(&["inventory", "import", &ok]);
    env.ok(&[
        "device",
        "set",
        "M-1",
        "status=deployed",
        "--force",
        "--reason",
        "test fleet",
    ]);
    // Into maintenance with a note; more work while there; an exact total.
    let o = env.json(&["device", "maintenance", "M-1", "--note", "fan noisy"]);
    assert_eq!(o["status"], "maintenance");
    assert_eq!(o["logged"]["note"], "fan noisy");
    env.ok(&[
        "device",
        "maintenance",
        "M-1",
        "--note",
        "fan replaced",
        "--cost",
        "0.1",
        "--currency",
        "eur",
    ]);
    env.ok(&[
        "device",
        "maintenance",
        "M-1",
        "--note",
        "cable",
        "--cost",
        "0.2",
        "--currency",
        "EUR",
    ]);
    env.ok(&[
        "device",
        "maintenance",
        "M-1",
        "--note",
        "import fee",
        "--cost",
        "1500",
        "--currency",
        "JPY",
    ]);
    let o = env.json(&[
        "device",
        "return",
        "M-1",
        "--note",
        "board exchanged",
        "--rma",
        "RMA-2291",
    ]);
    assert_eq!(o["status"], "deployed");
    let log = env.json(&["device", "maintenance", "M-1", "--list"]);
    let entries = log["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "maintenance",
            "maintenance",
            "maintenance",
            "maintenance",
            "return"
        ]
    );
    assert_eq!(entries[0]["from"], "deployed");
    assert_eq!(entries[0]["to"], "maintenance");
    assert_eq!(entries[1]["from"], "maintenance");
    assert_eq!(entries[1]["cost"], "0.1");
    assert_eq!(entries[4]["rma"], "RMA-2291");
    assert_eq!(entries[4]["to"], "deployed");
    // 0.1 + 0.2 is 0.3 exactly (no floating point), per currency.
    assert_eq!(
        log["totals"],
        serde_json::json!([
            {"currency": "EUR", "cost": "0.3", "entries": 2},
            {"currency": "JPY", "cost": "1500", "entries": 1}
        ])
    );
    let table = env.ok(&["device", "maintenance", "M-1", "--list"]);
    assert!(table.contains("total 0.3 EUR over 2 entries"), "{table}");
    assert!(table.contains("RMA-2291"), "{table}");
    // They are events of the hash-chained log, of their own kinds.
    let h = env.json(&["device", "history", "M-1"]);
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| k.starts_with("maintenance."))
        .collect();
    assert_eq!(kinds.len(), 5);
    assert_eq!(kinds[4], "maintenance.returned");
    env.ok(&["log", "verify"]);

    // Bad input: one line, nothing written.
    let before = env.dump();
    let long = "x".repeat(2001);
    for (args, code, want) in [
        (
            vec!["--note", "a\u{7}b"],
            3,
            "--note: \"a\\u{7}b\" contains the control character",
        ),
        (
            vec!["--note", "two\nlines"],
            3,
            "contains the control character",
        ),
        (
            vec!["--note", long.as_str()],
            3,
            "the note is 2001 characters long; the limit is 2000",
        ),
        (
            vec!["--note", "x", "--cost=-1", "--currency", "EUR"],
            3,
            "--cost: \"-1\" is negative",
        ),
        (
            vec!["--note", "x", "--cost", "1", "--currency", "ABC"],
            3,
            "--currency: \"ABC\" is not an ISO 4217",
        ),
        (vec!["--note", "x", "--cost", "1"], 2, "--currency"),
        (vec!["--note", "   "], 3, "--note: the note is empty"),
    ] {
        let mut a = vec!["device", "maintenance", "M-1"];
        a.extend(args.iter().copied());
        let err = env.fails(&a, code);
        assert!(err.contains(want), "{a:?}: {err}");
        assert_eq!(env.dump(), before, "{a:?}");
    }
    let err = env.fails(&["device", "return", "M-1", "--rma", "RMA\u{200b}1"], 3);
    assert!(err.contains("--rma: ") && err.contains("U+200B"), "{err}");
    // A return needs a device in maintenance (the lifecycle rule).
    let err = env.fails(&["device", "return", "M-1", "--note", "again"], 7);
    assert!(err.contains("is deployed, not in maintenance"), "{err}");
    assert_eq!(env.dump(), before);
    let err = env.fails(&["device", "maintenance", "NOPE", "--list"], 3);
    assert!(err.contains("no device with serial 'NOPE'"), "{err}");
}

fn fleet_with_dates(env: &Env) {
    let f = write(
        env,
        "dates.csv",
        &format!(
            "{HEADER}W-SOON,m1,berlin,B1,,{},,,,,\n\
             W-LATER,m1,berlin,B1,,{},,,,,\n\
             W-PAST,m1,berlin,B1,,{},,,,,\n\
             W-RETIRED,m1,berlin,B1,,{},,,,,{}\n\
             E-PAST,m1,lyon,B2,,,,,,,{}\n\
             E-TODAY,m1,lyon,B2,,,,,,,{}\n\
             E-FUTURE,m1,lyon,B2,,,,,,,{}\n",
            day(10),
            day(200),
            day(-3),
            day(5),
            day(-100),
            day(-400),
            day(0),
            day(1),
        ),
    );
    env.ok(&["inventory", "import", &f]);
    // Out of service: neither check reports it.
    env.ok(&[
        "device",
        "set",
        "W-RETIRED",
        "status=retired",
        "--force",
        "--reason",
        "scrapped",
    ]);
}

#[test]
fn warranty_expiring_reports_warranties_ending_within_the_window() {
    let env = Env::init();
    fleet_with_dates(&env);
    // Without --within it does not run, and says so; asked for, it is a usage error.
    let (_, v) = audit(&env, &[]);
    assert_eq!(
        v["summary"]["not_run"]["warranty-expiring"],
        "--within DAYS"
    );
    let err = env.fails(&["audit", "--check", "warranty-expiring"], 2);
    assert!(
        err.contains("--check warranty-expiring needs --within DAYS"),
        "{err}"
    );
    // Triggers: W-SOON ends in 10 days.
    let (code, v) = audit(&env, &["--check", "warranty-expiring", "--within", "30"]);
    assert_eq!(code, 1);
    assert_eq!(found(&v), set(&[("warranty-expiring", "W-SOON")]));
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("warranty ends on {} (in 10 days", day(10))),
        "{msg}"
    );
    assert_eq!(v["summary"]["warranty_within_days"], 30);
    // A wider window catches W-LATER too; ended warranties and retired devices never.
    let (_, v) = audit(&env, &["--check", "warranty-expiring", "--within", "365"]);
    assert_eq!(
        found(&v),
        set(&[
            ("warranty-expiring", "W-SOON"),
            ("warranty-expiring", "W-LATER")
        ])
    );
    // Does not trigger: a 5-day window.
    let (code, v) = audit(&env, &["--check", "warranty-expiring", "--within", "5"]);
    assert_eq!((code, found(&v)), (0, BTreeSet::new()));
}

#[test]
fn end_of_life_reached_reports_devices_past_their_end_of_life() {
    let env = Env::init();
    fleet_with_dates(&env);
    let (code, v) = audit(&env, &["--check", "end-of-life-reached"]);
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[
            ("end-of-life-reached", "E-PAST"),
            ("end-of-life-reached", "E-TODAY")
        ])
    );
    let msg = v["findings"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "end of life was {} but the device is registered",
            day(-400)
        )),
        "{msg}"
    );
    // Does not trigger once those are retired (E-FUTURE is not due yet).
    for s in ["E-PAST", "E-TODAY"] {
        env.ok(&[
            "device",
            "set",
            s,
            "status=retired",
            "--force",
            "--reason",
            "end of life",
        ]);
    }
    let (code, v) = audit(&env, &["--check", "end-of-life-reached"]);
    assert_eq!((code, found(&v)), (0, BTreeSet::new()));
}

#[test]
fn cert_expiring_flags_critical_devices_earlier() {
    let env = Env::with_ca();
    // Real 50-day certificates from a custom profile.
    let prof = env.path("fifty.toml");
    std::fs::write(
        &prof,
        "description = \"fifty\"\nkind = \"end-entity\"\n[subject]\nCN = \"{serial}\"\n[validity]\ndays = 50\n[extensions]\nkey_usage = [\"digitalSignature\"]\nextended_key_usage = [\"clientAuth\"]\n",
    )
    .unwrap();
    for s in ["C-LOW", "C-NONE", "C-HIGH", "C-CRIT"] {
        env.ok(&[
            "identity",
            "issue",
            s,
            "--profile",
            prof.to_str().unwrap(),
            "--out",
            env.path("out").to_str().unwrap(),
            "--passphrase-file",
            env.pass(),
        ]);
    }
    env.ok(&["device", "set", "C-LOW", "criticality=low"]);
    env.ok(&["device", "set", "C-HIGH", "criticality=high"]);
    env.ok(&["device", "set", "C-CRIT", "criticality=critical"]);
    // 30 days: only high (x2 = 60) and critical (x4 = 120) reach 50 days.
    let (code, v) = audit(
        &env,
        &["--check", "cert-expiring", "--expiring-within", "30"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        found(&v),
        set(&[("cert-expiring", "C-HIGH"), ("cert-expiring", "C-CRIT")])
    );
    let crit = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["device"] == "C-CRIT")
        .unwrap();
    assert!(
        crit["message"]
            .as_str()
            .unwrap()
            .contains("flagged 4x earlier (120 days) for a critical device"),
        "{crit}"
    );
    // 20 days: critical (80) only.
    let (_, v) = audit(
        &env,
        &["--check", "cert-expiring", "--expiring-within", "20"],
    );
    assert_eq!(found(&v), set(&[("cert-expiring", "C-CRIT")]));
    // 10 days: none (critical: 40 < 49).
    let (code, v) = audit(
        &env,
        &["--check", "cert-expiring", "--expiring-within", "10"],
    );
    assert_eq!((code, found(&v)), (0, BTreeSet::new()));
    // 60 days: everyone, whatever the criticality.
    let (_, v) = audit(
        &env,
        &["--check", "cert-expiring", "--expiring-within", "60"],
    );
    assert_eq!(found(&v).len(), 4);
}
