//! Sending a request on: plain, with its answer rewritten, or as an allowed `tools/call`
//! under the call timeout with refunds for calls that did not run or failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde_json::json;
use tower::Service;

use super::body::{self, Deadline, Framing, RefundWatch, Rewrite, Watch};
use super::request::McpContext;
use super::respond::{expose_headers, json_response};
use super::stack::Traversal;
use super::stage::StageSet;
use super::tools_list::Transform;
use super::GateBody;
use crate::gate::{Decision, Gate};
use crate::jsonrpc;
use crate::store::{ChargeReceipt, KeyStore};

pub(crate) type Answer<R, E> = Result<Response<GateBody<R>>, E>;

pub(crate) fn framing(headers: &http::HeaderMap) -> Framing {
    let sse = headers
        .get(http::header::CONTENT_TYPE)
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
pub(crate) async fn forward<S, R>(
    mut inner: S,
    parts: http::request::Parts,
    ctx: &McpContext,
    done: Option<&Traversal>,
    rewrite: Option<(Transform, Option<String>)>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    R: Body<Data = Bytes>,
{
    // `poll_ready` was driven on this service by `GateService::call`'s caller.
    let resp = inner.call(rebuild(parts, ctx)).await?;
    if let Some(t) = done {
        t.done(resp.status().is_success());
    }
    let (mut head, body) = resp.into_parts();
    let watch = rewrite.map(|(f, id)| {
        head.headers.remove(CONTENT_LENGTH);
        Watch::Rewrite(Box::new(Rewrite::new(framing(&head.headers), f, id)))
    });
    expose_headers(&mut head.headers);
    Ok(Response::from_parts(head, GateBody::inner(body, watch)))
}

/// The usage event of a decided call, with the events the decision fired when the alert
/// stage is present. Recorded exactly once, when the call is over: its answer's body ended
/// or was dropped, or the call was denied, refused, cut off or abandoned (this is dropped);
/// its duration is the time from the decision on, read from the gate's clock.
pub(crate) struct PendingUsage<St: KeyStore> {
    pub(crate) gate: Arc<Gate<St>>,
    pub(crate) decision: Arc<Decision>,
    pub(crate) decided_at_ms: i64,
    pub(crate) dispatch_events: bool,
    /// The call's span, given its duration and closed with the record.
    pub(crate) span: tracing::Span,
    /// Set when a refund of the call began: the event then shows nothing charged.
    pub(crate) refunded: Arc<AtomicBool>,
}

impl<St: KeyStore> Drop for PendingUsage<St> {
    fn drop(&mut self) {
        let duration = self.decision.allowed.then(|| {
            let elapsed = self.gate.clock().now_ms() - self.decided_at_ms;
            u64::try_from(elapsed).unwrap_or(0)
        });
        if let Some(ms) = duration {
            self.span.record("duration_ms", ms);
            tracing::debug!(parent: &self.span, duration_ms = ms, "call finished");
        }
        // Stamped when it is recorded, so a reader paging by time never skips a slow call.
        let refunded = self.refunded.load(Ordering::Acquire);
        self.gate.record_usage(
            &self.decision,
            self.gate.clock().now_ms(),
            duration,
            refunded,
        );
        if self.dispatch_events {
            self.gate.dispatch_events(&self.decision);
        }
    }
}

/// What [`forward_call`] carries for an allowed call besides the request.
pub(crate) struct Forwarded<St: KeyStore> {
    /// Undone if the downstream refuses the request, and with `refund_on_failure` refunded
    /// if the call fails, times out or never answers.
    pub(crate) receipt: Option<ChargeReceipt>,
    /// `refundOnFailure`, with billing present.
    pub(crate) refund_on_failure: bool,
    /// Recorded once the call is over.
    pub(crate) usage: PendingUsage<St>,
    /// The request's id as sent, for the replies the gateway writes.
    pub(crate) id: Option<String>,
}

/// Refunds one call's charge at most once, marking its usage event as refunded.
struct Refunder<St: KeyStore> {
    receipt: Option<ChargeReceipt>,
    gate: Arc<Gate<St>>,
    refunded: Arc<AtomicBool>,
}

impl<St: KeyStore> Refunder<St> {
    /// The refund for `reason`, to run when the caller decides (none once taken).
    fn follow_up(&mut self, reason: &'static str) -> Option<body::FollowUp> {
        let receipt = self.receipt.take()?;
        let gate = self.gate.clone();
        // The usage event shows nothing charged once the credits are given back.
        let refunded = receipt.billed().then(|| self.refunded.clone());
        Some(Box::pin(async move {
            if let Some(refunded) = refunded {
                refunded.store(true, Ordering::Release);
            }
            // Once begun, a refund runs to the end on its own task: a client that hangs up
            // while the store is slow drops the response, not the money owed to it.
            let refund = tokio::spawn(async move { gate.refund_and_record(receipt, reason).await });
            let _ = refund.await;
        }))
    }

    /// Undoes now what the charge counted for the `unseen` stages (billing, quotas) and
    /// keeps the rest for a later refund.
    async fn undo_unseen(&mut self, unseen: StageSet) {
        let Some(receipt) = self.receipt.take() else {
            return;
        };
        let (undo, rest) = receipt.split(
            unseen.contains(StageSet::BILLING),
            unseen.contains(StageSet::QUOTA),
        );
        self.receipt = undo;
        self.now("not_in_stack").await;
        self.receipt = rest;
    }

    /// The stages the charge still to refund counted for.
    fn stages(&self) -> StageSet {
        let Some(r) = &self.receipt else {
            return StageSet::default();
        };
        let billing = if r.billed() {
            StageSet::BILLING
        } else {
            StageSet::default()
        };
        let quota = if r.counted() {
            StageSet::QUOTA
        } else {
            StageSet::default()
        };
        billing | quota
    }

    /// Refunds now, for `reason`.
    async fn now(&mut self, reason: &'static str) {
        if let Some(refund) = self.follow_up(reason) {
            refund.await;
        }
    }
}

/// Forwards an allowed `tools/call` under the call timeout: one [`Deadline`] covers the
/// answer's head and then its body. A receipt is undone if the downstream refuses the
/// request (4xx, 503) or the transport fails, and with `refund_on_failure` also if the
/// call fails, times out or never answers.
pub(crate) async fn forward_call<S, St, R>(
    mut inner: S,
    parts: http::request::Parts,
    ctx: &McpContext,
    gate: &Arc<Gate<St>>,
    traversal: (&Traversal, bool),
    forwarded: Forwarded<St>,
) -> Answer<R, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    St: KeyStore,
    R: Body<Data = Bytes>,
{
    let mut refunder = Refunder {
        receipt: forwarded.receipt,
        gate: gate.clone(),
        refunded: forwarded.usage.refunded.clone(),
    };
    let mut deadline = call_deadline(gate.config().call_timeout_ms, forwarded.id.as_deref());
    let call = inner.call(rebuild(parts, ctx));
    let result = match deadline.as_mut() {
        Some(d) => match d.race(call).await {
            Some(result) => result,
            None => {
                if forwarded.refund_on_failure {
                    refunder.now("timeout").await;
                }
                let reply = deadline.map(|d| d.reply.to_vec()).unwrap_or_default();
                return Ok(json_response(StatusCode::OK, reply));
            }
        },
        None => call.await,
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            refunder.now("transport_error").await;
            return Err(e);
        }
    };
    let (mut head, body) = resp.into_parts();
    expose_headers(&mut head.headers);
    let watched = answer_watch(&head, traversal, &mut refunder, forwarded.refund_on_failure).await;
    let Some(watch) = watched else {
        return Ok(Response::from_parts(head, GateBody::inner(body, None)));
    };
    let deadline = deadline.map(|d| d.with_framing(framing(&head.headers)));
    Ok(Response::from_parts(
        head,
        GateBody::with_deadline(body, watch, deadline).finishing(Box::new(forwarded.usage)),
    ))
}

/// What the answer's head says: `None` when the call is settled already (nothing ran, so
/// the charge was undone, and the body passes as it is); otherwise the watch its body gets.
async fn answer_watch<St: KeyStore>(
    head: &http::response::Parts,
    (traversal, outermost): (&Traversal, bool),
    refunder: &mut Refunder<St>,
    refund_on_failure: bool,
) -> Option<Option<Watch>> {
    // A layer further in denied the call: nothing ran.
    if traversal.denied_inside() {
        refunder.now("not_run").await;
        return None;
    }
    if outermost {
        // Charged for a stage learned on another call that this one never passed: undo
        // what was counted for it.
        let unseen = traversal.done(head.status.is_success());
        if unseen.intersects(StageSet::BILLING | StageSet::QUOTA) {
            refunder.undo_unseen(unseen).await;
        }
    }
    // A 4xx means the downstream refused the request itself (406 without `Accept`, 415,
    // 403 for a foreign `Host`, ...) and a 503 that it could not take it (an upstream down
    // or restarting): no tool ran, so nothing is owed.
    let refused = head.status.is_client_error() || head.status == StatusCode::SERVICE_UNAVAILABLE;
    if refused || (head.status.is_server_error() && refund_on_failure) {
        let undone = refunder.stages();
        refunder
            .now(if refused { "not_run" } else { "http_5xx" })
            .await;
        traversal.release(undone);
        return None;
    }
    let framing = framing(&head.headers);
    let on_failure = if refund_on_failure {
        refunder.follow_up("tool_failed")
    } else {
        None
    };
    let watch = match on_failure {
        Some(on_failure) => Some(RefundWatch::new(
            framing,
            refunder.gate.config().refund_on_tool_error,
            on_failure,
        )),
        // An SSE stream may stay open after the answer: watch for it to know when the
        // call is over. A JSON body ends with its answer.
        None if framing == Framing::Sse => Some(RefundWatch::answer_only(framing)),
        None => None,
    };
    Some(watch.map(|w| Watch::Refund(Box::new(w))))
}

/// The call's deadline and the JSON-RPC error sent when it passes (none with timeout 0).
fn call_deadline(timeout_ms: u64, id: Option<&str>) -> Option<Deadline> {
    (timeout_ms > 0).then(|| {
        let reply = jsonrpc::error_body_as_sent(
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("Tool call timed out after {timeout_ms} ms"),
            Some(json!({"reason": "upstream_timeout"})),
        );
        Deadline::after(std::time::Duration::from_millis(timeout_ms), reply.into())
    })
}
