//! `HttpUpstream` and `McpRouter`: the gate in front of MCP servers reached over HTTP.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use common::mcp::{jsonrpc_message as message, serve, spawn_demo, Mode};
use common::record;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::upstream::{boxed, McpRouter};
use paygate_mcp::{block_on, Gate, HttpUpstream, HttpUpstreamConfig, PayGateConfig, PayGateLayer};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};

fn rpc(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

fn post(key: &str, body: String) -> Request<Full<Bytes>> {
    Request::post("http://localhost/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn gate(cfg: PayGateConfig) -> (Arc<Gate>, String) {
    let gate = Arc::new(Gate::new(cfg).unwrap());
    let key = block_on(gate.create_key("k", 100)).unwrap();
    (gate, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_leave_and_other_headers_do() {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let record_headers = seen.clone();
    let remote = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
            let seen = record_headers.clone();
            async move {
                seen.lock().push(headers);
                let id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .map(|v| v["id"].clone());
                let mut resp = http::Response::new(AxumBody::from(
                    json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}).to_string(),
                ));
                resp.headers_mut().insert(
                    "mcp-session-id",
                    http::HeaderValue::from_static("remote-session-1"),
                );
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
        }),
    );
    let (base, _stop) = serve(remote).await;
    let upstream = HttpUpstream::new(
        HttpUpstreamConfig::new(format!("{base}/mcp"))
            .with_header("x-remote-token", "upstream-secret"),
    )
    .unwrap();
    let (gate, key) = gate(PayGateConfig::default());
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream);
    let mut req = post(&key, rpc(1, "tools/call", json!({"name": "echo"})));
    for (k, v) in [
        ("authorization", "Bearer client-token"),
        ("x-admin-key", "admin-secret"),
        ("cookie", "session=abc"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-trace-id", "trace-42"),
        ("mcp-session-id", "client-session-9"),
    ] {
        req.headers_mut()
            .insert(k, http::HeaderValue::from_static(v));
    }
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["mcp-session-id"],
        "remote-session-1",
        "the session id comes back"
    );
    assert_eq!(resp.headers()["x-credits-remaining"], "99");
    common::body_text(resp).await;
    let headers = seen.lock().pop().expect("the remote was called");
    for gone in [
        "x-api-key",
        "authorization",
        "x-admin-key",
        "cookie",
        "x-forwarded-for",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} leaked upstream");
    }
    assert_eq!(headers["x-trace-id"], "trace-42");
    assert_eq!(headers["mcp-session-id"], "client-session-9");
    assert_eq!(headers["x-remote-token"], "upstream-secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_stream_through_without_waiting_for_the_end() {
    let remote = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|| async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n"))).await;
                tokio::time::sleep(Duration::from_millis(600)).await;
                let _ = tx.send(Ok(Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n"))).await;
            });
            let stream = futures_stream(rx);
            let mut resp = http::Response::new(AxumBody::from_stream(stream));
            resp.headers_mut().insert("content-type", http::HeaderValue::from_static("text/event-stream"));
            resp
        }),
    );
    let (base, _stop) = serve(remote).await;
    let upstream = HttpUpstream::new(HttpUpstreamConfig::new(format!("{base}/mcp"))).unwrap();
    let (gate, key) = gate(PayGateConfig::default().with_refund_on_failure(true));
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream);
    let started = Instant::now();
    let resp = svc
        .oneshot(post(&key, rpc(1, "tools/call", json!({"name": "slow"}))))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a first event").expect("ok");
    let first_at = started.elapsed();
    assert!(
        String::from_utf8_lossy(first.data_ref().expect("data")).contains("notifications/progress")
    );
    assert!(
        first_at < Duration::from_millis(450),
        "the first event arrived after {first_at:?}: buffered"
    );
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(
            frame
                .expect("ok")
                .data_ref()
                .map(|d| &d[..])
                .unwrap_or_default(),
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(String::from_utf8_lossy(&rest).contains("\"result\""));
    assert_eq!(
        record(&gate, &key).credits,
        99,
        "a successful streamed call stays charged"
    );
}

/// A stream over a channel receiver, without a stream-utilities crate.
fn futures_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Bytes, Infallible>> {
    struct S(tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>);
    impl futures_core::Stream for S {
        type Item = Result<Bytes, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    S(rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_kept_for_the_rmcp_client() {
    let (remote, _stop_remote) = spawn_demo(Mode::Sse).await;
    let upstream = HttpUpstream::new(HttpUpstreamConfig::new(remote)).unwrap();
    let (gate, key) = gate(PayGateConfig::default().with_tool_price("echo", 4));
    let app = axum::Router::new().nest_service(
        "/mcp",
        ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(gate.clone()))
            .service(upstream),
    );
    let (base, _stop) = serve(app).await;
    let client = common::mcp::client(&format!("{base}/mcp"), &key).await;
    let tools = client
        .list_all_tools()
        .await
        .expect("tools/list through the upstream");
    assert!(tools.iter().any(|t| t.name == "echo"));
    let args = json!({"hi": 1}).as_object().cloned();
    let mut params = rmcp::model::CallToolRequestParams::new("echo");
    if let Some(a) = args {
        params = params.with_arguments(a);
    }
    let r = client
        .call_tool(params)
        .await
        .expect("echo through a kept session");
    assert_eq!(r.is_error, Some(false));
    assert_eq!(record(&gate, &key).credits, 96);
    // The rmcp server itself never sees the caller's key, but does see its session.
    let r = client
        .call_tool(rmcp::model::CallToolRequestParams::new("headers"))
        .await
        .expect("headers tool");
    let names = r.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert!(names.contains("mcp-session-id"), "{names}");
    assert!(
        !names.contains("x-api-key") && !names.contains("authorization"),
        "{names}"
    );
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_is_a_jsonrpc_error_and_refunded_without_refund_on_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = HttpUpstream::new(HttpUpstreamConfig::new(format!(
        "http://127.0.0.1:{port}/mcp"
    )))
    .unwrap();
    // Nothing could be sent, so no tool ran: the call is free whatever refundOnFailure says.
    let (gate, key) = gate(PayGateConfig::default());
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream);
    let resp = svc
        .oneshot(post(&key, rpc(7, "tools/call", json!({"name": "echo"}))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v = message(&common::body_text(resp).await);
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["code"], -32603);
    assert_eq!(v["error"]["data"]["reason"], "upstream_unavailable");
    assert_eq!(record(&gate, &key).credits, 100, "refunded");
    assert!(HttpUpstream::new(HttpUpstreamConfig::new("ftp://example.com")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_reads_json_rpc_only_from_post() {
    let (url, _server) = spawn_demo(Mode::Json).await;
    let router = McpRouter::new("one server")
        .route(
            "a",
            boxed(HttpUpstream::managed(HttpUpstreamConfig::new(url)).unwrap()),
        )
        .unwrap();
    let body = rpc(1, "tools/call", json!({"name": "a:echo", "arguments": {}})).to_string();
    for method in ["PUT", "GET", "PATCH", "DELETE"] {
        let req = http::Request::builder()
            .method(method)
            .uri("http://localhost/mcp")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(resp.headers()["allow"], "POST");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_merges_prefixes_routes_and_prices_by_prefixed_name() {
    let (a_url, _a) = spawn_demo(Mode::Json).await;
    let (b_url, _b) = spawn_demo(Mode::Sse).await;
    let router = McpRouter::new("two servers")
        .route(
            "a",
            boxed(HttpUpstream::managed(HttpUpstreamConfig::new(a_url)).unwrap()),
        )
        .unwrap()
        .route(
            "b",
            boxed(HttpUpstream::managed(HttpUpstreamConfig::new(b_url)).unwrap()),
        )
        .unwrap();
    assert!(router
        .clone()
        .route(
            "a",
            boxed(HttpUpstream::new(HttpUpstreamConfig::new("http://x.example/mcp")).unwrap())
        )
        .is_err());
    let cfg = PayGateConfig::default()
        .with_tool_price("a:echo", 3)
        .with_refund_on_failure(true);
    let (gate, key) = gate(cfg);
    common::update(
        &gate,
        &key,
        paygate_mcp::KeyUpdate::SetAcl {
            allowed_tools: vec![],
            denied_tools: vec!["b:search".into()],
        },
    );
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(router);

    let init = svc
        .clone()
        .oneshot(post(
            &key,
            rpc(1, "initialize", json!({"protocolVersion": "2025-06-18"})),
        ))
        .await
        .unwrap();
    assert_eq!(
        message(&common::body_text(init).await)["result"]["serverInfo"]["name"],
        "two servers"
    );

    let list = message(
        &common::body_text(
            svc.clone()
                .oneshot(post(&key, rpc(2, "tools/list", json!({}))))
                .await
                .unwrap(),
        )
        .await,
    );
    let names: Vec<String> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    for n in ["a:echo", "a:search", "a:fail", "b:echo", "b:fail"] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    assert!(
        !names.contains(&"b:search".to_string()),
        "the ACL filters prefixed names"
    );
    let a_echo = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a:echo")
        .unwrap();
    assert_eq!(a_echo["_pricing"]["creditsPerCall"], 3);

    let call = |id, name: &str| {
        post(
            &key,
            rpc(
                id,
                "tools/call",
                json!({"name": name, "arguments": {"x": 1}}),
            ),
        )
    };
    let v =
        message(&common::body_text(svc.clone().oneshot(call(3, "a:echo")).await.unwrap()).await);
    assert_eq!(v["result"]["content"][0]["text"], "{\"x\":1}");
    assert_eq!(record(&gate, &key).credits, 97);
    let v =
        message(&common::body_text(svc.clone().oneshot(call(4, "b:echo")).await.unwrap()).await);
    assert_eq!(v["id"], 4);
    assert_eq!(record(&gate, &key).credits, 96);
    let v =
        message(&common::body_text(svc.clone().oneshot(call(5, "b:fail")).await.unwrap()).await);
    assert!(v["error"].is_object());
    assert_eq!(
        record(&gate, &key).credits,
        96,
        "failures behind the router are refunded"
    );
    let v =
        message(&common::body_text(svc.clone().oneshot(call(6, "c:echo")).await.unwrap()).await);
    assert_eq!(v["error"]["code"], -32602);
    let v = message(&common::body_text(svc.oneshot(call(7, "b:search")).await.unwrap()).await);
    assert_eq!(v["error"]["data"]["reason"], "tool_denied");
}
