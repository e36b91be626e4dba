//! Report building: the report's shape, and the method that assembles it from the time
//! series, the tools, the top consumers and the trend.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::consumers::{KeysVisitor, TopConsumer};
use super::query::{AnalyticsError, Granularity, ReportQuery};
use super::reader::Reader;
use super::series::{time_series, TimeBucket};
use super::tools::{ToolBreakdown, ToolsVisitor};
use super::trend::{compare, previous_totals, TrendComparison};
use super::{AnalyticsEngine, OTHER};

/// Headline figures of a report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSummary {
    /// Usage events in the range.
    pub total_calls: u64,
    /// Credits charged in the range.
    pub total_credits: u64,
    /// Calls denied in the range.
    pub total_denied: u64,
    /// Distinct keys with calls in the range (hour resolution; calls without a key excluded).
    pub unique_keys: u64,
    /// Distinct tools called in the range.
    pub unique_tools: u64,
    /// `allowed / calls`; 1 when there are no calls.
    pub success_rate: f64,
}

/// An analytics report, serialized in camelCase as the admin API's `GET /analytics` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsReport {
    /// Start of the range.
    pub from: DateTime<Utc>,
    /// End of the range.
    pub to: DateTime<Utc>,
    /// Bucket width of `time_series`.
    pub granularity: Granularity,
    /// Contiguous buckets from `from`; the last one is cut at `to`.
    pub time_series: Vec<TimeBucket>,
    /// Per tool, by calls descending (ties by name).
    pub tools: Vec<ToolBreakdown>,
    /// Per key, by credits descending (ties by calls descending, then apiKey and keyName), at
    /// most `topN`.
    /// Calls without a key (empty `apiKey`) are not a consumer.
    pub top_consumers: Vec<TopConsumer>,
    /// The range against the period of equal length before it.
    pub trend: TrendComparison,
    /// Headline figures.
    pub summary: ReportSummary,
}

impl AnalyticsEngine {
    /// Builds a report for `query` from the aggregates.
    ///
    /// Defaults: `to` = now (the engine's clock; calls made in the current minute count),
    /// `from` = `to` − 24 h. Refused when
    /// `from` > `to`, when the range exceeds [`MAX_RANGE_DAYS`](super::MAX_RANGE_DAYS) days,
    /// or when `top_n` exceeds [`MAX_TOP_N`](super::MAX_TOP_N). `from` == `to` gives an empty
    /// report with no buckets.
    ///
    /// The cost grows with the number of buckets merged and the distinct tools and keys in
    /// them, never with the number of events. The aggregates are read a slice at a time
    /// (a few thousand counters, or one bucket), and the lock is let go between slices, so
    /// [`record`](Self::record) on the gated path waits at most for one slice, never for a
    /// whole report. Figures of one report agree with each other: the time series, the tools
    /// and the summary's calls, credits and denials come from one pass over the buckets.
    pub fn report(&self, query: &ReportQuery) -> Result<AnalyticsReport, AnalyticsError> {
        self.flush();
        let span = query.resolve(|| self.clock.now())?;

        // The aggregates are read a few buckets at a time (see `Reader`): `record` never waits
        // for more than one slice of a report.
        let mut reader = Reader::new(self);
        let (tool_slots, key_slots, first_week, scratch) = {
            let st = reader.state();
            let scratch = std::mem::take(&mut st.scratch);
            (st.tool_slots, st.key_slots, st.first_week(), scratch)
        };
        let mut segs = Vec::new();

        // Time series, the current period's totals and the tools, in one pass over the
        // buckets, so they agree with each other even when events are folded in meanwhile.
        let mut tools = ToolsVisitor::new(tool_slots);
        let (time_series, current) =
            time_series(&mut reader, &span, query.granularity, &mut tools, &mut segs);
        let previous = previous_totals(&mut reader, &span, &mut segs);

        let mut keys = KeysVisitor::new(scratch, key_slots);
        let picked = self.pick_consumers(
            &mut reader,
            &span,
            first_week,
            &mut keys,
            query.top_n,
            &mut segs,
        );
        let top_tools = picked.top_tools(&mut reader, &span, &mut segs);
        reader.state().scratch = keys.acc;
        reader.release();

        let tool_names = self.tool_names();
        let tool_name = |t: u32| tool_names.get(t as usize).map_or(OTHER, |n| &**n);
        let best_tools = top_tools.best_tools(picked.selected.len(), &tool_name);
        let unique_keys = picked.unique_keys;
        let top_consumers = picked.rows(best_tools, &tool_name);
        let tool_rows = tools.rows(&tool_name);

        Ok(AnalyticsReport {
            from: span.from,
            to: span.to,
            granularity: query.granularity,
            time_series,
            trend: compare(current, previous),
            summary: ReportSummary {
                total_calls: current.calls,
                total_credits: current.credits,
                total_denied: current.denied(),
                unique_keys,
                unique_tools: tool_rows.len() as u64,
                success_rate: ratio(current.allowed, current.calls, 1.0),
            },
            tools: tool_rows,
            top_consumers,
        })
    }
}

/// `num / den`, or `empty` when `den` is 0.
pub(super) fn ratio(num: u64, den: u64, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::analytics::test_support::{engine_at, ev, t};
    use crate::analytics::{
        ceil_div, AnalyticsReport, Granularity, ReportQuery, DAY_MS, HOUR_MS, MINUTE_MS,
    };
    use crate::clock::ms_to_datetime;

    #[test]
    fn summary_without_calls_and_json_shape() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.total_calls, 0);
        assert_eq!(r.summary.success_rate, 1.0);
        assert_eq!(r.summary.unique_keys, 0);
        assert!(r.tools.is_empty() && r.top_consumers.is_empty());
        assert_eq!(r.time_series.len(), 24);

        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["from"], "2026-03-01T00:00:00Z");
        assert_eq!(json["to"], "2026-03-02T00:00:00Z");
        assert_eq!(json["granularity"], "hourly");
        assert_eq!(json["timeSeries"][0]["start"], "2026-03-01T00:00:00Z");
        assert_eq!(json["timeSeries"][0]["end"], "2026-03-01T01:00:00Z");
        for k in ["calls", "allowed", "denied", "credits"] {
            assert_eq!(json["timeSeries"][0][k], 0, "{k}");
        }
        assert_eq!(json["summary"]["successRate"], 1.0);
        for k in [
            "totalCalls",
            "totalCredits",
            "totalDenied",
            "uniqueKeys",
            "uniqueTools",
        ] {
            assert_eq!(json["summary"][k], 0, "{k}");
        }
        for k in ["current", "previous", "change"] {
            assert!(json["trend"][k].is_object(), "{k}");
        }
        assert!(json["topConsumers"].as_array().unwrap().is_empty());
        let back: AnalyticsReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn json_names_of_tool_and_consumer_rows() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        e.record(&ev(t("2026-03-01T10:00:00Z"), "k1", "a", 3, true));
        let json = serde_json::to_value(e.report(&ReportQuery::default()).unwrap()).unwrap();
        let tool = &json["tools"][0];
        for k in [
            "tool",
            "calls",
            "allowed",
            "denied",
            "credits",
            "successRate",
            "avgCreditsPerCall",
        ] {
            assert!(!tool[k].is_null(), "{k}");
        }
        let c = &json["topConsumers"][0];
        assert_eq!(c["apiKey"], "k1");
        assert_eq!(c["keyName"], "name-k1");
        assert_eq!(c["topTool"], "a");
        assert_eq!(c["credits"], 3);
        assert_eq!(c["denied"], 0);
    }

    /// A small deterministic generator (no external randomness in tests).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    #[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
    struct Exp {
        calls: u64,
        allowed: u64,
        credits: u64,
    }

    #[test]
    fn report_totals_match_recorded_totals_at_volume() {
        let (_, e) = engine_at("2026-03-31T00:00:00Z");
        let start_ms = t("2026-03-01T00:00:00Z").timestamp_millis();
        let span_ms = 30 * DAY_MS;
        let mut rng = Lcg(42);
        let tools = [
            "search",
            "fetch",
            "summarize",
            "translate",
            "embed",
            "rank",
            "classify",
            "ocr",
            "tts",
            "stt",
            "chart",
            "sql",
        ];
        let mut total = Exp::default();
        let mut by_tool: BTreeMap<&str, Exp> = BTreeMap::new();
        let mut by_key: BTreeMap<String, (Exp, BTreeMap<&str, u64>)> = BTreeMap::new();
        let mut by_day = [0u64; 30];
        let mut stamps = Vec::with_capacity(200_000);
        for _ in 0..200_000 {
            let ts_ms = start_ms + (rng.next() as i64 % span_ms);
            let tool = tools[(rng.next() % tools.len() as u64) as usize];
            let key = format!("pg_{:04}", rng.next() % 200);
            let allowed = !rng.next().is_multiple_of(10);
            let credits = if allowed { rng.next() % 5 } else { 0 };
            e.record(&ev(ms_to_datetime(ts_ms), &key, tool, credits, allowed));

            let x = Exp {
                calls: 1,
                allowed: u64::from(allowed),
                credits,
            };
            let add = |a: &mut Exp| {
                a.calls += x.calls;
                a.allowed += x.allowed;
                a.credits += x.credits;
            };
            add(&mut total);
            add(by_tool.entry(tool).or_default());
            let k = by_key.entry(key).or_default();
            add(&mut k.0);
            *k.1.entry(tool).or_default() += 1;
            by_day[((ts_ms - start_ms) / DAY_MS) as usize] += 1;
            stamps.push((ts_ms, x));
        }

        let q = ReportQuery {
            from: Some(ms_to_datetime(start_ms)),
            to: Some(ms_to_datetime(start_ms + span_ms)),
            granularity: Granularity::Daily,
            top_n: 1000,
        };
        let r = e.report(&q).unwrap();
        assert_eq!(r.summary.total_calls, total.calls);
        assert_eq!(r.summary.total_credits, total.credits);
        assert_eq!(r.summary.total_denied, total.calls - total.allowed);
        assert_eq!(r.summary.unique_tools, tools.len() as u64);
        assert_eq!(r.summary.unique_keys, by_key.len() as u64);
        let days: Vec<u64> = r.time_series.iter().map(|b| b.calls).collect();
        assert_eq!(days, by_day);
        assert_eq!(
            r.time_series.iter().map(|b| b.credits).sum::<u64>(),
            total.credits
        );
        for row in &r.tools {
            let x = by_tool[row.tool.as_str()];
            assert_eq!(
                (row.calls, row.allowed, row.credits),
                (x.calls, x.allowed, x.credits)
            );
        }
        assert_eq!(r.top_consumers.len(), by_key.len());
        for w in r.top_consumers.windows(2) {
            assert!(w[0].credits >= w[1].credits);
        }
        for c in &r.top_consumers {
            let (x, per_tool) = &by_key[&c.api_key];
            assert_eq!(
                (c.calls, c.credits, c.denied),
                (x.calls, x.credits, x.calls - x.allowed)
            );
            let best = per_tool
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .unwrap();
            assert_eq!(c.top_tool, *best.0);
        }

        // Hourly, unaligned by seconds: totals match a brute-force count at minute resolution.
        let from_ms = start_ms + 9 * DAY_MS + 17 * MINUTE_MS + 42_000;
        let to_ms = from_ms + DAY_MS + 5 * HOUR_MS + 13 * MINUTE_MS;
        let q = ReportQuery {
            from: Some(ms_to_datetime(from_ms)),
            to: Some(ms_to_datetime(to_ms)),
            granularity: Granularity::Hourly,
            top_n: 5,
        };
        let r = e.report(&q).unwrap();
        let (lo, hi) = (
            from_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            ceil_div(to_ms, MINUTE_MS) * MINUTE_MS,
        );
        let expected: u64 = stamps
            .iter()
            .filter(|(ts, _)| (lo..hi).contains(ts))
            .map(|(_, x)| x.calls)
            .sum();
        let expected_credits: u64 = stamps
            .iter()
            .filter(|(ts, _)| (lo..hi).contains(ts))
            .map(|(_, x)| x.credits)
            .sum();
        assert_eq!(r.summary.total_calls, expected);
        assert_eq!(r.summary.total_credits, expected_credits);
        assert_eq!(r.time_series.iter().map(|b| b.calls).sum::<u64>(), expected);
        assert_eq!(r.tools.iter().map(|t| t.calls).sum::<u64>(), expected);
        assert_eq!(r.time_series.len(), 30);
        assert_eq!(r.top_consumers.len(), 5);
        let prev: u64 = stamps
            .iter()
            .filter(|(ts, _)| (lo - (hi - lo)..lo).contains(ts))
            .map(|(_, x)| x.calls)
            .sum();
        assert_eq!(r.trend.previous.calls, prev);
        assert_eq!(e.stats().recorded_events, 200_000);
    }
}
