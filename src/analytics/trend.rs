//! The trend of a report: its range against the period of equal length just before it.

use serde::{Deserialize, Serialize};

use super::aggregates::{Counters, MinuteBucket, Rollup};
use super::query::Span;
use super::reader::{Reader, Visitor};
use super::segments::{minute_segments, Segment};

/// Calls, credits and denials of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodTotals {
    /// Usage events.
    pub calls: u64,
    /// Credits charged.
    pub credits: u64,
    /// Calls denied.
    pub denied: u64,
}

/// Percentage change from the previous period, rounded to one decimal; `None` (JSON `null`)
/// when the previous value is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrendChange {
    /// Change in calls, percent.
    pub calls: Option<f64>,
    /// Change in credits, percent.
    pub credits: Option<f64>,
    /// Change in denials, percent.
    pub denied: Option<f64>,
}

/// The report's range against the period of equal length immediately before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrendComparison {
    /// The report's range.
    pub current: PeriodTotals,
    /// The period of equal length ending at `from`.
    pub previous: PeriodTotals,
    /// Percentage change from `previous` to `current`.
    pub change: TrendChange,
}

#[derive(Default)]
struct TotalsVisitor(Counters);

impl Visitor for TotalsVisitor {
    fn minute(&mut self, m: &MinuteBucket) -> usize {
        self.0.add(&m.totals);
        1
    }
    fn rollup(&mut self, r: &Rollup) -> usize {
        self.0.add(&r.totals);
        1
    }
}

/// The totals of the period of equal length ending where the minutes of `span` start.
pub(super) fn previous_totals(
    reader: &mut Reader<'_>,
    span: &Span,
    segs: &mut Vec<Segment>,
) -> Counters {
    let Span { m_from, m_to, .. } = *span;
    // The previous period.
    segs.clear();
    minute_segments(m_from - (m_to - m_from), m_from, segs);
    let mut previous = TotalsVisitor::default();
    reader.walk(segs, &mut previous);
    previous.0
}

/// The `current` period's totals against the `previous` period's.
pub(super) fn compare(current: Counters, previous: Counters) -> TrendComparison {
    let period = |c: Counters| PeriodTotals {
        calls: c.calls,
        credits: c.credits,
        denied: c.denied(),
    };
    TrendComparison {
        current: period(current),
        previous: period(previous),
        change: TrendChange {
            calls: pct_change(previous.calls, current.calls),
            credits: pct_change(previous.credits, current.credits),
            denied: pct_change(previous.denied(), current.denied()),
        },
    }
}

/// Percentage change from `previous` to `current`, rounded to one decimal; `None` when
/// `previous` is 0.
fn pct_change(previous: u64, current: u64) -> Option<f64> {
    if previous == 0 {
        return None;
    }
    let pct = (current as f64 - previous as f64) / previous as f64 * 100.0;
    Some((pct * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use crate::analytics::test_support::{engine_at, ev, range, t};
    use crate::analytics::{Granularity, PeriodTotals, ReportQuery, TrendChange};

    #[test]
    fn trend_null_when_previous_is_zero_and_percent_otherwise() {
        let (_, e) = engine_at("2026-03-03T00:00:00Z");
        let q = range(
            "2026-03-02T00:00:00Z",
            "2026-03-03T00:00:00Z",
            Granularity::Hourly,
        );
        for _ in 0..10 {
            e.record(&ev(t("2026-03-02T05:00:00Z"), "k1", "a", 1, true));
        }
        let r = e.report(&q).unwrap();
        assert_eq!(r.trend.previous, PeriodTotals::default());
        assert_eq!(r.trend.change, TrendChange::default());
        let json = serde_json::to_value(r.trend).unwrap();
        assert_eq!(json["change"]["calls"], serde_json::Value::Null);

        // Previous day: 10 calls, 3 credits, 4 denied. Current: 15 calls, 10 credits, 3 denied.
        let prev = t("2026-03-01T23:59:00Z");
        for i in 0..10 {
            let allowed = i >= 4;
            let credits = u64::from((4..7).contains(&i));
            e.record(&ev(prev, "k1", "a", credits, allowed));
        }
        let cur = t("2026-03-02T06:00:00Z");
        for i in 0..5 {
            e.record(&ev(cur, "k1", "a", 0, i >= 3));
        }
        let r = e.report(&q).unwrap();
        assert_eq!(r.trend.current.calls, 15);
        assert_eq!(r.trend.current.credits, 10);
        assert_eq!(r.trend.current.denied, 3);
        assert_eq!(r.trend.previous.calls, 10);
        assert_eq!(r.trend.previous.credits, 3);
        assert_eq!(r.trend.previous.denied, 4);
        assert_eq!(r.trend.change.calls, Some(50.0));
        assert_eq!(r.trend.change.credits, Some(233.3)); // 3 → 10
        assert_eq!(r.trend.change.denied, Some(-25.0));
    }

    #[test]
    fn trend_ten_to_fifteen_is_fifty_percent() {
        let (_, e) = engine_at("2026-03-03T00:00:00Z");
        for _ in 0..10 {
            e.record(&ev(t("2026-03-01T12:00:00Z"), "k1", "a", 1, true));
        }
        for _ in 0..15 {
            e.record(&ev(t("2026-03-02T12:00:00Z"), "k1", "a", 1, true));
        }
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.trend.previous.calls, 10);
        assert_eq!(r.trend.current.calls, 15);
        assert_eq!(r.trend.change.calls, Some(50.0));
        assert_eq!(r.trend.change.credits, Some(50.0));
        assert_eq!(r.trend.change.denied, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["trend"]["change"]["calls"], 50.0);
    }
}
