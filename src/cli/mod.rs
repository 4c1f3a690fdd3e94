//! The command line: clap definitions and thin handlers that print.

mod audit;
mod ca;
pub mod common;
mod conformance;
mod crl;
mod device;
mod export;
mod identity;
mod init;
mod inventory;
mod label;
mod log;
mod meta;
mod ocsp;
mod provision;
mod registry;
mod renew;
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
  5  key or CA problem (wrong passphrase or token PIN, key/certificate mismatch, not a CA)
  6  device or serial-line problem, an unreachable label printer, or an absent PKCS#11 token
  7  conflict with existing state (already exists, duplicate, invalid transition)
  8  file system problem (cannot read or write a file)
  130  interrupted (SIGINT/SIGTERM) after finishing or abandoning the work in hand cleanly

Environment:
  CRADLE_HOME           home directory (instead of --home)
  CRADLE_REGISTRY       PostgreSQL registry URL (instead of config.toml's; --registry wins)
  PGPASSWORD, PGPASSFILE  password of a PostgreSQL registry (never in the URL)
  CRADLE_CA_PASSPHRASE  CA key passphrase (instead of --passphrase-file)
  CRADLE_PKCS11_PIN     PIN of the token holding the CA keys (instead of --pin-file)
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

    /// PostgreSQL registry URL (postgresql://USER@HOST:PORT/DB; no password: PGPASSWORD or
    /// PGPASSFILE) instead of the home's; `init` records it in config.toml
    // hide_env_values: --help must never print a URL someone put a password into.
    #[arg(
        long,
        global = true,
        env = "CRADLE_REGISTRY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub registry: Option<String>,

    /// Seconds to wait for a PostgreSQL registry server to answer
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub registry_timeout: u64,

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

    #[command(display_order = 10)]
    /// Issue successor certificates (same key, or --rekey) as files, a bundle, or onto a device in place
    #[command(after_help = renew::RENEW_AFTER_HELP)]
    Renew(Box<renew::RenewArgs>),

    #[command(display_order = 11)]
    /// Retire devices: revoke, refresh the CRL, wipe with attestation or a manual record, mark decommissioned
    #[command(
        after_help = "Steps per device, each one transaction, recorded and resumable:\n  1 retire  2 revoke active certificates + refresh the CRL  3 wipe  4 decommissioned\nA re-run of the same command (or --resume) continues where a crash stopped; no step runs twice.\nExit 1 if any device failed; the others go on.\n--wipe-port speaks cradle-protocol(7): HELLO (the registered hardware id must answer, else\nnothing is sent), then WIPE with a fresh single-use nonce; the signed attestation is verified\nagainst the device's registered certificate. A lost reply is collected by a re-run.\n--wipe-device-profile esp32: erase the esp_secure_cert partition and read it back as erased\n(recorded as a read-back wipe, not device-signed), see cradle-esp32(7).\nWith --wipe-device-profile micropython the board's identity files (--mp-*-path) are removed\nover the raw REPL and each is stat'ed until it is gone (ENOENT): recorded as a wipe\nverified by read-back, not as a signed attestation (the board cannot sign one).\n\nExamples:\n  cradle decommission ACME-000001 --wipe-port /dev/ttyUSB0 --report-dir certs/\n  cradle decommission ACME-000003 --wipe-port /dev/ttyACM0 --wipe-baud 921600 --wipe-timeout 10\n  cradle decommission ACME-000002 --wipe-method destroy --wipe-tool \"shredder SSL-1\" --verified-by \"J. Doe\"\n  cradle decommission --from retire.csv --wipe-method purge --wipe-tool nwipe --verified-by QA --dry-run\n  cradle decommission --resume"
    )]
    Decommission(Box<retire::DecommissionArgs>),

    #[command(display_order = 7)]
    /// Import and export devices as CSV, JSON or JSON Lines
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),

    #[command(display_order = 7)]
    /// Hand devices to a cloud registry: AWS IoT Core, Azure DPS, nRF Cloud
    #[command(subcommand)]
    Export(export::ExportCommand),

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
        after_help = "Flow per device: HELLO -> look up or register by hardware id -> key (device CSR or\ninjected) -> issue -> write certificate + chain -> read back -> LOCK -> record PASS.\nA failure records provision.failed and leaves the certificate 'unused'; a re-run finishes\nthe job. The registry serial of a new device is the serial in its HELLO reply, else its\nhardware id. Exit 0 if every device passed, 1 if any failed.\nCtrl-C (SIGINT/SIGTERM): a port that is writing finishes its device, the others stop at the\nnext step (recorded as provision.failed); the table is printed and the exit is 130.\nWith --watch a FAILed device is retried when it is unplugged and plugged in again.\n--config NAME: after the identity, the device's configuration (templates/config/NAME, see\ncradle-config(5)) is rendered, written, read back by SHA-256 and recorded (cradle, micropython).\nEvery run records the firmware the device reports and the contact time.\n\nExamples:\n  cradle provision --port /dev/ttyUSB0\n  cradle provision --ports '/dev/ttyUSB*' --mode inject --json\n  cradle provision --ports '/tmp/dev/cradle*' --watch\n  cradle provision --port /dev/ttyACM0 --device-profile nrf91\n  cradle provision --ports '/dev/ttyUSB*' --device-profile esp32 --mode inject --watch\n  cradle provision --port /dev/ttyACM1 --device-profile micropython --mode inject\n\n--device-profile esp32 writes Espressif's esp_secure_cert partition over the ROM bootloader\n(a development-grade plaintext key): see cradle-esp32(7).\n\nMicroPython boards (--device-profile micropython, --mode inject only): cradle interrupts\nthe board (Ctrl-C), enters the raw REPL (Ctrl-A; raw-paste mode when offered), reads\nmachine.unique_id() as the hardware id and os.uname() for model and firmware, makes the key\non the host and writes key, certificate and chain as PEM files (default /certs/device.key,\n/certs/device.crt, /certs/chain.pem; --mp-key-path, --mp-cert-path, --mp-chain-path),\ncreating the directories; the board hashes each file (hashlib.sha256) and a file is written\nagain until its digest matches. Then the board is left at its friendly REPL (Ctrl-B) and the\nrun PASSes. The key then exists only on the board, as a plaintext file on its filesystem:\nthat is development-grade. Anyone with the USB cable (mpremote fs cat) or the flash chip can\nread it; a production line keeps the key in a secure element or encrypted flash instead."
    )]
    Provision(provision::ProvisionArgs),

    #[command(display_order = 6)]
    /// Simulate devices on pseudo-terminals (for demos and tests, no hardware needed)
    #[command(after_help = concat!("Prints each device's pty path on its own line as soon as it is up, then runs until\nSIGINT/SIGTERM (removing its symlinks); with --json, one JSON object per line (index,\npath, link, hardware_id). A device that hangs up (disconnect fault) comes back on a new pty\nbehind the same link and is printed again. With --state the device keeps its identity\nacross restarts.\n\n", crate::fault_help!(), "\n\nExamples:\n  cradle sim --link /tmp/dev/cradle --count 4 &\n  cradle sim --link /tmp/dev/dut --state dut.json --fault corrupt:0.001\n  cradle sim --profile nrf91 --link /tmp/dev/modem\n  cradle sim --profile micropython --link /tmp/dev/board   # mpremote connect /tmp/dev/board fs ls"))]
    Sim(sim::SimArgs),

    #[command(display_order = 7)]
    /// Check a device against cradle-protocol(7): one pass/fail line per rule (exit 1 if any fails)
    #[command(
        after_help = "Drives the device through every rule of cradle-protocol(7): framing, CRC, the exact
form, line bounds, SEQ echo, windowing, resuming after a reopen, every error code a
request can provoke, KEYGEN, WRITE/COMMIT/READ, LOCK, the spare slots and SWITCH, and the
WIPE attestation bytes.
Touches no registry and no CA (cradle init is not needed): a throwaway issuer in memory
signs the test certificate. It leaves the device wiped; a device that holds an identity
is refused (exit 7) unless --force.

Examples:
  cradle conformance --port /dev/ttyUSB0
  cradle conformance --port /dev/ttyACM0 --baud 921600 --json"
    )]
    Conformance(conformance::ConformanceArgs),

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

    #[command(display_order = 13)]
    /// The registry as a whole: copy it to PostgreSQL or a SQLite file, verified on arrival
    #[command(subcommand)]
    Registry(registry::RegistryCommand),

    #[command(display_order = 14)]
    /// Reports for people: the HTML fleet report, certificates of sanitization
    #[command(subcommand)]
    Report(report::ReportCommand),

    #[command(display_order = 15)]
    /// Print device labels with a QR code: ZPL for Zebra printers, SVG or PNG
    #[command(after_help = label::LABEL_HELP)]
    Label(label::LabelArgs),

    #[command(display_order = 16)]
    /// Print a shell completion script
    #[command(after_help = "Example:\n  cradle completions bash > /etc/bash_completion.d/cradle")]
    Completions {
        /// Shell to generate completions for
        shell: clap_complete::Shell,
    },

    #[command(display_order = 17)]
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
        Ok(mut ctx) => {
            ctx.registry_override = cli.registry.clone();
            ctx.registry_timeout = std::time::Duration::from_secs(cli.registry_timeout);
            ctx
        }
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
        Command::Renew(a) => renew::run(&ctx, *a),
        Command::Decommission(a) => retire::decommission(&ctx, *a),
        Command::Report(c) => report::run(&ctx, c),
        Command::Inventory(c) => inventory::run(&ctx, c),
        Command::Export(c) => export::run(&ctx, c),
        Command::Device(c) => device::run(&ctx, c),
        Command::Status => device::status(&ctx),
        Command::Profile(c) => meta::profile(&ctx, c),
        Command::Provision(a) => provision::run(&ctx, a),
        Command::Sim(a) => sim::run(&ctx, a),
        Command::Conformance(a) => conformance::run(&ctx, a),
        Command::Audit(a) => audit::run(&ctx, a),
        Command::Ocsp(c) => ocsp::run(&ctx, c),
        Command::Log(c) => log::run(&ctx, c),
        Command::Registry(c) => registry::run(&ctx, c),
        Command::Label(a) => label::run(&ctx, a),
        Command::Completions { shell } => meta::completions(shell),
        Command::Man { out } => meta::man(&out),
    }
}
