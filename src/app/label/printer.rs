//! A label printer on the network: raw ZPL to its port 9100 ("JetDirect" raw printing).

use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};

/// A parsed `tcp://HOST[:PORT]` printer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printer {
    pub host: String,
    pub port: u16,
}

impl Printer {
    pub fn parse(url: &str) -> Result<Printer> {
        let bad =
            |why: &str| Error::usage(format!("--printer '{url}': {why} (use tcp://HOST:9100)"));
        let rest = url
            .strip_prefix("tcp://")
            .ok_or_else(|| bad("only tcp:// printers are supported"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal keeps its colons inside brackets.
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            ),
            _ => (rest, 9100),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(bad("no host name"));
        }
        Ok(Printer {
            host: host.to_string(),
            port,
        })
    }

    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("tcp://[{}]:{}", self.host, self.port)
        } else {
            format!("tcp://{}:{}", self.host, self.port)
        }
    }

    /// Connects (each resolved address in turn, `timeout` each), writes `data` with
    /// `timeout` per write and closes the sending side, so the printer sees the job end.
    pub fn send(&self, data: &[u8], timeout: Duration) -> Result<()> {
        let fail = |what: &str, e: std::io::Error| {
            let why = if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                format!("timed out after {:.1} s", timeout.as_secs_f64())
            } else {
                e.to_string()
            };
            Error::Device(format!("printer {}: {what}: {why}", self.url()))
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| fail("cannot resolve the host", e))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut s = match stream {
            Some(s) => s,
            None => {
                let e = last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into());
                return Err(fail("cannot connect", e));
            }
        };
        s.set_write_timeout(Some(timeout))
            .map_err(|e| fail("cannot set the write timeout", e))?;
        s.write_all(data)
            .map_err(|e| fail("sending the labels", e))?;
        s.flush().map_err(|e| fail("sending the labels", e))?;
        s.shutdown(Shutdown::Write)
            .map_err(|e| fail("closing the job", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_addresses() {
        let p = Printer::parse("tcp://zebra-1:9100").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("zebra-1", 9100));
        assert_eq!(Printer::parse("tcp://10.0.0.7").unwrap().port, 9100);
        let p = Printer::parse("tcp://[::1]:6101").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 6101));
        assert_eq!(p.url(), "tcp://[::1]:6101");
        for bad in [
            "lpd://x",
            "tcp://",
            "tcp://x:0",
            "tcp://x:port",
            "tcp://a/b:1",
        ] {
            assert!(Printer::parse(bad).is_err(), "{bad}");
        }
    }
}
