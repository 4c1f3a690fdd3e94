//! `cradle audit`: run the registry checks and print findings for people or scripts.

use std::io::Write;

use anyhow::Context;
use clap::builder::PossibleValuesParser;

use super::common::Ctx;
use crate::app::audit::{self, Finding, Options, Severity, CHECKS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    Warning,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

pub const AUDIT_AFTER_HELP: &str = "\
Checks (ids for --check; `cradle audit --list-checks` describes them):
  cert-expiring, cert-expired-deployed, revoked-not-retired, decommissioned-without-wipe,
  cert-outlives-device,
  duplicate-public-key, duplicate-hardware-id, duplicate-mac, duplicate-imei,
  cert-not-chained, cert-fingerprint-mismatch, stuck-provisioning, stuck-decommission,
  renewal-pending (a successor issued for `renew --port` never confirmed on the device),
  crl-stale, crl-missing-serials, device-mark, event-chain,
  firmware-below (needs --min-firmware), firmware-listed (needs --vulnerable),
  no-contact-since (needs --no-contact-days), warranty-expiring (needs --within):
  without their option these do not run (the summary lists them under not_run); asked
  for with --check, they are a usage error; end-of-life-reached

Asset dates and criticality (cradle-audit(7)):
  cert-expiring flags a device's certificate earlier the more critical the device is:
  the --expiring-within window times 1 for low, medium or no criticality, 2 for high,
  4 for critical. warranty-expiring reports warranty_until dates from today to --within
  DAYS ahead; end-of-life-reached reports end_of_life dates today or past on devices
  not retired or decommissioned. Dates are whole UTC days.

Device marks (device-mark):
  Every device row cradle writes carries a mark, an HMAC-SHA256 keyed by a key derived
  from HOME/log.key over every other column of the row (its id included). A row edited
  with the sqlite3 shell or a script, or damaged by a flipped bit, no longer verifies;
  a later cradle write of that device does not re-mark it. A registry from before marks
  is marked once by its first write. Without log.key the rows cannot be verified (one
  finding says so).

Firmware versions (firmware-below, firmware-listed; cradle-audit(7)):
  The version of a firmware string is its first dotted number (mfw_nrf9160_1.3.5 -> 1.3.5,
  MicroPython 1.24.1 -> 1.24.1), else its last number; components compare as numbers
  (1.10 > 1.9, 1.3 = 1.3.0); a -rc1 style suffix sorts before the release (1.3.2-rc1 <
  1.3.2); +build metadata is ignored. --min-firmware models match the registry's model
  exactly. A --vulnerable file holds one VERSION (any model) or MODEL VERSION (the last
  word is the version) per line; # starts a comment.

Signatures (cert-not-chained):
  Certificates cradle recorded itself carry a verification mark, an HMAC-SHA256 keyed
  by HOME/ca/audit.key over the certificate's and its CA's fingerprints. A certificate
  whose mark verifies and whose stored DER still hashes to its recorded fingerprint is
  accepted without re-verifying its ECDSA signature; every other certificate (no mark,
  a wrong or copied mark, altered DER or CA) is verified in full. --full verifies every
  signature. Without a readable audit.key, every signature is verified (with a note on
  stderr). The audit only reads the key and never writes to the registry.

Exit codes (audit differs from other commands: every runtime error is 2):
  0  no finding at or above --fail-on
  1  at least one finding at or above --fail-on (default: warning, so 0 means clean)
  2  usage error, or the audit could not run (no registry, unreadable, locked, …)
  3  the --vulnerable file is unreadable, too large or has a malformed line

Examples:
  cradle audit
  cradle audit --check cert-expiring --expiring-within 60
  cradle audit --skip cert-not-chained      # nightly: everything but the signature pass
  cradle audit --full --check cert-not-chained   # re-verify every certificate signature
  cradle audit --fail-on error --format csv > findings.csv
  cradle audit --min-firmware nRF9160-SICA=1.3.5 --vulnerable known-bad.txt --no-contact-days 90
  cradle audit --within 90 --check warranty-expiring --check end-of-life-reached
  cradle --json audit | jq '.findings[] | select(.severity == \"error\")'";

/// Audit the registry: expiry, revocation, wipes, duplicates, chains, CRLs, the event log
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Run only this check (repeatable)
    #[arg(long = "check", value_name = "ID", value_parser = PossibleValuesParser::new(audit::check_ids()), hide_possible_values = true)]
    pub checks: Vec<String>,
    /// Do not run this check (repeatable), e.g. skip the signature pass on a nightly run
    #[arg(long = "skip", value_name = "ID", value_parser = PossibleValuesParser::new(audit::check_ids()), hide_possible_values = true)]
    pub skip: Vec<String>,
    /// Warn about certificates expiring within DAYS
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub expiring_within: u32,
    /// A device is stuck after DAYS registered-with-identity or retired
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub stuck_after: u32,
    /// Exit 1 when a finding of this severity or worse exists
    #[arg(long, value_enum, default_value = "warning")]
    pub fail_on: FailOn,
    /// Output format (--json is the same as --format json)
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Verify every certificate's signature, ignoring verification marks
    #[arg(long, visible_alias = "verify-signatures")]
    pub full: bool,
    /// List the checks with their severity and exit
    #[arg(long)]
    pub list_checks: bool,
    /// firmware-below: devices of MODEL need at least VERSION (repeatable)
    #[arg(long, value_name = "MODEL=VERSION")]
    pub min_firmware: Vec<crate::app::firmware::MinFirmware>,
    /// firmware-listed: versions known bad, one `VERSION` or `MODEL VERSION` a line
    #[arg(long, value_name = "FILE")]
    pub vulnerable: Option<std::path::PathBuf>,
    /// no-contact-since: in-service devices not reached over a port for DAYS
    #[arg(long, value_name = "DAYS")]
    pub no_contact_days: Option<u32>,
    /// warranty-expiring: in-service devices whose warranty ends within DAYS
    #[arg(long, value_name = "DAYS")]
    pub within: Option<u32>,
}

/// Reads and parses `--vulnerable FILE`.
fn load_vulnerable(
    path: &std::path::Path,
) -> crate::Result<(String, Vec<crate::app::firmware::Vulnerable>)> {
    use crate::app::firmware::{parse_vulnerable, MAX_VULNERABLE_FILE};
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| crate::Error::io(path, e))?;
    if meta.len() > MAX_VULNERABLE_FILE {
        return Err(crate::Error::input(format!(
            "{name}: {} bytes; a --vulnerable file may hold at most {MAX_VULNERABLE_FILE}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| crate::Error::io(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| crate::Error::input(format!("{name}: not UTF-8 text")))?;
    Ok((name.clone(), parse_vulnerable(&name, &text)?))
}

pub fn run(ctx: &Ctx, mut a: AuditArgs) -> anyhow::Result<i32> {
    // A malformed --vulnerable file is bad input (exit 3), told before anything runs.
    let vulnerable = match a.vulnerable.take().map(|p| load_vulnerable(&p)).transpose() {
        Ok(v) => v,
        Err(e) => {
            let code = match e.exit_code() {
                crate::error::exit::IO => crate::error::exit::IO,
                _ => crate::error::exit::INPUT,
            };
            eprintln!("{}", super::common::error_line(&e.into()));
            return Ok(code);
        }
    };
    // The documented contract for scripts: any runtime error is exit 2.
    match run_inner(ctx, a, vulnerable) {
        Ok(code) => Ok(code),
        Err(e) => {
            if super::common::is_broken_pipe(&e) {
                return Ok(0);
            }
            eprintln!("{}", super::common::error_line(&e));
            Ok(crate::error::exit::USAGE)
        }
    }
}

fn run_inner(
    ctx: &Ctx,
    a: AuditArgs,
    vulnerable: Option<(String, Vec<crate::app::firmware::Vulnerable>)>,
) -> anyhow::Result<i32> {
    let format = if ctx.json {
        Format::Json
    } else {
        a.format.unwrap_or(Format::Table)
    };
    if a.list_checks {
        return list_checks(format);
    }
    let reg = ctx.registry_read()?;
    let mut opts = Options::new(time::OffsetDateTime::now_utc().unix_timestamp());
    opts.expiring_within_days = a.expiring_within;
    opts.stuck_after_days = a.stuck_after;
    opts.min_firmware = a.min_firmware;
    opts.vulnerable = vulnerable;
    opts.no_contact_days = a.no_contact_days;
    opts.warranty_within_days = a.within;
    for c in &a.checks {
        if let (Some(opt), true) = (
            audit::needs_option(c),
            opts.not_run().contains_key(c.as_str()),
        ) {
            return Err(crate::Error::usage(format!("--check {c} needs {opt}")).into());
        }
    }
    opts.checks = if a.skip.is_empty() {
        a.checks
    } else {
        let from: Vec<String> = if a.checks.is_empty() {
            audit::check_ids().into_iter().map(String::from).collect()
        } else {
            a.checks
        };
        let left: Vec<String> = from.into_iter().filter(|c| !a.skip.contains(c)).collect();
        if left.is_empty() {
            return Err(crate::Error::input("--skip leaves no check to run").into());
        }
        left
    };
    if !a.full && opts.checks_wanted(audit::CERT_NOT_CHAINED) {
        opts.mark_key = mark_key(ctx, &reg)?;
    }
    let threshold = match a.fail_on {
        FailOn::Warning => Severity::Warning,
        FailOn::Error => Severity::Error,
    };

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failing = 0u64;
    let mut first = true;
    match format {
        Format::Json => write!(out, "{{\n  \"findings\": [")?,
        Format::Csv => writeln!(out, "severity,check,device,cert,message")?,
        Format::Table => {}
    }
    let summary = {
        let mut sink = |f: Finding| -> crate::Result<()> {
            if f.severity >= threshold {
                failing += 1;
            }
            write_finding(&mut out, format, &f, first)
                .map_err(|e| crate::Error::io("<stdout>", e))?;
            first = false;
            Ok(())
        };
        audit::run(reg.reader(), &opts, &mut sink).context("audit failed")?
    };
    match format {
        Format::Json => {
            write!(
                out,
                "{}],\n  \"summary\": ",
                if first { "" } else { "\n  " }
            )?;
            let mut s = serde_json::to_value(&summary)?;
            s["fail_on"] = serde_json::json!(threshold.as_str());
            s["failing"] = serde_json::json!(failing);
            s["expiring_within_days"] = serde_json::json!(opts.expiring_within_days);
            s["stuck_after_days"] = serde_json::json!(opts.stuck_after_days);
            if let Some(d) = opts.no_contact_days {
                s["no_contact_days"] = serde_json::json!(d);
            }
            if let Some(d) = opts.warranty_within_days {
                s["warranty_within_days"] = serde_json::json!(d);
            }
            let text = serde_json::to_string_pretty(&s)?.replace('\n', "\n  ");
            writeln!(out, "{text}\n}}")?;
        }
        Format::Csv => {}
        Format::Table => {
            if summary.findings == 0 {
                writeln!(
                    out,
                    "no findings: {} check(s) over {} device(s) passed",
                    summary.checks.len(),
                    summary.devices
                )?;
            } else {
                writeln!(
                    out,
                    "\n{} finding(s): {} error(s), {} warning(s) from {} check(s) over {} device(s)",
                    summary.findings,
                    summary.errors,
                    summary.warnings,
                    summary.checks.len(),
                    summary.devices
                )?;
            }
            if !summary.not_run.is_empty() {
                let list: Vec<String> = summary
                    .not_run
                    .iter()
                    .map(|(c, o)| format!("{c} (needs {o})"))
                    .collect();
                writeln!(out, "not run: {}", list.join(", "))?;
            }
        }
    }
    out.flush()?;
    Ok(if failing > 0 {
        crate::error::exit::FAILED
    } else {
        crate::error::exit::OK
    })
}

/// The verification-mark key for cert-not-chained, or `None` (every signature verified,
/// said in a note) when it cannot be read. Read only: the audit never creates it.
fn mark_key(
    ctx: &Ctx,
    reg: &crate::store::Store,
) -> anyhow::Result<Option<crate::pki::mark::AuditKey>> {
    let ca_dir = ctx.home.ca_dir();
    let why = match crate::pki::mark::AuditKey::load(&ca_dir) {
        Ok(Some(k)) => return Ok(Some(k)),
        Ok(None) => format!(
            "{} does not exist",
            crate::pki::mark::key_path(&ca_dir).display()
        ),
        Err(e) => e.to_string(),
    };
    if crate::store::audit::has_certificates(reg.reader())? {
        eprintln!("cradle: note: {why}; verifying the signature of every certificate in full");
    }
    Ok(None)
}

const SEV_W: usize = 7;
const CHECK_W: usize = 27;
const DEVICE_W: usize = 16;

fn write_finding(
    out: &mut impl Write,
    format: Format,
    f: &Finding,
    first: bool,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let line = serde_json::to_string(f).map_err(std::io::Error::other)?;
            write!(out, "{}\n    {line}", if first { "" } else { "," })
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record([
                f.severity.as_str(),
                f.check,
                &csv_safe(f.device.as_deref().unwrap_or("")),
                f.cert.as_deref().unwrap_or(""),
                &csv_safe(&f.message),
            ])
            .map_err(std::io::Error::other)?;
            let bytes = w
                .into_inner()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            out.write_all(&bytes)
        }
        Format::Table => {
            if first {
                writeln!(
                    out,
                    "{:<SEV_W$}  {:<CHECK_W$}  {:<DEVICE_W$}  MESSAGE",
                    "SEVERITY", "CHECK", "DEVICE"
                )?;
            }
            writeln!(
                out,
                "{:<SEV_W$}  {:<CHECK_W$}  {:<DEVICE_W$}  {}",
                f.severity.as_str(),
                f.check,
                f.device.as_deref().unwrap_or("-"),
                f.message
            )
        }
    }
}

/// Spreadsheets run cells that start with = + - @ as formulas; prefix those with '.
fn csv_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

fn list_checks(format: Format) -> anyhow::Result<i32> {
    match format {
        Format::Json => super::common::print_json(&CHECKS)?,
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout().lock());
            w.write_record(["id", "severity", "description"])?;
            for c in CHECKS {
                w.write_record([c.id, c.severity.as_str(), c.description])?;
            }
            w.flush()?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = CHECKS
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.severity.as_str().to_string(),
                        c.description.to_string(),
                    ]
                })
                .collect();
            super::common::print_table(&["CHECK", "SEVERITY", "DESCRIPTION"], &rows)?;
        }
    }
    Ok(0)
}
