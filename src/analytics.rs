//! Usage analytics (placeholder; full engine in progress).

use crate::clock::SharedClock;
use crate::meter::UsageEvent;

/// Pre-aggregated usage analytics.
pub struct AnalyticsEngine {
    _clock: SharedClock,
}

impl AnalyticsEngine {
    /// An empty engine.
    pub fn new(clock: SharedClock) -> Self {
        Self { _clock: clock }
    }

    /// Counts one event.
    pub fn record(&self, _event: &UsageEvent) {}
}
