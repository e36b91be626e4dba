//! Alerts: rules evaluated after every gated call, with per-key cooldowns and a bounded queue
//! of pending alerts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{ms_to_datetime, SharedClock};
use crate::key::KeyDigest;
use crate::meter::{clip, MAX_EVENT_TEXT_BYTES};
use crate::store::KeySnapshot;

mod expiring;
mod rules;
#[cfg(test)]
mod test_support;

pub use rules::{AlertContext, AlertRule, AlertType, DEFAULT_COOLDOWN_SECS};

use expiring::Expiring;
use rules::evaluate;

/// How far back `rate_limit_spike` counts denials.
pub const SPIKE_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Default bound of the pending-alert queue.
pub const DEFAULT_MAX_PENDING: usize = 1_000;
/// Denials remembered per key for spike detection, at most; fewer when no `rate_limit_spike`
/// rule needs as many (a key's list never holds more than the largest spike threshold).
const MAX_DENIALS_PER_KEY: usize = 10_000;
/// Most (rule type, key) cooldowns tracked; beyond it the entry queued longest is dropped
/// (that key's next alert of that type may then come before its cooldown ends).
const MAX_COOLDOWNS: usize = 1_000_000;
/// Most keys whose recent rate-limit denials are tracked; beyond it the key queued longest is
/// forgotten.
const MAX_SPIKE_KEYS: usize = 100_000;
/// Entries a call looks at to drop stale ones: pruning is spread over the calls, a few steps
/// each, so no call does work proportional to the number of entries.
const PRUNE_STEPS: usize = 4;

/// A fired alert. Its key name (and the message quoting it) is cut to
/// [`MAX_EVENT_TEXT_BYTES`](crate::meter::MAX_EVENT_TEXT_BYTES), so the pending queue holds
/// alerts of bounded size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The rule type that fired.
    #[serde(rename = "type")]
    pub alert_type: AlertType,
    /// When it fired.
    pub timestamp: DateTime<Utc>,
    /// The key's display form.
    pub key_prefix: String,
    /// The key's account id.
    pub key_id: crate::key::KeyId,
    /// The key's name.
    pub key_name: String,
    /// What happened, for people.
    pub message: String,
    /// The rule's threshold.
    pub threshold: u64,
    /// The value that crossed it (percent to one decimal, credits, seconds or a count).
    pub current_value: f64,
    /// Type-specific details.
    pub metadata: serde_json::Value,
}

/// Evaluates alert rules after each gated call, with a cooldown per rule type per key, and
/// queues what fires until [`AlertEngine::consume`] takes it.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{AlertContext, AlertEngine, AlertRule, AlertType, KeyRecord, KeySnapshot, ManualClock};
///
/// let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
/// let engine = AlertEngine::new(vec![AlertRule::new(AlertType::CreditsLow, 10)], clock.clone());
/// let rec = KeyRecord::new("pg_0123456789abcdef0123456789abcdef0123456789abcdef", "bob", 5, 0);
/// let snap = KeySnapshot::of(&rec, 0, None);
///
/// assert_eq!(engine.check(&snap, AlertContext::default()).len(), 1);
/// assert!(engine.check(&snap, AlertContext::default()).is_empty()); // cooling down
/// clock.advance_secs(300);
/// assert_eq!(engine.check(&snap, AlertContext::default()).len(), 1);
/// assert_eq!(engine.consume().len(), 2);
/// assert_eq!(engine.pending_count(), 0);
/// ```
pub struct AlertEngine {
    /// Read on every gated call, replaced rarely: lock-free reads.
    rules: ArcSwap<Vec<AlertRule>>,
    has_rules: AtomicBool,
    clock: SharedClock,
    dry_run: bool,
    max_pending: usize,
    /// When each rule type last fired for each key.
    cooldowns: Mutex<Expiring<(AlertType, KeyDigest), i64>>,
    /// Each key's rate-limit denials in the spike window, oldest first.
    denials: Mutex<Expiring<KeyDigest, VecDeque<i64>>>,
    pending: Mutex<VecDeque<Alert>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine")
            .field("rules", &self.rules())
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

impl AlertEngine {
    /// An engine with `rules`, reading time from `clock`.
    pub fn new(rules: Vec<AlertRule>, clock: SharedClock) -> Self {
        Self {
            has_rules: AtomicBool::new(!rules.is_empty()),
            rules: ArcSwap::from_pointee(rules),
            clock,
            dry_run: false,
            max_pending: DEFAULT_MAX_PENDING,
            cooldowns: Mutex::new(Expiring::new(MAX_COOLDOWNS)),
            denials: Mutex::new(Expiring::new(MAX_SPIKE_KEYS)),
            pending: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// In dry-run mode alerts are evaluated and returned but never queued.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Bounds the pending queue (at least 1); the oldest alert is dropped when it is full.
    pub fn with_max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Replaces the rules.
    pub fn set_rules(&self, rules: Vec<AlertRule>) {
        self.has_rules.store(!rules.is_empty(), Ordering::Release);
        self.rules.store(Arc::new(rules));
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<AlertRule> {
        self.rules.load().to_vec()
    }

    /// Takes every pending alert, oldest first.
    pub fn consume(&self) -> Vec<Alert> {
        self.pending.lock().drain(..).collect()
    }

    /// Every pending alert, oldest first, left in place for [`consume`](Self::consume).
    pub fn pending(&self) -> Vec<Alert> {
        self.pending.lock().iter().cloned().collect()
    }

    /// Alerts waiting to be consumed.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().len()
    }

    /// Alerts dropped because the queue was full.
    pub fn dropped_count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Evaluates every rule against a key's state after a gated call; returns what fired.
    pub fn check(&self, snap: &KeySnapshot, ctx: AlertContext) -> Vec<Alert> {
        if !self.has_rules.load(Ordering::Acquire) {
            return Vec::new();
        }
        let rules = self.rules.load();
        let now_ms = self.clock.now_ms();
        let spike_threshold = rules
            .iter()
            .filter(|r| r.rule_type == AlertType::RateLimitSpike)
            .map(|r| r.threshold)
            .max();
        let recent_denials = match spike_threshold {
            Some(most) if ctx.rate_limit_denied => {
                let keep = usize::try_from(most).unwrap_or(usize::MAX);
                self.count_denial(snap.key, now_ms, keep.clamp(1, MAX_DENIALS_PER_KEY))
            }
            _ => 0,
        };
        let mut fired = Vec::new();
        for rule in rules.iter() {
            let Some((value, message, metadata)) =
                evaluate(rule, snap, now_ms, ctx, recent_denials)
            else {
                continue;
            };
            if !self.take_cooldown(rule, rules.as_slice(), snap.key, now_ms) {
                continue;
            }
            fired.push(Alert {
                alert_type: rule.rule_type,
                timestamp: ms_to_datetime(now_ms),
                key_prefix: clip(&snap.key_masked, MAX_EVENT_TEXT_BYTES).into_owned(),
                key_id: snap.key_id,
                key_name: clip(&snap.name, MAX_EVENT_TEXT_BYTES).into_owned(),
                message,
                threshold: rule.threshold,
                current_value: value,
                metadata,
            });
        }
        if !fired.is_empty() && !self.dry_run {
            let mut pending = self.pending.lock();
            for alert in &fired {
                if pending.len() >= self.max_pending {
                    pending.pop_front();
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                pending.push_back(alert.clone());
            }
        }
        fired
    }

    /// Starts the rule's cooldown for this key unless one is running; false when it is.
    /// Also drops a few stale cooldowns (those past the longest cooldown of their rule type
    /// in `rules`, or of a type no rule has any more).
    fn take_cooldown(
        &self,
        rule: &AlertRule,
        rules: &[AlertRule],
        key: KeyDigest,
        now_ms: i64,
    ) -> bool {
        let cooldown_ms = |t: AlertType| {
            rules
                .iter()
                .filter(|r| r.rule_type == t)
                .map(|r| i64::try_from(r.cooldown_secs().saturating_mul(1000)).unwrap_or(i64::MAX))
                .max()
        };
        let running = |last: i64, cooldown: Option<i64>| {
            cooldown.is_some_and(|c| now_ms.saturating_sub(last) < c)
        };
        let mut cooldowns = self.cooldowns.lock();
        cooldowns.prune(|(t, _), &last| !running(last, cooldown_ms(*t)));
        let this = i64::try_from(rule.cooldown_secs().saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(&last) = cooldowns.get(&(rule.rule_type, key)) {
            if running(last, Some(this)) {
                return false;
            }
        }
        *cooldowns.entry((rule.rule_type, key), || now_ms) = now_ms;
        true
    }

    /// Remembers a rate-limit denial and returns how many the key had in the spike window
    /// (counting at most `keep`, the most any rule needs). Also drops a few keys with no
    /// denial left in the window.
    fn count_denial(&self, key: KeyDigest, now_ms: i64, keep: usize) -> u64 {
        let cutoff = now_ms.saturating_sub(SPIKE_WINDOW_MS);
        let mut denials = self.denials.lock();
        denials.prune(|_, list| list.back().is_none_or(|&t| t <= cutoff));
        let list = denials.entry(key, VecDeque::new);
        while list.front().is_some_and(|&t| t <= cutoff) {
            list.pop_front();
        }
        while list.len() >= keep.max(1) {
            list.pop_front();
        }
        list.push_back(now_ms);
        list.len() as u64
    }

    /// (rule type, key) cooldowns and keys with recent denials tracked now.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.cooldowns.lock().len(), self.denials.lock().len())
    }

    /// Bounds both maps at `cap` entries.
    #[cfg(test)]
    fn with_max_tracked(self, cap: usize) -> Self {
        *self.cooldowns.lock() = Expiring::new(cap);
        *self.denials.lock() = Expiring::new(cap);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{setup, snap, DENIED, NONE};
    use super::*;
    use crate::clock::ManualClock;
    use crate::key::KeyRecord;

    #[test]
    fn cooldown_is_per_rule_type_per_key() {
        let (clock, engine, rec) = setup(vec![
            AlertRule::new(AlertType::CreditsLow, 1000),
            AlertRule {
                cooldown_seconds: Some(10),
                ..AlertRule::new(AlertType::SpendingThreshold, 0)
            },
        ]);
        let s = snap(&rec, &clock);
        assert_eq!(engine.check(&s, NONE).len(), 2);
        let other = KeyRecord::new(
            "pg_ffffffffffffffffffffffffffffffffffffffffffffffff",
            "o",
            1,
            0,
        );
        assert_eq!(engine.check(&snap(&other, &clock), NONE).len(), 2);
        clock.advance_secs(10);
        let fired = engine.check(&s, NONE);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].alert_type, AlertType::SpendingThreshold);
        clock.advance_secs(290);
        assert_eq!(engine.check(&s, NONE).len(), 2);
    }

    #[test]
    fn dry_run_returns_without_queueing_and_queue_is_bounded() {
        let (clock, engine, rec) = setup(vec![AlertRule::new(AlertType::CreditsLow, 1000)]);
        let engine = engine.with_dry_run(true);
        assert_eq!(engine.check(&snap(&rec, &clock), NONE).len(), 1);
        assert_eq!(engine.pending_count(), 0);

        let (clock, engine, rec) = setup(vec![AlertRule {
            cooldown_seconds: Some(0),
            ..AlertRule::new(AlertType::CreditsLow, 1000)
        }]);
        let engine = engine.with_max_pending(3);
        for _ in 0..5 {
            clock.advance_ms(1);
            engine.check(&snap(&rec, &clock), NONE);
        }
        assert_eq!(engine.pending_count(), 3);
        assert_eq!(engine.dropped_count(), 2);
        let alerts = engine.consume();
        assert!(alerts[0].timestamp < alerts[2].timestamp);
        assert_eq!(engine.pending_count(), 0);
    }

    #[test]
    fn rules_can_be_replaced_at_run_time() {
        let (clock, engine, rec) = setup(vec![]);
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        engine.set_rules(vec![AlertRule::new(AlertType::CreditsLow, 1000)]);
        assert_eq!(engine.rules().len(), 1);
        assert_eq!(engine.check(&snap(&rec, &clock), NONE).len(), 1);
    }

    #[test]
    fn queued_alerts_are_bounded_whatever_the_key_name() {
        let (clock, engine, mut rec) = setup(vec![AlertRule::new(AlertType::CreditsLow, 1000)]);
        rec.name = "é".repeat(500_000); // 1 MB
        let fired = engine.check(&snap(&rec, &clock), NONE);
        let queued = engine.consume();
        for alert in fired.iter().chain(&queued) {
            assert!(alert.key_name.len() <= MAX_EVENT_TEXT_BYTES);
            assert!(alert.key_name.ends_with('…'));
            assert!(alert.message.len() <= MAX_EVENT_TEXT_BYTES + 100);
        }
        assert_eq!(queued.len(), 1);
    }

    /// A snapshot of a distinct key (`n` picks it), low on credits.
    fn nth_key(n: usize, clock: &ManualClock) -> KeySnapshot {
        let rec = KeyRecord::new(&format!("pg_{n:048x}"), "k", 1, 0);
        snap(&rec, clock)
    }

    #[test]
    fn stale_cooldowns_are_pruned_a_few_per_call_never_all_at_once() {
        let (clock, engine, _) = setup(vec![AlertRule::new(AlertType::CreditsLow, 10)]);
        const N: usize = 60_000;
        for n in 0..N {
            assert_eq!(engine.check(&nth_key(n, &clock), NONE).len(), 1);
        }
        engine.consume();
        assert_eq!(engine.tracked().0, N);
        // Every cooldown has run out: one call removes only a few of them...
        clock.advance_secs(300);
        let fresh = N;
        engine.check(&nth_key(fresh, &clock), NONE);
        let after_one = engine.tracked().0;
        assert!(
            after_one + PRUNE_STEPS > N,
            "one call dropped {} entries",
            N + 1 - after_one
        );
        // ...and calls keep removing them until only live ones are left.
        let calls = N / (PRUNE_STEPS - 1) + 1;
        for n in 1..=calls {
            engine.check(&nth_key(fresh + n, &clock), NONE);
        }
        assert!(engine.tracked().0 <= calls + 1, "{}", engine.tracked().0);
    }

    #[test]
    fn cooldowns_hold_while_other_keys_churn_the_queue() {
        let (clock, engine, rec) = setup(vec![AlertRule::new(AlertType::CreditsLow, 1000)]);
        let s = snap(&rec, &clock);
        assert_eq!(engine.check(&s, NONE).len(), 1);
        for n in 0..1_000 {
            clock.advance_ms(100);
            engine.check(&nth_key(n, &clock), NONE);
            // The first key is looked at and re-queued many times, never dropped while live.
            assert!(engine.check(&s, NONE).is_empty(), "fired again at step {n}");
        }
        clock.advance_secs(200); // 300 s after it fired
        assert_eq!(engine.check(&s, NONE).len(), 1);
        // A type no rule has any more is stale at once.
        engine.set_rules(vec![AlertRule::new(AlertType::SpendingThreshold, 0)]);
        let before = engine.tracked().0;
        engine.check(&nth_key(5_000, &clock), NONE);
        assert!(engine.tracked().0 < before);
    }

    #[test]
    fn tracked_entries_have_a_hard_cap() {
        let (clock, engine, _) = setup(vec![
            AlertRule::new(AlertType::CreditsLow, 1000),
            AlertRule::new(AlertType::RateLimitSpike, 2),
        ]);
        let engine = engine.with_max_tracked(100);
        for n in 0..1_000 {
            let s = nth_key(n, &clock);
            engine.check(&s, DENIED);
            engine.check(&s, DENIED);
            let (cooldowns, spikes) = engine.tracked();
            assert!(cooldowns <= 100 && spikes <= 100, "{cooldowns} {spikes}");
        }
        // The most recent keys are still cooling down and counting.
        let last = nth_key(999, &clock);
        assert!(engine.check(&last, NONE).is_empty());
        let spiking = nth_key(998, &clock);
        let fired = engine.check(&spiking, DENIED);
        assert!(fired.is_empty(), "both rules of key 998 are cooling down");
        assert_eq!(
            engine.denials.lock().get(&spiking.key).map(VecDeque::len),
            Some(2)
        );
    }

    #[test]
    fn spike_denials_are_pruned_incrementally_and_still_count() {
        let (clock, engine, rec) = setup(vec![AlertRule::new(AlertType::RateLimitSpike, 3)]);
        for n in 0..1_000 {
            engine.check(&nth_key(n, &clock), DENIED);
        }
        assert_eq!(engine.tracked().1, 1_000);
        clock.advance_ms(SPIKE_WINDOW_MS);
        let s = snap(&rec, &clock);
        engine.check(&s, DENIED);
        assert!(engine.tracked().1 + PRUNE_STEPS > 1_000);
        engine.check(&s, DENIED);
        let fired = engine.check(&s, DENIED);
        assert_eq!(fired.len(), 1, "three denials in the window");
        assert_eq!(fired[0].current_value, 3.0);
        for _ in 0..400 {
            engine.check(&s, DENIED);
        }
        assert!(engine.tracked().1 < 10, "{}", engine.tracked().1);
        // A key's list never holds more than the largest threshold needs.
        assert_eq!(
            engine.denials.lock().get(&s.key).map(VecDeque::len),
            Some(3)
        );
    }

    #[test]
    fn alert_serializes_in_camel_case_with_type() {
        let (clock, engine, rec) = setup(vec![AlertRule::new(AlertType::CreditsLow, 1000)]);
        let alert = engine.check(&snap(&rec, &clock), NONE).remove(0);
        let json = serde_json::to_value(&alert).unwrap();
        for field in [
            "type",
            "timestamp",
            "keyPrefix",
            "keyName",
            "message",
            "threshold",
            "currentValue",
            "metadata",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["type"], "credits_low");
    }
}
