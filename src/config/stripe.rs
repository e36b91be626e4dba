//! The `stripe` section (SPEC §13): how money turns into credits. Stripe's webhook signing
//! secret verifies the events that credit keys; its secret key and the credit packages let
//! keys buy credits through Stripe Checkout.

use serde::{Deserialize, Serialize};

use crate::amount::MAX_AMOUNT;

/// Stripe's public API.
pub const STRIPE_API: &str = "https://api.stripe.com";

/// The `stripe` section of the config.
///
/// ```
/// use paygate_mcp::config::StripeSettings;
/// let s: StripeSettings = serde_json::from_str(r#"{
///     "webhookSecret": "whsec_0123456789",
///     "secretKey": "sk_test_0123456789",
///     "packages": [{"id": "starter", "credits": 500, "priceId": "price_123"}],
///     "successUrl": "https://mcp.example.com/paid"
/// }"#).unwrap();
/// assert_eq!(s.api_base, "https://api.stripe.com");
/// assert_eq!(s.check(), Ok(()));
/// assert_eq!(s.package("starter").unwrap().credits, 500);
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StripeSettings {
    /// The webhook endpoint's signing secret (`whsec_...`): `POST /stripe/webhook` is
    /// served when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// The account's secret API key (`sk_...`): `POST /checkout` is served when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// Where Stripe's API is (tests point it at a local server).
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// What can be bought.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<CreditPackage>,
    /// Where Checkout sends the buyer after paying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_url: Option<String>,
    /// Where Checkout sends a buyer who cancels (the success URL when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
}

/// Secrets stay out of logs.
impl std::fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("StripeSettings")
            .field("webhook_secret", &set(&self.webhook_secret))
            .field("secret_key", &set(&self.secret_key))
            .field("api_base", &self.api_base)
            .field("packages", &self.packages)
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .finish()
    }
}

/// Credits sold for one Stripe price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditPackage {
    /// Its name in `POST /checkout` (`{"package": "<id>"}`).
    pub id: String,
    /// Credits a purchase adds.
    pub credits: u64,
    /// The Stripe price charged (`price_...`).
    pub price_id: String,
}

fn default_api_base() -> String {
    STRIPE_API.to_string()
}

impl StripeSettings {
    /// The package `id`.
    pub fn package(&self, id: &str) -> Option<&CreditPackage> {
        self.packages.iter().find(|p| p.id == id)
    }

    /// Refuses settings that could not work, with the reason.
    pub fn check(&self) -> Result<(), String> {
        for (field, secret) in [
            ("webhookSecret", &self.webhook_secret),
            ("secretKey", &self.secret_key),
        ] {
            if secret
                .as_deref()
                .is_some_and(|s| s.trim().is_empty() || s.len() > 512)
            {
                return Err(format!("stripe.{field} is empty or too long"));
            }
        }
        if !super::secure_or_loopback(&self.api_base) {
            return Err("stripe.apiBase must be https (or http on a loopback host)".into());
        }
        let mut ids = std::collections::HashSet::new();
        for p in &self.packages {
            let id_ok = !p.id.is_empty()
                && p.id.len() <= 64
                && p.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !id_ok || !ids.insert(p.id.as_str()) {
                return Err(format!(
                    "stripe.packages: '{}' must be a unique id of 1 to 64 letters, digits, '-', '_' or '.'",
                    p.id.chars().take(64).collect::<String>()
                ));
            }
            if p.credits == 0 || p.credits > MAX_AMOUNT {
                return Err(format!(
                    "stripe.packages: '{}' must add 1 to {MAX_AMOUNT} credits",
                    p.id
                ));
            }
            if p.price_id.trim().is_empty() || p.price_id.len() > 255 {
                return Err(format!("stripe.packages: '{}' needs a priceId", p.id));
            }
        }
        for (field, url) in [
            ("successUrl", &self.success_url),
            ("cancelUrl", &self.cancel_url),
        ] {
            if url
                .as_deref()
                .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
            {
                return Err(format!("stripe.{field} must be an http(s) URL"));
            }
        }
        if self.secret_key.is_some() && (self.packages.is_empty() || self.success_url.is_none()) {
            return Err(
                "stripe.secretKey sells credits through Checkout: give packages and a successUrl too"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_or_incomplete_settings_are_refused() {
        let ok = StripeSettings {
            webhook_secret: Some("whsec_x".into()),
            ..StripeSettings::default()
        };
        let ok = StripeSettings {
            api_base: STRIPE_API.into(),
            ..ok
        };
        assert_eq!(ok.check(), Ok(()));
        let package = |id: &str, credits| CreditPackage {
            id: id.into(),
            credits,
            price_id: "price_1".into(),
        };
        for (bad, why) in [
            (
                StripeSettings {
                    api_base: "http://api.stripe.com".into(),
                    ..ok.clone()
                },
                "apiBase",
            ),
            (
                StripeSettings {
                    webhook_secret: Some(" ".into()),
                    ..ok.clone()
                },
                "webhookSecret",
            ),
            (
                StripeSettings {
                    packages: vec![package("a", 1), package("a", 2)],
                    ..ok.clone()
                },
                "unique",
            ),
            (
                StripeSettings {
                    packages: vec![package("a", 0)],
                    ..ok.clone()
                },
                "credits",
            ),
            (
                StripeSettings {
                    secret_key: Some("sk_test_1".into()),
                    ..ok.clone()
                },
                "successUrl",
            ),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let shown = format!(
            "{:?}",
            StripeSettings {
                secret_key: Some("sk_live_secret".into()),
                ..ok
            }
        );
        assert!(!shown.contains("sk_live_secret") && !shown.contains("whsec_x"));
    }
}
