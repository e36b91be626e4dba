//! The log's summary for `GET /audit/stats`: counts by type, oldest and newest timestamps,
//! limits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::AuditLog;

/// A summary of the log, for `GET /audit/stats`.
///
/// `total_events` and `events_by_type` count every ring together; `capacity` is the bound of
/// each of the four rings (see the [module docs](super)), so at most `4 × capacity` events are
/// held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditStats {
    /// Events held now.
    pub total_events: usize,
    /// Events held now, by type.
    pub events_by_type: BTreeMap<String, usize>,
    /// Timestamp of the oldest event held.
    pub oldest_event: Option<DateTime<Utc>>,
    /// Timestamp of the newest event held.
    pub newest_event: Option<DateTime<Utc>>,
    /// Most events held in each of the log's four rings (admin trail, gate decisions of real
    /// keys, failed admin logins, keyless calls).
    pub capacity: usize,
    /// Age in days after which events are dropped (0 = no age limit).
    pub max_age_days: u32,
}

impl AuditLog {
    /// A summary: counts by type, oldest and newest timestamps, limits. Costs the number of
    /// distinct types, not the number of events.
    pub fn stats(&self) -> AuditStats {
        let ring = self.pruned();
        AuditStats {
            total_events: ring.len(),
            events_by_type: ring.by_type.clone(),
            oldest_event: ring.oldest_first().next().map(Entry::timestamp),
            newest_event: ring.newest_first().next().map(Entry::timestamp),
            capacity: self.capacity,
            max_age_days: self.max_age_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::test_support::{log_at, T0};

    #[test]
    fn stats_count_by_type_and_follow_eviction() {
        let (clock, log) = log_at(T0);
        let log = log.with_capacity(4);
        for t in ["a", "b", "a", "c", "a"] {
            log.record(t, "x", "", json!({}));
            clock.advance_secs(1);
        }
        let s = log.stats();
        assert_eq!(s.total_events, 4);
        let expected: BTreeMap<String, usize> = [
            ("a".to_string(), 2),
            ("b".to_string(), 1),
            ("c".to_string(), 1),
        ]
        .into();
        assert_eq!(s.events_by_type, expected);
        assert_eq!(
            s.oldest_event,
            Some(crate::clock::ms_to_datetime(T0 + 1_000))
        );
        assert_eq!(
            s.newest_event,
            Some(crate::clock::ms_to_datetime(T0 + 4_000))
        );
    }
}
