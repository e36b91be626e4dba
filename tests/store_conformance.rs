//! One suite every `KeyStore` must pass. Each check is an async function generic over the
//! store; `conformance_suite!` instantiates them for a backend.

mod common;

use std::collections::BTreeMap;

use paygate_mcp::{
    store::Checks, ChargeRequest, DenyReason, KeyDigest, KeyId, KeyRecord, KeySnapshot, KeyStore,
    KeyUpdate, Quota, StoreError,
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
    let first = rec(1, 10);
    s.insert(first.clone()).await.unwrap();
    let got = s.get(&KeyDigest::of(&key(1))).await.unwrap().unwrap();
    assert_eq!(got, first);
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

async fn key_ids_are_found_and_follow_rotation<S: KeyStore>(s: &S) {
    let mut a = rec(1, 10);
    let id: KeyId = "kid_00112233445566778899".parse().unwrap();
    a.key_id = Some(id);
    s.insert(a).await.unwrap();
    assert_eq!(s.find_id(&id).await.unwrap(), Some(KeyDigest::of(&key(1))));
    assert_eq!(
        s.get(&KeyDigest::of(&key(1))).await.unwrap().unwrap().id(),
        id
    );
    // An account id names one account: a second key with the same id is refused whole.
    let mut twin = rec(2, 10);
    twin.key_id = Some(id);
    assert!(matches!(s.insert(twin).await, Err(StoreError::Duplicate)));
    assert!(s.get(&KeyDigest::of(&key(2))).await.unwrap().is_none());
    assert_eq!(s.stats().await.unwrap().total_keys, 1);
    // The id stays with the account across rotations and finds its current key.
    for (old, new) in [(1, 3), (3, 4)] {
        let rotated = s
            .rotate(
                &KeyDigest::of(&key(old)),
                KeyDigest::of(&key(new)),
                "m".into(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rotated.id(), id);
        assert_eq!(
            s.find_id(&id).await.unwrap(),
            Some(KeyDigest::of(&key(new)))
        );
    }
    // Revoked keys keep their id (reports still name them).
    s.update(&KeyDigest::of(&key(4)), &KeyUpdate::Revoke)
        .await
        .unwrap();
    assert_eq!(s.find_id(&id).await.unwrap(), Some(KeyDigest::of(&key(4))));
    let unknown: KeyId = "kid_ffffffffffffffffffff".parse().unwrap();
    assert_eq!(s.find_id(&unknown).await.unwrap(), None);
    // A record written without an id reads with the one derived from its digest.
    let mut legacy = rec(5, 1);
    legacy.key_id = None;
    s.insert(legacy).await.unwrap();
    let derived = KeyId::derived(&KeyDigest::of(&key(5)));
    assert_eq!(
        s.get(&KeyDigest::of(&key(5))).await.unwrap().unwrap().id(),
        derived
    );
    assert_eq!(
        s.find_id(&derived).await.unwrap(),
        Some(KeyDigest::of(&key(5)))
    );
    // Charges report the id too.
    let out = s.charge(&req(&key(5), "t", 1)).await.unwrap();
    assert_eq!(out.snapshot.unwrap().key_id, derived);
}

async fn tag_index_follows_every_change<S: KeyStore>(s: &S) {
    let tags = |pairs: &[(&str, Option<&str>)]| {
        KeyUpdate::MergeTags(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        )
    };
    let want = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let names = |found: Vec<KeyRecord>| {
        let mut n: Vec<String> = found.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    };
    // Created with tags (the insert indexes them).
    let mut a = rec(1, 1);
    a.tags = want(&[("plan", "pro"), ("team", "red")]);
    s.insert(a).await.unwrap();
    for n in 2..6 {
        s.insert(rec(n, 1)).await.unwrap();
        s.update(&KeyDigest::of(&key(n)), &tags(&[("plan", Some("free"))]))
            .await
            .unwrap();
    }
    assert_eq!(
        names(
            s.search_by_tags(&want(&[("plan", "pro")]), 10)
                .await
                .unwrap()
        ),
        ["key-1"]
    );
    assert_eq!(
        s.search_by_tags(&want(&[("plan", "free")]), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    // Every wanted pair must match, whichever is rarer.
    assert!(s
        .search_by_tags(&want(&[("plan", "free"), ("team", "red")]), 10)
        .await
        .unwrap()
        .is_empty());
    // A changed value moves the key, a deleted tag drops it.
    s.update(&KeyDigest::of(&key(2)), &tags(&[("plan", Some("pro"))]))
        .await
        .unwrap();
    s.update(&KeyDigest::of(&key(3)), &tags(&[("plan", None)]))
        .await
        .unwrap();
    assert_eq!(
        names(
            s.search_by_tags(&want(&[("plan", "pro")]), 10)
                .await
                .unwrap()
        ),
        ["key-1", "key-2"]
    );
    assert_eq!(
        names(
            s.search_by_tags(&want(&[("plan", "free")]), 10)
                .await
                .unwrap()
        ),
        ["key-4", "key-5"]
    );
    // A refused change leaves the index as it was.
    let too_long = "x".repeat(101);
    assert!(s
        .update(
            &KeyDigest::of(&key(4)),
            &tags(&[("plan", Some(too_long.as_str()))])
        )
        .await
        .is_err());
    assert_eq!(
        s.search_by_tags(&want(&[("plan", "free")]), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // Rotation: the tags go with the account; the old key is found no more.
    s.rotate(&KeyDigest::of(&key(1)), KeyDigest::of(&key(9)), "m".into())
        .await
        .unwrap()
        .unwrap();
    let found = s
        .search_by_tags(&want(&[("team", "red")]), 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_hash, KeyDigest::of(&key(9)));
    // A revoked key is still found (reports and audits look for it).
    s.update(&KeyDigest::of(&key(9)), &KeyUpdate::Revoke)
        .await
        .unwrap();
    assert_eq!(
        s.search_by_tags(&want(&[("team", "red")]), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s
        .search_by_tags(&want(&[("team", "blue")]), 10)
        .await
        .unwrap()
        .is_empty());
}

/// One line of what a charge answered, for comparing stores: everything but the receipt's
/// store-private nonce.
fn outcome_line(label: &str, out: &paygate_mcp::store::ChargeOutcome) -> String {
    format!(
        "{label}: denial={:?} retry={:?} rate={:?} receipt={:?} newly_expired={} snapshot={:?}",
        out.denial,
        out.retry_after_secs,
        out.rate,
        out.receipt.as_ref().map(|r| r.credits()),
        out.newly_expired,
        out.snapshot.as_ref().map(same_id),
    )
}

/// `snap` with an id that depends only on its key: account ids are random per record, so
/// two stores' transcripts compare everything else (ids are checked in key_ids_* above).
fn same_id(snap: &KeySnapshot) -> KeySnapshot {
    KeySnapshot {
        key_id: KeyId::derived(&snap.key),
        ..snap.clone()
    }
}

/// `Checks` at the store: each check applies only when present, the key checks always.
/// Returns a transcript of every outcome so two stores can be compared line by line.
async fn checks_apply_only_where_present<S: KeyStore>(s: &S) -> Vec<String> {
    let mut log = Vec::new();
    let rate_only = Checks {
        rate_limits: true,
        ..Checks::NONE
    };
    let credits_only = Checks {
        credits: true,
        ..Checks::NONE
    };
    let quotas_only = Checks {
        quotas: true,
        ..Checks::NONE
    };
    let one_call_a_day = Quota {
        daily_call_limit: 1,
        ..Default::default()
    };

    // Rate limits only: the window applies, credits never move.
    s.insert(rec(1, 10)).await.unwrap();
    let d1 = KeyDigest::of(&key(1));
    let mut r = req(&key(1), "t", 4);
    r.global_rate_limit = 1;
    r.checks = rate_only;
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("rate-only 1", &out));
    assert_eq!(out.denial, None);
    assert!(
        out.receipt.is_none(),
        "a rate window alone counts nothing to undo"
    );
    assert_eq!(out.rate.map(|w| (w.limit, w.remaining)), Some((1, 0)));
    let snap = out.snapshot.unwrap();
    assert_eq!(
        (snap.credits, snap.total_spent, snap.total_calls),
        (10, 0, 0)
    );
    r.now_ms += 1_000;
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("rate-only 2", &out));
    assert_eq!(out.denial, Some(DenyReason::RateLimited));
    assert_eq!(out.retry_after_secs, Some(59));
    assert!(out.receipt.is_none());
    let got = s.get(&d1).await.unwrap().unwrap();
    assert_eq!(
        (got.credits, got.total_spent, got.total_calls),
        (10, 0, 0),
        "rate limits alone never move credits or billing's totals"
    );
    assert_eq!(got.quota_usage.rolled(NOW).daily_calls, 0);

    // Credits only: rate limits and quotas are ignored; the price and the spending limit
    // apply. No window is recorded, and the quota counters count nothing.
    s.insert(rec(2, 10)).await.unwrap();
    let d2 = KeyDigest::of(&key(2));
    s.update(&d2, &KeyUpdate::SetSpendingLimit(7))
        .await
        .unwrap();
    let mut r = req(&key(2), "t", 3);
    r.global_rate_limit = 1;
    r.tool_rate_limit = 1;
    r.global_quota = Some(one_call_a_day);
    r.checks = credits_only;
    for (n, left) in [(1, 7), (2, 4)] {
        let out = s.charge(&r).await.unwrap();
        log.push(outcome_line(&format!("credits-only {n}"), &out));
        assert_eq!(out.denial, None, "call {n}: no window, no quota");
        assert_eq!(out.rate, None, "call {n}: no window reported");
        assert_eq!(out.receipt.as_ref().map(|r| r.credits()), Some(3));
        assert_eq!(out.snapshot.unwrap().credits, left);
        r.now_ms += 1_000;
    }
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("credits-only spending limit", &out));
    assert_eq!(out.denial, Some(DenyReason::SpendingLimitExceeded));
    assert!(out.receipt.is_none());
    s.update(&d2, &KeyUpdate::SetSpendingLimit(0))
        .await
        .unwrap();
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("credits-only 3", &out));
    assert_eq!(out.denial, None);
    assert_eq!(out.snapshot.unwrap().credits, 1);
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("credits-only insufficient", &out));
    assert_eq!(out.denial, Some(DenyReason::InsufficientCredits));
    let got = s.get(&d2).await.unwrap().unwrap();
    assert_eq!((got.credits, got.total_spent, got.total_calls), (1, 9, 3));
    let usage = got.quota_usage.rolled(r.now_ms);
    assert_eq!(
        (usage.daily_calls, usage.daily_credits),
        (0, 0),
        "quota counters count only with the quota check"
    );
    // The credits-only calls left no window behind: a rate-checked call now passes.
    let mut rated = r.clone();
    rated.checks = rate_only;
    let out = s.charge(&rated).await.unwrap();
    log.push(outcome_line("credits-only then rate", &out));
    assert_eq!(out.denial, None, "no window was recorded without the check");
    assert_eq!(out.rate.map(|w| (w.limit, w.remaining)), Some((1, 0)));

    // Quotas only: the daily call quota denies the second call, credits never move, and a
    // credit quota counts nothing (the call costs nothing).
    s.insert(rec(3, 10)).await.unwrap();
    let d3 = KeyDigest::of(&key(3));
    let mut r = req(&key(3), "t", 5);
    r.global_rate_limit = 1;
    r.global_quota = Some(one_call_a_day);
    r.checks = quotas_only;
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("quota-only 1", &out));
    assert_eq!(out.denial, None);
    assert_eq!(out.rate, None);
    assert_eq!(out.receipt.as_ref().map(|r| r.credits()), Some(0));
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("quota-only 2", &out));
    assert_eq!(out.denial, Some(DenyReason::DailyCallQuotaExceeded));
    assert!(out.receipt.is_none());
    let got = s.get(&d3).await.unwrap().unwrap();
    assert_eq!((got.credits, got.total_spent, got.total_calls), (10, 0, 0));
    assert_eq!(got.quota_usage.rolled(NOW).daily_calls, 1);
    s.insert(rec(4, 10)).await.unwrap();
    let mut r = req(&key(4), "t", 5);
    r.global_quota = Some(Quota {
        daily_credit_limit: 1,
        ..Default::default()
    });
    r.checks = quotas_only;
    for n in 1..=2 {
        let out = s.charge(&r).await.unwrap();
        log.push(outcome_line(&format!("credit-quota-only {n}"), &out));
        assert_eq!(out.denial, None, "call {n} costs 0 credits of the quota");
    }
    let got = s.get(&KeyDigest::of(&key(4))).await.unwrap().unwrap();
    assert_eq!(got.credits, 10);
    assert_eq!(got.quota_usage.rolled(NOW).daily_credits, 0);
    assert_eq!(got.quota_usage.rolled(NOW).daily_calls, 2);

    // A receipt of a quota-only charge refunds 0 credits and takes back only the quota
    // count, leaving billing's totals (counted by a billed charge of the same call) alone.
    s.insert(rec(5, 10)).await.unwrap();
    let d5 = KeyDigest::of(&key(5));
    let mut billed = req(&key(5), "t", 4);
    billed.checks = credits_only;
    let out = s.charge(&billed).await.unwrap();
    log.push(outcome_line("billed charge", &out));
    let billed_receipt = out.receipt.expect("a billed call has a receipt");
    let mut r = req(&key(5), "t", 4);
    r.checks = quotas_only;
    let out = s.charge(&r).await.unwrap();
    log.push(outcome_line("refund charge", &out));
    let receipt = out.receipt.expect("a counted call has a receipt");
    assert_eq!(receipt.credits(), 0);
    let snap = s.refund(receipt, NOW).await.unwrap().expect("key exists");
    log.push(format!("refund: {:?}", same_id(&snap)));
    assert_eq!(
        (snap.credits, snap.total_spent, snap.total_calls),
        (6, 4, 1)
    );
    let got = s.get(&d5).await.unwrap().unwrap();
    assert_eq!(got.quota_usage.rolled(NOW).daily_calls, 0);
    let snap = s
        .refund(billed_receipt, NOW)
        .await
        .unwrap()
        .expect("key exists");
    log.push(format!("refund billed: {:?}", same_id(&snap)));
    assert_eq!(
        (snap.credits, snap.total_spent, snap.total_calls),
        (10, 0, 0)
    );
    assert_eq!(
        s.stats().await.unwrap().total_credits,
        10 + 1 + 10 + 10 + 10
    );

    // Key checks apply under `Checks::NONE` too; nothing else does.
    let none = |k: &str, tool: &'static str| {
        let mut r = req(k, tool, 5);
        r.checks = Checks::NONE;
        r.global_rate_limit = 1;
        r.global_quota = Some(one_call_a_day);
        r
    };
    let out = s.charge(&none(&key(99), "t")).await.unwrap();
    log.push(outcome_line("none unknown", &out));
    assert_eq!(out.denial, Some(DenyReason::InvalidApiKey));
    assert!(out.snapshot.is_none());

    s.insert(rec(6, 0)).await.unwrap();
    let d6 = KeyDigest::of(&key(6));
    for n in 1..=2 {
        let out = s.charge(&none(&key(6), "t")).await.unwrap();
        log.push(outcome_line(&format!("none allowed {n}"), &out));
        assert_eq!(
            out.denial, None,
            "call {n}: no credits, rate or quota check"
        );
        assert!(out.receipt.is_none(), "call {n}: nothing counted");
    }
    s.update(&d6, &KeyUpdate::Revoke).await.unwrap();
    let out = s.charge(&none(&key(6), "t")).await.unwrap();
    log.push(outcome_line("none revoked", &out));
    assert_eq!(out.denial, Some(DenyReason::InvalidApiKey));
    let got = s.get(&d6).await.unwrap().unwrap();
    assert_eq!((got.credits, got.total_spent, got.total_calls), (0, 0, 0));

    s.insert(rec(7, 10)).await.unwrap();
    let d7 = KeyDigest::of(&key(7));
    let acl = |allowed: &[&str], denied: &[&str]| KeyUpdate::SetAcl {
        allowed_tools: allowed.iter().map(|t| t.to_string()).collect(),
        denied_tools: denied.iter().map(|t| t.to_string()).collect(),
    };
    s.update(&d7, &acl(&["a"], &[])).await.unwrap();
    let out = s.charge(&none(&key(7), "b")).await.unwrap();
    log.push(outcome_line("none not allowed", &out));
    assert_eq!(out.denial, Some(DenyReason::ToolNotAllowed));
    let out = s.charge(&none(&key(7), "a")).await.unwrap();
    log.push(outcome_line("none allowed tool", &out));
    assert_eq!(out.denial, None);
    s.update(&d7, &acl(&[], &["a"])).await.unwrap();
    let out = s.charge(&none(&key(7), "a")).await.unwrap();
    log.push(outcome_line("none denied tool", &out));
    assert_eq!(out.denial, Some(DenyReason::ToolDenied));

    s.insert(rec(8, 10)).await.unwrap();
    let d8 = KeyDigest::of(&key(8));
    s.update(
        &d8,
        &KeyUpdate::SetIpAllowlist(vec!["10.0.0.1/32".parse().unwrap()]),
    )
    .await
    .unwrap();
    for (ip, want) in [
        (None, Some(DenyReason::IpNotAllowed)),
        (Some("10.0.0.2"), Some(DenyReason::IpNotAllowed)),
        (Some("10.0.0.1"), None),
    ] {
        let mut r = none(&key(8), "t");
        r.client_ip = ip.map(|ip| ip.parse().unwrap());
        let out = s.charge(&r).await.unwrap();
        log.push(outcome_line(&format!("none ip {ip:?}"), &out));
        assert_eq!(out.denial, want, "{ip:?}");
    }

    s.insert(rec(9, 10)).await.unwrap();
    let d9 = KeyDigest::of(&key(9));
    s.update(
        &d9,
        &KeyUpdate::SetExpiry(chrono::DateTime::from_timestamp_millis(NOW - 1)),
    )
    .await
    .unwrap();
    for newly in [true, false] {
        let out = s.charge(&none(&key(9), "t")).await.unwrap();
        log.push(outcome_line("none expired", &out));
        assert_eq!(out.denial, Some(DenyReason::ApiKeyExpired));
        assert_eq!(out.newly_expired, newly);
    }
    for d in [d7, d8, d9] {
        let got = s.get(&d).await.unwrap().unwrap();
        assert_eq!(
            (got.credits, got.total_spent),
            (10, 0),
            "no credits move without billing"
        );
    }
    log
}

/// A charge refunded in two parts (the quota count, then the billing), each once.
async fn a_charge_refunds_in_parts<S: KeyStore>(s: &S) {
    s.insert(rec(40, 10)).await.unwrap();
    let d = KeyDigest::of(&key(40));
    let mut r = req(&key(40), "t", 3);
    r.global_quota = Some(Quota {
        daily_call_limit: 100,
        ..Default::default()
    });
    let receipt = s.charge(&r).await.unwrap().receipt.expect("charged");
    let (quota_part, billing_part) = receipt.split(false, true);
    let (quota_part, billing_part) = (quota_part.unwrap(), billing_part.unwrap());
    assert!(!quota_part.billed() && quota_part.counted());
    s.refund(quota_part, NOW).await.unwrap().unwrap();
    let got = s.get(&d).await.unwrap().unwrap();
    assert_eq!(
        (
            got.credits,
            got.total_calls,
            got.quota_usage.rolled(NOW).daily_calls
        ),
        (7, 1, 0),
        "the quota count alone is undone"
    );
    s.refund(billing_part, NOW).await.unwrap().unwrap();
    let got = s.get(&d).await.unwrap().unwrap();
    assert_eq!(
        (
            got.credits,
            got.total_calls,
            got.quota_usage.rolled(NOW).daily_calls
        ),
        (10, 0, 0),
        "then the billing, once"
    );
}

async fn payments_credit_once<S: KeyStore>(s: &S) {
    use paygate_mcp::store::{PaymentCredit, PaymentOutcome, PAYMENT_RETENTION_MS};
    s.insert(rec(1, 10)).await.unwrap();
    let id = KeyId::derived(&KeyDigest::of(&key(1)));
    let id = s
        .get(&KeyDigest::of(&key(1)))
        .await
        .unwrap()
        .map_or(id, |r| r.id());
    let pay = |ids: &'static [&'static str], credits, now_ms| PaymentCredit {
        key_id: id,
        credits,
        ids,
        now_ms,
    };
    let credited = s
        .credit_payment(&pay(&["evt_1", "cs_1"], 50, NOW))
        .await
        .unwrap();
    let PaymentOutcome::Credited(after) = credited else {
        panic!("credited: {credited:?}");
    };
    assert_eq!(after.credits, 60);
    // The same event again, the same session under a new event: nothing.
    for ids in [&["evt_1", "cs_1"][..], &["evt_2", "cs_1"], &["evt_1"]] {
        let again = s
            .credit_payment(&PaymentCredit {
                key_id: id,
                credits: 50,
                ids,
                now_ms: NOW + 1_000,
            })
            .await
            .unwrap();
        assert_eq!(again, PaymentOutcome::AlreadyCredited, "{ids:?}");
    }
    // Twenty deliveries of one new payment at once: one credit.
    let delivery = pay(&["evt_3", "cs_3"], 5, NOW + 2_000);
    let deliveries: Vec<_> = (0..20).map(|_| s.credit_payment(&delivery)).collect();
    let outcomes = common::join_all(deliveries).await;
    let credited = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(PaymentOutcome::Credited(_))))
        .count();
    assert_eq!(credited, 1, "{outcomes:?}");
    assert_eq!(balance_of(s, 1).await, 65);
    // The credit follows the account through a rotation.
    s.rotate(
        &KeyDigest::of(&key(1)),
        KeyDigest::of(&key(2)),
        "pg_r...".into(),
    )
    .await
    .unwrap()
    .unwrap();
    let moved = s
        .credit_payment(&pay(&["evt_4"], 1, NOW + 3_000))
        .await
        .unwrap();
    assert!(matches!(moved, PaymentOutcome::Credited(r) if r.credits == 66));
    // Unknown account, too large, revoked, malformed ids: nothing changes.
    let stranger = PaymentCredit {
        key_id: KeyId::derived(&KeyDigest::of("pg_nobody_0000000000000")),
        ..pay(&["evt_5"], 1, NOW)
    };
    assert_eq!(
        s.credit_payment(&stranger).await.unwrap(),
        PaymentOutcome::UnknownAccount
    );
    assert_eq!(
        s.credit_payment(&pay(&["evt_6"], paygate_mcp::amount::MAX_AMOUNT, NOW))
            .await
            .unwrap(),
        PaymentOutcome::TooLarge
    );
    assert!(s.credit_payment(&pay(&[], 1, NOW)).await.is_err());
    assert!(s.credit_payment(&pay(&["a b"], 1, NOW)).await.is_err());
    // Not recorded by the refusals: the same ids credit once the key can take them.
    s.update(&KeyDigest::of(&key(2)), &KeyUpdate::Revoke)
        .await
        .unwrap();
    assert_eq!(
        s.credit_payment(&pay(&["evt_7"], 1, NOW)).await.unwrap(),
        PaymentOutcome::Revoked
    );
    assert_eq!(balance_of(s, 2).await, 66);
    // Ids are forgotten after the retention: a 31-day-old id no longer blocks.
    s.insert(rec(3, 0)).await.unwrap();
    let id3 = s.get(&KeyDigest::of(&key(3))).await.unwrap().unwrap().id();
    let late = PaymentCredit {
        key_id: id3,
        credits: 1,
        ids: &["evt_1"],
        now_ms: NOW + PAYMENT_RETENTION_MS + 1,
    };
    assert!(matches!(
        s.credit_payment(&late).await.unwrap(),
        PaymentOutcome::Credited(_)
    ));
}

async fn balance_of<S: KeyStore>(s: &S, n: u32) -> u64 {
    s.get(&KeyDigest::of(&key(n)))
        .await
        .unwrap()
        .unwrap()
        .credits
}

macro_rules! conformance_suite {
    ($backend:ident, $make:expr, $run:path) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn a_charge_refunds_in_parts() {
                $run(async {
                    let store = $make;
                    super::a_charge_refunds_in_parts(&store).await
                });
            }
            #[test]
            fn key_ids_are_found_and_follow_rotation() {
                $run(async {
                    let store = $make;
                    super::key_ids_are_found_and_follow_rotation(&store).await
                });
            }
            #[test]
            fn tag_index_follows_every_change() {
                $run(async {
                    let store = $make;
                    super::tag_index_follows_every_change(&store).await
                });
            }
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
            #[test]
            fn payments_credit_once() {
                $run(async {
                    let store = $make;
                    super::payments_credit_once(&store).await
                });
            }
            #[test]
            fn checks_apply_only_where_present() {
                $run(async {
                    let store = $make;
                    super::checks_apply_only_where_present(&store).await;
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
use common::redis_server::suite as redis_backend;

#[cfg(feature = "redis")]
conformance_suite!(redis, redis_backend::store().await, redis_backend::run);

/// Not only does each store pass the `Checks` suite: both answer every step of it alike,
/// field for field (denial, retry, rate window, receipt, snapshot).
#[cfg(feature = "redis")]
#[test]
fn memory_and_redis_agree_on_checks() {
    redis_backend::run(async {
        let memory = checks_apply_only_where_present(&paygate_mcp::MemoryKeyStore::new()).await;
        let redis = checks_apply_only_where_present(&redis_backend::store().await).await;
        assert_eq!(memory.len(), redis.len());
        for (m, r) in memory.iter().zip(&redis) {
            assert_eq!(m, r, "memory (left) and Redis (right) disagree");
        }
    });
}
