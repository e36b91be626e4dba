//! `POST /checkout` (SPEC §13) against a local server standing in for Stripe's API: it
//! checks what Stripe would (the path, the secret key, the form fields, the idempotency key)
//! and answers a session in Stripe's shape; the gateway answers that session's `url`. The
//! API key never reaches Stripe.
#![cfg(feature = "stripe")]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::{AdminService, Gate, MemoryKeyStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const ADMIN: &str = "admin_5b1f0c9e7d3a4f2e8c6b0a9d7e5f3c1b";
const SECRET_KEY: &str = "sk_test_51Hx0123456789abcdef";

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    form: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A stand-in for `api.stripe.com`: answers `POST /v1/checkout/sessions` like Stripe
/// (the same session for a repeated `Idempotency-Key`), or `status` with Stripe's error shape.
struct FakeStripe {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<Mutex<u16>>,
}

impl FakeStripe {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let status = Arc::new(Mutex::new(200));
        let (s, st) = (seen.clone(), status.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (s, st) = (s.clone(), st.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break (head.to_string(), body[..len].to_string());
                            }
                        }
                    };
                    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                        .into_owned()
                        .collect();
                    let request = Seen { head, form };
                    let idem = request.header("idempotency-key").unwrap_or_default();
                    s.lock().push(request);
                    let code = *st.lock();
                    let (line, doc) = if code == 200 {
                        let id = format!("cs_test_{}", &idem[idem.len().saturating_sub(12)..]);
                        (
                            "200 OK",
                            json!({"id": id, "object": "checkout.session", "mode": "payment",
                                   "payment_status": "unpaid", "status": "open",
                                   "url": format!("https://checkout.stripe.com/c/pay/{id}")}),
                        )
                    } else {
                        (
                            "400 Bad Request",
                            json!({"error": {"type": "invalid_request_error", "message": "No such price: 'price_starter'"}}),
                        )
                    };
                    let body = doc.to_string();
                    let resp = format!(
                        "HTTP/1.1 {line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self { base, seen, status }
    }
}

struct Shop {
    gate: Arc<Gate<MemoryKeyStore>>,
    admin: AdminService<MemoryKeyStore>,
}

impl Shop {
    fn new(stripe: &FakeStripe) -> Self {
        let cfg = common::gateway::config(json!({
            "stripe": {
                "webhookSecret": "whsec_test_0123456789",
                "secretKey": SECRET_KEY,
                "apiBase": stripe.base,
                "packages": [
                    {"id": "starter", "credits": 500, "priceId": "price_starter"},
                    {"id": "pro", "credits": 5000, "priceId": "price_pro"}
                ],
                "successUrl": "https://mcp.example.com/paid",
                "cancelUrl": "https://mcp.example.com/cancelled"
            }
        }))
        .unwrap();
        let gate = Arc::new(
            Gate::with_store(cfg, MemoryKeyStore::new(), common::clock_at(common::T0)).unwrap(),
        );
        let admin = AdminService::new(gate.clone(), ADMIN).unwrap();
        Self { gate, admin }
    }

    async fn checkout(&self, headers: &[(&str, &str)], body: Value) -> (StatusCode, Value) {
        let mut req = Request::post("/checkout").header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = self.admin.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn a_key_buys_a_package_through_a_checkout_session() {
    let stripe = FakeStripe::start().await;
    let shop = Shop::new(&stripe);
    let issued = shop.gate.create_key_with("alice", 0, &[]).await.unwrap();
    let kid = issued.record.id().to_string();
    let (status, body) = shop
        .checkout(&[("x-api-key", &issued.key)], json!({"package": "starter"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = stripe.seen.lock()[0].clone();
    // What Stripe received: the session it documents, for this account, nothing more.
    assert!(
        seen.head.starts_with("POST /v1/checkout/sessions HTTP/1.1"),
        "{}",
        seen.head
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET_KEY}"))
    );
    assert_eq!(
        seen.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let idem = seen.header("idempotency-key").unwrap();
    assert!(idem.starts_with("paygate-") && idem.len() > 20, "{idem}");
    for (field, value) in [
        ("mode", "payment"),
        ("line_items[0][price]", "price_starter"),
        ("line_items[0][quantity]", "1"),
        ("success_url", "https://mcp.example.com/paid"),
        ("cancel_url", "https://mcp.example.com/cancelled"),
        ("client_reference_id", kid.as_str()),
        ("metadata[paygate_key_id]", kid.as_str()),
        ("metadata[paygate_credits]", "500"),
        ("metadata[paygate_package]", "starter"),
    ] {
        assert_eq!(seen.field(field), Some(value), "{field}");
    }
    assert_eq!(seen.form.len(), 9, "no other field: {:?}", seen.form);
    let everything = format!("{}{:?}", seen.head, seen.form);
    assert!(
        !everything.contains(&issued.key),
        "the API key never goes to Stripe"
    );
    // The answer is what Stripe answered.
    let session = format!("cs_test_{}", &idem[idem.len() - 12..]);
    assert_eq!(body["sessionId"], json!(session));
    assert_eq!(
        body["url"],
        json!(format!("https://checkout.stripe.com/c/pay/{session}"))
    );
    assert_eq!(
        (body["credits"].as_u64(), body["keyId"].as_str()),
        (Some(500), Some(kid.as_str()))
    );
    // The packages are listed for clients to offer.
    let req = Request::get("/pricing")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = shop.admin.clone().oneshot(req).await.unwrap();
    let pricing: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        pricing["packages"][1],
        json!({"id": "pro", "credits": 5000, "purchasable": true})
    );
}

#[tokio::test]
async fn a_retried_purchase_is_the_same_session_and_failures_are_clear() {
    let stripe = FakeStripe::start().await;
    let shop = Shop::new(&stripe);
    let issued = shop.gate.create_key_with("bob", 0, &[]).await.unwrap();
    let headers = [
        ("x-api-key", issued.key.as_str()),
        ("idempotency-key", "order-42"),
    ];
    let (_, first) = shop.checkout(&headers, json!({"package": "pro"})).await;
    let (_, again) = shop.checkout(&headers, json!({"package": "pro"})).await;
    assert_eq!(
        first["sessionId"], again["sessionId"],
        "the caller's retry is one purchase"
    );
    let keys: Vec<String> = stripe
        .seen
        .lock()
        .iter()
        .map(|s| s.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys[0], keys[1]);
    assert!(
        !keys[0].contains("order-42"),
        "scoped to the account, not passed through"
    );
    // Without an idempotency key, two purchases are two sessions.
    let plain = [("x-api-key", issued.key.as_str())];
    let (_, a) = shop.checkout(&plain, json!({"package": "pro"})).await;
    let (_, b) = shop.checkout(&plain, json!({"package": "pro"})).await;
    assert_ne!(a["sessionId"], b["sessionId"]);
    // Refusals: no key, a wrong key, an unknown package, Stripe refusing.
    let calls = stripe.seen.lock().len();
    for (headers, body, status) in [
        (&[][..], json!({"package": "pro"}), StatusCode::UNAUTHORIZED),
        (
            &[("x-api-key", "pg_wrong_0000000000000000")][..],
            json!({"package": "pro"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            &plain[..],
            json!({"package": "gold"}),
            StatusCode::BAD_REQUEST,
        ),
        (&plain[..], json!({"pkg": "pro"}), StatusCode::BAD_REQUEST),
    ] {
        let (got, answer) = shop.checkout(headers, body).await;
        assert_eq!(got, status, "{answer}");
    }
    assert_eq!(
        stripe.seen.lock().len(),
        calls,
        "refused before reaching Stripe"
    );
    *stripe.status.lock() = 400;
    let (status, answer) = shop.checkout(&plain, json!({"package": "pro"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        !answer.to_string().contains("price_starter"),
        "Stripe's message stays in the log"
    );
    // A revoked key buys nothing.
    shop.gate.revoke(issued.key.as_str()).await.unwrap();
    *stripe.status.lock() = 200;
    let (status, _) = shop.checkout(&plain, json!({"package": "pro"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_signed_in_client_buys_with_its_oauth_token() {
    use paygate_mcp::oauth::OAuthServer;
    let stripe = FakeStripe::start().await;
    let shop = Shop::new(&stripe);
    let oauth = Arc::new(OAuthServer::new("http://127.0.0.1:3402", shop.gate.clone()));
    let admin = shop.admin.clone().with_oauth(oauth.clone());
    let issued = shop.gate.create_key_with("carol", 0, &[]).await.unwrap();
    let (_, tokens) = common::oauth_sign_in(&oauth, &issued.record).await;
    let shop = Shop {
        gate: shop.gate.clone(),
        admin,
    };
    let bearer = format!("Bearer {}", tokens.access_token);
    let (status, body) = shop
        .checkout(&[("authorization", &bearer)], json!({"package": "starter"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["keyId"], json!(issued.record.id()));
    let seen = stripe.seen.lock()[0].clone();
    assert!(
        !format!("{seen:?}").contains(&tokens.access_token),
        "the token never goes to Stripe"
    );
    let (status, _) = shop
        .checkout(
            &[("authorization", "Bearer pgat_forged")],
            json!({"package": "starter"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
