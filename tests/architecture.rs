//! The layering rules of README "Architecture", checked on the source: a change that
//! breaks one fails here instead of quietly eroding a seam.
//!
//! - only `src/store/` names rusqlite (the database is behind one seam);
//! - `src/pki/` names neither the store nor a workflow (the PKI is pure);
//! - `src/cli/` opens no transaction and holds no connection (workflows own them);
//! - clap and indicatif stay in `src/cli/` and `src/main.rs`;
//! - workflows reach devices only through `device::DeviceLink`: no protocol session
//!   or codec outside `src/device/`, `src/wire/` and the simulator.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every line of `src/` (outside comments) that mentions one of `needles`, for files
/// under `under` that are not under any of `except`.
fn offenders(under: &str, except: &[&str], needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join(under), &mut files);
    let mut found = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if except.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        for (i, line) in fs::read_to_string(&f).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_the_store_names_rusqlite() {
    let bad = offenders("src", &["src/store/"], &["rusqlite"]);
    assert!(
        bad.is_empty(),
        "rusqlite outside src/store:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_pki_names_neither_the_store_nor_a_workflow() {
    let bad = offenders(
        "src/pki",
        &[],
        &["crate::store", "crate::app", "rusqlite", "Reader", "Tx<"],
    );
    assert!(
        bad.is_empty(),
        "pki depends on storage or workflows:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_cli_opens_no_transaction_and_holds_no_connection() {
    let bad = offenders(
        "src/cli",
        &[],
        &[
            "rusqlite",
            "Connection",
            "Transaction",
            "Tx<",
            ".write()",
            ".write_trusted()",
            ".conn()",
        ],
    );
    assert!(
        bad.is_empty(),
        "the CLI does a workflow's job:\n{}",
        bad.join("\n")
    );
}

#[test]
fn clap_and_indicatif_stay_in_the_cli() {
    let bad = offenders(
        "src",
        &["src/cli/", "src/main.rs"],
        &["clap::", "indicatif"],
    );
    assert!(
        bad.is_empty(),
        "clap/indicatif below the CLI:\n{}",
        bad.join("\n")
    );
}

#[test]
fn workflows_reach_devices_only_through_the_device_link() {
    let bad = offenders(
        "src",
        &[
            "src/device/",
            "src/wire/",
            "src/sim/",
            // Unit tests build links over in-memory sessions.
            "src/app/station/flow_tests.rs",
            // The fuzz entry points feed the codecs directly, without a port.
            "src/fuzzing.rs",
        ],
        &[
            "Session<",
            "Session::",
            "NrfSession",
            "wire::nrf91",
            "SLOT_",
        ],
    );
    assert!(
        bad.is_empty(),
        "device protocol outside src/device:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_rules_see_a_violation() {
    // The scanner itself: it must find what it is looking for.
    assert!(!offenders("src/store", &[], &["rusqlite"]).is_empty());
    assert!(!offenders("src/cli", &[], &["clap::"]).is_empty());
    assert!(!offenders("src/device", &[], &["Session<"]).is_empty());
}
