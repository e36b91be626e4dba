//! Delivery: the background task that sends queued events in batches of at most ten, at
//! least every flush interval, retrying failed POSTs with exponential backoff, signing each
//! attempt, and the JSON payload of a batch (full API keys masked).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::config::WebhookConfig;
use super::queue::{Item, Shared};
use super::sink::Command;
use super::transport::{Attempt, Transport};
use super::{signature_header, MAX_BATCH_EVENTS};
use crate::meter::{AdminEvent, UsageEvent};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    events: Vec<&'a UsageEvent>,
    admin_events: Vec<&'a AdminEvent>,
}

/// The wait before attempt `attempt + 1`, after `attempt` failures (1-based).
pub(super) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    initial.saturating_mul(factor).min(max)
}

/// Serializes a batch, masking anything that looks like a full API key.
fn encode(batch: &[Item]) -> Option<Bytes> {
    let mut payload = Payload {
        events: Vec::new(),
        admin_events: Vec::new(),
    };
    for item in batch {
        match item {
            Item::Usage(e) => payload.events.push(e),
            Item::Admin(e) => payload.admin_events.push(e),
        }
    }
    let json = serde_json::to_string(&payload).ok()?;
    Some(Bytes::from(
        crate::key::redact_full_keys(&json).into_owned(),
    ))
}

pub(super) struct Worker<T> {
    pub(super) shared: Arc<Shared>,
    pub(super) transport: T,
    pub(super) config: WebhookConfig,
}

impl<T: Transport> Worker<T> {
    pub(super) async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let every = self.config.flush_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                self.drain(true).await;
                // Answer a shutdown or flush that raced with the close.
                while let Ok(command) = commands.try_recv() {
                    let (Command::Flush(ack) | Command::Shutdown(ack)) = command;
                    let _ = ack.send(());
                }
                return;
            }
            if self.shared.queue.lock().len() >= MAX_BATCH_EVENTS {
                self.send_next_batch().await;
                continue;
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tick.tick() => self.drain(false).await,
                command = commands.recv(), if commands_open => match command {
                    Some(Command::Flush(ack)) => {
                        self.drain(false).await;
                        let _ = ack.send(());
                    }
                    Some(Command::Shutdown(ack)) => {
                        self.shared.closed.store(true, Ordering::Release);
                        self.drain(true).await;
                        let _ = ack.send(());
                        return;
                    }
                    None => commands_open = false,
                },
            }
        }
    }

    /// Sends every event queued now. When `closing`, a batch that fails every attempt
    /// (the endpoint looks down) ends the drain: the rest is counted as failed.
    async fn drain(&self, closing: bool) {
        let mut remaining = self.shared.queue.lock().len();
        while remaining > 0 {
            let (sent, outcome) = self.send_next_batch().await;
            if sent == 0 {
                return;
            }
            remaining = remaining.saturating_sub(sent);
            if closing && outcome == Attempt::Retry {
                let mut queue = self.shared.queue.lock();
                self.shared
                    .failed
                    .fetch_add(queue.len() as u64, Ordering::Relaxed);
                queue.clear();
                return;
            }
        }
    }

    /// Takes up to 10 events off the queue and delivers them. Returns how many were taken
    /// and the last attempt's outcome (`Retry` when every attempt failed).
    async fn send_next_batch(&self) -> (usize, Attempt) {
        let batch: Vec<Item> = {
            let mut queue = self.shared.queue.lock();
            let n = queue.len().min(MAX_BATCH_EVENTS);
            self.shared.in_flight.store(n, Ordering::Relaxed);
            queue.drain(..n).collect()
        };
        let n = batch.len();
        if n == 0 {
            return (0, Attempt::Delivered);
        }
        let outcome = self.deliver(&batch).await;
        let counter = if outcome == Attempt::Delivered {
            &self.shared.delivered
        } else {
            tracing::warn!(events = n, "webhook delivery failed; events given up on");
            &self.shared.failed
        };
        // Under the queue lock, so `stats` never counts a batch twice or not at all.
        let _queue = self.shared.queue.lock();
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.shared.in_flight.store(0, Ordering::Relaxed);
        (n, outcome)
    }

    /// Posts one batch, retrying as configured.
    async fn deliver(&self, batch: &[Item]) -> Attempt {
        let Some(body) = encode(batch) else {
            return Attempt::Refused;
        };
        let attempts = self.config.max_attempts.max(1);
        for attempt in 1..=attempts {
            let signature = self.config.secret.as_deref().map(|secret| {
                let unix = self.config.clock.now_ms().div_euclid(1_000);
                signature_header(secret, unix, &body)
            });
            match self.transport.post(body.clone(), signature).await {
                Attempt::Delivered => return Attempt::Delivered,
                Attempt::Refused => return Attempt::Refused,
                Attempt::Retry if attempt < attempts => {
                    let wait = backoff(
                        self.config.initial_backoff,
                        self.config.max_backoff,
                        attempt,
                    );
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry => {}
            }
        }
        Attempt::Retry
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tokio::time::Instant;

    use super::*;
    use crate::clock::ManualClock;
    use crate::meter::EventSink;
    use crate::webhook::sink::WebhookSink;
    use crate::webhook::test_support::{admin, cfg, usage, Fake};
    use crate::webhook::{verify_signature, WebhookStats};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<Duration> = (1..=8).map(|a| backoff(s(1), s(60), a)).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(8), s(16), s(32), s(60), s(60)]);
        assert_eq!(backoff(s(1), s(60), u32::MAX), s(60));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_hold_at_most_ten_and_are_sent_once_ten_wait() {
        let fake = Fake::default();
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        for i in 0..23 {
            sink.usage(&usage(i));
        }
        sink.admin(&admin("key.created"));
        sink.admin(&admin("key.acl_updated")); // not a webhook event
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.posts.lock().len(), 2, "two full batches go at once");
        assert_eq!(sink.stats().pending, 4);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let bodies = fake.bodies();
        assert_eq!(bodies.len(), 3, "the rest goes within the flush interval");
        let sizes: Vec<usize> = bodies
            .iter()
            .map(|b| {
                b["events"].as_array().unwrap().len() + b["adminEvents"].as_array().unwrap().len()
            })
            .collect();
        assert_eq!(sizes, [10, 10, 4]);
        assert_eq!(bodies[2]["adminEvents"][0]["type"], "key.created");
        assert_eq!(bodies[0]["adminEvents"], json!([]));
        assert_eq!(
            sink.stats(),
            WebhookStats {
                delivered: 24,
                failed: 0,
                dropped: 0,
                pending: 0
            }
        );
        handle.shutdown().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(handle.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_exponentially_then_give_up() {
        let fake = Fake::scripted(&[Attempt::Retry; 5]);
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        sink.usage(&usage(0));
        handle.flush().await;
        let times: Vec<Instant> = fake.posts.lock().iter().map(|p| p.0).collect();
        let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [1, 2, 4, 8]);
        assert_eq!(sink.stats().failed, 1);
        assert_eq!(sink.stats().delivered, 0);

        // The next batch starts afresh and succeeds after one retry.
        fake.script.lock().push_back(Attempt::Retry);
        sink.usage(&usage(1));
        handle.flush().await;
        assert_eq!(fake.posts.lock().len(), 7);
        assert_eq!(sink.stats().delivered, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_not_retried() {
        let fake = Fake::scripted(&[Attempt::Refused]);
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        sink.usage(&usage(0));
        handle.flush().await;
        assert_eq!(fake.posts.lock().len(), 1);
        assert_eq!(sink.stats().failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn signatures_read_the_clock_at_send_time() {
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let fake = Fake::scripted(&[Attempt::Retry]);
        let config = cfg().with_secret("s3cret").with_clock(clock.clone());
        let (sink, handle) = WebhookSink::start_with(config, fake.clone()).unwrap();
        sink.usage(&usage(0));
        handle.flush().await;
        clock.advance_secs(100);
        sink.usage(&usage(1));
        handle.flush().await;
        let posts = fake.posts.lock().clone();
        assert_eq!(posts.len(), 3);
        for (_, _, signature, body) in &posts {
            let signature = signature.as_deref().unwrap();
            assert!(verify_signature(
                "s3cret",
                signature,
                body,
                1_700_000_000,
                300
            ));
        }
        let last = posts[2].2.as_deref().unwrap();
        assert!(last.starts_with("t=1700000100,"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_secret_nothing_is_signed() {
        let fake = Fake::default();
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        sink.usage(&usage(0));
        handle.flush().await;
        assert_eq!(fake.posts.lock()[0].2, None);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_against_a_dead_endpoint_gives_up_after_one_batch() {
        let fake = Fake::scripted(&[Attempt::Retry; 100]);
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        for i in 0..35 {
            sink.usage(&usage(i));
        }
        handle.shutdown().await;
        let s = sink.stats();
        assert_eq!(s.failed, 35);
        assert_eq!(s.pending, 0);
        // One batch, 5 attempts; the rest is written off without trying.
        assert_eq!(fake.posts.lock().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_does_not_end_a_shutdown_drain() {
        let fake = Fake::scripted(&[Attempt::Refused]);
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        for i in 0..15 {
            sink.usage(&usage(i));
        }
        handle.shutdown().await;
        let s = sink.stats();
        assert_eq!((s.failed, s.delivered), (10, 5));
        assert_eq!(fake.posts.lock().len(), 2);
    }

    #[test]
    fn full_keys_never_leave_in_a_payload() {
        let key = format!("pg_{}", "0123456789ab".repeat(4));
        let mut leaky = admin("key.created");
        leaky.data = json!({"key": key});
        let body = encode(&[Item::Admin(leaky)]).unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains(&key));
        assert!(text.contains(&crate::key::mask_key(&key)));
    }

    #[test]
    fn payload_shape() {
        let body = encode(&[Item::Usage(usage(0)), Item::Admin(admin("key.topup"))]).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"][0]["tool"], "t0");
        assert_eq!(v["events"][0]["apiKey"], "pg_1234...abcd");
        assert_eq!(v["adminEvents"][0]["type"], "key.topup");
        let empty: Value = serde_json::from_slice(&encode(&[]).unwrap()).unwrap();
        assert_eq!(empty, json!({"events": [], "adminEvents": []}));
    }
}
