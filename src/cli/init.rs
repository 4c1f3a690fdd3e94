//! `cradle init`: create a home directory, with its registry in it (SQLite) or on a
//! PostgreSQL server (`--registry URL`, recorded in config.toml); `--join` makes a
//! second station's home on an existing PostgreSQL registry.

use std::path::PathBuf;

use super::common::{print_json, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Station name recorded on events (default: host name)
    #[arg(long)]
    station: Option<String>,
    /// Organisation name for certificate subjects (O=); without it, subjects carry no O
    #[arg(long, default_value = "")]
    org: String,
    /// Join the existing PostgreSQL registry of --registry as another station (needs --log-key)
    #[arg(long, requires = "log_key")]
    join: bool,
    /// With --join: the log.key of the station that initialised the registry (copied, 0600)
    #[arg(long, value_name = "FILE", requires = "join")]
    log_key: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, a: InitArgs) -> anyhow::Result<i32> {
    use crate::app::home::{create_with, NewRegistry};
    let backend = ctx.backend()?;
    let out = match (backend, &a.log_key) {
        (Backend::File, None) => {
            create_with(&ctx.home, &a.org, a.station.as_deref(), NewRegistry::File)?
        }
        (Backend::File, Some(_)) => {
            return Err(crate::error::Error::usage(
                "init --join: joins a PostgreSQL registry; give its URL with --registry URL",
            )
            .into())
        }
        (Backend::Postgres(t), None) => create_with(
            &ctx.home,
            &a.org,
            a.station.as_deref(),
            NewRegistry::Postgres(&t, ctx.registry_timeout),
        )?,
        (Backend::Postgres(t), Some(key)) => {
            refuse_readable_key(key)?;
            create_with(
                &ctx.home,
                &a.org,
                a.station.as_deref(),
                NewRegistry::Join(&t, ctx.registry_timeout, key),
            )?
        }
    };
    if ctx.json {
        print_json(&out)?;
    } else if a.join {
        println!(
            "initialised cradle home {} on the registry {} (joined as station {})",
            out.home, out.registry, out.station
        );
        println!("next: copy the CA folder (ca/) of the first station here, unless its keys are on an HSM");
    } else {
        println!("initialised cradle home {}", out.home);
        println!("next: cradle ca init --name NAME");
    }
    Ok(0)
}

/// The log key is the secret that keys the chain: one group or others may read (or a
/// file that is not there) is refused before anything is made.
fn refuse_readable_key(key: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key).map_err(|e| crate::error::Error::io(key, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(crate::error::Error::input(format!(
            "log key {}: group or others may read it; chmod 600 it first (it keys the registry's whole history)",
            key.display()
        ))
        .into());
    }
    Ok(())
}
