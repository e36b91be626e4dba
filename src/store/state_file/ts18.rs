//! Importing the state file of paygate-mcp 1.8 (TypeScript), which holds plaintext keys:
//! each key becomes a digest record with its balance, counters, ACL, quota, tags, allowlist
//! and expiry (SPEC §11). The plaintext never reaches a store or a message.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::StateFileError;
use crate::amount::MAX_AMOUNT;
use crate::clock::{utc_day, utc_month};
use crate::key::{mask_key, parse_ip_entry, KeyRecord};
use crate::quota::{Quota, QuotaUsage};
use crate::store::{KeyStore, StoreError};

/// What importing a 1.8 state file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys imported.
    pub imported: usize,
    /// Records skipped.
    pub skipped: usize,
    /// Why records were skipped (the first 100), naming keys by their masked form.
    pub reasons: Vec<String>,
}

impl ImportReport {
    fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.reasons.len() < 100 {
            self.reasons.push(reason);
        }
    }
}

/// One record of a 1.8 state file, as 1.8 writes it (unknown fields are ignored: later
/// 1.x releases add some).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ts18Record {
    key: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(deserialize_with = "floored")]
    credits: i64,
    #[serde(default, deserialize_with = "floored")]
    total_spent: i64,
    #[serde(default, deserialize_with = "floored")]
    total_calls: i64,
    created_at: Option<String>,
    last_used_at: Option<String>,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default, deserialize_with = "floored")]
    spending_limit: i64,
    #[serde(default, deserialize_with = "null_as_empty")]
    allowed_tools: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    denied_tools: Vec<String>,
    expires_at: Option<String>,
    quota: Option<Ts18Quota>,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    ip_allowlist: Vec<String>,
    #[serde(default, deserialize_with = "floored")]
    quota_daily_calls: i64,
    #[serde(default, deserialize_with = "floored")]
    quota_monthly_calls: i64,
    #[serde(default, deserialize_with = "floored")]
    quota_daily_credits: i64,
    #[serde(default, deserialize_with = "floored")]
    quota_monthly_credits: i64,
    quota_last_reset_day: Option<String>,
    quota_last_reset_month: Option<String>,
}

fn yes() -> bool {
    true
}

/// A number as 1.8 (JavaScript) may have written it: a fraction is floored, as every amount
/// here is; `null` reads as 0. A negative or too large value is refused later, by name.
fn floored<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(d)?;
    Ok(match n {
        None => 0,
        Some(n) => match n.as_i64() {
            Some(v) => v,
            // Saturating: a huge float is refused by the bound check, not wrapped.
            None => n.as_f64().map_or(i64::MAX, |f| f.floor() as i64),
        },
    })
}

/// A list or map that 1.8 may have written as `null`: empty.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ts18Quota {
    #[serde(default, deserialize_with = "floored")]
    daily_call_limit: i64,
    #[serde(default, deserialize_with = "floored")]
    monthly_call_limit: i64,
    #[serde(default, deserialize_with = "floored")]
    daily_credit_limit: i64,
    #[serde(default, deserialize_with = "floored")]
    monthly_credit_limit: i64,
}

/// Reads a 1.8 state file and inserts each key into `store`; `now_ms` stands for a record
/// without `createdAt`. Records that cannot be read, or whose key is already in the store,
/// are skipped and reported; the file is never changed.
pub async fn import_ts18<S: KeyStore>(
    store: &S,
    path: &Path,
    now_ms: i64,
) -> Result<ImportReport, StateFileError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| StateFileError::Io {
        path: shown.clone(),
        source,
    })?;
    let pairs: Vec<(String, Value)> =
        serde_json::from_slice(&bytes).map_err(|e| StateFileError::Corrupt {
            path: shown.clone(),
            reason: format!(
                "not a paygate-mcp 1.8 state file (a JSON array of [key, record] pairs): {}",
                e.classify_message()
            ),
        })?;
    let mut report = ImportReport::default();
    for (n, (key, record)) in pairs.into_iter().enumerate() {
        let rec = match record_of(&key, record, now_ms) {
            Ok(rec) => rec,
            Err(why) => {
                report.skip(format!("record {n} ({}): {why}", mask_key(&key)));
                continue;
            }
        };
        let masked = rec.key_masked.clone();
        match store.insert(rec).await {
            Ok(()) => report.imported += 1,
            Err(StoreError::Duplicate) => {
                report.skip(format!("record {n} ({masked}): already in the store"));
            }
            Err(e) => {
                return Err(StateFileError::Corrupt {
                    path: shown,
                    reason: format!("the store refused record {n} ({masked}): {e}"),
                })
            }
        }
    }
    Ok(report)
}

/// A short message for a JSON error, without the parser's line and column.
trait Classify {
    fn classify_message(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "it could not be read",
            serde_json::error::Category::Syntax => "it is not valid JSON",
            serde_json::error::Category::Data => "its shape is not the 1.8 one",
            serde_json::error::Category::Eof => "it ends too early",
        }
    }
}

/// The digest record of one 1.8 record.
fn record_of(key: &str, record: Value, now_ms: i64) -> Result<KeyRecord, String> {
    if key.len() < 16 || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a key must be 16 to 256 printable ASCII characters".into());
    }
    let r: Ts18Record = serde_json::from_value(record)
        .map_err(|e| format!("the record's shape is not the 1.8 one ({})", field_of(&e)))?;
    if r.key.as_deref().is_some_and(|k| k != key) {
        return Err("the record names a different key than its pair".into());
    }
    let created = time(r.created_at.as_deref(), "createdAt")?
        .unwrap_or_else(|| crate::clock::ms_to_datetime(now_ms));
    let mut rec = KeyRecord::new(
        key,
        &r.name,
        amount(r.credits, "credits")?,
        created.timestamp_millis(),
    );
    rec.quota_usage = usage(&r)?;
    rec.total_spent = amount(r.total_spent, "totalSpent")?;
    rec.total_calls = amount(r.total_calls, "totalCalls")?;
    rec.last_used_at = time(r.last_used_at.as_deref(), "lastUsedAt")?;
    rec.active = r.active;
    rec.spending_limit = amount(r.spending_limit, "spendingLimit")?;
    rec.allowed_tools = r.allowed_tools;
    rec.denied_tools = r.denied_tools;
    rec.expires_at = time(r.expires_at.as_deref(), "expiresAt")?;
    rec.quota = match r.quota {
        Some(q) => {
            let quota = Quota {
                daily_call_limit: amount(q.daily_call_limit, "quota.dailyCallLimit")?,
                monthly_call_limit: amount(q.monthly_call_limit, "quota.monthlyCallLimit")?,
                daily_credit_limit: amount(q.daily_credit_limit, "quota.dailyCreditLimit")?,
                monthly_credit_limit: amount(q.monthly_credit_limit, "quota.monthlyCreditLimit")?,
            };
            // 1.8 writes a quota of zeros for "no quota of its own".
            (quota != Quota::default()).then_some(quota)
        }
        None => None,
    };
    rec.tags = r.tags;
    rec.ip_allowlist = r
        .ip_allowlist
        .iter()
        .map(|entry| parse_ip_entry(entry).map_err(|e| format!("ipAllowlist: {e}")))
        .collect::<Result<_, _>>()?;
    rec.validate()?;
    Ok(rec)
}

/// The quota counters, in the periods 1.8 last reset them.
fn usage(r: &Ts18Record) -> Result<QuotaUsage, String> {
    let day = match r.quota_last_reset_day.as_deref() {
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("quotaLastResetDay '{text}' is not a date like 2026-03-15"))?,
        None => return Ok(QuotaUsage::default()),
    };
    let day_ms = day
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis());
    let month = match r.quota_last_reset_month.as_deref() {
        Some(text) => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
            .map_err(|_| format!("quotaLastResetMonth '{text}' is not a month like 2026-03"))?
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| utc_month(t.and_utc().timestamp_millis())),
        None => utc_month(day_ms),
    };
    Ok(QuotaUsage {
        day: utc_day(day_ms),
        daily_calls: amount(r.quota_daily_calls, "quotaDailyCalls")?,
        daily_credits: amount(r.quota_daily_credits, "quotaDailyCredits")?,
        month,
        monthly_calls: amount(r.quota_monthly_calls, "quotaMonthlyCalls")?,
        monthly_credits: amount(r.quota_monthly_credits, "quotaMonthlyCredits")?,
    })
}

/// A whole amount from 0 to [`MAX_AMOUNT`].
fn amount(value: i64, field: &str) -> Result<u64, String> {
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= MAX_AMOUNT)
        .ok_or_else(|| {
            format!("{field} must be a whole number from 0 to {MAX_AMOUNT}, not {value}")
        })
}

/// An RFC 3339 time, or none.
fn time(text: Option<&str>, field: &str) -> Result<Option<DateTime<Utc>>, String> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("{field} '{t}' is not a time like 2026-03-15T10:00:00Z"))
    })
    .transpose()
}

/// The field a record's shape error is about, without the parser's position.
fn field_of(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pg_ts18frank0000000000000000000000000000000000006";

    #[test]
    fn fractions_are_floored_and_null_lists_are_empty() {
        let rec = record_of(
            KEY,
            serde_json::json!({
                "name": "frank", "credits": 12.7, "totalSpent": 3.2, "totalCalls": null,
                "tags": null, "allowedTools": null, "deniedTools": null, "ipAllowlist": null,
                "quota": {"dailyCallLimit": 2.5}
            }),
            0,
        )
        .unwrap();
        assert_eq!((rec.credits, rec.total_spent, rec.total_calls), (12, 3, 0));
        assert!(rec.tags.is_empty() && rec.allowed_tools.is_empty() && rec.ip_allowlist.is_empty());
        assert_eq!(rec.quota.map(|q| q.daily_call_limit), Some(2));
        assert_ne!(rec.key_masked, KEY);
    }

    #[test]
    fn amounts_out_of_range_are_refused_by_name() {
        for (credits, shown) in [
            (serde_json::json!(-0.5), "credits"),
            (serde_json::json!(1e300), "credits"),
            (serde_json::json!("10"), "shape"),
        ] {
            let why = record_of(KEY, serde_json::json!({"credits": credits}), 0).unwrap_err();
            assert!(why.contains(shown), "{credits}: {why}");
        }
    }
}
