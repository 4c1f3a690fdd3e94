//! The command line: clap definitions and thin handlers that print.

mod audit;
mod ca;
pub mod common;
mod crl;
mod device;
mod identity;
mod init;
mod inventory;
mod log;
mod meta;
mod ocsp;
mod provision;
mod report;
mod retire;
mod sanitization;
mod sim;
mod values;

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
    long_about = "cradle makes device keys and X.509 certificates, burns them onto devices over \
serial ports, keeps every device in a local SQLite registry with a hash-chained event log, \
imports and exports inventory CSV, retires devices with revocation, CRLs and wipe \
attestations, and audits the fleet. All state lives in one home directory.",
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
    #[command(display_order = 1)]
    /// Create a new home: registry, CA folder, config and editable profiles
    #[command(
        after_help = "Examples:\n  cradle --home /srv/cradle init --station line-1 --org \"ACME Devices\"\n  CRADLE_HOME=./h cradle init"
    )]
    Init(init::InitArgs),

    #[command(display_order = 2)]
    /// Create, import, show and export the certificate authority
    #[command(subcommand)]
    Ca(ca::CaCommand),

    #[command(display_order = 4)]
    /// Issue, sign, show and verify device identities
    #[command(subcommand)]
    Identity(identity::IdentityCommand),

    #[command(display_order = 10)]
    /// Revoke a device's certificates (RFC 5280 reason) and republish the CRL
    #[command(
        after_help = "Revoking a certificate that is already revoked is a no-op that says so (exit 0).\nThe CRL is rewritten to crl_path (config.toml) after every revocation.\n\nExamples:\n  cradle revoke ACME-000001 --reason key-compromise --passphrase-file ca.pass\n  cradle revoke ACME-000001 --cert 3fa2c1d0 --reason superseded\n  cradle revoke --from lost.csv --reason keyCompromise   # columns: serial[,cert][,reason]"
    )]
    Revoke(retire::RevokeArgs),

    #[command(display_order = 11)]
    /// Retire devices: revoke, refresh the CRL, wipe with attestation or a manual record, mark decommissioned
    #[command(
        after_help = "Steps per device, each one transaction, recorded and resumable:\n  1 retire  2 revoke active certificates + refresh the CRL  3 wipe  4 decommissioned\nA re-run of the same command (or --resume) continues where a crash stopped; no step runs twice.\nExit 1 if any device failed; the others go on.\n--wipe-port speaks cradle-protocol(7): HELLO (the registered hardware id must answer, else\nnothing is sent), then WIPE with a fresh single-use nonce; the signed attestation is verified\nagainst the device's registered certificate. A lost reply is collected by a re-run.\n\nExamples:\n  cradle decommission ACME-000001 --wipe-port /dev/ttyUSB0 --report-dir certs/\n  cradle decommission ACME-000003 --wipe-port /dev/ttyACM0 --wipe-baud 921600 --wipe-timeout 10\n  cradle decommission ACME-000002 --wipe-method destroy --wipe-tool \"shredder SSL-1\" --verified-by \"J. Doe\"\n  cradle decommission --from retire.csv --wipe-method purge --wipe-tool nwipe --verified-by QA --dry-run\n  cradle decommission --resume"
    )]
    Decommission(Box<retire::DecommissionArgs>),

    #[command(display_order = 7)]
    /// Import and export devices as CSV, JSON or JSON Lines
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),

    #[command(display_order = 8)]
    /// List, show and edit devices; move them through the lifecycle
    #[command(subcommand)]
    Device(device::DeviceCommand),

    #[command(display_order = 9)]
    /// Summarise the fleet by state, site and batch
    #[command(after_help = "Examples:\n  cradle status\n  cradle --json status")]
    Status,

    #[command(display_order = 3)]
    /// List, show and check certificate profiles
    #[command(subcommand)]
    Profile(meta::ProfileCommand),

    #[command(display_order = 5)]
    /// Burn identities onto devices on serial ports: one, many in parallel, or as they appear
    #[command(
        after_help = "Flow per device: HELLO -> look up or register by hardware id -> key (device CSR or\ninjected) -> issue -> write certificate + chain -> read back -> LOCK -> record PASS.\nA failure records provision.failed and leaves the certificate 'unused'; a re-run finishes\nthe job. The registry serial of a new device is the serial in its HELLO reply, else its\nhardware id. Exit 0 if every device passed, 1 if any failed.\n\nExamples:\n  cradle provision --port /dev/ttyUSB0\n  cradle provision --ports '/dev/ttyUSB*' --mode inject --json\n  cradle provision --ports '/tmp/dev/cradle*' --watch\n  cradle provision --port /dev/ttyACM0 --device-profile nrf91"
    )]
    Provision(provision::ProvisionArgs),

    #[command(display_order = 6)]
    /// Simulate devices on pseudo-terminals (for demos and tests, no hardware needed)
    #[command(after_help = concat!("Prints each device's pty path on its own line as soon as it is up, then runs until\nSIGINT/SIGTERM (removing its symlinks); with --json, one JSON object per line (index,\npath, link, hardware_id). A device that hangs up (disconnect fault) comes back on a new pty\nbehind the same link and is printed again. With --state the device keeps its identity\nacross restarts.\n\n", crate::fault_help!(), "\n\nExamples:\n  cradle sim --link /tmp/dev/cradle --count 4 &\n  cradle sim --link /tmp/dev/dut --state dut.json --fault corrupt:0.001\n  cradle sim --profile nrf91 --link /tmp/dev/modem"))]
    Sim(sim::SimArgs),
    #[command(display_order = 11)]
    /// Answer OCSP requests for the issuing CA's certificates
    #[command(subcommand)]
    Ocsp(ocsp::OcspCommand),

    #[command(display_order = 12)]
    /// Check the registry for problems (exit 1 on findings; see --list-checks)
    #[command(after_help = audit::AUDIT_AFTER_HELP)]
    Audit(audit::AuditArgs),

    #[command(display_order = 13)]
    /// Verify and export the hash-chained event log
    #[command(subcommand)]
    Log(log::LogCommand),

    #[command(display_order = 14)]
    /// Reports for people: the HTML fleet report, certificates of sanitization
    #[command(subcommand)]
    Report(report::ReportCommand),

    #[command(display_order = 15)]
    /// Print a shell completion script
    #[command(after_help = "Example:\n  cradle completions bash > /etc/bash_completion.d/cradle")]
    Completions {
        /// Shell to generate completions for
        shell: clap_complete::Shell,
    },

    #[command(display_order = 16)]
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
            eprintln!("{}", common::error_line(&e));
            return Ok(crate::error::exit::USAGE);
        }
        Err(e) => return Err(e),
    };
    match cli.command {
        Command::Init(a) => init::run(&ctx, a),
        Command::Ca(c) => ca::run(&ctx, c),
        Command::Identity(c) => identity::run(&ctx, c),
        Command::Revoke(a) => retire::revoke(&ctx, a),
        Command::Decommission(a) => retire::decommission(&ctx, *a),
        Command::Report(c) => report::run(&ctx, c),
        Command::Inventory(c) => inventory::run(&ctx, c),
        Command::Device(c) => device::run(&ctx, c),
        Command::Status => device::status(&ctx),
        Command::Profile(c) => meta::profile(&ctx, c),
        Command::Provision(a) => provision::run(&ctx, a),
        Command::Sim(a) => sim::run(&ctx, a),
        Command::Audit(a) => audit::run(&ctx, a),
        Command::Ocsp(c) => ocsp::run(&ctx, c),
        Command::Log(c) => log::run(&ctx, c),
        Command::Completions { shell } => meta::completions(shell),
        Command::Man { out } => meta::man(&out),
    }
}
