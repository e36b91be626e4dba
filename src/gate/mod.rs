//! The gate: SPEC §3's ordered checks for one `tools/call`, as plain Rust.
//!
//! [`Gate::evaluate`] resolves the price, asks the store to check and charge atomically,
//! records the usage event, feeds analytics and checks alert rules. It knows nothing of HTTP;
//! the tower layers translate requests into [`CallRequest`]s and [`Decision`]s into responses.
//!
//! This file holds the decision (`evaluate`, `decide`, `authorize`, refunds, usage
//! recording); `keys.rs` holds the key lifecycle (create, read, list, change, rotate,
//! revoke), which every caller, the admin API included, goes through instead of the store.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::blocking::block_on;
use crate::deny::{DenyCategory, DenyReason};
pub use keys::{GateError, IssuedKey};

mod keys;

use crate::alerts::{Alert, AlertContext, AlertEngine};
use crate::analytics::AnalyticsEngine;
use crate::clock::{ms_to_datetime, SharedClock, SystemClock};
use crate::config::{ConfigError, PayGateConfig};
use crate::key::{KeyDigest, KeyRecord};
use crate::meter::{AdminEvent, EventSink, UsageEvent, UsageMeter};
use crate::pricing::Pricing;
use crate::ratelimit::RateState;
use crate::store::{
    ChargeOutcome, ChargeReceipt, ChargeRequest, Checks, KeySnapshot, KeyStore, MemoryKeyStore,
    StoreError,
};

/// One `tools/call` as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    /// The API key sent, if any.
    pub api_key: Option<&'a str>,
    /// The key's digest, when the caller was authenticated another way that names the
    /// account (an OAuth access token acting for it); it wins over `api_key`.
    pub account: Option<KeyDigest>,
    /// The tool called (exact name).
    pub tool: &'a str,
    /// Size of the arguments as compact JSON (see [`crate::compact_json_len`]).
    pub input_bytes: usize,
    /// The client's IP, when known.
    pub client_ip: Option<IpAddr>,
}

impl<'a> CallRequest<'a> {
    /// A call to `tool` with `api_key`, no arguments and no known IP.
    pub fn new(api_key: &'a str, tool: &'a str) -> Self {
        Self {
            api_key: Some(api_key),
            account: None,
            tool,
            input_bytes: 0,
            client_ip: None,
        }
    }

    /// A call to `tool` by the account whose key has digest `account` (authenticated by an
    /// OAuth token, say, rather than by the key itself).
    pub fn for_account(account: KeyDigest, tool: &'a str) -> Self {
        Self {
            api_key: None,
            account: Some(account),
            tool,
            input_bytes: 0,
            client_ip: None,
        }
    }

    /// The digest of the key the call presents: the account's, else the sent key's.
    fn presented(&self) -> Option<KeyDigest> {
        self.account
            .or_else(|| self.api_key.filter(|k| !k.is_empty()).map(KeyDigest::of))
    }

    /// Sets the client IP.
    pub fn from_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Sets the arguments' compact-JSON size.
    pub fn with_input_bytes(mut self, bytes: usize) -> Self {
        self.input_bytes = bytes;
        self
    }
}

/// The gate's answer for one call.
#[derive(Debug)]
pub struct Decision {
    /// Whether the call may go to the tool.
    pub allowed: bool,
    /// True when shadow mode let through a call that `reason` would have denied.
    pub shadow: bool,
    /// Why the call was denied (or would have been, in shadow mode).
    pub reason: Option<DenyReason>,
    /// Human detail for the reason (`need 5, have 2`).
    pub detail: String,
    /// The tool called.
    pub tool: String,
    /// The call's price.
    pub credits_required: u64,
    /// Credits actually deducted.
    pub credits_charged: u64,
    /// The key's balance afterwards, when the key is known.
    pub remaining_credits: Option<u64>,
    /// Seconds until a rate-limited call could pass.
    pub retry_after_secs: Option<u64>,
    /// The rate window the response headers report.
    pub rate: Option<RateState>,
    /// Needed to refund the charge.
    pub receipt: Option<ChargeReceipt>,
    /// The key's state afterwards, when the key is known.
    pub key: Option<KeySnapshot>,
    /// Alerts this call fired.
    pub alerts: Vec<Alert>,
    /// True the first time this key was seen expired (emit `key.expired`).
    pub key_expired: bool,
}

impl Decision {
    /// A denial made before (or without) the store's charge: no key state, nothing charged.
    /// In shadow mode the call is let through, and recorded as `shadow:<reason>`, unless the
    /// store could not be asked at all: that fails closed in every mode.
    fn denied(reason: DenyReason, detail: String, tool: &str, price: u64, shadow: bool) -> Self {
        let shadow = shadow && reason != DenyReason::StoreUnavailable;
        Self {
            allowed: shadow,
            shadow,
            reason: Some(reason),
            detail,
            tool: tool.to_string(),
            credits_required: price,
            credits_charged: 0,
            remaining_credits: None,
            retry_after_secs: None,
            rate: None,
            receipt: None,
            key: None,
            alerts: Vec::new(),
            key_expired: false,
        }
    }

    /// `<Category>: <reason>: <detail>`, e.g. `Payment required: insufficient_credits: need 5, have 2`.
    pub fn message(&self) -> String {
        match self.reason {
            Some(r) if self.detail.is_empty() => format!("{}: {}", r.category().label(), r),
            Some(r) => format!("{}: {}: {}", r.category().label(), r, self.detail),
            None => "allowed".to_string(),
        }
    }
}

/// The gate over a store `S` (in memory by default).
///
/// ```
/// use paygate_mcp::{CallRequest, DenyReason, Gate, ManualClock, MemoryKeyStore, PayGateConfig};
/// use std::sync::Arc;
///
/// let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
/// let cfg = PayGateConfig::default().with_tool_price("search", 5);
/// let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).unwrap();
/// let key = gate.create_key_blocking("alice", 7).unwrap();
///
/// let first = gate.evaluate_blocking(&CallRequest::new(&key, "search"));
/// assert!(first.allowed);
/// assert_eq!(first.remaining_credits, Some(2));
///
/// let second = gate.evaluate_blocking(&CallRequest::new(&key, "search"));
/// assert_eq!(second.reason, Some(DenyReason::InsufficientCredits));
/// assert_eq!(second.message(), "Payment required: insufficient_credits: need 5, have 2");
/// ```
///
/// Keys are created, read, changed, rotated and revoked through the gate too, never the
/// store directly, so the core's rules hold however keys are managed:
///
/// ```
/// use paygate_mcp::{block_on, Gate, KeyUpdate, PayGateConfig};
///
/// let gate = Gate::new(PayGateConfig::default()).unwrap();
/// let key = gate.create_key_blocking("alice", 10).unwrap();
/// block_on(async {
///     let rec = gate.top_up(&key, 5).await.unwrap().expect("a known key");
///     assert_eq!(rec.credits, 15);
///     assert!(gate.top_up(&key, 0).await.is_err(), "a top-up adds at least one credit");
///
///     let change = KeyUpdate::SetSpendingLimit(12);
///     assert_eq!(gate.update_key(&key, change).await.unwrap().unwrap().spending_limit, 12);
///
///     let rotated = gate.rotate(&key).await.unwrap().expect("a known key");
///     assert!(gate.get_key(&key).await.unwrap().is_none(), "the old key is gone");
///     assert_eq!(rotated.record.credits, 15, "the new key has everything the old one had");
///
///     gate.revoke(&rotated.key).await.unwrap();
///     assert!(!gate.get_key(&rotated.key).await.unwrap().unwrap().active);
///     assert_eq!(gate.key_stats().await.unwrap().active_keys, 0);
/// });
/// ```
pub struct Gate<S = MemoryKeyStore> {
    store: S,
    config: PayGateConfig,
    pricing: Pricing,
    clock: SharedClock,
    alerts: AlertEngine,
    analytics: AnalyticsEngine,
    meter: UsageMeter,
    sink: Option<Arc<dyn EventSink>>,
}

impl<S> fmt::Debug for Gate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.config.name)
            .finish()
    }
}

impl Gate<MemoryKeyStore> {
    /// A gate over a fresh in-memory store and the system clock.
    pub fn new(config: PayGateConfig) -> Result<Self, ConfigError> {
        Self::with_store(config, MemoryKeyStore::new(), Arc::new(SystemClock))
    }
}

impl<S: KeyStore> Gate<S> {
    /// A gate over `store`, reading time from `clock`. Refuses an invalid config.
    pub fn with_store(
        config: PayGateConfig,
        store: S,
        clock: SharedClock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            pricing: Pricing::from_config(&config),
            alerts: AlertEngine::new(config.alert_rules.clone(), clock.clone()),
            analytics: AnalyticsEngine::new(clock.clone()),
            meter: UsageMeter::default(),
            sink: None,
            store,
            config,
            clock,
        })
    }

    /// Sends every usage and admin event to `sink` as well.
    pub fn with_event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Emits an admin event to the sink, if any.
    pub fn emit(&self, event_type: &str, data: serde_json::Value) {
        if let Some(sink) = &self.sink {
            sink.admin(&AdminEvent {
                event_type: event_type.to_string(),
                timestamp: self.clock.now(),
                data,
            });
        }
    }

    /// Hands a decision's fired alerts (`alert.fired`) and first expiry (`key.expired`) to
    /// the event sink.
    pub fn dispatch_events(&self, decision: &Decision) {
        if self.sink.is_none() {
            return;
        }
        if let (true, Some(key)) = (decision.key_expired, &decision.key) {
            self.emit(
                "key.expired",
                serde_json::json!({"keyMasked": key.key_masked, "keyId": key.key_id, "name": key.name}),
            );
        }
        self.emit_alerts(&decision.alerts);
    }

    /// `alert.fired` for each alert.
    fn emit_alerts(&self, alerts: &[Alert]) {
        if self.sink.is_none() {
            return;
        }
        for alert in alerts {
            self.emit(
                "alert.fired",
                serde_json::json!({
                    "alertType": alert.alert_type.as_str(),
                    "keyPrefix": alert.key_prefix,
                    "keyId": alert.key_id,
                    "message": alert.message,
                    "value": alert.current_value,
                    "threshold": alert.threshold,
                }),
            );
        }
    }

    /// Refunds a failed call and records a `billing.refund` event with `reason`.
    pub async fn refund_and_record(&self, receipt: ChargeReceipt, reason: &str) {
        let credits = receipt.credits;
        match self.refund(receipt).await {
            // Undoing a count (a quota-only charge) gives nothing back: no refund event.
            Ok(Some(_)) if credits == 0 => {}
            Ok(Some(snap)) => {
                tracing::info!(key = %snap.key_masked, credits, reason, "refunded");
                self.emit(
                    "billing.refund",
                    serde_json::json!({
                        "keyMasked": snap.key_masked,
                        "keyId": snap.key_id,
                        "credits": credits,
                        "reason": reason,
                        "balance": snap.credits,
                    }),
                )
            }
            Ok(None) => {}
            // The store keeps what it owes and applies it once it answers (see
            // `RedisKeyStore`); the event says the refund is not applied yet.
            Err(e) => {
                tracing::warn!(credits, reason, error = %e, "refund deferred: the store did not answer");
                self.emit(
                "billing.refund_deferred",
                serde_json::json!({"credits": credits, "reason": reason, "error": e.to_string()}),
            )
            }
        }
    }

    /// The store, for what is particular to one backend (saving a state file, a Redis
    /// store's unsettled charges). Keys are created, read and changed through the gate's
    /// own methods ([`Gate::create_key_with`], [`Gate::update_key`], …), which keep its
    /// rules.
    pub fn store(&self) -> &S {
        &self.store
    }
    /// The config the gate was built with.
    pub fn config(&self) -> &PayGateConfig {
        &self.config
    }
    /// The price list.
    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }
    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
    /// The alert engine.
    pub fn alerts(&self) -> &AlertEngine {
        &self.alerts
    }
    /// The analytics engine.
    pub fn analytics(&self) -> &AnalyticsEngine {
        &self.analytics
    }
    /// Recent usage events.
    pub fn meter(&self) -> &UsageMeter {
        &self.meter
    }

    /// Whether `method` passes without a key and without billing.
    pub fn is_free_method(&self, method: &str) -> bool {
        self.config.free_methods.iter().any(|m| m == method)
    }

    /// Runs SPEC §3 for one `tools/call`: decide, charge atomically, record, alert.
    pub async fn evaluate(&self, call: &CallRequest<'_>) -> Decision {
        let (decision, decided_at_ms) = self.decide(call, Checks::ALL, true).await;
        self.record_usage(&decision, decided_at_ms, None, false);
        decision
    }

    /// [`Gate::evaluate`] with only `checks` applied and, with `alerts`, the alert rules
    /// checked; the usage event is not recorded: the caller records it with
    /// [`Gate::record_usage`] and the returned time, e.g. once the call is on its way.
    pub(crate) async fn decide(
        &self,
        call: &CallRequest<'_>,
        checks: Checks,
        alerts: bool,
    ) -> (Decision, i64) {
        let now_ms = self.clock.now_ms();
        // Without billing the call costs nothing, and says so in a denial.
        let price = checks.price(self.pricing.price(call.tool, call.input_bytes));
        let outcome = self.charge(call, price, now_ms, checks).await;
        (self.conclude(call, price, outcome, alerts), now_ms)
    }

    /// Checks the alert rules against a key's record and hands what fires to the event
    /// sink, for a call that made no decision (alerts without billing, quota or rate limits).
    pub(crate) fn alert_on(&self, rec: &KeyRecord) {
        let snap = KeySnapshot::of(rec, self.clock.now_ms(), self.config.global_quota);
        let fired = self.alerts.check(&snap, AlertContext::default());
        self.emit_alerts(&fired);
    }

    /// The store's atomic check-and-charge for `call`.
    async fn charge(
        &self,
        call: &CallRequest<'_>,
        price: u64,
        now_ms: i64,
        checks: Checks,
    ) -> Result<ChargeOutcome, DenyReason> {
        match call.presented() {
            None => Err(DenyReason::MissingApiKey),
            Some(key) => {
                let req = ChargeRequest {
                    key,
                    tool: call.tool,
                    price,
                    client_ip: call.client_ip,
                    now_ms,
                    // Applied here as well as by the store, so a store that does not
                    // know `checks` yet still charges and limits only what is present.
                    global_rate_limit: checks.rate_limit(self.config.global_rate_limit_per_min),
                    tool_rate_limit: checks.rate_limit(self.pricing.tool_rate_limit(call.tool)),
                    global_quota: self.config.global_quota,
                    shadow: self.config.shadow_mode,
                    checks,
                };
                self.store
                    .charge(&req)
                    .await
                    .map_err(|_| DenyReason::StoreUnavailable)
            }
        }
    }

    /// The decision for a charge's outcome, with the alerts it fires.
    #[inline]
    fn conclude(
        &self,
        call: &CallRequest<'_>,
        price: u64,
        outcome: Result<ChargeOutcome, DenyReason>,
        alerts: bool,
    ) -> Decision {
        let shadow = self.config.shadow_mode;
        let mut decision = match outcome {
            Err(reason) => Decision::denied(
                reason,
                self.detail(reason, call, price, None, None),
                call.tool,
                price,
                shadow,
            ),
            Ok(out) => {
                let detail = out
                    .denial
                    .map(|r| {
                        self.detail(r, call, price, out.snapshot.as_ref(), out.retry_after_secs)
                    })
                    .unwrap_or_default();
                let allowed = out.denial.is_none() || shadow;
                Decision {
                    allowed,
                    shadow: shadow && out.denial.is_some(),
                    reason: out.denial,
                    detail,
                    tool: call.tool.to_string(),
                    credits_required: price,
                    credits_charged: out.receipt.as_ref().map_or(0, |r| r.credits),
                    remaining_credits: out.snapshot.as_ref().map(|s| s.credits),
                    retry_after_secs: out.retry_after_secs,
                    rate: out.rate,
                    receipt: out.receipt,
                    key: out.snapshot,
                    alerts: Vec::new(),
                    key_expired: out.newly_expired,
                }
            }
        };
        if let (true, Some(snap)) = (alerts, &decision.key) {
            let ctx = AlertContext {
                rate_limit_denied: decision.reason.is_some_and(DenyReason::is_rate_limit),
            };
            decision.alerts = self.alerts.check(snap, ctx);
        }
        decision
    }

    /// Steps 1–4 of the gate without charging: the key is present, known, active, not
    /// expired, allowed from `client_ip` and, when `tool` is given, allowed to call it.
    /// Used for methods that need a valid key but are not billed, and for `tools/list` ACLs.
    pub async fn authorize(
        &self,
        api_key: Option<&str>,
        client_ip: Option<IpAddr>,
        tool: Option<&str>,
    ) -> Result<KeyRecord, DenyReason> {
        let call = CallRequest {
            api_key,
            account: None,
            tool: "",
            input_bytes: 0,
            client_ip,
        };
        self.authorize_call(&call, tool).await
    }

    /// [`Gate::authorize`] for the key `call` presents (its `account`, else its `api_key`)
    /// from its client IP.
    pub async fn authorize_call(
        &self,
        call: &CallRequest<'_>,
        tool: Option<&str>,
    ) -> Result<KeyRecord, DenyReason> {
        let client_ip = call.client_ip;
        let key = call.presented().ok_or(DenyReason::MissingApiKey)?;
        let rec = self
            .store
            .get(&key)
            .await
            .map_err(|_| DenyReason::StoreUnavailable)?
            .filter(|r| r.active)
            .ok_or(DenyReason::InvalidApiKey)?;
        if rec.is_expired_at(self.clock.now_ms()) {
            return Err(DenyReason::ApiKeyExpired);
        }
        if !rec.permits_ip(client_ip) {
            return Err(DenyReason::IpNotAllowed);
        }
        if let Some(reason) = tool.and_then(|t| rec.acl_denial(t)) {
            return Err(reason);
        }
        Ok(rec)
    }

    /// A denial [`Decision`] for `reason` outside the store's charge (e.g. from
    /// [`Gate::authorize`]), recorded as a usage event like any other. In shadow mode the
    /// decision allows the call (check `allowed`) and records `shadow:<reason>`.
    pub fn deny(&self, reason: DenyReason, tool: &str, call: &CallRequest<'_>) -> Decision {
        let detail = self.detail(reason, call, 0, None, None);
        let decision = Decision::denied(reason, detail, tool, 0, self.config.shadow_mode);
        self.record_usage(&decision, self.clock.now_ms(), None, false);
        decision
    }

    /// Undoes a charge exactly. Returns the key's state afterwards (`None` when it is gone).
    pub async fn refund(&self, receipt: ChargeReceipt) -> Result<Option<KeySnapshot>, StoreError> {
        self.store.refund(receipt, self.clock.now_ms()).await
    }

    /// Records the usage event of a decision at `now_ms` (analytics, meter, sink), with the
    /// time the call took when it ran; a refunded call shows nothing charged.
    #[inline]
    pub(crate) fn record_usage(
        &self,
        d: &Decision,
        now_ms: i64,
        duration_ms: Option<u64>,
        refunded: bool,
    ) {
        let deny_reason = d.reason.map(|r| {
            if d.shadow {
                format!("shadow:{r}")
            } else {
                r.as_str().to_string()
            }
        });
        let event = UsageEvent {
            timestamp: ms_to_datetime(now_ms),
            api_key: d
                .key
                .as_ref()
                .map_or_else(String::new, |k| k.key_masked.clone()),
            key_id: d.key.as_ref().map(|k| k.key_id),
            key_name: d.key.as_ref().map_or_else(String::new, |k| k.name.clone()),
            tool: d.tool.clone(),
            credits_charged: if refunded { 0 } else { d.credits_charged },
            allowed: d.allowed,
            deny_reason,
            duration_ms,
        };
        self.analytics.record(&event);
        if let Some(sink) = &self.sink {
            sink.usage(&event);
        }
        self.meter.record(event);
    }

    fn detail(
        &self,
        reason: DenyReason,
        call: &CallRequest<'_>,
        price: u64,
        snap: Option<&KeySnapshot>,
        retry: Option<u64>,
    ) -> String {
        let tool = call.tool;
        match (reason, snap) {
            (DenyReason::InsufficientCredits, Some(s)) => {
                format!("need {price}, have {}", s.credits)
            }
            (DenyReason::SpendingLimitExceeded, Some(s)) => format!(
                "spent {} of a {} credit limit, call costs {price}",
                s.total_spent, s.spending_limit
            ),
            (DenyReason::RateLimited, _) => format!(
                "{} calls per minute; retry in {}s",
                self.config.global_rate_limit_per_min,
                retry.unwrap_or(1)
            ),
            (DenyReason::ToolRateLimited, _) => format!(
                "{} calls per minute to {tool}; retry in {}s",
                self.pricing.tool_rate_limit(tool),
                retry.unwrap_or(1)
            ),
            (DenyReason::ToolNotAllowed, _) => format!("{tool} is not in this key's allowed tools"),
            (DenyReason::ToolDenied, _) => format!("{tool} is denied for this key"),
            (DenyReason::IpNotAllowed, _) => match call.client_ip {
                Some(ip) => format!("{ip} is not in this key's IP allowlist"),
                None => "client IP unknown and this key has an IP allowlist".into(),
            },
            (DenyReason::ApiKeyExpired, Some(s)) => match s.expires_at_ms {
                Some(ms) => format!("expired at {}", ms_to_datetime(ms).to_rfc3339()),
                None => "expired".into(),
            },
            (DenyReason::InvalidApiKey, _) => "unknown or revoked API key".into(),
            (DenyReason::MissingApiKey, _) => "no API key was sent".into(),
            (DenyReason::StoreUnavailable, _) => {
                "the key store did not answer; nothing was charged".into()
            }
            (quota, Some(s)) if quota.category() == DenyCategory::PaymentRequired => {
                match s.quota.and_then(|q| q.highest_usage(&s.quota_usage)) {
                    Some(level) => format!(
                        "{} used {} of {}, call costs {price}",
                        level.dimension, level.used, level.limit
                    ),
                    None => String::new(),
                }
            }
            _ => String::new(),
        }
    }
}

impl Gate<MemoryKeyStore> {
    /// [`Gate::evaluate`] without an async runtime (the memory store never waits).
    pub fn evaluate_blocking(&self, call: &CallRequest<'_>) -> Decision {
        block_on(self.evaluate(call))
    }

    /// [`Gate::refund`] without an async runtime.
    pub fn refund_blocking(&self, receipt: ChargeReceipt) -> Option<KeySnapshot> {
        block_on(self.refund(receipt)).ok().flatten()
    }
}
