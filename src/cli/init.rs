//! `cradle init`: create a home directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use serde::Serialize;

use super::common::{print_json, Ctx};
use crate::error::Error;
use crate::home::Config;
use crate::model::EventKind;
use crate::pki::profile;
use crate::store::{now_rfc3339, Store};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Station name recorded on events (default: host name)
    #[arg(long)]
    station: Option<String>,
    /// Organisation name used in certificate subjects
    #[arg(long, default_value = "cradle")]
    org: String,
}

#[derive(Serialize)]
struct InitOut {
    home: String,
    registry: String,
    station: String,
}

pub fn run(ctx: &Ctx, a: InitArgs) -> anyhow::Result<i32> {
    let home = &ctx.home;
    if home.is_initialised() || home.config_path().exists() {
        return Err(Error::conflict(format!(
            "{} is already a cradle home; refusing to overwrite it",
            home.root.display()
        ))
        .into());
    }
    let created_root = !home.root.exists();
    let result = (|| -> anyhow::Result<InitOut> {
        fs::create_dir_all(&home.root).map_err(|e| Error::io(&home.root, e))?;
        if created_root {
            fs::set_permissions(&home.root, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(&home.root, e))?;
        }
        let ca = home.ca_dir();
        fs::create_dir_all(&ca).map_err(|e| Error::io(&ca, e))?;
        fs::set_permissions(&ca, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&ca, e))?;
        let t = home.templates_dir();
        fs::create_dir_all(&t).map_err(|e| Error::io(&t, e))?;
        profile::install_builtins(&t)?;
        let mut config = Config {
            org: a.org.clone(),
            ..Config::default()
        };
        if let Some(s) = &a.station {
            config.station = s.clone();
        }
        let text = toml::to_string_pretty(&config).context("writing config")?;
        let header = "# cradle home configuration (see cradle(1))\n";
        fs::write(home.config_path(), format!("{header}{text}"))
            .map_err(|e| Error::io(home.config_path(), e))?;
        let mut reg = Store::create(&home.registry_path())?;
        let station = home.station(&config);
        let tx = reg.write()?;
        let actor = crate::model::Actor {
            operator: crate::home::operator(),
            station: station.clone(),
        };
        tx.event(
            EventKind::HomeInitialised,
            None,
            &actor,
            serde_json::json!({"org": config.org}),
            &now_rfc3339(),
        )?;
        tx.commit()?;
        Ok(InitOut {
            home: home.root.display().to_string(),
            registry: home.registry_path().display().to_string(),
            station,
        })
    })();
    match result {
        Ok(out) => {
            if ctx.json {
                print_json(&out)?;
            } else {
                println!("initialised cradle home {}", out.home);
                println!("next: cradle ca init --name NAME");
            }
            Ok(0)
        }
        Err(e) => {
            // Leave nothing half-made behind.
            if created_root {
                let _ = fs::remove_dir_all(&home.root);
            } else {
                for p in [home.registry_path(), home.config_path()] {
                    let _ = fs::remove_file(p);
                }
            }
            Err(e)
        }
    }
}
