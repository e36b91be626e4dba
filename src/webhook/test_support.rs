//! Helpers shared by the webhook unit tests: a scripted fake transport that records what it
//! was sent, and sample events and configuration.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::config::WebhookConfig;
use super::transport::{Attempt, AttemptFuture, Transport};
use crate::meter::{AdminEvent, UsageEvent};

/// When, what (parsed), signature, raw body.
pub(super) type Post = (Instant, Value, Option<String>, Bytes);

/// Answers each POST from a script (then `Delivered`) and records what it got.
#[derive(Clone, Default)]
pub(super) struct Fake {
    pub(super) script: Arc<Mutex<VecDeque<Attempt>>>,
    pub(super) posts: Arc<Mutex<Vec<Post>>>,
}

impl Fake {
    pub(super) fn scripted(answers: &[Attempt]) -> Self {
        let fake = Self::default();
        fake.script.lock().extend(answers.iter().copied());
        fake
    }
    pub(super) fn bodies(&self) -> Vec<Value> {
        self.posts.lock().iter().map(|p| p.1.clone()).collect()
    }
}

impl Transport for Fake {
    fn post(&self, body: Bytes, signature: Option<String>) -> AttemptFuture<'_> {
        Box::pin(async move {
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.posts
                .lock()
                .push((Instant::now(), value, signature, body));
            self.script.lock().pop_front().unwrap_or(Attempt::Delivered)
        })
    }
}

pub(super) fn usage(i: usize) -> UsageEvent {
    UsageEvent {
        timestamp: crate::clock::ms_to_datetime(1_767_225_600_000),
        api_key: "pg_1234...abcd".into(),
        key_id: None,
        key_name: "alice".into(),
        tool: format!("t{i}"),
        credits_charged: 1,
        allowed: true,
        deny_reason: None,
        duration_ms: None,
    }
}

pub(super) fn admin(t: &str) -> AdminEvent {
    AdminEvent {
        event_type: t.into(),
        timestamp: crate::clock::ms_to_datetime(1_767_225_600_000),
        data: json!({"keyMasked": "pg_1234...abcd"}),
    }
}

pub(super) fn cfg() -> WebhookConfig {
    WebhookConfig::new("http://127.0.0.1:9/hook")
}
