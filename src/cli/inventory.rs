//! `cradle inventory …`: CSV import and export.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use indicatif::ProgressBar;

use super::common::{print_json, progress_bar, Ctx};
use crate::app::inventory::export::CsvStyle;
use crate::app::inventory::import::{self, Rejection};
use crate::app::inventory::{self as inv, Blank, Delimiter, Format, ImportOptions, MatchKey, Mode};
use crate::error::Error;
use crate::outfile::OutFile;

const IMPORT_HELP: &str = "\
Columns (header names, case-insensitive): serial, hardware_id, model, hw_rev, batch, site,
location, owner, mac, imei, status, notes. Columns named attr.NAME are stored as device
attributes; any other column is an error unless --extra-columns keep.

Delimiter: `,` `;` or TAB, detected from the header line (the one that occurs most often
outside quotes; a tie is refused) unless --delimiter is given; the one used is said on
stderr and in the JSON summary. Rows whose cells are all empty (the trailing `,,,,` rows
of a spreadsheet) are skipped and counted.

Cells:
  blank          leaves the stored value unchanged on update (--blank clears: clears it);
                 a cell of only spaces is blank
  spaces         around a value are removed, except in notes and attr.* (kept exactly)
  <clear>        clears the stored value (serial and status cannot be cleared)
  '=... '+... '-... '@...   a leading ' before = + - @ TAB CR (after any run of ') is
                 removed: this undoes the formula neutralisation of `inventory export`
  mac            aa:bb:cc:dd:ee:ff, aa-bb-.., aabb.ccdd.eeff or 12 hex digits (stored lowercase)
  imei           15 digits with a valid Luhn check digit, also with - . or space between
                 digit groups (35-209900-176148-1 is stored as 352099001761481)
  invisible      zero-width and bidi control characters (U+200B..U+200F, U+202A..U+202E,
                 U+2066..U+2069, U+FEFF, other format and control characters) reject the
                 row, naming the column and code point; in serial, hardware_id, site,
                 batch, mac and imei so does white space other than a plain space
  status         registered, provisioned, deployed, maintenance, retired, decommissioned;
                 on update the lifecycle rules apply
--dry-run lists every cell stored in a canonical form (line, column, from -> to).
A column named reject_reason (as written by --errors) is ignored. The --errors file has
the input's delimiter and the export's formula rule: a cell starting with = + - @ TAB CR
gets a leading ', which import removes again.

Every row is checked and every bad row reported as FILE:LINE (the physical line where the
record starts), with control characters shown escaped. A record over 8 MiB (an unclosed
quote) stops the file. By default the import is all-or-nothing in one transaction;
--partial commits the good rows. Importing the same file twice changes nothing the
second time, in any mode: in create mode a device that exists already is a conflict only
if the row would change it.

Other processes can read the registry throughout an import. --exclusive takes it for
the import instead, if no other process has it open (else it says so and imports as
usual): pages go straight into the registry file rather than through the write-ahead
log, which makes a 1M-row import about 30% faster. Meanwhile other cradle processes wait
(up to 30 s, then exit 4) and other SQLite readers may get `database is locked`. A killed
import is rolled back either way.

Exit codes: 0 imported (or nothing to change); 2 usage (e.g. --errors naming the input
or the registry); 3 some rows are invalid (nothing written)
or the file/header is unusable; 7 rows conflict with the registry (nothing written);
1 with --partial when some rows were rejected (the good rows were written);
4 registry problem; 8 file cannot be read.

Examples:
  cradle inventory import devices.csv --dry-run
  cradle inventory import devices.csv --mode upsert --errors bad.csv
  cradle inventory import macs.csv --mode update --match mac --blank clears
  cradle --json inventory import devices.csv --partial";

const EXPORT_HELP: &str = "\
CSV columns: serial, hardware_id, model, hw_rev, batch, site, location, owner, mac, imei,
status, notes, then attr.NAME for each attribute in use. Cells starting with = + - @ TAB or
CR (after any run of ') get a leading ' so spreadsheets do not execute them; import removes
it again, so `inventory import --mode upsert` of an export changes nothing.
--excel starts the CSV with a UTF-8 byte order mark (CRLF line ends as always) so Excel
shows non-ASCII text right; with --delimiter ';' it opens in columns where Excel's list
separator is ';'.
--format xlsx writes an Excel workbook (needs -o): the same columns, every cell a text
cell (never evaluated, so no leading '; IMEIs stay digits), at most 1,048,575 devices and
32,767 characters a cell.
JSON and JSON Lines carry every field, timestamps and attributes.

Examples:
  cradle inventory export -o devices.csv
  cradle inventory export --status deployed --site berlin-1 --format jsonl
  cradle inventory export --batch B-2026-11 --format json -o batch.json
  cradle inventory export --excel --delimiter ';' -o devices.csv
  cradle inventory export --format xlsx -o devices.xlsx";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Create,
    Update,
    Upsert,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MatchArg {
    Serial,
    Mac,
    Imei,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BlankArg {
    Keep,
    Clears,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExtraArg {
    Keep,
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Json,
    Jsonl,
    /// nRF Cloud's onboard.csv (as `cradle export nrf-cloud`; needs -o)
    NrfCloud,
    /// An Excel workbook (needs -o)
    Xlsx,
}

fn parse_delimiter(s: &str) -> Result<Delimiter, String> {
    Delimiter::parse(s).ok_or_else(|| format!("'{s}' is not a delimiter: use ',', ';' or tab"))
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Import devices from a CSV file (validated, all-or-nothing by default)
    #[command(after_help = IMPORT_HELP)]
    Import {
        /// The CSV file (UTF-8, optional BOM, CRLF or LF, RFC 4180 quoting)
        file: PathBuf,
        /// create: new devices only (an existing one the row would change is a conflict); update: existing only; upsert: both
        #[arg(long, value_enum, default_value = "create")]
        mode: ModeArg,
        /// The column that identifies a row's device
        #[arg(long = "match", value_enum, default_value = "serial")]
        key: MatchArg,
        /// What a blank cell does on update
        #[arg(long, value_enum, default_value = "keep")]
        blank: BlankArg,
        /// Unknown columns: keep them as device attributes, or reject the file
        #[arg(long, value_enum, default_value = "reject")]
        extra_columns: ExtraArg,
        /// Write the rejected rows, with a reject_reason column, to this CSV file (replaced whole when the import ends; never the input or the registry)
        #[arg(long, value_name = "BAD.csv")]
        errors: Option<PathBuf>,
        /// Commit the good rows even if some are rejected (exit 1 if any were)
        #[arg(long)]
        partial: bool,
        /// Show what would change (created, updated with fields, unchanged, rejected); write nothing
        #[arg(long)]
        dry_run: bool,
        /// Take the registry for the import: faster for large files; others wait (see below)
        #[arg(long)]
        exclusive: bool,
        /// Field delimiter: ',' ';' or tab (default: detected from the header line)
        #[arg(long, value_name = ",|;|tab", value_parser = parse_delimiter)]
        delimiter: Option<Delimiter>,
    },
    /// Export devices as CSV, JSON, JSON Lines or an Excel workbook
    #[command(after_help = EXPORT_HELP)]
    Export {
        /// Output format
        #[arg(long, value_enum, default_value = "csv")]
        format: FormatArg,
        /// Only devices in this lifecycle state
        #[arg(long)]
        status: Option<String>,
        /// Only devices at this site
        #[arg(long)]
        site: Option<String>,
        /// Only devices of this batch
        #[arg(long)]
        batch: Option<String>,
        /// Only devices changed at or after T (the device, or a certificate issued or revoked): RFC 3339 or a date
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Write to FILE (atomically) instead of stdout
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// CSV for Excel: a UTF-8 byte order mark first (CRLF line ends as always)
        #[arg(long)]
        excel: bool,
        /// CSV field delimiter: ',' ';' or tab
        #[arg(long, value_name = ",|;|tab", value_parser = parse_delimiter, default_value = ",")]
        delimiter: Delimiter,
    },
}

/// Draws the progress bar and prints rejections above it.
struct CliObserver {
    pb: ProgressBar,
    printed: u64,
    /// The file as messages name it, and whether to say its delimiter (not with --json).
    file: String,
    say_delimiter: bool,
}

/// Rejections printed on stderr before the rest are only counted (all go to --errors).
const PRINT_CAP: u64 = 10_000;

impl import::Observer for CliObserver {
    fn delimiter(&mut self, d: Delimiter, detected: bool) {
        // A file that is not plain comma-separated: say how it is read, before any
        // rejected row is reported.
        if self.say_delimiter && (d != Delimiter::Comma || !detected) {
            let how = if detected {
                "detected from the header line; --delimiter overrides"
            } else {
                "--delimiter"
            };
            self.pb.suspend(|| {
                eprintln!(
                    "{}: delimiter '{}' ({how})",
                    super::common::one_line(&self.file),
                    d.name()
                )
            });
        }
    }
    fn progress(&mut self, bytes: u64) {
        self.pb.set_position(bytes);
    }
    fn rejected(&mut self, r: &Rejection) {
        self.printed += 1;
        if self.printed <= PRINT_CAP {
            self.pb
                .suspend(|| eprintln!("{}", super::common::one_line(&r.to_string())));
        }
    }
}

pub fn run(ctx: &Ctx, cmd: InventoryCommand) -> anyhow::Result<i32> {
    match cmd {
        InventoryCommand::Import {
            file,
            mode,
            key,
            blank,
            extra_columns,
            errors,
            partial,
            dry_run,
            exclusive,
            delimiter,
        } => {
            let opts = ImportOptions {
                mode: match mode {
                    ModeArg::Create => Mode::Create,
                    ModeArg::Update => Mode::Update,
                    ModeArg::Upsert => Mode::Upsert,
                },
                key: match key {
                    MatchArg::Serial => MatchKey::Serial,
                    MatchArg::Mac => MatchKey::Mac,
                    MatchArg::Imei => MatchKey::Imei,
                },
                blank: match blank {
                    BlankArg::Keep => Blank::Keep,
                    BlankArg::Clears => Blank::Clears,
                },
                keep_extra: matches!(extra_columns, ExtraArg::Keep),
                partial,
                dry_run,
                errors_path: errors,
                exclusive,
                delimiter,
            };
            import_cmd(ctx, &file, &opts)
        }
        InventoryCommand::Export {
            format,
            status,
            site,
            batch,
            since,
            out,
            excel,
            delimiter,
        } => {
            let args = super::export::FilterArgs {
                status,
                site,
                batch,
                since,
            };
            let format = match format {
                FormatArg::Csv => Format::Csv,
                FormatArg::Json => Format::Json,
                FormatArg::Jsonl => Format::Jsonl,
                FormatArg::NrfCloud => return super::export::nrf_cloud_alias(ctx, args, out),
                FormatArg::Xlsx => Format::Xlsx,
            };
            if format != Format::Csv && (excel || delimiter != Delimiter::Comma) {
                return Err(
                    Error::usage("--excel and --delimiter apply to --format csv only").into(),
                );
            }
            if format == Format::Xlsx && out.is_none() {
                return Err(Error::usage(
                    "--format xlsx needs -o FILE (a workbook is not text for stdout)",
                )
                .into());
            }
            let style = CsvStyle {
                delimiter,
                bom: excel,
            };
            let filter = args.to_filter()?;
            let reg = ctx.registry_read()?;
            let pb = progress_bar(0, "export");
            pb.set_length(crate::store::inventory::approx_device_count(reg.reader())?);
            let mut tick = |n: u64| pb.set_position(n);
            let n = match &out {
                Some(path) => {
                    let mut w = OutFile::create(path, 0o644, &reg.files())?;
                    let n = inv::export::export_styled(
                        reg.reader(),
                        &filter,
                        format,
                        style,
                        &mut w,
                        &mut tick,
                    )?;
                    w.commit()?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
                    let n = inv::export::export_styled(
                        reg.reader(),
                        &filter,
                        format,
                        style,
                        &mut w,
                        &mut tick,
                    )?;
                    w.flush().context("writing to stdout")?;
                    n
                }
            };
            pb.finish_and_clear();
            if let Some(path) = &out {
                if ctx.json {
                    print_json(&serde_json::json!({
                        "file": path.display().to_string(),
                        "devices": n,
                    }))?;
                } else {
                    eprintln!("exported {n} devices to {}", path.display());
                }
            }
            Ok(0)
        }
    }
}

fn import_cmd(ctx: &Ctx, file: &std::path::Path, opts: &ImportOptions) -> anyhow::Result<i32> {
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let actor = ctx.actor(&config);
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let pb = progress_bar(len, "import");
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut obs = CliObserver {
        pb: pb.clone(),
        printed: 0,
        file: file.display().to_string(),
        say_delimiter: !ctx.json,
    };
    let s = inv::import(&mut reg, file, opts, &actor, &mut obs)?;
    pb.finish_and_clear();
    if opts.exclusive && !opts.dry_run && !s.exclusive {
        eprintln!("note: another process has the registry open; imported without --exclusive");
    }
    if obs.printed > PRINT_CAP {
        eprintln!(
            "… {} more rejected rows not shown{}",
            obs.printed - PRINT_CAP,
            s.errors_file
                .as_deref()
                .map(|f| format!(" (all are in {f})"))
                .unwrap_or_default()
        );
    }
    if ctx.json {
        print_json(&s)?;
    } else {
        write_summary(&mut std::io::stdout().lock(), &s)?;
    }
    if s.rejected == 0 {
        return Ok(0);
    }
    if opts.partial {
        return Ok(crate::error::exit::FAILED);
    }
    // Without --partial nothing was written: fail with the documented code.
    let all_conflicts = s.rejected_conflicts == s.rejected;
    let what = if all_conflicts {
        "conflict with the registry"
    } else {
        "are invalid"
    };
    let msg =
        format!(
        "{}: {} of {} rows {what}; nothing {} (fix them, or use --partial to import the other {})",
        s.file,
        s.rejected,
        s.rows,
        if s.dry_run { "would be written" } else { "was written" },
        s.rows - s.rejected
    );
    let err = if all_conflicts {
        Error::conflict(msg)
    } else {
        Error::input(msg)
    };
    Err(err.into())
}

/// The human summary of an import. Counts of what was not written say "would".
fn write_summary(out: &mut dyn Write, s: &import::ImportSummary) -> std::io::Result<()> {
    // Rows rejected without --partial: the counts are what would have happened.
    let not_written = !s.dry_run && !s.committed && s.rejected > 0 && !s.partial;
    let verb = if s.dry_run {
        "would be "
    } else if not_written {
        "would have been "
    } else {
        ""
    };
    let skipped = if s.skipped_empty_rows > 0 {
        format!(" ({} empty rows skipped)", s.skipped_empty_rows)
    } else {
        String::new()
    };
    writeln!(
        out,
        "{}{}: {} rows{skipped}: {}{} {verb}created, {} {verb}updated, {} unchanged, {} rejected",
        if s.dry_run { "dry run: " } else { "" },
        s.file,
        s.rows,
        if not_written { "nothing written: " } else { "" },
        s.created,
        s.updated,
        s.unchanged,
        s.rejected
    )?;
    if !s.updates.is_empty() {
        writeln!(out, "{}updated:", verb)?;
        import::write_updates(out, s)?;
    }
    if s.normalised > 0 {
        if s.dry_run {
            writeln!(out, "normalised:")?;
            for n in &s.normalisations {
                writeln!(
                    out,
                    "  line {}, {}: {} -> {}",
                    n.line,
                    n.column,
                    super::common::one_line(&format!("{:?}", n.from)),
                    super::common::one_line(&format!("{:?}", n.to))
                )?;
            }
            if s.normalisations_not_listed > 0 {
                writeln!(out, "  … and {} more", s.normalisations_not_listed)?;
            }
        } else {
            writeln!(
                out,
                "{} cells stored in canonical form (trimmed, IMEI digits, MAC aa:bb:…, currency and criticality case, cost zeros; --dry-run lists them)",
                s.normalised
            )?;
        }
    }
    if s.rejected == 0 && s.nothing_changed() {
        writeln!(
            out,
            "nothing to change: the registry already matches {}",
            s.file
        )?;
    } else if s.dry_run || !s.committed {
        writeln!(
            out,
            "{}nothing written",
            if s.dry_run { "dry run: " } else { "" }
        )?;
    } else if s.rejected > 0 {
        writeln!(
            out,
            "imported the good rows; {} rejected rows were not imported",
            s.rejected
        )?;
    }
    if let Some(f) = &s.errors_file {
        if s.rejected > 0 {
            writeln!(out, "rejected rows written to {f}")?;
        }
    }
    Ok(())
}
