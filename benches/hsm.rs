//! Benchmark: `cradle identity batch` devices/s with the CA key on a SoftHSM2 token
//! (PKCS#11, one session per signing thread) against the same CA kind with an
//! encrypted key file, in the same run. Run with `cargo bench --bench hsm`.
//! Env: BENCH_COUNT (default 10000), CRADLE_TEST_SOFTHSM_MODULE (default Debian's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PIN: &str = "bench-pin-1234";

fn cradle(home: &Path, conf: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(args)
        .env("CRADLE_HOME", home)
        .env("CRADLE_CA_PASSPHRASE", "bench-pass")
        .env("CRADLE_PKCS11_PIN", PIN)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("run cradle");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let module = std::env::var_os("CRADLE_TEST_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    if !module.is_file() {
        eprintln!(
            "skipping: no SoftHSM2 module at {} (apt-get install softhsm2)",
            module.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let st = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "bench"])
        .args(["--so-pin", "bench-so-1234", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let uri = format!(
        "pkcs11:token=bench;object=bench?module-path={}",
        module.display()
    );

    let count = n.to_string();
    let rate = |name: &str, ca_init: &[&str]| {
        let home = tmp.path().join(name);
        cradle(&home, &conf, &["init", "--org", "Bench"]);
        cradle(&home, &conf, ca_init);
        let bundle = tmp.path().join(format!("{name}.jsonl"));
        let secs = cradle(
            &home,
            &conf,
            &[
                "identity",
                "batch",
                "--count",
                &count,
                "--serial-pattern",
                "B-{seq:07}",
                "--bundle",
                bundle.to_str().unwrap(),
            ],
        );
        n as f64 / secs
    };
    let file = rate("file", &["ca", "init", "--name", "Bench"]);
    let hsm = rate("hsm", &["ca", "init", "--name", "Bench", "--hsm", &uri]);

    println!(
        "identity batch -> registry + one bundle, {n} devices, {} cores (whole process: start, CA unlock, registry, files)",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
    println!("  CA key in an encrypted file     : {file:>9.0} devices/s");
    println!("  CA key on SoftHSM2 (PKCS#11)    : {hsm:>9.0} devices/s");
    println!("  ratio softhsm/file              : {:>9.2}x", hsm / file);
}
