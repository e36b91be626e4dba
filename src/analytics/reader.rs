//! Report-time reading of the aggregates: the visitor that merges buckets into a report's
//! figures, and the reader that walks the buckets in slices, letting go of the lock between
//! slices so `record` never waits for a whole report.

use super::aggregates::{KeyTable, MinuteBucket, Rollup, State};
use super::segments::{Level, Segment};
use super::AnalyticsEngine;

/// Merges buckets into a report's figures. Each method returns the work it did (counters
/// read), which decides when a [`Reader`] lets go of the lock.
pub(super) trait Visitor {
    fn minute(&mut self, _m: &MinuteBucket) -> usize {
        0
    }
    fn rollup(&mut self, r: &Rollup) -> usize;
    fn week(&mut self, _t: &KeyTable) -> usize {
        0
    }
}

/// Default work (counters read) a report does per hold of the aggregates' lock.
pub(super) const REPORT_LOCK_BUDGET: usize = 4_096;

/// Reads the aggregates for a report in slices: it takes the lock when it needs it, and lets
/// go of it once a slice's budget of work is done, at a bucket boundary. A writer folding a
/// batch in therefore waits for at most one slice (or one bucket larger than the budget),
/// never for a whole report. Buckets are addressed by absolute index, so whatever was folded
/// in or pruned between two slices, the reader resumes at the right bucket.
pub(super) struct Reader<'a> {
    engine: &'a AnalyticsEngine,
    guard: Option<parking_lot::MutexGuard<'a, State>>,
    spent: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(engine: &'a AnalyticsEngine) -> Self {
        Self {
            engine,
            guard: None,
            spent: 0,
        }
    }

    /// The aggregates, locked if they were not.
    pub(super) fn state(&mut self) -> &mut State {
        let engine = self.engine;
        self.guard.get_or_insert_with(|| engine.state.lock())
    }

    /// Lets go of the lock, if held.
    pub(super) fn release(&mut self) {
        self.spent = 0;
        if self.guard.take().is_some() {
            #[cfg(test)]
            if let Some(hook) = &*self.engine.on_release.lock() {
                hook(self.engine);
            }
        }
    }

    /// Feeds every bucket of `segments` to `v`, in order.
    pub(super) fn walk(&mut self, segments: &[Segment], v: &mut impl Visitor) {
        for seg in segments {
            let mut idx = seg.a;
            while idx < seg.b {
                let st = self.state();
                let visited = match seg.level {
                    Level::Minute => st
                        .minutes
                        .first_in(idx, seg.b)
                        .map(|(i, m)| (i, v.minute(m))),
                    Level::Hour => st.hours.first_in(idx, seg.b).map(|(i, r)| (i, v.rollup(r))),
                    Level::Day => st.days.first_in(idx, seg.b).map(|(i, r)| (i, v.rollup(r))),
                    Level::Week => st.weeks.first_in(idx, seg.b).map(|(i, t)| (i, v.week(t))),
                };
                let Some((at, work)) = visited else {
                    break;
                };
                idx = at + 1;
                self.spent = self.spent.saturating_add(work.max(1));
                if self.spent >= self.engine.report_lock_budget {
                    self.release();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::analytics::test_support::{ev, minutes, t};
    use crate::analytics::{
        AnalyticsConfig, AnalyticsEngine, AnalyticsReport, Granularity, ReportQuery, BATCH,
    };
    use crate::clock::{Clock, ManualClock};

    /// A report over a year of data, the aggregates' lock released after every bucket, with
    /// `hook` run at each release. Returns the report and how many releases there were.
    fn report_with_hook(
        hook: impl Fn(&AnalyticsEngine) + Send + Sync + 'static,
    ) -> (AnalyticsEngine, AnalyticsReport, usize) {
        let clock = Arc::new(ManualClock::at_rfc3339("2026-12-31T00:00:00Z").unwrap());
        let config = AnalyticsConfig {
            retention_days: 400,
            ..AnalyticsConfig::default()
        };
        let e = AnalyticsEngine::with_config(clock.clone(), config).with_report_lock_budget(1);
        let start = t("2026-01-02T00:00:00Z");
        for i in 0..5_000i64 {
            let key = format!("k{}", i % 50);
            let tool = format!("t{}", i % 7);
            e.record(&ev(start + minutes(i * 97), &key, &tool, 1, i % 5 != 0));
        }
        let releases = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = releases.clone();
        *e.on_release.lock() = Some(Box::new(move |engine: &AnalyticsEngine| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            hook(engine);
        }));
        let q = ReportQuery {
            from: Some(t("2026-01-01T00:17:00Z")),
            to: Some(clock.now()),
            granularity: Granularity::Daily,
            top_n: 10,
        };
        let r = e.report(&q).unwrap();
        *e.on_release.lock() = None;
        let n = releases.load(std::sync::atomic::Ordering::Relaxed);
        (e, r, n)
    }

    #[test]
    fn a_report_never_holds_the_aggregates_while_record_needs_them() {
        let recorded_during = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let during = recorded_during.clone();
        let (e, r, releases) = report_with_hook(move |engine| {
            // The report has let go: the aggregates are free...
            assert!(
                engine.state.try_lock().is_some(),
                "a report holds the aggregates' lock between buckets"
            );
            // ...so gated calls go straight through, every BATCH-th one folding its batch into
            // the aggregates (which needs their lock).
            engine.record(&ev(t("2026-06-01T00:00:00Z"), "k0", "t0", 1, true));
            during.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        // The report let go many times: at least once per day bucket it merged.
        assert!(releases >= 300, "{releases}");
        let during = recorded_during.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            during >= 10 * BATCH as u64,
            "batches were folded mid-report"
        );
        assert_eq!(e.stats().recorded_events, 5_000 + during);
        // Whatever was recorded while the report ran, its figures agree with each other.
        let series: u64 = r.time_series.iter().map(|b| b.calls).sum();
        assert_eq!(series, r.summary.total_calls);
        assert_eq!(r.tools.iter().map(|t| t.calls).sum::<u64>(), series);
        assert!(r.summary.total_calls >= 5_000);
    }

    #[test]
    fn a_report_read_in_slices_matches_one_read_at_once() {
        let (e, sliced, _) = report_with_hook(|_| {});
        let whole = e
            .with_report_lock_budget(usize::MAX)
            .report(&ReportQuery {
                from: Some(sliced.from),
                to: Some(sliced.to),
                granularity: Granularity::Daily,
                top_n: 10,
            })
            .unwrap();
        assert_eq!(sliced, whole);
        assert_eq!(whole.summary.total_calls, 5_000);
        assert_eq!(whole.summary.unique_keys, 50);
        assert_eq!(whole.top_consumers.len(), 10);
    }
}
