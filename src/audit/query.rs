//! Querying the log: the filter of `GET /audit`, a page of results, and the newest-first walk
//! that fills it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::{AuditEvent, AuditLog, DEFAULT_AUDIT_QUERY_LIMIT, MAX_AUDIT_QUERY_LIMIT};

/// A filter for [`AuditLog::query`]. Every field is optional; the default matches every
/// event and returns the newest 100.
///
/// ```
/// use paygate_mcp::AuditQuery;
/// let q: AuditQuery = serde_json::from_str(r#"{"types": ["gate.deny"], "limit": 5}"#).unwrap();
/// assert_eq!(q.types, ["gate.deny"]);
/// assert_eq!(q.actor, None);
/// assert_eq!(AuditQuery::default().limit, 100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuditQuery {
    /// Event types to keep; empty keeps every type.
    pub types: Vec<String>,
    /// Keep only events by this actor (exact match).
    pub actor: Option<String>,
    /// Keep only events at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Keep only events at or before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Most events returned (default 100, at most 1,000; 0 returns only the count).
    pub limit: usize,
    /// Matching events skipped first (newest first), to page through the log.
    pub offset: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            actor: None,
            since: None,
            until: None,
            limit: DEFAULT_AUDIT_QUERY_LIMIT,
            offset: 0,
        }
    }
}

impl AuditQuery {
    /// Whether `event` passes every filter (the limit aside).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.passes(&event.event_type, &event.actor, || event.timestamp)
    }

    fn passes(&self, event_type: &str, actor: &str, at: impl Fn() -> DateTime<Utc>) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.actor.as_ref().is_none_or(|a| a == actor)
            && self.since.is_none_or(|s| at() >= s)
            && self.until.is_none_or(|u| at() <= u)
    }
}

/// One page of [`AuditLog::query`] results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// Matching events, newest first, at most the query's limit.
    pub events: Vec<AuditEvent>,
    /// How many events matched before the limit was applied.
    pub total: usize,
}

impl AuditLog {
    /// Events matching `query`, newest first, with the number that matched before the limit.
    pub fn query(&self, query: &AuditQuery) -> AuditPage {
        let limit = query.limit.min(MAX_AUDIT_QUERY_LIMIT);
        let ring = self.pruned();
        let mut page = Vec::with_capacity(limit.min(ring.len()));
        let mut total = 0;
        let matching = ring
            .newest_first()
            .filter(|e| query.passes(e.event_type(), e.actor(), || e.timestamp()));
        for entry in matching {
            total += 1;
            if total > query.offset && page.len() < limit {
                page.push(entry.clone());
            }
        }
        // Rendered after the lock goes, so gated calls never wait for it.
        drop(ring);
        let events = page.iter().map(Entry::to_event).collect();
        AuditPage { events, total }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::test_support::{log_at, T0};

    #[test]
    fn query_filters_newest_first_and_counts_before_the_limit() {
        let (clock, log) = log_at(T0);
        for i in 0..10 {
            let t = if i % 2 == 0 {
                "gate.allow"
            } else {
                "gate.deny"
            };
            let actor = if i < 5 {
                "pg_aaaa...1111"
            } else {
                "pg_bbbb...2222"
            };
            log.record(t, actor, format!("#{i}"), json!({"i": i}));
            clock.advance_secs(60);
        }
        let all = log.query(&AuditQuery::default());
        assert_eq!(all.total, 10);
        assert_eq!(all.events.first().map(|e| e.id), Some(10));
        assert_eq!(all.events.last().map(|e| e.id), Some(1));

        let denies = log.query(&AuditQuery {
            types: vec!["gate.deny".into()],
            limit: 2,
            ..Default::default()
        });
        assert_eq!(denies.total, 5);
        let ids: Vec<u64> = denies.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [10, 8]);

        let by_actor = log.query(&AuditQuery {
            actor: Some("pg_aaaa...1111".into()),
            ..Default::default()
        });
        assert_eq!(by_actor.total, 5);

        let since = crate::clock::ms_to_datetime(T0 + 3 * 60_000);
        let until = crate::clock::ms_to_datetime(T0 + 5 * 60_000);
        let window = log.query(&AuditQuery {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        });
        let ids: Vec<u64> = window.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [6, 5, 4], "since and until are inclusive");

        let several = log.query(&AuditQuery {
            types: vec!["gate.allow".into(), "gate.deny".into()],
            ..Default::default()
        });
        assert_eq!(several.total, 10);
    }

    #[test]
    fn query_limit_is_capped_and_zero_counts_only() {
        let (_, log) = log_at(T0);
        for _ in 0..1_500 {
            log.record("gate.allow", "x", "", json!({}));
        }
        let big = log.query(&AuditQuery {
            limit: usize::MAX,
            ..Default::default()
        });
        assert_eq!((big.events.len(), big.total), (1_000, 1_500));
        let none = log.query(&AuditQuery {
            limit: 0,
            ..Default::default()
        });
        assert_eq!((none.events.len(), none.total), (0, 1_500));
    }
}
