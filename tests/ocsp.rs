//! OCSP held to OpenSSL: `openssl ocsp` against `cradle ocsp serve` (live and
//! pre-signed, POST and GET, with and without nonces), `-respin` on the files of
//! `cradle ca ocsp`, hostile HTTP input, and pkilint on the delegated signer.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{openssl, pkilint, pkilint_bin, terminate, Env};

/// A home with a CA and three issued devices; OCSP-3 is revoked (keyCompromise).
fn fleet() -> Env {
    let e = Env::with_ca();
    let csv = e.path("inv.csv");
    std::fs::write(&csv, "serial\nOCSP-1\nOCSP-2\nOCSP-3\n").unwrap();
    e.ok(&["inventory", "import", csv.to_str().unwrap()]);
    for s in ["OCSP-1", "OCSP-2", "OCSP-3"] {
        let out = e.path(&format!("out-{s}"));
        e.ok(&[
            "identity",
            "issue",
            s,
            "--out",
            out.to_str().unwrap(),
            "--passphrase-file",
            e.pass(),
        ]);
    }
    e.ok(&[
        "revoke",
        "OCSP-3",
        "--reason",
        "keyCompromise",
        "--passphrase-file",
        e.pass(),
    ]);
    e
}

/// The leaf certificate of `serial` alone (the issued .pem holds the chain too).
fn leaf(e: &Env, serial: &str) -> PathBuf {
    let p = e.path(&format!("{serial}.leaf.pem"));
    if !p.exists() {
        let full = e.path(&format!("out-{serial}/{serial}.pem"));
        let (ok, msg) = openssl(&[
            "x509",
            "-in",
            full.to_str().unwrap(),
            "-out",
            p.to_str().unwrap(),
        ]);
        assert!(ok, "{msg}");
    }
    p
}

/// The certificate serial of `serial`'s leaf, lower-case hex (the file name).
fn serial_hex(e: &Env, serial: &str) -> String {
    let (ok, out) = openssl(&[
        "x509",
        "-in",
        leaf(e, serial).to_str().unwrap(),
        "-noout",
        "-serial",
    ]);
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_lowercase()
}

fn ca_file(e: &Env, name: &str) -> String {
    e.home.join("ca").join(name).to_str().unwrap().to_string()
}

/// A running `cradle ocsp serve` on a port it picked; SIGTERM on drop.
struct Responder {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Responder {
    fn start(e: &Env, extra: &[&str]) -> Responder {
        let mut args = vec!["ocsp", "serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = e
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("ocsp serve printed {line:?}"));
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Responder { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM; the exit status and everything it logged.
    fn stop(mut self) -> (Option<i32>, String) {
        let status = terminate(&mut self.child).and_then(|s| s.code());
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// `openssl ocsp` against `url` for `target` (`-cert FILE` or `-serial N`), verified
/// against the root; returns (success, output).
fn ask(e: &Env, url: &str, target: &[&str], extra: &[&str]) -> (bool, String) {
    let (issuer, root) = (ca_file(e, "issuing.pem"), ca_file(e, "root.pem"));
    let mut args = vec![
        "ocsp",
        "-issuer",
        &issuer,
        "-url",
        url,
        "-CAfile",
        &root,
        "-resp_text",
        "-timeout",
        "10",
    ];
    args.extend_from_slice(target);
    args.extend_from_slice(extra);
    openssl(&args)
}

fn cert_arg(p: &Path) -> [&str; 2] {
    ["-cert", p.to_str().unwrap()]
}

#[test]
fn the_live_responder_answers_good_revoked_and_unknown_as_openssl_checks() {
    let e = fleet();
    let r = Responder::start(&e, &["--passphrase-file", e.pass()]);
    let (good, revoked) = (leaf(&e, "OCSP-1"), leaf(&e, "OCSP-3"));

    let (ok, out) = ask(&e, &r.url(), &cert_arg(&good), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(": good"), "{out}");
    // The nonce comes back: openssl would warn otherwise.
    assert!(out.contains("OCSP Nonce"), "{out}");
    assert!(!out.contains("WARNING: no nonce"), "{out}");
    assert!(out.contains("Next Update:"), "{out}");

    let (ok, out) = ask(&e, &r.url(), &cert_arg(&revoked), &["-no_nonce"]);
    assert!(ok, "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(": revoked"), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    assert!(out.contains("Revocation Time:"), "{out}");
    assert!(
        !out.contains("OCSP Nonce"),
        "no nonce asked, none sent: {out}"
    );

    // A serial this CA never issued.
    let (ok, out) = ask(&e, &r.url(), &["-serial", "0x7e57"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("0x7e57: unknown"), "{out}");
    assert!(out.contains("Response verify OK"), "{out}");

    // SHA-256 CertIDs are accepted too (and echoed as asked).
    let (ok, out) = ask(&e, &r.url(), &["-sha256"], &cert_arg(&good));
    assert!(ok, "{out}");
    assert!(out.contains("Hash Algorithm: sha256"), "{out}");
    assert!(out.contains(": good"), "{out}");

    // Live: a revocation made while serving shows at once.
    e.ok(&[
        "revoke",
        "OCSP-1",
        "--reason",
        "superseded",
        "--passphrase-file",
        e.pass(),
    ]);
    let (_, out) = ask(&e, &r.url(), &cert_arg(&good), &[]);
    assert!(
        out.contains(": revoked") && out.contains("Reason: superseded"),
        "{out}"
    );

    let (code, log) = r.stop();
    assert_eq!(code, Some(0), "clean exit on SIGTERM: {log}");
    assert!(log.contains("stopped after 5 requests"), "{log}");
    assert!(log.contains(" unknown"), "{log}");
}

/// Sends raw bytes, returns (status line, headers, body).
fn raw(port: u16, request: &[u8]) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A server that stops reading early may reset; what it answered first still counts.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&got)));
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (
        status.to_string(),
        headers.to_string(),
        got[end + 4..].to_vec(),
    )
}

fn get(port: u16, path: &str) -> (String, String, Vec<u8>) {
    raw(
        port,
        format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
}

fn post(port: u16, body: &[u8]) -> (String, String, Vec<u8>) {
    let mut req = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(port, &req)
}

/// What `openssl ocsp -respin` says about a response body (checked against the root).
fn respin(e: &Env, body: &[u8], extra: &[&str]) -> (bool, String) {
    let f = e.path("resp.der");
    std::fs::write(&f, body).unwrap();
    let (issuer, root) = (ca_file(e, "issuing.pem"), ca_file(e, "root.pem"));
    let mut args = vec![
        "ocsp",
        "-respin",
        f.to_str().unwrap(),
        "-issuer",
        &issuer,
        "-CAfile",
        &root,
        "-resp_text",
    ];
    args.extend_from_slice(extra);
    openssl(&args)
}

/// `openssl ocsp -reqout` for `serial`'s certificate, without a nonce.
fn request_der(e: &Env, serial: &str) -> Vec<u8> {
    let out = e.path(&format!("{serial}.req"));
    let issuer = ca_file(e, "issuing.pem");
    let (ok, msg) = openssl(&[
        "ocsp",
        "-issuer",
        &issuer,
        "-cert",
        leaf(e, serial).to_str().unwrap(),
        "-no_nonce",
        "-reqout",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{msg}");
    std::fs::read(out).unwrap()
}

#[test]
fn get_requests_and_hostile_input_get_answers_and_the_server_keeps_serving() {
    let e = fleet();
    let r = Responder::start(&e, &["--passphrase-file", e.pass()]);
    let der = request_der(&e, "OCSP-3");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let encoded = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");

    let (status, headers, body) = get(r.port, &encoded);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: application/ocsp-response"),
        "{headers}"
    );
    // No nonce: cacheable until nextUpdate (RFC 5019 §6.2).
    assert!(headers.contains("Cache-Control: max-age="), "{headers}");
    let (ok, out) = respin(&e, &body, &[]);
    assert!(ok && out.contains("Response verify OK"), "{out}");
    assert!(out.contains("Cert Status: revoked"), "{out}");

    let malformed = |body: &[u8]| {
        let (ok, out) = respin(&e, body, &[]);
        assert!(
            out.contains("malformedrequest") || out.contains("malformedRequest"),
            "{ok} {out}"
        );
    };
    // Garbage POST body, bad base64 GET, empty GET: malformedRequest.
    let (status, _, body) = post(r.port, b"this is not DER at all");
    assert_eq!(status, "HTTP/1.1 200 OK");
    malformed(&body);
    let (_, _, body) = get(r.port, "!!!not-base64***");
    malformed(&body);
    let (_, _, body) = get(r.port, "");
    malformed(&body);
    // Truncated DER.
    let (_, _, body) = post(r.port, &der[..der.len() / 2]);
    malformed(&body);

    // Too large a body is refused unread; no length, a bad method: 4xx.
    let huge = format!(
        "POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        50 * 1024 * 1024
    );
    let (status, _, _) = raw(r.port, huge.as_bytes());
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    let mut flood = b"POST / HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
    flood.extend(std::iter::repeat_n(0x30u8, 200_000));
    let (status, _, _) = raw(r.port, &flood);
    assert_eq!(status, "HTTP/1.1 413 Content Too Large");
    let (status, _, _) = raw(r.port, b"POST / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 411 Length Required");
    let (status, headers, _) = raw(r.port, b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET, POST"), "{headers}");
    let mut long_head = b"GET /".to_vec();
    long_head.extend(std::iter::repeat_n(b'A', 20_000));
    let (status, _, _) = raw(r.port, &long_head);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    let (status, _, _) = raw(r.port, b"\x16\x03\x01 garbage\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");

    // Still serving, by POST too.
    let (status, _, body) = post(r.port, &request_der(&e, "OCSP-2"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (ok, out) = respin(&e, &body, &[]);
    assert!(ok && out.contains("Cert Status: good"), "{out}");
    let (code, log) = r.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("MalformedRequest"), "{log}");
}

#[test]
fn pre_signed_responses_verify_with_the_delegate_and_are_served_as_they_are() {
    let e = fleet();
    // No delegate yet: one clear line.
    let err = e.fails(
        &[
            "ca",
            "ocsp",
            "--out",
            "pre",
            "--delegate",
            "--passphrase-file",
            e.pass(),
        ],
        3,
    );
    assert!(err.contains("run `cradle ca ocsp-signer`"), "{err}");
    assert!(!e.path("pre").exists());

    let v = e.json(&["ca", "ocsp-signer", "--passphrase-file", e.pass()]);
    assert_eq!(
        v["certificate"]["subject"],
        "CN=Test OCSP Responder, O=ACME"
    );
    let signer_pem = ca_file(&e, "ocsp-signer.pem");
    let key = e.home.join("ca/ocsp-signer.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(
        key_text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "encrypted at rest"
    );
    let (ok, text) = openssl(&["x509", "-in", &signer_pem, "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("OCSP Signing"), "{text}");
    assert!(text.contains("OCSP No Check"), "{text}");
    let (ok, msg) = openssl(&[
        "verify",
        "-CAfile",
        &ca_file(&e, "root.pem"),
        "-untrusted",
        &ca_file(&e, "issuing.pem"),
        "-purpose",
        "ocsphelper",
        &signer_pem,
    ]);
    assert!(ok, "{msg}");
    let events = e.sql("SELECT count(*) FROM events WHERE kind = 'ocsp.signer_issued'");
    assert_eq!(events.trim(), "1");

    let v = e.json(&[
        "ca",
        "ocsp",
        "--out",
        "pre",
        "--delegate",
        "--passphrase-file",
        e.pass(),
    ]);
    assert_eq!(v["responses"], 3);
    assert_eq!(v["revoked"], 1);
    assert_eq!(v["signed_by"], "CN=Test OCSP Responder, O=ACME");
    let crl_next = e.sql("SELECT next_update FROM crls ORDER BY crl_number DESC LIMIT 1");
    let crl_next: i64 = crl_next.trim().parse().unwrap();
    let dir = e.path("pre");
    for (serial, status) in [("OCSP-1", "good"), ("OCSP-3", "revoked")] {
        let file = dir.join(format!("{}.der", serial_hex(&e, serial)));
        let body = std::fs::read(&file).unwrap();
        let (ok, out) = respin(&e, &body, &[]);
        assert!(ok && out.contains("Response verify OK"), "{out}");
        assert!(out.contains(&format!("Cert Status: {status}")), "{out}");
        // Signed by the delegate, whose certificate travels with the response.
        assert!(out.contains("OCSP Responder"), "{out}");
        // Valid until the next CRL update.
        let (ok, dates) = openssl(&[
            "ocsp",
            "-respin",
            file.to_str().unwrap(),
            "-resp_text",
            "-noverify",
        ]);
        assert!(ok);
        let next = time::OffsetDateTime::from_unix_timestamp(crl_next).unwrap();
        let want = format!("{} {:>2} ", month(next.month()), next.day());
        assert!(
            dates.contains(&format!("Next Update: {want}")),
            "{want}: {dates}"
        );
        // A relying party that pins the responder (-VAfile) accepts it too.
        let (ok, out) = openssl(&[
            "ocsp",
            "-respin",
            file.to_str().unwrap(),
            "-VAfile",
            &signer_pem,
        ]);
        assert!(ok && out.contains("Response verify OK"), "{out}");
    }

    let r = Responder::start(&e, &["--from", dir.to_str().unwrap()]);
    let (ok, out) = ask(&e, &r.url(), &cert_arg(&leaf(&e, "OCSP-3")), &["-no_nonce"]);
    assert!(ok && out.contains(": revoked"), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    // Pre-signed responses cannot echo a nonce: openssl warns but verifies.
    let (ok, out) = ask(&e, &r.url(), &cert_arg(&leaf(&e, "OCSP-1")), &[]);
    assert!(ok && out.contains(": good"), "{out}");
    assert!(out.contains("WARNING: no nonce in response"), "{out}");
    // No file for a serial: unauthorized (RFC 5019 §2.2.3).
    let (_, out) = ask(&e, &r.url(), &["-serial", "0x7e57"], &[]);
    assert!(out.contains("unauthorized"), "{out}");
    drop(r);
}

fn month(m: time::Month) -> &'static str {
    use time::Month::*;
    match m {
        January => "Jan",
        February => "Feb",
        March => "Mar",
        April => "Apr",
        May => "May",
        June => "Jun",
        July => "Jul",
        August => "Aug",
        September => "Sep",
        October => "Oct",
        November => "Nov",
        December => "Dec",
    }
}

#[test]
fn a_revocation_refreshes_the_configured_pre_signed_set() {
    let e = fleet();
    // No --out and no ocsp_dir: a usage error.
    let err = e.fails(&["ca", "ocsp", "--passphrase-file", e.pass()], 2);
    assert!(err.contains("--out DIR is required"), "{err}");
    let cfg = e.home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("ocsp_dir = \"\""), "{text}");
    std::fs::write(&cfg, text.replace("ocsp_dir = \"\"", "ocsp_dir = \"ocsp\"")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    e.ok(&["ca", "ocsp", "--passphrase-file", e.pass()]);
    let file = e
        .home
        .join("ocsp")
        .join(format!("{}.der", serial_hex(&e, "OCSP-1")));
    let (ok, out) = respin(&e, &std::fs::read(&file).unwrap(), &[]);
    assert!(ok && out.contains("Cert Status: good"), "{out}");
    std::thread::sleep(Duration::from_millis(1100));

    let out = e.ok(&[
        "revoke",
        "OCSP-1",
        "--reason",
        "cessationOfOperation",
        "--passphrase-file",
        e.pass(),
    ]);
    assert!(
        out.contains("1 pre-signed OCSP response re-signed"),
        "{out}"
    );
    let (ok, out) = respin(&e, &std::fs::read(&file).unwrap(), &[]);
    assert!(ok && out.contains("Response verify OK"), "{out}");
    assert!(out.contains("Cert Status: revoked"), "{out}");
    assert!(out.contains("Reason: cessationOfOperation"), "{out}");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.home.join("ocsp/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["revoked"], 2);
    assert_eq!(index["good"], 1);
}

#[test]
fn bad_setups_get_one_clear_line_and_open_no_port() {
    let e = fleet();
    let r = Responder::start(&e, &["--passphrase-file", e.pass()]);
    let addr = format!("127.0.0.1:{}", r.port);
    let err = e.fails(
        &[
            "ocsp",
            "serve",
            "--listen",
            &addr,
            "--passphrase-file",
            e.pass(),
        ],
        2,
    );
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    drop(r);

    let err = e.fails(&["ocsp", "serve", "--from", "nowhere"], 8);
    assert!(err.contains("nowhere/index.json"), "{err}");
    let wrong = e.path("wrong.pass");
    std::fs::write(&wrong, "not it\n").unwrap();
    let err = e.fails(
        &[
            "ocsp",
            "serve",
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
        5,
    );
    assert!(err.contains("wrong passphrase"), "{err}");
}

#[test]
fn the_delegated_signing_certificate_lints_clean() {
    let Some(bin) = pkilint_bin() else { return };
    let e = Env::with_ca();
    e.ok(&[
        "ca",
        "ocsp-signer",
        "--days",
        "7",
        "--passphrase-file",
        e.pass(),
    ]);
    let found = pkilint(
        &bin,
        "lint_pkix_cert",
        &[],
        &e.home.join("ca/ocsp-signer.pem"),
    );
    assert!(found.is_empty(), "pkilint findings: {found:#?}");
}
