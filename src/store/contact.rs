//! What the registry knows of a device from talking to it: the firmware it reported
//! (or an operator set), when a port command last reached it, and which rendered
//! configuration it holds. Kept beside the inventory columns, not in [`Device`]
//! (inventory import and export do not carry them); the firmware trail is in the event
//! log (`firmware.reported`).
//!
//! [`Device`]: super::devices::Device

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Reader, Tx};
use crate::error::{Error, Result};

/// A device's contact record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Contact {
    /// The firmware version last reported by the device or set by an operator.
    pub firmware: Option<String>,
    /// When a port command (provision, wipe, config) last talked to the device.
    pub last_contact_at: Option<String>,
    /// The config template the device's config slot was last written from.
    pub config_name: Option<String>,
    /// SHA-256 (hex) of the configuration bytes the device read back.
    pub config_sha256: Option<String>,
}

/// The contact record of device `id`.
pub fn contact(db: &Reader, id: i64) -> Result<Contact> {
    let conn = db.conn();
    conn.prepare_cached(
        "SELECT firmware, last_contact_at, config_name, config_sha256 FROM devices WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(Contact {
            firmware: r.get(0)?,
            last_contact_at: r.get(1)?,
            config_name: r.get(2)?,
            config_sha256: r.get(3)?,
        })
    })
    .optional()?
    .ok_or_else(|| Error::not_found(format!("no device with id {id}")))
}

/// Stores `firmware` for device `id`; with `contact_at`, also the time of the contact.
/// Returns the record as it was before.
pub fn set_firmware(
    tx: &Tx<'_>,
    id: i64,
    firmware: &str,
    contact_at: Option<&str>,
) -> Result<Contact> {
    let before = contact(tx, id)?;
    tx.conn()
        .prepare_cached(
            "UPDATE devices SET firmware = ?1, last_contact_at = COALESCE(?2, last_contact_at) WHERE id = ?3",
        )?
        .execute(params![firmware, contact_at, id])?;
    Ok(before)
}

/// Records a contact with device `id` that reported nothing new.
pub fn touch(tx: &Tx<'_>, id: i64, at: &str) -> Result<()> {
    tx.conn()
        .prepare_cached("UPDATE devices SET last_contact_at = ?1 WHERE id = ?2")?
        .execute(params![at, id])?;
    Ok(())
}

/// Records the configuration device `id` now holds, and the contact that wrote it.
pub fn set_config(tx: &Tx<'_>, id: i64, name: &str, sha256_hex: &str, at: &str) -> Result<()> {
    tx.conn()
        .prepare_cached(
            "UPDATE devices SET config_name = ?1, config_sha256 = ?2, last_contact_at = ?3 WHERE id = ?4",
        )?
        .execute(params![name, sha256_hex, at, id])?;
    Ok(())
}

/// One in-service device as the firmware and contact audit checks see it.
#[derive(Debug, Clone)]
pub struct InService {
    pub serial: String,
    pub model: Option<String>,
    pub status: String,
    pub firmware: Option<String>,
    pub last_contact_at: Option<String>,
}

/// Every provisioned, deployed or maintenance device, in serial order (streamed).
pub fn for_each_in_service(db: &Reader, mut f: impl FnMut(InService) -> Result<()>) -> Result<()> {
    let conn = db.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT serial, model, status, firmware, last_contact_at FROM devices
         WHERE status = 'provisioned' OR status = 'deployed' OR status = 'maintenance'
         ORDER BY serial",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        f(InService {
            serial: r.get(0)?,
            model: r.get(1)?,
            status: r.get(2)?,
            firmware: r.get(3)?,
            last_contact_at: r.get(4)?,
        })?;
    }
    Ok(())
}
