//! The HTTP side of the responder (RFC 6960 appendix A, RFC 5019 §5): `GET
//! /{url-encoded base64 of the DER request}` and `POST` with an
//! `application/ocsp-request` body. Plain std networking: a pool of worker threads
//! (`Limits::connections`), bounded headers and body, read and
//! write timeouts, one request per connection, and an accept loop that polls the
//! stop flag so SIGTERM/Ctrl-C end it cleanly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::responder::{Answer, Reply};
use crate::error::{Error, Result};

/// Bounds on what one client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers.
    pub header_bytes: usize,
    /// A POST body (an OCSP request for 16 certificates is well under 2 KiB).
    pub body_bytes: usize,
    /// Per write, and per read (a whole request gets twice this).
    pub timeout: Duration,
    /// Connections served at once (worker threads, and as many queued); more get 503.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_bytes: 8 * 1024,
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(5),
            connections: 64,
        }
    }
}

/// Binds `addr` (`HOST:PORT`; port 0 picks a free one).
pub fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        Error::usage(format!(
            "cannot listen on {addr}: {e}{}",
            match e.kind() {
                std::io::ErrorKind::AddrInUse => " (another process has that port)",
                std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
                _ => "",
            }
        ))
    })
}

/// Serves until `stop` is set; returns how many requests were answered. A pool of
/// `limits.connections` workers takes accepted connections from a queue of the same
/// size; a connection that finds the queue full gets 503 at once.
pub fn serve(
    listener: &TcpListener,
    answer: &dyn Answer,
    limits: Limits,
    stop: &AtomicBool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<u64> {
    let served = AtomicU64::new(0);
    let workers = limits.connections.max(1);
    let (tx, rx) = mpsc::sync_channel::<(TcpStream, SocketAddr)>(workers);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let (rx, served) = (&rx, &served);
            s.spawn(move || loop {
                // The lock is held only while waiting for the next connection.
                let next = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok((mut conn, peer)) = next else { return };
                let line = handle(&mut conn, answer, limits);
                served.fetch_add(1, Ordering::Relaxed);
                log(&format!("{peer} {line}"));
            });
        }
        let accepted = (|| {
            while !stop.load(Ordering::SeqCst) {
                if !readable(listener, 200)? {
                    continue;
                }
                match listener.accept() {
                    Ok(c) => {
                        if let Err(mpsc::TrySendError::Full((mut conn, _))) = tx.try_send(c) {
                            let _ = conn.set_write_timeout(Some(limits.timeout));
                            let _ = write_status(&mut conn, 503, "Service Unavailable", &[]);
                        }
                    }
                    // A client that gave up between poll and accept, or fd exhaustion:
                    // keep serving the others.
                    Err(e) => {
                        log(&format!("accept: {e}"));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            Ok(())
        })();
        // Closing the queue ends the workers once they finish what they hold.
        drop(tx);
        accepted
    })?;
    Ok(served.into_inner())
}

/// Waits up to `ms` for a connection to accept.
fn readable(listener: &TcpListener, ms: i32) -> Result<bool> {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::Internal(format!(
            "poll on the listening socket: {e}"
        )));
    }
    Ok(n > 0 && fd.revents & libc::POLLIN != 0)
}

/// A request as far as OCSP cares.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Ocsp {
        method: &'static str,
        der: Vec<u8>,
    },
    /// Not decodable as an OCSP request at all (bad base64): malformedRequest.
    Undecodable(String),
    Http(u16, &'static str, String),
}

/// Answers one connection; returns the log line.
fn handle(conn: &mut TcpStream, answer: &dyn Answer, limits: Limits) -> String {
    let _ = conn.set_read_timeout(Some(limits.timeout));
    let _ = conn.set_write_timeout(Some(limits.timeout));
    let parsed = read_request(conn, limits);
    let (line, wrote) = match parsed {
        Parsed::Http(code, reason, why) => (
            format!("{code} {why}"),
            write_status(conn, code, reason, why.as_bytes()),
        ),
        Parsed::Undecodable(why) => {
            let r = Reply {
                body: crate::pki::ocsp::error_response(
                    x509_ocsp::OcspResponseStatus::MalformedRequest,
                ),
                max_age: None,
                summary: format!("MalformedRequest: {why}"),
            };
            (format!("GET {}", r.summary), write_ocsp(conn, &r, false))
        }
        Parsed::Ocsp { method, der } => {
            let r = answer.answer(&der);
            let get = method == "GET";
            (format!("{method} {}", r.summary), write_ocsp(conn, &r, get))
        }
    };
    match wrote {
        Ok(()) => line,
        Err(e) => format!("{line} (reply not sent: {e})"),
    }
}

/// One read that ends by `deadline`: a client dripping a byte at a time cannot hold a
/// worker longer than the whole-request budget.
fn read_by(
    conn: &mut TcpStream,
    chunk: &mut [u8],
    (deadline, per_read): (Instant, Duration),
) -> std::io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request not complete in time",
        ));
    }
    conn.set_read_timeout(Some(left.min(per_read)))?;
    conn.read(chunk)
}

fn read_request(conn: &mut TcpStream, limits: Limits) -> Parsed {
    // The whole request (headers and body) gets twice the per-read timeout.
    let deadline = (Instant::now() + limits.timeout * 2, limits.timeout);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > limits.header_bytes {
            return Parsed::Http(
                431,
                "Request Header Fields Too Large",
                format!("headers over {} bytes", limits.header_bytes),
            );
        }
        match read_by(conn, &mut chunk, deadline) {
            Ok(0) => {
                return Parsed::Http(400, "Bad Request", "connection closed mid-request".into())
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Parsed::Http(408, "Request Timeout", format!("reading: {e}")),
        }
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Parsed::Http(400, "Bad Request", "headers are not text".into());
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Parsed::Http(400, "Bad Request", "malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Parsed::Http(400, "Bad Request", "malformed request line".into());
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return Parsed::Http(400, "Bad Request", "malformed header".into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Parsed::Http(400, "Bad Request", "bad Content-Length".into()),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    match method {
        "GET" => match decode_get(target) {
            Ok(der) => Parsed::Ocsp { method: "GET", der },
            Err(why) => Parsed::Undecodable(why),
        },
        "POST" => {
            if chunked {
                return Parsed::Http(
                    411,
                    "Length Required",
                    "chunked bodies are not accepted".into(),
                );
            }
            let Some(len) = length else {
                return Parsed::Http(411, "Length Required", "POST without Content-Length".into());
            };
            if len > limits.body_bytes {
                return Parsed::Http(
                    413,
                    "Content Too Large",
                    format!("body of {len} bytes (at most {})", limits.body_bytes),
                );
            }
            if expect_continue {
                let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let mut body = buf.split_off(head_end + 4);
            if body.len() > len {
                return Parsed::Http(400, "Bad Request", "more body than Content-Length".into());
            }
            body.reserve(len - body.len());
            while body.len() < len {
                let want = (len - body.len()).min(chunk.len());
                match read_by(conn, &mut chunk[..want], deadline) {
                    Ok(0) => {
                        return Parsed::Http(
                            400,
                            "Bad Request",
                            "body shorter than Content-Length".into(),
                        )
                    }
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        return Parsed::Http(
                            408,
                            "Request Timeout",
                            format!("reading the body: {e}"),
                        )
                    }
                }
            }
            Parsed::Ocsp {
                method: "POST",
                der: body,
            }
        }
        _ => Parsed::Http(
            405,
            "Method Not Allowed",
            format!("method {method} (GET or POST)"),
        ),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The DER of a GET request: the whole path after its leading `/` (base64 has `/`
/// in its alphabet, so the responder answers at the root) is percent-decoded, then
/// base64-decoded (standard alphabet, as RFC 6960 says;
/// the URL-safe one and missing padding are accepted too).
fn decode_get(target: &str) -> std::result::Result<Vec<u8>, String> {
    let path = target
        .strip_prefix('/')
        .ok_or("the path does not start with /")?;
    let path = path.split('?').next().unwrap_or("");
    let decoded = percent_decode(path).ok_or("bad percent-encoding in the path")?;
    let text = decoded.trim_end_matches('=');
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| "the path is not base64".into())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn write_status(conn: &mut TcpStream, code: u16, reason: &str, body: &[u8]) -> std::io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len() + 1
    );
    if code == 405 {
        msg.push_str("Allow: GET, POST\r\n");
    }
    msg.push_str("\r\n");
    let mut out = msg.into_bytes();
    out.extend_from_slice(body);
    out.push(b'\n');
    conn.write_all(&out)?;
    conn.flush()
}

/// An OCSP body; GET answers without a nonce may be cached (RFC 5019 §6.2).
fn write_ocsp(conn: &mut TcpStream, r: &Reply, get: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.body.len()
    );
    match r.max_age {
        Some(age) if get => head.push_str(&format!(
            "Cache-Control: max-age={age}, public, no-transform, must-revalidate\r\n"
        )),
        _ => head.push_str("Cache-Control: no-cache\r\n"),
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    conn.write_all(&out)?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_paths_decode_in_every_spelling_clients_use() {
        let der = vec![0xfb, 0xef, 0xbe, 0xff, 0xff, 0xff, 0x30];
        let std = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(std.contains('+') && std.contains('/'), "{std}");
        let encoded = std
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        for path in [format!("/{std}"), format!("/{encoded}")] {
            assert_eq!(decode_get(&path).unwrap(), der, "{path}");
        }
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der);
        assert_eq!(decode_get(&format!("/{url_safe}")).unwrap(), der);
        for bad in ["/", "/!!!", "/%zz", "nope", "/%"] {
            assert!(decode_get(bad).is_err(), "{bad}");
        }
    }

    /// Echoes the request length: the HTTP layer under test, not OCSP.
    struct Echo;
    impl Answer for Echo {
        fn answer(&self, request: &[u8]) -> Reply {
            Reply {
                body: request.len().to_string().into_bytes(),
                max_age: None,
                summary: String::new(),
            }
        }
    }

    #[test]
    fn a_client_dripping_bytes_is_cut_off_and_others_are_served_meanwhile() {
        let listener = bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = AtomicBool::new(false);
        let limits = Limits {
            timeout: Duration::from_millis(300),
            connections: 2,
            ..Limits::default()
        };
        /// Stops the server however the test ends, so a failure fails instead of hanging.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        std::thread::scope(|s| {
            let server = s.spawn(|| serve(&listener, &Echo, limits, &stop, &|_| {}));
            let _stop = StopOnDrop(&stop);
            let t = Instant::now();
            let slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
            // One byte every 100 ms for up to 3 s: each read succeeds well within its
            // timeout, so only the whole-request deadline (600 ms) ends it.
            let mut drip = slow.try_clone().unwrap();
            s.spawn(move || {
                while t.elapsed() < Duration::from_secs(3) && drip.write_all(b"G").is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let mut fast = TcpStream::connect(("127.0.0.1", port)).unwrap();
            fast.write_all(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .unwrap();
            let mut got = String::new();
            fast.read_to_string(&mut got).unwrap();
            assert!(
                got.starts_with("HTTP/1.1 200 OK") && got.ends_with("\r\n\r\n3"),
                "{got}"
            );
            let mut cut = String::new();
            let _ = (&slow).read_to_string(&mut cut);
            assert!(cut.starts_with("HTTP/1.1 408 Request Timeout"), "{cut:?}");
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "{:?}",
                t.elapsed()
            );
            stop.store(true, Ordering::SeqCst);
            assert_eq!(server.join().unwrap().unwrap(), 2);
        });
    }
}
