//! MicroPython boards as a device link: the raw REPL (`wire::raw_repl`), Python
//! programs that read `machine.unique_id()` and the firmware strings, write the key,
//! certificate and chain as PEM files, and have the board hash each file
//! (`hashlib.sha256`) for read-back.
//!
//! The board has no LOCK and makes no keys cradle could certify: the host makes the key
//! (`--mode inject`), and the identity counts as burned once the board reports the
//! SHA-256 of every file written. A failed run is simply run again (files are
//! rewritten whole).
//!
//! Decommissioning removes the files and confirms that `os.stat` raises ENOENT for
//! each: a wipe verified by read-back, not a signed attestation (the board holds no key
//! it could sign with apart from the one being removed).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    Burn, DeviceKey, DeviceLink, DeviceProfile, Identity, LinkParams, LinkStats, OnProgress,
    ReadBackWipe, WipeLink,
};
use crate::attestation::WipeAttestation;
use crate::pki::cert::to_pem;
use crate::wire::raw_repl::{py_bytes, py_str, Output, RawRepl};
use crate::wire::{self, WireError};

pub const KEY_PATH: &str = "/certs/device.key";
pub const CERT_PATH: &str = "/certs/device.crt";
pub const CHAIN_PATH: &str = "/certs/chain.pem";
/// File bytes per `w(...)` statement: small enough for a board's RAM, large enough
/// that the statement overhead stays near 1%.
const WRITE_CHUNK: usize = 512;

const IDENTIFY: &str = "import machine,os,sys,binascii\n\
print(binascii.hexlify(machine.unique_id()).decode())\n\
print(sys.implementation)\n\
print(os.uname())\n";

/// The files a board gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub key: String,
    pub cert: String,
    pub chain: String,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            key: KEY_PATH.into(),
            cert: CERT_PATH.into(),
            chain: CHAIN_PATH.into(),
        }
    }
}

impl Paths {
    fn all(&self) -> [&str; 3] {
        [&self.key, &self.cert, &self.chain]
    }

    /// Checks the paths a user gave: absolute, distinct, plain text, not a directory.
    pub fn check(&self) -> crate::Result<()> {
        for (flag, p) in [
            ("--mp-key-path", &self.key),
            ("--mp-cert-path", &self.cert),
            ("--mp-chain-path", &self.chain),
        ] {
            check_board_path(flag, p)?;
        }
        if self.key == self.cert || self.key == self.chain || self.cert == self.chain {
            return Err(crate::Error::input(
                "--mp-key-path, --mp-cert-path and --mp-chain-path must be three different files",
            ));
        }
        Ok(())
    }
}

/// Checks a file path on the board: absolute, plain text, not a directory.
pub fn check_board_path(flag: &str, p: &str) -> crate::Result<()> {
    let ok = p.starts_with('/')
        && !p.ends_with('/')
        && p.len() <= 255
        && !p.chars().any(char::is_control)
        && !p.split('/').any(|c| c == "." || c == "..");
    if !ok {
        return Err(crate::Error::input(format!(
            "{flag} '{p}': want an absolute file path on the board (e.g. /certs/device.crt), at most 255 characters, without '.', '..' or control characters"
        )));
    }
    Ok(())
}

/// Hex SHA-256, as the board prints it.
fn sha_hex(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

/// The program that makes the board hash `path`. The files are a few KiB at most, so
/// the board reads each whole (mpremote's `fs sha256sum` loops over 256-byte pieces:
/// 150 bytes more on the line per file).
fn sha_program(path: &str) -> String {
    format!(
        "import hashlib,binascii\nh=hashlib.sha256()\nwith open({p},'rb') as f:\n h.update(f.read())\nprint(binascii.hexlify(h.digest()).decode())\n",
        p = py_str(path)
    )
}

/// The program that writes `data` to `path` (truncating it), in chunks.
fn write_program(path: &str, data: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(data.len() + 64));
    p.extend_from_slice(format!("f=open({},'wb')\nw=f.write\n", py_str(path)).as_bytes());
    for c in data.chunks(WRITE_CHUNK) {
        let lit = Zeroizing::new(py_bytes(c));
        p.extend_from_slice(b"w(");
        p.extend_from_slice(lit.as_bytes());
        p.extend_from_slice(b")\n");
    }
    p.extend_from_slice(b"f.close()\n");
    p
}

/// Every directory above the files, outermost first.
fn parents(paths: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        for d in parts.iter().take(parts.len().saturating_sub(1)) {
            acc.push('/');
            acc.push_str(d);
            if !out.contains(&acc) {
                out.push(acc.clone());
            }
        }
    }
    out
}

/// A `name='value'` field of a printed namedtuple (`os.uname()`).
fn field(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}='"))? + name.len() + 2;
    let end = text[start..].find('\'')? + start;
    Some(text[start..end].to_string())
}

pub struct MicropythonLink<T: Read + Write = wire::Port> {
    repl: RawRepl<T>,
    paths: Paths,
    /// (path, SHA-256 hex) of what this run wrote.
    written: Vec<(String, String)>,
    /// SHA-256 of the certificate file as the board reports it, once per run (`holds`).
    held_cert: Option<Option<String>>,
    retries: u32,
}

/// Attempts per step (first try included) when the line garbles a program or answer.
const ATTEMPTS: u32 = 4;

impl MicropythonLink<wire::Port> {
    pub fn open(port: &Path, params: LinkParams) -> Result<Self, WireError> {
        let repl = RawRepl::new(
            wire::open_port(port, params.baud)?,
            params.baud,
            params.timeout,
        );
        Ok(MicropythonLink::over(repl, params.micropython_paths))
    }
}

impl<T: Read + Write> MicropythonLink<T> {
    pub fn over(repl: RawRepl<T>, paths: Paths) -> Self {
        MicropythonLink {
            repl,
            paths,
            written: Vec::new(),
            held_cert: None,
            retries: 0,
        }
    }

    fn ensure_raw(&mut self) -> Result<(), WireError> {
        if !self.repl.in_raw {
            self.repl.enter()?;
        }
        Ok(())
    }

    fn run(&mut self, code: &[u8]) -> Result<Output, WireError> {
        self.ensure_raw()?;
        self.repl.exec(code)
    }

    /// The board's SHA-256 of `path`, or None when the file does not exist.
    fn board_sha(&mut self, path: &str) -> Result<Option<String>, WireError> {
        let out = self.run(sha_program(path).as_bytes())?;
        if out.os_error("ENOENT") {
            return Ok(None);
        }
        let text = out.ok(&format!("the SHA-256 of {path}"))?;
        let sha = text.trim().to_string();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WireError::Protocol(format!(
                "the board's SHA-256 of {path} is not 64 hex digits: {sha:?}"
            )));
        }
        Ok(Some(sha))
    }

    /// Runs `op`; after an error a garbled line can explain (a timeout, a mangled
    /// answer, a program the board could not parse, a wrong SHA-256) interrupts the
    /// board, re-enters the raw REPL and tries again. The board's own refusals
    /// (`OSError`) and a lost port are final.
    fn retrying<R>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<R, WireError>,
    ) -> Result<R, WireError> {
        let mut attempt = 1;
        loop {
            match op(self) {
                Ok(v) => return Ok(v),
                Err(
                    e @ (WireError::Timeout { .. }
                    | WireError::Protocol(_)
                    | WireError::Unexpected(_)
                    | WireError::Verify(_)),
                ) if attempt < ATTEMPTS => {
                    let _ = e;
                    attempt += 1;
                    self.repl.in_raw = false;
                    self.retries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `data` to `path` and has the board hash what it wrote, in one program
    /// (one round trip per file); written again on a mismatch. `prefix` runs first
    /// (creating the directories).
    fn write_verified(&mut self, prefix: &str, path: &str, data: &[u8]) -> Result<(), WireError> {
        let want = sha_hex(data);
        let mut prog = Zeroizing::new(prefix.as_bytes().to_vec());
        prog.extend_from_slice(&write_program(path, data));
        prog.extend_from_slice(sha_program(path).as_bytes());
        self.retrying(|l| {
            let text = l.run(&prog)?.ok(&format!("writing {path}"))?;
            let got = text.trim();
            if got != want {
                return Err(WireError::Verify(format!(
                    "read-back: the board reports SHA-256 {got:?} for {path}, expected {want}"
                )));
            }
            Ok(())
        })?;
        self.written.push((path.to_string(), want));
        Ok(())
    }

    fn identify_board(&mut self) -> Result<Identity, WireError> {
        self.retrying(|l| l.identify_once())
    }

    fn identify_once(&mut self) -> Result<Identity, WireError> {
        self.repl.enter()?;
        let text = self.run(IDENTIFY.as_bytes())?.ok("identify")?;
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let [uid, implementation, uname] = lines[..] else {
            return Err(WireError::Protocol(format!(
                "the board's identification has {} lines, expected 3",
                lines.len()
            )));
        };
        if !implementation.contains("name='micropython'") {
            return Err(WireError::Unexpected(format!(
                "the board is not running MicroPython (sys.implementation is {implementation})"
            )));
        }
        if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WireError::Protocol(format!(
                "machine.unique_id() is not hex: {uid:?}"
            )));
        }
        let model = field(uname, "machine")
            .ok_or_else(|| WireError::Protocol("os.uname() has no machine field".into()))?;
        let release = field(uname, "release")
            .ok_or_else(|| WireError::Protocol("os.uname() has no release field".into()))?;
        // They go into the registry and its exports: short, printable text only.
        for (what, v) in [("machine", &model), ("release", &release)] {
            if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
                return Err(WireError::Protocol(format!(
                    "os.uname().{what} is not a short printable string: {v:?}"
                )));
            }
        }
        Ok(Identity {
            hardware_id: uid.to_ascii_lowercase(),
            serial: None,
            model,
            firmware: format!("MicroPython {release}"),
            imei: None,
            sealed: false,
        })
    }
}

impl<T: Read + Write> Drop for MicropythonLink<T> {
    fn drop(&mut self) {
        // Leave the board at its friendly REPL, as mpremote does.
        let _ = self.repl.exit();
    }
}

impl<T: Read + Write + Send> DeviceLink for MicropythonLink<T> {
    fn profile(&self) -> DeviceProfile {
        DeviceProfile::Micropython
    }

    fn identify(&mut self) -> Result<Identity, WireError> {
        self.identify_board()
    }

    fn seals(&self) -> bool {
        false
    }

    fn generate_key(&mut self) -> Result<DeviceKey, WireError> {
        Err(WireError::Unexpected(
            "a MicroPython board makes no key cradle can certify: provision it with --mode inject"
                .into(),
        ))
    }

    fn write_identity(
        &mut self,
        burn: &mut Burn<'_>,
        progress: &mut OnProgress<'_>,
    ) -> Result<(), WireError> {
        let total = burn.len();
        let cert_pem = to_pem("CERTIFICATE", burn.cert_der);
        let chain_pem: String = burn
            .chain_der
            .iter()
            .map(|d| to_pem("CERTIFICATE", d))
            .collect();
        self.written.clear();
        self.held_cert = None;
        let mut mk = String::from("import os\n");
        for d in parents(&self.paths.all()) {
            mk.push_str(&format!(
                "try:\n os.mkdir({})\nexcept OSError:\n pass\n",
                py_str(&d)
            ));
        }
        let mut done = 0u64;
        if let Some(k) = burn.key.take() {
            progress("write key", 0, total);
            let pem = Zeroizing::new(to_pem("PRIVATE KEY", &k));
            let path = self.paths.key.clone();
            self.write_verified(&std::mem::take(&mut mk), &path, pem.as_bytes())?;
            done += k.len() as u64;
            // On the board and verified; the host's copies are zeroised as they drop here.
        }
        for (step, path, data) in [
            ("write cert", self.paths.cert.clone(), cert_pem.as_bytes()),
            (
                "write chain",
                self.paths.chain.clone(),
                chain_pem.as_bytes(),
            ),
        ] {
            progress(step, done, total);
            self.write_verified(&std::mem::take(&mut mk), &path, data)?;
            done += data.len() as u64;
        }
        Ok(())
    }

    fn verify_identity(&mut self, _cert: &[u8], _chain: &[Vec<u8>]) -> Result<(), WireError> {
        // Every file was read back (the board's SHA-256) as it was written, and only a
        // matching digest put it in `written`: hashing them all again would only add
        // round trips.
        let verified: Vec<&str> = self.written.iter().map(|(p, _)| p.as_str()).collect();
        for p in [&self.paths.cert, &self.paths.chain] {
            if !verified.contains(&p.as_str()) {
                return Err(WireError::Verify(format!(
                    "read-back: {p} was not verified on the board"
                )));
            }
        }
        // Verified: back to the friendly REPL, as a board is left after mpremote.
        self.repl.exit()
    }

    fn seal(&mut self) -> Result<(), WireError> {
        Ok(())
    }

    fn holds(&mut self, cert_der: &[u8]) -> Result<bool, WireError> {
        if self.held_cert.is_none() {
            let path = self.paths.cert.clone();
            self.held_cert = Some(self.retrying(|l| l.board_sha(&path))?);
        }
        let want = sha_hex(to_pem("CERTIFICATE", cert_der).as_bytes());
        Ok(self.held_cert.as_ref().and_then(Option::as_ref) == Some(&want))
    }

    fn write_config(&mut self, cfg: &super::ConfigBlob<'_>) -> Result<String, WireError> {
        let path = cfg.micropython_path.to_string();
        if self.paths.all().contains(&path.as_str()) {
            return Err(WireError::Unexpected(format!(
                "the config file {path} would overwrite an identity file"
            )));
        }
        let mut mk = String::from("import os\n");
        for d in parents(&[&path]) {
            mk.push_str(&format!(
                "try:\n os.mkdir({})\nexcept OSError:\n pass\n",
                py_str(&d)
            ));
        }
        self.write_verified(&mk, &path, cfg.data)?;
        self.repl.exit()?;
        Ok(path)
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("key_path".into(), self.paths.key.clone().into());
        m.insert("cert_path".into(), self.paths.cert.clone().into());
        m.insert("chain_path".into(), self.paths.chain.clone().into());
        if let Some(p) = self.repl.paste_mode() {
            m.insert("raw_paste".into(), p.into());
        }
        m
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            wire_bytes: self.repl.tx_bytes + self.repl.rx_bytes,
            retries: self.retries,
            ..LinkStats::default()
        }
    }
}

impl<T: Read + Write> WipeLink for MicropythonLink<T> {
    fn hardware_id(&mut self) -> crate::Result<String> {
        Ok(self.identify_board()?.hardware_id)
    }

    fn contact(&mut self) -> crate::Result<(String, Option<String>)> {
        let b = self.identify_board()?;
        Ok((b.hardware_id, Some(b.firmware)))
    }

    fn wipe(&mut self, _nonce: [u8; 32]) -> crate::Result<WipeAttestation> {
        Err(crate::Error::Device(
            "a MicroPython board cannot sign a wipe attestation; its wipe is verified by read-back"
                .into(),
        ))
    }

    fn reads_back(&self) -> bool {
        true
    }

    fn wipe_read_back(&mut self) -> crate::Result<ReadBackWipe> {
        let paths: Vec<String> = self.paths.all().iter().map(|s| s.to_string()).collect();
        let mut rm = String::from("import os\n");
        for p in &paths {
            rm.push_str(&format!(
                "try:\n os.remove({})\nexcept OSError:\n pass\n",
                py_str(p)
            ));
        }
        self.run(rm.as_bytes())?.ok("removing the identity files")?;
        // Read back: every file must be gone (os.stat raises ENOENT).
        for p in &paths {
            let out = self
                .run(format!("import os\nprint(repr(tuple(os.stat({}))))", py_str(p)).as_bytes())?;
            if !out.os_error("ENOENT") {
                return Err(crate::Error::Device(format!(
                    "read-back after removing {p}: the board still has it ({})",
                    out.exception()
                        .unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
                )));
            }
        }
        self.repl.exit()?;
        Ok(ReadBackWipe {
            hardware_id: None,
            method: format!(
                "os.remove of each identity file over the MicroPython raw REPL: {}",
                paths.join(", ")
            ),
            verification:
                "verified by read-back: os.stat of each file raised OSError ENOENT after removal"
                    .into(),
            tool: "cradle MicroPython raw REPL link".into(),
            media_type: "device filesystem (identity files)".into(),
            evidence: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_have_the_shapes_the_board_knows() {
        assert_eq!(
            parents(&["/certs/device.key", "/certs/a/b.pem", "/top.pem"]),
            ["/certs", "/certs/a"]
        );
        let p = write_program("/certs/x", &[b'a'; 1100]);
        let text = String::from_utf8(p.to_vec()).unwrap();
        assert_eq!(text.matches("\nw(b'").count(), 3);
        assert!(text.starts_with("f=open('/certs/x','wb')\nw=f.write\n"));
        assert!(text.ends_with("f.close()\n"));
        assert_eq!(
            field(
                "(sysname='rp2', release='1.24.1', machine='Pico W')",
                "machine"
            )
            .as_deref(),
            Some("Pico W")
        );
    }
}
