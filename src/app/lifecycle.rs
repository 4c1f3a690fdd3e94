//! Lifecycle transitions: checked, recorded as events, overridable with a reason.

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::Tx;

/// Moves `device` to `to`, recording a `device.state` event. An illegal transition
/// fails unless `force_reason` is given, in which case the override is recorded.
/// Moving to the current state is a no-op (returns false).
pub fn transition(
    tx: &Tx<'_>,
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
    devices::set_status(tx, device.id, to, now)?;
    let mut details = serde_json::json!({"from": from, "to": to, "forced": forced});
    if forced {
        details["reason"] = serde_json::Value::String(force_reason.unwrap_or("").to_string());
    }
    if let (Some(d), serde_json::Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    tx.event(EventKind::DeviceState, Some(device.id), actor, details, now)?;
    Ok(true)
}
