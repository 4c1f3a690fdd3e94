//! Read-only queries behind the fleet report's asset charts: certificate expiry by
//! year, firmware per model, warranty dates, cost groups and device ages. Each
//! aggregates in SQL (memory stays flat on large fleets) except the cost sums, which
//! are exact decimals and so are summed by the caller from (group, currency, cost,
//! count) rows.

use rusqlite::params;

use super::audit::{NOT_RENEWED, OUT_OF_SERVICE};
use super::conn::{Params, Row};
use super::Reader;
use crate::error::Result;

fn rows<T>(
    db: &Reader,
    sql: &str,
    p: impl Params,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut st = db.conn().prepare(sql)?;
    let out = st.query_map(p, map)?;
    Ok(out.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Active, not renewed certificates of in-service devices per expiry year (UTC) from
/// `now` on, and how many have already expired.
pub fn expiry_by_year(db: &Reader, now: i64) -> Result<(Vec<(String, i64)>, i64)> {
    let all = rows(
        db,
        &format!(
            "SELECT CASE WHEN c.not_after < ?1 THEN 'expired'
                         ELSE strftime('%Y', c.not_after, 'unixepoch') END AS y, count(*)
             FROM certificates c JOIN devices d ON d.id = c.device_id
             WHERE c.status = 'active' AND d.status NOT IN {OUT_OF_SERVICE} AND {NOT_RENEWED}
             GROUP BY y ORDER BY y"
        ),
        [now],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )?;
    let expired = all.iter().find(|(y, _)| y == "expired").map_or(0, |r| r.1);
    Ok((
        all.into_iter().filter(|(y, _)| y != "expired").collect(),
        expired,
    ))
}

/// In-service devices per (model, firmware), models by size then name; `''` for none.
pub fn firmware_by_model(db: &Reader) -> Result<Vec<(String, String, i64)>> {
    rows(
        db,
        &format!(
            "SELECT coalesce(model, ''), coalesce(firmware, ''), count(*) FROM devices
             WHERE status NOT IN {OUT_OF_SERVICE}
             GROUP BY 1, 2
             ORDER BY sum(count(*)) OVER (PARTITION BY coalesce(model, '')) DESC, 1, 3 DESC, 2"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// In-service devices per warranty end date (YYYY-MM-DD), dates in order.
pub fn warranty_dates(db: &Reader) -> Result<Vec<(String, i64)>> {
    rows(
        db,
        &format!(
            "SELECT warranty_until, count(*) FROM devices
             WHERE warranty_until IS NOT NULL AND status NOT IN {OUT_OF_SERVICE}
             GROUP BY 1 ORDER BY 1"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Devices with a cost per (group, currency, cost) with their count: `by` is `site` or
/// `batch` (`''` for none). All devices count: what was spent stays spent.
pub fn cost_rows(db: &Reader, by: CostGroup) -> Result<Vec<(String, String, String, i64)>> {
    let col = by.column();
    rows(
        db,
        &format!(
            "SELECT coalesce({col}, ''), currency, cost, count(*) FROM devices
             WHERE cost IS NOT NULL AND currency IS NOT NULL
             GROUP BY 1, 2, 3 ORDER BY 1, 2"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
}

/// What cost is summed over.
#[derive(Debug, Clone, Copy)]
pub enum CostGroup {
    Site,
    Batch,
}

impl CostGroup {
    pub fn column(self) -> &'static str {
        match self {
            CostGroup::Site => "site",
            CostGroup::Batch => "batch",
        }
    }
}

/// In-service devices per day they entered the fleet: the purchase date, else the day
/// the registry created them; with whether the day is a purchase date.
pub fn age_dates(db: &Reader) -> Result<Vec<(String, bool, i64)>> {
    rows(
        db,
        &format!(
            "SELECT coalesce(CAST(purchase_date AS TEXT), substr(created_at, 1, 10)), purchase_date IS NOT NULL, count(*)
             FROM devices WHERE status NOT IN {OUT_OF_SERVICE}
             GROUP BY 1, 2 ORDER BY 1"
        ),
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}
