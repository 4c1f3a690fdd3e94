//! Shared pieces of the command handlers: the home, output, progress, passphrases.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::home::{self, Config, Home};
use crate::identity::Actor;
use crate::pki::ca::{self, CaSigner};
use crate::registry::Registry;

pub struct Ctx {
    pub home: Home,
    pub json: bool,
}

impl Ctx {
    pub fn new(home: Option<&Path>, json: bool) -> anyhow::Result<Ctx> {
        Ok(Ctx {
            home: Home::resolve(home)?,
            json,
        })
    }

    /// Opens the registry of an initialised home.
    pub fn registry(&self) -> anyhow::Result<Registry> {
        self.home.require_initialised()?;
        Ok(Registry::open(&self.home.registry_path())?)
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

    /// Unlocks the issuing CA with the passphrase from file, env or prompt.
    pub fn signer(&self, reg: &Registry, pass: &PassArgs) -> anyhow::Result<CaSigner> {
        // Check for a CA before asking for a passphrase that cannot help.
        ca::active_issuing(reg.conn())?;
        let p = crate::passphrase::obtain(pass.passphrase_file.as_deref(), false)?;
        ca::unlock(reg.conn(), &self.home.ca_dir(), p.as_bytes())
            .context("cannot unlock the issuing CA")
    }

    pub fn templates(&self) -> Option<PathBuf> {
        let d = self.home.templates_dir();
        d.is_dir().then_some(d)
    }
}

/// Where the CA passphrase comes from (never the command line itself).
#[derive(Debug, Clone, clap::Args)]
pub struct PassArgs {
    /// Read the CA passphrase from the first line of FILE (else CRADLE_CA_PASSPHRASE, else a prompt)
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
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
        .map(crate::registry::fmt_time)
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
