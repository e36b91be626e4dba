//! [`HttpUpstream`]: forwards MCP Streamable HTTP to a remote server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use serde_json::{json, Value};
use tokio::sync::Mutex as AsyncMutex;

use super::{error_response, request_id, BoxError, UpstreamError};
use crate::jsonrpc::find_response;

/// Request headers never sent upstream: the caller's credentials for this gateway, and
/// hop-by-hop headers.
const STRIPPED_REQUEST: [&str; 13] = [
    "x-api-key",
    "x-admin-key",
    "authorization",
    "cookie",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Response headers not passed back (hop-by-hop, or set by this server).
const STRIPPED_RESPONSE: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "set-cookie",
];

/// How to reach a remote MCP server.
#[derive(Debug, Clone)]
pub struct HttpUpstreamConfig {
    /// The remote MCP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: String,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// Longest wait for the response head; the body may stream for longer.
    pub response_timeout: Duration,
    /// Largest response body passed back; a larger one is cut off with an error.
    pub max_response_bytes: u64,
    /// Extra headers sent upstream (e.g. the remote server's own credentials).
    pub headers: Vec<(String, String)>,
}

impl HttpUpstreamConfig {
    /// Defaults for `url`: 5 s to connect, 60 s to the response head, 32 MiB bodies.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            max_response_bytes: 32 * 1024 * 1024,
            headers: Vec::new(),
        }
    }

    /// Adds a header sent upstream with every request.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the time limit to the response head.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets the response size limit.
    pub fn with_max_response_bytes(mut self, bytes: u64) -> Self {
        self.max_response_bytes = bytes;
        self
    }
}

/// A session this gateway holds with the remote server when it multiplexes many clients
/// over one upstream (see [`HttpUpstream::managed`]).
#[derive(Default)]
struct ManagedSession {
    id: Option<HeaderValue>,
    initialize: Option<Value>,
}

/// Forwards MCP Streamable HTTP to a remote server: SSE answers stream back as they come,
/// `Mcp-Session-Id` passes both ways, and the caller's `X-API-Key`, `X-Admin-Key` and
/// `Authorization` never leave the gateway. Failures become JSON-RPC errors with HTTP 502 or
/// 504, which the billing layer refunds when refund-on-failure is on.
///
/// ```no_run
/// use paygate_mcp::{HttpUpstream, HttpUpstreamConfig, PayGateConfig, PayGateLayer};
/// let upstream = HttpUpstream::new(HttpUpstreamConfig::new("https://mcp.example.com/mcp")).unwrap();
/// let service = tower::ServiceBuilder::new()
///     .layer(PayGateLayer::new(PayGateConfig::default()))
///     .service(upstream);
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct HttpUpstream {
    client: reqwest::Client,
    url: reqwest::Url,
    config: Arc<HttpUpstreamConfig>,
    extra: Arc<Vec<(HeaderName, HeaderValue)>>,
    managed: Option<Arc<AsyncMutex<ManagedSession>>>,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl HttpUpstream {
    /// A transparent forwarder: each client's own session and handshake pass through.
    pub fn new(config: HttpUpstreamConfig) -> Result<Self, UpstreamError> {
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                UpstreamError::Config(format!("'{}' is not an http(s) URL", config.url))
            })?;
        let extra = config
            .headers
            .iter()
            .map(|(n, v)| {
                let name = HeaderName::try_from(n.as_str())
                    .map_err(|_| UpstreamError::Config(format!("bad header name '{n}'")))?;
                let value = HeaderValue::try_from(v.as_str())
                    .map_err(|_| UpstreamError::Config(format!("bad value for header '{n}'")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            url,
            config: Arc::new(config),
            extra: Arc::new(extra),
            managed: None,
        })
    }

    /// A forwarder that holds one session with the remote server for all clients: it does
    /// the MCP handshake itself (again after the remote forgets the session) and answers
    /// clients' `initialize` from it. Used when several upstreams sit behind one gateway.
    pub fn managed(config: HttpUpstreamConfig) -> Result<Self, UpstreamError> {
        let mut upstream = Self::new(config)?;
        upstream.managed = Some(Arc::new(AsyncMutex::new(ManagedSession::default())));
        Ok(upstream)
    }

    fn build(
        &self,
        method: http::Method,
        headers: &http::HeaderMap,
        body: Bytes,
        session: Option<&HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, self.url.clone());
        for (name, value) in headers {
            let lower = name.as_str();
            if STRIPPED_REQUEST.contains(&lower) || lower.starts_with("x-forwarded-") {
                continue;
            }
            if session.is_some() && lower == "mcp-session-id" {
                continue;
            }
            req = req.header(name, value);
        }
        for (name, value) in self.extra.iter() {
            req = req.header(name, value);
        }
        if let Some(id) = session {
            req = req.header("mcp-session-id", id);
        }
        req.body(body)
    }

    /// Sends one request and waits for the response head.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, (StatusCode, &'static str)> {
        match tokio::time::timeout(self.config.response_timeout, req.send()).await {
            Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")),
            Ok(Err(e)) if e.is_timeout() => Err((StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")),
            // No connection, so nothing was sent: 503 tells the layers no tool ran (refunded
            // whatever refundOnFailure says). A failure after sending may have run it: 502.
            Ok(Err(e)) if e.is_connect() => {
                Err((StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"))
            }
            Ok(Err(_)) => Err((StatusCode::BAD_GATEWAY, "upstream_unavailable")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Performs the MCP handshake for a managed session.
    async fn handshake(
        &self,
        session: &mut ManagedSession,
    ) -> Result<(), (StatusCode, &'static str)> {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "paygate-mcp", "version": env!("CARGO_PKG_VERSION")},
        }});
        let resp = self
            .send(self.build(
                http::Method::POST,
                &headers,
                Bytes::from(init.to_string()),
                None,
            ))
            .await?;
        let sid = resp.headers().get("mcp-session-id").cloned();
        let body = resp
            .bytes()
            .await
            .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"))?;
        // The call itself has not been sent yet: a failed handshake ran no tool.
        let answer = find_response(&body, &json!(0))
            .and_then(|m| m.get("result").cloned())
            .ok_or((StatusCode::SERVICE_UNAVAILABLE, "upstream_handshake_failed"))?;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        if let Some(id) = &sid {
            headers.insert("mcp-session-id", id.clone());
        }
        headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        let _ = self
            .send(self.build(
                http::Method::POST,
                &headers,
                Bytes::from(note.to_string()),
                None,
            ))
            .await?;
        session.id = sid;
        session.initialize = Some(answer);
        Ok(())
    }

    async fn forward(self, req: Request<Full<Bytes>>) -> Response<UpstreamBody> {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let id = request_id(&parts, &bytes);
        let method_name = super::request_method(&parts, &bytes);
        let mut session_id = None;
        if let Some(managed) = &self.managed {
            let mut session = managed.lock().await;
            if session.initialize.is_none() {
                if let Err((status, reason)) = self.handshake(&mut session).await {
                    return error_response(status, id.as_ref(), reason).map(UpstreamBody::full);
                }
            }
            match method_name.as_deref() {
                Some("initialize") => {
                    let result = session.initialize.clone().unwrap_or_default();
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
                    return json_answer(answer);
                }
                Some(m) if m.starts_with("notifications/") => {
                    let mut resp = Response::new(UpstreamBody::full(Bytes::new()));
                    *resp.status_mut() = StatusCode::ACCEPTED;
                    return resp;
                }
                _ => session_id = session.id.clone(),
            }
        }
        let req = self.build(
            parts.method.clone(),
            &parts.headers,
            bytes.clone(),
            session_id.as_ref(),
        );
        let resp = match self.send(req).await {
            Ok(resp) => resp,
            Err((status, reason)) => {
                return error_response(status, id.as_ref(), reason).map(UpstreamBody::full)
            }
        };
        if resp.status() == StatusCode::NOT_FOUND && session_id.is_some() {
            // The remote forgot our session (restart): redo the handshake next time.
            if let Some(managed) = &self.managed {
                managed.lock().await.initialize = None;
            }
        }
        let mut head = http::Response::builder().status(resp.status());
        for (name, value) in resp.headers() {
            // A managed session belongs to this gateway, not to the caller.
            let ours = self.managed.is_some() && name == "mcp-session-id";
            if !ours && !STRIPPED_RESPONSE.contains(&name.as_str()) {
                head = head.header(name, value);
            }
        }
        let body = UpstreamBody::remote(resp, self.config.max_response_bytes);
        head.body(body).unwrap_or_else(|_| {
            error_response(
                StatusCode::BAD_GATEWAY,
                id.as_ref(),
                "upstream_bad_response",
            )
            .map(UpstreamBody::full)
        })
    }
}

fn json_answer(answer: Value) -> Response<UpstreamBody> {
    let mut resp = Response::new(UpstreamBody::full(Bytes::from(answer.to_string())));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

impl tower::Service<Request<Full<Bytes>>> for HttpUpstream {
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

pin_project! {
    /// A remote response body streamed through (cut off past the size limit), or a body
    /// this gateway wrote.
    pub struct UpstreamBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Remote {
            #[pin]
            body: reqwest::Body,
            seen: u64,
            limit: u64,
        },
        Full { data: Option<Bytes> },
    }
}

impl UpstreamBody {
    fn remote(resp: reqwest::Response, limit: u64) -> Self {
        let body: reqwest::Body = resp.into();
        Self {
            kind: Kind::Remote {
                body,
                seen: 0,
                limit,
            },
        }
    }

    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full {
                data: Some(bytes.into()),
            },
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBody")
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Remote { body, seen, limit } => match body.poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(
                                "upstream response larger than the limit".into(),
                            )));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Remote { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Remote { body, .. } => body.size_hint(),
        }
    }
}
