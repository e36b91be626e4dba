//! Resident memory per key in `MemoryKeyStore` at 1,000,000 keys.
//!
//! `cargo bench --bench memory` creates the keys through the store's public API (as the
//! admin API does) and reports the growth of the process's resident set size divided by the
//! number of keys.

use paygate_mcp::{block_on, KeyRecord, KeyStore, MemoryKeyStore};

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let n: u32 = if quick { 10_000 } else { 1_000_000 };
    let store = MemoryKeyStore::new();
    let before = rss();
    for i in 0..n {
        let key = format!("pg_{i:048x}");
        let rec = KeyRecord::new(&key, &format!("customer-{i}"), 1_000, 1_700_000_000_000);
        block_on(store.insert(rec)).expect("insert");
    }
    let after = rss();
    let per_key = (after.saturating_sub(before)) as f64 / f64::from(n);
    println!(
        "memory: {n} keys, RSS grew {:.1} MiB, {per_key:.0} bytes per key",
        (after - before) as f64 / 1048576.0
    );
    std::hint::black_box(&store);
}
