//! Device configuration templates (`templates/config/NAME.toml` or `.json`, format in
//! cradle-config(5)): a document whose strings hold `{variable}` placeholders, filled
//! per device from the registry and from values the template declares, rendered as JSON
//! and written into the device's config place (cradle protocol: slot `config`;
//! MicroPython: a file) by `provision --config` and `device config`.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::pki::profile::{self, Tpl, Vars};
use crate::store::devices::Device;
use crate::store::{contact, Tx};

/// Largest template file read.
pub const MAX_TEMPLATE: u64 = 64 * 1024;
/// Largest rendered configuration: what a device's config slot or a board's RAM holds.
pub const MAX_RENDERED: usize = 16 * 1024;
/// Where a MicroPython board gets its configuration unless the template says otherwise.
pub const MICROPYTHON_PATH: &str = "/config.json";

/// The shipped example (copied into `HOME/templates/config` by `cradle init`).
pub const BUILTIN: &[(&str, &str)] = &[(
    "default",
    include_str!("../../templates/config/default.toml"),
)];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    description: Option<String>,
    micropython_path: Option<String>,
    #[serde(default)]
    values: serde_json::Map<String, serde_json::Value>,
    document: serde_json::Map<String, serde_json::Value>,
}

/// A checked configuration template.
#[derive(Debug, Clone)]
pub struct ConfigTemplate {
    pub name: String,
    /// Where it was read from, for messages.
    pub source: String,
    pub description: String,
    /// MicroPython: the file on the board.
    pub micropython_path: String,
    values: serde_json::Map<String, serde_json::Value>,
    document: serde_json::Map<String, serde_json::Value>,
}

/// A configuration rendered for one device.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub template: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Variables a config template may use besides those of profiles and its own values.
const EXTRA: &[&str] = &["firmware"];

impl ConfigTemplate {
    /// A `.toml`/`.json` path, or `HOME/templates/config/NAME.toml|json`, or a built-in.
    pub fn load(name: &str, templates_dir: Option<&Path>) -> Result<ConfigTemplate> {
        if name.ends_with(".toml") || name.ends_with(".json") || name.contains('/') {
            return Self::from_file(Path::new(name));
        }
        if let Some(dir) = templates_dir {
            for ext in ["toml", "json"] {
                let p = dir.join("config").join(format!("{name}.{ext}"));
                if p.exists() {
                    return Self::from_file(&p);
                }
            }
        }
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::input(format!(
                "no config template named '{name}' (templates/config/{name}.toml or .json; built in: default; or pass a path)"
            ))
        })?;
        Self::parse(name, &format!("templates/config/{name}.toml"), text, false)
    }

    pub fn from_file(path: &Path) -> Result<ConfigTemplate> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_TEMPLATE {
            return Err(Error::input(format!(
                "{}: {} bytes; a config template may hold at most {MAX_TEMPLATE}",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let json = path.extension().is_some_and(|e| e == "json");
        Self::parse(&name, &path.display().to_string(), &text, json)
    }

    /// Parses and checks a template: known placeholders, closed braces, a JSON-able
    /// document.
    pub fn parse(name: &str, source: &str, text: &str, json: bool) -> Result<ConfigTemplate> {
        let raw: Raw = if json {
            serde_json::from_str(text).map_err(|e| {
                Error::input_at(source, e.line(), format!("not a config template: {e}"))
            })?
        } else {
            toml::from_str(text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                    .unwrap_or(0);
                Error::input_at(
                    source,
                    line,
                    format!("not a config template: {}", e.message()),
                )
            })?
        };
        let mp = raw
            .micropython_path
            .unwrap_or_else(|| MICROPYTHON_PATH.into());
        crate::device::micropython::check_board_path("micropython_path", &mp)
            .map_err(|e| Error::input(format!("{source}: {e}")))?;
        for k in raw.values.keys() {
            if profile::VARIABLES.contains(&k.as_str()) || EXTRA.contains(&k.as_str()) {
                return Err(Error::input(format!(
                    "{source}: values.{k}: '{k}' is a registry variable; a template value needs another name"
                )));
            }
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::input(format!(
                    "{source}: values.{k}: a value name is letters, digits and '_'"
                )));
            }
        }
        let t = ConfigTemplate {
            name: name.to_string(),
            source: source.to_string(),
            description: raw.description.unwrap_or_default(),
            micropython_path: mp,
            values: raw.values,
            document: raw.document,
        };
        let doc = serde_json::Value::Object(t.document.clone());
        t.check(&doc, "document")?;
        for (k, v) in &t.values {
            t.check(v, &format!("values.{k}"))?;
        }
        Ok(t)
    }

    fn known(&self, name: &str) -> bool {
        profile::VARIABLES.contains(&name)
            || EXTRA.contains(&name)
            || self.values.contains_key(name)
            || name.strip_prefix("attr.").is_some_and(|a| {
                !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    }

    /// Checks every string under `v` (at key path `at`).
    fn check(&self, v: &serde_json::Value, at: &str) -> Result<()> {
        match v {
            serde_json::Value::String(s) => {
                if !profile::braces_balanced(s) {
                    return Err(Error::input(format!(
                        "{}: {at}: unclosed or unbalanced brace in \"{s}\" (write {{{{ and }}}} for literal braces)",
                        self.source
                    )));
                }
                for (name, _) in profile::placeholders(s) {
                    if !self.known(&name) {
                        return Err(Error::input(format!(
                            "{}: {at}: unknown placeholder '{{{name}}}' (known: {}, firmware, attr.NAME, and the template's [values]{})",
                            self.source,
                            profile::VARIABLES.join(", "),
                            if self.values.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    ": {}",
                                    self.values.keys().cloned().collect::<Vec<_>>().join(", ")
                                )
                            }
                        )));
                    }
                }
                Ok(())
            }
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, x)| self.check(x, &format!("{at}[{i}]"))),
            serde_json::Value::Object(m) => m
                .iter()
                .try_for_each(|(k, x)| self.check(x, &format!("{at}.{k}"))),
            _ => Ok(()),
        }
    }

    /// Renders the document for `device` (its firmware as recorded): JSON, keys in
    /// template order, one trailing newline.
    pub fn render(&self, device: &Device, org: &str, firmware: Option<&str>) -> Result<Rendered> {
        let mut vars: Vars = crate::app::identity::vars_for(device, org, "", "");
        vars.remove("ca_name");
        vars.remove("profile");
        if let Some(fw) = firmware {
            vars.insert("firmware".into(), fw.into());
        }
        for (k, v) in &self.values {
            if let serde_json::Value::String(s) = v {
                // A declared value may itself use registry variables.
                let filled = self.fill(s, &vars, &format!("values.{k}"), &device.serial)?;
                vars.insert(k.clone(), filled.unwrap_or_default());
            } else {
                vars.insert(k.clone(), v.to_string());
            }
        }
        let doc = self.fill_value(
            &serde_json::Value::Object(self.document.clone()),
            &vars,
            "document",
            &device.serial,
        )?;
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Error::Internal(format!("config as JSON: {e}")))?;
        bytes.push(b'\n');
        if bytes.len() > MAX_RENDERED {
            return Err(Error::input(format!(
                "{}: the configuration rendered for {} is {} bytes; at most {MAX_RENDERED} fit a device's config place",
                self.source,
                device.serial,
                bytes.len()
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Rendered {
            template: self.name.clone(),
            bytes,
            sha256,
        })
    }

    fn fill(&self, s: &str, vars: &Vars, at: &str, serial: &str) -> Result<Option<String>> {
        let t = Tpl {
            raw: s.to_string(),
            line: 0,
        };
        t.fill(vars).map_err(|name| {
            Error::input(format!(
                "{}: {at}: '{{{name}}}' has no value for device {serial} (set it in the registry, or write {{{name}?}})",
                self.source
            ))
        })
    }

    fn fill_value(
        &self,
        v: &serde_json::Value,
        vars: &Vars,
        at: &str,
        serial: &str,
    ) -> Result<serde_json::Value> {
        use serde_json::Value as V;
        Ok(match v {
            V::String(s) => {
                // Exactly one placeholder naming a typed value keeps its type (a number
                // stays a number).
                let whole = s
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .filter(|n| !n.contains(['{', '}']));
                if let Some(typed) = whole
                    .and_then(|n| self.values.get(n))
                    .filter(|x| !x.is_string())
                {
                    return Ok(typed.clone());
                }
                match self.fill(s, vars, at, serial)? {
                    Some(x) => V::String(x),
                    None => V::Null,
                }
            }
            V::Array(a) => V::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| self.fill_value(x, vars, &format!("{at}[{i}]"), serial))
                    .collect::<Result<_>>()?,
            ),
            V::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, x) in m {
                    out.insert(
                        k.clone(),
                        self.fill_value(x, vars, &format!("{at}.{k}"), serial)?,
                    );
                }
                V::Object(out)
            }
            other => other.clone(),
        })
    }
}

/// Records that device `device_id` holds `r` (read back by hash) in its config place.
#[allow(clippy::too_many_arguments)]
pub fn record_written(
    tx: &Tx<'_>,
    device_id: i64,
    r: &Rendered,
    place: &str,
    via: &str,
    port: &str,
    actor: &Actor,
    now: &str,
) -> Result<()> {
    let before = contact::contact(tx, device_id)?;
    contact::set_config(tx, device_id, &r.template, &r.sha256, now)?;
    tx.event(
        EventKind::ConfigWritten,
        Some(device_id),
        actor,
        serde_json::json!({
            "template": r.template, "sha256": r.sha256, "bytes": r.bytes.len(),
            "place": place, "via": via, "port": port,
            "previous_sha256": before.config_sha256,
        }),
        now,
    )?;
    Ok(())
}

/// What `device config` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub serial: String,
    pub template: String,
    pub sha256: String,
    pub bytes: usize,
    /// Where on the device it went (`slot config`, a file path).
    pub place: String,
    /// The device held a configuration with the same hash before.
    pub unchanged: bool,
    pub firmware: String,
}

/// `device config`: re-writes device `serial`'s configuration over `link` (the device
/// on the port must be the registered one), reads it back by hash and records it as a
/// `config.written` event (and the contact, with the firmware it reports).
#[allow(clippy::too_many_arguments)]
pub fn rewrite(
    reg: &mut crate::store::Store,
    serial: &str,
    link: &mut dyn crate::device::DeviceLink,
    t: &ConfigTemplate,
    org: &str,
    actor: &Actor,
    port: &str,
) -> Result<Outcome> {
    use crate::store::devices::{require_device, DeviceStatus};
    let device = require_device(reg.reader(), serial)?;
    if matches!(
        device.status,
        DeviceStatus::Retired | DeviceStatus::Decommissioned
    ) {
        return Err(Error::conflict(format!(
            "device {serial} is {}; its configuration is no longer kept",
            device.status
        )));
    }
    let expected = device.hardware_id.clone().ok_or_else(|| {
        Error::Device(format!(
            "device '{serial}' has no registered hardware id, so cradle cannot tell whether the right device is on {port}"
        ))
    })?;
    let ident = link.identify()?;
    if ident.hardware_id != expected {
        return Err(Error::Device(format!(
            "wrong device on {port}: expected '{serial}' (hardware id {expected}), found hardware id {}",
            ident.hardware_id
        )));
    }
    // Rendered before anything is written.
    let r = t.render(&device, org, Some(&ident.firmware))?;
    {
        let now = crate::store::now_rfc3339();
        let tx = reg.write()?;
        crate::app::firmware::record_contact(
            &tx,
            device.id,
            &ident.firmware,
            "device config",
            port,
            actor,
            &now,
        )?;
        tx.commit()?;
    }
    let place = link.write_config(&crate::device::ConfigBlob {
        data: &r.bytes,
        micropython_path: &t.micropython_path,
    })?;
    let before = contact::contact(reg.reader(), device.id)?;
    let now = crate::store::now_rfc3339();
    let tx = reg.write()?;
    record_written(
        &tx,
        device.id,
        &r,
        &place,
        "device config",
        port,
        actor,
        &now,
    )?;
    tx.commit()?;
    Ok(Outcome {
        serial: device.serial,
        template: r.template.clone(),
        sha256: r.sha256.clone(),
        bytes: r.bytes.len(),
        place,
        unchanged: before.config_sha256.as_deref() == Some(r.sha256.as_str()),
        firmware: ident.firmware,
    })
}

/// Writes the editable copies of the built-in config templates into `dir`.
pub fn install_builtins(dir: &Path) -> Result<()> {
    crate::app::label::template::install_files(dir, BUILTIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device {
            id: 1,
            serial: "ACME-1".into(),
            hardware_id: Some("HW".into()),
            model: Some("m1".into()),
            hw_rev: None,
            batch: None,
            site: Some("berlin".into()),
            location: None,
            owner: None,
            mac: None,
            imei: None,
            status: crate::store::DeviceStatus::Registered,
            notes: None,
            purchase_date: None,
            warranty_until: None,
            cost: None,
            currency: None,
            supplier: None,
            criticality: None,
            end_of_life: None,
            attributes: Default::default(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn builtin_renders_with_typed_values() {
        let t = ConfigTemplate::load("default", None).unwrap();
        let r = t.render(&dev(), "Acme", Some("1.0")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
        assert_eq!(v["device_id"], "ACME-1");
        assert_eq!(v["site"], "berlin");
        assert!(v["telemetry"]["interval_s"].is_number(), "{v}");
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&r.bytes)));
    }

    #[test]
    fn bad_templates_are_one_error() {
        let e = ConfigTemplate::parse("x", "x.toml", "[document]\na = \"{nope}\"\n", false)
            .unwrap_err();
        assert!(
            e.to_string().contains("unknown placeholder '{nope}'"),
            "{e}"
        );
        let e = ConfigTemplate::parse("x", "x.toml", "[document]\na = \"{serial\"\n", false)
            .unwrap_err();
        assert!(e.to_string().contains("unclosed"), "{e}");
        assert_eq!(e.exit_code(), 3);
    }
}
