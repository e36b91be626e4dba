//! Gated calls per second through the Redis store, against a local redis-server this
//! benchmark starts itself (`redis-server` must be installed).
//!
//! `cargo bench --features redis --bench redis_throughput`
//!
//! Each round runs `CONCURRENCY` tasks that each make `CALLS_PER_TASK` gated calls on their
//! own key through one `Gate` (one multiplexed connection); it prints calls/s per round and
//! the median of the rounds.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Instant;

use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
use paygate_mcp::{CallRequest, Gate, PayGateConfig, SystemClock};
use redis_server::RedisServer;

const ROUNDS: usize = 5;
const CONCURRENCY: usize = 64;
const CALLS_PER_TASK: usize = 500;

fn main() {
    // Under `cargo test --benches` run one tiny round, as a smoke test.
    let quick = std::env::args().all(|a| a != "--bench");
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (rounds, tasks, calls) = if quick {
        (1, 4, 10)
    } else {
        (ROUNDS, CONCURRENCY, CALLS_PER_TASK)
    };
    let url = redis.url.clone();
    let rates = runtime.block_on(async move {
        let store = RedisKeyStore::connect(RedisConfig::new(url))
            .await
            .expect("connect");
        let cfg = PayGateConfig::default().with_rate_limit(1_000_000);
        let gate = Arc::new(Gate::with_store(cfg, store, Arc::new(SystemClock)).expect("config"));
        let mut keys = Vec::new();
        for i in 0..tasks {
            keys.push(
                gate.create_key(&format!("k{i}"), 1_000_000_000)
                    .await
                    .expect("key"),
            );
        }
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let t0 = Instant::now();
            let handles: Vec<_> = keys
                .iter()
                .cloned()
                .map(|key| {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        for _ in 0..calls {
                            let d = gate.evaluate(&CallRequest::new(&key, "search")).await;
                            assert!(d.allowed, "{:?}", d.reason);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("task");
            }
            rates.push((tasks * calls) as f64 / t0.elapsed().as_secs_f64());
        }
        rates
    });
    drop(redis);
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    for (i, r) in rates.iter().enumerate() {
        println!("round {}: {:.0} gated calls/s", i + 1, r);
    }
    println!(
        "redis_throughput: median {:.0} gated calls/s ({} tasks, one connection, local redis-server)",
        sorted[sorted.len() / 2],
        tasks
    );
}
