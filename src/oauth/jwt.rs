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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::SharedClock;

/// A JSON Web Key Set (RFC 7517 §5), as a [`JwksSource`] returns it; re-exported from
/// `jsonwebtoken` so a source can be written without depending on it.
pub use jsonwebtoken::jwk::JwkSet;

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

/// The algorithms accepted when `algorithms` is not configured: every public-key algorithm
/// the verifier supports.
pub const DEFAULT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The `oauth.jwt` section of the config: which identity provider issues the access tokens
/// the gateway accepts and how a token names its account.
///
/// ```
/// use paygate_mcp::oauth::jwt::JwtSettings;
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
/// use paygate_mcp::oauth::jwt::AutoProvision;
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
    /// use paygate_mcp::oauth::jwt::JwtSettings;
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
    /// use paygate_mcp::oauth::jwt::JwtSettings;
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
            parse_algorithm(name)?;
        }
        Ok(())
    }

    /// The configured algorithms, parsed; [`check`](Self::check) has the reasons.
    fn allowed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        self.algorithms.iter().map(|n| parse_algorithm(n)).collect()
    }
}

/// One configured algorithm name, refused when it is not a public-key signature algorithm.
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
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
    match Algorithm::from_str(name) {
        Ok(alg) if alg.family() != AlgorithmFamily::Hmac => Ok(alg),
        _ => Err(format!(
            "oauth.jwt.algorithms: unknown algorithm '{name}' (known: {})",
            DEFAULT_ALGORITHMS.join(", ")
        )),
    }
}

/// https, or http on a loopback host, with a host and no userinfo (which would end up in
/// logs).
fn uri_is_acceptable(uri: &str) -> bool {
    if !crate::config::secure_or_loopback(uri) {
        return false;
    }
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !authority.is_empty() && !authority.contains('@')
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

/// The future a [`JwksSource`] returns.
pub type JwksFuture<'a> = Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send + 'a>>;

/// Where a [`JwtValidator`] gets the identity provider's key set: [`HttpJwks`] in
/// production, an in-memory set in tests.
///
/// ```
/// use paygate_mcp::oauth::jwt::{JwkSet, JwksFuture, JwksSource};
///
/// struct Fixed(JwkSet);
/// impl JwksSource for Fixed {
///     fn fetch(&self) -> JwksFuture<'_> {
///         Box::pin(async move { Ok(self.0.clone()) })
///     }
/// }
/// let _source: std::sync::Arc<dyn JwksSource> = std::sync::Arc::new(Fixed(JwkSet::default()));
/// ```
pub trait JwksSource: Send + Sync {
    /// The current key set. The error is a short reason for the log; it must not carry
    /// secrets (a URL's credentials or query, a response body).
    fn fetch(&self) -> JwksFuture<'_>;
}

/// Fetches the JWKS over HTTPS with reqwest: 5 s for the whole exchange, at most 1 MiB of
/// body, no redirects, and any answer but 2xx is an error.
///
/// ```
/// use paygate_mcp::oauth::jwt::HttpJwks;
/// assert!(HttpJwks::new("https://id.example.com/.well-known/jwks.json").is_ok());
/// assert!(HttpJwks::new("http://id.example.com/jwks").is_err());
/// assert!(HttpJwks::new("http://127.0.0.1:8080/jwks").is_ok());
/// ```
#[derive(Clone)]
pub struct HttpJwks {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl std::fmt::Debug for HttpJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Host only: a query may hold a token.
        f.debug_struct("HttpJwks")
            .field("host", &self.url.host_str().unwrap_or_default())
            .finish()
    }
}

impl HttpJwks {
    /// A fetcher for `uri`, which must be https (or http on a loopback host).
    pub fn new(uri: &str) -> Result<Self, String> {
        if !uri_is_acceptable(uri) {
            return Err(
                "the JWKS URI must be https:// (or http:// on a loopback host) without \
                 credentials"
                    .to_string(),
            );
        }
        let url = reqwest::Url::parse(uri).map_err(|_| "the JWKS URI is not a URL".to_string())?;
        let client = reqwest::Client::builder()
            // A redirect could leave https or the provider's host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(JWKS_TIMEOUT)
            .user_agent(concat!("paygate-mcp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| "the HTTP client for the JWKS could not be built".to_string())?;
        Ok(Self { client, url })
    }

    async fn get(&self) -> Result<JwkSet, String> {
        // reqwest's error text names the URL, so only its kind is reported.
        let describe = |e: reqwest::Error| {
            if e.is_timeout() {
                "JWKS fetch timed out".to_string()
            } else if e.is_connect() {
                "JWKS host could not be reached".to_string()
            } else {
                "JWKS fetch failed".to_string()
            }
        };
        let mut resp = self
            .client
            .get(self.url.clone())
            .header("accept", "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(describe)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("JWKS fetch answered HTTP {}", status.as_u16()));
        }
        let too_large = || format!("JWKS is larger than {MAX_JWKS_BYTES} bytes");
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<JwkSet>(&body)
            .map_err(|_| "JWKS is not a JSON Web Key Set".to_string())
    }
}

impl JwksSource for HttpJwks {
    fn fetch(&self) -> JwksFuture<'_> {
        Box::pin(self.get())
    }
}

/// A usable signing key of the set, with the algorithms it may verify.
struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of the last good fetch, by `kid`.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Vec<Arc<VerifyKey>>>,
    fetched: bool,
}

impl KeyCache {
    fn find(&self, kid: &str, alg: Algorithm) -> Lookup {
        match self.keys.get(kid) {
            None => Lookup::Missing,
            Some(keys) => keys
                .iter()
                .find(|k| k.algorithms.contains(&alg))
                .map_or(Lookup::WrongAlgorithm, |k| Lookup::Found(Arc::clone(k))),
        }
    }
}

enum Lookup {
    Found(Arc<VerifyKey>),
    WrongAlgorithm,
    Missing,
}

/// When the JWKS was last fetched (successfully or not), by the clock.
#[derive(Default)]
struct RefreshState {
    last_attempt_ms: Option<i64>,
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
        let algorithms = settings.allowed_algorithms()?;
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
        let claims: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
        self.check_claims(&claims)
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

/// The signing keys of `set` this verifier can use, by `kid`; encryption keys, symmetric
/// keys, keys without a `kid` and unknown types are left out.
fn usable_keys(set: &JwkSet) -> HashMap<String, Vec<Arc<VerifyKey>>> {
    let mut out: HashMap<String, Vec<Arc<VerifyKey>>> = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_deref().filter(|k| !k.is_empty()) else {
            continue;
        };
        let Some(algorithms) = key_algorithms(jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        out.entry(kid.to_string())
            .or_default()
            .push(Arc::new(VerifyKey { key, algorithms }));
    }
    out
}

/// The algorithms `jwk` may verify: those of its type and curve, narrowed to its `alg` when
/// it names one. `None` for keys not meant for signatures or not supported.
fn key_algorithms(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric (`oct`) keys are HMAC secrets: never accepted.
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(named) => {
            let named = Algorithm::try_from(named).ok()?;
            by_type.contains(&named).then(|| vec![named])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const RSA_1: &str = include_str!("../../tests/fixtures/jwt/rsa-1.key.pem");
    const RSA_1_PUB: &str = include_str!("../../tests/fixtures/jwt/rsa-1.pub.pem");
    const RSA_2: &str = include_str!("../../tests/fixtures/jwt/rsa-2.key.pem");
    const EC_1: &str = include_str!("../../tests/fixtures/jwt/ec-1.key.pem");
    const ED_1: &str = include_str!("../../tests/fixtures/jwt/ed-1.key.pem");
    const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");
    const JWKS_ROTATED: &str = include_str!("../../tests/fixtures/jwt/jwks-rotated.json");

    const ISSUER: &str = "https://id.example.com/";
    const RESOURCE: &str = "https://mcp.example.com/mcp";
    /// 2026-01-01T00:00:00Z, in seconds.
    const T0: i64 = 1_767_225_600;

    /// The DER inside a PEM file: the build has no PEM parser (keys come as JWKs).
    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::engine::general_purpose::STANDARD;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(body).unwrap()
    }

    fn jwks(text: &str) -> JwkSet {
        serde_json::from_str(text).unwrap()
    }

    /// Serves a key set from memory; can be switched to failing; counts fetches.
    struct MemoryJwks {
        set: parking_lot::Mutex<JwkSet>,
        failing: AtomicBool,
        fetches: AtomicUsize,
    }

    impl MemoryJwks {
        fn new(set: JwkSet) -> Arc<Self> {
            Arc::new(Self {
                set: parking_lot::Mutex::new(set),
                failing: AtomicBool::new(false),
                fetches: AtomicUsize::new(0),
            })
        }
        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
        fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::SeqCst);
        }
        fn serve(&self, set: JwkSet) {
            *self.set.lock() = set;
        }
    }

    impl JwksSource for MemoryJwks {
        fn fetch(&self) -> JwksFuture<'_> {
            Box::pin(async move {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                // Lets concurrent callers pile up behind the fetch in the stampede test.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                if self.failing.load(Ordering::SeqCst) {
                    Err("JWKS fetch answered HTTP 503".to_string())
                } else {
                    Ok(self.set.lock().clone())
                }
            })
        }
    }

    struct Fixture {
        clock: Arc<ManualClock>,
        source: Arc<MemoryJwks>,
        validator: JwtValidator,
    }

    fn fixture_with(settings: JwtSettings) -> Fixture {
        let clock = Arc::new(ManualClock::at_ms(T0 * 1000));
        let source = MemoryJwks::new(jwks(JWKS));
        let validator =
            JwtValidator::new(settings, RESOURCE, source.clone(), clock.clone()).unwrap();
        Fixture {
            clock,
            source,
            validator,
        }
    }

    fn settings() -> JwtSettings {
        JwtSettings::new(ISSUER, "https://id.example.com/jwks")
    }

    fn fixture() -> Fixture {
        fixture_with(settings())
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": RESOURCE,
            "sub": "user-42",
            "iat": T0,
            "exp": T0 + 300,
        })
    }

    fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
        let key = match alg.family() {
            AlgorithmFamily::Rsa => {
                let pem = if kid == "rsa-2" { RSA_2 } else { RSA_1 };
                EncodingKey::from_rsa_der(&pem_der(pem))
            }
            AlgorithmFamily::Ec => EncodingKey::from_ec_der(&pem_der(EC_1)),
            AlgorithmFamily::Ed => EncodingKey::from_ed_der(&pem_der(ED_1)),
            AlgorithmFamily::Hmac => panic!("use sign_hmac"),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, "rsa-1", claims)
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    // --- settings ---

    #[test]
    fn settings_parse_with_defaults_and_refuse_unknown_fields() {
        let s: JwtSettings = serde_json::from_value(json!({
            "issuer": ISSUER,
            "jwksUri": "https://id.example.com/jwks",
        }))
        .unwrap();
        assert_eq!(s, settings());
        assert_eq!(s.algorithms, DEFAULT_ALGORITHMS);
        let err = serde_json::from_value::<JwtSettings>(json!({
            "issuer": ISSUER,
            "jwksUri": "https://id.example.com/jwks",
            "jwks_uri": "x",
        }))
        .unwrap_err();
        assert!(err.to_string().contains("jwks_uri"), "{err}");
        let s: JwtSettings = serde_json::from_value(json!({
            "issuer": ISSUER,
            "jwksUri": "https://id.example.com/jwks",
            "accountClaim": "email",
            "algorithms": ["ES256"],
            "autoProvision": {"credits": 25},
        }))
        .unwrap();
        assert_eq!(s.account_claim, "email");
        assert_eq!(s.auto_provision, Some(AutoProvision { credits: 25 }));
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn check_refuses_unsafe_settings() {
        let refused = |edit: &dyn Fn(&mut JwtSettings), needle: &str| {
            let mut s = settings();
            edit(&mut s);
            let err = s.check().unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        };
        refused(&|s| s.algorithms = vec!["none".into()], "never");
        refused(
            &|s| s.algorithms = vec!["RS256".into(), "HS256".into()],
            "shared secret",
        );
        refused(&|s| s.algorithms = vec!["hs512".into()], "not supported");
        refused(
            &|s| s.algorithms = vec!["RS1024".into()],
            "unknown algorithm",
        );
        refused(&|s| s.algorithms = vec![], "empty");
        refused(&|s| s.issuer = " ".into(), "issuer");
        refused(
            &|s| s.jwks_uri = "http://id.example.com/jwks".into(),
            "jwksUri",
        );
        refused(
            &|s| s.jwks_uri = "ftp://id.example.com/jwks".into(),
            "jwksUri",
        );
        refused(&|s| s.jwks_uri = "https://".into(), "jwksUri");
        refused(
            &|s| s.jwks_uri = "https://u:p@id.example.com/".into(),
            "jwksUri",
        );
        refused(&|s| s.account_claim = String::new(), "accountClaim");
        refused(&|s| s.audiences = vec![String::new()], "audiences");

        let mut s = settings();
        s.jwks_uri = "http://localhost:8080/jwks".into();
        assert_eq!(s.check(), Ok(()));
        s.jwks_uri = "http://[::1]:8080/jwks".into();
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn the_validator_refuses_bad_settings_and_a_missing_audience() {
        let source = MemoryJwks::new(JwkSet::default());
        let clock: SharedClock = Arc::new(ManualClock::at_ms(0));
        let mut s = settings();
        s.algorithms = vec!["HS256".into()];
        assert!(JwtValidator::new(s, RESOURCE, source.clone(), clock.clone()).is_err());
        let err = JwtValidator::new(settings(), "", source, clock).unwrap_err();
        assert!(err.contains("audience"), "{err}");
    }

    #[test]
    fn looks_like_jwt_tells_jws_from_opaque_tokens() {
        let token = rs256(&claims());
        assert!(looks_like_jwt(&token));
        // An unsecured JWT has an empty signature and still looks like one (to be refused).
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30."));
        for opaque in [
            "",
            "pg_at_00ff",
            "a.b.c",
            "eyJ..sig",
            "eyJhbGciOiJub25lIn0.e30",
            "eyJhbGciOiJub25lIn0.e30.x.y",
            "eyJhbGciOiJub25lIn0.e30=.sig",
            "eyJhbGciOiJub25lIn0.e3 0.sig",
        ] {
            assert!(!looks_like_jwt(opaque), "{opaque:?}");
        }
    }

    // --- tokens ---

    #[tokio::test]
    async fn valid_rs256_es256_and_eddsa_tokens_give_the_account_claim() {
        let f = fixture();
        assert_eq!(
            f.validator.validate(&rs256(&claims())).await,
            Ok("user-42".into())
        );
        let es = sign(Algorithm::ES256, "ec-1", &claims());
        assert_eq!(f.validator.validate(&es).await, Ok("user-42".into()));
        let ed = sign(Algorithm::EdDSA, "ed-1", &claims());
        assert_eq!(f.validator.validate(&ed).await, Ok("user-42".into()));
        assert_eq!(f.source.fetches(), 1, "one fetch fills the cache");
    }

    #[tokio::test]
    async fn a_custom_account_claim_and_an_audience_list() {
        let mut s = settings();
        s.account_claim = "email".into();
        s.audiences = vec!["api://paygate".into(), "other".into()];
        let f = fixture_with(s);
        let mut c = claims();
        c["email"] = json!("ada@example.com");
        c["aud"] = json!(["x", "api://paygate"]);
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Ok("ada@example.com".into())
        );
        // With audiences configured, the resource alone is not enough.
        c["aud"] = json!(RESOURCE);
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Audience)
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let f = fixture();
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "rsa-1"})),
            b64(&claims())
        );
        assert_eq!(f.validator.validate(&token).await, Err(JwtError::Algorithm));
        // Also with a signature segment borrowed from a real token.
        let real = rs256(&claims());
        let sig = real.rsplit('.').next().unwrap();
        let token = format!("{token}{sig}");
        assert_eq!(f.validator.validate(&token).await, Err(JwtError::Algorithm));
        assert_eq!(f.source.fetches(), 0, "refused before any key lookup");
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion: HMAC keyed with the RSA public key the IdP publishes.
        let f = fixture();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_secret(RSA_1_PUB.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
        assert_eq!(f.validator.validate(&token).await, Err(JwtError::Algorithm));
    }

    #[tokio::test]
    async fn an_algorithm_off_the_list_or_not_fitting_the_key_is_refused() {
        let mut s = settings();
        s.algorithms = vec!["ES256".into()];
        let f = fixture_with(s);
        assert_eq!(
            f.validator.validate(&rs256(&claims())).await,
            Err(JwtError::Algorithm)
        );
        let f = fixture();
        // An RSA signature presented under the EC key's kid.
        let token = sign(Algorithm::RS256, "rsa-1", &claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let header = b64(&json!({"alg": "RS256", "kid": "ec-1"}));
        parts[0] = &header;
        assert_eq!(
            f.validator.validate(&parts.join(".")).await,
            Err(JwtError::Algorithm)
        );
        // The JWK says RS256: a PS256 token under that kid is refused.
        let ps = sign(Algorithm::PS256, "rsa-1", &claims());
        assert_eq!(f.validator.validate(&ps).await, Err(JwtError::Algorithm));
    }

    #[tokio::test]
    async fn a_tampered_payload_fails_the_signature() {
        let f = fixture();
        let token = rs256(&claims());
        let mut c = claims();
        c["sub"] = json!("admin");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&c);
        parts[1] = &forged;
        assert_eq!(
            f.validator.validate(&parts.join(".")).await,
            Err(JwtError::Signature)
        );
        // The ES256 signature of one token on another's payload.
        let es = sign(Algorithm::ES256, "ec-1", &claims());
        let other = sign(Algorithm::ES256, "ec-1", &c);
        let spliced = format!(
            "{}.{}",
            es.rsplit_once('.').unwrap().0,
            other.rsplit('.').next().unwrap()
        );
        assert_eq!(
            f.validator.validate(&spliced).await,
            Err(JwtError::Signature)
        );
    }

    #[tokio::test]
    async fn a_missing_kid_or_bad_header_is_malformed() {
        let f = fixture();
        let key = EncodingKey::from_rsa_der(&pem_der(RSA_1));
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &key).unwrap();
        assert!(matches!(
            f.validator.validate(&no_kid).await,
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            f.validator.validate("not a token").await,
            Err(JwtError::Malformed(_))
        ));
        let token = rs256(&claims());
        let rest = token.split_once('.').unwrap().1;
        for header in [
            json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}),
            json!({"alg": "RS256", "kid": "rsa-1", "b64": false}),
            json!({"alg": "RS256", "kid": 7}),
            json!(["RS256"]),
        ] {
            let forged = format!("{}.{rest}", b64(&header));
            assert!(
                matches!(
                    f.validator.validate(&forged).await,
                    Err(JwtError::Malformed(_))
                ),
                "{header}"
            );
        }
        // A verified signature over a payload that is not a JSON object.
        let key = EncodingKey::from_rsa_der(&pem_der(RSA_1));
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let array = jsonwebtoken::encode(&header, &json!([1, 2]), &key).unwrap();
        assert_eq!(
            f.validator.validate(&array).await,
            Err(JwtError::Malformed("payload is not a JSON object"))
        );
        let huge = format!("eyJ{}.e30.sig", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            f.validator.validate(&huge).await,
            Err(JwtError::Malformed("token too long"))
        );
    }

    #[tokio::test]
    async fn a_wrong_issuer_is_refused() {
        let f = fixture();
        for iss in [
            json!("https://evil.example.com/"),
            json!("https://id.example.com"),
            json!([ISSUER]),
        ] {
            let mut c = claims();
            c["iss"] = iss;
            assert_eq!(
                f.validator.validate(&rs256(&c)).await,
                Err(JwtError::Issuer)
            );
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Issuer)
        );
    }

    #[tokio::test]
    async fn a_wrong_audience_is_refused() {
        let f = fixture();
        for aud in [
            json!("https://other.example.com/mcp"),
            json!(["https://other.example.com/mcp"]),
            json!([]),
            json!(42),
        ] {
            let mut c = claims();
            c["aud"] = aud;
            assert_eq!(
                f.validator.validate(&rs256(&c)).await,
                Err(JwtError::Audience)
            );
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Audience)
        );
        c["aud"] = json!(["https://other.example.com/mcp", RESOURCE]);
        assert_eq!(f.validator.validate(&rs256(&c)).await, Ok("user-42".into()));
    }

    #[tokio::test]
    async fn exp_is_checked_against_the_crate_clock_with_leeway() {
        let f = fixture();
        let token = rs256(&claims()); // exp = T0 + 300
        f.clock.set_ms((T0 + 300 + 30) * 1000);
        assert_eq!(
            f.validator.validate(&token).await,
            Ok("user-42".into()),
            "within leeway"
        );
        f.clock.set_ms((T0 + 300 + 60) * 1000);
        assert_eq!(
            f.validator.validate(&token).await,
            Ok("user-42".into()),
            "edge of leeway"
        );
        f.clock.set_ms((T0 + 300 + 61) * 1000);
        assert_eq!(f.validator.validate(&token).await, Err(JwtError::Expired));
        // T0 is long past by the system clock: only the crate clock decides.
        f.clock.set_ms(T0 * 1000);
        let mut c = claims();
        c["exp"] = json!(T0 - 3600);
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Expired)
        );
        c["exp"] = json!((T0 + 10) as f64 + 0.5);
        assert_eq!(f.validator.validate(&rs256(&c)).await, Ok("user-42".into()));
    }

    #[tokio::test]
    async fn exp_is_required_and_must_be_a_number() {
        let f = fixture();
        let mut c = claims();
        c["exp"] = json!("9999999999");
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Malformed("exp is not a number"))
        );
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            f.validator.validate(&rs256(&c)).await,
            Err(JwtError::Malformed("the token has no exp"))
        );
    }

    #[tokio::test]
    async fn nbf_in_the_future_is_refused_beyond_the_leeway() {
        let f = fixture();
        let mut c = claims();
        c["nbf"] = json!(T0 + 120);
        let token = rs256(&c);
        assert_eq!(
            f.validator.validate(&token).await,
            Err(JwtError::NotYetValid)
        );
        f.clock.set_ms((T0 + 60) * 1000);
        assert_eq!(
            f.validator.validate(&token).await,
            Ok("user-42".into()),
            "within leeway"
        );
        c["nbf"] = json!(T0 + 30);
        f.clock.set_ms(T0 * 1000);
        assert_eq!(f.validator.validate(&rs256(&c)).await, Ok("user-42".into()));
    }

    #[tokio::test]
    async fn the_account_claim_must_be_a_short_nonempty_string() {
        let f = fixture();
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(f.validator.validate(&rs256(&c)).await, Err(JwtError::Claim));
        for bad in [
            json!(""),
            json!(42),
            json!(["a"]),
            json!("a\nb"),
            json!("x".repeat(201)),
        ] {
            c["sub"] = bad;
            assert_eq!(f.validator.validate(&rs256(&c)).await, Err(JwtError::Claim));
        }
        c["sub"] = json!("é".repeat(200));
        assert_eq!(f.validator.validate(&rs256(&c)).await, Ok("é".repeat(200)));
    }

    // --- the key set ---

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_every_ten_seconds() {
        let f = fixture();
        assert!(f.validator.validate(&rs256(&claims())).await.is_ok());
        assert_eq!(f.source.fetches(), 1);
        f.clock.advance_secs(10);

        let unknown = sign(Algorithm::RS256, "rsa-9", &claims());
        assert_eq!(
            f.validator.validate(&unknown).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(f.source.fetches(), 2, "exactly one refetch");
        assert_eq!(
            f.validator.validate(&unknown).await,
            Err(JwtError::UnknownKey)
        );
        let other = sign(Algorithm::RS256, "rsa-8", &claims());
        f.clock.advance_secs(9);
        assert_eq!(
            f.validator.validate(&other).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(f.source.fetches(), 2, "no fetch within 10 s");
        // Known keys keep working meanwhile, without fetching.
        assert!(f.validator.validate(&rs256(&claims())).await.is_ok());

        f.clock.advance_secs(1);
        assert_eq!(
            f.validator.validate(&other).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(f.source.fetches(), 3, "one more after 10 s");
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_share_one_fetch() {
        let f = fixture();
        let validator = Arc::new(f.validator);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (v, token) = (
                validator.clone(),
                sign(Algorithm::RS256, &format!("new-{i}"), &claims()),
            );
            tasks.spawn(async move { v.validate(&token).await });
        }
        let (v, good) = (validator.clone(), rs256(&claims()));
        tasks.spawn(async move { v.validate(&good).await });
        let results = tasks.join_all().await;
        assert_eq!(f.source.fetches(), 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert_eq!(
            results
                .iter()
                .filter(|r| **r == Err(JwtError::UnknownKey))
                .count(),
            8
        );
    }

    #[tokio::test]
    async fn a_jwks_outage_keeps_the_cached_keys() {
        let f = fixture();
        assert!(f.validator.validate(&rs256(&claims())).await.is_ok());
        f.source.fail(true);
        f.clock.advance_secs(30);
        let unknown = sign(Algorithm::RS256, "rsa-2", &claims());
        assert_eq!(
            f.validator.validate(&unknown).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(f.source.fetches(), 2);
        assert_eq!(
            f.validator.validate(&rs256(&claims())).await,
            Ok("user-42".into())
        );
        let es = sign(Algorithm::ES256, "ec-1", &claims());
        assert_eq!(f.validator.validate(&es).await, Ok("user-42".into()));
        // An empty set is treated like an outage, not as "revoke every key".
        f.source.fail(false);
        f.source.serve(JwkSet::default());
        f.clock.advance_secs(30);
        assert_eq!(
            f.validator.validate(&unknown).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(f.source.fetches(), 3);
        assert_eq!(
            f.validator.validate(&rs256(&claims())).await,
            Ok("user-42".into())
        );
    }

    #[tokio::test]
    async fn no_keys_ever_fetched_is_jwks_unavailable() {
        let f = fixture();
        f.source.fail(true);
        let token = rs256(&claims());
        assert_eq!(
            f.validator.validate(&token).await,
            Err(JwtError::JwksUnavailable)
        );
        assert_eq!(
            f.validator.validate(&token).await,
            Err(JwtError::JwksUnavailable)
        );
        assert_eq!(f.source.fetches(), 1, "the outage is not hammered");
        f.source.fail(false);
        f.clock.advance_secs(10);
        assert_eq!(f.validator.validate(&token).await, Ok("user-42".into()));
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_by_the_refetch() {
        let f = fixture();
        assert!(f.validator.validate(&rs256(&claims())).await.is_ok());
        f.source.serve(jwks(JWKS_ROTATED));
        f.clock.advance_secs(60);
        let rotated = sign(Algorithm::RS256, "rsa-2", &claims());
        assert_eq!(f.validator.validate(&rotated).await, Ok("user-42".into()));
        assert_eq!(f.source.fetches(), 2);
        // The retired key left with the old set.
        assert_eq!(
            f.validator.validate(&rs256(&claims())).await,
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn only_signature_keys_of_known_types_are_kept() {
        let set = jwks(
            &json!({"keys": [
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
                {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AQ", "y": "AQ"},
                {"kty": "RSA", "kid": "any-rsa", "n": "AQAB", "e": "AQAB"},
            ]})
            .to_string(),
        );
        let keys = usable_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["any-rsa"]);
        assert_eq!(keys["any-rsa"][0].algorithms.len(), 6);
    }

    // --- HTTP ---

    /// Answers one request on a loopback listener with `response`, returning the URL.
    async fn serve_once(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            // The client may hang up early (oversized body); that is the point.
            let _ = conn.write_all(&response).await;
            let _ = conn.shutdown().await;
        });
        format!("http://127.0.0.1:{}/jwks?token=s3cret", addr.port())
    }

    fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn http_jwks_reads_a_key_set() {
        let url = serve_once(http_response("200 OK", JWKS.as_bytes())).await;
        let set = HttpJwks::new(&url).unwrap().fetch().await.unwrap();
        assert_eq!(set, jwks(JWKS));
        assert_eq!(set.keys.len(), 3);
    }

    #[tokio::test]
    async fn http_jwks_feeds_a_validator() {
        let url = serve_once(http_response("200 OK", JWKS.as_bytes())).await;
        let mut s = settings();
        s.jwks_uri = url;
        let clock = Arc::new(ManualClock::at_ms(T0 * 1000));
        let validator = JwtValidator::with_http(s, RESOURCE, clock).unwrap();
        assert_eq!(
            validator.validate(&rs256(&claims())).await,
            Ok("user-42".into())
        );
    }

    #[tokio::test]
    async fn http_jwks_reports_a_500_without_the_url() {
        let url = serve_once(http_response(
            "500 Internal Server Error",
            b"{\"k\":\"s3cret\"}",
        ))
        .await;
        let err = HttpJwks::new(&url).unwrap().fetch().await.unwrap_err();
        assert_eq!(err, "JWKS fetch answered HTTP 500");
        assert!(!err.contains("s3cret"));
    }

    #[tokio::test]
    async fn http_jwks_refuses_a_body_over_one_mib() {
        // No Content-Length: the limit must hold while reading.
        let mut response =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                .to_vec();
        response.extend(std::iter::repeat_n(b' ', MAX_JWKS_BYTES + 1));
        let url = serve_once(response).await;
        let err = HttpJwks::new(&url).unwrap().fetch().await.unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let url = serve_once(http_response("200 OK", &vec![b' '; MAX_JWKS_BYTES + 1])).await;
        let err = HttpJwks::new(&url).unwrap().fetch().await.unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn http_jwks_reports_an_unreachable_host_and_bad_json() {
        // A port just released: nothing listens there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = HttpJwks::new(&format!("http://127.0.0.1:{port}/jwks?token=s3cret"))
            .unwrap()
            .fetch()
            .await
            .unwrap_err();
        assert!(
            !err.contains("s3cret") && !err.contains("127.0.0.1"),
            "{err}"
        );
        let url = serve_once(http_response("200 OK", b"<html>")).await;
        let err = HttpJwks::new(&url).unwrap().fetch().await.unwrap_err();
        assert_eq!(err, "JWKS is not a JSON Web Key Set");
    }

    #[test]
    fn http_jwks_refuses_insecure_uris_and_hides_the_query_in_debug() {
        assert!(HttpJwks::new("http://id.example.com/jwks").is_err());
        assert!(HttpJwks::new("https://user:pw@id.example.com/jwks").is_err());
        let j = HttpJwks::new("https://id.example.com/jwks?token=s3cret").unwrap();
        assert!(!format!("{j:?}").contains("s3cret"));
    }
}
