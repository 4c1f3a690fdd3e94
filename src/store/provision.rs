//! Store queries for the provisioning station.

use rusqlite::params;

use super::devices::{self, Device, NewDevice};
use super::{Reader, Tx};
use crate::error::Result;

/// The device a provisioning run is for: by hardware id, else by serial (a device
/// registered from inventory before it ever reached a fixture).
pub fn find_device(db: &Reader, hardware_id: &str, serial: &str) -> Result<Option<Device>> {
    if let Some(d) = devices::device_by_hardware_id(db, hardware_id)? {
        return Ok(Some(d));
    }
    devices::device_by_serial(db, serial)
}

/// Registers a device first seen on a fixture; returns its id.
pub fn register_device(
    tx: &Tx<'_>,
    serial: &str,
    hardware_id: &str,
    model: &str,
    imei: Option<&str>,
    now: &str,
) -> Result<i64> {
    devices::insert_device(
        tx,
        &NewDevice {
            serial: serial.to_string(),
            hardware_id: Some(hardware_id.to_string()),
            model: Some(model.to_string()),
            imei: imei.map(str::to_string),
            ..Default::default()
        },
        now,
    )
}

/// Fills in what the device reported about itself where the registry had nothing.
pub fn fill_identity(
    tx: &Tx<'_>,
    id: i64,
    hardware_id: &str,
    model: &str,
    now: &str,
) -> Result<()> {
    let conn = tx.conn();
    conn.prepare_cached(
        "UPDATE devices SET hardware_id = COALESCE(hardware_id, ?1), model = COALESCE(model, ?2), updated_at = ?3 WHERE id = ?4 AND (hardware_id IS NULL OR model IS NULL)",
    )?
    .execute(params![hardware_id, model, now, id])?;
    Ok(())
}
