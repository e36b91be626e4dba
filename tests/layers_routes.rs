//! Stacks whose layers differ from call to call on one route: a layer behind a condition,
//! a failover between two billing layers, a flood of invented routes. What the outermost
//! layer learned about a route may not hold for the next call; whatever happens, a call is
//! charged once for the stages it passed and its usage event says what it cost.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use paygate_mcp::store::KeyStore;
use paygate_mcp::{Gate, KeyDigest, PayGate, PayGateConfig, Quota};
use serde_json::json;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

type BoxSvc = tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn call_at(path: &str, key: &str, args: serde_json::Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":args}});
    Request::post(format!("http://localhost{path}"))
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok() -> BoxSvc {
    BoxSvc::new(service_fn(|_r: Request<Full<Bytes>>| async {
        let b = json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}}).to_string();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(b))))
    }))
}

fn status(s: StatusCode) -> BoxSvc {
    BoxSvc::new(service_fn(move |_r: Request<Full<Bytes>>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
        *r.status_mut() = s;
        Ok::<_, Infallible>(r)
    }))
}

fn rpc_error() -> BoxSvc {
    BoxSvc::new(service_fn(|_r: Request<Full<Bytes>>| async {
        let b =
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom"}}).to_string();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(b))))
    }))
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

use std::future::Future;

async fn rec(gate: &Gate, key: &str) -> paygate_mcp::KeyRecord {
    gate.store()
        .get(&KeyDigest::of(key))
        .await
        .unwrap()
        .unwrap()
}

async fn drain<B: http_body::Body<Data = Bytes>>(r: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// Billing outside, quota inside, and a middleware between them that rewrites some
/// requests (a default argument injected when absent): a rewritten call after a plain one
/// is charged its price; only the quota count made for it is undone.
#[tokio::test]
async fn a_conditional_rewrite_between_layers_keeps_the_charge_that_was_due() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_global_quota(Quota {
                    daily_call_limit: 1000,
                    ..Default::default()
                }),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 100).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let svc = ServiceBuilder::new()
        .layer(pg.billing())
        .map_request(|req: Request<Full<Bytes>>| {
            // Rewrites the body only when the client left out "tenant".
            let (parts, body) = req.into_parts();
            let bytes = futures_lite_block_full(body);
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if v["params"]["arguments"].get("tenant").is_none() {
                v["params"]["arguments"]["tenant"] = json!("default");
                return Request::from_parts(parts, Full::new(Bytes::from(v.to_string())));
            }
            Request::from_parts(parts, Full::new(bytes))
        })
        .layer(pg.quota())
        .service(ok());
    // Call 1: has tenant (no rewrite): the route learns {billing, quota}.
    let _ = drain(
        svc.clone()
            .oneshot(call_at("/mcp", &key, json!({"tenant":"a"})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rec(&gate, &key).await.credits, 98);
    // Call 2: no tenant (rewritten): outer decides billing+quota, quota layer sees a "new"
    // request, outer undoes the whole receipt "not_in_stack".
    let out = send(&svc, "/mcp", &key).await;
    assert!(out.contains("result"), "{out}");
    let r = rec(&gate, &key).await;
    assert_eq!(
        r.credits,
        96,
        "second call ran; charged {} in total",
        100 - r.credits
    );
}

fn futures_lite_block_full(b: Full<Bytes>) -> Bytes {
    let fut = b.collect();
    let waker = futures_noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            return r.map(|c| c.to_bytes()).unwrap_or_default();
        }
    }
}

/// Auth and billing from one handle outside, quota from another handle inside: the quota
/// layer decides its own stage, and when it denies, the billing charge made further out is
/// undone.
#[tokio::test]
async fn a_denial_further_in_undoes_every_charge_made_further_out() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_global_quota(Quota {
                    daily_call_limit: 1,
                    ..Default::default()
                }),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 100).await.unwrap();
    let (outer, inner) = (
        PayGate::from_gate(gate.clone()),
        PayGate::from_gate(gate.clone()),
    );
    let svc = ServiceBuilder::new()
        .layer(outer.auth())
        .layer(outer.billing())
        .layer(inner.quota())
        .service(ok());
    let first = send(&svc, "/mcp", &key).await;
    assert!(first.contains("result"), "{first}");
    assert_eq!(rec(&gate, &key).await.credits, 98);
    // The route is learned now: the outermost decides billing and quota in one step.
    let second = send(&svc, "/mcp", &key).await;
    assert!(second.contains("daily_call_quota_exceeded"), "{second}");
    assert_eq!(
        rec(&gate, &key).await.credits,
        98,
        "a denied call costs nothing"
    );
    // A fresh stack of the same layers (nothing learned): the inner quota layer decides
    // its own stage and denies; the charge the outer layers made is undone.
    let fresh = ServiceBuilder::new()
        .layer(outer.auth())
        .layer(outer.billing())
        .layer(inner.quota())
        .service(ok());
    let third = send(&fresh, "/mcp", &key).await;
    assert!(third.contains("daily_call_quota_exceeded"), "{third}");
    assert_eq!(
        rec(&gate, &key).await.credits,
        98,
        "charged for a call the quota layer further in denied"
    );
}

/// Sends a `tools/call` of `t` to `path` and reads the answer.
async fn send<S, B>(svc: &S, path: &str, key: &str) -> String
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    drain(
        svc.clone()
            .oneshot(call_at(path, key, json!({})))
            .await
            .unwrap(),
    )
    .await
}

/// A JSON tool failure with refundOnFailure: the refund is made before the call is
/// recorded, and its usage event shows nothing charged.
#[tokio::test]
async fn the_usage_event_of_a_failed_call_refunded_shows_nothing_charged() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_refund_on_failure(true),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let _ = drain(
        pg.layer()
            .layer(rpc_error())
            .oneshot(call_at("/mcp", &key, json!({})))
            .await
            .unwrap(),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(rec(&gate, &key).await.credits, 10, "refunded");
    let ev = gate.meter().since(None);
    assert_eq!(
        ev.iter().map(|e| e.credits_charged).collect::<Vec<_>>(),
        vec![0]
    );
}

/// Failover between two upstreams, each behind its own billing layer, auth outside: the
/// first refuses (503, refunded), and the fallback that runs the tool charges it.
#[tokio::test]
async fn a_failover_to_a_second_billing_layer_charges_the_attempt_that_ran() {
    let gate = Arc::new(Gate::new(PayGateConfig::default().with_tool_price("t", 2)).unwrap());
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let a = pg.billing().layer(status(StatusCode::SERVICE_UNAVAILABLE));
    let b = pg.billing().layer(ok());
    let failover = service_fn(move |req: Request<Full<Bytes>>| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let mut copy = Request::post(parts.uri.clone())
                .body(Full::new(bytes.clone()))
                .unwrap();
            *copy.headers_mut() = parts.headers.clone();
            *copy.extensions_mut() = parts.extensions.clone();
            let first = a.oneshot(copy).await?;
            if first.status() != StatusCode::SERVICE_UNAVAILABLE {
                let (p, b) = first.into_parts();
                return Ok::<_, Infallible>(Response::from_parts(
                    p,
                    Full::new(b.collect().await.unwrap().to_bytes()),
                ));
            }
            let _ = first.into_body().collect().await;
            let second = b
                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await?;
            let (p, b) = second.into_parts();
            Ok(Response::from_parts(
                p,
                Full::new(b.collect().await.unwrap().to_bytes()),
            ))
        }
    });
    let svc = ServiceBuilder::new().layer(pg.auth()).service(failover);
    let out = drain(svc.oneshot(call_at("/mcp", &key, json!({}))).await.unwrap()).await;
    assert!(out.contains("result"), "{out}");
    assert_eq!(
        rec(&gate, &key).await.credits,
        8,
        "the fallback ran the tool"
    );
}

/// An anonymous client inventing paths and methods teaches the layers nothing: a known
/// route still costs one decision per call afterwards.
#[tokio::test]
async fn invented_routes_teach_the_layers_nothing() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_rate_limit(100),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let svc = ServiceBuilder::new()
        .layer(pg.billing())
        .layer(pg.rate_limit())
        .service(ok());
    let _ = send(&svc, "/mcp", &key).await;
    let _ = send(&svc, "/mcp", &key).await;
    let before = gate.meter().since(None).len();
    for n in 0..1030 {
        let req = Request::post(format!("http://localhost/x{n}"))
            .body(Full::new(Bytes::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            )))
            .unwrap();
        let _ = drain(svc.clone().oneshot(req).await.unwrap()).await;
    }
    let _ = send(&svc, "/mcp", &key).await;
    let after = gate.meter().since(None).len();
    assert_eq!(
        after - before,
        1,
        "a learned route was forgotten: one call made {} events",
        after - before
    );
}

/// The same route steered by a header to a branch with or without a quota layer (tiers,
/// API versions): after a call through the quota branch, concurrent calls through the
/// other branch are each charged their price.
#[tokio::test]
async fn a_route_steered_between_branches_charges_every_call() {
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 2)
                .with_global_quota(Quota {
                    daily_call_limit: 1000,
                    ..Default::default()
                }),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 100).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let with_quota = pg.quota().layer(ok());
    let plain = BoxSvc::new(service_fn(|_r: Request<Full<Bytes>>| async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let b = json!({"jsonrpc":"2.0","id":1,"result":{"content":[]}}).to_string();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(b))))
    }));
    let steer = service_fn(move |req: Request<Full<Bytes>>| {
        let (q, p) = (with_quota.clone(), plain.clone());
        async move {
            if req.headers().contains_key("x-q") {
                let r = q.oneshot(req).await?;
                let (h, b) = r.into_parts();
                Ok::<_, Infallible>(Response::from_parts(
                    h,
                    Full::new(b.collect().await.unwrap().to_bytes()),
                ))
            } else {
                p.oneshot(req).await
            }
        }
    });
    let svc = ServiceBuilder::new().layer(pg.billing()).service(steer);
    let mut prime = call_at("/mcp", &key, json!({}));
    prime.headers_mut().insert("x-q", "1".parse().unwrap());
    let _ = drain(svc.clone().oneshot(prime).await.unwrap()).await;
    assert_eq!(rec(&gate, &key).await.credits, 98);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let svc = svc.clone();
        let key = key.clone();
        set.spawn(async move {
            drain(svc.oneshot(call_at("/mcp", &key, json!({}))).await.unwrap()).await
        });
    }
    let outs = set.join_all().await;
    assert!(outs.iter().all(|o| o.contains("result")));
    let r = rec(&gate, &key).await;
    assert_eq!(r.credits, 88, "6 calls ran; charged {}", 100 - r.credits);
}
