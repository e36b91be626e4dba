//! Reading a request: the bounded body, its one parse, the key, the client IP, and the
//! protocol checks every stage relies on.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{Method, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::respond::{closing, json_response, rpc_error};
use super::{BearerResolver, BoxError, GateBody};
use crate::config::PayGateConfig;
use crate::edge::{bearer_token, client_ip};
use crate::jsonrpc::{self, ParsedRequest, RpcRequest};
use crate::key::KeyDigest;
use crate::oauth::{BearerError, OAuthServer};
use crate::store::KeyStore;

/// What the deciding layer learned about a request.
#[derive(Clone)]
pub(crate) struct McpContext {
    /// The request body exactly as received (forwarded unchanged).
    pub(crate) body: Bytes,
    /// The JSON-RPC request (`None` for requests without a JSON-RPC body, e.g. GET).
    pub(crate) rpc: Option<Arc<RpcRequest>>,
    /// The API key sent, if any.
    pub(crate) api_key: Option<Arc<str>>,
    /// The account an OAuth access token acts for (its key's digest), when one was sent.
    pub(crate) account: Option<KeyDigest>,
    /// A bearer token was sent to an OAuth-protected gate and does not authenticate
    /// (unknown, expired, revoked; or without a needed scope): the answer says why.
    pub(crate) token_error: Option<BearerError>,
    /// The client IP, when known.
    pub(crate) client_ip: Option<IpAddr>,
}

/// An early answer to a request that goes no further.
pub(crate) type Refusal<R> = Box<Response<GateBody<R>>>;

/// Reads the body (bounded), parses it once (or reuses the parse of a layer further out),
/// and finds the key and client IP.
pub(crate) async fn read_context<B, R, St: KeyStore>(
    cfg: &PayGateConfig,
    bearer: Option<&BearerResolver>,
    oauth: Option<&OAuthServer<St>>,
    parts: &http::request::Parts,
    body: B,
) -> Result<McpContext, Refusal<R>>
where
    B: Body,
    B::Error: Into<BoxError>,
    R: Body,
{
    let bytes = read_body(cfg.max_body_bytes, parts, body).await?;
    context_of(cfg, bearer, oauth, parts, bytes).await
}

/// The context of a request whose body was read: method and header checks, the parse (or
/// the one a layer further out made of these bytes), the key and the client IP.
pub(crate) async fn context_of<R: Body, St: KeyStore>(
    cfg: &PayGateConfig,
    bearer: Option<&BearerResolver>,
    oauth: Option<&OAuthServer<St>>,
    parts: &http::request::Parts,
    bytes: Bytes,
) -> Result<McpContext, Refusal<R>> {
    // RFC 6750 §2.3 is not offered: a token in a URL ends up in logs and histories.
    let in_query = parts
        .uri
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"));
    if oauth.is_some() && in_query {
        return Err(Box::new(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            &jsonrpc::RpcError {
                code: jsonrpc::INVALID_REQUEST,
                message: "access tokens are accepted only in the Authorization header".into(),
            },
        )));
    }
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
    let rpc = match (&parts.method, ParsedRequest::of(&parts.extensions, &bytes)) {
        (&Method::POST, Some(parsed)) => Some(parsed),
        (&Method::POST, None) => match jsonrpc::parse_request(&bytes) {
            Ok(rpc) => Some(Arc::new(rpc)),
            Err(e) => return Err(Box::new(rpc_error(StatusCode::BAD_REQUEST, None, &e))),
        },
        _ => None,
    };
    let (api_key, account, token_error) = credentials(parts, bearer, oauth).await;
    Ok(McpContext {
        body: bytes,
        rpc,
        api_key,
        account,
        token_error,
        client_ip: client_ip(parts, cfg.trusted_proxy_hops, &cfg.trusted_proxies),
    })
}

/// The whole body, refused early when its declared or actual size passes `max`.
pub(crate) async fn read_body<B, R>(
    max: u64,
    parts: &http::request::Parts,
    body: B,
) -> Result<Bytes, Refusal<R>>
where
    B: Body,
    B::Error: Into<BoxError>,
    R: Body,
{
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let refuse = |status, code, message: &str| {
        Box::new(closing(json_response(
            status,
            jsonrpc::error_body(None, code, message, None),
        )))
    };
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            jsonrpc::INVALID_REQUEST,
            &format!("request body larger than {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            jsonrpc::PARSE_ERROR,
            "could not read the request body",
        )),
    }
}

/// What the request authenticates with: `X-API-Key`; else a bearer token `oauth` checks
/// (the account it acts for, or why it does not); else a bearer token through the resolver.
async fn credentials<St: KeyStore>(
    parts: &http::request::Parts,
    bearer: Option<&BearerResolver>,
    oauth: Option<&OAuthServer<St>>,
) -> (Option<Arc<str>>, Option<KeyDigest>, Option<BearerError>) {
    if let (Some(oauth), None) = (oauth, parts.headers.get(&X_API_KEY)) {
        if let Some(token) = bearer_token(&parts.headers).filter(|t| oauth.handles(t)) {
            return match oauth.authenticate(token).await {
                Ok(grant) => (None, Some(grant.key), None),
                // Kept as a key that matches nothing, so it is denied as invalid.
                Err(e) => (Some(Arc::from("\u{fffd}")), None, Some(e)),
            };
        }
    }
    (api_key(parts, bearer), None, None)
}

/// `X-API-Key`, else `Authorization: Bearer <token>` through the resolver.
fn api_key(parts: &http::request::Parts, bearer: Option<&BearerResolver>) -> Option<Arc<str>> {
    if let Some(v) = parts.headers.get(&X_API_KEY) {
        // A key that is not visible ASCII can match nothing; keep it so it is denied as invalid.
        return Some(Arc::from(v.to_str().map_or("\u{fffd}", str::trim)));
    }
    let token = bearer_token(&parts.headers)?;
    match bearer {
        Some(resolve) => resolve(token).map(Arc::from),
        None => Some(Arc::from(token)),
    }
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// Refuses a method a lenient downstream might read as `tools/call`.
pub(crate) fn check_method<R: Body>(rpc: &RpcRequest, id: Option<&str>) -> Result<(), Refusal<R>> {
    let m = &rpc.method;
    if m != "tools/call" && (m.trim().eq_ignore_ascii_case("tools/call") || m.trim() != m) {
        let e = jsonrpc::RpcError {
            code: jsonrpc::INVALID_REQUEST,
            message: "ambiguous method name".into(),
        };
        return Err(Box::new(rpc_error(StatusCode::BAD_REQUEST, id, &e)));
    }
    Ok(())
}

/// Refuses requests whose `Mcp-Method` / `Mcp-Name` headers disagree with the body. `Mcp-Name`
/// is `params.name` (tools, prompts) else `params.uri` (resources), as MCP clients send it,
/// Base64-wrapped when it is not plain ASCII (see [`mcp_header_text`]).
pub(crate) fn check_mcp_headers<R: Body>(
    headers: &http::HeaderMap,
    rpc: &RpcRequest,
    id: Option<&str>,
) -> Result<(), Refusal<R>> {
    let mismatch = |name: &HeaderName, expected: Option<&str>| {
        let sent = headers.get(name)?;
        match (mcp_header_text(sent), expected) {
            (Some(s), Some(e)) if s == e => None,
            _ => Some(()),
        }
    };
    let bad = mismatch(&MCP_METHOD, Some(&rpc.method)).is_some()
        || mismatch(&MCP_NAME, rpc.mcp_name()).is_some();
    if bad {
        let e = jsonrpc::RpcError {
            code: jsonrpc::INVALID_REQUEST,
            message: "Mcp-Method / Mcp-Name headers disagree with the request body".into(),
        };
        return Err(Box::new(rpc_error(StatusCode::BAD_REQUEST, id, &e)));
    }
    Ok(())
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
