//! Usage analytics: time series, per-tool breakdown, top consumers, trend and summary, answered
//! from pre-aggregated counters.
//!
//! # Design
//!
//! [`AnalyticsEngine::record`] never stores an event. It folds it into four levels of time
//! buckets, all keyed by the event's own `timestamp` (not by the clock):
//!
//! | level  | holds                                                                    |
//! |--------|--------------------------------------------------------------------------|
//! | minute | totals and per-tool counters (calls, allowed, credits)                   |
//! | hour   | totals, per-tool counters, per-key counters, per-(key, tool) call counts |
//! | day    | the same as an hour                                                      |
//! | 7 days | per-key counters only (epoch-aligned blocks of seven UTC days)           |
//!
//! Tool names and keys are interned to `u32` ids (a shared read lock, and a write lock only
//! the first time a name is seen); the aggregation itself is a handful of hash updates on
//! integer ids under one short mutex, O(1) per event.
//!
//! A report splits each range into the fewest buckets that cover it (partial hours as minutes,
//! partial days as hours, whole days as days, and for per-key figures whole 7-day blocks as
//! blocks) and merges them into dense, id-indexed accumulators. The top consumers are picked
//! numerically first and their top tools looked up afterwards, for the selected keys only.
//! The cost of a report therefore grows with the number of buckets and with the distinct tools
//! and keys in them, never with the number of events recorded.
//!
//! A report reads the aggregates in slices: it holds their lock for a few thousand counters
//! (or one bucket, if a bucket is larger), then lets go so a waiting `record` can fold its
//! batch in, and resumes at the next bucket. Names are copied out of the interning tables in
//! chunks the same way. So `record` on the gated path waits at most one slice, never a whole
//! report. Events folded in while a report runs may or may not be in it; the report's time
//! series, tools and summary totals come from one pass and always agree with each other.
//!
//! # Resolution
//!
//! * `timeSeries`, `tools`, `trend` and the calls/credits/denied/successRate figures of
//!   `summary` are exact to the minute: they count the events in `[from rounded down to the
//!   minute, to rounded up to the minute)`. A time-series bucket boundary that falls inside a
//!   minute is resolved to the start of that minute (the whole minute counts in the later
//!   bucket). With minute-aligned `from` and `to` these figures are exact.
//! * `topConsumers` and `summary.uniqueKeys` are exact to the hour: they count every event in
//!   the whole UTC hours that overlap that minute range, `[from rounded down to the hour, to
//!   rounded up to the hour)`. With hour-aligned `from` and `to` they are exact; otherwise they
//!   may also count less than one hour of calls just before `from` and just after `to`. For
//!   the default query (`to` = now) nothing after `to` exists yet, so only the head is wider.
//! * Calls without a key (missing or unknown key: empty `apiKey`) count everywhere except as a
//!   consumer: they are not in `topConsumers` nor in `uniqueKeys`.
//!
//! # Bounded memory
//!
//! * Retention: buckets of UTC days more than [`AnalyticsConfig::retention_days`] days before
//!   the day of the newest event recorded are dropped, checked only when a newer day starts
//!   (amortized over the events). Later events for a dropped day are not aggregated and are
//!   counted in [`AnalyticsStats::expired_events`]. Because retention follows the newest
//!   *event*, one event stamped far in the future ages out everything older.
//! * Interning: after [`AnalyticsConfig::max_keys`] distinct keys (default 1,000,000; a key is
//!   one `(apiKey, keyName)` pair) further new keys are aggregated under one consumer named
//!   `(other)`; after [`AnalyticsConfig::max_tools`] distinct tools (default 1,000) further
//!   new tools under one tool named `(other)`. Interned names are kept for the engine's
//!   lifetime (not released by retention), so the limits count every name ever seen.
//! * A minute bucket holds at most 128 distinct tools; the rest of that minute goes to
//!   `(other)` at minute level only (hour and day buckets keep the names), so a flood of
//!   made-up tool names cannot blow up the finest level.
//! * Tool names, keys and key names longer than 200 characters are truncated to 200 characters
//!   for aggregation, and already when an event waits in a stripe buffer (which keeps only
//!   the names and counters, never the event), so a buffered event is at most a few hundred
//!   bytes however long the request's names were.
//!
//! Memory grows with activity, not with events: roughly 50 bytes per active minute plus 32
//! per (minute, tool), about 60 bytes per (hour, day or 7-day block, key) and about 25 per
//! (hour or day, key, tool).

use std::fmt;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::meter::UsageEvent;

// The engine and its recording path live here; each other idea has its own file.
mod aggregates;
mod consumers;
mod names;
mod query;
mod reader;
mod report;
mod segments;
mod series;
#[cfg(test)]
mod test_support;
mod tools;
mod totals;
mod trend;

pub use consumers::TopConsumer;
pub use query::{AnalyticsError, Granularity, ReportQuery};
pub use report::{AnalyticsReport, ReportSummary};
pub use series::TimeBucket;
pub use tools::ToolBreakdown;
pub use totals::{NameTotals, UsageTotals};
pub use trend::{PeriodTotals, TrendChange, TrendComparison};

use aggregates::{Counters, State};
use names::{truncate, Names};
use reader::REPORT_LOCK_BUDGET;
use totals::Totals;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const MINUTES_PER_HOUR: i64 = 60;
const HOURS_PER_DAY: i64 = 24;
const MINUTES_PER_DAY: i64 = 1_440;
const DAYS_PER_WEEK: i64 = 7;

/// The longest range a report may cover, in days.
pub const MAX_RANGE_DAYS: i64 = 400;
/// The largest `topN` a report accepts.
pub const MAX_TOP_N: usize = 1_000;
/// Names (tools, keys, key names) are truncated to this many characters for aggregation.
pub const MAX_NAME_CHARS: usize = 200;
/// The name under which overflowing keys and tools are aggregated.
pub const OTHER: &str = "(other)";

/// At most this many distinct tools per minute bucket; the rest of the minute goes to `(other)`.
const MINUTE_TOOL_CAP: usize = 128;
/// Upper bound on the configurable retention.
const MAX_RETENTION_DAYS: u32 = 3_660;

/// Reserved tool id: `(other)`.
const OTHER_TOOL: u32 = 0;
/// Reserved key id: events without a key (empty `apiKey`).
const ANON_KEY: u32 = 0;
/// Reserved key id: `(other)`.
const OTHER_KEY: u32 = 1;

/// ⌈a / b⌉ for b > 0.
fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 {
        q
    } else {
        q + 1
    }
}

// ---------------------------------------------------------------------------------------------
// Public API: configuration and engine counters (the query and report types are re-exported
// above from their own files)
// ---------------------------------------------------------------------------------------------

/// Limits of an [`AnalyticsEngine`].
///
/// ```
/// use paygate_mcp::AnalyticsConfig;
/// let cfg = AnalyticsConfig { retention_days: 30, ..AnalyticsConfig::default() };
/// assert_eq!(cfg.max_keys, 1_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AnalyticsConfig {
    /// Whole UTC days kept before the day of the newest event (default 90; clamped to
    /// 1..=3660).
    pub retention_days: u32,
    /// Distinct keys (`(apiKey, keyName)` pairs) tracked before new ones are aggregated as
    /// `(other)` (default 1,000,000; at least 1).
    pub max_keys: usize,
    /// Distinct tools tracked before new ones are aggregated as `(other)` (default 1,000; at
    /// least 1).
    pub max_tools: usize,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            max_keys: 1_000_000,
            max_tools: 1_000,
        }
    }
}

/// Counters about the engine itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsStats {
    /// Events aggregated.
    pub recorded_events: u64,
    /// Events not aggregated because they were older than the retention.
    pub expired_events: u64,
    /// Distinct keys interned (including `(other)` and the empty key).
    pub distinct_keys: usize,
    /// Distinct tools interned (including `(other)`).
    pub distinct_tools: usize,
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/// Pre-aggregated usage analytics, fed with every gate decision and queried with
/// [`AnalyticsEngine::report`]. Thread-safe; see the [module docs](self) for the design, the
/// resolution of each figure and the memory bounds.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{AnalyticsEngine, Clock, ManualClock, ReportQuery, UsageEvent};
///
/// let clock = Arc::new(ManualClock::at_rfc3339("2026-03-01T12:00:00Z").unwrap());
/// let engine = AnalyticsEngine::new(clock.clone());
/// let event = |tool: &str, credits: u64, allowed: bool| UsageEvent {
///     timestamp: clock.now(),
///     api_key: "pg_1234...abcd".into(),
///     key_id: None,
///     key_name: "alice".into(),
///     tool: tool.into(),
///     credits_charged: credits,
///     allowed,
///     deny_reason: (!allowed).then(|| "insufficient_credits".to_string()),
///     duration_ms: None,
/// };
/// engine.record(&event("search", 2, true));
/// engine.record(&event("search", 2, true));
/// engine.record(&event("fetch", 0, false));
///
/// clock.advance_secs(60);
/// let report = engine.report(&ReportQuery::default()).unwrap(); // the last 24 h, hourly
/// assert_eq!(report.time_series.len(), 24);
/// assert_eq!(report.summary.total_calls, 3);
/// assert_eq!(report.summary.total_credits, 4);
/// assert_eq!(report.tools[0].tool, "search");
/// assert_eq!(report.top_consumers[0].key_name, "alice");
/// assert_eq!(report.top_consumers[0].top_tool, "search");
///
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json["summary"]["totalDenied"], 1);
/// assert_eq!(json["trend"]["change"]["calls"], serde_json::Value::Null);
/// ```
pub struct AnalyticsEngine {
    clock: SharedClock,
    config: AnalyticsConfig,
    names: RwLock<Names>,
    state: Mutex<State>,
    /// Totals since the start (1.8's `/status` usage), apart from the time buckets so that
    /// reading them never waits for a report.
    totals: Mutex<Totals>,
    /// Events not yet folded in, one buffer per writer stripe: a gated call only touches
    /// its own stripe's lock, and the shared aggregates are locked once per batch. Each holds
    /// only what aggregation reads, names already cut to [`MAX_NAME_CHARS`].
    pending: Box<[Mutex<Vec<Pending>>]>,
    /// Work (counters read) a report does per hold of the aggregates' lock.
    report_lock_budget: usize,
    /// Called each time a report lets go of the aggregates (tests only).
    #[cfg(test)]
    on_release: Mutex<Option<ReleaseHook>>,
}

#[cfg(test)]
type ReleaseHook = Box<dyn Fn(&AnalyticsEngine) + Send + Sync>;

/// What aggregation needs of a usage event, names cut to [`MAX_NAME_CHARS`] characters.
struct Pending {
    minute: i64,
    tool: Box<str>,
    api_key: Box<str>,
    key_name: Box<str>,
    deny_reason: Option<Box<str>>,
    key_id: Option<crate::key::KeyId>,
    counters: Counters,
}

impl Pending {
    fn of(event: &UsageEvent) -> Self {
        Self {
            minute: event.timestamp.timestamp_millis().div_euclid(MINUTE_MS),
            tool: truncate(&event.tool, MAX_NAME_CHARS).into(),
            api_key: truncate(&event.api_key, MAX_NAME_CHARS).into(),
            key_name: truncate(&event.key_name, MAX_NAME_CHARS).into(),
            key_id: event.key_id,
            deny_reason: event
                .deny_reason
                .as_deref()
                .map(|r| truncate(r, MAX_NAME_CHARS).into()),
            counters: Counters::one(event.allowed, event.credits_charged),
        }
    }
}

/// Events buffered per stripe before they are folded into the aggregates.
const BATCH: usize = 64;

impl fmt::Debug for AnalyticsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnalyticsEngine")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl AnalyticsEngine {
    /// An empty engine with the default [`AnalyticsConfig`], reading "now" from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self::with_config(clock, AnalyticsConfig::default())
    }

    /// An empty engine with explicit limits (clamped to their documented ranges).
    pub fn with_config(clock: SharedClock, config: AnalyticsConfig) -> Self {
        let config = AnalyticsConfig {
            retention_days: config.retention_days.clamp(1, MAX_RETENTION_DAYS),
            max_keys: config.max_keys.max(1),
            max_tools: config.max_tools.max(1),
        };
        Self {
            clock,
            names: RwLock::new(Names::new(config.max_keys, config.max_tools)),
            state: Mutex::new(State::new(i64::from(config.retention_days))),
            totals: Mutex::new(Totals::default()),
            pending: (0..crate::meter::STRIPES)
                .map(|_| Mutex::new(Vec::with_capacity(BATCH)))
                .collect(),
            config,
            report_lock_budget: REPORT_LOCK_BUDGET,
            #[cfg(test)]
            on_release: Mutex::new(None),
        }
    }

    /// Sets the work a report does per hold of the aggregates' lock (at least 1).
    #[cfg(test)]
    fn with_report_lock_budget(mut self, budget: usize) -> Self {
        self.report_lock_budget = budget.max(1);
        self
    }

    /// The limits in force.
    pub fn config(&self) -> AnalyticsConfig {
        self.config
    }

    /// Counts one usage event, bucketed by `event.timestamp`.
    ///
    /// The event waits in the calling thread's stripe buffer and is folded into the
    /// aggregates with the rest of its batch (reports and stats fold every buffer first, so
    /// they always see it). O(1) amortized; never panics. An event older than the retention
    /// (relative to the newest event) is counted in [`AnalyticsStats::expired_events`] only.
    pub fn record(&self, event: &UsageEvent) {
        let item = Pending::of(event);
        let Some(stripe) = self.pending.get(crate::meter::stripe()) else {
            return;
        };
        let full = {
            let mut pending = stripe.lock();
            pending.push(item);
            (pending.len() >= BATCH)
                .then(|| std::mem::replace(&mut *pending, Vec::with_capacity(BATCH)))
        };
        if let Some(batch) = full {
            self.fold(batch);
        }
    }

    /// Folds a batch into the aggregates under one lock of each.
    fn fold(&self, batch: Vec<Pending>) {
        let ids: Vec<(u32, u32)> = batch.iter().map(|e| self.intern(e)).collect();
        {
            let mut state = self.state.lock();
            for (event, (tool, key)) in batch.iter().zip(&ids) {
                state.add(event.minute, *tool, *key, event.counters);
            }
        }
        let mut totals = self.totals.lock();
        for (event, (tool, _)) in batch.iter().zip(&ids) {
            totals.add(
                *tool,
                &event.key_name,
                event.deny_reason.as_deref(),
                event.counters,
            );
        }
    }

    /// Usage since the engine started, with the `top` busiest tools and key names (the
    /// `usage` of paygate-mcp 1.8's `/status`). Costs the same however many keys and events
    /// there are: key names beyond 10,000 are counted together as `(other)`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{AnalyticsEngine, Clock, ManualClock, UsageEvent};
    /// let clock = Arc::new(ManualClock::at_rfc3339("2026-03-01T12:00:00Z").unwrap());
    /// let engine = AnalyticsEngine::new(clock.clone());
    /// engine.record(&UsageEvent {
    ///     timestamp: clock.now(), api_key: "pg_1234...abcd".into(), key_id: None,
    ///     key_name: "alice".into(), tool: "search".into(), credits_charged: 2,
    ///     allowed: true, deny_reason: None, duration_ms: None,
    /// });
    /// let usage = engine.totals(100);
    /// assert_eq!((usage.total_calls, usage.total_credits_spent), (1, 2));
    /// assert_eq!(usage.per_key["alice"].credits, 2);
    /// ```
    pub fn totals(&self, top: usize) -> UsageTotals {
        self.flush();
        let totals = self.totals.lock();
        let names = self.names.read();
        totals.read(top, |id| {
            names
                .tools
                .get(id as usize)
                .map_or_else(|| OTHER.to_string(), |t| t.to_string())
        })
    }

    /// Folds every buffered event in.
    fn flush(&self) {
        for stripe in self.pending.iter() {
            let batch = std::mem::take(&mut *stripe.lock());
            if !batch.is_empty() {
                self.fold(batch);
            }
        }
    }

    /// Counters about the engine.
    pub fn stats(&self) -> AnalyticsStats {
        self.flush();
        let (distinct_keys, distinct_tools) = {
            let names = self.names.read();
            (names.keys.len(), names.tools.len())
        };
        let st = self.state.lock();
        AnalyticsStats {
            recorded_events: st.recorded,
            expired_events: st.expired,
            distinct_keys,
            distinct_tools,
        }
    }

    /// Interns the event's tool and key: a shared read lock in the common case, the write lock
    /// only for a tool or `(apiKey, keyName)` pair not seen before.
    fn intern(&self, event: &Pending) -> (u32, u32) {
        let (tool, api_key, key_name) = (&*event.tool, &*event.api_key, &*event.key_name);
        {
            let names = self.names.read();
            if let (Some(t), Some(k)) = (names.find_tool(tool), names.find_key(api_key, key_name)) {
                return (t, k);
            }
        }
        let mut names = self.names.write();
        (
            names.tool_id(tool),
            names.key_id(api_key, key_name, event.key_id),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use super::test_support::{engine_at, ev, minutes, t};
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn hostile_inputs_do_not_panic() {
        let (clock, e) = engine_at("2026-03-02T00:00:00Z");
        let now = clock.now();
        let long_tool = "é".repeat(300);
        e.record(&ev(now - minutes(5), "", "", 0, false));
        e.record(&ev(
            now - minutes(5),
            &"k".repeat(10_000),
            &long_tool,
            u64::MAX,
            true,
        ));
        e.record(&ev(now - minutes(5), "k2", "a", u64::MAX, true));
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.total_calls, 3);
        assert_eq!(r.summary.total_credits, u64::MAX); // saturates
        let truncated = r
            .tools
            .iter()
            .find(|t| t.tool.starts_with('é'))
            .expect("long tool");
        assert_eq!(truncated.tool.chars().count(), MAX_NAME_CHARS);
        assert!(r.tools.iter().any(|t| t.tool.is_empty()));
        assert!(r
            .top_consumers
            .iter()
            .all(|c| c.api_key.chars().count() <= MAX_NAME_CHARS));

        // Far past: older than the retention, counted as expired.
        e.record(&ev(DateTime::<Utc>::MIN_UTC, "k1", "a", 1, true));
        assert_eq!(e.stats().expired_events, 1);
        // Extreme queries.
        for (from, to) in [
            (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC),
            (
                DateTime::<Utc>::MAX_UTC - chrono::TimeDelta::days(2),
                DateTime::<Utc>::MAX_UTC,
            ),
        ] {
            let q = ReportQuery {
                from: Some(from),
                to: Some(to),
                ..ReportQuery::default()
            };
            assert_eq!(e.report(&q).unwrap().summary.total_calls, 0);
        }
        let q = ReportQuery {
            to: Some(DateTime::<Utc>::MIN_UTC),
            ..ReportQuery::default()
        };
        assert!(e.report(&q).is_ok());
        // Far future: becomes the newest event and ages out everything older.
        e.record(&ev(DateTime::<Utc>::MAX_UTC, "k1", "a", 1, true));
        let q = ReportQuery {
            to: Some(DateTime::<Utc>::MAX_UTC),
            ..ReportQuery::default()
        };
        // `to` is rounded up to the minute, so the event at `to` itself is in.
        assert_eq!(e.report(&q).unwrap().summary.total_calls, 1);
        assert_eq!(
            e.report(&ReportQuery::default())
                .unwrap()
                .summary
                .total_calls,
            0
        );
        e.record(&ev(now, "k1", "a", 1, true));
        assert_eq!(e.stats().expired_events, 2);
    }

    #[test]
    fn buffered_events_hold_only_cut_names() {
        let (clock, e) = engine_at("2026-03-02T00:00:00Z");
        let huge = "é".repeat(500_000); // 1 MB
        let mut event = ev(clock.now(), "k", &huge, 1, true);
        event.key_name = huge.clone();
        event.api_key = huge.clone();
        event.deny_reason = Some(huge.clone());
        e.record(&event);
        let held: usize = e
            .pending
            .iter()
            .flat_map(|p| {
                p.lock()
                    .iter()
                    .map(|x| x.tool.len() + x.api_key.len() + x.key_name.len())
                    .collect::<Vec<_>>()
            })
            .sum();
        assert!(held > 0 && held <= 3 * 4 * MAX_NAME_CHARS, "{held}");
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.tools[0].tool.chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let e = Arc::new(e);
        let ts = t("2026-03-01T10:00:00Z");
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000i64 {
                        let key = format!("k{}", (i + n) % 7);
                        e.record(&ev(ts + minutes(i % 600), &key, "a", 1, i % 3 != 0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.total_calls, 20_000);
        assert_eq!(r.summary.total_credits, 20_000);
        assert_eq!(r.top_consumers.iter().map(|c| c.calls).sum::<u64>(), 20_000);
    }
}
