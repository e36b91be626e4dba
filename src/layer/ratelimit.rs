//! [`RateLimitLayer`]: per-key rate windows, nothing else.
//!
//! A call needs a valid key (a window is per key) and a free slot in the key's rolling
//! minute, across tools (`globalRateLimitPerMin`) and per tool (`toolPricing.*.rateLimitPerMin`).
//! Answers carry `X-RateLimit-Limit`, `-Remaining` and `-Reset`; a limited call gets
//! `Retry-After`. Nothing is charged and no quota applies.
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
//! let pg = PayGate::new(PayGateConfig::default().with_tool_price("search", 5).with_rate_limit(1));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! let svc = ServiceBuilder::new().layer(pg.rate_limit()).service(mcp);
//!
//! let call = || {
//!     let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//!     http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(body))).unwrap()
//! };
//! let first = svc.clone().oneshot(call()).await.unwrap();
//! assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
//! let second = svc.oneshot(call()).await.unwrap();
//! assert_eq!(second.headers()["retry-after"], "60");
//! let body = second.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("rate_limited"));
//! # });
//! ```

use super::stage::StageSet;
use super::stage_layer::stage_layer;

stage_layer!(
    /// Applies per-key rate windows; charges nothing. Made by
    /// [`PayGate::rate_limit`](super::PayGate::rate_limit); see the [module docs](self).
    RateLimitLayer,
    StageSet::RATE_LIMIT
);
