//! Creating a Stripe Checkout Session for a credit package (`POST /v1/checkout/sessions`,
//! form-encoded, with an `Idempotency-Key`). The session's metadata names the account by its
//! key id and the credits bought; the API key itself never goes to Stripe.

use std::time::Duration;

use crate::config::{CreditPackage, StripeSettings};
use crate::key::KeyId;

/// How long one call to Stripe may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from Stripe.
const MAX_ANSWER: usize = 256 * 1024;

/// A session to send the buyer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    /// Its id (`cs_...`).
    pub id: String,
    /// The hosted payment page.
    pub url: String,
}

/// Why no session was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    /// Stripe could not be reached or did not answer in time.
    #[error("the payment provider could not be reached")]
    Unreachable,
    /// Stripe refused the request (its message is logged, not shown).
    #[error("the payment provider refused the request")]
    Refused,
}

/// Talks to Stripe's API with the account's secret key.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    api_base: String,
    secret_key: String,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client for `settings` (`None` without a secret key).
    pub fn new(settings: &StripeSettings) -> Result<Option<Self>, String> {
        let Some(secret_key) = settings.secret_key.clone() else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Some(Self {
            http,
            api_base: settings.api_base.trim_end_matches('/').to_string(),
            secret_key,
        }))
    }

    /// Creates a one-time payment session for `package` bought by account `key_id`. A retry
    /// with the same `idempotency_key` gets the same session from Stripe.
    pub async fn create_session(
        &self,
        settings: &StripeSettings,
        package: &CreditPackage,
        key_id: &KeyId,
        idempotency_key: &str,
    ) -> Result<CheckoutSession, CheckoutError> {
        let success = settings.success_url.clone().unwrap_or_default();
        let cancel = settings
            .cancel_url
            .clone()
            .unwrap_or_else(|| success.clone());
        let (kid, credits) = (key_id.to_string(), package.credits.to_string());
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("mode", "payment")
            .append_pair("line_items[0][price]", &package.price_id)
            .append_pair("line_items[0][quantity]", "1")
            .append_pair("success_url", &success)
            .append_pair("cancel_url", &cancel)
            .append_pair("client_reference_id", &kid)
            .append_pair("metadata[paygate_key_id]", &kid)
            .append_pair("metadata[paygate_credits]", &credits)
            .append_pair("metadata[paygate_package]", &package.id)
            .finish();
        let url = format!("{}/v1/checkout/sessions", self.api_base);
        // One retry on a lost connection: the idempotency key makes it the same request.
        let mut last = CheckoutError::Unreachable;
        for _ in 0..2 {
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.secret_key)
                .header("Idempotency-Key", idempotency_key)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form.clone())
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::warn!(error = %without_url(&e), "Stripe checkout session not created");
                    continue;
                }
            };
            let status = resp.status();
            let body = match read_bounded(resp).await {
                Some(body) => body,
                None => continue,
            };
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if !status.is_success() {
                let message = doc.pointer("/error/message").and_then(|m| m.as_str());
                tracing::warn!(
                    status = status.as_u16(),
                    message,
                    "Stripe refused a checkout session"
                );
                last = CheckoutError::Refused;
                if status.is_server_error() {
                    continue;
                }
                return Err(CheckoutError::Refused);
            }
            let field = |name: &str| doc.get(name).and_then(|v| v.as_str()).map(str::to_string);
            return match (field("id"), field("url")) {
                (Some(id), Some(url))
                    if url.starts_with("https://") || url.starts_with("http://") =>
                {
                    Ok(CheckoutSession { id, url })
                }
                _ => {
                    tracing::warn!("Stripe answered a checkout session without id or url");
                    Err(CheckoutError::Refused)
                }
            };
        }
        Err(last)
    }
}

/// The body, or `None` past [`MAX_ANSWER`] or on a read error.
async fn read_bounded(mut resp: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// A transport error without its URL (which is only the API base, but logs stay plain).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<stripe>");
    }
    text
}
