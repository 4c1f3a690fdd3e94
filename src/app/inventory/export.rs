//! `inventory export`: stream devices out as CSV (re-importable), JSON or JSON Lines.

use std::io::Write;

use serde::Serialize;

use super::cell::neutralise;
use super::fields::{Field, ATTR_PREFIX};
use crate::error::{Error, Result};
use crate::store::inventory::{self as q, DeviceFilter};
use crate::store::Reader;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 4180 CSV with formula-safe cells; `import --mode upsert` takes it back unchanged.
    Csv,
    /// One JSON array of device objects (every field, timestamps, attributes).
    Json,
    /// One device object per line.
    Jsonl,
}

fn io(e: std::io::Error) -> Error {
    Error::io("<export output>", e)
}

fn csv_err(e: csv::Error) -> Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => io(e),
        other => Error::input(format!("writing CSV: {other:?}")),
    }
}

/// Writes the filtered devices to `out`; returns the number of devices. `progress`
/// is called every few thousand devices with the count so far.
pub fn export(
    conn: &Reader,
    filter: &DeviceFilter,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    match format {
        Format::Csv => export_csv(conn, filter, out, progress),
        Format::Json | Format::Jsonl => {
            let mut n = 0u64;
            if format == Format::Json {
                out.write_all(b"[").map_err(io)?;
            }
            q::for_each_device(conn, filter, |d| {
                if format == Format::Json {
                    out.write_all(if n == 0 { b"\n" } else { b",\n" })
                        .map_err(io)?;
                }
                serde_json::to_writer(&mut *out, &d).map_err(|e| io(e.into()))?;
                if format == Format::Jsonl {
                    out.write_all(b"\n").map_err(io)?;
                }
                n += 1;
                if n % 8192 == 0 {
                    progress(n);
                }
                Ok(())
            })?;
            if format == Format::Json {
                out.write_all(if n == 0 { b"]\n" } else { b"\n]\n" })
                    .map_err(io)?;
            }
            progress(n);
            Ok(n)
        }
    }
}

fn export_csv(
    conn: &Reader,
    filter: &DeviceFilter,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let attrs = q::attribute_keys(conn, filter)?;
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    for f in Field::ALL {
        w.write_field(f.name()).map_err(csv_err)?;
    }
    for a in &attrs {
        w.write_field(neutralise(&format!("{ATTR_PREFIX}{a}")).as_bytes())
            .map_err(csv_err)?;
    }
    w.write_record(None::<&[u8]>).map_err(csv_err)?;
    let mut n = 0u64;
    let count = q::for_each_row(conn, filter, |cols| {
        for c in &cols[..Field::COUNT] {
            match c {
                Some(v) => w.write_field(neutralise(v).as_bytes()),
                None => w.write_field(b""),
            }
            .map_err(csv_err)?;
        }
        if !attrs.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = match cols[Field::COUNT] {
                Some(j) => serde_json::from_str(j).unwrap_or_default(),
                None => Default::default(),
            };
            for a in &attrs {
                match map.get(a) {
                    Some(serde_json::Value::String(s)) => w.write_field(neutralise(s).as_bytes()),
                    Some(other) => w.write_field(neutralise(&other.to_string()).as_bytes()),
                    None => w.write_field(b""),
                }
                .map_err(csv_err)?;
            }
        }
        w.write_record(None::<&[u8]>).map_err(csv_err)?;
        n += 1;
        if n % 16384 == 0 {
            progress(n);
        }
        Ok(())
    })?;
    w.flush().map_err(io)?;
    progress(count);
    Ok(count)
}
