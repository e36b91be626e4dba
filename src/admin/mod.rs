//! The admin API: a tower `Service` that operators mount beside the gated MCP endpoint
//! (for example axum's `Router::fallback_service`). Paths and camelCase JSON fields mirror
//! the original product's admin API, so scripts written against it keep working.
//!
//! Every endpoint but `/`, `/metrics`, `/pricing`, `/.well-known/mcp-payment` and `/balance`
//! needs `X-Admin-Key`, compared in constant time; failures are audited as
//! `admin.auth_failed`. Keys are masked in every response except the one that creates or
//! rotates them. Bad input gets 400 with `{"error": "..."}`, an unknown key 404, a wrong
//! method 405 and a missing or wrong admin key 401.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::Service;

use crate::audit::AuditLog;
use crate::gate::{Gate, GateError};
use crate::json_errors::without_position;
use crate::metrics::Metrics;
use crate::store::{KeyStore, MemoryKeyStore, StoreError};

pub(crate) mod keys;
pub(crate) mod oauth;
pub(crate) mod payments;
pub(crate) mod reports;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

// The admin key rule lives in the core (`config`), so a config's `adminKey` is checked at
// load with the rule this API enforces.
pub use crate::config::{check_admin_key, AdminKeyError, MIN_ADMIN_KEY_LEN};

/// The admin API over a gate.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{AdminService, Gate, PayGateConfig};
/// use tower::ServiceExt;
/// # paygate_mcp::block_on(async {
/// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
/// let admin = AdminService::new(gate, "admin-secret-123").expect("a long enough admin key");
/// let req = http::Request::post("/keys")
///     .header("x-admin-key", "admin-secret-123")
///     .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"name":"alice","credits":50}"#)))
///     .unwrap();
/// let resp = admin.oneshot(req).await.unwrap();
/// assert_eq!(resp.status(), 201);
/// # });
/// ```
pub struct AdminService<St = MemoryKeyStore> {
    state: Arc<AdminState<St>>,
}

impl<St> Clone for AdminService<St> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

pub(crate) struct AdminState<St> {
    pub(crate) gate: Arc<Gate<St>>,
    admin_key_digest: [u8; 32],
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) started_ms: i64,
    /// Upstreams whose health `GET /` and `/metrics` report.
    pub(crate) upstreams: Vec<(String, HealthCheck)>,
    /// The built-in OAuth authorization server, when enabled.
    pub(crate) oauth: Option<Arc<crate::oauth::OAuthServer<St>>>,
    /// Stripe payments, when the config has a `stripe` section.
    pub(crate) payments: Option<Arc<payments::Payments>>,
}

// By hand: `Gate<St>` sits behind an `Arc`, so no `St: Clone` is needed.
impl<St> Clone for AdminState<St> {
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            admin_key_digest: self.admin_key_digest,
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            started_ms: self.started_ms,
            upstreams: self.upstreams.clone(),
            oauth: self.oauth.clone(),
            payments: self.payments.clone(),
        }
    }
}

/// Says whether an upstream can take calls now (e.g. [`StdioUpstream::is_ready`]).
///
/// [`StdioUpstream::is_ready`]: crate::StdioUpstream::is_ready
pub type HealthCheck = Arc<dyn Fn() -> bool + Send + Sync>;

impl<St: KeyStore> AdminService<St> {
    /// The admin API over `gate`, guarded by `admin_key`. An empty key, one shorter than
    /// [`MIN_ADMIN_KEY_LEN`] characters, or one with spaces or non-ASCII characters is refused
    /// (see [`check_admin_key`]).
    pub fn new(gate: Arc<Gate<St>>, admin_key: &str) -> Result<Self, AdminKeyError> {
        check_admin_key(admin_key)?;
        let started_ms = gate.clock().now_ms();
        let payments = payments::Payments::from_settings(gate.config().stripe_settings());
        Ok(Self {
            state: Arc::new(AdminState {
                gate,
                admin_key_digest: Sha256::digest(admin_key.as_bytes()).into(),
                metrics: None,
                audit: None,
                started_ms,
                upstreams: Vec::new(),
                oauth: None,
                payments,
            }),
        })
    }

    /// Serves `/audit`, `/audit/export` and `/audit/stats` from `audit` (which should also be
    /// one of the gate's event sinks).
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        // On a service already cloned, the copy being built gets its own state.
        Arc::make_mut(&mut self.state).audit = Some(audit);
        self
    }

    /// Reports the health of the upstream `name` in `GET /` (`status: "degraded"` and
    /// `upstreams: {name: false}` while `check` is false) and in `/metrics`
    /// (`paygate_upstream_up{upstream="name"}`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # let gate = Arc::new(paygate_mcp::Gate::new(paygate_mcp::PayGateConfig::default()).unwrap());
    /// let admin = paygate_mcp::AdminService::new(gate, "an-admin-key-of-some-length")
    ///     .unwrap()
    ///     .with_upstream_health("search", || true);
    /// # let _ = admin;
    /// ```
    pub fn with_upstream_health(
        mut self,
        name: &str,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.state)
            .upstreams
            .push((name.to_string(), Arc::new(check)));
        self
    }

    /// Serves `/metrics` from `metrics` (which should also be one of the gate's event sinks).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        Arc::make_mut(&mut self.state).metrics = Some(metrics);
        self
    }

    /// Serves the built-in OAuth 2.1 authorization server beside the admin API (SPEC §12):
    /// `/.well-known/oauth-authorization-server`, `/.well-known/oauth-protected-resource`
    /// (and `/mcp` after it), `/oauth/register`, `/oauth/authorize` (the consent page and its
    /// form), `/oauth/token`, `/oauth/revoke`, and for the operator `GET /oauth/clients` and
    /// `POST /oauth/clients/revoke`. The server must be over this service's gate: its
    /// grants act for the gate's keys, and revoking or rotating a key ends them.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use paygate_mcp::{oauth::OAuthServer, AdminService, Gate, PayGateConfig};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let oauth = Arc::new(OAuthServer::new("https://mcp.example.com", gate.clone()));
    /// let admin = AdminService::new(gate, "admin-secret-123").unwrap().with_oauth(oauth);
    /// # let _ = admin;
    /// ```
    pub fn with_oauth(mut self, oauth: Arc<crate::oauth::OAuthServer<St>>) -> Self {
        Arc::make_mut(&mut self.state).oauth = Some(oauth);
        self
    }
}

/// The response future of [`AdminService`].
pub struct AdminFuture {
    inner: Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>,
}

impl Future for AdminFuture {
    type Output = Result<Reply, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<St, B> Service<Request<B>> for AdminService<St>
where
    St: KeyStore,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> AdminFuture {
        let state = self.state.clone();
        AdminFuture {
            inner: Box::pin(async move {
                let method = req.method().clone();
                let resp = route_request(&state, req).await;
                if let Some(m) = &state.metrics {
                    m.observe_http(method.as_str(), resp.status().as_u16());
                }
                Ok(resp)
            }),
        }
    }
}

/// An admin response.
pub type Reply = Response<Full<Bytes>>;

/// An answer with `status`, `content_type` and `body`: every admin answer is made here.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON answer: the one way the admin API answers in JSON (errors included).
pub(crate) fn json_reply(status: StatusCode, body: &impl Serialize) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    reply(status, "application/json", bytes)
}

/// A `200 OK` answer in another format (CSV, the metrics exposition).
pub(crate) fn text_reply(content_type: &'static str, body: String) -> Reply {
    reply(StatusCode::OK, content_type, body)
}

/// A refused admin request: its status and a message safe to show.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// The gate's machine reason, for refusals that mirror a gate decision.
    reason: Option<&'static str>,
}

impl ApiError {
    /// Adds the gate's machine reason (`"reason": "ip_not_allowed"`) to the answer.
    pub(crate) fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    fn into_reply(self) -> Reply {
        match self.reason {
            Some(reason) => json_reply(
                self.status,
                &json!({"error": self.message, "reason": reason}),
            ),
            None => json_reply(self.status, &json!({"error": self.message})),
        }
    }
}

/// What a handler answers.
pub(crate) type Handled = Result<Reply, ApiError>;

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
        reason: None,
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "key not found")
}

/// A store failure, said without internals.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(msg) => bad_request(msg),
            StoreError::Duplicate => {
                error(StatusCode::CONFLICT, "a key with this value already exists")
            }
            StoreError::Revoked => error(
                StatusCode::CONFLICT,
                "the key is revoked: it takes no top-up, limit, policy change or rotation",
            ),
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; nothing was changed",
            ),
        }
    }
}

/// A refusal of the gate's key lifecycle, said as the store's are.
impl From<GateError> for ApiError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Store(e) => e.into(),
            GateError::Random(_) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, "cannot generate a key")
            }
            GateError::Invalid(msg) => bad_request(msg),
        }
    }
}

/// The parsed request: method, path (without a trailing `/`), query, headers and body bytes.
pub(crate) struct AdminRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl AdminRequest {
    /// The body as `T`, or a 400 naming the offending field. The body must be exactly one
    /// JSON document (whitespace may follow it): `{...}{...}` or `{...} garbage` is refused,
    /// so no reader of the body can see a different request than the one applied.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(bad_request("request body must be a JSON object"));
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.body);
        let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                bad_request("malformed JSON body")
            } else if path == "." {
                bad_request(format!("invalid body: {}", without_position(&inner)))
            } else {
                bad_request(format!("invalid '{path}': {}", without_position(&inner)))
            }
        })?;
        de.end().map_err(|_| {
            bad_request("request body must be exactly one JSON document; found data after it")
        })?;
        Ok(value)
    }
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: no admin key is asked for.
    Public,
    /// Only a caller sending the admin key in `X-Admin-Key`.
    Admin,
}

/// A handler's answer, boxed so that every handler fits one table.
type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Handled> + Send + 'a>>;

/// What answers an endpoint, given the request and the client's address. The address is
/// found the way the gated endpoint finds it (peer address, `X-Forwarded-For` only from
/// configured proxies), so `/balance` honours a key's IP allowlist like a call does.
type Handler<St> =
    for<'a> fn(&'a AdminState<St>, &'a AdminRequest, Option<IpAddr>) -> HandlerFuture<'a>;

/// One endpoint: a method on a path, who may call it, and its handler.
struct Route<St: 'static> {
    method: Method,
    path: &'static str,
    access: Access,
    handler: Handler<St>,
}

/// A row of [`AdminState::ROUTES`].
const fn route<St>(
    method: Method,
    path: &'static str,
    access: Access,
    handler: Handler<St>,
) -> Route<St> {
    Route {
        method,
        path,
        access,
        handler,
    }
}

/// The answer of a handler that does not wait.
fn now<'a>(handled: Handled) -> HandlerFuture<'a> {
    Box::pin(std::future::ready(handled))
}

impl<St: KeyStore> AdminState<St> {
    /// Every endpoint, the one place routing reads: a path answers the methods listed for it
    /// (any other gets 405 with `Allow` naming them, in this order), an unlisted path 404.
    /// `Admin` routes need `X-Admin-Key`.
    #[rustfmt::skip]
    const ROUTES: &'static [Route<St>] = {
        use Access::{Admin, Public};
        use Method as M;
        &[
            route(M::GET, "/", Public, |s, _, _| now(reports::health(s))),
            route(M::GET, "/health", Public, |s, _, _| now(reports::health(s))),
            route(M::GET, "/metrics", Public, |s, _, _| Box::pin(reports::metrics(s))),
            route(M::GET, "/pricing", Public, |s, _, _| now(reports::pricing(s))),
            route(M::GET, "/.well-known/mcp-payment", Public, |s, _, _| now(reports::discovery(s))),
            route(M::GET, "/balance", Public, |s, r, ip| Box::pin(keys::balance(s, r, ip))),
            route(M::POST, "/stripe/webhook", Public, |s, r, _| Box::pin(payments::stripe_webhook(s, r))),
            route(M::GET, "/keys", Admin, |s, r, _| Box::pin(keys::list(s, r))),
            route(M::POST, "/keys", Admin, |s, r, _| Box::pin(keys::create(s, r))),
            route(M::POST, "/topup", Admin, |s, r, _| Box::pin(keys::topup(s, r))),
            route(M::POST, "/keys/revoke", Admin, |s, r, _| Box::pin(keys::revoke(s, r))),
            route(M::POST, "/keys/rotate", Admin, |s, r, _| Box::pin(keys::rotate(s, r))),
            route(M::POST, "/keys/acl", Admin, |s, r, _| Box::pin(keys::acl(s, r))),
            route(M::POST, "/keys/expiry", Admin, |s, r, _| Box::pin(keys::expiry(s, r))),
            route(M::POST, "/keys/quota", Admin, |s, r, _| Box::pin(keys::quota(s, r))),
            route(M::POST, "/keys/tags", Admin, |s, r, _| Box::pin(keys::tags(s, r))),
            route(M::POST, "/keys/ip", Admin, |s, r, _| Box::pin(keys::ip(s, r))),
            route(M::POST, "/keys/search", Admin, |s, r, _| Box::pin(keys::search(s, r))),
            route(M::POST, "/limits", Admin, |s, r, _| Box::pin(keys::limits(s, r))),
            route(M::GET, "/usage", Admin, |s, r, _| now(reports::usage(s, r))),
            route(M::GET, "/status", Admin, |s, _, _| Box::pin(reports::status(s))),
            route(M::GET, "/analytics", Admin, |s, r, _| now(reports::analytics(s, r))),
            route(M::GET, "/alerts", Admin, |s, r, _| now(reports::alerts(s, r))),
            route(M::POST, "/alerts", Admin, |s, r, _| now(reports::configure_alerts(s, r))),
            route(M::GET, "/audit", Admin, |s, r, _| now(reports::audit(s, r))),
            route(M::GET, "/audit/export", Admin, |s, r, _| now(reports::audit_export(s, r))),
            route(M::GET, "/audit/stats", Admin, |s, _, _| now(reports::audit_stats(s))),
            route(M::GET, "/.well-known/oauth-authorization-server", Public, |s, _, _| now(oauth::metadata(s))),
            route(M::GET, "/.well-known/oauth-protected-resource", Public, |s, _, _| now(oauth::resource_metadata(s))),
            route(M::GET, "/.well-known/oauth-protected-resource/mcp", Public, |s, _, _| now(oauth::resource_metadata(s))),
            route(M::POST, "/oauth/register", Public, |s, r, _| Box::pin(oauth::register(s, r))),
            route(M::GET, "/oauth/authorize", Public, |s, r, _| Box::pin(oauth::authorize_page(s, r))),
            route(M::POST, "/oauth/authorize", Public, |s, r, _| Box::pin(oauth::authorize_submit(s, r))),
            route(M::POST, "/oauth/token", Public, |s, r, _| Box::pin(oauth::token(s, r))),
            route(M::POST, "/oauth/revoke", Public, |s, r, _| Box::pin(oauth::revoke(s, r))),
            #[cfg(feature = "stripe")]
            route(M::POST, "/checkout", Public, |s, r, ip| Box::pin(payments::checkout(s, r, ip))),
            route(M::GET, "/oauth/clients", Admin, |s, _, _| Box::pin(oauth::clients(s))),
            route(M::POST, "/oauth/clients/revoke", Admin, |s, r, _| Box::pin(oauth::revoke_client(s, r))),
        ]
    };

    /// The route for `method` on `path`, or else the methods `path` takes (none when no
    /// route has it).
    fn find_route(path: &str, method: &Method) -> Result<&'static Route<St>, Vec<&'static str>> {
        let at_path = || Self::ROUTES.iter().filter(move |r| r.path == path);
        match at_path().find(|r| r.method == *method) {
            Some(found) => Ok(found),
            None => Err(at_path().map(|r| r.method.as_str()).collect()),
        }
    }
}

/// The answer to a request no route takes: 404 when its path takes no method, else 405 with
/// `Allow` naming those it takes.
fn no_route(allow: &[&str]) -> Reply {
    if allow.is_empty() {
        return error(StatusCode::NOT_FOUND, "not found").into_reply();
    }
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_reply();
    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
        resp.headers_mut().insert(ALLOW, v);
    }
    resp
}

/// Routes one request through [`AdminState::ROUTES`]: method, then the admin key for routes
/// that need it, then the body (at most [`MAX_ADMIN_BODY`] bytes), then the handler.
async fn route_request<St, B>(state: &AdminState<St>, req: Request<B>) -> Reply
where
    St: KeyStore,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    // An answer given before the body is read closes the connection, so a keep-alive client
    // does not send its next request into the unread rest of this one.
    let unread = !body.is_end_stream();
    let early = |resp: Reply| {
        if unread {
            crate::edge::closing(resp)
        } else {
            resp
        }
    };
    if crate::dashboard::owns(parts.uri.path()) {
        return early(crate::dashboard::serve(&parts.method, parts.uri.path()));
    }
    let path = parts.uri.path().trim_end_matches('/');
    let cfg = state.gate.config();
    let client_ip = crate::edge::client_ip(&parts, cfg.trusted_proxy_hops, &cfg.trusted_proxies);
    let mut req = AdminRequest {
        method: parts.method,
        path: if path.is_empty() { "/" } else { path }.to_string(),
        query: parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
        headers: parts.headers,
        // Read below, once the request has passed the method and admin-key checks.
        body: Bytes::new(),
    };
    let route = match AdminState::<St>::find_route(&req.path, &req.method) {
        Ok(route) => route,
        Err(allow) => return early(no_route(&allow)),
    };
    if route.access == Access::Admin && !state.admin_key_ok(&req.headers) {
        state.gate.emit(
            "admin.auth_failed",
            json!({"actor": "unknown", "path": req.path, "method": req.method.as_str()}),
        );
        return early(
            error(StatusCode::UNAUTHORIZED, "missing or invalid X-Admin-Key").into_reply(),
        );
    }
    req.body = match Limited::new(body, MAX_ADMIN_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return early(
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large or unreadable",
                )
                .into_reply(),
            )
        }
    };
    (route.handler)(state, &req, client_ip)
        .await
        .unwrap_or_else(ApiError::into_reply)
}

impl<St> AdminState<St> {
    /// Constant-time comparison of the digests, so neither content nor length leaks.
    fn admin_key_ok(&self, headers: &http::HeaderMap) -> bool {
        let Some(sent) = headers.get("x-admin-key") else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(sent.as_bytes()).into();
        bool::from(digest.ct_eq(&self.admin_key_digest))
    }
}
