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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::clock::{ms_to_datetime, SharedClock};
use crate::meter::UsageEvent;

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

// ---------------------------------------------------------------------------------------------
// Public API: configuration, query, errors, report
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

/// Usage of one tool over a report's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolBreakdown {
    /// The tool name (truncated to 200 characters; `(other)` for overflow).
    pub tool: String,
    /// Usage events for the tool.
    pub calls: u64,
    /// Calls let through.
    pub allowed: u64,
    /// Calls denied.
    pub denied: u64,
    /// Credits charged.
    pub credits: u64,
    /// `allowed / calls`.
    pub success_rate: f64,
    /// `credits / allowed`: the average charge of a call that went through (0 when none did).
    pub avg_credits_per_call: f64,
}

/// One key's usage over a report's range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopConsumer {
    /// The key's display form, as carried by the usage events (`(other)` for overflow).
    pub api_key: String,
    /// The key's name, as carried by its usage events. A consumer is one `(apiKey, keyName)`
    /// pair, so keys whose display forms collide are still told apart.
    pub key_name: String,
    /// Usage events of the key.
    pub calls: u64,
    /// Credits charged.
    pub credits: u64,
    /// Calls denied.
    pub denied: u64,
    /// The tool the key called most (ties broken by name).
    pub top_tool: String,
}

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
    counters: Counters,
}

impl Pending {
    fn of(event: &UsageEvent) -> Self {
        Self {
            minute: event.timestamp.timestamp_millis().div_euclid(MINUTE_MS),
            tool: truncate(&event.tool, MAX_NAME_CHARS).into(),
            api_key: truncate(&event.api_key, MAX_NAME_CHARS).into(),
            key_name: truncate(&event.key_name, MAX_NAME_CHARS).into(),
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
        let mut state = self.state.lock();
        for (event, (tool, key)) in batch.iter().zip(ids) {
            state.add(event.minute, tool, key, event.counters);
        }
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

    /// Builds a report for `query` from the aggregates.
    ///
    /// Defaults: `to` = now (the engine's clock; calls made in the current minute count),
    /// `from` = `to` − 24 h. Refused when
    /// `from` > `to`, when the range exceeds [`MAX_RANGE_DAYS`] days, or when `top_n` exceeds
    /// [`MAX_TOP_N`]. `from` == `to` gives an empty report with no buckets.
    ///
    /// The cost grows with the number of buckets merged and the distinct tools and keys in
    /// them, never with the number of events. The aggregates are read a slice at a time
    /// (a few thousand counters, or one bucket), and the lock is let go between slices, so
    /// [`record`](Self::record) on the gated path waits at most for one slice, never for a
    /// whole report. Figures of one report agree with each other: the time series, the tools
    /// and the summary's calls, credits and denials come from one pass over the buckets.
    pub fn report(&self, query: &ReportQuery) -> Result<AnalyticsReport, AnalyticsError> {
        self.flush();
        let to = query.to.unwrap_or_else(|| self.clock.now());
        let from = query.from.unwrap_or_else(|| {
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
        if query.top_n > MAX_TOP_N {
            return Err(AnalyticsError::TopNTooLarge { top_n: query.top_n });
        }

        let bucket_ms = query.granularity.bucket_ms();
        // Minute range of the report, and the hour range used for per-key figures.
        let (m_from, m_to) = if span_ms == 0 {
            let m = from_ms.div_euclid(MINUTE_MS);
            (m, m)
        } else {
            // A defaulted `to` is "now": the current minute counts even when now falls exactly
            // on its first millisecond.
            let m_to = if query.to.is_none() {
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
        let n_buckets = ceil_div(span_ms, bucket_ms);
        let mut time_series = Vec::with_capacity(usize::try_from(n_buckets).unwrap_or(0));
        let mut tools = ToolsVisitor::new(tool_slots);
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
            minute_segments(a, b, &mut segs);
            let mut v = SeriesVisitor {
                totals: Counters::default(),
                tools: &mut tools,
            };
            reader.walk(&segs, &mut v);
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

        // The previous period.
        segs.clear();
        minute_segments(m_from - (m_to - m_from), m_from, &mut segs);
        let mut previous = TotalsVisitor::default();
        reader.walk(&segs, &mut previous);
        let previous = previous.0;

        // Keys, pass 1: per-key totals, into the reusable dense accumulator.
        segs.clear();
        key_hour_segments(h_from, h_to, first_week, &mut segs);
        let mut keys = KeysVisitor::new(scratch, key_slots);
        reader.walk(&segs, &mut keys);
        reader.release();
        let mut consumers = keys.drain_consumers();
        let unique_keys = consumers.len() as u64;
        let consumer_names = self.select_top(&mut consumers, query.top_n);
        let selected: Vec<u32> = consumers.iter().map(|c| c.key).collect();

        // Keys, pass 2: per-(key, tool) calls of the selected keys, for their top tool.
        let mut top_tools = TopToolVisitor::new(&selected);
        if !selected.is_empty() {
            segs.clear();
            hour_segments(h_from, h_to, &mut segs);
            reader.walk(&segs, &mut top_tools);
        }
        reader.state().scratch = keys.acc;
        reader.release();

        let tool_names = self.tool_names();
        let tool_name = |t: u32| tool_names.get(t as usize).map_or(OTHER, |n| &**n);
        let best_tools = top_tools.best_tools(selected.len(), &tool_name);
        let top_consumers = consumers
            .iter()
            .zip(consumer_names)
            .zip(best_tools)
            .map(|((c, (api_key, key_name)), best)| TopConsumer {
                api_key: api_key.into(),
                key_name: key_name.into(),
                calls: c.c.calls,
                credits: c.c.credits,
                denied: c.c.denied(),
                top_tool: best.map(|t| tool_name(t).to_string()).unwrap_or_default(),
            })
            .collect();

        let mut tool_ids: Vec<u32> = tools.touched.clone();
        tool_ids.sort_unstable_by(|a, b| {
            let (ca, cb) = (tools.get(*a), tools.get(*b));
            cb.calls
                .cmp(&ca.calls)
                .then_with(|| tool_name(*a).cmp(tool_name(*b)))
                .then(a.cmp(b))
        });
        let tool_rows: Vec<ToolBreakdown> = tool_ids
            .iter()
            .map(|&t| {
                let c = tools.get(t);
                ToolBreakdown {
                    tool: tool_name(t).to_string(),
                    calls: c.calls,
                    allowed: c.allowed,
                    denied: c.denied(),
                    credits: c.credits,
                    success_rate: ratio(c.allowed, c.calls, 1.0),
                    avg_credits_per_call: ratio(c.credits, c.allowed, 0.0),
                }
            })
            .collect();

        let period = |c: Counters| PeriodTotals {
            calls: c.calls,
            credits: c.credits,
            denied: c.denied(),
        };
        Ok(AnalyticsReport {
            from,
            to,
            granularity: query.granularity,
            time_series,
            trend: TrendComparison {
                current: period(current),
                previous: period(previous),
                change: TrendChange {
                    calls: pct_change(previous.calls, current.calls),
                    credits: pct_change(previous.credits, current.credits),
                    denied: pct_change(previous.denied(), current.denied()),
                },
            },
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
        (names.tool_id(tool), names.key_id(api_key, key_name))
    }
}

// ---------------------------------------------------------------------------------------------
// Interning
// ---------------------------------------------------------------------------------------------

/// Interned tools and keys. A key is identified by its `(apiKey, keyName)` pair, so two keys
/// whose display forms happen to collide are still told apart by their names.
struct Names {
    tool_ids: HashMap<Box<str>, u32>,
    tools: Vec<Box<str>>,
    /// apiKey → the most recent id interned with that apiKey (others are chained by `next`).
    key_ids: HashMap<Box<str>, u32>,
    keys: Vec<KeyName>,
    max_tools: usize,
    max_keys: usize,
}

struct KeyName {
    api_key: Box<str>,
    name: Box<str>,
    /// The previous id with the same apiKey and another name (`NONE` at the end).
    next: u32,
}

const NONE: u32 = u32::MAX;

impl Names {
    fn new(max_keys: usize, max_tools: usize) -> Self {
        let mut n = Self {
            tool_ids: HashMap::new(),
            tools: Vec::new(),
            key_ids: HashMap::new(),
            keys: Vec::new(),
            max_tools,
            max_keys,
        };
        n.tool_ids.insert(OTHER.into(), OTHER_TOOL);
        n.tools.push(OTHER.into());
        for (id, api) in [(ANON_KEY, ""), (OTHER_KEY, OTHER)] {
            n.key_ids.insert(api.into(), id);
            n.keys.push(KeyName {
                api_key: api.into(),
                name: api.into(),
                next: NONE,
            });
        }
        n
    }

    /// Reserved entries do not count against the limits.
    fn tools_full(&self) -> bool {
        self.tools.len() >= self.max_tools.saturating_add(1) // + `(other)`
    }

    fn keys_full(&self) -> bool {
        self.keys.len() >= self.max_keys.saturating_add(2) // + the empty key and `(other)`
    }

    /// The tool's id when no write is needed.
    fn find_tool(&self, tool: &str) -> Option<u32> {
        match self.tool_ids.get(tool) {
            Some(&id) => Some(id),
            None if self.tools_full() => Some(OTHER_TOOL),
            None => None,
        }
    }

    /// The key's id when no write is needed: a known pair, the reserved ids (whatever the
    /// name), or `(other)` when full.
    fn find_key(&self, api_key: &str, name: &str) -> Option<u32> {
        let mut id = match self.key_ids.get(api_key) {
            Some(&id) if id <= OTHER_KEY => return Some(id),
            Some(&id) => id,
            None => NONE,
        };
        while let Some(k) = self.keys.get(id as usize) {
            if *k.name == *name {
                return Some(id);
            }
            id = k.next;
        }
        self.keys_full().then_some(OTHER_KEY)
    }

    fn tool_id(&mut self, tool: &str) -> u32 {
        if let Some(id) = self.find_tool(tool) {
            return id;
        }
        let id = self.tools.len() as u32;
        self.tools.push(tool.into());
        self.tool_ids.insert(tool.into(), id);
        id
    }

    fn key_id(&mut self, api_key: &str, name: &str) -> u32 {
        if let Some(id) = self.find_key(api_key, name) {
            return id;
        }
        let id = self.keys.len() as u32;
        let next = self.key_ids.insert(api_key.into(), id).unwrap_or(NONE);
        self.keys.push(KeyName {
            api_key: api_key.into(),
            name: name.into(),
            next,
        });
        id
    }

    fn key_api(&self, id: u32) -> &str {
        self.keys.get(id as usize).map_or(OTHER, |k| &k.api_key)
    }

    fn key_name(&self, id: u32) -> &str {
        self.keys.get(id as usize).map_or(OTHER, |k| &k.name)
    }
}

/// `s` cut to at most `max` characters (on a character boundary).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregates
// ---------------------------------------------------------------------------------------------

/// Calls, allowed calls and credits; denied = calls − allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    calls: u64,
    allowed: u64,
    credits: u64,
}

impl Counters {
    fn one(allowed: bool, credits: u64) -> Self {
        Self {
            calls: 1,
            allowed: u64::from(allowed),
            credits,
        }
    }

    fn add(&mut self, o: &Counters) {
        self.calls = self.calls.saturating_add(o.calls);
        self.allowed = self.allowed.saturating_add(o.allowed);
        self.credits = self.credits.saturating_add(o.credits);
    }

    fn denied(&self) -> u64 {
        self.calls.saturating_sub(self.allowed)
    }
}

/// Minute level: totals and a small list of per-tool counters.
#[derive(Default)]
struct MinuteBucket {
    totals: Counters,
    cells: Vec<(u32, Counters)>,
}

impl MinuteBucket {
    fn add(&mut self, tool: u32, c: &Counters) {
        self.totals.add(c);
        if let Some(cell) = self.cells.iter_mut().find(|(t, _)| *t == tool) {
            cell.1.add(c);
        } else if self.cells.len() < MINUTE_TOOL_CAP {
            self.cells.push((tool, *c));
        } else if let Some(cell) = self.cells.iter_mut().find(|(t, _)| *t == OTHER_TOOL) {
            cell.1.add(c);
        } else {
            self.cells.push((OTHER_TOOL, *c));
        }
    }
}

/// Per-key counters, dense (ids and counters in parallel vectors) for a fast merge.
#[derive(Default)]
struct KeyTable {
    /// Key id → position in `ids` / `counters`.
    pos: HashMap<u32, u32, IdHash>,
    ids: Vec<u32>,
    counters: Vec<Counters>,
}

impl KeyTable {
    fn add(&mut self, key: u32, c: &Counters) {
        let (ids, counters) = (&mut self.ids, &mut self.counters);
        let pos = *self.pos.entry(key).or_insert_with(|| {
            ids.push(key);
            counters.push(Counters::default());
            (counters.len() - 1) as u32
        });
        if let Some(kc) = self.counters.get_mut(pos as usize) {
            kc.add(c);
        }
    }
}

/// Hour and day level: totals, per-tool counters, per-key counters and per-(key, tool) call
/// counts (for the top tool).
#[derive(Default)]
struct Rollup {
    totals: Counters,
    tools: HashMap<u32, Counters, IdHash>,
    keys: KeyTable,
    /// `key << 32 | tool` → calls (the empty key, never a consumer, is left out).
    pairs: HashMap<u64, u64, IdHash>,
}

impl Rollup {
    fn add(&mut self, tool: u32, key: u32, c: &Counters) {
        self.totals.add(c);
        self.tools.entry(tool).or_default().add(c);
        self.keys.add(key, c);
        if key != ANON_KEY {
            let calls = self.pairs.entry(pair(key, tool)).or_default();
            *calls = calls.saturating_add(c.calls);
        }
    }
}

/// A contiguous run of buckets indexed by absolute bucket number.
struct Ring<T> {
    base: i64,
    items: VecDeque<T>,
}

impl<T: Default> Ring<T> {
    fn new() -> Self {
        Self {
            base: 0,
            items: VecDeque::new(),
        }
    }

    fn end(&self) -> i64 {
        self.base + self.items.len() as i64
    }

    /// The bucket `idx`, created (with empty buckets in between) when missing. The caller keeps
    /// `idx` within the retention window, which bounds the growth.
    fn slot(&mut self, idx: i64) -> &mut T {
        if self.items.is_empty() {
            self.base = idx;
            self.items.push_back(T::default());
        } else if idx < self.base {
            for _ in idx..self.base {
                self.items.push_front(T::default());
            }
            self.base = idx;
        } else if idx >= self.end() {
            for _ in self.end()..=idx {
                self.items.push_back(T::default());
            }
        }
        let i = (idx - self.base) as usize;
        &mut self.items[i]
    }

    /// Drops every bucket before `idx`.
    fn drop_before(&mut self, idx: i64) {
        if idx >= self.end() {
            self.items.clear();
            self.base = idx;
        } else {
            while self.base < idx && self.items.pop_front().is_some() {
                self.base += 1;
            }
        }
    }

    /// The first bucket in `[a, b)` that exists, with its index.
    fn first_in(&self, a: i64, b: i64) -> Option<(i64, &T)> {
        let lo = a.max(self.base);
        if lo >= b.min(self.end()) {
            return None;
        }
        self.items
            .get(usize::try_from(lo - self.base).ok()?)
            .map(|t| (lo, t))
    }
}

struct State {
    minutes: Ring<MinuteBucket>,
    hours: Ring<Rollup>,
    days: Ring<Rollup>,
    /// Per-key counters of 7-day blocks (epoch-aligned), only for blocks entirely within the
    /// retention: they cut the merge of per-key figures over long ranges.
    weeks: Ring<KeyTable>,
    retention_days: i64,
    newest_day: Option<i64>,
    /// The oldest day kept.
    cutoff_day: i64,
    recorded: u64,
    expired: u64,
    /// One past the largest key / tool id aggregated: the size of dense accumulators.
    key_slots: usize,
    tool_slots: usize,
    /// The dense per-key accumulator of reports, kept zeroed between them.
    scratch: Vec<[u64; 3]>,
}

impl State {
    fn new(retention_days: i64) -> Self {
        Self {
            minutes: Ring::new(),
            hours: Ring::new(),
            days: Ring::new(),
            weeks: Ring::new(),
            retention_days,
            newest_day: None,
            cutoff_day: i64::MIN,
            recorded: 0,
            expired: 0,
            key_slots: 0,
            tool_slots: 0,
            scratch: Vec::new(),
        }
    }

    fn add(&mut self, minute: i64, tool: u32, key: u32, c: Counters) {
        let day = minute.div_euclid(MINUTES_PER_DAY);
        if self.newest_day.is_none_or(|d| day > d) {
            self.newest_day = Some(day);
            self.cutoff_day = day - self.retention_days;
            self.prune();
        }
        if day < self.cutoff_day {
            self.expired += 1;
            return;
        }
        self.recorded += 1;
        self.key_slots = self.key_slots.max(key as usize + 1);
        self.tool_slots = self.tool_slots.max(tool as usize + 1);
        self.minutes.slot(minute).add(tool, &c);
        self.hours
            .slot(minute.div_euclid(MINUTES_PER_HOUR))
            .add(tool, key, &c);
        self.days.slot(day).add(tool, key, &c);
        let week = day.div_euclid(DAYS_PER_WEEK);
        if week >= self.first_week() {
            self.weeks.slot(week).add(key, &c);
        }
    }

    /// The first 7-day block entirely within the retention.
    fn first_week(&self) -> i64 {
        ceil_div(self.cutoff_day, DAYS_PER_WEEK)
    }

    /// Drops every bucket before the cutoff day, and the 7-day blocks it cuts into.
    fn prune(&mut self) {
        let cutoff = self.cutoff_day;
        self.minutes.drop_before(cutoff * MINUTES_PER_DAY);
        self.hours.drop_before(cutoff * HOURS_PER_DAY);
        self.days.drop_before(cutoff);
        self.weeks.drop_before(self.first_week());
    }
}

// ---------------------------------------------------------------------------------------------
// Report-time merging
// ---------------------------------------------------------------------------------------------

/// Merges buckets into a report's figures. Each method returns the work it did (counters
/// read), which decides when a [`Reader`] lets go of the lock.
trait Visitor {
    fn minute(&mut self, _m: &MinuteBucket) -> usize {
        0
    }
    fn rollup(&mut self, r: &Rollup) -> usize;
    fn week(&mut self, _t: &KeyTable) -> usize {
        0
    }
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

/// Which bucket level a [`Segment`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Minute,
    Hour,
    Day,
    Week,
}

/// The buckets `[a, b)` of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    level: Level,
    a: i64,
    b: i64,
}

fn push_segment(out: &mut Vec<Segment>, level: Level, a: i64, b: i64) {
    if a < b {
        out.push(Segment { level, a, b });
    }
}

/// The fewest buckets covering the minutes `[a, b)`: partial hours as minutes, partial days
/// as hours, whole days as days.
fn minute_segments(a: i64, b: i64, out: &mut Vec<Segment>) {
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
fn hour_segments(a: i64, b: i64, out: &mut Vec<Segment>) {
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
fn key_hour_segments(a: i64, b: i64, first_week: i64, out: &mut Vec<Segment>) {
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

/// Default work (counters read) a report does per hold of the aggregates' lock.
const REPORT_LOCK_BUDGET: usize = 4_096;

/// Reads the aggregates for a report in slices: it takes the lock when it needs it, and lets
/// go of it once a slice's budget of work is done, at a bucket boundary. A writer folding a
/// batch in therefore waits for at most one slice (or one bucket larger than the budget),
/// never for a whole report. Buckets are addressed by absolute index, so whatever was folded
/// in or pruned between two slices, the reader resumes at the right bucket.
struct Reader<'a> {
    engine: &'a AnalyticsEngine,
    guard: Option<parking_lot::MutexGuard<'a, State>>,
    spent: usize,
}

impl<'a> Reader<'a> {
    fn new(engine: &'a AnalyticsEngine) -> Self {
        Self {
            engine,
            guard: None,
            spent: 0,
        }
    }

    /// The aggregates, locked if they were not.
    fn state(&mut self) -> &mut State {
        let engine = self.engine;
        self.guard.get_or_insert_with(|| engine.state.lock())
    }

    /// Lets go of the lock, if held.
    fn release(&mut self) {
        self.spent = 0;
        if self.guard.take().is_some() {
            #[cfg(test)]
            if let Some(hook) = &*self.engine.on_release.lock() {
                hook(self.engine);
            }
        }
    }

    /// Feeds every bucket of `segments` to `v`, in order.
    fn walk(&mut self, segments: &[Segment], v: &mut impl Visitor) {
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

/// Per-tool counters, dense by tool id.
struct ToolsVisitor {
    acc: Vec<Counters>,
    touched: Vec<u32>,
}

impl ToolsVisitor {
    fn new(slots: usize) -> Self {
        Self {
            acc: vec![Counters::default(); slots],
            touched: Vec::new(),
        }
    }

    fn add(&mut self, tool: u32, c: &Counters) {
        // A tool first seen while the report runs: grow (ids stop at the tool limit).
        if tool as usize >= self.acc.len() {
            self.acc.resize(tool as usize + 1, Counters::default());
        }
        if let Some(a) = self.acc.get_mut(tool as usize) {
            if a.calls == 0 {
                self.touched.push(tool);
            }
            a.add(c);
        }
    }

    fn get(&self, tool: u32) -> Counters {
        self.acc.get(tool as usize).copied().unwrap_or_default()
    }
}

impl Visitor for ToolsVisitor {
    fn minute(&mut self, m: &MinuteBucket) -> usize {
        for (t, c) in &m.cells {
            self.add(*t, c);
        }
        m.cells.len()
    }
    fn rollup(&mut self, r: &Rollup) -> usize {
        for (t, c) in &r.tools {
            self.add(*t, c);
        }
        r.tools.len()
    }
}

/// Per-key counters, dense by key id (`[calls, allowed, credits]`). The accumulator is kept in
/// the engine between reports (all zero when idle), so a large key space is allocated and
/// paged in once, not per report.
struct KeysVisitor {
    acc: Vec<[u64; 3]>,
    touched: Vec<u32>,
}

impl KeysVisitor {
    fn new(mut acc: Vec<[u64; 3]>, slots: usize) -> Self {
        acc.resize(slots, [0; 3]);
        Self {
            acc,
            touched: Vec::new(),
        }
    }

    /// The keys touched (the empty key left out), resetting the accumulator to zero.
    fn drain_consumers(&mut self) -> Vec<Consumer> {
        let mut out = Vec::with_capacity(self.touched.len());
        for &key in &self.touched {
            if let Some(a) = self.acc.get_mut(key as usize) {
                if key != ANON_KEY {
                    out.push(Consumer {
                        key,
                        c: Counters {
                            calls: a[0],
                            allowed: a[1],
                            credits: a[2],
                        },
                    });
                }
                *a = [0; 3];
            }
        }
        self.touched.clear();
        out
    }
}

/// One key's totals over a report's range.
struct Consumer {
    key: u32,
    c: Counters,
}

/// A consumer with its `(apiKey, keyName)`.
type Named = (Consumer, (Box<str>, Box<str>));

/// Consumers ordered best first: credits desc, then calls desc.
fn by_numbers(a: &Consumer, b: &Consumer) -> std::cmp::Ordering {
    b.c.credits
        .cmp(&a.c.credits)
        .then(b.c.calls.cmp(&a.c.calls))
}

/// Consumers ordered best first: by numbers, then apiKey asc, keyName asc, id.
fn by_numbers_then_names(a: &Named, b: &Named) -> std::cmp::Ordering {
    by_numbers(&a.0, &b.0)
        .then_with(|| a.1.cmp(&b.1))
        .then(a.0.key.cmp(&b.0.key))
}

/// Names are copied out of the interning tables this many at a time, under one short hold of
/// the read lock each, so an event with a new name never waits for a whole report.
const NAME_CHUNK: usize = 4_096;

impl AnalyticsEngine {
    /// The `(apiKey, keyName)` of each key, in order; read in chunks.
    fn key_names(&self, ids: impl ExactSizeIterator<Item = u32>) -> Vec<(Box<str>, Box<str>)> {
        let mut out = Vec::with_capacity(ids.len());
        let mut ids = ids.peekable();
        while ids.peek().is_some() {
            let names = self.names.read();
            out.extend(
                ids.by_ref()
                    .take(NAME_CHUNK)
                    .map(|k| (names.key_api(k).into(), names.key_name(k).into())),
            );
        }
        out
    }

    /// Every tool name, by id; read in chunks (the table only grows, so a chunked copy is a
    /// prefix of it).
    fn tool_names(&self) -> Vec<Box<str>> {
        let mut out: Vec<Box<str>> = Vec::new();
        loop {
            let names = self.names.read();
            let from = out.len();
            let chunk = names.tools.get(from..).unwrap_or_default();
            if chunk.is_empty() {
                return out;
            }
            out.extend(chunk.iter().take(NAME_CHUNK).cloned());
        }
    }

    /// Keeps the `top_n` best consumers, sorted: credits desc, then calls desc, then apiKey
    /// and keyName asc; returns their names, in the same order.
    ///
    /// Selection is numeric first; names are looked up only for the consumers kept and those
    /// tied with the last one kept, so the usual cost is linear in the number of consumers
    /// without touching their names.
    fn select_top(&self, consumers: &mut Vec<Consumer>, top_n: usize) -> Vec<(Box<str>, Box<str>)> {
        if top_n == 0 {
            consumers.clear();
            return Vec::new();
        }
        let mut named: Vec<Named> = if consumers.len() > top_n {
            consumers.select_nth_unstable_by(top_n - 1, by_numbers);
            let last = &consumers[top_n - 1];
            let pivot = (last.c.credits, last.c.calls);
            let is_tie = |c: &Consumer| (c.c.credits, c.c.calls) == pivot;
            // Everything before the pivot is at least as good; keep those strictly better,
            // then fill up with the tied ones, best name first.
            let (kept, ties): (Vec<Consumer>, Vec<Consumer>) = consumers
                .drain(..)
                .enumerate()
                .filter(|(i, c)| *i < top_n || is_tie(c))
                .map(|(_, c)| c)
                .partition(|c| !is_tie(c));
            let need = top_n - kept.len();
            let mut ties = self.with_names(ties);
            if ties.len() > need {
                ties.select_nth_unstable_by(need - 1, by_numbers_then_names);
                ties.truncate(need);
            }
            let mut kept = self.with_names(kept);
            kept.append(&mut ties);
            kept
        } else {
            self.with_names(std::mem::take(consumers))
        };
        named.sort_unstable_by(by_numbers_then_names);
        let (kept, names) = named.into_iter().unzip();
        *consumers = kept;
        names
    }

    fn with_names(&self, consumers: Vec<Consumer>) -> Vec<Named> {
        let names = self.key_names(consumers.iter().map(|c| c.key));
        consumers.into_iter().zip(names).collect()
    }
}

impl Visitor for KeysVisitor {
    fn rollup(&mut self, r: &Rollup) -> usize {
        self.table(&r.keys)
    }
    fn week(&mut self, t: &KeyTable) -> usize {
        self.table(t)
    }
}

impl KeysVisitor {
    fn table(&mut self, t: &KeyTable) -> usize {
        for (&key, c) in t.ids.iter().zip(&t.counters) {
            // A key first seen while the report runs: grow (ids stop at the key limit).
            if key as usize >= self.acc.len() {
                self.acc.resize(key as usize + 1, [0; 3]);
            }
            if let Some(a) = self.acc.get_mut(key as usize) {
                if a[0] == 0 {
                    self.touched.push(key);
                }
                a[0] = a[0].saturating_add(c.calls);
                a[1] = a[1].saturating_add(c.allowed);
                a[2] = a[2].saturating_add(c.credits);
            }
        }
        t.ids.len()
    }
}

/// Per-(selected key, tool) calls, for the top tool of each selected consumer. In each bucket it
/// either probes the selected keys against the bucket's tools or scans the bucket's pairs,
/// whichever is fewer steps.
struct TopToolVisitor<'a> {
    selected: &'a [u32],
    /// Key id → position among the selected.
    slot_of: HashMap<u32, u32, IdHash>,
    /// Keyed by `position among the selected << 32 | tool`.
    calls: HashMap<u64, u64, IdHash>,
}

impl<'a> TopToolVisitor<'a> {
    fn new(selected: &'a [u32]) -> Self {
        Self {
            selected,
            slot_of: selected
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, i as u32))
                .collect(),
            calls: HashMap::default(),
        }
    }

    fn add(&mut self, slot: u32, tool: u32, calls: u64) {
        let e = self.calls.entry(pair(slot, tool)).or_default();
        *e = e.saturating_add(calls);
    }

    /// The most-called tool of each of the `n` selected consumers, by position (ties broken
    /// by name, then id).
    fn best_tools<'n>(&self, n: usize, name: &dyn Fn(u32) -> &'n str) -> Vec<Option<u32>> {
        let mut best: Vec<Option<(u64, u32)>> = vec![None; n];
        for (&p, &calls) in &self.calls {
            let tool = p as u32;
            let Some(b) = best.get_mut((p >> 32) as usize) else {
                continue;
            };
            let better = match *b {
                None => true,
                Some((bc, bt)) => {
                    calls > bc || (calls == bc && (name(tool), tool) < (name(bt), bt))
                }
            };
            if better {
                *b = Some((calls, tool));
            }
        }
        best.into_iter().map(|b| b.map(|(_, t)| t)).collect()
    }
}

impl Visitor for TopToolVisitor<'_> {
    fn rollup(&mut self, r: &Rollup) -> usize {
        let probes = self.selected.len().saturating_mul(r.tools.len());
        if probes <= r.pairs.len() {
            for (slot, &key) in self.selected.iter().enumerate() {
                if !r.keys.pos.contains_key(&key) {
                    continue;
                }
                for &tool in r.tools.keys() {
                    if let Some(&calls) = r.pairs.get(&pair(key, tool)) {
                        self.add(slot as u32, tool, calls);
                    }
                }
            }
        } else {
            for (&p, &calls) in &r.pairs {
                if let Some(&slot) = self.slot_of.get(&((p >> 32) as u32)) {
                    self.add(slot, p as u32, calls);
                }
            }
        }
        probes.min(r.pairs.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fast hasher for internal integer ids (not attacker-chosen, so no HashDoS concern).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        let m = u128::from(self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

type IdHash = BuildHasherDefault<IdHasher>;

/// Two ids packed in one map key (`a << 32 | b`).
fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// ⌈a / b⌉ for b > 0.
fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 {
        q
    } else {
        q + 1
    }
}

/// `num / den`, or `empty` when `den` is 0.
fn ratio(num: u64, den: u64, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
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
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ev(ts: DateTime<Utc>, key: &str, tool: &str, credits: u64, allowed: bool) -> UsageEvent {
        UsageEvent {
            timestamp: ts,
            api_key: key.to_string(),
            key_name: if key.is_empty() {
                String::new()
            } else {
                format!("name-{key}")
            },
            tool: tool.to_string(),
            credits_charged: credits,
            allowed,
            deny_reason: (!allowed).then(|| "insufficient_credits".to_string()),
            duration_ms: None,
        }
    }

    fn engine_at(now: &str) -> (Arc<ManualClock>, AnalyticsEngine) {
        let clock = Arc::new(ManualClock::at_rfc3339(now).unwrap());
        let engine = AnalyticsEngine::new(clock.clone());
        (clock, engine)
    }

    fn range(from: &str, to: &str, granularity: Granularity) -> ReportQuery {
        ReportQuery {
            from: Some(t(from)),
            to: Some(t(to)),
            granularity,
            top_n: 10,
        }
    }

    fn minutes(ms: i64) -> chrono::TimeDelta {
        chrono::TimeDelta::milliseconds(ms * MINUTE_MS)
    }

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
    fn tool_stats_success_rate_and_ordering() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:00Z");
        for _ in 0..3 {
            e.record(&ev(ts, "k1", "beta", 2, true));
        }
        e.record(&ev(ts, "k1", "beta", 0, false));
        for _ in 0..4 {
            e.record(&ev(ts, "k2", "alpha", 1, true));
        }
        for _ in 0..5 {
            e.record(&ev(ts, "k2", "gamma", 0, false));
        }
        let r = e
            .report(&range(
                "2026-03-01T00:00:00Z",
                "2026-03-02T00:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        let names: Vec<&str> = r.tools.iter().map(|t| t.tool.as_str()).collect();
        assert_eq!(names, ["gamma", "alpha", "beta"]); // calls desc, ties by name
        let beta = &r.tools[2];
        assert_eq!(
            (beta.calls, beta.allowed, beta.denied, beta.credits),
            (4, 3, 1, 6)
        );
        assert_eq!(beta.success_rate, 0.75);
        assert_eq!(beta.avg_credits_per_call, 2.0);
        let gamma = &r.tools[0];
        assert_eq!(gamma.success_rate, 0.0);
        assert_eq!(gamma.avg_credits_per_call, 0.0);
        assert_eq!(r.tools[1].success_rate, 1.0);
        assert_eq!(r.summary.unique_tools, 3);
        assert_eq!(r.summary.success_rate, 7.0 / 13.0);
    }

    #[test]
    fn top_consumers_order_top_tool_and_top_n() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:30:00Z");
        // k1: 10 credits; k2: 10 credits but more calls; k3: 30 credits; k4: 1 credit.
        for _ in 0..2 {
            e.record(&ev(ts, "k1", "x", 5, true));
        }
        for _ in 0..10 {
            e.record(&ev(ts, "k2", "y", 1, true));
        }
        e.record(&ev(ts, "k2", "x", 0, false));
        e.record(&ev(ts, "k3", "z", 30, true));
        e.record(&ev(ts, "k4", "b", 1, true));
        e.record(&ev(ts, "k4", "a", 0, false)); // top tool tie: a vs b → a
        for _ in 0..50 {
            e.record(&ev(ts, "", "x", 0, false)); // no key: not a consumer
        }
        let mut q = range(
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Granularity::Hourly,
        );
        let r = e.report(&q).unwrap();
        let order: Vec<&str> = r.top_consumers.iter().map(|c| c.api_key.as_str()).collect();
        assert_eq!(order, ["k3", "k2", "k1", "k4"]);
        let k2 = &r.top_consumers[1];
        assert_eq!(k2.key_name, "name-k2");
        assert_eq!((k2.calls, k2.credits, k2.denied), (11, 10, 1));
        assert_eq!(k2.top_tool, "y");
        assert_eq!(r.top_consumers[3].top_tool, "a");
        assert_eq!(r.summary.unique_keys, 4);
        assert_eq!(r.summary.total_calls, 66);

        q.top_n = 2;
        let r = e.report(&q).unwrap();
        let order: Vec<&str> = r.top_consumers.iter().map(|c| c.api_key.as_str()).collect();
        assert_eq!(order, ["k3", "k2"]);
        assert_eq!(r.summary.unique_keys, 4);

        q.top_n = 0;
        assert!(e.report(&q).unwrap().top_consumers.is_empty());
    }

    #[test]
    fn keys_with_the_same_display_form_are_told_apart_by_name() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:00Z");
        let mut a = ev(ts, "pg_1234...abcd", "x", 1, true);
        a.key_name = "alice".into();
        let mut b = ev(ts, "pg_1234...abcd", "y", 2, true);
        b.key_name = "bob".into();
        for _ in 0..3 {
            e.record(&a);
            e.record(&b);
        }
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.unique_keys, 2);
        let names: Vec<(&str, &str, u64, &str)> = r
            .top_consumers
            .iter()
            .map(|c| {
                (
                    c.api_key.as_str(),
                    c.key_name.as_str(),
                    c.credits,
                    c.top_tool.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("pg_1234...abcd", "bob", 6, "y"),
                ("pg_1234...abcd", "alice", 3, "x")
            ]
        );
        assert_eq!(e.stats().distinct_keys, 4);
    }

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

    #[test]
    fn consumers_at_unaligned_edges_cover_whole_hours() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        e.record(&ev(t("2026-03-01T10:05:00Z"), "early", "a", 1, true));
        e.record(&ev(t("2026-03-01T10:40:00Z"), "k1", "a", 1, true));
        let r = e
            .report(&range(
                "2026-03-01T10:30:00Z",
                "2026-03-01T11:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.summary.total_calls, 1); // exact to the minute
        assert_eq!(r.tools[0].calls, 1);
        assert_eq!(r.summary.unique_keys, 2); // whole hour 10:00-11:00
        assert_eq!(r.top_consumers.len(), 2);
    }

    #[test]
    fn retention_drops_old_buckets_and_late_events() {
        let clock = Arc::new(ManualClock::at_rfc3339("2026-03-20T00:00:00Z").unwrap());
        let e = AnalyticsEngine::with_config(
            clock,
            AnalyticsConfig {
                retention_days: 2,
                ..AnalyticsConfig::default()
            },
        );
        let old = range(
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Granularity::Hourly,
        );
        e.record(&ev(t("2026-03-01T10:00:00Z"), "k1", "a", 1, true));
        e.record(&ev(t("2026-03-03T10:00:00Z"), "k1", "a", 1, true)); // day 1 still kept
        assert_eq!(e.report(&old).unwrap().summary.total_calls, 1);
        e.record(&ev(t("2026-03-04T10:00:00Z"), "k1", "a", 1, true)); // day 1 now too old
        let r = e.report(&old).unwrap();
        assert_eq!(r.summary.total_calls, 0);
        assert!(r.top_consumers.is_empty() && r.tools.is_empty());
        // A late event for a dropped day is counted as expired, not aggregated.
        e.record(&ev(t("2026-03-01T11:00:00Z"), "k1", "a", 1, true));
        assert_eq!(e.report(&old).unwrap().summary.total_calls, 0);
        let s = e.stats();
        assert_eq!((s.recorded_events, s.expired_events), (3, 1));
        // Kept days still report.
        let kept = range(
            "2026-03-02T00:00:00Z",
            "2026-03-05T00:00:00Z",
            Granularity::Daily,
        );
        let r = e.report(&kept).unwrap();
        assert_eq!(r.summary.total_calls, 2);
        assert_eq!(r.top_consumers[0].calls, 2);
    }

    #[test]
    fn retention_bounds_the_buckets_held() {
        let clock = Arc::new(ManualClock::at_ms(0));
        let e = AnalyticsEngine::with_config(
            clock,
            AnalyticsConfig {
                retention_days: 3,
                ..AnalyticsConfig::default()
            },
        );
        let start = t("2026-01-01T00:00:00Z");
        for h in 0..(24 * 30) {
            e.record(&ev(start + chrono::TimeDelta::hours(h), "k", "a", 1, true));
        }
        let st = e.state.lock();
        assert!(st.weeks.items.len() <= 1, "{}", st.weeks.items.len());
        assert!(st.days.items.len() <= 4, "{}", st.days.items.len());
        assert!(st.hours.items.len() <= 4 * 24);
        assert!(st.minutes.items.len() <= 4 * 1440);
    }

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

    #[test]
    fn key_and_tool_overflow_goes_to_other() {
        let clock = Arc::new(ManualClock::at_rfc3339("2026-03-02T00:00:00Z").unwrap());
        let e = AnalyticsEngine::with_config(
            clock,
            AnalyticsConfig {
                max_keys: 3,
                max_tools: 2,
                ..AnalyticsConfig::default()
            },
        );
        let ts = t("2026-03-01T10:00:00Z");
        for i in 0..6 {
            e.record(&ev(ts, &format!("k{i}"), &format!("t{i}"), 1, true));
        }
        e.record(&ev(ts, "k0", "t0", 1, true)); // known ones still resolve
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.total_calls, 7);
        assert_eq!(r.summary.unique_keys, 4);
        let other = r.top_consumers.iter().find(|c| c.api_key == OTHER).unwrap();
        assert_eq!((other.calls, other.key_name.as_str()), (3, OTHER));
        assert_eq!(other.top_tool, OTHER);
        let k0 = r.top_consumers.iter().find(|c| c.api_key == "k0").unwrap();
        assert_eq!(k0.calls, 2);
        let tools: BTreeMap<&str, u64> =
            r.tools.iter().map(|t| (t.tool.as_str(), t.calls)).collect();
        assert_eq!(tools, BTreeMap::from([("t0", 2), ("t1", 1), (OTHER, 4)]));
        let s = e.stats();
        assert_eq!((s.distinct_keys, s.distinct_tools), (5, 3));
    }

    #[test]
    fn many_tools_in_one_minute_keep_totals_exact() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:30Z");
        for i in 0..300 {
            e.record(&ev(ts, "k1", &format!("tool-{i}"), 1, true));
        }
        // Minute-level query (unaligned) sees the cap; totals stay exact.
        let r = e
            .report(&range(
                "2026-03-01T10:00:00Z",
                "2026-03-01T10:01:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.summary.total_calls, 300);
        assert_eq!(r.tools.iter().map(|t| t.calls).sum::<u64>(), 300);
        assert_eq!(r.tools[0].tool, OTHER);
        // Hour-aligned query reads hour buckets: every tool by name.
        let r = e
            .report(&range(
                "2026-03-01T10:00:00Z",
                "2026-03-01T11:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.tools.len(), 300);
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
