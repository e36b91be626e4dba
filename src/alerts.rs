//! Alerts: rules evaluated after every gated call, with per-key cooldowns and a bounded queue
//! of pending alerts.

use serde::{Deserialize, Serialize};

use crate::config::whole;

/// What an alert rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    /// totalSpent ≥ threshold % of (credits + totalSpent).
    SpendingThreshold,
    /// credits ≤ threshold.
    CreditsLow,
    /// Any quota dimension in force used ≥ threshold %.
    QuotaWarning,
    /// 0 < seconds to expiry ≤ threshold.
    KeyExpirySoon,
    /// ≥ threshold rate-limit denials for the key in the last 5 minutes.
    RateLimitSpike,
}

impl AlertType {
    /// The wire name (`spending_threshold`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::SpendingThreshold => "spending_threshold",
            AlertType::CreditsLow => "credits_low",
            AlertType::QuotaWarning => "quota_warning",
            AlertType::KeyExpirySoon => "key_expiry_soon",
            AlertType::RateLimitSpike => "rate_limit_spike",
        }
    }
}

/// Default cooldown between two alerts of one rule type for one key.
pub const DEFAULT_COOLDOWN_SECS: u64 = 300;

/// One alert rule.
///
/// ```
/// use paygate_mcp::{AlertRule, AlertType};
/// let r: AlertRule = serde_json::from_str(r#"{"type": "credits_low", "threshold": 50}"#).unwrap();
/// assert_eq!(r.rule_type, AlertType::CreditsLow);
/// assert_eq!(r.cooldown_secs(), 300);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertRule {
    /// What the rule watches.
    #[serde(rename = "type")]
    pub rule_type: AlertType,
    /// Percent, credits, seconds or count, depending on the type.
    #[serde(deserialize_with = "whole::de")]
    pub threshold: u64,
    /// Seconds between two alerts of this type for one key (default 300).
    #[serde(
        default,
        deserialize_with = "whole::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown_seconds: Option<u64>,
}

impl AlertRule {
    /// A rule with the default cooldown.
    pub fn new(rule_type: AlertType, threshold: u64) -> Self {
        Self {
            rule_type,
            threshold,
            cooldown_seconds: None,
        }
    }

    /// The cooldown in force.
    pub fn cooldown_secs(&self) -> u64 {
        self.cooldown_seconds.unwrap_or(DEFAULT_COOLDOWN_SECS)
    }
}

/// A fired alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The rule type that fired.
    #[serde(rename = "type")]
    pub alert_type: AlertType,
}

/// Facts about the call being checked that the key snapshot does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertContext {
    /// The call was denied by a rate limit.
    pub rate_limit_denied: bool,
}

/// Evaluates alert rules.
pub struct AlertEngine {}

impl AlertEngine {
    /// An engine with `rules`.
    pub fn new(_rules: Vec<AlertRule>, _clock: crate::clock::SharedClock) -> Self {
        Self {}
    }
    /// Checks rules.
    pub fn check(&self, _snap: &crate::store::KeySnapshot, _ctx: AlertContext) -> Vec<Alert> {
        Vec::new()
    }
}
