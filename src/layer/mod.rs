//! Tower middleware: the gate in front of any MCP Streamable-HTTP service.
//!
//! Every layer is made from one [`PayGate`] handle and does exactly its concern:
//!
//! | layer | concern | store work per `tools/call` |
//! |---|---|---|
//! | [`AuthLayer`] (`pg.auth()`) | a valid key for every non-free method; `tools/list` filtered by the key's ACL | one read |
//! | [`RateLimitLayer`] (`pg.rate_limit()`) | per-key rate windows; `X-RateLimit-*`, `Retry-After` | the atomic decision |
//! | [`QuotaLayer`] (`pg.quota()`) | daily and monthly quotas | the atomic decision |
//! | [`BillingLayer`] (`pg.billing()`) | credits, spending limit, `X-Credits-Remaining`, refunds, `_pricing` in `tools/list` | the atomic decision |
//! | [`AlertLayer`] (`pg.alerts()`) | alert rules and `key.expired` to the event sink; denies nothing | one read (alone) |
//! | [`PayGateLayer`] (`pg.layer()`) | all of the above | the atomic decision |
//!
//! Composed in any order, the layers of one handle still read and parse the body once and
//! make **one** store call for the stages present: the outermost layer of the stack acts
//! for all of them (the handle knows which were layered) and the layers further in pass the
//! request on. The key checks (known, active, not expired, IP allowlist, ACL) come with every
//! stage but alerts. A denial is answered as SPEC §4 says, or as
//! [`PayGate::with_denial_response`] shapes it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use paygate_mcp::{PayGate, PayGateConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//! # let mcp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
//! #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
//! # });
//! let pg = PayGate::new(PayGateConfig::default().with_tool_price("search", 3).with_rate_limit(10));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! // Billing outside, rate limits inside: one decision covers both.
//! let svc = ServiceBuilder::new().layer(pg.billing()).layer(pg.rate_limit()).service(mcp);
//!
//! let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//! let req = http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(body))).unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.headers()["x-credits-remaining"], "7");
//! assert_eq!(resp.headers()["x-ratelimit-remaining"], "9");
//! # });
//! ```

use std::sync::Arc;

mod alert;
mod auth;
mod billing;
pub(crate) mod body;
mod bundle;
mod denial;
mod forward;
mod paygate;
mod quota;
mod ratelimit;
mod request;
mod respond;
mod route;
mod service;
mod stack;
mod stage;
mod stage_layer;
mod tools_list;
mod watch;

pub use alert::AlertLayer;
pub use auth::AuthLayer;
pub use billing::BillingLayer;
pub use body::GateBody;
pub use bundle::PayGateLayer;
pub use denial::denial_body;
pub use paygate::{DenialHandler, PayGate};
pub use quota::QuotaLayer;
pub use ratelimit::RateLimitLayer;
pub use service::{GateService, ResponseFuture};

/// Boxed error type of the request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Turns a bearer token into an API key (`None` rejects it).
pub type BearerResolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;
