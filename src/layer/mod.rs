//! Tower middleware: the gate in front of any MCP Streamable-HTTP service.
//!
//! Every layer here builds the same [`GateService`] with a different set of [`Stages`], so
//! layers compose in any subset and any order while the request body is read and parsed
//! once and the gate decides once. What is *checked* is the gate's policy (its config: rate
//! limits, quotas, prices); what a stage adds is its part of the wire behaviour:
//!
//! | layer | stage |
//! |---|---|
//! | [`AuthLayer`] | body limit, single parse, JSON-RPC validation, key and client IP, free methods, `tools/list` ACL filtering and `_pricing`, key checks for unbilled methods |
//! | [`RateLimitLayer`] | the decision, `X-RateLimit-*` and `Retry-After` headers |
//! | [`QuotaLayer`] | the decision |
//! | [`BillingLayer`] | the decision, `X-Credits-Remaining`, refunds on failure |
//! | [`AlertLayer`] | hands fired alerts and `key.expired` to the gate's event sink |
//! | [`PayGateLayer`] | all of the above in one service |
//!
//! The first stage that needs the decision makes it, in one atomic store call; stages
//! further in reuse it through request extensions ([`McpContext`], [`GateDecision`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower::Service;

use crate::gate::{CallRequest, Decision, Gate};
use crate::jsonrpc::{self, RpcRequest};
use crate::key::KeyRecord;
use crate::store::{ChargeReceipt, KeyStore, MemoryKeyStore};

mod alert;
mod auth;
mod billing;
pub(crate) mod body;
mod bundle;
mod denial;
mod quota;
mod ratelimit;

pub use alert::AlertLayer;
pub use auth::AuthLayer;
pub use billing::BillingLayer;
pub use body::GateBody;
pub use bundle::PayGateLayer;
pub use denial::denial_body;
pub use quota::QuotaLayer;
pub use ratelimit::RateLimitLayer;

use body::{Framing, RefundWatch, Rewrite, Watch};

/// Boxed error type of the request body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Headers the layers set, exposed to browsers.
pub const EXPOSED_HEADERS: [&str; 5] = [
    "x-credits-remaining",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "mcp-session-id",
];

/// What parts of the gate's wire behaviour a [`GateService`] performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stages {
    /// Authentication and protocol checks.
    pub auth: bool,
    /// Rate-limit headers.
    pub rate_limit: bool,
    /// Quota enforcement.
    pub quota: bool,
    /// Credits header and refunds.
    pub billing: bool,
    /// Alert and event dispatch.
    pub alert: bool,
}

impl Stages {
    /// Every stage.
    pub const ALL: Stages = Stages {
        auth: true,
        rate_limit: true,
        quota: true,
        billing: true,
        alert: true,
    };

    fn decides(&self) -> bool {
        self.rate_limit || self.quota || self.billing
    }
}

/// The client's socket address, for servers that do not use axum's `ConnectInfo`: insert it
/// into request extensions and the layers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Turns a bearer token into an API key (`None` rejects it).
pub type BearerResolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the first layer learned about a request, shared with the layers inside it.
#[derive(Clone)]
pub struct McpContext {
    /// The request body exactly as received (forwarded unchanged).
    pub body: Bytes,
    /// The JSON-RPC request (`None` for requests without a JSON-RPC body, e.g. GET).
    pub rpc: Option<Arc<RpcRequest>>,
    /// The API key sent, if any.
    pub api_key: Option<Arc<str>>,
    /// The client IP, when known.
    pub client_ip: Option<IpAddr>,
}

/// The gate's decision for a `tools/call`, shared with the layers inside the one that made it.
#[derive(Clone)]
pub struct GateDecision {
    /// The decision (its receipt moved to `receipt`).
    pub decision: Arc<Decision>,
    receipt: Arc<Mutex<Option<ChargeReceipt>>>,
}

/// Options shared by every layer built from one gate.
pub(crate) struct Shared<St> {
    pub(crate) gate: Arc<Gate<St>>,
    pub(crate) bearer: Option<BearerResolver>,
}

impl<St> Clone for Shared<St> {
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            bearer: self.bearer.clone(),
        }
    }
}

/// The service every PayGate layer produces.
pub struct GateService<S, St = MemoryKeyStore> {
    inner: S,
    shared: Shared<St>,
    stages: Stages,
}

impl<S: Clone, St> Clone for GateService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            stages: self.stages,
        }
    }
}

impl<S, St> GateService<S, St> {
    pub(crate) fn new(inner: S, shared: Shared<St>, stages: Stages) -> Self {
        Self {
            inner,
            shared,
            stages,
        }
    }
}

type Answer<R, E> = Result<Response<GateBody<R>>, E>;

/// Rewrites the JSON-RPC response to the request.
type Transform = Box<dyn Fn(Value) -> Value + Send>;

/// The response future of [`GateService`].
pub struct ResponseFuture<ResBody: Body, E> {
    inner: Pin<Box<dyn Future<Output = Answer<ResBody, E>> + Send>>,
}

impl<ResBody: Body, E> Future for ResponseFuture<ResBody, E> {
    type Output = Result<Response<GateBody<ResBody>>, E>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, St, B, ResBody> Service<Request<B>> for GateService<S, St>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: KeyStore,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send,
{
    type Response = Response<GateBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let stages = self.stages;
        ResponseFuture {
            inner: Box::pin(handle(inner, shared, stages, req)),
        }
    }
}

fn json_response<R: Body>(status: StatusCode, body: Vec<u8>) -> Response<GateBody<R>> {
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    expose_headers(resp.headers_mut());
    resp
}

fn expose_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "x-credits-remaining, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, mcp-session-id, retry-after",
        ),
    );
}

fn rpc_error<R: Body>(
    status: StatusCode,
    id: Option<&str>,
    e: &jsonrpc::RpcError,
) -> Response<GateBody<R>> {
    json_response(
        status,
        jsonrpc::error_body_as_sent(id, e.code, &e.message, None),
    )
}

async fn handle<S, St, B, ResBody>(
    inner: S,
    shared: Shared<St>,
    stages: Stages,
    req: Request<B>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    St: KeyStore,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let gate = shared.gate.clone();
    let (mut parts, body) = req.into_parts();
    let ctx = match parts.extensions.get::<McpContext>() {
        Some(ctx) => ctx.clone(),
        None => match read_context(&shared, &parts, body).await {
            Ok(ctx) => {
                parts.extensions.insert(ctx.clone());
                ctx
            }
            Err(resp) => return Ok(*resp),
        },
    };
    let Some(rpc) = ctx.rpc.clone() else {
        return forward(inner, parts, &ctx, None).await;
    };
    // Answers the gateway writes carry the id exactly as sent (a parsed number may differ).
    let id = rpc.id_as_sent(&ctx.body);

    // A method a lenient downstream might read as `tools/call` is refused outright.
    if rpc.method != "tools/call"
        && (rpc.method.trim().eq_ignore_ascii_case("tools/call") || rpc.method.trim() != rpc.method)
    {
        let e = jsonrpc::RpcError {
            code: jsonrpc::INVALID_REQUEST,
            message: "ambiguous method name".into(),
        };
        return Ok(rpc_error(StatusCode::BAD_REQUEST, id, &e));
    }

    if rpc.method == "tools/call" {
        // A call sent as a notification would run with no answer to watch, so a refund
        // could not be told from a success: a tool call must be a request.
        if rpc.id.is_none() {
            let e = jsonrpc::RpcError {
                code: jsonrpc::INVALID_REQUEST,
                message: "tools/call must be a request with an id, not a notification".into(),
            };
            return Ok(rpc_error(StatusCode::BAD_REQUEST, None, &e));
        }
        let tool = match rpc.tool_name() {
            Ok(t) => t,
            Err(e) => return Ok(rpc_error(StatusCode::OK, id, &e)),
        };
        if let Some(resp) = check_mcp_headers(&parts.headers, &rpc, id) {
            return Ok(resp);
        }
        let call = CallRequest {
            api_key: ctx.api_key.as_deref(),
            tool,
            input_bytes: rpc.arguments_len(),
            client_ip: ctx.client_ip,
        };
        let existing = parts.extensions.get::<GateDecision>().cloned();
        // The layer that decides records the usage event.
        let mut usage = None;
        let decided = match existing {
            Some(d) => Some(d),
            None if stages.decides() => {
                let (mut decision, decided_at_ms) = gate.decide(&call).await;
                let receipt = decision.receipt.take();
                let d = GateDecision {
                    decision: Arc::new(decision),
                    receipt: Arc::new(Mutex::new(receipt)),
                };
                parts.extensions.insert(d.clone());
                usage = Some(PendingUsage {
                    gate: gate.clone(),
                    decision: d.decision.clone(),
                    decided_at_ms,
                    dispatch_events: stages.alert,
                    recorded: false,
                });
                Some(d)
            }
            None => None,
        };
        let Some(d) = decided else {
            // Authentication alone: the key must be valid for this tool.
            if stages.auth {
                if let Err(reason) = gate
                    .authorize(call.api_key, call.client_ip, Some(tool))
                    .await
                {
                    let decision = gate.deny(reason, tool, &call);
                    if !decision.allowed {
                        return Ok(denial_response(id, &decision, stages));
                    }
                }
            }
            return forward(inner, parts, &ctx, None).await;
        };
        // Events follow the usage event they belong to; a decision made further out has
        // recorded its usage already.
        if stages.alert && usage.is_none() {
            gate.dispatch_events(&d.decision);
        }
        // One span per gated call, from the layer that decided it (not again per layer).
        let span = match usage {
            Some(_) => call_span(tool, &d.decision),
            None => tracing::Span::none(),
        };
        if !d.decision.allowed {
            drop(usage);
            span.in_scope(|| tracing::info!("denied"));
            return Ok(denial_response(id, &d.decision, stages));
        }
        // The outermost layer to get here takes the receipt and watches the answer: a call the
        // downstream refuses before running a tool is refunded whatever `refundOnFailure` says.
        let forwarded = Forwarded {
            receipt: d.receipt.lock().take(),
            refund_on_failure: gate.config().refund_on_failure,
            usage,
            id: id.map(str::to_owned),
        };
        let mut resp = tracing::Instrument::instrument(
            forward_call(inner, parts, &ctx, &gate, forwarded),
            span,
        )
        .await?;
        decorate(resp.headers_mut(), &d.decision, stages);
        return Ok(resp);
    }

    if gate.is_free_method(&rpc.method) {
        if let Some(resp) = check_mcp_headers(&parts.headers, &rpc, id) {
            return Ok(resp);
        }
        if rpc.method == "tools/list" && stages.auth {
            // A known key sees only the tools its ACL allows; every tool shows its price.
            let record = gate
                .authorize(ctx.api_key.as_deref(), ctx.client_ip, None)
                .await
                .ok();
            let rewrite = tools_list_rewrite(&gate, record);
            let id = id.map(str::to_owned);
            return forward(inner, parts, &ctx, Some((rewrite, id))).await;
        }
        return forward(inner, parts, &ctx, None).await;
    }

    // Any other method needs a valid key, though it is not billed.
    if let Some(resp) = check_mcp_headers(&parts.headers, &rpc, id) {
        return Ok(resp);
    }
    let call = CallRequest {
        api_key: ctx.api_key.as_deref(),
        tool: &rpc.method,
        input_bytes: 0,
        client_ip: ctx.client_ip,
    };
    if let Err(reason) = gate.authorize(call.api_key, call.client_ip, None).await {
        let decision = gate.deny(reason, &rpc.method, &call);
        if !decision.allowed {
            return Ok(denial_response(id, &decision, stages));
        }
    }
    forward(inner, parts, &ctx, None).await
}

/// Reads the body (bounded), parses it once, and finds the key and client IP.
async fn read_context<St, B, R>(
    shared: &Shared<St>,
    parts: &http::request::Parts,
    body: B,
) -> Result<McpContext, Box<Response<GateBody<R>>>>
where
    St: KeyStore,
    B: Body,
    B::Error: Into<BoxError>,
    R: Body,
{
    let cfg = shared.gate.config();
    let limit = usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        Box::new(closing(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            jsonrpc::error_body(
                None,
                jsonrpc::INVALID_REQUEST,
                &format!("request body larger than {limit} bytes"),
                None,
            ),
        )))
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(_) => {
            return Err(Box::new(closing(json_response(
                StatusCode::BAD_REQUEST,
                jsonrpc::error_body(
                    None,
                    jsonrpc::PARSE_ERROR,
                    "could not read the request body",
                    None,
                ),
            ))))
        }
    };
    // Only POST carries JSON-RPC; a body on any other method is refused, never passed on
    // ungated to a downstream that might read it anyway.
    if parts.method != Method::POST && !bytes.is_empty() {
        let mut resp = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            jsonrpc::error_body(
                None,
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC requests are sent with POST",
                None,
            ),
        );
        resp.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        return Err(Box::new(resp));
    }
    for name in [&X_API_KEY, &MCP_METHOD, &MCP_NAME] {
        if parts.headers.get_all(name).iter().nth(1).is_some() {
            let e = jsonrpc::RpcError {
                code: jsonrpc::INVALID_REQUEST,
                message: format!("ambiguous request: more than one {name} header"),
            };
            return Err(Box::new(rpc_error(StatusCode::BAD_REQUEST, None, &e)));
        }
    }
    let rpc = if parts.method == Method::POST {
        match jsonrpc::parse_request(&bytes) {
            Ok(rpc) => Some(Arc::new(rpc)),
            Err(e) => return Err(Box::new(rpc_error(StatusCode::BAD_REQUEST, None, &e))),
        }
    } else {
        None
    };
    Ok(McpContext {
        body: bytes,
        rpc,
        api_key: api_key(parts, shared.bearer.as_ref()),
        client_ip: client_ip(parts, cfg.trusted_proxy_hops, &cfg.trusted_proxies),
    })
}

/// `X-API-Key`, else `Authorization: Bearer <token>` through the resolver.
fn api_key(parts: &http::request::Parts, bearer: Option<&BearerResolver>) -> Option<Arc<str>> {
    if let Some(v) = parts.headers.get(&X_API_KEY) {
        // A key that is not visible ASCII can match nothing; keep it so it is denied as invalid.
        return Some(Arc::from(v.to_str().map_or("\u{fffd}", str::trim)));
    }
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    match bearer {
        Some(resolve) => resolve(token).map(Arc::from),
        None => Some(Arc::from(token)),
    }
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The peer address, or with `hops` trusted proxies the address they saw. The header is
/// believed only on a connection from a proxy in `proxies`, and only through proxies listed
/// there: the client is the rightmost address no trusted proxy could have written.
pub(crate) fn client_ip(
    parts: &http::request::Parts,
    hops: u64,
    proxies: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ClientAddr>()
        .map(|a| a.0.ip())
        .or_else(|| connect_info(parts));
    let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(ip));
    if hops == 0 || !peer.as_ref().is_some_and(trusted) {
        return peer;
    }
    // Each trusted proxy appends the address it received from; the client is `hops` from the end.
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().parse::<IpAddr>())
        .collect::<Result<_, _>>()
        .ok()?;
    let hops = usize::try_from(hops).ok()?;
    if forwarded.len() < hops {
        return None;
    }
    // Walking left from the peer, every hop but the client's must be a trusted proxy.
    let client_at = forwarded.len() - hops;
    match forwarded[client_at + 1..]
        .iter()
        .rposition(|ip| !trusted(ip))
    {
        Some(untrusted) => forwarded.get(client_at + 1 + untrusted).copied(),
        None => forwarded.get(client_at).copied(),
    }
}

/// The span of one gated `tools/call`: the tool, the key (masked), the decision and the
/// credits charged; its lifetime is the time to the answer's head.
fn call_span(tool: &str, d: &Decision) -> tracing::Span {
    tracing::info_span!(
        "paygate_call",
        tool,
        key = d.key.as_ref().map(|k| k.key_masked.as_str()),
        allowed = d.allowed,
        reason = d.reason.map(|r| r.as_str()),
        credits = d.credits_charged,
    )
}

/// Marks an early reply that leaves the request body unread: the connection is closed
/// after it, so a keep-alive client does not send its next request into the unread rest.
pub(crate) fn closing<R>(mut resp: Response<R>) -> Response<R> {
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(feature = "axum")]
fn connect_info(parts: &http::request::Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(not(feature = "axum"))]
fn connect_info(_parts: &http::request::Parts) -> Option<IpAddr> {
    None
}

/// Refuses requests whose `Mcp-Method` / `Mcp-Name` headers disagree with the body. `Mcp-Name`
/// is `params.name` (tools, prompts) else `params.uri` (resources), as MCP clients send it,
/// Base64-wrapped when it is not plain ASCII (see [`mcp_header_text`]).
fn check_mcp_headers<R: Body>(
    headers: &http::HeaderMap,
    rpc: &RpcRequest,
    id: Option<&str>,
) -> Option<Response<GateBody<R>>> {
    let mismatch = |name: &HeaderName, expected: Option<&str>| {
        let sent = headers.get(name)?;
        match (mcp_header_text(sent), expected) {
            (Some(s), Some(e)) if s == e => None,
            _ => Some(()),
        }
    };
    let bad = mismatch(&MCP_METHOD, Some(&rpc.method)).is_some()
        || mismatch(&MCP_NAME, rpc.mcp_name()).is_some();
    bad.then(|| {
        let e = jsonrpc::RpcError {
            code: jsonrpc::INVALID_REQUEST,
            message: "Mcp-Method / Mcp-Name headers disagree with the request body".into(),
        };
        rpc_error(StatusCode::BAD_REQUEST, id, &e)
    })
}

/// The text of an MCP header: plain visible ASCII as is, anything else sent by the
/// 2026-07-28 transport as `=?base64?{standard Base64 of the UTF-8}?=`. `None` when it is
/// neither (a value that cannot be decoded can match nothing).
fn mcp_header_text(value: &HeaderValue) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine as _;
    let text = value.to_str().ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(std::borrow::Cow::Owned),
        None => Some(std::borrow::Cow::Borrowed(text)),
    }
}

fn denial_response<R: Body>(
    id: Option<&str>,
    d: &Decision,
    stages: Stages,
) -> Response<GateBody<R>> {
    let mut resp = json_response(StatusCode::OK, denial::denial_body_as_sent(id, d));
    if let Some(retry) = d.retry_after_secs {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    }
    decorate(resp.headers_mut(), d, stages);
    resp
}

/// Credits and rate-limit headers for a request with a known key.
fn decorate(headers: &mut http::HeaderMap, d: &Decision, stages: Stages) {
    expose_headers(headers);
    let Some(key) = &d.key else { return };
    if stages.billing || stages.auth {
        headers.insert(
            HeaderName::from_static("x-credits-remaining"),
            HeaderValue::from(key.credits),
        );
    }
    if let (true, Some(rate)) = (stages.rate_limit || stages.auth, d.rate) {
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(rate.limit),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(rate.remaining),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(rate.reset_secs),
        );
    }
}

fn framing(headers: &http::HeaderMap) -> Framing {
    let sse = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        Framing::Sse
    } else {
        Framing::Json
    }
}

fn rebuild(parts: http::request::Parts, ctx: &McpContext) -> Request<Full<Bytes>> {
    Request::from_parts(parts, Full::new(ctx.body.clone()))
}

/// Forwards the request; `rewrite` transforms the first JSON-RPC response in the answer
/// (and carries the request's id as sent, for the error that replaces an answer too large
/// to rewrite).
async fn forward<S, R>(
    mut inner: S,
    parts: http::request::Parts,
    ctx: &McpContext,
    rewrite: Option<(Transform, Option<String>)>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    R: Body<Data = Bytes>,
{
    // `poll_ready` was driven on this service by `GateService::call`'s caller.
    let resp = inner.call(rebuild(parts, ctx)).await?;
    let (mut head, body) = resp.into_parts();
    let watch = rewrite.map(|(f, id)| {
        head.headers.remove(CONTENT_LENGTH);
        Watch::Rewrite(Box::new(Rewrite::new(framing(&head.headers), f, id)))
    });
    expose_headers(&mut head.headers);
    Ok(Response::from_parts(head, GateBody::inner(body, watch)))
}

/// The usage event of a call this layer decided, and with the alert stage the events the
/// decision fired. They are recorded once the call is on its way to the tool, so the
/// bookkeeping overlaps the tool's work instead of delaying the call; dropping this (a
/// denial, an abandoned request) records them at once. Recorded exactly once.
struct PendingUsage<St: KeyStore> {
    gate: Arc<Gate<St>>,
    decision: Arc<Decision>,
    decided_at_ms: i64,
    dispatch_events: bool,
    recorded: bool,
}

impl<St: KeyStore> PendingUsage<St> {
    fn record(&mut self) {
        if !std::mem::replace(&mut self.recorded, true) {
            self.gate.record_usage(&self.decision, self.decided_at_ms);
            if self.dispatch_events {
                self.gate.dispatch_events(&self.decision);
            }
        }
    }
}

impl<St: KeyStore> Drop for PendingUsage<St> {
    fn drop(&mut self) {
        self.record();
    }
}

/// Polls the downstream call once so the request starts on its way, lets the tasks that
/// carry it run (a connection's writer, a child's stdin), then records `usage` while the
/// tool works.
async fn after_dispatch<F: Future, St: KeyStore>(
    call: F,
    usage: Option<PendingUsage<St>>,
) -> F::Output {
    let Some(mut usage) = usage else {
        return call.await;
    };
    let mut call = std::pin::pin!(call);
    match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
        Poll::Ready(out) => {
            usage.record();
            out
        }
        Poll::Pending => {
            tokio::task::yield_now().await;
            usage.record();
            call.await
        }
    }
}

/// What [`forward_call`] carries for an allowed call besides the request.
struct Forwarded<St: KeyStore> {
    /// Refunded if the downstream refuses the request, and with `refund_on_failure` if the
    /// call fails, times out or never answers.
    receipt: Option<ChargeReceipt>,
    /// The gate's `refundOnFailure`.
    refund_on_failure: bool,
    /// Recorded once the call is dispatched.
    usage: Option<PendingUsage<St>>,
    /// The request's id as sent, for the replies the gateway writes.
    id: Option<String>,
}

/// Forwards an allowed `tools/call` under the call timeout. When a receipt is given it is
/// refunded if the downstream refuses the request (4xx) or the transport fails, and with
/// `refund_on_failure` also if the call fails, times out or never answers.
async fn forward_call<S, St, R>(
    mut inner: S,
    parts: http::request::Parts,
    ctx: &McpContext,
    gate: &Arc<Gate<St>>,
    forwarded: Forwarded<St>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    let timeout_ms = gate.config().call_timeout_ms;
    let Forwarded {
        mut receipt,
        refund_on_failure,
        usage,
        id,
    } = forwarded;
    let mut refund = |reason: &'static str| -> Option<body::FollowUp> {
        let receipt = receipt.take()?;
        let gate = gate.clone();
        Some(Box::pin(async move {
            // Once begun, a refund runs to the end on its own task: a client that hangs up
            // while the store is slow drops the response, not the money owed to it.
            let refund = tokio::spawn(async move { gate.refund_and_record(receipt, reason).await });
            let _ = refund.await;
        }))
    };
    let timeout_reply = || {
        Bytes::from(jsonrpc::error_body_as_sent(
            id.as_deref(),
            jsonrpc::INTERNAL_ERROR,
            &format!("Tool call timed out after {timeout_ms} ms"),
            Some(json!({"reason": "upstream_timeout"})),
        ))
    };
    let deadline =
        (timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
    let call = after_dispatch(inner.call(rebuild(parts, ctx)), usage);
    let result = match deadline {
        Some(at) => match tokio::time::timeout_at(at, call).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(r) = refund("timeout").filter(|_| refund_on_failure) {
                    r.await;
                }
                return Ok(json_response(StatusCode::OK, timeout_reply().to_vec()));
            }
        },
        None => call.await,
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(r) = refund("transport_error") {
                r.await;
            }
            return Err(e);
        }
    };
    let (mut head, body) = resp.into_parts();
    expose_headers(&mut head.headers);
    // A 4xx means the downstream refused the request itself (406 without `Accept`, 415,
    // 403 for a foreign `Host`, ...) and a 503 that it could not take it (an upstream down
    // or restarting): no tool ran, so nothing is owed.
    let refused = head.status.is_client_error() || head.status == StatusCode::SERVICE_UNAVAILABLE;
    if refused || (head.status.is_server_error() && refund_on_failure) {
        let reason = if refused { "not_run" } else { "http_5xx" };
        if let Some(r) = refund(reason) {
            r.await;
        }
        return Ok(Response::from_parts(head, GateBody::inner(body, None)));
    }
    let framing = framing(&head.headers);
    let watch = refund("tool_failed")
        .filter(|_| refund_on_failure)
        .map(|on_failure| {
            let w = RefundWatch::new(framing, gate.config().refund_on_tool_error, on_failure);
            Watch::Refund(Box::new(w))
        });
    let deadline = deadline.map(|at| body::Deadline {
        sleep: Box::pin(tokio::time::sleep_until(at)),
        framing,
        reply: timeout_reply(),
    });
    Ok(Response::from_parts(
        head,
        GateBody::with_deadline(body, watch, deadline),
    ))
}

/// Filters `tools/list` by the key's ACL and adds `_pricing` to each tool.
fn tools_list_rewrite<St: KeyStore>(gate: &Arc<Gate<St>>, record: Option<KeyRecord>) -> Transform {
    let pricing = gate.pricing().clone();
    Box::new(move |mut message: Value| {
        if let Some(tools) = message
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        {
            tools.retain(|t| {
                let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                record.as_ref().is_none_or(|r| r.permits_tool(name))
            });
            for tool in tools.iter_mut() {
                let name = tool
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(obj) = tool.as_object_mut() {
                    obj.insert("_pricing".into(), json!(pricing.tag(&name)));
                }
            }
        }
        message
    })
}

/// Builds a [`Shared`] for layers over `gate`.
pub(crate) fn shared<St>(gate: Arc<Gate<St>>, bearer: Option<BearerResolver>) -> Shared<St> {
    Shared { gate, bearer }
}

/// Defines a layer that builds a [`GateService`] with the given stages.
macro_rules! stage_layer {
    ($(#[$doc:meta])* $name:ident, $stages:expr) => {
        $(#[$doc])*
        pub struct $name<St = $crate::store::MemoryKeyStore> {
            shared: $crate::layer::Shared<St>,
        }

        impl<St> Clone for $name<St> {
            fn clone(&self) -> Self {
                Self { shared: self.shared.clone() }
            }
        }

        impl<St: $crate::store::KeyStore> $name<St> {
            /// A layer over `gate`.
            pub fn new(gate: std::sync::Arc<$crate::gate::Gate<St>>) -> Self {
                Self { shared: $crate::layer::shared(gate, None) }
            }

            /// Resolves `Authorization: Bearer` tokens to API keys (by default the token is the key).
            pub fn with_bearer_resolver(
                mut self,
                resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
            ) -> Self {
                self.shared.bearer = Some(std::sync::Arc::new(resolve));
                self
            }
        }

        impl<S, St> tower::Layer<S> for $name<St> {
            type Service = $crate::layer::GateService<S, St>;
            fn layer(&self, inner: S) -> Self::Service {
                $crate::layer::GateService::new(inner, self.shared.clone(), $stages)
            }
        }
    };
}
pub(crate) use stage_layer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_header_values_are_read_plain_or_base64_wrapped() {
        let plain = HeaderValue::from_static("search");
        assert_eq!(mcp_header_text(&plain).as_deref(), Some("search"));
        // "héllo" as a conforming client sends it.
        let wrapped = HeaderValue::from_static("=?base64?aMOpbGxv?=");
        assert_eq!(mcp_header_text(&wrapped).as_deref(), Some("héllo"));
        let leading_space = HeaderValue::from_static("=?base64?IGxlYWRpbmc=?=");
        assert_eq!(mcp_header_text(&leading_space).as_deref(), Some(" leading"));
        let broken = HeaderValue::from_static("=?base64?%%%?=");
        assert_eq!(mcp_header_text(&broken), None);
        let not_utf8 = HeaderValue::from_static("=?base64?/w==?=");
        assert_eq!(mcp_header_text(&not_utf8), None);
    }
}
