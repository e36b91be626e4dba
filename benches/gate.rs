//! `Gate::evaluate` on the in-memory store with every check on: ACL, IP allowlist, both rate
//! windows, quotas, spending limit and alert rules.
//!
//! `cargo bench --bench gate`.

#[path = "common/every_check.rs"]
mod every_check;

use criterion::{criterion_group, criterion_main, Criterion};
use paygate_mcp::CallRequest;

fn bench(c: &mut Criterion) {
    let gate = every_check::gate();
    let key = every_check::key(&gate);
    let ip = every_check::client_ip();
    c.bench_function("gate_evaluate_allowed_all_checks", |b| {
        b.iter(|| {
            let decision =
                gate.evaluate_blocking(&CallRequest::new(&key, every_check::TOOL).from_ip(ip));
            assert!(decision.allowed);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
