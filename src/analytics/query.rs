//! Report queries: the range, granularity and `topN` asked for, their parsing, and the checks
//! that turn a query into the range a report reads.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    ceil_div, truncate, DAY_MS, HOUR_MS, MAX_NAME_CHARS, MAX_RANGE_DAYS, MAX_TOP_N,
    MINUTES_PER_HOUR, MINUTE_MS,
};

/// Width of the buckets of a report's time series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One-hour buckets (the default).
    #[default]
    Hourly,
    /// One-day (24-hour) buckets.
    Daily,
}

impl Granularity {
    /// The wire name: `hourly` or `daily`.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hourly => "hourly",
            Granularity::Daily => "daily",
        }
    }

    /// The bucket length in milliseconds.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Granularity::Hourly => HOUR_MS,
            Granularity::Daily => DAY_MS,
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = AnalyticsError;

    /// Parses `hourly` or `daily` (ASCII case-insensitive).
    ///
    /// ```
    /// use paygate_mcp::Granularity;
    /// assert_eq!("daily".parse::<Granularity>().unwrap(), Granularity::Daily);
    /// assert!("weekly".parse::<Granularity>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("hourly") {
            Ok(Granularity::Hourly)
        } else if s.eq_ignore_ascii_case("daily") {
            Ok(Granularity::Daily)
        } else {
            Err(AnalyticsError::UnknownGranularity(
                truncate(s, MAX_NAME_CHARS).to_string(),
            ))
        }
    }
}

/// What a report covers.
///
/// ```
/// use paygate_mcp::{Granularity, ReportQuery};
/// let q = ReportQuery { granularity: Granularity::Daily, top_n: 5, ..ReportQuery::default() };
/// assert!(q.from.is_none() && q.to.is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReportQuery {
    /// Start of the range (inclusive); default `to` − 24 h.
    pub from: Option<DateTime<Utc>>,
    /// End of the range (exclusive); default now, read from the engine's clock.
    pub to: Option<DateTime<Utc>>,
    /// Bucket width of the time series (default hourly).
    pub granularity: Granularity,
    /// How many top consumers to return (default 10, at most [`MAX_TOP_N`]).
    pub top_n: usize,
}

impl Default for ReportQuery {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            granularity: Granularity::Hourly,
            top_n: 10,
        }
    }
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyticsError {
    /// `from` is after `to`.
    #[error("invalid range: from ({from}) is after to ({to})")]
    InvalidRange {
        /// The requested start.
        from: DateTime<Utc>,
        /// The requested end.
        to: DateTime<Utc>,
    },
    /// The range is longer than [`MAX_RANGE_DAYS`].
    #[error("range too long: {days} days requested, at most 400 days allowed")]
    RangeTooLong {
        /// The requested length in whole days, rounded up.
        days: i64,
    },
    /// `topN` is above [`MAX_TOP_N`].
    #[error("topN {top_n} is too large: at most 1000 allowed")]
    TopNTooLarge {
        /// The requested value.
        top_n: usize,
    },
    /// A granularity other than `hourly` or `daily`.
    #[error("unknown granularity {0:?}: expected \"hourly\" or \"daily\"")]
    UnknownGranularity(String),
}

/// The range of a checked query: its bounds, the minute range its exact figures read, and
/// the hour range its per-key figures read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    /// Start of the range.
    pub(super) from: DateTime<Utc>,
    /// End of the range.
    pub(super) to: DateTime<Utc>,
    /// `from` in milliseconds.
    pub(super) from_ms: i64,
    /// `to` in milliseconds.
    pub(super) to_ms: i64,
    /// `to_ms - from_ms`.
    pub(super) span_ms: i64,
    /// Minute range `[m_from, m_to)` of the report.
    pub(super) m_from: i64,
    /// See `m_from`.
    pub(super) m_to: i64,
    /// Hour range `[h_from, h_to)` of the per-key figures.
    pub(super) h_from: i64,
    /// See `h_from`.
    pub(super) h_to: i64,
}

impl ReportQuery {
    /// Checks the query against the limits and resolves its range, `now` giving a defaulted
    /// `to`.
    pub(super) fn resolve(
        &self,
        now: impl FnOnce() -> DateTime<Utc>,
    ) -> Result<Span, AnalyticsError> {
        let to = self.to.unwrap_or_else(now);
        let from = self.from.unwrap_or_else(|| {
            to.checked_sub_signed(chrono::TimeDelta::hours(24))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        });
        if from > to {
            return Err(AnalyticsError::InvalidRange { from, to });
        }
        let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
        let span_ms = to_ms - from_ms;
        if span_ms > MAX_RANGE_DAYS * DAY_MS {
            return Err(AnalyticsError::RangeTooLong {
                days: ceil_div(span_ms, DAY_MS),
            });
        }
        if self.top_n > MAX_TOP_N {
            return Err(AnalyticsError::TopNTooLarge { top_n: self.top_n });
        }

        // Minute range of the report, and the hour range used for per-key figures.
        let (m_from, m_to) = if span_ms == 0 {
            let m = from_ms.div_euclid(MINUTE_MS);
            (m, m)
        } else {
            // A defaulted `to` is "now": the current minute counts even when now falls exactly
            // on its first millisecond.
            let m_to = if self.to.is_none() {
                to_ms.div_euclid(MINUTE_MS) + 1
            } else {
                ceil_div(to_ms, MINUTE_MS)
            };
            (from_ms.div_euclid(MINUTE_MS), m_to)
        };
        let (h_from, h_to) = if m_from == m_to {
            (0, 0)
        } else {
            (
                m_from.div_euclid(MINUTES_PER_HOUR),
                ceil_div(m_to, MINUTES_PER_HOUR),
            )
        };
        Ok(Span {
            from,
            to,
            from_ms,
            to_ms,
            span_ms,
            m_from,
            m_to,
            h_from,
            h_to,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::analytics::test_support::{engine_at, ev, minutes, range, t};
    use crate::analytics::{AnalyticsError, Granularity, ReportQuery};
    use crate::clock::Clock;

    #[test]
    fn default_query_is_the_last_24_hours_by_the_clock() {
        let (clock, e) = engine_at("2026-03-02T12:34:56.789Z");
        e.record(&ev(clock.now() - minutes(1), "k1", "a", 1, true));
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.to, t("2026-03-02T12:34:56.789Z"));
        assert_eq!(r.from, t("2026-03-01T12:34:56.789Z"));
        assert_eq!(r.granularity, Granularity::Hourly);
        assert_eq!(r.time_series.len(), 24);
        assert_eq!(r.time_series[0].start, r.from);
        assert_eq!(r.time_series[23].end, r.to);
        assert_eq!(r.time_series[23].calls, 1);
        assert_eq!(r.summary.total_calls, 1);
        assert_eq!(r.top_consumers.len(), 1);
    }

    #[test]
    fn invalid_queries_are_refused() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let err = e
            .report(&range(
                "2026-03-02T00:00:00Z",
                "2026-03-01T00:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap_err();
        assert!(matches!(err, AnalyticsError::InvalidRange { .. }));
        assert!(err.to_string().contains("after"), "{err}");

        let long = range(
            "2024-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            Granularity::Daily,
        );
        assert!(matches!(
            e.report(&long),
            Err(AnalyticsError::RangeTooLong { days: 731 })
        ));
        let max = ReportQuery {
            from: Some(t("2025-01-01T00:00:00Z")),
            to: Some(t("2025-01-01T00:00:00Z") + chrono::TimeDelta::days(400)),
            ..ReportQuery::default()
        };
        assert_eq!(e.report(&max).unwrap().time_series.len(), 400 * 24);

        let q = ReportQuery {
            top_n: 1001,
            ..ReportQuery::default()
        };
        assert_eq!(
            e.report(&q),
            Err(AnalyticsError::TopNTooLarge { top_n: 1001 })
        );
        let q = ReportQuery {
            top_n: 1000,
            ..ReportQuery::default()
        };
        assert!(e.report(&q).is_ok());

        // An empty range is a valid, empty report.
        e.record(&ev(t("2026-03-01T10:00:10Z"), "k1", "a", 1, true));
        let at = t("2026-03-01T10:00:30Z");
        let q = ReportQuery {
            from: Some(at),
            to: Some(at),
            ..ReportQuery::default()
        };
        let r = e.report(&q).unwrap();
        assert!(r.time_series.is_empty());
        assert_eq!(r.summary.total_calls, 0);
        assert_eq!(r.summary.unique_keys, 0);
    }

    #[test]
    fn query_and_granularity_parse() {
        assert_eq!("Hourly".parse::<Granularity>(), Ok(Granularity::Hourly));
        assert!(matches!(
            "weekly".parse::<Granularity>(),
            Err(AnalyticsError::UnknownGranularity(_))
        ));
        let q: ReportQuery = serde_json::from_str(
            r#"{"from": "2026-03-01T00:00:00Z", "granularity": "daily", "topN": 3}"#,
        )
        .unwrap();
        assert_eq!(q.from, Some(t("2026-03-01T00:00:00Z")));
        assert_eq!(q.to, None);
        assert_eq!(q.granularity, Granularity::Daily);
        assert_eq!(q.top_n, 3);
        let d: ReportQuery = serde_json::from_str("{}").unwrap();
        assert_eq!(d, ReportQuery::default());
        assert_eq!(d.top_n, 10);
    }
}
