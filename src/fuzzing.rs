//! Fuzz entry points: one function per parser of outside input, shared by the cargo-fuzz
//! crate under `tests/fuzz` and by `tests/fuzz_replay.rs`, which replays the corpora and
//! the kept crash inputs under plain `cargo test`.
//!
//! Each function feeds the bytes to the real parser and ignores `Err` results: an error
//! is the parser doing its job, a panic or a hang is the bug. Where a parser is guarded
//! by a checksum the fuzzer cannot guess (the frame CRC), the bytes are also fed with the
//! checksum fixed up, so the code behind it is reached too.

use std::io::Write as _;

use crate::wire::frame::{crc32, Frame, Line, LineBuffer};

/// One fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and cargo-fuzz target carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("csr", csr),
    ("cert", cert),
    ("keygen", keygen),
    ("at_reply", at_reply),
    ("profile", profile),
    ("config", config),
    ("csv", csv),
    ("identity_keys", identity_keys),
    ("sim_frame", sim_frame),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// `line` with the CRC of a `$… *XXXXXXXX` frame recomputed (unchanged when it has no
/// such shape), so the fuzzer gets past the checksum.
fn with_crc_fixed(line: &[u8]) -> Vec<u8> {
    let Some(start) = line.iter().rposition(|&b| b == b'$') else {
        return line.to_vec();
    };
    let text = &line[start + 1..];
    let body_end = match text.windows(2).rposition(|w| w == b" *") {
        Some(i) => i,
        None => text.len(),
    };
    let mut out = line[..start + 1 + body_end].to_vec();
    let crc = crc32(&text[..body_end]);
    out.extend_from_slice(format!(" *{crc:08x}").as_bytes());
    out
}

/// Chunk sizes for feeding a stream, taken from the data so the fuzzer varies them.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let size = data.first().map_or(1, |b| (*b as usize % 17) + 1);
    data.chunks(size)
}

/// `wire::frame`: `Frame::parse` on the bytes and on each line (as sent and with the
/// CRC fixed), and a small `LineBuffer` fed in chunks. A parsed frame must survive an
/// encode/parse round trip, and no line may exceed the buffer's bound.
pub fn frame(data: &[u8]) {
    let check = |line: &[u8]| {
        if let Ok(f) = Frame::parse(line) {
            let mut enc = f.encode();
            assert_eq!(enc.pop(), Some(b'\n'));
            let back = Frame::parse(&enc).expect("an encoded frame parses");
            assert_eq!(back, f, "encode/parse round trip");
            for a in &f.args {
                if let Some((k, _)) = a.split_once('=') {
                    let _ = f.need_b64(k);
                    let _ = f.need_u64(k);
                }
            }
        }
    };
    check(data);
    for line in data.split(|&b| b == b'\n') {
        check(line);
        check(&with_crc_fixed(line));
    }
    const MAX: usize = 64;
    let mut lb = LineBuffer::new(MAX);
    let mut out = Vec::new();
    for c in chunks(data) {
        lb.push(c, &mut out);
    }
    for l in &out {
        if let Line::Complete(l) = l {
            assert!(
                l.len() <= MAX,
                "line of {} bytes past a {MAX} bound",
                l.len()
            );
            check(l);
        }
    }
}

/// `pki::csr`: PEM or DER to DER, then the full check (key type, point, signature).
pub fn csr(data: &[u8]) {
    if let Ok(der) = crate::pki::csr::csr_der_from_bytes(data) {
        let _ = crate::pki::csr::check_csr(&der);
    }
}

/// `pki::cert`: every certificate of a PEM bundle or DER blob, and what the registry
/// records about each.
pub fn cert(data: &[u8]) {
    if let Ok(ders) = crate::pki::cert::read_certs(data, "fuzz") {
        for der in ders {
            let _ = crate::pki::cert::info_of(&der);
        }
    }
}

/// `wire::nrf91::parse_keygen` on the bytes as a `%KEYGEN` value, the CBOR decoder on
/// the raw bytes, and the bytes as the COSE_Sign1 of a reply (past the base64url layer).
pub fn keygen(data: &[u8]) {
    use crate::wire::nrf91::{cbor_check, keygen_reply_text, parse_keygen, BodyKind};
    const SEC_TAG: u32 = 16_842_753;
    let text = String::from_utf8_lossy(data);
    for kind in [BodyKind::Csr, BodyKind::PublicKey] {
        let _ = parse_keygen(&text, SEC_TAG, kind, None);
    }
    let _ = cbor_check(data);
    let _ = parse_keygen(
        &keygen_reply_text(b"body", data),
        SEC_TAG,
        BodyKind::Csr,
        None,
    );
}

/// The nRF91 AT reply parsing of `NrfSession::command`, `one`, `identify` and `list`:
/// the bytes as what a modem sends back, split by the session's line buffer.
pub fn at_reply(data: &[u8]) {
    use crate::wire::nrf91::{parse_cmng_list, prefixed_value, reply_line, ReplyLine, AT_MAX_LINE};
    let mut lb = LineBuffer::new(AT_MAX_LINE);
    let mut pending = Vec::new();
    for c in chunks(data) {
        lb.push(c, &mut pending);
    }
    let cmd = "AT%CMNG=1,16842753";
    let mut lines = Vec::new();
    for l in pending {
        let Line::Complete(l) = l else { break };
        match reply_line(cmd, "AT%CMNG", &l) {
            ReplyLine::Skip => {}
            ReplyLine::Data(t) => lines.push(t),
            ReplyLine::Ok | ReplyLine::Refused(_) => break,
        }
    }
    let _ = parse_cmng_list(&lines);
    for (what, prefix) in [("IMEI", "+CGSN:"), ("key", "%KEYGEN:")] {
        if let Ok(v) = prefixed_value(cmd, &lines, prefix) {
            let _ = crate::wire::check_token(what, &v);
        }
    }
    if let Some(first) = lines.first() {
        let _ = crate::wire::check_token("model", first);
    }
}

/// `pki::profile`: parse a profile, and render one that parses with a fixed set of
/// variables. The text is also put, as a TOML string, into the template, day count and
/// OID slots of a valid profile, so the checks behind the TOML layer are reached.
pub fn profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    profile_text(text);
    let quoted = toml::Value::String(text.to_string()).to_string();
    let days = text.trim().parse::<u32>().unwrap_or(1);
    profile_text(&format!(
        "[subject]\nCN = {quoted}\n[validity]\ndays = {days}\n[san]\ndns = [{quoted}]\n"
    ));
    profile_text(&format!(
        "[subject]\nCN = \"x\"\n[validity]\ndays = 1\n[san.hardware_module]\nhw_type = {quoted}\nserial = {quoted}\n"
    ));
}

fn profile_text(text: &str) {
    let Ok(p) = crate::pki::profile::Profile::parse("fuzz", "fuzz", text) else {
        return;
    };
    let _ = p.required_variables();
    let mut vars = crate::pki::profile::Vars::new();
    for (k, v) in [
        ("serial", "SN-0001"),
        ("hardware_id", "HW-0001"),
        ("model", "sensor-a"),
        ("hw_rev", "B"),
        ("mac", "02:00:00:00:00:01"),
        ("mac_hex", "020000000001"),
        ("imei", "352656100000001"),
        ("org", "Example Org"),
        ("ca_name", "Issuing CA"),
        ("profile", "fuzz"),
        ("attr.x", "y"),
    ] {
        vars.insert(k.into(), v.into());
    }
    let now = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("a valid time");
    let _ = p.render(&vars, now);
}

/// `home::parse_config`: the config.toml parser.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::home::parse_config("config.toml", text);
    }
}

/// `inventory import` of the bytes as a CSV file into an empty in-memory registry, as a
/// dry run with the default options (and once more as an upsert keeping extra columns).
/// A dry run must leave the registry empty, so one registry serves every input.
pub fn csv(data: &[u8]) {
    use crate::app::inventory::import::{import, ImportOptions, Mode, Quiet};
    use std::io::{Seek, SeekFrom};
    thread_local! {
        static STATE: std::cell::RefCell<Option<(crate::store::Store, tempfile::NamedTempFile)>> =
            const { std::cell::RefCell::new(None) };
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let (store, file) = s.get_or_insert_with(|| {
            (
                crate::store::Store::in_memory().expect("an in-memory registry"),
                tempfile::NamedTempFile::new().expect("a temporary file"),
            )
        });
        let f = file.as_file_mut();
        f.set_len(0).expect("truncate");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(data).expect("write the CSV");
        let actor = crate::model::Actor {
            operator: "fuzz".into(),
            station: "fuzz".into(),
        };
        let plain = ImportOptions {
            dry_run: true,
            ..ImportOptions::default()
        };
        let extra = ImportOptions {
            mode: Mode::Upsert,
            keep_extra: true,
            ..plain.clone()
        };
        for opts in [plain, extra] {
            let _ = import(store, file.path(), &opts, &actor, &mut Quiet);
            assert_eq!(
                crate::store::retire::device_count(store).ok(),
                Some(0),
                "a dry run wrote to the registry"
            );
        }
    });
}

/// `wire::nrf91::IdentityKeys::parse`: the `--nrf-identity-keys` bundle.
pub fn identity_keys(data: &[u8]) {
    let _ = crate::wire::nrf91::IdentityKeys::parse(&String::from_utf8_lossy(data));
}

/// The simulator's side of the cradle protocol: the bytes fed to a fresh simulated
/// device in chunks, then each line again with its CRC fixed.
pub fn sim_frame(data: &[u8]) {
    use crate::sim::{CradleResponder, Device, DeviceState, Faults, Responder};
    let fresh = || {
        CradleResponder::new(Device::new(
            DeviceState::new("FUZZ-1", "fuzz"),
            None,
            Faults::default(),
        ))
    };
    let mut r = fresh();
    for c in chunks(data) {
        r.feed(c);
    }
    let mut r = fresh();
    for line in data.split(|&b| b == b'\n') {
        let mut l = with_crc_fixed(line);
        l.push(b'\n');
        r.feed(&l);
    }
}
