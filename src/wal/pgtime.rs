//! PostgreSQL's server timestamps as WAL records carry them: `TimestampTz` (microseconds since
//! 2000-01-01 00:00:00 UTC, in commit and abort records) and `pg_time_t` (seconds since the Unix epoch, in
//! checkpoint records), held as one type and shown in RFC 3339 (UTC).

use crate::calendar::civil_from_days;
use std::fmt;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// A point in time as PostgreSQL's `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// A `pg_time_t` (seconds since the Unix epoch); `None` if it does not fit a `TimestampTz`.
    pub fn from_unix_seconds(secs: i64) -> Option<PgTimestamp> {
        secs.checked_mul(US_PER_SEC)?.checked_sub(PG_EPOCH_OFFSET_US).map(PgTimestamp)
    }

    /// Microseconds since the Unix epoch; `None` on overflow (a timestamp near `i64::MAX`).
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(PG_EPOCH_OFFSET_US)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`; a timestamp outside the years 0–9999 (never written by a sane clock) is
/// shown as its raw microsecond count.
impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 0000-01-01 and 10000-01-01 as microseconds since the Unix epoch.
        const MIN: i64 = -62_167_219_200 * US_PER_SEC;
        const MAX: i64 = 253_402_300_800 * US_PER_SEC;
        let Some(us) = self.unix_micros().filter(|us| (MIN..MAX).contains(us)) else {
            return write!(f, "timestamp {} (microseconds since 2000-01-01)", self.0);
        };
        let (days, in_day) = (us.div_euclid(US_PER_DAY), us.rem_euclid(US_PER_DAY));
        let (y, m, d) = civil_from_days(days);
        let secs = in_day / US_PER_SEC;
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60,
            in_day % US_PER_SEC
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shows_utc_like_postgres_values() {
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
        // SELECT extract(epoch FROM '2026-03-04 05:06:07.891011+00'::timestamptz) → 1772600767.891011
        let t = PgTimestamp::from_unix_seconds(1_772_600_767).unwrap();
        assert_eq!(PgTimestamp(t.0 + 891_011).to_string(), "2026-03-04T05:06:07.891011Z");
        assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        assert_eq!(PgTimestamp::from_unix_seconds(0).unwrap().to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            PgTimestamp::from_unix_seconds(951_782_400).unwrap().to_string(),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            PgTimestamp(i64::MAX).to_string(),
            format!("timestamp {} (microseconds since 2000-01-01)", i64::MAX)
        );
        assert_eq!(PgTimestamp::from_unix_seconds(i64::MAX), None);
        assert_eq!(PgTimestamp(5).unix_micros(), Some(PG_EPOCH_OFFSET_US + 5));
    }

    proptest! {
        #[test]
        fn display_never_panics_and_orders_like_the_value(a: i64, b: i64) {
            let (sa, sb) = (PgTimestamp(a).to_string(), PgTimestamp(b).to_string());
            if sa.ends_with('Z') && sb.ends_with('Z') {
                prop_assert_eq!(a.cmp(&b), sa.cmp(&sb));
            }
        }
    }
}
