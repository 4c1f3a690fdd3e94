//! Single-device edits and lifecycle moves: `device set`, `deploy`, `maintenance`,
//! `return`. Each runs in one transaction and records events (field changes as
//! `device.updated`, state changes through `lifecycle::transition`).

use serde::Serialize;

use super::cell::CLEAR;
use super::fields::{self, Field, ATTR_PREFIX};
use super::import::Change;
use crate::app::lifecycle;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::store::devices::{require_device, Device, DeviceStatus};
use crate::store::inventory::update_device_fields;
use crate::store::{now_rfc3339, Store};

/// One `FIELD=VALUE` assignment. An empty value or `<clear>` clears the field.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub field: String,
    pub value: String,
}

impl std::str::FromStr for Assignment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (f, v) = s.split_once('=').ok_or_else(|| {
            Error::input(format!(
                "'{s}' is not FIELD=VALUE (fields: {}, attr.NAME)",
                editable()
            ))
        })?;
        Ok(Assignment {
            field: f.trim().to_string(),
            value: v.to_string(),
        })
    }
}

fn editable() -> String {
    Field::ALL
        .iter()
        .filter(|f| **f != Field::Serial)
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Serialize)]
pub struct EditOutcome {
    pub serial: String,
    pub status: DeviceStatus,
    pub changes: Vec<Change>,
    /// True when the state change needed --force.
    pub forced: bool,
    /// The maintenance-log entry recorded with the move (`app::maintenance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged: Option<serde_json::Value>,
}

/// A maintenance-log event to record in the same transaction as a lifecycle move:
/// always when the device moved, otherwise only when `details` says something.
pub struct LogEvent {
    pub kind: EventKind,
    pub details: serde_json::Map<String, serde_json::Value>,
}

enum Target {
    Field(Field, Option<String>),
    Attr(String, Option<String>),
    Status(DeviceStatus),
    /// `firmware=VERSION`: an update done elsewhere (kept apart from the inventory fields).
    Firmware(String),
}

fn parse_assignment(a: &Assignment) -> Result<Target> {
    let clear = a.value.is_empty() || a.value == CLEAR;
    let bad = |m: String| Error::input(format!("{}: {m}", a.field));
    if let Some(name) = a.field.strip_prefix(ATTR_PREFIX) {
        fields::check_attr_name(name).map_err(bad)?;
        if clear {
            return Ok(Target::Attr(name.to_string(), None));
        }
        fields::check_attr_value(&a.value).map_err(bad)?;
        return Ok(Target::Attr(name.to_string(), Some(a.value.clone())));
    }
    if a.field == "firmware" {
        if clear {
            return Err(Error::input(
                "firmware cannot be cleared (its trail is in the event log); set the version the device runs",
            ));
        }
        let v = crate::app::firmware::check_firmware(&a.value).map_err(bad)?;
        return Ok(Target::Firmware(v));
    }
    let f = Field::parse(&a.field).ok_or_else(|| {
        Error::input(format!(
            "unknown field '{}' (fields: {}, firmware, attr.NAME)",
            a.field,
            editable()
        ))
    })?;
    match f {
        Field::Serial => Err(Error::input(
            "the serial cannot be changed (it identifies the device and its certificates)",
        )),
        Field::Status => {
            if clear {
                return Err(Error::input("status cannot be cleared"));
            }
            Ok(Target::Status(a.value.parse()?))
        }
        _ if clear => Ok(Target::Field(f, None)),
        _ => {
            let v = f.check(&a.value).map_err(bad)?;
            Ok(Target::Field(f, Some(v.into_owned())))
        }
    }
}

/// Applies field assignments and an optional state change to one device.
pub fn edit(
    reg: &mut Store,
    serial: &str,
    assignments: &[Assignment],
    actor: &Actor,
    force_reason: Option<&str>,
    command: &str,
) -> Result<EditOutcome> {
    edit_if(
        reg,
        serial,
        assignments,
        actor,
        force_reason,
        command,
        &|_| Ok(()),
        None,
    )
}

/// `edit`, once `rule` accepts the device as it is inside the write transaction (so
/// that another station's change in between cannot slip past it), recording `log`
/// with it.
// One more than clippy's limit: the log entry rides in the same transaction.
#[allow(clippy::too_many_arguments)]
fn edit_if(
    reg: &mut Store,
    serial: &str,
    assignments: &[Assignment],
    actor: &Actor,
    force_reason: Option<&str>,
    command: &str,
    rule: &dyn Fn(&Device) -> Result<()>,
    log: Option<LogEvent>,
) -> Result<EditOutcome> {
    let targets = assignments
        .iter()
        .map(parse_assignment)
        .collect::<Result<Vec<_>>>()?;
    let now = now_rfc3339();
    let tx = reg.write()?;
    let dev = require_device(&tx, serial)?;
    rule(&dev)?;
    let mut new = dev.clone();
    let mut changes = Vec::new();
    let mut to_status = None;
    let mut firmware = None;
    for t in targets {
        match t {
            Target::Field(f, v) => {
                if f.get(&new) != v.as_deref() {
                    changes.push(Change {
                        field: f.name().into(),
                        from: f.get(&new).map(str::to_owned),
                        to: v.clone(),
                    });
                    f.set(&mut new, v);
                }
            }
            Target::Attr(name, v) => {
                let stored = new.attributes.get(&name).map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    o => o.to_string(),
                });
                let same = match (new.attributes.get(&name), &v) {
                    (None, None) => true,
                    (Some(serde_json::Value::String(s)), Some(t)) => s == t,
                    _ => false,
                };
                if !same {
                    changes.push(Change {
                        field: format!("{ATTR_PREFIX}{name}"),
                        from: stored,
                        to: v.clone(),
                    });
                    match v {
                        Some(v) => new.attributes.insert(name, serde_json::Value::String(v)),
                        None => new.attributes.remove(&name),
                    };
                }
            }
            Target::Status(s) => to_status = Some(s),
            Target::Firmware(v) => firmware = Some(v),
        }
    }
    // Only a change of them is checked: a row damaged elsewhere can still be moved.
    if changes
        .iter()
        .any(|c| c.field == Field::Cost.name() || c.field == Field::Currency.name())
    {
        asset_rules(&new)?;
    }
    // Check the state change before writing anything.
    let forced = match to_status {
        Some(to) => lifecycle::check_set(&tx, &dev, to, force_reason)?,
        None => false,
    };
    if !changes.is_empty() {
        update_device_fields(&tx, &new, &now)?;
        let mut m = serde_json::Map::new();
        for c in &changes {
            m.insert(c.field.clone(), serde_json::json!([c.from, c.to]));
        }
        tx.event(
            EventKind::DeviceUpdated,
            Some(dev.id),
            actor,
            serde_json::json!({"source": command, "changes": m}),
            &now,
        )?;
    }
    if let Some(fw) = firmware {
        if let Some(before) =
            crate::app::firmware::record_set(&tx, dev.id, &fw, command, actor, &now)?
        {
            changes.push(Change {
                field: "firmware".into(),
                from: before,
                to: Some(fw),
            });
        }
    }
    let mut status = dev.status;
    if let Some(to) = to_status {
        if lifecycle::transition(
            &tx,
            &new,
            to,
            actor,
            force_reason,
            &now,
            // `forced` as `check_set` judged it (it knows rules `transition` does not).
            {
                let mut x = serde_json::json!({"source": command, "forced": forced});
                if forced {
                    x["reason"] = force_reason.unwrap_or("").into();
                }
                x
            },
        )? {
            changes.push(Change {
                field: "status".into(),
                from: Some(dev.status.to_string()),
                to: Some(to.to_string()),
            });
            status = to;
        }
    }
    let mut logged = None;
    if let Some(LogEvent { kind, mut details }) = log {
        if status != dev.status || !details.is_empty() {
            details.insert("from".into(), dev.status.as_str().into());
            details.insert("to".into(), status.as_str().into());
            let details = serde_json::Value::Object(details);
            tx.event(kind, Some(dev.id), actor, details.clone(), &now)?;
            logged = Some(details);
        }
    }
    if !changes.is_empty() || logged.is_some() {
        tx.commit()?;
    }
    Ok(EditOutcome {
        serial: dev.serial,
        status,
        changes,
        forced,
        logged,
    })
}

/// The rules across asset columns, on the device as it would be stored.
fn asset_rules(d: &Device) -> Result<()> {
    super::asset::cost_needs_currency(d.cost.as_deref(), d.currency.as_deref()).map_err(|_| {
        Error::input(format!(
            "{}: cost {} needs a currency (e.g. cost=12.50 currency=EUR)",
            d.serial,
            fields::excerpt(d.cost.as_deref().unwrap_or_default())
        ))
    })
}

/// `device deploy`: set site (and location) and move to deployed. Without `site`, the
/// stored site is kept (returning from maintenance); a device with no site needs one.
pub fn deploy(
    reg: &mut Store,
    serial: &str,
    site: Option<&str>,
    location: Option<&str>,
    actor: &Actor,
    force_reason: Option<&str>,
) -> Result<EditOutcome> {
    let mut a = Vec::new();
    let site = site.filter(|s| !s.is_empty());
    if let Some(s) = site {
        a.push(Assignment {
            field: "site".into(),
            value: s.into(),
        });
    }
    if let Some(l) = location {
        a.push(Assignment {
            field: "location".into(),
            value: l.into(),
        });
    }
    a.push(Assignment {
        field: "status".into(),
        value: "deployed".into(),
    });
    // Without --site the stored one is kept, so there must be one.
    let has_site = |dev: &Device| match (site, &dev.site) {
        (None, None) => Err(Error::input(format!(
            "device '{}' has no site; give --site SITE",
            dev.serial
        ))),
        _ => Ok(()),
    };
    edit_if(
        reg,
        serial,
        &a,
        actor,
        force_reason,
        "device deploy",
        &has_site,
        None,
    )
}

/// `device return`: back from maintenance to deployed (`lifecycle::check_return`),
/// checked inside the transaction that moves it, with its maintenance-log entry.
pub fn return_from_maintenance(
    reg: &mut Store,
    serial: &str,
    actor: &Actor,
    force_reason: Option<&str>,
    log: Option<LogEvent>,
) -> Result<EditOutcome> {
    let a = [Assignment {
        field: "status".into(),
        value: DeviceStatus::Deployed.as_str().into(),
    }];
    edit_if(
        reg,
        serial,
        &a,
        actor,
        force_reason,
        "device return",
        &|dev| lifecycle::check_return(dev, force_reason),
        log,
    )
}

/// Moves a device to `to` with no field changes, recording `log` with it.
pub fn move_to(
    reg: &mut Store,
    serial: &str,
    to: DeviceStatus,
    actor: &Actor,
    force_reason: Option<&str>,
    command: &str,
    log: Option<LogEvent>,
) -> Result<EditOutcome> {
    let a = [Assignment {
        field: "status".into(),
        value: to.as_str().into(),
    }];
    edit_if(
        reg,
        serial,
        &a,
        actor,
        force_reason,
        command,
        &|_| Ok(()),
        log,
    )
}
