//! Device rows and the lifecycle states they move through.

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, OptionalExtension};

use super::conn::Row;
use serde::{Deserialize, Serialize};

use super::{Reader, Tx};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Registered,
    Provisioned,
    Deployed,
    Maintenance,
    Retired,
    Decommissioned,
}

impl DeviceStatus {
    pub const ALL: [DeviceStatus; 6] = [
        DeviceStatus::Registered,
        DeviceStatus::Provisioned,
        DeviceStatus::Deployed,
        DeviceStatus::Maintenance,
        DeviceStatus::Retired,
        DeviceStatus::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Registered => "registered",
            DeviceStatus::Provisioned => "provisioned",
            DeviceStatus::Deployed => "deployed",
            DeviceStatus::Maintenance => "maintenance",
            DeviceStatus::Retired => "retired",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }

    /// The lifecycle: registered → provisioned → deployed ⇄ maintenance → retired →
    /// decommissioned. Any live state may be retired; anything else needs `--force`.
    pub fn can_move_to(self, to: DeviceStatus) -> bool {
        use DeviceStatus::*;
        matches!(
            (self, to),
            (Registered, Provisioned)
                | (Provisioned, Deployed)
                | (Deployed, Maintenance)
                | (Maintenance, Deployed)
                | (Registered | Provisioned | Deployed | Maintenance, Retired)
                | (Retired, Decommissioned)
        )
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DeviceStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::input(format!(
                    "'{s}' is not a lifecycle state (registered, provisioned, deployed, maintenance, retired, decommissioned)"
                ))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Device {
    pub id: i64,
    pub serial: String,
    pub hardware_id: Option<String>,
    pub model: Option<String>,
    pub hw_rev: Option<String>,
    pub batch: Option<String>,
    pub site: Option<String>,
    pub location: Option<String>,
    pub owner: Option<String>,
    pub mac: Option<String>,
    pub imei: Option<String>,
    pub status: DeviceStatus,
    pub notes: Option<String>,
    /// Asset data (migration 9), as validated by `app::inventory::asset`: dates
    /// `YYYY-MM-DD`, the cost an exact decimal in `currency` (ISO 4217).
    #[serde(default)]
    pub purchase_date: Option<String>,
    #[serde(default)]
    pub warranty_until: Option<String>,
    #[serde(default)]
    pub cost: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub supplier: Option<String>,
    #[serde(default)]
    pub criticality: Option<String>,
    #[serde(default)]
    pub end_of_life: Option<String>,
    /// Extra inventory columns kept as attributes (JSON object).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl Device {
    /// A named field as text (for profile variables and CSV export).
    pub fn field(&self, name: &str) -> Option<String> {
        let v = match name {
            "serial" => Some(self.serial.clone()),
            "hardware_id" => self.hardware_id.clone(),
            "model" => self.model.clone(),
            "hw_rev" => self.hw_rev.clone(),
            "batch" => self.batch.clone(),
            "site" => self.site.clone(),
            "location" => self.location.clone(),
            "owner" => self.owner.clone(),
            "mac" => self.mac.clone(),
            "imei" => self.imei.clone(),
            "status" => Some(self.status.to_string()),
            "notes" => self.notes.clone(),
            "purchase_date" => self.purchase_date.clone(),
            "warranty_until" => self.warranty_until.clone(),
            "cost" => self.cost.clone(),
            "currency" => self.currency.clone(),
            "supplier" => self.supplier.clone(),
            "criticality" => self.criticality.clone(),
            "end_of_life" => self.end_of_life.clone(),
            other => self.attributes.get(other).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        };
        v.filter(|s| !s.is_empty())
    }
}

/// Fields for a new device row; `None` leaves a column empty.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    pub serial: String,
    pub hardware_id: Option<String>,
    pub model: Option<String>,
    pub hw_rev: Option<String>,
    pub batch: Option<String>,
    pub site: Option<String>,
    pub location: Option<String>,
    pub owner: Option<String>,
    pub mac: Option<String>,
    pub imei: Option<String>,
    pub status: Option<DeviceStatus>,
    pub notes: Option<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The columns every device query selects, in the order `from_row` reads them.
pub const DEVICE_COLUMNS: &str = "id, serial, hardware_id, model, hw_rev, batch, site, location, owner, mac, imei, status, notes, attributes, created_at, updated_at, purchase_date, warranty_until, cost, currency, supplier, criticality, end_of_life";

/// A status read back from the registry; one no lifecycle has means damage (exit 4),
/// not bad input.
pub fn stored_status(s: &str) -> Result<DeviceStatus> {
    s.parse().map_err(|e: Error| {
        Error::Store(super::StoreError::Other(super::error::damaged(format!(
            "device status: {e}"
        ))))
    })
}

pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    from_row_at(r, 0)
}

/// A device from `DEVICE_COLUMNS` starting at column `off` (joins).
pub fn from_row_at(r: &Row<'_>, off: usize) -> rusqlite::Result<Device> {
    let status: String = r.get(off + 11)?;
    let attrs: Option<String> = r.get(off + 13)?;
    Ok(Device {
        id: r.get(off)?,
        serial: r.get(off + 1)?,
        hardware_id: r.get(off + 2)?,
        model: r.get(off + 3)?,
        hw_rev: r.get(off + 4)?,
        batch: r.get(off + 5)?,
        site: r.get(off + 6)?,
        location: r.get(off + 7)?,
        owner: r.get(off + 8)?,
        mac: r.get(off + 9)?,
        imei: r.get(off + 10)?,
        status: status.parse().map_err(|e: Error| {
            rusqlite::Error::FromSqlConversionFailure(
                off + 11,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
        notes: r.get(off + 12)?,
        attributes: attrs
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        created_at: r.get(off + 14)?,
        updated_at: r.get(off + 15)?,
        purchase_date: r.get(off + 16)?,
        warranty_until: r.get(off + 17)?,
        cost: r.get(off + 18)?,
        currency: r.get(off + 19)?,
        supplier: r.get(off + 20)?,
        criticality: r.get(off + 21)?,
        end_of_life: r.get(off + 22)?,
    })
}

pub fn attributes_json(map: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    if map.is_empty() {
        None
    } else {
        Some(serde_json::Value::Object(map.clone()).to_string())
    }
}

/// Inserts a device and returns its id.
pub fn insert_device(tx: &Tx<'_>, d: &NewDevice, now: &str) -> Result<i64> {
    let conn = tx.conn();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO devices (serial, hardware_id, model, hw_rev, batch, site, location, owner, mac, imei, status, notes, attributes, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14) RETURNING id",
    )?;
    let id: i64 = stmt
        .query_row(
            params![
                d.serial,
                d.hardware_id,
                d.model,
                d.hw_rev,
                d.batch,
                d.site,
                d.location,
                d.owner,
                d.mac,
                d.imei,
                d.status.unwrap_or(DeviceStatus::Registered).as_str(),
                d.notes,
                attributes_json(&d.attributes),
                now,
            ],
            |r| r.get(0),
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                Error::conflict(format!("device '{}' already exists", d.serial))
            }
            _ => Error::from(e),
        })?;
    Ok(id)
}

pub fn device_by_serial(db: &Reader, serial: &str) -> Result<Option<Device>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = ?1"
    ))?;
    Ok(stmt.query_row([serial], from_row).optional()?)
}

/// The first of `serials` that already has a device row, if any.
pub fn first_existing_serial<'a>(db: &Reader, serials: &'a [String]) -> Result<Option<&'a str>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached("SELECT 1 FROM devices WHERE serial = ?1")?;
    for s in serials {
        if stmt.exists([s])? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

pub fn device_by_id(db: &Reader, id: i64) -> Result<Option<Device>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"
    ))?;
    Ok(stmt.query_row([id], from_row).optional()?)
}

pub fn device_by_hardware_id(db: &Reader, hwid: &str) -> Result<Option<Device>> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE hardware_id = ?1 ORDER BY id LIMIT 1"
    ))?;
    Ok(stmt.query_row([hwid], from_row).optional()?)
}

/// Looks a device up by serial or fails with a clear "no such device".
pub fn require_device(db: &Reader, serial: &str) -> Result<Device> {
    device_by_serial(db, serial)?.ok_or_else(|| {
        Error::not_found(format!("no device with serial '{serial}' in the registry"))
    })
}

pub fn set_status(tx: &Tx<'_>, id: i64, status: DeviceStatus, now: &str) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached("UPDATE devices SET status = ?1, updated_at = ?2 WHERE id = ?3")?
        .execute(params![status.as_str(), now, id])?;
    Ok(())
}
