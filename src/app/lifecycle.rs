//! Lifecycle transitions: checked, recorded as events, overridable with a reason.

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::Tx;

/// The override rule: a move the lifecycle forbids needs `--force` with a reason.
/// Returns whether the move from `device`'s state to `to` is forced (false for a
/// legal move and for staying where it is).
pub fn check(device: &Device, to: DeviceStatus, force_reason: Option<&str>) -> Result<bool> {
    let from = device.status;
    if from == to || from.can_move_to(to) {
        return Ok(false);
    }
    match force_reason {
        Some(r) if !r.trim().is_empty() => Ok(true),
        _ => Err(Error::conflict(format!(
            "device '{}' is {from}; it cannot move to {to} (use --force --reason TEXT to override)",
            device.serial
        ))),
    }
}

/// A status set by hand (`device set status=`, an import's status column) keeps the
/// promises the dedicated commands keep: a provisioned device has an active
/// certificate, a retired one has none left unrevoked (so every certificate it ever had
/// is on the CRL), and only `cradle decommission` records the wipe that makes a device
/// decommissioned. Breaking one needs `--force --reason`. Returns whether it is forced.
pub fn check_set(
    db: &crate::store::Reader,
    device: &Device,
    to: DeviceStatus,
    force_reason: Option<&str>,
) -> Result<bool> {
    let forced = check(device, to, force_reason)?;
    if device.status == to {
        return Ok(forced);
    }
    let certs = crate::store::certs::certs_for_device(db, device.id)?;
    let count =
        |s: &[crate::store::CertStatus]| certs.iter().filter(|c| s.contains(&c.status)).count();
    use crate::store::CertStatus::{Active, Unused};
    let broken = match to {
        DeviceStatus::Provisioned if count(&[Active]) == 0 => Some(format!(
            "device '{}' has no active certificate, so it cannot be {to}; provision or issue it first",
            device.serial
        )),
        DeviceStatus::Retired if count(&[Active, Unused]) > 0 => Some(format!(
            "device '{}' still has {} certificate(s) not revoked; use `cradle revoke` or `cradle decommission`, which put them on the CRL",
            device.serial,
            count(&[Active, Unused])
        )),
        DeviceStatus::Decommissioned => Some(format!(
            "device '{}': only `cradle decommission` makes a device decommissioned (it revokes and records the wipe)",
            device.serial
        )),
        _ => None,
    };
    match (broken, force_reason) {
        (None, _) => Ok(forced),
        (Some(_), Some(r)) if !r.trim().is_empty() => Ok(true),
        (Some(msg), _) => Err(Error::conflict(format!(
            "{msg} (or --force --reason TEXT to override)"
        ))),
    }
}

/// `device return` brings a device back from maintenance; from any other state it
/// needs the override (installing a device is `device deploy`).
pub fn check_return(device: &Device, force_reason: Option<&str>) -> Result<()> {
    if device.status != DeviceStatus::Maintenance && force_reason.is_none() {
        return Err(Error::conflict(format!(
            "device '{}' is {}, not in maintenance (use `cradle device deploy`)",
            device.serial, device.status
        )));
    }
    Ok(())
}

/// Moves `device` to `to`, recording a `device.state` event. An illegal transition
/// fails unless `force_reason` is given (`check`), in which case the override is
/// recorded. Moving to the current state is a no-op (returns false).
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
    let forced = check(device, to, force_reason)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn device(status: DeviceStatus) -> Device {
        Device {
            id: 1,
            serial: "D1".into(),
            hardware_id: None,
            model: None,
            hw_rev: None,
            batch: None,
            site: None,
            location: None,
            owner: None,
            mac: None,
            imei: None,
            status,
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
    fn a_forbidden_move_needs_a_reason_and_is_then_forced() {
        use DeviceStatus::*;
        assert!(!check(&device(Provisioned), Deployed, None).unwrap());
        assert!(!check(&device(Deployed), Deployed, None).unwrap());
        for reason in [None, Some(""), Some("  ")] {
            let e = check(&device(Registered), Deployed, reason).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::CONFLICT);
            assert!(e.to_string().contains("use --force --reason TEXT"), "{e}");
        }
        assert!(check(&device(Registered), Deployed, Some("bench test")).unwrap());
    }

    #[test]
    fn return_is_from_maintenance_unless_forced() {
        use DeviceStatus::*;
        check_return(&device(Maintenance), None).unwrap();
        let e = check_return(&device(Deployed), None).unwrap_err();
        assert!(e.to_string().contains("not in maintenance"), "{e}");
        check_return(&device(Provisioned), Some("field install")).unwrap();
    }
}
