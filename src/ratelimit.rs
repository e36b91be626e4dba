//! Exact rolling-window rate limits.
//!
//! A limit of N means at most N allowed calls in any rolling 60 seconds: no fixed-minute
//! boundary that lets 2N through and no burst allowance. Each window is a ring of the
//! timestamps of the allowed calls still inside it, so a check is amortized O(1) and an idle
//! window holds nothing.

use std::collections::VecDeque;

/// Length of every rate window.
pub const WINDOW_MS: i64 = 60_000;

/// What the rate-limit headers report about one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Calls allowed per rolling minute.
    pub limit: u64,
    /// Calls still allowed now.
    pub remaining: u64,
    /// Whole seconds until the oldest call in the window leaves it (0 when empty).
    pub reset_secs: u64,
}

/// The timestamps of the allowed calls inside one rolling window.
///
/// ```
/// use paygate_mcp::RateWindow;
/// let mut w = RateWindow::default();
/// assert!(w.check(2, 0).is_ok());
/// w.record(0);
/// w.record(1_000);
/// assert_eq!(w.check(2, 30_000), Err(30)); // full: the first call leaves at 60 s
/// assert!(w.check(2, 60_000).is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateWindow {
    stamps: VecDeque<i64>,
}

impl RateWindow {
    fn prune(&mut self, now_ms: i64) {
        while self
            .stamps
            .front()
            .is_some_and(|&t| t <= now_ms - WINDOW_MS)
        {
            self.stamps.pop_front();
        }
        if self.stamps.is_empty() && self.stamps.capacity() > 0 {
            // Give idle windows' memory back.
            self.stamps = VecDeque::new();
        }
    }

    /// Whether one more call fits under `limit` at `now_ms`: `Ok` with the state the window
    /// would have after recording it, or `Err(retry_after_secs)` (at least 1).
    pub fn check(&mut self, limit: u64, now_ms: i64) -> Result<RateState, u64> {
        self.prune(now_ms);
        let used = self.stamps.len() as u64;
        if used >= limit {
            return Err(self.reset_secs(now_ms).max(1));
        }
        let reset = match self.stamps.front() {
            Some(_) => self.reset_secs(now_ms),
            None => (WINDOW_MS / 1000) as u64,
        };
        Ok(RateState {
            limit,
            remaining: limit - used - 1,
            reset_secs: reset,
        })
    }

    /// The window's state at `now_ms` without counting a call.
    pub fn state(&mut self, limit: u64, now_ms: i64) -> RateState {
        self.prune(now_ms);
        RateState {
            limit,
            remaining: limit.saturating_sub(self.stamps.len() as u64),
            reset_secs: self.reset_secs(now_ms),
        }
    }

    /// Counts an allowed call at `now_ms`.
    pub fn record(&mut self, now_ms: i64) {
        self.stamps.push_back(now_ms);
    }

    /// Whether no call is inside the window at `now_ms`.
    pub fn is_idle(&self, now_ms: i64) -> bool {
        self.stamps.back().is_none_or(|&t| t <= now_ms - WINDOW_MS)
    }

    fn reset_secs(&self, now_ms: i64) -> u64 {
        match self.stamps.front() {
            Some(&oldest) => {
                let ms = (oldest + WINDOW_MS - now_ms).max(0);
                (ms as u64).div_ceil(1000)
            }
            None => 0,
        }
    }
}

/// One key's windows: the global one and one per rate-limited tool.
#[derive(Debug, Default)]
pub(crate) struct KeyWindows {
    pub(crate) global: RateWindow,
    pub(crate) tools: Vec<(Box<str>, RateWindow)>,
}

impl KeyWindows {
    pub(crate) fn tool_mut(&mut self, tool: &str) -> &mut RateWindow {
        let at = match self.tools.iter().position(|(t, _)| &**t == tool) {
            Some(i) => i,
            None => {
                self.tools.push((tool.into(), RateWindow::default()));
                self.tools.len() - 1
            }
        };
        &mut self.tools[at].1
    }

    pub(crate) fn is_idle(&mut self, now_ms: i64) -> bool {
        self.tools.retain(|(_, w)| !w.is_idle(now_ms));
        self.global.is_idle(now_ms) && self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_fixed_minute_boundary_lets_double_through() {
        let mut w = RateWindow::default();
        // 3 calls at 59.9 s, then at 60.1 s (a new "minute") none may pass.
        for _ in 0..3 {
            assert!(w.check(3, 59_900).is_ok());
            w.record(59_900);
        }
        assert!(w.check(3, 60_100).is_err());
        assert!(w.check(3, 119_899).is_err());
        assert!(w.check(3, 119_900).is_ok());
    }

    #[test]
    fn any_rolling_minute_holds_at_most_n() {
        let mut w = RateWindow::default();
        let mut allowed = Vec::new();
        let mut t = 0;
        while t < 600_000 {
            if w.check(5, t).is_ok() {
                w.record(t);
                allowed.push(t);
            }
            t += 777;
        }
        for (i, &start) in allowed.iter().enumerate() {
            let in_window = allowed[i..]
                .iter()
                .take_while(|&&x| x < start + WINDOW_MS)
                .count();
            assert!(
                in_window <= 5,
                "{in_window} calls in the minute from {start}"
            );
        }
        assert!(allowed.len() >= 5 * 9);
    }

    #[test]
    fn retry_after_is_whole_seconds_until_oldest_leaves_at_least_one() {
        let mut w = RateWindow::default();
        w.record(1_000);
        assert_eq!(w.check(1, 1_000), Err(60));
        assert_eq!(w.check(1, 30_500), Err(31));
        assert_eq!(w.check(1, 60_999), Err(1));
        assert!(w.check(1, 61_000).is_ok());
    }

    #[test]
    fn remaining_and_reset_report_the_window() {
        let mut w = RateWindow::default();
        let s = w.check(3, 0).unwrap();
        assert_eq!((s.remaining, s.reset_secs), (2, 60));
        w.record(0);
        let s = w.state(3, 10_000);
        assert_eq!((s.remaining, s.reset_secs), (2, 50));
    }

    #[test]
    fn a_lowered_limit_applies_at_once_and_idle_windows_free_memory() {
        let mut w = RateWindow::default();
        for t in 0..10 {
            w.record(t);
        }
        assert!(w.check(5, 100).is_err());
        assert!(!w.is_idle(100));
        assert!(w.is_idle(60_009));
        assert!(w.check(5, 60_010).is_ok());
        assert_eq!(w.stamps.capacity(), 0);
    }

    #[test]
    fn key_windows_drop_idle_tools() {
        let mut k = KeyWindows::default();
        k.tool_mut("a").record(0);
        k.tool_mut("b").record(50_000);
        assert!(!k.is_idle(70_000));
        assert_eq!(k.tools.len(), 1);
        assert!(k.is_idle(110_000));
    }
}
