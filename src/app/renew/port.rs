//! `cradle renew --port`: a successor written onto the device in place.
//!
//! Order, so that a pulled cable at any point leaves a device that works and a registry
//! that says so: (1) the successor is recorded as *pending* (certificate `unused`, the
//! old one still active); (2) it is written into the device's spare slots and read back
//! by SHA-256; (3) SWITCH makes it the identity in one step on the device and the cert
//! slot is read back; (4) the registry records it confirmed (active) and, with
//! `--rekey` or `--revoke-old`, only now revokes the old certificate (superseded).
//! A re-run finds the pending successor: already switched to (confirm it), still
//! usable (write/switch it), or not (revoke it, issue a fresh one): never two pending.

use serde::Serialize;
use zeroize::Zeroizing;

use super::{
    check_renewable, issue_successor, key_source, profile_of, profiles_for, record_successor,
    revoke_superseded, spki_of, RenewContext,
};
use crate::device::{Burn, RenewLink, RenewState};
use crate::error::{Error, Result};
use crate::model::EventKind;
use crate::pki::cert::sha256_hex;
use crate::pki::{csr, keys};
use crate::store::certs::{self, CertRecord, CertStatus, KeySource};
use crate::store::devices::{self, Device};
use crate::store::renewals::{self, Delivery, Pending};
use crate::store::{now_rfc3339, Store};

/// How `--rekey` gets the new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekey {
    /// The device makes it in its spare slot (NEXTKEY) and sends a CSR.
    Device,
    /// cradle makes it and writes it into the spare key slot (never kept on the host).
    Inject,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortOutcome {
    pub serial: String,
    pub hardware_id: String,
    /// `renewed`, or `confirmed` when a re-run found the device already switched.
    pub result: &'static str,
    pub old_cert_serial: String,
    pub cert_serial: String,
    pub not_after: i64,
    pub rekey: bool,
    /// This run finished a pending successor of an earlier one.
    pub resumed: bool,
    /// A pending successor of an earlier run that could not be finished: revoked.
    pub abandoned: Option<String>,
    pub old_revoked: bool,
    pub crl: Option<std::path::PathBuf>,
}

/// The device on the port, as the registry knows it.
fn registered_device(reg: &Store, st: &RenewState, serial: Option<&str>) -> Result<Device> {
    let hwid = &st.identity.hardware_id;
    let d = match serial {
        Some(s) => {
            let d = devices::require_device(reg.reader(), s)?;
            match d.hardware_id.as_deref() {
                Some(h) if h == hwid => d,
                Some(h) => {
                    return Err(Error::conflict(format!(
                        "the device on the port is hardware id {hwid}, but '{s}' is registered with {h}; nothing written"
                    )))
                }
                None => {
                    return Err(Error::conflict(format!(
                        "'{s}' has no hardware id in the registry, so the device on the port (hardware id {hwid}) cannot be checked to be it; nothing written"
                    )))
                }
            }
        }
        None => devices::device_by_hardware_id(reg.reader(), hwid)?.ok_or_else(|| {
            Error::not_found(format!(
                "no device with hardware id {hwid} (the one on the port) in the registry"
            ))
        })?,
    };
    check_renewable(&d)?;
    Ok(d)
}

/// The device on the port, for contact records: its firmware and the port's name.
struct Contact<'a> {
    firmware: &'a str,
    port: &'a str,
}

fn record_contact(
    tx: &crate::store::Tx<'_>,
    ctx: &RenewContext<'_>,
    device: &Device,
    c: &Contact<'_>,
    now: &str,
) -> Result<()> {
    crate::app::firmware::record_contact(
        tx, device.id, c.firmware, "renew", c.port, ctx.actor, now,
    )?;
    Ok(())
}

/// Renews the device on `link` (at `port`) in place.
#[allow(clippy::too_many_arguments)]
pub fn renew_on_port(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    link: &mut dyn RenewLink,
    port: &str,
    serial: Option<&str>,
    rekey: Option<Rekey>,
    revoke_old: bool,
    crl: &crate::app::retire::crl::Publication,
) -> Result<PortOutcome> {
    let st = link.state()?;
    let device = registered_device(reg, &st, serial)?;
    let contact = Contact {
        firmware: &st.identity.firmware,
        port,
    };
    let held = link.active_cert()?;
    let pending = renewals::pending_for_device(reg.reader(), device.id)?;

    // Switched on the device, but the confirmation never reached the registry.
    if let Some(p) = pending.as_ref().filter(|p| p.new_cert.der == held) {
        if p.new_cert.status == CertStatus::Revoked {
            // Revoked by hand while pending, yet the device switched to it: never make
            // it valid again. The renewal ends here; the next one must re-key.
            let tx = reg.write()?;
            renewals::abandon(&tx, p.id)?;
            tx.commit()?;
            return Err(Error::conflict(format!(
                "the device switched to successor {}, which was revoked ({}) while pending; renew it with --rekey",
                p.new_cert.serial_hex,
                p.new_cert.revocation_reason.as_deref().unwrap_or("unspecified")
            )));
        }
        let old = renewals::cert_by_id(reg.reader(), p.old_cert_id)?
            .ok_or_else(|| Error::Internal("renewal names a missing certificate".into()))?;
        let (old_revoked, crl) = confirm(
            reg,
            ctx,
            &device,
            &old,
            p,
            p.rekey || revoke_old,
            &contact,
            crl,
        )?;
        return Ok(PortOutcome {
            serial: device.serial,
            hardware_id: st.identity.hardware_id,
            result: "confirmed",
            old_cert_serial: old.serial_hex,
            cert_serial: p.new_cert.serial_hex.clone(),
            not_after: p.new_cert.not_after,
            rekey: p.rekey,
            resumed: true,
            abandoned: None,
            old_revoked,
            crl,
        });
    }

    let old = the_old_cert(reg, &device, &held, &st, rekey.is_some())?;
    let spare = st.spare_key.as_deref().map(sha256_hex);
    // A pending successor is finished if it still fits what the device holds.
    let (reuse, abandoned) = match pending {
        Some(p) => {
            // A successor revoked by hand while pending is never written.
            let fits = p.new_cert.status == CertStatus::Unused
                && p.old_cert_id == old.id
                && p.rekey == rekey.is_some()
                && if p.rekey {
                    spare.as_deref() == Some(p.new_cert.pubkey_sha256.as_str())
                } else {
                    p.new_cert.pubkey_sha256 == old.pubkey_sha256
                };
            if fits {
                (Some(p), None)
            } else {
                abandon(reg, ctx, &device, &p)?;
                // On the CRL now, whatever happens on the device next.
                publish(reg, ctx, crl)?;
                (None, Some(p.new_cert.serial_hex.clone()))
            }
        }
        None => (None, None),
    };
    if rekey.is_none() && st.spare_key.is_some() {
        // A spare key left by an abandoned re-key would make SWITCH install it.
        link.discard_spare()?;
    }
    let resumed = reuse.is_some();
    let (pending, mut injected) = match reuse {
        Some(p) => (p, None),
        None => issue_pending(reg, ctx, link, &device, &old, rekey, &contact)?,
    };
    let cert = pending.new_cert.der.clone();
    let mut burn = Burn {
        key: injected.take(),
        cert_der: &cert,
        chain_der: &ctx.signer.chain_der,
    };
    let on_device = (|| -> std::result::Result<(), crate::wire::WireError> {
        link.write_spare(&mut burn)?;
        link.verify_spare(&cert, &ctx.signer.chain_der)?;
        link.switch(&cert)
    })();
    if let Err(e) = on_device {
        return Err(Error::Device(format!(
            "{e}; the device keeps using certificate {} and successor {} stays pending: re-run `cradle renew --port` to finish",
            old.serial_hex, pending.new_cert.serial_hex
        )));
    }
    let (old_revoked, crl) = confirm(
        reg,
        ctx,
        &device,
        &old,
        &pending,
        rekey.is_some() || revoke_old,
        &contact,
        crl,
    )?;
    Ok(PortOutcome {
        serial: device.serial,
        hardware_id: st.identity.hardware_id,
        result: "renewed",
        old_cert_serial: old.serial_hex,
        cert_serial: pending.new_cert.serial_hex.clone(),
        not_after: pending.new_cert.not_after,
        rekey: rekey.is_some(),
        resumed,
        abandoned,
        old_revoked,
        crl,
    })
}

/// The registry's record of the certificate the device holds now.
fn the_old_cert(
    reg: &Store,
    device: &Device,
    held: &[u8],
    st: &RenewState,
    rekey: bool,
) -> Result<CertRecord> {
    if held.is_empty() {
        return Err(Error::conflict(format!(
            "the device on the port ('{}') holds no committed certificate; give it an identity with `cradle provision`",
            device.serial
        )));
    }
    let old = certs::cert_by_fingerprint(reg.reader(), &sha256_hex(held))?
        .filter(|c| c.device_id == device.id)
        .ok_or_else(|| {
            Error::conflict(format!(
                "the certificate on the device is not recorded for '{}' (see `cradle identity reconcile`); nothing written",
                device.serial
            ))
        })?;
    if old.status == CertStatus::Revoked && !rekey {
        return Err(Error::conflict(format!(
            "certificate {} on the device is revoked ({}); renewing it for the same key would undo that: use --rekey",
            old.serial_hex,
            old.revocation_reason.as_deref().unwrap_or("unspecified")
        )));
    }
    let key = st.public_key.as_deref().map(sha256_hex);
    if key.as_deref() != Some(old.pubkey_sha256.as_str()) {
        return Err(Error::conflict(format!(
            "the device's identity key is not the one certificate {} certifies; nothing written",
            old.serial_hex
        )));
    }
    Ok(old)
}

/// A pending successor that no longer fits the device: revoked (it may be half on the
/// device, so it must not stay valid) and marked abandoned.
fn abandon(reg: &mut Store, ctx: &RenewContext<'_>, device: &Device, p: &Pending) -> Result<()> {
    let now = now_rfc3339();
    let tx = reg.write()?;
    renewals::abandon(&tx, p.id)?;
    revoke_superseded(&tx, ctx, device, &p.new_cert, "(a fresh successor)", &now)?;
    tx.commit()
}

/// Issues and records the successor as pending; with `--rekey`, for a new key (made by
/// the device, or made here and returned to be written, never stored).
#[allow(clippy::type_complexity)]
fn issue_pending(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    link: &mut dyn RenewLink,
    device: &Device,
    old: &CertRecord,
    rekey: Option<Rekey>,
    contact: &Contact<'_>,
) -> Result<(Pending, Option<Zeroizing<Vec<u8>>>)> {
    let (spki, injected, source) = match rekey {
        None => (spki_of(&old.der)?, None, key_source(old)),
        Some(Rekey::Device) => {
            let k = link.make_spare_key()?;
            let checked = csr::check_csr(&k.csr_der)
                .map_err(|e| Error::Device(format!("the device's CSR for its new key: {e}")))?;
            if checked.spki_der != k.spki_der {
                return Err(Error::Device(
                    "the device's CSR is for another key than the spare key it reports".into(),
                ));
            }
            (k.spki_der, None, KeySource::Device)
        }
        Some(Rekey::Inject) => {
            let key = keys::generate()?;
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            (
                spki,
                Some(Zeroizing::new(key.serialize_der())),
                KeySource::Host,
            )
        }
    };
    let profiles = profiles_for(ctx, std::iter::once(old))?;
    let profile = profile_of(ctx, &profiles, old);
    let issued = issue_successor(ctx, profile, device, &spki)?;
    let now = now_rfc3339();
    let tx = reg.write()?;
    let id = record_successor(
        &tx,
        ctx,
        &profile.name,
        device,
        old,
        &issued,
        source,
        Delivery::Port,
        rekey.is_some(),
        &now,
    )?;
    record_contact(&tx, ctx, device, contact, &now)?;
    tx.commit()?;
    let p = renewals::pending_for_device(reg.reader(), device.id)?
        .filter(|p| p.new_cert.id == id)
        .ok_or_else(|| Error::Internal("the pending renewal just recorded is gone".into()))?;
    Ok((p, injected))
}

/// The successor is the device's identity now: active, confirmed; the old certificate
/// revoked (superseded) when asked, and the CRL published.
#[allow(clippy::too_many_arguments)]
fn confirm(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    device: &Device,
    old: &CertRecord,
    p: &Pending,
    revoke_old: bool,
    contact: &Contact<'_>,
    crl: &crate::app::retire::crl::Publication,
) -> Result<(bool, Option<std::path::PathBuf>)> {
    let now = now_rfc3339();
    let tx = reg.write()?;
    record_contact(&tx, ctx, device, contact, &now)?;
    renewals::confirm(&tx, p.id, &now)?;
    if !certs::activate_unused(&tx, p.new_cert.id)? {
        return Err(Error::conflict(format!(
            "successor {} was revoked while it was being switched to; renew again with --rekey",
            p.new_cert.serial_hex
        )));
    }
    let revoked =
        revoke_old && revoke_superseded(&tx, ctx, device, old, &p.new_cert.serial_hex, &now)?;
    tx.event(
        EventKind::RenewalConfirmed,
        Some(device.id),
        ctx.actor,
        serde_json::json!({
            "cert_serial": p.new_cert.serial_hex,
            "fingerprint": p.new_cert.fingerprint,
            "supersedes": old.serial_hex,
            "rekey": p.rekey,
            "old_revoked": revoked,
        }),
        &now,
    )?;
    tx.commit()?;
    // Also after an abandoned successor's revocation earlier in the run.
    Ok((revoked, publish(reg, ctx, crl)?))
}

/// Publishes the CRL if a revocation left it stale (no-op otherwise).
fn publish(
    reg: &mut Store,
    ctx: &RenewContext<'_>,
    crl: &crate::app::retire::crl::Publication,
) -> Result<Option<std::path::PathBuf>> {
    Ok(
        crate::app::retire::crl::publish_if_stale(reg, Some(ctx.signer), crl, ctx.actor)
            .map_err(|e| Error::CrlNotPublished(Box::new(e)))?
            .map(|c| c.published.clone()),
    )
}
