//! An axum middleware that hands the socket's peer address to the PayGate layers as
//! `ClientAddr` (for builds without the crate's `axum` feature, which reads `ConnectInfo`
//! directly).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use paygate_mcp::ClientAddr;

/// Use with `axum::middleware::from_fn(client_addr)` and
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub async fn client_addr(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> axum::response::Response {
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}
