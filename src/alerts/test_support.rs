//! Helpers shared by the alert unit tests: an engine on a manual clock with one key, its
//! snapshots, and the two call contexts.

use std::sync::Arc;

use super::{AlertContext, AlertEngine, AlertRule};
use crate::clock::{Clock, ManualClock};
use crate::key::KeyRecord;
use crate::store::KeySnapshot;

pub(super) const KEY: &str = "pg_0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn setup(rules: Vec<AlertRule>) -> (Arc<ManualClock>, AlertEngine, KeyRecord) {
    let clock = Arc::new(ManualClock::at_rfc3339("2026-05-01T12:00:00Z").unwrap());
    let engine = AlertEngine::new(rules, clock.clone());
    let rec = KeyRecord::new(KEY, "acme", 100, clock.now_ms());
    (clock, engine, rec)
}

pub(super) fn snap(rec: &KeyRecord, clock: &ManualClock) -> KeySnapshot {
    KeySnapshot::of(rec, clock.now_ms(), None)
}

pub(super) const NONE: AlertContext = AlertContext {
    rate_limit_denied: false,
};
pub(super) const DENIED: AlertContext = AlertContext {
    rate_limit_denied: true,
};
