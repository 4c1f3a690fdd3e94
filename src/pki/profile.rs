//! Certificate profiles: TOML files under `templates/` whose strings may contain
//! `{variable}` (required) or `{variable?}` (optional) placeholders filled from the
//! registry. The format is documented in cradle-profile(5).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::san;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// Profiles shipped with cradle (copied into `HOME/templates` by `cradle init`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("root-ca", include_str!("../../templates/root-ca.toml")),
    (
        "issuing-ca",
        include_str!("../../templates/issuing-ca.toml"),
    ),
    ("device", include_str!("../../templates/device.toml")),
    ("devid", include_str!("../../templates/devid.toml")),
    ("aws-iot", include_str!("../../templates/aws-iot.toml")),
    ("azure-dps", include_str!("../../templates/azure-dps.toml")),
];

/// Variables a profile may use besides `attr.NAME` (any extra inventory column).
pub const VARIABLES: &[&str] = &[
    "serial",
    "hardware_id",
    "model",
    "hw_rev",
    "batch",
    "site",
    "location",
    "owner",
    "mac",
    "mac_hex",
    "imei",
    "org",
    "ca_name",
    "profile",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    subject: toml::Table,
    #[serde(default)]
    san: RawSan,
    validity: RawValidity,
    #[serde(default)]
    extensions: RawExtensions,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSan {
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    uri: Vec<String>,
    #[serde(default)]
    email: Vec<String>,
    #[serde(default)]
    ip: Vec<String>,
    /// RFC 4108 hardwareModuleName otherName (IEEE 802.1AR DevIDs).
    hardware_module: Option<RawHardwareModule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardwareModule {
    /// hwType: an OID under the manufacturer's arc (dotted decimal).
    hw_type: String,
    /// hwSerialNum template.
    serial: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawValidity {
    days: Option<u32>,
    not_after: Option<String>,
    #[serde(default = "default_backdate")]
    backdate_seconds: u32,
}

fn default_backdate() -> u32 {
    300
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExtensions {
    #[serde(default)]
    ca: bool,
    path_len: Option<u8>,
    #[serde(default)]
    key_usage: Vec<String>,
    #[serde(default)]
    extended_key_usage: Vec<String>,
    #[serde(default = "yes")]
    subject_key_identifier: bool,
    #[serde(default = "yes")]
    authority_key_identifier: bool,
    #[serde(default)]
    crl_distribution_points: Vec<String>,
}

fn yes() -> bool {
    true
}

/// When a certificate stops being valid.
#[derive(Debug, Clone, PartialEq)]
pub enum Validity {
    Days(u32),
    Until(OffsetDateTime),
}

/// A string with placeholders, remembering the line it came from. Label templates
/// (`app::label`) render through the same type, so both speak one placeholder syntax.
#[derive(Debug, Clone)]
pub struct Tpl {
    pub raw: String,
    pub line: usize,
}

impl Tpl {
    /// A checked template: balanced braces and only known variables (errors name
    /// `source` and `line`).
    pub fn new(raw: &str, line: usize, source: &str) -> Result<Tpl> {
        let t = Tpl {
            raw: raw.to_string(),
            line,
        };
        check_placeholders(&t, source)?;
        Ok(t)
    }

    /// Substitutes placeholders; `Ok(None)` when an optional placeholder made it empty,
    /// `Err(name)` when the required variable `name` has no value.
    pub fn fill(&self, vars: &Vars) -> std::result::Result<Option<String>, String> {
        let t = self;
        let mut out = String::with_capacity(t.raw.len() + 16);
        let mut rest = t.raw.as_str();
        let mut dropped = false;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let c = rest.as_bytes()[i];
            if rest[i..].starts_with("{{") || rest[i..].starts_with("}}") {
                out.push(c as char);
                rest = &rest[i + 2..];
                continue;
            }
            if c == b'}' {
                // Refused by check_placeholders; kept literal rather than sliced past.
                out.push('}');
                rest = &rest[i + 1..];
                continue;
            }
            let end = rest[i..].find('}').map(|e| i + e).unwrap_or(rest.len());
            let inner = &rest[i + 1..end];
            let (name, optional) = match inner.strip_suffix('?') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            match vars.get(name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(v),
                None if optional => dropped = true,
                None => return Err(name.to_string()),
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        out.push_str(rest);
        if dropped && out.trim().is_empty() {
            return Ok(None);
        }
        if dropped && t.raw.trim().starts_with('{') && t.raw.trim().ends_with("?}") {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// For text that means nothing half-filled (SAN entries, hwSerialNum, a label
    /// line): `None` when any optional placeholder has no value, so
    /// `urn:dev:mac:{mac_hex?}` never becomes `urn:dev:mac:`.
    pub fn fill_whole(&self, vars: &Vars) -> std::result::Result<Option<String>, String> {
        let missing = placeholders(&self.raw)
            .into_iter()
            .any(|(name, optional)| optional && vars.get(&name).is_none_or(|v| v.is_empty()));
        if missing {
            return Ok(None);
        }
        self.fill(vars)
    }

    /// The variables this template needs (required ones).
    pub fn required(&self) -> impl Iterator<Item = String> {
        placeholders(&self.raw)
            .into_iter()
            .filter(|(_, optional)| !optional)
            .map(|(name, _)| name)
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub source: String,
    pub description: String,
    pub is_ca: bool,
    path_len: Option<u8>,
    subject: Vec<(DnType, &'static str, Tpl)>,
    san_dns: Vec<Tpl>,
    san_uri: Vec<Tpl>,
    san_email: Vec<Tpl>,
    san_ip: Vec<Tpl>,
    /// hwType arcs and the hwSerialNum template.
    san_hw: Option<(Vec<u64>, Tpl)>,
    pub validity: Validity,
    backdate: u32,
    key_usage: Vec<KeyUsagePurpose>,
    eku: Vec<ExtendedKeyUsagePurpose>,
    ski: bool,
    aki: bool,
    crl_dps: Vec<Tpl>,
}

/// Values for the variables of one rendering.
pub type Vars = BTreeMap<String, String>;

impl Profile {
    /// Resolves a profile name: an existing file path, `HOME/templates/NAME.toml`, or a
    /// built-in profile of that name.
    pub fn load(name: &str, templates_dir: Option<&Path>) -> Result<Profile> {
        let as_path = Path::new(name);
        if name.ends_with(".toml") || name.contains('/') {
            return Self::from_file(as_path);
        }
        if let Some(dir) = templates_dir {
            let p = dir.join(format!("{name}.toml"));
            if p.exists() {
                return Self::from_file(&p);
            }
        }
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            Error::input(format!(
                "no profile named '{name}' (built in: {}; or pass a .toml path)",
                names.join(", ")
            ))
        })?;
        Self::parse(name, &format!("templates/{name}.toml"), text)
    }

    pub fn from_file(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "profile".into());
        Self::parse(&name, &path.display().to_string(), &text)
    }

    /// Parses and checks a profile; every error names `source` and a line.
    pub fn parse(name: &str, source: &str, text: &str) -> Result<Profile> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(1);
            Error::input_at(source, line, e.message().trim().to_string())
        })?;
        let at = |needle: &str| line_of(text, needle);
        let tpl = |s: &str| -> Result<Tpl> { Tpl::new(s, at(s), source) };

        let mut subject = Vec::new();
        for (key, value) in &raw.subject {
            let (ty, label) = dn_type(key).ok_or_else(|| {
                Error::input_at(
                    source,
                    at(key),
                    format!("unknown subject attribute '{key}' (use CN, O, OU, C, ST, L, serialNumber, emailAddress)"),
                )
            })?;
            let s = value.as_str().ok_or_else(|| {
                Error::input_at(source, at(key), format!("subject.{key} must be a string"))
            })?;
            subject.push((ty, label, tpl(s)?));
        }
        if subject.is_empty() {
            return Err(Error::input_at(source, 1, "profile has no [subject]"));
        }

        let validity = match (&raw.validity.days, &raw.validity.not_after) {
            (Some(d), None) if *d > 0 => {
                if valid_until(OffsetDateTime::now_utc(), *d).is_none() {
                    return Err(Error::input_at(
                        source,
                        at("days"),
                        format!("validity.days {d} ends after the year 9999 (for no expiry use not_after = \"99991231235959Z\")"),
                    ));
                }
                Validity::Days(*d)
            }
            (None, Some(s)) => Validity::Until(parse_not_after(s).ok_or_else(|| {
                Error::input_at(
                    source,
                    at(s),
                    format!("validity.not_after '{s}' is not a date (use 2035-12-31, 2035-12-31T23:59:59Z or 99991231235959Z)"),
                )
            })?),
            _ => {
                return Err(Error::input_at(
                    source,
                    at("[validity]"),
                    "[validity] needs exactly one of days (> 0) or not_after",
                ))
            }
        };

        let mut key_usage = Vec::new();
        for k in &raw.extensions.key_usage {
            key_usage.push(key_usage_of(k).ok_or_else(|| {
                Error::input_at(source, at(k), format!("unknown key usage '{k}'"))
            })?);
        }
        let mut eku = Vec::new();
        for k in &raw.extensions.extended_key_usage {
            eku.push(eku_of(k).ok_or_else(|| {
                Error::input_at(source, at(k), format!("unknown extended key usage '{k}'"))
            })?);
        }
        let kind = raw.kind.clone().unwrap_or_else(|| {
            if raw.extensions.ca {
                "ca".into()
            } else {
                "end-entity".into()
            }
        });
        if !matches!(kind.as_str(), "ca" | "end-entity") {
            return Err(Error::input_at(
                source,
                at("kind"),
                format!("kind must be 'ca' or 'end-entity', not '{kind}'"),
            ));
        }
        let is_ca = kind == "ca";
        if is_ca != raw.extensions.ca {
            return Err(Error::input_at(
                source,
                at("kind"),
                "kind = \"ca\" and extensions.ca = true must agree",
            ));
        }

        let map = |v: &[String]| v.iter().map(|s| tpl(s)).collect::<Result<Vec<_>>>();
        let san_hw = match &raw.san.hardware_module {
            None => None,
            Some(hw) => {
                let arcs = san::parse_oid(&hw.hw_type).ok_or_else(|| {
                    Error::input_at(
                        source,
                        at(&hw.hw_type),
                        format!("hardware_module.hw_type '{}' is not an OID", hw.hw_type),
                    )
                })?;
                Some((arcs, tpl(&hw.serial)?))
            }
        };
        Ok(Profile {
            name: name.to_string(),
            source: source.to_string(),
            description: raw.description.unwrap_or_default(),
            is_ca,
            path_len: raw.extensions.path_len,
            subject,
            san_dns: map(&raw.san.dns)?,
            san_uri: map(&raw.san.uri)?,
            san_email: map(&raw.san.email)?,
            san_ip: map(&raw.san.ip)?,
            san_hw,
            validity,
            backdate: raw.validity.backdate_seconds,
            key_usage,
            eku,
            ski: raw.extensions.subject_key_identifier,
            aki: raw.extensions.authority_key_identifier,
            crl_dps: map(&raw.extensions.crl_distribution_points)?,
        })
    }

    /// The variables this profile needs (required ones), for early checks.
    pub fn required_variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.all_templates() {
            for name in t.required() {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    fn all_templates(&self) -> impl Iterator<Item = &Tpl> {
        self.subject
            .iter()
            .map(|(_, _, t)| t)
            .chain(&self.san_dns)
            .chain(&self.san_uri)
            .chain(&self.san_email)
            .chain(&self.san_ip)
            .chain(self.san_hw.iter().map(|(_, t)| t))
            .chain(&self.crl_dps)
    }

    /// Fills the profile for one subject and returns rcgen parameters (serial number
    /// and issuer are added by the caller).
    pub fn render(&self, vars: &Vars, now: OffsetDateTime) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (ty, label, t) in &self.subject {
            if let Some(v) = self.fill(t, vars)? {
                check_upper_bound(label, &v)?;
                let value = if matches!(ty, DnType::CustomDnType(_) | DnType::CountryName) {
                    match rcgen::string::PrintableString::try_from(v.clone()) {
                        Ok(p) => DnValue::PrintableString(p),
                        Err(_) if matches!(ty, DnType::CountryName) => {
                            return Err(
                                self.value_err(t, format!("{label} '{v}' is not a country code"))
                            )
                        }
                        Err(_) => DnValue::Utf8String(v),
                    }
                } else {
                    DnValue::Utf8String(v)
                };
                dn.push(ty.clone(), value);
            }
        }
        params.distinguished_name = dn;
        for t in &self.san_dns {
            if let Some(v) = self.fill_whole(t, vars)? {
                let s = v
                    .clone()
                    .try_into()
                    .map_err(|_| self.value_err(t, format!("'{v}' is not a valid DNS name")))?;
                params.subject_alt_names.push(SanType::DnsName(s));
            }
        }
        for t in &self.san_uri {
            if let Some(v) = self.fill_whole(t, vars)? {
                let s = v
                    .clone()
                    .try_into()
                    .map_err(|_| self.value_err(t, format!("'{v}' is not a valid URI")))?;
                params.subject_alt_names.push(SanType::URI(s));
            }
        }
        for t in &self.san_email {
            if let Some(v) = self.fill_whole(t, vars)? {
                let s = v
                    .clone()
                    .try_into()
                    .map_err(|_| self.value_err(t, format!("'{v}' is not a valid e-mail")))?;
                params.subject_alt_names.push(SanType::Rfc822Name(s));
            }
        }
        for t in &self.san_ip {
            if let Some(v) = self.fill_whole(t, vars)? {
                let ip = v
                    .parse()
                    .map_err(|_| self.value_err(t, format!("'{v}' is not an IP address")))?;
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        if let Some((hw_type, t)) = &self.san_hw {
            if let Some(serial) = self.fill_whole(t, vars)? {
                // rcgen's otherName holds only strings; hardwareModuleName is a
                // SEQUENCE, so the whole SAN is encoded here instead.
                let names = std::mem::take(&mut params.subject_alt_names);
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(
                        &[2, 5, 29, 17],
                        san::with_hardware_module(&names, hw_type, serial.as_bytes()),
                    ));
            }
        }
        for t in &self.crl_dps {
            if let Some(v) = self.fill(t, vars)? {
                params
                    .crl_distribution_points
                    .push(CrlDistributionPoint { uris: vec![v] });
            }
        }
        params.not_before = now - Duration::seconds(self.backdate as i64);
        params.not_after = match &self.validity {
            Validity::Days(d) => valid_until(now, *d).ok_or_else(|| {
                Error::input_at(
                    &self.source,
                    1,
                    format!("validity.days {d} ends after the year 9999"),
                )
            })?,
            Validity::Until(t) => *t,
        };
        params.is_ca = if self.is_ca {
            IsCa::Ca(match self.path_len {
                Some(n) => BasicConstraints::Constrained(n),
                None => BasicConstraints::Unconstrained,
            })
        } else if self.ski {
            // ExplicitNoCa writes basicConstraints CA:FALSE and the SKI.
            IsCa::ExplicitNoCa
        } else {
            IsCa::NoCa
        };
        params.key_usages = self.key_usage.clone();
        params.extended_key_usages = self.eku.clone();
        params.use_authority_key_identifier_extension = self.aki;
        Ok(params)
    }

    fn value_err(&self, t: &Tpl, msg: String) -> Error {
        Error::input_at(&self.source, t.line, msg)
    }

    /// Substitutes placeholders; `None` when an optional placeholder made it empty.
    fn fill(&self, t: &Tpl, vars: &Vars) -> Result<Option<String>> {
        t.fill(vars).map_err(|name| self.missing(t, &name))
    }

    /// See `Tpl::fill_whole`.
    fn fill_whole(&self, t: &Tpl, vars: &Vars) -> Result<Option<String>> {
        t.fill_whole(vars).map_err(|name| self.missing(t, &name))
    }

    fn missing(&self, t: &Tpl, name: &str) -> Error {
        self.value_err(
            t,
            format!(
                "profile '{}' needs '{name}' but it has no value for this device (set it in the registry, or write {{{name}?}} to make it optional)",
                self.name
            ),
        )
    }
}

/// Placeholders in a template string: (name, optional).
pub(crate) fn placeholders(s: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        if rest[i..].starts_with("{{") {
            rest = &rest[i + 2..];
            continue;
        }
        let Some(e) = rest[i..].find('}') else { break };
        let inner = &rest[i + 1..i + e];
        match inner.strip_suffix('?') {
            Some(n) => out.push((n.to_string(), true)),
            None => out.push((inner.to_string(), false)),
        }
        rest = &rest[i + e + 1..];
    }
    out
}

/// Whether every `{` opens a placeholder closed by a `}` before the next brace, and
/// every other brace is doubled (`{{`, `}}`). Counting braces is not enough: `}{`
/// balances yet has no placeholder.
pub(crate) fn braces_balanced(s: &str) -> bool {
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        let r = &rest[i..];
        if r.starts_with("{{") || r.starts_with("}}") {
            rest = &r[2..];
            continue;
        }
        if r.starts_with('}') {
            return false;
        }
        match r[1..].find(['{', '}']) {
            Some(e) if r.as_bytes()[1 + e] == b'}' => rest = &r[e + 2..],
            _ => return false,
        }
    }
    true
}

fn check_placeholders(t: &Tpl, source: &str) -> Result<()> {
    if !braces_balanced(&t.raw) {
        return Err(Error::input_at(
            source,
            t.line,
            format!("unbalanced braces in \"{}\"", t.raw),
        ));
    }
    for (name, _) in placeholders(&t.raw) {
        let known = VARIABLES.contains(&name.as_str())
            || name.strip_prefix("attr.").is_some_and(|a| {
                !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !known {
            return Err(Error::input_at(
                source,
                t.line,
                format!(
                    "unknown variable '{{{name}}}' (known: {}, attr.NAME)",
                    VARIABLES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// RFC 5280 Appendix A upper bounds (characters) of the subject attributes a profile
/// may set; a longer value makes a certificate strict verifiers refuse.
fn upper_bound(label: &str) -> usize {
    match label {
        "L" | "ST" => 128,
        "emailAddress" => 255,
        _ => 64,
    }
}

fn check_upper_bound(label: &str, value: &str) -> Result<()> {
    let n = value.chars().count();
    let max = upper_bound(label);
    if n > max {
        let shown: String = value.chars().take(40).collect();
        return Err(Error::input(format!(
            "subject {label} '{shown}…' is {n} characters; RFC 5280 allows at most {max} (use a shorter value, e.g. a shorter serial, or a profile that puts it in a SAN)"
        )));
    }
    Ok(())
}

fn dn_type(key: &str) -> Option<(DnType, &'static str)> {
    Some(match key {
        "CN" | "commonName" => (DnType::CommonName, "CN"),
        "O" | "organizationName" => (DnType::OrganizationName, "O"),
        "OU" | "organizationalUnitName" => (DnType::OrganizationalUnitName, "OU"),
        "C" | "countryName" => (DnType::CountryName, "C"),
        "ST" | "stateOrProvinceName" => (DnType::StateOrProvinceName, "ST"),
        "L" | "localityName" => (DnType::LocalityName, "L"),
        "serialNumber" => (DnType::CustomDnType(vec![2, 5, 4, 5]), "serialNumber"),
        "emailAddress" => (
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "emailAddress",
        ),
        _ => return None,
    })
}

fn key_usage_of(s: &str) -> Option<KeyUsagePurpose> {
    Some(match s {
        "digitalSignature" => KeyUsagePurpose::DigitalSignature,
        "nonRepudiation" | "contentCommitment" => KeyUsagePurpose::ContentCommitment,
        "keyEncipherment" => KeyUsagePurpose::KeyEncipherment,
        "dataEncipherment" => KeyUsagePurpose::DataEncipherment,
        "keyAgreement" => KeyUsagePurpose::KeyAgreement,
        "keyCertSign" => KeyUsagePurpose::KeyCertSign,
        "cRLSign" => KeyUsagePurpose::CrlSign,
        "encipherOnly" => KeyUsagePurpose::EncipherOnly,
        "decipherOnly" => KeyUsagePurpose::DecipherOnly,
        _ => return None,
    })
}

fn eku_of(s: &str) -> Option<ExtendedKeyUsagePurpose> {
    Some(match s {
        "serverAuth" => ExtendedKeyUsagePurpose::ServerAuth,
        "clientAuth" => ExtendedKeyUsagePurpose::ClientAuth,
        "codeSigning" => ExtendedKeyUsagePurpose::CodeSigning,
        "emailProtection" => ExtendedKeyUsagePurpose::EmailProtection,
        "timeStamping" => ExtendedKeyUsagePurpose::TimeStamping,
        "OCSPSigning" | "ocspSigning" => ExtendedKeyUsagePurpose::OcspSigning,
        oid if oid.contains('.') => {
            let parts: Option<Vec<u64>> = oid.split('.').map(|p| p.parse().ok()).collect();
            let parts = parts.filter(|p| p.len() >= 2)?;
            ExtendedKeyUsagePurpose::Other(parts)
        }
        _ => return None,
    })
}

/// `now` plus `days`, if that is no later than 9999-12-31 (the last GeneralizedTime).
fn valid_until(now: OffsetDateTime, days: u32) -> Option<OffsetDateTime> {
    now.checked_add(Duration::days(days as i64))
        .filter(|t| t.year() <= 9999)
}

/// Accepts `2035-12-31`, `2035-12-31T23:59:59Z`, or the GeneralizedTime
/// `99991231235959Z` ("no well-defined expiration", RFC 5280 4.1.2.5).
pub fn parse_not_after(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    if let Ok(d) = time::Date::parse(s, format_description!("[year]-[month]-[day]")) {
        return Some(d.with_hms(23, 59, 59).ok()?.assume_utc());
    }
    if s.len() == 15 && s.ends_with('Z') {
        let f = format_description!("[year][month][day][hour][minute][second]Z");
        return time::PrimitiveDateTime::parse(s, f)
            .ok()
            .map(|p| p.assume_utc());
    }
    None
}

pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first line that contains `needle` (1 if none): good enough to point at the
/// value that failed, since profile files are short.
pub(crate) fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// Where the home's editable copies of the profiles go.
pub fn install_builtins(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, text) in BUILTIN {
        let p = dir.join(format!("{name}.toml"));
        if !p.exists() {
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
            written.push(p);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse() {
        for (name, text) in BUILTIN {
            Profile::parse(name, name, text).unwrap();
        }
    }

    #[test]
    fn unknown_variable_names_the_line() {
        let text = "[subject]\nCN = \"{serial}\"\nO = \"{modle}\"\n[validity]\ndays = 1\n";
        let e = Profile::parse("x", "x.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3: unknown variable '{modle}'"), "{e}");
    }

    #[test]
    fn optional_variable_drops_the_attribute() {
        let text = "[subject]\nCN = \"{serial}\"\nOU = \"{batch?}\"\n[validity]\ndays = 1\n";
        let p = Profile::parse("x", "x.toml", text).unwrap();
        let mut vars = Vars::new();
        vars.insert("serial".into(), "A1".into());
        let params = p.render(&vars, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(params.distinguished_name.iter().count(), 1);
    }

    #[test]
    fn stray_braces_and_endless_validity_are_errors_not_panics() {
        // Found by the profile fuzz target's review: "}{" counted as balanced, then
        // render sliced past the '}'; days past 9999 overflowed the date.
        for (text, want) in [
            ("[subject]\nCN = \"}{\"\n[validity]\ndays = 1\n", "x.toml:2: unbalanced braces"),
            ("[subject]\nCN = \"a}{serial}\"\n[validity]\ndays = 1\n", "unbalanced braces"),
            ("[subject]\nCN = \"x\"\n[validity]\ndays = 4000000000\n", "x.toml:4: validity.days 4000000000 ends after the year 9999"),
            ("[subject]\nCN = \"x\"\n[validity]\ndays = 1\n[san.hardware_module]\nhw_type = \"2.18446744073709551615\"\nserial = \"{serial}\"\n", "is not an OID"),
        ] {
            let e = Profile::parse("x", "x.toml", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let p = Profile::parse(
            "x",
            "x.toml",
            "[subject]\nCN = \"{{{serial}}}\"\n[validity]\ndays = 1\n",
        )
        .unwrap();
        let mut vars = Vars::new();
        vars.insert("serial".into(), "A1".into());
        let params = p.render(&vars, OffsetDateTime::now_utc()).unwrap();
        let cn = params.distinguished_name.get(&DnType::CommonName).unwrap();
        assert_eq!(cn, &DnValue::Utf8String("{A1}".into()));
        // Rendering past 9999 (a profile parsed long ago) is an error too.
        let p = Profile::parse(
            "x",
            "x.toml",
            "[subject]\nCN = \"x\"\n[validity]\ndays = 3000\n",
        )
        .unwrap();
        let late = OffsetDateTime::from_unix_timestamp(253_400_000_000).unwrap();
        let e = p.render(&vars, late).unwrap_err().to_string();
        assert!(e.contains("after the year 9999"), "{e}");
    }

    #[test]
    fn no_expiry_date_parses() {
        let t = parse_not_after("99991231235959Z").unwrap();
        assert_eq!(t.year(), 9999);
    }
}
