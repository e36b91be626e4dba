//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use paygate_mcp::{Clock, Gate, KeyUpdate, ManualClock, MemoryKeyStore, PayGateConfig};

/// 2026-03-15T10:00:00Z, a plain mid-month weekday.
pub const T0: &str = "2026-03-15T10:00:00Z";

/// A manual clock at `rfc3339`.
pub fn clock_at(rfc3339: &str) -> Arc<ManualClock> {
    Arc::new(ManualClock::at_rfc3339(rfc3339).expect("valid test timestamp"))
}

/// A gate over a fresh memory store with a manual clock at [`T0`].
pub fn gate(cfg: PayGateConfig) -> (Arc<ManualClock>, Gate<MemoryKeyStore>) {
    gate_at(cfg, T0)
}

/// A gate over a fresh memory store with a manual clock at `rfc3339`.
pub fn gate_at(cfg: PayGateConfig, rfc3339: &str) -> (Arc<ManualClock>, Gate<MemoryKeyStore>) {
    let clock = clock_at(rfc3339);
    let gate = Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).expect("valid config");
    (clock, gate)
}

/// Applies an update to the key `key` of a memory-store gate.
pub fn update(gate: &Gate<MemoryKeyStore>, key: &str, change: KeyUpdate) {
    use paygate_mcp::KeyStore;
    paygate_mcp::block_on(
        gate.store()
            .update(&paygate_mcp::KeyDigest::of(key), &change),
    )
    .expect("store answers")
    .expect("key exists");
}

/// The full record of `key`.
pub fn record(gate: &Gate<MemoryKeyStore>, key: &str) -> paygate_mcp::KeyRecord {
    use paygate_mcp::KeyStore;
    paygate_mcp::block_on(gate.store().get(&paygate_mcp::KeyDigest::of(key)))
        .expect("store answers")
        .expect("key exists")
}

/// Milliseconds of `clock` as a chrono time.
pub fn now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    clock.now()
}

pub mod mcp;

pub mod redis_server;

pub mod stacks;

/// A whole response body as text.
pub async fn body_text(
    resp: http::Response<impl http_body::Body<Data = bytes::Bytes, Error = impl std::fmt::Debug>>,
) -> String {
    use http_body_util::BodyExt;
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

pub mod gateway;

/// A paid `tools/call` (tool `search`) with `Authorization: Bearer <token>` through
/// `PayGateLayer::with_oauth(oauth)` over a server that answers every call with a result:
/// the answer's status and headers.
pub async fn bearer_call<St: paygate_mcp::KeyStore>(
    gate: &Arc<Gate<St>>,
    oauth: &Arc<paygate_mcp::oauth::OAuthServer<St>>,
    token: &str,
) -> (http::StatusCode, http::HeaderMap) {
    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt};
    let svc = ServiceBuilder::new()
        .layer(paygate_mcp::PayGateLayer::from_gate(gate.clone()).with_oauth(oauth.clone()))
        .service(tower::service_fn(
            |_req: http::Request<Full<Bytes>>| async {
                let body =
                    serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}});
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                    body.to_string(),
                ))))
            },
        ));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}});
    let req = http::Request::post("http://localhost/mcp")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    let resp = svc.oneshot(req).await.expect("the layer answers");
    (resp.status(), resp.headers().clone())
}

/// Every future of `all`, polled together (as concurrent deliveries or callers are), their
/// outputs in order.
pub async fn join_all<F: std::future::Future>(all: Vec<F>) -> Vec<F::Output> {
    let mut all: Vec<std::pin::Pin<Box<F>>> = all.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = all.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in all.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A client registered with `oauth` and signed in with `account`'s key (PKCE S256, the
/// loopback redirect URI the tests use): its id and tokens.
pub async fn oauth_sign_in<St: paygate_mcp::KeyStore>(
    oauth: &paygate_mcp::oauth::OAuthServer<St>,
    account: &paygate_mcp::KeyRecord,
) -> (String, paygate_mcp::oauth::TokenResponse) {
    use base64::Engine as _;
    use paygate_mcp::oauth::{AuthorizeRequest, Registration};
    use sha2::Digest as _;
    let redirect = "http://127.0.0.1:53682/callback";
    let client_id = oauth
        .register(Registration {
            redirect_uris: vec![redirect.into()],
            ..Default::default()
        })
        .await
        .expect("registers")
        .client
        .client_id;
    let verifier = "a-verifier-of-plenty-of-characters-0123456789-abcdefgh";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let request = AuthorizeRequest {
        response_type: "code".into(),
        client_id: client_id.clone(),
        redirect_uri: Some(redirect.into()),
        code_challenge: challenge,
        code_challenge_method: Some("S256".into()),
        resource: None,
        scope: None,
    };
    let code = oauth.issue_code(&request, account).await.expect("a code");
    let tokens = oauth
        .exchange_code(
            &client_id,
            None,
            &code,
            Some(redirect),
            Some(verifier),
            None,
        )
        .await
        .expect("tokens");
    (client_id, tokens)
}
