//! Per-tool figures of a report: the breakdown rows, their dense accumulator, and their order.

use serde::{Deserialize, Serialize};

use super::aggregates::{Counters, MinuteBucket, Rollup};
use super::reader::Visitor;
use super::report::ratio;

/// Usage of one tool over a report's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolBreakdown {
    /// The tool name (truncated to 200 characters; `(other)` for overflow).
    pub tool: String,
    /// Usage events for the tool.
    pub calls: u64,
    /// Calls let through.
    pub allowed: u64,
    /// Calls denied.
    pub denied: u64,
    /// Credits charged.
    pub credits: u64,
    /// `allowed / calls`.
    pub success_rate: f64,
    /// `credits / allowed`: the average charge of a call that went through (0 when none did).
    pub avg_credits_per_call: f64,
}

/// Per-tool counters, dense by tool id.
pub(super) struct ToolsVisitor {
    acc: Vec<Counters>,
    touched: Vec<u32>,
}

impl ToolsVisitor {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            acc: vec![Counters::default(); slots],
            touched: Vec::new(),
        }
    }

    fn add(&mut self, tool: u32, c: &Counters) {
        // A tool first seen while the report runs: grow (ids stop at the tool limit).
        if tool as usize >= self.acc.len() {
            self.acc.resize(tool as usize + 1, Counters::default());
        }
        if let Some(a) = self.acc.get_mut(tool as usize) {
            if a.calls == 0 {
                self.touched.push(tool);
            }
            a.add(c);
        }
    }

    fn get(&self, tool: u32) -> Counters {
        self.acc.get(tool as usize).copied().unwrap_or_default()
    }
}

impl Visitor for ToolsVisitor {
    fn minute(&mut self, m: &MinuteBucket) -> usize {
        for (t, c) in &m.cells {
            self.add(*t, c);
        }
        m.cells.len()
    }
    fn rollup(&mut self, r: &Rollup) -> usize {
        for (t, c) in &r.tools {
            self.add(*t, c);
        }
        r.tools.len()
    }
}

impl ToolsVisitor {
    /// The tool rows of a report, by calls descending (ties by name, then id), each named by
    /// `tool_name`.
    pub(super) fn rows<'n>(&self, tool_name: &dyn Fn(u32) -> &'n str) -> Vec<ToolBreakdown> {
        let mut tool_ids: Vec<u32> = self.touched.clone();
        tool_ids.sort_unstable_by(|a, b| {
            let (ca, cb) = (self.get(*a), self.get(*b));
            cb.calls
                .cmp(&ca.calls)
                .then_with(|| tool_name(*a).cmp(tool_name(*b)))
                .then(a.cmp(b))
        });
        tool_ids
            .iter()
            .map(|&t| {
                let c = self.get(t);
                ToolBreakdown {
                    tool: tool_name(t).to_string(),
                    calls: c.calls,
                    allowed: c.allowed,
                    denied: c.denied(),
                    credits: c.credits,
                    success_rate: ratio(c.allowed, c.calls, 1.0),
                    avg_credits_per_call: ratio(c.credits, c.allowed, 0.0),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::analytics::test_support::{engine_at, ev, range, t};
    use crate::analytics::{Granularity, OTHER};

    #[test]
    fn tool_stats_success_rate_and_ordering() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:00Z");
        for _ in 0..3 {
            e.record(&ev(ts, "k1", "beta", 2, true));
        }
        e.record(&ev(ts, "k1", "beta", 0, false));
        for _ in 0..4 {
            e.record(&ev(ts, "k2", "alpha", 1, true));
        }
        for _ in 0..5 {
            e.record(&ev(ts, "k2", "gamma", 0, false));
        }
        let r = e
            .report(&range(
                "2026-03-01T00:00:00Z",
                "2026-03-02T00:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        let names: Vec<&str> = r.tools.iter().map(|t| t.tool.as_str()).collect();
        assert_eq!(names, ["gamma", "alpha", "beta"]); // calls desc, ties by name
        let beta = &r.tools[2];
        assert_eq!(
            (beta.calls, beta.allowed, beta.denied, beta.credits),
            (4, 3, 1, 6)
        );
        assert_eq!(beta.success_rate, 0.75);
        assert_eq!(beta.avg_credits_per_call, 2.0);
        let gamma = &r.tools[0];
        assert_eq!(gamma.success_rate, 0.0);
        assert_eq!(gamma.avg_credits_per_call, 0.0);
        assert_eq!(r.tools[1].success_rate, 1.0);
        assert_eq!(r.summary.unique_tools, 3);
        assert_eq!(r.summary.success_rate, 7.0 / 13.0);
    }

    #[test]
    fn many_tools_in_one_minute_keep_totals_exact() {
        let (_, e) = engine_at("2026-03-02T00:00:00Z");
        let ts = t("2026-03-01T10:00:30Z");
        for i in 0..300 {
            e.record(&ev(ts, "k1", &format!("tool-{i}"), 1, true));
        }
        // Minute-level query (unaligned) sees the cap; totals stay exact.
        let r = e
            .report(&range(
                "2026-03-01T10:00:00Z",
                "2026-03-01T10:01:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.summary.total_calls, 300);
        assert_eq!(r.tools.iter().map(|t| t.calls).sum::<u64>(), 300);
        assert_eq!(r.tools[0].tool, OTHER);
        // Hour-aligned query reads hour buckets: every tool by name.
        let r = e
            .report(&range(
                "2026-03-01T10:00:00Z",
                "2026-03-01T11:00:00Z",
                Granularity::Hourly,
            ))
            .unwrap();
        assert_eq!(r.tools.len(), 300);
    }
}
