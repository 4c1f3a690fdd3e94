//! `inventory import`: stream a CSV file into the registry in one transaction.
//!
//! Rows are read one at a time (memory stays flat however long the file is); the
//! only per-file state is a map from a 64-bit hash of each row's key to its line, to
//! report duplicates inside the file. Every row is validated and applied inside one
//! write transaction; if any row is rejected (and `--partial` is not given), or on a
//! dry run, the transaction is rolled back, so the registry is left byte-for-byte
//! as it was. A crash or kill mid-way leaves an uncommitted transaction that SQLite
//! discards on the next open.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use csv::ByteRecord;
use serde::Serialize;

use super::asset;
use super::cell::{self, CLEAR};
use super::delimiter::Delimiter;
use super::fields::{self, Field, ATTR_PREFIX};
use crate::app::lifecycle;
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::outfile::OutFile;
use crate::store::bulk::Val;
use crate::store::devices::{Device, DeviceStatus};
use crate::store::inventory::{
    device_values, ImportDb, Lookup, MatchKey, DEVICE_VALUES, ROWS_PER_INSERT,
};
use crate::store::{now_rfc3339, Store};

/// What an import may do to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only new devices; an existing one is a conflict.
    Create,
    /// Only existing devices; a missing one is a conflict.
    Update,
    /// Create or update.
    Upsert,
}

/// What a blank cell means on update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blank {
    /// Leave the stored value unchanged (default).
    Keep,
    /// Clear the stored value.
    Clears,
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub mode: Mode,
    pub key: MatchKey,
    pub blank: Blank,
    /// Store unknown columns as attributes instead of rejecting the header.
    pub keep_extra: bool,
    /// Commit the good rows even if some are rejected.
    pub partial: bool,
    pub dry_run: bool,
    /// Write rejected rows, with a `reject_reason` column, to this CSV file.
    pub errors_path: Option<PathBuf>,
    /// Take the registry exclusively for the import (`Store::begin_bulk`), if no
    /// other process has it open.
    pub exclusive: bool,
    /// The field delimiter; `None` sniffs it from the header line.
    pub delimiter: Option<Delimiter>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            mode: Mode::Create,
            key: MatchKey::Serial,
            blank: Blank::Keep,
            keep_extra: false,
            partial: false,
            dry_run: false,
            errors_path: None,
            exclusive: false,
            delimiter: None,
        }
    }
}

/// The column an errors file adds; import ignores a column of this name so that a
/// fixed errors file can be imported as it is.
pub const REASON_COLUMN: &str = "reject_reason";

/// Why a row was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectKind {
    /// The row itself is malformed or invalid (exit 3).
    Invalid,
    /// The row is valid but conflicts with the registry (exit 7).
    Conflict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub file: String,
    /// Physical line where the record starts (quoted newlines counted).
    pub line: u64,
    pub kind: RejectKind,
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A cell whose value was stored in its canonical form (trimmed, IMEI digits, MAC
/// `aa:bb:…`), as `--dry-run` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Normalised {
    pub line: u64,
    pub column: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Updated {
    pub serial: String,
    pub line: u64,
    pub changes: Vec<Change>,
}

/// How many updated devices and errors a summary lists in full (the counts are exact).
pub const LIST_CAP: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub file: String,
    pub mode: Mode,
    #[serde(rename = "match")]
    pub key: MatchKey,
    pub blank: Blank,
    pub dry_run: bool,
    pub partial: bool,
    /// True when changes were written to the registry.
    pub committed: bool,
    /// True when the import had the registry to itself (`--exclusive`, and no other
    /// process had it open).
    pub exclusive: bool,
    /// The field delimiter used, and whether it was sniffed from the header line.
    pub delimiter: Delimiter,
    pub delimiter_detected: bool,
    /// Data rows (rows whose cells are all empty are not counted here).
    pub rows: u64,
    /// Rows whose cells were all empty (a spreadsheet's trailing `,,,,`), skipped.
    pub skipped_empty_rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Of the rejected rows, how many conflict with the registry (the rest are invalid).
    pub rejected_conflicts: u64,
    pub events: u64,
    /// Cells of valid rows stored in canonical form, and the first of them.
    pub normalised: u64,
    pub normalisations: Vec<Normalised>,
    pub normalisations_not_listed: u64,
    /// Per field, how many devices it changed on.
    pub changed_fields: BTreeMap<String, u64>,
    /// The first updated devices with their changes (up to `LIST_CAP`).
    pub updates: Vec<Updated>,
    pub updates_not_listed: u64,
    /// The first rejections (up to `LIST_CAP`; all go to the observer and the errors file).
    pub errors: Vec<Rejection>,
    pub errors_not_listed: u64,
    pub errors_file: Option<String>,
}

impl ImportSummary {
    /// Nothing would change: every row matched the registry already.
    pub fn nothing_changed(&self) -> bool {
        self.created == 0 && self.updated == 0
    }
}

/// Receives progress and rejections while an import runs (the CLI draws a bar).
pub trait Observer {
    /// The file's delimiter is known (before any row is read).
    fn delimiter(&mut self, _d: Delimiter, _detected: bool) {}
    /// Bytes of the file consumed so far.
    fn progress(&mut self, _bytes: u64) {}
    /// A row was rejected.
    fn rejected(&mut self, _r: &Rejection) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone)]
enum Column {
    Field(Field),
    Attr(String),
    Ignore,
}

/// A cell after the formula rule and the blank rules.
enum Want<'a> {
    Keep,
    Clear,
    Set(Cow<'a, str>),
}

impl Want<'_> {
    fn value(&self) -> Option<&str> {
        match self {
            Want::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// The keys are already hashes; hashing them again is wasted work.
#[derive(Default)]
struct IdentityHasher(u64);
impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key hash -> first line, for duplicates inside the file (see `import_file`).
type Seen = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

fn key_hash(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

struct Header {
    columns: Vec<Column>,
    raw: ByteRecord,
}

fn documented() -> String {
    Field::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_header(file: &str, rec: &ByteRecord, opts: &ImportOptions) -> Result<Header> {
    let mut columns = Vec::with_capacity(rec.len());
    let mut unknown = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in rec.iter().enumerate() {
        let mut name = std::str::from_utf8(raw).map_err(|e| {
            Error::input_at(
                file,
                1,
                format!(
                    "header column {} is not valid UTF-8 (byte 0x{:02x} at offset {})",
                    i + 1,
                    raw[e.valid_up_to()],
                    e.valid_up_to()
                ),
            )
        })?;
        if i == 0 {
            name = name.strip_prefix('\u{feff}').unwrap_or(name);
        }
        let name = cell::restore(name).trim();
        if name.is_empty() {
            return Err(Error::input_at(
                file,
                1,
                format!("header column {} is empty", i + 1),
            ));
        }
        let col = if let Some(f) = Field::parse(name) {
            Column::Field(f)
        } else if name == REASON_COLUMN {
            Column::Ignore
        } else if let Some(attr) = name.strip_prefix(ATTR_PREFIX) {
            fields::check_attr_name(attr)
                .map_err(|e| Error::input_at(file, 1, format!("column '{name}': {e}")))?;
            Column::Attr(attr.to_string())
        } else if opts.keep_extra {
            fields::check_attr_name(name)
                .map_err(|e| Error::input_at(file, 1, format!("column '{name}': {e}")))?;
            Column::Attr(name.to_string())
        } else {
            unknown.push(name.to_string());
            Column::Ignore
        };
        let canon = match &col {
            Column::Field(f) => f.name().to_string(),
            Column::Attr(a) => format!("{ATTR_PREFIX}{a}"),
            Column::Ignore => name.to_string(),
        };
        if let Some(prev) = seen.insert(canon.clone(), i + 1) {
            return Err(Error::input_at(
                file,
                1,
                format!(
                    "column '{canon}' appears twice in the header (columns {prev} and {})",
                    i + 1
                ),
            ));
        }
        columns.push(col);
    }
    if !unknown.is_empty() {
        // One unknown column holding the separators of another delimiter: say so.
        let hint = match unknown.as_slice() {
            [one] if one.contains(';') => " (it holds ';': for a semicolon-separated file pass --delimiter ';', or leave --delimiter out to detect it)",
            [one] if one.contains('\t') => " (it holds TAB: for a tab-separated file pass --delimiter tab, or leave --delimiter out to detect it)",
            _ => "",
        };
        let list = unknown
            .iter()
            .map(|u| format!("'{u}'"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::input_at(
            file,
            1,
            format!(
                "unknown column{} {list} in the header{hint} (documented columns: {}; name extra columns attr.NAME or pass --extra-columns keep to store them as attributes)",
                if unknown.len() > 1 { "s" } else { "" },
                documented()
            ),
        ));
    }
    let has = |f: Field| {
        columns
            .iter()
            .any(|c| matches!(c, Column::Field(g) if *g == f))
    };
    let key_field = key_field(opts.key);
    if !has(key_field) {
        return Err(Error::input_at(
            file,
            1,
            format!(
                "the header has no '{}' column (the match key; header: {})",
                key_field.name(),
                header_text(rec)
            ),
        ));
    }
    if opts.mode != Mode::Update && !has(Field::Serial) {
        return Err(Error::input_at(
            file,
            1,
            "the header has no 'serial' column (needed to create devices)",
        ));
    }
    Ok(Header {
        columns,
        raw: rec.clone(),
    })
}

fn header_text(rec: &ByteRecord) -> String {
    let s = rec
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    fields::excerpt(&s)
}

fn key_field(k: MatchKey) -> Field {
    match k {
        MatchKey::Serial => Field::Serial,
        MatchKey::Mac => Field::Mac,
        MatchKey::Imei => Field::Imei,
    }
}

/// Writes rejected rows with a reason column; the file appears when the import ends.
struct ErrorsFile {
    w: csv::Writer<OutFile>,
    path: PathBuf,
}

impl ErrorsFile {
    /// The file has the input's delimiter, and every cell goes through the export's
    /// formula rule (`cell::neutralise_raw`): a spreadsheet opening it executes nothing.
    fn create(
        path: &Path,
        header: &ByteRecord,
        delimiter: Delimiter,
        keep: &[PathBuf],
    ) -> Result<ErrorsFile> {
        let f = OutFile::create(path, 0o644, keep)?;
        let w = csv::WriterBuilder::new()
            .flexible(true)
            .delimiter(delimiter.byte())
            .from_writer(f);
        let mut ef = ErrorsFile {
            w,
            path: path.to_path_buf(),
        };
        ef.row(header, REASON_COLUMN)?;
        Ok(ef)
    }
    fn row(&mut self, rec: &ByteRecord, reason: &str) -> Result<()> {
        for f in rec.iter() {
            self.w
                .write_field(cell::neutralise_raw(f))
                .map_err(|e| csv_io(&self.path, e))?;
        }
        self.w
            .write_field(cell::neutralise_raw(reason.as_bytes()))
            .map_err(|e| csv_io(&self.path, e))?;
        self.w
            .write_record(None::<&[u8]>)
            .map_err(|e| csv_io(&self.path, e))
    }
    fn finish(self) -> Result<()> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        f.commit()
    }
}

fn csv_io(path: &Path, e: csv::Error) -> Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::io(path, io),
        other => Error::input(format!("{}: {other:?}", path.display())),
    }
}

/// Counts bytes read (for progress) and keeps a window of the most recent bytes, to
/// find the physical line where a record starts: the parser reports the position
/// before any blank lines or the LF of a CRLF that precede the record.
///
/// It also bounds one record: a stray quote would otherwise make the rest of the file
/// one field, held in memory whole.
struct Counting<R> {
    inner: R,
    n: u64,
    window: Vec<u8>,
    window_start: u64,
    /// Where the record being parsed starts (set by the parsing loop).
    record_start: u64,
}

const WINDOW: usize = 1 << 20;

/// The longest record (row) accepted, in bytes: far above the largest valid row
/// (notes and attribute values have their own, smaller limits).
pub const MAX_RECORD: u64 = 8 << 20;

/// The I/O error `Counting` stops a runaway record with.
#[derive(Debug, thiserror::Error)]
#[error("a record runs on for more than {} MiB (an unclosed quote?)", MAX_RECORD >> 20)]
struct RecordTooLong;

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.n - self.record_start > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                RecordTooLong,
            ));
        }
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.window.len() + k > 2 * WINDOW {
            let drop = self.window.len().saturating_sub(WINDOW);
            self.window.drain(..drop);
            self.window_start += drop as u64;
        }
        self.window.extend_from_slice(&buf[..k]);
        Ok(k)
    }
}

impl<R> Counting<R> {
    /// Line terminators between the parser's record position and the record's data.
    fn newlines_from(&self, byte: u64) -> u64 {
        let Some(off) = byte.checked_sub(self.window_start) else {
            return 0;
        };
        let from = (off as usize).min(self.window.len());
        self.window[from..]
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .filter(|&&b| b == b'\n')
            .count() as u64
    }
}

/// Records handed from the parsing thread to the importing thread, already decoded
/// and validated there, so that the importing thread does little but SQLite.
#[derive(Default)]
struct Batch {
    recs: Vec<ByteRecord>,
    lines: Vec<u64>,
    checked: Vec<Checked>,
    /// The checked values of every row, one after another (`Cell::Set` ranges).
    text: String,
    len: usize,
    /// Bytes of the file consumed when the batch was filled (progress).
    bytes: u64,
}

/// Where a checked cell's value is: kept, cleared, or a range of `Batch::text`
/// (formula rule undone, value normalised).
#[derive(Debug, Clone, Copy, Default)]
enum Cell {
    #[default]
    Keep,
    Clear,
    Set(usize, usize),
}

/// One row after decoding and validation (parsing thread).
#[derive(Default)]
struct Checked {
    /// The documented fields, in `Field` order.
    fields: [Cell; Field::COUNT],
    /// Attribute columns (column index, cell).
    attrs: Vec<(usize, Cell)>,
    /// Every problem of the row (`column 'mac': ...`).
    msgs: Vec<String>,
    /// The row has the wrong number of fields (`msgs` says so; nothing else checked).
    wrong_len: bool,
    /// Every cell is empty or white space: the row is skipped.
    empty: bool,
    /// Cells stored other than written: (field, cell as written, stored value).
    norms: Vec<(Field, String, String)>,
}

/// What the parsing thread needs to check rows.
struct RowRules {
    columns: Vec<Column>,
    blank: Blank,
}

/// Decodes and validates every cell of `rec`, collecting all problems of the row.
fn check_row(rules: &RowRules, rec: &ByteRecord, out: &mut Checked, text: &mut String) {
    out.fields = [Cell::Keep; Field::COUNT];
    out.attrs.clear();
    out.msgs.clear();
    out.norms.clear();
    out.wrong_len = false;
    out.empty = rec.iter().all(|f| f.trim_ascii().is_empty());
    if out.empty {
        return;
    }
    let ncols = rules.columns.len();
    if rec.len() != ncols {
        out.wrong_len = true;
        out.msgs.push(format!(
            "{} field{} but the header has {ncols} columns",
            rec.len(),
            if rec.len() == 1 { "" } else { "s" }
        ));
        return;
    }
    let mut keep = |v: &str| {
        let start = text.len();
        text.push_str(v);
        Cell::Set(start, text.len())
    };
    for (i, col) in rules.columns.iter().enumerate() {
        let raw = &rec[i];
        let colname = || match col {
            Column::Field(f) => f.name().to_string(),
            Column::Attr(a) => format!("{ATTR_PREFIX}{a}"),
            Column::Ignore => String::new(),
        };
        if matches!(col, Column::Ignore) {
            continue;
        }
        // Free text (notes, attributes) is kept exactly; every other cell is trimmed
        // before the formula rule, so " '=x" reads as "'=x" does.
        let free_text = matches!(col, Column::Field(Field::Notes) | Column::Attr(_));
        let (written, text) = match std::str::from_utf8(raw) {
            Ok(t) if free_text => (t, cell::restore(t)),
            Ok(t) => (t, cell::restore(t.trim())),
            Err(e) => {
                out.msgs.push(format!(
                    "column '{}': not valid UTF-8 (byte 0x{:02x} at offset {}); save the file as UTF-8",
                    colname(),
                    raw[e.valid_up_to()],
                    e.valid_up_to()
                ));
                continue;
            }
        };
        let want = if text.trim().is_empty() {
            match rules.blank {
                Blank::Keep => Want::Keep,
                Blank::Clears => Want::Clear,
            }
        } else if text.trim() == CLEAR {
            Want::Clear
        } else {
            Want::Set(Cow::Borrowed(text))
        };
        match col {
            Column::Field(f) => {
                let cell = match want {
                    Want::Set(v) => match f.check(&v) {
                        Ok(n) => {
                            if n != v || written.len() != t_len(written, free_text) {
                                out.norms.push((*f, written.to_string(), n.to_string()));
                            }
                            keep(&n)
                        }
                        Err(e) => {
                            out.msgs.push(format!("column '{}': {e}", f.name()));
                            continue;
                        }
                    },
                    // A blank serial/status under --blank clears just keeps it.
                    Want::Clear if !f.clearable() && text.trim().is_empty() => Cell::Keep,
                    Want::Clear if !f.clearable() => {
                        out.msgs.push(format!(
                            "column '{}': {CLEAR} cannot clear the {}",
                            f.name(),
                            f.name()
                        ));
                        continue;
                    }
                    Want::Clear => Cell::Clear,
                    Want::Keep => Cell::Keep,
                };
                out.fields[f.idx()] = cell;
            }
            Column::Attr(_) => {
                let cell = match want {
                    Want::Set(v) => {
                        if let Err(e) = fields::check_attr_value(&v) {
                            out.msgs.push(format!("column '{}': {e}", colname()));
                            continue;
                        }
                        keep(&v)
                    }
                    Want::Clear => Cell::Clear,
                    Want::Keep => Cell::Keep,
                };
                out.attrs.push((i, cell));
            }
            Column::Ignore => {}
        }
    }
}

/// The length of a cell once trimmed (free text is not trimmed).
fn t_len(written: &str, free_text: bool) -> usize {
    if free_text {
        written.len()
    } else {
        written.trim().len()
    }
}

const BATCH_ROWS: usize = 1024;
const BATCHES: usize = 4;

/// The parsing thread: fills recycled batches until the end of the file. Stops
/// quietly when the importer goes away (it hung up on an error).
fn parse_batches(
    mut rdr: csv::Reader<Counting<BufReader<File>>>,
    path: PathBuf,
    rules: RowRules,
    full: mpsc::SyncSender<Result<Batch>>,
    empty: mpsc::Receiver<Batch>,
) {
    // Where the next record starts, for an error that stops the file inside it.
    let mut next_line = rdr.position().line();
    loop {
        let Ok(mut b) = empty.recv() else { return };
        b.len = 0;
        b.text.clear();
        while b.len < BATCH_ROWS {
            if b.recs.len() == b.len {
                b.recs.push(ByteRecord::new());
                b.lines.push(0);
                b.checked.push(Checked::default());
            }
            match rdr.read_byte_record(&mut b.recs[b.len]) {
                Ok(true) => {
                    let rec = &b.recs[b.len];
                    b.lines[b.len] = match rec.position() {
                        Some(p) => p.line() + rdr.get_ref().newlines_from(p.byte()),
                        None => 0,
                    };
                    check_row(&rules, rec, &mut b.checked[b.len], &mut b.text);
                    b.len += 1;
                    let at = rdr.position().clone();
                    rdr.get_mut().record_start = at.byte();
                    next_line = at.line();
                }
                Ok(false) => break,
                Err(e) => {
                    let e = match e.kind() {
                        csv::ErrorKind::Io(io)
                            if io.get_ref().is_some_and(|r| r.is::<RecordTooLong>()) =>
                        {
                            Error::input_at(
                                path.display(),
                                next_line as usize,
                                RecordTooLong.to_string(),
                            )
                        }
                        _ => csv_io(&path, e),
                    };
                    let _ = full.send(Err(e));
                    return;
                }
            }
        }
        b.bytes = rdr.get_ref().n;
        #[cfg(test)]
        if tests::PANIC_AFTER_BATCHES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            panic!("parser fault injected by a test");
        }
        let done = b.len < BATCH_ROWS;
        if b.len > 0 && full.send(Ok(b)).is_err() {
            return;
        }
        if done {
            return;
        }
    }
}

/// Imports `path` into the registry. Rejected rows are reported through `obs` and in
/// the summary; the summary says whether anything was committed. Errors that stop
/// the whole file (unreadable, empty, bad header, registry) are returned as `Err`.
pub fn import(
    reg: &mut Store,
    path: &Path,
    opts: &ImportOptions,
    actor: &Actor,
    obs: &mut dyn Observer,
) -> Result<ImportSummary> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // A dry run writes nothing, so there is nothing to gain from the lock.
    let bulk = opts.exclusive && !opts.dry_run && reg.begin_bulk()?;
    let r = import_file(reg, path, f, opts, actor, obs);
    // Back to WAL whether the import committed, rolled back or failed.
    let back = if bulk { reg.end_bulk() } else { Ok(()) };
    let mut s = r?;
    back?;
    s.exclusive = bulk;
    Ok(s)
}

fn import_file(
    reg: &mut Store,
    path: &Path,
    f: File,
    opts: &ImportOptions,
    actor: &Actor,
    obs: &mut dyn Observer,
) -> Result<ImportSummary> {
    let file = path.display().to_string();
    let mut buf = BufReader::with_capacity(256 * 1024, f);
    // Skip a UTF-8 byte order mark; find the delimiter in the header line.
    let delimiter = {
        let head = buf.fill_buf().map_err(|e| Error::io(path, e))?;
        if head.is_empty() {
            return Err(Error::input_at(
                &file,
                1,
                format!("empty file: expected a header line ({})", documented()),
            ));
        }
        let bom = head.starts_with(b"\xEF\xBB\xBF");
        let d = match opts.delimiter {
            Some(d) => d,
            None => Delimiter::sniff(&file, &head[if bom { 3 } else { 0 }..])?,
        };
        if bom {
            buf.consume(3);
        }
        obs.delimiter(d, opts.delimiter.is_none());
        d
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter.byte())
        .from_reader(Counting {
            inner: buf,
            n: 0,
            window: Vec::with_capacity(2 * WINDOW),
            window_start: 0,
            record_start: 0,
        });
    let mut rec = ByteRecord::new();
    if !rdr
        .read_byte_record(&mut rec)
        .map_err(|e| csv_io(path, e))?
    {
        return Err(Error::input_at(
            &file,
            1,
            format!("no header line ({})", documented()),
        ));
    }
    let header = parse_header(&file, &rec, opts)?;
    let mut errors_file = match &opts.errors_path {
        Some(p) => {
            // Never over the file being read or the registry (the rename would lose them).
            let mut keep = reg.files().to_vec();
            keep.push(path.to_path_buf());
            Some(ErrorsFile::create(p, &header.raw, delimiter, &keep)?)
        }
        None => None,
    };

    let mut s = ImportSummary {
        file: file.clone(),
        mode: opts.mode,
        key: opts.key,
        blank: opts.blank,
        dry_run: opts.dry_run,
        partial: opts.partial,
        committed: false,
        exclusive: false,
        delimiter,
        delimiter_detected: opts.delimiter.is_none(),
        rows: 0,
        skipped_empty_rows: 0,
        created: 0,
        updated: 0,
        unchanged: 0,
        rejected: 0,
        rejected_conflicts: 0,
        events: 0,
        normalised: 0,
        normalisations: Vec::new(),
        normalisations_not_listed: 0,
        changed_fields: BTreeMap::new(),
        updates: Vec::new(),
        updates_not_listed: 0,
        errors: Vec::new(),
        errors_not_listed: 0,
        errors_file: opts.errors_path.as_ref().map(|p| p.display().to_string()),
    };

    let now = now_rfc3339();
    let file_json = serde_json::to_string(&file).expect("string");
    let key_f = key_field(opts.key);
    // Duplicates inside the file. Creating by serial needs no entry per row: the
    // UNIQUE index finds a serial this import already inserted (and its event names
    // the line); only rows rejected before insert are kept here, by key hash. Other
    // modes record every key in a temporary on-disk table (`first_line_of_key`).
    // Either way memory stays flat on million-row files.
    let db_dedup = opts.mode == Mode::Create && opts.key == MatchKey::Serial;
    let mut seen = Seen::default();
    let mut details = String::with_capacity(256);
    let mut msgs: Vec<String> = Vec::new();

    // Every event this import writes names a device it inserted or found in this
    // transaction, so the per-row foreign-key lookup is skipped (measured: ~5% CPU).
    let tx = reg.write_trusted()?;
    let mut db = ImportDb::new(&tx)?;
    let start_max_id = db.max_device_id()?;

    // Parsing runs on its own thread, a few batches ahead of validation and SQLite.
    let (tx_full, rx_full) = mpsc::sync_channel::<Result<Batch>>(BATCHES);
    let (tx_empty, rx_empty) = mpsc::sync_channel::<Batch>(BATCHES + 2);
    for _ in 0..BATCHES + 2 {
        let _ = tx_empty.send(Batch::default());
    }
    let err_path = path.to_path_buf();
    let rules = RowRules {
        columns: header.columns.clone(),
        blank: opts.blank,
    };
    let reader = std::thread::spawn(move || parse_batches(rdr, err_path, rules, tx_full, rx_empty));
    let cx = CreateCtx {
        columns: &header.columns,
        file_json: &file_json,
        actor,
        now: &now,
        start_max_id,
    };
    // Create mode by serial collects new devices and writes them in groups
    // (`flush_creates`); other modes look each row up first, one at a time.
    let mut creates: Vec<(usize, u64)> = Vec::with_capacity(ROWS_PER_INSERT);
    macro_rules! flush {
        ($batch:expr) => {
            flush_creates(
                &mut db,
                $batch,
                &mut creates,
                &cx,
                &mut seen,
                &mut s,
                obs,
                &mut errors_file,
            )?
        };
    }
    // Reports row `rec` at `line` as rejected, everywhere it must go.
    macro_rules! reject_row {
        ($rec:expr, $line:expr, $kind:expr, $msg:expr) => {
            reject(&mut s, obs, &mut errors_file, $rec, $line, $kind, $msg)?
        };
    }
    let mut pending: Option<Batch> = None;
    let mut idx = 0;
    loop {
        if pending.as_ref().is_none_or(|b| idx >= b.len) {
            if let Some(b) = pending.as_ref() {
                flush!(b);
            }
            if let Some(b) = pending.take() {
                obs.progress(b.bytes);
                let _ = tx_empty.send(b);
            }
            match rx_full.recv() {
                Ok(b) => {
                    pending = Some(b?);
                    idx = 0;
                    continue;
                }
                Err(_) => break,
            }
        }
        let batch = pending.as_ref().expect("a batch");
        let rec = &batch.recs[idx];
        let line = batch.lines[idx];
        let chk = &batch.checked[idx];
        idx += 1;
        if chk.empty {
            s.skipped_empty_rows += 1;
            continue;
        }
        s.rows += 1;
        if chk.wrong_len {
            // Rejections are reported in file order.
            flush!(batch);
            let msg = chk.msgs.join("; ");
            reject_row!(rec, line, RejectKind::Invalid, msg);
            continue;
        }
        msgs.clear();
        msgs.extend(chk.msgs.iter().cloned());
        let (wants, attr_wants) = row_wants(batch.text.as_str(), chk);

        // The match key must be present; duplicates inside the file are rejected.
        let key = wants[key_f.idx()].value();
        let mut key_h = None;
        match key {
            Some(k) if db_dedup => {
                let h = key_hash(k);
                match seen.get(&h) {
                    Some(&first) => msgs.push(format!(
                        "duplicate {} '{}': already at line {first} of this file",
                        key_f.name(),
                        k
                    )),
                    None => key_h = Some(h),
                }
            }
            Some(k) => {
                if let Some(first) = db.first_line_of_key(k, line)? {
                    msgs.push(format!(
                        "duplicate {} '{}': already at line {first} of this file",
                        key_f.name(),
                        k
                    ));
                }
            }
            None => {
                if !msgs
                    .iter()
                    .any(|m| m.starts_with(&format!("column '{}'", key_f.name())))
                {
                    msgs.push(format!(
                        "column '{}' is empty; it is the match key (--match {})",
                        key_f.name(),
                        opts.key.column()
                    ));
                }
            }
        }
        if !msgs.is_empty() {
            flush!(batch);
            if let Some(h) = key_h {
                // Not inserted, so the registry cannot name it as a duplicate later.
                seen.insert(h, line.min(u32::MAX as u64) as u32);
            }
            let m = msgs.join("; ");
            reject_row!(rec, line, RejectKind::Invalid, m);
            continue;
        }
        let key = key.expect("checked");
        for (f, from, to) in &chk.norms {
            s.normalised += 1;
            if s.normalisations.len() < LIST_CAP {
                s.normalisations.push(Normalised {
                    line,
                    column: f.name().to_string(),
                    from: from.clone(),
                    to: to.clone(),
                });
            } else {
                s.normalisations_not_listed += 1;
            }
        }

        // Find the device this row refers to.
        let existing = if opts.mode == Mode::Create && opts.key == MatchKey::Serial {
            None // the insert itself detects an existing serial
        } else {
            match db.find(opts.key, key)? {
                Lookup::None => None,
                Lookup::One(d) => Some(d),
                Lookup::Many(n) => {
                    let m = format!(
                        "{} '{key}' matches {n} devices in the registry; match on serial instead",
                        key_f.name()
                    );
                    reject_row!(rec, line, RejectKind::Conflict, m);
                    continue;
                }
            }
        };

        match (existing, opts.mode) {
            (Some(d), Mode::Create) => {
                match create_over_existing(&d, &wants, &header.columns, &attr_wants) {
                    None => s.unchanged += 1,
                    Some(m) => reject_row!(rec, line, RejectKind::Conflict, m),
                }
            }
            (None, Mode::Update) => {
                let m = format!(
                    "no device with {} '{key}' in the registry (--mode update changes existing devices only; use --mode upsert)",
                    key_f.name()
                );
                reject_row!(rec, line, RejectKind::Conflict, m);
            }
            (None, _) => {
                let Some(serial) = wants[Field::Serial.idx()].value() else {
                    let m = "column 'serial' is empty; a new device needs a serial".to_string();
                    reject_row!(rec, line, RejectKind::Invalid, m);
                    continue;
                };
                if let Err(m) = asset::cost_needs_currency(
                    wants[Field::Cost.idx()].value(),
                    wants[Field::Currency.idx()].value(),
                ) {
                    flush!(batch);
                    reject_row!(rec, line, RejectKind::Invalid, m);
                    continue;
                }
                if db_dedup {
                    creates.push((idx - 1, line));
                    if creates.len() == ROWS_PER_INSERT {
                        flush!(batch);
                    }
                    continue;
                }
                let mut vals: [Option<&str>; Field::COUNT] = [None; Field::COUNT];
                for (v, w) in vals.iter_mut().zip(wants.iter()) {
                    *v = w.value();
                }
                let attrs = attributes_for_create(&header.columns, &attr_wants);
                match db.insert(&vals, attrs.as_deref(), &now)? {
                    Some(id) => {
                        details.clear();
                        let _ = write!(
                            details,
                            r#"{{"source":"import","file":{file_json},"line":{line}}}"#
                        );
                        db.append_event(
                            id,
                            "device.created",
                            &actor.operator,
                            &actor.station,
                            &now,
                            &details,
                        )?;
                        s.created += 1;
                    }
                    None => {
                        let (kind, m) = serial_taken(&mut db, serial, start_max_id)?;
                        reject_row!(rec, line, kind, m);
                    }
                }
            }
            (Some(dev), _) => match plan_update(&dev, &wants, &header.columns, &attr_wants) {
                Err(m) => {
                    reject_row!(rec, line, RejectKind::Conflict, m);
                }
                Ok(None) => s.unchanged += 1,
                Ok(Some((new, changes, to_status))) => {
                    let field_changes = changes.iter().any(|c| c.field != "status");
                    if field_changes {
                        db.update_fields(&new, &now)?;
                        details.clear();
                        let _ = write!(
                            details,
                            r#"{{"source":"import","file":{file_json},"line":{line},"changes":{}}}"#,
                            changes_json(&changes)
                        );
                        db.append_event(
                            new.id,
                            "device.updated",
                            &actor.operator,
                            &actor.station,
                            &now,
                            &details,
                        )?;
                    }
                    if let Some(to) = to_status {
                        lifecycle::transition(
                            &tx,
                            &new,
                            to,
                            actor,
                            None,
                            &now,
                            serde_json::json!({"source": "import", "file": file, "line": line}),
                        )?;
                    }
                    s.updated += 1;
                    for c in &changes {
                        *s.changed_fields.entry(c.field.clone()).or_default() += 1;
                    }
                    if s.updates.len() < LIST_CAP {
                        s.updates.push(Updated {
                            serial: new.serial.clone(),
                            line,
                            changes,
                        });
                    } else {
                        s.updates_not_listed += 1;
                    }
                }
            },
        }
    }
    drop(tx_empty);
    // The loop also ends when the parser thread dies: that is not the end of the file,
    // and nothing read so far may be committed.
    reader.join().map_err(|_| {
        Error::Internal(format!(
            "{file}: the CSV parser stopped unexpectedly; nothing was imported"
        ))
    })?;
    if let Some(ef) = errors_file {
        ef.finish()?;
    }
    drop(seen);
    // Events written by lifecycle transitions are counted from the head.
    let events_written = db.events_written();
    drop(db);
    let transitions: u64 = s.changed_fields.get("status").copied().unwrap_or(0);
    s.events = events_written + transitions;

    let ok = s.rejected == 0 || opts.partial;
    if ok && !opts.dry_run && !s.nothing_changed() {
        tx.commit()?;
        s.committed = true;
    } else {
        // Dry run, rejected rows, or nothing to change: leave the file untouched.
        tx.rollback()?;
    }
    reg.restore_checks()?;
    Ok(s)
}

/// Reports one rejected row everywhere it must go.
fn reject(
    s: &mut ImportSummary,
    obs: &mut dyn Observer,
    ef: &mut Option<ErrorsFile>,
    rec: &ByteRecord,
    line: u64,
    kind: RejectKind,
    message: String,
) -> Result<()> {
    s.rejected += 1;
    if kind == RejectKind::Conflict {
        s.rejected_conflicts += 1;
    }
    let r = Rejection {
        file: s.file.clone(),
        line,
        kind,
        message,
    };
    obs.rejected(&r);
    if let Some(ef) = ef {
        ef.row(rec, &r.message)?;
    }
    if s.errors.len() < LIST_CAP {
        s.errors.push(r);
    } else {
        s.errors_not_listed += 1;
    }
    Ok(())
}

/// What creating devices from a file needs besides the rows.
struct CreateCtx<'a> {
    columns: &'a [Column],
    file_json: &'a str,
    actor: &'a Actor,
    now: &'a str,
    /// Devices with a larger id were created by this import.
    start_max_id: i64,
}

/// Why a new device's serial could not be inserted: an earlier row of this file
/// created it (invalid), or the registry had it (conflict).
fn serial_taken(
    db: &mut ImportDb,
    serial: &str,
    start_max_id: i64,
) -> Result<(RejectKind, String)> {
    let earlier = match db.find(MatchKey::Serial, serial)? {
        Lookup::One(d) if d.id > start_max_id => db.import_line_of(d.id)?,
        _ => None,
    };
    Ok(match earlier {
        Some(l) => (
            RejectKind::Invalid,
            format!("duplicate serial '{serial}': already at line {l} of this file"),
        ),
        None => (
            RejectKind::Conflict,
            format!(
                "device '{serial}' already exists; use --mode update or --mode upsert to change it"
            ),
        ),
    })
}

/// The text of a checked cell, if it sets a value.
fn cell_text(text: &str, c: Cell) -> Option<&str> {
    match c {
        Cell::Set(a, b) => Some(&text[a..b]),
        Cell::Keep | Cell::Clear => None,
    }
}

fn cell_want(text: &str, c: Cell) -> Want<'_> {
    match c {
        Cell::Keep => Want::Keep,
        Cell::Clear => Want::Clear,
        Cell::Set(a, b) => Want::Set(Cow::Borrowed(&text[a..b])),
    }
}

/// A checked row's cells as what they ask of each field and attribute.
fn row_wants<'t>(
    text: &'t str,
    chk: &Checked,
) -> ([Want<'t>; Field::COUNT], Vec<(usize, Want<'t>)>) {
    let wants = std::array::from_fn(|i| cell_want(text, chk.fields[i]));
    let attrs = chk
        .attrs
        .iter()
        .map(|&(i, c)| (i, cell_want(text, c)))
        .collect();
    (wants, attrs)
}

/// A create row whose device already exists: `None` if the row would change nothing
/// (so running the same import again is harmless), else the conflict message.
fn create_over_existing(
    dev: &Device,
    wants: &[Want; Field::COUNT],
    columns: &[Column],
    attr_wants: &[(usize, Want)],
) -> Option<String> {
    match plan_update(dev, wants, columns, attr_wants) {
        Ok(None) => None,
        Ok(Some((_, changes, _))) => {
            let names: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
            Some(format!(
                "device '{}' already exists with other values ({}); use --mode update or --mode upsert to change it",
                dev.serial,
                names.join(", ")
            ))
        }
        Err(m) => Some(format!(
            "device '{}' already exists and differs from this row: {m}",
            dev.serial
        )),
    }
}

/// Creates the devices of `rows` (indexes into `batch`, with their lines), in order,
/// `ROWS_PER_INSERT` per statement, each with its `device.created` event. A row
/// whose serial exists is rejected (as an in-file duplicate if this import created
/// it) and the rows after it go on.
// Eight parameters: the import's state is still loose locals of `import_file`; an
// `Importer` struct owning them (review §2) removes this allow.
#[allow(clippy::too_many_arguments)]
fn flush_creates(
    db: &mut ImportDb,
    batch: &Batch,
    rows: &mut Vec<(usize, u64)>,
    cx: &CreateCtx,
    seen: &mut Seen,
    s: &mut ImportSummary,
    obs: &mut dyn Observer,
    ef: &mut Option<ErrorsFile>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = batch.text.as_str();
    let attrs: Vec<Option<String>> = rows
        .iter()
        .map(|&(ri, _)| {
            let chk = &batch.checked[ri];
            if chk.attrs.is_empty() {
                return None;
            }
            let wants: Vec<(usize, Want)> = chk
                .attrs
                .iter()
                .map(|&(i, c)| (i, cell_want(text, c)))
                .collect();
            attributes_for_create(cx.columns, &wants)
        })
        .collect();
    let mut vals = vec![Val::Null; rows.len() * DEVICE_VALUES];
    for (k, &(ri, _)) in rows.iter().enumerate() {
        let chk = &batch.checked[ri];
        let f: [Option<&str>; Field::COUNT] =
            std::array::from_fn(|i| cell_text(text, chk.fields[i]));
        device_values(
            &f,
            attrs[k].as_deref(),
            &mut vals[k * DEVICE_VALUES..(k + 1) * DEVICE_VALUES],
        );
    }
    let mut details = String::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        let (n, first) = db.insert_devices(&vals[at * DEVICE_VALUES..], cx.now)?;
        if n > 0 {
            details.clear();
            spans.clear();
            for &(_, line) in &rows[at..at + n] {
                let a = details.len();
                let _ = write!(
                    details,
                    r#"{{"source":"import","file":{},"line":{line}}}"#,
                    cx.file_json
                );
                spans.push((a, details.len()));
            }
            let items: Vec<(i64, &str)> = spans
                .iter()
                .enumerate()
                .map(|(j, &(a, b))| (first + j as i64, &details[a..b]))
                .collect();
            db.append_events(
                &items,
                "device.created",
                &cx.actor.operator,
                &cx.actor.station,
                cx.now,
            )?;
            s.created += n as u64;
            at += n;
        }
        if at < rows.len() {
            let (ri, line) = rows[at];
            let chk = &batch.checked[ri];
            let serial =
                cell_text(text, chk.fields[Field::Serial.idx()]).expect("a create has a serial");
            let (wants, attr_wants) = row_wants(text, chk);
            let taken = match db.find(MatchKey::Serial, serial)? {
                // Already in the registry before this import: harmless if the row
                // would change nothing (a re-run), unless an earlier row said so.
                Lookup::One(d) if d.id <= cx.start_max_id => {
                    let h = key_hash(serial);
                    match seen.get(&h) {
                        Some(&first) => Some((
                            RejectKind::Invalid,
                            format!(
                                "duplicate serial '{serial}': already at line {first} of this file"
                            ),
                        )),
                        None => {
                            let m = create_over_existing(&d, &wants, cx.columns, &attr_wants);
                            if m.is_none() {
                                seen.insert(h, line.min(u32::MAX as u64) as u32);
                            }
                            m.map(|m| (RejectKind::Conflict, m))
                        }
                    }
                }
                _ => Some(serial_taken(db, serial, cx.start_max_id)?),
            };
            match taken {
                None => s.unchanged += 1,
                Some((kind, m)) => reject(s, obs, ef, &batch.recs[ri], line, kind, m)?,
            }
            at += 1;
        }
    }
    rows.clear();
    Ok(())
}

/// The attributes JSON for a new device (only the columns with a value).
fn attributes_for_create(columns: &[Column], wants: &[(usize, Want)]) -> Option<String> {
    let mut map = serde_json::Map::new();
    for (i, w) in wants {
        if let (Column::Attr(name), Want::Set(v)) = (&columns[*i], w) {
            map.insert(name.clone(), serde_json::Value::String(v.to_string()));
        }
    }
    (!map.is_empty()).then(|| serde_json::Value::Object(map).to_string())
}

type Plan = Option<(Device, Vec<Change>, Option<DeviceStatus>)>;

/// What an update row changes on `dev`; `Err` is a conflict message.
fn plan_update(
    dev: &Device,
    wants: &[Want; Field::COUNT],
    columns: &[Column],
    attr_wants: &[(usize, Want)],
) -> std::result::Result<Plan, String> {
    let mut changes = Vec::new();
    let mut new: Option<Device> = None;
    let mut to_status = None;
    for f in Field::ALL {
        let w = &wants[f.idx()];
        let stored = f.get(dev);
        match f {
            Field::Serial => {
                if let Some(v) = w.value() {
                    if v != dev.serial {
                        return Err(format!(
                            "column 'serial': the matched device is '{}', not '{v}' (import does not rename devices)",
                            dev.serial
                        ));
                    }
                }
            }
            Field::Status => {
                if let Some(v) = w.value() {
                    let to: DeviceStatus = v.parse().map_err(|e: Error| e.to_string())?;
                    if to != dev.status {
                        if !dev.status.can_move_to(to) {
                            return Err(format!(
                                "column 'status': device '{}' is {}; it cannot move to {to} (use `cradle device set {} status={to} --force --reason TEXT`)",
                                dev.serial, dev.status, dev.serial
                            ));
                        }
                        to_status = Some(to);
                        changes.push(Change {
                            field: "status".into(),
                            from: Some(dev.status.to_string()),
                            to: Some(to.to_string()),
                        });
                    }
                }
            }
            _ => {
                let target = match w {
                    Want::Keep => continue,
                    Want::Clear => None,
                    Want::Set(v) => Some(v.as_ref()),
                };
                if target != stored {
                    changes.push(Change {
                        field: f.name().into(),
                        from: stored.map(str::to_owned),
                        to: target.map(str::to_owned),
                    });
                    f.set(
                        new.get_or_insert_with(|| dev.clone()),
                        target.map(str::to_owned),
                    );
                }
            }
        }
    }
    for (i, w) in attr_wants {
        let Column::Attr(name) = &columns[*i] else {
            continue;
        };
        let stored = dev.attributes.get(name);
        let stored_text = stored.map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let target = match w {
            Want::Keep => continue,
            Want::Clear => None,
            Want::Set(v) => Some(v.as_ref()),
        };
        let same = match (stored, target) {
            (None, None) => true,
            (Some(serde_json::Value::String(s)), Some(t)) => s == t,
            _ => false,
        };
        if !same {
            changes.push(Change {
                field: format!("{ATTR_PREFIX}{name}"),
                from: stored_text,
                to: target.map(str::to_owned),
            });
            let n = new.get_or_insert_with(|| dev.clone());
            match target {
                Some(t) => {
                    n.attributes
                        .insert(name.clone(), serde_json::Value::String(t.to_string()));
                }
                None => {
                    n.attributes.remove(name);
                }
            }
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    if let Some(n) = &new {
        asset::cost_needs_currency(n.cost.as_deref(), n.currency.as_deref())
            .map_err(|m| format!("{m} (device '{}' has none stored)", dev.serial))?;
    }
    Ok(Some((
        new.unwrap_or_else(|| dev.clone()),
        changes,
        to_status,
    )))
}

/// `{"site":["old","new"],...}` for an update event (status goes in its own event).
fn changes_json(changes: &[Change]) -> String {
    let mut m = serde_json::Map::new();
    for c in changes.iter().filter(|c| c.field != "status") {
        m.insert(c.field.clone(), serde_json::json!([c.from, c.to]));
    }
    serde_json::Value::Object(m).to_string()
}

/// Writes a summary of rows with their changed fields, for humans.
pub fn describe_change(c: &Change) -> String {
    let show = |v: &Option<String>| match v {
        None => "(empty)".to_string(),
        Some(s) => fields::excerpt(s),
    };
    format!("{}: {} -> {}", c.field, show(&c.from), show(&c.to))
}

/// Helper for the CLI: write to `out` a line per update.
pub fn write_updates(out: &mut dyn Write, s: &ImportSummary) -> std::io::Result<()> {
    for u in &s.updates {
        let parts: Vec<String> = u.changes.iter().map(describe_change).collect();
        writeln!(
            out,
            "  {} (line {}): {}",
            u.serial,
            u.line,
            parts.join(", ")
        )?;
    }
    if s.updates_not_listed > 0 {
        writeln!(out, "  … and {} more updated devices", s.updates_not_listed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The parser panics after sending this many batches (tests only).
    pub(super) static PANIC_AFTER_BATCHES: AtomicUsize = AtomicUsize::new(usize::MAX);

    #[test]
    fn a_parser_that_dies_mid_file_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Store::create(&dir.path().join("r.db")).unwrap();
        let csv = dir.path().join("devices.csv");
        let mut f = File::create(&csv).unwrap();
        writeln!(f, "serial,model").unwrap();
        for i in 0..3 * BATCH_ROWS {
            writeln!(f, "DEV-{i:05},m").unwrap();
        }
        drop(f);
        // The first batch arrives whole; the parser dies on the second.
        PANIC_AFTER_BATCHES.store(1, Ordering::Relaxed);
        let actor = Actor {
            operator: "t".into(),
            station: "s".into(),
        };
        let r = import(
            &mut reg,
            &csv,
            &ImportOptions::default(),
            &actor,
            &mut Quiet,
        );
        PANIC_AFTER_BATCHES.store(usize::MAX, Ordering::Relaxed);
        let e = r.expect_err("a dead parser is an error, not the end of the file");
        assert!(matches!(e, Error::Internal(_)), "{e}");
        assert_eq!(crate::store::retire::device_count(&reg).unwrap(), 0);
    }
}
