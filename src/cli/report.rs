//! `cradle report …`: documents built from the registry.

use clap::Subcommand;

use super::common::Ctx;
use super::sanitization;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Certificate of sanitization for a device (NIST SP 800-88 Rev. 1 Appendix G fields)
    #[command(
        after_help = "Examples:\n  cradle report sanitization ACME-000001\n  cradle report sanitization ACME-000001 --format html -o ACME-000001.html\n  cradle --json report sanitization ACME-000001 | jq .sanitization"
    )]
    Sanitization(sanitization::SanitizationArgs),
}

pub fn run(ctx: &Ctx, cmd: ReportCommand) -> anyhow::Result<i32> {
    match cmd {
        ReportCommand::Sanitization(a) => sanitization::run(ctx, a),
    }
}
