//! Step 3 for a device that cannot sign: erase, read back as erased, record. An ESP32
//! in its ROM bootloader has no key of ours to sign with, so the proof is the chip's
//! own digest of the erased region, read over the line (`WipeLink::erase_and_read_back`).
//! The record is kind `read-back`: verified, but not device-signed, and the report says
//! so. Erasing is idempotent, so a run lost halfway is simply run again.

use super::wipe::WipeLink;
use super::WipeContext;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::store::devices::Device;
use crate::store::retire::{self as rr, WipeRecord};
use crate::store::{now_rfc3339, Store, Tx};

/// Wipes by read-back if the link's family does (`Ok(None)` otherwise: it attests).
/// `hwid` is the hardware id already checked against the registry.
#[allow(clippy::too_many_arguments)]
pub(super) fn wipe(
    reg: &mut Store,
    device: &Device,
    link: &mut dyn WipeLink,
    hwid: &str,
    ctx: &WipeContext,
    step_options: &serde_json::Value,
    actor: &Actor,
    finish: &dyn Fn(&Tx<'_>, &WipeRecord, &str) -> Result<()>,
) -> Result<Option<WipeRecord>> {
    if !link.reads_back() || !link.erases_flash() {
        return Ok(None);
    }
    {
        let now = now_rfc3339();
        let tx = reg.write()?;
        rr::start_step(
            &tx,
            device.id,
            super::Step::Wipe.as_str(),
            step_options,
            &now,
        )?;
        tx.commit()?;
    }
    let rb = link
        .erase_and_read_back()?
        .ok_or_else(|| Error::Internal("a read-back family gave no read-back".into()))?;
    if rb.hardware_id != hwid {
        return Err(Error::Device(format!(
            "the device on the port changed during the wipe: {hwid}, then {}",
            rb.hardware_id
        )));
    }
    let evidence = serde_json::to_value(&rb)
        .map_err(|e| Error::Internal(format!("read-back as JSON: {e}")))?;
    let now = now_rfc3339();
    let record = WipeRecord {
        id: 0,
        device_id: device.id,
        kind: "read-back".into(),
        level: super::WipeLevel::Clear.as_str().into(),
        method: format!(
            "erase of the {} (0x{:x}, {} bytes) over the device's ROM bootloader, read back as erased",
            rb.region, rb.offset, rb.size
        ),
        media_type: ctx
            .media_type
            .clone()
            .or_else(|| Some("device SPI flash (identity partition)".into())),
        tool: Some(format!("cradle: {}", rb.how)),
        tool_version: Some(env!("CARGO_PKG_VERSION").into()),
        verification: Some(format!(
            "read back: the device's {} of the region is {}, that of erased flash (not device-signed: the ROM cannot sign)",
            rb.digest_alg.to_uppercase(),
            rb.digest
        )),
        verified_by: Some(format!("cradle (automatic), operator {}", actor.operator)),
        technician: ctx.technician.clone().or_else(|| Some(actor.operator.clone())),
        location: ctx.location.clone().or_else(|| device.location.clone()),
        destination: ctx.destination.clone(),
        nonce_hex: None,
        attestation: Some(evidence.to_string()),
        attestation_verified: None,
        recorded_at: now.clone(),
    };
    let tx = reg.write()?;
    let id = rr::insert_wipe(&tx, &record)?;
    let record = WipeRecord { id, ..record };
    finish(&tx, &record, &now)?;
    tx.commit()?;
    Ok(Some(record))
}
