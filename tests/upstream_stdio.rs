//! `StdioUpstream` against a real third-party MCP server run over stdio (the reference
//! `@modelcontextprotocol/server-everything`, installed into `.test-deps/` by
//! `scripts/test.sh`), alone and behind `PayGateLayer`, plus small fake servers for the
//! failure modes a real server will not show on demand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use paygate_mcp::{
    Gate, KeyDigest, KeyStore, MemoryKeyStore, PayGateConfig, PayGateLayer, StdioConfig,
    StdioUpstream,
};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder, ServiceExt};

const EVERYTHING: &str =
    ".test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js";

/// The reference server's command line; fails the test (never skips) when it is missing.
fn everything() -> StdioConfig {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(EVERYTHING);
    assert!(
        script.is_file(),
        "{} is missing: run scripts/test.sh (it installs the reference MCP server for these tests)",
        script.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` is not runnable: run scripts/test.sh (it installs Node.js for these tests)"
    );
    StdioConfig::new(
        "node",
        [script.to_string_lossy().into_owned(), "stdio".into()],
    )
}

/// A fake MCP server: a Python program given as source.
fn python(source: &str) -> StdioConfig {
    StdioConfig::new("python3", ["-u", "-c", source])
}

/// Answers `initialize` and nothing else.
const SILENT_SERVER: &str = r#"
import json, sys
while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("method") == "initialize":
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "silent", "version": "0"}}}), flush=True)
"#;

/// Surrounds every answer with log lines, junk, an over-long line (a copy of the real answer
/// padded past the limit), an answer to an id nobody asked for and a notification.
const NOISY_SERVER: &str = r#"
import json, sys
def out(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()
def noise(msg_id):
    out("starting up... (a log line on stdout)")
    out("{not json")
    out("[1, 2, 3]")
    out(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"pad": "x" * 5000}}))
    out(json.dumps({"jsonrpc": "2.0", "id": 987654321, "result": {}}))
    out(json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}}))
    out("")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if "id" not in msg:
        continue
    noise(msg["id"])
    if msg.get("method") == "initialize":
        out(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "noisy", "version": "0"}}}))
    elif msg.get("method") == "tools/call":
        text = "Echo: " + msg["params"]["arguments"]["message"]
        out(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
            "content": [{"type": "text", "text": text}]}}))
"#;

/// Answers `initialize`, then never reads stdin again and never exits on its own.
const STUBBORN_SERVER: &str = r#"
import json, sys, time
msg = json.loads(sys.stdin.readline())
print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "serverInfo": {"name": "stubborn", "version": "0"}}}), flush=True)
while True:
    time.sleep(1)
"#;

async fn spawn(cfg: StdioConfig) -> StdioUpstream {
    StdioUpstream::spawn(cfg)
        .await
        .expect("the MCP server starts and completes the handshake")
}

fn rpc(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn echo(id: Value, message: &str) -> Value {
    rpc(
        id,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": message}}),
    )
}

/// POSTs `body` to `svc` (with `key` as `X-API-Key`) and returns the status and JSON body
/// (`Null` for an empty body).
async fn post<S, B>(svc: &S, key: Option<&str>, body: &Value) -> (StatusCode, Value)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let mut req = Request::post("http://localhost/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let resp = svc.clone().oneshot(req).await.expect("the service answers");
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("the body is readable")
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, value)
}

fn text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text result, got {answer}"))
}

async fn credits(gate: &Gate<MemoryKeyStore>, key: &str) -> u64 {
    gate.store()
        .get(&KeyDigest::of(key))
        .await
        .expect("store answers")
        .expect("key exists")
        .credits
}

fn gate(cfg: PayGateConfig) -> Arc<Gate<MemoryKeyStore>> {
    Arc::new(Gate::new(cfg).expect("valid config"))
}

/// Whether a process with `pid` exists (a zombie counts: it has not been reaped).
fn process_exists(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_until_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !process_exists(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !process_exists(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_and_echo_through_paygate_layer_are_billed() {
    let upstream = spawn(everything()).await;
    let gate = gate(PayGateConfig::default().with_tool_price("echo", 2));
    let key = gate.create_key("k", 10).await.expect("key created");
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream.clone());

    // The handshake is the gateway's: a client's initialize is answered from the cache.
    let init = rpc(
        json!(0),
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "test", "version": "1"}}),
    );
    let (status, answer) = post(&svc, Some(&key), &init).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["id"], 0);
    assert_eq!(
        answer["result"]["serverInfo"]["name"],
        "mcp-servers/everything"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, answer) = post(&svc, Some(&key), &initialized).await;
    assert_eq!((status, answer), (StatusCode::ACCEPTED, Value::Null));

    let (status, list) = post(&svc, Some(&key), &rpc(json!(1), "tools/list", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["id"], 1);
    let tools = list["result"]["tools"].as_array().expect("a tool list");
    let echo_tool = tools
        .iter()
        .find(|t| t["name"] == "echo")
        .expect("the reference server lists echo");
    assert_eq!(echo_tool["_pricing"]["creditsPerCall"], 2);
    assert!(
        tools.iter().all(|t| t.get("_pricing").is_some()),
        "every tool carries _pricing"
    );
    assert_eq!(credits(&gate, &key).await, 10, "listing is free");

    let (status, answer) = post(&svc, Some(&key), &echo(json!("call-1"), "hello stdio")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["id"], "call-1");
    assert_eq!(text(&answer), "Echo: hello stdio");
    assert_eq!(credits(&gate, &key).await, 8);

    // Without a key the gate denies before the child is reached.
    let (_, denied) = post(&svc, None, &echo(json!(2), "x")).await;
    assert_eq!(denied["error"]["data"]["reason"], "missing_api_key");
    assert_eq!(upstream.restarts(), 0);
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_calls_with_the_same_id_each_get_their_own_answer() {
    let upstream = spawn(everything()).await;
    let gate = gate(PayGateConfig::default());
    let key = gate.create_key("k", 100).await.expect("key created");
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream.clone());
    let calls = (0..20).map(|i| {
        let svc = svc.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let message = format!("message number {i}");
            let (status, answer) = post(&svc, Some(&key), &echo(json!(1), &message)).await;
            (message, status, answer)
        })
    });
    let results = join_all(calls).await;
    for (message, status, answer) in results {
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["id"], 1);
        assert_eq!(text(&answer), format!("Echo: {message}"));
    }
    assert_eq!(credits(&gate, &key).await, 80);
    upstream.shutdown().await;
}

async fn join_all<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.expect("the task completes"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_fails_fast_is_refunded_and_comes_back() {
    // A first restart delay of 1 s makes the outage long enough to observe.
    let cfg = everything().with_restart_backoff(Duration::from_secs(1), Duration::from_secs(4));
    let upstream = spawn(cfg).await;
    let gate = gate(
        PayGateConfig::default()
            .with_tool_price("echo", 2)
            .with_tool_price("trigger-long-running-operation", 3)
            .with_refund_on_failure(true),
    );
    let key = gate.create_key("k", 20).await.expect("key created");
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream.clone());
    let (_, answer) = post(&svc, Some(&key), &echo(json!(1), "before")).await;
    assert_eq!(text(&answer), "Echo: before");
    assert_eq!(credits(&gate, &key).await, 18);

    // A call in flight when the child dies fails at once and is refunded.
    let slow = rpc(
        json!(2),
        "tools/call",
        json!({"name": "trigger-long-running-operation", "arguments": {"duration": 20, "steps": 1}}),
    );
    let in_flight = {
        let svc = svc.clone();
        let key = key.clone();
        tokio::spawn(async move { post(&svc, Some(&key), &slow).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(credits(&gate, &key).await, 15, "the slow call was charged");
    let pid = upstream.child_pid().expect("a child runs");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight call is answered, not left hanging")
        .expect("the task completes");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["code"], -32603);
    assert_eq!(answer["error"]["data"]["reason"], "upstream_crashed");

    // During the outage a call is answered at once with a clear error, and refunded.
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(2),
        post(&svc, Some(&key), &echo(json!(3), "during")),
    )
    .await
    .expect("no hang while the child is down");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["id"], 3);
    assert_eq!(answer["error"]["data"]["reason"], "upstream_unavailable");
    assert_eq!(
        credits(&gate, &key).await,
        18,
        "both failed calls were refunded"
    );

    // Within a few seconds the child is back and calls work again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let (status, answer) = post(&svc, Some(&key), &echo(json!(4), "after")).await;
        if status == StatusCode::OK {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not come back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(text(&answer), "Echo: after");
    assert!(upstream.restarts() >= 1);
    let new_pid = upstream.child_pid().expect("a new child runs");
    assert_ne!(new_pid, pid);
    assert!(
        wait_until_gone(pid, Duration::from_secs(2)).await,
        "the killed child was reaped"
    );
    assert_eq!(credits(&gate, &key).await, 16);
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out() {
    let cfg = python(SILENT_SERVER).with_request_timeout(Duration::from_millis(300));
    let upstream = spawn(cfg).await;
    let started = Instant::now();
    let (status, answer) = post(&upstream, None, &echo(json!("t-1"), "anyone?")).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    assert_eq!(answer["id"], "t-1");
    assert_eq!(answer["error"]["code"], -32603);
    assert_eq!(answer["error"]["data"]["reason"], "upstream_timeout");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("timed out")),
        "{answer}"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // The same through call_json, and the child is still fine for what it does answer.
    let err = upstream
        .call_json(echo(json!(9), "again"))
        .await
        .expect_err("times out");
    assert_eq!(err.reason(), "upstream_timeout");
    let init = upstream
        .call_json(rpc(json!(10), "initialize", json!({})))
        .await
        .expect("initialize is answered from the cache")
        .expect("an answer");
    assert_eq!(init["result"]["serverInfo"]["name"], "silent");
    assert_eq!(upstream.restarts(), 0);
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_child_does_not_break_correlation() {
    let cfg = python(NOISY_SERVER)
        .with_max_message_bytes(4096)
        .with_request_timeout(Duration::from_secs(10));
    let upstream = spawn(cfg).await;
    let calls = (0..10).map(|i| {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let message = format!("noisy {i}");
            let (status, answer) = post(&upstream, None, &echo(json!(1), &message)).await;
            (message, status, answer)
        })
    });
    for (message, status, answer) in join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["id"], 1);
        assert_eq!(text(&answer), format!("Echo: {message}"));
        assert!(
            answer["result"].get("pad").is_none(),
            "the over-long copy was dropped"
        );
    }
    assert_eq!(upstream.restarts(), 0);
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_child_and_later_requests_get_503() {
    let upstream = spawn(everything()).await;
    let pid = upstream.child_pid().expect("a child runs");
    assert!(process_exists(pid));
    let started = Instant::now();
    upstream.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(!process_exists(pid), "the child is gone (and reaped)");
    assert_eq!(upstream.child_pid(), None);
    let (status, answer) = post(&upstream, None, &echo(json!(1), "late")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["data"]["reason"], "upstream_unavailable");
    // No restart follows a shutdown; a second shutdown returns at once.
    upstream.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.restarts(), 0);
    assert_eq!(upstream.child_pid(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_child() {
    let upstream = spawn(everything()).await;
    let pid = upstream.child_pid().expect("a child runs");
    let clone = upstream.clone();
    drop(upstream);
    assert!(process_exists(pid), "a clone still holds it");
    drop(clone);
    assert!(
        wait_until_gone(pid, Duration::from_secs(7)).await,
        "the child was stopped and reaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_kills_a_child_that_ignores_end_of_file() {
    let cfg = python(STUBBORN_SERVER).with_shutdown_grace(Duration::from_millis(300));
    let upstream = spawn(cfg).await;
    let pid = upstream.child_pid().expect("a child runs");
    let started = Instant::now();
    upstream.shutdown().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !process_exists(pid),
        "killed after the grace period and reaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_without_reaching_the_child() {
    let upstream = spawn(python(SILENT_SERVER)).await;
    let req = |body: &'static str| {
        Request::post("http://localhost/mcp")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid request")
    };
    for (body, code) in [
        ("{nope", -32700),
        ("[1,2]", -32600),
        ("42", -32600),
        (r#"{"id":1}"#, -32600),
    ] {
        let resp = upstream
            .clone()
            .oneshot(req(body))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["error"]["code"], code, "{body}");
    }
    let get = Request::get("http://localhost/mcp")
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let resp = upstream.clone().oneshot(get).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(upstream.restarts(), 0);
    upstream.shutdown().await;
}

/// Fails its handshake (exits at once) until the file named in argv[1] exists, then answers
/// `initialize` and `tools/call` like a healthy server.
const LATE_SERVER: &str = r#"
import json, os, sys
if not os.path.exists(sys.argv[1]):
    sys.exit(1)
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg.get("method") == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "late", "version": "0"}}
    else:
        result = {"content": [{"type": "text", "text": "up"}]}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
"#;

#[tokio::test]
async fn a_server_down_at_start_starts_degraded_refunds_calls_and_heals() {
    let marker = std::env::temp_dir().join(format!("paygate-late-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let cfg = StdioConfig::new(
        "python3",
        [
            "-u".to_string(),
            "-c".to_string(),
            LATE_SERVER.to_string(),
            marker.to_string_lossy().into_owned(),
        ],
    )
    .with_restart_backoff(Duration::from_millis(50), Duration::from_millis(200));
    // The strict constructor reports the failed handshake; the lenient one starts anyway.
    assert!(StdioUpstream::spawn(cfg.clone()).await.is_err());
    let upstream = StdioUpstream::start(cfg)
        .await
        .expect("a gateway starts even when its server is down");
    assert!(!upstream.is_ready());

    // Without refundOnFailure: a call the upstream could not take costs nothing.
    let gate = gate(PayGateConfig::default().with_rate_limit(0));
    let key = gate.create_key("k", 10).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(upstream.clone());
    let probe = upstream.clone();
    let admin = paygate_mcp::AdminService::new(gate.clone(), "admin-key-for-health-tests")
        .expect("admin key")
        .with_metrics(Arc::new(paygate_mcp::Metrics::new(Arc::new(
            paygate_mcp::SystemClock,
        ))))
        .with_upstream_health("late", move || probe.is_ready());
    let report = |path: &'static str| {
        let admin = admin.clone();
        async move {
            let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
            let resp = admin.oneshot(req).await.expect("the admin API answers");
            assert_eq!(resp.status(), StatusCode::OK);
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let health: Value = serde_json::from_str(&report("/").await).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["upstreams"]["late"], false, "{health}");
    assert!(report("/metrics")
        .await
        .contains("paygate_upstream_up{upstream=\"late\"} 0"));
    let (status, answer) = post(&svc, Some(&key), &echo(json!(1), "hi")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "upstream_unavailable");
    assert_eq!(credits(&gate, &key).await, 10, "nothing ran, nothing owed");

    // The server comes up: the upstream retries on its own and heals.
    std::fs::write(&marker, b"up").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !upstream.is_ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(upstream.is_ready(), "the upstream recovered by itself");
    let health: Value = serde_json::from_str(&report("/").await).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert!(report("/metrics")
        .await
        .contains("paygate_upstream_up{upstream=\"late\"} 1"));
    let (status, answer) = post(&svc, Some(&key), &echo(json!(2), "hi")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(text(&answer), "up");
    assert_eq!(credits(&gate, &key).await, 9);
    upstream.shutdown().await;
    let _ = std::fs::remove_file(&marker);
}
