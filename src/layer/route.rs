//! What the outermost layer of a stack does with a request: read it, run the protocol
//! checks, and route it by method to the stages present.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::forward::{forward, forward_call, Answer, Forwarded, PendingUsage};
use super::paygate::{PayGate, Traversal};
use super::request::{check_mcp_headers, check_method, read_context, McpContext};
use super::respond::{decorate, denial_response, rpc_error};
use super::stage::StageSet;
use super::tools_list::tools_list_rewrite;
use super::BoxError;
use crate::gate::{CallRequest, Decision};
use crate::jsonrpc::{self, ParsedRequest, RpcRequest};
use crate::store::KeyStore;

/// One JSON-RPC request on its way through the stack of `pg`, which has `stages`.
struct Routed<'a, St> {
    pg: &'a PayGate<St>,
    stages: StageSet,
    ctx: &'a McpContext,
    rpc: &'a RpcRequest,
    /// The request's id as the client wrote it, for the answers the layer writes.
    id: Option<&'a str>,
    traversal: &'a Traversal,
}

/// Handles `req` for every stage of `pg`'s stack; `first` is the layer it arrived at.
pub(crate) async fn handle<S, St, B, R>(
    inner: S,
    pg: PayGate<St>,
    first: StageSet,
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
    let stages = pg.stages();
    let (mut parts, body) = req.into_parts();
    let ctx = match read_context(pg.gate.config(), pg.bearer.as_ref(), &parts, body).await {
        Ok(ctx) => ctx,
        Err(resp) => return Ok(*resp),
    };
    let traversal = pg.traversal(stages, first, ctx.body.clone());
    parts.extensions.insert(traversal.clone());
    let Some(rpc) = ctx.rpc.clone() else {
        return forward(inner, parts, &ctx, &traversal, None).await;
    };
    parts.extensions.insert(ParsedRequest {
        body: ctx.body.clone(),
        rpc: rpc.clone(),
    });
    let routed = Routed {
        pg: &pg,
        stages,
        ctx: &ctx,
        rpc: &rpc,
        id: rpc.id_as_sent(&ctx.body),
        traversal: &traversal,
    };
    if let Err(refusal) = check_method(&rpc, routed.id) {
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
        tool,
        input_bytes: r.rpc.arguments_len(),
        client_ip: r.ctx.client_ip,
    };
    if !r.stages.decides() {
        if let Err(denied) = check_key(r, &call).await {
            return Ok(denial_response(
                r.id,
                &denied,
                r.stages,
                r.pg.denial.as_ref(),
            ));
        }
        return forward(inner, parts, r.ctx, r.traversal, None).await;
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
    };
    if !decision.allowed {
        span.in_scope(|| tracing::info!("denied"));
        drop(usage);
        return Ok(denial_response(
            r.id,
            &decision,
            r.stages,
            r.pg.denial.as_ref(),
        ));
    }
    // A charge is undone when the downstream refuses the call (no tool ran); a failed call
    // is refunded only where billing is.
    let billing = r.stages.contains(StageSet::BILLING);
    let undoable = billing || r.stages.contains(StageSet::QUOTA);
    let forwarded = Forwarded {
        receipt: receipt.filter(|_| undoable),
        refund_on_failure: billing && gate.config().refund_on_failure,
        usage,
        id: r.id.map(str::to_owned),
    };
    let mut resp = tracing::Instrument::instrument(
        forward_call(inner, parts, r.ctx, gate, r.traversal, forwarded),
        span,
    )
    .await?;
    decorate(resp.headers_mut(), &decision, r.stages);
    Ok(resp)
}

/// Without a deciding stage: the key checked (with the auth stage) and the alert rules run
/// on its record (with the alert stage). A denial comes back as `Err`.
async fn check_key<St: KeyStore>(
    r: &Routed<'_, St>,
    call: &CallRequest<'_>,
) -> Result<(), Decision> {
    let gate = &r.pg.gate;
    match gate
        .authorize(call.api_key, call.client_ip, Some(call.tool))
        .await
    {
        Ok(rec) if r.stages.contains(StageSet::ALERTS) => gate.alert_on(&rec),
        Ok(_) => {}
        Err(reason) if r.stages.contains(StageSet::AUTH) => {
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
        return forward(inner, parts, r.ctx, r.traversal, None).await;
    }
    let acl =
        r.pg.gate
            .authorize(r.ctx.api_key.as_deref(), r.ctx.client_ip, None)
            .await
            .ok();
    let priced = r.stages.contains(StageSet::BILLING);
    let rewrite = tools_list_rewrite(&r.pg.gate, acl, priced);
    let id = r.id.map(str::to_owned);
    forward(inner, parts, r.ctx, r.traversal, Some((rewrite, id))).await
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
        let gate = &r.pg.gate;
        let call = CallRequest {
            api_key: r.ctx.api_key.as_deref(),
            tool: &r.rpc.method,
            input_bytes: 0,
            client_ip: r.ctx.client_ip,
        };
        if let Err(reason) = gate.authorize(call.api_key, call.client_ip, None).await {
            let decision = gate.deny(reason, &r.rpc.method, &call);
            if !decision.allowed {
                return Ok(denial_response(
                    r.id,
                    &decision,
                    r.stages,
                    r.pg.denial.as_ref(),
                ));
            }
        }
    }
    forward(inner, parts, r.ctx, r.traversal, None).await
}

/// The span of one gated `tools/call`: the tool, the key (masked), the decision, the
/// credits charged and, once it is over, the call's duration.
fn call_span(tool: &str, d: &Decision) -> tracing::Span {
    tracing::info_span!(
        "paygate_call",
        tool,
        key = d.key.as_ref().map(|k| k.key_masked.as_str()),
        allowed = d.allowed,
        reason = d.reason.map(|r| r.as_str()),
        credits = d.credits_charged,
        duration_ms = tracing::field::Empty,
    )
}
