//! [`AlertLayer`]: alert rules, nothing else.
//!
//! For each `tools/call` with a known key, the alert rules (`alertRules`: low credits,
//! spending near its limit, quota warnings, expiry soon, rate-limit spikes when a
//! rate-limit layer is present) are checked against the key's state, and fired alerts go to
//! the gate's event sink as `alert.fired`, with `key.expired` the first time a key is met
//! expired. It denies nothing and charges nothing: alone it forwards every request.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use paygate_mcp::{AlertRule, AlertType, PayGate, PayGateConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//! # let mcp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
//! #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
//! # });
//! let rule = AlertRule::new(AlertType::CreditsLow, 50);
//! let pg = PayGate::new(PayGateConfig::default().with_alert_rule(rule));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! let svc = ServiceBuilder::new().layer(pg.alerts()).service(mcp);
//!
//! let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//! let req = http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(body))).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! assert_eq!(pg.gate().alerts().pending_count(), 1); // 10 credits is under 50
//! # });
//! ```

use super::stage::StageSet;
use super::stage_layer::stage_layer;

stage_layer!(
    /// Fires alert rules for calls; denies and charges nothing. Made by
    /// [`PayGate::alerts`](super::PayGate::alerts); see the [module docs](self).
    AlertLayer,
    StageSet::ALERTS
);
