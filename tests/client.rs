//! `PayGateClient` (SPEC §15) against a whole gateway on a loopback port (the layers and the
//! admin API over a counting MCP server, as `examples/gateway.rs` serves them): every denial
//! class comes back typed, a rate limit is waited out for exactly the gateway's
//! `Retry-After`, a `-32402` is paid through the hook and the call is charged once, and JSON
//! and SSE answers read alike.
#![cfg(feature = "client")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use paygate_mcp::client::{ClientError, Credentials, PayGateClient, PaymentDecision};
use paygate_mcp::KeyUpdate;
use serde_json::json;

use common::gateway::{Reply, TestGateway};

async fn gateway(cfg: serde_json::Value) -> TestGateway {
    TestGateway::start(common::gateway::config(cfg).unwrap())
        .await
        .unwrap()
}

fn client(gw: &TestGateway, key: &str) -> PayGateClient {
    PayGateClient::builder(
        &format!("http://{}", gw.host()),
        Credentials::ApiKey(key.into()),
    )
    .build()
    .unwrap()
}

/// A key with 100 credits that may call `search` only.
async fn search_only_key(gw: &TestGateway) -> String {
    let key = gw.key(100).await;
    common::update(
        &gw.gate,
        &key,
        KeyUpdate::SetAcl {
            allowed_tools: vec!["search".into()],
            denied_tools: vec![],
        },
    );
    key
}

/// What the gateway says `key` must wait, asked directly by a plain client (which waits
/// for nothing).
async fn gateway_wait(gw: &TestGateway, key: &str) -> Duration {
    let probe = client(gw, key)
        .call_tool("echo", json!({}))
        .await
        .unwrap_err();
    match probe {
        ClientError::RateLimited {
            retry_after: Some(wait),
            ..
        } => wait,
        other => panic!("rate limited, with a wait: {other:?}"),
    }
}

/// A sleeper that moves the gateway's clock instead of sleeping, noting each wait.
fn clock_sleeper(
    gw: &TestGateway,
    waited: &Arc<Mutex<Vec<Duration>>>,
) -> impl Fn(Duration) -> paygate_mcp::client::BoxFuture<()> + Send + Sync + 'static {
    let (waited, clock) = (waited.clone(), gw.clock.clone());
    move |d| {
        waited.lock().push(d);
        clock.advance_ms(d.as_millis() as i64);
        Box::pin(async {})
    }
}

/// A payment hook standing in for a purchase: an operator tops `key` up by `credits` and
/// the call is retried; each request's `credits_required` is noted in `asked`.
fn top_up_hook(
    gw: &TestGateway,
    key: &str,
    credits: u64,
    asked: &Arc<Mutex<Vec<u64>>>,
) -> impl Fn(paygate_mcp::client::PaymentRequired) -> paygate_mcp::client::BoxFuture<PaymentDecision>
       + Send
       + Sync
       + 'static {
    let (asked, gate, key) = (asked.clone(), gw.gate.clone(), key.to_string());
    move |needed| {
        asked.lock().push(needed.credits_required);
        let (gate, key) = (gate.clone(), key.clone());
        Box::pin(async move {
            gate.top_up(key.as_str(), credits).await.unwrap();
            PaymentDecision::Retry
        })
    }
}

#[tokio::test]
async fn tools_prices_balance_and_a_paid_call() {
    let gw = gateway(
        json!({"defaultCreditsPerCall": 2, "toolPricing": {"search": {"creditsPerCall": 5}}}),
    )
    .await;
    let key = gw.key(20).await;
    let c = client(&gw, &key);
    c.initialize().await.unwrap();
    let tools = c.list_tools().await.unwrap();
    let price = |name: &str| {
        tools
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.credits_per_call)
    };
    assert_eq!((price("search"), price("echo")), (Some(5), Some(2)));
    let result = c.call_tool("search", json!({"q": "rust"})).await.unwrap();
    assert!(result.get("content").is_some(), "{result}");
    assert_eq!(c.last_call().credits_remaining, Some(15));
    c.list_tools().await.unwrap();
    assert_eq!(
        c.last_call().credits_remaining,
        Some(15),
        "a free method keeps the figures"
    );
    assert_eq!(c.balance().await.unwrap()["credits"], json!(15));
    // The same over SSE.
    gw.set_reply(Reply::Sse);
    c.call_tool("search", json!({})).await.unwrap();
    assert_eq!(gw.credits(&key).await, 10);
}

#[tokio::test]
async fn every_denial_comes_back_typed() {
    let gw = gateway(json!({"defaultCreditsPerCall": 5, "globalRateLimitPerMin": 1})).await;
    // Payment: not enough credits.
    let poor = gw.key(1).await;
    let err = client(&gw, &poor)
        .call_tool("echo", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::PaymentRequired {
            reason: "insufficient_credits".into(),
            credits_required: 5,
            remaining: Some(1),
        }
    );
    // Unauthorized: an unknown key.
    let err = client(&gw, "pg_nobody_00000000000000")
        .call_tool("echo", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Unauthorized { ref reason } if reason == "invalid_api_key"),
        "{err:?}"
    );
    // Forbidden: a tool off the key's list.
    let narrow = search_only_key(&gw).await;
    let err = client(&gw, &narrow)
        .call_tool("echo", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Forbidden { .. }), "{err:?}");
    // Rate limited, with when to come back.
    let busy = gw.key(100).await;
    let c = client(&gw, &busy);
    c.call_tool("echo", json!({})).await.unwrap();
    let err = c.call_tool("echo", json!({})).await.unwrap_err();
    let ClientError::RateLimited {
        retry_after: Some(wait),
        ..
    } = err
    else {
        panic!("rate limited: {err:?}");
    };
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
    // A JSON-RPC error of the server behind the gateway.
    let other = gw.key(100).await;
    gw.set_reply(Reply::RpcError);
    let err = client(&gw, &other)
        .call_tool("echo", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tool { .. }), "{err:?}");
    // Nothing listening.
    let gone = PayGateClient::builder("http://127.0.0.1:9", Credentials::ApiKey(other.clone()))
        .build()
        .unwrap();
    assert!(matches!(
        gone.call_tool("echo", json!({})).await,
        Err(ClientError::Transport(_))
    ));
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_for_the_gateways_retry_after() {
    let gw =
        Arc::new(gateway(json!({"defaultCreditsPerCall": 1, "globalRateLimitPerMin": 1})).await);
    let key = gw.key(10).await;
    let waited: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let c = PayGateClient::builder(
        &format!("http://{}", gw.host()),
        Credentials::ApiKey(key.clone()),
    )
    .wait_on_rate_limit(2, Duration::from_secs(120))
    .sleeper(clock_sleeper(&gw, &waited))
    .build()
    .unwrap();
    c.call_tool("echo", json!({})).await.unwrap();
    let expected = gateway_wait(&gw, &key).await;
    // The HTTP header says the same as the body's figure the client read.
    let raw = reqwest::Client::new()
        .post(format!("http://{}/mcp", gw.host()))
        .header("x-api-key", &key)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}),
        )
        .send()
        .await
        .unwrap();
    let header: u64 = raw.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["data"]["retryAfterSeconds"], json!(header));
    assert_eq!(Duration::from_secs(header), expected);
    c.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(
        *waited.lock(),
        vec![expected],
        "waited exactly the gateway's Retry-After"
    );
    assert_eq!(gw.credits(&key).await, 8, "two calls, each charged once");
    // A wait longer than allowed is not taken.
    let impatient = PayGateClient::builder(
        &format!("http://{}", gw.host()),
        Credentials::ApiKey(key.clone()),
    )
    .wait_on_rate_limit(1, Duration::from_secs(1))
    .sleeper(|_| panic!("must not wait past the bound"))
    .build()
    .unwrap();
    assert!(matches!(
        impatient.call_tool("echo", json!({})).await,
        Err(ClientError::RateLimited { .. })
    ));
}

#[tokio::test]
async fn payment_required_is_paid_through_the_hook_and_charged_once() {
    let gw = Arc::new(gateway(json!({"defaultCreditsPerCall": 5})).await);
    let key = gw.key(2).await;
    let asked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let c = PayGateClient::builder(
        &format!("http://{}", gw.host()),
        Credentials::ApiKey(key.clone()),
    )
    .on_payment_required(top_up_hook(&gw, &key, 10, &asked))
    .build()
    .unwrap();
    let before = gw.downstream_calls();
    c.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(gw.downstream_calls() - before, 1, "the tool ran once");
    assert_eq!(*asked.lock(), vec![5]);
    assert_eq!(gw.credits(&key).await, 7, "2 + 10 bought - 5 charged once");
    // A hook that gives up: the typed error, once.
    let broke = gw.key(0).await;
    let calls: Arc<Mutex<u32>> = Arc::default();
    let n = calls.clone();
    let c = PayGateClient::builder(&format!("http://{}", gw.host()), Credentials::ApiKey(broke))
        .on_payment_required(move |_| {
            *n.lock() += 1;
            Box::pin(async { PaymentDecision::GiveUp })
        })
        .build()
        .unwrap();
    assert!(matches!(
        c.call_tool("echo", json!({})).await,
        Err(ClientError::PaymentRequired { .. })
    ));
    assert_eq!(*calls.lock(), 1);

    // Two calls short of credits at once ask the hook once: the second retries on the
    // first one's purchase instead of buying again.
    let empty = gw.key(0).await;
    let bought: Arc<Mutex<u32>> = Arc::default();
    let (b, gate, k) = (bought.clone(), gw.gate.clone(), empty.clone());
    let c = PayGateClient::builder(
        &format!("http://{}", gw.host()),
        Credentials::ApiKey(empty.clone()),
    )
    .on_payment_required(move |_| {
        *b.lock() += 1;
        let (gate, k) = (gate.clone(), k.clone());
        Box::pin(async move {
            // Slow enough that the other call is refused meanwhile.
            tokio::time::sleep(Duration::from_millis(200)).await;
            gate.top_up(k.as_str(), 10).await.unwrap();
            PaymentDecision::Retry
        })
    })
    .build()
    .unwrap();
    let (a, b) = tokio::join!(
        c.call_tool("echo", json!({})),
        c.call_tool("echo", json!({}))
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert_eq!(*bought.lock(), 1, "one purchase for both");
    assert_eq!(gw.credits(&empty).await, 0, "10 bought, 5 + 5 charged");
}

/// A gateway with the built-in OAuth server (access tokens live 60 s on its manual clock),
/// and a client signed in as alice (10 credits, calls cost 2) holding her token pair.
struct OAuthGateway {
    addr: std::net::SocketAddr,
    gate: Arc<paygate_mcp::Gate<paygate_mcp::MemoryKeyStore>>,
    clock: Arc<paygate_mcp::ManualClock>,
    alice: paygate_mcp::IssuedKey,
    tokens: paygate_mcp::client::OAuthTokens,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn oauth_gateway() -> OAuthGateway {
    use common::gateway::{Downstream, DownstreamState, IdEcho};
    use paygate_mcp::client::OAuthTokens;
    use paygate_mcp::oauth::{GrantSettings, OAuthServer};
    use paygate_mcp::{AdminService, Gate, MemoryKeyStore, PayGateConfig, PayGateLayer};
    use tower::ServiceBuilder;

    let clock = common::clock_at(common::T0);
    let cfg = PayGateConfig::default().with_default_price(2);
    let gate = Arc::new(Gate::with_store(cfg, MemoryKeyStore::new(), clock.clone()).unwrap());
    let issuer = "http://127.0.0.1:3402";
    let mut settings = GrantSettings::new(format!("{issuer}/mcp"));
    settings.access_ttl_secs = 60;
    let oauth = Arc::new(OAuthServer::with_settings(issuer, settings, gate.clone()));
    let downstream = Arc::new(DownstreamState {
        calls: Default::default(),
        reply: Mutex::new(Reply::Result),
        echo: Mutex::new(IdEcho::Raw),
    });
    let mcp = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()).with_oauth(oauth.clone()))
        .service(Downstream(downstream));
    let admin = AdminService::new(gate.clone(), common::gateway::ADMIN_KEY)
        .unwrap()
        .with_oauth(oauth.clone());
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .fallback_service(admin);
    let (addr, stop) = common::mcp::serve_at(app).await;
    // Signed in already: a client, a code approved with alice's key, a token pair.
    let alice = gate.create_key_with("alice", 10, &[]).await.unwrap();
    let (client_id, tokens) = common::oauth_sign_in(&oauth, &alice.record).await;
    let tokens = OAuthTokens {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_url: format!("http://{addr}/oauth/token"),
        client_id,
        client_secret: None,
    };
    OAuthGateway {
        addr,
        gate,
        clock,
        alice,
        tokens,
        _stop: stop,
    }
}

impl OAuthGateway {
    fn client(&self) -> PayGateClient {
        PayGateClient::builder(
            &format!("http://{}", self.addr),
            Credentials::OAuth(self.tokens.clone()),
        )
        .build()
        .unwrap()
    }

    async fn alice_credits(&self) -> u64 {
        let key = self.alice.key.as_str();
        self.gate.get_key(key).await.unwrap().unwrap().credits
    }
}

#[tokio::test]
async fn an_expired_oauth_token_is_refreshed_mid_session() {
    let gw = oauth_gateway().await;
    let (clock, gate) = (&gw.clock, &gw.gate);
    let first_refresh = gw.tokens.refresh_token.clone();
    let c = gw.client();
    c.initialize().await.unwrap();
    c.call_tool("echo", json!({})).await.unwrap();
    // The balance of the account the token acts for.
    assert_eq!(c.balance().await.unwrap()["credits"], json!(8));
    // The access token expires mid-session: the client refreshes and calls again, paid once.
    clock.advance_secs(61);
    c.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(gw.alice_credits().await, 6);
    let paygate_mcp::client::Credentials::OAuth(now) = c.credentials() else {
        panic!("still OAuth");
    };
    assert_ne!(
        now.refresh_token, first_refresh,
        "rotated; the client keeps the new one"
    );
    // Two calls meet an expired token at once: one refresh between them, so the grant
    // (which a second use of one refresh token would end) lives on.
    clock.advance_secs(61);
    let (a, b) = tokio::join!(
        c.call_tool("echo", json!({})),
        c.call_tool("echo", json!({}))
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    clock.advance_secs(61);
    c.call_tool("echo", json!({})).await.unwrap();
    assert_eq!(gw.alice_credits().await, 0);
    // Once the key is revoked, refreshing cannot help: the call is unauthorized.
    gate.revoke(gw.alice.key.as_str()).await.unwrap();
    clock.advance_secs(61);
    let err = c.call_tool("echo", json!({})).await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err:?}");
}

/// rmcp's client over [`PayGateClient::rmcp_transport`]: the same credentials, policies and
/// typed errors as the client's own calls.
#[cfg(feature = "rmcp")]
mod rmcp_agent {
    use super::*;
    use rmcp::model::{CallToolRequestParams, CallToolResult};
    use rmcp::service::{RoleClient, RunningService};
    use rmcp::ServiceExt;

    type Agent = RunningService<RoleClient, ()>;

    async fn agent(client: PayGateClient) -> Agent {
        ().serve(Arc::new(client).rmcp_transport())
            .await
            .expect("the rmcp client initializes through the gateway")
    }

    async fn echo(agent: &Agent) -> Result<CallToolResult, ClientError> {
        agent
            .call_tool(CallToolRequestParams::new("echo"))
            .await
            .map_err(ClientError::from)
    }

    #[tokio::test]
    async fn every_denial_comes_back_typed() {
        let gw = gateway(json!({"defaultCreditsPerCall": 5, "globalRateLimitPerMin": 1})).await;
        let tools = agent(client(&gw, &gw.key(100).await))
            .await
            .list_all_tools()
            .await
            .unwrap();
        assert_eq!(tools.len(), 2, "listing is free and passes");

        let poor = gw.key(1).await;
        assert_eq!(
            echo(&agent(client(&gw, &poor)).await).await.unwrap_err(),
            ClientError::PaymentRequired {
                reason: "insufficient_credits".into(),
                credits_required: 5,
                remaining: Some(1),
            }
        );

        let narrow = search_only_key(&gw).await;
        let err = echo(&agent(client(&gw, &narrow)).await).await.unwrap_err();
        assert!(matches!(err, ClientError::Forbidden { .. }), "{err:?}");

        let busy = agent(client(&gw, &gw.key(100).await)).await;
        echo(&busy).await.unwrap();
        let err = echo(&busy).await.unwrap_err();
        assert!(
            matches!(err, ClientError::RateLimited { retry_after: Some(w), .. } if w > Duration::ZERO),
            "{err:?}"
        );

        // Revoked mid-session: unauthorized from then on.
        let leaving = gw.key(100).await;
        let session = agent(client(&gw, &leaving)).await;
        gw.gate.revoke(leaving.as_str()).await.unwrap();
        let err = echo(&session).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Unauthorized { ref reason } if reason == "invalid_api_key"),
            "{err:?}"
        );

        // The server's own JSON-RPC error.
        let other = agent(client(&gw, &gw.key(100).await)).await;
        gw.set_reply(Reply::RpcError);
        let err = echo(&other).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Tool { code: -32000, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_rate_limit_is_waited_out_and_a_payment_retried_once() {
        let gw = gateway(json!({"defaultCreditsPerCall": 5, "globalRateLimitPerMin": 1})).await;
        let key = gw.key(7).await;
        let waited: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let bought: Arc<Mutex<Vec<u64>>> = Arc::default();
        let c = PayGateClient::builder(
            &format!("http://{}", gw.host()),
            Credentials::ApiKey(key.clone()),
        )
        .wait_on_rate_limit(2, Duration::from_secs(120))
        .sleeper(clock_sleeper(&gw, &waited))
        .on_payment_required(top_up_hook(&gw, &key, 10, &bought))
        .build()
        .unwrap();
        let agent = agent(c).await;
        echo(&agent).await.unwrap();
        let expected = gateway_wait(&gw, &key).await;
        // Rate limited, then short of credits (2 left, 5 needed): waits, pays, runs once.
        let before = gw.downstream_calls();
        echo(&agent).await.unwrap();
        assert_eq!(gw.downstream_calls() - before, 1, "the tool ran once");
        assert_eq!(
            *waited.lock(),
            vec![expected],
            "the gateway's exact Retry-After"
        );
        assert_eq!(*bought.lock(), vec![5]);
        assert_eq!(
            gw.credits(&key).await,
            7,
            "7 - 5 + 10 bought - 5 charged once"
        );
    }

    #[tokio::test]
    async fn an_expired_oauth_token_is_refreshed_under_rmcp() {
        let gw = oauth_gateway().await;
        let client = Arc::new(gw.client());
        let agent = ().serve(client.rmcp_transport()).await.unwrap();
        echo(&agent).await.unwrap();
        gw.clock.advance_secs(61);
        echo(&agent).await.unwrap();
        assert_eq!(gw.alice_credits().await, 6, "each call paid once");
        let Credentials::OAuth(now) = client.credentials() else {
            panic!("still OAuth");
        };
        assert_ne!(
            now.refresh_token, gw.tokens.refresh_token,
            "rotated and kept"
        );
        gw.gate.revoke(gw.alice.key.as_str()).await.unwrap();
        gw.clock.advance_secs(61);
        let err = agent
            .call_tool(CallToolRequestParams::new("echo"))
            .await
            .unwrap_err();
        assert_eq!(
            ClientError::from(err),
            ClientError::Unauthorized {
                reason: "invalid_token".into()
            },
            "a refusal no refresh can mend ends the call, typed"
        );
    }
}
