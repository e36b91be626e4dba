//! The layers of one `PayGate` handle over the Redis store: whatever stages are stacked and
//! in whatever order, a `tools/call` costs exactly one `EVALSHA` (the atomic decision), and
//! credits move only where billing is. Counted by Redis itself (`INFO commandstats`).
#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use common::redis_server::RedisServer;
use common::stacks::{self, boxed_downstream, decides, every_stack, Stack, Stage};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
use paygate_mcp::{CallRequest, Gate, KeyDigest, KeyStore, PayGateConfig, Quota};
use serde_json::{json, Value};
use tower::{service_fn, ServiceExt};

const PRICE: u64 = 3;
const CREDITS: u64 = 100;
const CALLS: u64 = 3;

fn call(key: &str) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t"}});
    Request::post("http://localhost/mcp")
        .header("x-api-key", key)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// `stages` over a downstream that answers every call with a result.
fn stack(gate: &Arc<Gate<RedisKeyStore>>, stages: &[Stage]) -> Stack {
    let downstream = service_fn(|_req: Request<Full<Bytes>>| async {
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).to_string();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    stacks::stack(gate, stages, boxed_downstream(downstream))
}

/// A gate over the Redis store, with a price, a rate limit and a quota that all leave
/// room for the calls sent; its charge script is loaded once (a `NOSCRIPT` retry would
/// show up as a second `EVALSHA`).
async fn gate(server: &RedisServer, prefix: &str) -> Arc<Gate<RedisKeyStore>> {
    let store = RedisKeyStore::connect(RedisConfig::new(server.url()).with_prefix(prefix))
        .await
        .expect("connect to the test redis-server");
    let cfg = PayGateConfig::default()
        .with_tool_price("t", PRICE)
        .with_rate_limit(100)
        .with_global_quota(Quota {
            daily_call_limit: 100,
            ..Quota::default()
        });
    let gate =
        Arc::new(Gate::with_store(cfg, store, Arc::new(paygate_mcp::SystemClock)).expect("config"));
    let warm = gate.create_key("warm-up", 10).await.unwrap();
    assert!(gate.evaluate(&CallRequest::new(&warm, "t")).await.allowed);
    gate
}

/// A connection of the test's own, to reset and read Redis's command statistics.
struct Stats(redis::aio::MultiplexedConnection);

impl Stats {
    async fn connect(server: &RedisServer) -> Self {
        let client = redis::Client::open(server.url()).expect("redis url");
        Self(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("connect"),
        )
    }

    async fn reset(&mut self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.0)
            .await
            .expect("CONFIG RESETSTAT");
    }

    /// Calls per command since the last reset, from `INFO commandstats`, without the
    /// test's own `CONFIG` and `INFO`; failed and rejected calls are listed as
    /// `<name>:failed_calls` and `<name>:rejected_calls`. Redis counts the commands a
    /// script runs here too.
    async fn commands(&mut self) -> BTreeMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.0)
            .await
            .expect("INFO commandstats");
        let mut out = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            if name.starts_with("config") || name == "info" {
                continue;
            }
            for field in fields.split(',') {
                let (k, v) = field.split_once('=').expect("field=value");
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "calls" => {
                        out.insert(name.to_string(), v);
                    }
                    "failed_calls" | "rejected_calls" if v > 0 => {
                        out.insert(format!("{name}:{k}"), v);
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// Sends one call through `svc` and checks it was answered with a result.
async fn send_one(svc: &Stack, key: &str, stages: &[Stage]) {
    let resp = svc.clone().oneshot(call(key)).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(v.get("result").is_some(), "{stages:?} first call: {v}");
}

/// Sends `CALLS` calls through `svc` and checks each was answered with a result.
async fn send_calls(svc: &Stack, key: &str, stages: &[Stage]) {
    for n in 0..CALLS {
        let resp = svc.clone().oneshot(call(key)).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(v.get("result").is_some(), "{stages:?} call {n}: {v}");
    }
}

// Every ordering of every subset (321 stacks, 1,284 calls) runs in a few seconds in debug
// mode, so no orderings are skipped.
#[tokio::test]
async fn one_evalsha_per_call_through_every_composition() {
    let server = RedisServer::start();
    let gate = gate(&server, "compose:").await;
    let mut stats = Stats::connect(&server).await;
    let stacks: Vec<_> = every_stack().into_iter().filter(|s| decides(s)).collect();
    assert_eq!(stacks.len(), 321);
    for stages in stacks {
        let key = gate.create_key("k", CREDITS).await.unwrap();
        let svc = stack(&gate, &stages);
        // One handle, one stack: the first call is decided once for every stage.
        stats.reset().await;
        send_one(&svc, &key, &stages).await;
        assert_eq!(
            stats.commands().await.get("evalsha").copied(),
            Some(1),
            "{stages:?}: the first call"
        );
        // And so is every call after it, the route now learned.
        stats.reset().await;
        send_calls(&svc, &key, &stages).await;
        let commands = stats.commands().await;
        // The commands the charge script runs inside Redis are counted too, so only the
        // ones a client sends are compared: script calls (`EVALSHA`, a fallback `EVAL`, a
        // `SCRIPT LOAD` after `NOSCRIPT`, functions) and `HGETALL`, the store's read, which
        // no script uses.
        let sent: BTreeMap<String, u64> = commands
            .into_iter()
            .filter(|(name, _)| {
                let name = name.split(':').next().unwrap_or_default();
                name.starts_with("eval")
                    || name.starts_with("script")
                    || name.starts_with("fcall")
                    || name == "hgetall"
            })
            .collect();
        assert_eq!(
            sent,
            BTreeMap::from([("evalsha".to_string(), CALLS)]),
            "{stages:?}: one EVALSHA per call, none failed, and no other script or read"
        );
        let rec = gate
            .store()
            .get(&KeyDigest::of(&key))
            .await
            .unwrap()
            .unwrap();
        let billed = stages.contains(&Stage::Billing);
        let calls = CALLS + 1;
        assert_eq!(
            (rec.credits, rec.total_spent, rec.total_calls),
            if billed {
                (CREDITS - calls * PRICE, calls * PRICE, calls)
            } else {
                (CREDITS, 0, 0)
            },
            "{stages:?}: credits and calls counted once per call, with billing only"
        );
        assert_eq!(
            rec.quota_usage.daily_calls,
            if stages.contains(&Stage::Quota) {
                calls
            } else {
                0
            },
            "{stages:?}: quota counters count once per call, with quotas only"
        );
    }
}

#[tokio::test]
async fn auth_and_alerts_alone_issue_no_evalsha() {
    let server = RedisServer::start();
    let gate = gate(&server, "read:").await;
    let mut stats = Stats::connect(&server).await;
    let stacks: Vec<_> = every_stack().into_iter().filter(|s| !decides(s)).collect();
    assert_eq!(stacks.len(), 4, "auth, alerts, and both in either order");
    for stages in stacks {
        let key = gate.create_key("k", CREDITS).await.unwrap();
        let svc = stack(&gate, &stages);
        send_one(&svc, &key, &stages).await;
        stats.reset().await;
        send_calls(&svc, &key, &stages).await;
        let commands = stats.commands().await;
        assert_eq!(
            commands.get("evalsha"),
            None,
            "{stages:?}: no decision, no script: {commands:?}"
        );
        assert_eq!(
            commands,
            BTreeMap::from([("hgetall".to_string(), CALLS)]),
            "{stages:?}: one read of the key per call"
        );
        let rec = gate
            .store()
            .get(&KeyDigest::of(&key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (rec.credits, rec.total_spent, rec.total_calls),
            (CREDITS, 0, 0),
            "{stages:?}: nothing charged or counted"
        );
    }
}
