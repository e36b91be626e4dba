//! The in-memory store's compact form of a key record: fixed-size fields inline, tags shared
//! with the other keys that carry the same ones, the rarely set policy (ACL, IP allowlist,
//! own quota) behind one optional box, so a million keys stay within a few hundred bytes
//! each.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::memory::tags::{Tag, TagSet};
use super::KeySnapshot;
use crate::clock::ms_to_datetime;
use crate::deny::DenyReason;
use crate::key::{canonical_ip, KeyDigest, KeyId, KeyRecord};
use crate::quota::{Quota, QuotaUsage};

/// A masked key's usual form, `pg_1234...abcd`: its 7 + 4 characters are kept inline and
/// the dots implied.
const MASK_HEAD: usize = 7;
const MASK_DOTS: &str = "...";
const MASKED_INLINE: usize = 11;
const NO_TIME: i64 = i64::MIN;

#[derive(Debug, Clone, Default, PartialEq)]
struct Policy {
    quota: Option<Quota>,
    allowed_tools: Vec<String>,
    denied_tools: Vec<String>,
    ip_allowlist: Vec<IpNet>,
    /// A masked form that is not the usual `pg_1234...abcd`.
    masked: Option<String>,
}

impl Policy {
    fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// One key as the memory store holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredKey {
    pub(crate) credits: u64,
    pub(crate) total_spent: u64,
    pub(crate) total_calls: u64,
    pub(crate) spending_limit: u64,
    created_ms: i64,
    pub(crate) last_used_ms: i64,
    expires_ms: i64,
    /// Boxed, and absent until the key first counts against a quota: most keys never do,
    /// and 48 bytes inline cost a million keys ~60 MB.
    quota_usage: Option<Box<QuotaUsage>>,
    masked: [u8; MASKED_INLINE],
    pub(crate) key_id: KeyId,
    pub(crate) active: bool,
    pub(crate) expiry_notified: bool,
    name: Box<str>,
    /// Shared through the store's [`TagIndex`](super::memory::tags::TagIndex).
    pub(crate) tags: Option<TagSet>,
    policy: Option<Box<Policy>>,
}

impl StoredKey {
    pub(crate) fn from_record(rec: &KeyRecord) -> Self {
        let mut masked = [0u8; MASKED_INLINE];
        let bytes = rec.key_masked.as_bytes();
        let inline = bytes.len() == MASKED_INLINE + MASK_DOTS.len()
            && bytes.is_ascii()
            && &bytes[MASK_HEAD..MASK_HEAD + MASK_DOTS.len()] == MASK_DOTS.as_bytes();
        if inline {
            masked[..MASK_HEAD].copy_from_slice(&bytes[..MASK_HEAD]);
            masked[MASK_HEAD..].copy_from_slice(&bytes[MASK_HEAD + MASK_DOTS.len()..]);
        }
        let policy = Policy {
            quota: rec.quota,
            allowed_tools: rec.allowed_tools.clone(),
            denied_tools: rec.denied_tools.clone(),
            ip_allowlist: rec.ip_allowlist.clone(),
            masked: (!inline).then(|| rec.key_masked.clone()),
        };
        Self {
            credits: rec.credits,
            total_spent: rec.total_spent,
            total_calls: rec.total_calls,
            spending_limit: rec.spending_limit,
            created_ms: rec.created_at.timestamp_millis(),
            last_used_ms: rec.last_used_at.map_or(NO_TIME, |t| t.timestamp_millis()),
            expires_ms: rec.expires_at.map_or(NO_TIME, |t| t.timestamp_millis()),
            quota_usage: counted(rec.quota_usage).map(Box::new),
            masked,
            key_id: rec.id(),
            active: rec.active,
            expiry_notified: rec.expiry_notified,
            name: rec.name.as_str().into(),
            tags: TagSet::new(rec.tags.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            policy: (!policy.is_empty()).then(|| Box::new(policy)),
        }
    }

    pub(crate) fn to_record(&self, key: KeyDigest) -> KeyRecord {
        let p = self.policy.as_deref();
        KeyRecord {
            key_hash: key,
            key_id: Some(self.key_id),
            key_masked: self.masked(),
            name: self.name.to_string(),
            credits: self.credits,
            total_spent: self.total_spent,
            total_calls: self.total_calls,
            created_at: ms_to_datetime(self.created_ms),
            last_used_at: (self.last_used_ms != NO_TIME).then(|| ms_to_datetime(self.last_used_ms)),
            active: self.active,
            spending_limit: self.spending_limit,
            allowed_tools: p.map(|p| p.allowed_tools.clone()).unwrap_or_default(),
            denied_tools: p.map(|p| p.denied_tools.clone()).unwrap_or_default(),
            expires_at: (self.expires_ms != NO_TIME).then(|| ms_to_datetime(self.expires_ms)),
            quota: self.quota(),
            tags: self
                .tags()
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            ip_allowlist: p.map(|p| p.ip_allowlist.clone()).unwrap_or_default(),
            quota_usage: self.quota_usage(),
            expiry_notified: self.expiry_notified,
        }
    }

    pub(crate) fn masked(&self) -> String {
        match self.policy.as_deref().and_then(|p| p.masked.clone()) {
            Some(m) => m,
            None => {
                let (head, tail) = self.masked.split_at(MASK_HEAD);
                let mut out = String::from_utf8_lossy(head).into_owned();
                out.push_str(MASK_DOTS);
                out.push_str(&String::from_utf8_lossy(tail));
                out
            }
        }
    }

    pub(crate) fn set_masked(&mut self, masked: &str) {
        // The shared tags stay as they are.
        let tags = self.tags.take();
        let mut rec = self.to_record(KeyDigest([0; 32]));
        rec.key_masked = masked.to_string();
        *self = Self::from_record(&rec);
        self.tags = tags;
    }

    pub(crate) fn quota(&self) -> Option<Quota> {
        self.policy.as_deref().and_then(|p| p.quota)
    }

    /// The quota counters as last stored (roll them over before reading).
    pub(crate) fn quota_usage(&self) -> QuotaUsage {
        self.quota_usage.as_deref().copied().unwrap_or_default()
    }

    pub(crate) fn set_quota_usage(&mut self, usage: QuotaUsage) {
        match (&mut self.quota_usage, counted(usage)) {
            (Some(held), Some(usage)) => **held = usage,
            (held, usage) => *held = usage.map(Box::new),
        }
    }

    pub(crate) fn is_expired_at(&self, now_ms: i64) -> bool {
        self.expires_ms != NO_TIME && now_ms >= self.expires_ms
    }

    pub(crate) fn set_last_used(&mut self, now_ms: i64) {
        self.last_used_ms = now_ms;
    }

    /// Same rules as [`KeyRecord::permits_ip`].
    pub(crate) fn permits_ip(&self, ip: Option<IpAddr>) -> bool {
        let Some(list) = self
            .policy
            .as_deref()
            .map(|p| &p.ip_allowlist)
            .filter(|l| !l.is_empty())
        else {
            return true;
        };
        let Some(ip) = ip else { return false };
        let ip = canonical_ip(ip);
        list.iter().any(|net| net.contains(&ip))
    }

    /// Same rules as [`KeyRecord::permits_tool`].
    pub(crate) fn acl_denial(&self, tool: &str) -> Option<DenyReason> {
        let p = self.policy.as_deref()?;
        if !p.allowed_tools.is_empty() && !p.allowed_tools.iter().any(|t| t == tool) {
            return Some(DenyReason::ToolNotAllowed);
        }
        if p.denied_tools.iter().any(|t| t == tool) {
            return Some(DenyReason::ToolDenied);
        }
        None
    }

    pub(crate) fn snapshot(
        &self,
        key: KeyDigest,
        now_ms: i64,
        global_quota: Option<Quota>,
    ) -> KeySnapshot {
        KeySnapshot {
            key,
            key_id: self.key_id,
            name: self.name.to_string(),
            key_masked: self.masked(),
            credits: self.credits,
            total_spent: self.total_spent,
            total_calls: self.total_calls,
            spending_limit: self.spending_limit,
            expires_at_ms: (self.expires_ms != NO_TIME).then_some(self.expires_ms),
            quota: self.quota().or(global_quota),
            quota_usage: self.quota_usage().rolled(now_ms),
        }
    }

    /// The key's tags, sorted by name (empty when it has none).
    pub(crate) fn tags(&self) -> &[Tag] {
        self.tags.as_ref().map_or(&[], TagSet::as_slice)
    }

    /// Whether the tags contain every pair in `wanted`.
    pub(crate) fn has_tags(&self, wanted: &BTreeMap<String, String>) -> bool {
        let tags = self.tags();
        wanted.iter().all(|(name, value)| {
            tags.binary_search_by(|(n, _)| (**n).cmp(name.as_str()))
                .is_ok_and(|at| *tags[at].1 == **value)
        })
    }
}

/// `usage` unless it is the default: a key never counted against a quota holds nothing.
fn counted(usage: QuotaUsage) -> Option<QuotaUsage> {
    (usage != QuotaUsage::default()).then_some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_ip_entry;

    #[test]
    fn round_trips_every_field() {
        let mut rec = KeyRecord::new(
            "pg_0123456789abcdef0123456789abcdef0123456789abcdef",
            "n",
            5,
            1_000,
        );
        assert_eq!(StoredKey::from_record(&rec).to_record(rec.key_hash), rec);
        rec.allowed_tools = vec!["a".into()];
        rec.denied_tools = vec!["b".into()];
        rec.tags.insert("t".into(), "v".into());
        rec.ip_allowlist = vec![parse_ip_entry("10.0.0.0/8").unwrap()];
        rec.quota = Some(Quota {
            daily_call_limit: 3,
            ..Default::default()
        });
        rec.expires_at = Some(ms_to_datetime(9_000));
        rec.last_used_at = Some(ms_to_datetime(2_000));
        rec.key_masked = "***".into();
        rec.expiry_notified = true;
        let stored = StoredKey::from_record(&rec);
        assert_eq!(stored.to_record(rec.key_hash), rec);
        for masked in [
            "pg_0123...cdef",
            "pg_0123.x.cdef",
            "pg_01234...cdef",
            "pg_012é...cde",
        ] {
            rec.key_masked = masked.into();
            assert_eq!(StoredKey::from_record(&rec).to_record(rec.key_hash), rec);
        }
        assert!(stored.is_expired_at(9_000) && !stored.is_expired_at(8_999));
        assert_eq!(stored.acl_denial("c"), Some(DenyReason::ToolNotAllowed));
        assert!(!stored.permits_ip(Some("11.0.0.1".parse().unwrap())));
    }

    #[test]
    fn quota_counters_are_held_only_once_they_count() {
        let rec = KeyRecord::new("pg_0123456789abcdef0123456789abcdef", "n", 5, 1_000);
        let mut stored = StoredKey::from_record(&rec);
        stored.set_quota_usage(stored.quota_usage());
        assert!(
            stored.quota_usage.is_none(),
            "a key never counted holds nothing"
        );
        let mut usage = stored.quota_usage().rolled(90_000_000_000);
        usage.add(3, 90_000_000_000);
        stored.set_quota_usage(usage);
        assert_eq!(stored.quota_usage(), usage);
        assert_eq!(stored.to_record(rec.key_hash).quota_usage.daily_credits, 3);
        // Counters back at zero keep their date, as a record read back must.
        let zero = usage.rolled(200_000_000_000);
        stored.set_quota_usage(zero);
        assert_eq!(stored.to_record(rec.key_hash).quota_usage, zero);
        let mut imported = rec.clone();
        imported.quota_usage = zero;
        assert_eq!(
            StoredKey::from_record(&imported).to_record(rec.key_hash),
            imported
        );
    }

    #[test]
    fn a_plain_key_is_small() {
        assert!(
            // 152 before the 10-byte account id; shared tags fit in the 3 bytes of dots;
            // 120 once quota counters were boxed.
            std::mem::size_of::<StoredKey>() <= 120,
            "{}",
            std::mem::size_of::<StoredKey>()
        );
    }
}
