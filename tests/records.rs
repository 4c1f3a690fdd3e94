//! Records you can trust (issue 12, part A): no false alarms while stations write,
//! read-only registries, no forgotten certificates, lifecycle-safe `device set`,
//! output files that cannot replace the CA, a closed pipe is success.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Env;

/// A home with a CA and `n` registered devices DEV-001.. from `identity batch`.
fn fleet(n: usize) -> Env {
    let e = Env::with_ca();
    e.ok(&[
        "identity",
        "batch",
        "--count",
        &n.to_string(),
        "--serial-pattern",
        "DEV-{seq:03}",
        "--bundle",
        e.path("bundle.jsonl").to_str().unwrap(),
        "--passphrase-file",
        e.pass(),
    ]);
    e
}

#[test]
fn log_verify_and_audit_raise_no_false_alarm_while_a_station_writes() {
    let e = Arc::new(fleet(2));
    let stop = Arc::new(AtomicBool::new(false));
    // Two writers, as two stations would: every write appends an event and moves the
    // chain head. Before the readers used one snapshot, the head and the events were
    // read apart and most runs reported "the newest event(s) N..M were deleted".
    let writers: Vec<_> = ["DEV-001", "DEV-002"]
        .into_iter()
        .map(|dev| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    e.ok(&["device", "set", dev, &format!("notes=n{i}")]);
                }
                i
            })
        })
        .collect();
    let mut false_alarms = Vec::new();
    let mut runs = 0;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        for args in [&["log", "verify"][..], &["audit"][..]] {
            let o = e.run(args);
            runs += 1;
            if o.status.code() != Some(0) {
                false_alarms.push(format!(
                    "{args:?} exit {:?}: {}{}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 10, "the writers barely ran ({writes} writes)");
    assert!(
        false_alarms.is_empty(),
        "{} false alarm(s) in {runs} runs during {writes} writes:\n{}",
        false_alarms.len(),
        false_alarms.join("\n")
    );
}
