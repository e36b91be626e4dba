//! The seam for state: every backend (in memory, Redis) implements [`KeyStore`].
//!
//! The store owns the one operation that must be atomic, [`KeyStore::charge`]: it checks a
//! key (steps 2–9 of the gate) and, when every check passes, deducts credits and counts the
//! call everywhere (step 10) in one indivisible step, so no interleaving of callers, threads
//! or processes can overspend a key or exceed a limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use crate::deny::DenyReason;
use crate::key::{KeyDigest, KeyId, KeyRecord};
use crate::quota::{Quota, QuotaUsage};
use crate::ratelimit::RateState;

mod compact;
pub mod grants;
pub mod memory;
pub mod payments;
#[cfg(feature = "redis")]
pub mod redis;
pub mod state_file;

pub use grants::{
    token_digest, Client, ClientAuth, CodeGrant, CodeTaken, Grant, GrantLimits, GrantStore,
    Refreshed, TokenDigest, TokenPair,
};
pub use memory::MemoryKeyStore;
pub use payments::{PaymentCredit, PaymentOutcome, PaymentSeen, PAYMENT_RETENTION_MS};
pub use state_file::{LoadReport, StateFileError};

/// Why a store operation failed (as opposed to a key being denied).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A key with this digest, or an account with this id, already exists.
    #[error("a key with this digest or id already exists")]
    Duplicate,
    /// An update would leave the record invalid.
    #[error("{0}")]
    Invalid(String),
    /// The key is revoked: it takes no top-up, policy change or rotation.
    #[error("the key is revoked; a revoked key cannot be changed")]
    Revoked,
    /// The backend holds data it cannot read.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

/// Everything the store needs to decide and charge one `tools/call` atomically.
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    /// The caller's key.
    pub key: KeyDigest,
    /// The tool being called.
    pub tool: &'a str,
    /// Credits the call costs.
    pub price: u64,
    /// The caller's IP, when known.
    pub client_ip: Option<IpAddr>,
    /// The time of the call.
    pub now_ms: i64,
    /// Per-key calls per rolling minute across tools; 0 = off.
    pub global_rate_limit: u64,
    /// Per-key calls per rolling minute for this tool; 0 = off.
    pub tool_rate_limit: u64,
    /// Quota for keys without their own.
    pub global_quota: Option<Quota>,
    /// Evaluate every check but apply nothing.
    pub shadow: bool,
    /// Which checks apply: the stages present in front of the tool.
    pub checks: Checks,
}

/// Which of the gate's checks a charge applies. The key checks (known, active, not expired,
/// IP allowlist, ACL) always apply; the rest follow the layers present, so a stack without
/// billing deducts nothing and one without rate limiting records no window. Each check owns
/// what it counts, so two charges for different checks of one call never count it twice.
///
/// ```
/// use paygate_mcp::store::Checks;
/// let rate_only = Checks { rate_limits: true, ..Checks::NONE };
/// assert!(!rate_only.credits && !rate_only.quotas);
/// assert_eq!(Checks::default(), Checks::ALL);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Per-key rate windows (global and per tool): checked, and the call recorded in them.
    pub rate_limits: bool,
    /// Daily and monthly quotas: checked, and the call (and the credits it was charged)
    /// counted in the quota counters.
    pub quotas: bool,
    /// Credits and the spending limit: checked, the price deducted, and the call counted in
    /// the key's spent credits and calls. Without it the call costs nothing, so credit
    /// quotas count nothing for it.
    pub credits: bool,
}

impl Checks {
    /// Every check (the whole gate).
    pub const ALL: Checks = Checks {
        rate_limits: true,
        quotas: true,
        credits: true,
    };
    /// Only the key checks.
    pub const NONE: Checks = Checks {
        rate_limits: false,
        quotas: false,
        credits: false,
    };

    /// The price the call is charged (and counted in credit quotas): nothing without billing.
    pub fn price(&self, price: u64) -> u64 {
        if self.credits {
            price
        } else {
            0
        }
    }

    /// The rate limit applied: off (0) without the rate-limit check.
    pub fn rate_limit(&self, limit: u64) -> u64 {
        if self.rate_limits {
            limit
        } else {
            0
        }
    }

    /// The form the Redis script reads (`r`, `q`, `c` for each check present).
    #[cfg(feature = "redis")]
    pub(crate) fn letters(&self) -> String {
        [
            (self.rate_limits, 'r'),
            (self.quotas, 'q'),
            (self.credits, 'c'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }
}

impl Default for Checks {
    fn default() -> Self {
        Checks::ALL
    }
}

/// The state of a key after a charge, refund or denial: what alerts, events and response
/// headers need, without the whole record.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySnapshot {
    /// The key's digest.
    pub key: KeyDigest,
    /// The account's public id.
    pub key_id: KeyId,
    /// Owner-chosen label.
    pub name: String,
    /// Display form of the key.
    pub key_masked: String,
    /// Credits left.
    pub credits: u64,
    /// Credits spent over the key's life.
    pub total_spent: u64,
    /// Allowed calls over the key's life.
    pub total_calls: u64,
    /// Spending cap; 0 = unlimited.
    pub spending_limit: u64,
    /// Expiry in epoch milliseconds.
    pub expires_at_ms: Option<i64>,
    /// The quota in force (the key's own, else the global one).
    pub quota: Option<Quota>,
    /// Quota counters, rolled to the time of the snapshot.
    pub quota_usage: QuotaUsage,
}

impl KeySnapshot {
    /// Snapshot of `rec` at `now_ms` with `global_quota` as fallback.
    pub fn of(rec: &KeyRecord, now_ms: i64, global_quota: Option<Quota>) -> Self {
        Self {
            key: rec.key_hash,
            key_id: rec.id(),
            name: rec.name.clone(),
            key_masked: rec.key_masked.clone(),
            credits: rec.credits,
            total_spent: rec.total_spent,
            total_calls: rec.total_calls,
            spending_limit: rec.spending_limit,
            expires_at_ms: rec.expires_at.map(|t| t.timestamp_millis()),
            quota: rec.quota.or(global_quota),
            quota_usage: rec.quota_usage.rolled(now_ms),
        }
    }
}

/// Proof that a call was charged, needed to refund it. Only a store makes one, and
/// refunding consumes it, so a refund can never return credits that were not charged.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a receipt is the only way to refund the charge"]
pub struct ChargeReceipt {
    pub(crate) key: KeyDigest,
    pub(crate) credits: u64,
    pub(crate) day: i64,
    pub(crate) month: i64,
    /// The charge counted the call in the key's credits, spent and calls (billing).
    pub(crate) billed: bool,
    /// The charge counted the call in the quota counters.
    pub(crate) counted: bool,
    /// The store's own identifier of the charge, if it keeps one.
    pub(crate) nonce: Option<String>,
    /// When the charge was made (the request's time), in milliseconds.
    pub(crate) charged_at_ms: i64,
}

impl ChargeReceipt {
    /// Splits off the part of the charge that counted for billing (`billing`) and for the
    /// quota counters (`quota`), to refund it alone: (that part, the rest), either `None`
    /// when empty. Each part undoes only what it names, once.
    pub fn split(self, billing: bool, quota: bool) -> (Option<Self>, Option<Self>) {
        let part = |billed: bool, counted: bool| {
            (billed || counted).then(|| ChargeReceipt {
                key: self.key,
                credits: self.credits,
                day: self.day,
                month: self.month,
                billed,
                counted,
                nonce: self.nonce.clone(),
                charged_at_ms: self.charged_at_ms,
            })
        };
        (
            part(self.billed && billing, self.counted && quota),
            part(self.billed && !billing, self.counted && !quota),
        )
    }

    /// The key charged.
    pub fn key(&self) -> KeyDigest {
        self.key
    }

    /// Whether the charge counted for billing (credits, spent, calls), as opposed to the
    /// quota counters only.
    pub fn billed(&self) -> bool {
        self.billed
    }

    /// Whether the charge counted the call in the quota counters.
    pub fn counted(&self) -> bool {
        self.counted
    }

    /// Credits charged.
    pub fn credits(&self) -> u64 {
        self.credits
    }
}

/// The outcome of [`KeyStore::charge`].
#[derive(Debug)]
pub struct ChargeOutcome {
    /// `None` when allowed; the first failing check otherwise (in shadow mode the call is
    /// still allowed and this says what would have denied it).
    pub denial: Option<DenyReason>,
    /// Seconds until a rate-limited call could pass.
    pub retry_after_secs: Option<u64>,
    /// The key's state after the operation; `None` when the key is unknown.
    pub snapshot: Option<KeySnapshot>,
    /// The window the headers report (the tool's when it has one, else the global one).
    pub rate: Option<RateState>,
    /// Present when credits were actually deducted.
    pub receipt: Option<ChargeReceipt>,
    /// True the first time a call meets this key expired (emit `key.expired` once).
    pub newly_expired: bool,
}

/// Aggregates kept up to date as keys change, so reading them costs the same at any size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Keys stored, active or not.
    pub total_keys: u64,
    /// Keys not revoked (expired keys included until they are revoked).
    pub active_keys: u64,
    /// Sum of the credits of active keys.
    pub total_credits: u64,
}

/// One page of a key listing, in a stable order.
#[derive(Debug, Clone, Default)]
pub struct KeyPage {
    /// The records on this page.
    pub keys: Vec<KeyRecord>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<KeyDigest>,
    /// Keys in the store.
    pub total: u64,
}

/// A change to one key, applied atomically by [`KeyStore::update`].
#[derive(Debug, Clone, PartialEq)]
pub enum KeyUpdate {
    /// Adds credits.
    TopUp(u64),
    /// Deactivates the key for good.
    Revoke,
    /// Replaces the allowed and denied tool lists.
    SetAcl {
        /// Tools the key may call; empty = all.
        allowed_tools: Vec<String>,
        /// Tools the key may never call.
        denied_tools: Vec<String>,
    },
    /// Replaces the tool lists that are given (`None` keeps a list as it is), both in one
    /// step: when either list is refused neither changes.
    UpdateAcl {
        /// The new allowed list, if it changes; empty = all tools.
        allowed_tools: Option<Vec<String>>,
        /// The new denied list, if it changes.
        denied_tools: Option<Vec<String>>,
    },
    /// Sets or removes the expiry.
    SetExpiry(Option<DateTime<Utc>>),
    /// Sets the key's own quota, or removes it (`None`) to fall back to the global one.
    SetQuota(Option<Quota>),
    /// Merges tags; a `None` value deletes the tag.
    MergeTags(BTreeMap<String, Option<String>>),
    /// Replaces the IP allowlist.
    SetIpAllowlist(Vec<IpNet>),
    /// Sets the spending limit (0 = unlimited).
    SetSpendingLimit(u64),
}

impl KeyUpdate {
    /// Applies the update to `rec`, refusing it (and leaving `rec` unchanged) when the result
    /// would break a bound, or with [`StoreError::Revoked`] when the key is revoked (only
    /// [`KeyUpdate::Revoke`] applies to a revoked key, and changes nothing). Every store
    /// applies updates through this one function.
    pub fn apply(&self, rec: &mut KeyRecord) -> Result<(), StoreError> {
        use crate::amount::MAX_AMOUNT;
        use crate::key::{MAX_LIST_LEN, MAX_TAGS, MAX_TAG_LEN};
        if !rec.active && *self != KeyUpdate::Revoke {
            return Err(StoreError::Revoked);
        }
        match self {
            KeyUpdate::TopUp(credits) => {
                let sum = rec.credits.saturating_add(*credits);
                if sum > MAX_AMOUNT {
                    return Err(StoreError::Invalid(format!(
                        "balance would exceed {MAX_AMOUNT} credits"
                    )));
                }
                rec.credits = sum;
            }
            KeyUpdate::Revoke => rec.active = false,
            KeyUpdate::SetAcl {
                allowed_tools,
                denied_tools,
            } => {
                check_tool_list(allowed_tools)?;
                check_tool_list(denied_tools)?;
                rec.allowed_tools = allowed_tools.clone();
                rec.denied_tools = denied_tools.clone();
            }
            KeyUpdate::UpdateAcl {
                allowed_tools,
                denied_tools,
            } => {
                // Check both before changing either.
                for list in [allowed_tools, denied_tools].into_iter().flatten() {
                    check_tool_list(list)?;
                }
                if let Some(tools) = allowed_tools {
                    rec.allowed_tools = tools.clone();
                }
                if let Some(tools) = denied_tools {
                    rec.denied_tools = tools.clone();
                }
            }
            KeyUpdate::SetExpiry(at) => {
                rec.expires_at = *at;
                rec.expiry_notified = false;
            }
            KeyUpdate::SetQuota(q) => rec.quota = *q,
            KeyUpdate::MergeTags(changes) => {
                let mut tags = rec.tags.clone();
                for (k, v) in changes {
                    if k.is_empty() || k.chars().count() > MAX_TAG_LEN {
                        return Err(StoreError::Invalid(format!(
                            "tag names must be 1 to {MAX_TAG_LEN} characters"
                        )));
                    }
                    match v {
                        Some(v) if v.chars().count() > MAX_TAG_LEN => {
                            return Err(StoreError::Invalid(format!(
                                "tag values must be at most {MAX_TAG_LEN} characters"
                            )))
                        }
                        Some(v) => {
                            tags.insert(k.clone(), v.clone());
                        }
                        None => {
                            tags.remove(k);
                        }
                    }
                }
                if tags.len() > MAX_TAGS {
                    return Err(StoreError::Invalid(format!(
                        "a key holds at most {MAX_TAGS} tags"
                    )));
                }
                rec.tags = tags;
            }
            KeyUpdate::SetIpAllowlist(nets) => {
                if nets.len() > MAX_LIST_LEN {
                    return Err(StoreError::Invalid(format!(
                        "an IP allowlist holds at most {MAX_LIST_LEN} entries"
                    )));
                }
                rec.ip_allowlist = nets.clone();
            }
            KeyUpdate::SetSpendingLimit(limit) => rec.spending_limit = *limit,
        }
        Ok(())
    }
}

/// Refuses tool lists that are too long or hold empty or overlong names.
fn check_tool_list(tools: &[String]) -> Result<(), StoreError> {
    use crate::key::{MAX_LIST_LEN, MAX_NAME_LEN};
    if tools.len() > MAX_LIST_LEN {
        return Err(StoreError::Invalid(format!(
            "tool lists hold at most {MAX_LIST_LEN} names"
        )));
    }
    if tools
        .iter()
        .any(|t| t.is_empty() || t.chars().count() > MAX_NAME_LEN)
    {
        return Err(StoreError::Invalid(format!(
            "tool names must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

/// Where keys, balances, quota counters and rate windows live, and (as a [`GrantStore`])
/// the OAuth grants that act for keys.
///
/// Methods return `Send` futures so a networked backend fits; the in-memory store answers
/// with ready futures, so its hot path pays no allocation or boxing. The gate is generic over
/// the store rather than holding a `dyn KeyStore`.
pub trait KeyStore: GrantStore + Send + Sync + 'static {
    /// Steps 2–10 of the gate as one atomic operation: check the key and, when every check
    /// passes and `req.shadow` is false, deduct and count the call.
    fn charge(
        &self,
        req: &ChargeRequest<'_>,
    ) -> impl Future<Output = Result<ChargeOutcome, StoreError>> + Send;

    /// Undoes a charge exactly (credits, totalSpent, totalCalls, quota counters). Returns the
    /// key's state afterwards, or `None` when the key no longer exists.
    fn refund(
        &self,
        receipt: ChargeReceipt,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<KeySnapshot>, StoreError>> + Send;

    /// Stores a new key.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads one key.
    fn get(
        &self,
        key: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Applies one change atomically; `None` when the key is unknown. A revoked key takes no
    /// change but [`KeyUpdate::Revoke`]: anything else fails with [`StoreError::Revoked`].
    fn update(
        &self,
        key: &KeyDigest,
        change: &KeyUpdate,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Moves all of `old`'s state to a new key (`new_key`, `new_masked`); `old` stops working
    /// at once. `None` when `old` is unknown; [`StoreError::Revoked`] when it is revoked.
    fn rotate(
        &self,
        old: &KeyDigest,
        new_key: KeyDigest,
        new_masked: String,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Up to `limit` keys after `after` in the store's stable order.
    fn list(
        &self,
        after: Option<KeyDigest>,
        limit: usize,
    ) -> impl Future<Output = Result<KeyPage, StoreError>> + Send;

    /// Keys whose tags contain every pair in `tags`, at most `limit`. Costs about the number
    /// of keys carrying the rarest of the wanted tags, never a scan of all keys.
    fn search_by_tags(
        &self,
        tags: &BTreeMap<String, String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// The digest of the key that holds account id `id` now (it follows rotations), in
    /// constant time.
    fn find_id(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyDigest>, StoreError>> + Send;

    /// Aggregates over all keys, in constant time.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;

    /// Adds a payment's credits to the account `payment.key_id` and records its ids, in one
    /// atomic step: when any of the ids was credited in the last
    /// [`PAYMENT_RETENTION_MS`], nothing changes ([`PaymentOutcome::AlreadyCredited`]).
    fn credit_payment(
        &self,
        payment: &PaymentCredit<'_>,
    ) -> impl Future<Output = Result<PaymentOutcome, StoreError>> + Send;
}
