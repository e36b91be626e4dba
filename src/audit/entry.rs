//! What a ring holds: a gate decision in a compact form, turned into an [`AuditEvent`] only
//! when the log is read, or any other event as it was recorded. Every gated call records a
//! decision, and the log is read rarely: building its message and JSON object on each call
//! cost a few microseconds.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::sanitize::truncate;
use super::{AuditEvent, MAX_AUDIT_TEXT_CHARS};
use crate::clock::ms_to_datetime;
use crate::key::{redact_full_keys, KeyId};

/// A gate decision: `gate.allow` or `gate.deny`. Its text is already bounded and free of
/// full keys.
#[derive(Debug, Clone)]
pub(super) struct Decision {
    pub(super) allowed: bool,
    /// The masked key, or empty for a call without a known key.
    pub(super) actor: Box<str>,
    pub(super) tool: Box<str>,
    pub(super) credits: u64,
    pub(super) deny_reason: Option<Box<str>>,
    pub(super) key_id: Option<KeyId>,
}

impl Decision {
    pub(super) fn event_type(&self) -> &'static str {
        if self.allowed {
            "gate.allow"
        } else {
            "gate.deny"
        }
    }

    fn message(&self) -> String {
        let tool = &self.tool;
        let message = if self.allowed {
            let mut m = format!("Allowed call to {tool} ({} credits)", self.credits);
            if let Some(reason) = &self.deny_reason {
                m.push_str(&format!(", would deny: {reason}"));
            }
            m
        } else {
            let reason = self.deny_reason.as_deref().unwrap_or("denied");
            format!("Denied call to {tool}: {reason}")
        };
        truncate(
            redact_full_keys(&message).into_owned(),
            MAX_AUDIT_TEXT_CHARS,
        )
    }

    fn metadata(&self) -> Value {
        let mut metadata = Map::with_capacity(4);
        metadata.insert("tool".into(), Value::String(self.tool.to_string()));
        metadata.insert("creditsCharged".into(), self.credits.into());
        metadata.insert(
            "denyReason".into(),
            self.deny_reason
                .as_deref()
                .map_or(Value::Null, |r| Value::String(r.to_string())),
        );
        if let Some(id) = self.key_id {
            metadata.insert("keyId".into(), json!(id));
        }
        Value::Object(metadata)
    }
}

/// One event in a ring.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Decision {
        id: u64,
        ms: i64,
        decision: Decision,
    },
    Event(AuditEvent),
}

impl Entry {
    pub(super) fn id(&self) -> u64 {
        match self {
            Entry::Decision { id, .. } => *id,
            Entry::Event(e) => e.id,
        }
    }

    pub(super) fn ms(&self) -> i64 {
        match self {
            Entry::Decision { ms, .. } => *ms,
            Entry::Event(e) => e.timestamp.timestamp_millis(),
        }
    }

    pub(super) fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Entry::Decision { ms, .. } => ms_to_datetime(*ms),
            Entry::Event(e) => e.timestamp,
        }
    }

    pub(super) fn event_type(&self) -> &str {
        match self {
            Entry::Decision { decision, .. } => decision.event_type(),
            Entry::Event(e) => &e.event_type,
        }
    }

    pub(super) fn actor(&self) -> &str {
        match self {
            Entry::Decision { decision, .. } => &decision.actor,
            Entry::Event(e) => &e.actor,
        }
    }

    /// The event as the log shows it.
    pub(super) fn to_event(&self) -> AuditEvent {
        match self {
            Entry::Decision { id, ms, decision } => AuditEvent {
                id: *id,
                timestamp: ms_to_datetime(*ms),
                event_type: decision.event_type().to_string(),
                actor: decision.actor.to_string(),
                message: decision.message(),
                metadata: decision.metadata(),
            },
            Entry::Event(e) => e.clone(),
        }
    }
}
