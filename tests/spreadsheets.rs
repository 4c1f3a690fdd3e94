//! CSVs as spreadsheets really save them (fixtures exported by LibreOffice Calc, see
//! fixtures/spreadsheets/README.md), and exports that spreadsheets open right.
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Env;
use serde_json::Value;

fn sheet(env: &Env, name: &str) -> String {
    env.fixture("spreadsheets", name)
}

fn device(env: &Env, serial: &str) -> Value {
    env.json(&["device", "show", serial])
}

fn count(env: &Env) -> String {
    env.sql("SELECT count(*) FROM devices").trim().to_string()
}

/// What every `installers.*` export holds once imported.
fn assert_installers(env: &Env) {
    assert_eq!(count(env), "4");
    let d = device(env, "ACME-1001");
    assert_eq!(d["site"], "Zürich");
    assert_eq!(d["mac"], "0a:1b:2c:3d:4e:5f");
    assert_eq!(d["imei"], "352099001761481");
    let d = device(env, "ACME-1002");
    assert_eq!(d["site"], "Zürich", "spaces around the site are trimmed");
    assert_eq!(d["mac"], "0a:1b:2c:3d:4e:60");
    assert_eq!(d["imei"], "356938035643809");
    assert_eq!(device(env, "ACME-1003")["mac"], "0a:1b:2c:3d:4e:61");
    assert_eq!(device(env, "ACME-1004")["mac"], "0a:1b:2c:3d:4e:62");
    assert!(device(env, "ACME-1004")["imei"].is_null());
}

#[test]
fn a_semicolon_csv_from_calc_is_detected_and_said() {
    let env = Env::init();
    let f = sheet(&env, "installers-semicolon.csv");
    let o = env.run(&["inventory", "import", &f]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stderr}\n{stdout}");
    assert!(
        stderr.contains("installers-semicolon.csv: delimiter ';' (detected from the header line"),
        "{stderr}"
    );
    // The three in-use but empty rows Calc writes as ";;;;" are skipped and counted.
    assert!(
        stdout.contains("4 rows (3 empty rows skipped): 4 created"),
        "{stdout}"
    );
    assert_installers(&env);
    // The event names the physical line.
    let h = env.json(&["device", "history", "ACME-1004"]);
    assert_eq!(h["events"][0]["details"]["line"], 5);
}

#[test]
fn comma_and_tab_exports_import_the_same_and_json_says_the_delimiter() {
    let env = Env::init();
    let f = sheet(&env, "installers-comma.csv");
    let j = env.json(&["inventory", "import", &f]);
    assert_eq!(j["delimiter"], ",");
    assert_eq!(j["delimiter_detected"], true);
    assert_eq!(j["rows"], 4);
    assert_eq!(j["skipped_empty_rows"], 3);
    assert_eq!(j["created"], 4);
    assert_installers(&env);

    let f = sheet(&env, "sites-tab.csv");
    let o = env.run(&["inventory", "import", &f]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("delimiter 'tab' (detected"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 rows (3 empty rows skipped): 2 created"));
    assert_eq!(device(&env, "ACME-3002")["location"], "rack 2");
    let h = env.json(&["device", "history", "ACME-3002"]);
    assert_eq!(
        h["events"][0]["details"]["line"], 4,
        "the empty row counts as a line"
    );
}

#[test]
fn delimiter_option_overrides_and_a_wrong_one_says_what_the_header_holds() {
    let env = Env::init();
    let f = sheet(&env, "installers-semicolon.csv");
    let before = env.dump();
    let err = env.fails(&["inventory", "import", &f, "--delimiter", ","], 3);
    assert!(
        err.contains(r#"installers-semicolon.csv:1: unknown column 'serial;"site";"mac";"imei";"model"' in the header (it holds ';': for a semicolon-separated file pass --delimiter ';'"#),
        "{err}"
    );
    let j = env.json(&["inventory", "import", &f, "--delimiter", ";", "--dry-run"]);
    assert_eq!(j["delimiter"], ";");
    assert_eq!(j["delimiter_detected"], false);
    assert_eq!(j["created"], 4);
    env.fails(&["inventory", "import", &f, "--delimiter", "|"], 2);
    // A header that could be either is refused, not guessed.
    std::fs::write(env.path("both.csv"), "serial,site;model\nA,b;c\n").unwrap();
    let err = env.fails(&["inventory", "import", "both.csv"], 3);
    assert!(
        err.contains("both.csv:1: cannot tell the delimiter: the header line has 1 ',' and 1 ';'; pass --delimiter"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
}

#[test]
fn dry_run_shows_every_normalised_cell() {
    let env = Env::init();
    let f = sheet(&env, "installers-semicolon.csv");
    let out = env.ok(&["inventory", "import", &f, "--dry-run"]);
    for line in [
        r#"line 2, serial: "  ACME-1001 " -> "ACME-1001""#,
        r#"line 2, mac: "0A-1B-2C-3D-4E-5F" -> "0a:1b:2c:3d:4e:5f""#,
        r#"line 2, imei: "35-209900-176148-1" -> "352099001761481""#,
        r#"line 3, site: " Zürich " -> "Zürich""#,
        r#"line 3, mac: "0a1b.2c3d.4e60" -> "0a:1b:2c:3d:4e:60""#,
        r#"line 3, imei: "35 693803 564380 9" -> "356938035643809""#,
        r#"line 4, mac: "0A1B2C3D4E61" -> "0a:1b:2c:3d:4e:61""#,
    ] {
        assert!(out.contains(line), "missing {line}:\n{out}");
    }
    // Values already canonical are not listed.
    assert!(!out.contains("line 5, mac"), "{out}");
    assert!(!out.contains("line 4, imei"), "{out}");
    assert_eq!(count(&env), "0");
    let j = env.json(&["inventory", "import", &f, "--dry-run"]);
    assert_eq!(j["normalised"], 7);
    assert_eq!(j["normalisations"][2]["column"], "imei");
    assert_eq!(j["normalisations"][2]["from"], "35-209900-176148-1");
    assert_eq!(j["normalisations"][2]["to"], "352099001761481");
    // The real import says how many, and stores the canonical forms.
    let out = env.ok(&["inventory", "import", &f]);
    assert!(out.contains("7 cells stored in canonical form"), "{out}");
    assert_installers(&env);
    // Import again: the canonical values are what the registry has; nothing changes.
    let before = env.dump();
    let out = env.ok(&["inventory", "import", &f, "--mode", "upsert"]);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(env.dump(), before);
}

#[test]
fn invisible_and_bidi_characters_are_refused_naming_line_column_and_code_point() {
    let env = Env::init();
    let f = sheet(&env, "lookalike.csv");
    let before = env.dump();
    let err = env.fails(&["inventory", "import", &f], 3);
    for want in [
        "lookalike.csv:3: column 'site': \"lyon\\u{200b}-2\" contains U+200B ZERO WIDTH SPACE at character 5",
        "lookalike.csv:4: column 'site': \"lyon-\\u{202e}2\" contains U+202E RIGHT-TO-LEFT OVERRIDE at character 6",
        "lookalike.csv:5: column 'hardware_id': \"HW\\u{feff}-4\" contains U+FEFF ZERO WIDTH NO-BREAK SPACE",
        "3 of 4 rows are invalid; nothing was written",
    ] {
        assert!(err.contains(want), "missing {want}:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.contains("lookalike.csv:")).count(),
        4,
        "{err}"
    );
    assert_eq!(env.dump(), before);
    // The rest goes in with --partial; only one lyon-2 exists.
    let o = env.run(&["inventory", "import", &f, "--partial"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        env.sql("SELECT count(*), min(site) FROM devices").trim(),
        "1|lyon-2"
    );
    // Free text refuses bidi controls too; a no-break space is fine there but not in an identifier.
    std::fs::write(
        env.path("free.csv"),
        "serial,model,notes,batch\nB-1,a\u{a0}b,fine,x\nB-2,m,evil \u{2066}x,y\nB-3,m,n,b\u{a0}1\n",
    )
    .unwrap();
    let err = env.fails(&["inventory", "import", "free.csv"], 3);
    assert!(
        err.contains(
            "free.csv:3: column 'notes': \"evil \\u{2066}x\" contains U+2066 LEFT-TO-RIGHT ISOLATE"
        ),
        "{err}"
    );
    assert!(err.contains("free.csv:4: column 'batch': \"b\\u{a0}1\" contains U+00A0 NO-BREAK SPACE at character 2; invisible and bidi control characters are refused in identifiers"), "{err}");
    assert!(!err.contains("free.csv:2"), "{err}");
    // `device set` applies the same rules.
    let err = env.fails(&["device", "set", "ACME-2001", "site=lyon\u{200b}-2"], 3);
    assert!(
        err.contains("U+200B ZERO WIDTH SPACE at character 5"),
        "{err}"
    );
    assert_eq!(device(&env, "ACME-2001")["site"], "lyon-2");
}

#[test]
fn a_latin1_export_is_refused_with_the_fix() {
    let env = Env::init();
    let f = sheet(&env, "installers-latin1.csv");
    let before = env.dump();
    let err = env.fails(&["inventory", "import", &f], 3);
    assert!(
        err.contains("installers-latin1.csv:2: column 'site': not valid UTF-8 (byte 0xfc at offset 1); save the file as UTF-8"),
        "{err}"
    );
    assert_eq!(env.dump(), before);
}

#[test]
fn a_rejected_import_says_nothing_written_and_what_would_have_been() {
    let env = Env::init();
    std::fs::write(env.path("a.csv"), "serial,site\nA-1,x\nA-2,y\n").unwrap();
    env.ok(&["inventory", "import", "a.csv"]);
    std::fs::write(
        env.path("b.csv"),
        "serial,site,mac\nA-1,moved,\nA-3,new,\nA-4,new,\nA-5,bad,zz\n",
    )
    .unwrap();
    let o = env.run(&["inventory", "import", "b.csv", "--mode", "upsert"]);
    assert_eq!(o.status.code(), Some(3));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("b.csv: 4 rows: nothing written: 2 would have been created, 1 would have been updated, 0 unchanged, 1 rejected"),
        "{out}"
    );
    assert!(
        out.contains("would have been updated:\n  A-1 (line 2): site"),
        "{out}"
    );
    assert!(out.lines().last() == Some("nothing written"), "{out}");
    assert!(!out.contains(" 2 created"), "{out}");
    assert_eq!(device(&env, "A-1")["site"], "x");
    // Only rejected rows: still "nothing written", and the error names the file.
    std::fs::write(env.path("c.csv"), "serial,mac\nA-9,zz\n").unwrap();
    let o = env.run(&["inventory", "import", "c.csv"]);
    assert_eq!(o.status.code(), Some(3));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("c.csv: 1 rows: nothing written: 0 would have been created"),
        "{out}"
    );
}

#[test]
fn the_errors_file_neutralises_formulas_keeps_the_delimiter_and_imports_back() {
    let env = Env::init();
    std::fs::write(
        env.path("in.csv"),
        "serial;model;mac\nC-1;=HYPERLINK(\"http://x\");zz\nC-2;'=1+1;aa:bb:cc:dd:ee:ff\nC-3;@SUM(A1);bad\n",
    )
    .unwrap();
    let o = env.run(&[
        "inventory",
        "import",
        "in.csv",
        "--partial",
        "--errors",
        "bad.csv",
    ]);
    assert_eq!(o.status.code(), Some(1));
    // How the file is read is said before the rows it rejects.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("in.csv: delimiter ';' (detected from the header line"),
        "{stderr}"
    );
    assert!(stderr.contains("in.csv:2: column 'mac'"), "{stderr}");
    let bad = std::fs::read_to_string(env.path("bad.csv")).unwrap();
    let lines: Vec<&str> = bad.lines().collect();
    assert_eq!(lines[0], "serial;model;mac;reject_reason");
    assert!(
        lines[1].starts_with("C-1;\"'=HYPERLINK(\"\"http://x\"\")\";zz;"),
        "{bad}"
    );
    assert!(lines[2].starts_with("C-3;'@SUM(A1);bad;"), "{bad}");
    for l in &lines {
        for cell in l.split(';') {
            let cell = cell.trim_start_matches('"');
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "cell {cell:?} would execute: {bad}"
            );
        }
    }
    // Fixed and imported again, the values are what the original cells meant.
    let fixed = bad
        .replace(";zz;", ";aa:bb:cc:dd:ee:01;")
        .replace(";bad;", ";aa:bb:cc:dd:ee:02;");
    std::fs::write(env.path("fixed.csv"), fixed).unwrap();
    env.ok(&["inventory", "import", "fixed.csv"]);
    assert_eq!(device(&env, "C-1")["model"], "=HYPERLINK(\"http://x\")");
    assert_eq!(device(&env, "C-3")["model"], "@SUM(A1)");
    assert_eq!(device(&env, "C-2")["model"], "=1+1");
}

/// A registry with the installers' devices and a formula-looking model.
fn installers_env() -> Env {
    let env = Env::init();
    let f = sheet(&env, "installers-comma.csv");
    env.ok(&["inventory", "import", &f]);
    env.ok(&["device", "set", "ACME-1003", "model==1+1"]);
    env
}

#[test]
fn excel_csv_has_a_bom_crlf_and_imports_back_unchanged() {
    let env = installers_env();
    env.ok(&["inventory", "export", "--excel", "-o", "x.csv"]);
    let b = std::fs::read(env.path("x.csv")).unwrap();
    assert!(
        b.starts_with(b"\xEF\xBB\xBFserial,hardware_id,"),
        "{:?}",
        &b[..20]
    );
    let text = std::str::from_utf8(&b[3..]).unwrap();
    assert!(text.contains("ACME-1001,,Sensor,,,Zürich,"), "{text}");
    assert!(text.contains(",'=1+1,"), "{text}");
    assert_eq!(text.matches("\r\n").count(), text.matches('\n').count());
    assert_eq!(text.matches("\r\n").count(), 5);
    // Without --excel: no BOM (as before).
    let plain = env.ok(&["inventory", "export"]);
    assert!(plain.starts_with("serial,"));
    // Semicolons for a European Excel; both import back without a change.
    env.ok(&[
        "inventory",
        "export",
        "--excel",
        "--delimiter",
        ";",
        "-o",
        "eu.csv",
    ]);
    let eu = std::fs::read_to_string(env.path("eu.csv")).unwrap();
    assert!(eu.starts_with("\u{feff}serial;hardware_id;model;"), "{eu}");
    let before = env.dump();
    for f in ["x.csv", "eu.csv"] {
        let out = env.ok(&["inventory", "import", f, "--mode", "upsert"]);
        assert!(out.contains("nothing to change"), "{f}: {out}");
    }
    assert_eq!(env.dump(), before);
    env.fails(&["inventory", "export", "--format", "json", "--excel"], 2);
    env.fails(&["inventory", "export", "--format", "xlsx"], 2);
}

/// The Python with openpyxl: `CRADLE_TEST_OPENPYXL` (set by `.ci/run`) or the venv
/// `.ci/run` creates. On CI a missing peer fails the test.
fn openpyxl_python() -> Option<PathBuf> {
    let dir = std::env::var_os("CRADLE_TEST_OPENPYXL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin")
        });
    let py = dir.join("python3");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import openpyxl"])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "openpyxl not found in {} (.ci/run installs it)",
        dir.display()
    );
    eprintln!("skipping: openpyxl not installed (run .ci/run or set CRADLE_TEST_OPENPYXL)");
    None
}

#[test]
fn xlsx_export_is_read_back_by_openpyxl_as_text_cells() {
    let env = installers_env();
    env.ok(&["device", "set", "ACME-1001", "attr.color=grün"]);
    let j = env.json(&["inventory", "export", "--format", "xlsx", "-o", "d.xlsx"]);
    assert_eq!(j["devices"], 4);
    let b = std::fs::read(env.path("d.xlsx")).unwrap();
    assert!(b.starts_with(b"PK\x03\x04"), "a zip container");
    // A value longer than an xlsx cell holds is refused and no file appears.
    let long = format!("notes={}", "n".repeat(40_000));
    env.ok(&["device", "set", "ACME-1004", &long]);
    let err = env.fails(
        &["inventory", "export", "--format", "xlsx", "-o", "long.xlsx"],
        3,
    );
    assert!(
        err.contains("device 'ACME-1004': a value of 40000 characters does not fit in an xlsx cell (at most 32767)"),
        "{err}"
    );
    assert!(!env.path("long.xlsx").exists());
    let Some(py) = openpyxl_python() else { return };
    let script = r#"
import json, sys, openpyxl
ws = openpyxl.load_workbook(sys.argv[1]).active
print(json.dumps({"title": ws.title, "freeze": ws.freeze_panes,
    "rows": [[(c.value, c.data_type) for c in r] for r in ws.iter_rows()]}))
"#;
    let o = Command::new(py)
        .args(["-c", script])
        .arg(env.path("d.xlsx"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["title"], "devices");
    assert_eq!(v["freeze"], "A2");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let header: Vec<&str> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert_eq!(
        header,
        [
            "serial",
            "hardware_id",
            "model",
            "hw_rev",
            "batch",
            "site",
            "location",
            "owner",
            "mac",
            "imei",
            "status",
            "notes",
            "purchase_date",
            "warranty_until",
            "cost",
            "currency",
            "supplier",
            "criticality",
            "end_of_life",
            "attr.color"
        ]
    );
    let cell = |r: usize, c: usize| rows[r][c].clone();
    assert_eq!(cell(1, 0), serde_json::json!(["ACME-1001", "s"]));
    assert_eq!(cell(1, 5), serde_json::json!(["Zürich", "s"]));
    assert_eq!(
        cell(1, 9),
        serde_json::json!(["352099001761481", "s"]),
        "IMEI stays text"
    );
    assert_eq!(cell(1, 19), serde_json::json!(["grün", "s"]));
    // A text cell, not a formula, and no ' prefix.
    assert_eq!(cell(3, 2), serde_json::json!(["=1+1", "s"]));
    assert_eq!(cell(2, 19)[0], Value::Null);
}
