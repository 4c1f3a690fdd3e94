//! The command line: clap definitions and thin handlers that print.

mod audit;
mod ca;
mod common;
mod identity;
mod init;
mod log;
mod meta;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use common::Ctx;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the command ran but found problems or some items failed
  2  usage error, or an unclassified runtime error
  3  invalid input (CSV, CSR, certificate, profile, device reply)
  4  registry problem (not initialised, corrupt, foreign, newer schema, busy)
  5  key or CA problem (wrong passphrase, key/certificate mismatch, not a CA)
  6  device or serial-line problem
  7  conflict with existing state (already exists, duplicate, invalid transition)
  8  file system problem (cannot read or write a file)

Environment:
  CRADLE_HOME           home directory (instead of --home)
  CRADLE_CA_PASSPHRASE  CA key passphrase (instead of --passphrase-file)
  CRADLE_STATION        station name recorded on events
  CRADLE_OPERATOR       operator name recorded on events";

/// Make, burn, track and retire IoT device identities.
#[derive(Debug, Parser)]
#[command(
    name = "cradle",
    version,
    about = "Make, burn, track and retire IoT device identities",
    long_about = "cradle makes device keys and X.509 certificates, keeps every device in a \
local SQLite registry with a hash-chained event log, and retires devices with revocation \
and wipe records. All state lives in one home directory.",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Home directory holding the registry, the CA and the config
    #[arg(long, global = true, env = "CRADLE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new home: registry, CA folder, config and editable profiles
    #[command(
        after_help = "Examples:\n  cradle --home /srv/cradle init --station line-1 --org \"ACME Devices\"\n  CRADLE_HOME=./h cradle init"
    )]
    Init(init::InitArgs),

    /// Create, import, show and export the certificate authority
    #[command(subcommand)]
    Ca(ca::CaCommand),

    /// Issue, sign, show and verify device identities
    #[command(subcommand)]
    Identity(identity::IdentityCommand),

    /// List, show and check certificate profiles
    #[command(subcommand)]
    Profile(meta::ProfileCommand),

    /// Check the registry for problems (exit 1 on findings; see --list-checks)
    #[command(after_help = audit::AUDIT_AFTER_HELP)]
    Audit(audit::AuditArgs),

    /// Verify and export the hash-chained event log
    #[command(subcommand)]
    Log(log::LogCommand),

    /// Write reports for people (HTML fleet report)
    #[command(subcommand)]
    Report(report::ReportCommand),

    /// Print a shell completion script
    #[command(after_help = "Example:\n  cradle completions bash > /etc/bash_completion.d/cradle")]
    Completions {
        /// Shell to generate completions for
        shell: clap_complete::Shell,
    },

    /// Write the man pages generated from this binary into a directory
    #[command(hide = true)]
    Man {
        /// Output directory
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
}

/// Runs the parsed command; returns the exit code for a run that completed.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let ctx = match Ctx::new(cli.home.as_deref(), cli.json) {
        Ok(ctx) => ctx,
        // `cradle audit` promises scripts exit 2 for every runtime error.
        Err(e) if matches!(cli.command, Command::Audit(_)) => {
            eprintln!("cradle: error: {e:#}");
            return Ok(crate::error::exit::USAGE);
        }
        Err(e) => return Err(e),
    };
    match cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Ca(c) => ca::run(&ctx, c),
        Command::Identity(c) => identity::run(&ctx, c),
        Command::Profile(c) => meta::profile(&ctx, c),
        Command::Audit(a) => audit::run(&ctx, a),
        Command::Log(c) => log::run(&ctx, c),
        Command::Report(c) => report::run(&ctx, c),
        Command::Completions { shell } => meta::completions(shell),
        Command::Man { out } => meta::man(&out),
    }
}
