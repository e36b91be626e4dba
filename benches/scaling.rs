//! `Gate::evaluate` throughput on one thread and on two, each thread on its own key, every
//! check on. Shows whether anything global serializes the hot path.
//!
//! `cargo bench --bench scaling` prints calls/s per round and the median ratio.

#[path = "common/every_check.rs"]
mod every_check;

use std::sync::{Arc, Barrier};
use std::time::Instant;

use paygate_mcp::{CallRequest, Gate};

/// Calls per second with `threads` threads, each making `calls` calls on its own key.
fn run(gate: &Arc<Gate>, keys: &[String], threads: usize, calls: usize) -> f64 {
    let ip = every_check::client_ip();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = keys[..threads]
        .iter()
        .cloned()
        .map(|key| {
            let (gate, barrier) = (gate.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..calls {
                    let d = gate
                        .evaluate_blocking(&CallRequest::new(&key, every_check::TOOL).from_ip(ip));
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
    let gate = every_check::gate();
    let keys = vec![every_check::key(&gate), every_check::key(&gate)];
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
