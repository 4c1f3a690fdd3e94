//! `cradle label`: device labels as ZPL, SVG or PNG, to files or a network printer.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use super::common::{print_json, Ctx};
use crate::app::label::{self, Format, LabelTemplate, Output, Printer, Request, Selection};
use crate::error::Error;
use crate::store::devices::DeviceStatus;
use crate::store::inventory::DeviceFilter;

pub const LABEL_HELP: &str = "\
One label per device, laid out by a label template (size, dpi, QR payload, text lines; see
templates/labels/default.toml, the built-in 'default'; format in cradle-label(5)). Template
strings take the profile variables ({serial}, {mac?}, {attr.NAME}, ...). Every label is rendered before anything is
written: a template error, a missing value or a QR payload too long for its space is one
line naming the template line and the device (exit 3), and nothing is written or recorded.

Formats:
  zpl  ZPL II for Zebra printers: ^XA ... ^XZ per label, ^PW/^LL from the size and dpi,
       ^BQN,2,m QR code, ^A0 text; field data hex-escaped with ^FH, so registry text
       cannot inject printer commands
  svg  the label at its size in mm, drawn in printer dots; text as <text>
  png  a 1-bit bitmap, one pixel per printer dot; the QR code only (no text)

Output: -o FILE (a ZPL stream of every label, or the one SVG/PNG label), -o DIR (an existing
directory, or a path ending in '/': one SERIAL.FORMAT file per device), --printer
tcp://HOST[:9100] (raw ZPL to the printer's port; --printer-timeout bounds connecting and
each write; unreachable: one line, exit 6, nothing recorded), else standard output.
Each run is recorded as a label.rendered event (operator, station, count, format,
template, destination, SHA-256 of the bytes, serials).

Examples:
  cradle label ACME-000001 -o ACME-000001.zpl
  cradle label --batch B-2026-11 --printer tcp://zebra-line-1:9100
  cradle label --status provisioned --format svg -o labels/
  cradle label ACME-000001 --format png --template my-label -o label.png
  cradle --json label --batch B-2026-11 -o batch.zpl";

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// Serial numbers of the devices (or use --batch / --status)
    #[arg(
        value_name = "SERIAL",
        conflicts_with_all = ["batch", "status"],
        required_unless_present_any = ["batch", "status"]
    )]
    serials: Vec<String>,
    /// Every device of this batch
    #[arg(long)]
    batch: Option<String>,
    /// Every device in this lifecycle state (with --batch: both must match)
    #[arg(long)]
    status: Option<String>,
    /// Label template: a name in HOME/templates/labels, a built-in name, or a .toml path
    #[arg(long, default_value = "default", value_name = "NAME|FILE")]
    template: String,
    /// Output format
    #[arg(long, value_enum, default_value = "zpl")]
    format: FormatArg,
    /// Write to FILE, or one file per device into DIR (existing, or ending in '/')
    #[arg(
        short = 'o',
        long = "out",
        value_name = "FILE|DIR",
        conflicts_with = "printer"
    )]
    out: Option<PathBuf>,
    /// Send the ZPL to a network label printer (raw port, usually 9100)
    #[arg(long, value_name = "tcp://HOST:PORT")]
    printer: Option<String>,
    /// Seconds allowed for connecting to the printer and for each write
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = super::values::parse_timeout)]
    printer_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    /// ZPL II for Zebra printers
    Zpl,
    /// Scalable vector graphics
    Svg,
    /// A bitmap at the printer's resolution (QR code only)
    Png,
}

pub fn run(ctx: &Ctx, a: LabelArgs) -> anyhow::Result<i32> {
    let format = match a.format {
        FormatArg::Zpl => Format::Zpl,
        FormatArg::Svg => Format::Svg,
        FormatArg::Png => Format::Png,
    };
    let output = match (&a.out, &a.printer) {
        (Some(p), _) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            Output::Dir(p.clone())
        }
        (Some(p), _) => Output::File(p.clone()),
        (None, Some(url)) => Output::Printer(Printer::parse(url)?, a.printer_timeout),
        (None, None) => {
            if ctx.json {
                return Err(Error::usage(
                    "--json prints a summary on standard output: give -o or --printer for the labels",
                )
                .into());
            }
            if format == Format::Png && std::io::stdout().is_terminal() {
                return Err(Error::usage("not writing PNG to a terminal: give -o FILE").into());
            }
            Output::Stream
        }
    };
    let selection = if a.serials.is_empty() {
        Selection::Filter(DeviceFilter {
            status: a.status.map(|s| s.parse::<DeviceStatus>()).transpose()?,
            site: None,
            batch: a.batch,
            since: None,
        })
    } else {
        Selection::Serials(a.serials)
    };
    let config = ctx.config()?;
    let template = LabelTemplate::load(&a.template, ctx.templates().as_deref())?;
    let mut reg = ctx.registry()?;
    let actor = ctx.actor(&config);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let s = label::run(
        &mut reg,
        Request {
            template: &template,
            format,
            selection,
            output,
            org: &config.org,
        },
        &actor,
        &mut out,
    )?;
    drop(out);
    if ctx.json {
        print_json(&s)?;
    } else if s.destination != "stdout" {
        println!(
            "{} label{} ({}, template {}) -> {}",
            s.labels,
            if s.labels == 1 { "" } else { "s" },
            s.format.as_str(),
            s.template,
            s.destination
        );
    }
    Ok(0)
}
