//! The Redis store through faults, against a private redis-server on 127.0.0.1: Redis killed
//! under load behind two gateways, a hung Redis that leaves replies lost, a gateway restarted
//! while it still owes charges back, and refunds that must land exactly once, on the account
//! that paid, and never above the largest balance.
#![cfg(feature = "redis")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use common::redis_server::RedisServer;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::amount::MAX_AMOUNT;
use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
use paygate_mcp::{
    generate_key, mask_key, AdminEvent, CallRequest, DenyReason, EventSink, Gate, KeyDigest,
    KeyRecord, KeyStore, KeyUpdate, PayGateConfig, PayGateLayer, SystemClock,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn connect(config: RedisConfig) -> RedisKeyStore {
    RedisKeyStore::connect(config)
        .await
        .expect("connect to redis")
}

fn gate_over(store: RedisKeyStore, cfg: PayGateConfig) -> Arc<Gate<RedisKeyStore>> {
    Arc::new(Gate::with_store(cfg, store, Arc::new(SystemClock)).expect("valid config"))
}

async fn record(store: &RedisKeyStore, key: &str) -> KeyRecord {
    store
        .get(&KeyDigest::of(key))
        .await
        .expect("redis answers")
        .expect("key exists")
}

/// Polls the store until it owes nothing, at most `within`; returns whether it got there.
async fn settled(store: &RedisKeyStore, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while store.unsettled_charges() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The owed-charges file as the store wrote it: a JSON array.
fn owed_in_file(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("owed-charges file exists");
    serde_json::from_str(&text).expect("owed-charges file is a JSON array")
}

/// The owed-charges file once it holds `n` entries: the store writes it in the background,
/// a few hundred milliseconds behind the queue at most.
async fn owed_in_file_once(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let owed = if path.exists() {
            owed_in_file(path)
        } else {
            Vec::new()
        };
        if owed.len() == n || Instant::now() >= deadline {
            return owed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// UTC day number, as quota counters keep it.
fn utc_day() -> i64 {
    Utc::now().timestamp_millis().div_euclid(86_400_000)
}

/// Counts the `billing.refund` / `billing.refund_deferred` events a gate emits.
#[derive(Default)]
struct RefundEvents {
    applied: AtomicUsize,
    deferred: AtomicUsize,
}

impl EventSink for RefundEvents {
    fn admin(&self, e: &AdminEvent) {
        match e.event_type.as_str() {
            "billing.refund" => self.applied.fetch_add(1, Ordering::SeqCst),
            "billing.refund_deferred" => self.deferred.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }
}

/// The downstream MCP service: answers every `tools/call` with a result, except calls to
/// `flaky`, which get a JSON-RPC error (so `refundOnFailure` refunds them).
fn answer(body: &[u8]) -> Response<Full<Bytes>> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let reply = if req["params"]["name"] == "flaky" {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": "tool failed"}})
    } else {
        json!({"jsonrpc": "2.0", "id": id,
               "result": {"content": [{"type": "text", "text": "ok"}], "isError": false}})
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A gateway on a loopback port: `/mcp` through `PayGateLayer` over a gate on a Redis store,
/// in front of [`answer`], counting every request the downstream receives.
struct Gateway {
    url: String,
    gate: Arc<Gate<RedisKeyStore>>,
    forwarded: Arc<AtomicUsize>,
    refunds: Arc<RefundEvents>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn gateway(store: RedisKeyStore, cfg: PayGateConfig) -> Gateway {
    gateway_with_hook(store, cfg, None).await
}

/// Runs `before_failing` before the downstream answers a call to `flaky`.
type Hook = Arc<dyn Fn() + Send + Sync>;

async fn gateway_with_hook(
    store: RedisKeyStore,
    cfg: PayGateConfig,
    before_failing: Option<Hook>,
) -> Gateway {
    let refunds = Arc::new(RefundEvents::default());
    let gate = Gate::with_store(cfg, store, Arc::new(SystemClock))
        .expect("valid config")
        .with_event_sink(refunds.clone());
    let gate = Arc::new(gate);
    let forwarded = Arc::new(AtomicUsize::new(0));
    let seen = forwarded.clone();
    let downstream = tower::service_fn(move |req: Request<Full<Bytes>>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let hook = before_failing.clone();
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if let Some(hook) = hook.filter(|_| body.windows(7).any(|w| w == b"\"flaky\"")) {
                hook();
            }
            Ok::<_, Infallible>(answer(&body))
        }
    });
    let mcp = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(downstream);
    let app = axum::Router::new().nest_service("/mcp", mcp);
    let (addr, tx) = common::mcp::serve_at(app).await;
    Gateway {
        url: format!("http://{addr}/mcp"),
        gate,
        forwarded,
        refunds,
        _stop: tx,
    }
}

/// How a gateway answered one `tools/call`.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The tool's result came back: charged, and stays charged.
    Served,
    /// The downstream's JSON-RPC error came back: charged, then refunded.
    ToolFailed,
    /// Refused with `store_unavailable`: never forwarded, nothing charged.
    StoreUnavailable,
    /// Anything else (a failure of the test).
    Other(String),
}

async fn call(client: &reqwest::Client, url: &str, key: &str, tool: &str, id: u64) -> Outcome {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                      "params": {"name": tool, "arguments": {}}});
    let resp = match client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("x-api-key", key)
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Other(format!("transport: {e}")),
    };
    let status = resp.status();
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::Other(format!("body: {e}")),
    };
    if status != reqwest::StatusCode::OK {
        return Outcome::Other(format!("HTTP {status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if v["id"] != json!(id) {
        return Outcome::Other(format!("answer for another call: {text}"));
    }
    let err = &v["error"];
    if v.get("result").is_some() && tool != "flaky" {
        Outcome::Served
    } else if err["code"] == -32000 && err["message"] == "tool failed" && tool == "flaky" {
        Outcome::ToolFailed
    } else if err["code"] == -32603 && err["data"]["reason"] == "store_unavailable" {
        Outcome::StoreUnavailable
    } else {
        Outcome::Other(text)
    }
}

/// A TCP relay between a store and Redis that can lose what Redis answers (requests still
/// reach Redis and run) or cut the link both ways, as a network fault would.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

const PASS: u8 = 0;
const DROP_REPLIES: u8 = 1;
const CUT: u8 = 2;

impl Relay {
    async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (m, l) = (mode.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = tokio::spawn(pump(cr, sw, m.clone(), |mode| mode != CUT));
                let down = tokio::spawn(pump(sr, cw, m.clone(), |mode| mode == PASS));
                l.lock().extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        Self { port, mode, links }
    }

    /// Closes every connection relayed so far and lets new ones pass: clients reconnect.
    fn reset(&self) {
        for link in self.links.lock().drain(..) {
            link.abort();
        }
        self.set(PASS);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while `forward(mode)` holds, and swallows the bytes otherwise.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    forward: fn(u8) -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if forward(mode.load(Ordering::SeqCst)) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. redis-server killed mid-load behind two gateways
// ---------------------------------------------------------------------------------------

const TOOLS: [(&str, u64); 3] = [("search", 1), ("render", 3), ("flaky", 2)];
const KEYS: usize = 4;
const CREDITS: u64 = 10_000_000;
const WORKERS: usize = 240;

/// One call of the load, as the client saw it.
struct Sent {
    key: usize,
    tool: usize,
    outcome: Outcome,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Load {
    sent: Mutex<Vec<Sent>>,
    served: AtomicUsize,
    unavailable: AtomicUsize,
    other: AtomicUsize,
    stop: AtomicBool,
}

/// Polls `done` every 20 ms for at most `within`; panics with `what` when it never holds.
async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fails_closed_and_the_books_balance_after_restart() {
    let server = RedisServer::start();
    let cfg = PayGateConfig::default()
        .with_rate_limit(0)
        .with_refund_on_failure(true)
        .with_tool_price(TOOLS[0].0, TOOLS[0].1)
        .with_tool_price(TOOLS[1].0, TOOLS[1].1)
        .with_tool_price(TOOLS[2].0, TOOLS[2].1);
    let store = |url: String| {
        connect(
            RedisConfig::new(url)
                .with_prefix("kill:")
                .with_response_timeout(Duration::from_secs(1)),
        )
    };
    let gateways = Arc::new([
        gateway(store(server.url()).await, cfg.clone()).await,
        gateway(store(server.url()).await, cfg).await,
    ]);
    let mut keys = Vec::new();
    for i in 0..KEYS {
        keys.push(
            gateways[i % 2]
                .gate
                .create_key(&format!("k{i}"), CREDITS)
                .await
                .expect("create key"),
        );
    }
    let keys = Arc::new(keys);
    let day_at_start = utc_day();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let load = Arc::new(Load::default());
    let hard_stop = Instant::now() + Duration::from_secs(300);

    // ~240 calls in flight at all times, spread over both gateways, all keys and all tools.
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, gateways, keys, load) =
            (client.clone(), gateways.clone(), keys.clone(), load.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !load.stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                let k = (w + n as usize) % KEYS;
                let t = (w + 2 * n as usize) % TOOLS.len();
                let g = &gateways[(w + n as usize / 3) % 2];
                let start = Instant::now();
                let id = ((w as u64) << 32) | n;
                let outcome = call(&client, &g.url, &keys[k], TOOLS[t].0, id).await;
                match outcome {
                    Outcome::Served => load.served.fetch_add(1, Ordering::SeqCst),
                    Outcome::StoreUnavailable => load.unavailable.fetch_add(1, Ordering::SeqCst),
                    Outcome::Other(_) => load.other.fetch_add(1, Ordering::SeqCst),
                    Outcome::ToolFailed => 0,
                };
                load.sent.lock().push(Sent {
                    key: k,
                    tool: t,
                    outcome,
                    start,
                    end: Instant::now(),
                });
                n += 1;
            }
        }));
    }
    // How many charges the two stores owe back at the worst moment.
    let max_owed = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let (gateways, load, max_owed) = (gateways.clone(), load.clone(), max_owed.clone());
        tokio::spawn(async move {
            while !load.stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                let owed: usize = gateways
                    .iter()
                    .map(|g| g.gate.store().unsettled_charges())
                    .sum();
                max_owed.fetch_max(owed, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    wait_for("the load to run", Duration::from_secs(60), || {
        load.served.load(Ordering::SeqCst) >= 500
    })
    .await;

    // SIGKILL in the middle of it: hundreds of calls are in flight at this instant.
    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.kill();
        server
    })
    .await
    .expect("kill redis");
    let killed = Instant::now();
    let unavailable_at_kill = load.unavailable.load(Ordering::SeqCst);
    wait_for(
        "calls to fail closed while Redis is down",
        Duration::from_secs(60),
        || {
            killed.elapsed() >= Duration::from_millis(800)
                && load.unavailable.load(Ordering::SeqCst) >= unavailable_at_kill + 300
        },
    )
    .await;
    let restarting = Instant::now();
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart redis");
    let restarted = Instant::now();
    let served_at_restart = load.served.load(Ordering::SeqCst);
    wait_for("service to resume", Duration::from_secs(60), || {
        load.served.load(Ordering::SeqCst) >= served_at_restart + 500
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("worker stops")
            .expect("worker ran");
    }
    monitor.await.expect("monitor");

    // Lost replies and refunds that failed are settled in the background, by both gateways.
    for g in gateways.iter() {
        assert!(
            settled(g.gate.store(), Duration::from_secs(60)).await,
            "owed charges settled: {} left",
            g.gate.store().unsettled_charges()
        );
    }

    let sent = std::mem::take(&mut *load.sent.lock());
    let others: Vec<&Outcome> = sent
        .iter()
        .map(|s| &s.outcome)
        .filter(|o| matches!(o, Outcome::Other(_)))
        .collect();
    assert!(
        others.is_empty(),
        "every call was served, failed by the tool or refused with store_unavailable; {} were not, e.g. {:?}",
        others.len(),
        others.first()
    );
    // Fail closed: every call made wholly while Redis was down was refused...
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.start >= killed && s.end <= restarting)
        .collect();
    assert!(
        during.len() >= 100,
        "the load kept going during the outage ({} calls)",
        during.len()
    );
    assert!(
        during
            .iter()
            .all(|s| s.outcome == Outcome::StoreUnavailable),
        "a call made while Redis was down was not refused with store_unavailable"
    );
    // ...and none was forwarded: the downstream saw exactly the calls that came back with
    // its answer.
    let count = |o: Outcome| sent.iter().filter(|s| s.outcome == o).count();
    let (served, failed) = (count(Outcome::Served), count(Outcome::ToolFailed));
    let forwarded: usize = gateways
        .iter()
        .map(|g| g.forwarded.load(Ordering::SeqCst))
        .sum();
    assert_eq!(
        forwarded,
        served + failed,
        "the downstream received only the calls that were allowed"
    );
    assert!(failed > 0, "refunds happened during the load");
    assert!(
        sent.iter()
            .any(|s| s.start >= restarted && s.outcome == Outcome::Served),
        "calls were served again after the restart"
    );
    // Every failed call was refunded once: applied at once, or deferred and then settled.
    let refund_events: usize = gateways
        .iter()
        .map(|g| {
            g.refunds.applied.load(Ordering::SeqCst) + g.refunds.deferred.load(Ordering::SeqCst)
        })
        .sum();
    assert_eq!(refund_events, failed, "one refund per failed call");
    let max_owed = max_owed.load(Ordering::SeqCst);
    assert!(
        max_owed > 0,
        "the kill left charges to compensate (else this test proves nothing about them)"
    );

    // The books: each key paid exactly for the calls it was served.
    let mut total = 0;
    for (k, key) in keys.iter().enumerate() {
        let mine = || {
            sent.iter()
                .filter(|s| s.key == k && s.outcome == Outcome::Served)
        };
        let spent: u64 = mine().map(|s| TOOLS[s.tool].1).sum();
        let calls = mine().count() as u64;
        for g in gateways.iter() {
            let rec = record(g.gate.store(), key).await;
            assert_eq!(rec.credits, CREDITS - spent, "key {k}: credits");
            assert_eq!(rec.total_spent, spent, "key {k}: totalSpent");
            assert_eq!(rec.total_calls, calls, "key {k}: totalCalls");
            if utc_day() == day_at_start {
                assert_eq!(rec.quota_usage.daily_calls, calls, "key {k}: daily calls");
                assert_eq!(
                    rec.quota_usage.daily_credits, spent,
                    "key {k}: daily credits"
                );
            }
        }
        total += CREDITS - spent;
    }
    let stats = gateways[0].gate.store().stats().await.expect("stats");
    assert_eq!(stats.total_credits, total, "the credits aggregate agrees");
    eprintln!(
        "kill under load: {} calls ({served} served, {failed} refunded, {} refused while down), \
         at most {max_owed} charges owed at once; outage {:?}",
        sent.len(),
        count(Outcome::StoreUnavailable),
        restarting - killed
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 2. The backlog is bounded and kept off the request path
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_backlog_refuses_at_once_and_drains_in_the_background() {
    const LIMIT: usize = 8;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let mut server = RedisServer::start();
    let store = connect(
        RedisConfig::new(server.url())
            .with_prefix("bound:")
            .with_owed_limit(LIMIT)
            .with_response_timeout(TIMEOUT),
    )
    .await;
    let gate = gate_over(
        store,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 2),
    );
    let key = gate.create_key("k", 1_000).await.expect("create key");
    for _ in 0..3 {
        assert!(gate.evaluate(&CallRequest::new(&key, "t")).await.allowed);
    }

    // Redis hangs with LIMIT calls in flight: each waits one response timeout, fails closed
    // and owes its charge back (the script may have run; the gateway cannot know).
    server.pause();
    let mut in_flight = Vec::new();
    for _ in 0..LIMIT {
        let (gate, key) = (gate.clone(), key.clone());
        in_flight.push(tokio::spawn(async move {
            let t = Instant::now();
            let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
            (d.allowed, d.reason, d.credits_charged, t.elapsed())
        }));
    }
    for call in in_flight {
        let (allowed, reason, charged, took) = call.await.expect("call");
        assert!(!allowed);
        assert_eq!(reason, Some(DenyReason::StoreUnavailable));
        assert_eq!(charged, 0);
        assert!(took >= TIMEOUT / 2, "waited for Redis ({took:?})");
    }
    assert_eq!(
        gate.store().unsettled_charges(),
        LIMIT,
        "each lost reply is owed"
    );

    // Full: new calls are refused without asking Redis. A store that settled its backlog on
    // the request path would stall here for LIMIT response timeouts (8 s) per call; the bound
    // of two timeouts leaves a whole second of scheduling slack above the one timeout a call
    // may legitimately spend, and is still four times below that stall.
    for _ in 0..5 {
        let t = Instant::now();
        let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
        let took = t.elapsed();
        assert_eq!(d.reason, Some(DenyReason::StoreUnavailable));
        assert!(
            took < 2 * TIMEOUT,
            "a call with a full backlog took {took:?}"
        );
    }
    // A burst is refused as fast, and the backlog does not grow past its bound.
    let t = Instant::now();
    let mut burst = Vec::new();
    for _ in 0..50 {
        let (gate, key) = (gate.clone(), key.clone());
        burst.push(tokio::spawn(async move {
            gate.evaluate(&CallRequest::new(&key, "t")).await.reason
        }));
    }
    for call in burst {
        assert_eq!(
            call.await.expect("call"),
            Some(DenyReason::StoreUnavailable)
        );
    }
    assert!(
        t.elapsed() < 2 * TIMEOUT,
        "50 calls with a full backlog took {:?}",
        t.elapsed()
    );
    assert_eq!(
        gate.store().unsettled_charges(),
        LIMIT,
        "the backlog is bounded"
    );

    // Redis dies while hung (the owed charges never ran), then comes back. Nobody calls: the
    // backlog drains by itself, and compensating charges that never happened adds nothing.
    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .expect("kill");
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert_eq!(d.reason, Some(DenyReason::StoreUnavailable));
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    assert!(
        settled(gate.store(), Duration::from_secs(30)).await,
        "the backlog drained in the background ({} left)",
        gate.store().unsettled_charges()
    );
    let rec = record(gate.store(), &key).await;
    assert_eq!(rec.credits, 1_000 - 3 * 2);
    assert_eq!(rec.total_spent, 3 * 2);
    assert_eq!(rec.total_calls, 3);
    // And charging works again.
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(d.allowed, "{:?}", d.reason);
    assert_eq!(d.remaining_credits, Some(1_000 - 4 * 2));
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 3. Owed charges survive a gateway restart
// ---------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn owed_charges_survive_a_gateway_restart() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    const LOST: usize = 4;
    let mut server = RedisServer::start();
    let file = server.dir.join("owed-charges.json");
    let prefix = "owedfile:";

    // Gateway 1 reaches Redis through a relay, so the test decides what gets through.
    let first = runtime();
    let key = first.block_on(async {
        let relay = Relay::start(server.port).await;
        let direct = connect(RedisConfig::new(server.url()).with_prefix(prefix)).await;
        let gate = gate_over(
            connect(
                RedisConfig::new(relay.url())
                    .with_prefix(prefix)
                    .with_owed_file(&file)
                    .with_response_timeout(TIMEOUT),
            )
            .await,
            PayGateConfig::default()
                .with_rate_limit(0)
                .with_tool_price("t", 5),
        );
        let key = gate.create_key("k", 1_000).await.expect("create key");
        let to_refund = gate.evaluate(&CallRequest::new(&key, "t")).await;
        assert!(to_refund.allowed);
        for _ in 0..2 {
            assert!(gate.evaluate(&CallRequest::new(&key, "t")).await.allowed);
        }

        // Replies start getting lost: the charges run in Redis, the gateway never hears.
        relay.set(DROP_REPLIES);
        let mut in_flight = Vec::new();
        for _ in 0..LOST {
            let (gate, key) = (gate.clone(), key.clone());
            in_flight.push(tokio::spawn(async move {
                gate.evaluate(&CallRequest::new(&key, "t")).await.reason
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while record(&direct, &key).await.total_calls < 3 + LOST as u64 {
            assert!(Instant::now() < deadline, "the charges reached Redis");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then the link goes down both ways, before any call gave up waiting: nothing the
        // gateway sends from now on (compensations included) reaches Redis.
        assert_eq!(
            gate.store().unsettled_charges(),
            0,
            "the relay was cut before the calls timed out (machine too slow for this test?)"
        );
        relay.set(CUT);
        for call in in_flight {
            assert_eq!(
                call.await.expect("call"),
                Some(DenyReason::StoreUnavailable)
            );
        }
        // A refund during the outage is owed too.
        let receipt = to_refund.receipt.expect("receipt");
        assert!(
            gate.refund(receipt).await.is_err(),
            "the refund could not be applied now"
        );
        assert_eq!(gate.store().unsettled_charges(), LOST + 1);
        assert_eq!(
            owed_in_file_once(&file, LOST + 1).await.len(),
            LOST + 1,
            "the file mirrors the backlog"
        );
        // Redis holds all seven charges: the gateway owes back four lost replies and a refund.
        let rec = record(&direct, &key).await;
        assert_eq!(rec.credits, 1_000 - 7 * 5);
        assert_eq!(rec.total_calls, 7);
        key
    });
    // Gateway 1 goes away with everything it held in memory (its tasks end with it).
    first.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(owed_in_file(&file).len(), LOST + 1);
    // Redis is killed and started again from its append-only file.
    server.kill();
    server.restart();

    // A new gateway with the same file settles the debt.
    let second = runtime();
    second.block_on(async {
        let store = connect(
            RedisConfig::new(server.url())
                .with_prefix(prefix)
                .with_owed_file(&file),
        )
        .await;
        assert!(
            settled(&store, Duration::from_secs(30)).await,
            "the new gateway settled what the old one owed ({} left)",
            store.unsettled_charges()
        );
        let rec = record(&store, &key).await;
        assert_eq!(
            rec.credits,
            1_000 - 2 * 5,
            "only the two answered calls stay charged"
        );
        assert_eq!(rec.total_spent, 2 * 5);
        assert_eq!(rec.total_calls, 2);
        if rec.quota_usage.day == utc_day() {
            assert_eq!(rec.quota_usage.daily_calls, 2);
            assert_eq!(rec.quota_usage.daily_credits, 10);
        }
        assert!(
            owed_in_file_once(&file, 0).await.is_empty(),
            "the file is emptied"
        );
        assert_eq!(
            store.stats().await.expect("stats").total_credits,
            rec.credits
        );
    });
    second.shutdown_timeout(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// 4. A refund cannot be forged or doubled, and finds a rotated key
// ---------------------------------------------------------------------------------------

/// The parts of a record a refund may change.
fn books(rec: &KeyRecord) -> (u64, u64, u64, u64, u64) {
    (
        rec.credits,
        rec.total_spent,
        rec.total_calls,
        rec.quota_usage.daily_calls,
        rec.quota_usage.daily_credits,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_a_charge_no_longer_on_record_changes_nothing() {
    let server = RedisServer::start();
    let prefix = "gone:";
    let gate = gate_over(
        connect(RedisConfig::new(server.url()).with_prefix(prefix)).await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 4),
    );
    let key = gate.create_key("k", 100_000).await.expect("create key");

    // The record of a charge expires: its receipt refunds nothing.
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(d.allowed);
    let charges = format!("{prefix}{{{}}}:c", KeyDigest::of(&key).to_hex());
    let details = format!("{charges}d");
    assert_eq!(
        server.cli(&["DEL", &charges, &details]).trim(),
        "2",
        "charge record exists"
    );
    let before = record(gate.store(), &key).await;
    let out = gate
        .refund(d.receipt.expect("receipt"))
        .await
        .expect("redis answers");
    assert!(out.is_none(), "nothing refunded");
    assert_eq!(books(&record(gate.store(), &key).await), books(&before));

    // A receipt whose charge was pushed out of the record by 10,000 newer charges still
    // proves the charge: it is refunded from the receipt, once.
    let old = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(old.allowed);
    // The record keeps the latest 10,000 by time: make every newer charge strictly later.
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10_000 {
        assert!(gate.evaluate(&CallRequest::new(&key, "t")).await.allowed);
    }
    let before = record(gate.store(), &key).await;
    let out = gate
        .refund(old.receipt.expect("receipt"))
        .await
        .expect("redis answers");
    assert!(out.is_some(), "refunded from the receipt");
    let after = record(gate.store(), &key).await;
    assert_eq!(after.credits, before.credits + 4);
    assert_eq!(after.total_calls, before.total_calls - 1);

    // The newest charges are still on record and refund exactly.
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    let charged = record(gate.store(), &key).await;
    let snap = gate
        .refund(d.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refunded");
    assert_eq!(snap.credits, charged.credits + 4);
    assert_eq!(books(&record(gate.store(), &key).await), books(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_whose_reply_was_lost_is_applied_once() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let mut server = RedisServer::start();
    let gate = gate_over(
        connect(
            RedisConfig::new(server.url())
                .with_prefix("twice:")
                .with_response_timeout(TIMEOUT),
        )
        .await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 7),
    );
    let key = gate.create_key("k", 1_000).await.expect("create key");
    let before = record(gate.store(), &key).await;
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(d.allowed);

    // Redis hangs as the refund is sent: the gateway gives up and owes the refund, while the
    // refund itself waits in Redis's socket and runs as soon as Redis continues. Retries of
    // the owed refund (queued behind it on the same connection) must find nothing to undo.
    server.pause();
    assert!(gate.refund(d.receipt.expect("receipt")).await.is_err());
    assert_eq!(gate.store().unsettled_charges(), 1);
    tokio::time::sleep(TIMEOUT).await; // a compensation attempt or two queue up behind it
    server.resume();
    assert!(
        settled(gate.store(), Duration::from_secs(30)).await,
        "owed refund settled"
    );
    assert_eq!(
        books(&record(gate.store(), &key).await),
        books(&before),
        "refunded exactly once"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_rotation_lands_on_the_rotated_key() {
    let server = RedisServer::start();
    let gate = gate_over(
        connect(RedisConfig::new(server.url()).with_prefix("rot:")).await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 6),
    );
    let key = gate.create_key("k", 500).await.expect("create key");
    let other = gate.create_key("other", 500).await.expect("create key");
    let before = record(gate.store(), &key).await;

    // Two calls in flight; the key rotates (twice for the second) before they are refunded.
    let first = gate.evaluate(&CallRequest::new(&key, "t")).await;
    let second = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(first.allowed && second.allowed);
    let rotated = generate_key().expect("key");
    let again = generate_key().expect("key");
    let moved = gate
        .store()
        .rotate(
            &KeyDigest::of(&key),
            KeyDigest::of(&rotated),
            mask_key(&rotated),
        )
        .await
        .expect("redis answers")
        .expect("rotated");
    assert_eq!(moved.credits, 500 - 12, "the balance moved with the key");

    let snap = gate
        .refund(first.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refund found the account");
    assert_eq!(snap.credits, 500 - 6);
    gate.store()
        .rotate(
            &KeyDigest::of(&rotated),
            KeyDigest::of(&again),
            mask_key(&again),
        )
        .await
        .expect("redis answers")
        .expect("rotated");
    let snap = gate
        .refund(second.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refund followed both rotations");
    assert_eq!(snap.credits, 500);

    assert_eq!(books(&record(gate.store(), &again).await), books(&before));
    for gone in [&key, &rotated] {
        assert!(gate
            .store()
            .get(&KeyDigest::of(gone))
            .await
            .expect("redis answers")
            .is_none());
        let d = gate.evaluate(&CallRequest::new(gone, "t")).await;
        assert_eq!(d.reason, Some(DenyReason::InvalidApiKey));
    }
    assert_eq!(
        record(gate.store(), &other).await.credits,
        500,
        "no other account touched"
    );
    let stats = gate.store().stats().await.expect("stats");
    assert_eq!(stats.total_credits, 1_000);
}

// ---------------------------------------------------------------------------------------
// 5. A refund never pushes credits above 2^53 - 1
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_never_pushes_credits_above_the_largest_amount() {
    let server = RedisServer::start();
    let gate = gate_over(
        connect(RedisConfig::new(server.url()).with_prefix("max:")).await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 10),
    );
    let key = gate.create_key("k", MAX_AMOUNT).await.expect("create key");
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(d.allowed);
    assert_eq!(d.remaining_credits, Some(MAX_AMOUNT - 10));
    // Topped up to the largest balance while the call ran...
    let topped = gate
        .store()
        .update(&KeyDigest::of(&key), &KeyUpdate::TopUp(10))
        .await
        .expect("redis answers")
        .expect("key exists");
    assert_eq!(topped.credits, MAX_AMOUNT);
    // ...the refund stops at it.
    let snap = gate
        .refund(d.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refunded");
    assert_eq!(snap.credits, MAX_AMOUNT);
    let rec = record(gate.store(), &key).await;
    assert_eq!(rec.credits, MAX_AMOUNT);
    assert_eq!(rec.total_spent, 0);
    assert_eq!(rec.total_calls, 0);
    // Read back as the exact integer (a float rendering would not even parse).
    let raw = server.cli(&[
        "HGET",
        &format!("max:{{{}}}", KeyDigest::of(&key).to_hex()),
        "credits",
    ]);
    assert_eq!(raw.trim(), MAX_AMOUNT.to_string());
}

// ---------------------------------------------------------------------------------------
// Failures found in the store and the layer, kept as regression tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_refund_keeps_the_credits_aggregate_exact() {
    let server = RedisServer::start();
    let gate = gate_over(
        connect(RedisConfig::new(server.url()).with_prefix("maxstats:")).await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_tool_price("t", 10),
    );
    let key = gate.create_key("k", MAX_AMOUNT).await.expect("create key");
    let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
    assert!(d.allowed);
    gate.store()
        .update(&KeyDigest::of(&key), &KeyUpdate::TopUp(10))
        .await
        .expect("redis answers")
        .expect("key exists");
    gate.refund(d.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refunded");
    let rec = record(gate.store(), &key).await;
    assert_eq!(rec.credits, MAX_AMOUNT);
    let stats = gate.store().stats().await.expect("stats");
    assert_eq!(
        stats.total_credits, rec.credits,
        "the credits aggregate is the balance actually held"
    );
}

/// Gateway `a` makes a charge on `key` whose reply is lost (Redis then holds `calls` calls on
/// the key) and is cut off from Redis; then gateway `b` serves `newer` calls on the key, all
/// strictly later.
async fn lose_a_charge_then_serve(
    a: &Arc<Gate<RedisKeyStore>>,
    b: &Arc<Gate<RedisKeyStore>>,
    key: &str,
    relay: &Relay,
    calls: u64,
    newer: usize,
) {
    relay.set(DROP_REPLIES);
    let lost = {
        let (a, key) = (a.clone(), key.to_string());
        tokio::spawn(async move { a.evaluate(&CallRequest::new(&key, "t")).await.reason })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while record(b.store(), key).await.total_calls < calls {
        assert!(Instant::now() < deadline, "the charge reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.set(CUT);
    assert_eq!(
        lost.await.expect("call"),
        Some(DenyReason::StoreUnavailable)
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..newer {
        assert!(b.evaluate(&CallRequest::new(key, "t")).await.allowed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_charge_is_given_back_even_on_a_busy_key() {
    let server = RedisServer::start();
    let prefix = "hot:";
    let relay = Relay::start(server.port).await;
    let cfg = PayGateConfig::default()
        .with_rate_limit(0)
        .with_tool_price("t", 1);
    // Gateway A reaches Redis through the relay; gateway B directly.
    let a = gate_over(
        connect(
            RedisConfig::new(relay.url())
                .with_prefix(prefix)
                .with_response_timeout(Duration::from_secs(2)),
        )
        .await,
        cfg.clone(),
    );
    let b = gate_over(
        connect(RedisConfig::new(server.url()).with_prefix(prefix)).await,
        cfg,
    );
    let key = a.create_key("hot", 100_000).await.expect("create key");
    let warm = a.evaluate(&CallRequest::new(&key, "t")).await; // loads the script into Redis
    a.refund(warm.receipt.expect("receipt"))
        .await
        .expect("redis answers")
        .expect("refunded");

    // A's charge runs in Redis, its reply is lost, and A is cut off from Redis; gateway B
    // serves the same key meanwhile: 1,024 calls, all strictly later.
    lose_a_charge_then_serve(&a, &b, &key, &relay, 1, 1_024).await;
    assert_eq!(a.store().unsettled_charges(), 1, "A owes the charge back");
    // A's link comes back and A settles what it owes.
    relay.reset();
    assert!(settled(a.store(), Duration::from_secs(30)).await);
    let rec = record(b.store(), &key).await;
    assert_eq!(rec.total_calls, 1_024, "only B's calls were served");
    assert_eq!(
        rec.credits,
        100_000 - 1_024,
        "the lost charge was given back"
    );
    assert_eq!(a.store().unresolved_charges(), 0);

    // Past what Redis remembers (10,000 newer charges on the key) a lost charge can no longer
    // be checked: it is reported as unresolved, never silently counted as settled.
    lose_a_charge_then_serve(&a, &b, &key, &relay, 1_025, 10_000).await;
    relay.reset();
    assert!(settled(a.store(), Duration::from_secs(30)).await);
    assert_eq!(a.store().unresolved_charges(), 1, "reported, not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_survives_the_client_hanging_up() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let server = RedisServer::start();
    let relay = Arc::new(Relay::start(server.port).await);
    let cut = relay.clone();
    // The link to Redis goes down just as the tool fails: the refund must wait for it.
    let gw = gateway_with_hook(
        connect(
            RedisConfig::new(relay.url())
                .with_prefix("hangup:")
                .with_response_timeout(TIMEOUT),
        )
        .await,
        PayGateConfig::default()
            .with_rate_limit(0)
            .with_refund_on_failure(true)
            .with_tool_price("flaky", 5),
        Some(Arc::new(move || cut.set(CUT))),
    )
    .await;
    let key = gw.gate.create_key("k", 100).await.expect("create key");
    // The client stops waiting after 0.5 s, well before the store's 3 s reply timeout.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("http client");
    let out = call(&client, &gw.url, &key, "flaky", 1).await;
    assert!(
        matches!(out, Outcome::Other(_)),
        "the client gave up: {out:?}"
    );
    // The refund either went through or is owed once the store's timeout has passed.
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(2);
    while gw.gate.store().unsettled_charges() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.reset();
    assert!(settled(gw.gate.store(), Duration::from_secs(30)).await);
    // The first command after the reset finds the old connection gone; the next reconnects.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        if let Ok(Some(rec)) = gw.gate.store().get(&KeyDigest::of(&key)).await {
            break rec;
        }
        assert!(Instant::now() < deadline, "the store reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rec.credits, 100, "the failed call was refunded");
    assert_eq!(rec.total_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_fail_closed_promptly_with_an_owed_file_and_a_large_backlog() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const CALLS: usize = 1_500;
    let mut server = RedisServer::start();
    let gate = gate_over(
        connect(
            RedisConfig::new(server.url())
                .with_prefix("journal:")
                .with_owed_file(server.dir.join("owed-charges.json"))
                .with_response_timeout(TIMEOUT),
        )
        .await,
        PayGateConfig::default().with_rate_limit(0),
    );
    let key = gate.create_key("k", 1_000_000).await.expect("create key");
    assert!(gate.evaluate(&CallRequest::new(&key, "t")).await.allowed);
    // Redis hangs with many calls in flight: each should fail closed after one timeout.
    server.pause();
    let mut in_flight = Vec::new();
    for _ in 0..CALLS {
        let (gate, key) = (gate.clone(), key.clone());
        in_flight.push(tokio::spawn(async move {
            let t = Instant::now();
            let d = gate.evaluate(&CallRequest::new(&key, "t")).await;
            (d.reason, t.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for call in in_flight {
        let (reason, took) = call.await.expect("call");
        assert_eq!(reason, Some(DenyReason::StoreUnavailable));
        slowest = slowest.max(took);
    }
    assert_eq!(gate.store().unsettled_charges(), CALLS);
    // Without a file the slowest call takes about one timeout (1.0-1.4 s here).
    assert!(
        slowest < 3 * TIMEOUT,
        "a call during the outage took {slowest:?}"
    );
    server.resume();
    assert!(settled(gate.store(), Duration::from_secs(120)).await);
}
