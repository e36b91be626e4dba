//! Users of paygate-mcp 1.8 (TypeScript) bring their keys: a 1.8 state file (plaintext
//! keys in `[key, record]` pairs) is imported into the memory store and into Redis, after
//! which the old keys authenticate with their balances, ACLs, quotas, tags and allowlists,
//! bad records are reported (never with a full key), and no plaintext key is written back.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use paygate_mcp::{CallRequest, DenyReason, Gate, KeyStore, MemoryKeyStore, PayGateConfig};

const ALICE: &str = "pg_ts18alice0000000000000000000000000000000000001";
const BOB: &str = "pg_ts18bob000000000000000000000000000000000000002";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ts18_state.json")
}

fn config() -> PayGateConfig {
    PayGateConfig::default().with_tool_price("search", 2)
}

/// The imported keys behave as they did under 1.8 (same UTC day as the counters).
async fn check_imported<S: KeyStore>(gate: &Gate<S>) {
    let alice = gate.get_key(ALICE).await.unwrap().expect("alice imported");
    assert_eq!(alice.name, "alice");
    assert_eq!(
        (alice.credits, alice.total_spent, alice.total_calls),
        (500, 120, 60)
    );
    assert_eq!(alice.spending_limit, 1000);
    assert_eq!(alice.allowed_tools, ["search", "fetch"]);
    assert_eq!(alice.denied_tools, ["fetch"]);
    assert_eq!(alice.tags.get("plan").map(String::as_str), Some("pro"));
    assert_eq!(alice.ip_allowlist.len(), 2);
    assert_eq!(alice.quota.map(|q| q.daily_call_limit), Some(10));
    assert_eq!(alice.created_at.to_rfc3339(), "2026-01-02T03:04:05+00:00");
    assert_ne!(alice.key_masked, ALICE, "only a masked form is kept");

    let from: IpAddr = "10.1.2.3".parse().unwrap();
    let call = CallRequest::new(ALICE, "search").from_ip(from);
    let d = gate.evaluate(&call).await;
    assert!(d.allowed, "{:?} {}", d.reason, d.detail);
    assert_eq!(d.remaining_credits, Some(498));
    // 9 calls today under 1.8, this was the 10th: the daily quota carried over.
    let d = gate.evaluate(&call).await;
    assert_eq!(d.reason, Some(DenyReason::DailyCallQuotaExceeded));
    let d = gate
        .evaluate(&CallRequest::new(ALICE, "fetch").from_ip(from))
        .await;
    assert_eq!(d.reason, Some(DenyReason::ToolDenied));
    let d = gate
        .evaluate(&CallRequest::new(ALICE, "search").from_ip("172.16.0.1".parse().unwrap()))
        .await;
    assert_eq!(d.reason, Some(DenyReason::IpNotAllowed));
    // A revoked 1.8 key stays revoked.
    let d = gate.evaluate(&CallRequest::new(BOB, "search")).await;
    assert_eq!(d.reason, Some(DenyReason::InvalidApiKey));
}

fn check_report(report: &paygate_mcp::store::state_file::ImportReport) {
    assert_eq!((report.imported, report.skipped), (2, 3), "{report:?}");
    let text = report.reasons.join("\n");
    assert!(text.contains("credits must be a whole number"), "{text}");
    assert!(text.contains("16 to 256"), "{text}");
    assert!(text.contains("ipAllowlist"), "{text}");
    assert!(!text.contains(" at line "), "no parser positions: {text}");
    assert!(
        !text.contains("pg_ts18carol00000000000000000000000000000000000003"),
        "no full key in a report: {text}"
    );
}

#[tokio::test]
async fn a_ts18_state_file_moves_into_the_memory_store_and_is_written_back_hashed() {
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Gate::with_store(config(), MemoryKeyStore::new(), clock).unwrap();
    let report = gate.import_ts18_state(&fixture()).await.unwrap();
    check_report(&report);
    check_imported(&gate).await;

    // Imported again: nothing changes, every key is reported as already there.
    let again = gate.import_ts18_state(&fixture()).await.unwrap();
    assert_eq!(again.imported, 0);
    assert!(again
        .reasons
        .iter()
        .any(|r| r.contains("already in the store")));

    // Saved in this gateway's own format: digests only.
    let dir = std::env::temp_dir().join(format!("paygate-ts18-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("state.json");
    gate.store().save_to(&saved).unwrap();
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(
        !text.contains(ALICE) && !text.contains(BOB),
        "a plaintext key was written"
    );
    let (reloaded, load) = MemoryKeyStore::load_from(&saved).unwrap();
    assert_eq!(load.loaded, 2);
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Gate::with_store(config(), reloaded, clock).unwrap();
    assert_eq!(gate.get_key(ALICE).await.unwrap().unwrap().credits, 498);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_ts18_state_file_moves_into_redis() {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};
    let server = common::redis_server::RedisServer::start();
    let store = RedisKeyStore::connect(
        RedisConfig::new(server.url())
            .with_prefix("ts18:")
            .with_time(RedisTime::Request),
    )
    .await
    .unwrap();
    let clock = common::clock_at("2026-03-15T12:00:00Z");
    let gate = Arc::new(Gate::with_store(config(), store, clock).unwrap());
    let report = gate.import_ts18_state(&fixture()).await.unwrap();
    check_report(&report);
    check_imported(&gate).await;
}

#[tokio::test]
async fn a_file_that_is_not_a_ts18_state_file_is_refused_whole_and_clearly() {
    let dir = std::env::temp_dir().join(format!("paygate-ts18-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("state.json");
    std::fs::write(&bad, br#"{"keys": {"pg_x": 1}}"#).unwrap();
    let gate = Gate::new(config()).unwrap();
    let err = gate.import_ts18_state(&bad).await.unwrap_err().to_string();
    assert!(err.contains("not a paygate-mcp 1.8 state file"), "{err}");
    assert!(!err.contains(" line "), "{err}");
    assert_eq!(
        gate.key_stats().await.unwrap().total_keys,
        0,
        "nothing imported"
    );
    let missing = gate.import_ts18_state(&dir.join("missing.json")).await;
    assert!(missing.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
