//! The gate's checks, in SPEC §3 order, driven through `Gate` with a manual clock.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{gate, gate_at, record, update};
use paygate_mcp::{
    block_on, AlertRule, AlertType, CallRequest, Clock, DenyCategory, DenyReason, KeyStore,
    KeyUpdate, PayGateConfig, Quota, ToolPricing,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn missing_empty_unknown_and_revoked_keys_are_unauthorized() {
    let (_, gate) = gate(PayGateConfig::default());
    let key = gate.create_key_blocking("a", 10).unwrap();
    let no_key = CallRequest {
        api_key: None,
        ..CallRequest::new("", "t")
    };
    assert_eq!(
        gate.evaluate_blocking(&no_key).reason,
        Some(DenyReason::MissingApiKey)
    );
    let empty = gate.evaluate_blocking(&CallRequest::new("", "t"));
    assert_eq!(empty.reason, Some(DenyReason::MissingApiKey));
    let unknown = gate.evaluate_blocking(&CallRequest::new("pg_not_a_real_key_at_all", "t"));
    assert_eq!(unknown.reason, Some(DenyReason::InvalidApiKey));
    assert_eq!(
        unknown.reason.unwrap().category(),
        DenyCategory::Unauthorized
    );
    assert!(unknown.key.is_none());

    update(&gate, &key, KeyUpdate::Revoke);
    let revoked = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(revoked.reason, Some(DenyReason::InvalidApiKey));
    assert_eq!(record(&gate, &key).credits, 10);
}

#[test]
fn expiry_is_exact_to_the_millisecond_and_reported_once() {
    let (clock, gate) = gate(PayGateConfig::default());
    let key = gate.create_key_blocking("a", 10).unwrap();
    let at = clock.now() + chrono::Duration::milliseconds(5_000);
    update(&gate, &key, KeyUpdate::SetExpiry(Some(at)));
    clock.advance_ms(4_999);
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    clock.advance_ms(1);
    let first = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(first.reason, Some(DenyReason::ApiKeyExpired));
    assert!(first.key_expired);
    let second = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(second.reason, Some(DenyReason::ApiKeyExpired));
    assert!(!second.key_expired, "key.expired fires once");

    // Extending the expiry revives the key and re-arms the event.
    update(
        &gate,
        &key,
        KeyUpdate::SetExpiry(Some(clock.now() + chrono::Duration::seconds(1))),
    );
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    clock.advance_secs(1);
    assert!(
        gate.evaluate_blocking(&CallRequest::new(&key, "t"))
            .key_expired
    );
}

#[test]
fn ip_allowlist_is_checked_before_acl_and_unknown_ip_fails() {
    let (_, gate) = gate(PayGateConfig::default());
    let key = gate.create_key_blocking("a", 10).unwrap();
    update(
        &gate,
        &key,
        KeyUpdate::SetIpAllowlist(vec![paygate_mcp::parse_ip_entry("10.0.0.0/8").unwrap()]),
    );
    update(
        &gate,
        &key,
        KeyUpdate::SetAcl {
            allowed_tools: vec!["ok".into()],
            denied_tools: vec![],
        },
    );
    let outside = gate.evaluate_blocking(&CallRequest::new(&key, "nope").from_ip(ip("11.0.0.1")));
    assert_eq!(outside.reason, Some(DenyReason::IpNotAllowed));
    let no_ip = gate.evaluate_blocking(&CallRequest::new(&key, "ok"));
    assert_eq!(no_ip.reason, Some(DenyReason::IpNotAllowed));
    let inside = gate.evaluate_blocking(&CallRequest::new(&key, "ok").from_ip(ip("10.9.9.9")));
    assert!(inside.allowed);
}

#[test]
fn acl_allowed_then_denied_lists() {
    let (_, gate) = gate(PayGateConfig::default());
    let key = gate.create_key_blocking("a", 10).unwrap();
    update(
        &gate,
        &key,
        KeyUpdate::SetAcl {
            allowed_tools: vec!["read".into(), "write".into()],
            denied_tools: vec!["write".into()],
        },
    );
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "delete"));
    assert_eq!(d.reason, Some(DenyReason::ToolNotAllowed));
    assert_eq!(d.reason.unwrap().category().jsonrpc_code(), -32003);
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "write"));
    assert_eq!(d.reason, Some(DenyReason::ToolDenied));
    assert!(
        gate.evaluate_blocking(&CallRequest::new(&key, "read"))
            .allowed
    );
    assert_eq!(record(&gate, &key).credits, 9);
}

#[test]
fn rolling_window_is_exact_and_denials_do_not_consume_it() {
    let (clock, gate) = gate(PayGateConfig::default().with_rate_limit(3));
    let key = gate.create_key_blocking("a", 1000).unwrap();
    for _ in 0..3 {
        assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
        clock.advance_secs(10);
    }
    // t = 30 s: three calls at 0, 10, 20 s are in the window.
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(d.reason, Some(DenyReason::RateLimited));
    assert_eq!(d.retry_after_secs, Some(30));
    assert_eq!(
        d.message(),
        "Rate limited: rate_limited: 3 calls per minute; retry in 30s"
    );
    // Hammering while limited changes nothing.
    for _ in 0..50 {
        assert!(!gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    }
    clock.advance_ms(29_999);
    assert!(!gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    clock.advance_ms(1); // the call at 0 s leaves the window at exactly 60 s
    let ok = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert!(ok.allowed);
    let rate = ok.rate.unwrap();
    assert_eq!((rate.limit, rate.remaining, rate.reset_secs), (3, 0, 10));
    assert_eq!(record(&gate, &key).total_calls, 4);
}

#[test]
fn tool_rate_limit_is_separate_and_reported_in_headers() {
    let pricing = ToolPricing {
        credits_per_call: 1,
        rate_limit_per_min: Some(1),
        credits_per_kb_input: None,
    };
    let cfg = PayGateConfig::default()
        .with_rate_limit(10)
        .with_tool_pricing("slow", pricing);
    let (_, gate) = gate(cfg);
    let key = gate.create_key_blocking("a", 100).unwrap();
    let ok = gate.evaluate_blocking(&CallRequest::new(&key, "slow"));
    assert_eq!(ok.rate.unwrap().limit, 1, "headers show the tool's window");
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "slow"));
    assert_eq!(d.reason, Some(DenyReason::ToolRateLimited));
    assert_eq!(d.retry_after_secs, Some(60));
    let other = gate.evaluate_blocking(&CallRequest::new(&key, "fast"));
    assert!(other.allowed);
    assert_eq!(other.rate.unwrap().limit, 10);
    assert_eq!(
        other.rate.unwrap().remaining,
        8,
        "global window counts both tools"
    );
}

#[test]
fn credits_then_spending_limit_then_quota() {
    let cfg = PayGateConfig::default()
        .with_tool_price("big", 5)
        .with_global_quota(Quota {
            daily_credit_limit: 12,
            ..Default::default()
        });
    let (_, gate) = gate(cfg);
    let key = gate.create_key_blocking("a", 12).unwrap();
    update(&gate, &key, KeyUpdate::SetSpendingLimit(11));
    assert!(
        gate.evaluate_blocking(&CallRequest::new(&key, "big"))
            .allowed
    );
    assert!(
        gate.evaluate_blocking(&CallRequest::new(&key, "big"))
            .allowed
    );
    // 2 credits left, 10 spent: price 5 fails credits first.
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "big"));
    assert_eq!(d.reason, Some(DenyReason::InsufficientCredits));
    assert_eq!(
        d.message(),
        "Payment required: insufficient_credits: need 5, have 2"
    );
    assert_eq!(d.reason.unwrap().category().jsonrpc_code(), -32402);
    update(&gate, &key, KeyUpdate::TopUp(100));
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "big"));
    assert_eq!(d.reason, Some(DenyReason::SpendingLimitExceeded));
    update(&gate, &key, KeyUpdate::SetSpendingLimit(0));
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "big"));
    assert_eq!(d.reason, Some(DenyReason::DailyCreditQuotaExceeded));
    // A 1-credit call still fits the 12-credit day (10 used).
    assert!(
        gate.evaluate_blocking(&CallRequest::new(&key, "small"))
            .allowed
    );
    let rec = record(&gate, &key);
    assert_eq!(
        (rec.credits, rec.total_spent, rec.total_calls),
        (101, 11, 3)
    );
}

#[test]
fn per_key_quota_overrides_global_and_rolls_over_at_utc_midnight_and_month_start() {
    let cfg = PayGateConfig::default().with_global_quota(Quota {
        daily_call_limit: 100,
        ..Default::default()
    });
    let (clock, gate) = gate_at(cfg, "2026-04-30T23:59:58Z");
    let key = gate.create_key_blocking("a", 1000).unwrap();
    update(
        &gate,
        &key,
        KeyUpdate::SetQuota(Some(Quota {
            daily_call_limit: 2,
            monthly_call_limit: 3,
            ..Default::default()
        })),
    );
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(d.reason, Some(DenyReason::DailyCallQuotaExceeded));
    clock.advance_ms(1_999);
    assert!(!gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    clock.advance_ms(1); // 2026-05-01T00:00:00Z: new day and new month
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    clock.advance_secs(86_400); // next day, same month: 2 of 3 monthly calls used
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(d.reason, Some(DenyReason::MonthlyCallQuotaExceeded));
    // Removing the key's quota falls back to the global one.
    update(&gate, &key, KeyUpdate::SetQuota(None));
    assert!(gate.evaluate_blocking(&CallRequest::new(&key, "t")).allowed);
}

#[test]
fn dynamic_price_uses_input_size() {
    let cfg = PayGateConfig::default().with_tool_pricing(
        "upload",
        ToolPricing {
            credits_per_call: 2,
            rate_limit_per_min: None,
            credits_per_kb_input: Some(5),
        },
    );
    let (_, gate) = gate(cfg);
    let key = gate.create_key_blocking("a", 100).unwrap();
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "upload").with_input_bytes(3 * 1024));
    assert_eq!((d.credits_required, d.credits_charged), (17, 17));
    assert_eq!(d.remaining_credits, Some(83));
}

#[test]
fn shadow_mode_runs_every_check_but_allows_and_charges_nothing() {
    let (_, gate) = gate(
        PayGateConfig::default()
            .with_shadow_mode(true)
            .with_rate_limit(1),
    );
    let key = gate.create_key_blocking("a", 1).unwrap();
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert!(d.allowed && !d.shadow && d.reason.is_none());
    assert_eq!(d.credits_charged, 0);
    update(
        &gate,
        &key,
        KeyUpdate::SetAcl {
            allowed_tools: vec![],
            denied_tools: vec!["t".into()],
        },
    );
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert!(d.allowed && d.shadow);
    assert_eq!(d.reason, Some(DenyReason::ToolDenied));
    let unknown = gate.evaluate_blocking(&CallRequest::new("pg_unknown_key_here_000", "t"));
    assert!(unknown.allowed && unknown.shadow);
    let rec = record(&gate, &key);
    assert_eq!((rec.credits, rec.total_calls, rec.total_spent), (1, 0, 0));
    let reasons: Vec<_> = gate
        .meter()
        .since(None)
        .into_iter()
        .map(|e| e.deny_reason)
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("shadow:tool_denied".to_string()),
            Some("shadow:invalid_api_key".to_string())
        ]
    );
}

#[test]
fn refund_undoes_the_charge_exactly_once() {
    let cfg = PayGateConfig::default()
        .with_tool_price("t", 4)
        .with_global_quota(Quota {
            daily_call_limit: 10,
            monthly_credit_limit: 100,
            ..Default::default()
        });
    let (_, gate) = gate(cfg);
    let key = gate.create_key_blocking("a", 20).unwrap();
    let before = record(&gate, &key);
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    let charged = record(&gate, &key);
    assert_eq!(charged.credits, 16);
    assert_eq!(charged.quota_usage.daily_calls, 1);
    let snap = gate.refund_blocking(d.receipt.expect("charged")).unwrap();
    assert_eq!(snap.credits, 20);
    let after = record(&gate, &key);
    assert_eq!(after.credits, before.credits);
    assert_eq!(after.total_spent, 0);
    assert_eq!(after.total_calls, 0);
    assert_eq!(after.quota_usage.daily_calls, 0);
    assert_eq!(after.quota_usage.monthly_credits, 0);
    // A denied call has no receipt, so nothing can be refunded for it.
    update(&gate, &key, KeyUpdate::Revoke);
    assert!(gate
        .evaluate_blocking(&CallRequest::new(&key, "t"))
        .receipt
        .is_none());
}

#[test]
fn usage_events_carry_masked_keys_and_reasons() {
    let (_, gate) = gate(PayGateConfig::default());
    let key = gate.create_key_blocking("alice", 1).unwrap();
    gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    let events = gate.meter().since(None);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].api_key, paygate_mcp::mask_key(&key));
    assert_eq!(events[0].key_name, "alice");
    assert!(events[0].allowed && events[0].credits_charged == 1);
    assert_eq!(
        events[1].deny_reason.as_deref(),
        Some("insufficient_credits")
    );
    let json = serde_json::to_string(&events).unwrap();
    assert!(!json.contains(&key));
}

#[test]
fn alerts_fire_from_gated_calls_including_rate_limit_spikes() {
    let cfg = PayGateConfig::default()
        .with_rate_limit(1)
        .with_alert_rule(AlertRule::new(AlertType::CreditsLow, 5))
        .with_alert_rule(AlertRule::new(AlertType::RateLimitSpike, 3));
    let (clock, gate) = gate(cfg);
    let key = gate.create_key_blocking("a", 6).unwrap();
    let d = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(d.alerts.len(), 1);
    assert_eq!(d.alerts[0].alert_type, AlertType::CreditsLow);
    assert!(gate
        .evaluate_blocking(&CallRequest::new(&key, "t"))
        .alerts
        .is_empty());
    clock.advance_secs(1);
    let third = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(third.alerts.len(), 0, "two denials so far");
    let fourth = gate.evaluate_blocking(&CallRequest::new(&key, "t"));
    assert_eq!(fourth.alerts[0].alert_type, AlertType::RateLimitSpike);
    let queued = gate.alerts().consume();
    assert_eq!(queued.len(), 2);
}

#[test]
fn store_failures_fail_closed() {
    use paygate_mcp::store::{
        Client, CodeGrant, CodeTaken, Grant, GrantLimits, GrantStore, Refreshed, TokenDigest,
        TokenPair,
    };
    use paygate_mcp::{
        ChargeOutcome, ChargeReceipt, ChargeRequest, KeyDigest, KeyId, KeyPage, KeyRecord,
        KeySnapshot, StoreError, StoreStats,
    };
    use std::future::{ready, Ready};
    struct Down;
    #[allow(refining_impl_trait)]
    impl KeyStore for Down {
        fn charge(&self, _: &ChargeRequest<'_>) -> Ready<Result<ChargeOutcome, StoreError>> {
            ready(Err(StoreError::Unavailable("connection refused".into())))
        }
        fn refund(
            &self,
            _: ChargeReceipt,
            _: i64,
        ) -> Ready<Result<Option<KeySnapshot>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn insert(&self, _: KeyRecord) -> Ready<Result<(), StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn get(&self, _: &KeyDigest) -> Ready<Result<Option<KeyRecord>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn update(
            &self,
            _: &KeyDigest,
            _: &KeyUpdate,
        ) -> Ready<Result<Option<KeyRecord>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn rotate(
            &self,
            _: &KeyDigest,
            _: KeyDigest,
            _: String,
        ) -> Ready<Result<Option<KeyRecord>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn list(&self, _: Option<KeyDigest>, _: usize) -> Ready<Result<KeyPage, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn search_by_tags(
            &self,
            _: &BTreeMap<String, String>,
            _: usize,
        ) -> Ready<Result<Vec<KeyRecord>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn find_id(&self, _: &KeyId) -> Ready<Result<Option<KeyDigest>, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn stats(&self) -> Ready<Result<StoreStats, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
        fn credit_payment(
            &self,
            _: &paygate_mcp::store::PaymentCredit<'_>,
        ) -> Ready<Result<paygate_mcp::store::PaymentOutcome, StoreError>> {
            ready(Err(StoreError::Unavailable("down".into())))
        }
    }
    // The OAuth grants live in the same store: down with it.
    macro_rules! down {
        ($($name:ident($($arg:ty),*) -> $out:ty;)*) => {
            #[allow(refining_impl_trait)]
            impl GrantStore for Down {
                $(fn $name(&self, $(_: $arg),*) -> Ready<Result<$out, StoreError>> {
                    ready(Err(StoreError::Unavailable("down".into())))
                })*
            }
        };
    }
    down! {
        add_client(Client, GrantLimits) -> bool;
        client(&str) -> Option<Client>;
        clients() -> Vec<Client>;
        revoke_client(&str) -> bool;
        add_code(TokenDigest, CodeGrant, i64, GrantLimits) -> bool;
        take_code(&TokenDigest, &str, i64) -> CodeTaken;
        add_grant(TokenDigest, i64, Grant, i64, GrantLimits) -> bool;
        refresh_grant(&TokenDigest, &str, TokenPair, i64, GrantLimits) -> Refreshed;
        access_grant(&TokenDigest, i64) -> Option<Grant>;
        revoke_token(&TokenDigest, &str) -> bool;
        revoke_account(&KeyId) -> ();
    }
    let clock = common::clock_at(common::T0);
    let gate =
        paygate_mcp::Gate::with_store(PayGateConfig::default().with_shadow_mode(true), Down, clock)
            .unwrap();
    let d = block_on(gate.evaluate(&CallRequest::new("pg_whatever_key_1234", "t")));
    assert!(
        !d.allowed,
        "even shadow mode fails closed when the store is down"
    );
    assert_eq!(d.reason, Some(DenyReason::StoreUnavailable));
    assert_eq!(d.reason.unwrap().category().jsonrpc_code(), -32603);
    assert!(
        !d.message().contains("connection refused"),
        "no backend detail leaks"
    );
    assert!(block_on(gate.create_key("a", 1)).is_err());
}
