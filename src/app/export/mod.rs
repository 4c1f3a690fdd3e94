//! Hand-off to cloud registries (`cradle export aws-iot | azure-dps | nrf-cloud`).
//!
//! Every cloud's files are built in memory first, from one read of the registry, with
//! a pre-flight that names every device that cannot be handed over and why. Only when
//! nothing failed (or the caller skips the failures) are the files written, each
//! atomically, and the export recorded as events: one for the export (cloud, counts,
//! SHA-256 of every file) and one per device it names.

pub mod aws_iot;
pub mod azure_dps;
pub mod nrf_cloud;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::outfile::OutFile;
use crate::pki::cert::{parse_der, sha256_hex};
use crate::store::certs::{certs_for_device, CertRecord, CertStatus};
use crate::store::devices::{Device, DeviceStatus};
use crate::store::inventory::{for_each_device, DeviceFilter};
use crate::store::{cas, now_rfc3339, Reader, Store};

/// Which cloud registry the files are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cloud {
    #[serde(rename = "aws-iot")]
    AwsIot,
    #[serde(rename = "azure-dps")]
    AzureDps,
    #[serde(rename = "nrf-cloud")]
    NrfCloud,
}

impl Cloud {
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::AwsIot => "aws-iot",
            Cloud::AzureDps => "azure-dps",
            Cloud::NrfCloud => "nrf-cloud",
        }
    }
}

/// One device as the exporters see it: the registry row and its certificates.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub device: Device,
    /// Every certificate of the device, oldest first.
    pub certs: Vec<CertRecord>,
}

impl Candidate {
    /// The newest active certificate: what the cloud should register.
    pub fn active(&self) -> Option<&CertRecord> {
        self.certs
            .iter()
            .rev()
            .find(|c| c.status == CertStatus::Active)
    }

    /// Retired or decommissioned: the cloud must stop accepting it.
    pub fn withdrawn(&self) -> bool {
        matches!(
            self.device.status,
            DeviceStatus::Retired | DeviceStatus::Decommissioned
        )
    }

    pub fn revoked(&self) -> impl Iterator<Item = &CertRecord> {
        self.certs
            .iter()
            .filter(|c| c.status == CertStatus::Revoked)
    }

    /// Why a device that is neither handed over nor withdrawn cannot be.
    pub fn no_cert_reason(&self) -> String {
        if self.certs.iter().any(|c| c.status == CertStatus::Unused) {
            "no active certificate (its certificate was never delivered: finish provisioning)"
                .into()
        } else {
            "no active certificate (issue or provision one first)".into()
        }
    }
}

/// A device the pre-flight refused, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub serial: String,
    pub reason: String,
}

/// One file of an export, built in memory.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// Default file name (inside the output directory).
    pub name: String,
    /// What the file is for (files of one kind may share a numbered name).
    pub kind: &'static str,
    /// Devices or records in it.
    pub rows: usize,
    pub bytes: Vec<u8>,
}

/// A device named in an export file, with the certificates (SHA-256 fingerprints)
/// the file carries for it.
#[derive(Debug, Clone)]
pub struct Handed {
    pub device_id: i64,
    /// Default name of the file (see `OutputFile::name`).
    pub file: String,
    pub certs: Vec<String>,
}

impl Handed {
    pub fn new(device_id: i64, file: &str, certs: Vec<String>) -> Handed {
        Handed {
            device_id,
            file: file.to_string(),
            certs,
        }
    }
}

/// What an exporter produced from the candidates.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<OutputFile>,
    /// Devices handed over for registration.
    pub registered: Vec<Handed>,
    /// Devices in a status-update (withdrawal) file.
    pub withdrawn: Vec<Handed>,
    /// Devices left out: retired/decommissioned ones a cloud has no status list for.
    pub not_exported: Vec<Problem>,
    pub problems: Vec<Problem>,
    /// Cloud-specific facts for the summary and the event (e.g. a verification cert).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Plan {
    pub fn problem(&mut self, serial: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            serial: serial.to_string(),
            reason: reason.into(),
        });
    }
}

/// Reads the filtered devices and their certificates in one snapshot.
pub fn candidates(db: &Reader, filter: &DeviceFilter) -> Result<Vec<Candidate>> {
    let _snap = db.read_snapshot()?;
    let mut devices = Vec::new();
    for_each_device(db, filter, |d| {
        devices.push(d);
        Ok(())
    })?;
    devices
        .into_iter()
        .map(|device| {
            let certs = certs_for_device(db, device.id)?;
            Ok(Candidate { device, certs })
        })
        .collect()
}

/// The PEM of every CA certificate the registry knows, by id (the issuer of a device
/// certificate is named by its `ca_id`).
pub fn ca_pems(db: &Reader) -> Result<HashMap<i64, String>> {
    Ok(cas::all_cas(db)?
        .into_iter()
        .map(|c| (c.id, crate::pki::cert::to_pem("CERTIFICATE", &c.der)))
        .collect())
}

/// The certificate's subject common name, if it has exactly one.
pub fn common_name(der: &[u8]) -> Result<Option<String>> {
    let cert = parse_der(der)?;
    let mut cns = cert.subject().iter_common_name();
    let first = cns.next().and_then(|a| a.as_str().ok()).map(str::to_string);
    Ok(if cns.next().is_some() { None } else { first })
}

/// Where `-o` puts the files: into a directory (an existing one, or a path ending in
/// `/`), or at a file path, numbered `STEM-001.EXT`… when there are several.
pub fn target_paths(out: &Path, files: &[OutputFile]) -> Result<Vec<PathBuf>> {
    let is_dir = out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/');
    if is_dir {
        return Ok(files.iter().map(|f| out.join(&f.name)).collect());
    }
    if files.len() <= 1 {
        return Ok(files.iter().map(|_| out.to_path_buf()).collect());
    }
    let kinds: std::collections::BTreeSet<&str> = files.iter().map(|f| f.kind).collect();
    if kinds.len() > 1 {
        return Err(Error::usage(format!(
            "-o {}: this export writes {} files of {} kinds ({}): give a directory (an existing one, or a path ending in /)",
            out.display(),
            files.len(),
            kinds.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let ext = out
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let dir = out.parent().unwrap_or(Path::new(""));
    Ok((1..=files.len())
        .map(|i| dir.join(format!("{stem}-{i:03}{ext}")))
        .collect())
}

/// A written file, as the summary and the export event name it.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    pub path: String,
    pub kind: &'static str,
    pub rows: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub cloud: Cloud,
    /// False when the pre-flight refused devices (without --skip-invalid): nothing written.
    pub written: bool,
    /// Devices handed over for registration.
    pub devices: usize,
    /// Devices in a status-update (withdrawal) list.
    pub withdrawn: usize,
    /// Devices the pre-flight refused (left out with --skip-invalid).
    pub skipped: usize,
    pub problems: Vec<Problem>,
    /// Retired/decommissioned devices this cloud's files have no place for.
    pub not_exported: Vec<Problem>,
    pub files: Vec<WrittenFile>,
    /// The `cloud.exported` event that records this export.
    pub event: Option<i64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Writes the plan's files (unless the pre-flight failed and `skip_invalid` is off)
/// and records the export: the events are appended first, the files written, and the
/// transaction committed last, so the log names only files that exist whole. A failure
/// part way leaves the files already committed (each is whole) and records nothing.
pub fn write_and_record(
    reg: &mut Store,
    cloud: Cloud,
    plan: Plan,
    out: &Path,
    skip_invalid: bool,
    filter: &DeviceFilter,
    actor: &Actor,
) -> Result<ExportSummary> {
    let mut summary = ExportSummary {
        cloud,
        written: false,
        devices: plan.registered.len(),
        withdrawn: plan.withdrawn.len(),
        skipped: plan.problems.len(),
        problems: plan.problems,
        not_exported: plan.not_exported,
        files: Vec::new(),
        event: None,
        extra: plan.extra,
    };
    if !summary.problems.is_empty() && !skip_invalid {
        summary.skipped = 0;
        return Ok(summary);
    }
    if plan.files.is_empty() {
        return Ok(summary);
    }
    let paths = target_paths(out, &plan.files)?;
    if out.as_os_str().to_string_lossy().ends_with('/') && !out.is_dir() {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    summary.files = plan
        .files
        .iter()
        .zip(&paths)
        .map(|(f, path)| WrittenFile {
            path: path.display().to_string(),
            kind: f.kind,
            rows: f.rows,
            sha256: sha256_hex(&f.bytes),
        })
        .collect();
    let name_of: HashMap<&str, &str> = plan
        .files
        .iter()
        .zip(&summary.files)
        .map(|(f, w)| (f.name.as_str(), w.path.as_str()))
        .collect();
    let now = now_rfc3339();
    let reg_files = reg.files();
    let tx = reg.write()?;
    let mut details = serde_json::json!({
        "cloud": cloud.as_str(),
        "devices": summary.devices,
        "withdrawn": summary.withdrawn,
        "skipped": summary.skipped,
        "files": summary.files,
        "filter": {
            "status": filter.status.map(|s| s.as_str()),
            "site": filter.site,
            "batch": filter.batch,
            "since": filter.since,
        },
    });
    if let Some(d) = details.as_object_mut() {
        for (k, v) in &summary.extra {
            d.insert(k.clone(), v.clone());
        }
    }
    let export_id = tx.event(EventKind::CloudExported, None, actor, details, &now)?;
    for (list, action) in [
        (&plan.registered, "register"),
        (&plan.withdrawn, "withdraw"),
    ] {
        for h in list {
            let file = name_of.get(h.file.as_str()).copied().unwrap_or(&h.file);
            let d = serde_json::json!({
                "cloud": cloud.as_str(),
                "action": action,
                "export_event": export_id,
                "file": file,
                "certs": h.certs,
            });
            tx.event_json(
                EventKind::CloudExported,
                Some(h.device_id),
                actor,
                &d.to_string(),
                &now,
            )?;
        }
    }
    // With the write lock held and the events appended, each file is committed as soon
    // as it is written (one open file and buffer at a time, however many files an export
    // has); a failure rolls the events back.
    let files = reg_files;
    for (f, path) in plan.files.iter().zip(&paths) {
        let mut w = OutFile::create(path, 0o644, &files)?;
        w.write_all(&f.bytes).map_err(|e| Error::io(path, e))?;
        w.commit()?;
    }
    tx.commit()?;
    summary.written = true;
    summary.event = Some(export_id);
    Ok(summary)
}

/// Names for `count` files of one kind: `STEM.EXT` when one is enough, else
/// `STEM-001.EXT`….
pub fn numbered_names(stem: &str, ext: &str, count: usize) -> Vec<String> {
    if count == 1 {
        return vec![format!("{stem}.{ext}")];
    }
    (1..=count)
        .map(|i| format!("{stem}-{i:03}.{ext}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, kind: &'static str) -> OutputFile {
        OutputFile {
            name: name.into(),
            kind,
            rows: 1,
            bytes: Vec::new(),
        }
    }

    #[test]
    fn one_file_goes_where_asked_several_get_numbers_or_need_a_directory() {
        let one = [file("onboard.csv", "onboard")];
        assert_eq!(
            target_paths(Path::new("x/out.csv"), &one).unwrap(),
            vec![PathBuf::from("x/out.csv")]
        );
        let three = [
            file("onboard-001.csv", "onboard"),
            file("onboard-002.csv", "onboard"),
            file("onboard-003.csv", "onboard"),
        ];
        assert_eq!(
            target_paths(Path::new("x/out.csv"), &three).unwrap(),
            vec![
                PathBuf::from("x/out-001.csv"),
                PathBuf::from("x/out-002.csv"),
                PathBuf::from("x/out-003.csv")
            ]
        );
        assert_eq!(
            target_paths(Path::new("d/"), &three).unwrap()[2],
            PathBuf::from("d/onboard-003.csv")
        );
        let mixed = [file("a.json", "template"), file("b.jsonl", "bulk")];
        let e = target_paths(Path::new("out.json"), &mixed).unwrap_err();
        assert!(e.to_string().contains("give a directory"), "{e}");
        assert_eq!(numbered_names("onboard", "csv", 1), ["onboard.csv"]);
        assert_eq!(numbered_names("e", "json", 2), ["e-001.json", "e-002.json"]);
    }
}
