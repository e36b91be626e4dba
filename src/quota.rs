//! Daily and monthly quotas, with counters that roll over at UTC midnight and month start.

use serde::{Deserialize, Serialize};

use crate::amount::whole;
use crate::clock::{utc_day, utc_month};
use crate::deny::DenyReason;

/// Call and credit caps per UTC day and month. `0` means no cap on that dimension.
///
/// ```
/// use paygate_mcp::Quota;
/// let q: Quota = serde_json::from_str(r#"{"dailyCallLimit": 100.7}"#).unwrap();
/// assert_eq!(q.daily_call_limit, 100); // fractional input is floored
/// assert!(serde_json::from_str::<Quota>(r#"{"dailyCallLimit": -1}"#).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Calls per UTC day.
    #[serde(default, deserialize_with = "whole::de")]
    pub daily_call_limit: u64,
    /// Calls per UTC month.
    #[serde(default, deserialize_with = "whole::de")]
    pub monthly_call_limit: u64,
    /// Credits per UTC day.
    #[serde(default, deserialize_with = "whole::de")]
    pub daily_credit_limit: u64,
    /// Credits per UTC month.
    #[serde(default, deserialize_with = "whole::de")]
    pub monthly_credit_limit: u64,
}

impl Quota {
    /// Whether any dimension is capped.
    pub fn is_limited(&self) -> bool {
        self.daily_call_limit > 0
            || self.monthly_call_limit > 0
            || self.daily_credit_limit > 0
            || self.monthly_credit_limit > 0
    }

    /// The first dimension a call costing `price` would break, in the order of SPEC §3 step 9.
    /// `usage` must already be rolled to the current day and month.
    pub fn check(&self, usage: &QuotaUsage, price: u64) -> Option<DenyReason> {
        let over_count = |limit: u64, used: u64| limit > 0 && used >= limit;
        let over_credits = |limit: u64, used: u64| limit > 0 && used.saturating_add(price) > limit;
        if over_count(self.daily_call_limit, usage.daily_calls) {
            Some(DenyReason::DailyCallQuotaExceeded)
        } else if over_count(self.monthly_call_limit, usage.monthly_calls) {
            Some(DenyReason::MonthlyCallQuotaExceeded)
        } else if over_credits(self.daily_credit_limit, usage.daily_credits) {
            Some(DenyReason::DailyCreditQuotaExceeded)
        } else if over_credits(self.monthly_credit_limit, usage.monthly_credits) {
            Some(DenyReason::MonthlyCreditQuotaExceeded)
        } else {
            None
        }
    }

    /// The highest share (0–100+) of any capped dimension used, with the dimension's name,
    /// used and limit; `None` when nothing is capped.
    pub fn highest_usage(&self, usage: &QuotaUsage) -> Option<QuotaLevel> {
        [
            ("dailyCalls", usage.daily_calls, self.daily_call_limit),
            ("monthlyCalls", usage.monthly_calls, self.monthly_call_limit),
            ("dailyCredits", usage.daily_credits, self.daily_credit_limit),
            (
                "monthlyCredits",
                usage.monthly_credits,
                self.monthly_credit_limit,
            ),
        ]
        .into_iter()
        .filter(|(_, _, limit)| *limit > 0)
        .map(|(dimension, used, limit)| QuotaLevel {
            dimension,
            used,
            limit,
            percent: used as f64 * 100.0 / limit as f64,
        })
        .max_by(|a, b| a.percent.total_cmp(&b.percent))
    }
}

/// How full one quota dimension is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLevel {
    /// `dailyCalls`, `monthlyCalls`, `dailyCredits` or `monthlyCredits`.
    pub dimension: &'static str,
    /// Amount used in the current period.
    pub used: u64,
    /// The cap.
    pub limit: u64,
    /// `used / limit × 100`.
    pub percent: f64,
}

/// A key's quota counters and the UTC day and month they count.
///
/// ```
/// use paygate_mcp::QuotaUsage;
/// let day1 = 1_700_000_000_000;
/// let mut usage = QuotaUsage::default().rolled(day1);
/// usage.add(5, day1);
/// assert_eq!(usage.daily_credits, 5);
/// let next_day = day1 + 86_400_000;
/// assert_eq!(usage.rolled(next_day).daily_credits, 0);
/// assert_eq!(usage.rolled(next_day).monthly_credits, 5); // same month
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// UTC day number (days since 1970-01-01) the daily counters belong to.
    pub day: i64,
    /// Calls today.
    pub daily_calls: u64,
    /// Credits today.
    pub daily_credits: u64,
    /// UTC month number (`year * 12 + month0`) the monthly counters belong to.
    pub month: i64,
    /// Calls this month.
    pub monthly_calls: u64,
    /// Credits this month.
    pub monthly_credits: u64,
}

impl QuotaUsage {
    /// The counters as they stand at `now_ms`: a stale day or month reads as zero.
    pub fn rolled(mut self, now_ms: i64) -> Self {
        let (day, month) = (utc_day(now_ms), utc_month(now_ms));
        if self.day != day {
            self.day = day;
            self.daily_calls = 0;
            self.daily_credits = 0;
        }
        if self.month != month {
            self.month = month;
            self.monthly_calls = 0;
            self.monthly_credits = 0;
        }
        self
    }

    /// Counts one call of `credits` at `now_ms` (rolling over first).
    pub fn add(&mut self, credits: u64, now_ms: i64) {
        *self = self.rolled(now_ms);
        self.daily_calls = self.daily_calls.saturating_add(1);
        self.daily_credits = self.daily_credits.saturating_add(credits);
        self.monthly_calls = self.monthly_calls.saturating_add(1);
        self.monthly_credits = self.monthly_credits.saturating_add(credits);
    }

    /// The day the daily counters belong to, as `YYYY-MM-DD` (paygate-mcp 1.8's
    /// `quotaLastResetDay`).
    ///
    /// ```
    /// let usage = paygate_mcp::QuotaUsage::default().rolled(1_700_000_000_000);
    /// assert_eq!(usage.day_label(), "2023-11-14");
    /// assert_eq!(usage.month_label(), "2023-11");
    /// ```
    pub fn day_label(&self) -> String {
        chrono::DateTime::from_timestamp(self.day.saturating_mul(86_400), 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }

    /// The month the monthly counters belong to, as `YYYY-MM` (1.8's `quotaLastResetMonth`).
    pub fn month_label(&self) -> String {
        let (year, month0) = (self.month.div_euclid(12), self.month.rem_euclid(12));
        format!("{year:04}-{:02}", month0 + 1)
    }

    /// Undoes one call of `credits` that was counted on `day` / `month`. A period that has
    /// since rolled over is left alone: its counters already restarted.
    pub fn remove(&mut self, credits: u64, day: i64, month: i64) {
        if self.day == day {
            self.daily_calls = self.daily_calls.saturating_sub(1);
            self.daily_credits = self.daily_credits.saturating_sub(credits);
        }
        if self.month == month {
            self.monthly_calls = self.monthly_calls.saturating_sub(1);
            self.monthly_credits = self.monthly_credits.saturating_sub(credits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn quota(dc: u64, mc: u64, dcr: u64, mcr: u64) -> Quota {
        Quota {
            daily_call_limit: dc,
            monthly_call_limit: mc,
            daily_credit_limit: dcr,
            monthly_credit_limit: mcr,
        }
    }

    #[test]
    fn call_limits_deny_at_count_credit_limits_deny_past_total() {
        let q = quota(2, 0, 10, 0);
        let mut u = QuotaUsage::default();
        assert_eq!(q.check(&u, 10), None);
        assert_eq!(q.check(&u, 11), Some(DenyReason::DailyCreditQuotaExceeded));
        u.daily_calls = 2;
        assert_eq!(q.check(&u, 1), Some(DenyReason::DailyCallQuotaExceeded));
    }

    #[test]
    fn order_is_daily_calls_monthly_calls_daily_credits_monthly_credits() {
        let q = quota(1, 1, 1, 1);
        let u = QuotaUsage {
            daily_calls: 1,
            monthly_calls: 1,
            daily_credits: 1,
            monthly_credits: 1,
            ..Default::default()
        };
        assert_eq!(q.check(&u, 1), Some(DenyReason::DailyCallQuotaExceeded));
        let q = quota(0, 1, 1, 1);
        assert_eq!(q.check(&u, 1), Some(DenyReason::MonthlyCallQuotaExceeded));
        let q = quota(0, 0, 1, 1);
        assert_eq!(q.check(&u, 1), Some(DenyReason::DailyCreditQuotaExceeded));
        let q = quota(0, 0, 0, 1);
        assert_eq!(q.check(&u, 1), Some(DenyReason::MonthlyCreditQuotaExceeded));
    }

    #[test]
    fn counters_roll_over_at_utc_midnight_and_month_start() {
        let clock = ManualClock::at_rfc3339("2026-01-31T23:59:59.999Z").unwrap();
        let mut u = QuotaUsage::default();
        u.add(7, clock.now_ms());
        assert_eq!(u.rolled(clock.now_ms()).daily_credits, 7);
        clock.advance_ms(1); // 2026-02-01T00:00:00Z
        let r = u.rolled(clock.now_ms());
        assert_eq!((r.daily_calls, r.monthly_calls), (0, 0));
        let clock = ManualClock::at_rfc3339("2026-02-10T23:59:59.999Z").unwrap();
        let mut u = QuotaUsage::default();
        u.add(3, clock.now_ms());
        clock.advance_ms(1);
        let r = u.rolled(clock.now_ms());
        assert_eq!(
            (r.daily_calls, r.monthly_calls, r.monthly_credits),
            (0, 1, 3)
        );
    }

    #[test]
    fn remove_after_rollover_leaves_new_period_alone() {
        let clock = ManualClock::at_rfc3339("2026-03-31T23:59:00Z").unwrap();
        let mut u = QuotaUsage::default();
        u.add(4, clock.now_ms());
        let (day, month) = (u.day, u.month);
        clock.advance_secs(120); // April 1st
        u.add(2, clock.now_ms());
        u.remove(4, day, month);
        assert_eq!((u.daily_calls, u.daily_credits), (1, 2));
        assert_eq!((u.monthly_calls, u.monthly_credits), (1, 2));
    }

    #[test]
    fn highest_usage_picks_fullest_dimension() {
        let q = quota(10, 100, 0, 0);
        let u = QuotaUsage {
            daily_calls: 5,
            monthly_calls: 90,
            ..Default::default()
        };
        let level = q.highest_usage(&u).unwrap();
        assert_eq!(level.dimension, "monthlyCalls");
        assert!((level.percent - 90.0).abs() < 1e-9);
        assert!(Quota::default().highest_usage(&u).is_none());
    }
}
