//! Stacks users build by hand: layers over one gate from several handles, axum routers with
//! layers per route, middleware between the layers that rewrites, copies or rebuilds the
//! request. Whatever the shape, a call is charged exactly once for exactly the stages on its
//! route, and its usage event is recorded once, when the call is over.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use paygate_mcp::store::KeyStore;
use paygate_mcp::{
    AdminEvent, AlertRule, AlertType, EventSink, Gate, KeyDigest, ManualClock, MemoryKeyStore,
    PayGate, PayGateConfig, PayGateLayer, UsageEvent,
};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

fn call_with(key: &str, params: Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
    Request::post("http://localhost/mcp")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn call(key: &str) -> Request<Full<Bytes>> {
    call_with(key, json!({"name": "t"}))
}

/// Answers every request with a result that echoes the body it received.
fn echo(
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
            let body = json!({"jsonrpc": "2.0", "id": 1,
                "result": {"content": [], "received": String::from_utf8_lossy(&sent)}});
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
        }
    })
}

fn status_downstream(
    status: StatusCode,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(b"refused")));
        *r.status_mut() = status;
        Ok::<_, Infallible>(r)
    })
}

async fn text<B>(resp: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

async fn credits<St: KeyStore>(gate: &Gate<St>, key: &str) -> paygate_mcp::KeyRecord {
    gate.store()
        .get(&KeyDigest::of(key))
        .await
        .unwrap()
        .unwrap()
}

#[derive(Default)]
struct Sink {
    admin: Mutex<Vec<AdminEvent>>,
    usage: Mutex<Vec<UsageEvent>>,
}
impl EventSink for Sink {
    fn usage(&self, e: &UsageEvent) {
        self.usage.lock().unwrap().push(e.clone());
    }
    fn admin(&self, e: &AdminEvent) {
        self.admin.lock().unwrap().push(e.clone());
    }
}

fn priced_gate() -> Arc<Gate> {
    Arc::new(Gate::new(PayGateConfig::default().with_tool_price("t", 2)).unwrap())
}

// ---------------------------------------------------------------------------------------

/// Two `PayGateLayer`s over one gate in one stack (axum `.layer` on the router plus
/// `.route_layer` on a route): the inner one sees the call decided and charges nothing.
#[tokio::test]
async fn two_bundles_over_one_gate_in_one_stack_charge_once() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(echo(Arc::new(AtomicUsize::new(0))));
    let resp = svc.oneshot(call(&key)).await.unwrap();
    let hdr = resp.headers().get("x-credits-remaining").cloned();
    let _ = text(resp).await;
    let rec = credits(&gate, &key).await;
    assert_eq!(
        rec.credits,
        8,
        "one tools/call through two layers over one gate: charged {} credits (header {hdr:?})",
        10 - rec.credits
    );
}

/// A billing layer made from the same handle for another service (here dropped at once)
/// has no effect on an auth-only stack.
#[tokio::test]
async fn a_billing_layer_in_another_stack_does_not_bill_this_one() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    drop(pg.billing().layer(echo(Arc::new(AtomicUsize::new(0)))));
    let svc = ServiceBuilder::new()
        .layer(pg.auth())
        .service(echo(Arc::new(AtomicUsize::new(0))));
    let resp = svc.oneshot(call(&key)).await.unwrap();
    let hdr = resp.headers().get("x-credits-remaining").cloned();
    let _ = text(resp).await;
    assert_eq!(
        credits(&gate, &key).await.credits,
        10,
        "auth-only stack charged (x-credits-remaining {hdr:?})"
    );
}

/// An inner billing layer built when the request arrives (a stack made per request, a
/// reloaded router): the outer layer did not decide billing, so the inner one does.
#[tokio::test]
async fn an_inner_layer_built_per_request_still_charges_the_first_call() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let inner_pg = pg.clone();
    let lazy = service_fn(move |req: Request<Full<Bytes>>| {
        let svc = inner_pg
            .billing()
            .layer(echo(Arc::new(AtomicUsize::new(0))));
        async move { svc.oneshot(req).await }
    });
    let svc = ServiceBuilder::new().layer(pg.auth()).service(lazy);
    let first = text(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    let after_first = credits(&gate, &key).await.credits;
    let _ = text(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    let after_second = credits(&gate, &key).await.credits;
    assert!(first.contains("result"), "{first}");
    assert_eq!(
        (after_first, after_second),
        (8, 6),
        "the first call went through the billing layer; it was charged {}",
        10 - after_first
    );
}

/// A middleware between two layers that rewrites the body (adds arguments): the inner layer
/// treats it as the request it now is, and the downstream gets the rewritten bytes.
#[tokio::test]
async fn a_body_rewritten_between_layers_reaches_the_downstream() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let svc = ServiceBuilder::new()
        .layer(pg.auth())
        .map_request(|req: Request<Full<Bytes>>| {
            let (parts, _) = req.into_parts();
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "t", "arguments": {"tenant": "injected-by-middleware"}}});
            Request::from_parts(parts, Full::new(Bytes::from(body.to_string())))
        })
        .layer(pg.billing())
        .service(echo(Arc::new(AtomicUsize::new(0))));
    let out = text(svc.oneshot(call(&key)).await.unwrap()).await;
    assert!(
        out.contains("injected-by-middleware"),
        "the downstream got the pre-middleware body: {out}"
    );
}

/// A middleware between two layers that builds a new request without the extensions: the
/// auth layer outside charges nothing, the billing layer inside charges once.
#[tokio::test]
async fn a_middleware_that_drops_extensions_between_layers_bills_once() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let svc = ServiceBuilder::new()
        .layer(pg.auth())
        .map_request(|req: Request<Full<Bytes>>| {
            let (mut parts, body) = req.into_parts();
            parts.extensions = http::Extensions::new();
            Request::from_parts(parts, body)
        })
        .layer(pg.billing())
        .service(echo(Arc::new(AtomicUsize::new(0))));
    let _ = text(svc.oneshot(call(&key)).await.unwrap()).await;
    assert_eq!(
        credits(&gate, &key).await.credits,
        8,
        "one call, charged more than once"
    );
}

/// Usage events are stamped when the call is over, in the order they are recorded: a
/// reader paging `/usage?since=<last timestamp seen>` sees a slow call that ended last.
#[tokio::test]
async fn a_since_cursor_sees_a_call_that_outlived_a_later_one() {
    let clock = Arc::new(ManualClock::at_rfc3339("2026-03-15T10:00:00Z").unwrap());
    let gate = Arc::new(
        Gate::with_store(
            PayGateConfig::default().with_tool_price("t", 1),
            MemoryKeyStore::new(),
            clock.clone(),
        )
        .unwrap(),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let reached = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (r2, rel2) = (reached.clone(), release.clone());
    let downstream = service_fn(move |req: Request<Full<Bytes>>| {
        let (reached, release) = (r2.clone(), rel2.clone());
        async move {
            let sent = req.into_body().collect().await.unwrap().to_bytes();
            if String::from_utf8_lossy(&sent).contains("slow") {
                reached.notify_one();
                release.notified().await;
            }
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": {}}).to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(downstream);
    let slow = tokio::spawn(svc.clone().oneshot(call_with(
        &key,
        json!({"name": "t", "arguments": {"slow": 1}}),
    )));
    reached.notified().await;
    clock.advance_ms(1_000);
    let _ = text(svc.clone().oneshot(call(&key)).await.unwrap()).await;
    let first_page = gate.meter().since(None);
    assert_eq!(first_page.len(), 1);
    let cursor = first_page.last().unwrap().timestamp;
    clock.advance_ms(1);
    release.notify_one();
    let _ = text(slow.await.unwrap().unwrap()).await;
    let next_page: Vec<_> = gate
        .meter()
        .since(Some(cursor))
        .into_iter()
        .filter(|e| e.timestamp > cursor)
        .collect();
    let all = gate.meter().since(None);
    assert_eq!(
        next_page.len(),
        1,
        "the slow call (charged) is missing from the next page; all events: {:?}",
        all.iter()
            .map(|e| (e.timestamp, e.duration_ms))
            .collect::<Vec<_>>()
    );
}

/// An SSE body that delivered its answer but stays open (call timeout 0, the default).
struct OpenSse {
    sent: bool,
}
impl http_body::Body for OpenSse {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        let ev = format!(
            "data: {}\n\n",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
        );
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(ev)))))
    }
}

/// An SSE answer whose stream stays open (call timeout 0, the default): the call is over
/// once its answer came, so its usage event and alerts go out then.
#[tokio::test]
async fn a_call_answered_on_an_sse_stream_left_open_is_recorded_and_alerts_fire() {
    let sink = Arc::new(Sink::default());
    let gate = Arc::new(
        Gate::new(
            PayGateConfig::default()
                .with_tool_price("t", 5)
                .with_alert_rule(AlertRule::new(AlertType::CreditsLow, 5)),
        )
        .unwrap()
        .with_event_sink(sink.clone()),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let downstream = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut r = Response::new(OpenSse { sent: false });
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        Ok::<_, Infallible>(r)
    });
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(downstream);
    let resp = svc.oneshot(call(&key)).await.unwrap();
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(frame.data_ref().unwrap()).contains("result"));
    assert_eq!(credits(&gate, &key).await.credits, 5, "charged");
    let usage = sink.usage.lock().unwrap().len();
    let alerts = sink
        .admin
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "alert.fired")
        .count();
    assert_eq!(
        (gate.meter().len(), usage, alerts),
        (1, 1, 1),
        "(meter, sink usage, alert.fired) while the answered stream stays open"
    );
    drop(body);
}

/// A call the downstream refuses (400, no tool ran) stays counted nowhere: quota-only
/// undoes its count, rate-only counts none (a rate window does not count totals).
#[tokio::test]
async fn a_refused_call_counts_nowhere_in_rate_or_quota_only_stacks() {
    for (label, quota_stage) in [("quota-only", true), ("rate-only", false)] {
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
        let resp = if quota_stage {
            pg.quota()
                .layer(status_downstream(StatusCode::BAD_REQUEST))
                .oneshot(call(&key))
                .await
                .unwrap()
        } else {
            pg.rate_limit()
                .layer(status_downstream(StatusCode::BAD_REQUEST))
                .oneshot(call(&key))
                .await
                .unwrap()
        };
        let _ = text(resp).await;
        let rec = credits(&gate, &key).await;
        assert_eq!(
            (rec.total_calls, rec.quota_usage.daily_calls),
            (0, 0),
            "{label}: a call no tool ran is still counted"
        );
    }
}

/// A quota-only stack undoing a refused call's count gives no credits back, so it emits no
/// `billing.refund` event.
#[tokio::test]
async fn undoing_a_quota_count_emits_no_billing_refund() {
    let sink = Arc::new(Sink::default());
    let gate = Arc::new(
        Gate::new(PayGateConfig::default().with_tool_price("t", 2))
            .unwrap()
            .with_event_sink(sink.clone()),
    );
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let _ = text(
        pg.quota()
            .layer(status_downstream(StatusCode::SERVICE_UNAVAILABLE))
            .oneshot(call(&key))
            .await
            .unwrap(),
    )
    .await;
    let refunds: Vec<Value> = sink
        .admin
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "billing.refund")
        .map(|e| e.data.clone())
        .collect();
    assert!(
        refunds.is_empty(),
        "billing.refund without billing: {refunds:?}"
    );
}

/// A refused call is refunded before its usage event is recorded, and the event says so:
/// nothing charged.
#[tokio::test]
async fn the_usage_event_of_a_refunded_call_says_nothing_was_charged() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let _ = text(
        PayGateLayer::from_gate(gate.clone())
            .layer(status_downstream(StatusCode::BAD_REQUEST))
            .oneshot(call(&key))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(credits(&gate, &key).await.credits, 10, "refunded");
    let ev = gate.meter().since(None);
    assert_eq!(
        ev.iter().map(|e| e.credits_charged).collect::<Vec<_>>(),
        vec![0],
        "usage event of a refunded call"
    );
}

/// axum: keys checked router-wide, billing only on `/paid` (`route_layer`): a call to
/// `/free` is not charged, a call to `/paid` is, once.
#[tokio::test]
async fn axum_router_wide_auth_with_billing_on_one_route_bills_that_route_only() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let mcp = || {
        tower::service_fn(|_req: Request<axum::body::Body>| async {
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).to_string();
            Ok::<_, Infallible>(Response::new(axum::body::Body::from(body)))
        })
    };
    let app = axum::Router::new()
        .route_service(
            "/paid",
            pg.billing().layer(echo(Arc::new(AtomicUsize::new(0)))),
        )
        .route_service("/free", mcp())
        .layer(pg.auth());
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}});
    let req = |path: &str| {
        Request::post(path)
            .header("x-api-key", &key)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    // Free, paid twice (the second time decided by the outermost layer alone), free again.
    for (path, left) in [("/free", 10), ("/paid", 8), ("/paid", 6), ("/free", 6)] {
        let resp = app.clone().oneshot(req(path)).await.unwrap();
        let hdr = resp.headers().get("x-credits-remaining").cloned();
        let out = text(resp).await;
        assert!(out.contains("result"), "{path}: {out}");
        assert_eq!(
            credits(&gate, &key).await.credits,
            left,
            "after POST {path} (x-credits-remaining {hdr:?})"
        );
    }
    // Without a key both routes refuse: the router-wide layer checks keys everywhere.
    let anonymous = Request::post("/free")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let out = text(app.oneshot(anonymous).await.unwrap()).await;
    assert!(out.contains("missing_api_key"), "{out}");
}

/// A middleware between two layers that sends a sub-request of its own (a `tools/list`
/// preflight) with the extensions copied, as context propagation does: the inner layer
/// handles it as the request it is, so the paid call runs once, charged once.
#[tokio::test]
async fn a_subrequest_with_copied_extensions_is_a_request_of_its_own() {
    let gate = priced_gate();
    let key = gate.create_key("k", 10).await.unwrap();
    let pg = PayGate::from_gate(gate.clone());
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = calls.clone();
    let downstream = service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let sent = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&sent).unwrap();
            seen.lock()
                .unwrap()
                .push(v["method"].as_str().unwrap_or("").to_string());
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [], "tools": []}});
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
        }
    });
    let inner = pg.billing().layer(downstream);
    let preflight = service_fn(move |req: Request<Full<Bytes>>| {
        let inner = inner.clone();
        async move {
            let mut sub = Request::post("http://localhost/mcp")
                .body(Full::new(Bytes::from(
                    json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}).to_string(),
                )))
                .unwrap();
            *sub.extensions_mut() = req.extensions().clone();
            let _ = text(inner.clone().oneshot(sub).await.unwrap()).await;
            inner.oneshot(req).await
        }
    });
    let svc = ServiceBuilder::new().layer(pg.auth()).service(preflight);
    let _ = text(svc.oneshot(call(&key)).await.unwrap()).await;
    let seen = calls.lock().unwrap().clone();
    let charged = 10 - credits(&gate, &key).await.credits;
    assert_eq!(
        (seen.clone(), charged),
        (vec!["tools/list".to_string(), "tools/call".to_string()], 2),
        "methods the downstream ran, credits charged"
    );
}
