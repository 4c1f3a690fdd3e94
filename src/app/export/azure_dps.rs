//! Azure IoT Hub Device Provisioning Service: X.509 individual enrollments as bodies
//! of the bulk enrollment operation (`{"mode": …, "enrollments": […]}`, at most 10
//! each, one body per line of a JSON Lines file), or one enrollment group whose
//! signing certificate is the issuing CA.
//! DPS revokes by disabling, not by CRL: withdrawn devices come out as enrollments
//! with `provisioningStatus: disabled` (mode `update`, which creates or replaces).

use base64::Engine;
use serde_json::{json, Value};

use super::{common_name, Candidate, Handed, OutputFile, Plan};
use crate::error::{Error, Result};
use crate::pki::cert::to_pem;
use crate::store::CertRecord;

/// Enrollments per bulk operation (the DPS service limit).
pub const BATCH: usize = 10;
/// Longest registration ID cradle hands to DPS.
pub const MAX_REGISTRATION_ID: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--group ID`: one enrollment group signed by the issuing CA instead of
    /// individual enrollments.
    pub group: Option<String>,
    /// Individual enrollments in mode `update` (create or replace) instead of `create`.
    pub update: bool,
}

/// DPS registration IDs: lower-case alphanumerics and `-._:`, at most 64 characters.
pub fn check_registration_id(id: &str, max: usize) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.chars().count() > max {
        return Err(format!(
            "is {} characters long; DPS allows at most {max}",
            id.chars().count()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:".contains(*c)))
    {
        return Err(format!(
            "contains {c:?}; DPS allows only lower-case a-z, 0-9 and - . _ :"
        ));
    }
    Ok(())
}

fn b64_pem(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(to_pem("CERTIFICATE", der))
}

fn enrollment(registration_id: &str, cert: &CertRecord, enabled: bool) -> Value {
    json!({
        "registrationId": registration_id,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": b64_pem(&cert.der)}}},
        },
        "provisioningStatus": if enabled { "enabled" } else { "disabled" },
    })
}

/// The certificate's CN as a registration ID, or why it cannot be one.
fn registration_id(cert: &CertRecord) -> std::result::Result<String, String> {
    let cn = common_name(&cert.der)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "its certificate has no (single) CN for the DPS registration ID".to_string()
        })?;
    check_registration_id(&cn, MAX_REGISTRATION_ID)
        .map_err(|e| format!("certificate CN '{}' {e}", cn.escape_default()))?;
    Ok(cn)
}

/// `issuing_ca` is the active issuing CA (id and DER), the group's signing certificate.
pub fn plan(cands: &[Candidate], opts: &Options, issuing_ca: (i64, &[u8])) -> Result<Plan> {
    let mut plan = Plan::default();
    if let Some(g) = &opts.group {
        check_registration_id(g, 128)
            .map_err(|e| Error::usage(format!("--group '{}' {e}", g.escape_default())))?;
    }
    let mode = if opts.update { "update" } else { "create" };
    let mut create = Bodies::new("enrollments", mode);
    let mut disable = Bodies::new("disabled", "update");
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for c in cands {
        let serial = &c.device.serial;
        let active = c.active();
        let withdraw = c.withdrawn() || active.is_none();
        // The enrollment's certificate: the active one, else the newest revoked one.
        let cert = if c.withdrawn() || active.is_none() {
            c.revoked().last().or(active)
        } else {
            active
        };
        let Some(cert) = cert else {
            plan.problem(serial, c.no_cert_reason());
            continue;
        };
        let id = match registration_id(cert) {
            Ok(id) => id,
            Err(e) => {
                plan.problem(serial, e);
                continue;
            }
        };
        if let Some(first) = seen.insert(id.clone(), serial.clone()) {
            plan.problem(
                serial,
                format!("registration ID '{id}' is also the one of device {first}"),
            );
            continue;
        }
        let handed = |file: &str| Handed::new(c.device.id, file, vec![cert.fingerprint.clone()]);
        if withdraw {
            disable.push(
                &mut plan.withdrawn,
                handed(disable.name()),
                enrollment(&id, cert, false),
            );
        } else if opts.group.is_some() {
            if cert.ca_id != Some(issuing_ca.0) {
                plan.problem(
                    serial,
                    "its certificate was issued by another CA than the group's signing certificate (the active issuing CA)",
                );
                continue;
            }
            plan.registered.push(handed("enrollment-group.json"));
        } else {
            create.push(
                &mut plan.registered,
                handed(create.name()),
                enrollment(&id, cert, true),
            );
        }
    }
    if let Some(g) = &opts.group {
        if !plan.registered.is_empty() {
            let body = json!({
                "enrollmentGroupId": g,
                "attestation": {
                    "type": "x509",
                    "x509": {"signingCertificates": {"primary": {"certificate": b64_pem(issuing_ca.1)}}},
                },
                "provisioningStatus": "enabled",
            });
            plan.files.push(OutputFile {
                name: "enrollment-group.json".into(),
                kind: "enrollment-group",
                rows: plan.registered.len(),
                bytes: pretty(&body),
            });
        }
    }
    create.finish(&mut plan.files);
    disable.finish(&mut plan.files);
    Ok(plan)
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("JSON values serialise");
    b.push(b'\n');
    b
}

/// One bulk-operation body (at most `BATCH` enrollments) per line of `STEM.jsonl`:
/// each line is what one `POST /enrollments` call takes, and a fleet of any size stays
/// one file instead of one per ten devices. Bodies are serialised as they fill.
struct Bodies {
    stem: &'static str,
    name: String,
    mode: &'static str,
    pending: Vec<Value>,
    bytes: Vec<u8>,
    rows: usize,
}

impl Bodies {
    fn new(stem: &'static str, mode: &'static str) -> Bodies {
        Bodies {
            stem,
            name: format!("{stem}.jsonl"),
            mode,
            pending: Vec::with_capacity(BATCH),
            bytes: Vec::new(),
            rows: 0,
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn push(&mut self, list: &mut Vec<Handed>, h: Handed, enrollment: Value) {
        list.push(h);
        self.pending.push(enrollment);
        self.rows += 1;
        if self.pending.len() == BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let body = json!({"mode": self.mode, "enrollments": self.pending});
        serde_json::to_writer(&mut self.bytes, &body).expect("JSON values serialise");
        self.bytes.push(b'\n');
        self.pending.clear();
    }

    fn finish(mut self, files: &mut Vec<OutputFile>) {
        self.flush();
        if self.rows > 0 {
            files.push(OutputFile {
                name: self.name,
                kind: self.stem,
                rows: self.rows,
                bytes: self.bytes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        assert!(check_registration_id("acme-000001.a_b:c", 64).is_ok());
        assert!(check_registration_id("ACME-1", 64)
            .unwrap_err()
            .contains("'A'"));
        assert!(check_registration_id(&"a".repeat(65), 64)
            .unwrap_err()
            .contains("65 characters"));
        assert!(check_registration_id("a b", 64).is_err());
        assert!(check_registration_id("", 64).is_err());
    }
}
