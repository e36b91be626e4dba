//! The time series of a report: its buckets, and the one pass over the aggregates that fills
//! them, the range's totals and the per-tool counters together.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::aggregates::{Counters, MinuteBucket, Rollup};
use super::query::{Granularity, Span};
use super::reader::{Reader, Visitor};
use super::segments::{minute_segments, Segment};
use super::tools::ToolsVisitor;
use super::{ceil_div, MINUTE_MS};
use crate::clock::ms_to_datetime;

/// One bucket of a report's time series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeBucket {
    /// Bucket start (RFC 3339).
    pub start: DateTime<Utc>,
    /// Bucket end (RFC 3339); the last bucket ends at the report's `to`.
    pub end: DateTime<Utc>,
    /// Usage events in the bucket.
    pub calls: u64,
    /// Calls let through.
    pub allowed: u64,
    /// Calls denied.
    pub denied: u64,
    /// Credits charged.
    pub credits: u64,
}

/// One time-series bucket's totals, and the report's per-tool counters, in one pass.
struct SeriesVisitor<'a> {
    totals: Counters,
    tools: &'a mut ToolsVisitor,
}

impl Visitor for SeriesVisitor<'_> {
    fn minute(&mut self, m: &MinuteBucket) -> usize {
        self.totals.add(&m.totals);
        1 + self.tools.minute(m)
    }
    fn rollup(&mut self, r: &Rollup) -> usize {
        self.totals.add(&r.totals);
        1 + self.tools.rollup(r)
    }
}

/// The time series of `span` in buckets of `granularity`, and the totals of the whole range.
/// Each bucket's per-tool counters go to `tools` in the same pass, so the series, the totals
/// and the tools agree with each other even when events are folded in meanwhile.
pub(super) fn time_series(
    reader: &mut Reader<'_>,
    span: &Span,
    granularity: Granularity,
    tools: &mut ToolsVisitor,
    segs: &mut Vec<Segment>,
) -> (Vec<TimeBucket>, Counters) {
    let Span {
        from_ms,
        to_ms,
        span_ms,
        m_from,
        m_to,
        ..
    } = *span;
    let bucket_ms = granularity.bucket_ms();
    let n_buckets = ceil_div(span_ms, bucket_ms);
    let mut time_series = Vec::with_capacity(usize::try_from(n_buckets).unwrap_or(0));
    let mut current = Counters::default();
    for i in 0..n_buckets {
        let start = from_ms + i * bucket_ms;
        let end = (start + bucket_ms).min(to_ms);
        let a = if i == 0 {
            m_from
        } else {
            start.div_euclid(MINUTE_MS)
        };
        let b = if i + 1 == n_buckets {
            m_to
        } else {
            end.div_euclid(MINUTE_MS)
        };
        segs.clear();
        minute_segments(a, b, segs);
        let mut v = SeriesVisitor {
            totals: Counters::default(),
            tools,
        };
        reader.walk(segs, &mut v);
        let t = v.totals;
        current.add(&t);
        time_series.push(TimeBucket {
            start: ms_to_datetime(start),
            end: ms_to_datetime(end),
            calls: t.calls,
            allowed: t.allowed,
            denied: t.denied(),
            credits: t.credits,
        });
    }
    (time_series, current)
}

#[cfg(test)]
mod tests {
    use crate::analytics::test_support::{engine_at, ev, minutes, range, t};
    use crate::analytics::Granularity;

    #[test]
    fn buckets_are_contiguous_start_at_from_and_are_cut_at_to() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let r = e
            .report(&range(
                "2026-03-01T00:17:42.500Z",
                "2026-03-01T05:30:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.time_series.len(), 6);
        assert_eq!(r.time_series[0].start, t("2026-03-01T00:17:42.500Z"));
        for w in r.time_series.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for b in &r.time_series[..5] {
            assert_eq!(b.end - b.start, chrono::TimeDelta::hours(1));
        }
        assert_eq!(r.time_series[5].start, t("2026-03-01T05:17:42.500Z"));
        assert_eq!(r.time_series[5].end, t("2026-03-01T05:30:00Z"));

        // An exact multiple of the bucket length gives no stub bucket.
        let r = e
            .report(&range(
                "2026-03-01T00:00:00Z",
                "2026-03-01T03:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.time_series.len(), 3);
        assert_eq!(r.time_series[2].end, t("2026-03-01T03:00:00Z"));
    }

    #[test]
    fn unaligned_from_is_exact_to_the_minute_for_totals() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let start = t("2026-03-01T10:00:00Z");
        // One event per minute, 10:00 .. 11:59, each worth 2 credits; every 4th denied.
        for i in 0..120 {
            let allowed = i % 4 != 0;
            let credits = if allowed { 2 } else { 0 };
            e.record(&ev(start + minutes(i), "k1", "a", credits, allowed));
        }
        let r = e
            .report(&range(
                "2026-03-01T10:17:00Z",
                "2026-03-01T11:43:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        // Minutes 17..=102 of the run: 86 events.
        assert_eq!(r.summary.total_calls, 86);
        let denied = (17..103).filter(|i| i % 4 == 0).count() as u64;
        assert_eq!(r.summary.total_denied, denied);
        assert_eq!(r.summary.total_credits, (86 - denied) * 2);
        assert_eq!(r.time_series.len(), 2);
        assert_eq!(r.time_series[0].calls, 60);
        assert_eq!(r.time_series[1].calls, 26);
        assert_eq!(r.time_series[0].allowed + r.time_series[0].denied, 60);
        assert_eq!(r.tools[0].calls, 86);
        // Previous period: [08:51, 10:17) holds minutes 0..=16 of the run.
        assert_eq!(r.trend.previous.calls, 17);
        assert_eq!(r.trend.current.calls, 86);
    }

    #[test]
    fn daily_granularity_aligned_and_unaligned() {
        let (_, e) = engine_at("2026-03-10T00:00:00Z");
        let day0 = t("2026-03-01T00:00:00Z");
        for d in 0..3 {
            for h in 0..24 {
                for _ in 0..=d {
                    let ts = day0 + chrono::TimeDelta::days(d) + chrono::TimeDelta::hours(h);
                    e.record(&ev(ts, "k1", "a", 1, true));
                }
            }
        }
        let r = e
            .report(&range(
                "2026-03-01T00:00:00Z",
                "2026-03-04T00:00:00Z",
                Granularity::Daily,
            ))
            .unwrap();
        assert_eq!(r.granularity, Granularity::Daily);
        let calls: Vec<u64> = r.time_series.iter().map(|b| b.calls).collect();
        assert_eq!(calls, [24, 48, 72]);
        assert_eq!(r.time_series[1].start, t("2026-03-02T00:00:00Z"));
        assert_eq!(r.summary.total_calls, 144);
        assert_eq!(r.top_consumers[0].calls, 144);

        let r = e
            .report(&range(
                "2026-03-01T06:00:00Z",
                "2026-03-03T12:00:00Z",
                Granularity::Daily,
            ))
            .unwrap();
        let calls: Vec<u64> = r.time_series.iter().map(|b| b.calls).collect();
        assert_eq!(calls, [18 + 2 * 6, 2 * 18 + 3 * 6, 3 * 6]);
        assert_eq!(r.time_series[2].start, t("2026-03-03T06:00:00Z"));
        assert_eq!(r.time_series[2].end, t("2026-03-03T12:00:00Z"));
        // Hour-aligned range: per-key figures are exact too.
        assert_eq!(r.top_consumers[0].calls, r.summary.total_calls);
        assert_eq!(r.top_consumers[0].credits, r.summary.total_credits);
    }

    #[test]
    fn events_outside_the_range_are_excluded() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        e.record(&ev(t("2026-03-01T09:59:59.999Z"), "k0", "a", 1, true)); // before
        e.record(&ev(t("2026-03-01T10:00:00Z"), "k1", "a", 1, true)); // at from: in
        e.record(&ev(t("2026-03-01T11:59:59.999Z"), "k1", "a", 1, true)); // in
        e.record(&ev(t("2026-03-01T12:00:00Z"), "k2", "b", 1, true)); // at to: out
        e.record(&ev(t("2026-03-01T15:00:00Z"), "k2", "b", 1, true)); // after
        let r = e
            .report(&range(
                "2026-03-01T10:00:00Z",
                "2026-03-01T12:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.summary.total_calls, 2);
        assert_eq!(r.time_series[0].calls, 1);
        assert_eq!(r.time_series[1].calls, 1);
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.summary.unique_keys, 1);
        assert_eq!(r.top_consumers[0].api_key, "k1");
        assert_eq!(r.top_consumers[0].calls, 2);
        assert_eq!(r.trend.previous.calls, 1);
    }
}
