//! Many threads hammering one key: the books always balance and no limit is ever crossed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use common::{gate, record, update};
use paygate_mcp::{CallRequest, DenyReason, KeyUpdate, PayGateConfig, Quota};

const THREADS: usize = 16;
const ATTEMPTS_PER_THREAD: usize = 8_000; // 128,000 attempts in all

#[test]
fn one_key_many_threads_exact_accounting_and_limits() {
    let cfg = PayGateConfig::default()
        .with_rate_limit(0)
        .with_tool_price("t", 3)
        .with_global_quota(Quota {
            daily_credit_limit: 120_000, // binds at 40,000 calls
            ..Default::default()
        });
    let (_, gate) = gate(cfg);
    let gate = Arc::new(gate);
    let key = gate.create_key_blocking("hot", 1_000_000).unwrap();
    update(&gate, &key, KeyUpdate::SetSpendingLimit(150_000)); // would bind at 50,000

    let charged = Arc::new(AtomicU64::new(0));
    let refunded = Arc::new(AtomicU64::new(0));
    let allowed = Arc::new(AtomicU64::new(0));
    let refunds = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (gate, key, barrier) = (gate.clone(), key.clone(), barrier.clone());
            let (charged, refunded, allowed, refunds) = (
                charged.clone(),
                refunded.clone(),
                allowed.clone(),
                refunds.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..ATTEMPTS_PER_THREAD {
                    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
                    if d.allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                        charged.fetch_add(d.credits_charged, Ordering::Relaxed);
                        // Odd threads refund one call in 50, racing other threads' charges.
                        if t % 2 == 1 && i % 50 == 0 {
                            let receipt = d.receipt.expect("allowed calls carry a receipt");
                            refunded.fetch_add(receipt.credits(), Ordering::Relaxed);
                            refunds.fetch_add(1, Ordering::Relaxed);
                            gate.refund_blocking(receipt).expect("key exists");
                        }
                    } else {
                        let r = d.reason.unwrap();
                        assert!(
                            r == DenyReason::DailyCreditQuotaExceeded
                                || r == DenyReason::SpendingLimitExceeded,
                            "unexpected denial {r}"
                        );
                        assert_eq!(d.credits_charged, 0);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no thread panicked");
    }

    let rec = record(&gate, &key);
    let charged = charged.load(Ordering::Relaxed);
    let refunded = refunded.load(Ordering::Relaxed);
    let allowed = allowed.load(Ordering::Relaxed);
    let refunds = refunds.load(Ordering::Relaxed);
    let net = charged - refunded;
    assert_eq!(
        rec.credits,
        1_000_000 - net,
        "credits consumed == net charged"
    );
    assert_eq!(rec.total_spent, net);
    assert_eq!(rec.total_calls, allowed - refunds);
    assert_eq!(rec.quota_usage.daily_credits, net);
    assert!(
        rec.quota_usage.daily_credits <= 120_000,
        "quota never exceeded"
    );
    assert!(rec.total_spent <= 150_000, "spending limit never exceeded");
    // The quota is the binding limit: every slot freed by a refund is taken again.
    assert_eq!(
        net, 120_000,
        "every credit of the quota was sold, none twice"
    );
    assert_eq!(allowed - refunds, 40_000);
    assert!(refunds > 0, "the test exercised refunds");
    assert_eq!(charged, allowed * 3);
}

#[test]
fn rate_window_is_exact_under_contention() {
    let (_, gate) = gate(PayGateConfig::default().with_rate_limit(500));
    let gate = Arc::new(gate);
    let key = gate.create_key_blocking("burst", 1_000_000).unwrap();
    let allowed = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (gate, key, allowed, barrier) =
                (gate.clone(), key.clone(), allowed.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..12_500 {
                    if gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("no thread panicked");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 500);
    let rec = record(&gate, &key);
    assert_eq!(rec.total_calls, 500);
    assert_eq!(rec.credits, 1_000_000 - 500);
}
