//! The cradle home directory: where the registry, the CA and the config live.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const REGISTRY_FILE: &str = "registry.db";
pub const CONFIG_FILE: &str = "config.toml";
pub const CA_DIR: &str = "ca";
pub const TEMPLATES_DIR: &str = "templates";

/// Settings kept in `config.toml` under the home directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Station name recorded on every event this home writes.
    pub station: String,
    /// Organisation name used by the shipped profiles (`{org?}`); empty leaves O out.
    pub org: String,
    /// Profile used by `identity issue` when `--profile` is not given.
    pub default_profile: String,
    /// Where the CRL is rewritten after every revocation (relative to home).
    pub crl_path: String,
    /// Days between thisUpdate and nextUpdate of an issued CRL.
    pub crl_next_update_days: u32,
    /// Directory of pre-signed OCSP responses (relative to home) that every CRL issue
    /// refreshes for the certificates revoked since; empty: none.
    pub ocsp_dir: String,
    /// A PostgreSQL registry URL (no password); empty: the home's registry.db.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub registry: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            station: default_station(),
            org: String::new(),
            default_profile: "device".into(),
            crl_path: "ca/crl.pem".into(),
            crl_next_update_days: 7,
            ocsp_dir: String::new(),
            registry: String::new(),
        }
    }
}

fn default_station() -> String {
    fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "station".into())
}

/// Resolved paths of one home directory.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `--home`, else `CRADLE_HOME` (clap fills both into `explicit`), else the per-user data dir.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home> {
        let root = match explicit {
            Some(p) => p.to_path_buf(),
            None => dirs::data_dir()
                .map(|d| d.join("cradle"))
                .ok_or_else(|| Error::input("no home directory: pass --home or set CRADLE_HOME"))?,
        };
        Ok(Home { root })
    }

    pub fn registry_path(&self) -> PathBuf {
        self.root.join(REGISTRY_FILE)
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join(CA_DIR)
    }
    pub fn templates_dir(&self) -> PathBuf {
        self.root.join(TEMPLATES_DIR)
    }

    pub fn is_initialised(&self) -> bool {
        self.registry_path().exists()
    }

    /// Fails with a clear message when `cradle init` has not been run here.
    pub fn require_initialised(&self) -> Result<()> {
        if self.is_initialised() {
            Ok(())
        } else {
            Err(Error::NotInitialised(format!(
                "{} is not a cradle home (no {}): run `cradle init` first",
                self.root.display(),
                REGISTRY_FILE
            )))
        }
    }

    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        match fs::read_to_string(&path) {
            Ok(text) => parse_config(&path.display().to_string(), &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The station name for events: `CRADLE_STATION` overrides the config.
    pub fn station(&self, config: &Config) -> String {
        std::env::var("CRADLE_STATION")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| config.station.clone())
    }
}

/// Parses `config.toml` text; the error names `source` and the line.
pub fn parse_config(source: &str, text: &str) -> Result<Config> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .unwrap_or(1);
        Error::input_at(source, line, e.message().to_string())
    })
}

/// The operator recorded on events: `CRADLE_OPERATOR`, else the login name.
pub fn operator() -> String {
    ["CRADLE_OPERATOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}
