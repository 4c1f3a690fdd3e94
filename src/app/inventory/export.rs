//! `inventory export`: stream devices out as CSV (re-importable), JSON, JSON Lines or
//! an Excel workbook.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

use super::cell::neutralise;
use super::delimiter::Delimiter;
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
    /// An Excel workbook (Office Open XML): one sheet, every cell a text cell.
    Xlsx,
}

/// How CSV is written for the spreadsheet that will open it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvStyle {
    pub delimiter: Delimiter,
    /// Start with a UTF-8 byte order mark: without it Excel reads UTF-8 as the
    /// system's code page (`Zürich` shows as `ZÃ¼rich`).
    pub bom: bool,
}

/// The most data rows an xlsx sheet holds (1,048,576 rows, one is the header).
pub const XLSX_MAX_ROWS: u64 = 1_048_575;
/// The longest text an xlsx cell holds, in characters.
pub const XLSX_MAX_CELL: usize = 32_767;

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
    export_styled(conn, filter, format, CsvStyle::default(), out, progress)
}

/// [`export`], with CSV written in `style` (ignored by the other formats).
pub fn export_styled(
    conn: &Reader,
    filter: &DeviceFilter,
    format: Format,
    style: CsvStyle,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    match format {
        Format::Csv => export_csv(conn, filter, style, out, progress),
        Format::Xlsx => export_xlsx(conn, filter, out, progress),
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

/// One row of a tabular export: a cell per column, `None` when empty.
type Cells<'a> = [Option<Cow<'a, str>>];

/// The header and every row of the tabular formats: the documented fields in
/// order, then one cell per attribute in use (`None`: empty).
fn for_each_table_row(
    conn: &Reader,
    filter: &DeviceFilter,
    progress: &mut dyn FnMut(u64),
    header: &mut dyn FnMut(&[Cow<str>]) -> Result<()>,
    row: &mut dyn FnMut(&Cells) -> Result<()>,
) -> Result<u64> {
    let attrs = q::attribute_keys(conn, filter)?;
    let names: Vec<Cow<str>> = Field::ALL
        .iter()
        .map(|f| Cow::Borrowed(f.name()))
        .chain(
            attrs
                .iter()
                .map(|a| Cow::Owned(format!("{ATTR_PREFIX}{a}"))),
        )
        .collect();
    header(&names)?;
    let width = names.len();
    let mut n = 0u64;
    let count = q::for_each_row(conn, filter, |cols| {
        let mut cells: Vec<Option<Cow<str>>> = Vec::with_capacity(width);
        cells.extend(cols[..Field::COUNT].iter().map(|c| c.map(Cow::Borrowed)));
        if !attrs.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = match cols[Field::COUNT] {
                Some(j) => serde_json::from_str(j).unwrap_or_default(),
                None => Default::default(),
            };
            cells.extend(attrs.iter().map(|a| match map.get(a) {
                Some(serde_json::Value::String(s)) => Some(Cow::Owned(s.clone())),
                Some(other) => Some(Cow::Owned(other.to_string())),
                None => None,
            }));
        }
        row(&cells)?;
        n += 1;
        if n % 16384 == 0 {
            progress(n);
        }
        Ok(())
    })?;
    progress(count);
    Ok(count)
}

fn export_csv(
    conn: &Reader,
    filter: &DeviceFilter,
    style: CsvStyle,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    if style.bom {
        out.write_all(b"\xEF\xBB\xBF").map_err(io)?;
    }
    let w = std::cell::RefCell::new(
        csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .delimiter(style.delimiter.byte())
            .from_writer(out),
    );
    let count = for_each_table_row(
        conn,
        filter,
        progress,
        &mut |names| {
            let mut w = w.borrow_mut();
            for name in names {
                w.write_field(neutralise(name).as_bytes())
                    .map_err(csv_err)?;
            }
            w.write_record(None::<&[u8]>).map_err(csv_err)
        },
        &mut |cells| {
            let mut w = w.borrow_mut();
            for c in cells {
                match c {
                    Some(v) => w.write_field(neutralise(v).as_bytes()),
                    None => w.write_field(b""),
                }
                .map_err(csv_err)?;
            }
            w.write_record(None::<&[u8]>).map_err(csv_err)
        },
    )?;
    w.into_inner().flush().map_err(io)?;
    Ok(count)
}

fn xlsx_err(e: rust_xlsxwriter::XlsxError) -> Error {
    Error::Internal(format!("writing xlsx: {e}"))
}

/// Every cell is written as a text cell: a spreadsheet never evaluates one as a
/// formula, so values go out as they are (no `'` prefix) and IMEIs stay 15 digits
/// instead of becoming rounded numbers. The workbook is built in memory (rows go to a
/// temporary file as they are written) and then written to `out`.
fn export_xlsx(
    conn: &Reader,
    filter: &DeviceFilter,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let bold = rust_xlsxwriter::Format::new().set_bold();
    let text = rust_xlsxwriter::Format::new().set_num_format("@");
    let ws = wb.add_worksheet_with_constant_memory();
    ws.set_name("devices").map_err(xlsx_err)?;
    let ws = std::cell::RefCell::new(ws);
    let mut row: u32 = 0;
    let serial_col = Field::Serial.idx();
    for_each_table_row(
        conn,
        filter,
        progress,
        &mut |names| {
            let mut ws = ws.borrow_mut();
            for (c, name) in names.iter().enumerate() {
                ws.write_string_with_format(0, c as u16, name.as_ref(), &bold)
                    .map_err(xlsx_err)?;
            }
            ws.set_freeze_panes(1, 0).map_err(xlsx_err)?;
            Ok(())
        },
        &mut |cells| {
            if row as u64 == XLSX_MAX_ROWS {
                // Nothing is written: the output file only appears on success.
                return Err(Error::input(format!(
                    "more devices than fit in one xlsx sheet (at most {XLSX_MAX_ROWS} rows); narrow the export with --status, --site or --batch, or use --format csv"
                )));
            }
            row += 1;
            let mut ws = ws.borrow_mut();
            for (c, v) in cells.iter().enumerate() {
                let Some(v) = v else { continue };
                if v.len() > XLSX_MAX_CELL && v.chars().count() > XLSX_MAX_CELL {
                    let serial = cells[serial_col].as_deref().unwrap_or("?");
                    return Err(Error::input(format!(
                        "device '{serial}': a value of {} characters does not fit in an xlsx cell (at most {XLSX_MAX_CELL}); use --format csv",
                        v.chars().count()
                    )));
                }
                ws.write_string_with_format(row, c as u16, v.as_ref(), &text)
                    .map_err(xlsx_err)?;
            }
            Ok(())
        },
    )?;
    let bytes = wb.save_to_buffer().map_err(xlsx_err)?;
    out.write_all(&bytes).map_err(io)?;
    Ok(row as u64)
}
