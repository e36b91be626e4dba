//! Usage events: one per gate decision, kept in a bounded ring for export and fed to the
//! analytics engine.
//!
//! Every text a stored event carries (tool, key name, display key, deny reason) is cut to
//! [`MAX_EVENT_TEXT_BYTES`] before it is kept, so an event held by the meter (or queued by a
//! webhook) has a small, constant size whatever the request held.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One gate decision, as reported by `/usage`, webhooks and analytics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// When the event was recorded: for a call through the layers, when it was over (so
    /// events arrive in time order); for a denial, when it was decided.
    pub timestamp: DateTime<Utc>,
    /// The key's display form (never the key itself).
    pub api_key: String,
    /// The account id of the key (absent for a missing or unknown key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<crate::key::KeyId>,
    /// The key's name (empty for unknown keys).
    pub key_name: String,
    /// The tool called.
    pub tool: String,
    /// Credits charged (0 when denied, in shadow mode, or after a refund).
    pub credits_charged: u64,
    /// Whether the call was let through.
    pub allowed: bool,
    /// The machine reason for a denial; `shadow:<reason>` for a shadow-mode would-be denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// For a call that ran: milliseconds from the gate's decision until the call was over
    /// (its answer seen, or its response ended or dropped). `None` for a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// Longest text (tool, key name, display key, deny reason) a stored usage event keeps, in
/// bytes. Longer text is cut on a character boundary and ends with `…`.
pub const MAX_EVENT_TEXT_BYTES: usize = 256;

/// The cut marker.
const CUT: &str = "…";

/// `text` cut to at most `max` bytes on a character boundary, ending with `…` when something
/// was cut (a `max` below the marker's 3 bytes gives just the marker). Borrows when nothing
/// is cut; otherwise copies only what it keeps (and a few bytes past it).
///
/// A full API key that the cut would split is masked first, so a cut never leaves the
/// beginning of a key readable where the whole key would have been masked later.
pub(crate) fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // Every key that starts before the cut ends inside this window.
    let mut window = max.saturating_add(crate::key::FULL_KEY_LEN).min(text.len());
    while window < text.len() && !text.is_char_boundary(window) {
        window += 1;
    }
    let head = crate::key::redact_full_keys(text.get(..window).unwrap_or_default());
    let mut cut = max.saturating_sub(CUT.len()).min(head.len());
    while cut > 0 && !head.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + CUT.len());
    out.push_str(head.get(..cut).unwrap_or_default());
    out.push_str(CUT);
    Cow::Owned(out)
}

/// Cuts `text` in place to at most `max` bytes; an over-long (or over-allocated) string is
/// replaced by a small allocation, so the big buffer is freed rather than kept.
fn bound_string(text: &mut String, max: usize) {
    if text.len() > max {
        *text = clip(text, max).into_owned();
    } else if text.capacity() > max.saturating_mul(2) {
        text.shrink_to_fit();
    }
}

impl UsageEvent {
    /// A copy with every text field cut to [`MAX_EVENT_TEXT_BYTES`] (on a character
    /// boundary, ending with `…`); copies only what it keeps. An [`EventSink`] that keeps or
    /// queues events should keep this copy, so what it holds per event is bounded whatever
    /// the request held.
    ///
    /// ```
    /// use paygate_mcp::UsageEvent;
    /// use paygate_mcp::meter::MAX_EVENT_TEXT_BYTES;
    /// let e = UsageEvent {
    ///     timestamp: chrono::Utc::now(), api_key: "pg_1234...abcd".into(), key_id: None, key_name: "k".into(),
    ///     tool: "t".repeat(1 << 20), credits_charged: 0, allowed: false,
    ///     deny_reason: Some("invalid_api_key".into()), duration_ms: None,
    /// };
    /// let kept = e.bounded();
    /// assert!(kept.tool.len() <= MAX_EVENT_TEXT_BYTES && kept.tool.ends_with('…'));
    /// assert_eq!(kept.deny_reason, e.deny_reason);
    /// ```
    pub fn bounded(&self) -> UsageEvent {
        let max = MAX_EVENT_TEXT_BYTES;
        UsageEvent {
            timestamp: self.timestamp,
            api_key: clip(&self.api_key, max).into_owned(),
            key_id: self.key_id,
            key_name: clip(&self.key_name, max).into_owned(),
            tool: clip(&self.tool, max).into_owned(),
            credits_charged: self.credits_charged,
            allowed: self.allowed,
            deny_reason: self
                .deny_reason
                .as_deref()
                .map(|r| clip(r, max).into_owned()),
            duration_ms: self.duration_ms,
        }
    }

    /// Cuts every text field to [`MAX_EVENT_TEXT_BYTES`] in place.
    pub(crate) fn bound(&mut self) {
        let max = MAX_EVENT_TEXT_BYTES;
        bound_string(&mut self.api_key, max);
        bound_string(&mut self.key_name, max);
        bound_string(&mut self.tool, max);
        if let Some(reason) = &mut self.deny_reason {
            bound_string(reason, max);
        }
    }
}

/// How much of a JSON value [`bound_json`] keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonLimits {
    /// Longest string value, in bytes (what the text function is asked for).
    pub text_bytes: usize,
    /// Longest object key, in bytes.
    pub key_bytes: usize,
    /// Most entries kept of one array or object.
    pub entries: usize,
    /// Deepest nesting kept; a deeper array or object becomes `"…"`.
    pub depth: usize,
    /// Bytes of text kept over the whole value (every value counts at least 8), so the copy
    /// holds at most about this much plus one entry.
    pub total_bytes: usize,
}

/// The limits of an admin event's data as queued for a webhook.
pub(crate) const ADMIN_DATA_LIMITS: JsonLimits = JsonLimits {
    text_bytes: 1_024,
    key_bytes: MAX_EVENT_TEXT_BYTES,
    entries: 100,
    depth: 8,
    total_bytes: 8_192,
};

/// Rewrites a string of a JSON value before it is cut to bytes: `(text, is_object_key)`.
pub(crate) type JsonText<'a> = &'a dyn Fn(&str, bool) -> Cow<'_, str>;

/// Keeps strings as they are (only [`bound_json`]'s byte cut applies).
pub(crate) fn as_is(text: &str, _is_key: bool) -> Cow<'_, str> {
    Cow::Borrowed(text)
}

/// A copy of `value` within `limits`: each string and key goes through `text`, then is cut
/// (with [`clip`]) to its byte limit and to what is left of the total; arrays and objects
/// keep their first entries and end with a `"…"` element (arrays) or a `"…"` entry counting
/// what was left out (objects). Never copies more than it keeps (beyond what `text` copies).
pub(crate) fn bound_json(
    value: &serde_json::Value,
    limits: &JsonLimits,
    text: JsonText<'_>,
) -> serde_json::Value {
    let mut budget = limits.total_bytes;
    bound_json_at(value, limits, text, 0, &mut budget)
}

fn bound_json_at(
    value: &serde_json::Value,
    limits: &JsonLimits,
    text: JsonText<'_>,
    depth: usize,
    budget: &mut usize,
) -> serde_json::Value {
    use serde_json::Value;
    /// Every value costs at least this much, so the number of values kept is bounded too.
    const MIN_COST: usize = 8;
    fn spend(budget: &mut usize, n: usize) {
        *budget = budget.saturating_sub(n.max(MIN_COST));
    }
    fn cut(text: JsonText<'_>, s: &str, is_key: bool, max: usize, budget: usize) -> String {
        clip(&text(s, is_key), max.min(budget.max(CUT.len()))).into_owned()
    }
    match value {
        Value::String(s) => {
            let kept = cut(text, s, false, limits.text_bytes, *budget);
            spend(budget, kept.len());
            Value::String(kept)
        }
        Value::Array(_) | Value::Object(_) if depth >= limits.depth => {
            spend(budget, CUT.len());
            Value::String(CUT.to_string())
        }
        Value::Array(items) => {
            spend(budget, 0);
            let mut out = Vec::with_capacity(items.len().min(limits.entries));
            for (i, item) in items.iter().enumerate() {
                if i >= limits.entries || *budget == 0 {
                    out.push(Value::String(CUT.to_string()));
                    break;
                }
                out.push(bound_json_at(item, limits, text, depth + 1, budget));
            }
            Value::Array(out)
        }
        Value::Object(map) => {
            spend(budget, 0);
            let mut out = serde_json::Map::new();
            for (i, (k, v)) in map.iter().enumerate() {
                if i >= limits.entries || *budget == 0 {
                    let left = map.len() - i;
                    out.insert(CUT.to_string(), Value::String(format!("{left} more")));
                    break;
                }
                let key = cut(text, k, true, limits.key_bytes, *budget);
                *budget = budget.saturating_sub(key.len());
                let v = bound_json_at(v, limits, text, depth + 1, budget);
                out.insert(key, v);
            }
            Value::Object(out)
        }
        other => {
            spend(budget, 0);
            other.clone()
        }
    }
}

impl AdminEvent {
    /// A copy whose type is cut to [`MAX_EVENT_TEXT_BYTES`] and whose data keeps strings of
    /// at most 1 KiB, object keys of at most [`MAX_EVENT_TEXT_BYTES`], 100 entries per array
    /// or object, 8 levels of nesting and about 8 KiB of text in all (what is cut ends with
    /// `…`); copies only what it keeps. An [`EventSink`] that keeps or queues events should
    /// keep this copy.
    pub fn bounded(&self) -> AdminEvent {
        AdminEvent {
            event_type: clip(&self.event_type, MAX_EVENT_TEXT_BYTES).into_owned(),
            timestamp: self.timestamp,
            data: bound_json(&self.data, &ADMIN_DATA_LIMITS, &as_is),
        }
    }
}

/// Rings a meter spreads its writers over, so threads rarely share a lock.
pub(crate) const STRIPES: usize = 4;

/// Which ring the current thread writes to.
pub(crate) fn stripe() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A bounded, thread-safe record of the most recent usage events.
///
/// Each writing thread appends to one of a few rings, so concurrent gated calls do not
/// contend on one lock; readers merge the rings by time. The rings together hold at most
/// `capacity` events: once full, each new event evicts the oldest event of any ring (exactly
/// the oldest with one writer; under concurrent writers, the oldest as last seen). For an
/// instant, while several threads are recording, the count may pass `capacity` by at most
/// the number of those threads. Text fields are cut to [`MAX_EVENT_TEXT_BYTES`], so the
/// memory held is bounded by `capacity` events of bounded size.
///
/// ```
/// use paygate_mcp::{UsageMeter, UsageEvent};
/// let meter = UsageMeter::with_capacity(2);
/// for tool in ["a", "b", "c"] {
///     meter.record(UsageEvent {
///         timestamp: chrono::Utc::now(), api_key: "pg_1234...abcd".into(), key_id: None, key_name: "k".into(),
///         tool: tool.into(), credits_charged: 1, allowed: true, deny_reason: None, duration_ms: None,
///     });
/// }
/// let tools: Vec<_> = meter.since(None).into_iter().map(|e| e.tool).collect();
/// assert_eq!(tools, ["b", "c"]);
/// ```
#[derive(Debug)]
pub struct UsageMeter {
    rings: Box<[Stripe]>,
    capacity: usize,
    /// Events held, every ring counted.
    held: AtomicUsize,
    /// The next event's sequence number: record order across rings.
    seq: AtomicU64,
}

/// One ring, in sequence order, with the sequence number of its oldest event published so a
/// writer can find the globally oldest without locking every ring.
#[derive(Debug)]
struct Stripe {
    events: Mutex<VecDeque<(u64, UsageEvent)>>,
    /// The oldest event's sequence number; `u64::MAX` when the ring is empty.
    front: AtomicU64,
}

impl Stripe {
    fn new() -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            front: AtomicU64::new(u64::MAX),
        }
    }
}

impl Default for UsageMeter {
    fn default() -> Self {
        Self::with_capacity(10_000)
    }
}

impl UsageMeter {
    /// A meter keeping the newest `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            rings: (0..STRIPES).map(|_| Stripe::new()).collect(),
            capacity,
            held: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
        }
    }

    /// Appends an event (its text cut to [`MAX_EVENT_TEXT_BYTES`]), evicting the oldest event
    /// held when the meter is full.
    pub fn record(&self, mut event: UsageEvent) {
        event.bound();
        let Some(stripe) = self.rings.get(stripe()) else {
            return;
        };
        {
            let mut ring = stripe.events.lock();
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if ring.is_empty() {
                stripe.front.store(seq, Ordering::Release);
            }
            ring.push_back((seq, event));
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.evict_oldest();
        }
    }

    /// Drops the oldest event held: the front of the ring whose published front is oldest.
    /// Locks one ring at a time.
    fn evict_oldest(&self) {
        // A ring found empty (emptied since its front was read) is looked past; a few tries
        // suffice, and should they not, the next record evicts again.
        for _ in 0..=STRIPES {
            let Some(victim) = self
                .rings
                .iter()
                .min_by_key(|s| s.front.load(Ordering::Acquire))
            else {
                return;
            };
            let mut ring = victim.events.lock();
            let popped = ring.pop_front();
            victim.front.store(
                ring.front().map_or(u64::MAX, |(seq, _)| *seq),
                Ordering::Release,
            );
            drop(ring);
            if popped.is_some() {
                self.held.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }

    /// The newest `capacity` events at or after `since` (all when `None`), oldest first.
    pub fn since(&self, since: Option<DateTime<Utc>>) -> Vec<UsageEvent> {
        let mut all: Vec<(u64, UsageEvent)> = Vec::new();
        for stripe in self.rings.iter() {
            let ring = stripe.events.lock();
            all.extend(
                ring.iter()
                    .filter(|(_, e)| since.is_none_or(|s| e.timestamp >= s))
                    .cloned(),
            );
        }
        // By time, events of equal time in the order they were recorded.
        all.sort_by_key(|(seq, e)| (e.timestamp, *seq));
        let excess = all.len().saturating_sub(self.capacity);
        all.drain(..excess);
        all.into_iter().map(|(_, e)| e).collect()
    }

    /// Events held now (at most `capacity`).
    pub fn len(&self) -> usize {
        let held: usize = self.rings.iter().map(|s| s.events.lock().len()).sum();
        held.min(self.capacity)
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events held in memory, every stripe counted.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.rings.iter().map(|s| s.events.lock().len()).sum()
    }

    /// The stored events, every stripe, in no particular order.
    #[cfg(test)]
    fn stored(&self) -> Vec<UsageEvent> {
        self.rings
            .iter()
            .flat_map(|s| {
                s.events
                    .lock()
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// An administrative or lifecycle event (`key.created`, `key.expired`, `alert.fired`,
/// `billing.refund`, ...), as delivered to an [`EventSink`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminEvent {
    /// The event type, e.g. `key.expired`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Type-specific fields (never a full API key).
    pub data: serde_json::Value,
}

/// Receives the gate's events as they happen (webhooks, audit logs, metrics).
///
/// Both methods are called on the request path: implementations must return quickly and
/// never block (queue and deliver elsewhere).
///
/// ```
/// use paygate_mcp::{AdminEvent, EventSink, UsageEvent};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// #[derive(Default)]
/// struct Count(AtomicUsize);
/// impl EventSink for Count {
///     fn usage(&self, _: &UsageEvent) { self.0.fetch_add(1, Ordering::Relaxed); }
/// }
/// ```
pub trait EventSink: Send + Sync + 'static {
    /// One gate decision.
    fn usage(&self, _event: &UsageEvent) {}
    /// One administrative or lifecycle event.
    fn admin(&self, _event: &AdminEvent) {}
}

/// Sends every event to each of several sinks, in order.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{EventSink, FanOut};
/// struct Quiet;
/// impl EventSink for Quiet {}
/// let sinks = FanOut(vec![Arc::new(Quiet) as Arc<dyn EventSink>, Arc::new(Quiet)]);
/// # let _ = sinks;
/// ```
#[derive(Clone, Default)]
pub struct FanOut(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for FanOut {
    fn usage(&self, event: &UsageEvent) {
        for sink in &self.0 {
            sink.usage(event);
        }
    }
    fn admin(&self, event: &AdminEvent) {
        for sink in &self.0 {
            sink.admin(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn event(tool: &str, ms: i64) -> UsageEvent {
        UsageEvent {
            timestamp: crate::clock::ms_to_datetime(ms),
            api_key: "pg_1234...abcd".into(),
            key_id: None,
            key_name: "k".into(),
            tool: tool.into(),
            credits_charged: 1,
            allowed: true,
            deny_reason: None,
            duration_ms: None,
        }
    }

    #[test]
    fn the_meter_holds_at_most_its_capacity_whatever_the_threads() {
        let meter = Arc::new(UsageMeter::with_capacity(10));
        // More threads than stripes, all writing at once.
        let threads = 3 * STRIPES;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (meter, barrier) = (meter.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..200 {
                        meter.record(event(&format!("t{t}"), i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            meter.held(),
            10,
            "memory holds the capacity, not a multiple"
        );
        assert_eq!(meter.len(), 10);
        assert_eq!(meter.since(None).len(), 10);
    }

    #[test]
    fn one_writer_keeps_the_newest_events_and_old_stripes_age_out() {
        let meter = Arc::new(UsageMeter::with_capacity(4));
        // Old events on other threads' stripes...
        for t in 0..STRIPES {
            let meter = meter.clone();
            std::thread::spawn(move || meter.record(event(&format!("old{t}"), 0)))
                .join()
                .unwrap();
        }
        // ...then one thread records: the globally oldest are the ones evicted.
        for i in 1..=6 {
            meter.record(event(&format!("new{i}"), i));
        }
        let tools: Vec<String> = meter.since(None).into_iter().map(|e| e.tool).collect();
        assert_eq!(tools, ["new3", "new4", "new5", "new6"]);
        assert_eq!(meter.held(), 4);
    }

    #[test]
    fn stored_text_is_bounded() {
        let meter = UsageMeter::with_capacity(3);
        let huge = "é".repeat(500_000); // 1 MB
        let mut e = event(&huge, 0);
        e.key_name = huge.clone();
        e.api_key = huge.clone();
        e.deny_reason = Some(huge.clone());
        meter.record(e);
        let stored = meter.stored();
        let e = &stored[0];
        for text in [
            &e.tool,
            &e.key_name,
            &e.api_key,
            e.deny_reason.as_ref().unwrap(),
        ] {
            assert!(text.len() <= MAX_EVENT_TEXT_BYTES, "{}", text.len());
            assert!(
                text.capacity() <= MAX_EVENT_TEXT_BYTES,
                "the big buffer is freed"
            );
            assert!(text.ends_with("é…"), "cut on a character boundary, marked");
        }
        // Short text is kept as it is.
        meter.record(event("search", 1));
        assert_eq!(meter.since(None)[1].tool, "search");
    }

    #[test]
    fn admin_event_data_is_bounded() {
        use serde_json::{json, Value};
        let huge = "x".repeat(1 << 20);
        let wide: Vec<Value> = (0..100_000).map(|i| json!(i)).collect();
        let mut deep = json!("bottom");
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let many: serde_json::Map<String, Value> =
            (0..10_000).map(|i| (format!("k{i}"), json!("v"))).collect();
        let event = AdminEvent {
            event_type: huge.clone(),
            timestamp: crate::clock::ms_to_datetime(0),
            data: json!({"name": huge, "tools": wide, "deep": deep, "many": many, (huge.clone()): 1}),
        };
        let b = event.bounded();
        assert!(b.event_type.len() <= MAX_EVENT_TEXT_BYTES);
        let size = serde_json::to_string(&b.data).unwrap().len();
        // The total budget plus one entry's worth and the structure around it.
        let cap = ADMIN_DATA_LIMITS.total_bytes + 2 * ADMIN_DATA_LIMITS.text_bytes;
        assert!(size <= cap, "{size} > {cap}");
        assert!(b.data["name"].as_str().unwrap().ends_with('…'));
        let tools = b.data["tools"].as_array().unwrap();
        assert!(tools.len() <= ADMIN_DATA_LIMITS.entries + 1);
        assert_eq!(tools.last().unwrap(), "…");
        // Small data is copied as it is.
        let small = json!({"key": "pg_1234...abcd", "credits": 5, "tags": {"a": [1, null, true]}});
        let e = AdminEvent {
            event_type: "key.topup".into(),
            timestamp: crate::clock::ms_to_datetime(0),
            data: small.clone(),
        };
        assert_eq!(e.bounded(), e);
        // Nesting is cut at the limit.
        let b = AdminEvent {
            data: json!([[[[[[[[[["x"]]]]]]]]]]),
            ..e
        }
        .bounded();
        let mut v = &b.data;
        for _ in 0..ADMIN_DATA_LIMITS.depth {
            v = &v[0];
        }
        assert_eq!(v, "…");
    }

    #[test]
    fn clip_cuts_on_character_boundaries() {
        assert_eq!(clip("abc", 3), "abc");
        assert!(matches!(clip("abc", 3), std::borrow::Cow::Borrowed(_)));
        assert_eq!(clip("abcdef", 5), "ab…");
        // "é" is two bytes: a cut inside it moves back to its start.
        assert_eq!(clip("aééé", 5), "a…");
        assert_eq!(clip("aééé", 6), "aé…");
        assert_eq!(clip("aééé", 7), "aééé");
        assert_eq!(clip("abc", 0), "…");
        // A key the cut would split is masked, not left half readable.
        let key = format!("pg_{}", "0123456789ab".repeat(4));
        for pad in 0..=crate::key::FULL_KEY_LEN {
            let text = format!("{}{key}{}", "x".repeat(200 + pad), "y".repeat(100));
            let kept = clip(&text, 256);
            assert!(kept.len() <= 256);
            assert!(!kept.contains(&key[..20]), "{pad}: {kept}");
        }
    }
}
