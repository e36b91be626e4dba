//! A gate and keys with every check on (ACL, IP allowlist, both rate windows, quotas,
//! spending limit, alert rules), limits high enough never to deny, for the benchmarks.

use std::net::IpAddr;
use std::sync::Arc;

use paygate_mcp::{
    block_on, parse_ip_entry, AlertRule, AlertType, Gate, KeyDigest, KeyStore, KeyUpdate,
    PayGateConfig, Quota, ToolPricing,
};

/// The tool the keys may call.
pub const TOOL: &str = "search";

/// A client address inside every key's allowlist.
pub fn client_ip() -> IpAddr {
    IpAddr::from([10, 1, 2, 3])
}

/// A gate whose config turns every check on.
pub fn gate() -> Arc<Gate> {
    let big = paygate_mcp::amount::MAX_AMOUNT;
    let cfg = PayGateConfig::default()
        .with_rate_limit(1_000_000_000)
        .with_tool_pricing(
            TOOL,
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
    Arc::new(Gate::new(cfg).expect("valid config"))
}

/// A key with an ACL, an IP allowlist and a spending limit.
pub fn key(gate: &Gate) -> String {
    let big = paygate_mcp::amount::MAX_AMOUNT;
    let key = block_on(gate.create_key("bench", big)).expect("key");
    let d = KeyDigest::of(&key);
    for change in [
        KeyUpdate::SetAcl {
            allowed_tools: vec![TOOL.into(), "echo".into()],
            denied_tools: vec!["admin".into()],
        },
        KeyUpdate::SetIpAllowlist(vec![parse_ip_entry("10.0.0.0/8").expect("cidr")]),
        KeyUpdate::SetSpendingLimit(big),
    ] {
        block_on(gate.store().update(&d, &change))
            .expect("store")
            .expect("key");
    }
    key
}
