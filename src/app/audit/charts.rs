//! The fleet report's charts for the years in between: certificate expiry by year,
//! firmware versions per model, warranty expiry by quarter, cost per site and batch
//! (per currency, summed exactly) and the age of the fleet. Inline SVG, no scripts;
//! each chart is a `<figure data-chart="…">` whose bars carry their numbers in `data-*`
//! attributes, and a chart without data says so (`data-empty="true"`) instead of
//! drawing empty axes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::report::{esc, Count};
use crate::app::inventory::asset::{self, Amount};
use crate::error::Result;
use crate::store::assets::{self as q, CostGroup};
use crate::store::Reader;

/// Years of certificate expiry shown before the rest are summed as "later".
pub const CHART_YEARS: usize = 16;
/// Quarters of warranty expiry shown, from the current one.
pub const CHART_QUARTERS: usize = 8;
/// Models shown in the firmware chart, and versions per model.
pub const FIRMWARE_MODELS: usize = 10;
pub const FIRMWARE_VERSIONS: usize = 6;
/// Groups per currency shown in a cost chart.
pub const COST_ROWS: usize = 12;
/// Age buckets: (label, from years, to years).
const AGE_BUCKETS: [(&str, i64, i64); 6] = [
    ("<1", 0, 1),
    ("1-2", 1, 2),
    ("2-3", 2, 3),
    ("3-5", 3, 5),
    ("5-10", 5, 10),
    ("10+", 10, i64::MAX),
];

#[derive(Debug, Clone, Serialize)]
pub struct YearExpiry {
    pub expired: i64,
    /// From the current year to the last year with an expiry (zeros included).
    pub years: Vec<Count>,
    pub later: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelFirmware {
    /// `""` for devices without a model.
    pub model: String,
    pub devices: i64,
    /// Versions by device count (`""`: none recorded).
    pub versions: Vec<Count>,
    /// Devices on versions beyond the listed ones.
    pub other_versions: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WarrantyQuarters {
    /// Warranties that ended before today.
    pub ended: i64,
    /// `2027-Q1` … from the current quarter (today on), `CHART_QUARTERS` entries.
    pub quarters: Vec<Count>,
    pub later: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    /// Site or batch (`""`: none).
    pub group: String,
    pub currency: String,
    /// Exact decimal sum.
    pub total: String,
    pub devices: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Age {
    pub buckets: Vec<Count>,
    /// Devices dated by their purchase_date, and by the day the registry created them.
    pub from_purchase_date: i64,
    pub from_created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssetCharts {
    pub expiry_by_year: YearExpiry,
    pub firmware_by_model: Vec<ModelFirmware>,
    pub warranty_by_quarter: WarrantyQuarters,
    pub cost_by_site: Vec<CostRow>,
    pub cost_by_batch: Vec<CostRow>,
    pub age: Age,
}

fn year_of(secs: i64) -> i32 {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| t.year())
        .unwrap_or(1970)
}

/// Gathers the numbers of every chart.
pub fn build(db: &Reader, now: i64) -> Result<AssetCharts> {
    // Certificate expiry by year.
    let (years, expired) = q::expiry_by_year(db, now)?;
    let first = year_of(now);
    let last_with_data = years
        .iter()
        .filter_map(|(y, _)| y.parse::<i32>().ok())
        .max()
        .unwrap_or(first);
    let shown_to = last_with_data.min(first + CHART_YEARS as i32 - 1);
    let count_of = |y: i32| {
        years
            .iter()
            .find(|(l, _)| l.parse::<i32>().ok() == Some(y))
            .map_or(0, |r| r.1)
    };
    let expiry_by_year = YearExpiry {
        expired,
        years: (first..=shown_to)
            .map(|y| Count {
                label: y.to_string(),
                count: count_of(y),
            })
            .collect(),
        later: years
            .iter()
            .filter(|(l, _)| l.parse::<i32>().is_ok_and(|y| y > shown_to))
            .map(|r| r.1)
            .sum(),
    };

    // Firmware per model (rows come biggest model first).
    let mut firmware_by_model: Vec<ModelFirmware> = Vec::new();
    for (model, fw, n) in q::firmware_by_model(db)? {
        if firmware_by_model.last().is_none_or(|m| m.model != model) {
            if firmware_by_model.len() == FIRMWARE_MODELS {
                break;
            }
            firmware_by_model.push(ModelFirmware {
                model,
                devices: 0,
                versions: Vec::new(),
                other_versions: 0,
            });
        }
        let m = firmware_by_model.last_mut().expect("pushed");
        m.devices += n;
        if m.versions.len() < FIRMWARE_VERSIONS {
            m.versions.push(Count {
                label: fw,
                count: n,
            });
        } else {
            m.other_versions += n;
        }
    }

    // Warranty by quarter.
    let today = super::date(now);
    let (mut qy, mut qq) = quarter_of(&today).unwrap_or((first, 1));
    let mut quarters: Vec<Count> = Vec::with_capacity(CHART_QUARTERS);
    for _ in 0..CHART_QUARTERS {
        quarters.push(Count {
            label: format!("{qy}-Q{qq}"),
            count: 0,
        });
        qq += 1;
        if qq > 4 {
            qq = 1;
            qy += 1;
        }
    }
    let mut warranty = WarrantyQuarters {
        ended: 0,
        quarters,
        later: 0,
    };
    for (d, n) in q::warranty_dates(db)? {
        if d < today {
            warranty.ended += n;
            continue;
        }
        let Some((y, qn)) = quarter_of(&d) else {
            continue;
        };
        let label = format!("{y}-Q{qn}");
        match warranty.quarters.iter_mut().find(|c| c.label == label) {
            Some(c) => c.count += n,
            None => warranty.later += n,
        }
    }

    // Age: years since the purchase date (else creation), whole years.
    let mut buckets: Vec<Count> = AGE_BUCKETS
        .iter()
        .map(|(l, _, _)| Count {
            label: l.to_string(),
            count: 0,
        })
        .collect();
    let (mut from_purchase_date, mut from_created_at) = (0, 0);
    for (d, purchased, n) in q::age_dates(db)? {
        let Some(t) = asset::date_unix(&d) else {
            continue;
        };
        let years = ((now - t).max(0) as f64 / (365.2425 * 86_400.0)).floor() as i64;
        if let Some(i) = AGE_BUCKETS
            .iter()
            .position(|(_, a, b)| years >= *a && years < *b)
        {
            buckets[i].count += n;
        }
        if purchased {
            from_purchase_date += n;
        } else {
            from_created_at += n;
        }
    }

    Ok(AssetCharts {
        expiry_by_year,
        firmware_by_model,
        warranty_by_quarter: warranty,
        cost_by_site: cost(db, CostGroup::Site)?,
        cost_by_batch: cost(db, CostGroup::Batch)?,
        age: Age {
            buckets,
            from_purchase_date,
            from_created_at,
        },
    })
}

/// (year, quarter 1-4) of a `YYYY-MM-DD` date.
fn quarter_of(d: &str) -> Option<(i32, u8)> {
    let date = asset::parse_date(d).ok()?;
    Some((date.year(), (u8::from(date.month()) - 1) / 3 + 1))
}

/// Exact cost sums per group and currency, the largest first within each currency.
fn cost(db: &Reader, by: CostGroup) -> Result<Vec<CostRow>> {
    let mut sums: BTreeMap<(String, String), (Amount, i64, usize)> = BTreeMap::new();
    for (group, currency, cost, n) in q::cost_rows(db, by)? {
        // Written through validation; a value that does not parse was not.
        let Ok(a) = Amount::parse(&cost) else {
            continue;
        };
        let e = sums.entry((currency, group)).or_default();
        let add = a.0.checked_mul(i128::from(n)).map(Amount);
        e.0 = add.and_then(|x| e.0.checked_add(x)).unwrap_or(e.0);
        e.1 += n;
        e.2 = e.2.max(Amount::decimals_of(&cost));
    }
    let mut rows: Vec<(String, String, Amount, i64, usize)> = sums
        .into_iter()
        .map(|((cur, g), (a, n, d))| (cur, g, a, n, d))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)).then(a.1.cmp(&b.1)));
    let mut out = Vec::new();
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    for (currency, group, a, n, d) in rows {
        let k = shown.entry(currency.clone()).or_default();
        if *k >= COST_ROWS {
            continue;
        }
        *k += 1;
        out.push(CostRow {
            group,
            currency,
            total: a.with_decimals(d),
            devices: n,
        });
    }
    Ok(out)
}

/// A bar of a chart: the `data-*` attributes (already escaped), label, value, colour.
struct Bar {
    data: String,
    label: String,
    value: f64,
    text: String,
    color: &'static str,
    title: String,
}

const BLUE: &str = "#2f6fde";
const RED: &str = "#d64545";
const GREY: &str = "#9aa5b1";
const AMBER: &str = "#d98b0b";
const GREEN: &str = "#2e9e6b";

fn figure_open(h: &mut String, id: &str, title: &str, sub: &str, empty: bool, extra: &str) {
    let _ = write!(
        h,
        "<section id=\"{id}\"><h2>{} <small>{}</small></h2>\n<figure class=\"chart\" data-chart=\"{id}\" data-empty=\"{empty}\"{extra} style=\"margin:0\">\n",
        esc(title),
        esc(sub),
    );
}

fn no_data(h: &mut String, what: &str) {
    let _ = writeln!(
        h,
        "<p class=\"nodata\" style=\"margin:0;padding:22px;border:1px dashed #cbd2d9;border-radius:8px;text-align:center;color:#616e7c\">No data: {}</p>",
        esc(what)
    );
}

/// Vertical columns (time-like axes).
fn columns(h: &mut String, aria: &str, bars: &[Bar]) {
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1.0);
    let (w, hgt, left, top, bottom) = (1060.0_f64, 220.0_f64, 20.0_f64, 22.0_f64, 36.0_f64);
    let plot_h = hgt - top - bottom;
    let slot = (w - left - 10.0) / bars.len().max(1) as f64;
    let bw = (slot * 0.64).min(70.0);
    let _ = writeln!(
        h,
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {hgt}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(aria)
    );
    for (i, b) in bars.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bw) / 2.0;
        let bh = plot_h * b.value / max;
        let y = top + plot_h - bh;
        let _ = writeln!(
            h,
            "<g class=\"bar\" {}><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" rx=\"3\" fill=\"{}\"/>\
<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" style=\"fill:#1f2933;font-weight:600\">{}</text>\
<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text></g>",
            b.data,
            esc(&b.title),
            b.color,
            y - 5.0,
            esc(&b.text),
            hgt - bottom + 18.0,
            esc(&b.label),
            cx = x + bw / 2.0,
        );
    }
    let _ = writeln!(
        h,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#9aa5b1\"/>\n</svg>",
        w - 10.0,
        y = top + plot_h
    );
}

/// Horizontal bars (named groups); each bar is scaled against `scale_of` its group.
fn rows(h: &mut String, aria: &str, bars: &[Bar], scale: &dyn Fn(usize) -> f64) {
    let row = 24.0_f64;
    let (w, left, top) = (1060.0_f64, 300.0_f64, 6.0_f64);
    let hgt = top * 2.0 + row * bars.len() as f64;
    let plot_w = w - left - 140.0;
    let _ = writeln!(
        h,
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {w} {hgt}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(aria)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let bw = (plot_w * b.value / scale(i).max(f64::MIN_POSITIVE)).max(1.0);
        let _ = writeln!(
            h,
            "<g class=\"bar\" {}><title>{}</title><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
<rect x=\"{left}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:#1f2933;font-weight:600\">{}</text></g>",
            b.data,
            esc(&b.title),
            left - 8.0,
            y + row * 0.65,
            esc(&b.label),
            y + 4.0,
            row - 8.0,
            b.color,
            left + bw + 6.0,
            y + row * 0.65,
            esc(&b.text),
        );
    }
    h.push_str("</svg>\n");
}

fn none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// The bars of a time line: what is already past (red), one bar per period from the
/// current one (amber) on (blue), and what comes after (grey; left out when empty
/// unless `show_empty_later`). `key` names the data attribute (`data-year`, ...).
fn timeline_bars(
    key: &str,
    (past_label, past): (&str, i64),
    periods: &[Count],
    later: i64,
    noun: &str,
    show_empty_later: bool,
) -> Vec<Bar> {
    let bar = |label: &str, n: i64, color, title: String| Bar {
        data: format!("data-{key}=\"{}\" data-count=\"{n}\"", esc(label)),
        label: label.to_string(),
        value: n as f64,
        text: count_text(n),
        color,
        title,
    };
    let mut bars = vec![bar(past_label, past, RED, format!("{past_label}: {past}"))];
    for (i, p) in periods.iter().enumerate() {
        let color = if i == 0 { AMBER } else { BLUE };
        let title = format!("{}: {} {noun}", p.label, p.count);
        bars.push(bar(&p.label, p.count, color, title));
    }
    if later > 0 || show_empty_later {
        bars.push(bar("later", later, GREY, format!("later: {later}")));
    }
    bars
}

/// The charts as HTML sections.
pub fn render(h: &mut String, c: &AssetCharts) {
    // Certificate expiry by year.
    let e = &c.expiry_by_year;
    let total = e.expired + e.later + e.years.iter().map(|y| y.count).sum::<i64>();
    figure_open(
        h,
        "expiry-by-year",
        "Certificates expiring per year",
        "active certificates of in-service devices",
        total == 0,
        &format!(" data-expired=\"{}\" data-later=\"{}\"", e.expired, e.later),
    );
    if total == 0 {
        no_data(h, "no active certificate on an in-service device");
    } else {
        let bars = timeline_bars(
            "year",
            ("expired", e.expired),
            &e.years,
            e.later,
            "certificate(s)",
            false,
        );
        columns(h, "Certificates expiring per year", &bars);
    }
    h.push_str("</figure></section>\n");

    // Firmware per model.
    let fw_total: i64 = c.firmware_by_model.iter().map(|m| m.devices).sum();
    figure_open(
        h,
        "firmware-by-model",
        "Firmware versions per model",
        "in-service devices, the version recorded at the last contact",
        fw_total == 0,
        "",
    );
    if fw_total == 0 {
        no_data(h, "no device in service");
    } else {
        let mut bars = Vec::new();
        let mut scale = Vec::new();
        for m in &c.firmware_by_model {
            let mut versions: Vec<(String, i64, bool)> = m
                .versions
                .iter()
                .map(|v| (v.label.clone(), v.count, false))
                .collect();
            if m.other_versions > 0 {
                versions.push(("other versions".into(), m.other_versions, true));
            }
            for (i, (v, n, other)) in versions.iter().enumerate() {
                let shown = if *other {
                    v.clone()
                } else if v.is_empty() {
                    "not recorded".into()
                } else {
                    v.clone()
                };
                bars.push(Bar {
                    data: format!(
                        "data-model=\"{}\" data-firmware=\"{}\" data-count=\"{n}\"",
                        esc(&m.model),
                        esc(if *other { "" } else { v })
                    ),
                    label: if i == 0 {
                        format!("{} · {shown}", none(&m.model))
                    } else {
                        shown.clone()
                    },
                    value: *n as f64,
                    text: count_text(*n),
                    color: if v.is_empty() || *other { GREY } else { GREEN },
                    title: format!("{} {shown}: {n} device(s)", none(&m.model)),
                });
                scale.push(m.devices as f64);
            }
        }
        rows(h, "Firmware versions per model", &bars, &|i| scale[i]);
    }
    h.push_str("</figure></section>\n");

    // Warranty by quarter.
    let w = &c.warranty_by_quarter;
    let w_total = w.ended + w.later + w.quarters.iter().map(|q| q.count).sum::<i64>();
    figure_open(
        h,
        "warranty-by-quarter",
        "Warranties ending per quarter",
        "in-service devices with a warranty_until date",
        w_total == 0,
        &format!(" data-ended=\"{}\" data-later=\"{}\"", w.ended, w.later),
    );
    if w_total == 0 {
        no_data(h, "no in-service device has a warranty_until date");
    } else {
        let bars = timeline_bars(
            "quarter",
            ("ended", w.ended),
            &w.quarters,
            w.later,
            "warranty end(s)",
            true,
        );
        columns(h, "Warranties ending per quarter", &bars);
    }
    h.push_str("</figure></section>\n");

    cost_chart(h, "cost-by-site", "Cost per site", "site", &c.cost_by_site);
    cost_chart(
        h,
        "cost-by-batch",
        "Cost per batch",
        "batch",
        &c.cost_by_batch,
    );

    // Age.
    let a = &c.age;
    let a_total: i64 = a.buckets.iter().map(|b| b.count).sum();
    figure_open(
        h,
        "age-distribution",
        "Age of the fleet",
        "in-service devices, years since purchase_date (else since registration)",
        a_total == 0,
        &format!(
            " data-from-purchase-date=\"{}\" data-from-created-at=\"{}\"",
            a.from_purchase_date, a.from_created_at
        ),
    );
    if a_total == 0 {
        no_data(h, "no device in service");
    } else {
        let bars: Vec<Bar> = a
            .buckets
            .iter()
            .map(|b| Bar {
                data: format!("data-age=\"{}\" data-count=\"{}\"", esc(&b.label), b.count),
                label: format!("{} years", b.label),
                value: b.count as f64,
                text: count_text(b.count),
                color: BLUE,
                title: format!("{} years: {} device(s)", b.label, b.count),
            })
            .collect();
        columns(h, "Age of the fleet", &bars);
        let _ = writeln!(
            h,
            "<figcaption class=\"muted\" style=\"margin-top:6px\">{} dated by purchase_date, {} by the day they were registered.</figcaption>",
            a.from_purchase_date, a.from_created_at
        );
    }
    h.push_str("</figure></section>\n");
}

fn cost_chart(h: &mut String, id: &str, title: &str, what: &str, list: &[CostRow]) {
    figure_open(
        h,
        id,
        title,
        "purchase cost of every device with one, per currency (currencies are not converted)",
        list.is_empty(),
        "",
    );
    if list.is_empty() {
        no_data(h, "no device has a cost");
    } else {
        let max_of = |cur: &str| {
            list.iter()
                .filter(|r| r.currency == cur)
                .filter_map(|r| Amount::parse(&r.total).ok())
                .map(Amount::as_f64)
                .fold(0.0, f64::max)
        };
        let bars: Vec<Bar> = list
            .iter()
            .map(|r| Bar {
                data: format!(
                    "data-{what}=\"{}\" data-currency=\"{}\" data-total=\"{}\" data-devices=\"{}\"",
                    esc(&r.group),
                    esc(&r.currency),
                    esc(&r.total),
                    r.devices
                ),
                label: format!("{} · {}", none(&r.group), r.currency),
                value: Amount::parse(&r.total).map_or(0.0, Amount::as_f64),
                text: format!("{} {}", r.total, r.currency),
                color: BLUE,
                title: format!(
                    "{}: {} {} over {} device(s)",
                    none(&r.group),
                    r.total,
                    r.currency,
                    r.devices
                ),
            })
            .collect();
        let scale: Vec<f64> = list.iter().map(|r| max_of(&r.currency)).collect();
        rows(h, title, &bars, &|i| scale[i]);
    }
    h.push_str("</figure></section>\n");
}

fn count_text(n: i64) -> String {
    if n == 0 {
        String::new()
    } else {
        n.to_string()
    }
}
