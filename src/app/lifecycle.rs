//! Lifecycle transitions: checked, recorded as events, overridable with a reason.

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::app::identity::Actor;
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::events::{EventChain, NewEvent};

/// Moves `device` to `to`, recording a `device.state` event. An illegal transition
/// fails unless `force_reason` is given, in which case the override is recorded.
/// Moving to the current state is a no-op (returns false).
pub fn transition(
    conn: &Connection,
    chain: &mut EventChain,
    device: &Device,
    to: DeviceStatus,
    actor: &Actor,
    force_reason: Option<&str>,
    now: &str,
    extra: serde_json::Value,
) -> Result<bool> {
    let from = device.status;
    if from == to {
        return Ok(false);
    }
    let forced = !from.can_move_to(to);
    if forced {
        match force_reason {
            Some(r) if !r.trim().is_empty() => {}
            _ => {
                return Err(Error::conflict(format!(
                    "device '{}' is {from}; it cannot move to {to} (use --force --reason TEXT to override)",
                    device.serial
                )))
            }
        }
    }
    devices::set_status(conn, device.id, to, now)?;
    let mut details = serde_json::json!({"from": from, "to": to, "forced": forced});
    if forced {
        details["reason"] = serde_json::Value::String(force_reason.unwrap_or("").to_string());
    }
    if let (Some(d), serde_json::Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    chain.append(
        conn,
        &NewEvent {
            device_id: Some(device.id),
            kind: "device.state",
            actor: &actor.operator,
            station: &actor.station,
            details,
        },
        now,
    )?;
    Ok(true)
}
