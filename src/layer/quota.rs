//! [`QuotaLayer`]: daily and monthly quotas, nothing else.
//!
//! A call needs a valid key and room in the key's quota (its own, else `globalQuota`):
//! calls per UTC day and month, and credits per day and month. Nothing is charged, so
//! without [`super::BillingLayer`] a credit quota counts nothing; call quotas count every
//! allowed call.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use paygate_mcp::{PayGate, PayGateConfig, Quota};
//! use tower::{ServiceBuilder, ServiceExt};
//! # let mcp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
//! #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
//! # });
//! let quota = Quota { daily_call_limit: 1, ..Quota::default() };
//! let pg = PayGate::new(PayGateConfig::default().with_global_quota(quota));
//! let key = pg.gate().create_key("alice", 10).await.unwrap();
//! let svc = ServiceBuilder::new().layer(pg.quota()).service(mcp);
//!
//! let call = || {
//!     let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
//!     http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(body))).unwrap()
//! };
//! svc.clone().oneshot(call()).await.unwrap();
//! let second = svc.oneshot(call()).await.unwrap();
//! let body = second.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("daily_call_quota_exceeded"));
//! # });
//! ```

use super::stage::StageSet;
use super::stage_layer::stage_layer;

stage_layer!(
    /// Enforces quotas; charges nothing. Made by [`PayGate::quota`](super::PayGate::quota);
    /// see the [module docs](self).
    QuotaLayer,
    StageSet::QUOTA
);
