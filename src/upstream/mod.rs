//! Upstreams: tower services that speak to the MCP server the gate protects when it is not
//! a Rust service in the same process — a remote Streamable-HTTP server ([`HttpUpstream`]),
//! a local server over stdio ([`StdioUpstream`]), or several of them behind one gateway
//! ([`McpRouter`], tools prefixed `prefix:tool`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use ::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::jsonrpc::{self, find_response, ParsedRequest};

#[cfg(feature = "http-upstream")]
mod http;

#[cfg(feature = "http-upstream")]
pub use self::http::{HttpUpstream, HttpUpstreamConfig, UpstreamBody};

pub mod stdio;

pub use stdio::{StdioConfig, StdioError, StdioUpstream};

/// Boxed error of upstream bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body every routed upstream answers with.
pub type RoutedBody = UnsyncBoxBody<Bytes, BoxError>;

/// Any upstream, boxed, as [`McpRouter`] holds them.
pub type UpstreamService =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<RoutedBody>, Infallible>;

/// Why an upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The configuration is not usable.
    #[error("upstream config: {0}")]
    Config(String),
}

/// A JSON-RPC error answer with `data.reason`, as upstreams send for their own failures.
pub(crate) fn error_response(
    status: StatusCode,
    id: Option<&Value>,
    reason: &str,
) -> Response<Bytes> {
    let message = match reason {
        "upstream_timeout" => "The MCP server did not answer in time",
        "upstream_unavailable" => "The MCP server cannot be reached",
        "upstream_crashed" => "The MCP server stopped while handling the request",
        _ => "The MCP server failed",
    };
    let body = jsonrpc::error_body(
        id,
        jsonrpc::INTERNAL_ERROR,
        message,
        Some(json!({"reason": reason})),
    );
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The request's JSON-RPC id, from the layers' parse when there was one.
pub(crate) fn request_id(parts: &::http::request::Parts, body: &[u8]) -> Option<Value> {
    match ParsedRequest::of(&parts.extensions, body) {
        Some(rpc) => rpc.id.clone(),
        None => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("id").cloned()),
    }
}

/// The request's JSON-RPC method, from the layers' parse when there was one.
pub(crate) fn request_method(parts: &::http::request::Parts, body: &[u8]) -> Option<String> {
    match ParsedRequest::of(&parts.extensions, body) {
        Some(rpc) => Some(rpc.method.clone()),
        None => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_string)),
    }
}

/// Boxes any upstream service for a [`McpRouter`].
///
/// ```
/// # let svc = tower::service_fn(|_r: http::Request<http_body_util::Full<bytes::Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # });
/// let boxed = paygate_mcp::upstream::boxed(svc);
/// # let _ = boxed;
/// ```
pub fn boxed<S, B>(service: S) -> UpstreamService
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        service
            .map_response(|resp: Response<B>| resp.map(|b| b.map_err(Into::into).boxed_unsync())),
    )
}

/// Largest answer read from an upstream when the router must look inside it (`tools/list`).
const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;
/// Pages of `tools/list` followed per upstream.
const MAX_LIST_PAGES: usize = 20;

/// Several MCP servers behind one endpoint. Each is reached through a prefix: `tools/list`
/// merges their tools as `prefix:name`, `tools/call` routes by the prefix and strips it, so
/// pricing and ACLs see the prefixed names. The router answers `initialize`, `ping` and
/// notifications itself.
///
/// ```
/// use paygate_mcp::upstream::{boxed, McpRouter};
/// # let fs = tower::service_fn(|_r: http::Request<http_body_util::Full<bytes::Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
/// # });
/// let router = McpRouter::new("my gateway").route("fs", boxed(fs)).unwrap();
/// # let _ = router;
/// ```
#[derive(Clone)]
pub struct McpRouter {
    name: Arc<str>,
    routes: Arc<Vec<(String, UpstreamService)>>,
}

impl std::fmt::Debug for McpRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefixes: Vec<&str> = self.routes.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("McpRouter")
            .field("prefixes", &prefixes)
            .finish()
    }
}

impl McpRouter {
    /// A router with no upstreams; `name` is the server name `initialize` reports.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            routes: Arc::new(Vec::new()),
        }
    }

    /// Adds an upstream under `prefix` (letters, digits, `-`, `_`; unique).
    pub fn route(mut self, prefix: &str, upstream: UpstreamService) -> Result<Self, UpstreamError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(UpstreamError::Config(format!(
                "prefix '{prefix}' must be 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if self.routes.iter().any(|(p, _)| p == prefix) {
            return Err(UpstreamError::Config(format!(
                "prefix '{prefix}' is used twice"
            )));
        }
        Arc::make_mut(&mut self.routes).push((prefix.to_string(), upstream));
        Ok(self)
    }

    async fn handle(self, req: Request<Full<Bytes>>) -> Response<RoutedBody> {
        let (parts, body) = req.into_parts();
        if parts.method != ::http::Method::POST {
            // Only POST carries JSON-RPC; the router runs tools, so it reads no other method.
            let body = jsonrpc::error_body(
                None,
                jsonrpc::INVALID_REQUEST,
                "JSON-RPC requests are sent with POST",
                None,
            );
            let mut resp = answer(StatusCode::METHOD_NOT_ALLOWED, body);
            resp.headers_mut()
                .insert(::http::header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let rpc = match ParsedRequest::of(&parts.extensions, &bytes) {
            Some(rpc) => (*rpc).clone(),
            None => match jsonrpc::parse_request(&bytes) {
                Ok(rpc) => rpc,
                Err(e) => {
                    let body = jsonrpc::error_body(None, e.code, &e.message, None);
                    return answer(StatusCode::BAD_REQUEST, body);
                }
            },
        };
        let id = rpc.id.clone().unwrap_or(Value::Null);
        let ok = |result: Value| {
            answer(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "result": result})
                    .to_string()
                    .into_bytes(),
            )
        };
        match rpc.method.as_str() {
            "initialize" => {
                let params = params_of(&bytes);
                let version = params
                    .as_ref()
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                    .unwrap_or("2025-06-18");
                ok(json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": &*self.name, "version": env!("CARGO_PKG_VERSION")},
                }))
            }
            m if m.starts_with("notifications/") => {
                let mut resp = answer(StatusCode::ACCEPTED, Vec::new());
                resp.headers_mut().remove(CONTENT_TYPE);
                resp
            }
            "ping" => ok(json!({})),
            "tools/list" => ok(json!({"tools": self.list_tools(&parts).await})),
            "resources/list" => ok(json!({"resources": []})),
            "resources/templates/list" => ok(json!({"resourceTemplates": []})),
            "prompts/list" => ok(json!({"prompts": []})),
            "tools/call" => self.call_tool(parts, &rpc, &bytes, id).await,
            other => {
                let body = jsonrpc::error_body(
                    Some(&id),
                    -32601,
                    &format!("Method not found: {other}"),
                    None,
                );
                answer(StatusCode::OK, body)
            }
        }
    }

    async fn list_tools(&self, parts: &::http::request::Parts) -> Vec<Value> {
        let mut all = Vec::new();
        for (prefix, upstream) in self.routes.iter() {
            let mut cursor: Option<Value> = None;
            for page in 0..MAX_LIST_PAGES {
                let id = json!(format!("paygate-list-{page}"));
                let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"});
                if let Some(c) = &cursor {
                    msg["params"] = json!({"cursor": c});
                }
                let req = forwarded(parts, msg.to_string().into_bytes());
                let Ok(resp) = upstream.clone().oneshot(req).await;
                let Some(body) = read_limited(resp.into_body(), MAX_LIST_BYTES).await else {
                    break;
                };
                let Some(result) = find_response(&body, &id).and_then(|m| m.get("result").cloned())
                else {
                    break;
                };
                for mut tool in result
                    .get("tools")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    if let Some(name) = tool.get("name").and_then(Value::as_str) {
                        tool["name"] = json!(format!("{prefix}:{name}"));
                        all.push(tool);
                    }
                }
                match result.get("nextCursor") {
                    Some(c) if !c.is_null() => cursor = Some(c.clone()),
                    _ => break,
                }
            }
        }
        all
    }

    async fn call_tool(
        &self,
        parts: ::http::request::Parts,
        rpc: &jsonrpc::RpcRequest,
        body: &[u8],
        id: Value,
    ) -> Response<RoutedBody> {
        let unknown = |msg: String| {
            answer(
                StatusCode::OK,
                jsonrpc::error_body(Some(&id), jsonrpc::INVALID_PARAMS, &msg, None),
            )
        };
        let Ok(full_name) = rpc.tool_name() else {
            return unknown("tools/call needs a string params.name".into());
        };
        let Some((prefix, name)) = full_name.split_once(':') else {
            return unknown(format!(
                "Unknown tool: {full_name} (tools are named prefix:tool)"
            ));
        };
        let Some((_, upstream)) = self.routes.iter().find(|(p, _)| p == prefix) else {
            return unknown(format!("Unknown tool: {full_name}"));
        };
        let mut params = params_of(body).unwrap_or_else(|| json!({}));
        params["name"] = json!(name);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        let Ok(resp) = upstream
            .clone()
            .oneshot(forwarded(&parts, msg.to_string().into_bytes()))
            .await;
        resp
    }
}

/// The request's params (the body was parsed strictly already; this reads the rare methods
/// whose params the router needs).
fn params_of(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get_mut("params")
        .map(Value::take)
}

/// The whole body, or `None` when it fails or passes `limit` bytes.
async fn read_limited(mut body: RoutedBody, limit: usize) -> Option<Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}

/// A request to an upstream with the caller's headers (the upstream strips credentials) and
/// a new body.
fn forwarded(parts: &::http::request::Parts, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = ::http::Method::POST;
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().remove(CONTENT_LENGTH);
    req.headers_mut().remove("mcp-name");
    req.headers_mut().remove("mcp-method");
    req
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<RoutedBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl tower::Service<Request<Full<Bytes>>> for McpRouter {
    type Response = Response<RoutedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RoutedBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
