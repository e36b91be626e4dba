//! A real rmcp Streamable-HTTP server behind the PayGate layers, on a loopback port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::middleware;
use paygate_mcp::{block_on, Gate, MemoryKeyStore, PayGateConfig, PayGateLayer};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use tower::ServiceBuilder;

#[path = "../../examples/common/demo_server.rs"]
pub mod demo_server;

#[path = "../../examples/common/client_addr.rs"]
pub mod client_addr;

use client_addr::client_addr;

pub use demo_server::Mode;

/// A gateway serving the demo server on 127.0.0.1, stopped when dropped.
pub struct Running {
    pub url: String,
    pub gate: Arc<Gate<MemoryKeyStore>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the demo server in `mode` behind a `PayGateLayer` built from `cfg`.
pub async fn spawn_gateway(cfg: PayGateConfig, mode: Mode) -> Running {
    let gate = Arc::new(Gate::new(cfg).expect("valid config"));
    let mcp = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(demo_server::service(mode));
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn(client_addr));
    let (base, stop) = serve(app).await;
    Running {
        url: format!("{base}/mcp"),
        gate,
        stop: Some(stop),
    }
}

/// The JSON-RPC message in a response body: the body itself (JSON) or its last non-empty
/// `data:` event (SSE).
pub fn jsonrpc_message(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .filter_map(|d| serde_json::from_str(d).ok())
            .next_back()
            .unwrap_or_default()
    })
}

/// An rmcp client that sends `X-API-Key: key` on every request.
pub async fn client(url: &str, key: &str) -> RunningService<RoleClient, ()> {
    let mut headers = HashMap::new();
    headers.insert(
        http::HeaderName::from_static("x-api-key"),
        http::HeaderValue::from_str(key).expect("ascii key"),
    );
    let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("client initializes")
}

/// Creates a key on a running gateway.
pub fn key(running: &Running, credits: u64) -> String {
    block_on(running.gate.create_key("test", credits)).expect("key created")
}

/// Serves `app` on a loopback port until the returned guard is dropped.
pub async fn serve(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr, stop) = serve_at(app).await;
    (format!("http://{addr}"), stop)
}

/// [`serve`], answering with the address (the client IP reaches the app as `ConnectInfo`).
pub async fn serve_at(app: axum::Router) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        })
        .await;
    });
    (addr, tx)
}

/// The plain demo MCP server (no gate) at `<url>/mcp`.
pub async fn spawn_demo(mode: Mode) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = axum::Router::new().nest_service("/mcp", demo_server::service(mode));
    let (base, stop) = serve(app).await;
    (format!("{base}/mcp"), stop)
}
