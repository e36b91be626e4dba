//! `Gate::evaluate` on the in-memory store with every check on: ACL, IP allowlist, both rate
//! windows, quotas, spending limit and alert rules.
//!
//! `cargo bench --bench gate`.

use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use paygate_mcp::{
    block_on, parse_ip_entry, AlertRule, AlertType, CallRequest, Gate, KeyDigest, KeyStore,
    KeyUpdate, PayGateConfig, Quota, ToolPricing,
};

fn bench(c: &mut Criterion) {
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
    let gate = Arc::new(Gate::new(cfg).expect("valid config"));
    let key = block_on(gate.create_key("bench", big)).expect("key");
    let d = KeyDigest::of(&key);
    for change in [
        KeyUpdate::SetAcl {
            allowed_tools: vec!["search".into(), "echo".into()],
            denied_tools: vec!["admin".into()],
        },
        KeyUpdate::SetIpAllowlist(vec![parse_ip_entry("10.0.0.0/8").expect("cidr")]),
        KeyUpdate::SetSpendingLimit(big),
    ] {
        block_on(gate.store().update(&d, &change))
            .expect("store")
            .expect("key");
    }
    let ip: IpAddr = "10.1.2.3".parse().expect("ip");

    c.bench_function("gate_evaluate_allowed_all_checks", |b| {
        b.iter(|| {
            let decision = gate.evaluate_blocking(&CallRequest::new(&key, "search").from_ip(ip));
            assert!(decision.allowed);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
