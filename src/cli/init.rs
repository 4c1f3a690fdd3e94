//! `cradle init`: create a home directory.

use super::common::{print_json, Ctx};

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
    let out = crate::app::home::create(&ctx.home, &a.org, a.station.as_deref())?;
    if ctx.json {
        print_json(&out)?;
    } else {
        println!("initialised cradle home {}", out.home);
        println!("next: cradle ca init --name NAME");
    }
    Ok(0)
}
