//! `cradle init`: create a home directory, with its registry in it (SQLite) or on a
//! PostgreSQL server (`--registry URL`, recorded in config.toml).

use super::common::{print_json, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Station name recorded on events (default: host name)
    #[arg(long)]
    station: Option<String>,
    /// Organisation name for certificate subjects (O=); without it, subjects carry no O
    #[arg(long, default_value = "")]
    org: String,
}

pub fn run(ctx: &Ctx, a: InitArgs) -> anyhow::Result<i32> {
    use crate::app::home::{create_with, NewRegistry};
    let out = match ctx.backend()? {
        Backend::File => create_with(&ctx.home, &a.org, a.station.as_deref(), NewRegistry::File)?,
        Backend::Postgres(t) => create_with(
            &ctx.home,
            &a.org,
            a.station.as_deref(),
            NewRegistry::Postgres(&t, ctx.registry_timeout),
        )?,
    };
    if ctx.json {
        print_json(&out)?;
    } else {
        println!("initialised cradle home {}", out.home);
        println!("next: cradle ca init --name NAME");
    }
    Ok(0)
}
