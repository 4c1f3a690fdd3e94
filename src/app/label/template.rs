//! Label templates: TOML files under `templates/labels/` with the label's size, the
//! printhead's resolution, a QR payload and text lines, whose strings use the same
//! `{variable}` placeholders (and renderer) as certificate profiles.

use std::path::Path;

use qrcode::{EcLevel, QrCode};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pki::profile::{line_of, line_of_offset, Tpl, Vars};

/// Label templates shipped with cradle.
pub const BUILTIN: &[(&str, &str)] = &[(
    "default",
    include_str!("../../../templates/labels/default.toml"),
)];

/// Zebra printheads come in 6, 8, 12 and 24 dots per millimetre.
const DPIS: &[u32] = &[152, 203, 300, 600];
/// Larger than any label stock a thermal printer takes (ZPL `^PW`/`^LL` stop at 32000 dots).
const MAX_SIDE_MM: f64 = 1000.0;
/// ZPL `^BQ` magnification runs from 1 to 10 dots per module.
const MAX_MAGNIFICATION: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    description: Option<String>,
    width_mm: f64,
    height_mm: f64,
    dpi: u32,
    qr: RawQr,
    #[serde(default)]
    text: Vec<RawText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQr {
    payload: String,
    x_mm: f64,
    y_mm: f64,
    size_mm: f64,
    #[serde(default = "default_ecc")]
    ecc: String,
}

fn default_ecc() -> String {
    "M".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    value: String,
    x_mm: f64,
    y_mm: f64,
    height_mm: f64,
}

/// A checked label template; positions already in printer dots.
#[derive(Debug, Clone)]
pub struct LabelTemplate {
    pub name: String,
    pub source: String,
    pub description: String,
    pub dpi: u32,
    /// Label width and height in dots (ZPL `^PW`, `^LL`).
    pub width: u32,
    pub height: u32,
    qr: QrSpec,
    texts: Vec<TextSpec>,
}

#[derive(Debug, Clone)]
struct QrSpec {
    payload: Tpl,
    x: u32,
    y: u32,
    size: u32,
    ecc: Ecc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecc {
    L,
    M,
    Q,
    H,
}

impl Ecc {
    /// The letter ZPL's `^FD` of a QR code starts with.
    pub fn letter(self) -> char {
        match self {
            Ecc::L => 'L',
            Ecc::M => 'M',
            Ecc::Q => 'Q',
            Ecc::H => 'H',
        }
    }
    fn level(self) -> EcLevel {
        match self {
            Ecc::L => EcLevel::L,
            Ecc::M => EcLevel::M,
            Ecc::Q => EcLevel::Q,
            Ecc::H => EcLevel::H,
        }
    }
}

#[derive(Debug, Clone)]
struct TextSpec {
    value: Tpl,
    x: u32,
    y: u32,
    height: u32,
}

/// One device's label, laid out in dots: what every output format draws.
#[derive(Debug, Clone)]
pub struct Label {
    pub serial: String,
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub qr: Qr,
    pub texts: Vec<Text>,
}

#[derive(Debug, Clone)]
pub struct Qr {
    pub payload: String,
    pub ecc: Ecc,
    pub x: u32,
    pub y: u32,
    /// Dots per module (ZPL magnification).
    pub module: u32,
    /// Modules per side, without the quiet zone.
    pub modules: u32,
    /// Row-major, `true` for a dark module.
    pub dark: Vec<bool>,
}

impl Qr {
    pub fn is_dark(&self, col: u32, row: u32) -> bool {
        self.dark[(row * self.modules + col) as usize]
    }
}

#[derive(Debug, Clone)]
pub struct Text {
    pub value: String,
    pub x: u32,
    pub y: u32,
    /// Character height in dots.
    pub height: u32,
    /// Character width in dots (ZPL `^A0` w): the height, or less for a line that
    /// would otherwise run off the label.
    pub width: u32,
}

/// How wide a character of the scalable fonts is, per dot of width: an upper
/// estimate (capitals and digits of SVG's sans-serif run 0.6-0.75; ZPL font 0 is a
/// condensed face and narrower), so a condensed line ends before the label edge.
const ADVANCE: f64 = 0.7;

impl Text {
    fn fitted(value: String, x: u32, y: u32, height: u32, label_width: u32) -> Text {
        let room = label_width.saturating_sub(x);
        let want = value.chars().count() as f64 * ADVANCE * height as f64;
        let width = if want > room as f64 && room > 0 {
            (height as f64 * room as f64 / want).floor().max(1.0) as u32
        } else {
            height
        };
        Text {
            value,
            x,
            y,
            height,
            width,
        }
    }
}

impl LabelTemplate {
    /// Resolves a template name: a `.toml` path, `HOME/templates/labels/NAME.toml`, or
    /// a built-in template of that name.
    pub fn load(name: &str, templates_dir: Option<&Path>) -> Result<LabelTemplate> {
        if name.ends_with(".toml") || name.contains('/') {
            return Self::from_file(Path::new(name));
        }
        if let Some(dir) = templates_dir {
            let p = dir.join("labels").join(format!("{name}.toml"));
            if p.exists() {
                return Self::from_file(&p);
            }
        }
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            Error::input(format!(
                "no label template named '{name}' (built in: {}; or pass a .toml path)",
                names.join(", ")
            ))
        })?;
        Self::parse(name, &format!("templates/labels/{name}.toml"), text)
    }

    pub fn from_file(path: &Path) -> Result<LabelTemplate> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "label".into());
        Self::parse(&name, &path.display().to_string(), &text)
    }

    /// Parses and checks a template; every error names `source` and a line.
    pub fn parse(name: &str, source: &str, text: &str) -> Result<LabelTemplate> {
        let raw: RawLabel = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(1);
            Error::input_at(source, line, e.message().trim().to_string())
        })?;
        let at = |needle: &str| line_of(text, needle);
        let err = |needle: &str, msg: String| Error::input_at(source, at(needle), msg);
        if !DPIS.contains(&raw.dpi) {
            return Err(err(
                "dpi",
                format!(
                    "dpi {} is not a printhead resolution (152, 203, 300 or 600)",
                    raw.dpi
                ),
            ));
        }
        let dots_per_mm = raw.dpi as f64 / 25.4;
        let dots = |v: f64| (v * dots_per_mm).round() as u32;
        for (key, v) in [("width_mm", raw.width_mm), ("height_mm", raw.height_mm)] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_SIDE_MM) {
                return Err(err(
                    key,
                    format!("{key} = {v} must be more than 0 and at most {MAX_SIDE_MM} mm"),
                ));
            }
        }
        let (w_mm, h_mm) = (raw.width_mm, raw.height_mm);
        // A box (x, y, w, h) in mm must lie on the label.
        let on_label = |what: &str, needle: &str, x: f64, y: f64, w: f64, h: f64| -> Result<()> {
            let ok = [x, y, w, h].iter().all(|v| v.is_finite() && *v >= 0.0)
                && w > 0.0
                && h > 0.0
                && x + w <= w_mm + 1e-9
                && y + h <= h_mm + 1e-9;
            if ok {
                Ok(())
            } else {
                Err(err(
                    needle,
                    format!("{what} at ({x}, {y}) mm, {w} x {h} mm, is not on the {w_mm} x {h_mm} mm label"),
                ))
            }
        };
        let q = &raw.qr;
        on_label("[qr]", "size_mm", q.x_mm, q.y_mm, q.size_mm, q.size_mm)?;
        let ecc = match q.ecc.as_str() {
            "L" => Ecc::L,
            "M" => Ecc::M,
            "Q" => Ecc::Q,
            "H" => Ecc::H,
            other => return Err(err("ecc", format!("qr.ecc '{other}' must be L, M, Q or H"))),
        };
        let payload = Tpl::new(&q.payload, at(&q.payload), source)?;
        let qr = QrSpec {
            payload,
            x: dots(q.x_mm),
            y: dots(q.y_mm),
            size: dots(q.size_mm),
            ecc,
        };
        let mut texts = Vec::new();
        for t in &raw.text {
            // Text runs to the right; only its start and height must be on the label.
            on_label(
                &format!("text \"{}\"", t.value),
                &t.value,
                t.x_mm,
                t.y_mm,
                (w_mm - t.x_mm).max(0.0),
                t.height_mm,
            )?;
            if dots(t.height_mm) == 0 {
                return Err(err(
                    &t.value,
                    format!(
                        "text \"{}\": height_mm {} is less than one dot",
                        t.value, t.height_mm
                    ),
                ));
            }
            texts.push(TextSpec {
                value: Tpl::new(&t.value, at(&t.value), source)?,
                x: dots(t.x_mm),
                y: dots(t.y_mm),
                height: dots(t.height_mm),
            });
        }
        Ok(LabelTemplate {
            name: name.to_string(),
            source: source.to_string(),
            description: raw.description.unwrap_or_default(),
            dpi: raw.dpi,
            width: dots(w_mm),
            height: dots(h_mm),
            qr,
            texts,
        })
    }

    /// Lays out the label of device `serial` from its variables.
    pub fn render(&self, serial: &str, vars: &Vars) -> Result<Label> {
        let missing = |t: &Tpl, name: String| {
            Error::input_at(
                &self.source,
                t.line,
                format!(
                    "label template '{}' needs '{name}' but device '{serial}' has no value for it (set it in the registry, or write {{{name}?}} to make it optional)",
                    self.name
                ),
            )
        };
        let spec = &self.qr;
        let payload = spec
            .payload
            .fill(vars)
            .map_err(|n| missing(&spec.payload, n))?
            .unwrap_or_default();
        let too_long = |why: String| {
            Error::input_at(
                &self.source,
                spec.payload.line,
                format!(
                    "device '{serial}': QR payload of {} bytes {why}",
                    payload.len()
                ),
            )
        };
        let code = QrCode::with_error_correction_level(payload.as_bytes(), spec.ecc.level())
            .map_err(|e| {
                too_long(format!(
                    "cannot be a QR code at level {}: {e}",
                    spec.ecc.letter()
                ))
            })?;
        let modules = code.width() as u32;
        let module = (spec.size / modules).min(MAX_MAGNIFICATION);
        if module == 0 {
            return Err(too_long(format!(
                "needs {modules} x {modules} modules (at least {modules} dots a side), more than qr.size_mm gives: {} dots at {} dpi",
                spec.size, self.dpi
            )));
        }
        let dark = code
            .to_colors()
            .into_iter()
            .map(|c| c == qrcode::Color::Dark)
            .collect();
        let mut texts = Vec::new();
        for t in &self.texts {
            if let Some(value) = t.value.fill_whole(vars).map_err(|n| missing(&t.value, n))? {
                texts.push(Text::fitted(value, t.x, t.y, t.height, self.width));
            }
        }
        Ok(Label {
            serial: serial.to_string(),
            width: self.width,
            height: self.height,
            dpi: self.dpi,
            qr: Qr {
                payload,
                ecc: spec.ecc,
                x: spec.x,
                y: spec.y,
                module,
                modules,
                dark,
            },
            texts,
        })
    }
}

/// Writes the editable copies of the built-in templates into `dir`
/// (`HOME/templates/labels`), keeping any that exist.
pub fn install_builtins(dir: &Path) -> Result<()> {
    install_files(dir, BUILTIN)
}

/// Writes `NAME.toml` with each built-in's text into `dir`, keeping any that exist (the
/// label and config templates `cradle init` installs).
pub fn install_files(dir: &Path, builtins: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, text) in builtins {
        let p = dir.join(format!("{name}.toml"));
        if !p.exists() {
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn builtin_templates_parse_and_render() {
        for (name, text) in BUILTIN {
            let t = LabelTemplate::parse(name, name, text).unwrap();
            let l = t
                .render(
                    "A1",
                    &vars(&[("serial", "A1"), ("mac", "0a:1b:2c:3d:4e:5f")]),
                )
                .unwrap();
            assert_eq!(
                l.qr.payload,
                "A1;0a:1b:2c:3d:4e:5f;https://onboard.example/A1"
            );
            // 62 x 29 mm at 8 dots/mm.
            assert_eq!((l.width, l.height), (496, 232));
        }
    }

    #[test]
    fn long_lines_are_condensed_to_the_label_edge() {
        let (_, text) = BUILTIN[0];
        let t = LabelTemplate::parse("d", "d.toml", text).unwrap();
        let l = t.render("A1", &vars(&[("serial", "A1")])).unwrap();
        assert_eq!(l.texts[0].width, 32);
        let long = "ACME-SENSOR-0000000001-REV-B";
        let l = t.render(long, &vars(&[("serial", long)])).unwrap();
        // 28 characters of 32 dots would need ~627 dots; 496 - 200 are left.
        assert_eq!(l.texts[0].width, 15);
    }

    #[test]
    fn optional_text_lines_are_left_out() {
        let (_, text) = BUILTIN[0];
        let t = LabelTemplate::parse("d", "d.toml", text).unwrap();
        let l = t.render("A1", &vars(&[("serial", "A1")])).unwrap();
        let values: Vec<&str> = l.texts.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(values, ["A1"]);
        assert_eq!(l.qr.payload, "A1;;https://onboard.example/A1");
    }

    const BASE: &str = "width_mm = 50\nheight_mm = 25\ndpi = 203\n";

    fn parse_err(body: &str) -> String {
        LabelTemplate::parse("x", "x.toml", body)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_templates_name_the_line() {
        let qr = "[qr]\npayload = \"{serial}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 20\n";
        let e = parse_err(&format!(
            "{BASE}{qr}[[text]]\nvalue = \"{{modle}}\"\nx_mm = 1\ny_mm = 1\nheight_mm = 3\n"
        ));
        assert!(
            e.starts_with("x.toml:10: unknown variable '{modle}'"),
            "{e}"
        );
        let e = parse_err(&format!("width_mm = 50\nheight_mm = 25\ndpi = 250\n{qr}"));
        assert!(e.starts_with("x.toml:3: dpi 250"), "{e}");
        let e = parse_err(&format!("width_mm = -5\nheight_mm = 25\ndpi = 203\n{qr}"));
        assert!(e.starts_with("x.toml:1: width_mm = -5"), "{e}");
        let e = parse_err(&format!(
            "{BASE}[qr]\npayload = \"{{serial}}\"\nx_mm = 40\ny_mm = 1\nsize_mm = 20\n"
        ));
        assert!(e.starts_with("x.toml:8: [qr] at (40, 1) mm"), "{e}");
        let e = parse_err(&format!("{BASE}{qr}colour = 1\n"));
        assert!(e.starts_with("x.toml:9: unknown field `colour`"), "{e}");
    }

    #[test]
    fn payload_too_long_for_the_qr_space_or_any_qr() {
        let qr = "[qr]\npayload = \"{serial}{attr.blob}\"\nx_mm = 1\ny_mm = 1\nsize_mm = 5\n";
        let t = LabelTemplate::parse("x", "x.toml", &format!("{BASE}{qr}")).unwrap();
        let e = t
            .render(
                "A1",
                &vars(&[("serial", "A1"), ("attr.blob", &"x".repeat(400))]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:5: device 'A1': QR payload of 402 bytes needs"),
            "{e}"
        );
        let e = t
            .render(
                "A1",
                &vars(&[("serial", "A1"), ("attr.blob", &"x".repeat(5000))]),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be a QR code at level M"), "{e}");
    }
}
