//! Replays the fuzz corpora and the kept crash inputs through `cradle::fuzzing` under
//! plain `cargo test`: every file under `tests/fuzz/corpus/NAME/` and
//! `tests/fuzz/regressions/NAME/` goes to the target NAME and must not panic.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// Replays every input under `tests/fuzz/KIND/*/`; returns how many files ran and fails
/// naming every input that panicked.
fn replay(kind: &str) -> usize {
    let root = fuzz_dir().join(kind);
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut n = 0;
    let mut panicked = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let target = cradle::fuzzing::target(&name).unwrap_or_else(|| {
            panic!(
                "{}: no fuzz target '{name}' (known: {:?})",
                dir.display(),
                cradle::fuzzing::TARGETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
            )
        });
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panicked.push(format!("{} (target {name})", f.display()));
            }
            n += 1;
        }
    }
    assert!(panicked.is_empty(), "inputs that panicked: {panicked:#?}");
    n
}

#[test]
fn every_target_has_a_seed_corpus_and_it_replays() {
    for (name, _) in cradle::fuzzing::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let seeds = std::fs::read_dir(&dir)
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(seeds > 0, "{}: no seed inputs", dir.display());
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no cargo-fuzz target for {name}"
        );
    }
    let n = replay("corpus");
    eprintln!("replayed {n} corpus inputs");
}

#[test]
fn kept_crash_inputs_replay_without_panic() {
    let n = replay("regressions");
    assert!(n > 0, "no regression inputs under tests/fuzz/regressions");
    eprintln!("replayed {n} regression inputs");
}

#[test]
fn an_unknown_target_directory_is_refused() {
    assert!(cradle::fuzzing::target("no-such-target").is_none());
    for (name, _) in cradle::fuzzing::TARGETS {
        assert!(cradle::fuzzing::target(name).is_some());
    }
}
