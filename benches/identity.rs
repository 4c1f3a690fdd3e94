//! Benchmark: `cradle identity batch` devices/s, beside Python `cryptography` and the
//! OpenSSL CLI doing the same work (P-256 key, certificate with SAN, EKU, SKI/AKI)
//! in the same run. Run with `cargo bench --bench identity` (release build).
//! Env: BENCH_COUNT (default 10000).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const PY: &str = r#"
import sys, time, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
n = int(sys.argv[1]); out = sys.argv[2]
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
now = datetime.datetime.now(datetime.timezone.utc)
with open(out, "w") as f:
    for i in range(n):
        k = ec.generate_private_key(ec.SECP256R1())
        s = "PY-%06d" % i
        c = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, s),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bench"),
                                     x509.NameAttribute(NameOID.SERIAL_NUMBER, s)]))
            .issuer_name(ca_name).public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:cradle:device:" + s)]), False)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False)
            .add_extension(x509.BasicConstraints(False, None), True)
            .sign(ca_key, hashes.SHA256()))
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
        f.write(c.public_bytes(serialization.Encoding.PEM).decode())
"#;

fn cradle(home: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(args)
        .env("CRADLE_HOME", home)
        .env("CRADLE_CA_PASSPHRASE", "bench-passphrase")
        .output()
        .expect("run cradle");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed().as_secs_f64()
}

fn python_rate(dir: &Path, n: usize) -> Option<f64> {
    let script = dir.join("ref.py");
    std::fs::write(&script, PY).ok()?;
    let t = Instant::now();
    let o = Command::new("python3")
        .arg(&script)
        .arg(n.to_string())
        .arg(dir.join("py.pem"))
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "python reference unavailable (pip install cryptography): {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    Some(n as f64 / t.elapsed().as_secs_f64())
}

fn openssl_rate(dir: &Path, n: usize) -> f64 {
    let sh = dir.join("ref.sh");
    std::fs::write(
        &sh,
        r#"set -e
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=BenchCA -keyout ca.key -out ca.pem -days 3650 2>/dev/null
printf 'subjectAltName=URI:urn:cradle:device:x\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nbasicConstraints=critical,CA:FALSE\n' > ext.cnf
for i in $(seq 1 "$2"); do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=OS-$i/O=Bench" -keyout d.key -out d.csr 2>/dev/null
  openssl x509 -req -in d.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile ext.cnf -out d.pem 2>/dev/null
done
"#,
    )
    .unwrap();
    let t = Instant::now();
    let st = Command::new("bash")
        .arg(&sh)
        .arg(dir)
        .arg(n.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let n: usize = std::env::var("BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let h = home.as_path();
    cradle(h, &["init", "--org", "Bench"]);
    cradle(h, &["ca", "init", "--name", "Bench"]);
    let count = n.to_string();
    let bundle = tmp.path().join("b.jsonl");
    let secs = cradle(
        h,
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
    let bundle_rate = n as f64 / secs;
    let out = tmp.path().join("files");
    let secs = cradle(
        h,
        &[
            "identity",
            "batch",
            "--count",
            &count,
            "--serial-pattern",
            "F-{seq:07}",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let files_rate = n as f64 / secs;
    let py = python_rate(tmp.path(), n.min(5_000));
    let os = openssl_rate(tmp.path(), 40);

    println!(
        "identity batch, {n} devices, {} cores (whole process: start, CA unlock, registry, files)",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );
    println!("  cradle -> registry + one bundle : {bundle_rate:>9.0} devices/s");
    println!("  cradle -> registry + 2 files/dev: {files_rate:>9.0} devices/s");
    match py {
        Some(p) => {
            println!("  python cryptography (1 process) : {p:>9.0} devices/s");
            println!(
                "  ratio bundle/python             : {:>9.1}x",
                bundle_rate / p
            );
            println!(
                "  ratio files/python              : {:>9.1}x",
                files_rate / p
            );
        }
        None => println!("  python cryptography             :   (not installed)"),
    }
    println!("  openssl CLI loop                : {os:>9.1} devices/s");
    println!(
        "  ratio bundle/openssl-cli        : {:>9.0}x",
        bundle_rate / os
    );
}
