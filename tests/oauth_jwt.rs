//! An external identity provider's JWTs at the protected resource (SPEC §12, `oauth.jwt`):
//! a valid token pays with the key whose `oauthSubject` tag is its `sub` (or one made for it
//! on the first call), every forged or misdirected token is 401 `invalid_token`, an unknown
//! `kid` costs one fetch of the provider's key set and no more for ten seconds, and a
//! provider that goes down leaves the keys already fetched working. The key set is served
//! over real HTTP from a local listener, as an identity provider would; tokens are signed
//! with real keys (`tests/fixtures/jwt`).
#![cfg(feature = "jwt")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use paygate_mcp::config::AutoProvision;
use paygate_mcp::oauth::{JwtSettings, JwtValidator, OAuthServer, OAUTH_SUBJECT_TAG};
use paygate_mcp::{
    AdminService, Clock as _, Gate, KeyUpdate, ManualClock, MemoryKeyStore, PayGateConfig,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const ISSUER: &str = "http://127.0.0.1:3402";
const IDP: &str = "https://id.example.com/";
const RSA_1: &str = include_str!("fixtures/jwt/rsa-1.key.pem");
const RSA_1_PUB: &str = include_str!("fixtures/jwt/rsa-1.pub.pem");
const RSA_2: &str = include_str!("fixtures/jwt/rsa-2.key.pem");
const JWKS: &str = include_str!("fixtures/jwt/jwks.json");

/// A local identity provider's JWKS endpoint: counts requests, can answer 503.
struct Jwks {
    url: String,
    hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Jwks {
    async fn serve() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let (hits, down) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, d) = (hits.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (h, d) = (h.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if d.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", "down".to_string())
                    } else {
                        ("200 OK", JWKS.to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self { url, hits, down }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

struct Setup {
    clock: Arc<ManualClock>,
    gate: Arc<Gate<MemoryKeyStore>>,
    oauth: Arc<OAuthServer<MemoryKeyStore>>,
    jwks: Jwks,
}

impl Setup {
    async fn new(auto_provision: Option<u64>) -> Self {
        let jwks = Jwks::serve().await;
        let clock = common::clock_at(common::T0);
        let cfg = PayGateConfig::default().with_tool_price("search", 3);
        let gate = Arc::new(Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).unwrap());
        let mut idp = JwtSettings::new(IDP, &jwks.url);
        idp.auto_provision = auto_provision.map(|credits| AutoProvision { credits });
        let resource = format!("{ISSUER}/mcp");
        let validator = JwtValidator::with_http(idp, resource, clock.clone()).unwrap();
        let oauth = Arc::new(OAuthServer::new(ISSUER, gate.clone()).with_jwt(validator));
        Self {
            clock,
            gate,
            oauth,
            jwks,
        }
    }

    /// A key paying for `subject`.
    async fn key_for(&self, subject: &str, credits: u64) -> String {
        let tags = [(OAUTH_SUBJECT_TAG.to_string(), Some(subject.to_string()))].into();
        let issued = self
            .gate
            .create_key_with(subject, credits, &[KeyUpdate::MergeTags(tags)])
            .await
            .unwrap();
        issued.key
    }

    fn claims(&self, sub: &str) -> Value {
        let now = self.clock.now_ms() / 1000;
        json!({"iss": IDP, "aud": format!("{ISSUER}/mcp"), "sub": sub, "iat": now, "exp": now + 300})
    }

    fn sign(&self, kid: &str, pem: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&der(pem))).unwrap()
    }

    async fn call(&self, token: &str) -> (StatusCode, http::HeaderMap) {
        common::bearer_call(&self.gate, &self.oauth, token).await
    }

    async fn credits(&self, key: &str) -> u64 {
        self.gate.get_key(key).await.unwrap().unwrap().credits
    }
}

fn invalid(headers: &http::HeaderMap) -> bool {
    headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\"")
}

#[tokio::test]
async fn a_valid_token_pays_with_the_key_of_its_subject() {
    let s = Setup::new(None).await;
    let key = s.key_for("user-42", 10).await;
    let token = s.sign("rsa-1", RSA_1, &s.claims("user-42"));
    assert_eq!(s.call(&token).await.0, StatusCode::OK);
    assert_eq!(s.credits(&key).await, 7);
    assert_eq!(s.jwks.hits(), 1, "one fetch of the key set");
    assert_eq!(s.call(&token).await.0, StatusCode::OK);
    assert_eq!(s.jwks.hits(), 1, "then the cached keys");
    // A subject without a key, and no auto-provisioning: refused.
    let stranger = s.sign("rsa-1", RSA_1, &s.claims("user-7"));
    let (status, headers) = s.call(&stranger).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(invalid(&headers));
    // Revoking the key ends what its subject's tokens can do.
    s.gate.revoke(key.as_str()).await.unwrap();
    assert_eq!(s.call(&token).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_forged_or_misdirected_token_is_refused() {
    let s = Setup::new(None).await;
    let key = s.key_for("user-42", 10).await;
    let good = s.claims("user-42");
    // alg none: a header and payload with an empty signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "rsa-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    // HS256 keyed with the public key the provider publishes.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &good,
        &EncodingKey::from_secret(RSA_1_PUB.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example.com/");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("https://other.example.com/mcp");
    let mut expired = good.clone();
    expired["exp"] = json!(s.clock.now_ms() / 1000 - 61);
    // Signed by a key the provider does not publish, under its kid.
    let foreign = s.sign("rsa-1", RSA_2, &good);
    for (label, token) in [
        ("alg none", none),
        ("HS256 with the public key", hmac),
        ("wrong iss", s.sign("rsa-1", RSA_1, &wrong_iss)),
        ("wrong aud", s.sign("rsa-1", RSA_1, &wrong_aud)),
        ("expired", s.sign("rsa-1", RSA_1, &expired)),
        ("bad signature", foreign),
    ] {
        let (status, headers) = s.call(&token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}");
        assert!(invalid(&headers), "{label}");
    }
    assert_eq!(s.credits(&key).await, 10, "nothing was charged");
}

#[tokio::test]
async fn an_unknown_kid_costs_one_fetch_and_a_provider_outage_keeps_the_cached_keys() {
    let s = Setup::new(None).await;
    let key = s.key_for("user-42", 10).await;
    let good = s.sign("rsa-1", RSA_1, &s.claims("user-42"));
    assert_eq!(s.call(&good).await.0, StatusCode::OK);
    assert_eq!(s.jwks.hits(), 1);
    // rsa-2 is not published: one refetch (ten seconds after the first fetch), then 401;
    // within the next ten seconds no further fetch.
    s.clock.advance_secs(11);
    let unknown = s.sign("rsa-2", RSA_2, &s.claims("user-42"));
    assert_eq!(s.call(&unknown).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.jwks.hits(), 2);
    assert_eq!(s.call(&unknown).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.jwks.hits(), 2, "no second fetch within ten seconds");
    // The provider goes down: the key fetched before still works.
    s.jwks.down.store(true, Ordering::SeqCst);
    s.clock.advance_secs(11);
    assert_eq!(s.call(&unknown).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.jwks.hits(), 3, "one more try after ten seconds");
    let good = s.sign("rsa-1", RSA_1, &s.claims("user-42"));
    assert_eq!(s.call(&good).await.0, StatusCode::OK);
    assert_eq!(s.credits(&key).await, 4);
}

#[tokio::test]
async fn a_first_call_provisions_one_key_for_its_subject() {
    let s = Setup::new(Some(25)).await;
    let token = s.sign("rsa-1", RSA_1, &s.claims("new-user"));
    let (a, b) = tokio::join!(s.call(&token), s.call(&token));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let tags = [(OAUTH_SUBJECT_TAG.to_string(), "new-user".to_string())].into();
    let keys = s.gate.search_keys(&tags, 10).await.unwrap();
    assert_eq!(keys.len(), 1, "two first calls made one key");
    assert_eq!(keys[0].credits, 19, "both calls paid from it");
}

#[tokio::test]
async fn the_resource_metadata_sends_clients_to_the_identity_provider() {
    let s = Setup::new(None).await;
    let admin = AdminService::new(s.gate.clone(), "admin_5b1f0c9e7d3a4f2e8c6b0a9d7e5f3c1b")
        .unwrap()
        .with_oauth(s.oauth.clone());
    let req = Request::get("/.well-known/oauth-protected-resource/mcp")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = admin.oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["authorization_servers"], json!([IDP, ISSUER]));
}

#[tokio::test]
async fn a_revoked_subject_is_not_provisioned_again() {
    let s = Setup::new(Some(25)).await;
    let token = s.sign("rsa-1", RSA_1, &s.claims("user-9"));
    assert_eq!(s.call(&token).await.0, StatusCode::OK);
    let tags = [(OAUTH_SUBJECT_TAG.to_string(), "user-9".to_string())].into();
    let first = s.gate.search_keys(&tags, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    // The operator revokes the subject's key: its tokens stop, and no new key is made.
    s.gate.revoke(first[0].id()).await.unwrap();
    let (status, headers) = s.call(&token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(invalid(&headers));
    assert_eq!(s.gate.search_keys(&tags, 10).await.unwrap().len(), 1);
    assert_eq!(s.gate.key_stats().await.unwrap().active_keys, 0);
}

#[tokio::test]
async fn a_token_without_the_needed_scope_provisions_nothing() {
    let jwks = Jwks::serve().await;
    let clock = common::clock_at(common::T0);
    let gate = Arc::new(
        Gate::with_store(
            PayGateConfig::default(),
            MemoryKeyStore::new(),
            clock.clone(),
        )
        .unwrap(),
    );
    let mut idp = JwtSettings::new(IDP, &jwks.url);
    idp.auto_provision = Some(AutoProvision { credits: 25 });
    let validator = JwtValidator::with_http(idp, format!("{ISSUER}/mcp"), clock.clone()).unwrap();
    let mut settings = paygate_mcp::oauth::GrantSettings::new(format!("{ISSUER}/mcp"));
    settings.scopes = vec!["mcp:tools".into()];
    let oauth =
        Arc::new(OAuthServer::with_settings(ISSUER, settings, gate.clone()).with_jwt(validator));
    let s = Setup {
        clock,
        gate,
        oauth,
        jwks,
    };
    let mut claims = s.claims("user-5");
    claims["scope"] = json!("openid profile");
    let (status, headers) = s.call(&s.sign("rsa-1", RSA_1, &claims)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(s.gate.key_stats().await.unwrap().total_keys, 0);
    claims["scope"] = json!("openid mcp:tools");
    assert_eq!(
        s.call(&s.sign("rsa-1", RSA_1, &claims)).await.0,
        StatusCode::OK
    );
    assert_eq!(s.gate.key_stats().await.unwrap().total_keys, 1);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn gateways_sharing_redis_provision_one_key_per_subject() {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};
    let server = common::redis_server::RedisServer::start();
    let jwks = Jwks::serve().await;
    let clock = common::clock_at(common::T0);
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let config = RedisConfig::new(server.url())
            .with_prefix("jwt:")
            .with_time(RedisTime::Request);
        let store = RedisKeyStore::connect(config).await.unwrap();
        let gate =
            Arc::new(Gate::with_store(PayGateConfig::default(), store, clock.clone()).unwrap());
        let mut idp = JwtSettings::new(IDP, &jwks.url);
        idp.auto_provision = Some(AutoProvision { credits: 25 });
        let validator =
            JwtValidator::with_http(idp, format!("{ISSUER}/mcp"), clock.clone()).unwrap();
        let oauth = Arc::new(OAuthServer::new(ISSUER, gate.clone()).with_jwt(validator));
        gateways.push((gate, oauth));
    }
    let now = paygate_mcp::Clock::now_ms(&*clock) / 1000;
    let claims =
        json!({"iss": IDP, "aud": format!("{ISSUER}/mcp"), "sub": "shared", "exp": now + 300});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(&der(RSA_1))).unwrap();
    let (a, b) = tokio::join!(
        gateways[0].1.authenticate(&token),
        gateways[1].1.authenticate(&token)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.key_id, b.key_id, "both gateways bill one key");
    assert_eq!(gateways[0].0.key_stats().await.unwrap().total_keys, 1);
}
