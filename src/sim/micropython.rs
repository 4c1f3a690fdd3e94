//! A simulated MicroPython board: the friendly and raw REPL (raw-paste included) and a
//! filesystem, behind the `micropython` device profile.
//!
//! This is not a Python interpreter. The board understands exactly the fixed program
//! shapes that mpremote 1.29 (`fs ls/cat/cp/rm/mkdir/rmdir/touch/sha256sum`) and
//! cradle's micropython link send, and answers them as MicroPython does (output
//! "cooked" to CRLF, `OSError: [Errno 2] ENOENT` Tracebacks, `os.stat` tuples).
//! Anything else gets the Traceback a real board would give for a name it does not
//! know (or a SyntaxError).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::device::{Device, Reply};
use super::faults::Rng;
use super::Responder;
use crate::wire::raw_repl::{parse_literal, BANNER, CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E};

/// The firmware release the simulated board reports (`os.uname().release`).
pub const SIM_RELEASE: &str = "1.24.1";
/// Raw-paste window (MicroPython's default `MICROPY_REPL_STDIN_BUFFER_MAX`).
pub const PASTE_WINDOW: u16 = 256;
/// Longest program the board takes (a real board runs out of RAM well before).
const MAX_PROGRAM: usize = 256 * 1024;

const S_IFDIR: u32 = 0x4000;
const S_IFREG: u32 = 0x8000;

/// The board's filesystem as kept in the simulator's state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fs {
    #[serde(default)]
    pub dirs: BTreeSet<String>,
    /// File contents (hex) by absolute path.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// A plausible `machine.unique_id()` (8 bytes, as an RP2040's flash id) for board `i`.
pub fn fake_unique_id(i: usize) -> String {
    let mut r = Rng::new();
    format!("e66141{:08x}{:02x}", r.next_u64() as u32, i % 256)
}

/// The hardware id of board `i` when `--hardware-id` was given: hex only (it is what
/// `machine.unique_id()` returns), with the index appended for several boards.
pub fn unique_id_for(base: &str, count: usize, i: usize) -> Result<String, String> {
    let ok = !base.is_empty()
        && base.len() % 2 == 0
        && base.len() <= 32
        && base.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(format!(
            "--hardware-id '{base}': a MicroPython board's id is machine.unique_id() as hex (an even number of hex digits, at most 16 bytes)"
        ));
    }
    let base = base.to_ascii_lowercase();
    Ok(if count == 1 {
        base
    } else {
        format!("{base}{:02x}", i % 256)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Friendly,
    Raw,
    /// Raw-paste: bytes left in the current window.
    Paste(u16),
}

/// An open file of the running program (`f`).
#[derive(Debug, Clone)]
struct Open {
    path: String,
    write: bool,
    pos: usize,
}

/// What a statement did wrong: the exception line of the Traceback.
struct Raise(String);

fn os_error(errno: u32, name: &str) -> Raise {
    Raise(format!("OSError: [Errno {errno}] {name}"))
}

fn enoent() -> Raise {
    os_error(2, "ENOENT")
}

pub struct MicropythonResponder {
    pub dev: Device,
    mode: Mode,
    line: Vec<u8>,
    /// Bytes taken since the last reply (the pacing charge of the next one).
    taken: usize,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    // The running program's globals, as far as the known shapes use them.
    f: Option<Open>,
    bound_read: bool,
    bound_write: bool,
    hash: Option<Sha256>,
    imported: BTreeSet<String>,
    /// Set when a disconnect fault fires inside a program.
    hangup: bool,
}

impl MicropythonResponder {
    pub fn new(dev: Device) -> MicropythonResponder {
        let fs = dev.state.micropython.clone();
        let files = fs
            .files
            .iter()
            .filter_map(|(p, h)| Some((p.clone(), hex::decode(h).ok()?)))
            .collect();
        MicropythonResponder {
            dev,
            mode: Mode::Friendly,
            line: Vec::new(),
            taken: 0,
            files,
            dirs: fs.dirs,
            f: None,
            bound_read: false,
            bound_write: false,
            hash: None,
            imported: BTreeSet::new(),
            hangup: false,
        }
    }

    fn save(&mut self) {
        self.dev.state.micropython = Fs {
            dirs: self.dirs.clone(),
            files: self
                .files
                .iter()
                .map(|(p, d)| (p.clone(), hex::encode(d)))
                .collect(),
        };
        self.dev.save();
    }

    /// A soft reset: the program's globals are gone, the files stay.
    fn soft_reset(&mut self) {
        self.f = None;
        self.bound_read = false;
        self.bound_write = false;
        self.hash = None;
        self.imported.clear();
    }

    fn friendly_banner(&self) -> Vec<u8> {
        format!(
            "MicroPython v{SIM_RELEASE} on 2024-11-29; {} with cradle-sim\r\nType \"help()\" for more information.\r\n>>> ",
            self.dev.state.model
        )
        .into_bytes()
    }

    fn reply(&mut self, bytes: Vec<u8>) -> (usize, Reply) {
        let cost = std::mem::take(&mut self.taken);
        let hangup = std::mem::take(&mut self.hangup);
        (
            cost,
            Reply {
                bytes,
                hangup,
                ..Default::default()
            },
        )
    }

    fn unique_id(&self) -> Vec<u8> {
        let h = &self.dev.state.hardware_id;
        hex::decode(h).unwrap_or_else(|_| h.as_bytes().to_vec())
    }

    /// Runs a program; returns stdout and stderr (cooked), as the raw REPL sends them.
    fn run(&mut self, program: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut out = String::new();
        let text = String::from_utf8_lossy(program).replace("\r\n", "\n");
        let lines: Vec<&str> = text.split('\n').collect();
        let mut err = None;
        let mut i = 0;
        while i < lines.len() {
            let at = i + 1;
            match self.statement(&lines, &mut i, &mut out) {
                Ok(()) => {}
                Err(Raise(e)) => {
                    err = Some(if e.starts_with("SyntaxError") {
                        format!(
                            "Traceback (most recent call last):\n  File \"<stdin>\", line {at}\n{e}\n"
                        )
                    } else {
                        format!(
                            "Traceback (most recent call last):\n  File \"<stdin>\", line {at}, in <module>\n{e}\n"
                        )
                    });
                    break;
                }
            }
            if self.hangup {
                break;
            }
        }
        self.save();
        let cook = |s: &str| s.replace('\n', "\r\n").into_bytes();
        (cook(&out), err.as_deref().map(cook).unwrap_or_default())
    }

    /// Executes the statement (or block) at `lines[*i]` and moves `*i` past it.
    fn statement(&mut self, lines: &[&str], i: &mut usize, out: &mut String) -> Result<(), Raise> {
        let raw = lines[*i];
        let s = raw.trim_end();
        *i += 1;
        if s.trim().is_empty() || s.trim_start().starts_with('#') {
            return Ok(());
        }
        if s.starts_with(' ') {
            return Err(Raise("IndentationError: unexpected indent".into()));
        }
        // A block's body: the indented lines after it.
        let body = |i: &mut usize| -> Vec<String> {
            let mut b = Vec::new();
            while *i < lines.len() && lines[*i].starts_with(' ') {
                b.push(lines[*i].trim_end().to_string());
                *i += 1;
            }
            b
        };
        // Several statements on one line (`import os;print(os.getcwd())`).
        if let Some((a, b)) = split_semicolon(s) {
            let parts = [a.to_string(), b.to_string()];
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let mut j = 0;
            while j < refs.len() {
                self.statement(&refs, &mut j, out)?;
            }
            return Ok(());
        }
        if let Some(m) = s.strip_prefix("import ") {
            for name in m.split(',').map(str::trim) {
                self.import(name)?;
            }
            return Ok(());
        }
        if s == "try:" {
            let inner = body(i);
            let handler = lines.get(*i).map(|l| l.trim_end()).unwrap_or("");
            if handler != "except OSError:" && handler != "except:" {
                return Err(Raise("SyntaxError: invalid syntax".into()));
            }
            *i += 1;
            let h = body(i);
            if h.iter().map(|l| l.trim()).collect::<Vec<_>>() != ["pass"] {
                return Err(Raise("SyntaxError: invalid syntax".into()));
            }
            let dedented: Vec<String> = inner.iter().map(|l| l.trim_start().to_string()).collect();
            let refs: Vec<&str> = dedented.iter().map(String::as_str).collect();
            let mut j = 0;
            while j < refs.len() {
                match self.statement(&refs, &mut j, out) {
                    Ok(()) => {}
                    Err(Raise(e)) if e.starts_with("OSError") || handler == "except:" => break,
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        // mpremote fs ls: `for f in os.ilistdir(PATH):\n print(repr(f), end=',')`
        if let Some(arg) = s
            .strip_prefix("for f in os.ilistdir(")
            .and_then(|r| r.strip_suffix("):"))
        {
            self.need("os")?;
            let b = body(i);
            if b.len() != 1 || b[0].trim() != "print(repr(f), end=',')" {
                return Err(Raise("SyntaxError: invalid syntax".into()));
            }
            let dir = if arg.is_empty() {
                "/".to_string()
            } else {
                path_arg(arg)?
            };
            for (name, mode, size) in self.listdir(&dir)? {
                out.push_str(&format!("({}, {mode}, 0, {size}),", py_repr_str(&name)));
            }
            return Ok(());
        }
        // mpremote fs cat: print the file in 256-byte pieces.
        if let Some(rest) = s.strip_prefix("with open(") {
            if let Some(arg) = rest.strip_suffix(") as f:") {
                let b: Vec<String> = body(i).iter().map(|l| l.to_string()).collect();
                let (path, binary) = match arg.rsplit_once(',') {
                    Some((p, m)) if m.trim() == "'rb'" => (path_arg(p)?, true),
                    _ => (path_arg(arg)?, false),
                };
                // cradle's read-back: the whole (small) file into the hash at once.
                if binary && b.len() == 1 && b[0] == " h.update(f.read())" {
                    let data = self.read_file(&path)?;
                    match self.hash.as_mut() {
                        Some(h) => h.update(&data),
                        None => return Err(Raise("NameError: name 'h' isn't defined".into())),
                    }
                    return Ok(());
                }
                let shape_cat = !binary
                    && b.len() == 4
                    && b[0] == " while 1:"
                    && b[1].trim().starts_with("b=f.read(")
                    && b[2] == "  if not b:break"
                    && b[3] == "  print(b,end='')";
                let shape_hash = binary
                    && b.len() == 5
                    && b[0] == " while True:"
                    && b[1] == "  n = f.readinto(buf)"
                    && b[2] == "  if n == 0:"
                    && b[3] == "   break"
                    && b[4].starts_with("  h.update(buf if n == ");
                if shape_cat {
                    let data = self.read_file(&path)?;
                    out.push_str(&String::from_utf8_lossy(&data));
                    return Ok(());
                }
                if shape_hash {
                    let data = self.read_file(&path)?;
                    match self.hash.as_mut() {
                        Some(h) => h.update(&data),
                        None => return Err(Raise("NameError: name 'h' isn't defined".into())),
                    }
                    return Ok(());
                }
                return Err(Raise("SyntaxError: invalid syntax".into()));
            }
        }
        if let Some(v) = s
            .strip_prefix("print(repr(")
            .and_then(|r| r.strip_suffix("))"))
        {
            let r = self.eval_repr(v)?;
            out.push_str(&r);
            out.push('\n');
            return Ok(());
        }
        if let Some(v) = s.strip_prefix("print(").and_then(|r| r.strip_suffix(')')) {
            let r = self.eval_print(v)?;
            out.push_str(&r);
            out.push('\n');
            return Ok(());
        }
        if let Some(arg) = s.strip_prefix("f=open(").and_then(|r| r.strip_suffix(')')) {
            let (p, mode) = arg
                .rsplit_once(',')
                .ok_or_else(|| Raise("SyntaxError: invalid syntax".into()))?;
            let path = path_arg(p)?;
            let mode = parse_literal(mode.trim())
                .map(|(m, _, _)| String::from_utf8_lossy(&m).to_string())
                .ok_or_else(|| Raise("SyntaxError: invalid syntax".into()))?;
            return self.open(&path, &mode);
        }
        match s {
            "r=f.read" | "w=f.write" => {
                if self.f.is_none() {
                    return Err(Raise("NameError: name 'f' isn't defined".into()));
                }
                if s.starts_with('r') {
                    self.bound_read = true;
                } else {
                    self.bound_write = true;
                }
                return Ok(());
            }
            "f.close()" => {
                if self.f.take().is_none() {
                    return Err(Raise("NameError: name 'f' isn't defined".into()));
                }
                self.bound_read = false;
                self.bound_write = false;
                return Ok(());
            }
            "h = hashlib.sha256()" | "h=hashlib.sha256()" => {
                self.need("hashlib")?;
                self.hash = Some(Sha256::new());
                return Ok(());
            }
            _ => {}
        }
        if s.starts_with("h = hashlib.") || s.starts_with("h=hashlib.") {
            self.need("hashlib")?;
            let algo = s
                .split("hashlib.")
                .nth(1)
                .unwrap_or("")
                .trim_end_matches("()");
            return Err(Raise(format!(
                "AttributeError: 'module' object has no attribute '{algo}'"
            )));
        }
        if s.starts_with("buf = memoryview(bytearray(") {
            return Ok(());
        }
        if let Some(lit) = s.strip_prefix("w(").and_then(|r| r.strip_suffix(')')) {
            let data = match parse_literal(lit) {
                Some((d, true, "")) => d,
                _ => return Err(Raise("SyntaxError: invalid syntax".into())),
            };
            return self.write(&data);
        }
        for (call, op) in [("os.mkdir(", 0u8), ("os.rmdir(", 1), ("os.remove(", 2)] {
            if let Some(arg) = s.strip_prefix(call).and_then(|r| r.strip_suffix(')')) {
                self.need("os")?;
                let p = path_arg(arg)?;
                return match op {
                    0 => self.mkdir(&p),
                    1 => self.rmdir(&p),
                    _ => self.remove(&p),
                };
            }
        }
        Err(unknown(s))
    }

    fn import(&mut self, name: &str) -> Result<(), Raise> {
        let known = [
            "os",
            "sys",
            "machine",
            "hashlib",
            "binascii",
            "uos",
            "uhashlib",
            "ubinascii",
        ];
        if !known.contains(&name) {
            return Err(Raise(format!("ImportError: no module named '{name}'")));
        }
        self.imported
            .insert(name.trim_start_matches('u').to_string());
        Ok(())
    }

    fn need(&self, module: &str) -> Result<(), Raise> {
        if self.imported.contains(module) {
            Ok(())
        } else {
            Err(Raise(format!("NameError: name '{module}' isn't defined")))
        }
    }

    /// `print(repr(EXPR))` for the expressions the known shapes print.
    fn eval_repr(&mut self, v: &str) -> Result<String, Raise> {
        if let Some(arg) = v
            .strip_prefix("tuple(os.stat(")
            .and_then(|r| r.strip_suffix("))"))
        {
            self.need("os")?;
            let p = path_arg(arg)?;
            let (mode, size) = self.stat(&p)?;
            return Ok(format!("({mode}, 0, 0, 0, 0, 0, {size}, 0, 0, 0)"));
        }
        if let Some(n) = v.strip_prefix("r(").and_then(|r| r.strip_suffix(')')) {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| Raise("SyntaxError: invalid syntax".into()))?;
            if !self.bound_read {
                return Err(Raise("NameError: name 'r' isn't defined".into()));
            }
            let o = self
                .f
                .as_mut()
                .ok_or_else(|| Raise("NameError: name 'r' isn't defined".into()))?;
            let data = self.files.get(&o.path).cloned().unwrap_or_default();
            let end = (o.pos + n).min(data.len());
            let chunk = data[o.pos.min(end)..end].to_vec();
            o.pos = end;
            return Ok(py_repr_bytes(&chunk));
        }
        if v == "h.digest()" {
            return Ok(py_repr_bytes(&self.digest()?));
        }
        if v == "os.getcwd()" {
            self.need("os")?;
            return Ok("'/'".into());
        }
        if v == "\"RemoteFS\" in globals()" {
            return Ok("False".into());
        }
        Err(unknown(v))
    }

    /// `print(EXPR)` for the expressions cradle's link prints.
    fn eval_print(&mut self, v: &str) -> Result<String, Raise> {
        match v {
            "binascii.hexlify(machine.unique_id()).decode()" => {
                self.need("binascii")?;
                self.need("machine")?;
                Ok(hex::encode(self.unique_id()))
            }
            "binascii.hexlify(h.digest()).decode()" => {
                self.need("binascii")?;
                Ok(hex::encode(self.digest()?))
            }
            "sys.implementation" => {
                self.need("sys")?;
                let v: Vec<&str> = SIM_RELEASE.split('.').collect();
                Ok(format!(
                    "(name='micropython', version=({}, {}, {}, ''), _machine='{} with cradle-sim', _mpy=4870)",
                    v[0], v[1], v[2], self.dev.state.model
                ))
            }
            "os.uname()" => {
                self.need("os")?;
                Ok(format!(
                    "(sysname='sim', nodename='sim', release='{SIM_RELEASE}', version='v{SIM_RELEASE} on 2024-11-29', machine='{} with cradle-sim')",
                    self.dev.state.model
                ))
            }
            "os.getcwd()" => {
                self.need("os")?;
                Ok("/".into())
            }
            _ => Err(unknown(v)),
        }
    }

    fn digest(&mut self) -> Result<Vec<u8>, Raise> {
        let h = self
            .hash
            .take()
            .ok_or_else(|| Raise("NameError: name 'h' isn't defined".into()))?;
        let mut d = h.finalize().to_vec();
        // hash-mismatch: the first digest the board reports is wrong.
        if std::mem::take(&mut self.dev.faults.hash_mismatch) {
            d[0] ^= 0x80;
        }
        Ok(d)
    }

    fn is_dir(&self, p: &str) -> bool {
        p == "/" || self.dirs.contains(p)
    }

    fn parent_ok(&self, p: &str) -> bool {
        self.is_dir(parent(p))
    }

    fn stat(&self, p: &str) -> Result<(u32, usize), Raise> {
        if self.is_dir(p) {
            return Ok((S_IFDIR, 0));
        }
        self.files
            .get(p)
            .map(|d| (S_IFREG, d.len()))
            .ok_or_else(enoent)
    }

    fn listdir(&self, dir: &str) -> Result<Vec<(String, u32, usize)>, Raise> {
        if !self.is_dir(dir) {
            return Err(if self.files.contains_key(dir) {
                os_error(20, "ENOTDIR")
            } else {
                enoent()
            });
        }
        let mut out = Vec::new();
        for d in &self.dirs {
            if parent(d) == dir {
                out.push((base(d).to_string(), S_IFDIR, 0));
            }
        }
        for (f, data) in &self.files {
            if parent(f) == dir {
                out.push((base(f).to_string(), S_IFREG, data.len()));
            }
        }
        Ok(out)
    }

    fn read_file(&self, p: &str) -> Result<Vec<u8>, Raise> {
        if self.is_dir(p) {
            return Err(os_error(21, "EISDIR"));
        }
        self.files.get(p).cloned().ok_or_else(enoent)
    }

    fn open(&mut self, p: &str, mode: &str) -> Result<(), Raise> {
        let write = match mode {
            "r" | "rb" => false,
            "w" | "wb" | "a" | "ab" => true,
            _ => return Err(Raise("ValueError: invalid mode".into())),
        };
        if self.is_dir(p) {
            return Err(os_error(21, "EISDIR"));
        }
        if write {
            if !self.parent_ok(p) {
                return Err(enoent());
            }
            let e = self.files.entry(p.to_string()).or_default();
            if mode.starts_with('w') {
                e.clear();
            }
        } else if !self.files.contains_key(p) {
            return Err(enoent());
        }
        self.f = Some(Open {
            path: p.to_string(),
            write,
            pos: 0,
        });
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Raise> {
        if !self.bound_write {
            return Err(Raise("NameError: name 'w' isn't defined".into()));
        }
        let Some(o) = self.f.clone() else {
            return Err(Raise("NameError: name 'w' isn't defined".into()));
        };
        if !o.write {
            return Err(os_error(1, "EPERM"));
        }
        // traceback: the first write fails as a full filesystem does.
        if std::mem::take(&mut self.dev.faults.traceback) {
            return Err(os_error(28, "ENOSPC"));
        }
        self.files
            .entry(o.path)
            .or_default()
            .extend_from_slice(data);
        // disconnect-after:write:N — the board resets after its N-th file write, with
        // the file half written.
        if self.dev.step("write") {
            self.hangup = true;
        }
        Ok(())
    }

    fn mkdir(&mut self, p: &str) -> Result<(), Raise> {
        if self.is_dir(p) || self.files.contains_key(p) {
            return Err(os_error(17, "EEXIST"));
        }
        if !self.parent_ok(p) {
            return Err(enoent());
        }
        self.dirs.insert(p.to_string());
        Ok(())
    }

    fn rmdir(&mut self, p: &str) -> Result<(), Raise> {
        if !self.dirs.contains(p) {
            return Err(enoent());
        }
        if !self.listdir(p)?.is_empty() {
            return Err(os_error(39, "ENOTEMPTY"));
        }
        self.dirs.remove(p);
        Ok(())
    }

    fn remove(&mut self, p: &str) -> Result<(), Raise> {
        if self.is_dir(p) {
            return Err(os_error(21, "EISDIR"));
        }
        self.files.remove(p).map(|_| ()).ok_or_else(enoent)
    }

    /// Feeds one byte; returns a reply when the board answers.
    fn byte(&mut self, b: u8) -> Option<Vec<u8>> {
        match self.mode {
            Mode::Friendly => match b {
                CTRL_A => {
                    self.mode = Mode::Raw;
                    self.line.clear();
                    let mut r = b"\r\n".to_vec();
                    r.extend_from_slice(BANNER);
                    r.push(b'>');
                    Some(r)
                }
                CTRL_C => {
                    self.line.clear();
                    Some(b"\r\n>>> ".to_vec())
                }
                CTRL_D => {
                    self.line.clear();
                    self.soft_reset();
                    let mut r = b"MPY: soft reboot\r\n".to_vec();
                    r.extend(self.friendly_banner());
                    Some(r)
                }
                b'\r' => {
                    let typed = std::mem::take(&mut self.line);
                    let mut r = b"\r\n".to_vec();
                    if !typed.iter().all(u8::is_ascii_whitespace) {
                        let (o, e) = self.run(&typed);
                        r.extend(o);
                        r.extend(e);
                    }
                    r.extend_from_slice(b">>> ");
                    Some(r)
                }
                b'\n' => None,
                _ => {
                    if self.line.len() < 1024 {
                        self.line.push(b);
                    }
                    // The friendly REPL echoes what is typed.
                    Some(vec![b])
                }
            },
            Mode::Raw => match b {
                CTRL_A => {
                    let paste = self.line == [CTRL_E, b'A'];
                    self.line.clear();
                    if paste && self.dev.faults.no_raw_paste {
                        // Understood, not supported: the program follows in plain raw mode.
                        return Some(b"R\x00".to_vec());
                    }
                    if paste {
                        self.mode = Mode::Paste(PASTE_WINDOW);
                        let mut r = b"R\x01".to_vec();
                        r.extend_from_slice(&PASTE_WINDOW.to_le_bytes());
                        return Some(r);
                    }
                    let mut r = BANNER.to_vec();
                    r.push(b'>');
                    Some(r)
                }
                CTRL_B => {
                    self.mode = Mode::Friendly;
                    self.line.clear();
                    let mut r = b"\r\n".to_vec();
                    r.extend(self.friendly_banner());
                    Some(r)
                }
                CTRL_C => {
                    self.line.clear();
                    None
                }
                CTRL_D => {
                    let program = std::mem::take(&mut self.line);
                    if program.is_empty() {
                        // Soft reset; the board comes back in the raw REPL.
                        self.soft_reset();
                        let mut r = b"OK\r\nMPY: soft reboot\r\n".to_vec();
                        r.extend_from_slice(BANNER);
                        r.push(b'>');
                        return Some(r);
                    }
                    let mut r = b"OK".to_vec();
                    r.extend(self.finish(&program));
                    Some(r)
                }
                _ => {
                    if self.line.len() < MAX_PROGRAM {
                        self.line.push(b);
                    }
                    None
                }
            },
            Mode::Paste(left) => {
                match b {
                    CTRL_D => {
                        self.mode = Mode::Raw;
                        let program = std::mem::take(&mut self.line);
                        let mut r = vec![CTRL_D];
                        r.extend(self.finish(&program));
                        Some(r)
                    }
                    CTRL_C => {
                        // Interrupted: the board ends the paste and raises.
                        self.mode = Mode::Raw;
                        self.line.clear();
                        let mut r = vec![CTRL_D];
                        r.extend_from_slice(b"\x04Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n\x04>");
                        Some(r)
                    }
                    _ => {
                        if self.line.len() < MAX_PROGRAM {
                            self.line.push(b);
                        }
                        if left <= 1 {
                            self.mode = Mode::Paste(PASTE_WINDOW);
                            Some(vec![CTRL_A])
                        } else {
                            self.mode = Mode::Paste(left - 1);
                            None
                        }
                    }
                }
            }
        }
    }

    /// Runs a program received in the raw REPL; returns its output, the two EOFs and
    /// the next prompt.
    fn finish(&mut self, program: &[u8]) -> Vec<u8> {
        // A fresh program scope per `exec` is not MicroPython's way: globals persist
        // (mpremote relies on `f`, `w`, `h` across programs).
        // long-line: the first program gets a megabyte of output and no end.
        if std::mem::take(&mut self.dev.faults.long_line) {
            return vec![b'A'; 1 << 20];
        }
        let (o, e) = self.run(program);
        let mut r = o;
        r.push(CTRL_D);
        r.extend(e);
        r.push(CTRL_D);
        r.push(b'>');
        r
    }
}

/// What the board says about code outside the known shapes: the first name in it is
/// not defined (as on a board without that module or variable), or, without a name,
/// a syntax error.
fn unknown(code: &str) -> Raise {
    let mut name = String::new();
    let mut in_str = None;
    for c in code.chars() {
        match in_str {
            Some(q) if c == q => in_str = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => in_str = Some(c),
            None if c.is_ascii_alphabetic()
                || c == '_'
                || (!name.is_empty() && c.is_ascii_digit()) =>
            {
                name.push(c)
            }
            None if !name.is_empty() => break,
            None => {}
        }
    }
    if name.is_empty() {
        Raise("SyntaxError: invalid syntax".into())
    } else {
        Raise(format!("NameError: name '{name}' isn't defined"))
    }
}

fn split_semicolon(s: &str) -> Option<(&str, &str)> {
    // Only outside literals; the known shapes put `;` between simple statements.
    if s.contains('\'') || s.contains('"') {
        return None;
    }
    s.split_once(';')
}

/// Parses a path argument (a str literal) into an absolute, normalised path.
fn path_arg(arg: &str) -> Result<String, Raise> {
    match parse_literal(arg.trim()) {
        Some((p, false, "")) => Ok(norm(&String::from_utf8_lossy(&p))),
        _ => Err(Raise("TypeError: can't convert to str implicitly".into())),
    }
}

fn norm(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Python's `repr` of a str (single quotes unless the text has one and no double).
fn py_repr_str(s: &str) -> String {
    crate::wire::raw_repl::py_str(s)
}

/// Python's `repr` of bytes.
fn py_repr_bytes(d: &[u8]) -> String {
    crate::wire::raw_repl::py_bytes(d)
}

impl Responder for MicropythonResponder {
    fn feed(&mut self, data: &[u8]) -> Vec<(usize, Reply)> {
        let mut out = Vec::new();
        for &b in data {
            self.taken += 1;
            let entering = self.mode == Mode::Friendly && b == CTRL_A;
            if let Some(r) = self.byte(b) {
                // disconnect-after:hello:N — the board resets as the N-th raw REPL starts.
                if entering && self.dev.step("hello") {
                    self.hangup = true;
                }
                let hang = self.hangup;
                out.push(self.reply(r));
                if hang {
                    // The board resets: it boots to the friendly REPL with its globals
                    // gone and whatever it had written so far still on flash.
                    self.mode = Mode::Friendly;
                    self.line.clear();
                    self.soft_reset();
                    break;
                }
            }
        }
        out
    }

    fn device(&mut self) -> &mut Device {
        &mut self.dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::device::DeviceState;
    use crate::sim::Faults;

    fn board() -> MicropythonResponder {
        let st = DeviceState::new("e6614103e7a1b2c3", "Pico");
        MicropythonResponder::new(Device::new(st, None, Faults::default()))
    }

    fn send(b: &mut MicropythonResponder, data: &[u8]) -> Vec<u8> {
        b.feed(data)
            .into_iter()
            .flat_map(|(_, r)| r.bytes)
            .collect()
    }

    /// Runs `code` in plain raw mode; returns (stdout, stderr).
    fn exec(b: &mut MicropythonResponder, code: &str) -> (String, String) {
        let mut d = code.as_bytes().to_vec();
        d.push(CTRL_D);
        let r = send(b, &d);
        let r = r.strip_prefix(b"OK").expect("OK");
        let parts: Vec<&[u8]> = r.split(|&c| c == CTRL_D).collect();
        assert_eq!(parts.len(), 3, "{:?}", String::from_utf8_lossy(r));
        assert_eq!(parts[2], b">");
        (
            String::from_utf8_lossy(parts[0]).into(),
            String::from_utf8_lossy(parts[1]).into(),
        )
    }

    #[test]
    fn raw_repl_and_paste_handshakes() {
        let mut b = board();
        let r = send(&mut b, b"\r\x03\x03\r\x01");
        assert!(r.ends_with(b"raw REPL; CTRL-B to exit\r\n>"), "{r:?}");
        // Raw-paste: R\x01, the window, a grant per window, \x04 acknowledges the end.
        let r = send(&mut b, b"\x05A\x01");
        assert_eq!(r, [b'R', 1, 0, 1]);
        let prog = format!("import os\n{}\nprint(repr(os.getcwd()))", "#".repeat(300));
        let r = send(&mut b, prog.as_bytes());
        assert_eq!(r, [CTRL_A]);
        let r = send(&mut b, &[CTRL_D]);
        assert_eq!(r, b"\x04'/'\r\n\x04\x04>");
        // Soft reset forgets globals, keeps the raw REPL.
        let r = send(&mut b, &[CTRL_D]);
        assert!(r.ends_with(b"soft reboot\r\nraw REPL; CTRL-B to exit\r\n>"));
        let (_, e) = exec(&mut b, "os.mkdir('/x')");
        assert!(e.ends_with("NameError: name 'os' isn't defined\r\n"), "{e}");
        let r = send(&mut b, &[CTRL_B]);
        assert!(r.ends_with(b">>> "));
    }

    #[test]
    fn files_round_trip_and_errors_are_tracebacks() {
        let mut b = board();
        send(&mut b, b"\r\x01");
        let (o, e) = exec(&mut b, "import os\nprint(repr(tuple(os.stat('/certs'))))");
        assert_eq!(o, "");
        assert!(e.contains("OSError: [Errno 2] ENOENT"), "{e}");
        assert!(e.starts_with("Traceback (most recent call last):\r\n  File \"<stdin>\", line 2"));
        exec(&mut b, "import os\nos.mkdir('/certs')");
        let data: Vec<u8> = (0..=255u8).collect();
        let lit = crate::wire::raw_repl::py_bytes(&data);
        let (_, e) = exec(
            &mut b,
            &format!("f=open('/certs/x','wb')\nw=f.write\nw({lit})\nf.close()"),
        );
        assert_eq!(e, "");
        let (o, _) = exec(
            &mut b,
            "import os\nfor f in os.ilistdir('/certs'):\n print(repr(f), end=',')",
        );
        assert_eq!(o, "('x', 32768, 0, 256),");
        let (o, e) = exec(
            &mut b,
            "import hashlib\nh = hashlib.sha256()\nbuf = memoryview(bytearray(256))\nwith open('/certs/x', 'rb') as f:\n while True:\n  n = f.readinto(buf)\n  if n == 0:\n   break\n  h.update(buf if n == 256 else buf[:n])\n",
        );
        assert_eq!((o.as_str(), e.as_str()), ("", ""));
        let (o, _) = exec(
            &mut b,
            "import binascii\nprint(binascii.hexlify(h.digest()).decode())",
        );
        assert_eq!(o.trim(), hex::encode(Sha256::digest(&data)));
        let (_, e) = exec(&mut b, "frobnicate()");
        assert!(
            e.contains("NameError: name 'frobnicate' isn't defined"),
            "{e}"
        );
        let (_, e) = exec(&mut b, "print(1+1)");
        assert!(e.ends_with("SyntaxError: invalid syntax\r\n"), "{e}");
        let (_, e) = exec(&mut b, "print(repr(network.WLAN(0)))");
        assert!(e.contains("NameError: name 'network' isn't defined"), "{e}");
        let (_, e) = exec(
            &mut b,
            "import os\ntry:\n os.remove('/nope')\nexcept OSError:\n pass",
        );
        assert_eq!(e, "");
    }
}
