//! The Redis store under contention and failure: two gateways sharing one Redis keep exact
//! books, a Redis outage fails calls closed and heals by itself, and every gated call costs
//! one round trip.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
use paygate_mcp::{
    CallRequest, DenyReason, Gate, KeyDigest, KeyStore, KeyUpdate, PayGateConfig, Quota,
    SystemClock,
};

async fn gate(server: &RedisServer, prefix: &str, cfg: PayGateConfig) -> Arc<Gate<RedisKeyStore>> {
    let store = RedisKeyStore::connect(
        RedisConfig::new(server.url())
            .with_prefix(prefix)
            .with_response_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    Arc::new(Gate::with_store(cfg, store, Arc::new(SystemClock)).expect("config"))
}

#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    charged: AtomicU64,
    refunded: AtomicU64,
    unavailable: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_one_truth() {
    let server = RedisServer::start();
    let cfg = PayGateConfig::default()
        .with_rate_limit(0)
        .with_tool_price("t", 3)
        .with_global_quota(Quota {
            daily_credit_limit: 3_000, // binds at 1,000 calls
            ..Default::default()
        });
    let a = gate(&server, "two:", cfg.clone()).await;
    let b = gate(&server, "two:", cfg).await;
    let key = a.create_key("shared", 1_000_000).await.unwrap();
    a.store()
        .update(&KeyDigest::of(&key), &KeyUpdate::SetSpendingLimit(3_600))
        .await
        .unwrap();
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (key, tally) = (key.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..150 {
                let d = g.evaluate(&CallRequest::new(&key, "t")).await;
                if d.allowed {
                    tally.allowed.fetch_add(1, Ordering::Relaxed);
                    tally
                        .charged
                        .fetch_add(d.credits_charged, Ordering::Relaxed);
                    if n % 10 == 0 {
                        let receipt = d.receipt.expect("receipt");
                        tally
                            .refunded
                            .fetch_add(receipt.credits(), Ordering::Relaxed);
                        g.refund(receipt).await.expect("refund");
                    }
                } else {
                    let r = d.reason.unwrap();
                    assert!(
                        r == DenyReason::DailyCreditQuotaExceeded
                            || r == DenyReason::SpendingLimitExceeded,
                        "{r}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rec = b.store().get(&KeyDigest::of(&key)).await.unwrap().unwrap();
    let net = tally.charged.load(Ordering::Relaxed) - tally.refunded.load(Ordering::Relaxed);
    assert_eq!(rec.credits, 1_000_000 - net, "credits consumed == charged");
    assert_eq!(rec.total_spent, net);
    assert_eq!(rec.quota_usage.daily_credits, net);
    assert!(net <= 3_000, "quota never exceeded across both gateways");
    assert_eq!(net, 3_000, "and every credit of it was sold");
    let stats = a.store().stats().await.unwrap();
    assert_eq!(stats.total_credits, rec.credits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_is_exact_across_gateways() {
    let server = RedisServer::start();
    let cfg = PayGateConfig::default().with_rate_limit(50);
    let a = gate(&server, "rl:", cfg.clone()).await;
    let b = gate(&server, "rl:", cfg).await;
    let key = a.create_key("burst", 10_000).await.unwrap();
    let allowed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let g = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (key, allowed) = (key.clone(), allowed.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if g.evaluate(&CallRequest::new(&key, "t")).await.allowed {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_gated_call() {
    let server = RedisServer::start();
    let g = gate(
        &server,
        "rt:",
        PayGateConfig::default().with_rate_limit(1000),
    )
    .await;
    let key = g.create_key("k", 1_000).await.unwrap();
    g.evaluate(&CallRequest::new(&key, "warm")).await; // loads the script once
                                                       // MONITOR lists every command a client sends ("[0 127.0.0.1:port]") apart from the
                                                       // commands scripts run inside Redis ("[0 lua]").
                                                       // The calls start once the monitor has said OK (it is attached); its lines are read as
                                                       // they come, until every call has shown up or a deadline passes, so neither a slow start
                                                       // nor output still in flight when it is stopped can hide a command.
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli monitor");
    let stdout = monitor.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("monitor answers");
    assert_eq!(first.trim(), "OK", "monitor attached");
    for _ in 0..25 {
        assert!(g.evaluate(&CallRequest::new(&key, "t")).await.allowed);
    }
    g.evaluate(&CallRequest::new("pg_unknown_key_0000000", "t"))
        .await;
    let mut out = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    // A moment more after the last expected line, in case a stray extra command follows.
    let mut settle = None;
    while std::time::Instant::now() < deadline {
        let wait = settle.map_or(Duration::from_millis(100), |_| Duration::from_millis(300));
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if line.contains("[0 127.0.0.1:") {
                    seen += 1;
                }
                out.push_str(&line);
                out.push('\n');
                if seen >= 26 && settle.is_none() {
                    settle = Some(());
                }
            }
            Err(_) if settle.is_some() => break,
            Err(_) => {}
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let client_commands: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("[0 127.0.0.1:"))
        .collect();
    assert_eq!(
        client_commands.len(),
        26,
        "one command per gated call:\n{out}"
    );
    assert!(
        client_commands.iter().all(|l| l.contains("\"EVALSHA\"")),
        "{out}"
    );
    assert!(out.contains("[0 lua]"), "the checks ran inside the script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_fails_closed_and_heals_with_the_books_balanced() {
    let mut server = RedisServer::start();
    let g = gate(
        &server,
        "fault:",
        PayGateConfig::default().with_rate_limit(0),
    )
    .await;
    let key = g.create_key("k", 100_000).await.unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (g, key, tally, stop) = (g.clone(), key.clone(), tally.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let d = g.evaluate(&CallRequest::new(&key, "t")).await;
                if d.allowed {
                    tally.allowed.fetch_add(1, Ordering::Relaxed);
                    tally
                        .charged
                        .fetch_add(d.credits_charged, Ordering::Relaxed);
                } else {
                    assert_eq!(d.reason, Some(DenyReason::StoreUnavailable));
                    assert_eq!(d.credits_charged, 0);
                    tally.unavailable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_outage = tally.allowed.load(Ordering::Relaxed);
    assert!(before_outage > 0, "load is running");
    // Redis goes away for 0.7 s under load, then comes back with its data.
    let _server = tokio::task::spawn_blocking(move || {
        server.stop();
        std::thread::sleep(Duration::from_millis(700));
        server.restart();
        server
    })
    .await
    .expect("restart");
    assert!(
        tally.unavailable.load(Ordering::Relaxed) > 0,
        "calls failed closed during the outage"
    );
    // Service resumes by itself.
    let mut resumed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if g.evaluate(&CallRequest::new(&key, "t")).await.allowed {
            tally.allowed.fetch_add(1, Ordering::Relaxed);
            tally.charged.fetch_add(1, Ordering::Relaxed);
            resumed = true;
            break;
        }
    }
    assert!(resumed, "the gateway recovered once Redis came back");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    // Charges whose replies were lost in the outage are settled in the background.
    for _ in 0..50 {
        if g.store().unsettled_charges() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(g.store().unsettled_charges(), 0);
    let rec = g.store().get(&KeyDigest::of(&key)).await.unwrap().unwrap();
    let charged = tally.charged.load(Ordering::Relaxed);
    assert_eq!(
        rec.credits,
        100_000 - charged,
        "nothing charged twice or lost"
    );
    assert_eq!(rec.total_calls, tally.allowed.load(Ordering::Relaxed));
}

/// Keys written by a version without key ids or tag sets: every read already shows the id
/// derived from the digest, and `rebuild_indexes` makes both findable without touching the
/// books.
#[tokio::test]
async fn indexes_are_rebuilt_for_keys_written_before_them() {
    use std::collections::BTreeMap;
    let server = RedisServer::start();
    let g = gate(&server, "old:", PayGateConfig::default()).await;
    let issued = g
        .create_key_with(
            "legacy",
            40,
            &[KeyUpdate::MergeTags(BTreeMap::from([(
                "plan".to_string(),
                Some("pro".to_string()),
            )]))],
        )
        .await
        .unwrap();
    let digest = issued.record.key_hash;
    // What the older version left behind: no `kid` field, no id hash, no tag sets.
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(format!("old:{{{}}}", digest.to_hex()))
        .arg("kid")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("old:ids")
        .arg("old:tag:4:plan=pro")
        .query_async(&mut conn)
        .await
        .unwrap();
    let derived = paygate_mcp::KeyId::derived(&digest);
    let rec = g.store().get(&digest).await.unwrap().unwrap();
    assert_eq!(rec.id(), derived, "reads show the derived id");
    assert_eq!(g.store().find_id(&derived).await.unwrap(), None);
    let want = BTreeMap::from([("plan".to_string(), "pro".to_string())]);
    assert!(g
        .store()
        .search_by_tags(&want, 10)
        .await
        .unwrap()
        .is_empty());

    // The first gateway to start on data not marked as indexed indexes it by itself.
    let _: () = redis::cmd("DEL")
        .arg("old:schema")
        .query_async(&mut conn)
        .await
        .unwrap();
    let upgraded = gate(&server, "old:", PayGateConfig::default()).await;
    assert_eq!(
        upgraded.store().find_id(&derived).await.unwrap(),
        Some(digest)
    );
    assert_eq!(
        upgraded
            .store()
            .search_by_tags(&want, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // And by hand, again, it changes nothing.
    assert_eq!(g.store().rebuild_indexes().await.unwrap(), 1);
    assert_eq!(g.store().find_id(&derived).await.unwrap(), Some(digest));
    assert_eq!(g.store().search_by_tags(&want, 10).await.unwrap().len(), 1);
    // The id is now on the record and survives a rotation; the books are untouched.
    let rotated = g.rotate(derived).await.unwrap().unwrap();
    assert_eq!(rotated.record.id(), derived);
    assert_eq!(rotated.record.credits, 40);
    let again = g.get_key(derived).await.unwrap().unwrap();
    assert_eq!(again.key_hash, KeyDigest::of(&rotated.key));
    // Running it again changes nothing.
    assert_eq!(g.store().rebuild_indexes().await.unwrap(), 1);
    assert_eq!(g.store().search_by_tags(&want, 10).await.unwrap().len(), 1);
}

/// An index rebuild racing rotations leaves no record behind under a rotated-away key and
/// no stale tag set member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_indexes_while_keys_rotate_leaves_nothing_behind() {
    use std::collections::BTreeMap;
    let server = RedisServer::start();
    let g = gate(&server, "race:", PayGateConfig::default()).await;
    let tag = KeyUpdate::MergeTags(BTreeMap::from([("t".to_string(), Some("v".to_string()))]));
    let mut keys = Vec::new();
    for i in 0..600 {
        keys.push(
            g.create_key_with(&format!("k{i}"), 1, std::slice::from_ref(&tag))
                .await
                .unwrap(),
        );
    }
    let rotator = {
        let g = g.clone();
        let ids: Vec<_> = keys.iter().map(|k| k.record.id()).collect();
        tokio::spawn(async move {
            for id in ids {
                g.rotate(id).await.unwrap().unwrap();
            }
        })
    };
    while !rotator.is_finished() {
        g.store().rebuild_indexes().await.unwrap();
    }
    rotator.await.unwrap();
    for k in &keys {
        assert!(
            g.store().get(&k.record.key_hash).await.unwrap().is_none(),
            "a record was left under a rotated-away key"
        );
    }
    let want = BTreeMap::from([("t".to_string(), "v".to_string())]);
    assert_eq!(
        g.store().search_by_tags(&want, 10_000).await.unwrap().len(),
        600
    );
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let members: u64 = redis::cmd("SCARD")
        .arg("race:tag:1:t=v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, 600, "no stale member in the tag set");
    assert_eq!(g.store().stats().await.unwrap().total_keys, 600);
}
