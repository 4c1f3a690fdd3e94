//! `cradle report sanitization`: a device's certificate of sanitization.

use std::io::Write;
use std::path::PathBuf;

use super::common::Ctx;
use crate::app::retire::report;
use crate::outfile;
use crate::store::devices;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Plain text for people
    Text,
    /// A self-contained HTML page (print it to PDF from a browser)
    Html,
    /// JSON for scripts
    Json,
}

#[derive(Debug, clap::Args)]
pub struct SanitizationArgs {
    /// Device serial
    serial: String,
    /// Output format (--json is the same as --format json)
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, a: SanitizationArgs) -> anyhow::Result<i32> {
    let reg = ctx.registry_read()?;
    let config = ctx.config()?;
    let dev = devices::require_device(reg.reader(), &a.serial)?;
    let cert = report::build(reg.reader(), &dev, &config.org)?;
    let format = if ctx.json { Format::Json } else { a.format };
    let body = match format {
        Format::Json => serde_json::to_string_pretty(&cert)? + "\n",
        Format::Html => report::to_html(&cert),
        Format::Text => report::to_text(&cert),
    };
    match &a.out {
        Some(p) => outfile::write_file_atomic(p, body.as_bytes(), 0o644, true)?,
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(body.as_bytes())?;
        }
    }
    Ok(0)
}
