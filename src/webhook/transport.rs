//! How a batch travels: the `Transport` seam (HTTP in production, a fake in unit tests), the
//! outcome of one POST, and which HTTP statuses are worth a retry.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::SIGNATURE_HEADER;

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

pub(super) type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Attempt> + Send + 'a>>;

/// How a batch travels; HTTP in production, a fake in unit tests.
pub(super) trait Transport: Send + Sync + 'static {
    fn post(&self, body: Bytes, signature: Option<String>) -> AttemptFuture<'_>;
}

pub(super) struct HttpTransport {
    pub(super) client: reqwest::Client,
    pub(super) url: reqwest::Url,
    pub(super) timeout: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
