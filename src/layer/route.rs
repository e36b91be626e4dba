//! What the outermost layer of a stack does with a request: read it, run the protocol
//! checks, and route it by method to the stages present.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::forward::{forward, forward_call, Answer, Forwarded, PendingUsage};
use super::paygate::PayGate;
use super::request::{
    check_mcp_headers, check_method, context_of, read_body, read_context, McpContext,
};
use super::respond::{decorate, denial_response, rpc_error};
use super::stack::{Learned, Traversal};
use super::stage::StageSet;
use super::tools_list::tools_list_rewrite;
use super::{BoxError, GateBody};
use crate::gate::{CallRequest, Decision};
use crate::jsonrpc::{self, ParsedRequest, RpcRequest};
use crate::store::KeyStore;

/// One JSON-RPC request on its way through the layers over a gate, as one layer handles it
/// for `stages`.
struct Routed<'a, St> {
    pg: &'a PayGate<St>,
    stages: StageSet,
    ctx: &'a McpContext,
    rpc: &'a RpcRequest,
    /// The request's id as the client wrote it, for the answers the layer writes.
    id: Option<&'a str>,
    traversal: &'a Traversal,
    /// The layer is the outermost one: it learns the route and settles what was decided
    /// for stages the request never passed.
    outermost: bool,
}

/// Handles `req` at the layer of `stage`: as the outermost layer over the gate, or as one
/// further in (passing it on, or deciding for its stage when nobody did yet).
pub(crate) async fn handle<S, St, B, R>(
    inner: S,
    pg: PayGate<St>,
    stage: StageSet,
    learned: Arc<Learned>,
    req: Request<B>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>> + Send + 'static,
    S::Future: Send,
    St: KeyStore,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    R: Body<Data = Bytes> + Send + 'static,
{
    let (mut parts, body) = req.into_parts();
    let cfg = pg.gate.config();
    let joined = parts
        .extensions
        .get::<Traversal>()
        .filter(|t| t.is_over(&pg.gate))
        .cloned();
    let Some(t) = joined else {
        return match read_context(cfg, pg.bearer.as_ref(), pg.oauth.as_deref(), &parts, body).await
        {
            Ok(ctx) => outermost(inner, parts, &pg, stage, learned, ctx).await,
            Err(refusal) => Ok(*refusal),
        };
    };
    let bytes = match read_body(cfg.max_body_bytes, &parts, body).await {
        Ok(bytes) => bytes,
        Err(refusal) => return Ok(*refusal),
    };
    if bytes == t.ctx().body && t.enter(&learned, stage) {
        let undecided = t.claim_undecided(stage);
        let ctx = t.ctx().clone();
        if undecided == StageSet::default() {
            return forward(inner, parts, &ctx, None, None).await;
        }
        // This stage was not decided further out (a route's first call): decide it here.
        return route(inner, parts, &pg, undecided, &ctx, &t, false).await;
    }
    // The body changed on the way in, or the request passes this layer a second time (a
    // retry, a copy): here it is a new request.
    parts.extensions.remove::<Traversal>();
    match context_of(cfg, pg.bearer.as_ref(), pg.oauth.as_deref(), &parts, bytes).await {
        Ok(ctx) => outermost(inner, parts, &pg, stage, learned, ctx).await,
        Err(refusal) => Ok(*refusal),
    }
}

/// The outermost layer: decides for its stage and those it learned are further in on this
/// route, and starts the request's [`Traversal`].
async fn outermost<S, St, R>(
    inner: S,
    mut parts: http::request::Parts,
    pg: &PayGate<St>,
    stage: StageSet,
    learned: Arc<Learned>,
    ctx: McpContext,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    // Routes are learned for tool calls, the one method whose stages decide what is
    // charged; other methods go by the layers made from the handle.
    let route_key = ctx
        .rpc
        .as_ref()
        .filter(|rpc| rpc.method == "tools/call")
        .map(|rpc| learned.route(&rpc.method, rpc.tool_name().ok()));
    let inside = route_key
        .as_ref()
        .and_then(|k| learned.get(k))
        .unwrap_or_else(|| pg.layered());
    let stages = stage | inside;
    // A bearer token is for this gate alone: behind an OAuth-protected gate the server
    // never sees one, whichever credential the call used.
    if pg.oauth.is_some() || ctx.account.is_some() || ctx.token_error.is_some() {
        parts.headers.remove(http::header::AUTHORIZATION);
    }
    let t = Traversal::start(&pg.gate, stage, stages, ctx.clone(), learned, route_key);
    parts.extensions.insert(t.clone());
    let Some(rpc) = ctx.rpc.clone() else {
        return forward(inner, parts, &ctx, Some(&t), None).await;
    };
    parts.extensions.insert(ParsedRequest {
        body: ctx.body.clone(),
        rpc,
    });
    route(inner, parts, pg, stages, &ctx, &t, true).await
}

/// The protocol checks, then the request by method, for `stages`.
async fn route<S, St, R>(
    inner: S,
    parts: http::request::Parts,
    pg: &PayGate<St>,
    stages: StageSet,
    ctx: &McpContext,
    traversal: &Traversal,
    outermost: bool,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    let Some(rpc) = ctx.rpc.as_deref() else {
        return forward(inner, parts, ctx, outermost.then_some(traversal), None).await;
    };
    let routed = Routed {
        pg,
        stages,
        ctx,
        rpc,
        id: rpc.id_as_sent(&ctx.body),
        traversal,
        outermost,
    };
    if let Err(refusal) = check_method(rpc, routed.id) {
        return Ok(*refusal);
    }
    if rpc.method == "tools/call" {
        handle_call(inner, parts, &routed).await
    } else if pg.gate.is_free_method(&rpc.method) {
        handle_free(inner, parts, &routed).await
    } else {
        handle_keyed(inner, parts, &routed).await
    }
}

/// A `tools/call`: one decision for the stages present, then the call forwarded and watched.
async fn handle_call<S, St, R>(
    inner: S,
    parts: http::request::Parts,
    r: &Routed<'_, St>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    // A call sent as a notification would run with no answer to watch, so a refund could
    // not be told from a success: a tool call must be a request.
    if r.rpc.id.is_none() {
        let e = jsonrpc::RpcError {
            code: jsonrpc::INVALID_REQUEST,
            message: "tools/call must be a request with an id, not a notification".into(),
        };
        return Ok(rpc_error(StatusCode::BAD_REQUEST, None, &e));
    }
    let tool = match r.rpc.tool_name() {
        Ok(t) => t,
        Err(e) => return Ok(rpc_error(StatusCode::OK, r.id, &e)),
    };
    if let Err(refusal) = check_mcp_headers(&parts.headers, r.rpc, r.id) {
        return Ok(*refusal);
    }
    let call = CallRequest {
        api_key: r.ctx.api_key.as_deref(),
        account: r.ctx.account,
        tool,
        input_bytes: r.rpc.arguments_len(),
        client_ip: r.ctx.client_ip,
    };
    if !r.stages.decides() {
        if let Err(denied) = check_key(r, &call, Some(call.tool)).await {
            return Ok(r.denial(&denied));
        }
        return forward(inner, parts, r.ctx, r.done_by(), None).await;
    }
    decide_and_forward(inner, parts, r, &call).await
}

/// The one atomic decision for the stages present; an allowed call goes on, watched for
/// the refunds billing owes.
async fn decide_and_forward<S, St, R>(
    inner: S,
    parts: http::request::Parts,
    r: &Routed<'_, St>,
    call: &CallRequest<'_>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    let gate = &r.pg.gate;
    let alerts = r.stages.contains(StageSet::ALERTS);
    let (mut decision, decided_at_ms) = gate.decide(call, r.stages.checks(), alerts).await;
    let receipt = decision.receipt.take();
    let decision = Arc::new(decision);
    let span = call_span(call.tool, &decision);
    let usage = PendingUsage {
        gate: gate.clone(),
        decision: decision.clone(),
        decided_at_ms,
        dispatch_events: alerts,
        span: span.clone(),
        refunded: Arc::default(),
    };
    if !decision.allowed {
        span.in_scope(|| tracing::info!("denied"));
        drop(usage);
        return Ok(r.denial(&decision));
    }
    // A charge is undone when the downstream refuses the call (no tool ran); a failed call
    // is refunded only where billing is.
    let billing = r.stages.contains(StageSet::BILLING);
    let forwarded = Forwarded {
        receipt,
        refund_on_failure: billing && gate.config().refund_on_failure,
        usage,
        id: r.id.map(str::to_owned),
    };
    let mut resp = tracing::Instrument::instrument(
        forward_call(
            inner,
            parts,
            r.ctx,
            gate,
            (r.traversal, r.outermost),
            forwarded,
        ),
        span,
    )
    .await?;
    decorate(resp.headers_mut(), &decision, r.stages);
    Ok(resp)
}

impl<St> Routed<'_, St> {
    /// The traversal to settle once the downstream answered: the outermost layer's only.
    fn done_by(&self) -> Option<&Traversal> {
        self.outermost.then_some(self.traversal)
    }

    /// The answer to a denied call; a layer further in tells the outer ones nothing ran.
    fn denial<R: Body>(&self, decision: &Decision) -> Response<GateBody<R>> {
        if !self.outermost {
            self.traversal.deny_inside();
        }
        let mut resp = denial_response(self.id, decision, self.stages, self.pg.denial.as_ref());
        if let Some(oauth) = &self.pg.oauth {
            challenge(&mut resp, oauth, decision, self.ctx.token_error.as_ref());
        }
        resp
    }
}

/// On an OAuth-protected gate, a call without valid credentials is HTTP 401 with the
/// `WWW-Authenticate` challenge that starts an MCP client's sign-in (RFC 9728 §5.1); a
/// valid token without a needed scope is 403 `insufficient_scope` (RFC 6750 §3.1), naming
/// the scopes to ask for; a token the store could not check is 503, so the client retries
/// rather than signing in again.
fn challenge<B, St>(
    resp: &mut Response<B>,
    oauth: &crate::oauth::OAuthServer<St>,
    decision: &Decision,
    token_error: Option<&crate::oauth::BearerError>,
) {
    use crate::deny::DenyReason::{ApiKeyExpired, InvalidApiKey, MissingApiKey};
    use crate::oauth::BearerError;
    if !matches!(
        decision.reason,
        Some(MissingApiKey | InvalidApiKey | ApiKeyExpired)
    ) {
        return;
    }
    let metadata = format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        oauth.issuer()
    );
    let needed = oauth.settings().scopes.join(" ");
    let scope = if needed.is_empty() {
        String::new()
    } else {
        format!(", scope=\"{needed}\"")
    };
    let (status, value) = match token_error {
        Some(BearerError::Unavailable) => {
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return;
        }
        Some(BearerError::InsufficientScope(_)) => (
            StatusCode::FORBIDDEN,
            format!("Bearer error=\"insufficient_scope\"{scope}, {metadata}"),
        ),
        Some(BearerError::Invalid) => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer {metadata}{scope}, error=\"invalid_token\""),
        ),
        None => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer {metadata}{scope}"),
        ),
    };
    if let Ok(v) = http::HeaderValue::from_str(&value) {
        *resp.status_mut() = status;
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
}

/// Without a deciding stage: the key checked (where a key-checking stage is) with the ACL
/// of `acl_tool`, and for a tool call the alert rules run on its record (with the alert
/// stage). A denial comes back as `Err`.
async fn check_key<St: KeyStore>(
    r: &Routed<'_, St>,
    call: &CallRequest<'_>,
    acl_tool: Option<&str>,
) -> Result<(), Decision> {
    let gate = &r.pg.gate;
    match gate.authorize_call(call, acl_tool).await {
        Ok(rec) if acl_tool.is_some() && r.stages.contains(StageSet::ALERTS) => gate.alert_on(&rec),
        Ok(_) => {}
        Err(reason) if r.stages.needs_key() => {
            // Recorded as a usage event; in shadow mode it lets the call through.
            let decision = gate.deny(reason, call.tool, call);
            if !decision.allowed {
                return Err(decision);
            }
        }
        Err(_) => {}
    }
    Ok(())
}

/// A free method: no key needed; `tools/list` shows a known key only what its ACL allows,
/// with prices where billing is.
async fn handle_free<S, St, R>(
    inner: S,
    parts: http::request::Parts,
    r: &Routed<'_, St>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    if let Err(refusal) = check_mcp_headers(&parts.headers, r.rpc, r.id) {
        return Ok(*refusal);
    }
    if r.rpc.method != "tools/list" || !r.stages.needs_key() {
        return forward(inner, parts, r.ctx, r.done_by(), None).await;
    }
    let caller = CallRequest {
        api_key: r.ctx.api_key.as_deref(),
        account: r.ctx.account,
        tool: "",
        input_bytes: 0,
        client_ip: r.ctx.client_ip,
    };
    let acl = r.pg.gate.authorize_call(&caller, None).await.ok();
    let priced = r.stages.contains(StageSet::BILLING);
    let rewrite = tools_list_rewrite(&r.pg.gate, acl, priced);
    let id = r.id.map(str::to_owned);
    forward(inner, parts, r.ctx, r.done_by(), Some((rewrite, id))).await
}

/// Any other method: not billed, but it needs a valid key where a key-checking stage is.
async fn handle_keyed<S, St, R>(
    inner: S,
    parts: http::request::Parts,
    r: &Routed<'_, St>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    if let Err(refusal) = check_mcp_headers(&parts.headers, r.rpc, r.id) {
        return Ok(*refusal);
    }
    if r.stages.needs_key() {
        let call = CallRequest {
            api_key: r.ctx.api_key.as_deref(),
            account: r.ctx.account,
            tool: &r.rpc.method,
            input_bytes: 0,
            client_ip: r.ctx.client_ip,
        };
        if let Err(denied) = check_key(r, &call, None).await {
            return Ok(r.denial(&denied));
        }
    }
    forward(inner, parts, r.ctx, r.done_by(), None).await
}

/// The span of one gated `tools/call`: the tool, the key (masked), the decision, the
/// credits charged and, once it is over, the call's duration.
fn call_span(tool: &str, d: &Decision) -> tracing::Span {
    // DEBUG, as tower-http's request spans: at the usual INFO level a subscriber would
    // format these fields for every call, a cost larger than the gate's own.
    tracing::debug_span!(
        "paygate_call",
        tool,
        key = d.key.as_ref().map(|k| k.key_masked.as_str()),
        key_id = d.key.as_ref().map(|k| tracing::field::display(k.key_id)),
        allowed = d.allowed,
        reason = d.reason.map(|r| r.as_str()),
        credits = d.credits_charged,
        duration_ms = tracing::field::Empty,
    )
}
