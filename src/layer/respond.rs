//! The answers the layers write themselves, and the headers they add to the downstream's.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::Body;

use super::stage::StageSet;
use super::{denial, DenialHandler, GateBody};
pub(crate) use crate::edge::closing;
use crate::gate::Decision;
use crate::jsonrpc;

/// The headers the layers set, named for browsers (`Access-Control-Expose-Headers`).
const EXPOSED: HeaderValue = HeaderValue::from_static(
    "x-credits-remaining, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, mcp-session-id, retry-after",
);

pub(crate) fn json_response<R: Body>(status: StatusCode, body: Vec<u8>) -> Response<GateBody<R>> {
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    expose_headers(resp.headers_mut());
    resp
}

pub(crate) fn expose_headers(headers: &mut http::HeaderMap) {
    headers.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
}

pub(crate) fn rpc_error<R: Body>(
    status: StatusCode,
    id: Option<&str>,
    e: &jsonrpc::RpcError,
) -> Response<GateBody<R>> {
    json_response(
        status,
        jsonrpc::error_body_as_sent(id, e.code, &e.message, None),
    )
}

/// The answer to a denied call (SPEC §4), shaped by the handle's [`DenialHandler`] if any.
pub(crate) fn denial_response<R: Body>(
    id: Option<&str>,
    d: &Decision,
    stages: StageSet,
    handler: Option<&DenialHandler>,
) -> Response<GateBody<R>> {
    let mut resp = Response::new(Bytes::from(denial::denial_body_as_sent(id, d)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(retry) = d.retry_after_secs {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    }
    decorate(resp.headers_mut(), d, stages);
    if let Some(shape) = handler {
        resp = shape(d, resp);
    }
    resp.map(GateBody::full)
}

/// The credits header (with billing) and rate-limit headers (with rate limiting) for a
/// call with a known key.
pub(crate) fn decorate(headers: &mut http::HeaderMap, d: &Decision, stages: StageSet) {
    expose_headers(headers);
    let Some(key) = &d.key else { return };
    if stages.contains(StageSet::BILLING) {
        headers.insert(
            HeaderName::from_static("x-credits-remaining"),
            HeaderValue::from(key.credits),
        );
    }
    if let (true, Some(rate)) = (stages.contains(StageSet::RATE_LIMIT), d.rate) {
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
