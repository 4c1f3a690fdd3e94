//! Asset data of a device: calendar dates, an exact cost with its ISO 4217 currency,
//! and how critical the device is. Values are stored as the canonical text these
//! functions return (a date as `YYYY-MM-DD`, a cost as a plain decimal), so the
//! registry holds exactly what was entered and sums are done in integers.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::fields::excerpt;

/// Fraction digits a cost may have (enough for every ISO 4217 minor unit, 0-4).
pub const COST_SCALE: u32 = 4;
/// Integer digits a cost may have (a trillion in any currency is a typing mistake).
pub const COST_INT_DIGITS: usize = 12;

/// A calendar date `YYYY-MM-DD` (years 1900-9999): validated, stored as written.
pub fn check_date(v: &str) -> Result<Cow<'_, str>, String> {
    parse_date(v).map(|_| Cow::Borrowed(v))
}

/// The date a valid `YYYY-MM-DD` names.
pub fn parse_date(v: &str) -> Result<time::Date, String> {
    let b = v.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        let hint = if v.contains('/') || v.contains('.') {
            " (day and month order is ambiguous in that notation)"
        } else {
            ""
        };
        return Err(format!(
            "{} is not a date; write YYYY-MM-DD{hint}",
            excerpt(v)
        ));
    }
    let num = |r: std::ops::Range<usize>| v[r].parse::<u32>().expect("digits");
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    if !(1900..=9999).contains(&y) {
        return Err(format!("{} is not a date from 1900 to 9999", excerpt(v)));
    }
    let month = u8::try_from(m)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| format!("{} is not a date (month {m})", excerpt(v)))?;
    time::Date::from_calendar_date(y as i32, month, d as u8)
        .map_err(|_| format!("{} is not a date (no day {d} in that month)", excerpt(v)))
}

/// Unix seconds of midnight UTC on a stored date (`None` if it is not one).
pub fn date_unix(v: &str) -> Option<i64> {
    parse_date(v)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// A non-negative amount with at most `COST_SCALE` decimals, held exactly as
/// ten-thousandths (`12.5` is 125000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(pub i128);

impl Amount {
    /// Parses a canonical or user-written cost (see [`normalise_cost`]).
    pub fn parse(v: &str) -> Result<Amount, String> {
        let n = normalise_cost(v)?;
        let (int, frac) = n.split_once('.').unwrap_or((&n, ""));
        let mut x: i128 = int
            .parse()
            .map_err(|_| format!("{} is not a cost", excerpt(v)))?;
        for i in 0..COST_SCALE as usize {
            x = x * 10 + frac.as_bytes().get(i).map_or(0, |c| i128::from(c - b'0'));
        }
        Ok(Amount(x))
    }

    pub fn checked_add(self, o: Amount) -> Option<Amount> {
        self.0.checked_add(o.0).map(Amount)
    }

    /// Decimals as written in `v` (a canonical cost): `12.50` has 2.
    pub fn decimals_of(v: &str) -> usize {
        v.split_once('.').map_or(0, |(_, f)| f.len())
    }

    /// Plain decimal with at least `min` decimals (a sum shown as its parts were
    /// written: 12.50 + 3.00 is 15.50, not 15.5).
    pub fn with_decimals(self, min: usize) -> String {
        let s = self.to_string();
        let have = Amount::decimals_of(&s);
        if have >= min {
            return s;
        }
        let mut out = s;
        if have == 0 {
            out.push('.');
        }
        out.extend(std::iter::repeat_n('0', min - have));
        out
    }

    /// As a number for charts and JSON (exact up to 2^53 ten-thousandths).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 10f64.powi(COST_SCALE as i32)
    }
}

impl fmt::Display for Amount {
    /// Plain decimal with the trailing zeros of the fraction dropped (`12.5`, `3`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = 10i128.pow(COST_SCALE);
        let (int, frac) = (self.0 / s, self.0 % s);
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:0width$}", width = COST_SCALE as usize);
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

/// A cost: digits with an optional `.` and up to four decimals, not negative. Leading
/// zeros are dropped and `.5` becomes `0.5`; the decimals are kept as written (12.50
/// stays 12.50). A decimal comma, thousands separators, signs and exponents are
/// refused with a hint rather than guessed at.
pub fn normalise_cost(v: &str) -> Result<Cow<'_, str>, String> {
    if v.starts_with('-') {
        return Err(format!("{} is negative; a cost is 0 or more", excerpt(v)));
    }
    let (int, frac) = match v.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (v, None),
    };
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if !digits(int)
        || !frac.is_none_or(digits)
        || (int.is_empty() && frac.is_none_or(str::is_empty))
    {
        let hint = if v.contains(',') {
            "; write a plain number with a point for decimals and no thousands separators (1234.50)"
        } else if is_exponent(v) {
            "; a spreadsheet wrote it as an exponent: format the column as a number with decimals"
        } else if v.bytes().any(|c| c.is_ascii_alphabetic()) || v.contains(' ') {
            "; put the currency in the currency column"
        } else {
            ""
        };
        return Err(format!("{} is not a cost{hint}", excerpt(v)));
    }
    if let Some(f) = frac {
        if f.is_empty() || f.len() > COST_SCALE as usize {
            return Err(format!(
                "{} has {} decimals; a cost has 1 to {COST_SCALE} after the point",
                excerpt(v),
                f.len()
            ));
        }
    }
    let trimmed = int.trim_start_matches('0');
    if trimmed.len() > COST_INT_DIGITS {
        return Err(format!(
            "{} is too large for a cost (more than {COST_INT_DIGITS} digits before the point)",
            excerpt(v)
        ));
    }
    let int_out = if trimmed.is_empty() { "0" } else { trimmed };
    if int_out.len() == int.len() {
        return Ok(Cow::Borrowed(v));
    }
    Ok(Cow::Owned(match frac {
        Some(f) => format!("{int_out}.{f}"),
        None => int_out.to_string(),
    }))
}

/// `1.2E+3`, `5e-2`: a number in exponent notation.
fn is_exponent(v: &str) -> bool {
    let Some((m, e)) = v.split_once(['e', 'E']) else {
        return false;
    };
    let e = e.strip_prefix(['+', '-']).unwrap_or(e);
    let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (i, f) = m.split_once('.').unwrap_or((m, "0"));
    num(i) && num(f) && num(e)
}

/// Active ISO 4217 alphabetic codes of money (2024 list; funds, precious metals and
/// the testing codes are left out: an asset's cost is money), sorted.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// An ISO 4217 currency code, any case; stored upper case.
pub fn normalise_currency(v: &str) -> Result<Cow<'_, str>, String> {
    if v.len() != 3 || !v.bytes().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{} is not a currency; give its ISO 4217 code (EUR, USD, JPY)",
            excerpt(v)
        ));
    }
    let up = v.to_ascii_uppercase();
    if CURRENCIES.binary_search(&up.as_str()).is_err() {
        return Err(format!("{} is not an ISO 4217 currency code", excerpt(v)));
    }
    Ok(if up == v {
        Cow::Borrowed(v)
    } else {
        Cow::Owned(up)
    })
}

/// How much a device matters: decides how early `cert-expiring` flags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Criticality {
    Low,
    Medium,
    High,
    Critical,
}

impl Criticality {
    pub const ALL: [Criticality; 4] = [
        Criticality::Low,
        Criticality::Medium,
        Criticality::High,
        Criticality::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Low => "low",
            Criticality::Medium => "medium",
            Criticality::High => "high",
            Criticality::Critical => "critical",
        }
    }

    /// How many times the `--expiring-within` window `cert-expiring` uses for this
    /// device (documented in cradle-audit(7)); a device without one counts as medium.
    pub fn expiry_factor(c: Option<Criticality>) -> i64 {
        match c {
            None | Some(Criticality::Low | Criticality::Medium) => 1,
            Some(Criticality::High) => 2,
            Some(Criticality::Critical) => 4,
        }
    }
}

impl FromStr for Criticality {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        Criticality::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(v.trim()))
            .ok_or_else(|| {
                format!(
                    "{} is not a criticality (low, medium, high, critical)",
                    excerpt(v)
                )
            })
    }
}

pub fn normalise_criticality(v: &str) -> Result<Cow<'_, str>, String> {
    let c: Criticality = v.parse()?;
    Ok(if c.as_str() == v {
        Cow::Borrowed(v)
    } else {
        Cow::Owned(c.as_str().to_string())
    })
}

/// The rule across columns: a cost means nothing without its currency.
pub fn cost_needs_currency(cost: Option<&str>, currency: Option<&str>) -> Result<(), String> {
    match (cost, currency) {
        (Some(c), None) => Err(format!(
            "column 'cost': {} has no currency; give the currency column (ISO 4217, e.g. EUR) too",
            excerpt(c)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_sorted_for_the_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(normalise_currency("eur").unwrap(), "EUR");
        assert!(normalise_currency("EUR").is_ok());
        assert!(normalise_currency("XYZ").unwrap_err().contains("ISO 4217"));
        assert!(normalise_currency("EURO").is_err());
        assert!(normalise_currency("€").is_err());
    }

    #[test]
    fn dates_are_real_calendar_days() {
        assert!(check_date("2024-02-29").is_ok());
        assert!(check_date("2023-02-29").unwrap_err().contains("no day 29"));
        assert!(check_date("2023-13-01").unwrap_err().contains("month 13"));
        assert!(check_date("01/02/2023").unwrap_err().contains("ambiguous"));
        assert!(check_date("2023-1-01").is_err());
        assert!(check_date("1899-12-31").is_err());
        assert_eq!(date_unix("1970-01-02"), Some(86_400));
    }

    #[test]
    fn costs_are_exact_and_not_negative() {
        assert_eq!(normalise_cost("12.50").unwrap(), "12.50");
        assert_eq!(normalise_cost("0012.50").unwrap(), "12.50");
        assert_eq!(normalise_cost(".5").unwrap(), "0.5");
        assert_eq!(normalise_cost("000").unwrap(), "0");
        assert!(normalise_cost("-1").unwrap_err().contains("negative"));
        assert!(normalise_cost("1,5").unwrap_err().contains("point"));
        assert!(normalise_cost("1.2E+3").unwrap_err().contains("exponent"));
        assert!(normalise_cost("12 EUR")
            .unwrap_err()
            .contains("currency column"));
        assert!(normalise_cost("1.23456").unwrap_err().contains("decimals"));
        assert!(normalise_cost("1.").is_err());
        assert!(normalise_cost(".").is_err());
        assert!(normalise_cost("1234567890123").is_err());
        // 0.1 + 0.2 is exactly 0.3 here.
        let s = Amount::parse("0.1")
            .unwrap()
            .checked_add(Amount::parse("0.2").unwrap())
            .unwrap();
        assert_eq!(s, Amount::parse("0.3").unwrap());
        assert_eq!(s.to_string(), "0.3");
        assert_eq!(
            Amount::parse("999999999999.9999").unwrap().to_string(),
            "999999999999.9999"
        );
        assert_eq!(Amount::parse("12.50").unwrap().to_string(), "12.5");
        assert_eq!(Amount::parse("12.50").unwrap().with_decimals(2), "12.50");
        assert_eq!(Amount::parse("15").unwrap().with_decimals(2), "15.00");
        assert_eq!(Amount::parse("1.125").unwrap().with_decimals(2), "1.125");
        assert_eq!(Amount::parse("7").unwrap().with_decimals(0), "7");
    }

    #[test]
    fn criticality_and_its_factor() {
        assert_eq!(normalise_criticality("HIGH").unwrap(), "high");
        assert!(normalise_criticality("urgent").is_err());
        assert_eq!(Criticality::expiry_factor(None), 1);
        assert_eq!(Criticality::expiry_factor(Some(Criticality::Critical)), 4);
    }
}
