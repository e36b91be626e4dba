//! `POST /stripe/webhook` (SPEC §13): events signed exactly as Stripe signs them
//! (`Stripe-Signature: t=...,v1=...` over the raw body, with the endpoint's secret) credit a
//! key once, whatever Stripe does: redeliver, send a second event for the same session,
//! deliver twenty copies at once, reorder. Anything unsigned, stale or malformed is 400 and
//! changes nothing; events that do not pay are 200 and change nothing. On the memory store,
//! across a state-file restart, and on Redis with two gateways receiving the same event.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::payments::signature::sign;
use paygate_mcp::{
    AdminEvent, AdminService, Clock, EventSink, Gate, KeyStore, MemoryKeyStore, PayGateConfig,
    UsageEvent,
};
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &str = "whsec_test_5b1f0c9e7d3a4f2e8c6b";
const ADMIN: &str = "admin_5b1f0c9e7d3a4f2e8c6b0a9d7e5f3c1b";

/// The admin events the gate emitted, by type.
#[derive(Default)]
struct Events(Mutex<Vec<(String, Value)>>);

impl EventSink for Events {
    fn usage(&self, _: &UsageEvent) {}
    fn admin(&self, event: &AdminEvent) {
        self.0
            .lock()
            .push((event.event_type.clone(), event.data.clone()));
    }
}

impl Events {
    fn count(&self, kind: &str) -> usize {
        self.0.lock().iter().filter(|(k, _)| k == kind).count()
    }
}

fn config() -> PayGateConfig {
    common::gateway::config(json!({
        "stripe": {
            "webhookSecret": SECRET,
            "packages": [{"id": "starter", "credits": 500, "priceId": "price_starter"}]
        }
    }))
    .unwrap()
}

struct Shop<S: KeyStore> {
    gate: Arc<Gate<S>>,
    admin: AdminService<S>,
    events: Arc<Events>,
}

impl<S: KeyStore> Shop<S> {
    fn over(store: S, clock: paygate_mcp::SharedClock) -> Self {
        let events = Arc::new(Events::default());
        let gate = Gate::with_store(config(), store, clock)
            .unwrap()
            .with_event_sink(events.clone());
        let gate = Arc::new(gate);
        let admin = AdminService::new(gate.clone(), ADMIN).unwrap();
        Self {
            gate,
            admin,
            events,
        }
    }

    /// Posts `body` with `signature` (none when `None`).
    async fn deliver_raw(&self, body: &[u8], signature: Option<String>) -> (StatusCode, Value) {
        let mut req = Request::post("/stripe/webhook").header("content-type", "application/json");
        if let Some(sig) = signature {
            req = req.header("stripe-signature", sig);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = self.admin.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Posts `event` signed now, as Stripe does.
    async fn deliver(&self, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string();
        let now = self.gate.clock().now_ms() / 1000;
        self.deliver_raw(body.as_bytes(), Some(sign(body.as_bytes(), SECRET, now)))
            .await
    }

    async fn credits(&self, key: &str) -> u64 {
        self.gate.get_key(key).await.unwrap().unwrap().credits
    }
}

fn paid(event_id: &str, session: &str, key_id: &str) -> Value {
    json!({
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": session,
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "client_reference_id": key_id,
            "metadata": {"paygate_key_id": key_id, "paygate_credits": "500", "paygate_package": "starter"}
        }}
    })
}

#[tokio::test]
async fn a_paid_checkout_credits_its_key_once_whatever_stripe_redelivers() {
    let shop = Shop::over(MemoryKeyStore::new(), common::clock_at(common::T0));
    let issued = shop.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    let (status, body) = shop.deliver(&paid("evt_1", "cs_1", &kid)).await;
    assert_eq!(
        (status, body["credited"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );
    assert_eq!(shop.credits(&issued.key).await, 510);
    assert_eq!(shop.events.count("billing.stripe_topup"), 1);
    assert_eq!(shop.events.count("key.topup"), 1);
    let topup = shop.events.0.lock()[0].1.clone();
    assert_eq!(
        (
            topup["keyId"].as_str(),
            topup["creditsAdded"].as_u64(),
            topup["paymentId"].as_str()
        ),
        (Some(kid.as_str()), Some(500), Some("cs_1"))
    );
    assert!(
        !topup.to_string().contains(&issued.key),
        "no full key in events"
    );
    // Redelivered; the same session under a new event; the async success of it.
    let mut async_success = paid("evt_3", "cs_1", &kid);
    async_success["type"] = json!("checkout.session.async_payment_succeeded");
    for event in [
        paid("evt_1", "cs_1", &kid),
        paid("evt_2", "cs_1", &kid),
        async_success,
    ] {
        let (status, body) = shop.deliver(&event).await;
        assert_eq!(
            (status, body["credited"].as_bool()),
            (StatusCode::OK, Some(false))
        );
    }
    // Twenty copies of a new payment at once.
    let event = paid("evt_4", "cs_4", &kid);
    let deliveries = (0..20).map(|_| shop.deliver(&event));
    let answers = common::join_all(deliveries.collect()).await;
    assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK));
    let credited = answers
        .iter()
        .filter(|(_, b)| b["credited"] == json!(true))
        .count();
    assert_eq!(credited, 1);
    assert_eq!(shop.credits(&issued.key).await, 1_010);
    assert_eq!(shop.events.count("billing.stripe_topup"), 2);
}

#[tokio::test]
async fn events_out_of_order_credit_once() {
    let shop = Shop::over(MemoryKeyStore::new(), common::clock_at(common::T0));
    let issued = shop.gate.create_key_with("bob", 0, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    // A delayed payment method: completed (unpaid), then async success; Stripe sends the
    // success first, then the completed event again with payment_status paid.
    let mut unpaid = paid("evt_a", "cs_9", &kid);
    unpaid["data"]["object"]["payment_status"] = json!("unpaid");
    let mut success = paid("evt_b", "cs_9", &kid);
    success["type"] = json!("checkout.session.async_payment_succeeded");
    for (event, credited) in [
        (success, true),
        (unpaid, false),
        (paid("evt_c", "cs_9", &kid), false),
    ] {
        let (status, body) = shop.deliver(&event).await;
        assert_eq!(
            (status, body["credited"].as_bool()),
            (StatusCode::OK, Some(credited)),
            "{body}"
        );
    }
    assert_eq!(shop.credits(&issued.key).await, 500);
}

#[tokio::test]
async fn unsigned_stale_or_malformed_deliveries_are_refused_and_change_nothing() {
    let shop = Shop::over(MemoryKeyStore::new(), common::clock_at(common::T0));
    let issued = shop.gate.create_key_with("carol", 10, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    let body = paid("evt_1", "cs_1", &kid).to_string();
    let now = shop.gate.clock().now_ms() / 1000;
    let forged = sign(body.as_bytes(), "whsec_someone_else", now);
    let stale = sign(body.as_bytes(), SECRET, now - 301);
    let tampered = body.replace("\"500\"", "\"50000\"");
    for (label, raw, sig) in [
        ("no signature", body.clone(), None),
        ("wrong secret", body.clone(), Some(forged)),
        ("stale", body.clone(), Some(stale)),
        (
            "garbage header",
            body.clone(),
            Some("t=abc,v1=zz".to_string()),
        ),
        (
            "tampered body",
            tampered,
            Some(sign(body.as_bytes(), SECRET, now)),
        ),
    ] {
        let (status, _) = shop.deliver_raw(raw.as_bytes(), sig).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{label}");
    }
    // Signed but not JSON, or no event.
    for raw in [&b"not json at all"[..], br#"{"id": "evt_x"}"#, b""] {
        let sig = sign(raw, SECRET, now);
        let (status, _) = shop.deliver_raw(raw, Some(sig)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(shop.credits(&issued.key).await, 10, "nothing credited");
    // Valid events that do not credit: 200, nothing changes.
    let mut unpaid = paid("evt_2", "cs_2", &kid);
    unpaid["data"]["object"]["payment_status"] = json!("unpaid");
    let stranger = paid("evt_3", "cs_3", "kid_00000000000000000000");
    let other =
        json!({"id": "evt_4", "type": "customer.created", "data": {"object": {"id": "cus_1"}}});
    let mut unreadable = paid("evt_6", "cs_6", "kid_not_an_id");
    unreadable["data"]["object"]["metadata"]["paygate_package"] = json!("gone");
    for event in [unpaid, stranger, other, unreadable] {
        let (status, body) = shop.deliver(&event).await;
        assert_eq!(
            (status, body["credited"].as_bool()),
            (StatusCode::OK, Some(false)),
            "{body}"
        );
    }
    assert_eq!(shop.credits(&issued.key).await, 10);
    assert_eq!(
        shop.events.count("billing.stripe_unmatched"),
        2,
        "the operator hears of the stranger's payment and of the unreadable one"
    );
    // 1.8's metadata: the key itself.
    let mut legacy = paid("evt_5", "cs_5", &kid);
    legacy["data"]["object"]["metadata"] =
        json!({"paygate_api_key": issued.key, "paygate_credits": 7});
    let (_, body) = shop.deliver(&legacy).await;
    assert_eq!(body["credited"], json!(true), "{body}");
    assert_eq!(shop.credits(&issued.key).await, 17);
    // Without a stripe section there is no endpoint.
    let plain = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    let admin = AdminService::new(plain, ADMIN).unwrap();
    let req = Request::post("/stripe/webhook")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        admin.oneshot(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_restart_remembers_what_was_credited() {
    let dir = std::env::temp_dir().join(format!("paygate-stripe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    let clock = common::clock_at(common::T0);
    let shop = Shop::over(MemoryKeyStore::new(), clock.clone());
    let issued = shop.gate.create_key_with("dave", 0, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    shop.deliver(&paid("evt_1", "cs_1", &kid)).await;
    shop.gate.store().save_to(&path).unwrap();
    let (store, _) = MemoryKeyStore::load_from(&path).unwrap();
    let again = Shop::over(store, clock);
    let (_, body) = again.deliver(&paid("evt_1", "cs_1", &kid)).await;
    assert_eq!(body["credited"], json!(false), "{body}");
    assert_eq!(again.credits(&issued.key).await, 500);
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_gateways_on_redis_credit_a_payment_once() {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};
    let server = common::redis_server::RedisServer::start();
    let clock = common::clock_at(common::T0);
    let mut shops = Vec::new();
    for _ in 0..2 {
        let config = RedisConfig::new(server.url())
            .with_prefix("shop:")
            .with_time(RedisTime::Request);
        let store = RedisKeyStore::connect(config).await.unwrap();
        shops.push(Shop::over(store, clock.clone()));
    }
    let issued = shops[0].gate.create_key_with("erin", 1, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    let event = paid("evt_r", "cs_r", &kid);
    let deliveries: Vec<_> = (0..20).map(|n| shops[n % 2].deliver(&event)).collect();
    let answers = common::join_all(deliveries).await;
    let credited = answers
        .iter()
        .filter(|(_, b)| b["credited"] == json!(true))
        .count();
    assert_eq!(credited, 1, "{answers:?}");
    assert_eq!(shops[1].credits(&issued.key).await, 501);
}
