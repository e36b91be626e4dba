//! The aggregates: counters folded into minute, hour, day and 7-day buckets, the rings that
//! hold those buckets by absolute index, and the retention that prunes them.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::{
    ceil_div, ANON_KEY, DAYS_PER_WEEK, HOURS_PER_DAY, MINUTES_PER_DAY, MINUTES_PER_HOUR,
    MINUTE_TOOL_CAP, OTHER_TOOL,
};

/// Calls, allowed calls and credits; denied = calls − allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) calls: u64,
    pub(super) allowed: u64,
    pub(super) credits: u64,
}

impl Counters {
    pub(super) fn one(allowed: bool, credits: u64) -> Self {
        Self {
            calls: 1,
            allowed: u64::from(allowed),
            credits,
        }
    }

    pub(super) fn add(&mut self, o: &Counters) {
        self.calls = self.calls.saturating_add(o.calls);
        self.allowed = self.allowed.saturating_add(o.allowed);
        self.credits = self.credits.saturating_add(o.credits);
    }

    pub(super) fn denied(&self) -> u64 {
        self.calls.saturating_sub(self.allowed)
    }
}

/// Minute level: totals and a small list of per-tool counters.
#[derive(Default)]
pub(super) struct MinuteBucket {
    pub(super) totals: Counters,
    pub(super) cells: Vec<(u32, Counters)>,
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
pub(super) struct KeyTable {
    /// Key id → position in `ids` / `counters`.
    pub(super) pos: HashMap<u32, u32, IdHash>,
    pub(super) ids: Vec<u32>,
    pub(super) counters: Vec<Counters>,
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
pub(super) struct Rollup {
    pub(super) totals: Counters,
    pub(super) tools: HashMap<u32, Counters, IdHash>,
    pub(super) keys: KeyTable,
    /// `key << 32 | tool` → calls (the empty key, never a consumer, is left out).
    pub(super) pairs: HashMap<u64, u64, IdHash>,
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
pub(super) struct Ring<T> {
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
    pub(super) fn first_in(&self, a: i64, b: i64) -> Option<(i64, &T)> {
        let lo = a.max(self.base);
        if lo >= b.min(self.end()) {
            return None;
        }
        self.items
            .get(usize::try_from(lo - self.base).ok()?)
            .map(|t| (lo, t))
    }
}

pub(super) struct State {
    pub(super) minutes: Ring<MinuteBucket>,
    pub(super) hours: Ring<Rollup>,
    pub(super) days: Ring<Rollup>,
    /// Per-key counters of 7-day blocks (epoch-aligned), only for blocks entirely within the
    /// retention: they cut the merge of per-key figures over long ranges.
    pub(super) weeks: Ring<KeyTable>,
    retention_days: i64,
    newest_day: Option<i64>,
    /// The oldest day kept.
    cutoff_day: i64,
    pub(super) recorded: u64,
    pub(super) expired: u64,
    /// One past the largest key / tool id aggregated: the size of dense accumulators.
    pub(super) key_slots: usize,
    pub(super) tool_slots: usize,
    /// The dense per-key accumulator of reports, kept zeroed between them.
    pub(super) scratch: Vec<[u64; 3]>,
}

impl State {
    pub(super) fn new(retention_days: i64) -> Self {
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

    pub(super) fn add(&mut self, minute: i64, tool: u32, key: u32, c: Counters) {
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
    pub(super) fn first_week(&self) -> i64 {
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

/// A fast hasher for internal integer ids (not attacker-chosen, so no HashDoS concern).
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

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

pub(super) type IdHash = BuildHasherDefault<IdHasher>;

/// Two ids packed in one map key (`a << 32 | b`).
pub(super) fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::analytics::test_support::{ev, range, t};
    use crate::analytics::{AnalyticsConfig, AnalyticsEngine, Granularity};
    use crate::clock::ManualClock;

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
}
