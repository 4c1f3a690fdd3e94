//! `cradle registry`: the registry as a whole. `copy --to` moves it between backends
//! (a SQLite file, a PostgreSQL database) and verifies it on arrival (issue 14).

use std::path::PathBuf;

use super::common::{print_json, progress_bar, Ctx};
use crate::store::copy::{self, Target};

#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Copy the whole registry into an empty PostgreSQL database or a new SQLite file, verified on arrival
    #[command(after_help = COPY_AFTER_HELP)]
    Copy(CopyArgs),
}

pub const COPY_AFTER_HELP: &str = "\
Copies every table of this home's registry (SQLite file or PostgreSQL) in one target
transaction, ids preserved: into an existing, empty PostgreSQL database (a non-empty
one is refused, exit 7), or into a SQLite file that must not exist (the home's log.key
is written beside it, 0600). Before COMMIT the copy is read back on the target: the
event chain must verify with the source's head (keyed by this home's log key) and every
device row's mark must verify; otherwise nothing is kept (exit 4). A source whose chain
is broken or whose device marks do not verify is refused (exit 4). Rows whose values
the target spells differently (JSON re-serialised by jsonb) are re-marked with the same
key, and a devices.marked event in the copy says so.

To switch a home to the copy: PostgreSQL, set registry = \"URL\" in config.toml (or pass
--registry URL); SQLite, copy to HOME/registry.db of a home without a registry entry.

Examples:
  cradle registry copy --to postgresql://cradle@db.factory:5432/cradle
  cradle --registry postgresql://cradle@db.factory/cradle registry copy --to /srv/back/registry.db
  cradle --json registry copy --to postgresql://cradle@db.factory/cradle";

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Where to: a postgresql:// URL of an empty database, or the path of a new SQLite file
    #[arg(long, value_name = "URL|FILE")]
    to: String,
}

pub fn run(ctx: &Ctx, c: RegistryCommand) -> anyhow::Result<i32> {
    match c {
        RegistryCommand::Copy(a) => run_copy(ctx, a),
    }
}

fn run_copy(ctx: &Ctx, a: CopyArgs) -> anyhow::Result<i32> {
    let target = if crate::store::pgurl::is_url(&a.to) {
        Target::Pg {
            target: Box::new(crate::store::pgurl::PgTarget::parse(&a.to)?),
            timeout: ctx.registry_timeout,
        }
    } else {
        Target::File(PathBuf::from(&a.to))
    };
    // The copy only reads its source: a read-only registry file can be copied too.
    let source = ctx.registry_read()?;
    let config = ctx.config()?;
    let actor = ctx.actor(&config);
    // Hidden unless stderr is a terminal (progress_bar).
    let pb = progress_bar(0, "copy");
    let r = copy::copy(&source, &target, &actor, &mut |table, done, total| {
        pb.set_length(total);
        pb.set_position(done);
        if !table.is_empty() {
            pb.set_message(table.to_string());
        }
    });
    pb.finish_and_clear();
    let r = r?;
    if ctx.json {
        print_json(&r)?;
        return Ok(0);
    }
    // Written, not println!: a closed pipe (`| head`) is an error main() treats as such.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "copied {} rows in {} tables from {} to {}",
        r.rows,
        r.tables.len(),
        r.source,
        r.target
    )?;
    for t in &r.tables {
        writeln!(out, "  {:<16} {:>9}", t.table, t.rows)?;
    }
    writeln!(
        out,
        "event chain verified in the copy: {} events, head {} {}",
        r.events, r.head_id, r.head_hash
    )?;
    if r.remarked > 0 {
        writeln!(
            out,
            "device marks verified: {} rows, {} re-marked over the values as the target returns them (event devices.marked)",
            r.devices_checked, r.remarked
        )?;
    } else {
        writeln!(out, "device marks verified: {} rows", r.devices_checked)?;
    }
    if let Some(k) = &r.log_key_written {
        writeln!(out, "log key written beside the copy: {k} (0600)")?;
    }
    Ok(0)
}
