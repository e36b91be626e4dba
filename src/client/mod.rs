//! The client side (SPEC §15, cargo feature `client`): [`PayGateClient`] calls tools through
//! a paygate gateway with an API key or an OAuth access token, lists the tools with their
//! prices, reads the balance, and turns the gateway's denials into a typed [`ClientError`]
//! by class. It can wait out rate limits (as long as the gateway's `Retry-After` says, up to
//! a bound) and, on `-32402`, ask an [`on_payment_required`](PayGateClientBuilder::on_payment_required)
//! hook to buy credits, then retry once.
//!
//! It speaks MCP Streamable HTTP itself (see `wire`): JSON answers and SSE streams read as
//! they arrive, `Mcp-Session-Id` and the negotiated protocol version, a new session when the
//! server forgot ours, a cut stream resumed from its last event id.

mod answer;
mod error;
#[cfg(feature = "rmcp")]
pub mod rmcp;
mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

pub use error::ClientError;
use wire::{read_bounded, Sent};

/// The MCP protocol version the client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Largest answer read.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// A boxed future, as the hooks return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// `X-API-Key`.
    ApiKey(String),
    /// `Authorization: Bearer` (an OAuth access token, used as it is).
    Bearer(String),
    /// OAuth tokens the client refreshes itself when the access token is refused.
    OAuth(OAuthTokens),
}

/// An OAuth grant the client keeps fresh: when a call is answered 401, it spends the refresh
/// token at `token_url` (`grant_type=refresh_token`) and calls again, once.
#[derive(Clone)]
pub struct OAuthTokens {
    /// The current access token.
    pub access_token: String,
    /// The current refresh token (rotated by each refresh).
    pub refresh_token: String,
    /// The authorization server's token endpoint (`<gateway>/oauth/token` for the built-in one).
    pub token_url: String,
    /// The client id it registered with.
    pub client_id: String,
    /// Its secret, for a confidential client (sent as `client_secret_post`).
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::ApiKey(_) => "ApiKey(***)",
            Credentials::Bearer(_) => "Bearer(***)",
            Credentials::OAuth(_) => "OAuth(***)",
        })
    }
}

/// What a `-32402` said, handed to the payment hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequired {
    /// The tool called.
    pub tool: String,
    /// The gate's reason (`insufficient_credits`, ...).
    pub reason: String,
    /// What the call costs.
    pub credits_required: u64,
    /// The balance, when known.
    pub remaining: Option<u64>,
}

/// What the payment hook decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentDecision {
    /// Credits were bought: call again (once).
    Retry,
    /// Give up: the call fails with [`ClientError::PaymentRequired`].
    GiveUp,
}

type PaymentHook = Arc<dyn Fn(PaymentRequired) -> BoxFuture<PaymentDecision> + Send + Sync>;
type Sleeper = Arc<dyn Fn(Duration) -> BoxFuture<()> + Send + Sync>;

/// What the gateway reported with the last answer (its response headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// `X-Credits-Remaining`.
    pub credits_remaining: Option<u64>,
    /// `X-RateLimit-Limit`.
    pub rate_limit: Option<u64>,
    /// `X-RateLimit-Remaining`.
    pub rate_remaining: Option<u64>,
    /// `X-RateLimit-Reset` (seconds until the window frees a call).
    pub rate_reset: Option<u64>,
}

/// How far one call has gone through the retry policy: rate-limit waits taken, whether the
/// payment hook was asked.
#[derive(Default)]
struct Retries {
    waits: u32,
    paid: bool,
}

/// A tool and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedTool {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Credits per call (`_pricing.creditsPerCall`), when the gateway says.
    pub credits_per_call: Option<u64>,
    /// The whole tool as listed (input schema, `_pricing`, ...).
    pub raw: Value,
}

/// Builds a [`PayGateClient`].
pub struct PayGateClientBuilder {
    base: String,
    credentials: Credentials,
    mcp_path: String,
    rate_limit_retries: u32,
    max_wait: Duration,
    sleep: Sleeper,
    on_payment_required: Option<PaymentHook>,
    timeout: Duration,
}

impl PayGateClientBuilder {
    /// The path of the MCP endpoint (default `/mcp`).
    pub fn mcp_path(mut self, path: &str) -> Self {
        self.mcp_path = path.to_string();
        self
    }

    /// Waits out a rate limit up to `retries` times, when the gateway's `Retry-After` is at
    /// most `max_wait` (default: no waiting).
    pub fn wait_on_rate_limit(mut self, retries: u32, max_wait: Duration) -> Self {
        self.rate_limit_retries = retries;
        self.max_wait = max_wait;
        self
    }

    /// How the client waits (default `tokio::time::sleep`); tests move a clock instead.
    pub fn sleeper(
        mut self,
        sleep: impl Fn(Duration) -> BoxFuture<()> + Send + Sync + 'static,
    ) -> Self {
        self.sleep = Arc::new(sleep);
        self
    }

    /// Called on `-32402`: buy credits (through `POST /checkout`, an operator, a person)
    /// and answer [`PaymentDecision::Retry`] to call again, once.
    pub fn on_payment_required(
        mut self,
        hook: impl Fn(PaymentRequired) -> BoxFuture<PaymentDecision> + Send + Sync + 'static,
    ) -> Self {
        self.on_payment_required = Some(Arc::new(hook));
        self
    }

    /// How long the gateway may stay silent (to connect, or between two pieces of an answer)
    /// before a request fails; 60 s by default. It bounds silence, not the whole answer: a
    /// tool that streams for minutes is not cut off.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self) -> Result<PayGateClient, ClientError> {
        // No redirects: a key in `X-API-Key` would follow one to another host.
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(PayGateClient {
            http,
            base: self.base.trim_end_matches('/').to_string(),
            mcp_path: self.mcp_path,
            credentials: Arc::new(Mutex::new(self.credentials)),
            session: Mutex::new(None),
            protocol: Mutex::new(PROTOCOL_VERSION.to_string()),
            next_id: AtomicU64::new(1),
            rate_limit_retries: self.rate_limit_retries,
            max_wait: self.max_wait,
            sleep: self.sleep,
            on_payment_required: self.on_payment_required,
            last: Mutex::new(CallInfo::default()),
            refreshing: Arc::new(tokio::sync::Mutex::new(())),
            reopening: tokio::sync::Mutex::new(()),
            paying: tokio::sync::Mutex::new(()),
            payments: AtomicU64::new(0),
        })
    }
}

/// Calls tools through a paygate gateway.
///
/// ```no_run
/// # async fn demo() -> Result<(), paygate_mcp::client::ClientError> {
/// use paygate_mcp::client::{Credentials, PayGateClient};
/// let client = PayGateClient::builder("http://127.0.0.1:3402", Credentials::ApiKey("pg_...".into()))
///     .build()?;
/// client.initialize().await?;
/// for tool in client.list_tools().await? {
///     println!("{} costs {:?}", tool.name, tool.credits_per_call);
/// }
/// let result = client.call_tool("search", serde_json::json!({"q": "rust"})).await?;
/// println!("{result} ({:?} credits left)", client.last_call().credits_remaining);
/// # Ok(()) }
/// ```
pub struct PayGateClient {
    http: reqwest::Client,
    base: String,
    mcp_path: String,
    credentials: Arc<Mutex<Credentials>>,
    session: Mutex<Option<String>>,
    /// The protocol version sent as `MCP-Protocol-Version`: ours until `initialize` answers.
    protocol: Mutex<String>,
    next_id: AtomicU64,
    rate_limit_retries: u32,
    max_wait: Duration,
    sleep: Sleeper,
    on_payment_required: Option<PaymentHook>,
    last: Mutex<CallInfo>,
    /// One refresh at a time: a refresh token works once, and a second use would end the
    /// whole grant.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    /// One new session at a time, after the server forgot ours.
    reopening: tokio::sync::Mutex<()>,
    /// One payment hook at a time; `payments` counts those that said to retry, so calls that
    /// waited behind one retry on its purchase instead of buying again.
    paying: tokio::sync::Mutex<()>,
    payments: AtomicU64,
}

impl std::fmt::Debug for PayGateClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayGateClient")
            .field("base", &self.base)
            .field("credentials", &*self.credentials.lock())
            .finish_non_exhaustive()
    }
}

/// `X-API-Key`'s value, marked sensitive (kept out of debug output, as a bearer token is);
/// none for a key no header can carry (the gateway then answers that the key is missing).
fn api_key_header(key: &str) -> Option<http::HeaderValue> {
    let mut value = http::HeaderValue::from_str(key).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn header_u64(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl PayGateClient {
    /// A builder for the gateway at `base_url` (its origin: `/mcp`, `/balance` and
    /// `/pricing` are below it).
    pub fn builder(base_url: &str, credentials: Credentials) -> PayGateClientBuilder {
        PayGateClientBuilder {
            base: base_url.to_string(),
            credentials,
            mcp_path: "/mcp".into(),
            rate_limit_retries: 0,
            max_wait: Duration::ZERO,
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
            on_payment_required: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Replaces the credentials (a refreshed OAuth token, a rotated key).
    pub fn set_credentials(&self, credentials: Credentials) {
        *self.credentials.lock() = credentials;
    }

    /// What the gateway reported with the answer to the last tool call.
    pub fn last_call(&self) -> CallInfo {
        *self.last.lock()
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &*self.credentials.lock() {
            Credentials::ApiKey(key) => match api_key_header(key) {
                Some(value) => req.header("x-api-key", value),
                None => req,
            },
            Credentials::Bearer(token) => req.bearer_auth(token),
            Credentials::OAuth(tokens) => req.bearer_auth(&tokens.access_token),
        }
    }

    /// The credentials in use (after a refresh, the new tokens: keep them).
    pub fn credentials(&self) -> Credentials {
        self.credentials.lock().clone()
    }

    /// The OAuth access token in use, if the credentials are refreshable.
    fn access_token(&self) -> Option<String> {
        match &*self.credentials.lock() {
            Credentials::OAuth(tokens) => Some(tokens.access_token.clone()),
            _ => None,
        }
    }

    /// Spends the refresh token for a new pair after `refused` (the access token a call was
    /// refused with) failed; `false` when there is nothing to refresh or the refresh is
    /// refused. When another call refreshed meanwhile, its tokens are used instead.
    ///
    /// The exchange runs as its own task and keeps the new pair even if this call is dropped
    /// half-way (a caller's timeout, rmcp cancelling a request): a rotated refresh token that
    /// was lost would end the whole grant at its next use.
    async fn refresh(&self, refused: &str) -> Result<bool, ClientError> {
        let one_at_a_time = Arc::clone(&self.refreshing).lock_owned().await;
        let Credentials::OAuth(tokens) = self.credentials.lock().clone() else {
            return Ok(false);
        };
        if tokens.access_token != refused {
            return Ok(true);
        }
        let (http, credentials) = (self.http.clone(), Arc::clone(&self.credentials));
        let exchange = tokio::spawn(async move {
            let _held = one_at_a_time;
            let Some((access_token, rotated)) = exchange_refresh_token(&http, &tokens).await?
            else {
                return Ok(false);
            };
            if let Credentials::OAuth(now) = &mut *credentials.lock() {
                now.access_token = access_token;
                if let Some(rotated) = rotated {
                    now.refresh_token = rotated;
                }
            }
            Ok(true)
        });
        exchange
            .await
            .map_err(|e| ClientError::Transport(format!("token refresh: {e}")))?
    }

    /// [`PayGateClient::rpc_once`], opening a new session when the server forgot ours (404),
    /// and refreshing an OAuth access token the gateway refuses; each once.
    async fn rpc(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let used = self.access_token();
        let outcome = match self.rpc_once(method, params.clone()).await {
            Sent::SessionExpired(gone) if method != "initialize" => {
                self.reopen(&gone).await?;
                self.rpc_once(method, params.clone()).await.into_result()
            }
            sent => sent.into_result(),
        };
        match outcome {
            // Not for a refusal a new token cannot change (the key's IP allowlist).
            Err(ClientError::Unauthorized { reason }) if reason != "ip_not_allowed" => match used {
                Some(refused) if self.refresh(&refused).await? => {
                    self.rpc_once(method, params).await.into_result()
                }
                _ => Err(ClientError::Unauthorized { reason }),
            },
            other => other,
        }
    }

    /// Opens a new session after the server forgot `gone`, unless another call already did:
    /// calls that meet the 404 together open one session between them.
    async fn reopen(&self, gone: &str) -> Result<(), ClientError> {
        let _one_at_a_time = self.reopening.lock().await;
        let current = self.session.lock().clone();
        if current.is_some_and(|now| now != gone) {
            return Ok(());
        }
        // Boxed: `initialize` comes back through `rpc` (never to the arm that calls this).
        Box::pin(self.initialize()).await.map(|_| ())
    }

    /// Ends the MCP session (`DELETE` with its id), as a client that is done should; the
    /// next call opens a new one. A server that keeps no sessions answers 405, which is fine.
    pub async fn close(&self) -> Result<(), ClientError> {
        if self.session.lock().is_none() {
            return Ok(());
        }
        let sent = self
            .mcp_request(reqwest::Method::DELETE, "application/json")
            .send()
            .await;
        *self.session.lock() = None;
        sent.map(|_| ())
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Opens the MCP session (`initialize`, then `notifications/initialized`); the server's
    /// `Mcp-Session-Id` goes with every later request. Answers the server's capabilities.
    pub async fn initialize(&self) -> Result<Value, ClientError> {
        // A new session starts without an id, at our own version.
        *self.session.lock() = None;
        *self.protocol.lock() = PROTOCOL_VERSION.to_string();
        let result = self
            .rpc(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "paygate-mcp-client", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        // Later requests name the version the server chose, if it reads as one
        // (`YYYY-MM-DD`); a server that names none is spoken to in ours.
        match result.get("protocolVersion") {
            None => {}
            Some(Value::String(version)) if wire::is_protocol_version(version) => {
                *self.protocol.lock() = version.clone();
            }
            Some(other) => {
                let shown: String = other.to_string().chars().take(40).collect();
                return Err(ClientError::Transport(format!(
                    "the server chose a protocol version this client cannot name: {shown}"
                )));
            }
        }
        self.mcp_post()
            .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(result)
    }

    /// Every tool the key may call, with its price (every page of the listing).
    pub async fn list_tools(&self) -> Result<Vec<PricedTool>, ClientError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        // A server that keeps answering cursors is not followed forever.
        for _ in 0..100 {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = self.rpc("tools/list", params).await?;
            if let Some(page) = result.get("tools").and_then(Value::as_array) {
                tools.extend(page.iter().cloned());
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools
            .into_iter()
            .map(|t| PricedTool {
                name: t
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                credits_per_call: t
                    .pointer("/_pricing/creditsPerCall")
                    .and_then(Value::as_u64),
                raw: t,
            })
            .collect())
    }

    /// Calls `name` with `arguments`: the tool's result (`CallToolResult`; a tool that failed
    /// says so in its `isError`), or why the gateway did not run it. Waits out rate limits
    /// and asks the payment hook as configured.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, ClientError> {
        let mut retries = Retries::default();
        loop {
            let outcome = self
                .rpc("tools/call", json!({"name": name, "arguments": arguments}))
                .await;
            match outcome {
                Err(error) if self.try_again(name, &error, &mut retries).await => continue,
                other => return other,
            }
        }
    }

    /// After `error` answered a call of `tool`: waits out a rate limit, or asks the payment
    /// hook, as configured, and says whether to call again. Shared by [`Self::call_tool`]
    /// and the rmcp transport, so both follow one policy.
    async fn try_again(&self, tool: &str, error: &ClientError, retries: &mut Retries) -> bool {
        match error {
            ClientError::RateLimited {
                retry_after: Some(wait),
                ..
            } if retries.waits < self.rate_limit_retries && *wait <= self.max_wait => {
                retries.waits += 1;
                (self.sleep)(*wait).await;
                true
            }
            ClientError::PaymentRequired {
                reason,
                credits_required,
                remaining,
            } if !retries.paid => {
                let Some(hook) = &self.on_payment_required else {
                    return false;
                };
                retries.paid = true;
                // Calls short of credits together ask the hook once: a call that waited while
                // another's purchase went through retries on it.
                let seen = self.payments.load(Ordering::Acquire);
                let _one_at_a_time = self.paying.lock().await;
                if self.payments.load(Ordering::Acquire) != seen {
                    return true;
                }
                let info = PaymentRequired {
                    tool: tool.to_string(),
                    reason: reason.clone(),
                    credits_required: *credits_required,
                    remaining: *remaining,
                };
                // Its own task: a purchase under way finishes even if this call is dropped.
                let decision = tokio::spawn(hook(info)).await;
                let retry = matches!(decision, Ok(PaymentDecision::Retry));
                if retry {
                    self.payments.fetch_add(1, Ordering::AcqRel);
                }
                retry
            }
            _ => false,
        }
    }

    /// `GET /balance`: the key's credits and limits, as the gateway shows them.
    pub async fn balance(&self) -> Result<Value, ClientError> {
        let req = self.http.get(format!("{}/balance", self.base));
        self.get_json(self.authorize(req)).await
    }

    /// `POST /checkout`: a Stripe Checkout Session buying `package` for this key; answers
    /// `{url, sessionId, ...}` (send a person to `url`).
    pub async fn checkout(&self, package: &str) -> Result<Value, ClientError> {
        let req = self
            .http
            .post(format!("{}/checkout", self.base))
            .header("content-type", "application/json")
            .body(json!({"package": package}).to_string());
        self.get_json(self.authorize(req)).await
    }

    async fn get_json(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status();
        let body: Value = serde_json::from_slice(&read_bounded(resp).await?).unwrap_or_default();
        let reason = || {
            body.get("reason")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match status.as_u16() {
            200..=299 => Ok(body),
            401 => Err(ClientError::Unauthorized { reason: reason() }),
            403 => Err(ClientError::Forbidden { reason: reason() }),
            code => Err(ClientError::Transport(format!("HTTP {code}: {}", reason()))),
        }
    }
}

/// `grant_type=refresh_token` at the token endpoint: the new access token and, when the
/// server rotated it, the new refresh token; `None` when the refresh is refused.
async fn exchange_refresh_token(
    http: &reqwest::Client,
    tokens: &OAuthTokens,
) -> Result<Option<(String, Option<String>)>, ClientError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens.refresh_token.as_str()),
        ("client_id", tokens.client_id.as_str()),
    ];
    if let Some(secret) = &tokens.client_secret {
        form.push(("client_secret", secret));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = http
        .post(&tokens.token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    if !resp.status().is_success() {
        return Ok(None);
    }
    let doc: Value = serde_json::from_slice(&read_bounded(resp).await?).unwrap_or_default();
    let text = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_string);
    Ok(text("access_token").map(|access| (access, text("refresh_token"))))
}
