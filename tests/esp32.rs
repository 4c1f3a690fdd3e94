//! ESP32 over its ROM bootloader, end to end on real pseudo-terminals: `cradle sim
//! --profile esp32` held to Espressif's own `esptool` (--no-stub), `cradle provision
//! --device-profile esp32` writing the `esp_secure_cert` partition, every image parsed
//! by Espressif's `esp-secure-cert-tool` TLV parser, every certificate checked by openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{openssl, q, Env, Sim, SIM_BAUD as BAUD};

const MAC: &str = "24:0a:c4:12:34:56";
const SECTOR: usize = 0x1000;

/// The bin dir of a venv with esptool and esp-secure-cert-tool (`.ci/run` makes it and
/// sets CRADLE_TEST_ESPTOOL_BIN); CI fails rather than skips without it.
fn esp_bin() -> Option<PathBuf> {
    match std::env::var_os("CRADLE_TEST_ESPTOOL_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CRADLE_TEST_ESPTOOL_BIN is not set (.ci/run installs esptool and esp-secure-cert-tool)")
        }
        None => {
            eprintln!("skipped: CRADLE_TEST_ESPTOOL_BIN not set");
            None
        }
    }
}

/// Runs esptool against a pty the way a pty allows (no DTR/RTS): ROM only, no reset.
fn esptool(bin: &Path, port: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(bin.join("esptool"))
        .args(["--port", port.to_str().unwrap(), "--no-stub"])
        .args(["--before", "no-reset", "--after", "no-reset"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run esptool");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn sim_esp(env: &Env, link: &Path, state: &Path, count: usize, extra: &[&str]) -> Sim {
    let mut a = vec![
        "--profile",
        "esp32",
        "--link",
        link.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--hardware-id",
        MAC,
    ];
    let n = count.to_string();
    if count > 1 {
        a.extend(["--count", &n]);
    }
    a.extend_from_slice(extra);
    Sim::start(env, &a, count)
}

fn provision(
    env: &Env,
    ports: &[&str],
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let profile = ["--device-profile", "esp32", "--mode", "inject"];
    common::provision_json(env, ports, &[&profile[..], extra].concat())
}

/// `len` bytes of the simulated chip's flash at `addr`, from its `<state>.flash` file
/// (sector number, then the sector; absent sectors are erased).
fn sim_flash(state: &Path, addr: usize, len: usize) -> Vec<u8> {
    let mut p = state.as_os_str().to_owned();
    p.push(".flash");
    let raw = std::fs::read(PathBuf::from(p)).unwrap_or_default();
    let mut out = vec![0xFFu8; len];
    for c in raw.chunks_exact(SECTOR + 4) {
        let base = u32::from_le_bytes(c[..4].try_into().unwrap()) as usize * SECTOR;
        for (i, b) in c[4..].iter().enumerate() {
            let a = base + i;
            if a >= addr && a < addr + len {
                out[a - addr] = *b;
            }
        }
    }
    out
}

/// One TLV entry as Espressif's parser reads it.
#[derive(Debug, serde::Deserialize)]
struct Tlv {
    #[serde(rename = "type")]
    kind: u8,
    flags: u8,
    crc_ok: bool,
    data: String,
}

/// Parses an image with `esp_secure_cert.tlv_parser` (Espressif's code, not ours):
/// its header/footer/CRC functions per entry, and its own report must show every
/// entry VALID.
fn espressif_parse(bin: &Path, image: &[u8], dir: &Path) -> Vec<Tlv> {
    let f = dir.join(format!("img-{}.bin", std::process::id()));
    std::fs::write(&f, image).unwrap();
    let script = r#"
import sys, json
from esp_secure_cert import tlv_parser as t
data = open(sys.argv[1], 'rb').read()
off, out = 0, []
while off + 12 <= len(data):
    h, hs = t.parse_tlv_header(data, off)
    if h['magic'] != t.ESP_SECURE_CERT_TLV_MAGIC:
        break
    pad = t.get_padding_length(h['length'])
    d = data[off + hs: off + hs + h['length']]
    foot, _ = t.parse_tlv_footer(data, off + hs + h['length'] + pad)
    ok, _ = t.verify_tlv_integrity(h, data[off:], foot)
    out.append({'type': h['type'], 'flags': h['flags'], 'crc_ok': ok, 'data': d.decode('latin1')})
    off += t.get_tlv_total_length(h)
print(json.dumps(out))
t.process_tlv_entries(sys.argv[1])
"#;
    let o = Command::new(bin.join("python"))
        .args(["-c", script, f.to_str().unwrap()])
        .output()
        .expect("python");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (json, report) = out.split_once('\n').unwrap();
    assert!(!report.contains("INVALID"), "{report}");
    assert!(report.contains("Software-based (Plaintext)"), "{report}");
    serde_json::from_str(json).unwrap()
}

fn pem_blocks(s: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    s.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|b| {
            let body: String = b
                .split("-----END")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        })
        .collect()
}

fn sha256_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

/// The identity in a partition image, by our own parser: (device cert DER, chain PEM,
/// key PEM). Used where Espressif's parser is not installed; `espressif_parse` checks
/// the same images where it is.
fn identity_in(image: &[u8]) -> Option<(Vec<u8>, String, String)> {
    let mut off = 0;
    let (mut cert, mut chain, mut key) = (None, None, None);
    while off + 12 <= image.len() && image[off..off + 4] == 0xBA5E_BA11u32.to_le_bytes() {
        let len = u16::from_le_bytes([image[off + 10], image[off + 11]]) as usize;
        let d = String::from_utf8_lossy(&image[off + 12..off + 12 + len])
            .trim_end_matches('\0')
            .to_string();
        match image[off + 8] {
            0 => chain = Some(d),
            1 => cert = pem_blocks(&d).into_iter().next(),
            2 => key = Some(d),
            _ => {}
        }
        off += 12 + len.div_ceil(16) * 16 + 4;
    }
    Some((cert?, chain?, key?))
}

/// Bytes the TLV entries at the start of `image` take (header, padded data, CRC each).
fn tlv_len(image: &[u8]) -> usize {
    let mut off = 0;
    while off + 12 <= image.len() && image[off..off + 4] == 0xBA5E_BA11u32.to_le_bytes() {
        let len = u16::from_le_bytes([image[off + 10], image[off + 11]]) as usize;
        off += 12 + len.div_ceil(16) * 16 + 4;
    }
    off
}

/// The invariants of every run, pass or fail: a device is `provisioned` exactly when it
/// has one active certificate, and then its flash holds that certificate, the CA chain
/// and the key of that certificate (openssl compares the public keys).
fn check_invariants(env: &Env, mac: &str, state: &Path, offset: usize) {
    let status = q(
        env,
        &format!("SELECT status FROM devices WHERE hardware_id='{mac}'"),
    );
    let active = q(env, &format!(
        "SELECT c.fingerprint FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.hardware_id='{mac}' AND c.status='active'"
    ));
    if status != "provisioned" {
        assert_eq!(
            active, "",
            "device {mac} is {status:?} but has an active certificate"
        );
        return;
    }
    assert_eq!(active.lines().count(), 1, "{mac}: {active}");
    let img = sim_flash(state, offset, 0x2000);
    let (cert, chain, key) = identity_in(&img).expect("provisioned device holds an identity");
    // Espressif's parser reads the same image: same entries, every CRC valid.
    if let Some(bin) = esp_bin() {
        let tlv = espressif_parse(&bin, &img, env.dir.path());
        assert_eq!(tlv.iter().map(|t| t.kind).collect::<Vec<_>>(), [1, 0, 2]);
        assert!(tlv.iter().all(|t| t.crc_ok && t.flags == 0));
        assert_eq!(pem_blocks(&tlv[0].data), vec![cert.clone()]);
        assert_eq!(tlv[1].data.trim_end_matches('\0'), chain);
        assert_eq!(tlv[2].data.trim_end_matches('\0'), key);
    }
    assert_eq!(
        sha256_hex(&cert),
        active,
        "the active cert is the one in flash"
    );
    let ca = env.home.join("ca");
    let want_chain: Vec<Vec<u8>> = ["issuing.pem", "root.pem"]
        .iter()
        .flat_map(|f| pem_blocks(&std::fs::read_to_string(ca.join(f)).unwrap()))
        .collect();
    assert_eq!(
        pem_blocks(&chain),
        want_chain,
        "CA chain in esp_secure_cert"
    );
    openssl_verify(env, &cert, &mac.replace(':', ""));
    let c = env.path("pk-cert.pem");
    let k = env.path("pk-key.pem");
    std::fs::write(&c, to_pem(&cert)).unwrap();
    std::fs::write(&k, &key).unwrap();
    let (ok1, a) = openssl(&["x509", "-in", c.to_str().unwrap(), "-noout", "-pubkey"]);
    let (ok2, b) = openssl(&["pkey", "-in", k.to_str().unwrap(), "-pubout"]);
    assert!(
        ok1 && ok2 && a == b,
        "key in flash is not the certificate's key: {a} {b}"
    );
    let _ = std::fs::remove_file(&k);
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for c in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(c).unwrap());
        s.push('\n');
    }
    s + "-----END CERTIFICATE-----\n"
}

fn openssl_verify(env: &Env, der: &[u8], name: &str) {
    let f = env.path(&format!("{name}.pem"));
    std::fs::write(&f, to_pem(der)).unwrap();
    let ca = env.home.join("ca");
    let (ok, out) = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        ca.join("root.pem").to_str().unwrap(),
        "-untrusted",
        ca.join("issuing.pem").to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "openssl verify: {out}");
}

#[test]
fn esptool_accepts_the_simulated_esp32() {
    let Some(bin) = esp_bin() else { return };
    let env = Env::init();
    let link = env.path("dev/esp");
    let state = env.path("esp.json");
    let _sim = sim_esp(&env, &link, &state, 1, &[]);
    let (ok, out) = esptool(&bin, &link, &["chip-id"]);
    assert!(ok, "{out}");
    assert!(out.contains("Detecting chip type... ESP32"), "{out}");
    assert!(out.contains("ESP32-D0WD-V3 (revision v3.0)"), "{out}");
    let (ok, out) = esptool(&bin, &link, &["read-mac"]);
    assert!(
        ok && out.contains(&format!("MAC:                {MAC}")),
        "{out}"
    );

    // Random data (stored), then compressible data (FLASH_DEFL_*), each hash-verified
    // by esptool itself, read back and verified again.
    let rnd: Vec<u8> = (0..6000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let txt = b"cradle esp32 ".repeat(800);
    let (a, b) = (env.path("rnd.bin"), env.path("txt.bin"));
    std::fs::write(&a, &rnd).unwrap();
    std::fs::write(&b, &txt).unwrap();
    let (ok, out) = esptool(
        &bin,
        &link,
        &["write-flash", "-u", "0x10000", a.to_str().unwrap()],
    );
    assert!(ok && out.contains("Hash of data verified"), "{out}");
    let (ok, out) = esptool(
        &bin,
        &link,
        &["write-flash", "-z", "0x20000", b.to_str().unwrap()],
    );
    assert!(
        ok && out.contains("compressed") && out.contains("Hash of data verified"),
        "{out}"
    );
    let back = env.path("back.bin");
    let (ok, out) = esptool(
        &bin,
        &link,
        &["read-flash", "0x10000", "6000", back.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&back).unwrap(), rnd);
    let (ok, out) = esptool(
        &bin,
        &link,
        &["verify-flash", "0x20000", b.to_str().unwrap()],
    );
    assert!(ok && out.contains("digest matched"), "{out}");
    // And a real mismatch is one: the text is not at 0x10000.
    let (ok, out) = esptool(
        &bin,
        &link,
        &["verify-flash", "0x10000", b.to_str().unwrap()],
    );
    assert!(!ok && out.contains("digest mismatch"), "{out}");
}

#[test]
fn one_esp32_end_to_end_and_espressif_tools_agree() {
    let env = Env::with_ca();
    let link = env.path("dev/esp");
    let state = env.path("esp.json");
    let sim = sim_esp(&env, &link, &state, 1, &[]);
    let port = link.to_str().unwrap();

    // The ROM cannot make keys: CSR mode is refused before anything is written.
    let o = env.run(&[
        "provision",
        "--passphrase-file",
        env.pass(),
        "--port",
        port,
        "--device-profile",
        "esp32",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot make keys; give --mode inject"));
    assert_eq!(q(&env, "SELECT count(*) FROM devices"), "0");

    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let r = &v[0];
    assert_eq!(r["result"], "PASS");
    assert_eq!(r["hardware_id"], MAC);
    check_invariants(&env, MAC, &state, 0xD000);
    let passed = q(
        &env,
        "SELECT details FROM events WHERE kind='provision.passed'",
    );
    assert!(
        passed.contains("\"device_profile\":\"esp32\"")
            && passed.contains("\"esp_secure_cert_offset\":\"0xd000\""),
        "{passed}"
    );
    // Pipelined within the ROM's FIFO (which the simulator enforces): SYNC, one write of
    // 9 READ_REGs, SPI_ATTACH + SPI_SET_PARAMS, FLASH_BEGIN, then one write per 1 KiB
    // block, the last one with SPI_FLASH_MD5 behind it. One command at a time it was 18.
    let details: serde_json::Value = serde_json::from_str(&passed).unwrap();
    let used = tlv_len(&sim_flash(&state, 0xD000, 0x2000));
    let blocks = used.div_ceil(1024) as u64;
    assert!(blocks >= 2, "{used} bytes");
    // (A resend on a loaded machine adds its own; the count holds for a run without.)
    if r["retries"] == 0 {
        assert_eq!(details["round_trips"], 4 + blocks, "{passed}");
    }
    assert_eq!(
        q(
            &env,
            &format!("SELECT model FROM devices WHERE hardware_id='{MAC}'")
        ),
        "ESP32-D0WD-V3"
    );
    // Nothing of the key on the host: not in the registry, not in the home.
    let key_pem = identity_in(&sim_flash(&state, 0xD000, 0x2000)).unwrap().2;
    let key_b64: String = key_pem.lines().nth(1).unwrap().to_string();
    assert!(
        !env.dump().contains(&key_b64),
        "the device key is in the registry"
    );

    // A re-run finds the identity in flash and changes nothing.
    let (code, v, _) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v[0]["already_provisioned"], true, "{v:#}");
    assert_eq!(q(&env, "SELECT count(*) FROM certificates"), "1");

    // Espressif's tools on the same flash: esptool reads the partition back over the
    // ROM protocol, and esp-secure-cert-tool's parser yields the recorded identity.
    let Some(bin) = esp_bin() else { return };
    let back = env.path("part.bin");
    let (ok, out) = esptool(
        &bin,
        &link,
        &["read-flash", "0xD000", "0x2000", back.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let img = std::fs::read(&back).unwrap();
    assert_eq!(img, sim_flash(&state, 0xD000, 0x2000));
    let tlv = espressif_parse(&bin, &img, env.dir.path());
    assert_eq!(tlv.iter().map(|t| t.kind).collect::<Vec<_>>(), [1, 0, 2]);
    assert!(tlv
        .iter()
        .all(|t| t.crc_ok && t.flags == 0 && t.data.ends_with('\0')));
    let fp = q(
        &env,
        "SELECT fingerprint FROM certificates WHERE status='active'",
    );
    assert_eq!(sha256_hex(&pem_blocks(&tlv[0].data)[0]), fp);
    assert_eq!(tlv[2].data.trim_end_matches('\0'), key_pem);
    drop(sim);
}

#[test]
fn eight_esp32s_in_parallel() {
    let env = Env::with_ca();
    let link = env.path("dev/rack");
    let states = env.path("states");
    let _sim = sim_esp(&env, &link, &states, 8, &[]);
    let glob = format!("{}*", link.display());
    let (code, v, err) = provision(&env, &[], &["--ports", &glob]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    let r = v.as_array().unwrap();
    assert_eq!(r.len(), 8);
    assert!(r.iter().all(|r| r["result"] == "PASS"), "{v:#}");
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM devices WHERE status='provisioned'"
        ),
        "8"
    );
    for i in 0..8 {
        let mac = format!("24:0a:c4:12:34:{:02x}", 0x56 + i);
        check_invariants(&env, &mac, &states.join(format!("device-{i}.json")), 0xD000);
    }
}

#[test]
fn watch_mode_provisions_esp32s_as_they_appear() {
    let env = Env::with_ca();
    let link = env.path("dev/late");
    let glob = format!("{}*", link.display());
    let watcher = env
        .cmd(&[
            "--json",
            "provision",
            "--passphrase-file",
            env.pass(),
            "--baud",
            BAUD,
            "--timeout",
            "1",
            "--device-profile",
            "esp32",
            "--mode",
            "inject",
            "--ports",
            &glob,
            "--watch",
            "--limit",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let s1 = env.path("late1.json");
    let _a = sim_esp(&env, &env.path("dev/late-a"), &s1, 1, &[]);
    std::thread::sleep(Duration::from_millis(1200));
    let s2 = env.path("late2.json");
    let _b = Sim::start(
        &env,
        &[
            "--profile",
            "esp32",
            "--link",
            env.path("dev/late-b").to_str().unwrap(),
            "--state",
            s2.to_str().unwrap(),
            "--hardware-id",
            "24:0a:c4:00:00:02",
        ],
        1,
    );
    let until = Instant::now() + Duration::from_secs(60);
    let mut watcher = watcher;
    let status = loop {
        if let Some(s) = watcher.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "watcher did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = watcher.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|l| assert_eq!(l["result"], "PASS", "{l}"))
        .map(|l| l["hardware_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["24:0a:c4:00:00:02", MAC]);
    check_invariants(&env, MAC, &s1, 0xD000);
    check_invariants(&env, "24:0a:c4:00:00:02", &s2, 0xD000);
}

/// A device with `fault`: the first run passes or fails cleanly (never PASS without the
/// identity verified in flash), the re-run passes.
fn fault_case(fault: &str) -> serde_json::Value {
    let env = Env::with_ca();
    let link = env.path("dev/f");
    let state = env.path("f.json");
    let _sim = sim_esp(&env, &link, &state, 1, &["--fault", fault]);
    let port = link.to_str().unwrap();
    let (code, v, err) = provision(&env, &[port], &[]);
    let first = v[0].clone();
    match first["result"].as_str() {
        Some("PASS") => assert_eq!(code, Some(0)),
        Some("FAIL") => {
            assert_eq!(code, Some(1), "{err}");
            assert_eq!(
                q(
                    &env,
                    "SELECT count(*) FROM certificates WHERE status='active'"
                ),
                "0"
            );
            let st = q(
                &env,
                &format!("SELECT status FROM devices WHERE hardware_id='{MAC}'"),
            );
            assert!(st.is_empty() || st == "registered", "{st}");
        }
        other => panic!("unexpected {other:?}: {v:#}"),
    }
    check_invariants(&env, MAC, &state, 0xD000);
    // A hang-up brings the board back on a new pty behind the link; a babbling device
    // gives up its megabyte once nobody reads.
    std::thread::sleep(Duration::from_millis(if fault == "long-line" {
        1500
    } else {
        400
    }));
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "re-run after {fault}: {v:#}\n{err}");
    check_invariants(&env, MAC, &state, 0xD000);
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM certificates WHERE status='active'"
        ),
        "1"
    );
    first
}

#[test]
fn fault_garbled_bytes_recover() {
    let r = fault_case("corrupt:0.002");
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn fault_dropped_bytes_recover() {
    let r = fault_case("drop:0.002");
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn fault_reset_mid_write_fails_cleanly_then_rerun_passes() {
    let r = fault_case("disconnect-after:flash-data:2");
    assert_eq!(r["result"], "FAIL", "{r:#}");
}

#[test]
fn fault_a_bit_that_does_not_take_is_found_by_md5_and_rewritten() {
    let r = fault_case("hash-mismatch");
    assert_eq!(r["result"], "PASS", "{r:#}");
    assert!(r["retries"].as_u64().unwrap() >= 1, "{r:#}");
}

#[test]
fn fault_bad_flash_is_never_a_pass_and_never_a_verified_wipe() {
    let env = Env::with_ca();
    let link = env.path("dev/bad");
    let state = env.path("bad.json");
    let _sim = sim_esp(&env, &link, &state, 1, &["--fault", "stuck-bit"]);
    let port = link.to_str().unwrap();
    for _ in 0..2 {
        let (code, v, err) = provision(&env, &[port], &[]);
        assert_eq!(code, Some(1), "{v:#}\n{err}");
        assert!(
            v[0]["error"].as_str().unwrap().contains("flash MD5"),
            "{v:#}"
        );
        check_invariants(&env, MAC, &state, 0xD000);
    }
    assert_eq!(
        q(
            &env,
            &format!("SELECT status FROM devices WHERE hardware_id='{MAC}'")
        ),
        "registered"
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM certificates WHERE status='unused'"
        ),
        "2"
    );
    // Its erase does not read back as erased either: no wipe is recorded.
    let o = env.run(&[
        "decommission",
        MAC,
        "--passphrase-file",
        env.pass(),
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
        "--wipe-port",
        port,
        "--wipe-device-profile",
        "esp32",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("erased flash has"), "{all}");
    assert_eq!(q(&env, "SELECT count(*) FROM wipes"), "0");
}

#[test]
fn partition_from_a_table_or_an_offset() {
    let env = Env::with_ca();
    let link = env.path("dev/pt");
    let state = env.path("pt.json");
    let _sim = sim_esp(&env, &link, &state, 1, &[]);
    let port = link.to_str().unwrap();
    let csv = env.path("partitions.csv");
    std::fs::write(
        &csv,
        "# Name,   Type, SubType, Offset,  Size, Flags\nnvs,      data, nvs,     0x9000,  0x4000,\nesp_secure_cert, 0x3F, ,  0x1E000, 0x2000, encrypted\nfactory,  app,  factory, 0x20000, 1M,\n",
    )
    .unwrap();
    let (code, v, err) = provision(&env, &[port], &["--partition-table", csv.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    check_invariants(&env, MAC, &state, 0x1E000);
    assert!(identity_in(&sim_flash(&state, 0xD000, 0x2000)).is_none());

    // Bad input: one line, a documented exit code, nothing written.
    let before = q(&env, "SELECT count(*) FROM events");
    for (args, code, msg) in [
        (vec!["--esp-partition-offset", "0xD100"], 3, "4 KiB-aligned"),
        (vec!["--esp-partition-offset", "banana"], 3, "4 KiB-aligned"),
        (
            vec!["--partition-table", "/nonexistent.csv"],
            3,
            "cannot read",
        ),
        (
            vec![
                "--esp-partition-offset",
                "0xD000",
                "--partition-table",
                "x.csv",
            ],
            2,
            "cannot be used with",
        ),
    ] {
        let mut a = vec![
            "provision",
            "--passphrase-file",
            env.pass(),
            "--port",
            port,
            "--device-profile",
            "esp32",
            "--mode",
            "inject",
        ];
        a.extend(args);
        let out = env.fails(&a, code);
        assert!(out.contains(msg), "{out}");
    }
    let out = env.fails(
        &[
            "provision",
            "--passphrase-file",
            env.pass(),
            "--port",
            port,
            "--device-profile",
            "nrf91",
            "--esp-partition-offset",
            "0xD000",
        ],
        2,
    );
    assert!(out.contains("esp32 only"), "{out}");
    for (table, msg) in [
        (
            "nvs,data,nvs,0x9000,0x4000,\n",
            "no esp_secure_cert partition",
        ),
        (
            "esp_secure_cert,0x3F,,0x3FF000,0x2000,\n",
            "ends past the 4 MiB",
        ),
        (
            "esp_secure_cert,0x3F,,0xD000,zz,\n",
            "size 'zz' is not a number",
        ),
    ] {
        std::fs::write(&csv, table).unwrap();
        let out = env.fails(
            &[
                "provision",
                "--passphrase-file",
                env.pass(),
                "--port",
                port,
                "--device-profile",
                "esp32",
                "--mode",
                "inject",
                "--partition-table",
                csv.to_str().unwrap(),
            ],
            3,
        );
        assert!(out.contains(msg), "{out}");
    }
    assert_eq!(q(&env, "SELECT count(*) FROM events"), before);
}

#[test]
fn export_esp_secure_cert_for_a_held_key_and_refusals() {
    let env = Env::with_ca();
    let out = env.path("keys");
    env.ok(&[
        "identity",
        "issue",
        "ESP-1",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        env.pass(),
    ]);
    env.ok(&[
        "identity",
        "issue",
        "ESP-2",
        "--out",
        out.to_str().unwrap(),
        "--passphrase-file",
        env.pass(),
    ]);
    let key1 = out.join("ESP-1.key");
    let img = env.path("esp1.bin");
    let v = env.json(&[
        "identity",
        "export-esp-secure-cert",
        "ESP-1",
        "--key",
        key1.to_str().unwrap(),
        "-o",
        img.to_str().unwrap(),
    ]);
    assert_eq!(v["bytes"], 0x2000);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bytes = std::fs::read(&img).unwrap();
    let (cert, chain, key) = identity_in(&bytes).unwrap();
    let fp = q(&env, "SELECT c.fingerprint FROM certificates c JOIN devices d ON d.id=c.device_id WHERE d.serial='ESP-1'");
    assert_eq!(sha256_hex(&cert), fp);
    assert_eq!(pem_blocks(&chain).len(), 2);
    openssl_verify(&env, &cert, "esp1");
    let k = env.path("k.pem");
    std::fs::write(&k, &key).unwrap();
    let (_, a) = openssl(&["pkey", "-in", k.to_str().unwrap(), "-pubout"]);
    let (_, b) = openssl(&["pkey", "-in", key1.to_str().unwrap(), "-pubout"]);
    assert!(a.contains("PUBLIC KEY") && a == b, "{a} {b}");
    if let Some(bin) = esp_bin() {
        let tlv = espressif_parse(&bin, &bytes, env.dir.path());
        assert_eq!(tlv.len(), 3);
        assert!(tlv.iter().all(|t| t.crc_ok));
    }

    // Refusals: one line, documented exit code, nothing written.
    let no = env.path("no.bin");
    let e = env.fails(
        &[
            "identity",
            "export-esp-secure-cert",
            "ESP-1",
            "-o",
            no.to_str().unwrap(),
        ],
        3,
    );
    assert!(e.contains("cradle keeps no device keys"), "{e}");
    let key2 = out.join("ESP-2.key");
    let e = env.fails(
        &[
            "identity",
            "export-esp-secure-cert",
            "ESP-1",
            "--key",
            key2.to_str().unwrap(),
            "-o",
            no.to_str().unwrap(),
        ],
        5,
    );
    assert!(e.contains("is not the key of ESP-1's certificate"), "{e}");
    let e = env.fails(
        &[
            "identity",
            "export-esp-secure-cert",
            "ESP-1",
            "--key",
            key1.to_str().unwrap(),
            "-o",
            img.to_str().unwrap(),
        ],
        7,
    );
    assert!(e.contains("already exists"), "{e}");
    let e = env.fails(
        &[
            "identity",
            "export-esp-secure-cert",
            "ESP-1",
            "--key",
            key1.to_str().unwrap(),
            "--partition-size",
            "0x100",
            "-o",
            no.to_str().unwrap(),
        ],
        3,
    );
    assert!(e.contains("--partition-size"), "{e}");
    let e = env.fails(
        &[
            "identity",
            "export-esp-secure-cert",
            "NOPE",
            "-o",
            no.to_str().unwrap(),
        ],
        3,
    );
    assert!(e.contains("NOPE"), "{e}");
    assert!(!no.exists());
}

#[test]
fn decommission_erases_esp_secure_cert_and_records_a_read_back_wipe() {
    let env = Env::with_ca();
    let link = env.path("dev/w");
    let state = env.path("w.json");
    let _sim = sim_esp(&env, &link, &state, 1, &[]);
    let port = link.to_str().unwrap();
    let (code, v, err) = provision(&env, &[port], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    assert!(identity_in(&sim_flash(&state, 0xD000, 0x2000)).is_some());

    // Without the profile the port is spoken to as a cradle device: that fails cleanly.
    let base = [
        "--json",
        "decommission",
        MAC,
        "--passphrase-file",
        env.pass(),
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
        "--wipe-port",
        port,
    ];
    let o = env.run(&base);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(q(&env, "SELECT count(*) FROM wipes"), "0");

    let mut a = base.to_vec();
    a.extend(["--wipe-device-profile", "esp32"]);
    let o = env.run(&a);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The partition is erased flash now, on the chip itself.
    assert_eq!(sim_flash(&state, 0xD000, 0x2000), vec![0xFF; 0x2000]);
    let w = q(&env, "SELECT kind || '|' || level || '|' || coalesce(CAST(attestation_verified AS TEXT), 'null') || '|' || verification FROM wipes");
    assert!(
        w.starts_with("read-back|clear|null|read back: the device's MD5"),
        "{w}"
    );
    assert!(w.contains(&hex_md5_of_erased()), "{w}");
    assert!(w.contains("not device-signed"), "{w}");
    let ev = q(&env, "SELECT attestation FROM wipes");
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(ev["hardware_id"], MAC);
    assert_eq!(ev["offset"], 0xD000);
    assert_eq!(
        q(
            &env,
            &format!("SELECT status FROM devices WHERE hardware_id='{MAC}'")
        ),
        "decommissioned"
    );
    assert_eq!(
        q(
            &env,
            "SELECT count(*) FROM certificates WHERE status <> 'revoked'"
        ),
        "0"
    );
    // The audit counts it as a wipe record (before the migration's new kind it was not).
    let audit = env.json(&["audit"]);
    assert_eq!(
        audit["summary"]["by_check"]["decommissioned-without-wipe"], 0,
        "{audit:#}"
    );
}

fn hex_md5_of_erased() -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(vec![0xFFu8; 0x2000]))
}

#[test]
fn fault_garbage_on_boot_is_skipped() {
    let r = fault_case("garbage-on-boot");
    assert_eq!(r["result"], "PASS", "{r:#}");
}

#[test]
fn hostile_megabyte_packet_fails_cleanly_without_buffering_it() {
    let r = fault_case("long-line");
    assert_eq!(r["result"], "FAIL", "{r:#}");
    assert!(r["error"].as_str().unwrap().contains("SYNC"), "{r:#}");
}

#[test]
fn a_wipe_refuses_another_esp32_on_the_port() {
    let env = Env::with_ca();
    let link = env.path("dev/a");
    let state = env.path("a.json");
    let _sim = sim_esp(&env, &link, &state, 1, &[]);
    let (code, v, err) = provision(&env, &[link.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{v:#}\n{err}");
    // Another board (another MAC) is on the port the operator names.
    let other = env.path("dev/b");
    let ostate = env.path("b.json");
    let _b = Sim::start(
        &env,
        &[
            "--profile",
            "esp32",
            "--link",
            other.to_str().unwrap(),
            "--state",
            ostate.to_str().unwrap(),
            "--hardware-id",
            "24:0a:c4:99:99:99",
        ],
        1,
    );
    // Give the other board an identity-like partition, to see that nothing erases it.
    let (code, _, _) = provision(&env, &[other.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0));
    let before = sim_flash(&ostate, 0xD000, 0x2000);
    let o = env.run(&[
        "decommission",
        MAC,
        "--passphrase-file",
        env.pass(),
        "--wipe-baud",
        BAUD,
        "--wipe-timeout",
        "1",
        "--wipe-port",
        other.to_str().unwrap(),
        "--wipe-device-profile",
        "esp32",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("wrong device on the port"), "{err}");
    assert_eq!(q(&env, "SELECT count(*) FROM wipes"), "0");
    assert_eq!(sim_flash(&ostate, 0xD000, 0x2000), before);
    assert!(identity_in(&sim_flash(&state, 0xD000, 0x2000)).is_some());
}

/// What a ROM answered within `wait`: (op, value, data and status bytes) per reply.
fn rom_replies(port: &mut impl std::io::Read, wait: Duration) -> Vec<(u8, u32, Vec<u8>)> {
    use cradle::wire::slip::{Slip, SlipDecoder};
    let mut dec = SlipDecoder::new(64 * 1024);
    let (mut pkts, mut buf) = (Vec::new(), [0u8; 4096]);
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if let Ok(n) = port.read(&mut buf) {
            dec.push(&buf[..n], &mut pkts);
        }
    }
    pkts.into_iter()
        .filter_map(|p| match p {
            Slip::Packet(p) if p.len() >= 8 && p[0] == 1 => Some((
                p[1],
                u32::from_le_bytes(p[4..8].try_into().unwrap()),
                p[8..].to_vec(),
            )),
            _ => None,
        })
        .collect()
}

/// The simulated ROM reads its line only between commands, like the chip: behind the
/// command it works on, its 128-byte UART FIFO is all there is. A host that sends within
/// that is answered in full; one that sends further ahead loses requests, also in the
/// middle of a flash write, where a second FLASH_DATA block sent without waiting is lost
/// (and the chip's MD5 shows it missing). cradle's pipelining is held to this in every
/// other test here.
#[test]
fn the_rom_fifo_loses_what_a_host_sends_too_far_ahead() {
    use cradle::wire::esp_rom::{self as rom, Command};
    use md5::{Digest, Md5};
    use std::io::Write;
    let env = Env::init();
    let link = env.path("dev/esp");
    let state = env.path("esp.json");
    let _sim = sim_esp(&env, &link, &state, 1, &[]);
    let mut port = cradle::wire::open_port(&link, 115_200).unwrap();
    let t = Duration::from_millis(600);
    port.write_all(&Command::encode(rom::SYNC, &rom::SYNC_DATA, 0))
        .unwrap();
    assert_eq!(
        rom_replies(&mut port, t).len(),
        8,
        "SYNC is answered 8 times"
    );

    let magic = Command::encode(rom::READ_REG, &rom::CHIP_DETECT_MAGIC_REG.to_le_bytes(), 0);
    let answered = |port: &mut cradle::wire::Port, n: usize| {
        port.write_all(&magic.repeat(n)).unwrap();
        let r = rom_replies(port, t);
        assert!(r
            .iter()
            .all(|(op, v, _)| *op != rom::READ_REG || *v == rom::ESP32_MAGIC));
        r.iter().filter(|(op, ..)| *op == rom::READ_REG).count()
    };
    let behind = rom::RX_FIFO / magic.len();
    assert_eq!(magic.len() * behind, 126, "{} bytes a request", magic.len());
    // One being answered and as many as fit in the FIFO behind it: all answered.
    assert_eq!(answered(&mut port, 1 + behind), 1 + behind);
    // Twice as many: what did not fit in the FIFO is lost.
    assert_eq!(answered(&mut port, 2 * (1 + behind)), 1 + behind);
    // The ROM goes on afterwards (the remnant of a cut request is refused or dropped).
    assert_eq!(answered(&mut port, 1), 1);

    // Two 1 KiB blocks in one write: the second comes while the first is written.
    let words = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let (addr, block) = (0x10_0000u32, rom::FLASH_WRITE_SIZE);
    port.write_all(&Command::encode(
        rom::FLASH_BEGIN,
        &words(&[2 * block as u32, 2, block as u32, addr]),
        0,
    ))
    .unwrap();
    assert!(rom_replies(&mut port, t)
        .iter()
        .any(|(op, _, s)| *op == rom::FLASH_BEGIN && s[0] == 0));
    let data: Vec<Vec<u8>> = (0..2u8).map(|i| vec![0x11 + i; block]).collect();
    let mut two = Vec::new();
    for (seq, d) in data.iter().enumerate() {
        let mut p = words(&[block as u32, seq as u32, 0, 0]);
        p.extend_from_slice(d);
        two.extend(Command::encode(rom::FLASH_DATA, &p, rom::checksum(d)));
    }
    port.write_all(&two).unwrap();
    let r = rom_replies(&mut port, t);
    let ok = |r: &[(u8, u32, Vec<u8>)]| {
        r.iter()
            .filter(|(op, _, s)| *op == rom::FLASH_DATA && s[0] == 0)
            .count()
    };
    assert_eq!(ok(&r), 1, "only the first block is taken: {r:?}");
    port.write_all(&Command::encode(
        rom::SPI_FLASH_MD5,
        &words(&[addr, 2 * block as u32, 0, 0]),
        0,
    ))
    .unwrap();
    let r = rom_replies(&mut port, t);
    let (_, _, md5) = r
        .iter()
        .find(|(op, ..)| *op == rom::SPI_FLASH_MD5)
        .expect("an MD5 reply");
    let held = [data[0].clone(), vec![0xFF; block]].concat();
    assert_eq!(md5[..32], *hex::encode(Md5::digest(&held)).as_bytes());
}
