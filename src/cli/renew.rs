//! `cradle renew`: successor certificates, as files, a bundle, or onto a device.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::common::{print_json, print_table, progress_bar, ts, Ctx, PassArgs};
use super::values::{parse_timeout, DeviceProfileArg, ModeArg};
use crate::app::identity::serial_lines_from_csv;
use crate::app::renew::port::{renew_on_port, Rekey};
use crate::app::renew::{self, Output, RenewContext, Selection};
use crate::app::retire::crl::Publication;
use crate::error::Error;
use crate::pki::profile::Profile;

pub const RENEW_AFTER_HELP: &str = "\
A successor certifies the same public key as the certificate it supersedes (the registry
holds every device's certificate; the CA never needs a device's private key), with the
subject and validity of its profile today (the old certificate's profile, or --profile).
It is recorded as superseding the old one (event cert.renewed). The old certificate stays
valid until its own expiry unless --revoke-old (reason superseded, CRL republished).

Which devices: SERIAL…, --from FILE.csv (a 'serial' column), or --expiring-within DAYS
(in-service devices whose newest active certificate expires within DAYS, or has expired;
devices with a pending successor are skipped and listed). Refused before anything is
written: an unknown serial (exit 3), a retired or decommissioned device, a device without
an active certificate, one with a pending successor, an output that exists (exit 7).

Where to:
  --out DIR      DIR/SERIAL.pem per device (certificate + CA chain)
  --bundle FILE  JSON Lines, mode 0600: a header {cradle_bundle, renewal: true, ca,
                 chain_pem}, then {serial, fingerprint, cert_serial, supersedes, profile,
                 cert_pem} per device (no keys: the devices keep theirs)
  --port PORT    onto the device in place (cradle protocol): the successor is recorded
                 as pending, written into the device's spare slots, read back by SHA-256,
                 then SWITCHed to in one step and the cert slot read back; only then is it
                 confirmed (event renewal.confirmed). A pulled cable before the switch
                 leaves the old identity working and recorded as such, the successor
                 pending (audit renewal-pending); a re-run finishes it (confirms it, or
                 revokes it and issues a fresh one: never two pending). One device per
                 run: SERIAL is optional (the device is found by its hardware id) and,
                 if given, must match it. Other device families are refused: nrf91,
                 esp32 and micropython cannot renew in place (cradle-protocol(7) RENEWAL).
  --rekey        with --port: a new key: --mode csr (the device makes it in its spare
                 slot, NEXTKEY) or --mode inject (cradle makes it and writes it into the
                 spare key slot; never kept on the host). The old certificate is revoked
                 (superseded) only after the successor is verified and switched to.

Exit codes: 0 renewed (or nothing to renew), 3 unknown serial or malformed CSV,
5 CA key problem, 6 the device or port failed (the successor stays pending), 7 refused
(see above), 8 an output could not be written.

Examples:
  cradle renew ACME-000001 --out ./renewed
  cradle renew --expiring-within 60 --bundle renewals.jsonl --dry-run
  cradle renew --from fleet.csv --bundle renewals.jsonl --revoke-old
  cradle renew --port /dev/ttyUSB0
  cradle renew ACME-000001 --port /dev/ttyUSB0 --rekey --mode csr";

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Device serials to renew
    #[arg(value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// Renew in-service devices whose certificate expires within DAYS (or has expired)
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["serials", "from", "port"])]
    pub expiring_within: Option<u32>,
    /// CSV file with a 'serial' column
    #[arg(long, value_name = "FILE.csv", conflicts_with_all = ["serials", "port"])]
    pub from: Option<PathBuf>,
    /// Directory for SERIAL.pem (certificate + chain) per device
    #[arg(long, value_name = "DIR", conflicts_with = "port")]
    pub out: Option<PathBuf>,
    /// One JSON Lines file with every successor (mode 0600; refused if it exists)
    #[arg(long, value_name = "FILE", conflicts_with = "port")]
    pub bundle: Option<PathBuf>,
    /// Write the successor onto the device on this serial port, in place
    #[arg(long, value_name = "PATH")]
    pub port: Option<PathBuf>,
    /// Protocol the device on --port speaks (only cradle renews in place)
    #[arg(long, value_enum, default_value = "cradle")]
    pub device_profile: DeviceProfileArg,
    /// With --port: a new key instead of the old one (see --mode)
    #[arg(long, requires = "port")]
    pub rekey: bool,
    /// With --rekey: csr (the device makes the key) or inject (cradle makes it)
    #[arg(long, value_enum, default_value = "csr")]
    pub mode: ModeArg,
    /// Revoke the superseded certificate (reason superseded) and republish the CRL
    #[arg(long)]
    pub revoke_old: bool,
    /// Certificate profile for the successors (default: each old certificate's profile)
    #[arg(long)]
    pub profile: Option<String>,
    /// List what would be renewed; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Line rate of the port
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Seconds the device may take to start answering a request
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub pass: PassArgs,
}

#[derive(Serialize)]
struct Planned {
    serial: String,
    status: String,
    cert_serial: String,
    not_after: String,
    profile: String,
}

pub fn run(ctx: &Ctx, a: RenewArgs) -> anyhow::Result<i32> {
    if a.mode == ModeArg::Inject && !a.rekey {
        return Err(Error::usage("--mode inject applies to --rekey only").into());
    }
    if a.port.is_some() {
        return on_port(ctx, a);
    }
    let sel =
        match (&a.from, a.expiring_within, a.serials.is_empty()) {
            (Some(f), None, true) => Selection::FromCsv(f.clone(), serial_lines_from_csv(f)?),
            (None, Some(d), true) => Selection::ExpiringWithin(d),
            (None, None, false) => Selection::Serials(a.serials.clone()),
            _ => return Err(Error::usage(
                "give device SERIALs, --from FILE.csv or --expiring-within DAYS (or --port PORT)",
            )
            .into()),
        };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if a.dry_run {
        let reg = ctx.registry_read()?;
        let plan = renew::plan(reg.reader(), &sel, now)?;
        return dry_run(ctx, &plan);
    }
    if a.out.is_none() && a.bundle.is_none() {
        return Err(Error::usage(
            "renewal needs somewhere to put the certificates: --out DIR, --bundle FILE or --port PORT",
        )
        .into());
    }
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let plan = renew::plan(reg.reader(), &sel, now)?;
    let profile = load_profile(ctx, a.profile.as_deref())?;
    if plan.targets.is_empty() {
        // Nothing to sign: no passphrase asked, nothing written.
        return report(ctx, None, &plan.skipped_pending);
    }
    let signer = ctx.signer(&reg, &a.pass)?;
    let actor = ctx.actor(&config);
    let rctx = RenewContext {
        signer: &signer,
        org: &config.org,
        actor: &actor,
        profile: profile.as_ref(),
        templates: ctx.templates(),
    };
    let pb = progress_bar(plan.targets.len() as u64, "renewing");
    let summary = renew::batch(
        &mut reg,
        &rctx,
        &plan,
        &Output {
            dir: a.out.clone(),
            bundle: a.bundle.clone(),
        },
        a.revoke_old,
        &Publication::configured(&ctx.home, &config),
        &|n| pb.set_position(n),
    )?;
    pb.finish_and_clear();
    report(ctx, Some(&summary), &summary.skipped_pending)
}

fn load_profile(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Option<Profile>> {
    Ok(match name {
        Some(n) => Some(Profile::load(n, ctx.templates().as_deref())?),
        None => None,
    })
}

fn dry_run(ctx: &Ctx, plan: &renew::Plan) -> anyhow::Result<i32> {
    let rows: Vec<Planned> = plan
        .targets
        .iter()
        .map(|t| Planned {
            serial: t.device.serial.clone(),
            status: t.device.status.to_string(),
            cert_serial: t.old.serial_hex.clone(),
            not_after: ts(t.old.not_after),
            profile: t.old.profile.clone(),
        })
        .collect();
    if ctx.json {
        print_json(&serde_json::json!({
            "dry_run": true,
            "would_renew": rows,
            "skipped_pending": plan.skipped_pending,
        }))?;
    } else {
        print_table(
            &["SERIAL", "STATUS", "CERTIFICATE", "EXPIRES", "PROFILE"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.serial.clone(),
                        r.status.clone(),
                        r.cert_serial.clone(),
                        r.not_after.clone(),
                        r.profile.clone(),
                    ]
                })
                .collect::<Vec<_>>(),
        )?;
        println!(
            "{} device(s) would be renewed (dry run: nothing written)",
            rows.len()
        );
        skipped_line(&plan.skipped_pending);
    }
    Ok(0)
}

fn skipped_line(skipped: &[String]) {
    if let Some(first) = skipped.first() {
        println!(
            "{} device(s) skipped with a pending successor (first {first}): finish with `cradle renew SERIAL --port PORT`",
            skipped.len()
        );
    }
}

fn report(ctx: &Ctx, s: Option<&renew::Summary>, skipped: &[String]) -> anyhow::Result<i32> {
    if ctx.json {
        match s {
            Some(s) => print_json(s)?,
            None => print_json(&serde_json::json!({
                "renewed": 0, "revoked_old": 0, "skipped_pending": skipped, "renewals": []
            }))?,
        }
        return Ok(0);
    }
    match s {
        Some(s) => {
            if s.renewals.len() <= 20 {
                for r in &s.renewals {
                    println!(
                        "renewed {}: {} supersedes {}{} (valid until {})",
                        r.serial,
                        r.cert_serial,
                        r.old_cert_serial,
                        if r.old_revoked { ", revoked" } else { "" },
                        ts(r.not_after)
                    );
                }
            }
            println!(
                "renewed {} device(s) in {:.2}s ({:.0}/s){}",
                s.renewed,
                s.seconds,
                s.per_second,
                if s.revoked_old > 0 {
                    format!(
                        "; {} old certificate(s) revoked (superseded)",
                        s.revoked_old
                    )
                } else {
                    String::new()
                }
            );
            for p in s.bundle.iter().chain(s.dir.iter()) {
                println!("  {}", p.display());
            }
            if let Some(c) = &s.crl {
                println!("  CRL {}", c.display());
            }
        }
        None => println!("nothing to renew"),
    }
    skipped_line(skipped);
    Ok(0)
}

fn on_port(ctx: &Ctx, a: RenewArgs) -> anyhow::Result<i32> {
    let port = a.port.clone().expect("checked by the caller");
    if a.serials.len() > 1 {
        return Err(Error::usage("--port renews one device: give at most one SERIAL").into());
    }
    if a.dry_run {
        return Err(Error::usage(
            "--dry-run lists a selection (SERIAL…, --from, --expiring-within); it does not talk to a port",
        )
        .into());
    }
    crate::device::renew_place(a.device_profile.into()).map_err(Error::usage)?;
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let profile = load_profile(ctx, a.profile.as_deref())?;
    // Any named device is checked before the passphrase is asked for.
    if let Some(s) = a.serials.first() {
        let d = crate::store::devices::require_device(reg.reader(), s)?;
        renew::check_renewable(&d)?;
    }
    let signer = ctx.signer(&reg, &a.pass)?;
    let actor = ctx.actor(&config);
    let rctx = RenewContext {
        signer: &signer,
        org: &config.org,
        actor: &actor,
        profile: profile.as_ref(),
        templates: ctx.templates(),
    };
    let params = crate::device::LinkParams {
        baud: a.baud,
        timeout: a.timeout,
        ..Default::default()
    };
    let mut link = crate::device::open_renew_link(a.device_profile.into(), &port, params)?;
    let rekey = a.rekey.then_some(match a.mode {
        ModeArg::Csr => Rekey::Device,
        ModeArg::Inject => Rekey::Inject,
    });
    let out = renew_on_port(
        &mut reg,
        &rctx,
        link.as_mut(),
        &port.display().to_string(),
        a.serials.first().map(String::as_str),
        rekey,
        a.revoke_old,
        &Publication::configured(&ctx.home, &config),
    )?;
    if ctx.json {
        print_json(&out)?;
    } else {
        println!(
            "{} {} on {}: {} supersedes {}{} (valid until {})",
            out.result,
            out.serial,
            port.display(),
            out.cert_serial,
            out.old_cert_serial,
            if out.old_revoked { ", revoked" } else { "" },
            ts(out.not_after)
        );
        if let Some(ab) = &out.abandoned {
            println!(
                "  the earlier pending successor {ab} could not be finished: revoked (superseded)"
            );
        }
        if let Some(c) = &out.crl {
            println!("  CRL {}", c.display());
        }
    }
    Ok(0)
}
