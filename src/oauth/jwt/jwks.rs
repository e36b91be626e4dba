//! Where the identity provider's keys come from ([`JwksSource`], [`HttpJwks`]) and how the
//! validator keeps the usable ones of the last good fetch.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::{uri_is_acceptable, JWKS_TIMEOUT, MAX_JWKS_BYTES};

/// A JSON Web Key Set (RFC 7517 §5), as a [`JwksSource`] returns it; re-exported from
/// `jsonwebtoken` so a source can be written without depending on it.
pub use jsonwebtoken::jwk::JwkSet;

/// The future a [`JwksSource`] returns.
pub type JwksFuture<'a> = Pin<Box<dyn Future<Output = Result<JwkSet, String>> + Send + 'a>>;

/// Where a [`JwtValidator`](super::JwtValidator) gets the identity provider's key set: [`HttpJwks`] in
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
pub(super) struct VerifyKey {
    pub(super) key: DecodingKey,
    pub(super) algorithms: Vec<Algorithm>,
}

/// The keys of the last good fetch, by `kid`.
#[derive(Default)]
pub(super) struct KeyCache {
    pub(super) keys: HashMap<String, Vec<Arc<VerifyKey>>>,
    pub(super) fetched: bool,
}

impl KeyCache {
    pub(super) fn find(&self, kid: &str, alg: Algorithm) -> Lookup {
        match self.keys.get(kid) {
            None => Lookup::Missing,
            Some(keys) => keys
                .iter()
                .find(|k| k.algorithms.contains(&alg))
                .map_or(Lookup::WrongAlgorithm, |k| Lookup::Found(Arc::clone(k))),
        }
    }
}

pub(super) enum Lookup {
    Found(Arc<VerifyKey>),
    WrongAlgorithm,
    Missing,
}

/// When the JWKS was last fetched (successfully or not), by the clock.
#[derive(Default)]
pub(super) struct RefreshState {
    pub(super) last_attempt_ms: Option<i64>,
}

/// The signing keys of `set` this verifier can use, by `kid`; encryption keys, symmetric
/// keys, keys without a `kid` and unknown types are left out.
pub(super) fn usable_keys(set: &JwkSet) -> HashMap<String, Vec<Arc<VerifyKey>>> {
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
