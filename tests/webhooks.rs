//! Webhook delivery against real local HTTP endpoints: batching, signatures, dead endpoints,
//! retries; and the audit log and webhook sink fed by a gate.
#![cfg(feature = "webhook")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use paygate_mcp::webhook::{signature_header, SIGNATURE_HEADER};
use paygate_mcp::{
    verify_signature, AdminEvent, AuditLog, AuditQuery, CallRequest, EventSink, FanOut,
    PayGateConfig, UsageEvent, WebhookConfig, WebhookSink,
};
use serde_json::{json, Value};

const SECRET: &str = "whsec_test_3f9a";

/// One POST as the endpoint saw it.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Clone, Default)]
struct Endpoint {
    received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; 200 once they run out.
    script: Arc<Mutex<Vec<StatusCode>>>,
    answered_ok: Arc<AtomicUsize>,
}

async fn hook(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ep.received.lock().push(Received {
        signature: header(SIGNATURE_HEADER),
        content_type: header("content-type"),
        body,
    });
    let status = {
        let mut script = ep.script.lock();
        if script.is_empty() {
            StatusCode::OK
        } else {
            script.remove(0)
        }
    };
    if status.is_success() {
        ep.answered_ok.fetch_add(1, Ordering::SeqCst);
    }
    status
}

/// Serves [`hook`] at `/hook` on a fresh local port.
async fn serve(ep: Endpoint) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/hook", post(hook)).with_state(ep);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn usage(i: usize) -> UsageEvent {
    UsageEvent {
        timestamp: chrono::Utc::now(),
        api_key: "pg_1a2b...9z8y".into(),
        key_id: None,
        key_name: "alice".into(),
        tool: format!("tool_{i}"),
        credits_charged: 1,
        allowed: !i.is_multiple_of(5),
        deny_reason: i
            .is_multiple_of(5)
            .then(|| "insufficient_credits".to_string()),
        duration_ms: Some(12),
    }
}

fn admin(event_type: &str, n: usize) -> AdminEvent {
    AdminEvent {
        event_type: event_type.into(),
        timestamp: chrono::Utc::now(),
        data: json!({"keyMasked": "pg_1a2b...9z8y", "n": n}),
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn batches_arrive_signed_with_at_most_ten_events_each_exactly_once() {
    let ep = Endpoint::default();
    let addr = serve(ep.clone()).await;
    let config = WebhookConfig::new(format!("http://{addr}/hook")).with_secret(SECRET);
    let (sink, handle) = WebhookSink::start(config).expect("starts");

    for i in 0..25 {
        sink.usage(&usage(i));
        if i % 10 == 3 {
            sink.admin(&admin(
                ["key.created", "key.topup", "alert.fired"][i / 10],
                i,
            ));
        }
    }
    // Not webhook events: never sent.
    sink.admin(&admin("key.acl_updated", 100));
    sink.admin(&admin("admin.auth_failed", 101));
    handle.flush().await;

    let received = ep.received.lock().clone();
    assert!(received.len() >= 3, "28 events need at least 3 POSTs");
    let mut tools = Vec::new();
    let mut admin_types = Vec::new();
    for post in &received {
        assert_eq!(post.content_type.as_deref(), Some("application/json"));
        let body = post.json();
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 2, "only events and adminEvents: {body}");
        let events = body["events"].as_array().expect("events is an array");
        let admins = body["adminEvents"]
            .as_array()
            .expect("adminEvents is an array");
        let size = events.len() + admins.len();
        assert!((1..=10).contains(&size), "batch of {size}");
        for e in events {
            assert_eq!(e["apiKey"], "pg_1a2b...9z8y");
            assert!(e["allowed"].is_boolean());
            tools.push(e["tool"].as_str().expect("tool").to_string());
        }
        for a in admins {
            assert_eq!(a["data"]["keyMasked"], "pg_1a2b...9z8y");
            admin_types.push(a["type"].as_str().expect("type").to_string());
        }
    }
    let mut expected_tools: Vec<String> = (0..25).map(|i| format!("tool_{i}")).collect();
    tools.sort();
    expected_tools.sort();
    assert_eq!(tools, expected_tools, "every usage event exactly once");
    assert_eq!(admin_types, ["key.created", "key.topup", "alert.fired"]);

    let now = unix_now();
    for post in &received {
        let signature = post.signature.as_deref().expect("signed");
        assert!(verify_signature(SECRET, signature, &post.body, now, 300));
        assert!(!verify_signature(
            "whsec_wrong",
            signature,
            &post.body,
            now,
            300
        ));
        let mut tampered = post.body.to_vec();
        tampered[1] ^= 0x20;
        assert!(!verify_signature(SECRET, signature, &tampered, now, 300));
        assert!(!verify_signature(
            SECRET,
            signature,
            &post.body,
            now + 3_600,
            300
        ));
        let old = signature_header(SECRET, now - 3_600, &post.body);
        assert!(!verify_signature(SECRET, &old, &post.body, now, 300));
    }

    let stats = sink.stats();
    assert_eq!(
        (stats.delivered, stats.failed, stats.dropped, stats.pending),
        (28, 0, 0, 0)
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn events_are_sent_within_the_flush_interval_without_a_flush() {
    let ep = Endpoint::default();
    let addr = serve(ep.clone()).await;
    let config = WebhookConfig::new(format!("http://{addr}/hook"))
        .with_flush_interval(Duration::from_millis(50));
    let (sink, handle) = WebhookSink::start(config).expect("starts");
    sink.usage(&usage(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while ep.received.lock().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = ep.received.lock().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].signature, None, "no secret, no signature");
    assert_eq!(received[0].json()["adminEvents"], json!([]));
    handle.shutdown().await;
}

/// Accepts connections and never answers.
async fn silent_endpoint() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("local addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_never_slows_tool_calls() {
    for (what, addr) in [
        ("silent", silent_endpoint().await),
        ("closed", closed_port().await),
    ] {
        let config = WebhookConfig::new(format!("http://{addr}/hook"))
            .with_secret(SECRET)
            .with_max_queue(1_000);
        let (sink, handle) = WebhookSink::start(config).expect("starts");
        let event = usage(7);
        let started = Instant::now();
        for _ in 0..10_000 {
            sink.usage(&event);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(1),
            "{what}: 10,000 events took {elapsed:?}"
        );

        let s = sink.stats();
        assert!(s.pending <= 1_000 + 10, "{what}: queue bounded, {s:?}");
        assert!(s.dropped >= 10_000 - 1_010, "{what}: drops counted, {s:?}");
        assert_eq!(s.delivered, 0, "{what}");
        assert_eq!(
            s.dropped + s.failed + s.pending as u64,
            10_000,
            "{what}: every event accounted for, {s:?}"
        );

        // Shutting down against a dead endpoint can be bounded.
        let started = Instant::now();
        assert!(!handle.shutdown_within(Duration::from_millis(200)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        sink.usage(&event); // after shutdown: dropped at once, still no wait
        assert_eq!(sink.stats().dropped, s.dropped + 1);
    }
}

#[tokio::test]
async fn a_batch_is_retried_until_the_endpoint_recovers() {
    let ep = Endpoint::default();
    ep.script.lock().extend([
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::SERVICE_UNAVAILABLE,
    ]);
    let addr = serve(ep.clone()).await;
    let config = WebhookConfig::new(format!("http://{addr}/hook"))
        .with_secret(SECRET)
        .with_retries(5, Duration::from_millis(20));
    let (sink, handle) = WebhookSink::start(config).expect("starts");
    for i in 0..3 {
        sink.usage(&usage(i));
    }
    sink.admin(&admin("key.revoked", 0));
    handle.flush().await;

    let received = ep.received.lock().clone();
    assert_eq!(received.len(), 3, "503, 503, then 200");
    assert_eq!(ep.answered_ok.load(Ordering::SeqCst), 1, "accepted once");
    for post in &received {
        assert_eq!(post.body, received[0].body, "the same batch each time");
        let signature = post.signature.as_deref().expect("signed");
        assert!(verify_signature(
            SECRET,
            signature,
            &post.body,
            unix_now(),
            300
        ));
    }
    let body = received[0].json();
    assert_eq!(body["events"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["adminEvents"][0]["type"], "key.revoked");
    let s = sink.stats();
    assert_eq!((s.delivered, s.failed, s.pending), (4, 0, 0));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let ep = Endpoint::default();
    ep.script.lock().push(StatusCode::BAD_REQUEST);
    let addr = serve(ep.clone()).await;
    let config = WebhookConfig::new(format!("http://{addr}/hook"))
        .with_retries(5, Duration::from_millis(20));
    let (sink, handle) = WebhookSink::start(config).expect("starts");
    sink.usage(&usage(1));
    handle.flush().await;
    assert_eq!(ep.received.lock().len(), 1);
    assert_eq!(sink.stats().failed, 1);
    handle.shutdown().await;
}

#[tokio::test]
async fn only_http_and_https_urls_start() {
    assert!(WebhookSink::start(WebhookConfig::new("https://hooks.example.com/x")).is_ok());
    for url in [
        "ftp://hooks.example.com/x",
        "hooks.example.com",
        "javascript:alert(1)",
    ] {
        assert!(
            WebhookSink::start(WebhookConfig::new(url)).is_err(),
            "{url}"
        );
    }
    let err = WebhookSink::start(WebhookConfig::new("gopher://x")).err();
    assert!(err.is_some_and(|e| e.to_string().contains("http")));
}

#[tokio::test]
async fn a_gate_feeds_the_audit_log_and_the_webhook_without_full_keys() {
    let ep = Endpoint::default();
    let addr = serve(ep.clone()).await;
    let config = WebhookConfig::new(format!("http://{addr}/hook")).with_secret(SECRET);
    let (webhook, handle) = WebhookSink::start(config).expect("starts");

    let clock = common::clock_at(common::T0);
    let audit = Arc::new(AuditLog::new(clock.clone()));
    let sinks = FanOut(vec![audit.clone() as Arc<dyn EventSink>, webhook.clone()]);
    let gate = paygate_mcp::Gate::with_store(
        PayGateConfig::default(),
        paygate_mcp::MemoryKeyStore::new(),
        clock.clone(),
    )
    .expect("valid config")
    .with_event_sink(Arc::new(sinks));

    let key = gate.create_key("alice", 3).await.expect("key");
    let masked = paygate_mcp::mask_key(&key);
    for _ in 0..5 {
        gate.evaluate(&CallRequest::new(&key, "search")).await;
    }
    gate.emit(
        "key.topup",
        json!({"keyMasked": masked, "creditsAdded": 10}),
    );
    gate.emit(
        "key.tags_updated",
        json!({"keyMasked": masked, "actor": "admin"}),
    );
    handle.flush().await;

    let allows = audit.query(&AuditQuery {
        types: vec!["gate.allow".into()],
        ..Default::default()
    });
    let denies = audit.query(&AuditQuery {
        types: vec!["gate.deny".into()],
        actor: Some(masked.clone()),
        ..Default::default()
    });
    assert_eq!((allows.total, denies.total), (3, 2));
    assert_eq!(
        denies.events[0].metadata["denyReason"],
        "insufficient_credits"
    );
    assert_eq!(denies.events[0].metadata["tool"], "search");
    let tags = audit.query(&AuditQuery {
        types: vec!["key.tags_updated".into()],
        ..Default::default()
    });
    assert_eq!(tags.events[0].actor, "admin");
    assert_eq!(audit.stats().total_events, 7);

    let mut usage_seen = 0;
    let mut admin_seen = Vec::new();
    for post in ep.received.lock().iter() {
        let text = String::from_utf8_lossy(&post.body);
        assert!(!text.contains(&key), "a full key left in a webhook");
        let body = post.json();
        usage_seen += body["events"].as_array().map_or(0, Vec::len);
        for a in body["adminEvents"].as_array().into_iter().flatten() {
            admin_seen.push(a["type"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(usage_seen, 5);
    assert_eq!(admin_seen, ["key.topup"], "tags updates are audit-only");
    assert!(!audit.export_csv().contains(&key));
    assert!(!serde_json::to_string(&audit.export())
        .expect("serializes")
        .contains(&key));
    handle.shutdown().await;
}
