//! The `oauth.jwt` section: an external identity provider whose JWT access tokens the
//! gateway accepts (SPEC §12). The checks here need no crypto; validating tokens is
//! `oauth::jwt`'s (cargo feature `jwt`).

use serde::{Deserialize, Serialize};

/// The algorithms accepted when `algorithms` is not configured: every public-key algorithm
/// the verifier supports.
pub const DEFAULT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The `oauth.jwt` section of the config: which identity provider issues the access tokens
/// the gateway accepts and how a token names its account.
///
/// ```
/// use paygate_mcp::config::JwtSettings;
/// let settings: JwtSettings = serde_json::from_str(r#"{
///     "issuer": "https://id.example.com/",
///     "jwksUri": "https://id.example.com/.well-known/jwks.json",
///     "audiences": ["https://mcp.example.com/mcp"],
///     "autoProvision": {"credits": 100}
/// }"#).unwrap();
/// assert_eq!(settings.account_claim, "sub");
/// assert!(settings.algorithms.iter().any(|a| a == "RS256"));
/// assert_eq!(settings.check(), Ok(()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry, compared exactly (a trailing `/` matters).
    pub issuer: String,
    /// Where the provider publishes its signing keys: `https://`, or `http://` on a
    /// loopback host.
    pub jwks_uri: String,
    /// Accepted `aud` values; a token's `aud` must contain one of them. Empty means the
    /// protected resource URL the validator is built with.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The claim whose string value names the account (`sub` unless set).
    #[serde(default = "default_account_claim")]
    pub account_claim: String,
    /// The signing algorithms accepted (JWA names).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// When set, a valid token whose account has no key yet gets one with these credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_provision: Option<AutoProvision>,
}

/// What a key created for a new account on its first valid token starts with.
///
/// ```
/// use paygate_mcp::config::AutoProvision;
/// let a: AutoProvision = serde_json::from_str(r#"{"credits": 50}"#).unwrap();
/// assert_eq!(a.credits, 50);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoProvision {
    /// The new key's credits.
    pub credits: u64,
}

fn default_account_claim() -> String {
    "sub".to_string()
}

fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.iter().map(|a| a.to_string()).collect()
}

impl JwtSettings {
    /// Settings with the defaults: audience the protected resource, account claim `sub`,
    /// the default algorithms, no auto-provisioning.
    ///
    /// ```
    /// use paygate_mcp::config::JwtSettings;
    /// let s = JwtSettings::new("https://id.example.com/", "https://id.example.com/jwks");
    /// assert!(s.audiences.is_empty());
    /// assert_eq!(s.check(), Ok(()));
    /// ```
    pub fn new(issuer: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri: jwks_uri.into(),
            audiences: Vec::new(),
            account_claim: default_account_claim(),
            algorithms: default_algorithms(),
            auto_provision: None,
        }
    }

    /// Refuses settings that would accept forged or misdirected tokens, with the reason.
    ///
    /// ```
    /// use paygate_mcp::config::JwtSettings;
    /// let mut s = JwtSettings::new("https://id.example.com/", "https://id.example.com/jwks");
    /// s.algorithms = vec!["HS256".into()];
    /// assert!(s.check().unwrap_err().contains("HS256"));
    /// s.algorithms = vec!["RS256".into()];
    /// s.jwks_uri = "http://id.example.com/jwks".into();
    /// assert!(s.check().unwrap_err().contains("jwksUri"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        if self.issuer.trim().is_empty() {
            return Err("oauth.jwt.issuer is empty".to_string());
        }
        if !uri_is_acceptable(&self.jwks_uri) {
            return Err(
                "oauth.jwt.jwksUri must be an https:// URL (or http:// on a loopback host) \
                 without credentials in it"
                    .to_string(),
            );
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err("oauth.jwt.audiences has an empty entry".to_string());
        }
        if self.account_claim.trim().is_empty() {
            return Err("oauth.jwt.accountClaim is empty".to_string());
        }
        if self.algorithms.is_empty() {
            return Err("oauth.jwt.algorithms is empty: no token could be accepted".to_string());
        }
        for name in &self.algorithms {
            check_algorithm(name)?;
        }
        Ok(())
    }
}

/// One configured algorithm name, refused when it is not a public-key signature algorithm.
fn check_algorithm(name: &str) -> Result<(), String> {
    if name.eq_ignore_ascii_case("none") {
        return Err(
            "oauth.jwt.algorithms: 'none' would accept unsigned tokens; it is never allowed"
                .to_string(),
        );
    }
    if name.len() >= 2 && name[..2].eq_ignore_ascii_case("HS") {
        return Err(format!(
            "oauth.jwt.algorithms: '{name}' is not supported: an HMAC key is a shared secret, \
             not a public key an identity provider can publish"
        ));
    }
    if DEFAULT_ALGORITHMS.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "oauth.jwt.algorithms: unknown algorithm '{name}' (known: {})",
            DEFAULT_ALGORITHMS.join(", ")
        ))
    }
}

/// https, or http on a loopback host, with a host and no userinfo (which would end up in
/// logs).
pub(crate) fn uri_is_acceptable(uri: &str) -> bool {
    if !crate::config::secure_or_loopback(uri) {
        return false;
    }
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !authority.is_empty() && !authority.contains('@')
}
