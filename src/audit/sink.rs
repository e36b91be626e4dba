//! The audit log as an [`EventSink`]: gate decisions become `gate.allow` and `gate.deny`,
//! admin events keep their type and data, each with a readable message.

use serde_json::Value;

use super::entry::Decision;
use super::sanitize::truncate;
use super::{AuditLog, MAX_AUDIT_LABEL_CHARS};
use crate::key::redact_full_keys;
use crate::meter::{AdminEvent, EventSink, UsageEvent};

impl EventSink for AuditLog {
    /// Records `gate.allow` or `gate.deny`, with the masked key as actor and
    /// `{tool, creditsCharged, denyReason, keyId}` as metadata (`keyId` when the key is
    /// known).
    fn usage(&self, event: &UsageEvent) {
        // Request-derived text is cut and any full key in it masked now; the message and
        // metadata are built from these parts when the log is read.
        let max = crate::meter::MAX_EVENT_TEXT_BYTES;
        let bounded =
            |text: &str| -> Box<str> { redact_full_keys(&crate::meter::clip(text, max)).into() };
        self.record_decision(Decision {
            allowed: event.allowed,
            actor: truncate(bounded(&event.api_key).into(), MAX_AUDIT_LABEL_CHARS).into(),
            tool: bounded(&event.tool),
            credits: event.credits_charged,
            deny_reason: event.deny_reason.as_deref().map(bounded),
            key_id: event.key_id,
        });
    }

    /// Records the admin event under its own type, with `data.actor` (when a string) or
    /// `"system"` as actor and `data` as metadata.
    fn admin(&self, event: &AdminEvent) {
        let actor = event
            .data
            .get("actor")
            .and_then(Value::as_str)
            .unwrap_or("system")
            .to_string();
        let message = describe(&event.event_type, &event.data);
        self.record(
            event.event_type.as_str(),
            actor,
            message,
            event.data.clone(),
        );
    }
}

/// A human-readable summary of an admin event, naming the key when the data carries one.
fn describe(event_type: &str, data: &Value) -> String {
    let base = match event_type {
        "key.created" => "API key created",
        "key.revoked" => "API key revoked",
        "key.rotated" => "API key rotated",
        "key.topup" => "Credits added to API key",
        "key.acl_updated" => "API key tool access updated",
        "key.expiry_updated" => "API key expiry updated",
        "key.quota_updated" => "API key quota updated",
        "key.limit_updated" => "API key spending limit updated",
        "key.tags_updated" => "API key tags updated",
        "key.ip_updated" => "API key IP allowlist updated",
        "key.expired" => "API key expired",
        "gate.allow" => "Tool call allowed",
        "gate.deny" => "Tool call denied",
        "admin.auth_failed" => "Admin authentication failed",
        "admin.alerts_configured" => "Alert rules configured",
        "billing.refund" => "Charge refunded",
        "billing.stripe_topup" => "Credits bought with Stripe",
        "billing.stripe_unmatched" => "Stripe payment not credited (no usable key)",
        "alert.fired" => "Alert fired",
        other => return format!("Event {other}{}", key_suffix(data)),
    };
    format!("{base}{}", key_suffix(data))
}

fn key_suffix(data: &Value) -> String {
    ["keyMasked", "oldKeyMasked", "keyPrefix"]
        .iter()
        .find_map(|field| data.get(field).and_then(Value::as_str))
        .map(|k| format!(": {k}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::audit::test_support::{event_bytes, log_at, usage, T0};

    #[test]
    fn a_full_key_in_a_call_is_masked_everywhere_it_is_stored() {
        let (_, log) = log_at(T0);
        let key = format!("pg_{}", "ab12".repeat(12));
        let mut e = usage(false, Some(&format!("because {key}")));
        e.api_key = key.clone();
        e.tool = format!("tool-{key}");
        log.usage(&e);
        e.allowed = true;
        log.usage(&e);
        for stored in log.export() {
            let text = serde_json::to_string(&stored).unwrap();
            assert!(!text.contains(&key), "{text}");
            assert!(stored.metadata["tool"]
                .as_str()
                .unwrap()
                .starts_with("tool-pg_"));
        }
    }

    #[test]
    fn keyless_calls_with_huge_tool_names_store_little() {
        let (_, log) = log_at(T0);
        let mut e = usage(false, Some("invalid_api_key"));
        e.api_key = String::new();
        e.tool = "é".repeat(500_000); // 1 MB
        log.usage(&e);
        let stored = &log.export()[0];
        let tool = stored.metadata["tool"].as_str().unwrap();
        assert!(tool.len() <= crate::meter::MAX_EVENT_TEXT_BYTES);
        assert!(tool.ends_with('…'));
        assert!(stored.message.len() <= crate::meter::MAX_EVENT_TEXT_BYTES + 64);
        assert!(event_bytes(stored) <= 1_024, "{}", event_bytes(stored));
    }

    #[test]
    fn usage_events_become_gate_allow_and_gate_deny() {
        let (_, log) = log_at(T0);
        log.usage(&usage(true, None));
        log.usage(&usage(false, Some("insufficient_credits")));
        log.usage(&usage(true, Some("shadow:rate_limited")));
        let events = log.export();
        assert_eq!(events[0].event_type, "gate.allow");
        assert_eq!(events[0].actor, "pg_1234...abcd");
        assert_eq!(
            events[0].metadata,
            json!({"tool": "search", "creditsCharged": 3, "denyReason": null})
        );
        assert_eq!(events[1].event_type, "gate.deny");
        assert_eq!(
            events[1].metadata,
            json!({"tool": "search", "creditsCharged": 0, "denyReason": "insufficient_credits"})
        );
        assert!(events[1].message.contains("insufficient_credits"));
        assert_eq!(events[2].event_type, "gate.allow");
        assert_eq!(events[2].metadata["denyReason"], "shadow:rate_limited");
        // A known key's account id goes with the entry.
        let mut known = usage(true, None);
        let id: crate::key::KeyId = "kid_0123456789abcdef0123".parse().unwrap();
        known.key_id = Some(id);
        log.usage(&known);
        assert_eq!(
            log.export()[3].metadata["keyId"],
            "kid_0123456789abcdef0123"
        );
    }

    #[test]
    fn admin_events_keep_their_type_and_data() {
        let (_, log) = log_at(T0);
        let event = |t: &str, data: Value| AdminEvent {
            event_type: t.into(),
            timestamp: crate::clock::ms_to_datetime(T0),
            data,
        };
        log.admin(&event(
            "key.revoked",
            json!({"keyMasked": "pg_1234...abcd"}),
        ));
        log.admin(&event(
            "key.topup",
            json!({"actor": "admin", "creditsAdded": 5}),
        ));
        log.admin(&event("custom.thing", json!({"actor": 7})));
        log.admin(&event("billing.refund", json!(null)));
        let e = log.export();
        assert_eq!(e[0].event_type, "key.revoked");
        assert_eq!(e[0].actor, "system");
        assert_eq!(e[0].message, "API key revoked: pg_1234...abcd");
        assert_eq!(e[0].metadata, json!({"keyMasked": "pg_1234...abcd"}));
        assert_eq!(e[1].actor, "admin");
        assert_eq!(e[1].message, "Credits added to API key");
        assert_eq!(e[2].actor, "system", "a non-string actor is ignored");
        assert_eq!(e[2].message, "Event custom.thing");
        assert_eq!(e[3].message, "Charge refunded");
        assert_eq!(e[3].metadata, Value::Null);
    }
}
