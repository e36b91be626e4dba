//! The smallest embedding: an existing axum + rmcp server gains API keys and billing with
//! one `.layer(...)`.
//!
//! ```text
//! cargo run --example rmcp_axum
//! ```

#[path = "common/demo_server.rs"]
mod demo_server;

use paygate_mcp::{PayGateConfig, PayGateLayer};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Your MCP server, as rmcp builds it.
    let mcp = demo_server::service(demo_server::Mode::Sse);

    // The one line: every tools/call now needs a key and costs credits.
    let paygate = PayGateLayer::try_new(PayGateConfig::default().with_tool_price("search", 5))?;
    let gate = paygate.gate().clone();
    let app =
        axum::Router::new().nest_service("/mcp", ServiceBuilder::new().layer(paygate).service(mcp));

    let key = gate.create_key("example", 50).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "MCP on http://{}/mcp, API key {key}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
