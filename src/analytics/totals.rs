//! Running totals since the engine started, in the shape paygate-mcp 1.8's `/status` reports
//! under `usage`: calls, credits and denials overall, per tool, per key name, and per deny
//! reason. Updated once per folded batch; read in time bounded by constants, whatever the
//! number of keys or events.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::aggregates::Counters;
use super::OTHER;

/// Distinct key names counted apart before the rest are counted as `(other)`.
const MAX_KEY_NAMES: usize = 10_000;
/// Distinct deny reasons counted apart before the rest are counted as `(other)`.
const MAX_REASONS: usize = 100;

/// Calls, credits and denials of one tool or key name.
///
/// ```
/// let t = paygate_mcp::analytics::NameTotals { calls: 3, credits: 4, denied: 1 };
/// assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!({"calls": 3, "credits": 4, "denied": 1}));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NameTotals {
    /// Calls decided.
    pub calls: u64,
    /// Credits charged.
    pub credits: u64,
    /// Calls denied.
    pub denied: u64,
}

impl From<Counters> for NameTotals {
    fn from(c: Counters) -> Self {
        Self {
            calls: c.calls,
            credits: c.credits,
            denied: c.denied(),
        }
    }
}

/// Usage since the engine started (1.8's `/status` `usage`), the busiest tools and key
/// names first and at most `top` of each ([`AnalyticsEngine::totals`](super::AnalyticsEngine::totals)).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// Calls decided (allowed and denied).
    pub total_calls: u64,
    /// Credits charged (refunds already taken off).
    pub total_credits_spent: u64,
    /// Calls denied.
    pub total_denied: u64,
    /// The busiest tools.
    pub per_tool: BTreeMap<String, NameTotals>,
    /// The busiest key names (keys sharing a name count together, as in 1.8).
    pub per_key: BTreeMap<String, NameTotals>,
    /// Denials by machine reason.
    pub deny_reasons: BTreeMap<String, u64>,
}

/// The engine's running totals.
#[derive(Default)]
pub(super) struct Totals {
    all: Counters,
    /// By interned tool id (tools are bounded by the interning table).
    tools: HashMap<u32, Counters>,
    key_names: HashMap<Box<str>, Counters>,
    reasons: HashMap<Box<str>, u64>,
}

impl Totals {
    pub(super) fn add(&mut self, tool: u32, key_name: &str, reason: Option<&str>, c: Counters) {
        self.all.add(&c);
        self.tools.entry(tool).or_default().add(&c);
        bounded_entry(&mut self.key_names, key_name, MAX_KEY_NAMES).add(&c);
        if let Some(reason) = reason.filter(|_| c.denied() > 0) {
            let n = bounded_entry(&mut self.reasons, reason, MAX_REASONS);
            *n = n.saturating_add(1);
        }
    }

    /// The totals with the `top` busiest tools and key names; `tool_name` names a tool id.
    pub(super) fn read(&self, top: usize, tool_name: impl Fn(u32) -> String) -> UsageTotals {
        let tools = busiest(self.tools.iter().map(|(id, c)| (tool_name(*id), *c)), top);
        let keys = busiest(
            self.key_names
                .iter()
                .map(|(name, c)| (name.to_string(), *c)),
            top,
        );
        UsageTotals {
            total_calls: self.all.calls,
            total_credits_spent: self.all.credits,
            total_denied: self.all.denied(),
            per_tool: tools,
            per_key: keys,
            deny_reasons: self
                .reasons
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
        }
    }
}

/// The entry for `name`, or for `(other)` once `map` holds `max` names.
fn bounded_entry<'m, V: Default>(
    map: &'m mut HashMap<Box<str>, V>,
    name: &str,
    max: usize,
) -> &'m mut V {
    let name = if map.contains_key(name) || map.len() < max {
        name
    } else {
        OTHER
    };
    map.entry(name.into()).or_default()
}

/// The `top` entries with the most calls (ties by name, for a stable answer).
fn busiest(
    entries: impl Iterator<Item = (String, Counters)>,
    top: usize,
) -> BTreeMap<String, NameTotals> {
    let mut all: Vec<(String, Counters)> = entries.collect();
    all.sort_unstable_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
    all.into_iter()
        .take(top)
        .map(|(name, c)| (name, c.into()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_call_and_keeps_the_busiest() {
        let mut t = Totals::default();
        for i in 0..5u32 {
            for _ in 0..=i {
                t.add(i, &format!("key{i}"), None, Counters::one(true, 2));
            }
        }
        t.add(
            0,
            "key0",
            Some("insufficient_credits"),
            Counters::one(false, 0),
        );
        // A shadow-mode would-be denial is allowed: it is no denial.
        t.add(
            0,
            "key0",
            Some("shadow:rate_limited"),
            Counters::one(true, 0),
        );
        let read = t.read(2, |id| format!("tool{id}"));
        assert_eq!(
            (
                read.total_calls,
                read.total_credits_spent,
                read.total_denied
            ),
            (17, 30, 1)
        );
        assert_eq!(read.per_tool.keys().collect::<Vec<_>>(), ["tool3", "tool4"]);
        assert_eq!(
            read.per_tool["tool4"],
            NameTotals {
                calls: 5,
                credits: 10,
                denied: 0
            }
        );
        assert_eq!(read.per_key.len(), 2);
        assert_eq!(
            read.deny_reasons,
            BTreeMap::from([("insufficient_credits".to_string(), 1)])
        );
    }

    #[test]
    fn names_beyond_the_bound_count_as_other() {
        let mut t = Totals::default();
        for i in 0..MAX_KEY_NAMES + 50 {
            t.add(0, &format!("k{i}"), None, Counters::one(true, 1));
        }
        assert_eq!(t.key_names.len(), MAX_KEY_NAMES + 1);
        assert_eq!(t.key_names[OTHER].calls, 50);
        assert_eq!(
            t.read(1, |_| String::new()).total_calls,
            (MAX_KEY_NAMES + 50) as u64
        );
    }
}
