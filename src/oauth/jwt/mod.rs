//! JWT access tokens from an external identity provider (SPEC §12, `oauth.jwt`).
//!
//! A [`JwtValidator`] checks a token the way the spec asks: the header's algorithm is on an
//! allow-list that never holds `none` or an HMAC algorithm, its `kid` names a key of the
//! provider's JWKS (cached, fetched again on an unknown `kid` at most every 10 s, one fetch at
//! a time, the last good keys kept when a fetch fails), the signature verifies, `iss` is the
//! configured issuer exactly, `aud` names this resource, and `exp`/`nbf` hold with 60 s of
//! leeway — measured by the crate's [`Clock`](crate::Clock), not the system time. What it
//! returns is the account claim (`sub` by default), which the gate maps to the key whose
//! `oauthSubject` tag equals it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use paygate_mcp::oauth::jwt::{JwtSettings, JwtValidator};
//!
//! let settings = JwtSettings::new(
//!     "https://id.example.com/",
//!     "https://id.example.com/.well-known/jwks.json",
//! );
//! let validator = JwtValidator::with_http(
//!     settings,
//!     "https://mcp.example.com/mcp",
//!     Arc::new(paygate_mcp::SystemClock),
//! )?;
//! let account = validator.validate("eyJhbGciOi...").await?;
//! # let _ = account;
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::clock::SharedClock;

use crate::config::jwt::uri_is_acceptable;
pub use crate::config::jwt::{AutoProvision, JwtSettings, DEFAULT_ALGORITHMS};

mod account;
mod jwks;

pub use account::OAUTH_SUBJECT_TAG;

use jwks::{usable_keys, KeyCache, Lookup, RefreshState, VerifyKey};
pub use jwks::{HttpJwks, JwkSet, JwksFuture, JwksSource};

/// Clock skew allowed on `exp` and `nbf`, in milliseconds.
pub const LEEWAY_MS: i64 = 60_000;

/// The shortest time between two JWKS fetches, in milliseconds.
pub const REFETCH_INTERVAL_MS: i64 = 10_000;

/// The longest account claim accepted, in characters.
pub const MAX_CLAIM_CHARS: usize = 200;

/// The largest JWKS document [`HttpJwks`] reads.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How long [`HttpJwks`] waits for the whole answer.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest token looked at; real access tokens are a few KiB, and parsing a huge one
/// would be work for nothing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a valid token says: the account claim's value and the scopes granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    /// The account claim (`sub` by default).
    pub account: String,
    /// The scopes granted, space-separated (may be empty).
    pub scope: String,
}

/// The configured algorithms, parsed ([`JwtSettings::check`] has the reasons).
fn allowed_algorithms(settings: &JwtSettings) -> Result<Vec<Algorithm>, String> {
    settings.check()?;
    settings
        .algorithms
        .iter()
        .map(|name| {
            Algorithm::from_str(name)
                .ok()
                .filter(|a| a.family() != AlgorithmFamily::Hmac)
                .ok_or_else(|| format!("oauth.jwt.algorithms: unknown algorithm '{name}'"))
        })
        .collect()
}

/// Whether `token` has the shape of a JWS compact serialization: a JSON header and a payload
/// as base64url (no padding), then a signature segment, joined by two dots. A cheap test
/// for telling an identity provider's token from an opaque one; it proves nothing.
///
/// ```
/// use paygate_mcp::oauth::jwt::looks_like_jwt;
/// assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
/// assert!(!looks_like_jwt("pg_at_0123abcd"));
/// assert!(!looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0"));
/// assert!(!looks_like_jwt("eyJ.e30=.sig"));
/// ```
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // `eyJ` is `{"` in base64: every JOSE header is a JSON object.
    header.starts_with("eyJ")
        && !payload.is_empty()
        && b64url(header)
        && b64url(payload)
        && b64url(signature)
}

/// Why a token was refused. The messages name the rule, never key material or the token,
/// so they can go back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWS compact token, or a header, payload or claim of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's algorithm is not accepted, or does not fit the key.
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    /// No key of the identity provider has the token's `kid`.
    #[error("the token was signed with a key the identity provider does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `iss` is missing or not the configured issuer.
    #[error("the token was not issued by the configured identity provider")]
    Issuer,
    /// `aud` is missing or does not name this resource.
    #[error("the token is not meant for this resource")]
    Audience,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The account claim is missing or not a usable string.
    #[error("the token's account claim is missing or invalid")]
    Claim,
    /// The identity provider's keys have never been fetched successfully.
    #[error("the identity provider's signing keys are unavailable")]
    JwksUnavailable,
}

/// Validates access tokens of one identity provider and returns their account claim.
///
/// Cheap to share behind an `Arc`: validations with a cached key never wait on each other,
/// and a fetch of the key set holds up only callers that need it.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::oauth::jwt::{JwksFuture, JwksSource, JwtError, JwtSettings, JwtValidator};
///
/// struct Offline;
/// impl JwksSource for Offline {
///     fn fetch(&self) -> JwksFuture<'_> {
///         Box::pin(async { Err("JWKS host could not be reached".to_string()) })
///     }
/// }
/// let settings = JwtSettings::new("https://id.example.com/", "https://id.example.com/jwks");
/// let clock = Arc::new(paygate_mcp::ManualClock::at_ms(1_767_225_600_000));
/// let validator =
///     JwtValidator::new(settings, "https://mcp.example.com/mcp", Arc::new(Offline), clock).unwrap();
/// let opaque = paygate_mcp::block_on(validator.validate("pg_at_0123"));
/// assert!(matches!(opaque, Err(JwtError::Malformed(_))));
/// let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhIn0.c2ln";
/// let unverifiable = paygate_mcp::block_on(validator.validate(token));
/// assert_eq!(unverifiable, Err(JwtError::JwksUnavailable));
/// ```
pub struct JwtValidator {
    settings: JwtSettings,
    algorithms: Vec<Algorithm>,
    audiences: HashSet<String>,
    source: Arc<dyn JwksSource>,
    clock: SharedClock,
    cache: RwLock<KeyCache>,
    // Held across the fetch so concurrent callers with unknown `kid`s make one request.
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("issuer", &self.settings.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .field("keys", &self.cache.read().keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// A validator for `settings` (refused as [`JwtSettings::check`] says) protecting
    /// `resource`, the audience when `settings.audiences` is empty. No key is fetched until
    /// the first token.
    pub fn new(
        settings: JwtSettings,
        resource: impl Into<String>,
        source: Arc<dyn JwksSource>,
        clock: SharedClock,
    ) -> Result<Self, String> {
        settings.check()?;
        let algorithms = allowed_algorithms(&settings)?;
        let resource = resource.into();
        let audiences: HashSet<String> = if settings.audiences.is_empty() {
            if resource.trim().is_empty() {
                return Err(
                    "no audience: oauth.jwt.audiences is empty and so is the resource".into(),
                );
            }
            HashSet::from([resource])
        } else {
            settings.audiences.iter().cloned().collect()
        };
        // Fails here, not on the first token, if the crate features left no crypto backend.
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err("no JWT crypto provider is available in this build".to_string());
        }
        Ok(Self {
            settings,
            algorithms,
            audiences,
            source,
            clock,
            cache: RwLock::new(KeyCache::default()),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
        })
    }

    /// A validator that fetches the key set from `settings.jwks_uri` with [`HttpJwks`].
    pub fn with_http(
        settings: JwtSettings,
        resource: impl Into<String>,
        clock: SharedClock,
    ) -> Result<Self, String> {
        let source = Arc::new(HttpJwks::new(&settings.jwks_uri)?);
        Self::new(settings, resource, source, clock)
    }

    /// The settings this validator enforces.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Checks `token` and returns the value of its account claim; the error says which rule
    /// refused it. Fetches the key set first when the token's `kid` is not cached (see
    /// [`REFETCH_INTERVAL_MS`]).
    pub async fn validate(&self, token: &str) -> Result<String, JwtError> {
        let claims = self.verified_claims(token).await?;
        self.check_claims(&claims)
    }

    /// [`JwtValidator::validate`], with the scopes the token grants as well (its `scope`
    /// claim, or `scp` as some providers write it; empty when it has neither).
    pub async fn validate_token(&self, token: &str) -> Result<ValidToken, JwtError> {
        let claims = self.verified_claims(token).await?;
        let account = self.check_claims(&claims)?;
        let scope = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(s)) => s.split_whitespace().collect::<Vec<_>>().join(" "),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        Ok(ValidToken { account, scope })
    }

    /// The claims of a token whose header and signature check out.
    async fn verified_claims(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("token too long"));
        }
        if !looks_like_jwt(token) {
            return Err(JwtError::Malformed("not a JWS compact token"));
        }
        let (alg, kid) = self.read_header(token)?;
        let key = self.key_for(&kid, alg).await?;

        // Only the signature is left to jsonwebtoken: its claim checks read the system clock
        // and give up on a whole payload over one odd claim; the claims are checked below,
        // against the crate clock.
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or(JwtError::Malformed("not a JWS compact token"))?;
        let verified = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg)
            .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                JwtError::Malformed("signature is not base64url")
            }
            // A key the backend cannot use for this algorithm verifies nothing.
            _ => JwtError::Signature,
        })?;
        if !verified {
            return Err(JwtError::Signature);
        }
        let payload = message.split_once('.').map(|(_, p)| p).unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("payload is not a JSON object"))
    }

    /// The header's algorithm (allowed) and `kid`.
    fn read_header(&self, token: &str) -> Result<(Algorithm, String), JwtError> {
        let encoded = token.split('.').next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed("header has no alg"))?;
        // `none` and HMAC never parse into the allow-list, whatever the settings say.
        let alg = Algorithm::from_str(alg)
            .ok()
            .filter(|a| a.family() != AlgorithmFamily::Hmac && self.algorithms.contains(a))
            .ok_or(JwtError::Algorithm)?;
        // An extension the token marks critical must be understood, and none is (RFC 7515
        // §4.1.11); `b64: false` would sign a payload other than the one read here.
        if header.contains_key("crit") {
            return Err(JwtError::Malformed("unsupported critical header"));
        }
        if header.get("b64").is_some_and(|b| *b != Value::Bool(true)) {
            return Err(JwtError::Malformed("unencoded payloads are not supported"));
        }
        let kid = match header.get("kid") {
            Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
            Some(_) => return Err(JwtError::Malformed("header kid is not a string")),
            None => return Err(JwtError::Malformed("header has no kid")),
        };
        Ok((alg, kid))
    }

    /// The cached key for `kid`, fetching the set again when `kid` is unknown and the last
    /// fetch is at least [`REFETCH_INTERVAL_MS`] old.
    async fn key_for(&self, kid: &str, alg: Algorithm) -> Result<Arc<VerifyKey>, JwtError> {
        match self.cache.read().find(kid, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::WrongAlgorithm => return Err(JwtError::Algorithm),
            Lookup::Missing => {}
        }
        let mut state = self.refresh.lock().await;
        // Another caller may have fetched while this one waited.
        match self.cache.read().find(kid, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::WrongAlgorithm => return Err(JwtError::Algorithm),
            Lookup::Missing => {}
        }
        let now = self.clock.now_ms();
        // A clock set back counts as "long ago", so a step backwards cannot stall refreshes.
        let recent = state
            .last_attempt_ms
            .is_some_and(|last| (0..REFETCH_INTERVAL_MS).contains(&(now - last)));
        if !recent {
            state.last_attempt_ms = Some(now);
            match self.source.fetch().await {
                Ok(set) => {
                    let keys = usable_keys(&set);
                    if keys.is_empty() {
                        // Dropping every key would lock all users out; keep the last good set.
                        tracing::warn!(
                            issuer = %self.settings.issuer,
                            "JWKS has no usable signing key; keeping the previous keys"
                        );
                    } else {
                        let mut cache = self.cache.write();
                        cache.keys = keys;
                        cache.fetched = true;
                    }
                }
                Err(reason) => {
                    tracing::warn!(
                        issuer = %self.settings.issuer,
                        %reason,
                        "JWKS fetch failed; keeping the previous keys"
                    );
                }
            }
        }
        drop(state);
        let cache = self.cache.read();
        match cache.find(kid, alg) {
            Lookup::Found(key) => Ok(key),
            Lookup::WrongAlgorithm => Err(JwtError::Algorithm),
            Lookup::Missing if !cache.fetched => Err(JwtError::JwksUnavailable),
            Lookup::Missing => Err(JwtError::UnknownKey),
        }
    }

    /// `iss`, `aud`, `exp`, `nbf` and the account claim of a verified token.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<String, JwtError> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(aud)) => self.audiences.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|a| a.as_str().is_some_and(|a| self.audiences.contains(a))),
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        let now = self.clock.now_ms();
        let exp = match claims.get("exp") {
            Some(v) => numeric_date_ms(v).ok_or(JwtError::Malformed("exp is not a number"))?,
            None => return Err(JwtError::Malformed("the token has no exp")),
        };
        if now > exp.saturating_add(LEEWAY_MS) {
            return Err(JwtError::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date_ms(v).ok_or(JwtError::Malformed("nbf is not a number"))?;
            if now.saturating_add(LEEWAY_MS) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        match claims.get(&self.settings.account_claim) {
            Some(Value::String(account))
                if !account.is_empty()
                    && account.chars().count() <= MAX_CLAIM_CHARS
                    // It becomes a key's tag and shows in logs.
                    && !account.chars().any(char::is_control) =>
            {
                Ok(account.clone())
            }
            _ => Err(JwtError::Claim),
        }
    }
}

/// A JSON NumericDate (seconds, possibly fractional) as epoch milliseconds.
fn numeric_date_ms(v: &Value) -> Option<i64> {
    if let Some(secs) = v.as_i64() {
        return Some(secs.saturating_mul(1000));
    }
    let secs = v.as_f64()?;
    // `as` saturates out-of-range floats; NaN cannot come from JSON.
    secs.is_finite().then_some((secs * 1000.0) as i64)
}

#[cfg(test)]
mod tests;
