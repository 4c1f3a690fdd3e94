//! The fleet report: one self-contained HTML file (inline CSS and SVG, no scripts,
//! nothing fetched) with the fleet's shape, certificate expiry, open findings and
//! recent decommissions. Every number sits in a `data-*` attribute so tools (and the
//! tests) can read it back.

use std::fmt::Write as _;

use crate::store::Reader;
use serde::Serialize;

use super::{Finding, Options, Severity, Summary};
use crate::error::Result;
use crate::store::audit::{self as q, Decommissioned};

/// Findings listed in the report (the per-check counts cover all of them).
pub const MAX_LISTED_FINDINGS: usize = 200;
/// Rows per breakdown (site, batch, model) before the rest are summed as "others".
pub const MAX_GROUP_ROWS: usize = 12;
/// Months of expiry shown in the chart, from the current month.
pub const CHART_MONTHS: usize = 12;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub rows: Vec<Count>,
    /// Devices in groups beyond the listed rows.
    pub others: i64,
    /// How many distinct groups there are.
    pub groups: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Expiry {
    /// Active certificates (in-service devices) already expired.
    pub expired: i64,
    /// Per month from the current month, `CHART_MONTHS` entries (zeros included).
    pub months: Vec<Count>,
    /// Expiring after the last month shown.
    pub later: i64,
    /// Expiring within the audit's --expiring-within window.
    pub within_window: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub generated_at: String,
    pub registry: String,
    pub devices: i64,
    pub by_state: Vec<Count>,
    pub by_site: Breakdown,
    pub by_batch: Breakdown,
    pub by_model: Breakdown,
    pub certificates: Vec<Count>,
    pub expiring_within_days: u32,
    pub expiry: Expiry,
    /// The charts of the years in between (expiry by year, firmware, warranty, cost, age).
    pub assets: super::charts::AssetCharts,
    pub audit: Summary,
    /// The first `MAX_LISTED_FINDINGS` findings (errors first).
    pub findings: Vec<Finding>,
    pub recent_decommissions: Vec<Decommissioned>,
}

fn breakdown(rows: Vec<(String, i64)>) -> Breakdown {
    let groups = rows.len();
    let others = rows.iter().skip(MAX_GROUP_ROWS).map(|r| r.1).sum();
    Breakdown {
        rows: rows
            .into_iter()
            .take(MAX_GROUP_ROWS)
            .map(|(label, count)| Count { label, count })
            .collect(),
        others,
        groups,
    }
}

/// Gathers the report's numbers and runs the audit (keeping the first findings).
pub fn build(conn: &Reader, registry: &str, opts: &Options) -> Result<Fleet> {
    let states = q::device_counts_by(conn, "status")?;
    let by_state = crate::store::DeviceStatus::ALL
        .iter()
        .map(|s| Count {
            label: s.as_str().to_string(),
            count: states
                .iter()
                .find(|(l, _)| l == s.as_str())
                .map(|r| r.1)
                .unwrap_or(0),
        })
        .collect();
    let (months, expired) = q::expiry_by_month(conn, opts.now)?;
    let start = time::OffsetDateTime::from_unix_timestamp(opts.now)
        .map_err(|e| crate::Error::input(format!("bad time: {e}")))?;
    let (mut y, mut m) = (start.year(), u8::from(start.month()));
    let mut chart = Vec::with_capacity(CHART_MONTHS);
    for _ in 0..CHART_MONTHS {
        let label = format!("{y:04}-{m:02}");
        let count = months
            .iter()
            .find(|(l, _)| *l == label)
            .map(|r| r.1)
            .unwrap_or(0);
        chart.push(Count { label, count });
        m += 1;
        if m > 12 {
            m = 1;
            y += 1;
        }
    }
    let last = chart.last().map(|c| c.label.clone()).unwrap_or_default();
    let later = months.iter().filter(|(l, _)| *l > last).map(|r| r.1).sum();

    let mut findings: Vec<Finding> = Vec::new();
    let audit = super::run(conn, opts, &mut |f| {
        // Keep errors ahead of warnings in the bounded list.
        if findings.len() < MAX_LISTED_FINDINGS {
            findings.push(f);
        } else if f.severity == Severity::Error {
            if let Some(i) = findings
                .iter()
                .rposition(|x| x.severity == Severity::Warning)
            {
                findings.remove(i);
                findings.push(f);
            }
        }
        Ok(())
    })?;
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let within_window = audit
        .by_check
        .get(super::CERT_EXPIRING)
        .copied()
        .unwrap_or(0);

    let certs = q::cert_counts(conn)?;
    Ok(Fleet {
        generated_at: crate::store::fmt_time(start),
        registry: registry.to_string(),
        devices: q::device_count(conn)?,
        by_state,
        by_site: breakdown(q::device_counts_by(conn, "site")?),
        by_batch: breakdown(q::device_counts_by(conn, "batch")?),
        by_model: breakdown(q::device_counts_by(conn, "model")?),
        certificates: ["active", "revoked", "unused"]
            .iter()
            .map(|s| Count {
                label: s.to_string(),
                count: certs.iter().find(|(l, _)| l == s).map(|r| r.1).unwrap_or(0),
            })
            .collect(),
        expiring_within_days: opts.expiring_within_days,
        expiry: Expiry {
            expired,
            months: chart,
            later,
            within_window,
        },
        assets: super::charts::build(conn, opts.now)?,
        audit,
        findings,
        recent_decommissions: q::recent_decommissions(conn, 20)?,
    })
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    crate::html::escape(s)
}

fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn pct(n: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    }
}

const CSS: &str = r#"
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f5f7fa;--card:#fff;--accent:#2f6fde;
--ok:#2e9e6b;--warn:#d98b0b;--err:#d64545;}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#1f2a44;color:#fff;padding:28px 40px 24px}
header h1{margin:0;font-size:24px;font-weight:600;letter-spacing:.2px}
header p{margin:6px 0 0;color:#c5cfe0;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:16px;margin-bottom:20px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px}
.kpi .v{font-size:28px;font-weight:650;line-height:1.1}
.kpi .l{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.6px;margin-top:4px}
.kpi .s{color:var(--muted);font-size:12px;margin-top:2px}
.kpi.err .v{color:var(--err)}.kpi.warn .v{color:var(--warn)}.kpi.ok .v{color:var(--ok)}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:0 20px;align-items:start}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin-bottom:20px}
section h2{margin:0 0 12px;font-size:16px;font-weight:600}
section h2 small{color:var(--muted);font-weight:400;font-size:12px;margin-left:6px}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-size:11px;text-transform:uppercase;letter-spacing:.5px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);padding:6px 8px}
td{padding:6px 8px;border-bottom:1px solid #f0f2f5;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.bar{width:38%}
td.nw{white-space:nowrap}
.track{background:#eef1f5;border-radius:4px;height:10px;overflow:hidden}
.fill{height:10px;border-radius:4px;background:var(--accent)}
.muted{color:var(--muted)}
.pill{display:inline-block;padding:1px 8px;border-radius:999px;font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.4px}
.pill.error{background:#fde8e8;color:#b42318}.pill.warning{background:#fdf3e1;color:#9a5b00}
.pill.ok{background:#e3f6ec;color:#1d7a50}
.st-registered{background:#9aa5b1}.st-provisioned{background:#6c8ef5}.st-deployed{background:#2e9e6b}
.st-maintenance{background:#d98b0b}.st-retired{background:#b0617a}.st-decommissioned{background:#52606d}
.stack{display:flex;height:16px;border-radius:6px;overflow:hidden;margin:4px 0 14px;background:#eef1f5}
.legend{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:-1px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#3e4c59}
.msg{color:#3e4c59}
.clean{padding:12px 14px;border-radius:8px;background:#e3f6ec;color:#1d7a50;font-weight:600}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#52606d}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
@media print{body{background:#fff}section,.kpi{break-inside:avoid}}
"#;

/// Renders the report as one HTML document.
pub fn render_html(f: &Fleet) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let errors = f.audit.errors as i64;
    let warnings = f.audit.warnings as i64;
    let active = f
        .certificates
        .iter()
        .find(|c| c.label == "active")
        .map(|c| c.count)
        .unwrap_or(0);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"generator\" content=\"cradle {ver}\">\n<title>Fleet report · {gen}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
<header><h1>Fleet report</h1><p>Registry <code style=\"color:#dbe4f3\">{reg}</code> · generated {gen} · {checks} audit checks</p></header>\n<main>\n",
        ver = env!("CARGO_PKG_VERSION"),
        gen = esc(&f.generated_at),
        reg = esc(&f.registry),
        checks = f.audit.checks.len(),
    );

    // Key figures.
    let kpi = |h: &mut String, id: &str, class: &str, value: i64, label: &str, sub: &str| {
        let _ = writeln!(
            h,
            "<div class=\"kpi {class}\" id=\"kpi-{id}\" data-count=\"{value}\"><div class=\"v\">{}</div><div class=\"l\">{}</div><div class=\"s\">{}</div></div>",
            thousands(value),
            esc(label),
            esc(sub)
        );
    };
    h.push_str("<div class=\"kpis\">\n");
    let in_service: i64 = f
        .by_state
        .iter()
        .filter(|c| !matches!(c.label.as_str(), "retired" | "decommissioned"))
        .map(|c| c.count)
        .sum();
    kpi(
        &mut h,
        "devices",
        "",
        f.devices,
        "devices",
        &format!("{} in service", thousands(in_service)),
    );
    let revoked = f
        .certificates
        .iter()
        .find(|c| c.label == "revoked")
        .map(|c| c.count)
        .unwrap_or(0);
    kpi(
        &mut h,
        "active-certificates",
        "",
        active,
        "active certificates",
        &format!("{} revoked", thousands(revoked)),
    );
    kpi(
        &mut h,
        "expiring",
        if f.expiry.within_window > 0 {
            "warn"
        } else {
            "ok"
        },
        f.expiry.within_window as i64,
        &format!("expiring within {} days", f.expiring_within_days),
        &format!("{} already expired", thousands(f.expiry.expired)),
    );
    kpi(
        &mut h,
        "findings",
        if errors > 0 {
            "err"
        } else if warnings > 0 {
            "warn"
        } else {
            "ok"
        },
        f.audit.findings as i64,
        "open findings",
        &format!(
            "{} error{} · {} warning{}",
            thousands(errors),
            if errors == 1 { "" } else { "s" },
            thousands(warnings),
            if warnings == 1 { "" } else { "s" }
        ),
    );
    h.push_str("</div>\n");

    // Lifecycle.
    h.push_str("<section id=\"by-state\"><h2>Lifecycle</h2>\n<div class=\"stack\">");
    for c in f.by_state.iter().filter(|c| c.count > 0) {
        let _ = write!(
            h,
            "<div class=\"st-{l}\" style=\"width:{:.3}%\" title=\"{l}: {}\"></div>",
            pct(c.count, f.devices),
            c.count,
            l = esc(&c.label)
        );
    }
    h.push_str("</div>\n<table><thead><tr><th>State</th><th class=\"n\">Devices</th><th class=\"n\">Share</th></tr></thead><tbody>\n");
    for c in &f.by_state {
        let _ = writeln!(
            h,
            "<tr data-group=\"state\" data-label=\"{l}\" data-count=\"{n}\"><td><span class=\"legend st-{l}\"></span>{l}</td><td class=\"n\">{}</td><td class=\"n muted\">{:.1}%</td></tr>",
            thousands(c.count),
            pct(c.count, f.devices),
            l = esc(&c.label),
            n = c.count
        );
    }
    h.push_str("</tbody></table></section>\n");

    // Expiry chart.
    h.push_str(&expiry_svg(f));
    super::charts::render(&mut h, &f.assets);

    // Breakdowns.
    h.push_str("<div class=\"grid\">\n");
    group_table(&mut h, "site", "Sites", "Site", &f.by_site, f.devices);
    group_table(&mut h, "batch", "Batches", "Batch", &f.by_batch, f.devices);
    group_table(&mut h, "model", "Models", "Model", &f.by_model, f.devices);
    certificates_table(&mut h, &f.certificates);
    h.push_str("</div>\n");

    findings_section(&mut h, f);
    decommissions_section(&mut h, &f.recent_decommissions);

    let _ = write!(
        h,
        "<footer>cradle {} · audit took {:.2} s · this file is self-contained: no scripts, no network</footer>\n</main>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        f.audit.seconds
    );
    h
}

fn expiry_svg(f: &Fleet) -> String {
    // Bars: "expired", the months, "later".
    let mut bars: Vec<(String, String, i64, &str)> = Vec::new();
    bars.push((
        "expired".into(),
        "expired".into(),
        f.expiry.expired,
        "#d64545",
    ));
    for (i, m) in f.expiry.months.iter().enumerate() {
        let short = month_label(&m.label, i == 0 || m.label.ends_with("-01"));
        let color = if i == 0 { "#d98b0b" } else { "#2f6fde" };
        bars.push((m.label.clone(), short, m.count, color));
    }
    bars.push(("later".into(), "later".into(), f.expiry.later, "#9aa5b1"));
    let top_value = bars.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    // The axis ends on a round tick at or above the tallest bar.
    let step = nice_step(top_value);
    let max = (top_value + step - 1) / step * step;
    let (w, hgt, left, top, bottom) = (1060.0_f64, 260.0_f64, 48.0_f64, 18.0_f64, 40.0_f64);
    let plot_h = hgt - top - bottom;
    let slot = (w - left - 10.0) / bars.len() as f64;
    let bw = slot * 0.64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<section id=\"expiry\"><h2>Certificates expiring per month <small>active certificates of in-service devices</small></h2>\n\
<svg id=\"expiry-chart\" role=\"img\" aria-label=\"Certificates expiring per month\" viewBox=\"0 0 {w} {hgt}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\">\n"
    );
    // Grid lines with round tick values.
    let mut t = 0;
    while t <= max {
        let y = top + plot_h - plot_h * t as f64 / max as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e7eb\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - 10.0,
            left - 6.0,
            y + 4.0,
            thousands(t)
        );
        t += step;
    }
    for (i, (key, label, n, color)) in bars.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bw) / 2.0;
        let bh = plot_h * *n as f64 / max as f64;
        let y = top + plot_h - bh;
        let _ = writeln!(
            s,
            "<g class=\"bar\" data-month=\"{k}\" data-count=\"{n}\"><title>{k}: {n} certificate(s)</title>\
<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" rx=\"3\" fill=\"{color}\"/>\
<text x=\"{cx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" style=\"fill:#1f2933;font-weight:600\">{v}</text>\
<text x=\"{cx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{l}</text></g>",
            k = esc(key),
            cx = x + bw / 2.0,
            ty = y - 5.0,
            v = if *n > 0 { thousands(*n) } else { String::new() },
            ly = hgt - bottom + 18.0,
            l = esc(label),
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#9aa5b1\"/>\n</svg>\n\
<p class=\"muted\" style=\"margin:6px 0 0\">Red: already expired · amber: this month · grey: after {}.</p></section>\n",
        w - 10.0,
        f.expiry.months.last().map(|m| m.label.as_str()).unwrap_or(""),
        y = top + plot_h,
    );
    s
}

fn nice_step(max: i64) -> i64 {
    let raw = (max as f64 / 4.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step.ceil() as i64).max(1)
}

fn month_label(ym: &str, with_year: bool) -> String {
    const NAMES: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m) = ym.split_once('-').unwrap_or((ym, "01"));
    let name = m
        .parse::<usize>()
        .ok()
        .and_then(|m| NAMES.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("?");
    if with_year {
        format!("{name} {y}")
    } else {
        name.to_string()
    }
}

fn group_table(h: &mut String, key: &str, title: &str, column: &str, b: &Breakdown, total: i64) {
    let _ = write!(
        h,
        "<section id=\"by-{key}\"><h2>{title} <small>{} distinct</small></h2>\n<table><thead><tr><th>{}</th><th class=\"n\">Devices</th><th></th></tr></thead><tbody>\n",
        b.groups,
        column,
    );
    let max = b.rows.iter().map(|r| r.count).max().unwrap_or(1).max(1);
    for r in &b.rows {
        let shown = if r.label.is_empty() {
            "<span class=\"muted\">(none)</span>".to_string()
        } else {
            esc(&r.label)
        };
        let _ = writeln!(
            h,
            "<tr data-group=\"{key}\" data-label=\"{}\" data-count=\"{}\"><td>{shown}</td><td class=\"n\">{}</td>\
<td class=\"bar\"><div class=\"track\"><div class=\"fill\" style=\"width:{:.2}%\"></div></div></td></tr>",
            esc(&r.label),
            r.count,
            thousands(r.count),
            pct(r.count, max)
        );
    }
    if b.others > 0 {
        let _ = writeln!(
            h,
            "<tr data-group=\"{key}\" data-others=\"{}\"><td class=\"muted\">{} more</td><td class=\"n\">{}</td><td class=\"muted n\">{:.1}%</td></tr>",
            b.others,
            b.groups.saturating_sub(b.rows.len()),
            thousands(b.others),
            pct(b.others, total)
        );
    }
    if b.rows.is_empty() {
        h.push_str("<tr><td colspan=\"3\" class=\"muted\">no devices</td></tr>\n");
    }
    h.push_str("</tbody></table></section>\n");
}

fn certificates_table(h: &mut String, certs: &[Count]) {
    h.push_str("<section id=\"certificates\"><h2>Certificates</h2>\n<table><thead><tr><th>Status</th><th class=\"n\">Certificates</th></tr></thead><tbody>\n");
    for c in certs {
        let _ = writeln!(
            h,
            "<tr data-group=\"certificate\" data-label=\"{l}\" data-count=\"{n}\"><td>{l}</td><td class=\"n\">{}</td></tr>",
            thousands(c.count),
            l = esc(&c.label),
            n = c.count
        );
    }
    h.push_str("</tbody></table></section>\n");
}

fn findings_section(h: &mut String, f: &Fleet) {
    let _ = writeln!(
        h,
        "<section id=\"findings\" data-count=\"{}\" data-errors=\"{}\" data-warnings=\"{}\"><h2>Open findings <small>cradle audit</small></h2>",
        f.audit.findings, f.audit.errors, f.audit.warnings
    );
    h.push_str("<table id=\"checks\"><thead><tr><th>Check</th><th>Severity</th><th class=\"n\">Findings</th></tr></thead><tbody>\n");
    let mut order: Vec<(&str, u64)> = super::CHECKS
        .iter()
        .filter_map(|c| f.audit.by_check.get(c.id).map(|n| (c.id, *n)))
        .collect();
    // Failing checks first (errors before warnings), then the rest in their usual order.
    order.sort_by_key(|(id, n)| (*n == 0, std::cmp::Reverse(super::severity_of(id))));
    for (id, n) in &order {
        let sev = super::severity_of(id);
        let pill = if *n == 0 {
            "<span class=\"pill ok\">ok</span>".to_string()
        } else {
            format!("<span class=\"pill {0}\">{0}</span>", sev.as_str())
        };
        let _ = writeln!(
            h,
            "<tr data-check=\"{id}\" data-count=\"{n}\"><td><code>{id}</code></td><td>{pill}</td><td class=\"n\">{}</td></tr>",
            thousands(*n as i64)
        );
    }
    h.push_str("</tbody></table>\n");
    if f.findings.is_empty() {
        h.push_str(
            "<p class=\"clean\" style=\"margin-top:14px\">No findings: every check passed.</p>\n",
        );
    } else {
        let _ = write!(
            h,
            "<h2 style=\"margin-top:18px\">Details <small>{}</small></h2>\n<table id=\"finding-list\"><thead><tr><th>Severity</th><th>Check</th><th>Device</th><th>Message</th></tr></thead><tbody>\n",
            if (f.findings.len() as u64) < f.audit.findings {
                format!("first {} of {}", f.findings.len(), f.audit.findings)
            } else {
                format!("{}", f.findings.len())
            }
        );
        for x in &f.findings {
            let dev = x.device.as_deref().unwrap_or("");
            let _ = writeln!(
                h,
                "<tr class=\"finding\" data-check=\"{}\" data-severity=\"{s}\" data-device=\"{d}\"><td class=\"nw\"><span class=\"pill {s}\">{s}</span></td><td class=\"nw\"><code>{}</code></td><td class=\"nw\">{}</td><td class=\"msg\">{}</td></tr>",
                x.check,
                x.check,
                if dev.is_empty() { "<span class=\"muted\">—</span>".to_string() } else { esc(dev) },
                esc(&x.message),
                s = x.severity.as_str(),
                d = esc(dev),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str("</section>\n");
}

fn decommissions_section(h: &mut String, list: &[Decommissioned]) {
    let _ = writeln!(
        h,
        "<section id=\"decommissions\" data-count=\"{}\"><h2>Recent decommissions</h2>",
        list.len()
    );
    if list.is_empty() {
        h.push_str("<p class=\"muted\">No device has been decommissioned yet.</p></section>\n");
        return;
    }
    h.push_str("<table><thead><tr><th>Device</th><th>Model</th><th>Site</th><th>Decommissioned</th><th>Wipe</th></tr></thead><tbody>\n");
    for d in list {
        let wipe = match (d.wipe_kind.as_deref(), d.attestation_verified) {
            (Some("manual"), _) => format!(
                "<span class=\"pill ok\">manual</span> <span class=\"muted\">{}</span>",
                esc(d.wipe_level.as_deref().unwrap_or(""))
            ),
            (Some("read-back"), _) => format!(
                "<span class=\"pill ok\">read back</span> <span class=\"muted\">{}</span>",
                esc(d.wipe_level.as_deref().unwrap_or(""))
            ),
            (Some(_), Some(true)) => format!(
                "<span class=\"pill ok\">attested</span> <span class=\"muted\">{}</span>",
                esc(d.wipe_level.as_deref().unwrap_or(""))
            ),
            (Some(_), _) => "<span class=\"pill warning\">unverified</span>".to_string(),
            (None, _) => "<span class=\"pill error\">no wipe record</span>".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr class=\"decommission\" data-serial=\"{s}\"><td><code>{s}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{wipe}</td></tr>",
            esc(d.model.as_deref().unwrap_or("")),
            esc(d.site.as_deref().unwrap_or("")),
            esc(&d.at),
            s = esc(&d.serial),
        );
    }
    h.push_str("</tbody></table></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn numbers_and_steps() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(1000), 250);
        assert_eq!(month_label("2026-03", false), "Mar");
        assert_eq!(month_label("2027-01", true), "Jan 2027");
    }
}
