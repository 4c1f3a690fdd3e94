//! Benchmark: pre-signing an OCSP response for each of 100,000 certificates
//! (`cradle ca ocsp`), and responder requests/s on loopback for `cradle ocsp serve`
//! (live from the registry, and from the pre-signed set) against `openssl ocsp
//! -index` serving the same certificates with the same key, in the same run.
//! Reference for pre-signing: `openssl ocsp -index -respout`, one process per
//! response, over a sample.
//!
//! Run: `cargo bench --bench ocsp` (CRADLE_BENCH_N sets the certificate count,
//! CRADLE_BENCH_SECS the seconds of each load run, CRADLE_BENCH_CLIENTS its threads).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use der::Encode;
use x509_ocsp::{OcspRequest, Request, TbsRequest};

mod common;
use common::{children_cpu, env_or, sqlite, timed as cradle};

const BIN: &str = env!("CARGO_BIN_EXE_cradle");

/// `openssl ca`'s index.txt for the registry's certificates (what `openssl ocsp
/// -index` reads): V/R, expiry, revocation time and reason, serial, subject.
fn openssl_index(db: &Path) -> String {
    let rows = sqlite(
        db,
        "SELECT status, substr(strftime('%Y%m%d%H%M%S', not_after, 'unixepoch'), 3) || 'Z',
                coalesce(substr(strftime('%Y%m%d%H%M%S', revoked_at), 3) || 'Z', ''),
                coalesce(revocation_reason, ''),
                upper(serial_hex) FROM certificates",
    );
    let mut out = String::with_capacity(rows.len() * 2);
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (flag, revoked) = if f[0] == "revoked" {
            ("R", format!("{},{}", f[2], f[3]))
        } else {
            ("V", String::new())
        };
        out.push_str(&format!(
            "{flag}\t{}\t{revoked}\t{}\tunknown\t/CN=x\n",
            f[1], f[4]
        ));
    }
    out
}

/// One DER OCSP request (SHA-1 CertID, no nonce) per serial.
fn requests(issuing_der: &[u8], serials: &[String]) -> Vec<Vec<u8>> {
    let issuer = cradle::pki::ocsp::IssuerHashes::of(issuing_der).unwrap();
    serials
        .iter()
        .map(|s| {
            OcspRequest {
                tbs_request: TbsRequest {
                    version: Default::default(),
                    requestor_name: None,
                    request_list: vec![Request {
                        req_cert: issuer.cert_id(s).unwrap(),
                        single_request_extensions: None,
                    }],
                    request_extensions: None,
                },
                optional_signature: None,
            }
            .to_der()
            .unwrap()
        })
        .collect()
}

/// POSTs `req` on a new connection; true if the reply is a successful OCSP response.
fn ask(port: u16, req: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut msg = format!(
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        req.len()
    )
    .into_bytes();
    msg.extend_from_slice(req);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut got = Vec::with_capacity(1024);
    if s.read_to_end(&mut got).is_err() {
        return false;
    }
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let body = &got[end + 4..];
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED (0 = successful), ... }
    got.starts_with(b"HTTP/1.")
        && body.len() > 8
        && body.windows(3).take(6).any(|w| w == [0x0a, 0x01, 0x00])
}

/// `clients` threads sending requests round-robin for `secs` (at most `cap` in all);
/// returns (answered OK, failed, elapsed seconds).
fn load(port: u16, reqs: &[Vec<u8>], clients: usize, secs: f64, cap: u64) -> (u64, u64, f64) {
    let ok = AtomicU64::new(0);
    let bad = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (ok, bad, sent, stop) = (&ok, &bad, &sent, &stop);
            s.spawn(move || {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    if sent.fetch_add(1, Ordering::Relaxed) >= cap {
                        break;
                    }
                    if ask(port, &reqs[i % reqs.len()]) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    i += clients;
                }
            });
        }
        while t.elapsed().as_secs_f64() < secs && sent.load(Ordering::Relaxed) < cap {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    (ok.into_inner(), bad.into_inner(), t.elapsed().as_secs_f64())
}

/// Waits until `port` accepts and answers `probe`.
fn wait_ready(port: u16, probe: &[u8], child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if ask(port, probe) {
            return;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("server on {port} exited: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on {port} never answered");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops a responder and everything it forked: `openssl ocsp -multi` leaves its worker
/// children running when only the parent is signalled, so each responder is spawned as
/// the leader of its own process group (`responder`) and the whole group is signalled.
fn stop(mut child: Child) {
    let group = -(child.id() as i32);
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}

/// A responder command in its own process group, so `stop` reaches its children too.
fn responder(program: &str) -> Command {
    let mut c = Command::new(program);
    c.process_group(0);
    c
}

struct Run {
    name: &'static str,
    rps: f64,
    ok: u64,
    bad: u64,
}

fn measure(
    name: &'static str,
    mut child: Child,
    port: u16,
    reqs: &[Vec<u8>],
    clients: usize,
    secs: f64,
) -> Run {
    wait_ready(port, &reqs[0], &mut child);
    let (ok, bad, elapsed) = load(port, reqs, clients, secs, 200_000);
    stop(child);
    Run {
        name,
        rps: ok as f64 / elapsed,
        ok,
        bad,
    }
}

fn main() {
    let n: usize = env_or("CRADLE_BENCH_N", 100_000);
    let secs: f64 = env_or("CRADLE_BENCH_SECS", 3.0);
    let clients: usize = env_or("CRADLE_BENCH_CLIENTS", 4);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = dir.path().join("ca.pass");
    std::fs::write(&pass, "bench passphrase\n").unwrap();
    let pass = pass.to_str().unwrap();
    cradle(&home, &["init", "--org", "Bench", "--station", "bench"]);
    cradle(
        &home,
        &["ca", "init", "--name", "Bench", "--passphrase-file", pass],
    );
    let bundle = dir.path().join("bundle.jsonl");
    let setup = cradle(
        &home,
        &[
            "identity",
            "batch",
            "--count",
            &n.to_string(),
            "--serial-pattern",
            "B-{seq:06}",
            "--bundle",
            bundle.to_str().unwrap(),
            "--passphrase-file",
            pass,
        ],
    );
    std::fs::remove_file(&bundle).unwrap();
    // One device in ten revoked, so responses of both kinds are signed.
    let csv = dir.path().join("revoke.csv");
    let mut s = String::from("serial\n");
    for i in (1..=n).step_by(10) {
        s.push_str(&format!("B-{i:06}\n"));
    }
    std::fs::write(&csv, s).unwrap();
    cradle(
        &home,
        &[
            "revoke",
            "--from",
            csv.to_str().unwrap(),
            "--reason",
            "key-compromise",
            "--passphrase-file",
            pass,
        ],
    );
    println!("setup: {n} identities issued, every tenth revoked ({setup:.1} s, not measured)");

    // Pre-signing.
    let out = dir.path().join("ocsp");
    let cpu0 = children_cpu();
    let presign = cradle(
        &home,
        &[
            "ca",
            "ocsp",
            "--out",
            out.to_str().unwrap(),
            "--passphrase-file",
            pass,
        ],
    );
    let presign_cpu = children_cpu() - cpu0;
    let files = std::fs::read_dir(&out).unwrap().count() - 1;
    assert_eq!(files, n, "one response per certificate");

    // The same key and certificates for openssl.
    let ca = home.join("ca");
    let key = dir.path().join("issuing.key.pem");
    let o = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(ca.join("issuing.key"))
        .args(["-passin", &format!("file:{pass}"), "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let db = home.join("registry.db");
    let index = dir.path().join("index.txt");
    std::fs::write(&index, openssl_index(&db)).unwrap();
    // The subjects are placeholders; openssl must not insist they are unique.
    std::fs::write(dir.path().join("index.txt.attr"), "unique_subject = no\n").unwrap();
    let issuing_pem = ca.join("issuing.pem");
    let issuing_der = {
        let pem = std::fs::read_to_string(&issuing_pem).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
    };
    let mut serials: Vec<String> = sqlite(
        &db,
        "SELECT serial_hex FROM certificates ORDER BY random() LIMIT 2000",
    )
    .lines()
    .map(str::to_string)
    .collect();
    serials.push("7e57".into()); // one the CA never issued
    let reqs = requests(&issuing_der, &serials);

    // Reference for pre-signing: openssl ocsp signing one response per process.
    let sample = 100.min(reqs.len());
    let reqfile = dir.path().join("req.der");
    let respfile = dir.path().join("resp.der");
    let t = Instant::now();
    for r in &reqs[..sample] {
        std::fs::write(&reqfile, r).unwrap();
        let o = Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(&index)
            .arg("-rsigner")
            .arg(&issuing_pem)
            .arg("-rkey")
            .arg(&key)
            .arg("-CA")
            .arg(&issuing_pem)
            .arg("-reqin")
            .arg(&reqfile)
            .arg("-respout")
            .arg(&respfile)
            .args(["-ndays", "7"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let openssl_per = t.elapsed().as_secs_f64() / sample as f64;

    // Responders.
    let mut runs = Vec::new();
    let port = free_port();
    let child = responder(BIN)
        .args([
            "ocsp",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--passphrase-file",
            pass,
        ])
        .env("CRADLE_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    runs.push(measure(
        "cradle ocsp serve (live, registry)",
        child,
        port,
        &reqs,
        clients,
        secs,
    ));
    let port = free_port();
    let child = responder(BIN)
        .args([
            "ocsp",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--from",
        ])
        .arg(&out)
        .env("CRADLE_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The never-issued serial has no pre-signed file (unauthorized): leave it out.
    let presigned_reqs = &reqs[..reqs.len() - 1];
    runs.push(measure(
        "cradle ocsp serve --from (pre-signed)",
        child,
        port,
        presigned_reqs,
        clients,
        secs,
    ));
    for (name, multi) in [
        ("openssl ocsp -index (reference)", None),
        ("openssl ocsp -index -multi 2", Some("2")),
    ] {
        let port = free_port();
        let mut cmd = responder("openssl");
        cmd.args(["ocsp", "-index"])
            .arg(&index)
            // openssl takes a port only (it listens on every address; the load stays on loopback).
            .args(["-port", &port.to_string(), "-rsigner"])
            .arg(&issuing_pem)
            .arg("-rkey")
            .arg(&key)
            .arg("-CA")
            .arg(&issuing_pem)
            .args(["-ndays", "7"]);
        if let Some(m) = multi {
            cmd.args(["-multi", m]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        runs.push(measure(name, child, port, &reqs, clients, secs));
    }

    println!(
        "pre-sign {n} responses (cradle ca ocsp):  {presign:.2} s wall, {presign_cpu:.2} s CPU  = {:.0} responses/s",
        n as f64 / presign
    );
    println!(
        "reference: openssl ocsp -respout, one process per response: {:.1} ms each -> {:.0} s for {n}",
        openssl_per * 1e3,
        openssl_per * n as f64
    );
    println!(
        "ratio pre-sign: cradle {:.0}x faster than openssl per-response signing",
        openssl_per * n as f64 / presign
    );
    println!("responders on loopback, {clients} client threads, one connection per request, {secs} s each:");
    for r in &runs {
        println!(
            "  {:<42} {:>8.0} requests/s  ({} ok, {} failed)",
            r.name, r.rps, r.ok, r.bad
        );
    }
    let (one, multi) = (runs[2].rps.max(1e-9), runs[3].rps.max(1e-9));
    println!(
        "ratio live / openssl: {:.2}x ({:.2}x against -multi 2); pre-signed / openssl: {:.2}x ({:.2}x)",
        runs[0].rps / one,
        runs[0].rps / multi,
        runs[1].rps / one,
        runs[1].rps / multi
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average during the run: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
