use super::*;
use crate::clock::ManualClock;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const RSA_1: &str = include_str!("../../../tests/fixtures/jwt/rsa-1.key.pem");
const RSA_1_PUB: &str = include_str!("../../../tests/fixtures/jwt/rsa-1.pub.pem");
const RSA_2: &str = include_str!("../../../tests/fixtures/jwt/rsa-2.key.pem");
const EC_1: &str = include_str!("../../../tests/fixtures/jwt/ec-1.key.pem");
const ED_1: &str = include_str!("../../../tests/fixtures/jwt/ed-1.key.pem");
const JWKS: &str = include_str!("../../../tests/fixtures/jwt/jwks.json");
const JWKS_ROTATED: &str = include_str!("../../../tests/fixtures/jwt/jwks-rotated.json");

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
    let validator = JwtValidator::new(settings, RESOURCE, source.clone(), clock.clone()).unwrap();
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
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".to_vec();
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
