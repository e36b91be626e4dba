//! Webhooks: usage and admin events POSTed in batches to an HTTP(S) endpoint, signed with
//! HMAC-SHA256.
//!
//! `WebhookSink` (cargo feature `webhook`, on by default) is an [`EventSink`](crate::EventSink)
//! that queues every usage event and the admin events listed in [`WEBHOOK_ADMIN_EVENTS`], and
//! a background task delivers them as
//!
//! ```json
//! {"events": [ ...usage events... ], "adminEvents": [ ...admin events... ]}
//! ```
//!
//! with at most 10 events (both kinds together) per POST, sent as soon as 10 are waiting and
//! at least every 5 seconds. Failed POSTs (network errors, timeouts, HTTP 5xx, 408 and 429)
//! are retried with exponential backoff. The queue is bounded: when it is full the oldest
//! event is dropped and counted. Each queued event is bounded too: a usage event's text
//! fields are cut to [`MAX_EVENT_TEXT_BYTES`](crate::meter::MAX_EVENT_TEXT_BYTES) bytes and
//! an admin event's data to about 8 KiB, so the queue's memory is bounded whatever the
//! requests held. Recording an event never waits on the network, so a slow or
//! dead endpoint never slows or fails a tool call.
//!
//! When a secret is set, each POST carries
//! `X-PayGate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Receivers check it with [`verify_signature`], which is available without the `webhook`
//! feature.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying a webhook POST's signature.
pub const SIGNATURE_HEADER: &str = "X-PayGate-Signature";

/// The admin event types delivered by webhooks; other admin events are not sent.
pub const WEBHOOK_ADMIN_EVENTS: [&str; 6] = [
    "key.created",
    "key.topup",
    "key.revoked",
    "key.rotated",
    "key.expired",
    "alert.fired",
];

/// Most events (usage and admin together) in one webhook POST.
pub const MAX_BATCH_EVENTS: usize = 10;

/// Length of the hex HMAC-SHA256 in a signature.
const SIGNATURE_HEX_LEN: usize = 64;

fn mac_for(secret: &str, timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `X-PayGate-Signature` value for `body` sent at `unix_secs`:
/// `t=<unix_secs>,v1=<lowercase hex HMAC-SHA256(secret, "<unix_secs>.<body>")>`.
///
/// ```
/// use paygate_mcp::webhook::signature_header;
/// let h = signature_header("s3cret", 1_700_000_000, b"{}");
/// assert!(h.starts_with("t=1700000000,v1="));
/// assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
/// ```
pub fn signature_header(secret: &str, unix_secs: i64, body: &[u8]) -> String {
    let t = unix_secs.to_string();
    let hex = mac_for(secret, &t, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={t},v1={hex}")
}

/// Checks an `X-PayGate-Signature` header against the raw request body.
///
/// True only when the header is exactly `t=<digits>,v1=<64 lowercase hex digits>`, the
/// timestamp is within `tolerance_secs` of `now_unix` (either side), the secret is not empty,
/// and the HMAC matches. The HMAC is compared in constant time.
///
/// ```
/// use paygate_mcp::verify_signature;
/// use paygate_mcp::webhook::signature_header;
///
/// let body = br#"{"events":[],"adminEvents":[]}"#;
/// let header = signature_header("s3cret", 1_700_000_000, body);
/// assert!(verify_signature("s3cret", &header, body, 1_700_000_010, 300));
/// assert!(!verify_signature("wrong", &header, body, 1_700_000_010, 300));
/// assert!(!verify_signature("s3cret", &header, b"{}", 1_700_000_010, 300));
/// assert!(!verify_signature("s3cret", &header, body, 1_700_001_000, 300)); // too old
/// ```
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> bool {
    if secret.is_empty() || tolerance_secs < 0 {
        return false;
    }
    let Some((t_part, v_part)) = header.split_once(',') else {
        return false;
    };
    let (Some(t), Some(v1)) = (t_part.strip_prefix("t="), v_part.strip_prefix("v1=")) else {
        return false;
    };
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if v1.len() != SIGNATURE_HEX_LEN || !v1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return false;
    }
    let Ok(timestamp) = t.parse::<i64>() else {
        return false;
    };
    if timestamp.abs_diff(now_unix) > tolerance_secs.unsigned_abs() {
        return false;
    }
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    mac_for(secret, t, body).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
}

#[cfg(feature = "webhook")]
pub use sink::{WebhookConfig, WebhookError, WebhookHandle, WebhookSink, WebhookStats};

#[cfg(feature = "webhook")]
mod sink {
    use std::collections::VecDeque;
    use std::fmt;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use parking_lot::Mutex;
    use serde::Serialize;
    use tokio::sync::{mpsc, oneshot, Notify};
    use tokio::task::AbortHandle;
    use tokio::time::MissedTickBehavior;

    use super::{signature_header, MAX_BATCH_EVENTS, SIGNATURE_HEADER, WEBHOOK_ADMIN_EVENTS};
    use crate::clock::{SharedClock, SystemClock};
    use crate::config::PayGateConfig;
    use crate::meter::{AdminEvent, EventSink, UsageEvent};

    /// Longest flush interval or per-POST timeout accepted.
    const MAX_DURATION: Duration = Duration::from_secs(86_400);

    /// Where and how a [`WebhookSink`] delivers.
    ///
    /// ```
    /// use std::time::Duration;
    /// use paygate_mcp::WebhookConfig;
    /// let cfg = WebhookConfig::new("https://hooks.example.com/paygate")
    ///     .with_secret("s3cret")
    ///     .with_max_queue(50_000)
    ///     .with_timeout(Duration::from_secs(5));
    /// assert_eq!(cfg.flush_interval, Duration::from_secs(5));
    /// assert!(!format!("{cfg:?}").contains("s3cret"));
    /// ```
    #[derive(Clone)]
    pub struct WebhookConfig {
        /// The endpoint (`http://` or `https://`).
        pub url: String,
        /// Signs each POST with `X-PayGate-Signature` when set (must not be empty).
        pub secret: Option<String>,
        /// Longest an event waits before a POST is attempted (default 5 s).
        pub flush_interval: Duration,
        /// Time limit of one POST, connection included (default 10 s).
        pub timeout: Duration,
        /// Attempts per batch, the first included (default 5).
        pub max_attempts: u32,
        /// Wait before the first retry; doubles after each further failure (default 1 s).
        pub initial_backoff: Duration,
        /// Longest wait between two attempts (default 60 s).
        pub max_backoff: Duration,
        /// Most events waiting for delivery; beyond it the oldest are dropped (default 10,000).
        pub max_queue: usize,
        /// Source of the signature timestamps (default the system clock).
        pub clock: SharedClock,
    }

    impl fmt::Debug for WebhookConfig {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("WebhookConfig")
                .field("url", &self.url)
                .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
                .field("flush_interval", &self.flush_interval)
                .field("timeout", &self.timeout)
                .field("max_attempts", &self.max_attempts)
                .field("initial_backoff", &self.initial_backoff)
                .field("max_backoff", &self.max_backoff)
                .field("max_queue", &self.max_queue)
                .finish_non_exhaustive()
        }
    }

    impl WebhookConfig {
        /// Delivery to `url` with the defaults: no secret, flush every 5 s, 10 s per POST,
        /// 5 attempts from 1 s backoff, a queue of 10,000 events.
        pub fn new(url: impl Into<String>) -> Self {
            Self {
                url: url.into(),
                secret: None,
                flush_interval: Duration::from_secs(5),
                timeout: Duration::from_secs(10),
                max_attempts: 5,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
                max_queue: 10_000,
                clock: Arc::new(SystemClock),
            }
        }

        /// The gateway config's `webhookUrl` and `webhookSecret`; `None` without a URL.
        pub fn from_paygate(config: &PayGateConfig) -> Option<Self> {
            let url = config.webhook_url.as_ref()?;
            let mut cfg = Self::new(url.clone());
            cfg.secret = config.webhook_secret.clone();
            Some(cfg)
        }

        /// Sets the signing secret.
        pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
            self.secret = Some(secret.into());
            self
        }

        /// Sets the longest an event waits before a POST is attempted.
        pub fn with_flush_interval(mut self, every: Duration) -> Self {
            self.flush_interval = every;
            self
        }

        /// Sets the time limit of one POST.
        pub fn with_timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// Sets the attempts per batch and the first retry's backoff.
        pub fn with_retries(mut self, max_attempts: u32, initial_backoff: Duration) -> Self {
            self.max_attempts = max_attempts;
            self.initial_backoff = initial_backoff;
            self
        }

        /// Sets the most events waiting for delivery.
        pub fn with_max_queue(mut self, max_queue: usize) -> Self {
            self.max_queue = max_queue;
            self
        }

        /// Sets the clock the signature timestamps are read from.
        pub fn with_clock(mut self, clock: SharedClock) -> Self {
            self.clock = clock;
            self
        }

        fn validate(&self) -> Result<reqwest::Url, WebhookError> {
            let url = reqwest::Url::parse(&self.url)
                .map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(WebhookError::InvalidUrl(
                    "the scheme must be http or https".into(),
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(WebhookError::InvalidUrl("the URL has no host".into()));
            }
            if self.secret.as_deref() == Some("") {
                return Err(WebhookError::invalid("secret", "must not be empty"));
            }
            if self.flush_interval.is_zero() || self.flush_interval > MAX_DURATION {
                return Err(WebhookError::invalid(
                    "flush_interval",
                    "must be above 0 and at most a day",
                ));
            }
            if self.timeout.is_zero() || self.timeout > MAX_DURATION {
                return Err(WebhookError::invalid(
                    "timeout",
                    "must be above 0 and at most a day",
                ));
            }
            if self.max_attempts == 0 {
                return Err(WebhookError::invalid("max_attempts", "must be at least 1"));
            }
            if self.max_queue == 0 {
                return Err(WebhookError::invalid("max_queue", "must be at least 1"));
            }
            Ok(url)
        }
    }

    /// Why a [`WebhookSink`] could not start.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum WebhookError {
        /// The URL does not parse, or is not http/https with a host.
        #[error("invalid webhook URL: {0}")]
        InvalidUrl(String),
        /// A setting is out of range.
        #[error("invalid webhook setting {field}: {reason}")]
        InvalidConfig {
            /// The setting.
            field: &'static str,
            /// What is wrong with it.
            reason: &'static str,
        },
        /// The HTTP client could not be built.
        #[error("webhook HTTP client: {0}")]
        Client(String),
        /// `start` was called outside a tokio runtime.
        #[error("webhook delivery needs a running tokio runtime")]
        NoRuntime,
    }

    impl WebhookError {
        fn invalid(field: &'static str, reason: &'static str) -> Self {
            Self::InvalidConfig { field, reason }
        }
    }

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
    enum Item {
        Usage(UsageEvent),
        Admin(AdminEvent),
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload<'a> {
        events: Vec<&'a UsageEvent>,
        admin_events: Vec<&'a AdminEvent>,
    }

    struct Shared {
        queue: Mutex<VecDeque<Item>>,
        wake: Notify,
        max_queue: usize,
        closed: AtomicBool,
        in_flight: AtomicUsize,
        delivered: AtomicU64,
        failed: AtomicU64,
        dropped: AtomicU64,
    }

    impl Shared {
        fn push(&self, item: Item) {
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

        fn stats(&self) -> WebhookStats {
            let queue = self.queue.lock();
            WebhookStats {
                delivered: self.delivered.load(Ordering::Relaxed),
                failed: self.failed.load(Ordering::Relaxed),
                dropped: self.dropped.load(Ordering::Relaxed),
                pending: queue.len() + self.in_flight.load(Ordering::Relaxed),
            }
        }
    }

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
        shared: Arc<Shared>,
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

        fn start_with<T: Transport>(
            config: WebhookConfig,
            transport: T,
        ) -> Result<(Arc<Self>, WebhookHandle), WebhookError> {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
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

    impl fmt::Debug for Shared {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Shared")
                .field("stats", &self.stats())
                .finish()
        }
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

    enum Command {
        Flush(oneshot::Sender<()>),
        Shutdown(oneshot::Sender<()>),
    }

    /// The outcome of one POST.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Attempt {
        /// The endpoint accepted the batch.
        Delivered,
        /// Worth trying again (network error, timeout, 5xx, 408, 429).
        Retry,
        /// The endpoint refused the batch for good (another status).
        Refused,
    }

    type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Attempt> + Send + 'a>>;

    /// How a batch travels; HTTP in production, a fake in unit tests.
    pub(super) trait Transport: Send + Sync + 'static {
        fn post(&self, body: Bytes, signature: Option<String>) -> AttemptFuture<'_>;
    }

    struct HttpTransport {
        client: reqwest::Client,
        url: reqwest::Url,
        timeout: Duration,
    }

    impl Transport for HttpTransport {
        fn post(&self, body: Bytes, signature: Option<String>) -> AttemptFuture<'_> {
            Box::pin(async move {
                let mut request = self
                    .client
                    .post(self.url.clone())
                    .timeout(self.timeout)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body);
                if let Some(signature) = signature {
                    request = request.header(SIGNATURE_HEADER, signature);
                }
                match request.send().await {
                    Ok(response) => classify(response.status()),
                    Err(e) if e.is_builder() => Attempt::Refused,
                    Err(_) => Attempt::Retry,
                }
            })
        }
    }

    pub(super) fn classify(status: http::StatusCode) -> Attempt {
        if status.is_success() {
            Attempt::Delivered
        } else if status.is_server_error()
            || status == http::StatusCode::TOO_MANY_REQUESTS
            || status == http::StatusCode::REQUEST_TIMEOUT
        {
            Attempt::Retry
        } else {
            Attempt::Refused
        }
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

    struct Worker<T> {
        shared: Arc<Shared>,
        transport: T,
        config: WebhookConfig,
    }

    impl<T: Transport> Worker<T> {
        async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
        use super::*;
        use crate::clock::ManualClock;
        use crate::webhook::verify_signature;
        use serde_json::{json, Value};
        use tokio::time::Instant;

        /// When, what (parsed), signature, raw body.
        type Post = (Instant, Value, Option<String>, Bytes);

        /// Answers each POST from a script (then `Delivered`) and records what it got.
        #[derive(Clone, Default)]
        struct Fake {
            script: Arc<Mutex<VecDeque<Attempt>>>,
            posts: Arc<Mutex<Vec<Post>>>,
        }

        impl Fake {
            fn scripted(answers: &[Attempt]) -> Self {
                let fake = Self::default();
                fake.script.lock().extend(answers.iter().copied());
                fake
            }
            fn bodies(&self) -> Vec<Value> {
                self.posts.lock().iter().map(|p| p.1.clone()).collect()
            }
        }

        impl Transport for Fake {
            fn post(&self, body: Bytes, signature: Option<String>) -> AttemptFuture<'_> {
                Box::pin(async move {
                    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    self.posts
                        .lock()
                        .push((Instant::now(), value, signature, body));
                    self.script.lock().pop_front().unwrap_or(Attempt::Delivered)
                })
            }
        }

        fn usage(i: usize) -> UsageEvent {
            UsageEvent {
                timestamp: crate::clock::ms_to_datetime(1_767_225_600_000),
                api_key: "pg_1234...abcd".into(),
                key_name: "alice".into(),
                tool: format!("t{i}"),
                credits_charged: 1,
                allowed: true,
                deny_reason: None,
                duration_ms: None,
            }
        }

        fn admin(t: &str) -> AdminEvent {
            AdminEvent {
                event_type: t.into(),
                timestamp: crate::clock::ms_to_datetime(1_767_225_600_000),
                data: json!({"keyMasked": "pg_1234...abcd"}),
            }
        }

        fn cfg() -> WebhookConfig {
            WebhookConfig::new("http://127.0.0.1:9/hook")
        }

        #[test]
        fn config_is_validated() {
            let bad = |c: WebhookConfig| c.validate().err();
            assert!(cfg().validate().is_ok());
            assert!(WebhookConfig::new("https://example.com").validate().is_ok());
            for url in [
                "ftp://x.example",
                "x.example/hook",
                "",
                "http://",
                "file:///etc/passwd",
            ] {
                assert!(
                    matches!(
                        bad(WebhookConfig::new(url)),
                        Some(WebhookError::InvalidUrl(_))
                    ),
                    "{url}"
                );
            }
            assert_eq!(
                bad(cfg().with_secret("")),
                Some(WebhookError::invalid("secret", "must not be empty"))
            );
            assert!(bad(cfg().with_max_queue(0)).is_some());
            assert!(bad(cfg().with_timeout(Duration::ZERO)).is_some());
            assert!(bad(cfg().with_flush_interval(Duration::ZERO)).is_some());
            assert!(bad(cfg().with_flush_interval(Duration::MAX)).is_some());
            assert!(bad(cfg().with_timeout(Duration::MAX)).is_some());
            assert!(bad(cfg().with_retries(0, Duration::ZERO)).is_some());
        }

        #[test]
        fn start_outside_a_runtime_is_an_error() {
            assert_eq!(
                WebhookSink::start(cfg()).err(),
                Some(WebhookError::NoRuntime)
            );
        }

        #[test]
        fn config_from_the_gateway_config() {
            assert!(WebhookConfig::from_paygate(&PayGateConfig::default()).is_none());
            let pc = PayGateConfig {
                webhook_url: Some("https://h.example/x".into()),
                webhook_secret: Some("s".into()),
                ..PayGateConfig::default()
            };
            let wc = WebhookConfig::from_paygate(&pc).unwrap();
            assert_eq!(wc.url, "https://h.example/x");
            assert_eq!(wc.secret.as_deref(), Some("s"));
        }

        #[test]
        fn retryable_statuses() {
            use http::StatusCode as S;
            assert_eq!(classify(S::OK), Attempt::Delivered);
            assert_eq!(classify(S::NO_CONTENT), Attempt::Delivered);
            for s in [
                S::INTERNAL_SERVER_ERROR,
                S::SERVICE_UNAVAILABLE,
                S::TOO_MANY_REQUESTS,
            ] {
                assert_eq!(classify(s), Attempt::Retry);
            }
            assert_eq!(classify(S::REQUEST_TIMEOUT), Attempt::Retry);
            for s in [
                S::BAD_REQUEST,
                S::UNAUTHORIZED,
                S::NOT_FOUND,
                S::MOVED_PERMANENTLY,
            ] {
                assert_eq!(classify(s), Attempt::Refused);
            }
        }

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
                    b["events"].as_array().unwrap().len()
                        + b["adminEvents"].as_array().unwrap().len()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn signatures_round_trip() {
        let body = br#"{"events":[],"adminEvents":[]}"#;
        let h = signature_header("k", NOW, body);
        assert!(verify_signature("k", &h, body, NOW, 0));
        assert!(verify_signature("k", &h, body, NOW + 300, 300));
        assert!(verify_signature("k", &h, body, NOW - 300, 300));
        assert!(!verify_signature("k", &h, body, NOW + 301, 300));
        assert!(!verify_signature("k", &h, body, NOW - 301, 300));
        assert!(!verify_signature("K", &h, body, NOW, 300));
        assert!(!verify_signature("k", &h, b"{}", NOW, 300));
        assert!(!verify_signature("k", &h, body, NOW, -1));
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256(key "secret", "1700000000.{}"), computed with another implementation.
        assert_eq!(
            signature_header("secret", NOW, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn the_header_is_parsed_strictly() {
        let body = b"payload";
        let good = signature_header("k", NOW, body);
        let v1 = &good["t=1700000000,v1=".len()..];
        let upper = v1.to_uppercase();
        let bad = [
            String::new(),
            "t=1700000000".to_string(),
            format!("v1={v1},t=1700000000"),
            format!("t=1700000000,v1={v1},"),
            format!("t=1700000000,v1={v1},v1={v1}"),
            format!(" t=1700000000,v1={v1}"),
            format!("t=1700000000, v1={v1}"),
            format!("t= 1700000000,v1={v1}"),
            format!("t=+1700000000,v1={v1}"),
            format!("t=-1700000000,v1={v1}"),
            format!("t=,v1={v1}"),
            format!("t=1700000000,v1={upper}"),
            format!("t=1700000000,v1={}", &v1[..63]),
            format!("t=1700000000,v1={v1}0"),
            format!("t=1700000000,v0={v1}"),
            format!("t=99999999999999999999999,v1={v1}"),
            format!("t=1700000000,v1={}", "g".repeat(64)),
            format!("t=1700000000,v1={}é", &v1[..62]),
        ];
        for header in &bad {
            assert!(!verify_signature("k", header, body, NOW, 300), "{header:?}");
        }
        assert!(verify_signature("k", &good, body, NOW, 300));
    }

    #[test]
    fn an_empty_secret_never_verifies() {
        let h = signature_header("", NOW, b"x");
        assert!(!verify_signature("", &h, b"x", NOW, 300));
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let h = signature_header("k", 0, b"x");
        assert!(!verify_signature("k", &h, b"x", i64::MAX, i64::MAX - 1));
        assert!(verify_signature("k", &h, b"x", i64::MAX, i64::MAX));
        assert!(!verify_signature("k", &h, b"x", i64::MIN, 300));
    }
}
