//! The delivery queue: events waiting to be sent, bounded (the oldest dropped when it is
//! full), and the delivery counters kept with it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use super::MAX_BATCH_EVENTS;
use crate::meter::{AdminEvent, UsageEvent};

/// Delivery counters, in events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStats {
    /// Events the endpoint accepted (HTTP 2xx).
    pub delivered: u64,
    /// Events given up on: every attempt failed, or the endpoint refused the batch.
    pub failed: u64,
    /// Events dropped unsent because the queue was full or delivery had shut down.
    pub dropped: u64,
    /// Events queued or being delivered now.
    pub pending: usize,
}

#[derive(Debug, Clone)]
pub(super) enum Item {
    Usage(UsageEvent),
    Admin(AdminEvent),
}

pub(super) struct Shared {
    pub(super) queue: Mutex<VecDeque<Item>>,
    pub(super) wake: Notify,
    pub(super) max_queue: usize,
    pub(super) closed: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    pub(super) delivered: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) dropped: AtomicU64,
}

impl Shared {
    pub(super) fn push(&self, item: Item) {
        if self.closed.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let waiting = {
            let mut queue = self.queue.lock();
            while queue.len() >= self.max_queue {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(item);
            queue.len()
        };
        if waiting >= MAX_BATCH_EVENTS {
            self.wake.notify_one();
        }
    }

    pub(super) fn stats(&self) -> WebhookStats {
        let queue = self.queue.lock();
        WebhookStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            pending: queue.len() + self.in_flight.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::meter::EventSink;
    use crate::webhook::sink::WebhookSink;
    use crate::webhook::test_support::{admin, cfg, usage, Fake};
    use crate::webhook::transport::{AttemptFuture, Transport};

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_the_oldest() {
        // The endpoint never answers before the test ends.
        struct Stuck;
        impl Transport for Stuck {
            fn post(&self, _: Bytes, _: Option<String>) -> AttemptFuture<'_> {
                Box::pin(std::future::pending())
            }
        }
        let (sink, handle) = WebhookSink::start_with(cfg().with_max_queue(20), Stuck).unwrap();
        for i in 0..15 {
            sink.usage(&usage(i));
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // the first 10 are in flight
        for i in 15..40 {
            sink.usage(&usage(i));
        }
        let s = sink.stats();
        assert_eq!(s.pending, 30, "10 in flight + 20 queued");
        assert_eq!(s.dropped, 10);
        let queued: Vec<String> = sink
            .shared
            .queue
            .lock()
            .iter()
            .filter_map(|i| match i {
                Item::Usage(u) => Some(u.tool.clone()),
                Item::Admin(_) => None,
            })
            .collect();
        assert_eq!(queued.first().map(String::as_str), Some("t20"));
        assert_eq!(queued.last().map(String::as_str), Some("t39"));
        assert!(!handle.shutdown_within(Duration::from_secs(1)).await);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(handle.is_finished());
        sink.usage(&usage(99));
        assert_eq!(
            sink.stats().dropped,
            11,
            "events after shutdown are dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queued_events_are_bounded() {
        let (sink, handle) = WebhookSink::start_with(cfg(), Fake::default()).unwrap();
        let huge = "é".repeat(500_000); // 1 MB
        let mut u = usage(0);
        u.tool = huge.clone();
        u.key_name = huge.clone();
        u.deny_reason = Some(huge.clone());
        sink.usage(&u);
        let mut a = admin("key.created");
        a.data = json!({"name": huge, "tools": vec![huge.as_str(); 1_000]});
        sink.admin(&a);
        {
            let queue = sink.shared.queue.lock();
            let Some(Item::Usage(u)) = queue.front() else {
                panic!("a usage event first");
            };
            let max = crate::meter::MAX_EVENT_TEXT_BYTES;
            assert!(u.tool.len() <= max && u.tool.capacity() <= max);
            assert!(u.key_name.len() <= max);
            assert!(u.deny_reason.as_ref().is_some_and(|r| r.len() <= max));
            let Some(Item::Admin(a)) = queue.back() else {
                panic!("then the admin event");
            };
            let size = serde_json::to_string(&a.data).unwrap().len();
            assert!(size <= 8_192 + 2 * 1_024, "{size}");
        }
        handle.abort();
    }
}
