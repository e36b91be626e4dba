//! # paygate-mcp
//!
//! Charge for, meter, rate-limit and watch the use of an MCP server.
//!
//! The crate's core works as plain structs with no HTTP: a [`Gate`] over a [`KeyStore`]
//! decides each `tools/call` in the order of the product spec (key, expiry, IP allowlist, ACL,
//! rate limits, credits, spending limit, quotas) and charges it as one atomic step.
//!
//! ```
//! use std::sync::Arc;
//! use paygate_mcp::{CallRequest, DenyReason, Gate, ManualClock, MemoryKeyStore, PayGateConfig};
//!
//! let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
//! let cfg = PayGateConfig::default().with_tool_price("search", 2).with_rate_limit(2);
//! let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).unwrap();
//! let key = gate.create_key_blocking("alice", 100).unwrap();
//!
//! assert!(gate.evaluate_blocking(&CallRequest::new(&key, "search")).allowed);
//! assert!(gate.evaluate_blocking(&CallRequest::new(&key, "search")).allowed);
//! let third = gate.evaluate_blocking(&CallRequest::new(&key, "search"));
//! assert_eq!(third.reason, Some(DenyReason::RateLimited));
//! assert_eq!(third.retry_after_secs, Some(60));
//!
//! clock.advance_secs(60); // the rolling window moves on
//! let later = gate.evaluate_blocking(&CallRequest::new(&key, "search"));
//! assert!(later.allowed);
//! assert_eq!(later.remaining_credits, Some(94));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod alerts;
pub mod amount;
pub mod analytics;
pub mod audit;
pub mod blocking;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod deny;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod json_errors;
pub mod jsonrpc;
pub mod key;
pub mod layer;
pub mod meter;
pub mod metrics;
pub mod oauth;
pub mod payments;
pub mod pricing;
pub mod quota;
pub mod ratelimit;
pub mod store;
pub mod upstream;
pub mod webhook;

pub use admin::{AdminKeyError, AdminService, HealthCheck};
pub use alerts::{Alert, AlertContext, AlertEngine, AlertRule, AlertType};
pub use analytics::{
    AnalyticsConfig, AnalyticsEngine, AnalyticsError, AnalyticsReport, AnalyticsStats, Granularity,
    PeriodTotals, ReportQuery, ReportSummary, TimeBucket, ToolBreakdown, TopConsumer, TrendChange,
    TrendComparison,
};
pub use audit::{AuditEvent, AuditLog, AuditPage, AuditQuery, AuditStats};
pub use blocking::block_on;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::{ConfigError, OAuthSettings, PayGateConfig, ServerSpec, ToolPricing};
pub use deny::{DenyCategory, DenyReason};
pub use edge::ClientAddr;
pub use gate::{CallRequest, Decision, Gate, GateError, IssuedKey};
pub use key::{
    generate_key, mask_key, parse_ip_entry, BadKeyId, KeyDigest, KeyId, KeyRecord, KeyRef,
};
pub use layer::{
    AlertLayer, AuthLayer, BillingLayer, DenialHandler, GateBody, GateService, PayGate,
    PayGateLayer, QuotaLayer, RateLimitLayer,
};
pub use meter::{AdminEvent, EventSink, FanOut, UsageEvent, UsageMeter};
pub use metrics::Metrics;
pub use pricing::{compact_json_len, Pricing, PricingModel, ToolPriceTag};
pub use quota::{Quota, QuotaLevel, QuotaUsage};
pub use ratelimit::{RateState, RateWindow};
pub use store::{
    ChargeOutcome, ChargeReceipt, ChargeRequest, Checks, KeyPage, KeySnapshot, KeyStore, KeyUpdate,
    LoadReport, MemoryKeyStore, StateFileError, StoreError, StoreStats,
};
pub use upstream::McpRouter;
#[cfg(feature = "http-upstream")]
pub use upstream::{HttpUpstream, HttpUpstreamConfig};
pub use upstream::{StdioConfig, StdioUpstream};
pub use webhook::verify_signature;
#[cfg(feature = "webhook")]
pub use webhook::{WebhookConfig, WebhookError, WebhookHandle, WebhookSink, WebhookStats};

/// The README's examples, compiled and run as doc tests. They use the client and its rmcp
/// transport, so they are built with those features (the README's test command has them all).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "client", feature = "rmcp"))]
pub struct ReadmeDoctests;
