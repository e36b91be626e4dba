//! Reporting and discovery endpoints: health, status, usage, analytics, alerts, metrics,
//! pricing and the payment discovery document.

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::json;

use super::{
    bad_request, csv_safe, error, json_reply, store_error, text_reply, AdminRequest, AdminState,
    Reply,
};
use crate::alerts::{AlertRule, AlertType};
use crate::analytics::{Granularity, ReportQuery};
use crate::store::KeyStore;

fn uptime_secs<St: KeyStore>(state: &AdminState<St>) -> i64 {
    (state.gate.clock().now_ms() - state.started_ms).max(0) / 1000
}

pub(crate) fn health<St: KeyStore>(state: &AdminState<St>) -> Reply {
    json_reply(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "name": state.gate.config().name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": uptime_secs(state),
        }),
    )
}

pub(crate) async fn metrics<St: KeyStore>(state: &AdminState<St>) -> Reply {
    let Some(m) = &state.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled");
    };
    match state.gate.store().stats().await {
        Ok(stats) => text_reply(
            "text/plain; version=0.0.4; charset=utf-8",
            m.render(stats, state.gate.alerts().pending_count()),
        ),
        Err(e) => store_error(e),
    }
}

fn tool_prices<St: KeyStore>(state: &AdminState<St>) -> serde_json::Map<String, serde_json::Value> {
    let pricing = state.gate.pricing();
    pricing
        .tools()
        .keys()
        .map(|tool| (tool.clone(), json!(pricing.tag(tool))))
        .collect()
}

pub(crate) fn pricing<St: KeyStore>(state: &AdminState<St>) -> Reply {
    let cfg = state.gate.config();
    json_reply(
        StatusCode::OK,
        &json!({
            "name": cfg.name,
            "billingModel": "credits",
            "defaultCreditsPerCall": cfg.default_credits_per_call,
            "globalRateLimitPerMin": cfg.global_rate_limit_per_min,
            "globalQuota": cfg.global_quota,
            "tools": tool_prices(state),
            "freeMethods": cfg.free_methods,
            "refundOnFailure": cfg.refund_on_failure,
        }),
    )
}

pub(crate) fn discovery<St: KeyStore>(state: &AdminState<St>) -> Reply {
    let cfg = state.gate.config();
    json_reply(
        StatusCode::OK,
        &json!({
            "version": "1.0",
            "name": cfg.name,
            "billingModel": "credits",
            "currency": "credits",
            "defaultPrice": cfg.default_credits_per_call,
            "toolPricing": tool_prices(state),
            "authMethods": ["X-API-Key", "Authorization: Bearer"],
            "endpoints": {"mcp": "/mcp", "balance": "/balance", "pricing": "/pricing"},
            "errorCodes": {
                "-32402": "Payment required: insufficient credits, spending limit or quota",
                "-32001": "Rate limited: retry after retryAfterSeconds",
                "-32002": "Unauthorized: missing, invalid or expired key, or IP not allowed",
                "-32003": "Forbidden: tool not allowed for this key",
            },
        }),
    )
}

pub(crate) async fn status<St: KeyStore>(state: &AdminState<St>) -> Reply {
    let stats = match state.gate.store().stats().await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let cfg = state.gate.config();
    json_reply(
        StatusCode::OK,
        &json!({
            "name": cfg.name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": uptime_secs(state),
            "keys": {"total": stats.total_keys, "active": stats.active_keys},
            "totalCreditsAvailable": stats.total_credits,
            "pendingAlerts": state.gate.alerts().pending_count(),
            "alertRules": state.gate.alerts().rules().len(),
            "recentUsageEvents": state.gate.meter().len(),
            "config": {
                "defaultCreditsPerCall": cfg.default_credits_per_call,
                "globalRateLimitPerMin": cfg.global_rate_limit_per_min,
                "shadowMode": cfg.shadow_mode,
                "refundOnFailure": cfg.refund_on_failure,
                "refundOnToolError": cfg.refund_on_tool_error,
                "globalQuota": cfg.global_quota,
            },
        }),
    )
}

fn parse_time(req: &AdminRequest, name: &str) -> Result<Option<DateTime<Utc>>, Reply> {
    match req.query.get(name) {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                bad_request(format!(
                    "'{name}' must be an RFC 3339 time, e.g. 2026-02-25T00:00:00Z"
                ))
            }),
    }
}

pub(crate) fn usage<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Reply {
    let since = match parse_time(req, "since") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let events = state.gate.meter().since(since);
    match req.query.get("format").map(String::as_str) {
        None | Some("json") => json_reply(
            StatusCode::OK,
            &json!({"events": events, "count": events.len()}),
        ),
        Some("csv") => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let header = [
                "timestamp",
                "apiKey",
                "keyName",
                "tool",
                "creditsCharged",
                "allowed",
                "denyReason",
                "durationMs",
            ];
            let mut ok = w.write_record(header).is_ok();
            for e in &events {
                let row = [
                    e.timestamp.to_rfc3339(),
                    csv_safe(&e.api_key).into_owned(),
                    csv_safe(&e.key_name).into_owned(),
                    csv_safe(&e.tool).into_owned(),
                    e.credits_charged.to_string(),
                    e.allowed.to_string(),
                    e.deny_reason.clone().unwrap_or_default(),
                    e.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
                ];
                ok &= w.write_record(&row).is_ok();
            }
            match (ok, w.into_inner()) {
                (true, Ok(bytes)) => text_reply(
                    "text/csv; charset=utf-8",
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
                _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot write CSV"),
            }
        }
        Some(_) => bad_request("'format' must be json or csv"),
    }
}

pub(crate) fn analytics<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Reply {
    let (from, to) = match (parse_time(req, "from"), parse_time(req, "to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let granularity = match req
        .query
        .get("granularity")
        .map(|g| g.parse::<Granularity>())
    {
        None => Granularity::default(),
        Some(Ok(g)) => g,
        Some(Err(e)) => return bad_request(e.to_string()),
    };
    let top_n = match req.query.get("topN").map(|n| n.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad_request("'topN' must be a whole number"),
    };
    let query = ReportQuery {
        from,
        to,
        granularity,
        top_n,
    };
    match state.gate.analytics().report(&query) {
        Ok(report) => json_reply(StatusCode::OK, &report),
        Err(e) => bad_request(e.to_string()),
    }
}

pub(crate) fn alerts<St: KeyStore>(state: &AdminState<St>) -> Reply {
    let alerts = state.gate.alerts().consume();
    json_reply(
        StatusCode::OK,
        &json!({"alerts": alerts, "count": alerts.len(), "rules": state.gate.alerts().rules()}),
    )
}

#[derive(serde::Deserialize)]
struct Rules {
    rules: Vec<AlertRule>,
}

/// Most alert rules accepted at once.
const MAX_RULES: usize = 100;

pub(crate) fn configure_alerts<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Reply {
    let body: Rules = match req.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.rules.len() > MAX_RULES {
        return bad_request(format!("at most {MAX_RULES} rules"));
    }
    for (i, rule) in body.rules.iter().enumerate() {
        let percent = matches!(
            rule.rule_type,
            AlertType::SpendingThreshold | AlertType::QuotaWarning
        );
        if percent && rule.threshold > 100 {
            return bad_request(format!("'rules[{i}].threshold' is a percentage: 0 to 100"));
        }
    }
    state.gate.alerts().set_rules(body.rules.clone());
    state.gate.emit(
        "admin.alerts_configured",
        json!({"actor": "admin", "rules": body.rules.len()}),
    );
    json_reply(
        StatusCode::OK,
        &json!({"rules": body.rules, "count": body.rules.len()}),
    )
}
