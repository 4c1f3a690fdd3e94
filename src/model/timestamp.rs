//! The registry's one timestamp type: a UTC instant at whole seconds, written as
//! RFC 3339 with `Z` (`2026-03-04T03:06:07Z`). Text of this shape sorts in time order,
//! which the registry's `WHERE at >= ?` filters rely on.

use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(OffsetDateTime::now_utc())
    }

    /// Parses RFC 3339 with any offset (normalised to UTC, sub-seconds dropped).
    pub fn parse(s: &str) -> Option<Timestamp> {
        OffsetDateTime::parse(s, &Rfc3339).ok().map(Timestamp::from)
    }

    /// What a user may type for a point in time: RFC 3339 or a bare date (midnight UTC).
    pub fn parse_user(s: &str) -> Option<Timestamp> {
        let t = s.trim();
        Timestamp::parse(t).or_else(|| {
            time::Date::parse(t, format_description!("[year]-[month]-[day]"))
                .ok()
                .map(|d| Timestamp::from(d.midnight().assume_utc()))
        })
    }

    pub fn as_offset(self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Timestamp {
        let t = t.to_offset(UtcOffset::UTC);
        Timestamp(t.replace_nanosecond(0).unwrap_or(t))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const FORMAT: &[time::format_description::FormatItem<'_>] =
            format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        // Years 0-9999 format; outside that the four-digit registry form cannot hold it.
        match self.0.format(FORMAT) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Timestamp, String> {
        Timestamp::parse(s).ok_or_else(|| format!("'{s}' is not an RFC 3339 time"))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_whole_seconds_with_z_and_round_trips() {
        let t = Timestamp::parse("2026-03-04T04:06:07.9+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-03-04T03:06:07Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        assert_eq!(
            Timestamp::parse("0999-12-31T23:59:59Z")
                .unwrap()
                .to_string(),
            "0999-12-31T23:59:59Z"
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2026-03-04T03:06:07Z\""
        );
    }

    #[test]
    fn users_may_give_a_bare_date_but_not_nonsense() {
        assert_eq!(
            Timestamp::parse_user(" 2026-11-01 ").unwrap().to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert!(Timestamp::parse_user("yesterday").is_none());
        assert!(Timestamp::parse("2026-11-01").is_none());
        assert!("2026-13-01T00:00:00Z".parse::<Timestamp>().is_err());
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::parse("2026-01-02T00:00:00Z").unwrap();
        let b = Timestamp::parse("2026-01-01T23:00:00-02:00").unwrap();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }
}
