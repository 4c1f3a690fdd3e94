//! The fleet report rendered by a real browser: headless Chromium (Debian's
//! `chromium`, `CRADLE_TEST_CHROMIUM`, which .ci/run sets) loads the report cradle
//! wrote for a fleet cradle built, dumps the DOM it rendered and takes a screenshot.
//! The charts of issue 17 must be in the rendered DOM with their numbers, and the
//! screenshot must be the window's size and show them (not a blank page).
mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use time::OffsetDateTime;

const CHARTS: [&str; 6] = [
    "expiry-by-year",
    "firmware-by-model",
    "warranty-by-quarter",
    "cost-by-site",
    "cost-by-batch",
    "age-distribution",
];
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 4000;

/// Chromium from `CRADLE_TEST_CHROMIUM`; on CI its absence fails the test, elsewhere
/// the test is skipped with the reason.
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("CRADLE_TEST_CHROMIUM") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CRADLE_TEST_CHROMIUM is not set (.ci/run installs chromium and sets it)")
        }
        _ => {
            eprintln!(
                "skipped: CRADLE_TEST_CHROMIUM not set (apt-get install chromium; .ci/run sets it)"
            );
            None
        }
    }
}

/// A browser run: its own process group and profile directory; on drop (every path,
/// a failed assertion included) the whole group is killed, then any process still
/// using the profile directory (Chromium's zygote may leave the group).
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start(bin: &Path, args: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args([
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Browser { child, profile }
    }

    /// Waits up to `limit` for the browser to exit; returns its stdout and stderr.
    fn finish(mut self, limit: Duration) -> (bool, String, String) {
        let mut out = self.child.stdout.take().unwrap();
        let mut err = self.child.stderr.take().unwrap();
        let o = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let until = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > until {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(status) = status else {
            drop(self); // kills the group and its children
            panic!("chromium did not finish within {limit:?}");
        };
        self.kill_rest();
        (status.success(), o.join().unwrap(), e.join().unwrap())
    }

    fn kill_rest(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signalling the process group we created for this browser.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        // Helpers that left the group still name our profile directory.
        let marker = self.profile.path().display().to_string();
        for _ in 0..20 {
            let left = processes_using(&marker);
            if left.is_empty() {
                return;
            }
            for pid in left {
                // SAFETY: a process this browser started (it uses our profile dir).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill_rest();
    }
}

/// Pids whose command line contains `marker`.
fn processes_using(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

/// A fleet built with cradle: 6 devices from `identity batch` (10-year certificates),
/// asset data from an inventory import, firmware set by hand.
fn fleet() -> Env {
    let e = Env::with_ca();
    e.ok(&[
        "identity",
        "batch",
        "--count",
        "6",
        "--serial-pattern",
        "R-{seq:02}",
        "--bundle",
        e.path("bundle.jsonl").to_str().unwrap(),
        "--batch",
        "B-1",
        "--passphrase-file",
        e.pass(),
    ]);
    let now = OffsetDateTime::now_utc();
    let year = now.year();
    let mut csv = String::from(
        "serial,model,site,batch,purchase_date,warranty_until,cost,currency,criticality\n",
    );
    for i in 1..=6 {
        csv.push_str(&format!(
            "R-{i:02},{},{},{},{},{}-06-30,{},{},{}\n",
            if i <= 4 { "gw-1" } else { "sensor-2" },
            if i <= 3 { "berlin" } else { "lyon" },
            if i % 2 == 0 { "B-1" } else { "B-2" },
            // i years and 100 days ago: 1.27, 2.27, ... years old.
            (now - time::Duration::days(365 * i64::from(i) + 100)).date(),
            year + 1,
            if i == 6 { "99.5" } else { "120.25" },
            if i == 6 { "USD" } else { "EUR" },
            if i == 1 { "critical" } else { "medium" },
        ));
    }
    std::fs::write(e.path("assets.csv"), csv).unwrap();
    e.ok(&["inventory", "import", "assets.csv", "--mode", "update"]);
    for (s, fw) in [("R-01", "v1.2.0"), ("R-02", "v1.2.0"), ("R-03", "v1.3.1")] {
        e.ok(&["device", "set", s, &format!("firmware={fw}")]);
    }
    e
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(b: &[u8]) -> (u32, u32) {
    assert!(b.len() > 24, "not a PNG ({} bytes)", b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR", "first chunk is IHDR");
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    (be(&b[16..20]), be(&b[20..24]))
}

/// (distinct colours, pixels of `rgb`) of a decoded PNG.
fn colours(b: &[u8], rgb: [u8; 3]) -> (usize, u64) {
    let mut dec = png::Decoder::new(std::io::Cursor::new(b));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    let mut seen = std::collections::HashSet::new();
    let mut hits = 0;
    for px in buf[..info.buffer_size()].chunks(step) {
        let c = [px[0], px[1], px[2]];
        if c == rgb {
            hits += 1;
        }
        if seen.len() < 10_000 {
            seen.insert(c);
        }
    }
    (seen.len(), hits)
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn attr(dom: &str, chart: &str) -> String {
    let at = dom
        .find(&format!("data-chart=\"{chart}\""))
        .unwrap_or_else(|| panic!("chart {chart} not in the rendered DOM"));
    let end = dom[at..].find('>').unwrap() + at;
    dom[at..end].to_string()
}

#[test]
fn fleet_report_charts_render_in_headless_chromium() {
    let Some(bin) = chromium() else {
        return;
    };
    let e = fleet();
    let html = e.path("fleet.html");
    e.ok(&["report", "fleet", "-o", html.to_str().unwrap()]);
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains("<script"), "the report has no scripts");

    // The DOM as Chromium parsed and laid it out.
    let b = Browser::start(&bin, &["--dump-dom", &url(&html)]);
    let (ok, dom, err) = b.finish(Duration::from_secs(120));
    assert!(ok, "chromium --dump-dom failed: {err}");
    for c in CHARTS {
        let a = attr(&dom, c);
        assert!(a.contains("data-empty=\"false\""), "{c}: {a}");
    }
    // Numbers in data-* attributes, as the registry has them.
    let expiry_year = (OffsetDateTime::now_utc() + time::Duration::days(3650)).year();
    assert!(
        dom.contains(&format!("data-year=\"{expiry_year}\" data-count=\"6\"")),
        "six 10-year certificates expire in {expiry_year}"
    );
    assert!(dom.contains("data-model=\"gw-1\" data-firmware=\"v1.2.0\" data-count=\"2\""));
    assert!(dom.contains("data-model=\"gw-1\" data-firmware=\"v1.3.1\" data-count=\"1\""));
    assert!(dom.contains("data-model=\"sensor-2\" data-firmware=\"\" data-count=\"2\""));
    let q = format!("{}-Q2", OffsetDateTime::now_utc().year() + 1);
    assert!(
        dom.contains(&format!("data-quarter=\"{q}\" data-count=\"6\"")),
        "{q}"
    );
    // Exact sums per currency (with the decimals the costs were written with): 3 x 120.25 EUR at berlin, 2 x 120.25 EUR + 99.5 USD at lyon.
    assert!(dom.contains(
        "data-site=\"berlin\" data-currency=\"EUR\" data-total=\"360.75\" data-devices=\"3\""
    ));
    assert!(dom.contains(
        "data-site=\"lyon\" data-currency=\"EUR\" data-total=\"240.50\" data-devices=\"2\""
    ));
    assert!(dom.contains(
        "data-site=\"lyon\" data-currency=\"USD\" data-total=\"99.5\" data-devices=\"1\""
    ));
    assert!(dom.contains("data-batch=\"B-2\" data-currency=\"EUR\" data-total=\"360.75\""));
    // Ages from the purchase dates (1.27 to 6.27 years).
    for (bucket, n) in [
        ("<1", 0),
        ("1-2", 1),
        ("2-3", 1),
        ("3-5", 2),
        ("5-10", 2),
        ("10+", 0),
    ] {
        let want = format!("data-age=\"{bucket}\" data-count=\"{n}\"");
        // Serialisers differ on whether `<` in an attribute is escaped.
        let escaped = want.replace('<', "&lt;");
        assert!(dom.contains(&want) || dom.contains(&escaped), "{want}");
    }
    assert!(dom.contains("data-from-purchase-date=\"6\" data-from-created-at=\"0\""));

    // The screenshot: the window's size, and the charts painted.
    let shot = e.path("fleet.png");
    let b = Browser::start(
        &bin,
        &[
            &format!("--screenshot={}", shot.display()),
            &format!("--window-size={WIDTH},{HEIGHT}"),
            &url(&html),
        ],
    );
    let (ok, _, err) = b.finish(Duration::from_secs(120));
    assert!(ok, "chromium --screenshot failed: {err}");
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert_eq!(png_size(&png), (WIDTH, HEIGHT));
    // Not blank: many colours, and the charts' blue (#2f6fde) and green (#2e9e6b) bars.
    let (n, blue) = colours(&png, [0x2f, 0x6f, 0xde]);
    assert!(n > 50, "the screenshot has only {n} colours");
    assert!(blue > 5_000, "{blue} pixels of the bar colour");
    let (_, green) = colours(&png, [0x2e, 0x9e, 0x6b]);
    assert!(green > 1_000, "{green} pixels of the firmware bars");
}

#[test]
fn an_empty_fleet_renders_no_data_states_not_broken_charts() {
    let Some(bin) = chromium() else {
        return;
    };
    let e = Env::init();
    let html = e.path("empty.html");
    e.ok(&["report", "fleet", "-o", html.to_str().unwrap()]);
    let b = Browser::start(&bin, &["--dump-dom", &url(&html)]);
    let (ok, dom, err) = b.finish(Duration::from_secs(120));
    assert!(ok, "chromium --dump-dom failed: {err}");
    for c in CHARTS {
        let a = attr(&dom, c);
        assert!(a.contains("data-empty=\"true\""), "{c}: {a}");
    }
    assert_eq!(dom.matches("class=\"nodata\"").count(), CHARTS.len());
    assert!(!dom.contains("NaN"), "no broken numbers");
}
