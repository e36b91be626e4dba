//! [`WebhookSink`], the [`EventSink`] that queues events for delivery without ever waiting on
//! the network, and [`WebhookHandle`], which controls its delivery task.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

use super::config::{WebhookConfig, WebhookError};
use super::delivery::Worker;
use super::queue::{Item, Shared, WebhookStats};
use super::transport::{HttpTransport, Transport};
use super::WEBHOOK_ADMIN_EVENTS;
use crate::meter::{AdminEvent, EventSink, UsageEvent};

/// An [`EventSink`] that POSTs usage events and selected admin events to a webhook.
///
/// Created with [`WebhookSink::start`], which also spawns the delivery task on the current
/// tokio runtime and returns its [`WebhookHandle`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use paygate_mcp::{EventSink, Gate, PayGateConfig, WebhookConfig, WebhookSink};
///
/// let (sink, handle) = WebhookSink::start(
///     WebhookConfig::new("https://hooks.example.com/paygate").with_secret("s3cret"),
/// )?;
/// let _gate = Gate::new(PayGateConfig::default())?.with_event_sink(sink.clone());
/// // ... serve ...
/// handle.shutdown().await; // deliver what is still queued
/// println!("{:?}", sink.stats());
/// # Ok(()) }
/// ```
pub struct WebhookSink {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        // The delivery task sends what is left, then stops.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl WebhookSink {
    /// Validates `config` and spawns the delivery task on the current tokio runtime.
    ///
    /// Fails when the URL is not `http://` or `https://` with a host, a setting is out of
    /// range, the secret is empty, or there is no runtime.
    pub fn start(config: WebhookConfig) -> Result<(Arc<Self>, WebhookHandle), WebhookError> {
        let url = config.validate()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .user_agent(concat!("paygate-mcp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let transport = HttpTransport {
            client,
            url,
            timeout: config.timeout,
        };
        Self::start_with(config, transport)
    }

    pub(super) fn start_with<T: Transport>(
        config: WebhookConfig,
        transport: T,
    ) -> Result<(Arc<Self>, WebhookHandle), WebhookError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(config.max_queue.min(1_024))),
            wake: Notify::new(),
            max_queue: config.max_queue,
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            shared: shared.clone(),
            transport,
            config,
        };
        let task = runtime.spawn(worker.run(rx));
        let handle = WebhookHandle {
            commands: tx,
            abort: task.abort_handle(),
            shared: shared.clone(),
        };
        Ok((Arc::new(Self { shared }), handle))
    }

    /// Delivery counters.
    pub fn stats(&self) -> WebhookStats {
        self.shared.stats()
    }
}

impl EventSink for WebhookSink {
    /// Queues the event, its text cut to
    /// [`MAX_EVENT_TEXT_BYTES`](crate::meter::MAX_EVENT_TEXT_BYTES); never waits on the
    /// network.
    fn usage(&self, event: &UsageEvent) {
        self.shared.push(Item::Usage(event.bounded()));
    }

    /// Queues the event when its type is one of [`WEBHOOK_ADMIN_EVENTS`], its data cut
    /// to a few kilobytes.
    fn admin(&self, event: &AdminEvent) {
        if WEBHOOK_ADMIN_EVENTS.contains(&event.event_type.as_str()) {
            self.shared.push(Item::Admin(event.bounded()));
        }
    }
}

/// Controls a [`WebhookSink`]'s delivery task.
///
/// Dropping the handle leaves the task running; it stops after [`shutdown`](Self::shutdown),
/// [`abort`](Self::abort), or once every [`WebhookSink`] is dropped (after sending what is
/// left).
#[derive(Debug)]
pub struct WebhookHandle {
    commands: mpsc::UnboundedSender<Command>,
    abort: AbortHandle,
    shared: Arc<Shared>,
}

impl WebhookHandle {
    /// Delivers every event queued so far (retries included) before returning.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(Command::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Stops accepting events, delivers what is queued, and stops the task.
    ///
    /// If a batch fails every attempt during shutdown, the endpoint is taken to be down
    /// and the rest of the queue is counted as failed without further attempts. Events
    /// recorded afterwards are counted as dropped. To bound the wait, use
    /// [`shutdown_within`](Self::shutdown_within).
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// [`shutdown`](Self::shutdown), giving up after `limit`: then the task is aborted and
    /// whatever it had not sent stays pending. Returns whether shutdown completed in time.
    pub async fn shutdown_within(&self, limit: Duration) -> bool {
        let finished = tokio::time::timeout(limit, self.shutdown()).await.is_ok();
        if !finished {
            self.abort();
        }
        finished
    }

    /// Stops the task at once, sending nothing more. Later events are counted as dropped.
    pub fn abort(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.abort.abort();
    }

    /// Whether the delivery task has stopped.
    pub fn is_finished(&self) -> bool {
        self.abort.is_finished()
    }

    /// Delivery counters (the same as [`WebhookSink::stats`]).
    pub fn stats(&self) -> WebhookStats {
        self.shared.stats()
    }
}

pub(super) enum Command {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::test_support::{cfg, usage, Fake};

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        assert_eq!(
            WebhookSink::start(cfg()).err(),
            Some(WebhookError::NoRuntime)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_delivers_what_is_queued() {
        let fake = Fake::default();
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        for i in 0..3 {
            sink.usage(&usage(i));
        }
        handle.shutdown().await;
        assert_eq!(sink.stats().delivered, 3);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(handle.is_finished());
        handle.flush().await; // returns at once once the task is gone
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_sink_sends_the_rest_and_stops() {
        let fake = Fake::default();
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        sink.usage(&usage(0));
        drop(sink);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.posts.lock().len(), 1);
        assert!(handle.is_finished());
        assert_eq!(handle.stats().delivered, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_keeps_delivering() {
        let fake = Fake::default();
        let (sink, handle) = WebhookSink::start_with(cfg(), fake.clone()).unwrap();
        drop(handle);
        sink.usage(&usage(0));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(sink.stats().delivered, 1);
    }
}
