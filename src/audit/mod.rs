//! The audit log: a bounded, age-limited ring of who did what, for `GET /audit`,
//! `GET /audit/export` and `GET /audit/stats`.
//!
//! [`AuditLog`] keeps at most `capacity` events (default 10,000) and none older than
//! `max_age_days` (default 30). Time comes from the crate's [`Clock`](crate::Clock), so tests
//! move a [`ManualClock`](crate::ManualClock) instead of sleeping. It is also an
//! [`EventSink`]: hand it to [`Gate::with_event_sink`](crate::Gate::with_event_sink) and every
//! gate decision (`gate.allow`, `gate.deny`) and admin event is recorded.
//!
//! Event types recorded by the product: `key.created`, `key.revoked`, `key.rotated`,
//! `key.topup`, `key.acl_updated`, `key.expiry_updated`, `key.quota_updated`,
//! `key.limit_updated`, `key.tags_updated`, `key.ip_updated`, `gate.allow`, `gate.deny`,
//! `admin.auth_failed`, `admin.alerts_configured`, `billing.refund`, `key.expired`,
//! `alert.fired`.
//!
//! # Floods cannot evict the admin trail
//!
//! Events are kept in four bounded rings, each holding at most `capacity` events:
//!
//! * the **admin trail**: `key.*`, `admin.*` other than `admin.auth_failed`, `alert.*` and
//!   any other type;
//! * **calls** of real keys: `gate.*` and `billing.*` events whose actor is a key;
//! * **failed admin logins**: `admin.auth_failed`;
//! * **keyless calls**: `gate.*` and `billing.*` events without a key (a missing or unknown
//!   key, which the gate reports with an empty actor).
//!
//! So no number of failed admin logins or keyless calls can push a `key.created` out of the
//! log, nor a real key's `gate.allow`, and a flood of keyless calls cannot hide earlier
//! attempts at the admin key: each flood only rotates its own ring. Queries, exports and
//! stats see one merged view, ordered by id (which is also time order). Every stored string
//! is cut to a bound, so the memory held is bounded by `4 × capacity` events of bounded size.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{SharedClock, SystemClock};
use crate::key::redact_full_keys;
#[cfg(doc)]
use crate::meter::EventSink;

mod entry;
mod export;
mod query;
mod rings;
mod sanitize;
mod sink;
mod stats;
#[cfg(test)]
mod test_support;

pub(crate) use export::neutralize_formula;
pub use query::{AuditPage, AuditQuery};
pub use stats::AuditStats;

use entry::{Decision, Entry};
use rings::{Class, Rings};
use sanitize::{sanitize_value, truncate};

/// Default number of events the log holds.
pub const DEFAULT_AUDIT_CAPACITY: usize = 10_000;
/// Default age, in days, after which an event is dropped.
pub const DEFAULT_AUDIT_MAX_AGE_DAYS: u32 = 30;
/// Default page size of [`AuditLog::query`].
pub const DEFAULT_AUDIT_QUERY_LIMIT: usize = 100;
/// Largest page size of [`AuditLog::query`].
pub const MAX_AUDIT_QUERY_LIMIT: usize = 1_000;

/// Longest event type or actor stored, in characters; longer text is cut.
pub const MAX_AUDIT_LABEL_CHARS: usize = 256;
/// Longest message, or string inside metadata, stored, in characters; longer text is cut.
pub const MAX_AUDIT_TEXT_CHARS: usize = 1_024;

const DAY_MS: i64 = 86_400_000;

/// One audit event.
///
/// Serialized in camelCase, with the event type under `"type"`:
///
/// ```
/// use paygate_mcp::AuditEvent;
/// let e = AuditEvent {
///     id: 1,
///     timestamp: "2026-01-01T00:00:00Z".parse().unwrap(),
///     event_type: "key.created".into(),
///     actor: "admin".into(),
///     message: "API key created".into(),
///     metadata: serde_json::json!({"name": "alice"}),
/// };
/// let v = serde_json::to_value(&e).unwrap();
/// assert_eq!(v["type"], "key.created");
/// assert_eq!(v["metadata"]["name"], "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Position in the log: strictly increasing, never reused.
    pub id: u64,
    /// When the event was recorded. Never earlier than the previous event's timestamp.
    pub timestamp: DateTime<Utc>,
    /// The event type, e.g. `key.created` or `gate.deny`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Who caused it: `"system"`, `"admin"`, or a masked API key.
    pub actor: String,
    /// A human-readable summary.
    pub message: String,
    /// Type-specific details (never a full API key).
    pub metadata: Value,
}

/// A bounded, thread-safe log of audit events with age-based retention, kept in four rings
/// so floods of unauthenticated noise cannot evict the admin trail (see the
/// [module docs](self)).
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{AuditLog, AuditQuery, ManualClock};
///
/// let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
/// let log = AuditLog::new(clock.clone()).with_capacity(1_000).with_max_age_days(7);
/// log.record("key.created", "admin", "API key created", serde_json::json!({"name": "alice"}));
/// clock.advance_secs(60);
/// log.record("key.topup", "admin", "Credits added", serde_json::json!({"creditsAdded": 50}));
///
/// let page = log.query(&AuditQuery { types: vec!["key.topup".into()], ..Default::default() });
/// assert_eq!(page.total, 1);
/// assert_eq!(page.events[0].metadata["creditsAdded"], 50);
///
/// clock.advance_secs(8 * 86_400); // both events are now older than 7 days
/// assert_eq!(log.stats().total_events, 0);
/// ```
pub struct AuditLog {
    ring: Mutex<Rings>,
    clock: SharedClock,
    capacity: usize,
    max_age_days: u32,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("len", &self.ring.lock().len())
            .field("capacity", &self.capacity)
            .field("max_age_days", &self.max_age_days)
            .finish()
    }
}

impl Default for AuditLog {
    /// A log with the default limits, on the system clock.
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl AuditLog {
    /// A log holding at most 10,000 events of each class for at most 30 days, reading time
    /// from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            ring: Mutex::new(Rings::default()),
            clock,
            capacity: DEFAULT_AUDIT_CAPACITY,
            max_age_days: DEFAULT_AUDIT_MAX_AGE_DAYS,
        }
    }

    /// Sets the most events held in each ring (at least 1): the admin trail, the gate
    /// decisions of real keys, the failed admin logins and the keyless calls each keep this
    /// many. An event beyond it drops the oldest of its own ring.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self.ring.lock().truncate(self.capacity);
        self
    }

    /// Sets the age in days after which events are dropped; 0 keeps events regardless of age.
    pub fn with_max_age_days(mut self, days: u32) -> Self {
        self.max_age_days = days;
        self
    }

    /// Most events held in each ring (so at most four times this in all).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Age in days after which events are dropped (0 = no age limit).
    pub fn max_age_days(&self) -> u32 {
        self.max_age_days
    }

    /// Events held now (expired ones are dropped first).
    pub fn len(&self) -> usize {
        self.pruned().len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an event stamped with the clock's time and returns its id.
    ///
    /// Anything that looks like a full API key in `actor`, `message` or `metadata` is masked
    /// before it is stored, so an export never reveals one. Text is cut to bound memory:
    /// type and actor at [`MAX_AUDIT_LABEL_CHARS`], the message and each string in
    /// `metadata` at [`MAX_AUDIT_TEXT_CHARS`] (a cut ends with `…`); `metadata` keeps at
    /// most 100 entries per array or object, 8 levels of nesting and about 8 KiB of text.
    /// An event stored therefore has a small, constant size whatever it was given.
    pub fn record(
        &self,
        event_type: impl Into<String>,
        actor: impl Into<String>,
        message: impl Into<String>,
        metadata: Value,
    ) -> u64 {
        let event_type = truncate(event_type.into(), MAX_AUDIT_LABEL_CHARS);
        let actor = truncate(
            redact_full_keys(&actor.into()).into_owned(),
            MAX_AUDIT_LABEL_CHARS,
        );
        let message = truncate(
            redact_full_keys(&message.into()).into_owned(),
            MAX_AUDIT_TEXT_CHARS,
        );
        let metadata = sanitize_value(&metadata);
        let class = Class::of(&event_type, &actor);
        self.push(class, |id, ms| {
            Entry::Event(AuditEvent {
                id,
                timestamp: crate::clock::ms_to_datetime(ms),
                event_type,
                actor,
                message,
                metadata,
            })
        })
    }

    /// Records a gate decision in its compact form (see [`Entry`]).
    fn record_decision(&self, decision: Decision) -> u64 {
        let class = Class::of(decision.event_type(), &decision.actor);
        self.push(class, |id, ms| Entry::Decision { id, ms, decision })
    }

    /// Adds the entry `make` builds from its id and time to `class`'s ring, first dropping
    /// what is too old and, when the ring is full, its oldest.
    fn push(&self, class: Class, make: impl FnOnce(u64, i64) -> Entry) -> u64 {
        let class = class as usize;
        let now_ms = self.clock.now_ms();
        let mut ring = self.ring.lock();
        // Keep the rings in timestamp order even if the clock steps back.
        let ms = ring.newest_ms.map_or(now_ms, |newest| newest.max(now_ms));
        if let Some(cutoff) = self.cutoff_ms(ms) {
            ring.prune_older_than(cutoff);
        }
        while ring.rings[class].len() >= self.capacity {
            ring.pop_oldest(class);
        }
        ring.next_id = ring.next_id.saturating_add(1);
        let id = ring.next_id;
        ring.newest_ms = Some(ms);
        let entry = make(id, ms);
        match ring.by_type.get_mut(entry.event_type()) {
            Some(n) => *n += 1,
            None => {
                ring.by_type.insert(entry.event_type().to_string(), 1);
            }
        }
        ring.rings[class].push_back(entry);
        id
    }

    /// Drops every event (ids keep increasing).
    pub fn clear(&self) {
        let mut ring = self.ring.lock();
        ring.rings.iter_mut().for_each(VecDeque::clear);
        ring.by_type.clear();
    }

    fn cutoff_ms(&self, now_ms: i64) -> Option<i64> {
        (self.max_age_days > 0)
            .then(|| now_ms.saturating_sub(i64::from(self.max_age_days).saturating_mul(DAY_MS)))
    }

    /// Locks the ring after dropping expired events.
    fn pruned(&self) -> parking_lot::MutexGuard<'_, Rings> {
        let now_ms = self.clock.now_ms();
        let mut ring = self.ring.lock();
        if let Some(cutoff) = self.cutoff_ms(now_ms) {
            ring.prune_older_than(cutoff);
        }
        ring
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_support::{log_at, T0};
    use super::*;

    #[test]
    fn defaults_are_ten_thousand_events_and_thirty_days() {
        let (_, log) = log_at(T0);
        let s = log.stats();
        assert_eq!((s.capacity, s.max_age_days), (10_000, 30));
        assert_eq!(s.total_events, 0);
        assert_eq!((s.oldest_event, s.newest_event), (None, None));
        assert!(log.is_empty());
    }

    #[test]
    fn ids_increase_and_survive_eviction() {
        let (_, log) = log_at(T0);
        let log = log.with_capacity(3);
        let ids: Vec<u64> = (0..5)
            .map(|i| log.record("key.topup", "admin", format!("#{i}"), json!({})))
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let kept: Vec<u64> = log.export().iter().map(|e| e.id).collect();
        assert_eq!(kept, [3, 4, 5]);
        log.clear();
        assert_eq!(log.record("key.topup", "admin", "", json!({})), 6);
    }

    #[test]
    fn capacity_is_at_least_one() {
        let (_, log) = log_at(T0);
        let log = log.with_capacity(0);
        log.record("a", "x", "", json!(null));
        log.record("b", "x", "", json!(null));
        assert_eq!(log.len(), 1);
        assert_eq!(log.export()[0].event_type, "b");
    }

    #[test]
    fn events_older_than_max_age_are_dropped() {
        let (clock, log) = log_at(T0);
        let log = log.with_max_age_days(2);
        log.record("old", "x", "", json!({}));
        clock.advance_secs(86_400);
        log.record("mid", "x", "", json!({}));
        clock.advance_secs(86_400); // "old" is exactly 2 days old: kept
        assert_eq!(log.len(), 2);
        clock.advance_ms(1);
        assert_eq!(log.len(), 1);
        let s = log.stats();
        assert_eq!(s.events_by_type.get("old"), None);
        assert_eq!(s.events_by_type.get("mid"), Some(&1));
        assert_eq!(
            s.oldest_event,
            Some(crate::clock::ms_to_datetime(T0 + DAY_MS))
        );
        clock.advance_secs(86_400);
        assert!(log.export().is_empty());
        assert!(log.stats().events_by_type.is_empty());
    }

    #[test]
    fn zero_max_age_keeps_events_forever() {
        let (clock, log) = log_at(T0);
        let log = log.with_max_age_days(0);
        log.record("a", "x", "", json!({}));
        clock.advance_secs(10 * 365 * 86_400);
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn a_clock_stepping_back_does_not_reorder_the_log() {
        let (clock, log) = log_at(T0);
        log.record("a", "x", "", json!({}));
        clock.advance_secs(-3_600);
        log.record("b", "x", "", json!({}));
        let events = log.export();
        assert_eq!(events[0].timestamp, events[1].timestamp);
        assert!(events[0].id < events[1].id);
    }

    #[test]
    fn events_serialize_in_camel_case_with_type() {
        let (_, log) = log_at(T0);
        log.record("key.created", "admin", "m", json!({"a": 1}));
        let v = serde_json::to_value(log.export()).unwrap();
        assert_eq!(
            v,
            json!([{"id": 1, "timestamp": "2026-01-01T00:00:00Z", "type": "key.created",
                    "actor": "admin", "message": "m", "metadata": {"a": 1}}])
        );
        let s = serde_json::to_value(log.stats()).unwrap();
        assert_eq!(s["totalEvents"], 1);
        assert_eq!(s["eventsByType"]["key.created"], 1);
        assert_eq!(s["maxAgeDays"], 30);
        assert_eq!(s["oldestEvent"], "2026-01-01T00:00:00Z");
        let p = serde_json::to_value(log.query(&AuditQuery::default())).unwrap();
        assert_eq!(p["total"], 1);
        let back: Vec<AuditEvent> = serde_json::from_value(v).unwrap();
        assert_eq!(back, log.export());
    }

    #[test]
    fn concurrent_records_get_unique_ids() {
        let (_, log) = log_at(T0);
        let log = Arc::new(log.with_capacity(100_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        log.record("gate.allow", "x", "", json!({}));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ids: Vec<u64> = log.export().iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=4_000).collect::<Vec<u64>>());
    }
}
