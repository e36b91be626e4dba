//! What the HTTP edges (the layers, the admin API) share about a request: the client's
//! address, believed through trusted proxies only, the bearer token it sends, and closing a
//! connection after an early reply.

use std::net::{IpAddr, SocketAddr};

use http::header::HeaderValue;
use http::Response;

/// The client's socket address, for servers that do not use axum's `ConnectInfo`: insert it
/// into request extensions and the layers read it.
///
/// ```
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(paygate_mcp::ClientAddr(([203, 0, 113, 7], 4711).into()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The peer address, or with `hops` trusted proxies the address they saw. The header is
/// believed only on a connection from a proxy in `proxies`, and only through proxies listed
/// there: the client is the rightmost address no trusted proxy could have written.
pub(crate) fn client_ip(
    parts: &http::request::Parts,
    hops: u64,
    proxies: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ClientAddr>()
        .map(|a| a.0.ip())
        .or_else(|| connect_info(parts));
    let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(ip));
    if hops == 0 || !peer.as_ref().is_some_and(trusted) {
        return peer;
    }
    // Each trusted proxy appends the address it received from; the client is `hops` from the end.
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().parse::<IpAddr>())
        .collect::<Result<_, _>>()
        .ok()?;
    let hops = usize::try_from(hops).ok()?;
    if forwarded.len() < hops {
        return None;
    }
    // Walking left from the peer, every hop but the client's must be a trusted proxy.
    let client_at = forwarded.len() - hops;
    match forwarded[client_at + 1..]
        .iter()
        .rposition(|ip| !trusted(ip))
    {
        Some(untrusted) => forwarded.get(client_at + 1 + untrusted).copied(),
        None => forwarded.get(client_at).copied(),
    }
}

#[cfg(feature = "axum")]
fn connect_info(parts: &http::request::Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(not(feature = "axum"))]
fn connect_info(_parts: &http::request::Parts) -> Option<IpAddr> {
    None
}

/// Marks an early reply that leaves the request body unread: the connection is closed
/// after it, so a keep-alive client does not send its next request into the unread rest.
pub(crate) fn closing<R>(mut resp: Response<R>) -> Response<R> {
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
