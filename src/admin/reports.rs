//! Reporting and discovery endpoints: health, status, usage, analytics, alerts, metrics,
//! pricing and the payment discovery document.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::json;

use super::keys::KeyView;
use super::{
    bad_request, error, json_reply, text_reply, AdminRequest, AdminState, ApiError, Handled,
};
use crate::alerts::{AlertRule, AlertType};
use crate::analytics::{Granularity, ReportQuery};
use crate::audit::{neutralize_formula, AuditLog, AuditQuery};
use crate::store::KeyStore;

/// Most alert rules accepted at once.
const MAX_RULES: usize = 100;

fn uptime_secs<St: KeyStore>(state: &AdminState<St>) -> i64 {
    (state.gate.clock().now_ms() - state.started_ms).max(0) / 1000
}

pub(crate) fn health<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .upstreams
        .iter()
        .map(|(name, up)| (name.clone(), json!(up())))
        .collect();
    // The gateway still answers (and refunds) while an upstream is down: degraded, not down.
    let status = if upstreams.values().all(|up| up == true) {
        "ok"
    } else {
        "degraded"
    };
    let mut body = json!({
        "status": status,
        "name": state.gate.config().name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": uptime_secs(state),
    });
    if !upstreams.is_empty() {
        body["upstreams"] = upstreams.into();
    }
    Ok(json_reply(StatusCode::OK, &body))
}

/// `paygate_upstream_up` lines for the upstreams with a health check, in the exposition's
/// text format, to go before its `# EOF`.
fn upstream_gauges<St>(state: &AdminState<St>) -> String {
    if state.upstreams.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# HELP paygate_upstream_up Whether the upstream can take calls (1) or not (0).\n\
         # TYPE paygate_upstream_up gauge\n",
    );
    for (name, up) in &state.upstreams {
        let name = name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        out.push_str(&format!(
            "paygate_upstream_up{{upstream=\"{name}\"}} {}\n",
            u8::from(up())
        ));
    }
    out
}

pub(crate) async fn metrics<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let m = state
        .metrics
        .as_ref()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "metrics are not enabled"))?;
    let stats = state.gate.key_stats().await?;
    let mut text = m.render(stats, state.gate.alerts().pending_count());
    let gauges = upstream_gauges(state);
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &gauges),
        None => text.push_str(&gauges),
    }
    Ok(text_reply("text/plain; version=0.0.4; charset=utf-8", text))
}

fn tool_prices<St: KeyStore>(state: &AdminState<St>) -> serde_json::Map<String, serde_json::Value> {
    let pricing = state.gate.pricing();
    pricing
        .tools()
        .keys()
        .map(|tool| (tool.clone(), json!(pricing.tag(tool))))
        .collect()
}

/// The server's payment metadata, with paygate-mcp 1.8's fields (SEP-2007) first.
fn payment_metadata<St: KeyStore>(state: &AdminState<St>) -> serde_json::Value {
    let cfg = state.gate.config();
    json!({
        "specVersion": "2007-draft",
        "serverName": cfg.name,
        "billingModel": "credits",
        "defaultCreditsPerCall": cfg.default_credits_per_call,
        "globalRateLimitPerMin": cfg.global_rate_limit_per_min,
        "shadowMode": cfg.shadow_mode,
        "authMethods": ["X-API-Key", "Authorization: Bearer"],
        "oauthSupported": state.oauth.is_some(),
        "paymentErrorCode": -32402,
        "pricingEndpoint": "/pricing",
        "globalQuota": cfg.global_quota,
        "toolCount": state.gate.pricing().tools().len(),
    })
}

/// `GET /pricing`: 1.8's `{server, tools: [{name, creditsPerCall, ...}]}`, plus this crate's
/// own top-level fields.
pub(crate) fn pricing<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let cfg = state.gate.config();
    let tools: Vec<serde_json::Value> = tool_prices(state)
        .into_iter()
        .map(|(name, mut tag)| {
            if let Some(map) = tag.as_object_mut() {
                map.insert("name".into(), json!(name));
            }
            tag
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "server": payment_metadata(state),
            "tools": tools,
            "name": cfg.name,
            "billingModel": "credits",
            "defaultCreditsPerCall": cfg.default_credits_per_call,
            "globalRateLimitPerMin": cfg.global_rate_limit_per_min,
            "globalQuota": cfg.global_quota,
            "freeMethods": cfg.free_methods,
            "refundOnFailure": cfg.refund_on_failure,
            "packages": packages(state),
        }),
    ))
}

/// The endpoints a client uses: `/checkout` only where credits are on sale.
fn endpoints<St>(state: &AdminState<St>) -> serde_json::Value {
    let mut endpoints = json!({"mcp": "/mcp", "balance": "/balance", "pricing": "/pricing"});
    if state.payments.as_ref().is_some_and(|p| p.sells()) {
        endpoints["checkout"] = json!("/checkout");
    }
    endpoints
}

/// The credit packages on sale through Stripe (empty without a `stripe` section).
fn packages<St>(state: &AdminState<St>) -> serde_json::Value {
    state
        .payments
        .as_ref()
        .map_or_else(|| json!([]), |p| p.packages())
}

/// `GET /.well-known/mcp-payment`: 1.8's metadata fields and this crate's.
pub(crate) fn discovery<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let cfg = state.gate.config();
    let mut doc = payment_metadata(state);
    let ours = json!({
        "version": "1.0",
        "name": cfg.name,
        "currency": "credits",
        "defaultPrice": cfg.default_credits_per_call,
        "toolPricing": tool_prices(state),
        "endpoints": endpoints(state),
        "packages": packages(state),
        "errorCodes": {
            "-32402": "Payment required: insufficient credits, spending limit or quota",
            "-32001": "Rate limited: retry after retryAfterSeconds",
            "-32002": "Unauthorized: missing, invalid or expired key, or IP not allowed",
            "-32003": "Forbidden: tool not allowed for this key",
        },
    });
    if let (Some(doc), serde_json::Value::Object(ours)) = (doc.as_object_mut(), ours) {
        doc.extend(ours);
    }
    Ok(json_reply(StatusCode::OK, &doc))
}

/// Keys, tools and key names `GET /status` shows at most.
const STATUS_TOP: usize = 100;

/// `GET /status`: paygate-mcp 1.8's fields (`name`, `shadowMode`, `activeKeys`, `usage`,
/// `eventCount`, `config` with secrets masked, the first keys under `keys`) next to this
/// crate's own. Every figure is kept up to date as it changes, so the answer costs the same
/// with ten keys or a million.
pub(crate) async fn status<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let stats = state.gate.key_stats().await?;
    let first = state.gate.list_keys(None, STATUS_TOP).await?;
    let now_ms = state.gate.clock().now_ms();
    let keys: Vec<KeyView<'_>> = first.keys.iter().map(|r| KeyView::at(r, now_ms)).collect();
    let cfg = state.gate.config();
    let events = state.gate.meter().len();
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "name": cfg.name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": uptime_secs(state),
            "shadowMode": cfg.shadow_mode,
            "totalKeys": stats.total_keys,
            "activeKeys": stats.active_keys,
            "totalCreditsAvailable": stats.total_credits,
            "usage": state.gate.analytics().totals(STATUS_TOP),
            "eventCount": events,
            "recentUsageEvents": events,
            "pendingAlerts": state.gate.alerts().pending_count(),
            "alertRules": state.gate.alerts().rules().len(),
            "config": cfg.redacted(),
            "keys": keys,
        }),
    ))
}

/// An optional RFC 3339 query parameter.
pub(crate) fn query_time(
    req: &AdminRequest,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    req.query
        .get(name)
        .map(|text| {
            // A date alone (as paygate-mcp 1.8 takes it) means its start, UTC.
            let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc());
            date.map(Ok).unwrap_or_else(|| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        bad_request(format!(
                            "'{name}' must be a date or an RFC 3339 time, e.g. 2026-02-25 or 2026-02-25T00:00:00Z"
                        ))
                    })
            })
        })
        .transpose()
}

/// Writes rows as CSV, neutralizing cells a spreadsheet would run as formulas.
pub(crate) fn csv_reply(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Handled {
    let mut w = csv::Writer::from_writer(Vec::new());
    let failed = || error(StatusCode::INTERNAL_SERVER_ERROR, "cannot write CSV");
    w.write_record(header).map_err(|_| failed())?;
    for row in rows {
        w.write_record(row.iter().map(|c| neutralize_formula(c).into_owned()))
            .map_err(|_| failed())?;
    }
    let bytes = w.into_inner().map_err(|_| failed())?;
    Ok(text_reply(
        "text/csv; charset=utf-8",
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

pub(crate) fn usage<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let since = query_time(req, "since")?;
    let events = state.gate.meter().since(since);
    // Any format but CSV is JSON, as in paygate-mcp 1.8.
    let csv = req.query.get("format").is_some_and(|f| f == "csv");
    match csv.then_some(()) {
        None => Ok(json_reply(
            StatusCode::OK,
            &json!({
                "events": events,
                "count": events.len(),
                // As 1.8 answers: the bound asked for, or "all".
                "since": since.map_or_else(|| json!("all"), |t| json!(t)),
            }),
        )),
        Some(()) => csv_reply(
            &[
                "timestamp",
                "apiKey",
                "keyName",
                "tool",
                "creditsCharged",
                "allowed",
                "denyReason",
                "durationMs",
                "keyId",
            ],
            events.iter().map(|e| {
                vec![
                    e.timestamp.to_rfc3339(),
                    e.api_key.clone(),
                    e.key_name.clone(),
                    e.tool.clone(),
                    e.credits_charged.to_string(),
                    e.allowed.to_string(),
                    e.deny_reason.clone().unwrap_or_default(),
                    e.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
                    e.key_id.map(|id| id.to_string()).unwrap_or_default(),
                ]
            }),
        ),
    }
}

pub(crate) fn analytics<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let granularity = match req.query.get("granularity") {
        None => Granularity::default(),
        Some(g) => g
            .parse::<Granularity>()
            .map_err(|e| bad_request(e.to_string()))?,
    };
    // `top` is the name paygate-mcp 1.8's handler read (its README said `topN`).
    let top_n = match req.query.get("topN").or_else(|| req.query.get("top")) {
        None => 10,
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| bad_request("'topN' must be a whole number"))?,
    };
    let query = ReportQuery {
        from: query_time(req, "from")?,
        to: query_time(req, "to")?,
        granularity,
        top_n,
    };
    let report = state
        .gate
        .analytics()
        .report(&query)
        .map_err(|e| bad_request(e.to_string()))?;
    Ok(json_reply(StatusCode::OK, &report))
}

/// `GET /alerts`: takes the pending alerts, as 1.8 did; with `peek=true` (the dashboard) it
/// reads them and leaves them for the reader that takes them.
pub(crate) fn alerts<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let alerts = match req.query.get("peek").map(String::as_str) {
        None | Some("false") => state.gate.alerts().consume(),
        Some("true") => state.gate.alerts().pending(),
        Some(_) => return Err(bad_request("'peek' must be true or false")),
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({"alerts": alerts, "count": alerts.len(), "rules": state.gate.alerts().rules()}),
    ))
}

#[derive(serde::Deserialize)]
pub(crate) struct Rules {
    rules: Vec<AlertRule>,
}

pub(crate) fn configure_alerts<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Handled {
    let body: Rules = req.json()?;
    if body.rules.len() > MAX_RULES {
        return Err(bad_request(format!("at most {MAX_RULES} rules")));
    }
    for (i, rule) in body.rules.iter().enumerate() {
        let percent = matches!(
            rule.rule_type,
            AlertType::SpendingThreshold | AlertType::QuotaWarning
        );
        if percent && rule.threshold > 100 {
            return Err(bad_request(format!(
                "'rules[{i}].threshold' is a percentage: 0 to 100"
            )));
        }
    }
    state.gate.alerts().set_rules(body.rules.clone());
    state.gate.emit(
        "admin.alerts_configured",
        json!({"actor": "admin", "rules": body.rules.len()}),
    );
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "rules": body.rules,
            "count": body.rules.len(),
            "message": format!("{} alert rules configured", body.rules.len()),
        }),
    ))
}

fn audit_log<St: KeyStore>(state: &AdminState<St>) -> Result<&AuditLog, ApiError> {
    state
        .audit
        .as_deref()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "the audit log is not enabled"))
}

/// `GET /audit?types=a,b&actor=...&since=...&until=...&limit=...`
pub(crate) fn audit<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let log = audit_log(state)?;
    let limit = match req.query.get("limit") {
        None => crate::audit::DEFAULT_AUDIT_QUERY_LIMIT,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= crate::audit::MAX_AUDIT_QUERY_LIMIT)
            .ok_or_else(|| {
                bad_request(format!(
                    "'limit' must be 0 to {}",
                    crate::audit::MAX_AUDIT_QUERY_LIMIT
                ))
            })?,
    };
    let query = AuditQuery {
        types: req
            .query
            .get("types")
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        actor: req.query.get("actor").cloned(),
        since: query_time(req, "since")?,
        until: query_time(req, "until")?,
        limit,
        offset: match req.query.get("offset") {
            None => 0,
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| bad_request("'offset' must be a whole number"))?,
        },
    };
    let page = log.query(&query);
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "events": page.events,
            "count": page.events.len(),
            "total": page.total,
            "offset": query.offset,
            "limit": query.limit,
        }),
    ))
}

/// `GET /audit/export?format=json|csv` (any other format answers JSON, as in 1.8).
pub(crate) fn audit_export<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let log = audit_log(state)?;
    if req.query.get("format").is_some_and(|f| f == "csv") {
        return Ok(text_reply("text/csv; charset=utf-8", log.export_csv()));
    }
    let events = log.export();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"events": events, "count": events.len()}),
    ))
}

/// `GET /audit/stats`
pub(crate) fn audit_stats<St: KeyStore>(state: &AdminState<St>) -> Handled {
    Ok(json_reply(StatusCode::OK, &audit_log(state)?.stats()))
}
