//! The top consumers of a report: per-key totals, the numeric-first selection of the best
//! `topN`, and each selected key's most-called tool.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::aggregates::{pair, Counters, IdHash, KeyTable, Rollup};
use super::query::Span;
use super::reader::{Reader, Visitor};
use super::segments::{hour_segments, key_hour_segments, Segment};
use super::{AnalyticsEngine, ANON_KEY};

/// One key's usage over a report's range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopConsumer {
    /// The key's display form, as carried by the usage events (`(other)` for overflow).
    pub api_key: String,
    /// The key's name, as carried by its usage events. A consumer is one `(apiKey, keyName)`
    /// pair, so keys whose display forms collide are still told apart.
    pub key_name: String,
    /// The key's account id, when its events carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<crate::key::KeyId>,
    /// Usage events of the key.
    pub calls: u64,
    /// Credits charged.
    pub credits: u64,
    /// Calls denied.
    pub denied: u64,
    /// The tool the key called most (ties broken by name).
    pub top_tool: String,
}

/// Per-key counters, dense by key id (`[calls, allowed, credits]`). The accumulator is kept in
/// the engine between reports (all zero when idle), so a large key space is allocated and
/// paged in once, not per report.
pub(super) struct KeysVisitor {
    pub(super) acc: Vec<[u64; 3]>,
    touched: Vec<u32>,
}

impl KeysVisitor {
    pub(super) fn new(mut acc: Vec<[u64; 3]>, slots: usize) -> Self {
        acc.resize(slots, [0; 3]);
        Self {
            acc,
            touched: Vec::new(),
        }
    }

    /// The keys touched (the empty key left out), resetting the accumulator to zero.
    fn drain_consumers(&mut self) -> Vec<Consumer> {
        let mut out = Vec::with_capacity(self.touched.len());
        for &key in &self.touched {
            if let Some(a) = self.acc.get_mut(key as usize) {
                if key != ANON_KEY {
                    out.push(Consumer {
                        key,
                        c: Counters {
                            calls: a[0],
                            allowed: a[1],
                            credits: a[2],
                        },
                    });
                }
                *a = [0; 3];
            }
        }
        self.touched.clear();
        out
    }
}

/// One key's totals over a report's range.
struct Consumer {
    key: u32,
    c: Counters,
}

/// A consumer with its `(apiKey, keyName)`.
type Named = (Consumer, KeyLabel);
/// A key's `(apiKey, keyName, keyId)`.
type KeyLabel = (Box<str>, Box<str>, Option<crate::key::KeyId>);

/// Consumers ordered best first: credits desc, then calls desc.
fn by_numbers(a: &Consumer, b: &Consumer) -> std::cmp::Ordering {
    b.c.credits
        .cmp(&a.c.credits)
        .then(b.c.calls.cmp(&a.c.calls))
}

/// Consumers ordered best first: by numbers, then apiKey asc, keyName asc, id.
fn by_numbers_then_names(a: &Named, b: &Named) -> std::cmp::Ordering {
    by_numbers(&a.0, &b.0)
        .then_with(|| a.1.cmp(&b.1))
        .then(a.0.key.cmp(&b.0.key))
}

/// The consumers a report shows, picked from the per-key totals of its range.
pub(super) struct Picked {
    /// The `topN` best consumers, best first.
    consumers: Vec<Consumer>,
    /// Their `(apiKey, keyName)`, in the same order.
    names: Vec<KeyLabel>,
    /// Their key ids, in the same order.
    pub(super) selected: Vec<u32>,
    /// Distinct keys with calls in the range (the empty key left out).
    pub(super) unique_keys: u64,
}

impl AnalyticsEngine {
    /// Keys, pass 1: the per-key totals of the hours of `span`, merged into `keys` (the
    /// reusable dense accumulator), and the `top_n` best of them. Lets go of the aggregates
    /// before the names are looked up.
    pub(super) fn pick_consumers(
        &self,
        reader: &mut Reader<'_>,
        span: &Span,
        first_week: i64,
        keys: &mut KeysVisitor,
        top_n: usize,
        segs: &mut Vec<Segment>,
    ) -> Picked {
        segs.clear();
        key_hour_segments(span.h_from, span.h_to, first_week, segs);
        reader.walk(segs, keys);
        reader.release();
        let mut consumers = keys.drain_consumers();
        let unique_keys = consumers.len() as u64;
        let names = self.select_top(&mut consumers, top_n);
        let selected: Vec<u32> = consumers.iter().map(|c| c.key).collect();
        Picked {
            consumers,
            names,
            selected,
            unique_keys,
        }
    }

    /// Keeps the `top_n` best consumers, sorted: credits desc, then calls desc, then apiKey
    /// and keyName asc; returns their names, in the same order.
    ///
    /// Selection is numeric first; names are looked up only for the consumers kept and those
    /// tied with the last one kept, so the usual cost is linear in the number of consumers
    /// without touching their names.
    fn select_top(&self, consumers: &mut Vec<Consumer>, top_n: usize) -> Vec<KeyLabel> {
        if top_n == 0 {
            consumers.clear();
            return Vec::new();
        }
        let mut named: Vec<Named> = if consumers.len() > top_n {
            consumers.select_nth_unstable_by(top_n - 1, by_numbers);
            let last = &consumers[top_n - 1];
            let pivot = (last.c.credits, last.c.calls);
            let is_tie = |c: &Consumer| (c.c.credits, c.c.calls) == pivot;
            // Everything before the pivot is at least as good; keep those strictly better,
            // then fill up with the tied ones, best name first.
            let (kept, ties): (Vec<Consumer>, Vec<Consumer>) = consumers
                .drain(..)
                .enumerate()
                .filter(|(i, c)| *i < top_n || is_tie(c))
                .map(|(_, c)| c)
                .partition(|c| !is_tie(c));
            let need = top_n - kept.len();
            let mut ties = self.with_names(ties);
            if ties.len() > need {
                ties.select_nth_unstable_by(need - 1, by_numbers_then_names);
                ties.truncate(need);
            }
            let mut kept = self.with_names(kept);
            kept.append(&mut ties);
            kept
        } else {
            self.with_names(std::mem::take(consumers))
        };
        named.sort_unstable_by(by_numbers_then_names);
        let (kept, names) = named.into_iter().unzip();
        *consumers = kept;
        names
    }

    fn with_names(&self, consumers: Vec<Consumer>) -> Vec<Named> {
        let names = self.key_names(consumers.iter().map(|c| c.key));
        consumers.into_iter().zip(names).collect()
    }
}

impl Picked {
    /// Keys, pass 2: per-(key, tool) calls of the selected keys over the hours of `span`, for
    /// their top tool.
    pub(super) fn top_tools(
        &self,
        reader: &mut Reader<'_>,
        span: &Span,
        segs: &mut Vec<Segment>,
    ) -> TopToolVisitor<'_> {
        let mut top_tools = TopToolVisitor::new(&self.selected);
        if !self.selected.is_empty() {
            segs.clear();
            hour_segments(span.h_from, span.h_to, segs);
            reader.walk(segs, &mut top_tools);
        }
        top_tools
    }

    /// The report's top consumer rows, each with its most-called tool from `best_tools`
    /// (by position), named by `tool_name`.
    pub(super) fn rows<'n>(
        self,
        best_tools: Vec<Option<u32>>,
        tool_name: &dyn Fn(u32) -> &'n str,
    ) -> Vec<TopConsumer> {
        self.consumers
            .iter()
            .zip(self.names)
            .zip(best_tools)
            .map(|((c, (api_key, key_name, key_id)), best)| TopConsumer {
                api_key: api_key.into(),
                key_name: key_name.into(),
                key_id,
                calls: c.c.calls,
                credits: c.c.credits,
                denied: c.c.denied(),
                top_tool: best.map(|t| tool_name(t).to_string()).unwrap_or_default(),
            })
            .collect()
    }
}

impl Visitor for KeysVisitor {
    fn rollup(&mut self, r: &Rollup) -> usize {
        self.table(&r.keys)
    }
    fn week(&mut self, t: &KeyTable) -> usize {
        self.table(t)
    }
}

impl KeysVisitor {
    fn table(&mut self, t: &KeyTable) -> usize {
        for (&key, c) in t.ids.iter().zip(&t.counters) {
            // A key first seen while the report runs: grow (ids stop at the key limit).
            if key as usize >= self.acc.len() {
                self.acc.resize(key as usize + 1, [0; 3]);
            }
            if let Some(a) = self.acc.get_mut(key as usize) {
                if a[0] == 0 {
                    self.touched.push(key);
                }
                a[0] = a[0].saturating_add(c.calls);
                a[1] = a[1].saturating_add(c.allowed);
                a[2] = a[2].saturating_add(c.credits);
            }
        }
        t.ids.len()
    }
}

/// Per-(selected key, tool) calls, for the top tool of each selected consumer. In each bucket it
/// either probes the selected keys against the bucket's tools or scans the bucket's pairs,
/// whichever is fewer steps.
pub(super) struct TopToolVisitor<'a> {
    selected: &'a [u32],
    /// Key id → position among the selected.
    slot_of: HashMap<u32, u32, IdHash>,
    /// Keyed by `position among the selected << 32 | tool`.
    calls: HashMap<u64, u64, IdHash>,
}

impl<'a> TopToolVisitor<'a> {
    fn new(selected: &'a [u32]) -> Self {
        Self {
            selected,
            slot_of: selected
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, i as u32))
                .collect(),
            calls: HashMap::default(),
        }
    }

    fn add(&mut self, slot: u32, tool: u32, calls: u64) {
        let e = self.calls.entry(pair(slot, tool)).or_default();
        *e = e.saturating_add(calls);
    }

    /// The most-called tool of each of the `n` selected consumers, by position (ties broken
    /// by name, then id).
    pub(super) fn best_tools<'n>(
        &self,
        n: usize,
        name: &dyn Fn(u32) -> &'n str,
    ) -> Vec<Option<u32>> {
        let mut best: Vec<Option<(u64, u32)>> = vec![None; n];
        for (&p, &calls) in &self.calls {
            let tool = p as u32;
            let Some(b) = best.get_mut((p >> 32) as usize) else {
                continue;
            };
            let better = match *b {
                None => true,
                Some((bc, bt)) => {
                    calls > bc || (calls == bc && (name(tool), tool) < (name(bt), bt))
                }
            };
            if better {
                *b = Some((calls, tool));
            }
        }
        best.into_iter().map(|b| b.map(|(_, t)| t)).collect()
    }
}

impl Visitor for TopToolVisitor<'_> {
    fn rollup(&mut self, r: &Rollup) -> usize {
        let probes = self.selected.len().saturating_mul(r.tools.len());
        if probes <= r.pairs.len() {
            for (slot, &key) in self.selected.iter().enumerate() {
                if !r.keys.pos.contains_key(&key) {
                    continue;
                }
                for &tool in r.tools.keys() {
                    if let Some(&calls) = r.pairs.get(&pair(key, tool)) {
                        self.add(slot as u32, tool, calls);
                    }
                }
            }
        } else {
            for (&p, &calls) in &r.pairs {
                if let Some(&slot) = self.slot_of.get(&((p >> 32) as u32)) {
                    self.add(slot, p as u32, calls);
                }
            }
        }
        probes.min(r.pairs.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::analytics::test_support::{engine_at, ev, range, t};
    use crate::analytics::Granularity;

    #[test]
    fn top_consumers_order_top_tool_and_top_n() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:30:00Z");
        // k1: 10 credits; k2: 10 credits but more calls; k3: 30 credits; k4: 1 credit.
        for _ in 0..2 {
            e.record(&ev(ts, "k1", "x", 5, true));
        }
        for _ in 0..10 {
            e.record(&ev(ts, "k2", "y", 1, true));
        }
        e.record(&ev(ts, "k2", "x", 0, false));
        e.record(&ev(ts, "k3", "z", 30, true));
        e.record(&ev(ts, "k4", "b", 1, true));
        e.record(&ev(ts, "k4", "a", 0, false)); // top tool tie: a vs b → a
        for _ in 0..50 {
            e.record(&ev(ts, "", "x", 0, false)); // no key: not a consumer
        }
        let mut q = range(
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Granularity::Hourly,
        );
        let r = e.report(&q).unwrap();
        let order: Vec<&str> = r.top_consumers.iter().map(|c| c.api_key.as_str()).collect();
        assert_eq!(order, ["k3", "k2", "k1", "k4"]);
        let k2 = &r.top_consumers[1];
        assert_eq!(k2.key_name, "name-k2");
        assert_eq!((k2.calls, k2.credits, k2.denied), (11, 10, 1));
        assert_eq!(k2.top_tool, "y");
        assert_eq!(r.top_consumers[3].top_tool, "a");
        assert_eq!(r.summary.unique_keys, 4);
        assert_eq!(r.summary.total_calls, 66);

        q.top_n = 2;
        let r = e.report(&q).unwrap();
        let order: Vec<&str> = r.top_consumers.iter().map(|c| c.api_key.as_str()).collect();
        assert_eq!(order, ["k3", "k2"]);
        assert_eq!(r.summary.unique_keys, 4);

        q.top_n = 0;
        assert!(e.report(&q).unwrap().top_consumers.is_empty());
    }

    #[test]
    fn consumers_at_unaligned_edges_cover_whole_hours() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        e.record(&ev(t("2026-03-01T10:05:00Z"), "early", "a", 1, true));
        e.record(&ev(t("2026-03-01T10:40:00Z"), "k1", "a", 1, true));
        let r = e
            .report(&range(
                "2026-03-01T10:30:00Z",
                "2026-03-01T11:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.summary.total_calls, 1); // exact to the minute
        assert_eq!(r.tools[0].calls, 1);
        assert_eq!(r.summary.unique_keys, 2); // whole hour 10:00-11:00
        assert_eq!(r.top_consumers.len(), 2);
    }
}
