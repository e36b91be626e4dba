//! [`AuthLayer`]: API keys, nothing else.
//!
//! Every method but the free ones (`initialize`, `tools/list`, …) needs a key that is
//! known, active, not expired, allowed from the client's IP and, for `tools/call`, allowed
//! to call the tool; `tools/list` is filtered by the key's ACL. Nothing is charged, no rate
//! window or quota applies, and no credit header is sent.
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
//! let pg = PayGate::new(PayGateConfig::default().with_tool_price("search", 5));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! let svc = ServiceBuilder::new().layer(pg.auth()).service(mcp);
//!
//! let call = |key: &str| {
//!     let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//!     http::Request::post("/mcp").header("x-api-key", key).body(Full::new(Bytes::from(body))).unwrap()
//! };
//! let denied = svc.clone().oneshot(call("pg_not_a_key_000000000")).await.unwrap();
//! let body = denied.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("invalid_api_key"));
//!
//! let allowed = svc.oneshot(call(&key)).await.unwrap();
//! assert!(allowed.headers().get("x-credits-remaining").is_none()); // not billed
//! # });
//! ```

use super::stage::StageSet;
use super::stage_layer::stage_layer;

stage_layer!(
    /// Checks API keys and forwards calls with a valid one, uncharged. Made by
    /// [`PayGate::auth`](super::PayGate::auth); see the [module docs](self).
    AuthLayer,
    StageSet::AUTH
);
