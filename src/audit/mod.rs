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

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::{SharedClock, SystemClock};
use crate::key::redact_full_keys;
use crate::meter::{AdminEvent, EventSink, UsageEvent};

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

/// How much of an event's metadata is kept: strings as [`MAX_AUDIT_TEXT_CHARS`] says (and at
/// most 4 KiB), object keys as [`MAX_AUDIT_LABEL_CHARS`] says, at most 100 entries per array
/// or object, 8 levels of nesting and about 8 KiB of text in all; what is cut ends with `…`.
const METADATA_LIMITS: crate::meter::JsonLimits = crate::meter::JsonLimits {
    text_bytes: 4 * MAX_AUDIT_TEXT_CHARS,
    key_bytes: 4 * MAX_AUDIT_LABEL_CHARS,
    entries: 100,
    depth: 8,
    total_bytes: 8_192,
};

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
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            actor: None,
            since: None,
            until: None,
            limit: DEFAULT_AUDIT_QUERY_LIMIT,
        }
    }
}

impl AuditQuery {
    /// Whether `event` passes every filter (the limit aside).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.actor.as_ref().is_none_or(|a| *a == event.actor)
            && self.since.is_none_or(|s| event.timestamp >= s)
            && self.until.is_none_or(|u| event.timestamp <= u)
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

/// A summary of the log, for `GET /audit/stats`.
///
/// `total_events` and `events_by_type` count every ring together; `capacity` is the bound of
/// each of the four rings (see the [module docs](self)), so at most `4 × capacity` events are
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

/// Which ring an event is kept in; a flood of one class only evicts events of that class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
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
    fn of(event_type: &str, actor: &str) -> Self {
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
struct Rings {
    /// One ring per [`Class`], each in id (and so timestamp) order.
    rings: [VecDeque<AuditEvent>; CLASSES],
    /// Events held, by type, over every ring.
    by_type: BTreeMap<String, usize>,
    next_id: u64,
    newest_ms: Option<i64>,
}

impl Rings {
    fn len(&self) -> usize {
        self.rings.iter().map(VecDeque::len).sum()
    }

    fn pop_oldest(&mut self, class: usize) {
        let Some(old) = self.rings.get_mut(class).and_then(VecDeque::pop_front) else {
            return;
        };
        if let Some(n) = self.by_type.get_mut(&old.event_type) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_type.remove(&old.event_type);
            }
        }
    }

    /// Drops events older than `cutoff_ms`. Each ring is in timestamp order, so this only
    /// looks at the fronts: each event is examined once when it expires, never rescanned.
    fn prune_older_than(&mut self, cutoff_ms: i64) {
        for class in 0..CLASSES {
            while self.rings[class]
                .front()
                .is_some_and(|e| e.timestamp.timestamp_millis() < cutoff_ms)
            {
                self.pop_oldest(class);
            }
        }
    }

    /// Drops the oldest events of each ring beyond `capacity`.
    fn truncate(&mut self, capacity: usize) {
        for class in 0..CLASSES {
            while self.rings[class].len() > capacity {
                self.pop_oldest(class);
            }
        }
    }

    /// Every event, oldest first (merged by id).
    fn oldest_first(&self) -> Merged<std::collections::vec_deque::Iter<'_, AuditEvent>> {
        Merged::new(self.rings.each_ref().map(|r| r.iter()), false)
    }

    /// Every event, newest first (merged by id).
    fn newest_first(
        &self,
    ) -> Merged<std::iter::Rev<std::collections::vec_deque::Iter<'_, AuditEvent>>> {
        Merged::new(self.rings.each_ref().map(|r| r.iter().rev()), true)
    }
}

/// The rings' events merged into one sequence by id: ascending, or descending when
/// `newest_first`. Each input must already be in that order.
struct Merged<I: Iterator> {
    inputs: [std::iter::Peekable<I>; CLASSES],
    newest_first: bool,
}

impl<'a, I: Iterator<Item = &'a AuditEvent>> Merged<I> {
    fn new(inputs: [I; CLASSES], newest_first: bool) -> Self {
        Self {
            inputs: inputs.map(Iterator::peekable),
            newest_first,
        }
    }
}

impl<'a, I: Iterator<Item = &'a AuditEvent>> Iterator for Merged<I> {
    type Item = &'a AuditEvent;

    fn next(&mut self) -> Option<&'a AuditEvent> {
        let mut best: Option<(usize, u64)> = None;
        for (i, input) in self.inputs.iter_mut().enumerate() {
            let Some(id) = input.peek().map(|e| e.id) else {
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
        let class = Class::of(&event_type, &actor) as usize;
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
        *ring.by_type.entry(event_type.clone()).or_insert(0) += 1;
        ring.rings[class].push_back(AuditEvent {
            id,
            timestamp: crate::clock::ms_to_datetime(ms),
            event_type,
            actor,
            message,
            metadata,
        });
        id
    }

    /// Events matching `query`, newest first, with the number that matched before the limit.
    pub fn query(&self, query: &AuditQuery) -> AuditPage {
        let limit = query.limit.min(MAX_AUDIT_QUERY_LIMIT);
        let ring = self.pruned();
        let mut events = Vec::with_capacity(limit.min(ring.len()));
        let mut total = 0;
        for event in ring.newest_first().filter(|e| query.matches(e)) {
            total += 1;
            if events.len() < limit {
                events.push(event.clone());
            }
        }
        AuditPage { events, total }
    }

    /// Every event held, oldest first.
    pub fn export(&self) -> Vec<AuditEvent> {
        self.pruned().oldest_first().cloned().collect()
    }

    /// Every event held, oldest first, as CSV with the header
    /// `id,timestamp,type,actor,message,metadata`.
    ///
    /// Fields are quoted whenever they hold a quote, comma or line break, and any cell that
    /// starts with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'` so a
    /// spreadsheet shows it as text instead of running it as a formula.
    ///
    /// ```
    /// use paygate_mcp::AuditLog;
    /// let log = AuditLog::default();
    /// log.record("admin.auth_failed", "=cmd|' /C calc'!A0", "bad, \"key\"", serde_json::json!({}));
    /// let csv = log.export_csv();
    /// let row = csv.lines().nth(1).unwrap();
    /// assert!(row.ends_with(r#",admin.auth_failed,'=cmd|' /C calc'!A0,"bad, ""key""",{}"#));
    /// ```
    pub fn export_csv(&self) -> String {
        let events = self.export();
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        let mut rows: Vec<[String; 6]> = Vec::with_capacity(events.len() + 1);
        rows.push(["id", "timestamp", "type", "actor", "message", "metadata"].map(str::to_string));
        rows.extend(events.into_iter().map(|e| {
            [
                e.id.to_string(),
                e.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
                e.event_type,
                e.actor,
                e.message,
                e.metadata.to_string(),
            ]
        }));
        for row in rows {
            let cells: Vec<Cow<'_, str>> = row.iter().map(|c| neutralize_formula(c)).collect();
            // Writing to a Vec cannot fail; should it ever, the export ends at that row.
            if writer
                .write_record(cells.iter().map(|c| c.as_bytes()))
                .is_err()
            {
                break;
            }
        }
        match writer.into_inner() {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => String::from_utf8_lossy(e.into_inner().get_ref()).into_owned(),
        }
    }

    /// A summary: counts by type, oldest and newest timestamps, limits. Costs the number of
    /// distinct types, not the number of events.
    pub fn stats(&self) -> AuditStats {
        let ring = self.pruned();
        AuditStats {
            total_events: ring.len(),
            events_by_type: ring.by_type.clone(),
            oldest_event: ring.oldest_first().next().map(|e| e.timestamp),
            newest_event: ring.newest_first().next().map(|e| e.timestamp),
            capacity: self.capacity,
            max_age_days: self.max_age_days,
        }
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

impl EventSink for AuditLog {
    /// Records `gate.allow` or `gate.deny`, with the masked key as actor and
    /// `{tool, creditsCharged, denyReason}` as metadata.
    fn usage(&self, event: &UsageEvent) {
        // Cut request-derived text before it is copied into the message and metadata.
        let max = crate::meter::MAX_EVENT_TEXT_BYTES;
        let tool = crate::meter::clip(&event.tool, max);
        let deny_reason = event
            .deny_reason
            .as_deref()
            .map(|r| crate::meter::clip(r, max));
        let (event_type, message) = if event.allowed {
            let mut m = format!("Allowed call to {tool} ({} credits)", event.credits_charged);
            if let Some(reason) = &deny_reason {
                m.push_str(&format!(", would deny: {reason}"));
            }
            ("gate.allow", m)
        } else {
            let reason = deny_reason.as_deref().unwrap_or("denied");
            ("gate.deny", format!("Denied call to {tool}: {reason}"))
        };
        self.record(
            event_type,
            crate::meter::clip(&event.api_key, max),
            message,
            json!({
                "tool": tool,
                "creditsCharged": event.credits_charged,
                "denyReason": deny_reason,
            }),
        );
    }

    /// Records the admin event under its own type, with `data.actor` (when a string) or
    /// `"system"` as actor and `data` as metadata.
    fn admin(&self, event: &AdminEvent) {
        let actor = event
            .data
            .get("actor")
            .and_then(Value::as_str)
            .unwrap_or("system")
            .to_string();
        let message = describe(&event.event_type, &event.data);
        self.record(
            event.event_type.as_str(),
            actor,
            message,
            event.data.clone(),
        );
    }
}

/// A human-readable summary of an admin event, naming the key when the data carries one.
fn describe(event_type: &str, data: &Value) -> String {
    let base = match event_type {
        "key.created" => "API key created",
        "key.revoked" => "API key revoked",
        "key.rotated" => "API key rotated",
        "key.topup" => "Credits added to API key",
        "key.acl_updated" => "API key tool access updated",
        "key.expiry_updated" => "API key expiry updated",
        "key.quota_updated" => "API key quota updated",
        "key.limit_updated" => "API key spending limit updated",
        "key.tags_updated" => "API key tags updated",
        "key.ip_updated" => "API key IP allowlist updated",
        "key.expired" => "API key expired",
        "gate.allow" => "Tool call allowed",
        "gate.deny" => "Tool call denied",
        "admin.auth_failed" => "Admin authentication failed",
        "admin.alerts_configured" => "Alert rules configured",
        "billing.refund" => "Charge refunded",
        "alert.fired" => "Alert fired",
        other => return format!("Event {other}{}", key_suffix(data)),
    };
    format!("{base}{}", key_suffix(data))
}

fn key_suffix(data: &Value) -> String {
    ["keyMasked", "oldKeyMasked", "keyPrefix"]
        .iter()
        .find_map(|field| data.get(field).and_then(Value::as_str))
        .map(|k| format!(": {k}"))
        .unwrap_or_default()
}

/// Prefixes `'` to a cell a spreadsheet would otherwise read as a formula.
pub(crate) fn neutralize_formula(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// Cuts `text` to at most `max` characters (at least 1), the last one `…` when something
/// was cut.
fn truncate(mut text: String, max: usize) -> String {
    let max = max.max(1);
    if text.char_indices().nth(max).is_none() {
        return text;
    }
    let cut = text
        .char_indices()
        .nth(max - 1)
        .map_or(text.len(), |(i, _)| i);
    text.truncate(cut);
    text.push('…');
    text
}

/// `text` with full API keys masked, cut to `max` characters; copies only what it keeps
/// (unless a key had to be masked).
fn sanitize_str(text: &str, max: usize) -> Cow<'_, str> {
    let max = max.max(1);
    // Only text longer than `max` is copied, and only its first `max + 1` characters.
    let cut = |t: &str| {
        t.char_indices()
            .nth(max)
            .map(|_| truncate(t.chars().take(max + 1).collect(), max))
    };
    match redact_full_keys(text) {
        Cow::Borrowed(t) => cut(t).map_or(Cow::Borrowed(t), Cow::Owned),
        Cow::Owned(t) => Cow::Owned(cut(&t).unwrap_or(t)),
    }
}

/// A copy of `value` with full API keys masked in every string and object key, within
/// [`METADATA_LIMITS`].
fn sanitize_value(value: &Value) -> Value {
    crate::meter::bound_json(value, &METADATA_LIMITS, &|text, is_key| {
        let max = if is_key {
            MAX_AUDIT_LABEL_CHARS
        } else {
            MAX_AUDIT_TEXT_CHARS
        };
        sanitize_str(text, max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn log_at(ms: i64) -> (Arc<ManualClock>, AuditLog) {
        let clock = Arc::new(ManualClock::at_ms(ms));
        (clock.clone(), AuditLog::new(clock))
    }

    fn usage(allowed: bool, reason: Option<&str>) -> UsageEvent {
        UsageEvent {
            timestamp: crate::clock::ms_to_datetime(T0),
            api_key: "pg_1234...abcd".into(),
            key_name: "alice".into(),
            tool: "search".into(),
            credits_charged: if allowed { 3 } else { 0 },
            allowed,
            deny_reason: reason.map(str::to_string),
            duration_ms: None,
        }
    }

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

    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn csv_escapes_hostile_text_and_neutralizes_formulas() {
        let (_, log) = log_at(T0);
        let hostile = [
            "=cmd|' /C calc'!A0",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tTAB",
            "\rCR",
            "plain, with \"quotes\"\nand a newline",
        ];
        for h in hostile {
            log.record(h, h, h, json!({ "v": h }));
        }
        log.record("x", "-", "", json!(-5));
        let csv_text = log.export_csv();
        assert!(csv_text.starts_with("id,timestamp,type,actor,message,metadata\r\n"));
        let rows = parse_csv(&csv_text);
        assert_eq!(rows.len(), hostile.len() + 1, "each event is one record");
        for (row, h) in rows.iter().zip(hostile) {
            assert_eq!(row.len(), 6);
            let expected = if h.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{h}")
            } else {
                h.to_string()
            };
            assert_eq!(row[2], expected);
            assert_eq!(row[3], expected);
            assert_eq!(row[4], expected);
            let meta: Value = serde_json::from_str(&row[5]).unwrap();
            assert_eq!(meta["v"], h);
        }
        let last = rows.last().unwrap();
        assert_eq!(last[3], "'-");
        assert_eq!(last[5], "'-5");
        assert_eq!(rows[0][0], "1");
        assert_eq!(rows[0][1], "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn empty_log_exports_only_the_header() {
        let (_, log) = log_at(T0);
        assert_eq!(
            log.export_csv(),
            "id,timestamp,type,actor,message,metadata\r\n"
        );
    }

    #[test]
    fn full_keys_are_masked_before_storage() {
        let (_, log) = log_at(T0);
        let key = format!("pg_{}", "ab12".repeat(12));
        log.record(
            "key.created",
            key.as_str(),
            format!("created {key}!"),
            json!({"key": key, "nested": [{ key.clone(): "v" }]}),
        );
        let e = &log.export()[0];
        let masked = crate::key::mask_key(&key);
        assert_eq!(e.actor, masked);
        assert_eq!(e.message, format!("created {masked}!"));
        assert_eq!(e.metadata["key"], masked.as_str());
        assert_eq!(e.metadata["nested"][0][masked.as_str()], "v");
        assert!(!log.export_csv().contains(&key));
    }

    #[test]
    fn long_text_is_cut_on_character_boundaries() {
        let (_, log) = log_at(T0);
        let huge = "é".repeat(100_000);
        log.record(
            huge.as_str(),
            huge.as_str(),
            huge.as_str(),
            json!({ "tool": huge, "ok": "short" }),
        );
        let e = &log.export()[0];
        assert_eq!(e.event_type.chars().count(), MAX_AUDIT_LABEL_CHARS);
        assert_eq!(e.actor.chars().count(), MAX_AUDIT_LABEL_CHARS);
        assert_eq!(e.message.chars().count(), MAX_AUDIT_TEXT_CHARS);
        assert!(e.message.ends_with("é…"));
        let tool = e.metadata["tool"].as_str().unwrap();
        assert_eq!(tool.chars().count(), MAX_AUDIT_TEXT_CHARS);
        assert_eq!(e.metadata["ok"], "short");
        assert_eq!(truncate("abc".into(), 3), "abc");
        assert_eq!(truncate("abcd".into(), 3), "ab…");
        assert_eq!(truncate("abcd".into(), 0), "…");
        assert_eq!(truncate(String::new(), 0), "");
    }

    /// Bytes an event holds in its text, roughly what it costs in memory beyond its fixed
    /// size.
    fn event_bytes(e: &AuditEvent) -> usize {
        e.event_type.len() + e.actor.len() + e.message.len() + e.metadata.to_string().len()
    }

    #[test]
    fn metadata_is_bounded_in_entries_depth_and_size() {
        let (_, log) = log_at(T0);
        let huge = "x".repeat(1 << 20);
        let wide: Vec<Value> = (0..100_000).map(|i| json!(i)).collect();
        let many: serde_json::Map<String, Value> =
            (0..10_000).map(|i| (format!("k{i}"), json!(i))).collect();
        let mut deep = json!("bottom");
        for _ in 0..100 {
            deep = json!([deep]);
        }
        log.record(
            huge.as_str(),
            huge.as_str(),
            huge.as_str(),
            json!({"wide": wide, "many": many, "deep": deep, (huge.clone()): huge, "a": huge}),
        );
        let e = &log.export()[0];
        let meta = e.metadata.to_string().len();
        assert!(meta <= 8_192 + 2 * 4_096, "metadata kept {meta} bytes");
        assert!(event_bytes(e) <= 24 * 1_024, "{}", event_bytes(e));
        let wide = e.metadata["wide"].as_array();
        assert!(wide.is_none_or(|w| w.len() <= 101));
        // Ordinary metadata is kept whole.
        log.record(
            "key.created",
            "admin",
            "",
            json!({"name": "a", "allowedTools": ["x", "y"], "quota": {"dailyCallLimit": 5}}),
        );
        assert_eq!(
            log.export()[1].metadata,
            json!({"name": "a", "allowedTools": ["x", "y"], "quota": {"dailyCallLimit": 5}})
        );
    }

    #[test]
    fn keyless_calls_with_huge_tool_names_store_little() {
        let (_, log) = log_at(T0);
        let mut e = usage(false, Some("invalid_api_key"));
        e.api_key = String::new();
        e.tool = "é".repeat(500_000); // 1 MB
        log.usage(&e);
        let stored = &log.export()[0];
        let tool = stored.metadata["tool"].as_str().unwrap();
        assert!(tool.len() <= crate::meter::MAX_EVENT_TEXT_BYTES);
        assert!(tool.ends_with('…'));
        assert!(stored.message.len() <= crate::meter::MAX_EVENT_TEXT_BYTES + 64);
        assert!(event_bytes(stored) <= 1_024, "{}", event_bytes(stored));
    }

    #[test]
    fn redaction_leaves_other_text_alone() {
        assert!(matches!(redact_full_keys("no keys here"), Cow::Borrowed(_)));
        assert!(matches!(
            redact_full_keys("pg_1234...abcd"),
            Cow::Borrowed(_)
        ));
        let short = format!("pg_{}", "a".repeat(47));
        assert_eq!(redact_full_keys(&short), short);
        let two = format!("pg_pg_{0} é pg_{0}", "f".repeat(48));
        let m = crate::key::mask_key(&format!("pg_{}", "f".repeat(48)));
        assert_eq!(redact_full_keys(&two), format!("pg_{m} é {m}"));
        assert_eq!(redact_full_keys("ép"), "ép");
        assert_eq!(redact_full_keys("pg_"), "pg_");
    }

    #[test]
    fn usage_events_become_gate_allow_and_gate_deny() {
        let (_, log) = log_at(T0);
        log.usage(&usage(true, None));
        log.usage(&usage(false, Some("insufficient_credits")));
        log.usage(&usage(true, Some("shadow:rate_limited")));
        let events = log.export();
        assert_eq!(events[0].event_type, "gate.allow");
        assert_eq!(events[0].actor, "pg_1234...abcd");
        assert_eq!(
            events[0].metadata,
            json!({"tool": "search", "creditsCharged": 3, "denyReason": null})
        );
        assert_eq!(events[1].event_type, "gate.deny");
        assert_eq!(
            events[1].metadata,
            json!({"tool": "search", "creditsCharged": 0, "denyReason": "insufficient_credits"})
        );
        assert!(events[1].message.contains("insufficient_credits"));
        assert_eq!(events[2].event_type, "gate.allow");
        assert_eq!(events[2].metadata["denyReason"], "shadow:rate_limited");
    }

    #[test]
    fn admin_events_keep_their_type_and_data() {
        let (_, log) = log_at(T0);
        let event = |t: &str, data: Value| AdminEvent {
            event_type: t.into(),
            timestamp: crate::clock::ms_to_datetime(T0),
            data,
        };
        log.admin(&event(
            "key.revoked",
            json!({"keyMasked": "pg_1234...abcd"}),
        ));
        log.admin(&event(
            "key.topup",
            json!({"actor": "admin", "creditsAdded": 5}),
        ));
        log.admin(&event("custom.thing", json!({"actor": 7})));
        log.admin(&event("billing.refund", json!(null)));
        let e = log.export();
        assert_eq!(e[0].event_type, "key.revoked");
        assert_eq!(e[0].actor, "system");
        assert_eq!(e[0].message, "API key revoked: pg_1234...abcd");
        assert_eq!(e[0].metadata, json!({"keyMasked": "pg_1234...abcd"}));
        assert_eq!(e[1].actor, "admin");
        assert_eq!(e[1].message, "Credits added to API key");
        assert_eq!(e[2].actor, "system", "a non-string actor is ignored");
        assert_eq!(e[2].message, "Event custom.thing");
        assert_eq!(e[3].message, "Charge refunded");
        assert_eq!(e[3].metadata, Value::Null);
    }

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
