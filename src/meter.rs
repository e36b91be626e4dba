//! Usage events: one per gate decision, kept in a bounded ring for export and fed to the
//! analytics engine.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One gate decision, as reported by `/usage`, webhooks and analytics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// When the decision was made.
    pub timestamp: DateTime<Utc>,
    /// The key's display form (never the key itself).
    pub api_key: String,
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
    /// How long the downstream took, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
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
/// contend on one lock; readers merge the rings by time and see the newest `capacity` events.
///
/// ```
/// use paygate_mcp::{UsageMeter, UsageEvent};
/// let meter = UsageMeter::with_capacity(2);
/// for tool in ["a", "b", "c"] {
///     meter.record(UsageEvent {
///         timestamp: chrono::Utc::now(), api_key: "pg_1234...abcd".into(), key_name: "k".into(),
///         tool: tool.into(), credits_charged: 1, allowed: true, deny_reason: None, duration_ms: None,
///     });
/// }
/// let tools: Vec<_> = meter.since(None).into_iter().map(|e| e.tool).collect();
/// assert_eq!(tools, ["b", "c"]);
/// ```
#[derive(Debug)]
pub struct UsageMeter {
    rings: Box<[Mutex<VecDeque<UsageEvent>>]>,
    capacity: usize,
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
            rings: (0..STRIPES).map(|_| Mutex::new(VecDeque::new())).collect(),
            capacity,
        }
    }

    /// Appends an event, dropping the oldest of its ring when full.
    pub fn record(&self, event: UsageEvent) {
        let mut ring = self.rings[stripe()].lock();
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The newest `capacity` events at or after `since` (all when `None`), oldest first.
    pub fn since(&self, since: Option<DateTime<Utc>>) -> Vec<UsageEvent> {
        let mut all: Vec<UsageEvent> = Vec::new();
        for ring in self.rings.iter() {
            let ring = ring.lock();
            all.extend(
                ring.iter()
                    .filter(|e| since.is_none_or(|s| e.timestamp >= s))
                    .cloned(),
            );
        }
        // Stable: events of one ring keep their order on equal timestamps.
        all.sort_by_key(|e| e.timestamp);
        let excess = all.len().saturating_sub(self.capacity);
        all.drain(..excess);
        all
    }

    /// Events held now (at most `capacity`).
    pub fn len(&self) -> usize {
        let held: usize = self.rings.iter().map(|r| r.lock().len()).sum();
        held.min(self.capacity)
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
