//! Prometheus metrics: counters fed by the gate's events, gauges read at scrape time from
//! aggregates the store keeps up to date (so a scrape costs the same at any number of keys).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::clock::SharedClock;
use crate::meter::{AdminEvent, EventSink, UsageEvent};
use crate::store::StoreStats;

/// Distinct tool labels kept before further names are counted as `(other)`, so clients
/// sending random tool names cannot blow up the series count.
pub const MAX_TOOL_LABELS: usize = 500;
/// Distinct deny-reason labels kept before further reasons are counted as `(other)`.
pub const MAX_REASON_LABELS: usize = 64;
/// Longest label value kept, in bytes; a longer tool name or reason is counted as `(other)`.
pub const MAX_LABEL_BYTES: usize = crate::meter::MAX_EVENT_TEXT_BYTES;
const OTHER: &str = "(other)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolStatus {
    tool: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    status: String,
}

/// The tool label of calls without a known key (their names are not trusted).
pub const UNAUTHENTICATED_LABEL: &str = "(unauthenticated)";

/// The gateway's Prometheus metrics.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{EventSink, Metrics, StoreStats, SystemClock, UsageEvent};
/// let metrics = Metrics::new(Arc::new(SystemClock));
/// metrics.usage(&UsageEvent {
///     timestamp: chrono::Utc::now(), api_key: "pg_1234...abcd".into(), key_id: None, key_name: "k".into(),
///     tool: "search".into(), credits_charged: 5, allowed: true, deny_reason: None, duration_ms: None,
/// });
/// let text = metrics.render(StoreStats::default(), 0);
/// assert!(text.contains(r#"paygate_tool_calls_total{tool="search",status="allowed"} 1"#));
/// assert!(text.contains(r#"paygate_credits_charged_total{tool="search"} 5"#));
/// ```
pub struct Metrics {
    registry: Registry,
    tool_calls: Family<ToolStatus, Counter>,
    credits: Family<ToolLabel, Counter>,
    denials: Family<ReasonLabel, Counter>,
    rate_limit_hits: Counter,
    refunds: Counter,
    refunded_credits: Counter,
    purchases: Counter,
    purchased_credits: Counter,
    http_requests: Family<HttpLabels, Counter>,
    active_keys: Gauge,
    total_credits: Gauge,
    pending_alerts: Gauge,
    uptime: Gauge,
    tools_seen: Mutex<HashSet<String>>,
    reasons_seen: Mutex<HashSet<String>>,
    started_ms: AtomicU64,
    clock: SharedClock,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Fresh metrics; uptime counts from now on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let mut registry = Registry::default();
        let tool_calls = Family::<ToolStatus, Counter>::default();
        let credits = Family::<ToolLabel, Counter>::default();
        let denials = Family::<ReasonLabel, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let (rate_limit_hits, refunds, refunded_credits) =
            (Counter::default(), Counter::default(), Counter::default());
        let (purchases, purchased_credits) = (Counter::default(), Counter::default());
        let (active_keys, total_credits, pending_alerts, uptime) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "paygate_tool_calls",
            "Gated tool calls by tool and status (allowed or denied)",
            tool_calls.clone(),
        );
        registry.register(
            "paygate_credits_charged",
            "Credits charged by tool",
            credits.clone(),
        );
        registry.register("paygate_denials", "Denied calls by reason", denials.clone());
        registry.register(
            "paygate_rate_limit_hits",
            "Calls denied by a rate limit",
            rate_limit_hits.clone(),
        );
        registry.register(
            "paygate_refunds",
            "Calls refunded after a downstream failure",
            refunds.clone(),
        );
        registry.register(
            "paygate_refunded_credits",
            "Credits refunded",
            refunded_credits.clone(),
        );
        registry.register(
            "paygate_purchases",
            "Payments credited (Stripe)",
            purchases.clone(),
        );
        registry.register(
            "paygate_purchased_credits",
            "Credits bought through payments (Stripe)",
            purchased_credits.clone(),
        );
        registry.register(
            "paygate_http_requests",
            "HTTP requests by method and status",
            http_requests.clone(),
        );
        registry.register(
            "paygate_active_keys",
            "API keys not revoked",
            active_keys.clone(),
        );
        registry.register(
            "paygate_total_credits_available",
            "Credits held by active keys",
            total_credits.clone(),
        );
        registry.register(
            "paygate_pending_alerts",
            "Alerts waiting to be consumed",
            pending_alerts.clone(),
        );
        registry.register(
            "paygate_uptime_seconds",
            "Seconds since the gateway started",
            uptime.clone(),
        );
        Self {
            registry,
            tool_calls,
            credits,
            denials,
            rate_limit_hits,
            refunds,
            refunded_credits,
            purchases,
            purchased_credits,
            http_requests,
            active_keys,
            total_credits,
            pending_alerts,
            uptime,
            tools_seen: Mutex::new(HashSet::new()),
            reasons_seen: Mutex::new(HashSet::new()),
            started_ms: AtomicU64::new(u64::try_from(clock.now_ms()).unwrap_or(0)),
            clock,
        }
    }

    /// `value` as a label when it is already one, or when there is room for one more among
    /// at most `max` distinct values of at most [`MAX_LABEL_BYTES`] bytes; `(other)` otherwise.
    fn label(seen: &Mutex<HashSet<String>>, value: &str, max: usize) -> String {
        if value.len() > MAX_LABEL_BYTES {
            return OTHER.to_string();
        }
        let mut seen = seen.lock();
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= max {
            return OTHER.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }

    /// Counts one HTTP request.
    pub fn observe_http(&self, method: &str, status: u16) {
        let method = match method {
            "GET" | "POST" | "DELETE" | "PUT" | "PATCH" | "OPTIONS" | "HEAD" => method,
            _ => "OTHER",
        };
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition, with gauges set from `stats` and `pending_alerts`.
    pub fn render(&self, stats: StoreStats, pending_alerts: usize) -> String {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.active_keys.set(clamp(stats.active_keys));
        self.total_credits.set(clamp(stats.total_credits));
        self.pending_alerts.set(clamp(pending_alerts as u64));
        let started = i64::try_from(self.started_ms.load(Ordering::Relaxed)).unwrap_or(0);
        self.uptime
            .set((self.clock.now_ms() - started).max(0) / 1000);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl EventSink for Metrics {
    fn usage(&self, event: &UsageEvent) {
        // Anyone can send a made-up tool name without a key: those calls share one label, so
        // they can never use up the per-tool series that real tools and revenue are counted in.
        let unauthenticated = matches!(
            event
                .deny_reason
                .as_deref()
                .map(|r| r.trim_start_matches("shadow:")),
            Some("missing_api_key" | "invalid_api_key")
        );
        let tool = if unauthenticated {
            UNAUTHENTICATED_LABEL.to_string()
        } else {
            Self::label(&self.tools_seen, &event.tool, MAX_TOOL_LABELS)
        };
        let status = if event.allowed { "allowed" } else { "denied" };
        self.tool_calls
            .get_or_create(&ToolStatus {
                tool: tool.clone(),
                status: status.to_string(),
            })
            .inc();
        if event.credits_charged > 0 {
            self.credits
                .get_or_create(&ToolLabel { tool })
                .inc_by(event.credits_charged);
        }
        if let Some(reason) = &event.deny_reason {
            self.denials
                .get_or_create(&ReasonLabel {
                    reason: Self::label(&self.reasons_seen, reason, MAX_REASON_LABELS),
                })
                .inc();
            if reason.ends_with("rate_limited") {
                self.rate_limit_hits.inc();
            }
        }
    }

    fn admin(&self, event: &AdminEvent) {
        if event.event_type == "billing.stripe_topup" {
            self.purchases.inc();
            if let Some(credits) = event
                .data
                .get("creditsAdded")
                .and_then(serde_json::Value::as_u64)
            {
                self.purchased_credits.inc_by(credits);
            }
        }
        if event.event_type == "billing.refund" {
            self.refunds.inc();
            if let Some(credits) = event
                .data
                .get("credits")
                .and_then(serde_json::Value::as_u64)
            {
                self.refunded_credits.inc_by(credits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn event(tool: &str, allowed: bool, reason: Option<&str>) -> UsageEvent {
        UsageEvent {
            timestamp: chrono::Utc::now(),
            api_key: "pg_1234...abcd".into(),
            key_id: None,
            key_name: "k".into(),
            tool: tool.into(),
            credits_charged: u64::from(allowed),
            allowed,
            deny_reason: reason.map(str::to_string),
            duration_ms: None,
        }
    }

    #[test]
    fn counters_gauges_and_uptime() {
        let clock = Arc::new(ManualClock::at_ms(1_000_000));
        let m = Metrics::new(clock.clone());
        m.usage(&event("a", true, None));
        m.usage(&event("a", false, Some("rate_limited")));
        m.usage(&event("a", false, Some("tool_rate_limited")));
        m.admin(&AdminEvent {
            event_type: "billing.refund".into(),
            timestamp: chrono::Utc::now(),
            data: serde_json::json!({"credits": 4}),
        });
        m.admin(&AdminEvent {
            event_type: "billing.stripe_topup".into(),
            timestamp: chrono::Utc::now(),
            data: serde_json::json!({"creditsAdded": 500}),
        });
        m.observe_http("POST", 200);
        clock.advance_secs(90);
        let text = m.render(
            StoreStats {
                total_keys: 3,
                active_keys: 2,
                total_credits: 50,
            },
            1,
        );
        for line in [
            r#"paygate_tool_calls_total{tool="a",status="denied"} 2"#,
            r#"paygate_denials_total{reason="rate_limited"} 1"#,
            "paygate_rate_limit_hits_total 2",
            "paygate_refunds_total 1",
            "paygate_refunded_credits_total 4",
            "paygate_purchases_total 1",
            "paygate_purchased_credits_total 500",
            r#"paygate_http_requests_total{method="POST",status="200"} 1"#,
            "paygate_active_keys 2",
            "paygate_total_credits_available 50",
            "paygate_pending_alerts 1",
            "paygate_uptime_seconds 90",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn hostile_tool_names_cannot_grow_series_without_bound() {
        let m = Metrics::new(Arc::new(ManualClock::at_ms(0)));
        // Callers without a known key never get a name of their own.
        for i in 0..(MAX_TOOL_LABELS + 300) {
            m.usage(&event(
                &format!("keyless-{i}"),
                false,
                Some("invalid_api_key"),
            ));
        }
        let text = m.render(StoreStats::default(), 0);
        assert!(text.contains(&format!(
            r#"paygate_tool_calls_total{{tool="{UNAUTHENTICATED_LABEL}",status="denied"}} {}"#,
            MAX_TOOL_LABELS + 300
        )));
        // Names from known keys are capped too.
        for i in 0..(MAX_TOOL_LABELS + 300) {
            m.usage(&event(&format!("random-{i}"), false, Some("tool_denied")));
        }
        let text = m.render(StoreStats::default(), 0);
        let series = text
            .lines()
            .filter(|l| l.starts_with("paygate_tool_calls_total{"))
            .count();
        assert_eq!(series, MAX_TOOL_LABELS + 2);
        assert!(text.contains(r#"paygate_tool_calls_total{tool="(other)",status="denied"} 300"#));
        // Over-long names are never a label.
        m.usage(&event(&"x".repeat(1 << 20), true, None));
        let text = m.render(StoreStats::default(), 0);
        assert!(text.contains(r#"paygate_tool_calls_total{tool="(other)",status="allowed"} 1"#));
        assert!(text.len() < 1 << 20);
        m.observe_http("BREW", 418);
        assert!(m
            .render(StoreStats::default(), 0)
            .contains(r#"method="OTHER""#));
    }

    #[test]
    fn deny_reasons_cannot_grow_series_without_bound() {
        let m = Metrics::new(Arc::new(ManualClock::at_ms(0)));
        for i in 0..(MAX_REASON_LABELS + 50) {
            m.usage(&event("a", false, Some(&format!("reason-{i}"))));
        }
        m.usage(&event("a", false, Some(&"r".repeat(1 << 20))));
        let text = m.render(StoreStats::default(), 0);
        let series = text
            .lines()
            .filter(|l| l.starts_with("paygate_denials_total{"))
            .count();
        assert_eq!(series, MAX_REASON_LABELS + 1);
        assert!(text.contains(r#"paygate_denials_total{reason="(other)"} 51"#));
        assert!(text.len() < 1 << 20);
    }
}
