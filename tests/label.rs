//! `cradle label` end to end: every QR code decoded back (rqrr on the PNG and on the
//! SVG drawn to pixels here, zbarimg on the PNG), a fake printer on 127.0.0.1 that
//! captures the job, hostile registry text, template errors.
mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Env;

/// The default template's payload, spelt out here from the registry's values.
fn expected_payload(env: &Env, serial: &str) -> String {
    let d = env.json(&["device", "show", serial]);
    let d = if d.get("device").is_some() {
        &d["device"]
    } else {
        &d
    };
    let mac = d["mac"].as_str().unwrap_or("");
    format!("{serial};{mac};https://onboard.example/{serial}")
}

/// A home with three devices: two in batch B1 (one without MAC), one in B2.
fn fleet() -> Env {
    let env = Env::init();
    std::fs::write(
        env.path("d.csv"),
        "serial,model,mac,imei,batch\n\
         ACME-1,Sensor S1,0A:1B:2C:3D:4E:5F,352099001761481,B1\n\
         ACME-2,Gate G2,,,B1\n\
         ACME-3,Relay R3,0A:1B:2C:3D:4E:60,,B2\n",
    )
    .unwrap();
    env.ok(&["inventory", "import", "d.csv"]);
    env
}

fn label_events(env: &Env) -> Vec<serde_json::Value> {
    env.sql("SELECT details FROM events WHERE kind = 'label.rendered' ORDER BY id")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Undoes ZPL's `^FH_` hex escapes, as the printer does.
fn unhex(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// One label of a ZPL stream: its QR payload and its text fields, unescaped.
#[derive(Debug)]
struct ZplLabel {
    raw: String,
    /// The QR field's "<ecc>A" (error correction level, automatic input).
    mode: String,
    payload: String,
    texts: Vec<String>,
}

/// Splits a ZPL stream into its `^XA … ^XZ` formats; asserts nothing lies between.
fn parse_zpl(zpl: &str) -> Vec<ZplLabel> {
    let mut out = Vec::new();
    let mut rest = zpl;
    while let Some(start) = rest.find("^XA") {
        assert!(
            rest[..start].trim().is_empty(),
            "text between labels: {rest}"
        );
        let end = rest[start..].find("^XZ").expect("^XZ") + start;
        let body = &rest[start + 3..end];
        assert!(!body.contains("^XA"), "^XA inside a label: {body}");
        let mut payload = None;
        let mut mode = String::new();
        let mut texts = Vec::new();
        for field in body.split("^FS") {
            let Some(fd) = field.find("^FD") else {
                continue;
            };
            assert!(field[..fd].contains("^FH_"), "field without ^FH_: {field}");
            let data = unhex(&field[fd + 3..]);
            if field.contains("^BQN,2,") {
                // "<ecc>A,<payload>"
                let (m, p) = data.split_once(',').unwrap();
                mode = m.to_string();
                payload = Some(p.to_string());
            } else {
                assert!(field.contains("^A0N,"), "{field}");
                texts.push(data);
            }
        }
        out.push(ZplLabel {
            raw: rest[start..end + 3].to_string(),
            mode,
            payload: payload.expect("a ^BQ field"),
            texts,
        });
        rest = &rest[end + 3..];
    }
    assert!(rest.trim().is_empty(), "trailing text: {rest}");
    out
}

/// A printer on 127.0.0.1: accepts one job and returns its bytes.
fn fake_printer() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf
    });
    (port, h)
}

/// Decodes every QR code in a greyscale image with rqrr.
fn rqrr_decode(w: usize, h: usize, px: impl Fn(usize, usize) -> u8) -> Vec<String> {
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, px);
    img.detect_grids()
        .into_iter()
        .map(|g| g.decode().expect("QR decodes").1)
        .collect()
}

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn png_payloads(path: &Path) -> Vec<String> {
    let (w, h, px) = read_png(path);
    rqrr_decode(w, h, |x, y| px[y * w + x])
}

/// Draws the SVG's rectangles (viewBox units = pixels) and decodes the QR code.
fn svg_payloads(svg: &str) -> Vec<String> {
    let attr = |tag: &str, name: &str| -> Option<usize> {
        let key = format!(" {name}=\"");
        let i = tag.find(&key)? + key.len();
        tag[i..].split('"').next()?.parse().ok()
    };
    let vb = svg.split("viewBox=\"0 0 ").nth(1).unwrap();
    let mut dims = vb.split('"').next().unwrap().split(' ');
    let w: usize = dims.next().unwrap().parse().unwrap();
    let h: usize = dims.next().unwrap().parse().unwrap();
    let mut px = vec![255u8; w * h];
    for tag in svg.split('<').filter(|t| t.starts_with("rect ")) {
        if tag.contains("fill=\"white\"") {
            continue;
        }
        let (x, y) = (attr(tag, "x").unwrap(), attr(tag, "y").unwrap());
        let (rw, rh) = (attr(tag, "width").unwrap(), attr(tag, "height").unwrap());
        for yy in y..y + rh {
            for xx in x..x + rw {
                px[yy * w + xx] = 0;
            }
        }
    }
    rqrr_decode(w, h, |x, y| px[y * w + x])
}

/// zbarimg (Debian zbar-tools): `CRADLE_TEST_ZBARIMG`, else on PATH. CI fails without it.
fn zbarimg() -> Option<PathBuf> {
    let bin = std::env::var_os("CRADLE_TEST_ZBARIMG")
        .map(PathBuf::from)
        .unwrap_or_else(|| "zbarimg".into());
    if Command::new(&bin).arg("--version").output().is_ok() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "zbarimg not found ({}; .ci/run installs zbar-tools)",
        bin.display()
    );
    eprintln!("skipping zbarimg: not installed (apt-get install zbar-tools)");
    None
}

#[test]
fn printer_gets_one_zpl_format_per_device_with_payload_and_fields() {
    let env = fleet();
    let (port, job) = fake_printer();
    let url = format!("tcp://127.0.0.1:{port}");
    let s = env.json(&["label", "--batch", "B1", "--printer", &url]);
    let sent = String::from_utf8(job.join().unwrap()).unwrap();
    let labels = parse_zpl(&sent);
    assert_eq!(labels.len(), 2, "{sent}");
    for (l, serial) in labels.iter().zip(["ACME-1", "ACME-2"]) {
        assert_eq!(l.payload, expected_payload(&env, serial));
        assert_eq!(l.texts[0], serial);
        assert_eq!(l.mode, "MA");
        // 62 x 29 mm at 203 dpi.
        assert!(l.raw.contains("^PW496\n^LL232\n"), "{}", l.raw);
        assert!(l.raw.contains("^CI28"), "{}", l.raw);
    }
    assert_eq!(
        labels[0].texts,
        [
            "ACME-1",
            "Sensor S1",
            "MAC 0a:1b:2c:3d:4e:5f",
            "IMEI 352099001761481",
            "B1"
        ]
    );
    // No MAC, no IMEI: those lines are left out, the payload keeps its place empty.
    assert_eq!(labels[1].texts, ["ACME-2", "Gate G2", "B1"]);
    assert_eq!(labels[1].payload, "ACME-2;;https://onboard.example/ACME-2");

    assert_eq!(s["labels"], 2);
    assert_eq!(s["destination"], url);
    assert_eq!(s["bytes"], sent.len());
    let ev = label_events(&env);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["labels"], 2);
    assert_eq!(ev[0]["format"], "zpl");
    assert_eq!(ev[0]["destination"], url);
    assert_eq!(ev[0]["serials"], serde_json::json!(["ACME-1", "ACME-2"]));
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(sent.as_bytes()))
    };
    assert_eq!(ev[0]["sha256"], sha);
    let who = env.sql("SELECT actor || '@' || station FROM events WHERE kind = 'label.rendered'");
    assert_eq!(who.trim(), "tester@test-station");
}

#[test]
fn zpl_stream_file_stdout_and_one_file_per_serial() {
    let env = fleet();
    let out = env.ok(&["label", "--status", "registered", "-o", "all.zpl"]);
    assert_eq!(out, "3 labels (zpl, template default) -> all.zpl\n");
    let all = std::fs::read_to_string(env.path("all.zpl")).unwrap();
    let labels = parse_zpl(&all);
    let payloads: Vec<&str> = labels.iter().map(|l| l.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["ACME-1", "ACME-2", "ACME-3"].map(|s| expected_payload(&env, s))
    );

    // Standard output by default; the same bytes as the stream's first label.
    let one = env.ok(&["label", "ACME-1"]);
    assert_eq!(one, labels[0].raw.clone() + "\n");

    std::fs::create_dir(env.path("zpl")).unwrap();
    env.ok(&["label", "ACME-3", "ACME-1", "ACME-3", "-o", "zpl"]);
    let mut names: Vec<String> = std::fs::read_dir(env.path("zpl"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ACME-1.zpl", "ACME-3.zpl"]);
    assert_eq!(label_events(&env).len(), 3);
}

#[test]
fn png_and_svg_qr_codes_decode_to_the_registry_payload() {
    let env = fleet();
    let s = env.json(&[
        "label",
        "--status",
        "registered",
        "--format",
        "png",
        "-o",
        "png/",
    ]);
    assert_eq!(s["labels"], 3);
    let zbar = zbarimg();
    for serial in ["ACME-1", "ACME-2", "ACME-3"] {
        let want = expected_payload(&env, serial);
        let path = env.path(&format!("png/{serial}.png"));
        assert_eq!(png_payloads(&path), std::slice::from_ref(&want), "{serial}");
        let (w, h, _) = read_png(&path);
        assert_eq!((w, h), (496, 232));
        if let Some(bin) = &zbar {
            let o = Command::new(bin)
                .args(["-q", "--raw"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{want}\n"));
        }
    }
    assert_eq!(s["items"][0]["payload"], expected_payload(&env, "ACME-1"));

    env.ok(&["label", "ACME-1", "--format", "svg", "-o", "a.svg"]);
    let svg = std::fs::read_to_string(env.path("a.svg")).unwrap();
    assert_eq!(svg_payloads(&svg), [expected_payload(&env, "ACME-1")]);
    assert!(
        svg.contains("width=\"62.06mm\" height=\"29.03mm\""),
        "{svg}"
    );
    assert!(svg.contains(">ACME-1</text>"), "{svg}");
    assert!(svg.contains(">MAC 0a:1b:2c:3d:4e:5f</text>"), "{svg}");
    let ev = label_events(&env);
    assert_eq!(ev[1]["format"], "svg");
    assert_eq!(ev[1]["destination"], "a.svg");
}

#[test]
fn unreachable_printer_is_one_line_exit_6_and_nothing_recorded() {
    let env = fleet();
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let before = env.dump();
    let url = format!("tcp://127.0.0.1:{port}");
    let err = env.fails(
        &[
            "label",
            "ACME-1",
            "--printer",
            &url,
            "--printer-timeout",
            "2",
        ],
        6,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("cradle: error: printer {url}: cannot connect: ")),
        "{err}"
    );
    assert_eq!(env.dump(), before);

    let err = env.fails(&["label", "ACME-1", "--printer", "lpd://x"], 2);
    assert!(err.contains("only tcp:// printers"), "{err}");
    env.fails(
        &[
            "label",
            "ACME-1",
            "--printer",
            &url,
            "--printer-timeout",
            "0",
        ],
        2,
    );
    let err = env.fails(
        &["label", "ACME-1", "--printer", &url, "--format", "svg"],
        2,
    );
    assert!(err.contains("--printer takes --format zpl"), "{err}");
    assert_eq!(env.dump(), before);
}

#[test]
fn printer_that_never_answers_times_out() {
    let env = fleet();
    // A listener that never accepts: once its accept queue is full the kernel drops
    // further SYNs, so a connect hangs as to a printer that is off the network.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut held = Vec::new();
    let full =
        (0..2000).any(
            |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => {
                    held.push(s);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(
        full,
        "the accept queue never filled ({} connections)",
        held.len()
    );
    let before = env.dump();
    let url = format!("tcp://{addr}");
    let t = Instant::now();
    let err = env.fails(
        &[
            "label",
            "ACME-1",
            "--printer",
            &url,
            "--printer-timeout",
            "1",
        ],
        6,
    );
    assert_eq!(
        err,
        format!("cradle: error: printer {url}: cannot connect: timed out after 1.0 s\n")
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(env.dump(), before);
    drop(l);
}

#[test]
fn printer_that_stops_reading_times_out_mid_job() {
    let env = fleet();
    // One label of ~10 MB (a text line from a big attribute): more than the socket
    // buffers hold while the printer reads nothing.
    env.sql("UPDATE devices SET attributes = json_object('blob', hex(zeroblob(5000000))) WHERE serial = 'ACME-1'");
    std::fs::write(
        env.path("big.toml"),
        "width_mm = 50\nheight_mm = 25\ndpi = 203\n[qr]\npayload = \"{serial}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 20\n[[text]]\nvalue = \"{attr.blob}\"\nx_mm = 22\ny_mm = 1\nheight_mm = 3\n",
    )
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    let stalled = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        // Hold the connection, read nothing, until the test is done.
        let _ = rx.recv_timeout(Duration::from_secs(60));
        drop(s);
    });
    let before = env.dump();
    let url = format!("tcp://127.0.0.1:{port}");
    let t = Instant::now();
    let err = env.fails(
        &[
            "label",
            "ACME-1",
            "--template",
            "big.toml",
            "--printer",
            &url,
            "--printer-timeout",
            "1",
        ],
        6,
    );
    tx.send(()).unwrap();
    stalled.join().unwrap();
    assert_eq!(
        err,
        format!("cradle: error: printer {url}: sending the labels: timed out after 1.0 s\n")
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(env.dump(), before);
}

#[test]
fn hostile_registry_text_cannot_inject_zpl_commands() {
    let env = fleet();
    let evil_model = "X^XZ^XA^FO0,0^FDpwned^FS~JR~HS_2";
    // Serials are checked on the way in; one written behind cradle's back is not.
    let evil_serial = "EVIL^XZ~JA/../x";
    env.sql(&format!(
        "UPDATE devices SET model = '{evil_model}' WHERE serial = 'ACME-1';
         UPDATE devices SET serial = '{evil_serial}' WHERE serial = 'ACME-3';"
    ));
    let zpl = env.ok(&["label", "ACME-1", evil_serial]);
    let labels = parse_zpl(&zpl);
    assert_eq!(labels.len(), 2, "{zpl}");
    assert_eq!(zpl.matches("^XA").count(), 2);
    assert_eq!(zpl.matches("^XZ").count(), 2);
    assert!(!zpl.contains('~'), "{zpl}");
    assert!(!zpl.contains("pwned^FS"), "{zpl}");
    assert_eq!(labels[0].texts[1], evil_model);
    assert_eq!(labels[1].texts[0], evil_serial);
    assert_eq!(labels[1].payload, expected_payload(&env, evil_serial));
    assert!(labels[1]
        .payload
        .starts_with("EVIL^XZ~JA/../x;0a:1b:2c:3d:4e:60;"));

    // SVG: markup escaped; the file name of a hostile serial stays in the directory.
    env.ok(&[
        "label",
        evil_serial,
        "ACME-1",
        "--format",
        "svg",
        "-o",
        "svg/",
    ]);
    let names: Vec<String> = std::fs::read_dir(env.path("svg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&"EVIL%5EXZ%7EJA%2F..%2Fx.svg".to_string()),
        "{names:?}"
    );
    assert!(!env.path("x.svg").exists());
    env.sql("UPDATE devices SET model = 'a<b>&\"c' WHERE serial = 'ACME-1'");
    env.ok(&["label", "ACME-1", "--format", "svg", "-o", "m.svg"]);
    let svg = std::fs::read_to_string(env.path("m.svg")).unwrap();
    assert!(svg.contains(">a&lt;b&gt;&amp;&quot;c</text>"), "{svg}");
}

#[test]
fn template_errors_are_one_line_exit_3_and_write_nothing() {
    let env = fleet();
    let before = env.dump();
    let files = env.files();
    let tpl = |name: &str, body: &str| {
        std::fs::write(env.path(name), body).unwrap();
        name.to_string()
    };
    let base = "width_mm = 50\nheight_mm = 25\ndpi = 203\n";
    let qr = "[qr]\npayload = \"{serial}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 20\n";
    let cases = [
        (
            tpl("unknown.toml", &format!("{base}{qr}[[text]]\nvalue = \"{{colour}}\"\nx_mm = 25\ny_mm = 1\nheight_mm = 3\n")),
            "unknown.toml:10: unknown variable '{colour}'",
        ),
        (
            tpl("size.toml", &format!("width_mm = 0\nheight_mm = 25\ndpi = 203\n{qr}")),
            "size.toml:1: width_mm = 0 must be more than 0",
        ),
        (
            tpl("dpi.toml", &format!("width_mm = 50\nheight_mm = 25\ndpi = 96\n{qr}")),
            "dpi.toml:3: dpi 96 is not a printhead resolution",
        ),
        (
            tpl("off.toml", &format!("{base}[qr]\npayload = \"{{serial}}\"\nx_mm = 40\ny_mm = 1\nsize_mm = 20\n")),
            "off.toml:8: [qr] at (40, 1) mm, 20 x 20 mm, is not on the 50 x 25 mm label",
        ),
        (
            tpl("field.toml", &format!("{base}{qr}font = \"x\"\n")),
            "field.toml:9: unknown field `font`",
        ),
        (
            tpl("imei.toml", &format!("{base}[qr]\npayload = \"{{imei}}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 20\n")),
            "imei.toml:5: label template 'imei' needs 'imei' but device 'ACME-2' has no value for it",
        ),
        (
            tpl("small.toml", &format!("{base}[qr]\npayload = \"https://onboard.example/{{serial}}/{{mac}}/{{model}}/{{imei?}}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 3\n")),
            "small.toml:5: device 'ACME-1': QR payload of 74 bytes needs 37 x 37 modules (at least 37 dots a side), more than qr.size_mm gives: 24 dots at 203 dpi",
        ),
    ];
    let files_with_templates = env.files();
    for (name, want) in &cases {
        for format in ["zpl", "svg", "png"] {
            let err = env.fails(
                &[
                    "label",
                    "--batch",
                    "B1",
                    "--template",
                    name,
                    "--format",
                    format,
                    "-o",
                    "out/",
                ],
                3,
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!("cradle: error: {want}")),
                "{name}: {err}"
            );
        }
    }
    assert_eq!(env.files(), files_with_templates, "something was written");
    assert!(files.len() < files_with_templates.len());

    // A payload no QR code can hold, from the registry.
    let big = "x".repeat(3000);
    env.sql(&format!(
        "UPDATE devices SET attributes = '{{\"blob\":\"{big}\"}}' WHERE serial = 'ACME-2'"
    ));
    let before_big = env.dump();
    let t = tpl("big.toml", &format!("{base}[qr]\npayload = \"{{serial}}{{attr.blob?}}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 20\n"));
    let err = env.fails(
        &["label", "--batch", "B1", "--template", &t, "-o", "big.zpl"],
        3,
    );
    assert!(
        err.starts_with("cradle: error: big.toml:5: device 'ACME-2': QR payload of 3006 bytes cannot be a QR code at level M"),
        "{err}"
    );
    assert!(!env.path("big.zpl").exists());
    assert_eq!(env.dump(), before_big);
    assert_ne!(before, before_big);

    let err = env.fails(&["label", "ACME-1", "--template", "nope"], 3);
    assert!(err.contains("no label template named 'nope'"), "{err}");
}

#[test]
fn selection_and_output_mistakes() {
    let env = fleet();
    let before = env.dump();
    let err = env.fails(&["label", "ACME-9"], 3);
    assert!(err.contains("no device with serial 'ACME-9'"), "{err}");
    let err = env.fails(&["label", "--batch", "B9", "-o", "x.zpl"], 3);
    assert!(err.contains("no device matches --batch B9"), "{err}");
    let err = env.fails(&["label", "--batch", "B1", "--status", "deployed"], 3);
    assert!(
        err.contains("no device matches --status deployed --batch B1"),
        "{err}"
    );
    let err = env.fails(&["label", "--status", "lost"], 3);
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = env.fails(
        &["label", "--batch", "B1", "--format", "svg", "-o", "two.svg"],
        2,
    );
    assert!(err.contains("give -o DIR"), "{err}");
    env.fails(&["--json", "label", "ACME-1"], 2);
    env.fails(&["label"], 2);
    env.fails(&["label", "ACME-1", "--batch", "B1"], 2);
    // No output may replace a file of the home.
    let reg = env.registry();
    let err = env.fails(&["label", "ACME-1", "-o", reg.to_str().unwrap()], 2);
    assert!(err.contains("refusing to write over"), "{err}");
    assert_eq!(env.dump(), before);
    assert!(!env.path("two.svg").exists() && !env.path("x.zpl").exists());
}

#[test]
fn home_templates_override_the_builtin() {
    let env = fleet();
    let dir = env.home.join("templates/labels");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("small.toml"),
        "width_mm = 25\nheight_mm = 25\ndpi = 300\n[qr]\npayload = \"{org}:{serial}\"\nx_mm = 2\ny_mm = 2\nsize_mm = 21\necc = \"H\"\n",
    )
    .unwrap();
    // `cradle init` put an editable copy of the built-in template in the home.
    let default = env.home.join("templates/labels/default.toml");
    let text = std::fs::read_to_string(&default).unwrap();
    assert!(text.contains("payload = \"{serial};{mac?};https://onboard.example/{serial}\""));
    std::fs::write(
        &default,
        text.replace("https://onboard.example/", "https://factory.example/o/"),
    )
    .unwrap();
    let zpl = env.ok(&["label", "ACME-2"]);
    assert_eq!(
        parse_zpl(&zpl)[0].payload,
        "ACME-2;;https://factory.example/o/ACME-2"
    );

    let zpl = env.ok(&["label", "ACME-2", "--template", "small"]);
    let l = &parse_zpl(&zpl)[0];
    assert_eq!(l.payload, "ACME:ACME-2");
    assert_eq!(l.mode, "HA");
    assert!(l.raw.contains("^PW295\n^LL295"), "{}", l.raw);
    env.ok(&[
        "label",
        "ACME-2",
        "--template",
        "small",
        "--format",
        "png",
        "-o",
        "s.png",
    ]);
    assert_eq!(png_payloads(&env.path("s.png")), ["ACME:ACME-2"]);
}
