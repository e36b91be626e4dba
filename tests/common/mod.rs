//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use paygate_mcp::{Clock, Gate, KeyUpdate, ManualClock, MemoryKeyStore, PayGateConfig};

/// 2026-03-15T10:00:00Z, a plain mid-month weekday.
pub const T0: &str = "2026-03-15T10:00:00Z";

/// A manual clock at `rfc3339`.
pub fn clock_at(rfc3339: &str) -> Arc<ManualClock> {
    Arc::new(ManualClock::at_rfc3339(rfc3339).expect("valid test timestamp"))
}

/// A gate over a fresh memory store with a manual clock at [`T0`].
pub fn gate(cfg: PayGateConfig) -> (Arc<ManualClock>, Gate<MemoryKeyStore>) {
    gate_at(cfg, T0)
}

/// A gate over a fresh memory store with a manual clock at `rfc3339`.
pub fn gate_at(cfg: PayGateConfig, rfc3339: &str) -> (Arc<ManualClock>, Gate<MemoryKeyStore>) {
    let clock = clock_at(rfc3339);
    let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).expect("valid config");
    (clock, gate)
}

/// Applies an update to the key `key` of a memory-store gate.
pub fn update(gate: &Gate<MemoryKeyStore>, key: &str, change: KeyUpdate) {
    use paygate_mcp::KeyStore;
    paygate_mcp::block_on(
        gate.store()
            .update(&paygate_mcp::KeyDigest::of(key), &change),
    )
    .expect("store answers")
    .expect("key exists");
}

/// The full record of `key`.
pub fn record(gate: &Gate<MemoryKeyStore>, key: &str) -> paygate_mcp::KeyRecord {
    use paygate_mcp::KeyStore;
    paygate_mcp::block_on(gate.store().get(&paygate_mcp::KeyDigest::of(key)))
        .expect("store answers")
        .expect("key exists")
}

/// Milliseconds of `clock` as a chrono time.
pub fn now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    clock.now()
}

pub mod mcp;

pub mod redis_server;

pub mod stacks;

/// A whole response body as text.
pub async fn body_text(
    resp: http::Response<impl http_body::Body<Data = bytes::Bytes, Error = impl std::fmt::Debug>>,
) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

pub mod gateway;
