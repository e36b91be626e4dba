//! The layers of one `PayGate` handle: each alone does exactly its concern, and every subset
//! in every order parses once, decides once and charges exactly for the stages present.

mod common;

use common::stacks::{self, boxed_downstream, every_stack, Stack, Stage};

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{block_on, Gate, PayGate, PayGateConfig, Quota};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn call(key: &str) -> Request<Full<Bytes>> {
    rpc(key, "tools/call", json!({"name": "t"}))
}

fn rpc(key: &str, method: &str, params: Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Request::post("http://localhost/mcp")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The downstream's answer to every request: a result, or for `tools/list` two tools.
fn ok_downstream(
    hits: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Full<Bytes>>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let sent = req.into_body().collect().await.unwrap().to_bytes();
            let sent: Value = serde_json::from_slice(&sent).unwrap_or(Value::Null);
            let result = match sent["method"].as_str() {
                Some("tools/list") => json!({"tools": [{"name": "t"}, {"name": "secret"}]}),
                _ => json!({"content": []}),
            };
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": result}).to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    })
}

async fn answer(
    resp: Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
) -> (http::HeaderMap, Value) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `stages` stacked outermost first over [`ok_downstream`], from a fresh handle over `gate`.
fn stack(gate: &Arc<Gate>, stages: &[Stage], hits: Arc<AtomicUsize>) -> Stack {
    stacks::stack(gate, stages, boxed_downstream(ok_downstream(hits)))
}

#[tokio::test]
async fn every_subset_in_every_order_charges_exactly_for_the_stages_present() {
    let stacks = every_stack();
    assert_eq!(stacks.len(), 325);
    for stages in stacks {
        let has = |s: Stage| stages.contains(&s);
        // Rate limit 1 per minute, 3 credits a call: two calls tell every concern apart.
        let gate = Arc::new(
            Gate::new(
                PayGateConfig::default()
                    .with_tool_price("t", 3)
                    .with_rate_limit(1),
            )
            .unwrap(),
        );
        let key = gate.create_key("k", 100).await.unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let svc = stack(&gate, &stages, hits.clone());

        let deciding = stages
            .iter()
            .filter(|s| matches!(s, Stage::RateLimit | Stage::Quota | Stage::Billing))
            .count();
        let (headers, first) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
        // One handle, one stack: from the first call on, one decision (one usage event).
        assert_eq!(
            gate.meter().len(),
            usize::from(deciding > 0),
            "{stages:?}: first call"
        );
        assert!(first.get("result").is_some(), "{stages:?}: {first}");
        assert_eq!(
            headers.contains_key("x-credits-remaining"),
            has(Stage::Billing),
            "{stages:?}: the credits header comes with billing only"
        );
        assert_eq!(
            headers.contains_key("x-ratelimit-remaining"),
            has(Stage::RateLimit),
            "{stages:?}: rate-limit headers come with rate limiting only"
        );
        let (_, second) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
        let rate_limited = second["error"]["data"]["reason"] == "rate_limited";
        assert_eq!(
            rate_limited,
            has(Stage::RateLimit),
            "{stages:?}: the rate window applies with rate limiting only: {second}"
        );
        let allowed = if rate_limited { 1 } else { 2 };
        assert_eq!(hits.load(Ordering::SeqCst), allowed, "{stages:?}");
        let rec = common::record(&gate, &key);
        let charged = if has(Stage::Billing) { 3 * allowed } else { 0 };
        assert_eq!(
            rec.credits,
            100 - charged as u64,
            "{stages:?}: credits are charged once per call, and only with billing"
        );
        let decides = deciding > 0;
        assert_eq!(
            rec.total_calls,
            if has(Stage::Billing) {
                allowed as u64
            } else {
                0
            },
            "{stages:?}: billing counts each call once"
        );
        assert_eq!(
            rec.quota_usage.daily_calls,
            if has(Stage::Quota) { allowed as u64 } else { 0 },
            "{stages:?}: quotas count each call once"
        );
        assert_eq!(
            gate.meter().len(),
            2 * usize::from(decides),
            "{stages:?}: one decision (one usage event) per call"
        );

        // A key nobody issued: refused wherever a key-checking stage is.
        let (_, bad) = answer(
            svc.clone()
                .oneshot(call("pg_not_a_key_at_all_000"))
                .await
                .unwrap(),
        )
        .await;
        let checks_keys = stages.iter().any(|s| *s != Stage::Alerts);
        assert_eq!(
            bad["error"]["data"]["reason"] == "invalid_api_key",
            checks_keys,
            "{stages:?}: {bad}"
        );
    }
}

#[tokio::test]
async fn quota_applies_only_where_the_quota_layer_is() {
    for stages in every_stack() {
        let quota = Quota {
            daily_call_limit: 1,
            ..Quota::default()
        };
        let gate = Arc::new(Gate::new(PayGateConfig::default().with_global_quota(quota)).unwrap());
        let key = gate.create_key("k", 100).await.unwrap();
        let svc = stack(&gate, &stages, Arc::new(AtomicUsize::new(0)));
        answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
        let (_, second) = answer(svc.oneshot(call(&key)).await.unwrap()).await;
        assert_eq!(
            second["error"]["data"]["reason"] == "daily_call_quota_exceeded",
            stages.contains(&Stage::Quota),
            "{stages:?}: {second}"
        );
    }
}

#[tokio::test]
async fn rate_limit_alone_charges_nothing() {
    let pg = PayGate::new(
        PayGateConfig::default()
            .with_tool_price("t", 4)
            .with_rate_limit(2),
    );
    let key = block_on(pg.gate().create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(pg.rate_limit())
        .service(ok_downstream(hits.clone()));
    for _ in 0..2 {
        let (headers, v) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
        assert!(v.get("result").is_some(), "{v}");
        assert!(headers.get("x-credits-remaining").is_none());
    }
    let (headers, v) = answer(svc.oneshot(call(&key)).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "rate_limited");
    assert!(headers.contains_key("retry-after"));
    let rec = common::record(pg.gate(), &key);
    assert_eq!((rec.credits, rec.total_spent), (10, 0), "nothing charged");
}

#[tokio::test]
async fn billing_alone_applies_no_window_and_no_quota() {
    let quota = Quota {
        daily_call_limit: 1,
        ..Quota::default()
    };
    let pg = PayGate::new(
        PayGateConfig::default()
            .with_tool_price("t", 2)
            .with_rate_limit(1)
            .with_global_quota(quota),
    );
    let key = block_on(pg.gate().create_key("k", 5)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(pg.billing())
        .service(ok_downstream(hits.clone()));
    for left in ["3", "1"] {
        let (headers, v) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
        assert!(v.get("result").is_some(), "{v}");
        assert_eq!(headers["x-credits-remaining"], left);
        assert!(headers.get("x-ratelimit-limit").is_none());
    }
    let (_, v) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "insufficient_credits");
    let (_, v) = answer(svc.oneshot(call("")).await.unwrap()).await;
    assert_eq!(v["error"]["data"]["reason"], "missing_api_key");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn auth_alone_rejects_bad_keys_and_forwards_good_ones_uncharged() {
    let pg = PayGate::new(PayGateConfig::default().with_tool_price("t", 1));
    let key = block_on(pg.gate().create_key("k", 10)).unwrap();
    common::update(
        pg.gate(),
        &key,
        paygate_mcp::KeyUpdate::SetAcl {
            allowed_tools: vec!["t".into()],
            denied_tools: vec![],
        },
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(pg.auth())
        .service(ok_downstream(hits.clone()));
    let (_, v) = answer(
        svc.clone()
            .oneshot(call("pg_not_a_key_at_all_000"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["error"]["data"]["reason"], "invalid_api_key");
    let (_, v) = answer(
        svc.clone()
            .oneshot(rpc(&key, "tools/call", json!({"name": "secret"})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["error"]["data"]["reason"], "tool_not_allowed");
    let (headers, v) = answer(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    assert!(headers.get("x-credits-remaining").is_none());
    // The listing is filtered by the ACL but not priced: prices are billing's.
    let (_, v) = answer(
        svc.oneshot(rpc(&key, "tools/list", json!({})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["result"]["tools"], json!([{"name": "t"}]));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let rec = common::record(pg.gate(), &key);
    assert_eq!((rec.credits, rec.total_calls), (10, 0), "nothing charged");
}

#[tokio::test]
async fn alerts_alone_deny_nothing_and_fire_for_known_keys() {
    let rule = paygate_mcp::AlertRule::new(paygate_mcp::AlertType::CreditsLow, 50);
    let pg = PayGate::new(PayGateConfig::default().with_alert_rule(rule));
    let key = block_on(pg.gate().create_key("k", 10)).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(pg.alerts())
        .service(ok_downstream(hits.clone()));
    let (_, v) = answer(svc.clone().oneshot(call("")).await.unwrap()).await;
    assert!(v.get("result").is_some(), "no key, no check: {v}");
    assert_eq!(pg.gate().alerts().pending_count(), 0);
    let (_, v) = answer(svc.oneshot(call(&key)).await.unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    assert_eq!(pg.gate().alerts().pending_count(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn billing_alone_prices_the_listing() {
    let pg = PayGate::new(PayGateConfig::default().with_tool_price("t", 7));
    let key = block_on(pg.gate().create_key("k", 10)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(pg.billing())
        .service(ok_downstream(Arc::new(AtomicUsize::new(0))));
    let (_, v) = answer(
        svc.oneshot(rpc(&key, "tools/list", json!({})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        v["result"]["tools"][0]["_pricing"]["creditsPerCall"], 7,
        "{v}"
    );
}

#[tokio::test]
async fn a_denial_handler_shapes_denials_only() {
    let pg = PayGate::new(PayGateConfig::default().with_tool_price("t", 5)).with_denial_response(
        |decision, mut resp| {
            if decision
                .reason
                .is_some_and(|r| r.as_str() == "insufficient_credits")
            {
                *resp.status_mut() = http::StatusCode::PAYMENT_REQUIRED;
                resp.headers_mut()
                    .insert("x-top-up", http::HeaderValue::from_static("/pay"));
            }
            resp
        },
    );
    let key = block_on(pg.gate().create_key("k", 6)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(pg.layer())
        .service(ok_downstream(Arc::new(AtomicUsize::new(0))));
    let ok = svc.clone().oneshot(call(&key)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let denied = svc.clone().oneshot(call(&key)).await.unwrap();
    assert_eq!(denied.status(), 402);
    assert_eq!(denied.headers()["x-top-up"], "/pay");
    assert_eq!(
        denied.headers()["x-credits-remaining"],
        "1",
        "defaults kept"
    );
    let (_, v) = answer(denied).await;
    assert_eq!(v["error"]["data"]["reason"], "insufficient_credits");
    // Another reason keeps the SPEC §4 answer.
    let other = svc.oneshot(call("")).await.unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn two_handles_over_one_gate_each_decide_for_their_own_stages() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_rate_limit(5),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let outer = PayGate::from_gate(gate.clone());
    let inner = PayGate::from_gate(gate.clone());
    let svc = ServiceBuilder::new()
        .layer(outer.rate_limit())
        .layer(inner.billing())
        .service(ok_downstream(Arc::new(AtomicUsize::new(0))));
    let (headers, v) = answer(svc.oneshot(call(&key)).await.unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    assert_eq!(
        headers["x-credits-remaining"], "8",
        "billed once, by the inner handle"
    );
    assert_eq!(headers["x-ratelimit-remaining"], "4");
    assert_eq!(common::record(&gate, &key).credits, 8);
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
    let (_, v) = answer(
        svc.clone()
            .oneshot(req("Bearer oauth-token-123"))
            .await
            .unwrap(),
    )
    .await;
    assert!(v.get("result").is_some(), "{v}");
    let (_, v) = answer(
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
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": {}}).to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    })
}

#[tokio::test]
async fn the_usage_event_is_recorded_once_when_the_call_is_over_with_its_duration() {
    let clock = common::clock_at("2026-03-15T10:00:00Z");
    let gate = Arc::new(
        Gate::with_store(
            PayGateConfig::default().with_tool_price("t", 2),
            paygate_mcp::MemoryKeyStore::new(),
            clock.clone(),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let (reached, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let svc = ServiceBuilder::new()
        .layer(paygate_mcp::PayGateLayer::from_gate(gate.clone()))
        .service(gated_downstream(reached.clone(), release.clone()));

    // While the tool works nothing is recorded yet…
    let call_task = tokio::spawn(svc.clone().oneshot(call(&key)));
    reached.notified().await;
    assert_eq!(gate.meter().len(), 0, "the call is not over");
    clock.advance_ms(250);
    release.notify_one();
    let (_, v) = answer(call_task.await.unwrap().unwrap()).await;
    assert!(v.get("result").is_some(), "{v}");
    // …and once it is, the event is in, once, with the time the call took.
    let events = gate.meter().since(None);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].allowed,
            events[0].credits_charged,
            events[0].duration_ms
        ),
        (true, 2, Some(250))
    );

    // A request abandoned while the tool works still leaves its event.
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
    // A denial is recorded at once, without a duration.
    svc.oneshot(call("")).await.unwrap();
    let events = gate.meter().since(None);
    assert_eq!((events.len(), events[2].duration_ms), (3, None));
}
