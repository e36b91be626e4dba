//! OAuth grants live where the keys live (SPEC §12): a token issued before a restart works
//! after it (memory store with its state file), and a token issued by one gateway works on
//! another sharing Redis, where refresh rotation and revocation are seen at once. Each
//! gateway here is what `examples/gateway.rs` builds: `AdminService::with_oauth` for the
//! sign-in endpoints and `PayGateLayer::with_oauth` in front of the MCP server.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use paygate_mcp::oauth::OAuthServer;
use paygate_mcp::{AdminService, Gate, KeyStore, MemoryKeyStore, PayGateConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const ISSUER: &str = "http://127.0.0.1:3402";
const REDIRECT: &str = "http://127.0.0.1:53682/callback";
const VERIFIER: &str = "a-verifier-of-plenty-of-characters-0123456789-abcdefgh";
const ADMIN: &str = "admin_5b1f0c9e7d3a4f2e8c6b0a9d7e5f3c1b";

struct Gateway<S: KeyStore> {
    gate: Arc<Gate<S>>,
    admin: AdminService<S>,
    oauth: Arc<OAuthServer<S>>,
}

struct Tokens {
    client: String,
    access: String,
    refresh: String,
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

impl<S: KeyStore> Gateway<S> {
    fn over(store: S) -> Self {
        let cfg = PayGateConfig::default().with_tool_price("search", 3);
        let gate = Arc::new(Gate::with_store(cfg, store, common::clock_at(common::T0)).unwrap());
        let oauth = Arc::new(OAuthServer::new(ISSUER, gate.clone()));
        let admin = AdminService::new(gate.clone(), ADMIN)
            .unwrap()
            .with_oauth(oauth.clone());
        Self { gate, admin, oauth }
    }

    async fn post(
        &self,
        uri: &str,
        body: String,
        form_body: bool,
    ) -> (StatusCode, Value, http::HeaderMap) {
        let ct = if form_body {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.admin.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            parts.headers,
        )
    }

    /// Registration, consent with `api_key`, code exchange: what an MCP client does.
    async fn sign_in(&self, api_key: &str) -> Tokens {
        let (status, reg, _) = self
            .post(
                "/oauth/register",
                json!({"redirect_uris": [REDIRECT], "client_name": "test"}).to_string(),
                false,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let client = reg["client_id"].as_str().unwrap().to_string();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
        let (status, _, headers) = self
            .post(
                "/oauth/authorize",
                form(&[
                    ("response_type", "code"),
                    ("client_id", &client),
                    ("redirect_uri", REDIRECT),
                    ("code_challenge", &challenge),
                    ("code_challenge_method", "S256"),
                    ("resource", &format!("{ISSUER}/mcp")),
                    ("state", "s1"),
                    ("api_key", api_key),
                    ("decision", "approve"),
                ]),
                true,
            )
            .await;
        assert_eq!(status, StatusCode::FOUND);
        let location = headers["location"].to_str().unwrap().to_string();
        let code = form_urlencoded::parse(location.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        let (status, tokens, _) = self
            .post(
                "/oauth/token",
                form(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", &client),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ]),
                true,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        Tokens {
            client,
            access: tokens["access_token"].as_str().unwrap().into(),
            refresh: tokens["refresh_token"].as_str().unwrap().into(),
        }
    }

    async fn refresh(&self, t: &Tokens) -> (StatusCode, Value) {
        let (status, body, _) = self
            .post(
                "/oauth/token",
                form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", &t.client),
                    ("refresh_token", &t.refresh),
                ]),
                true,
            )
            .await;
        (status, body)
    }

    /// A paid `tools/call` with the bearer token through the layer.
    async fn call(&self, access: &str) -> StatusCode {
        common::bearer_call(&self.gate, &self.oauth, access).await.0
    }

    async fn credits(&self, key: &str) -> u64 {
        self.gate.get_key(key).await.unwrap().unwrap().credits
    }
}

#[tokio::test]
async fn tokens_survive_a_restart_with_the_state_file() {
    let dir = std::env::temp_dir().join(format!("paygate-oauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    let before = Gateway::over(MemoryKeyStore::new());
    let key = before.gate.create_key("alice", 20).await.unwrap();
    let t = before.sign_in(&key).await;
    assert_eq!(before.call(&t.access).await, StatusCode::OK);
    before.gate.store().save_to(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [&t.access, &t.refresh] {
        assert!(!text.contains(secret.as_str()), "no token at rest");
    }
    drop(before);

    let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
    assert_eq!(report.skipped, 0);
    let after = Gateway::over(store);
    assert_eq!(after.call(&t.access).await, StatusCode::OK);
    assert_eq!(after.credits(&key).await, 14, "both calls billed to alice");
    // Refresh works after the restart, and rotation and reuse detection with it.
    let (status, body) = after.refresh(&t).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access2 = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(after.call(&access2).await, StatusCode::OK);
    let (status, body) = after.refresh(&t).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(after.call(&access2).await, StatusCode::UNAUTHORIZED);
    // The client survived too: it signs in again without registering.
    let listed = after.oauth.clients().await.unwrap();
    assert!(listed.iter().any(|c| c.client_id == t.client));
    // A revoked access token stays revoked across a reload; its refresh token still works.
    let t3 = after.sign_in(&key).await;
    after
        .oauth
        .revoke_token(&t3.client, None, &t3.access)
        .await
        .unwrap();
    after.gate.store().save_to(&path).unwrap();
    let (store, _) = MemoryKeyStore::load_from(&path).unwrap();
    let after = Gateway::over(store);
    assert_eq!(after.call(&t3.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(after.refresh(&t3).await.0, StatusCode::OK);
    // A revocation is saved like any change.
    let t2 = after.sign_in(&key).await;
    after.gate.revoke(key.as_str()).await.unwrap();
    after.gate.store().save_to(&path).unwrap();
    let (store, _) = MemoryKeyStore::load_from(&path).unwrap();
    let again = Gateway::over(store);
    assert_eq!(again.call(&t2.access).await, StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn damaged_oauth_entries_cost_only_themselves() {
    let dir = std::env::temp_dir().join(format!("paygate-oauth-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.json");
    let gw = Gateway::over(MemoryKeyStore::new());
    let key = gw.gate.create_key("alice", 20).await.unwrap();
    let t = gw.sign_in(&key).await;
    gw.gate.store().save_to(&path).unwrap();
    // Hand-edited: a client of the wrong shape, a repeated client, a grant that is not one,
    // and a copy of the real grant (same tokens) under another id.
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let client = doc["oauth"]["clients"][0].clone();
    let mut copy = doc["oauth"]["grants"][0].clone();
    copy["family"] = json!("another");
    let clients = doc["oauth"]["clients"].as_array_mut().unwrap();
    clients.insert(0, json!({"clientId": 7}));
    clients.push(json!({"clientId": client["clientId"], "clientName": "impostor", "redirectUris": [], "auth": "none", "createdMs": 0, "revoked": true}));
    let grants = doc["oauth"]["grants"].as_array_mut().unwrap();
    grants.push(json!("not a grant"));
    grants.push(copy);
    std::fs::write(&path, doc.to_string()).unwrap();
    let (store, report) = MemoryKeyStore::load_from(&path).unwrap();
    assert_eq!((report.loaded, report.skipped), (1, 0), "every key loads");
    let after = Gateway::over(store);
    assert_eq!(after.call(&t.access).await, StatusCode::OK);
    let clients = after.oauth.clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert!(!clients[0].revoked, "the first entry of a client wins");
    // A section that is not an object at all: the file is refused and left as it was.
    let bad = json!({"version": 1, "keys": [], "oauth": 5}).to_string();
    std::fs::write(&path, &bad).unwrap();
    let err = MemoryKeyStore::load_from(&path).unwrap_err().to_string();
    assert!(err.contains("left untouched"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use common::redis_server::RedisServer;
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};

    async fn store(url: &str, prefix: &str) -> RedisKeyStore {
        let config = RedisConfig::new(url)
            .with_prefix(prefix)
            .with_time(RedisTime::Request);
        RedisKeyStore::connect(config).await.unwrap()
    }

    #[tokio::test]
    async fn a_token_from_one_gateway_works_on_another_sharing_redis() {
        let server = RedisServer::start();
        let a = Gateway::over(store(&server.url(), "shared:").await);
        let b = Gateway::over(store(&server.url(), "shared:").await);
        let key = a.gate.create_key("alice", 20).await.unwrap();
        let t = a.sign_in(&key).await;
        assert_eq!(b.call(&t.access).await, StatusCode::OK);
        assert_eq!(a.call(&t.access).await, StatusCode::OK);
        assert_eq!(a.credits(&key).await, 14);
        // Refreshed on B; the old refresh token replayed on A ends the family everywhere.
        let (status, body) = b.refresh(&t).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let access2 = body["access_token"].as_str().unwrap().to_string();
        assert_eq!(a.call(&access2).await, StatusCode::OK);
        let (status, _) = a.refresh(&t).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(b.call(&access2).await, StatusCode::UNAUTHORIZED);
        // Rotating the key on A ends B's view of its grants.
        let t3 = b.sign_in(&key).await;
        assert_eq!(a.call(&t3.access).await, StatusCode::OK);
        a.gate.rotate(key.as_str()).await.unwrap().unwrap();
        assert_eq!(b.call(&t3.access).await, StatusCode::UNAUTHORIZED);
        // The client is listed on both.
        assert_eq!(a.oauth.clients().await.unwrap().len(), 2);
        assert_eq!(b.oauth.clients().await.unwrap().len(), 2);
        // A restart of Redis (append-only file) keeps the grants.
        let key2 = a.gate.create_key("bob", 20).await.unwrap();
        let t4 = a.sign_in(&key2).await;
        drop((a, b));
        let mut server = server;
        server.restart();
        let c = Gateway::over(store(&server.url(), "shared:").await);
        assert_eq!(c.call(&t4.access).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn racing_refreshes_rotate_once() {
        let server = RedisServer::start();
        let a = Gateway::over(store(&server.url(), "race:").await);
        let b = Gateway::over(store(&server.url(), "race:").await);
        let key = a.gate.create_key("alice", 20).await.unwrap();
        let t = a.sign_in(&key).await;
        let (ra, rb) = tokio::join!(a.refresh(&t), b.refresh(&t));
        let ok = [ra.0, rb.0]
            .iter()
            .filter(|s| **s == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "exactly one refresh wins: {ra:?} {rb:?}");
    }
}
