//! What the gateway's benchmarks compare with: a downstream that does no work, and the MCP
//! server served without the gate.

use std::convert::Infallible;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use paygate_mcp::upstream::{boxed, UpstreamService};
use tower::ServiceExt;

/// Answers every JSON-RPC request at once with an empty tool result (echoing its id), and
/// every notification with 202: what remains is the gateway's own cost.
pub fn noop_server() -> UpstreamService {
    boxed(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            id: Option<&'a serde_json::value::RawValue>,
        }
        let id = serde_json::from_slice::<Id<'_>>(&body)
            .ok()
            .and_then(|m| m.id);
        let resp = match id {
            Some(id) => {
                let answer = format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":{{"content":[],"isError":false}}}}"#,
                    id.get()
                );
                let mut resp = Response::new(Full::new(Bytes::from(answer)));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            None => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = http::StatusCode::ACCEPTED;
                resp
            }
        };
        Ok::<_, Infallible>(resp)
    }))
}

/// `downstream` served as it is, without the gate: the body is read whole (as the gate reads
/// it) and handed on.
pub fn ungated(downstream: UpstreamService) -> axum::Router {
    axum::Router::new().fallback(move |req: Request<Body>| {
        let downstream = downstream.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match downstream
                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await
            {
                Ok(resp) => resp.map(Body::new),
                Err(never) => match never {},
            }
        }
    })
}
