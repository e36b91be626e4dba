//! `PayGateClient` against an MCP server that uses the rest of Streamable HTTP: answers on SSE
//! streams it keeps open, requests of its own on the stream (which it waits for), streams cut
//! before the answer and resumed with `Last-Event-ID`, sessions it forgets (404), and the
//! protocol version it chooses.
#![cfg(feature = "client")]

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parking_lot::Mutex;
use paygate_mcp::client::{Credentials, PayGateClient};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// An SSE body fed by a channel; it stays open while its sender lives.
struct Chunks(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

fn event(id: &str, message: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\nevent: message\ndata: {message}\n\n"))
}

fn sse(rx: mpsc::Receiver<Bytes>) -> Response {
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(Chunks(rx)),
    )
        .into_response()
}

/// What the server saw and holds.
#[derive(Default)]
struct Server {
    /// Sessions opened so far; the current one is `s<count>`.
    sessions: Mutex<u32>,
    /// Protocol versions sent with requests after `initialize`.
    versions: Mutex<Vec<String>>,
    /// The client's answer to the server's ping.
    ping_reply: Mutex<Option<Value>>,
    ping_answered: Notify,
    /// The id of the call whose stream was cut, for the resumed stream.
    cut_call: Mutex<Option<Value>>,
    /// `Last-Event-ID`s asked for.
    resumed_from: Mutex<Vec<String>>,
    /// Streams kept open until the test ends.
    open: Mutex<Vec<mpsc::Sender<Bytes>>>,
    /// The protocol version `initialize` answers.
    version: Mutex<Option<String>>,
}

fn answer(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}})
}

async fn post(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = message.get("id").cloned();
    let method = message["method"].as_str().unwrap_or_default().to_string();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if method == "initialize" {
        let session = {
            let mut n = server.sessions.lock();
            *n += 1;
            format!("s{n}")
        };
        if header("mcp-session-id").is_some() {
            return (
                StatusCode::BAD_REQUEST,
                "initialize opens a session; it names none",
            )
                .into_response();
        }
        let version = server
            .version
            .lock()
            .clone()
            .unwrap_or_else(|| "2025-03-26".into());
        let result = json!({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": version, "capabilities": {"tools": {}},
            "serverInfo": {"name": "streams", "version": "0"}}});
        return ([("mcp-session-id", session)], axum::Json(result)).into_response();
    }
    let current = format!("s{}", *server.sessions.lock());
    if header("mcp-session-id").as_deref() != Some(current.as_str()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    server
        .versions
        .lock()
        .push(header("mcp-protocol-version").unwrap_or_default());
    let Some(id) = id.filter(|_| !method.is_empty()) else {
        // A notification, or the client's answer to our request.
        if message["id"] == "srv-1" {
            *server.ping_reply.lock() = Some(message);
            server.ping_answered.notify_one();
        }
        return StatusCode::ACCEPTED.into_response();
    };
    let (tx, rx) = mpsc::channel(8);
    match message["params"]["name"].as_str() {
        Some("waits_for_ping") => {
            let server = server.clone();
            tokio::spawn(async move {
                let ping = json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"});
                let _ = tx.send(event("a1", &ping)).await;
                let answered = server.ping_answered.notified();
                if tokio::time::timeout(Duration::from_secs(5), answered)
                    .await
                    .is_ok()
                {
                    let _ = tx.send(event("a2", &answer(&id, "after the ping"))).await;
                }
                // The stream stays open after the answer.
                server.open.lock().push(tx);
            });
            sse(rx)
        }
        Some("cut") => {
            *server.cut_call.lock() = Some(id);
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                  "params": {"progressToken": 1, "progress": 1}});
            let _ = tx.send(event("c1", &progress)).await;
            drop(tx);
            sse(rx)
        }
        // An answer that tries to move the session elsewhere.
        Some("moves_session") => (
            [("mcp-session-id", "elsewhere")],
            axum::Json(answer(&id, "moved?")),
        )
            .into_response(),
        // A limit in front of the server: 429 with no JSON-RPC body.
        Some("proxy_429") => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response(),
        _ => axum::Json(answer(&id, "plain")).into_response(),
    }
}

/// `GET` with `Last-Event-ID: c1`: the rest of the cut stream.
async fn get(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    server.resumed_from.lock().push(last.clone());
    let Some(id) = server.cut_call.lock().clone().filter(|_| last == "c1") else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(event("c2", &answer(&id, "resumed"))).await;
    sse(rx)
}

async fn start() -> (Arc<Server>, PayGateClient, tokio::sync::oneshot::Sender<()>) {
    let server = Arc::new(Server::default());
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(post).get(get))
        .with_state(server.clone());
    let (addr, stop) = common::mcp::serve_at(app).await;
    let client = PayGateClient::builder(
        &format!("http://{addr}"),
        Credentials::ApiKey("pg_streams".into()),
    )
    .timeout(Duration::from_secs(20))
    .build()
    .unwrap();
    client.initialize().await.unwrap();
    (server, client, stop)
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_answer_on_a_stream_left_open_returns_at_once_and_server_pings_are_answered() {
    let (server, client, _stop) = start().await;
    let started = Instant::now();
    let result = client.call_tool("waits_for_ping", json!({})).await.unwrap();
    assert_eq!(text(&result), "after the ping");
    // The stream is still open: the call did not wait for its end (the timeout is 20 s).
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        server.open.lock().len(),
        1,
        "the server kept the stream open"
    );
    assert_eq!(
        server.ping_reply.lock().clone(),
        Some(json!({"jsonrpc": "2.0", "id": "srv-1", "result": {}}))
    );
}

#[tokio::test]
async fn a_stream_cut_before_the_answer_is_resumed_from_its_last_event_id() {
    let (server, client, _stop) = start().await;
    let result = client.call_tool("cut", json!({})).await.unwrap();
    assert_eq!(text(&result), "resumed");
    assert_eq!(*server.resumed_from.lock(), vec!["c1".to_string()]);
}

#[tokio::test]
async fn a_forgotten_session_is_opened_again_and_the_call_goes_through() {
    let (server, client, _stop) = start().await;
    client.call_tool("echo", json!({})).await.unwrap();
    // The server restarts its sessions: ours answers 404 from now on.
    *server.sessions.lock() += 1;
    let result = client.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(text(&result), "plain");
    assert_eq!(
        *server.sessions.lock(),
        3,
        "one new session, opened by the client"
    );
}

#[tokio::test]
async fn requests_name_the_protocol_version_the_server_chose() {
    let (server, client, _stop) = start().await;
    client.call_tool("echo", json!({})).await.unwrap();
    client.list_tools().await.unwrap();
    let versions = server.versions.lock().clone();
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|v| v == "2025-03-26"), "{versions:?}");
}

#[tokio::test]
async fn calls_that_meet_a_forgotten_session_together_open_one_new_session() {
    let (server, client, _stop) = start().await;
    *server.sessions.lock() += 1;
    let calls: Vec<_> = (0..4)
        .map(|_| client.call_tool("echo", json!({})))
        .collect();
    for outcome in common::join_all(calls).await {
        outcome.unwrap();
    }
    assert_eq!(
        *server.sessions.lock(),
        3,
        "one new session for all four calls"
    );
}

#[tokio::test]
async fn only_initialize_sets_the_session() {
    let (server, client, _stop) = start().await;
    client.call_tool("moves_session", json!({})).await.unwrap();
    let result = client.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(
        text(&result),
        "plain",
        "still in the session initialize opened"
    );
    assert_eq!(*server.sessions.lock(), 1);
}

#[tokio::test]
async fn a_protocol_version_that_is_none_is_refused_and_not_sent() {
    let (server, client, _stop) = start().await;
    *server.version.lock() = Some("2025-03-26\r\nX-Injected: 1".into());
    let err = client.initialize().await.unwrap_err();
    assert!(
        matches!(err, paygate_mcp::client::ClientError::Transport(_)),
        "{err:?}"
    );
    *server.version.lock() = None;
    client.initialize().await.unwrap();
    client.call_tool("echo", json!({})).await.unwrap();
    assert!(server.versions.lock().iter().all(|v| v == "2025-03-26"));
}

#[tokio::test]
async fn a_429_without_a_json_rpc_answer_is_a_rate_limit() {
    let (_server, client, _stop) = start().await;
    let err = client.call_tool("proxy_429", json!({})).await.unwrap_err();
    assert_eq!(
        err,
        paygate_mcp::client::ClientError::RateLimited {
            reason: "http_429".into(),
            retry_after: Some(Duration::from_secs(7)),
        }
    );
}
