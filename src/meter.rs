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

/// A bounded, thread-safe ring of the most recent usage events.
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
    events: Mutex<VecDeque<UsageEvent>>,
    capacity: usize,
}

impl Default for UsageMeter {
    fn default() -> Self {
        Self::with_capacity(10_000)
    }
}

impl UsageMeter {
    /// A ring holding at most `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            events: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    /// Appends an event, dropping the oldest when full.
    pub fn record(&self, event: UsageEvent) {
        let mut events = self.events.lock();
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Events at or after `since` (all when `None`), oldest first.
    pub fn since(&self, since: Option<DateTime<Utc>>) -> Vec<UsageEvent> {
        let events = self.events.lock();
        events
            .iter()
            .filter(|e| since.is_none_or(|s| e.timestamp >= s))
            .cloned()
            .collect()
    }

    /// Events held now.
    pub fn len(&self) -> usize {
        self.events.lock().len()
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
