//! Attacks that need a real session server, a real client connection or a real Redis: moving
//! a paid call's answer to a resumed stream, a JSON answer whose end is read after the
//! deadline, Base64-wrapped MCP headers, keyless floods of the metrics, admin replies that
//! leave a body unread, and a refund that fails in an outage. Each test states what an
//! attacker does and asserts what the gateway promises (SPEC §3, §4, §4a).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use paygate_mcp::{Gate, KeyDigest, KeyStore, MemoryKeyStore, PayGateConfig, PayGateLayer};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};

use common::gateway::{config, Conn, Downstream, DownstreamState, IdEcho, Reply, Req, TestGateway};

// ---------------------------------------------------------------------------------------------
// A real rmcp server with one slow, paid tool (any tool that takes longer than a round trip:
// a web fetch, a search, a model call — the tools worth charging for).
// ---------------------------------------------------------------------------------------------

mod slow_server {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use rmcp::handler::server::router::tool::ToolRouter;
    use rmcp::handler::server::wrapper::Parameters;
    use rmcp::model::{CallToolResult, ContentBlock, JsonObject, ServerCapabilities, ServerConfig};
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, ServerHandler};

    pub const RESULT: &str = "RESULT-OF-THE-PAID-TOOL";

    #[derive(Debug, Clone)]
    pub struct Slow {
        tool_router: ToolRouter<Self>,
        pub runs: Arc<AtomicUsize>,
    }

    #[tool_router]
    impl Slow {
        #[tool(description = "Takes a moment, then answers")]
        async fn slow_search(
            &self,
            Parameters(_args): Parameters<JsonObject>,
        ) -> Result<CallToolResult, McpError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
            Ok(CallToolResult::success(vec![ContentBlock::text(RESULT)]))
        }
    }

    #[tool_handler(router = self.tool_router)]
    impl ServerHandler for Slow {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }
    }

    /// rmcp's default Streamable HTTP server (sessions, SSE answers, resumable streams).
    pub fn service(runs: Arc<AtomicUsize>) -> StreamableHttpService<Slow, LocalSessionManager> {
        StreamableHttpService::new(
            move || {
                Ok(Slow {
                    tool_router: Slow::tool_router(),
                    runs: runs.clone(),
                })
            },
            Default::default(),
            StreamableHttpServerConfig::default(),
        )
    }
}

async fn read_chunk(resp: &mut reqwest::Response, within: Duration) -> Option<Bytes> {
    match tokio::time::timeout(within, resp.chunk()).await {
        Ok(Ok(Some(b))) => Some(b),
        _ => None,
    }
}

/// MONEY. With `refundOnFailure`, a paid call's answer is watched only on the POST stream
/// that carried the call. rmcp (like any MCP server with resumable streams) lets the client
/// resume that stream with `GET /mcp` + `Last-Event-ID`, which the gate forwards ungated
/// (no JSON-RPC body, no key needed). The resume moves the stream to the GET: the watched
/// POST stream ends without an answer, so the gate refunds, and the tool's answer arrives on
/// the unwatched GET. The client gets the result and pays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_stream_elsewhere_does_not_refund_a_call_that_ran() {
    let runs = Arc::new(AtomicUsize::new(0));
    let cfg = PayGateConfig::default()
        .with_tool_price("slow_search", 5)
        .with_refund_on_failure(true);
    let gate = Arc::new(Gate::new(cfg).expect("valid config"));
    let mcp = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(slow_server::service(runs.clone()));
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn(
            common::mcp::client_addr::client_addr,
        ));
    let (base, _stop) = common::mcp::serve(app).await;
    let url = format!("{base}/mcp");
    let key = gate.create_key("attacker", 5).await.unwrap();
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, session: Option<&str>| {
        let mut r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-api-key", &key)
            .body(body.to_string());
        if let Some(s) = session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        r.send()
    };

    // 1. A session (free).
    let init = post(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"attacker","version":"1"}}}),
        None,
    )
    .await
    .unwrap();
    let session = init
        .headers()
        .get("mcp-session-id")
        .expect("a stateful session")
        .to_str()
        .unwrap()
        .to_string();
    let _ = init.bytes().await;
    let _ = post(
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        Some(&session),
    )
    .await
    .unwrap()
    .bytes()
    .await;

    // 2. The paid call. Its stream opens with a priming event naming the stream (`id: 0/N`).
    let mut call = post(
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
               "params":{"name":"slow_search","arguments":{"q":"x"}}}),
        Some(&session),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    let mut event_id = None;
    while event_id.is_none() {
        let Some(chunk) = read_chunk(&mut call, Duration::from_secs(5)).await else {
            break;
        };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        event_id = seen
            .lines()
            .find_map(|l| l.strip_prefix("id:"))
            .map(|v| v.trim().to_string());
    }
    let event_id = event_id.expect("the call's stream names itself in a priming event");
    assert_eq!(
        gate.store()
            .get(&KeyDigest::of(&key))
            .await
            .unwrap()
            .unwrap()
            .credits,
        0
    );

    // 3. Resume that stream on a GET (no key, no JSON-RPC body: forwarded ungated).
    let mut resumed = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .header("last-event-id", &event_id)
        .send()
        .await
        .unwrap();

    // 4. The watched POST stream now ends without an answer: the gate refunds.
    while let Some(chunk) = read_chunk(&mut call, Duration::from_secs(5)).await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // 5. The tool's answer arrives on the GET.
    let mut got = String::new();
    while !got.contains(slow_server::RESULT) {
        let Some(chunk) = read_chunk(&mut resumed, Duration::from_secs(5)).await else {
            break;
        };
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let credits = gate
        .store()
        .get(&KeyDigest::of(&key))
        .await
        .unwrap()
        .unwrap()
        .credits;
    let delivered = got.contains(slow_server::RESULT) || seen.contains(slow_server::RESULT);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the tool ran once");
    assert!(
        !(delivered && credits == 5),
        "free call: the tool ran, its answer reached the client (on the resumed GET stream), \
         and the 5 credits were refunded (balance {credits}). POST stream: {seen:?}"
    );
}

/// MONEY (conditional). With `refundOnFailure` and `callTimeoutMs`, a JSON answer is only
/// judged when its body *ends*: the deadline is checked before each poll of the body, so an
/// answer whose end-of-stream is polled after the deadline is refunded although every byte of
/// it was already passed on. Shown at the body level: the whole result is read, the end is
/// polled late. (Over loopback TCP with an always-ready downstream body, hyper polled the end
/// at once even against a stalled reader, so a client could not force this by itself; a
/// downstream whose end-of-body trails its last byte, e.g. a relayed remote, can.)
#[tokio::test]
async fn a_json_answer_held_whole_at_the_deadline_is_judged_on_what_it_says() {
    let cfg = config(json!({"refundOnFailure": true, "callTimeoutMs": 200}))
        .unwrap()
        .with_tool_price("echo", 5);
    let gate = Arc::new(
        Gate::with_store(cfg, MemoryKeyStore::new(), common::clock_at(common::T0)).unwrap(),
    );
    let key = gate.create_key("attacker", 5).await.unwrap();
    let downstream = Downstream(Arc::new(DownstreamState {
        calls: AtomicUsize::new(0),
        reply: parking_lot::Mutex::new(Reply::Result),
        echo: parking_lot::Mutex::new(IdEcho::Raw),
    }));
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(downstream);
    let req = http::Request::post("/mcp")
        .header("content-type", "application/json")
        .header("x-api-key", &key)
        .body(Full::new(Bytes::from(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                   "params":{"name":"echo","arguments":{"payload":"THE-WHOLE-ANSWER"}}})
            .to_string(),
        )))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&first).expect("a whole JSON answer");
    assert!(answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("THE-WHOLE-ANSWER"));
    assert_eq!(
        gate.store()
            .get(&KeyDigest::of(&key))
            .await
            .unwrap()
            .unwrap()
            .credits,
        0,
        "charged"
    );
    // The client holds its read (TCP backpressure does this for a big answer) past the
    // deadline; then the body's end is polled.
    tokio::time::sleep(Duration::from_millis(400)).await;
    while let Some(frame) = body.frame().await {
        let _ = frame;
    }
    let credits = gate
        .store()
        .get(&KeyDigest::of(&key))
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(
        credits, 0,
        "a successful answer the client already holds in full was refunded"
    );
}

/// MINOR (availability). An MCP 2026-07-28 client sends `Mcp-Name` Base64-wrapped
/// (`=?base64?...?=`) when the name is not plain ASCII (SEP-2243, as rmcp's client does).
/// The gate compares the raw header to the body and refuses every such call, so tools
/// with non-ASCII names (or names with edge spaces) cannot be called by a conforming client.
#[tokio::test]
async fn a_base64_wrapped_mcp_name_from_a_conforming_client_is_accepted() {
    let gw = TestGateway::start(PayGateConfig::default()).await.unwrap();
    let key = gw.key(10).await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                      "params":{"name":"café","arguments":{}}})
    .to_string();
    let before = gw.downstream_calls();
    let resp = gw
        .send(
            Req::mcp(body)
                .key(Some(&key))
                .header("mcp-method", "tools/call")
                .header("mcp-name", "=?base64?Y2Fmw6k=?="),
        )
        .await;
    assert_eq!(
        gw.downstream_calls(),
        before + 1,
        "a conforming call was refused: {}",
        resp.brief()
    );
}

/// MINOR (robustness, SPEC §4a: "any early reply that leaves a request body unread closes
/// the connection cleanly"). The admin API answers 401 before reading the body (and 413 after
/// reading only part of it) without `Connection: close`; a keep-alive client's next request
/// on that connection then fails.
#[tokio::test]
async fn admin_early_replies_close_the_connection() {
    let gw = TestGateway::start(PayGateConfig::default()).await.unwrap();
    let big = format!(
        r#"{{"key":"x","credits":1,"pad":"{}"}}"#,
        "p".repeat(512 * 1024)
    );
    let mut conn = Conn::open(gw.addr).await;
    let first = Req::new("POST", "/topup", big)
        .header("x-admin-key", "wrong-admin-key-0000000000")
        .header("content-type", "application/json");
    let resp = conn.send(&first, &gw.host()).await.expect("an answer");
    assert_eq!(resp.status, 401);
    let says_close = resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let next = conn.send(&Req::new("GET", "/health", ""), &gw.host()).await;
    assert!(
        says_close || next.is_some(),
        "401 left the body unread, did not say Connection: close, and the next request on \
         the connection got no answer"
    );
}

/// MINOR (observability). The per-tool series of the public `/metrics` are handed out first
/// come, first served, to any tool name — including names in calls that were denied for
/// having no key. 500 keyless requests with made-up names take every slot: from then on the
/// operator's real tools (and what they earned) are all counted as `(other)`.
#[tokio::test]
async fn keyless_calls_cannot_claim_the_per_tool_metrics_series() {
    let gw = TestGateway::start(PayGateConfig::default()).await.unwrap();
    for i in 0..paygate_mcp::metrics::MAX_TOOL_LABELS {
        let body = json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                          "params":{"name":format!("junk-{i}")}})
        .to_string();
        let resp = gw.send(Req::mcp(body)).await;
        assert_eq!(resp.reason(), "missing_api_key");
    }
    let key = gw.key(10).await;
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                      "params":{"name":"echo","arguments":{}}})
    .to_string();
    assert!(gw.mcp(Some(&key), &call).await.has_result());
    let metrics = gw.send(Req::new("GET", "/metrics", "")).await.text();
    assert!(
        metrics.contains(r#"paygate_credits_charged_total{tool="echo"}"#),
        "the paid tool's revenue is not in /metrics; keyless junk names hold every series"
    );
}

/// MONEY (owed to the customer). A refund backed by a receipt is applied from the receipt even
/// when its charge is no longer on record (pushed out by 10,000 newer charges). But when that
/// refund cannot reach Redis (an outage), it is queued as if it were a *lost charge reply*,
/// which the compensator does not give back once the charge is off record ("not on record
/// and too old to tell"). The receipt's proof is dropped with it: the refund is never applied.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_refund_that_fails_in_an_outage_is_applied_later() {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
    use paygate_mcp::{CallRequest, SystemClock};

    let mut server = common::redis_server::RedisServer::start();
    let store = RedisKeyStore::connect(
        RedisConfig::new(server.url())
            .with_prefix("owed:")
            .with_response_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("redis");
    let cfg = PayGateConfig::default()
        .with_rate_limit(0)
        .with_tool_price("t", 4);
    let gate = Arc::new(Gate::with_store(cfg, store, Arc::new(SystemClock)).unwrap());
    let key = gate.create_key("victim", 100_000).await.unwrap();

    // A call that will fail downstream (its refund is due), then a busy key's newer calls.
    let failed = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(failed.allowed);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10_000 {
        assert!(gate.evaluate(&CallRequest::new(&key, "t")).await.allowed);
    }
    let before = gate
        .store()
        .get(&KeyDigest::of(&key))
        .await
        .unwrap()
        .unwrap()
        .credits;

    // Redis goes away just as the refund is sent; it comes back with its data.
    server.kill();
    let out = gate.refund(failed.receipt.expect("receipt")).await;
    assert!(out.is_err(), "the refund could not be applied now");
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gate.store().unsettled_charges() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = gate
        .store()
        .get(&KeyDigest::of(&key))
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(
        after,
        before + 4,
        "the refund owed for a failed call was dropped (unresolved: {})",
        gate.store().unresolved_charges()
    );
    drop(server);
}
