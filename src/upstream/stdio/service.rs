//! The tower service: one JSON-RPC request or notification per HTTP POST, answered
//! `application/json` (or 202 with an empty body for a notification), every failure a
//! JSON-RPC error with its HTTP status.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::message::Call;
use super::StdioUpstream;
use crate::jsonrpc;

impl StdioUpstream {
    /// Answers one HTTP request.
    async fn serve(self, req: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            let body = jsonrpc::error_body(
                None,
                jsonrpc::INVALID_REQUEST,
                "only POST is supported by this MCP upstream",
                None,
            );
            let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, body);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        // Behind the gate's layers the body was parsed already; reuse it when it matches.
        let rpc = match jsonrpc::ParsedRequest::of(&parts.extensions, &body) {
            Some(rpc) => rpc,
            None => match jsonrpc::parse_request(&body) {
                Ok(rpc) => Arc::new(rpc),
                Err(e) => {
                    let body = jsonrpc::error_body(None, e.code, &e.message, None);
                    return json_response(StatusCode::BAD_REQUEST, body);
                }
            },
        };
        let call = Call::Body {
            body: &body,
            rpc: &rpc,
        };
        match self.exchange(rpc.id.clone(), call).await {
            Ok(Some(answer)) => json_response(StatusCode::OK, answer),
            Ok(None) => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp
            }
            Err(e) => {
                let body = serde_json::to_vec(&e.to_jsonrpc(rpc.id.as_ref())).unwrap_or_default();
                json_response(e.http_status(), body)
            }
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The response future of [`StdioUpstream`] as a tower service.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

/// What [`ResponseFuture`] resolves to.
type Answer = Result<Response<Full<Bytes>>, Infallible>;

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// One JSON-RPC request or notification per HTTP POST, answered `application/json` (or
/// 202 with an empty body for a notification). Never fails: every error is a JSON-RPC error
/// response with the status listed in the [module docs](super).
///
/// ```no_run
/// # async fn run(upstream: paygate_mcp::StdioUpstream) {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceExt;
///
/// let req = http::Request::post("http://localhost/mcp")
///     .body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)))
///     .unwrap();
/// let resp = upstream.clone().oneshot(req).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// # }
/// ```
impl tower::Service<Request<Full<Bytes>>> for StdioUpstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        ResponseFuture {
            inner: Box::pin(async move { Ok(this.serve(req).await) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_can_be_boxed_and_shared() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn sendable<T: Send + 'static>() {}
        shareable::<StdioUpstream>();
        sendable::<ResponseFuture>();
    }
}
