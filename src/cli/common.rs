//! Shared pieces of the command handlers: the home, output, progress, passphrases.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::home::{self, Config, Home};
use crate::model::Actor;
use crate::pki::ca;
use crate::pki::signer::CaSigner;
use crate::store::pg::PgStore;
use crate::store::pgurl::PgTarget;
use crate::store::Store;

/// The commands that work on a PostgreSQL registry (README "PostgreSQL registry").
pub const PORTED_TO_POSTGRES: &str =
    "init, status, log head, log verify (without --anchor), log export";

pub struct Ctx {
    pub home: Home,
    pub json: bool,
    /// `--registry` / `CRADLE_REGISTRY`: a PostgreSQL URL instead of the config's.
    pub registry_override: Option<String>,
    /// `--registry-timeout`: how long to wait for a PostgreSQL server.
    pub registry_timeout: std::time::Duration,
}

/// Which registry a command works on.
pub enum Backend {
    /// The home's SQLite file (the default).
    File,
    /// A PostgreSQL server (issue 14).
    Postgres(Box<PgTarget>),
}

impl Ctx {
    pub fn new(home: Option<&Path>, json: bool) -> anyhow::Result<Ctx> {
        let home = Home::resolve(home)?;
        // No output file of any command may replace a file of the home.
        crate::outfile::protect_home(&home.root);
        Ok(Ctx {
            home,
            json,
            registry_override: None,
            registry_timeout: std::time::Duration::from_secs(10),
        })
    }

    /// The registry this command works on: `--registry`/`CRADLE_REGISTRY`, else the
    /// home's config.toml `registry`, else the home's registry.db.
    pub fn backend(&self) -> anyhow::Result<Backend> {
        let url = match &self.registry_override {
            Some(u) => {
                if !crate::store::pgurl::is_url(u) {
                    return Err(crate::error::Error::usage(format!(
                        "--registry/CRADLE_REGISTRY {}: takes a postgresql:// URL (a SQLite registry is always the home's {})",
                        crate::store::pgurl::redact(u),
                        home::REGISTRY_FILE
                    ))
                    .into());
                }
                u.clone()
            }
            None => {
                // A home without config.toml (or not yet initialised) uses its file.
                if !self.home.config_path().exists() {
                    return Ok(Backend::File);
                }
                let c = self.config()?;
                if c.registry.is_empty() {
                    return Ok(Backend::File);
                }
                c.registry
            }
        };
        Ok(Backend::Postgres(Box::new(PgTarget::parse(&url)?)))
    }

    /// The PostgreSQL registry of this command, opened (schema checked and migrated);
    /// the log key is the home's.
    pub fn pg_registry(&self, target: &PgTarget) -> anyhow::Result<PgStore> {
        Ok(PgStore::open(
            target,
            self.registry_timeout,
            &self.home.root.join(crate::store::logkey::LOG_KEY_FILE),
        )?)
    }

    /// The PostgreSQL registry of this command as a `Store`, if it has one.
    fn pg_store(&self) -> anyhow::Result<Option<Store>> {
        match self.backend()? {
            Backend::Postgres(t) => Ok(Some(Store::open_pg(
                &t,
                self.registry_timeout,
                &self.home.root.join(crate::store::logkey::LOG_KEY_FILE),
            )?)),
            Backend::File => Ok(None),
        }
    }

    /// Opens the registry of an initialised home.
    pub fn registry(&self) -> anyhow::Result<Store> {
        if let Some(s) = self.pg_store()? {
            return Ok(s);
        }
        self.home.require_initialised()?;
        Ok(Store::open(&self.home.registry_path())?)
    }

    /// Opens the registry for a command that only reads: works on a read-only file,
    /// directory or file system, and says once when it cannot see concurrent writes.
    pub fn registry_read(&self) -> anyhow::Result<Store> {
        if let Some(s) = self.pg_store()? {
            return Ok(s);
        }
        self.home.require_initialised()?;
        let path = self.home.registry_path();
        let (reg, access) = Store::open_for_reading(&path)?;
        if access == crate::store::ReadAccess::Immutable {
            eprintln!(
                "note: registry {} and its directory are read-only: reading it as an immutable snapshot (writes by other stations meanwhile are not seen)",
                path.display()
            );
        }
        Ok(reg)
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(self.home.load_config()?)
    }

    pub fn actor(&self, config: &Config) -> Actor {
        Actor {
            operator: home::operator(),
            station: self.home.station(config),
        }
    }

    /// Unlocks the issuing CA: its key file with the passphrase, or its key on a
    /// PKCS#11 token with the token's PIN (each from file, env or prompt).
    pub fn signer(&self, reg: &Store, pass: &PassArgs) -> anyhow::Result<CaSigner> {
        // Check for a CA before asking for a secret that cannot help.
        let record = crate::app::ca::active_issuing(reg)?;
        let dir = self.home.ca_dir();
        let signer = match ca::KeyRef::of(&record, &dir)? {
            ca::KeyRef::Token(uri) => {
                let pin = crate::passphrase::obtain_pin(pass.pin_file.as_deref())?;
                ca::unlock_token(record, &dir, &uri, &pin)
            }
            ca::KeyRef::File(_) => {
                let p = crate::passphrase::obtain(pass.passphrase_file.as_deref(), false)?;
                ca::unlock(record, &dir, p.as_bytes())
            }
        };
        signer.context("cannot unlock the issuing CA")
    }

    pub fn templates(&self) -> Option<PathBuf> {
        let d = self.home.templates_dir();
        d.is_dir().then_some(d)
    }
}

/// Where the CA passphrase or token PIN comes from (never the command line itself).
#[derive(Debug, Clone, clap::Args)]
pub struct PassArgs {
    /// Read the CA passphrase from the first line of FILE (else CRADLE_CA_PASSPHRASE, else a prompt)
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// CA keys on a PKCS#11 token: read its user PIN from the first line of FILE (else CRADLE_PKCS11_PIN, else a prompt)
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
}

/// The one stderr line for a failed command: the context chain joined by ": ", each
/// cause once (a cause already at the end of the line is not repeated), with control
/// characters escaped, since messages quote file contents and device replies that
/// must not move the cursor or recolour the terminal.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::from("cradle: error: ");
    let start = line.len();
    for cause in err.chain() {
        let text = one_line(&cause.to_string()).into_owned();
        if line[start..].ends_with(&text) {
            continue;
        }
        if line.len() > start {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `s` with every control character (newlines too) escaped as `\n`, `\u{1b}`….
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A closed pipe (`cradle … | head`) is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    // serde_json keeps the io::Error inside without exposing it as a source.
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Unix seconds as RFC 3339.
pub fn ts(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(crate::store::fmt_time)
        .unwrap_or_else(|_| secs.to_string())
}

/// Prints rows as an aligned text table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// One line for a key's device attestation, e.g. `attested by the device
/// (nrf91-keygen-cose, verified) device uuid 5036…`.
pub fn attestation_line(ev: &serde_json::Value) -> String {
    let field = |k: &str| ev.get(k).and_then(|v| v.as_str()).unwrap_or("?");
    let mut line = format!(
        "attested by the device ({}, {})",
        field("format"),
        field("attestation")
    );
    if let Some(uuid) = ev.get("device_uuid").and_then(|v| v.as_str()) {
        line.push_str(&format!("  device uuid {uuid}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_names_each_cause_once_and_escapes_controls() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(crate::Error::io("/x.csv", io)).context("importing");
        assert_eq!(
            error_line(&e),
            "cradle: error: importing: /x.csv: No such file"
        );
        let e = anyhow::anyhow!("column 'mo\x1b[2Jdel'\nline two");
        assert_eq!(
            error_line(&e),
            "cradle: error: column 'mo\\u{1b}[2Jdel'\\nline two"
        );
    }
}
