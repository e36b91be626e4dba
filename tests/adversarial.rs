//! Hostile and malformed requests. The first tests drive the layers in process; the
//! families after them drive the whole gateway over HTTP on a loopback port (`/mcp` through
//! `PayGateLayer` over a downstream that counts every request, the admin API beside it), and
//! real state files on disk. Each family is a table of named cases; one test per family runs
//! them all and reports every failing case at once. Expectations are the SPEC's (§3, §4,
//! §4a, §7), not whatever the code happens to do.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

use common::gateway::{self as gw, Conn, IdEcho, Reply, Req, Resp, TestGateway, ADMIN_KEY};
use paygate_mcp::{KeyRecord, KeyStore, MemoryKeyStore as Store};

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
    // SPEC §4a: with hops > 0 the header is believed only from a configured proxy.
    let cfg = gw::config(json!({"trustedProxyHops": 1, "trustedProxies": ["192.0.2.1/32"]}))
        .expect("trustedProxyHops with trustedProxies is a valid config");
    let h = Harness::new(cfg);
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

// ---------------------------------------------------------------------------------------
// The whole gateway over HTTP: shared helpers.
// ---------------------------------------------------------------------------------------

/// Failing cases of one family, reported together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn case(&mut self, name: &str, outcome: Result<(), String>) {
        if let Err(why) = outcome {
            self.0.push(format!("{name}: {why}"));
        }
    }

    /// Every leak the gateway's answers showed during the family.
    fn leaks(&mut self, gw: &TestGateway) {
        for leak in gw.leaks() {
            self.0.push(format!("leak: {leak}"));
        }
    }

    fn assert_none(self, family: &str, cases: usize) {
        assert!(
            self.0.is_empty(),
            "{family}: {} of {cases} cases failed:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

/// A config with no rate limit, so a table of cases never trips one.
fn open_cfg() -> PayGateConfig {
    PayGateConfig::default().with_rate_limit(0)
}

async fn start(cfg: PayGateConfig) -> TestGateway {
    TestGateway::start(cfg).await.expect("gateway starts")
}

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

fn call_named(name: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
        .to_string()
        .into_bytes()
}

fn call_with_args(args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": args}})
        .to_string()
}

/// Credits charged to `key` since it held `start` (negative: credits were created).
async fn spent(gw: &TestGateway, key: &str, start: u64) -> i64 {
    start as i64 - gw.credits(key).await as i64
}

// ---------------------------------------------------------------------------------------
// Family: gating bypass (methods, paths, encodings, headers, framing).
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Nothing reached the downstream, nothing was charged, no result came back.
    Blocked,
    /// Blocked, with this JSON-RPC error code.
    Code(i64),
    /// Blocked with 405, or gated exactly like a POST (no key: `-32002`).
    RefusedOrGated,
    /// Blocked, or forwarded once and charged once (gated like a POST).
    BlockedOrCharged,
    /// Forwarded once, charged once to the key, a result came back.
    Charged,
    /// Forwarded once, not charged (an unbilled method), a result came back.
    Forwarded,
}

#[derive(Clone, Copy)]
enum BodySpec {
    Text(&'static str),
    Gen(fn() -> Vec<u8>),
}

struct Probe {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    body: BodySpec,
    /// `{key}`, `{key2}` and `{admin}` stand for the case's keys and the admin key; a value
    /// starting with `<ff>` starts with the byte 0xFF. A header named here replaces the
    /// default `Content-Type`/`Accept`.
    headers: &'static [(&'static str, &'static str)],
    /// Send `X-API-Key: {key}`.
    key: bool,
    expect: Expect,
}

const fn probe(
    name: &'static str,
    method: &'static str,
    target: &'static str,
    body: BodySpec,
    headers: &'static [(&'static str, &'static str)],
    key: bool,
    expect: Expect,
) -> Probe {
    Probe {
        name,
        method,
        target,
        body,
        headers,
        key,
        expect,
    }
}

use BodySpec::{Gen, Text};
use Expect::{Blocked, BlockedOrCharged, Charged, Code, Forwarded, RefusedOrGated};

/// Non-POST methods carrying a `tools/call` body.
const METHOD_PROBES: &[Probe] = &[
    probe("PUT", "PUT", "/mcp", Text(CALL), &[], false, RefusedOrGated),
    probe(
        "PATCH",
        "PATCH",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe(
        "DELETE",
        "DELETE",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe("GET", "GET", "/mcp", Text(CALL), &[], false, RefusedOrGated),
    probe(
        "OPTIONS",
        "OPTIONS",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe(
        "PROPFIND",
        "PROPFIND",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe("FOO", "FOO", "/mcp", Text(CALL), &[], false, RefusedOrGated),
    probe(
        "lowercase post",
        "post",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe(
        "mixed-case Post",
        "Post",
        "/mcp",
        Text(CALL),
        &[],
        false,
        RefusedOrGated,
    ),
    probe("TRACE", "TRACE", "/mcp", Text(CALL), &[], false, Blocked),
    probe("HEAD", "HEAD", "/mcp", Text(CALL), &[], false, Blocked),
    probe(
        "PUT with key",
        "PUT",
        "/mcp",
        Text(CALL),
        &[],
        true,
        BlockedOrCharged,
    ),
    probe(
        "PATCH with key",
        "PATCH",
        "/mcp",
        Text(CALL),
        &[],
        true,
        BlockedOrCharged,
    ),
    probe(
        "DELETE with key",
        "DELETE",
        "/mcp",
        Text(CALL),
        &[],
        true,
        BlockedOrCharged,
    ),
    probe(
        "GET with key",
        "GET",
        "/mcp",
        Text(CALL),
        &[],
        true,
        BlockedOrCharged,
    ),
    probe(
        "OPTIONS with key",
        "OPTIONS",
        "/mcp",
        Text(CALL),
        &[],
        true,
        BlockedOrCharged,
    ),
];

/// Spellings of the path, keyless.
const PATH_PROBES: &[Probe] = &[
    probe(
        "trailing slash",
        "POST",
        "/mcp/",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "double trailing slash",
        "POST",
        "/mcp//",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "leading double slash",
        "POST",
        "//mcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "upper case",
        "POST",
        "/MCP",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "mixed case",
        "POST",
        "/Mcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "dot segment",
        "POST",
        "/./mcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "dot-dot segment",
        "POST",
        "/x/../mcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "percent-encoded m",
        "POST",
        "/%6dcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "encoded slash",
        "POST",
        "/mcp%2f",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "query string",
        "POST",
        "/mcp?x=1",
        Text(CALL),
        &[],
        false,
        Code(-32002),
    ),
    probe(
        "matrix parameter",
        "POST",
        "/mcp;a=1",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "sub path",
        "POST",
        "/mcp/x",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe(
        "absolute form",
        "POST",
        "http://127.0.0.1/mcp",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
    probe("admin root", "POST", "/", Text(CALL), &[], false, Blocked),
    probe(
        "admin keys path",
        "POST",
        "/keys",
        Text(CALL),
        &[],
        false,
        Blocked,
    ),
];

fn bom_call() -> Vec<u8> {
    [&[0xEF, 0xBB, 0xBF][..], CALL.as_bytes()].concat()
}
fn utf16_call() -> Vec<u8> {
    CALL.encode_utf16().flat_map(u16::to_le_bytes).collect()
}
fn deep_array() -> Vec<u8> {
    "[".repeat(60_000).into_bytes()
}
fn deep_arguments() -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"a":{}1{}}}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    )
    .into_bytes()
}
fn gzip_magic() -> Vec<u8> {
    [
        &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3][..],
        CALL.as_bytes(),
    ]
    .concat()
}
fn name_257() -> Vec<u8> {
    call_named(&"a".repeat(257))
}
fn name_256() -> Vec<u8> {
    call_named(&"a".repeat(256))
}
fn name_multibyte_258() -> Vec<u8> {
    call_named(&"\u{20ac}".repeat(86))
}
fn method_1kb() -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "x".repeat(1024), "params": {"name": "echo"}})
        .to_string()
        .into_bytes()
}

/// Bodies, encodings and JSON tricks.
const BODY_PROBES: &[Probe] = &[
    probe("utf-8 BOM", "POST", "/mcp", Gen(bom_call), &[], false, Blocked),
    probe("utf-16le body", "POST", "/mcp", Gen(utf16_call), &[], false, Blocked),
    probe("escaped slash in method", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"echo"}}"#), &[], false, Code(-32002)),
    probe("escaped slash in method, keyed", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"echo"}}"#), &[], true, Charged),
    probe("unicode escape in method", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"\u0074ools/call","params":{"name":"echo"}}"#), &[], false, Code(-32002)),
    probe("unicode escape in method, keyed", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"\u0074ools/call","params":{"name":"echo"}}"#), &[], true, Charged),
    probe("NUL after method", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call\u0000","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("fullwidth letter in method", "POST", "/mcp", Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/\u{ff43}all\",\"params\":{\"name\":\"echo\"}}"), &[], false, Blocked),
    probe("zero-width space in method", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/\u200bcall","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("method trailing space", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"echo"}}"#), &[], false, Code(-32600)),
    probe("method leading tab", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"\ttools/call","params":{"name":"echo"}}"#), &[], false, Code(-32600)),
    probe("method upper case, keyed", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/CALL","params":{"name":"echo"}}"#), &[], true, Code(-32600)),
    probe("method is a number", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":7,"params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("method is empty", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("method of 1 KB", "POST", "/mcp", Gen(method_1kb), &[], false, Blocked),
    probe("params is an array", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#), &[], false, Blocked),
    probe("name is an object", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"x":1}}}"#), &[], false, Code(-32602)),
    probe("name is null", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}"#), &[], true, Code(-32602)),
    probe("tool name of 257 bytes", "POST", "/mcp", Gen(name_257), &[], false, Code(-32602)),
    probe("tool name of 257 bytes, keyed", "POST", "/mcp", Gen(name_257), &[], true, Code(-32602)),
    probe("tool name of 258 bytes in 86 chars", "POST", "/mcp", Gen(name_multibyte_258), &[], false, Code(-32602)),
    probe("tool name of 256 bytes is gated", "POST", "/mcp", Gen(name_256), &[], false, Code(-32002)),
    probe("batch of one call", "POST", "/mcp", Text(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]"#), &[], false, Blocked),
    probe("nested batch", "POST", "/mcp", Text(r#"[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]]"#), &[], false, Blocked),
    probe("batch free then call", "POST", "/mcp", Text(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]"#), &[], false, Blocked),
    probe("empty batch", "POST", "/mcp", Text("[]"), &[], false, Blocked),
    probe("call as notification", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("call with null id", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("60k nested arrays", "POST", "/mcp", Gen(deep_array), &[], false, Code(-32700)),
    probe("10k nested arguments", "POST", "/mcp", Gen(deep_arguments), &[], false, Blocked),
    probe("top-level string", "POST", "/mcp", Text(r#""tools/call""#), &[], false, Blocked),
    probe("top-level null", "POST", "/mcp", Text("null"), &[], false, Blocked),
    probe("gzip content encoding", "POST", "/mcp", Gen(gzip_magic), &[("content-encoding", "gzip")], false, Blocked),
    probe("jsonrpc is a number", "POST", "/mcp", Text(r#"{"jsonrpc":2.0,"id":1,"method":"tools/call","params":{"name":"echo"}}"#), &[], true, Code(-32600)),
    probe("comment in JSON", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0",/*x*/"id":1,"method":"tools/call","params":{"name":"echo"}}"#), &[], false, Code(-32700)),
    probe("trailing comma", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},}"#), &[], false, Code(-32700)),
    probe("single quotes", "POST", "/mcp", Text("{'jsonrpc':'2.0','id':1,'method':'tools/call','params':{'name':'echo'}}"), &[], false, Code(-32700)),
    probe("NaN id", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":NaN,"method":"tools/call","params":{"name":"echo"}}"#), &[], false, Code(-32700)),
    probe("trailing garbage", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}} x"#), &[], false, Code(-32700)),
    probe("ping then call in one body", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#), &[], false, Blocked),
    probe("two calls in one body, keyed", "POST", "/mcp", Text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#), &[], true, Blocked),
    probe("leading whitespace", "POST", "/mcp", Text("\n\t {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"}}"), &[], false, Code(-32002)),
    probe("text/plain content type", "POST", "/mcp", Text(CALL), &[("content-type", "text/plain")], false, Blocked),
    probe("form content type", "POST", "/mcp", Text(CALL), &[("content-type", "application/x-www-form-urlencoded")], false, Blocked),
];

/// Header tricks: duplicates, disagreement, where the key comes from.
const HEADER_PROBES: &[Probe] = &[
    probe(
        "duplicate Mcp-Method call then list",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "tools/call"), ("mcp-method", "tools/list")],
        true,
        Code(-32600),
    ),
    probe(
        "duplicate Mcp-Method list then call",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "tools/list"), ("mcp-method", "tools/call")],
        true,
        Code(-32600),
    ),
    probe(
        "duplicate Mcp-Method same value",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "tools/call"), ("mcp-method", "tools/call")],
        true,
        Code(-32600),
    ),
    probe(
        "duplicate Mcp-Name echo then search",
        "POST",
        "/mcp",
        Text(CALL),
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("mcp-name", "search"),
        ],
        true,
        Code(-32600),
    ),
    probe(
        "duplicate Mcp-Name same value",
        "POST",
        "/mcp",
        Text(CALL),
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("mcp-name", "echo"),
        ],
        true,
        Code(-32600),
    ),
    probe(
        "duplicate X-API-Key valid then bogus",
        "POST",
        "/mcp",
        Text(CALL),
        &[
            ("x-api-key", "{key}"),
            ("x-api-key", "pg_bogus_bogus_bogus_bogus"),
        ],
        false,
        Blocked,
    ),
    probe(
        "duplicate X-API-Key bogus then valid",
        "POST",
        "/mcp",
        Text(CALL),
        &[
            ("x-api-key", "pg_bogus_bogus_bogus_bogus"),
            ("x-api-key", "{key}"),
        ],
        false,
        Blocked,
    ),
    probe(
        "duplicate X-API-Key same value",
        "POST",
        "/mcp",
        Text(CALL),
        &[("x-api-key", "{key}"), ("x-api-key", "{key}")],
        false,
        Blocked,
    ),
    probe(
        "duplicate X-API-Key two valid keys",
        "POST",
        "/mcp",
        Text(CALL),
        &[("x-api-key", "{key}"), ("x-api-key", "{key2}")],
        false,
        Blocked,
    ),
    probe(
        "X-API-Key comma-joined",
        "POST",
        "/mcp",
        Text(CALL),
        &[("x-api-key", "{key}, {key}")],
        false,
        Blocked,
    ),
    probe(
        "Mcp-Method other case",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "Tools/Call")],
        true,
        Code(-32600),
    ),
    probe(
        "Mcp-Name other case",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "tools/call"), ("mcp-name", "ECHO")],
        true,
        Code(-32600),
    ),
    probe(
        "Mcp-Name not UTF-8",
        "POST",
        "/mcp",
        Text(CALL),
        &[("mcp-method", "tools/call"), ("mcp-name", "<ff>echo")],
        true,
        Code(-32600),
    ),
    probe(
        "Mcp-Method call on a free ping",
        "POST",
        "/mcp",
        Text(PING),
        &[("mcp-method", "tools/call")],
        false,
        Code(-32600),
    ),
    probe(
        "Mcp-Method matching a free ping",
        "POST",
        "/mcp",
        Text(PING),
        &[("mcp-method", "ping")],
        false,
        Forwarded,
    ),
    probe(
        "Mcp-Name = uri on resources/read",
        "POST",
        "/mcp",
        Text(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a.txt"}}"#,
        ),
        &[
            ("mcp-method", "resources/read"),
            ("mcp-name", "file:///a.txt"),
        ],
        true,
        Forwarded,
    ),
    probe(
        "Mcp-Name other than uri on resources/read",
        "POST",
        "/mcp",
        Text(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a.txt"}}"#,
        ),
        &[
            ("mcp-method", "resources/read"),
            ("mcp-name", "file:///b.txt"),
        ],
        true,
        Code(-32600),
    ),
    probe(
        "Mcp-Name = name on prompts/get",
        "POST",
        "/mcp",
        Text(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}"#),
        &[("mcp-method", "prompts/get"), ("mcp-name", "greet")],
        true,
        Forwarded,
    ),
    probe(
        "Mcp-Name other than name on prompts/get",
        "POST",
        "/mcp",
        Text(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"greet"}}"#),
        &[("mcp-method", "prompts/get"), ("mcp-name", "other")],
        true,
        Code(-32600),
    ),
    probe(
        "resources/read without Mcp-Name",
        "POST",
        "/mcp",
        Text(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a.txt"}}"#,
        ),
        &[("mcp-method", "resources/read")],
        true,
        Forwarded,
    ),
    probe(
        "X-API-Key pays, not the bearer",
        "POST",
        "/mcp",
        Text(CALL),
        &[("x-api-key", "{key}"), ("authorization", "Bearer {key2}")],
        false,
        Charged,
    ),
    probe(
        "bearer token is the admin key",
        "POST",
        "/mcp",
        Text(CALL),
        &[("authorization", "Bearer {admin}")],
        false,
        Code(-32002),
    ),
    probe(
        "key in Basic auth",
        "POST",
        "/mcp",
        Text(CALL),
        &[("authorization", "Basic {key}")],
        false,
        Code(-32002),
    ),
    probe(
        "key in a cookie",
        "POST",
        "/mcp",
        Text(CALL),
        &[("cookie", "x-api-key={key}")],
        false,
        Code(-32002),
    ),
    probe(
        "key in X-Api-Key-Override",
        "POST",
        "/mcp",
        Text(CALL),
        &[("x-api-key-override", "{key}")],
        false,
        Code(-32002),
    ),
];

fn header_value(v: &str, key: &str, key2: &str) -> Vec<u8> {
    let text = v
        .replace("{key2}", key2)
        .replace("{key}", key)
        .replace("{admin}", ADMIN_KEY);
    match text.strip_prefix("<ff>") {
        Some(rest) => [&[0xFF][..], rest.as_bytes()].concat(),
        None => text.into_bytes(),
    }
}

async fn run_probe(gw: &TestGateway, p: &Probe) -> Result<(), String> {
    let (key, key2) = (gw.key(100).await, gw.key(100).await);
    let body = match p.body {
        Text(s) => s.as_bytes().to_vec(),
        Gen(f) => f(),
    };
    let mut req = Req::new(p.method, p.target, body)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (name, _) in p.headers {
        if name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("accept") {
            req = req.without(name);
        }
    }
    for (name, value) in p.headers {
        req = req.header(name, header_value(value, &key, &key2));
    }
    if p.key {
        req = req.header("x-api-key", &key);
    }
    let down0 = gw.downstream_calls();
    let resp = gw.send(req).await;
    let down = gw.downstream_calls() - down0;
    let (s1, s2) = (spent(gw, &key, 100).await, spent(gw, &key2, 100).await);
    let blocked = down == 0 && s1 == 0 && s2 == 0 && !resp.has_result();
    let charged = down == 1 && s1 == 1 && s2 == 0 && resp.has_result();
    let ok = match p.expect {
        Blocked => blocked,
        Code(c) => blocked && resp.code() == c,
        RefusedOrGated => blocked && (resp.status == 405 || resp.code() == -32002),
        BlockedOrCharged => blocked || charged,
        Charged => charged,
        Forwarded => down == 1 && s1 == 0 && s2 == 0 && resp.has_result(),
    };
    ensure(ok, || {
        format!(
            "expected {:?}; downstream +{down}, charged {s1} (other key {s2}), answer {}",
            p.expect,
            resp.brief()
        )
    })
}

/// Context of a raw framing case.
struct Fx {
    key: String,
    host: String,
    limit: usize,
}

/// What a raw framing case observed.
struct FxOut {
    resps: Vec<Resp>,
    down: usize,
    spent: i64,
}

struct FramingCase {
    name: &'static str,
    first: fn(&Fx) -> Vec<u8>,
    /// Written after the first response arrives (keep-alive cases).
    then: Option<fn(&Fx) -> Vec<u8>>,
    /// Close the sending half after writing.
    shutdown: bool,
    /// Responses to wait for.
    read: usize,
    check: fn(&FxOut) -> Result<(), String>,
}

fn head(fx: &Fx, start: &str, headers: &str) -> String {
    format!("{start}\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{headers}", fx.host)
}

fn post(fx: &Fx, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head(fx, "POST /mcp HTTP/1.1", headers).into_bytes();
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn chunks(body: &[u8], size: usize, ext: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn post_chunked(fx: &Fx, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head(fx, "POST /mcp HTTP/1.1", headers).into_bytes();
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    out.extend_from_slice(&chunks(body, 17, ""));
    out
}

fn keyed(fx: &Fx) -> String {
    format!("x-api-key: {}\r\n", fx.key)
}

fn big_call(fx: &Fx) -> Vec<u8> {
    call_with_args(json!({"pad": "a".repeat(fx.limit + 10)})).into_bytes()
}

fn blocked(o: &FxOut) -> Result<(), String> {
    ensure(
        o.down == 0 && o.spent == 0 && !o.resps.iter().any(Resp::has_result),
        || describe(o),
    )
}

fn describe(o: &FxOut) -> String {
    let answers: Vec<String> = o.resps.iter().map(Resp::brief).collect();
    format!(
        "downstream +{}, charged {}, answers {answers:?}",
        o.down, o.spent
    )
}

fn closes(r: Option<&Resp>) -> bool {
    r.and_then(|r| r.header("connection"))
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
}

fn framing_cases() -> Vec<FramingCase> {
    vec![
        FramingCase {
            name: "chunked call without key",
            first: |fx| post_chunked(fx, "", CALL.as_bytes()),
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.code() == -32002),
                    || describe(o),
                ))
            },
        },
        FramingCase {
            name: "chunked call with key is charged once",
            first: |fx| post_chunked(fx, &keyed(fx), CALL.as_bytes()),
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                ensure(
                    o.down == 1 && o.spent == 1 && o.resps.first().is_some_and(Resp::has_result),
                    || describe(o),
                )
            },
        },
        FramingCase {
            name: "chunk extensions without key",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "transfer-encoding: chunked\r\n\r\n",
                )
                .into_bytes();
                out.extend_from_slice(&chunks(CALL.as_bytes(), 9, ";ext=\"x\""));
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "API key in a chunked trailer",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "transfer-encoding: chunked\r\ntrailer: x-api-key\r\n\r\n",
                )
                .into_bytes();
                let mut body = chunks(CALL.as_bytes(), 50, "");
                body.truncate(body.len() - 2);
                out.extend_from_slice(&body);
                out.extend_from_slice(format!("x-api-key: {}\r\n\r\n", fx.key).as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "Content-Length and Transfer-Encoding together",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                )
                .into_bytes();
                out.extend_from_slice(&chunks(CALL.as_bytes(), 20, ""));
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "CL.TE smuggles a keyless call behind a ping",
            first: |fx| {
                let smuggled = post(fx, "", CALL.as_bytes());
                let mut body = chunks(PING.as_bytes(), 64, "");
                body.extend_from_slice(&smuggled);
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!(
                        "content-length: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                        body.len()
                    ),
                )
                .into_bytes();
                out.extend_from_slice(&body);
                out
            },
            then: None,
            shutdown: false,
            read: 2,
            check: |o| ensure(o.down <= 1 && o.spent == 0, || describe(o)),
        },
        FramingCase {
            name: "two different Content-Length headers",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!(
                        "content-length: 10\r\ncontent-length: {}\r\n\r\n",
                        CALL.len()
                    ),
                )
                .into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "two different Content-Length headers, keyed",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!(
                        "{}content-length: {}\r\ncontent-length: 10\r\n\r\n",
                        keyed(fx),
                        CALL.len()
                    ),
                )
                .into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "Content-Length shorter than the body, keyed",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!("{}content-length: {}\r\n\r\n", keyed(fx), CALL.len() - 10),
                )
                .into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 2,
            check: blocked,
        },
        FramingCase {
            name: "Content-Length longer than the body, then EOF",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!("{}content-length: {}\r\n\r\n", keyed(fx), CALL.len() + 50),
                )
                .into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: true,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "negative Content-Length",
            first: |fx| {
                let mut out =
                    head(fx, "POST /mcp HTTP/1.1", "content-length: -1\r\n\r\n").into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "Transfer-Encoding identity",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "transfer-encoding: identity\r\n\r\n",
                )
                .into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: true,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "Transfer-Encoding gzip, chunked",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "transfer-encoding: gzip, chunked\r\n\r\n",
                )
                .into_bytes();
                out.extend_from_slice(&chunks(CALL.as_bytes(), 30, ""));
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "Transfer-Encoding CHUNKED upper case",
            first: |fx| {
                let mut out = head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    "transfer-encoding: CHUNKED\r\n\r\n",
                )
                .into_bytes();
                out.extend_from_slice(&chunks(CALL.as_bytes(), 30, ""));
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "obsolete line folding of X-API-Key",
            first: |fx| {
                post(
                    fx,
                    &format!("x-api-key:\r\n {}\r\n", fx.key),
                    CALL.as_bytes(),
                )
            },
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "space before the colon of X-API-Key",
            first: |fx| post(fx, &format!("x-api-key : {}\r\n", fx.key), CALL.as_bytes()),
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "two Host headers",
            first: |fx| post(fx, "host: evil.example\r\n", CALL.as_bytes()),
            then: None,
            shutdown: false,
            read: 1,
            check: blocked,
        },
        FramingCase {
            name: "pipelined keyed call then keyless call",
            first: |fx| {
                [
                    post(fx, &keyed(fx), CALL.as_bytes()),
                    post(fx, "", CALL.as_bytes()),
                ]
                .concat()
            },
            then: None,
            shutdown: false,
            read: 2,
            check: |o| {
                ensure(
                    o.down == 1
                        && o.spent == 1
                        && o.resps.len() == 2
                        && o.resps[0].has_result()
                        && o.resps[1].code() == -32002,
                    || describe(o),
                )
            },
        },
        FramingCase {
            name: "three pipelined keyless calls",
            first: |fx| {
                [
                    post(fx, "", CALL.as_bytes()),
                    post(fx, "", CALL.as_bytes()),
                    post(fx, "", CALL.as_bytes()),
                ]
                .concat()
            },
            then: None,
            shutdown: false,
            read: 3,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.len() == 3 && o.resps.iter().all(|r| r.code() == -32002),
                    || describe(o),
                ))
            },
        },
        FramingCase {
            name: "chunked ping then a pipelined keyless call",
            first: |fx| {
                [
                    post_chunked(fx, "", PING.as_bytes()),
                    post(fx, "", CALL.as_bytes()),
                ]
                .concat()
            },
            then: None,
            shutdown: false,
            read: 2,
            check: |o| {
                ensure(
                    o.down == 1
                        && o.spent == 0
                        && o.resps.len() == 2
                        && o.resps[1].code() == -32002,
                    || describe(o),
                )
            },
        },
        FramingCase {
            name: "HTTP/1.0 keyless call",
            first: |fx| {
                let mut out = format!("POST /mcp HTTP/1.0\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", fx.host, CALL.len()).into_bytes();
                out.extend_from_slice(CALL.as_bytes());
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.code() == -32002),
                    || describe(o),
                ))
            },
        },
        FramingCase {
            name: "oversized body answers 413 with Connection: close",
            first: |fx| post(fx, "", &big_call(fx)),
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.status == 413) && closes(o.resps.first()),
                    || format!("413 without Connection: close: {}", describe(o)),
                ))
            },
        },
        FramingCase {
            name: "oversized chunked body answers 413 with Connection: close",
            first: |fx| post_chunked(fx, "", &big_call(fx)),
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.status == 413) && closes(o.resps.first()),
                    || format!("413 without Connection: close: {}", describe(o)),
                ))
            },
        },
        FramingCase {
            name: "admin 401 before reading a body answers with Connection: close",
            first: |fx| {
                let body = br#"{"name":"x","credits":5}"#;
                let mut out = head(fx, "POST /keys HTTP/1.1", "").into_bytes();
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                ensure(
                    o.resps.first().is_some_and(|r| r.status == 401) && closes(o.resps.first()),
                    || format!("admin 401 without Connection: close: {}", describe(o)),
                )
            },
        },
        FramingCase {
            name: "admin 404 before reading a body answers with Connection: close",
            first: |fx| {
                let body = b"{}";
                let mut out = head(fx, "POST /no-such-endpoint HTTP/1.1", "").into_bytes();
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out
            },
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                ensure(
                    o.resps.first().is_some_and(|r| r.status == 404) && closes(o.resps.first()),
                    || format!("admin 404 without Connection: close: {}", describe(o)),
                )
            },
        },
        FramingCase {
            name: "keep-alive request after a 413 is not misread",
            first: |fx| post(fx, "", &big_call(fx)),
            then: Some(|fx| post(fx, "", PING.as_bytes())),
            shutdown: false,
            read: 2,
            check: |o| {
                let first_ok = o.resps.first().is_some_and(|r| r.status == 413);
                let second_ok = match o.resps.get(1) {
                    Some(r) => r.status == 200 && r.has_result(),
                    None => closes(o.resps.first()),
                };
                ensure(first_ok && second_ok, || describe(o))
            },
        },
        FramingCase {
            name: "Expect: 100-continue with an oversized length",
            first: |fx| {
                head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!(
                        "expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
                        fx.limit * 4
                    ),
                )
                .into_bytes()
            },
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.status == 413),
                    || describe(o),
                ))
            },
        },
        FramingCase {
            name: "oversized keyed call is not charged",
            first: |fx| post(fx, &keyed(fx), &big_call(fx)),
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.status == 413),
                    || describe(o),
                ))
            },
        },
        FramingCase {
            name: "Content-Length of 99999999999",
            first: |fx| {
                head(
                    fx,
                    "POST /mcp HTTP/1.1",
                    &format!("{}content-length: 99999999999\r\n\r\n", keyed(fx)),
                )
                .into_bytes()
            },
            then: None,
            shutdown: false,
            read: 1,
            check: |o| {
                blocked(o).and(ensure(
                    o.resps.first().is_some_and(|r| r.status == 413),
                    || describe(o),
                ))
            },
        },
    ]
}

async fn run_framing(gw: &TestGateway, case: &FramingCase) -> Result<(), String> {
    let key = gw.key(100).await;
    let fx = Fx {
        key: key.clone(),
        host: gw.host(),
        limit: 64 * 1024,
    };
    let down0 = gw.downstream_calls();
    let mut conn = Conn::open(gw.addr).await;
    let mut resps = Vec::new();
    conn.write(&(case.first)(&fx)).await;
    if case.shutdown {
        conn.shutdown_write().await;
    }
    let idle = std::time::Duration::from_secs(3);
    if let Some(then) = case.then {
        if let Some(r) = conn.read(false, idle).await {
            resps.push(r);
        }
        conn.write(&then(&fx)).await;
    }
    while resps.len() < case.read {
        match conn.read(false, idle).await {
            Some(r) => resps.push(r),
            None => break,
        }
    }
    for r in &resps {
        gw.scan(case.name, r);
    }
    let out = FxOut {
        resps,
        down: gw.downstream_calls() - down0,
        spent: spent(gw, &key, 100).await,
    };
    (case.check)(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_gating_bypass() {
    let gw = start(open_cfg().with_max_body_bytes(64 * 1024)).await;
    let mut f = Failures::default();
    let tables: [(&str, &[Probe]); 4] = [
        ("method", METHOD_PROBES),
        ("path", PATH_PROBES),
        ("body", BODY_PROBES),
        ("header", HEADER_PROBES),
    ];
    for (table, probes) in tables {
        for p in probes {
            f.case(&format!("{table}: {}", p.name), run_probe(&gw, p).await);
        }
    }
    let framing = framing_cases();
    for case in &framing {
        f.case(
            &format!("framing: {}", case.name),
            run_framing(&gw, case).await,
        );
    }
    // After all of it the gateway still serves a plain call.
    let key = gw.key(1).await;
    let a = gw.mcp(Some(&key), CALL).await;
    f.case(
        "gateway still serves after the barrage",
        ensure(a.has_result(), || a.brief()),
    );
    f.leaks(&gw);
    f.assert_none("gating bypass", gating_case_count());
}

fn gating_case_count() -> usize {
    METHOD_PROBES.len()
        + PATH_PROBES.len()
        + BODY_PROBES.len()
        + HEADER_PROBES.len()
        + framing_cases().len()
        + 1
}

// ---------------------------------------------------------------------------------------
// Family: id tricks. The downstream writes the client's id back verbatim, re-serialized
// through serde_json, or as the integer 1; none of that may refund a call that ran or skip
// the ACL filtering of `tools/list`.
// ---------------------------------------------------------------------------------------

/// `(name, id as sent, whether refusing it before charging is acceptable)`.
const IDS: &[(&str, &str, bool)] = &[
    ("1", "1", false),
    ("\"1\"", r#""1""#, false),
    ("\"\\u0031\"", r#""\u0031""#, false),
    ("1.0", "1.0", true),
    ("1e0", "1e0", true),
    ("1E0", "1E0", true),
    ("-0", "-0", true),
    ("10e-1", "10e-1", true),
    ("5.0E+0", "5.0E+0", true),
    ("0.1e1", "0.1e1", true),
    ("1.00000000000000000001", "1.00000000000000000001", true),
    ("2^53+1", "9007199254740993", true),
    ("2^64", "18446744073709551616", true),
    ("i64::MIN-1", "-9223372036854775809", true),
    ("1e-400", "1e-400", true),
    ("null", "null", true),
];

const ECHOES: [IdEcho; 3] = [IdEcho::Raw, IdEcho::Reserialized, IdEcho::One];

/// Ids the downstream answers as 1 inside an SSE stream.
const SSE_IDS: &[(&str, &str, bool)] = &[
    ("1.0", "1.0", true),
    ("1e0", "1e0", true),
    ("2^64", "18446744073709551616", true),
    ("\"1\"", r#""1""#, false),
];

/// Ids that are not JSON-RPC ids (or not JSON numbers a parser keeps).
const INVALID_IDS: &[(&str, &str)] = &[
    ("object", r#"{"a":1}"#),
    ("array", "[1]"),
    ("true", "true"),
    ("1e400", "1e400"),
];

#[derive(Debug, Clone, Copy)]
enum IdCheck {
    /// A call that ran is charged once and not refunded.
    NotRefunded,
    /// A key denied `search` never sees it in `tools/list`.
    AclFiltered,
}

struct IdCase {
    name: String,
    id: &'static str,
    may_refuse: bool,
    echo: IdEcho,
    reply: Reply,
    check: IdCheck,
}

fn id_cases() -> Vec<IdCase> {
    let mut cases = Vec::new();
    for check in [IdCheck::NotRefunded, IdCheck::AclFiltered] {
        for echo in ECHOES {
            for (name, id, may_refuse) in IDS {
                cases.push(IdCase {
                    name: format!("{check:?}, downstream {echo:?}, id {name}"),
                    id,
                    may_refuse: *may_refuse,
                    echo,
                    reply: Reply::Result,
                    check,
                });
            }
        }
        for (name, id, may_refuse) in SSE_IDS {
            cases.push(IdCase {
                name: format!("{check:?}, SSE downstream One, id {name}"),
                id,
                may_refuse: *may_refuse,
                echo: IdEcho::One,
                reply: Reply::Sse,
                check,
            });
        }
    }
    cases
}

fn refused_before_charging(resp: &Resp, down: usize, spent: i64) -> bool {
    down == 0 && spent == 0 && [-32600, -32700].contains(&resp.code())
}

async fn run_id_case(gw: &TestGateway, c: &IdCase) -> Result<(), String> {
    gw.set_echo(c.echo);
    gw.set_reply(c.reply);
    let key = gw
        .create(&json!({"name": "ids", "credits": 10, "deniedTools": ["search"]}))
        .await?;
    let down0 = gw.downstream_calls();
    let refunds0 = gw.tally.admin_count("billing.refund");
    match c.check {
        IdCheck::NotRefunded => {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo","arguments":{{"x":1}}}}}}"#,
                c.id
            );
            let resp = gw.mcp(Some(&key), &body).await;
            let down = gw.downstream_calls() - down0;
            let spent = spent(gw, &key, 10).await;
            if c.may_refuse && refused_before_charging(&resp, down, spent) {
                return Ok(());
            }
            let refunds = gw.tally.admin_count("billing.refund") - refunds0;
            ensure(
                resp.has_result() && down == 1 && spent == 1 && refunds == 0,
                || {
                    format!(
                        "the call ran (downstream +{down}) but charged {spent} with {refunds} refund(s); answer {}",
                        resp.brief()
                    )
                },
            )
        }
        IdCheck::AclFiltered => {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{},"method":"tools/list"}}"#, c.id);
            let resp = gw.mcp(Some(&key), &body).await;
            let down = gw.downstream_calls() - down0;
            if c.may_refuse && refused_before_charging(&resp, down, 0) {
                return Ok(());
            }
            let msg = resp.json();
            let tools = msg["result"]["tools"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
            let priced = tools.iter().all(|t| t.get("_pricing").is_some());
            ensure(names == ["echo"] && priced, || {
                format!(
                    "tools/list showed {names:?} (priced: {priced}); answer {}",
                    resp.brief()
                )
            })
        }
    }
}

async fn run_invalid_id(gw: &TestGateway, id: &str) -> Result<(), String> {
    gw.set_echo(IdEcho::Raw);
    gw.set_reply(Reply::Result);
    let key = gw.key(10).await;
    let down0 = gw.downstream_calls();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo"}}}}"#
    );
    let resp = gw.mcp(Some(&key), &body).await;
    let down = gw.downstream_calls() - down0;
    let spent = spent(gw, &key, 10).await;
    ensure(
        refused_before_charging(&resp, down, spent) && resp.status == 400,
        || {
            format!(
                "downstream +{down}, charged {spent}, answer {}",
                resp.brief()
            )
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_id_tricks() {
    let cfg = gw::config(json!({
        "globalRateLimitPerMin": 0,
        "refundOnFailure": true,
        "refundOnToolError": true,
    }))
    .expect("valid config");
    let gw = start(cfg).await;
    let mut f = Failures::default();
    let cases = id_cases();
    for c in &cases {
        f.case(&c.name, run_id_case(&gw, c).await);
    }
    for (name, id) in INVALID_IDS {
        f.case(&format!("invalid id {name}"), run_invalid_id(&gw, id).await);
    }
    f.leaks(&gw);
    f.assert_none("id tricks", id_case_count());
}

fn id_case_count() -> usize {
    id_cases().len() + INVALID_IDS.len()
}

// ---------------------------------------------------------------------------------------
// Family: refund abuse. A call no tool ran is never charged (SPEC §4a: a downstream 4xx is
// undone with or without refundOnFailure); a call that ran is never refunded, whatever its
// arguments or the shape of its answer; a refund never creates credits.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cfg {
    /// No refund flags.
    Plain,
    /// `refundOnFailure`.
    Refund,
    /// `refundOnFailure` and `refundOnToolError`.
    ToolErrors,
    /// No refund flags, a global quota of one call a day.
    Quota,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// An ordinary MCP client request.
    Normal,
    /// No `Accept` header.
    NoAccept,
    /// `Accept: text/html`.
    AcceptHtml,
    /// `Accept: application/json` only.
    AcceptJsonOnly,
    /// `Content-Type: text/plain`.
    TextPlain,
    /// No `Content-Type`.
    NoContentType,
    /// `Host: evil.example`.
    ForeignHost,
    /// Arguments holding a JSON-RPC error document as text.
    FakeErrorArgs,
    /// Arguments holding `isError: true`.
    IsErrorArgs,
    /// Arguments holding an SSE error event as text.
    SseEventArgs,
    /// A `tools/call` without an id.
    Notification,
    /// The tool priced at 5.
    Priced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Credits, totalSpent and totalCalls are exactly as before.
    Undone,
    /// Charged once, an answer delivered.
    Kept,
    /// Refused before forwarding, or forwarded and charged once (never free).
    NeverFree,
    /// Undone, and the next call (quota of 1, spending limit of 1) is still allowed.
    UndoneThenAllowed,
}

struct RefundCase {
    name: String,
    cfg: Cfg,
    reply: Reply,
    ask: Ask,
    outcome: Outcome,
}

const CLIENT_ERRORS: [u16; 11] = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429];

fn refund_cases() -> Vec<RefundCase> {
    let case = |name: String, cfg, reply, ask, outcome| RefundCase {
        name,
        cfg,
        reply,
        ask,
        outcome,
    };
    let mut v = Vec::new();
    for status in CLIENT_ERRORS {
        v.push(case(
            format!("downstream {status} without refundOnFailure"),
            Cfg::Plain,
            Reply::Status(status),
            Ask::Normal,
            Outcome::Undone,
        ));
        v.push(case(
            format!("downstream {status} with refundOnFailure"),
            Cfg::Refund,
            Reply::Status(status),
            Ask::Normal,
            Outcome::Undone,
        ));
    }
    for status in [500, 502, 503, 504] {
        v.push(case(
            format!("downstream {status} with refundOnFailure"),
            Cfg::Refund,
            Reply::Status(status),
            Ask::Normal,
            Outcome::Undone,
        ));
    }
    for (name, ask) in [
        ("no Accept header (406)", Ask::NoAccept),
        ("Accept: text/html (406)", Ask::AcceptHtml),
        ("Accept without SSE (406)", Ask::AcceptJsonOnly),
        ("Content-Type: text/plain (415)", Ask::TextPlain),
        ("no Content-Type (415)", Ask::NoContentType),
        ("foreign Host (403)", Ask::ForeignHost),
    ] {
        v.push(case(
            format!("strict downstream, {name}"),
            Cfg::Plain,
            Reply::Strict,
            ask,
            Outcome::Undone,
        ));
    }
    v.push(case(
        "strict downstream, proper request is charged".into(),
        Cfg::Plain,
        Reply::Strict,
        Ask::Normal,
        Outcome::Kept,
    ));
    v.push(case(
        "arguments holding a JSON-RPC error".into(),
        Cfg::ToolErrors,
        Reply::Result,
        Ask::FakeErrorArgs,
        Outcome::Kept,
    ));
    v.push(case(
        "arguments holding isError: true".into(),
        Cfg::ToolErrors,
        Reply::Result,
        Ask::IsErrorArgs,
        Outcome::Kept,
    ));
    v.push(case(
        "arguments holding an SSE error event".into(),
        Cfg::ToolErrors,
        Reply::Sse,
        Ask::SseEventArgs,
        Outcome::Kept,
    ));
    v.push(case(
        "SSE result then an error for the same id".into(),
        Cfg::ToolErrors,
        Reply::SseResultThenError,
        Ask::Normal,
        Outcome::Kept,
    ));
    v.push(case(
        "call sent as a notification".into(),
        Cfg::ToolErrors,
        Reply::Result,
        Ask::Notification,
        Outcome::NeverFree,
    ));
    v.push(case(
        "call sent as a notification, no refund flags".into(),
        Cfg::Plain,
        Reply::Result,
        Ask::Notification,
        Outcome::NeverFree,
    ));
    v.push(case(
        "tool error without refundOnToolError is charged".into(),
        Cfg::Refund,
        Reply::ToolError,
        Ask::Normal,
        Outcome::Kept,
    ));
    v.push(case(
        "tool error with refundOnToolError".into(),
        Cfg::ToolErrors,
        Reply::ToolError,
        Ask::Normal,
        Outcome::Undone,
    ));
    v.push(case(
        "JSON-RPC error with refundOnFailure".into(),
        Cfg::Refund,
        Reply::RpcError,
        Ask::Normal,
        Outcome::Undone,
    ));
    v.push(case(
        "priced call, downstream 500, refund is exact".into(),
        Cfg::Refund,
        Reply::Status(500),
        Ask::Priced,
        Outcome::Undone,
    ));
    v.push(case(
        "priced call, downstream 406, refund is exact".into(),
        Cfg::Plain,
        Reply::Status(406),
        Ask::Priced,
        Outcome::Undone,
    ));
    v.push(case(
        "priced call that ran is charged its price".into(),
        Cfg::ToolErrors,
        Reply::Result,
        Ask::Priced,
        Outcome::Kept,
    ));
    v.push(case(
        "daily call quota given back after a 406".into(),
        Cfg::Quota,
        Reply::Status(406),
        Ask::Normal,
        Outcome::UndoneThenAllowed,
    ));
    v.push(case(
        "daily call quota given back after a 415".into(),
        Cfg::Quota,
        Reply::Status(415),
        Ask::Normal,
        Outcome::UndoneThenAllowed,
    ));
    v
}

fn refund_request(ask: Ask) -> Req {
    let body = match ask {
        Ask::FakeErrorArgs => call_with_args(json!({
            "x": r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#
        })),
        Ask::IsErrorArgs => call_with_args(json!({"isError": true, "error": {"code": 1}})),
        Ask::SseEventArgs => call_with_args(json!({
            "x": "\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000,\"message\":\"x\"}}\n\n"
        })),
        Ask::Notification => {
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{}}}"#.into()
        }
        Ask::Priced => {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pricey", "arguments": {}}}).to_string()
        }
        _ => CALL.to_string(),
    };
    let req = Req::mcp(body);
    match ask {
        Ask::NoAccept => req.without("accept"),
        Ask::AcceptHtml => req.without("accept").header("accept", "text/html"),
        Ask::AcceptJsonOnly => req.without("accept").header("accept", "application/json"),
        Ask::TextPlain => req
            .without("content-type")
            .header("content-type", "text/plain"),
        Ask::NoContentType => req.without("content-type"),
        Ask::ForeignHost => req.header("host", "evil.example"),
        _ => req,
    }
}

async fn run_refund_case(gw: &TestGateway, c: &RefundCase) -> Result<(), String> {
    gw.set_reply(c.reply);
    gw.set_echo(IdEcho::Raw);
    let start = 20;
    let key = gw.key(start).await;
    let price: i64 = if c.ask == Ask::Priced { 5 } else { 1 };
    let down0 = gw.downstream_calls();
    let resp = gw.send(refund_request(c.ask).key(Some(&key))).await;
    let down = gw.downstream_calls() - down0;
    let rec = gw.record(&key).await.ok_or("key vanished")?;
    let charged = start as i64 - rec.credits as i64;
    let seen = || {
        format!(
            "downstream +{down}, credits {} of {start} (totalSpent {}, totalCalls {}), answer {}",
            rec.credits,
            rec.total_spent,
            rec.total_calls,
            resp.brief()
        )
    };
    let undone = rec.credits == start && rec.total_spent == 0 && rec.total_calls == 0;
    match c.outcome {
        Outcome::Undone => ensure(undone, seen),
        Outcome::Kept => ensure(
            charged == price && rec.total_calls == 1 && down == 1 && resp.status == 200,
            seen,
        ),
        Outcome::NeverFree => ensure(
            (down == 0 && undone) || (charged == 1 && rec.total_calls == 1),
            seen,
        ),
        Outcome::UndoneThenAllowed => {
            ensure(undone, seen)?;
            gw.set_reply(Reply::Result);
            let next = gw.mcp(Some(&key), CALL).await;
            ensure(next.has_result(), || {
                format!("the next call was refused: {}", next.brief())
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_refund_abuse() {
    let pricing = json!({"pricey": {"creditsPerCall": 5}});
    let configs = [
        (
            Cfg::Plain,
            json!({"globalRateLimitPerMin": 0, "toolPricing": pricing}),
        ),
        (
            Cfg::Refund,
            json!({"globalRateLimitPerMin": 0, "toolPricing": pricing, "refundOnFailure": true}),
        ),
        (
            Cfg::ToolErrors,
            json!({"globalRateLimitPerMin": 0, "toolPricing": pricing, "refundOnFailure": true, "refundOnToolError": true}),
        ),
        (
            Cfg::Quota,
            json!({"globalRateLimitPerMin": 0, "globalQuota": {"dailyCallLimit": 1}}),
        ),
    ];
    let mut gateways = Vec::new();
    for (which, cfg) in configs {
        gateways.push((which, start(gw::config(cfg).expect("valid config")).await));
    }
    let mut f = Failures::default();
    let cases = refund_cases();
    for c in &cases {
        let gw = &gateways
            .iter()
            .find(|(w, _)| *w == c.cfg)
            .expect("config")
            .1;
        f.case(&c.name, run_refund_case(gw, c).await);
    }
    for (_, gw) in &gateways {
        f.leaks(gw);
    }
    f.assert_none("refund abuse", cases.len());
}

// ---------------------------------------------------------------------------------------
// Family: auth. Keys from every wrong place, dead keys, spoofed addresses, `/balance`, the
// admin key, and shadow mode.
// ---------------------------------------------------------------------------------------

/// The keys an auth case may use.
struct AuthKeys {
    good: String,
    revoked: String,
    expired: String,
    expired_exactly: String,
    rotated_old: String,
    rotated_new: String,
    allowlisted: String,
}

/// `(name, request, expected deny reason; "" = allowed and charged to the good key)`.
type AuthCall = (&'static str, fn(&AuthKeys) -> Req, &'static str);

fn call_req() -> Req {
    Req::mcp(CALL)
}

const AUTH_CALLS: &[AuthCall] = &[
    ("no key", |_| call_req(), "missing_api_key"),
    (
        "empty X-API-Key",
        |_| call_req().header("x-api-key", ""),
        "missing_api_key",
    ),
    (
        "blank X-API-Key",
        |_| call_req().header("x-api-key", "   "),
        "missing_api_key",
    ),
    (
        "garbage key",
        |_| call_req().header("x-api-key", "not-a-key-at-all-0000"),
        "invalid_api_key",
    ),
    (
        "admin key as API key",
        |_| call_req().header("x-api-key", ADMIN_KEY),
        "invalid_api_key",
    ),
    (
        "admin key as bearer",
        |_| call_req().header("authorization", format!("Bearer {ADMIN_KEY}")),
        "invalid_api_key",
    ),
    (
        "revoked key",
        |k| call_req().header("x-api-key", &k.revoked),
        "invalid_api_key",
    ),
    (
        "revoked key as bearer",
        |k| call_req().header("authorization", format!("Bearer {}", k.revoked)),
        "invalid_api_key",
    ),
    (
        "expired key",
        |k| call_req().header("x-api-key", &k.expired),
        "api_key_expired",
    ),
    (
        "key expiring this millisecond",
        |k| call_req().header("x-api-key", &k.expired_exactly),
        "api_key_expired",
    ),
    (
        "rotated-out key",
        |k| call_req().header("x-api-key", &k.rotated_old),
        "invalid_api_key",
    ),
    (
        "upper-cased key",
        |k| call_req().header("x-api-key", k.good.to_uppercase()),
        "invalid_api_key",
    ),
    (
        "key minus its last char",
        |k| call_req().header("x-api-key", &k.good[..k.good.len() - 1]),
        "invalid_api_key",
    ),
    (
        "key plus a char",
        |k| call_req().header("x-api-key", format!("{}0", k.good)),
        "invalid_api_key",
    ),
    (
        "key prefix only",
        |_| call_req().header("x-api-key", "pg_"),
        "invalid_api_key",
    ),
    (
        "key with a non-UTF-8 byte",
        |k| call_req().header("x-api-key", [k.good.as_bytes(), &[0xFF]].concat()),
        "invalid_api_key",
    ),
    (
        "key in the query string",
        |k| {
            let mut r = call_req();
            r.target = format!("/mcp?api_key={}", k.good);
            r
        },
        "missing_api_key",
    ),
    (
        "key in params._meta",
        |k| {
            Req::mcp(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "_meta": {"apiKey": k.good}}}).to_string())
        },
        "missing_api_key",
    ),
    (
        "key in arguments",
        |k| Req::mcp(call_with_args(json!({"apiKey": k.good}))),
        "missing_api_key",
    ),
    (
        "Bearer without a token",
        |_| call_req().header("authorization", "Bearer"),
        "missing_api_key",
    ),
    (
        "Token scheme",
        |k| call_req().header("authorization", format!("Token {}", k.good)),
        "missing_api_key",
    ),
    (
        "spoofed X-Forwarded-For, no trusted hops",
        |k| {
            call_req()
                .header("x-api-key", &k.allowlisted)
                .header("x-forwarded-for", "10.0.0.7")
        },
        "ip_not_allowed",
    ),
    (
        "spoofed X-Real-IP",
        |k| {
            call_req()
                .header("x-api-key", &k.allowlisted)
                .header("x-real-ip", "10.0.0.7")
        },
        "ip_not_allowed",
    ),
    (
        "spoofed Forwarded",
        |k| {
            call_req()
                .header("x-api-key", &k.allowlisted)
                .header("forwarded", "for=10.0.0.7")
        },
        "ip_not_allowed",
    ),
    (
        "rotated-in key works",
        |k| call_req().header("x-api-key", &k.rotated_new),
        "",
    ),
    (
        "bearer of the good key works",
        |k| call_req().header("authorization", format!("Bearer {}", k.good)),
        "",
    ),
];

async fn auth_keys(gw: &TestGateway) -> Result<AuthKeys, String> {
    let good = gw.key(100).await;
    let revoked = gw.key(100).await;
    let r = gw
        .admin("POST", "/keys/revoke", &json!({"key": revoked}).to_string())
        .await;
    ensure(r.status == 200, || format!("revoke: {}", r.brief()))?;
    let expired = gw.create(&json!({"name": "e", "expiresIn": 60})).await?;
    let expired_exactly = gw.create(&json!({"name": "e2", "expiresIn": 61})).await?;
    gw.clock.advance_secs(61);
    let rotated_old = gw.key(100).await;
    let r = gw.rotate(&rotated_old).await;
    let rotated_new = r.json()["newKey"]
        .as_str()
        .ok_or_else(|| format!("rotate: {}", r.brief()))?
        .to_string();
    let allowlisted = gw
        .create(&json!({"name": "ip", "ipAllowlist": ["10.0.0.7"]}))
        .await?;
    Ok(AuthKeys {
        good,
        revoked,
        expired,
        expired_exactly,
        rotated_old,
        rotated_new,
        allowlisted,
    })
}

async fn run_auth_call(gw: &TestGateway, keys: &AuthKeys, case: &AuthCall) -> Result<(), String> {
    let (_, build, reason) = case;
    let all = [
        &keys.good,
        &keys.revoked,
        &keys.expired,
        &keys.rotated_new,
        &keys.allowlisted,
    ];
    let mut before = Vec::new();
    for k in all {
        before.push(gw.credits(k).await);
    }
    let down0 = gw.downstream_calls();
    let resp = gw.send(build(keys)).await;
    let down = gw.downstream_calls() - down0;
    let mut after = Vec::new();
    for k in all {
        after.push(gw.credits(k).await);
    }
    let changed: u64 = before.iter().zip(&after).map(|(b, a)| b.abs_diff(*a)).sum();
    if reason.is_empty() {
        return ensure(resp.has_result() && down == 1 && changed == 1, || {
            format!(
                "downstream +{down}, credits moved {changed}, answer {}",
                resp.brief()
            )
        });
    }
    ensure(
        down == 0 && changed == 0 && resp.reason() == *reason && resp.code() == -32002,
        || {
            format!(
                "expected {reason}; downstream +{down}, credits moved {changed}, answer {}",
                resp.brief()
            )
        },
    )
}

/// Cases that need their own setup, by name.
const AUTH_SPECIAL: &[&str] = &[
    "X-Forwarded-For from a peer that is not a trusted proxy is ignored",
    "X-Forwarded-For from a trusted proxy is believed",
    "trustedProxies accepts a plain IP",
    "trusted proxy: client-prepended address is not the client",
    "trusted proxy: two X-Forwarded-For headers, the last one counts",
    "trusted proxy: garbage X-Forwarded-For trusts nothing",
    "/balance refuses a client outside the key's IP allowlist",
    "/balance refuses an expired key",
    "/balance refuses a revoked key",
    "/balance answers 404 for an unknown key",
    "/balance refuses the admin key",
    "/balance ignores a key in the query string",
    "/balance answers the key holder",
    "admin: no X-Admin-Key",
    "admin: wrong X-Admin-Key",
    "admin: X-Admin-Key prefix",
    "admin: X-Admin-Key plus a char",
    "admin: X-Admin-Key upper-cased",
    "admin: admin key as bearer",
    "admin: admin key in the query string",
    "admin: API key as X-Admin-Key",
    "admin: empty X-Admin-Key",
    "admin: X-Admin-Key with a non-UTF-8 byte",
    "empty admin key refused at construction",
    "15-char admin key refused at construction",
    "16-char admin key accepted",
    "shadow mode allows a keyless call and records shadow:missing_api_key",
    "shadow mode allows an unknown key and records shadow:invalid_api_key",
];

/// A gateway that trusts one proxy hop from `proxies`, and a key allowlisted to 10.0.0.7.
async fn proxied(proxies: Value) -> Result<(TestGateway, String), String> {
    let cfg = gw::config(json!({
        "globalRateLimitPerMin": 0,
        "trustedProxyHops": 1,
        "trustedProxies": proxies,
    }))?;
    let gw = TestGateway::start(cfg).await?;
    let key = gw
        .create(&json!({"name": "ip", "ipAllowlist": ["10.0.0.7"]}))
        .await?;
    Ok((gw, key))
}

async fn proxied_call(proxies: Value, xff: &[&str], allowed: bool) -> Result<(), String> {
    let (gw, key) = proxied(proxies).await?;
    let mut req = call_req().header("x-api-key", &key);
    for v in xff {
        req = req.header("x-forwarded-for", v);
    }
    let resp = gw.send(req).await;
    if allowed {
        ensure(resp.has_result(), || resp.brief())
    } else {
        ensure(
            resp.reason() == "ip_not_allowed" && gw.downstream_calls() == 0,
            || resp.brief(),
        )
    }
}

/// Whether building an admin API with `admin_key` is refused (an error, or a panic).
fn admin_key_refused(admin_key: &str) -> bool {
    let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        paygate_mcp::AdminService::new(gate, admin_key)
    }))
    .map_or(true, |built| built.is_err())
}

async fn run_auth_special(gw: &TestGateway, keys: &AuthKeys, name: &str) -> Result<(), String> {
    let not_ok = |r: &Resp| {
        ensure(r.status != 200 && r.json().get("credits").is_none(), || {
            r.brief()
        })
    };
    let admin_401 = |r: Resp| ensure(r.status == 401, || r.brief());
    let keys_req = || Req::new("GET", "/keys", "");
    match name {
        "X-Forwarded-For from a peer that is not a trusted proxy is ignored" => {
            proxied_call(json!(["192.0.2.1/32"]), &["10.0.0.7"], false).await
        }
        "X-Forwarded-For from a trusted proxy is believed" => {
            proxied_call(json!(["127.0.0.1/32"]), &["10.0.0.7"], true).await
        }
        "trustedProxies accepts a plain IP" => {
            proxied_call(json!(["127.0.0.1"]), &["10.0.0.7"], true).await
        }
        "trusted proxy: client-prepended address is not the client" => {
            proxied_call(json!(["127.0.0.1/32"]), &["10.0.0.7, 198.51.100.4"], false).await
        }
        "trusted proxy: two X-Forwarded-For headers, the last one counts" => {
            proxied_call(
                json!(["127.0.0.1/32"]),
                &["10.0.0.7", "198.51.100.4"],
                false,
            )
            .await
        }
        "trusted proxy: garbage X-Forwarded-For trusts nothing" => {
            proxied_call(json!(["127.0.0.1/32"]), &["garbage, 10.0.0.7"], false).await
        }
        "/balance refuses a client outside the key's IP allowlist" => not_ok(
            &gw.send(Req::new("GET", "/balance", "").header("x-api-key", &keys.allowlisted))
                .await,
        ),
        "/balance refuses an expired key" => not_ok(
            &gw.send(Req::new("GET", "/balance", "").header("x-api-key", &keys.expired))
                .await,
        ),
        "/balance refuses a revoked key" => not_ok(
            &gw.send(Req::new("GET", "/balance", "").header("x-api-key", &keys.revoked))
                .await,
        ),
        "/balance answers 404 for an unknown key" => {
            let r = gw
                .send(
                    Req::new("GET", "/balance", "")
                        .header("x-api-key", "pg_unknown_unknown_unknown"),
                )
                .await;
            ensure(r.status == 404, || r.brief())
        }
        "/balance refuses the admin key" => not_ok(
            &gw.send(Req::new("GET", "/balance", "").header("x-api-key", ADMIN_KEY))
                .await,
        ),
        "/balance ignores a key in the query string" => {
            let mut r = Req::new("GET", "/balance", "");
            r.target = format!("/balance?key={}&apiKey={}", keys.good, keys.good);
            not_ok(&gw.send(r).await)
        }
        "/balance answers the key holder" => {
            let r = gw
                .send(Req::new("GET", "/balance", "").header("x-api-key", &keys.good))
                .await;
            ensure(r.status == 200 && r.json()["credits"].is_u64(), || {
                r.brief()
            })
        }
        "admin: no X-Admin-Key" => admin_401(gw.send(keys_req()).await),
        "admin: wrong X-Admin-Key" => admin_401(
            gw.send(keys_req().header("x-admin-key", "admin_wrong_wrong_wrong_wrong"))
                .await,
        ),
        "admin: X-Admin-Key prefix" => admin_401(
            gw.send(keys_req().header("x-admin-key", &ADMIN_KEY[..ADMIN_KEY.len() - 1]))
                .await,
        ),
        "admin: X-Admin-Key plus a char" => admin_401(
            gw.send(keys_req().header("x-admin-key", format!("{ADMIN_KEY}0")))
                .await,
        ),
        "admin: X-Admin-Key upper-cased" => admin_401(
            gw.send(keys_req().header("x-admin-key", ADMIN_KEY.to_uppercase()))
                .await,
        ),
        "admin: admin key as bearer" => admin_401(
            gw.send(keys_req().header("authorization", format!("Bearer {ADMIN_KEY}")))
                .await,
        ),
        "admin: admin key in the query string" => {
            let mut r = keys_req();
            r.target = format!("/keys?adminKey={ADMIN_KEY}&admin_key={ADMIN_KEY}");
            admin_401(gw.send(r).await)
        }
        "admin: API key as X-Admin-Key" => {
            admin_401(gw.send(keys_req().header("x-admin-key", &keys.good)).await)
        }
        "admin: empty X-Admin-Key" => {
            admin_401(gw.send(keys_req().header("x-admin-key", "")).await)
        }
        "admin: X-Admin-Key with a non-UTF-8 byte" => admin_401(
            gw.send(keys_req().header("x-admin-key", [ADMIN_KEY.as_bytes(), &[0xFF]].concat()))
                .await,
        ),
        "empty admin key refused at construction" => ensure(admin_key_refused(""), || {
            "an empty admin key was accepted".into()
        }),
        "15-char admin key refused at construction" => {
            ensure(admin_key_refused("abcdefghijklmno"), || {
                "a 15-character admin key was accepted".into()
            })
        }
        "16-char admin key accepted" => ensure(!admin_key_refused("abcdefghijklmnop"), || {
            "a 16-character admin key was refused".into()
        }),
        "shadow mode allows a keyless call and records shadow:missing_api_key" => {
            shadow_case(None, "shadow:missing_api_key").await
        }
        "shadow mode allows an unknown key and records shadow:invalid_api_key" => {
            shadow_case(Some("pg_unknown_unknown_unknown"), "shadow:invalid_api_key").await
        }
        other => Err(format!("no such case {other}")),
    }
}

async fn shadow_case(key: Option<&str>, reason: &str) -> Result<(), String> {
    let gw = start(open_cfg().with_shadow_mode(true)).await;
    let resp = gw.mcp(key, CALL).await;
    ensure(resp.has_result() && gw.downstream_calls() == 1, || {
        format!("shadow mode refused the call: {}", resp.brief())
    })?;
    let usage = gw.admin("GET", "/usage", "").await.json();
    let reasons: Vec<String> = usage["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["denyReason"].as_str().map(str::to_string))
        .collect();
    ensure(reasons.iter().any(|r| r == reason), || {
        format!("usage recorded {reasons:?}, not {reason}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_auth() {
    let gw = start(open_cfg()).await;
    let keys = auth_keys(&gw).await.expect("auth keys");
    let mut f = Failures::default();
    for case in AUTH_CALLS {
        f.case(case.0, run_auth_call(&gw, &keys, case).await);
    }
    for name in AUTH_SPECIAL {
        f.case(name, run_auth_special(&gw, &keys, name).await);
    }
    f.leaks(&gw);
    f.assert_none("auth", AUTH_CALLS.len() + AUTH_SPECIAL.len());
}

// ---------------------------------------------------------------------------------------
// Family: admin input. Trailing data, bad amounts and lists, oversized fields, edits of a
// revoked key, and masking. A refused request changes nothing.
// ---------------------------------------------------------------------------------------

/// `(name, method, path, body; {key} is a live key)`: each must answer 400 and change nothing.
const ADMIN_TRAILING: &[(&str, &str, &str, &str)] = &[
    (
        "create: two documents",
        "POST",
        "/keys",
        r#"{"name":"a"}{"name":"b"}"#,
    ),
    (
        "create: trailing garbage",
        "POST",
        "/keys",
        r#"{"name":"a"} garbage"#,
    ),
    (
        "create: second document on a new line",
        "POST",
        "/keys",
        "{\"name\":\"a\"}\n{\"name\":\"b\"}",
    ),
    ("create: stray bracket", "POST", "/keys", r#"{"name":"a"}]"#),
    (
        "create: trailing NUL",
        "POST",
        "/keys",
        "{\"name\":\"a\"}\u{0}",
    ),
    (
        "topup: second document raises the amount",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":1}{"key":"{key}","credits":999}"#,
    ),
    (
        "topup: trailing garbage",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":1} garbage"#,
    ),
    (
        "revoke: trailing garbage",
        "POST",
        "/keys/revoke",
        r#"{"key":"{key}"}x"#,
    ),
    (
        "rotate: second document",
        "POST",
        "/keys/rotate",
        r#"{"key":"{key}"}{}"#,
    ),
    (
        "acl: trailing garbage",
        "POST",
        "/keys/acl",
        r#"{"key":"{key}","deniedTools":["echo"]} x"#,
    ),
    (
        "expiry: trailing garbage",
        "POST",
        "/keys/expiry",
        r#"{"key":"{key}","expiresIn":60} x"#,
    ),
    (
        "quota: trailing garbage",
        "POST",
        "/keys/quota",
        r#"{"key":"{key}","dailyCallLimit":5} x"#,
    ),
    (
        "tags: trailing garbage",
        "POST",
        "/keys/tags",
        r#"{"key":"{key}","tags":{"a":"b"}} x"#,
    ),
    (
        "ip: trailing garbage",
        "POST",
        "/keys/ip",
        r#"{"key":"{key}","ipAllowlist":["10.0.0.1"]} x"#,
    ),
    (
        "limits: trailing garbage",
        "POST",
        "/limits",
        r#"{"key":"{key}","spendingLimit":5} x"#,
    ),
    (
        "search: trailing garbage",
        "POST",
        "/keys/search",
        r#"{"tags":{"a":"b"}} x"#,
    ),
    (
        "alerts: trailing garbage",
        "POST",
        "/alerts",
        r#"{"rules":[]} x"#,
    ),
];

/// `(name, method, path, body, expected status)`: a refusal changes nothing; `{key}` is a
/// live key with 100 credits.
const ADMIN_VALIDATION: &[(&str, &str, &str, &str, u16)] = &[
    (
        "topup: negative",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":-5}"#,
        400,
    ),
    (
        "topup: zero",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":0}"#,
        400,
    ),
    (
        "topup: string amount",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":"100"}"#,
        400,
    ),
    (
        "topup: 1e300",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":1e300}"#,
        400,
    ),
    (
        "topup: 2^53",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":9007199254740992}"#,
        400,
    ),
    (
        "topup: u64::MAX",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":18446744073709551615}"#,
        400,
    ),
    (
        "topup: null",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":null}"#,
        400,
    ),
    (
        "topup: boolean",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":true}"#,
        400,
    ),
    (
        "topup: duplicate credits field",
        "POST",
        "/topup",
        r#"{"key":"{key}","credits":1,"credits":999}"#,
        400,
    ),
    (
        "topup: duplicate key field",
        "POST",
        "/topup",
        r#"{"key":"pg_nope_nope_nope_nope","key":"{key}","credits":5}"#,
        400,
    ),
    (
        "topup: unknown key",
        "POST",
        "/topup",
        r#"{"key":"pg_unknown_unknown_unknown","credits":5}"#,
        404,
    ),
    (
        "topup: key is a number",
        "POST",
        "/topup",
        r#"{"key":12345,"credits":5}"#,
        400,
    ),
    (
        "topup: key is empty",
        "POST",
        "/topup",
        r#"{"key":"","credits":5}"#,
        400,
    ),
    (
        "create: name of 201 chars",
        "POST",
        "/keys",
        "{\"name\":\"{201}\"}",
        400,
    ),
    (
        "create: name of 100 KB",
        "POST",
        "/keys",
        "{\"name\":\"{100k}\"}",
        400,
    ),
    ("create: empty name", "POST", "/keys", r#"{"name":""}"#, 400),
    (
        "create: blank name",
        "POST",
        "/keys",
        r#"{"name":"   "}"#,
        400,
    ),
    (
        "create: negative credits",
        "POST",
        "/keys",
        r#"{"name":"a","credits":-1}"#,
        400,
    ),
    (
        "create: credits above 2^53-1",
        "POST",
        "/keys",
        r#"{"name":"a","credits":9007199254740992}"#,
        400,
    ),
    (
        "create: 51 tags",
        "POST",
        "/keys",
        "{\"name\":\"a\",\"tags\":{51tags}}",
        400,
    ),
    (
        "create: tag name of 101 chars",
        "POST",
        "/keys",
        "{\"name\":\"a\",\"tags\":{\"{101}\":\"v\"}}",
        400,
    ),
    (
        "create: tag value of 101 chars",
        "POST",
        "/keys",
        "{\"name\":\"a\",\"tags\":{\"t\":\"{101}\"}}",
        400,
    ),
    (
        "create: bad IP",
        "POST",
        "/keys",
        r#"{"name":"a","ipAllowlist":["999.1.1.1"]}"#,
        400,
    ),
    (
        "create: CIDR /33",
        "POST",
        "/keys",
        r#"{"name":"a","ipAllowlist":["10.0.0.0/33"]}"#,
        400,
    ),
    (
        "create: 1001 allowed tools",
        "POST",
        "/keys",
        "{\"name\":\"a\",\"allowedTools\":{1001tools}}",
        400,
    ),
    (
        "create: tool name of 300 bytes",
        "POST",
        "/keys",
        "{\"name\":\"a\",\"deniedTools\":[\"{300}\"]}",
        400,
    ),
    (
        "create: expiresIn 0",
        "POST",
        "/keys",
        r#"{"name":"a","expiresIn":0}"#,
        400,
    ),
    (
        "create: expiresIn negative",
        "POST",
        "/keys",
        r#"{"name":"a","expiresIn":-60}"#,
        400,
    ),
    (
        "create: expiresAt in the past",
        "POST",
        "/keys",
        r#"{"name":"a","expiresAt":"2020-01-01T00:00:00Z"}"#,
        400,
    ),
    (
        "create: expiresAt not a time",
        "POST",
        "/keys",
        r#"{"name":"a","expiresAt":"tomorrow"}"#,
        400,
    ),
    (
        "create: negative quota",
        "POST",
        "/keys",
        r#"{"name":"a","quota":{"dailyCallLimit":-1}}"#,
        400,
    ),
    (
        "create: negative spending limit",
        "POST",
        "/keys",
        r#"{"name":"a","spendingLimit":-1}"#,
        400,
    ),
    (
        "create: duplicate name field",
        "POST",
        "/keys",
        r#"{"name":"a","name":"b"}"#,
        400,
    ),
    (
        "create: body is an array",
        "POST",
        "/keys",
        r#"[{"name":"a"}]"#,
        400,
    ),
    ("create: body is a string", "POST", "/keys", r#""a""#, 400),
    ("create: body is null", "POST", "/keys", "null", 400),
    ("create: empty body", "POST", "/keys", "", 400),
    (
        "create: invalid UTF-8",
        "POST",
        "/keys",
        "{\"name\":\"<ff>\"}",
        400,
    ),
    (
        "create: 10k nested arrays",
        "POST",
        "/keys",
        "{\"name\":{deep}}",
        400,
    ),
    (
        "create: body of 2 MB",
        "POST",
        "/keys",
        "{\"name\":\"{2mb}\"}",
        413,
    ),
    (
        "limits: negative",
        "POST",
        "/limits",
        r#"{"key":"{key}","spendingLimit":-1}"#,
        400,
    ),
    (
        "quota: negative",
        "POST",
        "/keys/quota",
        r#"{"key":"{key}","dailyCallLimit":-1}"#,
        400,
    ),
    (
        "tags: 51 tags",
        "POST",
        "/keys/tags",
        "{\"key\":\"{key}\",\"tags\":{51tags}}",
        400,
    ),
    (
        "ip: bad entry",
        "POST",
        "/keys/ip",
        r#"{"key":"{key}","ipAllowlist":["10.0.0.1/99"]}"#,
        400,
    ),
    (
        "acl: allowed tools not a list",
        "POST",
        "/keys/acl",
        r#"{"key":"{key}","allowedTools":"echo"}"#,
        400,
    ),
    (
        "expiry: not a time",
        "POST",
        "/keys/expiry",
        r#"{"key":"{key}","expiresAt":"soon"}"#,
        400,
    ),
    (
        "search: no tags",
        "POST",
        "/keys/search",
        r#"{"tags":{}}"#,
        400,
    ),
    (
        "alerts: unknown rule type",
        "POST",
        "/alerts",
        r#"{"rules":[{"type":"mine_bitcoin","threshold":1}]}"#,
        400,
    ),
    (
        "alerts: percentage above 100",
        "POST",
        "/alerts",
        r#"{"rules":[{"type":"spending_threshold","threshold":101}]}"#,
        400,
    ),
    ("keys: limit 0", "GET", "/keys?limit=0", "", 400),
    ("keys: limit 1000001", "GET", "/keys?limit=1000001", "", 400),
    ("keys: forged cursor", "GET", "/keys?cursor=zz", "", 400),
    (
        "usage: bad since",
        "GET",
        "/usage?since=yesterday-ish",
        "",
        400,
    ),
    (
        "audit: limit above 1000",
        "GET",
        "/audit?limit=5000",
        "",
        400,
    ),
    (
        "analytics: bad granularity",
        "GET",
        "/analytics?granularity=weekly-ish",
        "",
        400,
    ),
];

fn admin_body(template: &str, key: &str) -> Vec<u8> {
    let tags: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("t{i}"), json!("v"))).collect();
    let tools: Vec<String> = (0..1001).map(|i| format!("tool{i}")).collect();
    let text = template
        .replace("{key}", key)
        .replace("{201}", &"n".repeat(201))
        .replace("{101}", &"n".repeat(101))
        .replace("{300}", &"t".repeat(300))
        .replace("{100k}", &"n".repeat(100_000))
        .replace("{2mb}", &"n".repeat(2 * 1024 * 1024))
        .replace("{51tags}", &Value::Object(tags).to_string())
        .replace("{1001tools}", &json!(tools).to_string())
        .replace(
            "{deep}",
            &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        );
    match text.split_once("<ff>") {
        Some((a, b)) => [a.as_bytes(), &[0xFF], b.as_bytes()].concat(),
        None => text.into_bytes(),
    }
}

/// What the store holds, to see that a refused request changed nothing.
async fn store_state(gw: &TestGateway) -> (paygate_mcp::StoreStats, Vec<paygate_mcp::KeyRecord>) {
    let stats = gw.gate.store().stats().await.expect("stats");
    let mut recs = gw.gate.store().export();
    recs.sort_by_key(|r| r.key_hash);
    (stats, recs)
}

async fn admin_refused(
    gw: &TestGateway,
    method: &str,
    path: &str,
    template: &str,
    statuses: &[u16],
) -> Result<(), String> {
    let key = gw.key(100).await;
    let before = store_state(gw).await;
    let req = Req::new(method, path, admin_body(template, &key))
        .header("x-admin-key", ADMIN_KEY)
        .header("content-type", "application/json");
    let resp = gw.send(req).await;
    let after = store_state(gw).await;
    ensure(statuses.contains(&resp.status), || {
        format!("expected {statuses:?}, got {}", resp.brief())
    })?;
    ensure(resp.json()["error"].is_string(), || {
        format!("no {{\"error\": ...}} body: {}", resp.brief())
    })?;
    ensure(before == after, || "the store changed".to_string())
}

const REVOKED_EDITS: &[(&str, &str, &str)] = &[
    (
        "top-up of a revoked key",
        "/topup",
        r#"{"key":"{key}","credits":50}"#,
    ),
    (
        "ACL edit of a revoked key",
        "/keys/acl",
        r#"{"key":"{key}","allowedTools":["echo"]}"#,
    ),
    (
        "spending limit of a revoked key",
        "/limits",
        r#"{"key":"{key}","spendingLimit":5}"#,
    ),
    (
        "quota of a revoked key",
        "/keys/quota",
        r#"{"key":"{key}","dailyCallLimit":5}"#,
    ),
    (
        "expiry of a revoked key",
        "/keys/expiry",
        r#"{"key":"{key}","expiresIn":600}"#,
    ),
    (
        "tags of a revoked key",
        "/keys/tags",
        r#"{"key":"{key}","tags":{"a":"b"}}"#,
    ),
    (
        "IP allowlist of a revoked key",
        "/keys/ip",
        r#"{"key":"{key}","ipAllowlist":["10.0.0.1"]}"#,
    ),
    (
        "rotation of a revoked key",
        "/keys/rotate",
        r#"{"key":"{key}"}"#,
    ),
];

async fn revoked_edit(gw: &TestGateway, path: &str, template: &str) -> Result<(), String> {
    let key = gw.key(100).await;
    let r = gw
        .admin("POST", "/keys/revoke", &json!({"key": key}).to_string())
        .await;
    ensure(r.status == 200, || format!("revoke: {}", r.brief()))?;
    let before = store_state(gw).await;
    let resp = gw
        .send(TestGateway::admin_req(
            "POST",
            path,
            &template.replace("{key}", &key),
        ))
        .await;
    let after = store_state(gw).await;
    ensure(resp.status == 404 || resp.status == 409, || resp.brief())?;
    ensure(before == after, || "the store changed".to_string())
}

/// Lengths of imported keys whose masked form is checked.
const MASK_LENGTHS: &[usize] = &[16, 17, 20, 24, 33, 40];

async fn masking_case(gw: &TestGateway, len: usize) -> Result<(), String> {
    // Characters no mask uses, so every one shown counts as revealed.
    let key: String = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
        .chars()
        .cycle()
        .skip(len)
        .take(len)
        .collect();
    gw.gate
        .import_key(&key, &format!("mask-{len}"), 1)
        .await
        .map_err(|e| e.to_string())?;
    gw.secret(&key);
    let list = gw.admin("GET", "/keys?limit=1000", "").await.json();
    let items = list["keys"]
        .as_array()
        .cloned()
        .or_else(|| list.as_array().cloned())
        .unwrap_or_default();
    let shown = items
        .iter()
        .find(|k| k["name"] == format!("mask-{len}"))
        .and_then(|k| k["key"].as_str().or_else(|| k["keyPrefix"].as_str()))
        .ok_or("the key is not listed")?
        .to_string();
    let revealed = shown.chars().filter(|c| key.contains(*c)).count();
    ensure(revealed * 3 <= len, || {
        format!(
            "{shown:?} reveals {revealed} of {len} characters (at most {} allowed)",
            len / 3
        )
    })
}

async fn generated_key_masking(gw: &TestGateway) -> Result<(), String> {
    let key = gw.create(&json!({"name": "mask-pg"})).await?;
    let list = gw.admin("GET", "/keys?limit=1000", "").await.json();
    let items = list["keys"]
        .as_array()
        .cloned()
        .or_else(|| list.as_array().cloned())
        .unwrap_or_default();
    let expected = format!("{}...{}", &key[..7], &key[key.len() - 4..]);
    ensure(
        items
            .iter()
            .any(|k| k["name"] == "mask-pg" && k["key"] == expected.as_str()),
        || format!("no listing shows {expected}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_admin_input() {
    let gw = start(open_cfg()).await;
    let mut f = Failures::default();
    for (name, method, path, body) in ADMIN_TRAILING {
        f.case(name, admin_refused(&gw, method, path, body, &[400]).await);
    }
    let r = gw
        .send(TestGateway::admin_req(
            "POST",
            "/keys",
            "{\"name\":\"ws\"} \n\t ",
        ))
        .await;
    f.case(
        "create: trailing whitespace is fine",
        ensure(r.status == 201, || r.brief()),
    );
    for (name, method, path, body, status) in ADMIN_VALIDATION {
        f.case(
            name,
            admin_refused(&gw, method, path, body, &[*status]).await,
        );
    }
    let key = gw.key(100).await;
    let r = gw
        .admin(
            "POST",
            "/topup",
            &format!(r#"{{"key":"{key}","credits":1.9}}"#),
        )
        .await;
    let credits = gw.credits(&key).await;
    f.case(
        "topup: fractional amount is floored",
        ensure(r.status == 200 && credits == 101, || {
            format!("credits {credits}, answer {}", r.brief())
        }),
    );
    for (name, path, body) in REVOKED_EDITS {
        f.case(name, revoked_edit(&gw, path, body).await);
    }
    for len in MASK_LENGTHS {
        f.case(
            &format!("masking of a {len}-char imported key"),
            masking_case(&gw, *len).await,
        );
    }
    f.case("masking of a pg_ key", generated_key_masking(&gw).await);
    f.leaks(&gw);
    f.assert_none("admin input", admin_case_count());
}

fn admin_case_count() -> usize {
    ADMIN_TRAILING.len()
        + 1
        + ADMIN_VALIDATION.len()
        + 1
        + REVOKED_EDITS.len()
        + MASK_LENGTHS.len()
        + 1
}

// ---------------------------------------------------------------------------------------
// Family: state-file damage, on real files (SPEC §4a): a file of the wrong shape is refused
// and left byte for byte; a skipped record is kept aside (`<file>.rejected`) and never lost
// by a later save; the previous snapshot is kept as `<file>.bak`.
// ---------------------------------------------------------------------------------------

fn state_dir(case: &str) -> PathBuf {
    let slug: String = case
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let d = std::env::temp_dir().join(format!(
        "paygate-adversarial-{}-{slug}-{}",
        std::process::id(),
        &paygate_mcp::generate_key().unwrap()[3..15]
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rec_value(n: u32, name: &str) -> Value {
    serde_json::to_value(KeyRecord::new(
        &format!("pg_{n:048x}"),
        name,
        5,
        1_700_000_000_000,
    ))
    .unwrap()
}

fn goods() -> Vec<Value> {
    vec![rec_value(1, "good-1"), rec_value(2, "good-2")]
}

fn state_doc(keys: Vec<Value>) -> Value {
    json!({"version": 1, "savedAt": "2026-03-15T10:00:00Z", "keys": keys})
}

fn good_bytes() -> Vec<u8> {
    state_doc(goods()).to_string().into_bytes()
}

/// Files of the wrong shape: each must be refused and left untouched.
/// A damaged file: its name and its bytes.
type DamagedFile = (&'static str, fn() -> Vec<u8>);

const STATE_REFUSED: &[DamagedFile] = &[
    ("renamed keys field", || {
        String::from_utf8(good_bytes())
            .unwrap()
            .replace("\"keys\"", "\"keyz\"")
            .into_bytes()
    }),
    ("keys field missing", || {
        br#"{"version":1,"savedAt":"2026-03-15T10:00:00Z"}"#.to_vec()
    }),
    ("keys field in upper case", || {
        String::from_utf8(good_bytes())
            .unwrap()
            .replace("\"keys\"", "\"Keys\"")
            .into_bytes()
    }),
    ("keys is an object", || {
        json!({"version": 1, "keys": {"a": rec_value(1, "a")}})
            .to_string()
            .into_bytes()
    }),
    ("keys is null", || br#"{"version":1,"keys":null}"#.to_vec()),
    ("keys is a string", || {
        br#"{"version":1,"keys":"[]"}"#.to_vec()
    }),
    ("version missing", || {
        json!({"keys": goods()}).to_string().into_bytes()
    }),
    ("version 99", || {
        json!({"version": 99, "keys": goods()})
            .to_string()
            .into_bytes()
    }),
    ("version is a string", || {
        json!({"version": "1", "keys": goods()})
            .to_string()
            .into_bytes()
    }),
    ("version 1e400", || {
        format!(r#"{{"version":1e400,"keys":{}}}"#, json!(goods())).into_bytes()
    }),
    ("top-level array of records", || {
        json!(goods()).to_string().into_bytes()
    }),
    ("1.8 state file (array of pairs)", || {
        br#"[["pg_abc",{"key":"pg_abc","name":"x","credits":5}]]"#.to_vec()
    }),
    ("truncated to half", || {
        let b = good_bytes();
        b[..b.len() / 2].to_vec()
    }),
    ("last byte cut", || {
        let b = good_bytes();
        b[..b.len() - 1].to_vec()
    }),
    ("empty file", Vec::new),
    ("binary garbage", || {
        (0..4096u32).map(|i| (i * 7 % 256) as u8).collect()
    }),
    ("NUL bytes appended", || {
        [good_bytes(), vec![0; 16]].concat()
    }),
    ("second document appended", || {
        [good_bytes(), good_bytes()].concat()
    }),
    ("10k nested arrays in a record", || {
        format!(
            r#"{{"version":1,"keys":[{}{}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
        .into_bytes()
    }),
];

fn refused_untouched(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let loaded = Store::load_from(path);
    let now = std::fs::read(path).map_err(|e| e.to_string())?;
    ensure(now == bytes, || "the file was modified".into())?;
    match loaded {
        Err(_) => Ok(()),
        Ok((store, report)) => Err(format!(
            "loaded as a state file ({} keys, {} skipped)",
            store.export().len(),
            report.skipped
        )),
    }
}

/// Hostile records beside two good ones: each is skipped, kept aside and never lost.
/// A hostile record: its name and how it spoils a good one.
type HostileRecord = (&'static str, fn(Value) -> Value);

const STATE_SKIPPED: &[HostileRecord] = &[
    ("negative credits", |mut v| {
        v["credits"] = json!(-333);
        v
    }),
    ("credits 1e300", |mut v| {
        v["credits"] = json!(1e300);
        v
    }),
    ("credits u64::MAX", |mut v| {
        v["credits"] = json!(u64::MAX);
        v
    }),
    ("credits above 2^53-1", |mut v| {
        v["credits"] = json!(9_007_199_254_740_992u64);
        v
    }),
    ("credits as a string", |mut v| {
        v["credits"] = json!("5");
        v
    }),
    ("fractional credits", |mut v| {
        v["credits"] = json!(1.5);
        v
    }),
    ("negative totalSpent", |mut v| {
        v["totalSpent"] = json!(-1);
        v
    }),
    ("keyHash not hex", |mut v| {
        v["keyHash"] = json!("zz");
        v
    }),
    ("credits field missing", |mut v| {
        v.as_object_mut().unwrap().remove("credits");
        v
    }),
    ("record is a string", |v| json!(v["name"])),
    ("record is an array", |v| json!([v["name"]])),
    ("duplicate keyHash", |mut v| {
        v["keyHash"] = goods()[0]["keyHash"].clone();
        v
    }),
    ("60 tags", |mut v| {
        v["tags"] = (0..60)
            .map(|i| (format!("t{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v
    }),
    ("name of 1 MB", |mut v| {
        v["name"] = json!(format!(
            "{}{}",
            v["name"].as_str().unwrap(),
            "x".repeat(1 << 20)
        ));
        v
    }),
    ("1001 allowed tools", |mut v| {
        v["allowedTools"] = json!((0..1001).map(|i| format!("t{i}")).collect::<Vec<_>>());
        v
    }),
    ("IP allowlist entry not an IP", |mut v| {
        v["ipAllowlist"] = json!(["not-an-ip"]);
        v
    }),
    ("createdAt out of range", |mut v| {
        v["createdAt"] = json!("+275760-09-14T00:00:00Z");
        v
    }),
];

/// Whether `marker` is in some file in `dir` (other than `except`, when given).
fn kept_in(dir: &Path, except: Option<&Path>, marker: &str, name_part: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| Some(p.as_path()) != except)
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(name_part))
        })
        .any(|p| std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(marker)))
}

fn skipped_kept(dir: &Path, mutate: fn(Value) -> Value) -> Result<(), String> {
    let path = dir.join("state.json");
    let marker = "rejected-marker-7";
    let bad = mutate(rec_value(7, marker));
    let mut keys = goods();
    keys.insert(1, bad);
    std::fs::write(&path, state_doc(keys).to_string()).unwrap();
    let (store, report) =
        Store::load_from(&path).map_err(|e| format!("refused the whole file: {e}"))?;
    ensure(report.loaded == 2 && report.skipped == 1, || {
        format!(
            "loaded {} skipped {}: {:?}",
            report.loaded, report.skipped, report.reasons
        )
    })?;
    ensure(kept_in(dir, Some(&path), marker, "rejected"), || {
        "the skipped record is not in a .rejected file beside the state file".into()
    })?;
    store.save_to(&path).map_err(|e| e.to_string())?;
    ensure(kept_in(dir, None, marker, ""), || {
        "the next save lost the skipped record".into()
    })?;
    let (again, _) = Store::load_from(&path).map_err(|e| e.to_string())?;
    again.save_to(&path).map_err(|e| e.to_string())?;
    ensure(kept_in(dir, None, marker, ""), || {
        "a second load and save lost the skipped record".into()
    })
}

const STATE_SPECIAL: &[&str] = &[
    "every record bad, then a key added and saved",
    "every record bad, then saved as is",
    "previous snapshot kept as .bak",
    "two keys fields",
    "UTF-8 BOM",
    "a directory in place of the file",
    "empty keys array is an empty store",
    "unknown top-level field loses nothing",
];

fn state_special(dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join("state.json");
    match name {
        "every record bad, then a key added and saved" | "every record bad, then saved as is" => {
            let markers = [
                "rejected-marker-11",
                "rejected-marker-12",
                "rejected-marker-13",
            ];
            let keys = vec![
                STATE_SKIPPED[0].1(rec_value(11, markers[0])),
                STATE_SKIPPED[7].1(rec_value(12, markers[1])),
                STATE_SKIPPED[4].1(rec_value(13, markers[2])),
            ];
            let bytes = state_doc(keys).to_string().into_bytes();
            std::fs::write(&path, &bytes).unwrap();
            let store = match Store::load_from(&path) {
                Err(_) => {
                    let now = std::fs::read(&path).unwrap_or_default();
                    return ensure(now == bytes, || "refused, but modified".into());
                }
                Ok((store, _)) => store,
            };
            if name.contains("added") {
                paygate_mcp::block_on(store.insert(KeyRecord::new(
                    &format!("pg_{:048x}", 99),
                    "new",
                    1,
                    0,
                )))
                .map_err(|e| e.to_string())?;
            }
            store.save_to(&path).map_err(|e| e.to_string())?;
            let lost: Vec<&str> = markers
                .iter()
                .copied()
                .filter(|m| !kept_in(dir, None, m, ""))
                .collect();
            ensure(lost.is_empty(), || format!("records lost: {lost:?}"))
        }
        "previous snapshot kept as .bak" => {
            let store = Store::new();
            paygate_mcp::block_on(store.insert(KeyRecord::new(
                &format!("pg_{:048x}", 1),
                "a",
                1,
                0,
            )))
            .unwrap();
            store.save_to(&path).map_err(|e| e.to_string())?;
            let first = std::fs::read(&path).unwrap();
            paygate_mcp::block_on(store.insert(KeyRecord::new(
                &format!("pg_{:048x}", 2),
                "b",
                1,
                0,
            )))
            .unwrap();
            store.save_to(&path).map_err(|e| e.to_string())?;
            let bak = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().ends_with(".bak"))
                })
                .any(|p| std::fs::read(p).is_ok_and(|b| b == first));
            ensure(bak, || "no .bak file holds the previous snapshot".into())
        }
        "two keys fields" => {
            let text = format!(
                r#"{{"version":1,"keys":[{}],"keys":[{}]}}"#,
                goods()[0],
                goods()[1]
            );
            std::fs::write(&path, &text).unwrap();
            match Store::load_from(&path) {
                Err(_) => ensure(std::fs::read(&path).unwrap() == text.as_bytes(), || {
                    "modified".into()
                }),
                Ok((store, _)) => ensure(store.export().len() == 2, || {
                    format!("loaded {} of the 2 records", store.export().len())
                }),
            }
        }
        "UTF-8 BOM" => {
            let bytes = [&[0xEF, 0xBB, 0xBF][..], &good_bytes()].concat();
            std::fs::write(&path, &bytes).unwrap();
            match Store::load_from(&path) {
                Err(_) => ensure(std::fs::read(&path).unwrap() == bytes, || "modified".into()),
                Ok((store, _)) => ensure(store.export().len() == 2, || "records lost".into()),
            }
        }
        "a directory in place of the file" => {
            std::fs::create_dir_all(&path).unwrap();
            ensure(Store::load_from(&path).is_err(), || {
                "a directory loaded as a state file".into()
            })
        }
        "empty keys array is an empty store" => {
            std::fs::write(&path, state_doc(vec![]).to_string()).unwrap();
            let (store, report) = Store::load_from(&path).map_err(|e| e.to_string())?;
            ensure(store.export().is_empty() && report.skipped == 0, || {
                format!("{report:?}")
            })
        }
        "unknown top-level field loses nothing" => {
            // Refused whole (and untouched) or loaded whole: never a partial load.
            let mut doc = state_doc(goods());
            doc["adminKey"] = json!("injected");
            let bytes = doc.to_string().into_bytes();
            std::fs::write(&path, &bytes).unwrap();
            match Store::load_from(&path) {
                Err(_) => ensure(std::fs::read(&path).unwrap() == bytes, || "modified".into()),
                Ok((store, _)) => ensure(store.export().len() == 2, || "records lost".into()),
            }
        }
        other => Err(format!("no such case {other}")),
    }
}

#[test]
fn family_state_file_damage() {
    let mut f = Failures::default();
    for (name, bytes) in STATE_REFUSED {
        let dir = state_dir(name);
        let path = dir.join("state.json");
        let bytes = bytes();
        std::fs::write(&path, &bytes).unwrap();
        f.case(
            &format!("refused: {name}"),
            refused_untouched(&path, &bytes),
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    for (name, mutate) in STATE_SKIPPED {
        let dir = state_dir(name);
        f.case(&format!("skipped: {name}"), skipped_kept(&dir, *mutate));
        let _ = std::fs::remove_dir_all(dir);
    }
    for name in STATE_SPECIAL {
        let dir = state_dir(name);
        f.case(name, state_special(&dir, name));
        let _ = std::fs::remove_dir_all(dir);
    }
    f.assert_none(
        "state-file damage",
        STATE_REFUSED.len() + STATE_SKIPPED.len() + STATE_SPECIAL.len(),
    );
}

// ---------------------------------------------------------------------------------------
// Family: memory bounds. A flood of hostile requests must not grow the process by more than
// a small constant; what the admin API reports stays small. Measured in a child process (the
// test binary run again for one ignored test), so other tests' memory does not count.
// ---------------------------------------------------------------------------------------

/// Most a flood may grow the resident set.
const RSS_BOUND: u64 = 64 * 1024 * 1024;
/// Largest report the admin API may answer after the floods.
const REPORT_BOUND: usize = 1024 * 1024;

const MEMORY_CASES: &[&str] = &[
    "500 keyless calls with a 1 MB tool name",
    "100 calls with a 1 MB tool name and an unknown key",
    "100 keyless requests with a 1 MB method name",
    "300 keyless calls with a 60 KB Mcp-Name header",
    "300 calls with distinct 60 KB unknown API keys",
    "200 key creations with a 512 KB name",
    "200 key creations with 500 KB tag values",
    "200 failed admin logins with 8 KB paths",
    "GET /usage stays under 1 MB",
    "GET /usage?format=csv stays under 1 MB",
    "GET /analytics stays under 1 MB",
    "GET /status stays under 1 MB",
    "GET /audit?limit=1000 stays under 2 MB",
    "whole flood grows RSS by less than 64 MB",
];

/// Sends `n` requests built by `build(i)` over 4 keep-alive connections; stops early when
/// the resident set has grown past the bound. Returns the growth and the first answer that
/// was a success.
async fn flood(
    gw: &TestGateway,
    n: usize,
    build: impl Fn(usize) -> Req + Send + Sync + 'static,
) -> (u64, Option<String>) {
    let base = gw::rss_bytes();
    let build = Arc::new(build);
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let success = Arc::new(parking_lot::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (build, next, stop, success) =
            (build.clone(), next.clone(), stop.clone(), success.clone());
        let (addr, host) = (gw.addr, gw.host());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || stop.load(Ordering::SeqCst) {
                    break;
                }
                let req = build(i);
                let resp = match conn.send(&req, &host).await {
                    Some(r) => r,
                    None => {
                        conn = Conn::open(addr).await;
                        continue;
                    }
                };
                if resp.has_result() || resp.status == 201 {
                    success.lock().get_or_insert(resp.brief());
                }
                if resp
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    conn = Conn::open(addr).await;
                }
                if i % 20 == 0 && gw::rss_bytes().saturating_sub(base) > RSS_BOUND {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let grown = gw::rss_bytes().saturating_sub(base);
    let first = success.lock().clone();
    (grown, first)
}

fn bounded(grown: u64, success: Option<String>) -> Result<(), String> {
    ensure(success.is_none(), || {
        format!("a hostile request succeeded: {success:?}")
    })?;
    ensure(grown < RSS_BOUND, || {
        format!("RSS grew by {} MB", grown >> 20)
    })
}

async fn report_size(gw: &TestGateway, path: &str, bound: usize) -> Result<(), String> {
    let r = gw.admin("GET", path, "").await;
    ensure(r.status == 200 && r.body.len() < bound, || {
        format!("HTTP {} with {} bytes", r.status, r.body.len())
    })
}

async fn memory_case(gw: &TestGateway, name: &str, start_rss: u64) -> Result<(), String> {
    // 1 MB, so the whole body stays under the default 1 MiB body limit.
    let mb_name = Arc::new("t".repeat(1_000_000));
    match name {
        "500 keyless calls with a 1 MB tool name" => {
            let body = Arc::new(call_named(&mb_name));
            let (g, s) = flood(gw, 500, move |_| Req::mcp(body.to_vec())).await;
            bounded(g, s)
        }
        "100 calls with a 1 MB tool name and an unknown key" => {
            let body = Arc::new(call_named(&mb_name));
            let (g, s) = flood(gw, 100, move |i| {
                Req::mcp(body.to_vec()).header("x-api-key", format!("pg_unknown_{i:040}"))
            })
            .await;
            bounded(g, s)
        }
        "100 keyless requests with a 1 MB method name" => {
            let body = Arc::new(
                json!({"jsonrpc": "2.0", "id": 1, "method": *mb_name, "params": {}}).to_string(),
            );
            let (g, s) = flood(gw, 100, move |_| Req::mcp(body.as_bytes())).await;
            bounded(g, s)
        }
        "300 keyless calls with a 60 KB Mcp-Name header" => {
            let (g, s) = flood(gw, 300, |i| {
                Req::mcp(CALL)
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", format!("{i}{}", "n".repeat(60 * 1024)))
            })
            .await;
            bounded(g, s)
        }
        "300 calls with distinct 60 KB unknown API keys" => {
            let (g, s) = flood(gw, 300, |i| {
                Req::mcp(CALL).header("x-api-key", format!("pg_{i}{}", "k".repeat(60 * 1024)))
            })
            .await;
            bounded(g, s)
        }
        "200 key creations with a 512 KB name" => {
            let (g, s) = flood(gw, 200, |i| {
                let body = json!({"name": format!("{i}{}", "n".repeat(512 * 1024))}).to_string();
                TestGateway::admin_req("POST", "/keys", &body)
            })
            .await;
            bounded(g, s)
        }
        "200 key creations with 500 KB tag values" => {
            let (g, s) = flood(gw, 200, |i| {
                let body =
                    json!({"name": "t", "tags": {"a": format!("{i}{}", "v".repeat(500 * 1024))}})
                        .to_string();
                TestGateway::admin_req("POST", "/keys", &body)
            })
            .await;
            bounded(g, s)
        }
        "200 failed admin logins with 8 KB paths" => {
            let (g, s) = flood(gw, 200, |i| {
                Req::new("GET", &format!("/keys/{i}{}", "p".repeat(8 * 1024)), "")
                    .header("x-admin-key", "wrong")
            })
            .await;
            bounded(g, s)
        }
        "GET /usage stays under 1 MB" => report_size(gw, "/usage", REPORT_BOUND).await,
        "GET /usage?format=csv stays under 1 MB" => {
            report_size(gw, "/usage?format=csv", REPORT_BOUND).await
        }
        "GET /analytics stays under 1 MB" => report_size(gw, "/analytics", REPORT_BOUND).await,
        "GET /status stays under 1 MB" => report_size(gw, "/status", REPORT_BOUND).await,
        "GET /audit?limit=1000 stays under 2 MB" => {
            report_size(gw, "/audit?limit=1000", 2 * REPORT_BOUND).await
        }
        "whole flood grows RSS by less than 64 MB" => {
            let grown = gw::rss_bytes().saturating_sub(start_rss);
            ensure(grown < RSS_BOUND, || {
                format!("RSS grew by {} MB in all", grown >> 20)
            })
        }
        other => Err(format!("no such case {other}")),
    }
}

/// Runs the memory cases when started by `family_memory_bounds`; prints one line per case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by family_memory_bounds"]
async fn memory_flood_child() {
    if std::env::var_os("PAYGATE_MEMORY_CHILD").is_none() {
        return;
    }
    let gw = start(open_cfg()).await;
    // Warm up allocator pools and the connection path before the baseline.
    let _ = flood(&gw, 8, |_| Req::mcp(CALL)).await;
    let start_rss = gw::rss_bytes();
    for name in MEMORY_CASES {
        let line = match memory_case(&gw, name, start_rss).await {
            Ok(()) => format!(
                "CASE-OK\t{name}\t(RSS +{} MB since the start)",
                gw::rss_bytes().saturating_sub(start_rss) >> 20
            ),
            Err(why) => format!("CASE-FAIL\t{name}\t{why}"),
        };
        // On a line of its own: the test harness may have started one.
        println!("\n{line}");
    }
    for leak in gw.leaks() {
        println!("\nCASE-FAIL\tleak\t{leak}");
    }
}

#[test]
fn family_memory_bounds() {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "memory_flood_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PAYGATE_MEMORY_CHILD", "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut f = Failures::default();
    for name in MEMORY_CASES {
        let ok = stdout
            .lines()
            .any(|l| l.starts_with(&format!("CASE-OK\t{name}\t")));
        let failed = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CASE-FAIL\t{name}\t")));
        let outcome = match (ok, failed) {
            (true, _) => Ok(()),
            (_, Some(why)) => Err(why.to_string()),
            _ => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!(
                    "did not run (child exit {:?}): {tail}",
                    out.status.code()
                ))
            }
        };
        f.case(name, outcome);
    }
    for l in stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CASE-FAIL\tleak\t"))
    {
        f.0.push(format!("leak: {l}"));
    }
    f.assert_none("memory bounds", MEMORY_CASES.len());
}

// ---------------------------------------------------------------------------------------
// Family: audit flooding. Failed admin logins and keyless or unknown-key calls cannot evict
// the `key.*` and `admin.*` trail (SPEC §4a).
// ---------------------------------------------------------------------------------------

const FLOOD: usize = 10_001;

const AUDIT_CASES: &[&str] = &[
    "10,001 failed admin logins keep key.created",
    "10,001 failed admin logins keep key.topup and key.revoked",
    "10,001 failed admin logins keep admin.alerts_configured",
    "10,001 keyless calls keep key.created",
    "10,001 unknown-key calls keep key.created",
    "mixed flood keeps key.created in /audit/stats",
    "mixed flood keeps key.created in /audit/export",
    "failed logins with 4 KB paths keep audit pages small",
];

/// Sends `n` requests from `build(i)` over 4 keep-alive connections.
async fn send_many(gw: &TestGateway, n: usize, build: fn(usize) -> Req) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let next = next.clone();
        let (addr, host) = (gw.addr, gw.host());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                if conn.send(&build(i), &host).await.is_none() {
                    conn = Conn::open(addr).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn failed_login(i: usize) -> Req {
    Req::new("GET", "/keys", "").header("x-admin-key", format!("wrong-{i}"))
}

fn keyless_call(_: usize) -> Req {
    Req::mcp(CALL)
}

fn unknown_key_call(i: usize) -> Req {
    Req::mcp(CALL).header("x-api-key", format!("pg_{i:048x}"))
}

async fn audit_has(gw: &TestGateway, event_type: &str) -> Result<(), String> {
    let r = gw
        .admin("GET", &format!("/audit?types={event_type}&limit=10"), "")
        .await;
    let n = r.json()["events"].as_array().map_or(0, Vec::len);
    ensure(n > 0, || {
        format!("{event_type} was evicted from GET /audit ({})", r.brief())
    })
}

async fn audit_case(name: &str) -> Result<(), String> {
    let gw = start(open_cfg()).await;
    let key = gw.create(&json!({"name": "kept", "credits": 5})).await?;
    match name {
        "10,001 failed admin logins keep key.created" => {
            send_many(&gw, FLOOD, failed_login).await;
            audit_has(&gw, "key.created").await
        }
        "10,001 failed admin logins keep key.topup and key.revoked" => {
            gw.admin(
                "POST",
                "/topup",
                &json!({"key": key, "credits": 5}).to_string(),
            )
            .await;
            gw.admin("POST", "/keys/revoke", &json!({"key": key}).to_string())
                .await;
            send_many(&gw, FLOOD, failed_login).await;
            audit_has(&gw, "key.topup").await?;
            audit_has(&gw, "key.revoked").await
        }
        "10,001 failed admin logins keep admin.alerts_configured" => {
            let body = json!({"rules": [{"type": "credits_low", "threshold": 1}]}).to_string();
            let r = gw.admin("POST", "/alerts", &body).await;
            ensure(r.status == 200, || r.brief())?;
            send_many(&gw, FLOOD, failed_login).await;
            audit_has(&gw, "admin.alerts_configured").await
        }
        "10,001 keyless calls keep key.created" => {
            send_many(&gw, FLOOD, keyless_call).await;
            audit_has(&gw, "key.created").await
        }
        "10,001 unknown-key calls keep key.created" => {
            send_many(&gw, FLOOD, unknown_key_call).await;
            audit_has(&gw, "key.created").await
        }
        "mixed flood keeps key.created in /audit/stats" => {
            send_many(&gw, 5_001, failed_login).await;
            send_many(&gw, 5_001, keyless_call).await;
            let stats = gw.admin("GET", "/audit/stats", "").await.json();
            let n = stats["eventsByType"]["key.created"].as_u64().unwrap_or(0);
            ensure(n > 0, || format!("stats: {}", stats["eventsByType"]))
        }
        "mixed flood keeps key.created in /audit/export" => {
            send_many(&gw, 5_001, unknown_key_call).await;
            send_many(&gw, 5_001, failed_login).await;
            let r = gw.admin("GET", "/audit/export?format=json", "").await;
            ensure(r.text().contains("key.created"), || {
                format!("export of {} bytes has no key.created", r.body.len())
            })
        }
        "failed logins with 4 KB paths keep audit pages small" => {
            send_many(&gw, 2_000, |i| {
                Req::new("GET", &format!("/keys/{i}{}", "p".repeat(4096)), "")
                    .header("x-admin-key", "wrong")
            })
            .await;
            audit_has(&gw, "key.created").await?;
            let r = gw.admin("GET", "/audit?limit=1000", "").await;
            ensure(r.body.len() < 2 * REPORT_BOUND, || {
                format!("a page of 1,000 events is {} bytes", r.body.len())
            })
        }
        other => Err(format!("no such case {other}")),
    }?;
    let leaks = gw.leaks();
    ensure(leaks.is_empty(), || format!("leaks: {leaks:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_audit_flooding() {
    let mut f = Failures::default();
    for name in AUDIT_CASES {
        f.case(name, audit_case(name).await);
    }
    f.assert_none("audit flooding", AUDIT_CASES.len());
}

// ---------------------------------------------------------------------------------------
// Family: leaks. No answer, export or state file shows the admin key, a full API key (but
// the one create/rotate answer), a panic, a stack trace or a local path (SPEC §7). Every
// family above also scans every answer it got.
// ---------------------------------------------------------------------------------------

const LEAK_CASES: &[&str] = &[
    "mcp: admin key sent as API key",
    "mcp: unknown full-format key",
    "mcp: denial for lack of credits",
    "mcp: parse error",
    "mcp: body too large",
    "mcp: invalid params",
    "mcp: batch",
    "mcp: allowed call and its headers",
    "mcp: tools/list with a key",
    "admin: API key as admin key",
    "admin: unknown path",
    "admin: wrong method",
    "admin: body too large",
    "admin: malformed JSON names no parser position",
    "admin: wrong type names no parser position",
    "admin: top-up answer",
    "admin: ACL answer",
    "admin: tags answer",
    "admin: IP answer",
    "admin: limits answer",
    "admin: quota answer",
    "admin: expiry answer",
    "admin: search answer",
    "admin: key listing",
    "admin: revoke answer",
    "admin: top-up of an unknown full key",
    "admin: rotate answer shows only the new key",
    "admin: create answer shows only the new key",
    "GET /balance",
    "GET /status",
    "GET /usage",
    "GET /usage?format=csv",
    "GET /audit",
    "GET /audit/export",
    "GET /audit/export?format=csv",
    "GET /audit/stats",
    "GET /metrics",
    "GET /analytics",
    "GET /alerts",
    "GET /pricing",
    "GET /.well-known/mcp-payment",
    "GET /",
    "state file holds no plaintext key",
    "audit trail holds no full key",
];

struct LeakCtx {
    key: String,
    empty: String,
    unknown: String,
}

async fn leak_case(gw: &TestGateway, c: &LeakCtx, name: &str) -> Result<(), String> {
    let status = |r: &Resp, want: u16| {
        ensure(r.status == want, || {
            format!("expected {want}: {}", r.brief())
        })
    };
    let admin_post = |path: &'static str, body: Value| async move {
        gw.admin("POST", path, &body.to_string()).await
    };
    let key = c.key.as_str();
    match name {
        "mcp: admin key sent as API key" => {
            let r = gw.mcp(Some(ADMIN_KEY), CALL).await;
            ensure(r.reason() == "invalid_api_key", || r.brief())
        }
        "mcp: unknown full-format key" => {
            let r = gw.mcp(Some(&c.unknown), CALL).await;
            ensure(r.reason() == "invalid_api_key", || r.brief())
        }
        "mcp: denial for lack of credits" => {
            let r = gw.mcp(Some(&c.empty), CALL).await;
            ensure(r.code() == -32402, || r.brief())
        }
        "mcp: parse error" => {
            let r = gw.mcp(Some(key), "{\"jsonrpc\":").await;
            ensure(r.code() == -32700, || r.brief())
        }
        "mcp: body too large" => {
            let body = call_with_args(json!({"pad": "a".repeat(1_100_000)}));
            status(&gw.mcp(Some(key), &body).await, 413)
        }
        "mcp: invalid params" => {
            let r = gw
                .mcp(
                    Some(key),
                    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
                )
                .await;
            ensure(r.code() == -32602, || r.brief())
        }
        "mcp: batch" => {
            let r = gw.mcp(Some(key), &format!("[{CALL}]")).await;
            ensure(r.status != 0, || "no answer".into())
        }
        "mcp: allowed call and its headers" => {
            let r = gw.mcp(Some(key), CALL).await;
            ensure(
                r.has_result() && r.header("x-credits-remaining").is_some(),
                || r.brief(),
            )
        }
        "mcp: tools/list with a key" => {
            let r = gw
                .mcp(
                    Some(key),
                    r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
                )
                .await;
            ensure(r.has_result(), || r.brief())
        }
        "admin: API key as admin key" => status(
            &gw.send(Req::new("GET", "/keys", "").header("x-admin-key", key))
                .await,
            401,
        ),
        "admin: unknown path" => status(&gw.admin("GET", "/nope", "").await, 404),
        "admin: wrong method" => status(&gw.admin("DELETE", "/keys", "").await, 405),
        "admin: body too large" => {
            let body = json!({"name": "a".repeat(2 << 20)}).to_string();
            status(&gw.admin("POST", "/keys", &body).await, 413)
        }
        "admin: malformed JSON names no parser position" => {
            let r = gw.admin("POST", "/keys", "{\"name\":\n\n  ").await;
            status(&r, 400)?;
            ensure(
                !r.text().contains("line") && !r.text().contains("column"),
                || r.brief(),
            )
        }
        "admin: wrong type names no parser position" => {
            let r = admin_post("/topup", json!({"key": key, "credits": "abc"})).await;
            status(&r, 400)?;
            ensure(
                !r.text().contains("line") && !r.text().contains("column"),
                || r.brief(),
            )
        }
        "admin: top-up answer" => status(
            &admin_post("/topup", json!({"key": key, "credits": 5})).await,
            200,
        ),
        "admin: ACL answer" => status(
            &admin_post("/keys/acl", json!({"key": key, "deniedTools": ["nope"]})).await,
            200,
        ),
        "admin: tags answer" => status(
            &admin_post("/keys/tags", json!({"key": key, "tags": {"team": "x"}})).await,
            200,
        ),
        "admin: IP answer" => status(
            &admin_post(
                "/keys/ip",
                json!({"key": key, "ipAllowlist": ["127.0.0.1"]}),
            )
            .await,
            200,
        ),
        "admin: limits answer" => status(
            &admin_post("/limits", json!({"key": key, "spendingLimit": 1000})).await,
            200,
        ),
        "admin: quota answer" => status(
            &admin_post("/keys/quota", json!({"key": key, "dailyCallLimit": 1000})).await,
            200,
        ),
        "admin: expiry answer" => status(
            &admin_post("/keys/expiry", json!({"key": key, "expiresIn": 86_400})).await,
            200,
        ),
        "admin: search answer" => {
            let r = admin_post("/keys/search", json!({"tags": {"team": "x"}})).await;
            ensure(
                r.status == 200 && r.json()["count"].as_u64() >= Some(1),
                || r.brief(),
            )
        }
        "admin: key listing" => status(&gw.admin("GET", "/keys", "").await, 200),
        "admin: revoke answer" => {
            let doomed = gw.key(1).await;
            status(
                &admin_post("/keys/revoke", json!({"key": doomed})).await,
                200,
            )
        }
        "admin: top-up of an unknown full key" => status(
            &admin_post("/topup", json!({"key": c.unknown, "credits": 5})).await,
            404,
        ),
        "admin: rotate answer shows only the new key" => {
            let old = gw.key(3).await;
            let r = gw.rotate(&old).await;
            let new = r.json()["newKey"].as_str().unwrap_or_default().to_string();
            let text = r.whole();
            ensure(r.status == 200 && !new.is_empty(), || r.brief())?;
            ensure(!text.contains(&old) && !text.contains(ADMIN_KEY), || {
                "the rotate answer shows the old key or the admin key".into()
            })?;
            ensure(text.matches(&new).count() == 1, || {
                "the new key is shown more than once".into()
            })
        }
        "admin: create answer shows only the new key" => {
            let r = gw
                .send_unscanned(TestGateway::admin_req(
                    "POST",
                    "/keys",
                    r#"{"name":"fresh"}"#,
                ))
                .await;
            let new = r.json()["key"].as_str().unwrap_or_default().to_string();
            gw.secret(&new);
            let text = r.whole();
            ensure(r.status == 201 && !new.is_empty(), || r.brief())?;
            ensure(!text.contains(ADMIN_KEY) && !text.contains(key), || {
                "shows another secret".into()
            })?;
            ensure(text.matches(&new).count() == 1, || {
                "the new key is shown more than once".into()
            })
        }
        "GET /balance" => {
            // The key's allowlist is 127.0.0.1 by now, so the holder still reads it.
            status(
                &gw.send(Req::new("GET", "/balance", "").header("x-api-key", key))
                    .await,
                200,
            )
        }
        "GET /status"
        | "GET /usage"
        | "GET /usage?format=csv"
        | "GET /audit"
        | "GET /audit/export"
        | "GET /audit/export?format=csv"
        | "GET /audit/stats"
        | "GET /metrics"
        | "GET /analytics"
        | "GET /alerts"
        | "GET /pricing"
        | "GET /.well-known/mcp-payment"
        | "GET /" => {
            let path = name.trim_start_matches("GET ");
            status(&gw.admin("GET", path, "").await, 200)
        }
        "state file holds no plaintext key" => {
            let dir = state_dir("leaks");
            let path = dir.join("state.json");
            gw.gate.store().save_to(&path).map_err(|e| e.to_string())?;
            let text =
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            let _ = std::fs::remove_dir_all(&dir);
            let secrets = [key.to_string(), c.empty.clone(), ADMIN_KEY.to_string()];
            ensure(text.contains("keyHash"), || "not a state file".into())?;
            match gw::leak_in(&text, &secrets) {
                Some(l) => Err(format!("{l} in the state file")),
                None => Ok(()),
            }
        }
        "audit trail holds no full key" => {
            let events = serde_json::to_string(&gw.audit.export()).unwrap_or_default();
            let secrets = [
                key.to_string(),
                c.empty.clone(),
                c.unknown.clone(),
                ADMIN_KEY.to_string(),
            ];
            ensure(events.contains("key.created"), || "no audit events".into())?;
            match gw::leak_in(&events, &secrets) {
                Some(l) => Err(format!("{l} in the audit trail")),
                None => Ok(()),
            }
        }
        other => Err(format!("no such case {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_leaks() {
    let gw = start(open_cfg()).await;
    let key = gw
        .create(&json!({"name": "leaky", "credits": 100}))
        .await
        .expect("key");
    let empty = gw
        .create(&json!({"name": "empty", "credits": 0}))
        .await
        .expect("key");
    let unknown = paygate_mcp::generate_key().unwrap();
    gw.secret(&unknown);
    let ctx = LeakCtx {
        key,
        empty,
        unknown,
    };
    let mut f = Failures::default();
    for name in LEAK_CASES {
        let seen = gw.leaks().len();
        let outcome = leak_case(&gw, &ctx, name).await;
        let new: Vec<String> = gw.leaks()[seen..].to_vec();
        f.case(
            name,
            outcome.and(ensure(new.is_empty(), || format!("leaked: {new:?}"))),
        );
    }
    f.assert_none("leaks", LEAK_CASES.len());
}

// ---------------------------------------------------------------------------------------

#[test]
fn case_count_is_at_least_200() {
    let families = [
        ("gating bypass", gating_case_count()),
        ("id tricks", id_case_count()),
        ("refund abuse", refund_cases().len()),
        ("auth", AUTH_CALLS.len() + AUTH_SPECIAL.len()),
        ("admin input", admin_case_count()),
        (
            "state-file damage",
            STATE_REFUSED.len() + STATE_SKIPPED.len() + STATE_SPECIAL.len(),
        ),
        ("memory bounds", MEMORY_CASES.len()),
        ("audit flooding", AUDIT_CASES.len()),
        ("leaks", LEAK_CASES.len()),
    ];
    for (family, n) in families {
        assert!(n >= 5, "{family} has only {n} cases");
    }
    let total: usize = families.iter().map(|(_, n)| n).sum();
    assert!(total >= 200, "{total} hostile cases");
    // Names are distinct within each table, so no case is counted twice.
    let mut names: Vec<String> = METHOD_PROBES
        .iter()
        .chain(PATH_PROBES)
        .chain(BODY_PROBES)
        .chain(HEADER_PROBES)
        .map(|p| p.name.to_string())
        .chain(framing_cases().iter().map(|c| c.name.to_string()))
        .chain(id_cases().into_iter().map(|c| c.name))
        .chain(refund_cases().into_iter().map(|c| c.name))
        .chain(AUTH_CALLS.iter().map(|c| c.0.to_string()))
        .chain(AUTH_SPECIAL.iter().map(|s| s.to_string()))
        .chain(ADMIN_TRAILING.iter().map(|c| c.0.to_string()))
        .chain(ADMIN_VALIDATION.iter().map(|c| c.0.to_string()))
        .chain(REVOKED_EDITS.iter().map(|c| c.0.to_string()))
        .chain(STATE_REFUSED.iter().map(|c| format!("refused {}", c.0)))
        .chain(STATE_SKIPPED.iter().map(|c| format!("skipped {}", c.0)))
        .chain(STATE_SPECIAL.iter().map(|s| s.to_string()))
        .chain(MEMORY_CASES.iter().map(|s| s.to_string()))
        .chain(AUDIT_CASES.iter().map(|s| s.to_string()))
        .chain(LEAK_CASES.iter().map(|s| s.to_string()))
        .collect();
    let listed = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), listed, "duplicate case names");
}
