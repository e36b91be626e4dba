//! [`BillingLayer`]: credits, nothing else.
//!
//! A call needs a valid key with credits for its price and room under its spending limit;
//! the price is deducted in the same atomic step, `X-Credits-Remaining` reports the
//! balance, a call the downstream refuses (4xx, 503) is refunded, and with
//! `refundOnFailure` so is one that fails or times out. `tools/list` shows each tool's
//! `_pricing`. No rate window or quota applies.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use paygate_mcp::{PayGate, PayGateConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//! # let mcp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
//! #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
//! # });
//! // A rate limit in the config applies only where a rate-limit layer is.
//! let pg = PayGate::new(PayGateConfig::default().with_tool_price("search", 4).with_rate_limit(1));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! let svc = ServiceBuilder::new().layer(pg.billing()).service(mcp);
//!
//! let call = || {
//!     let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//!     http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(body))).unwrap()
//! };
//! let first = svc.clone().oneshot(call()).await.unwrap();
//! assert_eq!(first.headers()["x-credits-remaining"], "6");
//! let second = svc.clone().oneshot(call()).await.unwrap();
//! assert_eq!(second.headers()["x-credits-remaining"], "2");
//! let third = svc.oneshot(call()).await.unwrap();
//! let body = third.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("insufficient_credits"));
//! # });
//! ```

use super::stage::StageSet;
use super::stage_layer::stage_layer;

stage_layer!(
    /// Charges credits and refunds failures. Made by
    /// [`PayGate::billing`](super::PayGate::billing); see the [module docs](self).
    BillingLayer,
    StageSet::BILLING
);
