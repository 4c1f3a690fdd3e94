//! Creating a cradle home: directories (0700), built-in profiles, config, a new
//! registry and its first event, all or nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::home::{Config, Home};
use crate::model::{Actor, EventKind};
use crate::outfile::StagedFiles;
use crate::pki::profile;
use crate::store::pg::PgStore;
use crate::store::pgurl::PgTarget;
use crate::store::{now_rfc3339, Store};

#[derive(Debug, Serialize)]
pub struct Created {
    pub home: String,
    pub registry: String,
    pub station: String,
}

/// Where `create` puts the registry.
pub enum NewRegistry<'a> {
    /// The home's registry.db.
    File,
    /// An empty PostgreSQL database (recorded in config.toml), with how long to wait
    /// for its server.
    Postgres(&'a PgTarget, std::time::Duration),
    /// An existing PostgreSQL registry another station made (`init --join`), with the
    /// log key file copied from that station's home.
    Join(&'a PgTarget, std::time::Duration, &'a std::path::Path),
}

/// Creates the home; refuses an existing one, and removes what it made if any
/// step fails.
pub fn create(home: &Home, org: &str, station: Option<&str>) -> Result<Created> {
    create_with(home, org, station, NewRegistry::File)
}

/// `create` with the registry chosen. A PostgreSQL registry gets its schema and first
/// event in one transaction, so a failure leaves the database as empty as it was.
pub fn create_with(
    home: &Home,
    org: &str,
    station: Option<&str>,
    registry: NewRegistry<'_>,
) -> Result<Created> {
    if home.is_initialised() || home.config_path().exists() {
        return Err(Error::conflict(format!(
            "{} is already a cradle home; refusing to overwrite it",
            home.root.display()
        )));
    }
    // Everything made here is staged, so a failed step leaves nothing half-made.
    let mut staged = StagedFiles::new();
    if !home.root.exists() {
        fs::create_dir_all(&home.root).map_err(|e| Error::io(&home.root, e))?;
        staged.add_tree(&home.root);
        fs::set_permissions(&home.root, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(&home.root, e))?;
    }
    let ca = home.ca_dir();
    fs::create_dir_all(&ca).map_err(|e| Error::io(&ca, e))?;
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(&ca, e))?;
    let t = home.templates_dir();
    fs::create_dir_all(&t).map_err(|e| Error::io(&t, e))?;
    profile::install_builtins(&t)?;
    crate::app::label::template::install_builtins(&t.join("labels"))?;
    crate::app::config::install_builtins(&t.join("config"))?;
    let mut config = Config {
        org: org.to_string(),
        ..Config::default()
    };
    if let Some(s) = station {
        config.station = s.to_string();
    }
    if let NewRegistry::Postgres(t, _) | NewRegistry::Join(t, _, _) = &registry {
        config.registry = t.url.clone();
    }
    let text = toml::to_string_pretty(&config)
        .map_err(|e| Error::Internal(format!("writing config: {e}")))?;
    let header = "# cradle home configuration (see cradle(1))\n";
    // Neither existed (checked above), so removing them on failure removes only ours.
    staged.add(home.config_path());
    fs::write(home.config_path(), format!("{header}{text}"))
        .map_err(|e| Error::io(home.config_path(), e))?;
    let station = home.station(&config);
    let actor = Actor {
        operator: crate::home::operator(),
        station: station.clone(),
    };
    // In the keyed log, so that removing the registry's record that its device
    // rows are marked (meta) cannot make them pass for rows from before marks.
    let details = serde_json::json!({"org": config.org, "device_marks": true});
    let registry = match registry {
        NewRegistry::File => {
            staged.add(home.registry_path());
            // The first event creates the log key beside the registry (see store::logkey).
            staged.add(crate::store::logkey::key_path(&home.registry_path()));
            let mut reg = Store::create(&home.registry_path())?;
            let tx = reg.write()?;
            tx.event(
                EventKind::HomeInitialised,
                None,
                &actor,
                details,
                &now_rfc3339(),
            )?;
            tx.commit()?;
            home.registry_path().display().to_string()
        }
        NewRegistry::Postgres(target, timeout) => {
            // The log key stays in the home, out of the database.
            let key = home.root.join(crate::store::logkey::LOG_KEY_FILE);
            if key.exists() {
                return Err(Error::conflict(format!(
                    "{} already exists; refusing to start a new chain with an old key",
                    key.display()
                )));
            }
            staged.add(key.clone());
            PgStore::create_with_event(
                target,
                timeout,
                &key,
                (EventKind::HomeInitialised, &actor, details, &now_rfc3339()),
            )?;
            target.url.clone()
        }
        NewRegistry::Join(target, timeout, given_key) => {
            let key = home.root.join(crate::store::logkey::LOG_KEY_FILE);
            if key.exists() {
                return Err(Error::conflict(format!(
                    "{} already exists; refusing to replace a log key",
                    key.display()
                )));
            }
            // The given key must verify the registry's chain before it is kept.
            PgStore::join(target, timeout, given_key)?;
            staged.add(key.clone());
            crate::store::copy::copy_key(given_key, &key)?;
            // This station's home, recorded in the shared chain (keyed, so the new
            // station's key is proven by its first append).
            let details =
                serde_json::json!({"org": config.org, "device_marks": true, "joined": true});
            PgStore::open(target, timeout, &key)?.event(
                EventKind::HomeInitialised,
                None,
                &actor,
                details,
                &now_rfc3339(),
            )?;
            target.url.clone()
        }
    };
    staged.keep();
    Ok(Created {
        home: home.root.display().to_string(),
        registry,
        station,
    })
}
