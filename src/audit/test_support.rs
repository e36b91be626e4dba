//! Helpers shared by the audit log's unit tests: a log on a manual clock, usage events, and
//! CSV and size measures of what was stored.

use std::sync::Arc;

use super::{AuditEvent, AuditLog};
use crate::clock::ManualClock;
use crate::meter::UsageEvent;

pub(super) const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub(super) fn log_at(ms: i64) -> (Arc<ManualClock>, AuditLog) {
    let clock = Arc::new(ManualClock::at_ms(ms));
    (clock.clone(), AuditLog::new(clock))
}

pub(super) fn usage(allowed: bool, reason: Option<&str>) -> UsageEvent {
    UsageEvent {
        timestamp: crate::clock::ms_to_datetime(T0),
        api_key: "pg_1234...abcd".into(),
        key_id: None,
        key_name: "alice".into(),
        tool: "search".into(),
        credits_charged: if allowed { 3 } else { 0 },
        allowed,
        deny_reason: reason.map(str::to_string),
        duration_ms: None,
    }
}

pub(super) fn parse_csv(text: &str) -> Vec<Vec<String>> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// Bytes an event holds in its text, roughly what it costs in memory beyond its fixed
/// size.
pub(super) fn event_bytes(e: &AuditEvent) -> usize {
    e.event_type.len() + e.actor.len() + e.message.len() + e.metadata.to_string().len()
}
