//! The built-in OAuth 2.1 authorization server, in process through `AdminService`: metadata,
//! registration, the consent page (escaping, framing and script headers), approval with an
//! API key, the code and token exchanges with PKCE, refresh rotation and reuse, revocation,
//! the operator's client list, and grants dying with their key. Every refusal answers in
//! RFC 6749's words and never redirects to a URI the client did not register.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use paygate_mcp::oauth::OAuthServer;
use paygate_mcp::{AdminService, Gate, ManualClock, MemoryKeyStore, PayGateConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const ADMIN: &str = "admin_0123456789abcdef0123456789abcdef";
const ISSUER: &str = "http://127.0.0.1:3402";
const REDIRECT: &str = "http://127.0.0.1:53682/callback";
const VERIFIER: &str = "a-verifier-of-plenty-of-characters-0123456789-abcdefgh";

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
    json: Value,
}

struct Server {
    gate: Arc<Gate<MemoryKeyStore>>,
    clock: Arc<ManualClock>,
    oauth: Arc<OAuthServer<MemoryKeyStore>>,
    admin: AdminService,
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The query parameters of a `Location`.
fn location_params(a: &Answer) -> Vec<(String, String)> {
    let loc = a.headers["location"].to_str().unwrap();
    let (_, query) = loc.split_once('?').expect("a query");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Server {
    fn new() -> Self {
        let clock = common::clock_at(common::T0);
        let gate = Arc::new(
            Gate::with_store(
                PayGateConfig::default(),
                MemoryKeyStore::new(),
                clock.clone(),
            )
            .unwrap(),
        );
        let oauth = Arc::new(OAuthServer::new(ISSUER, gate.clone()));
        let admin = AdminService::new(gate.clone(), ADMIN)
            .unwrap()
            .with_oauth(oauth.clone());
        Self {
            gate,
            clock,
            oauth,
            admin,
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .admin
            .clone()
            .oneshot(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        Answer {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn post_form(&self, uri: &str, pairs: &[(&str, &str)]) -> Answer {
        let ct = [("content-type", "application/x-www-form-urlencoded")];
        self.send(Method::POST, uri, &ct, form(pairs)).await
    }

    async fn register(&self, body: Value) -> Answer {
        self.send(Method::POST, "/oauth/register", &[], body.to_string())
            .await
    }

    async fn client(&self) -> String {
        let r = self
            .register(json!({"redirect_uris": [REDIRECT], "client_name": "Claude <b>&</b>", "application_type": "native"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["client_id"].as_str().unwrap().to_string()
    }

    fn authorize_params(client_id: &str) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", client_id.into()),
            ("redirect_uri", REDIRECT.into()),
            ("state", "st-123".into()),
            ("code_challenge", challenge(VERIFIER)),
            ("code_challenge_method", "S256".into()),
            ("resource", format!("{ISSUER}/mcp")),
            ("scope", "mcp".into()),
        ]
    }

    /// Submits the consent form with `api_key` and `decision`.
    async fn consent(&self, client_id: &str, api_key: &str, decision: &str) -> Answer {
        let params = Self::authorize_params(client_id);
        let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.push(("api_key", api_key));
        pairs.push(("decision", decision));
        self.post_form("/oauth/authorize", &pairs).await
    }

    async fn code(&self, client_id: &str, api_key: &str) -> String {
        let r = self.consent(client_id, api_key, "approve").await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.text);
        let params = location_params(&r);
        assert_eq!(param(&params, "state"), Some("st-123"));
        assert_eq!(param(&params, "iss"), Some(ISSUER));
        param(&params, "code").unwrap().to_string()
    }

    async fn refresh(&self, client_id: &str, refresh_token: &str) -> Answer {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    async fn exchange(&self, client_id: &str, code: &str, verifier: &str) -> Answer {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", client_id),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
                ("resource", &format!("{ISSUER}/mcp")),
            ],
        )
        .await
    }
}

#[tokio::test]
async fn metadata_documents_name_the_endpoints_and_the_resource() {
    let s = Server::new();
    let r = s
        .send(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["issuer"], ISSUER);
    assert_eq!(r.json["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(
        r.json["registration_endpoint"],
        format!("{ISSUER}/oauth/register")
    );
    assert_eq!(r.json["code_challenge_methods_supported"], json!(["S256"]));
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = s.send(Method::GET, path, &[], String::new()).await;
        assert_eq!(r.json["resource"], format!("{ISSUER}/mcp"), "{path}");
        assert_eq!(r.json["authorization_servers"], json!([ISSUER]), "{path}");
        assert_eq!(r.json["bearer_methods_supported"], json!(["header"]));
    }
    let r = s
        .send(Method::GET, "/.well-known/mcp-payment", &[], String::new())
        .await;
    assert_eq!(r.json["oauthSupported"], true);
    // Without OAuth enabled the endpoints do not exist.
    let plain = AdminService::new(s.gate.clone(), ADMIN).unwrap();
    let req = Request::get("/.well-known/oauth-authorization-server")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        plain.oneshot(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn consent_page_escapes_what_it_shows_and_cannot_be_framed() {
    let s = Server::new();
    let client = s.client().await;
    let params = Server::authorize_params(&client);
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        q.append_pair(k, v);
    }
    q.append_pair("extra", "\"><script>alert(1)</script>");
    let r = s
        .send(
            Method::GET,
            &format!("/oauth/authorize?{}", q.finish()),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    // form-action would stop browsers following the form's redirect to the client.
    assert!(!csp.contains("form-action"), "{csp}");
    assert!(
        r.text.contains("Claude &lt;b&gt;&amp;&lt;/b&gt;"),
        "the client's name, escaped"
    );
    assert!(
        !r.text.contains("<script>"),
        "nothing a request carries runs"
    );
    assert!(r.text.contains("name=\"api_key\"") && r.text.contains("value=\"approve\""));
    assert!(
        r.text.contains("value=\"st-123\""),
        "the form carries the request back"
    );
}

#[tokio::test]
async fn a_grant_end_to_end_pays_with_the_approving_key() {
    let s = Server::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let client = s.client().await;
    // A wrong key shows the page again, with an error and no redirect.
    let r = s.consent(&client, "pg_wrong", "approve").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.get("location").is_none());
    assert!(r.text.contains("not valid"));
    // Deny goes back with access_denied.
    let r = s.consent(&client, &issued.key, "deny").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(param(&location_params(&r), "error"), Some("access_denied"));
    // Approve: a code, exchanged once for tokens acting for alice's account.
    let code = s.code(&client, &issued.key).await;
    let r = s.exchange(&client, &code, VERIFIER).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.json["token_type"], "Bearer");
    assert_eq!(r.json["expires_in"], 3600);
    let access = r.json["access_token"].as_str().unwrap().to_string();
    let refresh = r.json["refresh_token"].as_str().unwrap().to_string();
    // The token acts for the account whose key approved it.
    let grant = s.oauth.authenticate(&access).await.unwrap();
    assert_eq!(grant.key_id, issued.record.id());
    assert_eq!(grant.client_id, client);
    // The code is spent; presented again, it also revokes what its first use gave
    // (RFC 6749 §4.1.2).
    let again = s.exchange(&client, &code, VERIFIER).await;
    assert_eq!(
        (again.status, again.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(s.oauth.authenticate(&access).await.is_err());
    assert_eq!(
        s.refresh(&client, &refresh).await.json["error"],
        "invalid_grant"
    );
    let code = s.code(&client, &issued.key).await;
    let r = s.exchange(&client, &code, VERIFIER).await;
    let refresh = r.json["refresh_token"].as_str().unwrap().to_string();
    // Refresh rotates; the old refresh token, presented again, kills the family.
    let r = s.refresh(&client, &refresh).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let refresh2 = r.json["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh);
    let reuse = s.refresh(&client, &refresh).await;
    assert_eq!(reuse.json["error"], "invalid_grant");
    let after = s.refresh(&client, &refresh2).await;
    assert_eq!(
        after.json["error"], "invalid_grant",
        "the family is revoked"
    );
    // No secret of the exchange shows up where it should not.
    assert!(!r.text.contains(&issued.key));
}

#[tokio::test]
async fn every_refusal_is_an_oauth_error_and_none_redirects_to_an_unregistered_uri() {
    let s = Server::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let client = s.client().await;
    // Unregistered redirect URI: an error page here, never a redirect there.
    let mut params = Server::authorize_params(&client);
    params[2].1 = "http://evil.example/cb".into();
    let q: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s
        .send(
            Method::GET,
            &format!("/oauth/authorize?{}", form(&q)),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get("location").is_none());
    // plain PKCE: an error page here too. Clients register themselves, so not even a
    // registered redirect URI gets errors sent to it (no open redirector, RFC 9700 §4.11.2).
    let mut params = Server::authorize_params(&client);
    params[5].1 = "plain".into();
    let q: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s
        .send(
            Method::GET,
            &format!("/oauth/authorize?{}", form(&q)),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get("location").is_none());
    assert!(r.text.contains("S256"), "{}", r.text);
    // Wrong verifier, expired code, wrong resource.
    let code = s.code(&client, &issued.key).await;
    let r = s
        .exchange(
            &client,
            &code,
            "another-verifier-of-plenty-of-characters-0123456",
        )
        .await;
    assert_eq!(r.json["error"], "invalid_grant");
    let code = s.code(&client, &issued.key).await;
    s.clock.advance_secs(61);
    assert_eq!(
        s.exchange(&client, &code, VERIFIER).await.json["error"],
        "invalid_grant"
    );
    let code = s.code(&client, &issued.key).await;
    let r = s
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("code", &code),
                ("code_verifier", VERIFIER),
                ("redirect_uri", REDIRECT),
                ("resource", "https://other.example/mcp"),
            ],
        )
        .await;
    assert_eq!(r.json["error"], "invalid_target");
    // Unknown grant type, repeated parameters, unknown client.
    let r = s
        .post_form(
            "/oauth/token",
            &[("grant_type", "password"), ("client_id", &client)],
        )
        .await;
    assert_eq!(r.json["error"], "unsupported_grant_type");
    let r = s
        .post_form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("grant_type", "authorization_code"),
            ],
        )
        .await;
    assert_eq!(r.json["error"], "invalid_request");
    let r = s.refresh("pgc_nobody", "x").await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Registration refuses unsafe redirect URIs.
    let r = s
        .register(json!({"redirect_uris": ["http://evil.example/cb"]}))
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_redirect_uri"))
    );
}

#[tokio::test]
async fn confidential_clients_authenticate_with_basic_or_the_form() {
    let s = Server::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let r = s
        .register(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}))
        .await;
    let client = r.json["client_id"].as_str().unwrap().to_string();
    let secret = r.json["client_secret"].as_str().unwrap().to_string();
    let code = s.code(&client, &issued.key).await;
    let basic = format!("Basic {}", STANDARD.encode(format!("{client}:{secret}")));
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let r = s
        .send(
            Method::POST,
            "/oauth/token",
            &[("authorization", &basic)],
            form(&pairs),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let code = s.code(&client, &issued.key).await;
    let wrong = format!("Basic {}", STANDARD.encode(format!("{client}:nope")));
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let r = s
        .send(
            Method::POST,
            "/oauth/token",
            &[("authorization", &wrong)],
            form(&pairs),
        )
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
}

#[tokio::test]
async fn operators_list_and_revoke_clients_and_a_revoked_key_ends_its_grants() {
    let s = Server::new();
    let issued = s.gate.create_key_with("alice", 10, &[]).await.unwrap();
    let client = s.client().await;
    let admin = [("x-admin-key", ADMIN)];
    let r = s
        .send(Method::GET, "/oauth/clients", &admin, String::new())
        .await;
    assert_eq!(r.json["count"], 1);
    assert_eq!(r.json["clients"][0]["clientId"], client.as_str());
    assert!(r.json["clients"][0].get("client_secret").is_none());
    assert_eq!(
        s.send(Method::GET, "/oauth/clients", &[], String::new())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Revoking the key ends the refresh token issued with it.
    let code = s.code(&client, &issued.key).await;
    let tokens = s.exchange(&client, &code, VERIFIER).await;
    let refresh = tokens.json["refresh_token"].as_str().unwrap().to_string();
    let r = s
        .send(
            Method::POST,
            "/keys/revoke",
            &admin,
            json!({"keyId": issued.record.id()}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s.refresh(&client, &refresh).await;
    assert_eq!(r.json["error"], "invalid_grant");
    // And a revoked key cannot approve.
    assert_eq!(
        s.consent(&client, &issued.key, "approve").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Revoking the client closes the consent page to it.
    let r = s
        .send(
            Method::POST,
            "/oauth/clients/revoke",
            &admin,
            json!({"clientId": client}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let q: Vec<(&str, String)> = Server::authorize_params(&client);
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s
        .send(
            Method::GET,
            &format!("/oauth/authorize?{}", form(&q)),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // RFC 7009: revoking an unknown token is fine, for a client that authenticates.
    let other = s.client().await;
    let r = s
        .post_form(
            "/oauth/revoke",
            &[("token", "pgat_unknown"), ("client_id", &other)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s
        .post_form("/oauth/revoke", &[("token", "pgat_unknown")])
        .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let r = s.post_form("/oauth/revoke", &[]).await;
    assert_eq!(r.json["error"], "invalid_request");
}
