//! `cradle device …` (list, show, history, set, deploy, maintenance, return) and
//! `cradle status` (the fleet summary).

use clap::{Args, Subcommand};
use serde::Serialize;

use super::common::{print_json, print_table, Ctx};
use crate::app::inventory::device::{self, Assignment, EditOutcome};
use crate::app::inventory::import::describe_change;
use crate::app::maintenance;
use crate::store::devices::{require_device, Device, DeviceStatus};
use crate::store::events::{events_for_device, Event};
use crate::store::inventory::{self as q, DeviceFilter, FleetSummary};

/// `--force --reason TEXT`: override the lifecycle rules, recorded on the event.
#[derive(Debug, Clone, Args)]
pub struct ForceArgs {
    /// Allow a state change the lifecycle forbids (needs --reason)
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the override is needed (recorded on the event)
    #[arg(long, value_name = "TEXT", requires = "force")]
    pub reason: Option<String>,
}

impl ForceArgs {
    fn reason(&self) -> Option<&str> {
        if self.force {
            self.reason.as_deref()
        } else {
            None
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices (filter by state, site, batch)
    #[command(
        after_help = "Examples:\n  cradle device list --status deployed --site berlin-1\n  cradle --json device list --batch B-2026-11"
    )]
    List {
        /// Only devices in this lifecycle state
        #[arg(long)]
        status: Option<String>,
        /// Only devices at this site
        #[arg(long)]
        site: Option<String>,
        /// Only devices of this batch
        #[arg(long)]
        batch: Option<String>,
    },
    /// Show one device: fields, attributes, certificates
    #[command(after_help = "Example:\n  cradle device show ACME-000001 --json")]
    Show {
        /// Device serial
        serial: String,
    },
    /// Show a device's events (the hash-chained log)
    #[command(
        after_help = "--firmware lists only the firmware trail (firmware.reported events: the version at\nthe first contact, each change a device reported, and versions set with device set).\n\nExamples:\n  cradle device history ACME-000001\n  cradle device history ACME-000001 --firmware --json"
    )]
    History {
        /// Device serial
        serial: String,
        /// Only the firmware trail: version, previous version, source, via
        #[arg(long)]
        firmware: bool,
    },
    /// Change fields: FIELD=VALUE (an empty VALUE or <clear> clears the field)
    #[command(
        after_help = "Fields: hardware_id, model, hw_rev, batch, site, location, owner, mac, imei,\nnotes, purchase_date, warranty_until, end_of_life (YYYY-MM-DD), cost (exact decimal,\nneeds currency), currency (ISO 4217), supplier, criticality (low|medium|high|critical),\nattr.NAME, firmware (an update done elsewhere: recorded as a firmware.reported\nevent, cannot be cleared), and status (a lifecycle move; --force --reason to override).\n\nExamples:\n  cradle device set ACME-000001 owner=ops location='rack 4' attr.color=blue\n  cradle device set ACME-000001 notes=\n  cradle device set ACME-000001 cost=129.90 currency=EUR warranty_until=2029-06-30\n  cradle device set ACME-000001 firmware=v1.4.0\n  cradle device set ACME-000001 status=registered --force --reason 'RMA, reflashed'"
    )]
    Set {
        /// Device serial
        serial: String,
        /// FIELD=VALUE assignments
        #[arg(required = true, value_name = "FIELD=VALUE")]
        assignments: Vec<Assignment>,
        #[command(flatten)]
        force: ForceArgs,
    },
    /// Install a device at a site (provisioned or maintenance → deployed)
    #[command(
        after_help = "Without --site, a device returning from maintenance keeps its site.\n\nExamples:\n  cradle device deploy ACME-000001 --site berlin-1 --location 'rack 4'\n  cradle device deploy ACME-000001 --site lab --force --reason 'bench test before provisioning'"
    )]
    Deploy {
        /// Device serial
        serial: String,
        /// Site the device is installed at
        #[arg(long)]
        site: Option<String>,
        /// Location within the site
        #[arg(long)]
        location: Option<String>,
        #[command(flatten)]
        force: ForceArgs,
    },
    /// Take a deployed device into maintenance, log work done, or list the maintenance log
    #[command(
        after_help = "Each call that moves the device or carries --note or --cost is an entry of its\nmaintenance log (a maintenance.logged event in the hash-chained log): a deployed device\nmoves into maintenance; one already in maintenance keeps its state and the entry\nrecords the work (--note, --cost with --currency). Other states need --force --reason. Notes: one line, at most 2000\ncharacters, no control characters. --list prints the log (maintenance and return\nentries, oldest first) with the cost per currency, summed exactly; --json for scripts.\n\nExamples:\n  cradle device maintenance ACME-000001 --note 'fan noisy, sent to bench'\n  cradle device maintenance ACME-000001 --note 'fan replaced' --cost 18.40 --currency EUR\n  cradle device return ACME-000001 --note 'back in rack 4'\n  cradle device maintenance ACME-000001 --list"
    )]
    Maintenance {
        /// Device serial
        serial: String,
        /// What was done or found (recorded on the log entry)
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// Cost of this work: a plain decimal, e.g. 18.40 (needs --currency)
        #[arg(long, value_name = "AMOUNT", requires = "currency")]
        cost: Option<String>,
        /// ISO 4217 currency of --cost (EUR, USD, ...)
        #[arg(long, value_name = "CODE", requires = "cost")]
        currency: Option<String>,
        /// List the device's maintenance log instead of adding to it
        #[arg(long, conflicts_with_all = ["note", "cost", "currency", "force"])]
        list: bool,
        #[command(flatten)]
        force: ForceArgs,
    },
    /// Re-write a device's configuration over its port (recorded as config.written)
    #[command(
        after_help = "The device on --port must answer with the registered hardware id. The template\n(--config NAME, else the one the device was last written from) is rendered for the\ndevice, written into its config place (cradle protocol: slot config, writable after\nLOCK; micropython: the template's micropython_path, default /config.json), read back by\nSHA-256 and recorded with the template name; the contact and the firmware the device\nreports are recorded too. esp32 and nrf91 have no config place: refused (exit 3)\nbefore the port is opened. Template format: cradle-config(5).\n\nExamples:\n  cradle device config ACME-000001 --port /dev/ttyUSB0 --config default\n  cradle --json device config ACME-000002 --port /dev/ttyACM0 --device-profile micropython"
    )]
    Config {
        /// Device serial
        serial: String,
        /// Serial port the device is on
        #[arg(long, value_name = "PATH")]
        port: std::path::PathBuf,
        /// Config template (default: the one recorded for the device)
        #[arg(long, value_name = "NAME")]
        config: Option<String>,
        /// Protocol the device speaks
        #[arg(long, value_enum, default_value = "cradle")]
        device_profile: super::values::DeviceProfileArg,
        /// Line rate of the port
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// Seconds the device may take to start answering a request
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        timeout: f64,
        #[command(flatten)]
        mp: super::provision::MicropythonPathArgs,
    },
    /// Bring a device back from maintenance to deployed (same site), ending its maintenance entry
    #[command(
        after_help = "Recorded as a maintenance.returned entry of the maintenance log (see `device\nmaintenance --list`). --rma records the supplier's return authorisation when the\ndevice went back to the supplier for repair or exchange; a device the supplier keeps\nis decommissioned, not returned.\n\nExamples:\n  cradle device return ACME-000001\n  cradle device return ACME-000001 --note 'board exchanged by supplier' --rma RMA-2291"
    )]
    Return {
        /// Device serial
        serial: String,
        /// What was done (recorded on the log entry)
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// The supplier's RMA number, when the device was sent back to the supplier
        #[arg(long, value_name = "ID")]
        rma: Option<String>,
        #[command(flatten)]
        force: ForceArgs,
    },
}

fn filter(
    status: Option<String>,
    site: Option<String>,
    batch: Option<String>,
) -> anyhow::Result<DeviceFilter> {
    Ok(DeviceFilter {
        status: status.map(|s| s.parse::<DeviceStatus>()).transpose()?,
        site,
        batch,
        since: None,
    })
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

#[derive(Serialize)]
struct ShowOut<'a> {
    #[serde(flatten)]
    device: &'a Device,
    certificates: std::collections::BTreeMap<String, u64>,
    /// Firmware, last contact and the configuration the device holds.
    #[serde(flatten)]
    contact: crate::store::contact::Contact,
    /// The device's attestation of its active certificate's key, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_attestation: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct HistoryOut<'a> {
    serial: &'a str,
    events: &'a [Event],
}

pub fn run(ctx: &Ctx, cmd: DeviceCommand) -> anyhow::Result<i32> {
    match cmd {
        DeviceCommand::List {
            status,
            site,
            batch,
        } => {
            let f = filter(status, site, batch)?;
            let reg = ctx.registry_read()?;
            if ctx.json {
                // Streamed: a large fleet is not held in memory.
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                crate::app::inventory::export(
                    reg.reader(),
                    &f,
                    crate::app::inventory::Format::Json,
                    &mut out,
                    &mut |_| {},
                )?;
                std::io::Write::flush(&mut out)?;
                return Ok(0);
            }
            let mut rows = Vec::new();
            q::for_each_device(reg.reader(), &f, |d| {
                rows.push(vec![
                    d.serial,
                    d.status.to_string(),
                    opt(&d.model),
                    opt(&d.batch),
                    opt(&d.site),
                    opt(&d.location),
                    opt(&d.mac),
                ]);
                Ok(())
            })?;
            print_table(
                &[
                    "SERIAL", "STATUS", "MODEL", "BATCH", "SITE", "LOCATION", "MAC",
                ],
                &rows,
            )?;
            Ok(0)
        }
        DeviceCommand::Show { serial } => {
            let reg = ctx.registry_read()?;
            let d = require_device(reg.reader(), &serial)?;
            let certificates = q::cert_counts(reg.reader(), d.id)?.into_iter().collect();
            let key_attestation = crate::store::certs::certs_for_device(reg.reader(), d.id)?
                .into_iter()
                .filter(|c| c.status == crate::store::CertStatus::Active)
                .find_map(|c| c.device_attestation);
            let contact = crate::store::contact::contact(reg.reader(), d.id)?;
            let out = ShowOut {
                device: &d,
                certificates,
                contact,
                key_attestation,
            };
            if ctx.json {
                print_json(&out)?;
                return Ok(0);
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            for f in crate::app::inventory::fields::Field::ALL {
                rows.push(vec![
                    f.name().to_string(),
                    f.get(&d).unwrap_or_default().to_string(),
                ]);
            }
            for (k, v) in &d.attributes {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    o => o.to_string(),
                };
                rows.push(vec![format!("attr.{k}"), v]);
            }
            let c = &out.contact;
            rows.push(vec!["firmware".into(), opt(&c.firmware)]);
            rows.push(vec![
                "last_contact_at".into(),
                c.last_contact_at.clone().unwrap_or_else(|| "never".into()),
            ]);
            rows.push(vec![
                "config".into(),
                match (&c.config_name, &c.config_sha256) {
                    (Some(n), Some(h)) => format!("{n} sha256:{h}"),
                    _ => "none".into(),
                },
            ]);
            rows.push(vec!["created_at".into(), d.created_at.clone()]);
            rows.push(vec!["updated_at".into(), d.updated_at.clone()]);
            let certs = if out.certificates.is_empty() {
                "none".to_string()
            } else {
                out.certificates
                    .iter()
                    .map(|(s, n)| format!("{n} {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push(vec!["certificates".into(), certs]);
            if let Some(ev) = &out.key_attestation {
                rows.push(vec![
                    "key_attestation".into(),
                    super::common::attestation_line(ev),
                ]);
            }
            print_table(&["FIELD", "VALUE"], &rows)?;
            Ok(0)
        }
        DeviceCommand::History { serial, firmware } => {
            let reg = ctx.registry_read()?;
            let d = require_device(reg.reader(), &serial)?;
            let mut events = events_for_device(reg.reader(), d.id)?;
            if firmware {
                let kind = crate::model::EventKind::FirmwareReported.as_str();
                events.retain(|e| e.kind == kind);
                if !ctx.json {
                    return print_firmware_trail(&events);
                }
            }
            if ctx.json {
                print_json(&HistoryOut {
                    serial: &d.serial,
                    events: &events,
                })?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        e.at.clone(),
                        e.kind.clone(),
                        format!("{}@{}", e.actor, e.station),
                        e.details.to_string(),
                    ]
                })
                .collect();
            print_table(&["EVENT", "AT", "KIND", "WHO", "DETAILS"], &rows)?;
            Ok(0)
        }
        DeviceCommand::Set {
            serial,
            assignments,
            force,
        } => {
            let mut reg = ctx.registry()?;
            let actor = ctx.actor(&ctx.config()?);
            let o = device::edit(
                &mut reg,
                &serial,
                &assignments,
                &actor,
                force.reason(),
                "device set",
            )?;
            print_edit(ctx, &o)
        }
        DeviceCommand::Deploy {
            serial,
            site,
            location,
            force,
        } => {
            let mut reg = ctx.registry()?;
            let actor = ctx.actor(&ctx.config()?);
            let o = device::deploy(
                &mut reg,
                &serial,
                site.as_deref(),
                location.as_deref(),
                &actor,
                force.reason(),
            )?;
            print_edit(ctx, &o)
        }
        DeviceCommand::Maintenance {
            serial,
            note,
            cost,
            currency,
            list,
            force,
        } => {
            if list {
                let reg = ctx.registry_read()?;
                let log = maintenance::list(reg.reader(), &serial)?;
                return print_maintenance_log(ctx, &log);
            }
            let entry = maintenance::Entry::new(
                note.as_deref(),
                cost.as_deref(),
                currency.as_deref(),
                None,
            )?;
            let mut reg = ctx.registry()?;
            let actor = ctx.actor(&ctx.config()?);
            let o = maintenance::maintain(&mut reg, &serial, &entry, &actor, force.reason())?;
            print_edit(ctx, &o)
        }
        DeviceCommand::Config {
            serial,
            port,
            config,
            device_profile,
            baud,
            timeout,
            mp,
        } => {
            if !(timeout > 0.0 && timeout <= 3600.0) {
                return Err(
                    crate::Error::input("--timeout must be between 0 and 3600 seconds").into(),
                );
            }
            let family: crate::device::DeviceProfile = device_profile.into();
            crate::device::config_place(family)
                .map_err(|why| crate::Error::input(format!("device config: {why}")))?;
            let micropython_paths = mp.paths(device_profile)?;
            let mut reg = ctx.registry()?;
            let cfg = ctx.config()?;
            let actor = ctx.actor(&cfg);
            let name = match config {
                Some(n) => n,
                None => {
                    let d = require_device(reg.reader(), &serial)?;
                    crate::store::contact::contact(reg.reader(), d.id)?
                        .config_name
                        .ok_or_else(|| {
                            crate::Error::input(format!(
                                "device {serial} has no configuration recorded; give --config NAME"
                            ))
                        })?
                }
            };
            let t = crate::app::config::ConfigTemplate::load(&name, ctx.templates().as_deref())?;
            if !port.exists() {
                return Err(
                    crate::Error::Device(format!("{}: no such port", port.display())).into(),
                );
            }
            let params = crate::device::LinkParams {
                baud,
                timeout: std::time::Duration::from_secs_f64(timeout),
                micropython_paths,
                ..Default::default()
            };
            let mut link =
                crate::device::open(family, &port, params).map_err(crate::Error::from)?;
            let pname = port.display().to_string();
            let o = crate::app::config::rewrite(
                &mut reg,
                &serial,
                link.as_mut(),
                &t,
                &cfg.org,
                &actor,
                &pname,
            )?;
            if ctx.json {
                print_json(&o)?;
            } else {
                println!(
                    "{}: config '{}' written to {} and read back (sha256:{}, {} bytes){}",
                    o.serial,
                    o.template,
                    o.place,
                    o.sha256,
                    o.bytes,
                    if o.unchanged { ", unchanged" } else { "" }
                );
            }
            Ok(0)
        }
        DeviceCommand::Return {
            serial,
            note,
            rma,
            force,
        } => {
            let entry = maintenance::Entry::new(note.as_deref(), None, None, rma.as_deref())?;
            let mut reg = ctx.registry()?;
            let actor = ctx.actor(&ctx.config()?);
            let o = maintenance::return_device(&mut reg, &serial, &entry, &actor, force.reason())?;
            print_edit(ctx, &o)
        }
    }
}

/// `device history --firmware` as a table.
fn print_firmware_trail(events: &[Event]) -> anyhow::Result<i32> {
    let s = |e: &Event, k: &str| match &e.details[k] {
        serde_json::Value::String(v) => v.clone(),
        serde_json::Value::Null => String::new(),
        o => o.to_string(),
    };
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                s(e, "firmware"),
                s(e, "previous"),
                s(e, "source"),
                s(e, "via"),
                format!("{}@{}", e.actor, e.station),
            ]
        })
        .collect();
    print_table(
        &["AT", "FIRMWARE", "PREVIOUS", "SOURCE", "VIA", "WHO"],
        &rows,
    )?;
    Ok(0)
}

fn print_edit(ctx: &Ctx, o: &EditOutcome) -> anyhow::Result<i32> {
    if ctx.json {
        print_json(o)?;
    } else if o.changes.is_empty() && o.logged.is_some() {
        println!(
            "{}: maintenance log entry recorded ({})",
            o.serial, o.status
        );
    } else if o.changes.is_empty() {
        println!("{}: nothing to change ({})", o.serial, o.status);
    } else {
        println!(
            "{}: {}{}",
            o.serial,
            o.changes
                .iter()
                .map(describe_change)
                .collect::<Vec<_>>()
                .join(", "),
            if o.forced { " (forced)" } else { "" }
        );
    }
    Ok(0)
}

/// `device maintenance --list` as a table.
fn print_maintenance_log(ctx: &Ctx, log: &maintenance::Log) -> anyhow::Result<i32> {
    if ctx.json {
        print_json(log)?;
        return Ok(0);
    }
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    let rows: Vec<Vec<String>> = log
        .entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.kind.to_string(),
                match (&e.from, &e.to) {
                    (Some(f), Some(t)) if f != t => format!("{f} -> {t}"),
                    (_, Some(t)) => t.clone(),
                    _ => String::new(),
                },
                match (&e.cost, &e.currency) {
                    (Some(c), Some(cur)) => format!("{c} {cur}"),
                    _ => String::new(),
                },
                o(&e.rma),
                o(&e.note),
                e.actor.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("{}: no maintenance entries ({})", log.serial, log.status);
        return Ok(0);
    }
    print_table(
        &["AT", "ENTRY", "STATUS", "COST", "RMA", "NOTE", "ACTOR"],
        &rows,
    )?;
    for t in &log.totals {
        println!(
            "total {} {} over {} entr{}",
            t.cost,
            t.currency,
            t.entries,
            if t.entries == 1 { "y" } else { "ies" }
        );
    }
    Ok(0)
}

/// `cradle status`: the fleet by state, site and batch.
pub fn status(ctx: &Ctx) -> anyhow::Result<i32> {
    let s: FleetSummary = match ctx.backend()? {
        super::common::Backend::Postgres(t) => ctx.pg_registry(&t)?.fleet_summary()?,
        super::common::Backend::File => q::fleet_summary(ctx.registry_read()?.reader())?,
    };
    if ctx.json {
        print_json(&s)?;
        return Ok(0);
    }
    println!("{} devices", s.devices.total);
    let rows: Vec<Vec<String>> = DeviceStatus::ALL
        .iter()
        .map(|st| vec![st.to_string(), s.devices.get(*st).to_string()])
        .collect();
    print_table(&["STATE", "DEVICES"], &rows)?;
    for (title, groups) in [("SITE", &s.by_site), ("BATCH", &s.by_batch)] {
        println!();
        let mut headers = vec![title, "TOTAL"];
        headers.extend(DeviceStatus::ALL.iter().map(|st| st.as_str()));
        let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                let mut r = vec![
                    g.name.clone().unwrap_or_else(|| "(none)".into()),
                    g.counts.total.to_string(),
                ];
                r.extend(
                    DeviceStatus::ALL
                        .iter()
                        .map(|st| g.counts.get(*st).to_string()),
                );
                r
            })
            .collect();
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        print_table(&h, &rows)?;
    }
    Ok(0)
}
