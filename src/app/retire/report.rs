//! Certificates of sanitization (NIST SP 800-88 Rev. 1, Appendix G) from the
//! registry's wipe record: JSON for scripts, text and HTML for people.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::store::Reader;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::certs::{self, CertStatus};
use crate::store::devices::Device;
use crate::store::retire as rr;

pub const STANDARD: &str = "NIST SP 800-88 Rev. 1, Appendix G";

#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub document: String,
    pub standard: String,
    pub generated_at: String,
    pub generated_by: String,
    pub person: Person,
    pub media: Media,
    pub sanitization: Sanitization,
    pub attestation: Option<Attestation>,
    pub revoked_certificates: Vec<RevokedCert>,
    pub device_status: String,
    pub decommissioned_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Person {
    /// Who performed the sanitization (technician).
    pub name: Option<String>,
    pub organization: String,
    pub location: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Media {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: String,
    pub hardware_id: Option<String>,
    pub hardware_revision: Option<String>,
    pub media_type: Option<String>,
    /// Where the media came from (site / owner).
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sanitization {
    /// "attested" (device-signed over the device protocol) or "manual".
    pub record_kind: String,
    /// Clear, Purge or Destroy.
    pub level: String,
    pub method: String,
    pub tool: Option<String>,
    pub tool_version: Option<String>,
    pub verification_method: Option<String>,
    pub verified_by: Option<String>,
    pub date: String,
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attestation {
    pub hardware_id: Option<String>,
    pub nonce: Option<String>,
    pub erased: Vec<String>,
    pub counter: Option<u64>,
    pub signature: Option<String>,
    pub certificate_fingerprint: Option<String>,
    /// Verified when recorded (signature, nonce single-use, hardware id).
    pub verified_when_recorded: bool,
    /// Verified again now, while producing this certificate.
    pub verified_now: bool,
    pub verify_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevokedCert {
    pub cert_serial: String,
    pub fingerprint: String,
    pub reason: Option<String>,
    pub revoked_at: Option<String>,
}

fn title(level: &str) -> String {
    let mut c = level.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Writes the certificate of sanitization of `device` as `SERIAL.sanitization.json`
/// and `.html` into `dir` (each replaced atomically); returns the files written.
pub fn write(conn: &Reader, device: &Device, dir: &Path, org: &str) -> Result<Vec<PathBuf>> {
    let cert = build(conn, device, org)?;
    let json = serde_json::to_string_pretty(&cert)
        .map_err(|e| Error::Internal(format!("certificate of sanitization as JSON: {e}")))?
        + "\n";
    let html = to_html(&cert);
    let mut out = Vec::new();
    for (ext, body) in [("json", json), ("html", html)] {
        let p = dir.join(format!("{}.sanitization.{ext}", device.serial));
        crate::outfile::write_file_atomic(&p, body.as_bytes(), 0o644, true)?;
        out.push(p);
    }
    Ok(out)
}

/// Builds the certificate for `device` from its newest wipe record.
pub fn build(conn: &Reader, device: &Device, org: &str) -> Result<Certificate> {
    let w = rr::latest_wipe(conn, device.id)?.ok_or_else(|| {
        Error::not_found(format!(
            "device '{}' has no wipe record: run `cradle decommission {}` first",
            device.serial, device.serial
        ))
    })?;
    let attestation = match w.kind.as_str() {
        "attested" => {
            let v: serde_json::Value = w
                .attestation
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default();
            let check = super::wipe::reverify(conn, device, &w);
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            Some(Attestation {
                hardware_id: s("hardware_id"),
                nonce: w.nonce_hex.clone(),
                erased: v
                    .get("erased")
                    .and_then(|e| e.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                counter: v.get("counter").and_then(|c| c.as_u64()),
                signature: s("signature"),
                certificate_fingerprint: s("certificate_fingerprint"),
                verified_when_recorded: w.attestation_verified == Some(true),
                verified_now: check.is_ok(),
                verify_error: check.err().map(|e| e.to_string()),
            })
        }
        _ => None,
    };
    let revoked = certs::certs_for_device(conn, device.id)?
        .into_iter()
        .filter(|c| c.status == CertStatus::Revoked)
        .map(|c| RevokedCert {
            cert_serial: c.serial_hex,
            fingerprint: c.fingerprint,
            reason: c.revocation_reason,
            revoked_at: c.revoked_at,
        })
        .collect();
    let decommissioned_at = rr::step_row(conn, device.id, "decommission")?
        .filter(|s| s.status == "done")
        .and_then(|s| s.finished_at);
    let source = match (&device.site, &device.owner) {
        (Some(s), Some(o)) => Some(format!("{s} ({o})")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(o)) => Some(o.clone()),
        (None, None) => None,
    };
    Ok(Certificate {
        document: "Certificate of Sanitization".into(),
        standard: STANDARD.into(),
        generated_at: crate::store::now_rfc3339(),
        generated_by: format!("cradle {}", env!("CARGO_PKG_VERSION")),
        person: Person {
            name: w.technician.clone(),
            organization: org.to_string(),
            location: w.location.clone(),
        },
        media: Media {
            manufacturer: device
                .field("manufacturer")
                .or_else(|| Some(org.to_string())),
            model: device.model.clone(),
            serial_number: device.serial.clone(),
            hardware_id: device.hardware_id.clone(),
            hardware_revision: device.hw_rev.clone(),
            media_type: w.media_type.clone(),
            source,
        },
        sanitization: Sanitization {
            record_kind: w.kind.clone(),
            level: title(&w.level),
            method: w.method.clone(),
            tool: w.tool.clone(),
            tool_version: w.tool_version.clone(),
            verification_method: w.verification.clone(),
            verified_by: w.verified_by.clone(),
            date: w.recorded_at.clone(),
            destination: w.destination.clone(),
        },
        attestation,
        revoked_certificates: revoked,
        device_status: device.status.to_string(),
        decommissioned_at,
    })
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// Label/value rows by section, shared by the text and HTML renderings.
fn sections(c: &Certificate) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let mut out = vec![
        (
            "Person performing sanitization",
            vec![
                ("Name", opt(&c.person.name).to_string()),
                ("Organization", c.person.organization.clone()),
                ("Location", opt(&c.person.location).to_string()),
            ],
        ),
        (
            "Media information",
            vec![
                ("Manufacturer", opt(&c.media.manufacturer).to_string()),
                ("Model", opt(&c.media.model).to_string()),
                ("Serial number", c.media.serial_number.clone()),
                ("Hardware id", opt(&c.media.hardware_id).to_string()),
                (
                    "Hardware revision",
                    opt(&c.media.hardware_revision).to_string(),
                ),
                ("Media type", opt(&c.media.media_type).to_string()),
                ("Source", opt(&c.media.source).to_string()),
            ],
        ),
        (
            "Sanitization details",
            vec![
                ("Record", c.sanitization.record_kind.clone()),
                ("Method type (level)", c.sanitization.level.clone()),
                ("Method used", c.sanitization.method.clone()),
                ("Tool used", opt(&c.sanitization.tool).to_string()),
                (
                    "Tool version",
                    opt(&c.sanitization.tool_version).to_string(),
                ),
                (
                    "Verification method",
                    opt(&c.sanitization.verification_method).to_string(),
                ),
                ("Verified by", opt(&c.sanitization.verified_by).to_string()),
                ("Date", c.sanitization.date.clone()),
                (
                    "Media destination",
                    opt(&c.sanitization.destination).to_string(),
                ),
            ],
        ),
    ];
    let att = match &c.attestation {
        Some(a) => vec![
            (
                "Result",
                if a.verified_when_recorded && a.verified_now {
                    "VERIFIED (device-signed attestation; checked when recorded and again now)"
                        .to_string()
                } else {
                    format!(
                        "NOT VERIFIED ({})",
                        a.verify_error
                            .as_deref()
                            .unwrap_or("not verified when recorded")
                    )
                },
            ),
            ("Hardware id", opt(&a.hardware_id).to_string()),
            ("Nonce", opt(&a.nonce).to_string()),
            (
                "Erased",
                if a.erased.is_empty() {
                    "-".into()
                } else {
                    a.erased.join(", ")
                },
            ),
            (
                "Counter",
                a.counter
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "Signing certificate (SHA-256)",
                opt(&a.certificate_fingerprint).to_string(),
            ),
            ("Signature (DER, hex)", opt(&a.signature).to_string()),
        ],
        None => vec![(
            "Result",
            "none: manual record, not attested by the device".to_string(),
        )],
    };
    out.push(("Attestation", att));
    let mut dev = vec![
        ("Status", c.device_status.clone()),
        ("Decommissioned at", opt(&c.decommissioned_at).to_string()),
    ];
    for r in &c.revoked_certificates {
        dev.push((
            "Revoked certificate",
            format!(
                "{} ({}, {})",
                r.cert_serial,
                opt(&r.reason),
                opt(&r.revoked_at)
            ),
        ));
    }
    out.push(("Device record", dev));
    out
}

pub fn to_text(c: &Certificate) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", c.document.to_uppercase());
    let _ = writeln!(s, "{}", c.standard);
    let _ = writeln!(s, "generated {} by {}", c.generated_at, c.generated_by);
    for (title, rows) in sections(c) {
        let _ = writeln!(s, "\n{title}");
        for (k, v) in rows {
            let _ = writeln!(s, "  {k:<31} {v}");
        }
    }
    s
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    crate::html::escape(s)
}

pub fn to_html(c: &Certificate) -> String {
    let e = html_escape;
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{} - {}</title>\n<style>\nbody{{font-family:sans-serif;max-width:50em;margin:2em auto;color:#111}}\nh1{{font-size:1.4em;margin-bottom:0}}\ntable{{border-collapse:collapse;width:100%;margin-bottom:1em}}\nth,td{{border:1px solid #999;padding:.3em .5em;text-align:left;vertical-align:top}}\nth{{width:35%;background:#eee}}\ntd{{word-break:break-all}}\n</style>\n</head>\n<body>\n<h1>{}</h1>\n<p>{}<br>Generated {} by {}</p>\n",
        e(&c.document),
        e(&c.media.serial_number),
        e(&c.document),
        e(&c.standard),
        e(&c.generated_at),
        e(&c.generated_by)
    );
    for (title, rows) in sections(c) {
        let _ = writeln!(s, "<h2>{}</h2>\n<table>", e(title));
        for (k, v) in rows {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", e(k), e(&v));
        }
        let _ = writeln!(s, "</table>");
    }
    let _ = writeln!(
        s,
        "<h2>Signature</h2>\n<table>\n<tr><th>Validated by (name, title)</th><td>&nbsp;</td></tr>\n<tr><th>Signature and date</th><td>&nbsp;</td></tr>\n</table>\n</body>\n</html>"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_hostile_fields() {
        assert_eq!(
            html_escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
