//! `cradle revoke` and `cradle decommission`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::common::{print_json, print_table, progress_bar, Ctx, PassArgs};
use crate::app::retire::crl;
use crate::app::retire::decommission::{self, Given, Job, Runner, StepStatus, Summary};
use crate::app::retire::revoke::{self, Revocation, RevocationResult, RevokeRequest};
use crate::app::retire::{report, wipe, WipeContext, WipeLevel};
use crate::error::{exit, Error};
use crate::home::Config;
use crate::pki::crl::{CrlIssued, Reason};
use crate::store::retire as rr;

/// Test hook: abort right after committing decommission step N (1-4).
pub const CRASH_ENV: &str = "CRADLE_TEST_CRASH_AFTER_STEP";

/// The configured CRL path, relative to the home unless absolute.
pub fn crl_path(ctx: &Ctx, config: &Config) -> PathBuf {
    ctx.home.root.join(&config.crl_path)
}

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
    let plans = revoke::plan(reg.reader(), &reqs)?;
    let to_revoke: usize = plans.iter().map(|p| p.certs.len()).sum();
    let stale = rr::crl_stale(reg.reader())?;
    if to_revoke == 0 && !stale {
        let already: Vec<Revocation> = plans.iter().flat_map(|p| p.already.clone()).collect();
        if ctx.json {
            print_json(&RevokeOut {
                revoked: 0,
                already_revoked: already.len(),
                revocations: already,
                crl: None,
            })?;
        } else {
            for p in &plans {
                if p.already.is_empty() {
                    println!("{}: no certificates to revoke; nothing to do", p.serial);
                }
                for r in &p.already {
                    println!(
                        "{}: certificate {} is already revoked ({}, {}); nothing to do",
                        r.serial,
                        r.cert_serial,
                        r.reason,
                        r.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        return Ok(0);
    }
    // Unlock before writing anything: a wrong passphrase changes nothing.
    let signer = ctx.signer(&reg, &a.pass)?;
    let actor = ctx.actor(&config);
    let pb = progress_bar(plans.len() as u64, "revoking");
    let revs = revoke::apply(&mut reg, &plans, &actor, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    let crl = crl::issue(&mut reg, &signer, config.crl_next_update_days, &crl_path(ctx, &config), &actor)
        .context("the revocations are recorded, but the CRL could not be published (run `cradle ca crl` to retry)")?;
    let revoked = revs
        .iter()
        .filter(|r| r.result == RevocationResult::Revoked)
        .count();
    let out = RevokeOut {
        revoked,
        already_revoked: revs.len() - revoked,
        revocations: revs,
        crl: Some(crl),
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
                out.revoked,
                plans.len(),
                out.already_revoked
            );
        }
        if let Some(c) = &out.crl {
            print_crl_line(c);
        }
    }
    Ok(0)
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
    /// Wipe over the device protocol on this serial port, with a signed attestation
    #[arg(long, value_name = "PATH", conflicts_with = "wipe_method")]
    wipe_port: Option<String>,
    /// Serial wipe: line rate of the port (8N1)
    #[arg(long, value_name = "BAUD", default_value_t = 115_200,
          value_parser = clap::value_parser!(u32).range(50..=12_000_000))]
    wipe_baud: u32,
    /// Serial wipe: seconds the device may take to start answering a request
    /// (the line time at --wipe-baud is added)
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_timeout)]
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

/// Writes SERIAL.sanitization.{json,html} into `dir`.
pub fn write_reports(
    conn: &crate::store::Reader,
    dev: &crate::store::Device,
    dir: &Path,
    org: &str,
) -> crate::Result<Vec<PathBuf>> {
    let cert = report::build(conn, dev, org)?;
    let json = serde_json::to_string_pretty(&cert).map_err(|e| Error::input(e.to_string()))? + "\n";
    let html = report::to_html(&cert);
    let mut out = Vec::new();
    for (ext, body) in [("json", json), ("html", html)] {
        let p = dir.join(format!("{}.sanitization.{ext}", dev.serial));
        crate::outfile::write_file_atomic(&p, body.as_bytes(), 0o644, true)?;
        out.push(p);
    }
    Ok(out)
}

pub fn decommission(ctx: &Ctx, a: DecommissionArgs) -> anyhow::Result<i32> {
    let given = a.given()?;
    given.check()?;
    given.wipe()?;
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let jobs: Vec<Job> = match (&a.from, a.serials.is_empty()) {
        (Some(_), false) => {
            return Err(Error::input("give SERIALs or --from FILE.csv, not both").into())
        }
        (Some(f), true) => decommission::jobs_from_csv(f, &given)?,
        (None, false) => a
            .serials
            .iter()
            .map(|s| Job {
                serial: s.clone(),
                given: given.clone(),
                at: None,
            })
            .collect(),
        (None, true) if a.resume => decommission::unfinished(reg.reader())?
            .into_iter()
            .map(|s| Job {
                serial: s,
                given: given.clone(),
                at: None,
            })
            .collect(),
        (None, true) => {
            return Err(Error::input(
                "give device SERIALs, --from FILE.csv, or --resume to continue unfinished decommissions",
            )
            .into())
        }
    };
    if jobs.is_empty() {
        if ctx.json {
            print_json(&serde_json::json!({"devices": [], "failed": 0}))?;
        } else {
            println!("no unfinished decommissions; nothing to do");
        }
        return Ok(0);
    }
    let prepared = decommission::prepare(reg.reader(), &jobs)?;

    if a.dry_run {
        let plan = decommission::plan(reg.reader(), &prepared)?;
        print_summary(ctx, &plan)?;
        return Ok(if plan.any_failed() {
            exit::FAILED
        } else {
            exit::OK
        });
    }

    let serial_params = wipe::SerialParams {
        baud: a.wipe_baud,
        timeout: a.wipe_timeout,
    };
    // A serial wipe takes one device at a time; check the link before changing anything.
    let serial_wipes = prepared
        .iter()
        .filter(|p| {
            !p.complete()
                && matches!(
                    p.options.wipe,
                    Some(crate::app::retire::WipeSpec::Serial { .. })
                )
        })
        .count();
    if let Some(port) = &a.wipe_port {
        if serial_wipes > 1 {
            return Err(
                Error::input("--wipe-port wipes one device at a time: give one SERIAL").into(),
            );
        }
        // Open the port and check who answers before changing anything.
        let mut link = wipe::open_serial_link(port, serial_params)?;
        if let Some(p) = prepared.iter().find(|p| {
            !p.complete()
                && !p.done.contains(&crate::app::retire::Step::Wipe)
                && p.blocked.is_none()
        }) {
            wipe::check_identity(&p.device, link.as_mut())?;
        }
        drop(link);
    }
    if let Some(d) = &a.report_dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let signer = if decommission::needs_ca(reg.reader(), &prepared)? {
        Some(ctx.signer(&reg, &a.pass)?)
    } else {
        None
    };
    let crash_after = std::env::var(CRASH_ENV)
        .ok()
        .and_then(|v| v.parse::<u8>().ok());
    let actor = ctx.actor(&config);
    let pb = progress_bar(prepared.len() as u64, "retiring");
    let progress = |n: u64| pb.set_position(n);
    let mut opener = |port: &str| wipe::open_serial_link(port, serial_params);
    let org = config.org.clone();
    let report_dir = a.report_dir.clone();
    let writer = move |conn: &crate::store::Reader, dev: &crate::store::Device| {
        write_reports(
            conn,
            dev,
            report_dir.as_deref().unwrap_or(Path::new(".")),
            &org,
        )
    };
    let summary = {
        let mut runner = Runner {
            reg: &mut reg,
            actor: &actor,
            signer: signer.as_ref(),
            crl_days: config.crl_next_update_days,
            crl_path: crl_path(ctx, &config),
            crash_after,
            open_link: &mut opener,
            write_report: a
                .report_dir
                .as_ref()
                .map(|_| &writer as &decommission::ReportWriter),
            progress: &progress,
        };
        runner.run(prepared)?
    };
    pb.finish_and_clear();
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

/// `--wipe-timeout`: positive seconds, at most an hour.
fn parse_timeout(s: &str) -> std::result::Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a number of seconds in (0, 3600]")),
    }
}
