//! `cradle report …`: documents for people.

use std::path::PathBuf;

use clap::Subcommand;

use super::common::{print_json, Ctx};
use super::sanitization;
use crate::app::audit::{report, Options};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// One self-contained HTML page: states, sites, batches, models, expiry, assets, findings, decommissions
    #[command(
        after_help = "The page has inline CSS and inline SVG charts: no scripts, nothing fetched, so\nit can be mailed or archived as evidence. Charts: certificate expiry per month and per\nyear, firmware versions per model, warranties ending per quarter, cost per site and per\nbatch (per currency, exact sums) and the age of the fleet (from purchase_date, else\nregistration); each is a <figure data-chart=ID> with its numbers in data-* attributes,\nand one without data says so (data-empty=\"true\"). --json prints the same numbers.\n\nExamples:\n  cradle report fleet -o fleet.html\n  cradle report fleet --skip cert-not-chained -o fleet.html   # faster on large fleets\n  cradle --json report fleet | jq .by_state"
    )]
    Fleet(FleetArgs),
    /// Certificate of sanitization for a device (NIST SP 800-88 Rev. 1 Appendix G fields)
    #[command(
        after_help = "Examples:\n  cradle report sanitization ACME-000001\n  cradle report sanitization ACME-000001 --format html -o ACME-000001.html\n  cradle --json report sanitization ACME-000001 | jq .sanitization"
    )]
    Sanitization(sanitization::SanitizationArgs),
}

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Write the HTML to FILE (default: stdout)
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Count certificates expiring within DAYS as "expiring"
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub expiring_within: u32,
    /// Leave this audit check out of the findings (repeatable)
    #[arg(long = "skip", value_name = "ID", value_parser = clap::builder::PossibleValuesParser::new(crate::app::audit::check_ids()), hide_possible_values = true)]
    pub skip: Vec<String>,
    /// Audit threshold for stuck devices, in days
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub stuck_after: u32,
}

pub fn run(ctx: &Ctx, cmd: ReportCommand) -> anyhow::Result<i32> {
    match cmd {
        ReportCommand::Fleet(a) => fleet(ctx, a),
        ReportCommand::Sanitization(a) => sanitization::run(ctx, a),
    }
}

fn fleet(ctx: &Ctx, a: FleetArgs) -> anyhow::Result<i32> {
    let reg = ctx.registry_read()?;
    let mut opts = Options::new(time::OffsetDateTime::now_utc().unix_timestamp());
    opts.expiring_within_days = a.expiring_within;
    opts.stuck_after_days = a.stuck_after;
    if !a.skip.is_empty() {
        opts.checks = crate::app::audit::check_ids()
            .into_iter()
            .filter(|c| !a.skip.iter().any(|s| s == c))
            .map(String::from)
            .collect();
        if opts.checks.is_empty() {
            return Err(crate::Error::input("--skip leaves no check to run").into());
        }
    }
    let fleet = report::build(reg.reader(), &reg.path().display().to_string(), &opts)?;
    if ctx.json {
        print_json(&fleet)?;
        if a.out.is_none() {
            return Ok(0);
        }
    }
    let html = report::render_html(&fleet);
    match &a.out {
        Some(path) => {
            crate::outfile::write_file_atomic(path, html.as_bytes(), 0o644, true)?;
            if !ctx.json {
                eprintln!(
                    "wrote {} ({} devices, {} findings)",
                    path.display(),
                    fleet.devices,
                    fleet.audit.findings
                );
            }
        }
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(html.as_bytes())?;
        }
    }
    Ok(0)
}
