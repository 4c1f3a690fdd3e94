//! `cradle log …`: verify and export the hash-chained event log.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::common::{print_json, Ctx};
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
    Verify,
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
        LogCommand::Verify => verify(ctx),
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
            let reg = ctx.registry()?;
            if let Some(d) = &device {
                crate::store::devices::require_device(reg.reader(), d)?;
            }
            match out {
                Some(path) => {
                    // Streamed into a temporary file beside the target, renamed when
                    // complete: a large log never sits in memory, a failure leaves no
                    // half-written export.
                    let mut w = OutFile::create(&path, 0o644, &reg.files())?;
                    export(&reg, since.as_deref(), device.as_deref(), format, &mut w)?;
                    w.commit()?;
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    export(&reg, since.as_deref(), device.as_deref(), format, &mut w)?;
                    w.flush()?;
                }
            }
            Ok(0)
        }
    }
}

fn verify(ctx: &Ctx) -> anyhow::Result<i32> {
    let reg = ctx.registry()?;
    let report = events::verify_chain(reg.reader())?;
    let device = match &report.first_break {
        Some(b) => match q::event_device(reg.reader(), b.event_id)? {
            Some(id) => q::device_serial(reg.reader(), id)?,
            None => None,
        },
        None => None,
    };
    if ctx.json {
        let mut v = serde_json::to_value(&report)?;
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
                crate::store::logkey::key_path(reg.path()).display(),
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

fn export(
    reg: &crate::store::Store,
    since: Option<&str>,
    device: Option<&str>,
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
    q::events_export(reg.reader(), since, device, |e: ExportedEvent| {
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
