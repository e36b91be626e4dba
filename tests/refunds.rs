//! Refund on failure through the layers: JSON-RPC errors, HTTP 5xx, transport errors, time
//! limits (before the answer starts and in the middle of an SSE stream), and the events each
//! failure emits. Time is tokio's paused clock: nothing sleeps for real.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::{
    block_on, AdminEvent, AlertRule, AlertType, EventSink, Gate, MemoryKeyStore, PayGateConfig,
    PayGateLayer, UsageEvent,
};
use serde_json::{json, Value};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[derive(Default)]
struct Events {
    usage: Mutex<Vec<UsageEvent>>,
    admin: Mutex<Vec<AdminEvent>>,
    /// Both kinds in arrival order: `usage` or the admin event's type.
    order: Mutex<Vec<String>>,
}

impl EventSink for Events {
    fn usage(&self, e: &UsageEvent) {
        self.usage.lock().push(e.clone());
        self.order.lock().push("usage".into());
    }
    fn admin(&self, e: &AdminEvent) {
        self.admin.lock().push(e.clone());
        self.order.lock().push(e.event_type.clone());
    }
}

impl Events {
    fn admin_types(&self) -> Vec<String> {
        self.admin
            .lock()
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }
}

fn setup(cfg: PayGateConfig) -> (Arc<Gate<MemoryKeyStore>>, Arc<Events>, String) {
    let events = Arc::new(Events::default());
    let gate = Gate::new(cfg).unwrap().with_event_sink(events.clone());
    let gate = Arc::new(gate);
    let key = block_on(gate.create_key("k", 10)).unwrap();
    (gate, events, key)
}

fn call(key: &str, tool: &str) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool}});
    Request::post("http://localhost/mcp")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn json_reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn body_json<B>(resp: Response<B>) -> Value
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn credits(gate: &Gate<MemoryKeyStore>, key: &str) -> u64 {
    common::record(gate, key).credits
}

#[tokio::test]
async fn jsonrpc_error_and_5xx_refund_and_emit_billing_refund() {
    let (gate, events, key) = setup(
        PayGateConfig::default()
            .with_refund_on_failure(true)
            .with_tool_price("t", 3),
    );
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(json_reply(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "boom"}}),
            ))
        }));
    let resp = svc.oneshot(call(&key, "t")).await.unwrap();
    assert_eq!(
        resp.headers()["x-credits-remaining"],
        "7",
        "headers show the charge"
    );
    let body = body_json(resp).await;
    assert_eq!(
        body["error"]["message"], "boom",
        "the downstream's error passes through"
    );
    assert_eq!(credits(&gate, &key), 10);
    assert_eq!(events.admin_types(), ["billing.refund"]);
    assert_eq!(events.admin.lock()[0].data["reason"], "tool_failed");

    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(json_reply(StatusCode::BAD_GATEWAY, json!({"oops": true})))
        }));
    let resp = svc.oneshot(call(&key, "t")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(credits(&gate, &key), 10);
    assert_eq!(events.admin.lock()[1].data["reason"], "http_5xx");
}

#[tokio::test]
async fn transport_errors_refund_and_propagate() {
    let (gate, _, key) = setup(PayGateConfig::default().with_refund_on_failure(true));
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other("connection reset"))
        }));
    let err = svc.oneshot(call(&key, "t")).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    assert_eq!(credits(&gate, &key), 10);
}

#[tokio::test]
async fn no_refund_when_refund_on_failure_is_off() {
    let (gate, events, key) = setup(PayGateConfig::default());
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(json_reply(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -1, "message": "x"}}),
            ))
        }));
    body_json(svc.oneshot(call(&key, "t")).await.unwrap()).await;
    assert_eq!(credits(&gate, &key), 9);
    assert!(events.admin_types().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_downstream_that_never_answers_times_out_and_refunds() {
    let cfg = PayGateConfig::default()
        .with_refund_on_failure(true)
        .with_call_timeout_ms(2_000);
    let (gate, _, key) = setup(cfg);
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>(json_reply(StatusCode::OK, json!({})))
        }));
    let resp = svc.oneshot(call(&key, "t")).await.unwrap();
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], -32603);
    assert_eq!(body["error"]["data"]["reason"], "upstream_timeout");
    assert_eq!(body["id"], 7);
    assert_eq!(credits(&gate, &key), 10);
}

/// An SSE body that sends a priming event and then stalls for an hour.
struct Stalled {
    sent: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"data: \nid: 0\nretry: 3000\n\n",
            )))));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_sse_stream_is_cut_at_the_deadline_with_an_error_event() {
    let cfg = PayGateConfig::default()
        .with_refund_on_failure(true)
        .with_call_timeout_ms(5_000);
    let (gate, _, key) = setup(cfg);
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut r = Response::new(Stalled {
                sent: false,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            });
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            Ok::<_, Infallible>(r)
        }));
    let resp = svc.oneshot(call(&key, "t")).await.unwrap();
    assert_eq!(credits(&gate, &key), 9, "charged while the stream runs");
    let started = tokio::time::Instant::now();
    let text = common::body_text(resp).await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert!(text.starts_with("data: \nid: 0\nretry: 3000\n\n"), "{text}");
    assert!(text.contains("\"upstream_timeout\""), "{text}");
    assert!(text.ends_with("\n\n"));
    assert_eq!(credits(&gate, &key), 10, "refunded at the deadline");
}

#[tokio::test]
async fn sse_stream_that_ends_cleanly_without_the_answer_is_not_refunded() {
    let (gate, _, key) = setup(PayGateConfig::default().with_refund_on_failure(true));
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"data: \n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}\n\n",
            )));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            Ok::<_, Infallible>(r)
        }));
    let resp = svc.oneshot(call(&key, "t")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(
        credits(&gate, &key),
        9,
        "the answer may have moved to a resumed stream: a clean end refunds nothing"
    );
}

#[tokio::test]
async fn layers_emit_usage_alert_and_expiry_events() {
    let cfg = PayGateConfig::default().with_alert_rule(AlertRule::new(AlertType::CreditsLow, 9));
    let (gate, events, key) = setup(cfg);
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(json_reply(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": 7, "result": {}}),
            ))
        }));
    body_json(svc.clone().oneshot(call(&key, "t")).await.unwrap()).await;
    assert_eq!(events.usage.lock().len(), 1);
    assert!(events.usage.lock()[0].allowed);
    assert_eq!(events.admin_types(), ["alert.fired"]);
    assert_eq!(events.admin.lock()[0].data["alertType"], "credits_low");
    assert_eq!(
        *events.order.lock(),
        ["usage", "alert.fired"],
        "a call's alerts follow its usage event"
    );

    common::update(
        &gate,
        &key,
        paygate_mcp::KeyUpdate::SetExpiry(Some(chrono::Utc::now() - chrono::Duration::seconds(1))),
    );
    let denied = body_json(svc.clone().oneshot(call(&key, "t")).await.unwrap()).await;
    assert_eq!(denied["error"]["data"]["reason"], "api_key_expired");
    body_json(svc.oneshot(call(&key, "t")).await.unwrap()).await;
    assert_eq!(
        events.admin_types(),
        ["alert.fired", "key.expired"],
        "key.expired once"
    );
    assert_eq!(events.usage.lock().len(), 3);
    assert_eq!(
        events.order.lock()[2..],
        ["usage", "key.expired", "usage"],
        "the denial's usage event, then its expiry event"
    );
    let json = serde_json::to_string(&*events.admin.lock()).unwrap();
    assert!(!json.contains(&key), "no event carries the full key");
}

/// The memory store's side of the refund rules the Redis store is held to in
/// `tests/redis_faults.rs`: a refund follows rotations made while the call ran, and never
/// lifts a balance above the largest amount.
mod store_rules {
    use super::common;
    use paygate_mcp::amount::MAX_AMOUNT;
    use paygate_mcp::{
        block_on, generate_key, mask_key, CallRequest, DenyReason, KeyDigest, KeyStore, KeyUpdate,
        PayGateConfig,
    };

    #[test]
    fn a_refund_after_rotation_lands_on_the_rotated_key() {
        let (_clock, gate) = common::gate(PayGateConfig::default().with_tool_price("t", 6));
        let key = gate.create_key_blocking("k", 500).unwrap();
        let other = gate.create_key_blocking("other", 500).unwrap();
        let before = common::record(&gate, &key);

        // Two calls in flight; the key rotates (twice for the second) before the refunds.
        let first = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
        let second = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
        assert!(first.allowed && second.allowed);
        let rotated = generate_key().unwrap();
        let again = generate_key().unwrap();
        let moved = block_on(gate.store().rotate(
            &KeyDigest::of(&key),
            KeyDigest::of(&rotated),
            mask_key(&rotated),
        ))
        .unwrap()
        .expect("rotated");
        assert_eq!(moved.credits, 500 - 12, "the balance moved with the key");
        let snap = gate
            .refund_blocking(first.receipt.expect("receipt"))
            .expect("refund found the account");
        assert_eq!(snap.credits, 500 - 6);
        block_on(gate.store().rotate(
            &KeyDigest::of(&rotated),
            KeyDigest::of(&again),
            mask_key(&again),
        ))
        .unwrap()
        .expect("rotated");
        let snap = gate
            .refund_blocking(second.receipt.expect("receipt"))
            .expect("refund followed both rotations");
        assert_eq!(snap.credits, 500);

        let after = common::record(&gate, &again);
        assert_eq!(after.credits, before.credits);
        assert_eq!(after.total_spent, 0);
        assert_eq!(after.total_calls, 0);
        assert_eq!(after.quota_usage.daily_calls, 0);
        assert_eq!(after.quota_usage.daily_credits, 0);
        for gone in [&key, &rotated] {
            assert!(block_on(gate.store().get(&KeyDigest::of(gone)))
                .unwrap()
                .is_none());
            let d = gate.evaluate_blocking(&CallRequest::new(gone, "t"));
            assert_eq!(d.reason, Some(DenyReason::InvalidApiKey));
        }
        assert_eq!(
            common::record(&gate, &other).credits,
            500,
            "no other account touched"
        );
        assert_eq!(block_on(gate.store().stats()).unwrap().total_credits, 1_000);
    }

    #[test]
    fn a_refund_never_pushes_credits_above_the_largest_amount() {
        let (_clock, gate) = common::gate(PayGateConfig::default().with_tool_price("t", 10));
        let key = gate.create_key_blocking("k", MAX_AMOUNT).unwrap();
        let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
        assert!(d.allowed);
        assert_eq!(d.remaining_credits, Some(MAX_AMOUNT - 10));
        // Topped up to the largest balance while the call ran; the refund stops at it.
        common::update(&gate, &key, KeyUpdate::TopUp(10));
        let snap = gate
            .refund_blocking(d.receipt.expect("receipt"))
            .expect("refunded");
        assert_eq!(snap.credits, MAX_AMOUNT);
        let rec = common::record(&gate, &key);
        assert_eq!(rec.credits, MAX_AMOUNT);
        assert_eq!(rec.total_spent, 0);
        assert_eq!(rec.total_calls, 0);
        assert_eq!(
            block_on(gate.store().stats()).unwrap().total_credits,
            MAX_AMOUNT,
            "the credits aggregate is the balance actually held"
        );
    }
}
