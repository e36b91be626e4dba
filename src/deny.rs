//! Why a call is refused: the gate's machine reasons and the JSON-RPC category of each.
//!
//! A leaf of the core: keys, quotas, stores and the gate all speak this vocabulary, so it
//! depends on none of them.

use std::fmt;

use serde::Serialize;

/// Why a call was (or, in shadow mode, would have been) denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No key was sent.
    MissingApiKey,
    /// The key is unknown or revoked.
    InvalidApiKey,
    /// The key has expired.
    ApiKeyExpired,
    /// The client IP is not in the key's allowlist.
    IpNotAllowed,
    /// The tool is not in the key's allowed tools.
    ToolNotAllowed,
    /// The tool is in the key's denied tools.
    ToolDenied,
    /// The key's global rate window is full.
    RateLimited,
    /// The key's window for this tool is full.
    ToolRateLimited,
    /// The key has fewer credits than the price.
    InsufficientCredits,
    /// The call would take the key past its spending limit.
    SpendingLimitExceeded,
    /// Daily call quota reached.
    DailyCallQuotaExceeded,
    /// Monthly call quota reached.
    MonthlyCallQuotaExceeded,
    /// Daily credit quota would be exceeded.
    DailyCreditQuotaExceeded,
    /// Monthly credit quota would be exceeded.
    MonthlyCreditQuotaExceeded,
    /// The store could not be reached; the call fails closed.
    StoreUnavailable,
}

/// The family of a denial, which decides its JSON-RPC error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyCategory {
    /// Missing, invalid or expired key, IP not allowed (`-32002`).
    Unauthorized,
    /// ACL (`-32003`).
    Forbidden,
    /// Rate limits (`-32001`).
    RateLimited,
    /// Credits, spending limit, quotas (`-32402`).
    PaymentRequired,
    /// The gate could not decide (`-32603`).
    Unavailable,
}

impl DenyCategory {
    /// The JSON-RPC error code of this category.
    pub fn jsonrpc_code(self) -> i64 {
        match self {
            DenyCategory::Unauthorized => -32002,
            DenyCategory::Forbidden => -32003,
            DenyCategory::RateLimited => -32001,
            DenyCategory::PaymentRequired => -32402,
            DenyCategory::Unavailable => -32603,
        }
    }

    /// The message prefix (`Payment required`, ...).
    pub fn label(self) -> &'static str {
        match self {
            DenyCategory::Unauthorized => "Unauthorized",
            DenyCategory::Forbidden => "Forbidden",
            DenyCategory::RateLimited => "Rate limited",
            DenyCategory::PaymentRequired => "Payment required",
            DenyCategory::Unavailable => "Service unavailable",
        }
    }
}

impl DenyReason {
    /// Every reason, in declaration order.
    pub const ALL: [DenyReason; 15] = [
        DenyReason::MissingApiKey,
        DenyReason::InvalidApiKey,
        DenyReason::ApiKeyExpired,
        DenyReason::IpNotAllowed,
        DenyReason::ToolNotAllowed,
        DenyReason::ToolDenied,
        DenyReason::RateLimited,
        DenyReason::ToolRateLimited,
        DenyReason::InsufficientCredits,
        DenyReason::SpendingLimitExceeded,
        DenyReason::DailyCallQuotaExceeded,
        DenyReason::MonthlyCallQuotaExceeded,
        DenyReason::DailyCreditQuotaExceeded,
        DenyReason::MonthlyCreditQuotaExceeded,
        DenyReason::StoreUnavailable,
    ];

    /// The reason whose machine name is `name`.
    ///
    /// ```
    /// use paygate_mcp::DenyReason;
    /// assert_eq!(DenyReason::from_name("insufficient_credits"), Some(DenyReason::InsufficientCredits));
    /// assert_eq!(DenyReason::from_name("resource_not_found"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<DenyReason> {
        DenyReason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The machine reason (`insufficient_credits`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingApiKey => "missing_api_key",
            DenyReason::InvalidApiKey => "invalid_api_key",
            DenyReason::ApiKeyExpired => "api_key_expired",
            DenyReason::IpNotAllowed => "ip_not_allowed",
            DenyReason::ToolNotAllowed => "tool_not_allowed",
            DenyReason::ToolDenied => "tool_denied",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::ToolRateLimited => "tool_rate_limited",
            DenyReason::InsufficientCredits => "insufficient_credits",
            DenyReason::SpendingLimitExceeded => "spending_limit_exceeded",
            DenyReason::DailyCallQuotaExceeded => "daily_call_quota_exceeded",
            DenyReason::MonthlyCallQuotaExceeded => "monthly_call_quota_exceeded",
            DenyReason::DailyCreditQuotaExceeded => "daily_credit_quota_exceeded",
            DenyReason::MonthlyCreditQuotaExceeded => "monthly_credit_quota_exceeded",
            DenyReason::StoreUnavailable => "store_unavailable",
        }
    }

    /// The reason's family.
    pub fn category(self) -> DenyCategory {
        use DenyReason::*;
        match self {
            MissingApiKey | InvalidApiKey | ApiKeyExpired | IpNotAllowed => {
                DenyCategory::Unauthorized
            }
            ToolNotAllowed | ToolDenied => DenyCategory::Forbidden,
            RateLimited | ToolRateLimited => DenyCategory::RateLimited,
            InsufficientCredits
            | SpendingLimitExceeded
            | DailyCallQuotaExceeded
            | MonthlyCallQuotaExceeded
            | DailyCreditQuotaExceeded
            | MonthlyCreditQuotaExceeded => DenyCategory::PaymentRequired,
            StoreUnavailable => DenyCategory::Unavailable,
        }
    }

    /// Whether this is one of the two rate-limit reasons.
    pub fn is_rate_limit(self) -> bool {
        matches!(self, DenyReason::RateLimited | DenyReason::ToolRateLimited)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_and_read_back_by_name() {
        for (i, r) in DenyReason::ALL.iter().enumerate() {
            assert_eq!(DenyReason::from_name(r.as_str()), Some(*r));
            assert!(!DenyReason::ALL[..i].contains(r));
        }
    }
}
