//! One suite every `KeyStore` must pass. Each check is an async function generic over the
//! store; `conformance_suite!` instantiates them for a backend.

mod common;

use std::collections::BTreeMap;

use paygate_mcp::{
    store::Checks, ChargeRequest, DenyReason, KeyDigest, KeyRecord, KeyStore, KeyUpdate, Quota,
    StoreError,
};

const NOW: i64 = 1_773_568_800_000; // 2026-03-15T10:00:00Z

fn key(n: u32) -> String {
    format!("pg_{n:048x}")
}

fn rec(n: u32, credits: u64) -> KeyRecord {
    KeyRecord::new(&key(n), &format!("key-{n}"), credits, NOW)
}

fn req(k: &str, tool: &'static str, price: u64) -> ChargeRequest<'static> {
    ChargeRequest {
        key: KeyDigest::of(k),
        tool,
        price,
        client_ip: None,
        now_ms: NOW,
        global_rate_limit: 0,
        tool_rate_limit: 0,
        global_quota: None,
        shadow: false,
        checks: Checks::ALL,
    }
}

async fn insert_get_duplicate<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let got = s.get(&KeyDigest::of(&key(1))).await.unwrap().unwrap();
    assert_eq!(got, rec(1, 10));
    assert!(matches!(
        s.insert(rec(1, 99)).await,
        Err(StoreError::Duplicate)
    ));
    assert_eq!(
        s.get(&KeyDigest::of(&key(1)))
            .await
            .unwrap()
            .unwrap()
            .credits,
        10
    );
    assert!(s.get(&KeyDigest::of(&key(2))).await.unwrap().is_none());
}

async fn charge_deducts_and_counts<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let out = s.charge(&req(&key(1), "t", 4)).await.unwrap();
    assert_eq!(out.denial, None);
    let receipt = out.receipt.unwrap();
    assert_eq!(receipt.credits(), 4);
    let snap = out.snapshot.unwrap();
    assert_eq!(
        (snap.credits, snap.total_spent, snap.total_calls),
        (6, 4, 1)
    );
    let r = s.get(&KeyDigest::of(&key(1))).await.unwrap().unwrap();
    assert_eq!(r.last_used_at.map(|t| t.timestamp_millis()), Some(NOW));
    assert_eq!(r.quota_usage.rolled(NOW).daily_credits, 4);
    let out = s.charge(&req(&key(1), "t", 7)).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::InsufficientCredits));
    assert!(out.receipt.is_none());
    let out = s.charge(&req(&key(9), "t", 1)).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::InvalidApiKey));
    assert!(out.snapshot.is_none());
}

async fn check_order_and_shadow<S: KeyStore>(s: &S) {
    s.insert(rec(1, 0)).await.unwrap();
    let d = KeyDigest::of(&key(1));
    s.update(
        &d,
        &KeyUpdate::SetAcl {
            allowed_tools: vec![],
            denied_tools: vec!["x".into()],
        },
    )
    .await
    .unwrap();
    // ACL comes before credits.
    let out = s.charge(&req(&key(1), "x", 5)).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::ToolDenied));
    let mut shadow = req(&key(1), "y", 5);
    shadow.shadow = true;
    let out = s.charge(&shadow).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::InsufficientCredits));
    assert!(out.receipt.is_none());
    s.update(&d, &KeyUpdate::TopUp(5)).await.unwrap();
    let out = s.charge(&shadow).await.unwrap();
    assert_eq!(out.denial, None);
    assert!(out.receipt.is_none(), "shadow mode deducts nothing");
    assert_eq!(s.get(&d).await.unwrap().unwrap().credits, 5);
}

async fn rate_windows_and_quotas<S: KeyStore>(s: &S) {
    s.insert(rec(1, 100)).await.unwrap();
    let mut r = req(&key(1), "t", 1);
    r.global_rate_limit = 2;
    r.tool_rate_limit = 5;
    r.global_quota = Some(Quota {
        daily_call_limit: 3,
        ..Default::default()
    });
    assert!(s.charge(&r).await.unwrap().denial.is_none());
    r.now_ms += 1_000;
    let ok = s.charge(&r).await.unwrap();
    assert_eq!(ok.rate.unwrap().limit, 5, "the tool window is reported");
    r.now_ms += 1_000;
    let out = s.charge(&r).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::RateLimited));
    assert_eq!(out.retry_after_secs, Some(58));
    r.now_ms = NOW + 60_000;
    assert!(s.charge(&r).await.unwrap().denial.is_none());
    r.now_ms += 60_000;
    let out = s.charge(&r).await.unwrap();
    assert_eq!(out.denial, Some(DenyReason::DailyCallQuotaExceeded));
}

async fn refund_restores_exactly<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let out = s.charge(&req(&key(1), "t", 3)).await.unwrap();
    let snap = s.refund(out.receipt.unwrap(), NOW).await.unwrap().unwrap();
    assert_eq!(
        (snap.credits, snap.total_spent, snap.total_calls),
        (10, 0, 0)
    );
    let r = s.get(&KeyDigest::of(&key(1))).await.unwrap().unwrap();
    assert_eq!(r.quota_usage.rolled(NOW).daily_calls, 0);
    assert_eq!(r.quota_usage.rolled(NOW).daily_credits, 0);
}

async fn updates_apply_and_validate<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let d = KeyDigest::of(&key(1));
    let tags: BTreeMap<_, _> = [
        ("team".to_string(), Some("a".to_string())),
        ("x".into(), Some("1".into())),
    ]
    .into();
    s.update(&d, &KeyUpdate::MergeTags(tags)).await.unwrap();
    let del: BTreeMap<_, _> = [("x".to_string(), None)].into();
    let r = s
        .update(&d, &KeyUpdate::MergeTags(del))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.tags,
        BTreeMap::from([("team".to_string(), "a".to_string())])
    );
    let too_many: BTreeMap<_, _> = (0..51)
        .map(|i| (format!("k{i}"), Some("v".to_string())))
        .collect();
    assert!(matches!(
        s.update(&d, &KeyUpdate::MergeTags(too_many)).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.get(&d).await.unwrap().unwrap().tags.len(),
        1,
        "a refused update changes nothing"
    );
    let r = s
        .update(&d, &KeyUpdate::SetSpendingLimit(7))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.spending_limit, 7);
    let q = Quota {
        monthly_call_limit: 9,
        ..Default::default()
    };
    assert_eq!(
        s.update(&d, &KeyUpdate::SetQuota(Some(q)))
            .await
            .unwrap()
            .unwrap()
            .quota,
        Some(q)
    );
    assert!(s
        .update(&KeyDigest::of("pg_nobody_here_0000"), &KeyUpdate::Revoke)
        .await
        .unwrap()
        .is_none());
    let r = s.update(&d, &KeyUpdate::Revoke).await.unwrap().unwrap();
    assert!(!r.active);
}

async fn revoked_keys_take_no_change<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    s.insert(rec(3, 10)).await.unwrap();
    let d = KeyDigest::of(&key(1));
    assert!(
        !s.update(&d, &KeyUpdate::Revoke)
            .await
            .unwrap()
            .unwrap()
            .active
    );
    let before = s.get(&d).await.unwrap().unwrap();
    let stats = s.stats().await.unwrap();
    let quota = Quota {
        daily_call_limit: 1,
        ..Default::default()
    };
    let expiry = chrono::DateTime::from_timestamp_millis(NOW + 60_000);
    for change in [
        KeyUpdate::TopUp(5),
        KeyUpdate::SetAcl {
            allowed_tools: vec!["a".into()],
            denied_tools: vec!["b".into()],
        },
        KeyUpdate::UpdateAcl {
            allowed_tools: Some(vec!["a".into()]),
            denied_tools: None,
        },
        KeyUpdate::UpdateAcl {
            allowed_tools: None,
            denied_tools: Some(vec!["b".into()]),
        },
        KeyUpdate::SetExpiry(expiry),
        KeyUpdate::SetExpiry(None),
        KeyUpdate::SetQuota(Some(quota)),
        KeyUpdate::SetQuota(None),
        KeyUpdate::MergeTags(BTreeMap::from([("t".to_string(), Some("v".to_string()))])),
        KeyUpdate::SetIpAllowlist(vec!["10.0.0.1/32".parse().unwrap()]),
        KeyUpdate::SetSpendingLimit(3),
    ] {
        assert!(
            matches!(s.update(&d, &change).await, Err(StoreError::Revoked)),
            "{change:?}"
        );
    }
    assert_eq!(s.get(&d).await.unwrap().unwrap(), before, "nothing changed");
    assert_eq!(s.stats().await.unwrap(), stats, "no credits stranded");
    // Revoking again changes nothing and is not an error.
    assert_eq!(
        s.update(&d, &KeyUpdate::Revoke).await.unwrap().unwrap(),
        before
    );
    // Rotation is refused, and creates no key.
    let new = key(2);
    assert!(matches!(
        s.rotate(&d, KeyDigest::of(&new), paygate_mcp::mask_key(&new))
            .await,
        Err(StoreError::Revoked)
    ));
    assert!(s.get(&KeyDigest::of(&new)).await.unwrap().is_none());
    assert_eq!(s.get(&d).await.unwrap().unwrap(), before);
    assert_eq!(
        s.charge(&req(&key(1), "t", 1)).await.unwrap().denial,
        Some(DenyReason::InvalidApiKey)
    );
    // Unknown keys are still just unknown; live keys still change.
    assert!(s
        .update(&KeyDigest::of(&key(9)), &KeyUpdate::TopUp(1))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.update(&KeyDigest::of(&key(3)), &KeyUpdate::TopUp(1))
            .await
            .unwrap()
            .unwrap()
            .credits,
        11
    );
}

async fn acl_lists_change_together_or_not_at_all<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let d = KeyDigest::of(&key(1));
    let acl = |allowed: Option<&[&str]>, denied: Option<&[&str]>| KeyUpdate::UpdateAcl {
        allowed_tools: allowed.map(|l| l.iter().map(|t| t.to_string()).collect()),
        denied_tools: denied.map(|l| l.iter().map(|t| t.to_string()).collect()),
    };
    let r = s
        .update(&d, &acl(Some(&["a", "b"]), Some(&["x"])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.allowed_tools.len(), r.denied_tools.len()), (2, 1));
    // A list left out is kept.
    let r = s
        .update(&d, &acl(None, Some(&["y"])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.allowed_tools, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(r.denied_tools, vec!["y".to_string()]);
    let before = s.get(&d).await.unwrap().unwrap();
    // When either list is refused, neither changes.
    let long = "t".repeat(201);
    let too_many: Vec<String> = (0..1_001).map(|i| format!("t{i}")).collect();
    for change in [
        acl(Some(&["c"]), Some(&[""])),
        acl(Some(&[""]), Some(&["z"])),
        acl(Some(&["c"]), Some(&[long.as_str()])),
        KeyUpdate::UpdateAcl {
            allowed_tools: Some(vec!["c".into()]),
            denied_tools: Some(too_many.clone()),
        },
        KeyUpdate::UpdateAcl {
            allowed_tools: Some(too_many),
            denied_tools: Some(vec!["z".into()]),
        },
    ] {
        assert!(
            matches!(s.update(&d, &change).await, Err(StoreError::Invalid(_))),
            "{change:?}"
        );
        assert_eq!(s.get(&d).await.unwrap().unwrap(), before, "{change:?}");
    }
    // Empty lists clear: all tools allowed, none denied.
    let r = s
        .update(&d, &acl(Some(&[]), Some(&[])))
        .await
        .unwrap()
        .unwrap();
    assert!(r.allowed_tools.is_empty() && r.denied_tools.is_empty());
}

async fn rotate_carries_state_and_kills_old<S: KeyStore>(s: &S) {
    s.insert(rec(1, 10)).await.unwrap();
    let mut r = req(&key(1), "t", 2);
    r.global_rate_limit = 2;
    s.charge(&r).await.unwrap();
    let new = key(2);
    let rotated = s
        .rotate(
            &KeyDigest::of(&key(1)),
            KeyDigest::of(&new),
            paygate_mcp::mask_key(&new),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rotated.credits, rotated.total_spent, rotated.name.as_str()),
        (8, 2, "key-1")
    );
    assert!(s.get(&KeyDigest::of(&key(1))).await.unwrap().is_none());
    assert_eq!(
        s.charge(&req(&key(1), "t", 1)).await.unwrap().denial,
        Some(DenyReason::InvalidApiKey)
    );
    // The rate window moved with the key: one slot of two is used.
    let mut r = req(&new, "t", 1);
    r.global_rate_limit = 2;
    assert!(s.charge(&r).await.unwrap().denial.is_none());
    assert_eq!(
        s.charge(&r).await.unwrap().denial,
        Some(DenyReason::RateLimited)
    );
    assert!(s
        .rotate(&KeyDigest::of(&key(1)), KeyDigest::of(&key(3)), "m".into())
        .await
        .unwrap()
        .is_none());
}

async fn list_pages_cover_every_key_once<S: KeyStore>(s: &S) {
    for n in 0..250 {
        s.insert(rec(n, u64::from(n))).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut after = None;
    loop {
        let page = s.list(after, 37).await.unwrap();
        assert_eq!(page.total, 250);
        assert!(page.keys.len() <= 37);
        for k in &page.keys {
            assert!(seen.insert(k.key_hash), "a key appeared twice");
        }
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
}

async fn search_and_stats<S: KeyStore>(s: &S) {
    for n in 0..20 {
        s.insert(rec(n, 10)).await.unwrap();
        let team = if n % 2 == 0 { "even" } else { "odd" };
        let tags = BTreeMap::from([("team".to_string(), Some(team.to_string()))]);
        s.update(&KeyDigest::of(&key(n)), &KeyUpdate::MergeTags(tags))
            .await
            .unwrap();
    }
    let want = BTreeMap::from([("team".to_string(), "odd".to_string())]);
    assert_eq!(s.search_by_tags(&want, 100).await.unwrap().len(), 10);
    assert_eq!(s.search_by_tags(&want, 3).await.unwrap().len(), 3);
    s.charge(&req(&key(0), "t", 4)).await.unwrap();
    s.update(&KeyDigest::of(&key(1)), &KeyUpdate::Revoke)
        .await
        .unwrap();
    s.update(&KeyDigest::of(&key(2)), &KeyUpdate::TopUp(5))
        .await
        .unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.total_keys, 20);
    assert_eq!(stats.active_keys, 19);
    assert_eq!(stats.total_credits, 200 - 4 - 10 + 5);
}

macro_rules! conformance_suite {
    ($backend:ident, $make:expr, $run:path) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn insert_get_duplicate() {
                $run(async {
                    let store = $make;
                    super::insert_get_duplicate(&store).await
                });
            }
            #[test]
            fn charge_deducts_and_counts() {
                $run(async {
                    let store = $make;
                    super::charge_deducts_and_counts(&store).await
                });
            }
            #[test]
            fn check_order_and_shadow() {
                $run(async {
                    let store = $make;
                    super::check_order_and_shadow(&store).await
                });
            }
            #[test]
            fn rate_windows_and_quotas() {
                $run(async {
                    let store = $make;
                    super::rate_windows_and_quotas(&store).await
                });
            }
            #[test]
            fn refund_restores_exactly() {
                $run(async {
                    let store = $make;
                    super::refund_restores_exactly(&store).await
                });
            }
            #[test]
            fn updates_apply_and_validate() {
                $run(async {
                    let store = $make;
                    super::updates_apply_and_validate(&store).await
                });
            }
            #[test]
            fn revoked_keys_take_no_change() {
                $run(async {
                    let store = $make;
                    super::revoked_keys_take_no_change(&store).await
                });
            }
            #[test]
            fn acl_lists_change_together_or_not_at_all() {
                $run(async {
                    let store = $make;
                    super::acl_lists_change_together_or_not_at_all(&store).await
                });
            }
            #[test]
            fn rotate_carries_state_and_kills_old() {
                $run(async {
                    let store = $make;
                    super::rotate_carries_state_and_kills_old(&store).await
                });
            }
            #[test]
            fn list_pages_cover_every_key_once() {
                $run(async {
                    let store = $make;
                    super::list_pages_cover_every_key_once(&store).await
                });
            }
            #[test]
            fn search_and_stats() {
                $run(async {
                    let store = $make;
                    super::search_and_stats(&store).await
                });
            }
        }
    };
}

conformance_suite!(
    memory,
    paygate_mcp::MemoryKeyStore::new(),
    paygate_mcp::block_on
);

#[cfg(feature = "redis")]
mod redis_backend {
    use std::sync::OnceLock;

    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};

    use super::common::redis_server::RedisServer;

    /// One server for the whole suite; every test gets its own key prefix.
    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    pub async fn store() -> RedisKeyStore {
        let prefix = format!("t{}:", paygate_mcp::generate_key().unwrap_or_default());
        let config = RedisConfig::new(server().url())
            .with_prefix(prefix)
            .with_time(RedisTime::Request);
        RedisKeyStore::connect(config)
            .await
            .expect("connect to the test redis-server")
    }

    pub fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}

#[cfg(feature = "redis")]
conformance_suite!(redis, redis_backend::store().await, redis_backend::run);
