//! The maintenance log: what was done to a device in the years between provisioning
//! and decommissioning, kept as hash-chained events (`maintenance.logged` by `device
//! maintenance`, `maintenance.returned` by `device return`) and listed with `device
//! maintenance SERIAL --list`.
//!
//! A return ends a maintenance period: the device goes back to deployed at its site
//! (the lifecycle's maintenance → deployed move, `lifecycle::check_return`). `--rma ID`
//! records the supplier's return authorisation when the device was sent back to the
//! supplier for repair or exchange during that period; a device the supplier keeps
//! is retired (`cradle decommission`), not returned.

use serde::Serialize;

use crate::app::inventory::asset::{self, Amount};
use crate::app::inventory::device::{self, EditOutcome, LogEvent};
use crate::app::inventory::fields::{excerpt, invisible};
use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::store::devices::{require_device, DeviceStatus};
use crate::store::events::events_for_device;
use crate::store::{Reader, Store};

/// Longest note, in characters (a log line, not a report).
pub const MAX_NOTE: usize = 2000;
/// Longest RMA number.
pub const MAX_RMA: usize = 64;

/// What one `device maintenance` / `device return` records, validated.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub note: Option<String>,
    /// Exact decimal and ISO 4217 currency.
    pub cost: Option<(String, String)>,
    pub rma: Option<String>,
}

/// A note: user text on one line, at most `MAX_NOTE` characters, no control or
/// invisible characters (it is shown in tables and the fleet report).
pub fn check_note(v: &str) -> Result<String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(Error::input("--note: the note is empty"));
    }
    let n = t.chars().count();
    if n > MAX_NOTE {
        return Err(Error::input(format!(
            "--note: the note is {n} characters long; the limit is {MAX_NOTE}"
        )));
    }
    if let Some(m) = invisible(t, false, false) {
        return Err(Error::input(format!("--note: {m}")));
    }
    Ok(t.to_string())
}

/// An RMA number: a short identifier (no blanks other than spaces, nothing invisible).
pub fn check_rma(v: &str) -> Result<String> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > MAX_RMA {
        return Err(Error::input(format!(
            "--rma: {} must be 1-{MAX_RMA} characters",
            excerpt(t)
        )));
    }
    if let Some(m) = invisible(t, true, false) {
        return Err(Error::input(format!("--rma: {m}")));
    }
    Ok(t.to_string())
}

impl Entry {
    /// Validates the options of `device maintenance` / `device return`.
    pub fn new(
        note: Option<&str>,
        cost: Option<&str>,
        currency: Option<&str>,
        rma: Option<&str>,
    ) -> Result<Entry> {
        let note = note.map(check_note).transpose()?;
        let cost = match (cost, currency) {
            (Some(c), Some(cur)) => {
                let c = asset::normalise_cost(c.trim())
                    .map_err(|m| Error::input(format!("--cost: {m}")))?
                    .into_owned();
                let cur = asset::normalise_currency(cur.trim())
                    .map_err(|m| Error::input(format!("--currency: {m}")))?
                    .into_owned();
                Some((c, cur))
            }
            (Some(_), None) => {
                return Err(Error::input(
                    "--cost needs --currency (ISO 4217, e.g. --currency EUR)",
                ))
            }
            (None, Some(_)) => return Err(Error::input("--currency is the currency of --cost")),
            (None, None) => None,
        };
        let rma = rma.map(check_rma).transpose()?;
        Ok(Entry { note, cost, rma })
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(n) = &self.note {
            m.insert("note".into(), n.as_str().into());
        }
        if let Some((c, cur)) = &self.cost {
            m.insert("cost".into(), c.as_str().into());
            m.insert("currency".into(), cur.as_str().into());
        }
        if let Some(r) = &self.rma {
            m.insert("rma".into(), r.as_str().into());
        }
        m
    }
}

/// `device maintenance`: into maintenance (from deployed; anything else needs
/// `--force`), or, for a device already in maintenance, one more entry of work done.
pub fn maintain(
    reg: &mut Store,
    serial: &str,
    entry: &Entry,
    actor: &Actor,
    force_reason: Option<&str>,
) -> Result<EditOutcome> {
    device::move_to(
        reg,
        serial,
        DeviceStatus::Maintenance,
        actor,
        force_reason,
        "device maintenance",
        Some(LogEvent {
            kind: EventKind::MaintenanceLogged,
            details: entry.details(),
        }),
    )
}

/// `device return`: back from maintenance to deployed, with the note and RMA number.
pub fn return_device(
    reg: &mut Store,
    serial: &str,
    entry: &Entry,
    actor: &Actor,
    force_reason: Option<&str>,
) -> Result<EditOutcome> {
    device::return_from_maintenance(
        reg,
        serial,
        actor,
        force_reason,
        Some(LogEvent {
            kind: EventKind::MaintenanceReturned,
            details: entry.details(),
        }),
    )
}

/// One line of the maintenance log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub event: i64,
    pub at: String,
    /// `maintenance` or `return`.
    pub kind: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub note: Option<String>,
    pub cost: Option<String>,
    pub currency: Option<String>,
    pub rma: Option<String>,
    pub actor: String,
    pub station: String,
}

/// Total cost of the log in one currency.
#[derive(Debug, Clone, Serialize)]
pub struct Total {
    pub currency: String,
    pub cost: String,
    pub entries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Log {
    pub serial: String,
    pub status: DeviceStatus,
    pub entries: Vec<LogLine>,
    /// Cost per currency over the entries, summed exactly.
    pub totals: Vec<Total>,
}

/// The maintenance log of a device, oldest first.
pub fn list(db: &Reader, serial: &str) -> Result<Log> {
    let d = require_device(db, serial)?;
    let (logged, returned) = (
        EventKind::MaintenanceLogged.as_str(),
        EventKind::MaintenanceReturned.as_str(),
    );
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().map(str::to_string);
    let mut entries = Vec::new();
    let mut totals: std::collections::BTreeMap<String, (Amount, u64, usize)> = Default::default();
    for e in events_for_device(db, d.id)? {
        let kind = if e.kind == logged {
            "maintenance"
        } else if e.kind == returned {
            "return"
        } else {
            continue;
        };
        let line = LogLine {
            event: e.id,
            at: e.at.clone(),
            kind,
            from: text(&e.details, "from"),
            to: text(&e.details, "to"),
            note: text(&e.details, "note"),
            cost: text(&e.details, "cost"),
            currency: text(&e.details, "currency"),
            rma: text(&e.details, "rma"),
            actor: e.actor,
            station: e.station,
        };
        if let (Some(c), Some(cur)) = (&line.cost, &line.currency) {
            // Recorded by `Entry::new`, so it parses; a log that says otherwise was
            // not written by cradle and the chain check reports it.
            if let Ok(a) = Amount::parse(c) {
                let t = totals.entry(cur.clone()).or_default();
                t.0 = t.0.checked_add(a).unwrap_or(t.0);
                t.1 += 1;
                t.2 = t.2.max(Amount::decimals_of(c));
            }
        }
        entries.push(line);
    }
    Ok(Log {
        serial: d.serial,
        status: d.status,
        entries,
        totals: totals
            .into_iter()
            .map(|(currency, (a, n, d))| Total {
                currency,
                cost: a.with_decimals(d),
                entries: n,
            })
            .collect(),
    })
}
