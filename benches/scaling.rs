//! `Gate::evaluate` throughput on one thread and on two, each thread on its own key, every
//! check on. Shows whether anything global serializes the hot path.
//!
//! `cargo bench --bench scaling` prints calls/s per round and the median ratio.

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use paygate_mcp::{
    block_on, parse_ip_entry, AlertRule, AlertType, CallRequest, Gate, KeyDigest, KeyStore,
    KeyUpdate, PayGateConfig, Quota, ToolPricing,
};

fn gate() -> Arc<Gate> {
    let big = paygate_mcp::config::MAX_AMOUNT;
    let cfg = PayGateConfig::default()
        .with_rate_limit(1_000_000_000)
        .with_tool_pricing(
            "search",
            ToolPricing {
                credits_per_call: 1,
                rate_limit_per_min: Some(1_000_000_000),
                credits_per_kb_input: None,
            },
        )
        .with_global_quota(Quota {
            daily_call_limit: big,
            monthly_call_limit: big,
            daily_credit_limit: big,
            monthly_credit_limit: big,
        })
        .with_alert_rule(AlertRule::new(AlertType::CreditsLow, 10))
        .with_alert_rule(AlertRule::new(AlertType::SpendingThreshold, 99));
    Arc::new(Gate::new(cfg).expect("valid config"))
}

fn key(gate: &Gate) -> String {
    let big = paygate_mcp::config::MAX_AMOUNT;
    let key = block_on(gate.create_key("bench", big)).expect("key");
    let d = KeyDigest::of(&key);
    for change in [
        KeyUpdate::SetAcl {
            allowed_tools: vec!["search".into()],
            denied_tools: vec!["admin".into()],
        },
        KeyUpdate::SetIpAllowlist(vec![parse_ip_entry("10.0.0.0/8").expect("cidr")]),
        KeyUpdate::SetSpendingLimit(big),
    ] {
        block_on(gate.store().update(&d, &change))
            .expect("store")
            .expect("key");
    }
    key
}

/// Calls per second with `threads` threads, each making `calls` calls on its own key.
fn run(gate: &Arc<Gate>, keys: &[String], threads: usize, calls: usize) -> f64 {
    let ip: IpAddr = "10.1.2.3".parse().expect("ip");
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = keys[..threads]
        .iter()
        .cloned()
        .map(|key| {
            let (gate, barrier) = (gate.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..calls {
                    let d = gate.evaluate_blocking(&CallRequest::new(&key, "search").from_ip(ip));
                    assert!(d.allowed);
                }
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().expect("thread");
    }
    (threads * calls) as f64 / t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let (rounds, calls) = if quick { (1, 1_000) } else { (7, 1_000_000) };
    let gate = gate();
    let keys = vec![key(&gate), key(&gate)];
    let mut one = Vec::new();
    let mut two = Vec::new();
    for round in 1..=rounds {
        let a = run(&gate, &keys, 1, calls);
        let b = run(&gate, &keys, 2, calls);
        println!(
            "round {round}: 1 thread {a:.0} calls/s, 2 threads {b:.0} calls/s, ratio {:.2}",
            b / a
        );
        one.push(a);
        two.push(b);
    }
    let ratios: Vec<f64> = one.iter().zip(&two).map(|(a, b)| b / a).collect();
    println!(
        "scaling: median 1 thread {:.0} calls/s, 2 threads {:.0} calls/s, median ratio {:.2}",
        median(one),
        median(two),
        median(ratios)
    );
}
