//! The separate layers composed by hand: one parse, one decision, one charge, whatever the
//! subset and order.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{
    block_on, AlertLayer, AuthLayer, BillingLayer, Gate, PayGateConfig, QuotaLayer, RateLimitLayer,
};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn call(key: &str) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}});
    Request::post("http://localhost/mcp")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The downstream's answer to every call.
fn ok_reply() -> Response<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {}}).to_string();
    Response::new(Full::new(Bytes::from(body)))
}

fn ok_downstream(
    hits: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(ok_reply()) }
    })
}

async fn body(
    resp: Response<impl http_body::Body<Error = Infallible>>,
) -> (http::HeaderMap, Value) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn full_hand_composed_stack_charges_once() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 4)
                .with_rate_limit(5),
        )
        .unwrap(),
    );
    let key = block_on(gate.create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(gate.clone()))
        .layer(RateLimitLayer::new(gate.clone()))
        .layer(QuotaLayer::new(gate.clone()))
        .layer(BillingLayer::new(gate.clone()))
        .layer(AlertLayer::new(gate.clone()))
        .service(ok_downstream(hits.clone()));
    let (headers, v) = body(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    assert_eq!(headers["x-credits-remaining"], "6");
    assert_eq!(headers["x-ratelimit-remaining"], "4");
    assert_eq!(
        common::record(&gate, &key).total_calls,
        1,
        "one decision, one charge"
    );
    assert_eq!(gate.meter().len(), 1, "one usage event");
    body(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    let (_, v) = body(svc.oneshot(call(&key)).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "insufficient_credits");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn auth_layer_alone_checks_the_key_without_charging() {
    let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    let key = block_on(gate.create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(gate.clone()))
        .service(ok_downstream(hits.clone()));
    let (_, v) = body(
        svc.clone()
            .oneshot(call("pg_not_a_key_at_all_000"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["error"]["data"]["reason"], "invalid_api_key");
    let (_, v) = body(svc.oneshot(call(&key)).await.unwrap()).await;
    assert!(v.get("result").is_some());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        common::record(&gate, &key).credits,
        10,
        "authentication alone charges nothing"
    );
}

#[tokio::test]
async fn billing_layer_alone_is_a_complete_gate() {
    let gate = Arc::new(Gate::new(PayGateConfig::default().with_rate_limit(1)).unwrap());
    let key = block_on(gate.create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(BillingLayer::new(gate.clone()))
        .service(ok_downstream(hits.clone()));
    body(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    let (_, v) = body(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "rate_limited");
    let (_, v) = body(svc.oneshot(call("")).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "missing_api_key");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bearer_resolver_maps_tokens_to_keys() {
    let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    let key = block_on(gate.create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let mapped = key.clone();
    let layer = paygate_mcp::PayGateLayer::from_gate(gate.clone())
        .with_bearer_resolver(move |token| (token == "oauth-token-123").then(|| mapped.clone()));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(ok_downstream(hits.clone()));
    let req = |auth: &str| {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}});
        Request::post("http://localhost/mcp")
            .header("authorization", auth)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let (_, v) = body(
        svc.clone()
            .oneshot(req("Bearer oauth-token-123"))
            .await
            .unwrap(),
    )
    .await;
    assert!(v.get("result").is_some(), "{v}");
    let (_, v) = body(
        svc.clone()
            .oneshot(req(&format!("Bearer {key}")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        v["error"]["data"]["reason"], "missing_api_key",
        "the resolver decides"
    );
    assert_eq!(common::record(&gate, &key).credits, 9);
}

/// A downstream that answers only when `release` is notified, and says when it was reached.
fn gated_downstream(
    reached: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let (reached, release) = (reached.clone(), release.clone());
        async move {
            reached.notify_one();
            release.notified().await;
            Ok::<_, Infallible>(ok_reply())
        }
    })
}

#[tokio::test]
async fn the_usage_event_is_recorded_once_while_the_tool_works() {
    let gate = Arc::new(Gate::new(PayGateConfig::default().with_tool_price("t", 2)).unwrap());
    let key = gate.create_key("k", 10).await.unwrap();
    let (reached, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let svc = ServiceBuilder::new()
        .layer(paygate_mcp::PayGateLayer::from_gate(gate.clone()))
        .service(gated_downstream(reached.clone(), release.clone()));

    // The event is in before the tool answers (the bookkeeping overlaps the call)…
    let call_task = tokio::spawn(svc.clone().oneshot(call(&key)));
    reached.notified().await;
    tokio::task::yield_now().await;
    let events = gate.meter().since(None);
    assert_eq!(events.len(), 1, "recorded while the tool works");
    assert_eq!((events[0].allowed, events[0].credits_charged), (true, 2));
    // …and only once, whenever the answer comes.
    release.notify_one();
    let (_, v) = body(call_task.await.unwrap().unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    assert_eq!(gate.meter().len(), 1);

    // A request abandoned right after it was sent on still leaves its event.
    let mut abandoned = Box::pin(svc.clone().oneshot(call(&key)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(abandoned.as_mut(), &mut cx).is_pending());
    drop(abandoned);
    assert_eq!(gate.meter().len(), 2, "the abandoned call is recorded too");
    assert_eq!(
        common::record(&gate, &key).credits,
        6,
        "both calls were charged"
    );
}
