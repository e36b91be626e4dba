//! The four rings the log keeps events in (admin trail, calls of real keys, failed admin
//! logins, keyless calls), so a flood of one class only evicts its own, and their merge into
//! one time-ordered view.

use std::collections::{BTreeMap, VecDeque};

use super::entry::Entry;

/// Which ring an event is kept in; a flood of one class only evicts events of that class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// `key.*`, `admin.*` (but `admin.auth_failed`) and every other type.
    Trail = 0,
    /// `gate.*` and `billing.*` events of a real key.
    Gate = 1,
    /// `admin.auth_failed`.
    AuthFailed = 2,
    /// `gate.*` and `billing.*` events without a key (empty actor).
    Keyless = 3,
}

const CLASSES: usize = 4;

impl Class {
    pub(super) fn of(event_type: &str, actor: &str) -> Self {
        if event_type == "admin.auth_failed" {
            Class::AuthFailed
        } else if event_type.starts_with("gate.") || event_type.starts_with("billing.") {
            // Refunds come from calls, as many as a key holder makes fail: they live with the
            // calls, never in the admin trail they could otherwise push out.
            if actor.is_empty() {
                Class::Keyless
            } else {
                Class::Gate
            }
        } else {
            Class::Trail
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Rings {
    /// One ring per [`Class`], each in id (and so timestamp) order.
    pub(super) rings: [VecDeque<Entry>; CLASSES],
    /// Events held, by type, over every ring.
    pub(super) by_type: BTreeMap<String, usize>,
    pub(super) next_id: u64,
    pub(super) newest_ms: Option<i64>,
}

impl Rings {
    pub(super) fn len(&self) -> usize {
        self.rings.iter().map(VecDeque::len).sum()
    }

    pub(super) fn pop_oldest(&mut self, class: usize) {
        let Some(old) = self.rings.get_mut(class).and_then(VecDeque::pop_front) else {
            return;
        };
        let event_type = old.event_type();
        if let Some(n) = self.by_type.get_mut(event_type) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_type.remove(event_type);
            }
        }
    }

    /// Drops events older than `cutoff_ms`. Each ring is in timestamp order, so this only
    /// looks at the fronts: each event is examined once when it expires, never rescanned.
    pub(super) fn prune_older_than(&mut self, cutoff_ms: i64) {
        for class in 0..CLASSES {
            while self.rings[class]
                .front()
                .is_some_and(|e| e.ms() < cutoff_ms)
            {
                self.pop_oldest(class);
            }
        }
    }

    /// Drops the oldest events of each ring beyond `capacity`.
    pub(super) fn truncate(&mut self, capacity: usize) {
        for class in 0..CLASSES {
            while self.rings[class].len() > capacity {
                self.pop_oldest(class);
            }
        }
    }

    /// Every event, oldest first (merged by id).
    pub(super) fn oldest_first(&self) -> Merged<std::collections::vec_deque::Iter<'_, Entry>> {
        Merged::new(self.rings.each_ref().map(|r| r.iter()), false)
    }

    /// Every event, newest first (merged by id).
    pub(super) fn newest_first(
        &self,
    ) -> Merged<std::iter::Rev<std::collections::vec_deque::Iter<'_, Entry>>> {
        Merged::new(self.rings.each_ref().map(|r| r.iter().rev()), true)
    }
}

/// The rings' events merged into one sequence by id: ascending, or descending when
/// `newest_first`. Each input must already be in that order.
pub(super) struct Merged<I: Iterator> {
    inputs: [std::iter::Peekable<I>; CLASSES],
    newest_first: bool,
}

impl<'a, I: Iterator<Item = &'a Entry>> Merged<I> {
    fn new(inputs: [I; CLASSES], newest_first: bool) -> Self {
        Self {
            inputs: inputs.map(Iterator::peekable),
            newest_first,
        }
    }
}

impl<'a, I: Iterator<Item = &'a Entry>> Iterator for Merged<I> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        let mut best: Option<(usize, u64)> = None;
        for (i, input) in self.inputs.iter_mut().enumerate() {
            let Some(id) = input.peek().map(|e| e.id()) else {
                continue;
            };
            let better = best.is_none_or(|(_, b)| if self.newest_first { id > b } else { id < b });
            if better {
                best = Some((i, id));
            }
        }
        let (i, _) = best?;
        self.inputs.get_mut(i).and_then(Iterator::next)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::audit::test_support::{log_at, parse_csv, usage, T0};
    use crate::audit::{AuditQuery, DEFAULT_AUDIT_CAPACITY};
    use crate::meter::EventSink;

    #[test]
    fn a_flood_of_refunds_does_not_evict_the_admin_trail() {
        let (clock, log) = log_at(T0);
        log.record(
            "key.created",
            "admin",
            "API key created",
            json!({"name": "a"}),
        );
        clock.advance_secs(1);
        for _ in 0..DEFAULT_AUDIT_CAPACITY + 1 {
            log.record(
                "billing.refund",
                "pg_1234...abcd",
                "refund",
                json!({"credits": 1, "reason": "tool_failed"}),
            );
        }
        let kept = log.query(&AuditQuery {
            types: vec!["key.created".into()],
            ..Default::default()
        });
        assert_eq!(
            kept.total, 1,
            "a key holder's failing calls cannot wipe the trail"
        );
        let refunds = log.query(&AuditQuery {
            types: vec!["billing.refund".into()],
            limit: 0,
            ..Default::default()
        });
        assert_eq!(
            refunds.total, DEFAULT_AUDIT_CAPACITY,
            "the refunds are bounded"
        );
    }

    #[test]
    fn a_flood_of_auth_failures_does_not_evict_the_admin_trail() {
        let (clock, log) = log_at(T0);
        log.record(
            "key.created",
            "admin",
            "API key created",
            json!({"name": "a"}),
        );
        clock.advance_secs(1);
        for _ in 0..DEFAULT_AUDIT_CAPACITY + 1 {
            log.record("admin.auth_failed", "unknown", "", json!({"path": "/keys"}));
        }
        let kept = log.query(&AuditQuery {
            types: vec!["key.created".into()],
            ..Default::default()
        });
        assert_eq!(kept.total, 1);
        assert_eq!(kept.events[0].id, 1);
        let failures = log.query(&AuditQuery {
            types: vec!["admin.auth_failed".into()],
            limit: 0,
            ..Default::default()
        });
        assert_eq!(
            failures.total, DEFAULT_AUDIT_CAPACITY,
            "the flood is bounded"
        );
        let s = log.stats();
        assert_eq!(s.events_by_type.get("key.created"), Some(&1));
        assert_eq!(s.total_events, DEFAULT_AUDIT_CAPACITY + 1);
        assert_eq!(s.oldest_event, Some(crate::clock::ms_to_datetime(T0)));
        assert_eq!(log.export()[0].event_type, "key.created");
    }

    #[test]
    fn keyless_gate_denials_evict_neither_the_trail_nor_real_keys_gate_history() {
        let (_, log) = log_at(T0);
        let log = log.with_capacity(5);
        log.record("key.created", "admin", "", json!({}));
        log.usage(&usage(true, None));
        log.record("admin.auth_failed", "unknown", "", json!({}));
        let mut keyless = usage(false, Some("invalid_api_key"));
        keyless.api_key = String::new();
        keyless.key_name = String::new();
        for _ in 0..50 {
            log.usage(&keyless);
        }
        let types: Vec<String> = log.export().into_iter().map(|e| e.event_type).collect();
        assert_eq!(types.len(), 8);
        assert_eq!(
            types[..3],
            ["key.created", "gate.allow", "admin.auth_failed"]
        );
        assert!(types[3..].iter().all(|t| t == "gate.deny"));
        // Denials of a real key share the gate ring with its allows, not the trail.
        for _ in 0..50 {
            log.usage(&usage(false, Some("insufficient_credits")));
        }
        let s = log.stats();
        assert_eq!(s.events_by_type.get("key.created"), Some(&1));
        assert_eq!(s.events_by_type.get("gate.allow"), None);
        assert_eq!(s.events_by_type.get("gate.deny"), Some(&10));
        assert_eq!(s.events_by_type.get("admin.auth_failed"), Some(&1));
        assert_eq!(s.total_events, 12);
    }

    #[test]
    fn the_classes_merge_into_one_time_ordered_view() {
        let (clock, log) = log_at(T0);
        let log = log.with_capacity(100);
        let mut keyless = usage(false, Some("invalid_api_key"));
        keyless.api_key = String::new();
        for i in 0..30 {
            match i % 4 {
                0 => {
                    log.record("key.topup", "admin", format!("#{i}"), json!({}));
                }
                1 => log.usage(&usage(true, None)),
                2 => log.usage(&keyless),
                _ => {
                    log.record("admin.auth_failed", "unknown", format!("#{i}"), json!({}));
                }
            }
            clock.advance_ms(10);
        }
        let ids: Vec<u64> = log.export().iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=30).collect::<Vec<u64>>());
        let page = log.query(&AuditQuery {
            limit: 7,
            ..Default::default()
        });
        let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (24..=30).rev().collect::<Vec<u64>>());
        assert_eq!(page.total, 30);
        let since = log.query(&AuditQuery {
            since: Some(crate::clock::ms_to_datetime(T0 + 250)),
            ..Default::default()
        });
        assert_eq!(since.total, 5);
        let s = log.stats();
        assert_eq!(s.total_events, 30);
        assert_eq!(s.events_by_type.get("gate.deny"), Some(&7));
        assert_eq!(s.oldest_event, Some(crate::clock::ms_to_datetime(T0)));
        assert_eq!(s.newest_event, Some(crate::clock::ms_to_datetime(T0 + 290)));
        let csv_ids: Vec<String> = parse_csv(&log.export_csv())
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(csv_ids.len(), 30);
        assert_eq!(csv_ids[0], "1");
        log.clear();
        assert!(log.is_empty());
    }
}
