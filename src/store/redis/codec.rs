//! How a key's record, IPs and deny reasons are written in Redis and read back.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use redis::Value;

use crate::amount::MAX_AMOUNT;
use crate::clock::ms_to_datetime;
use crate::deny::DenyReason;
use crate::key::{canonical_ip, KeyDigest, KeyId, KeyRecord};
use crate::quota::{Quota, QuotaUsage};
use crate::store::StoreError;

use super::corrupt;

/// The 32 hex digits of an address as IPv6 (IPv4 mapped), as the scripts compare them.
pub(super) fn ip_hex(ip: IpAddr) -> String {
    let v6 = match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    hex::encode(v6.octets())
}

/// An allowlist entry as `[hex, prefix]` in the IPv6 space.
pub(super) fn net_entry(net: &IpNet) -> serde_json::Value {
    let prefix = match net {
        IpNet::V4(n) => u32::from(n.prefix_len()) + 96,
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    serde_json::json!([ip_hex(net.network()), prefix])
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The hash fields a record is stored as. `with_counters` adds balances and counters, which
/// only inserts write: afterwards the scripts own them.
pub(super) fn record_fields(rec: &KeyRecord, with_counters: bool) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("m", rec.key_masked.clone()),
        ("kid", rec.id().to_string()),
        ("n", rec.name.clone()),
        ("ca", rec.created_at.timestamp_millis().to_string()),
        ("limit", rec.spending_limit.to_string()),
        (
            "exp",
            rec.expires_at
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default(),
        ),
        ("xn", if rec.expiry_notified { "1" } else { "0" }.into()),
        ("allow", json(&rec.allowed_tools)),
        ("deny", json(&rec.denied_tools)),
        (
            "ips",
            json(&rec.ip_allowlist.iter().map(net_entry).collect::<Vec<_>>()),
        ),
        ("ipsrc", json(&rec.ip_allowlist)),
        ("quota", rec.quota.map(|q| json(&q)).unwrap_or_default()),
        ("tags", json(&rec.tags)),
    ];
    if with_counters {
        let u = &rec.quota_usage;
        f.extend([
            ("active", if rec.active { "1" } else { "0" }.into()),
            ("credits", rec.credits.to_string()),
            ("spent", rec.total_spent.to_string()),
            ("calls", rec.total_calls.to_string()),
            ("qd", u.day.to_string()),
            ("qdc", u.daily_calls.to_string()),
            ("qdcr", u.daily_credits.to_string()),
            ("qm", u.month.to_string()),
            ("qmc", u.monthly_calls.to_string()),
            ("qmcr", u.monthly_credits.to_string()),
            (
                "lu",
                rec.last_used_at
                    .map(|t| t.timestamp_millis().to_string())
                    .unwrap_or_default(),
            ),
            ("pver", "0".into()),
        ]);
    }
    f
}

/// Rebuilds a record from its hash, refusing data this store did not write.
pub(super) fn record_from(
    key: KeyDigest,
    h: &HashMap<String, String>,
) -> Result<KeyRecord, StoreError> {
    let text = |f: &str| h.get(f).map(String::as_str).unwrap_or("");
    let int = |f: &str| -> Result<u64, StoreError> {
        match text(f) {
            "" => Ok(0),
            t => t
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= MAX_AMOUNT)
                .ok_or_else(|| corrupt(f)),
        }
    };
    let signed = |f: &str| -> Result<i64, StoreError> {
        match text(f) {
            "" => Ok(0),
            t => t.parse::<i64>().map_err(|_| corrupt(f)),
        }
    };
    let time = |f: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        match text(f) {
            "" => Ok(None),
            t => t
                .parse::<i64>()
                .map(|ms| Some(ms_to_datetime(ms)))
                .map_err(|_| corrupt(f)),
        }
    };
    fn parse<T: serde::de::DeserializeOwned + Default>(
        h: &HashMap<String, String>,
        f: &str,
    ) -> Result<T, StoreError> {
        match h.get(f).map(String::as_str) {
            None | Some("") => Ok(T::default()),
            Some(t) => serde_json::from_str(t).map_err(|_| corrupt(f)),
        }
    }
    let rec = KeyRecord {
        key_hash: key,
        key_id: Some(match text("kid") {
            "" => KeyId::derived(&key),
            t => t.parse().map_err(|_| corrupt("kid"))?,
        }),
        key_masked: text("m").to_string(),
        name: text("n").to_string(),
        credits: int("credits")?,
        total_spent: int("spent")?,
        total_calls: int("calls")?,
        created_at: time("ca")?.unwrap_or_else(|| ms_to_datetime(0)),
        last_used_at: time("lu")?,
        active: text("active") == "1",
        spending_limit: int("limit")?,
        allowed_tools: parse(h, "allow")?,
        denied_tools: parse(h, "deny")?,
        expires_at: time("exp")?,
        quota: parse::<Option<Quota>>(h, "quota")?,
        tags: parse::<BTreeMap<String, String>>(h, "tags")?,
        ip_allowlist: parse::<Vec<IpNet>>(h, "ipsrc")?,
        quota_usage: QuotaUsage {
            day: signed("qd")?,
            daily_calls: int("qdc")?,
            daily_credits: int("qdcr")?,
            month: signed("qm")?,
            monthly_calls: int("qmc")?,
            monthly_credits: int("qmcr")?,
        },
        expiry_notified: text("xn") == "1",
    };
    rec.validate().map_err(StoreError::Corrupt)?;
    Ok(rec)
}

pub(super) fn reason_of(text: &str) -> Option<DenyReason> {
    use DenyReason::*;
    Some(match text {
        "invalid_api_key" => InvalidApiKey,
        "api_key_expired" => ApiKeyExpired,
        "ip_not_allowed" => IpNotAllowed,
        "tool_not_allowed" => ToolNotAllowed,
        "tool_denied" => ToolDenied,
        "rate_limited" => RateLimited,
        "tool_rate_limited" => ToolRateLimited,
        "insufficient_credits" => InsufficientCredits,
        "spending_limit_exceeded" => SpendingLimitExceeded,
        "daily_call_quota_exceeded" => DailyCallQuotaExceeded,
        "monthly_call_quota_exceeded" => MonthlyCallQuotaExceeded,
        "daily_credit_quota_exceeded" => DailyCreditQuotaExceeded,
        "monthly_credit_quota_exceeded" => MonthlyCreditQuotaExceeded,
        _ => return None,
    })
}

/// Reads the charge script's reply array.
pub(super) struct Reply(pub(super) Vec<Value>);

impl Reply {
    pub(super) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("reply")),
            _ => Err(corrupt("reply")),
        }
    }
    pub(super) fn uint(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?.max(0)).map_err(|_| corrupt("reply"))
    }
    pub(super) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            Some(Value::Int(n)) => Ok(n.to_string()),
            Some(Value::Nil) | None => Ok(String::new()),
            _ => Err(corrupt("reply")),
        }
    }
}
