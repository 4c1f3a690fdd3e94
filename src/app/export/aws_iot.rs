//! AWS IoT Core: the bulk-registration input (one JSON object per line with the
//! provisioning template's parameters), the template itself, the certificate ids
//! (SHA-256 of the DER, hex) precomputed, the CA registration material (the CA
//! certificate, a verification certificate for a registration code, a JITP template),
//! and the status updates for revoked and withdrawn devices.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};

use super::{Candidate, Handed, OutputFile, Plan};
use crate::app::inventory::fields::Field;
use crate::error::{Error, Result};
use crate::pki::cert::{parse_der, sha256_hex, to_pem};
use crate::pki::signer::CaSigner;
use crate::store::CertStatus;

/// Longest template body AWS IoT accepts (characters).
pub const MAX_TEMPLATE_CHARS: usize = 10_240;
/// The three ways a template's certificate resource can name its certificate.
const CERT_PROPERTIES: [&str; 3] = [
    "CertificateSigningRequest",
    "CertificateId",
    "CertificatePem",
];
/// The parameters JITP fills from the device certificate.
const JITP_PARAMS: [&str; 8] = [
    "Country",
    "Organization",
    "OrganizationalUnit",
    "DistinguishedNameQualifier",
    "StateName",
    "CommonName",
    "SerialNumber",
    "Id",
];
const JITP_PREFIX: &str = "AWS::IoT::Certificate::";
/// Parameters cradle fills for bulk registration besides the device fields.
const BULK_PARAMS: [&str; 5] = [
    "ThingName",
    "SerialNumber",
    "CertificatePem",
    "CertificateId",
    "CACertificatePem",
];

/// A provisioning template, checked against AWS's rules.
#[derive(Debug, Clone)]
pub struct Template {
    pub text: String,
    /// Declared parameters and whether each has a default.
    pub params: Vec<(String, bool)>,
}

impl Template {
    /// Checks `text` (from `what`): at most 10,240 characters, a JSON object with
    /// Parameters and Resources, exactly one AWS::IoT::Certificate resource naming
    /// exactly one of CSR, certificate id or certificate PEM (not a CSR: cradle
    /// hands over issued certificates), every Ref declared, and every parameter
    /// without a default one cradle can fill.
    pub fn parse(what: &str, text: &str, jitp: bool) -> Result<Template> {
        let bad = |m: String| Error::input(format!("{what}: {m}"));
        let n = text.chars().count();
        if n > MAX_TEMPLATE_CHARS {
            return Err(bad(format!(
                "{n} characters; AWS IoT accepts a template of at most {MAX_TEMPLATE_CHARS}"
            )));
        }
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let empty = Map::new();
        let params = match v.get("Parameters") {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(bad("\"Parameters\" is not an object".into())),
        };
        let Some(Value::Object(resources)) = v.get("Resources") else {
            return Err(bad("no \"Resources\" object".into()));
        };
        let certs: Vec<(&String, &Value)> = resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::IoT::Certificate"))
            .collect();
        let [(cert_name, cert)] = certs.as_slice() else {
            return Err(bad(format!(
                "{} AWS::IoT::Certificate resources; a template needs exactly one",
                certs.len()
            )));
        };
        let named: Vec<&str> = CERT_PROPERTIES
            .into_iter()
            .filter(|p| cert.get("Properties").and_then(|ps| ps.get(*p)).is_some())
            .collect();
        match named.as_slice() {
            ["CertificateSigningRequest"] => {
                return Err(bad(format!(
                    "certificate resource '{cert_name}' takes a CSR; cradle hands over issued certificates: use CertificatePem or CertificateId"
                )))
            }
            [_] => {}
            _ => {
                return Err(bad(format!(
                    "certificate resource '{cert_name}' names {}; it must name exactly one of {}",
                    if named.is_empty() { "none".to_string() } else { named.join(" and ") },
                    CERT_PROPERTIES.join(", ")
                )))
            }
        }
        let mut refs = Vec::new();
        resources.values().for_each(|r| collect_refs(r, &mut refs));
        for r in refs {
            if !params.contains_key(r) && !resources.contains_key(r) {
                return Err(bad(format!(
                    "Ref '{r}' names no parameter or resource of the template"
                )));
            }
        }
        let mut out = Vec::new();
        for (name, p) in params {
            let has_default = p.get("Default").is_some();
            if !has_default {
                let fillable = if jitp {
                    jitp_field(name).is_some()
                } else {
                    BULK_PARAMS.contains(&name.as_str())
                        || jitp_field(name).is_some()
                        || Field::ALL.iter().any(|f| f.name() == name)
                };
                if !fillable {
                    return Err(bad(if jitp {
                        format!("parameter '{name}' has no default and JITP fills only {JITP_PREFIX}… parameters from the certificate")
                    } else {
                        format!(
                            "parameter '{name}' has no default and cradle has no value for it (it fills {}, {JITP_PREFIX}…, and the device fields {})",
                            BULK_PARAMS.join(", "),
                            Field::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                        )
                    }));
                }
            }
            out.push((name.clone(), has_default));
        }
        Ok(Template {
            text: text.to_string(),
            params: out,
        })
    }
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("Ref") {
                out.push(r);
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// `AWS::IoT::Certificate::X` → X, when X is one JITP defines.
fn jitp_field(param: &str) -> Option<&str> {
    param
        .strip_prefix(JITP_PREFIX)
        .filter(|f| JITP_PARAMS.contains(f))
}

/// The value JITP extracts for `field` from the certificate's subject.
fn subject_value(der: &[u8], field: &str) -> Result<Option<String>> {
    use x509_parser::der_parser::oid;
    let cert = parse_der(der)?;
    let s = cert.subject();
    let first = |mut it: Box<
        dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_,
    >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_string) };
    Ok(match field {
        "Country" => first(Box::new(s.iter_country())),
        "Organization" => first(Box::new(s.iter_organization())),
        "OrganizationalUnit" => first(Box::new(s.iter_organizational_unit())),
        "StateName" => first(Box::new(s.iter_state_or_province())),
        "CommonName" => first(Box::new(s.iter_common_name())),
        "DistinguishedNameQualifier" => first(Box::new(s.iter_by_oid(&oid!(2.5.4 .46)))),
        "SerialNumber" => first(Box::new(s.iter_by_oid(&oid!(2.5.4 .5)))),
        "Id" => Some(sha256_hex(der)),
        _ => None,
    })
}

/// AWS thing names: 1-128 of `a-zA-Z0-9:_-`.
pub fn check_thing_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "thing name '{}' must be 1-128 characters",
            name.escape_default()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_-".contains(*c)))
    {
        return Err(format!(
            "thing name '{}' contains {c:?}; AWS IoT allows a-z A-Z 0-9 : _ -",
            name.escape_default()
        ));
    }
    Ok(())
}

/// The bulk template cradle writes unless given one: a thing named after the
/// certificate CN with the serial as an attribute, the certificate by PEM, ACTIVE,
/// and the IoT policy when one is named.
pub fn default_template(policy: Option<&str>) -> String {
    let mut resources = json!({
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": "ThingName"},
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificatePem": {"Ref": "CertificatePem"}, "Status": "ACTIVE"},
        },
    });
    if let Some(p) = policy {
        resources["policy"] = json!({"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": p}});
    }
    let t = json!({
        "Parameters": {
            "ThingName": {"Type": "String"},
            "SerialNumber": {"Type": "String"},
            "CertificatePem": {"Type": "String"},
        },
        "Resources": resources,
    });
    serde_json::to_string_pretty(&t).expect("JSON values serialise")
}

/// The JITP template cradle writes unless given one: thing = CN, serial attribute from
/// the subject serialNumber, the certificate by the id AWS computes, ACTIVE.
pub fn default_jitp_template(policy: Option<&str>) -> String {
    let p = |n: &str| format!("{JITP_PREFIX}{n}");
    let mut resources = json!({
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Ref": p("CommonName")},
                "AttributePayload": {"serial": {"Ref": p("SerialNumber")}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": p("Id")}, "Status": "ACTIVE"},
        },
    });
    if let Some(pol) = policy {
        resources["policy"] =
            json!({"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": pol}});
    }
    let mut params = Map::new();
    for n in ["CommonName", "SerialNumber", "Id"] {
        params.insert(p(n), json!({"Type": "String"}));
    }
    serde_json::to_string_pretty(&json!({"Parameters": params, "Resources": resources}))
        .expect("JSON values serialise")
}

#[derive(Debug, Clone)]
pub struct Jitp {
    pub template: Template,
    /// The IAM role AWS IoT assumes to provision (registrationConfig.roleArn).
    pub role_arn: String,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub template: Template,
    pub jitp: Option<Jitp>,
    /// DER of the verification certificate (CN = the registration code), if asked for.
    pub verification_der: Option<Vec<u8>>,
}

/// Checks an AWS registration code: what `get-registration-code` returns (64 hex
/// digits); any 1-64 alphanumerics are accepted.
pub fn check_registration_code(code: &str) -> Result<()> {
    if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::usage(format!(
            "--registration-code '{}' is not an AWS registration code (1-64 letters and digits, as `aws iot get-registration-code` prints)",
            code.escape_default()
        )));
    }
    Ok(())
}

/// The verification certificate of AWS's CA registration flow: CN = the registration
/// code, signed by the CA key, for a fresh key that is thrown away (AWS only checks
/// the signature). Valid for 30 days.
pub fn verification_cert(signer: &CaSigner, code: &str, now: OffsetDateTime) -> Result<Vec<u8>> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
    check_registration_code(code)?;
    let key = crate::pki::keys::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, code);
    params.distinguished_name = dn;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(30);
    params.serial_number = Some(crate::pki::ca::random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, signer.issuer()).map_err(|e| {
        crate::pki::signer::signing_failed("signing the verification certificate", e)
    })?;
    Ok(cert.der().to_vec())
}

/// A JSON Lines file being built: serialised as each line comes, so a large export
/// holds bytes, not a tree of values per device.
#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    n: usize,
}

impl Lines {
    fn push(&mut self, v: &Value) {
        serde_json::to_writer(&mut self.bytes, v).expect("JSON values serialise");
        self.bytes.push(b'\n');
        self.n += 1;
    }
}

/// `ca_pems` maps CA ids to PEM; `issuing` is the active issuing CA (id, DER).
pub fn plan(
    cands: &[Candidate],
    opts: &Options,
    ca_pems: &HashMap<i64, String>,
    issuing: (i64, &[u8]),
) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut bulk = Lines::default();
    let mut manifest = Lines::default();
    let mut status = Lines::default();
    let mut seen: HashMap<String, String> = HashMap::new();
    'devices: for c in cands {
        let serial = &c.device.serial;
        // Revoked certificates always go out as REVOKED; the certificates of a
        // retired or decommissioned device that are still active as INACTIVE.
        let mut withdrawn_certs = Vec::new();
        for cert in &c.certs {
            let new_status = match cert.status {
                CertStatus::Revoked => "REVOKED",
                CertStatus::Active if c.withdrawn() => "INACTIVE",
                _ => continue,
            };
            status.push(&json!({"certificateId": sha256_hex(&cert.der), "newStatus": new_status}));
            withdrawn_certs.push(cert.fingerprint.clone());
        }
        let withdrawn_any = !withdrawn_certs.is_empty();
        if withdrawn_any {
            plan.withdrawn.push(Handed::new(
                c.device.id,
                "status-updates.jsonl",
                withdrawn_certs,
            ));
        }
        if c.withdrawn() {
            continue;
        }
        let Some(cert) = c.active() else {
            if !withdrawn_any {
                plan.problem(serial, c.no_cert_reason());
            }
            continue;
        };
        let cn = super::common_name(&cert.der)?;
        let thing = cn.clone().unwrap_or_else(|| serial.clone());
        if let Err(e) = check_thing_name(&thing) {
            plan.problem(serial, e);
            continue;
        }
        if let Some(first) = seen.insert(thing.clone(), serial.clone()) {
            plan.problem(
                serial,
                format!("thing name '{thing}' is also the one of device {first}"),
            );
            continue;
        }
        if let Some(j) = &opts.jitp {
            for (p, has_default) in &j.template.params {
                let Some(field) = jitp_field(p) else { continue };
                if !has_default && subject_value(&cert.der, field)?.is_none() {
                    plan.problem(
                        serial,
                        format!("the JITP template uses {p}, but the certificate subject ({}) has no {field}", cert.subject),
                    );
                    continue 'devices;
                }
            }
        }
        let pem = to_pem("CERTIFICATE", &cert.der);
        let ca_pem = cert.ca_id.and_then(|id| ca_pems.get(&id)).cloned();
        let mut line = Map::new();
        for (p, has_default) in &opts.template.params {
            let v = match p.as_str() {
                "ThingName" => Some(thing.clone()),
                "SerialNumber" => Some(serial.clone()),
                "CertificatePem" => Some(pem.clone()),
                "CertificateId" => Some(sha256_hex(&cert.der)),
                "CACertificatePem" => ca_pem.clone(),
                other => match jitp_field(other) {
                    Some(f) => subject_value(&cert.der, f)?,
                    None => c.device.field(other),
                },
            };
            match v {
                Some(v) => {
                    line.insert(p.clone(), Value::String(v));
                }
                None if *has_default => {}
                None => {
                    plan.problem(
                        serial,
                        format!("the provisioning template needs '{p}', which this device does not have"),
                    );
                    continue 'devices;
                }
            }
        }
        bulk.push(&Value::Object(line));
        manifest.push(&json!({
            "serial": serial,
            "thingName": thing,
            "certificateId": sha256_hex(&cert.der),
            "certificatePem": pem,
            "caCertificatePem": ca_pem,
        }));
        plan.registered.push(Handed::new(
            c.device.id,
            "bulk-registration.jsonl",
            vec![cert.fingerprint.clone()],
        ));
    }
    let file = |name: &str, kind: &'static str, rows: usize, bytes: Vec<u8>| OutputFile {
        name: name.into(),
        kind,
        rows,
        bytes,
    };
    if bulk.n > 0 {
        let mut t = opts.template.text.clone().into_bytes();
        if !t.ends_with(b"\n") {
            t.push(b'\n');
        }
        plan.files
            .push(file("provisioning-template.json", "template", 1, t));
        plan.files
            .push(file("bulk-registration.jsonl", "bulk", bulk.n, bulk.bytes));
        plan.files.push(file(
            "certificates.jsonl",
            "certificates",
            manifest.n,
            manifest.bytes,
        ));
    }
    if status.n > 0 {
        plan.files.push(file(
            "status-updates.jsonl",
            "status",
            status.n,
            status.bytes,
        ));
    }
    // The CA registration material.
    let ca_pem = to_pem("CERTIFICATE", issuing.1);
    plan.files
        .push(file("ca.pem", "ca", 1, ca_pem.clone().into_bytes()));
    let mut reg = json!({"caCertificate": ca_pem, "setAsActive": true});
    match &opts.verification_der {
        Some(der) => {
            let v = to_pem("CERTIFICATE", der);
            reg["verificationCertificate"] = json!(v);
            plan.files
                .push(file("verification.pem", "verification", 1, v.into_bytes()));
            let info = crate::pki::cert::info_of(der)?;
            plan.extra.insert(
                "verification_cert".into(),
                json!({"serial": info.serial_hex, "fingerprint": info.fingerprint, "subject": info.subject}),
            );
        }
        // Without a verification certificate AWS registers the CA for SNI-only use.
        None => reg["certificateMode"] = json!("SNI_ONLY"),
    }
    if let Some(j) = &opts.jitp {
        reg["allowAutoRegistration"] = json!(true);
        reg["registrationConfig"] = json!({"templateBody": j.template.text, "roleArn": j.role_arn});
        let mut t = j.template.text.clone().into_bytes();
        if !t.ends_with(b"\n") {
            t.push(b'\n');
        }
        plan.files
            .push(file("jitp-template.json", "jitp-template", 1, t));
    }
    let mut b = serde_json::to_vec_pretty(&reg).expect("JSON values serialise");
    b.push(b'\n');
    plan.files
        .push(file("ca-registration.json", "ca-registration", 1, b));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_templates_pass_their_own_checks() {
        let t = Template::parse("default", &default_template(Some("p")), false).unwrap();
        assert_eq!(t.params.len(), 3);
        let j = Template::parse("jitp", &default_jitp_template(None), true).unwrap();
        assert!(j.params.iter().all(|(p, _)| p.starts_with(JITP_PREFIX)));
    }

    #[test]
    fn templates_are_held_to_the_aws_rules() {
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_TEMPLATE_CHARS));
        let e = Template::parse("t", &long, false).unwrap_err().to_string();
        assert!(e.contains("at most 10240"), "{e}");
        let two = r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificatePem":"x","CertificateId":"y"}}}}"#;
        let e = Template::parse("t", two, false).unwrap_err().to_string();
        assert!(e.contains("CertificateId and CertificatePem"), "{e}");
        let none = r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{}}}}"#;
        assert!(Template::parse("t", none, false)
            .unwrap_err()
            .to_string()
            .contains("names none"));
        let csr = r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateSigningRequest":"x"}}}}"#;
        assert!(Template::parse("t", csr, false)
            .unwrap_err()
            .to_string()
            .contains("takes a CSR"));
        let zero = r#"{"Resources":{}}"#;
        assert!(Template::parse("t", zero, false)
            .unwrap_err()
            .to_string()
            .contains("0 AWS::IoT::Certificate"));
        let unknown = r#"{"Parameters":{"Colour":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificatePem":{"Ref":"Colour"}}}}}"#;
        assert!(Template::parse("t", unknown, false)
            .unwrap_err()
            .to_string()
            .contains("'Colour' has no default"));
        let dangling = r#"{"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificatePem":{"Ref":"Nope"}}}}}"#;
        assert!(Template::parse("t", dangling, false)
            .unwrap_err()
            .to_string()
            .contains("Ref 'Nope'"));
        let site = r#"{"Parameters":{"site":{"Type":"String"},"CertificatePem":{"Type":"String"}},"Resources":{"c":{"Type":"AWS::IoT::Certificate","Properties":{"CertificatePem":{"Ref":"CertificatePem"}}}}}"#;
        assert!(Template::parse("t", site, false).is_ok());
        assert!(Template::parse("t", site, true)
            .unwrap_err()
            .to_string()
            .contains("JITP fills only"));
    }

    #[test]
    fn thing_names_follow_the_aws_rules() {
        assert!(check_thing_name("ACME-000001:a_b").is_ok());
        assert!(check_thing_name("a b").is_err());
        assert!(check_thing_name(&"a".repeat(129)).is_err());
        assert!(check_registration_code(&"0f".repeat(32)).is_ok());
        assert!(check_registration_code("x y").is_err());
    }
}
