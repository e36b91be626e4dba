//! Interning: tool names and `(apiKey, keyName)` pairs as dense `u32` ids, the limits past
//! which new names are aggregated as `(other)`, and the chunked copy of names out of the
//! tables for a report.

use std::collections::HashMap;

use super::{AnalyticsEngine, ANON_KEY, OTHER, OTHER_KEY, OTHER_TOOL};
use crate::key::KeyId;

/// Interned tools and keys. A key is identified by its `(apiKey, keyName)` pair, so two keys
/// whose display forms happen to collide are still told apart by their names.
pub(super) struct Names {
    tool_ids: HashMap<Box<str>, u32>,
    pub(super) tools: Vec<Box<str>>,
    /// apiKey → the most recent id interned with that apiKey (others are chained by `next`).
    key_ids: HashMap<Box<str>, u32>,
    pub(super) keys: Vec<KeyName>,
    max_tools: usize,
    max_keys: usize,
}

pub(super) struct KeyName {
    api_key: Box<str>,
    name: Box<str>,
    /// The account id the first event of this pair carried.
    key_id: Option<KeyId>,
    /// The previous id with the same apiKey and another name (`NONE` at the end).
    next: u32,
}

const NONE: u32 = u32::MAX;

impl Names {
    pub(super) fn new(max_keys: usize, max_tools: usize) -> Self {
        let mut n = Self {
            tool_ids: HashMap::new(),
            tools: Vec::new(),
            key_ids: HashMap::new(),
            keys: Vec::new(),
            max_tools,
            max_keys,
        };
        n.tool_ids.insert(OTHER.into(), OTHER_TOOL);
        n.tools.push(OTHER.into());
        for (id, api) in [(ANON_KEY, ""), (OTHER_KEY, OTHER)] {
            n.key_ids.insert(api.into(), id);
            n.keys.push(KeyName {
                api_key: api.into(),
                name: api.into(),
                key_id: None,
                next: NONE,
            });
        }
        n
    }

    /// Reserved entries do not count against the limits.
    fn tools_full(&self) -> bool {
        self.tools.len() >= self.max_tools.saturating_add(1) // + `(other)`
    }

    fn keys_full(&self) -> bool {
        self.keys.len() >= self.max_keys.saturating_add(2) // + the empty key and `(other)`
    }

    /// The tool's id when no write is needed.
    pub(super) fn find_tool(&self, tool: &str) -> Option<u32> {
        match self.tool_ids.get(tool) {
            Some(&id) => Some(id),
            None if self.tools_full() => Some(OTHER_TOOL),
            None => None,
        }
    }

    /// The key's id when no write is needed: a known pair, the reserved ids (whatever the
    /// name), or `(other)` when full.
    pub(super) fn find_key(&self, api_key: &str, name: &str) -> Option<u32> {
        let mut id = match self.key_ids.get(api_key) {
            Some(&id) if id <= OTHER_KEY => return Some(id),
            Some(&id) => id,
            None => NONE,
        };
        while let Some(k) = self.keys.get(id as usize) {
            if *k.name == *name {
                return Some(id);
            }
            id = k.next;
        }
        self.keys_full().then_some(OTHER_KEY)
    }

    pub(super) fn tool_id(&mut self, tool: &str) -> u32 {
        if let Some(id) = self.find_tool(tool) {
            return id;
        }
        let id = self.tools.len() as u32;
        self.tools.push(tool.into());
        self.tool_ids.insert(tool.into(), id);
        id
    }

    pub(super) fn key_id(&mut self, api_key: &str, name: &str, key_id: Option<KeyId>) -> u32 {
        if let Some(id) = self.find_key(api_key, name) {
            return id;
        }
        let id = self.keys.len() as u32;
        let next = self.key_ids.insert(api_key.into(), id).unwrap_or(NONE);
        self.keys.push(KeyName {
            api_key: api_key.into(),
            name: name.into(),
            key_id,
            next,
        });
        id
    }

    fn key_api(&self, id: u32) -> &str {
        self.keys.get(id as usize).map_or(OTHER, |k| &k.api_key)
    }

    fn key_name(&self, id: u32) -> &str {
        self.keys.get(id as usize).map_or(OTHER, |k| &k.name)
    }

    fn account(&self, id: u32) -> Option<KeyId> {
        self.keys.get(id as usize).and_then(|k| k.key_id)
    }
}

/// `s` cut to at most `max` characters (on a character boundary).
pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Names are copied out of the interning tables this many at a time, under one short hold of
/// the read lock each, so an event with a new name never waits for a whole report.
const NAME_CHUNK: usize = 4_096;

impl AnalyticsEngine {
    /// The `(apiKey, keyName, keyId)` of each key, in order; read in chunks.
    pub(super) fn key_names(
        &self,
        ids: impl ExactSizeIterator<Item = u32>,
    ) -> Vec<(Box<str>, Box<str>, Option<KeyId>)> {
        let mut out = Vec::with_capacity(ids.len());
        let mut ids = ids.peekable();
        while ids.peek().is_some() {
            let names = self.names.read();
            out.extend(ids.by_ref().take(NAME_CHUNK).map(|k| {
                (
                    names.key_api(k).into(),
                    names.key_name(k).into(),
                    names.account(k),
                )
            }));
        }
        out
    }

    /// Every tool name, by id; read in chunks (the table only grows, so a chunked copy is a
    /// prefix of it).
    pub(super) fn tool_names(&self) -> Vec<Box<str>> {
        let mut out: Vec<Box<str>> = Vec::new();
        loop {
            let names = self.names.read();
            let from = out.len();
            let chunk = names.tools.get(from..).unwrap_or_default();
            if chunk.is_empty() {
                return out;
            }
            out.extend(chunk.iter().take(NAME_CHUNK).cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::analytics::test_support::{engine_at, ev, t};
    use crate::analytics::{AnalyticsConfig, AnalyticsEngine, ReportQuery, OTHER};
    use crate::clock::ManualClock;

    #[test]
    fn keys_with_the_same_display_form_are_told_apart_by_name() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:00Z");
        let mut a = ev(ts, "pg_1234...abcd", "x", 1, true);
        a.key_name = "alice".into();
        let mut b = ev(ts, "pg_1234...abcd", "y", 2, true);
        b.key_name = "bob".into();
        for _ in 0..3 {
            e.record(&a);
            e.record(&b);
        }
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.unique_keys, 2);
        let names: Vec<(&str, &str, u64, &str)> = r
            .top_consumers
            .iter()
            .map(|c| {
                (
                    c.api_key.as_str(),
                    c.key_name.as_str(),
                    c.credits,
                    c.top_tool.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("pg_1234...abcd", "bob", 6, "y"),
                ("pg_1234...abcd", "alice", 3, "x")
            ]
        );
        assert_eq!(e.stats().distinct_keys, 4);
    }

    #[test]
    fn key_and_tool_overflow_goes_to_other() {
        let clock = Arc::new(ManualClock::at_rfc3339("2026-03-02T00:00:00Z").unwrap());
        let e = AnalyticsEngine::with_config(
            clock,
            AnalyticsConfig {
                max_keys: 3,
                max_tools: 2,
                ..AnalyticsConfig::default()
            },
        );
        let ts = t("2026-03-01T10:00:00Z");
        for i in 0..6 {
            e.record(&ev(ts, &format!("k{i}"), &format!("t{i}"), 1, true));
        }
        e.record(&ev(ts, "k0", "t0", 1, true)); // known ones still resolve
        let r = e.report(&ReportQuery::default()).unwrap();
        assert_eq!(r.summary.total_calls, 7);
        assert_eq!(r.summary.unique_keys, 4);
        let other = r.top_consumers.iter().find(|c| c.api_key == OTHER).unwrap();
        assert_eq!((other.calls, other.key_name.as_str()), (3, OTHER));
        assert_eq!(other.top_tool, OTHER);
        let k0 = r.top_consumers.iter().find(|c| c.api_key == "k0").unwrap();
        assert_eq!(k0.calls, 2);
        let tools: BTreeMap<&str, u64> =
            r.tools.iter().map(|t| (t.tool.as_str(), t.calls)).collect();
        assert_eq!(tools, BTreeMap::from([("t0", 2), ("t1", 1), (OTHER, 4)]));
        let s = e.stats();
        assert_eq!((s.distinct_keys, s.distinct_tools), (5, 3));
    }
}
