//! Helpers shared by the analytics unit tests: timestamps, usage events, engines and queries.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{AnalyticsEngine, Granularity, ReportQuery, MINUTE_MS};
use crate::clock::ManualClock;
use crate::meter::UsageEvent;

pub(super) fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub(super) fn ev(
    ts: DateTime<Utc>,
    key: &str,
    tool: &str,
    credits: u64,
    allowed: bool,
) -> UsageEvent {
    UsageEvent {
        timestamp: ts,
        api_key: key.to_string(),
        key_id: None,
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

pub(super) fn engine_at(now: &str) -> (Arc<ManualClock>, AnalyticsEngine) {
    let clock = Arc::new(ManualClock::at_rfc3339(now).unwrap());
    let engine = AnalyticsEngine::new(clock.clone());
    (clock, engine)
}

pub(super) fn range(from: &str, to: &str, granularity: Granularity) -> ReportQuery {
    ReportQuery {
        from: Some(t(from)),
        to: Some(t(to)),
        granularity,
        top_n: 10,
    }
}

pub(super) fn minutes(ms: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(ms * MINUTE_MS)
}
