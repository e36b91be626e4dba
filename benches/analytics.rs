//! `AnalyticsEngine::report` over a month of pre-aggregated usage.
//!
//! `cargo bench --bench analytics`. The setup (not timed by criterion) records 10,000,000
//! usage events spread evenly over the 30 days before the clock's time, from 1,000 keys
//! calling 20 tools, about 90% of them allowed and charged 1–5 credits; it prints how long
//! that took. The events are generated and recorded one by one, never collected, so the
//! process holds only the engine's aggregates. Under `cargo test --benches` (no `--bench`
//! argument) it records 100,000 events instead, to keep the test run short.
//!
//! The clock stops at an instant that is not on a minute, hour or day boundary, as "now"
//! usually is: every range then has partial minutes, hours and days at both ends.
//!
//! * `analytics/report_30d_daily`: the last 30 days, daily buckets, top 10 consumers.
//! * `analytics/report_24h_hourly`: the last 24 hours, hourly buckets, top 10 consumers.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use paygate_mcp::clock::ms_to_datetime;
use paygate_mcp::{AnalyticsEngine, Clock, Granularity, ManualClock, ReportQuery, UsageEvent};

/// Events recorded for `cargo bench`.
const BENCH_EVENTS: u64 = 10_000_000;
/// Events recorded under `cargo test --benches`.
const TEST_EVENTS: u64 = 100_000;
const KEYS: usize = 1_000;
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// The clock's time: the end of the recorded data.
const NOW: &str = "2026-03-31T14:37:21.500Z";

const TOOLS: [&str; 20] = [
    "search",
    "fetch",
    "summarize",
    "translate",
    "embed",
    "rank",
    "classify",
    "extract",
    "ocr",
    "transcribe",
    "speak",
    "chart",
    "sql_query",
    "geocode",
    "weather",
    "calendar",
    "send_email",
    "create_issue",
    "read_file",
    "write_file",
];

/// SplitMix64: a small deterministic generator, so every run records the same events.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `KEYS` distinct (masked key, key name) pairs, shaped like the gate's `pg_0123...cdef`.
fn keys(rng: &mut SplitMix) -> Vec<(String, String)> {
    (0..KEYS)
        .map(|i| {
            let r = rng.next();
            (
                format!("pg_{:04x}...{:04x}", r & 0xffff, (r >> 16) & 0xffff),
                format!("customer-{i:04}"),
            )
        })
        .collect()
}

/// Records `n` events spread evenly over the `DAYS` days before `now_ms`; returns the time
/// it took.
fn record_month(engine: &AnalyticsEngine, now_ms: i64, n: u64) -> std::time::Duration {
    let mut rng = SplitMix(0x5eed);
    let keys = keys(&mut rng);
    let span_ms = DAYS * DAY_MS;
    let start_ms = now_ms - span_ms;
    let n_i = i64::try_from(n).expect("event count fits in i64");
    // One event, overwritten in place for each call, so the loop allocates nothing. The
    // engine does not read `deny_reason` or `duration_ms`.
    let mut event = UsageEvent {
        timestamp: ms_to_datetime(start_ms),
        api_key: String::with_capacity(16),
        key_id: None,
        key_name: String::with_capacity(16),
        tool: String::with_capacity(16),
        credits_charged: 0,
        allowed: true,
        deny_reason: None,
        duration_ms: None,
    };
    let started = Instant::now();
    for i in 0..n_i {
        let r = rng.next();
        let (api_key, key_name) = &keys[(r % KEYS as u64) as usize];
        let tool = TOOLS[((r >> 16) % TOOLS.len() as u64) as usize];
        let allowed = !(r >> 32).is_multiple_of(10);
        event.timestamp = ms_to_datetime(start_ms + i * span_ms / n_i);
        event.api_key.clone_from(api_key);
        event.key_name.clone_from(key_name);
        event.tool.clear();
        event.tool.push_str(tool);
        event.allowed = allowed;
        event.credits_charged = if allowed { 1 + (r >> 40) % 5 } else { 0 };
        engine.record(&event);
    }
    started.elapsed()
}

fn query(now: DateTime<Utc>, back: TimeDelta, granularity: Granularity) -> ReportQuery {
    ReportQuery {
        from: Some(now - back),
        to: Some(now),
        granularity,
        top_n: 10,
    }
}

fn bench(c: &mut Criterion) {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n = if benchmarking {
        BENCH_EVENTS
    } else {
        TEST_EVENTS
    };
    let clock = Arc::new(ManualClock::at_rfc3339(NOW).expect("valid instant"));
    let now = clock.now();
    let engine = AnalyticsEngine::new(clock.clone());

    let took = record_month(&engine, clock.now_ms(), n);
    println!(
        "analytics setup: recorded {n} events ({KEYS} keys, {} tools, {DAYS} days) in {:.2} s, \
         {:.0} ns/event",
        TOOLS.len(),
        took.as_secs_f64(),
        took.as_nanos() as f64 / n as f64,
    );

    let month = query(now, TimeDelta::days(DAYS), Granularity::Daily);
    let day = query(now, TimeDelta::hours(24), Granularity::Hourly);

    // The aggregates hold what was recorded.
    let stats = engine.stats();
    assert_eq!((stats.recorded_events, stats.expired_events), (n, 0));
    let r = engine.report(&month).expect("report");
    assert_eq!(r.summary.total_calls, n);
    assert_eq!(r.summary.unique_tools, TOOLS.len() as u64);
    assert_eq!(r.summary.unique_keys, KEYS as u64);
    assert_eq!(r.time_series.len(), DAYS as usize);
    assert_eq!(r.top_consumers.len(), 10);
    let r = engine.report(&day).expect("report");
    assert_eq!(r.time_series.len(), 24);
    assert!(r.summary.total_calls > 0);

    let mut group = c.benchmark_group("analytics");
    group.bench_function("report_30d_daily", |b| {
        b.iter(|| engine.report(black_box(&month)).expect("report"))
    });
    group.bench_function("report_24h_hourly", |b| {
        b.iter(|| engine.report(black_box(&day)).expect("report"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
