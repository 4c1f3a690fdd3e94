//! `cradle revoke` and `cradle decommission`.

use std::path::PathBuf;

use serde::Serialize;

use super::common::{print_json, print_table, progress_bar, Ctx, PassArgs};
use crate::app::retire::crl::Publication;
use crate::app::retire::decommission::{self, Given, Request, Selection, StepStatus, Summary};
use crate::app::retire::revoke::{
    self, Revocation, RevocationResult, RevokeOutcome, RevokeRequest, Untouched,
};
use crate::app::retire::{wipe, Progress, WipeContext, WipeLevel};
use crate::error::{exit, Error};
use crate::pki::crl::{CrlIssued, Reason};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Device serial(s): every active certificate of each is revoked
    #[arg(value_name = "SERIAL")]
    serials: Vec<String>,
    /// Revoke only this certificate (SHA-256 fingerprint, or a unique prefix of 8+ hex digits)
    #[arg(long, value_name = "FINGERPRINT")]
    cert: Option<String>,
    /// RFC 5280 reason: unspecified, keyCompromise, caCompromise, affiliationChanged, superseded,
    /// cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise (any case, kebab-case too)
    #[arg(long, value_name = "REASON", default_value = "unspecified")]
    reason: String,
    /// Bulk: a CSV with a 'serial' column and optional 'cert' and 'reason' columns
    #[arg(long, value_name = "FILE.csv", conflicts_with_all = ["serials", "cert"])]
    from: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Serialize)]
struct RevokeOut {
    revoked: usize,
    already_revoked: usize,
    revocations: Vec<Revocation>,
    crl: Option<CrlIssued>,
}

pub fn revoke(ctx: &Ctx, a: RevokeArgs) -> anyhow::Result<i32> {
    let reason: Reason = a.reason.parse()?;
    let reqs: Vec<RevokeRequest> = match (&a.from, a.serials.is_empty()) {
        (Some(f), _) => revoke::requests_from_csv(f, reason)?,
        (None, true) => {
            return Err(Error::input("give a device SERIAL, or --from FILE.csv for many").into())
        }
        (None, false) => {
            if a.cert.is_some() && a.serials.len() > 1 {
                return Err(Error::input("--cert takes exactly one device SERIAL").into());
            }
            a.serials
                .iter()
                .map(|s| RevokeRequest {
                    serial: s.clone(),
                    cert: a.cert.clone(),
                    reason,
                    at: None,
                })
                .collect()
        }
    };
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let actor = ctx.actor(&config);
    let pb = Bar::new("revoking");
    let outcome = revoke::revoke(
        &mut reg,
        &reqs,
        &Publication::configured(&ctx.home, &config),
        &actor,
        |reg: &Store| ctx.signer(reg, &a.pass),
        &pb,
    )?;
    let (devices, revocations, crl) = match outcome {
        RevokeOutcome::NothingToDo(untouched) => {
            print_nothing_to_do(ctx, &untouched)?;
            return Ok(0);
        }
        RevokeOutcome::Revoked {
            devices,
            revocations,
            crl,
        } => (devices, revocations, crl),
    };
    let revoked = revocations
        .iter()
        .filter(|r| r.result == RevocationResult::Revoked)
        .count();
    let out = RevokeOut {
        revoked,
        already_revoked: revocations.len() - revoked,
        revocations,
        crl,
    };
    if ctx.json {
        print_json(&out)?;
    } else {
        if out.revocations.len() <= 50 {
            for r in &out.revocations {
                if r.result == RevocationResult::Revoked {
                    println!(
                        "{}: revoked certificate {} ({})",
                        r.serial, r.cert_serial, r.reason
                    );
                } else {
                    println!(
                        "{}: certificate {} is already revoked ({}); nothing to do",
                        r.serial, r.cert_serial, r.reason
                    );
                }
            }
        } else {
            println!(
                "revoked {} certificate(s) of {} device(s); {} already revoked",
                out.revoked, devices, out.already_revoked
            );
        }
        if let Some(c) = &out.crl {
            print_crl_line(c);
        }
    }
    Ok(0)
}

fn print_nothing_to_do(ctx: &Ctx, untouched: &[Untouched]) -> anyhow::Result<()> {
    if ctx.json {
        let already: Vec<Revocation> = untouched.iter().flat_map(|u| u.already.clone()).collect();
        return print_json(&RevokeOut {
            revoked: 0,
            already_revoked: already.len(),
            revocations: already,
            crl: None,
        });
    }
    for u in untouched {
        if u.already.is_empty() {
            println!("{}: no certificates to revoke; nothing to do", u.serial);
        }
        for r in &u.already {
            println!(
                "{}: certificate {} is already revoked ({}, {}); nothing to do",
                r.serial,
                r.cert_serial,
                r.reason,
                r.revoked_at.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// A progress bar for a retire batch, drawn from `start` on (after the passphrase).
struct Bar {
    what: &'static str,
    bar: std::cell::OnceCell<indicatif::ProgressBar>,
}

impl Bar {
    fn new(what: &'static str) -> Bar {
        Bar {
            what,
            bar: std::cell::OnceCell::new(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        let _ = self.bar.set(progress_bar(total, self.what));
    }
    fn done(&self, n: u64) {
        if let Some(b) = self.bar.get() {
            b.set_position(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.get() {
            b.finish_and_clear();
        }
    }
}

pub fn print_crl_line(c: &CrlIssued) {
    println!(
        "CRL #{} with {} entr{} written to {} (next update {})",
        c.crl_number,
        c.entries,
        if c.entries == 1 { "y" } else { "ies" },
        c.published.display(),
        c.next_update
    );
    if let Some(n) = c.ocsp_refreshed {
        println!(
            "{n} pre-signed OCSP response{} re-signed",
            if n == 1 { "" } else { "s" }
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct DecommissionArgs {
    /// Device serial(s) to retire, revoke, wipe and mark decommissioned
    #[arg(value_name = "SERIAL")]
    serials: Vec<String>,
    /// Batch: a CSV with a 'serial' column and optional per-row columns reason, wipe_port,
    /// wipe_method, wipe_technique, wipe_tool, wipe_tool_version, verified_by, verification,
    /// technician, location, destination, media_type (a cell overrides the flag)
    #[arg(long, value_name = "FILE.csv")]
    from: Option<PathBuf>,
    /// Print the plan per device and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Continue unfinished decommissions (all of them when no SERIAL or --from is given),
    /// with the options stored by the first run unless new ones are given
    #[arg(long)]
    resume: bool,
    /// RFC 5280 revocation reason (default cessationOfOperation)
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// Wipe over this serial port: a signed attestation (cradle protocol), erase and
    /// read-back (--wipe-device-profile esp32), or files removed (micropython)
    #[arg(long, value_name = "PATH", conflicts_with = "wipe_method")]
    wipe_port: Option<String>,
    /// Serial wipe: the protocol the device on --wipe-port speaks: cradle (signed
    /// attestation), esp32 (the esp_secure_cert partition at 0xD000 erased over the ROM
    /// bootloader and read back as erased) or micropython (identity files removed and
    /// read back as gone)
    #[arg(long, value_enum, value_name = "PROFILE", default_value = "cradle")]
    wipe_device_profile: super::values::DeviceProfileArg,
    #[command(flatten)]
    mp: super::provision::MicropythonPathArgs,
    /// Serial wipe: line rate of the port (8N1)
    #[arg(long, value_name = "BAUD", default_value_t = 115_200,
          value_parser = clap::value_parser!(u32).range(50..=12_000_000))]
    wipe_baud: u32,
    /// Serial wipe: seconds the device may take to start answering a request
    /// (the line time at --wipe-baud is added)
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = super::values::parse_timeout)]
    wipe_timeout: std::time::Duration,
    /// Manual wipe record: NIST SP 800-88 level
    #[arg(long, value_name = "LEVEL", value_parser = ["clear", "purge", "destroy"])]
    wipe_method: Option<String>,
    /// Manual wipe: the technique used (e.g. "cryptographic erase", "shred 2 mm")
    #[arg(long, value_name = "TEXT")]
    wipe_technique: Option<String>,
    /// Manual wipe: the tool used
    #[arg(long, value_name = "TEXT")]
    wipe_tool: Option<String>,
    /// Manual wipe: the tool's version
    #[arg(long, value_name = "TEXT")]
    wipe_tool_version: Option<String>,
    /// Manual wipe: who verified the result
    #[arg(long, value_name = "NAME")]
    verified_by: Option<String>,
    /// Manual wipe: how the result was verified
    #[arg(long, value_name = "TEXT")]
    verification: Option<String>,
    /// Who performed the sanitization
    #[arg(long, value_name = "NAME")]
    technician: Option<String>,
    /// Where the sanitization took place
    #[arg(long, value_name = "TEXT")]
    location: Option<String>,
    /// Where the media goes afterwards (reuse, recycling, manufacturer, …)
    #[arg(long, value_name = "TEXT")]
    destination: Option<String>,
    /// The media sanitized (e.g. "eMMC 4 GB", "MCU flash")
    #[arg(long, value_name = "TEXT")]
    media_type: Option<String>,
    /// Write a certificate of sanitization per device (SERIAL.sanitization.html and .json)
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    #[command(flatten)]
    pass: PassArgs,
}

impl DecommissionArgs {
    fn given(&self) -> anyhow::Result<Given> {
        Ok(Given {
            reason: self.reason.as_deref().map(str::parse).transpose()?,
            port: self.wipe_port.clone(),
            level: self
                .wipe_method
                .as_deref()
                .map(str::parse::<WipeLevel>)
                .transpose()?,
            technique: self.wipe_technique.clone(),
            tool: self.wipe_tool.clone(),
            tool_version: self.wipe_tool_version.clone(),
            verified_by: self.verified_by.clone(),
            verification: self.verification.clone(),
            context: WipeContext {
                technician: self.technician.clone(),
                location: self.location.clone(),
                destination: self.destination.clone(),
                media_type: self.media_type.clone(),
            },
        })
    }
}

pub fn decommission(ctx: &Ctx, a: DecommissionArgs) -> anyhow::Result<i32> {
    let given = a.given()?;
    given.check()?;
    given.wipe()?;
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let selection = match (&a.from, a.serials.is_empty()) {
        (Some(_), false) => {
            return Err(Error::input("give SERIALs or --from FILE.csv, not both").into())
        }
        (Some(f), true) => Selection::Csv(f.clone()),
        (None, false) => Selection::Serials(a.serials.clone()),
        (None, true) if a.resume => Selection::Unfinished,
        (None, true) => {
            return Err(Error::input(
                "give device SERIALs, --from FILE.csv, or --resume to continue unfinished decommissions",
            )
            .into())
        }
    };
    let req = Request {
        selection,
        given,
        dry_run: a.dry_run,
        report_dir: a.report_dir.clone(),
        org: config.org.clone(),
        crl: Publication::configured(&ctx.home, &config),
    };
    let params = crate::device::LinkParams {
        baud: a.wipe_baud,
        timeout: a.wipe_timeout,
        micropython_paths: a.mp.paths(a.wipe_device_profile)?,
        ..Default::default()
    };
    let mut opener = wipe::serial_opener(a.wipe_device_profile.into(), params);
    let pb = Bar::new("retiring");
    let summary = decommission::run(
        &mut reg,
        &req,
        &ctx.actor(&config),
        &mut opener,
        |reg: &Store| ctx.signer(reg, &a.pass),
        &pb,
    )?;
    let Some(summary) = summary else {
        if ctx.json {
            print_json(&serde_json::json!({"devices": [], "failed": 0}))?;
        } else {
            println!("no unfinished decommissions; nothing to do");
        }
        return Ok(0);
    };
    print_summary(ctx, &summary)?;
    Ok(if summary.any_failed() {
        exit::FAILED
    } else {
        exit::OK
    })
}

fn print_summary(ctx: &Ctx, s: &Summary) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(s);
    }
    let rows: Vec<Vec<String>> = s
        .devices
        .iter()
        .map(|d| {
            let steps = d
                .steps
                .iter()
                .map(|st| {
                    let mark = match st.status {
                        StepStatus::Done => "ok",
                        StepStatus::DoneBefore => "ok*",
                        StepStatus::Failed => "FAIL",
                        StepStatus::WillRun => "todo",
                        StepStatus::NotRun => "-",
                    };
                    format!("{}:{mark}", st.step.number())
                })
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                d.serial.clone(),
                d.result.to_string(),
                steps,
                d.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if s.dry_run {
        println!("dry run: nothing changed");
        for d in &s.devices {
            println!("{}  {}", d.serial, d.result);
            for st in &d.steps {
                println!(
                    "  {}. {:<13} {}{}",
                    st.step.number(),
                    st.step.as_str(),
                    st.status,
                    st.detail
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                );
            }
            if let Some(e) = &d.error {
                println!("  error: {e}");
            }
        }
        return Ok(());
    }
    print_table(&["SERIAL", "RESULT", "STEPS", "ERROR"], &rows)?;
    if let Some(c) = &s.crl {
        print_crl_line(c);
    }
    if let Some(e) = &s.crl_error {
        println!("CRL NOT refreshed: {e}");
    }
    println!(
        "{} decommissioned, {} failed, {} in total (steps: ok = done now, ok* = done before)",
        s.decommissioned,
        s.failed,
        s.devices.len()
    );
    if s.failed > 0 {
        println!("failed devices stay resumable: fix the cause and re-run, or `cradle decommission --resume`");
    }
    Ok(())
}
