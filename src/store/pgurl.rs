//! Where a PostgreSQL registry is and how to reach it (issue 14): the URL as an
//! operator writes it (`postgresql://USER@HOST:PORT/DB`, `?host=/run/postgresql`,
//! `sslmode`, `sslrootcert`), checked before anything connects; the password only
//! from `PGPASSWORD` or the pgpass file (`PGPASSFILE`, else `~/.pgpass`), never from
//! the URL, which sits in config.toml and on command lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::StoreError;
use crate::error::{Error, Result};

/// Whether `s` names a PostgreSQL registry rather than a file.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// How TLS is used, as libpq's `sslmode` says (rust-postgres itself knows only
/// disable/prefer/require; the verifying modes are ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// TLS when the server offers it, certificate not checked (libpq's default).
    Prefer,
    /// TLS or nothing, certificate not checked.
    Require,
    /// TLS, certificate chain checked against `sslrootcert` (or the system roots).
    VerifyCa,
    /// As VerifyCa, and the certificate must name the host.
    VerifyFull,
}

/// A checked registry URL.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The URL as given (it holds no password: that is refused).
    pub url: String,
    config: postgres::Config,
    pub tls: Tls,
    root_cert: Option<PathBuf>,
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget> {
        // A refused URL is named without its password.
        let shown = redact(url);
        let bad = |why: String| Error::usage(format!("registry URL {shown}: {why}"));
        if !is_url(url) {
            return Err(bad(
                "not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)".into()
            ));
        }
        // The parameters rust-postgres does not parse are taken out here.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut tls = Tls::Prefer;
        let mut root_cert = None;
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "sslmode" => {
                    tls = match v {
                        "disable" => Tls::Disable,
                        "allow" | "prefer" => Tls::Prefer,
                        "require" => Tls::Require,
                        "verify-ca" => Tls::VerifyCa,
                        "verify-full" => Tls::VerifyFull,
                        _ => return Err(bad(format!("sslmode={v} is not one of disable, allow, prefer, require, verify-ca, verify-full"))),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(v)),
                "password" => {
                    return Err(bad(password_refused()));
                }
                _ => kept.push(part),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let config: postgres::Config = rebuilt
            .parse()
            .map_err(|e: postgres::Error| bad(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(bad(password_refused()));
        }
        if config.get_hosts().is_empty() {
            return Err(bad(
                "no host (postgresql://USER@HOST/DB or ?host=/run/postgresql)".into(),
            ));
        }
        Ok(PgTarget {
            url: url.to_string(),
            config,
            tls,
            root_cert,
        })
    }

    fn user(&self) -> String {
        self.config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into())
    }

    /// Connects, waiting at most `timeout` for each address; every failure is one line
    /// naming the URL (exit 4).
    pub fn connect(&self, timeout: Duration) -> Result<postgres::Client> {
        let mut config = self.config.clone();
        config.user(&self.user());
        config.connect_timeout(timeout);
        config.application_name("cradle");
        // Waiting on another station's lock is bounded the same way as on SQLite.
        config.options(&format!(
            "-c lock_timeout={}",
            super::BUSY_TIMEOUT.as_millis()
        ));
        if let Some(pw) = self.password()? {
            config.password(pw);
        }
        config.ssl_mode(match self.tls {
            Tls::Disable => postgres::config::SslMode::Disable,
            Tls::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        // Unacknowledged data (a server gone mid-transaction) fails after the same wait.
        config.tcp_user_timeout(timeout);
        let tls = (self.tls != Tls::Disable)
            .then(|| self.tls_connector())
            .transpose()?;
        // rust-postgres bounds only the socket connect; a server that accepts and never
        // answers (or a stuck TLS handshake) would hang the station, so the whole
        // startup runs on a thread given `timeout` (left behind if it never returns:
        // the command exits with the error).
        let (send, recv) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = match tls {
                None => config.connect(postgres::NoTls),
                Some(t) => config.connect(t),
            };
            let _ = send.send(r);
        });
        match recv.recv_timeout(timeout + Duration::from_millis(500)) {
            Ok(r) => r.map_err(|e| self.connect_err(&e)),
            Err(_) => Err(Error::Store(StoreError::Unreachable(format!(
                "registry {}: no answer from the server within {} s (--registry-timeout)",
                self.url,
                timeout.as_secs()
            )))),
        }
    }

    fn tls_connector(&self) -> Result<postgres_openssl::MakeTlsConnector> {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let tls_err = |e: openssl::error::ErrorStack| {
            Error::Store(StoreError::Unreachable(format!(
                "registry {}: TLS setup: {e}",
                self.url
            )))
        };
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
        if let Some(ca) = &self.root_cert {
            b.set_ca_file(ca).map_err(|e| {
                Error::Store(StoreError::Unreachable(format!(
                    "registry {}: sslrootcert {}: {e}",
                    self.url,
                    ca.display()
                )))
            })?;
        }
        let verify = matches!(self.tls, Tls::VerifyCa | Tls::VerifyFull);
        b.set_verify(if verify {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        let mut c = postgres_openssl::MakeTlsConnector::new(b.build());
        let full = self.tls == Tls::VerifyFull;
        c.set_callback(move |cfg, _| {
            cfg.set_verify_hostname(full);
            Ok(())
        });
        Ok(c)
    }

    /// `PGPASSWORD`, else the first matching line of the pgpass file.
    fn password(&self) -> Result<Option<Vec<u8>>> {
        if let Ok(p) = std::env::var("PGPASSWORD") {
            return Ok(Some(p.into_bytes()));
        }
        let file = match std::env::var_os("PGPASSFILE") {
            Some(f) => PathBuf::from(f),
            None => match dirs::home_dir() {
                Some(h) => h.join(".pgpass"),
                None => return Ok(None),
            },
        };
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            // libpq matches a socket directory as "localhost".
            _ => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.user();
        let db = self
            .config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        pgpass_lookup(&file, &[&host, &port.to_string(), &db, &user])
    }

    fn connect_err(&self, e: &postgres::Error) -> Error {
        use postgres::error::SqlState;
        let url = &self.url;
        let msg = match e.as_db_error() {
            Some(db) if *db.code() == SqlState::INVALID_PASSWORD => format!(
                "registry {url}: password authentication failed for user {} (the password comes from PGPASSWORD or PGPASSFILE)",
                self.user()
            ),
            Some(db) if *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                format!("registry {url}: the server refused this station: {}", db.message())
            }
            Some(db) if *db.code() == SqlState::INVALID_CATALOG_NAME => {
                format!("registry {url}: {} (create it first: createdb)", db.message())
            }
            Some(db) => format!("registry {url}: {}", db.message()),
            None => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(e);
                while let Some(inner) = src {
                    s = format!("{s}: {inner}");
                    src = inner.source();
                }
                if s.contains("password missing") {
                    format!("registry {url}: the server asks for a password: set PGPASSWORD or a PGPASSFILE line for it")
                } else {
                    format!("cannot reach registry {url}: {s}")
                }
            }
        };
        Error::Store(StoreError::Unreachable(msg))
    }
}

/// `url` with any password (in the user part or a `password=` parameter) as `***`.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match auth.rsplit_once('@') {
                Some((user, host)) if user.contains(':') => {
                    let name = user.split(':').next().unwrap_or("");
                    format!("{scheme}://{name}:***@{host}{tail}")
                }
                _ => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|p| {
                if p.starts_with("password=") {
                    "password=***".to_string()
                } else {
                    p.to_string()
                }
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

fn password_refused() -> String {
    "holds a password, which would sit in config.toml and on command lines: remove it and put it in PGPASSWORD or a PGPASSFILE line (host:port:db:user:password)".into()
}

/// The password of the first line of a pgpass file whose four fields match `want`
/// (host, port, database, user; `*` matches anything; `\:` and `\\` escape). As libpq,
/// a file that others may read is ignored, with a warning.
fn pgpass_lookup(file: &Path, want: &[&str; 4]) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "warning: password file {} has group or world access; ignored (chmod 0600 it)",
            file.display()
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Ok(Some(fields[4].clone().into_bytes()));
        }
    }
    Ok(None)
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("one field").push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().expect("one field").push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_a_password_are_refused_in_either_place() {
        for url in [
            "postgresql://u:secret@db/reg",
            "postgres://u@db/reg?password=secret",
        ] {
            let e = PgTarget::parse(url).unwrap_err().to_string();
            assert!(e.contains("holds a password"), "{e}");
            // The refusal never repeats the secret.
            assert!(!e.contains("secret"), "{e}");
            assert!(e.contains("***"), "{e}");
        }
    }

    #[test]
    fn sslmodes_and_sockets_parse() {
        let t =
            PgTarget::parse("postgresql://u@db:5433/reg?sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap();
        assert_eq!(t.tls, Tls::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        let t = PgTarget::parse("postgresql:///reg?host=/run/postgresql").unwrap();
        assert_eq!(t.tls, Tls::Prefer);
        assert!(PgTarget::parse("postgresql://db/reg?sslmode=sometimes").is_err());
        assert!(PgTarget::parse("mysql://db/reg").is_err());
    }

    #[test]
    fn pgpass_matches_wildcards_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(&f, "# c\nother:5432:*:u:no\ndb:*:reg:u:pa\\:ss\n").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let got = pgpass_lookup(&f, &["db", "5433", "reg", "u"]).unwrap();
        assert_eq!(got.as_deref(), Some(&b"pa:ss"[..]));
        assert_eq!(pgpass_lookup(&f, &["db", "5433", "x", "u"]).unwrap(), None);
        // Readable by others: ignored, as libpq does.
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert_eq!(
            pgpass_lookup(&f, &["db", "5433", "reg", "u"]).unwrap(),
            None
        );
    }
}
