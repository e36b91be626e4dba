//! Time, injected.
//!
//! Every time-dependent rule in the crate (rate windows, quota rollover, expiry, alert
//! cooldowns, analytics buckets) reads the time through a [`Clock`], so tests move time with
//! a [`ManualClock`] instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

/// A source of the current time, in milliseconds since the Unix epoch (UTC).
///
/// ```
/// use paygate_mcp::{Clock, SystemClock};
/// assert!(SystemClock.now_ms() > 1_700_000_000_000);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> i64;

    /// The current time as a `DateTime<Utc>`.
    fn now(&self) -> DateTime<Utc> {
        ms_to_datetime(self.now_ms())
    }
}

/// A shared, type-erased clock, as held by the gate and its engines.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
///
/// ```
/// use paygate_mcp::{Clock, SystemClock};
/// let a = SystemClock.now_ms();
/// assert!(SystemClock.now_ms() >= a);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to; for tests and simulations.
///
/// ```
/// use paygate_mcp::{Clock, ManualClock};
/// let clock = ManualClock::at_ms(1_000);
/// clock.advance_ms(500);
/// assert_eq!(clock.now_ms(), 1_500);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicI64,
}

impl ManualClock {
    /// A clock stopped at `ms` milliseconds since the epoch.
    pub fn at_ms(ms: i64) -> Self {
        Self {
            ms: AtomicI64::new(ms),
        }
    }

    /// A clock stopped at an RFC 3339 instant; `None` when the text is not one.
    ///
    /// ```
    /// use paygate_mcp::{Clock, ManualClock};
    /// let clock = ManualClock::at_rfc3339("2026-03-31T23:59:59Z").unwrap();
    /// assert_eq!(clock.now().to_rfc3339(), "2026-03-31T23:59:59+00:00");
    /// ```
    pub fn at_rfc3339(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Self::at_ms(t.timestamp_millis()))
    }

    /// Moves the clock forward (or back, with a negative value) by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by whole seconds.
    pub fn advance_secs(&self, secs: i64) {
        self.advance_ms(secs.saturating_mul(1000));
    }

    /// Sets the clock to `ms` milliseconds since the epoch.
    pub fn set_ms(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// Converts epoch milliseconds to a `DateTime<Utc>`, clamping values chrono cannot represent.
pub fn ms_to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The UTC day number (days since 1970-01-01) that `ms` falls in.
pub(crate) fn utc_day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The UTC month number (`year * 12 + month0`) that `ms` falls in.
pub(crate) fn utc_month(ms: i64) -> i64 {
    use chrono::Datelike;
    let t = ms_to_datetime(ms);
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_and_month_roll_over_at_utc_boundaries() {
        let before = ManualClock::at_rfc3339("2026-01-31T23:59:59.999Z").unwrap();
        let after = ManualClock::at_rfc3339("2026-02-01T00:00:00Z").unwrap();
        assert_eq!(utc_day(after.now_ms()) - utc_day(before.now_ms()), 1);
        assert_eq!(utc_month(after.now_ms()) - utc_month(before.now_ms()), 1);
        let dec = ManualClock::at_rfc3339("2025-12-31T12:00:00Z").unwrap();
        let jan = ManualClock::at_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(utc_month(jan.now_ms()) - utc_month(dec.now_ms()), 1);
    }

    #[test]
    fn days_before_the_epoch_floor() {
        assert_eq!(utc_day(-1), -1);
        assert_eq!(utc_day(0), 0);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_ms(10);
        assert_eq!(c.now_ms(), 10);
        c.advance_secs(2);
        assert_eq!(c.now_ms(), 2_010);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
    }
}
