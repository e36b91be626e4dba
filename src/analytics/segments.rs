//! Range planning: the fewest buckets (minutes, hours, days, 7-day blocks) that cover a range
//! of minutes, or hold the per-key counters of a range of hours.

use super::{ceil_div, DAYS_PER_WEEK, HOURS_PER_DAY, MINUTES_PER_HOUR};

/// Which bucket level a [`Segment`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Minute,
    Hour,
    Day,
    Week,
}

/// The buckets `[a, b)` of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) level: Level,
    pub(super) a: i64,
    pub(super) b: i64,
}

fn push_segment(out: &mut Vec<Segment>, level: Level, a: i64, b: i64) {
    if a < b {
        out.push(Segment { level, a, b });
    }
}

/// The fewest buckets covering the minutes `[a, b)`: partial hours as minutes, partial days
/// as hours, whole days as days.
pub(super) fn minute_segments(a: i64, b: i64, out: &mut Vec<Segment>) {
    if a >= b {
        return;
    }
    let ha = ceil_div(a, MINUTES_PER_HOUR);
    let hb = b.div_euclid(MINUTES_PER_HOUR);
    if ha >= hb {
        push_segment(out, Level::Minute, a, b);
        return;
    }
    push_segment(out, Level::Minute, a, ha * MINUTES_PER_HOUR);
    hour_segments(ha, hb, out);
    push_segment(out, Level::Minute, hb * MINUTES_PER_HOUR, b);
}

/// The fewest buckets covering the hours `[a, b)`: partial days as hours, whole days as days.
pub(super) fn hour_segments(a: i64, b: i64, out: &mut Vec<Segment>) {
    if a >= b {
        return;
    }
    let da = ceil_div(a, HOURS_PER_DAY);
    let db = b.div_euclid(HOURS_PER_DAY);
    if da >= db {
        push_segment(out, Level::Hour, a, b);
        return;
    }
    push_segment(out, Level::Hour, a, da * HOURS_PER_DAY);
    push_segment(out, Level::Day, da, db);
    push_segment(out, Level::Hour, db * HOURS_PER_DAY, b);
}

/// The fewest buckets holding the per-key counters of the hours `[a, b)`: partial days as
/// hours, partial 7-day blocks as days, whole blocks from `first_week` on (those entirely
/// within the retention) as blocks.
pub(super) fn key_hour_segments(a: i64, b: i64, first_week: i64, out: &mut Vec<Segment>) {
    if a >= b {
        return;
    }
    let da = ceil_div(a, HOURS_PER_DAY);
    let db = b.div_euclid(HOURS_PER_DAY);
    if da >= db {
        push_segment(out, Level::Hour, a, b);
        return;
    }
    push_segment(out, Level::Hour, a, da * HOURS_PER_DAY);
    let wa = ceil_div(da, DAYS_PER_WEEK).max(first_week);
    let wb = db.div_euclid(DAYS_PER_WEEK);
    if wa >= wb {
        push_segment(out, Level::Day, da, db);
    } else {
        push_segment(out, Level::Day, da, wa * DAYS_PER_WEEK);
        push_segment(out, Level::Week, wa, wb);
        push_segment(out, Level::Day, wb * DAYS_PER_WEEK, db);
    }
    push_segment(out, Level::Hour, db * HOURS_PER_DAY, b);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::analytics::test_support::{ev, minutes, t};
    use crate::analytics::{AnalyticsConfig, AnalyticsEngine, Granularity, ReportQuery};
    use crate::clock::ManualClock;

    #[test]
    fn per_key_figures_stay_exact_over_weeks_and_the_retention_edge() {
        let clock = Arc::new(ManualClock::at_rfc3339("2026-04-01T00:00:00Z").unwrap());
        let e = AnalyticsEngine::with_config(
            clock,
            AnalyticsConfig {
                retention_days: 17,
                ..AnalyticsConfig::default()
            },
        );
        let start = t("2026-01-01T00:00:00Z");
        for h in 0..(24 * 60) {
            let ts = start + chrono::TimeDelta::hours(h) + minutes(h % 60);
            e.record(&ev(
                ts,
                &format!("k{}", h % 3),
                "a",
                1 + (h as u64 % 2),
                true,
            ));
        }
        // Ranges across 7-day blocks, whole and cut by the retention, aligned to hours.
        for (from_day, to_day) in [(0, 60), (20, 60), (41, 60), (42, 59), (44, 58), (50, 51)] {
            let q = ReportQuery {
                from: Some(start + chrono::TimeDelta::days(from_day)),
                to: Some(start + chrono::TimeDelta::days(to_day) + chrono::TimeDelta::hours(5)),
                granularity: Granularity::Daily,
                top_n: 10,
            };
            let r = e.report(&q).unwrap();
            let calls: u64 = r.top_consumers.iter().map(|c| c.calls).sum();
            let credits: u64 = r.top_consumers.iter().map(|c| c.credits).sum();
            assert_eq!(calls, r.summary.total_calls, "{from_day}..{to_day}");
            assert_eq!(credits, r.summary.total_credits, "{from_day}..{to_day}");
        }
        // Everything older than the retention is gone from every level.
        let all = ReportQuery {
            from: Some(start),
            to: Some(start + chrono::TimeDelta::days(61)),
            granularity: Granularity::Daily,
            top_n: 10,
        };
        let r = e.report(&all).unwrap();
        assert_eq!(r.summary.total_calls, 18 * 24);
        assert_eq!(
            r.top_consumers.iter().map(|c| c.calls).sum::<u64>(),
            18 * 24
        );
    }
}
