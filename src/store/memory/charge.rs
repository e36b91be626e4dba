//! The steps of one check-and-charge on a key's record: the key checks, the limits the
//! charge's checks leave, the first failing one, and what an allowed call counts.

use crate::deny::DenyReason;
use crate::ratelimit::{KeyWindows, RateState};
use crate::store::compact::StoredKey;
use crate::store::{ChargeOutcome, ChargeReceipt, ChargeRequest, Checks, KeySnapshot};

/// A denial with nothing applied (its snapshot filled in by the caller).
pub(super) fn denied(reason: DenyReason, snapshot: Option<KeySnapshot>) -> ChargeOutcome {
    ChargeOutcome {
        denial: Some(reason),
        retry_after_secs: None,
        snapshot,
        rate: None,
        receipt: None,
        newly_expired: false,
    }
}

/// The key checks, which apply whatever the stages: active, not expired (noted the first
/// time, bumping `version`), IP allowlist, ACL.
pub(super) fn key_denial(
    rec: &mut StoredKey,
    req: &ChargeRequest<'_>,
    version: &mut u64,
) -> Option<ChargeOutcome> {
    if !rec.active {
        return Some(denied(DenyReason::InvalidApiKey, None));
    }
    if rec.is_expired_at(req.now_ms) {
        let newly_expired = !rec.expiry_notified;
        rec.expiry_notified = true;
        *version += u64::from(newly_expired);
        return Some(ChargeOutcome {
            newly_expired,
            ..denied(DenyReason::ApiKeyExpired, None)
        });
    }
    if !rec.permits_ip(req.client_ip) {
        return Some(denied(DenyReason::IpNotAllowed, None));
    }
    rec.acl_denial(req.tool).map(|reason| denied(reason, None))
}

/// The limits a charge applies, as its checks leave them: no price without billing, no
/// windows without rate limiting.
pub(super) struct Limits {
    checks: Checks,
    price: u64,
    global: u64,
    tool: u64,
}

impl Limits {
    pub(super) fn of(req: &ChargeRequest<'_>) -> Self {
        let checks = req.checks;
        Self {
            checks,
            price: checks.price(req.price),
            global: checks.rate_limit(req.global_rate_limit),
            tool: checks.rate_limit(req.tool_rate_limit),
        }
    }

    pub(super) fn any_window(&self) -> bool {
        self.global > 0 || self.tool > 0
    }

    /// Rate windows, then credits, spending limit and quotas: the first failure is the
    /// reason. In shadow mode evaluation runs to the end and nothing is applied.
    pub(super) fn first_denial(
        &self,
        rec: &StoredKey,
        windows: Option<&mut KeyWindows>,
        req: &ChargeRequest<'_>,
    ) -> Option<(DenyReason, Option<u64>)> {
        let mut first: Option<(DenyReason, Option<u64>)> = None;
        if let Some(w) = windows {
            if self.global > 0 {
                if let Err(retry) = w.global.check(self.global, req.now_ms) {
                    first.get_or_insert((DenyReason::RateLimited, Some(retry)));
                }
            }
            if self.tool > 0 {
                if let Err(retry) = w.tool_mut(req.tool).check(self.tool, req.now_ms) {
                    first.get_or_insert((DenyReason::ToolRateLimited, Some(retry)));
                }
            }
        }
        let price = self.price;
        if self.checks.credits && rec.credits < price {
            first.get_or_insert((DenyReason::InsufficientCredits, None));
        }
        if self.checks.credits
            && rec.spending_limit > 0
            && rec.total_spent.saturating_add(price) > rec.spending_limit
        {
            first.get_or_insert((DenyReason::SpendingLimitExceeded, None));
        }
        let usage = rec.quota_usage().rolled(req.now_ms);
        if let Some(reason) = rec
            .quota()
            .or(req.global_quota)
            .filter(|_| self.checks.quotas)
            .and_then(|q| q.check(&usage, price))
        {
            first.get_or_insert((reason, None));
        }
        first
    }

    /// Applies an allowed call: each check counts its own (windows their entry, billing the
    /// balance and the key's totals, quotas their counters). A receipt when something can
    /// be undone.
    pub(super) fn apply(
        &self,
        rec: &mut StoredKey,
        windows: Option<&mut KeyWindows>,
        req: &ChargeRequest<'_>,
    ) -> Option<ChargeReceipt> {
        if let Some(w) = windows {
            if self.global > 0 {
                w.global.record(req.now_ms);
            }
            if self.tool > 0 {
                w.tool_mut(req.tool).record(req.now_ms);
            }
        }
        let price = self.price;
        if self.checks.credits {
            rec.credits -= price;
            rec.total_spent = rec.total_spent.saturating_add(price);
            rec.total_calls = rec.total_calls.saturating_add(1);
        }
        // Counters are stored only when they count: every reader rolls them over first, so
        // a key never held to a quota keeps holding nothing.
        let mut usage = rec.quota_usage().rolled(req.now_ms);
        if self.checks.quotas {
            usage.add(price, req.now_ms);
            rec.set_quota_usage(usage);
        }
        rec.set_last_used(req.now_ms);
        (self.checks.credits || self.checks.quotas).then_some(ChargeReceipt {
            key: req.key,
            credits: price,
            day: usage.day,
            month: usage.month,
            billed: self.checks.credits,
            counted: self.checks.quotas,
            nonce: None,
            charged_at_ms: req.now_ms,
        })
    }

    /// The window the headers report: the tool's when it has one, else the global one.
    pub(super) fn reported(&self, w: &mut KeyWindows, req: &ChargeRequest<'_>) -> RateState {
        if self.tool > 0 {
            w.tool_mut(req.tool).state(self.tool, req.now_ms)
        } else {
            w.global.state(self.global, req.now_ms)
        }
    }
}
