//! Key management endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::{
    bad_request, error, json_reply, not_found, AdminRequest, AdminState, ApiError, Handled,
};
use crate::config::whole;
use crate::deny::DenyReason;
use crate::key::{mask_key, parse_ip_entry, KeyDigest, KeyRecord, KeyRef, MAX_NAME_LEN};
use crate::quota::Quota;
use crate::store::{KeyStore, KeyUpdate};

/// Longest expiry accepted: ten years.
const MAX_EXPIRES_IN_SECS: u64 = 10 * 366 * 86_400;
/// Largest page of `GET /keys`.
const MAX_PAGE: usize = 1_000;
/// Page size of `GET /keys?limit=` (a limit asked for without a number).
const DEFAULT_PAGE: usize = 100;

/// A key as listings show it: masked, never the key itself. It carries paygate-mcp 1.8's
/// listing fields too (`keyPrefix`, `expired` and the flat quota counters).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyView<'a> {
    key: &'a str,
    key_id: String,
    /// 1.8 shows the key's first characters; only the masked form's head is kept here.
    key_prefix: String,
    expired: bool,
    name: &'a str,
    credits: u64,
    total_spent: u64,
    total_calls: u64,
    active: bool,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    spending_limit: u64,
    allowed_tools: &'a [String],
    denied_tools: &'a [String],
    tags: &'a BTreeMap<String, String>,
    ip_allowlist: Vec<String>,
    quota: Option<Quota>,
    quota_daily_calls: u64,
    quota_monthly_calls: u64,
    quota_daily_credits: u64,
    quota_monthly_credits: u64,
    quota_last_reset_day: String,
    quota_last_reset_month: String,
}

impl<'a> KeyView<'a> {
    /// The view of `r` at `now_ms` (whether it has expired, its quota counters rolled).
    pub(crate) fn at(r: &'a KeyRecord, now_ms: i64) -> Self {
        let usage = r.quota_usage.rolled(now_ms);
        let head = r.key_masked.split("...").next().unwrap_or_default();
        Self {
            key: &r.key_masked,
            key_id: r.id().to_string(),
            key_prefix: format!("{head}..."),
            expired: r.is_expired_at(now_ms),
            name: &r.name,
            credits: r.credits,
            total_spent: r.total_spent,
            total_calls: r.total_calls,
            active: r.active,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            spending_limit: r.spending_limit,
            allowed_tools: &r.allowed_tools,
            denied_tools: &r.denied_tools,
            tags: &r.tags,
            ip_allowlist: ip_texts(&r.ip_allowlist),
            quota: r.quota,
            quota_daily_calls: usage.daily_calls,
            quota_monthly_calls: usage.monthly_calls,
            quota_daily_credits: usage.daily_credits,
            quota_monthly_credits: usage.monthly_credits,
            quota_last_reset_day: usage.day_label(),
            quota_last_reset_month: usage.month_label(),
        }
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A key view with the `message` paygate-mcp 1.8 answered on every change.
#[derive(Serialize)]
struct Changed<'a> {
    #[serde(flatten)]
    view: KeyView<'a>,
    message: &'a str,
}

/// Names the key an admin call acts on: `key` (the API key) or `keyId` (its account id), so
/// an operator can manage a key without holding its secret.
/// Both are read as any JSON and checked here, so a wrong type is refused naming its field
/// (a merged struct's own errors do not know the field's name).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Target {
    key: Option<serde_json::Value>,
    key_id: Option<serde_json::Value>,
}

impl Target {
    fn key_ref(&self) -> Result<KeyRef<'_>, ApiError> {
        let text = |field: &str, v: &'_ serde_json::Value| -> Result<(), ApiError> {
            match v {
                serde_json::Value::String(_) => Ok(()),
                _ => Err(bad_request(format!("'{field}' must be a string"))),
            }
        };
        let key = self.key.as_ref().filter(|v| !v.is_null());
        let key_id = self.key_id.as_ref().filter(|v| !v.is_null());
        match (key, key_id) {
            (Some(key), None) => {
                text("key", key)?;
                Ok(KeyRef::Key(key.as_str().unwrap_or_default()))
            }
            (None, Some(id)) => {
                text("keyId", id)?;
                id.as_str()
                    .unwrap_or_default()
                    .parse()
                    .map(KeyRef::Id)
                    .map_err(|e| bad_request(format!("'keyId': {e}")))
            }
            (Some(_), Some(_)) => Err(bad_request("send 'key' or 'keyId', not both")),
            (None, None) => Err(bad_request(
                "send 'key' (the API key) or 'keyId' (the key's id, kid_...)",
            )),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct KeyOnly {
    #[serde(flatten)]
    target: Target,
}

/// Parses the expiry fields shared by create and `/keys/expiry`.
fn parse_expiry(
    now_ms: i64,
    expires_in: Option<u64>,
    expires_at: Option<Option<String>>,
) -> Result<Option<Option<DateTime<Utc>>>, ApiError> {
    if let Some(secs) = expires_in {
        if secs == 0 || secs > MAX_EXPIRES_IN_SECS {
            return Err(bad_request(format!(
                "'expiresIn' must be 1 to {MAX_EXPIRES_IN_SECS} seconds"
            )));
        }
        let at =
            crate::clock::ms_to_datetime(now_ms.saturating_add((secs as i64).saturating_mul(1000)));
        return Ok(Some(Some(at)));
    }
    match expires_at {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(text)) => match DateTime::parse_from_rfc3339(&text) {
            Ok(t) if t.timestamp_millis() <= now_ms => {
                Err(bad_request("'expiresAt' is in the past"))
            }
            Ok(t) => Ok(Some(Some(t.with_timezone(&Utc)))),
            Err(_) => Err(bad_request(
                "'expiresAt' must be an RFC 3339 time, e.g. 2026-12-31T23:59:59Z",
            )),
        },
    }
}

/// An allowlist as it was written: a single address as itself (`10.0.0.1`, as 1.8 shows it),
/// a network in CIDR form.
fn ip_texts(nets: &[ipnet::IpNet]) -> Vec<String> {
    nets.iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect()
}

fn ip_list(entries: &[String]) -> Result<Vec<ipnet::IpNet>, ApiError> {
    entries
        .iter()
        .map(|e| parse_ip_entry(e).map_err(|msg| bad_request(format!("'ipAllowlist': {msg}"))))
        .collect()
}

/// What a key operation returned, or 404 when there was no such key.
fn found<T>(result: Option<T>) -> Result<T, ApiError> {
    result.ok_or_else(not_found)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateKey {
    name: Option<String>,
    #[serde(default, deserialize_with = "whole::de_opt")]
    credits: Option<u64>,
    allowed_tools: Option<Vec<String>>,
    denied_tools: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole::de_opt")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    quota: Option<Quota>,
    tags: Option<BTreeMap<String, String>>,
    ip_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole::de_opt")]
    spending_limit: Option<u64>,
}

pub(crate) async fn create<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: CreateKey = req.json()?;
    let now_ms = state.gate.clock().now_ms();
    let name = body.name.unwrap_or_else(|| "unnamed".to_string());
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(bad_request(format!(
            "'name' must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    let expires_at = parse_expiry(now_ms, body.expires_in, body.expires_at)?.flatten();
    let ips = ip_list(body.ip_allowlist.as_deref().unwrap_or_default())?;
    let tags = body
        .tags
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, Some(v)));
    let setup = [
        KeyUpdate::SetExpiry(expires_at),
        KeyUpdate::SetQuota(body.quota),
        KeyUpdate::SetAcl {
            allowed_tools: body.allowed_tools.unwrap_or_default(),
            denied_tools: body.denied_tools.unwrap_or_default(),
        },
        KeyUpdate::MergeTags(tags.collect()),
        KeyUpdate::SetIpAllowlist(ips),
        KeyUpdate::SetSpendingLimit(body.spending_limit.unwrap_or(0)),
    ];
    let credits = body.credits.unwrap_or(100);
    let issued = state.gate.create_key_with(&name, credits, &setup).await?;
    let (key, rec) = (issued.key, issued.record);
    state.gate.emit(
        "key.created",
        json!({"actor": "admin", "keyMasked": rec.key_masked, "keyId": rec.id(), "name": rec.name, "credits": rec.credits}),
    );
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({
            "key": key,
            "keyId": rec.id(),
            "name": rec.name,
            "credits": rec.credits,
            "allowedTools": rec.allowed_tools,
            "deniedTools": rec.denied_tools,
            "expiresAt": rec.expires_at,
            "tags": rec.tags,
            "ipAllowlist": ip_texts(&rec.ip_allowlist),
            "spendingLimit": rec.spending_limit,
            "quota": rec.quota,
            "message": "Save this key now: it is shown only once.",
        }),
    ))
}

/// `GET /keys`: a JSON array of key views, as paygate-mcp 1.8 answers, paged through the
/// `Link` header (RFC 8288, `rel="next"`) with the number of keys in `X-Total-Count`.
/// Without `limit` a page holds up to 1,000 keys (so a 1.8 script that reads one answer sees
/// every key of a small deployment); `limit=` alone means 100.
pub(crate) async fn list<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let limit = match req.query.get("limit").map(String::as_str) {
        None => MAX_PAGE,
        Some("") => DEFAULT_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(bad_request(format!("'limit' must be 1 to {MAX_PAGE}"))),
        },
    };
    let after = match req.query.get("cursor") {
        None => None,
        Some(c) => Some(
            KeyDigest::from_hex(c)
                .ok_or_else(|| bad_request("'cursor' is not a cursor this API returned"))?,
        ),
    };
    let page = state.gate.list_keys(after, limit).await?;
    let now_ms = state.gate.clock().now_ms();
    let keys: Vec<KeyView<'_>> = page.keys.iter().map(|r| KeyView::at(r, now_ms)).collect();
    let mut resp = json_reply(StatusCode::OK, &keys);
    let headers = resp.headers_mut();
    headers.insert("x-total-count", HeaderValue::from(page.total));
    if let Some(next) = page.next_cursor {
        let limit_param = match req.query.get("limit") {
            Some(_) => format!("limit={limit}&"),
            None => String::new(),
        };
        let link = format!(
            "<{}?{limit_param}cursor={}>; rel=\"next\"",
            req.path,
            next.to_hex()
        );
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(http::header::LINK, value);
        }
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub(crate) struct TopUp {
    #[serde(flatten)]
    target: Target,
    #[serde(deserialize_with = "whole::de")]
    credits: u64,
}

pub(crate) async fn topup<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: TopUp = req.json()?;
    let rec = found(
        state
            .gate
            .top_up(body.target.key_ref()?, body.credits)
            .await?,
    )?;
    state.gate.emit(
        "key.topup",
        json!({"actor": "admin", "keyMasked": rec.key_masked, "keyId": rec.id(), "creditsAdded": body.credits, "newBalance": rec.credits}),
    );
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "credits": rec.credits,
            "added": body.credits,
            "key": rec.key_masked,
            "keyId": rec.id(),
            "name": rec.name,
            "message": format!("Added {} credits", body.credits),
        }),
    ))
}

pub(crate) async fn revoke<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: KeyOnly = req.json()?;
    let rec = found(state.gate.revoke(body.target.key_ref()?).await?)?;
    state.gate.emit(
        "key.revoked",
        json!({"actor": "admin", "keyMasked": rec.key_masked, "keyId": rec.id()}),
    );
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "revoked": true,
            "key": rec.key_masked,
            "keyId": rec.id(),
            "name": rec.name,
            "message": "Key revoked",
        }),
    ))
}

pub(crate) async fn rotate<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: KeyOnly = req.json()?;
    let target = body.target.key_ref()?;
    let old_masked = match target {
        KeyRef::Key(key) => mask_key(key),
        // Named by id: the masked form on record is the old key's, read before it changes.
        KeyRef::Id(_) => found(state.gate.get_key(target).await?)?.key_masked,
    };
    let rotated = found(state.gate.rotate(target).await?)?;
    let (new_key, rec) = (rotated.key, rotated.record);
    state.gate.emit(
        "key.rotated",
        json!({"actor": "admin", "oldKeyMasked": old_masked, "newKeyMasked": rec.key_masked, "keyId": rec.id()}),
    );
    let now_ms = state.gate.clock().now_ms();
    let mut view = serde_json::to_value(KeyView::at(&rec, now_ms)).unwrap_or_default();
    if let Some(obj) = view.as_object_mut() {
        obj.remove("key");
        obj.insert("newKey".into(), json!(new_key));
        obj.insert("oldKeyMasked".into(), json!(old_masked));
        obj.insert(
            "message".into(),
            json!("The old key stopped working. Save the new key now: it is shown only once."),
        );
    }
    Ok(json_reply(StatusCode::OK, &view))
}

/// Applies `change` (one atomic update) to the key `target` names and answers with its view
/// and `message`.
async fn update_and_reply<St: KeyStore>(
    state: &AdminState<St>,
    target: &Target,
    change: KeyUpdate,
    event: &str,
    message: &str,
) -> Handled {
    let rec = found(state.gate.update_key(target.key_ref()?, change).await?)?;
    state.gate.emit(
        event,
        json!({"actor": "admin", "keyMasked": rec.key_masked, "keyId": rec.id()}),
    );
    let now_ms = state.gate.clock().now_ms();
    let view = KeyView::at(&rec, now_ms);
    Ok(json_reply(StatusCode::OK, &Changed { view, message }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Acl {
    #[serde(flatten)]
    target: Target,
    allowed_tools: Option<Vec<String>>,
    denied_tools: Option<Vec<String>>,
}

pub(crate) async fn acl<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Acl = req.json()?;
    if body.allowed_tools.is_none() && body.denied_tools.is_none() {
        return Err(bad_request("send 'allowedTools' and/or 'deniedTools'"));
    }
    // Both lists in one update: a refused list leaves the other unchanged too.
    let change = KeyUpdate::UpdateAcl {
        allowed_tools: body.allowed_tools,
        denied_tools: body.denied_tools,
    };
    update_and_reply(
        state,
        &body.target,
        change,
        "key.acl_updated",
        "Tool access updated",
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Expiry {
    #[serde(flatten)]
    target: Target,
    #[serde(default, deserialize_with = "whole::de_opt")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
}

pub(crate) async fn expiry<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Expiry = req.json()?;
    let at = parse_expiry(
        state.gate.clock().now_ms(),
        body.expires_in,
        body.expires_at,
    )?
    .ok_or_else(|| {
        bad_request("send 'expiresIn' (seconds) or 'expiresAt' (RFC 3339, or null to remove)")
    })?;
    update_and_reply(
        state,
        &body.target,
        KeyUpdate::SetExpiry(at),
        "key.expiry_updated",
        "Expiry updated",
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuotaBody {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    remove: bool,
    #[serde(default, deserialize_with = "whole::de")]
    daily_call_limit: u64,
    #[serde(default, deserialize_with = "whole::de")]
    monthly_call_limit: u64,
    #[serde(default, deserialize_with = "whole::de")]
    daily_credit_limit: u64,
    #[serde(default, deserialize_with = "whole::de")]
    monthly_credit_limit: u64,
}

pub(crate) async fn quota<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: QuotaBody = req.json()?;
    let message = if body.remove {
        "Quota removed: the global quota applies"
    } else {
        "Quota updated"
    };
    let q = (!body.remove).then_some(Quota {
        daily_call_limit: body.daily_call_limit,
        monthly_call_limit: body.monthly_call_limit,
        daily_credit_limit: body.daily_credit_limit,
        monthly_credit_limit: body.monthly_credit_limit,
    });
    update_and_reply(
        state,
        &body.target,
        KeyUpdate::SetQuota(q),
        "key.quota_updated",
        message,
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct Tags {
    #[serde(flatten)]
    target: Target,
    tags: BTreeMap<String, Option<String>>,
}

pub(crate) async fn tags<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Tags = req.json()?;
    update_and_reply(
        state,
        &body.target,
        KeyUpdate::MergeTags(body.tags),
        "key.tags_updated",
        "Tags updated",
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Ip {
    #[serde(flatten)]
    target: Target,
    /// `ips` is the name paygate-mcp 1.8 sends.
    #[serde(alias = "ips")]
    ip_allowlist: Vec<String>,
}

pub(crate) async fn ip<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Ip = req.json()?;
    let nets = ip_list(&body.ip_allowlist)?;
    update_and_reply(
        state,
        &body.target,
        KeyUpdate::SetIpAllowlist(nets),
        "key.ip_updated",
        "IP allowlist updated",
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Limits {
    #[serde(flatten)]
    target: Target,
    #[serde(deserialize_with = "whole::de")]
    spending_limit: u64,
}

pub(crate) async fn limits<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Limits = req.json()?;
    let change = KeyUpdate::SetSpendingLimit(body.spending_limit);
    update_and_reply(
        state,
        &body.target,
        change,
        "key.limit_updated",
        "Spending limit updated",
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct Search {
    tags: BTreeMap<String, String>,
}

pub(crate) async fn search<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let body: Search = req.json()?;
    if body.tags.is_empty() || body.tags.len() > crate::key::MAX_TAGS {
        return Err(bad_request("'tags' must hold 1 to 50 tags to match"));
    }
    // One more than a page is asked for, so a cut list says so instead of passing as whole.
    let mut matches = state.gate.search_keys(&body.tags, MAX_PAGE + 1).await?;
    let truncated = matches.len() > MAX_PAGE;
    matches.truncate(MAX_PAGE);
    let now_ms = state.gate.clock().now_ms();
    let keys: Vec<KeyView<'_>> = matches.iter().map(|r| KeyView::at(r, now_ms)).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"keys": keys, "count": keys.len(), "truncated": truncated}),
    ))
}

/// A `/balance` refusal: its status, message and the gate's machine reason.
fn refused(status: StatusCode, message: &str, reason: DenyReason) -> ApiError {
    error(status, message).with_reason(reason.as_str())
}

/// `GET /balance`: a key holder's own view, authenticated by `X-API-Key` and held to the
/// same rules as a call: a revoked or expired key, or a client outside the key's IP
/// allowlist, is refused with the gate's reason.
pub(crate) async fn balance<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
    client_ip: Option<IpAddr>,
) -> Handled {
    let key = req
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let bearer = crate::edge::bearer_token(&req.headers);
    let rec = match (key, &state.oauth, bearer) {
        (Some(key), _, _) => state.gate.get_key(key).await?.ok_or_else(|| {
            refused(
                StatusCode::NOT_FOUND,
                "key not found",
                DenyReason::InvalidApiKey,
            )
        })?,
        // A client signed in with OAuth reads the balance of the account its token acts for.
        (None, Some(oauth), Some(token)) => {
            let invalid = || {
                refused(
                    StatusCode::UNAUTHORIZED,
                    "invalid or expired access token",
                    DenyReason::InvalidApiKey,
                )
            };
            let grant = oauth.authenticate(token).await.map_err(|_| invalid())?;
            state
                .gate
                .get_key(grant.key_id)
                .await?
                .ok_or_else(invalid)?
        }
        _ => {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "send your API key in X-API-Key",
                DenyReason::MissingApiKey,
            ))
        }
    };
    if !rec.active {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "invalid API key",
            DenyReason::InvalidApiKey,
        ));
    }
    if rec.is_expired_at(state.gate.clock().now_ms()) {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "API key expired",
            DenyReason::ApiKeyExpired,
        ));
    }
    if !rec.permits_ip(client_ip) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "this key may not be used from your IP address",
            DenyReason::IpNotAllowed,
        ));
    }
    let usage = rec.quota_usage.rolled(state.gate.clock().now_ms());
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "key": rec.key_masked,
            "keyId": rec.id(),
            "name": rec.name,
            "credits": rec.credits,
            "totalSpent": rec.total_spent,
            "totalCalls": rec.total_calls,
            "spendingLimit": rec.spending_limit,
            "remainingBudget": rec.remaining_budget(),
            "lastUsedAt": rec.last_used_at,
            "allowedTools": rec.allowed_tools,
            "deniedTools": rec.denied_tools,
            "expiresAt": rec.expires_at,
            "tags": rec.tags,
            "ipAllowlist": ip_texts(&rec.ip_allowlist),
            "quota": rec.quota.or(state.gate.config().global_quota),
            "quotaUsage": {
                "dailyCalls": usage.daily_calls,
                "dailyCredits": usage.daily_credits,
                "monthlyCalls": usage.monthly_calls,
                "monthlyCredits": usage.monthly_credits,
            },
        }),
    ))
}
