//! SVG: the label at its physical size (mm), drawn in printer dots (the viewBox), so
//! it matches what the ZPL prints. The QR code is one `<rect>` per run of dark
//! modules in a row; text lines are `<text>`.

use std::fmt::Write;

use super::template::Label;

pub fn render(label: &Label) -> String {
    let mm = |dots: u32| dots as f64 * 25.4 / label.dpi as f64;
    let mut s = String::with_capacity(16 * 1024);
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{:.2}mm" height="{:.2}mm" viewBox="0 0 {} {}" shape-rendering="crispEdges">
<title>{}</title>
<rect width="{}" height="{}" fill="white"/>"#,
        mm(label.width),
        mm(label.height),
        label.width,
        label.height,
        xml(&label.serial),
        label.width,
        label.height
    );
    let q = &label.qr;
    let _ = writeln!(s, r#"<g fill="black" data-payload="{}">"#, xml(&q.payload));
    for row in 0..q.modules {
        let mut col = 0;
        while col < q.modules {
            if !q.is_dark(col, row) {
                col += 1;
                continue;
            }
            let start = col;
            while col < q.modules && q.is_dark(col, row) {
                col += 1;
            }
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{}"/>"#,
                q.x + start * q.module,
                q.y + row * q.module,
                (col - start) * q.module,
                q.module
            );
        }
    }
    s.push_str("</g>\n");
    for t in &label.texts {
        // ZPL places a field by its top-left corner, SVG text by its baseline
        // (hence text-before-edge); a condensed line is scaled across, as ZPL's
        // narrower character width does (textLength is not drawn by every renderer).
        let scale = if t.width < t.height {
            format!(" scale({:.3} 1)", t.width as f64 / t.height as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r#"<text transform="translate({} {}){scale}" font-family="sans-serif" font-size="{}" dominant-baseline="text-before-edge">{}</text>"#,
            t.x,
            t.y,
            t.height,
            xml(&t.value)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Text and attribute content: markup escaped, and the control characters XML 1.0
/// cannot carry at all replaced by U+FFFD.
fn xml(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\t' | '\n') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_and_controls_are_escaped() {
        assert_eq!(
            super::xml("a<b>&\"'\u{1b}"),
            "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}"
        );
    }
}
