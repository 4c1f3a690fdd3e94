//! `cradle label`: one label per device from a label template, as ZPL for a Zebra
//! printer, SVG or PNG, written to files or sent to a printer, and recorded as a
//! `label.rendered` event. Every label is rendered before anything is written, so a
//! template or payload error for one device writes nothing and records nothing.

pub mod png;
pub mod printer;
pub mod svg;
pub mod template;
pub mod zpl;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::app::identity::vars_for;
use crate::error::{Error, Result};
use crate::model::{Actor, CaRole, EventKind};
use crate::outfile::{OutFile, StagedFiles};
use crate::store::devices::{self, Device};
use crate::store::inventory::{self as q, DeviceFilter};
use crate::store::{cas, now_rfc3339, Reader, Store};

pub use printer::Printer;
pub use template::LabelTemplate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Zpl,
    Svg,
    Png,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Zpl => "zpl",
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

/// Which devices get a label.
#[derive(Debug, Clone)]
pub enum Selection {
    Serials(Vec<String>),
    Filter(DeviceFilter),
}

/// Where the labels go.
#[derive(Debug, Clone)]
pub enum Output {
    /// The caller's writer (standard output).
    Stream,
    /// One file: a ZPL stream of every label, or the one SVG/PNG label.
    File(PathBuf),
    /// A directory with one file per device, named after its serial.
    Dir(PathBuf),
    Printer(Printer, Duration),
}

pub struct Request<'a> {
    pub template: &'a LabelTemplate,
    pub format: Format,
    pub selection: Selection,
    pub output: Output,
    /// The home's organisation (`{org}`).
    pub org: &'a str,
}

/// One rendered label.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    pub serial: String,
    /// What the QR code says.
    pub payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// What a run did (the `--json` summary).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub labels: usize,
    pub format: Format,
    pub template: String,
    pub destination: String,
    /// Bytes written or sent, and their SHA-256 (files in serial order).
    pub bytes: usize,
    pub sha256: String,
    pub event: i64,
    pub items: Vec<Rendered>,
}

/// Renders, delivers and records the labels of `req`.
pub fn run(
    store: &mut Store,
    req: Request<'_>,
    actor: &Actor,
    stream: &mut dyn Write,
) -> Result<Summary> {
    let several_need_dir = |what: &str| {
        Error::usage(format!(
            "{what} holds one {} label; give -o DIR for one file per device (or --format zpl for one stream)",
            req.format.as_str()
        ))
    };
    let devices = select(store.reader(), &req.selection)?;
    if devices.len() > 1 && req.format != Format::Zpl {
        match &req.output {
            Output::File(p) => return Err(several_need_dir(&p.display().to_string())),
            Output::Stream => return Err(several_need_dir("standard output")),
            _ => {}
        }
    }
    if matches!(req.output, Output::Printer(..)) && req.format != Format::Zpl {
        return Err(Error::usage("--printer takes --format zpl"));
    }
    let ca_name = cas::active_ca(store.reader(), CaRole::Issuing)?
        .map(|c| c.name)
        .unwrap_or_default();
    let mut items = render_all(req.template, req.format, &devices, req.org, &ca_name)?;

    let mut hash = Sha256::new();
    let mut bytes = 0;
    for it in &items {
        hash.update(&it.bytes);
        bytes += it.bytes.len();
    }
    let joined = || {
        items
            .iter()
            .flat_map(|i| i.bytes.iter().copied())
            .collect::<Vec<u8>>()
    };
    let mut staged = StagedFiles::new();
    let destination = match &req.output {
        Output::Stream => {
            for it in &items {
                stream
                    .write_all(&it.bytes)
                    .map_err(|e| Error::io("standard output", e))?;
            }
            stream
                .flush()
                .map_err(|e| Error::io("standard output", e))?;
            "stdout".to_string()
        }
        Output::File(path) => {
            write_file(store, path, &joined(), &mut staged, true)?;
            for it in &mut items {
                it.file = Some(path.clone());
            }
            path.display().to_string()
        }
        Output::Dir(dir) => {
            if !dir.is_dir() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            for it in &mut items {
                let path = dir.join(format!("{}.{}", file_stem(&it.serial), req.format.as_str()));
                // One fsync per label would cost more than rendering it (a label
                // can be made again).
                write_file(store, &path, &it.bytes, &mut staged, false)?;
                it.file = Some(path);
            }
            dir.display().to_string()
        }
        Output::Printer(p, timeout) => {
            p.send(&joined(), *timeout)?;
            p.url()
        }
    };
    let sha256 = hex::encode(hash.finalize());
    let serials: Vec<&str> = items.iter().map(|i| i.serial.as_str()).collect();
    let tx = store.write()?;
    let event = tx.event(
        EventKind::LabelRendered,
        None,
        actor,
        serde_json::json!({
            "labels": items.len(),
            "format": req.format,
            "template": req.template.name,
            "destination": destination,
            "bytes": bytes,
            "sha256": sha256,
            "serials": serials,
        }),
        &now_rfc3339(),
    )?;
    tx.commit()?;
    staged.keep();
    Ok(Summary {
        labels: items.len(),
        format: req.format,
        template: req.template.name.clone(),
        destination,
        bytes,
        sha256,
        event,
        items,
    })
}

/// The selected devices: the serials in the order given (each once), or the filter's
/// devices in registry order.
pub fn select(db: &Reader, sel: &Selection) -> Result<Vec<Device>> {
    let mut out: Vec<Device> = Vec::new();
    match sel {
        Selection::Serials(serials) => {
            for s in serials {
                if out.iter().any(|d| &d.serial == s) {
                    continue;
                }
                out.push(devices::require_device(db, s)?);
            }
        }
        Selection::Filter(f) => {
            q::for_each_device(db, f, |d| {
                out.push(d);
                Ok(())
            })?;
            if out.is_empty() {
                return Err(Error::not_found(format!(
                    "no device matches{}{}",
                    f.status
                        .map(|s| format!(" --status {s}"))
                        .unwrap_or_default(),
                    f.batch
                        .as_ref()
                        .map(|b| format!(" --batch {b}"))
                        .unwrap_or_default()
                )));
            }
        }
    }
    Ok(out)
}

/// Every device's label in `format`; the first failure stops the run.
pub fn render_all(
    tpl: &LabelTemplate,
    format: Format,
    devices: &[Device],
    org: &str,
    ca_name: &str,
) -> Result<Vec<Rendered>> {
    // QR encoding (the mask search) is most of the work: on all cores, in order.
    devices
        .par_iter()
        .map(|d| {
            let vars = vars_for(d, org, ca_name, &tpl.name);
            let label = tpl.render(&d.serial, &vars)?;
            let bytes = match format {
                Format::Zpl => zpl::render(&label).into_bytes(),
                Format::Svg => svg::render(&label).into_bytes(),
                Format::Png => png::render(&label)?,
            };
            Ok(Rendered {
                serial: d.serial.clone(),
                payload: label.qr.payload,
                file: None,
                bytes,
            })
        })
        .collect::<Vec<Result<Rendered>>>()
        // The first failure in device order, whichever thread met it first.
        .into_iter()
        .collect()
}

/// Writes one output file atomically; a file that is new is removed again if the
/// event cannot be recorded.
fn write_file(
    store: &Store,
    path: &Path,
    data: &[u8],
    staged: &mut StagedFiles,
    sync: bool,
) -> Result<()> {
    let existed = path.exists();
    let mut f = OutFile::create(path, 0o644, &store.files())?;
    f.write_all(data).map_err(|e| Error::io(path, e))?;
    if sync {
        f.commit()?;
    } else {
        f.commit_unsynced()?;
    }
    if !existed {
        staged.add(path);
    }
    Ok(())
}

/// A file name for a serial: registry serials are already safe (letters, digits,
/// `-_.:`), but a row written behind cradle's back may not be, so anything else, and
/// a leading dot, becomes `%XX`.
fn file_stem(serial: &str) -> String {
    let mut out = String::with_capacity(serial.len());
    for (i, b) in serial.bytes().enumerate() {
        let safe =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':') || (b == b'.' && i > 0);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_stems_cannot_leave_the_directory() {
        assert_eq!(super::file_stem("ACME-01.a"), "ACME-01.a");
        assert_eq!(super::file_stem("../x/y"), "%2E.%2Fx%2Fy");
        assert_eq!(super::file_stem(".."), "%2E.");
        assert_eq!(super::file_stem(""), "%00");
    }
}
