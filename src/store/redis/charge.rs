//! The one round trip of a gated call: the charge script's arguments and its reply.

use redis::Value;

use crate::deny::DenyReason;
use crate::key::KeyId;
use crate::quota::{Quota, QuotaUsage};
use crate::ratelimit::RateState;
use crate::store::{ChargeOutcome, ChargeReceipt, ChargeRequest, KeySnapshot, StoreError};

use super::codec::{ip_hex, reason_of, Reply};
use super::{corrupt, unavailable, RedisKeyStore, RedisTime};

impl RedisKeyStore {
    pub(super) async fn charge_inner(
        &self,
        req: &ChargeRequest<'_>,
    ) -> Result<ChargeOutcome, StoreError> {
        // Fail closed rather than charge what could not be undone.
        if self.owed.lock().is_full() {
            return Err(StoreError::Unavailable(
                "too many charges still owed back after an outage; refusing new charges".into(),
            ));
        }
        let rec = self.rec_key(&req.key);
        let nonce = crate::key::generate_key()
            .map(|k| k[3..19].to_string())
            .map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
        let q = req.global_quota.unwrap_or_default();
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.charge.prepare_invoke();
        inv.key(&rec)
            .key(format!("{rec}:w"))
            .key(format!("{rec}:w:{}", req.tool))
            .key(format!("{rec}:c"))
            .key(self.stats_key())
            .key(format!("{rec}:wt"))
            .key(format!("{rec}:cd"))
            .arg(req.price)
            .arg(req.tool)
            .arg(req.client_ip.map(ip_hex).unwrap_or_default())
            .arg(req.global_rate_limit)
            .arg(req.tool_rate_limit)
            .arg(q.daily_call_limit)
            .arg(q.monthly_call_limit)
            .arg(q.daily_credit_limit)
            .arg(q.monthly_credit_limit)
            .arg(if req.global_quota.is_some() { "1" } else { "0" })
            .arg(if req.shadow { "1" } else { "0" })
            .arg(match self.time {
                RedisTime::Server => String::new(),
                RedisTime::Request => req.now_ms.to_string(),
            })
            .arg(&nonce)
            .arg(req.checks.letters());
        let reply = match inv.invoke_async::<Vec<Value>>(&mut conn).await {
            Ok(v) => {
                self.note_answered();
                Reply(v)
            }
            Err(e) => {
                self.note_outage(&e);
                // The script may have run with its reply lost: settle it once Redis answers.
                if !req.shadow && !e.is_connection_refusal() {
                    self.owe(&req.key, &nonce, req.now_ms, None);
                }
                return Err(unavailable(e));
            }
        };
        outcome(req, reply, nonce)
    }
}

/// What the charge script's reply says: the denial, the key's state, the rate window and,
/// when the call was charged, its receipt.
fn outcome(
    req: &ChargeRequest<'_>,
    reply: Reply,
    nonce: String,
) -> Result<ChargeOutcome, StoreError> {
    let code = reply.int(0)?;
    if code == 2 {
        return Ok(ChargeOutcome {
            denial: Some(DenyReason::InvalidApiKey),
            retry_after_secs: None,
            snapshot: None,
            rate: None,
            receipt: None,
            newly_expired: false,
        });
    }
    let denial = match code {
        0 => None,
        _ => Some(reason_of(&reply.text(1)?).ok_or_else(|| corrupt("reason"))?),
    };
    let retry = reply.uint(2)?;
    let quota_text = reply.text(10)?;
    let quota = match quota_text.as_str() {
        "" => req.global_quota,
        t => Some(serde_json::from_str::<Quota>(t).map_err(|_| corrupt("quota"))?),
    };
    let exp = reply.text(7)?;
    let usage = QuotaUsage {
        day: reply.int(11)?,
        daily_calls: reply.uint(12)?,
        daily_credits: reply.uint(13)?,
        month: reply.int(14)?,
        monthly_calls: reply.uint(15)?,
        monthly_credits: reply.uint(16)?,
    };
    let key_id = match reply.text(23)?.as_str() {
        "" => KeyId::derived(&req.key),
        t => t.parse().map_err(|_| corrupt("kid"))?,
    };
    let snapshot = KeySnapshot {
        key: req.key,
        key_id,
        name: reply.text(8)?,
        key_masked: reply.text(9)?,
        credits: reply.uint(3)?,
        total_spent: reply.uint(4)?,
        total_calls: reply.uint(5)?,
        spending_limit: reply.uint(6)?,
        expires_at_ms: if exp.is_empty() {
            None
        } else {
            Some(exp.parse().map_err(|_| corrupt("exp"))?)
        },
        quota,
        quota_usage: usage,
    };
    let rate_limit = reply.int(17)?;
    let rate = (rate_limit >= 0).then(|| RateState {
        limit: u64::try_from(rate_limit).unwrap_or(0),
        remaining: reply.uint(18).unwrap_or(0),
        reset_secs: reply.uint(19).unwrap_or(0),
    });
    let receipt = (reply.int(21)? == 1).then_some(ChargeReceipt {
        key: req.key,
        credits: req.checks.price(req.price),
        day: usage.day,
        month: usage.month,
        billed: req.checks.credits,
        counted: req.checks.quotas,
        nonce: Some(nonce),
        charged_at_ms: req.now_ms,
    });
    Ok(ChargeOutcome {
        denial,
        retry_after_secs: (retry > 0).then_some(retry),
        snapshot: Some(snapshot),
        rate,
        receipt,
        newly_expired: reply.int(20)? == 1,
    })
}
