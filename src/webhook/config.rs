//! [`WebhookConfig`]: where and how a webhook sink delivers, checked before it starts, and
//! [`WebhookError`]: why it could not start.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::WebhookSink;
use crate::clock::{SharedClock, SystemClock};
use crate::config::PayGateConfig;

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

    pub(super) fn validate(&self) -> Result<reqwest::Url, WebhookError> {
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::test_support::cfg;

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
}
