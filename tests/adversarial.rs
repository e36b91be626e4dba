//! Hostile and malformed requests against the layers, in process. The downstream counts
//! every request it receives: nothing may reach it ungated.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use paygate_mcp::{
    block_on, parse_ip_entry, ClientAddr, Gate, KeyUpdate, MemoryKeyStore, PayGateConfig,
    PayGateLayer,
};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A downstream that answers every request with a success for its id, and counts them.
#[derive(Clone)]
struct Downstream {
    calls: Arc<AtomicUsize>,
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = Result<T, Infallible>> + Send>>;

impl Service<Request<Full<Bytes>>> for Downstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let request = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            let result = if request["method"] == "tools/list" {
                json!({"tools": [{"name": "echo"}, {"name": "search"}]})
            } else {
                json!({"content": [], "isError": false})
            };
            let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
            let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        })
    }
}

/// A request body that arrives in chunks, with no declared length.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

struct Harness {
    gate: Arc<Gate<MemoryKeyStore>>,
    calls: Arc<AtomicUsize>,
    key: String,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> i64 {
        self.body["error"]["code"].as_i64().unwrap_or(0)
    }
    fn reason(&self) -> &str {
        self.body["error"]["data"]["reason"].as_str().unwrap_or("")
    }
}

impl Harness {
    fn new(cfg: PayGateConfig) -> Self {
        let gate = Arc::new(Gate::new(cfg).unwrap());
        let key = block_on(gate.create_key("k", 100)).unwrap();
        Self {
            gate,
            calls: Arc::new(AtomicUsize::new(0)),
            key,
        }
    }

    fn downstream_calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn send<B>(&self, req: Request<B>) -> Answer
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let svc = ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(self.gate.clone()))
            .service(Downstream {
                calls: self.calls.clone(),
            });
        let resp = svc.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A POST with the key and `body`, after `extra` adds headers or extensions.
    async fn post_with(
        &self,
        body: impl Into<Bytes>,
        extra: impl FnOnce(http::request::Builder) -> http::request::Builder,
    ) -> Answer {
        let builder = Request::post("http://localhost/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        self.send(extra(builder).body(Full::new(body.into())).unwrap())
            .await
    }

    async fn post(&self, body: impl Into<Bytes>) -> Answer {
        let key = self.key.clone();
        self.post_with(body, |b| b.header("x-api-key", key)).await
    }
}

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).to_string()
}

#[tokio::test]
async fn oversized_bodies_get_413_and_never_reach_downstream() {
    let h = Harness::new(PayGateConfig::default().with_max_body_bytes(1024));
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"x":"{}"}}}}}}"#,
        "a".repeat(2000)
    );
    let a = h.post(big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a Content-Length, the limit holds while reading.
    let chunks = big
        .as_bytes()
        .chunks(100)
        .map(Bytes::copy_from_slice)
        .collect();
    let streamed = Request::post("http://localhost/mcp")
        .header("x-api-key", &h.key)
        .body(Chunked(chunks))
        .unwrap();
    assert_eq!(h.send(streamed).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // A lying Content-Length is refused before reading.
    let lying = h
        .post_with(call("echo"), |b| b.header("content-length", "999999999"))
        .await;
    assert_eq!(lying.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.downstream_calls(), 0);
    assert_eq!(h.gate.meter().len(), 0, "nothing was even evaluated");
}

#[tokio::test]
async fn malformed_requests_are_refused_before_the_gate() {
    let h = Harness::new(PayGateConfig::default());
    let cases: [(&str, StatusCode, i64); 9] = [
        ("not json at all", StatusCode::BAD_REQUEST, -32700),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call""#,
            StatusCode::BAD_REQUEST,
            -32700,
        ),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            r#"{"id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"admin"}}"#,
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"echo"}}"#,
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]"#,
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            StatusCode::OK,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":42}}"#,
            StatusCode::OK,
            -32602,
        ),
    ];
    for (body, status, code) in cases {
        let a = h.post(body).await;
        assert_eq!((a.status, a.code()), (status, code), "{body}");
    }
    assert_eq!(h.downstream_calls(), 0);
    let rec = common::record(&h.gate, &h.key);
    assert_eq!(rec.credits, 100);
}

#[tokio::test]
async fn method_casing_and_padding_cannot_dodge_the_gate() {
    let h = Harness::new(PayGateConfig::default());
    for method in ["Tools/Call", "TOOLS/CALL", " tools/call", "tools/call\n"] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "echo"}})
            .to_string();
        let a = h.post(body.clone()).await;
        assert_eq!(a.code(), -32600, "{method:?}");
        let anonymous = h.post_with(body, |b| b).await;
        assert!(anonymous.code() != 0, "{method:?}");
    }
    // Other non-free methods need a valid key even though they are not billed.
    let read =
        json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x"}})
            .to_string();
    let anonymous = h.post_with(read.clone(), |b| b).await;
    assert_eq!(anonymous.reason(), "missing_api_key");
    let forged = h
        .post_with(read.clone(), |b| {
            b.header("x-api-key", "pg_forged_key_0000000000")
        })
        .await;
    assert_eq!(forged.reason(), "invalid_api_key");
    assert_eq!(h.downstream_calls(), 0);
    assert_eq!(h.post(read).await.status, StatusCode::OK);
    assert_eq!(h.downstream_calls(), 1);
    assert_eq!(common::record(&h.gate, &h.key).credits, 100);
}

#[tokio::test]
async fn empty_foreign_and_garbage_keys_are_refused() {
    let h = Harness::new(PayGateConfig::default());
    let a = h
        .post_with(call("echo"), |b| b.header("x-api-key", ""))
        .await;
    assert_eq!((a.code(), a.reason()), (-32002, "missing_api_key"));
    let a = h
        .post_with(call("echo"), |b| b.header("x-api-key", "   "))
        .await;
    assert_eq!(a.reason(), "missing_api_key");
    // The gateway's admin key (or any secret that is not an API key) is just an unknown key.
    let admin = paygate_mcp::generate_key()
        .unwrap()
        .replace("pg_", "admin_");
    let a = h
        .post_with(call("echo"), |b| b.header("x-api-key", admin))
        .await;
    assert_eq!(a.reason(), "invalid_api_key");
    let a = h
        .post_with(call("echo"), |b| {
            b.header(
                "x-api-key",
                http::HeaderValue::from_bytes(b"pg_\xff\xfe").unwrap(),
            )
        })
        .await;
    assert_eq!(a.reason(), "invalid_api_key");
    let a = h
        .post_with(call("echo"), |b| {
            b.header("authorization", "Basic dXNlcjpwYXNz")
        })
        .await;
    assert_eq!(a.reason(), "missing_api_key");
    assert_eq!(h.downstream_calls(), 0);
    // A bearer token is the key by default.
    let key = h.key.clone();
    let a = h
        .post_with(call("echo"), |b| {
            b.header("authorization", format!("Bearer {key}"))
        })
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.get("result").is_some());
    assert_eq!(h.downstream_calls(), 1);
}

#[tokio::test]
async fn spoofed_forwarded_for_never_satisfies_an_allowlist() {
    let h = Harness::new(PayGateConfig::default());
    common::update(
        &h.gate,
        &h.key,
        KeyUpdate::SetIpAllowlist(vec![parse_ip_entry("10.0.0.7").unwrap()]),
    );
    let key = h.key.clone();
    let peer: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("x-forwarded-for", "10.0.0.7")
                .extension(ClientAddr(peer))
        })
        .await;
    assert_eq!((a.code(), a.reason()), (-32002, "ip_not_allowed"));
    // No peer address at all: still refused.
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("x-forwarded-for", "10.0.0.7")
        })
        .await;
    assert_eq!(a.reason(), "ip_not_allowed");
    let ok: SocketAddr = "10.0.0.7:1".parse().unwrap();
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone()).extension(ClientAddr(ok))
        })
        .await;
    assert!(a.body.get("result").is_some());
    assert_eq!(h.downstream_calls(), 1);
}

#[tokio::test]
async fn trusted_proxy_hops_pick_the_right_forwarded_address() {
    let h = Harness::new(PayGateConfig::default().with_trusted_proxy_hops(1));
    common::update(
        &h.gate,
        &h.key,
        KeyUpdate::SetIpAllowlist(vec![parse_ip_entry("10.0.0.7").unwrap()]),
    );
    let key = h.key.clone();
    let proxy: SocketAddr = "192.0.2.1:443".parse().unwrap();
    // The client put 10.0.0.7 first to spoof; our proxy appended the real address.
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("x-forwarded-for", "10.0.0.7, 198.51.100.4")
                .extension(ClientAddr(proxy))
        })
        .await;
    assert_eq!(a.reason(), "ip_not_allowed");
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("x-forwarded-for", "1.2.3.4, 10.0.0.7")
                .extension(ClientAddr(proxy))
        })
        .await;
    assert!(a.body.get("result").is_some(), "{:?}", a.body);
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("x-forwarded-for", "garbage, 10.0.0.7")
        })
        .await;
    assert_eq!(
        a.reason(),
        "ip_not_allowed",
        "an unparsable chain trusts nothing"
    );
}

#[tokio::test]
async fn mcp_headers_must_agree_with_the_body() {
    let h = Harness::new(PayGateConfig::default());
    let key = h.key.clone();
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("mcp-method", "tools/list")
        })
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, -32600));
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("mcp-method", "tools/call")
                .header("mcp-name", "search")
        })
        .await;
    assert_eq!(a.code(), -32600);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let a = h
        .post_with(list, |b| b.header("mcp-method", "tools/call"))
        .await;
    assert_eq!(a.code(), -32600);
    assert_eq!(h.downstream_calls(), 0);
    assert_eq!(common::record(&h.gate, &h.key).credits, 100);
    let a = h
        .post_with(call("echo"), |b| {
            b.header("x-api-key", key.clone())
                .header("mcp-method", "tools/call")
                .header("mcp-name", "echo")
        })
        .await;
    assert!(a.body.get("result").is_some());
}

#[tokio::test]
async fn headers_on_allowed_and_denied_calls() {
    let h = Harness::new(
        PayGateConfig::default()
            .with_rate_limit(2)
            .with_tool_price("echo", 10),
    );
    let a = h.post(call("echo")).await;
    assert_eq!(a.headers["x-credits-remaining"], "90");
    assert_eq!(a.headers["x-ratelimit-limit"], "2");
    assert_eq!(a.headers["x-ratelimit-remaining"], "1");
    assert_eq!(a.headers["x-ratelimit-reset"], "60");
    let expose = a.headers["access-control-expose-headers"].to_str().unwrap();
    for h in [
        "x-credits-remaining",
        "x-ratelimit-remaining",
        "mcp-session-id",
    ] {
        assert!(expose.contains(h), "{h}");
    }
    h.post(call("echo")).await;
    let limited = h.post(call("echo")).await;
    assert_eq!(limited.status, StatusCode::OK);
    assert_eq!(limited.code(), -32001);
    assert_eq!(limited.headers["retry-after"], "60");
    assert_eq!(limited.body["error"]["data"]["retryAfterSeconds"], 60);
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(limited.headers["x-credits-remaining"], "80");
    assert_eq!(limited.body["id"], 1);
}

#[tokio::test]
async fn tools_list_is_free_priced_and_filtered_by_the_keys_acl() {
    let h = Harness::new(PayGateConfig::default().with_tool_price("search", 7));
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}).to_string();
    let a = h.post_with(list.clone(), |b| b).await;
    assert_eq!(a.body["id"], 9);
    let tools = a.body["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 2, "no key: every tool, priced");
    assert_eq!(tools[1]["_pricing"]["creditsPerCall"], 7);
    assert_eq!(tools[0]["_pricing"]["pricingModel"], "flat");
    common::update(
        &h.gate,
        &h.key,
        KeyUpdate::SetAcl {
            allowed_tools: vec![],
            denied_tools: vec!["search".into()],
        },
    );
    let a = h.post(list).await;
    let names: Vec<_> = a.body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("echo")]);
    assert_eq!(h.downstream_calls(), 2);
    assert_eq!(h.gate.meter().len(), 0, "listing is not a gated call");
    assert_eq!(common::record(&h.gate, &h.key).credits, 100);
}
