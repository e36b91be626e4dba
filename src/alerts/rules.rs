//! Alert rules: what each rule type watches, and whether it fires for a key's state after a
//! call (the value that crossed the threshold, a message and metadata).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::amount::whole;
use crate::clock::ms_to_datetime;
use crate::meter::{clip, MAX_EVENT_TEXT_BYTES};
use crate::store::KeySnapshot;

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

/// Facts about the call being checked that the key snapshot does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertContext {
    /// The call was denied by a rate limit.
    pub rate_limit_denied: bool,
}

fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Whether `rule` fires for `snap`: the current value, a message and metadata.
pub(super) fn evaluate(
    rule: &AlertRule,
    snap: &KeySnapshot,
    now_ms: i64,
    ctx: AlertContext,
    recent_denials: u64,
) -> Option<(f64, String, serde_json::Value)> {
    let name = clip(&snap.name, MAX_EVENT_TEXT_BYTES);
    let threshold = rule.threshold;
    match rule.rule_type {
        AlertType::SpendingThreshold => {
            let budget = snap.credits.saturating_add(snap.total_spent);
            if budget == 0 {
                return None;
            }
            let pct = snap.total_spent as f64 * 100.0 / budget as f64;
            (pct >= threshold as f64).then(|| {
                (
                    one_decimal(pct),
                    format!(
                        "\"{name}\" spent {} of {budget} credits ({:.1}%), at or over the {threshold}% alert",
                        snap.total_spent, pct
                    ),
                    json!({"credits": snap.credits, "totalSpent": snap.total_spent, "totalBudget": budget}),
                )
            })
        }
        AlertType::CreditsLow => (snap.credits <= threshold).then(|| {
            (
                snap.credits as f64,
                format!(
                    "\"{name}\" is down to {} credits (alert at {threshold})",
                    snap.credits
                ),
                json!({"credits": snap.credits}),
            )
        }),
        AlertType::QuotaWarning => {
            let level = snap.quota?.highest_usage(&snap.quota_usage)?;
            (level.percent >= threshold as f64).then(|| {
                (
                    one_decimal(level.percent),
                    format!(
                        "\"{name}\" used {} of its {} {} quota ({:.1}%)",
                        level.used, level.limit, level.dimension, level.percent
                    ),
                    json!({"quotaType": level.dimension, "used": level.used, "limit": level.limit}),
                )
            })
        }
        AlertType::KeyExpirySoon => {
            let left_ms = snap.expires_at_ms?.saturating_sub(now_ms);
            let threshold_ms = i64::try_from(threshold.saturating_mul(1000)).unwrap_or(i64::MAX);
            (left_ms > 0 && left_ms <= threshold_ms).then(|| {
                let secs = (left_ms as u64).div_ceil(1000);
                let at = snap
                    .expires_at_ms
                    .map(ms_to_datetime)
                    .map(|t| t.to_rfc3339());
                (
                    secs as f64,
                    format!("\"{name}\" expires in {secs} s"),
                    json!({"expiresAt": at, "remainingSeconds": secs}),
                )
            })
        }
        AlertType::RateLimitSpike => {
            (ctx.rate_limit_denied && recent_denials >= threshold).then(|| {
                (
                    recent_denials as f64,
                    format!(
                        "\"{name}\" was rate-limited {recent_denials} times in the last 5 minutes"
                    ),
                    json!({"denialCount": recent_denials, "windowMinutes": 5}),
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::test_support::{setup, snap, DENIED, NONE};
    use crate::clock::Clock;
    use crate::quota::{Quota, QuotaUsage};

    #[test]
    fn spending_threshold_uses_spent_share_of_total_budget() {
        let (clock, engine, mut rec) =
            setup(vec![AlertRule::new(AlertType::SpendingThreshold, 80)]);
        rec.credits = 21;
        rec.total_spent = 79;
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        rec.credits = 20;
        rec.total_spent = 80;
        let fired = engine.check(&snap(&rec, &clock), NONE);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].current_value, 80.0);
        assert_eq!(fired[0].metadata["totalBudget"], 100);
        assert_eq!(fired[0].key_prefix, "pg_0123...cdef");
        // A key with nothing ever credited has no budget to measure.
        rec.credits = 0;
        rec.total_spent = 0;
        clock.advance_secs(301);
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
    }

    #[test]
    fn credits_low_fires_at_or_below_threshold() {
        let (clock, engine, mut rec) = setup(vec![AlertRule::new(AlertType::CreditsLow, 10)]);
        rec.credits = 11;
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        rec.credits = 10;
        assert_eq!(
            engine.check(&snap(&rec, &clock), NONE)[0].current_value,
            10.0
        );
    }

    #[test]
    fn quota_warning_watches_every_dimension_in_force() {
        let (clock, engine, mut rec) = setup(vec![AlertRule::new(AlertType::QuotaWarning, 90)]);
        rec.quota = Some(Quota {
            monthly_credit_limit: 1000,
            ..Default::default()
        });
        rec.quota_usage = QuotaUsage::default().rolled(clock.now_ms());
        rec.quota_usage.monthly_credits = 899;
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        rec.quota_usage.monthly_credits = 900;
        let fired = engine.check(&snap(&rec, &clock), NONE);
        assert_eq!(fired[0].metadata["quotaType"], "monthlyCredits");
        // The global quota counts when the key has none.
        let (clock, engine, mut rec) = setup(vec![AlertRule::new(AlertType::QuotaWarning, 50)]);
        rec.quota_usage = QuotaUsage::default().rolled(clock.now_ms());
        rec.quota_usage.daily_calls = 5;
        let global = Some(Quota {
            daily_call_limit: 10,
            ..Default::default()
        });
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        let s = KeySnapshot::of(&rec, clock.now_ms(), global);
        assert_eq!(engine.check(&s, NONE).len(), 1);
    }

    #[test]
    fn key_expiry_soon_fires_only_before_expiry_within_threshold() {
        let (clock, engine, mut rec) = setup(vec![AlertRule {
            cooldown_seconds: Some(0),
            ..AlertRule::new(AlertType::KeyExpirySoon, 3600)
        }]);
        rec.expires_at = Some(ms_to_datetime(clock.now_ms() + 3_600_001));
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
        clock.advance_ms(1);
        assert_eq!(
            engine.check(&snap(&rec, &clock), NONE)[0].current_value,
            3600.0
        );
        clock.advance_ms(3_600_000); // exactly at expiry: already expired
        assert!(engine.check(&snap(&rec, &clock), NONE).is_empty());
    }

    #[test]
    fn rate_limit_spike_counts_denials_in_five_minutes() {
        let (clock, engine, rec) = setup(vec![AlertRule::new(AlertType::RateLimitSpike, 3)]);
        let s = snap(&rec, &clock);
        assert!(engine.check(&s, DENIED).is_empty());
        clock.advance_secs(100);
        assert!(engine.check(&s, DENIED).is_empty());
        clock.advance_secs(201); // the first denial has left the window
        assert!(engine.check(&s, DENIED).is_empty());
        assert!(engine.check(&s, NONE).is_empty()); // allowed calls do not count
        clock.advance_secs(1);
        let fired = engine.check(&s, DENIED);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].current_value, 3.0);
    }
}
