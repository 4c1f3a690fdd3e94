//! nRF Cloud's bulk onboarding file, `onboard.csv`, as Nordic's nrfcloud-utils writes
//! it: no header; deviceId, subType, tags (`|`), fwTypes (`|`), the device certificate
//! PEM in quotes; LF line ends; at most 1000 rows per file (nRF Cloud's limit).

use super::{numbered_names, Candidate, Handed, OutputFile, Plan, Problem};
use crate::error::{Error, Result};
use crate::pki::cert::to_pem;

/// Rows per file nRF Cloud accepts (`MAX_CSV_ROWS` in nrfcloud-utils).
pub const MAX_ROWS: usize = 1000;

/// Firmware types nRF Cloud knows for FOTA.
pub const FW_TYPES: [&str; 5] = ["APP", "MODEM", "BOOT", "SOFTDEVICE", "BOOTLOADER"];

#[derive(Debug, Clone)]
pub struct Options {
    pub sub_type: String,
    pub tags: Vec<String>,
    pub fw_types: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sub_type: String::new(),
            tags: Vec::new(),
            fw_types: vec!["APP".into(), "MODEM".into()],
        }
    }
}

/// A cell that cannot break nRF Cloud's parser: no separators, quotes or controls.
fn check_cell(what: &str, v: &str) -> Result<()> {
    if let Some(c) = v
        .chars()
        .find(|c| c.is_control() || matches!(c, ',' | '"' | '|'))
    {
        return Err(Error::usage(format!(
            "{what} '{}' contains {c:?}, which onboard.csv cannot carry",
            v.escape_default()
        )));
    }
    Ok(())
}

impl Options {
    /// `tags` and `fw_types` as given on the command line (`a|b`).
    pub fn new(sub_type: Option<&str>, tags: Option<&str>, fw_types: Option<&str>) -> Result<Self> {
        let split = |s: &str| -> Vec<String> {
            s.split('|')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        };
        let mut o = Options::default();
        if let Some(s) = sub_type {
            check_cell("--sub-type", s)?;
            o.sub_type = s.to_string();
        }
        if let Some(t) = tags {
            o.tags = split(t);
            for t in &o.tags {
                check_cell("tag", t)?;
            }
        }
        if let Some(f) = fw_types {
            o.fw_types = split(f);
            for t in &o.fw_types {
                if !FW_TYPES.contains(&t.as_str()) {
                    return Err(Error::usage(format!(
                        "--fw-types: '{t}' is not an nRF Cloud firmware type ({})",
                        FW_TYPES.join(", ")
                    )));
                }
            }
        }
        Ok(o)
    }
}

/// The nRF Cloud device id: the modem's attestation device UUID recorded with the
/// certificate, else `nrf-<IMEI>` (nrfcloud-utils' `--id_str nrf- --id_imei`).
fn device_id(
    c: &Candidate,
    cert: &crate::store::CertRecord,
) -> std::result::Result<String, String> {
    if let Some(uuid) = cert
        .device_attestation
        .as_ref()
        .and_then(|a| a.get("device_uuid"))
        .and_then(|u| u.as_str())
    {
        return Ok(uuid.to_string());
    }
    match c.device.imei.as_deref() {
        Some(imei) if !imei.is_empty() => Ok(format!("nrf-{imei}")),
        _ => Err("no nRF91 device UUID recorded with its certificate and no IMEI: nRF Cloud needs one for the device id".into()),
    }
}

pub fn plan(cands: &[Candidate], opts: &Options) -> Plan {
    let mut plan = Plan::default();
    let mut rows: Vec<(i64, &str, Vec<u8>)> = Vec::new();
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for c in cands {
        let serial = &c.device.serial;
        if c.withdrawn() {
            plan.not_exported.push(Problem {
                serial: serial.clone(),
                reason: format!(
                    "{}: onboard.csv only adds devices; remove it in nRF Cloud",
                    c.device.status
                ),
            });
            continue;
        }
        let Some(cert) = c.active() else {
            if c.revoked().next().is_some() {
                plan.not_exported.push(Problem {
                    serial: serial.clone(),
                    reason: "its certificates are revoked: remove it in nRF Cloud".into(),
                });
            } else {
                plan.problem(serial, c.no_cert_reason());
            }
            continue;
        };
        let id = match device_id(c, cert) {
            Ok(id) => id,
            Err(e) => {
                plan.problem(serial, e);
                continue;
            }
        };
        if let Some(first) = seen.insert(id.clone(), serial.clone()) {
            plan.problem(
                serial,
                format!("nRF Cloud device id {id} is also the id of device {first}"),
            );
            continue;
        }
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .quote_style(csv::QuoteStyle::Necessary)
            .from_writer(Vec::new());
        let pem = to_pem("CERTIFICATE", &cert.der);
        let record = [
            id.as_str(),
            &opts.sub_type,
            &opts.tags.join("|"),
            &opts.fw_types.join("|"),
            &pem,
        ];
        // The PEM always has line breaks, so the writer quotes it, as Nordic's does.
        if w.write_record(record).is_err() {
            plan.problem(serial, "could not write its CSV row");
            continue;
        }
        rows.push((
            c.device.id,
            &cert.fingerprint,
            w.into_inner().unwrap_or_default(),
        ));
    }
    let chunks: Vec<&[(i64, &str, Vec<u8>)]> = rows.chunks(MAX_ROWS).collect();
    let names = numbered_names("onboard", "csv", chunks.len());
    for (chunk, name) in chunks.into_iter().zip(names) {
        let mut bytes = Vec::with_capacity(chunk.iter().map(|r| r.2.len()).sum());
        for (id, fp, row) in chunk {
            bytes.extend_from_slice(row);
            plan.registered
                .push(Handed::new(*id, &name, vec![fp.to_string()]));
        }
        plan.files.push(OutputFile {
            name,
            kind: "onboard",
            rows: chunk.len(),
            bytes,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_what_the_file_cannot_carry() {
        let o = Options::new(Some("tracker"), Some("a| b |"), None).unwrap();
        assert_eq!(o.tags, ["a", "b"]);
        assert_eq!(o.fw_types, ["APP", "MODEM"]);
        assert!(Options::new(None, Some("x,y"), None).is_err());
        assert!(Options::new(Some("a\nb"), None, None).is_err());
        let e = Options::new(None, None, Some("APP|FIRMWARE")).unwrap_err();
        assert!(e.to_string().contains("'FIRMWARE'"), "{e}");
    }
}
