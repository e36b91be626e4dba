//! The gated endpoint as an OAuth 2.1 protected resource (SPEC §12): an access token acts
//! for the account that approved it (billed and limited as its key), a call without valid
//! credentials is HTTP 401 with the challenge that starts a client's sign-in, tokens in the
//! query string are refused, the token never reaches the server behind the gate, and
//! `X-API-Key` keeps working beside it.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use paygate_mcp::oauth::{AuthorizeRequest, GrantSettings, OAuthServer, Registration};
use paygate_mcp::{Gate, IssuedKey, MemoryKeyStore, PayGateConfig, PayGateLayer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const ISSUER: &str = "http://127.0.0.1:3402";
const REDIRECT: &str = "http://127.0.0.1:53682/callback";
const VERIFIER: &str = "a-verifier-of-plenty-of-characters-0123456789-abcdefgh";

struct Setup {
    gate: Arc<Gate<MemoryKeyStore>>,
    oauth: Arc<OAuthServer<MemoryKeyStore>>,
    /// The Authorization header of every request the server behind the gate saw.
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
}

impl Setup {
    fn new() -> Self {
        Self::with_scopes(&[])
    }

    /// A gate whose tokens need `scopes`.
    fn with_scopes(scopes: &[&str]) -> Self {
        let clock = common::clock_at(common::T0);
        let cfg = PayGateConfig::default().with_tool_price("search", 3);
        let gate = Arc::new(Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).unwrap());
        let mut settings = GrantSettings::new(format!("{ISSUER}/mcp"));
        settings.scopes = scopes.iter().map(|s| s.to_string()).collect();
        let oauth = Arc::new(OAuthServer::with_settings(ISSUER, settings, gate.clone()));
        Self {
            gate,
            oauth,
            seen: Arc::default(),
        }
    }

    /// A token pair approved with `issued`'s key.
    async fn token(&self, issued: &IssuedKey) -> String {
        self.token_with_scope(issued, None).await
    }

    /// A token asking for `scope` (all the server's scopes when `None`).
    async fn token_with_scope(&self, issued: &IssuedKey, scope: Option<&str>) -> String {
        let grants = &self.oauth;
        let client = grants
            .register(Registration {
                redirect_uris: vec![REDIRECT.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .client
            .client_id;
        let req = AuthorizeRequest {
            response_type: "code".into(),
            client_id: client.clone(),
            redirect_uri: Some(REDIRECT.into()),
            code_challenge: URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes())),
            code_challenge_method: Some("S256".into()),
            resource: Some(format!("{ISSUER}/mcp")),
            scope: scope.map(str::to_string),
        };
        let code = grants.issue_code(&req, &issued.record).await.unwrap();
        grants
            .exchange_code(&client, None, &code, Some(REDIRECT), Some(VERIFIER), None)
            .await
            .unwrap()
            .access_token
    }

    async fn call(&self, uri: &str, headers: &[(&str, &str)], method: &str) -> Answer {
        let seen = self.seen.clone();
        let svc = ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(self.gate.clone()).with_oauth(self.oauth.clone()))
            .service(service_fn(move |req: Request<Full<Bytes>>| {
                let seen = seen.clone();
                async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    seen.lock().push(auth);
                    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}});
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                }
            }));
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "search"}});
        let mut b = Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = svc
            .oneshot(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

const CHALLENGE: &str =
    "Bearer resource_metadata=\"http://127.0.0.1:3402/.well-known/oauth-protected-resource/mcp\"";

#[tokio::test]
async fn an_access_token_pays_with_its_account_and_never_goes_downstream() {
    let s = Setup::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let token = s.token(&issued).await;
    let bearer = format!("Bearer {token}");
    let r = s
        .call(
            "http://localhost/mcp",
            &[("authorization", &bearer)],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(r.json.get("result").is_some(), "{}", r.json);
    assert_eq!(r.headers["x-credits-remaining"], "7");
    let rec = s.gate.get_key(issued.record.id()).await.unwrap().unwrap();
    assert_eq!(
        (rec.credits, rec.total_calls),
        (7, 1),
        "billed as alice's key"
    );
    assert_eq!(
        s.seen.lock().as_slice(),
        &[None],
        "the token stayed at the gate"
    );
    // The usage event names the account.
    let events = s.gate.meter().since(None);
    assert_eq!(events.last().unwrap().key_id, Some(issued.record.id()));
    // X-API-Key works beside OAuth; a token sent along with it still stays at the gate.
    let r = s
        .call(
            "http://localhost/mcp",
            &[("x-api-key", &issued.key), ("authorization", &bearer)],
            "tools/call",
        )
        .await;
    assert_eq!(r.headers["x-credits-remaining"], "4");
    assert_eq!(s.seen.lock().as_slice(), &[None, None]);
}

#[tokio::test]
async fn calls_without_valid_credentials_get_the_sign_in_challenge() {
    let s = Setup::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    // No credentials at all.
    let r = s.call("http://localhost/mcp", &[], "tools/call").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], CHALLENGE);
    assert_eq!(
        r.json["error"]["code"], -32002,
        "the JSON-RPC error body is kept"
    );
    // A token that is not (or no longer) valid.
    let r = s
        .call(
            "http://localhost/mcp",
            &[("authorization", "Bearer pgat_0000")],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        format!("{CHALLENGE}, error=\"invalid_token\"")
    );
    // A revoked key's tokens stop working with it.
    let token = s.token(&issued).await;
    s.gate.revoke(issued.record.id()).await.unwrap();
    let bearer = format!("Bearer {token}");
    let r = s
        .call(
            "http://localhost/mcp",
            &[("authorization", &bearer)],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.gate
            .get_key(issued.record.id())
            .await
            .unwrap()
            .unwrap()
            .credits,
        10
    );
    // Free methods need no credentials, OAuth or not.
    let r = s.call("http://localhost/mcp", &[], "tools/list").await;
    assert_eq!(r.status, StatusCode::OK);
    // A wrong X-API-Key is still an invalid key (and the challenge says how to sign in).
    let r = s
        .call(
            "http://localhost/mcp",
            &[("x-api-key", "pg_nope")],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        s.seen.lock().iter().all(Option::is_none),
        "no token ever went downstream"
    );
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused() {
    let s = Setup::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let token = s.token(&issued).await;
    let r = s
        .call(
            &format!("http://localhost/mcp?access_token={token}"),
            &[],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.gate
            .get_key(issued.record.id())
            .await
            .unwrap()
            .unwrap()
            .credits,
        10
    );
    assert!(s.seen.lock().is_empty());
}

#[tokio::test]
async fn a_token_without_a_needed_scope_is_forbidden_and_told_which() {
    let s = Setup::with_scopes(&["mcp:tools", "mcp:read"]);
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    // The challenge names the scopes to ask for.
    let r = s.call("http://localhost/mcp", &[], "tools/call").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        format!("{CHALLENGE}, scope=\"mcp:tools mcp:read\"")
    );
    // Only one of the two: valid, but not enough (RFC 6750 §3.1), and nothing is charged.
    let narrow = s.token_with_scope(&issued, Some("mcp:read")).await;
    let bearer = format!("Bearer {narrow}");
    let r = s
        .call(
            "http://localhost/mcp",
            &[("authorization", &bearer)],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.headers["www-authenticate"],
        format!(
            "Bearer error=\"insufficient_scope\", scope=\"mcp:tools mcp:read\", resource_metadata=\"{ISSUER}/.well-known/oauth-protected-resource/mcp\""
        )
    );
    assert_eq!(s.seen.lock().len(), 0, "nothing reached the server");
    // Asking for nothing grants every scope: the call goes through and is paid.
    let full = s.token_with_scope(&issued, None).await;
    let bearer = format!("Bearer {full}");
    let r = s
        .call(
            "http://localhost/mcp",
            &[("authorization", &bearer)],
            "tools/call",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let credits = s
        .gate
        .get_key(issued.record.id())
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(credits, 7);
}
