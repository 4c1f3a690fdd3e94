//! `cradle log …`: verify and export the hash-chained event log.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::common::{print_json, Backend, Ctx};
use crate::error::Error;
use crate::outfile::OutFile;
use crate::store::audit::{self as q, ExportedEvent};
use crate::store::events;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line
    Jsonl,
    /// One JSON array
    Json,
    /// CSV with the details as a JSON cell
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Walk the event log's hash chain and name the first event altered, deleted or inserted
    #[command(
        after_help = "The chain is keyed by HOME/log.key (HMAC-SHA256, see cradle-audit(7)).\n\nExit codes: 0 the chain verifies, 1 it is broken (the first break is named) or the\nlog key is missing so only its structure could be checked, 4 the registry cannot be read.\n\nExamples:\n  cradle log verify\n  cradle --json log verify"
    )]
    Verify {
        /// Also prove the log still extends a head recorded earlier: a `log head --json`
        /// file, a file or string ID:HASH, or a bare HASH
        #[arg(long, value_name = "FILE|HASH")]
        anchor: Option<String>,
    },
    /// Print the newest event (id, hash, time) for an auditor to record outside the host
    #[command(
        after_help = "Record the output elsewhere (a ticket, another machine); later
`cradle log verify --anchor FILE|ID:HASH` proves the log still extends it: an event
at or before it rewritten, or events removed (a rolled-back or deleted -wal), fail.
The hash is keyed by HOME/log.key, so only its holder can forge a matching one.

Examples:
  cradle log head
  cradle --json log head > anchor.json"
    )]
    Head,
    /// Export the event log (JSON Lines by default; --json for one array, --format csv)
    #[command(
        after_help = "Each event carries its hash and the previous event's hash, so an export can be\nre-verified elsewhere.\n\nExamples:\n  cradle log export > events.jsonl\n  cradle log export --since 2026-11-01 --format csv -o november.csv\n  cradle --json log export --device ACME-000001"
    )]
    Export {
        /// Only events at or after T (RFC 3339 like 2026-11-01T08:00:00Z, or a date 2026-11-01)
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only the events of one device
        #[arg(long, value_name = "SERIAL")]
        device: Option<String>,
        /// Output format
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        /// Write to FILE instead of stdout
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub fn run(ctx: &Ctx, cmd: LogCommand) -> anyhow::Result<i32> {
    match cmd {
        LogCommand::Verify { anchor } => verify(ctx, anchor.as_deref()),
        LogCommand::Head => head(ctx),
        LogCommand::Export {
            since,
            device,
            format,
            out,
        } => {
            let format = match (format, ctx.json) {
                (Some(f), _) => f,
                (None, true) => ExportFormat::Json,
                (None, false) => ExportFormat::Jsonl,
            };
            let since = since.as_deref().map(parse_since).transpose()?;
            let (since, device) = (since.as_deref(), device.as_deref());
            // Either backend streams its events into the same writer.
            let mut pg = None;
            let mut lite = None;
            match ctx.backend()? {
                Backend::Postgres(t) => pg = Some(ctx.pg_registry(&t)?),
                Backend::File => {
                    let reg = ctx.registry_read()?;
                    if let Some(d) = device {
                        crate::store::devices::require_device(reg.reader(), d)?;
                    }
                    lite = Some(reg);
                }
            }
            let protected = lite
                .as_ref()
                .map(|r| r.files().to_vec())
                .unwrap_or_default();
            let mut source =
                |f: &mut dyn FnMut(ExportedEvent) -> crate::Result<()>| match (&mut pg, &lite) {
                    (Some(pg), _) => pg.events_export(since, device, f),
                    (None, Some(reg)) => q::events_export(reg.reader(), since, device, f),
                    (None, None) => unreachable!("one backend is open"),
                };
            match out {
                Some(path) => {
                    // Streamed into a temporary file beside the target, renamed when
                    // complete: a large log never sits in memory, a failure leaves no
                    // half-written export.
                    let mut w = OutFile::create(&path, 0o644, &protected)?;
                    export(&mut source, format, &mut w)?;
                    w.commit()?;
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    export(&mut source, format, &mut w)?;
                    w.flush()?;
                }
            }
            Ok(0)
        }
    }
}

fn head(ctx: &Ctx) -> anyhow::Result<i32> {
    let head = match ctx.backend()? {
        Backend::Postgres(t) => ctx.pg_registry(&t)?.log_head()?,
        Backend::File => events::log_head(ctx.registry_read()?.reader())?,
    };
    if ctx.json {
        print_json(&serde_json::to_value(&head)?)?;
    } else {
        match head {
            Some(h) => println!(
                "{}:{}  (event {} at {}{})",
                h.id,
                h.hash,
                h.id,
                h.at,
                if h.keyed { ", keyed" } else { ", plain hash" }
            ),
            None => println!("the event log is empty"),
        }
    }
    Ok(0)
}

/// An anchor as (id, hash): JSON from `log head --json`, `ID:HASH`, or `HASH`; from a
/// file when the argument names one.
fn parse_anchor(arg: &str) -> crate::Result<(Option<i64>, String)> {
    let path = std::path::Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
    } else {
        arg.to_string()
    };
    let text = text.trim();
    let bad = || {
        Error::input(format!(
            "--anchor {arg}: not an anchor (expected `log head --json` output, ID:HASH or a 64-digit hash)"
        ))
    };
    let is_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
        let id = v["id"].as_i64().ok_or_else(bad)?;
        let hash = v["hash"].as_str().filter(|h| is_hash(h)).ok_or_else(bad)?;
        return Ok((Some(id), hash.to_string()));
    }
    let first = text.split_whitespace().next().unwrap_or("");
    match first.split_once(':') {
        Some((id, hash)) if is_hash(hash) => {
            Ok((Some(id.parse().map_err(|_| bad())?), hash.into()))
        }
        None if is_hash(first) => Ok((None, first.to_string())),
        _ => Err(bad()),
    }
}

fn verify(ctx: &Ctx, anchor: Option<&str>) -> anyhow::Result<i32> {
    let anchor = anchor.map(parse_anchor).transpose()?;
    // Without an anchor, a PostgreSQL chain is read in pages (never whole in memory).
    if let (Backend::Postgres(t), None) = (ctx.backend()?, &anchor) {
        let report = ctx.pg_registry(&t)?.verify_chain()?;
        let key = ctx.home.root.join(crate::store::logkey::LOG_KEY_FILE);
        // The breaking event's device is not looked up here yet (SQLite names it).
        return print_verify(ctx, &report, None, &key);
    }
    let reg = ctx.registry_read()?;
    // One read transaction for the chain, the anchor and the device it names.
    let snap = reg.snapshot()?;
    let mut report = events::verify_chain(&snap)?;
    if let Some((id, hash)) = &anchor {
        if report.first_break.is_none() {
            if let Some(message) = events::check_anchor(&snap, *id, hash)? {
                report.first_break = Some(events::ChainBreak {
                    event_id: id.unwrap_or(0),
                    problem: "anchor".into(),
                    message,
                });
            }
        }
    }
    let device = match &report.first_break {
        Some(b) => match q::event_device(&snap, b.event_id)? {
            Some(id) => q::device_serial(&snap, id)?,
            None => None,
        },
        None => None,
    };
    let key = reg
        .key_file()
        .unwrap_or_else(|| crate::store::logkey::key_path(reg.path()));
    print_verify(ctx, &report, device, &key)
}

/// Prints a chain report (either backend); the exit code says whether it verified.
fn print_verify(
    ctx: &Ctx,
    report: &events::ChainReport,
    device: Option<String>,
    key: &std::path::Path,
) -> anyhow::Result<i32> {
    if ctx.json {
        let mut v = serde_json::to_value(report)?;
        v["ok"] =
            serde_json::json!(report.first_break.is_none() && report.structure_only_from.is_none());
        if let Some(b) = v.get_mut("first_break").filter(|b| !b.is_null()) {
            b["device"] = serde_json::json!(device);
        }
        print_json(&v)?;
    } else {
        match &report.first_break {
            None if report.structure_only_from.is_some() => println!(
                "event log UNVERIFIED from event {}: the log key {} is missing, so only the chain's structure ({} event(s)) could be checked, not who wrote it",
                report.structure_only_from.unwrap_or_default(),
                key.display(),
                report.events
            ),
            None => println!(
                "event log OK: {} event(s), head {}",
                report.events,
                &report.head_hash[..16.min(report.head_hash.len())]
            ),
            Some(b) => println!(
                "event log BROKEN at event {} ({}{}): {}",
                b.event_id,
                b.problem,
                device.map(|d| format!(", device {d}")).unwrap_or_default(),
                b.message
            ),
        }
    }
    // A chain that could only be checked for structure is not a verified one.
    Ok(
        if report.first_break.is_some() || report.structure_only_from.is_some() {
            1
        } else {
            0
        },
    )
}

/// Accepts RFC 3339 (any offset, normalised to UTC) or a bare date (midnight UTC); returns
/// the registry's timestamp format so that text comparison orders correctly.
pub fn parse_since(s: &str) -> crate::Result<String> {
    match crate::model::Timestamp::parse_user(s) {
        Some(t) => Ok(t.to_string()),
        None => Err(Error::input(format!(
            "--since '{s}' is not a time: use RFC 3339 (2026-11-01T08:00:00Z) or a date (2026-11-01)"
        ))),
    }
}

/// Calls its argument with each event to export, in id order.
type EventSource<'a> =
    dyn FnMut(&mut dyn FnMut(ExportedEvent) -> crate::Result<()>) -> crate::Result<()> + 'a;

fn export(
    source: &mut EventSource<'_>,
    format: ExportFormat,
    w: &mut dyn Write,
) -> anyhow::Result<()> {
    let io = |e: std::io::Error| Error::io("<output>", e);
    let mut first = true;
    match format {
        ExportFormat::Json => write!(w, "[").map_err(io)?,
        ExportFormat::Csv => {
            writeln!(w, "id,at,kind,device,actor,station,details,prev_hash,hash").map_err(io)?
        }
        ExportFormat::Jsonl => {}
    }
    source(&mut |e: ExportedEvent| {
        match format {
            ExportFormat::Jsonl => {
                serde_json::to_writer(&mut *w, &e).map_err(|e| io(e.into()))?;
                writeln!(w).map_err(io)?;
            }
            ExportFormat::Json => {
                write!(w, "{}\n  ", if first { "" } else { "," }).map_err(io)?;
                serde_json::to_writer(&mut *w, &e).map_err(|e| io(e.into()))?;
            }
            ExportFormat::Csv => {
                let mut c = csv::Writer::from_writer(Vec::new());
                let details = e.details.to_string();
                c.write_record([
                    e.id.to_string().as_str(),
                    &e.at,
                    &e.kind,
                    e.device.as_deref().unwrap_or(""),
                    &csv_safe(&e.actor),
                    &csv_safe(&e.station),
                    &details,
                    &e.prev_hash,
                    &e.hash,
                ])
                .map_err(|e| io(std::io::Error::other(e)))?;
                let bytes = c
                    .into_inner()
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                w.write_all(&bytes).map_err(io)?;
            }
        }
        first = false;
        Ok(())
    })?;
    if format == ExportFormat::Json {
        writeln!(w, "{}]", if first { "" } else { "\n" }).map_err(io)?;
    }
    Ok(())
}

/// Spreadsheets run cells that start with = + - @ as formulas; prefix those with '.
fn csv_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_rfc3339_and_dates() {
        assert_eq!(parse_since("2026-11-01").unwrap(), "2026-11-01T00:00:00Z");
        assert_eq!(
            parse_since("2026-11-01T10:00:00+02:00").unwrap(),
            "2026-11-01T08:00:00Z"
        );
        assert!(parse_since("yesterday").is_err());
    }
}
