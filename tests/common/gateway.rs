//! A whole gateway on a loopback port, as `examples/gateway.rs` serves it: `/mcp` through
//! `PayGateLayer` over a downstream that counts every request it receives, and the admin API
//! on the same port. Requests go over raw TCP, so a test controls every byte (methods,
//! duplicate headers, framing, pipelining), and every answer is scanned for leaked secrets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::middleware;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::{
    AdminEvent, AdminService, AuditLog, EventSink, FanOut, Gate, KeyDigest, KeyRecord, KeyStore,
    ManualClock, MemoryKeyStore, Metrics, PayGateConfig, PayGateLayer, UsageEvent,
};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{Service, ServiceBuilder};

use super::mcp::client_addr;

/// The admin key of every test gateway (long enough for any start-up check).
pub const ADMIN_KEY: &str = "admin_5b1f0c9e7d3a4f2e8c6b0a9d7e5f3c1b";

/// How the downstream writes the id of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdEcho {
    /// The request's id exactly as its bytes were sent (`1.0` stays `1.0`).
    Raw,
    /// The id parsed into a `serde_json::Value` and written again (`1e0` becomes `1.0`).
    Reserialized,
    /// Always the integer `1`, as a server that reads ids into integers does.
    One,
}

/// What the downstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A JSON result (`tools/list`: `echo` and `search`; a call: its arguments as text).
    Result,
    /// The same result as one SSE event.
    Sse,
    /// A result event, then an error event for the same id, in one SSE stream.
    SseResultThenError,
    /// A JSON-RPC error to a `tools/call`.
    RpcError,
    /// A `CallToolResult` with `isError: true`.
    ToolError,
    /// This HTTP status with a plain-text body to a `tools/call` (others get a result).
    Status(u16),
    /// Like an MCP Streamable HTTP server: 406 unless `Accept` names both JSON and SSE,
    /// 415 unless `Content-Type` is JSON, 403 for a foreign `Host`; else a result.
    Strict,
}

/// What the downstream saw and how it answers.
pub struct DownstreamState {
    /// Every request received.
    pub calls: AtomicUsize,
    /// How it answers.
    pub reply: Mutex<Reply>,
    /// How it writes ids.
    pub echo: Mutex<IdEcho>,
}

/// The MCP service behind the gate.
#[derive(Clone)]
pub struct Downstream(pub Arc<DownstreamState>);

#[derive(serde::Deserialize)]
struct Envelope<'a> {
    /// `None` only when there is no id at all (`null` is an id).
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

fn respond(status: u16, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn header_has(req: &http::request::Parts, name: &str, needle: &str) -> bool {
    req.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(needle))
}

impl Downstream {
    fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> Response<Full<Bytes>> {
        let reply = *self.0.reply.lock();
        let echo = *self.0.echo.lock();
        if reply == Reply::Strict {
            let accept_ok = header_has(parts, "accept", "application/json")
                && header_has(parts, "accept", "text/event-stream");
            if !accept_ok {
                return respond(
                    406,
                    "text/plain",
                    "Not Acceptable: Accept must name application/json and text/event-stream"
                        .into(),
                );
            }
            if !header_has(parts, "content-type", "application/json") {
                return respond(415, "text/plain", "Unsupported Media Type".into());
            }
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            if !(host.starts_with("127.0.0.1") || host.starts_with("localhost")) {
                return respond(403, "text/plain", "Forbidden: Host".into());
            }
        }
        let Ok(env) = serde_json::from_slice::<Envelope<'_>>(body) else {
            return respond(
                200,
                "application/json",
                r#"{"jsonrpc":"2.0","id":null,"result":{}}"#.into(),
            );
        };
        let Some(raw_id) = env.id else {
            // A notification: accepted, no answer.
            return respond(202, "application/json", String::new());
        };
        let id = match echo {
            IdEcho::Raw => raw_id.get().to_string(),
            IdEcho::Reserialized => serde_json::from_str::<Value>(raw_id.get())
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "null".into()),
            IdEcho::One => "1".into(),
        };
        let method = env.method.unwrap_or_default();
        let is_call = method == "tools/call";
        if let (true, Reply::Status(code)) = (is_call, reply) {
            return respond(code, "text/plain", format!("refused with {code}"));
        }
        let args = env
            .params
            .as_ref()
            .and_then(|p| p.get("arguments"))
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".into());
        let text = Value::String(args).to_string();
        let result = if method == "initialize" {
            r#"{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"counting-test-server","version":"0.0.0"}}"#.to_string()
        } else if method == "tools/list" {
            r#"{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"search","inputSchema":{"type":"object"}}]}"#.to_string()
        } else if is_call && reply == Reply::ToolError {
            format!(r#"{{"content":[{{"type":"text","text":{text}}}],"isError":true}}"#)
        } else {
            format!(r#"{{"content":[{{"type":"text","text":{text}}}],"isError":false}}"#)
        };
        let ok = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
        let err = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32000,"message":"tool failed"}}}}"#
        );
        match (is_call, reply) {
            (true, Reply::RpcError) => respond(200, "application/json", err),
            (_, Reply::Sse) => respond(
                200,
                "text/event-stream",
                format!("event: message\ndata: {ok}\n\n"),
            ),
            (true, Reply::SseResultThenError) => respond(
                200,
                "text/event-stream",
                format!("event: message\ndata: {ok}\n\nevent: message\ndata: {err}\n\n"),
            ),
            _ => respond(200, "application/json", ok),
        }
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl Service<Request<Full<Bytes>>> for Downstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(this.answer(&parts, &body))
        })
    }
}

/// Counts the gate's decisions and admin events by type.
#[derive(Default)]
pub struct Tally {
    /// Allowed usage events.
    pub allowed: AtomicUsize,
    /// All usage events.
    pub usage: AtomicUsize,
    /// Admin events by type.
    pub admin: Mutex<HashMap<String, usize>>,
    /// Deny reasons of usage events, in order (at most 10,000 kept).
    pub reasons: Mutex<Vec<String>>,
}

impl EventSink for Tally {
    fn usage(&self, e: &UsageEvent) {
        self.usage.fetch_add(1, Ordering::SeqCst);
        if e.allowed {
            self.allowed.fetch_add(1, Ordering::SeqCst);
        }
        let mut reasons = self.reasons.lock();
        if reasons.len() < 10_000 {
            reasons.push(e.deny_reason.clone().unwrap_or_default());
        }
    }
    fn admin(&self, e: &AdminEvent) {
        *self.admin.lock().entry(e.event_type.clone()).or_insert(0) += 1;
    }
}

impl Tally {
    /// How many admin events of `event_type` were emitted.
    pub fn admin_count(&self, event_type: &str) -> usize {
        self.admin.lock().get(event_type).copied().unwrap_or(0)
    }
}

/// One HTTP request, written byte for byte.
#[derive(Debug, Clone)]
pub struct Req {
    /// The method token, sent as is.
    pub method: String,
    /// The request target, sent as is.
    pub target: String,
    /// Headers in order (duplicates allowed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// Add `Content-Length` (unless a `content-length` or `transfer-encoding` header is given).
    pub auto_length: bool,
}

impl Req {
    /// `method target` with `body` and no headers.
    pub fn new(method: &str, target: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: body.into(),
            auto_length: true,
        }
    }

    /// A JSON-RPC POST to `/mcp` as an MCP client sends it.
    pub fn mcp(body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", "/mcp", body)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
    }

    /// Adds a header (a duplicate when the name is already there).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Removes every header called `name`.
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Adds `X-API-Key: key` when a key is given.
    pub fn key(self, key: Option<&str>) -> Self {
        match key {
            Some(k) => self.header("x-api-key", k),
            None => self,
        }
    }

    /// The request's bytes, with `Host: host` unless a host header is given.
    pub fn bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        let has = |n: &str| self.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
        if !has("host") {
            out.extend_from_slice(format!("host: {host}\r\n").as_bytes());
        }
        if self.auto_length && !has("content-length") && !has("transfer-encoding") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// One HTTP response as received.
#[derive(Debug, Clone, Default)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (chunked framing removed).
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON-RPC message: the body itself, or the first SSE `data:` event that parses.
    pub fn json(&self) -> Value {
        let text = self.text();
        serde_json::from_str(&text).unwrap_or_else(|_| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .next()
                .unwrap_or(Value::Null)
        })
    }

    /// The JSON-RPC error code, or 0.
    pub fn code(&self) -> i64 {
        self.json()["error"]["code"].as_i64().unwrap_or(0)
    }

    /// The denial reason, or "".
    pub fn reason(&self) -> String {
        self.json()["error"]["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the answer carries a JSON-RPC result.
    pub fn has_result(&self) -> bool {
        self.json().get("result").is_some()
    }

    /// The status line, headers and body as text, for leak scans.
    pub fn whole(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s.push_str(&self.text());
        s
    }

    /// A short description for failure messages.
    pub fn brief(&self) -> String {
        let text = self.text();
        let cut: String = text.chars().take(240).collect();
        format!("HTTP {} {cut}", self.status)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response from the front of `buf`; `None` when more bytes are needed.
/// `eof`: no more bytes will come (a body without length ends here).
fn parse_response(buf: &[u8], head: bool, eof: bool) -> Result<Option<(Resp, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    let start = end + 4;
    if (100..200).contains(&status) || head || status == 204 || status == 304 {
        return Ok(Some((resp, start)));
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut at = start;
        loop {
            let Some(line_end) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&buf[at..at + line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            at += line_end + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let Some(t) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                if t == 0 {
                    return Ok(Some((resp, at + 2)));
                }
                let Some(t_end) = find(&buf[at..], b"\r\n\r\n") else {
                    return Ok(None);
                };
                return Ok(Some((resp, at + t_end + 4)));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            resp.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| format!("bad length {len:?}"))?;
        if buf.len() < start + len {
            return Ok(None);
        }
        resp.body = buf[start..start + len].to_vec();
        return Ok(Some((resp, start + len)));
    }
    if eof {
        resp.body = buf[start..].to_vec();
        return Ok(Some((resp, buf.len())));
    }
    Ok(None)
}

/// One client connection, reading responses as they come.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        Self {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes`; false when the peer closed.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(20), self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Closes the sending half.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Whether the server closed the connection.
    pub fn closed(&self) -> bool {
        self.eof
    }

    /// The next response; `None` when the connection closed or stayed silent for `idle`.
    pub async fn read(&mut self, head: bool, idle: Duration) -> Option<Resp> {
        loop {
            match parse_response(&self.buf, head, self.eof) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&resp.status) {
                        continue;
                    }
                    return Some(resp);
                }
                Ok(None) if self.eof => return None,
                Ok(None) => {}
                Err(_) => return None,
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout(idle, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Sends `req` and reads its response.
    pub async fn send(&mut self, req: &Req, host: &str) -> Option<Resp> {
        if !self.write(&req.bytes(host)).await {
            return None;
        }
        self.read(req.method == "HEAD", Duration::from_secs(30))
            .await
    }
}

/// A running gateway, stopped when dropped.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its gate (memory store, manual clock).
    pub gate: Arc<Gate<MemoryKeyStore>>,
    /// The gate's clock.
    pub clock: Arc<ManualClock>,
    /// The audit trail the admin API serves.
    pub audit: Arc<AuditLog>,
    /// Decision and event counts.
    pub tally: Arc<Tally>,
    /// The downstream's state.
    pub downstream: Arc<DownstreamState>,
    secrets: Mutex<Vec<String>>,
    leaks: Mutex<Vec<String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config from its JSON form (the SPEC's field names), or why it was refused.
pub fn config(json: Value) -> Result<PayGateConfig, String> {
    PayGateConfig::from_json_str(&json.to_string()).map_err(|e| e.to_string())
}

/// Where in `text` a full generated API key (`pg_` + 48 lowercase hex) appears.
pub fn full_key_in(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = find(&b[from..], b"pg_") {
        let start = from + i + 3;
        let run = b[start..]
            .iter()
            .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .count();
        if run >= 48 {
            return Some(text[start - 3..start + 48].to_string());
        }
        from = start;
    }
    None
}

/// What in `text` must never be shown: a secret, a full key, a panic or a local path.
pub fn leak_in(text: &str, secrets: &[String]) -> Option<String> {
    if let Some(s) = secrets
        .iter()
        .find(|s| !s.is_empty() && text.contains(s.as_str()))
    {
        let shown: String = s.chars().take(10).collect();
        return Some(format!("secret {shown}..."));
    }
    if let Some(k) = full_key_in(text) {
        return Some(format!("full key {}...", &k[..10]));
    }
    [
        "panicked",
        "RUST_BACKTRACE",
        "/work/",
        "src/",
        "stack backtrace",
    ]
    .iter()
    .find(|m| text.contains(*m))
    .map(|m| format!("{m:?}"))
}

impl TestGateway {
    /// Starts a gateway over `cfg`; `Err` when the gate refuses the config.
    pub async fn start(cfg: PayGateConfig) -> Result<Self, String> {
        Self::start_with_admin_key(cfg, ADMIN_KEY).await
    }

    /// Starts a gateway whose admin API is guarded by `admin_key`.
    pub async fn start_with_admin_key(cfg: PayGateConfig, admin_key: &str) -> Result<Self, String> {
        let clock = super::clock_at(super::T0);
        let metrics = Arc::new(Metrics::new(clock.clone()));
        let audit = Arc::new(AuditLog::new(clock.clone()));
        let tally = Arc::new(Tally::default());
        let sinks: Vec<Arc<dyn EventSink>> = vec![metrics.clone(), audit.clone(), tally.clone()];
        let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone())
            .map_err(|e| format!("config refused: {e}"))?
            .with_event_sink(Arc::new(FanOut(sinks)));
        let gate = Arc::new(gate);
        let downstream = Arc::new(DownstreamState {
            calls: AtomicUsize::new(0),
            reply: Mutex::new(Reply::Result),
            echo: Mutex::new(IdEcho::Raw),
        });
        let mcp = ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(gate.clone()))
            .service(Downstream(downstream.clone()));
        let admin = AdminService::new(gate.clone(), admin_key)
            .map_err(|e| e.to_string())?
            .with_metrics(metrics)
            .with_audit(audit.clone());
        let app = axum::Router::new()
            .nest_service("/mcp", mcp)
            .fallback_service(admin)
            .layer(middleware::from_fn(client_addr::client_addr));
        let (addr, tx) = super::mcp::serve_at(app).await;
        Ok(Self {
            addr,
            gate,
            clock,
            audit,
            tally,
            downstream,
            secrets: Mutex::new(vec![admin_key.to_string()]),
            leaks: Mutex::new(Vec::new()),
            stop: Some(tx),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Requests the downstream received so far.
    pub fn downstream_calls(&self) -> usize {
        self.downstream.calls.load(Ordering::SeqCst)
    }

    /// Allowed gate decisions so far.
    pub fn allowed(&self) -> usize {
        self.tally.allowed.load(Ordering::SeqCst)
    }

    /// Sets what the downstream answers.
    pub fn set_reply(&self, reply: Reply) {
        *self.downstream.reply.lock() = reply;
    }

    /// Sets how the downstream writes ids.
    pub fn set_echo(&self, echo: IdEcho) {
        *self.downstream.echo.lock() = echo;
    }

    /// Remembers a secret that must never appear in an answer.
    pub fn secret(&self, s: &str) {
        self.secrets.lock().push(s.to_string());
    }

    /// Every leak seen in an answer so far (`"<what> in <request>"`).
    pub fn leaks(&self) -> Vec<String> {
        self.leaks.lock().clone()
    }

    /// Scans an answer for leaks.
    pub fn scan(&self, label: &str, resp: &Resp) {
        let secrets = self.secrets.lock().clone();
        if let Some(leak) = leak_in(&resp.whole(), &secrets) {
            self.leaks.lock().push(format!("{leak} in {label}"));
        }
    }

    /// Scans the answer to a create or rotate request: the one new key it shows is allowed
    /// (and remembered as a secret from then on); anything else is a leak.
    fn scan_key_answer(&self, label: &str, resp: &Resp) {
        let json = resp.json();
        let new = json["key"].as_str().or_else(|| json["newKey"].as_str());
        let whole = match new {
            Some(k) if k.len() >= 16 => resp.whole().replacen(k, "<the new key>", 1),
            _ => resp.whole(),
        };
        let secrets = self.secrets.lock().clone();
        if let Some(leak) = leak_in(&whole, &secrets) {
            self.leaks.lock().push(format!("{leak} in {label}"));
        }
        if let Some(k) = new {
            self.secret(k);
        }
    }

    /// Creates a key with `credits` (through the gate) and remembers it as a secret.
    pub async fn key(&self, credits: u64) -> String {
        let key = self.gate.create_key("test", credits).await.expect("key");
        self.secret(&key);
        key
    }

    /// The stored record of `key`.
    pub async fn record(&self, key: &str) -> Option<KeyRecord> {
        self.gate
            .store()
            .get(&KeyDigest::of(key))
            .await
            .expect("store answers")
    }

    /// Credits of `key` (0 when unknown).
    pub async fn credits(&self, key: &str) -> u64 {
        self.record(key).await.map_or(0, |r| r.credits)
    }

    /// Sends `req` on a new connection, scans the answer; an empty response (status 0) when
    /// none came.
    pub async fn send(&self, req: Req) -> Resp {
        let mut conn = Conn::open(self.addr).await;
        let resp = conn.send(&req, &self.host()).await.unwrap_or_default();
        let label = format!("{} {}", req.method, req.target);
        let path = req.target.split('?').next().unwrap_or_default();
        if req.method == "POST" && (path == "/keys" || path == "/keys/rotate") {
            self.scan_key_answer(&label, &resp);
        } else {
            self.scan(&label, &resp);
        }
        resp
    }

    /// Sends `req` and does not scan the answer (it may hold a key shown once).
    pub async fn send_unscanned(&self, req: Req) -> Resp {
        let mut conn = Conn::open(self.addr).await;
        conn.send(&req, &self.host()).await.unwrap_or_default()
    }

    /// A JSON-RPC POST to `/mcp` with `key`.
    pub async fn mcp(&self, key: Option<&str>, body: &str) -> Resp {
        self.send(Req::mcp(body).key(key)).await
    }

    /// An admin request with the admin key.
    pub fn admin_req(method: &str, path: &str, body: &str) -> Req {
        Req::new(method, path, body)
            .header("x-admin-key", ADMIN_KEY)
            .header("content-type", "application/json")
    }

    /// An admin request, scanned.
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        self.send(Self::admin_req(method, path, body)).await
    }

    /// `POST /keys` with `body`; returns the full key, remembered as a secret.
    pub async fn create(&self, body: &Value) -> Result<String, String> {
        let resp = self
            .send(Self::admin_req("POST", "/keys", &body.to_string()))
            .await;
        match resp.json()["key"].as_str() {
            Some(k) if resp.status == 201 => Ok(k.to_string()),
            _ => Err(resp.brief()),
        }
    }

    /// `POST /keys/rotate`; the new key is remembered as a secret.
    pub async fn rotate(&self, key: &str) -> Resp {
        let body = serde_json::json!({ "key": key }).to_string();
        self.send(Self::admin_req("POST", "/keys/rotate", &body))
            .await
    }
}

/// The resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
